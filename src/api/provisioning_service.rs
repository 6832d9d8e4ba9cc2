//! `ProvisioningService` and `ClusterProvisioningService`: how to reach one DPS instance.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    enrollment::DeletionPolicy,
    references::{ConfigMapKeySelector, SecretKeySelector},
    schema::{self, conditions},
};

/// How to reach one DPS instance, for enrollments in this namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dps.iot.dev",
    version = "v1beta1",
    kind = "ProvisioningService",
    namespaced,
    status = "ProvisioningServiceStatus",
    shortname = "dpssvc",
    category = "dps",
    doc = "A connection to one Azure IoT Hub Device Provisioning Service (DPS) instance, used by \
           EnrollmentGroups and IndividualEnrollments in the same namespace.",
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
        name = "Host",
        type_ = "string",
        description = "The DPS service host name",
        json_path = ".status.host"
    ),
    printcolumn(name = "Credentials", type_ = "string", json_path = ".status.credentials"),
    printcolumn(
        name = "In Use By",
        type_ = "integer",
        description = "Enrollments still using it while it is deleted",
        json_path = ".status.inUseBy",
        priority = "1"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = "1"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.host) || has(self.credentials.connectionStringSecretRef)")
    .message("spec.host is required unless the credentials are a connection string, which names the host")
    .field_path(".host")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.credentials.workloadIdentity) || (has(self.credentials.workloadIdentity.clientId) && has(self.credentials.workloadIdentity.tenantId))")
    .message("spec.credentials.workloadIdentity needs clientId and tenantId on a namespaced ProvisioningService")
    .field_path(".credentials.workloadIdentity")
    .reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningServiceSpec {
    #[serde(flatten)]
    pub connection: ConnectionSpec,
}

/// How to reach one DPS instance, for enrollments in any namespace that `allowedNamespaces` admits.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dps.iot.dev",
    version = "v1beta1",
    kind = "ClusterProvisioningService",
    status = "ProvisioningServiceStatus",
    shortname = "cdpssvc",
    category = "dps",
    doc = "A cluster-wide connection to one Azure IoT Hub Device Provisioning Service (DPS) \
           instance. Its Secrets live in the operator's namespace; allowedNamespaces decides which \
           namespaces' enrollments may use it.",
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
        name = "Host",
        type_ = "string",
        description = "The DPS service host name",
        json_path = ".status.host"
    ),
    printcolumn(name = "Credentials", type_ = "string", json_path = ".status.credentials"),
    printcolumn(
        name = "In Use By",
        type_ = "integer",
        description = "Enrollments still using it while it is deleted",
        json_path = ".status.inUseBy",
        priority = "1"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#,
        priority = "1"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.host) || has(self.credentials.connectionStringSecretRef)")
    .message("spec.host is required unless the credentials are a connection string, which names the host")
    .field_path(".host")
    .reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct ClusterProvisioningServiceSpec {
    #[serde(flatten)]
    pub connection: ConnectionSpec,

    /// Namespaces whose enrollments may use this connection, selected by their labels. `{}`
    /// admits every namespace; when omitted, no namespace may use it (set it deliberately: every
    /// admitted namespace can write enrollments with this connection's credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'] && ((e.operator == 'In' || e.operator == 'NotIn') == (has(e.values) && size(e.values) > 0)))")
        .message("each spec.allowedNamespaces.matchExpressions entry needs the operator In or NotIn with values, or Exists or DoesNotExist without: no namespace could match it otherwise"))]
    #[x_kube(validation = schema::label_selector_keys())]
    #[schemars(transform = schema::bounded_label_selector)]
    pub allowed_namespaces: Option<LabelSelector>,
}

/// The settings both connection kinds share.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSpec {
    /// Host name of the DPS service endpoint, e.g. `contoso.azure-devices-provisioning.net`.
    /// Taken from the connection string when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = schema::host_name("contoso.azure-devices-provisioning.net"))]
    #[x_kube(validation = schema::not_the_device_endpoint())]
    pub host: Option<String>,

    /// How the operator authenticates to DPS.
    pub credentials: Credentials,

    /// Extra certificate authorities to trust for the DPS endpoint, in addition to the system
    /// roots: for a TLS-inspecting proxy or a local DPS emulator. TLS verification is never
    /// switched off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,

    /// How fast the operator may call this DPS instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Defaults for the enrollments that use this connection; each enrollment can override them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_defaults: Option<EnrollmentDefaults>,
}

/// Credentials for the DPS service API: exactly one of `connectionStringSecretRef` or
/// `workloadIdentity`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.connectionStringSecretRef) != has(self.workloadIdentity)")
    .message("spec.credentials must set exactly one of connectionStringSecretRef or workloadIdentity"))]
pub struct Credentials {
    /// A Secret key holding a DPS shared access policy connection string
    /// (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`). The policy needs the
    /// Enrollment Read and Enrollment Write permissions, and Registration Status Read/Write to
    /// report and clean up registrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string_secret_ref: Option<SecretKeySelector>,

    /// Microsoft Entra ID through Azure workload identity: the operator exchanges its service
    /// account token for an Entra token of this application. Give the application the "Device
    /// Provisioning Service Data Contributor" role on the DPS instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentity>,
}

/// A Microsoft Entra ID application federated with the operator's service account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    /// Application (client) id. Required on a ProvisioningService; a ClusterProvisioningService
    /// uses the operator's own identity (`AZURE_CLIENT_ID`) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = schema::uuid())]
    pub client_id: Option<String>,
    /// Directory (tenant) id. Required on a ProvisioningService; a ClusterProvisioningService
    /// uses the operator's own tenant (`AZURE_TENANT_ID`) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = schema::uuid())]
    pub tenant_id: Option<String>,
}

/// PEM certificates to trust: exactly one of `secretRef` or `configMapRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.configMapRef)")
    .message("spec.caBundle must set exactly one of secretRef or configMapRef"))]
pub struct CaBundle {
    /// A Secret key holding PEM certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeySelector>,
    /// A ConfigMap key holding PEM certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeySelector>,
}

/// The share of the DPS quota the operator may use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Service API calls per minute the operator makes to this DPS instance at most, across all
    /// enrollments that use it. DPS allows 1,000 operations per minute per unit, shared with every
    /// other client; defaults to 200.
    #[schemars(range(min = 1, max = 100000))]
    pub operations_per_minute: i32,
}

/// Defaults for the enrollments that use a connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentDefaults {
    /// How often each enrollment is compared with DPS to find changes made outside Kubernetes,
    /// e.g. `10m`. At least `1m`; defaults to `10m`. Checks are jittered and read DPS in pages,
    /// so many enrollments cost few DPS operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = schema::duration())]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')")
        .message("driftCheckInterval must be at least 1m"))]
    pub drift_check_interval: Option<String>,

    /// What happens in DPS when an enrollment resource is deleted. Defaults to `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// Whether deleting an enrollment resource that uses this connection is refused until its
    /// `spec.deletionProtection` is set to false. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,
}

/// What the operator observed of a DPS connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` is True once the credentials are valid and DPS answered an authenticated call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,

    /// The DPS host name in use, from `spec.host` or the connection string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,

    /// The kind of credentials in use: `SharedAccessPolicy` or `WorkloadIdentity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,

    /// While the connection is being deleted: how many enrollments still use it. It stays (the
    /// finalizer `dps.iot.dev/in-use`) until they are gone, so that they can still be removed
    /// from DPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use_by: Option<i64>,
}
