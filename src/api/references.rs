//! References from our resources to Secrets, ConfigMaps and DPS connections.
//!
//! Secret and ConfigMap references carry no namespace: a namespaced resource reads them from its
//! own namespace, a cluster-scoped connection from the operator's namespace. Nobody can point the
//! operator at a Secret in a namespace they do not control.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{self, refuse_property};

fn refuse_namespace(schema: &mut schemars::Schema) {
    refuse_property(
        schema,
        "namespace",
        serde_json::json!({"type": "string"}),
        "Not allowed: the Secret or ConfigMap is always read from the namespace of the resource \
         that references it (for a ClusterProvisioningService, the operator's namespace).",
        "cross-namespace references are not allowed: remove namespace; the object is read from \
         the namespace of the resource that references it",
    );
}

/// A key in a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = refuse_namespace)]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::data_key())]
    pub key: String,
}

/// A key in a ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = refuse_namespace)]
pub struct ConfigMapKeySelector {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub name: String,
    /// Key in the ConfigMap's data.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::data_key())]
    pub key: String,
}

/// A Secret in the same namespace, referenced by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = refuse_namespace)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub name: String,
}

/// An X.509 certificate in PEM form, read from a Secret in the same namespace. Only the
/// certificate is read; a private key in the same Secret is never read.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = refuse_namespace)]
pub struct CertificateSecretRef {
    /// Name of the Secret, for example one that cert-manager writes.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub name: String,
    /// Key holding the PEM certificate. Defaults to `tls.crt`; use `ca.crt` for the issuing CA of
    /// a cert-manager Secret. When the value holds a chain, the first certificate is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::data_key())]
    pub key: Option<String>,
}

impl CertificateSecretRef {
    /// The key read when none is given: where cert-manager and `kubernetes.io/tls` Secrets keep
    /// the certificate.
    pub const DEFAULT_KEY: &str = "tls.crt";

    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(Self::DEFAULT_KEY)
    }
}

/// The kind of DPS connection an enrollment uses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    // A `ProvisioningService` in the enrollment's namespace.
    #[default]
    ProvisioningService,
    // A cluster-wide `ClusterProvisioningService` whose `allowedNamespaces` admits the
    // enrollment's namespace.
    ClusterProvisioningService,
}

fn refuse_service_namespace(schema: &mut schemars::Schema) {
    refuse_property(
        schema,
        "namespace",
        serde_json::json!({"type": "string"}),
        "Not allowed: a ProvisioningService is always looked up in the enrollment's own namespace; \
         to share a connection across namespaces, use a ClusterProvisioningService.",
        "cross-namespace references are not allowed: remove serviceRef.namespace; a ProvisioningService \
         is looked up in the enrollment's namespace (share one with kind: ClusterProvisioningService)",
    );
}

/// Which DPS connection (`ProvisioningService` or `ClusterProvisioningService`) to use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = refuse_service_namespace)]
pub struct ServiceRef {
    /// Kind of the connection. Defaults to `ProvisioningService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ServiceKind>,
    /// Name of the connection. A `ProvisioningService` must be in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = schema::object_name())]
    pub name: String,
}
