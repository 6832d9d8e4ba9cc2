//! One owner per enrollment: at most one resource in the cluster manages a given (DPS host, kind,
//! id). The first resource to claim an id holds it until it is deleted, moves to another id or
//! gives up its claim; any other resource naming the same id is refused with `Conflict` and never
//! writes to DPS. The register lives in the operator (one writer, under leader election) and is
//! rebuilt at start from the claims the resources' statuses record, so a restart keeps the owner.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::api::EnrollmentStatus;

/// What an owner claims: one id of one kind on one DPS, as one shared text (the register holds
/// one per enrollment, in two maps).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimKey(Arc<str>);

impl ClaimKey {
    /// DPS host names and ids compare case-insensitively.
    pub fn new(host: &str, collection: &'static str, id: &str) -> Self {
        // Neither a host name nor a collection holds a space.
        Self(format!("{} {collection} {}", host.to_ascii_lowercase(), id.to_lowercase()).into())
    }
}

/// The resource holding a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: Arc<str>,
    /// How messages name it, e.g. `IndividualEnrollment iot/boiler`.
    pub name: Box<str>,
    /// Whether DPS confirmed the claim (a create it answered, or an adoption), rather than a
    /// create still unanswered.
    pub confirmed: bool,
    /// When the resource was created, to settle a tie between two claims recorded in statuses.
    pub created: Option<jiff::Timestamp>,
}

impl Owner {
    /// Whether `self` wins over `other` when both claim the same id in their statuses (possible
    /// only for statuses written before this register existed): confirmed over pending, then the
    /// older resource, then the smaller uid.
    fn outranks(&self, other: &Owner) -> bool {
        (!self.confirmed, self.created, &self.uid) < (!other.confirmed, other.created, &other.uid)
    }
}

/// Whose the enrollment at an id is, as far as one resource's status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// DPS confirmed this resource's create, or it adopted the enrollment.
    Owned,
    /// This resource sent a create that DPS has not confirmed yet (the answer may have been
    /// lost): an enrollment found at the id is its own only if it holds exactly what was sent.
    CreatePending,
    None,
}

/// The ownership `status` records on the DPS at `host`. A claim made on another host does not
/// count here; a claim recorded before claims named their host is taken to be on this one.
pub fn ownership(status: &EnrollmentStatus, host: &str) -> Ownership {
    if !claimed_on(status, host) {
        Ownership::None
    } else if status.claimed == Some(true) {
        Ownership::Owned
    } else if status.create_pending == Some(true) {
        Ownership::CreatePending
    } else {
        Ownership::None
    }
}

/// Whether `status` records a claim, confirmed or pending.
pub fn holds_claim(status: &EnrollmentStatus) -> bool {
    status.claimed == Some(true) || status.create_pending == Some(true)
}

/// The claim annotation of the resource `uid` claiming the enrollment on `host`.
pub fn claim_annotation(uid: &str, host: &str) -> String {
    format!("{uid}@{host}")
}

/// The claim of the resource `uid`: what its `status` records, or the claim its `annotation`
/// records when the status has not caught up with it. The annotation is written with the
/// finalizer before a create or an adoption and the status after it, so an operator stopped in
/// between leaves only the annotation: that create is still pending. An annotation naming
/// another resource (copied with a manifest) counts for nothing.
pub fn recorded_claim(mut status: EnrollmentStatus, annotation: Option<&str>, uid: &str) -> EnrollmentStatus {
    let host = annotation.and_then(|a| a.split_once('@')).filter(|(of, _)| *of == uid).map(|(_, host)| host);
    if let Some(host) = host
        && !(status.claimed == Some(true) && claimed_on(&status, host))
    {
        status.claimed = None;
        status.create_pending = Some(true);
        status.claimed_host = Some(host.to_owned());
    }
    status
}

/// The claim annotation the resource `uid` should carry once its status is `status`: its claim
/// (written again when a `kubectl replace` or an edit dropped it), or none (`Some(None)`) when the
/// status holds no claim but the annotation is there; `None` when nothing changes.
pub fn annotation_change(
    annotation: Option<&str>,
    status: &EnrollmentStatus,
    uid: &str,
) -> Option<Option<String>> {
    match (&status.claimed_host, holds_claim(status)) {
        (Some(host), true) => {
            let claim = claim_annotation(uid, host);
            (annotation != Some(claim.as_str())).then_some(Some(claim))
        }
        // A claim recorded before claims named their host has no annotation to restore.
        (None, true) => None,
        (_, false) => annotation.is_some().then_some(None),
    }
}

fn claimed_on(status: &EnrollmentStatus, host: &str) -> bool {
    status.claimed_host.as_deref().is_none_or(|claimed| claimed.eq_ignore_ascii_case(host))
}

/// Whether `status` records a claim on a DPS other than `host`: the connection now points at
/// another DPS.
pub fn claim_elsewhere<'a>(status: &'a EnrollmentStatus, host: &str) -> Option<&'a str> {
    status
        .claimed_host
        .as_deref()
        .filter(|claimed_host| holds_claim(status) && !claimed_host.eq_ignore_ascii_case(host))
}

#[derive(Default)]
struct Claims {
    by_key: HashMap<ClaimKey, Owner>,
    /// Each resource holds at most one claim.
    by_uid: HashMap<Arc<str>, ClaimKey>,
}

/// The register of claims.
#[derive(Default)]
pub struct Owners {
    claims: Mutex<Claims>,
}

impl Owners {
    fn lock(&self) -> MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a claim read from a status at start; of two claims on one id the stronger stays.
    pub fn seed(&self, key: ClaimKey, owner: Owner) {
        let mut claims = self.lock();
        if let Some(held) = claims.by_key.get(&key)
            && !owner.outranks(held)
        {
            return;
        }
        Self::insert(&mut claims, key, owner);
    }

    /// Claims `key` for `owner`, unless another resource holds it: then that resource is returned.
    /// A claim `owner` held on another key is given up.
    pub fn acquire(&self, key: ClaimKey, owner: Owner) -> Result<(), Owner> {
        let mut claims = self.lock();
        match claims.by_key.get(&key) {
            Some(held) if held.uid != owner.uid => Err(held.clone()),
            _ => {
                Self::insert(&mut claims, key, owner);
                Ok(())
            }
        }
    }

    /// The resource holding `key`, if any.
    pub fn holder(&self, key: &ClaimKey) -> Option<Owner> {
        self.lock().by_key.get(key).cloned()
    }

    /// Gives up whatever claim the resource `uid` holds.
    pub fn release(&self, uid: &str) {
        let mut claims = self.lock();
        if let Some(key) = claims.by_uid.remove(uid) {
            claims.by_key.remove(&key);
        }
    }

    fn insert(claims: &mut Claims, key: ClaimKey, owner: Owner) {
        if let Some(previous) = claims.by_uid.insert(owner.uid.clone(), key.clone())
            && previous != key
        {
            claims.by_key.remove(&previous);
        }
        let uid = owner.uid.clone();
        if let Some(displaced) = claims.by_key.insert(key, owner)
            && displaced.uid != uid
        {
            claims.by_uid.remove(&displaced.uid);
        }
    }
}

/// Forgets a claim `recorded` holds, in the status this pass writes.
pub fn drop_claim(recorded: &mut EnrollmentStatus) {
    recorded.claimed = None;
    recorded.create_pending = None;
    recorded.claimed_host = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str, confirmed: bool, created: i64) -> Owner {
        Owner {
            uid: uid.into(),
            name: format!("IndividualEnrollment ns/{uid}").into(),
            confirmed,
            created: Some(jiff::Timestamp::from_second(created).unwrap()),
        }
    }

    #[test]
    fn the_first_claim_wins_and_others_are_told_who_holds_it() {
        let owners = Owners::default();
        let key = ClaimKey::new("DPS.example", "enrollments", "Boiler");
        assert_eq!(owners.acquire(key.clone(), owner("a", false, 1)), Ok(()));
        let refused =
            owners.acquire(ClaimKey::new("dps.example", "enrollments", "boiler"), owner("b", false, 0));
        assert_eq!(&*refused.unwrap_err().uid, "a", "ids and hosts compare case-insensitively");
        assert_eq!(owners.acquire(key.clone(), owner("a", true, 1)), Ok(()), "the holder may claim again");
        assert!(
            owners
                .acquire(ClaimKey::new("dps.example", "enrollmentGroups", "boiler"), owner("b", false, 0))
                .is_ok(),
            "a group with the same id is another item"
        );
        owners.release("a");
        assert_eq!(owners.acquire(key, owner("c", false, 2)), Ok(()), "released: free for the next");
    }

    #[test]
    fn a_resource_holds_one_claim_at_a_time() {
        let owners = Owners::default();
        let on_a = ClaimKey::new("a.example", "enrollments", "x");
        let on_b = ClaimKey::new("b.example", "enrollments", "x");
        owners.acquire(on_a.clone(), owner("r", true, 1)).unwrap();
        owners.acquire(on_b, owner("r", false, 1)).unwrap();
        assert!(owners.acquire(on_a, owner("s", false, 2)).is_ok(), "moving to b gave up a");
    }

    #[test]
    fn seeded_claims_keep_the_confirmed_then_the_oldest() {
        let owners = Owners::default();
        let key = ClaimKey::new("h", "enrollments", "x");
        owners.seed(key.clone(), owner("pending-old", false, 1));
        owners.seed(key.clone(), owner("confirmed-new", true, 5));
        owners.seed(key.clone(), owner("confirmed-newer", true, 9));
        assert_eq!(&*owners.acquire(key.clone(), owner("other", true, 0)).unwrap_err().uid, "confirmed-new");
        owners.release("confirmed-new");
        assert!(owners.acquire(key, owner("other", true, 0)).is_ok(), "the displaced left no claim behind");
    }

    #[test]
    fn ownership_belongs_to_the_host_it_was_made_on() {
        let status = |claimed, pending, host: Option<&str>| EnrollmentStatus {
            claimed,
            create_pending: pending,
            claimed_host: host.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(ownership(&status(Some(true), None, Some("A.example")), "a.example"), Ownership::Owned);
        assert_eq!(ownership(&status(Some(true), None, Some("a.example")), "b.example"), Ownership::None);
        assert_eq!(
            ownership(&status(None, Some(true), Some("a.example")), "a.example"),
            Ownership::CreatePending
        );
        assert_eq!(
            ownership(&status(Some(true), None, None), "b.example"),
            Ownership::Owned,
            "recorded before hosts were"
        );
        assert_eq!(ownership(&status(None, None, None), "a.example"), Ownership::None);
        assert_eq!(
            claim_elsewhere(&status(Some(true), None, Some("a.example")), "b.example"),
            Some("a.example")
        );
        assert_eq!(claim_elsewhere(&status(Some(true), None, Some("a.example")), "a.example"), None);
        assert_eq!(claim_elsewhere(&status(None, None, Some("a.example")), "b.example"), None);
    }

    #[test]
    fn a_claim_annotation_the_status_has_not_caught_up_with_is_a_pending_create() {
        let status = |claimed, pending, host: &str| EnrollmentStatus {
            claimed,
            create_pending: pending,
            claimed_host: Some(host.to_owned()),
            ..Default::default()
        };
        let pending_on = |host: &str| status(None, Some(true), host);
        let annotation = claim_annotation("uid-1", "a.example");
        let merged =
            |status: EnrollmentStatus, annotation: Option<&str>| recorded_claim(status, annotation, "uid-1");
        // Stopped between the annotation and the status: the create is pending.
        assert_eq!(merged(EnrollmentStatus::default(), Some(&annotation)), pending_on("a.example"));
        assert_eq!(merged(pending_on("a.example"), Some(&annotation)), pending_on("a.example"));
        // The status confirmed it.
        let confirmed = status(Some(true), None, "A.example");
        assert_eq!(merged(confirmed.clone(), Some(&annotation)), confirmed);
        // A claim confirmed on another DPS, then a create on this one the status never saw.
        assert_eq!(merged(status(Some(true), None, "b.example"), Some(&annotation)), pending_on("a.example"));
        // Another resource's annotation, copied with its manifest, or none.
        let copied = claim_annotation("uid-2", "a.example");
        assert_eq!(merged(EnrollmentStatus::default(), Some(&copied)), EnrollmentStatus::default());
        assert_eq!(merged(EnrollmentStatus::default(), Some("no-host")), EnrollmentStatus::default());
        assert_eq!(merged(EnrollmentStatus::default(), None), EnrollmentStatus::default());
        assert!(holds_claim(&pending_on("a.example")) && holds_claim(&confirmed));
        assert!(!holds_claim(&EnrollmentStatus::default()));
    }

    #[test]
    fn the_claim_annotation_follows_the_status_and_comes_back_when_dropped() {
        let claimed = EnrollmentStatus {
            claimed: Some(true),
            claimed_host: Some("dps.example".into()),
            ..Default::default()
        };
        let held = Some("uid@dps.example");
        assert_eq!(annotation_change(held, &claimed, "uid"), None, "in place");
        assert_eq!(annotation_change(None, &claimed, "uid"), Some(Some("uid@dps.example".into())), "dropped");
        assert_eq!(
            annotation_change(Some("other@dps.example"), &claimed, "uid"),
            Some(Some("uid@dps.example".into()))
        );
        let pending = EnrollmentStatus { claimed: None, create_pending: Some(true), ..claimed.clone() };
        assert_eq!(annotation_change(None, &pending, "uid"), Some(Some("uid@dps.example".into())));
        assert_eq!(annotation_change(held, &EnrollmentStatus::default(), "uid"), Some(None), "no claim");
        assert_eq!(annotation_change(None, &EnrollmentStatus::default(), "uid"), None);
        let hostless = EnrollmentStatus { claimed_host: None, ..claimed };
        assert_eq!(annotation_change(None, &hostless, "uid"), None);
    }
}
