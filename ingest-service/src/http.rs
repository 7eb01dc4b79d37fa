//! The ingest service's small HTTP endpoint: liveness, readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::sink::Sink;

/// What the handlers need.
#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    pub registry: Arc<Registry>,
    pub sink: Sink,
    pub nats: async_nats::Client,
    /// Set once migrations and retention settings are applied.
    pub schema_ready: Arc<AtomicBool>,
    /// Set once the streams and the durable consumer are declared.
    pub streams_ready: Arc<AtomicBool>,
}

/// `/healthz` (the process runs), `/readyz` (NATS connected, ClickHouse answering, schema
/// current, streams and consumer declared) and `/metrics` (Prometheus text format).
pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let clickhouse = state.sink.ping().await;
    let schema = state.schema_ready.load(Ordering::Relaxed);
    let streams = state.streams_ready.load(Ordering::Relaxed);
    let status = if nats && clickhouse && schema && streams {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"nats": nats, "clickhouse": clickhouse, "schema": schema, "streams": streams})),
    )
}

async fn metrics(State(state): State<HttpState>) -> Response {
    sightline_runtime::metrics_response(&state.registry)
}
