//! Captures `tests/fixtures/v0.1.0/`: objects of every kind exactly as release 0.1.0 (the last
//! `v1alpha1`-only release) writes them, with the DPS emulator's state beside them. Run once, at
//! that release, with `DPS_CAPTURE_FIXTURES=1 cargo test --test capture_v0_1_0`.

use std::{net::TcpListener, path::Path, time::Duration};

use dps_emulator::EmulatorConfig;
use dps_operator::pki::CertificateAuthority;
use support::operator::{Operator, is_ready};

mod support;

const HOST: &str = "fixtures.azure-devices-provisioning.net";

const OBJECTS: &str = r#"
apiVersion: dps.iot.dev/v1alpha1
kind: EnrollmentGroup
metadata: {name: thermostats}
spec:
  serviceRef: {name: dps}
  enrollmentGroupId: thermostats-2026
  attestation:
    symmetricKey:
      secretRef: {name: thermostats-group-key}
  allocationPolicy: hashed
  initialTwin:
    tags: {deviceType: thermostat}
  deviceKeys:
    secretName: thermostats-device-keys
    registrationIds: [thermostat-0001]
---
apiVersion: dps.iot.dev/v1alpha1
kind: IndividualEnrollment
metadata: {name: boiler-0042}
spec:
  serviceRef: {name: dps}
  registrationId: "boiler:0042"
  attestation:
    symmetricKey:
      secretRef: {name: boiler-0042-keys}
  deletionProtection: true
---
apiVersion: dps.iot.dev/v1alpha1
kind: IndividualEnrollment
metadata: {name: kiosk-3}
spec:
  serviceRef: {name: dps}
  registrationId: kiosk-3.store-117
  attestation:
    tpm:
      endorsementKey: AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAxsj2gUScTk1UjuioeTlfGYZrrimExB+bScH75adUMRIi2UOMxG1kw4y+9RW/IVoMl4e620VxZad0ARX2gUqVjYO7KPVt3dyKhZS3dkcvfBisBhP1XH9B33VqHG9SHnbnQXdBUaCgKAfxome8UmBKfe+naTsE5fkvjb/do3/dD6l4sGBwFCnKRdln4XpM03zLpoHFao8zOwt8l/uP3qUIxmCYv9A7m69Ms+5/pCkTu/rK4mRDsfhZ0QLfbzVI6zQFOKF/rwsfBtFeWlWtcuJMKlXdD8TXWElTzgh7JS4qhFzreL0c1mI0GCj+Aws0usZh7dLIVPnlgZcBhgy1SSDQMQ==
---
apiVersion: dps.iot.dev/v1alpha1
kind: IndividualEnrollment
metadata: {name: sensor-7}
spec:
  serviceRef: {name: dps}
  attestation:
    x509:
      clientCertificates:
        primary: {name: sensor-7-cert}
  provisioningStatus: disabled
"#;

const CLUSTER_CONNECTION: &str = r#"
apiVersion: dps.iot.dev/v1alpha1
kind: ClusterProvisioningService
metadata: {name: fixtures-shared-dps}
spec:
  credentials:
    connectionStringSecretRef: {name: dps-connection, key: connectionString}
  caBundle:
    secretRef: {name: dps-ca, key: ca.crt}
  allowedNamespaces:
    matchLabels: {fixtures: "true"}
---
apiVersion: dps.iot.dev/v1alpha1
kind: EnrollmentGroup
metadata: {name: meters}
spec:
  serviceRef: {name: fixtures-shared-dps, kind: ClusterProvisioningService}
  attestation:
    symmetricKey:
      secretRef: {name: meters-group-key}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn capture() {
    if std::env::var_os("DPS_CAPTURE_FIXTURES").is_none() {
        return;
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1.0");
    std::fs::create_dir_all(&out).unwrap();
    let state = out.join("dps-state.json");
    let _ = std::fs::remove_file(&state);
    let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let emulator = EmulatorConfig {
        listen: address,
        host_name: Some(HOST.into()),
        state_file: Some(state),
        ..EmulatorConfig::default()
    };
    let operator = Operator::start_with("fixtures", emulator, |config| {
        config.resolve = vec![(HOST.into(), address)];
        config.drift_check_interval = Duration::from_secs(3600);
    })
    .await;
    let ns = operator.namespace.clone();
    let ca = CertificateAuthority::new("Fixtures CA").unwrap();
    let sensor = ca.issue_client("sensor-7", None).unwrap();
    operator.create_secret("sensor-7-cert", &[("tls.crt", &sensor.certificate_pem)]).await;
    operator.kubectl(&["label", "namespace", &ns, "fixtures=true"], None).await;
    operator.apply(OBJECTS).await;
    operator.apply(CLUSTER_CONNECTION).await;
    for resource in
        ["enrollmentgroup/thermostats", "enrollmentgroup/meters", "individualenrollment/boiler-0042"]
    {
        operator.eventually(resource, "Ready", is_ready).await;
    }
    for resource in
        ["individualenrollment/kiosk-3", "individualenrollment/sensor-7", "provisioningservice/dps"]
    {
        operator.eventually(resource, "Ready", is_ready).await;
    }
    let kinds = "provisioningservices,enrollmentgroups,individualenrollments,secrets";
    let namespaced = operator.kubectl(&["get", kinds, "-o", "yaml"], None).await.stdout;
    std::fs::write(out.join("namespaced.yaml"), namespaced.replace(&ns, "NAMESPACE")).unwrap();
    let cluster = support::kubectl_ok(&["get", "clusterprovisioningservices", "-o", "yaml"]);
    std::fs::write(out.join("cluster.yaml"), cluster.replace(&ns, "NAMESPACE")).unwrap();
}
