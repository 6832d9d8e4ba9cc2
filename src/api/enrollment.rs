//! The parts `EnrollmentGroup` and `IndividualEnrollment` share: the settings DPS applies to the
//! devices that provision through an enrollment, the operator's policies, and the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    references::{CertificateSecretRef, SecretKeySelector, SecretReference, ServiceRef},
    schema::{self, API_VERSION_PATTERN, conditions, free_form_object},
};

/// Everything about an enrollment except its id and attestation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.allocationPolicy) || self.allocationPolicy != 'custom' || has(self.customAllocation)")
    .message("spec.customAllocation (webhookUrlSecretRef and apiVersion) is required when allocationPolicy is custom")
    .field_path(".customAllocation")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.customAllocation) || (has(self.allocationPolicy) && self.allocationPolicy == 'custom')")
    .message("spec.customAllocation is only used with allocationPolicy: custom")
    .field_path(".customAllocation")
    .reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.allocationPolicy) || self.allocationPolicy != 'static' || !has(self.iotHubs) || size(self.iotHubs) == 1")
    .message("allocationPolicy static takes at most one hub in spec.iotHubs (none: the hub linked to the DPS)")
    .field_path(".iotHubs")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.deleteRegistrationRecords) || !self.deleteRegistrationRecords || !has(self.deletionPolicy) || self.deletionPolicy != 'Orphan'")
    .message("spec.deleteRegistrationRecords cannot be true with deletionPolicy: Orphan, which leaves DPS untouched")
    .field_path(".deleteRegistrationRecords")
    .reason(Reason::FieldValueForbidden))]
pub struct EnrollmentSettings {
    /// The DPS connection (`ProvisioningService` or `ClusterProvisioningService`) to use.
    pub service_ref: ServiceRef,

    /// Host names of the IoT hubs devices may be assigned to, e.g.
    /// `contoso-hub.azure-devices.net`. Each must be linked to the DPS instance. When omitted,
    /// every linked hub that applies the allocation policy may be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50), inner(length(max = 253)))]
    #[x_kube(validation = schema::hub_host_names())]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub iot_hubs: Option<Vec<String>>,

    /// How DPS chooses a hub for a device: `hashed` (evenly distributed), `geoLatency` (lowest
    /// latency), `static` (the one hub in `iotHubs`, or without `iotHubs` the hub linked to the
    /// DPS: meant for a DPS with one linked hub) or `custom` (an Azure Function decides; needs
    /// `customAllocation`). When omitted, the DPS instance's default policy applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,

    /// The webhook that chooses the hub when `allocationPolicy` is `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation: Option<Box<CustomAllocation>>,

    /// The device twin a device starts with when it is first provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,

    /// Whether devices are IoT Edge devices. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_edge: Option<bool>,

    /// What DPS does when a device provisions again and is assigned to a different hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,

    /// Whether devices may provision through this enrollment: `enabled` (the default) or
    /// `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,

    /// What happens in DPS when this resource is deleted: `Delete` removes the enrollment from
    /// DPS, `Orphan` leaves it there. Defaults to the connection's
    /// `enrollmentDefaults.deletionPolicy`, else `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// When true, deleting this resource is refused (by the operator's admission webhook) until
    /// this is set to false, an ordinary edit that RBAC governs: neither `kubectl delete`, nor
    /// deleting its namespace, nor `helm uninstall` removes the enrollment from Kubernetes or DPS
    /// by accident. Defaults to the connection's `enrollmentDefaults.deletionProtection`, else
    /// false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,

    /// With deletion policy `Delete`, also delete the DPS registration records of the devices
    /// that provisioned through this enrollment (not the devices in IoT Hub). Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_registration_records: Option<bool>,

    /// What to do when DPS already has an enrollment with this id that this resource did not
    /// create: `Refuse` (the default) leaves it untouched and reports `AlreadyExists`; `Adopt`
    /// takes it over and makes it match this resource, writing nothing when it already does.
    /// An adoption never replaces the credentials devices use: certificates must have the
    /// thumbprints DPS holds and keys in an existing Secret the keys DPS holds (reason
    /// `CredentialsDiffer` until they do); change them after the adoption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<Adoption>,

    /// `Manage` (the default) keeps DPS in line with this resource; `ObserveOnly` never writes to
    /// DPS and only reports differences in status. The annotation `dps.iot.dev/paused: "true"`
    /// also stops all writes, for as long as it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_policy: Option<ManagementPolicy>,

    /// How often to compare this enrollment with DPS to find changes made outside Kubernetes,
    /// e.g. `10m`. At least `1m`; defaults to the connection's
    /// `enrollmentDefaults.driftCheckInterval`, else `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = schema::duration())]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')")
        .message("driftCheckInterval must be at least 1m"))]
    pub drift_check_interval: Option<String>,
}

/// Symmetric key attestation: devices prove themselves with a key DPS shares.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    /// Secret with the base64 keys under `primaryKey` and `secondaryKey` (16 to 64 bytes each).
    /// When the Secret does not exist, the operator creates it, owned by this resource: with
    /// random 64-byte keys for a new enrollment, or with the keys DPS holds for one it already has
    /// (never new keys for devices already in the field). When the enrollment stays in DPS after
    /// this resource is deleted, the Secret stays too.
    ///
    /// The Secret's `activeKey` names the key devices should use (`primaryKey` when absent); an
    /// enrollment group's `deviceKeys` are derived from it.
    pub secret_ref: SecretReference,

    /// Whether the operator creates the Secret when it does not exist (the default). `false`
    /// waits for you to create it (reason `SecretNotFound` names it) and writes nothing to DPS
    /// meanwhile; `kubectl dps import` sets it, so that the keys of an imported enrollment come
    /// only from you.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_secret: Option<bool>,

    /// Rotates keys the operator created (a Secret this resource owns) on a schedule, one slot at
    /// a time: the slot devices are not using gets a new key in DPS, then becomes `activeKey`.
    /// The other slot keeps its key until the next rotation, so devices still using it keep
    /// working. The annotation `dps.iot.dev/rotate-keys` (any new value, e.g. a timestamp)
    /// starts a rotation at once, with or without a schedule. Keys you supply are never rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<KeyRotation>,
}

/// When generated keys rotate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotation {
    /// Time between rotations, e.g. `2160h` (90 days). At least `1s`. Give devices longer than
    /// this between reading their key and registering, and a device may hold a key that has
    /// been replaced twice.
    #[schemars(length(max = 64))]
    #[x_kube(validation = schema::duration())]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("rotation.every must be at least 1s"))]
    pub every: String,
}

/// A symmetric key slot.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum KeySlot {
    #[default]
    Primary,
    Secondary,
}

impl KeySlot {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Self::Primary => Self::Secondary,
            Self::Secondary => Self::Primary,
        }
    }

    /// The slot's entry in a key Secret: `primaryKey` or `secondaryKey`.
    pub fn secret_key(self) -> &'static str {
        match self {
            Self::Primary => "primaryKey",
            Self::Secondary => "secondaryKey",
        }
    }
}

/// The symmetric keys: which slot devices use, and their rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeysStatus {
    /// The slot devices are given (the key Secret's `activeKey`).
    pub active_slot: KeySlot,
    /// True when the operator created the keys and so may rotate them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<bool>,
    /// A slot that has a new key, to become active once DPS holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_to: Option<KeySlot>,
    /// When the active key was made, for generated keys: its rotation, else when the operator
    /// created the Secret. The metric `dps_operator_key_age_seconds` counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_time: Option<Time>,
    /// When a rotation last made a new key active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// When the next scheduled rotation is due (with `rotation.every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    /// The value of the `dps.iot.dev/rotate-keys` annotation last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
    /// Keyed digests (like `secretsDigest`) of the primary and secondary key last written to
    /// DPS, to tell which slot a change of the Secret replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_digest: Option<String>,
    /// The keyed digest of the secondary key last written to DPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_digest: Option<String>,
}

/// A primary and an optional secondary X.509 certificate, each from a Secret. With a primary
/// alone, a change of its certificate (renewed or re-keyed, e.g. by cert-manager) rolls over: the
/// new one goes into DPS's primary slot and the previous one into the secondary slot, so devices
/// chaining to either keep registering, until the previous one expires or `rolloverOverlap` ends.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.secondary) || !has(self.rolloverOverlap)")
    .message("rolloverOverlap applies only without a secondary certificate: the previous certificate takes the secondary slot"))]
#[x_kube(validation = Rule::new("has(self.primary) != has(self.certificateRef)")
    .message("set exactly one of primary (a Secret) or certificateRef (a cert-manager Certificate)"))]
#[x_kube(validation = Rule::new("!has(self.certificateRef) || !has(self.secondary)")
    .message("certificateRef rolls over by itself: the previous certificate takes the secondary slot, so secondary cannot be set"))]
pub struct CertificatePair {
    /// The primary certificate, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<CertificateSecretRef>,
    /// A cert-manager Certificate in the same namespace, instead of `primary`: the certificate
    /// in the Secret it issues (`tls.crt`) is used, and each renewal rolls over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ref: Option<CertManagerCertificateRef>,
    /// The secondary certificate. When set, both slots hold what their Secrets hold and nothing
    /// rolls over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<CertificateSecretRef>,
    /// How long the previous certificate stays in the secondary slot after the primary changes,
    /// e.g. `720h`; `0s` keeps none. Default: until the previous certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = schema::duration())]
    pub rollover_overlap: Option<String>,
}

/// A cert-manager `Certificate` (`cert-manager.io/v1`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerCertificateRef {
    /// Name of the Certificate, in the resource's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub name: String,
}

/// How DPS chooses the IoT hub for a device.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum AllocationPolicy {
    Hashed,
    GeoLatency,
    Static,
    Custom,
}

/// A custom allocation webhook (usually an Azure Function).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocation {
    /// Secret key holding the webhook URL. It usually carries a function key, hence the Secret.
    pub webhook_url_secret_ref: SecretKeySelector,
    /// Version of the DPS request and response format the webhook speaks, e.g. `2021-10-01`
    /// (`2018-09-01-preview` or later).
    #[schemars(length(max = 18))]
    #[x_kube(validation = Rule::new(format!("self.matches('{API_VERSION_PATTERN}')"))
        .message("customAllocation.apiVersion must be a date such as 2021-10-01, optionally followed by -preview"))]
    #[x_kube(validation = Rule::new(format!("!self.matches('{API_VERSION_PATTERN}') || self.substring(0, 10) >= '2018-09-01'"))
        .message("customAllocation.apiVersion must be 2018-09-01-preview or later"))]
    pub api_version: String,
}

/// The initial device twin.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwin {
    /// Twin tags, as JSON: at most 8 KB as IoT Hub counts a twin's size. IoT Hub's twin limits
    /// apply to both sections ("Understand and use device twins in IoT Hub"): property names of
    /// up to 1 KB without `.`, `$`, spaces or control characters, strings of up to 4 KB, objects
    /// nested at most 10 deep. The operator's admission webhook refuses a twin beyond them at
    /// apply time, and the operator checks again before writing to DPS (reason `InvalidSpec`),
    /// where a device would otherwise find out only when it provisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub tags: Option<JsonObject>,
    /// Desired properties, as JSON: at most 32 KB as IoT Hub counts a twin's size, with the
    /// limits of `tags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub desired_properties: Option<JsonObject>,
}

/// A JSON object, kept as its compact text: every cached resource holds its twin, and a tree of
/// JSON values takes several times the memory (a one-entry map about 600 bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct JsonObject(Box<str>);

impl EnrollmentSettings {
    /// Whether deleting the resource is refused: as the spec says, else as `default` (the
    /// connection's) says.
    pub fn deletion_protected(&self, default: Option<bool>) -> bool {
        self.deletion_protection.or(default).unwrap_or(false)
    }
}

impl JsonObject {
    pub fn to_map(&self) -> Map<String, Value> {
        // Made only from a map's own serialization, so it always parses back.
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

impl From<&Map<String, Value>> for JsonObject {
    fn from(map: &Map<String, Value>) -> Self {
        // A map's keys are sorted, so equal objects have equal text.
        Self(serde_json::to_string(map).unwrap_or_default().into_boxed_str())
    }
}

impl Serialize for JsonObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::from(&Map::deserialize(deserializer)?))
    }
}

/// What DPS does when a device provisions again.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-evaluate the hub assignment when the device provisions again. Defaults to true; false
    /// keeps the device on its current hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_hub_assignment: Option<bool>,
    /// When the hub changes, move the device's twin and identity to the new hub (true, the
    /// default) or start over from the initial twin (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_device_data: Option<bool>,
}

/// Whether devices may provision through an enrollment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    #[default]
    Enabled,
    Disabled,
}

/// What happens in DPS when the resource is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeletionPolicy {
    // Delete the enrollment from DPS.
    #[default]
    Delete,
    // Leave the enrollment in DPS.
    Orphan,
}

/// What to do with an enrollment DPS already has.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Adoption {
    // Leave it untouched and report `AlreadyExists`.
    #[default]
    Refuse,
    // Take it over and make it match the resource.
    Adopt,
}

/// Whether the operator writes to DPS.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ManagementPolicy {
    // Create, update and delete the enrollment in DPS.
    #[default]
    Manage,
    // Only read DPS and report differences.
    ObserveOnly,
}

/// The attestation kind of an enrollment, as DPS names it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum AttestationKind {
    SymmetricKey,
    X509,
    Tpm,
}

/// What the operator observed of an enrollment; shared by both enrollment kinds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` is True when DPS holds exactly what the spec describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,

    /// The attestation kind of the enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationKind>,

    /// True once DPS confirmed that this resource created the enrollment, or once it adopted
    /// it. An enrollment it did not claim is never changed or deleted by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed: Option<bool>,

    /// The DPS host the claim belongs to. When the connection points at another DPS, the claim
    /// does not follow it: there the enrollment is created afresh under the adoption rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_host: Option<String>,

    /// True while a create was sent to DPS and not yet confirmed. An enrollment found at the id
    /// then is taken as this resource's only when it holds exactly what was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_pending: Option<bool>,

    /// A digest of the secret inputs last written to DPS (symmetric keys, webhook URL), which DPS
    /// never returns; a changed Secret is noticed by comparing it. An HMAC-SHA256 with a key only
    /// the operator holds (the Secret `dps-operator-digest-key` in its namespace), so it confirms
    /// nothing about a guessed key to whoever reads this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_digest: Option<String>,

    /// A digest of the enrollment this operator last sent to DPS (keyed like `secretsDigest`), so
    /// that a record DPS holds is known for the operator's own write even when the answer to it
    /// was lost: only a record it did not write is reported as changed outside Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_digest: Option<String>,

    /// True while deleting this resource is refused: `spec.deletionProtection`, or, when the spec
    /// does not say, its connection's `enrollmentDefaults.deletionProtection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protected: Option<bool>,

    /// Whether DPS lets devices provision through the enrollment, as DPS holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,

    /// The DPS etag of the enrollment as last read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,

    /// When DPS created the enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<Time>,

    /// When DPS last changed the enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time: Option<Time>,

    /// The symmetric keys: the active slot and their rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Box<KeysStatus>>,

    /// The X.509 certificates in use, as DPS reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed, as are other rarely set parts of the status: every cached resource holds the
    // inline size of each field, set or not.
    pub certificates: Option<Box<CertificatesStatus>>,

    /// Fields where DPS differs from the spec and that were not corrected (with
    /// `managementPolicy: ObserveOnly` or while paused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

/// The primary and secondary certificate of an X.509 enrollment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesStatus {
    /// The primary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<CertificateInfo>,
    /// The secondary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<CertificateInfo>,
    /// When the primary certificate last changed with no secondary in the spec: the previous
    /// one has held the secondary slot since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_over_time: Option<Time>,
    /// Until when the secondary slot keeps the previous certificate: its expiry, or the end of
    /// `rolloverOverlap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<Time>,
}

/// Facts about an X.509 certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Subject distinguished name, e.g. `CN=device-01, O=Contoso`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, hexadecimal.
    pub serial_number: String,
    /// SHA-1 thumbprint, hexadecimal.
    pub sha1_thumbprint: String,
    /// SHA-256 thumbprint, hexadecimal.
    pub sha256_thumbprint: String,
    /// Start of the validity period.
    pub not_before: Time,
    /// End of the validity period; the `CertificateExpiringSoon` condition warns ahead of it.
    pub not_after: Time,
    /// True for the certificate the spec's Secret holds now, false for the previous one kept
    /// in the secondary slot after a rollover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<bool>,
    /// The certificate itself (PEM; certificates are public), kept for a primary that may roll
    /// over: DPS never returns a certificate, so the previous one is taken from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
}

/// One device's registration record in DPS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRecord {
    /// The device's registration id.
    pub registration_id: String,
    /// `unassigned`, `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// How the last assignment went, e.g. `initialAssignment` or `deviceDataMigrated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// The device id in IoT Hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The hub the device was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// When the registration last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time: Option<Time>,
    /// DPS error code of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i32>,
    /// DPS error message of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}
