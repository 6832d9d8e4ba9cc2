//! Every way a user writes a resource, with the real `kubectl` and `helm`: client-side
//! `kubectl apply -f` (kubectl's and Argo CD's default), `--server-side`, `create`, `replace`,
//! `edit`, `patch` and `helm install`. Each resource becomes Ready with its finalizer and claim,
//! and a write that drops them has them back at once.

mod support;

use std::path::PathBuf;

use dps_operator::dps::models;
use serde_json::Value;
use support::operator::{Operator, is_ready};

const CLEANUP: &str = "dps.iot.dev/cleanup";
const IN_USE: &str = "dps.iot.dev/in-use";
const CLAIM: &str = "dps.iot.dev/claim";

/// A connection of each kind and an enrollment of each kind, their names ending in `-{way}`:
/// the group uses the namespaced connection, the device the cluster-wide one.
fn manifests(way: &str, namespace: &str, annotations: &str) -> String {
    let metadata = |name: &str| format!("metadata:\n  name: {name}-{way}\n{annotations}");
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: ProvisioningService\n{}spec:\n  credentials:\n    \
         connectionStringSecretRef: {{name: dps-connection, key: connectionString}}\n  caBundle:\n    \
         secretRef: {{name: dps-ca, key: ca.crt}}\n---\n\
         apiVersion: dps.iot.dev/v1beta1\nkind: ClusterProvisioningService\n{}spec:\n  credentials:\n    \
         connectionStringSecretRef: {{name: dps-connection, key: connectionString}}\n  caBundle:\n    \
         secretRef: {{name: dps-ca, key: ca.crt}}\n  allowedNamespaces:\n    matchLabels: \
         {{kubernetes.io/metadata.name: {namespace}}}\n---\n\
         apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\n{}spec:\n  serviceRef: {{name: dps-{way}}}\n  \
         attestation:\n    symmetricKey:\n      secretRef: {{name: group-{way}-keys}}\n  provisioningStatus: enabled\n---\n\
         apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\n{}spec:\n  serviceRef: \
         {{kind: ClusterProvisioningService, name: dps-{way}}}\n  attestation:\n    symmetricKey:\n      \
         secretRef: {{name: device-{way}-keys}}\n  provisioningStatus: enabled\n",
        metadata("dps"),
        metadata("dps"),
        metadata("group"),
        metadata("device"),
    )
}

/// Where this test binary keeps its manifests; removed when it exits.
fn directory() -> PathBuf {
    extern "C" fn remove() {
        let _ = std::fs::remove_dir_all(directory());
    }
    static REMOVED_AT_EXIT: std::sync::Once = std::sync::Once::new();
    REMOVED_AT_EXIT.call_once(|| support::at_exit(remove));
    std::env::temp_dir().join(format!("dps-kubectl-ways-{}", std::process::id()))
}

/// `text` in a file of its own, as a user keeps a manifest.
fn file(name: &str, text: &str) -> PathBuf {
    let directory = directory();
    let path = directory.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

async fn kubectl_ok(operator: &Operator, args: &[&str]) {
    let output = operator.kubectl(args, None).await;
    assert!(output.success, "kubectl {} failed: {}", args.join(" "), output.stderr);
}

fn finalizers(resource: &Value) -> Vec<&str> {
    resource["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// Waits until the four resources of `way` are Ready, the enrollments with their finalizer and
/// claim, the connections with theirs.
async fn all_ready(operator: &Operator, way: &str) {
    for connection in
        [format!("provisioningservice/dps-{way}"), format!("clusterprovisioningservice/dps-{way}")]
    {
        operator
            .eventually(&connection, "Ready and held while in use", |c| {
                is_ready(c) && finalizers(c).contains(&IN_USE)
            })
            .await;
    }
    for enrollment in [format!("enrollmentgroup/group-{way}"), format!("individualenrollment/device-{way}")] {
        let resource = operator
            .eventually(&enrollment, "Ready, with its finalizer and claim", |e| {
                is_ready(e)
                    && finalizers(e).contains(&CLEANUP)
                    && e["metadata"]["annotations"][CLAIM].is_string()
            })
            .await;
        let claim = resource["metadata"]["annotations"][CLAIM].as_str().unwrap();
        let uid = resource["metadata"]["uid"].as_str().unwrap();
        assert!(claim.starts_with(&format!("{uid}@")), "{enrollment}: the claim is its own: {claim}");
        assert_eq!(resource["status"]["claimed"], true, "{enrollment}");
    }
}

/// A Helm chart holding the resources of `way`.
fn chart(way: &str, namespace: &str) -> String {
    let directory = file(&format!("chart-{way}/Chart.yaml"), "").parent().unwrap().to_path_buf();
    std::fs::write(
        directory.join("Chart.yaml"),
        format!("apiVersion: v2\nname: enrollments-{way}\nversion: 1.0.0\n"),
    )
    .unwrap();
    std::fs::create_dir_all(directory.join("templates")).unwrap();
    std::fs::write(directory.join("templates/enrollments.yaml"), manifests(way, namespace, "")).unwrap();
    directory.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_becomes_ready_however_it_was_written() {
    let operator = Operator::start("ways").await;
    let namespace = operator.namespace.clone();
    let ns = namespace.as_str();

    let apply = file("apply.yaml", &manifests("apply", ns, ""));
    kubectl_ok(&operator, &["apply", "-f", apply.to_str().unwrap()]).await;
    let server_side = file("ssa.yaml", &manifests("ssa", ns, ""));
    kubectl_ok(&operator, &["apply", "--server-side", "-f", server_side.to_str().unwrap()]).await;
    let create = file("create.yaml", &manifests("create", ns, ""));
    kubectl_ok(&operator, &["create", "-f", create.to_str().unwrap()]).await;
    // Argo CD's default sync is a client-side apply that adds its tracking annotation.
    let tracking = format!(
        "  annotations:\n    argocd.argoproj.io/tracking-id: \"enrollments:dps.iot.dev/Kind:{ns}/name\"\n"
    );
    let argo = file("argocd.yaml", &manifests("argocd", ns, &tracking));
    kubectl_ok(&operator, &["apply", "-f", argo.to_str().unwrap()]).await;
    let helm = support::helm::helm(&["install", "enrollments", &chart("helm", ns), "-n", ns, "--wait=false"]);
    assert!(helm.success, "helm install failed: {}", helm.stderr);

    for way in ["apply", "ssa", "create", "argocd", "helm"] {
        all_ready(&operator, way).await;
    }
    // One create per enrollment (in bulk calls), and nothing refused or retried.
    assert!(operator.emulator.writes("EnrollmentGroup") <= 5, "{:?}", operator.emulator.calls());
    assert!(operator.emulator.writes("IndividualEnrollment") <= 5, "{:?}", operator.emulator.calls());
    for refused in [409, 412, 422] {
        assert_eq!(operator.emulator.calls_answered(refused), 0, "{:?}", operator.emulator.calls());
    }
    let group: models::EnrollmentGroup = operator.dps.get("group-apply").await.unwrap();
    assert_eq!(group.provisioning_status, Some(models::ProvisioningStatus::Enabled));

    // Afterwards, `kubectl edit` of a client-side applied group and `kubectl patch` of a created
    // enrollment reach DPS.
    let edited = support::run(
        support::control_plane()
            .kubectl()
            .env("KUBE_EDITOR", "sed -i s/provisioningStatus:\\ enabled/provisioningStatus:\\ disabled/")
            .args(["edit", "enrollmentgroup/group-apply", "-n", ns]),
        None,
    );
    assert!(edited.success, "kubectl edit failed: {}", edited.stderr);
    let patch = r#"{"spec":{"provisioningStatus":"disabled"}}"#;
    kubectl_ok(&operator, &["patch", "individualenrollment/device-create", "--type", "merge", "-p", patch])
        .await;
    operator
        .eventually_dps("the edit and the patch reached DPS", async |dps| {
            let group: models::EnrollmentGroup = dps.get("group-apply").await.ok()?;
            let device: models::IndividualEnrollment = dps.get("device-create").await.ok()?;
            let disabled = Some(models::ProvisioningStatus::Disabled);
            (group.provisioning_status == disabled && device.provisioning_status == disabled).then_some(())
        })
        .await;
    all_ready(&operator, "apply").await;
    all_ready(&operator, "create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replace_that_drops_the_finalizer_and_claim_has_them_back_and_the_delete_reaches_dps() {
    // No drift check comes in the test's time: what restores the finalizer and claim is the
    // replace itself being noticed.
    let operator = Operator::start_with("replace", Default::default(), |config| {
        config.drift_check_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    let ns = operator.namespace.clone();
    let manifest = file("replace.yaml", &manifests("replace", &ns, ""));
    kubectl_ok(&operator, &["create", "-f", manifest.to_str().unwrap()]).await;
    all_ready(&operator, "replace").await;

    // `kubectl replace` writes the object as the file has it: no finalizer, no claim.
    let before = operator.get("enrollmentgroup/group-replace").await;
    kubectl_ok(&operator, &["replace", "-f", manifest.to_str().unwrap()]).await;
    let replaced = operator.get("enrollmentgroup/group-replace").await;
    assert_ne!(replaced["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
    all_ready(&operator, "replace").await;

    // Deleted right after: the enrollments leave DPS, and the connections go once they have.
    kubectl_ok(&operator, &["delete", "-f", manifest.to_str().unwrap(), "--wait=true", "--timeout=60s"])
        .await;
    assert!(
        operator.dps.get::<models::EnrollmentGroup>("group-replace").await.is_err(),
        "the group left DPS"
    );
    assert!(
        operator.dps.get::<models::IndividualEnrollment>("device-replace").await.is_err(),
        "the enrollment left DPS"
    );
    let events = operator.events("group-replace").await;
    assert!(events.iter().any(|(_, reason, _)| reason == "Deleted"), "{events:?}");
    assert!(
        events.iter().all(|(_, _, note)| !note.contains("Status {")),
        "no debug dump in events: {events:?}"
    );
}
