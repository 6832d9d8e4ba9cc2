//! `IndividualEnrollmentSet`: many individual enrollments from one template and a member list,
//! reconciled through DPS's bulk API.
//!
//! A pass: read the connection, the members (`source`, checked in `members`), the set's keys;
//! build what DPS should hold of each member (`build`); compare it with the connection's `index`
//! (one paged query for every set on the connection, kept current by the sets' own writes) and
//! with who else lists or owns each id (`registry`, the register of owners), giving each member
//! its step (`plan`); `write` the creates, updates and deletes in bulk; write the device keys
//! Secret; and the `status`. Per member the operator keeps only its id (in the registry) and a
//! fingerprint, an etag and a mark (in the index).

mod build;
mod index;
mod members;
mod plan;
mod registry;
mod source;
mod status;
mod watch;
mod write;

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{self, Event},
    },
};

pub use index::{Indexes, SET_MARK};

pub use members::ListError;
pub use registry::Registry;
pub use watch::controller;

use self::{
    build::Builder,
    plan::{Inputs, Others, WRITES_PER_PASS},
    status::{Next, Passed},
};
use super::{
    Error, context::Context, finalizer::FINALIZER, names::FIELD_MANAGER, ownership::ClaimKey, secrets::Reader,
};
use crate::api::{
    DeletionPolicy, GROUP, IndividualEnrollmentSet, IndividualEnrollmentSetStatus, PAUSED_ANNOTATION,
    STORAGE_VERSION,
};

/// What the set passes share.
#[derive(Default)]
pub struct Sets {
    pub indexes: Indexes,
    pub registry: Registry,
    /// The device keys Secret each set's last pass left, by `namespace/name`.
    device_keys: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

impl Sets {
    fn device_keys(&self, set: &str) -> source::DeviceKeys {
        self.device_keys.lock().unwrap_or_else(|e| e.into_inner()).get(set).cloned()
    }

    fn wrote_device_keys(&self, set: &str, keys: source::DeviceKeys) {
        let mut remembered = self.device_keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys {
            Some(keys) => remembered.insert(set.to_owned(), keys),
            None => remembered.remove(set),
        };
    }
}

/// `namespace/name`: how the set is named in DPS marks and messages.
fn me(set: &IndividualEnrollmentSet) -> String {
    format!("{}/{}", set.namespace().unwrap_or_default(), set.name_any())
}

/// Reconciles one set: its finalizer, then a pass (or, when it is deleted, its cleanup).
pub async fn reconcile(set: Arc<IndividualEnrollmentSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<IndividualEnrollmentSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    finalizer::finalizer(&api, FINALIZER, set, |event| async {
        match event {
            Event::Apply(set) => apply(&set, &ctx).await,
            Event::Cleanup(set) => cleanup(&set, &ctx).await,
        }
    })
    .await
    .map_err(|error| match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
        finalizer::Error::AddFinalizer(error) | finalizer::Error::RemoveFinalizer(error) => {
            Error::kube("writing the finalizer of an IndividualEnrollmentSet", error)
        }
        other => Error::InvalidSpec(other.to_string()),
    })
}

/// A pass and its status.
async fn apply(set: &IndividualEnrollmentSet, ctx: &Context) -> Result<Action, Error> {
    let interval = ctx.config.drift_check_interval;
    let (passed, interval) = match pass(set, ctx).await {
        Ok((passed, interval)) => (passed, interval),
        Err(error) => (Passed::Failed(error), interval),
    };
    let kind = build::kind(&set.spec.attestation);
    let now = Time(Timestamp::now());
    let (status, next) =
        status::next(set.status.as_ref(), set.metadata.generation, kind, passed, interval, &now);
    if set.status.as_ref() != Some(&status) {
        write_status(set, &status, ctx).await?;
    }
    let metrics = &ctx.health.metrics;
    metrics.set_members(&set.namespace().unwrap_or_default(), &set.name_any(), status.counts.as_ref());
    Ok(match next {
        Next::Now => Action::requeue(Duration::from_millis(10)),
        Next::After(wait) => Action::requeue(wait),
    })
}

/// Reads what the set needs, plans, writes; answers what it found and the drift check interval.
async fn pass(set: &IndividualEnrollmentSet, ctx: &Context) -> Result<(Passed, Duration), Error> {
    let me = me(set);
    let namespace = set.namespace().unwrap_or_default();
    let connection =
        ctx.connections.for_enrollment(&ctx.client, &ctx.caches, &set.spec.service_ref, &namespace).await?;
    let interval =
        connection.drift_interval(set.spec.drift_check_interval.as_deref(), ctx.config.drift_check_interval);
    let reader = Reader::knowing(&ctx.client, &namespace, &ctx.caches.secrets);
    let kind = build::kind(&set.spec.attestation);
    // The index stays locked through the pass: sets on one connection plan from what the others
    // wrote, and one set at a time holds its members in memory.
    let mut index = ctx.sets.indexes.of(&connection, interval).await.map_err(|e| connection.dps_error(e))?;
    let members = source::members(set, kind, &reader).await?;
    let keys = source::keys(set, &reader).await?;
    let custom = set.spec.template.as_deref().and_then(|t| t.custom_allocation.as_deref());
    let webhook = match custom {
        Some(custom) => Some(reader.webhook_url(&custom.webhook_url_secret_ref).await?),
        None => None,
    };
    let builder = Builder::new(&set.spec, &me, webhook, keys, &ctx.digest_key)?;
    let listed: Vec<Box<str>> =
        members.iter().map(|m| m.registration_id.to_lowercase().into_boxed_str()).collect();
    let earlier = ctx.sets.registry.list(&connection.host, &me, listed.clone());
    let paused = set.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    let resource = |id: &str| {
        let key = ClaimKey::new(&connection.host, "enrollments", id);
        ctx.owners.holder(&key).map(|owner| owner.name.to_string())
    };
    let inputs = Inputs {
        members: &members,
        listed: &listed,
        me: &me,
        others: Others { earlier: &earlier, resource: &resource },
        remove: set.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Delete,
        limit: if paused { 0 } else { WRITES_PER_PASS },
        attestation: super::desired::attestation_type(kind),
    };
    let mut planned = plan::plan(&inputs, &index, |member| builder.member(member));
    // Updates of enrollments whose etag is not known (written since the last query) need a read
    // each; when that is more reads than a query of them all, the query it is.
    if planned.writes.blind_updates.len() > index.records.len() / index::PAGE_SIZE as usize + 1 {
        index.refresh(&connection).await.map_err(|e| connection.dps_error(e))?;
        planned = plan::plan(&inputs, &index, |member| builder.member(member));
    }
    let written = write::run(&connection, std::mem::take(&mut planned.writes)).await;
    index.record(&me, &written, &planned.fingerprints);
    planned.tally.settle(&written);
    let (device_keys, problem) = device_keys(set, ctx, &members, &planned.conflicts, &builder, &reader).await;
    drop(index);
    let passed = Passed::Done { tally: planned.tally, device_keys, more: planned.more, paused, problem };
    Ok((passed, interval))
}

/// Writes the device keys Secret when it is due; a failure is the pass's problem to report, and
/// the status keeps what was written before.
async fn device_keys(
    set: &IndividualEnrollmentSet,
    ctx: &Context,
    members: &[members::Member],
    conflicts: &std::collections::HashSet<Box<str>>,
    builder: &Builder,
    reader: &Reader<'_>,
) -> (source::DeviceKeys, Option<Error>) {
    let gone = source::device_keys_gone(set, |ns, name| ctx.caches.secrets.known_absent(ns, name));
    let skip = |id: &str| conflicts.contains(id);
    // What this process wrote last: the set in hand may predate the status that says so.
    let me = me(set);
    let status = set.status.as_ref();
    let recorded = status.and_then(|s| s.device_keys_secret.clone().zip(s.device_keys_digest.clone()));
    let written = ctx.sets.device_keys(&me).or(recorded);
    let current = written.clone().filter(|_| !gone);
    match source::device_keys(set, current, members, &skip, builder, reader, &ctx.digest_key).await {
        Ok(keys) => {
            ctx.sets.wrote_device_keys(&me, keys.clone());
            (keys, None)
        }
        Err(error) => (written, Some(error)),
    }
}

/// The set is being deleted: with `deletionPolicy: Delete`, every enrollment it made goes from
/// DPS (in bulk); its Secrets go with it (they are owned by it).
async fn cleanup(set: &IndividualEnrollmentSet, ctx: &Context) -> Result<Action, Error> {
    let me = me(set);
    ctx.sets.registry.forget(&me);
    ctx.sets.wrote_device_keys(&me, None);
    ctx.health.metrics.set_members(&set.namespace().unwrap_or_default(), &set.name_any(), None);
    if set.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    let namespace = set.namespace().unwrap_or_default();
    let connection =
        ctx.connections.for_enrollment(&ctx.client, &ctx.caches, &set.spec.service_ref, &namespace).await?;
    let interval =
        connection.drift_interval(set.spec.drift_check_interval.as_deref(), ctx.config.drift_check_interval);
    let mut index = ctx.sets.indexes.of(&connection, interval).await.map_err(|e| connection.dps_error(e))?;
    let kind = build::kind(&set.spec.attestation);
    loop {
        let made: Vec<Box<str>> = plan::removed(&index, &me, &[]).into_iter().map(Box::from).collect();
        if made.is_empty() {
            return Ok(Action::await_change());
        }
        let writes = write::Writes {
            deletes: made,
            attestation: Some(super::desired::attestation_type(kind)),
            ..Default::default()
        };
        let written = write::run(&connection, writes).await;
        index.record(&me, &written, &Default::default());
        if let Some(failure) = written.delete_failures.first() {
            return Err(Error::MembersNotDeleted {
                set: me,
                count: written.delete_failures.len(),
                first: format!("{}: {}", failure.registration_id, failure.message),
            });
        }
    }
}

async fn write_status(
    set: &IndividualEnrollmentSet,
    status: &IndividualEnrollmentSetStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let api: Api<IndividualEnrollmentSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": format!("{GROUP}/{STORAGE_VERSION}"),
        "kind": "IndividualEnrollmentSet",
        "status": status,
    });
    api.patch_status(&set.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("writing the status of IndividualEnrollmentSet {}", me(set)), e))?;
    Ok(())
}
