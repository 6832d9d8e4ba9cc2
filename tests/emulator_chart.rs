//! The emulator's chart (`charts/dps-emulator`) with the real `helm`: rendering, the values
//! schema, and that the certificate and keys it makes are the ones the emulator serves and the
//! connection it writes for a namespace works, across upgrades. Running it in a cluster is in
//! `tests/real_node.rs`.

mod support;

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dps_emulator::{AccessPolicy, EmulatorConfig, GivenCertificate, RunningEmulator, ServerCertificate};
use dps_operator::dps::{auth::ConnectionString, models::IndividualEnrollment};
use serde_json::Value;
use support::{
    helm::{documents, find, helm},
    kubectl_ok,
};

fn chart() -> String {
    support::helm::chart("dps-emulator")
}

/// `helm template` of the chart as release `dps-emulator` in `dps-lab` with `args` added.
fn template(args: &[&str]) -> support::Output {
    let chart = chart();
    let mut all = vec!["template", "dps-emulator", &chart as &str, "--namespace", "dps-lab"];
    all.extend(args);
    helm(&all)
}

fn render(args: &[&str]) -> Vec<Value> {
    let output = template(args);
    assert!(output.success, "helm template {args:?} failed: {}", output.stderr);
    documents(&output.stdout)
}

fn decoded(secret: &Value, key: &str) -> String {
    let data = secret["data"][key].as_str().unwrap_or_else(|| panic!("the Secret has no {key}: {secret}"));
    String::from_utf8(BASE64.decode(data).unwrap()).unwrap()
}

#[test]
fn the_chart_lints_and_renders_a_restricted_emulator_behind_a_service() {
    let linted = helm(&["lint", &chart()]);
    assert!(linted.success, "{}{}", linted.stdout, linted.stderr);

    let rendered = render(&[]);
    let deployment = find(&rendered, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--host-name=dps-emulator.dps-lab.svc"), "{args:?}");
    assert!(args.contains(&"--tls-cert-file=/etc/dps-emulator/tls/tls.crt"), "{args:?}");
    assert_eq!(
        container["image"],
        format!("ghcr.io/dps-operator/dps-emulator:{}", env!("CARGO_PKG_VERSION"))
    );
    // Pod Security `restricted`, and no API access it does not need.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["automountServiceAccountToken"], false);
    // The keys reach the emulator from its Secret, never as arguments.
    assert!(!args.iter().any(|a| a.contains("key=")), "{args:?}");
    let env = container["env"].as_array().unwrap();
    assert!(env.iter().all(|e| e["valueFrom"]["secretKeyRef"]["name"] == "dps-emulator"), "{env:?}");
    let service = find(&rendered, "Service")[0];
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    // Nothing is written to other namespaces unless asked.
    assert_eq!(find(&rendered, "Secret").len(), 1);

    // The serving certificate covers the host name, the Service's names and localhost.
    let secret = find(&rendered, "Secret")[0];
    let names = subject_alt_names(&decoded(secret, "tls.crt"));
    for name in
        ["dps-emulator.dps-lab.svc", "dps-emulator", "dps-emulator.dps-lab.svc.cluster.local", "localhost"]
    {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }

    // Another port is part of the host name clients use.
    let other_port = render(&["--set", "service.port=8443"]);
    let args =
        find(&other_port, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array().unwrap().iter().any(|a| a == "--host-name=dps-emulator.dps-lab.svc:8443"),
        "{args}"
    );

    // A connection for a namespace: its Secret, and a ProvisioningService using it.
    let api = "dps.iot.dev/v1beta1/ProvisioningService";
    let connected = render(&["--set", "connection.namespaces={factory,lab}", "--api-versions", api]);
    let connections: Vec<&Value> = find(&connected, "Secret")
        .into_iter()
        .filter(|s| s["metadata"]["name"] == "dps-emulator-connection")
        .collect();
    assert_eq!(connections.len(), 2);
    assert!(decoded(connections[0], "connectionString").starts_with(
        "HostName=dps-emulator.dps-lab.svc;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="
    ));
    let services = find(&connected, "ProvisioningService");
    assert_eq!(services.len(), 2);
    assert_eq!(services[1]["metadata"]["namespace"], "lab");
    assert_eq!(
        services[1]["spec"]["credentials"]["connectionStringSecretRef"]["name"],
        "dps-emulator-connection"
    );
    assert_eq!(services[1]["spec"]["caBundle"]["secretRef"]["key"], "ca.crt");
    // Without the operator's CRDs, it says what to do instead of failing on an unknown kind.
    let without_crds = template(&["--set", "connection.namespaces={factory}"]);
    assert!(!without_crds.success);
    assert!(without_crds.stderr.contains("install the dps-operator chart first"), "{}", without_crds.stderr);
    let secrets_only = render(&[
        "--set",
        "connection.namespaces={factory}",
        "--set",
        "connection.provisioningService.create=false",
    ]);
    assert!(find(&secrets_only, "ProvisioningService").is_empty());
    assert_eq!(find(&secrets_only, "Secret").len(), 2);
}

#[test]
fn invalid_values_are_refused_by_the_schema() {
    for (set, complaint) in [
        ("hostName=Not A Host", "/hostName"),
        ("service.port=0", "/service/port"),
        ("operationsPerMinute=-1", "/operationsPerMinute"),
        ("connection.namespaces={Not_A_Namespace}", "/connection/namespaces"),
        ("replicaCount=2", "additional properties 'replicaCount' not allowed"),
    ] {
        let output = template(&["--set", set]);
        assert!(!output.success, "{set} was accepted");
        assert!(output.stderr.contains(complaint), "{set}: {}", output.stderr);
    }
}

/// Installed (into a control plane without a node), the chart's Secret is what the emulator
/// serves: its PKCS#1 key and certificate, its policy keys, and the connection Secret it writes
/// for a namespace authenticates. Upgrades keep all of it; a new host name gets a new serving
/// certificate from the same CA.
#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_serves_what_the_chart_made_and_upgrades_keep_it() {
    let (release, namespace, lab) = ("lab-dps", "dps-emulator-chart", "dps-emulator-lab");
    block(|| {
        kubectl_ok(&["create", "namespace", lab]);
        let installed = helm(&[
            "install",
            release,
            &chart(),
            "-n",
            namespace,
            "--create-namespace",
            "--set",
            &format!("connection.namespaces={{{lab}}}"),
        ]);
        assert!(installed.success, "{}{}", installed.stdout, installed.stderr);
        assert!(
            installed.stdout.contains("the ProvisioningService lab-dps-dps-emulator uses them"),
            "{}",
            installed.stdout
        );
    });
    let secret = || -> Value {
        serde_json::from_str(&kubectl_ok(&[
            "get",
            "secret",
            "lab-dps-dps-emulator",
            "-n",
            namespace,
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let connection = || -> Value {
        serde_json::from_str(&kubectl_ok(&[
            "get",
            "secret",
            "lab-dps-dps-emulator-connection",
            "-n",
            lab,
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let first = block(secret);
    connects(&first, &block(connection)).await;
    let service = block(|| {
        kubectl_ok(&["get", "provisioningservice", "lab-dps-dps-emulator", "-n", lab, "-o", "json"])
    });
    assert!(service.contains("lab-dps-dps-emulator-connection"), "{service}");

    // An upgrade changes nothing the clients hold.
    let upgrade = |set: &str| {
        let upgraded = helm(&["upgrade", release, &chart(), "-n", namespace, "--reuse-values", "--set", set]);
        assert!(upgraded.success, "{}{}", upgraded.stdout, upgraded.stderr);
    };
    block(|| upgrade("operationsPerMinute=600"));
    assert_eq!(block(secret)["data"], first["data"], "the upgrade changed the CA, keys or certificate");

    // A new host name: same CA and keys, a serving certificate for the new name.
    block(|| upgrade("hostName=dps.lab.example"));
    let renamed = block(secret);
    for key in ["ca.crt", "ca.key", "primaryKey", "secondaryKey"] {
        assert_eq!(renamed["data"][key], first["data"][key], "{key} changed with the host name");
    }
    assert_ne!(renamed["data"]["tls.crt"], first["data"]["tls.crt"]);
    assert!(subject_alt_names(&decoded(&renamed, "tls.crt")).iter().any(|n| n == "dps.lab.example"));
    let connection = block(connection);
    assert!(decoded(&connection, "connectionString").starts_with("HostName=dps.lab.example;"));
    connects(&renamed, &connection).await;

    // Uninstalling removes what it wrote in the other namespace too.
    block(|| {
        let uninstalled = helm(&["uninstall", release, "-n", namespace]);
        assert!(uninstalled.success, "{}", uninstalled.stderr);
        let left = kubectl_ok(&["get", "secrets,provisioningservices", "-n", lab, "-o", "name"]);
        assert!(!left.contains("lab-dps"), "left behind: {left}");
    });
}

/// Starts an emulator as the chart's Pod does, from `secret`, and calls it as a client of the
/// connection Secret would.
async fn connects(secret: &Value, connection: &Value) {
    let host = decoded(secret, "hostName");
    let certificate = GivenCertificate::from_pem(
        decoded(secret, "tls.crt").as_bytes(),
        decoded(secret, "tls.key").as_bytes(),
    )
    .expect("the chart's certificate and key can be read");
    let key = |name| BASE64.decode(decoded(secret, name)).expect("the policy keys are base64");
    let emulator = RunningEmulator::start(EmulatorConfig {
        host_name: Some(host.clone()),
        certificate: ServerCertificate::Given(Arc::new(certificate)),
        policies: vec![AccessPolicy {
            name: "provisioningserviceowner".into(),
            primary_key: key("primaryKey"),
            secondary_key: key("secondaryKey"),
        }],
        ..EmulatorConfig::default()
    })
    .await
    .expect("the emulator starts with the chart's certificate");
    let connection_string = decoded(connection, "connectionString");
    let parsed: ConnectionString = connection_string.parse().expect("a valid connection string");
    assert_eq!(parsed.host_name, host);
    let client =
        support::dps::client_at(&connection_string, decoded(connection, "ca.crt"), emulator.address());
    // Trusted through the CA the connection Secret holds, signed with the policy's key: DPS's
    // answer for an enrollment that does not exist.
    match client.get::<IndividualEnrollment>("nobody").await {
        Err(dps_operator::dps::Error::NotFound { .. }) => {}
        other => panic!("the emulator at {host} did not answer as DPS: {other:?}"),
    }
}

fn subject_alt_names(pem: &str) -> Vec<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let certificate = pem.parse_x509().unwrap();
    let names = certificate.subject_alternative_name().unwrap().expect("a subjectAltName");
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
