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

/// The krew manifest scripts/krew-manifest writes for the plugin archives of a release: every
/// platform, each with its archive's sha256 and the binary krew links as `kubectl dps`.
#[test]
fn the_krew_manifest_names_every_platform_with_its_archives_checksum() {
    let dist = std::env::temp_dir().join(format!("krew-dist-{}", std::process::id()));
    std::fs::create_dir_all(&dist).unwrap();
    let platforms = [("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")];
    for (os, arch) in platforms {
        let archive = dist.join(format!("kubectl-dps_{VERSION}_{os}_{arch}.tar.gz"));
        std::fs::write(archive, format!("{os}/{arch}")).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/krew-manifest");
    let output =
        std::process::Command::new(&script).args([VERSION, dist.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest: serde_json::Value = serde_yaml_ng::from_slice(&output.stdout).unwrap();
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "dps", "installed as `kubectl dps`");
    assert_eq!(manifest["spec"]["version"], format!("v{VERSION}"));
    let listed = manifest["spec"]["platforms"].as_array().unwrap();
    assert_eq!(listed.len(), platforms.len());
    for ((os, arch), platform) in platforms.iter().zip(listed) {
        assert_eq!(platform["selector"]["matchLabels"], serde_json::json!({"os": os, "arch": arch}));
        let sha = ring::digest::digest(&ring::digest::SHA256, format!("{os}/{arch}").as_bytes());
        let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(platform["sha256"], hex);
        assert!(
            platform["uri"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/v{VERSION}/kubectl-dps_{VERSION}_{os}_{arch}.tar.gz"))
        );
        assert_eq!(platform["bin"], "kubectl-dps");
    }
    // A missing archive fails the release rather than publishing a manifest without it.
    std::fs::remove_file(dist.join(format!("kubectl-dps_{VERSION}_darwin_arm64.tar.gz"))).unwrap();
    let output =
        std::process::Command::new(&script).args([VERSION, dist.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("darwin_arm64.tar.gz is missing"));
    std::fs::remove_dir_all(dist).unwrap();
}
