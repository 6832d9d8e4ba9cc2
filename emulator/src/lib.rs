//! A local stand-in for DPS (its service API, and the device API devices register with) that
//! behaves like DPS for real clients: HTTPS with
//! its own CA, SAS and Entra ID authentication, etag semantics, keys never returned by reads,
//! certificate info computed from uploaded certificates, paged queries, bulk operations, quotas,
//! throttling, fault injection, an admin endpoint and optional persistence.
//!
//! It works on the JSON of DPS's swagger (`tests/specs/dps-service-2021-10-01.json`), read by
//! [`swagger`], and shares no code with any DPS client, so a client's mistake about DPS shows up
//! as a difference instead of being mirrored.

mod auth;
mod certificate;
mod chain;
mod device;
mod error;
mod kind;
mod server;
mod store;
pub mod swagger;
mod throttle;
mod tls;
mod validation;

pub use auth::AccessPolicy;
pub use device::{DEFAULT_ID_SCOPE, DEVICE_API_VERSIONS, derived_key};
pub use error::ApiError;
pub use server::{EmulatorConfig, Faults, RunningEmulator, SERVICE_API_VERSIONS, StartError, service};
pub use store::{Quotas, Registration, Store};
pub use tls::{CertificateAuthority, GivenCertificate, ServerCertificate};

/// A random 32-byte key for a shared access policy.
pub fn random_key() -> [u8; 32] {
    random_bytes()
}

/// `N` bytes from the system's secure random generator.
fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system random generator works");
    bytes
}

/// Makes ring the process's TLS crypto provider, unless one is installed already.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A time as DPS writes it: UTC with seven fractional digits (.NET's 100 ns ticks).
fn dps_time(time: jiff::Timestamp) -> String {
    let ticks = time.subsec_nanosecond() / 100;
    format!("{}.{ticks:07}Z", time.strftime("%Y-%m-%dT%H:%M:%S"))
}

/// A time in whole seconds, as DPS writes certificate validity (`2023-05-19T23:10:43Z`).
fn whole_seconds(time: jiff::Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
