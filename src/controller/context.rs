//! What every reconcile shares, in parts a step names when it needs them: the Kubernetes client,
//! the operator's settings, the DPS connections, the register of owners, the watch caches, what is
//! remembered of each object, the query snapshots drift checks read, and where events go.

use std::sync::Arc;

use super::{
    config::Config, connection::Connections, digest_key::DigestKey, events::Events, memory::Memories,
    ownership::Owners, selector::LabelSelector, snapshots::Snapshots, watches::Caches,
};
use crate::http::Health;

pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub health: Arc<Health>,
    pub connections: Connections,
    /// Which resource owns each enrollment.
    pub owners: Owners,
    /// The namespaces the operator manages; empty: all.
    pub namespaces: Vec<String>,
    /// The key of the status digests (`run` loads the operator's own; random until then).
    pub digest_key: DigestKey,
    /// What the shared watches cache (`run` fills it in; empty: everything is read anew).
    pub caches: Caches,
    pub memory: Memories,
    pub snapshots: Snapshots,
    pub events: Events,
    /// What the IndividualEnrollmentSet passes share.
    pub sets: super::enrollment_set::Sets,
    /// The enrollments this operator reconciles (`--watch-label-selector`); all when `None`.
    pub selector: Option<LabelSelector>,
}

impl Context {
    pub fn new(client: kube::Client, config: Config, health: Arc<Health>) -> Self {
        Self {
            events: Events::new(client.clone(), std::env::var("POD_NAME").ok()),
            connections: Connections::new(&config, health.clone()),
            owners: Owners::default(),
            namespaces: Vec::new(),
            digest_key: DigestKey::random(),
            caches: Caches::default(),
            memory: Memories::new(health.clone()),
            snapshots: Snapshots::default(),
            sets: Default::default(),
            selector: None,
            health,
            client,
            config,
        }
    }
}
