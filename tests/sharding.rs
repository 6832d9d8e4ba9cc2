//! Scale-out across operators: each reconciles the enrollments its `--watch-label-selector`
//! selects, as the chart's shards do. Two operators with disjoint selectors against one DPS: every
//! resource Ready, each handled by one operator only, and a resource relabelled to the other shard
//! moves with it.

mod support;

use std::time::Duration;

use dps_emulator::EmulatorConfig;
use support::operator::{Operator, PATIENCE};

const KEY: &str = "sharding.dps.iot.dev/key";
const READY: &str = r#"dps_operator_resources{kind="IndividualEnrollment",ready="true"}"#;

fn enrollment(name: &str, shard: Option<&str>) -> String {
    let labels = shard.map(|shard| format!("\n  labels: {{{KEY}: {shard}}}")).unwrap_or_default();
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata:\n  name: {name}{labels}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation: {{symmetricKey: {{secretRef: {{name: {name}-keys}}}}}}\n---\n"
    )
}

/// Waits until `read` (a metric of one operator) is `want`.
async fn eventually(what: &str, want: f64, read: impl Fn() -> Option<f64>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while read() != Some(want) {
        assert!(tokio::time::Instant::now() < deadline, "{what} is {:?}, not {want}", read());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_shards_split_the_enrollments_and_never_handle_the_same_one() {
    let main = Operator::start_with("shards", EmulatorConfig::default(), |config| {
        config.watch_label_selector = Some(format!("!{KEY}"));
    })
    .await;
    let shard = main.start_shard(&format!("{KEY}=shard1"));
    let manifests: String =
        (0..6).map(|i| enrollment(&format!("device-{i}"), (i >= 3).then_some("shard1"))).collect();
    main.apply(&manifests).await;
    for i in 0..6 {
        main.wait(&format!("individualenrollment/device-{i}"), "condition=Ready").await;
    }
    eventually("the main operator's Ready enrollments", 3.0, || main.metric(READY)).await;
    eventually("the shard's Ready enrollments", 3.0, || shard.metric(READY)).await;
    for i in 0..6 {
        let ready = main.get(&format!("individualenrollment/device-{i}")).await;
        let conditions = ready["status"]["conditions"].as_array().unwrap().clone();
        assert!(conditions.iter().all(|c| c["reason"] != "Conflict"), "device-{i}: {conditions:?}");
    }

    // Relabelled: the shard takes it, the main operator lets it go.
    let relabelled =
        main.kubectl(&["label", "individualenrollment/device-0", &format!("{KEY}=shard1")], None).await;
    assert!(relabelled.success, "{}", relabelled.stderr);
    eventually("the shard's Ready enrollments", 4.0, || shard.metric(READY)).await;
    eventually("the main operator's Ready enrollments", 2.0, || main.metric(READY)).await;
    let calls = main.emulator.calls();
    let puts = calls.get("IndividualEnrollment_CreateOrUpdate").copied().unwrap_or_default()
        + calls.get("IndividualEnrollment_RunBulkOperation").copied().unwrap_or_default();
    assert!(puts <= 6, "each enrollment created once, none written by both: {calls:?}");
}
