//! The connection reconcilers: a `ProvisioningService` or `ClusterProvisioningService` is Ready
//! once its credentials are valid and DPS answered an authenticated call.

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;

use super::{
    Error, conditions,
    connection::{Connection, probe},
    context::Context,
    enrollment::{FIELD_MANAGER, describe, jitter},
};
use crate::api::{ClusterProvisioningService, ProvisioningService, ProvisioningServiceStatus};

/// How often a working connection is checked again.
const RECHECK: Duration = Duration::from_secs(300);

pub async fn reconcile_namespaced(
    service: Arc<ProvisioningService>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let result = match ctx.connections.for_provisioning_service(&ctx.client, &service).await {
        Ok(connection) => probe(&connection).await.map(|()| connection),
        Err(error) => Err(error),
    };
    let api =
        Api::<ProvisioningService>::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default());
    report(&api, &*service, service.status.as_ref(), result).await
}

pub async fn reconcile_cluster(
    service: Arc<ClusterProvisioningService>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let result = match ctx.connections.for_cluster_provisioning_service(&ctx.client, &service).await {
        Ok(connection) => probe(&connection).await.map(|()| connection),
        Err(error) => Err(error),
    };
    let api = Api::<ClusterProvisioningService>::all(ctx.client.clone());
    report(&api, &*service, service.status.as_ref(), result).await
}

pub fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    Action::requeue(super::enrollment::retry_delay(error.retry(), 3))
}

/// Writes the connection's status (when it changed) and decides when to check again.
async fn report<K>(
    api: &Api<K>,
    service: &K,
    old: Option<&ProvisioningServiceStatus>,
    result: Result<Connection, Error>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let (observations, host, credentials) = match &result {
        Ok(connection) => (
            conditions::outcome(
                Ok("Connected"),
                &format!(
                    "Authenticated to DPS at {} with {}.",
                    connection.host, connection.credentials_source
                ),
            ),
            Some(connection.host.clone()),
            Some(connection.credentials.to_owned()),
        ),
        Err(error) => (
            conditions::outcome(Err((error.reason(), false)), &describe(error)),
            old.and_then(|s| s.host.clone()),
            old.and_then(|s| s.credentials.clone()),
        ),
    };
    let status = ProvisioningServiceStatus {
        observed_generation: service.meta().generation,
        conditions: conditions::update(old_conditions, &observations, service.meta().generation, &now),
        host,
        credentials,
    };
    if old != Some(&status) {
        let patch = json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
        api.patch_status(
            &service.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| {
            Error::kube(format!("write the status of {} {}", K::kind(&()), service.name_any()), e)
        })?;
    }
    result.map(|_| Action::requeue(jitter(RECHECK, 0.2)))
}
