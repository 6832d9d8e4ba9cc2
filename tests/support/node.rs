//! Helpers for tests on a real node: the images `scripts/build-images` makes, the cluster of the
//! test binary, and installing the chart and the examples as a user would.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use dps_emulator::RunningEmulator;
use dps_operator::{
    devenv::{Cluster, OPERATOR_NAMESPACE, Tools, example_inputs, run},
    dps::{
        Client,
        models::{EnrollmentGroup, IndividualEnrollment},
    },
};

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

/// The images from `scripts/build-images` (`$DPS_IMAGES_DIR` when set, else built now).
pub fn images_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_images).clone()
}

fn build_images() -> PathBuf {
    if let Some(dir) = std::env::var_os("DPS_IMAGES_DIR") {
        return dir.into();
    }
    let tools = Tools::locate_node().expect("the test tools");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/build-images"))
        .arg(tools.dir())
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("scripts/build-images runs");
    assert!(output.status.success(), "scripts/build-images failed: see its output above");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

pub fn image_name(key: &str) -> String {
    env_value("images.env", key)
}

/// What `scripts/build-images` says of the previous release (`previous-release.env`): its
/// `PREVIOUS_VERSION`, `PREVIOUS_OPERATOR_IMAGE`, `PREVIOUS_OPERATOR_ARCHIVE`, `PREVIOUS_SOURCES`.
pub fn previous_release(key: &str) -> String {
    env_value("previous-release.env", key)
}

fn env_value(file: &str, key: &str) -> String {
    let env = std::fs::read_to_string(images_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    env.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} is not in {file}"))
        .to_owned()
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub fn cluster() -> &'static Cluster {
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
    super::at_exit(stop);
}

pub fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    run(cluster().control_plane().kubectl().args(args), stdin)
        .unwrap_or_else(|e| panic!("kubectl {}: {:#}", args.join(" "), anyhow::Error::from(e)))
}

pub fn helm(args: &[&str]) -> String {
    run(cluster().control_plane().helm().args(args), None)
        .unwrap_or_else(|e| panic!("helm {}: {:#}", args.join(" "), anyhow::Error::from(e)))
}

pub fn jsonpath(resource: &str, namespace: &str, path: &str) -> String {
    kubectl(&["get", resource, "-n", namespace, "-o", &format!("jsonpath={path}")], None)
}

pub async fn individual_in_dps(dps: &Client, id: &str) -> bool {
    match dps.get::<IndividualEnrollment>(id).await {
        Ok(_) => true,
        Err(dps_operator::dps::Error::NotFound { .. }) => false,
        Err(e) => panic!("reading {id} from DPS: {e}"),
    }
}

pub async fn group_in_dps(dps: &Client, id: &str) -> bool {
    match dps.get::<EnrollmentGroup>(id).await {
        Ok(_) => true,
        Err(dps_operator::dps::Error::NotFound { .. }) => false,
        Err(e) => panic!("reading {id} from DPS: {e}"),
    }
}

/// DELETE calls on enrollments (single or bulk deletes count as writes) since the last reset.
pub fn dps_deletes(emulator: &RunningEmulator) -> u64 {
    emulator.calls().iter().filter(|(op, _)| op.ends_with("_Delete")).map(|(_, n)| n).sum()
}

pub fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Waits until every resource of `kinds` (in `namespace`, or cluster-wide) is Ready.
pub fn wait_ready(namespace: Option<&str>, kinds: &str) -> Result<String, String> {
    let mut args = vec!["wait", "--for=condition=Ready", "--all", "--timeout=180s", kinds];
    if let Some(namespace) = namespace {
        args.extend(["-n", namespace]);
    }
    kubectl_result(&args)
}

/// Waits until the enrollments in `namespace` are Ready; a failure shows each one's conditions and
/// the operator's Pods and log.
pub fn wait_enrollments_ready(namespace: &str) {
    let kinds = "individualenrollments,enrollmentgroups";
    if let Err(error) = wait_ready(Some(namespace), kinds) {
        let conditions = "{range .items[*]}{.kind}/{.metadata.name} (claim {.metadata.annotations.dps\\.iot\\.dev/claim}): {.status.conditions}{\"\\n\"}{end}";
        let statuses =
            kubectl_result(&["get", kinds, "-n", namespace, "-o", &format!("jsonpath={conditions}")]);
        panic!("{error}\nConditions:\n{}\n{}", statuses.unwrap_or_else(|e| e), diagnose(OPERATOR_NAMESPACE));
    }
}

pub async fn eventually_async<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator Pods' description and log, for a failure message.
pub fn diagnose(namespace: &str) -> String {
    let describe = kubectl_result(&["describe", "pods", "-n", namespace]);
    let logs = kubectl_result(&[
        "logs",
        "-n",
        namespace,
        "-l",
        "app.kubernetes.io/name=dps-operator",
        "--tail=1000",
        "--prefix",
    ]);
    // The chart may run at debug level: its HTTP client lines would hide what the operator did.
    let logs = logs.map(|logs| {
        let lines: Vec<&str> = logs.lines().filter(|line| !line.contains(r#""level":"DEBUG""#)).collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    });
    let events = kubectl_result(&["get", "events", "-n", namespace]);
    format!(
        "Pods:\n{}\nLog:\n{}\nEvents:\n{}",
        describe.unwrap_or_else(|e| e),
        logs.unwrap_or_else(|e| e),
        events.unwrap_or_else(|e| e)
    )
}

pub fn kubectl_result(args: &[&str]) -> Result<String, String> {
    run(cluster().control_plane().kubectl().args(args), None)
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

/// Installs `chart` with the operator `image` as a user would, into the operator's namespace
/// under Pod Security `restricted`, and waits until the operator Pod is Ready.
pub fn install_chart(chart: &str, image: &str) {
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
    let (repository, tag) = image.rsplit_once(':').expect("the image has a tag");
    let started = Instant::now();
    let install = run(
        cluster().control_plane().helm().args([
            "install",
            "dps-operator",
            chart,
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
}

/// Applies the examples in `examples` (all but the workload-identity connection, which needs
/// Azure's webhook) with the inputs they need, and waits until they are Ready; returns their
/// namespace.
pub fn apply_examples(emulator: &RunningEmulator, examples: &str) -> String {
    let operator_namespace = OPERATOR_NAMESPACE;
    let namespace = "factory";
    kubectl(&["create", "namespace", namespace], None);
    kubectl(&["wait", "--for=create", "serviceaccount/default", "-n", namespace, "--timeout=60s"], None);
    kubectl(&["apply", "-f", "-"], Some(&example_inputs(emulator, namespace).unwrap()));
    for file in EXAMPLE_FILES {
        kubectl(&["apply", "-n", namespace, "-f", &format!("{examples}/{file}")], None);
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
    kubectl(&["apply", "-f", &format!("{examples}/clusterprovisioningservice.yaml")], None);
    kubectl(
        &["apply", "-n", namespace, "-f", &format!("{examples}/enrollmentgroup-x509-ca-reference.yaml")],
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
