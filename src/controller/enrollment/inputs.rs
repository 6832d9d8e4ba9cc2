//! The first step of a pass: what it works from. The referenced Secrets' material, the record the
//! spec describes with it, and the digest that tells a later pass whether the Secrets changed.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::{
    api::EnrollmentStatus,
    controller::{
        Error,
        connection::Connection,
        desired::{AttestationInput, Resolved, Rollover},
        digest_key::DigestKey,
        kinds::EnrollmentKind,
        rollover,
        secrets::Reader,
    },
};

/// What a pass writes from.
#[derive(Debug)]
pub struct Material<'a, R> {
    /// The key Secret the spec names, for a symmetric-key enrollment.
    pub key_secret: Option<&'a str>,
    pub resolved: Resolved,
    /// The record the spec describes with `resolved`.
    pub desired: R,
    /// The keyed digest of the referenced Secrets.
    pub digest: Option<String>,
}

/// Reads the Secrets `object` references and builds its record. `recorded` (the status so far)
/// takes the keyed digest in place of a plain one of the same Secrets.
pub async fn resolve<'a, K: EnrollmentKind>(
    object: &'a K,
    reader: &Reader<'_>,
    digest_key: &DigestKey,
    recorded: &mut EnrollmentStatus,
) -> Result<Material<'a, K::Record>, Error> {
    let input = object.attestation_input()?;
    let webhook = object.settings().custom_allocation.as_ref().map(|c| &c.webhook_url_secret_ref);
    let mut resolved =
        reader.resolve(input, webhook, object.meta().uid.as_deref().unwrap_or_default()).await?;
    if let AttestationInput::SymmetricKey(key) = input
        && key.create_secret == Some(false)
        && resolved.keys.is_none()
    {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        return Err(Error::KeySecretAwaited { namespace, secret: key.secret_ref.name.clone() });
    }
    roll_over(object, input, &mut resolved);
    let desired = object.build(&object.dps_id(), &resolved)?;
    let digest = resolved.secrets_digest(digest_key);
    // A status from before digests were keyed holds the plain SHA-256: for the same secrets it
    // is taken over as it is, not read as a change of the keys (which would write to DPS).
    if recorded.secrets_digest.is_some() && recorded.secrets_digest == resolved.unkeyed_secrets_digest() {
        recorded.secrets_digest = digest.clone();
    }
    let key_secret = match input {
        AttestationInput::SymmetricKey(key) => Some(key.secret_ref.name.as_str()),
        _ => None,
    };
    Ok(Material { key_secret, resolved, desired, digest })
}

/// With a primary certificate alone in the spec, the previous certificate (as the status recorded
/// it) takes the secondary slot for as long as [`rollover::previous`] keeps it.
fn roll_over<K: EnrollmentKind>(object: &K, input: AttestationInput<'_>, resolved: &mut Resolved) {
    let (AttestationInput::ClientCertificates(pair) | AttestationInput::SigningCertificates(pair)) = input
    else {
        return;
    };
    let Some((current, None)) = &resolved.certificates else { return };
    let old = object.current_status().and_then(|s| K::enrollment_status(s).certificates.as_deref());
    let overlap = pair.rollover_overlap.as_ref().and_then(|o| o.parse::<kube::core::Duration>().ok());
    let previous = rollover::previous(current, old, overlap.map(Duration::from), jiff::Timestamp::now());
    resolved.certificates = Some((current.clone(), previous.as_ref().map(|p| p.certificate.clone())));
    resolved.rollover = Some(Rollover { previous });
}

/// The reference that makes `object` the owner of what the operator creates for it.
pub fn owner_reference<K: EnrollmentKind>(object: &K) -> Result<OwnerReference, Error> {
    object.controller_owner_ref(&()).ok_or_else(|| Error::InvalidSpec("the resource has no uid yet".into()))
}

/// The drift check interval: the enrollment's, else its connection's, else `default`.
pub fn drift_interval<K: EnrollmentKind>(object: &K, connection: &Connection, default: Duration) -> Duration {
    connection.drift_interval(object.settings().drift_check_interval.as_deref(), default)
}
