//! Helpers for tests of the charts with the real `helm`.

use std::path::Path;

use serde_json::Value;

/// The path of the chart `name` under `charts/`.
pub fn chart(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts").join(name).display().to_string()
}

/// Runs `helm` against this test binary's control plane.
pub fn helm(args: &[&str]) -> super::Output {
    super::run(super::control_plane().helm().args(args), None)
}

/// The documents of rendered YAML, as JSON values (empty ones left out).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|document| serde::Deserialize::deserialize(document).ok())
        .filter(|document: &Value| !document.is_null())
        .collect()
}

/// The documents of `kind`.
pub fn find<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}
