//! X.509 device authentication as DPS does it: from the leaf a device presents, through the
//! intermediates it presents (in any order), up to a certificate DPS trusts for an enrollment: a
//! group's signing certificate (root or intermediate) or a verified CA certificate the group
//! references (learn.microsoft.com/azure/iot-dps/concepts-x509-attestation, "DPS device chain
//! requirements"). Each link is checked: issuer name, signature, validity, and CA constraints for
//! every issuer.

use x509_parser::{certificate::X509Certificate, prelude::FromDer, time::ASN1Time};

/// The most certificates a chain may have between the leaf and the trusted certificate.
const MAX_INTERMEDIATES: usize = 8;

/// Parsed certificates, DER kept alongside.
pub struct Parsed<'a> {
    pub der: &'a [u8],
    pub certificate: X509Certificate<'a>,
}

/// Parses DER certificates; the error is the index of the first one that is not a certificate.
pub fn parse(ders: &[Vec<u8>]) -> Result<Vec<Parsed<'_>>, usize> {
    ders.iter()
        .enumerate()
        .map(|(index, der)| {
            X509Certificate::from_der(der)
                .map(|(_, certificate)| Parsed { der, certificate })
                .map_err(|_| index)
        })
        .collect()
}

/// Whether the leaf (`presented[0]`) chains up to `trusted` at `at`, through certificates of
/// `presented`. The trusted certificate may also be among those presented.
pub fn reaches(presented: &[Parsed<'_>], trusted: &Parsed<'_>, at: ASN1Time) -> bool {
    let Some(leaf) = presented.first() else { return false };
    if !leaf.certificate.validity().is_valid_at(at) || !usable_issuer(trusted, at) {
        return false;
    }
    let mut current = leaf;
    let mut used = vec![false; presented.len()];
    used[0] = true;
    for _ in 0..=MAX_INTERMEDIATES {
        if issued_by(current, trusted) {
            return true;
        }
        let next = presented.iter().enumerate().find(|(index, candidate)| {
            !used[*index] && usable_issuer(candidate, at) && issued_by(current, candidate)
        });
        let Some((index, next)) = next else { return false };
        if next.der == trusted.der {
            return true;
        }
        used[index] = true;
        current = next;
    }
    false
}

/// `child` names `parent` as its issuer and carries its signature.
fn issued_by(child: &Parsed<'_>, parent: &Parsed<'_>) -> bool {
    child.certificate.issuer().as_raw() == parent.certificate.subject().as_raw()
        && child.certificate.verify_signature(Some(parent.certificate.public_key())).is_ok()
}

/// A certificate that may issue others: valid now, and a CA by its basic constraints.
fn usable_issuer(issuer: &Parsed<'_>, at: ASN1Time) -> bool {
    let is_ca =
        matches!(issuer.certificate.basic_constraints(), Ok(Some(constraints)) if constraints.value.ca);
    is_ca && issuer.certificate.validity().is_valid_at(at)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    use super::*;

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        der: Vec<u8>,
    }

    fn params(name: &str, ca: bool) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params
    }

    fn root(name: &str) -> Ca {
        let (params, key) = (params(name, true), KeyPair::generate().unwrap());
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { issuer: Issuer::new(params, key), der }
    }

    fn intermediate(name: &str, by: &Ca) -> Ca {
        let (params, key) = (params(name, true), KeyPair::generate().unwrap());
        let der = params.signed_by(&key, &by.issuer).unwrap().der().to_vec();
        Ca { issuer: Issuer::new(params, key), der }
    }

    fn leaf(name: &str, by: &Ca, ca: bool) -> Vec<u8> {
        params(name, ca).signed_by(&KeyPair::generate().unwrap(), &by.issuer).unwrap().der().to_vec()
    }

    fn chains(presented: &[&Vec<u8>], trusted: &[u8]) -> bool {
        let presented: Vec<Vec<u8>> = presented.iter().map(|der| der.to_vec()).collect();
        let trusted = vec![trusted.to_vec()];
        let (presented, trusted) = (parse(&presented).unwrap(), parse(&trusted).unwrap());
        reaches(&presented, &trusted[0], ASN1Time::now())
    }

    #[test]
    fn a_leaf_reaches_a_root_or_an_intermediate_through_what_it_presents() {
        let top = root("Root");
        let middle = intermediate("Intermediate", &top);
        let sibling = intermediate("Other", &top);
        let direct = leaf("direct", &top, false);
        let below = leaf("below", &middle, false);

        assert!(chains(&[&direct], &top.der), "a leaf alone, signed by the root");
        assert!(chains(&[&below], &middle.der), "a leaf alone, signed by the intermediate");
        assert!(chains(&[&below, &middle.der], &top.der), "leaf and intermediate to the root");
        assert!(chains(&[&below, &middle.der, &top.der], &top.der), "the whole chain");
        assert!(!chains(&[&below], &top.der), "the intermediate is missing");
        assert!(!chains(&[&below, &middle.der], &sibling.der), "a sibling");
    }

    #[test]
    fn intermediates_may_come_in_any_order_and_strangers_are_skipped() {
        let top = root("Root");
        let first = intermediate("First", &top);
        let second = intermediate("Second", &first);
        let below = leaf("below", &second, false);
        let stranger = root("Root").der;
        assert!(chains(&[&below, &first.der, &stranger, &second.der], &top.der));
    }

    #[test]
    fn a_name_without_the_signature_does_not_chain() {
        let real = root("Root");
        let impostor = root("Root");
        let forged = leaf("forged", &impostor, false);
        assert!(!chains(&[&forged], &real.der));
        assert!(!chains(&[&forged, &impostor.der], &real.der));
    }

    #[test]
    fn an_issuer_that_is_not_a_ca_does_not_chain() {
        let root = root("Root");
        let not_ca_params = params("Not a CA", false);
        let key = KeyPair::generate().unwrap();
        let not_ca_der = not_ca_params.signed_by(&key, &root.issuer).unwrap().der().to_vec();
        let not_ca = Ca { issuer: Issuer::new(not_ca_params, key), der: not_ca_der };
        let below = leaf("below", &not_ca, false);
        assert!(!chains(&[&below, &not_ca.der], &root.der), "through a non-CA intermediate");
        assert!(!chains(&[&below], &not_ca.der), "to a non-CA trusted certificate");
    }

    #[test]
    fn expired_certificates_do_not_chain() {
        let root = root("Root");
        let mut expired = params("expired", false);
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let expired = expired.signed_by(&KeyPair::generate().unwrap(), &root.issuer).unwrap().der().to_vec();
        assert!(!chains(&[&expired], &root.der));
        assert!(chains(&[&leaf("fresh", &root, false)], &root.der));
    }
}
