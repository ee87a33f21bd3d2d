//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (200 while the
//! programs are attached), `/` (links to both).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{Html, IntoResponse},
    routing::get,
    Router,
};
use tokio::net::TcpListener;

use super::metrics::Metrics;
use crate::bpf::AttachmentCheck;

pub struct HttpState {
    pub metrics: Metrics,
    /// True from attach until detach.
    pub attached: AtomicBool,
    /// Asks the kernel whether the programs are still attached.
    pub attachment: Option<Arc<AttachmentCheck>>,
}

impl HttpState {
    /// Attached, and the kernel still lists every program at its attach point.
    pub fn healthy(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
            && self.attachment.as_ref().is_none_or(|check| check.healthy())
    }
}

pub async fn serve(listener: TcpListener, state: Arc<HttpState>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    axum::serve(listener, app).await
}

async fn landing() -> Html<&'static str> {
    Html(
        "<html><head><title>pgwire sensor</title></head><body><h1>pgwire sensor</h1>\
         <p><a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a></p>\
         </body></html>",
    )
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

async fn healthz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    if state.healthy() {
        (StatusCode::OK, "ok: programs attached\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not attached: the sensor sees nothing\n")
    }
}
