//! `kubectl dps import` round trip: an emulator seeded through the official Python service SDK with
//! every shape (tests/import/seed.py), imported with the plugin, applied with plain `kubectl apply`:
//! every resource Ready, every DPS etag unchanged, no write in the emulator's call log.

mod support;

use std::{collections::BTreeMap, path::PathBuf, process::Command, sync::OnceLock};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::EmulatorConfig;
use dps_operator::{dps::models, pki::CertificateAuthority};
use futures::TryStreamExt;
use serde_json::{Value, json};
use support::{Output, operator::Operator};

const HUB_A: &str = "hub-a.azure-devices.net";
const HUB_B: &str = "hub-b.azure-devices.net";

/// The Python with the SDK: `DPS_PYTHON`, else what `scripts/install-service-sdks` installs.
fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(python) = std::env::var_os("DPS_PYTHON") {
            return python.into();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-service-sdks");
        let output = Command::new(script).output().expect("scripts/install-service-sdks runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().into()
    })
}

/// Runs `kubectl dps` as the control plane's admin.
async fn plugin(args: &[&str]) -> Output {
    support::kubectl_dps(args.iter().map(|a| a.to_string()).collect(), None).await
}

async fn start(prefix: &str) -> Operator {
    let linked = EmulatorConfig { linked_hubs: Some(vec![HUB_A.into(), HUB_B.into()]), ..Default::default() };
    let operator = Operator::start_with(prefix, linked, |_| {}).await;
    operator.wait("provisioningservice/dps", "condition=Ready").await;
    operator
}

/// What the seed made that a user has: the certificates and the keys.
struct Seeded {
    signing: [CertificateAuthority; 2],
    leaf: String,
    boiler_keys: (String, String),
}

/// Seeds the emulator with tests/import/seed.py.
async fn seed(operator: &Operator) -> Seeded {
    let signing = [
        CertificateAuthority::new("Cameras Line 1 CA").unwrap(),
        CertificateAuthority::new("Cameras Line 1 CA 2").unwrap(),
    ];
    let root = CertificateAuthority::new("Gateways Root").unwrap();
    operator.emulator.verify_certificate("gateways-root", &root.certificate_pem).unwrap();
    let leaf = CertificateAuthority::new("Camera CA")
        .unwrap()
        .issue_client("camera-07", None)
        .unwrap()
        .certificate_pem;
    let key = || BASE64.encode(dps_operator::random_bytes::<32>());
    let boiler_keys = (key(), key());
    let seed = json!({
        "hubs": [HUB_A, HUB_B],
        "signing_primary": signing[0].certificate_pem,
        "signing_secondary": signing[1].certificate_pem,
        "ca_name": "gateways-root",
        "leaf": leaf,
        "webhook": "https://alloc.example/api/allocate?code=function-key",
        "boiler_primary": boiler_keys.0,
        "boiler_secondary": boiler_keys.1,
    });
    let ca = std::env::temp_dir().join(format!("{}-dps-ca.pem", operator.namespace));
    std::fs::write(&ca, operator.emulator.ca_certificate().unwrap()).unwrap();
    let mut command = Command::new(python());
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/import/seed.py"))
        .env("DPS_CONNECTION_STRING", operator.emulator.connection_string())
        .env("DPS_CA_FILE", &ca)
        .env("DPS_SEED", seed.to_string());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert!(output.status.success(), "seed.py: {}", String::from_utf8_lossy(&output.stderr));
    Seeded { signing, leaf, boiler_keys }
}

/// Every enrollment group's and individual enrollment's etag, by id.
async fn etags(operator: &Operator) -> BTreeMap<String, String> {
    let groups: Vec<models::EnrollmentGroup> =
        operator.dps.query("SELECT *", None).try_collect().await.unwrap();
    let enrollments: Vec<models::IndividualEnrollment> =
        operator.dps.query("SELECT *", None).try_collect().await.unwrap();
    let groups = groups.into_iter().map(|g| (format!("group/{}", g.enrollment_group_id), g.etag.unwrap()));
    groups
        .chain(
            enrollments.into_iter().map(|e| (format!("enrollment/{}", e.registration_id), e.etag.unwrap())),
        )
        .collect()
}

/// The write calls the emulator answered since its calls were last reset.
fn writes(operator: &Operator) -> Vec<String> {
    let calls = operator.emulator.calls();
    let is_write =
        |op: &str| ["CreateOrUpdate", "Delete", "RunBulkOperation"].iter().any(|w| op.ends_with(w));
    calls.into_keys().filter(|op| is_write(op)).collect()
}

/// The name the import gave the resource of `kind` with DPS id `id`.
async fn imported_name(operator: &Operator, kind: &str, id_field: &str, id: &str) -> String {
    let list = operator.get(kind).await;
    let items = list["items"].as_array().unwrap();
    let found = items
        .iter()
        .find(|item| item["spec"][id_field] == id)
        .unwrap_or_else(|| panic!("{kind} {id}: {list}"));
    found["metadata"]["name"].as_str().unwrap().to_owned()
}

async fn ready_reason(operator: &Operator, resource: &str, reason: &str) -> String {
    let seen = operator
        .eventually(resource, &format!("Ready=False {reason}"), |r| {
            r["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| c["type"] == "Ready" && c["status"] == "False" && c["reason"] == reason)
            })
        })
        .await;
    let conditions = seen["status"]["conditions"].as_array().unwrap();
    conditions.iter().find(|c| c["type"] == "Ready").unwrap()["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_imported_dps_applies_with_no_write_and_no_credential_changed() {
    let operator = start("import").await;
    let seeded = seed(&operator).await;
    let before = etags(&operator).await;
    assert_eq!(before.len(), 8, "{before:?}");
    operator.emulator.reset_calls();
    let ns = operator.namespace.clone();

    // Without keys, one file per resource: every resource waits for what only the user has.
    let dir = std::env::temp_dir().join(format!("{ns}-imported"));
    let _ = std::fs::remove_dir_all(&dir);
    let imported =
        plugin(&["import", "--service", "dps", "-n", &ns, "--output-dir", dir.to_str().unwrap()]).await;
    assert!(imported.success, "{}", imported.stderr);
    assert!(
        imported.stderr.contains("Wrote 3 enrollment groups, 5 individual enrollments and 2 Secrets"),
        "{}",
        imported.stderr
    );
    let applied = operator.kubectl(&["apply", "-f", dir.to_str().unwrap()], None).await;
    assert!(applied.success, "{}", applied.stderr);
    wait_for_what_is_missing(&operator, &seeded).await;
    assert_eq!(writes(&operator), Vec::<String>::new(), "nothing written while waiting");

    // With keys, to one file; the user fills the certificate Secrets.
    let file = std::env::temp_dir().join(format!("{ns}-imported.yaml"));
    let imported =
        plugin(&["import", "--service", "dps", "-n", &ns, "--with-keys", "-o", file.to_str().unwrap()]).await;
    assert!(imported.success, "{}", imported.stderr);
    let applied = operator.kubectl(&["apply", "-f", file.to_str().unwrap()], None).await;
    assert!(applied.success, "{}", applied.stderr);
    fill_certificates(&operator, &seeded).await;
    for kind in ["enrollmentgroups", "individualenrollments"] {
        let waited =
            operator.kubectl(&["wait", kind, "--all", "--for=condition=Ready", "--timeout=60s"], None).await;
        assert!(
            waited.success,
            "{}\n{}",
            waited.stderr,
            operator.kubectl(&["get", kind, "-o", "yaml"], None).await.stdout
        );
    }
    assert_eq!(etags(&operator).await, before, "every etag unchanged");
    assert_eq!(writes(&operator), Vec::<String>::new(), "no write in the emulator's call log");
    let held =
        operator.dps.attestation_mechanism::<models::IndividualEnrollment>("boiler-0042").await.unwrap();
    let held = held.symmetric_key.unwrap();
    assert_eq!(
        (held.primary_key.unwrap().expose(), held.secondary_key.unwrap().expose()),
        (seeded.boiler_keys.0.as_str(), seeded.boiler_keys.1.as_str())
    );
    check_fields(&operator).await;
}

/// The waits of an import without keys: key Secrets named, certificates named by thumbprint; what
/// needs nothing from the user is Ready.
async fn wait_for_what_is_missing(operator: &Operator, seeded: &Seeded) {
    let ns = &operator.namespace;
    let message = ready_reason(operator, "individualenrollment/boiler-0042", "SecretNotFound").await;
    assert!(message.contains(&format!("Secret {ns}/boiler-0042-keys")), "{message}");
    let cameras = imported_name(operator, "enrollmentgroups", "enrollmentGroupId", "Cameras_Line1").await;
    assert!(cameras.starts_with("cameras-line1-"), "{cameras}");
    let message = ready_reason(operator, &format!("enrollmentgroup/{cameras}"), "CredentialsDiffer").await;
    let group: models::EnrollmentGroup = operator.dps.get("Cameras_Line1").await.unwrap();
    let held = group.attestation.x509.unwrap().signing_certificates.unwrap();
    let thumbprints =
        [held.primary, held.secondary].map(|slot| slot.unwrap().info.unwrap().sha256_thumbprint);
    assert!(
        thumbprints.iter().any(|t| message.contains(t)) && message.contains("does not exist"),
        "{message}"
    );
    assert!(!seeded.leaf.is_empty());
    operator.wait("individualenrollment/tpm-device-01", "condition=Ready").await;
    operator.wait("enrollmentgroup/gateways", "condition=Ready").await;
}

async fn fill_certificates(operator: &Operator, seeded: &Seeded) {
    let cameras = imported_name(operator, "enrollmentgroups", "enrollmentGroupId", "Cameras_Line1").await;
    let secrets = [
        (format!("{cameras}-cert"), seeded.signing[0].certificate_pem.clone()),
        (format!("{cameras}-cert2"), seeded.signing[1].certificate_pem.clone()),
        ("camera-07-cert".to_owned(), seeded.leaf.clone()),
    ];
    for (name, pem) in secrets {
        operator.create_secret(&name, &[("tls.crt", &pem)]).await;
    }
}

/// The imported resources carry DPS's fields.
async fn check_fields(operator: &Operator) {
    let thermostats = operator.get("enrollmentgroup/thermostats-2026").await;
    let spec = &thermostats["spec"];
    assert_eq!(spec["adoption"], "Adopt");
    assert_eq!(spec["iotHubs"], json!([HUB_A, HUB_B]));
    assert_eq!(spec["initialTwin"]["tags"]["site"]["building"], 7);
    assert_eq!(spec["initialTwin"]["desiredProperties"]["interval"], 60);
    assert_eq!(spec["reprovisionPolicy"], json!({"updateHubAssignment": true, "migrateDeviceData": false}));
    let disabled =
        imported_name(operator, "individualenrollments", "registrationId", "Disabled.Device").await;
    let disabled: Value = operator.get(&format!("individualenrollment/{disabled}")).await;
    assert_eq!(disabled["spec"]["provisioningStatus"], "disabled");
    let gateway = operator.get("individualenrollment/edge-gw-1").await;
    assert_eq!(gateway["spec"]["iotEdge"], true);
    assert_eq!(gateway["spec"]["customAllocation"]["webhookUrlSecretRef"]["name"], "edge-gw-1-webhook");
    let tpm = operator.get("individualenrollment/tpm-device-01").await;
    assert_eq!(tpm["spec"]["deviceId"], "tpm-01");
    assert!(tpm["spec"]["attestation"]["tpm"]["endorsementKey"].as_str().unwrap().starts_with("AToAAQ"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_dps_is_read_page_by_page_and_a_failed_import_leaves_no_file() {
    // DPS's quota, enforced: a tenth of a minute's operations in a burst, then 10 a second.
    let quota = EmulatorConfig { operations_per_minute: Some(600), ..Default::default() };
    let operator = Operator::start_with("import-large", quota, |_| {}).await;
    let enrollments: Vec<models::IndividualEnrollment> = (0..80)
        .map(|i| {
            let mut record = models::IndividualEnrollment {
                registration_id: format!("device-{i:03}"),
                ..Default::default()
            };
            record.attestation.type_ = models::AttestationType::Tpm;
            record.attestation.tpm = Some(models::TpmAttestation {
                endorsement_key: "AToAAQALAAMAsgAg".into(),
                storage_root_key: None,
            });
            record
        })
        .collect();
    let seeded = operator.dps.bulk(models::BulkMode::Create, &enrollments).await.unwrap();
    assert!(seeded.is_successful);
    let dir = std::env::temp_dir().join(format!("{}-large", operator.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let (connection, ca) = (dir.join("connection-string"), dir.join("ca.pem"));
    std::fs::write(&connection, operator.emulator.connection_string()).unwrap();
    std::fs::write(&ca, operator.emulator.ca_certificate().unwrap()).unwrap();
    let import = |output: &str, extra: &[&str]| {
        let mut args = vec!["import", "--connection", "dps", "--page-size", "1", "--rate", "100000"];
        args.extend([
            "--connection-string-file",
            connection.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
        ]);
        args.extend(extra);
        let output = dir.join(output).to_str().unwrap().to_owned();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).chain(["-o".into(), output]).collect();
        support::kubectl_dps(args, None)
    };

    // Faster than the quota: some pages are refused with 429 and read again after Retry-After.
    let imported = import("all.yaml", &[]).await;
    assert!(imported.success, "{}", imported.stderr);
    assert!(imported.stderr.contains("trying again in"), "{}", imported.stderr);
    assert!(operator.emulator.calls_answered(429) > 0, "the quota was reached");
    assert!(imported.stderr.contains("listing individual enrollments: 80 of 80"), "{}", imported.stderr);
    let written = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
    assert_eq!(written.matches("kind: IndividualEnrollment").count(), 80);

    // DPS refusing a page for good: the import fails in one line, and leaves no file behind.
    operator.emulator.set_faults(dps_emulator::Faults {
        error_rates: [(401, 1.0)].into(),
        operations: ["IndividualEnrollment_Query".to_owned()].into(),
        ..Default::default()
    });
    let failed = import("failed.yaml", &[]).await;
    assert!(!failed.success);
    let last = failed.stderr.lines().last().unwrap();
    assert!(last.starts_with("error: listing individual enrollments from DPS"), "{last}");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|name| !name.contains("failed")), "{left:?}");
    let bad = import("bad.yaml", &["--label", "team"]).await;
    assert!(!bad.success && bad.stderr.trim() == "error: --label team: expected KEY=VALUE", "{}", bad.stderr);
}

const MADE_BY_OTHERS: &str = "apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollmentSet
metadata: {name: fleet}
spec:
  serviceRef: {name: dps}
  attestation: {symmetricKey: {secretRef: {name: fleet-key}}}
  members: [{registrationId: sensor-1}, {registrationId: sensor-2}]
---
apiVersion: dps.iot.dev/v1beta1
kind: EnrollmentGroup
metadata: {name: thermostats}
spec:
  serviceRef: {name: dps}
  attestation: {symmetricKey: {secretRef: {name: thermostats-keys}}}
  blockedDevices: [{registrationId: thermostat-9}]
";

/// The enrollments a set made, and the one a group made to block a device, are left to them: the
/// import names each and why, and writes no resource that would contend with its maker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollments_a_set_or_a_group_made_are_skipped_naming_their_maker() {
    let operator = start("import-made").await;
    let ns = operator.namespace.clone();
    operator.apply(MADE_BY_OTHERS).await;
    operator.wait("individualenrollmentset/fleet", "condition=Ready").await;
    operator
        .eventually("enrollmentgroup/thermostats", "the device is blocked", |r| {
            r["status"]["blockedDevices"] == serde_json::json!(["thermostat-9"])
        })
        .await;

    let imported = plugin(&["import", "--service", "dps", "-n", &ns]).await;
    assert!(imported.success, "{}", imported.stderr);
    let said = &imported.stderr;
    assert!(said.contains("Wrote 1 enrollment groups, 0 individual enrollments"), "{said}");
    for id in ["sensor-1", "sensor-2"] {
        let skipped =
            format!("skipped {id}: made by IndividualEnrollmentSet {ns}/fleet: manage it through that set");
        assert!(said.contains(&skipped), "{said}");
    }
    let skipped = "skipped thermostat-9: blocks a device of enrollment group thermostats: manage it \
                   through that group's spec.blockedDevices";
    assert!(said.contains(skipped), "{said}");
    assert!(!imported.stdout.contains("kind: IndividualEnrollment\n"), "{}", imported.stdout);
    assert!(imported.stdout.contains("kind: EnrollmentGroup\n"), "{}", imported.stdout);
}
