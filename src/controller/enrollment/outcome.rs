//! What a pass did and found, which the status and the events are made from.

use std::time::Duration;

use super::{converge::Done, inputs::Material};
use crate::{
    api::{DeviceKeysStatus, KeysStatus},
    controller::{
        desired::{ResolvedCertificate, Rollover},
        kinds::Registrations,
    },
};

/// What a successful pass did and found.
#[derive(Debug)]
pub struct Synced<R> {
    pub done: Done,
    /// The enrollment as DPS last answered, when this pass read or wrote it.
    pub record: Option<R>,
    /// The digest of the referenced Secrets this pass resolved.
    pub digest: Option<String>,
    pub certificates: Option<(ResolvedCertificate, Option<ResolvedCertificate>)>,
    /// Set when the certificates roll over: the previous one kept, if any.
    pub rollover: Option<Rollover>,
    pub registrations: Registrations,
    /// The group's device keys Secret as this pass left it; `None` when it was not looked at.
    pub device_keys: Option<Option<DeviceKeysStatus>>,
    /// The devices a group blocks, as this pass left them; `None` when it did not look.
    pub blocked: Option<Vec<String>>,
    pub host: String,
    /// Whether the enrollment is now this resource's on `host`, confirmed by DPS.
    pub owned: bool,
    /// The symmetric keys, as the key Secret and this pass left them.
    pub keys: Option<KeysStatus>,
    /// A rotation was asked for keys the operator did not create.
    pub rotation_refused: bool,
    /// Whether deleting the resource is refused (`spec.deletionProtection`, else the connection's).
    pub protected: bool,
    /// When to look at DPS again.
    pub next_check: Duration,
}

impl<R> Synced<R> {
    /// What a pass that did `done` on `host` leaves, its registrations and device keys not looked
    /// at (yet).
    pub fn new(
        done: Done,
        record: Option<R>,
        material: Material<'_, R>,
        host: String,
        owned: bool,
        next_check: Duration,
    ) -> Self {
        Self {
            done,
            record,
            digest: material.digest,
            certificates: material.resolved.certificates,
            rollover: material.resolved.rollover,
            registrations: Registrations::Unknown,
            device_keys: None,
            blocked: None,
            keys: None,
            rotation_refused: false,
            host,
            owned,
            protected: false,
            next_check,
        }
    }
}
