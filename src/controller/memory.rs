//! What the operator remembers of each object between its reconciles: failures in a row, when it
//! was last compared with DPS and when it is next due, what of it calls for a reconcile, the
//! resourceVersion of this process's last write to it, and whether it was Ready.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokio::time::Instant;

use super::{
    Error,
    names::{FIELD_MANAGER, object_key, resource_name},
};
use crate::{
    http::Health,
    metrics::{EnrollmentFacts, EnrollmentLabels},
};

/// What is remembered of every object, by [`object_key`]: one entry per resource.
pub struct Memories {
    entries: Mutex<HashMap<Box<str>, Memory>>,
    /// Where the `resources` metric is counted.
    health: Arc<Health>,
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
    /// Whether its last pass found it Ready, and the reason, as the `resources` metrics count it.
    ready: Option<(bool, Box<str>)>,
}

impl Memories {
    pub fn new(health: Arc<Health>) -> Self {
        Self { entries: Mutex::default(), health }
    }

    fn memories(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Memory>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
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
            // It holds our write; once the cache holds this version, it is read from there.
            Some(version) if object.meta().resource_version.as_deref() != Some(&*version) => {
                Ok(self.read_afresh(api, &*object).await?.map(Arc::new))
            }
            _ => Ok(Some(object)),
        }
    }

    /// `object` as the API server holds it now, `None` when it is gone. Later passes start from
    /// this version until the watch cache holds it.
    pub async fn read_afresh<K>(&self, api: &Api<K>, object: &K) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let latest = api.get_opt(&object.name_any()).await?;
        if let Some(latest) = &latest {
            self.wrote(latest);
        }
        Ok(latest)
    }

    /// Writes `status` to `object` by server-side apply, as the operator's field manager.
    pub async fn write_status<K>(
        &self,
        api: &Api<K>,
        object: &K,
        status: &impl Serialize,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let patch = json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = api
            .patch_status(&object.name_any(), &params, &Patch::Apply(&patch))
            .await
            .map_err(|e| Error::kube(format!("writing the status of {}", resource_name(object)), e))?;
        self.wrote(&written);
        Ok(())
    }

    /// Remembers the resourceVersion one of this process's writes produced, for [`Self::latest`].
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, written: &K) {
        if let Some(version) = written.meta().resource_version.as_deref() {
            self.remember(&object_key(written), |memory| memory.written = Some(version.into()));
        }
    }

    /// Records whether `object`'s last pass found it Ready, and the reason, for the `resources`
    /// metrics.
    pub fn set_ready<K: Resource<DynamicType = ()>>(&self, object: &K, ready: bool, reason: &str) {
        let now = (ready, Box::<str>::from(reason));
        let previous = self.remember(&object_key(object), |memory| memory.ready.replace(now.clone()));
        let previous = previous.as_ref().map(|(ready, reason)| (*ready, &**reason));
        self.health.metrics.ready_changed(&K::kind(&()), previous, Some((ready, reason)));
    }

    /// Records what an object's per-enrollment metrics show.
    pub fn set_facts<K: Resource<DynamicType = ()>>(&self, object: &K, facts: EnrollmentFacts) {
        self.health.metrics.per_enrollment().set(enrollment_labels(object), Some(facts));
    }

    /// Drops what is remembered about an object that is gone.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, object: &K) {
        self.health.metrics.per_enrollment().set(enrollment_labels(object), None);
        let memory = self.memories().remove(object_key(object).as_str());
        if let Some((ready, reason)) = memory.and_then(|memory| memory.ready) {
            self.health.metrics.ready_changed(&K::kind(&()), Some((ready, &reason)), None);
        }
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

fn enrollment_labels<K: Resource<DynamicType = ()>>(object: &K) -> EnrollmentLabels {
    EnrollmentLabels {
        kind: K::kind(&()).into_owned(),
        namespace: object.meta().namespace.clone().unwrap_or_default(),
        name: object.meta().name.clone().unwrap_or_default(),
    }
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
