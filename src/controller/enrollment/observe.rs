//! After DPS holds the enrollment: what its devices did (registrations), and, for a group, the
//! device keys Secret derived from its key.

use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::inputs::Material;
use crate::{
    api::{DeviceKeysStatus, KeySlot},
    controller::{
        Error,
        connection::Connection,
        device_keys,
        digest_key::DigestKey,
        kinds::{EnrollmentKind, Registrations, registration_record, summarize},
        secrets::Reader,
    },
};

/// How many of a group's latest registrations the status lists.
const LATEST_REGISTRATIONS: usize = 5;

/// The registrations of enrollment `id`: a group's read with the registration query (unknown when
/// it fails: they are informational), an individual enrollment's from `record` when a GET read it.
pub async fn registrations<K: EnrollmentKind>(
    connection: &Connection,
    id: &str,
    record: Option<&K::Record>,
) -> Registrations {
    if K::IS_GROUP {
        return match connection.client.query_registrations(id, Some(100)).try_collect::<Vec<_>>().await {
            Ok(states) => Registrations::Group(summarize(&states, LATEST_REGISTRATIONS)),
            Err(error) => {
                tracing::info!(%error, "could not read the registrations of enrollment group {id}");
                Registrations::Unknown
            }
        };
    }
    // A GET holds the registration state (`unassigned` before any device registered); a query's
    // records hold none, and say nothing about it.
    match record.and_then(K::registration_state) {
        Some(state) => Registrations::Device(Some(Box::new(registration_record(state)))),
        None => Registrations::Unknown,
    }
}

/// Writes a group's device keys Secret as its spec asks, from its active key (when `material`
/// holds it); the group key's own Secret is never overwritten.
pub async fn device_keys<K: EnrollmentKind>(
    object: &K,
    reader: &Reader<'_>,
    owner_reference: &OwnerReference,
    material: &Material<'_, K::Record>,
    digest_key: &DigestKey,
) -> Result<Option<DeviceKeysStatus>, Error> {
    if let (Some(keys), Some(group_secret)) = (object.device_keys(), material.key_secret)
        && keys.secret_name == group_secret
    {
        return Err(Error::InvalidSpec(format!(
            "spec.deviceKeys.secretName is {group_secret}, the group key's Secret: it would be overwritten"
        )));
    }
    let written = object.current_status().and_then(K::device_keys_status);
    let active = material.resolved.key_secret.as_ref().map(|state| state.active).unwrap_or_default();
    let group_key = material.resolved.keys.as_ref().map(|keys| match active {
        KeySlot::Primary => &keys.0,
        KeySlot::Secondary => &keys.1,
    });
    let plan = device_keys::plan(object.device_keys(), group_key, written, digest_key);
    device_keys::apply(reader, owner_reference, plan).await
}
