//! The emulator against the DPS wire contract: every answer validated against the swagger in
//! `tests/specs/` (definitions read from the file, not restated), the swagger's example requests
//! replayed, and what real clients send (other api-versions, path casing, quoted etags) accepted.

mod support;

use std::{collections::BTreeMap, fs, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_operator::{
    dps::{IfMatch, auth::shared_access_signature, models::*},
    emulator::{EmulatorConfig, RunningEmulator},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::dps::{client, emulator};

fn spec() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/dps-service-2021-10-01.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    // Where the swagger is stricter than DPS and every SDK (dps-api.md §12a): twin values may be
    // scalars, not only objects.
    spec["definitions"]["TwinCollection"]["additionalProperties"] = json!({});
    spec
}

/// The swagger's operations: operation id → (method, path template, operation object).
fn operations(spec: &Value) -> BTreeMap<String, (Method, String, Value)> {
    let mut operations = BTreeMap::new();
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_owned();
            operations.insert(id, (method.to_uppercase().parse().unwrap(), path.clone(), operation.clone()));
        }
    }
    operations
}

/// Checks answers against the schema the swagger declares for an operation and status.
struct Contract {
    spec: Value,
    operations: BTreeMap<String, (Method, String, Value)>,
}

impl Contract {
    fn new() -> Self {
        let spec = spec();
        Self { operations: operations(&spec), spec }
    }

    /// Fails with the violations when `body` is not what `operation` may answer with `status`.
    fn check(&self, operation: &str, status: u16, body: &Value) {
        let responses = &self.operations[operation].2["responses"];
        let declared =
            responses.get(status.to_string()).filter(|_| status < 400).unwrap_or(&responses["default"]);
        let Some(schema) = declared.get("schema") else {
            assert!(body.is_null(), "{operation} {status} declares no body but got {body}");
            return;
        };
        let mut schema = schema.clone();
        schema["definitions"] = self.spec["definitions"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .build(&schema)
            .expect("the swagger schema compiles");
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{operation} answered {status} with a body the swagger does not allow: {errors:?}\n{body}"
        );
    }
}

/// A raw HTTP client, as any SDK would be, that checks every answer against the contract.
struct RawClient<'a> {
    http: reqwest::Client,
    emulator: &'a RunningEmulator,
    contract: &'a Contract,
    key: Vec<u8>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

impl<'a> RawClient<'a> {
    fn new(emulator: &'a RunningEmulator, contract: &'a Contract) -> Self {
        dps_operator::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(emulator.ca_certificate().unwrap().as_bytes()).unwrap();
        let key = emulator.connection_string().rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
        Self {
            http: reqwest::Client::builder().tls_certs_merge([ca]).build().unwrap(),
            emulator,
            contract,
            key: BASE64.decode(key).unwrap(),
        }
    }

    fn sas(&self, expiry_offset: i64) -> String {
        let expiry = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            as i64
            + expiry_offset) as u64;
        shared_access_signature(self.emulator.host_name(), "provisioningserviceowner", &self.key, expiry)
    }

    /// Sends a request and checks the answer against the contract of `operation` (or of any
    /// operation's error answer when `operation` is `None`).
    async fn send(
        &self,
        operation: Option<&str>,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path_and_query}", self.emulator.url()));
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("authorization")) {
            request = request.header("authorization", self.sas(3600));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the emulator answers");
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let text = response.text().await.unwrap();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("the answer is JSON")
        };
        if status >= 400 {
            let code = headers
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .expect("errors carry x-ms-error-code");
            assert_eq!(body["errorCode"].to_string(), code, "the header and the body agree");
            assert_eq!(
                body["errorCode"].as_i64().unwrap() / 1000,
                i64::from(status),
                "six-digit codes start with the status"
            );
        }
        self.contract.check(operation.unwrap_or("IndividualEnrollment_Get"), status, &body);
        Answer { status, headers, body, text }
    }

    async fn call(
        &self,
        operation: &str,
        id: Option<&str>,
        headers: &[(&str, String)],
        body: Option<&Value>,
    ) -> Answer {
        let (method, template, _) = &self.contract.operations[operation];
        let path = match id {
            Some(id) => template.replace("{id}", &dps_operator::dps::auth::encode_uri_component(id)),
            None => template.clone(),
        };
        self.send(Some(operation), method.clone(), &format!("{path}?api-version=2021-10-01"), headers, body)
            .await
    }
}

fn symmetric_key_group(id: &str) -> Value {
    json!({"enrollmentGroupId": id, "attestation": {"type": "symmetricKey"}})
}

fn certificate_pem() -> String {
    let mut params = rcgen::CertificateParams::new(vec!["device-7".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "device-7");
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

#[tokio::test]
async fn every_answer_to_every_operation_matches_the_swagger() {
    let emulator = emulator(EmulatorConfig { operations_per_minute: None, ..Default::default() }).await;
    let contract = Contract::new();
    let raw = RawClient::new(&emulator, &contract);

    let group = raw
        .call(
            "EnrollmentGroup_CreateOrUpdate",
            Some("thermostats"),
            &[],
            Some(&symmetric_key_group("thermostats")),
        )
        .await;
    assert_eq!(group.status, 200);
    let etag = group.body["etag"].as_str().unwrap().to_owned();
    let full = json!({
        "registrationId": "device-7", "deviceId": "device-7",
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": certificate_pem()}}}},
        "capabilities": {"iotEdge": true}, "iotHubs": ["contoso-west.azure-devices.net"], "allocationPolicy": "static",
        "initialTwin": {"tags": {"site": "Redmond", "floor": 3}, "properties": {"desired": {"interval": 60}}},
        "optionalDeviceInformation": {"serial": "CH-1"},
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": false}, "provisioningStatus": "disabled",
    });
    assert_eq!(
        raw.call("IndividualEnrollment_CreateOrUpdate", Some("device-7"), &[], Some(&full)).await.status,
        200
    );
    let tpm = json!({"registrationId": "kiosk-3", "attestation": {"type": "tpm", "tpm": {"endorsementKey": BASE64.encode([7u8; 256])}}});
    assert_eq!(
        raw.call("IndividualEnrollment_CreateOrUpdate", Some("kiosk-3"), &[], Some(&tpm)).await.status,
        200
    );
    emulator.add_registration(
        DeviceRegistrationState {
            registration_id: Some("device-7".into()),
            status: Some(RegistrationStatus::Assigned),
            substatus: Some(RegistrationSubstatus::InitialAssignment),
            assigned_hub: Some("contoso-west.azure-devices.net".into()),
            device_id: Some("device-7".into()),
            ..Default::default()
        },
        Some("thermostats".into()),
    );

    let query = json!({"query": "SELECT *"});
    let page = [("x-ms-max-item-count", "1".to_owned())];
    let answers = [
        raw.call("EnrollmentGroup_Get", Some("thermostats"), &[], None).await,
        raw.call("EnrollmentGroup_GetAttestationMechanism", Some("thermostats"), &[], None).await,
        raw.call("EnrollmentGroup_Query", None, &page, Some(&query)).await,
        raw.call("IndividualEnrollment_Get", Some("device-7"), &[], None).await,
        raw.call("IndividualEnrollment_GetAttestationMechanism", Some("device-7"), &[], None).await,
        raw.call("IndividualEnrollment_Query", None, &page, Some(&query)).await,
        raw.call("DeviceRegistrationState_Get", Some("device-7"), &[], None).await,
        raw.call("DeviceRegistrationState_Query", Some("thermostats"), &[], Some(&query)).await,
        raw.call(
            "IndividualEnrollment_RunBulkOperation",
            None,
            &[],
            Some(&json!({"mode": "create", "enrollments": [tpm]})),
        )
        .await,
        raw.call(
            "EnrollmentGroup_RunBulkOperation",
            None,
            &[],
            Some(&json!({"mode": "update", "enrollmentGroups": [symmetric_key_group("more")]})),
        )
        .await,
    ];
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200; 10], "every operation succeeds");
    assert_eq!(answers[8].body["isSuccessful"], json!(false), "creating an existing item fails per item");
    assert_eq!(answers[8].body["errors"][0]["registrationId"], json!("kiosk-3"));
    assert_eq!(answers[2].headers["x-ms-item-type"], "EnrollmentGroup");
    assert!(!answers[2].headers.contains_key("x-ms-continuation"), "one group: one page");
    assert!(answers[5].headers.contains_key("x-ms-continuation"), "two enrollments in pages of one");
    assert_eq!(answers[5].headers["x-ms-item-type"], "Enrollment");
    assert_eq!(answers[7].headers["x-ms-item-type"], "DeviceRegistration");
    assert_eq!(
        answers[3].body["registrationState"]["status"],
        json!("assigned"),
        "an enrollment shows its registration"
    );
    assert_eq!(
        answers[3].body["attestation"]["x509"]["clientCertificates"]["primary"]["info"]["subjectName"],
        json!("CN=device-7")
    );
    assert!(
        answers[3].body["attestation"]["x509"]["clientCertificates"]["primary"].get("certificate").is_none()
    );
    assert_eq!(answers[0].body["attestation"], json!({"type": "symmetricKey"}), "reads never return keys");
    assert!(answers[1].body["symmetricKey"]["primaryKey"].is_string(), "the attestation mechanism does");
    assert!(
        !answers[2].text.contains("primaryKey") && !answers[5].text.contains("primaryKey"),
        "queries never return keys"
    );
    let timestamp = answers[3].body["createdDateTimeUtc"].as_str().unwrap();
    assert_eq!(timestamp.len(), "2025-12-04T20:43:38.6838432Z".len(), "7 fractional digits: {timestamp}");
    assert!(!answers.iter().any(|a| a.text.contains("null")), "absent fields are omitted, never null");

    let errors = [
        raw.call(
            "EnrollmentGroup_CreateOrUpdate",
            Some("thermostats"),
            &[],
            Some(&symmetric_key_group("thermostats")),
        )
        .await,
        raw.call(
            "EnrollmentGroup_CreateOrUpdate",
            Some("thermostats"),
            &[("if-match", "\"stale\"".into())],
            Some(&symmetric_key_group("thermostats")),
        )
        .await,
        raw.call("EnrollmentGroup_CreateOrUpdate", Some("bad_"), &[], Some(&symmetric_key_group("bad_")))
            .await,
        raw.call("EnrollmentGroup_Get", Some("missing"), &[], None).await,
        raw.call("DeviceRegistrationState_Get", Some("missing"), &[], None).await,
        raw.call("EnrollmentGroup_Delete", Some("thermostats"), &[("if-match", "stale".into())], None).await,
        raw.call("EnrollmentGroup_Get", Some("thermostats"), &[("authorization", raw.sas(-600))], None).await,
        raw.call(
            "IndividualEnrollment_Query",
            None,
            &[("x-ms-continuation", "not-a-token!".into())],
            Some(&query),
        )
        .await,
    ];
    let statuses: Vec<u16> = errors.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [409, 412, 400, 404, 404, 412, 401, 400]);
    assert_eq!(errors[3].body["errorCode"], json!(404201));
    assert_eq!(errors[4].body["errorCode"], json!(404202));
    assert!(errors[6].body["message"].as_str().unwrap().contains("expired"));

    let deleted = raw.call("EnrollmentGroup_Delete", Some("thermostats"), &[("if-match", etag)], None).await;
    assert_eq!((deleted.status, deleted.body.clone()), (204, Value::Null));
    assert_eq!(raw.call("DeviceRegistrationState_Delete", Some("device-7"), &[], None).await.status, 204);
}

#[tokio::test]
async fn what_real_clients_send_is_understood() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new();
    let raw = RawClient::new(&emulator, &contract);
    let group = symmetric_key_group("Line-1");
    let put = |path: &'static str, version: &'static str| {
        let raw = &raw;
        let group = group.clone();
        async move {
            raw.send(
                Some("EnrollmentGroup_CreateOrUpdate"),
                Method::PUT,
                &format!("{path}?api-version={version}"),
                &[],
                Some(&group),
            )
            .await
        }
    };
    let created = put("/enrollmentGroups/Line-1", "2019-03-31").await;
    assert_eq!(created.status, 200, "the C# v1 SDK's api-version: {}", created.text);
    let etag = created.body["etag"].as_str().unwrap().to_owned();

    for version in ["2018-04-01", "2021-10-01", "2025-07-01-preview"] {
        let answer = raw
            .send(
                Some("EnrollmentGroup_Get"),
                Method::GET,
                &format!("/enrollmentgroups/line-1/?api-version={version}"),
                &[],
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "{version} with lower-case path and trailing slash");
        assert_eq!(answer.body["enrollmentGroupId"], json!("Line-1"), "the stored casing is kept");
    }
    let missing = raw.send(None, Method::GET, "/enrollmentGroups/Line-1", &[], None).await;
    assert_eq!((missing.status, missing.body["errorCode"].clone()), (400, json!(400001)));
    let unknown =
        raw.send(None, Method::GET, "/enrollmentGroups/Line-1?api-version=2017-01-01", &[], None).await;
    assert_eq!(unknown.status, 400);

    // The Node SDK: lower-case `enrollmentgroups` for the attestation mechanism, bulk with a
    // trailing slash, ids URL-encoded.
    let mechanism = raw
        .send(
            Some("EnrollmentGroup_GetAttestationMechanism"),
            Method::POST,
            "/enrollmentgroups/line-1/attestationmechanism?api-version=2021-10-01",
            &[],
            None,
        )
        .await;
    assert_eq!(mechanism.status, 200);
    let bulk = json!({"mode": "create", "enrollments": [{"registrationId": "boiler:0042", "attestation": {"type": "symmetricKey"}}]});
    let bulk = raw
        .send(
            Some("IndividualEnrollment_RunBulkOperation"),
            Method::POST,
            "/enrollments/?api-version=2021-10-01",
            &[],
            Some(&bulk),
        )
        .await;
    assert_eq!(bulk.body["isSuccessful"], json!(true));
    let encoded = raw
        .send(
            Some("IndividualEnrollment_Get"),
            Method::GET,
            "/enrollments/boiler%3A0042?api-version=2021-10-01",
            &[],
            None,
        )
        .await;
    assert_eq!(encoded.status, 200);

    // The C# v1 SDK quotes the etag; the Node SDK sends it raw; bulk delete items carry only ids.
    let quoted = raw
        .send(
            Some("EnrollmentGroup_CreateOrUpdate"),
            Method::PUT,
            "/enrollmentGroups/line-1?api-version=2021-10-01",
            &[("if-match", format!("\"{etag}\""))],
            Some(&group),
        )
        .await;
    assert_eq!(quoted.status, 200);
    let delete = json!({"mode": "delete", "enrollments": [{"registrationId": "boiler:0042"}]});
    let deleted = raw
        .send(
            Some("IndividualEnrollment_RunBulkOperation"),
            Method::POST,
            "/enrollments?api-version=2021-10-01",
            &[],
            Some(&delete),
        )
        .await;
    assert_eq!(deleted.body["isSuccessful"], json!(true));

    let wrong_media = raw
        .http
        .put(format!("{}/enrollmentGroups/line-2?api-version=2021-10-01", emulator.url()))
        .header("authorization", raw.sas(3600))
        .header("content-type", "text/plain")
        .body(symmetric_key_group("line-2").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_media.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let not_allowed =
        raw.send(None, Method::PATCH, "/enrollmentGroups/line-1?api-version=2021-10-01", &[], None).await;
    assert_eq!(not_allowed.status, 405);
}

/// What replaying an example should give, where it is not what the example shows, and why.
fn pinned_outcome(example: &str) -> Option<(u16, &'static str)> {
    let generated_filler = "the generated example is not a valid DPS request: attestation type none, a path id that differs from the body id, and filler strings where certificates and keys belong, which DPS refuses";
    let stale_etag = "the example's If-Match is a random string, not the item's etag";
    let foreign_token = "the example's continuation token was not issued by this service";
    let not_a_query = "the example's query is the filler word 'xdvc', not a query";
    Some(match example {
        "EnrollmentGroup_CreateOrUpdate_MinimumSet_Gen"
        | "IndividualEnrollment_CreateOrUpdate_MinimumSet_Gen" => (400, generated_filler),
        "EnrollmentGroup_CreateOrUpdate_MaximumSet_Gen"
        | "IndividualEnrollment_CreateOrUpdate_MaximumSet_Gen" => (400, generated_filler),
        "EnrollmentGroup_Delete_MaximumSet_Gen"
        | "IndividualEnrollment_Delete_MaximumSet_Gen"
        | "DeviceRegistrationState_Delete_MaximumSet_Gen" => (412, stale_etag),
        "EnrollmentGroup_Query_MaximumSet_Gen"
        | "IndividualEnrollment_Query_MaximumSet_Gen"
        | "DeviceRegistrationState_Query_MaximumSet_Gen" => (400, foreign_token),
        "EnrollmentGroup_Query_MinimumSet_Gen" | "IndividualEnrollment_Query_MinimumSet_Gen" => {
            (400, not_a_query)
        }
        _ => return None,
    })
}

#[tokio::test]
async fn the_swagger_examples_replay_as_dps_would_answer_them() {
    let contract = Contract::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/examples");
    let mut files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 30, "every service example is replayed");
    let mut report = Vec::new();
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let example: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        let operation = example["operationId"].as_str().unwrap();
        let parameters = example["parameters"].as_object().unwrap();
        let documented: u16 =
            example["responses"].as_object().unwrap().keys().next().unwrap().parse().unwrap();
        // The documented answers, too, must fit the schema the validator uses.
        contract.check(
            operation,
            documented,
            example["responses"][documented.to_string()].get("body").unwrap_or(&Value::Null),
        );

        // A fresh emulator per example, holding the item the example reads, updates or deletes.
        let emulator = emulator(EmulatorConfig::default()).await;
        let id = parameters.get("id").and_then(Value::as_str);
        if let Some(id) = id {
            seed(&emulator, operation, id).await;
        }
        let raw = RawClient::new(&emulator, &contract);
        let mut headers = Vec::new();
        for header in ["If-Match", "x-ms-max-item-count", "x-ms-continuation"] {
            if let Some(value) = parameters.get(header) {
                headers
                    .push((header, value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string())));
            }
        }
        let body = parameters.values().find(|v| v.is_object());
        let answer = raw.call(operation, id, &headers, body).await;
        let expected = pinned_outcome(&name).map_or(documented, |(status, _)| status);
        if answer.status != expected {
            report.push(format!("{name}: answered {} ({}), expected {expected}", answer.status, answer.text));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// Puts in place what an example's operation acts on: an enrollment, a group or a registration
/// with the example's id.
async fn seed(emulator: &RunningEmulator, operation: &str, id: &str) {
    let client = client(emulator);
    let attestation = AttestationMechanism {
        type_: AttestationType::SymmetricKey,
        symmetric_key: Some(SymmetricKeyAttestation::default()),
        ..Default::default()
    };
    if operation.starts_with("IndividualEnrollment_") && !operation.ends_with("CreateOrUpdate") {
        let enrollment =
            IndividualEnrollment { registration_id: id.into(), attestation, ..Default::default() };
        client.put(&enrollment, IfMatch::None).await.unwrap();
    } else if operation.starts_with("EnrollmentGroup_") && !operation.ends_with("CreateOrUpdate") {
        let group = EnrollmentGroup { enrollment_group_id: id.into(), attestation, ..Default::default() };
        client.put(&group, IfMatch::None).await.unwrap();
    } else if operation.starts_with("DeviceRegistrationState_") {
        emulator.add_registration(
            DeviceRegistrationState {
                registration_id: Some(id.into()),
                status: Some(RegistrationStatus::Assigned),
                ..Default::default()
            },
            Some(id.into()),
        );
    }
}

#[test]
fn the_contract_check_refuses_bodies_the_swagger_does_not_allow() {
    let contract = Contract::new();
    contract.check(
        "EnrollmentGroup_Get",
        200,
        &json!({"enrollmentGroupId": "g", "attestation": {"type": "x509"}}),
    );
    for wrong in [
        json!({"enrollmentGroupId": 5, "attestation": {"type": "x509"}}),
        json!({"enrollmentGroupId": "g"}),
        json!({"enrollmentGroupId": "g", "attestation": {"type": "password"}}),
        json!({"enrollmentGroupId": "g", "attestation": {"type": "x509"}, "createdDateTimeUtc": "yesterday"}),
        json!({"enrollmentGroupId": "g", "attestation": {"type": "x509"}, "etag": null}),
    ] {
        let refused = std::panic::catch_unwind(|| contract.check("EnrollmentGroup_Get", 200, &wrong));
        assert!(refused.is_err(), "{wrong} passed the contract check");
    }
    let error = std::panic::catch_unwind(|| {
        contract.check("EnrollmentGroup_Get", 404, &json!({"errorCode": "not a number"}))
    });
    assert!(error.is_err());
}
