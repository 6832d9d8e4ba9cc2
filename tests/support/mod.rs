//! Shared by the integration test binaries: one real control plane per test binary, started on
//! first use with the CRDs installed, and stopped when the binary exits. Tests isolate themselves
//! in namespaces of their own.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

pub mod contract;
pub mod dps;
pub mod helm;
pub mod node;
pub mod operator;

pub use dps_operator::devenv::{ControlPlane, Tools};

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The control plane of this test binary, with this build's CRDs installed. Panics, with the
/// reason, when it cannot start: a test that needs a control plane fails rather than skips.
pub fn control_plane() -> &'static ControlPlane {
    started(true)
}

/// The control plane of this test binary, without CRDs when this is the first use (for tests
/// that install CRDs of their own, such as those of an earlier release).
pub fn bare_control_plane() -> &'static ControlPlane {
    started(false)
}

fn started(install_crds: bool) -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let control_plane = Tools::locate().and_then(ControlPlane::start).unwrap_or_else(|e| {
            panic!("the test control plane could not start: {:#}", anyhow::Error::from(e))
        });
        stop_at_exit();
        if install_crds {
            control_plane
                .install_crds()
                .unwrap_or_else(|e| panic!("the CRDs could not be installed: {:#}", anyhow::Error::from(e)));
        }
        control_plane
    })
}

/// Statics are never dropped, so stop the control plane from an exit handler. (Were the process
/// killed instead, the kernel stops etcd and kube-apiserver; their directory is removed by the next
/// control plane that starts.)
fn stop_at_exit() {
    extern "C" fn stop() {
        if let Some(control_plane) = CONTROL_PLANE.get() {
            control_plane.stop();
        }
    }
    at_exit(stop);
}

/// Runs `handler` when the process exits normally (after the tests, whether they passed or not).
#[allow(unsafe_code)]
pub fn at_exit(handler: extern "C" fn()) {
    // SAFETY: `handler` is a plain function that stays valid for the life of the process.
    unsafe {
        libc::atexit(handler);
    }
}

/// The control plane with cert-manager's CRDs and controller running, started once per test
/// binary (see `ControlPlane::start_cert_manager`).
pub fn cert_manager() -> &'static ControlPlane {
    static STARTED: OnceLock<()> = OnceLock::new();
    let control_plane = control_plane();
    STARTED.get_or_init(|| {
        control_plane
            .start_cert_manager()
            .unwrap_or_else(|e| panic!("cert-manager could not start: {:#}", anyhow::Error::from(e)))
    });
    control_plane
}

/// A new namespace whose name starts with `prefix`.
pub fn namespace(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    kubectl_ok(&["create", "namespace", &name]);
    name
}

/// Output of a command: whether it succeeded, its stdout and its stderr.
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl` as admin with `args`, feeding it `stdin`.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    run(control_plane().kubectl().args(args), stdin)
}

/// Runs `kubectl` as admin and returns its stdout; panics with its stderr when it fails.
pub fn kubectl_ok(args: &[&str]) -> String {
    let output = kubectl(args, None);
    assert!(output.success, "kubectl {} failed: {}", args.join(" "), output.stderr);
    output.stdout
}

pub fn run(command: &mut Command, stdin: Option<&str>) -> Output {
    match dps_operator::devenv::run(command, stdin) {
        Ok(stdout) => Output { success: true, stdout, stderr: String::new() },
        Err(dps_operator::devenv::Error::CommandFailed { stderr, .. }) => {
            Output { success: false, stdout: String::new(), stderr }
        }
        Err(e) => panic!("{:#}", anyhow::Error::from(e)),
    }
}

/// Runs the `kubectl dps` plugin this build made with `args`, as the user of `kubeconfig` (the
/// control plane's admin when `None`), without a connection string in its environment.
pub async fn kubectl_dps(args: Vec<String>, kubeconfig: Option<std::path::PathBuf>) -> Output {
    tokio::task::spawn_blocking(move || {
        let kubeconfig = kubeconfig.unwrap_or_else(|| control_plane().kubeconfig().to_owned());
        let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-dps"));
        command.env("KUBECONFIG", kubeconfig).env_remove("DPS_CONNECTION_STRING").args(&args);
        let output = command.output().expect("kubectl-dps runs");
        Output {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}
