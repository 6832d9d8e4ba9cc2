//! The connection reconcilers: a `ProvisioningService` or `ClusterProvisioningService` is Ready
//! once its credentials are valid and DPS answered an authenticated call.

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, Resource, ResourceExt, runtime::controller::Action};

use super::{
    Error, conditions,
    connection::{Connection, probe},
    context::Context,
    enrollment::{describe, jitter},
};
use crate::api::{ClusterProvisioningService, ProvisioningService, ProvisioningServiceStatus};

/// How often a working connection is checked again.
const RECHECK: Duration = Duration::from_secs(300);

pub async fn reconcile_namespaced(
    service: Arc<ProvisioningService>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let api =
        Api::<ProvisioningService>::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default());
    let Some(service) = latest(&ctx, &api, service).await? else {
        return Ok(Action::await_change());
    };
    let result = match ctx.connections.for_provisioning_service(&ctx.client, &service).await {
        Ok(connection) => probe(&connection).await.map(|()| connection),
        Err(error) => Err(error),
    };
    report(&ctx, &api, &*service, service.status.as_ref(), result).await
}

pub async fn reconcile_cluster(
    service: Arc<ClusterProvisioningService>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let api = Api::<ClusterProvisioningService>::all(ctx.client.clone());
    let Some(service) = latest(&ctx, &api, service).await? else {
        return Ok(Action::await_change());
    };
    let result = match ctx.connections.for_cluster_provisioning_service(&ctx.client, &service).await {
        Ok(connection) => probe(&connection).await.map(|()| connection),
        Err(error) => Err(error),
    };
    report(&ctx, &api, &*service, service.status.as_ref(), result).await
}

async fn latest<K>(ctx: &Context, api: &Api<K>, service: Arc<K>) -> Result<Option<Arc<K>>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = service.name_any();
    ctx.latest(api, service).await.map_err(|e| Error::kube(format!("read {} {name}", K::kind(&())), e))
}

pub fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    Action::requeue(super::enrollment::retry_delay(error.retry(), 3))
}

/// Writes the connection's status (when it changed) and decides when to check again.
async fn report<K>(
    ctx: &Context,
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
        ctx.write_status(api, service, &status).await.map_err(|e| {
            Error::kube(format!("write the status of {} {}", K::kind(&()), service.name_any()), e)
        })?;
    }
    result.map(|_| Action::requeue(jitter(RECHECK, 0.2)))
}
