//! How the operator names what it writes and what it writes to.

use kube::{Resource, ResourceExt};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "dps-operator";

/// How messages name a resource: `IndividualEnrollment iot/boiler`.
pub fn resource_name<K: Resource<DynamicType = ()>>(object: &K) -> String {
    match object.namespace() {
        Some(namespace) => format!("{} {namespace}/{}", K::kind(&()), object.name_any()),
        None => format!("{} {}", K::kind(&()), object.name_any()),
    }
}

/// `Kind/namespace/name`, the key of what is remembered of an object.
pub fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}
