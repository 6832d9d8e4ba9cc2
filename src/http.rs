//! The operator's own HTTP endpoints: `/livez`, `/readyz` and `/metrics`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What the endpoints report, shared with the controllers.
pub struct Health {
    pub metrics: Metrics,
    /// The watches have listed everything once (and, with leader election, this replica leads).
    ready: AtomicBool,
    stopping: watch::Sender<bool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Metrics::default())
    }
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, ready: AtomicBool::new(false), stopping: watch::channel(false).0 }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !*self.stopping.borrow()
    }

    /// Starts a graceful shutdown: `/readyz` turns false and the controllers finish what they do.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Health::stop`] was called.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.is_ready() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        health.metrics.encode(),
    )
}

/// Binds the endpoints' address, so that a port in use fails the start, loudly, rather than
/// leaving the operator without probes.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves the endpoints on `listener` until the health's shutdown.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>) -> std::io::Result<()> {
    let stopped = health.stopped();
    axum::serve(listener, router(health)).with_graceful_shutdown(stopped).await
}

impl crate::dps::RequestObserver for Health {
    fn request(&self, host: &str, operation: &str, status: Option<u16>, duration: std::time::Duration) {
        self.metrics.request(host, operation, status, duration);
    }

    fn waited(&self, duration: std::time::Duration) {
        self.metrics.waited(duration);
    }

    fn bulk_sent(&self, items: usize) {
        self.metrics.bulk_sent(items);
    }

    fn rate_limit(&self, host: &str, per_minute: u32) {
        self.metrics.rate_limit(host, per_minute);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn readyz(health: &Arc<Health>) -> StatusCode {
        let request = axum::http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap();
        router(health.clone()).oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn readiness_follows_the_watches_and_ends_with_a_stop() {
        let health = Arc::new(Health::default());
        assert_eq!(readyz(&health).await, StatusCode::SERVICE_UNAVAILABLE, "not before the watches listed");
        health.set_ready(true);
        assert_eq!(readyz(&health).await, StatusCode::OK);
        let stopped = health.stopped();
        health.stop();
        assert_eq!(readyz(&health).await, StatusCode::SERVICE_UNAVAILABLE, "not ready once stopping");
        tokio::time::timeout(std::time::Duration::from_secs(1), stopped)
            .await
            .expect("the controllers hear the stop");
    }
}
