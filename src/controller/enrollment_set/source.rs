//! What a set pass reads from Kubernetes: the member lists, the set's keys (created when
//! missing), and the device keys Secret it writes.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt};

use super::{
    build::Builder,
    members::{self, INLINE, ListError, Member},
};
use crate::{
    api::{AttestationKind, IndividualEnrollmentSet},
    controller::{Error, device_keys::random_key, digest_key::DigestKey, secrets::Reader},
    dps::models::Secret,
};

/// The most a Secret holds (its data, as the API server counts it).
pub const SECRET_LIMIT: usize = 1024 * 1024;

/// Every member of `set`, sorted by lower-case id; a list that cannot be read or parsed, or an
/// id listed twice, is an error naming it.
pub async fn members(
    set: &IndividualEnrollmentSet,
    kind: AttestationKind,
    reader: &Reader<'_>,
) -> Result<Vec<Member>, Error> {
    let namespace = reader.namespace;
    let mut names = vec![INLINE.to_owned()];
    let inline = set.spec.members.iter().enumerate().map(|(index, member)| {
        members::checked(member.clone(), kind, index)
            .map_err(|problem| ListError::Whole { list: format!("{INLINE}[{index}]"), problem })
    });
    let mut lists = vec![inline.collect::<Result<Vec<_>, _>>()?];
    for list in &set.spec.member_lists {
        let (name, key, text) = match (&list.config_map_ref, &list.secret_ref) {
            (Some(map), _) => {
                let text = reader.config_map_text(&map.name, &map.key).await?;
                (format!("ConfigMap {namespace}/{} key {}", map.name, map.key), &map.key, text)
            }
            (None, Some(secret)) => {
                let text = reader.secret_text(&secret.name, &secret.key).await?.expose().to_owned();
                (format!("Secret {namespace}/{} key {}", secret.name, secret.key), &secret.key, text)
            }
            (None, None) => {
                return Err(Error::InvalidSpec("a member list names no ConfigMap or Secret".into()));
            }
        };
        lists.push(members::parse(&name, &text, members::format_of(key, list.format), kind)?);
        names.push(name);
    }
    Ok(members::gather(lists, &names)?)
}

/// The set's keys, for a symmetric-key set: from its Secret, which is created with random keys
/// (owned by the set) when it does not exist.
pub async fn keys(
    set: &IndividualEnrollmentSet,
    reader: &Reader<'_>,
) -> Result<Option<(Secret, Secret)>, Error> {
    let Some(symmetric) = &set.spec.attestation.symmetric_key else { return Ok(None) };
    let owner = owner_reference(set)?;
    let name = &symmetric.secret_ref.name;
    if let Some((keys, _)) = reader.symmetric_keys(name, &owner.uid).await? {
        return Ok(Some(keys));
    }
    let (keys, _) = reader.create_key_secret(name, &owner, (random_key(), random_key())).await?;
    Ok(Some(keys))
}

fn owner_reference(
    set: &IndividualEnrollmentSet,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference, Error> {
    set.controller_owner_ref(&()).ok_or_else(|| Error::InvalidSpec("the resource has no uid yet".into()))
}

/// The device keys Secret as a pass leaves it: its name and a digest of what it holds.
pub type DeviceKeys = Option<(String, String)>;

/// Writes each member's derived key (but `skip`'s) to the Secret the spec names, when it
/// differs from what was written last (`written`; `None` too when that Secret is gone); removes
/// the Secret written before when the spec no longer names one.
pub async fn device_keys(
    set: &IndividualEnrollmentSet,
    written: DeviceKeys,
    members: &[Member],
    skip: &(dyn Fn(&str) -> bool + Sync),
    builder: &Builder,
    reader: &Reader<'_>,
    digest_key: &DigestKey,
) -> Result<DeviceKeys, Error> {
    let wanted = set.spec.attestation.symmetric_key.as_ref().and_then(|s| s.device_keys_secret_name.as_ref());
    let owner = owner_reference(set)?;
    let Some(name) = wanted else {
        if let Some((old, _)) = written {
            reader.delete_owned_secret(&old, &owner.uid).await?;
        }
        return Ok(None);
    };
    // The digest and the size first, key by key: the Secret's data is built only to be written.
    let keys = || {
        members.iter().filter(|m| !skip(&m.registration_id.to_lowercase())).filter_map(|m| {
            Some((m.registration_id.replace(':', "_"), builder.device_key(&m.registration_id)?))
        })
    };
    let (mut count, mut bytes) = (0, 0);
    let digest = digest_key.sign(|context| {
        context.update(name.as_bytes());
        for (id, key) in keys() {
            (count, bytes) = (count + 1, bytes + id.len() + key.expose().len());
            context.update(&[0]);
            context.update(id.as_bytes());
            context.update(&[0]);
            context.update(key.expose().as_bytes());
        }
    });
    if bytes > SECRET_LIMIT {
        let namespace = reader.namespace.to_owned();
        return Err(Error::DeviceKeysTooLarge {
            namespace,
            name: name.clone(),
            members: count,
            bytes,
            limit: SECRET_LIMIT,
        });
    }
    if written.as_ref().is_some_and(|(old, old_digest)| old == name && *old_digest == digest) {
        return Ok(written);
    }
    let data: BTreeMap<String, Secret> = keys().collect();
    reader.apply_owned_secret(name, &owner, &data).await.map_err(|error| match error {
        Error::SecretNotOwned { namespace, name } => Error::DeviceKeysSecretNotOwned { namespace, name },
        other => other,
    })?;
    if let Some((old, _)) = written.filter(|(old, _)| old != name) {
        reader.delete_owned_secret(&old, &owner.uid).await?;
    }
    Ok(Some((name.clone(), digest)))
}

/// Whether the Secret the set wrote its device keys to is known to be gone.
pub fn device_keys_gone(set: &IndividualEnrollmentSet, known_absent: impl Fn(&str, &str) -> bool) -> bool {
    let name = set.status.as_ref().and_then(|s| s.device_keys_secret.as_deref());
    name.is_some_and(|name| known_absent(&set.namespace().unwrap_or_default(), name))
}
