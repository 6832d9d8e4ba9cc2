//! What the benchmarks share: the `dps-operator` process and its memory and CPU, the
//! connection to the emulator, and the API server's request counts.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dps_emulator::RunningEmulator;
use dps_operator::devenv::ControlPlane;

/// The requests that write.
pub const WRITES: &[&str] = &["POST", "PUT", "PATCH", "APPLY", "DELETE"];
/// Reads of one object (the bench itself only lists).
pub const READS: &[&str] = &["GET"];

/// The API server's count of `verbs` requests so far, by resource (and subresource), from its
/// `apiserver_request_total` metric.
pub fn api_requests(metrics: &str, verbs: &[&str]) -> BTreeMap<String, u64> {
    let mut writes = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
        };
        // Leases are the operator's leader election; endpoints the API server's own bookkeeping.
        let skipped = ["leases", "endpoints", "endpointslices"].contains(&label("resource"));
        if !verbs.contains(&label("verb")) || skipped {
            continue;
        }
        let resource = match label("subresource") {
            "" => label("resource").to_owned(),
            sub => format!("{}/{sub}", label("resource")),
        };
        *writes.entry(resource).or_default() += value.parse::<f64>().unwrap_or_default() as u64;
    }
    writes
}

pub fn requests_since(
    before: &BTreeMap<String, u64>,
    metrics: &str,
    verbs: &[&str],
) -> BTreeMap<String, u64> {
    api_requests(metrics, verbs)
        .into_iter()
        .map(|(resource, n)| (n - before.get(&resource).copied().unwrap_or_default(), resource))
        .filter(|(n, _)| *n > 0)
        .map(|(n, resource)| (resource, n))
        .collect()
}

pub fn breakdown(writes: &BTreeMap<String, u64>) -> String {
    writes.iter().map(|(resource, n)| format!("{resource} {n}")).collect::<Vec<_>>().join(", ")
}

/// Waits, polling, until `done`; gives up after half an hour.
pub async fn until(started: Instant, what: &str, mut done: impl AsyncFnMut() -> bool) {
    while !done().await {
        assert!(started.elapsed() < Duration::from_secs(1800), "not {what} after 30 minutes");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn total_calls(emulator: &RunningEmulator) -> u64 {
    emulator.calls().values().sum()
}

/// A `dps-operator run` process.
pub struct Operator {
    pub child: Child,
    pub port: u16,
}

impl Operator {
    pub fn start(control_plane: &ControlPlane, namespace: &str, args: &[String]) -> Self {
        let port = dps_operator::devenv::free_port().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_dps-operator"));
        // A heap profile of the operator alone: heaptrack's preload library, its raw output in
        // the directory given, one file per process.
        if let Ok(directory) = std::env::var("BENCH_HEAPTRACK") {
            command
                .env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env("DUMP_HEAPTRACK_OUTPUT", format!("{directory}/operator.{port}.raw"));
        }
        let child = command
            .args(["run", "--namespace", namespace, "--operator-namespace", namespace])
            .args(["--metrics-address", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", control_plane.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("dps-operator run starts");
        Self { child, port }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How many IndividualEnrollments the operator has found Ready since it started.
    pub async fn resources_ready(&self) -> Option<usize> {
        let ready = r#"dps_operator_resources{kind="IndividualEnrollment",ready="true"}"#;
        self.metric_sum(ready).await.map(|sum| sum as usize)
    }

    /// The sum of the operator's metric samples whose name and labels start with `prefix`.
    pub async fn metric_sum(&self, prefix: &str) -> Option<f64> {
        let metrics =
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port)).await.ok()?.text().await.ok()?;
        let values: Vec<f64> = metrics
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    pub fn sample(&self) -> Sample {
        Sample::take(self.child.id())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The connection `dps`, without a practical rate limit: this measures the operator, not the
/// pacing a real DPS needs (`rateLimit` defaults to 200 operations a minute).
pub fn connection(emulator: &RunningEmulator, namespace: &str, operations_per_minute: u32) -> String {
    let secret = |name: &str, key: &str, value: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}, "stringData": {key: value},
        })
        .to_string()
    };
    [
        secret("dps-connection", "connectionString", &emulator.connection_string()),
        secret("dps-ca", "ca.crt", emulator.ca_certificate().unwrap_or_default()),
        format!(
            "apiVersion: dps.iot.dev/v1beta1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: {namespace}}}\n\
             spec:\n  credentials:\n    connectionStringSecretRef: {{name: dps-connection, key: connectionString}}\n  \
             caBundle:\n    secretRef: {{name: dps-ca, key: ca.crt}}\n  rateLimit: {{operationsPerMinute: {operations_per_minute}}}\n"
        ),
    ]
    .join("\n---\n")
}

/// The operator process's CPU time so far and its memory.
pub struct Sample {
    pub cpu_seconds: f64,
    pub rss_mib: u64,
    pub peak_mib: u64,
}

impl Sample {
    pub fn take(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|line| {
                    line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
                })
                .unwrap_or_default()
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
        // Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or_default() + fields[12].parse::<u64>().unwrap_or_default();
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .unwrap_or(100.0);
        Self {
            cpu_seconds: ticks as f64 / ticks_per_second,
            rss_mib: kib("VmRSS:") / 1024,
            peak_mib: kib("VmHWM:") / 1024,
        }
    }
}
