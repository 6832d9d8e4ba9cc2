//! The operator when things go wrong, and how it recovers: missing or bad Secrets, bad
//! credentials, DPS failing or gone, throttling, blocked deletions, one bad DPS among good ones.

mod support;

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{CertificateAuthority, EmulatorConfig, Faults, ServerCertificate};
use dps_operator::dps::{self, models};
use serde_json::json;
use support::operator::{Operator, condition};

const SENSOR: &str = r#"
apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollment
metadata: {name: sensor-1}
spec:
  serviceRef: {name: dps}
  attestation:
    x509:
      clientCertificates:
        primary: {name: sensor-1-cert}
"#;

const BOILER: &str = r#"
apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollment
metadata: {name: boiler}
spec:
  serviceRef: {name: dps}
  attestation:
    symmetricKey:
      secretRef: {name: boiler-keys}
"#;

fn certificate(common_name: &str, days: i64) -> String {
    let mut params = rcgen::CertificateParams::new(vec![common_name.to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

/// Waits until the resource's Ready condition is False with `reason`, and returns its message.
async fn not_ready(operator: &Operator, resource: &str, reason: &str) -> String {
    let seen = operator
        .eventually(resource, &format!("Ready=False {reason}"), |r| {
            condition(r, "Ready").is_some_and(|(status, r, _)| status == "False" && r == reason)
        })
        .await;
    condition(&seen, "Ready").unwrap().2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_and_invalid_secrets_block_writes_until_fixed() {
    let operator = Operator::start("secrets").await;
    operator.apply(SENSOR).await;
    let message = not_ready(&operator, "individualenrollment/sensor-1", "SecretNotFound").await;
    assert!(
        message.contains(&format!("Secret {}/sensor-1-cert does not exist", operator.namespace)),
        "{message}"
    );
    let resource = operator.get("individualenrollment/sensor-1").await;
    assert_eq!(condition(&resource, "Stalled").unwrap().0, "False", "a missing Secret can still appear");
    assert_eq!(condition(&resource, "Reconciling").unwrap().0, "True");
    assert_eq!(condition(&resource, "Reconciling").unwrap().2, "Retrying on its schedule; Ready says why.");
    assert!(
        operator.events("sensor-1").await.iter().any(|(t, r, _)| t == "Warning" && r == "SecretNotFound")
    );

    operator.create_secret("sensor-1-cert", &[("tls.key", "not the certificate")]).await;
    let message = not_ready(&operator, "individualenrollment/sensor-1", "SecretKeyMissing").await;
    assert!(message.contains("has no key tls.crt"), "{message}");
    let patch = json!({"stringData": {"tls.crt": "garbage"}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "sensor-1-cert", "-p", &patch], None).await.success);
    let message = not_ready(&operator, "individualenrollment/sensor-1", "CertificateInvalid").await;
    assert!(message.contains("key tls.crt of Secret") && !message.contains("garbage"), "{message}");
    let expired = certificate("sensor-1", -1);
    let patch = json!({"stringData": {"tls.crt": expired}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "sensor-1-cert", "-p", &patch], None).await.success);
    let message = not_ready(&operator, "individualenrollment/sensor-1", "CertificateInvalid").await;
    assert!(message.contains("expired"), "{message}");
    // A new message under the same reason is a new event, not the old one counted again.
    let (_, events) = operator
        .eventually_event("sensor-1", "CertificateInvalid saying expired", |(_, r, m)| {
            r == "CertificateInvalid" && m.contains("expired")
        })
        .await;
    let invalid: Vec<_> = events.iter().filter(|(_, r, _)| r == "CertificateInvalid").collect();
    assert!(
        invalid.iter().any(|(_, _, m)| m.contains("cannot be read")),
        "the first CertificateInvalid event keeps its own words: {events:?}"
    );
    assert_eq!(
        invalid.iter().filter(|(_, _, m)| m.contains("expired")).count(),
        1,
        "the same words again count in one series: {events:?}"
    );
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 0, "no DPS write from bad inputs");

    let valid = certificate("sensor-1", 365);
    let patch = json!({"stringData": {"tls.crt": valid}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "sensor-1-cert", "-p", &patch], None).await.success);
    operator.wait("individualenrollment/sensor-1", "condition=Ready").await;

    // Bad symmetric keys: named, never shown.
    operator
        .create_secret("boiler-keys", &[("primaryKey", "c2hvcnQ="), ("secondaryKey", "not*base64")])
        .await;
    operator.apply(BOILER).await;
    let message = not_ready(&operator, "individualenrollment/boiler", "SecretInvalid").await;
    assert!(
        message.contains("key primaryKey") && message.contains("5 bytes") && !message.contains("c2hvcnQ"),
        "{message}"
    );
    let good = BASE64.encode([3u8; 32]);
    let patch = json!({"stringData": {"primaryKey": good}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "boiler-keys", "-p", &patch], None).await.success);
    let message = not_ready(&operator, "individualenrollment/boiler", "SecretInvalid").await;
    assert!(message.contains("key secondaryKey of Secret") && message.contains("is not base64"), "{message}");
    assert!(!message.contains("not*base64"), "{message}");
    let patch = json!({"stringData": {"secondaryKey": good}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "boiler-keys", "-p", &patch], None).await.success);
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_close_to_expiry_are_flagged() {
    let operator = Operator::start_with("expiry", EmulatorConfig::default(), |config| {
        config.certificate_expiry_warning = Duration::from_secs(60 * 24 * 3600);
    })
    .await;
    operator.create_secret("sensor-1-cert", &[("tls.crt", &certificate("sensor-1", 20))]).await;
    operator.apply(SENSOR).await;
    operator.wait("individualenrollment/sensor-1", "condition=Ready").await;
    let flagged = operator
        .eventually("individualenrollment/sensor-1", "the expiry is flagged", |r| {
            condition(r, "CertificateExpiringSoon").is_some_and(|(status, _, _)| status == "True")
        })
        .await;
    let (_, reason, message) = condition(&flagged, "CertificateExpiringSoon").unwrap();
    assert_eq!(reason, "CertificateExpiringSoon", "the reason and the type agree");
    assert!(message.contains("CN=sensor-1"), "{message}");
    let (warning, _) = operator
        .eventually_event("sensor-1", "CertificateExpiringSoon", |(_, reason, _)| {
            reason == "CertificateExpiringSoon"
        })
        .await;
    assert_eq!((warning.0.as_str(), warning.2.as_str()), ("Warning", message.as_str()));

    let patch = json!({"stringData": {"tls.crt": certificate("sensor-1", 365)}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "sensor-1-cert", "-p", &patch], None).await.success);
    operator.wait("individualenrollment/sensor-1", "condition=CertificateExpiringSoon=False").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_are_reported_on_the_connection_and_recover_when_fixed() {
    let operator = Operator::start("credentials").await;
    let real = operator.emulator.connection_string();
    let wrong = format!(
        "HostName={};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={}",
        operator.emulator.host_name(),
        BASE64.encode([1u8; 32])
    );
    let patch = json!({"stringData": {"connectionString": wrong}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "dps-connection", "-p", &patch], None).await.success);
    let message = not_ready(&operator, "provisioningservice/dps", "InvalidCredentials").await;
    assert!(
        message.contains("key connectionString of Secret") && message.contains("dps-connection"),
        "{message}"
    );
    operator.apply(BOILER).await;
    let message = not_ready(&operator, "individualenrollment/boiler", "DpsUnauthorized").await;
    let secret = format!("Secret {}/dps-connection", operator.namespace);
    assert!(message.contains(&format!("key connectionString of {secret}")), "{message}");

    let patch = json!({"stringData": {"connectionString": real}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "dps-connection", "-p", &patch], None).await.success);
    operator.wait("provisioningservice/dps", "condition=Ready").await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let connection = operator.get("provisioningservice/dps").await;
    assert_eq!(connection["status"]["credentials"], "SharedAccessPolicy");
    assert_eq!(connection["status"]["host"], operator.emulator.host_name());

    // The connection's own events tell the story too.
    let (failed, _) = operator
        .eventually_event("dps", "InvalidCredentials", |(_, reason, _)| reason == "InvalidCredentials")
        .await;
    assert_eq!(failed.0, "Warning");
    assert!(failed.2.contains("dps-connection"), "{failed:?}");
    let (connected, events) = operator
        .eventually_event("dps", "Connected", |(kind, reason, _)| kind == "Normal" && reason == "Connected")
        .await;
    assert!(connected.2.contains(operator.emulator.host_name()), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dps_failing_or_gone_is_retried_until_it_is_back() {
    let state_file = std::env::temp_dir().join(format!("dps-operator-down-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state_file);
    let config = EmulatorConfig {
        state_file: Some(state_file.clone()),
        certificate: ServerCertificate::SignedBy(Arc::new(
            CertificateAuthority::new("restartable DPS").unwrap(),
        )),
        ..Default::default()
    };
    let mut operator = Operator::start_with("down", config.clone(), |_| {}).await;
    operator.emulator.set_faults(Faults { error_rates: [(503, 1.0)].into(), ..Default::default() });
    operator.apply(BOILER).await;
    let message = not_ready(&operator, "individualenrollment/boiler", "DpsError").await;
    assert!(message.contains("503"), "{message}");
    operator.emulator.set_faults(Faults::default());
    operator.wait("individualenrollment/boiler", "condition=Ready").await;

    // DPS goes away entirely; a change waits; DPS comes back on the same address with its state.
    let address = operator.emulator.address();
    let placeholder = support::dps::emulator(EmulatorConfig::default()).await;
    std::mem::replace(&mut operator.emulator, placeholder).stop().await;
    operator.apply(&BOILER.replace("spec:\n", "spec:\n  iotEdge: true\n")).await;
    let message = not_ready(&operator, "individualenrollment/boiler", "DpsUnreachable").await;
    assert!(message.contains("could not reach DPS"), "{message}");

    operator.emulator = support::dps::emulator(EmulatorConfig { listen: address, ..config }).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let enrollment: models::IndividualEnrollment = operator.dps.get("boiler").await.unwrap();
    assert_eq!(enrollment.capabilities, Some(models::DeviceCapabilities { iot_edge: true }));
    let _ = std::fs::remove_file(state_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_is_waited_out() {
    // Six calls a minute, one at a time: the connection's first check takes the first, and what
    // follows is answered 429 (wait up to 10 s) until DPS allows more.
    let operator = Operator::start_with(
        "throttled",
        EmulatorConfig { operations_per_minute: Some(6), ..Default::default() },
        |config| config.drift_check_interval = Duration::from_secs(120),
    )
    .await;
    for i in 0..6 {
        operator
            .apply(
                &BOILER
                    .replace("name: boiler}", &format!("name: boiler-{i}}}"))
                    .replace("boiler-keys", &format!("boiler-{i}-keys")),
            )
            .await;
    }
    let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
    while operator.emulator.calls_answered(429) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never throttled: {:?}", operator.emulator.calls());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.emulator.set_operations_per_minute(Some(600));
    for i in 0..6 {
        operator.wait(&format!("individualenrollment/boiler-{i}"), "condition=Ready").await;
    }
    // Throttled attempts are retried; each enrollment is still written exactly once.
    operator.emulator.set_operations_per_minute(None);
    for i in 0..6 {
        let enrollment: models::IndividualEnrollment =
            operator.dps.get(&format!("boiler-{i}")).await.unwrap();
        assert_eq!(
            enrollment.created_date_time_utc, enrollment.last_updated_date_time_utc,
            "boiler-{i} written once"
        );
        let resource = operator.get(&format!("individualenrollment/boiler-{i}")).await;
        let etag = resource["status"]["etag"].as_str();
        assert!(etag.is_none() || etag == enrollment.etag.as_deref(), "boiler-{i}: {etag:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_whose_answer_was_lost_is_not_written_again() {
    let operator = Operator::start("lost").await;
    operator.emulator.set_faults(Faults {
        lost_answer_rate: 1.0,
        operations: ["IndividualEnrollment_RunBulkOperation".to_owned()].into(),
        ..Default::default()
    });
    operator.apply(BOILER).await;
    // DPS created it; the operator could not hear so, and then found it on its next look.
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let events = operator.events("boiler").await;
    assert!(
        events.iter().any(|(kind, reason, note)| kind == "Warning"
            && reason == "DpsUnreachable"
            && note.contains("could not reach DPS")),
        "{events:?}"
    );
    let enrollment: models::IndividualEnrollment = operator.dps.get("boiler").await.unwrap();
    assert_eq!(enrollment.created_date_time_utc, enrollment.last_updated_date_time_utc, "written once");
    let calls = operator.emulator.calls();
    assert_eq!(calls.get("IndividualEnrollment_RunBulkOperation"), Some(&1), "one create: {calls:?}");
    assert_eq!(calls.get("IndividualEnrollment_CreateOrUpdate"), None, "{calls:?}");
    let resource = operator.get("individualenrollment/boiler").await;
    assert_eq!(resource["status"]["etag"].as_str(), enrollment.etag.as_deref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_deletion_says_how_to_get_out_and_completes_when_dps_is_back() {
    let operator = Operator::start("delete").await;
    operator.apply(BOILER).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    operator.emulator.set_faults(Faults { error_rates: [(503, 1.0)].into(), ..Default::default() });
    assert!(operator.kubectl(&["delete", "individualenrollment/boiler", "--wait=false"], None).await.success);
    let message = not_ready(&operator, "individualenrollment/boiler", "DeletionBlocked").await;
    assert!(
        message.contains("deletionPolicy") && message.contains("kubectl patch individualenrollment boiler"),
        "{message}"
    );
    assert!(operator.events("boiler").await.iter().any(|(t, r, _)| t == "Warning" && r == "DeletionBlocked"));
    operator.get("individualenrollment/boiler").await;

    operator.emulator.set_faults(Faults::default());
    operator
        .eventually_dps("the enrollment is deleted", async |dps| {
            matches!(
                dps.get::<models::IndividualEnrollment>("boiler").await,
                Err(dps::Error::NotFound { .. })
            )
            .then_some(())
        })
        .await;
    assert!(
        operator
            .kubectl(&["wait", "individualenrollment/boiler", "--for=delete", "--timeout=60s"], None)
            .await
            .success
    );

    // The way out: with DPS gone for good, Orphan lets the resource go.
    operator.apply(&BOILER.replace("name: boiler}", "name: stuck}")).await;
    operator.wait("individualenrollment/stuck", "condition=Ready").await;
    operator.emulator.set_faults(Faults { error_rates: [(503, 1.0)].into(), ..Default::default() });
    assert!(operator.kubectl(&["delete", "individualenrollment/stuck", "--wait=false"], None).await.success);
    not_ready(&operator, "individualenrollment/stuck", "DeletionBlocked").await;
    let patch = r#"{"spec":{"deletionPolicy":"Orphan"}}"#;
    assert!(
        operator
            .kubectl(&["patch", "individualenrollment", "stuck", "--type", "merge", "-p", patch], None)
            .await
            .success
    );
    assert!(
        operator
            .kubectl(&["wait", "individualenrollment/stuck", "--for=delete", "--timeout=60s"], None)
            .await
            .success
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_dps_does_not_hold_up_another() {
    // Calls to the slow DPS take a minute to time out: the healthy one must converge while they
    // are all still waiting, however busy the machine is.
    let operator = Operator::start_with("isolation", EmulatorConfig::default(), |config| {
        config.dps_timeout = Duration::from_secs(60);
    })
    .await;
    let slow = support::dps::emulator(EmulatorConfig {
        faults: Faults { latency_ms: 600_000, ..Default::default() },
        ..Default::default()
    })
    .await;
    operator.create_secret("slow-connection", &[("connectionString", &slow.connection_string())]).await;
    operator.create_secret("slow-ca", &[("ca.crt", slow.ca_certificate().unwrap())]).await;
    operator
        .apply("apiVersion: dps.iot.dev/v1beta1\nkind: ProvisioningService\nmetadata: {name: slow}\nspec:\n  credentials:\n    connectionStringSecretRef: {name: slow-connection, key: connectionString}\n  caBundle:\n    secretRef: {name: slow-ca, key: ca.crt}\n")
        .await;
    for i in 0..4 {
        let yaml = BOILER
            .replace("name: dps}", "name: slow}")
            .replace("name: boiler}", &format!("name: stuck-{i}}}"));
        operator.apply(&yaml.replace("boiler-keys", &format!("stuck-{i}-keys"))).await;
    }
    // All four are waiting on the slow DPS: new enrollments look for their ids in one query of the
    // connection's enrollments, which the others wait for.
    let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
    while slow.calls().get("IndividualEnrollment_Query").copied().unwrap_or_default() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck enrollments never called DPS: {:?}",
            slow.calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator.apply(BOILER).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    for i in 0..4 {
        let stuck = operator.get(&format!("individualenrollment/stuck-{i}")).await;
        let ready = condition(&stuck, "Ready");
        assert!(
            ready.as_ref().is_none_or(|(_, reason, _)| reason != "DpsUnreachable"),
            "stuck-{i}'s first call already ended, so this shows nothing: {ready:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enrollment_names_its_connection_when_the_connection_s_secret_is_missing() {
    let operator = Operator::start("connection-secret").await;
    assert!(operator.kubectl(&["delete", "secret", "dps-connection"], None).await.success);
    operator.apply(BOILER).await;
    let message = not_ready(&operator, "individualenrollment/boiler", "SecretNotFound").await;
    let namespace = &operator.namespace;
    assert!(
        message.contains(&format!(
            "ProvisioningService {namespace}/dps cannot be used: Secret {namespace}/dps-connection does not exist"
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_never_worked_still_shows_its_host_and_credentials_kind() {
    let operator = Operator::start("never-worked").await;
    let real = operator.emulator.connection_string();
    let (start, _) = real.rsplit_once("SharedAccessKey=").unwrap();
    let wrong = format!("{start}SharedAccessKey={}", BASE64.encode([1u8; 32]));
    operator.create_secret("wrong-connection", &[("connectionString", &wrong)]).await;
    operator.apply(&support::operator::connection("wrong", "wrong-connection")).await;
    not_ready(&operator, "provisioningservice/wrong", "InvalidCredentials").await;
    let wrong = operator.get("provisioningservice/wrong").await;
    assert_eq!(wrong["status"]["host"], operator.emulator.host_name(), "HOST shows what was tried");
    assert_eq!(wrong["status"]["credentials"], "SharedAccessPolicy");
}

async fn patch(operator: &Operator, spec: &str) {
    let patched =
        operator.kubectl(&["patch", "individualenrollment/boiler", "--type=merge", "-p", spec], None).await;
    assert!(patched.success, "{}", patched.stderr);
}

/// Waits until the resource's status describes generation `generation` with Ready False.
async fn failed_at(operator: &Operator, resource: &str, generation: i64) {
    operator
        .eventually(resource, &format!("Ready=False at generation {generation}"), |r| {
            r["status"]["observedGeneration"] == generation
                && condition(r, "Ready").is_some_and(|(status, _, _)| status == "False")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn its_own_write_whose_answer_was_lost_is_an_update_and_only_a_change_outside_is_drift() {
    // No drift check comes in the test's time: each pass is one the test causes.
    let mut operator = Operator::start_with("truth", EmulatorConfig::default(), |config| {
        config.drift_check_interval = Duration::from_secs(3600);
    })
    .await;
    operator.apply(BOILER).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;

    // The write of an edit happens in DPS, but its answer is lost: the etag the status holds is
    // stale from here on.
    operator.emulator.set_faults(Faults {
        lost_answer_rate: 1.0,
        operations: ["IndividualEnrollment_CreateOrUpdate".to_owned()].into(),
        ..Default::default()
    });
    patch(&operator, r#"{"spec":{"iotEdge":true}}"#).await;
    failed_at(&operator, "individualenrollment/boiler", 2).await;
    let edge = |e: &models::IndividualEnrollment| e.capabilities.as_ref().is_some_and(|c| c.iot_edge);
    assert!(edge(&operator.dps.get("boiler").await.unwrap()), "the write happened");

    // DPS then fails every call about the enrollment; the operator restarts; the spec changes
    // again. The failed pass records the new generation, so the pass that finally writes sees
    // no change of the spec, and DPS holding something else than the spec.
    let failing = ["Get", "CreateOrUpdate", "Query", "RunBulkOperation"];
    operator.emulator.set_faults(Faults {
        error_rates: [(503, 1.0)].into(),
        operations: failing.iter().map(|o| format!("IndividualEnrollment_{o}")).collect(),
        ..Default::default()
    });
    operator.restart();
    patch(&operator, r#"{"spec":{"provisioningStatus":"disabled"}}"#).await;
    failed_at(&operator, "individualenrollment/boiler", 3).await;
    operator.emulator.set_faults(Faults::default());
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let enrollment: models::IndividualEnrollment = operator.dps.get("boiler").await.unwrap();
    assert_eq!(enrollment.provisioning_status, Some(models::ProvisioningStatus::Disabled));
    let events = operator.events("boiler").await;
    assert!(
        events.iter().all(|(_, reason, _)| reason != "DriftCorrected"),
        "nothing changed outside: {events:?}"
    );
    assert!(
        events.iter().any(|(_, reason, note)| reason == "Updated" && note.contains("provisioningStatus")),
        "{events:?}"
    );

    // Someone else changes it: that is drift, found by the next check (a restart's).
    let mut changed = enrollment.clone();
    changed.capabilities = Some(models::DeviceCapabilities { iot_edge: false });
    operator.dps.put(&changed, dps::IfMatch::Etag(enrollment.etag.as_deref().unwrap())).await.unwrap();
    operator.restart();
    let (event, _) = operator
        .eventually_event("boiler", "DriftCorrected", |(_, reason, _)| reason == "DriftCorrected")
        .await;
    assert!(event.2.contains("iotEdge") && event.2.contains("outside Kubernetes"), "{event:?}");
    assert!(edge(&operator.dps.get("boiler").await.unwrap()), "restored");
}
