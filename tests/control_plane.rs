//! The test control plane behaves like a real cluster (RBAC, service account tokens, Pod Security
//! admission) and never outlives its owner.

mod support;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{kubectl, kubectl_ok, namespace};

#[test]
fn service_account_tokens_authenticate_and_rbac_limits_them() {
    let namespace = namespace("rbac");
    kubectl_ok(&["create", "serviceaccount", "reader", "-n", &namespace]);
    let token = kubectl_ok(&["create", "token", "reader", "-n", &namespace, "--duration=10m"]);
    let kubeconfig = support::control_plane().token_kubeconfig("reader", &token).expect("kubeconfig written");
    let as_reader = |args: &[&str]| {
        let mut command = support::control_plane().kubectl();
        command.env("KUBECONFIG", &kubeconfig).args(args);
        support::run(&mut command, None)
    };

    let whoami = as_reader(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(whoami.stdout, format!("system:serviceaccount:{namespace}:reader"), "{}", whoami.stderr);

    let denied = as_reader(&["get", "secrets", "-n", &namespace]);
    assert!(!denied.success, "a service account without a role could list Secrets");
    assert!(denied.stderr.contains("Forbidden"), "{}", denied.stderr);

    kubectl_ok(&["create", "role", "secret-reader", "--verb=list", "--resource=secrets", "-n", &namespace]);
    let subject = format!("--serviceaccount={namespace}:reader");
    kubectl_ok(&["create", "rolebinding", "reader", "--role=secret-reader", &subject, "-n", &namespace]);
    let allowed = as_reader(&["get", "secrets", "-n", &namespace]);
    assert!(allowed.success, "the role did not take effect: {}", allowed.stderr);
    let elsewhere = as_reader(&["get", "secrets", "-n", "default"]);
    assert!(!elsewhere.success, "a namespaced role granted Secrets in another namespace");
}

#[test]
fn pod_security_restricted_is_enforced() {
    let namespace = namespace("restricted");
    kubectl_ok(&["label", "namespace", &namespace, "pod-security.kubernetes.io/enforce=restricted"]);
    // No controller manager runs, so create the ServiceAccount that admission looks up.
    kubectl_ok(&["create", "serviceaccount", "default", "-n", &namespace]);

    let privileged = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"privileged"},
        "spec":{"containers":[{"name":"c","image":"example.invalid/app","securityContext":{"privileged":true}}]}}"#;
    let refused = kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(privileged));
    assert!(!refused.success, "a privileged pod was admitted into a restricted namespace");
    assert!(refused.stderr.contains("violates PodSecurity \"restricted"), "{}", refused.stderr);

    let restricted = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"restricted"},
        "spec":{"securityContext":{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}},
        "containers":[{"name":"c","image":"example.invalid/app","securityContext":{
        "allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}"#;
    let admitted = kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(restricted));
    assert!(admitted.success, "a compliant pod was refused: {}", admitted.stderr);
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `dps-operator local` and returns it with the control plane's working directory.
fn start_local_run() -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dps-operator"))
        .args(["local", "--namespace", "default", "--examples"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .env(support::Tools::DIR_ENV, support::control_plane().tools().dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("dps-operator local starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut dir = None;
    let mut resources = Vec::new();
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let line = line.expect("output of dps-operator local");
        lines.push(line.clone());
        if line.contains(".dps.iot.dev/") {
            resources.push(line.clone());
        }
        if let Some(path) = line.trim().strip_prefix("export KUBECONFIG=") {
            dir = Some(Path::new(path).parent().unwrap().display().to_string());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    // Every example, of every kind, is shown Ready.
    assert_eq!(resources.len(), example_resources(), "{resources:#?}");
    assert!(
        resources.iter().all(|line| line.split_whitespace().any(|column| column == "True")),
        "{resources:#?}"
    );
    // A sample device provisioned with the key the operator derived, and the group counts it.
    let sample = lines.iter().find(|l| l.contains("A sample device, thermostat-0001, provisioned"));
    let sample = sample.unwrap_or_else(|| panic!("no sample device: {lines:#?}"));
    assert!(
        sample.contains("assigned it to contoso-") && sample.contains("as device thermostat-0001"),
        "{sample}"
    );
    // What a user needs to use it from elsewhere: its kubectl, the emulator's CA and credentials.
    let after = |label: &str| {
        let at =
            lines.iter().position(|l| l.contains(label)).unwrap_or_else(|| panic!("{label}: {lines:#?}"));
        lines[at]
            .split_once(label)
            .map(|(_, rest)| rest.trim().to_owned())
            .filter(|rest| !rest.is_empty())
            .unwrap_or_else(|| lines[at + 1].trim().to_owned())
    };
    let kubectl = after("The kubectl of this run (the machine's own may be older than this API server):");
    assert!(Path::new(&kubectl).is_file(), "{kubectl}");
    let ca = std::fs::read_to_string(after("CA certificate:")).expect("the emulator's CA file");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let connection = after("connection string:");
    assert!(
        connection.starts_with("HostName=contoso.azure-devices-provisioning.net;SharedAccessKeyName="),
        "{connection}"
    );
    let dir = dir.expect("dps-operator local printed its kubeconfig");
    assert_eq!(processes_mentioning(&dir).len(), 3, "etcd, kube-apiserver and kube-controller-manager run");
    // As in a cluster, a deleted namespace goes away (kube-controller-manager empties it).
    let kubectl_local = |args: &[&str]| {
        let output = Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", format!("{dir}/kubeconfig"))
            .output()
            .unwrap();
        assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    kubectl_local(&["create", "namespace", "short-lived"]);
    kubectl_local(&["create", "configmap", "inside", "-n", "short-lived"]);
    kubectl_local(&["delete", "namespace", "short-lived", "--timeout=60s"]);
    (child, dir)
}

#[test]
fn a_local_run_stops_everything_on_sigint_and_when_killed() {
    let (child, dir) = start_local_run();
    assert!(send_signal(child.id(), "INT"));
    eventually("the control plane stops after SIGINT", || processes_mentioning(&dir).is_empty());
    eventually("the working directory is removed", || !Path::new(&dir).exists());

    let (child, dir) = start_local_run();
    assert!(send_signal(child.id(), "KILL"));
    eventually("the control plane dies with a killed owner", || processes_mentioning(&dir).is_empty());
}

#[test]
fn dropping_a_control_plane_stops_it_even_when_a_test_panics() {
    let tools = support::control_plane().tools().clone();
    let dir = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let control_plane = support::ControlPlane::start(tools).expect("a second control plane starts");
        *dir.lock().unwrap() = control_plane.kubeconfig().parent().unwrap().display().to_string();
        assert_eq!(processes_mentioning(&dir.lock().unwrap()).len(), 2);
        panic!("a failing test");
    });
    assert!(result.is_err());
    let dir = dir.into_inner().unwrap();
    assert!(processes_mentioning(&dir).is_empty(), "the control plane outlived the panic");
    assert!(!Path::new(&dir).exists(), "its working directory is left behind");
}

/// Sends a signal with the `kill` command.
fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().is_ok_and(|s| s.success())
}

/// How many of our resources the examples directory declares (one per `apiVersion: dps.iot.dev`).
fn example_resources() -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let files = std::fs::read_dir(&dir).expect("examples directory");
    let texts = files.map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap());
    texts.map(|text| text.lines().filter(|l| l.starts_with("apiVersion: dps.iot.dev/")).count()).sum()
}
