//! The operator end to end: the real control plane, the real kubectl, and the DPS emulator over
//! HTTPS.

mod support;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_operator::dps::{self, IfMatch, models};
use serde_json::json;
use support::operator::{Operator, condition, is_ready};

const GROUP: &str = r#"
apiVersion: dps.iot.dev/v1beta1
kind: EnrollmentGroup
metadata: {name: thermostats}
spec:
  serviceRef: {name: dps}
  enrollmentGroupId: thermostats-2026
  attestation:
    symmetricKey:
      secretRef: {name: thermostats-keys}
  iotHubs: [contoso-west.azure-devices.net, contoso-east.azure-devices.net]
  allocationPolicy: hashed
  initialTwin:
    tags: {deviceType: thermostat, building: {site: Redmond, floor: 3}}
    desiredProperties: {telemetryIntervalSeconds: 60}
  reprovisionPolicy: {updateHubAssignment: true, migrateDeviceData: false}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_symmetric_key_group_is_created_and_then_left_alone() {
    let operator = Operator::start("create").await;
    operator.wait("provisioningservice/dps", "condition=Ready").await;
    operator.apply(GROUP).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;

    let group: models::EnrollmentGroup =
        operator.dps.get("thermostats-2026").await.expect("DPS has the group");
    assert_eq!(group.allocation_policy, Some(models::AllocationPolicy::Hashed));
    assert_eq!(group.iot_hubs.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        group.reprovision_policy,
        Some(models::ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: false })
    );
    let twin = group.initial_twin.clone().unwrap();
    assert_eq!(
        serde_json::to_value(twin.tags).unwrap(),
        json!({"deviceType": "thermostat", "building": {"site": "Redmond", "floor": 3}})
    );

    // The missing Secret was created with random 64-byte keys, owned by the group, and DPS uses them.
    let secret = operator.get("secret/thermostats-keys").await;
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "EnrollmentGroup");
    let managers = operator
        .kubectl(
            &[
                "get",
                "secret/thermostats-keys",
                "--show-managed-fields",
                "-o",
                "jsonpath={.metadata.managedFields[*].manager}",
            ],
            None,
        )
        .await;
    assert_eq!(managers.stdout, "dps-operator", "written by the operator's field manager");
    let primary =
        String::from_utf8(BASE64.decode(secret["data"]["primaryKey"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(BASE64.decode(&primary).unwrap().len(), 64);
    let keys =
        operator.dps.attestation_mechanism::<models::EnrollmentGroup>("thermostats-2026").await.unwrap();
    assert_eq!(keys.symmetric_key.unwrap().primary_key.unwrap().expose(), primary);

    let resource = operator.get("enrollmentgroup/thermostats").await;
    // Created by a bulk call, whose answer carries no etag; one alone is not worth a status write
    // (the drift checks below compare content and leave the status as it is).
    assert_eq!(resource["status"].get("etag"), None, "{resource}");
    assert!(group.etag.is_some());
    assert_eq!(resource["status"]["enrollmentGroupId"], "thermostats-2026");
    assert_eq!(resource["status"]["attestation"], "symmetricKey");
    assert_eq!(resource["status"]["claimed"], true);
    assert_eq!(condition(&resource, "Reconciling").unwrap().0, "False");
    assert_eq!(condition(&resource, "Stalled").unwrap().0, "False");
    // `kubectl describe` shows the message once, on Ready.
    let described = operator.kubectl(&["describe", "enrollmentgroup", "thermostats"], None).await.stdout;
    let ready_message = condition(&resource, "Ready").unwrap().2;
    assert_eq!(described.matches(ready_message.as_str()).count(), 1, "{described}");
    assert!(
        resource["metadata"]["finalizers"].as_array().unwrap().iter().any(|f| f == "dps.iot.dev/cleanup")
    );
    assert!(!serde_json::to_string(&resource).unwrap().contains(&primary), "no key in the resource");
    let events = operator.events("thermostats").await;
    assert!(events.iter().any(|(type_, reason, _)| type_ == "Normal" && reason == "Created"), "{events:?}");

    // Several drift checks later (every 3 s here): no write, and reads come from paged queries.
    operator.emulator.reset_calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = operator.emulator.calls();
    assert_eq!(operator.emulator.writes("EnrollmentGroup"), 0, "{calls:?}");
    assert_eq!(calls.get("EnrollmentGroup_Get"), None, "drift checks use the query snapshot: {calls:?}");
    assert!(calls.contains_key("EnrollmentGroup_Query"), "{calls:?}");
    let unchanged = operator.get("enrollmentgroup/thermostats").await;
    assert_eq!(
        unchanged["metadata"]["resourceVersion"], resource["metadata"]["resourceVersion"],
        "no status write when nothing changed"
    );
    assert!(is_ready(&unchanged));
}

/// A CA and a leaf it signed, as PEM, the way cert-manager lays them out in a Secret.
fn certificate_chain(common_name: &str, days: i64) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, format!("{common_name} CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf_params = CertificateParams::new(vec![common_name.to_owned()]).unwrap();
    leaf_params.distinguished_name.push(DnType::CommonName, common_name);
    leaf_params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    leaf_params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let leaf = leaf_params.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
    (leaf.pem(), ca.pem())
}

const INDIVIDUAL_SYMMETRIC_KEY: &str = r#"
apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollment
metadata: {name: boiler-0042}
spec:
  serviceRef: {name: dps}
  registrationId: "boiler:0042"
  deviceId: boiler-0042
  attestation:
    symmetricKey:
      secretRef: {name: boiler-keys}
  iotHubs: [contoso-west.azure-devices.net, contoso-east.azure-devices.net]
  allocationPolicy: custom
  customAllocation:
    webhookUrlSecretRef: {name: allocation-webhook, key: url}
    apiVersion: "2021-10-01"
  optionalDeviceInformation: {manufacturer: Contoso Heating, serialNumber: CH-2026-0042}
  initialTwin:
    tags: {site: Redmond}
    desiredProperties: {firmware: {version: 3.2.1}}
  iotEdge: true
  provisioningStatus: disabled
"#;

/// A leaf, a TPM, a group with signing certificates and one with CA references.
const EVERY_KIND: &str = r#"apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollment
metadata: {name: sensor-7}
spec:
  serviceRef: {name: dps}
  attestation:
    x509:
      clientCertificates:
        primary: {name: sensor-7-cert}
  reprovisionPolicy: {updateHubAssignment: false}
---
apiVersion: dps.iot.dev/v1beta1
kind: IndividualEnrollment
metadata: {name: kiosk-3}
spec:
  serviceRef: {name: dps}
  registrationId: kiosk-3.store-117
  attestation:
    tpm:
      endorsementKey: AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaao=
---
apiVersion: dps.iot.dev/v1beta1
kind: EnrollmentGroup
metadata: {name: gateways}
spec:
  serviceRef: {name: dps}
  attestation:
    x509:
      signingCertificates:
        primary: {name: sensor-7-cert, key: ca.crt}
        secondary: {name: gateways-ca}
  allocationPolicy: geoLatency
  iotHubs: [contoso-west.azure-devices.net]
---
apiVersion: dps.iot.dev/v1beta1
kind: EnrollmentGroup
metadata: {name: cameras}
spec:
  serviceRef: {name: dps}
  enrollmentGroupId: cameras.line-1
  attestation:
    x509:
      caReferences: {primary: contoso-root-2026, secondary: contoso-root-2027}
  allocationPolicy: static
  iotHubs: [contoso-factory.azure-devices.net]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_field_of_every_attestation_kind_reaches_dps() {
    let operator = Operator::start("fields").await;
    let key = BASE64.encode([5u8; 32]);
    operator
        .create_secret("boiler-keys", &[("primaryKey", &key), ("secondaryKey", &BASE64.encode([6u8; 32]))])
        .await;
    operator
        .create_secret(
            "allocation-webhook",
            &[("url", "https://contoso-alloc.azurewebsites.net/api/allocate?code=s3cr3t")],
        )
        .await;
    let (leaf, ca) = certificate_chain("sensor-7", 365);
    operator.create_secret("sensor-7-cert", &[("tls.crt", &leaf), ("ca.crt", &ca)]).await;
    operator.create_secret("gateways-ca", &[("tls.crt", &ca)]).await;
    operator.apply(INDIVIDUAL_SYMMETRIC_KEY).await;
    operator.apply(EVERY_KIND).await;
    for resource in [
        "individualenrollment/boiler-0042",
        "individualenrollment/sensor-7",
        "individualenrollment/kiosk-3",
        "enrollmentgroup/gateways",
        "enrollmentgroup/cameras",
    ] {
        operator.wait(resource, "condition=Ready").await;
    }
    every_field_of_the_symmetric_key_enrollment(&operator, &key).await;
    every_certificate_and_the_tpm(&operator, &leaf, &ca).await;
    a_new_webhook_url_and_a_registration(&operator).await;
    deleting_removes_every_kind(&operator).await;
}

async fn every_field_of_the_symmetric_key_enrollment(operator: &Operator, key: &str) {
    let boiler: models::IndividualEnrollment = operator.dps.get("boiler:0042").await.unwrap();
    assert_eq!(boiler.device_id.as_deref(), Some("boiler-0042"));
    assert_eq!(
        serde_json::to_value(&boiler.optional_device_information).unwrap(),
        json!({"manufacturer": "Contoso Heating", "serialNumber": "CH-2026-0042"})
    );
    assert_eq!(boiler.capabilities, Some(models::DeviceCapabilities { iot_edge: true }));
    assert_eq!(boiler.provisioning_status, Some(models::ProvisioningStatus::Disabled));
    // What `kubectl get -o wide` shows: DPS's provisioning status, from the status.
    let shown = operator.get("individualenrollment/boiler-0042").await;
    assert_eq!(shown["status"]["provisioningStatus"], "disabled");
    let gateways = operator.get("enrollmentgroup/gateways").await;
    assert_eq!(gateways["status"]["provisioningStatus"], "enabled", "DPS's default when not set");
    assert_eq!(boiler.allocation_policy, Some(models::AllocationPolicy::Custom));
    let custom = boiler.custom_allocation_definition.clone().unwrap();
    assert_eq!(
        (custom.webhook_url.expose(), custom.api_version.as_str()),
        ("https://contoso-alloc.azurewebsites.net/api/allocate?code=s3cr3t", "2021-10-01")
    );
    assert_eq!(
        serde_json::to_value(&boiler.initial_twin).unwrap(),
        json!({"tags": {"site": "Redmond"}, "properties": {"desired": {"firmware": {"version": "3.2.1"}}}})
    );
    let keys = operator
        .dps
        .attestation_mechanism::<models::IndividualEnrollment>("boiler:0042")
        .await
        .unwrap()
        .symmetric_key
        .unwrap();
    assert_eq!(keys.primary_key.unwrap().expose(), key, "the keys from the Secret");
    let resource = operator.get("individualenrollment/boiler-0042").await;
    assert!(
        !serde_json::to_string(&resource).unwrap().contains("s3cr3t"),
        "the webhook key stays out of the resource"
    );
}

async fn every_certificate_and_the_tpm(operator: &Operator, leaf: &str, ca: &str) {
    let leaf_facts = dps_operator::certificates::read(leaf).unwrap();
    let sensor: models::IndividualEnrollment = operator.dps.get("sensor-7").await.unwrap();
    let info = sensor.attestation.x509.unwrap().client_certificates.unwrap().primary.unwrap().info.unwrap();
    assert_eq!(
        (info.subject_name.as_str(), info.sha256_thumbprint.as_str()),
        ("CN=sensor-7", leaf_facts.sha256_thumbprint.as_str())
    );
    assert_eq!(
        sensor.reprovision_policy,
        Some(models::ReprovisionPolicy { update_hub_assignment: false, migrate_device_data: true })
    );
    let sensor_resource = operator.get("individualenrollment/sensor-7").await;
    assert_eq!(sensor_resource["status"]["certificates"]["primary"]["subject"], "CN=sensor-7");
    assert_eq!(
        sensor_resource["status"]["certificates"]["primary"]["sha256Thumbprint"],
        leaf_facts.sha256_thumbprint.as_str()
    );
    assert_eq!(condition(&sensor_resource, "CertificateExpiringSoon").unwrap().0, "False");

    let kiosk: models::IndividualEnrollment = operator.dps.get("kiosk-3.store-117").await.unwrap();
    assert_eq!(
        kiosk.attestation.tpm.unwrap().endorsement_key,
        "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaao="
    );

    let ca_facts = dps_operator::certificates::read(ca).unwrap();
    let gateways: models::EnrollmentGroup = operator.dps.get("gateways").await.unwrap();
    let signing = gateways.attestation.x509.unwrap().signing_certificates.unwrap();
    assert_eq!(
        signing.primary.unwrap().info.unwrap().sha256_thumbprint,
        ca_facts.sha256_thumbprint,
        "ca.crt of the cert-manager Secret"
    );
    assert_eq!(signing.secondary.unwrap().info.unwrap().sha256_thumbprint, ca_facts.sha256_thumbprint);
    assert_eq!(gateways.allocation_policy, Some(models::AllocationPolicy::GeoLatency));

    let cameras: models::EnrollmentGroup = operator.dps.get("cameras.line-1").await.unwrap();
    let references = cameras.attestation.x509.unwrap().ca_references.unwrap();
    assert_eq!(
        (references.primary.as_deref(), references.secondary.as_deref()),
        (Some("contoso-root-2026"), Some("contoso-root-2027"))
    );
    assert_eq!(cameras.iot_hubs, Some(vec!["contoso-factory.azure-devices.net".to_owned()]));
}

/// A new webhook URL in its Secret reaches DPS; a device's registration shows in status.
async fn a_new_webhook_url_and_a_registration(operator: &Operator) {
    let patch =
        json!({"stringData": {"url": "https://contoso-alloc.azurewebsites.net/api/allocate?code=r0tated"}})
            .to_string();
    assert!(operator.kubectl(&["patch", "secret", "allocation-webhook", "-p", &patch], None).await.success);
    operator
        .eventually_dps("the new webhook URL reached DPS", async |dps| {
            let boiler: models::IndividualEnrollment = dps.get("boiler:0042").await.ok()?;
            boiler.custom_allocation_definition?.webhook_url.expose().ends_with("r0tated").then_some(())
        })
        .await;
    operator.emulator.add_registration(
        serde_json::json!({
            "registrationId": "boiler:0042",
            "status": "assigned",
            "assignedHub": "contoso-west.azure-devices.net",
            "deviceId": "boiler-0042",
        }),
        None,
    );
    let registered = operator
        .eventually("individualenrollment/boiler-0042", "its registration is reported", |r| {
            r["status"]["registration"]["status"] == "assigned"
        })
        .await;
    assert_eq!(registered["status"]["registration"]["assignedHub"], "contoso-west.azure-devices.net");
}

/// Deleting the resources removes every kind from DPS.
async fn deleting_removes_every_kind(operator: &Operator) {
    let deleted = operator
        .kubectl(&["delete", "individualenrollments,enrollmentgroups", "--all", "--timeout=60s"], None)
        .await;
    assert!(deleted.success, "{}", deleted.stderr);
    for id in ["boiler:0042", "sensor-7", "kiosk-3.store-117"] {
        let gone = operator.dps.get::<models::IndividualEnrollment>(id).await;
        assert!(matches!(gone, Err(dps::Error::NotFound { .. })), "{id}: {gone:?}");
    }
    for id in ["gateways", "cameras.line-1"] {
        let gone = operator.dps.get::<models::EnrollmentGroup>(id).await;
        assert!(matches!(gone, Err(dps::Error::NotFound { .. })), "{id}: {gone:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_rotations_and_drift_reach_dps() {
    let operator = Operator::start("changes").await;
    let (leaf, _) = certificate_chain("sensor-9", 365);
    operator.create_secret("sensor-9-cert", &[("tls.crt", &leaf)]).await;
    operator.apply(GROUP).await;
    operator
        .apply("apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: sensor-9}\nspec:\n  serviceRef: {name: dps}\n  attestation:\n    x509:\n      clientCertificates:\n        primary: {name: sensor-9-cert}\n")
        .await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    operator.wait("individualenrollment/sensor-9", "condition=Ready").await;

    // A spec edit.
    operator.apply(&GROUP.replace("allocationPolicy: hashed", "allocationPolicy: geoLatency")).await;
    operator
        .eventually_dps("the edit reached DPS", async |dps| {
            let group: models::EnrollmentGroup = dps.get("thermostats-2026").await.ok()?;
            (group.allocation_policy == Some(models::AllocationPolicy::GeoLatency)).then_some(())
        })
        .await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;

    // Key rotation: a new key in the Secret reaches DPS within seconds, without a restart.
    let rotated = BASE64.encode([9u8; 48]);
    let patch = json!({"stringData": {"primaryKey": rotated}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "thermostats-keys", "-p", &patch], None).await.success);
    operator
        .eventually_dps("the rotated key reached DPS", async |dps| {
            let keys = dps.attestation_mechanism::<models::EnrollmentGroup>("thermostats-2026").await.ok()?;
            (keys.symmetric_key?.primary_key?.expose() == rotated).then_some(())
        })
        .await;

    // Certificate rotation.
    let (renewed, _) = certificate_chain("sensor-9", 400);
    let patch = json!({"stringData": {"tls.crt": renewed}}).to_string();
    assert!(operator.kubectl(&["patch", "secret", "sensor-9-cert", "-p", &patch], None).await.success);
    let renewed_thumbprint = dps_operator::certificates::read(&renewed).unwrap().sha256_thumbprint;
    operator
        .eventually_dps("the renewed certificate reached DPS", async |dps| {
            let enrollment: models::IndividualEnrollment = dps.get("sensor-9").await.ok()?;
            let info = enrollment.attestation.x509?.client_certificates?.primary?.info?;
            (info.sha256_thumbprint == renewed_thumbprint).then_some(())
        })
        .await;

    outside_edits_and_deletions_are_undone(&operator, &rotated).await;
}

/// Drift: an edit made in DPS outside Kubernetes is undone at the next check, and so is a
/// deletion; `rotated` is the group's primary key.
async fn outside_edits_and_deletions_are_undone(operator: &Operator, rotated: &str) {
    let mut edited: models::EnrollmentGroup = operator.dps.get("thermostats-2026").await.unwrap();
    edited.provisioning_status = Some(models::ProvisioningStatus::Disabled);
    edited.iot_hubs = Some(vec!["rogue.azure-devices.net".into()]);
    let etag = edited.etag.clone().unwrap();
    operator.dps.put(&edited, IfMatch::Etag(&etag)).await.unwrap();
    operator
        .eventually_dps("the outside edit was undone", async |dps| {
            let group: models::EnrollmentGroup = dps.get("thermostats-2026").await.ok()?;
            (group.provisioning_status == Some(models::ProvisioningStatus::Enabled)
                && group.iot_hubs.as_ref()?.len() == 2)
                .then_some(())
        })
        .await;
    let events = operator.events("thermostats").await;
    let corrected: Vec<_> = events.iter().filter(|(_, reason, _)| reason == "DriftCorrected").collect();
    assert_eq!(corrected.len(), 1, "rotations are updates, not drift: {events:?}");
    assert!(
        corrected[0].2.contains("provisioningStatus") && corrected[0].2.contains("iotHubs"),
        "{corrected:?}"
    );
    let rotation = events
        .iter()
        .any(|(_, reason, note)| reason == "SecretRotated" && note.contains("attestation.symmetricKey"));
    assert!(rotation, "{events:?}");

    // ... and a deletion outside Kubernetes is undone too.
    operator.dps.delete::<models::EnrollmentGroup>("thermostats-2026", IfMatch::None).await.unwrap();
    operator
        .eventually_dps("the group was recreated", async |dps| {
            dps.get::<models::EnrollmentGroup>("thermostats-2026").await.ok()
        })
        .await;
    let keys =
        operator.dps.attestation_mechanism::<models::EnrollmentGroup>("thermostats-2026").await.unwrap();
    assert_eq!(
        keys.symmetric_key.unwrap().primary_key.unwrap().expose(),
        rotated,
        "recreated with the keys from the Secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observe_only_and_paused_never_write() {
    let operator = Operator::start("observe").await;
    operator.apply(GROUP).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    operator.apply(&format!("{GROUP}  managementPolicy: ObserveOnly\n")).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;

    operator.emulator.reset_calls();
    let mut edited: models::EnrollmentGroup = operator.dps.get("thermostats-2026").await.unwrap();
    edited.capabilities = Some(models::DeviceCapabilities { iot_edge: true });
    let etag = edited.etag.clone().unwrap();
    operator.dps.put(&edited, IfMatch::Etag(&etag)).await.unwrap();
    let reported = operator
        .eventually("enrollmentgroup/thermostats", "drift is reported", |r| {
            r["status"]["drift"] == json!(["iotEdge"])
        })
        .await;
    let (ready, reason, message) = condition(&reported, "Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "ObserveOnly"));
    assert!(message.contains("iotEdge"), "{message}");
    assert_eq!(operator.emulator.writes("EnrollmentGroup"), 1, "only the outside edit wrote");

    // Paused: back to Manage with a spec change, but nothing is written until the annotation goes.
    assert!(
        operator
            .kubectl(&["annotate", "enrollmentgroup/thermostats", "dps.iot.dev/paused=true"], None)
            .await
            .success
    );
    operator.apply(&GROUP.replace("allocationPolicy: hashed", "allocationPolicy: geoLatency")).await;
    operator
        .eventually("enrollmentgroup/thermostats", "the paused pass over the change is reported", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "Paused")
                && r["status"]["observedGeneration"] == r["metadata"]["generation"]
        })
        .await;
    assert_eq!(operator.emulator.writes("EnrollmentGroup"), 1, "nothing written while paused");
    assert!(
        operator
            .kubectl(&["annotate", "enrollmentgroup/thermostats", "dps.iot.dev/paused-"], None)
            .await
            .success
    );
    operator
        .eventually_dps("the spec was written once unpaused", async |dps| {
            let group: models::EnrollmentGroup = dps.get("thermostats-2026").await.ok()?;
            (group.allocation_policy == Some(models::AllocationPolicy::GeoLatency)
                && !group.capabilities?.iot_edge)
                .then_some(())
        })
        .await;
}

/// Symmetric-key attestation with the keys left for DPS to generate, as someone outside would.
fn symmetric_key_made_by_dps() -> models::AttestationMechanism {
    models::AttestationMechanism {
        type_: models::AttestationType::SymmetricKey,
        symmetric_key: Some(Default::default()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adoption_is_refused_unless_asked_and_deletion_follows_the_policy() {
    let operator = Operator::start("adopt").await;
    let existing = models::EnrollmentGroup {
        enrollment_group_id: "thermostats-2026".into(),
        attestation: symmetric_key_made_by_dps(),
        ..Default::default()
    };
    operator.dps.put(&existing, IfMatch::None).await.unwrap();
    operator.emulator.reset_calls();
    operator.apply(GROUP).await;
    let refused = operator
        .eventually("enrollmentgroup/thermostats", "adoption is refused", |r| {
            condition(r, "Stalled")
                .is_some_and(|(status, reason, _)| status == "True" && reason == "AlreadyExists")
        })
        .await;
    assert_eq!(condition(&refused, "Ready").unwrap().0, "False");
    assert!(condition(&refused, "Ready").unwrap().2.contains("spec.adoption: Adopt"));
    assert_eq!(operator.emulator.writes("EnrollmentGroup"), 0, "nothing overwritten");

    // Deleting a resource that never claimed the enrollment leaves DPS alone.
    assert!(
        operator.kubectl(&["delete", "enrollmentgroup/thermostats", "--timeout=60s"], None).await.success
    );
    operator.dps.get::<models::EnrollmentGroup>("thermostats-2026").await.expect("still in DPS");

    operator.apply(&format!("{GROUP}  adoption: Adopt\n  deletionPolicy: Orphan\n")).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    let adopted: models::EnrollmentGroup = operator.dps.get("thermostats-2026").await.unwrap();
    assert_eq!(adopted.allocation_policy, Some(models::AllocationPolicy::Hashed), "made to match the spec");
    assert!(operator.events("thermostats").await.iter().any(|(_, reason, _)| reason == "Adopted"));
    assert!(
        operator.kubectl(&["delete", "enrollmentgroup/thermostats", "--timeout=60s"], None).await.success
    );
    operator.dps.get::<models::EnrollmentGroup>("thermostats-2026").await.expect("Orphan leaves it in DPS");

    // Delete (the default) removes it, and the registration records when asked.
    operator.emulator.add_registration(
        serde_json::json!({"registrationId": "thermostat-1", "status": "assigned"}),
        Some("thermostats-2026".into()),
    );
    operator.apply(&format!("{GROUP}  adoption: Adopt\n  deleteRegistrationRecords: true\n")).await;
    let ready = operator
        .eventually("enrollmentgroup/thermostats", "the registrations are summarised", |r| {
            is_ready(r) && r["status"]["registrations"]["assigned"] == 1
        })
        .await;
    assert_eq!(ready["status"]["registrations"]["latest"][0]["registrationId"], "thermostat-1");
    assert!(
        operator.kubectl(&["delete", "enrollmentgroup/thermostats", "--timeout=60s"], None).await.success
    );
    assert!(matches!(
        operator.dps.get::<models::EnrollmentGroup>("thermostats-2026").await,
        Err(dps::Error::NotFound { .. })
    ));
    assert!(matches!(operator.dps.get_registration("thermostat-1").await, Err(dps::Error::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_operator_converges_without_duplicate_writes() {
    let mut operator = Operator::start("restart").await;
    operator.apply(GROUP).await;
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    operator.stop();
    operator.emulator.reset_calls();
    operator.apply(&GROUP.replace("allocationPolicy: hashed", "allocationPolicy: geoLatency")).await;
    operator.apply(INDIVIDUAL_SYMMETRIC_KEY.replace("allocationPolicy: custom", "allocationPolicy: hashed").replace("  customAllocation:\n    webhookUrlSecretRef: {name: allocation-webhook, key: url}\n    apiVersion: \"2021-10-01\"\n", "").as_str()).await;
    operator.restart();
    operator.wait("enrollmentgroup/thermostats", "condition=Ready").await;
    operator.wait("individualenrollment/boiler-0042", "condition=Ready").await;
    operator.restart();
    // The new process has reconciled both once it counts both Ready.
    for kind in ["EnrollmentGroup", "IndividualEnrollment"] {
        let sample = format!(r#"dps_operator_resources{{kind="{kind}",ready="true"}}"#);
        operator.eventually_metric(&sample, 1.0).await;
    }
    let calls = operator.emulator.calls();
    assert_eq!(operator.emulator.writes("EnrollmentGroup"), 1, "one write for one change: {calls:?}");
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 1, "one create: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconcile_handed_a_copy_from_before_its_own_write_reads_the_latest() {
    use dps_operator::{
        api::{CLAIM_ANNOTATION, IndividualEnrollment},
        controller::enrollment::reconcile,
    };
    use std::sync::Arc;

    let mut operator = Operator::start("stale").await;
    operator.stop();
    let ctx = operator.context().await;
    let api: kube::Api<IndividualEnrollment> = kube::Api::namespaced(ctx.client.clone(), &operator.namespace);
    let key = BASE64.encode([7u8; 32]);
    operator.create_secret("boiler-keys", &[("primaryKey", &key), ("secondaryKey", &key)]).await;
    operator
        .apply(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: boiler}\n\
             spec:\n  serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: boiler-keys}\n",
        )
        .await;
    // One pass: the finalizer and the claim in one write, the create, the status.
    let before_create = Arc::new(api.get("boiler").await.unwrap());
    reconcile(before_create.clone(), ctx.clone()).await.unwrap();
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 1);

    // A watch cache can still hand out the copy from before those writes; it shows no claim.
    // Acting on it would call the new enrollment someone else's. The reconcile reads the latest.
    let claim = before_create.metadata.annotations.as_ref().and_then(|a| a.get(CLAIM_ANNOTATION));
    assert!(before_create.status.is_none() && claim.is_none());
    reconcile(before_create, ctx.clone()).await.expect("the latest copy is in sync");
    let resource = operator.get("individualenrollment/boiler").await;
    assert!(is_ready(&resource), "{resource}");
    assert_eq!(resource["status"]["claimed"], json!(true));
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 1);
}

/// What the shipped Argo CD health check says of `resource`: its status and message.
fn argo_cd_health(script: &str, resource: &serde_json::Value) -> (String, String) {
    use mlua::LuaSerdeExt;
    let lua = mlua::Lua::new();
    lua.globals().set("obj", lua.to_value(resource).unwrap()).unwrap();
    let health: mlua::Table = lua.load(script).eval().expect("the health script runs");
    (health.get("status").unwrap(), health.get("message").unwrap())
}

/// The health script Argo CD gets from the repo's argocd-cm patch, applied with the real kubectl:
/// the same for every kind.
async fn argo_cd_health_script(operator: &Operator) -> String {
    let patch = concat!(env!("CARGO_MANIFEST_DIR"), "/integrations/argocd/argocd-cm-patch.yaml");
    assert!(operator.kubectl(&["create", "configmap", "argocd-cm"], None).await.success);
    let patched = operator.kubectl(&["patch", "configmap", "argocd-cm", "--patch-file", patch], None).await;
    assert!(patched.success, "{}", patched.stderr);
    let data = operator.get("configmap/argocd-cm").await["data"].clone();
    let scripts: Vec<&str> = [
        "EnrollmentGroup",
        "IndividualEnrollment",
        "IndividualEnrollmentSet",
        "ProvisioningService",
        "ClusterProvisioningService",
    ]
    .iter()
    .map(|kind| data[format!("resource.customizations.health.dps.iot.dev_{kind}")].as_str().expect(kind))
    .collect();
    assert!(scripts.iter().all(|s| *s == scripts[0] && s.contains("Suspended")), "{data}");
    scripts[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_argo_cd_health_check_follows_the_conditions() {
    let operator = Operator::start("argocd").await;
    let script = argo_cd_health_script(&operator).await;
    let script = script.as_str();

    let existing = models::IndividualEnrollment {
        registration_id: "taken".into(),
        attestation: symmetric_key_made_by_dps(),
        ..Default::default()
    };
    operator.dps.put(&existing, IfMatch::None).await.unwrap();
    let enrollment = |name: &str, extra: &str| {
        format!(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: {name}}}\nspec:\n  \
             serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: {name}-keys}}\n{extra}"
        )
    };
    operator.apply(&enrollment("ready", "")).await;
    operator.apply(&enrollment("taken", "")).await;
    operator.apply(&enrollment("observed", "  managementPolicy: ObserveOnly\n")).await;
    operator
        .apply(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: waiting}\nspec:\n  \
             serviceRef: {name: dps}\n  attestation:\n    x509:\n      clientCertificates:\n        primary: {name: waiting-cert}\n",
        )
        .await;

    operator.wait("individualenrollment/ready", "condition=Ready").await;
    let health = |resource: &serde_json::Value| argo_cd_health(script, resource);
    assert_eq!(health(&operator.get("provisioningservice/dps").await).0, "Healthy");
    let (status, message) = health(&operator.get("individualenrollment/ready").await);
    assert_eq!(
        (status.as_str(), message.ends_with("holds enrollment ready as specified.")),
        ("Healthy", true)
    );
    let taken = operator
        .eventually("individualenrollment/taken", "stalled", |r| {
            condition(r, "Stalled").is_some_and(|(status, _, _)| status == "True")
        })
        .await;
    let (status, message) = health(&taken);
    assert_eq!((status.as_str(), message.starts_with("AlreadyExists: ")), ("Degraded", true), "{message}");
    let observed = operator
        .eventually("individualenrollment/observed", "reported", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "ObserveOnly")
        })
        .await;
    assert_eq!(health(&observed).0, "Degraded", "observe-only and missing in DPS");
    let waiting = operator
        .eventually("individualenrollment/waiting", "reported", |r| {
            condition(r, "Ready").is_some_and(|(_, reason, _)| reason == "SecretNotFound")
        })
        .await;
    let (status, message) = health(&waiting);
    assert_eq!(
        (status.as_str(), message.starts_with("SecretNotFound: ")),
        ("Progressing", true),
        "{message}"
    );

    assert!(
        operator
            .kubectl(&["annotate", "individualenrollment/ready", "dps.iot.dev/paused=true"], None)
            .await
            .success
    );
    assert_eq!(health(&operator.get("individualenrollment/ready").await).0, "Suspended");
    // A spec change the operator has not handled yet is progress, whatever the old conditions say.
    let mut edited = operator.get("individualenrollment/taken").await;
    edited["metadata"]["generation"] = json!(edited["metadata"]["generation"].as_i64().unwrap() + 1);
    assert_eq!(health(&edited).0, "Progressing");
    assert_eq!(health(&json!({"metadata": {"name": "new", "generation": 1}})).0, "Progressing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_secrets_digest_confirms_no_guess_and_older_statuses_are_taken_over_without_a_write() {
    use dps_operator::{controller::desired::Resolved, dps::models::Secret};

    let mut operator = Operator::start("digest").await;
    let keys = (BASE64.encode([3u8; 32]), BASE64.encode([4u8; 32]));
    operator.create_secret("boiler-keys", &[("primaryKey", &keys.0), ("secondaryKey", &keys.1)]).await;
    operator
        .apply(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: boiler}\n\
             spec:\n  serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: boiler-keys}\n",
        )
        .await;
    operator.wait("individualenrollment/boiler", "condition=Ready").await;
    let digest = |resource: &serde_json::Value| {
        resource["status"]["secretsDigest"].as_str().unwrap_or_default().to_owned()
    };
    let keyed = digest(&operator.get("individualenrollment/boiler").await);
    assert!(keyed.starts_with("hmac-sha256:"), "{keyed}");
    // Whoever reads the status and guesses the keys cannot confirm the guess with a hash.
    let guessed = Resolved {
        keys: Some((Secret::new(keys.0.clone()), Secret::new(keys.1.clone()))),
        ..Default::default()
    };
    let unkeyed = guessed.unkeyed_secrets_digest().unwrap();
    assert!(!keyed.contains(&unkeyed));
    let key_secret = operator.get("secret/dps-operator-digest-key").await;
    assert!(key_secret["data"]["key"].is_string(), "the key lives in the operator's namespace");

    // A status written by an operator from before digests were keyed.
    operator.stop();
    let patch = json!({"status": {"secretsDigest": unkeyed}}).to_string();
    let patched = operator
        .kubectl(
            &[
                "patch",
                "individualenrollment",
                "boiler",
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        )
        .await;
    assert!(patched.success, "{}", patched.stderr);
    operator.emulator.reset_calls();
    operator.restart();
    operator
        .eventually("individualenrollment/boiler", "its digest is keyed again", |r| digest(r) == keyed)
        .await;
    assert_eq!(operator.emulator.writes("IndividualEnrollment"), 0, "the same keys are not written again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spec_changed_while_paused_is_reported_as_an_update_not_as_drift() {
    let operator = Operator::start("unpause").await;
    let key = BASE64.encode([9u8; 32]);
    operator.create_secret("pump-keys", &[("primaryKey", &key), ("secondaryKey", &key)]).await;
    let pump = "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {name: pump}\n\
                spec:\n  serviceRef: {name: dps}\n  attestation:\n    symmetricKey:\n      secretRef: {name: pump-keys}\n";
    operator.apply(pump).await;
    operator.wait("individualenrollment/pump", "condition=Ready").await;
    let annotate = |value: &'static str| {
        let operator = &operator;
        async move {
            let args = ["annotate", "--overwrite", "individualenrollment", "pump", value];
            assert!(operator.kubectl(&args, None).await.success);
        }
    };
    annotate("dps.iot.dev/paused=true").await;
    operator.apply(&format!("{pump}  iotEdge: true\n")).await;
    operator
        .eventually("individualenrollment/pump", "the paused pass saw the new generation", |r| {
            r["status"]["observedGeneration"] == r["metadata"]["generation"]
        })
        .await;
    annotate("dps.iot.dev/paused-").await;
    operator
        .eventually_dps("iotEdge reached DPS", async |dps| {
            let pump: models::IndividualEnrollment = dps.get("pump").await.ok()?;
            pump.capabilities?.iot_edge.then_some(())
        })
        .await;
    let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
    let (events, update) = loop {
        let events = operator.events("pump").await;
        let update =
            events.iter().find(|(_, reason, note)| reason == "Updated" && note.contains("iotEdge")).cloned();
        if let Some(update) = update {
            break (events, update);
        }
        assert!(tokio::time::Instant::now() < deadline, "no Updated event: {events:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(update.2.ends_with("to match the spec."), "{update:?}");
    assert!(
        !events.iter().any(|(_, reason, _)| reason == "DriftCorrected"),
        "nothing changed in DPS: {events:?}"
    );
}

/// Deleting many resources at once deletes their enrollments in bulk `delete` calls of up to
/// ten, never one DELETE each; one that someone already removed from DPS is no error for its
/// resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletions_are_gathered_into_bulk_calls() {
    let operator = Operator::start("bulk-delete").await;
    let manifest = |i: usize| {
        format!(
            "apiVersion: dps.iot.dev/v1beta1\nkind: IndividualEnrollment\nmetadata: {{name: sensor-{i}, labels: {{wave: one}}}}\n\
             spec:\n  serviceRef: {{name: dps}}\n  attestation:\n    symmetricKey:\n      secretRef: {{name: sensor-{i}-keys}}\n"
        )
    };
    let all: Vec<String> = (0..12).map(manifest).collect();
    operator.apply(&all.join("---\n")).await;
    for i in 0..12 {
        operator.wait(&format!("individualenrollment/sensor-{i}"), "condition=Ready").await;
    }
    let create_calls = operator.emulator.calls().get("IndividualEnrollment_RunBulkOperation").copied();

    // Each create is announced once: one alone in its call on its resource, those sharing a
    // call together on the connection.
    let deadline = tokio::time::Instant::now() + support::operator::PATIENCE;
    let (alone, together) = loop {
        let listed = operator.kubectl(&["get", "events.events.k8s.io", "-o", "json"], None).await;
        let events: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
        let created = events["items"].as_array().unwrap().iter().filter(|e| e["reason"] == "Created");
        let (mut alone, mut together) = (Vec::new(), Vec::new());
        for event in created {
            let regarding = event["regarding"]["name"].as_str().unwrap().to_owned();
            match event["regarding"]["kind"].as_str() {
                Some("IndividualEnrollment") => alone.push(regarding),
                Some("ProvisioningService") => {
                    let note = event["note"].as_str().unwrap();
                    let ids = note.split_once(": ").unwrap().1.trim_end_matches('.');
                    together.extend(ids.split(", ").map(str::to_owned));
                }
                other => panic!("a Created event about {other:?}: {event}"),
            }
        }
        if alone.len() + together.len() >= 12 || tokio::time::Instant::now() > deadline {
            break (alone, together);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut announced: Vec<String> = alone.iter().chain(&together).cloned().collect();
    announced.sort();
    let mut expected: Vec<String> = (0..12).map(|i| format!("sensor-{i}")).collect();
    expected.sort();
    assert_eq!(announced, expected, "alone: {alone:?}, together: {together:?}");
    assert_eq!(together.is_empty(), create_calls == Some(12), "{create_calls:?} calls; {together:?}");
    operator.dps.delete::<models::IndividualEnrollment>("sensor-0", IfMatch::None).await.unwrap();
    operator.emulator.reset_calls();

    let deleted =
        operator.kubectl(&["delete", "individualenrollments", "-l", "wave=one", "--timeout=60s"], None).await;
    assert!(deleted.success, "{}", deleted.stderr);
    let left: Vec<models::IndividualEnrollment> =
        futures::TryStreamExt::try_collect(operator.dps.query("SELECT *", None)).await.unwrap();
    assert!(left.is_empty(), "all deleted from DPS: {left:?}");
    let calls = operator.emulator.calls();
    assert_eq!(calls.get("IndividualEnrollment_Delete"), None, "no single deletes: {calls:?}");
    let bulk = calls.get("IndividualEnrollment_RunBulkOperation").copied().unwrap_or_default();
    // Ten at most per call; how many share one depends on when their reconciles run.
    assert!((2..12).contains(&bulk), "12 deletions in fewer bulk calls than deletions: {calls:?}");
}
