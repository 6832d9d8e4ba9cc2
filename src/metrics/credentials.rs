//! Per-enrollment metrics of credentials, computed at each scrape: seconds until each certificate
//! expires and the age of each generated key. One series per enrollment (and slot), so they can
//! be turned off (`--per-enrollment-metrics=false`) for very large fleets.

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

/// An enrollment's credentials with a lifetime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CredentialTimes {
    /// Each certificate's slot and end of validity.
    pub certificates: Vec<(&'static str, Timestamp)>,
    /// When the active generated key was made (its last rotation, else its Secret's creation).
    pub key_made: Option<Timestamp>,
}

/// The credentials of every enrollment the operator reconciled, exported at each scrape.
#[derive(Debug)]
pub struct Credentials {
    enabled: bool,
    by_enrollment: Mutex<BTreeMap<EnrollmentLabels, CredentialTimes>>,
}

impl Credentials {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, by_enrollment: Mutex::default() }
    }

    /// Records an enrollment's credentials; `None` or nothing with a lifetime removes its series.
    pub fn set(&self, enrollment: EnrollmentLabels, times: Option<CredentialTimes>) {
        if !self.enabled {
            return;
        }
        let mut by_enrollment = self.by_enrollment.lock().unwrap_or_else(|e| e.into_inner());
        match times.filter(|t| *t != CredentialTimes::default()) {
            Some(times) => by_enrollment.insert(enrollment, times),
            None => by_enrollment.remove(&enrollment),
        };
    }
}

impl Collector for Credentials {
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
        for (labels, times) in by_enrollment.iter() {
            for (slot, not_after) in &times.certificates {
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
        for (labels, times) in by_enrollment.iter() {
            if let Some(made) = times.key_made {
                age.encode_family(labels)?.encode_gauge(&seconds(made, now))?;
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
    fn certificate_expiry_and_key_age_are_computed_at_each_scrape_and_go_with_the_enrollment() {
        let metrics = Metrics::new(true);
        let now = Timestamp::now();
        let in_a_day = now.checked_add(jiff::SignedDuration::from_hours(24)).unwrap();
        let an_hour_ago = now.checked_sub(jiff::SignedDuration::from_hours(1)).unwrap();
        let times =
            CredentialTimes { certificates: vec![("secondary", in_a_day)], key_made: Some(an_hour_ago) };
        metrics.credentials().set(labels("cameras"), Some(times));
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

        metrics.credentials().set(labels("cameras"), None);
        assert!(!metrics.encode().contains("cameras"), "gone with the enrollment");
    }

    #[test]
    fn per_enrollment_series_can_be_turned_off() {
        let metrics = Metrics::new(false);
        let times = CredentialTimes { certificates: Vec::new(), key_made: Some(Timestamp::now()) };
        metrics.credentials().set(labels("cameras"), Some(times));
        assert!(!metrics.encode().contains("cameras"));
    }
}
