//! A set's status after a pass, and when the next pass runs: pure, from what the pass found.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{plan::Tally, source::DeviceKeys};
use crate::{
    api::{AttestationKind, IndividualEnrollmentSetStatus},
    controller::{Error, Retry, conditions, describe},
};

/// What a pass found.
pub enum Passed {
    /// It ran through: the tally, the device keys Secret, whether writes are left for the next
    /// pass, and a problem that did not stop it (the device keys Secret could not be written).
    Done { tally: Tally, device_keys: DeviceKeys, more: bool, paused: bool, problem: Option<Error> },
    /// It stopped before writing anything.
    Failed(Error),
}

/// When the next pass runs.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// At once: writes are left.
    Now,
    After(Duration),
}

/// The status after a pass of the set at `generation`, from `old`, and when to pass again
/// (`interval`: the drift check interval).
pub fn next(
    old: Option<&IndividualEnrollmentSetStatus>,
    generation: Option<i64>,
    kind: AttestationKind,
    passed: Passed,
    interval: Duration,
    now: &Time,
) -> (IndividualEnrollmentSetStatus, Next) {
    let mut status = old.cloned().unwrap_or_default();
    status.attestation = Some(kind);
    let (observations, next) = match passed {
        Passed::Failed(error) => {
            let next = match error.retry() {
                Retry::Now => Next::After(Duration::from_secs(1)),
                Retry::After(wait) => Next::After(wait),
                Retry::Backoff => Next::After(Duration::from_secs(30)),
                Retry::WhenInputsChange => Next::After(interval),
            };
            (conditions::outcome(Err((error.reason(), error.is_stalled())), &describe(&error)), next)
        }
        Passed::Done { tally, device_keys, more, paused, problem } => {
            let (ready, message, next) = summary(&tally, more, paused, problem.as_ref(), interval);
            status.counts = Some(tally.counts);
            status.failures = tally.failures;
            (status.device_keys_secret, status.device_keys_digest) = device_keys.unzip();
            (conditions::outcome(ready, &message), next)
        }
    };
    status.observed_generation = generation;
    status.conditions = conditions::update(&status.conditions, &observations, generation, now);
    (status, next)
}

type Ready<'a> = Result<&'a str, (&'a str, bool)>;

/// The `Ready` condition's reason and message, and when to pass again.
fn summary<'a>(
    tally: &Tally,
    more: bool,
    paused: bool,
    problem: Option<&'a Error>,
    interval: Duration,
) -> (Ready<'a>, String, Next) {
    let counts = &tally.counts;
    let first = tally
        .failures
        .first()
        .map(|f| format!(" First: {}: {}", f.registration_id, f.message))
        .unwrap_or_default();
    if let Some(problem) = problem {
        return (Err((problem.reason(), problem.is_stalled())), describe(problem), Next::After(interval));
    }
    if paused {
        let message = format!(
            "dps.iot.dev/paused is \"true\": nothing is written to DPS. {} of {} members are in DPS as listed.",
            counts.ready, counts.members
        );
        return (Err(("Paused", true)), message, Next::After(interval));
    }
    if more || counts.pending > 0 {
        let message = format!(
            "{} of {} members are in DPS as listed; {} to write.",
            counts.ready, counts.members, counts.pending
        );
        let next = if more { Next::Now } else { Next::After(Duration::from_secs(30)) };
        return (Err(("Progressing", false)), message, next);
    }
    if counts.failed > 0 {
        let message = format!(
            "{} of {} members failed and are retried; {} conflict.{first}",
            counts.failed, counts.members, counts.conflicts
        );
        return (Err(("MembersFailed", false)), message, Next::After(Duration::from_secs(60)));
    }
    if counts.conflicts > 0 {
        let message = format!(
            "{} of {} members are not this set's to write and are left alone.{first}",
            counts.conflicts, counts.members
        );
        return (Err(("MembersConflict", true)), message, Next::After(interval));
    }
    (Ok("Synced"), format!("All {} members are in DPS as listed.", counts.members), Next::After(interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MemberCounts, MemberFailure};

    const INTERVAL: Duration = Duration::from_secs(600);

    fn now() -> Time {
        Time("2026-12-06T00:00:00Z".parse().unwrap())
    }

    fn done(tally: Tally, more: bool) -> Passed {
        Passed::Done { tally, device_keys: None, more, paused: false, problem: None }
    }

    fn ready(status: &IndividualEnrollmentSetStatus) -> (String, String, String) {
        let c = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn a_set_is_ready_when_every_member_is_in_dps_and_checks_again_at_its_interval() {
        let mut tally = Tally::new(3);
        (0..3).for_each(|_| tally.ready());
        let (status, then) =
            next(None, Some(2), AttestationKind::SymmetricKey, done(tally, false), INTERVAL, &now());
        assert_eq!(
            ready(&status),
            ("True".into(), "Synced".into(), "All 3 members are in DPS as listed.".into())
        );
        assert_eq!((status.observed_generation, then), (Some(2), Next::After(INTERVAL)));
        assert_eq!(status.counts, Some(MemberCounts { members: 3, ready: 3, ..Default::default() }));
    }

    #[test]
    fn writes_left_pass_again_at_once_and_conflicts_stall_naming_the_first() {
        let mut tally = Tally::new(5);
        tally.pending();
        let (status, then) = next(None, Some(1), AttestationKind::Tpm, done(tally, true), INTERVAL, &now());
        assert_eq!(ready(&status).1, "Progressing");
        assert_eq!(then, Next::Now);
        let mut tally = Tally::new(2);
        tally.ready();
        tally.conflict(MemberFailure {
            registration_id: "x".into(),
            reason: "Conflict".into(),
            message: "x is theirs".into(),
        });
        let (status, _) =
            next(Some(&status), Some(1), AttestationKind::Tpm, done(tally, false), INTERVAL, &now());
        assert_eq!(
            ready(&status).2,
            "1 of 2 members are not this set's to write and are left alone. First: x: x is theirs"
        );
        let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(stalled.status, "True");
    }

    #[test]
    fn a_pass_that_failed_keeps_the_counts_and_says_why() {
        let mut tally = Tally::new(1);
        tally.ready();
        let (before, _) = next(None, Some(1), AttestationKind::X509, done(tally, false), INTERVAL, &now());
        let error = Error::InvalidSpec("x".into());
        let (after, then) =
            next(Some(&before), Some(2), AttestationKind::X509, Passed::Failed(error), INTERVAL, &now());
        assert_eq!(after.counts, before.counts);
        assert_eq!(ready(&after).1, "InvalidSpec");
        assert_eq!(then, Next::After(INTERVAL));
    }
}
