//! The promise that DPS stays in line with Kubernetes without surprises, tried the way users
//! break things: DPS failing for minutes, a rejected spec, adoption with no key Secret, a key
//! Secret deleted, two resources on one id, a connection deleted first or pointed at another DPS,
//! pausing, and deletion policies changed just before the delete.

mod support;

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{EmulatorConfig, Faults};
use dps_operator::{
    api::IndividualEnrollment,
    controller::enrollment,
    dps::{IfMatch, models},
};
use serde_json::{Value, json};
use support::operator::{Operator, condition, connection, is_ready};

fn enrollment(name: &str, namespace_extra: &str) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: {name}}}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: {name}-keys}}\n{namespace_extra}"
    )
}

/// The calls DPS got on one enrollment id's GET and PUT.
fn enrollment_calls(operator: &Operator) -> u64 {
    let calls = operator.emulator.calls();
    [
        "IndividualEnrollment_Get",
        "IndividualEnrollment_CreateOrUpdate",
        "IndividualEnrollment_RunBulkOperation",
    ]
    .iter()
    .map(|operation| calls.get(*operation).copied().unwrap_or_default())
    .sum()
}

fn keys_of(mechanism: &models::AttestationMechanism) -> (String, String) {
    let keys = mechanism.symmetric_key.as_ref().unwrap();
    (
        keys.primary_key.as_ref().unwrap().expose().to_owned(),
        keys.secondary_key.as_ref().unwrap().expose().to_owned(),
    )
}

async fn secret_keys(operator: &Operator, name: &str, namespace: Option<&str>) -> Option<(String, String)> {
    let namespace = namespace.unwrap_or(&operator.namespace);
    let output = kubectl_in(namespace, &["get", "secret", name, "-o", "json"], None).await;
    if !output.success {
        return None;
    }
    let secret: Value = serde_json::from_str(&output.stdout).unwrap();
    let key =
        |k: &str| String::from_utf8(BASE64.decode(secret["data"][k].as_str().unwrap()).unwrap()).unwrap();
    Some((key("primaryKey"), key("secondaryKey")))
}

/// An enrollment created in DPS outside Kubernetes, with keys devices already use.
async fn created_outside(operator: &Operator, id: &str) -> (String, String) {
    let keys = (BASE64.encode([7u8; 32]), BASE64.encode([8u8; 32]));
    let existing = models::IndividualEnrollment {
        registration_id: id.into(),
        attestation: models::AttestationMechanism {
            type_: models::AttestationType::SymmetricKey,
            symmetric_key: Some(models::SymmetricKeyAttestation {
                primary_key: Some(models::Secret::new(keys.0.clone())),
                secondary_key: Some(models::Secret::new(keys.1.clone())),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    operator.dps.put(&existing, IfMatch::None).await.unwrap();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dps_failing_every_write_is_backed_off() {
    let operator = Operator::start("backoff").await;
    operator.emulator.set_faults(Faults {
        error_rates: [(503, 1.0)].into(),
        operations: ["IndividualEnrollment_RunBulkOperation".to_owned()].into(),
        ..Default::default()
    });
    operator.emulator.reset_calls();
    operator.apply(&enrollment("boiler", "")).await;
    operator
        .eventually("individualenrollment/boiler", "Ready=False DpsError", |r| {
            condition(r, "Ready").is_some_and(|(s, reason, _)| s == "False" && reason == "DpsError")
        })
        .await;
    let first = operator.get("individualenrollment/boiler").await;
    // The measurement window of the issue: two minutes of a DPS that fails every write.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let calls = enrollment_calls(&operator);
    assert!(calls <= 10, "{calls} DPS calls in 120 s: {:?}", operator.emulator.calls());
    let later = operator.get("individualenrollment/boiler").await;
    assert_eq!(
        condition(&later, "Ready"),
        condition(&first, "Ready"),
        "the same failure leaves the same condition (no tracking id or time in it)"
    );

    // DPS recovers; a change of the spec is tried at once, whatever the backoff.
    operator.emulator.set_faults(Faults::default());
    operator
        .kubectl(
            &["patch", "individualenrollment/boiler", "--type=merge", "-p", r#"{"spec":{"iotEdge":true}}"#],
            None,
        )
        .await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_spec_and_wrong_credentials_are_not_retried_in_a_loop() {
    let linked = EmulatorConfig {
        linked_hubs: Some(vec!["contoso-west.azure-devices.net".into()]),
        ..Default::default()
    };
    let operator = Operator::start_with("stalled", linked, |_| {}).await;
    // The connection turning Ready is news to its enrollments (a pass each): let it happen first,
    // so that the window below holds only what the failure itself leads to.
    operator.wait("provisioningservice/dps", "condition=Ready").await;
    operator.apply(&format!("{}  iotHubs: [not-linked.azure-devices.net]\n", enrollment("boiler", ""))).await;
    operator.apply(&connection("wrong-key", "wrong-key")).await;
    let wrong = operator.emulator.connection_string().replace("SharedAccessKey=", "SharedAccessKey=AAAA");
    operator.create_secret("wrong-key", &[("connectionString", &wrong)]).await;
    operator
        .eventually("individualenrollment/boiler", "Stalled", |r| {
            condition(r, "Stalled").is_some_and(|(s, _, _)| s == "True")
        })
        .await;
    operator
        .eventually("provisioningservice/wrong-key", "InvalidCredentials", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "InvalidCredentials")
        })
        .await;
    operator.emulator.reset_calls();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let calls = operator.emulator.calls();
    assert_eq!(enrollment_calls(&operator), 0, "a Stalled resource waits for a change: {calls:?}");
    let queries = calls.get("EnrollmentGroup_Query").copied().unwrap_or_default();
    assert!(queries <= 1, "wrong credentials are checked again on their schedule, not in a loop: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adoption_and_a_lost_key_secret_keep_the_keys_devices_use() {
    let operator = Operator::start("keys").await;
    let keys = created_outside(&operator, "boiler").await;
    operator.apply(&enrollment("boiler", "  adoption: Adopt\n")).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let held = operator.dps.attestation_mechanism::<models::IndividualEnrollment>("boiler").await.unwrap();
    assert_eq!(keys_of(&held), keys, "adoption did not change the keys devices use");
    assert_eq!(
        secret_keys(&operator, "boiler-keys", None).await,
        Some(keys.clone()),
        "the Secret holds DPS's keys"
    );
    assert!(operator.events("boiler").await.iter().any(|(_, reason, _)| reason == "KeysRestored"));

    // The key Secret deleted by mistake: filled again from DPS, never new keys.
    assert!(operator.kubectl(&["delete", "secret", "boiler-keys"], None).await.success);
    let restored = operator
        .eventually_dps("the Secret is back", async |_| secret_keys(&operator, "boiler-keys", None).await)
        .await;
    assert_eq!(restored, keys);
    let held = operator.dps.attestation_mechanism::<models::IndividualEnrollment>("boiler").await.unwrap();
    assert_eq!(keys_of(&held), keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adoption_whose_keys_cannot_be_read_writes_nothing() {
    let operator = Operator::start("unreadable").await;
    let keys = created_outside(&operator, "heater").await;
    // Credentials that may not read attestation mechanisms.
    operator.emulator.set_faults(Faults {
        error_rates: [(401, 1.0)].into(),
        operations: ["IndividualEnrollment_GetAttestationMechanism".to_owned()].into(),
        ..Default::default()
    });
    operator.emulator.reset_calls();
    operator.apply(&enrollment("heater", "  adoption: Adopt\n")).await;
    let refused = operator
        .eventually("individualenrollment/heater", "Ready=False KeysUnreadable", |r| {
            condition(r, "Ready")
                .is_some_and(|(status, reason, _)| status == "False" && reason == "KeysUnreadable")
        })
        .await;
    let message = condition(&refused, "Ready").unwrap().2;
    let secret = format!("Secret {}/heater-keys", operator.namespace);
    assert!(
        message.contains(&secret) && message.contains("dps"),
        "names the Secret and connection: {message}"
    );
    assert_eq!(secret_keys(&operator, "heater-keys", None).await, None, "no Secret with other keys");
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 0, "no write");

    // The user's remedy: the Secret with the keys DPS holds. The resource adopts, keys unchanged.
    operator.create_secret("heater-keys", &[("primaryKey", &keys.0), ("secondaryKey", &keys.1)]).await;
    operator.wait("individualenrollment/heater", "condition=Ready").await;
    operator.emulator.set_faults(Faults::default());
    let held = operator.dps.attestation_mechanism::<models::IndividualEnrollment>("heater").await.unwrap();
    assert_eq!(keys_of(&held), keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_resource_owns_an_enrollment_and_the_other_never_touches_it() {
    let mut operator = Operator::start("owner").await;
    let other = operator.add_namespace().await;
    operator.apply(&enrollment("boiler", "  adoption: Adopt\n")).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let keys = secret_keys(&operator, "boiler-keys", None).await.unwrap();

    let contender = enrollment("boiler", "  adoption: Adopt\n");
    let applied = kubectl_in(&other, &["apply", "-f", "-"], Some(&contender)).await;
    assert!(applied.success, "{}", applied.stderr);
    let in_other =
        |r: &Value| condition(r, "Ready").is_some_and(|(s, reason, _)| s == "False" && reason == "Conflict");
    let refused = eventually_in(&other, "individualenrollment/boiler", in_other).await;
    let message = condition(&refused, "Ready").unwrap().2;
    assert!(message.contains(&format!("IndividualEnrollment {}/boiler", operator.namespace)), "{message}");
    assert_eq!(condition(&refused, "Stalled").unwrap().0, "True");

    // A restart keeps the owner.
    operator.restart();
    operator.emulator.reset_calls();
    let refused = eventually_in(&other, "individualenrollment/boiler", in_other).await;
    assert!(refused["status"]["claimed"].is_null());
    let held = operator.dps.attestation_mechanism::<models::IndividualEnrollment>("boiler").await.unwrap();
    assert_eq!(keys_of(&held), keys, "the owner's keys stay in DPS");
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 0);

    // Deleting the contender leaves DPS alone; deleting the owner removes the enrollment.
    let deleted = kubectl_in(&other, &["delete", "individualenrollment/boiler"], None).await;
    assert!(deleted.success, "{}", deleted.stderr);
    assert!(operator.dps.get::<models::IndividualEnrollment>("boiler").await.is_ok());
    assert!(is_ready(&operator.get("individualenrollment/boiler").await));
    assert!(operator.kubectl(&["delete", "individualenrollment/boiler"], None).await.success);
    operator
        .eventually_dps("the owner's deletion removed it", async |dps| {
            dps.get::<models::IndividualEnrollment>("boiler").await.is_err().then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_killed_between_its_create_and_the_status_still_knows_the_enrollment_for_its_own() {
    // The operator waits as long as DPS holds the create's answer: it is stopped while DPS has
    // carried the create out and nothing but the claim annotation says so.
    let mut operator = Operator::start_with("killed", EmulatorConfig::default(), |config| {
        config.dps_timeout = Duration::from_secs(600);
    })
    .await;
    let other = operator.add_namespace().await;
    operator.emulator.set_faults(Faults {
        answer_delay_ms: 600_000,
        operations: ["IndividualEnrollment_RunBulkOperation".to_owned()].into(),
        ..Default::default()
    });
    operator.apply(&enrollment("boiler", "")).await;
    let created = operator
        .eventually_dps("DPS holds the create", async |dps| {
            dps.get::<models::IndividualEnrollment>("boiler").await.ok()
        })
        .await;
    operator.stop();
    let resource = operator.get("individualenrollment/boiler").await;
    let uid = resource["metadata"]["uid"].as_str().unwrap();
    let claim = resource["metadata"]["annotations"]["dps.iot.dev/claim"].as_str().unwrap_or_default();
    assert!(claim.starts_with(&format!("{uid}@")), "{resource}");
    assert!(
        resource["status"]["claimed"].is_null() && resource["status"]["createPending"].is_null(),
        "{resource}"
    );
    assert_eq!(resource["metadata"]["finalizers"], json!(["dps.iot.dev/cleanup"]), "written with the claim");

    // A contender on the same id, there before the restart: the register rebuilt at start holds
    // the claim only the annotation records.
    let contender =
        kubectl_in(&other, &["apply", "-f", "-"], Some(&enrollment("boiler", "  adoption: Adopt\n"))).await;
    assert!(contender.success, "{}", contender.stderr);
    operator.emulator.set_faults(Faults::default());
    operator.emulator.reset_calls();
    operator.restart();
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let resource = operator.get("individualenrollment/boiler").await;
    assert_eq!(resource["status"]["claimed"], json!(true), "{resource}");
    let in_other =
        |r: &Value| condition(r, "Ready").is_some_and(|(s, reason, _)| s == "False" && reason == "Conflict");
    eventually_in(&other, "individualenrollment/boiler", in_other).await;
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 0, "{:?}", operator.emulator.calls());
    let held = operator.dps.get::<models::IndividualEnrollment>("boiler").await.unwrap();
    assert_eq!(held.etag, created.etag, "not written again");
    let keys = secret_keys(&operator, "boiler-keys", None).await.unwrap();
    let in_dps = operator.dps.attestation_mechanism::<models::IndividualEnrollment>("boiler").await.unwrap();
    assert_eq!(keys_of(&in_dps), keys);

    // Owned: deleting the resource deletes the enrollment.
    assert!(operator.kubectl(&["delete", "individualenrollment/boiler"], None).await.success);
    operator
        .eventually_dps("the deletion removed it", async |dps| {
            dps.get::<models::IndividualEnrollment>("boiler").await.is_err().then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contenders_created_at_once_under_failing_creates_end_with_one_owner_each() {
    let mut operator = Operator::start("contest").await;
    let other = operator.add_namespace().await;
    operator.emulator.set_faults(Faults {
        error_rates: [(503, 0.5)].into(),
        operations: ["IndividualEnrollment_RunBulkOperation".to_owned()].into(),
        ..Default::default()
    });
    let ids: Vec<String> = (0..6).map(|i| format!("contested-{i}")).collect();
    let manifests: String =
        ids.iter().map(|id| format!("{}  adoption: Adopt\n---\n", enrollment(id, ""))).collect();
    let (first, second) = tokio::join!(
        operator.kubectl(&["apply", "-f", "-"], Some(&manifests)),
        kubectl_in(&other, &["apply", "-f", "-"], Some(&manifests)),
    );
    assert!(first.success && second.success, "{}{}", first.stderr, second.stderr);
    // Half the creates fail for the first 40 s, then DPS recovers.
    let recovery = tokio::time::Instant::now() + Duration::from_secs(40);
    let deadline = recovery + Duration::from_secs(200);
    for id in &ids {
        loop {
            let here = operator.get(&format!("individualenrollment/{id}")).await;
            let there = get_in(&other, &format!("individualenrollment/{id}")).await;
            let reason = |r: &Value| condition(r, "Ready").map(|(s, reason, _)| (s, reason));
            let states = [reason(&here), reason(&there)];
            let ready = states.iter().filter(|s| s.as_ref().is_some_and(|(s, _)| s == "True")).count();
            let conflict = states.iter().filter(|s| s.as_ref().is_some_and(|(_, r)| r == "Conflict")).count();
            assert!(ready <= 1, "{id}: both resources Ready: {states:?}");
            if ready == 1 && conflict == 1 {
                let owner = if is_ready(&here) { &here } else { &there };
                let keys =
                    secret_keys(&operator, &format!("{id}-keys"), owner["metadata"]["namespace"].as_str())
                        .await;
                let held =
                    operator.dps.attestation_mechanism::<models::IndividualEnrollment>(id).await.unwrap();
                assert_eq!(Some(keys_of(&held)), keys, "{id}: DPS holds the owner's keys");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id}: no single owner yet: {states:?}");
            if tokio::time::Instant::now() > recovery {
                operator.emulator.set_faults(Faults::default());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_keys_outlive_an_orphaned_resource() {
    let operator = Operator::start("orphan-keys").await;
    operator.apply(&enrollment("kept", "  deletionPolicy: Orphan\n")).await;
    operator.apply(&enrollment("removed", "")).await;
    operator.wait("individualenrollment/kept", "condition=Ready").await;
    operator.wait("individualenrollment/removed", "condition=Ready").await;
    let ready = r#"dps_operator_resources{kind="IndividualEnrollment",ready="true"}"#;
    operator.eventually_metric(ready, 2.0).await;
    let owners =
        |secret: &Value| secret["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
    assert_eq!(owners(&operator.get("secret/kept-keys").await).len(), 1, "owned while the resource lives");

    assert!(
        operator
            .kubectl(&["delete", "individualenrollment/kept", "individualenrollment/removed"], None)
            .await
            .success
    );
    let kept = operator.get("secret/kept-keys").await;
    assert!(
        owners(&kept).is_empty(),
        "the garbage collector must not take the keys of an enrollment left in DPS"
    );
    assert!(operator.dps.get::<models::IndividualEnrollment>("kept").await.is_ok());
    assert_eq!(owners(&operator.get("secret/removed-keys").await).len(), 1, "removed with its enrollment");
    assert!(operator.dps.get::<models::IndividualEnrollment>("removed").await.is_err());
    let events = operator.events("kept").await;
    assert!(events.iter().any(|(_, reason, _)| reason == "SecretKept"), "{events:?}");
    assert!(
        events.iter().any(|(_, reason, note)| reason == "Orphaned"
            && note == "Left enrollment kept in DPS: its deletionPolicy is Orphan."),
        "the event names the one reason it was left: {events:?}"
    );
    // Both are gone from the operator's books too, the orphaned one included.
    operator.eventually_metric(ready, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_connection_with_its_enrollments_completes() {
    let operator = Operator::start("teardown").await;
    let file = format!(
        "{}---\n{}",
        connection("second", "dps-connection"),
        enrollment("boiler", "").replace("{name: dps}", "{name: second}")
    );
    operator.apply(&file).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;

    // The connection alone: it stays while the enrollment uses it, and says so.
    assert!(operator.kubectl(&["delete", "provisioningservice/second", "--wait=false"], None).await.success);
    let held = operator
        .eventually("provisioningservice/second", "in use", |r| r["status"]["inUseBy"] == json!(1))
        .await;
    assert!(condition(&held, "Ready").unwrap().2.contains("IndividualEnrollment"), "{held}");

    // Then everything at once, as `kubectl delete -f` does.
    let deleted = operator.kubectl(&["delete", "-f", "-", "--wait=false"], Some(&file)).await;
    assert!(deleted.success, "{}", deleted.stderr);
    for resource in ["individualenrollment/boiler", "provisioningservice/second"] {
        let waited = operator.kubectl(&["wait", "--for=delete", resource, "--timeout=60s"], None).await;
        assert!(waited.success, "{resource} was not deleted: {}", waited.stderr);
    }
    assert!(operator.dps.get::<models::IndividualEnrollment>("boiler").await.is_err(), "removed from DPS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pausing_shows_and_a_misspelt_pause_writes_nothing() {
    let operator = Operator::start("pause").await;
    operator.apply(&enrollment("boiler", "")).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;

    let operator = &operator;
    let annotate = |value: &str| {
        let value = format!("dps.iot.dev/paused={value}");
        async move {
            let output = operator
                .kubectl(&["annotate", "--overwrite", "individualenrollment/boiler", &value], None)
                .await;
            assert!(output.success, "{}", output.stderr);
        }
    };
    annotate("true").await;
    operator
        .eventually("individualenrollment/boiler", "Ready reason Paused", |r| {
            condition(r, "Ready").is_some_and(|(s, reason, _)| s == "True" && reason == "Paused")
        })
        .await;

    annotate("yes").await;
    let refused = operator
        .eventually("individualenrollment/boiler", "InvalidAnnotation", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "InvalidAnnotation")
        })
        .await;
    assert!(condition(&refused, "Ready").unwrap().2.contains("\"yes\""));
    let before: models::IndividualEnrollment = operator.dps.get("boiler").await.unwrap();
    operator
        .kubectl(
            &["patch", "individualenrollment/boiler", "--type=merge", "-p", r#"{"spec":{"iotEdge":true}}"#],
            None,
        )
        .await;
    operator
        .eventually("individualenrollment/boiler", "the change seen", |r| {
            r["status"]["observedGeneration"] == r["metadata"]["generation"]
        })
        .await;
    let after: models::IndividualEnrollment = operator.dps.get("boiler").await.unwrap();
    assert_eq!(after.etag, before.etag, "nothing written while the annotation is unreadable");

    annotate("false").await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let written: models::IndividualEnrollment = operator.dps.get("boiler").await.unwrap();
    assert!(written.capabilities.is_some_and(|c| c.iot_edge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deletion_policy_of_the_latest_object_applies() {
    let mut operator = Operator::start("latest-policy").await;
    operator.apply(&enrollment("boiler", "")).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let stale: IndividualEnrollment =
        serde_json::from_value(operator.get("individualenrollment/boiler").await).unwrap();

    // Orphan set just before the delete, while the operator (and its cache) still has the copy
    // from before.
    operator.stop();
    let patched = operator
        .kubectl(
            &[
                "patch",
                "individualenrollment/boiler",
                "--type=merge",
                "-p",
                r#"{"spec":{"deletionPolicy":"Orphan"}}"#,
            ],
            None,
        )
        .await;
    assert!(patched.success, "{}", patched.stderr);
    assert!(operator.kubectl(&["delete", "individualenrollment/boiler", "--wait=false"], None).await.success);
    let deleting = operator.get("individualenrollment/boiler").await;
    let mut stale = stale;
    stale.metadata.deletion_timestamp =
        serde_json::from_value(deleting["metadata"]["deletionTimestamp"].clone()).unwrap();

    let ctx = operator.context().await;
    enrollment::reconcile(Arc::new(stale), ctx).await.unwrap();
    assert!(operator.dps.get::<models::IndividualEnrollment>("boiler").await.is_ok(), "Orphan was honoured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_pointed_at_another_dps_never_touches_what_is_there() {
    let mut operator = Operator::start("moved").await;
    operator.apply(&enrollment("boiler", "")).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;

    // DPS B already has an enrollment with this id, made by someone else.
    let other = support::dps::emulator(EmulatorConfig::default()).await;
    let other_dps = support::dps::client(&other);
    let foreign = models::IndividualEnrollment {
        registration_id: "boiler".into(),
        attestation: models::AttestationMechanism {
            type_: models::AttestationType::SymmetricKey,
            ..Default::default()
        },
        device_id: Some("someone-elses".into()),
        ..Default::default()
    };
    let foreign = other_dps.put(&foreign, IfMatch::None).await.unwrap();

    let both_cas =
        format!("{}\n{}", operator.emulator.ca_certificate().unwrap(), other.ca_certificate().unwrap());
    let patch = |key: &str, value: &str| json!({"stringData": {key: value}}).to_string();
    operator.kubectl(&["patch", "secret", "dps-ca", "-p", &patch("ca.crt", &both_cas)], None).await;
    operator
        .kubectl(
            &[
                "patch",
                "secret",
                "dps-connection",
                "-p",
                &patch("connectionString", &other.connection_string()),
            ],
            None,
        )
        .await;
    operator.restart();
    let refused = operator
        .eventually("individualenrollment/boiler", "AlreadyExists on B", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "AlreadyExists")
        })
        .await;
    assert!(refused["status"]["claimed"].is_null(), "the claim on A did not follow: {refused}");
    assert!(operator.events("boiler").await.iter().any(|(_, reason, _)| reason == "ConnectionMoved"));

    assert!(operator.kubectl(&["delete", "individualenrollment/boiler"], None).await.success);
    let still: models::IndividualEnrollment = other_dps.get("boiler").await.unwrap();
    assert_eq!(still.etag, foreign.etag, "B's enrollment was neither changed nor deleted");
    assert!(
        operator.dps.get::<models::IndividualEnrollment>("boiler").await.is_ok(),
        "A's is left, not deleted"
    );
}

/// `kubectl` in `namespace`.
async fn kubectl_in(namespace: &str, args: &[&str], stdin: Option<&str>) -> support::Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--namespace".to_owned(), namespace.to_owned()]);
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        support::kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>(), stdin.as_deref())
    })
    .await
    .unwrap()
}

/// `kubectl get` of a resource in another namespace.
async fn get_in(namespace: &str, resource: &str) -> Value {
    let output = kubectl_in(namespace, &["get", resource, "-o", "json"], None).await;
    if output.success { serde_json::from_str(&output.stdout).unwrap() } else { Value::Null }
}

async fn eventually_in(namespace: &str, resource: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
    loop {
        let value = get_in(namespace, resource).await;
        if check(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{namespace}/{resource}: timed out; last seen {value}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_is_undone_in_every_watched_namespace() {
    let mut operator = Operator::start("drift-everywhere").await;
    let other = operator.add_namespace().await;
    operator.apply(&enrollment("pump-a", "")).await;
    let applied = kubectl_in(&other, &["apply", "-f", "-"], Some(&enrollment("pump-b", ""))).await;
    assert!(applied.success, "{}", applied.stderr);
    operator.wait("individualenrollment/pump-a", "condition=Ready").await;
    eventually_in(&other, "individualenrollment/pump-b", is_ready).await;

    // Edits made in DPS outside Kubernetes, to the enrollments of both namespaces, several times:
    // each namespace's drift checks come around again and again (every 3 s here).
    for round in 0..3 {
        for id in ["pump-a", "pump-b"] {
            let mut edited: models::IndividualEnrollment = operator.dps.get(id).await.unwrap();
            edited.provisioning_status = Some(models::ProvisioningStatus::Disabled);
            let etag = edited.etag.clone().unwrap();
            operator.dps.put(&edited, IfMatch::Etag(&etag)).await.unwrap();
        }
        operator
            .eventually_dps(&format!("both edits undone, round {round}"), async |dps| {
                for id in ["pump-a", "pump-b"] {
                    let enrollment: models::IndividualEnrollment = dps.get(id).await.ok()?;
                    (enrollment.provisioning_status == Some(models::ProvisioningStatus::Enabled))
                        .then_some(())?;
                }
                Some(())
            })
            .await;
    }
}
