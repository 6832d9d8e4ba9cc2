//! Prometheus metrics. Only [`per_enrollment`] labels series by enrollment (and can be turned
//! off); every other metric has bounded labels.

mod per_enrollment;

pub use per_enrollment::{EnrollmentFacts, EnrollmentLabels, PerEnrollment};

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: String,
    /// `success` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    /// The condition reason, e.g. `SecretNotFound`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The DPS host.
    pub host: String,
    /// Method and path with ids removed, e.g. `PUT enrollmentGroups/{id}`.
    pub operation: String,
    /// `2xx`, `4xx`, `5xx`, or `error` when no answer came.
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub kind: String,
    /// `true` or `false`.
    pub ready: String,
    /// The Ready condition's reason, e.g. `Synced` or `SecretNotFound`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub kind: String,
    /// `true` or `false`.
    pub ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabels {
    pub namespace: String,
    /// The IndividualEnrollmentSet's name.
    pub set: String,
    /// `ready`, `pending`, `failed` or `conflicts`.
    pub state: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram>,
    dps_requests: Family<RequestLabels, Counter>,
    dps_request_duration: Family<OperationLabels, Histogram>,
    dps_throttled: Counter,
    rate_limiter_wait: Histogram,
    resources: Family<ReadyLabels, Gauge>,
    resources_by_reason: Family<ReasonLabels, Gauge>,
    rate_limits: Family<HostLabels, Gauge>,
    bulk_batch_size: Histogram,
    set_members: Family<SetLabels, Gauge>,
    per_enrollment: std::sync::Arc<PerEnrollment>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Metrics {
    /// `per_enrollment`: whether to export the series labelled by enrollment ([`per_enrollment`]).
    pub fn new(per_enrollment: bool) -> Self {
        let mut registry = Registry::with_prefix("dps_operator");
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            dps_requests: Family::default(),
            dps_request_duration: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            dps_throttled: Counter::default(),
            rate_limiter_wait: Histogram::new(seconds_buckets()),
            resources: Family::default(),
            resources_by_reason: Family::default(),
            rate_limits: Family::default(),
            bulk_batch_size: Histogram::new([1.0, 2.0, 3.0, 5.0, 8.0, 10.0]),
            set_members: Family::default(),
            per_enrollment: std::sync::Arc::new(PerEnrollment::new(per_enrollment)),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles by kind and result", metrics.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind and reason",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "dps_requests",
            "DPS service API requests by operation and status class",
            metrics.dps_requests.clone(),
        );
        registry.register(
            "dps_request_duration_seconds",
            "How long DPS service API requests take",
            metrics.dps_request_duration.clone(),
        );
        registry.register(
            "dps_throttled",
            "DPS requests answered 429 (throttled)",
            metrics.dps_throttled.clone(),
        );
        registry.register(
            "rate_limiter_wait_seconds",
            "How long DPS requests waited for the per-host rate limiter",
            metrics.rate_limiter_wait.clone(),
        );
        registry.register("resources", "Resources by kind and Ready state", metrics.resources.clone());
        registry.register(
            "resources_by_reason",
            "Resources by kind, Ready state and the Ready condition's reason",
            metrics.resources_by_reason.clone(),
        );
        registry.register(
            "connection_rate_limit",
            "Operations a minute the operator keeps to for each DPS host (its connections' rateLimit)",
            metrics.rate_limits.clone(),
        );
        registry.register(
            "bulk_batch_size",
            "Items carried by each DPS bulk call",
            metrics.bulk_batch_size.clone(),
        );
        registry.register(
            "enrollment_set_members",
            "Members of each IndividualEnrollmentSet by state, as its last pass found them",
            metrics.set_members.clone(),
        );
        registry.register_collector(Box::new(metrics.per_enrollment.clone()));
        Self { registry, ..metrics }
    }

    /// The series labelled by enrollment.
    pub fn per_enrollment(&self) -> &PerEnrollment {
        &self.per_enrollment
    }

    pub fn reconciled(&self, kind: &str, duration: Duration, error_reason: Option<&str>) {
        let result = if error_reason.is_some() { "error" } else { "success" };
        self.reconciles.get_or_create(&ReconcileLabels { kind: kind.into(), result: result.into() }).inc();
        if let Some(reason) = error_reason {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { kind: kind.into(), reason: reason.into() })
                .inc();
        }
        self.reconcile_duration
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(duration.as_secs_f64());
    }

    /// Records that an object's Ready state and reason went from `previous` to `now` (`None`:
    /// not seen, or gone). Whoever calls remembers each object's last state.
    pub fn ready_changed(&self, kind: &str, previous: Option<(bool, &str)>, now: Option<(bool, &str)>) {
        if previous != now {
            let gauge = |(ready, reason): (bool, &str)| {
                let labels =
                    ReasonLabels { kind: kind.into(), ready: ready.to_string(), reason: reason.into() };
                self.resources_by_reason.get_or_create(&labels).clone()
            };
            previous.map(|p| gauge(p).dec());
            now.map(|n| gauge(n).inc());
        }
        self.ready_count_changed(kind, previous.map(|p| p.0), now.map(|n| n.0));
    }

    fn ready_count_changed(&self, kind: &str, previous: Option<bool>, ready: Option<bool>) {
        // Both series exist as soon as the kind is seen, so a count of 0 shows as 0.
        for series in [true, false] {
            let gauge =
                self.resources.get_or_create(&ReadyLabels { kind: kind.into(), ready: series.to_string() });
            if previous == Some(series) && ready != Some(series) {
                gauge.dec();
            }
            if ready == Some(series) && previous != Some(series) {
                gauge.inc();
            }
        }
    }

    /// Records the members of set `namespace/set` by state; `None`: the set is gone.
    pub fn set_members(&self, namespace: &str, set: &str, counts: Option<&crate::api::MemberCounts>) {
        let values = counts.map(|c| [c.ready, c.pending, c.failed, c.conflicts]);
        for (index, state) in ["ready", "pending", "failed", "conflicts"].into_iter().enumerate() {
            let labels = SetLabels { namespace: namespace.into(), set: set.into(), state: state.into() };
            match values {
                Some(values) => drop(self.set_members.get_or_create(&labels).set(i64::from(values[index]))),
                None => drop(self.set_members.remove(&labels)),
            }
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl crate::dps::RequestObserver for Metrics {
    fn request(&self, host: &str, operation: &str, status: Option<u16>, duration: Duration) {
        let status_class = status.map_or_else(|| "error".to_owned(), |s| format!("{}xx", s / 100));
        let labels = RequestLabels { host: host.into(), operation: operation.into(), status_class };
        self.dps_requests.get_or_create(&labels).inc();
        self.dps_request_duration
            .get_or_create(&OperationLabels { operation: operation.into() })
            .observe(duration.as_secs_f64());
        if status == Some(429) {
            self.dps_throttled.inc();
        }
    }

    fn waited(&self, duration: Duration) {
        self.rate_limiter_wait.observe(duration.as_secs_f64());
    }

    fn bulk_sent(&self, items: usize) {
        self.bulk_batch_size.observe(items as f64);
    }

    fn rate_limit(&self, host: &str, per_minute: u32) {
        self.rate_limits.get_or_create(&HostLabels { host: host.into() }).set(per_minute.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dps::RequestObserver;

    #[test]
    fn metrics_are_exported_with_bounded_labels() {
        let metrics = Metrics::default();
        metrics.reconciled("EnrollmentGroup", Duration::from_millis(30), None);
        metrics.reconciled("EnrollmentGroup", Duration::from_millis(30), Some("SecretNotFound"));
        let host = "dps.example";
        metrics.request(host, "PUT enrollmentGroups/{id}", Some(200), Duration::from_millis(12));
        metrics.request(host, "GET enrollmentGroups/{id}", Some(429), Duration::from_millis(12));
        metrics.request(host, "GET enrollmentGroups/{id}", None, Duration::from_secs(30));
        metrics.waited(Duration::from_millis(250));
        metrics.bulk_sent(7);
        metrics.rate_limit(host, 1000);
        metrics.ready_changed("EnrollmentGroup", None, Some((true, "Synced")));
        metrics.ready_changed("EnrollmentGroup", None, Some((false, "SecretNotFound")));
        metrics.ready_changed("EnrollmentGroup", Some((false, "SecretNotFound")), None);
        let text = metrics.encode();
        for line in [
            r#"dps_operator_reconciles_total{kind="EnrollmentGroup",result="error"} 1"#,
            r#"dps_operator_reconcile_errors_total{kind="EnrollmentGroup",reason="SecretNotFound"} 1"#,
            r#"dps_operator_dps_requests_total{host="dps.example",operation="PUT enrollmentGroups/{id}",status_class="2xx"} 1"#,
            r#"dps_operator_dps_requests_total{host="dps.example",operation="GET enrollmentGroups/{id}",status_class="error"} 1"#,
            r#"dps_operator_resources_by_reason{kind="EnrollmentGroup",ready="true",reason="Synced"} 1"#,
            r#"dps_operator_resources_by_reason{kind="EnrollmentGroup",ready="false",reason="SecretNotFound"} 0"#,
            r#"dps_operator_connection_rate_limit{host="dps.example"} 1000"#,
            "dps_operator_bulk_batch_size_count 1",
            "dps_operator_dps_throttled_total 1",
            "dps_operator_rate_limiter_wait_seconds_count 1",
            r#"dps_operator_resources{kind="EnrollmentGroup",ready="true"} 1"#,
            r#"dps_operator_resources{kind="EnrollmentGroup",ready="false"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
