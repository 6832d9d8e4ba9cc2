//! Properties of the dependency tree that are easy to lose by adding a crate.

/// rustls picks its crypto provider from the crate features linked in; with two providers, TLS
/// clients that do not install one explicitly fail at run time. ring is ours.
#[test]
fn only_one_tls_crypto_provider_is_built() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let packages: Vec<&str> =
        lock.lines().filter_map(|line| line.strip_prefix("name = \"")?.strip_suffix('"')).collect();
    assert!(packages.contains(&"ring"));
    for second_provider in ["aws-lc-rs", "aws-lc-sys", "openssl", "openssl-sys", "native-tls"] {
        assert!(
            !packages.contains(&second_provider),
            "{second_provider} is in Cargo.lock; `cargo tree -i {second_provider}` shows who brings it"
        );
    }
}

/// The emulator stands for DPS in every test: if it used the operator's DPS model, certificate
/// reader or rate limiter, a mistake there would be mirrored on both sides and no test could see
/// it. Its package must not depend on the operator's, not even for its own tests.
#[test]
fn the_emulator_shares_no_code_with_the_operator() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let emulator = lock
        .split("[[package]]")
        .find(|package| package.contains("name = \"dps-emulator\""))
        .expect("dps-emulator is in Cargo.lock");
    assert!(!emulator.contains("\"dps-operator\""), "dps-emulator depends on dps-operator:{emulator}");
}

/// The operator image is built without the `local` feature (see the Dockerfile): then nothing of
/// the test tooling is linked, neither the DPS emulator nor certificate generation.
#[test]
fn the_operator_without_local_links_no_test_tooling() {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "-p", "dps-operator", "--no-default-features"])
        .args(["--edges", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo tree: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).unwrap();
    let crates: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(crates.contains(&"kube"), "{tree}");
    for tooling in ["dps-emulator", "rcgen"] {
        assert!(!crates.contains(&tooling), "{tooling} is linked into the operator:\n{tree}");
    }
}
