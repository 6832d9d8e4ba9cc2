//! A local environment for development and tests: a real Kubernetes control plane on loopback
//! and the DPS emulator. `dps-operator local` and the integration tests use it.

pub mod chart;
mod control_plane;
mod device;
mod local;
mod node;

use std::path::{Path, PathBuf};

pub use control_plane::{ControlPlane, Tools, free_port, run};
pub use local::{OPERATOR_NAMESPACE, example_inputs, run_local};
pub use node::{Cluster, PAUSE_IMAGE};

/// What can go wrong while setting up the local environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{script} failed ({status}); it builds the control plane (and node) binaries, see its output above"
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

    #[error("the DPS emulator could not start: {0}")]
    Emulator(String),

    #[error("the sample device {registration_id} did not provision: {detail}")]
    Device { registration_id: String, detail: String },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io { action, path: path.to_owned(), source }
    }
}
