//! IndividualEnrollmentSets on the real API server against the DPS emulator: members from the
//! spec, a ConfigMap (CSV) and a Secret (JSON lines) made in bulk calls, with keys derived from the
//! set key and a device keys Secret; one member changed, one removed, the set deleted; and the ways
//! users break things: a bad line, an id listed twice, an id another set or resource owns, an
//! enrollment DPS holds that nobody here made, a device keys Secret too large to write.

mod support;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_operator::{
    controller::derive_device_key,
    dps::models::{
        AttestationMechanism, AttestationType, IndividualEnrollment, ProvisioningStatus, Secret,
        SymmetricKeyAttestation,
    },
};
use futures::TryStreamExt;
use serde_json::Value;
use support::operator::{Operator, condition};

/// A set named `name` of the attestation `attestation` (YAML flow), with `rest` appended to its
/// spec (YAML, indented two spaces).
fn set(name: &str, attestation: &str, rest: &str) -> String {
    format!(
        "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollmentSet\nmetadata: {{name: {name}}}\nspec:\n  \
         serviceRef: {{name: dps}}\n  attestation: {attestation}\n{rest}"
    )
}

fn config_map(name: &str, key: &str, text: &str) -> String {
    let text = serde_json::to_string(text).unwrap();
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n  {key}: {text}\n")
}

/// Every individual enrollment DPS holds, by id.
async fn in_dps(operator: &Operator) -> std::collections::BTreeMap<String, IndividualEnrollment> {
    let records: Vec<IndividualEnrollment> =
        operator.dps.query::<IndividualEnrollment>("SELECT *", Some(100)).try_collect().await.unwrap();
    records.into_iter().map(|r| (r.registration_id.clone(), r)).collect()
}

fn counts(set: &Value) -> (u64, u64, u64, u64) {
    let c = &set["status"]["counts"];
    let n = |k: &str| c[k].as_u64().unwrap_or_default();
    (n("members"), n("ready"), n("failed"), n("conflicts"))
}

fn synced(set: &Value) -> bool {
    condition(set, "Ready").is_some_and(|(status, reason, _)| status == "True" && reason == "Synced")
        && set["status"]["observedGeneration"] == set["metadata"]["generation"]
}

/// The number of bulk calls DPS answered on individual enrollments.
fn bulk_calls(operator: &Operator) -> u64 {
    operator.emulator.writes("IndividualEnrollment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_set_makes_its_members_in_bulk_with_derived_keys_and_follows_its_list() {
    let operator = Operator::start("sets").await;
    let ns = operator.namespace.clone();
    let lines: String = (1..=25)
        .map(|i| format!("sensor-{i:02},dev-{i:02},{}\n", if i == 7 { "disabled" } else { "" }))
        .collect();
    operator
        .apply(&config_map(
            "fleet",
            "members.csv",
            &format!("registrationId,deviceId,provisioningStatus\n{lines}"),
        ))
        .await;
    let spec = "  members:\n  - {registrationId: gateway-1}\n  - {registrationId: gateway-2, provisioningStatus: disabled}\n  \
                memberLists:\n  - configMapRef: {name: fleet, key: members.csv}\n  \
                template: {iotHubs: [hub-1.azure-devices.net], initialTwin: {tags: {site: lyon}}}\n";
    let attestation =
        "{symmetricKey: {secretRef: {name: fleet-key}, deviceKeysSecretName: fleet-device-keys}}";
    // Plain client-side apply, as most users and Argo CD apply.
    operator.apply(&set("fleet", attestation, spec)).await;
    let fleet = operator.eventually("individualenrollmentset/fleet", "every member is in DPS", synced).await;
    assert_eq!(counts(&fleet), (27, 27, 0, 0));
    let columns = operator.kubectl(&["get", "ieset", "fleet", "--no-headers"], None).await.stdout;
    let columns: Vec<&str> = columns.split_whitespace().collect();
    assert_eq!(
        columns[..7],
        ["fleet", "True", "Synced", "27", "27", "0", "0"],
        "kubectl get ieset: {columns:?}"
    );
    let ready =
        format!(r#"dps_operator_enrollment_set_members{{namespace="{ns}",set="fleet",state="ready"}}"#);
    assert_eq!(operator.metric(&ready), Some(27.0));

    let dps = in_dps(&operator).await;
    assert_eq!(dps.len(), 27);
    assert_eq!(dps["sensor-03"].device_id.as_deref(), Some("dev-03"));
    assert_eq!(dps["sensor-07"].provisioning_status, Some(ProvisioningStatus::Disabled));
    assert_eq!(dps["gateway-2"].provisioning_status, Some(ProvisioningStatus::Disabled));
    assert_eq!(dps["gateway-1"].iot_hubs.as_deref(), Some(&["hub-1.azure-devices.net".to_owned()][..]));
    assert_eq!(
        dps["gateway-1"].optional_device_information.as_ref().unwrap()["enrollmentSet"],
        format!("{ns}/fleet")
    );
    // 27 members in 3 bulk calls, not 27 PUTs.
    let calls = operator.emulator.calls();
    assert_eq!(calls.get("IndividualEnrollment_RunBulkOperation"), Some(&3), "{calls:?}");
    assert_eq!(calls.get("IndividualEnrollment_CreateOrUpdate"), None, "{calls:?}");
    each_key_is_derived_from_the_set_key(&operator).await;
    one_member_changed_removed_then_the_set_deleted(&operator, &lines).await;
}

/// Each device's key is derived from the set key, in DPS and in the device keys Secret.
async fn each_key_is_derived_from_the_set_key(operator: &Operator) {
    let set_key = operator.get("secret/fleet-key").await["data"]["primaryKey"]
        .as_str()
        .map(|k| BASE64.decode(k).unwrap())
        .unwrap();
    let set_key = Secret::new(String::from_utf8(set_key).unwrap());
    let derived = derive_device_key(&set_key, "sensor-03").unwrap();
    let mechanism = operator.dps.attestation_mechanism::<IndividualEnrollment>("sensor-03").await.unwrap();
    assert_eq!(mechanism.symmetric_key.unwrap().primary_key.unwrap().expose(), derived.expose());
    let device_keys = operator.get("secret/fleet-device-keys").await;
    let handed = BASE64.decode(device_keys["data"]["sensor-03"].as_str().unwrap()).unwrap();
    assert_eq!(String::from_utf8(handed).unwrap(), derived.expose());
    assert_eq!(device_keys["data"].as_object().unwrap().len(), 27);
}

async fn one_member_changed_removed_then_the_set_deleted(operator: &Operator, lines: &str) {
    // One member changed in the list: one bulk call.
    let before = bulk_calls(operator);
    let changed = lines.replace("sensor-05,dev-05,", "sensor-05,dev-05-new,");
    operator
        .apply(&config_map(
            "fleet",
            "members.csv",
            &format!("registrationId,deviceId,provisioningStatus\n{changed}"),
        ))
        .await;
    operator
        .eventually_dps("sensor-05 has its new device id", async |dps| {
            let record = dps.get::<IndividualEnrollment>("sensor-05").await.ok()?;
            (record.device_id.as_deref() == Some("dev-05-new")).then_some(())
        })
        .await;
    assert_eq!(bulk_calls(operator) - before, 1);

    // A member removed from the list leaves DPS (deletionPolicy Delete, the default).
    let fewer = changed.lines().filter(|l| !l.starts_with("sensor-25,")).collect::<Vec<_>>().join("\n");
    operator
        .apply(&config_map(
            "fleet",
            "members.csv",
            &format!("registrationId,deviceId,provisioningStatus\n{fewer}"),
        ))
        .await;
    operator
        .eventually("individualenrollmentset/fleet", "26 members", |s| {
            synced(s) && counts(s) == (26, 26, 0, 0)
        })
        .await;
    assert!(!in_dps(operator).await.contains_key("sensor-25"));
    let keys = operator.get("secret/fleet-device-keys").await;
    assert!(keys["data"].get("sensor-25").is_none(), "the removed member's key is gone");

    // Deleting the set deletes its enrollments, in bulk.
    let before = bulk_calls(operator);
    let deleted = operator.kubectl(&["delete", "individualenrollmentset/fleet", "--timeout=60s"], None).await;
    assert!(deleted.success, "{}", deleted.stderr);
    assert!(in_dps(operator).await.is_empty());
    assert_eq!(bulk_calls(operator) - before, 3, "26 deletions in 3 bulk calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpm_and_x509_sets_take_each_members_material_and_write_nothing_once_in_sync() {
    use dps_operator::pki::CertificateAuthority;
    let operator = Operator::start("sets-material").await;
    let ca = CertificateAuthority::new("Contoso Devices CA").unwrap();
    let camera = ca.issue_client("camera-1", None).unwrap();
    // The certificate as one line of base64 DER, as a CSV column holds it.
    let der: String = camera.certificate_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    operator
        .apply(&config_map(
            "cameras",
            "members.csv",
            &format!("registrationId,certificate\ncamera-1,{der}\n"),
        ))
        .await;
    operator
        .apply(&set(
            "cameras",
            "{x509: {}}",
            "  memberLists:\n  - configMapRef: {name: cameras, key: members.csv}\n",
        ))
        .await;
    let tpm = "{\"registrationId\": \"tpm-1\", \"endorsementKey\": \"AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAxsj2gUScTk1UjuioeTlfGYZrrimExB+bScH75adUMRIi2UOMxG1kw4y+9RW/IVoMl4e620VxZad0ARX2gUqVjYO7KPVt3dyKhZS3dkcvfBisBhP1XH9B33VqHG9SHnbnQXdBUaCgKAfxome8UmBKfe+naTsE5fkvjb/do3/dD6l4sGBwFCnKRdln4XpM03zLpoHFao8zOwt8l/uP3qUIxmCYv9A7m69Ms+5/pCkTu/rK4mRDsfhZ0QLfbzVI6zQFOKF/rwsfBtFeWlWtcuJMKlXdD8TXWElTzgh7JS4qhFzreL0c1mI0GCj+Aws0usZh7dLIVPnlgZcBhgy1SSDQMQ==\"}\n";
    operator.create_secret("tpms", &[("members.jsonl", tpm)]).await;
    operator
        .apply(&set("tpms", "{tpm: {}}", "  memberLists:\n  - secretRef: {name: tpms, key: members.jsonl}\n"))
        .await;
    operator.eventually("individualenrollmentset/cameras", "camera-1 is in DPS", synced).await;
    operator.eventually("individualenrollmentset/tpms", "tpm-1 is in DPS", synced).await;
    let dps = in_dps(&operator).await;
    let x509 = dps["camera-1"].attestation.x509.as_ref().unwrap();
    let info = x509.client_certificates.as_ref().unwrap().primary.as_ref().unwrap().info.as_ref().unwrap();
    assert!(info.subject_name.contains("camera-1"), "{info:?}");
    assert!(dps["tpm-1"].attestation.tpm.as_ref().unwrap().endorsement_key.starts_with("AToAAQAL"));

    // In sync: the drift checks (every 3 s here) read DPS and write nothing.
    let (writes, queries) = (bulk_calls(&operator), query_calls(&operator));
    operator
        .eventually_dps("two more drift checks", async |_| {
            (query_calls(&operator) >= queries + 2).then_some(())
        })
        .await;
    assert_eq!(bulk_calls(&operator), writes, "a set in sync writes nothing");
}

fn query_calls(operator: &Operator) -> u64 {
    operator.emulator.calls().get("IndividualEnrollment_Query").copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_line_or_a_duplicate_id_stops_the_set_by_name_and_removes_nothing() {
    let operator = Operator::start("sets-bad").await;
    let ns = operator.namespace.clone();
    let good = "registrationId,deviceId\nd-1,\nd-2,\nd-3,\n";
    operator.apply(&config_map("list", "members.csv", good)).await;
    let spec = "  memberLists:\n  - configMapRef: {name: list, key: members.csv}\n";
    let attestation = "{symmetricKey: {secretRef: {name: list-key}}}";
    operator.apply(&set("list", attestation, spec)).await;
    operator.eventually("individualenrollmentset/list", "synced", synced).await;

    // Line 4 does not parse: the set says which line and why, and d-3 (now unreadable) stays.
    operator.apply(&config_map("list", "members.csv", "registrationId,deviceId\nd-1,\nd-2,\nd 3!,\n")).await;
    let (_, _, message) = condition(
        &operator
            .eventually("individualenrollmentset/list", "the bad line is reported", |s| {
                condition(s, "Ready").is_some_and(|(_, reason, _)| reason == "MemberListInvalid")
            })
            .await,
        "Ready",
    )
    .unwrap();
    assert!(
        message.contains(&format!("ConfigMap {ns}/list key members.csv line 4: registration id \"d 3!\"")),
        "{message}"
    );
    assert_eq!(in_dps(&operator).await.len(), 3, "nothing is removed while the list cannot be read");

    // An id listed twice (ids are case-insensitive in DPS), inline and in the list.
    operator.apply(&config_map("list", "members.csv", good)).await;
    let twice = format!("  members:\n  - {{registrationId: D-2}}\n{spec}");
    operator.apply(&set("list", attestation, &twice)).await;
    let twice = operator
        .eventually("individualenrollmentset/list", "the duplicate is refused", |s| {
            condition(s, "Ready").is_some_and(|(_, _, m)| m.contains("listed twice"))
        })
        .await;
    let (status, reason, message) = condition(&twice, "Ready").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "MemberListInvalid"));
    assert!(message.contains(&format!("registration id d-2 is listed twice (DPS ids are case-insensitive): spec.members[0] and ConfigMap {ns}/list key members.csv line 3")), "{message}");
    assert_eq!(condition(&twice, "Stalled").unwrap().0, "True");
    assert_eq!(in_dps(&operator).await.len(), 3);
    lists_too_large_for_a_config_map_are_refused_naming_the_limit(&operator).await;
}

/// What a user sees with a member list too large: client-side apply keeps a copy of the object
/// in an annotation of at most 256 KiB, and no ConfigMap holds more than 1 MiB. The README says
/// to create large lists (or apply them server-side) and to split a fleet over several lists.
async fn lists_too_large_for_a_config_map_are_refused_naming_the_limit(operator: &Operator) {
    let list = |members: usize| {
        let ids: String = (0..members).map(|i| format!("device-{i:06}\n")).collect();
        config_map("large", "members.csv", &ids)
    };
    let applied = operator.kubectl(&["apply", "-f", "-"], Some(&list(30_000))).await;
    assert!(!applied.success);
    assert!(applied.stderr.contains("Too long: may not be more than 262144 bytes"), "{}", applied.stderr);
    let server_side = operator.kubectl(&["apply", "--server-side", "-f", "-"], Some(&list(30_000))).await;
    assert!(server_side.success, "{}", server_side.stderr);
    let created = operator
        .kubectl(&["create", "-f", "-"], Some(&list(100_000).replace("name: large", "name: larger")))
        .await;
    assert!(!created.success);
    assert!(created.stderr.contains("Too long: may not be more than 1048576 bytes"), "{}", created.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_another_set_a_resource_or_nobody_here_made_are_reported_not_taken() {
    let operator = Operator::start("sets-owners").await;
    let ns = operator.namespace.clone();
    let attestation = |name: &str| format!("{{symmetricKey: {{secretRef: {{name: {name}-key}}}}}}");
    operator
        .apply(&set(
            "first",
            &attestation("first"),
            "  members:\n  - {registrationId: shared-1}\n  - {registrationId: first-only}\n",
        ))
        .await;
    operator.eventually("individualenrollmentset/first", "synced", synced).await;
    // An enrollment made outside Kubernetes, and one an IndividualEnrollment resource owns.
    let outside = IndividualEnrollment {
        registration_id: "outside-1".into(),
        attestation: AttestationMechanism {
            type_: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation::default()),
            ..Default::default()
        },
        ..Default::default()
    };
    let outside = operator.dps.put(&outside, dps_operator::dps::IfMatch::None).await.unwrap();
    operator
        .apply(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: owned-1}\nspec:\n  \
             serviceRef: {name: dps}\n  attestation: {symmetricKey: {secretRef: {name: owned-1-keys}}}\n",
        )
        .await;
    operator.wait("individualenrollment/owned-1", "condition=Ready").await;

    let members = "  members:\n  - {registrationId: shared-1}\n  - {registrationId: outside-1}\n  - {registrationId: owned-1}\n  - {registrationId: second-only}\n";
    operator.apply(&set("second", &attestation("second"), members)).await;
    let second = operator
        .eventually("individualenrollmentset/second", "three conflicts", |s| counts(s) == (4, 1, 0, 3))
        .await;
    let (_, reason, _) = condition(&second, "Ready").unwrap();
    assert_eq!(reason, "MembersConflict");
    let failures: Vec<(String, String, String)> = second["status"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["registrationId"].as_str().unwrap().into(),
                f["reason"].as_str().unwrap().into(),
                f["message"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(failures, [
        ("outside-1".into(), "AlreadyExists".into(), "DPS already has an individual enrollment outside-1 that this set did not make; left as it is".into()),
        ("owned-1".into(), "Conflict".into(), format!("owned-1 belongs to IndividualEnrollment {ns}/owned-1; left to it")),
        ("shared-1".into(), "Conflict".into(), format!("shared-1 belongs to IndividualEnrollmentSet {ns}/first, which made it in DPS; left to it")),
    ]);
    // Nothing of theirs was touched.
    let dps = in_dps(&operator).await;
    assert_eq!(dps["outside-1"].etag, outside.etag);
    assert_eq!(
        dps["shared-1"].optional_device_information.as_ref().unwrap()["enrollmentSet"],
        format!("{ns}/first")
    );
    assert!(dps.contains_key("second-only"));
    operator.eventually("individualenrollmentset/first", "still synced", synced).await;

    // An IndividualEnrollment resource for an id a set made is refused, naming the set.
    operator
        .apply(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: first-only}\nspec:\n  \
             serviceRef: {name: dps}\n  adoption: Adopt\n  attestation: {symmetricKey: {secretRef: {name: first-only-keys}}}\n",
        )
        .await;
    let refused = operator
        .eventually("individualenrollment/first-only", "refused", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "Conflict")
        })
        .await;
    let message = condition(&refused, "Ready").unwrap().2;
    assert!(message.contains(&format!("was made by IndividualEnrollmentSet {ns}/first")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_keys_too_large_for_a_secret_are_refused_by_size_and_pausing_writes_nothing() {
    let operator = Operator::start("sets-large").await;
    let ns = operator.namespace.clone();
    // 20,000 members: their keys (44 characters each, and the ids) pass the 1 MiB of a Secret.
    let ids: String = (0..20_000).map(|i| format!("device-{i:05}\n")).collect();
    // Client-side apply keeps the whole object in an annotation of at most 256 KiB: a list this
    // long is created (or applied server-side), as the README says.
    let created =
        operator.kubectl(&["create", "-f", "-"], Some(&config_map("many", "members.csv", &ids))).await;
    assert!(created.success, "{}", created.stderr);
    let paused = "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollmentSet\nmetadata:\n  name: many\n  \
                  annotations: {dps.iot.dev/paused: \"true\"}\nspec:\n  serviceRef: {name: dps}\n  attestation: \
                  {symmetricKey: {secretRef: {name: many-key}, deviceKeysSecretName: many-device-keys}}\n  \
                  memberLists:\n  - configMapRef: {name: many, key: members.csv}\n";
    operator.apply(paused).await;
    let many = operator
        .eventually("individualenrollmentset/many", "the size is reported", |s| {
            condition(s, "Ready").is_some_and(|(_, reason, _)| reason == "DeviceKeysTooLarge")
        })
        .await;
    let message = condition(&many, "Ready").unwrap().2;
    assert!(
        message.contains("the device keys of 20000 members take")
            && message.contains(&format!(
                "more than the 1048576 a Secret holds; Secret {ns}/many-device-keys is not written"
            )),
        "{message}"
    );
    assert_eq!(bulk_calls(&operator), 0, "a paused set writes nothing to DPS");
    assert!(!operator.kubectl(&["get", "secret/many-device-keys"], None).await.success);
}
