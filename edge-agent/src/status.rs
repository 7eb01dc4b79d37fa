//! The agent's local HTTP endpoint, for an operator on the host (or its LAN) when the cloud
//! cannot see it: `/healthz`, `/metrics`, `/v1/status`, `/v1/events/recent` and
//! `POST /v1/rotate`. It reads the buffer through its thread, like everything else.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
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
    pub events_dropped: u64,
    pub buffer: BufferStatus,
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
            buffer,
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

/// The routes.
pub(crate) fn router(state: Arc<StatusState>) -> axum::Router {
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
