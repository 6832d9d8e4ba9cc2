//! Files generated from code are committed; these tests fail when they are stale.

use std::{collections::BTreeMap, fs, path::Path};

const REGENERATE: &str = "cargo run -- crds --dir crds --dir charts/dps-operator/crds";

/// The `.yaml` files in a directory of the repository, by name.
fn yaml_files(relative: &str) -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; regenerate with `{REGENERATE}`", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            (path.file_name().unwrap().to_string_lossy().into_owned(), fs::read_to_string(&path).unwrap())
        })
        .collect()
}

fn assert_crds_current(relative: &str) {
    let generated: BTreeMap<String, String> = dps_operator::api::crd_files().into_iter().collect();
    let committed = yaml_files(relative);
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "{relative}/ does not hold exactly the generated CRDs; regenerate with `{REGENERATE}`"
    );
    for (name, yaml) in &generated {
        assert!(committed[name] == *yaml, "{relative}/{name} is stale; regenerate with `{REGENERATE}`");
    }
}

#[test]
fn crds_directory_is_current() {
    assert_crds_current("crds");
}

#[test]
fn helm_chart_crds_are_current() {
    assert_crds_current("charts/dps-operator/crds");
}

#[test]
fn the_api_reference_is_current() {
    let committed =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api.md")).unwrap_or_default();
    assert!(
        committed == dps_operator::api::reference::markdown(),
        "docs/api.md is stale; regenerate with `cargo run -- api-reference > docs/api.md`"
    );
}
