//! dps-operator: manages Azure IoT Hub Device Provisioning Service enrollments from Kubernetes.

pub mod admission;
pub mod api;
pub mod certificates;
pub mod controller;
pub mod convert;
#[cfg(feature = "local")]
pub mod devenv;
pub mod dps;
pub mod http;
pub mod metrics;
#[cfg(feature = "local")]
pub mod pki;
pub mod plugin;
pub mod signals;
pub mod telemetry;

/// Makes ring, the only TLS crypto provider compiled in, the process's default, unless one is
/// installed already. Everything here that opens or serves TLS calls it first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `N` bytes from the system's secure random generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system random generator works");
    bytes
}
