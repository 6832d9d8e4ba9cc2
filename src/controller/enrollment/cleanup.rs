//! The other pass: a resource being deleted. Its enrollment is deleted from DPS when the resource
//! owns it and nothing says to leave it; then the finalizer goes.

use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt, runtime::controller::Action};

use super::mode::WriteMode;
use crate::{
    api::{DeletionPolicy, EnrollmentStatus},
    controller::{
        Error, conditions,
        connection::Connection,
        context::Context,
        desired::{AttestationInput, attestation_type},
        error::describe,
        finalizer::{claim_of, remove_finalizer},
        kinds::{EnrollmentKind, Registrations, api_of},
        names::resource_name,
        ownership::{Ownership, holds_claim, ownership, recorded_claim},
        secrets::Reader,
    },
    dps::{self, IfMatch},
};

/// What deleting a resource does in DPS.
#[derive(Debug, PartialEq)]
enum Outcome {
    Deleted,
    /// Left in DPS; `claimed`: the enrollment was this resource's, so its keys must outlive it.
    Left {
        claimed: bool,
        why: String,
    },
}

pub async fn cleanup<K: EnrollmentKind>(object: &K, ctx: &Context) -> Result<Action, Error> {
    // The deletion policy that applies is the one on the latest object: the watch cache may still
    // hold a copy from before the user set `Orphan` just ahead of the delete.
    let api = api_of(&ctx.client, object);
    let latest = api.get_opt(&object.name_any()).await;
    let Some(object) = latest.map_err(|e| Error::kube(format!("reading {}", resource_name(object)), e))?
    else {
        return Ok(Action::await_change());
    };
    let outcome = match delete_from_dps(&object, ctx).await {
        Ok(outcome) => outcome,
        Err(error) => return Err(report_blocked(&object, ctx, error).await),
    };
    let id = object.dps_id();
    let event = match &outcome {
        Outcome::Deleted => Some(("Deleted", format!("Deleted {} {id} from DPS.", K::WHAT))),
        Outcome::Left { claimed: true, why } => {
            keep_key_secret(&object, ctx).await?;
            Some(("Orphaned", format!("Left {} {id} in DPS: {why}.", K::WHAT)))
        }
        Outcome::Left { claimed: false, .. } => None,
    };
    if let Some((reason, note)) = event {
        ctx.events.publish(&object, false, reason, note).await;
    }
    remove_finalizer(&ctx.client, &object).await?;
    ctx.owners.release(object.meta().uid.as_deref().unwrap_or_default());
    ctx.memory.forget(&object);
    Ok(Action::await_change())
}

/// Says on the resource, once, why its enrollment could not be deleted and how to let it go;
/// answers the error, for a retry.
async fn report_blocked<K: EnrollmentKind>(object: &K, ctx: &Context, error: Error) -> Error {
    let message = format!(
        "Could not delete {} {} from DPS: {}. It is retried; to leave it in DPS and let the resource go, run \
         `kubectl patch {} {} -n {} --type merge -p '{{\"spec\":{{\"deletionPolicy\":\"Orphan\"}}}}'`.",
        K::WHAT,
        object.dps_id(),
        describe(&error),
        K::kind(&()).to_lowercase(),
        object.name_any(),
        object.namespace().unwrap_or_default(),
    );
    let old = object.current_status();
    let mut enrollment = old.map(K::enrollment_status).cloned().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let observations = conditions::outcome(Err(("DeletionBlocked", false)), &message);
    enrollment.conditions =
        conditions::update(&enrollment.conditions, &observations, object.meta().generation, &now);
    let registrations = old.map_or(Registrations::Unknown, K::registrations);
    let mut status = K::make_status(enrollment, object.dps_id(), registrations);
    K::set_device_keys(&mut status, old.and_then(K::device_keys_status).cloned());
    K::set_blocked(&mut status, old.map(K::blocked_status).unwrap_or_default().to_vec());
    if old != Some(&status) {
        let api = api_of(&ctx.client, object);
        if let Err(write_failed) = ctx.memory.write_status(&api, object, &status).await {
            return write_failed;
        }
        ctx.events.publish(object, true, "DeletionBlocked", message).await;
    }
    error
}

async fn delete_from_dps<K: EnrollmentKind>(object: &K, ctx: &Context) -> Result<Outcome, Error> {
    let status = object.current_status().map(K::enrollment_status).cloned().unwrap_or_default();
    let status = recorded_claim(status, claim_of(object.meta()), &object.uid().unwrap_or_default());
    let connection = match left_by_policy(object, ctx, &status).await? {
        Ok(connection) => connection,
        Err(left) => return Ok(left),
    };
    let left = |why: &str| Ok(Outcome::Left { claimed: true, why: why.to_owned() });
    match ownership(&status, &connection.host) {
        Ownership::Owned => {}
        // A create DPS never confirmed: whatever is at the id may be someone else's.
        Ownership::CreatePending => return left("DPS never confirmed that this resource created it"),
        Ownership::None => {
            let elsewhere = status.claimed_host.as_deref().unwrap_or("another DPS");
            let host = &connection.host;
            return left(&format!("it was created at {elsewhere}, and the connection now points at {host}"));
        }
    }
    delete_enrollment(object, &connection).await?;
    let blocked = object.current_status().map(K::blocked_status).unwrap_or_default();
    super::blocked::unblock_all(blocked, &object.dps_id(), &connection).await?;
    Ok(Outcome::Deleted)
}

/// The connection to delete on, or why the enrollment is left in DPS: the resource holds no
/// claim, the CRD is being deleted (uninstalling never deletes in DPS), writes are off, or a
/// deletion policy says `Orphan`.
async fn left_by_policy<K: EnrollmentKind>(
    object: &K,
    ctx: &Context,
    status: &EnrollmentStatus,
) -> Result<Result<Connection, Outcome>, Error> {
    let left = |claimed: bool, why: &str| Ok(Err(Outcome::Left { claimed, why: why.to_owned() }));
    if !holds_claim(status) {
        return left(false, "this resource never created or adopted it");
    }
    if crd_being_deleted::<K>(&ctx.client).await? {
        return left(true, "its CustomResourceDefinition is being deleted");
    }
    match WriteMode::of(object) {
        Ok(WriteMode::Manage) => {}
        Ok(mode) => return left(true, &format!("nothing is deleted because {}", mode.why_not_written())),
        Err(error) => return left(true, &format!("nothing is deleted because the {error}")),
    }
    let settings = object.settings();
    // The webhook refuses the delete of a protected resource; without it (not installed), the
    // enrollment at least stays in DPS.
    if settings.deletion_protected(status.deletion_protected) {
        return left(true, "it is protected from deletion (deletionProtection)");
    }
    if settings.deletion_policy == Some(DeletionPolicy::Orphan) {
        return left(true, "its deletionPolicy is Orphan");
    }
    let namespace = object.namespace().unwrap_or_default();
    let connection =
        ctx.connections.for_enrollment(&ctx.client, &ctx.caches, &settings.service_ref, &namespace).await?;
    let default = connection.defaults.as_ref().and_then(|d| d.deletion_policy);
    if settings.deletion_policy.or(default) == Some(DeletionPolicy::Orphan) {
        return left(true, &format!("the deletion policy of {} is Orphan", connection.name));
    }
    Ok(Ok(connection))
}

/// Deletes `object`'s enrollment on `connection`, and its registration records when the spec
/// asks; one already gone counts as deleted.
async fn delete_enrollment<K: EnrollmentKind>(object: &K, connection: &Connection) -> Result<(), Error> {
    let id = object.dps_id();
    let gone = |result: Result<(), dps::Error>| match result {
        Ok(()) | Err(dps::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(connection.dps_error(source)),
    };
    let attestation = attestation_type(object.attestation_input()?.kind());
    gone(connection.bulk.delete::<K::Record>(&id, attestation).await)?;
    if object.settings().delete_registration_records != Some(true) {
        return Ok(());
    }
    let registrations: Vec<String> = if K::IS_GROUP {
        let states = connection.client.query_registrations(&id, Some(100)).try_collect::<Vec<_>>().await;
        states.map_err(|e| connection.dps_error(e))?.into_iter().filter_map(|s| s.registration_id).collect()
    } else {
        vec![id]
    };
    for registration in registrations {
        gone(connection.client.delete_registration(&registration, IfMatch::None).await)?;
    }
    Ok(())
}

/// Whether the CustomResourceDefinition of `K` is being deleted.
async fn crd_being_deleted<K: EnrollmentKind>(client: &kube::Client) -> Result<bool, Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let name = format!("{}.{}", K::plural(&()), K::group(&()));
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading CustomResourceDefinition {name}"), e))?;
    Ok(crd.is_none_or(|crd| crd.metadata.deletion_timestamp.is_some()))
}

/// The enrollment stays in DPS: its generated key Secret must outlive the resource, or the keys
/// devices use would be lost with it.
async fn keep_key_secret<K: EnrollmentKind>(object: &K, ctx: &Context) -> Result<(), Error> {
    let Ok(AttestationInput::SymmetricKey(key)) = object.attestation_input() else { return Ok(()) };
    let secret = &key.secret_ref;
    let namespace = object.namespace().unwrap_or_default();
    let reader = Reader::new(&ctx.client, &namespace);
    if reader.release_secret(&secret.name, &object.uid().unwrap_or_default()).await? {
        let note = format!(
            "Secret {namespace}/{} keeps the keys of {} {}, which stays in DPS; it is no longer owned by this \
             resource and is not deleted with it.",
            secret.name,
            K::WHAT,
            object.dps_id()
        );
        ctx.events.publish(object, false, "SecretKept", note).await;
    }
    Ok(())
}
