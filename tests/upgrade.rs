//! Upgrading from the previous release on a real node, as a platform team does: release 0.1.0
//! installed from its own chart and image (built from its commit by `scripts/build-images`) with
//! enrollments of every kind applied from its examples (`v1alpha1`); then this release's CRDs and
//! `helm upgrade` to the working tree; then `helm rollback`. No step writes to DPS, and every
//! resource stays Ready with its finalizer, claim and DPS etag.

use std::collections::BTreeMap;

use dps_emulator::{EmulatorConfig, RunningEmulator};
use serde_json::Value;
use support::node::{
    apply_examples, block, cluster, dps_deletes, eventually_async, helm, image_name, individual_in_dps,
    install_chart, kubectl, previous_release, wait_enrollments_ready,
};

mod support;

use dps_operator::devenv::OPERATOR_NAMESPACE;
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dps-operator");
const PREVIOUS_EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0.1.0/examples");
const ENROLLMENTS: &str = "enrollmentgroups,individualenrollments";

#[tokio::test(flavor = "multi_thread")]
async fn upgrading_from_the_previous_release_and_rolling_back_keeps_every_resource_without_a_dps_write() {
    let cluster = block(cluster);
    let archive = previous_release("PREVIOUS_OPERATOR_ARCHIVE");
    block(|| cluster.import_image(archive.as_ref())).expect("the previous release's image imports");
    let emulator = RunningEmulator::start(EmulatorConfig {
        listen: (cluster.node_address(), 0).into(),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts on the node's address");
    let previous_chart = format!("{}/charts/dps-operator", previous_release("PREVIOUS_SOURCES"));
    let namespace = block(|| {
        install_chart(&previous_chart, &previous_release("PREVIOUS_OPERATOR_IMAGE"));
        apply_examples(&emulator, PREVIOUS_EXAMPLES)
    });
    let ns = namespace.as_str();
    let before = block(|| enrollments(ns));
    assert_eq!(before.len(), 7, "enrollments of every attestation kind: {:?}", before.keys());

    // The upgrade, as the README says: this release's CRDs, then `helm upgrade`.
    emulator.reset_calls();
    block(|| kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &format!("{CHART}/crds")], None));
    block(|| upgrade_to(CHART, &image_name("OPERATOR_IMAGE")));
    for crd in
        ["provisioningservices", "clusterprovisioningservices", "enrollmentgroups", "individualenrollments"]
    {
        let crd = format!("crd/{crd}.dps.iot.dev");
        eventually_async(&format!("{crd} stores only v1beta1"), || {
            let crd = crd.clone();
            async move {
                block(|| kubectl(&["get", &crd, "-o", "jsonpath={.status.storedVersions}"], None))
                    == r#"["v1beta1"]"#
            }
        })
        .await;
    }
    assert_untouched(&emulator, ns, &before, "the upgrade").await;

    // The new version of the API, with the new operator: a new enrollment reaches DPS.
    let new = "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: after-upgrade}\n\
               spec:\n  serviceRef: {name: contoso-dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: after-upgrade-keys}\n";
    block(|| kubectl(&["apply", "-n", ns, "-f", "-"], Some(new)));
    block(|| wait_enrollments_ready(ns));
    assert!(individual_in_dps(&support::dps::client(&emulator), "after-upgrade").await);

    // `helm rollback`: the previous operator, through the v1alpha1 it knows, takes over again.
    let before = block(|| enrollments(ns));
    emulator.reset_calls();
    block(|| {
        helm(&["rollback", "dps-operator", "1", "--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout=5m"])
    });
    let image = block(|| {
        kubectl(
            &["get", "deployment/dps-operator", "-n", OPERATOR_NAMESPACE, "-o", "jsonpath={..image}"],
            None,
        )
    });
    assert_eq!(image, previous_release("PREVIOUS_OPERATOR_IMAGE"), "rolled back to the previous release");
    assert_untouched(&emulator, ns, &before, "the rollback").await;
    let through_v1alpha1 = block(|| {
        kubectl(&["get", "individualenrollments.v1alpha1.dps.iot.dev", "-n", ns, "-o", "name"], None)
    });
    assert!(through_v1alpha1.contains("after-upgrade"), "{through_v1alpha1}");
}

fn upgrade_to(chart: &str, image: &str) {
    let (repository, tag) = image.rsplit_once(':').expect("the image has a tag");
    helm(&[
        "upgrade",
        "dps-operator",
        chart,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.tag={tag}"),
        "--wait",
        "--timeout=5m",
    ]);
}

/// Each enrollment by kind and name: its uid, finalizers, claim and the DPS etag in its status.
fn enrollments(namespace: &str) -> BTreeMap<String, Value> {
    let list: Value =
        serde_json::from_str(&kubectl(&["get", ENROLLMENTS, "-n", namespace, "-o", "json"], None)).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let key =
                format!("{}/{}", item["kind"].as_str().unwrap(), item["metadata"]["name"].as_str().unwrap());
            let kept = serde_json::json!({
                "uid": item["metadata"]["uid"],
                "finalizers": item["metadata"]["finalizers"],
                "claim": item["metadata"]["annotations"]["dps.iot.dev/claim"],
                "etag": item["status"]["etag"],
            });
            (key, kept)
        })
        .collect()
}

/// After `step`, once the operator Pod that runs now has read DPS to re-confirm the enrollments:
/// all are Ready and as they were, and nothing was written to DPS.
async fn assert_untouched(
    emulator: &RunningEmulator,
    namespace: &str,
    before: &BTreeMap<String, Value>,
    step: &str,
) {
    eventually_async(&format!("after {step}, the operator re-confirms the enrollments"), || {
        let calls = emulator.calls();
        async move { calls.keys().any(|op| op.ends_with("_Get") || op.ends_with("_Query")) }
    })
    .await;
    block(|| wait_enrollments_ready(namespace));
    let after = block(|| enrollments(namespace));
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "after {step}");
    for (key, was) in before {
        let now = &after[key];
        for field in ["uid", "finalizers", "claim"] {
            assert_eq!(now[field], was[field], "after {step}: {key} kept its {field}");
        }
        // An enrollment created in a bulk call never learned its etag; a later status write may
        // fill in the one DPS holds (the writes below are counted).
        if !was["etag"].is_null() {
            assert_eq!(now["etag"], was["etag"], "after {step}: {key} kept its DPS etag");
        }
    }
    let writes = emulator.writes("IndividualEnrollment") + emulator.writes("EnrollmentGroup");
    assert_eq!((writes, dps_deletes(emulator)), (0, 0), "{step} wrote to DPS: {:?}", emulator.calls());
}
