//! Staged rotation of the symmetric keys the operator created, decided here without I/O. The key
//! Secret is the record of a rotation, written in the same write as the keys, so a restart or a
//! lost status write never rotates twice:
//!
//! 1. start: the slot devices are not using gets a new key, and `dps.iot.dev/rotating-to` names it;
//! 2. the pass writes both keys to DPS, the active one unchanged;
//! 3. publish: once DPS holds them, `activeKey` names the new slot and `dps.iot.dev/rotated-at`
//!    records when. Devices reading the Secret from then on get a key DPS already accepts; those
//!    still on the other slot keep working until the next rotation replaces it.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::KeySlot;

/// The Secret entry naming the slot devices use.
pub const ACTIVE_KEY: &str = "activeKey";
/// Annotation on the key Secret: the slot that has a new key, not yet active.
pub const ROTATING_TO_ANNOTATION: &str = "dps.iot.dev/rotating-to";
/// Annotation on the key Secret: when a rotation last made a new key active (RFC 3339).
pub const ROTATED_AT_ANNOTATION: &str = "dps.iot.dev/rotated-at";
/// Annotation on the key Secret: the value of the resource's `dps.iot.dev/rotate-keys` last acted on.
pub const TRIGGER_ANNOTATION: &str = "dps.iot.dev/rotation-trigger";

/// What a key Secret says about its keys besides the keys.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeySecretState {
    /// The slot devices are given.
    pub active: KeySlot,
    /// Whether the operator created it for this resource (it owns it): only then it rotates it.
    pub generated: bool,
    pub rotating_to: Option<KeySlot>,
    pub rotated_at: Option<Timestamp>,
    pub trigger: Option<String>,
    /// When the Secret was created: the first rotation is due `every` after it.
    pub created: Option<Timestamp>,
    pub resource_version: Option<String>,
}

/// Reads a slot as the Secret and its annotations write it.
pub fn parse_slot(text: &str) -> Option<KeySlot> {
    match text.trim() {
        "primaryKey" | "primary" => Some(KeySlot::Primary),
        "secondaryKey" | "secondary" => Some(KeySlot::Secondary),
        _ => None,
    }
}

/// What to do about the keys before DPS is written.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    /// Nothing; the next scheduled rotation is due then, if one is.
    Nothing { due: Option<Timestamp> },
    /// Give `slot` a new key, recording `trigger` as acted on.
    Rotate { slot: KeySlot, trigger: Option<String> },
    /// A rotation was asked for keys the operator did not create: they are never rotated.
    NotGenerated,
}

/// Decides whether a rotation starts: one in progress finishes first; a new value of the
/// resource's trigger annotation starts one; so does the schedule, `every` after the last rotation
/// (or after the Secret was created).
pub fn start(
    state: &KeySecretState,
    every: Option<Duration>,
    trigger: Option<&str>,
    now: Timestamp,
) -> Start {
    let triggered = trigger.filter(|t| !t.is_empty() && Some(*t) != state.trigger.as_deref());
    let due = next_due(state, every);
    if state.rotating_to.is_some() {
        return Start::Nothing { due };
    }
    if !state.generated {
        return match triggered.is_some() || every.is_some() {
            true => Start::NotGenerated,
            false => Start::Nothing { due: None },
        };
    }
    let slot = state.active.other();
    match (triggered, due) {
        (Some(trigger), _) => Start::Rotate { slot, trigger: Some(trigger.to_owned()) },
        (None, Some(due)) if due <= now => Start::Rotate { slot, trigger: None },
        (None, due) => Start::Nothing { due },
    }
}

/// When the next scheduled rotation is due: `every` after the last (or after the Secret was made).
pub fn next_due(state: &KeySecretState, every: Option<Duration>) -> Option<Timestamp> {
    let since = state.rotated_at.or(state.created)?;
    since.checked_add(jiff::SignedDuration::try_from(every?).ok()?).ok()
}

/// How long until `due`, when it is later than `now`.
pub fn until(due: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    let left = due?.duration_since(now);
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn generated() -> KeySecretState {
        KeySecretState { generated: true, created: Some(at(0)), ..Default::default() }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn the_schedule_rotates_the_slot_devices_are_not_using() {
        assert_eq!(start(&generated(), Some(DAY), None, at(10)), Start::Nothing { due: Some(at(86_400)) });
        let due = start(&generated(), Some(DAY), None, at(86_400));
        assert_eq!(due, Start::Rotate { slot: KeySlot::Secondary, trigger: None });
        let rotated =
            KeySecretState { active: KeySlot::Secondary, rotated_at: Some(at(86_400)), ..generated() };
        assert_eq!(start(&rotated, Some(DAY), None, at(86_500)), Start::Nothing { due: Some(at(172_800)) });
        assert_eq!(
            start(&rotated, Some(DAY), None, at(172_800)),
            Start::Rotate { slot: KeySlot::Primary, trigger: None }
        );
        assert_eq!(start(&generated(), None, None, at(1_000_000)), Start::Nothing { due: None });
    }

    #[test]
    fn a_new_trigger_value_rotates_once() {
        let first = start(&generated(), None, Some("1"), at(5));
        assert_eq!(first, Start::Rotate { slot: KeySlot::Secondary, trigger: Some("1".into()) });
        let handled = KeySecretState { trigger: Some("1".into()), active: KeySlot::Secondary, ..generated() };
        assert_eq!(start(&handled, None, Some("1"), at(6)), Start::Nothing { due: None });
        assert_eq!(
            start(&handled, None, Some("2"), at(7)),
            Start::Rotate { slot: KeySlot::Primary, trigger: Some("2".into()) }
        );
        assert_eq!(
            start(&generated(), None, Some(""), at(5)),
            Start::Nothing { due: None },
            "empty is no trigger"
        );
    }

    #[test]
    fn a_rotation_in_progress_finishes_before_another_starts() {
        let rotating = KeySecretState { rotating_to: Some(KeySlot::Secondary), ..generated() };
        assert!(matches!(start(&rotating, Some(DAY), Some("again"), at(999_999)), Start::Nothing { .. }));
    }

    #[test]
    fn keys_the_operator_did_not_create_are_never_rotated() {
        let supplied = KeySecretState { generated: false, ..generated() };
        assert_eq!(start(&supplied, Some(DAY), None, at(999_999)), Start::NotGenerated);
        assert_eq!(start(&supplied, None, Some("now"), at(1)), Start::NotGenerated);
        assert_eq!(start(&supplied, None, None, at(1)), Start::Nothing { due: None });
    }

    #[test]
    fn slots_read_as_the_secret_names_them() {
        assert_eq!(parse_slot("secondaryKey"), Some(KeySlot::Secondary));
        assert_eq!(parse_slot(" primary\n"), Some(KeySlot::Primary));
        assert_eq!(parse_slot("tertiary"), None);
        assert_eq!(until(Some(at(10)), at(4)), Some(Duration::from_secs(6)));
        assert_eq!(until(Some(at(4)), at(10)), Some(Duration::ZERO));
    }
}
