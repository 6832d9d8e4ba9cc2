//! A local stand-in for the DPS service API that behaves like DPS for real clients: HTTPS with
//! its own CA, SAS and Entra ID authentication, etag semantics, keys never returned by reads,
//! certificate info computed from uploaded certificates, paged queries, bulk operations, quotas,
//! throttling, fault injection, an admin endpoint and optional persistence.

mod auth;
mod error;
mod server;
mod store;
mod validation;

pub use auth::AccessPolicy;
pub use error::ApiError;
pub use server::{EmulatorConfig, Faults, RunningEmulator, SERVICE_API_VERSIONS, StartError, service};
pub use store::{Quotas, Registration, Store};

/// A random 32-byte key for a shared access policy.
pub fn random_key() -> [u8; 32] {
    crate::random_bytes()
}
