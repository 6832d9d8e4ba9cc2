//! Uninstalling never deletes enrollments in DPS: not removing the operator, not deleting the
//! CRDs. (A test binary of its own: it deletes a CRD.)

mod support;

use dps_operator::dps::models;
use support::operator::Operator;

const GROUP: &str = "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {name: thermostats}\nspec:\n  serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: thermostats-keys}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_the_operator_or_the_crds_leaves_dps_alone() {
    let mut operator = Operator::start("uninstall").await;
    operator.apply(GROUP).await;
    operator.apply(&GROUP.replace("thermostats", "cameras")).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    operator.wait("enrollmentgroup/cameras", "condition=Ready").await;

    // Without the operator, a deleted resource waits on its finalizer; DPS keeps the group.
    operator.stop();
    assert!(operator.kubectl(&["delete", "enrollmentgroup/thermostats", "--wait=false"], None).await.success);
    let waiting = operator.get("enrollmentgroup/thermostats").await;
    assert!(waiting["metadata"]["deletionTimestamp"].is_string());
    operator.dps.get::<models::EnrollmentGroup>("thermostats").await.expect("still in DPS");

    // Back, the operator carries out that deletion: the user asked for it.
    operator.restart();
    operator
        .eventually_dps("the deleted resource's group is removed", async |dps| {
            dps.get::<models::EnrollmentGroup>("thermostats").await.is_err().then_some(())
        })
        .await;

    // Deleting the CRD with the operator running releases the resources and leaves DPS alone.
    let deleted = support::kubectl(&["delete", "crd", "enrollmentgroups.dps.iot.dev", "--timeout=60s"], None);
    assert!(deleted.success, "{}", deleted.stderr);
    operator.dps.get::<models::EnrollmentGroup>("cameras").await.expect("still in DPS after the CRD is gone");
}
