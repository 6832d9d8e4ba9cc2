//! The sample device of `dps-operator local`: it registers with the emulator's device API as a
//! symmetric-key device does (a SAS over `{idScope}/registrations/{id}`, signed with its key, key
//! name `registration`), polls the operation until DPS has assigned it, and answers where it went.

use std::{net::SocketAddr, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::Value;

use super::Error;
use crate::dps::auth::shared_access_signature;

/// What the device needs to reach DPS: the host name, where that host is, the CA its
/// certificate is from, and the ID scope.
pub struct Endpoint<'a> {
    pub host: &'a str,
    pub address: SocketAddr,
    pub ca_pem: &'a str,
    pub id_scope: &'a str,
}

/// Registers `registration_id` with `key` (base64); answers the registration state once DPS
/// assigned it.
pub async fn provision(endpoint: &Endpoint<'_>, registration_id: &str, key: &str) -> Result<Value, Error> {
    let failed = |detail: String| Error::Device { registration_id: registration_id.to_owned(), detail };
    crate::install_crypto_provider();
    let certificates = reqwest::Certificate::from_pem_bundle(endpoint.ca_pem.as_bytes())
        .map_err(|e| failed(format!("the CA certificate cannot be read: {e}")))?;
    let http = reqwest::Client::builder()
        .https_only(true)
        .resolve(endpoint.host, endpoint.address)
        .tls_certs_merge(certificates)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed(format!("no HTTPS client: {e}")))?;
    let key = BASE64.decode(key).map_err(|_| failed("its key is not base64".into()))?;
    let expiry = jiff::Timestamp::now().as_second() as u64 + 3600;
    let resource = format!("{}/registrations/{registration_id}", endpoint.id_scope);
    let authorization = shared_access_signature(&resource, "registration", &key, expiry);
    let base = format!("https://{}/{resource}", endpoint.host);
    let call = |request: reqwest::RequestBuilder| {
        let authorization = authorization.clone();
        async move {
            let response = request
                .header("authorization", authorization)
                .send()
                .await
                .map_err(|e| failed(format!("DPS could not be reached: {e}")))?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                return Err(failed(format!("DPS answered {status}: {}", body["message"])));
            }
            Ok(body)
        }
    };
    let body = serde_json::json!({ "registrationId": registration_id });
    let mut operation = call(http.put(format!("{base}/register?api-version=2021-10-01")).json(&body)).await?;
    for _ in 0..30 {
        match operation["status"].as_str() {
            Some("assigning") => {}
            Some("assigned") => return Ok(operation["registrationState"].clone()),
            other => {
                let why = operation["registrationState"]["errorMessage"].as_str().unwrap_or_default();
                return Err(failed(format!("DPS answered status {other:?} {why}")));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let id = operation["operationId"].as_str().unwrap_or_default().to_owned();
        operation = call(http.get(format!("{base}/operations/{id}?api-version=2021-10-01"))).await?;
    }
    Err(failed("DPS did not assign it within 30 s".into()))
}
