//! What the operator reads from outside never panics it: DPS answers of every shape it parses,
//! and certificate text from users' Secrets.
#![no_main]

use dps_operator::{certificates, dps::models};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let _ = serde_json::from_slice::<models::IndividualEnrollment>(input);
    let _ = serde_json::from_slice::<models::EnrollmentGroup>(input);
    let _ = serde_json::from_slice::<models::DeviceRegistrationState>(input);
    let _ = serde_json::from_slice::<models::AttestationMechanism>(input);
    let _ =
        serde_json::from_slice::<models::BulkOperationResult<models::BulkEnrollmentOperationError>>(input);
    let _ = serde_json::from_slice::<models::ProvisioningServiceErrorDetails>(input);
    let _ = serde_json::from_slice::<Vec<models::IndividualEnrollment>>(input);
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = certificates::read(text);
    }
});
