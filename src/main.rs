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
    /// Run the operator: reconcile enrollments and connections until SIGTERM or Ctrl-C. Uses
    /// $KUBECONFIG (or ~/.kube/config), or the in-cluster service account.
    Run(RunArgs),
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

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only these namespaces (repeatable, or comma-separated); all when omitted.
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Namespace the operator runs in; ClusterProvisioningService Secrets are read from it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "dps-operator")]
    operator_namespace: String,
    /// How often enrollments are compared with DPS when neither they nor their connection say.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    drift_check_interval: std::time::Duration,
    /// How long before a certificate expires CertificateExpiringSoon turns True.
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    certificate_expiry_warning: std::time::Duration,
    /// How long one DPS request may take.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    dps_timeout: std::time::Duration,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: dps_operator::telemetry::LogFormat,
    /// Log filter, e.g. `info` or `dps_operator=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_filter: String,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration: kube::core::Duration =
        text.parse().map_err(|e| format!("{text:?} is not a duration like 30s, 10m or 1h: {e}"))?;
    Ok(duration.into())
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
        Command::Run(args) => {
            dps_operator::telemetry::init(args.log_format, &args.log_filter);
            let client = kube::Client::try_default().await?;
            let config = dps_operator::controller::context::Config {
                drift_check_interval: args.drift_check_interval,
                certificate_expiry_warning: args.certificate_expiry_warning,
                operator_namespace: args.operator_namespace,
                dps_timeout: args.dps_timeout,
            };
            dps_operator::controller::run(client, config, args.namespaces).await?;
        }
        Command::Local { examples, namespace } => {
            dps_operator::devenv::run_local(&examples, &namespace).await?
        }
    }
    Ok(())
}
