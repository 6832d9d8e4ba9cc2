//! The emulator's device API, as a device's HTTP client uses it: register under the ID scope with a
//! SAS over the device's own key or one derived from its group's, poll the operation, look the
//! registration up; every answer checked against the device swagger in `tests/specs/`, and the
//! registrations then seen through the service API as DPS shows them.

mod support;

use std::{fs, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{EmulatorConfig, RunningEmulator, derived_key};
use dps_operator::dps::{Client, IfMatch, auth::shared_access_signature, models::*};
use futures::TryStreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::{
    contract::Contract,
    dps::{client, emulator},
};

const HUB_A: &str = "hub-a.azure-devices.net";
const HUB_B: &str = "hub-b.azure-devices.net";

fn device_contract() -> Contract {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/dps-device-2021-10-01.json");
    Contract::new(serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap())
}

async fn linked_emulator(operations_per_minute: Option<u32>) -> RunningEmulator {
    emulator(EmulatorConfig {
        linked_hubs: Some(vec![HUB_A.into(), HUB_B.into()]),
        operations_per_minute,
        ..Default::default()
    })
    .await
}

/// A device's HTTP client, as the SDKs' HTTP transports are: it trusts the emulator's CA and
/// signs with its key, under the emulator's ID scope.
struct Device<'a> {
    http: reqwest::Client,
    emulator: &'a RunningEmulator,
    contract: &'a Contract,
    registration_id: String,
    key: Vec<u8>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl<'a> Device<'a> {
    fn new(emulator: &'a RunningEmulator, contract: &'a Contract, registration_id: &str, key: &[u8]) -> Self {
        dps_operator::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(emulator.ca_certificate().unwrap().as_bytes()).unwrap();
        Self {
            http: reqwest::Client::builder().tls_certs_merge([ca]).build().unwrap(),
            emulator,
            contract,
            registration_id: registration_id.to_owned(),
            key: key.to_vec(),
        }
    }

    fn sas(&self) -> String {
        let resource = format!("{}/registrations/{}", self.emulator.id_scope(), self.registration_id);
        let expiry =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
        shared_access_signature(&resource, "registration", &self.key, expiry)
    }

    /// Sends `operation` to `path` (after the ID scope) and checks the answer against the swagger.
    async fn send(&self, operation: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.send_as(operation, method, &format!("/{}{path}", self.emulator.id_scope()), "2019-03-31", body)
            .await
    }

    async fn send_as(
        &self,
        operation: &str,
        method: Method,
        path: &str,
        api_version: &str,
        body: Option<Value>,
    ) -> Answer {
        let url = format!("{}{path}?api-version={api_version}", self.emulator.url());
        let mut request = self.http.request(method, url).header("authorization", self.sas());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the emulator answers");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            assert_eq!(body["errorCode"].as_i64().unwrap() / 1000, i64::from(status), "{body}");
        }
        self.contract.check(operation, status, &body);
        Answer { status, headers, body }
    }

    /// PUT register.
    async fn request_registration(&self) -> Answer {
        self.request_registration_with(json!({ "registrationId": self.registration_id })).await
    }

    async fn request_registration_with(&self, body: Value) -> Answer {
        let path = format!("/registrations/{}/register", self.registration_id);
        self.send("RuntimeRegistration_RegisterDevice", Method::PUT, &path, Some(body)).await
    }

    /// PUT register, then the operation's status as a device polls it: the final
    /// `RegistrationOperationStatus`.
    async fn register(&self) -> Value {
        self.register_with(json!({ "registrationId": self.registration_id })).await
    }

    async fn register_with(&self, body: Value) -> Value {
        let id = &self.registration_id;
        let accepted = self.request_registration_with(body).await;
        assert_eq!(accepted.status, 202, "{}", accepted.body);
        assert_eq!(accepted.body["status"], "assigning");
        assert!(accepted.headers.get("retry-after").is_some());
        let operation = accepted.body["operationId"].as_str().unwrap().to_owned();
        let done = self
            .send(
                "RuntimeRegistration_OperationStatusLookup",
                Method::GET,
                &format!("/registrations/{id}/operations/{operation}"),
                None,
            )
            .await;
        assert_eq!(done.status, 200, "{}", done.body);
        assert_eq!(done.body["operationId"], operation.as_str());
        done.body
    }

    /// The registration's status as a device looks it up.
    async fn status(&self) -> Answer {
        let id = &self.registration_id;
        let body = json!({ "registrationId": id });
        self.send(
            "RuntimeRegistration_DeviceRegistrationStatusLookup",
            Method::POST,
            &format!("/registrations/{id}"),
            Some(body),
        )
        .await
    }
}

fn symmetric(key: &[u8]) -> Value {
    let key = BASE64.encode(key);
    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}})
}

async fn put_individual(dps: &Client, fields: Value) {
    let record: IndividualEnrollment = serde_json::from_value(fields).unwrap();
    dps.put(&record, IfMatch::None).await.unwrap();
}

async fn put_group(dps: &Client, fields: Value, if_match: IfMatch<'_>) -> EnrollmentGroup {
    let record: EnrollmentGroup = serde_json::from_value(fields).unwrap();
    dps.put(&record, if_match).await.unwrap()
}

#[tokio::test]
async fn devices_register_with_their_own_key_or_one_derived_from_their_group_s() {
    let emulator = linked_emulator(None).await;
    let (dps, contract) = (client(&emulator), device_contract());
    put_individual(
        &dps,
        json!({"registrationId": "boiler", "deviceId": "boiler-7", "attestation": symmetric(&[1; 32]),
               "allocationPolicy": "static", "iotHubs": [HUB_B]}),
    )
    .await;
    put_group(
        &dps,
        json!({"enrollmentGroupId": "thermostats", "attestation": symmetric(&[2; 64]), "allocationPolicy": "hashed"}),
        IfMatch::None,
    )
    .await;

    let boiler = Device::new(&emulator, &contract, "boiler", &[1; 32]);
    let registered = boiler.register().await;
    assert_eq!(registered["status"], "assigned", "{registered}");
    let state = &registered["registrationState"];
    assert_eq!((state["assignedHub"].as_str(), state["deviceId"].as_str()), (Some(HUB_B), Some("boiler-7")));
    assert_eq!(state["substatus"], "initialAssignment");
    // The service API shows it: on the enrollment, and as a registration record.
    let enrollment: IndividualEnrollment = dps.get("boiler").await.unwrap();
    let shown = enrollment.registration_state.unwrap();
    assert_eq!(serde_json::to_value(&shown).unwrap()["assignedHub"], HUB_B);
    let record = dps.get_registration("boiler").await.unwrap();
    assert_eq!(serde_json::to_value(&record).unwrap()["status"], "assigned");

    // Twelve thermostats with keys derived from the group's: spread over both linked hubs, each
    // on the same hub when it registers again.
    let mut hubs = Vec::new();
    for i in 0..12 {
        let id = format!("t-{i}");
        let device = Device::new(&emulator, &contract, &id, &derived_key(&[2; 64], &id));
        let registered = device.register().await;
        let state = &registered["registrationState"];
        assert_eq!(
            (state["deviceId"].as_str(), state["status"].as_str()),
            (Some(id.as_str()), Some("assigned"))
        );
        assert_eq!(state["symmetricKey"]["enrollmentGroupId"], "thermostats");
        hubs.push(state["assignedHub"].as_str().unwrap().to_owned());
    }
    assert!(hubs.contains(&HUB_A.to_owned()) && hubs.contains(&HUB_B.to_owned()), "{hubs:?}");
    let again = Device::new(&emulator, &contract, "t-0", &derived_key(&[2; 64], "t-0")).register().await;
    assert_eq!(again["registrationState"]["assignedHub"], hubs[0].as_str());
    assert_eq!(again["registrationState"]["substatus"], "reprovisionedToInitialAssignment");

    let looked_up = Device::new(&emulator, &contract, "t-3", &derived_key(&[2; 64], "t-3")).status().await;
    assert_eq!((looked_up.status, looked_up.body["assignedHub"].as_str()), (200, Some(hubs[3].as_str())));
    let members: Vec<DeviceRegistrationState> =
        dps.query_registrations("thermostats", Some(5)).try_collect().await.unwrap();
    assert_eq!(members.len(), 12, "paged, all of the group's");
    dps.delete_registration("t-3", IfMatch::None).await.unwrap();
    assert_eq!(
        Device::new(&emulator, &contract, "t-3", &derived_key(&[2; 64], "t-3")).status().await.status,
        404
    );
}

#[tokio::test]
async fn wrong_keys_and_scopes_are_refused_and_disabled_enrollments_do_not_provision() {
    let emulator = linked_emulator(None).await;
    let (dps, contract) = (client(&emulator), device_contract());
    put_group(
        &dps,
        json!({"enrollmentGroupId": "thermostats", "attestation": symmetric(&[2; 64])}),
        IfMatch::None,
    )
    .await;
    put_individual(
        &dps,
        json!({"registrationId": "heater", "attestation": symmetric(&[3; 32]), "provisioningStatus": "disabled"}),
    )
    .await;
    for (id, key) in [("t-1", vec![9; 32]), ("t-1", vec![2; 64]), ("heater", vec![2; 32])] {
        let refused = Device::new(&emulator, &contract, id, &key).request_registration().await;
        assert_eq!(refused.status, 401, "{id}: {}", refused.body);
    }
    let member = Device::new(&emulator, &contract, "t-1", &derived_key(&[2; 64], "t-1"));
    let elsewhere = member
        .send_as(
            "RuntimeRegistration_RegisterDevice",
            Method::PUT,
            "/0ne99999999/registrations/t-1/register",
            "2021-10-01",
            None,
        )
        .await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.body);
    let unversioned = member
        .send_as(
            "RuntimeRegistration_RegisterDevice",
            Method::PUT,
            &format!("/{}/registrations/t-1/register", emulator.id_scope()),
            "1999-01-01",
            None,
        )
        .await;
    assert_eq!(unversioned.status, 400);
    let mismatched = member
        .send(
            "RuntimeRegistration_RegisterDevice",
            Method::PUT,
            "/registrations/t-1/register",
            Some(json!({"registrationId": "t-2"})),
        )
        .await;
    assert_eq!(mismatched.status, 400, "{}", mismatched.body);

    // A disabled individual enrollment refuses its device, and records nothing.
    let heater = Device::new(&emulator, &contract, "heater", &[3; 32]).register().await;
    assert_eq!(
        (heater["status"].as_str(), heater["registrationState"]["status"].as_str()),
        (Some("disabled"), Some("disabled"))
    );
    assert!(dps.get_registration("heater").await.is_err());
    // One device of a group taken out by a disabled individual enrollment with its key; the
    // others still provision.
    put_individual(
        &dps,
        json!({"registrationId": "t-1", "attestation": {"type": "symmetricKey", "symmetricKey": {
            "primaryKey": BASE64.encode(derived_key(&[2; 64], "t-1")), "secondaryKey": BASE64.encode(derived_key(&[2; 64], "t-1"))}},
            "provisioningStatus": "disabled"}),
    )
    .await;
    assert_eq!(member.register().await["status"], "disabled");
    let other = Device::new(&emulator, &contract, "t-2", &derived_key(&[2; 64], "t-2")).register().await;
    assert_eq!(other["status"], "assigned");
    // A disabled group refuses them all.
    let group: EnrollmentGroup = dps.get("thermostats").await.unwrap();
    let mut disabled = serde_json::to_value(&group).unwrap();
    disabled["provisioningStatus"] = json!("disabled");
    disabled["attestation"] = symmetric(&[2; 64]);
    put_group(&dps, disabled, IfMatch::Etag(group.etag.as_deref().unwrap())).await;
    let refused = Device::new(&emulator, &contract, "t-2", &derived_key(&[2; 64], "t-2")).register().await;
    assert_eq!(refused["status"], "disabled");
}

#[tokio::test]
async fn re_registration_follows_the_reprovision_policy() {
    let emulator = linked_emulator(None).await;
    let (dps, contract) = (client(&emulator), device_contract());
    let group = |hub: &str, update: bool, migrate: bool| {
        json!({"enrollmentGroupId": "meters", "attestation": symmetric(&[4; 64]), "allocationPolicy": "static",
               "iotHubs": [hub], "reprovisionPolicy": {"updateHubAssignment": update, "migrateDeviceData": migrate}})
    };
    let mut etag = put_group(&dps, group(HUB_A, true, true), IfMatch::None).await.etag.unwrap();
    let meter = Device::new(&emulator, &contract, "m-1", &derived_key(&[4; 64], "m-1"));
    let hub_and_substatus = |answer: &Value| {
        let state = &answer["registrationState"];
        (state["assignedHub"].as_str().unwrap().to_owned(), state["substatus"].as_str().unwrap().to_owned())
    };
    assert_eq!(hub_and_substatus(&meter.register().await), (HUB_A.into(), "initialAssignment".into()));

    etag = put_group(&dps, group(HUB_B, false, true), IfMatch::Etag(&etag)).await.etag.unwrap();
    assert_eq!(
        hub_and_substatus(&meter.register().await).0,
        HUB_A,
        "updateHubAssignment false keeps the hub"
    );
    etag = put_group(&dps, group(HUB_B, true, true), IfMatch::Etag(&etag)).await.etag.unwrap();
    assert_eq!(hub_and_substatus(&meter.register().await), (HUB_B.into(), "deviceDataMigrated".into()));
    put_group(&dps, group(HUB_A, true, false), IfMatch::Etag(&etag)).await;
    assert_eq!(hub_and_substatus(&meter.register().await), (HUB_A.into(), "deviceDataReset".into()));
}

#[tokio::test]
async fn registrations_count_against_the_emulator_s_rate_and_polling_does_not() {
    // One a minute: the group's PUT takes it.
    let emulator = linked_emulator(Some(1)).await;
    let contract = device_contract();
    let dps = client(&emulator);
    put_group(&dps, json!({"enrollmentGroupId": "g", "attestation": symmetric(&[5; 64])}), IfMatch::None)
        .await;
    // A registration is billed like any call.
    let device = Device::new(&emulator, &contract, "d-1", &derived_key(&[5; 64], "d-1"));
    let throttled = device.request_registration().await;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    assert!(throttled.headers.get("retry-after").is_some());
    // Polls are not billed: a status lookup while the quota is spent still answers.
    assert_eq!(device.status().await.status, 404, "not throttled; no registration yet");
}

/// A custom allocation webhook over HTTPS on loopback: it records each request and answers
/// `answer`.
async fn webhook(
    answer: Value,
) -> (String, dps_operator::pki::CertificateAuthority, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let ca = dps_operator::pki::CertificateAuthority::new("Webhook CA").unwrap();
    let serving = ca.issue_server("localhost", &["localhost"]).unwrap();
    let address: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (listener, tls) =
        dps_operator::admission::bind(address, &serving.certificate_pem, &serving.key_pem).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = requests.clone();
    let router = axum::Router::new().route(
        "/api/allocate",
        axum::routing::post(move |axum::Json(request): axum::Json<Value>| {
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                seen.lock().unwrap().push(request);
                axum::Json(answer)
            }
        }),
    );
    tokio::spawn(dps_operator::admission::serve(listener, tls, router, std::future::pending()));
    (format!("https://localhost:{port}/api/allocate?code=function-key"), ca, requests)
}

#[tokio::test]
async fn custom_allocation_asks_the_webhook_which_hub_and_hands_the_device_its_payload() {
    let (url, webhook_ca, requests) =
        webhook(json!({"iotHubHostName": HUB_B, "payload": {"floor": 3}})).await;
    let emulator = emulator(EmulatorConfig {
        linked_hubs: Some(vec![HUB_A.into(), HUB_B.into()]),
        webhook_ca_certificates: Some(webhook_ca.certificate_pem.clone()),
        ..Default::default()
    })
    .await;
    let (dps, contract) = (client(&emulator), device_contract());
    let group = |url: &str| {
        json!({"enrollmentGroupId": "meters", "attestation": symmetric(&[6; 64]), "allocationPolicy": "custom",
               "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}})
    };
    let etag = put_group(&dps, group(&url), IfMatch::None).await.etag.unwrap();
    let meter = Device::new(&emulator, &contract, "meter-1", &derived_key(&[6; 64], "meter-1"));

    let registered = meter.register_with(json!({"registrationId": "meter-1", "payload": {"site": 7}})).await;
    let state = &registered["registrationState"];
    assert_eq!(
        (state["status"].as_str(), state["assignedHub"].as_str()),
        (Some("assigned"), Some(HUB_B)),
        "{registered}"
    );
    assert_eq!(state["payload"], json!({"floor": 3}), "the webhook's payload reaches the device");
    let request = requests.lock().unwrap()[0].clone();
    assert_eq!(request["enrollmentGroup"]["enrollmentGroupId"], "meters");
    assert!(request["enrollmentGroup"]["attestation"].get("symmetricKey").is_none(), "no keys: {request}");
    let context = &request["deviceRuntimeContext"];
    assert_eq!(
        (context["registrationId"].as_str(), &context["payload"]),
        (Some("meter-1"), &json!({"site": 7}))
    );
    assert_eq!(request["linkedHubs"], json!([HUB_A, HUB_B]));

    // A webhook that cannot be reached, or names a hub the enrollment may not use: failed.
    put_group(&dps, group("https://localhost:9/api/allocate?code=function-key"), IfMatch::Etag(&etag)).await;
    let failed = meter.register().await;
    let state = &failed["registrationState"];
    assert_eq!(failed["status"], "failed", "{failed}");
    let message = state["errorMessage"].as_str().unwrap();
    assert!(message.contains("could not be reached") && !message.contains("function-key"), "{message}");
}
