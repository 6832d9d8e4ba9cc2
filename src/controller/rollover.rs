//! X.509 rollover, decided here without I/O: when a spec names only a primary certificate and
//! that certificate changes, the previous one takes DPS's secondary slot, so devices whose chain
//! ends at it keep registering, until it expires or the overlap the spec allows ends. DPS never
//! returns certificates, so the previous one is the one the status recorded as current.

use std::time::Duration;

use jiff::Timestamp;

use super::desired::{Previous, ResolvedCertificate};
use crate::{
    api::{CertificateInfo, CertificatesStatus},
    certificates,
};

/// What the secondary slot holds after `current` became the primary, given what the status said
/// before (`old`), the overlap the spec allows (`None`: until the previous one expires) and `now`.
pub fn previous(
    current: &ResolvedCertificate,
    old: Option<&CertificatesStatus>,
    overlap: Option<Duration>,
    now: Timestamp,
) -> Option<Previous> {
    let old = old?;
    let candidate = match old.primary.as_ref() {
        // A new current certificate: the one before it becomes the previous one.
        Some(before) if before.sha256_thumbprint != current.facts.sha256_thumbprint => (before, now),
        // The same: a previous one kept earlier stays, counted from when it was replaced.
        _ => (old.secondary.as_ref().filter(|s| s.current == Some(false))?, old.rolled_over_time.as_ref()?.0),
    };
    let (info, since) = candidate;
    let certificate = resolved(info)?;
    let mut until = certificate.facts.not_after;
    if let Some(overlap) = overlap.and_then(|o| jiff::SignedDuration::try_from(o).ok()) {
        until = until.min(since.checked_add(overlap).ok()?);
    }
    (until > now && info.sha256_thumbprint != current.facts.sha256_thumbprint).then_some(Previous {
        certificate,
        since,
        until,
    })
}

/// The certificate a status recorded, read again from its PEM.
fn resolved(info: &CertificateInfo) -> Option<ResolvedCertificate> {
    let pem = info.pem.clone()?;
    let facts = certificates::read(&pem).ok()?;
    Some(ResolvedCertificate { pem, facts })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::pki::CertificateAuthority;

    fn certificate(name: &str) -> ResolvedCertificate {
        let pem = CertificateAuthority::new(name).unwrap().certificate_pem;
        ResolvedCertificate { facts: certificates::read(&pem).unwrap(), pem }
    }

    fn info(certificate: &ResolvedCertificate, current: Option<bool>) -> CertificateInfo {
        CertificateInfo { current, pem: Some(certificate.pem.clone()), ..certificate.info() }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_changed_primary_keeps_the_one_before_it_until_the_overlap_ends() {
        let (old_ca, new_ca) = (certificate("Line CA 2026"), certificate("Line CA 2027"));
        let before = CertificatesStatus { primary: Some(info(&old_ca, Some(true))), ..Default::default() };
        let rolled = previous(&new_ca, Some(&before), Some(HOUR), at(0)).unwrap();
        assert_eq!(rolled.certificate, old_ca);
        assert_eq!((rolled.since, rolled.until), (at(0), at(3600)));

        // Later passes keep it, counted from the rollover, and drop it once the overlap ended.
        let after = CertificatesStatus {
            primary: Some(info(&new_ca, Some(true))),
            secondary: Some(info(&old_ca, Some(false))),
            rolled_over_time: Some(Time(at(0))),
            previous_until: Some(Time(at(3600))),
        };
        assert_eq!(previous(&new_ca, Some(&after), Some(HOUR), at(1800)), Some(rolled));
        assert_eq!(previous(&new_ca, Some(&after), Some(HOUR), at(3600)), None);
        assert_eq!(previous(&new_ca, Some(&after), Some(Duration::ZERO), at(1)), None, "overlap shortened");
    }

    #[test]
    fn without_an_overlap_the_previous_one_stays_until_it_expires() {
        let (old_ca, new_ca) = (certificate("Line CA 2026"), certificate("Line CA 2027"));
        let before = CertificatesStatus { primary: Some(info(&old_ca, Some(true))), ..Default::default() };
        let rolled = previous(&new_ca, Some(&before), None, at(0)).unwrap();
        assert_eq!(rolled.until, old_ca.facts.not_after);
        let expired = old_ca.facts.not_after.checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
        assert_eq!(previous(&new_ca, Some(&before), None, expired), None);
    }

    #[test]
    fn nothing_rolls_over_without_a_recorded_certificate_or_a_change() {
        let (old_ca, new_ca) = (certificate("Line CA 2026"), certificate("Line CA 2027"));
        assert_eq!(previous(&new_ca, None, None, at(0)), None, "a new enrollment");
        let unchanged = CertificatesStatus { primary: Some(info(&new_ca, Some(true))), ..Default::default() };
        assert_eq!(previous(&new_ca, Some(&unchanged), None, at(0)), None);
        let mut no_pem = info(&old_ca, Some(true));
        no_pem.pem = None;
        let before = CertificatesStatus { primary: Some(no_pem), ..Default::default() };
        assert_eq!(
            previous(&new_ca, Some(&before), None, at(0)),
            None,
            "a status from before PEMs were kept"
        );
        // A secondary the spec named (not a previous one) is never carried over.
        let named = CertificatesStatus {
            primary: Some(info(&new_ca, None)),
            secondary: Some(info(&old_ca, None)),
            ..Default::default()
        };
        assert_eq!(previous(&new_ca, Some(&named), None, at(0)), None);
        // Rolling back to the previous certificate: it is current again, nothing kept beside it.
        let rolled = CertificatesStatus {
            primary: Some(info(&new_ca, Some(true))),
            secondary: Some(info(&old_ca, Some(false))),
            rolled_over_time: Some(Time(at(0))),
            previous_until: None,
        };
        assert_eq!(previous(&old_ca, Some(&rolled), None, at(5)).map(|p| p.certificate), Some(new_ca));
    }
}
