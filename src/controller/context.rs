//! What every reconcile shares: the Kubernetes client, the DPS connections, the event recorder,
//! per-object backoff, and the per-connection snapshots drift checks read.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::TryStreamExt;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::time::Instant;

use super::{
    connection::{Connection, Connections},
    events::{BulkCreates, Recorder},
    finalizer::claim_of,
    kinds::EnrollmentKind,
    ownership::{ClaimKey, Owner, Owners, holds_claim, recorded_claim},
};
use crate::dps;

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "dps-operator";

/// Settings of the operator process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Drift check interval when neither the enrollment nor its connection sets one.
    pub drift_check_interval: Duration,
    /// How long before a certificate expires `CertificateExpiringSoon` turns True.
    pub certificate_expiry_warning: Duration,
    /// Where ClusterProvisioningService Secrets live.
    pub operator_namespace: String,
    /// How long one DPS request may take.
    pub dps_timeout: Duration,
    /// PEM certificates every connection trusts besides the system roots and its own caBundle.
    pub extra_ca_certificates: Option<String>,
    /// DPS host names to connect to at these addresses instead of what DNS says.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// The Azure workload identity environment (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`), read once at start.
    pub azure_environment: HashMap<String, String>,
    /// How many enrollments of each kind are reconciled at once (0: no limit).
    pub max_concurrent_reconciles: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            drift_check_interval: Duration::from_secs(600),
            certificate_expiry_warning: Duration::from_secs(30 * 24 * 3600),
            operator_namespace: "dps-operator".into(),
            dps_timeout: dps::ClientConfig::DEFAULT_TIMEOUT,
            extra_ca_certificates: None,
            resolve: Vec::new(),
            azure_environment: HashMap::new(),
            max_concurrent_reconciles: 16,
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub health: Arc<crate::http::Health>,
    pub connections: Connections,
    /// Which resource owns each enrollment.
    pub owners: Owners,
    /// The namespaces the operator manages; empty: all.
    pub namespaces: Vec<String>,
    /// The key of the status digests (`run` loads the operator's own; random until then).
    pub digest_key: super::secrets::DigestKey,
    /// What the shared watches cache (`run` fills it in; empty: everything is read anew).
    pub caches: super::watches::Caches,
    recorder: Arc<Recorder>,
    bulk_creates: BulkCreates,
    /// What is remembered of each object, by [`object_key`]: one entry per resource.
    memories: Mutex<HashMap<Box<str>, Memory>>,
    snapshots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Snapshot>>>>>,
}

/// What is remembered of one object between its reconciles.
#[derive(Default)]
struct Memory {
    /// Failed reconciles in a row.
    failures: u32,
    /// When it was last compared with DPS.
    checked: Option<Instant>,
    /// When its next check is due (kept here rather than in the controller's queue, where each
    /// waiting object costs some 700 bytes).
    due: Option<Instant>,
    /// The hash of what of it calls for a reconcile when it changes, as last seen.
    trigger: Option<u64>,
    /// The resourceVersion this process's last write of it produced.
    written: Option<Box<str>>,
    /// Whether its last pass found it Ready, as the `resources` metric counts it.
    ready: Option<bool>,
}

/// The enrollments of one kind on one connection, as a query read them.
#[derive(Clone)]
pub struct Snapshot {
    taken: Instant,
    /// Each record's JSON by lower-case id: compact text, parsed only when a check reads it
    /// (a tree of JSON values takes several times the memory, at 10,000 enrollments tens of MiB).
    pub records: Arc<HashMap<String, Box<str>>>,
}

impl Context {
    pub fn new(client: kube::Client, config: Config, health: Arc<crate::http::Health>) -> Self {
        let recorder =
            Arc::new(Recorder::new(client.clone(), "dps-operator", std::env::var("POD_NAME").ok()));
        Self {
            recorder: recorder.clone(),
            bulk_creates: BulkCreates::new(recorder),
            connections: Connections::new(&config, health.clone()),
            owners: Owners::default(),
            namespaces: Vec::new(),
            digest_key: super::secrets::DigestKey::random(),
            caches: Default::default(),
            health,
            client,
            config,
            memories: Mutex::default(),
            snapshots: Mutex::default(),
        }
    }

    /// Publishes an event about `object`; failures to publish are logged, never fatal.
    pub async fn event<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        if let Err(error) = self.recorder.publish(&object.object_ref(&()), warning, reason, note).await {
            tracing::warn!(error = super::error::kube_failure(&error), reason, "could not publish an event");
        }
    }

    /// Announces, with the others created in bulk on `connection` about the same time, that
    /// `what` `id` was created.
    pub fn announce_bulk_create(&self, connection: &Connection, what: &'static str, id: &str) {
        self.bulk_creates.add(&connection.reference, what, &connection.host, id);
    }

    fn memories(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Memory>> {
        self.memories.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes what is remembered of `key`.
    fn remember<T>(&self, key: &str, change: impl FnOnce(&mut Memory) -> T) -> T {
        let mut memories = self.memories();
        match memories.get_mut(key) {
            Some(memory) => change(memory),
            None => change(memories.entry(key.into()).or_default()),
        }
    }

    /// Records a failure of `key` and returns how many in a row.
    pub fn record_failure(&self, key: &str) -> u32 {
        self.remember(key, |memory| {
            memory.failures = memory.failures.saturating_add(1);
            memory.failures
        })
    }

    pub fn record_success(&self, key: &str) {
        if let Some(memory) = self.memories().get_mut(key) {
            memory.failures = 0;
        }
    }

    /// How long ago `key` was last compared with DPS.
    pub fn since_check(&self, key: &str) -> Option<Duration> {
        self.memories().get(key)?.checked.map(|checked| checked.elapsed())
    }

    pub fn checked(&self, key: &str) {
        self.remember(key, |memory| memory.checked = Some(Instant::now()));
    }

    /// Reconciles `key` again after `wait` (see [`Self::take_due`]); `None`: not unless it changes.
    pub fn check_after(&self, key: &str, wait: Option<Duration>) {
        self.remember(key, |memory| memory.due = wait.map(|wait| Instant::now() + wait));
    }

    /// The namespaces and names of the objects of `kind` in `namespace` (`None`: any) whose next
    /// check is due, each handed out once.
    pub fn take_due(&self, kind: &str, namespace: Option<&str>) -> Vec<(String, String)> {
        take_due(&mut self.memories(), kind, namespace, Instant::now())
    }

    /// Whether a change of `object` whose trigger hash is `hash` calls for a reconcile: the first
    /// time it is seen, and whenever the hash changes.
    pub fn worth_reconciling<K: Resource<DynamicType = ()>>(&self, object: &K, hash: u64) -> bool {
        self.remember(&object_key(object), |memory| memory.trigger.replace(hash) != Some(hash))
    }

    /// Sets the trigger hash `key` is expected to show next (`None`: none known), as before a write
    /// of this process's own that should not call for another reconcile; answers the one it had.
    pub fn expect_trigger(&self, key: &str, hash: Option<u64>) -> Option<u64> {
        self.remember(key, |memory| std::mem::replace(&mut memory.trigger, hash))
    }

    /// `object` as the API server holds it, when the watch cache has not caught up with this
    /// process's last status write yet; else `object` itself. `None` when it is gone.
    ///
    /// Decisions read the status (whether the enrollment is ours, which keys were written), and a
    /// copy from before our own write would repeat that write in DPS.
    pub async fn latest<K>(&self, api: &Api<K>, object: Arc<K>) -> Result<Option<Arc<K>>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let key = object_key(&*object);
        let written = self.memories().get(key.as_str()).and_then(|memory| memory.written.clone());
        match written {
            Some(version) if object.meta().resource_version.as_deref() != Some(&*version) => {
                let Some(latest) = api.get_opt(&object.name_any()).await? else { return Ok(None) };
                // It holds our write; once the cache holds this version, it is read from there.
                self.wrote(&latest);
                Ok(Some(Arc::new(latest)))
            }
            _ => Ok(Some(object)),
        }
    }

    /// Writes `status` to `object` by server-side apply, as the operator's field manager.
    pub async fn write_status<K>(
        &self,
        api: &Api<K>,
        object: &K,
        status: &impl Serialize,
    ) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let patch = json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = api.patch_status(&object.name_any(), &params, &Patch::Apply(&patch)).await?;
        self.wrote(&written);
        Ok(())
    }

    /// Remembers the resourceVersion one of this process's writes produced, for [`Self::latest`].
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, written: &K) {
        if let Some(version) = written.meta().resource_version.as_deref() {
            self.remember(&object_key(written), |memory| memory.written = Some(version.into()));
        }
    }

    /// Rebuilds the register of owners from the claims the statuses of `K` in `api` record, so
    /// that a restart keeps every enrollment with the resource that owned it.
    pub async fn seed_owners<K: EnrollmentKind>(&self, api: &Api<K>) -> Result<(), kube::Error> {
        let mut params = kube::api::ListParams::default().limit(500);
        loop {
            let page = api.list(&params).await?;
            for object in &page.items {
                let status = object.current_status().map(K::enrollment_status).cloned().unwrap_or_default();
                let uid = object.meta().uid.clone().unwrap_or_default();
                let status = recorded_claim(status, claim_of(object.meta()), &uid);
                let confirmed = status.claimed == Some(true);
                let (Some(host), true) = (&status.claimed_host, holds_claim(&status)) else { continue };
                let key = ClaimKey::new(host, <K::Record as dps::Enrollment>::COLLECTION, &object.dps_id());
                self.owners.seed(
                    key,
                    Owner {
                        uid: uid.into(),
                        name: resource_name(object).into(),
                        confirmed,
                        created: object.meta().creation_timestamp.as_ref().map(|t| t.0),
                    },
                );
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(()),
            }
        }
    }

    /// Records whether `object`'s last pass found it Ready, for the `resources` metric.
    pub fn set_ready<K: Resource<DynamicType = ()>>(&self, object: &K, ready: bool) {
        let previous = self.remember(&object_key(object), |memory| memory.ready.replace(ready));
        self.health.metrics.ready_changed(&K::kind(&()), previous, Some(ready));
    }

    /// Drops what is remembered about an object that is gone.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, object: &K) {
        let memory = self.memories().remove(object_key(object).as_str());
        if let Some(previous) = memory.and_then(|memory| memory.ready) {
            self.health.metrics.ready_changed(&K::kind(&()), Some(previous), None);
        }
    }

    /// The enrollments of `E`'s kind on `connection`, read with the query API at most once per
    /// `max_age`, so periodic drift checks cost a few queries per connection, not a GET each.
    pub async fn snapshot<E: dps::Enrollment>(
        &self,
        connection: &Connection,
        max_age: Duration,
    ) -> Result<Snapshot, dps::Error> {
        let key = format!("{}|{}", connection.name, E::COLLECTION);
        let slot = self.snapshots.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        // One refresh per connection and kind at a time; other connections are not held up.
        let mut slot = slot.lock().await;
        if let Some(snapshot) = slot.as_ref().filter(|s| s.taken.elapsed() < max_age) {
            return Ok(snapshot.clone());
        }
        // Page by page: only one page of records is held parsed at a time.
        let mut by_id = HashMap::new();
        let mut records = std::pin::pin!(connection.client.query::<E>("SELECT *", Some(100)));
        while let Some(record) = records.try_next().await? {
            if let Ok(json) = serde_json::to_string(&record) {
                by_id.insert(record.id().to_lowercase(), json.into_boxed_str());
            }
        }
        let snapshot = Snapshot { taken: Instant::now(), records: Arc::new(by_id) };
        *slot = Some(snapshot.clone());
        Ok(snapshot)
    }
}

/// The objects of `kind` in `namespace` (`None`: any) among `memories` whose check is due at
/// `now`, each handed out once.
fn take_due(
    memories: &mut HashMap<Box<str>, Memory>,
    kind: &str,
    namespace: Option<&str>,
    now: Instant,
) -> Vec<(String, String)> {
    let mut due = Vec::new();
    for (key, memory) in memories.iter_mut() {
        if memory.due.is_none_or(|at| at > now) {
            continue;
        }
        // An object key is `Kind/namespace/name`.
        let mut parts = key.splitn(3, '/');
        if parts.next() == Some(kind)
            && let (Some(of), Some(name)) = (parts.next(), parts.next())
            && namespace.is_none_or(|namespace| namespace == of)
        {
            memory.due = None;
            due.push((of.to_owned(), name.to_owned()));
        }
    }
    due
}

/// How messages name a resource: `IndividualEnrollment iot/boiler`.
pub fn resource_name<K: Resource<DynamicType = ()>>(object: &K) -> String {
    match object.namespace() {
        Some(namespace) => format!("{} {namespace}/{}", K::kind(&()), object.name_any()),
        None => format!("{} {}", K::kind(&()), object.name_any()),
    }
}

/// `Kind/namespace/name`, the key of the per-object memories.
pub fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_checks_are_handed_out_once_to_the_controller_of_their_kind_and_namespace() {
        let now = Instant::now();
        let due_at = |seconds_ago: u64| Memory {
            due: Some(now - Duration::from_secs(seconds_ago)),
            ..Memory::default()
        };
        let mut memories: HashMap<Box<str>, Memory> = HashMap::from([
            ("IndividualEnrollment/iot/boiler".into(), due_at(1)),
            ("IndividualEnrollment/ops/pump".into(), due_at(1)),
            ("EnrollmentGroup/iot/boilers".into(), due_at(1)),
            (
                "IndividualEnrollment/iot/later".into(),
                Memory { due: Some(now + Duration::from_secs(60)), ..Memory::default() },
            ),
            ("IndividualEnrollment/iot/settled".into(), Memory::default()),
        ]);
        let iot = take_due(&mut memories, "IndividualEnrollment", Some("iot"), now);
        assert_eq!(iot, [("iot".to_owned(), "boiler".to_owned())]);
        assert!(
            take_due(&mut memories, "IndividualEnrollment", Some("iot"), now).is_empty(),
            "handed out once"
        );
        let all = take_due(&mut memories, "IndividualEnrollment", None, now);
        assert_eq!(all, [("ops".to_owned(), "pump".to_owned())]);
        let groups = take_due(&mut memories, "EnrollmentGroup", None, now);
        assert_eq!(groups, [("iot".to_owned(), "boilers".to_owned())]);
        let later = take_due(&mut memories, "IndividualEnrollment", None, now + Duration::from_secs(61));
        assert_eq!(later, [("iot".to_owned(), "later".to_owned())]);
    }
}
