//! The status a pass leaves: a pure function of the status before, the spec's generation and what
//! the pass did.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{converge::Done, mode::WriteMode, outcome::Synced};
use crate::{
    api::{self, AttestationKind, CertificateInfo, CertificatesStatus, EnrollmentStatus},
    controller::{
        Error,
        conditions::{self, CERTIFICATE_EXPIRING_SOON, Observation, READY, RECONCILING, STALLED},
        desired::{DpsRecord, ResolvedCertificate, Rollover},
        error::describe,
        kinds::{EnrollmentKind, Registrations},
    },
    dps,
    metrics::EnrollmentFacts,
};

/// What a pass's status is made from besides its outcome.
pub struct Facts<'a> {
    pub id: &'a str,
    pub generation: Option<i64>,
    pub attestation: Option<AttestationKind>,
    /// The write mode shown (paused when the annotation cannot be read).
    pub mode: WriteMode,
    pub now: &'a Time,
    /// How long before a certificate expires it is reported.
    pub expiry_warning: Duration,
}

/// The enrollment status after a pass with `result`, from `old` (the status as the pass recorded
/// it, claims included).
pub fn enrollment_status<K: EnrollmentKind>(
    old: &EnrollmentStatus,
    facts: &Facts<'_>,
    result: &Result<Synced<K::Record>, Error>,
) -> EnrollmentStatus {
    let mut status = EnrollmentStatus {
        observed_generation: facts.generation,
        attestation: facts.attestation,
        ..old.clone()
    };
    let mut observations = match result {
        Err(error) => conditions::outcome(Err((error.reason(), error.is_stalled())), &describe(error)),
        Ok(synced) => {
            record_outcome(&mut status, synced);
            observations::<K>(synced, facts)
        }
    };
    observations.extend(expiry(status.certificates.as_deref(), facts.now, facts.expiry_warning));
    status.conditions = conditions::update(&old.conditions, &observations, facts.generation, facts.now);
    status
}

/// Whether `status` says DPS holds the enrollment as it should, and its Ready reason.
pub fn readiness(status: &EnrollmentStatus) -> (bool, &str) {
    let ready = status.conditions.iter().find(|c| c.type_ == READY);
    (ready.is_some_and(|c| c.status == "True"), ready.map_or("Unknown", |c| c.reason.as_str()))
}

/// What `synced` found, in the status: the record's etag and times, the Secrets' digest, the
/// certificates, the drift reported and the claim.
fn record_outcome<R: DpsRecord>(status: &mut EnrollmentStatus, synced: &Synced<R>) {
    if let Some(record) = &synced.record {
        status.etag = record.etag().map(str::to_owned);
        status.provisioning_status = Some(match record.comparable().provisioning_status {
            dps::models::ProvisioningStatus::Enabled => api::ProvisioningStatus::Enabled,
            dps::models::ProvisioningStatus::Disabled => api::ProvisioningStatus::Disabled,
        });
        status.created_time = record.created().map(|t| Time(t.0));
        status.last_updated_time = record.updated().map(|t| Time(t.0));
    }
    if matches!(synced.done, Done::Reported { missing: true, .. }) {
        status.etag = None;
    }
    if !matches!(synced.done, Done::Reported { .. }) {
        status.secrets_digest = synced.digest.clone();
    }
    status.keys = synced.keys.clone().map(Box::new);
    status.certificates =
        synced.certificates.as_ref().map(|pair| Box::new(certificates(pair, synced.rollover.as_ref())));
    status.drift = match &synced.done {
        Done::Reported { drift, .. } => drift.iter().map(|d| d.to_string()).collect(),
        _ => Vec::new(),
    };
    status.deletion_protected = synced.protected.then_some(true);
    if synced.owned {
        status.claimed = Some(true);
        status.create_pending = None;
        status.claimed_host = Some(synced.host.clone());
    }
}

/// The conditions of a pass that did what its mode allows.
fn observations<K: EnrollmentKind>(synced: &Synced<K::Record>, facts: &Facts<'_>) -> Vec<Observation> {
    let (host, what, id) = (&synced.host, K::WHAT, facts.id);
    let held = format!("DPS at {host} holds {what} {id} as specified.");
    let reason = facts.mode.in_sync_reason();
    let why = facts.mode.why_not_written();
    let (ready, message) = match &synced.done {
        Done::Reported { missing: true, .. } => {
            (false, format!("DPS at {host} has no {what} {id}; not created because {why}."))
        }
        Done::Reported { drift, .. } if !drift.is_empty() => (
            false,
            format!("DPS differs from the spec in {}; not corrected because {why}.", drift.join(", ")),
        ),
        Done::Reported { .. } => (true, format!("{held} Nothing is written because {why}.")),
        _ if facts.mode != WriteMode::Manage => (true, format!("{held} Nothing is written because {why}.")),
        _ => return conditions::outcome(Ok(reason), &held),
    };
    if !matches!(synced.done, Done::Reported { .. }) {
        return conditions::outcome(Ok(reason), &message);
    }
    vec![
        Observation::new(READY, ready, reason, message.clone()),
        Observation::new(RECONCILING, false, reason, message.clone()),
        Observation::new(STALLED, false, reason, message),
    ]
}

/// `CertificateExpiringSoon`, when the status lists certificates: true while one of them expires
/// within `warning` of `now`.
fn expiry(certificates: Option<&CertificatesStatus>, now: &Time, warning: Duration) -> Option<Observation> {
    let soon: Vec<String> = in_use(certificates?)
        .filter_map(|(slot, info)| {
            let info = info?;
            let remaining = info.not_after.0.duration_since(now.0);
            (remaining.as_secs() < warning.as_secs() as i64)
                .then(|| format!("the {slot} certificate {} expires on {}", info.subject, info.not_after.0))
        })
        .collect();
    Some(if soon.is_empty() {
        Observation::new(
            CERTIFICATE_EXPIRING_SOON,
            false,
            "CertificatesValid",
            "No certificate expires soon.",
        )
    } else {
        Observation::new(
            CERTIFICATE_EXPIRING_SOON,
            true,
            CERTIFICATE_EXPIRING_SOON,
            format!("{}.", soon.join("; ")),
        )
    })
}

/// The certificates in the status; when they roll over, which is current, the PEM of each (the
/// next rollover's previous certificate is taken from it), and how long the previous one stays.
fn certificates(
    (primary, secondary): &(ResolvedCertificate, Option<ResolvedCertificate>),
    rollover: Option<&Rollover>,
) -> CertificatesStatus {
    let Some(rollover) = rollover else {
        return CertificatesStatus {
            primary: Some(primary.info()),
            secondary: secondary.as_ref().map(ResolvedCertificate::info),
            ..Default::default()
        };
    };
    let kept = |certificate: &ResolvedCertificate, current: bool| CertificateInfo {
        current: Some(current),
        pem: Some(certificate.pem.clone()),
        ..certificate.info()
    };
    let previous = rollover.previous.as_ref();
    CertificatesStatus {
        primary: Some(kept(primary, true)),
        secondary: previous.map(|p| kept(&p.certificate, false)),
        rolled_over_time: previous.map(|p| Time(p.since)),
        previous_until: previous.map(|p| Time(p.until)),
    }
}

/// The resource's status after a pass that left `enrollment`, and whether it is worth a write:
/// registrations and device keys the pass did not look at stay as they were.
pub fn resource_status<K: EnrollmentKind>(
    old: Option<&K::Status>,
    enrollment: EnrollmentStatus,
    id: &str,
    result: &Result<Synced<K::Record>, Error>,
) -> (K::Status, bool) {
    let synced = result.as_ref().ok();
    let registrations = match synced {
        Some(synced) if synced.registrations != Registrations::Unknown => synced.registrations.clone(),
        _ => old.map_or(Registrations::Unknown, K::registrations),
    };
    let device_keys = synced
        .and_then(|synced| synced.device_keys.clone())
        .unwrap_or_else(|| old.and_then(K::device_keys_status).cloned());
    let blocked = synced
        .and_then(|synced| synced.blocked.clone())
        .unwrap_or_else(|| old.map(K::blocked_status).unwrap_or_default().to_vec());
    let make_status = |enrollment, registrations| {
        let mut status = K::make_status(enrollment, id.to_owned(), registrations);
        K::set_device_keys(&mut status, device_keys.clone());
        K::set_blocked(&mut status, blocked.clone());
        status
    };
    let old_enrollment = old.map(K::enrollment_status);
    // A status without an etag (created in bulk, whose answers carry none) gets it, and DPS's
    // times, with its next write for another reason: filling them in alone would cost a write
    // per enrollment at the first check, and at every restart.
    let only_filled_in = old_enrollment.is_some_and(|old_enrollment| {
        old_enrollment.etag.is_none() && {
            let bare = EnrollmentStatus {
                etag: None,
                created_time: old_enrollment.created_time.clone(),
                last_updated_time: old_enrollment.last_updated_time.clone(),
                ..enrollment.clone()
            };
            old == Some(&make_status(bare, registrations.clone()))
        }
    });
    let status = make_status(enrollment, registrations);
    let worth_writing = old != Some(&status) && !only_filled_in;
    (status, worth_writing)
}

/// The certificates devices are meant to use, by slot: not a previous one kept after a rollover,
/// which is on its way out (its expiry is no news).
fn in_use(
    certificates: &CertificatesStatus,
) -> impl Iterator<Item = (&'static str, Option<&CertificateInfo>)> {
    let slots = [("primary", certificates.primary.as_ref()), ("secondary", certificates.secondary.as_ref())];
    slots.into_iter().filter(|(_, info)| info.is_none_or(|info| info.current != Some(false)))
}

/// What the per-enrollment metrics show of a pass that left `status`: the certificates in use,
/// the generated key's age and next rotation, and a group's registrations (this pass's, else the
/// status's before it).
pub fn metric_facts<K: EnrollmentKind>(
    status: &EnrollmentStatus,
    old: Option<&K::Status>,
    result: &Result<Synced<K::Record>, Error>,
) -> EnrollmentFacts {
    let slots = status.certificates.as_deref().into_iter().flat_map(in_use);
    let keys = status.keys.as_deref();
    let registrations = match result {
        Ok(Synced { registrations: Registrations::Group(summary), .. }) => Some(summary.clone()),
        _ => match old.map(K::registrations) {
            Some(Registrations::Group(summary)) => Some(summary),
            _ => None,
        },
    };
    let by_status = |s: api::RegistrationSummary| {
        vec![
            ("assigned", s.assigned),
            ("assigning", s.assigning),
            ("unassigned", s.unassigned),
            ("failed", s.failed),
            ("disabled", s.disabled),
        ]
    };
    EnrollmentFacts {
        certificates: slots.filter_map(|(slot, info)| Some((slot, info?.not_after.0))).collect(),
        key_made: keys.and_then(|keys| keys.active_key_time.as_ref()).map(|t| t.0),
        rotation_due: keys.and_then(|keys| keys.next_rotation_time.as_ref()).map(|t| t.0),
        registrations: registrations.map(by_status).unwrap_or_default(),
    }
}
