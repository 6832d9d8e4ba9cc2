//! The emulator against the DPS wire contract: every answer validated against the swagger in
//! `tests/specs/` (definitions read from the file, not restated), the swagger's example requests
//! replayed, and what real clients send (other api-versions, path casing, quoted etags) accepted.

mod support;

use std::{fs, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{EmulatorConfig, RunningEmulator};
use dps_operator::dps::{IfMatch, auth::shared_access_signature, models::*};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{
    contract::{Contract, operations},
    dps::{client, emulator},
};

fn spec() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/dps-service-2021-10-01.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    // Where the swagger is stricter than DPS and every SDK (dps-api.md §12a): twin values may be
    // scalars, not only objects.
    spec["definitions"]["TwinCollection"]["additionalProperties"] = json!({});
    // DPS answers `provisioningStatus: null` when it was not set (azure-sdk-for-python recording
    // `test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_symmetrickey_lifecycle.json`).
    for definition in ["IndividualEnrollment", "EnrollmentGroup"] {
        let status = &mut spec["definitions"][definition]["properties"]["provisioningStatus"];
        status["type"] = json!(["string", "null"]);
        status["enum"].as_array_mut().unwrap().push(Value::Null);
    }
    spec
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

/// The TPM enrollment `kiosk-3`.
fn tpm_enrollment() -> Value {
    json!({"registrationId": "kiosk-3", "attestation": {"type": "tpm", "tpm": {"endorsementKey": BASE64.encode([7u8; 256])}}})
}

/// A group, an X.509 enrollment with every field, a TPM one and a registration; answers the
/// group's etag.
async fn seed_every_kind(raw: &RawClient<'_>, emulator: &dps_emulator::RunningEmulator) -> String {
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
    let tpm = tpm_enrollment();
    assert_eq!(
        raw.call("IndividualEnrollment_CreateOrUpdate", Some("kiosk-3"), &[], Some(&tpm)).await.status,
        200
    );
    emulator.add_registration(
        json!({
            "registrationId": "device-7",
            "status": "assigned",
            "substatus": "initialAssignment",
            "assignedHub": "contoso-west.azure-devices.net",
            "deviceId": "device-7",
        }),
        Some("thermostats".into()),
    );
    etag
}

/// Conflicts, stale etags, invalid ids, missing items, expired signatures and bad tokens.
async fn every_refusal_has_its_dps_status_and_code(raw: &RawClient<'_>, query: &Value) {
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
            Some(query),
        )
        .await,
    ];
    let statuses: Vec<u16> = errors.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [409, 412, 400, 404, 404, 412, 401, 400]);
    assert_eq!(errors[3].body["errorCode"], json!(404202), "a missing group");
    assert_eq!(errors[4].body["errorCode"], json!(404203), "a missing registration");
    assert!(errors[6].body["message"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn every_answer_to_every_operation_matches_the_swagger() {
    let emulator = emulator(EmulatorConfig { operations_per_minute: None, ..Default::default() }).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);

    let etag = seed_every_kind(&raw, &emulator).await;

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
            Some(&json!({"mode": "create", "enrollments": [tpm_enrollment()]})),
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
    // Absent fields are left out, but for `provisioningStatus`, answered null (see `spec()`).
    assert!(
        !answers.iter().any(|a| a.text.replace(r#""provisioningStatus":null"#, "").contains("null")),
        "absent fields are omitted, never null"
    );

    every_refusal_has_its_dps_status_and_code(&raw, &query).await;

    let deleted = raw.call("EnrollmentGroup_Delete", Some("thermostats"), &[("if-match", etag)], None).await;
    assert_eq!((deleted.status, deleted.body.clone()), (204, Value::Null));
    assert_eq!(raw.call("DeviceRegistrationState_Delete", Some("device-7"), &[], None).await.status, 204);
}

#[tokio::test]
async fn what_real_clients_send_is_understood() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let group = symmetric_key_group("Line-1");
    let etag = api_versions_and_path_casing(&raw, &group).await;
    node_sdk_paths(&raw).await;
    etags_quoted_or_raw_and_bulk_deletes_by_id(&raw, &group, &etag).await;
    what_dps_refuses_to_parse(&raw, &emulator).await;
}

/// The api-versions real SDKs send, lower-case paths and trailing slashes; none, or an unknown
/// one, refused. Answers the etag of the group made.
async fn api_versions_and_path_casing(raw: &RawClient<'_>, group: &Value) -> String {
    let path = "/enrollmentGroups/Line-1?api-version=2019-03-31";
    let created = raw.send(Some("EnrollmentGroup_CreateOrUpdate"), Method::PUT, path, &[], Some(group)).await;
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

    etag
}

async fn node_sdk_paths(raw: &RawClient<'_>) {
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
}

async fn etags_quoted_or_raw_and_bulk_deletes_by_id(raw: &RawClient<'_>, group: &Value, etag: &str) {
    // The C# v1 SDK quotes the etag; the Node SDK sends it raw; bulk delete items carry only ids.
    let quoted = raw
        .send(
            Some("EnrollmentGroup_CreateOrUpdate"),
            Method::PUT,
            "/enrollmentGroups/line-1?api-version=2021-10-01",
            &[("if-match", format!("\"{etag}\""))],
            Some(group),
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
}

/// A body sent as `text/plain`, and a method DPS does not have.
async fn what_dps_refuses_to_parse(raw: &RawClient<'_>, emulator: &RunningEmulator) {
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
    let contract = Contract::new(spec());
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
        emulator.add_registration(json!({"registrationId": id, "status": "assigned"}), Some(id.into()));
    }
}

#[test]
fn the_contract_check_refuses_bodies_the_swagger_does_not_allow() {
    let contract = Contract::new(spec());
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

// What recorded DPS traffic shows, one test per behaviour. The recordings are the official
// Python service SDK's (azure-sdk-for-python, `sdk/iothub/azure-iot-deviceprovisioning/tests/
// recordings/`, captured against a live DPS; "SDK recording X" below) and the Azure CLI IoT
// extension's live tests (azure-iot-cli-extension, `azext_iot/tests/dps/`). The SDK recording
// `…symmetrickey_lifecycle.json` is
// `test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_symmetrickey_lifecycle.json`.

fn key(byte: u8) -> String {
    BASE64.encode([byte; 32])
}

/// SDK recording `…symmetrickey_lifecycle.json` and `test_device_registration…lifecycle.json`: PUT
/// answers carry the keys, given or generated, for both kinds; GET and query never do.
#[tokio::test]
async fn a_put_answers_with_the_keys_and_no_read_does() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let given = json!({"registrationId": "sym-1", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": key(1), "secondaryKey": key(2)}}});
    let put = raw.call("IndividualEnrollment_CreateOrUpdate", Some("sym-1"), &[], Some(&given)).await;
    assert_eq!(
        put.body["attestation"]["symmetricKey"],
        json!({"primaryKey": key(1), "secondaryKey": key(2)})
    );

    let generated = json!({"enrollmentGroupId": "group-1", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": null, "secondaryKey": null}}});
    let put = raw.call("EnrollmentGroup_CreateOrUpdate", Some("group-1"), &[], Some(&generated)).await;
    let keys = &put.body["attestation"]["symmetricKey"];
    assert!(keys["primaryKey"].is_string() && keys["secondaryKey"].is_string(), "generated keys: {keys}");

    let get = raw.call("IndividualEnrollment_Get", Some("sym-1"), &[], None).await;
    assert_eq!(get.body["attestation"], json!({"type": "symmetricKey"}), "a GET has no keys");
    let get = raw.call("EnrollmentGroup_Get", Some("group-1"), &[], None).await;
    assert_eq!(get.body["attestation"], json!({"type": "symmetricKey"}));
    let query = raw.call("IndividualEnrollment_Query", None, &[], Some(&json!({"query": "SELECT *"}))).await;
    assert_eq!(query.body[0]["attestation"], json!({"type": "symmetricKey"}), "a query has no keys");
}

/// SDK recording `…symmetrickey_lifecycle.json`: the GET of an enrollment no device used holds
/// `registrationState: {registrationId, status: "unassigned"}`; its query results hold none.
#[tokio::test]
async fn an_enrollment_no_device_used_reads_as_unassigned() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let body = json!({"registrationId": "Sensor-9", "attestation": {"type": "symmetricKey"}});
    let put = raw.call("IndividualEnrollment_CreateOrUpdate", Some("Sensor-9"), &[], Some(&body)).await;
    assert!(put.body.get("registrationState").is_none(), "{}", put.text);
    let get = raw.call("IndividualEnrollment_Get", Some("sensor-9"), &[], None).await;
    assert_eq!(get.body["registrationState"], json!({"registrationId": "Sensor-9", "status": "unassigned"}));
    let query = raw.call("IndividualEnrollment_Query", None, &[], Some(&json!({"query": "SELECT *"}))).await;
    assert!(query.body[0].get("registrationState").is_none(), "{}", query.text);
}

/// azure-iot-cli-extension `azext_iot/tests/dps/enrollment/test_iot_dps_enrollment_int.py`,
/// `test_dps_enrollment_x509_lifecycle`: `az iot dps enrollment update --rc` removes the primary
/// certificate and DPS answers with only the secondary.
#[tokio::test]
async fn an_x509_enrollment_may_keep_only_its_secondary_certificate() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let pem = certificate_pem();
    let both = json!({"registrationId": "device-7", "attestation": {"type": "x509", "x509": {"clientCertificates": {
        "primary": {"certificate": pem}, "secondary": {"certificate": pem}}}}});
    let created = raw.call("IndividualEnrollment_CreateOrUpdate", Some("device-7"), &[], Some(&both)).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let etag = created.body["etag"].as_str().unwrap().to_owned();
    let secondary_only = json!({"registrationId": "device-7", "attestation": {"type": "x509", "x509": {"clientCertificates": {
        "primary": null, "secondary": {"certificate": pem}}}}});
    let updated = raw
        .call(
            "IndividualEnrollment_CreateOrUpdate",
            Some("device-7"),
            &[("if-match", etag)],
            Some(&secondary_only),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let certificates = &updated.body["attestation"]["x509"]["clientCertificates"];
    assert!(certificates["primary"].is_null(), "{certificates}");
    assert!(certificates["secondary"]["info"]["sha256Thumbprint"].is_string(), "{certificates}");
}

/// SDK recording `…symmetrickey_lifecycle.json` (`sym_enrollment2`): `capabilities` and
/// `reprovisionPolicy` sent as null are left out of every answer, `provisioningStatus` null is
/// answered null; nothing is defaulted.
#[tokio::test]
async fn null_settings_are_not_given_defaults() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let body = json!({"registrationId": "plain", "attestation": {"type": "symmetricKey"},
        "capabilities": null, "reprovisionPolicy": null, "provisioningStatus": null});
    let put = raw.call("IndividualEnrollment_CreateOrUpdate", Some("plain"), &[], Some(&body)).await;
    let get = raw.call("IndividualEnrollment_Get", Some("plain"), &[], None).await;
    let query = raw.call("IndividualEnrollment_Query", None, &[], Some(&json!({"query": "SELECT *"}))).await;
    for (what, answer) in [("PUT", &put.body), ("GET", &get.body), ("query", &query.body[0])] {
        assert!(answer.get("capabilities").is_none(), "{what}: {answer}");
        assert!(answer.get("reprovisionPolicy").is_none(), "{what}: {answer}");
        assert_eq!(answer.get("provisioningStatus"), Some(&Value::Null), "{what}: {answer}");
    }
}

/// SDK recording `test_device_registration…lifecycle.json`: a group with `allocationPolicy:
/// static` and `iotHubs: null` is created (a device then registers to the linked hub).
#[tokio::test]
async fn static_allocation_without_hubs_is_accepted() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let body = json!({"enrollmentGroupId": "static-1", "attestation": {"type": "symmetricKey"},
        "allocationPolicy": "static", "iotHubs": null});
    let put = raw.call("EnrollmentGroup_CreateOrUpdate", Some("static-1"), &[], Some(&body)).await;
    assert_eq!((put.status, put.body["allocationPolicy"].as_str()), (200, Some("static")), "{}", put.text);
}

/// Every bulk answer in the SDK recordings `…bulk_operations.json` carries `errors`, empty
/// when all succeeded.
#[tokio::test]
async fn a_successful_bulk_answers_an_empty_error_list() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let body = json!({"mode": "create", "enrollments": [{"registrationId": "b-1", "attestation": {"type": "symmetricKey"}}]});
    let bulk = raw.call("IndividualEnrollment_RunBulkOperation", None, &[], Some(&body)).await;
    assert_eq!(bulk.body, json!({"isSuccessful": true, "errors": []}));
}

/// SDK recordings `test_individual_enrollments.pyTestIndividualEnrollmentstest_individual_enrollment_bulk_operations.json`
/// and `test_enrollment_groups.pyTestEnrollmentGroupstest_enrollment_group_bulk_operations.json`:
/// mode `update` over existing items sent without etags answers each `409201 Enrollment already
/// exists.` (groups `409202 EnrollmentGroup already exists.`) and changes nothing. The same calls
/// show a bulk `delete` of the items succeeding.
#[tokio::test]
async fn a_bulk_update_without_etags_never_overwrites() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let kinds = [
        (
            "IndividualEnrollment_RunBulkOperation",
            "enrollments",
            "registrationId",
            "IndividualEnrollment_Get",
            409201,
            "Enrollment already exists.",
        ),
        (
            "EnrollmentGroup_RunBulkOperation",
            "enrollmentGroups",
            "enrollmentGroupId",
            "EnrollmentGroup_Get",
            409202,
            "EnrollmentGroup already exists.",
        ),
    ];
    for (operation, items, id_field, get, code, status) in kinds {
        let item = |edge: bool| json!({id_field: "bulk-1", "attestation": {"type": "symmetricKey"}, "capabilities": {"iotEdge": edge}});
        let bulk = |mode: &str, edge: bool| json!({"mode": mode, items: [item(edge)]});
        let created = raw.call(operation, None, &[], Some(&bulk("create", false))).await;
        assert_eq!(created.body["isSuccessful"], true, "{}", created.text);
        let updated = raw.call(operation, None, &[], Some(&bulk("update", true))).await;
        assert_eq!(
            updated.body,
            json!({"isSuccessful": false, "errors": [{id_field: "bulk-1", "errorCode": code, "errorStatus": status}]})
        );
        let held = raw.call(get, Some("bulk-1"), &[], None).await;
        assert_eq!(held.body["capabilities"]["iotEdge"], false, "not overwritten: {}", held.text);
        let deleted = raw.call(operation, None, &[], Some(&bulk("delete", true))).await;
        assert_eq!(deleted.body, json!({"isSuccessful": true, "errors": []}));
    }
}

/// The codes of the bulk recordings above, for single PUTs too: 409201 for an enrollment,
/// 409202 for a group.
#[tokio::test]
async fn a_create_over_an_existing_item_is_a_conflict_with_the_kind_s_code() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let enrollment = json!({"registrationId": "twice", "attestation": {"type": "symmetricKey"}});
    let group = symmetric_key_group("twice");
    for (operation, body, code) in [
        ("IndividualEnrollment_CreateOrUpdate", enrollment, 409201),
        ("EnrollmentGroup_CreateOrUpdate", group, 409202),
    ] {
        raw.call(operation, Some("twice"), &[], Some(&body)).await;
        let again = raw.call(operation, Some("twice"), &[], Some(&body)).await;
        assert_eq!((again.status, again.body["errorCode"].as_i64()), (409, Some(code)), "{operation}");
    }
}

/// azure-iot-sdk-node `provisioning/service/samples/query.js` queries with `{"query": "*"}`.
#[tokio::test]
async fn a_query_of_a_star_selects_everything() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    raw.call("EnrollmentGroup_CreateOrUpdate", Some("all-1"), &[], Some(&symmetric_key_group("all-1"))).await;
    let query = raw.call("EnrollmentGroup_Query", None, &[], Some(&json!({"query": "*"}))).await;
    assert_eq!(
        (query.status, query.body[0]["enrollmentGroupId"].as_str()),
        (200, Some("all-1")),
        "{}",
        query.text
    );
}

/// DPS reads a body by its model: a member of the wrong type or outside an enum is refused, naming
/// it; a member it does not know is ignored and never stored; `null` is the same as leaving a
/// member out (the SDK recordings' PUTs send `null` for every unset member and DPS answers
/// without them: azure-sdk-for-python
/// `test_enrollment_groups.pyTestEnrollmentGroupstest_enrollment_group_symmetrickey_lifecycle.json`).
#[tokio::test]
async fn a_body_is_read_by_the_swagger_s_model() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let with = |field: &str, value: Value| {
        let mut body = symmetric_key_group("read-1");
        body[field] = value;
        body
    };
    for (field, value, named) in [
        (
            "allocationPolicy",
            json!("nearest"),
            "allocationPolicy must be one of hashed, geoLatency, static, custom",
        ),
        ("capabilities", json!({"iotEdge": "yes"}), "capabilities.iotEdge must be true or false"),
        ("iotHubs", json!("contoso.azure-devices.net"), "iotHubs must be a list"),
    ] {
        let body = with(field, value);
        let refused = raw.call("EnrollmentGroup_CreateOrUpdate", Some("read-1"), &[], Some(&body)).await;
        assert_eq!(
            (refused.status, refused.body["errorCode"].clone()),
            (400, json!(400008)),
            "{}",
            refused.text
        );
        assert!(refused.body["message"].as_str().unwrap().contains(named), "{}", refused.text);
    }
    let mut body = with("misspeltField", json!(1));
    body["capabilities"] = Value::Null;
    body["attestation"]["symmetricKey"] = json!({"primaryKey": null, "extra": "x"});
    let stored = raw.call("EnrollmentGroup_CreateOrUpdate", Some("read-1"), &[], Some(&body)).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let read = raw.call("EnrollmentGroup_Get", Some("read-1"), &[], None).await;
    for answer in [&stored, &read] {
        assert!(!answer.text.contains("misspeltField") && !answer.text.contains("extra"), "{}", answer.text);
        assert!(answer.body.get("capabilities").is_none(), "{}", answer.text);
    }
    let missing = raw.call("IndividualEnrollment_Get", Some("nobody"), &[], None).await;
    assert_eq!(
        (missing.status, missing.body["errorCode"].clone()),
        (404, json!(404201)),
        "a missing enrollment"
    );
}

/// The swagger with its definitions closed (`additionalProperties: false`), so a misspelt or
/// invented field in a request fails; twin collections stay open, as they hold user data.
fn closed_spec() -> Value {
    let mut spec = spec();
    for (name, definition) in spec["definitions"].as_object_mut().unwrap() {
        if name != "TwinCollection" && definition.get("properties").is_some() {
            definition["additionalProperties"] = json!(false);
        }
    }
    spec
}

/// The schema of `operation`'s request body, or `None` where the swagger declares none (the
/// registration query, to which the SDKs send a query specification anyway: dps-api.md §12a).
fn request_schema(spec: &Value, operation: &str) -> Option<Value> {
    let (_, _, declared) = &operations(spec)[operation];
    let parameters = declared["parameters"].as_array()?;
    let body = parameters.iter().find(|p| p["in"] == "body")?;
    let mut schema = body["schema"].clone();
    schema["definitions"] = spec["definitions"].clone();
    Some(schema)
}

fn resolved_for(certificate: &str) -> dps_operator::controller::desired::Resolved {
    use dps_operator::{
        certificates,
        controller::desired::{Resolved, ResolvedCertificate},
    };
    let certificate =
        ResolvedCertificate { pem: certificate.to_owned(), facts: certificates::read(certificate).unwrap() };
    Resolved {
        keys: Some((Secret::new(key(1)), Secret::new(key(2)))),
        certificates: Some((certificate.clone(), Some(certificate))),
        webhook_url: Some(Secret::new("https://allocate.example.com/api/allocate".to_owned())),
        key_secret: None,
        rollover: None,
    }
}

/// What the operator's client sends, for the record the operator builds from every example
/// manifest and for every other call it makes, matches the closed swagger.
#[tokio::test]
async fn every_request_the_operator_sends_matches_the_closed_swagger() {
    use dps_operator::controller::kinds::EnrollmentKind;
    use futures::TryStreamExt;

    let emulator = emulator(EmulatorConfig::default()).await;
    let client = client(&emulator);
    let resolved = resolved_for(&certificate_pem());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut kinds_seen = std::collections::BTreeSet::new();
    for entry in fs::read_dir(examples).unwrap() {
        let yaml = fs::read_to_string(entry.unwrap().path()).unwrap();
        let manifest: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        match manifest["kind"].as_str().unwrap() {
            "IndividualEnrollment" => {
                let object: dps_operator::api::IndividualEnrollment =
                    serde_json::from_value(manifest).unwrap();
                let record = object.build(&object.dps_id(), &resolved).unwrap();
                client.put(&record, IfMatch::None).await.unwrap();
                client.bulk(BulkMode::Delete, &[record]).await.unwrap();
            }
            "EnrollmentGroup" => {
                let object: dps_operator::api::EnrollmentGroup = serde_json::from_value(manifest).unwrap();
                let record = object.build(&object.dps_id(), &resolved).unwrap();
                let created = client.put(&record, IfMatch::None).await.unwrap();
                let mut updated = record.clone();
                updated.etag = created.etag.clone();
                client.put(&updated, IfMatch::Etag(created.etag.as_deref().unwrap())).await.unwrap();
            }
            _ => continue,
        }
        kinds_seen.insert(yaml.lines().find(|l| l.starts_with("kind:")).unwrap().to_owned());
    }
    assert_eq!(kinds_seen.len(), 2, "examples of both enrollment kinds");
    let _: Vec<IndividualEnrollment> = client.query("SELECT *", Some(10)).try_collect().await.unwrap();
    let _: Vec<EnrollmentGroup> = client.query("SELECT *", Some(10)).try_collect().await.unwrap();
    let _: Vec<DeviceRegistrationState> =
        client.query_registrations("any", Some(10)).try_collect().await.unwrap();

    let spec = closed_spec();
    let requests = emulator.requests();
    let operations_seen: std::collections::BTreeSet<&str> =
        requests.iter().map(|(op, _)| op.as_str()).collect();
    assert!(
        [
            "IndividualEnrollment_CreateOrUpdate",
            "EnrollmentGroup_CreateOrUpdate",
            "IndividualEnrollment_RunBulkOperation",
            "EnrollmentGroup_Query"
        ]
        .iter()
        .all(|op| operations_seen.contains(op)),
        "{operations_seen:?}"
    );
    for (operation, body) in &requests {
        let body: Value = serde_json::from_slice(body).unwrap();
        let Some(schema) = request_schema(&spec, operation) else {
            assert_eq!(operation, "DeviceRegistrationState_Query", "only this one sends an undeclared body");
            continue;
        };
        let validator = jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&schema).unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{operation} sent what the swagger does not allow: {errors:?}\n{body}");
    }
}

#[test]
fn the_closed_swagger_refuses_a_misspelt_field() {
    let spec = closed_spec();
    let schema = request_schema(&spec, "IndividualEnrollment_CreateOrUpdate").unwrap();
    let validator = jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&schema).unwrap();
    let good = json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}, "initialTwin": {"tags": {"any": 1}}});
    assert!(validator.is_valid(&good));
    let misspelt = json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}, "iotHub": ["x"]});
    assert!(!validator.is_valid(&misspelt));
}

/// What `openssl x509 -noout <flag>` prints for the PEM certificate `pem`, after its `name=`.
fn openssl(pem: &str, flags: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("dps-conformance-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{:x}.pem", pem.len() * 31 + flags.len()));
    fs::write(&file, pem).unwrap();
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(&file)
        .args(flags)
        .output()
        .expect("openssl runs (scripts/test needs it)");
    assert!(output.status.success(), "openssl {flags:?}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    text.trim().split_once('=').map(|(_, value)| value.trim().to_owned()).unwrap_or(text)
}

/// The certificate info the emulator answers, as `openssl x509` reads the same certificates: the
/// thumbprints, serial number, validity and names (DPS writes names most specific part first,
/// `CN=…, O=…, C=…`, which is OpenSSL's RFC 2253 order with ", " between the parts).
#[tokio::test]
async fn certificate_info_is_what_openssl_reads() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let contract = Contract::new(spec());
    let raw = RawClient::new(&emulator, &contract);
    let issuer_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    for (kind, value) in [
        (rcgen::DnType::CountryName, "US"),
        (rcgen::DnType::OrganizationName, "Contoso"),
        (rcgen::DnType::CommonName, "Contoso Devices CA"),
    ] {
        ca_params.distinguished_name.push(kind, value);
    }
    let ca = ca_params.self_signed(&issuer_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, issuer_key);
    let mut leaf = rcgen::CertificateParams::new(vec!["device-9".to_owned()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::OrganizationName, "Contoso");
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "device-9");
    leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0x1b, 0x2c, 0x3d, 0x4e]));
    let leaf = leaf.signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer).unwrap();

    for (id, pem) in [("ca-cert", ca.pem()), ("leaf-cert", leaf.pem())] {
        let body = json!({"enrollmentGroupId": id, "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pem}}}}});
        let put = raw.call("EnrollmentGroup_CreateOrUpdate", Some(id), &[], Some(&body)).await;
        let info = &put.body["attestation"]["x509"]["signingCertificates"]["primary"]["info"];
        let hex = |flag: &str| openssl(&pem, &["-fingerprint", flag]).replace(':', "");
        assert_eq!(info["sha1Thumbprint"], json!(hex("-sha1")), "{id}");
        assert_eq!(info["sha256Thumbprint"], json!(hex("-sha256")), "{id}");
        assert_eq!(info["serialNumber"], json!(openssl(&pem, &["-serial"])), "{id}");
        let name = |flag: &str| openssl(&pem, &[flag, "-nameopt", "RFC2253"]).replace(',', ", ");
        assert_eq!(info["subjectName"], json!(name("-subject")), "{id}");
        assert_eq!(info["issuerName"], json!(name("-issuer")), "{id}");
        // openssl: `Jan  1 00:00:00 1975 GMT`.
        let date = |flag: &str| {
            let text = openssl(&pem, &[flag]);
            jiff::fmt::strtime::parse("%b %e %H:%M:%S %Y GMT", &text).unwrap().to_datetime().unwrap()
        };
        let answered = |field: &str| {
            info[field]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap()
                .to_zoned(jiff::tz::TimeZone::UTC)
                .datetime()
        };
        // Whole seconds, as DPS writes them (SDK recording
        // `test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_x509_lifecycle.json`).
        assert!(!info["notBeforeUtc"].as_str().unwrap().contains('.'), "{info}");
        assert_eq!(answered("notBeforeUtc"), date("-startdate"), "{id}");
        assert_eq!(answered("notAfterUtc"), date("-enddate"), "{id}");
        assert_eq!(info["version"], json!(3), "{id}");
    }
}
