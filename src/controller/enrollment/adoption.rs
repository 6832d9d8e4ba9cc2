//! Taking over an enrollment DPS already has (`adoption: Adopt`) without touching the credentials
//! devices use: before the first write, the spec's certificates must have the thumbprints DPS
//! holds, a key Secret the keys DPS holds, and a TPM the endorsement key DPS holds. An adoption
//! that finds nothing else to change writes nothing at all. The checks are pure; [`super::converge`]
//! runs them before it decides.

use super::inputs::{self, Material};
use crate::{
    api::EnrollmentStatus,
    controller::{
        Error,
        connection::Connection,
        desired::{AttestationInput, Comparable, DpsRecord},
        digest_key::DigestKey,
        kinds::EnrollmentKind,
        secrets::Reader,
    },
};

/// Where each certificate slot's certificate comes from, for messages: `Secret iot/camera-cert`.
pub type CertificateSources = [Option<String>; 2];

const SLOTS: [&str; 2] = ["primary", "secondary"];

/// Where the certificates of `object` come from, primary and secondary.
pub fn certificate_sources<K: EnrollmentKind>(object: &K) -> CertificateSources {
    let Ok(AttestationInput::ClientCertificates(pair) | AttestationInput::SigningCertificates(pair)) =
        object.attestation_input()
    else {
        return [None, None];
    };
    let namespace = object.meta().namespace.as_deref().unwrap_or_default();
    let primary = match (&pair.primary, &pair.certificate_ref) {
        (Some(secret), _) => Some(format!("Secret {namespace}/{}", secret.name)),
        (None, Some(certificate)) => {
            Some(format!("the Secret of cert-manager Certificate {namespace}/{}", certificate.name))
        }
        (None, None) => None,
    };
    [primary, pair.secondary.as_ref().map(|secret| format!("Secret {namespace}/{}", secret.name))]
}

/// The certificate slot (0 primary, 1 secondary) Secret `name` fills for `input`.
pub fn certificate_slot(input: AttestationInput<'_>, name: &str) -> Option<usize> {
    let (AttestationInput::ClientCertificates(pair) | AttestationInput::SigningCertificates(pair)) = input
    else {
        return None;
    };
    [&pair.primary, &pair.secondary].iter().position(|slot| slot.as_ref().is_some_and(|s| s.name == name))
}

/// The error of an adoption refused because of `difference` (see [`credential_difference`]).
pub fn refusal(what: &'static str, id: &str, (held, found, remedy): (String, String, String)) -> Error {
    Error::AdoptedCredentialDiffers { what, id: id.to_owned(), held, found, remedy }
}

/// The refusal of an adoption whose key Secret `namespace/secret` holds other keys than DPS.
pub fn keys_differ(what: &'static str, id: &str, namespace: &str, secret: &str) -> Error {
    refusal(what, id, (
        "its own symmetric keys".into(),
        format!("Secret {namespace}/{secret} holds other keys"),
        "Put the keys DPS holds in the Secret (kubectl dps import --with-keys writes it), or delete the Secret \
         to have them copied from DPS."
            .into(),
    ))
}

/// The first credential where the spec differs from DPS: what DPS holds, what the spec has
/// instead, and what to do.
pub fn credential_difference(
    desired: &Comparable,
    observed: &Comparable,
    sources: &CertificateSources,
) -> Option<(String, String, String)> {
    let held = [&observed.certificate_thumbprints.0, &observed.certificate_thumbprints.1];
    let wanted = [&desired.certificate_thumbprints.0, &desired.certificate_thumbprints.1];
    for ((slot, held), (wanted, source)) in SLOTS.iter().zip(held).zip(wanted.into_iter().zip(sources)) {
        let Some(expected) = held.as_ref().filter(|held| Some(*held) != wanted.as_ref()) else {
            continue;
        };
        let found = match (wanted, source) {
            (Some(found), Some(source)) => format!("{source} holds one of thumbprint {found}"),
            _ => format!("the spec names no {slot} certificate"),
        };
        let remedy = match source {
            Some(source) => format!(
                "Put the certificate with that thumbprint in {source}, and change it after the adoption if you mean to."
            ),
            None => format!("Name a Secret with that certificate as the {slot} certificate."),
        };
        return Some((format!("the {slot} certificate of SHA-256 thumbprint {expected}"), found, remedy));
    }
    let tpm_differs = observed.tpm.as_ref().is_some_and(|held| Some(held) != desired.tpm.as_ref());
    tpm_differs.then(|| {
        (
            "another TPM endorsement key".into(),
            "spec.attestation.tpm differs".into(),
            "Set spec.attestation.tpm to what DPS holds (kubectl dps import writes it).".into(),
        )
    })
}

/// [`inputs::resolve`]; while `object` is about to adopt (it may write, asks to adopt and has not
/// claimed the enrollment yet), a certificate Secret that cannot be read is reported with the
/// thumbprint DPS holds in its slot (one GET).
pub async fn resolve<'a, K: EnrollmentKind>(
    object: &'a K,
    reader: &Reader<'_>,
    digest_key: &DigestKey,
    recorded: &mut EnrollmentStatus,
    connection: &Connection,
    may_write: bool,
) -> Result<Material<'a, K::Record>, Error> {
    let error = match inputs::resolve(object, reader, digest_key, recorded).await {
        Ok(material) => return Ok(material),
        Err(error) => error,
    };
    let adopting = may_write
        && object.settings().adoption == Some(crate::api::Adoption::Adopt)
        && recorded.claimed != Some(true);
    let (Ok(input), true) = (object.attestation_input(), adopting) else { return Err(error) };
    let slot_of = |name: &str| certificate_slot(input, name);
    let unreadable = match &error {
        Error::SecretNotFound { name, .. } | Error::SecretKeyMissing { name, .. } => slot_of(name).is_some(),
        _ => false,
    };
    if !unreadable {
        return Err(error);
    }
    let id = object.dps_id();
    let observed = connection.client.get::<K::Record>(&id).await.ok();
    Err(awaited_certificate(error, observed.as_ref(), slot_of, K::WHAT, &id))
}

/// The error of a certificate Secret that cannot be read, for a resource about to adopt: when DPS
/// holds a certificate in that slot, the error names its thumbprint. `slot_of` tells the slot a
/// Secret's name fills.
pub fn awaited_certificate<R: DpsRecord>(
    error: Error,
    observed: Option<&R>,
    slot_of: impl Fn(&str) -> Option<usize>,
    what: &'static str,
    id: &str,
) -> Error {
    let (namespace, name) = match &error {
        Error::SecretNotFound { namespace, name } | Error::SecretKeyMissing { namespace, name, .. } => {
            (namespace, name)
        }
        _ => return error,
    };
    let Some(slot) = slot_of(name) else { return error };
    let thumbprints = observed.map(|record| record.comparable().certificate_thumbprints);
    let expected = thumbprints.and_then(|(primary, secondary)| [primary, secondary][slot].clone());
    let Some(expected) = expected else { return error };
    let remedy = format!(
        "Put the certificate with that thumbprint in Secret {namespace}/{name}; nothing is written until it is there."
    );
    Error::AdoptedCredentialDiffers {
        what,
        id: id.to_owned(),
        held: format!("the {} certificate of SHA-256 thumbprint {expected}", SLOTS[slot]),
        found: error.to_string(),
        remedy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dps::models::{AttestationType, ProvisioningStatus, ReprovisionPolicy, TpmAttestation};

    fn comparable(thumbprints: (Option<&str>, Option<&str>)) -> Comparable {
        Comparable {
            attestation_type: AttestationType::X509,
            certificate_thumbprints: (thumbprints.0.map(Into::into), thumbprints.1.map(Into::into)),
            ca_references: None,
            tpm: None,
            device_id: None,
            optional_device_information: None,
            iot_edge: false,
            initial_twin: None,
            provisioning_status: ProvisioningStatus::Enabled,
            reprovision_policy: ReprovisionPolicy::default(),
            allocation_policy: None,
            iot_hubs: Vec::new(),
            custom_allocation: None,
        }
    }

    fn sources() -> CertificateSources {
        [Some("Secret iot/primary".into()), Some("Secret iot/secondary".into())]
    }

    #[test]
    fn matching_certificates_pass_and_a_different_one_is_named_with_the_thumbprint_dps_holds() {
        let held = comparable((Some("AA"), Some("BB")));
        assert_eq!(credential_difference(&held, &held, &sources()), None);
        let (what, found, remedy) =
            credential_difference(&comparable((Some("AA"), Some("CC"))), &held, &sources()).unwrap();
        assert_eq!(what, "the secondary certificate of SHA-256 thumbprint BB");
        assert_eq!(found, "Secret iot/secondary holds one of thumbprint CC");
        assert!(remedy.contains("Secret iot/secondary"), "{remedy}");
    }

    #[test]
    fn a_certificate_dps_holds_that_the_spec_leaves_out_is_a_difference_too() {
        let held = comparable((Some("AA"), Some("BB")));
        let (what, found, _) =
            credential_difference(&comparable((Some("AA"), None)), &held, &[sources()[0].clone(), None])
                .unwrap();
        assert_eq!(
            (what.as_str(), found.as_str()),
            ("the secondary certificate of SHA-256 thumbprint BB", "the spec names no secondary certificate")
        );
        // A slot DPS leaves empty takes whatever the spec names.
        assert_eq!(credential_difference(&held, &comparable((Some("AA"), None)), &sources()), None);
    }

    #[test]
    fn a_different_endorsement_key_is_a_difference_and_one_dps_does_not_echo_is_not() {
        let tpm = |key: &str| Some(TpmAttestation { endorsement_key: key.into(), storage_root_key: None });
        let desired = Comparable { tpm: tpm("AAAA"), ..comparable((None, None)) };
        let held = Comparable { tpm: tpm("BBBB"), ..comparable((None, None)) };
        assert!(credential_difference(&desired, &held, &sources()).unwrap().0.contains("TPM"));
        assert_eq!(credential_difference(&desired, &comparable((None, None)), &sources()), None);
    }
}
