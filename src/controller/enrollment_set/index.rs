//! What DPS holds of the individual enrollments on one connection, as compactly as a set pass can
//! use it: per id, a fingerprint of the content, the etag and which set made it. One paged query
//! per connection fills it for every set there; the sets' own writes keep it current between
//! drift checks, so a pass that changes one member costs one write.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::write::Written;
use crate::{
    controller::{connection::Connection, desired::Comparable, desired::DpsRecord},
    dps::{self, models::IndividualEnrollment},
};

/// The `optionalDeviceInformation` entry naming the set (`namespace/name`) that made an enrollment.
pub const SET_MARK: &str = "enrollmentSet";
/// The entry holding a digest of the set keys a member's keys were derived from (DPS never
/// returns keys, so this is how a changed set key is noticed).
pub const KEYS_MARK: &str = "enrollmentSetKeys";

/// How many times in a row a throttled query page is asked for again.
const THROTTLED_PAGE_RETRIES: u32 = 10;

/// The query's page size: DPS's largest.
pub const PAGE_SIZE: u32 = 100;

/// One enrollment as a set pass needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `None` after a bulk write (bulk answers carry no etags) until the next query.
    pub etag: Option<Box<str>>,
    pub fingerprint: u64,
    /// The set that made it, from its mark.
    pub owner: Option<Arc<str>>,
}

/// Every individual enrollment on one connection, by lower-case id.
#[derive(Default)]
pub struct Index {
    taken: Option<Instant>,
    pub records: HashMap<Box<str>, Record>,
    owners: HashSet<Arc<str>>,
}

impl Index {
    /// Whether a query is due: never read, or read longer than `max_age` ago.
    pub fn stale(&self, max_age: Duration) -> bool {
        self.taken.is_none_or(|taken| taken.elapsed() >= max_age)
    }

    /// Forces a query at the next pass (a write found DPS other than the index said).
    pub fn invalidate(&mut self) {
        self.taken = None;
    }

    /// The shared name of `owner`, kept once however many records carry it.
    pub fn owner(&mut self, owner: &str) -> Arc<str> {
        if let Some(known) = self.owners.get(owner) {
            return known.clone();
        }
        let owner: Arc<str> = owner.into();
        self.owners.insert(owner.clone());
        owner
    }

    /// Records what DPS holds of `record`.
    pub fn insert(&mut self, record: &IndividualEnrollment) {
        let owner = record.made_by_set().map(|owner| self.owner(owner));
        let entry = Record {
            etag: record.etag.as_deref().map(Into::into),
            fingerprint: fingerprint(&record.comparable()),
            owner,
        };
        self.records.insert(record.registration_id.to_lowercase().into_boxed_str(), entry);
    }

    /// Records what `me` wrote: the enrollments written hold `fingerprints` (their etags are not
    /// known until the next query), the deleted ones are gone. When DPS held something other than
    /// the index said, the next pass reads it anew.
    pub fn record(&mut self, me: &str, written: &Written, fingerprints: &HashMap<Box<str>, u64>) {
        let owner = self.owner(me);
        for id in &written.written {
            let id = id.to_lowercase().into_boxed_str();
            if let Some(&fingerprint) = fingerprints.get(&id) {
                self.records.insert(id, Record { etag: None, fingerprint, owner: Some(owner.clone()) });
            }
        }
        for id in &written.deleted {
            self.records.remove(&*id.to_lowercase());
        }
        if written.stale {
            self.invalidate();
        }
    }

    /// Reads every individual enrollment on `connection`, page by page.
    /// A page DPS throttles is asked for again after the wait it names, not the query from the
    /// start: a restart that meets a quota another client used costs a wait, not 1,000 calls.
    pub async fn refresh(&mut self, connection: &Connection) -> Result<(), dps::Error> {
        let mut fresh = Index::default();
        let (mut continuation, mut throttled) = (None::<String>, 0);
        loop {
            let page = connection.client.query_page::<IndividualEnrollment>(
                "SELECT *",
                Some(PAGE_SIZE),
                continuation.as_deref(),
            );
            match page.await {
                Ok((records, next)) => {
                    throttled = 0;
                    records.iter().for_each(|record| fresh.insert(record));
                    match next {
                        Some(next) => continuation = Some(next),
                        None => break,
                    }
                }
                Err(error) => match error.retry_class() {
                    dps::RetryClass::After(wait) if throttled < THROTTLED_PAGE_RETRIES => {
                        throttled += 1;
                        tokio::time::sleep(wait.unwrap_or(Duration::from_secs(1))).await;
                    }
                    _ => return Err(error),
                },
            }
        }
        fresh.taken = Some(Instant::now());
        *self = fresh;
        Ok(())
    }
}

/// A fingerprint of what [`crate::controller::desired::drift`] compares, the same for a record
/// built from the spec and the one DPS then holds (hubs compare case-insensitively; the webhook
/// URL, a secret DPS may not return, is left out).
pub fn fingerprint(comparable: &Comparable) -> u64 {
    let normalized = Comparable {
        custom_allocation: comparable.custom_allocation.as_ref().map(|(version, _)| (version.clone(), None)),
        iot_hubs: comparable.iot_hubs.iter().map(|hub| hub.to_ascii_lowercase()).collect(),
        ..comparable.clone()
    };
    let text = serde_json::to_string(&normalized).unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The index of each connection.
#[derive(Default)]
pub struct Indexes {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Index>>>>,
}

impl Indexes {
    /// The index of `connection`, queried first when older than `max_age`. Held locked by the
    /// caller while it plans, so that two sets on one connection plan from one view.
    pub async fn of(
        &self,
        connection: &Connection,
        max_age: Duration,
    ) -> Result<tokio::sync::OwnedMutexGuard<Index>, dps::Error> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(connection.host.to_ascii_lowercase()).or_default().clone()
        };
        let mut index = slot.lock_owned().await;
        if index.stale(max_age) {
            index.refresh(connection).await?;
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::dps::models::{AttestationMechanism, AttestationType};

    fn record(id: &str, hub: &str, set: Option<&str>) -> IndividualEnrollment {
        IndividualEnrollment {
            registration_id: id.into(),
            attestation: AttestationMechanism { type_: AttestationType::SymmetricKey, ..Default::default() },
            iot_hubs: Some(vec![hub.into()]),
            optional_device_information: set
                .map(|set| [(SET_MARK.to_owned(), json!(set))].into_iter().collect()),
            etag: Some("\"e1\"".into()),
            ..Default::default()
        }
    }

    #[test]
    fn records_are_kept_by_lower_case_id_with_their_maker_shared_once() {
        let mut index = Index::default();
        index.insert(&record("Sensor-1", "hub.azure-devices.net", Some("iot/fleet")));
        index.insert(&record("sensor-2", "hub.azure-devices.net", Some("iot/fleet")));
        index.insert(&record("other", "hub.azure-devices.net", None));
        let one = &index.records["sensor-1"];
        assert!(Arc::ptr_eq(one.owner.as_ref().unwrap(), index.records["sensor-2"].owner.as_ref().unwrap()));
        assert_eq!(one.etag.as_deref(), Some("\"e1\""));
        assert_eq!(index.records["other"].owner, None);
        assert!(index.stale(Duration::from_secs(60)), "filled by hand, never queried");
    }

    #[test]
    fn the_fingerprint_ignores_hub_case_and_sees_every_compared_field() {
        let a = record("a", "Hub.azure-devices.net", None).comparable();
        let b = record("a", "hub.azure-devices.net", None).comparable();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let mut disabled = record("a", "hub.azure-devices.net", None);
        disabled.provisioning_status = Some(dps::models::ProvisioningStatus::Disabled);
        assert_ne!(fingerprint(&disabled.comparable()), fingerprint(&b));
        let marked = record("a", "hub.azure-devices.net", Some("iot/fleet")).comparable();
        assert_ne!(fingerprint(&marked), fingerprint(&b));
    }
}
