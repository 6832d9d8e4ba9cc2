//! The operator as users run it: the image built from the repo's Dockerfile, installed with the
//! chart by `helm install` (image overrides only) into a namespace enforcing Pod Security
//! `restricted`, on a real single-node cluster (kubelet, containerd, kube-controller-manager,
//! kube-scheduler, kube-proxy, CoreDNS). The operator runs with the chart's ServiceAccount and
//! reaches the API server through the `kubernetes` Service, and the DPS emulator on the node's
//! bridge address; then also the emulator installed in the cluster with its own chart.

use std::{
    net::IpAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use dps_emulator::{EmulatorConfig, RunningEmulator};
use dps_operator::{
    devenv::{Cluster, Tools, example_inputs, run},
    dps::{
        Client,
        auth::ConnectionString,
        models::{EnrollmentGroup, IndividualEnrollment},
    },
};
use support::node::{image_name, images_dir};

mod support;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let cluster = Tools::locate_node().and_then(Cluster::start).unwrap_or_else(|e| {
            panic!("the single-node cluster could not start: {:#}", anyhow::Error::from(e))
        });
        stop_at_exit();
        for image in ["pause", "dps-operator", "dps-emulator"] {
            cluster
                .import_image(&images_dir().join(format!("{image}.tar")))
                .unwrap_or_else(|e| panic!("importing {image}: {:#}", anyhow::Error::from(e)));
        }
        cluster
    })
}

fn stop_at_exit() {
    extern "C" fn stop() {
        if let Some(cluster) = CLUSTER.get() {
            cluster.stop();
        }
    }
    support::at_exit(stop);
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    run(cluster().control_plane().kubectl().args(args), stdin)
        .unwrap_or_else(|e| panic!("kubectl {}: {:#}", args.join(" "), anyhow::Error::from(e)))
}

fn helm(args: &[&str]) -> String {
    run(cluster().control_plane().helm().args(args), None)
        .unwrap_or_else(|e| panic!("helm {}: {:#}", args.join(" "), anyhow::Error::from(e)))
}

fn jsonpath(resource: &str, namespace: &str, path: &str) -> String {
    kubectl(&["get", resource, "-n", namespace, "-o", &format!("jsonpath={path}")], None)
}

/// Where the chart is installed: the namespace the README uses, where `example_inputs` puts the
/// cluster-wide connection's Secret.
use dps_operator::devenv::OPERATOR_NAMESPACE;
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dps-operator");
const EMULATOR_CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dps-emulator");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
/// The examples that use the namespaced connection `contoso-dps` (the cluster-wide one and its
/// group are applied on their own; only the workload-identity connection is left out: it needs
/// Azure's workload identity webhook).
const EXAMPLE_FILES: [&str; 7] = [
    "provisioningservice.yaml",
    "individualenrollment-symmetric-key.yaml",
    "individualenrollment-x509.yaml",
    "individualenrollment-tpm.yaml",
    "enrollmentgroup-symmetric-key.yaml",
    "enrollmentgroup-x509-signing-certificate.yaml",
    "enrollmentgroup-custom-allocation.yaml",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_the_operator_image_on_a_real_node() {
    let cluster = tokio::task::block_in_place(cluster);
    let emulator = RunningEmulator::start(EmulatorConfig {
        listen: (cluster.node_address(), 0).into(),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts on the node's address");
    let namespace = tokio::task::block_in_place(|| install_and_apply_examples(&emulator));
    let dps = support::dps::client(&emulator);
    let ns = namespace.as_str();

    // Garbage collection (kube-controller-manager): the key Secret the operator generated goes
    // with its enrollment, and the enrollment leaves DPS (the connection's deletionPolicy).
    let owner = jsonpath("secret/boiler-0042-keys", ns, "{.metadata.ownerReferences[0].name}");
    assert_eq!(owner, "boiler-0042", "the generated key Secret is owned by its enrollment");
    assert!(individual_in_dps(&dps, "boiler:0042").await);
    block(|| kubectl(&["delete", "individualenrollment", "boiler-0042", "-n", ns, "--timeout=60s"], None));
    block(|| kubectl(&["wait", "--for=delete", "secret/boiler-0042-keys", "-n", ns, "--timeout=60s"], None));
    assert!(!individual_in_dps(&dps, "boiler:0042").await, "the enrollment is deleted from DPS");

    // `Orphan` keeps both: the enrollment in DPS and its key Secret, released by the operator.
    let orphan = r#"{"spec":{"deletionPolicy":"Orphan"}}"#;
    block(|| {
        kubectl(&["patch", "enrollmentgroup", "thermostats", "-n", ns, "--type=merge", "-p", orphan], None)
    });
    block(|| kubectl(&["delete", "enrollmentgroup", "thermostats", "-n", ns, "--timeout=60s"], None));
    let owners = block(|| jsonpath("secret/thermostats-group-key", ns, "{.metadata.ownerReferences}"));
    assert_eq!(owners, "", "the orphaned group's key Secret is released and kept");
    assert!(group_in_dps(&dps, "thermostats-2026").await, "the orphaned group stays in DPS");

    // helm upgrade changing a value rolls the Pod, which re-confirms everything without a write.
    emulator.reset_calls();
    let before = block(|| jsonpath("pods", OPERATOR_NAMESPACE, "{.items[*].metadata.name}"));
    block(|| helm_upgrade("logging.level=debug"));
    let after = block(|| jsonpath("pods", OPERATOR_NAMESPACE, "{.items[*].metadata.name}"));
    assert_ne!(before, after, "the upgrade rolled the operator Pod");
    block(|| wait_enrollments_ready(ns));
    // The new Pod reads DPS to re-confirm the enrollments; it makes no PUT, DELETE or bulk call.
    eventually_async("the new operator Pod re-confirms the enrollments", || {
        let calls = emulator.calls();
        async move { calls.keys().any(|op| op.ends_with("_Get") || op.ends_with("_Query")) }
    })
    .await;
    let writes: u64 =
        ["IndividualEnrollment", "EnrollmentGroup"].iter().map(|kind| emulator.writes(kind)).sum();
    assert_eq!(
        (writes, dps_deletes(&emulator)),
        (0, 0),
        "the rolled Pod wrote to DPS: {:?}",
        emulator.calls()
    );

    // Two replicas: deleting the leader hands the lease to the other, which then writes.
    block(|| helm_upgrade("replicaCount=2"));
    let lease = "lease/dps-operator";
    let leader = block(|| wait_for_holder(lease, None));
    let pod = leader.clone(); // the holder identity is the Pod's name
    let deleted = Instant::now();
    block(|| kubectl(&["delete", "pod", &pod, "-n", OPERATOR_NAMESPACE, "--wait=false"], None));
    block(|| {
        kubectl(
            &["apply", "-n", ns, "-f", &format!("{EXAMPLES}/individualenrollment-symmetric-key.yaml")],
            None,
        )
    });
    let new_leader = block(|| wait_for_holder(lease, Some(&leader)));
    let handed_over = deleted.elapsed();
    block(|| wait_enrollments_ready(ns));
    let written = deleted.elapsed();
    assert!(individual_in_dps(&dps, "boiler:0042").await, "the new leader created the enrollment in DPS");
    assert_ne!(new_leader, pod);
    eprintln!(
        "leader handover: lease taken {handed_over:?} after the leader Pod was deleted; the new enrollment was Ready {written:?} after"
    );

    the_emulator_chart_serves_the_operator_in_the_cluster().await;

    // helm uninstall leaves DPS and the CRDs alone.
    emulator.reset_calls();
    block(|| {
        helm(&["uninstall", "dps-operator", "--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout=5m"])
    });
    let crds = block(|| kubectl(&["get", "crds", "-o", "name"], None));
    let chart_crds = std::fs::read_dir(format!("{CHART}/crds")).unwrap().count();
    assert_eq!(crds.lines().filter(|crd| crd.ends_with(".dps.iot.dev")).count(), chart_crds, "{crds}");
    assert!(individual_in_dps(&dps, "boiler:0042").await && group_in_dps(&dps, "thermostats-2026").await);
    assert_eq!(dps_deletes(&emulator), 0, "uninstalling deleted from DPS: {:?}", emulator.calls());
    let resources = block(|| kubectl(&["get", "individualenrollments", "-n", ns, "-o", "name"], None));
    assert!(resources.contains("boiler-0042"), "the resources stay: {resources}");
}

/// The emulator installed with its chart as a user would (image overrides and the namespace for
/// its connection), under Pod Security `restricted`: the operator Pod reaches it by its Service's
/// DNS name (cluster DNS, the Service, then its Pod), trusting the CA from the connection Secret.
async fn the_emulator_chart_serves_the_operator_in_the_cluster() {
    let (namespace, lab) = ("dps-emulator", "lab");
    let image = image_name("EMULATOR_IMAGE");
    let (repository, tag) = image.rsplit_once(':').expect("the image has a tag");
    let started = Instant::now();
    block(|| {
        kubectl(&["create", "namespace", namespace], None);
        kubectl(&["label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"], None);
        kubectl(&["create", "namespace", lab], None);
        let installed = run(
            cluster().control_plane().helm().args([
                "install",
                "dps-emulator",
                EMULATOR_CHART,
                "--namespace",
                namespace,
                "--set",
                &format!("image.repository={repository}"),
                "--set",
                &format!("image.tag={tag}"),
                "--set",
                &format!("connection.namespaces={{{lab}}}"),
                "--wait",
                "--timeout=3m",
            ]),
            None,
        );
        if let Err(error) = installed {
            let pods = kubectl_result(&["describe", "pods", "-n", namespace]);
            panic!("helm install of the emulator failed: {:#}\n{pods:?}", anyhow::Error::from(error));
        }
    });
    eprintln!("helm install --wait of the emulator took {:?}", started.elapsed());
    let device = r#"
apiVersion: dps.iot.dev/v1alpha1
kind: IndividualEnrollment
metadata: {name: lab-device-01}
spec:
  serviceRef: {name: dps-emulator}
  registrationId: lab-device-01
  attestation:
    symmetricKey:
      secretRef: {name: lab-device-01-keys}
"#;
    block(|| kubectl(&["apply", "-n", lab, "-f", "-"], Some(device)));
    if let Err(error) = block(|| wait_ready(Some(lab), "provisioningservices,individualenrollments")) {
        let resources = kubectl_result(&["get", "dps", "-n", lab, "-o", "yaml"]);
        panic!("the enrollment on the in-cluster emulator is not Ready: {error}\n{resources:?}");
    }

    // It is in that emulator: read with the connection Secret, at the emulator Pod's address.
    let secret = |key: &str| {
        let path = format!("{{.data.{}}}", key.replace('.', "\\."));
        let data = block(|| jsonpath("secret/dps-emulator-connection", lab, &path));
        String::from_utf8(BASE64.decode(data).expect("base64")).expect("text")
    };
    let connection_string = secret("connectionString");
    let connection: ConnectionString = connection_string.parse().expect("a connection string");
    assert_eq!(connection.host_name, "dps-emulator.dps-emulator.svc");
    let pod_ip: IpAddr = block(|| jsonpath("pods", namespace, "{.items[0].status.podIP}")).parse().unwrap();
    let client = support::dps::client_at(&connection_string, secret("ca.crt"), (pod_ip, 8443).into());
    assert!(
        individual_in_dps(&client, "lab-device-01").await,
        "the enrollment is in the in-cluster emulator"
    );
}

async fn individual_in_dps(dps: &Client, id: &str) -> bool {
    match dps.get::<IndividualEnrollment>(id).await {
        Ok(_) => true,
        Err(dps_operator::dps::Error::NotFound { .. }) => false,
        Err(e) => panic!("reading {id} from DPS: {e}"),
    }
}

async fn group_in_dps(dps: &Client, id: &str) -> bool {
    match dps.get::<EnrollmentGroup>(id).await {
        Ok(_) => true,
        Err(dps_operator::dps::Error::NotFound { .. }) => false,
        Err(e) => panic!("reading {id} from DPS: {e}"),
    }
}

/// DELETE calls on enrollments (single or bulk deletes count as writes) since the last reset.
fn dps_deletes(emulator: &RunningEmulator) -> u64 {
    emulator.calls().iter().filter(|(op, _)| op.ends_with("_Delete")).map(|(_, n)| n).sum()
}

fn helm_upgrade(set: &str) -> String {
    helm(&[
        "upgrade",
        "dps-operator",
        CHART,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--reuse-values",
        "--set",
        set,
        "--wait",
        "--timeout=5m",
    ])
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Waits until every resource of `kinds` (in `namespace`, or cluster-wide) is Ready.
fn wait_ready(namespace: Option<&str>, kinds: &str) -> Result<String, String> {
    let mut args = vec!["wait", "--for=condition=Ready", "--all", "--timeout=180s", kinds];
    if let Some(namespace) = namespace {
        args.extend(["-n", namespace]);
    }
    kubectl_result(&args)
}

fn wait_enrollments_ready(namespace: &str) {
    if let Err(error) = wait_ready(Some(namespace), "individualenrollments,enrollmentgroups") {
        panic!("{error}");
    }
}

/// The lease's holder once it is held, and by someone other than `not` when given.
fn wait_for_holder(lease: &str, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let holder = kubectl_result(&[
            "get",
            lease,
            "-n",
            OPERATOR_NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_default();
        if !holder.is_empty() && Some(holder.as_str()) != not {
            return holder;
        }
        assert!(Instant::now() < deadline, "{lease} was not taken over (holder {holder:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn eventually_async<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs the chart as a user would and applies the examples; returns their namespace.
fn install_and_apply_examples(emulator: &RunningEmulator) -> String {
    let operator_namespace = OPERATOR_NAMESPACE;
    kubectl(&["create", "namespace", operator_namespace], None);
    kubectl(
        &["wait", "--for=create", "serviceaccount/default", "-n", operator_namespace, "--timeout=60s"],
        None,
    );
    kubectl(
        &["label", "namespace", operator_namespace, "pod-security.kubernetes.io/enforce=restricted"],
        None,
    );
    let image = image_name("OPERATOR_IMAGE");
    let (repository, tag) = image.rsplit_once(':').expect("the image has a tag");
    let started = Instant::now();
    let install = run(
        cluster().control_plane().helm().args([
            "install",
            "dps-operator",
            CHART,
            "--namespace",
            operator_namespace,
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={tag}"),
            "--wait",
            "--timeout=3m",
        ]),
        None,
    );
    if let Err(error) = install {
        panic!("helm install failed: {:#}\n{}", anyhow::Error::from(error), diagnose(operator_namespace));
    }
    eprintln!("helm install --wait took {:?}", started.elapsed());
    let ready = jsonpath("deployment/dps-operator", operator_namespace, "{.status.readyReplicas}");
    assert_eq!(ready, "1", "the operator Pod is Ready through its probes");

    let namespace = "factory";
    kubectl(&["create", "namespace", namespace], None);
    kubectl(&["wait", "--for=create", "serviceaccount/default", "-n", namespace, "--timeout=60s"], None);
    kubectl(&["apply", "-f", "-"], Some(&example_inputs(emulator, namespace).unwrap()));
    for file in EXAMPLE_FILES {
        kubectl(&["apply", "-n", namespace, "-f", &format!("{EXAMPLES}/{file}")], None);
    }
    // The cluster-wide connection admits namespaces by label and reads its references from the
    // operator's namespace.
    kubectl(&["label", "namespace", namespace, "iot.contoso.com/dps-access=factory"], None);
    let ca = emulator.ca_certificate().expect("the emulator serves HTTPS");
    kubectl(
        &[
            "create",
            "configmap",
            "corporate-proxy-ca",
            "-n",
            operator_namespace,
            &format!("--from-literal=ca.crt={ca}"),
        ],
        None,
    );
    kubectl(&["apply", "-f", &format!("{EXAMPLES}/clusterprovisioningservice.yaml")], None);
    kubectl(
        &["apply", "-n", namespace, "-f", &format!("{EXAMPLES}/enrollmentgroup-x509-ca-reference.yaml")],
        None,
    );
    // The emulator's CA, as a user trusts a TLS-inspecting proxy.
    let trust = r#"{"spec":{"caBundle":{"configMapRef":{"name":"corporate-proxy-ca","key":"ca.crt"}}}}"#;
    kubectl(
        &["patch", "provisioningservice", "contoso-dps", "-n", namespace, "--type=merge", "-p", trust],
        None,
    );
    kubectl(
        &["patch", "clusterprovisioningservice", "contoso-factory-dps", "--type=merge", "-p", trust],
        None,
    );
    let wait = wait_ready(Some(namespace), "provisioningservices,individualenrollments,enrollmentgroups")
        .and_then(|_| wait_ready(None, "clusterprovisioningservices"));
    if let Err(error) = wait {
        let resources = kubectl_result(&["get", "dps", "-A", "-o", "wide"]);
        panic!("the examples did not become Ready: {error}\n{resources:?}\n{}", diagnose(operator_namespace));
    }
    namespace.to_owned()
}

/// The operator Pods' description and log, for a failure message.
fn diagnose(namespace: &str) -> String {
    let describe = kubectl_result(&["describe", "pods", "-n", namespace]);
    let logs =
        kubectl_result(&["logs", "-n", namespace, "-l", "app.kubernetes.io/name=dps-operator", "--tail=40"]);
    let events = kubectl_result(&["get", "events", "-n", namespace]);
    format!(
        "Pods:\n{}\nLog:\n{}\nEvents:\n{}",
        describe.unwrap_or_else(|e| e),
        logs.unwrap_or_else(|e| e),
        events.unwrap_or_else(|e| e)
    )
}

fn kubectl_result(args: &[&str]) -> Result<String, String> {
    run(cluster().control_plane().kubectl().args(args), None)
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}
