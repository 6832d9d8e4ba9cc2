//! Devices really provision: enrollments the operator created from resources, and a device using
//! the official Azure IoT device SDK for Node.js (`tests/devices/`, installed by
//! `scripts/install-device-sdks`) registering with the emulator's device API.

mod support;

use std::{path::PathBuf, process::Command, sync::OnceLock};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{EmulatorConfig, derived_key};
use dps_operator::dps::models;
use serde_json::{Value, json};
use support::operator::Operator;

const HUB_A: &str = "hub-a.azure-devices.net";
const HUB_B: &str = "hub-b.azure-devices.net";

/// The SDK's `node_modules`: `DPS_NODE_MODULES`, else what `scripts/install-device-sdks` installs.
fn node_modules() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DPS_NODE_MODULES") {
            return dir.into();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-device-sdks");
        let output = Command::new(script).output().expect("scripts/install-device-sdks runs");
        assert!(
            output.status.success(),
            "scripts/install-device-sdks failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().into()
    })
}

async fn start(prefix: &str) -> Operator {
    let linked = EmulatorConfig { linked_hubs: Some(vec![HUB_A.into(), HUB_B.into()]), ..Default::default() };
    let operator = Operator::start_with(prefix, linked, |_| {}).await;
    operator.wait("provisioningservice/dps", "condition=Ready").await;
    operator
}

/// What the Node SDK's `register` ended with: `{"ok": true, "result": …}` or the error.
async fn register(operator: &Operator, registration_id: &str, key: &str) -> Value {
    run_device(operator, json!({"registrationId": registration_id, "symmetricKey": key})).await
}

/// The same for an X.509 device presenting `chain` (PEM, leaf first) with its `key`.
async fn register_x509(operator: &Operator, registration_id: &str, chain: &str, key: &str) -> Value {
    let file = |what: &str, text: &str| {
        let path = std::env::temp_dir().join(format!("{}-{registration_id}-{what}.pem", operator.namespace));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert, key) = (file("cert", chain), file("key", key));
    run_device(operator, json!({"registrationId": registration_id, "cert": cert, "key": key})).await
}

async fn run_device(operator: &Operator, credentials: Value) -> Value {
    let ca = std::env::temp_dir().join(format!("{}-ca.pem", operator.namespace));
    std::fs::write(&ca, operator.emulator.ca_certificate().unwrap()).unwrap();
    let mut request = json!({
        "host": "localhost",
        "address": format!("127.0.0.1:{}", operator.emulator.address().port()),
        "idScope": operator.emulator.id_scope(),
        "ca": ca,
    });
    request.as_object_mut().unwrap().extend(credentials.as_object().unwrap().clone());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/devices/register.js");
    let modules = node_modules().clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(script).arg(request.to_string()).env("NODE_PATH", modules).output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("register.js printed no outcome: {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

/// The primary key in the Secret `name` the operator wrote.
async fn primary_key(operator: &Operator, name: &str) -> String {
    let secret = operator.get(&format!("secret/{name}")).await;
    String::from_utf8(BASE64.decode(secret["data"]["primaryKey"].as_str().unwrap()).unwrap()).unwrap()
}

fn enrollment(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: {name}}}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: {name}-keys}}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_provisions_with_the_keys_the_operator_generated() {
    let operator = start("device-individual").await;
    operator
        .apply(&enrollment(
            "boiler",
            &format!("  allocationPolicy: static\n  iotHubs: [{HUB_B}]\n  deviceId: boiler-7\n"),
        ))
        .await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let key = primary_key(&operator, "boiler-keys").await;

    let registered = register(&operator, "boiler", &key).await;
    assert_eq!(registered["ok"], true, "{registered}");
    let result = &registered["result"];
    assert_eq!(
        (result["assignedHub"].as_str(), result["deviceId"].as_str()),
        (Some(HUB_B), Some("boiler-7"))
    );
    assert_eq!(result["status"], "assigned");

    // The resource shows where the device went, by its next drift check (3 s here).
    let shown = operator
        .eventually("individualenrollment/boiler", "the registration", |r| {
            r["status"]["registration"]["assignedHub"] == HUB_B
        })
        .await;
    assert_eq!(shown["status"]["registration"]["deviceId"], "boiler-7");
    assert_eq!(shown["status"]["registration"]["status"], "assigned");

    let wrong = register(&operator, "boiler", &BASE64.encode([7u8; 32])).await;
    assert_refused(&wrong);
}

fn group(device_ids: &[String]) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {{name: thermostats}}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: thermostats-keys}}\n  \
         allocationPolicy: hashed\n  iotHubs: [{HUB_A}, {HUB_B}]\n  deviceKeys:\n    secretName: thermostat-device-keys\n    \
         registrationIds: [{}]\n",
        device_ids.join(", ")
    )
}

/// The device keys Secret once the group's status says it holds `devices` keys.
async fn device_keys(operator: &Operator, devices: i64) -> std::collections::BTreeMap<String, String> {
    operator
        .eventually("enrollmentgroup/thermostats", &format!("{devices} device keys"), |r| {
            r["status"]["deviceKeys"]["devices"] == devices
        })
        .await;
    let secret = operator.get("secret/thermostat-device-keys").await;
    let data = secret["data"].as_object().cloned().unwrap_or_default();
    data.into_iter()
        .map(|(id, key)| (id, String::from_utf8(BASE64.decode(key.as_str().unwrap()).unwrap()).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_devices_provision_with_the_keys_the_operator_derived_spread_over_two_hubs() {
    let operator = start("device-group").await;
    let ids: Vec<String> = (0..8).map(|i| format!("thermostat-{i}")).collect();
    operator.apply(&group(&ids)).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    let keys = device_keys(&operator, 8).await;
    assert_eq!(keys.keys().cloned().collect::<Vec<_>>(), ids, "one entry per device");
    let group_key = BASE64.decode(primary_key(&operator, "thermostats-keys").await).unwrap();
    assert_eq!(
        keys["thermostat-0"],
        BASE64.encode(derived_key(&group_key, "thermostat-0")),
        "as DPS derives it"
    );
    let resource = operator.get("enrollmentgroup/thermostats").await;
    assert!(!keys.values().any(|key| resource.to_string().contains(key.as_str())), "no key in the resource");

    let mut hubs = Vec::new();
    for id in &ids {
        let registered = register(&operator, id, &keys[id]).await;
        assert_eq!(registered["ok"], true, "{id}: {registered}");
        assert_eq!(registered["result"]["symmetricKey"]["enrollmentGroupId"], "thermostats");
        hubs.push(registered["result"]["assignedHub"].as_str().unwrap().to_owned());
    }
    assert!(hubs.iter().any(|h| h == HUB_A) && hubs.iter().any(|h| h == HUB_B), "both hubs: {hubs:?}");
    let again = register(&operator, "thermostat-0", &keys["thermostat-0"]).await;
    assert_eq!(again["result"]["assignedHub"], hubs[0].as_str(), "the same hub each time");

    // The group's status counts them, and lists the latest.
    let shown = operator
        .eventually("enrollmentgroup/thermostats", "8 registrations", |r| {
            r["status"]["registrations"]["assigned"] == 8
        })
        .await;
    let summary = &shown["status"]["registrations"];
    assert_eq!(summary["total"], 8, "{summary}");
    assert!(summary["latest"].as_array().is_some_and(|latest| !latest.is_empty()), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_keys_follow_the_group_key_and_the_list() {
    let operator = start("device-keys").await;
    let ids: Vec<String> = (0..3).map(|i| format!("thermostat-{i}")).collect();
    operator.apply(&group(&ids)).await;
    let before = device_keys(&operator, 3).await;

    // The group key rotates: DPS gets the new key, the devices' keys are derived again, and a
    // device provisions with its new one.
    let rotated = BASE64.encode([9u8; 64]);
    let patch = json!({"stringData": {"primaryKey": rotated, "secondaryKey": rotated}}).to_string();
    assert!(
        operator
            .kubectl(&["patch", "secret", "thermostats-keys", "--type", "merge", "-p", &patch], None)
            .await
            .success
    );
    let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
    let after = loop {
        let keys = device_keys(&operator, 3).await;
        if keys != before {
            break keys;
        }
        assert!(tokio::time::Instant::now() < deadline, "the device keys were not derived again");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(after["thermostat-1"], BASE64.encode(derived_key(&[9u8; 64], "thermostat-1")));
    let registered = register(&operator, "thermostat-1", &after["thermostat-1"]).await;
    assert_eq!(registered["ok"], true, "{registered}");
    assert_eq!(
        register(&operator, "thermostat-2", &before["thermostat-2"]).await["status"],
        401,
        "the old key"
    );

    // Deleted by someone: written again by the next drift check (3 s here).
    assert!(operator.kubectl(&["delete", "secret", "thermostat-device-keys"], None).await.success);
    let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
    while !operator.kubectl(&["get", "secret", "thermostat-device-keys"], None).await.success {
        assert!(tokio::time::Instant::now() < deadline, "the device keys Secret was not restored");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(device_keys(&operator, 3).await, after, "restored as it was");

    // An id leaves the list: its entry goes. The list goes: the Secret goes.
    operator.apply(&group(&ids[..2])).await;
    let fewer = device_keys(&operator, 2).await;
    assert!(!fewer.contains_key("thermostat-2"), "{fewer:?}");
    let without = group(&ids).split("  deviceKeys:").next().unwrap().to_owned();
    operator.apply(&without).await;
    operator
        .eventually("enrollmentgroup/thermostats", "no device keys", |r| r["status"]["deviceKeys"].is_null())
        .await;
    assert!(!operator.kubectl(&["get", "secret", "thermostat-device-keys"], None).await.success, "deleted");

    // A Secret of that name the operator did not write is never overwritten.
    operator.create_secret("thermostat-device-keys", &[("note", "the user's")]).await;
    operator.apply(&group(&ids)).await;
    operator
        .eventually("enrollmentgroup/thermostats", "SecretNotOwned", |r| {
            support::operator::condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "SecretNotOwned")
        })
        .await;
    let untouched = operator.get("secret/thermostat-device-keys").await;
    assert_eq!(untouched["data"].as_object().unwrap().keys().collect::<Vec<_>>(), ["note"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_of_a_disabled_enrollment_is_refused() {
    let operator = start("device-disabled").await;
    operator.apply(&enrollment("heater", "  provisioningStatus: disabled\n")).await;
    operator.wait("individualenrollment/heater", "condition=Ready").await;
    let key = primary_key(&operator, "heater-keys").await;

    let refused = register(&operator, "heater", &key).await;
    assert_eq!(refused["ok"], false, "{refused}");
    // The SDK reads DPS's `disabled` as a status it cannot complete with.
    assert!(refused["error"].as_str().unwrap().contains("disabled"), "{refused}");
    assert!(operator.dps.get_registration("heater").await.is_err(), "no registration recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x509_devices_provision_with_their_certificates_individually_and_through_a_group() {
    use dps_operator::pki::CertificateAuthority;
    let operator = start("device-x509").await;
    let ca = CertificateAuthority::new("Contoso Devices CA").unwrap();
    let camera = ca.issue_client("camera-1", None).unwrap();
    operator.create_secret("camera-1-cert", &[("tls.crt", &camera.certificate_pem)]).await;
    operator.create_secret("devices-ca", &[("tls.crt", &ca.certificate_pem)]).await;
    operator
        .apply(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: camera-1}\nspec:\n  \
             serviceRef: {name: dps}\n  attestation:\n    x509:\n      clientCertificates:\n        primary: {name: camera-1-cert}\n",
        )
        .await;
    operator
        .apply(&format!(
            "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {{name: cameras}}\nspec:\n  \
             serviceRef: {{name: dps}}\n  attestation:\n    x509:\n      signingCertificates:\n        primary: {{name: devices-ca}}\n  \
             allocationPolicy: static\n  iotHubs: [{HUB_A}]\n"
        ))
        .await;
    operator.wait("individualenrollment/camera-1", "condition=Ready").await;
    operator.wait("enrollmentgroup/cameras", "condition=Ready").await;

    // Its own certificate, alone: the individual enrollment holds its thumbprint.
    let own = register_x509(&operator, "camera-1", &camera.certificate_pem, &camera.key_pem).await;
    assert_eq!(own["ok"], true, "{own}");
    assert_eq!(own["result"]["deviceId"], "camera-1");

    // A device of the group presents its certificate and the chain up to the signing certificate.
    let member = ca.issue_client("camera-2", None).unwrap();
    let chain = format!("{}{}", member.certificate_pem, ca.certificate_pem);
    let joined = register_x509(&operator, "camera-2", &chain, &member.key_pem).await;
    assert_eq!(joined["ok"], true, "{joined}");
    assert_eq!(joined["result"]["assignedHub"], HUB_A);
    assert_eq!(joined["result"]["x509"]["enrollmentGroupId"], "cameras");

    // A certificate of another CA, or of another name, is refused.
    let stranger_ca = CertificateAuthority::new("Someone Else").unwrap();
    let stranger = stranger_ca.issue_client("camera-3", None).unwrap();
    let chain = format!("{}{}", stranger.certificate_pem, stranger_ca.certificate_pem);
    let refused = register_x509(&operator, "camera-3", &chain, &stranger.key_pem).await;
    assert_refused(&refused);
    let chain = format!("{}{}", member.certificate_pem, ca.certificate_pem);
    let misnamed = register_x509(&operator, "camera-9", &chain, &member.key_pem).await;
    assert_eq!(misnamed["status"], 401, "{misnamed}");
}

/// An X.509 enrollment group's YAML; `x509` is its `attestation.x509` in flow style.
fn x509_group(name: &str, x509: &str) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {{name: {name}}}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation:\n    x509: {x509}\n  allocationPolicy: static\n  iotHubs: [{HUB_A}]\n"
    )
}

/// Verifies a CA certificate on the emulator through its admin endpoint, as a proof of possession
/// does on DPS.
async fn verify_on_dps(operator: &Operator, name: &str, pem: &str) {
    dps_operator::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(operator.emulator.ca_certificate().unwrap().as_bytes()).unwrap();
    let http = reqwest::Client::builder().tls_certs_merge([ca]).build().unwrap();
    let url = format!("{}/admin/certificates/{name}", operator.emulator.url());
    let answer = http.put(url).json(&json!({"certificate": pem})).send().await.unwrap();
    assert_eq!(answer.status(), 204, "{}", answer.text().await.unwrap());
}

/// DPS builds the chain from what a device presents up to a certificate the group trusts, root or
/// intermediate, as devices are made: a leaf alone, or a leaf and its intermediates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x509_devices_chain_up_to_a_certificate_their_group_trusts() {
    use dps_operator::pki::CertificateAuthority;
    let operator = start("device-chains").await;
    let root = CertificateAuthority::new("Contoso Root").unwrap();
    let line = root.issue_intermediate("Contoso Line 1").unwrap();
    let spare_root = CertificateAuthority::new("Contoso Spare Root").unwrap();
    let plant =
        CertificateAuthority::new("Fabrikam Root").unwrap().issue_intermediate("Fabrikam Plant").unwrap();
    let verified = CertificateAuthority::new("Northwind Root").unwrap();
    operator.create_secret("contoso-root", &[("tls.crt", &root.certificate_pem)]).await;
    operator.create_secret("contoso-spare", &[("tls.crt", &spare_root.certificate_pem)]).await;
    operator.create_secret("fabrikam-plant", &[("tls.crt", &plant.certificate_pem)]).await;
    verify_on_dps(&operator, "northwind-root", &verified.certificate_pem).await;
    let groups = [
        (
            "contoso",
            "{signingCertificates: {primary: {name: contoso-root}, secondary: {name: contoso-spare}}}",
        ),
        ("fabrikam", "{signingCertificates: {primary: {name: fabrikam-plant}}}"),
        ("northwind", "{caReferences: {primary: northwind-root}}"),
    ];
    for (name, x509) in groups {
        operator.apply(&x509_group(name, x509)).await;
    }
    for (name, _) in groups {
        operator.wait(&format!("enrollmentgroup/{name}"), "condition=Ready").await;
    }

    for slot in ["primary", "secondary"] {
        let sample = format!(
            "dps_operator_certificate_expiry_seconds{{kind=\"EnrollmentGroup\",namespace=\"{}\",name=\"contoso\",slot=\"{slot}\"}}",
            operator.namespace
        );
        assert!(operator.metric(&sample).is_some_and(|seconds| seconds > 86_400.0), "{sample}");
    }

    let registers = async |id: &str, by: &CertificateAuthority, chain: &[&CertificateAuthority]| {
        let leaf = by.issue_client(id, None).unwrap();
        let pem: String = std::iter::once(leaf.certificate_pem.as_str())
            .chain(chain.iter().map(|ca| ca.certificate_pem.as_str()))
            .collect();
        register_x509(&operator, id, &pem, &leaf.key_pem).await
    };
    let cases: [(&str, &CertificateAuthority, &[&CertificateAuthority], &str); 6] = [
        ("root-leaf-alone", &root, &[], "contoso"),
        ("line-leaf-and-intermediate", &line, &[&line], "contoso"),
        ("line-whole-chain", &line, &[&line, &root], "contoso"),
        ("spare-secondary-slot", &spare_root, &[], "contoso"),
        ("plant-leaf-alone", &plant, &[], "fabrikam"),
        ("northwind-verified-ca", &verified, &[], "northwind"),
    ];
    for (id, by, chain, group) in cases {
        let outcome = registers(id, by, chain).await;
        assert_eq!(outcome["ok"], true, "{id}: {outcome}");
        assert_eq!(outcome["result"]["x509"]["enrollmentGroupId"], group, "{id}: {outcome}");
    }

    // Refused, each with DPS's 401: an intermediate left out, a root no group trusts, an expired leaf.
    let stranger = CertificateAuthority::new("Contoso Root").unwrap();
    let expired = root.issue_expired_client("expired-leaf").unwrap();
    let refused = [
        registers("line-leaf-alone", &line, &[]).await,
        registers("stranger-root", &stranger, &[&stranger]).await,
        register_x509(&operator, "expired-leaf", &expired.certificate_pem, &expired.key_pem).await,
    ];
    for outcome in refused {
        assert_refused(&outcome);
    }
}

/// The key the operator publishes for a device: a group device's entry in the device keys
/// Secret, or the key an individual enrollment's Secret names in `activeKey`.
async fn published_key(operator: &Operator, secret: &str, entry: Option<&str>) -> String {
    let data = operator.get(&format!("secret/{secret}")).await["data"].clone();
    let text = |key: &str| String::from_utf8(BASE64.decode(data[key].as_str().unwrap()).unwrap()).unwrap();
    let entry = match entry {
        Some(entry) => entry.to_owned(),
        None if data["activeKey"].is_string() => text("activeKey"),
        None => "primaryKey".to_owned(),
    };
    text(&entry)
}

/// Rotates the keys of `resources` twice with the trigger annotation, each time waiting until the
/// new key is active and `rounds` of device registrations went by twice more.
async fn rotate_twice(operator: &Operator, resources: &[&str], rounds: &std::sync::atomic::AtomicUsize) {
    use std::sync::atomic::Ordering;
    // Two rounds that began after a rotation was published, before the next starts.
    let registered_twice_more = async || {
        let seen = rounds.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
        while rounds.load(Ordering::SeqCst) < seen + 2 {
            assert!(tokio::time::Instant::now() < deadline, "the devices stopped registering");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    registered_twice_more().await;
    for (trigger, active) in [("first", "secondary"), ("second", "primary")] {
        for resource in resources {
            let annotation = format!("dps.iot.dev/rotate-keys={trigger}");
            let annotated = operator.kubectl(&["annotate", resource, &annotation, "--overwrite"], None).await;
            assert!(annotated.success, "{}", annotated.stderr);
        }
        for resource in resources {
            operator
                .eventually(resource, &format!("the {active} key is active"), |r| {
                    let keys = &r["status"]["keys"];
                    keys["activeSlot"] == active
                        && keys["rotatingTo"].is_null()
                        && support::operator::is_ready(r)
                })
                .await;
        }
        registered_twice_more().await;
    }
}

/// Staged rotation: devices that register with the key the operator currently publishes are never
/// refused, through two rotations started while they register; afterwards the key published before
/// the first rotation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_using_the_published_key_are_never_refused_across_two_rotations() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let operator = start("device-rotation").await;
    operator
        .apply(&format!(
            "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {{name: sensors}}\nspec:\n  \
             serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: sensors-key}}\n  \
             allocationPolicy: static\n  iotHubs: [{HUB_A}]\n  deviceKeys:\n    secretName: sensors-device-keys\n    \
             registrationIds: [sensor-1]\n"
        ))
        .await;
    operator.apply(&enrollment("meter", "")).await;
    let resources = ["enrollmentgroup/sensors", "individualenrollment/meter"];
    for resource in resources {
        operator.wait(resource, "condition=Ready").await;
    }
    operator.eventually(resources[0], "device keys", |r| r["status"]["deviceKeys"]["devices"] == 1).await;
    let devices = [("sensor-1", "sensors-device-keys", Some("sensor-1")), ("meter", "meter-keys", None)];
    let mut first_keys = Vec::new();
    for (_, secret, entry) in devices {
        first_keys.push(published_key(&operator, secret, entry).await);
    }

    let (stop, rounds) = (AtomicBool::new(false), AtomicUsize::new(0));
    let registering = async {
        let mut outcomes = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for (id, secret, entry) in devices {
                let key = published_key(&operator, secret, entry).await;
                outcomes.push((id, register(&operator, id, &key).await));
            }
            rounds.fetch_add(1, Ordering::SeqCst);
        }
        outcomes
    };
    let rotating = async {
        rotate_twice(&operator, &resources, &rounds).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (outcomes, ()) = tokio::join!(registering, rotating);
    assert!(outcomes.len() >= 10, "{} registrations", outcomes.len());
    for (id, outcome) in &outcomes {
        assert_eq!(outcome["ok"], true, "{id} was refused with the key published for it: {outcome}");
    }

    // Both slots have been replaced since: the key published before the first rotation is refused.
    for ((id, ..), key) in devices.iter().zip(&first_keys) {
        let outcome = register(&operator, id, key).await;
        assert_refused(&outcome);
    }
    let group = operator.get(resources[0]).await;
    assert!(group["status"]["keys"]["lastRotationTime"].is_string(), "{}", group["status"]["keys"]);
    let (_, events) =
        operator.eventually_event("sensors", "KeyRotated", |(_, reason, _)| reason == "KeyRotated").await;
    assert!(!events.iter().any(|(_, reason, _)| reason == "BothKeysReplaced"), "{events:?}");
}

/// The group `line` and the individual enrollment `camera-7`, each with a primary certificate
/// alone (from Secrets `line-ca` and `camera-7-cert`) that rolls over with `overlap`.
fn rollover_manifests(overlap: &str) -> [String; 2] {
    let line = format!("{{signingCertificates: {{primary: {{name: line-ca}}, rolloverOverlap: {overlap}}}}}");
    let camera = format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: camera-7}}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation:\n    x509:\n      clientCertificates: \
         {{primary: {{name: camera-7-cert}}, rolloverOverlap: {overlap}}}\n"
    );
    [x509_group("line", &line), camera]
}

/// Asserts that DPS refused a device with 401.
fn assert_refused(outcome: &Value) {
    assert_eq!((outcome["ok"].as_bool(), outcome["status"].as_u64()), (Some(false), Some(401)), "{outcome}");
}

/// Replaces the certificate in Secret `name`, as a renewal does.
async fn renew(operator: &Operator, name: &str, pem: &str) {
    let patch = json!({"stringData": {"tls.crt": pem}}).to_string();
    let output = operator.kubectl(&["patch", "secret", name, "--type", "merge", "-p", &patch], None).await;
    assert!(output.success, "{}", output.stderr);
}

/// X.509 rollover: when the certificate in a Secret changes, the previous one stays in DPS's
/// secondary slot, so devices chaining to the old and to the new certificate both register
/// during the overlap; once it ends, the old chain is refused. A group's intermediate and an
/// individual enrollment's leaf alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewed_certificate_rolls_over_and_both_chains_register_during_the_overlap() {
    use dps_operator::pki::CertificateAuthority;
    let operator = start("device-rollover").await;
    let root = CertificateAuthority::new("Contoso Root").unwrap();
    let (old_line, new_line) = (
        root.issue_intermediate("Contoso Line 2026").unwrap(),
        root.issue_intermediate("Contoso Line 2027").unwrap(),
    );
    let (old_camera, new_camera) =
        (root.issue_client("camera-7", None).unwrap(), root.issue_client("camera-7", None).unwrap());
    operator.create_secret("line-ca", &[("tls.crt", &old_line.certificate_pem)]).await;
    operator.create_secret("camera-7-cert", &[("tls.crt", &old_camera.certificate_pem)]).await;
    for manifest in rollover_manifests("1h") {
        operator.apply(&manifest).await;
    }
    let resources = ["enrollmentgroup/line", "individualenrollment/camera-7"];
    for resource in resources {
        operator.wait(resource, "condition=Ready").await;
    }
    let line_device = async |id: &str, ca: &CertificateAuthority| {
        let leaf = ca.issue_client(id, None).unwrap();
        register_x509(
            &operator,
            id,
            &format!("{}{}", leaf.certificate_pem, ca.certificate_pem),
            &leaf.key_pem,
        )
        .await
    };
    let camera_device = async |leaf: &dps_operator::pki::CertifiedKey| {
        register_x509(&operator, "camera-7", &leaf.certificate_pem, &leaf.key_pem).await
    };
    assert_eq!(line_device("sensor-old-1", &old_line).await["ok"], true);

    renew(&operator, "line-ca", &new_line.certificate_pem).await;
    renew(&operator, "camera-7-cert", &new_camera.certificate_pem).await;
    for resource in resources {
        let rolled = operator
            .eventually(resource, "the previous certificate in the secondary slot", |r| {
                let certificates = &r["status"]["certificates"];
                certificates["secondary"]["current"] == false
                    && certificates["previousUntil"].is_string()
                    && support::operator::is_ready(r)
            })
            .await;
        assert_eq!(rolled["status"]["certificates"]["primary"]["current"], true, "{}", rolled["status"]);
    }
    // During the overlap, both chains and both leaves.
    for (id, ca) in [("sensor-old-2", &old_line), ("sensor-new-1", &new_line)] {
        let outcome = line_device(id, ca).await;
        assert_eq!(outcome["ok"], true, "{id}: {outcome}");
    }
    for leaf in [&old_camera, &new_camera] {
        let outcome = camera_device(leaf).await;
        assert_eq!(outcome["ok"], true, "{outcome}");
    }
    let (_, events) = operator
        .eventually_event("line", "CertificateRolledOver", |(_, reason, _)| reason == "CertificateRolledOver")
        .await;
    assert!(!events.iter().any(|(kind, ..)| kind == "Warning"), "{events:?}");

    // The overlap ends: the previous certificate leaves DPS, and with it the old chain.
    for manifest in rollover_manifests("0s") {
        operator.apply(&manifest).await;
    }
    for resource in resources {
        operator
            .eventually(resource, "no previous certificate", |r| {
                r["status"]["certificates"]["secondary"].is_null() && support::operator::is_ready(r)
            })
            .await;
    }
    assert_refused(&line_device("sensor-old-3", &old_line).await);
    assert_refused(&camera_device(&old_camera).await);
    assert_eq!(line_device("sensor-new-2", &new_line).await["ok"], true);
    assert_eq!(camera_device(&new_camera).await["ok"], true);
}

/// A cert-manager Certificate: a CA (`isCA`) or a device's leaf, from `issuer`.
fn cert_manager_certificate(
    name: &str,
    common_name: &str,
    issuer: &str,
    is_ca: bool,
    organization: &str,
) -> String {
    format!(
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {{name: {name}}}\nspec:\n  \
         secretName: {name}-tls\n  commonName: {common_name}\n  isCA: {is_ca}\n  \
         subject: {{organizations: [{organization}]}}\n  privateKey: {{algorithm: ECDSA, size: 256, rotationPolicy: Always}}\n  \
         usages: [{}]\n  issuerRef: {{name: {issuer}, kind: Issuer}}\n",
        if is_ca { "cert sign, crl sign, digital signature" } else { "client auth, digital signature" }
    )
}

/// cert-manager as the source of a group's signing certificate, with the real cert-manager
/// controller: a CA Issuer signs an intermediate (`isCA`) the group names; the intermediate is
/// renewed during the test (re-keyed), the operator rolls over, and devices with leaves from the
/// old and from the new intermediate register throughout the overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cert_manager_intermediate_renewed_mid_test_keeps_devices_of_both_registering() {
    support::cert_manager();
    let operator = start("device-cert-manager").await;
    let issuers = "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: bootstrap}\nspec: {selfSigned: {}}\n\
         ---\napiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: root}\nspec: {ca: {secretName: root-ca-tls}}\n\
         ---\napiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: line}\nspec: {ca: {secretName: line-ca-tls}}\n";
    operator.apply(issuers).await;
    operator.apply(&cert_manager_certificate("root-ca", "Contoso Root", "bootstrap", true, "Contoso")).await;
    operator.apply(&cert_manager_certificate("line-ca", "Contoso Line", "root", true, "Contoso 2026")).await;
    operator.wait("certificate/line-ca", "condition=Ready").await;
    operator
        .apply(&x509_group(
            "line",
            "{signingCertificates: {certificateRef: {name: line-ca}, rolloverOverlap: 1h}}",
        ))
        .await;
    operator.wait("enrollmentgroup/line", "condition=Ready").await;

    // A device's leaf, issued by the line CA as it is now: tls.crt holds the leaf and the intermediate.
    let issue_device = async |id: &str| {
        operator.apply(&cert_manager_certificate(id, id, "line", false, "Contoso")).await;
        operator.wait(&format!("certificate/{id}"), "condition=Ready").await;
        let data = operator.get(&format!("secret/{id}-tls")).await["data"].clone();
        let text =
            |key: &str| String::from_utf8(BASE64.decode(data[key].as_str().unwrap()).unwrap()).unwrap();
        (text("tls.crt"), text("tls.key"))
    };
    let old_device = issue_device("sensor-2026").await;
    let outcome = register_x509(&operator, "sensor-2026", &old_device.0, &old_device.1).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    let before =
        operator.get("enrollmentgroup/line").await["status"]["certificates"]["primary"]["sha256Thumbprint"]
            .clone();

    // cert-manager renews the intermediate with a new key (its spec changed).
    operator.apply(&cert_manager_certificate("line-ca", "Contoso Line", "root", true, "Contoso 2027")).await;
    let rolled = operator
        .eventually("enrollmentgroup/line", "the renewed intermediate rolled over", |r| {
            let certificates = &r["status"]["certificates"];
            certificates["primary"]["sha256Thumbprint"] != before
                && certificates["secondary"]["sha256Thumbprint"] == before
                && support::operator::is_ready(r)
        })
        .await;
    assert!(
        rolled["status"]["certificates"]["primary"]["subject"].as_str().unwrap().contains("Contoso 2027")
    );
    let new_device = issue_device("sensor-2027").await;
    for (id, (chain, key)) in [("sensor-2026", &old_device), ("sensor-2027", &new_device)] {
        let outcome = register_x509(&operator, id, chain, key).await;
        assert_eq!(outcome["ok"], true, "{id}: {outcome}");
    }

    // The overlap ends: only the renewed intermediate's devices register.
    operator
        .apply(&x509_group(
            "line",
            "{signingCertificates: {certificateRef: {name: line-ca}, rolloverOverlap: 0s}}",
        ))
        .await;
    operator
        .eventually("enrollmentgroup/line", "no previous certificate", |r| {
            r["status"]["certificates"]["secondary"].is_null() && support::operator::is_ready(r)
        })
        .await;
    let refused = register_x509(&operator, "sensor-2026", &old_device.0, &old_device.1).await;
    assert_refused(&refused);
    assert_eq!(register_x509(&operator, "sensor-2027", &new_device.0, &new_device.1).await["ok"], true);
}

/// Blocking one device of a group (issue 28): a disabled individual enrollment with its id, which
/// DPS looks at before the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_device_of_a_group_is_refused_the_rest_are_not_and_it_registers_once_unblocked() {
    let operator = start("device-blocked").await;
    let ids: Vec<String> = (1..=2).map(|i| format!("thermostat-{i}")).collect();
    operator.apply(&group(&ids)).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    let keys = device_keys(&operator, 2).await;
    for id in &ids {
        let registered = register(&operator, id, &keys[id]).await;
        assert_eq!(registered["ok"], true, "{id}: {registered}");
    }

    let blocked = format!("{}  blockedDevices:\n  - registrationId: thermostat-1\n", group(&ids));
    operator.apply(&blocked).await;
    operator
        .eventually("enrollmentgroup/thermostats", "thermostat-1 blocked", |r| {
            r["status"]["blockedDevices"] == json!(["thermostat-1"])
        })
        .await;
    let made: models::IndividualEnrollment = operator.dps.get("thermostat-1").await.unwrap();
    assert_eq!(made.provisioning_status, Some(models::ProvisioningStatus::Disabled));
    assert_refused(&register(&operator, "thermostat-1", &keys["thermostat-1"]).await);
    let other = register(&operator, "thermostat-2", &keys["thermostat-2"]).await;
    assert_eq!(other["ok"], true, "the rest of the group is not refused: {other}");

    operator.apply(&group(&ids)).await;
    operator
        .eventually("enrollmentgroup/thermostats", "thermostat-1 unblocked", |r| {
            r["status"]["blockedDevices"].is_null()
        })
        .await;
    assert!(
        operator.dps.get::<models::IndividualEnrollment>("thermostat-1").await.is_err(),
        "removed from DPS"
    );
    let again = register(&operator, "thermostat-1", &keys["thermostat-1"]).await;
    assert_eq!(again["ok"], true, "registers again once unblocked: {again}");

    // An individual enrollment the group did not make is never taken over.
    let mut foreign = made.clone();
    foreign.optional_device_information = None;
    foreign.etag = None;
    operator.dps.put(&foreign, dps_operator::dps::IfMatch::None).await.unwrap();
    operator.apply(&blocked).await;
    let refused = operator
        .eventually("enrollmentgroup/thermostats", "the block refused", |r| {
            r["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "False"))
        })
        .await;
    let message = refused["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["message"]
        .clone();
    assert!(
        message.as_str().unwrap().contains("individual enrollment thermostat-1 that this group did not make"),
        "{message}"
    );
}

/// Blocking one device of an X.509 group: the individual enrollment that blocks it holds the
/// device's certificate, as DPS requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_device_of_an_x509_group_is_refused_by_its_certificate() {
    use dps_operator::pki::CertificateAuthority;
    let operator = start("device-blocked-x509").await;
    let ca = CertificateAuthority::new("Contoso Devices CA").unwrap();
    operator.create_secret("devices-ca", &[("tls.crt", &ca.certificate_pem)]).await;
    let (lost, kept) =
        (ca.issue_client("camera-lost", None).unwrap(), ca.issue_client("camera-kept", None).unwrap());
    operator.create_secret("camera-lost-cert", &[("tls.crt", &lost.certificate_pem)]).await;
    let group = x509_group("cameras", "{signingCertificates: {primary: {name: devices-ca}}}");
    let blocked = format!(
        "{group}  blockedDevices:\n  - registrationId: camera-lost\n    certificateSecretRef: {{name: camera-lost-cert}}\n"
    );
    operator.apply(&blocked).await;
    operator.wait("enrollmentgroup/cameras", "condition=Ready").await;
    operator
        .eventually("enrollmentgroup/cameras", "camera-lost blocked", |r| {
            r["status"]["blockedDevices"] == json!(["camera-lost"])
        })
        .await;
    let chain = |device: &dps_operator::pki::CertifiedKey| {
        format!("{}{}", device.certificate_pem, ca.certificate_pem)
    };
    // Its certificate leads DPS to the disabled individual enrollment: refused as disabled.
    let refused = register_x509(&operator, "camera-lost", &chain(&lost), &lost.key_pem).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("disabled"), "{refused}");
    let other = register_x509(&operator, "camera-kept", &chain(&kept), &kept.key_pem).await;
    assert_eq!(other["ok"], true, "{other}");

    operator.apply(&group).await;
    operator
        .eventually("enrollmentgroup/cameras", "camera-lost unblocked", |r| {
            r["status"]["blockedDevices"].is_null()
        })
        .await;
    let again = register_x509(&operator, "camera-lost", &chain(&lost), &lost.key_pem).await;
    assert_eq!(again["ok"], true, "{again}");

    // Blocked again, then the group deleted (deletionPolicy Delete): its blocks go with it.
    operator.apply(&blocked).await;
    operator
        .eventually("enrollmentgroup/cameras", "blocked again", |r| {
            r["status"]["blockedDevices"] == json!(["camera-lost"])
        })
        .await;
    assert!(operator.kubectl(&["delete", "enrollmentgroup/cameras", "--timeout=60s"], None).await.success);
    assert!(
        operator.dps.get::<models::IndividualEnrollment>("camera-lost").await.is_err(),
        "the block is gone"
    );
}
