//! Import benchmark: `kubectl dps import` (this build's bench profile) reading a DPS emulator that
//! holds N individual enrollments (half symmetric keys, half TPM) and ten enrollment groups, once
//! without and once with `--with-keys`. It reports, for each, the DPS calls by operation, the time
//! against the time the rate allows, the plugin's peak memory and the size of what it wrote.
//!
//!     cargo bench --bench import -- 10000 [rate, operations a minute; default 1000]
//!
//! Results are recorded in `docs/benchmarks.md`.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use dps_emulator::{EmulatorConfig, RunningEmulator};
use dps_operator::dps::{
    Client, ClientConfig,
    auth::{Authenticator, ConnectionString},
    models::{AttestationMechanism, AttestationType, BulkMode, IndividualEnrollment, TpmAttestation},
    rate_limit::RateLimiter,
};

const PAGE_SIZE: u32 = 100;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    let count: usize = args.first().and_then(|arg| arg.parse().ok()).unwrap_or(10_000);
    let rate: u32 = args.get(1).and_then(|arg| arg.parse().ok()).unwrap_or(1000);
    let emulator = RunningEmulator::start(EmulatorConfig::default()).await.expect("the emulator starts");
    seed(&emulator, count).await;
    let dir = std::env::temp_dir().join(format!("dps-import-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (connection, ca) = (dir.join("connection-string"), dir.join("ca.pem"));
    std::fs::write(&connection, emulator.connection_string()).unwrap();
    std::fs::write(&ca, emulator.ca_certificate().unwrap()).unwrap();

    println!("{count} individual enrollments and 10 enrollment groups, --rate {rate}, pages of {PAGE_SIZE}");
    for with_keys in [false, true] {
        emulator.reset_calls();
        let output = dir.join(format!("imported-{with_keys}.yaml"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-dps"));
        command.args(["import", "--connection", "dps", "-n", "bench", "--page-size", &PAGE_SIZE.to_string()]);
        command.args(["--rate", &rate.to_string(), "-o", output.to_str().unwrap()]);
        command.arg("--connection-string-file").arg(&connection).arg("--ca-file").arg(&ca);
        if with_keys {
            command.arg("--with-keys");
        }
        let started = Instant::now();
        let mut child = command.spawn().expect("kubectl-dps runs");
        // Its peak resident set, as the kernel last reported it before it ended.
        let mut peak_kib = 0;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = started.elapsed();
        assert!(status.success(), "the import failed");
        let bytes = std::fs::metadata(&output).unwrap().len();
        report(&emulator, with_keys, took, rate, count, bytes);
        println!("  peak memory of kubectl-dps {:.0} MiB", peak_kib as f64 / 1024.0);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `count` individual enrollments through the bulk API, and ten symmetric-key groups.
async fn seed(emulator: &RunningEmulator, count: usize) {
    let connection: ConnectionString = emulator.connection_string().parse().unwrap();
    let client = Client::new(ClientConfig {
        host: connection.host_name.clone(),
        authenticator: std::sync::Arc::new(Authenticator::shared_access(connection)),
        rate_limiter: std::sync::Arc::new(RateLimiter::new(1_000_000)),
        extra_root_certificates: emulator.ca_certificate().map(str::to_owned),
        timeout: Duration::from_secs(30),
        resolve: Vec::new(),
        observer: None,
    })
    .unwrap();
    let enrollments: Vec<IndividualEnrollment> = (0..count).map(enrollment).collect();
    let created =
        futures::future::join_all(enrollments.chunks(1000).map(|chunk| client.bulk(BulkMode::Create, chunk)))
            .await;
    assert!(created.iter().all(|r| r.as_ref().is_ok_and(|r| r.is_successful)), "seeded");
    for group in 0..10 {
        let mut record = dps_operator::dps::models::EnrollmentGroup {
            enrollment_group_id: format!("group-{group}"),
            ..Default::default()
        };
        record.attestation.type_ = AttestationType::SymmetricKey;
        record.attestation.symmetric_key = Some(Default::default());
        client.put(&record, dps_operator::dps::IfMatch::None).await.unwrap();
    }
}

fn enrollment(index: usize) -> IndividualEnrollment {
    let mut attestation = AttestationMechanism::default();
    if index.is_multiple_of(2) {
        attestation.type_ = AttestationType::SymmetricKey;
        attestation.symmetric_key = Some(Default::default());
    } else {
        attestation.type_ = AttestationType::Tpm;
        attestation.tpm =
            Some(TpmAttestation { endorsement_key: "AToAAQALAAMAsgAg".into(), storage_root_key: None });
    }
    IndividualEnrollment {
        registration_id: format!("device-{index:06}"),
        attestation,
        iot_hubs: Some(vec!["hub-a.azure-devices.net".into()]),
        ..Default::default()
    }
}

fn report(emulator: &RunningEmulator, with_keys: bool, took: Duration, rate: u32, count: usize, bytes: u64) {
    let calls: BTreeMap<String, u64> = emulator.calls();
    let total: u64 = calls.values().sum();
    // The quota-optimal time: every call at the rate, none wasted.
    let optimal = Duration::from_secs_f64(total as f64 * 60.0 / rate as f64);
    println!("\n{}:", if with_keys { "with --with-keys" } else { "without keys" });
    for (operation, n) in &calls {
        println!("  {operation:<48} {n:>6}");
    }
    println!("  DPS calls {total} ({:.4} per enrollment)", total as f64 / (count + 10) as f64);
    println!(
        "  time {:.1} s; at {rate}/min the calls take at least {:.1} s ({:.2}x)",
        took.as_secs_f64(),
        optimal.as_secs_f64(),
        took.as_secs_f64() / optimal.as_secs_f64().max(0.001)
    );
    println!("  manifests written {:.1} MiB", bytes as f64 / 1_048_576.0);
}
