//! Any request body, to any service API operation, gets an answer: never a panic (which would
//! drop the connection of a real client).
#![no_main]

use std::sync::LazyLock;

use axum::{Router, body::Body, http::Request};
use dps_emulator::{AccessPolicy, EmulatorConfig, service};
use dps_operator::dps::auth::shared_access_signature;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const HOST: &str = "fuzz.azure-devices-provisioning.net";
const KEY: [u8; 32] = [7; 32];

/// Each operation that takes a body, with an id the inputs can collide on.
const OPERATIONS: [(&str, &str); 8] = [
    ("PUT", "/enrollments/device-1"),
    ("PUT", "/enrollmentGroups/group-1"),
    ("POST", "/enrollments"),
    ("POST", "/enrollmentGroups"),
    ("POST", "/enrollments/query"),
    ("POST", "/enrollmentGroups/query"),
    ("POST", "/registrations/group-1/query"),
    ("DELETE", "/enrollments/device-1"),
];

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());

static EMULATOR: LazyLock<Router> = LazyLock::new(|| {
    let policy =
        AccessPolicy { name: "owner".into(), primary_key: KEY.to_vec(), secondary_key: KEY.to_vec() };
    service(EmulatorConfig { policies: vec![policy], ..Default::default() }, HOST)
});

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else { return };
    let (method, path) = OPERATIONS[usize::from(selector) % OPERATIONS.len()];
    // Half the inputs also bring their own authorization header: the rest of the body's first
    // line, if it is one.
    let authorization = match selector & 0x80 {
        0 => shared_access_signature(HOST, "owner", &KEY, u64::MAX / 2),
        _ => String::from_utf8_lossy(body.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned(),
    };
    let Ok(request) = Request::builder()
        .method(method)
        .uri(format!("https://{HOST}{path}?api-version=2021-10-01"))
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("authorization", authorization)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let answer = RUNTIME.block_on(EMULATOR.clone().oneshot(request)).unwrap();
    assert!(answer.status().as_u16() < 500, "{method} {path} answered {}", answer.status());
});
