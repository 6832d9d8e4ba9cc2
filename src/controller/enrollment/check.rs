//! Whether a pass needs DPS at all, and what it can know of the enrollment without a GET: a
//! settled resource is compared with its connection's query snapshot, and a new one is created
//! without a read when the snapshot does not hold it.

use std::time::Duration;

use super::{converge::Known, inputs::Material, mode::WriteMode};
use crate::{
    api::EnrollmentStatus,
    controller::{
        Error,
        conditions::READY,
        connection::Connection,
        desired::{DpsRecord, desired_comparable, drift},
        ownership::Ownership,
        secrets::Reader,
        snapshots::Snapshots,
        watches::SecretVersions,
    },
};

/// Whether the spec or a referenced Secret changed since the last pass: another generation,
/// other Secrets (`recorded`: the status so far), other certificates.
pub fn inputs_changed<R>(
    generation: Option<i64>,
    old: &EnrollmentStatus,
    recorded: &EnrollmentStatus,
    material: &Material<'_, R>,
) -> bool {
    let old_thumbprints = old.certificates.as_ref().and_then(|c| {
        Some((
            c.primary.as_ref()?.sha256_thumbprint.clone(),
            c.secondary.as_ref().map(|i| i.sha256_thumbprint.clone()),
        ))
    });
    old.observed_generation != generation
        || recorded.secrets_digest != material.digest
        || old_thumbprints != material.resolved.certificate_thumbprints()
}

/// Whether a resource is settled: its enrollment its own, found as its mode wants it at the last
/// pass, and nothing it reads changed since. A settled resource needs DPS only when its drift
/// check is due; events about it (unrelated Secret changes, a connection's status) cost no call.
pub fn settled(old: &EnrollmentStatus, mode: WriteMode, ownership: Ownership, inputs_changed: bool) -> bool {
    let ready = |c: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        c.type_ == READY && c.status == "True" && c.reason == mode.in_sync_reason()
    };
    ownership == Ownership::Owned && old.conditions.iter().any(|c| ready(&c)) && !inputs_changed
}

/// How long until the drift check of a resource last checked `since` ago is due, when it is
/// settled and the check is not due yet.
pub fn not_due(settled: bool, since: Option<Duration>, interval: Duration) -> Option<Duration> {
    since.filter(|since| settled && *since < interval).map(|since| interval - since)
}

/// Where a pass reads what it decides from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// The watch caches (a Secret they list as absent is not asked for) and the connection's
    /// query snapshot; a settled resource whose drift check is not due is not looked at.
    Cached,
    /// The API server and DPS themselves, whatever the caches say.
    Fresh,
}

impl Reads {
    /// A reader of the Secrets in `namespace` that trusts the watch as far as this says.
    pub fn secrets<'a>(
        self,
        client: &'a kube::Client,
        namespace: &'a str,
        known: &'a SecretVersions,
    ) -> Reader<'a> {
        match self {
            Self::Cached => Reader::knowing(client, namespace, known),
            Self::Fresh => Reader::new(client, namespace),
        }
    }
}

/// How a pass reads the enrollment in DPS.
#[derive(Debug, PartialEq)]
pub enum Reading {
    /// From the connection's query snapshot, at most `max_age` old: a record with the etag last
    /// seen is the record this resource wrote; one created in bulk (no etag seen) is current
    /// when it holds what the spec describes. Any other is confirmed with a GET.
    Snapshot {
        max_age: Duration,
    },
    /// A new enrollment, created without a GET when a snapshot at most `max_age` old does not
    /// hold it: an older snapshot only costs a 409 and a read.
    Create {
        max_age: Duration,
    },
    Get,
}

/// How a pass whose drift check is due reads DPS.
pub fn reading(settled: bool, ownership: Ownership, may_write: bool, interval: Duration) -> Reading {
    if settled {
        Reading::Snapshot { max_age: (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)) }
    } else if ownership == Ownership::None && may_write {
        Reading::Create { max_age: interval }
    } else {
        Reading::Get
    }
}

/// What `reading` learns of enrollment `id` without a GET. `seen_etag`: the etag the status
/// holds.
pub async fn known<R: DpsRecord + crate::dps::Enrollment>(
    snapshots: &Snapshots,
    connection: &Connection,
    reading: Reading,
    id: &str,
    seen_etag: Option<&str>,
    material: &Material<'_, R>,
) -> Result<Known<R>, Error> {
    let (Reading::Snapshot { max_age } | Reading::Create { max_age }) = reading else {
        return Ok(Known::Unknown);
    };
    let snapshot = snapshots.of::<R>(connection, max_age).await.map_err(|e| connection.dps_error(e))?;
    let record = snapshot.records.get(&id.to_lowercase());
    if let Reading::Create { .. } = reading {
        return Ok(if record.is_some() { Known::Unknown } else { Known::Absent });
    }
    let desired = desired_comparable(&material.desired, &material.resolved);
    let current =
        record.and_then(|json| serde_json::from_str::<R>(json).ok()).filter(|record| match seen_etag {
            Some(etag) => record.etag() == Some(etag),
            None => drift(&desired, &record.comparable()).is_empty(),
        });
    Ok(current.map_or(Known::Unknown, Known::Record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_resource_reads_the_snapshot_a_new_one_creates_without_a_get_and_others_get() {
        let minute = Duration::from_secs(60);
        let cases = [
            (true, Ownership::Owned, true, Duration::from_secs(600), Reading::Snapshot { max_age: minute }),
            (
                true,
                Ownership::Owned,
                false,
                Duration::from_secs(120),
                Reading::Snapshot { max_age: Duration::from_secs(30) },
            ),
            (
                true,
                Ownership::Owned,
                true,
                Duration::from_secs(2),
                Reading::Snapshot { max_age: Duration::from_secs(1) },
            ),
            (
                false,
                Ownership::None,
                true,
                Duration::from_secs(600),
                Reading::Create { max_age: 10 * minute },
            ),
            (false, Ownership::None, false, Duration::from_secs(600), Reading::Get),
            (false, Ownership::CreatePending, true, Duration::from_secs(600), Reading::Get),
            (false, Ownership::Owned, true, Duration::from_secs(600), Reading::Get),
        ];
        for (settled, ownership, may_write, interval, expected) in cases {
            assert_eq!(reading(settled, ownership, may_write, interval), expected, "{settled} {ownership:?}");
        }
    }

    #[test]
    fn only_a_settled_resource_waits_for_its_drift_check() {
        let (minute, ten) = (Duration::from_secs(60), Duration::from_secs(600));
        assert_eq!(not_due(true, Some(minute), ten), Some(ten - minute));
        assert_eq!(not_due(true, Some(ten), ten), None, "due");
        assert_eq!(not_due(true, None, ten), None, "never checked by this process");
        assert_eq!(not_due(false, Some(minute), ten), None, "not settled");
    }

    #[test]
    fn settled_means_owned_ready_in_this_mode_and_unchanged() {
        use crate::controller::conditions::{Observation, update};
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        let with_ready = |reason: &str| EnrollmentStatus {
            conditions: update(&[], &[Observation::new(READY, true, reason, "held")], Some(1), &now),
            ..Default::default()
        };
        let synced = with_ready("Synced");
        assert!(settled(&synced, WriteMode::Manage, Ownership::Owned, false));
        assert!(!settled(&synced, WriteMode::Manage, Ownership::Owned, true), "inputs changed");
        assert!(!settled(&synced, WriteMode::Manage, Ownership::CreatePending, false), "not confirmed");
        assert!(
            !settled(&synced, WriteMode::Paused, Ownership::Owned, false),
            "Ready as managed, now paused"
        );
        assert!(settled(&with_ready("Paused"), WriteMode::Paused, Ownership::Owned, false));
        assert!(!settled(&EnrollmentStatus::default(), WriteMode::Manage, Ownership::Owned, false));
    }
}
