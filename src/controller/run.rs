//! Starting the four controllers, with the watches that bring Secret and connection changes to
//! the resources that use them.

use std::sync::Arc;

use futures::{FutureExt, StreamExt, TryStreamExt, future::join_all};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt, controller, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use kube_lease_manager::LeaseManagerBuilder;

use super::{
    Error,
    context::{Config, Context, FIELD_MANAGER},
    enrollment, finalizer,
    kinds::EnrollmentKind,
    provisioning,
    secrets::{DigestKey, referenced_secrets},
    watches::{Caches, Changes, NamespaceMetadata, SecretMetadata, SecretVersions, Shared, keep, prune},
};
use crate::api::{
    ClusterProvisioningService, ConnectionSpec, EnrollmentGroup, IndividualEnrollment, ProvisioningService,
    ServiceKind,
};
use crate::http::Health;

/// Leader election: only the replica holding the Lease writes.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    /// This replica's name (the pod name).
    pub identity: String,
}

/// How long a Lease is held without renewal, and how early it is renewed. A standby looks at the
/// Lease again only when it would expire, so this also bounds a graceful handover (the leader
/// releases it on SIGTERM); a leader that cannot renew for this long steps down.
const LEASE_DURATION: u64 = 4;
const LEASE_GRACE: u64 = 2;

/// Runs the controllers until `health` is told to stop, letting in-flight reconciles finish.
/// `namespaces` limits the namespaced kinds to those namespaces; empty means all.
pub async fn run(
    client: Client,
    config: Config,
    namespaces: Vec<String>,
    leader_election: Option<LeaderElection>,
    health: Arc<Health>,
) -> Result<(), Error> {
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    check_crds_installed(&client, &scopes).await?;
    let operator_namespace = config.operator_namespace.clone();
    let mut ctx = Context::new(client.clone(), config, health.clone());
    ctx.namespaces = scopes.iter().flatten().cloned().collect();
    ctx.digest_key = DigestKey::load_or_create(&client, &ctx.config.operator_namespace).await?;

    // With leader election, a standby waits for the Lease (healthy, ready to take over), and the
    // leader runs the controllers until it stops or loses the Lease.
    let leadership = match leader_election {
        None => None,
        Some(election) => {
            tracing::info!(lease = %election.lease_name, namespace = %election.lease_namespace, identity = %election.identity, "standby: waiting for the Lease");
            let manager = LeaseManagerBuilder::new(client.clone(), election.lease_name)
                .with_namespace(election.lease_namespace)
                .with_identity(election.identity)
                .with_duration(LEASE_DURATION)
                .with_grace(LEASE_GRACE)
                .with_field_manager(FIELD_MANAGER)
                .build()
                .await
                .map_err(|e| Error::LeaderElection(e.to_string()))?;
            let (mut leading, task) = manager.watch().await;
            health.set_ready(true);
            let mut stopped = std::pin::pin!(health.stopped());
            loop {
                if *leading.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    changed = leading.changed() => changed.map_err(|_| Error::LeaderElection("the lease manager stopped".into()))?,
                    _ = &mut stopped => return Ok(()),
                }
            }
            health.set_ready(false);
            tracing::info!("leading: this replica holds the Lease");
            Some((leading, task))
        }
    };

    // Who owns which enrollment, as the statuses record it, before any reconcile claims anew.
    for scope in &scopes {
        let seeded = async {
            ctx.seed_owners(&scoped::<EnrollmentGroup>(&client, scope.as_deref())).await?;
            ctx.seed_owners(&scoped::<IndividualEnrollment>(&client, scope.as_deref())).await
        };
        seeded.await.map_err(|e| Error::kube("listing the enrollments to learn who owns which", e))?;
    }

    // One watch per kind and scope, shared by the controllers; a ClusterProvisioningService's
    // Secrets are in the operator's namespace, watched on its own when no scope covers it.
    let mut secret_scopes = scopes.clone();
    let covering = scopes
        .iter()
        .position(|scope| scope.as_ref().is_none_or(|namespace| *namespace == operator_namespace))
        .unwrap_or_else(|| {
            secret_scopes.push(Some(operator_namespace.clone()));
            secret_scopes.len() - 1
        });
    let secret_versions = Arc::new(SecretVersions::new(secret_scopes.len()));
    let mut secrets: Vec<Shared<SecretMetadata>> = secret_scopes.iter().map(|_| Shared::default()).collect();
    let mut services: Vec<Shared<ProvisioningService>> = scopes.iter().map(|_| Shared::default()).collect();
    let (service_stores, service_writers): (Vec<_>, Vec<_>) =
        scopes.iter().map(|_| reflector::store()).unzip();
    let mut cluster_services = Shared::<ClusterProvisioningService>::default();
    let (cluster_service_store, cluster_service_writer) = reflector::store();
    let mut namespaces = Shared::<NamespaceMetadata>::default();
    let (namespace_store, namespace_writer) = reflector::store();
    ctx.caches = Caches {
        provisioning_services: service_stores.clone(),
        cluster_provisioning_services: Some(cluster_service_store.clone()),
        namespaces: Some(namespace_store),
        secrets: secret_versions.clone(),
    };
    let ctx = Arc::new(ctx);

    let mut controllers = Vec::new();
    let mut ready = Vec::new();
    for (index, scope) in scopes.iter().enumerate() {
        let mut triggers = || Triggers {
            secrets: secrets[index].subscribe(),
            services: services[index].subscribe(),
            cluster_services: cluster_services.subscribe(),
            namespaces: namespaces.subscribe(),
        };
        let (synced, running) =
            enrollment_controller::<EnrollmentGroup>(&client, scope.as_deref(), ctx.clone(), triggers());
        ready.push(synced);
        controllers.push(running);
        let (synced, running) =
            enrollment_controller::<IndividualEnrollment>(&client, scope.as_deref(), ctx.clone(), triggers());
        ready.push(synced);
        controllers.push(running);
        let (synced, running) = provisioning_service_controller(
            services[index].subscribe(),
            service_stores[index].clone(),
            secrets[index].subscribe(),
            ctx.clone(),
        );
        ready.push(synced);
        controllers.push(running);
    }
    let (synced, running) = cluster_provisioning_service_controller(
        cluster_services.subscribe(),
        cluster_service_store,
        secrets[covering].subscribe(),
        operator_namespace,
        ctx.clone(),
    );
    ready.push(synced);
    controllers.push(running);

    let mut watches = Vec::new();
    for ((scope, shared), writer) in scopes.iter().zip(services).zip(service_writers) {
        let events =
            watcher(scoped::<ProvisioningService>(&client, scope.as_deref()), watcher::Config::default());
        watches.push(shared.run("ProvisioningServices", pruned(events), keep(writer)));
    }
    for (scope, shared) in secret_scopes.iter().zip(secrets) {
        let events = watcher(scoped::<SecretMetadata>(&client, scope.as_deref()), watcher::Config::default());
        watches.push(shared.run("Secrets", pruned(events), secret_versions.observer(scope.clone())));
    }
    let events = watcher(Api::<ClusterProvisioningService>::all(client.clone()), watcher::Config::default());
    watches.push(cluster_services.run(
        "ClusterProvisioningServices",
        pruned(events),
        keep(cluster_service_writer),
    ));
    let events = watcher(Api::<NamespaceMetadata>::all(client.clone()), watcher::Config::default());
    watches.push(namespaces.run("Namespaces", pruned(events), keep(namespace_writer)));
    // The watches never end; the controllers end on shutdown, and the watches with them.
    let controllers = async move {
        tokio::select! {
            _ = join_all(controllers) => {}
            _ = join_all(watches) => {}
        }
    };

    let readiness = health.clone();
    tokio::spawn(async move {
        join_all(ready).await;
        readiness.set_ready(true);
    });
    let Some((mut leading, task)) = leadership else {
        controllers.await;
        return Ok(());
    };
    let lost = async {
        while leading.changed().await.is_ok() {
            if !*leading.borrow() {
                break;
            }
        }
    };
    tokio::select! {
        _ = controllers => {}
        _ = lost => return Err(Error::LeaderElection("lost the Lease to another replica".into())),
    }
    // Hand the Lease over at once rather than letting it expire.
    drop(leading);
    let _ = task.await;
    Ok(())
}

type Running = futures::future::BoxFuture<'static, ()>;

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
async fn check_crds_installed(client: &Client, scopes: &[Option<String>]) -> Result<(), Error> {
    let params = kube::api::ListParams::default().limit(1);
    for scope in scopes {
        let scope = scope.as_deref();
        let checks = [
            ("EnrollmentGroup", scoped::<EnrollmentGroup>(client, scope).list_metadata(&params).await.err()),
            (
                "IndividualEnrollment",
                scoped::<IndividualEnrollment>(client, scope).list_metadata(&params).await.err(),
            ),
            (
                "ProvisioningService",
                scoped::<ProvisioningService>(client, scope).list_metadata(&params).await.err(),
            ),
            (
                "ClusterProvisioningService",
                Api::<ClusterProvisioningService>::all(client.clone()).list_metadata(&params).await.err(),
            ),
        ];
        for (kind, error) in checks {
            if let Some(error) = error {
                let where_ = scope.map(|namespace| format!(" in namespace {namespace}")).unwrap_or_default();
                let hint = list_failure_hint(&error).map(|hint| format!(" ({hint})")).unwrap_or_default();
                return Err(Error::kube(format!("listing {kind}s{where_}{hint}"), error));
            }
        }
    }
    Ok(())
}

/// What to do about a failed start-up list, by what the API server answered.
fn list_failure_hint(error: &kube::Error) -> Option<&'static str> {
    match error {
        kube::Error::Api(status) if status.code == 401 => Some(
            "the API server did not accept the operator's credentials: check the kubeconfig, or the \
             Pod's service account token",
        ),
        kube::Error::Api(status) if status.code == 403 => {
            Some("the operator may not list them: check its RBAC, the chart's ClusterRole")
        }
        kube::Error::Api(status) if status.code == 404 => {
            Some("are the CRDs installed? `dps-operator crds | kubectl apply --server-side -f -`")
        }
        _ => None,
    }
}

/// What of an object, when it changes, calls for a reconcile (see [`finalizer::trigger`]).
/// Status writes do not, nor the finalizer and claim the operator writes itself: were they to
/// trigger a reconcile, a failed create would be tried again at once, whatever the backoff.
fn reconcile_worthy<K: Resource>(object: &K) -> u64 {
    finalizer::trigger(object.meta())
}

/// What of a connection, when it changes, concerns the enrollments that use it: its spec, and
/// whether it works (not the wording of its status).
fn connection_worthy(generation: Option<i64>, ready: Option<&str>) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    (generation, ready).hash(&mut hasher);
    Some(hasher.finish())
}

/// A watch's events with every object pruned, retried with backoff when it fails.
fn pruned<K: Resource + Clone + Send + 'static>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
    events.modify(prune::<K>).default_backoff()
}

/// A controller for the enrollments of kind `K` in `api`, reconciling each on
/// [`reconcile_worthy`] changes (remembered in the context, with the object's other memories) and
/// when its check is due.
fn enrollment_controller_for<K: EnrollmentKind>(
    client: &Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
) -> Controller<K> {
    let api = scoped::<K>(client, namespace);
    let (store, writer) = reflector::store();
    let worthy = ctx.clone();
    let changes = reflector(writer, watcher(api, watcher::Config::default()).modify(prune::<K>))
        .applied_objects()
        .try_filter(move |object| {
            futures::future::ready(worthy.worth_reconciling(object, reconcile_worthy(object)))
        });
    Controller::for_stream(changes, store).reconcile_on(due_checks::<K>(ctx, namespace.map(str::to_owned)))
}

/// The enrollments of kind `K` in `namespace` (`None`: all) whose next check is due, looked for
/// every second.
fn due_checks<K: EnrollmentKind>(
    ctx: Arc<Context>,
    namespace: Option<String>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold((ctx, ticks), move |(ctx, mut ticks)| {
        let namespace = namespace.clone();
        async move {
            ticks.tick().await;
            let due = ctx.take_due(&K::kind(&()), namespace.as_deref());
            let due = due.into_iter().map(|(namespace, name)| ObjectRef::new(&name).within(&namespace));
            Some((futures::stream::iter(due), (ctx, ticks)))
        }
    })
    .flatten()
}

/// A controller for `K` on `changes` (a shared watch's) and the store they keep, reconciling only
/// on [`reconcile_worthy`] changes.
fn shared_controller<K>(changes: Changes<K>, store: Store<K>) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let worthy = |object: &K| Some(reconcile_worthy(object));
    Controller::for_stream(changes.predicate_filter(worthy, Default::default()), store)
}

fn log_outcome<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) -> futures::future::Ready<()> {
    match result {
        Ok(object) => tracing::debug!(?object, "reconciled"),
        Err(error) => tracing::debug!(%error, "reconcile failed"),
    }
    futures::future::ready(())
}

/// The shared watches an enrollment controller is triggered by.
struct Triggers {
    secrets: Changes<SecretMetadata>,
    services: Changes<ProvisioningService>,
    cluster_services: Changes<ClusterProvisioningService>,
    namespaces: Changes<NamespaceMetadata>,
}

fn enrollment_controller<K: EnrollmentKind>(
    client: &Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    triggers: Triggers,
) -> (Running, Running) {
    let controller = enrollment_controller_for::<K>(client, namespace, ctx.clone());
    let store = controller.store();
    let synced = store.clone();
    let (by_secret, by_service, by_cluster_service, by_namespace) =
        (store.clone(), store.clone(), store.clone(), store);
    let own_writes = ctx.clone();
    let running = controller
        .watches_stream(triggers.secrets, move |secret| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            let version = secret.metadata.resource_version.as_deref();
            if own_writes.caches.secrets.is_own_write(
                namespace.as_deref().unwrap_or_default(),
                &name,
                version,
            ) {
                return Vec::new();
            }
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
        .watches_stream(
            triggers.services.predicate_filter(
                |s: &ProvisioningService| {
                    connection_worthy(s.meta().generation, ready_status(s.status.as_ref()))
                },
                Default::default(),
            ),
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
        .watches_stream(
            triggers.cluster_services.predicate_filter(
                |s: &ClusterProvisioningService| {
                    connection_worthy(s.meta().generation, ready_status(s.status.as_ref()))
                },
                Default::default(),
            ),
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
        .watches_stream(triggers.namespaces, move |namespace| {
            let name = namespace.name_any();
            by_namespace
                .state()
                .into_iter()
                .filter(|e| e.namespace().as_deref() == Some(name.as_str()))
                .filter(|e| e.settings().service_ref.kind == Some(ServiceKind::ClusterProvisioningService))
                .map(|e| ObjectRef::from_obj(&*e))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles))
        .graceful_shutdown_on(ctx.health.stopped())
        .run(enrollment::reconcile::<K>, enrollment::error_policy::<K>, ctx)
        .for_each(log_outcome);
    (wait_until_synced(synced), running.boxed())
}

/// The status of a connection's `Ready` condition.
fn ready_status(status: Option<&crate::api::ProvisioningServiceStatus>) -> Option<&str> {
    status?.conditions.iter().find(|c| c.type_ == super::conditions::READY).map(|c| c.status.as_str())
}

fn wait_until_synced<K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static>(
    store: Store<K>,
) -> Running {
    async move {
        // The readiness future is not always woken when the first list completes after it was
        // first polled; polling it afresh now and then sees the change.
        while tokio::time::timeout(std::time::Duration::from_millis(250), store.wait_until_ready())
            .await
            .is_err()
        {}
    }
    .boxed()
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

fn provisioning_service_controller(
    services: Changes<ProvisioningService>,
    store: Store<ProvisioningService>,
    secrets: Changes<SecretMetadata>,
    ctx: Arc<Context>,
) -> (Running, Running) {
    let synced = store.clone();
    let controller = shared_controller(services, store.clone());
    let running = controller
        .watches_stream(secrets, move |secret| {
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
        .graceful_shutdown_on(ctx.health.stopped())
        .run(provisioning::reconcile_namespaced, provisioning::error_policy, ctx)
        .for_each(log_outcome);
    (wait_until_synced(synced), running.boxed())
}

fn cluster_provisioning_service_controller(
    services: Changes<ClusterProvisioningService>,
    store: Store<ClusterProvisioningService>,
    secrets: Changes<SecretMetadata>,
    operator_namespace: String,
    ctx: Arc<Context>,
) -> (Running, Running) {
    let synced = store.clone();
    let controller = shared_controller(services, store.clone());
    let running = controller
        .watches_stream(secrets, move |secret| {
            if secret.namespace().as_deref() != Some(operator_namespace.as_str()) {
                return Vec::new();
            }
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|s| connection_secrets(&s.spec.connection).contains(&name.as_str()))
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(ctx.health.stopped())
        .run(provisioning::reconcile_cluster, provisioning::error_policy, ctx)
        .for_each(log_outcome);
    (wait_until_synced(synced), running.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_up_list_points_at_its_cause() {
        let answered = |code| kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }));
        let hint = |code| list_failure_hint(&answered(code)).unwrap_or("none");
        assert!(hint(401).contains("credentials"));
        assert!(hint(403).contains("RBAC"));
        assert!(hint(404).contains("CRDs installed"));
        assert_eq!(hint(500), "none");
    }
}
