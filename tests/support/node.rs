//! Helpers for tests on a real node: the images `scripts/build-images` makes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use dps_operator::devenv::Tools;

/// The images from `scripts/build-images` (`$DPS_IMAGES_DIR` when set, else built now).
pub fn images_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_images).clone()
}

fn build_images() -> PathBuf {
    if let Some(dir) = std::env::var_os("DPS_IMAGES_DIR") {
        return dir.into();
    }
    let tools = Tools::locate_node().expect("the test tools");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/build-images"))
        .arg(tools.dir())
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("scripts/build-images runs");
    assert!(output.status.success(), "scripts/build-images failed: see its output above");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

pub fn image_name(key: &str) -> String {
    let env = std::fs::read_to_string(images_dir().join("images.env")).expect("images.env");
    env.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} is not in images.env"))
        .to_owned()
}
