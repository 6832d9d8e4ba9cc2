//! What DPS refuses in an enrollment, with DPS-like 400 answers, and what it fills in.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use super::error::ApiError;
use crate::{
    certificates,
    dps::models::{
        AllocationPolicy, AttestationMechanism, AttestationType, CustomAllocationDefinition, Secret,
        SymmetricKeyAttestation, Timestamp, X509CertificateInfo, X509Certificates,
    },
    random_bytes,
};

/// Which kind of enrollment is being validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Individual,
    Group,
}

impl Kind {
    pub fn id_name(self) -> &'static str {
        match self {
            Self::Individual => "registration id",
            Self::Group => "enrollment group id",
        }
    }
}

/// Registration and enrollment group ids: at most 128 alphanumerics and `-._:`, the last one
/// alphanumeric or `-`.
pub fn check_id(kind: Kind, id: &str) -> Result<(), ApiError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
    let last_ok = id.chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
    if id.is_empty() || id.len() > 128 || !id.chars().all(valid_char) || !last_ok {
        return Err(ApiError::bad_request(
            400002,
            format!(
                "The {} '{id}' is invalid: use up to 128 alphanumerics and '-', '.', '_', ':', ending in an alphanumeric or '-'.",
                kind.id_name()
            ),
        ));
    }
    Ok(())
}

/// IoT Hub device ids: at most 128 ASCII alphanumerics and `-.+%_#*?!(),=@$'`.
pub fn check_device_id(device_id: &str) -> Result<(), ApiError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-.+%_#*?!(),=@$'".contains(c);
    if device_id.is_empty() || device_id.len() > 128 || !device_id.chars().all(valid_char) {
        return Err(ApiError::bad_request(400003, format!("The device id '{device_id}' is invalid.")));
    }
    Ok(())
}

pub fn check_allocation(
    policy: Option<AllocationPolicy>,
    hubs: Option<&[String]>,
    custom: Option<&CustomAllocationDefinition>,
    linked_hubs: Option<&[String]>,
) -> Result<(), ApiError> {
    if let (Some(hubs), Some(linked)) = (hubs, linked_hubs)
        && let Some(unknown) = hubs.iter().find(|hub| !linked.iter().any(|l| l.eq_ignore_ascii_case(hub)))
    {
        return Err(ApiError::bad_request(
            400012,
            format!("The IoT hub '{unknown}' is not linked to this provisioning service."),
        ));
    }
    match policy {
        Some(AllocationPolicy::Custom) => {
            let Some(custom) = custom else {
                return Err(ApiError::bad_request(
                    400013,
                    "Custom allocation needs customAllocationDefinition with webhookUrl and apiVersion.",
                ));
            };
            if !custom.webhook_url.expose().starts_with("https://") {
                return Err(ApiError::bad_request(
                    400013,
                    "customAllocationDefinition.webhookUrl must be an https URL.",
                ));
            }
            if custom.api_version.get(..10).is_none_or(|date| date < "2018-09-01") {
                return Err(ApiError::bad_request(
                    400013,
                    "customAllocationDefinition.apiVersion must be 2018-09-01-preview or later.",
                ));
            }
        }
        // Without iotHubs DPS takes the hub from its linked hubs: it accepts `static` with none
        // (azure-sdk-for-python, `test_device_registration.pyTestDeviceRegistrationtest_device_registration_lifecycle.json`,
        // where a device then registers to the one linked hub). The swagger names "the desired
        // IoT hub": more than one is refused.
        Some(AllocationPolicy::Static) if hubs.is_some_and(|hubs| hubs.len() > 1) => {
            return Err(ApiError::bad_request(
                400014,
                "Static allocation takes at most one IoT hub in iotHubs.",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Checks an attestation and makes it what DPS stores: keys checked, or generated when omitted
/// (kept from `existing` on an update), certificate info computed from the certificates.
pub fn normalize_attestation(
    kind: Kind,
    mut attestation: AttestationMechanism,
    existing: Option<&AttestationMechanism>,
    now: Timestamp,
) -> Result<AttestationMechanism, ApiError> {
    let invalid = |message: String| ApiError::bad_request(400004, message);
    let blocks = [
        (AttestationType::Tpm, attestation.tpm.is_some()),
        (AttestationType::X509, attestation.x509.is_some()),
        (AttestationType::SymmetricKey, attestation.symmetric_key.is_some()),
    ];
    if let Some((other, _)) = blocks.iter().find(|(type_, present)| *present && *type_ != attestation.type_) {
        return Err(invalid(format!(
            "The attestation of type {:?} also carries a {other:?} attestation; send only the one of its type.",
            attestation.type_
        )));
    }
    if let Some(existing) = existing
        && existing.type_ != attestation.type_
    {
        return Err(invalid(format!(
            "The attestation type cannot change from {:?} to {:?}; delete the enrollment and create it again.",
            existing.type_, attestation.type_
        )));
    }
    match attestation.type_ {
        AttestationType::None => {
            return Err(invalid(
                "An attestation of type none cannot be used; choose tpm, x509 or symmetricKey.".into(),
            ));
        }
        AttestationType::Tpm => {
            if kind == Kind::Group {
                return Err(invalid("Enrollment groups do not support TPM attestation.".into()));
            }
            let tpm = attestation
                .tpm
                .as_ref()
                .ok_or_else(|| invalid("TPM attestation needs a tpm section.".into()))?;
            for (name, key) in [
                ("endorsementKey", Some(&tpm.endorsement_key)),
                ("storageRootKey", tpm.storage_root_key.as_ref()),
            ] {
                if let Some(key) = key
                    && (key.is_empty() || BASE64.decode(key).is_err())
                {
                    return Err(invalid(format!("The TPM {name} is not valid base64.")));
                }
            }
        }
        AttestationType::SymmetricKey => {
            let given = attestation.symmetric_key.take().unwrap_or_default();
            let kept = existing.and_then(|e| e.symmetric_key.clone()).unwrap_or_default();
            attestation.symmetric_key = Some(SymmetricKeyAttestation {
                primary_key: Some(symmetric_key("primaryKey", given.primary_key.or(kept.primary_key))?),
                secondary_key: Some(symmetric_key(
                    "secondaryKey",
                    given.secondary_key.or(kept.secondary_key),
                )?),
            });
        }
        AttestationType::X509 => {
            let x509 = attestation
                .x509
                .as_mut()
                .ok_or_else(|| invalid("X.509 attestation needs an x509 section.".into()))?;
            let kept = existing.and_then(|e| e.x509.as_ref());
            let sections = [
                ("clientCertificates", x509.client_certificates.is_some()),
                ("signingCertificates", x509.signing_certificates.is_some()),
                ("caReferences", x509.ca_references.is_some()),
            ];
            let present: Vec<&str> = sections.iter().filter(|(_, p)| *p).map(|(name, _)| *name).collect();
            let allowed: &[&str] = match kind {
                Kind::Individual => &["clientCertificates"],
                Kind::Group => &["signingCertificates", "caReferences"],
            };
            if present.len() != 1 || !allowed.contains(&present[0]) {
                return Err(invalid(format!(
                    "X.509 attestation of an {} needs exactly one of {}.",
                    match kind {
                        Kind::Individual => "individual enrollment",
                        Kind::Group => "enrollment group",
                    },
                    allowed.join(" or ")
                )));
            }
            if let Some(certificates) = x509.client_certificates.as_mut() {
                fill_certificate_info(certificates, kept.and_then(|k| k.client_certificates.as_ref()), now)?;
            }
            if let Some(certificates) = x509.signing_certificates.as_mut() {
                fill_certificate_info(certificates, kept.and_then(|k| k.signing_certificates.as_ref()), now)?;
            }
            if let Some(references) = &x509.ca_references
                && references.primary.as_deref().is_none_or(str::is_empty)
            {
                return Err(invalid("caReferences needs the name of a primary CA certificate.".into()));
            }
        }
    }
    Ok(attestation)
}

/// A symmetric key as DPS keeps it: the given one if it is 16 to 64 bytes of base64, or 64 random
/// bytes when none was given.
fn symmetric_key(name: &str, key: Option<Secret>) -> Result<Secret, ApiError> {
    let Some(key) = key else {
        return Ok(Secret::new(BASE64.encode(random_bytes::<64>())));
    };
    match BASE64.decode(key.expose()) {
        Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(key),
        Ok(_) => Err(ApiError::bad_request(
            400005,
            format!("The symmetric {name} must be between 16 and 64 bytes."),
        )),
        Err(_) => Err(ApiError::bad_request(400005, format!("The symmetric {name} is not valid base64."))),
    }
}

/// Reads each certificate sent and records its info; a slot sent without a certificate keeps the
/// certificate it had. The certificates themselves are never kept.
fn fill_certificate_info(
    certificates: &mut X509Certificates,
    kept: Option<&X509Certificates>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let slots = [
        ("primary", &mut certificates.primary, kept.and_then(|k| k.primary.as_ref())),
        ("secondary", &mut certificates.secondary, kept.and_then(|k| k.secondary.as_ref())),
    ];
    for (name, slot, kept) in slots {
        let Some(slot) = slot else { continue };
        match slot.certificate.take() {
            Some(text) => {
                let facts = certificates::read(&text).map_err(|e| {
                    ApiError::bad_request(400006, format!("The {name} certificate is invalid: {e}."))
                })?;
                if facts.not_after < now.0 {
                    return Err(ApiError::bad_request(
                        400006,
                        format!("The {name} certificate has expired."),
                    ));
                }
                slot.info = Some(X509CertificateInfo {
                    subject_name: facts.subject,
                    sha1_thumbprint: facts.sha1_thumbprint,
                    sha256_thumbprint: facts.sha256_thumbprint,
                    issuer_name: facts.issuer,
                    not_before_utc: Timestamp(facts.not_before),
                    not_after_utc: Timestamp(facts.not_after),
                    serial_number: facts.serial_number,
                    version: facts.version,
                });
            }
            None => match kept.and_then(|k| k.info.clone()) {
                Some(info) => slot.info = Some(info),
                None => {
                    return Err(ApiError::bad_request(400006, format!("The {name} certificate is missing.")));
                }
            },
        }
    }
    // A secondary alone is fine: the Azure CLI's live test removes the primary certificate
    // (`az iot dps enrollment update --rc`) and DPS answers `clientCertificates.primary: null`
    // (azure-iot-cli-extension, `azext_iot/tests/dps/enrollment/test_iot_dps_enrollment_int.py`,
    // `test_dps_enrollment_x509_lifecycle`).
    if certificates.primary.is_none() && certificates.secondary.is_none() {
        return Err(ApiError::bad_request(400006, "A primary or a secondary certificate is required."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_dps_rules() {
        for valid in ["a", "device-01", "Boiler:0042", "x.y_z-", &"a".repeat(128)] {
            assert!(check_id(Kind::Individual, valid).is_ok(), "{valid}");
        }
        for invalid in ["", "dev ice", "device_", "device.", "dev/ice", &"a".repeat(129)] {
            let error = check_id(Kind::Group, invalid).unwrap_err();
            assert_eq!((error.status, error.code), (400, 400002), "{invalid}");
            assert!(error.message.contains("enrollment group id"));
        }
    }

    #[test]
    fn symmetric_keys_are_generated_checked_and_kept() {
        let now = Timestamp::now();
        let mechanism = |primary: Option<&str>| AttestationMechanism {
            type_: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: primary.map(Secret::new),
                secondary_key: None,
            }),
            ..Default::default()
        };
        let generated = normalize_attestation(Kind::Group, mechanism(None), None, now).unwrap();
        let keys = generated.symmetric_key.clone().unwrap();
        for key in [&keys.primary_key, &keys.secondary_key] {
            assert_eq!(BASE64.decode(key.as_ref().unwrap().expose()).unwrap().len(), 64);
        }
        let kept = normalize_attestation(Kind::Group, mechanism(None), Some(&generated), now).unwrap();
        assert_eq!(kept, generated, "an update without keys keeps them");

        let short = BASE64.encode([1u8; 15]);
        assert_eq!(
            normalize_attestation(Kind::Group, mechanism(Some(&short)), None, now).unwrap_err().code,
            400005
        );
        assert_eq!(
            normalize_attestation(Kind::Group, mechanism(Some("***")), None, now).unwrap_err().code,
            400005
        );
    }

    #[test]
    fn attestation_shapes_dps_refuses_are_refused() {
        let now = Timestamp::now();
        let tpm = AttestationMechanism {
            type_: AttestationType::Tpm,
            tpm: Some(crate::dps::models::TpmAttestation {
                endorsement_key: "AAAA".into(),
                storage_root_key: None,
            }),
            ..Default::default()
        };
        assert!(normalize_attestation(Kind::Individual, tpm.clone(), None, now).is_ok());
        assert!(
            normalize_attestation(Kind::Group, tpm.clone(), None, now).unwrap_err().message.contains("TPM")
        );
        let none = AttestationMechanism::default();
        assert!(normalize_attestation(Kind::Individual, none, None, now).is_err());
        let mixed = AttestationMechanism { symmetric_key: Some(Default::default()), ..tpm.clone() };
        assert!(normalize_attestation(Kind::Individual, mixed, None, now).is_err());
        let symmetric = AttestationMechanism {
            type_: AttestationType::SymmetricKey,
            symmetric_key: Some(Default::default()),
            ..Default::default()
        };
        let changed = normalize_attestation(Kind::Individual, symmetric, Some(&tpm), now).unwrap_err();
        assert!(changed.message.contains("cannot change"));
    }

    #[test]
    fn allocation_rules() {
        let hubs = vec!["a.azure-devices.net".to_owned(), "b.azure-devices.net".to_owned()];
        assert!(check_allocation(Some(AllocationPolicy::Static), Some(&hubs), None, None).is_err());
        assert!(check_allocation(Some(AllocationPolicy::Static), Some(&hubs[..1]), None, None).is_ok());
        assert!(check_allocation(Some(AllocationPolicy::Custom), None, None, None).is_err());
        let webhook = |url: &str, version: &str| CustomAllocationDefinition {
            webhook_url: Secret::new(url),
            api_version: version.into(),
        };
        assert!(
            check_allocation(
                Some(AllocationPolicy::Custom),
                None,
                Some(&webhook("https://f.net/api", "2021-10-01")),
                None
            )
            .is_ok()
        );
        assert!(
            check_allocation(
                Some(AllocationPolicy::Custom),
                None,
                Some(&webhook("http://f.net", "2021-10-01")),
                None
            )
            .is_err()
        );
        assert!(
            check_allocation(
                Some(AllocationPolicy::Custom),
                None,
                Some(&webhook("https://f.net", "2017-01-01")),
                None
            )
            .is_err()
        );
        let linked = vec!["a.azure-devices.net".to_owned()];
        assert!(
            check_allocation(None, Some(&hubs), None, Some(&linked))
                .unwrap_err()
                .message
                .contains("b.azure-devices.net")
        );
    }
}
