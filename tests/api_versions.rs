//! Both served versions of the API hold the same objects: every example and every field
//! round-trips through `v1alpha1` and `v1beta1` without loss, requests through `v1alpha1` warn,
//! and `dps-operator convert` turns the previous release's examples into today's.

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;
use support::{control_plane, kubectl_ok};

mod support;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const OLD_EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0.1.0/examples");
/// The kinds served in both versions.
const PLURALS: &str =
    "provisioningservices,clusterprovisioningservices,enrollmentgroups,individualenrollments";
/// Kinds that came after `v1alpha1`, served in the storage version only.
const NEW_KINDS: [(&str, &str); 1] = [("IndividualEnrollmentSet", "individualenrollmentsets")];

/// Today's examples and the every-field manifests, as JSON documents.
fn manifests() -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.push(Path::new(ROOT).join("tests/api/every-field.yaml"));
    files.iter().flat_map(|file| documents(&std::fs::read_to_string(file).unwrap())).collect()
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|value: &Value| !value.is_null())
        .collect()
}

/// Paths of the fields a schema declares, `spec.a.b`; an array's items share its path. Fields
/// the schema refuses (a `!has(self.x)` rule beside them) cannot be set and are left out.
fn declared_fields(schema: &Value, path: &str, out: &mut BTreeSet<String>) {
    let refused = |name: &str| {
        schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| rule["rule"] == format!("!has(self.{name})"))
    };
    match (schema["properties"].as_object(), schema["items"].is_object()) {
        (Some(properties), _) => {
            for (name, property) in properties.iter().filter(|(name, _)| !refused(name)) {
                declared_fields(property, &format!("{path}.{name}"), out);
            }
        }
        (None, true) => declared_fields(&schema["items"], path, out),
        (None, false) => {
            out.insert(path.to_owned());
        }
    }
}

/// Paths of every field set in `value` (each prefix too).
fn set_fields(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    out.insert(path.to_owned());
    match value {
        Value::Object(fields) => {
            fields.iter().for_each(|(name, v)| set_fields(v, &format!("{path}.{name}"), out))
        }
        Value::Array(items) => items.iter().for_each(|v| set_fields(v, path, out)),
        _ => {}
    }
}

#[test]
fn the_round_tripped_manifests_set_every_field_of_every_kind() {
    let manifests = manifests();
    for crd in dps_operator::api::crds() {
        let kind = &crd.spec.names.kind;
        let schema = serde_json::to_value(
            crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap(),
        )
        .unwrap();
        let mut declared = BTreeSet::new();
        declared_fields(&schema["properties"]["spec"], "spec", &mut declared);
        let mut set = BTreeSet::new();
        for manifest in manifests.iter().filter(|m| m["kind"] == kind.as_str()) {
            set_fields(&manifest["spec"], "spec", &mut set);
        }
        let missing: Vec<_> = declared.difference(&set).collect();
        assert!(
            missing.is_empty(),
            "no manifest sets these fields of {kind}; add them to tests/api/every-field.yaml: {missing:?}"
        );
    }
}

/// Creates `manifests` through `version`, reads them back through `other`, and checks that each
/// comes back as it went in; then deletes them.
fn round_trip(namespace: &str, manifests: &[Value], plurals: &str, version: &str, other: &str) {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": manifests
        .iter()
        .map(|m| { let mut m = m.clone(); m["apiVersion"] = format!("dps.iot.dev/{version}").into(); m })
        .collect::<Vec<_>>()});
    let created = kubectl_with_warnings(&["create", "-n", namespace, "-f", "-"], &list.to_string());
    if version == "v1alpha1" {
        for kind in
            ["ProvisioningService", "ClusterProvisioningService", "EnrollmentGroup", "IndividualEnrollment"]
        {
            let warning =
                format!("Warning: dps.iot.dev/v1alpha1 {kind} is deprecated: use dps.iot.dev/v1beta1");
            assert!(created.contains(&warning), "no deprecation warning for {kind}:\n{created}");
        }
    }
    let resources: Vec<String> =
        plurals.split(',').map(|plural| format!("{plural}.{other}.dps.iot.dev")).collect();
    let read: Value =
        serde_json::from_str(&kubectl_ok(&["get", "-n", namespace, &resources.join(","), "-o", "json"]))
            .unwrap();
    let read = read["items"].as_array().unwrap();
    assert_eq!(read.len(), manifests.len());
    for manifest in manifests {
        let name = &manifest["metadata"]["name"];
        let back =
            read.iter().find(|r| r["kind"] == manifest["kind"] && r["metadata"]["name"] == *name).unwrap();
        assert_eq!(back["apiVersion"], format!("dps.iot.dev/{other}"));
        assert_eq!(
            back["spec"], manifest["spec"],
            "{} {name} through {version}, read as {other}",
            manifest["kind"]
        );
    }
    kubectl_ok(&["delete", "-n", namespace, &resources.join(","), "--all", "--wait"]);
}

/// Runs kubectl with `stdin`; answers its standard error (the API server's warnings).
fn kubectl_with_warnings(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = control_plane()
        .kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "kubectl {}: {stderr}", args.join(" "));
    stderr
}

#[test]
fn every_manifest_round_trips_through_both_versions_without_loss() {
    let namespace = support::namespace("versions");
    let (new, both): (Vec<Value>, Vec<Value>) =
        manifests().into_iter().partition(|m| NEW_KINDS.iter().any(|(kind, _)| m["kind"] == *kind));
    round_trip(&namespace, &both, PLURALS, "v1alpha1", "v1beta1");
    round_trip(&namespace, &both, PLURALS, "v1beta1", "v1alpha1");
    let plurals = NEW_KINDS.map(|(_, plural)| plural).join(",");
    round_trip(&namespace, &new, &plurals, "v1beta1", "v1beta1");
}

fn convert(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dps-operator")).arg("convert").args(args).output().unwrap()
}

#[test]
fn convert_turns_the_previous_releases_examples_into_todays() {
    let dir = std::env::temp_dir().join(format!("dps-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(OLD_EXAMPLES).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        names.push(path.file_name().unwrap().to_owned());
    }
    let output = convert(&["--write", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = String::from_utf8_lossy(&output.stderr);
    assert_eq!(report.lines().count(), names.len(), "one line per converted file:\n{report}");
    // Today's examples of the kinds the previous release had.
    let today: BTreeSet<_> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| {
            let kind = documents(&std::fs::read_to_string(path).unwrap())[0]["kind"].clone();
            !NEW_KINDS.iter().any(|(new, _)| kind == *new)
        })
        .map(|path| path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names.iter().cloned().collect::<BTreeSet<_>>(), today, "the same example files");
    for name in &names {
        let converted = std::fs::read_to_string(dir.join(name)).unwrap();
        let current = std::fs::read_to_string(Path::new(ROOT).join("examples").join(name)).unwrap();
        assert_eq!(converted, current, "{name:?}: converted, comments and all, it is today's example");
    }
    // Converting again changes nothing; one file prints to standard output.
    let again = convert(&["--write", dir.to_str().unwrap()]);
    assert!(again.status.success() && again.stderr.is_empty());
    let one = convert(&[&format!("{OLD_EXAMPLES}/enrollmentgroup-symmetric-key.yaml")]);
    let expected =
        std::fs::read_to_string(Path::new(ROOT).join("examples/enrollmentgroup-symmetric-key.yaml")).unwrap();
    assert_eq!(String::from_utf8(one.stdout).unwrap(), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_names_what_it_cannot_convert_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("dps-convert-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = "apiVersion: dps.iot.dev/v1alpha1\nkind: EnrollmentGroup\n";
    std::fs::write(dir.join("a.yaml"), good).unwrap();
    std::fs::write(dir.join("b.yaml"), "# future\napiVersion: dps.iot.dev/v2\nkind: EnrollmentGroup\n")
        .unwrap();
    let output = convert(&["--write", dir.to_str().unwrap()]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains(
            "b.yaml:2: apiVersion dps.iot.dev/v2 is not a version of dps.iot.dev (served: v1beta1, v1alpha1)"
        ),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("a.yaml")).unwrap(), good, "nothing was written");
    let output = convert(&[dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("is a directory: pass --write"), "{output:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
