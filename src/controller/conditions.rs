//! Status conditions in the kstatus shape: `Ready` summarises, `Reconciling` and `Stalled` say
//! whether the operator is still working or needs a change to make progress.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const CERTIFICATE_EXPIRING_SOON: &str = "CertificateExpiringSoon";

/// A condition to set: type, status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observation {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// The conditions after `observations`, keeping each condition's `lastTransitionTime` unless its
/// status flips, and dropping conditions of types no longer observed.
pub fn update(
    old: &[Condition],
    observations: &[Observation],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    observations
        .iter()
        .map(|observation| {
            let status = if observation.status { "True" } else { "False" };
            let previous = old.iter().find(|c| c.type_ == observation.type_);
            let last_transition_time = match previous {
                Some(previous) if previous.status == status => previous.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: observation.type_.to_owned(),
                status: status.to_owned(),
                reason: observation.reason.clone(),
                message: observation.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// What `Reconciling` says while the operator retries; `Ready` has the whole story.
pub const RETRYING: &str = "Retrying on its schedule; Ready says why.";
/// What `Stalled` says when only a change can help; `Ready` has the whole story.
pub const NEEDS_A_CHANGE: &str =
    "Not retried until the spec or a referenced Secret changes; Ready says what to change.";

/// The kstatus trio for an outcome: ready, still working, or stuck until the spec changes. The
/// message is said once, on `Ready`; a True `Reconciling` or `Stalled` says what happens next, a
/// False one nothing.
pub fn outcome(ready: Result<&str, (&str, bool)>, message: &str) -> Vec<Observation> {
    match ready {
        Ok(reason) => vec![
            Observation::new(READY, true, reason, message),
            Observation::new(RECONCILING, false, reason, ""),
            Observation::new(STALLED, false, reason, ""),
        ],
        Err((reason, stalled)) => vec![
            Observation::new(READY, false, reason, message),
            Observation::new(RECONCILING, !stalled, reason, if stalled { "" } else { RETRYING }),
            Observation::new(STALLED, stalled, reason, if stalled { NEEDS_A_CHANGE } else { "" }),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn last_transition_time_changes_only_when_the_status_flips() {
        let t1 = time("2026-01-01T00:00:00Z");
        let t2 = time("2026-01-02T00:00:00Z");
        let first =
            update(&[], &outcome(Err(("SecretNotFound", false)), "Secret x is missing"), Some(1), &t1);
        assert!(first.iter().all(|c| c.last_transition_time == t1));

        let same =
            update(&first, &outcome(Err(("SecretKeyMissing", false)), "Secret x has no key"), Some(2), &t2);
        assert!(same.iter().all(|c| c.last_transition_time == t1), "reason changed, status did not");
        assert_eq!(same[0].reason, "SecretKeyMissing");
        assert_eq!(same[0].observed_generation, Some(2));

        let ready = update(&same, &outcome(Ok("Synced"), "in sync"), Some(2), &t2);
        let by_type = |t: &str| ready.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(
            (by_type(READY).status.as_str(), by_type(READY).last_transition_time),
            ("True", t2.clone())
        );
        assert_eq!(
            (by_type(RECONCILING).status.as_str(), by_type(RECONCILING).last_transition_time),
            ("False", t2)
        );
        assert_eq!(by_type(STALLED).last_transition_time, t1, "Stalled stayed False");
    }

    #[test]
    fn stalled_is_not_reconciling() {
        let conditions = outcome(Err(("AlreadyExists", true)), "taken");
        let status = |t| conditions.iter().find(|o| o.type_ == t).unwrap().status;
        assert_eq!((status(READY), status(RECONCILING), status(STALLED)), (false, false, true));
    }

    #[test]
    fn the_message_is_said_once_on_ready() {
        let message =
            |conditions: &[Observation], t| conditions.iter().find(|o| o.type_ == t).unwrap().message.clone();
        let ready = outcome(Ok("Synced"), "DPS holds it as specified.");
        assert_eq!(
            (
                message(&ready, READY).as_str(),
                message(&ready, RECONCILING).as_str(),
                message(&ready, STALLED).as_str()
            ),
            ("DPS holds it as specified.", "", "")
        );
        let retrying = outcome(Err(("DpsError", false)), "DPS failed.");
        assert_eq!(
            (message(&retrying, RECONCILING).as_str(), message(&retrying, STALLED).as_str()),
            (RETRYING, "")
        );
        let stalled = outcome(Err(("InvalidSpec", true)), "Bad spec.");
        assert_eq!(
            (message(&stalled, RECONCILING).as_str(), message(&stalled, STALLED).as_str()),
            ("", NEEDS_A_CHANGE)
        );
    }
}
