//! The Helm chart with the real `helm` and `kubectl`: rendering, the values schema, installing,
//! Pod Security, and that its RBAC is enough for the operator and no more. (A test binary of its
//! own: it installs cluster-wide RBAC.)

mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;
use support::{
    control_plane,
    helm::{documents, find, helm},
    kubectl, kubectl_ok,
    operator::Operator,
};

fn chart() -> String {
    support::helm::chart("dps-operator")
}

/// The chart rendered with `sets` (`--flag=value` ones passed as they are), as JSON documents.
fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "release", &chart as &str, "--namespace", "dps-system"];
    for set in sets {
        if set.starts_with("--") {
            args.push(set);
        } else {
            args.extend(["--set", set]);
        }
    }
    let output = helm(&args);
    assert!(output.success, "helm template {sets:?} failed: {}", output.stderr);
    documents(&output.stdout)
}

fn rules_granting<'a>(role: &'a Value, resource: &str) -> Vec<&'a Value> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"].as_array().unwrap().iter().any(|x| x == resource))
        .collect()
}

#[test]
fn the_chart_lints_and_renders_for_every_kind_of_install() {
    let matrix: [&[&str]; 5] = [
        &[],
        &["watchNamespaces={factory,office}"],
        &["replicaCount=2"],
        &["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus"],
        &[
            "workloadIdentity.enabled=true",
            "serviceAccount.annotations.azure\\.workload\\.identity/client-id=6f1b3c2e-7a4d-4e1b-9c3a-2d5e8f0a1b7c",
        ],
    ];
    for sets in matrix {
        let mut lint = vec!["lint", "--strict"];
        let chart = chart();
        lint.push(&chart);
        for set in sets {
            lint.extend(["--set", set]);
        }
        let linted = helm(&lint);
        assert!(linted.success, "helm lint {sets:?}: {}{}", linted.stdout, linted.stderr);

        let documents = render(sets);
        for role in find(&documents, "ClusterRole").into_iter().chain(find(&documents, "Role")) {
            for rule in role["rules"].as_array().unwrap() {
                let text = rule.to_string();
                assert!(!text.contains("\"*\""), "a wildcard in {sets:?}: {text}");
            }
        }
        let deployment = find(&documents, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let container = &pod["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(container["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    }
}

/// Every RBAC rule says why it is there; a namespaced install gets Roles in its namespaces only.
#[test]
fn every_rbac_rule_says_why_and_a_namespaced_install_reads_secrets_only_in_its_namespaces() {
    for template in ["templates/rbac.yaml", "templates/_helpers.tpl"] {
        let text = std::fs::read_to_string(Path::new(&chart()).join(template)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (index, _) in lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with("- apiGroups:"))
        {
            assert!(
                lines[index - 1].trim_start().starts_with('#'),
                "{template}:{} has no comment",
                index + 1
            );
        }
    }

    let cluster_wide = render(&[]);
    assert_eq!(rules_granting(find(&cluster_wide, "ClusterRole")[0], "secrets").len(), 1);
    let restricted = render(&["watchNamespaces={factory,office}"]);
    assert!(
        rules_granting(find(&restricted, "ClusterRole")[0], "secrets").is_empty(),
        "no cluster-wide Secrets"
    );
    let namespaces: Vec<&str> =
        find(&restricted, "Role").iter().map(|r| r["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["factory", "office", "dps-system"]);
    let args =
        find(&restricted, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--namespace=factory") && args.contains("--namespace=office"), "{args}");
    assert!(args.contains("--max-concurrent-reconciles=16"), "{args}");
}

/// The binary accepts the arguments every variant of the chart gives it, and each option renders
/// what it says.
#[test]
fn the_binary_accepts_the_charts_arguments_and_each_option_renders_what_it_says() {
    for sets in [&[][..], &["watchNamespaces={factory}", "replicaCount=2", "extraCaBundle=x"][..]] {
        let rendered = render(sets);
        let args: Vec<String> = serde_json::from_value(
            find(&rendered, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
        )
        .unwrap();
        let parsed =
            Command::new(env!("CARGO_BIN_EXE_dps-operator")).args(&args).arg("--help").output().unwrap();
        assert!(parsed.status.success(), "{args:?}: {}", String::from_utf8_lossy(&parsed.stderr));
    }

    let single = render(&[]);
    assert_eq!(find(&single, "Deployment")[0]["spec"]["strategy"]["type"], "Recreate");
    assert!(find(&single, "PodDisruptionBudget").is_empty());
    let ha = render(&["replicaCount=2"]);
    assert!(
        find(&ha, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string()
            .contains("--leader-election")
    );
    assert_eq!(find(&ha, "PodDisruptionBudget").len(), 1);
    assert!(find(&ha, "Role").iter().any(|r| !rules_granting(r, "leases").is_empty()));

    let monitored = render(&[
        "metrics.serviceMonitor.enabled=true",
        "--api-versions=monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    assert_eq!(find(&monitored, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"], "metrics");
    let identity = render(&[
        "workloadIdentity.enabled=true",
        "serviceAccount.annotations.azure\\.workload\\.identity/client-id=abc",
    ]);
    assert_eq!(
        find(&identity, "ServiceAccount")[0]["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "abc"
    );
    assert_eq!(
        find(&identity, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
}

#[test]
fn shards_get_a_deployment_each_with_their_selector_and_the_main_one_takes_the_rest() {
    let one = render(&[]);
    let deployments = |docs: &[Value]| -> Vec<Value> {
        docs.iter().filter(|d| d["kind"] == "Deployment").cloned().collect()
    };
    let args = |deployment: &Value| -> Vec<String> {
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
        args.iter().map(|a| a.as_str().unwrap().to_owned()).collect()
    };
    let single = deployments(&one);
    assert_eq!(single.len(), 1);
    assert!(
        !args(&single[0]).iter().any(|a| a.starts_with("--watch-label-selector")),
        "no shards, no selector"
    );

    let sharded = deployments(&render(&["sharding.shards={shard1,shard2}", "replicaCount=2"]));
    let names: Vec<&str> = sharded.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["release-dps-operator", "release-dps-operator-shard1", "release-dps-operator-shard2"]);
    let selectors: Vec<String> = sharded
        .iter()
        .map(|d| args(d).into_iter().find(|a| a.starts_with("--watch-label-selector=")).unwrap())
        .collect();
    assert_eq!(
        selectors,
        [
            "--watch-label-selector=!sharding.dps.iot.dev/key",
            "--watch-label-selector=sharding.dps.iot.dev/key=shard1",
            "--watch-label-selector=sharding.dps.iot.dev/key=shard2",
        ]
    );
    // The main Deployment keeps its pod selector (immutable); each shard's adds its shard label.
    assert_eq!(sharded[0]["spec"]["selector"], single[0]["spec"]["selector"]);
    for shard in &sharded[1..] {
        let selector = &shard["spec"]["selector"]["matchLabels"];
        assert_eq!(
            selector["dps.iot.dev/shard"],
            shard["spec"]["template"]["metadata"]["labels"]["dps.iot.dev/shard"]
        );
        assert!(args(shard).contains(&"--leader-election".to_owned()), "each shard elects a leader");
    }
}

#[test]
fn invalid_values_are_refused_by_the_schema() {
    let chart = chart();
    for (set, complaint) in [
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("replicaCount=two", "/replicaCount"),
        ("replicaCount=0", "/replicaCount"),
        ("logging.format=xml", "/logging/format"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces"),
        ("operator.driftCheckInterval=often", "/operator/driftCheckInterval"),
        ("operator.maxConcurrentReconciles=-1", "/operator/maxConcurrentReconciles"),
        ("metrics.serviceMonitor.enable=true", "'enable' not allowed"),
        ("sharding.shards={Shard_1}", "/sharding/shards"),
    ] {
        let output = helm(&["template", "release", &chart, "--set", set]);
        assert!(!output.success, "{set} was accepted");
        assert!(output.stderr.contains(complaint), "{set}: {}", output.stderr);
    }
}

/// Installs the chart as `release` in `namespace`.
fn install(release: &str, namespace: &str, sets: &[&str]) -> support::Output {
    let chart = chart();
    let mut args = vec![
        "install",
        release,
        &chart as &str,
        "--namespace",
        namespace,
        "--create-namespace",
        "--skip-crds",
        "--wait=false",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let output = helm(&args);
    assert!(output.success, "helm install failed: {}{}", output.stdout, output.stderr);
    output
}

#[test]
fn the_chart_installs_and_its_pod_passes_pod_security_restricted() {
    kubectl_ok(&["create", "namespace", "dps-restricted"]);
    kubectl_ok(&["label", "namespace", "dps-restricted", "pod-security.kubernetes.io/enforce=restricted"]);
    let _ = install(
        "operator",
        "dps-restricted",
        &[
            "replicaCount=2",
            "metrics.serviceMonitor.enabled=false",
            "extraCaBundle=-----BEGIN CERTIFICATE-----",
            // The webhook then covers only this namespace, where nothing is applied: no Pod runs
            // here to answer it, and other tests share this API server.
            "watchNamespaces={dps-restricted}",
        ],
    );
    let objects = kubectl_ok(&[
        "get",
        "deployment,serviceaccount,service,poddisruptionbudget,configmap,role,rolebinding,secret",
        "-n",
        "dps-restricted",
        "-o",
        "name",
    ]);
    for object in [
        "deployment.apps/operator-dps-operator",
        "serviceaccount/operator-dps-operator",
        "service/operator-dps-operator-metrics",
        "poddisruptionbudget.policy/operator-dps-operator",
        "service/operator-dps-operator-webhook",
        "secret/operator-dps-operator-webhook-tls",
    ] {
        assert!(objects.contains(object), "{object} missing:\n{objects}");
    }
    assert!(
        kubectl_ok(&["get", "clusterrole", "operator-dps-operator", "-o", "name"])
            .contains("operator-dps-operator")
    );

    // No controller manager runs here to make pods, so admit the Deployment's pod template as a pod.
    let deployment: Value = serde_json::from_str(&kubectl_ok(&[
        "get",
        "deployment",
        "operator-dps-operator",
        "-n",
        "dps-restricted",
        "-o",
        "json",
    ]))
    .unwrap();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "operator-pod", "namespace": "dps-restricted", "labels": deployment["spec"]["template"]["metadata"]["labels"]},
        "spec": deployment["spec"]["template"]["spec"],
    });
    let admitted = kubectl(&["apply", "-f", "-"], Some(&pod.to_string()));
    assert!(admitted.success, "the pod template violates Pod Security restricted: {}", admitted.stderr);
}

/// The webhook as the chart registers it: a serving certificate for its Service's DNS names,
/// signed by the CA the registration trusts, mounted where the operator's arguments point, and
/// limited to the watched namespaces.
#[test]
fn the_webhook_is_registered_with_a_certificate_for_its_service() {
    use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
    use x509_parser::prelude::{FromDer, X509Certificate};
    let documents = render(&["watchNamespaces={factory}"]);
    let secret = find(&documents, "Secret").into_iter().find(|s| s["type"] == "kubernetes.io/tls").unwrap();
    let service = secret["metadata"]["name"].as_str().unwrap().replace("-tls", "");
    let namespace = secret["metadata"]["namespace"].as_str().unwrap();
    let pem =
        |key: &str| String::from_utf8(BASE64.decode(secret["data"][key].as_str().unwrap()).unwrap()).unwrap();
    let der = |pem: &str| {
        rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateDer| d.to_vec())
            .unwrap()
    };
    let (serving_der, ca_der) = (der(&pem("tls.crt")), der(&pem("ca.crt")));
    let (_, serving) = X509Certificate::from_der(&serving_der).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let names: Vec<String> = serving
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| name.to_string())
        .collect();
    assert!(names.contains(&format!("DNSName({service}.{namespace}.svc)")), "{names:?}");
    assert_eq!(serving.issuer(), ca.subject());

    let registration = find(&documents, "ValidatingWebhookConfiguration")[0];
    let webhook = &registration["webhooks"][0];
    assert_eq!(webhook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    assert_eq!(webhook["clientConfig"]["service"]["name"], service.as_str());
    assert_eq!(webhook["clientConfig"]["service"]["path"], dps_operator::admission::PATH);
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["namespaceSelector"]["matchExpressions"][0]["values"], serde_json::json!(["factory"]));
    let rendered_service =
        find(&documents, "Service").into_iter().find(|s| s["metadata"]["name"] == service.as_str()).unwrap();
    assert_eq!(rendered_service["spec"]["ports"][0]["targetPort"], "webhook");

    let pod = &find(&documents, "Deployment")[0]["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].to_string();
    assert!(
        args.contains("--webhook-address=0.0.0.0:9443")
            && args.contains("--webhook-certificate-file=/etc/dps-operator/webhook/tls.crt"),
        "{args}"
    );
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], secret["metadata"]["name"]);
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/etc/dps-operator/webhook");

    let without = render(&["webhook.enabled=false"]);
    assert!(
        find(&without, "ValidatingWebhookConfiguration").is_empty() && find(&without, "Secret").is_empty()
    );
    assert!(!find(&without, "Deployment")[0].to_string().contains("webhook"));
}

/// Runs `dps-operator run` as the chart's ServiceAccount.
fn run_as_service_account(namespace: &str, release: &str, extra: &[&str]) -> std::process::Child {
    let service_account = format!("{release}-dps-operator");
    let token = kubectl_ok(&["create", "token", &service_account, "-n", namespace, "--duration=1h"]);
    let kubeconfig = control_plane().token_kubeconfig(&service_account, &token).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dps-operator"))
        .args([
            "run",
            "--operator-namespace",
            namespace,
            "--metrics-address",
            "127.0.0.1:0",
            "--drift-check-interval",
            "3s",
        ])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_charts_rbac_is_enough_for_the_operator_and_no_more() {
    // Cluster-wide install: the operator, as its ServiceAccount, runs the main scenario.
    // Without a node no Pod answers the chart's webhook: leave it out of this cluster-wide install.
    tokio::task::spawn_blocking(|| install("everywhere", "dps-everywhere", &["webhook.enabled=false"]))
        .await
        .unwrap();
    let mut operator = Operator::start("rbac").await;
    operator.stop();
    let mut process = run_as_service_account("dps-everywhere", "everywhere", &[]);
    operator.apply("apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {name: thermostats}\nspec:\n  serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: thermostats-keys}\n").await;
    operator.wait("provisioningservice/dps", "condition=Ready").await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    operator
        .dps
        .get::<dps_operator::dps::models::EnrollmentGroup>("thermostats")
        .await
        .expect("written as the ServiceAccount");
    assert!(
        operator.get("secret/thermostats-keys").await["data"]["primaryKey"].is_string(),
        "the key Secret was created"
    );
    assert!(
        operator.kubectl(&["delete", "enrollmentgroup/thermostats", "--timeout=60s"], None).await.success
    );
    assert!(
        operator.dps.get::<dps_operator::dps::models::EnrollmentGroup>("thermostats").await.is_err(),
        "deleted from DPS"
    );
    let _ = process.kill();
    let _ = process.wait();

    // Namespace-restricted install: Secrets elsewhere are refused to the ServiceAccount.
    kubectl_ok(&["create", "namespace", "dps-allowed"]);
    kubectl_ok(&["create", "namespace", "dps-elsewhere"]);
    tokio::task::spawn_blocking(|| {
        drop(install("restricted", "dps-limited", &["watchNamespaces={dps-allowed}"]))
    })
    .await
    .unwrap();
    let token = kubectl_ok(&["create", "token", "restricted-dps-operator", "-n", "dps-limited"]);
    let kubeconfig = control_plane().token_kubeconfig("restricted", &token).unwrap();
    let can = |args: &[&str]| {
        let mut command = control_plane().kubectl();
        command.env("KUBECONFIG", &kubeconfig).args(["auth", "can-i"]).args(args);
        // `kubectl auth can-i` exits 0 for yes and 1 for no.
        support::run(&mut command, None).success
    };
    assert!(can(&["get", "secrets", "-n", "dps-allowed"]));
    assert!(can(&["watch", "enrollmentgroups.dps.iot.dev", "-n", "dps-allowed"]));
    assert!(!can(&["get", "secrets", "-n", "dps-elsewhere"]), "Secrets outside the watched namespaces");
    assert!(!can(&["list", "secrets", "--all-namespaces"]));
    assert!(!can(&["get", "enrollmentgroups.dps.iot.dev", "-n", "dps-elsewhere"]));
    // It deletes Secrets it wrote and no longer needs (new keys a create never used, device keys
    // no longer asked for), only in the namespaces it watches.
    assert!(can(&["delete", "secrets", "-n", "dps-allowed"]));
    assert!(!can(&["delete", "secrets", "-n", "dps-elsewhere"]), "no more than the operator needs");
    assert!(!can(&["update", "secrets", "-n", "dps-allowed"]), "no more than the operator needs");
    assert!(!can(&["create", "pods", "-n", "dps-allowed"]));
}

/// The operator stage of the Dockerfile agrees with the chart: the user the Pod runs as, the
/// port it probes and scrapes, the command it runs. (`tests/real_node.rs` runs the image itself.)
#[test]
fn the_image_matches_what_the_chart_expects() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let (_, operator_stage) =
        dockerfile.split_once("AS operator\n").expect("the Dockerfile has an operator stage");
    assert!(!operator_stage.contains("\nFROM "), "the operator stage is the last, the default target");
    let documents = render(&[]);
    let pod = &find(&documents, "Deployment")[0]["spec"]["template"]["spec"];
    let user = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(operator_stage.contains(&format!("USER {user}:{user}")), "the image runs as {user}");
    let port = pod["containers"][0]["ports"][0]["containerPort"].as_i64().unwrap();
    assert!(operator_stage.contains(&format!("EXPOSE {port}\n")), "the image exposes {port}");
    assert_eq!(operator_stage.matches("EXPOSE").count(), 1, "only the port it uses");
    assert_eq!(pod["containers"][0]["args"][0], "run");
    assert!(dockerfile.contains("ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot"), "minimal base");
}

/// The objects of release `release`, of the kinds a release makes, in `namespace` and cluster-wide.
fn release_objects(release: &str, namespace: &str) -> String {
    let selector = format!("app.kubernetes.io/instance={release}");
    let namespaced = kubectl_ok(&[
        "get",
        "deployment,service,secret,configmap,poddisruptionbudget,serviceaccount,role,rolebinding",
        "-n",
        namespace,
        "-l",
        &selector,
        "-o",
        "name",
    ]);
    let cluster = kubectl_ok(&[
        "get",
        "clusterrole,clusterrolebinding,validatingwebhookconfiguration",
        "-l",
        &selector,
        "-o",
        "name",
    ]);
    namespaced + &cluster
}

/// From two replicas to one and back: the Deployment's strategy changes with it (the API server
/// refuses rollingUpdate with Recreate, which broke the first upgrade), and uninstalling leaves
/// nothing of the release behind, the PodDisruptionBudget included.
#[test]
fn upgrades_between_one_and_two_replicas_and_uninstall_leave_nothing_behind() {
    let (release, namespace) = ("flip", "dps-flip");
    let _ = install(release, namespace, &["replicaCount=2", "watchNamespaces={dps-flip}"]);
    let strategy = || {
        let deployment: Value = serde_json::from_str(&kubectl_ok(&[
            "get",
            "deployment",
            "flip-dps-operator",
            "-n",
            namespace,
            "-o",
            "json",
        ]))
        .unwrap();
        deployment["spec"]["strategy"].clone()
    };
    assert_eq!(strategy()["type"], "RollingUpdate");
    for (replicas, expected) in [("1", "Recreate"), ("2", "RollingUpdate"), ("1", "Recreate")] {
        let set = format!("replicaCount={replicas}");
        let upgraded =
            helm(&["upgrade", release, &chart(), "-n", namespace, "--reuse-values", "--set", &set]);
        assert!(upgraded.success, "helm upgrade to {replicas}: {}{}", upgraded.stdout, upgraded.stderr);
        let strategy = strategy();
        assert_eq!(strategy["type"], expected, "{strategy}");
        assert_eq!(strategy.get("rollingUpdate").is_some(), expected == "RollingUpdate", "{strategy}");
    }
    assert!(!release_objects(release, namespace).is_empty());
    let uninstalled = helm(&["uninstall", release, "-n", namespace]);
    assert!(uninstalled.success, "{}", uninstalled.stderr);
    assert_eq!(release_objects(release, namespace), "", "left behind by the uninstall");
}

/// `metrics.serviceMonitor.enabled` in a cluster without the Prometheus Operator: the install
/// works and says plainly that no ServiceMonitor was made. Its NOTES' commands also work when
/// pasted into bash: the heredoc ends.
#[test]
fn an_install_without_the_servicemonitor_api_says_so_and_its_notes_paste_into_bash() {
    let (release, namespace) = ("monitored", "dps-monitored");
    let installed = install(
        release,
        namespace,
        &["metrics.serviceMonitor.enabled=true", "watchNamespaces={dps-monitored}"],
    );
    assert!(
        installed.stdout.contains("this cluster has no ServiceMonitor API")
            && installed.stdout.contains("no ServiceMonitor was created"),
        "{}",
        installed.stdout
    );
    assert!(
        !kubectl_ok(&["api-resources", "--api-group=monitoring.coreos.com", "-o", "name"])
            .contains("servicemonitors")
    );

    let notes = &installed.stdout[installed.stdout.find("NOTES:").expect("helm prints the notes")..];
    let heredoc: String = {
        let lines: Vec<&str> = notes.lines().collect();
        let start = lines.iter().position(|l| l.contains("kubectl apply -f - <<")).expect("a heredoc");
        let end = start + lines[start..].iter().position(|l| *l == "YAML").expect("its end, unindented");
        lines[start..=end].join("\n")
    };
    let output = Command::new("bash")
        .args(["-c", &format!("kubectl() {{ cat; }}\n{heredoc}\necho pasted")])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stderr.is_empty(), "{stderr}");
    assert!(
        stdout.contains("kind: ProvisioningService") && stdout.trim_end().ends_with("pasted"),
        "{stdout}"
    );
    let uninstalled = helm(&["uninstall", release, "-n", namespace]);
    assert!(uninstalled.success, "{}", uninstalled.stderr);
}

/// The README's commands as bash reads them when pasted: the workload identity install sets the
/// annotation whose key has dots, and the CRD upgrade command applies.
#[test]
fn the_readme_s_install_commands_work_when_pasted_into_bash() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .map(|rest| rest.split("```").next().unwrap())
        .find(|block| block.contains("workloadIdentity.enabled=true"))
        .expect("the README shows the workload identity install");
    // bash splits the words; a stand-in `helm` prints them, one per line.
    let output = Command::new("bash")
        .args(["-c", &format!("helm() {{ printf '%s\\n' \"$@\"; }}\n{block}")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let words: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(words[..3], ["install", "dps-operator", "charts/dps-operator"], "{words:?}");
    let mut args = vec!["template".to_owned(), "dps-operator".to_owned(), chart()];
    args.extend(words[3..].iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rendered = helm(&args);
    assert!(rendered.success, "{}", rendered.stderr);
    let documents: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&rendered.stdout)
        .filter_map(|document| serde::Deserialize::deserialize(document).ok())
        .collect();
    let account = find(&documents, "ServiceAccount")[0];
    assert_eq!(
        account["metadata"]["annotations"]["azure.workload.identity/client-id"], "<client-id>",
        "{account}"
    );

    let upgrade = readme
        .lines()
        .flat_map(|line| line.split('`'))
        .find(|part| {
            part.starts_with("kubectl apply --server-side --force-conflicts -f charts/dps-operator/crds/")
        })
        .expect("the README says how to upgrade the CRDs");
    let words: Vec<&str> = upgrade.split_whitespace().skip(1).collect();
    let mut command = control_plane().kubectl();
    command.args(&words).current_dir(env!("CARGO_MANIFEST_DIR"));
    let applied = support::run(&mut command, None);
    assert!(applied.success, "{upgrade}: {}", applied.stderr);
}
