//! The enrollments of each kind on each connection, as a query last read them: what periodic
//! drift checks compare with, a few queries per connection rather than a GET per enrollment.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::TryStreamExt;
use tokio::time::Instant;

use super::{connection::Connection, desired::DpsRecord};
use crate::dps;

/// The enrollments of one kind on one connection, as a query read them.
#[derive(Clone)]
pub struct Snapshot {
    taken: Instant,
    /// Each record's JSON by lower-case id: compact text, parsed only when a check reads it
    /// (a tree of JSON values takes several times the memory, at 10,000 enrollments tens of MiB).
    pub records: Arc<HashMap<String, Box<str>>>,
}

/// The latest snapshot of each connection and kind.
#[derive(Default)]
pub struct Snapshots {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Snapshot>>>>>,
}

impl Snapshots {
    /// The enrollments of `E`'s kind on `connection`, read with the query API at most once per
    /// `max_age`, so periodic drift checks cost a few queries per connection, not a GET each.
    /// Enrollments an IndividualEnrollmentSet made are left out: no resource of ours reads them
    /// here (an absent one costs a GET), and a connection's sets may hold 100,000 of them.
    pub async fn of<E: dps::Enrollment + DpsRecord>(
        &self,
        connection: &Connection,
        max_age: Duration,
    ) -> Result<Snapshot, dps::Error> {
        let key = format!("{}|{}", connection.name, E::COLLECTION);
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        // One refresh per connection and kind at a time; other connections are not held up.
        let mut slot = slot.lock().await;
        if let Some(snapshot) = slot.as_ref().filter(|s| s.taken.elapsed() < max_age) {
            return Ok(snapshot.clone());
        }
        // Page by page: only one page of records is held parsed at a time.
        let mut by_id = HashMap::new();
        let mut records = std::pin::pin!(connection.client.query::<E>("SELECT *", Some(100)));
        while let Some(record) = records.try_next().await? {
            if record.made_by_set().is_some() {
                continue;
            }
            if let Ok(json) = serde_json::to_string(&record) {
                by_id.insert(record.id().to_lowercase(), json.into_boxed_str());
            }
        }
        let snapshot = Snapshot { taken: Instant::now(), records: Arc::new(by_id) };
        *slot = Some(snapshot.clone());
        Ok(snapshot)
    }
}
