//! Symmetric keys over time: generated keys rotate on a schedule one slot at a time, with DPS
//! holding each new key before it is published; keys a user supplies are applied as given, never
//! rotated, and replacing both at once is a Warning. (Devices registering through rotations:
//! `tests/devices.rs`.)

mod support;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_operator::dps::models::IndividualEnrollment;
use serde_json::{Value, json};
use support::operator::Operator;

fn enrollment(name: &str, secret: &str, rotation: &str) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: {name}}}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: {secret}}}\n{rotation}"
    )
}

/// The Secret's primary key, secondary key and active slot, decoded.
async fn secret_keys(operator: &Operator, name: &str) -> (String, String, String) {
    let data = operator.get(&format!("secret/{name}")).await["data"].clone();
    let text = |key: &str| {
        data[key].as_str().map(|v| String::from_utf8(BASE64.decode(v).unwrap()).unwrap()).unwrap_or_default()
    };
    (text("primaryKey"), text("secondaryKey"), text("activeKey"))
}

/// The keys DPS holds for individual enrollment `id`.
async fn keys_in_dps(operator: &Operator, id: &str) -> (String, String) {
    let mechanism = operator.dps.attestation_mechanism::<IndividualEnrollment>(id).await.unwrap();
    let keys = mechanism.symmetric_key.unwrap();
    (keys.primary_key.unwrap().expose().to_owned(), keys.secondary_key.unwrap().expose().to_owned())
}

async fn patch_secret(operator: &Operator, data: Value) {
    let patch = json!({"stringData": data}).to_string();
    let output =
        operator.kubectl(&["patch", "secret", "meter-keys", "--type", "merge", "-p", &patch], None).await;
    assert!(output.success, "{}", output.stderr);
}

fn keys_status(resource: &Value) -> &Value {
    &resource["status"]["keys"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_rotates_generated_keys_one_slot_at_a_time() {
    let operator = Operator::start("rotation-schedule").await;
    operator.apply(&enrollment("boiler", "boiler-keys", "")).await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let (primary, secondary, _) = secret_keys(&operator, "boiler-keys").await;
    let created = operator.get("individualenrollment/boiler").await;
    assert_eq!(keys_status(&created)["activeSlot"], "primary", "{}", keys_status(&created));
    assert_eq!(keys_status(&created)["generated"], true);
    assert!(keys_status(&created)["nextRotationTime"].is_null(), "no schedule, nothing due");

    // Every 3 s: the idle slot gets a new key, then becomes the active one.
    operator.apply(&enrollment("boiler", "boiler-keys", "      rotation: {every: 3s}\n")).await;
    let first = operator
        .eventually("individualenrollment/boiler", "the first scheduled rotation", |r| {
            keys_status(r)["activeSlot"] == "secondary" && keys_status(r)["lastRotationTime"].is_string()
        })
        .await;
    assert!(keys_status(&first)["nextRotationTime"].is_string(), "{}", keys_status(&first));
    operator
        .eventually("individualenrollment/boiler", "the second scheduled rotation", |r| {
            keys_status(r)["activeSlot"] == "primary"
                && keys_status(r)["lastRotationTime"] != keys_status(&first)["lastRotationTime"]
        })
        .await;

    // The schedule ends; once settled, DPS holds exactly the Secret's keys, both new by now.
    operator.apply(&enrollment("boiler", "boiler-keys", "")).await;
    let settled = operator
        .eventually("individualenrollment/boiler", "no rotation in progress", |r| {
            keys_status(r)["rotatingTo"].is_null()
                && keys_status(r)["nextRotationTime"].is_null()
                && support::operator::is_ready(r)
        })
        .await;
    let (now_primary, now_secondary, active) = secret_keys(&operator, "boiler-keys").await;
    assert_eq!(active, keys_status(&settled)["activeSlot"].as_str().unwrap().to_owned() + "Key");
    assert!(now_primary != primary && now_secondary != secondary, "both slots rotated once or more");
    assert_eq!(keys_in_dps(&operator, "boiler").await, (now_primary, now_secondary));
    let age = format!(
        "dps_operator_key_age_seconds{{kind=\"IndividualEnrollment\",namespace=\"{}\",name=\"boiler\"}}",
        operator.namespace
    );
    assert!(
        operator.metric(&age).is_some_and(|age| (0.0..600.0).contains(&age)),
        "{age}: {:?}",
        operator.metric(&age)
    );
    let (_, events) =
        operator.eventually_event("boiler", "KeyRotated", |(_, reason, _)| reason == "KeyRotated").await;
    assert!(!events.iter().any(|(_, reason, _)| reason == "BothKeysReplaced"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supplied_keys_are_applied_as_given_never_rotated_and_replacing_both_is_a_warning() {
    let operator = Operator::start("rotation-supplied").await;
    let key = |byte: u8| BASE64.encode([byte; 32]);
    operator.create_secret("meter-keys", &[("primaryKey", &key(1)), ("secondaryKey", &key(2))]).await;
    operator.apply(&enrollment("meter", "meter-keys", "      rotation: {every: 1s}\n")).await;
    operator.wait("individualenrollment/meter", "condition=Ready").await;
    let (_, events) = operator
        .eventually_event("meter", "KeysNotRotated", |(kind, reason, _)| {
            kind == "Warning" && reason == "KeysNotRotated"
        })
        .await;
    let shown = operator.get("individualenrollment/meter").await;
    assert_eq!(keys_status(&shown)["generated"], false, "{}", keys_status(&shown));
    assert!(keys_status(&shown)["nextRotationTime"].is_null());
    assert_eq!(keys_in_dps(&operator, "meter").await, (key(1), key(2)), "as given, never rotated");
    assert_eq!(events.iter().filter(|(_, reason, _)| reason == "KeysNotRotated").count(), 1, "{events:?}");

    // One slot at a time: written, no warning.
    patch_secret(&operator, json!({"secondaryKey": key(3)})).await;
    operator
        .eventually_dps("the new secondary key", async |_| {
            (keys_in_dps(&operator, "meter").await == (key(1), key(3))).then_some(())
        })
        .await;
    // Both at once: written as given, and a Warning that says what it does to devices.
    patch_secret(&operator, json!({"primaryKey": key(4), "secondaryKey": key(5)})).await;
    operator
        .eventually_dps("both new keys", async |_| {
            (keys_in_dps(&operator, "meter").await == (key(4), key(5))).then_some(())
        })
        .await;
    let ((_, _, message), events) = operator
        .eventually_event("meter", "BothKeysReplaced", |(kind, reason, _)| {
            kind == "Warning" && reason == "BothKeysReplaced"
        })
        .await;
    assert!(message.contains("refuses every device"), "{message}");
    assert_eq!(events.iter().filter(|(_, reason, _)| reason == "BothKeysReplaced").count(), 1, "{events:?}");
    assert!(!message.contains(&key(4)) && !message.contains(&key(5)), "no key in the event");
}
