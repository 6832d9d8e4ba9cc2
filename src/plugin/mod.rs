//! `kubectl dps`: a kubectl plugin for the day-2 work on DPS enrollments. `import` writes
//! manifests for an existing DPS; `device-key`, `registrations`, `rotate` and `status` work on the
//! resources in the cluster, through each resource's own connection and the user's own
//! permissions (the plugin reads Secrets with the user's kubeconfig, never through the operator).

mod cluster;
mod connect;
mod day2;
mod import;
mod manifests;
mod names;
mod progress;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{
    controller::{describe, kube_failure},
    dps,
};

/// Why a command failed; each message is one line that names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {}", kube_failure(.source))]
    Kube { action: String, source: kube::Error },
    #[error("{0}")]
    NotFound(String),
    #[error("{what} is not Ready ({reason}): {message}")]
    NotReady { what: String, reason: String, message: String },
    #[error("{0}")]
    Connection(String),
    #[error("{action}: {}", describe(.source))]
    Dps { action: String, source: dps::Error },
    #[error("{0}")]
    Input(String),
    #[error("could not {action} {path}: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },
}

/// kubectl dps: day-2 commands for Azure IoT Hub DPS enrollments managed by dps-operator.
#[derive(Parser, Debug)]
#[command(name = "kubectl dps", version, about)]
pub struct Cli {
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write manifests for every enrollment group and individual enrollment of a DPS, to apply
    /// with kubectl: adopted as they are, with no write to DPS and no credential changed.
    Import(Box<import::ImportArgs>),
    /// Print the key a device of an enrollment group registers with (derived from the group key,
    /// as `az iot dps enrollment-group compute-device-key` does).
    DeviceKey(day2::DeviceKeyArgs),
    /// Show the registration records of an enrollment group or individual enrollment from DPS,
    /// or delete one so that its device provisions afresh.
    Registrations(day2::RegistrationsArgs),
    /// Start a key rotation of an enrollment whose keys the operator generated.
    Rotate(day2::RotateArgs),
    /// One screen: the connections, the enrollments by state, and what is not Ready and why.
    Status(status::StatusArgs),
}

/// Runs the plugin: the exit code, with the error on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    crate::install_crypto_provider();
    let cluster = cli.cluster;
    match cli.command {
        Command::Import(args) => import::run(&cluster, *args).await,
        Command::DeviceKey(args) => day2::device_key(&cluster, args).await,
        Command::Registrations(args) => day2::registrations(&cluster, args).await,
        Command::Rotate(args) => day2::rotate(&cluster, args).await,
        Command::Status(args) => status::run(&cluster, args).await,
    }
}
