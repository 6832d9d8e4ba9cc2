//! Credentials for the DPS service API: shared access signatures from a connection string, and
//! Microsoft Entra ID tokens through Azure workload identity. Both are cached and renewed before
//! they expire.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::{sync::Mutex, time::Instant};

use super::models::Secret;

/// What `encodeURIComponent` leaves alone; the SDKs encode SAS fields this way.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

pub fn encode_uri_component(text: &str) -> String {
    utf8_percent_encode(text, URI_COMPONENT).to_string()
}

/// How long a SAS token we make is valid, and how long before its expiry we renew it.
const SAS_LIFETIME: Duration = Duration::from_secs(3600);
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// The Entra ID scope of the DPS data plane (public cloud).
pub const DPS_SCOPE: &str = "https://azure-devices-provisioning.net/.default";

/// What is wrong with a connection string. Never carries the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("the connection string is empty")]
    Empty,
    #[error("part {position} of the connection string is not of the form Name=value")]
    MalformedPart { position: usize },
    #[error("the connection string has no {0}")]
    MissingPart(&'static str),
    #[error("the connection string has {0} more than once")]
    DuplicatePart(String),
    #[error(
        "the connection string has an unknown part {0:?} (expected HostName, SharedAccessKeyName and SharedAccessKey)"
    )]
    UnknownPart(String),
    #[error("the connection string's HostName {0:?} is not a host name")]
    InvalidHostName(String),
    #[error("the connection string's SharedAccessKeyName {0:?} may only contain letters, digits and -_@.")]
    InvalidKeyName(String),
    #[error("the connection string's SharedAccessKey is not valid base64")]
    KeyNotBase64,
    #[error("the connection string's SharedAccessKey is empty")]
    EmptyKey,
    #[error(
        "the connection string carries a fixed SharedAccessSignature, which expires and cannot be renewed; \
         use one with SharedAccessKey"
    )]
    FixedSignature,
}

/// A parsed DPS shared access policy connection string
/// (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub key_name: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl std::str::FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ConnectionStringError::Empty);
        }
        let (mut host_name, mut key_name, mut key) = (None, None, None);
        for (index, part) in text.split(';').enumerate().filter(|(_, part)| !part.trim().is_empty()) {
            let (name, value) =
                part.split_once('=').ok_or(ConnectionStringError::MalformedPart { position: index + 1 })?;
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "hostname" => &mut host_name,
                "sharedaccesskeyname" => &mut key_name,
                "sharedaccesskey" => &mut key,
                "sharedaccesssignature" => return Err(ConnectionStringError::FixedSignature),
                // Only echo what looks like a part name: a bare key also contains `=`.
                unknown if unknown.len() <= 32 && unknown.chars().all(|c| c.is_ascii_alphabetic()) => {
                    return Err(ConnectionStringError::UnknownPart(name.trim().to_owned()));
                }
                _ => return Err(ConnectionStringError::MalformedPart { position: index + 1 }),
            };
            if slot.replace(value.trim().to_owned()).is_some() {
                return Err(ConnectionStringError::DuplicatePart(name.trim().to_owned()));
            }
        }
        let host_name = host_name.ok_or(ConnectionStringError::MissingPart("HostName"))?;
        let key_name = key_name.ok_or(ConnectionStringError::MissingPart("SharedAccessKeyName"))?;
        let key = key.ok_or(ConnectionStringError::MissingPart("SharedAccessKey"))?;
        if !is_host(&host_name) {
            return Err(ConnectionStringError::InvalidHostName(host_name));
        }
        let valid_key_name = |c: char| c.is_ascii_alphanumeric() || "-_@.".contains(c);
        if key_name.is_empty() || key_name.len() > 256 || !key_name.chars().all(valid_key_name) {
            return Err(ConnectionStringError::InvalidKeyName(key_name));
        }
        if key.is_empty() {
            return Err(ConnectionStringError::EmptyKey);
        }
        let key = BASE64.decode(&key).map_err(|_| ConnectionStringError::KeyNotBase64)?;
        Ok(Self { host_name, key_name, key })
    }
}

/// A host name, optionally with a port (`contoso.azure-devices-provisioning.net`,
/// `localhost:8443`).
pub fn is_host(text: &str) -> bool {
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (text, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-']);
    name_ok && port.is_none_or(|port| port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `base64(HMAC-SHA256(key, string_to_sign))`.
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    BASE64.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()).as_ref())
}

/// A shared access signature for `resource_uri` valid until `expiry` (Unix seconds), as the Azure
/// SDKs make it: `SharedAccessSignature sr=..&sig=..&se=..&skn=..`.
pub fn shared_access_signature(resource_uri: &str, key_name: &str, key: &[u8], expiry: u64) -> String {
    let sr = encode_uri_component(resource_uri);
    let signature = sign(key, &format!("{sr}\n{expiry}"));
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}",
        encode_uri_component(&signature),
        encode_uri_component(key_name)
    )
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A token and when it stops being usable (Unix seconds).
struct CachedToken {
    value: Secret,
    expires_at: u64,
}

impl CachedToken {
    fn fresh(&self) -> Option<Secret> {
        (self.expires_at > unix_now() + RENEW_BEFORE_EXPIRY.as_secs()).then(|| self.value.clone())
    }
}

/// Why no `Authorization` header could be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("workload identity needs {0}, which is not set")]
    MissingSetting(&'static str),
    #[error("could not read the federated token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not reach the Microsoft Entra ID token endpoint {endpoint}")]
    TokenEndpoint {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Microsoft Entra ID refused a token for client {client_id}: {error}")]
    TokenRefused { client_id: String, error: String },
    /// A token request that failed moments ago, answered again without asking once more.
    #[error(transparent)]
    Recent(Arc<AuthError>),
}

/// Workload identity settings: an Entra application federated with a Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentityConfig {
    pub client_id: String,
    pub tenant_id: String,
    /// The projected service account token (`AZURE_FEDERATED_TOKEN_FILE`).
    pub token_file: PathBuf,
    /// `AZURE_AUTHORITY_HOST`, e.g. `https://login.microsoftonline.com/`.
    pub authority_host: String,
    pub scope: String,
}

impl WorkloadIdentityConfig {
    /// Settings from `lookup` of the environment the Azure workload identity webhook injects
    /// (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`),
    /// with explicit client and tenant ids taking precedence.
    pub fn from_lookup(
        client_id: Option<&str>,
        tenant_id: Option<&str>,
        lookup: impl Fn(&'static str) -> Option<String>,
    ) -> Result<Self, AuthError> {
        let var = |name: &'static str| lookup(name).filter(|v| !v.is_empty());
        let required = |given: Option<&str>, name: &'static str| {
            given.map(str::to_owned).or_else(|| var(name)).ok_or(AuthError::MissingSetting(name))
        };
        Ok(Self {
            client_id: required(client_id, "AZURE_CLIENT_ID")?,
            tenant_id: required(tenant_id, "AZURE_TENANT_ID")?,
            token_file: required(None, "AZURE_FEDERATED_TOKEN_FILE")?.into(),
            authority_host: var("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|| "https://login.microsoftonline.com/".into()),
            scope: DPS_SCOPE.into(),
        })
    }

    fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority_host.trim_end_matches('/'), self.tenant_id)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(deserialize_with = "number_or_string")]
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct TokenErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Number(u64),
        String(String),
    }
    match NumberOrString::deserialize(deserializer)? {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// Where tokens come from.
enum Credentials {
    SharedAccess(ConnectionString),
    WorkloadIdentity(WorkloadIdentityConfig),
}

/// Makes the `Authorization` header for DPS requests, caching the token it makes.
///
/// One token request at a time: the calls of a connection that need a token wait for the one
/// request in flight, and for [`REMEMBER_FAILURE`] after it failed they get its error at once
/// rather than each waiting on a request of its own.
pub struct Authenticator {
    credentials: Credentials,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    token: Option<CachedToken>,
    failure: Option<(Instant, Arc<AuthError>)>,
}

/// How long a failed token request answers for every caller.
const REMEMBER_FAILURE: Duration = Duration::from_secs(5);

impl Authenticator {
    pub fn shared_access(connection: ConnectionString) -> Self {
        Self { credentials: Credentials::SharedAccess(connection), cache: Mutex::default() }
    }

    pub fn workload_identity(config: WorkloadIdentityConfig) -> Self {
        Self { credentials: Credentials::WorkloadIdentity(config), cache: Mutex::default() }
    }

    /// The header value, from the cache while it has more than a few minutes left.
    pub async fn authorization(&self, http: &reqwest::Client) -> Result<Secret, AuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(token) = cache.token.as_ref().and_then(CachedToken::fresh) {
            return Ok(token);
        }
        if let Some((failed, error)) = &cache.failure
            && failed.elapsed() < REMEMBER_FAILURE
        {
            return Err(AuthError::Recent(error.clone()));
        }
        let token = match &self.credentials {
            Credentials::SharedAccess(connection) => {
                let expires_at = unix_now() + SAS_LIFETIME.as_secs();
                let value = shared_access_signature(
                    &connection.host_name,
                    &connection.key_name,
                    &connection.key,
                    expires_at,
                );
                CachedToken { value: Secret::new(value), expires_at }
            }
            Credentials::WorkloadIdentity(config) => match request_entra_token(http, config).await {
                Ok(token) => token,
                Err(error) => {
                    let error = Arc::new(error);
                    cache.failure = Some((Instant::now(), error.clone()));
                    return Err(AuthError::Recent(error));
                }
            },
        };
        let value = token.value.clone();
        *cache = Cache { token: Some(token), failure: None };
        Ok(value)
    }

    /// Forgets the cached token, after DPS refused it.
    pub async fn invalidate(&self) {
        self.cache.lock().await.token = None;
    }

    /// The kind of credentials, as the connection's status reports it.
    pub fn kind(&self) -> &'static str {
        match self.credentials {
            Credentials::SharedAccess(_) => "SharedAccessPolicy",
            Credentials::WorkloadIdentity(_) => "WorkloadIdentity",
        }
    }
}

/// How long a token request to Microsoft Entra ID may take.
const TOKEN_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Exchanges the federated service account token for an Entra ID access token.
async fn request_entra_token(
    http: &reqwest::Client,
    config: &WorkloadIdentityConfig,
) -> Result<CachedToken, AuthError> {
    // The projected token is rotated by the kubelet, so read it every time.
    let assertion = tokio::fs::read_to_string(&config.token_file)
        .await
        .map_err(|source| AuthError::TokenFile { path: config.token_file.clone(), source })?;
    let endpoint = config.token_endpoint();
    let form = [
        ("client_id", config.client_id.as_str()),
        ("scope", config.scope.as_str()),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.trim()),
    ];
    let body =
        form.iter().map(|(k, v)| format!("{k}={}", encode_uri_component(v))).collect::<Vec<_>>().join("&");
    let endpoint_error = |source| AuthError::TokenEndpoint { endpoint: endpoint.clone(), source };
    // Bounded: every call of the connection that needs a token waits for this one.
    let response = http
        .post(&endpoint)
        .timeout(TOKEN_REQUEST_TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(endpoint_error)?;
    if !response.status().is_success() {
        let status = response.status();
        let error: TokenErrorResponse = response.json().await.unwrap_or_default();
        return Err(AuthError::TokenRefused {
            client_id: config.client_id.clone(),
            error: format!("{status}: {} {}", error.error, error.error_description).trim().to_owned(),
        });
    }
    let token: TokenResponse = response.json().await.map_err(endpoint_error)?;
    Ok(CachedToken {
        value: Secret::new(format!("Bearer {}", token.access_token)),
        expires_at: unix_now() + token.expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn shared_access_signature_matches_the_reference_test_vector() {
        let key = BASE64.decode(KEY).unwrap();
        let token = shared_access_signature(
            "mydps.azure-devices-provisioning.net",
            "provisioningserviceowner",
            &key,
            1_700_000_000,
        );
        assert_eq!(
            token,
            "SharedAccessSignature sr=mydps.azure-devices-provisioning.net\
             &sig=%2B5V0HFPIoMYrcltM2Jj4oxVByh5pkp677OYUHTEHW70%3D&se=1700000000&skn=provisioningserviceowner"
        );
    }

    #[test]
    fn device_sas_matches_the_device_test_vector() {
        // dps-api.md §8: derived device key and its registration SAS.
        let group_key: Vec<u8> = (0u8..64).collect();
        let device_key = sign(&group_key, "device-01");
        assert_eq!(device_key, "4mnWPt8Zt2l+dGRNpd2grurMijx75QG0Gw4rgHMHFgA=");
        let token = shared_access_signature(
            "0ne00000000/registrations/device-01",
            "registration",
            &BASE64.decode(&device_key).unwrap(),
            1_700_000_000,
        );
        assert_eq!(
            token,
            "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fdevice-01\
             &sig=EHxEXrGB8BH3FSZYZ%2F6N2iHqocmUzPtNLDibqVmhgjM%3D&se=1700000000&skn=registration"
        );
    }

    #[test]
    fn a_connection_string_parses_in_any_order_and_case() {
        let parsed: ConnectionString = format!(
            "sharedaccesskey={KEY};HostName=contoso.azure-devices-provisioning.net;SharedAccessKeyName=owner;"
        )
        .parse()
        .unwrap();
        assert_eq!(parsed.host_name, "contoso.azure-devices-provisioning.net");
        assert_eq!(parsed.key_name, "owner");
        assert_eq!(parsed.key, BASE64.decode(KEY).unwrap());
        assert!(!format!("{parsed:?}").contains(KEY));
        let local: ConnectionString =
            format!("HostName=localhost:8443;SharedAccessKeyName=o;SharedAccessKey={KEY}").parse().unwrap();
        assert_eq!(local.host_name, "localhost:8443");
    }

    #[test]
    fn connection_string_errors_name_the_part_and_never_the_key() {
        use ConnectionStringError::*;
        let cases = [
            ("", Empty),
            ("   ", Empty),
            ("HostName=h.net;SharedAccessKeyName=o", MissingPart("SharedAccessKey")),
            (&format!("SharedAccessKeyName=o;SharedAccessKey={KEY}") as &str, MissingPart("HostName")),
            (&format!("HostName=h.net;SharedAccessKey={KEY}"), MissingPart("SharedAccessKeyName")),
            (&format!("HostName=h.net;SharedAccessKeyName=o;{KEY}"), MalformedPart { position: 3 }),
            (
                &format!("HostName=h.net;HostName=g.net;SharedAccessKeyName=o;SharedAccessKey={KEY}"),
                DuplicatePart("HostName".into()),
            ),
            (
                &format!("HostName=h.net;SharedAccessKeyName=o;SharedAccessKey={KEY};Endpoint=x"),
                UnknownPart("Endpoint".into()),
            ),
            (
                &format!("HostName=https://h.net;SharedAccessKeyName=o;SharedAccessKey={KEY}"),
                InvalidHostName("https://h.net".into()),
            ),
            (
                &format!("HostName=h.net:0;SharedAccessKeyName=o;SharedAccessKey={KEY}"),
                InvalidHostName("h.net:0".into()),
            ),
            (
                &format!("HostName=h.net;SharedAccessKeyName=own er;SharedAccessKey={KEY}"),
                InvalidKeyName("own er".into()),
            ),
            ("HostName=h.net;SharedAccessKeyName=o;SharedAccessKey=not*base64", KeyNotBase64),
            ("HostName=h.net;SharedAccessKeyName=o;SharedAccessKey=", EmptyKey),
            (
                "HostName=h.net;SharedAccessKeyName=o;SharedAccessSignature=SharedAccessSignature sr=h.net",
                FixedSignature,
            ),
        ];
        for (text, expected) in cases {
            let error = text.parse::<ConnectionString>().unwrap_err();
            assert_eq!(error, expected, "for {text:?}");
            assert!(!error.to_string().contains(KEY) && !error.to_string().contains("not*base64"), "{error}");
        }
    }

    #[test]
    fn workload_identity_settings_come_from_the_injected_environment() {
        let env = |name: &str| match name {
            "AZURE_CLIENT_ID" => Some("client-from-env".to_owned()),
            "AZURE_TENANT_ID" => Some("tenant-from-env".to_owned()),
            "AZURE_FEDERATED_TOKEN_FILE" => {
                Some("/var/run/secrets/azure/tokens/azure-identity-token".to_owned())
            }
            "AZURE_AUTHORITY_HOST" => Some("https://login.example.test/".to_owned()),
            _ => None,
        };
        let config = WorkloadIdentityConfig::from_lookup(None, None, env).unwrap();
        assert_eq!(
            (config.client_id.as_str(), config.tenant_id.as_str()),
            ("client-from-env", "tenant-from-env")
        );
        assert_eq!(config.token_endpoint(), "https://login.example.test/tenant-from-env/oauth2/v2.0/token");
        assert_eq!(config.scope, DPS_SCOPE);

        let explicit = WorkloadIdentityConfig::from_lookup(Some("app"), Some("tenant"), env).unwrap();
        assert_eq!((explicit.client_id.as_str(), explicit.tenant_id.as_str()), ("app", "tenant"));

        let public_cloud = WorkloadIdentityConfig::from_lookup(None, None, |name| {
            env(name).filter(|_| name != "AZURE_AUTHORITY_HOST")
        })
        .unwrap();
        assert_eq!(public_cloud.authority_host, "https://login.microsoftonline.com/");
        let missing = WorkloadIdentityConfig::from_lookup(Some("app"), Some("tenant"), |_| None).unwrap_err();
        assert!(matches!(missing, AuthError::MissingSetting("AZURE_FEDERATED_TOKEN_FILE")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_token_request_answers_every_caller_for_a_few_seconds() {
        crate::install_crypto_provider();
        let directory = std::env::temp_dir().join(format!("dps-operator-auth-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let token_file = directory.join("token");
        let _ = std::fs::remove_file(&token_file);
        let authenticator = Authenticator::workload_identity(WorkloadIdentityConfig {
            client_id: "app".into(),
            tenant_id: "tenant".into(),
            token_file: token_file.clone(),
            // Nothing listens there: a request that is made fails to connect.
            authority_host: "http://127.0.0.1:1/".into(),
            scope: DPS_SCOPE.into(),
        });
        let http = reqwest::Client::new();
        let first = authenticator.authorization(&http).await.unwrap_err();
        assert!(
            matches!(&first, AuthError::Recent(e) if matches!(**e, AuthError::TokenFile { .. })),
            "{first:?}"
        );

        // The file appears; within the window the failure still answers, without a new request.
        std::fs::write(&token_file, "federated-token").unwrap();
        let again = authenticator.authorization(&http).await.unwrap_err();
        assert!(
            matches!(&again, AuthError::Recent(e) if matches!(**e, AuthError::TokenFile { .. })),
            "{again:?}"
        );

        tokio::time::advance(REMEMBER_FAILURE).await;
        let later = authenticator.authorization(&http).await.unwrap_err();
        assert!(
            matches!(&later, AuthError::Recent(e) if matches!(**e, AuthError::TokenEndpoint { .. })),
            "asked again after the window: {later:?}"
        );
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_request_to_an_authority_that_never_answers_gives_up() {
        crate::install_crypto_provider();
        // Accepts connections (the kernel's backlog) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let directory = std::env::temp_dir().join(format!("dps-operator-silent-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let token_file = directory.join("token");
        std::fs::write(&token_file, "federated-token").unwrap();
        let authenticator = Authenticator::workload_identity(WorkloadIdentityConfig {
            client_id: "app".into(),
            tenant_id: "tenant".into(),
            token_file,
            authority_host: format!("http://{}/", silent.local_addr().unwrap()),
            scope: DPS_SCOPE.into(),
        });
        let started = Instant::now();
        let error = authenticator.authorization(&reqwest::Client::new()).await.unwrap_err();
        assert!(
            matches!(&error, AuthError::Recent(e) if matches!(**e, AuthError::TokenEndpoint { .. })),
            "{error:?}"
        );
        assert!(started.elapsed() >= TOKEN_REQUEST_TIMEOUT, "it gave up on its timeout");
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[tokio::test]
    async fn sas_tokens_are_cached_until_close_to_expiry() {
        let connection: ConnectionString =
            format!("HostName=h.net;SharedAccessKeyName=o;SharedAccessKey={KEY}").parse().unwrap();
        let authenticator = Authenticator::shared_access(connection);
        crate::install_crypto_provider();
        let http = reqwest::Client::new();
        let first = authenticator.authorization(&http).await.unwrap();
        assert_eq!(authenticator.authorization(&http).await.unwrap(), first);
        let about_to_expire = Secret::new("SharedAccessSignature about-to-expire");
        authenticator.cache.lock().await.token =
            Some(CachedToken { value: about_to_expire.clone(), expires_at: unix_now() + 60 });
        let renewed = authenticator.authorization(&http).await.unwrap();
        assert_ne!(renewed, about_to_expire, "a token about to expire is renewed");
        let se: u64 =
            renewed.expose().split("se=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
        assert!(se >= unix_now() + SAS_LIFETIME.as_secs() - 5);
    }
}
