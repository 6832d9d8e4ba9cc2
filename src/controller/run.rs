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

use super::{
    Error,
    config::Config,
    context::Context,
    enrollment, enrollment_set,
    finalizer::{self, claim_of},
    kinds::EnrollmentKind,
    leadership::{LeaderElection, Leadership},
    names::resource_name,
    ownership::{ClaimKey, Owner, Owners, holds_claim, recorded_claim},
    provisioning,
    secrets::{
        CERT_MANAGER_CERTIFICATE_ANNOTATION, load_digest_key, referenced_certificates, referenced_secrets,
    },
    selector::LabelSelector,
    storage_versions,
    watches::{Caches, Changes, NamespaceMetadata, SecretMetadata, SecretVersions, Shared, keep, prune},
};
use crate::api::{
    ClusterProvisioningService, ConnectionSpec, EnrollmentGroup, IndividualEnrollment,
    IndividualEnrollmentSet, ProvisioningService, ServiceKind,
};
use crate::http::Health;

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
    let selector = match &config.watch_label_selector {
        Some(selector) => Some(check_selector(&client, selector).await?),
        None => None,
    };
    let mut ctx = Context::new(client.clone(), config, health.clone());
    ctx.selector = selector;
    ctx.namespaces = scopes.iter().flatten().cloned().collect();
    ctx.digest_key = load_digest_key(&client, &ctx.config.operator_namespace).await?;
    // With leader election, a standby waits for the Lease (healthy, ready to take over), and the
    // leader runs the controllers until it stops or loses the Lease.
    let leadership = match leader_election {
        None => None,
        Some(election) => match Leadership::acquire(&client, election, &health).await? {
            Some(leadership) => Some(leadership),
            None => return Ok(()),
        },
    };
    // Who owns which enrollment, as the statuses record it, before any reconcile claims anew.
    for scope in &scopes {
        let seeded = async {
            seed_owners(&ctx.owners, &scoped::<EnrollmentGroup>(&client, scope.as_deref())).await?;
            seed_owners(&ctx.owners, &scoped::<IndividualEnrollment>(&client, scope.as_deref())).await
        };
        seeded.await.map_err(|e| Error::kube("listing the enrollments to learn who owns which", e))?;
    }

    let sets = sets_installed(&client).await;
    let (controllers, ready) = start(&client, ctx, &scopes, sets);
    let controllers = with_storage_migration(controllers, &client, &scopes);
    let readiness = health.clone();
    tokio::spawn(async move {
        join_all(ready).await;
        readiness.set_ready(true);
    });
    match leadership {
        Some(leadership) => leadership.run(controllers).await,
        None => {
            controllers.await;
            Ok(())
        }
    }
}

/// Beside the controllers, the leader of an operator that watches every namespace migrates the
/// stored objects to the storage version, once (a namespace-scoped one cannot see them all).
fn with_storage_migration(controllers: Running, client: &Client, scopes: &[Option<String>]) -> Running {
    if scopes != [None] {
        return controllers;
    }
    let client = client.clone();
    let migration = async move {
        if let Err(error) = storage_versions::migrate(&client).await {
            tracing::warn!(%error, "stored objects were not all migrated; the next leader tries again");
        }
    };
    async move {
        futures::join!(controllers, migration);
    }
    .boxed()
}

/// Starts the controllers and the shared watches they are triggered by. Answers them, running
/// until shutdown, and, for each controller, when its store has listed everything once.
fn start(
    client: &Client,
    mut ctx: Context,
    scopes: &[Option<String>],
    sets: bool,
) -> (Running, Vec<Running>) {
    let mut shared = SharedWatches::new(scopes, &ctx.config.operator_namespace);
    ctx.caches = shared.caches();
    let ctx = Arc::new(ctx);
    let mut controllers = Vec::new();
    for (index, scope) in scopes.iter().enumerate() {
        let mut triggers = || Triggers {
            secrets: shared.secrets[index].subscribe(),
            services: shared.services[index].subscribe(),
            cluster_services: shared.cluster_services.subscribe(),
            namespaces: shared.namespaces.subscribe(),
        };
        controllers.push(enrollment_controller::<EnrollmentGroup>(
            client,
            scope.as_deref(),
            ctx.clone(),
            triggers(),
        ));
        controllers.push(enrollment_controller::<IndividualEnrollment>(
            client,
            scope.as_deref(),
            ctx.clone(),
            triggers(),
        ));
        if sets {
            controllers.push(enrollment_set::controller(
                client,
                scope.as_deref(),
                ctx.clone(),
                shared.secrets[index].subscribe(),
                shared.services[index].subscribe(),
            ));
        }
        controllers.push(provisioning_service_controller(
            shared.services[index].subscribe(),
            shared.service_stores[index].clone(),
            shared.secrets[index].subscribe(),
            ctx.clone(),
        ));
    }
    controllers.push(cluster_provisioning_service_controller(
        shared.cluster_services.subscribe(),
        shared.cluster_service_store.clone(),
        shared.secrets[shared.covering].subscribe(),
        ctx.config.operator_namespace.clone(),
        ctx.clone(),
    ));
    let watches = shared.run(client, scopes);
    let (ready, controllers): (Vec<_>, Vec<_>) = controllers.into_iter().unzip();
    // The watches never end; the controllers end on shutdown, and the watches with them.
    let running = async move {
        tokio::select! {
            _ = join_all(controllers) => {}
            _ = join_all(watches) => {}
        }
    };
    (running.boxed(), ready)
}

/// One watch per kind and scope, shared by the controllers, with the stores they keep.
struct SharedWatches {
    /// The scopes, and the operator's namespace when none covers it.
    secret_scopes: Vec<Option<String>>,
    /// The scope of the Secrets of ClusterProvisioningServices, in the operator's namespace.
    covering: usize,
    secret_versions: Arc<SecretVersions>,
    secrets: Vec<Shared<SecretMetadata>>,
    services: Vec<Shared<ProvisioningService>>,
    service_stores: Vec<Store<ProvisioningService>>,
    service_writers: Vec<reflector::store::Writer<ProvisioningService>>,
    cluster_services: Shared<ClusterProvisioningService>,
    cluster_service_store: Store<ClusterProvisioningService>,
    cluster_service_writer: reflector::store::Writer<ClusterProvisioningService>,
    namespaces: Shared<NamespaceMetadata>,
    namespace_store: Store<NamespaceMetadata>,
    namespace_writer: reflector::store::Writer<NamespaceMetadata>,
}

impl SharedWatches {
    fn new(scopes: &[Option<String>], operator_namespace: &str) -> Self {
        // A ClusterProvisioningService's Secrets are in the operator's namespace, watched on its
        // own when no scope covers it.
        let mut secret_scopes = scopes.to_vec();
        let covering = scopes
            .iter()
            .position(|scope| scope.as_deref().is_none_or(|namespace| namespace == operator_namespace))
            .unwrap_or_else(|| {
                secret_scopes.push(Some(operator_namespace.to_owned()));
                secret_scopes.len() - 1
            });
        let (service_stores, service_writers) = scopes.iter().map(|_| reflector::store()).unzip();
        let (cluster_service_store, cluster_service_writer) = reflector::store();
        let (namespace_store, namespace_writer) = reflector::store();
        Self {
            secret_versions: Arc::new(SecretVersions::new(secret_scopes.len())),
            secrets: secret_scopes.iter().map(|_| Shared::default()).collect(),
            services: scopes.iter().map(|_| Shared::default()).collect(),
            secret_scopes,
            covering,
            service_stores,
            service_writers,
            cluster_services: Shared::default(),
            cluster_service_store,
            cluster_service_writer,
            namespaces: Shared::default(),
            namespace_store,
            namespace_writer,
        }
    }

    fn caches(&self) -> Caches {
        Caches {
            provisioning_services: self.service_stores.clone(),
            cluster_provisioning_services: Some(self.cluster_service_store.clone()),
            namespaces: Some(self.namespace_store.clone()),
            secrets: self.secret_versions.clone(),
        }
    }

    /// Starts the watches, once every subscriber has subscribed.
    fn run(self, client: &Client, scopes: &[Option<String>]) -> Vec<Running> {
        let mut watches = Vec::new();
        for ((scope, shared), writer) in scopes.iter().zip(self.services).zip(self.service_writers) {
            let api = scoped::<ProvisioningService>(client, scope.as_deref());
            let events = watcher(api, watcher::Config::default());
            watches.push(shared.run("ProvisioningServices", pruned(events), keep(writer)));
        }
        for (scope, shared) in self.secret_scopes.iter().zip(self.secrets) {
            let events =
                watcher(scoped::<SecretMetadata>(client, scope.as_deref()), watcher::Config::default());
            watches.push(shared.run("Secrets", pruned(events), self.secret_versions.observer(scope.clone())));
        }
        let events =
            watcher(Api::<ClusterProvisioningService>::all(client.clone()), watcher::Config::default());
        let writer = keep(self.cluster_service_writer);
        watches.push(self.cluster_services.run("ClusterProvisioningServices", pruned(events), writer));
        let events = watcher(Api::<NamespaceMetadata>::all(client.clone()), watcher::Config::default());
        watches.push(self.namespaces.run("Namespaces", pruned(events), keep(self.namespace_writer)));
        watches
    }
}

type Running = futures::future::BoxFuture<'static, ()>;

/// `K` in `namespace`, or in all namespaces.
pub(super) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
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

/// Whether the IndividualEnrollmentSet CRD is installed. An operator upgraded before its CRDs
/// (Helm does not upgrade a chart's CRDs) runs without sets and says what to apply.
async fn sets_installed(client: &Client) -> bool {
    let params = kube::api::ListParams::default().limit(1);
    match Api::<IndividualEnrollmentSet>::all(client.clone()).list_metadata(&params).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::warn!(
                "the IndividualEnrollmentSet CRD is not installed, so sets are not reconciled: apply the CRDs of \
                 this release (kubectl apply --server-side --force-conflicts -f charts/dps-operator/crds/) and \
                 restart the operator"
            );
            false
        }
        _ => true,
    }
}

/// The watch label selector, parsed; fails, naming it, when it is not one (here, or for the API
/// server).
async fn check_selector(client: &Client, selector: &str) -> Result<LabelSelector, Error> {
    let invalid = |why: String| Error::InvalidOption(format!("--watch-label-selector {selector:?}: {why}"));
    let parsed = selector.parse::<LabelSelector>().map_err(invalid)?;
    let params = kube::api::ListParams::default().labels(selector).limit(1);
    match Api::<EnrollmentGroup>::all(client.clone()).list_metadata(&params).await {
        Err(kube::Error::Api(status)) if status.code == 400 => Err(invalid(status.message)),
        // Other failures (RBAC in a namespaced install) are the CRD check's to report.
        _ => Ok(parsed),
    }
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
        kube::Error::Api(status) if status.code == 404 => Some(
            "are the CRDs of this release installed? `kubectl apply --server-side --force-conflicts -f \
                 charts/dps-operator/crds/` (or `dps-operator crds | kubectl apply --server-side --force-conflicts -f -`)",
        ),
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
    let mut config = watcher::Config::default();
    if let Some(selector) = &ctx.config.watch_label_selector {
        config = config.labels(selector);
    }
    // An object gone from the watch (deleted, or relabelled to another shard) is forgotten.
    let forgetful = ctx.clone();
    let events = watcher(api, config).modify(prune::<K>).inspect_ok(move |event| {
        if let watcher::Event::Delete(object) = event {
            forgetful.memory.forget(object);
        }
    });
    let changes = reflector(writer, events).applied_objects().try_filter(move |object| {
        futures::future::ready(worthy.memory.worth_reconciling(object, reconcile_worthy(object)))
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
            let due = ctx.memory.take_due(&K::kind(&()), namespace.as_deref());
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
    let (synced, by_secret, by_service, by_cluster_service, by_namespace) =
        (store.clone(), store.clone(), store.clone(), store.clone(), store);
    let own_writes = ctx.caches.secrets.clone();
    let services = triggers.services.predicate_filter(
        |s: &ProvisioningService| connection_worthy(s.meta().generation, ready_status(s.status.as_ref())),
        Default::default(),
    );
    let cluster_services = triggers.cluster_services.predicate_filter(
        |s: &ClusterProvisioningService| {
            connection_worthy(s.meta().generation, ready_status(s.status.as_ref()))
        },
        Default::default(),
    );
    let running = controller
        .watches_stream(triggers.secrets, move |secret| users_of_secret(&by_secret, &own_writes, &secret))
        .watches_stream(services, move |service| {
            using(&by_service, ServiceKind::ProvisioningService, &service.name_any(), service.namespace())
        })
        .watches_stream(cluster_services, move |service| {
            using(&by_cluster_service, ServiceKind::ClusterProvisioningService, &service.name_any(), None)
        })
        // A namespace's labels decide which ClusterProvisioningServices its enrollments may use.
        .watches_stream(triggers.namespaces, move |namespace| {
            let in_namespace = |e: &K| e.namespace().as_deref() == Some(namespace.name_any().as_str());
            let uses_cluster =
                |e: &K| e.settings().service_ref.kind == Some(ServiceKind::ClusterProvisioningService);
            matching(&by_namespace, |e| in_namespace(e) && uses_cluster(e))
        })
        .with_config(controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles))
        .graceful_shutdown_on(ctx.health.stopped())
        .run(enrollment::reconcile::<K>, enrollment::error_policy::<K>, ctx)
        .for_each(log_outcome);
    (wait_until_synced(synced), running.boxed())
}

/// The objects in `store` that `wanted` picks.
fn matching<K: EnrollmentKind>(store: &Store<K>, wanted: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>> {
    store.state().into_iter().filter(|e| wanted(e)).map(|e| ObjectRef::from_obj(&*e)).collect()
}

/// The enrollments in `store` that reference `secret`; none when the change is this process's
/// own write.
fn users_of_secret<K: EnrollmentKind>(
    store: &Store<K>,
    own_writes: &SecretVersions,
    secret: &SecretMetadata,
) -> Vec<ObjectRef<K>> {
    let (namespace, name) = (secret.namespace(), secret.name_any());
    let version = secret.metadata.resource_version.as_deref();
    if own_writes.is_own_write(namespace.as_deref().unwrap_or_default(), &name, version) {
        return Vec::new();
    }
    let issued_for = secret.annotations().get(CERT_MANAGER_CERTIFICATE_ANNOTATION);
    matching(store, |e| {
        e.namespace() == namespace
            && e.attestation_input().is_ok_and(|input| {
                referenced_secrets(input, e.settings()).contains(&name)
                    || issued_for.is_some_and(|c| referenced_certificates(input).contains(&c.as_str()))
            })
    })
}

/// The enrollments in `store` that use the connection of `kind` named `name` (in `namespace`, for
/// a namespaced one).
fn using<K: EnrollmentKind>(
    store: &Store<K>,
    kind: ServiceKind,
    name: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<K>> {
    matching(store, |e| {
        let reference = &e.settings().service_ref;
        reference.kind.unwrap_or_default() == kind
            && reference.name == name
            && (kind == ServiceKind::ClusterProvisioningService || e.namespace() == namespace)
    })
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

/// Rebuilds the register of owners from the claims the statuses of `K` in `api` record, so that
/// a restart keeps every enrollment with the resource that owned it.
async fn seed_owners<K: EnrollmentKind>(owners: &Owners, api: &Api<K>) -> Result<(), kube::Error> {
    let mut params = kube::api::ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for object in &page.items {
            let status = object.current_status().map(K::enrollment_status).cloned().unwrap_or_default();
            let uid = object.meta().uid.clone().unwrap_or_default();
            let status = recorded_claim(status, claim_of(object.meta()), &uid);
            let (Some(host), true) = (&status.claimed_host, holds_claim(&status)) else { continue };
            let key =
                ClaimKey::new(host, <K::Record as crate::dps::Enrollment>::COLLECTION, &object.dps_id());
            let owner = Owner {
                uid: uid.into(),
                name: resource_name(object).into(),
                confirmed: status.claimed == Some(true),
                created: object.meta().creation_timestamp.as_ref().map(|t| t.0),
            };
            owners.seed(key, owner);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
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
        assert!(hint(404).contains("CRDs of this release installed"));
        assert_eq!(hint(500), "none");
    }
}
