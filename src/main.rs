use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Manages Azure IoT Hub Device Provisioning Service enrollments from Kubernetes.
#[derive(Parser)]
#[command(name = "dps-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into each --dir.
    Crds {
        /// Directory to write the CRD files into (repeatable); prints to stdout when omitted.
        #[arg(long = "dir")]
        dirs: Vec<PathBuf>,
    },
    /// Run everything on this machine: a local Kubernetes control plane with the CRDs installed
    /// and the examples applied, until Ctrl-C.
    Local {
        /// Directory of manifests to apply.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        /// Namespace to apply them in.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dps_operator::install_crypto_provider();
    match Cli::parse().command {
        Command::Crds { dirs } if dirs.is_empty() => print!("{}", dps_operator::api::crds_yaml()),
        Command::Crds { dirs } => {
            for dir in dirs {
                for (name, yaml) in dps_operator::api::crd_files() {
                    std::fs::write(dir.join(&name), yaml)?;
                }
            }
        }
        Command::Local { examples, namespace } => {
            dps_operator::devenv::run_local(&examples, &namespace).await?
        }
    }
    Ok(())
}
