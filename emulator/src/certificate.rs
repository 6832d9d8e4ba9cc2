//! What DPS reports about an uploaded certificate (`X509CertificateInfo`), read here on its own so
//! that the conformance tests can pin it to what `openssl x509` reads from the same certificate.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};
use x509_parser::{certificate::X509Certificate, pem::Pem, prelude::FromDer, x509::X509Name};

/// The certificate's facts as DPS's `X509CertificateInfo`, and when it stops being valid.
pub struct Info {
    pub json: Value,
    pub not_after: jiff::Timestamp,
}

/// Reads the first certificate of `text`, sent as DPS takes it: PEM, base64 of DER, or base64 of
/// PEM.
pub fn info(text: &str) -> Result<Info, String> {
    let der = der(text).ok_or("expected a PEM certificate, or base64 of DER or PEM")?;
    let (rest, certificate) = X509Certificate::from_der(&der)
        .map_err(|_| "it is not a well-formed X.509 certificate".to_owned())?;
    if !rest.is_empty() {
        return Err("there is data after the certificate".into());
    }
    let time = |t: x509_parser::time::ASN1Time| {
        jiff::Timestamp::from_second(t.timestamp()).map_err(|_| "its validity is out of range".to_owned())
    };
    let validity = certificate.validity();
    let (not_before, not_after) = (time(validity.not_before)?, time(validity.not_after)?);
    let json = json!({
        "subjectName": distinguished_name(certificate.subject()),
        "sha1Thumbprint": thumbprint(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der),
        "sha256Thumbprint": thumbprint(&ring::digest::SHA256, &der),
        "issuerName": distinguished_name(certificate.issuer()),
        "notBeforeUtc": crate::whole_seconds(not_before),
        "notAfterUtc": crate::whole_seconds(not_after),
        "serialNumber": upper_hex(certificate.raw_serial()),
        "version": certificate.version().0 + 1,
    });
    Ok(Info { json, not_after })
}

/// A certificate's thumbprint as DPS writes it: upper-case hex of the digest of its DER.
pub fn thumbprint(algorithm: &'static ring::digest::Algorithm, der: &[u8]) -> String {
    upper_hex(ring::digest::digest(algorithm, der).as_ref())
}

fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The DER of the first certificate of `text` (PEM, base64 of DER, or base64 of PEM).
pub fn der(text: &str) -> Option<Vec<u8>> {
    let first_pem = |bytes: &[u8]| {
        Pem::iter_from_buffer(bytes)
            .find_map(|pem| pem.ok().filter(|p| p.label == "CERTIFICATE"))
            .map(|p| p.contents)
    };
    if text.contains("-----BEGIN") {
        return first_pem(text.as_bytes());
    }
    let compact: String = text.split_whitespace().collect();
    let decoded = BASE64.decode(compact).ok()?;
    if decoded.starts_with(b"-----BEGIN") { first_pem(&decoded) } else { Some(decoded) }
}

/// A name as .NET's `X500DistinguishedName` (and so DPS) writes it: most specific part first,
/// `CN=device, O=Contoso, C=US`.
fn distinguished_name(name: &X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for attribute in name.iter().flat_map(|rdn| rdn.iter()) {
        let oid = attribute.attr_type().to_id_string();
        // The labels .NET writes; others as `OID.2.5.4.12=…`.
        let label = match oid.as_str() {
            "2.5.4.3" => "CN",
            "2.5.4.6" => "C",
            "2.5.4.7" => "L",
            "2.5.4.8" => "S",
            "2.5.4.9" => "STREET",
            "2.5.4.10" => "O",
            "2.5.4.11" => "OU",
            "2.5.4.5" => "SERIALNUMBER",
            "0.9.2342.19200300.100.1.25" => "DC",
            "1.2.840.113549.1.9.1" => "E",
            _ => "",
        };
        let label = if label.is_empty() { format!("OID.{oid}") } else { label.to_owned() };
        // A value that is not text is written as RFC 4514 does: `#` and the hex of its bytes.
        let value = attribute.as_str().map(str::to_owned).unwrap_or_else(|_| {
            format!("#{}", attribute.as_slice().iter().map(|b| format!("{b:02x}")).collect::<String>())
        });
        parts.push(format!("{label}={value}"));
    }
    parts.reverse();
    parts.join(", ")
}
