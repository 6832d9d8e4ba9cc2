//! The operator's API: custom resource types of the group `dps.iot.dev`, version `v1beta1`
//! (the storage version; `v1alpha1` is served too, deprecated, with the same schema).
//! Types only; what they mean to DPS lives in the controller.

// Clippy reads the repeated `type_ = "string"` of separate `printcolumn(...)` groups in a
// `#[kube(...)]` attribute as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod enrollment;
mod enrollment_group;
mod enrollment_set;
mod individual_enrollment;
mod provisioning_service;
pub mod reference;
mod references;
pub mod schema;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::CustomResourceExt;

pub use enrollment::*;
pub use enrollment_group::*;
pub use enrollment_set::*;
pub use individual_enrollment::*;
pub use provisioning_service::*;
pub use references::*;

/// The API group of every kind here.
pub const GROUP: &str = "dps.iot.dev";

/// The version every kind is stored in, and the one the operator reads and writes.
pub const STORAGE_VERSION: &str = "v1beta1";

/// Versions still served, deprecated: the same schema as [`STORAGE_VERSION`] (so the API server
/// converts between them by changing `apiVersion` alone). See the README's versioning policy.
pub const DEPRECATED_VERSIONS: &[&str] = &["v1alpha1"];

/// Annotation that stops all writes to DPS for one object while it is `"true"`.
pub const PAUSED_ANNOTATION: &str = "dps.iot.dev/paused";

/// Set to a new value (e.g. a timestamp) to rotate an enrollment's generated keys now.
pub const ROTATE_KEYS_ANNOTATION: &str = "dps.iot.dev/rotate-keys";

/// Annotation the operator writes (with its finalizer) just before it creates or adopts an
/// enrollment: `<resource uid>@<DPS host>`. It lets a restarted operator recognise a create it
/// sent but never saw answered. Set by the operator only.
pub const CLAIM_ANNOTATION: &str = "dps.iot.dev/claim";

/// The CustomResourceDefinitions of all five kinds, in a stable order. Use these rather than
/// `Kind::crd()`: they are what `crds/` and the Helm chart hold.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        ProvisioningService::crd(),
        ClusterProvisioningService::crd(),
        EnrollmentGroup::crd(),
        IndividualEnrollment::crd(),
    ];
    for crd in &mut crds {
        serve_deprecated_versions(crd);
    }
    // Sets came after v1alpha1: they have no deprecated version to serve.
    crds.push(IndividualEnrollmentSet::crd());
    for version in crds.iter_mut().flat_map(|crd| crd.spec.versions.iter_mut()) {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            let mut json = serde_json::to_value(&*schema).expect("a CRD schema serializes to JSON");
            schema::drop_nullable(&mut json);
            schema::unwrap_descriptions(&mut json);
            *schema = serde_json::from_value(json).expect("a CRD schema deserializes from JSON");
        }
    }
    crds
}

/// Adds each of [`DEPRECATED_VERSIONS`] to `crd` (generated with the storage version only): served,
/// not stored, with a warning on every request that names the storage version.
fn serve_deprecated_versions(crd: &mut CustomResourceDefinition) {
    let current = crd.spec.versions[0].clone();
    debug_assert_eq!(current.name, STORAGE_VERSION);
    for version in DEPRECATED_VERSIONS {
        let kind = &crd.spec.names.kind;
        crd.spec.versions.push(CustomResourceDefinitionVersion {
            name: (*version).to_owned(),
            storage: false,
            deprecated: Some(true),
            deprecation_warning: Some(format!(
                "{GROUP}/{version} {kind} is deprecated: use {GROUP}/{STORAGE_VERSION} (the same fields; \
                 `dps-operator convert --write <files>` rewrites manifests)"
            )),
            ..current.clone()
        });
    }
}

/// Each CRD as a file name (`<plural>.<group>.yaml`) and its YAML: the contents of `crds/`.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.as_deref().expect("a generated CRD has a name");
            (format!("{name}.yaml"), serde_yaml_ng::to_string(crd).expect("a CRD serializes to YAML"))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream, as `dps-operator crds` prints it.
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect()
}
