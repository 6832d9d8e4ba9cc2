//! The single-node cluster of the tests runs Pods as a cluster does, and stopping it leaves
//! nothing behind: no process, mount, network namespace, iptables chain, bridge or directory.

use std::{fs, path::Path, process::Command};

use dps_operator::devenv::{Cluster, Tools, run};
use support::node::images_dir;

mod support;

/// A Pod that Pod Security `restricted` admits.
const RESTRICTED_POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sandbox"},
 "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
  "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10", "imagePullPolicy": "Never",
   "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}]}}"#;

#[test]
fn a_node_runs_restricted_pods_and_leaves_nothing_behind_when_stopped() {
    let netns_before = netns();
    let kubelet_dirs = ["/var/lib/kubelet", "/var/log/containers"].map(|dir| Path::new(dir).exists());
    let cluster = Tools::locate_node()
        .and_then(Cluster::start)
        .unwrap_or_else(|e| panic!("the single-node cluster could not start: {:#}", anyhow::Error::from(e)));
    cluster.import_image(&images_dir().join("pause.tar")).expect("the pause image imports");
    let dir = cluster.control_plane().dir().to_owned();
    let kubectl =
        |args: &[&str], stdin: Option<&str>| run(cluster.control_plane().kubectl().args(args), stdin);

    kubectl(&["create", "namespace", "locked"], None).unwrap();
    kubectl(&["label", "namespace", "locked", "pod-security.kubernetes.io/enforce=restricted"], None)
        .unwrap();
    // kube-controller-manager gives the namespace its ServiceAccount.
    kubectl(&["wait", "--for=create", "serviceaccount/default", "-n", "locked", "--timeout=60s"], None)
        .unwrap();
    let refused = kubectl(
        &["run", "privileged", "-n", "locked", "--image=registry.k8s.io/pause:3.10", "--privileged"],
        None,
    );
    let refused = format!("{:#}", anyhow::Error::from(refused.expect_err("a privileged Pod is refused")));
    assert!(refused.contains("violates PodSecurity \"restricted"), "{refused}");
    kubectl(&["apply", "-n", "locked", "-f", "-"], Some(RESTRICTED_POD)).unwrap();
    kubectl(&["wait", "--for=condition=Ready", "pod/sandbox", "-n", "locked", "--timeout=120s"], None)
        .unwrap_or_else(|e| panic!("the Pod did not become Ready: {:#}", anyhow::Error::from(e)));
    let pod_ip =
        kubectl(&["get", "pod", "sandbox", "-n", "locked", "-o", "jsonpath={.status.podIP}"], None).unwrap();
    assert!(pod_ip.starts_with("10.89.0."), "the Pod is on the node's bridge: {pod_ip}");
    assert!(netns().len() > netns_before.len(), "the Pod has a network namespace of its own");

    cluster.stop();
    let mentioning: Vec<String> =
        processes().into_iter().filter(|cmdline| cmdline.contains(&*dir.to_string_lossy())).collect();
    assert!(mentioning.is_empty(), "processes left running: {mentioning:#?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*dir.to_string_lossy()), "mounts left under {}", dir.display());
    assert_eq!(netns(), netns_before, "network namespaces left");
    let rules = String::from_utf8(Command::new("iptables-save").output().unwrap().stdout).unwrap();
    assert!(!rules.contains("KUBE-") && !rules.contains("CNI-"), "iptables chains left:\n{rules}");
    assert!(!Path::new("/sys/class/net/dpsnode0").exists(), "the bridge is left");
    assert!(!dir.exists(), "{} is left", dir.display());
    let after = ["/var/lib/kubelet", "/var/log/containers"].map(|dir| Path::new(dir).exists());
    assert_eq!(after, kubelet_dirs, "the kubelet's fixed directories are left as they were");
}

fn netns() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn processes() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|entry| fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .collect()
}
