use std::path::PathBuf;

use anyhow::Context as _;
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
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into each --dir.
    Crds {
        /// Directory to write the CRD files into (repeatable); prints to stdout when omitted.
        #[arg(long = "dir")]
        dirs: Vec<PathBuf>,
    },
    /// Print the API reference (docs/api.md) as Markdown: every kind and field, its
    /// documentation, validation and default.
    ApiReference,
    /// Rewrite manifests of a deprecated API version (dps.iot.dev/v1alpha1) to the current one
    /// (v1beta1), keeping comments and layout. Prints the converted FILE (`-`: standard input),
    /// or with --write rewrites every .yaml, .yml and .json file under each PATH in place.
    Convert {
        /// Files or directories of manifests.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Rewrite the files in place (nothing is written if any of them cannot be converted).
        #[arg(long)]
        write: bool,
    },
    /// Run everything on this machine: a local Kubernetes control plane with the CRDs installed
    /// and the examples applied, until Ctrl-C.
    #[cfg(feature = "local")]
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
    /// How many enrollments of each kind are reconciled at once; 0 for no limit. Bounds memory
    /// and the load on the API server when many change at once (DPS calls are paced anyway).
    #[arg(long, default_value_t = 16)]
    max_concurrent_reconciles: u16,
    /// PEM file of CA certificates every DPS connection trusts besides the system roots (for a
    /// TLS-inspecting proxy).
    #[arg(long, env = "EXTRA_CA_FILE")]
    extra_ca_file: Option<std::path::PathBuf>,
    /// Connect to a DPS host at this address instead of what DNS says, as HOST=IP:PORT
    /// (repeatable); for a local emulator with a real-looking host name.
    #[arg(long = "resolve", value_parser = parse_resolve)]
    resolve: Vec<(String, std::net::SocketAddr)>,
    /// Export the series labelled by enrollment (certificate expiry, generated key age): one or
    /// two per enrollment. Turn off for fleets too large to keep a series each.
    #[arg(long, env = "PER_ENROLLMENT_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    per_enrollment_metrics: bool,
    /// Address of the /livez, /readyz and /metrics endpoints.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: std::net::SocketAddr,
    /// Serve the validating admission webhook over HTTPS on this address (POST /validate); no
    /// webhook when not set.
    #[arg(long, env = "WEBHOOK_ADDRESS")]
    webhook_address: Option<std::net::SocketAddr>,
    /// The webhook's serving certificate chain (PEM).
    #[arg(long, env = "WEBHOOK_CERTIFICATE_FILE", default_value = "/etc/dps-operator/webhook/tls.crt")]
    webhook_certificate_file: PathBuf,
    /// The webhook's private key (PEM).
    #[arg(long, env = "WEBHOOK_KEY_FILE", default_value = "/etc/dps-operator/webhook/tls.key")]
    webhook_key_file: PathBuf,
    /// Reconcile only the EnrollmentGroups and IndividualEnrollments whose labels match this
    /// selector, e.g. `sharding.dps.iot.dev/key=shard1` (and `!sharding.dps.iot.dev/key` for the
    /// rest): one shard of a large fleet. Connections and Secrets are read whatever their labels.
    /// Each selector has a Lease of its own.
    #[arg(long, env = "WATCH_LABEL_SELECTOR")]
    watch_label_selector: Option<String>,
    /// Take part in leader election through a Lease in the operator namespace; only the leader
    /// writes. For running more than one replica.
    #[arg(long, env = "LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "dps-operator")]
    leader_election_lease: String,
    /// This replica's name in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: dps_operator::telemetry::LogFormat,
    /// Log filter, e.g. `info` or `dps_operator=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_filter: String,
}

/// `dps-operator convert`: one file to stdout, or files and directories in place.
fn convert(paths: &[PathBuf], write: bool) -> anyhow::Result<()> {
    use dps_operator::convert;
    if write {
        for (file, changed) in convert::convert_in_place(paths)? {
            eprintln!(
                "{}: {changed} converted to dps.iot.dev/{}",
                file.display(),
                dps_operator::api::STORAGE_VERSION
            );
        }
        return Ok(());
    }
    let [path] = paths else {
        anyhow::bail!("convert prints one file: pass --write to rewrite several in place")
    };
    if path.is_dir() {
        Err(convert::Error::DirectoryNeedsWrite { path: path.clone() })?;
    }
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    print!("{}", convert::convert(&text, &path.display().to_string())?.text);
    Ok(())
}

/// The controller's settings from the `run` options.
fn config_of(args: &RunArgs) -> anyhow::Result<dps_operator::controller::config::Config> {
    Ok(dps_operator::controller::config::Config {
        drift_check_interval: args.drift_check_interval,
        certificate_expiry_warning: args.certificate_expiry_warning,
        operator_namespace: args.operator_namespace.clone(),
        dps_timeout: args.dps_timeout,
        extra_ca_certificates: match &args.extra_ca_file {
            Some(path) => {
                Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
            }
            None => None,
        },
        resolve: args.resolve.clone(),
        azure_environment: std::env::vars().filter(|(name, _)| name.starts_with("AZURE_")).collect(),
        max_concurrent_reconciles: args.max_concurrent_reconciles,
        watch_label_selector: args.watch_label_selector.clone().filter(|s| !s.is_empty()),
    })
}

fn parse_resolve(text: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (host, address) = text.split_once('=').ok_or("expected HOST=IP:PORT")?;
    let address = address.parse().map_err(|_| format!("{address} is not an IP:PORT address"))?;
    Ok((host.to_owned(), address))
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration: kube::core::Duration =
        text.parse().map_err(|e| format!("{text:?} is not a duration like 30s, 10m or 1h: {e}"))?;
    Ok(duration.into())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    dps_operator::install_crypto_provider();
    let command = Cli::parse().command;
    let logs = matches!(command, Command::Run(_));
    match run(command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The cause chain in one line, in the log format asked for; no backtrace.
            if logs {
                tracing::error!(error = format!("{error:#}"), "dps-operator stopped");
            } else {
                eprintln!("dps-operator: {error:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Crds { dirs } if dirs.is_empty() => print!("{}", dps_operator::api::crds_yaml()),
        Command::Crds { dirs } => {
            for dir in dirs {
                for (name, yaml) in dps_operator::api::crd_files() {
                    std::fs::write(dir.join(&name), yaml)?;
                }
            }
        }
        Command::ApiReference => print!("{}", dps_operator::api::reference::markdown()),
        Command::Convert { paths, write } => convert(&paths, write)?,
        Command::Run(args) => {
            dps_operator::telemetry::init(args.log_format, &args.log_filter);
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                namespaces = if args.namespaces.is_empty() { "all".to_owned() } else { args.namespaces.join(",") },
                operator_namespace = %args.operator_namespace,
                leader_election = args.leader_election,
                watch_label_selector = args.watch_label_selector.as_deref().unwrap_or("(all)"),
                "dps-operator starting"
            );
            let client = kube::Client::try_default().await.context("connect to the Kubernetes API server")?;
            let config = config_of(&args)?;
            let leader_election = args.leader_election.then(|| dps_operator::controller::LeaderElection {
                lease_name: dps_operator::controller::lease_name(
                    &args.leader_election_lease,
                    config.watch_label_selector.as_deref(),
                ),
                lease_namespace: config.operator_namespace.clone(),
                identity: args
                    .pod_name
                    .clone()
                    .unwrap_or_else(|| format!("dps-operator-{}", std::process::id())),
            });
            let metrics = dps_operator::metrics::Metrics::new(args.per_enrollment_metrics);
            let health = std::sync::Arc::new(dps_operator::http::Health::new(metrics));
            let health_for_server = health.clone();
            let listener = dps_operator::http::bind(args.metrics_address).await.map_err(|e| {
                anyhow::anyhow!("cannot serve metrics and health probes on {}: {e}", args.metrics_address)
            })?;
            tracing::info!(address = %args.metrics_address, "serving /livez, /readyz and /metrics");
            let server = tokio::spawn(async move {
                if let Err(error) = dps_operator::http::serve(listener, health_for_server).await {
                    tracing::error!(%error, "the metrics and health server stopped");
                }
            });
            if let Some(address) = args.webhook_address {
                let (certificate, key) = (&args.webhook_certificate_file, &args.webhook_key_file);
                dps_operator::admission::start(address, certificate, key, health.stopped()).await?;
            }
            let stopper = health.clone();
            tokio::spawn(async move {
                let _ = dps_operator::signals::shutdown().await;
                tracing::info!("stopping: finishing the reconciles in flight");
                stopper.stop();
            });
            dps_operator::controller::run(client, config, args.namespaces, leader_election, health).await?;
            let _ = server.await;
        }
        #[cfg(feature = "local")]
        Command::Local { examples, namespace } => {
            dps_operator::telemetry::init_on_stderr("warn");
            dps_operator::devenv::run_local(&examples, &namespace).await?
        }
    }
    Ok(())
}
