//! How a DPS call failed, classified so the controller can choose a condition and a retry.

use std::time::Duration;

use super::{auth::AuthError, models::ProvisioningServiceErrorDetails};

/// A failed DPS call. `operation` reads like `PUT enrollmentGroups/thermostats`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("DPS refused {operation} as invalid: {details}")]
    InvalidRequest { operation: String, details: Box<ProvisioningServiceErrorDetails> },

    #[error("DPS did not accept the credentials for {operation}: {details}")]
    Unauthorized { operation: String, details: Box<ProvisioningServiceErrorDetails> },

    #[error("the credentials are not allowed to {operation}: {details}")]
    Forbidden { operation: String, details: Box<ProvisioningServiceErrorDetails> },

    #[error("{operation}: DPS has no such item")]
    NotFound { operation: String, details: Box<ProvisioningServiceErrorDetails> },

    #[error("{operation}: DPS already has this item: {details}")]
    Conflict { operation: String, details: Box<ProvisioningServiceErrorDetails> },

    #[error("{operation}: the item changed in DPS since it was read (etag mismatch)")]
    PreconditionFailed { operation: String, details: Box<ProvisioningServiceErrorDetails> },

    #[error("DPS throttled {operation}")]
    Throttled { operation: String, retry_after: Option<Duration> },

    #[error("DPS failed {operation} with status {status}: {details}")]
    Server { operation: String, status: u16, details: Box<ProvisioningServiceErrorDetails> },

    #[error("DPS answered {operation} with unexpected status {status}: {details}")]
    UnexpectedStatus { operation: String, status: u16, details: Box<ProvisioningServiceErrorDetails> },

    #[error("could not reach DPS for {operation}")]
    Network {
        operation: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{operation} got no answer from DPS within {timeout:?}")]
    Timeout { operation: String, timeout: Duration },

    #[error("DPS answered {operation} with a body that is not what the API describes")]
    InvalidResponse {
        operation: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("could not authenticate {operation}")]
    Authentication {
        operation: String,
        #[source]
        source: AuthError,
    },

    /// The failure of a bulk call, told to each item it carried.
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),

    #[error("{operation} stopped before DPS answered")]
    Abandoned { operation: String },
}

/// What the caller should do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryClass {
    /// The request is wrong: retrying the same request fails the same way.
    Permanent,
    /// The credentials are wrong or lack a permission: retry once they change.
    Credentials,
    /// The item changed or already exists: read it again, then decide.
    Reread,
    /// DPS asked to slow down: retry after this long (or with backoff when it did not say).
    After(Option<Duration>),
    /// A transient failure: retry with exponential backoff.
    Backoff,
}

impl Error {
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidResponse { .. } | Self::UnexpectedStatus { .. } => {
                RetryClass::Permanent
            }
            Self::Unauthorized { .. } | Self::Forbidden { .. } | Self::Authentication { .. } => {
                RetryClass::Credentials
            }
            Self::NotFound { .. } | Self::Conflict { .. } | Self::PreconditionFailed { .. } => {
                RetryClass::Reread
            }
            Self::Throttled { retry_after, .. } => RetryClass::After(*retry_after),
            Self::Server { .. } | Self::Network { .. } | Self::Timeout { .. } | Self::Abandoned { .. } => {
                RetryClass::Backoff
            }
            Self::Shared(error) => error.retry_class(),
        }
    }

    /// A stable PascalCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "DpsRejected",
            Self::Unauthorized { .. } | Self::Authentication { .. } => "DpsUnauthorized",
            Self::Forbidden { .. } => "DpsForbidden",
            Self::NotFound { .. } => "NotFound",
            Self::Conflict { .. } => "AlreadyExists",
            Self::PreconditionFailed { .. } => "EtagMismatch",
            Self::Throttled { .. } => "DpsThrottled",
            Self::Server { .. } | Self::UnexpectedStatus { .. } | Self::InvalidResponse { .. } => "DpsError",
            Self::Network { .. } | Self::Timeout { .. } | Self::Abandoned { .. } => "DpsUnreachable",
            Self::Shared(error) => error.reason(),
        }
    }

    /// The tracking id DPS gave the failed call, for a support request (logged, never put in a
    /// condition: it differs on every call).
    pub fn tracking_id(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { details, .. }
            | Self::Unauthorized { details, .. }
            | Self::Forbidden { details, .. }
            | Self::NotFound { details, .. }
            | Self::Conflict { details, .. }
            | Self::PreconditionFailed { details, .. }
            | Self::Server { details, .. }
            | Self::UnexpectedStatus { details, .. } => details.tracking_id.as_deref(),
            Self::Shared(error) => error.tracking_id(),
            _ => None,
        }
    }

    /// The HTTP status DPS answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            Self::InvalidRequest { .. } => 400,
            Self::Unauthorized { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::NotFound { .. } => 404,
            Self::Conflict { .. } => 409,
            Self::PreconditionFailed { .. } => 412,
            Self::Throttled { .. } => 429,
            Self::Server { status, .. } | Self::UnexpectedStatus { status, .. } => *status,
            Self::Shared(error) => return error.status(),
            Self::Network { .. }
            | Self::Timeout { .. }
            | Self::InvalidResponse { .. }
            | Self::Authentication { .. }
            | Self::Abandoned { .. } => {
                return None;
            }
        })
    }

    /// Builds the error for an unsuccessful answer.
    pub(super) fn from_status(
        operation: String,
        status: u16,
        retry_after: Option<Duration>,
        details: ProvisioningServiceErrorDetails,
    ) -> Self {
        let details = Box::new(details);
        match status {
            400 | 405 | 413 | 415 | 422 => Self::InvalidRequest { operation, details },
            401 => Self::Unauthorized { operation, details },
            403 => Self::Forbidden { operation, details },
            404 => Self::NotFound { operation, details },
            409 => Self::Conflict { operation, details },
            412 => Self::PreconditionFailed { operation, details },
            429 => Self::Throttled { operation, retry_after },
            500..=599 => Self::Server { operation, status, details },
            _ => Self::UnexpectedStatus { operation, status, details },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_a_retry_class_and_reason() {
        let classify = |status| {
            let error = Error::from_status(
                "GET enrollments/x".into(),
                status,
                Some(Duration::from_secs(7)),
                Default::default(),
            );
            (error.retry_class(), error.reason(), error.status())
        };
        assert_eq!(classify(400), (RetryClass::Permanent, "DpsRejected", Some(400)));
        assert_eq!(classify(401), (RetryClass::Credentials, "DpsUnauthorized", Some(401)));
        assert_eq!(classify(403), (RetryClass::Credentials, "DpsForbidden", Some(403)));
        assert_eq!(classify(404), (RetryClass::Reread, "NotFound", Some(404)));
        assert_eq!(classify(409), (RetryClass::Reread, "AlreadyExists", Some(409)));
        assert_eq!(classify(412), (RetryClass::Reread, "EtagMismatch", Some(412)));
        assert_eq!(
            classify(429),
            (RetryClass::After(Some(Duration::from_secs(7))), "DpsThrottled", Some(429))
        );
        assert_eq!(classify(503), (RetryClass::Backoff, "DpsError", Some(503)));
        assert_eq!(classify(302), (RetryClass::Permanent, "DpsError", Some(302)));
    }

    #[test]
    fn messages_name_the_operation_and_what_dps_said() {
        let details = ProvisioningServiceErrorDetails {
            error_code: Some(400004),
            tracking_id: Some("abc".into()),
            message: Some("Invalid enrollment group id".into()),
            ..Default::default()
        };
        let error = Error::from_status("PUT enrollmentGroups/g".into(), 400, None, details);
        assert_eq!(
            error.to_string(),
            "DPS refused PUT enrollmentGroups/g as invalid: Invalid enrollment group id (error 400004)"
        );
        assert_eq!(error.tracking_id(), Some("abc"), "kept for the log, out of the message");
        let throttled = Error::from_status(
            "GET enrollments/x".into(),
            429,
            Some(Duration::from_secs(3)),
            Default::default(),
        );
        assert_eq!(
            throttled.to_string(),
            "DPS throttled GET enrollments/x",
            "no wait that differs each time"
        );
    }
}
