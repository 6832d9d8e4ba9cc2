//! One owner per enrollment: before a pass reads or writes DPS, its resource takes the
//! enrollment's entry in the register of owners, or is refused because another holds it.

use kube::ResourceExt;

use crate::{
    api::EnrollmentStatus,
    controller::{
        Error,
        events::Events,
        kinds::EnrollmentKind,
        names::resource_name,
        ownership::{ClaimKey, Owner, Owners, Ownership, claim_elsewhere, drop_claim, ownership},
    },
    dps,
};

/// Takes `object`'s place as the owner of its enrollment on `host` when it may write or holds a
/// claim there, and answers how far the enrollment is its own. A claim on another DPS (the
/// connection moved) is dropped, with an event: the enrollment left there is never touched again.
pub async fn take<K: EnrollmentKind>(
    object: &K,
    host: &str,
    may_write: bool,
    recorded: &mut EnrollmentStatus,
    owners: &Owners,
    events: &Events,
) -> Result<Ownership, Error> {
    let id = object.dps_id();
    if let Some(elsewhere) = claim_elsewhere(recorded, host) {
        let note = format!(
            "The connection now points at DPS at {host}: {} {id} at {elsewhere} is left there untouched, and \
             is not deleted with this resource.",
            K::WHAT
        );
        events.publish(object, true, "ConnectionMoved", note).await;
        drop_claim(recorded);
    }
    let ownership = ownership(recorded, host);
    let me = Owner {
        uid: object.uid().unwrap_or_default().into(),
        name: resource_name(object).into(),
        confirmed: ownership == Ownership::Owned,
        created: object.meta().creation_timestamp.as_ref().map(|t| t.0),
    };
    let key = ClaimKey::new(host, <K::Record as dps::Enrollment>::COLLECTION, &id);
    if (may_write || ownership != Ownership::None)
        && let Err(holder) = owners.acquire(key, me)
    {
        drop_claim(recorded);
        return Err(Error::OwnedByAnother {
            what: K::WHAT,
            id,
            host: host.to_owned(),
            owner: holder.name.into(),
        });
    }
    Ok(ownership)
}
