//! The reconcilers that keep DPS in line with the custom resources.
//!
//! An enrollment is reconciled as a pipeline: resolve (the connection and the referenced Secrets)
//! → build (spec and secrets → the DPS record, pure) → compare and decide (pure) → apply (the DPS
//! call, with the etag) → status (pure) → write the status with server-side apply.

pub mod conditions;
pub mod desired;
mod error;
mod events;

pub use error::{Error, Retry};
pub mod connection;
pub mod context;
mod converge;
mod device_keys;
pub mod enrollment;
pub mod finalizer;
pub mod kinds;
pub mod ownership;
pub mod provisioning;
mod run;
pub mod secrets;
pub mod watches;
pub use run::{LeaderElection, run};
