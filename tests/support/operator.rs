//! An operator running against the test control plane and a DPS emulator over HTTPS, confined to
//! a namespace of its own so tests can run side by side.

use std::time::Duration;

use dps_emulator::{EmulatorConfig, RunningEmulator};
use dps_operator::{
    controller::{self, config::Config},
    dps,
};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{control_plane, namespace};

pub struct Operator {
    pub namespace: String,
    /// Further namespaces this operator manages (see [`Operator::add_namespace`]).
    pub more_namespaces: Vec<String>,
    pub emulator: RunningEmulator,
    /// A client of the emulator, to look at and change DPS "outside Kubernetes".
    pub dps: dps::Client,
    config: Config,
    task: Option<JoinHandle<()>>,
    /// The health and metrics of the running operator, new at each start.
    health: std::sync::Arc<dps_operator::http::Health>,
}

/// How long the tests wait for the operator to get somewhere.
pub const PATIENCE: Duration = Duration::from_secs(60);

impl Operator {
    /// A namespace with the connection `dps` (a ProvisioningService with the emulator's
    /// connection string and CA), and the operator running on it.
    pub async fn start(prefix: &str) -> Self {
        Self::start_with(prefix, EmulatorConfig::default(), |_| {}).await
    }

    pub async fn start_with(
        prefix: &str,
        emulator: EmulatorConfig,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let namespace = namespace(prefix);
        let emulator = super::dps::emulator(emulator).await;
        let dps = super::dps::client(&emulator);
        let mut config = Config {
            drift_check_interval: Duration::from_secs(3),
            operator_namespace: namespace.clone(),
            dps_timeout: Duration::from_secs(5),
            ..Config::default()
        };
        configure(&mut config);
        let operator = Self {
            namespace,
            more_namespaces: Vec::new(),
            emulator,
            dps,
            config,
            task: None,
            health: Default::default(),
        };
        operator.add_connection(&operator.namespace).await;
        let mut operator = operator;
        operator.restart();
        operator
    }

    /// Another namespace, with the same connection `dps`, managed by this operator too (it is
    /// restarted to watch it).
    pub async fn add_namespace(&mut self) -> String {
        let namespace = namespace(&format!("{}-more", self.namespace));
        self.add_connection(&namespace).await;
        self.more_namespaces.push(namespace.clone());
        self.restart();
        namespace
    }

    /// The connection `dps` to the emulator in `namespace`: its Secrets and ProvisioningService.
    async fn add_connection(&self, namespace: &str) {
        let in_namespace = |mut args: Vec<String>| {
            args.extend(["-n".to_owned(), namespace.to_owned()]);
            args
        };
        let secrets = [
            ("dps-connection", "connectionString", self.emulator.connection_string()),
            ("dps-ca", "ca.crt", self.emulator.ca_certificate().unwrap().to_owned()),
        ];
        for (name, key, value) in secrets {
            let args = in_namespace(
                ["create", "secret", "generic", name, &format!("--from-literal={key}={value}")]
                    .map(str::to_owned)
                    .to_vec(),
            );
            let output = tokio::task::spawn_blocking(move || {
                super::kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>(), None)
            })
            .await
            .unwrap();
            assert!(output.success, "{}", output.stderr);
        }
        let args = in_namespace(["apply", "-f", "-"].map(str::to_owned).to_vec());
        let output = tokio::task::spawn_blocking(move || {
            super::kubectl(
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                Some(&format!(
                    "{}  rateLimit: {{operationsPerMinute: 6000}}
",
                    connection("dps", "dps-connection")
                )),
            )
        })
        .await
        .unwrap();
        assert!(output.success, "{}", output.stderr);
    }

    /// Starts the operator (again), as a process restart would.
    pub fn restart(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let config = self.config.clone();
        let namespaces: Vec<String> =
            std::iter::once(self.namespace.clone()).chain(self.more_namespaces.iter().cloned()).collect();
        self.health = Default::default();
        let health = self.health.clone();
        self.task = Some(tokio::spawn(async move {
            let client = control_plane().client().await.expect("a client");
            if let Err(error) = controller::run(client, config, namespaces, None, health).await {
                panic!("the operator stopped: {error}");
            }
        }));
    }

    /// The health and metrics of the running operator, to serve them as the binary does.
    pub fn health(&self) -> std::sync::Arc<dps_operator::http::Health> {
        self.health.clone()
    }

    /// A reconcile context like the running operator's, to drive reconciles by hand.
    pub async fn context(&self) -> std::sync::Arc<controller::context::Context> {
        let client = control_plane().client().await.expect("a client");
        let health = std::sync::Arc::new(dps_operator::http::Health::default());
        let mut ctx = controller::context::Context::new(client.clone(), self.config.clone(), health);
        ctx.digest_key =
            controller::secrets::load_digest_key(&client, &self.config.operator_namespace).await.unwrap();
        std::sync::Arc::new(ctx)
    }

    /// Stops the operator, as a crash would.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> super::Output {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["-n".to_owned(), self.namespace.clone()]);
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            super::kubectl(&args, stdin.as_deref())
        })
        .await
        .unwrap()
    }

    /// Applies YAML in the namespace with plain `kubectl apply -f` (client-side), as most users and
    /// Argo CD do.
    pub async fn apply(&self, yaml: &str) {
        let output = self.kubectl(&["apply", "-f", "-"], Some(yaml)).await;
        assert!(output.success, "kubectl apply failed: {}\n{yaml}", output.stderr);
    }

    pub async fn create_secret(&self, name: &str, data: &[(&str, &str)]) {
        let mut args = vec!["create", "secret", "generic", name];
        let literals: Vec<String> = data.iter().map(|(k, v)| format!("--from-literal={k}={v}")).collect();
        args.extend(literals.iter().map(String::as_str));
        let output = self.kubectl(&args, None).await;
        assert!(output.success, "{}", output.stderr);
    }

    /// `kubectl get <resource> -o json`.
    pub async fn get(&self, resource: &str) -> Value {
        let output = self.kubectl(&["get", resource, "-o", "json"], None).await;
        assert!(output.success, "{}", output.stderr);
        serde_json::from_str(&output.stdout).unwrap()
    }

    /// Waits with `kubectl wait`, as a user or a CI pipeline would.
    pub async fn wait(&self, resource: &str, condition: &str) {
        let timeout = format!("--timeout={}s", PATIENCE.as_secs());
        let output = self.kubectl(&["wait", resource, &format!("--for={condition}"), &timeout], None).await;
        if !output.success {
            let state = self.kubectl(&["get", resource, "-o", "yaml"], None).await;
            panic!("{resource} never met {condition}: {}\n{}", output.stderr, state.stdout);
        }
    }

    /// Waits until `check` holds for the resource's JSON.
    pub async fn eventually(&self, resource: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let output = self.kubectl(&["get", resource, "-o", "json"], None).await;
            if output.success {
                let value: Value = serde_json::from_str(&output.stdout).unwrap();
                if check(&value) {
                    return value;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "{resource}: timed out waiting until {what}; last seen:\n{}",
                        serde_json::to_string_pretty(&value).unwrap()
                    );
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("{resource}: timed out waiting until {what}: {}", output.stderr);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The value of one sample of the running operator's metrics, as `/metrics` shows it, e.g.
    /// `dps_operator_resources{kind="IndividualEnrollment",ready="true"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_of(&self.health, sample)
    }

    /// Another operator on this one's namespaces and DPS, reconciling only the enrollments
    /// `selector` selects (`--watch-label-selector`): a shard. It stops when dropped.
    pub fn start_shard(&self, selector: &str) -> Shard {
        let config = Config { watch_label_selector: Some(selector.to_owned()), ..self.config.clone() };
        let namespaces: Vec<String> =
            std::iter::once(self.namespace.clone()).chain(self.more_namespaces.iter().cloned()).collect();
        let health: std::sync::Arc<dps_operator::http::Health> = Default::default();
        let running = health.clone();
        let task = tokio::spawn(async move {
            let client = control_plane().client().await.expect("a client");
            if let Err(error) = controller::run(client, config, namespaces, None, running).await {
                panic!("the shard stopped: {error}");
            }
        });
        Shard { task, health }
    }

    /// Waits until the running operator's metric `sample` has the value `want`.
    pub async fn eventually_metric(&self, sample: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.metric(sample) != Some(want) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} is {:?}, not {want}, after {PATIENCE:?}",
                self.metric(sample)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until DPS (the emulator) satisfies `check`.
    pub async fn eventually_dps<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut(&dps::Client) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(value) = check(&self.dps).await {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until an event about `name` satisfies `check`; answers it and all events so far.
    pub async fn eventually_event(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&(String, String, String)) -> bool,
    ) -> ((String, String, String), Vec<(String, String, String)>) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let events = self.events(name).await;
            if let Some(event) = events.iter().find(|e| check(e)).cloned() {
                return (event, events);
            }
            assert!(tokio::time::Instant::now() < deadline, "{name}: no event {what}: {events:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Events about an object, as `kubectl get events` shows them: (type, reason, message).
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let output = self
            .kubectl(
                &[
                    "get",
                    "events.events.k8s.io",
                    "--field-selector",
                    &format!("regarding.name={name}"),
                    "-o",
                    "json",
                ],
                None,
            )
            .await;
        let list: Value = serde_json::from_str(&output.stdout).unwrap_or_default();
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (text("type"), text("reason"), text("note"))
            })
            .collect()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ProvisioningService `name` with the connection string in Secret `secret` (key
/// `connectionString`) and the emulator's CA from Secret `dps-ca`.
pub fn connection(name: &str, secret: &str) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: ProvisioningService\nmetadata: {{name: {name}}}\nspec:\n  \
         credentials:\n    connectionStringSecretRef: {{name: {secret}, key: connectionString}}\n  caBundle:\n    \
         secretRef: {{name: dps-ca, key: ca.crt}}\n"
    )
}

/// The status condition `type_` of a resource's JSON: (status, reason, message).
pub fn condition(resource: &Value, type_: &str) -> Option<(String, String, String)> {
    resource["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        (text("status"), text("reason"), text("message"))
    })
}

pub fn is_ready(resource: &Value) -> bool {
    condition(resource, "Ready").is_some_and(|(status, _, _)| status == "True")
        && resource["status"]["observedGeneration"] == resource["metadata"]["generation"]
}

/// One sample of the metrics of an operator's `health`.
fn metric_of(health: &dps_operator::http::Health, sample: &str) -> Option<f64> {
    health
        .metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A second operator, a shard (see [`Operator::start_shard`]).
pub struct Shard {
    task: JoinHandle<()>,
    health: std::sync::Arc<dps_operator::http::Health>,
}

impl Shard {
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_of(&self.health, sample)
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
