//! The enrollment DPS should hold for each member: the set's template, the member's id, device
//! id, attestation and provisioning status, and the marks that say which set made it and from
//! which keys. Pure.

use serde_json::{Map, Value, json};

use super::{
    index::{KEYS_MARK, SET_MARK, fingerprint},
    members::Member,
};
use crate::{
    api::{self, AttestationKind, EnrollmentSettings, IndividualEnrollmentSetSpec, MemberFailure},
    certificates,
    controller::{
        Error, derive_device_key,
        desired::{self, DpsRecord, Resolved},
        digest_key::DigestKey,
    },
    dps::models::{
        AttestationMechanism, AttestationType, IndividualEnrollment, ProvisioningStatus, Secret,
        SymmetricKeyAttestation, TpmAttestation, X509Attestation, X509CertificateWithInfo, X509Certificates,
    },
};

/// Builds each member's enrollment from what the whole set shares.
pub struct Builder {
    base: IndividualEnrollment,
    kind: AttestationKind,
    /// The set's keys (primary, secondary), for a symmetric-key set.
    keys: Option<(Secret, Secret)>,
}

/// The attestation kind a set's spec names.
pub fn kind(attestation: &api::SetAttestation) -> AttestationKind {
    match (&attestation.symmetric_key, &attestation.x509) {
        (Some(_), _) => AttestationKind::SymmetricKey,
        (None, Some(_)) => AttestationKind::X509,
        (None, None) => AttestationKind::Tpm,
    }
}

/// The settings of an individual enrollment that a set's template stands for.
fn settings(spec: &IndividualEnrollmentSetSpec) -> EnrollmentSettings {
    let template = spec.template.as_deref().cloned().unwrap_or_default();
    EnrollmentSettings {
        service_ref: spec.service_ref.clone(),
        iot_hubs: template.iot_hubs,
        allocation_policy: template.allocation_policy,
        custom_allocation: template.custom_allocation,
        initial_twin: template.initial_twin,
        iot_edge: template.iot_edge,
        reprovision_policy: template.reprovision_policy,
        provisioning_status: template.provisioning_status,
        deletion_policy: spec.deletion_policy,
        deletion_protection: None,
        delete_registration_records: None,
        adoption: None,
        management_policy: None,
        drift_check_interval: spec.drift_check_interval.clone(),
    }
}

impl Builder {
    /// `me` names the set (`namespace/name`); `keys` are the set's, for a symmetric-key set.
    pub fn new(
        spec: &IndividualEnrollmentSetSpec,
        me: &str,
        webhook_url: Option<Secret>,
        keys: Option<(Secret, Secret)>,
        digest_key: &DigestKey,
    ) -> Result<Self, Error> {
        let resolved = Resolved { webhook_url, ..Default::default() };
        let mut base = desired::individual_template(&settings(spec), &resolved)?;
        let template = spec.template.as_deref();
        let mut information: Map<String, Value> =
            template.and_then(|t| t.optional_device_information.clone()).unwrap_or_default();
        for mark in [SET_MARK, KEYS_MARK] {
            if information.contains_key(mark) {
                return Err(Error::InvalidSpec(format!(
                    "spec.template.optionalDeviceInformation.{mark} is where the operator marks the enrollments a set \
                     makes: use another name"
                )));
            }
        }
        information.insert(SET_MARK.into(), json!(me));
        if let Some((primary, secondary)) = &keys {
            information.insert(KEYS_MARK.into(), json!(keys_digest(primary, secondary, digest_key)));
        }
        base.optional_device_information = Some(information);
        Ok(Self { base, kind: kind(&spec.attestation), keys })
    }

    /// The enrollment of `member` and its fingerprint, or why it cannot be built.
    pub fn member(&self, member: &Member) -> Result<(IndividualEnrollment, u64), MemberFailure> {
        let id = &*member.registration_id;
        let failure = |reason: &str, message: String| MemberFailure {
            registration_id: id.to_owned(),
            reason: reason.into(),
            message,
        };
        let mut thumbprint = None;
        let attestation = match self.kind {
            AttestationKind::SymmetricKey => {
                let derive = |key: Option<&Secret>| key.and_then(|key| derive_device_key(key, id));
                AttestationMechanism {
                    type_: AttestationType::SymmetricKey,
                    symmetric_key: Some(SymmetricKeyAttestation {
                        primary_key: derive(self.keys.as_ref().map(|k| &k.0)),
                        secondary_key: derive(self.keys.as_ref().map(|k| &k.1)),
                    }),
                    ..Default::default()
                }
            }
            AttestationKind::X509 => {
                let text = member.certificate.as_deref().unwrap_or_default();
                let invalid = |e: &dyn std::fmt::Display| {
                    failure("CertificateInvalid", format!("the certificate of {id} cannot be read: {e}"))
                };
                let der = certificates::first_certificate_der(text).map_err(|e| invalid(&e))?;
                let facts = certificates::facts(&der).map_err(|e| invalid(&e))?;
                if facts.not_after < jiff::Timestamp::now() {
                    return Err(failure(
                        "CertificateInvalid",
                        format!("the certificate of {id} expired on {}", facts.not_after),
                    ));
                }
                thumbprint = Some(facts.sha256_thumbprint);
                let primary =
                    Some(X509CertificateWithInfo { certificate: Some(certificates::pem(&der)), info: None });
                let client_certificates = Some(X509Certificates { primary, secondary: None });
                AttestationMechanism {
                    type_: AttestationType::X509,
                    x509: Some(X509Attestation { client_certificates, ..Default::default() }),
                    ..Default::default()
                }
            }
            AttestationKind::Tpm => AttestationMechanism {
                type_: AttestationType::Tpm,
                tpm: Some(TpmAttestation {
                    endorsement_key: member.endorsement_key.as_deref().unwrap_or_default().to_owned(),
                    storage_root_key: None,
                }),
                ..Default::default()
            },
        };
        let mut record = IndividualEnrollment {
            registration_id: id.to_owned(),
            device_id: member.device_id.as_deref().map(Into::into),
            attestation,
            ..self.base.clone()
        };
        if let Some(status) = member.provisioning_status {
            record.provisioning_status = Some(match status {
                api::ProvisioningStatus::Enabled => ProvisioningStatus::Enabled,
                api::ProvisioningStatus::Disabled => ProvisioningStatus::Disabled,
            });
        }
        let mut comparable = record.comparable();
        if thumbprint.is_some() {
            comparable.certificate_thumbprints = (thumbprint, None);
        }
        Ok((record, fingerprint(&comparable)))
    }

    /// A member's derived primary key, for the device keys Secret.
    pub fn device_key(&self, id: &str) -> Option<Secret> {
        derive_device_key(&self.keys.as_ref()?.0, id)
    }
}

/// A digest of the set's keys, made with the operator's own key: it tells a changed key from an
/// unchanged one, and nothing about the keys to whoever reads DPS.
fn keys_digest(primary: &Secret, secondary: &Secret, digest_key: &DigestKey) -> String {
    let mut digest = digest_key.sign(|context| {
        context.update(b"dps-operator/set-keys/v1");
        context.update(primary.expose().as_bytes());
        context.update(&[0]);
        context.update(secondary.expose().as_bytes());
    });
    digest.truncate("hmac-sha256:".len() + 16);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        EnrollmentTemplate, MemberMaterial, SecretReference, ServiceRef, SetAttestation, SetSymmetricKey,
    };

    fn spec(attestation: SetAttestation) -> IndividualEnrollmentSetSpec {
        IndividualEnrollmentSetSpec {
            service_ref: ServiceRef { kind: None, name: "dps".into() },
            attestation,
            members: Vec::new(),
            member_lists: Vec::new(),
            template: Some(Box::new(EnrollmentTemplate {
                iot_hubs: Some(vec!["hub.azure-devices.net".into()]),
                ..Default::default()
            })),
            deletion_policy: None,
            drift_check_interval: None,
        }
    }

    fn symmetric() -> SetAttestation {
        let key = SetSymmetricKey {
            secret_ref: SecretReference { name: "k".into() },
            device_keys_secret_name: None,
        };
        SetAttestation { symmetric_key: Some(key), x509: None, tpm: None }
    }

    fn member(id: &str, status: Option<api::ProvisioningStatus>) -> Member {
        Member {
            registration_id: id.into(),
            device_id: None,
            endorsement_key: None,
            certificate: None,
            provisioning_status: status,
            line: 1,
        }
    }

    fn keys(primary: &str) -> Option<(Secret, Secret)> {
        Some((Secret::new(primary), Secret::new("c2Vjb25kYXJ5LWtleS0xMjM0NQ==")))
    }

    #[test]
    fn a_member_gets_the_template_its_derived_keys_and_the_sets_mark() {
        let digest = DigestKey::random();
        let builder =
            Builder::new(&spec(symmetric()), "iot/fleet", None, keys("cHJpbWFyeS1rZXktMTIzNDU2"), &digest)
                .unwrap();
        let (record, _) = builder.member(&member("sensor-1", None)).unwrap();
        assert_eq!(record.iot_hubs.as_deref(), Some(&["hub.azure-devices.net".to_owned()][..]));
        let derived = derive_device_key(&Secret::new("cHJpbWFyeS1rZXktMTIzNDU2"), "sensor-1");
        assert_eq!(record.attestation.symmetric_key.unwrap().primary_key, derived);
        assert_eq!(record.optional_device_information.unwrap()[SET_MARK], json!("iot/fleet"));
        let (disabled, _) =
            builder.member(&member("sensor-2", Some(api::ProvisioningStatus::Disabled))).unwrap();
        assert_eq!(disabled.provisioning_status, Some(ProvisioningStatus::Disabled));
    }

    #[test]
    fn the_fingerprint_changes_with_the_set_key_and_matches_what_dps_then_holds() {
        let digest = DigestKey::random();
        let build =
            |key: &str| Builder::new(&spec(symmetric()), "iot/fleet", None, keys(key), &digest).unwrap();
        let (record, before) = build("cHJpbWFyeS1rZXktMTIzNDU2").member(&member("d", None)).unwrap();
        let (_, after) = build("b3RoZXIta2V5LTEyMzQ1Njc4").member(&member("d", None)).unwrap();
        assert_ne!(before, after, "a new set key changes every member");
        // What DPS answers holds no keys, an etag and timestamps: the same fingerprint.
        let stored = IndividualEnrollment {
            attestation: AttestationMechanism {
                type_: AttestationType::SymmetricKey,
                symmetric_key: Some(SymmetricKeyAttestation::default()),
                ..Default::default()
            },
            etag: Some("\"1\"".into()),
            ..record
        };
        assert_eq!(fingerprint(&stored.comparable()), before);
    }

    #[test]
    fn the_operators_marks_cannot_be_set_in_the_template_and_bad_certificates_fail_by_member() {
        let mut marked = spec(symmetric());
        marked.template.as_mut().unwrap().optional_device_information =
            Some([(SET_MARK.to_owned(), json!("x"))].into_iter().collect());
        let error = Builder::new(&marked, "iot/fleet", None, None, &DigestKey::random()).err().unwrap();
        assert!(error.to_string().contains("optionalDeviceInformation.enrollmentSet"), "{error}");
        let x509 = SetAttestation { symmetric_key: None, x509: Some(MemberMaterial {}), tpm: None };
        let builder = Builder::new(&spec(x509), "iot/fleet", None, None, &DigestKey::random()).unwrap();
        let mut bad = member("cam-1", None);
        bad.certificate = Some("not a certificate".into());
        let failure = builder.member(&bad).unwrap_err();
        assert_eq!(
            (failure.reason.as_str(), failure.registration_id.as_str()),
            ("CertificateInvalid", "cam-1")
        );
    }
}
