//! What a set pass does with each member, decided from the index of what DPS holds and who else
//! lists or owns each id; and the tally of states the status reports. No I/O here.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    index::Index,
    members::Member,
    write::{Writes, Written},
};
use crate::{
    api::{MAX_REPORTED_FAILURES, MemberCounts, MemberFailure},
    dps::models::{AttestationType, IndividualEnrollment},
};

/// The most enrollments one pass writes; the pass after it goes on at once, with the status
/// showing the progress between them.
pub const WRITES_PER_PASS: usize = 1000;

/// A pass's plan.
#[derive(Default)]
pub struct Planned {
    pub tally: Tally,
    pub writes: Writes,
    /// The fingerprint of each enrollment written, by lower-case id.
    pub fingerprints: HashMap<Box<str>, u64>,
    /// Members not this set's to write, by lower-case id.
    pub conflicts: HashSet<Box<str>>,
    /// Writes left for the next pass.
    pub more: bool,
}

/// What the set wants of DPS, against what the index says DPS holds: each member's step, and the
/// removals of members no longer listed when `remove` (the deletion policy) says so. At most
/// `limit` writes; the rest stay pending.
pub struct Inputs<'a> {
    pub members: &'a [Member],
    /// The members' lower-case ids, sorted as `members` is.
    pub listed: &'a [Box<str>],
    pub me: &'a str,
    pub others: Others<'a>,
    pub remove: bool,
    pub limit: usize,
    pub attestation: AttestationType,
}

pub fn plan(
    inputs: &Inputs<'_>,
    index: &Index,
    build: impl Fn(&Member) -> Result<(IndividualEnrollment, u64), MemberFailure>,
) -> Planned {
    let mut planned = Planned { tally: Tally::new(inputs.members.len()), ..Default::default() };
    planned.writes.attestation = Some(inputs.attestation);
    for (member, lower) in inputs.members.iter().zip(inputs.listed) {
        let (record, wanted) = match build(member) {
            Ok(built) => built,
            Err(failure) => {
                planned.tally.failed(failure);
                continue;
            }
        };
        let update = match step(&member.registration_id, wanted, inputs.me, index, &inputs.others) {
            Step::Ready => {
                planned.tally.ready();
                continue;
            }
            Step::Conflict(failure) => {
                planned.conflicts.insert(lower.clone());
                planned.tally.conflict(failure);
                continue;
            }
            Step::Create => None,
            Step::Update { etag } => Some(etag),
        };
        planned.tally.pending();
        if planned.writes.count() >= inputs.limit {
            planned.more = true;
            continue;
        }
        let writes = &mut planned.writes;
        match update {
            None => writes.creates.push(record),
            Some(None) => writes.blind_updates.push(record),
            Some(Some(etag)) => {
                writes.updates.push(IndividualEnrollment { etag: Some(etag.into()), ..record })
            }
        }
        planned.fingerprints.insert(lower.clone(), wanted);
    }
    if inputs.remove {
        for id in removed(index, inputs.me, inputs.listed) {
            if planned.writes.count() >= inputs.limit {
                planned.more = true;
                break;
            }
            planned.writes.deletes.push(id.into());
        }
    }
    planned
}

/// What to do with one member.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// DPS holds it as listed.
    Ready,
    Create,
    /// DPS holds it, made by this set, but not as listed; `etag`: as the last query read it.
    Update {
        etag: Option<Box<str>>,
    },
    /// Not this set's to write.
    Conflict(MemberFailure),
}

/// Who else has a say over the ids of a set.
pub struct Others<'a> {
    /// Ids a set listed before this one did, with that set.
    pub earlier: &'a HashMap<Box<str>, Arc<str>>,
    /// The IndividualEnrollment resource that owns an id, if any, as `IndividualEnrollment ns/name`.
    pub resource: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

/// The step for member `id` (as listed) whose enrollment would have `wanted` as fingerprint. The
/// one-owner rule: an enrollment DPS holds belongs to the set its mark names; one it holds
/// unmarked belongs to an IndividualEnrollment resource or to nobody we know (left alone); a new
/// id belongs to the set that listed it first.
pub fn step(id: &str, wanted: u64, me: &str, index: &Index, others: &Others<'_>) -> Step {
    let lower = id.to_lowercase();
    let conflict = |reason: &str, message: String| {
        Step::Conflict(MemberFailure { registration_id: id.to_owned(), reason: reason.into(), message })
    };
    let owned_by_resource = || {
        (others.resource)(&lower)
            .map(|owner| conflict("Conflict", format!("{id} belongs to {owner}; left to it")))
    };
    match index.records.get(lower.as_str()) {
        Some(record) => match record.owner.as_deref() {
            Some(owner) if owner == me => match record.fingerprint == wanted {
                true => Step::Ready,
                false => Step::Update { etag: record.etag.clone() },
            },
            Some(owner) => conflict(
                "Conflict",
                format!("{id} belongs to IndividualEnrollmentSet {owner}, which made it in DPS; left to it"),
            ),
            None => owned_by_resource().unwrap_or_else(|| {
                conflict(
                    "AlreadyExists",
                    format!("DPS already has an individual enrollment {id} that this set did not make; left as it is"),
                )
            }),
        },
        None => match others.earlier.get(lower.as_str()) {
            Some(set) => {
                conflict("Conflict", format!("{id} is listed first by IndividualEnrollmentSet {set}; left to it"))
            }
            None => owned_by_resource().unwrap_or(Step::Create),
        },
    }
}

/// The enrollments this set made that it no longer lists (`listed`: its ids, lower-case, sorted).
pub fn removed<'a>(index: &'a Index, me: &str, listed: &[Box<str>]) -> Vec<&'a str> {
    let mut gone: Vec<&str> = index
        .records
        .iter()
        .filter(|(id, record)| record.owner.as_deref() == Some(me) && listed.binary_search(id).is_err())
        .map(|(id, _)| &**id)
        .collect();
    gone.sort_unstable();
    gone
}

/// The members by state, and the first failures by id.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    pub counts: MemberCounts,
    pub failures: Vec<MemberFailure>,
}

impl Tally {
    pub fn new(members: usize) -> Self {
        Self { counts: MemberCounts { members: members as u32, ..Default::default() }, failures: Vec::new() }
    }

    pub fn ready(&mut self) {
        self.counts.ready += 1;
    }

    pub fn pending(&mut self) {
        self.counts.pending += 1;
    }

    pub fn conflict(&mut self, failure: MemberFailure) {
        self.counts.conflicts += 1;
        self.note(failure);
    }

    pub fn failed(&mut self, failure: MemberFailure) {
        self.counts.failed += 1;
        self.note(failure);
    }

    /// Counts the outcome of the writes of the members pending.
    pub fn settle(&mut self, written: &Written) {
        for _ in &written.written {
            self.counts.pending -= 1;
            self.counts.ready += 1;
        }
        for failure in &written.failures {
            self.counts.pending -= 1;
            self.failed(failure.clone());
        }
    }

    /// Keeps the failures of the lowest ids, at most [`MAX_REPORTED_FAILURES`], whatever order
    /// they come in: the status stays the same from pass to pass.
    fn note(&mut self, failure: MemberFailure) {
        let at = self.failures.partition_point(|f| f.registration_id < failure.registration_id);
        if at < MAX_REPORTED_FAILURES {
            self.failures.insert(at, failure);
            self.failures.truncate(MAX_REPORTED_FAILURES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::enrollment_set::index::Record;

    fn index(records: &[(&str, u64, Option<&str>)]) -> Index {
        let mut index = Index::default();
        for &(id, fingerprint, owner) in records {
            let owner = owner.map(|o| index.owner(o));
            index.records.insert(id.into(), Record { etag: Some("\"e\"".into()), fingerprint, owner });
        }
        index
    }

    fn nobody(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn members_are_created_updated_or_left_by_what_dps_holds_and_who_made_it() {
        let index =
            index(&[("same", 1, Some("iot/a")), ("changed", 1, Some("iot/a")), ("b-s", 1, Some("iot/b"))]);
        let earlier = HashMap::new();
        let others = Others { earlier: &earlier, resource: &nobody };
        assert_eq!(step("Same", 1, "iot/a", &index, &others), Step::Ready);
        assert_eq!(step("changed", 2, "iot/a", &index, &others), Step::Update { etag: Some("\"e\"".into()) });
        assert_eq!(step("new", 2, "iot/a", &index, &others), Step::Create);
        let Step::Conflict(failure) = step("b-s", 1, "iot/a", &index, &others) else {
            panic!("not a conflict")
        };
        assert_eq!(failure.reason, "Conflict");
        assert_eq!(
            failure.message,
            "b-s belongs to IndividualEnrollmentSet iot/b, which made it in DPS; left to it"
        );
    }

    #[test]
    fn unmarked_enrollments_and_ids_listed_first_elsewhere_are_not_taken() {
        let index = index(&[("hand-made", 1, None), ("resource-made", 1, None)]);
        let earlier = HashMap::from([(Box::from("listed-first"), Arc::from("iot/old"))]);
        let resource = |id: &str| {
            (id == "resource-made" || id == "claimed").then(|| "IndividualEnrollment iot/device-7".to_owned())
        };
        let others = Others { earlier: &earlier, resource: &resource };
        let reason = |id: &str| match step(id, 1, "iot/a", &index, &others) {
            Step::Conflict(failure) => format!("{}: {}", failure.reason, failure.message),
            other => format!("{other:?}"),
        };
        assert_eq!(
            reason("hand-made"),
            "AlreadyExists: DPS already has an individual enrollment hand-made that this set did not make; left as it is"
        );
        assert_eq!(
            reason("resource-made"),
            "Conflict: resource-made belongs to IndividualEnrollment iot/device-7; left to it"
        );
        assert_eq!(
            reason("claimed"),
            "Conflict: claimed belongs to IndividualEnrollment iot/device-7; left to it"
        );
        assert_eq!(
            reason("listed-first"),
            "Conflict: listed-first is listed first by IndividualEnrollmentSet iot/old; left to it"
        );
    }

    #[test]
    fn only_this_sets_enrollments_no_longer_listed_are_removed() {
        let index =
            index(&[("kept", 1, Some("iot/a")), ("gone", 1, Some("iot/a")), ("theirs", 1, Some("iot/b"))]);
        assert_eq!(removed(&index, "iot/a", &["kept".into()]), ["gone"]);
    }

    #[test]
    fn a_pass_writes_what_differs_up_to_its_limit_and_removes_what_is_no_longer_listed() {
        let index = index(&[("a", 1, Some("iot/s")), ("b", 1, Some("iot/s")), ("gone", 1, Some("iot/s"))]);
        let members: Vec<Member> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| Member {
                registration_id: (*id).into(),
                device_id: None,
                endorsement_key: None,
                certificate: None,
                provisioning_status: None,
                line: 1,
            })
            .collect();
        let listed: Vec<Box<str>> = members.iter().map(|m| m.registration_id.clone()).collect();
        let earlier = HashMap::new();
        let inputs = |limit| Inputs {
            members: &members,
            listed: &listed,
            me: "iot/s",
            others: Others { earlier: &earlier, resource: &nobody },
            remove: true,
            limit,
            attestation: AttestationType::SymmetricKey,
        };
        // a is as listed, b changed; c and d are new.
        let build = |m: &Member| {
            let wanted = if &*m.registration_id == "b" { 2 } else { 1 };
            Ok((
                IndividualEnrollment { registration_id: m.registration_id.to_string(), ..Default::default() },
                wanted,
            ))
        };
        let all = plan(&inputs(100), &index, build);
        assert_eq!(
            all.tally.counts,
            MemberCounts { members: 4, ready: 1, pending: 3, failed: 0, conflicts: 0 }
        );
        assert_eq!(all.writes.updates.iter().map(|r| r.etag.as_deref()).collect::<Vec<_>>(), [Some("\"e\"")]);
        assert_eq!(all.writes.creates.len(), 2);
        assert_eq!(all.writes.deletes, [Box::from("gone")]);
        assert!(!all.more);
        let some = plan(&inputs(2), &index, build);
        assert_eq!((some.writes.count(), some.tally.counts.pending, some.more), (2, 3, true));
        assert!(some.writes.deletes.is_empty());
        // deletionPolicy: Orphan leaves what left the list in DPS.
        let orphan = plan(&Inputs { remove: false, ..inputs(100) }, &index, build);
        assert!(orphan.writes.deletes.is_empty());
    }

    #[test]
    fn the_tally_names_the_lowest_ids_and_counts_the_rest() {
        let mut tally = Tally::new(30);
        for n in (0..20).rev() {
            let failure = MemberFailure {
                registration_id: format!("d-{n:02}"),
                reason: "R".into(),
                message: "m".into(),
            };
            if n % 2 == 0 { tally.failed(failure) } else { tally.conflict(failure) }
        }
        tally.ready();
        assert_eq!(
            tally.counts,
            MemberCounts { members: 30, ready: 1, pending: 0, failed: 10, conflicts: 10 }
        );
        let ids: Vec<_> = tally.failures.iter().map(|f| f.registration_id.as_str()).collect();
        assert_eq!(ids, ["d-00", "d-01", "d-02", "d-03", "d-04", "d-05", "d-06", "d-07", "d-08", "d-09"]);
    }
}
