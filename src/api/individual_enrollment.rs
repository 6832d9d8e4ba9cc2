//! `IndividualEnrollment`: one DPS individual enrollment.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    enrollment::{
        CertificatePair, EnrollmentSettings, EnrollmentStatus, RegistrationRecord, SymmetricKeyAttestation,
    },
    schema::{self, free_form_object},
};

/// A DPS individual enrollment: one device.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dps.iot.dev",
    version = "v1beta1",
    kind = "IndividualEnrollment",
    namespaced,
    status = "IndividualEnrollmentStatus",
    shortname = "ie",
    shortname = "dpsie",
    category = "dps",
    doc = "An Azure IoT Hub Device Provisioning Service (DPS) individual enrollment for one device, \
           kept in sync with DPS by the dps-operator. The annotation dps.iot.dev/paused: \"true\" \
           stops all writes to DPS.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Reason", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].reason"#),
    printcolumn(name = "Registration ID", type_ = "string", description = "The DPS registration id", json_path = ".status.registrationId"),
    printcolumn(name = "Attestation", type_ = "string", json_path = ".status.attestation"),
    printcolumn(name = "Provisioning", type_ = "string", description = "enabled or disabled, as DPS holds it", json_path = ".status.provisioningStatus", priority = "1"),
    printcolumn(name = "Connection", type_ = "string", description = "The ProvisioningService or ClusterProvisioningService used", json_path = ".spec.serviceRef.name", priority = "1"),
    printcolumn(name = "Protected", type_ = "boolean", description = "Whether deleting the resource is refused", json_path = ".status.deletionProtected", priority = "1"),
    printcolumn(name = "Message", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].message"#, priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("(has(self.spec.registrationId) ? self.spec.registrationId : self.metadata.name) == (has(oldSelf.spec.registrationId) ? oldSelf.spec.registrationId : oldSelf.metadata.name)")
        .message("spec.registrationId cannot change: DPS cannot rename an enrollment; create a new resource instead")
        .field_path(".spec.registrationId")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.spec.registrationId) || self.metadata.name.size() <= 128")
        .message("metadata.name is longer than the 128 characters DPS allows for a registration id: set spec.registrationId")
        .field_path(".spec.registrationId")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.spec.attestation.x509) || (has(self.spec.registrationId) ? self.spec.registrationId : self.metadata.name).size() <= 64")
        .message("with x509 attestation the registration id is the certificate's common name, at most 64 characters: shorten spec.registrationId (or metadata.name)")
        .field_path(".spec.registrationId")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollmentSpec {
    /// The DPS registration id: alphanumerics and `-._:`, ending in an alphanumeric or `-`, at
    /// most 128 characters (64 with X.509, where it is the certificate's common name); DPS
    /// compares ids case-insensitively. Defaults to `metadata.name`. Cannot change after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = schema::dps_id())]
    pub registration_id: Option<String>,

    /// How the device proves its identity: exactly one of `symmetricKey`, `x509` or `tpm`. The
    /// kind cannot change after creation.
    pub attestation: IndividualAttestation,

    /// The device id the device gets in IoT Hub: up to 128 ASCII alphanumerics and
    /// `-.+%_#*?!(),=@$'`. Defaults to the registration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = schema::device_id())]
    pub device_id: Option<String>,

    /// Free-form JSON about the device, kept by DPS with the enrollment and readable by the
    /// service side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub optional_device_information: Option<Map<String, Value>>,

    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// Exactly one of `symmetricKey`, `x509` or `tpm`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.symmetricKey), has(self.x509), has(self.tpm)].exists_one(x, x)")
    .message("spec.attestation must set exactly one of symmetricKey, x509 or tpm"))]
#[x_kube(validation = Rule::new("has(self.symmetricKey) == has(oldSelf.symmetricKey) && has(self.x509) == has(oldSelf.x509) && has(self.tpm) == has(oldSelf.tpm)")
    .message("the attestation kind cannot change after creation (DPS does not allow it): delete and recreate the resource instead")
    .reason(Reason::FieldValueForbidden))]
pub struct IndividualAttestation {
    /// The device proves itself with a key from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,

    /// The device presents one of these certificates (its own leaf certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<Box<IndividualX509Attestation>>,

    /// The device proves itself with its TPM's endorsement key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Box<TpmAttestation>>,
}

/// The device's own X.509 certificates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndividualX509Attestation {
    /// The device's leaf certificates (PEM) from Secrets.
    pub client_certificates: CertificatePair,
}

/// A TPM's public keys. Neither is secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TpmAttestation {
    /// The TPM endorsement key (public part, base64), as `tpm2_readpublic` or the device SDK
    /// prints it.
    #[schemars(length(min = 4, max = 4096))]
    #[x_kube(validation = schema::base64())]
    #[x_kube(validation = schema::not_a_tpm_handle())]
    pub endorsement_key: String,
    /// The TPM storage root key (public part, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 4096))]
    #[x_kube(validation = schema::base64())]
    #[x_kube(validation = schema::not_a_tpm_handle())]
    pub storage_root_key: Option<String>,
}

/// What the operator observed of an individual enrollment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollmentStatus {
    #[serde(flatten)]
    pub enrollment: EnrollmentStatus,

    /// The DPS registration id in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,

    /// The device's registration record, once it has provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Box<RegistrationRecord>>,
}
