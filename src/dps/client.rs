//! The DPS service API client: enrollments, enrollment groups and registration states, paced by
//! the host's rate limiter, with a timeout on every request.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt, TryStreamExt, stream};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    Error,
    auth::{Authenticator, encode_uri_component},
    models::*,
    rate_limit::RateLimiter,
};

/// The service API version this client speaks.
pub const API_VERSION: &str = "2021-10-01";

/// DPS takes at most this many items in one bulk operation.
pub const MAX_BULK_ITEMS: usize = 10;

/// An enrollment kind: `IndividualEnrollment` or `EnrollmentGroup`.
pub trait Enrollment: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The path segment of the collection.
    const COLLECTION: &'static str;
    /// The per-item error of a bulk operation on this kind.
    type BulkError: DeserializeOwned + Send + super::batch::BulkItemError;
    fn id(&self) -> &str;
    fn bulk_body(items: &[Self], mode: BulkMode) -> serde_json::Value;
}

impl Enrollment for IndividualEnrollment {
    const COLLECTION: &'static str = "enrollments";
    type BulkError = BulkEnrollmentOperationError;

    fn id(&self) -> &str {
        &self.registration_id
    }

    fn bulk_body(items: &[Self], mode: BulkMode) -> serde_json::Value {
        serde_json::json!({ "enrollments": items, "mode": mode })
    }
}

impl Enrollment for EnrollmentGroup {
    const COLLECTION: &'static str = "enrollmentGroups";
    type BulkError = BulkEnrollmentGroupOperationError;

    fn id(&self) -> &str {
        &self.enrollment_group_id
    }

    fn bulk_body(items: &[Self], mode: BulkMode) -> serde_json::Value {
        serde_json::json!({ "enrollmentGroups": items, "mode": mode })
    }
}

/// The `If-Match` precondition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfMatch<'a> {
    /// No precondition: a create (PUT fails with 409 if the item exists), or an unconditional delete.
    None,
    /// Only if the item still has this etag.
    Etag(&'a str),
    /// Whatever the item's etag (`If-Match: *`). Only for an explicit takeover.
    Any,
}

/// How to build a [`Client`].
pub struct ClientConfig {
    /// The DPS host, optionally with a port (`contoso.azure-devices-provisioning.net`).
    pub host: String,
    pub authenticator: Arc<Authenticator>,
    pub rate_limiter: Arc<RateLimiter>,
    /// PEM certificates to trust in addition to the system roots.
    pub extra_root_certificates: Option<String>,
    /// How long one request may take, connection included.
    pub timeout: Duration,
    /// Host names to connect to at these addresses instead of what DNS says (like curl's
    /// `--resolve`), e.g. a local emulator standing in for a real host name.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// Told about every request, e.g. to export metrics.
    pub observer: Option<Arc<dyn RequestObserver>>,
}

/// Hears about the client's requests.
pub trait RequestObserver: Send + Sync {
    /// A request to DPS at `host` finished: its operation (ids removed), status (`None` without
    /// an answer) and duration.
    fn request(&self, host: &str, operation: &str, status: Option<u16>, duration: Duration);
    /// A request waited this long for the rate limiter.
    fn waited(&self, duration: Duration);
    /// A bulk call carried this many items.
    fn bulk_sent(&self, _items: usize) {}
    /// The rate the client of `host` is configured to keep to, operations a minute.
    fn rate_limit(&self, _host: &str, _per_minute: u32) {}
}

/// The operation of a request with the ids taken out, for metrics: `PUT enrollmentGroups/{id}`.
pub fn operation_label(method: &Method, path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let generic: Vec<&str> = segments
        .iter()
        .enumerate()
        .map(|(index, segment)| match (index, *segment) {
            (1, "query") if segments.len() == 2 => "query",
            (1, _) => "{id}",
            (_, segment) => segment,
        })
        .collect();
    format!("{method} {}", generic.join("/"))
}

impl ClientConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the CA bundle holds no PEM certificate that can be read")]
    InvalidCaBundle(#[source] reqwest::Error),
    #[error("could not set up HTTPS")]
    Tls(#[source] reqwest::Error),
}

/// A client of one DPS instance.
pub struct Client {
    http: reqwest::Client,
    host: String,
    base_url: String,
    authenticator: Arc<Authenticator>,
    rate_limiter: Arc<RateLimiter>,
    timeout: Duration,
    observer: Option<Arc<dyn RequestObserver>>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, BuildError> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .user_agent(concat!("dps-operator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout.min(Duration::from_secs(10)));
        for (host, address) in &config.resolve {
            builder = builder.resolve(host, *address);
        }
        if let Some(pem) = &config.extra_root_certificates {
            let certificates =
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(BuildError::InvalidCaBundle)?;
            builder = builder.tls_certs_merge(certificates);
        }
        Ok(Self {
            http: builder.build().map_err(BuildError::Tls)?,
            base_url: format!("https://{}", config.host),
            host: config.host,
            authenticator: config.authenticator,
            rate_limiter: config.rate_limiter,
            timeout: config.timeout,
            observer: config.observer,
        })
    }

    /// Reads an enrollment or enrollment group. Symmetric keys are not returned.
    pub async fn get<E: Enrollment>(&self, id: &str) -> Result<E, Error> {
        let path = item_path(E::COLLECTION, id);
        self.call(Method::GET, &path, &[], None::<&()>).await?.json()
    }

    /// Creates or replaces an enrollment or enrollment group and returns what DPS stored.
    pub async fn put<E: Enrollment>(&self, item: &E, if_match: IfMatch<'_>) -> Result<E, Error> {
        let path = item_path(E::COLLECTION, item.id());
        let headers = if_match_header(if_match);
        self.call(Method::PUT, &path, &headers, Some(item)).await?.json()
    }

    /// Deletes an enrollment or enrollment group.
    pub async fn delete<E: Enrollment>(&self, id: &str, if_match: IfMatch<'_>) -> Result<(), Error> {
        let path = item_path(E::COLLECTION, id);
        self.call(Method::DELETE, &path, &if_match_header(if_match), None::<&()>).await.map(drop)
    }

    /// Reads an enrollment's attestation mechanism, symmetric keys included. Needs the
    /// attestation-mechanism permission on DPS.
    pub async fn attestation_mechanism<E: Enrollment>(
        &self,
        id: &str,
    ) -> Result<AttestationMechanism, Error> {
        let path = format!("{}/attestationmechanism", item_path(E::COLLECTION, id));
        self.call(Method::POST, &path, &[], None::<&()>).await?.json()
    }

    /// Runs a bulk operation, in calls of at most [`MAX_BULK_ITEMS`], and gathers the per-item
    /// errors of all calls.
    pub async fn bulk<E: Enrollment>(
        &self,
        mode: BulkMode,
        items: &[E],
    ) -> Result<BulkOperationResult<E::BulkError>, Error> {
        let mut result = BulkOperationResult { is_successful: true, errors: Vec::new() };
        for chunk in items.chunks(MAX_BULK_ITEMS) {
            if let Some(observer) = &self.observer {
                observer.bulk_sent(chunk.len());
            }
            let body = E::bulk_body(chunk, mode);
            let part: BulkOperationResult<E::BulkError> =
                self.call(Method::POST, E::COLLECTION, &[], Some(&body)).await?.json()?;
            result.is_successful &= part.is_successful;
            result.errors.extend(part.errors);
        }
        Ok(result)
    }

    /// Every enrollment or enrollment group matching `query` (e.g. `SELECT *`), read page by page.
    pub fn query<E: Enrollment>(
        &self,
        query: &str,
        page_size: Option<u32>,
    ) -> impl Stream<Item = Result<E, Error>> + '_ {
        self.paged(format!("{}/query", E::COLLECTION), query.to_owned(), page_size)
    }

    /// A device's registration state.
    pub async fn get_registration(&self, registration_id: &str) -> Result<DeviceRegistrationState, Error> {
        let path = item_path("registrations", registration_id);
        self.call(Method::GET, &path, &[], None::<&()>).await?.json()
    }

    /// Deletes a device's registration state (not the device in IoT Hub).
    pub async fn delete_registration(
        &self,
        registration_id: &str,
        if_match: IfMatch<'_>,
    ) -> Result<(), Error> {
        let path = item_path("registrations", registration_id);
        self.call(Method::DELETE, &path, &if_match_header(if_match), None::<&()>).await.map(drop)
    }

    /// The registration states of the devices of an enrollment group, read page by page.
    pub fn query_registrations(
        &self,
        enrollment_group_id: &str,
        page_size: Option<u32>,
    ) -> impl Stream<Item = Result<DeviceRegistrationState, Error>> + '_ {
        let path = format!("{}/query", item_path("registrations", enrollment_group_id));
        self.paged(path, "SELECT *".to_owned(), page_size)
    }

    /// One page of enrollments or enrollment groups matching `query`, and the continuation token
    /// of the next page (`None` on the last page).
    pub async fn query_page<E: Enrollment>(
        &self,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<(Vec<E>, Option<String>), Error> {
        self.page(&format!("{}/query", E::COLLECTION), query, page_size, continuation).await
    }

    async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>), Error> {
        let mut headers = Vec::new();
        if let Some(size) = page_size {
            headers.push(("x-ms-max-item-count", size.to_string()));
        }
        if let Some(token) = continuation {
            headers.push(("x-ms-continuation", token.to_owned()));
        }
        let body = QuerySpecification { query: query.to_owned() };
        let response = self.call(Method::POST, path, &headers, Some(&body)).await?;
        let next = response.headers.get("x-ms-continuation").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok((response.json()?, next))
    }

    fn paged<T: DeserializeOwned + Send + 'static>(
        &self,
        path: String,
        query: String,
        page_size: Option<u32>,
    ) -> impl Stream<Item = Result<T, Error>> + '_ {
        // `None` = first page; `Some(None)` = no more pages.
        stream::try_unfold(None::<Option<String>>, move |continuation| {
            let (path, query) = (path.clone(), query.clone());
            async move {
                let token = match continuation {
                    Some(None) => return Ok(None),
                    Some(Some(token)) => Some(token),
                    None => None,
                };
                let (page, next) = self.page::<T>(&path, &query, page_size, token.as_deref()).await?;
                Ok(Some((page, Some(next))))
            }
        })
        .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    /// Sends one request: waits for the rate limiter, authenticates, applies the timeout, and turns
    /// an unsuccessful answer into a classified [`Error`].
    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Option<&B>,
    ) -> Result<Answer, Error> {
        let operation = format!("{method} {}", path.trim_start_matches('/'));
        let label = operation_label(&method, path);
        let waited = self.rate_limiter.acquire().await;
        if let Some(observer) = &self.observer {
            observer.waited(waited);
        }
        let started = std::time::Instant::now();
        let observe = |status: Option<u16>| {
            if let Some(observer) = &self.observer {
                observer.request(&self.host, &label, status, started.elapsed());
            }
        };
        let authorization = self
            .authenticator
            .authorization(&self.http)
            .await
            .map_err(|source| Error::Authentication { operation: operation.clone(), source })?;
        let mut request = self
            .http
            .request(method, format!("{}/{path}?api-version={API_VERSION}", self.base_url))
            .header(reqwest::header::AUTHORIZATION, authorization.expose())
            .timeout(self.timeout);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| {
            observe(None);
            self.transport_error(&operation, source)
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|source| {
            observe(None);
            self.transport_error(&operation, source)
        })?;
        observe(Some(status.as_u16()));
        if status.is_success() {
            return Ok(Answer { operation, headers, bytes });
        }
        if status == StatusCode::UNAUTHORIZED {
            self.authenticator.invalidate().await;
        }
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if let Some(wait) = retry_after.filter(|_| status == StatusCode::TOO_MANY_REQUESTS) {
            self.rate_limiter.throttled(wait);
        }
        let details = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(Error::from_status(operation, status.as_u16(), retry_after, details))
    }

    fn transport_error(&self, operation: &str, source: reqwest::Error) -> Error {
        if source.is_timeout() {
            Error::Timeout { operation: operation.to_owned(), timeout: self.timeout }
        } else {
            Error::Network { operation: operation.to_owned(), source }
        }
    }
}

/// A successful answer.
struct Answer {
    operation: String,
    headers: HeaderMap,
    bytes: bytes::Bytes,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.bytes)
            .map_err(|source| Error::InvalidResponse { operation: self.operation.clone(), source })
    }
}

fn item_path(collection: &str, id: &str) -> String {
    format!("{collection}/{}", encode_uri_component(id))
}

fn if_match_header(if_match: IfMatch<'_>) -> Vec<(&'static str, String)> {
    match if_match {
        IfMatch::None => Vec::new(),
        IfMatch::Etag(etag) => vec![("if-match", etag.to_owned())],
        IfMatch::Any => vec![("if-match", "*".to_owned())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_labels_carry_no_ids() {
        let label = |method: Method, path: &str| operation_label(&method, path);
        assert_eq!(label(Method::PUT, "enrollmentGroups/thermostats"), "PUT enrollmentGroups/{id}");
        assert_eq!(
            label(Method::POST, "enrollments/boiler%3A1/attestationmechanism"),
            "POST enrollments/{id}/attestationmechanism"
        );
        assert_eq!(label(Method::POST, "enrollmentGroups/query"), "POST enrollmentGroups/query");
        assert_eq!(label(Method::POST, "registrations/g1/query"), "POST registrations/{id}/query");
        assert_eq!(label(Method::POST, "enrollments"), "POST enrollments");
    }
}
