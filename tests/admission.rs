//! The CRDs on a real API server: what is admitted, what is refused and with which message, and
//! how the resources look in kubectl.

mod support;

use std::{fs, path::Path};

use serde_json::{Value, json};
use support::{kubectl, kubectl_ok, namespace};

fn manifest_dir(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn yaml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn yaml_to_json(yaml: &str) -> Value {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{yaml}"))
}

/// The object a manifest describes, as the API server stores it.
fn stored(manifest: &Value, namespace: &str) -> Value {
    let kind = manifest["kind"].as_str().expect("manifest has a kind");
    let name = manifest["metadata"]["name"].as_str().expect("manifest has a name");
    let resource = format!("{}.dps.iot.dev/{name}", kind.to_lowercase());
    serde_json::from_str(&kubectl_ok(&["get", &resource, "-n", namespace, "-o", "json"]))
        .expect("kubectl prints JSON")
}

#[test]
fn every_example_is_admitted_and_reads_back_equal() {
    let namespace = namespace("examples");
    let examples = yaml_files(&manifest_dir("examples"));
    let kinds: std::collections::BTreeSet<String> = examples
        .iter()
        .map(|path| yaml_to_json(&fs::read_to_string(path).unwrap())["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "ClusterProvisioningService",
            "EnrollmentGroup",
            "IndividualEnrollment",
            "IndividualEnrollmentSet",
            "ProvisioningService"
        ],
        "examples/ should show every kind"
    );

    for path in examples {
        let yaml = fs::read_to_string(&path).unwrap();
        let manifest = yaml_to_json(&yaml);
        let applied = kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(&yaml));
        assert!(applied.success, "{} was refused: {}", path.display(), applied.stderr);

        let stored = stored(&manifest, &namespace);
        assert_eq!(stored["spec"], manifest["spec"], "{} reads back different", path.display());
        assert_eq!(stored["metadata"]["name"], manifest["metadata"]["name"]);
    }
}

#[test]
fn examples_show_every_attestation_kind_of_each_enrollment_kind() {
    let mut seen = std::collections::BTreeSet::new();
    for path in yaml_files(&manifest_dir("examples")) {
        let manifest = yaml_to_json(&fs::read_to_string(&path).unwrap());
        let kind = manifest["kind"].as_str().unwrap().to_owned();
        if let Some(attestation) = manifest["spec"]["attestation"].as_object() {
            for (attestation_kind, settings) in attestation {
                let detail = settings.as_object().and_then(|s| s.keys().next().cloned()).unwrap_or_default();
                seen.insert(format!("{kind}/{attestation_kind}/{detail}"));
            }
        }
    }
    let expected = [
        "EnrollmentGroup/symmetricKey/secretRef",
        "EnrollmentGroup/x509/caReferences",
        "EnrollmentGroup/x509/signingCertificates",
        "IndividualEnrollment/symmetricKey/secretRef",
        "IndividualEnrollment/tpm/endorsementKey",
        "IndividualEnrollment/x509/clientCertificates",
        "IndividualEnrollmentSet/symmetricKey/deviceKeysSecretName",
    ];
    assert_eq!(seen.iter().map(String::as_str).collect::<Vec<_>>(), expected);
}

/// One case of the invalid corpus in `tests/invalid/`.
///
/// A case file starts with `# field: <path>` (the field the error must name) and
/// `# message: <text>` lines (text the error must contain). Its last YAML document is the one that
/// must be refused; documents before it are applied first and must be admitted, so a case can
/// test an update.
struct InvalidCase {
    name: String,
    field: String,
    messages: Vec<String>,
    setup: Vec<String>,
    refused: String,
}

impl InvalidCase {
    fn load(path: &Path) -> Self {
        let text = fs::read_to_string(path).unwrap();
        let header = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|line| line.strip_prefix(&format!("# {key}: ")))
                .map(str::to_owned)
                .collect()
        };
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let field =
            header("field").into_iter().next().unwrap_or_else(|| panic!("{name} has no `# field:` line"));
        let messages = header("message");
        assert!(!messages.is_empty(), "{name} has no `# message:` line");
        let mut documents: Vec<String> = text
            .split("\n---\n")
            .map(str::to_owned)
            .filter(|doc| doc.lines().any(|line| !line.trim().is_empty() && !line.starts_with('#')))
            .collect();
        let refused = documents.pop().unwrap_or_else(|| panic!("{name} has no manifest"));
        Self { name, field, messages, setup: documents, refused }
    }
}

#[test]
fn every_invalid_manifest_is_refused_with_a_message_naming_the_field() {
    let cases: Vec<InvalidCase> =
        yaml_files(&manifest_dir("tests/invalid")).iter().map(|p| InvalidCase::load(p)).collect();
    assert!(cases.len() >= 40, "the invalid corpus has only {} cases", cases.len());

    let mut failures = Vec::new();
    for case in &cases {
        let namespace = namespace("invalid");
        for setup in &case.setup {
            let applied = kubectl(&["apply", "--server-side", "-n", &namespace, "-f", "-"], Some(setup));
            assert!(applied.success, "{}: a setup document was refused: {}", case.name, applied.stderr);
        }
        let before = case.setup.last().map(|setup| stored(&yaml_to_json(setup), &namespace));

        let attempt = kubectl(&["apply", "--server-side", "-n", &namespace, "-f", "-"], Some(&case.refused));
        if attempt.success {
            failures.push(format!("{}: was admitted", case.name));
            continue;
        }
        let error = &attempt.stderr;
        if !error.contains(&case.field) {
            failures.push(format!("{}: the error does not name {}: {error}", case.name, case.field));
        }
        // Users read words: the API server's message for a `pattern` quotes the regular expression.
        if error.contains("should match") {
            failures.push(format!("{}: the error quotes a regular expression: {error}", case.name));
        }
        for message in &case.messages {
            if !error.contains(message.as_str()) {
                failures.push(format!("{}: the error does not say {message:?}: {error}", case.name));
            }
        }
        if let Some(before) = before {
            let after = stored(&yaml_to_json(&case.refused), &namespace);
            assert_eq!(after["spec"], before["spec"], "{}: a refused update changed the object", case.name);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid manifests were not refused as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `kubectl explain` output with kubectl's own line wrapping undone.
/// `kubectl explain field`, words joined by single spaces. Waits while the API server does not
/// serve the kind's schema yet (just after the CRDs were installed).
fn explain(field: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let output = kubectl(&["explain", field], None);
        if output.success {
            return output.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        assert!(
            output.stderr.contains("couldn't find resource") && std::time::Instant::now() < deadline,
            "kubectl explain {field} failed: {}",
            output.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn kubectl_explain_shows_the_field_docs() {
    let attestation = explain("enrollmentgroup.spec.attestation");
    for text in [
        "How devices in the group prove their identity",
        "symmetricKey",
        "Devices derive their key from the group key",
        "x509",
        "signing certificate or a CA certificate",
    ] {
        assert!(attestation.contains(text), "explain lacks {text:?}:\n{attestation}");
    }

    assert!(attestation.contains("exactly one of `symmetricKey` or `x509`"), "{attestation}");
    let individual = explain("individualenrollment.spec.attestation");
    assert!(individual.contains("exactly one of `symmetricKey`, `x509` or `tpm`"), "{individual}");
    // Fields declared only to be refused say so where users look.
    let group_tpm = explain("enrollmentgroup.spec.attestation.tpm");
    assert!(group_tpm.contains("Not allowed"), "{group_tpm}");

    let endorsement_key = explain("individualenrollment.spec.attestation.tpm.endorsementKey");
    assert!(endorsement_key.contains("The TPM endorsement key"), "{endorsement_key}");

    let credentials = explain("provisioningservice.spec.credentials");
    assert!(credentials.contains("shared access policy connection string"), "{credentials}");

    // Rotation and rollover, where users look for them.
    let rotation = explain("enrollmentgroup.spec.attestation.symmetricKey.rotation");
    assert!(
        rotation.contains("one slot at a time") && rotation.contains("dps.iot.dev/rotate-keys"),
        "{rotation}"
    );
    let overlap = explain("individualenrollment.spec.attestation.x509.clientCertificates.rolloverOverlap");
    assert!(overlap.contains("previous certificate stays in the secondary slot"), "{overlap}");
    let certificate_ref = explain("enrollmentgroup.spec.attestation.x509.signingCertificates.certificateRef");
    assert!(certificate_ref.contains("cert-manager Certificate"), "{certificate_ref}");
    let keys = explain("enrollmentgroup.status.keys.activeSlot");
    assert!(keys.contains("activeKey"), "{keys}");
}

#[test]
fn the_dps_category_and_short_names_list_every_kind() {
    let namespace = namespace("names");
    for example in
        ["provisioningservice.yaml", "enrollmentgroup-symmetric-key.yaml", "individualenrollment-tpm.yaml"]
    {
        let yaml = fs::read_to_string(manifest_dir("examples").join(example)).unwrap();
        let applied = kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(&yaml));
        assert!(applied.success, "{}", applied.stderr);
    }
    let cluster_yaml = fs::read_to_string(manifest_dir("examples/clusterprovisioningservice.yaml")).unwrap();
    let cluster_yaml = cluster_yaml.replace("name: contoso-factory-dps", "name: names-category-test");
    assert!(kubectl(&["apply", "-f", "-"], Some(&cluster_yaml)).success);

    let all = kubectl_ok(&["get", "dps", "-A", "-o", "name"]);
    for expected in [
        "provisioningservice.dps.iot.dev/contoso-dps",
        "clusterprovisioningservice.dps.iot.dev/names-category-test",
        "enrollmentgroup.dps.iot.dev/thermostats",
        "individualenrollment.dps.iot.dev/kiosk-3",
    ] {
        assert!(all.contains(expected), "`kubectl get dps` lacks {expected}:\n{all}");
    }

    for (short_name, name) in [
        ("dpssvc", "contoso-dps"),
        ("eg", "thermostats"),
        ("dpseg", "thermostats"),
        ("ie", "kiosk-3"),
        ("dpsie", "kiosk-3"),
    ] {
        let listed = kubectl_ok(&["get", short_name, "-n", &namespace, "-o", "name"]);
        assert!(listed.contains(name), "`kubectl get {short_name}` lacks {name}: {listed}");
    }
    assert!(kubectl_ok(&["get", "cdpssvc", "-o", "name"]).contains("names-category-test"));
}

#[test]
fn printer_columns_show_ready_reason_id_and_attestation_from_status() {
    let namespace = namespace("columns");
    let yaml = fs::read_to_string(manifest_dir("examples/enrollmentgroup-symmetric-key.yaml")).unwrap();
    assert!(kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(&yaml)).success);

    let status = json!({
        "apiVersion": "dps.iot.dev/v1beta1",
        "kind": "EnrollmentGroup",
        "metadata": {"name": "thermostats"},
        "status": {
            "observedGeneration": 1,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Synced",
                "message": "DPS holds the enrollment group as specified.",
                "lastTransitionTime": "2026-11-26T08:00:00Z", "observedGeneration": 1,
            }],
            "enrollmentGroupId": "thermostats-2026",
            "attestation": "symmetricKey",
            "provisioningStatus": "disabled",
            "deletionProtected": true,
        },
    });
    let patched = kubectl(
        &[
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=dps-operator",
            "-n",
            &namespace,
            "-f",
            "-",
        ],
        Some(&status.to_string()),
    );
    assert!(patched.success, "{}", patched.stderr);

    let table = kubectl_ok(&["get", "enrollmentgroup", "thermostats", "-n", &namespace]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "REASON", "GROUP", "ID", "ATTESTATION", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["thermostats", "True", "Synced", "thermostats-2026", "symmetricKey"]);

    // `-o wide` adds whether DPS lets devices in, the connection, whether deleting it is refused
    // and the Ready message.
    let wide = kubectl_ok(&["get", "enrollmentgroup", "thermostats", "-n", &namespace, "-o", "wide"]);
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "REASON",
            "GROUP",
            "ID",
            "ATTESTATION",
            "PROVISIONING",
            "CONNECTION",
            "PROTECTED",
            "MESSAGE",
            "AGE"
        ]
    );
    let row = lines.next().unwrap();
    let connection = yaml_to_json(&yaml)["spec"]["serviceRef"]["name"].as_str().unwrap().to_owned();
    let expected = format!("symmetricKey   disabled       {connection}   true");
    assert!(
        row.split_whitespace()
            .collect::<Vec<_>>()
            .windows(4)
            .any(|w| w == ["symmetricKey", "disabled", connection.as_str(), "true"]),
        "{row} (expected {expected})"
    );
    assert!(row.contains("DPS holds the enrollment group as specified."), "{row}");
}

/// Writing every status field with server-side apply and reading it back proves the status schema
/// holds everything the operator reports (a field missing from the schema would be pruned).
/// An enrollment status with every field set, and a registration record with every field set.
fn complete_status() -> (dps_operator::api::EnrollmentStatus, dps_operator::api::RegistrationRecord) {
    use dps_operator::api::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    let time = |s: &str| Time(s.parse().unwrap());
    let certificate = CertificateInfo {
        subject: "CN=sensor-7, O=Contoso".into(),
        issuer: "CN=Contoso Devices CA".into(),
        serial_number: "0A1B2C".into(),
        sha1_thumbprint: "A".repeat(40),
        sha256_thumbprint: "B".repeat(64),
        not_before: time("2026-01-01T00:00:00Z"),
        not_after: time("2027-01-01T00:00:00Z"),
        current: Some(true),
        pem: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
    };
    let registration = RegistrationRecord {
        registration_id: "sensor-7".into(),
        status: "assigned".into(),
        substatus: Some("initialAssignment".into()),
        device_id: Some("sensor-7".into()),
        assigned_hub: Some("contoso-west.azure-devices.net".into()),
        last_updated_time: Some(time("2026-11-26T08:00:00Z")),
        error_code: Some(401002),
        error_message: Some("an earlier attempt failed".into()),
    };
    let enrollment = EnrollmentStatus {
        observed_generation: Some(1),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Synced".into(),
            message: "DPS holds the enrollment as specified.".into(),
            last_transition_time: time("2026-11-26T08:00:00Z"),
            observed_generation: Some(1),
        }],
        attestation: Some(AttestationKind::X509),
        provisioning_status: Some(ProvisioningStatus::Disabled),
        claimed: Some(true),
        claimed_host: Some("contoso.azure-devices-provisioning.net".into()),
        create_pending: Some(true),
        secrets_digest: Some("0f".repeat(32)),
        written_digest: Some(format!("hmac-sha256:{}", "1e".repeat(16))),
        deletion_protected: Some(true),
        etag: Some("\"IjA2MDA4ZTYyIg==\"".into()),
        created_time: Some(time("2026-11-26T07:00:00Z")),
        last_updated_time: Some(time("2026-11-26T08:00:00Z")),
        keys: Some(Box::new(KeysStatus {
            active_slot: KeySlot::Secondary,
            generated: Some(true),
            rotating_to: Some(KeySlot::Primary),
            active_key_time: Some(time("2026-11-26T06:00:00Z")),
            last_rotation_time: Some(time("2026-11-26T06:00:00Z")),
            next_rotation_time: Some(time("2027-02-24T06:00:00Z")),
            last_trigger: Some("1764741600".into()),
            primary_digest: Some(format!("hmac-sha256:{}", "2d".repeat(32))),
            secondary_digest: Some(format!("hmac-sha256:{}", "3c".repeat(32))),
        })),
        certificates: Some(Box::new(CertificatesStatus {
            primary: Some(certificate.clone()),
            secondary: Some(CertificateInfo { current: Some(false), ..certificate }),
            rolled_over_time: Some(time("2026-11-26T07:30:00Z")),
            previous_until: Some(time("2026-12-26T07:30:00Z")),
        })),
        drift: vec!["allocationPolicy".into()],
    };
    (enrollment, registration)
}

#[tokio::test]
async fn a_complete_status_survives_the_status_subresource() {
    use dps_operator::api::*;
    use kube::api::{Api, Patch, PatchParams};

    let namespace = namespace("status");
    let yaml = fs::read_to_string(manifest_dir("examples/individualenrollment-x509.yaml")).unwrap();
    assert!(kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(&yaml)).success);
    let yaml = fs::read_to_string(manifest_dir("examples/enrollmentgroup-symmetric-key.yaml")).unwrap();
    assert!(kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(&yaml)).success);

    let (enrollment, registration) = complete_status();
    let client = support::control_plane().client().await.expect("client");
    let params = PatchParams::apply("dps-operator").force();

    let individual_status = IndividualEnrollmentStatus {
        enrollment: enrollment.clone(),
        registration_id: Some("sensor-7".into()),
        registration: Some(Box::new(registration.clone())),
    };
    let api: Api<IndividualEnrollment> = Api::namespaced(client.clone(), &namespace);
    let patch = json!({"apiVersion": "dps.iot.dev/v1beta1", "kind": "IndividualEnrollment", "status": individual_status});
    let written = api.patch_status("sensor-7", &params, &Patch::Apply(&patch)).await.expect("status written");
    assert_eq!(written.status, Some(individual_status));

    let group_status = EnrollmentGroupStatus {
        enrollment,
        enrollment_group_id: Some("thermostats-2026".into()),
        registrations: Some(RegistrationSummary {
            total: 6,
            assigned: 1,
            assigning: 1,
            unassigned: 1,
            failed: 2,
            disabled: 1,
            latest: vec![registration],
        }),
        device_keys: Some(DeviceKeysStatus {
            secret_name: "thermostat-keys".into(),
            devices: 2,
            digest: "hmac-sha256:00".into(),
        }),
        blocked_devices: vec!["thermostat-lost".into()],
    };
    let api: Api<EnrollmentGroup> = Api::namespaced(client, &namespace);
    let patch =
        json!({"apiVersion": "dps.iot.dev/v1beta1", "kind": "EnrollmentGroup", "status": group_status});
    let written =
        api.patch_status("thermostats", &params, &Patch::Apply(&patch)).await.expect("status written");
    assert_eq!(written.status, Some(group_status));
}

/// DPS accepts `static` without `iotHubs` (the hub linked to the DPS is used; azure-sdk-for-python
/// recording `test_device_registration.pyTestDeviceRegistrationtest_device_registration_lifecycle.json`),
/// so the API server does too.
#[test]
fn static_allocation_without_hubs_is_admitted() {
    let namespace = namespace("static");
    let yaml = "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {name: one-hub}\nspec:\n  \
                serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: one-hub-keys}\n  \
                allocationPolicy: static\n";
    let applied = kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(yaml));
    assert!(applied.success, "refused: {}", applied.stderr);
}

/// The operator's validating webhook, registered with the API server the way the chart registers
/// it (a ValidatingWebhookConfiguration for both enrollment kinds), here reached by URL on
/// loopback and limited to this test's namespace: a twin IoT Hub would refuse is refused when it
/// is applied, created or changed, naming the place; a valid one is admitted.
// kubectl blocks its thread while the webhook answers on another.
/// Serves the operator's admission webhook on loopback and registers it for `namespace`.
async fn serve_and_register_webhook(namespace: &str) {
    use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
    let ca = dps_operator::pki::CertificateAuthority::new("webhook CA").unwrap();
    let serving = ca.issue_server("127.0.0.1", &["127.0.0.1"]).unwrap();
    let address = "127.0.0.1:0".parse().unwrap();
    let (listener, tls) =
        dps_operator::admission::bind(address, &serving.certificate_pem, &serving.key_pem).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = dps_operator::admission::router();
    tokio::spawn(dps_operator::admission::serve(listener, tls, router, std::future::pending()));
    let configuration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": format!("dps-operator-{namespace}")},
        "webhooks": [{
            "name": "enrollments.dps.iot.dev",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}{}", dps_operator::admission::PATH),
                "caBundle": BASE64.encode(&ca.certificate_pem),
            },
            "rules": [{
                "apiGroups": ["dps.iot.dev"], "apiVersions": ["v1beta1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["individualenrollments", "enrollmentgroups"],
            }],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    });
    kubectl_ok_with(&["apply", "-f", "-"], &configuration.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_refuses_at_apply_time_twins_iot_hub_would_refuse() {
    let namespace = namespace("webhook");
    serve_and_register_webhook(&namespace).await;

    let group = |tags: &str| {
        format!(
            "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {{name: thermostats}}\nspec:\n  \
             serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: keys}}\n  \
             initialTwin:\n    tags: {tags}\n"
        )
    };
    let apply = |yaml: &str, extra: &[&str]| {
        let mut args = vec!["apply", "--server-side", "-n", namespace.as_str(), "-f", "-"];
        args.extend_from_slice(extra);
        kubectl(&args, Some(yaml))
    };
    let dotted = group("{site: {floor.3: east}}");
    // The API server picks up a new webhook configuration within moments: wait until a dry run
    // (which runs admission webhooks without side effects) is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        let attempt = apply(&dotted, &["--dry-run=server"]);
        if !attempt.success {
            break attempt.stderr;
        }
        assert!(std::time::Instant::now() < deadline, "the webhook was never called");
        tokio::task::yield_now().await;
    };
    assert!(
        refused.contains(r#"admission webhook "enrollments.dps.iot.dev" denied the request"#)
            && refused.contains(r#"spec.initialTwin.tags.site has the property name "floor.3""#),
        "{refused}"
    );

    // Eleven objects, the tags themselves the first.
    let deep = format!("{}{{x: 1}}{}", "{a: ".repeat(10), "}".repeat(10));
    let too_deep = apply(&group(&deep), &[]);
    assert!(
        !too_deep.success && too_deep.stderr.contains("nests objects deeper than IoT Hub's 10 levels"),
        "{}",
        too_deep.stderr
    );

    let admitted = apply(&group("{site: {floor: 3}}"), &[]);
    assert!(admitted.success, "{}", admitted.stderr);
    let changed = apply(&group(&format!("{{note: {}}}", "x".repeat(4097))), &[]);
    assert!(
        !changed.success && changed.stderr.contains("spec.initialTwin.tags.note is a string of 4097 bytes"),
        "an update is checked too: {}",
        changed.stderr
    );
    kubectl_ok(&["delete", "validatingwebhookconfiguration", &format!("dps-operator-{namespace}")]);
}

fn kubectl_ok_with(args: &[&str], stdin: &str) {
    let output = kubectl(args, Some(stdin));
    assert!(output.success, "kubectl {} failed: {}", args.join(" "), output.stderr);
}
