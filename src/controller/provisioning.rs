//! The connection reconcilers: a `ProvisioningService` or `ClusterProvisioningService` is Ready
//! once its credentials are valid and DPS answered an authenticated call.

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};

use super::{
    Error, conditions,
    connection::{Connection, probe},
    context::Context,
    error::describe,
    kinds::EnrollmentKind,
    names::resource_name,
    retry::{jitter, retry_delay},
};
use crate::api::{
    ClusterProvisioningService, EnrollmentGroup, IndividualEnrollment, ProvisioningService,
    ProvisioningServiceStatus, ServiceKind,
};

/// How often a working connection is checked again.
const RECHECK: Duration = Duration::from_secs(300);

/// The finalizer that keeps a connection while enrollments use it, so that deleting everything
/// at once (`kubectl delete -f`, `helm uninstall`, a namespace) still removes them from DPS.
pub const IN_USE_FINALIZER: &str = "dps.iot.dev/in-use";

/// How often a connection being deleted looks again whether enrollments still use it.
const IN_USE_RECHECK: Duration = Duration::from_secs(2);

pub async fn reconcile_namespaced(
    service: Arc<ProvisioningService>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = service.namespace().unwrap_or_default();
    let api = Api::<ProvisioningService>::namespaced(ctx.client.clone(), &namespace);
    let Some(service) = latest(&ctx, &api, service).await? else {
        return Ok(Action::await_change());
    };
    let reference = (ServiceKind::ProvisioningService, service.name_any());
    if let Some(action) = hold_while_in_use(&ctx, &api, &*service, reference, vec![namespace]).await? {
        return Ok(action);
    }
    let (result, known) =
        probed(ctx.connections.provisioning_service(&ctx.client, &service, None).await).await;
    report(&ctx, &api, &*service, service.status.as_ref(), result, known).await
}

pub async fn reconcile_cluster(
    service: Arc<ClusterProvisioningService>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let api = Api::<ClusterProvisioningService>::all(ctx.client.clone());
    let Some(service) = latest(&ctx, &api, service).await? else {
        return Ok(Action::await_change());
    };
    let reference = (ServiceKind::ClusterProvisioningService, service.name_any());
    let namespaces = ctx.namespaces.clone();
    if let Some(action) = hold_while_in_use(&ctx, &api, &*service, reference, namespaces).await? {
        return Ok(action);
    }
    let (result, known) =
        probed(ctx.connections.cluster_provisioning_service(&ctx.client, &service, None).await).await;
    report(&ctx, &api, &*service, service.status.as_ref(), result, known).await
}

/// Keeps the in-use finalizer on a live connection; on one being deleted, removes it once no
/// enrollment in `namespaces` (empty: all) uses it. `Some` when the reconcile ends here.
async fn hold_while_in_use<K>(
    ctx: &Context,
    api: &Api<K>,
    service: &K,
    reference: (ServiceKind, String),
    namespaces: Vec<String>,
) -> Result<Option<Action>, Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + HasConnectionStatus,
{
    let name = format!("{} {}", K::kind(&()), service.name_any());
    let finalizers = service.meta().finalizers.clone().unwrap_or_default();
    let held = finalizers.iter().any(|f| f == IN_USE_FINALIZER);
    if service.meta().deletion_timestamp.is_none() {
        if !held {
            set_finalizers(api, service, |finalizers| finalizers.push(IN_USE_FINALIZER.to_owned()))
                .await
                .map_err(|e| Error::kube(format!("adding the finalizer to {name}"), e))?;
        }
        return Ok(None);
    }
    if !held {
        return Ok(Some(Action::await_change()));
    }
    let users = users(ctx, &reference, &namespaces).await?;
    if users.is_empty() {
        set_finalizers(api, service, |finalizers| finalizers.retain(|f| f != IN_USE_FINALIZER))
            .await
            .map_err(|e| Error::kube(format!("removing the finalizer from {name}"), e))?;
        ctx.memory.forget(service);
        return Ok(Some(Action::await_change()));
    }
    let old = service.connection_status();
    let shown: Vec<&str> = users.iter().take(3).map(String::as_str).collect();
    let more = if users.len() > shown.len() {
        format!(" and {} more", users.len() - shown.len())
    } else {
        String::new()
    };
    let message = format!(
        "Being deleted, and still in use by {} enrollment(s) ({}{more}); it stays until they are gone, so that \
         they can still be removed from DPS.",
        users.len(),
        shown.join(", ")
    );
    let now = Time(jiff::Timestamp::now());
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let observations = conditions::outcome(Err(("InUse", false)), &message);
    let status = ProvisioningServiceStatus {
        observed_generation: service.meta().generation,
        conditions: conditions::update(old_conditions, &observations, service.meta().generation, &now),
        in_use_by: Some(users.len() as i64),
        ..old.cloned().unwrap_or_default()
    };
    if old != Some(&status) {
        ctx.memory.write_status(api, service, &status).await?;
    }
    Ok(Some(Action::requeue(IN_USE_RECHECK)))
}

/// The enrollments in `namespaces` (empty: all) whose `serviceRef` is `reference`, as
/// `Kind namespace/name`.
async fn users(
    ctx: &Context,
    reference: &(ServiceKind, String),
    namespaces: &[String],
) -> Result<Vec<String>, Error> {
    async fn of_kind<K: EnrollmentKind>(
        ctx: &Context,
        reference: &(ServiceKind, String),
        namespace: Option<&str>,
        users: &mut Vec<String>,
    ) -> Result<(), Error> {
        let api: Api<K> = match namespace {
            Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
            None => Api::all(ctx.client.clone()),
        };
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| Error::kube(format!("listing the {}s that use a connection", K::kind(&())), e))?;
        users.extend(
            list.items
                .iter()
                .filter(|e| {
                    let used = &e.settings().service_ref;
                    (used.kind.unwrap_or_default(), &used.name) == (reference.0, &reference.1)
                })
                .map(|e| resource_name(e)),
        );
        Ok(())
    }
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut found = Vec::new();
    for scope in scopes {
        of_kind::<EnrollmentGroup>(ctx, reference, scope, &mut found).await?;
        of_kind::<IndividualEnrollment>(ctx, reference, scope, &mut found).await?;
    }
    Ok(found)
}

/// Changes the finalizers with `edit`, failing rather than overwriting when the object changed
/// meanwhile; then it is read afresh and `edit` applied again, at once.
async fn set_finalizers<K>(
    api: &Api<K>,
    object: &K,
    edit: impl Fn(&mut Vec<String>),
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut meta = std::borrow::Cow::Borrowed(object.meta());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut finalizers = meta.finalizers.clone().unwrap_or_default();
        edit(&mut finalizers);
        let patch = serde_json::json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": meta.resource_version}
        });
        match api.patch(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < 3 => {
                let latest = api.get(&object.name_any()).await?;
                if latest.meta().uid != object.meta().uid {
                    return Err(kube::Error::Api(status));
                }
                meta = std::borrow::Cow::Owned(latest.meta().clone());
            }
            Err(error) => return Err(error),
        }
    }
}

/// Both connection kinds carry the same status.
pub trait HasConnectionStatus {
    fn connection_status(&self) -> Option<&ProvisioningServiceStatus>;
}

impl HasConnectionStatus for ProvisioningService {
    fn connection_status(&self) -> Option<&ProvisioningServiceStatus> {
        self.status.as_ref()
    }
}

impl HasConnectionStatus for ClusterProvisioningService {
    fn connection_status(&self) -> Option<&ProvisioningServiceStatus> {
        self.status.as_ref()
    }
}

async fn latest<K>(ctx: &Context, api: &Api<K>, service: Arc<K>) -> Result<Option<Arc<K>>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = service.name_any();
    ctx.memory
        .latest(api, service)
        .await
        .map_err(|e| Error::kube(format!("reading {} {name}", K::kind(&())), e))
}

pub fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    Action::requeue(retry_delay(error.retry(), 3))
}

/// The host and kind of credentials of a resolved connection.
type Known = Option<(String, &'static str)>;

/// Probes a resolved connection: the outcome, and the host and credentials kind once resolved,
/// which the status shows even while DPS refuses the credentials.
async fn probed(resolved: Result<Connection, Error>) -> (Result<Connection, Error>, Known) {
    match resolved {
        Ok(connection) => {
            let known = Some((connection.host.clone(), connection.credentials));
            (probe(&connection).await.map(|()| connection), known)
        }
        Err(error) => (Err(error), None),
    }
}

/// Writes the connection's status (when it changed) and decides when to check again.
async fn report<K>(
    ctx: &Context,
    api: &Api<K>,
    service: &K,
    old: Option<&ProvisioningServiceStatus>,
    result: Result<Connection, Error>,
    known: Known,
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
            known.as_ref().map(|(host, _)| host.clone()).or_else(|| old.and_then(|s| s.host.clone())),
            known
                .map(|(_, credentials)| credentials.to_owned())
                .or_else(|| old.and_then(|s| s.credentials.clone())),
        ),
    };
    let reason = result.as_ref().map_or_else(|error| error.reason(), |_| "Connected");
    ctx.memory.set_ready(service, result.is_ok(), reason);
    let status = ProvisioningServiceStatus {
        observed_generation: service.meta().generation,
        conditions: conditions::update(old_conditions, &observations, service.meta().generation, &now),
        host,
        credentials,
        in_use_by: None,
    };
    // A log line and an event when it becomes ready, or fails anew (another reason or message).
    let previous = old_conditions.iter().find(|c| c.type_ == conditions::READY);
    let what = resource_name(service);
    match &result {
        Ok(connection) if previous.is_none_or(|c| c.status != "True") => {
            tracing::info!(connection = %what, host = %connection.host, credentials = connection.credentials, "connection ready");
            let note = format!(
                "Authenticated to DPS at {} with {}.",
                connection.host, connection.credentials_source
            );
            ctx.events.publish(service, false, "Connected", note).await;
        }
        Err(error) => {
            let message = describe(error);
            if previous.is_none_or(|c| c.reason != error.reason() || c.message != message) {
                tracing::warn!(connection = %what, reason = error.reason(), error = %message, "connection not ready");
                ctx.events.publish(service, true, error.reason(), message).await;
            }
        }
        Ok(_) => {}
    }
    if old != Some(&status) {
        ctx.memory.write_status(api, service, &status).await?;
    }
    result.map(|_| Action::requeue(jitter(RECHECK, 0.2)))
}
