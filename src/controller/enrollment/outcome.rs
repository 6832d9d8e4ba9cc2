//! What a pass did and found, which the status and the events are made from.

use std::time::Duration;

use super::converge::Done;
use crate::{
    api::DeviceKeysStatus,
    controller::{desired::ResolvedCertificate, kinds::Registrations},
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
    pub registrations: Registrations,
    /// The group's device keys Secret as this pass left it; `None` when it was not looked at.
    pub device_keys: Option<Option<DeviceKeysStatus>>,
    pub host: String,
    /// Whether the enrollment is now this resource's on `host`, confirmed by DPS.
    pub owned: bool,
    /// When to look at DPS again.
    pub next_check: Duration,
}
