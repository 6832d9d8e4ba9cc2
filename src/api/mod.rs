//! The operator's API: custom resource types of the group `dps.iot.dev`, version `v1alpha1`.
//! Types only; what they mean to DPS lives in the controller.

// Clippy reads the repeated `type_ = "string"` of separate `printcolumn(...)` groups in a
// `#[kube(...)]` attribute as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod enrollment;
mod enrollment_group;
mod individual_enrollment;
mod provisioning_service;
mod references;
pub mod schema;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use enrollment::*;
pub use enrollment_group::*;
pub use individual_enrollment::*;
pub use provisioning_service::*;
pub use references::*;

/// The API group of every kind here.
pub const GROUP: &str = "dps.iot.dev";

/// Annotation that stops all writes to DPS for one object while it is `"true"`.
pub const PAUSED_ANNOTATION: &str = "dps.iot.dev/paused";

/// Annotation the operator writes (with its finalizer) just before it creates or adopts an
/// enrollment: `<resource uid>@<DPS host>`. It lets a restarted operator recognise a create it
/// sent but never saw answered. Set by the operator only.
pub const CLAIM_ANNOTATION: &str = "dps.iot.dev/claim";

/// The CustomResourceDefinitions of all four kinds, in a stable order. Use these rather than
/// `Kind::crd()`: they are what `crds/` and the Helm chart hold.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        ProvisioningService::crd(),
        ClusterProvisioningService::crd(),
        EnrollmentGroup::crd(),
        IndividualEnrollment::crd(),
    ];
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
