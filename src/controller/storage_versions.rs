//! Objects stored in a deprecated version move to the storage version by themselves. The leader
//! writes each object of a kind once, unchanged: the API server stores what it writes in the
//! storage version. Then it sets the kind's CRD `status.storedVersions` to the storage version
//! alone, which is what lets a later release stop serving the old version. This is what the
//! Kubernetes storage version migrator, Crossplane and Cluster API do; it never calls DPS.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Resource,
    api::{ListParams, Patch, PatchParams},
    core::{DynamicObject, GroupVersionKind, ObjectMeta},
    discovery::ApiResource,
};
use serde_json::json;

use super::Error;
use crate::api::{
    ClusterProvisioningService, EnrollmentGroup, IndividualEnrollment, ProvisioningService, STORAGE_VERSION,
};

/// Objects listed per page.
const PAGE: u32 = 200;

/// What one migration did: per kind, how many objects were written again (kinds already stored
/// only in the storage version are not listed).
#[derive(Debug, Default, PartialEq)]
pub struct Migrated {
    pub kinds: Vec<(String, usize)>,
}

/// Moves every kind still recorded as stored in another version to the storage version.
pub async fn migrate(client: &Client) -> Result<Migrated, Error> {
    let mut migrated = Migrated::default();
    for (kind, crd_name, namespaced) in kinds() {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = crds.get(&crd_name).await.map_err(|e| Error::kube(format!("reading CRD {crd_name}"), e))?;
        let stored = crd.status.and_then(|status| status.stored_versions).unwrap_or_default();
        let stores_current = crd.spec.versions.iter().any(|v| v.name == STORAGE_VERSION && v.storage);
        if !needs_migration(&stored) {
            continue;
        }
        if !stores_current {
            return Err(Error::CrdsOutdated { crd: crd_name, storage_version: STORAGE_VERSION });
        }
        let written = rewrite_all(client, &crd.spec.group, &kind, &crd.spec.names.plural, namespaced).await?;
        let done = json!({"status": {"storedVersions": [STORAGE_VERSION]}});
        crds.patch_status(&crd_name, &PatchParams::default(), &Patch::Merge(&done)).await.map_err(|e| {
            Error::kube(format!("recording in CRD {crd_name} that only {STORAGE_VERSION} is stored"), e)
        })?;
        tracing::info!(
            kind,
            objects = written,
            was = stored.join(","),
            now = STORAGE_VERSION,
            "stored objects migrated"
        );
        migrated.kinds.push((kind, written));
    }
    Ok(migrated)
}

/// Whether a CRD whose `status.storedVersions` is `stored` may still hold objects in a version
/// other than the storage version.
pub fn needs_migration(stored: &[String]) -> bool {
    stored.iter().any(|version| version != STORAGE_VERSION)
}

/// Each kind, its CRD's name and whether it is namespaced.
fn kinds() -> [(String, String, bool); 4] {
    fn of<K: Resource<DynamicType = ()>>(namespaced: bool) -> (String, String, bool) {
        (K::kind(&()).into_owned(), format!("{}.{}", K::plural(&()), K::group(&())), namespaced)
    }
    [
        of::<ProvisioningService>(true),
        of::<ClusterProvisioningService>(false),
        of::<EnrollmentGroup>(true),
        of::<IndividualEnrollment>(true),
    ]
}

/// Writes every object of the kind again, unchanged (an empty merge patch), page by page.
/// An object deleted meanwhile needs nothing.
async fn rewrite_all(
    client: &Client,
    group: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
) -> Result<usize, Error> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, STORAGE_VERSION, kind), plural);
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut params = ListParams::default().limit(PAGE);
    let mut written = 0;
    loop {
        let page = all
            .list_metadata(&params)
            .await
            .map_err(|e| Error::kube(format!("listing {kind}s to migrate them"), e))?;
        for object in &page.items {
            rewrite(client, &resource, &object.metadata, namespaced).await?;
            written += 1;
        }
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(written),
        }
    }
}

async fn rewrite(
    client: &Client,
    resource: &ApiResource,
    meta: &ObjectMeta,
    namespaced: bool,
) -> Result<(), Error> {
    let name = meta.name.as_deref().unwrap_or_default();
    let api: Api<DynamicObject> = match (&meta.namespace, namespaced) {
        (Some(namespace), true) => Api::namespaced_with(client.clone(), namespace, resource),
        _ => Api::all_with(client.clone(), resource),
    };
    match api.patch(name, &PatchParams::default(), &Patch::Merge(json!({}))).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("writing {} {name} again to migrate it", resource.kind), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_crd_with_another_stored_version_needs_migration() {
        let versions = |list: &[&str]| list.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
        assert!(needs_migration(&versions(&["v1alpha1"])));
        assert!(needs_migration(&versions(&["v1alpha1", "v1beta1"])));
        assert!(!needs_migration(&versions(&["v1beta1"])));
        // A CRD the API server has not reported yet: nothing known to migrate.
        assert!(!needs_migration(&[]));
    }

    #[test]
    fn every_kind_and_its_crd() {
        let names: Vec<String> = kinds().into_iter().map(|(_, crd, _)| crd).collect();
        assert_eq!(
            names,
            [
                "provisioningservices.dps.iot.dev",
                "clusterprovisioningservices.dps.iot.dev",
                "enrollmentgroups.dps.iot.dev",
                "individualenrollments.dps.iot.dev"
            ]
        );
    }
}
