//! The `dps-operator run` process: its endpoints, its metrics, a graceful shutdown, and leader
//! election between two replicas. (A test binary of its own: processes and a Lease.)

mod support;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::operator::Operator;

const GROUP: &str = "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {name: thermostats}\nspec:\n  serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: thermostats-keys}\n";

fn free_port() -> u16 {
    dps_operator::devenv::free_port().unwrap()
}

/// A `dps-operator run` process on the test namespace; its endpoints on `port`.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn start(operator: &Operator, identity: Option<&str>) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_dps-operator"));
        command
            .args(["run", "--namespace", &operator.namespace, "--operator-namespace", &operator.namespace])
            .args(["--metrics-address", &format!("127.0.0.1:{port}"), "--drift-check-interval", "3s"])
            .env("KUBECONFIG", support::control_plane().kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(identity) = identity {
            command.args(["--leader-election", "--pod-name", identity]);
        }
        Self { child: command.spawn().expect("dps-operator run starts"), port }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port)).await.ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    }

    async fn until(&self, path: &str, what: &str, check: impl Fn(u16, &str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((status, body)) = self.get(path).await
                && check(status, &body)
            {
                return body;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn signal(&self, signal: &str) {
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the process to exit, and returns whether it exited successfully.
    async fn exited(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "the process did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric line `name{labels} value`, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_metrics_and_a_graceful_shutdown() {
    let mut operator = Operator::start("process").await;
    operator.stop();
    let mut process = Process::start(&operator, None);
    process.until("/livez", "/livez answers", |status, _| status == 200).await;
    process
        .until("/readyz", "/readyz turns ready once the watches have listed", |status, _| status == 200)
        .await;

    operator.apply(GROUP).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    let text = process
        .until("/metrics", "the metrics show the group", |_, text| {
            metric(text, r#"dps_operator_resources{kind="EnrollmentGroup",ready="true"}"#) == Some(1.0)
        })
        .await;
    assert!(
        metric(&text, r#"dps_operator_reconciles_total{kind="EnrollmentGroup",result="success"}"#).unwrap()
            >= 1.0
    );
    // A new group is created by a bulk call, after a query found it missing.
    let host = operator.emulator.host_name();
    let requests = |operation: &str| {
        let labels = format!(r#"host="{host}",operation="{operation}",status_class="2xx""#);
        metric(&text, &format!("dps_operator_dps_requests_total{{{labels}}}"))
    };
    let dps_lines: Vec<&str> =
        text.lines().filter(|l| l.starts_with("dps_operator_dps_requests_total")).collect();
    assert_eq!(requests("POST enrollmentGroups"), Some(1.0), "{dps_lines:?}");
    assert!(requests("POST enrollmentGroups/query").is_some_and(|n| n >= 1.0), "{dps_lines:?}");
    assert!(
        metric(
            &text,
            r#"dps_operator_dps_request_duration_seconds_count{operation="POST enrollmentGroups/query"}"#
        )
        .is_some()
    );
    assert_eq!(metric(&text, "dps_operator_bulk_batch_size_count"), Some(1.0), "one bulk call");
    let limit = format!(r#"dps_operator_connection_rate_limit{{host="{host}"}}"#);
    assert!(metric(&text, &limit).is_some_and(|per_minute| per_minute >= 1.0), "{limit}");
    let reason = r#"dps_operator_resources_by_reason{kind="EnrollmentGroup",ready="true",reason="Synced"}"#;
    assert_eq!(metric(&text, reason), Some(1.0), "{reason}");
    let connection =
        r#"dps_operator_resources_by_reason{kind="ProvisioningService",ready="true",reason="Connected"}"#;
    assert_eq!(metric(&text, connection), Some(1.0), "{connection}");
    assert!(
        text.contains("dps_operator_reconcile_duration_seconds_bucket")
            && text.contains("dps_operator_rate_limiter_wait_seconds")
    );
    // Only the per-enrollment series name objects: here the age of the generated group key.
    let per_enrollment = [
        "dps_operator_key_age_seconds",
        "dps_operator_key_rotation_due_seconds",
        "dps_operator_certificate_expiry_seconds",
        "dps_operator_registrations",
    ];
    let named: Vec<&str> = text.lines().filter(|l| l.contains("thermostats")).collect();
    assert!(named.iter().all(|l| per_enrollment.iter().any(|p| l.starts_with(p))), "{named:?}");
    assert!(named.iter().any(|l| l.starts_with("dps_operator_key_age_seconds{")), "{named:?}");

    process.signal("TERM");
    assert!(process.exited(Duration::from_secs(10)).await, "a clean exit after SIGTERM");
}

async fn lease_holder(operator: &Operator) -> Option<String> {
    let output = operator
        .kubectl(&["get", "lease", "dps-operator", "-o", "jsonpath={.spec.holderIdentity}"], None)
        .await;
    (output.success && !output.stdout.is_empty()).then_some(output.stdout)
}

async fn holder_becomes(operator: &Operator, expected: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while lease_holder(operator).await.as_deref() != Some(expected) {
        assert!(started.elapsed() < within, "{expected} did not take the Lease within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_writes_and_another_replica_takes_over() {
    let mut operator = Operator::start("leader").await;
    operator.stop();
    let first = Process::start(&operator, Some("replica-a"));
    holder_becomes(&operator, "replica-a", Duration::from_secs(30)).await;
    let mut second = Process::start(&operator, Some("replica-b"));
    second.until("/readyz", "the standby is ready too", |status, _| status == 200).await;

    operator.apply(GROUP).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    let standby = second.get("/metrics").await.unwrap().1;
    let writes: Vec<&str> = standby
        .lines()
        .filter(|l| {
            l.starts_with(r#"dps_operator_dps_requests_total{operation="PUT "#)
                || l.starts_with(r#"dps_operator_dps_requests_total{operation="POST enrollmentGroups","#)
        })
        .collect();
    assert!(writes.is_empty(), "the standby never writes: {writes:?}");

    // The leader dies: the standby takes over within 20 seconds and carries on.
    first.signal("KILL");
    let took = holder_becomes(&operator, "replica-b", Duration::from_secs(20)).await;
    eprintln!("takeover after a kill: {took:?}");
    operator.apply(&format!("{GROUP}  iotEdge: true\n")).await;
    operator
        .eventually_dps("the new leader writes", async |dps| {
            let group: dps_operator::dps::models::EnrollmentGroup = dps.get("thermostats").await.ok()?;
            group.capabilities?.iot_edge.then_some(())
        })
        .await;

    // A graceful stop hands over within 5 seconds.
    let third = Process::start(&operator, Some("replica-c"));
    third.until("/readyz", "the new standby is ready", |status, _| status == 200).await;
    second.signal("TERM");
    let took = holder_becomes(&operator, "replica-c", Duration::from_secs(5)).await;
    eprintln!("handover after SIGTERM: {took:?}");
    assert!(second.exited(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metrics_address_in_use_stops_the_start_with_a_clear_error() {
    let mut operator = Operator::start("bind").await;
    operator.stop();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let args = ["--namespace", &operator.namespace, "--operator-namespace", &operator.namespace];
    let (success, stdout, stderr) = run_to_exit(
        support::control_plane().kubeconfig(),
        &[&args[..], &["--metrics-address", &address]].concat(),
    )
    .await;
    assert!(!success, "runs on without /livez and /metrics: {stdout}{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains("dps-operator stopped") && last.contains(&address),
        "the last log line names the address: {stdout}"
    );
}

/// `dps-operator run` with these arguments and kubeconfig until it exits: (success, stdout, stderr).
async fn run_to_exit(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let (kubeconfig, args): (std::path::PathBuf, Vec<String>) =
        (kubeconfig.to_owned(), args.iter().map(|a| a.to_string()).collect());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_dps-operator"))
            .arg("run")
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("dps-operator run starts")
    })
    .await
    .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_says_what_it_does_and_a_fatal_error_is_one_line_that_points_at_the_cause() {
    let operator = Operator::start("startup").await;
    let rejected = support::control_plane().token_kubeconfig("startup-bad-token", "not-a-token").unwrap();
    let namespace = operator.namespace.clone();

    let (success, stdout, stderr) = run_to_exit(
        &rejected,
        &["--namespace", &namespace, "--log-format", "json", "--metrics-address", "127.0.0.1:0"],
    )
    .await;
    assert!(!success, "a 401 at start is fatal");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}")))
        .collect();
    let starting = lines.iter().find(|l| l["message"] == "dps-operator starting").expect("a start line");
    assert_eq!(starting["level"], "INFO");
    assert_eq!(starting["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(starting["namespaces"], namespace.as_str());
    let stopped = lines.last().unwrap();
    assert_eq!(
        (stopped["level"].as_str(), stopped["message"].as_str()),
        (Some("ERROR"), Some("dps-operator stopped"))
    );
    let error = stopped["error"].as_str().unwrap();
    assert!(error.contains("did not accept the operator's credentials"), "{error}");
    assert!(!error.contains("CRDs"), "no hint about CRDs for a 401: {error}");
    assert!(!stderr.contains("backtrace") && !stdout.contains("backtrace"), "no backtrace: {stderr}");
    assert!(stderr.trim().is_empty(), "nothing outside the JSON log: {stderr}");

    // Plain logs into a pipe carry no terminal colours.
    let (_, stdout, _) =
        run_to_exit(&rejected, &["--namespace", &namespace, "--metrics-address", "127.0.0.1:0"]).await;
    assert!(stdout.contains("dps-operator stopped"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "ANSI escapes in a pipe: {stdout:?}");
}
