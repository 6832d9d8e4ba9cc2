//! The events a pass publishes: what it changed in DPS, what it found and could not change, a
//! failure (once, not at every retry), and a certificate newly close to expiry.

use super::{converge::Done, outcome::Synced};
use crate::{
    api::EnrollmentStatus,
    controller::{
        Error,
        conditions::{CERTIFICATE_EXPIRING_SOON, READY},
        error::describe,
    },
};

/// An event to publish about the resource.
#[derive(Debug, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: String) -> Option<Self> {
        Some(Self { warning: false, reason, message })
    }

    fn warning(reason: &'static str, message: String) -> Option<Self> {
        Some(Self { warning: true, reason, message })
    }
}

/// The events of a pass over `what` `id` with `result`, from the status before (`old`) and after
/// (`new`); `spec_changed`: the pass handled a new generation.
pub fn of_pass<R>(
    what: &str,
    id: &str,
    old: &EnrollmentStatus,
    new: &EnrollmentStatus,
    spec_changed: bool,
    result: &Result<Synced<R>, Error>,
) -> Vec<Note> {
    let (outcome, keys) = match result {
        Ok(synced) => (
            of_outcome(what, id, old, spec_changed, synced),
            of_keys(what, id, old, new, spec_changed, synced),
        ),
        Err(error) => (of_failure(old, error), Vec::new()),
    };
    outcome.into_iter().chain(keys).chain(newly_expiring(old, new)).collect()
}

/// A rotation published; a rotation asked of keys the operator did not create; both keys
/// replaced at once, which locks out every device.
fn of_keys<R>(
    what: &str,
    id: &str,
    old: &EnrollmentStatus,
    new: &EnrollmentStatus,
    spec_changed: bool,
    synced: &Synced<R>,
) -> Vec<Note> {
    let mut notes: Vec<Note> = rolled_over(what, id, old, new).into_iter().collect();
    let (old, new) = (old.keys.as_deref(), new.keys.as_deref());
    if let (Some(old), Some(new)) = (old, new)
        && old.active_slot != new.active_slot
    {
        notes.extend(Note::normal(
            "KeyRotated",
            format!(
                "Rotated the keys of {what} {id}: the new {} key is active in DPS and in its Secret; the {} key stays until the next rotation.",
                new.active_slot.secret_key(),
                old.active_slot.secret_key()
            ),
        ));
    }
    let trigger_changed =
        old.and_then(|o| o.last_trigger.as_ref()) != new.and_then(|n| n.last_trigger.as_ref());
    if synced.rotation_refused && (spec_changed || trigger_changed) {
        notes.extend(Note::warning(
            "KeysNotRotated",
            format!(
                "The keys of {what} {id} were supplied, not created by the operator, so they are never rotated: \
                 replace one key of its Secret at a time, and devices using the other keep working."
            ),
        ));
    }
    let replaced = |old: &Option<String>, new: &Option<String>| old.is_some() && new.is_some() && old != new;
    if let (Some(old), Some(new)) = (old, new)
        && replaced(&old.primary_digest, &new.primary_digest)
        && replaced(&old.secondary_digest, &new.secondary_digest)
    {
        notes.extend(Note::warning(
            "BothKeysReplaced",
            format!(
                "Both keys of {what} {id} were replaced at once: DPS now refuses every device still using either \
                 old key or a key derived from it. Replace one key at a time to keep devices working."
            ),
        ));
    }
    notes
}

fn of_outcome<R>(
    what: &str,
    id: &str,
    old: &EnrollmentStatus,
    spec_changed: bool,
    synced: &Synced<R>,
) -> Option<Note> {
    let host = &synced.host;
    match &synced.done {
        Done::NotDue | Done::InSync => None,
        // Announced on the connection, with the others of its bulk call.
        Done::Created { in_bulk: true } => None,
        Done::Created { in_bulk: false } => {
            Note::normal("Created", format!("Created {what} {id} in DPS at {host}."))
        }
        Done::Recreated => Note::normal(
            "DriftCorrected",
            format!("Recreated {what} {id}, which had been deleted from DPS outside Kubernetes."),
        ),
        Done::Adopted { written: true } => Note::normal(
            "Adopted",
            format!("Adopted {what} {id}, which already existed in DPS, and made it match the spec."),
        ),
        Done::Adopted { written: false } => Note::normal(
            "Adopted",
            format!("Adopted {what} {id}, which already existed in DPS as specified; nothing was written."),
        ),
        Done::Updated { drift, inputs_changed: true, .. } if spec_changed => {
            Note::normal("Updated", format!("Updated {what} {id} in DPS ({}).", drift.join(", ")))
        }
        Done::Updated { drift, inputs_changed: true, .. } => Note::normal(
            "SecretRotated",
            format!("Wrote the new {} of {what} {id} from its Secret.", drift.join(", ")),
        ),
        Done::Updated { drift, outside: true, .. } => Note::normal(
            "DriftCorrected",
            format!("Restored {} of {what} {id}, changed in DPS outside Kubernetes.", drift.join(", ")),
        ),
        // DPS as last seen, the spec changed while writes were off (paused, observe-only, a
        // failing connection): catching up with the spec.
        Done::Updated { drift, .. } => Note::normal(
            "Updated",
            format!("Updated {what} {id} in DPS ({}) to match the spec.", drift.join(", ")),
        ),
        Done::Reported { missing: true, .. } => Note::warning(
            "DriftDetected",
            format!("DPS has no {what} {id}; it is not created while writes are off."),
        ),
        // Reported once, not at every check that finds the same.
        Done::Reported { drift, .. } if drift.is_empty() || *drift == old.drift => None,
        Done::Reported { drift, .. } => Note::warning(
            "DriftDetected",
            format!("DPS differs from the spec in {}; not corrected while writes are off.", drift.join(", ")),
        ),
    }
}

/// A certificate rollover that started in this pass.
fn rolled_over(what: &str, id: &str, old: &EnrollmentStatus, new: &EnrollmentStatus) -> Option<Note> {
    let (old, new) = (old.certificates.as_deref(), new.certificates.as_deref()?);
    let since = new.rolled_over_time.as_ref()?;
    if old.and_then(|o| o.rolled_over_time.as_ref()) == Some(since) {
        return None;
    }
    let thumbprint = |info: Option<&crate::api::CertificateInfo>| {
        info.map(|i| i.sha256_thumbprint.clone()).unwrap_or_default()
    };
    let until = new.previous_until.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    Note::normal(
        "CertificateRolledOver",
        format!(
            "The certificate of {what} {id} changed: DPS holds the new one ({}) as primary and keeps the previous one ({}) as secondary until {until}.",
            thumbprint(new.primary.as_ref()),
            thumbprint(new.secondary.as_ref()),
        ),
    )
}

/// A failure, unless the status already says the same.
fn of_failure(old: &EnrollmentStatus, error: &Error) -> Option<Note> {
    let message = describe(error);
    let previous = old.conditions.iter().find(|c| c.type_ == READY);
    if previous.is_some_and(|c| c.reason == error.reason() && c.message == message) {
        return None;
    }
    Note::warning(error.reason(), message)
}

/// `CertificateExpiringSoon`, when it turned True in this pass.
fn newly_expiring(old: &EnrollmentStatus, new: &EnrollmentStatus) -> Option<Note> {
    let expiring = |status: &EnrollmentStatus| {
        status.conditions.iter().find(|c| c.type_ == CERTIFICATE_EXPIRING_SOON && c.status == "True").cloned()
    };
    let expiring = expiring(new).filter(|_| expiring(old).is_none())?;
    Note::warning(CERTIFICATE_EXPIRING_SOON, expiring.message)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        api::{KeySlot, KeysStatus},
        controller::kinds::Registrations,
    };

    fn synced(done: Done) -> Synced<()> {
        Synced {
            done,
            record: None,
            digest: None,
            certificates: None,
            rollover: None,
            registrations: Registrations::Unknown,
            device_keys: None,
            blocked: None,
            keys: None,
            rotation_refused: false,
            host: "dps.example".into(),
            owned: true,
            protected: false,
            next_check: Duration::from_secs(600),
        }
    }

    fn updated(inputs_changed: bool, outside: bool) -> Done {
        Done::Updated { drift: vec!["capabilities"], inputs_changed, outside }
    }

    #[test]
    fn an_update_is_named_by_why_it_was_written() {
        let old = EnrollmentStatus::default();
        let reason = |done, spec_changed| {
            let notes = of_pass("enrollment", "boiler", &old, &old, spec_changed, &Ok(synced(done)));
            notes.first().map(|note| note.reason)
        };
        assert_eq!(reason(updated(true, false), true), Some("Updated"), "a spec edit");
        assert_eq!(reason(updated(true, true), true), Some("Updated"), "a spec edit, whatever DPS held");
        assert_eq!(reason(updated(true, false), false), Some("SecretRotated"));
        assert_eq!(reason(updated(false, true), false), Some("DriftCorrected"), "changed outside");
        assert_eq!(reason(updated(false, false), false), Some("Updated"), "caught up after writes were off");
        assert_eq!(reason(Done::Recreated, false), Some("DriftCorrected"));
        assert_eq!(reason(Done::Created { in_bulk: true }, true), None, "announced on the connection");
        assert_eq!(reason(Done::Created { in_bulk: false }, true), Some("Created"));
        assert_eq!(reason(Done::InSync, false), None);
        assert_eq!(reason(Done::NotDue, false), None);
    }

    #[test]
    fn drift_found_while_writes_are_off_is_reported_once() {
        let reported = |drift: Vec<&'static str>, before: &[&str]| {
            let old = EnrollmentStatus {
                drift: before.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            };
            let done = Done::Reported { drift, missing: false };
            of_pass("enrollment", "boiler", &old, &old, false, &Ok(synced(done)))
        };
        let first = reported(vec!["capabilities"], &[]);
        assert_eq!(first.len(), 1);
        assert!(first[0].warning && first[0].reason == "DriftDetected", "{first:?}");
        assert!(reported(vec!["capabilities"], &["capabilities"]).is_empty(), "the same drift again");
        assert_eq!(reported(vec!["capabilities", "iotHubs"], &["capabilities"]).len(), 1, "more drift");
        assert!(reported(Vec::new(), &["capabilities"]).is_empty(), "no drift");
    }

    #[test]
    fn a_failure_is_published_once_while_the_status_says_the_same() {
        let error = Error::InvalidSpec("spec.iotHubs is empty".into());
        let first = of_pass::<()>(
            "enrollment",
            "boiler",
            &Default::default(),
            &Default::default(),
            false,
            &Err(error),
        );
        assert_eq!(first.len(), 1);
        let error = Error::InvalidSpec("spec.iotHubs is empty".into());
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        let observations =
            crate::controller::conditions::outcome(Err((error.reason(), true)), &describe(&error));
        let old = EnrollmentStatus {
            conditions: crate::controller::conditions::update(&[], &observations, Some(1), &now),
            ..Default::default()
        };
        assert!(of_pass::<()>("enrollment", "boiler", &old, &old, false, &Err(error)).is_empty());
    }

    fn keys(active: KeySlot, primary: &str, secondary: &str, trigger: Option<&str>) -> EnrollmentStatus {
        let keys = KeysStatus {
            active_slot: active,
            primary_digest: Some(primary.into()),
            secondary_digest: Some(secondary.into()),
            last_trigger: trigger.map(str::to_owned),
            ..Default::default()
        };
        EnrollmentStatus { keys: Some(Box::new(keys)), ..Default::default() }
    }

    fn key_notes(old: &EnrollmentStatus, new: &EnrollmentStatus, refused: bool) -> Vec<&'static str> {
        let pass = Synced { rotation_refused: refused, ..synced(Done::InSync) };
        of_pass("enrollment", "boiler", old, new, false, &Ok(pass)).iter().map(|n| n.reason).collect()
    }

    #[test]
    fn replacing_both_keys_at_once_is_a_warning_and_one_at_a_time_is_not() {
        let before = keys(KeySlot::Primary, "p1", "s1", None);
        assert_eq!(
            key_notes(&before, &keys(KeySlot::Primary, "p2", "s2", None), false),
            ["BothKeysReplaced"]
        );
        assert!(key_notes(&before, &keys(KeySlot::Primary, "p2", "s1", None), false).is_empty());
        assert!(key_notes(&EnrollmentStatus::default(), &before, false).is_empty(), "first written");
    }

    #[test]
    fn a_published_rotation_is_announced() {
        let before = keys(KeySlot::Primary, "p1", "s1", None);
        assert_eq!(key_notes(&before, &keys(KeySlot::Secondary, "p1", "s2", None), false), ["KeyRotated"]);
    }

    #[test]
    fn a_rotation_refused_is_reported_once_per_trigger() {
        let before = keys(KeySlot::Primary, "p1", "s1", Some("1"));
        assert_eq!(
            key_notes(&before, &keys(KeySlot::Primary, "p1", "s1", Some("2")), true),
            ["KeysNotRotated"]
        );
        assert!(key_notes(&before, &before, true).is_empty(), "the same trigger again");
    }
}
