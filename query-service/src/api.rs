//! Routes, handlers, and the one place errors become status codes.
//!
//! | route                  | what                                          |
//! |------------------------|-----------------------------------------------|
//! | `GET /v1/events`       | events, newest first: `camera`, `since`, `until`, `limit` |
//! | `GET /v1/events/{id}`  | one event                                     |
//! | `GET /healthz`         | liveness: the process answers                 |
//! | `GET /readyz`          | readiness: ClickHouse answers                 |
//! | `GET /metrics`         | Prometheus metrics                            |

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;
use sightline_shared::{DetectionEvent, EventId};
use tower_http::timeout::TimeoutLayer;

use crate::metrics::{Metrics, Route, RouteStatus};
use crate::params::{self, ParamError};
use crate::store::{Store, StoreError};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub default_limit: u32,
    pub max_limit: u32,
}

/// Everything a handler can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// The caller's mistake in a parameter: 400 with the parameter named.
    BadParameter(ParamError),
    /// Nothing there: 404.
    NotFound(String),
    /// Our storage failed: 503 or 500 with a generic message; the detail is logged.
    Store(StoreError),
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        Self::BadParameter(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::BadParameter(e) => (
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "bad_parameter", "parameter": e.parameter, "message": e.message}}),
            ),
            Self::NotFound(message) => (
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "not_found", "message": message}}),
            ),
            Self::Store(error @ StoreError::Unavailable(_)) => {
                tracing::error!(%error, "storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": {"code": "unavailable", "message": "the event store is unavailable, try again later"}}),
                )
            }
            Self::Store(error) => {
                tracing::error!(%error, "query failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": {"code": "internal", "message": "internal error"}}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// The application router, with metrics and a request timeout.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/v1/events", get(list_events))
        .route("/v1/events/{id}", get(get_event))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn list_events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = params::event_filter(query.as_deref(), state.default_limit, state.max_limit)?;
    let events = state.store.list_events(&filter).await?;
    state.metrics.events_returned.inc_by(events.len() as u64);
    Ok(Json(json!({"count": events.len(), "events": events})))
}

async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DetectionEvent>, ApiError> {
    params::pairs(query.as_deref(), &[])?;
    let id: EventId = id.parse().map_err(|_| ParamError {
        parameter: "id".into(),
        message: "must be a UUID such as 0190b1d2-...".into(),
    })?;
    let event = state
        .store
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))?;
    state.metrics.events_returned.inc();
    Ok(Json(event))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ready", "clickhouse": true})).into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not ready", "clickhouse": false})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    sightline_runtime::metrics_response(&state.registry)
}

/// Counts and times every request by its route template.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .latency
        .get_or_create(&Route {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RouteStatus {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
