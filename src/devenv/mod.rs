//! A local environment for development and tests: a real Kubernetes control plane on loopback
//! (and, later, the DPS emulator). `scripts/run-local` and the integration tests use it.

mod control_plane;

use std::path::{Path, PathBuf};

pub use control_plane::{ControlPlane, Tools, run};

/// What can go wrong while setting up the local environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{script} failed ({status}); it builds etcd, kube-apiserver, kubectl and helm, see its output above"
    )]
    ToolsNotInstalled { script: PathBuf, status: String },

    #[error("{name} is missing from {dir}")]
    ToolMissing { name: &'static str, dir: PathBuf },

    #[error("could not run {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("the process that starts control plane components is gone")]
    SpawnerGone,

    #[error("{what} failed: {stderr}")]
    CommandFailed { what: String, stderr: String },

    #[error("{what} did not become ready: {detail}; last lines of its log:\n{log_tail}")]
    NotReady { what: String, detail: String, log_tail: String },

    #[error("could not {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not generate the control plane's certificates")]
    Certificate(#[from] rcgen::Error),

    #[error("could not read the control plane's kubeconfig")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    #[error("could not build a Kubernetes client for the control plane")]
    Client(#[from] kube::Error),
}

impl Error {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io { action, path: path.to_owned(), source }
    }
}

/// Starts a local control plane, installs the CRDs, applies the manifests in `examples` to
/// `namespace`, shows the resources and keeps everything running until Ctrl-C.
pub async fn run_local(examples: &Path, namespace: &str) -> Result<(), Error> {
    let control_plane = ControlPlane::start(Tools::locate()?)?;
    control_plane.install_crds()?;
    let examples = examples.display().to_string();
    run(control_plane.kubectl().args(["apply", "--server-side", "-n", namespace, "-f", &examples]), None)?;
    let resources = run(control_plane.kubectl().args(["get", "dps", "--all-namespaces"]), None)?;
    println!(
        "A local Kubernetes API server is running at {server} with the dps-operator CRDs installed and \
         the manifests from {examples} applied:\n\n{resources}\nUse it from another terminal with:\n\n    \
         export KUBECONFIG={kubeconfig}\n    kubectl get dps -A\n\nPress Ctrl-C to stop it and remove its data.",
        server = control_plane.server(),
        kubeconfig = control_plane.kubeconfig().display(),
    );
    crate::signals::shutdown()
        .await
        .map_err(|source| Error::io("wait for a stop signal in", Path::new("this process"), source))?;
    control_plane.stop();
    Ok(())
}
