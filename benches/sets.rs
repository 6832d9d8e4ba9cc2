//! Enrollment sets at scale: M members in S IndividualEnrollmentSets (member lists in ConfigMaps,
//! symmetric keys derived from each set's key, a device keys Secret each), reconciled by the
//! `dps-operator` binary (this build's bench profile) against the DPS emulator over HTTPS on a
//! real control plane. It reports the wave (time, DPS calls per member, against the quota-optimal
//! time), the operator's memory converged and at its peak, steady state, one member changed, a
//! restart, and deleting the sets.
//!
//!     cargo bench --bench sets -- 100000 10
//!     BENCH_RATE=1000 cargo bench --bench sets -- 100000 10
//!
//! `BENCH_RATE` (operations a minute, DPS's quota per unit is 1,000) makes the emulator enforce
//! that rate and sets the connection's `rateLimit` to it. Results are in `docs/benchmarks.md`.

mod support;

use std::time::{Duration, Instant};

use dps_emulator::{EmulatorConfig, RunningEmulator};
use dps_operator::devenv::{ControlPlane, Tools, run};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use support::{Operator, WRITES, api_requests, breakdown, connection, requests_since, total_calls, until};

const NAMESPACE: &str = "sets";
const STEADY: Duration = Duration::from_secs(30);
const READY: &str = r#"dps_operator_enrollment_set_members{namespace="sets",set="#;

struct Bench {
    control_plane: ControlPlane,
    emulator: RunningEmulator,
    members: usize,
    sets: usize,
    rate: Option<u32>,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    let members: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let sets: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let rate: Option<u32> = std::env::var("BENCH_RATE").ok().and_then(|r| r.parse().ok());
    let control_plane = Tools::locate().and_then(ControlPlane::start).expect("the control plane starts");
    control_plane.install_crds().expect("the CRDs install");
    let emulator =
        RunningEmulator::start(EmulatorConfig { operations_per_minute: rate, ..Default::default() })
            .await
            .expect("the emulator starts");
    let bench = Bench { control_plane, emulator, members, sets, rate };
    let applied = bench.apply().await;
    let mut rows = vec![(
        "members in sets, applied before the operator starts".to_owned(),
        format!("{members} in {sets}, {applied:.1?}"),
    )];
    let operator = bench.converge(&mut rows).await;
    bench.steady(&operator, &mut rows).await;
    bench.change_one(&mut rows).await;
    let operator = bench.restart(operator, &mut rows).await;
    bench.delete_all(&mut rows).await;
    drop(operator);
    println!(
        "\n| | {members} members in {sets} sets{} |\n|---|---|",
        rate.map(|r| format!(" at {r} a minute")).unwrap_or_default()
    );
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}

impl Bench {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        run(self.control_plane.kubectl().args(args), stdin)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    fn api_metrics(&self) -> String {
        self.kubectl(&["get", "--raw", "/metrics"], None)
    }

    fn api_writes(&self) -> std::collections::BTreeMap<String, u64> {
        api_requests(&self.api_metrics(), WRITES)
    }

    fn config_maps(&self, client: kube::Client) -> Api<ConfigMap> {
        Api::namespaced(client, NAMESPACE)
    }

    /// The connection, one ConfigMap of members per set (created: too large for client-side
    /// apply's annotation) and the sets.
    async fn apply(&self) -> Duration {
        let started = Instant::now();
        self.kubectl(&["create", "namespace", NAMESPACE], None);
        let rate = self.rate.unwrap_or(100_000);
        self.kubectl(&["apply", "-f", "-"], Some(&connection(&self.emulator, NAMESPACE, rate)));
        let config_maps = self.config_maps(self.control_plane.client().await.unwrap());
        let per_set = self.members / self.sets;
        for set in 0..self.sets {
            let lines: String = (0..per_set).map(|i| format!("fleet-{set}-{i:05},\n")).collect();
            let map: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("fleet-{set}")},
                "data": {"members.csv": format!("registrationId,deviceId\n{lines}")},
            }))
            .unwrap();
            config_maps.create(&PostParams::default(), &map).await.expect("the member list is created");
            let manifest = format!(
                "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollmentSet\nmetadata: {{name: fleet-{set}, namespace: {NAMESPACE}}}\n\
                 spec:\n  serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: fleet-{set}-key}}\n      \
                 deviceKeysSecretName: fleet-{set}-device-keys\n  memberLists:\n  - configMapRef: {{name: fleet-{set}, key: members.csv}}\n  \
                 template: {{iotHubs: [contoso-west.azure-devices.net], initialTwin: {{tags: {{batch: bench}}}}}}\n"
            );
            self.kubectl(&["apply", "-f", "-"], Some(&manifest));
        }
        started.elapsed()
    }

    async fn converge(&self, rows: &mut Vec<(String, String)>) -> Operator {
        self.emulator.reset_calls();
        let writes_before = self.api_writes();
        let started = Instant::now();
        let operator = Operator::start(&self.control_plane, NAMESPACE, &[]);
        let mut peak = 0;
        until(started, "every member in DPS", async || {
            peak = peak.max(operator.sample().rss_mib);
            sum_ready(&operator).await == self.members
        })
        .await;
        let took = started.elapsed();
        let calls = total_calls(&self.emulator);
        let writes = requests_since(&writes_before, &self.api_metrics(), WRITES);
        let sample = operator.sample();
        rows.push(("from the operator's start to every member in DPS".into(), format!("{took:.1?}")));
        rows.push((
            "DPS calls to converge".into(),
            format!(
                "{calls} ({:.3} per member; {} answered 429)",
                calls as f64 / self.members as f64,
                self.emulator.calls_answered(429)
            ),
        ));
        if let Some(rate) = self.rate {
            let optimal = Duration::from_secs_f64(self.members.div_ceil(10) as f64 * 60.0 / f64::from(rate));
            rows.push((
                "against the quota-optimal time (one bulk call per ten members at the rate)".into(),
                format!(
                    "{:.2}× ({took:.1?} against {optimal:.1?})",
                    took.as_secs_f64() / optimal.as_secs_f64()
                ),
            ));
        }
        rows.push(("API server writes to converge".into(), breakdown(&writes)));
        rows.push(("operator CPU to converge".into(), format!("{:.1} s", sample.cpu_seconds)));
        rows.push((
            "operator memory: converged / peak".into(),
            format!("{} / {} MiB", sample.rss_mib, sample.peak_mib.max(peak)),
        ));
        operator
    }

    async fn steady(&self, operator: &Operator, rows: &mut Vec<(String, String)>) {
        self.emulator.reset_calls();
        let before = operator.sample().cpu_seconds;
        tokio::time::sleep(STEADY).await;
        let cpu = operator.sample().cpu_seconds - before;
        rows.push((
            "steady state for 30 s: DPS calls / operator CPU".into(),
            format!("{} / {cpu:.2} s", total_calls(&self.emulator)),
        ));
    }

    /// One member's device id changed in its list: the DPS calls and status writes it costs.
    async fn change_one(&self, rows: &mut Vec<(String, String)>) {
        self.emulator.reset_calls();
        let writes_before = self.api_writes();
        let config_maps = self.config_maps(self.control_plane.client().await.unwrap());
        let map = config_maps.get("fleet-0").await.unwrap();
        let text = map.data.unwrap()["members.csv"].replacen(
            "fleet-0-00000,\n",
            "fleet-0-00000,changed-device\n",
            1,
        );
        let patch = serde_json::json!({"data": {"members.csv": text}});
        config_maps.patch("fleet-0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let started = Instant::now();
        until(started, "the changed member written", async || {
            self.emulator
                .requests()
                .iter()
                .any(|(_, body)| String::from_utf8_lossy(body).contains("changed-device"))
        })
        .await;
        let took = started.elapsed();
        // The status write, if any, follows the write within moments.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let writes = requests_since(&writes_before, &self.api_metrics(), WRITES);
        rows.push((
            "one member changed: until written / DPS calls / API server writes".into(),
            format!(
                "{took:.1?} / {} ({:?}) / {}",
                total_calls(&self.emulator),
                self.emulator.calls(),
                breakdown(&writes)
            ),
        ));
    }

    async fn restart(&self, mut operator: Operator, rows: &mut Vec<(String, String)>) -> Operator {
        operator.stop();
        self.emulator.reset_calls();
        let writes_before = self.api_writes();
        let started = Instant::now();
        let operator = Operator::start(&self.control_plane, NAMESPACE, &[]);
        until(started, "every member confirmed after the restart", async || {
            sum_ready(&operator).await == self.members
        })
        .await;
        let took = started.elapsed();
        let (calls, dps_writes) = (total_calls(&self.emulator), self.emulator.writes("IndividualEnrollment"));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let writes = requests_since(&writes_before, &self.api_metrics(), WRITES);
        let sample = operator.sample();
        rows.push((
            "restart: until every member is confirmed / DPS calls / DPS writes / API server writes".into(),
            format!(
                "{took:.1?} / {calls} / {dps_writes} / {}",
                if writes.is_empty() { "0".into() } else { breakdown(&writes) }
            ),
        ));
        rows.push((
            "restart: operator CPU / memory / peak".into(),
            format!("{:.1} s / {} / {} MiB", sample.cpu_seconds, sample.rss_mib, sample.peak_mib),
        ));
        operator
    }

    async fn delete_all(&self, rows: &mut Vec<(String, String)>) {
        self.emulator.reset_calls();
        let started = Instant::now();
        self.kubectl(
            &["delete", "individualenrollmentsets", "--all", "-n", NAMESPACE, "--timeout=1800s"],
            None,
        );
        let took = started.elapsed();
        rows.push((
            "delete all sets: until their enrollments are gone from DPS / DPS calls".into(),
            format!("{took:.1?} / {}", total_calls(&self.emulator)),
        ));
    }
}

/// Members the operator found in DPS as listed, over all sets.
async fn sum_ready(operator: &Operator) -> usize {
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", operator.port)).await;
    let Ok(metrics) = metrics else { return 0 };
    let text = metrics.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with(READY) && line.contains(r#"state="ready"}"#))
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum::<f64>() as usize
}
