//! Deletion protection with the real commands: `kubectl delete`, `kubectl delete namespace` and
//! `helm uninstall` of a protected enrollment are refused by the chart's webhook registration
//! (reached here on loopback), DPS keeps the enrollment, an unreachable webhook still refuses
//! them while ordinary deletes go on, and once the protection is lifted each delete completes.
//! (A test binary of its own: it registers a webhook for the whole control plane and runs
//! kube-controller-manager for namespace deletion.)

mod support;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_operator::{dps::models, pki::CertificateAuthority};
use serde_json::{Value, json};
use support::{
    helm::{documents, find, helm},
    operator::{Operator, is_ready},
};

const REFUSED: &str = "is protected from deletion";
const LIFT: &str = r#"{"spec":{"deletionProtection":false}}"#;

/// An enrollment with a generated key, on the connection `connection` of `kind`, with `extra`
/// lines in its spec.
fn enrollment(name: &str, kind: &str, connection: &str, extra: &str) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: {name}}}\nspec:\n  \
         serviceRef: {{kind: {kind}, name: {connection}}}\n  attestation:\n    symmetricKey:\n      \
         secretRef: {{name: {name}-keys}}\n{extra}"
    )
}

/// The admission webhook, served on loopback for the rest of the test: its URL.
async fn serve_webhook(ca: &CertificateAuthority) -> String {
    let serving = ca.issue_server("127.0.0.1", &["127.0.0.1"]).unwrap();
    let (listener, tls) = dps_operator::admission::bind(
        "127.0.0.1:0".parse().unwrap(),
        &serving.certificate_pem,
        &serving.key_pem,
    )
    .await
    .unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = dps_operator::admission::router();
    tokio::spawn(dps_operator::admission::serve(listener, tls, router, std::future::pending()));
    format!("https://127.0.0.1:{port}{}", dps_operator::admission::PATH)
}

/// A URL on loopback where nothing listens.
fn unreachable_url() -> String {
    let port = dps_operator::devenv::free_port().unwrap();
    format!("https://127.0.0.1:{port}{}", dps_operator::admission::PATH)
}

/// The chart's registration of the deletion-protection webhook, as `helm template` renders it,
/// pointed at `url`.
fn register(url: &str, ca: &CertificateAuthority) {
    let chart = support::helm::chart("dps-operator");
    let rendered = helm(&["template", "release", &chart, "--namespace", "dps-system"]);
    assert!(rendered.success, "{}", rendered.stderr);
    let documents = documents(&rendered.stdout);
    let registration = find(&documents, "ValidatingWebhookConfiguration")[0];
    let mut webhook = registration["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "deletion-protection.dps.iot.dev")
        .expect("the chart registers the deletion-protection webhook")
        .clone();
    webhook["clientConfig"] = json!({"url": url, "caBundle": BASE64.encode(&ca.certificate_pem)});
    let configuration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "dps-operator-deletion-protection"},
        "webhooks": [webhook],
    });
    let applied = support::kubectl(&["apply", "-f", "-"], Some(&configuration.to_string()));
    assert!(applied.success, "{}", applied.stderr);
}

/// Waits until the API server refuses a server-side dry run of deleting `resource` in `namespace`
/// with a message holding `words` (a new webhook registration takes a moment to be used).
async fn refused_dry_run(operator: &Operator, resource: &str, words: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = operator.kubectl(&["delete", resource, "--dry-run=server"], None).await;
        if !attempt.success && attempt.stderr.contains(words) {
            return attempt.stderr;
        }
        assert!(tokio::time::Instant::now() < deadline, "{resource} was never refused: {}", attempt.stderr);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn in_dps(operator: &Operator, id: &str) -> bool {
    operator.dps.get::<models::IndividualEnrollment>(id).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protected_enrollments_survive_every_kind_of_delete_until_the_protection_is_lifted() {
    support::control_plane().start_controller_manager().unwrap();
    let mut operator = Operator::start("protect").await;
    let ca = CertificateAuthority::new("webhook CA").unwrap();
    let webhook = serve_webhook(&ca).await;
    register(&webhook, &ca);
    three_enrollments_protected_or_not(&operator).await;
    kubectl_delete_is_refused_with_the_command_that_lifts_it(&operator).await;
    an_unreachable_webhook_refuses_only_protected_deletes(&operator, &webhook, &ca).await;
    let chart = helm_uninstall_is_refused(&operator).await;
    let other = deleting_a_namespace_waits_saying_why(&mut operator).await;
    lifted_every_delete_completes(&operator, &other).await;
    without_the_webhook_dps_keeps_a_protected_enrollment(&operator).await;
    let _ = std::fs::remove_dir_all(chart);
    operator.stop();
}

/// `guarded` by its own spec, `inherited` by the connection's default, `free` by neither.
async fn three_enrollments_protected_or_not(operator: &Operator) {
    let patch = r#"{"spec":{"enrollmentDefaults":{"deletionProtection":true}}}"#;
    let patched =
        operator.kubectl(&["patch", "provisioningservice/dps", "--type", "merge", "-p", patch], None).await;
    assert!(patched.success, "{}", patched.stderr);
    let service = "ProvisioningService";
    operator.apply(&enrollment("guarded", service, "dps", "  deletionProtection: true\n")).await;
    operator.apply(&enrollment("inherited", service, "dps", "")).await;
    operator.apply(&enrollment("free", service, "dps", "  deletionProtection: false\n")).await;
    for name in ["guarded", "inherited", "free"] {
        let resource = format!("individualenrollment/{name}");
        let protected = name != "free";
        operator
            .eventually(&resource, "Ready, its protection recorded", |r| {
                is_ready(r) && (r["status"]["deletionProtected"] == true) == protected
            })
            .await;
    }
    let wide = operator.kubectl(&["get", "individualenrollments", "-o", "wide"], None).await;
    // The column's text starts where its header does.
    let protected_column = |name: &str| {
        let at = wide.stdout.lines().next().unwrap().find("PROTECTED").expect("a PROTECTED column");
        let row = wide.stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        row.get(at..).and_then(|rest| rest.split_whitespace().next()).map(str::to_owned)
    };
    assert_eq!(protected_column("guarded").as_deref(), Some("true"), "{}", wide.stdout);
    assert_eq!(protected_column("inherited").as_deref(), Some("true"), "{}", wide.stdout);
}

/// kubectl delete: refused with the command that lifts the protection; DPS keeps both.
async fn kubectl_delete_is_refused_with_the_command_that_lifts_it(operator: &Operator) {
    refused_dry_run(operator, "individualenrollment/guarded", REFUSED).await;
    let ns = operator.namespace.clone();
    let refused = operator.kubectl(&["delete", "individualenrollment/guarded"], None).await;
    assert!(!refused.success, "the delete went through");
    let lift = format!("kubectl patch individualenrollment guarded -n {ns} --type merge -p '{LIFT}'");
    assert!(refused.stderr.contains(REFUSED) && refused.stderr.contains(&lift), "{}", refused.stderr);
    let refused = operator.kubectl(&["delete", "individualenrollment/inherited"], None).await;
    assert!(
        !refused.success && refused.stderr.contains("its connection's enrollmentDefaults.deletionProtection"),
        "{}",
        refused.stderr
    );
    for name in ["guarded", "inherited"] {
        let kept = operator.get(&format!("individualenrollment/{name}")).await;
        assert!(kept["metadata"]["deletionTimestamp"].is_null(), "{name} is not being deleted");
        assert!(in_dps(operator, name).await, "{name} stays in DPS");
    }
}

/// An ordinary delete never waits for the webhook: with it unreachable, `free` goes (and leaves
/// DPS), and a protected one is still refused (the registration fails closed for them alone).
async fn an_unreachable_webhook_refuses_only_protected_deletes(
    operator: &Operator,
    webhook: &str,
    ca: &CertificateAuthority,
) {
    register(&unreachable_url(), ca);
    let unreachable =
        refused_dry_run(operator, "individualenrollment/guarded", "failed calling webhook").await;
    assert!(unreachable.contains("deletion-protection.dps.iot.dev"), "{unreachable}");
    let deleted = operator.kubectl(&["delete", "individualenrollment/free", "--timeout=60s"], None).await;
    assert!(deleted.success, "an unprotected delete needs no webhook: {}", deleted.stderr);
    assert!(!in_dps(operator, "free").await, "free left DPS");
    let unreachable = operator.kubectl(&["delete", "individualenrollment/guarded"], None).await;
    assert!(
        !unreachable.success && unreachable.stderr.contains("failed calling webhook"),
        "{}",
        unreachable.stderr
    );
    assert!(in_dps(operator, "guarded").await);
    register(webhook, ca);
    refused_dry_run(operator, "individualenrollment/guarded", REFUSED).await;
}

/// helm uninstall of a chart holding a protected enrollment reports the refusal; answers the
/// chart's folder.
async fn helm_uninstall_is_refused(operator: &Operator) -> std::path::PathBuf {
    let (ns, service) = (operator.namespace.clone(), "ProvisioningService");
    let chart = std::env::temp_dir().join(format!("dps-protected-chart-{}", std::process::id()));
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: protected\nversion: 1.0.0\n").unwrap();
    let charted = enrollment("charted", service, "dps", "  deletionProtection: true\n");
    std::fs::write(chart.join("templates/enrollment.yaml"), charted).unwrap();
    let chart_path = chart.display().to_string();
    let installed = helm(&["install", "protected", &chart_path, "-n", &ns, "--wait=false"]);
    assert!(installed.success, "{}", installed.stderr);
    operator.eventually("individualenrollment/charted", "Ready", is_ready).await;
    // Helm 4 says only that the release could not be deleted; `kubectl delete` says why.
    let uninstall = helm(&["uninstall", "protected", "-n", &ns]);
    assert!(
        !uninstall.success && uninstall.stderr.contains("failed to delete release: protected"),
        "{}\n{}",
        uninstall.stdout,
        uninstall.stderr
    );
    let kept = operator.get("individualenrollment/charted").await;
    assert!(kept["metadata"]["deletionTimestamp"].is_null(), "charted is not being deleted");
    assert!(in_dps(operator, "charted").await, "charted stays in DPS");
    chart
}

/// kubectl delete namespace: the namespace stays Terminating, saying why, with the protected
/// enrollment intact in Kubernetes and DPS. Answers the namespace.
async fn deleting_a_namespace_waits_saying_why(operator: &mut Operator) -> String {
    let other = operator.add_namespace().await;
    let cluster = format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: ClusterProvisioningService\nmetadata: {{name: dps-{other}}}\nspec:\n  \
         credentials:\n    connectionStringSecretRef: {{name: dps-connection, key: connectionString}}\n  \
         caBundle:\n    secretRef: {{name: dps-ca, key: ca.crt}}\n  allowedNamespaces:\n    \
         matchLabels: {{kubernetes.io/metadata.name: {other}}}\n"
    );
    operator.apply(&cluster).await;
    let housed = enrollment(
        "housed",
        "ClusterProvisioningService",
        &format!("dps-{other}"),
        "  deletionProtection: true\n",
    );
    let applied = support::kubectl(&["apply", "-n", &other, "-f", "-"], Some(&housed));
    assert!(applied.success, "{}", applied.stderr);
    eventually("housed is Ready", Duration::from_secs(60), async || {
        let got = in_namespace(&other, &["get", "individualenrollment/housed", "-o", "json"]).await;
        serde_json::from_str::<Value>(&got.stdout).ok().filter(is_ready).map(|_| ())
    })
    .await;
    let deleting = support::kubectl(&["delete", "namespace", &other, "--wait=false"], None);
    assert!(deleting.success, "{}", deleting.stderr);
    let why = eventually("the namespace says why it cannot go", Duration::from_secs(90), async || {
        let got = support::kubectl(&["get", "namespace", &other, "-o", "json"], None);
        let namespace: Value = serde_json::from_str(&got.stdout).ok()?;
        let conditions = namespace["status"]["conditions"].as_array()?.clone();
        conditions.into_iter().find(|c| c["message"].as_str().is_some_and(|m| m.contains(REFUSED)))
    })
    .await;
    assert_eq!(why["type"], "NamespaceDeletionContentFailure", "{why}");
    let housed_now = in_namespace(&other, &["get", "individualenrollment/housed", "-o", "json"]).await;
    assert!(housed_now.success, "housed is still there: {}", housed_now.stderr);
    assert!(in_dps(operator, "housed").await, "housed stays in DPS");
    other
}

/// Lifted, each delete completes and DPS follows the deletion policy (Delete).
async fn lifted_every_delete_completes(operator: &Operator, other: &str) {
    let ns = operator.namespace.clone();
    for name in ["guarded", "inherited", "charted"] {
        let lifted = operator
            .kubectl(&["patch", &format!("individualenrollment/{name}"), "--type", "merge", "-p", LIFT], None)
            .await;
        assert!(lifted.success, "{}", lifted.stderr);
    }
    let lifted =
        in_namespace(other, &["patch", "individualenrollment/housed", "--type", "merge", "-p", LIFT]).await;
    assert!(lifted.success, "{}", lifted.stderr);
    for name in ["guarded", "inherited"] {
        let resource = format!("individualenrollment/{name}");
        operator
            .eventually(&resource, "its protection lifted", |r| r["status"]["deletionProtected"].is_null())
            .await;
        let deleted = operator.kubectl(&["delete", &resource, "--timeout=60s"], None).await;
        assert!(deleted.success, "{name}: {}", deleted.stderr);
    }
    let uninstall = helm(&["uninstall", "protected", "-n", &ns]);
    if !uninstall.success {
        // Helm forgot the release when its first uninstall failed part way: what is left is the
        // user's to delete.
        let deleted =
            operator.kubectl(&["delete", "individualenrollment/charted", "--timeout=60s"], None).await;
        assert!(deleted.success, "charted: {}\n{}", deleted.stderr, uninstall.stderr);
    }
    eventually("the namespace is gone", Duration::from_secs(180), async || {
        let got = support::kubectl(&["get", "namespace", other], None);
        (!got.success && got.stderr.contains("NotFound")).then_some(())
    })
    .await;
    for name in ["guarded", "inherited", "charted", "housed"] {
        assert!(!in_dps(operator, name).await, "{name} left DPS");
    }
}

/// Without the webhook (not installed), a protected enrollment's delete goes through in
/// Kubernetes, and the operator leaves the enrollment in DPS.
async fn without_the_webhook_dps_keeps_a_protected_enrollment(operator: &Operator) {
    let service = "ProvisioningService";
    operator.apply(&enrollment("unwatched", service, "dps", "  deletionProtection: true\n")).await;
    operator.eventually("individualenrollment/unwatched", "Ready", is_ready).await;
    support::kubectl_ok(&["delete", "validatingwebhookconfiguration", "dps-operator-deletion-protection"]);
    eventually("the webhook is no longer called", Duration::from_secs(30), async || {
        let dry_run =
            operator.kubectl(&["delete", "individualenrollment/unwatched", "--dry-run=server"], None).await;
        dry_run.success.then_some(())
    })
    .await;
    let deleted =
        operator.kubectl(&["delete", "individualenrollment/unwatched", "--timeout=60s"], None).await;
    assert!(deleted.success, "{}", deleted.stderr);
    assert!(in_dps(operator, "unwatched").await, "a protected enrollment stays in DPS");
    let (orphaned, _) =
        operator.eventually_event("unwatched", "Orphaned", |(_, reason, _)| reason == "Orphaned").await;
    assert!(orphaned.2.contains("protected from deletion"), "{orphaned:?}");
}

/// Runs kubectl in namespace `namespace`.
async fn in_namespace(namespace: &str, args: &[&str]) -> support::Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["-n".to_owned(), namespace.to_owned()]);
    tokio::task::spawn_blocking(move || {
        support::kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>(), None)
    })
    .await
    .unwrap()
}

/// Waits until `check` answers something, for at most `patience`.
async fn eventually<T>(what: &str, patience: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
