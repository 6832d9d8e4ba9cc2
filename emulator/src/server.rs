//! The emulator's HTTP(S) server: the DPS service API, a Microsoft Entra ID token endpoint and an
//! admin endpoint, with throttling, fault injection and optional persistence.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{self, get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use super::{
    auth::{AccessPolicy, verify_sas},
    device::{self, Credentials, DEFAULT_ID_SCOPE, DEVICE_API_VERSIONS, DeviceOperation, Operations},
    error::ApiError,
    kind::Kind,
    store::{self, BulkMode, Quotas, Registration, Store},
    swagger,
    throttle::Quota,
    tls::{CertificateAuthority, ServerCertificate},
};
use crate::{dps_time, random_bytes};

/// The service api-versions real clients send.
pub const SERVICE_API_VERSIONS: &[&str] = &["2018-04-01", "2019-03-31", "2021-10-01", "2025-07-01-preview"];

/// DPS's default page size is not documented; this is the emulator's.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
const MAX_BULK_ITEMS: usize = 10;
/// How many request bodies [`RunningEmulator::requests`] keeps.
pub const REQUESTS_KEPT: usize = 256;
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The scope a token for the DPS service API is asked for.
const DPS_SCOPE: &str = "https://azure-devices-provisioning.net/.default";

/// Faults to inject into service API calls (never into admin or token calls).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Fraction of calls (0 to 1) answered with each HTTP status, e.g. `{"503": 0.5}`.
    #[serde(default)]
    pub error_rates: BTreeMap<u16, f64>,
    /// Delay added to every call.
    #[serde(default)]
    pub latency_ms: u64,
    /// Delay after a call was carried out, before its answer: a slow answer to a write that has
    /// already happened.
    #[serde(default)]
    pub answer_delay_ms: u64,
    /// Fraction of calls whose connection is closed without an answer.
    #[serde(default)]
    pub drop_rate: f64,
    /// Fraction of calls carried out whose answer is then lost (the connection closes), as when
    /// a client gives up on a slow answer: the client cannot tell whether its write happened.
    #[serde(default)]
    pub lost_answer_rate: f64,
    /// The operations (swagger operation ids, e.g. `IndividualEnrollment_CreateOrUpdate`) the
    /// faults hit; every service API call when empty.
    #[serde(default)]
    pub operations: BTreeSet<String>,
}

impl Faults {
    fn hit(&self, method: &Method, path: &str) -> bool {
        self.operations.is_empty()
            || route(method, path).is_ok_and(|operation| self.operations.contains(&operation.operation_id()))
    }
}

/// How the emulator runs.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    /// Serve HTTPS with a certificate from a CA the emulator generates (else plain HTTP).
    pub tls: bool,
    /// The host name clients use; when not set, `localhost:<port>` for a loopback or unspecified
    /// listen address, else `<address>:<port>`.
    pub host_name: Option<String>,
    pub policies: Vec<AccessPolicy>,
    pub quotas: Quotas,
    /// IoT hubs linked to this "DPS"; enrollments may only name these. Any hub when not set.
    pub linked_hubs: Option<Vec<String>>,
    /// Service API calls allowed per minute; 429 with Retry-After beyond that. Unlimited if unset.
    pub operations_per_minute: Option<u32>,
    pub faults: Faults,
    /// Keep the state in this file, so it survives a restart.
    pub state_file: Option<PathBuf>,
    /// Entra ID application ids that may get tokens; any when not set.
    pub entra_client_ids: Option<Vec<String>>,
    /// Where the HTTPS certificate comes from (with `tls`).
    pub certificate: ServerCertificate,
    /// The ID scope devices register under (the first segment of the device API's paths).
    pub id_scope: String,
    /// PEM certificates trusted for custom allocation webhooks besides the system's roots.
    pub webhook_ca_certificates: Option<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            host_name: None,
            policies: vec![AccessPolicy {
                name: "provisioningserviceowner".into(),
                primary_key: super::random_key().to_vec(),
                secondary_key: super::random_key().to_vec(),
            }],
            quotas: Quotas::default(),
            linked_hubs: None,
            operations_per_minute: None,
            faults: Faults::default(),
            state_file: None,
            entra_client_ids: None,
            certificate: ServerCertificate::Generated,
            id_scope: DEFAULT_ID_SCOPE.to_owned(),
            webhook_ca_certificates: None,
        }
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the state file {path}")]
    State {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("could not generate the emulator's TLS certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("could not set up TLS")]
    Tls(#[from] rustls::Error),
    #[error("could not serve the given certificate: {0}")]
    GivenCertificate(String),
}

/// What the handlers share.
struct Shared {
    host_name: String,
    id_scope: String,
    policies: Vec<AccessPolicy>,
    quotas: Quotas,
    linked_hubs: Option<Vec<String>>,
    state_file: Option<PathBuf>,
    entra_client_ids: Option<Vec<String>>,
    store: Mutex<Store>,
    throttle: Mutex<Option<Arc<Quota>>>,
    faults: Mutex<Faults>,
    calls: Mutex<BTreeMap<String, u64>>,
    /// Service API answers by HTTP status, since the calls were last reset.
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// The latest request bodies, with their operation ids, oldest first.
    requests: Mutex<VecDeque<(String, Bytes)>>,
    /// Bearer tokens issued by the token endpoint, with their expiry (Unix seconds).
    tokens: Mutex<HashMap<String, u64>>,
    /// Device registrations, for devices to look up.
    operations: Mutex<Operations>,
    /// The client of custom allocation webhooks.
    webhooks: reqwest::Client,
}

impl Shared {
    fn new(config: EmulatorConfig, host_name: String, store: Store) -> Self {
        crate::install_crypto_provider();
        let mut webhooks = reqwest::Client::builder().https_only(true).timeout(WEBHOOK_TIMEOUT);
        if let Some(pem) = &config.webhook_ca_certificates {
            match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
                Ok(certificates) => webhooks = webhooks.tls_certs_merge(certificates),
                Err(error) => tracing::error!(%error, "the webhook CA certificates cannot be read"),
            }
        }
        Self {
            webhooks: webhooks.build().unwrap_or_default(),
            host_name,
            id_scope: config.id_scope,
            policies: config.policies,
            quotas: config.quotas,
            linked_hubs: config.linked_hubs,
            state_file: config.state_file,
            entra_client_ids: config.entra_client_ids,
            store: Mutex::new(store),
            throttle: Mutex::new(config.operations_per_minute.map(|n| Arc::new(Quota::new(n)))),
            faults: Mutex::new(config.faults),
            calls: Mutex::new(BTreeMap::new()),
            statuses: Mutex::new(BTreeMap::new()),
            requests: Mutex::new(VecDeque::new()),
            tokens: Mutex::new(HashMap::new()),
            operations: Mutex::default(),
        }
    }

    fn reset_calls(&self) {
        lock(&self.calls).clear();
        lock(&self.statuses).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A fair coin that comes up heads with probability `rate`.
fn chance(rate: f64) -> bool {
    rate > 0.0 && (u32::from_le_bytes(random_bytes::<4>()) as f64) < rate * (u32::MAX as f64)
}

/// The emulator's HTTP service without a listener, its state in memory, answering as the DPS at
/// `host_name` (the audience SAS tokens must name): to embed it, or to drive it without sockets
/// as the fuzz targets do.
pub fn service(config: EmulatorConfig, host_name: &str) -> Router {
    router(Arc::new(Shared::new(config, host_name.to_owned(), Store::default())))
}

/// A running emulator. Dropping it stops it.
pub struct RunningEmulator {
    address: SocketAddr,
    host_name: String,
    tls: bool,
    ca_certificate: Option<String>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl RunningEmulator {
    /// Starts the emulator on `config.listen` (port 0 picks a free port).
    pub async fn start(config: EmulatorConfig) -> Result<Self, StartError> {
        crate::install_crypto_provider();
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { address: config.listen, source })?;
        let address =
            listener.local_addr().map_err(|source| StartError::Listen { address: config.listen, source })?;
        // Clients reach a loopback emulator as localhost, one on another address by that address.
        let host_name = config.host_name.clone().unwrap_or_else(|| match address.ip() {
            ip if ip.is_loopback() || ip.is_unspecified() => format!("localhost:{}", address.port()),
            _ => address.to_string(),
        });

        let store = match &config.state_file {
            Some(path) if path.exists() => {
                let state_error = |source: Box<dyn std::error::Error + Send + Sync>| StartError::State {
                    path: path.clone(),
                    source,
                };
                let bytes = std::fs::read(path).map_err(|e| state_error(e.into()))?;
                serde_json::from_slice(&bytes).map_err(|e| state_error(e.into()))?
            }
            _ => Store::default(),
        };
        let (tls_wanted, certificate) = (config.tls, config.certificate.clone());
        let shared = Arc::new(Shared::new(config, host_name.clone(), store));

        let server_name = host_name.rsplit_once(':').map_or(host_name.as_str(), |(name, _)| name);
        let mut names = vec![server_name];
        names.extend(["localhost", "127.0.0.1"].into_iter().filter(|name| *name != server_name));
        let signed_by = |ca: Arc<CertificateAuthority>| -> Result<_, StartError> {
            Ok((Some(ca.acceptor(&names)?), Some(ca.certificate_pem.clone())))
        };
        let (tls, ca_certificate) = match certificate {
            _ if !tls_wanted => (None, None),
            ServerCertificate::Generated => {
                signed_by(Arc::new(CertificateAuthority::new("dps-emulator CA")?))?
            }
            ServerCertificate::SignedBy(ca) => signed_by(ca)?,
            ServerCertificate::Given(given) => (Some(given.acceptor()?), None),
        };

        let (shutdown, stopped) = watch::channel(false);
        let app = router(shared.clone());
        let server = tokio::spawn(serve(listener, tls, app, shared.clone(), stopped));
        Ok(Self {
            address,
            host_name,
            tls: tls_wanted,
            ca_certificate,
            shared,
            shutdown,
            server: Some(server),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The host name (with port) clients put in URLs and SAS tokens.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// `https://host:port` (or `http://` without TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host_name)
    }

    /// The ID scope devices register under.
    pub fn id_scope(&self) -> &str {
        &self.shared.id_scope
    }

    /// The PEM certificate of the CA that signed the emulator's serving certificate, unless the
    /// certificate was given.
    pub fn ca_certificate(&self) -> Option<&str> {
        self.ca_certificate.as_deref()
    }

    /// A connection string for the first shared access policy, with its primary key.
    pub fn connection_string(&self) -> String {
        let policy = &self.shared.policies[0];
        format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name,
            policy.name,
            BASE64.encode(&policy.primary_key)
        )
    }

    /// Calls per DPS operation id since the start or the last reset.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.calls).clone()
    }

    /// The write calls on enrollments of `kind` (`IndividualEnrollment` or `EnrollmentGroup`):
    /// PUTs and bulk operations.
    pub fn writes(&self, kind: &str) -> u64 {
        let calls = lock(&self.shared.calls);
        ["CreateOrUpdate", "RunBulkOperation"]
            .iter()
            .filter_map(|operation| calls.get(&format!("{kind}_{operation}")))
            .sum()
    }

    /// The bodies of the latest service API requests (at most [`REQUESTS_KEPT`]), oldest first,
    /// each with its operation id: what clients really send.
    pub fn requests(&self) -> Vec<(String, Bytes)> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// How many service API calls were answered with `status` since the calls were last reset.
    pub fn calls_answered(&self, status: u16) -> u64 {
        lock(&self.shared.statuses).get(&status).copied().unwrap_or_default()
    }

    pub fn reset_calls(&self) {
        self.shared.reset_calls();
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    pub fn set_operations_per_minute(&self, limit: Option<u32>) {
        *lock(&self.shared.throttle) = limit.map(|n| Arc::new(Quota::new(n)));
    }

    /// Adds a device registration record (the swagger's `DeviceRegistrationState`), as if the
    /// device had provisioned.
    pub fn add_registration(&self, state: Value, enrollment_group_id: Option<String>) {
        add_registration(&self.shared, state, enrollment_group_id);
    }

    /// Verifies a CA certificate (PEM) on this "DPS" under `name`, as a proof of possession
    /// does on DPS's certificates page: groups whose `caReferences` name it trust devices
    /// chaining up to it.
    pub fn verify_certificate(&self, name: &str, pem: &str) -> Result<(), ApiError> {
        verify_certificate(&self.shared, name, pem)
    }

    /// Stops accepting connections, closes the open ones and waits until the server is gone.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The error that makes hyper close a connection without answering: a dropped-connection fault.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// The certificate chain a TLS client presented (DER, leaf first), for the device API.
#[derive(Clone, Debug)]
pub struct ClientChain(pub Arc<Vec<Vec<u8>>>);

/// One connection's service: the app, with the faults applied around it and the client's
/// certificate chain, if it presented one, on every request.
fn connection_service(
    app: Router,
    shared: Arc<Shared>,
    chain: Option<ClientChain>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = DropConnection,
    Future: Send + 'static,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let (app, shared) = (app.clone(), shared.clone());
        if let Some(chain) = &chain {
            request.extensions_mut().insert(chain.clone());
        }
        async move {
            let path = request.uri().path();
            let faults = lock(&shared.faults).clone();
            let is_api = !path.starts_with("/admin") && !path.contains("/oauth2/");
            let faults =
                if is_api && faults.hit(request.method(), path) { faults } else { Faults::default() };
            if chance(faults.drop_rate) {
                return Err(DropConnection);
            }
            let answer =
                tower::ServiceExt::oneshot(app, request).await.unwrap_or_else(|never| match never {});
            if faults.answer_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(faults.answer_delay_ms)).await;
            }
            if chance(faults.lost_answer_rate) {
                return Err(DropConnection);
            }
            Ok(answer)
        }
    })
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.changed() => break,
        };
        // Answers go out at once: with Nagle's algorithm a query page (two TCP segments) waited
        // for the client's delayed ACK, 40 ms a page.
        let _ = stream.set_nodelay(true);
        let (tls, app, shared) = (tls.clone(), app.clone(), shared.clone());
        connections.spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let chain = stream.get_ref().1.peer_certificates().map(|chain| {
                            ClientChain(Arc::new(chain.iter().map(|c| c.as_ref().to_vec()).collect()))
                        });
                        builder
                            .serve_connection(TokioIo::new(stream), connection_service(app, shared, chain))
                            .await
                    }
                    Err(_) => return,
                },
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), connection_service(app, shared, None))
                        .await
                }
            };
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/admin/calls", get(admin_calls).delete(admin_reset_calls))
        .route("/admin/faults", get(admin_faults).put(admin_set_faults))
        .route("/admin/throttling", get(admin_throttling).put(admin_set_throttling))
        .route("/admin/registrations", post(admin_add_registration))
        .route("/admin/certificates/{name}", routing::put(admin_verify_certificate))
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        // Not DPS's: for liveness and readiness probes.
        .route("/healthz", get(|| async { "ok" }))
        .fallback(service_api)
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// The DPS service API

/// A service API operation, found from the method and path.
#[derive(Debug, PartialEq, Eq)]
enum Operation {
    Get(Kind, String),
    Put(Kind, String),
    Delete(Kind, String),
    Attestation(Kind, String),
    Bulk(Kind),
    Query(Kind),
    GetRegistration(String),
    DeleteRegistration(String),
    QueryRegistrations(String),
}

/// Where a request goes: the service API or the device API.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Service(Operation),
    Device(DeviceOperation),
}

impl Route {
    fn operation_id(&self) -> String {
        match self {
            Self::Service(operation) => operation.operation_id(),
            Self::Device(operation) => operation.operation_id().into(),
        }
    }
}

impl Operation {
    /// The operation id in the swagger, as the admin endpoint counts calls.
    fn operation_id(&self) -> String {
        match self {
            Self::Get(c, _) => format!("{}_Get", c.definition()),
            Self::Put(c, _) => format!("{}_CreateOrUpdate", c.definition()),
            Self::Delete(c, _) => format!("{}_Delete", c.definition()),
            Self::Attestation(c, _) => format!("{}_GetAttestationMechanism", c.definition()),
            Self::Bulk(c) => format!("{}_RunBulkOperation", c.definition()),
            Self::Query(c) => format!("{}_Query", c.definition()),
            Self::GetRegistration(_) => "DeviceRegistrationState_Get".into(),
            Self::DeleteRegistration(_) => "DeviceRegistrationState_Delete".into(),
            Self::QueryRegistrations(_) => "DeviceRegistrationState_Query".into(),
        }
    }
}

/// Routes as DPS does: path segments compared case-insensitively, a trailing `/` ignored, ids
/// percent-decoded.
fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let kind = match lower.first() {
        Some(&"enrollments") => Some(Kind::Individual),
        Some(&"enrollmentgroups") => Some(Kind::Group),
        _ => None,
    };
    if kind.is_none()
        && lower.first() != Some(&"registrations")
        && let Some(operation) = DeviceOperation::route(method, &segments, &lower)
    {
        return Ok(Route::Device(operation));
    }
    let not_allowed = || ApiError::new(405, 405001, format!("{method} is not allowed on {path}."));
    let operation = match (kind, lower.as_slice()) {
        (Some(c), [_]) if *method == Method::POST => Operation::Bulk(c),
        (Some(c), [_, "query"]) if *method == Method::POST => Operation::Query(c),
        (Some(c), [_, _]) => match *method {
            Method::GET => Operation::Get(c, segments[1].clone()),
            Method::PUT => Operation::Put(c, segments[1].clone()),
            Method::DELETE => Operation::Delete(c, segments[1].clone()),
            _ => return Err(not_allowed()),
        },
        (Some(c), [_, _, "attestationmechanism"]) if *method == Method::POST => {
            Operation::Attestation(c, segments[1].clone())
        }
        (None, ["registrations", _]) => match *method {
            Method::GET => Operation::GetRegistration(segments[1].clone()),
            Method::DELETE => Operation::DeleteRegistration(segments[1].clone()),
            _ => return Err(not_allowed()),
        },
        (None, ["registrations", _, "query"]) if *method == Method::POST => {
            Operation::QueryRegistrations(segments[1].clone())
        }
        (Some(_), [_] | [_, _, "attestationmechanism"]) | (None, ["registrations", _, "query"]) => {
            return Err(not_allowed());
        }
        _ => return Err(ApiError::new(404, 404001, format!("There is no resource at {path}."))),
    };
    Ok(Route::Service(operation))
}

async fn service_api(
    State(shared): State<Arc<Shared>>,
    chain: Option<axum::Extension<ClientChain>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let chain = chain.as_ref().map(|axum::Extension(ClientChain(chain))| chain.as_slice());
    let response = match handle(&shared, &method, &uri, &headers, &body, chain).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    *lock(&shared.statuses).entry(response.status().as_u16()).or_default() += 1;
    response
}

/// Counts the call and keeps its body, for the tests that look at what clients sent.
fn record(shared: &Shared, operation: &Route, body: &Bytes) {
    *lock(&shared.calls).entry(operation.operation_id()).or_default() += 1;
    if !body.is_empty() {
        let mut requests = lock(&shared.requests);
        if requests.len() == REQUESTS_KEPT {
            requests.pop_front();
        }
        requests.push_back((operation.operation_id(), body.clone()));
    }
}

/// The latency and errors the tests asked for, on the calls they aimed them at.
async fn inject_faults(shared: &Shared, method: &Method, uri: &Uri) -> Result<(), ApiError> {
    let faults = lock(&shared.faults).clone();
    let faults = if faults.hit(method, uri.path()) { faults } else { Faults::default() };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if let Some((status, _)) = faults.error_rates.iter().find(|(_, rate)| chance(**rate)) {
        let error = ApiError::new(*status, i32::from(*status) * 1000 + 999, "Injected fault.");
        return Err(if *status == 429 { ApiError::throttled(1) } else { error });
    }
    Ok(())
}

async fn handle(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    chain: Option<&[Vec<u8>]>,
) -> Result<Response, ApiError> {
    let operation = route(method, uri.path())?;
    record(shared, &operation, body);
    inject_faults(shared, method, uri).await?;
    let operation = match operation {
        Route::Device(operation) => return device_api(shared, operation, uri, headers, body, chain).await,
        Route::Service(operation) => operation,
    };
    service_call(shared, operation, uri, headers, body)
}

/// A service API call: versioned, authenticated, within the quota, with a JSON body.
fn service_call(
    shared: &Shared,
    operation: Operation,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    check_api_version(uri, SERVICE_API_VERSIONS)?;
    authenticate(shared, uri, headers)?;
    take_quota(shared)?;
    if !body.is_empty()
        && let Some(content_type) = headers.get(header::CONTENT_TYPE)
        && !content_type.to_str().unwrap_or_default().to_ascii_lowercase().contains("json")
    {
        return Err(ApiError::new(415, 415001, "The request body must be application/json."));
    }

    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    match operation {
        Operation::Get(kind, id) => read(shared, |s| s.get(kind, &id)),
        Operation::Put(kind, id) => put(shared, kind, &id, body, if_match),
        Operation::Delete(kind, id) => write(shared, |s| s.delete(kind, &id, if_match)),
        Operation::Attestation(kind, id) => read(shared, |s| s.attestation(kind, &id)),
        Operation::Bulk(kind) => bulk(shared, kind, body),
        Operation::Query(kind) => {
            check_query(&query_text(body)?)?;
            let (page_size, continuation) = paging(headers)?;
            let store = lock(&shared.store);
            let (items, next) = store.query(kind, page_size, continuation.as_deref())?;
            let item_type = match kind {
                Kind::Individual => "Enrollment",
                Kind::Group => "EnrollmentGroup",
            };
            Ok(query_response(Value::Array(items), next, item_type, page_size))
        }
        Operation::GetRegistration(id) => read(shared, |s| {
            s.registrations
                .get(&id.to_lowercase())
                .map(|r| r.state.clone())
                .ok_or_else(|| ApiError::not_found(None, &id))
        }),
        Operation::DeleteRegistration(id) => write(shared, |s| {
            let key = id.to_lowercase();
            let registration = s.registrations.get(&key).ok_or_else(|| ApiError::not_found(None, &id))?;
            if let Some(tag) = if_match.map(str::trim)
                && tag != "*"
                && registration.state["etag"].as_str().map(|e| e.trim_matches('"'))
                    != Some(tag.trim_matches('"'))
            {
                return Err(ApiError::precondition_failed("registration", &id));
            }
            s.registrations.remove(&key);
            Ok(())
        }),
        Operation::QueryRegistrations(group_id) => {
            // The swagger declares no body, the SDKs send a query specification: accept both.
            if !body.is_empty() {
                check_query(&query_text(body)?)?;
            }
            let (page_size, continuation) = paging(headers)?;
            let store = lock(&shared.store);
            let members = store.registrations.iter().filter(|(_, r)| {
                r.enrollment_group_id.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(&group_id))
            });
            let (items, next) =
                store::page(members, |r| r.state.clone(), page_size, continuation.as_deref())?;
            Ok(query_response(Value::Array(items), next, "DeviceRegistration", page_size))
        }
    }
}

/// One operation of the emulator's rate: service API calls and device registrations count,
/// as DPS bills both.
fn take_quota(shared: &Shared) -> Result<(), ApiError> {
    let throttle = lock(&shared.throttle).clone();
    match throttle.map(|throttle| throttle.take()) {
        Some(Err(wait)) => Err(ApiError::throttled(wait.as_secs_f64().ceil().max(1.0) as u64)),
        _ => Ok(()),
    }
}

fn check_api_version(uri: &Uri, supported: &[&str]) -> Result<(), ApiError> {
    let version = uri.query().unwrap_or_default().split('&').find_map(|pair| {
        pair.split_once('=').filter(|(name, _)| name.eq_ignore_ascii_case("api-version")).map(|(_, v)| v)
    });
    match version {
        None => Err(ApiError::bad_request(400001, "The api-version query parameter is required.")),
        Some(version) if supported.contains(&version) => Ok(()),
        Some(version) => Err(ApiError::bad_request(
            400001,
            format!("The api-version '{version}' is not supported; use one of {}.", supported.join(", ")),
        )),
    }
}

fn authenticate(shared: &Shared, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("The request has no Authorization header."))?;
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        let expiry = lock(&shared.tokens).get(token.trim()).copied();
        return match expiry {
            Some(expiry) if expiry > unix_now() => Ok(()),
            Some(_) => Err(ApiError::unauthorized("The bearer token has expired.")),
            None => {
                Err(ApiError::unauthorized("The bearer token was not issued by this service's authority."))
            }
        };
    }
    let host =
        headers.get(header::HOST).and_then(|v| v.to_str().ok()).or(uri.authority().map(|a| a.as_str()));
    let host = host.unwrap_or(&shared.host_name);
    verify_sas(authorization, host, uri.path(), &shared.policies, unix_now()).map_err(ApiError::unauthorized)
}

// ---------------------------------------------------------------------------------------------
// The device API

/// How long a device waits before it asks how its registration went.
const REGISTRATION_RETRY_AFTER_SECONDS: u64 = 1;

async fn device_api(
    shared: &Shared,
    operation: DeviceOperation,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    chain: Option<&[Vec<u8>]>,
) -> Result<Response, ApiError> {
    check_api_version(uri, DEVICE_API_VERSIONS)?;
    if !operation.id_scope().eq_ignore_ascii_case(&shared.id_scope) {
        return Err(ApiError::new(
            404,
            404204,
            format!(
                "There is no DPS with ID scope '{}' here; its ID scope is '{}'.",
                operation.id_scope(),
                shared.id_scope
            ),
        ));
    }
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let registration_id = operation.registration_id().to_owned();
    let credentials = match (authorization, chain) {
        (Some(header), _) => Credentials::Sas(header),
        (None, Some(chain)) if !chain.is_empty() => Credentials::Certificate(chain),
        (None, _) => Credentials::None,
    };
    let enrolled = |store: &Store| {
        device::enrollment_of(store, &shared.id_scope, &registration_id, &credentials, unix_now())
    };
    match operation {
        DeviceOperation::Register { .. } => {
            take_quota(shared)?;
            let request = registration_request(body, &registration_id)?;
            let (enrolled, current) = {
                let store = lock(&shared.store);
                let current =
                    store.registrations.get(&registration_id.to_lowercase()).map(|r| r.state.clone());
                (enrolled(&store)?, current)
            };
            let assignment = assign(shared, &enrolled, &registration_id, current.as_ref(), &request).await;
            let mut store = lock(&shared.store);
            let state =
                device::register(&mut store, &enrolled, &registration_id, assignment, jiff::Timestamp::now());
            save(shared, &store);
            drop(store);
            let operation_id = lock(&shared.operations).start(&registration_id, state);
            let mut response =
                (StatusCode::ACCEPTED, Json(json!({"operationId": operation_id, "status": "assigning"})))
                    .into_response();
            response.headers_mut().insert("retry-after", REGISTRATION_RETRY_AFTER_SECONDS.into());
            Ok(response)
        }
        DeviceOperation::OperationStatus { operation_id, .. } => {
            enrolled(&lock(&shared.store))?;
            let state =
                lock(&shared.operations).get(&registration_id, &operation_id).cloned().ok_or_else(|| {
                    ApiError::new(
                        404,
                        404205,
                        format!(
                            "There is no registration operation '{operation_id}' of '{registration_id}'."
                        ),
                    )
                })?;
            let status = state["status"].clone();
            Ok(Json(json!({"operationId": operation_id, "status": status, "registrationState": state}))
                .into_response())
        }
        DeviceOperation::Status { .. } => {
            let store = lock(&shared.store);
            let enrolled = enrolled(&store)?;
            let record = store
                .registrations
                .get(&registration_id.to_lowercase())
                .ok_or_else(|| ApiError::not_found(None, &registration_id))?;
            Ok(Json(device::device_view(record.state.clone(), &enrolled)).into_response())
        }
    }
}

/// The body of a registration: the swagger's DeviceRegistration, with the id (if any) of the
/// path, and a TPM's keys or a payload this emulator does not use.
fn registration_request(body: &Bytes, registration_id: &str) -> Result<Value, ApiError> {
    let request = if body.is_empty() { json!({}) } else { parse_json(body)? };
    if !request.is_object() || !(request["registrationId"].is_string() || request["registrationId"].is_null())
    {
        return Err(ApiError::bad_request(
            400004,
            "The body must be a DeviceRegistration: {\"registrationId\": \"...\"}.",
        ));
    }
    if let Some(id) = request["registrationId"].as_str()
        && !id.eq_ignore_ascii_case(registration_id)
    {
        return Err(ApiError::bad_request(
            400004,
            format!("The registrationId '{id}' in the body does not match '{registration_id}' in the path."),
        ));
    }
    Ok(request)
}

/// The hub a registration is assigned to, by the enrollment's allocation policy: its custom
/// allocation webhook (sent the registration `current`ly held and the request's payload), or the
/// hubs it names or this DPS links.
async fn assign(
    shared: &Shared,
    enrolled: &device::Enrolled,
    registration_id: &str,
    current: Option<&Value>,
    request: &Value,
) -> Result<device::Assignment, String> {
    let hubs = device::hubs_of(&enrolled.item, shared.linked_hubs.as_deref().unwrap_or_default());
    let policy = enrolled.item.get("allocationPolicy").and_then(Value::as_str);
    if policy == Some("custom") {
        let call = device::webhook_request(enrolled, registration_id, current, &request["payload"], &hubs);
        let url = enrolled.item["customAllocationDefinition"]["webhookUrl"].as_str().unwrap_or_default();
        return custom_allocation(shared, url, &call)
            .await
            .and_then(|answer| device::webhook_assignment(&answer, &hubs));
    }
    device::allocate(policy, &hubs, registration_id).map(device::Assignment::from).ok_or_else(|| {
        "No IoT hub to assign: the enrollment names none and no hub is linked to this DPS (--linked-hub)."
            .to_owned()
    })
}

/// How long a custom allocation webhook may take to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls a custom allocation webhook at `url` with `request`; its answer, or why there is none
/// (the URL is not in the message: it holds the function's key).
async fn custom_allocation(shared: &Shared, url: &str, request: &Value) -> Result<Value, String> {
    let response =
        shared.webhooks.post(url).json(request).send().await.map_err(|e| {
            format!("The custom allocation webhook could not be reached ({}).", e.without_url())
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("The custom allocation webhook answered {status}."));
    }
    response.json().await.map_err(|_| "The custom allocation webhook's answer is not JSON.".to_owned())
}

fn check_query(query: &str) -> Result<(), ApiError> {
    let words: Vec<String> = query.split_whitespace().map(str::to_ascii_lowercase).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        // Microsoft's SDK samples query with "*" alone (azure-iot-sdk-node,
        // `provisioning/service/samples/query.js`).
        ["*"] | ["select", "*"] | ["select", "*", "from", _] => Ok(()),
        _ => Err(ApiError::bad_request(
            400011,
            format!("The query '{query}' is not supported: the emulator answers SELECT * queries."),
        )),
    }
}

fn paging(headers: &HeaderMap) -> Result<(usize, Option<String>), ApiError> {
    let header_text =
        |name| headers.get(name).and_then(|v: &header::HeaderValue| v.to_str().ok()).map(str::to_owned);
    let page_size = match header_text("x-ms-max-item-count") {
        None => DEFAULT_PAGE_SIZE,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(size) if size > 0 => size.min(MAX_PAGE_SIZE),
            _ => return Err(ApiError::bad_request(400010, "x-ms-max-item-count must be a positive number.")),
        },
    };
    Ok((page_size, header_text("x-ms-continuation")))
}

fn query_response(items: Value, next: Option<String>, item_type: &str, page_size: usize) -> Response {
    let mut response = Json(items).into_response();
    let headers = response.headers_mut();
    headers.insert("x-ms-item-type", item_type.parse().expect("a header value"));
    headers.insert("x-ms-max-item-count", page_size.into());
    if let Some(next) = next {
        headers.insert("x-ms-continuation", next.parse().expect("base64 is a header value"));
    }
    response
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(400008, "The request has no body."));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(400008, format!("The request body is not valid: {e}.")))
}

/// The query of a `QuerySpecification` body.
fn query_text(body: &Bytes) -> Result<String, ApiError> {
    let spec = swagger::read("QuerySpecification", parse_json(body)?)
        .map_err(|e| ApiError::bad_request(400008, format!("The query specification is not valid: {e}.")))?;
    spec["query"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(400008, "The query specification needs a query."))
}

/// A request body read as the swagger definition `name`.
fn read_body(name: &str, body: Value) -> Result<Value, ApiError> {
    swagger::read(name, body)
        .map_err(|e| ApiError::bad_request(400008, format!("The request body is not valid: {e}.")))
}

fn read<T: Serialize>(
    shared: &Shared,
    f: impl FnOnce(&Store) -> Result<T, ApiError>,
) -> Result<Response, ApiError> {
    let store = lock(&shared.store);
    Ok(Json(f(&store)?).into_response())
}

/// Runs a change and saves the state; deletes answer 204.
fn write(shared: &Shared, f: impl FnOnce(&mut Store) -> Result<(), ApiError>) -> Result<Response, ApiError> {
    let mut store = lock(&shared.store);
    f(&mut store)?;
    save(shared, &store);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn put(
    shared: &Shared,
    kind: Kind,
    id: &str,
    body: &Bytes,
    if_match: Option<&str>,
) -> Result<Response, ApiError> {
    let item = read_body(kind.definition(), parse_json(body)?)?;
    let mut store = lock(&shared.store);
    let stored = store.put(kind, id, item, if_match, &shared.quotas, shared.linked_hubs.as_deref())?;
    save(shared, &store);
    Ok(Json(stored).into_response())
}

fn bulk(shared: &Shared, kind: Kind, body: &Bytes) -> Result<Response, ApiError> {
    let request = parse_json(body)?;
    let id_field = kind.id_field();
    let items_field = match kind {
        Kind::Individual => "enrollments",
        Kind::Group => "enrollmentGroups",
    };
    let mode = request["mode"].as_str().and_then(BulkMode::parse).ok_or_else(|| {
        ApiError::bad_request(
            400009,
            "The bulk operation needs a mode: create, update, updateIfMatchETag or delete.",
        )
    })?;
    let items = request[items_field]
        .as_array()
        .ok_or_else(|| ApiError::bad_request(400009, format!("The bulk operation needs {items_field}.")))?;
    if items.is_empty() || items.len() > MAX_BULK_ITEMS {
        return Err(ApiError::bad_request(
            400009,
            format!("A bulk operation takes 1 to {MAX_BULK_ITEMS} items."),
        ));
    }
    let items = items
        .iter()
        .map(|item| {
            let id = item[id_field].as_str().unwrap_or_default().to_owned();
            // Deleting needs only the id; clients often send nothing else, though the swagger
            // asks for an attestation.
            let read = if mode == BulkMode::Delete {
                Ok(json!({ id_field: id }))
            } else {
                swagger::read(kind.definition(), item.clone())
                    .map_err(|e| ApiError::bad_request(400008, format!("The item is not valid: {e}.")))
            };
            (id, read)
        })
        .collect();
    let mut store = lock(&shared.store);
    let errors = store.bulk(kind, mode, items, &shared.quotas, shared.linked_hubs.as_deref());
    save(shared, &store);
    let errors: Vec<Value> = errors
        .into_iter()
        .map(|(id, error)| json!({ id_field: id, "errorCode": error.code, "errorStatus": error.message }))
        .collect();
    // `errors` is there even when empty (every bulk answer in the azure-sdk-for-python recordings).
    Ok(Json(json!({ "isSuccessful": errors.is_empty(), "errors": errors })).into_response())
}

/// Writes the state to the state file, if there is one (a temporary file, then a rename).
fn save(shared: &Shared, store: &Store) {
    let Some(path) = &shared.state_file else { return };
    let temporary = path.with_extension("tmp");
    let written = serde_json::to_vec_pretty(store)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&temporary, bytes))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        tracing::error!(path = %path.display(), %error, "could not save the emulator state");
    }
}

fn add_registration(shared: &Shared, mut state: Value, enrollment_group_id: Option<String>) {
    let now = json!(dps_time(jiff::Timestamp::now()));
    if let Some(fields) = state.as_object_mut() {
        fields.entry("createdDateTimeUtc").or_insert_with(|| now.clone());
        fields.insert("lastUpdatedDateTimeUtc".into(), now);
        fields.insert("etag".into(), json!(BASE64.encode(random_bytes::<12>())));
    }
    let key = state["registrationId"].as_str().unwrap_or_default().to_lowercase();
    let mut store = lock(&shared.store);
    store.registrations.insert(key, Registration { state, enrollment_group_id });
    save(shared, &store);
}

fn verify_certificate(shared: &Shared, name: &str, pem: &str) -> Result<(), ApiError> {
    let der = crate::certificate::der(pem)
        .filter(|der| crate::certificate::info(&BASE64.encode(der)).is_ok())
        .ok_or_else(|| {
            ApiError::bad_request(400006, format!("The certificate '{name}' is not a certificate."))
        })?;
    let mut store = lock(&shared.store);
    store.verified_certificates.insert(name.to_owned(), BASE64.encode(der));
    save(shared, &store);
    Ok(())
}

/// `PUT /admin/certificates/{name}` with `{"certificate": PEM}`.
async fn admin_verify_certificate(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Some(pem) = body["certificate"].as_str() else {
        return ApiError::bad_request(400002, "certificate (PEM) is required.").into_response();
    };
    match verify_certificate(&shared, &name, pem) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Microsoft Entra ID token endpoint

async fn token_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(_tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
            };
            (decode(k), decode(v))
        })
        .collect();
    let refuse = |error: &str, description: String| {
        (StatusCode::BAD_REQUEST, Json(json!({"error": error, "error_description": description})))
            .into_response()
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return refuse("unsupported_grant_type", "Only client_credentials is supported.".into());
    }
    if field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        || field("client_assertion").is_empty()
    {
        return refuse("invalid_client", "A federated client assertion (JWT) is required.".into());
    }
    let client_id = field("client_id");
    if client_id.is_empty()
        || shared.entra_client_ids.as_ref().is_some_and(|ids| !ids.iter().any(|id| id == client_id))
    {
        return refuse("unauthorized_client", format!("Application '{client_id}' is not known."));
    }
    if field("scope") != DPS_SCOPE {
        return refuse("invalid_scope", format!("The scope must be {DPS_SCOPE}."));
    }
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    lock(&shared.tokens).insert(token.clone(), unix_now() + TOKEN_LIFETIME.as_secs());
    Json(json!({"token_type": "Bearer", "expires_in": TOKEN_LIFETIME.as_secs(), "access_token": token}))
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Admin endpoint

async fn admin_calls(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let calls = lock(&shared.calls).clone();
    let statuses = lock(&shared.statuses).clone();
    let total: u64 = calls.values().sum();
    Json(json!({ "operations": calls, "statuses": statuses, "total": total }))
}

async fn admin_reset_calls(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.reset_calls();
    StatusCode::NO_CONTENT
}

async fn admin_faults(State(shared): State<Arc<Shared>>) -> Json<Faults> {
    Json(lock(&shared.faults).clone())
}

async fn admin_set_faults(State(shared): State<Arc<Shared>>, Json(faults): Json<Faults>) -> StatusCode {
    *lock(&shared.faults) = faults;
    StatusCode::NO_CONTENT
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Throttling {
    operations_per_minute: Option<u32>,
}

async fn admin_throttling(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let limited = lock(&shared.throttle).is_some();
    Json(json!({ "limited": limited }))
}

async fn admin_set_throttling(
    State(shared): State<Arc<Shared>>,
    Json(throttling): Json<Throttling>,
) -> StatusCode {
    *lock(&shared.throttle) = throttling.operations_per_minute.map(|n| Arc::new(Quota::new(n)));
    StatusCode::NO_CONTENT
}

async fn admin_add_registration(
    State(shared): State<Arc<Shared>>,
    Json(mut registration): Json<Value>,
) -> Response {
    if registration["registrationId"].as_str().is_none_or(str::is_empty) {
        return ApiError::bad_request(400002, "registrationId is required.").into_response();
    }
    let group = registration.as_object_mut().and_then(|fields| fields.remove("enrollmentGroupId"));
    add_registration(&shared, registration, group.as_ref().and_then(Value::as_str).map(str::to_owned));
    StatusCode::CREATED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_case_insensitively_with_or_without_a_trailing_slash() {
        use Kind::{Group as EnrollmentGroups, Individual as Enrollments};
        let cases = [
            (Method::GET, "/enrollments/Dev-1", Operation::Get(Enrollments, "Dev-1".into())),
            (Method::PUT, "/ENROLLMENTGROUPS/g1/", Operation::Put(EnrollmentGroups, "g1".into())),
            (
                Method::POST,
                "/enrollmentgroups/g1/attestationmechanism",
                Operation::Attestation(EnrollmentGroups, "g1".into()),
            ),
            (Method::POST, "/enrollments/", Operation::Bulk(Enrollments)),
            (Method::POST, "/enrollmentGroups/Query", Operation::Query(EnrollmentGroups)),
            (Method::GET, "/enrollments/query", Operation::Get(Enrollments, "query".into())),
            (Method::DELETE, "/Registrations/d1", Operation::DeleteRegistration("d1".into())),
            (Method::POST, "/registrations/g1/query/", Operation::QueryRegistrations("g1".into())),
            (Method::GET, "/enrollments/boiler%3A0042", Operation::Get(Enrollments, "boiler:0042".into())),
        ];
        for (method, path, expected) in cases {
            assert_eq!(route(&method, path).unwrap(), Route::Service(expected), "{method} {path}");
        }
        let device =
            |id_scope: &str, registration_id: &str| (id_scope.to_owned(), registration_id.to_owned());
        let (id_scope, registration_id) = device("0ne00E0A1E5", "Sensor-1");
        assert_eq!(
            route(&Method::PUT, "/0ne00E0A1E5/registrations/Sensor-1/register").unwrap(),
            Route::Device(DeviceOperation::Register {
                id_scope: id_scope.clone(),
                registration_id: registration_id.clone()
            })
        );
        assert_eq!(
            route(&Method::GET, "/0ne00E0A1E5/Registrations/Sensor-1/operations/4.a.b").unwrap(),
            Route::Device(DeviceOperation::OperationStatus {
                id_scope: id_scope.clone(),
                registration_id: registration_id.clone(),
                operation_id: "4.a.b".into()
            })
        );
        assert_eq!(
            route(&Method::POST, "/0ne00E0A1E5/registrations/Sensor-1/").unwrap(),
            Route::Device(DeviceOperation::Status { id_scope, registration_id })
        );
        assert_eq!(
            route(&Method::GET, "/0ne00E0A1E5/registrations/Sensor-1/register").unwrap_err().status,
            404
        );
        assert_eq!(route(&Method::PATCH, "/enrollments/x").unwrap_err().status, 405);
        assert_eq!(route(&Method::GET, "/enrollments").unwrap_err().status, 405);
        assert_eq!(route(&Method::GET, "/devices/x").unwrap_err().status, 404);
    }

    #[test]
    fn only_select_star_queries_are_answered() {
        assert!(check_query("SELECT *").is_ok());
        assert!(check_query("select * from enrollments").is_ok());
        assert!(check_query("SELECT * FROM enrollments WHERE x = 1").is_err());
        assert!(check_query("DELETE").is_err());
    }
}
