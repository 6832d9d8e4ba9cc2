//! Errors in DPS's format: a `ProvisioningServiceErrorDetails` body and the `x-ms-error-code`
//! header, with six-digit codes (HTTP status × 1000 + a sub-code).

use axum::{
    Json,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use serde_json::{Value, json};

use super::kind::Kind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: i32,
    pub message: String,
    /// Seconds to wait, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: i32, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: i32, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, 401002, message)
    }

    /// 404201 for an enrollment and 404202 for a group, as DPS numbers its conflicts per kind
    /// (409201/409202, below); DPS's .NET service client reports exactly these two 404 codes
    /// (MicrosoftDocs/azure-docs#57082). No recording shows a missing registration: 404203 is the
    /// emulator's choice.
    pub fn not_found(kind: Option<Kind>, id: &str) -> Self {
        let (code, what) = match kind {
            Some(Kind::Individual) => (404201, Kind::Individual.what()),
            Some(Kind::Group) => (404202, Kind::Group.what()),
            None => (404203, "registration"),
        };
        Self::new(404, code, format!("The {what} '{id}' does not exist."))
    }

    /// 409201 for an enrollment, 409202 for a group, as DPS's per-item bulk errors show
    /// (azure-sdk-for-python recordings of `test_individual_enrollment_bulk_operations` and
    /// `test_enrollment_group_bulk_operations`); the message is DPS's, which bulk answers carry
    /// as `errorStatus`.
    pub fn conflict(kind: Kind) -> Self {
        match kind {
            Kind::Individual => Self::new(409, 409201, "Enrollment already exists."),
            Kind::Group => Self::new(409, 409202, "EnrollmentGroup already exists."),
        }
    }

    pub fn precondition_failed(what: &str, id: &str) -> Self {
        Self::new(
            412,
            412002,
            format!("The etag in the request does not match the {what} '{id}' (RFC 7232)."),
        )
    }

    pub fn throttled(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(429, 429001, "Operations are being throttled by the service.")
        }
    }

    /// The swagger's `ProvisioningServiceErrorDetails`.
    pub fn details(&self) -> Value {
        json!({
            "errorCode": self.code,
            "trackingId": tracking_id(),
            "message": self.message,
            "timestampUtc": crate::dps_time(jiff::Timestamp::now()),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.details())).into_response();
        let headers = response.headers_mut();
        headers.insert("x-ms-error-code", HeaderValue::from(self.code));
        if let Some(seconds) = self.retry_after {
            headers.insert("retry-after", HeaderValue::from(seconds));
        }
        response
    }
}

/// A GUID-shaped id for the answer, as DPS gives one with every error.
pub fn tracking_id() -> String {
    let b = crate::random_bytes::<16>();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}
