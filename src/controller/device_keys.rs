//! The keys of named devices of a symmetric-key group, derived as DPS derives them and kept in
//! one Secret the group owns: what to write is decided here, from the spec, the group key and
//! what the status says was written last.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{Error, digest_key::DigestKey, secrets::Reader};
use crate::{
    api::{DeviceKeys, DeviceKeysStatus},
    dps::models::Secret,
};

/// A device's key in a group: base64 of HMAC-SHA256 of its registration id, keyed with the
/// decoded group key. `None` when the group key is not base64.
pub fn derive(group_key: &Secret, registration_id: &str) -> Option<Secret> {
    let key = BASE64.decode(group_key.expose()).ok()?;
    let signed =
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), registration_id.as_bytes());
    Some(Secret::new(BASE64.encode(signed.as_ref())))
}

/// A random 64-byte symmetric key, base64, as DPS generates them.
pub fn random_key() -> Secret {
    Secret::new(BASE64.encode(crate::random_bytes::<64>()))
}

/// What a pass does about the device keys Secret.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Nothing asked, nothing written before.
    None,
    /// As last written: the status stays, and the Secret is restored to `data` if it was
    /// deleted or edited since.
    Keep { data: BTreeMap<String, Secret>, status: DeviceKeysStatus },
    /// The group key is not known (yet): what was written stays as it is.
    Unknown(DeviceKeysStatus),
    /// Write `data` to the Secret `status.secret_name` (and remove `remove`, the Secret written
    /// before under another name).
    Write { data: BTreeMap<String, Secret>, status: DeviceKeysStatus, remove: Option<String> },
    /// No longer asked for: remove the Secret written before.
    Remove(String),
}

/// Decides from the spec, the group's primary key (when it is a symmetric-key group whose key
/// is known) and the status of the last write.
pub fn plan(
    spec: Option<&DeviceKeys>,
    group_key: Option<&Secret>,
    written: Option<&DeviceKeysStatus>,
    digest_key: &DigestKey,
) -> Plan {
    let (spec, group_key) = match (spec, group_key, written) {
        (Some(spec), Some(key), _) => (spec, key),
        // The key is not known (yet): what was written stays.
        (Some(_), None, Some(written)) => return Plan::Unknown(written.clone()),
        (Some(_), None, None) | (None, _, None) => return Plan::None,
        (None, _, Some(written)) => return Plan::Remove(written.secret_name.clone()),
    };
    let mut ids: Vec<&str> = spec.registration_ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let digest = digest(digest_key, &spec.secret_name, &ids, group_key);
    let status =
        DeviceKeysStatus { secret_name: spec.secret_name.clone(), devices: ids.len() as i64, digest };
    let Some(data) = ids.iter().map(|id| Some(((*id).to_owned(), derive(group_key, id)?))).collect() else {
        return Plan::None;
    };
    if written == Some(&status) {
        return Plan::Keep { data, status };
    }
    let remove = written.map(|w| w.secret_name.clone()).filter(|name| *name != spec.secret_name);
    Plan::Write { data, status, remove }
}

/// Carries `plan` out; answers the device keys Secret as it now is.
pub async fn apply(
    reader: &Reader<'_>,
    owner: &OwnerReference,
    plan: Plan,
) -> Result<Option<DeviceKeysStatus>, Error> {
    match plan {
        Plan::None => Ok(None),
        Plan::Unknown(status) => Ok(Some(status)),
        Plan::Keep { data, status } => {
            // Deleted or edited since: written again.
            let held = reader.secret(&status.secret_name).await?;
            let intact = held.and_then(|secret| secret.data).is_some_and(|held| {
                held.len() == data.len()
                    && data
                        .iter()
                        .all(|(id, key)| held.get(id).is_some_and(|value| value.0 == key.expose().as_bytes()))
            });
            if !intact {
                reader.apply_owned_secret(&status.secret_name, owner, &data).await?;
            }
            Ok(Some(status))
        }
        Plan::Write { data, status, remove } => {
            reader.apply_owned_secret(&status.secret_name, owner, &data).await?;
            if let Some(previous) = remove {
                reader.delete_owned_secret(&previous, &owner.uid).await?;
            }
            Ok(Some(status))
        }
        Plan::Remove(name) => {
            reader.delete_owned_secret(&name, &owner.uid).await?;
            Ok(None)
        }
    }
}

fn digest(key: &DigestKey, secret_name: &str, ids: &[&str], group_key: &Secret) -> String {
    key.sign(|context| {
        for part in [secret_name, group_key.expose()].into_iter().chain(ids.iter().copied()) {
            context.update(part.as_bytes());
            context.update(&[0]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(secret: &str, ids: &[&str]) -> DeviceKeys {
        DeviceKeys {
            secret_name: secret.into(),
            registration_ids: ids.iter().map(|id| id.to_string()).collect(),
        }
    }

    #[test]
    fn a_device_key_is_derived_as_dps_derives_it() {
        // dps-api.md §8: the group key bytes 0x00..0x3f and registration id device-01.
        let group_key = Secret::new(BASE64.encode((0u8..64).collect::<Vec<_>>()));
        assert_eq!(
            derive(&group_key, "device-01").unwrap().expose(),
            "4mnWPt8Zt2l+dGRNpd2grurMijx75QG0Gw4rgHMHFgA="
        );
        assert!(derive(&Secret::new("not base64!"), "device-01").is_none());
    }

    #[test]
    fn the_secret_is_written_when_the_ids_the_name_or_the_group_key_change_and_only_then() {
        let digest_key = DigestKey::random();
        let key = Secret::new(BASE64.encode([1u8; 32]));
        let first = plan(Some(&spec("keys", &["b", "a", "a"])), Some(&key), None, &digest_key);
        let Plan::Write { data, status, remove: None } = first else { panic!("{first:?}") };
        assert_eq!(data.keys().collect::<Vec<_>>(), ["a", "b"], "each id once");
        assert_eq!(data["a"].expose(), derive(&key, "a").unwrap().expose());
        assert_eq!(status.devices, 2);
        assert!(!status.digest.contains(data["a"].expose()), "no key in the status");

        let same = plan(Some(&spec("keys", &["a", "b"])), Some(&key), Some(&status), &digest_key);
        assert!(
            matches!(&same, Plan::Keep { status: kept, .. } if *kept == status),
            "the same ids in another order"
        );
        let rotated = Secret::new(BASE64.encode([2u8; 32]));
        assert!(matches!(
            plan(Some(&spec("keys", &["a", "b"])), Some(&rotated), Some(&status), &digest_key),
            Plan::Write { .. }
        ));
        let fewer = plan(Some(&spec("keys", &["a"])), Some(&key), Some(&status), &digest_key);
        assert!(matches!(&fewer, Plan::Write { data, .. } if data.len() == 1), "{fewer:?}");
        let renamed = plan(Some(&spec("other", &["a", "b"])), Some(&key), Some(&status), &digest_key);
        assert!(matches!(&renamed, Plan::Write { remove: Some(old), .. } if old == "keys"), "{renamed:?}");

        assert_eq!(plan(None, Some(&key), Some(&status), &digest_key), Plan::Remove("keys".into()));
        assert_eq!(
            plan(Some(&spec("keys", &["a"])), None, Some(&status), &digest_key),
            Plan::Unknown(status)
        );
        assert_eq!(plan(None, None, None, &digest_key), Plan::None);
    }
}
