//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (200 while the
//! programs are attached), `/` (links to both).
//!
//! Whoever can reach it must not be able to starve the agent: connections are bounded
//! (past `MAX_CONNECTIONS` new ones are closed at once and counted), a request head must
//! arrive within `HEADER_TIMEOUT` and fit in `MAX_REQUEST_HEAD` bytes, and no connection
//! lives longer than `CONNECTION_LIFETIME` (then it finishes its response and closes).
//! A TLS handshake (`--web-config`) must also finish within `HEADER_TIMEOUT`.
//!
//! With `basic_auth_users` every path but `/healthz` needs the credentials: kubelet's and
//! systemd's probes carry none, and `/healthz` says only whether the programs are attached.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::{
    metrics::Metrics,
    web_config::{BasicAuth, WebSecurity},
};
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

/// Connections served at once; Prometheus needs one, people a few.
pub const MAX_CONNECTIONS: usize = 32;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// hyper's smallest allowed read buffer; a longer request head gets 431 and a close.
pub const MAX_REQUEST_HEAD: usize = 8192;

pub async fn serve(listener: TcpListener, state: Arc<HttpState>, security: Arc<WebSecurity>) {
    let mut app = Router::new().route("/", get(landing)).route("/metrics", get(metrics));
    if let Some(auth) = security.basic_auth.clone() {
        app = app.route_layer(middleware::from_fn_with_state(auth, require_basic_auth));
    }
    // Added after the layer: not behind it.
    let app = app.route("/healthz", get(healthz)).with_state(state.clone());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%err, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.http_connections_refused.inc();
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let tls = security.tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, service).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service).await,
                        // A scanner, a client that does not trust the certificate, or one
                        // without the client certificate asked for.
                        Ok(Err(err)) => debug!(%err, "metrics endpoint: TLS handshake failed"),
                        Err(_) => debug!("metrics endpoint: TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// One HTTP/1 connection, within the limits above.
async fn serve_connection<I>(io: I, service: TowerToHyperService<Router>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    let mut connection = std::pin::pin!(http.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
            // Finish the response in flight (a scrape), then close; a client that
            // does not read it is cut off after a short grace.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}

/// 401 unless the request carries the credentials of a `basic_auth_users` entry.
async fn require_basic_auth(
    State(auth): State<Arc<BasicAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request.headers().get(header::AUTHORIZATION).map(|value| value.as_bytes().to_vec());
    // bcrypt takes tens of milliseconds on purpose: not on the runtime's threads.
    let allowed =
        tokio::task::spawn_blocking(move || auth.allows(given.as_deref())).await.unwrap_or(false);
    if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"pgwire-sensor\"")],
            "unauthorized\n",
        )
            .into_response()
    }
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
