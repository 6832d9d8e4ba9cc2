//! Per-enrollment metrics, the times computed at each scrape: seconds until each certificate
//! expires, the age of each generated key and how long until its next scheduled rotation, and a
//! group's registrations by status. A series or a few per enrollment, so they can be turned off
//! (`--per-enrollment-metrics=false`) for very large fleets.

use std::{collections::BTreeMap, sync::Mutex};

use jiff::Timestamp;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet},
    metrics::MetricType,
};

/// Which enrollment a series is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EnrollmentLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    kind: String,
    namespace: String,
    name: String,
    /// `primary` or `secondary`.
    slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    kind: String,
    namespace: String,
    name: String,
    /// A registration status: `assigned`, `assigning`, `unassigned`, `failed`, `disabled`.
    status: String,
}

/// What an enrollment's series show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnrollmentFacts {
    /// Each certificate's slot and end of validity.
    pub certificates: Vec<(&'static str, Timestamp)>,
    /// When the active generated key was made (its last rotation, else its Secret's creation).
    pub key_made: Option<Timestamp>,
    /// When the next scheduled key rotation is due.
    pub rotation_due: Option<Timestamp>,
    /// A group's registration records by status.
    pub registrations: Vec<(&'static str, i64)>,
}

/// The facts of every enrollment the operator reconciled, exported at each scrape.
#[derive(Debug)]
pub struct PerEnrollment {
    enabled: bool,
    by_enrollment: Mutex<BTreeMap<EnrollmentLabels, EnrollmentFacts>>,
}

impl PerEnrollment {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, by_enrollment: Mutex::default() }
    }

    /// Records an enrollment's facts; `None` or no facts removes its series.
    pub fn set(&self, enrollment: EnrollmentLabels, facts: Option<EnrollmentFacts>) {
        if !self.enabled {
            return;
        }
        let mut by_enrollment = self.by_enrollment.lock().unwrap_or_else(|e| e.into_inner());
        match facts.filter(|f| *f != EnrollmentFacts::default()) {
            Some(facts) => by_enrollment.insert(enrollment, facts),
            None => by_enrollment.remove(&enrollment),
        };
    }
}

impl Collector for PerEnrollment {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Timestamp::now();
        let by_enrollment = self.by_enrollment.lock().unwrap_or_else(|e| e.into_inner());
        let seconds = |from: Timestamp, to: Timestamp| to.duration_since(from).as_secs_f64();
        let mut expiry = encoder.encode_descriptor(
            "certificate_expiry_seconds",
            "Seconds until each certificate of an enrollment expires (negative once expired)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, facts) in by_enrollment.iter() {
            for (slot, not_after) in &facts.certificates {
                let labels = SlotLabels {
                    kind: labels.kind.clone(),
                    namespace: labels.namespace.clone(),
                    name: labels.name.clone(),
                    slot: (*slot).to_owned(),
                };
                expiry.encode_family(&labels)?.encode_gauge(&seconds(now, *not_after))?;
            }
        }
        let mut age = encoder.encode_descriptor(
            "key_age_seconds",
            "Seconds since the active generated symmetric key of an enrollment was made",
            None,
            MetricType::Gauge,
        )?;
        for (labels, facts) in by_enrollment.iter() {
            if let Some(made) = facts.key_made {
                age.encode_family(labels)?.encode_gauge(&seconds(made, now))?;
            }
        }
        let mut due = encoder.encode_descriptor(
            "key_rotation_due_seconds",
            "Seconds until the next scheduled key rotation of an enrollment (negative when overdue)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, facts) in by_enrollment.iter() {
            if let Some(at) = facts.rotation_due {
                due.encode_family(labels)?.encode_gauge(&seconds(now, at))?;
            }
        }
        let mut registrations = encoder.encode_descriptor(
            "registrations",
            "Registration records of an enrollment group by status",
            None,
            MetricType::Gauge,
        )?;
        for (labels, facts) in by_enrollment.iter() {
            for (status, count) in &facts.registrations {
                let labels = StatusLabels {
                    kind: labels.kind.clone(),
                    namespace: labels.namespace.clone(),
                    name: labels.name.clone(),
                    status: (*status).to_owned(),
                };
                registrations.encode_family(&labels)?.encode_gauge(count)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn labels(name: &str) -> EnrollmentLabels {
        EnrollmentLabels { kind: "EnrollmentGroup".into(), namespace: "plant".into(), name: name.into() }
    }

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn expiry_key_age_and_registrations_are_exported_at_each_scrape_and_go_with_the_enrollment() {
        let metrics = Metrics::new(true);
        let now = Timestamp::now();
        let in_a_day = now.checked_add(jiff::SignedDuration::from_hours(24)).unwrap();
        let an_hour_ago = now.checked_sub(jiff::SignedDuration::from_hours(1)).unwrap();
        let times = EnrollmentFacts {
            certificates: vec![("secondary", in_a_day)],
            key_made: Some(an_hour_ago),
            rotation_due: Some(in_a_day),
            registrations: vec![("assigned", 3)],
        };
        metrics.per_enrollment().set(labels("cameras"), Some(times));
        let text = metrics.encode();
        let expiry = sample(
            &text,
            r#"dps_operator_certificate_expiry_seconds{kind="EnrollmentGroup",namespace="plant",name="cameras",slot="secondary"}"#,
        );
        assert!(expiry.is_some_and(|s| (86_000.0..=86_400.0).contains(&s)), "{text}");
        let age = sample(
            &text,
            r#"dps_operator_key_age_seconds{kind="EnrollmentGroup",namespace="plant",name="cameras"}"#,
        );
        assert!(age.is_some_and(|s| (3_600.0..3_700.0).contains(&s)), "{text}");
        let assigned = sample(
            &text,
            r#"dps_operator_registrations{kind="EnrollmentGroup",namespace="plant",name="cameras",status="assigned"}"#,
        );
        assert_eq!(assigned, Some(3.0), "{text}");

        metrics.per_enrollment().set(labels("cameras"), None);
        assert!(!metrics.encode().contains("cameras"), "gone with the enrollment");
    }

    #[test]
    fn per_enrollment_series_can_be_turned_off() {
        let metrics = Metrics::new(false);
        let times = EnrollmentFacts { key_made: Some(Timestamp::now()), ..Default::default() };
        metrics.per_enrollment().set(labels("cameras"), Some(times));
        assert!(!metrics.encode().contains("cameras"));
    }
}
