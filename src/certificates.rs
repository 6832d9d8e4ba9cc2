//! Reading X.509 certificates in the forms DPS accepts (PEM text, base64 of DER, base64 of PEM)
//! and the facts DPS reports about them.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("no certificate found: expected PEM, or base64 of DER or PEM")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
}

/// What DPS reports about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Subject, most specific part first, as .NET prints it: `CN=device, O=Contoso, C=US`.
    pub subject: String,
    pub issuer: String,
    /// Upper-case hex.
    pub sha1_thumbprint: String,
    /// Upper-case hex.
    pub sha256_thumbprint: String,
    /// Upper-case hex.
    pub serial_number: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    /// X.509 version: 1, 2 or 3.
    pub version: i32,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
}

/// The DER of the first certificate in `text`: PEM (a chain is fine), base64 of DER, or base64
/// of PEM.
pub fn first_certificate_der(text: &str) -> Result<Vec<u8>, CertificateError> {
    if let Some(der) = first_pem_certificate(text.as_bytes()) {
        return Ok(der);
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let decoded = BASE64.decode(compact).map_err(|_| CertificateError::NotFound)?;
    if let Some(der) = first_pem_certificate(&decoded) {
        return Ok(der);
    }
    // DER starts with a SEQUENCE.
    if decoded.first() == Some(&0x30) { Ok(decoded) } else { Err(CertificateError::NotFound) }
}

fn first_pem_certificate(bytes: &[u8]) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(bytes).next()?.ok().map(|der| der.to_vec())
}

/// `der` as one PEM certificate.
pub fn pem(der: &[u8]) -> String {
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", BASE64.encode(der))
}

/// Reads the facts DPS reports from a certificate in any accepted form.
pub fn read(text: &str) -> Result<CertificateFacts, CertificateError> {
    facts(&first_certificate_der(text)?)
}

/// Reads the facts DPS reports from DER.
pub fn facts(der: &[u8]) -> Result<CertificateFacts, CertificateError> {
    let (rest, certificate) =
        // The parser's own errors (`Parsing Error: NomError(Eof)`) say nothing to a user.
        X509Certificate::from_der(der).map_err(|error| {
            CertificateError::Invalid(match error {
                x509_parser::nom::Err::Incomplete(_) => "the data ends before the certificate does".into(),
                _ => "the data is not a well-formed X.509 certificate".into(),
            })
        })?;
    if !rest.is_empty() {
        return Err(CertificateError::Invalid("trailing data after the certificate".into()));
    }
    let timestamp = |t: x509_parser::time::ASN1Time| {
        jiff::Timestamp::from_second(t.timestamp()).map_err(|e| CertificateError::Invalid(e.to_string()))
    };
    let common_name =
        certificate.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    Ok(CertificateFacts {
        subject: dotnet_name(certificate.subject()),
        issuer: dotnet_name(certificate.issuer()),
        sha1_thumbprint: hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref()),
        sha256_thumbprint: hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()),
        serial_number: hex(certificate.raw_serial()),
        not_before: timestamp(certificate.validity().not_before)?,
        not_after: timestamp(certificate.validity().not_after)?,
        version: certificate.version().0 as i32 + 1,
        common_name,
    })
}

/// A distinguished name the way .NET (and so DPS) prints it: relative names in reverse order,
/// `SHORT=value` joined by `, `.
fn dotnet_name(name: &X509Name<'_>) -> String {
    let oid_registry = x509_parser::oid_registry::OidRegistry::default().with_x509();
    let mut parts: Vec<String> = name
        .iter()
        .flat_map(|rdn| rdn.iter())
        .map(|attribute| {
            let oid = attribute.attr_type();
            let short = match oid.to_id_string().as_str() {
                "2.5.4.3" => "CN".to_owned(),
                "2.5.4.6" => "C".to_owned(),
                "2.5.4.7" => "L".to_owned(),
                "2.5.4.8" => "S".to_owned(),
                "2.5.4.10" => "O".to_owned(),
                "2.5.4.11" => "OU".to_owned(),
                "1.2.840.113549.1.9.1" => "E".to_owned(),
                other => oid_registry
                    .get(oid)
                    .map(|entry| entry.sn().to_owned())
                    .unwrap_or_else(|| format!("OID.{other}")),
            };
            let value = attribute.as_str().map(str::to_owned).unwrap_or_else(|_| hex(attribute.as_slice()));
            format!("{short}={value}")
        })
        .collect();
    parts.reverse();
    parts.join(", ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn certificate() -> rcgen::Certificate {
        let mut params = CertificateParams::new(vec!["device-01".into()]).unwrap();
        let mut name = DistinguishedName::new();
        name.push(DnType::CountryName, "US");
        name.push(DnType::OrganizationName, "Contoso");
        name.push(DnType::CommonName, "device-01");
        params.distinguished_name = name;
        params.serial_number = Some(vec![0x01, 0xAB, 0xCD].into());
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2027, 1, 1);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap()
    }

    #[test]
    fn every_accepted_encoding_gives_the_same_facts() {
        let certificate = certificate();
        let pem = certificate.pem();
        let chain = format!("{pem}{}", self::certificate().pem());
        let encodings = [pem.clone(), chain, BASE64.encode(certificate.der()), BASE64.encode(pem.as_bytes())];
        let expected = read(&pem).unwrap();
        for encoding in &encodings {
            assert_eq!(read(encoding).unwrap(), expected);
        }
        assert_eq!(expected.subject, "CN=device-01, O=Contoso, C=US");
        assert_eq!(expected.issuer, expected.subject);
        assert_eq!(expected.serial_number, "01ABCD");
        assert_eq!(expected.version, 3);
        assert_eq!(expected.common_name.as_deref(), Some("device-01"));
        assert_eq!(expected.not_before.to_string(), "2026-01-01T00:00:00Z");
        assert_eq!(expected.not_after.to_string(), "2027-01-01T00:00:00Z");
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, certificate.der()).as_ref());
        assert_eq!(expected.sha256_thumbprint, sha256);
        assert_eq!(expected.sha1_thumbprint.len(), 40);
    }

    #[test]
    fn non_certificates_are_refused() {
        assert_eq!(read("gkozpt"), Err(CertificateError::NotFound));
        assert_eq!(read(""), Err(CertificateError::NotFound));
        let garbage = read(&BASE64.encode([0x30, 0x03, 0x02, 0x01, 0x01])).unwrap_err();
        assert!(matches!(garbage, CertificateError::Invalid(_)));
        assert_eq!(
            garbage.to_string(),
            "the data is not a well-formed X.509 certificate",
            "no parser internals"
        );
        let key_only = KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(read(&key_only), Err(CertificateError::NotFound));
    }
}
