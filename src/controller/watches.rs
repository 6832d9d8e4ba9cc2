//! One watch per kind, shared by every controller that needs it: each object is listed, decoded
//! and cached once, and every subscriber receives each change, deletions included. Reconciles
//! read connections, namespaces' labels and Secrets' versions from these caches instead of
//! asking the API server every pass.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
};

use futures::{FutureExt, SinkExt, Stream, StreamExt, channel::mpsc, future::BoxFuture, stream::BoxStream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};

use crate::api::{ClusterProvisioningService, ProvisioningService};

/// Secrets are watched as metadata only: which Secret changed is all a trigger needs, and the
/// operator neither receives nor holds the content of Secrets it does not use.
pub type SecretMetadata = PartialObjectMeta<Secret>;

/// A namespace's labels are all the operator reads of it.
pub type NamespaceMetadata = PartialObjectMeta<Namespace>;

/// The changes of `K` one subscriber receives: every object applied or deleted.
pub type Changes<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// How many changes wait for a subscriber that is busy before the watch waits for it.
const BUFFER: usize = 256;

/// A watch of `K` whose changes go to every subscriber.
pub struct Shared<K> {
    senders: Vec<mpsc::Sender<K>>,
}

impl<K> Default for Shared<K> {
    fn default() -> Self {
        Self { senders: Vec::new() }
    }
}

impl<K: Clone + Send + 'static> Shared<K> {
    pub fn subscribe(&mut self) -> Changes<K> {
        let (sender, receiver) = mpsc::channel(BUFFER);
        self.senders.push(sender);
        receiver.map(Ok::<K, watcher::Error>).boxed()
    }

    /// Runs the watch: each event is first shown to `observe` (which keeps the cache), then each
    /// object it touched is sent to every subscriber.
    pub fn run(
        self,
        what: &'static str,
        events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
        mut observe: impl FnMut(&watcher::Event<K>) + Send + 'static,
    ) -> BoxFuture<'static, ()> {
        let mut senders = self.senders;
        async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(
                            error = super::error::watch_failure(&error),
                            what,
                            "watch failed; retrying with backoff"
                        );
                        continue;
                    }
                };
                observe(&event);
                let object = match event {
                    watcher::Event::Apply(object)
                    | watcher::Event::InitApply(object)
                    | watcher::Event::Delete(object) => object,
                    watcher::Event::Init | watcher::Event::InitDone => continue,
                };
                for sender in &mut senders {
                    // A subscriber that stopped (its controller shut down) needs nothing more.
                    let _ = sender.send(object.clone()).await;
                }
            }
        }
        .boxed()
    }
}

/// Keeps `writer`'s store as the watch's events say.
pub fn keep<K>(mut writer: Writer<K>) -> impl FnMut(&watcher::Event<K>) + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    move |event| writer.apply_watcher_event(event)
}

/// The resourceVersion of every Secret in the watched namespaces, by namespace and name: what a
/// reconcile needs to know whether a Secret exists, and whether it changed since it was read.
/// It also knows which Secrets this process created, so that the watch event of its own create
/// is no reason to reconcile again.
#[derive(Default)]
pub struct SecretVersions {
    versions: RwLock<HashMap<Box<str>, Known>>,
    /// Secrets this process is creating: until the create answers, any event of one is ours.
    creating: Mutex<HashSet<Box<str>>>,
    /// The watches (by scope) whose first list is complete.
    listed: RwLock<HashSet<Option<String>>>,
    /// How many watches there are; until all are listed, nothing is known.
    watches: usize,
}

/// A Secret's version as the watch (or this process's create) last saw it.
#[derive(Debug)]
struct Known {
    version: Box<str>,
    /// This process created the Secret at `version`, and nobody changed it since.
    ours: bool,
}

fn secret_key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

impl SecretVersions {
    pub fn new(watches: usize) -> Self {
        Self { watches, ..Self::default() }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Known>> {
        self.versions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, Known>> {
        self.versions.write().unwrap_or_else(|e| e.into_inner())
    }

    fn creating(&self) -> std::sync::MutexGuard<'_, HashSet<Box<str>>> {
        self.creating.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The version of Secret `namespace/name` the watch last saw; `None` when it does not know
    /// (not listed yet) or the Secret does not exist.
    pub fn version(&self, namespace: &str, name: &str) -> Option<Box<str>> {
        self.read().get(&secret_key(namespace, name)).map(|known| known.version.clone())
    }

    /// Whether the watches have listed every Secret and none is `namespace/name`.
    pub fn known_absent(&self, namespace: &str, name: &str) -> bool {
        let listed = self.listed.read().unwrap_or_else(|e| e.into_inner()).len();
        self.watches > 0 && listed >= self.watches && self.version(namespace, name).is_none()
    }

    /// This process is creating Secret `namespace/name`.
    pub fn creating_own(&self, namespace: &str, name: &str) {
        self.creating().insert(secret_key(namespace, name));
    }

    /// This process created Secret `namespace/name` at `version`.
    pub fn created_own(&self, namespace: &str, name: &str, version: &str) {
        let key = secret_key(namespace, name);
        self.creating().remove(&key);
        let mut versions = self.write();
        match versions.get_mut(&key) {
            // The watch saw it first, at this version or a later one (someone's edit).
            Some(known) => known.ours = &*known.version == version,
            None => {
                versions.insert(key, Known { version: version.into(), ours: true });
            }
        }
    }

    /// Secret `namespace/name` is not (or no longer) this process's own create.
    pub fn not_own(&self, namespace: &str, name: &str) {
        let key = secret_key(namespace, name);
        self.creating().remove(&key);
        if let Some(known) = self.write().get_mut(&key) {
            known.ours = false;
        }
    }

    /// The version of Secret `namespace/name` when this process created it and nobody changed it.
    pub fn own_version(&self, namespace: &str, name: &str) -> Option<Box<str>> {
        self.read()
            .get(&secret_key(namespace, name))
            .filter(|known| known.ours)
            .map(|known| known.version.clone())
    }

    /// Whether a watch event of Secret `namespace/name` at `version` shows only this process's
    /// own create; a later version (the user edited the keys) is news.
    pub fn is_own_write(&self, namespace: &str, name: &str, version: Option<&str>) -> bool {
        let key = secret_key(namespace, name);
        self.creating().contains(&key)
            || self.read().get(&key).is_some_and(|known| known.ours && Some(&*known.version) == version)
    }

    /// Keeps the versions as the watch of `scope` (a namespace, or all) says. A relist replaces
    /// what that watch had reported, so a Secret deleted while the watch was down is forgotten.
    pub fn observer(
        self: &Arc<Self>,
        scope: Option<String>,
    ) -> impl FnMut(&watcher::Event<SecretMetadata>) + Send + 'static {
        let versions = self.clone();
        let mut relisted: Option<HashMap<Box<str>, Known>> = None;
        move |event| {
            let entry = |secret: &SecretMetadata| {
                let key = secret_key(&secret.namespace().unwrap_or_default(), &secret.name_any());
                (key, secret.resource_version().unwrap_or_default().into_boxed_str())
            };
            // Still ours when the watch shows the version this process created.
            let seen = |all: &HashMap<Box<str>, Known>, key: &str, version: Box<str>| {
                let ours = all.get(key).is_some_and(|known| known.ours && known.version == version);
                Known { version, ours }
            };
            match event {
                watcher::Event::Init => relisted = Some(HashMap::new()),
                watcher::Event::InitApply(secret) => {
                    let (key, version) = entry(secret);
                    let known = seen(&versions.read(), &key, version);
                    relisted.get_or_insert_default().insert(key, known);
                }
                watcher::Event::InitDone => {
                    let fresh = relisted.take().unwrap_or_default();
                    let mut all = versions.write();
                    let prefix = scope.as_ref().map(|namespace| format!("{namespace}/"));
                    all.retain(|key, _| {
                        prefix.as_ref().is_some_and(|prefix| !key.starts_with(prefix.as_str()))
                    });
                    all.extend(fresh);
                    drop(all);
                    versions.listed.write().unwrap_or_else(|e| e.into_inner()).insert(scope.clone());
                }
                watcher::Event::Apply(secret) => {
                    let (key, version) = entry(secret);
                    let mut all = versions.write();
                    let known = seen(&all, &key, version);
                    all.insert(key, known);
                }
                watcher::Event::Delete(secret) => {
                    let (key, _) = entry(secret);
                    versions.write().remove(&key);
                }
            }
        }
    }
}

/// What the shared watches cache, for reconciles to read instead of the API server. Empty (as in
/// a context made by hand) means everything is read from the API server.
#[derive(Default)]
pub struct Caches {
    /// One store per watched scope.
    pub provisioning_services: Vec<Store<ProvisioningService>>,
    pub cluster_provisioning_services: Option<Store<ClusterProvisioningService>>,
    pub namespaces: Option<Store<NamespaceMetadata>>,
    pub secrets: Arc<SecretVersions>,
}

impl Caches {
    pub fn provisioning_service(&self, namespace: &str, name: &str) -> Option<Arc<ProvisioningService>> {
        let key = ObjectRef::new(name).within(namespace);
        self.provisioning_services.iter().find_map(|store| store.get(&key))
    }

    pub fn cluster_provisioning_service(&self, name: &str) -> Option<Arc<ClusterProvisioningService>> {
        self.cluster_provisioning_services.as_ref()?.get(&ObjectRef::new(name))
    }

    pub fn namespace(&self, name: &str) -> Option<Arc<NamespaceMetadata>> {
        self.namespaces.as_ref()?.get(&ObjectRef::new(name))
    }
}

/// Drops what the operator never reads before an object enters the cache: its managed fields
/// (every status write adds to them) and the copy of the manifest `kubectl apply` keeps.
pub fn prune<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(namespace: &str, name: &str, version: &str) -> SecretMetadata {
        let mut secret =
            SecretMetadata { types: None, metadata: Default::default(), _phantom: Default::default() };
        secret.metadata.namespace = Some(namespace.into());
        secret.metadata.name = Some(name.into());
        secret.metadata.resource_version = Some(version.into());
        secret
    }

    #[test]
    fn secret_versions_follow_the_watch_and_know_nothing_before_the_first_list() {
        let versions = Arc::new(SecretVersions::new(1));
        let mut observe = versions.observer(Some("iot".into()));
        observe(&watcher::Event::Init);
        observe(&watcher::Event::InitApply(secret("iot", "keys", "1")));
        assert!(!versions.known_absent("iot", "other"), "not listed yet: unknown, not absent");
        observe(&watcher::Event::InitDone);
        assert_eq!(versions.version("iot", "keys").as_deref(), Some("1"));
        assert!(versions.known_absent("iot", "other"));
        observe(&watcher::Event::Apply(secret("iot", "keys", "2")));
        assert_eq!(versions.version("iot", "keys").as_deref(), Some("2"));
        observe(&watcher::Event::Delete(secret("iot", "keys", "3")));
        assert!(versions.known_absent("iot", "keys"));
    }

    #[test]
    fn the_watch_event_of_an_own_create_is_known_as_ours_until_someone_changes_the_secret() {
        let versions = Arc::new(SecretVersions::new(1));
        let mut observe = versions.observer(None);
        observe(&watcher::Event::Init);
        observe(&watcher::Event::InitDone);
        versions.creating_own("iot", "keys");
        assert!(versions.is_own_write("iot", "keys", Some("7")), "being created: any event is ours");
        // The watch shows the create before its answer arrives.
        observe(&watcher::Event::Apply(secret("iot", "keys", "7")));
        versions.created_own("iot", "keys", "7");
        assert!(versions.is_own_write("iot", "keys", Some("7")));
        assert_eq!(versions.own_version("iot", "keys").as_deref(), Some("7"));
        // A relist keeps it ours while the version is the same.
        observe(&watcher::Event::Init);
        observe(&watcher::Event::InitApply(secret("iot", "keys", "7")));
        observe(&watcher::Event::InitDone);
        assert!(versions.is_own_write("iot", "keys", Some("7")));
        // The user edits the keys.
        observe(&watcher::Event::Apply(secret("iot", "keys", "8")));
        assert!(!versions.is_own_write("iot", "keys", Some("8")));
        assert_eq!(versions.own_version("iot", "keys"), None);
    }

    #[test]
    fn a_create_answered_after_someone_changed_the_secret_is_not_ours() {
        let versions = Arc::new(SecretVersions::new(1));
        let mut observe = versions.observer(None);
        versions.creating_own("iot", "keys");
        // The user replaces the Secret after the create and before its answer arrives.
        observe(&watcher::Event::Apply(secret("iot", "keys", "9")));
        versions.created_own("iot", "keys", "7");
        assert!(!versions.is_own_write("iot", "keys", Some("9")));
        versions.not_own("iot", "keys");
        assert!(!versions.is_own_write("iot", "keys", Some("7")));
    }

    #[test]
    fn a_relist_forgets_secrets_deleted_meanwhile_in_its_own_scope_only() {
        let versions = Arc::new(SecretVersions::new(2));
        let mut iot = versions.observer(Some("iot".into()));
        let mut ops = versions.observer(Some("ops".into()));
        for (observe, namespace) in [(&mut iot, "iot"), (&mut ops, "ops")] {
            observe(&watcher::Event::Init);
            observe(&watcher::Event::InitApply(secret(namespace, "a", "1")));
            observe(&watcher::Event::InitDone);
        }
        // The iot watch relists after "a" was deleted there.
        iot(&watcher::Event::Init);
        iot(&watcher::Event::InitApply(secret("iot", "b", "5")));
        iot(&watcher::Event::InitDone);
        assert!(versions.known_absent("iot", "a"));
        assert_eq!(versions.version("iot", "b").as_deref(), Some("5"));
        assert_eq!(versions.version("ops", "a").as_deref(), Some("1"));
    }
}
