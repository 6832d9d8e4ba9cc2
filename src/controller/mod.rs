//! The reconcilers that keep DPS in line with the custom resources.
//!
//! [`enrollment`] reconciles both enrollment kinds as a pipeline of small steps (its module doc
//! lists them); [`provisioning`] reports whether each connection works; `run` starts them with
//! the shared watches. What they share is in [`context::Context`], in parts: [`connection`]s,
//! the register of owners ([`ownership`]), the watch caches ([`watches`]), what is remembered of
//! each object ([`memory`]), the query [`snapshots`], and where events go.
//!
//! The pure decisions have table tests beside them: what to write ([`desired`], `converge`),
//! the conditions ([`conditions`]), the metadata patches ([`finalizer`]).

pub mod conditions;
pub mod config;
pub mod connection;
pub mod context;
pub mod desired;
mod device_keys;
pub mod digest_key;
pub mod enrollment;
pub mod enrollment_set;
mod error;
mod events;
pub mod finalizer;
pub mod key_rotation;
pub mod kinds;
mod leadership;
pub mod memory;
pub mod names;
pub mod ownership;
pub mod provisioning;
mod retry;
pub mod rollover;
mod run;
pub mod secrets;
pub mod selector;
pub mod snapshots;
pub mod storage_versions;
pub mod watches;

pub use device_keys::derive as derive_device_key;
pub use error::{Error, Retry, describe, kube_failure};
pub use leadership::{LeaderElection, lease_name};
pub use run::run;
