//! Which sets list which ids, on which DPS: what keeps two sets (or a set and an
//! IndividualEnrollment) from fighting over one id before either has made it. Each set's ids are
//! kept once, sorted, lower-case.

use std::{
    cmp::Ordering,
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// One set's listing.
struct Listing {
    host: Box<str>,
    set: Arc<str>,
    /// When it first listed anything: the earlier listing of an id holds it.
    since: u64,
    ids: Arc<[Box<str>]>,
}

#[derive(Default)]
pub struct Registry {
    listings: Mutex<(u64, Vec<Listing>)>,
}

impl Registry {
    /// Records that `set` lists `ids` (sorted, lower-case) on `host`, and answers which of them a
    /// set listed earlier, with that set.
    pub fn list(&self, host: &str, set: &str, ids: Vec<Box<str>>) -> HashMap<Box<str>, Arc<str>> {
        let host = host.to_ascii_lowercase();
        let ids: Arc<[Box<str>]> = ids.into();
        let mut guard = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        let (counter, listings) = &mut *guard;
        let since = match listings.iter_mut().find(|l| &*l.set == set) {
            Some(listing) => {
                listing.ids = ids.clone();
                listing.host = host.as_str().into();
                listing.since
            }
            None => {
                *counter += 1;
                listings.push(Listing {
                    host: host.as_str().into(),
                    set: set.into(),
                    since: *counter,
                    ids: ids.clone(),
                });
                *counter
            }
        };
        let mut earlier = HashMap::new();
        for other in listings.iter().filter(|l| *l.host == host && l.since < since) {
            for id in common(&ids, &other.ids) {
                earlier.entry(Box::from(id)).or_insert_with(|| other.set.clone());
            }
        }
        earlier
    }

    /// Forgets `set`'s listing (it was deleted).
    pub fn forget(&self, set: &str) {
        self.listings.lock().unwrap_or_else(|e| e.into_inner()).1.retain(|l| &*l.set != set);
    }

    /// The set listing `id` on `host` first, if any.
    pub fn lister(&self, host: &str, id: &str) -> Option<Arc<str>> {
        let id = id.to_lowercase();
        let guard = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .1
            .iter()
            .filter(|l| {
                l.host.eq_ignore_ascii_case(host) && l.ids.binary_search_by(|i| (**i).cmp(&*id)).is_ok()
            })
            .min_by_key(|l| l.since)
            .map(|l| l.set.clone())
    }
}

/// The ids in both sorted lists, by walking them side by side.
fn common<'a>(one: &'a [Box<str>], other: &[Box<str>]) -> Vec<&'a str> {
    let (mut i, mut j, mut both) = (0, 0, Vec::new());
    while i < one.len() && j < other.len() {
        match one[i].cmp(&other[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                both.push(&*one[i]);
                i += 1;
                j += 1;
            }
        }
    }
    both
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[&str]) -> Vec<Box<str>> {
        ids.iter().map(|&id| id.into()).collect()
    }

    #[test]
    fn the_set_that_listed_an_id_first_holds_it_on_its_dps_only() {
        let registry = Registry::default();
        assert!(registry.list("dps", "iot/a", ids(&["a", "b", "c"])).is_empty());
        let later = registry.list("DPS", "iot/b", ids(&["b", "c", "d"]));
        assert_eq!(later.len(), 2);
        assert_eq!(&*later[&Box::from("c")], "iot/a");
        // Listing again keeps the place in line.
        assert!(registry.list("dps", "iot/a", ids(&["a", "b", "c"])).is_empty());
        assert!(registry.list("other-dps", "iot/c", ids(&["a"])).is_empty());
        assert_eq!(registry.lister("dps", "B").as_deref(), Some("iot/a"));
        assert_eq!(registry.lister("dps", "d").as_deref(), Some("iot/b"));
        registry.forget("iot/a");
        assert_eq!(registry.lister("dps", "b").as_deref(), Some("iot/b"));
        assert_eq!(registry.lister("dps", "zz"), None);
    }
}
