//! Key rotation around the DPS write, as [`key_rotation`] decides it: a rotation starts before the
//! write (the idle slot of the key Secret gets a new key), and the new key is published after it,
//! once DPS holds it (the Secret's `activeKey` names it). Then the keys part of the status.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::inputs::Material;
use crate::{
    api::{EnrollmentStatus, KeysStatus, ROTATE_KEYS_ANNOTATION},
    controller::{
        Error,
        digest_key::DigestKey,
        key_rotation::{self, Start},
        kinds::EnrollmentKind,
        secrets::Reader,
    },
    dps::models::Secret,
};

/// Starts a rotation the trigger annotation or the schedule asks for, when this pass may write
/// and the enrollment is this resource's (`may_rotate`); answers the material as it then is,
/// and the decision.
pub async fn start<'a, K: EnrollmentKind>(
    object: &'a K,
    reader: &Reader<'_>,
    material: Material<'a, K::Record>,
    may_rotate: bool,
    digest_key: &DigestKey,
    recorded: &mut EnrollmentStatus,
) -> Result<(Material<'a, K::Record>, Start), Error> {
    let Some(state) = &material.resolved.key_secret else {
        return Ok((material, Start::Nothing { due: None }));
    };
    let decision = key_rotation::start(state, every(object), trigger(object), Timestamp::now());
    let (Start::Rotate { slot, trigger }, Some(name), Some(version), true) =
        (&decision, material.key_secret, state.resource_version.as_deref(), may_rotate)
    else {
        return Ok((material, decision));
    };
    reader
        .start_key_rotation(
            name,
            version,
            *slot,
            &crate::controller::device_keys::random_key(),
            trigger.as_deref(),
        )
        .await?;
    tracing::info!(secret = name, slot = slot.secret_key(), "key rotation started");
    let material = super::inputs::resolve(object, reader, digest_key, recorded).await?;
    Ok((material, decision))
}

/// Publishes the new key of a rotation in progress once DPS holds the Secret's keys
/// (`in_sync`); answers whether it did.
pub async fn publish<K: EnrollmentKind>(
    reader: &Reader<'_>,
    material: &mut Material<'_, K::Record>,
    in_sync: bool,
) -> Result<bool, Error> {
    let name = material.key_secret;
    let Some(state) = material.resolved.key_secret.as_mut() else { return Ok(false) };
    let (Some(slot), Some(name), Some(version), true) =
        (state.rotating_to, name, state.resource_version.clone(), in_sync)
    else {
        return Ok(false);
    };
    let now = Timestamp::now();
    state.resource_version = reader.publish_rotated_key(name, &version, slot, now).await?;
    (state.active, state.rotating_to, state.rotated_at) = (slot, None, Some(now));
    tracing::info!(secret = name, slot = slot.secret_key(), "rotated key published");
    Ok(true)
}

/// The keys part of the status: the Secret's active slot and rotation, when the next scheduled
/// rotation is due, and digests of each key, updated when DPS holds them (`in_sync`).
pub fn status<K: EnrollmentKind>(
    object: &K,
    material: &Material<'_, K::Record>,
    in_sync: bool,
    digest_key: &DigestKey,
) -> Option<KeysStatus> {
    let state = material.resolved.key_secret.as_ref()?;
    let old = object.current_status().and_then(|s| K::enrollment_status(s).keys.as_deref());
    let digest = |key: &Secret| digest_key.sign(|context| context.update(key.expose().as_bytes()));
    let keys = material.resolved.keys.as_ref();
    let (primary_digest, secondary_digest) = match (keys, in_sync) {
        (Some((primary, secondary)), true) => (Some(digest(primary)), Some(digest(secondary))),
        _ => old.map(|o| (o.primary_digest.clone(), o.secondary_digest.clone())).unwrap_or_default(),
    };
    let next = key_rotation::next_due(state, every(object)).filter(|_| state.generated);
    Some(KeysStatus {
        active_slot: state.active,
        generated: Some(state.generated),
        rotating_to: state.rotating_to,
        active_key_time: state.rotated_at.or(state.created).filter(|_| state.generated).map(Time),
        last_rotation_time: state.rotated_at.map(Time),
        next_rotation_time: next.map(Time),
        last_trigger: trigger(object).map(str::to_owned),
        primary_digest,
        secondary_digest,
    })
}

/// `next_check`, or sooner when the next scheduled rotation, or the end of a certificate
/// rollover, comes before it.
pub fn sooner<R>(next_check: Duration, keys: Option<&KeysStatus>, material: &Material<'_, R>) -> Duration {
    let rotation = keys.and_then(|keys| keys.next_rotation_time.as_ref()).map(|t| t.0);
    let rollover = material.resolved.rollover.as_ref().and_then(|r| r.previous.as_ref()).map(|p| p.until);
    [rotation, rollover]
        .into_iter()
        .filter_map(|due| key_rotation::until(due, Timestamp::now()))
        .fold(next_check, Duration::min)
}

fn every<K: EnrollmentKind>(object: &K) -> Option<Duration> {
    let every = &object.key_rotation()?.every;
    every.parse::<kube::core::Duration>().ok().map(Duration::from)
}

fn trigger<K: EnrollmentKind>(object: &K) -> Option<&str> {
    object.annotations().get(ROTATE_KEYS_ANNOTATION).map(String::as_str)
}
