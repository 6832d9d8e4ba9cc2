use serde_json::json;

use super::*;

fn options() -> Options {
    Options {
        namespace: Some("iot".into()),
        connection: "dps".into(),
        labels: [("team".to_owned(), "platform".to_owned())].into(),
        host: "contoso.azure-devices-provisioning.net".into(),
        ..Default::default()
    }
}

fn group(value: serde_json::Value) -> Imported<models::EnrollmentGroup> {
    Imported { record: serde_json::from_value(value).unwrap(), keys: None }
}

fn enrollment(value: serde_json::Value) -> Imported<models::IndividualEnrollment> {
    Imported { record: serde_json::from_value(value).unwrap(), keys: None }
}

#[test]
fn a_symmetric_key_group_keeps_every_field_and_its_keys_only_when_read() {
    let mut thermostats = group(json!({
        "enrollmentGroupId": "Thermostats_2026",
        "attestation": {"type": "symmetricKey", "symmetricKey": {}},
        "allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": "https://f.example/api?code=k", "apiVersion": "2021-10-01"},
        "initialTwin": {"tags": {"a": 1}, "properties": {"desired": {"b": 2}}},
        "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": true},
        "capabilities": {"iotEdge": true},
        "provisioningStatus": "disabled",
        "etag": "e",
    }));
    let written: Vec<Manifest> = manifests(std::slice::from_ref(&thermostats), &[], &options()).collect();
    let kinds: Vec<&str> = written.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, ["Secret", "EnrollmentGroup"], "the webhook Secret, then the group");
    let resource = &written[1];
    assert!(resource.name.starts_with("thermostats-2026-"), "{}", resource.name);
    let spec = &resource.object["spec"];
    assert_eq!(spec["enrollmentGroupId"], "Thermostats_2026", "the DPS id stays in the spec");
    assert_eq!(spec["adoption"], "Adopt");
    assert_eq!(spec["attestation"]["symmetricKey"]["createSecret"], false);
    assert_eq!(spec["customAllocation"]["webhookUrlSecretRef"]["name"], format!("{}-webhook", resource.name));
    assert_eq!(spec["initialTwin"], json!({"tags": {"a": 1}, "desiredProperties": {"b": 2}}));
    assert_eq!(spec["reprovisionPolicy"], json!({"updateHubAssignment": false, "migrateDeviceData": true}));
    assert_eq!((&spec["iotEdge"], &spec["provisioningStatus"]), (&json!(true), &json!("disabled")));
    assert_eq!(resource.object["metadata"]["labels"]["team"], "platform");
    assert!(resource.comment.as_ref().unwrap().contains("primaryKey and secondaryKey"));
    let webhook = &written[0].object;
    assert_eq!(webhook["data"]["url"], BASE64_URL);

    thermostats.keys = Some(("cHJpbWFyeQ==".into(), "c2Vjb25kYXJ5".into()));
    let written: Vec<Manifest> = manifests(&[thermostats], &[], &options()).collect();
    assert_eq!(written.len(), 3);
    let keys = written.iter().find(|m| m.name.ends_with("-keys")).expect("a key Secret");
    assert_eq!(keys.object["data"]["primaryKey"], "Y0hKcGJXRnllUT09", "the key, base64 in data");
    assert_eq!(written[2].comment, None, "nothing left to fill");
}

/// `https://f.example/api?code=k` in a Secret's data.
const BASE64_URL: &str = "aHR0cHM6Ly9mLmV4YW1wbGUvYXBpP2NvZGU9aw==";

#[test]
fn certificates_become_secrets_to_fill_named_by_thumbprint_and_tpm_and_ca_references_are_kept() {
    let info = |thumbprint: &str| {
        json!({"subjectName": "CN=x", "sha1Thumbprint": "S", "sha256Thumbprint": thumbprint, "issuerName": "CN=x",
               "notBeforeUtc": "2026-01-01T00:00:00Z", "notAfterUtc": "2027-01-01T00:00:00Z",
               "serialNumber": "01", "version": 3})
    };
    let camera = enrollment(json!({
        "registrationId": "camera-07",
        "attestation": {"type": "x509", "x509": {"clientCertificates": {
            "primary": {"info": info("AAAA")}, "secondary": {"info": info("BBBB")}}}},
    }));
    let tpm = enrollment(json!({
        "registrationId": "tpm-1", "deviceId": "d-1", "optionalDeviceInformation": {"m": 1},
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": "AToAAQ=="}},
    }));
    let gateways = group(json!({
        "enrollmentGroupId": "gateways",
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root", "secondary": "root-2"}}},
    }));
    let (groups, enrollments) = ([gateways], [camera, tpm]);
    let written: Vec<Manifest> = manifests(&groups, &enrollments, &options()).collect();
    let by_name: BTreeMap<&str, &Manifest> = written.iter().map(|m| (m.name.as_str(), m)).collect();
    let camera = by_name["camera-07"];
    let certificates = &camera.object["spec"]["attestation"]["x509"]["clientCertificates"];
    assert_eq!(
        certificates,
        &json!({"primary": {"name": "camera-07-cert"}, "secondary": {"name": "camera-07-cert2"}})
    );
    let comment = camera.comment.as_ref().unwrap();
    assert!(comment.contains("camera-07-cert: put the certificate") && comment.contains("AAAA"), "{comment}");
    assert!(comment.contains("BBBB"), "{comment}");
    let tpm = &by_name["tpm-1"].object["spec"];
    assert_eq!(tpm["attestation"]["tpm"]["endorsementKey"], "AToAAQ==");
    assert_eq!((&tpm["deviceId"], &tpm["optionalDeviceInformation"]), (&json!("d-1"), &json!({"m": 1})));
    let references = &by_name["gateways"].object["spec"]["attestation"]["x509"]["caReferences"];
    assert_eq!(references, &json!({"primary": "root", "secondary": "root-2"}));
    let yaml = document(camera);
    assert!(yaml.starts_with("# Secret camera-07-cert: put the certificate"), "{yaml}");
}

#[test]
fn what_cannot_be_managed_is_skipped_with_the_reason() {
    let legacy = enrollment(json!({
        "registrationId": "legacy",
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root"}}},
    }));
    let reason = enrollment_skip_reason(&legacy.record).unwrap();
    assert!(reason.contains("CA references"), "{reason}");
    let none = group(json!({"enrollmentGroupId": "g", "attestation": {"type": "none"}}));
    assert!(group_skip_reason(&none.record).is_some());
}

#[test]
fn enrollments_a_set_or_a_group_made_are_left_to_their_maker() {
    let made = |information: serde_json::Value| {
        enrollment(json!({
            "registrationId": "sensor-1",
            "attestation": {"type": "symmetricKey"},
            "optionalDeviceInformation": information,
        }))
    };
    let reason = enrollment_skip_reason(&made(json!({"enrollmentSet": "iot/fleet"})).record).unwrap();
    assert_eq!(reason, "made by IndividualEnrollmentSet iot/fleet: manage it through that set");
    let reason =
        enrollment_skip_reason(&made(json!({"blockedByEnrollmentGroup": "thermostats"})).record).unwrap();
    assert!(reason.starts_with("blocks a device of enrollment group thermostats:"), "{reason}");
    assert_eq!(enrollment_skip_reason(&made(json!({"site": "plant-7"})).record), None);
}
