//! A real Kubernetes control plane on loopback: etcd and kube-apiserver, run as a real cluster
//! runs them (RBAC, the default admission plugins including PodSecurity, service account tokens),
//! with a generated admin credential and a kubeconfig file.

use std::{
    fs,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::Error;
use crate::pki::CertificateAuthority;

/// The binaries a control plane needs: etcd, kube-apiserver, kube-controller-manager, kubectl and
/// helm; a node needs kubelet, kube-scheduler, kube-proxy and pause too (`install-test-tools --node`).
#[derive(Clone, Debug)]
pub struct Tools {
    dir: PathBuf,
}

impl Tools {
    /// Environment variable naming a directory that already holds the binaries.
    pub const DIR_ENV: &str = "DPS_TOOLS_DIR";

    /// Finds the binaries: in `$DPS_TOOLS_DIR`, else by running `scripts/install-test-tools`
    /// (which builds them once into a cache and honours `KUBEBUILDER_ASSETS`).
    pub fn locate() -> Result<Self, Error> {
        Self::locate_with(&[])
    }

    /// Like [`Tools::locate`], with a node's binaries too (`install-test-tools --node`).
    pub fn locate_node() -> Result<Self, Error> {
        Self::locate_with(&["--node"])
    }

    fn locate_with(script_args: &[&str]) -> Result<Self, Error> {
        let dir = match std::env::var_os(Self::DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-tools");
                let output = Command::new(&script)
                    .args(script_args)
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
                if !output.status.success() {
                    return Err(Error::ToolsNotInstalled { script, status: output.status.to_string() });
                }
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
            }
        };
        let tools = Self { dir };
        for name in ["etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm"] {
            if !tools.binary(name).is_file() {
                return Err(Error::ToolMissing { name, dir: tools.dir.clone() });
            }
        }
        Ok(tools)
    }

    /// The directory that holds the binaries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn binary(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A running etcd + kube-apiserver. Dropping it stops both and removes their data; if the process
/// dies first, the kernel stops them (see [`spawn_tied_to_process`]).
pub struct ControlPlane {
    tools: Tools,
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    address: IpAddr,
    etcd_url: String,
    ca: CertificateAuthority,
    processes: Mutex<Vec<Child>>,
}

/// The address the API server listens on and advertises, and the first address of the Service
/// range (the `kubernetes` Service).
pub(super) const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// How long the API server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Prefix of the working directories, which carry the owning process id so that directories left
/// behind by a killed process can be found and removed.
const DIR_PREFIX: &str = "dps-operator-control-plane-";

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until the API server is
    /// ready. Fails, never skips, when either cannot start.
    pub fn start(tools: Tools) -> Result<Self, Error> {
        Self::start_on(tools, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Like [`ControlPlane::start`], with the API server on `address` (an address of this machine,
    /// e.g. a node's bridge, so Pods can reach it), etcd still on loopback.
    pub fn start_on(tools: Tools, address: IpAddr) -> Result<Self, Error> {
        remove_abandoned_dirs();
        let dir =
            std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{}", std::process::id(), unique_suffix()));
        fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
        let etcd_port = free_port()?;
        let api_port = free_port_on(address)?;
        let server = format!("https://{}", SocketAddr::new(address, api_port));

        let ca = CertificateAuthority::new("dps-operator-local-ca")?;
        let serving = ca.issue_server(
            "kube-apiserver",
            &[&address.to_string(), "localhost", "kubernetes.default.svc", KUBERNETES_SERVICE_IP],
        )?;
        let admin = ca.issue_client("dps-operator-local-admin", Some("system:masters"))?;
        let service_account_key = rcgen::KeyPair::generate()?;
        let write = |name: &str, contents: &str| -> Result<PathBuf, Error> {
            let path = dir.join(name);
            fs::write(&path, contents).map_err(|source| Error::io("write", &path, source))?;
            Ok(path)
        };
        let ca_file = write("ca.crt", &ca.certificate_pem)?;
        let serving_cert = write("apiserver.crt", &serving.certificate_pem)?;
        let serving_key = write("apiserver.key", &serving.key_pem)?;
        let admin_cert = write("admin.crt", &admin.certificate_pem)?;
        let admin_key = write("admin.key", &admin.key_pem)?;
        let sa_signing_key = write("service-account.key", &service_account_key.serialize_pem())?;
        let sa_public_key = write("service-account.pub", &service_account_key.public_key_pem())?;
        let admin_user = format!(
            "    client-certificate: {}\n    client-key: {}\n",
            admin_cert.display(),
            admin_key.display()
        );
        let kubeconfig = write("kubeconfig", &kubeconfig_yaml(&server, &ca_file, &admin_user))?;

        let mut etcd = Command::new(tools.binary("etcd"));
        etcd.arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg("--listen-peer-urls=http://127.0.0.1:0")
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");

        let mut apiserver = Command::new(tools.binary("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--bind-address={address}"))
            .arg(format!("--advertise-address={address}"))
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!("--tls-cert-file={}", serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", serving_key.display()))
            .arg(format!("--client-ca-file={}", ca_file.display()))
            .arg("--authorization-mode=Node,RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", sa_public_key.display()))
            .arg(format!("--service-account-signing-key-file={}", sa_signing_key.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"))
            .arg("--allow-privileged=true")
            // For `kubectl logs` and `exec`: the admin credential, verifying kubelets' certificates.
            .arg(format!("--kubelet-client-certificate={}", admin_cert.display()))
            .arg(format!("--kubelet-client-key={}", admin_key.display()))
            .arg(format!("--kubelet-certificate-authority={}", ca_file.display()))
            .arg("--kubelet-preferred-address-types=InternalIP");

        let logs = [dir.join("etcd.log"), dir.join("kube-apiserver.log")];
        let processes = spawn_tied_to_process(vec![(etcd, logs[0].clone()), (apiserver, logs[1].clone())])?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let control_plane =
            Self { tools, dir, kubeconfig, server, address, etcd_url, ca, processes: Mutex::new(processes) };
        control_plane.wait_until_ready(&logs)?;
        Ok(control_plane)
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// etcd's client URL (plain HTTP on loopback), to look at what the API server stored.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The address the API server listens on.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The control plane's working directory (removed when it stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate authority the API server trusts for clients and kubelets.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The PEM file of that certificate authority.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Starts kube-controller-manager (garbage collection, namespace deletion, ReplicaSets, service
    /// account tokens…) with the admin credential; it stops with the control plane.
    pub fn start_controller_manager(&self) -> Result<(), Error> {
        let port = free_port()?;
        let mut command = Command::new(self.tools.binary("kube-controller-manager"));
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", self.kubeconfig.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", self.dir.join("kube-controller-manager").display()))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.dir.join("service-account.key").display()
            ))
            .arg(format!("--root-ca-file={}", self.ca_file().display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"));
        self.spawn(command, "kube-controller-manager")
    }

    /// Installs cert-manager's CRDs and starts its controller (built by
    /// `scripts/install-test-tools` from its Go module) with the admin credential, its
    /// cluster-resource namespace `cert-manager`; it stops with the control plane.
    pub fn start_cert_manager(&self) -> Result<(), Error> {
        let binary = self.tools.binary("cert-manager-controller");
        let crds = self.tools.dir().join("cert-manager-crds");
        if !binary.is_file() || !crds.is_dir() {
            return Err(Error::ToolMissing {
                name: "cert-manager-controller",
                dir: self.tools.dir().to_owned(),
            });
        }
        run(self.kubectl().args(["apply", "--server-side", "-f"]).arg(&crds), None)?;
        run(
            self.kubectl().args(["wait", "--for=condition=Established", "--timeout=60s", "-f"]).arg(&crds),
            None,
        )?;
        let namespace = run(
            self.kubectl().args(["create", "namespace", "cert-manager", "--dry-run=client", "-o", "yaml"]),
            None,
        )?;
        run(self.kubectl().args(["apply", "-f", "-"]), Some(&namespace))?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--cluster-resource-namespace=cert-manager");
        self.spawn(command, "cert-manager-controller")
    }

    /// Spawns a component that stops with the control plane (before the ones started earlier),
    /// logging to `<name>.log` in its directory.
    pub(super) fn spawn(&self, command: Command, name: &str) -> Result<(), Error> {
        let log = self.dir.join(format!("{name}.log"));
        let mut started = spawn_tied_to_process(vec![(command, log)])?;
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).append(&mut started);
        Ok(())
    }

    /// A kubeconfig file with the admin credential (group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The binaries this control plane runs with.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Writes a kubeconfig named `name` that authenticates with a bearer `token` only (for example a
    /// service account token from `kubectl create token`), to act as someone other than admin.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf, Error> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let yaml = kubeconfig_yaml(
            &self.server,
            &self.dir.join("ca.crt"),
            &format!("    token: {}\n", token.trim()),
        );
        fs::write(&path, yaml).map_err(|source| Error::io("write", &path, source))?;
        Ok(path)
    }

    /// A `kubectl` command talking to this control plane as admin.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.tools.binary("kubectl"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// A `helm` command talking to this control plane as admin, with its state kept in the
    /// control plane's directory.
    pub fn helm(&self) -> Command {
        let mut command = Command::new(self.tools.binary("helm"));
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        command
    }

    /// A new client with the admin credential. Make one per async runtime: a client belongs to the
    /// runtime it was made in.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        crate::install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Installs this build's CRDs with server-side apply and waits until they are established.
    pub fn install_crds(&self) -> Result<(), Error> {
        let yaml = crate::api::crds_yaml();
        run(
            self.kubectl().args(["apply", "--server-side", "--field-manager=dps-operator", "-f", "-"]),
            Some(&yaml),
        )?;
        let names: Vec<String> =
            crate::api::crds().iter().filter_map(|crd| crd.metadata.name.clone()).collect();
        let mut wait = self.kubectl();
        wait.args(["wait", "--for=condition=Established", "--timeout=60s"]);
        wait.args(names.iter().map(|name| format!("crd/{name}")));
        run(&mut wait, None)?;
        Ok(())
    }

    fn wait_until_ready(&self, logs: &[PathBuf; 2]) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            {
                let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
                for (process, log) in processes.iter_mut().zip(logs) {
                    if let Ok(Some(status)) = process.try_wait() {
                        return Err(Error::NotReady {
                            what: component_name(log),
                            detail: format!("it exited ({status})"),
                            log_tail: tail(log),
                        });
                    }
                }
            }
            let probe = self.kubectl().args(["get", "--raw", "/readyz"]).output();
            if matches!(&probe, Ok(output) if output.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: "kube-apiserver".into(),
                    detail: format!("/readyz did not answer ok within {READY_TIMEOUT:?}"),
                    log_tail: tail(&logs[1]),
                });
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops etcd and kube-apiserver and removes their data. Safe to call more than once.
    pub fn stop(&self) {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        // The API server first, so etcd is not left with a client mid-write.
        for process in processes.iter_mut().rev() {
            let _ = process.kill();
            let _ = process.wait();
        }
        processes.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion, feeding it `stdin`; fails with its stderr when it fails.
pub fn run(command: &mut Command, stdin: Option<&str>) -> Result<String, Error> {
    let what = format!("{command:?}");
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| Error::Spawn { what: what.clone(), source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(|source| Error::Spawn { what: what.clone(), source })?;
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn { what: what.clone(), source })?;
    if !output.status.success() {
        return Err(Error::CommandFailed {
            what,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A kubeconfig for `server`, trusting `ca`, with `user` the YAML of the user's credentials.
pub(super) fn kubeconfig_yaml(server: &str, ca: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: user\n  user:\n{user}\
         contexts:\n- name: local\n  context:\n    cluster: local\n    user: user\n    namespace: default\n\
         current-context: local\n",
        ca = ca.display(),
    )
}

/// A loopback port nothing listens on, for a process started next to listen on.
pub fn free_port() -> Result<u16, Error> {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The lowest port that tests hand out; below it are the ports of well-known services.
const LOWEST_HANDED_OUT_PORT: u16 = 10_000;

/// A port on `address` nothing listens on. It is chosen below the kernel's ephemeral range: a port
/// from `bind(:0)` is free again once probed, and any outgoing connection or other process binding
/// `:0` may take it before the process it is meant for starts (kube-apiserver then fails with
/// "address already in use"). A process-wide cursor, starting at a place drawn from the process id,
/// keeps this process from handing out one port twice and processes apart from each other.
pub(super) fn free_port_on(address: IpAddr) -> Result<u16, Error> {
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let what = SocketAddr::new(address, 0).to_string();
    let end = ephemeral_range_start().max(LOWEST_HANDED_OUT_PORT + 1_000);
    let span = u32::from(end - LOWEST_HANDED_OUT_PORT);
    let _ = CURSOR.compare_exchange(u32::MAX, std::process::id().wrapping_mul(7_919) % span, SeqCst, SeqCst);
    for _ in 0..span {
        let port = LOWEST_HANDED_OUT_PORT + (CURSOR.fetch_add(1, SeqCst) % span) as u16;
        if TcpListener::bind((address, port)).is_ok() {
            return Ok(port);
        }
    }
    let exhausted = io::Error::new(io::ErrorKind::AddrInUse, "every port below the ephemeral range is taken");
    Err(Error::io("bind", Path::new(&what), exhausted))
}

/// The first port of the kernel's ephemeral range (32768 unless configured otherwise).
fn ephemeral_range_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

pub(super) fn unique_suffix() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

fn component_name(log: &Path) -> String {
    log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The last lines of a log file, for an error message.
pub(super) fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Removes working directories whose owning process is gone (killed before it could clean up).
fn remove_abandoned_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(DIR_PREFIX).and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

type SpawnRequest = (Vec<(Command, PathBuf)>, mpsc::Sender<io::Result<Vec<Child>>>);

/// Spawns the commands (output to the given log files) so that they die with this process, however
/// it ends: the kernel sends them SIGKILL when the spawning thread exits (`PR_SET_PDEATHSIG`), so
/// they are spawned from one thread that lives as long as the process.
pub(super) fn spawn_tied_to_process(commands: Vec<(Command, PathBuf)>) -> Result<Vec<Child>, Error> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("control-plane-spawner".into())
            .spawn(move || {
                for (commands, reply) in incoming {
                    let _ = reply.send(
                        commands.into_iter().map(|(command, log)| spawn_logged(command, &log)).collect(),
                    );
                }
                // Every sender is static, so this is only reached at exit; park in case it is not.
                loop {
                    thread::park();
                }
            })
            .expect("the control plane spawner thread starts");
        Mutex::new(requests)
    });
    let (reply, response) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((commands, reply))
        .map_err(|_| Error::SpawnerGone)?;
    response
        .recv()
        .map_err(|_| Error::SpawnerGone)?
        .map_err(|source| Error::Spawn { what: "control plane".into(), source })
}

#[allow(unsafe_code)]
fn spawn_logged(mut command: Command, log: &Path) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = fs::File::create(log)?;
    command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_handed_out_are_free_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((LOWEST_HANDED_OUT_PORT..ephemeral_range_start()).contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
