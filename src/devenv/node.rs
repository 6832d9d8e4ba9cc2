//! A real single-node cluster on this machine: the control plane (with kube-controller-manager)
//! plus kube-scheduler, kube-proxy, CoreDNS, containerd with runc, and a kubelet, its Pods on a
//! bridge this cluster makes. Pods reach the API server through the `kubernetes` Service, resolve
//! Service names (`NAME.NAMESPACE.svc`) through CoreDNS on the node's address and nothing else,
//! and have no route beyond the bridge.
//!
//! Needs root and `scripts/install-test-tools --node`. Stopping removes what it added: Pods and
//! their network namespaces, processes (containerd's shims included), mounts, iptables chains,
//! the bridge and the working directory.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use super::{
    ControlPlane, Error, Tools,
    control_plane::{SERVICE_CLUSTER_IP_RANGE, free_port, kubeconfig_yaml, run, spawn_tied_to_process, tail},
};

/// The bridge the Pods are attached to, and its subnet; the node's address is the gateway.
const BRIDGE: &str = "dpsnode0";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
const POD_SUBNET: &str = "10.89.0.0/24";
const NODE_NAME: &str = "dps-node";
const CLUSTER_DOMAIN: &str = "cluster.local";
/// containerd's sandbox image; `scripts/build-images` packs the pause binary under this name.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running single-node cluster. Dropping it stops everything and removes what it added.
pub struct Cluster {
    control_plane: ControlPlane,
    dir: PathBuf,
    processes: Mutex<Vec<Child>>,
    /// Stopped before the Pods are removed, so nothing recreated is started again.
    scheduler: Mutex<Option<Child>>,
    netns_before: Vec<PathBuf>,
    /// Directories the kubelet makes wherever `--root-dir` points, that did not exist before.
    kubelet_dirs: Vec<PathBuf>,
}

/// Where the kubelet writes whatever its configuration says.
const KUBELET_FIXED_DIRS: [&str; 2] = ["/var/lib/kubelet", "/var/log/containers"];

impl Cluster {
    /// Starts the control plane on the bridge's address, kube-controller-manager, kube-scheduler,
    /// kube-proxy, containerd and the kubelet, and waits until the node is Ready.
    pub fn start(tools: Tools) -> Result<Self, Error> {
        for name in ["kubelet", "kube-scheduler", "kube-proxy", "coredns"] {
            if !tools.binary(name).is_file() {
                return Err(Error::ToolMissing { name, dir: tools.dir().to_owned() });
            }
        }
        // Whatever an earlier run killed mid-way left behind goes first.
        remove_network();
        create_bridge()?;
        let netns_before = netns_entries();
        let kubelet_dirs = KUBELET_FIXED_DIRS.iter().map(PathBuf::from).filter(|dir| !dir.exists()).collect();
        let control_plane = ControlPlane::start_on(tools, IpAddr::V4(GATEWAY))?;
        control_plane.start_controller_manager()?;
        let dir = control_plane.dir().join("node");
        let cluster = Self {
            control_plane,
            dir,
            processes: Mutex::new(Vec::new()),
            scheduler: Mutex::new(None),
            netns_before,
            kubelet_dirs,
        };
        cluster.start_node()?;
        Ok(cluster)
    }

    /// The control plane of this cluster.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The node's address on the Pods' bridge: where Pods reach services run on this machine.
    pub fn node_address(&self) -> IpAddr {
        IpAddr::V4(GATEWAY)
    }

    /// Imports a docker archive (e.g. from `scripts/build-images`) into the node's containerd, so
    /// Pods can use the image it names without a registry.
    pub fn import_image(&self, archive: &Path) -> Result<(), Error> {
        run(self.ctr().args(["images", "import"]).arg(archive), None)?;
        Ok(())
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(self.containerd_socket()).args(["--namespace", "k8s.io"]);
        command
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// Writes `contents` to `name` in the node's directory.
    fn write(&self, name: &str, contents: String) -> Result<PathBuf, Error> {
        let path = self.dir.join(name);
        fs::write(&path, contents).map_err(|source| Error::io("write", &path, source))?;
        Ok(path)
    }

    fn start_node(&self) -> Result<(), Error> {
        let dir = &self.dir;
        for sub in ["containerd", "cni", "kubelet", "pod-logs", "cni-ipam"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| Error::io("create", &path, source))?;
        }
        let control_plane = &self.control_plane;
        let socket = self.containerd_socket();
        let (containerd, kubelet, scheduler, proxy) = (
            self.containerd_command()?,
            self.kubelet_command()?,
            self.scheduler_command()?,
            self.proxy_command()?,
        );
        let (coredns, dns_ready_port) = self.coredns_command()?;
        let logs = ["containerd", "kube-scheduler", "kube-proxy", "kubelet", "coredns"]
            .map(|name| dir.join(format!("{name}.log")));
        let mut started = spawn_tied_to_process(vec![
            (scheduler, logs[1].clone()),
            (containerd, logs[0].clone()),
            (proxy, logs[2].clone()),
            (coredns, logs[4].clone()),
        ])?;
        *self.scheduler.lock().unwrap_or_else(|e| e.into_inner()) = Some(started.remove(0));
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).extend(started);
        self.wait_for(&logs[0], "containerd", || {
            socket.exists() && run(self.ctr().arg("version"), None).is_ok()
        })?;
        self.wait_for(&logs[4], "CoreDNS", || http_ok(dns_ready_port, "/ready"))?;
        let started = spawn_tied_to_process(vec![(kubelet, logs[3].clone())])?;
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).extend(started);
        self.wait_for(&logs[3], "the node", || {
            run(
                control_plane.kubectl().args([
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
                ]),
                None,
            )
            .is_ok_and(|status| status.trim() == "True")
        })
    }

    /// containerd, with its configuration and the Pods' network.
    fn containerd_command(&self) -> Result<Command, Error> {
        let dir = &self.dir;
        let write = |name: &str, contents: String| self.write(name, contents);
        // containerd with its own root, state and socket; runc cannot set oom_score_adj here.
        let socket = self.containerd_socket();
        let containerd_config = write(
            "containerd.toml",
            format!(
                r#"version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        SystemdCgroup = false
"#,
                dir = dir.display(),
                socket = socket.display(),
            ),
        )?;
        // Pods get routes to the bridge and the Service range only: no default route.
        write(
            "cni/10-dps-node.conflist",
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "dps-node", "plugins": [{{
  "type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {{"type": "host-local", "dataDir": "{ipam}", "ranges": [[{{"subnet": "{POD_SUBNET}", "gateway": "{GATEWAY}"}}]],
    "routes": [{{"dst": "{SERVICE_CLUSTER_IP_RANGE}"}}]}}
}}]}}
"#,
                ipam = dir.join("cni-ipam").display(),
            ),
        )?;
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(&containerd_config);
        Ok(containerd)
    }

    /// The kubelet, with its credentials and configuration.
    fn kubelet_command(&self) -> Result<Command, Error> {
        let dir = &self.dir;
        let write = |name: &str, contents: String| self.write(name, contents);
        let control_plane = &self.control_plane;
        let (ca_file, tools, socket) =
            (control_plane.ca_file(), control_plane.tools(), self.containerd_socket());
        // The kubelet's credentials: a node client certificate, and a serving certificate the API
        // server verifies (`--kubelet-certificate-authority`).
        let ca = control_plane.ca();
        let client = ca.issue_client(&format!("system:node:{NODE_NAME}"), Some("system:nodes"))?;
        let serving = ca.issue_server(NODE_NAME, &[&GATEWAY.to_string(), NODE_NAME])?;
        let client_cert = write("kubelet-client.crt", client.certificate_pem)?;
        let client_key = write("kubelet-client.key", client.key_pem)?;
        let serving_cert = write("kubelet.crt", serving.certificate_pem)?;
        let serving_key = write("kubelet.key", serving.key_pem)?;
        let kubelet_kubeconfig = write(
            "kubelet.kubeconfig",
            kubeconfig_yaml(
                control_plane.server(),
                &ca_file,
                &format!(
                    "    client-certificate: {}\n    client-key: {}\n",
                    client_cert.display(),
                    client_key.display()
                ),
            ),
        )?;
        // Pods with `dnsPolicy: Default` resolve names only on their own loopback.
        let resolv_conf = write("resolv.conf", "nameserver 127.0.0.1\n".to_owned())?;
        let kubelet_config = write(
            "kubelet.yaml",
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
address: {GATEWAY}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
tlsCertFile: {serving_cert}
tlsPrivateKeyFile: {serving_key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
failSwapOn: false
resolvConf: {resolv}
podLogsDir: {logs}
clusterDomain: {CLUSTER_DOMAIN}
clusterDNS: [{GATEWAY}]
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
"#,
                socket = socket.display(),
                port = free_port()?,
                healthz = free_port()?,
                serving_cert = serving_cert.display(),
                serving_key = serving_key.display(),
                ca = ca_file.display(),
                resolv = resolv_conf.display(),
                logs = dir.join("pod-logs").display(),
            ),
        )?;
        let mut kubelet = Command::new(tools.binary("kubelet"));
        kubelet
            .arg(format!("--config={}", kubelet_config.display()))
            .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={GATEWAY}"));
        Ok(kubelet)
    }

    /// kube-scheduler, with the admin credential.
    fn scheduler_command(&self) -> Result<Command, Error> {
        let control_plane = &self.control_plane;
        let tools = control_plane.tools();
        let admin = control_plane.kubeconfig();
        let mut scheduler = Command::new(tools.binary("kube-scheduler"));
        scheduler
            .arg(format!("--kubeconfig={}", admin.display()))
            .arg(format!("--authentication-kubeconfig={}", admin.display()))
            .arg(format!("--authorization-kubeconfig={}", admin.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg("--leader-elect=false");
        Ok(scheduler)
    }

    /// kube-proxy in iptables mode.
    fn proxy_command(&self) -> Result<Command, Error> {
        let write = |name: &str, contents: String| self.write(name, contents);
        let control_plane = &self.control_plane;
        let (tools, admin) = (control_plane.tools(), control_plane.kubeconfig());
        let proxy_config = write(
            "kube-proxy.yaml",
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {{kubeconfig: {admin}}}
hostnameOverride: {NODE_NAME}
clusterCIDR: {POD_SUBNET}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
# Service traffic from a Pod to a Pod on the same bridge comes back through the node even
# where bridged traffic skips iptables (no br_netfilter).
iptables: {{localhostNodePorts: false, masqueradeAll: true}}
conntrack: {{maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#,
                admin = admin.display(),
                healthz = free_port()?,
                metrics = free_port()?,
            ),
        )?;
        let mut proxy = Command::new(tools.binary("kube-proxy"));
        proxy.arg(format!("--config={}", proxy_config.display()));
        Ok(proxy)
    }

    /// CoreDNS for the cluster's Service names, and the port of its readiness endpoint.
    fn coredns_command(&self) -> Result<(Command, u16), Error> {
        let write = |name: &str, contents: String| self.write(name, contents);
        let control_plane = &self.control_plane;
        let (tools, admin) = (control_plane.tools(), control_plane.kubeconfig());
        // Cluster DNS on the node's address: Service names only, no forwarding anywhere.
        let dns_ready_port = free_port()?;
        let corefile = write(
            "Corefile",
            format!(
                r#"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {GATEWAY}
    errors
    ready 127.0.0.1:{dns_ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {admin}
    }}
}}
"#,
                admin = admin.display(),
            ),
        )?;
        let mut coredns = Command::new(tools.binary("coredns"));
        coredns.arg("-conf").arg(&corefile);
        Ok((coredns, dns_ready_port))
    }

    /// Waits until `ready` holds, failing with the log's tail if a process exits or time runs out.
    fn wait_for(&self, log: &Path, what: &str, ready: impl Fn() -> bool) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready() {
                return Ok(());
            }
            let exited = self
                .processes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter_mut()
                .find_map(|process| process.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(Error::NotReady {
                    what: what.into(),
                    detail: format!("a node process exited ({status})"),
                    log_tail: tail(log),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: what.into(),
                    detail: format!("not ready within {READY_TIMEOUT:?}"),
                    log_tail: tail(log),
                });
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the node and the control plane and removes what they added. Safe to call more than
    /// once.
    pub fn stop(&self) {
        if let Some(mut scheduler) = self.scheduler.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = scheduler.kill();
            let _ = scheduler.wait();
        }
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if !processes.is_empty() {
            self.remove_pods();
        }
        // The kubelet first (it would restart what is stopped), containerd last.
        for process in processes.iter_mut().rev() {
            let _ = process.kill();
            let _ = process.wait();
        }
        processes.clear();
        kill_shims(&self.containerd_socket());
        unmount_under(&self.dir);
        for entry in netns_entries() {
            if !self.netns_before.contains(&entry) {
                let _ = Command::new("umount").arg(&entry).status();
                let _ = fs::remove_file(&entry);
            }
        }
        for dir in &self.kubelet_dirs {
            let _ = fs::remove_dir_all(dir);
        }
        remove_network();
        self.control_plane.stop();
    }

    /// Removes every Pod sandbox through containerd's CRI side, as the kubelet would: stopping a
    /// sandbox tears down its network (CNI DEL) and removes its network namespace.
    fn remove_pods(&self) {
        // With the scheduler gone, Pods recreated by their controllers are never started.
        let _ = run(
            self.control_plane.kubectl().args([
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--force",
                "--grace-period=0",
                "--wait=false",
            ]),
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match run(self.ctr().args(["tasks", "list", "--quiet"]), None) {
                Ok(tasks) if tasks.trim().is_empty() => return,
                Ok(_) => thread::sleep(Duration::from_millis(250)),
                Err(_) => return,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET path` on a loopback port answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    if stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).is_err()
        || stream.read_to_string(&mut answer).is_err()
    {
        return false;
    }
    answer.split_whitespace().nth(1) == Some("200")
}

fn create_bridge() -> Result<(), Error> {
    let ip = |args: &[&str]| run(Command::new("ip").args(args), None).map(drop);
    ip(&["link", "add", "name", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])
}

/// Removes the bridge and the iptables chains kubelet, kube-proxy and the CNI plugins add (all
/// named KUBE-… or CNI-…), with the rules that jump to them.
fn remove_network() {
    let _ = Command::new("ip").args(["link", "delete", BRIDGE]).output();
    for (save, restore) in [("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")] {
        let Ok(rules) = run(&mut Command::new(save), None) else {
            continue;
        };
        if !rules.contains("KUBE-") && !rules.contains("CNI-") {
            continue;
        }
        let kept: String = rules
            .lines()
            .filter(|line| !line.contains("KUBE-") && !line.contains("CNI-"))
            .map(|line| format!("{line}\n"))
            .collect();
        let _ = run(&mut Command::new(restore), Some(&kept));
    }
}

/// Network namespaces (bind mounts in /run/netns), to remove those this cluster's Pods left.
fn netns_entries() -> Vec<PathBuf> {
    fs::read_dir("/run/netns")
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default()
}

/// containerd's shims outlive it (they are re-parented); kill those serving this containerd.
fn kill_shims(socket: &Path) {
    let socket = socket.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| a.contains("containerd-shim")) && args.iter().any(|a| a == &socket) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Unmounts everything mounted under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = Command::new("umount").args(["--lazy", point]).status();
    }
}
