//! The enrollment reconciler, for both kinds. A pass over a live resource reads top-down
//! ([`apply`], then [`sync`]):
//!
//! 1. resolve: the connection, and the Secrets' material with the record the spec describes
//!    ([`inputs`]);
//! 2. claim: the resource's place in the register of owners ([`claim`]), and a key rotation
//!    started when one is due ([`rotation`]);
//! 3. check: whether DPS is due a look, and what the query snapshot already says ([`check`]);
//! 4. converge: read, decide and write in DPS ([`converge`], its I/O in [`edges`]);
//! 5. observe: a rotated key published once DPS holds it ([`rotation`]), the registrations and a
//!    group's device keys ([`observe`]);
//! 6. status: made from the outcome ([`status`], pure), written with the finalizer and claim;
//! 7. events: what changed, once ([`events`], pure).
//!
//! A resource being deleted takes the other pass, [`cleanup`].

mod adoption;
mod blocked;
mod check;
mod claim;
mod cleanup;
mod converge;
mod edges;
mod events;
mod inputs;
mod mode;
mod observe;
mod outcome;
mod rotation;
mod status;

use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{ResourceExt, runtime::controller::Action};

use self::{
    check::Reads,
    converge::{Done, Pass, converge},
    edges::LiveEdges,
    mode::WriteMode,
    outcome::Synced,
};
use super::{
    Error,
    connection::Connection,
    context::Context,
    finalizer::{MetadataChange, claim_of, has_finalizer, write_metadata},
    key_rotation,
    kinds::{EnrollmentKind, api_of},
    names::{object_key, resource_name},
    ownership::{Ownership, annotation_change, recorded_claim},
    retry::{jitter, retry_delay},
    secrets::Reader,
};
use crate::api::{Adoption, EnrollmentStatus};

pub async fn reconcile<K: EnrollmentKind>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = api_of(&ctx.client, &*object);
    let key = object_key(&*object);
    let started = std::time::Instant::now();
    // The next check is what this pass decides.
    ctx.memory.check_after(&key, None);
    let selected =
        |object: &K| ctx.selector.as_ref().is_none_or(|s| s.matches(object.meta().labels.as_ref()));
    let result = match ctx.memory.latest(&api, object.clone()).await {
        // Relabelled to another shard since the watch saw it: that shard's now.
        Ok(Some(object)) if !selected(&object) => {
            ctx.memory.forget(&*object);
            Ok(Action::await_change())
        }
        Ok(Some(object)) if object.meta().deletion_timestamp.is_none() => apply(&*object, &ctx).await,
        Ok(Some(object)) if has_finalizer(object.meta()) => cleanup::cleanup(&*object, &ctx).await,
        // Gone, or being deleted without the finalizer (it never claimed anything in DPS): nothing
        // about it is worth remembering.
        Ok(_) => {
            ctx.memory.forget(&*object);
            Ok(Action::await_change())
        }
        Err(error) => Err(Error::kube(format!("reading {}", resource_name(&*object)), error)),
    };
    if result.is_ok() {
        ctx.memory.record_success(&key);
    }
    let reason = result.as_ref().err().map(Error::reason);
    ctx.health.metrics.reconciled(K::kind(&()).as_ref(), started.elapsed(), reason);
    result
}

/// When to try again after a failed reconcile: as the error asks, with exponential backoff and
/// jitter for transient failures, capped at five minutes.
pub fn error_policy<K: EnrollmentKind>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.memory.record_failure(&object_key(&*object));
    let tracking_id = error.tracking_id();
    tracing::warn!(object = %object_key(&*object), %error, failures, tracking_id, "reconcile failed");
    Action::requeue(retry_delay(error.retry(), failures))
}

/// A pass over a live resource: [`sync`] with DPS, then the status, the metadata and the events
/// that follow from what it did.
async fn apply<K: EnrollmentKind>(object: &K, ctx: &Context) -> Result<Action, Error> {
    let (mut recorded, mut meta, mut result) = pass(object, ctx, Reads::Cached).await;
    let latest;
    let mut object = object;
    // A refusal gives up the resource's claim, so it is made only from what the API server and
    // DPS hold now: the watch caches of a new leader may not have caught up yet with the claim
    // and key Secret its predecessor wrote just before stepping down.
    if result.as_ref().is_err_and(Error::is_stalled) {
        match read_afresh(ctx, object).await? {
            Some(fresh) => latest = fresh,
            // Gone or being deleted meanwhile: the next pass sees it.
            None => return Ok(Action::requeue(std::time::Duration::ZERO)),
        }
        object = &latest;
        (recorded, meta, result) = pass(object, ctx, Reads::Fresh).await;
    }
    let id = object.dps_id();
    let old = object.current_status();
    let old_enrollment = old.map(K::enrollment_status).cloned().unwrap_or_default();
    let uid = object.uid().unwrap_or_default();
    // An annotation that cannot be read stops all writes, as pausing does.
    let shown_mode = WriteMode::of(object).unwrap_or(WriteMode::Paused);

    let now = Time(jiff::Timestamp::now());
    let facts = status::Facts {
        id: &id,
        generation: object.meta().generation,
        attestation: object.attestation_input().map(|input| input.kind()).ok(),
        mode: shown_mode,
        now: &now,
        expiry_warning: ctx.config.certificate_expiry_warning,
    };
    let enrollment = status::enrollment_status::<K>(&recorded, &facts, &result);
    let (ready, reason) = status::readiness(&enrollment);
    ctx.memory.set_ready(object, ready, reason);
    ctx.memory.set_facts(object, status::metric_facts::<K>(&enrollment, object.current_status(), &result));
    let spec_changed = old_enrollment.observed_generation != facts.generation;
    let notes = events::of_pass(K::WHAT, &id, &old_enrollment, &enrollment, spec_changed, &result);
    // Every resource gets the finalizer (a new one with its first claim, in the same write), the
    // claim annotation its status backs, and none that it does not.
    let claim = annotation_change(claim_of(&meta), &enrollment, &uid);
    let change = MetadataChange { add_finalizer: true, claim: claim.as_ref().map(Option::as_deref) };
    if let Err(error) = write_metadata(&ctx.client, &ctx.memory, object, &meta, change).await {
        return gone_meanwhile(ctx, object, error).await;
    }
    let (status, worth_writing) = status::resource_status::<K>(old, enrollment, &id, &result);
    if worth_writing {
        let api = api_of(&ctx.client, object);
        ctx.memory.write_status(&api, object, &status).await?;
    }
    for note in notes {
        ctx.events.publish(object, note.warning, note.reason, note.message).await;
    }
    ctx.memory.check_after(&object_key(object), Some(result?.next_check));
    Ok(Action::await_change())
}

/// What one pass over `object` decided: the claim as recorded, the object's metadata as the pass
/// wrote it, and what [`sync`] did.
async fn pass<K: EnrollmentKind>(
    object: &K,
    ctx: &Context,
    reads: Reads,
) -> (EnrollmentStatus, ObjectMeta, Result<Synced<K::Record>, Error>) {
    let old = object.current_status().map(K::enrollment_status).cloned().unwrap_or_default();
    let uid = object.uid().unwrap_or_default();
    let mut recorded = recorded_claim(old.clone(), claim_of(object.meta()), &uid);
    let meta = Mutex::new(object.meta().clone());
    let result = match WriteMode::of(object) {
        Ok(mode) => sync(object, ctx, mode, &old, &mut recorded, &meta, reads).await,
        Err(error) => Err(error),
    };
    (recorded, meta.into_inner().unwrap_or_else(|e| e.into_inner()), result)
}

/// `object` as the API server holds it now; `None` when it is gone, replaced or being deleted.
async fn read_afresh<K: EnrollmentKind>(ctx: &Context, object: &K) -> Result<Option<K>, Error> {
    let latest = ctx
        .memory
        .read_afresh(&api_of(&ctx.client, object), object)
        .await
        .map_err(|e| Error::kube(format!("reading {}", resource_name(object)), e))?;
    Ok(latest.filter(|latest| {
        latest.meta().uid == object.meta().uid && latest.meta().deletion_timestamp.is_none()
    }))
}

/// Brings DPS in line with `object`. `recorded`: the claim as this pass has recorded it so far
/// (`old`, with a claim annotation it did not catch up with), then the claim.
async fn sync<K: EnrollmentKind>(
    object: &K,
    ctx: &Context,
    mode: WriteMode,
    old: &EnrollmentStatus,
    recorded: &mut EnrollmentStatus,
    meta: &Mutex<ObjectMeta>,
    reads: Reads,
) -> Result<Synced<K::Record>, Error> {
    let (id, namespace, settings) =
        (object.dps_id(), object.namespace().unwrap_or_default(), object.settings());
    let connection =
        ctx.connections.for_enrollment(&ctx.client, &ctx.caches, &settings.service_ref, &namespace).await?;
    let owner_reference = inputs::owner_reference(object)?;
    let reader = reads.secrets(&ctx.client, &namespace, &ctx.caches.secrets);
    let material =
        adoption::resolve(object, &reader, &ctx.digest_key, recorded, &connection, mode.may_write()).await?;
    let interval = inputs::drift_interval(object, &connection, ctx.config.drift_check_interval);
    let protected =
        settings.deletion_protected(connection.defaults.as_ref().and_then(|d| d.deletion_protection));
    let ownership =
        claim::take(object, &connection.host, mode.may_write(), recorded, &ctx.owners, &ctx.events).await?;
    let may_rotate = mode.may_write() && ownership == Ownership::Owned;
    let (material, rotation) =
        rotation::start(object, &reader, material, may_rotate, &ctx.digest_key, recorded).await?;
    let rotation_refused = rotation == key_rotation::Start::NotGenerated;
    // A rotation in progress has DPS read, so that its key is published once DPS holds it.
    let rotating =
        may_rotate && material.resolved.key_secret.as_ref().is_some_and(|s| s.rotating_to.is_some());

    let inputs_changed =
        check::inputs_changed(object.meta().generation, old, recorded, &material) || rotating;
    let settled = reads == Reads::Cached && check::settled(old, mode, ownership, inputs_changed);
    let key = object_key(object);
    // A settled resource whose drift check is not due: DPS is not consulted.
    if let Some(next_check) = check::not_due(settled, ctx.memory.since_check(&key), interval) {
        let keys = rotation::status(object, &material, mode.may_write(), &ctx.digest_key);
        let next_check = rotation::sooner(next_check, keys.as_ref(), &material);
        let synced = Synced::new(Done::NotDue, None, material, connection.host.clone(), true, next_check);
        return Ok(Synced { protected, keys, rotation_refused, ..synced });
    }
    ctx.memory.checked(&key);
    let reading = check::reading(settled, ownership, mode.may_write(), interval);
    let known =
        check::known(&ctx.snapshots, &connection, reading, &id, old.etag.as_deref(), &material).await?;

    let edges = LiveEdges::new(ctx, object, &connection, &reader, &owner_reference, &id, meta);
    let mut pass = Pass {
        what: K::WHAT,
        id: &id,
        host: &connection.host,
        connection: &connection.name,
        namespace: &namespace,
        may_write: mode.may_write(),
        adopt: settings.adoption == Some(Adoption::Adopt),
        inputs_changed,
        ownership,
        material,
        digest_key: &ctx.digest_key,
        known,
        certificate_sources: adoption::certificate_sources(object),
    };
    let (done, record) = converge(&edges, &mut pass, recorded).await?;
    let Pass { ownership, mut material, .. } = pass;
    let owned = ownership == Ownership::Owned;
    let in_sync = owned && mode.may_write() && !matches!(done, Done::Reported { .. });
    rotation::publish::<K>(&reader, &mut material, in_sync).await?;
    let keys = rotation::status(object, &material, in_sync, &ctx.digest_key);

    let registrations = observe::registrations::<K>(&connection, &id, record.as_ref()).await;
    // A group's device keys follow its key once the group is ours and written as specified.
    let writable = mode.may_write() && owned;
    let device_keys =
        writable.then(|| observe::device_keys(object, &reader, &owner_reference, &material, &ctx.digest_key));
    let device_keys = futures::future::OptionFuture::from(device_keys).await.transpose()?;
    let blocked = block_devices(object, writable, &connection, &reader).await?;
    let next_check = rotation::sooner(jitter(interval, 0.2), keys.as_ref(), &material);
    let synced = Synced::new(done, record, material, connection.host.clone(), owned, next_check);
    Ok(Synced { registrations, device_keys, blocked, protected, keys, rotation_refused, ..synced })
}

/// A group's blocked devices brought in line with its spec, once it is ours and may be written;
/// `None` when not looked at.
async fn block_devices<K: EnrollmentKind>(
    object: &K,
    may_write: bool,
    connection: &Connection,
    reader: &Reader<'_>,
) -> Result<Option<Vec<String>>, Error> {
    if !(may_write && K::IS_GROUP) {
        return Ok(None);
    }
    let recorded = object.current_status().map(K::blocked_status).unwrap_or_default();
    blocked::sync(object.blocked_devices(), recorded, &object.dps_id(), connection, reader).await.map(Some)
}

/// The end of a pass whose last metadata write failed: when the resource was deleted meanwhile
/// (gone, or being deleted and so refusing a new finalizer), it never claimed anything, and its
/// place in the register of owners is given up; otherwise the error.
async fn gone_meanwhile<K: EnrollmentKind>(
    ctx: &Context,
    object: &K,
    error: kube::Error,
) -> Result<Action, Error> {
    let api = api_of(&ctx.client, object);
    let failed = |error| Error::kube(format!("adding the finalizer to {}", resource_name(object)), error);
    let latest = match &error {
        kube::Error::Api(status) if [404, 422].contains(&status.code) => {
            api.get_opt(&object.name_any()).await.map_err(failed)?
        }
        _ => return Err(failed(error)),
    };
    if latest.is_some_and(|latest| latest.meta().deletion_timestamp.is_none()) {
        return Err(failed(error));
    }
    ctx.owners.release(object.meta().uid.as_deref().unwrap_or_default());
    ctx.memory.forget(object);
    Ok(Action::await_change())
}
