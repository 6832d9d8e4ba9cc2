//! The chart's Grafana dashboard: checked against Grafana's dashboard schema (the Grafana
//! Foundation SDK's strict decoding, built by `scripts/install-test-tools`), and every panel's
//! query evaluated by a real Prometheus that scraped the operator through an end-to-end run.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use dps_emulator::EmulatorConfig;
use serde_json::{Value, json};
use support::operator::{Operator, PATIENCE};

const DASHBOARD: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dps-operator/dashboards/dps-operator.json");

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap()
}

fn dashboard_check(path: &Path) -> std::process::Output {
    let tools = support::Tools::locate().expect("the test tools");
    Command::new(tools.binary("grafana-dashboard-check")).arg(path).output().expect("the checker runs")
}

#[test]
fn the_dashboard_matches_grafanas_dashboard_schema() {
    let checked = dashboard_check(Path::new(DASHBOARD));
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));

    // The checker is strict: a field Grafana does not know is an error, naming it.
    let mut broken = dashboard();
    broken["panels"][1]["legend"] = json!("bottom");
    let path =
        std::env::temp_dir().join(format!("dps-operator-broken-dashboard-{}.json", std::process::id()));
    std::fs::write(&path, broken.to_string()).unwrap();
    let refused = dashboard_check(&path);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("legend"), "{refused:?}");
}

/// A panel's query: the panel's title, the PromQL and how its series are named.
struct Query {
    panel: String,
    expr: String,
    legend: String,
}

/// Every query of every panel.
fn panel_queries() -> Vec<Query> {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().unwrap();
    let queries: Vec<Query> = panels
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            targets.into_iter().map(move |t| Query {
                panel: title.clone(),
                expr: t["expr"].as_str().unwrap().to_owned(),
                legend: t["legendFormat"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    queries
}

/// The dashboard as charts, one per panel, from `prometheus` since `start` (Unix seconds).
async fn render(prometheus: &Prometheus, start: i64) -> String {
    use dps_operator::devenv::chart::{Chart, Series, grid};
    let end = jiff::Timestamp::now().as_second();
    let mut charts: Vec<Chart> = Vec::new();
    for query in panel_queries() {
        if charts.last().is_none_or(|c| c.title != query.panel) {
            charts.push(Chart { title: query.panel.clone(), x_label: "s".into(), ..Default::default() });
        }
        let result = prometheus.query_range(&query.expr, start, end).await;
        let chart = charts.last_mut().unwrap();
        chart.series.extend(result.iter().map(|series| {
            Series {
                name: legend(&query.legend, &series["metric"]),
                points: series["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| Some((v[0].as_f64()? - start as f64, v[1].as_str()?.parse().ok()?)))
                    .collect(),
            }
        }));
    }
    grid("DPS operator: the dashboard after an end-to-end run", &charts, 3, 420, 230)
}

/// A series name as Grafana makes it from a legend format: `{{label}}` replaced by its value.
fn legend(format: &str, metric: &Value) -> String {
    let mut name = format.to_owned();
    for (label, value) in metric.as_object().into_iter().flatten() {
        name = name.replace(&format!("{{{{{label}}}}}"), value.as_str().unwrap_or_default());
    }
    name
}

/// Prometheus (Debian's, which `scripts/test` installs) scraping `target` every second.
struct Prometheus {
    child: Child,
    url: String,
    _dir: PathBuf,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("dps-operator-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  \
             - job_name: dps-operator\n    static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = dps_operator::devenv::free_port().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs: scripts/test installs it (Debian package prometheus)");
        let prometheus = Self { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        prometheus.until("Prometheus is ready", async |p| p.get("/-/ready").await.is_some()).await;
        prometheus
    }

    async fn get(&self, path: &str) -> Option<String> {
        let answer = reqwest::Client::new().get(format!("{}{path}", self.url)).send().await.ok()?;
        answer.status().is_success().then_some(answer.text().await.ok()?)
    }

    /// The result of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        self.api("query", expr, "").await
    }

    /// The result of a range query from `start` to `end` (Unix seconds), a point a second.
    async fn query_range(&self, expr: &str, start: i64, end: i64) -> Vec<Value> {
        self.api("query_range", expr, &format!("&start={start}&end={end}&step=1")).await
    }

    async fn api(&self, endpoint: &str, expr: &str, parameters: &str) -> Vec<Value> {
        let expr_param = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("{}/api/v1/{endpoint}?query={expr_param}{parameters}", self.url);
        let answer = reqwest::Client::new().get(url).send().await.unwrap();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// How many times it has scraped the operator.
    async fn scrapes(&self) -> u64 {
        let result = self.query("sum(count_over_time(up[10m]))").await;
        result.first().and_then(|s| s["value"][1].as_str()?.parse().ok()).unwrap_or(0)
    }

    async fn until(&self, what: &str, check: impl AsyncFn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !check(self).await {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the panels show: a symmetric-key group with scheduled rotation and a device registered,
/// an X.509 group, individual enrollments created in bulk, and one whose certificate Secret is
/// missing (not Ready).
async fn fleet(operator: &Operator) {
    use dps_operator::pki::CertificateAuthority;
    let ca = CertificateAuthority::new("Contoso Devices CA").unwrap();
    operator.create_secret("devices-ca", &[("tls.crt", &ca.certificate_pem)]).await;
    let mut yaml = String::from(
        "apiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {name: thermostats}\nspec:\n  \
         serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: thermostats-keys}\n      \
         rotation: {every: 2160h}\n---\napiVersion: dps.iot.dev/v1beta1\nkind: EnrollmentGroup\nmetadata: {name: cameras}\n\
         spec:\n  serviceRef: {name: dps}\n  attestation:\n    x509:\n      signingCertificates:\n        \
         primary: {name: devices-ca}\n---\napiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\n\
         metadata: {name: orphan}\nspec:\n  serviceRef: {name: dps}\n  attestation:\n    x509:\n      \
         clientCertificates: {primary: {name: no-such-secret}}\n",
    );
    for i in 0..12 {
        yaml.push_str(&format!(
            "---\napiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: meter-{i}}}\nspec:\n  \
             serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: meter-{i}-keys}}\n"
        ));
    }
    operator.apply(&yaml).await;
    for name in ["enrollmentgroup/thermostats", "enrollmentgroup/cameras", "individualenrollment/meter-11"] {
        operator.wait(name, "condition=Ready").await;
    }
    operator.emulator.add_registration(
        json!({"registrationId": "thermostat-1", "status": "assigned", "assignedHub": "hub-a.azure-devices.net"}),
        Some("thermostats".into()),
    );
}

/// What happens next: devices register, the group's keys rotate, the missing Secret arrives.
async fn day_two(operator: &Operator) {
    for i in 2..6 {
        let state = json!({"registrationId": format!("thermostat-{i}"), "status": "assigned",
            "assignedHub": "hub-a.azure-devices.net"});
        operator.emulator.add_registration(state, Some("thermostats".into()));
    }
    let annotated = operator
        .kubectl(
            &["annotate", "enrollmentgroup/thermostats", "dps.iot.dev/rotate-keys=now", "--overwrite"],
            None,
        )
        .await;
    assert!(annotated.success, "{}", annotated.stderr);
    let ca = dps_operator::pki::CertificateAuthority::new("Contoso Devices CA").unwrap();
    let orphan = ca.issue_client("orphan", None).unwrap();
    operator.create_secret("no-such-secret", &[("tls.crt", &orphan.certificate_pem)]).await;
    operator.wait("individualenrollment/orphan", "condition=Ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_panel_query_returns_data_from_a_prometheus_that_scraped_the_operator() {
    let linked =
        EmulatorConfig { linked_hubs: Some(vec!["hub-a.azure-devices.net".into()]), ..Default::default() };
    let operator = Operator::start_with("dashboard", linked, |_| {}).await;
    operator.wait("provisioningservice/dps", "condition=Ready").await;
    let listener = dps_operator::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(dps_operator::http::serve(listener, operator.health()));
    let prometheus = Prometheus::start(target).await;
    // A scrape before the fleet arrives, so that counters and histograms have a first sample.
    let since = jiff::Timestamp::now().as_second();
    prometheus.until("the operator is scraped", async |p| p.scrapes().await >= 1).await;
    fleet(&operator).await;
    prometheus.until("ten scrapes", async |p| p.scrapes().await >= 10).await;
    day_two(&operator).await;
    prometheus.until("twenty-five scrapes", async |p| p.scrapes().await >= 25).await;

    for Query { panel, expr, .. } in panel_queries() {
        prometheus
            .until(&format!("panel {panel:?} shows a number for {expr}"), async |p| {
                let result = p.query(&expr).await;
                result.iter().any(|sample| {
                    sample["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                })
            })
            .await;
    }

    // The picture in docs/: `DPS_DASHBOARD_SVG=$PWD/docs/dashboard.svg cargo test --test dashboard`.
    let svg = render(&prometheus, since).await;
    for Query { panel, .. } in panel_queries() {
        assert!(svg.contains(&panel.replace('&', "&amp;")), "the picture shows {panel:?}");
    }
    assert!(svg.matches("<polyline").count() >= 15, "a line for each query at least");
    if let Some(path) = std::env::var_os("DPS_DASHBOARD_SVG") {
        std::fs::write(path, svg).unwrap();
    }
}
