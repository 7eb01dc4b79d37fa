//! The agent's local HTTP endpoint, for an operator on the host (or its LAN) when the cloud
//! cannot see it: `/healthz`, `/metrics`, `/v1/status`, `/v1/events/recent` and
//! `POST /v1/rotate`. It reads the buffer through its thread, like everything else.
//!
//! A web page the host's browser opens must not be able to use it ([`Access`]): every
//! request's `Host` must be a name the endpoint answers to (so DNS rebinding cannot read it),
//! and `POST /v1/rotate` needs the `X-Sightline-Confirm: rotate` header, which no cross-site
//! form or simple request can send, and the bearer token where one is configured.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::buffer::RecentEvent;
use crate::buffer::worker::{BufferHandle, BufferStatus};
use crate::camera::{CameraState, CameraStatus};
use crate::metrics::Metrics;

/// Most events `/v1/events/recent` returns.
pub(crate) const MAX_RECENT: usize = 1000;

/// What the endpoint reads from.
#[derive(Debug)]
pub struct StatusState {
    pub edge_id: String,
    pub cameras: Vec<Arc<CameraState>>,
    pub buffer: BufferHandle,
    pub metrics: Metrics,
    pub registry: Registry,
    pub nats: async_nats::Client,
    pub started: Instant,
    /// The edge clock minus the cloud's, as last measured.
    pub clock_offset: ClockOffset,
}

/// The last measured clock offset, in milliseconds (none until one is measured).
#[derive(Debug)]
pub struct ClockOffset(std::sync::atomic::AtomicI64);

impl Default for ClockOffset {
    fn default() -> Self {
        Self(std::sync::atomic::AtomicI64::new(i64::MIN))
    }
}

impl ClockOffset {
    pub fn set(&self, offset_ms: i64) {
        self.0.store(
            offset_ms.max(i64::MIN + 1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn clear(&self) {
        self.0.store(i64::MIN, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(std::sync::atomic::Ordering::Relaxed)).filter(|o| *o != i64::MIN)
    }
}

/// `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub edge_id: String,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub nats_connected: bool,
    pub cameras: Vec<CameraStatus>,
    pub events_created: u64,
    pub events_published: u64,
    /// Events created and then lost unsent.
    pub events_dropped: u64,
    /// New events the buffer refused (never created).
    pub events_refused: u64,
    /// Unsent events when the agent started.
    pub backlog_at_start: u64,
    /// The edge clock minus the cloud's, in ms, as last measured (none yet: no heartbeat
    /// has measured it, or the cloud did not answer).
    pub clock_offset_ms: Option<i64>,
    pub buffer: BufferStatus,
    /// Snapshots to the cloud since the agent started (the queue itself is under `buffer`).
    pub uploads: UploadTotals,
}

/// Snapshot uploads since the agent started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UploadTotals {
    /// Acknowledged by JetStream.
    pub sent: u64,
    /// Never to be sent (rotated away, file gone or too large, event dropped).
    pub dropped: u64,
    /// Failed attempts, each retried.
    pub errors: u64,
    /// Bytes acknowledged.
    pub bytes: u64,
}

impl StatusState {
    /// The current status (one round trip to the buffer thread).
    pub async fn status(&self) -> Result<Status, String> {
        let buffer = self.buffer.status().await?;
        Ok(Status {
            edge_id: self.edge_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            nats_connected: self.nats.connection_state()
                == async_nats::connection::State::Connected,
            cameras: self.cameras.iter().map(|c| c.snapshot()).collect(),
            events_created: self.metrics.events_created.get(),
            events_published: self.metrics.events_published.get(),
            events_dropped: self.metrics.dropped_total(),
            events_refused: self.metrics.refused_total(),
            backlog_at_start: self.metrics.backlog_at_start.get() as u64,
            clock_offset_ms: self.clock_offset.get(),
            buffer,
            uploads: UploadTotals {
                sent: self.metrics.snapshot_uploads.get(),
                dropped: self.metrics.uploads_dropped_total(),
                errors: self.metrics.snapshot_upload_errors.get(),
                bytes: self.metrics.snapshot_upload_bytes.get(),
            },
        })
    }
}

/// The status at a fixed interval, for the status line and heartbeats.
#[derive(Debug)]
pub(crate) struct StatusTicker {
    ticker: tokio::time::Interval,
    stop: tokio_util::sync::CancellationToken,
}

impl StatusTicker {
    /// Ticks every `every`, the first time after one interval, until `stop` fires.
    pub(crate) fn new(
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        let start = tokio::time::Instant::now() + every;
        Self {
            ticker: tokio::time::interval_at(start, every),
            stop,
        }
    }

    /// The status at the next tick; `None` once stopped. A status the buffer cannot give is
    /// skipped.
    pub(crate) async fn next(&mut self, state: &StatusState) -> Option<Status> {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return None,
                _ = self.ticker.tick() => {}
            }
            if let Ok(status) = state.status().await {
                return Some(status);
            }
        }
    }
}

/// Who may use the endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    /// Host names (without port, lowercase) requests may carry: `localhost`, the loopback
    /// addresses, the listen address, and the names the operator adds.
    hosts: Vec<String>,
    /// The bearer token `POST /v1/rotate` needs, if one is configured.
    token: Option<String>,
}

/// The header a state-changing request must carry (a custom header makes a browser ask
/// before sending it cross-site, and this endpoint never says yes).
pub(crate) const CONFIRM_HEADER: &str = "x-sightline-confirm";

impl Access {
    /// The names a request to `listen` may use, with `extra` from the config.
    pub(crate) fn new(
        listen: std::net::SocketAddr,
        extra: &[String],
        token: Option<String>,
    ) -> Self {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !listen.ip().is_unspecified() {
            hosts.push(match listen {
                std::net::SocketAddr::V4(a) => a.ip().to_string(),
                std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
            });
        }
        hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        Self { hosts, token }
    }

    /// Whether `host` (a `Host` header: a name or address, with or without a port) is one
    /// of ours.
    fn knows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().map(|ip| format!("[{ip}]")),
            None => host.split(':').next().map(str::to_owned),
        };
        name.is_some_and(|name| self.hosts.contains(&name))
    }
}

/// Checks `Host` on every request, and the confirmation header and token on `POST`.
async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !access.knows(host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            format!(
                "Host {host:?} is not a name this endpoint answers to: add it to status.allowed_hosts"
            ),
        );
    }
    if request.method() == Method::POST {
        let confirmed = request
            .headers()
            .get(CONFIRM_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"rotate"));
        if !confirmed {
            return error(
                StatusCode::FORBIDDEN,
                "not_confirmed",
                format!("send the header {CONFIRM_HEADER}: rotate"),
            );
        }
        if let Some(token) = &access.token {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send Authorization: Bearer <status token>".into(),
                );
            }
        }
    }
    next.run(request).await
}

/// Compares in time that does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The routes, behind [`guard`].
pub(crate) fn router(state: Arc<StatusState>, access: Access) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(s): State<Arc<StatusState>>| async move {
                sightline_runtime::metrics_response(&s.registry)
            }),
        )
        .route("/v1/status", get(status))
        .route("/v1/events/recent", get(recent))
        .route("/v1/rotate", post(rotate))
        .with_state(state)
        .layer(middleware::from_fn_with_state(Arc::new(access), guard))
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

fn error(status: StatusCode, error: &'static str, message: String) -> Response {
    (status, Json(ErrorBody { error, message })).into_response()
}

fn unavailable(message: String) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

async fn status(State(s): State<Arc<StatusState>>) -> Response {
    match s.status().await {
        Ok(status) => Json(status).into_response(),
        Err(message) => unavailable(message),
    }
}

#[derive(Debug, Deserialize)]
struct RecentParams {
    limit: Option<String>,
}

async fn recent(State(s): State<Arc<StatusState>>, Query(params): Query<RecentParams>) -> Response {
    let limit = match params.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if (1..=MAX_RECENT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_parameter",
                format!("limit: must be an integer from 1 to {MAX_RECENT}"),
            );
        }
    };
    match s.buffer.recent(limit).await {
        Ok(events) => Json::<Vec<RecentEvent>>(events).into_response(),
        Err(message) => unavailable(message),
    }
}

#[derive(Debug, Deserialize)]
struct RotateParams {
    force: Option<bool>,
}

async fn rotate(
    State(s): State<Arc<StatusState>>,
    params: Result<Query<RotateParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            "force: must be true or false".into(),
        );
    };
    match s.buffer.rotate(params.force.unwrap_or(false)).await {
        Ok(rotation) => Json(rotation).into_response(),
        Err(message) => unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// The guard in front of two stand-in routes (the real ones need a running buffer; the
    /// agent's integration tests use those).
    fn app(access: Access) -> axum::Router {
        axum::Router::new()
            .route("/v1/status", get(|| async { "status" }))
            .route("/v1/rotate", post(|| async { "rotated" }))
            .layer(middleware::from_fn_with_state(Arc::new(access), guard))
    }

    /// `GET /v1/status` or `POST /v1/rotate` with `Host: host` and `headers`.
    async fn call(
        app: &axum::Router,
        method: Method,
        host: &str,
        headers: &[(&str, &str)],
    ) -> StatusCode {
        let path = if method == Method::GET {
            "/v1/status"
        } else {
            "/v1/rotate"
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        app.clone()
            .oneshot(request.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("answer")
            .status()
    }

    #[tokio::test]
    async fn only_known_hosts_are_answered() {
        let access = Access::new(
            "127.0.0.1:9470".parse().expect("addr"),
            &["edge-7.lan".into()],
            None,
        );
        let app = app(access);
        for host in [
            "127.0.0.1:9470",
            "localhost:9470",
            "LOCALHOST",
            "[::1]:9470",
            "edge-7.lan:9470",
        ] {
            assert_eq!(
                call(&app, Method::GET, host, &[]).await,
                StatusCode::OK,
                "{host}"
            );
        }
        // DNS rebinding: the attacker's name resolved to loopback.
        for host in [
            "evil.example:9470",
            "",
            "127.0.0.1.evil.example",
            "[::2]:9470",
        ] {
            assert_eq!(
                call(&app, Method::GET, host, &[]).await,
                StatusCode::MISDIRECTED_REQUEST,
                "{host}"
            );
        }
        // Listening on every address: only loopback and the configured names.
        let open = Access::new("0.0.0.0:9470".parse().expect("addr"), &[], None);
        assert!(open.knows("localhost") && !open.knows("0.0.0.0") && !open.knows("192.168.1.9"));
        let lan = Access::new("192.168.1.9:9470".parse().expect("addr"), &[], None);
        assert!(lan.knows("192.168.1.9:9470"));
    }

    #[tokio::test]
    async fn a_simple_cross_site_post_cannot_rotate() {
        let app = app(Access::new(
            "127.0.0.1:9470".parse().expect("addr"),
            &[],
            None,
        ));
        let host = "127.0.0.1:9470";
        // What a form or a no-cors fetch from any page can send.
        assert_eq!(
            call(&app, Method::POST, host, &[("content-type", "text/plain")]).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&app, Method::POST, host, &[(CONFIRM_HEADER, "rotate")]).await,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_configured_token_guards_rotation() {
        let app = app(Access::new(
            "127.0.0.1:9470".parse().expect("addr"),
            &[],
            Some("s3cret-token".into()),
        ));
        let host = "127.0.0.1:9470";
        let confirm = (CONFIRM_HEADER, "rotate");
        for (authorization, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
            (Some("Bearer s3cret-token"), StatusCode::OK),
        ] {
            let mut headers = vec![confirm];
            headers.extend(authorization.map(|a| ("authorization", a)));
            assert_eq!(
                call(&app, Method::POST, host, &headers).await,
                expected,
                "{authorization:?}"
            );
        }
        // Reading needs no token (the Host check still applies).
        assert_eq!(call(&app, Method::GET, host, &[]).await, StatusCode::OK);
    }
}
