//! The emulator's HTTPS identity: a CA of its own that clients trust, and a serving certificate
//! it signs for the emulator's host names; or a certificate issued elsewhere (Helm, cert-manager).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};

/// Where the emulator's HTTPS certificate comes from.
#[derive(Clone, Debug, Default)]
pub enum ServerCertificate {
    /// Signed by a CA the emulator generates when it starts (`RunningEmulator::ca_certificate`).
    #[default]
    Generated,
    /// Signed by this CA: pass the same one to restart an emulator clients already trust.
    SignedBy(Arc<CertificateAuthority>),
    /// This certificate, issued elsewhere; the emulator does not know its CA.
    Given(Arc<GivenCertificate>),
}

/// A serving certificate chain and its private key, read from PEM.
pub struct GivenCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for GivenCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("GivenCertificate").field("chain_length", &self.chain.len()).finish_non_exhaustive()
    }
}

impl GivenCertificate {
    /// Reads the certificate chain (leaf first) and the private key (PKCS#8, PKCS#1 or SEC1).
    /// Whether the key belongs to the certificate is checked when the emulator starts.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, crate::StartError> {
        let invalid = |what: String| crate::StartError::GivenCertificate(what);
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("the certificate is not valid PEM ({e})")))?;
        if chain.is_empty() {
            return Err(invalid("the certificate file holds no CERTIFICATE".into()));
        }
        // The parser's error names the PEM section, never the key's contents.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid(format!("the key file holds no usable private key ({e})")))?;
        Ok(Self { chain, key })
    }

    pub(crate) fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, crate::StartError> {
        acceptor(self.chain.clone(), self.key.clone_key())
    }
}

/// A certificate authority for the emulator's serving certificate. Pass the same one to restart
/// an emulator that clients already trust.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate clients add to their trust.
    pub certificate_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the signing key.
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let certificate_pem = params.self_signed(&key)?.pem();
        Ok(Self { issuer: Issuer::new(params, key), certificate_pem })
    }

    /// A TLS acceptor serving a certificate for `names` (DNS names or IP addresses), the first
    /// one its common name, over HTTP/2 and HTTP/1.1.
    pub(crate) fn acceptor(&self, names: &[&str]) -> Result<tokio_rustls::TlsAcceptor, crate::StartError> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        let chain = vec![CertificateDer::from(certificate.der().to_vec())];
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        acceptor(chain, key)
    }
}

/// A TLS acceptor serving `chain` over HTTP/2 and HTTP/1.1, asking clients for a certificate
/// (X.509 devices authenticate with theirs) without requiring one.
fn acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<tokio_rustls::TlsAcceptor, crate::StartError> {
    let verifier = Arc::new(AnyClientCertificate {
        algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
    });
    let mut config =
        rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Takes any client certificate whose holder proves it has the key (the handshake signature is
/// verified): which enrollment, if any, the chain belongs to is the device API's to decide, as
/// DPS decides it from its enrollments, not a trust store's.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_certificate_without_its_parts_is_refused_by_name() {
        let ca = CertificateAuthority::new("test CA").unwrap();
        let no_certificate = GivenCertificate::from_pem(b"", b"").unwrap_err().to_string();
        assert!(no_certificate.contains("holds no CERTIFICATE"), "{no_certificate}");
        // A certificate where the key should be: refused, and nothing of the file is repeated.
        let pem = ca.certificate_pem.as_bytes();
        let no_key = GivenCertificate::from_pem(pem, pem).unwrap_err().to_string();
        assert!(no_key.contains("no usable private key"), "{no_key}");
        assert!(!no_key.contains("BEGIN"), "{no_key}");
    }
}
