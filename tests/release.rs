//! One version for the release: the crate, the emulator crate, both charts' `version` and
//! `appVersion` (the default image tag; `scripts/build-images` tags the test images with the
//! crate's version, which tests/real_node.rs checks), and the newest CHANGELOG entry.

use std::path::Path;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn yaml(relative: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

#[test]
fn the_crates_the_charts_and_the_changelog_carry_one_version() {
    assert_eq!(package_version(&read("emulator/Cargo.toml")), VERSION, "emulator/Cargo.toml");
    for chart in ["charts/dps-operator", "charts/dps-emulator"] {
        let meta = yaml(&format!("{chart}/Chart.yaml"));
        assert_eq!(meta["version"], VERSION, "{chart}/Chart.yaml version");
        assert_eq!(meta["appVersion"], VERSION, "{chart}/Chart.yaml appVersion");
        let values = yaml(&format!("{chart}/values.yaml"));
        assert_eq!(values["image"]["tag"], "", "{chart}: the image tag defaults to appVersion");
    }
    let changelog = read("CHANGELOG.md");
    // Changes not released yet gather under "## Unreleased", above the newest release.
    let newest = changelog
        .lines()
        .find(|line| line.starts_with("## ") && *line != "## Unreleased")
        .expect("CHANGELOG.md has releases");
    assert_eq!(newest, format!("## {VERSION}"), "the newest CHANGELOG.md release is this version");
}

/// The `version` of a Cargo manifest's `[package]`, its first `version = ` line.
fn package_version(manifest: &str) -> &str {
    let package = &manifest[manifest.find("[package]").expect("a [package] section")..];
    let line =
        package.lines().find_map(|line| line.strip_prefix("version = ")).expect("[package] has a version");
    line.trim_matches('"')
}
