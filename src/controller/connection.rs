//! DPS connections: turning a `ProvisioningService` or `ClusterProvisioningService` into a DPS
//! client (cached until its inputs change, paced by its host's shared rate limiter), and the
//! reconciler that reports whether a connection works.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::{Api, Client, Resource, ResourceExt};

use super::{
    Error,
    config::Config,
    names::resource_name,
    secrets::Reader,
    watches::{Caches, SecretVersions},
};
use crate::{
    api::{
        ClusterProvisioningService, ConnectionSpec, EnrollmentDefaults, ProvisioningService, ServiceKind,
        ServiceRef,
    },
    dps::{
        self, ClientConfig,
        auth::{Authenticator, ConnectionString, WorkloadIdentityConfig},
        models::EnrollmentGroup,
        rate_limit::RateLimiters,
    },
};

/// Operations per minute when a connection does not say (DPS allows 1,000 per unit).
pub const DEFAULT_OPERATIONS_PER_MINUTE: u32 = 200;

/// A usable DPS connection.
#[derive(Clone)]
pub struct Connection {
    /// How messages name it, e.g. `ProvisioningService iot/contoso-dps`.
    pub name: String,
    /// The connection's object, for events about it.
    pub reference: ObjectReference,
    pub host: String,
    pub client: Arc<dps::Client>,
    /// New and deleted enrollments on this connection, gathered into bulk calls.
    pub bulk: Arc<dps::BulkCalls>,
    pub defaults: Option<EnrollmentDefaults>,
    pub credentials: &'static str,
    /// Where the credentials come from, for messages (never the credentials themselves).
    pub credentials_source: String,
}

impl Connection {
    /// The drift check interval: `own` (a resource's), else this connection's default, else
    /// `default`.
    pub fn drift_interval(&self, own: Option<&str>, default: Duration) -> Duration {
        let parse = |text: &str| text.parse::<kube::core::Duration>().ok().map(Duration::from);
        let connection = self.defaults.as_ref().and_then(|d| d.drift_check_interval.as_deref());
        own.and_then(parse).or_else(|| connection.and_then(parse)).unwrap_or(default)
    }

    /// A failed DPS call on this connection; when DPS refused the credentials, the message says
    /// where they come from, the thing to fix.
    pub fn dps_error(&self, source: dps::Error) -> Error {
        let connection = match source.retry_class() {
            dps::RetryClass::Credentials => {
                format!("{} (credentials from {})", self.name, self.credentials_source)
            }
            _ => self.name.clone(),
        };
        Error::Dps { connection, source }
    }
}

/// A connection's own input that cannot be read, as an enrollment using it reports it: the
/// Secret named is the connection's, not the enrollment's.
fn unusable<K: Resource<DynamicType = ()>>(service: &K, error: Error) -> Error {
    match error {
        Error::SecretNotFound { .. }
        | Error::SecretKeyMissing { .. }
        | Error::ConfigMapKeyMissing { .. }
        | Error::SecretValueInvalid { .. }
        | Error::InvalidCredentials { .. } => {
            Error::ConnectionUnusable { connection: resource_name(service), source: Box::new(error) }
        }
        other => other,
    }
}

/// Resolves connections and keeps one client per connection while its inputs stay the same.
pub struct Connections {
    operator_namespace: String,
    rate_limiters: RateLimiters,
    timeout: Duration,
    extra_ca_certificates: Option<String>,
    resolve: Vec<(String, std::net::SocketAddr)>,
    azure_environment: HashMap<String, String>,
    observer: Arc<dyn dps::RequestObserver>,
    clients: Mutex<HashMap<String, Cached>>,
}

/// What a connection is made from.
struct Inputs<'a> {
    spec: &'a ConnectionSpec,
    /// Where its Secrets are.
    namespace: &'a str,
    /// The uid and generation of its object.
    object_version: String,
}

/// A connection's client, kept while its inputs stay the same.
struct Cached {
    object_version: String,
    /// The Secrets it was made from, with their resourceVersions.
    secrets: Vec<(String, String)>,
    /// A ConfigMap is not watched: a connection made from one is checked by reading it.
    reads_config_map: bool,
    /// The inputs' versions and the CA bundle it trusts.
    fingerprint: String,
    connection: Connection,
}

impl Connections {
    pub fn new(config: &Config, observer: Arc<dyn dps::RequestObserver>) -> Self {
        Self {
            operator_namespace: config.operator_namespace.clone(),
            rate_limiters: RateLimiters::default(),
            timeout: config.dps_timeout,
            extra_ca_certificates: config.extra_ca_certificates.clone(),
            resolve: config.resolve.clone(),
            azure_environment: config.azure_environment.clone(),
            observer,
            clients: Mutex::default(),
        }
    }

    /// The connection an enrollment in `namespace` refers to, read from the watch caches when
    /// they hold it (a connection the caches do not hold yet is read from the API server).
    pub async fn for_enrollment(
        &self,
        client: &Client,
        caches: &Caches,
        service_ref: &ServiceRef,
        namespace: &str,
    ) -> Result<Connection, Error> {
        let known = Some(&*caches.secrets);
        match service_ref.kind.unwrap_or_default() {
            ServiceKind::ProvisioningService => {
                let service = match caches.provisioning_service(namespace, &service_ref.name) {
                    Some(service) => service,
                    None => Api::<ProvisioningService>::namespaced(client.clone(), namespace)
                        .get_opt(&service_ref.name)
                        .await
                        .map_err(|e| {
                            Error::kube(
                                format!("reading ProvisioningService {namespace}/{}", service_ref.name),
                                e,
                            )
                        })?
                        .map(Arc::new)
                        .ok_or_else(|| Error::ConnectionNotFound {
                            kind: "ProvisioningService",
                            name: format!("{namespace}/{}", service_ref.name),
                        })?,
                };
                self.provisioning_service(client, &service, known).await.map_err(|e| unusable(&*service, e))
            }
            ServiceKind::ClusterProvisioningService => {
                let service = match caches.cluster_provisioning_service(&service_ref.name) {
                    Some(service) => service,
                    None => Api::<ClusterProvisioningService>::all(client.clone())
                        .get_opt(&service_ref.name)
                        .await
                        .map_err(|e| {
                            Error::kube(format!("reading ClusterProvisioningService {}", service_ref.name), e)
                        })?
                        .map(Arc::new)
                        .ok_or_else(|| Error::ConnectionNotFound {
                            kind: "ClusterProvisioningService",
                            name: service_ref.name.clone(),
                        })?,
                };
                self.check_allowed(client, caches, &service, namespace).await?;
                self.cluster_provisioning_service(client, &service, known)
                    .await
                    .map_err(|e| unusable(&*service, e))
            }
        }
    }

    /// The connection of `service`. With `known` (the watched Secrets' versions), a client made
    /// earlier from Secrets still at those versions is used without reading them; without, every
    /// input is read anew.
    pub async fn provisioning_service(
        &self,
        client: &Client,
        service: &ProvisioningService,
        known: Option<&SecretVersions>,
    ) -> Result<Connection, Error> {
        let namespace = service.namespace().unwrap_or_default();
        let name = format!("ProvisioningService {namespace}/{}", service.name_any());
        let reference = service.object_ref(&());
        let inputs = Inputs {
            spec: &service.spec.connection,
            namespace: &namespace,
            object_version: fingerprint(service),
        };
        self.resolve(client, name, reference, inputs, known).await
    }

    /// The connection of cluster-wide `service`, as [`Self::provisioning_service`].
    pub async fn cluster_provisioning_service(
        &self,
        client: &Client,
        service: &ClusterProvisioningService,
        known: Option<&SecretVersions>,
    ) -> Result<Connection, Error> {
        let name = format!("ClusterProvisioningService {}", service.name_any());
        let reference = service.object_ref(&());
        let inputs = Inputs {
            spec: &service.spec.connection,
            namespace: &self.operator_namespace,
            object_version: fingerprint(service),
        };
        self.resolve(client, name, reference, inputs, known).await
    }

    /// A namespace may use a cluster connection only when `allowedNamespaces` selects it.
    async fn check_allowed(
        &self,
        client: &Client,
        caches: &Caches,
        service: &ClusterProvisioningService,
        namespace: &str,
    ) -> Result<(), Error> {
        let refused =
            || Error::ConnectionNotAllowed { name: service.name_any(), namespace: namespace.to_owned() };
        let Some(selector) = service.spec.allowed_namespaces.clone() else { return Err(refused()) };
        let labels: BTreeMap<String, String> = match caches.namespace(namespace) {
            Some(cached) => cached.labels().clone(),
            None => Api::<Namespace>::all(client.clone())
                .get(namespace)
                .await
                .map_err(|e| Error::kube(format!("reading Namespace {namespace}"), e))?
                .labels()
                .clone(),
        };
        let selector = kube::core::Selector::try_from(selector).map_err(|e| {
            Error::InvalidSpec(format!(
                "allowedNamespaces of ClusterProvisioningService {}: {e}",
                service.name_any()
            ))
        })?;
        if kube::core::SelectorExt::matches(&selector, &labels) { Ok(()) } else { Err(refused()) }
    }

    /// The cached connection `name` when the watch caches show none of its inputs changed since
    /// it was made.
    fn unchanged(&self, name: &str, inputs: &Inputs<'_>, known: &SecretVersions) -> Option<Connection> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let cached = clients.get(name)?;
        let unchanged = cached.object_version == inputs.object_version
            && !cached.reads_config_map
            && cached.secrets.iter().all(|(secret, version)| {
                known.version(inputs.namespace, secret).as_deref() == Some(version.as_str())
            });
        unchanged.then(|| cached.connection.clone())
    }

    async fn resolve(
        &self,
        client: &Client,
        name: String,
        reference: ObjectReference,
        inputs: Inputs<'_>,
        known: Option<&SecretVersions>,
    ) -> Result<Connection, Error> {
        if let Some(connection) = known.and_then(|known| self.unchanged(&name, &inputs, known)) {
            return Ok(connection);
        }
        let reader = Reader::new(client, inputs.namespace);
        // The Secrets read, with their versions: when none changed, the cached client is right.
        let mut secrets = Vec::new();
        let credentials = self.credentials(&reader, &name, inputs.spec, &mut secrets).await?;
        let ca_bundle = self.ca_bundle(&reader, inputs.spec, &mut secrets).await?;
        let fingerprint = [Some(inputs.object_version.as_str()), credentials.version.as_deref()]
            .into_iter()
            .flatten()
            .chain([ca_bundle.as_deref().unwrap_or_default()])
            .collect::<Vec<_>>()
            .join("/");
        if let Some(cached) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&name)
            && cached.fingerprint == fingerprint
        {
            cached.secrets = secrets;
            return Ok(cached.connection.clone());
        }
        let connection = self.connect(name.clone(), reference, inputs.spec, credentials, ca_bundle)?;
        let cached = Cached {
            object_version: inputs.object_version,
            secrets,
            reads_config_map: inputs
                .spec
                .ca_bundle
                .as_ref()
                .is_some_and(|bundle| bundle.secret_ref.is_none()),
            fingerprint,
            connection: connection.clone(),
        };
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(name, cached);
        Ok(connection)
    }

    /// How the connection `name` authenticates, from its connection string Secret (recorded in
    /// `secrets` with its version) or the workload identity.
    async fn credentials(
        &self,
        reader: &Reader<'_>,
        name: &str,
        spec: &ConnectionSpec,
        secrets: &mut Vec<(String, String)>,
    ) -> Result<Credentials, Error> {
        let namespace = reader.namespace;
        let invalid = |problem: String| Error::InvalidCredentials { connection: name.to_owned(), problem };
        match (&spec.credentials.connection_string_secret_ref, &spec.credentials.workload_identity) {
            (Some(reference), _) => {
                let secret = reader.secret(&reference.name).await?.ok_or_else(|| Error::SecretNotFound {
                    namespace: namespace.into(),
                    name: reference.name.clone(),
                })?;
                let version = secret.resource_version().unwrap_or_default();
                secrets.push((reference.name.clone(), version.clone()));
                let text = reader.text(&secret, &reference.name, &reference.key)?;
                let parsed: ConnectionString = text.expose().parse().map_err(|e| {
                    invalid(format!("key {} of Secret {namespace}/{}: {e}", reference.key, reference.name))
                })?;
                Ok(Credentials {
                    host: spec.host.clone().unwrap_or_else(|| parsed.host_name.clone()),
                    source: format!(
                        "the connection string in key {} of Secret {namespace}/{}",
                        reference.key, reference.name
                    ),
                    authenticator: Authenticator::shared_access(parsed),
                    version: Some(version),
                })
            }
            (None, Some(identity)) => {
                let config = WorkloadIdentityConfig::from_lookup(
                    identity.client_id.as_deref(),
                    identity.tenant_id.as_deref(),
                    |name| self.azure_environment.get(name).cloned(),
                )
                .map_err(|e| invalid(e.to_string()))?;
                let host = spec
                    .host
                    .clone()
                    .ok_or_else(|| invalid("spec.host is required with workloadIdentity".into()))?;
                let source = format!("workload identity of application {}", config.client_id);
                Ok(Credentials {
                    host,
                    source,
                    authenticator: Authenticator::workload_identity(config),
                    version: None,
                })
            }
            (None, None) => Err(invalid("spec.credentials names no credentials".into())),
        }
    }

    /// The CA certificates the connection trusts besides the system roots: its `caBundle` (a
    /// Secret read is recorded in `secrets`) and the operator's extra certificates.
    async fn ca_bundle(
        &self,
        reader: &Reader<'_>,
        spec: &ConnectionSpec,
        secrets: &mut Vec<(String, String)>,
    ) -> Result<Option<String>, Error> {
        let own = match spec.ca_bundle.as_ref().map(|bundle| (&bundle.secret_ref, &bundle.config_map_ref)) {
            Some((Some(reference), _)) => {
                let secret = reader.secret(&reference.name).await?.ok_or_else(|| Error::SecretNotFound {
                    namespace: reader.namespace.into(),
                    name: reference.name.clone(),
                })?;
                secrets.push((reference.name.clone(), secret.resource_version().unwrap_or_default()));
                Some(reader.text(&secret, &reference.name, &reference.key)?.expose().to_owned())
            }
            Some((None, Some(config_map))) => {
                Some(reader.config_map_text(&config_map.name, &config_map.key).await?)
            }
            Some((None, None)) | None => None,
        };
        Ok(match (own, &self.extra_ca_certificates) {
            (Some(own), Some(extra)) => Some(format!("{own}\n{extra}")),
            (own, extra) => own.or_else(|| extra.clone()),
        })
    }

    /// A new client for the connection `name`, paced by its host's shared rate limiter.
    fn connect(
        &self,
        name: String,
        reference: ObjectReference,
        spec: &ConnectionSpec,
        credentials: Credentials,
        ca_bundle: Option<String>,
    ) -> Result<Connection, Error> {
        let Credentials { host, source, authenticator, .. } = credentials;
        let rate = spec
            .rate_limit
            .as_ref()
            .map_or(DEFAULT_OPERATIONS_PER_MINUTE, |r| r.operations_per_minute.max(1) as u32);
        let kind = authenticator.kind();
        self.observer.rate_limit(&host, rate);
        let client = dps::Client::new(ClientConfig {
            host: host.clone(),
            authenticator: Arc::new(authenticator),
            rate_limiter: self.rate_limiters.for_host(&host, rate),
            extra_root_certificates: ca_bundle,
            timeout: self.timeout,
            resolve: self.resolve.clone(),
            observer: Some(self.observer.clone()),
        })
        .map_err(|e| Error::InvalidCredentials { connection: name.clone(), problem: e.to_string() })?;
        let client = Arc::new(client);
        Ok(Connection {
            name,
            reference,
            host,
            bulk: Arc::new(dps::BulkCalls::new(client.clone(), dps::GATHER_WINDOW)),
            client,
            defaults: spec.enrollment_defaults.clone(),
            credentials: kind,
            credentials_source: source,
        })
    }
}

/// How a connection authenticates, and to which host.
struct Credentials {
    host: String,
    /// Where the credentials come from, for messages.
    source: String,
    authenticator: Authenticator,
    /// The resourceVersion of the connection string's Secret.
    version: Option<String>,
}

fn fingerprint<K: Resource>(object: &K) -> String {
    format!(
        "{}@{}",
        object.meta().uid.clone().unwrap_or_default(),
        object.meta().generation.unwrap_or_default()
    )
}

/// Checks a connection with the cheapest authenticated call: the first page (of one) of the
/// enrollment group query.
pub async fn probe(connection: &Connection) -> Result<(), Error> {
    let mut groups = Box::pin(connection.client.query::<EnrollmentGroup>("SELECT *", Some(1)));
    match groups.next().await {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(source)) => Err(match source.retry_class() {
            dps::RetryClass::Credentials => Error::InvalidCredentials {
                connection: connection.name.clone(),
                problem: format!("DPS refused {}: {source}", connection.credentials_source),
            },
            _ => connection.dps_error(source),
        }),
    }
}
