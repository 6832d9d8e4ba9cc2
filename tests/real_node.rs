//! The operator as users run it: the image built from the repo's Dockerfile, installed with the
//! chart by `helm install` (image overrides only) into a namespace enforcing Pod Security
//! `restricted`, on a real single-node cluster (kubelet, containerd, kube-controller-manager,
//! kube-scheduler, kube-proxy, CoreDNS). The operator runs with the chart's ServiceAccount and
//! reaches the API server through the `kubernetes` Service, and the DPS emulator on the node's
//! bridge address; then also the emulator installed in the cluster with its own chart.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use dps_emulator::{EmulatorConfig, RunningEmulator};
use dps_operator::{
    devenv::run,
    dps::{Client, auth::ConnectionString},
};
use support::node::{
    apply_examples, block, cluster, dps_deletes, eventually_async, group_in_dps, helm, image_name,
    individual_in_dps, install_chart, jsonpath, kubectl, kubectl_result, wait_enrollments_ready, wait_ready,
};

mod support;

/// Where the chart is installed: the namespace the README uses, where `example_inputs` puts the
/// cluster-wide connection's Secret.
use dps_operator::devenv::OPERATOR_NAMESPACE;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dps-operator");
const EMULATOR_CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dps-emulator");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_the_operator_image_on_a_real_node() {
    let cluster = tokio::task::block_in_place(cluster);
    let emulator = RunningEmulator::start(EmulatorConfig {
        listen: (cluster.node_address(), 0).into(),
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts on the node's address");
    let image = image_name("OPERATOR_IMAGE");
    assert_eq!(
        image.rsplit_once(':').unwrap().1,
        env!("CARGO_PKG_VERSION"),
        "the image carries the release's version"
    );
    let namespace = block(|| {
        install_chart(CHART, &image);
        apply_examples(&emulator, EXAMPLES)
    });
    let dps = support::dps::client(&emulator);
    let ns = namespace.as_str();
    garbage_collection_and_orphan(&dps, ns).await;
    a_helm_upgrade_rolls_the_pod_without_a_write(&emulator, ns).await;
    deleting_the_leader_hands_over(&dps, ns).await;
    the_emulator_chart_serves_the_operator_in_the_cluster().await;
    uninstall_leaves_dps_and_the_crds(&emulator, &dps, ns).await;
}

/// Garbage collection (kube-controller-manager): the key Secret the operator generated goes with
/// its enrollment, and the enrollment leaves DPS (the connection's deletionPolicy); `Orphan` keeps
/// both: the enrollment in DPS and its key Secret, released by the operator.
async fn garbage_collection_and_orphan(dps: &Client, ns: &str) {
    let owner = jsonpath("secret/boiler-0042-keys", ns, "{.metadata.ownerReferences[0].name}");
    assert_eq!(owner, "boiler-0042", "the generated key Secret is owned by its enrollment");
    assert!(individual_in_dps(dps, "boiler:0042").await);
    block(|| kubectl(&["delete", "individualenrollment", "boiler-0042", "-n", ns, "--timeout=60s"], None));
    block(|| kubectl(&["wait", "--for=delete", "secret/boiler-0042-keys", "-n", ns, "--timeout=60s"], None));
    assert!(!individual_in_dps(dps, "boiler:0042").await, "the enrollment is deleted from DPS");

    let orphan = r#"{"spec":{"deletionPolicy":"Orphan"}}"#;
    block(|| {
        kubectl(&["patch", "enrollmentgroup", "thermostats", "-n", ns, "--type=merge", "-p", orphan], None)
    });
    block(|| kubectl(&["delete", "enrollmentgroup", "thermostats", "-n", ns, "--timeout=60s"], None));
    let owners = block(|| jsonpath("secret/thermostats-group-key", ns, "{.metadata.ownerReferences}"));
    assert_eq!(owners, "", "the orphaned group's key Secret is released and kept");
    assert!(group_in_dps(dps, "thermostats-2026").await, "the orphaned group stays in DPS");
}

/// helm upgrade changing a value rolls the Pod, which re-confirms everything without a write.
async fn a_helm_upgrade_rolls_the_pod_without_a_write(emulator: &RunningEmulator, ns: &str) {
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
        (writes, dps_deletes(emulator)),
        (0, 0),
        "the rolled Pod wrote to DPS: {:?}",
        emulator.calls()
    );
}

/// Two replicas: deleting the leader hands the lease to the other, which then writes.
async fn deleting_the_leader_hands_over(dps: &Client, ns: &str) {
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
    assert!(individual_in_dps(dps, "boiler:0042").await, "the new leader created the enrollment in DPS");
    assert_ne!(new_leader, pod);
    eprintln!(
        "leader handover: lease taken {handed_over:?} after the leader Pod was deleted; the new enrollment was Ready {written:?} after"
    );
}

/// helm uninstall leaves DPS and the CRDs alone.
async fn uninstall_leaves_dps_and_the_crds(emulator: &RunningEmulator, dps: &Client, ns: &str) {
    emulator.reset_calls();
    block(|| {
        helm(&["uninstall", "dps-operator", "--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout=5m"])
    });
    let crds = block(|| kubectl(&["get", "crds", "-o", "name"], None));
    let chart_crds = std::fs::read_dir(format!("{CHART}/crds")).unwrap().count();
    assert_eq!(crds.lines().filter(|crd| crd.ends_with(".dps.iot.dev")).count(), chart_crds, "{crds}");
    assert!(individual_in_dps(dps, "boiler:0042").await && group_in_dps(dps, "thermostats-2026").await);
    assert_eq!(dps_deletes(emulator), 0, "uninstalling deleted from DPS: {:?}", emulator.calls());
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
apiVersion: dps.iot.dev/v1beta1
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
