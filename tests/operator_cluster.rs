//! ClusterProvisioningService end to end: its Secrets come from the operator's namespace, and
//! only the namespaces `allowedNamespaces` selects may use it. (A test binary of its own: the
//! cluster-scoped kind is reconciled by every operator on a control plane.)

mod support;

use support::operator::{Operator, condition};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_admitted_namespaces_may_use_a_cluster_connection() {
    let operator = Operator::start("cluster").await;
    // The harness runs the operator with this namespace as its own, so the Secrets go here.
    operator
        .apply(
            r#"
apiVersion: dps.iot.dev/v1beta1
kind: ClusterProvisioningService
metadata: {name: factory}
spec:
  credentials:
    connectionStringSecretRef: {name: dps-connection, key: connectionString}
  caBundle:
    secretRef: {name: dps-ca, key: ca.crt}
  allowedNamespaces:
    matchLabels: {team: factory}
---
apiVersion: dps.iot.dev/v1beta1
kind: ClusterProvisioningService
metadata: {name: closed}
spec:
  credentials:
    connectionStringSecretRef: {name: dps-connection, key: connectionString}
  caBundle:
    secretRef: {name: dps-ca, key: ca.crt}
"#,
        )
        .await;
    operator.wait("clusterprovisioningservice/factory", "condition=Ready").await;
    let factory = operator.get("clusterprovisioningservice/factory").await;
    assert_eq!(condition(&factory, "Ready").unwrap().1, "Connected");

    let enrollment = |name: &str, service: &str| {
        format!(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: {name}}}\nspec:\n  serviceRef: {{kind: ClusterProvisioningService, name: {service}}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: {name}-keys}}\n"
        )
    };
    operator.apply(&enrollment("line-1", "factory")).await;
    operator.apply(&enrollment("line-2", "closed")).await;
    let refused = operator
        .eventually("individualenrollment/line-1", "the namespace is refused", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "ConnectionNotAllowed")
        })
        .await;
    assert!(condition(&refused, "Ready").unwrap().2.contains("allowedNamespaces"));
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 0);

    // Labelling the namespace admits it; a connection without allowedNamespaces admits none.
    let labelled =
        operator.kubectl(&["label", "namespace", &operator.namespace.clone(), "team=factory"], None).await;
    assert!(labelled.success, "{}", labelled.stderr);
    operator.wait("individualenrollment/line-1", "condition=Ready").await;
    operator
        .dps
        .get::<dps_operator::dps::models::IndividualEnrollment>("line-1")
        .await
        .expect("created through the cluster connection");
    let closed = operator.get("individualenrollment/line-2").await;
    assert_eq!(condition(&closed, "Ready").unwrap().1, "ConnectionNotAllowed");
}
