//! `EnrollmentGroup`: one DPS enrollment group.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    enrollment::{
        CertificatePair, EnrollmentSettings, EnrollmentStatus, RegistrationRecord, SymmetricKeyAttestation,
    },
    references::CertificateSecretRef,
    schema::{self, refuse_property},
};

/// A DPS enrollment group: many devices that share an attestation mechanism.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dps.iot.dev",
    version = "v1beta1",
    kind = "EnrollmentGroup",
    namespaced,
    status = "EnrollmentGroupStatus",
    shortname = "eg",
    shortname = "dpseg",
    category = "dps",
    doc = "An Azure IoT Hub Device Provisioning Service (DPS) enrollment group, kept in sync with DPS \
           by the dps-operator. Devices in the group share a symmetric key or a signing certificate. \
           The annotation dps.iot.dev/paused: \"true\" stops all writes to DPS.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Reason", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].reason"#),
    printcolumn(name = "Group ID", type_ = "string", description = "The DPS enrollment group id", json_path = ".status.enrollmentGroupId"),
    printcolumn(name = "Attestation", type_ = "string", json_path = ".status.attestation"),
    printcolumn(name = "Provisioning", type_ = "string", description = "enabled or disabled, as DPS holds it", json_path = ".status.provisioningStatus", priority = "1"),
    printcolumn(name = "Connection", type_ = "string", description = "The ProvisioningService or ClusterProvisioningService used", json_path = ".spec.serviceRef.name", priority = "1"),
    printcolumn(name = "Protected", type_ = "boolean", description = "Whether deleting the resource is refused", json_path = ".status.deletionProtected", priority = "1"),
    printcolumn(name = "Message", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].message"#, priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("(has(self.spec.enrollmentGroupId) ? self.spec.enrollmentGroupId : self.metadata.name) == (has(oldSelf.spec.enrollmentGroupId) ? oldSelf.spec.enrollmentGroupId : oldSelf.metadata.name)")
        .message("spec.enrollmentGroupId cannot change: DPS cannot rename an enrollment group; create a new resource instead")
        .field_path(".spec.enrollmentGroupId")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.spec.enrollmentGroupId) || self.metadata.name.size() <= 128")
        .message("metadata.name is longer than the 128 characters DPS allows for an enrollment group id: set spec.enrollmentGroupId")
        .field_path(".spec.enrollmentGroupId")
        .reason(Reason::FieldValueRequired),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.deviceKeys) || has(self.attestation.symmetricKey)")
    .message("spec.deviceKeys needs symmetricKey attestation: X.509 devices prove themselves with certificates, not derived keys")
    .field_path(".deviceKeys"))]
#[x_kube(validation = Rule::new("!has(self.blockedDevices) || !has(self.attestation.x509) || self.blockedDevices.all(d, has(d.certificateSecretRef))")
    .message("each spec.blockedDevices entry of an X.509 group needs certificateSecretRef: DPS blocks an X.509 device by its certificate")
    .field_path(".blockedDevices"))]
#[x_kube(validation = Rule::new("!has(self.blockedDevices) || !has(self.attestation.symmetricKey) || self.blockedDevices.all(d, !has(d.certificateSecretRef))")
    .message("spec.blockedDevices of a symmetric-key group take no certificateSecretRef: the device is blocked by its registration id")
    .field_path(".blockedDevices"))]
#[x_kube(validation = Rule::new("!has(self.deviceKeys) || !has(self.attestation.symmetricKey) || self.deviceKeys.secretName != self.attestation.symmetricKey.secretRef.name")
    .message("spec.deviceKeys.secretName must not be the group key's Secret: it would be overwritten with the device keys")
    .field_path(".deviceKeys.secretName"))]
pub struct EnrollmentGroupSpec {
    /// The DPS enrollment group id: alphanumerics and `-._:`, ending in an alphanumeric or `-`,
    /// at most 128 characters; DPS compares ids case-insensitively. Defaults to
    /// `metadata.name`. Cannot change after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = schema::dps_id())]
    pub enrollment_group_id: Option<String>,

    /// How devices in the group prove their identity: exactly one of `symmetricKey` or `x509`
    /// (DPS has no TPM groups: use IndividualEnrollments). The kind cannot change after creation.
    pub attestation: GroupAttestation,

    /// Keys for named devices of a symmetric-key group, derived by the operator from the group
    /// key and written to a Secret: what a device, or a factory step that flashes devices,
    /// reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_keys: Option<DeviceKeys>,

    /// Devices of this group that DPS must refuse, e.g. a compromised one. Each becomes a
    /// disabled individual enrollment with its registration id, owned by this group: DPS looks at
    /// a device's individual enrollment before any group, so it is refused while the rest of the
    /// group is not (DPS's documented way to revoke one device of a group). Removing an entry
    /// removes that enrollment, and the device registers through the group again. At most 1,000.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["registrationId".into()]))]
    pub blocked_devices: Vec<BlockedDevice>,

    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// A device of the group that DPS refuses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockedDevice {
    /// The device's registration id.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = schema::dps_id())]
    pub registration_id: String,
    /// For an X.509 group (and only there): a Secret holding the device's own certificate, which
    /// DPS needs to recognise the device in the individual enrollment that blocks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret_ref: Option<CertificateSecretRef>,
}

/// The keys of named devices of a symmetric-key group, in one Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceKeys {
    /// The Secret to write, in this namespace: one entry per registration id, whose value is
    /// the key that device signs with (base64 of HMAC-SHA256 of its registration id with the
    /// group's primary key, as DPS derives it). The operator creates it and owns it (it goes
    /// with this resource), rewrites it when the group key changes and removes an entry when
    /// its id leaves the list. A Secret of that name the operator did not create is never
    /// overwritten.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub secret_name: String,

    /// The registration ids of the devices, at most 5,000 (a Secret holds at most 1 MiB). Each
    /// becomes a key of the Secret, so an id here is letters, digits and `-._` only (no `:`),
    /// ending in a letter, digit or `-`.
    #[schemars(length(max = 5000), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = schema::device_key_ids())]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub registration_ids: Vec<String>,
}

fn refuse_tpm(schema: &mut schemars::Schema) {
    refuse_property(
        schema,
        "tpm",
        serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        "Not allowed: DPS enrollment groups support symmetricKey and x509 attestation only. \
         Use an IndividualEnrollment for a TPM device.",
        "TPM attestation is not available for enrollment groups: use symmetricKey or x509, or an \
         IndividualEnrollment for a TPM device",
    );
}

/// Exactly one of `symmetricKey` or `x509`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = refuse_tpm)]
#[x_kube(validation = Rule::new("[has(self.symmetricKey), has(self.x509)].exists_one(x, x)")
    .message("spec.attestation must set exactly one of symmetricKey or x509"))]
#[x_kube(validation = Rule::new("has(self.symmetricKey) == has(oldSelf.symmetricKey) && has(self.x509) == has(oldSelf.x509)")
    .message("the attestation kind cannot change after creation (DPS does not allow it): delete and recreate the resource instead")
    .reason(Reason::FieldValueForbidden))]
pub struct GroupAttestation {
    /// Devices derive their key from the group key: HMAC-SHA256 of their registration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,

    /// Devices present certificates that chain up to a signing certificate or a CA certificate
    /// verified on the DPS instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<GroupX509Attestation>,
}

/// Exactly one of `signingCertificates` or `caReferences`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.signingCertificates) != has(self.caReferences)")
    .message("spec.attestation.x509 must set exactly one of signingCertificates or caReferences"))]
pub struct GroupX509Attestation {
    /// Intermediate or root CA certificates (PEM) from Secrets. With cert-manager, point at the
    /// CA Certificate's Secret (`tls.crt`) or at `ca.crt` of a leaf's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<CertificatePair>,

    /// Names of CA certificates uploaded and verified on the DPS instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_references: Option<CaReferences>,
}

/// Names of CA certificates verified on the DPS instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaReferences {
    /// Name of the primary CA certificate.
    #[schemars(length(min = 1, max = 256))]
    pub primary: String,
    /// Name of the secondary CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub secondary: Option<String>,
}

/// What the operator observed of an enrollment group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroupStatus {
    #[serde(flatten)]
    pub enrollment: EnrollmentStatus,

    /// The DPS enrollment group id in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,

    /// The devices that provisioned through this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrations: Option<RegistrationSummary>,

    /// The Secret of derived device keys, as last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_keys: Option<DeviceKeysStatus>,

    /// The registration ids this group blocks with a disabled individual enrollment it made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_devices: Vec<String>,
}

/// The Secret of derived device keys the operator wrote.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceKeysStatus {
    /// The Secret's name.
    pub secret_name: String,
    /// How many devices it holds keys for.
    pub devices: i64,
    /// A keyed digest of what was written (the ids and the group key), to notice a change
    /// without reading the Secret; it confirms nothing about a key to whoever reads it.
    pub digest: String,
}

/// Counts of the group's registration records by status, and the latest of them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationSummary {
    /// All registration records.
    pub total: i64,
    /// Devices assigned to a hub.
    pub assigned: i64,
    /// Devices being assigned.
    pub assigning: i64,
    /// Devices not assigned yet.
    pub unassigned: i64,
    /// Devices whose registration failed.
    pub failed: i64,
    /// Devices that are disabled.
    pub disabled: i64,
    /// The most recently updated registrations, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest: Vec<RegistrationRecord>,
}
