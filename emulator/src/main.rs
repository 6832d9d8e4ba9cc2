//! `dps-emulator`: a local Azure IoT Hub Device Provisioning Service (service and device APIs)
//! for development and tests.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use clap::Parser;
use dps_emulator::{
    AccessPolicy, EmulatorConfig, Faults, GivenCertificate, Quotas, RunningEmulator, ServerCertificate,
};

/// A local stand-in for the Azure IoT Hub Device Provisioning Service: its service API, and the
/// device API devices register with.
#[derive(Parser)]
#[command(name = "dps-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443", env = "DPS_EMULATOR_LISTEN")]
    listen: SocketAddr,
    /// Host name clients use (in URLs and SAS tokens); defaults to localhost:<port>, or to the
    /// listen address when that is neither loopback nor 0.0.0.0.
    #[arg(long)]
    host_name: Option<String>,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    http: bool,
    /// Where to write the PEM certificate of the CA that signs the HTTPS certificate.
    #[arg(long, default_value = "dps-emulator-ca.pem")]
    ca_out: PathBuf,
    /// Serve this certificate chain (PEM, leaf first) instead of one from a generated CA, e.g.
    /// one Helm or cert-manager issued; clients trust its CA.
    #[arg(long, requires = "tls_key_file", conflicts_with = "http")]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Name of the shared access policy.
    #[arg(long, default_value = "provisioningserviceowner")]
    policy_name: String,
    /// Primary key of the policy (base64); random when omitted.
    #[arg(long, env = "DPS_EMULATOR_PRIMARY_KEY", hide_env_values = true)]
    primary_key: Option<String>,
    /// Secondary key of the policy (base64); random when omitted.
    #[arg(long, env = "DPS_EMULATOR_SECONDARY_KEY", hide_env_values = true)]
    secondary_key: Option<String>,
    /// The ID scope devices register under (the device API's first path segment).
    #[arg(long, default_value = dps_emulator::DEFAULT_ID_SCOPE)]
    id_scope: String,
    /// PEM certificates to trust for custom allocation webhooks besides the system's roots.
    #[arg(long)]
    webhook_ca_file: Option<PathBuf>,
    /// A CA certificate verified on this DPS, as NAME=PEM_FILE (repeatable): enrollment groups
    /// whose caReferences name it accept devices chaining up to it.
    #[arg(long = "verified-certificate", value_parser = parse_named_file)]
    verified_certificates: Vec<(String, PathBuf)>,
    /// Keep the state in this JSON file so it survives a restart.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Service API calls allowed per minute; more are answered 429 with Retry-After.
    #[arg(long)]
    operations_per_minute: Option<u32>,
    /// An IoT hub linked to this DPS (repeatable); enrollments may only name linked hubs. Any
    /// hub is accepted when none is given.
    #[arg(long = "linked-hub")]
    linked_hubs: Vec<String>,
    /// Enrollment groups allowed per attestation kind.
    #[arg(long, default_value_t = Quotas::default().enrollment_groups_per_attestation)]
    max_enrollment_groups: usize,
    /// Individual enrollments allowed.
    #[arg(long, default_value_t = Quotas::default().individual_enrollments)]
    max_enrollments: usize,
    /// Answer this fraction of calls with this status, as STATUS=RATE, e.g. 503=0.1 (repeatable).
    #[arg(long = "fault-error", value_parser = parse_error_rate)]
    fault_errors: Vec<(u16, f64)>,
    /// Delay every call by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    fault_latency_ms: u64,
    /// Carry out every call, then hold its answer this many milliseconds.
    #[arg(long, default_value_t = 0)]
    fault_answer_delay_ms: u64,
    /// Close this fraction of connections without an answer.
    #[arg(long, default_value_t = 0.0)]
    fault_drop_rate: f64,
    /// Carry out this fraction of calls, then close the connection without the answer.
    #[arg(long, default_value_t = 0.0)]
    fault_lost_answer_rate: f64,
    /// Inject the faults only into this operation, e.g. IndividualEnrollment_CreateOrUpdate
    /// (repeatable); into every call when none is given.
    #[arg(long = "fault-operation")]
    fault_operations: Vec<String>,
    /// Entra ID application id that may get tokens (repeatable); any when none is given.
    #[arg(long = "entra-client-id")]
    entra_client_ids: Vec<String>,
}

fn parse_error_rate(text: &str) -> Result<(u16, f64), String> {
    let (status, rate) = text.split_once('=').ok_or("expected STATUS=RATE, e.g. 503=0.1")?;
    let status: u16 = status.parse().map_err(|_| format!("{status} is not an HTTP status"))?;
    let rate: f64 = rate.parse().map_err(|_| format!("{rate} is not a number"))?;
    if !(400..=599).contains(&status) || !(0.0..=1.0).contains(&rate) {
        return Err("the status must be 400 to 599 and the rate 0 to 1".into());
    }
    Ok((status, rate))
}

fn key(given: Option<String>, name: &str) -> anyhow::Result<Vec<u8>> {
    match given {
        Some(key) => BASE64.decode(key.trim()).with_context(|| format!("--{name} is not valid base64")),
        None => Ok(dps_emulator::random_key().to_vec()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // A key the emulator made is printed for the user; one it was given is not (in a Pod, this
    // output is its log).
    let primary_key_given = args.primary_key.is_some();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let config = EmulatorConfig {
        listen: args.listen,
        tls: !args.http,
        host_name: args.host_name,
        policies: vec![AccessPolicy {
            name: args.policy_name,
            primary_key: key(args.primary_key, "primary-key")?,
            secondary_key: key(args.secondary_key, "secondary-key")?,
        }],
        quotas: Quotas {
            individual_enrollments: args.max_enrollments,
            enrollment_groups_per_attestation: args.max_enrollment_groups,
        },
        linked_hubs: (!args.linked_hubs.is_empty()).then_some(args.linked_hubs),
        operations_per_minute: args.operations_per_minute,
        faults: Faults {
            error_rates: args.fault_errors.into_iter().collect(),
            latency_ms: args.fault_latency_ms,
            answer_delay_ms: args.fault_answer_delay_ms,
            drop_rate: args.fault_drop_rate,
            lost_answer_rate: args.fault_lost_answer_rate,
            operations: args.fault_operations.into_iter().collect(),
        },
        state_file: args.state_file,
        id_scope: args.id_scope,
        webhook_ca_certificates: match &args.webhook_ca_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("could not read {}", path.display()))?,
            ),
            None => None,
        },
        entra_client_ids: (!args.entra_client_ids.is_empty()).then_some(args.entra_client_ids),
        certificate: match (&args.tls_cert_file, &args.tls_key_file) {
            (Some(chain), Some(key)) => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).with_context(|| format!("could not read {}", path.display()))
                };
                let given = GivenCertificate::from_pem(&read(chain)?, &read(key)?)
                    .with_context(|| format!("serving {} with the key {}", chain.display(), key.display()))?;
                ServerCertificate::Given(std::sync::Arc::new(given))
            }
            _ => ServerCertificate::Generated,
        },
    };
    let emulator = RunningEmulator::start(config).await.context("the emulator could not start")?;
    for (name, path) in &args.verified_certificates {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
        emulator
            .verify_certificate(name, &pem)
            .map_err(|error| anyhow::anyhow!("{}: {}", path.display(), error.message))?;
    }
    if let Some(ca) = emulator.ca_certificate() {
        std::fs::write(&args.ca_out, ca)
            .with_context(|| format!("could not write {}", args.ca_out.display()))?;
    }
    println!("DPS emulator listening on {}", emulator.url());
    if primary_key_given {
        let policy = emulator.connection_string();
        let policy = policy.split(";SharedAccessKey=").next().unwrap_or_default();
        println!("Connection string: {policy};SharedAccessKey=<the primary key given>");
    } else {
        println!("Connection string: {}", emulator.connection_string());
    }
    if emulator.ca_certificate().is_some() {
        println!("CA certificate:    {}", args.ca_out.display());
    }
    println!("Device endpoint:   {} (ID scope {})", emulator.url(), emulator.id_scope());
    println!("Admin endpoint:    {}/admin/calls", emulator.url());
    shutdown().await?;
    emulator.stop().await;
    Ok(())
}

fn parse_named_file(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_owned(), path.into())),
        _ => Err(format!("expected NAME=FILE, got '{text}'")),
    }
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
