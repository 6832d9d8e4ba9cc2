//! A client of one DPS: from a connection string the user holds, or from a connection
//! (`ProvisioningService`, `ClusterProvisioningService`) in the cluster, whose Secrets are read
//! with the user's own permissions.

use std::{path::PathBuf, sync::Arc, time::Duration};

use kube::{Api, ResourceExt};

use super::{Error, cluster::Cluster};
use crate::{
    api::{ClusterProvisioningService, ConnectionSpec, ProvisioningService, ServiceKind, ServiceRef},
    controller::connection::DEFAULT_OPERATIONS_PER_MINUTE,
    dps::{
        self, ClientConfig,
        auth::{Authenticator, ConnectionString},
        rate_limit::RateLimiter,
    },
};

/// Which DPS to read, for `import`.
#[derive(clap::Args, Debug, Default)]
pub struct SourceArgs {
    /// A ProvisioningService in the namespace to read the DPS through (its connection string
    /// Secret is read with your permissions); `clusterprovisioningservice/NAME` for a
    /// ClusterProvisioningService.
    #[arg(long)]
    pub service: Option<String>,
    /// A file holding a DPS shared access policy connection string
    /// (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`), instead of --service; the
    /// environment variable DPS_CONNECTION_STRING does the same.
    #[arg(long, conflicts_with = "service")]
    pub connection_string_file: Option<PathBuf>,
    /// PEM certificates to trust for the DPS endpoint besides the system roots, with a connection
    /// string (a connection's own caBundle is used with --service).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// DPS operations a minute at most (default: the connection's rateLimit, else 200).
    #[arg(long)]
    pub rate: Option<u32>,
}

/// A DPS client and what to call the DPS in messages.
pub struct Dps {
    pub client: dps::Client,
    pub host: String,
    pub name: String,
    pub rate: u32,
}

/// The environment variable that may hold a connection string.
const CONNECTION_STRING_VARIABLE: &str = "DPS_CONNECTION_STRING";

/// The DPS `args` name, and the connection it was reached through when it names one.
pub async fn from_args(
    args: &SourceArgs,
    cluster: Option<&Cluster>,
) -> Result<(Dps, Option<ServiceRef>), Error> {
    let from_file = match &args.connection_string_file {
        Some(path) => Some(read(path).await?),
        None => std::env::var(CONNECTION_STRING_VARIABLE).ok().filter(|_| args.service.is_none()),
    };
    if let Some(text) = from_file {
        let parsed: ConnectionString = text
            .trim()
            .parse()
            .map_err(|e| Error::Connection(format!("the connection string is not valid: {e}")))?;
        let ca = match &args.ca_file {
            Some(path) => Some(read(path).await?),
            None => None,
        };
        let host = parsed.host_name.clone();
        let rate = args.rate.unwrap_or(DEFAULT_OPERATIONS_PER_MINUTE);
        let dps = build(host.clone(), format!("DPS {host}"), Authenticator::shared_access(parsed), ca, rate)?;
        return Ok((dps, None));
    }
    let (Some(service), Some(cluster)) = (&args.service, cluster) else {
        return Err(Error::Input(format!(
            "name the DPS to import: --service NAME (a ProvisioningService), --connection-string-file FILE, \
             or the environment variable {CONNECTION_STRING_VARIABLE}"
        )));
    };
    let reference = service_ref(service)?;
    let dps =
        from_service(cluster, &cluster.namespace, &reference, &cluster.operator_namespace, args.rate).await?;
    Ok((dps, Some(reference)))
}

/// `NAME`, `provisioningservice/NAME` or `clusterprovisioningservice/NAME`.
pub fn service_ref(text: &str) -> Result<ServiceRef, Error> {
    let (kind, name) = match text.split_once('/') {
        None => (None, text),
        Some((kind, name)) => match kind.to_ascii_lowercase().as_str() {
            "provisioningservice" | "provisioningservices" | "dpssvc" => (None, name),
            "clusterprovisioningservice" | "clusterprovisioningservices" | "cdpssvc" => {
                (Some(ServiceKind::ClusterProvisioningService), name)
            }
            _ => {
                return Err(Error::Input(format!(
                    "--service {text}: not a ProvisioningService or ClusterProvisioningService"
                )));
            }
        },
    };
    Ok(ServiceRef { kind, name: name.to_owned() })
}

/// A client of the DPS the connection `reference` (as an enrollment in `namespace` names it)
/// points at. `rate` overrides its rate limit.
pub async fn from_service(
    cluster: &Cluster,
    namespace: &str,
    reference: &ServiceRef,
    operator_namespace: &str,
    rate: Option<u32>,
) -> Result<Dps, Error> {
    let (what, spec, status, secrets_namespace) = match reference.kind {
        Some(ServiceKind::ClusterProvisioningService) => {
            let what = format!("ClusterProvisioningService {}", reference.name);
            let api = Api::<ClusterProvisioningService>::all(cluster.client.clone());
            let found = api
                .get_opt(&reference.name)
                .await
                .map_err(|source| Error::Kube { action: format!("reading {what}"), source })?
                .ok_or_else(|| Error::NotFound(format!("{what} does not exist")))?;
            (what, found.spec.connection, found.status, operator_namespace.to_owned())
        }
        _ => {
            let found: ProvisioningService = cluster.get(namespace, &reference.name).await?;
            let what = format!("ProvisioningService {namespace}/{}", found.name_any());
            (what, found.spec.connection, found.status, namespace.to_owned())
        }
    };
    let ready = status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == "Ready");
    match ready {
        Some(ready) if ready.status == "True" => {}
        Some(ready) => {
            return Err(Error::NotReady {
                what,
                reason: ready.reason.clone(),
                message: ready.message.clone(),
            });
        }
        None => {
            let (reason, message) = ("Unknown".to_owned(), "the operator has not checked it yet".to_owned());
            return Err(Error::NotReady { what, reason, message });
        }
    }
    connect(cluster, &what, &spec, &secrets_namespace, rate).await
}

async fn connect(
    cluster: &Cluster,
    what: &str,
    spec: &ConnectionSpec,
    namespace: &str,
    rate: Option<u32>,
) -> Result<Dps, Error> {
    let Some(reference) = &spec.credentials.connection_string_secret_ref else {
        return Err(Error::Connection(format!(
            "{what} uses workload identity, which this plugin cannot use: import with \
             --connection-string-file (a connection string with Enrollment Read permission)"
        )));
    };
    let text = cluster.secret_text(namespace, &reference.name, &reference.key).await?;
    let parsed: ConnectionString = text.trim().parse().map_err(|e| {
        Error::Connection(format!(
            "key {} of Secret {namespace}/{} is not a valid connection string: {e}",
            reference.key, reference.name
        ))
    })?;
    let ca = match spec.ca_bundle.as_ref().map(|b| (&b.secret_ref, &b.config_map_ref)) {
        Some((Some(secret), _)) => Some(cluster.secret_text(namespace, &secret.name, &secret.key).await?),
        Some((None, Some(map))) => Some(cluster.config_map_text(namespace, &map.name, &map.key).await?),
        _ => None,
    };
    let host = spec.host.clone().unwrap_or_else(|| parsed.host_name.clone());
    let configured = spec.rate_limit.as_ref().map(|r| r.operations_per_minute.max(1) as u32);
    let rate = rate.or(configured).unwrap_or(DEFAULT_OPERATIONS_PER_MINUTE);
    build(host, what.to_owned(), Authenticator::shared_access(parsed), ca, rate)
}

fn build(
    host: String,
    name: String,
    authenticator: Authenticator,
    ca: Option<String>,
    rate: u32,
) -> Result<Dps, Error> {
    let client = dps::Client::new(ClientConfig {
        host: host.clone(),
        authenticator: Arc::new(authenticator),
        rate_limiter: Arc::new(RateLimiter::new(rate.max(1))),
        extra_root_certificates: ca,
        timeout: Duration::from_secs(30),
        resolve: Vec::new(),
        observer: None,
    })
    .map_err(|e| Error::Connection(format!("cannot set up a client of {name}: {e}")))?;
    Ok(Dps { client, host, name, rate: rate.max(1) })
}

async fn read(path: &std::path::Path) -> Result<String, Error> {
    tokio::fs::read_to_string(path).await.map_err(|source| Error::Io {
        action: "read",
        path: path.display().to_string(),
        source,
    })
}
