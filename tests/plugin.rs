//! The day-2 commands of `kubectl dps` on resources in the cluster, through each resource's own
//! connection and the user's own permissions, and their one-line errors on bad input.

mod support;

use std::path::PathBuf;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{Faults, derived_key};
use serde_json::{Value, json};
use support::{Output, control_plane, kubectl_ok, operator::Operator};

/// Runs `kubectl dps` in the operator's namespace, as the user of `kubeconfig` (admin if `None`).
async fn plugin(operator: &Operator, args: &[&str], kubeconfig: Option<PathBuf>) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["-n".to_owned(), operator.namespace.clone()]);
    support::kubectl_dps(args, kubeconfig).await
}

/// A failure: non-zero exit and one line naming the problem.
fn refused(output: &Output, expected: &str) {
    assert!(!output.success, "should fail: {}", output.stdout);
    let line = output.stderr.trim_end();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(line.starts_with("error: ") && line.contains(expected), "{line}\nexpected: {expected}");
}

const GROUP: &str = "apiVersion: dps.iot.dev/v1beta1
kind: EnrollmentGroup
metadata: {name: thermostats}
spec:
  serviceRef: {name: dps}
  attestation: {symmetricKey: {secretRef: {name: thermostats-keys}}}
---
apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollment
metadata: {name: boiler}
spec:
  serviceRef: {name: dps}
  attestation: {symmetricKey: {secretRef: {name: boiler-keys}}}
";

const SET: &str = "apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollmentSet
metadata: {name: fleet}
spec:
  serviceRef: {name: dps}
  attestation: {symmetricKey: {secretRef: {name: fleet-key}, deviceKeysSecretName: fleet-device-keys}}
  members: [{registrationId: sensor-1}, {registrationId: sensor-2}]
";

async fn secret_value(operator: &Operator, secret: &str, key: &str) -> String {
    let secret = operator.get(&format!("secret/{secret}")).await;
    let value = BASE64.decode(secret["data"][key].as_str().unwrap()).unwrap();
    String::from_utf8(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_key_registrations_rotate_and_status_work_through_the_resources_connection() {
    let operator = Operator::start("plugin").await;
    operator.apply(&format!("{GROUP}---\n{SET}")).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    operator.wait("individualenrollmentset/fleet", "condition=Ready").await;

    let key = plugin(&operator, &["device-key", "thermostats", "thermostat-0001"], None).await;
    assert!(key.success, "{}", key.stderr);
    let group_key = BASE64.decode(secret_value(&operator, "thermostats-keys", "primaryKey").await).unwrap();
    assert_eq!(key.stdout.trim(), BASE64.encode(derived_key(&group_key, "thermostat-0001")));

    registrations(&operator).await;

    let rotated = plugin(&operator, &["rotate", "individualenrollment/boiler"], None).await;
    assert!(rotated.success, "{}", rotated.stderr);
    let trigger = operator.get("individualenrollment/boiler").await["metadata"]["annotations"]
        ["dps.iot.dev/rotate-keys"]
        .as_str()
        .unwrap()
        .to_owned();
    operator
        .eventually("individualenrollment/boiler", "the rotation is done", |r| {
            let keys = &r["status"]["keys"];
            keys["lastTrigger"] == trigger.as_str() && keys["activeSlot"] == "secondary"
        })
        .await;

    let status = plugin(&operator, &["status"], None).await;
    assert!(status.success, "{}", status.stderr);
    let ns = &operator.namespace;
    assert!(status.stdout.contains(&format!("{ns}/provisioningservice/dps   True")), "{}", status.stdout);
    assert!(status.stdout.contains("EnrollmentGroup           Synced   1"), "{}", status.stdout);
    assert!(status.stdout.contains("IndividualEnrollmentSet   Synced   1"), "{}", status.stdout);
    let members = format!("{ns}/individualenrollmentset/fleet   2         2       0         0        0");
    assert!(status.stdout.contains(&members), "{}", status.stdout);
    assert!(status.stdout.contains("All 4 enrollments and connections are Ready."), "{}", status.stdout);
    set_member_keys(&operator).await;
}

/// A set member's key is the one DPS holds for it: derived from the set's key, the one its device
/// keys Secret hands out; an id the set did not make is refused by name.
async fn set_member_keys(operator: &Operator) {
    let key = plugin(operator, &["device-key", "ieset/fleet", "sensor-2"], None).await;
    assert!(key.success, "{}", key.stderr);
    let set_key = BASE64.decode(secret_value(operator, "fleet-key", "primaryKey").await).unwrap();
    assert_eq!(key.stdout.trim(), BASE64.encode(derived_key(&set_key, "sensor-2")));
    assert_eq!(key.stdout.trim(), secret_value(operator, "fleet-device-keys", "sensor-2").await);
    let args = ["device-key", "individualenrollmentset/fleet", "sensor-2", "--slot", "secondary"];
    let secondary = plugin(operator, &args, None).await;
    assert!(secondary.success, "{}", secondary.stderr);
    let set_key = BASE64.decode(secret_value(operator, "fleet-key", "secondaryKey").await).unwrap();
    assert_eq!(secondary.stdout.trim(), BASE64.encode(derived_key(&set_key, "sensor-2")));

    let ns = &operator.namespace;
    refused(
        &plugin(operator, &["device-key", "ieset/fleet", "boiler"], None).await,
        &format!(
            "individual enrollment boiler in ProvisioningService {ns}/dps was not made by IndividualEnrollmentSet {ns}/fleet"
        ),
    );
    refused(
        &plugin(operator, &["device-key", "ieset/fleet", "sensor-9"], None).await,
        &format!("IndividualEnrollmentSet {ns}/fleet has no member sensor-9 in ProvisioningService {ns}/dps"),
    );
    refused(
        &plugin(operator, &["device-key", "ieset/nope", "sensor-1"], None).await,
        &format!("there is no IndividualEnrollmentSet {ns}/nope"),
    );
}

async fn registrations(operator: &Operator) {
    for id in ["thermostat-0001", "thermostat-0002"] {
        operator.emulator.add_registration(
            json!({"registrationId": id, "status": "assigned"}),
            Some("thermostats".into()),
        );
    }
    let table = plugin(operator, &["registrations", "thermostats"], None).await;
    assert!(table.success, "{}", table.stderr);
    assert!(table.stdout.starts_with("REGISTRATION ID   STATUS"), "{}", table.stdout);
    assert!(table.stdout.contains("thermostat-0002   assigned"), "{}", table.stdout);
    let listed = plugin(operator, &["registrations", "eg/thermostats", "-o", "json"], None).await;
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let deleted =
        plugin(operator, &["registrations", "thermostats", "--delete", "thermostat-0001"], None).await;
    assert!(deleted.success, "{}", deleted.stderr);
    let listed = plugin(operator, &["registrations", "thermostats", "-o", "yaml"], None).await;
    assert!(
        !listed.stdout.contains("thermostat-0001") && listed.stdout.contains("thermostat-0002"),
        "{}",
        listed.stdout
    );
    let unknown =
        plugin(operator, &["registrations", "thermostats", "--delete", "thermostat-0009"], None).await;
    refused(&unknown, "has no registration record thermostat-0009");
    let none = plugin(operator, &["registrations", "boiler"], None).await;
    assert_eq!(none.stdout, "No registration records.\n", "{}", none.stderr);
}

/// A kubeconfig of a user who may read the enrollments and connections of `ns`, not its Secrets.
fn viewer(ns: &str) -> PathBuf {
    kubectl_ok(&["create", "serviceaccount", "viewer", "-n", ns]);
    let resources =
        "enrollmentgroups.dps.iot.dev,individualenrollments.dps.iot.dev,provisioningservices.dps.iot.dev";
    kubectl_ok(&[
        "create",
        "role",
        "dps-viewer",
        "-n",
        ns,
        "--verb=get,list",
        &format!("--resource={resources}"),
    ]);
    let account = format!("--serviceaccount={ns}:viewer");
    kubectl_ok(&["create", "rolebinding", "dps-viewer", "-n", ns, "--role=dps-viewer", &account]);
    let token = kubectl_ok(&["create", "token", "viewer", "-n", ns, "--duration=10m"]);
    control_plane().token_kubeconfig(&format!("{ns}-viewer"), token.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_one_line_naming_what_is_wrong() {
    let operator = Operator::start("plugin-bad").await;
    let ns = operator.namespace.clone();
    operator.apply(GROUP).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;

    refused(
        &plugin(&operator, &["registrations", "nope"], None).await,
        &format!("there is no EnrollmentGroup or IndividualEnrollment {ns}/nope"),
    );
    refused(
        &plugin(&operator, &["rotate", "deployment/nope"], None).await,
        "deployment/nope: not an EnrollmentGroup or IndividualEnrollment",
    );

    // Keys the user supplies are never rotated.
    operator
        .create_secret(
            "heater-keys",
            &[("primaryKey", &BASE64.encode([1u8; 32])), ("secondaryKey", &BASE64.encode([2u8; 32]))],
        )
        .await;
    operator.apply(&GROUP.split("---").nth(1).unwrap().replace("boiler", "heater")).await;
    operator.wait("individualenrollment/heater", "condition=Ready").await;
    refused(&plugin(&operator, &["rotate", "heater"], None).await, "uses keys you supply");

    // DPS refusing.
    operator.emulator.set_faults(Faults {
        error_rates: [(401, 1.0)].into(),
        operations: ["DeviceRegistrationState_Query".to_owned()].into(),
        ..Default::default()
    });
    refused(
        &plugin(&operator, &["registrations", "thermostats"], None).await,
        "reading the registrations of EnrollmentGroup",
    );
    operator.emulator.set_faults(Faults::default());

    // No permission to read the connection's Secret.
    let denied =
        plugin(&operator, &["device-key", "thermostats", "thermostat-0001"], Some(viewer(&ns))).await;
    refused(&denied, &format!("reading Secret {ns}/dps-connection was refused by the API server: 403"));

    // A connection that is not Ready.
    operator
        .apply(&format!(
            "{}---\n{}",
            "apiVersion: dps.iot.dev/v1beta1\nkind: ProvisioningService\nmetadata: {name: broken}\nspec:\n  credentials: {connectionStringSecretRef: {name: missing, key: connectionString}}\n  host: broken.example\n",
            GROUP.split("---").next().unwrap().replace("thermostats", "lamps").replace("name: dps", "name: broken")
        ))
        .await;
    operator
        .eventually("provisioningservice/broken", "not Ready", |r| {
            r["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "False"))
        })
        .await;
    refused(
        &plugin(&operator, &["registrations", "lamps"], None).await,
        &format!("ProvisioningService {ns}/broken is not Ready (SecretNotFound)"),
    );
}
