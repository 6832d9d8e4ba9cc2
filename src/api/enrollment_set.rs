//! `IndividualEnrollmentSet`: many DPS individual enrollments from one template and a member list.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    enrollment::{AllocationPolicy, AttestationKind, CustomAllocation, DeletionPolicy, InitialTwin},
    enrollment::{ProvisioningStatus, ReprovisionPolicy},
    references::{ConfigMapKeySelector, SecretKeySelector, SecretReference, ServiceRef},
    schema::{self, free_form_object},
};

/// The most members a set lists in its own spec; larger fleets list them in `memberLists`.
pub const MAX_INLINE_MEMBERS: usize = 1000;
/// The most failures the status names; the counts hold the rest.
pub const MAX_REPORTED_FAILURES: usize = 10;

/// Many DPS individual enrollments (one per device) made from one template and a member list,
/// kept in sync with DPS by the dps-operator through DPS's bulk API. For fleets where one
/// IndividualEnrollment resource per device is too many objects. The annotation
/// dps.iot.dev/paused: "true" stops all writes to DPS.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dps.iot.dev",
    version = "v1beta1",
    kind = "IndividualEnrollmentSet",
    namespaced,
    status = "IndividualEnrollmentSetStatus",
    shortname = "ieset",
    shortname = "dpsset",
    category = "dps",
    doc = "Many Azure IoT Hub Device Provisioning Service (DPS) individual enrollments, one per member, \
           made from one template and kept in sync with DPS by the dps-operator. The annotation \
           dps.iot.dev/paused: \"true\" stops all writes to DPS.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Members",
        type_ = "integer",
        description = "Members listed",
        json_path = ".status.counts.members"
    ),
    printcolumn(
        name = "In DPS",
        type_ = "integer",
        description = "Members DPS holds as listed",
        json_path = ".status.counts.ready"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        description = "Members whose last write failed",
        json_path = ".status.counts.failed"
    ),
    printcolumn(
        name = "Conflicts",
        type_ = "integer",
        description = "Members whose id another resource owns, or DPS holds and the set did not make",
        json_path = ".status.counts.conflicts"
    ),
    printcolumn(name = "Attestation", type_ = "string", json_path = ".status.attestation", priority = "1"),
    printcolumn(name = "Connection", type_ = "string", json_path = ".spec.serviceRef.name", priority = "1"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = "1"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.members) || has(self.memberLists)")
    .message("list the members in spec.members or spec.memberLists (or both)")
    .reason(Reason::FieldValueRequired))]
pub struct IndividualEnrollmentSetSpec {
    /// The DPS connection (`ProvisioningService` or `ClusterProvisioningService`) to use.
    pub service_ref: ServiceRef,

    /// How every member proves its identity: exactly one of `symmetricKey`, `x509` or `tpm`.
    /// The kind cannot change after creation.
    pub attestation: SetAttestation,

    /// Members listed here, at most 1000 (list larger fleets in `memberLists`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["registrationId".into()]))]
    pub members: Vec<SetMember>,

    /// Member lists in ConfigMaps or Secrets, one member per line: CSV (a header line naming the
    /// columns `registrationId`, `deviceId`, `endorsementKey`, `certificate`,
    /// `provisioningStatus`; without one, each line is a registration id) or JSON lines (one
    /// object per line with those fields). Blank lines and lines starting with `#` are skipped.
    /// A list that does not parse stops the set (reason `MemberListInvalid`, naming the line)
    /// and nothing is written or removed until it is fixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub member_lists: Vec<MemberList>,

    /// What every member's enrollment holds besides its id and attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<EnrollmentTemplate>>,

    /// What happens in DPS to a member's enrollment when the member leaves the list or the set
    /// is deleted: `Delete` (default) removes it, `Orphan` leaves it untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// How often DPS is read to notice changes made there, e.g. `10m`. At least `1m`; defaults
    /// to the connection's `enrollmentDefaults.driftCheckInterval`, else `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = schema::duration())]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')")
        .message("driftCheckInterval must be at least 1m"))]
    pub drift_check_interval: Option<String>,
}

/// Exactly one of `symmetricKey`, `x509` or `tpm`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.symmetricKey), has(self.x509), has(self.tpm)].exists_one(x, x)")
    .message("spec.attestation must set exactly one of symmetricKey, x509 or tpm"))]
#[x_kube(validation = Rule::new("has(self.symmetricKey) == has(oldSelf.symmetricKey) && has(self.x509) == has(oldSelf.x509) && has(self.tpm) == has(oldSelf.tpm)")
    .message("the attestation kind cannot change after creation (DPS does not allow it): delete and recreate the set instead")
    .reason(Reason::FieldValueForbidden))]
pub struct SetAttestation {
    /// Each member's keys are derived from the set's keys as DPS derives a group's device keys
    /// (base64 of HMAC-SHA256 of the registration id, keyed with the decoded set key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SetSymmetricKey>,

    /// Each member presents its own certificate, given as its `certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<MemberMaterial>,

    /// Each member proves itself with its TPM, whose endorsement key is its `endorsementKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<MemberMaterial>,
}

/// The set's keys, from which every member's keys are derived.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SetSymmetricKey {
    /// Secret with the set's base64 keys under `primaryKey` and `secondaryKey` (16 to 64 bytes
    /// each). When it does not exist, the operator creates it with random 64-byte keys, owned by
    /// the set. Devices never get these keys, only their own derived ones.
    pub secret_ref: SecretReference,

    /// Name of a Secret the operator writes, owned by the set, holding each member's derived
    /// primary key under its registration id: what provisioning hands each device. Left out, no
    /// such Secret is written (`kubectl dps device-key` derives one key at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub device_keys_secret_name: Option<String>,
}

/// Attestation material comes with each member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct MemberMaterial {}

/// One device of the set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SetMember {
    /// The DPS registration id: alphanumerics and `-._:`, ending in an alphanumeric or `-`, at
    /// most 128 characters (64 with X.509); DPS compares ids case-insensitively.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = schema::dps_id())]
    pub registration_id: String,

    /// The device id in IoT Hub. Defaults to the registration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = schema::device_id())]
    pub device_id: Option<String>,

    /// The TPM endorsement key (public part, base64); required with `tpm` attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 4096))]
    pub endorsement_key: Option<String>,

    /// The device's certificate, PEM or base64 DER; required with `x509` attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 16384))]
    pub certificate: Option<String>,

    /// `enabled` or `disabled`, overriding the template for this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
}

/// A member list in a ConfigMap or a Secret of the set's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMapRef) != has(self.secretRef)")
    .message("a member list comes from exactly one of configMapRef or secretRef"))]
pub struct MemberList {
    /// The ConfigMap key holding the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeySelector>,

    /// The Secret key holding the list (for lists that are not to be read by everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeySelector>,

    /// `csv` or `jsonLines`. Defaults to `jsonLines` for keys ending in `.jsonl`, `.ndjson` or
    /// `.json`, else `csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<MemberListFormat>,
}

/// How a member list is written.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MemberListFormat {
    Csv,
    JsonLines,
}

/// What every member's enrollment holds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.allocationPolicy) || self.allocationPolicy != 'custom' || has(self.customAllocation)")
    .message("allocationPolicy custom needs template.customAllocation (the webhook URL Secret and API version)")
    .field_path(".customAllocation")
    .reason(Reason::FieldValueRequired))]
pub struct EnrollmentTemplate {
    /// Host names of the IoT hubs devices may be assigned to. When omitted, every linked hub
    /// that applies the allocation policy may be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50), inner(length(max = 253)))]
    #[x_kube(validation = schema::hub_host_names())]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub iot_hubs: Option<Vec<String>>,

    /// How DPS picks a hub: `hashed`, `geoLatency`, `static` or `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,

    /// The Azure Function that picks the hub, for `allocationPolicy: custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation: Option<Box<CustomAllocation>>,

    /// The twin each device starts with in IoT Hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,

    /// Whether the devices are IoT Edge devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_edge: Option<bool>,

    /// What happens to a device's data when it provisions again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,

    /// `enabled` (default) or `disabled`: whether the devices may provision. A member's own
    /// `provisioningStatus` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,

    /// Free-form JSON kept by DPS with each enrollment, readable by the service side only. The
    /// operator adds `enrollmentSet` (the set's namespace/name) to mark the enrollments it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub optional_device_information: Option<Map<String, Value>>,
}

/// What the operator observed of a set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollmentSetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled`, in the kstatus shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The attestation kind of the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationKind>,

    /// How many members are in each state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<MemberCounts>,

    /// The first members that failed or conflict (at most 10), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<MemberFailure>,

    /// The Secret holding each member's derived key, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_keys_secret: Option<String>,

    /// A digest of what that Secret was written with (keyed with the operator's own key), to
    /// know without reading it whether it is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_keys_digest: Option<String>,
}

/// Members by state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberCounts {
    /// Members listed.
    pub members: u32,
    /// Members DPS holds as listed.
    pub ready: u32,
    /// Members still to be written.
    pub pending: u32,
    /// Members whose last write DPS refused or that could not be built.
    pub failed: u32,
    /// Members whose id another resource owns, or that DPS holds and the set did not make.
    pub conflicts: u32,
}

/// A member that failed or conflicts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberFailure {
    pub registration_id: String,
    /// A PascalCase reason, e.g. `Conflict`, `AlreadyExists`, `InvalidCertificate`.
    pub reason: String,
    pub message: String,
}
