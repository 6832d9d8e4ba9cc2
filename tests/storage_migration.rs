//! Stored objects migrate by themselves: objects exactly as release 0.1.0 wrote them
//! (`tests/fixtures/v0.1.0`, stored as `v1alpha1` under that release's CRDs), then this release's
//! CRDs applied as the README says and the operator started. The leader writes each object again
//! (etcd then holds it as `v1beta1`) and sets every CRD's `status.storedVersions` to `v1beta1`,
//! with no write to DPS; every resource stays Ready with its finalizer, claim and status.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{AccessPolicy, EmulatorConfig, RunningEmulator};
use dps_operator::controller::{self, config::Config};
use serde_json::{Value, json};
use support::{bare_control_plane, kubectl, kubectl_ok};

mod support;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0.1.0");
const HOST: &str = "fixtures.azure-devices-provisioning.net";
const CRDS: [&str; 4] = [
    "provisioningservices.dps.iot.dev",
    "clusterprovisioningservices.dps.iot.dev",
    "enrollmentgroups.dps.iot.dev",
    "individualenrollments.dps.iot.dev",
];

#[tokio::test(flavor = "multi_thread")]
async fn objects_of_the_previous_release_move_to_the_storage_version_without_a_dps_write() {
    let control_plane = tokio::task::block_in_place(bare_control_plane);
    block(|| kubectl_ok(&["create", "-f", &format!("{FIXTURES}/crds.yaml")]));
    block(|| kubectl_ok(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]));
    let namespace = block(|| support::namespace("migration"));
    // The shared connection admits namespaces by this label.
    block(|| kubectl_ok(&["label", "namespace", &namespace, "fixtures=true"]));
    let emulator = restored_emulator().await;
    block(|| restore_objects(&namespace, &emulator));
    let stored = stored_versions(control_plane.etcd_url()).await;
    assert_eq!(stored.len(), 7, "{stored:?}");
    assert!(stored.values().all(|v| v == "dps.iot.dev/v1alpha1"), "the release stored v1alpha1: {stored:?}");

    // The upgrade: this release's CRDs, as the README has users apply them; then the operator.
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    block(|| kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", crds]));
    emulator.reset_calls();
    let operator = start_operator(&namespace, &emulator);

    for crd in CRDS {
        eventually(&format!("CRD {crd} records only v1beta1 as stored"), || {
            kubectl_ok(&["get", "crd", crd, "-o", "jsonpath={.status.storedVersions}"]) == r#"["v1beta1"]"#
        })
        .await;
    }
    let stored = stored_versions(control_plane.etcd_url()).await;
    assert_eq!(stored.len(), 7, "{stored:?}");
    assert!(
        stored.values().all(|v| v == "dps.iot.dev/v1beta1"),
        "etcd holds every object as v1beta1: {stored:?}"
    );

    let kinds = "enrollmentgroups,individualenrollments,provisioningservices";
    block(|| {
        kubectl_ok(&["wait", "--for=condition=Ready", "--all", "-n", &namespace, kinds, "--timeout=60s"])
    });
    block(|| {
        kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "clusterprovisioningservices",
            "--all",
            "--timeout=60s",
        ])
    });
    let writes = emulator.writes("IndividualEnrollment") + emulator.writes("EnrollmentGroup");
    assert_eq!(writes, 0, "the migration wrote to DPS: {:?}", emulator.calls());
    assert_carried_over(&namespace);
    operator.abort();
}

/// Finalizers, claims and DPS etags are as the release left them.
fn assert_carried_over(namespace: &str) {
    let before = fixture_items("namespaced.yaml", namespace);
    let now: Value = serde_json::from_str(&kubectl_ok(&[
        "get",
        // As v1beta1 by name: kubectl's discovery cache may still prefer what it saw before.
        "enrollmentgroups.v1beta1.dps.iot.dev,individualenrollments.v1beta1.dps.iot.dev",
        "-n",
        namespace,
        "-o",
        "json",
    ]))
    .unwrap();
    for object in now["items"].as_array().unwrap() {
        let name = object["metadata"]["name"].as_str().unwrap();
        let old =
            before.iter().find(|o| o["metadata"]["name"] == name && o["kind"] == object["kind"]).unwrap();
        assert_eq!(object["apiVersion"], "dps.iot.dev/v1beta1");
        assert_eq!(object["metadata"]["finalizers"], old["metadata"]["finalizers"], "{name}");
        let uid = object["metadata"]["uid"].as_str().unwrap();
        assert_eq!(object["metadata"]["annotations"]["dps.iot.dev/claim"], format!("{uid}@{HOST}"), "{name}");
        // An enrollment created in a bulk call never learned its etag; the status written now may
        // fill in the one DPS holds. DPS writes are counted by the caller.
        if !old["status"]["etag"].is_null() {
            assert_eq!(object["status"]["etag"], old["status"]["etag"], "{name}: DPS was not written");
        }
        assert_eq!(object["status"]["claimed"], true, "{name}");
    }
}

/// The emulator with the release's DPS state and its access policy (so the connection string
/// Secret of the fixtures still opens it).
async fn restored_emulator() -> RunningEmulator {
    let state = std::env::temp_dir().join(format!("dps-migration-state-{}.json", std::process::id()));
    std::fs::copy(format!("{FIXTURES}/dps-state.json"), &state).unwrap();
    let secrets = fixture_items("namespaced.yaml", "unused");
    let connection = secrets.iter().find(|s| s["metadata"]["name"] == "dps-connection").unwrap();
    let connection =
        String::from_utf8(BASE64.decode(connection["data"]["connectionString"].as_str().unwrap()).unwrap())
            .unwrap();
    let key = connection.split(';').find_map(|part| part.strip_prefix("SharedAccessKey=")).unwrap();
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], dps_operator::devenv::free_port().unwrap()));
    RunningEmulator::start(EmulatorConfig {
        listen: address,
        host_name: Some(HOST.into()),
        state_file: Some(state),
        policies: vec![AccessPolicy {
            name: "provisioningserviceowner".into(),
            primary_key: BASE64.decode(key).unwrap(),
            secondary_key: BASE64.decode(key).unwrap(),
        }],
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts with the release's state")
}

/// The fixture's objects, its namespace placeholder replaced by `namespace`.
fn fixture_items(file: &str, namespace: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(Path::new(FIXTURES).join(file)).unwrap().replace("NAMESPACE", namespace);
    let list: Value = serde_yaml_ng::from_str(&text).unwrap();
    list["items"].as_array().unwrap().clone()
}

/// Creates the release's objects as they were, then their status; the uids they carry in claims
/// and owner references become the new objects' uids (what an in-place upgrade keeps).
fn restore_objects(namespace: &str, emulator: &RunningEmulator) {
    let mut items = fixture_items("cluster.yaml", namespace);
    items.extend(fixture_items("namespaced.yaml", namespace));
    // Owners before the Secrets they own.
    items.sort_by_key(|item| item["kind"] == "Secret");
    let mut uids = BTreeMap::new();
    for mut item in items {
        let old_uid = item["metadata"]["uid"].as_str().unwrap().to_owned();
        let status = item.as_object_mut().unwrap().remove("status");
        fresh_metadata(&mut item, &uids, emulator);
        let created: Value =
            serde_json::from_str(&run_kubectl(&["create", "-o", "json", "-f", "-"], &item.to_string()))
                .unwrap();
        let resource = format!(
            "{}/{}",
            item["kind"].as_str().unwrap().to_lowercase(),
            item["metadata"]["name"].as_str().unwrap()
        );
        let new_uid = created["metadata"]["uid"].as_str().unwrap().to_owned();
        let scope: Vec<&str> =
            if item["metadata"]["namespace"].is_string() { vec!["-n", namespace] } else { vec![] };
        if let Some(claim) = item["metadata"]["annotations"]["dps.iot.dev/claim"].as_str() {
            let claim = claim.replace(&old_uid, &new_uid);
            let mut args = vec!["annotate", "--overwrite", &resource];
            let annotation = format!("dps.iot.dev/claim={claim}");
            args.push(&annotation);
            args.extend(&scope);
            kubectl_ok(&args);
        }
        if let Some(status) = status {
            let patch = json!({"status": status}).to_string();
            let mut args = vec!["patch", &resource, "--subresource=status", "--type=merge", "-p", &patch];
            args.extend(&scope);
            kubectl_ok(&args);
        }
        uids.insert(old_uid, new_uid);
    }
}

/// Drops what only the API server sets, points owner references at the new owners and trusts
/// this emulator's CA (a new one at each start).
fn fresh_metadata(item: &mut Value, uids: &BTreeMap<String, String>, emulator: &RunningEmulator) {
    let metadata = item["metadata"].as_object_mut().unwrap();
    for field in ["uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"] {
        metadata.remove(field);
    }
    for owner in metadata.get_mut("ownerReferences").and_then(Value::as_array_mut).into_iter().flatten() {
        owner["uid"] = json!(uids[owner["uid"].as_str().unwrap()]);
    }
    if item["metadata"]["name"] == "dps-ca" {
        item["data"]["ca.crt"] = json!(BASE64.encode(emulator.ca_certificate().unwrap()));
    }
}

fn start_operator(namespace: &str, emulator: &RunningEmulator) -> tokio::task::JoinHandle<()> {
    let config = Config {
        operator_namespace: namespace.to_owned(),
        resolve: vec![(HOST.into(), emulator.address())],
        dps_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    tokio::spawn(async move {
        let client = bare_control_plane().client().await.expect("a client");
        let health = Arc::new(dps_operator::http::Health::default());
        // Every namespace: only an operator that sees them all may migrate.
        if let Err(error) = controller::run(client, config, Vec::new(), None, health).await {
            panic!("the operator stopped: {error}");
        }
    })
}

/// Each of our objects in etcd, by key, with the apiVersion it is stored as.
async fn stored_versions(etcd: &str) -> BTreeMap<String, String> {
    let prefix = "/registry/dps.iot.dev/";
    let body = json!({"key": BASE64.encode(prefix), "range_end": BASE64.encode("/registry/dps.iot.dev0")});
    let answer: Value = reqwest::Client::new()
        .post(format!("{etcd}/v3/kv/range"))
        .json(&body)
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .expect("etcd answers a range request")
        .json()
        .await
        .unwrap();
    answer["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let key = String::from_utf8(BASE64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap();
            let value: Value =
                serde_json::from_slice(&BASE64.decode(kv["value"].as_str().unwrap()).unwrap()).unwrap();
            (key, value["apiVersion"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn run_kubectl(args: &[&str], stdin: &str) -> String {
    let output = kubectl(args, Some(stdin));
    assert!(output.success, "kubectl {}: {}\n{stdin}", args.join(" "), output.stderr);
    output.stdout
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !block(&check) {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
