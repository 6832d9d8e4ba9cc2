//! Starting the four controllers, with the watches that bring Secret and connection changes to
//! the resources that use them.

use std::sync::Arc;

use futures::{FutureExt, StreamExt, future::join_all};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    runtime::{Controller, reflector::ObjectRef, watcher},
};

use super::{
    Error,
    context::{Config, Context},
    enrollment,
    kinds::EnrollmentKind,
    provisioning,
    secrets::referenced_secrets,
};
use crate::api::{
    ClusterProvisioningService, ConnectionSpec, EnrollmentGroup, IndividualEnrollment, ProvisioningService,
    ServiceKind,
};

/// Runs the controllers until the process is asked to stop. `namespaces` limits the namespaced
/// kinds to those namespaces; empty means all.
pub async fn run(client: Client, config: Config, namespaces: Vec<String>) -> Result<(), Error> {
    check_crds_installed(&client).await?;
    let operator_namespace = config.operator_namespace.clone();
    let ctx = Arc::new(Context::new(client.clone(), config));
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    let mut controllers = Vec::new();
    for scope in &scopes {
        controllers
            .push(enrollment_controller::<EnrollmentGroup>(&client, scope.as_deref(), ctx.clone()).boxed());
        controllers.push(
            enrollment_controller::<IndividualEnrollment>(&client, scope.as_deref(), ctx.clone()).boxed(),
        );
        controllers.push(provisioning_service_controller(&client, scope.as_deref(), ctx.clone()).boxed());
    }
    controllers.push(cluster_provisioning_service_controller(&client, &operator_namespace, ctx).boxed());
    join_all(controllers).await;
    Ok(())
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Fails with what to do when a CRD is missing or the operator may not read it.
async fn check_crds_installed(client: &Client) -> Result<(), Error> {
    let params = kube::api::ListParams::default().limit(1);
    let checks = [
        ("EnrollmentGroup", Api::<EnrollmentGroup>::all(client.clone()).list_metadata(&params).await.err()),
        (
            "IndividualEnrollment",
            Api::<IndividualEnrollment>::all(client.clone()).list_metadata(&params).await.err(),
        ),
        (
            "ProvisioningService",
            Api::<ProvisioningService>::all(client.clone()).list_metadata(&params).await.err(),
        ),
        (
            "ClusterProvisioningService",
            Api::<ClusterProvisioningService>::all(client.clone()).list_metadata(&params).await.err(),
        ),
    ];
    for (kind, error) in checks {
        if let Some(error) = error {
            return Err(Error::kube(
                format!(
                    "list {kind}s (are the CRDs installed? `dps-operator crds | kubectl apply --server-side -f -`)"
                ),
                error,
            ));
        }
    }
    Ok(())
}

fn log_outcome<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) -> futures::future::Ready<()> {
    match result {
        Ok(object) => tracing::debug!(?object, "reconciled"),
        Err(error) => tracing::debug!(%error, "reconcile failed"),
    }
    futures::future::ready(())
}

async fn enrollment_controller<K: EnrollmentKind>(
    client: &Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
) {
    let controller = Controller::new(scoped::<K>(client, namespace), watcher::Config::default());
    let store = controller.store();
    let (by_secret, by_service, by_cluster_service, by_namespace) =
        (store.clone(), store.clone(), store.clone(), store);
    controller
        .watches(scoped::<Secret>(client, namespace), watcher::Config::default(), move |secret| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            by_secret
                .state()
                .into_iter()
                .filter(|e| e.namespace() == namespace)
                .filter(|e| {
                    e.attestation_input()
                        .is_ok_and(|input| referenced_secrets(input, e.settings()).contains(&name))
                })
                .map(|e| ObjectRef::from_obj(&*e))
                .collect::<Vec<_>>()
        })
        .watches(
            scoped::<ProvisioningService>(client, namespace),
            watcher::Config::default(),
            move |service| {
                let (namespace, name) = (service.namespace(), service.name_any());
                by_service
                    .state()
                    .into_iter()
                    .filter(|e| e.namespace() == namespace)
                    .filter(|e| {
                        let reference = &e.settings().service_ref;
                        reference.kind.unwrap_or_default() == ServiceKind::ProvisioningService
                            && reference.name == name
                    })
                    .map(|e| ObjectRef::from_obj(&*e))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<ClusterProvisioningService>::all(client.clone()),
            watcher::Config::default(),
            move |service| {
                let name = service.name_any();
                by_cluster_service
                    .state()
                    .into_iter()
                    .filter(|e| {
                        let reference = &e.settings().service_ref;
                        reference.kind == Some(ServiceKind::ClusterProvisioningService)
                            && reference.name == name
                    })
                    .map(|e| ObjectRef::from_obj(&*e))
                    .collect::<Vec<_>>()
            },
        )
        // A namespace's labels decide which ClusterProvisioningServices its enrollments may use.
        .watches(Api::<Namespace>::all(client.clone()), watcher::Config::default(), move |namespace| {
            let name = namespace.name_any();
            by_namespace
                .state()
                .into_iter()
                .filter(|e| e.namespace().as_deref() == Some(name.as_str()))
                .filter(|e| e.settings().service_ref.kind == Some(ServiceKind::ClusterProvisioningService))
                .map(|e| ObjectRef::from_obj(&*e))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(enrollment::reconcile::<K>, enrollment::error_policy::<K>, ctx)
        .for_each(log_outcome)
        .await;
}

/// The Secrets and ConfigMaps a connection reads.
fn connection_secrets(spec: &ConnectionSpec) -> Vec<&str> {
    let mut names: Vec<&str> =
        spec.credentials.connection_string_secret_ref.iter().map(|r| r.name.as_str()).collect();
    if let Some(bundle) = &spec.ca_bundle {
        names.extend(bundle.secret_ref.iter().map(|r| r.name.as_str()));
    }
    names
}

async fn provisioning_service_controller(client: &Client, namespace: Option<&str>, ctx: Arc<Context>) {
    let controller =
        Controller::new(scoped::<ProvisioningService>(client, namespace), watcher::Config::default());
    let store = controller.store();
    controller
        .watches(scoped::<Secret>(client, namespace), watcher::Config::default(), move |secret| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            store
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace() == namespace
                        && connection_secrets(&s.spec.connection).contains(&name.as_str())
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(provisioning::reconcile_namespaced, provisioning::error_policy, ctx)
        .for_each(log_outcome)
        .await;
}

async fn cluster_provisioning_service_controller(
    client: &Client,
    operator_namespace: &str,
    ctx: Arc<Context>,
) {
    let controller =
        Controller::new(Api::<ClusterProvisioningService>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            Api::<Secret>::namespaced(client.clone(), operator_namespace),
            watcher::Config::default(),
            move |secret| {
                let name = secret.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|s| connection_secrets(&s.spec.connection).contains(&name.as_str()))
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(provisioning::reconcile_cluster, provisioning::error_policy, ctx)
        .for_each(log_outcome)
        .await;
}
