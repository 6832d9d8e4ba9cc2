//! The operator end to end: the real control plane, the real kubectl, and the DPS emulator over
//! HTTPS.

mod support;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_operator::dps::{self, IfMatch, models};
use serde_json::json;
use support::operator::{Operator, condition, is_ready};

const GROUP: &str = r#"
apiVersion: dps.iot.dev/v1alpha1
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

    let group: models::EnrollmentGroup = operator.dps.get("thermostats-2026").await.expect("DPS has the group");
    assert_eq!(group.allocation_policy, Some(models::AllocationPolicy::Hashed));
    assert_eq!(group.iot_hubs.as_ref().map(Vec::len), Some(2));
    assert_eq!(group.reprovision_policy, Some(models::ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: false }));
    let twin = group.initial_twin.clone().unwrap();
    assert_eq!(serde_json::to_value(twin.tags).unwrap(), json!({"deviceType": "thermostat", "building": {"site": "Redmond", "floor": 3}}));

    // The missing Secret was created with random 64-byte keys, owned by the group, and DPS uses them.
    let secret = operator.get("secret/thermostats-keys").await;
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "EnrollmentGroup");
    let primary = String::from_utf8(BASE64.decode(secret["data"]["primaryKey"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(BASE64.decode(&primary).unwrap().len(), 64);
    let keys = operator.dps.attestation_mechanism::<models::EnrollmentGroup>("thermostats-2026").await.unwrap();
    assert_eq!(keys.symmetric_key.unwrap().primary_key.unwrap().expose(), primary);

    let resource = operator.get("enrollmentgroup/thermostats").await;
    assert_eq!(resource["status"]["etag"].as_str(), group.etag.as_deref());
    assert_eq!(resource["status"]["enrollmentGroupId"], "thermostats-2026");
    assert_eq!(resource["status"]["attestation"], "symmetricKey");
    assert_eq!(resource["status"]["claimed"], true);
    assert_eq!(condition(&resource, "Reconciling").unwrap().0, "False");
    assert_eq!(condition(&resource, "Stalled").unwrap().0, "False");
    assert!(resource["metadata"]["finalizers"].as_array().unwrap().iter().any(|f| f == "dps.iot.dev/cleanup"));
    assert!(!serde_json::to_string(&resource).unwrap().contains(&primary), "no key in the resource");
    let events = operator.events("thermostats").await;
    assert!(events.iter().any(|(type_, reason, _)| type_ == "Normal" && reason == "Created"), "{events:?}");

    // Several drift checks later (every 3 s here): no write, and reads come from paged queries.
    operator.emulator.reset_calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = operator.emulator.calls();
    assert_eq!(calls.get("EnrollmentGroup_CreateOrUpdate"), None, "{calls:?}");
    assert_eq!(calls.get("EnrollmentGroup_Get"), None, "drift checks use the query snapshot: {calls:?}");
    assert!(calls.get("EnrollmentGroup_Query").is_some(), "{calls:?}");
    let unchanged = operator.get("enrollmentgroup/thermostats").await;
    assert_eq!(unchanged["metadata"]["resourceVersion"], resource["metadata"]["resourceVersion"], "no status write when nothing changed");
    assert!(is_ready(&unchanged));
}
