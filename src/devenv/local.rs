//! `dps-operator local`: the whole product on one machine. A real Kubernetes control plane, a DPS
//! emulator answering for the host the examples name, the operator, and the Secrets the examples
//! reference; then the examples, until every resource is Ready.

use std::{path::Path, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use super::{ControlPlane, Error, Tools, device, run};
use crate::{
    controller::{self, config::Config},
    pki::CertificateAuthority,
};
use dps_emulator::{EmulatorConfig, RunningEmulator};

/// The DPS host the examples name; the emulator answers for it.
const EXAMPLE_HOST: &str = "contoso.azure-devices-provisioning.net";
/// The device `local` provisions, one the thermostats example lists in its `deviceKeys`.
const SAMPLE_DEVICE: &str = "thermostat-0001";
const DEVICE_KEYS_SECRET: &str = "thermostats-device-keys";
/// Where the operator runs, and where ClusterProvisioningService Secrets live.
pub const OPERATOR_NAMESPACE: &str = "dps-operator";

/// Starts everything, applies the manifests in `examples` to `namespace`, waits until every
/// resource is Ready, shows them, and keeps running until Ctrl-C or SIGTERM.
pub async fn run_local(examples: &Path, namespace: &str) -> Result<(), Error> {
    let control_plane = ControlPlane::start(Tools::locate()?)?;
    // Garbage collection and namespace deletion, as in a cluster.
    control_plane.start_controller_manager()?;
    control_plane.install_crds()?;
    let kubectl = |args: &[&str], stdin: Option<&str>| run(control_plane.kubectl().args(args), stdin);

    let emulator =
        RunningEmulator::start(EmulatorConfig { host_name: Some(EXAMPLE_HOST.into()), ..Default::default() })
            .await
            .map_err(|e| Error::Emulator(e.to_string()))?;
    let emulator_ca = emulator.ca_certificate().unwrap_or_default().to_owned();
    let ca_pem = emulator_ca.clone();
    let ca_file = control_plane.kubeconfig().with_file_name("dps-emulator-ca.pem");
    std::fs::write(&ca_file, &emulator_ca).map_err(|source| Error::io("write", &ca_file, source))?;
    let token_file = control_plane.kubeconfig().with_file_name("federated-token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkcHMtb3BlcmF0b3IifQ.bG9jYWw")
        .map_err(|source| Error::io("write", &token_file, source))?;

    let _ = kubectl(&["create", "namespace", OPERATOR_NAMESPACE], None);
    let _ = kubectl(&["create", "namespace", namespace], None);
    // The ClusterProvisioningService example admits namespaces with this label.
    kubectl(&["label", "--overwrite", "namespace", namespace, "iot.contoso.com/dps-access=factory"], None)?;
    kubectl(&["apply", "-f", "-"], Some(&example_inputs(&emulator, namespace)?))?;

    let operator = start_operator(&control_plane, &emulator, emulator_ca, &token_file).await?;

    let examples = examples.display().to_string();
    kubectl(&["apply", "-n", namespace, "-f", &examples], None)?;
    let wait = |resources: &[&str]| {
        let mut args = vec!["wait", "--for=condition=Ready", "--all", "--timeout=120s"];
        args.extend_from_slice(resources);
        tokio::task::block_in_place(|| kubectl(&args, None))
    };
    wait(&[
        "-n",
        namespace,
        "provisioningservices,enrollmentgroups,individualenrollments,individualenrollmentsets",
    ])?;
    wait(&["clusterprovisioningservices"])?;

    let registration = provision_sample(&control_plane, &emulator, namespace, &ca_pem).await?;
    let resources = kubectl(&["get", "dps", "--all-namespaces"], None)?;
    println!(
        "{}",
        summary(&control_plane, &emulator, &examples, &resources, &registration, namespace, &ca_file)
    );
    crate::signals::shutdown()
        .await
        .map_err(|source| Error::io("wait for a stop signal in", Path::new("this process"), source))?;
    operator.abort();
    emulator.stop().await;
    control_plane.stop();
    Ok(())
}

/// Starts the operator on `control_plane`, trusting the emulator's CA and reaching it for the
/// examples' DPS host; workload identity reads `token_file`.
async fn start_operator(
    control_plane: &ControlPlane,
    emulator: &RunningEmulator,
    emulator_ca: String,
    token_file: &Path,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let config = Config {
        operator_namespace: OPERATOR_NAMESPACE.into(),
        extra_ca_certificates: Some(emulator_ca),
        resolve: vec![(EXAMPLE_HOST.into(), emulator.address())],
        azure_environment: [
            ("AZURE_FEDERATED_TOKEN_FILE".to_owned(), token_file.display().to_string()),
            ("AZURE_AUTHORITY_HOST".to_owned(), emulator.url()),
        ]
        .into(),
        ..Config::default()
    };
    let client = control_plane.client().await?;
    Ok(tokio::spawn(async move {
        let health = Arc::new(crate::http::Health::default());
        if let Err(error) = controller::run(client, config, Vec::new(), None, health).await {
            eprintln!("the operator stopped: {error}");
        }
    }))
}

/// A sample device provisions with the key the operator derived for it (the thermostats
/// example's `deviceKeys`), and the group's status shows it: a shorter drift check interval makes
/// the operator look at once, and every minute after. Answers the device's registration state.
async fn provision_sample(
    control_plane: &ControlPlane,
    emulator: &RunningEmulator,
    namespace: &str,
    ca_pem: &str,
) -> Result<serde_json::Value, Error> {
    let kubectl = |args: &[&str], stdin: Option<&str>| run(control_plane.kubectl().args(args), stdin);
    let selector = format!("jsonpath={{.data.{SAMPLE_DEVICE}}}");
    let key = kubectl(&["get", "secret", DEVICE_KEYS_SECRET, "-n", namespace, "-o", &selector], None)?;
    let key = BASE64.decode(key.trim()).ok().and_then(|key| String::from_utf8(key).ok()).unwrap_or_default();
    let endpoint = device::Endpoint {
        host: EXAMPLE_HOST,
        address: emulator.address(),
        ca_pem,
        id_scope: emulator.id_scope(),
    };
    let registration = device::provision(&endpoint, SAMPLE_DEVICE, &key).await?;
    let interval = r#"{"spec":{"driftCheckInterval":"1m"}}"#;
    kubectl(
        &["patch", "enrollmentgroup", "thermostats", "-n", namespace, "--type", "merge", "-p", interval],
        None,
    )?;
    tokio::task::block_in_place(|| {
        let assigned = "--for=jsonpath={.status.registrations.assigned}=1";
        kubectl(&["wait", assigned, "enrollmentgroup/thermostats", "-n", namespace, "--timeout=120s"], None)
    })?;
    Ok(registration)
}

/// What `dps-operator local` tells its user once everything is up.
fn summary(
    control_plane: &ControlPlane,
    emulator: &RunningEmulator,
    examples: &str,
    resources: &str,
    registration: &serde_json::Value,
    namespace: &str,
    ca_file: &Path,
) -> String {
    format!(
        "Everything runs on this machine: a Kubernetes API server at {server} with \
         kube-controller-manager, a DPS emulator standing in \
         for {EXAMPLE_HOST} at {emulator}, and the operator. The manifests from {examples} are applied and \
         Ready:\n\n{resources}\nA sample device, {SAMPLE_DEVICE}, provisioned with the key the operator derived for it \
         (Secret {DEVICE_KEYS_SECRET}): DPS assigned it to {hub} as device {device_id}; the group's status counts it.\n\n\
         Use it from another terminal with:\n\n    export KUBECONFIG={kubeconfig}\n    \
         kubectl get dps -A\n    kubectl describe enrollmentgroup thermostats -n {namespace}\n\n\
         Provision a device of your own: its key is in Secret {DEVICE_KEYS_SECRET} once its registration id is in the \
         group's spec.deviceKeys.registrationIds; a device registers at https://{EXAMPLE_HOST} (here {emulator}, \
         trusting {ca}) under ID scope {id_scope} (see the README, \"Provisioning a device against the emulator\").\n\n\
         The kubectl of this run (the machine's own may be older than this API server):\n    {kubectl}\n\
         The DPS emulator at {emulator}, answering for {EXAMPLE_HOST}:\n    \
         CA certificate:    {ca}\n    connection string: {connection}\n\
         The operator's warnings and errors appear below (RUST_LOG=info for more).\n\n\
         Press Ctrl-C to stop everything and remove its data.",
        server = control_plane.server(),
        emulator = emulator.address(),
        kubeconfig = control_plane.kubeconfig().display(),
        kubectl = control_plane.tools().binary("kubectl").display(),
        ca = ca_file.display(),
        connection = emulator.connection_string(),
        hub = registration["assignedHub"].as_str().unwrap_or_default(),
        device_id = registration["deviceId"].as_str().unwrap_or_default(),
        id_scope = emulator.id_scope(),
    )
}

/// The Secrets and ConfigMaps the examples in `examples/` reference, pointing at the emulator
/// (`corporate-proxy-ca` holds its CA).
pub fn example_inputs(emulator: &RunningEmulator, namespace: &str) -> Result<String, Error> {
    let ca = Arc::new(CertificateAuthority::new("Contoso Devices CA")?);
    let next_ca = CertificateAuthority::new("Contoso Devices CA 2027")?;
    let sensor = ca.issue_client("sensor-7", None)?;
    let sensor_next = ca.issue_client("sensor-7", None)?;
    let secret = |name: &str, namespace: &str, data: &[(&str, &str)]| {
        let data: serde_json::Map<String, serde_json::Value> =
            data.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned()))).collect();
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}, "stringData": data,
        })
        .to_string()
    };
    let connection = emulator.connection_string();
    let documents = [
        secret("dps-connection", namespace, &[("connectionString", &connection)]),
        secret("factory-dps-connection", OPERATOR_NAMESPACE, &[("connectionString", &connection)]),
        secret("gateways-intermediate-ca", namespace, &[("tls.crt", &ca.certificate_pem)]),
        secret("gateways-intermediate-ca-next", namespace, &[("tls.crt", &next_ca.certificate_pem)]),
        secret(
            "sensor-7-cert",
            namespace,
            &[("tls.crt", &sensor.certificate_pem), ("ca.crt", &ca.certificate_pem)],
        ),
        secret("sensor-7-cert-next", namespace, &[("tls.crt", &sensor_next.certificate_pem)]),
        secret(
            "allocation-webhook",
            namespace,
            &[("url", "https://contoso-allocation.azurewebsites.net/api/allocate?code=local")],
        ),
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "corporate-proxy-ca", "namespace": namespace},
            "data": {"ca.crt": emulator.ca_certificate().unwrap_or_default()},
        })
        .to_string(),
    ];
    Ok(documents.join("\n---\n"))
}
