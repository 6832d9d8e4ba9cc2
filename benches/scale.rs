//! Scale benchmark: N IndividualEnrollments applied at once to a real control plane and reconciled
//! by the `dps-operator` binary (this build's bench profile) against the DPS emulator over HTTPS.
//! It reports the time until all are Ready, DPS calls per enrollment, the operator's memory and
//! CPU, what steady state costs, and the time until all are deleted from DPS.
//!
//!     cargo bench --bench scale -- 1000 [dps-operator run arguments, e.g. --max-concurrent-reconciles 0]
//!
//! `BENCH_KEEP=1` skips deleting them at the end. `BENCH_FAULTS` sets the emulator's faults for the converge phase, as the JSON its
//! `/admin/faults` takes, e.g. `{"errorRates": {"429": 0.04}}`. `BENCH_RATE` (operations a
//! minute, e.g. `1000`, DPS's quota per unit) makes the emulator enforce that rate and sets the
//! connection's `rateLimit` to it; the report then compares the time to converge with the
//! quota-optimal time, one bulk call per ten enrollments at that rate. `BENCH_HEAPTRACK=<dir>`
//! records a heap profile of each operator process with heaptrack (see `docs/benchmarks.md`).
//!
//! Results are recorded in `docs/benchmarks.md`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dps_emulator::{EmulatorConfig, Faults, RunningEmulator};
use dps_operator::{
    api::IndividualEnrollment,
    devenv::{ControlPlane, Tools, run},
};
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};

mod support;

use support::{
    Operator, READS, Sample, WRITES, api_requests, breakdown, connection, requests_since, total_calls, until,
};

const NAMESPACE: &str = "bench";
/// How long steady state is watched for DPS calls and CPU.
const STEADY: Duration = Duration::from_secs(30);
/// Secrets in the namespace that no enrollment uses, each of 256 KiB, like Helm release records.
const UNRELATED_SECRETS: usize = 40;

#[tokio::main]
async fn main() {
    // cargo passes `--bench`; then the count, then arguments for `dps-operator run`.
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    let count: usize = args.first().and_then(|arg| arg.parse().ok()).unwrap_or(500);
    let operator_args = args.get(1..).unwrap_or_default().to_vec();
    let control_plane = Tools::locate().and_then(ControlPlane::start).expect("the control plane starts");
    control_plane.install_crds().expect("the CRDs install");
    let setup = Setup::from_environment();
    let emulator =
        RunningEmulator::start(EmulatorConfig { operations_per_minute: setup.rate, ..Default::default() })
            .await
            .expect("the emulator starts");
    let (watched, applied) = apply_all(&control_plane, &emulator, &setup, count).await;
    let setup = Setup { applied, ..setup };
    let bench =
        Bench { control_plane: &control_plane, emulator: &emulator, watched: &watched, operator_args, count };

    let (operator, converged) = bench.converge(&setup.faults).await;
    // Said at once too: a run too long to finish still leaves its wave on record.
    for (what, value) in convergence_rows(count, &setup, &converged) {
        eprintln!("| {what} | {value} |");
    }
    let steady = bench.steady(&operator).await;
    let (mut operator, restarted) = bench.restart(operator).await;
    // `BENCH_KEEP=1` leaves the enrollments: at 100,000 deleting them all takes longer than the rest.
    let deleted = match std::env::var_os("BENCH_KEEP") {
        Some(_) => None,
        None => Some(bench.delete_all().await),
    };
    operator.stop();
    emulator.stop().await;
    control_plane.stop();

    // The run as a picture: `BENCH_SVG=docs/scale-10000.svg` to keep it with the results.
    let svg_path = std::env::var_os("BENCH_SVG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("dps-operator-scale-{count}.svg")));
    std::fs::write(&svg_path, converged.timeline.svg(count)).expect("the SVG chart is written");
    eprintln!("the run's chart: {}", svg_path.display());

    println!("| | {count} |\n|---|---|");
    for (what, value) in rows(count, &setup, &converged, &steady, &restarted, deleted) {
        println!("| {what} | {value} |");
    }
}

/// What a run is set up with: the emulator's faults while converging (`BENCH_FAULTS`), its rate
/// (`BENCH_RATE`), and how long applying the manifests took.
struct Setup {
    faults: Faults,
    rate: Option<u32>,
    applied: Duration,
}

impl Setup {
    fn from_environment() -> Self {
        let faults = std::env::var("BENCH_FAULTS")
            .map(|json| serde_json::from_str(&json).expect("BENCH_FAULTS is the JSON of emulator faults"))
            .unwrap_or_default();
        let rate =
            std::env::var("BENCH_RATE").ok().map(|r| r.parse().expect("BENCH_RATE is operations a minute"));
        Self { faults, rate, applied: Duration::ZERO }
    }
}

/// The connection, unrelated Secrets and `count` enrollments, applied before the operator starts
/// (this times the operator, not the API server taking in the manifests): a watch of them, and
/// how long the apply took.
async fn apply_all(
    control_plane: &ControlPlane,
    emulator: &RunningEmulator,
    setup: &Setup,
    count: usize,
) -> (Watched, Duration) {
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        run(control_plane.kubectl().args(args), stdin).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    };
    kubectl(&["create", "namespace", NAMESPACE], None);
    kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&connection(emulator, NAMESPACE, setup.rate.unwrap_or(100_000))),
    );
    for i in 0..UNRELATED_SECRETS {
        kubectl(&["apply", "--server-side", "-f", "-"], Some(&unrelated_secret(i)));
    }
    let api: Api<IndividualEnrollment> =
        Api::namespaced(control_plane.client().await.expect("a client"), NAMESPACE);
    let manifests: String = (0..count).map(enrollment).collect();
    let started = Instant::now();
    kubectl(&["apply", "-f", "-"], Some(&manifests));
    let applied = started.elapsed();
    let watched = Watched::start(api);
    until(started, "the bench's watch listed all", async || watched.existing() == count).await;
    (watched, applied)
}

/// What the phases of a run share.
struct Bench<'a> {
    control_plane: &'a ControlPlane,
    emulator: &'a RunningEmulator,
    watched: &'a Watched,
    operator_args: Vec<String>,
    count: usize,
}

/// From the operator's start until every enrollment is Ready.
struct Converged {
    most_ready: Duration,
    all_ready: Duration,
    calls: u64,
    throttled: u64,
    sample: Sample,
    writes: BTreeMap<String, u64>,
    reads: BTreeMap<String, u64>,
    timeline: Timeline,
}

/// Ready enrollments and DPS calls over a run, as polled.
#[derive(Default)]
struct Timeline {
    ready: Vec<(f64, f64)>,
    calls: Vec<(f64, f64)>,
}

impl Timeline {
    fn record(&mut self, at: Duration, ready: usize, calls: u64) {
        self.ready.push((at.as_secs_f64(), ready as f64));
        self.calls.push((at.as_secs_f64(), calls as f64));
    }

    /// The run as an SVG chart: Ready enrollments and DPS calls since the operator started.
    fn svg(&self, count: usize) -> String {
        use dps_operator::devenv::chart::{Chart, Series, grid};
        let chart = |title: &str, name: &str, points: &[(f64, f64)]| Chart {
            title: title.into(),
            x_label: "s".into(),
            series: vec![Series { name: name.into(), points: points.to_vec() }],
            ..Default::default()
        };
        let charts = [
            chart("Ready enrollments", "Ready", &self.ready),
            chart("DPS calls since the operator started", "calls", &self.calls),
        ];
        grid(
            &format!("Scale bench: {count} enrollments, from the operator's start until all are Ready"),
            &charts,
            2,
            480,
            260,
        )
    }
}

/// [`STEADY`] with nothing to do.
struct Steady {
    calls: u64,
    sample: Sample,
}

/// A restart, until every enrollment is checked again.
struct Restarted {
    rechecked: Duration,
    calls: u64,
    sample: Sample,
    writes: BTreeMap<String, u64>,
}

impl Bench<'_> {
    fn kubectl(&self, args: &[&str]) -> String {
        run(self.control_plane.kubectl().args(args), None).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    fn api_server_metrics(&self) -> String {
        self.kubectl(&["get", "--raw", "/metrics"])
    }

    async fn converge(&self, faults: &Faults) -> (Operator, Converged) {
        let (emulator, watched, count) = (self.emulator, self.watched, self.count);
        emulator.reset_calls();
        emulator.set_faults(faults.clone());
        let metrics_before = self.api_server_metrics();
        let (writes_before, reads_before) =
            (api_requests(&metrics_before, WRITES), api_requests(&metrics_before, READS));
        let started = Instant::now();
        let operator = Operator::start(self.control_plane, NAMESPACE, &self.operator_args);
        let mut timeline = Timeline::default();
        let mut most_ready = None;
        until(started, "all Ready", async || {
            let ready = watched.ready();
            timeline.record(started.elapsed(), ready, total_calls(emulator));
            if ready * 10 >= count * 9 {
                most_ready.get_or_insert(started.elapsed());
            }
            ready == count
        })
        .await;
        let (most_ready, all_ready) = (most_ready.unwrap_or_default(), started.elapsed());
        let (calls, throttled, sample) =
            (total_calls(emulator), emulator.calls_answered(429), operator.sample());
        emulator.set_faults(Faults::default());
        let metrics = self.api_server_metrics();
        let writes = requests_since(&writes_before, &metrics, WRITES);
        let reads = requests_since(&reads_before, &metrics, READS);
        (operator, Converged { most_ready, all_ready, calls, throttled, sample, writes, reads, timeline })
    }

    async fn steady(&self, operator: &Operator) -> Steady {
        self.emulator.reset_calls();
        tokio::time::sleep(STEADY).await;
        Steady { calls: total_calls(self.emulator), sample: operator.sample() }
    }

    /// A restart: every enrollment is looked at again, from the drift snapshot, not a GET each.
    async fn restart(&self, mut operator: Operator) -> (Operator, Restarted) {
        operator.stop();
        self.emulator.reset_calls();
        let baseline = api_requests(&self.api_server_metrics(), WRITES);
        let started = Instant::now();
        let operator = Operator::start(self.control_plane, NAMESPACE, &self.operator_args);
        until(started, "every enrollment checked after the restart", async || {
            operator.resources_ready().await == Some(self.count)
        })
        .await;
        let rechecked = started.elapsed();
        let (calls, sample) = (total_calls(self.emulator), operator.sample());
        // Writes that follow the last check (status, events) land within moments of it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let writes = requests_since(&baseline, &self.api_server_metrics(), WRITES);
        (operator, Restarted { rechecked, calls, sample, writes })
    }

    /// Deletes every enrollment: how long until all are gone, and the DPS calls it took.
    async fn delete_all(&self) -> (Duration, u64) {
        self.emulator.reset_calls();
        let started = Instant::now();
        self.kubectl(&["delete", "individualenrollments", "--all", "-n", NAMESPACE, "--wait=false"]);
        until(started, "all deleted", async || self.watched.existing() == 0).await;
        (started.elapsed(), total_calls(self.emulator))
    }
}

/// The results table's rows: the run's setup and its convergence, then what came after.
fn rows(
    count: usize,
    setup: &Setup,
    converged: &Converged,
    steady: &Steady,
    restarted: &Restarted,
    deleted: Option<(Duration, u64)>,
) -> Vec<(String, String)> {
    let mut rows = convergence_rows(count, setup, converged);
    rows.extend(after_rows(converged, steady, restarted, deleted));
    rows
}

fn convergence_rows(count: usize, setup: &Setup, converged: &Converged) -> Vec<(String, String)> {
    let per = |calls: u64| calls as f64 / count as f64;
    vec![
        ("enrollments".to_owned(), count.to_string()),
        (
            "emulator faults while converging".into(),
            format!("`{}`", serde_json::to_string(&setup.faults).unwrap()),
        ),
        (
            "`kubectl apply` of all, before the operator starts".into(),
            format!("{:.1} s", setup.applied.as_secs_f64()),
        ),
        (
            "from the operator's start to 90% Ready".into(),
            format!("{:.1} s", converged.most_ready.as_secs_f64()),
        ),
        (
            "from the operator's start to all created in DPS and Ready".into(),
            format!(
                "{:.1} s ({:.0} per second)",
                converged.all_ready.as_secs_f64(),
                count as f64 / converged.all_ready.as_secs_f64()
            ),
        ),
        (
            "DPS calls to converge / answered 429".into(),
            format!(
                "{} ({:.2} per enrollment) / {}",
                converged.calls,
                per(converged.calls),
                converged.throttled
            ),
        ),
        (
            "DPS rate enforced: converge time against the quota-optimal time".into(),
            match setup.rate {
                Some(rate) => {
                    let optimal = count.div_ceil(10) as f64 * 60.0 / f64::from(rate);
                    format!(
                        "{rate}/min: {:.1} s against {optimal:.1} s ({:.2}×)",
                        converged.all_ready.as_secs_f64(),
                        converged.all_ready.as_secs_f64() / optimal
                    )
                }
                None => "none".into(),
            },
        ),
        (
            "API server writes to converge, per enrollment".into(),
            format!("{:.2} ({})", per(converged.writes.values().sum()), breakdown(&converged.writes)),
        ),
        (
            "API server reads (GET) to converge, per enrollment".into(),
            format!("{:.2} ({})", per(converged.reads.values().sum()), breakdown(&converged.reads)),
        ),
        (
            "operator CPU to converge / per 1,000 enrollments".into(),
            format!(
                "{:.1} s / {:.2} s",
                converged.sample.cpu_seconds,
                converged.sample.cpu_seconds * 1000.0 / count as f64
            ),
        ),
        (
            "operator memory: converged / peak".into(),
            format!("{} / {} MiB", converged.sample.rss_mib, converged.sample.peak_mib),
        ),
    ]
}

fn after_rows(
    converged: &Converged,
    steady: &Steady,
    restarted: &Restarted,
    deleted: Option<(Duration, u64)>,
) -> Vec<(String, String)> {
    vec![
        (
            format!("steady state for {} s: DPS calls / operator CPU", STEADY.as_secs()),
            format!("{} / {:.2} s", steady.calls, steady.sample.cpu_seconds - converged.sample.cpu_seconds),
        ),
        (
            "restart: until every enrollment is checked / DPS calls".into(),
            format!("{:.1} s / {}", restarted.rechecked.as_secs_f64(), restarted.calls),
        ),
        (
            "restart: API server writes".into(),
            format!("{} ({})", restarted.writes.values().sum::<u64>(), breakdown(&restarted.writes)),
        ),
        (
            "restart: operator CPU / memory / peak".into(),
            format!(
                "{:.1} s / {} / {} MiB",
                restarted.sample.cpu_seconds, restarted.sample.rss_mib, restarted.sample.peak_mib
            ),
        ),
        (
            "delete all: until gone from DPS and Kubernetes / DPS calls".into(),
            deleted.map_or("not measured (BENCH_KEEP)".into(), |(took, calls)| {
                format!("{:.1} s / {calls}", took.as_secs_f64())
            }),
        ),
    ]
}

/// The enrollments as a watch sees them: how many exist and how many are Ready. (Listing all of
/// them every poll would load the API server the operator shares the cores with.)
#[derive(Clone, Default)]
struct Watched(Arc<Mutex<HashMap<String, bool>>>);

impl Watched {
    fn start(api: Api<IndividualEnrollment>) -> Self {
        let watched = Self::default();
        let by_name = watched.0.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                // The API server stops before the bench ends; until then, the watch resumes.
                let Ok(event) = event else { continue };
                let mut by_name = by_name.lock().unwrap();
                match event {
                    watcher::Event::Apply(e) | watcher::Event::InitApply(e) => {
                        let ready = e.status.as_ref().is_some_and(|s| {
                            s.enrollment.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                        by_name.insert(e.name_any(), ready);
                    }
                    watcher::Event::Delete(e) => {
                        by_name.remove(&e.name_any());
                    }
                    watcher::Event::Init => by_name.clear(),
                    watcher::Event::InitDone => {}
                }
            }
        });
        watched
    }

    fn ready(&self) -> usize {
        self.0.lock().unwrap().values().filter(|ready| **ready).count()
    }

    fn existing(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A symmetric-key enrollment whose keys the operator generates into a Secret.
fn enrollment(i: usize) -> String {
    format!(
        "---\napiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: device-{i:05}, namespace: {NAMESPACE}}}\n\
         spec:\n  serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: device-{i:05}-keys}}\n  \
         iotHubs: [contoso-west.azure-devices.net]\n  allocationPolicy: static\n  initialTwin:\n    tags: {{batch: bench}}\n"
    )
}

fn unrelated_secret(i: usize) -> String {
    let filler: String = (0..256 * 1024 / 64).map(|n| format!("{n:064}")).collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
        "metadata": {"name": format!("sh.helm.release.v1.app-{i}.v1"), "namespace": NAMESPACE},
        "stringData": {"release": filler},
    })
    .to_string()
}
