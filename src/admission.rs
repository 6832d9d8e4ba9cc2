//! The validating admission webhook: refuses, when a manifest is applied, what the CRD schema
//! cannot see inside free-form JSON and IoT Hub would refuse only when a device provisions (twin
//! property names, nesting, string and section sizes). The operator checks the same before every
//! write to DPS, so while the webhook is unreachable (the chart's `failurePolicy` is `Ignore`)
//! nothing IoT Hub refuses reaches DPS either: the resource turns `Stalled` with `InvalidSpec`.

use std::{net::SocketAddr, path::Path, sync::Arc};

use axum::{Json, Router, routing::post};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::{api, controller::desired};

/// The path the API server posts `AdmissionReview`s to.
pub const PATH: &str = "/validate";

/// Why the webhook could not be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the webhook's TLS certificate and key: {0}")]
    Certificate(String),
    #[error("cannot listen for admission reviews on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the webhook refuses in `object`, an IndividualEnrollment or EnrollmentGroup as applied.
pub fn check(object: &Value) -> Result<(), String> {
    let Some(twin) = object.pointer("/spec/initialTwin") else { return Ok(()) };
    // The API server has checked the object against the CRD schema before it calls us.
    let twin: api::InitialTwin =
        serde_json::from_value(twin.clone()).map_err(|e| format!("spec.initialTwin is invalid: {e}"))?;
    desired::check_initial_twin(Some(&twin)).map_err(|e| e.to_string())
}

/// What the webhook refuses of a `DELETE` of `old`, the `kind` `namespace`/`name` as stored: one
/// protected from deletion, by its spec or (as its status records) its connection's default. The
/// message says how to lift the protection.
pub fn check_deletion(kind: &str, namespace: &str, name: &str, old: &Value) -> Result<(), String> {
    let spec = old.pointer("/spec/deletionProtection").and_then(Value::as_bool);
    let by_default = old.pointer("/status/deletionProtected").and_then(Value::as_bool);
    let why = match (spec, by_default) {
        (Some(true), _) => "its spec.deletionProtection is true",
        (None, Some(true)) => "its connection's enrollmentDefaults.deletionProtection is true",
        _ => return Ok(()),
    };
    Err(format!(
        "{kind} {namespace}/{name} is protected from deletion: {why}. To delete it, first lift the protection: \
         kubectl patch {} {name} -n {namespace} --type merge -p '{{\"spec\":{{\"deletionProtection\":false}}}}'",
        kind.to_lowercase()
    ))
}

fn answer(review: AdmissionReview<DynamicObject>) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return AdmissionResponse::invalid(error.to_string()).into_review(),
    };
    let response = AdmissionResponse::from(&request);
    let json = |object: &Option<DynamicObject>| object.as_ref().and_then(|o| serde_json::to_value(o).ok());
    let (object, old) = (json(&request.object), json(&request.old_object));
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let verdict = match (&request.operation, &old) {
        (Operation::Delete, Some(old)) => check_deletion(&request.kind.kind, namespace, &request.name, old),
        (Operation::Delete, None) => Ok(()),
        _ => check_change(object.as_ref(), old.as_ref()),
    };
    match verdict {
        Err(message) => {
            tracing::info!(kind = %request.kind.kind, namespace, name = %request.name, %message, "admission refused");
            response.deny(message).into_review()
        }
        Ok(()) => response.into_review(),
    }
}

/// What the webhook refuses of a create or an update from `old` to `object`.
fn check_change(object: Option<&Value>, old: Option<&Value>) -> Result<(), String> {
    let twin = |object: Option<&Value>| object.and_then(|o| o.pointer("/spec/initialTwin")).cloned();
    // An update that leaves the twin as it was (the operator's own finalizer and status writes,
    // a label) is never refused: a resource admitted before the webhook existed must still be
    // able to change, and to go.
    if old.is_some() && twin(old) == twin(object) {
        return Ok(());
    }
    object.map_or(Ok(()), check)
}

pub fn router() -> Router {
    Router::new().route(PATH, post(|Json(review)| async { Json(answer(review)) }))
}

/// Reads the serving certificate chain and key (PEM files), listens on `address` and answers
/// admission reviews on a task of its own until `stopped` resolves.
pub async fn start(
    address: SocketAddr,
    certificate_file: &Path,
    key_file: &Path,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| Error::Certificate(format!("{}: {e}", path.display())))
    };
    let (listener, tls) = bind(address, &read(certificate_file)?, &read(key_file)?).await?;
    tracing::info!(%address, path = PATH, "serving the admission webhook");
    tokio::spawn(serve(listener, tls, router(), stopped));
    Ok(())
}

/// A TLS listener for the webhook, with the serving certificate (chain) and key in PEM.
pub async fn bind(
    address: SocketAddr,
    certificate_pem: &str,
    key_pem: &str,
) -> Result<(TcpListener, tokio_rustls::TlsAcceptor), Error> {
    let invalid = |e: &dyn std::fmt::Display| Error::Certificate(e.to_string());
    let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid(&e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind(address).await.map_err(|source| Error::Listen { address, source })?;
    Ok((listener, tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Serves `router` (the admission reviews, [`router`]) over TLS on `listener` until `stopped`
/// resolves.
pub async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: Router,
    stopped: impl Future<Output = ()>,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto::Builder,
        service::TowerToHyperService,
    };
    let service = TowerToHyperService::new(router);
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = &mut stopped => break,
        };
        let (tls, service) = (tls.clone(), service.clone());
        tokio::spawn(async move {
            // A client that fails the handshake (a port scan, a wrong CA) is simply dropped.
            let Ok(stream) = tls.accept(stream).await else { return };
            let _ = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn review(object: Value) -> AdmissionReview<DynamicObject> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "dps.iot.dev", "version": "v1beta1", "kind": "EnrollmentGroup"},
                "resource": {"group": "dps.iot.dev", "version": "v1beta1", "resource": "enrollmentgroups"},
                "name": "thermostats",
                "namespace": "default",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": object,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn group(tags: Value) -> Value {
        json!({
            "apiVersion": "dps.iot.dev/v1beta1",
            "kind": "EnrollmentGroup",
            "metadata": {"name": "thermostats", "namespace": "default"},
            "spec": {"initialTwin": {"tags": tags}},
        })
    }

    fn response(review: &AdmissionReview<DynamicObject>) -> Value {
        serde_json::to_value(review).unwrap()["response"].clone()
    }

    #[test]
    fn twins_iot_hub_would_refuse_are_denied_naming_the_place() {
        let denied = response(&answer(review(group(json!({"site": {"floor.3": 1}})))));
        assert_eq!(denied["allowed"], json!(false));
        assert_eq!(denied["uid"], json!("705ab4f5-6393-11e8-b7cc-42010a800002"));
        let message = denied["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("spec.initialTwin.tags.site") && message.contains("\"floor.3\""),
            "{message}"
        );

        let allowed = response(&answer(review(group(json!({"site": {"floor": 3}})))));
        assert_eq!(allowed["allowed"], json!(true));
        let mut update = review(group(json!({"site": {"floor.3": 1}})));
        if let Some(request) = update.request.as_mut() {
            request.old_object = request.object.clone();
        }
        assert_eq!(
            response(&answer(update))["allowed"],
            json!(true),
            "an update that leaves a twin as it was, e.g. the operator removing its finalizer"
        );
        let without_twin = json!({"apiVersion": "dps.iot.dev/v1beta1", "kind": "EnrollmentGroup", "metadata": {"name": "g"}, "spec": {}});
        assert_eq!(response(&answer(review(without_twin)))["allowed"], json!(true));
    }

    #[test]
    fn a_delete_is_refused_only_while_the_protection_is_in_force() {
        let stored = |spec: Value, status: Value| json!({"spec": spec, "status": status});
        let check = |object: &Value| check_deletion("IndividualEnrollment", "iot", "boiler", object);
        let by_spec = check(&stored(json!({"deletionProtection": true}), json!({}))).unwrap_err();
        assert!(by_spec.contains("IndividualEnrollment iot/boiler is protected from deletion"), "{by_spec}");
        assert!(by_spec.contains("its spec.deletionProtection is true"), "{by_spec}");
        assert!(
            by_spec.contains(
                r#"kubectl patch individualenrollment boiler -n iot --type merge -p '{"spec":{"deletionProtection":false}}'"#
            ),
            "{by_spec}"
        );
        let by_default = check(&stored(json!({}), json!({"deletionProtected": true}))).unwrap_err();
        assert!(
            by_default.contains("its connection's enrollmentDefaults.deletionProtection"),
            "{by_default}"
        );
        // The spec's own `false` wins over a default the status still records.
        assert!(
            check(&stored(json!({"deletionProtection": false}), json!({"deletionProtected": true}))).is_ok()
        );
        assert!(check(&stored(json!({}), json!({}))).is_ok());
        assert!(check(&json!({"spec": {}})).is_ok(), "no status yet");
    }
}
