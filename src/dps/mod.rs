//! The DPS service API client (api-version 2021-10-01): wire models, authentication, errors and
//! pacing.

pub mod auth;
mod batch;
mod client;
mod error;
pub mod models;
pub mod rate_limit;

pub use batch::{Batched, BulkCalls, GATHER_WINDOW};
pub use client::{
    API_VERSION, BuildError, Client, ClientConfig, Enrollment, IfMatch, MAX_BULK_ITEMS, RequestObserver,
    operation_label,
};
pub use error::{Error, RetryClass};
