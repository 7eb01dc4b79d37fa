//! Routes, handlers, and the one place errors become status codes (including the request
//! timeout and wrong methods). The router is built from the operations listed, with their
//! parameters, in [`crate::openapi::ENDPOINTS`]: a route cannot exist without its
//! documentation, and a documented operation without a handler stops the service at
//! start-up (and fails the unit tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::json;
use sightline_shared::track::{TrackKey, TrackRecord};
use sightline_shared::{DetectionEvent, EventId, Timestamp};
use uuid::Uuid;

use crate::auth::Clients;
use crate::console;
use crate::metrics::{Metrics, Route, RouteStatus};
use crate::model::Format;
use crate::openapi::{self, EXPORT_PATH, Endpoint};
use crate::params::{self, ParamError};
use crate::replay::{Progress, Replays, StartError};
use crate::snapshots::{ServeError, Snapshots};
use crate::store::{StatsRows, Store, StoreError};
use sightline_runtime::objects::ObjectError;
use sightline_shared::snapshot::Owner;

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub store: Store,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub default_limit: u32,
    pub max_limit: u32,
    pub clients: Clients,
    pub replays: Replays,
    /// Places for exports running at once; none left is a 429.
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Places for the other ClickHouse queries running at once.
    pub queries: Arc<tokio::sync::Semaphore>,
    pub readiness: Readiness,
    /// Where snapshots are served from; `None` with `[snapshots] enabled = false`.
    pub snapshots: Option<Snapshots>,
}

impl AppState {
    /// What the OpenAPI document states about this service.
    pub(crate) fn document_settings(&self) -> openapi::Settings {
        let replay = self.replays.config();
        openapi::Settings {
            auth: self.clients.enabled(),
            limits: params::Limits {
                max_limit: self.max_limit,
                max_rate: replay.max_rate,
            },
            replay_prefix: replay.subject_prefix.clone(),
        }
    }
}

/// Everything a handler can fail with.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The caller's mistake in a parameter: 400 with the parameter named.
    BadParameter(ParamError),
    /// No or a wrong bearer token: 401.
    Unauthorized,
    /// Switched off by config: 403.
    Forbidden(String),
    /// Nothing there: 404.
    NotFound(String),
    /// The route exists, the method does not: 405.
    MethodNotAllowed,
    /// Too much already running: 429.
    Busy(String),
    /// The answer would be larger than the service returns: 400 saying how to narrow it.
    TooLarge(String),
    /// Past the request timeout: 504.
    Timeout,
    /// A store other than ClickHouse is unreachable (the snapshot store): 503; the detail
    /// is logged.
    Unavailable(String),
    /// Our storage failed: 503 or 500 with a generic message; the detail is logged.
    Store(StoreError),
    /// Our own failure: 500 with a generic message; the detail is logged.
    Internal(String),
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        Self::BadParameter(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownTimeZone(_) => Self::BadParameter(ParamError::new(
                "tz",
                "is not a time zone ClickHouse knows (use an IANA name such as Europe/Berlin)",
            )),
            StoreError::TooLarge(limit) => Self::TooLarge(format!(
                "the answer has more than {limit} rows: narrow the time range or the filter \
                 (for stats, a larger interval or fewer group_by fields; for events, an export)"
            )),
            other => Self::Store(other),
        }
    }
}

fn error_body(code: &str, message: &str) -> Json<serde_json::Value> {
    Json(json!({"error": {"code": code, "message": message}}))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::BadParameter(e) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"code": "bad_parameter", "parameter": e.parameter, "message": e.message}})),
            )
                .into_response(),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                error_body("unauthorized", "send Authorization: Bearer <token>"),
            )
                .into_response(),
            Self::Forbidden(message) => {
                (StatusCode::FORBIDDEN, error_body("forbidden", &message)).into_response()
            }
            Self::NotFound(message) => {
                (StatusCode::NOT_FOUND, error_body("not_found", &message)).into_response()
            }
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                error_body("method_not_allowed", "this route does not take that method"),
            )
                .into_response(),
            Self::Busy(message) => {
                (StatusCode::TOO_MANY_REQUESTS, error_body("busy", &message)).into_response()
            }
            Self::TooLarge(message) => {
                (StatusCode::BAD_REQUEST, error_body("too_large", &message)).into_response()
            }
            Self::Timeout | Self::Store(StoreError::TimedOut(_)) => (
                StatusCode::GATEWAY_TIMEOUT,
                error_body("timeout", "the request took longer than the service allows"),
            )
                .into_response(),
            Self::Store(error @ StoreError::OverLimit(_)) => {
                tracing::warn!(%error, "query over its limits");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    error_body(
                        "over_limit",
                        "the query exceeded the service's time or memory limit: narrow the filter or the range",
                    ),
                )
                    .into_response()
            }
            Self::Store(error @ StoreError::Unavailable(_)) => {
                tracing::error!(%error, "storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    error_body(
                        "unavailable",
                        "the event store is unavailable, try again later",
                    ),
                )
                    .into_response()
            }
            Self::Unavailable(error) => {
                tracing::error!(%error, "snapshot store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    error_body(
                        "unavailable",
                        "the snapshot store is unavailable, try again later",
                    ),
                )
                    .into_response()
            }
            Self::Internal(error) => {
                tracing::error!(%error, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error_body("internal", "internal error"),
                )
                    .into_response()
            }
            Self::Store(error) => {
                tracing::error!(%error, "query failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error_body("internal", "internal error"),
                )
                    .into_response()
            }
        }
    }
}

/// The handler of a documented operation; `None` for one this build does not serve.
fn handler(endpoint: &Endpoint, document: &bytes::Bytes) -> Option<MethodRouter<AppState>> {
    Some(match (endpoint.method, endpoint.path) {
        ("get", "/v1/events") => get(list_events),
        ("get", EXPORT_PATH) => get(export),
        ("get", "/v1/events/{id}") => get(get_event),
        ("get", "/v1/events/{id}/snapshot") => get(event_snapshot),
        ("get", "/v1/tracks/{id}/snapshot") => get(track_snapshot),
        ("get", "/v1/cameras") => get(cameras),
        ("get", "/v1/edges") => get(list_edges),
        ("get", "/v1/edges/{id}") => get(get_edge),
        ("get", "/v1/stats") => get(stats),
        ("get", "/v1/tracks") => get(list_tracks),
        ("get", "/v1/tracks/{id}") => get(get_track),
        ("get", "/v1/replay") => get(list_replays),
        ("post", "/v1/replay") => post(start_replay),
        ("get", "/v1/replay/{id}") => get(get_replay),
        ("delete", "/v1/replay/{id}") => delete(cancel_replay),
        ("get", "/healthz") => get(|| async { Json(json!({"status": "ok"})) }),
        ("get", "/readyz") => get(readyz),
        ("get", "/metrics") => get(metrics),
        ("get", "/") => get(|| async { console::page() }),
        ("get", "/assets/{file}") => get(console_asset),
        ("get", "/openapi.json") => {
            let document = document.clone();
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.clone(),
                )
            })
        }
        _ => return None,
    })
}

/// The application router, with authentication, metrics and a request timeout: one route
/// per operation of [`openapi::ENDPOINTS`].
///
/// # Panics
/// If an operation of the endpoint table has no handler (a build that documents what it
/// does not serve).
pub(crate) fn router(state: AppState, request_timeout: Duration) -> Router {
    // Exports stream for as long as they need (ClickHouse bounds them); the rest is timed.
    let (mut timed, mut streamed) = (Router::new(), Router::new());
    // Serialised once: every request is served the same bytes.
    let document = bytes::Bytes::from(openapi::document(&state.document_settings()).to_string());
    for endpoint in openapi::ENDPOINTS {
        let Some(handler) = handler(endpoint, &document) else {
            panic!(
                "{} {} is documented but has no handler",
                endpoint.method, endpoint.path
            );
        };
        if endpoint.path == EXPORT_PATH {
            streamed = streamed.route(endpoint.path, handler);
        } else {
            timed = timed.route(endpoint.path, handler);
        }
    }
    let timed = timed.layer(middleware::from_fn_with_state(request_timeout, time_limit));
    streamed
        .merge(timed)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// A JSON body serialized off the async workers: a page of 20,000 events or 100,000
/// buckets takes long enough to stall the probes sharing a worker. Typed, never through
/// `serde_json::Value`, which would hold several times the answer's size.
async fn json_body<T: Serialize + Send + 'static>(value: T) -> Result<Response, ApiError> {
    let bytes = tokio::task::spawn_blocking(move || serde_json::to_vec(&value))
        .await
        .map_err(|e| ApiError::Internal(format!("serializing the answer panicked: {e}")))?
        .map_err(|e| ApiError::Internal(format!("serializing the answer failed: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bytes),
    )
        .into_response())
}

/// A place among the ClickHouse queries allowed at once, waited for up to [`QUEUE_WAIT`]
/// (then 429): a flood of heavy requests queues here instead of in ClickHouse, which stays
/// free to answer the rest (the readiness ping among them).
async fn query_place(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(QUEUE_WAIT, Arc::clone(&state.queries).acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError::Busy(
            "as many queries as the service allows are running: try again shortly".into(),
        )),
    }
}

/// The longest a request waits for a place among the queries running at once.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct EventPage {
    count: usize,
    events: Vec<ApiEvent>,
    next_cursor: Option<String>,
}

/// An event as the API shows it: with `snapshot_url` when its picture is in the cloud.
#[derive(Serialize)]
struct ApiEvent {
    #[serde(flatten)]
    event: DetectionEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_url: Option<String>,
}

/// Where the snapshot of event `id` is served.
fn snapshot_url(id: EventId) -> String {
    format!("/v1/events/{id}/snapshot")
}

/// `events` with their `snapshot_url`s: one look-up for the events that have a snapshot on
/// their edge (only those can have one in the cloud).
async fn with_snapshot_urls(
    state: &AppState,
    events: Vec<DetectionEvent>,
) -> Result<Vec<ApiEvent>, ApiError> {
    let with_snapshot: Vec<EventId> = events
        .iter()
        .filter(|e| e.snapshot.is_some())
        .map(|e| e.event_id)
        .collect();
    let in_cloud = if state.snapshots.is_some() && !with_snapshot.is_empty() {
        state.store.events_in_cloud(&with_snapshot).await?
    } else {
        Default::default()
    };
    Ok(events
        .into_iter()
        .map(|event| ApiEvent {
            snapshot_url: in_cloud
                .contains(&event.event_id)
                .then(|| snapshot_url(event.event_id)),
            event,
        })
        .collect())
}

async fn list_events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = params::list_query(query.as_deref(), state.default_limit, state.max_limit)?;
    let place = query_place(&state).await?;
    let page = state
        .store
        .list_events(&q.filter, q.sort, q.cursor, q.limit)
        .await?;
    let events = with_snapshot_urls(&state, page.events).await?;
    drop(place);
    state
        .metrics
        .returned("/v1/events")
        .inc_by(events.len() as u64);
    json_body(EventPage {
        count: events.len(),
        events,
        next_cursor: page.next.map(|c| c.encode()),
    })
    .await
}

async fn export(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = params::export_query(query.as_deref())?;
    let permit = Arc::clone(&state.exports)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::Busy(
                "as many exports as the service allows are running: try again when one ends".into(),
            )
        })?;
    let deadline = state.store.export_deadline();
    let mut cursor = state.store.export(&q.filter, q.sort, q.limit)?;
    // The first row decides the status: a failing query is a 5xx, not a cut-off 200.
    let first = state.store.call_until(deadline, cursor.next()).await?;
    let content_type = match q.format {
        Format::Ndjson => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let body = crate::export::body(
        q.format,
        first,
        cursor,
        state.metrics.returned(EXPORT_PATH),
        deadline,
        permit,
    );
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response())
}

fn event_id(id: &str) -> Result<EventId, ParamError> {
    id.parse().map_err(|_| {
        ParamError::new(
            "id",
            "must be a UUID such as 0190b1d2-0000-7000-8000-000000000000",
        )
    })
}

/// One event and the tracks its detections belong to.
#[derive(Serialize)]
struct EventDetail {
    #[serde(flatten)]
    event: ApiEvent,
    tracks: Vec<TrackLink>,
}

/// A track an event's detection belongs to: its id, and where to read it (404 there until
/// the edge sent the track's first record).
#[derive(Serialize)]
struct TrackLink {
    id: String,
    label: String,
    href: String,
}

impl EventDetail {
    fn new(event: ApiEvent) -> Self {
        let mut tracks: Vec<TrackLink> = Vec::new();
        for detection in &event.event.detections {
            let Some(track_id) = detection.track_id.filter(|&id| id > 0) else {
                continue;
            };
            let id = TrackKey {
                edge_id: event.event.edge_id.clone(),
                track_id,
            }
            .to_string();
            if tracks.iter().all(|t| t.id != id) {
                tracks.push(TrackLink {
                    href: format!("/v1/tracks/{id}"),
                    id,
                    label: detection.label.clone(),
                });
            }
        }
        Self { event, tracks }
    }
}

async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventDetail>, ApiError> {
    params::none(query.as_deref())?;
    let id = event_id(&id)?;
    let _place = query_place(&state).await?;
    let event = state
        .store
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))?;
    let event = with_snapshot_urls(&state, vec![event])
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("an event went missing".into()))?;
    state.metrics.returned("/v1/events/{id}").inc();
    Ok(Json(EventDetail::new(event)))
}

async fn event_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let width = params::snapshot_query(query.as_deref())?;
    let id = event_id(&id)?;
    serve_snapshot(
        &state,
        Owner::Event(id),
        "",
        width,
        &headers,
        &format!("event {id}"),
    )
    .await
}

async fn track_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let width = params::snapshot_query(query.as_deref())?;
    let key = track_key(&id)?;
    serve_snapshot(
        &state,
        Owner::Track(key.track_id),
        &key.edge_id,
        width,
        &headers,
        &format!("track {key}"),
    )
    .await
}

/// The snapshot of `owner` (a track's of `edge_id`): its row, then the picture.
async fn serve_snapshot(
    state: &AppState,
    owner: Owner,
    edge_id: &str,
    width: Option<u32>,
    headers: &axum::http::HeaderMap,
    what: &str,
) -> Result<Response, ApiError> {
    let Some(snapshots) = &state.snapshots else {
        return Err(ApiError::NotFound(
            "this service serves no snapshots ([snapshots] enabled = false)".into(),
        ));
    };
    let place = query_place(state).await?;
    let row = state
        .store
        .snapshot(owner, edge_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no snapshot of {what} in the cloud")))?;
    drop(place);
    snapshots
        .respond(row, owner, width, headers, &state.metrics, what)
        .await
        .map_err(|e| match e {
            ServeError::Gone(message) => ApiError::NotFound(message),
            ServeError::Store(ObjectError::Unavailable(detail)) => ApiError::Unavailable(detail),
            ServeError::Store(ObjectError::Failed(detail)) | ServeError::Internal(detail) => {
                ApiError::Internal(detail)
            }
        })
}

fn track_key(id: &str) -> Result<TrackKey, ParamError> {
    id.parse().map_err(|_| {
        ParamError::new(
            "id",
            "must be <edge_id>:<track_id>, such as edge-01:42 (a track's id in /v1/tracks)",
        )
    })
}

/// A track as the API shows it: its id, its length in view, and its latest record.
#[derive(Serialize)]
struct Track {
    id: String,
    duration_secs: f64,
    #[serde(flatten)]
    record: TrackRecord,
}

impl From<TrackRecord> for Track {
    fn from(record: TrackRecord) -> Self {
        Self {
            id: record.key().to_string(),
            duration_secs: record.duration_ms() as f64 / 1000.0,
            record,
        }
    }
}

#[derive(Serialize)]
struct TrackList {
    count: usize,
    tracks: Vec<Track>,
    next_cursor: Option<String>,
}

async fn list_tracks(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = params::tracks_query(query.as_deref(), state.default_limit, state.max_limit)?;
    let place = query_place(&state).await?;
    let page = state
        .store
        .list_tracks(&q.filter, q.sort, q.cursor.as_ref(), q.limit)
        .await?;
    drop(place);
    state
        .metrics
        .returned("/v1/tracks")
        .inc_by(page.tracks.len() as u64);
    json_body(TrackList {
        count: page.tracks.len(),
        tracks: page.tracks.into_iter().map(Track::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    })
    .await
}

async fn get_track(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Track>, ApiError> {
    params::none(query.as_deref())?;
    let key = track_key(&id)?;
    let _place = query_place(&state).await?;
    let track = state
        .store
        .get_track(&key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no track {key}")))?;
    state.metrics.returned("/v1/tracks/{id}").inc();
    Ok(Json(Track::from(track)))
}

#[derive(Serialize)]
struct CameraList {
    count: usize,
    cameras: Vec<Camera>,
}

#[derive(Serialize)]
struct Camera {
    camera_id: String,
    edges: Vec<String>,
    first_seen: String,
    last_seen: String,
    events: u64,
}

async fn cameras(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let range = params::cameras_query(query.as_deref())?;
    let place = query_place(&state).await?;
    let rows = state.store.cameras(&range).await?;
    drop(place);
    let cameras: Vec<_> = rows
        .into_iter()
        .map(|c| Camera {
            camera_id: c.camera_id,
            edges: c.edges,
            first_seen: Timestamp::from_millis(c.first_seen_ms).to_rfc3339(),
            last_seen: Timestamp::from_millis(c.last_seen_ms).to_rfc3339(),
            events: c.events,
        })
        .collect();
    json_body(CameraList {
        count: cameras.len(),
        cameras,
    })
    .await
}

#[derive(Serialize)]
struct EdgeList {
    count: usize,
    edges: Vec<crate::fleet::Edge>,
}

async fn list_edges(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (online, sort) = params::edges_query(query.as_deref())?;
    let place = query_place(&state).await?;
    let rows = state.store.edges(None).await?;
    drop(place);
    let edges = crate::fleet::arrange(rows, online, sort);
    json_body(EdgeList {
        count: edges.len(),
        edges,
    })
    .await
}

async fn get_edge(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<crate::fleet::Edge>, ApiError> {
    params::none(query.as_deref())?;
    if !sightline_shared::validate::is_identifier(&id) {
        return Err(ParamError::new("id", "must be an edge id: 1-64 of A-Z a-z 0-9 _ -").into());
    }
    let _place = query_place(&state).await?;
    let row = state
        .store
        .edges(Some(&id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("no heartbeat from edge {id}")))?;
    Ok(Json(crate::fleet::Edge::from(row)))
}

#[derive(Serialize)]
struct Stats {
    measure: &'static str,
    interval: &'static str,
    tz: String,
    group_by: String,
    since: String,
    until: String,
    source: &'static str,
    buckets: Vec<Bucket>,
}

/// One bucket: `detections` for the detections measure; `objects` and the dwell times for
/// the objects measure.
#[derive(Serialize)]
struct Bucket {
    start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    camera_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    objects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dwell_p50_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dwell_p95_secs: Option<f64>,
    max_confidence: f32,
}

async fn stats(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let now = sightline_runtime::now();
    let q = params::stats_query(query.as_deref(), now)?;
    let place = query_place(&state).await?;
    let (source, rows) = state.store.stats(&q).await?;
    drop(place);
    let bucket = |start_ms: i64, camera_id: String, label: String, max_confidence: f32| Bucket {
        start: Timestamp::from_millis(start_ms).to_rfc3339(),
        camera_id: q.by_camera.then_some(camera_id),
        label: q.by_label.then_some(label),
        zone: None,
        detections: None,
        objects: None,
        dwell_p50_secs: None,
        dwell_p95_secs: None,
        max_confidence,
    };
    let buckets: Vec<_> = match rows {
        StatsRows::Detections(rows) => rows
            .into_iter()
            .map(|r| Bucket {
                detections: Some(r.detections),
                ..bucket(r.start_ms, r.camera_id, r.label, r.max_confidence)
            })
            .collect(),
        StatsRows::Objects(rows) => rows
            .into_iter()
            .map(|r| Bucket {
                zone: q.by_zone.then_some(r.zone),
                objects: Some(r.objects),
                dwell_p50_secs: Some(r.dwell_p50_ms as f64 / 1000.0),
                dwell_p95_secs: Some(r.dwell_p95_ms as f64 / 1000.0),
                ..bucket(r.start_ms, r.camera_id, r.label, r.max_confidence)
            })
            .collect(),
    };
    let groups: Vec<&str> = [
        (q.by_camera, "camera"),
        (q.by_label, "label"),
        (q.by_zone, "zone"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let group_by = if groups.is_empty() {
        "none".to_owned()
    } else {
        groups.join(",")
    };
    json_body(Stats {
        measure: q.measure.as_str(),
        interval: q.interval.as_str(),
        tz: q.tz,
        group_by,
        since: q.since.to_rfc3339(),
        until: q.until.to_rfc3339(),
        source: source.as_str(),
        buckets,
    })
    .await
}

async fn start_replay(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let config = state.replays.config();
    let q = params::replay_query(query.as_deref(), &config.subject_prefix, config.max_rate)?;
    let progress = state.replays.start(q).map_err(|e| match e {
        StartError::Disabled => ApiError::Forbidden(e.to_string()),
        StartError::Busy(_) => ApiError::Busy(e.to_string()),
    })?;
    let location = format!("/v1/replay/{}", progress.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(progress),
    )
        .into_response())
}

async fn list_replays(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    params::none(query.as_deref())?;
    Ok(Json(json!({"replays": state.replays.list()})))
}

async fn get_replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Progress>, ApiError> {
    replay_by_id(&id, query.as_deref(), |id| state.replays.get(id))
}

async fn cancel_replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Progress>, ApiError> {
    replay_by_id(&id, query.as_deref(), |id| state.replays.cancel(id))
}

/// Checks the id and the (empty) query string, then applies `action` to that replay.
fn replay_by_id(
    id: &str,
    query: Option<&str>,
    action: impl FnOnce(Uuid) -> Option<Progress>,
) -> Result<Json<Progress>, ApiError> {
    params::none(query)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ParamError::new("id", "must be the UUID POST /v1/replay returned"))?;
    let progress = action(id).ok_or_else(|| ApiError::NotFound(format!("no replay {id}")))?;
    Ok(Json(progress))
}

/// Ready when ClickHouse answered the last background ping ([`Readiness`]): the probe
/// itself never waits for ClickHouse, so it answers at once however busy ClickHouse is.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.readiness.ready() {
        Json(json!({"status": "ready", "clickhouse": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "clickhouse": false})),
        )
            .into_response()
    }
}

/// Whether ClickHouse answered the last ping: a task pings it every [`PING_EVERY`], each
/// ping bounded by [`crate::store::PING_TIMEOUT`], and `/readyz` reads the outcome. So the
/// service turns unready at once when ClickHouse refuses, within the ping timeout when it
/// hangs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness(Arc<std::sync::atomic::AtomicBool>);

/// How often the readiness task pings ClickHouse.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(1);

impl Readiness {
    fn ready(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pings `store` every [`PING_EVERY`] until `stop`, logging changes of state.
    pub(crate) async fn watch(self, store: Store, stop: tokio_util::sync::CancellationToken) {
        let mut first = true;
        while !stop.is_cancelled() {
            let outcome = store.ping().await;
            let was_ready = self
                .0
                .swap(outcome.is_ok(), std::sync::atomic::Ordering::Relaxed);
            match outcome {
                Ok(()) if !was_ready && !first => {
                    tracing::info!("ClickHouse answers again: ready");
                }
                Err(error) if was_ready || first => {
                    tracing::warn!(%error, "ClickHouse does not answer");
                }
                _ => {}
            }
            first = false;
            tokio::select! {
                () = tokio::time::sleep(PING_EVERY) => {}
                () = stop.cancelled() => {}
            }
        }
    }
}

/// A file of the console's build, or the API's 404.
async fn console_asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    console::asset(&name)
        .ok_or_else(|| ApiError::NotFound(format!("the console has no asset {name:?}")))
}

async fn metrics(State(state): State<AppState>) -> Response {
    sightline_runtime::metrics_response(&state.registry)
}

/// Lets a request through when authentication is off, the route is open, or the request
/// carries the token of a client with the route's scope (403 for a client without it).
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let holder = state
        .clients
        .holder(request.headers().get(header::AUTHORIZATION));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let caller = match holder {
        Some(client) => {
            let needed = request
                .extensions()
                .get::<MatchedPath>()
                .and_then(|path| openapi::endpoint(request.method().as_str(), path.as_str()))
                .and_then(|endpoint| endpoint.scope);
            if let Some(scope) = needed.filter(|&scope| !client.may(scope)) {
                let mut refused = ApiError::Forbidden(format!(
                    "this token's client ({}) lacks the {} scope this operation needs",
                    client.name,
                    scope.as_str()
                ))
                .into_response();
                refused.extensions_mut().insert(Caller(client.name.clone()));
                return refused;
            }
            client.name.clone()
        }
        None if !state.clients.enabled() || route.as_deref().is_some_and(openapi::is_open) => {
            "anonymous".to_owned()
        }
        None => {
            let mut refused = ApiError::Unauthorized.into_response();
            refused
                .extensions_mut()
                .insert(Caller("refused".to_owned()));
            return refused;
        }
    };
    let mut response = next.run(request).await;
    response.extensions_mut().insert(Caller(caller));
    response
}

/// Who made a request, for the access log: a token's name, `anonymous` (authentication off,
/// or an open route) or `refused`.
#[derive(Debug, Clone)]
struct Caller(String);

/// Answers 504 when the rest of the stack takes longer than `limit`.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Counts and times every request by its route template, and writes the access log: one
/// INFO line per request (target `sightline_query::access`) with the caller's token name
/// (never the token), method, route, status and duration.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let caller = response
        .extensions()
        .get::<Caller>()
        .map_or("anonymous", |c| c.0.as_str());
    tracing::info!(
        target: "sightline_query::access",
        caller,
        %method,
        route = route.as_str(),
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
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

#[cfg(test)]
mod tests {
    //! Handler-level tests through `Router::oneshot`: routing, authentication and the error
    //! mapping, with a store whose ClickHouse is unreachable (the API against real servers
    //! is in `tests/tests/it/api_*.rs`).

    use axum::http::Method;
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::{Client, ReplayConfig, Scope};
    use crate::store::Limits;
    use serde_json::Value;

    /// The API with a store pointing at a closed loopback port, and `tokens` (none: off),
    /// each a client with every scope.
    fn app(tokens: &[&str]) -> Router {
        app_with(
            tokens
                .iter()
                .enumerate()
                .map(|(i, t)| Client {
                    name: format!("token-{}", i + 1),
                    token: (*t).to_owned(),
                    scopes: Scope::ALL.to_vec(),
                })
                .collect(),
        )
    }

    /// The API with a store pointing at a closed loopback port, and `clients`.
    fn app_with(clients: Vec<Client>) -> Router {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let client = clickhouse::Client::default().with_url("http://127.0.0.1:9");
        let store = Store::new(
            client,
            Limits {
                query_timeout_secs: 5,
                export_timeout_secs: 5,
                max_memory_bytes: 1 << 30,
                max_result_rows: 100_000,
                call_timeout: Duration::from_secs(5),
            },
        );
        let replays = Replays::new(
            ReplayConfig::default(),
            None,
            store.clone(),
            tokio_util::sync::CancellationToken::new(),
            metrics.replay_published.clone(),
        );
        let state = AppState {
            store,
            metrics,
            registry: Arc::new(registry),
            default_limit: 100,
            // Not the config's default: the document must state the state's bound.
            max_limit: 900,
            clients: Clients::new(clients),
            replays,
            exports: Arc::new(tokio::sync::Semaphore::new(2)),
            queries: Arc::new(tokio::sync::Semaphore::new(4)),
            readiness: Readiness::default(),
            snapshots: None,
        };
        router(state, Duration::from_secs(5))
    }

    async fn call(
        app: &Router,
        method: Method,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("the router answers");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// A path of the endpoint table with its `{id}` filled in.
    fn concrete(path: &str) -> String {
        let script = crate::console::ASSETS
            .iter()
            .find(|(path, _, _)| path.ends_with(".js"))
            .map(|(path, _, _)| path.trim_start_matches("/assets/"))
            .expect("the console has a script");
        path.replace("{id}", "0190a0e4-4f0e-7c1a-9d3e-2b4c6d8e0f11")
            .replace("{file}", script)
    }

    fn method(endpoint: &Endpoint) -> Method {
        Method::from_bytes(endpoint.method.to_ascii_uppercase().as_bytes()).expect("method")
    }

    #[tokio::test]
    async fn the_console_is_served_open_with_its_policy_and_cache_headers() {
        // With tokens on: the page and its assets hold no data, so they need none.
        let app = app(&["s3cret"]);
        let get = |uri: String| {
            let app = app.clone();
            async move {
                app.oneshot(Request::get(uri).body(Body::empty()).expect("request"))
                    .await
                    .expect("the router answers")
            }
        };
        let page = get("/".into()).await;
        assert_eq!(page.status(), StatusCode::OK);
        let headers = page.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        let policy = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ASCII");
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        for (path, kind, bytes) in crate::console::ASSETS.iter().filter(|a| a.0 != "/") {
            let asset = get((*path).to_owned()).await;
            assert_eq!(asset.status(), StatusCode::OK, "{path}");
            assert_eq!(asset.headers()[header::CONTENT_TYPE], *kind, "{path}");
            assert_eq!(
                asset.headers()[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable"
            );
            let body = axum::body::to_bytes(asset.into_body(), 1 << 24)
                .await
                .expect("body");
            assert_eq!(&body[..], *bytes, "{path}");
        }
        // An unknown asset is the API's 404, and other paths are not the console.
        let (status, body) = call(&app, Method::GET, "/assets/nothing.js", None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &"not_found".into())
        );
        let (status, _) = call(&app, Method::GET, "/index.html", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "not an open route");
    }

    #[tokio::test]
    async fn every_documented_operation_is_routed() {
        let app = app(&[]);
        for endpoint in openapi::ENDPOINTS {
            let (status, body) = call(&app, method(endpoint), &concrete(endpoint.path), None).await;
            let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
                || body["error"]["message"] == "no such route";
            assert!(
                !unrouted,
                "{} {} is documented but not routed: {status} {body}",
                endpoint.method, endpoint.path
            );
        }
    }

    #[tokio::test]
    async fn what_is_not_documented_is_not_routed() {
        let app = app(&[]);
        let (status, body) = call(&app, Method::GET, "/v1/nothing", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        // Every method the table does not list for a path is a 405 with the error body.
        for endpoint in openapi::ENDPOINTS {
            for other in [Method::PUT, Method::PATCH] {
                let (status, body) =
                    call(&app, other.clone(), &concrete(endpoint.path), None).await;
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{other} {}",
                    endpoint.path
                );
                assert_eq!(body["error"]["code"], "method_not_allowed");
            }
        }
    }

    #[tokio::test]
    async fn with_tokens_only_the_open_operations_answer_without_one() {
        let app = app(&["s3cret"]);
        for endpoint in openapi::ENDPOINTS {
            let path = concrete(endpoint.path);
            let (status, body) = call(&app, method(endpoint), &path, None).await;
            if endpoint.scope.is_some() {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{} {path}",
                    endpoint.method
                );
                assert_eq!(body["error"]["code"], "unauthorized");
                let (status, _) = call(&app, method(endpoint), &path, Some("wrong")).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{} {path}",
                    endpoint.method
                );
                let (status, _) = call(&app, method(endpoint), &path, Some("s3cret")).await;
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{} {path}",
                    endpoint.method
                );
            } else {
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{} {path}",
                    endpoint.method
                );
            }
        }
    }

    #[tokio::test]
    async fn a_client_reaches_exactly_the_operations_of_its_scopes() {
        let token = |n: u8| format!("{n}123456789abcdef");
        let clients = [
            vec![Scope::Read],
            vec![Scope::Export],
            vec![Scope::Replay],
            vec![Scope::Read, Scope::Export],
        ];
        let app = app_with(
            clients
                .iter()
                .enumerate()
                .map(|(i, scopes)| Client {
                    name: format!("client-{i}"),
                    token: token(i as u8),
                    scopes: scopes.clone(),
                })
                .collect(),
        );
        for (i, scopes) in clients.iter().enumerate() {
            for endpoint in openapi::ENDPOINTS {
                let path = concrete(endpoint.path);
                let (status, body) =
                    call(&app, method(endpoint), &path, Some(&token(i as u8))).await;
                match endpoint.scope {
                    Some(scope) if !scopes.contains(&scope) => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{scopes:?} {path}");
                        assert_eq!(body["error"]["code"], "forbidden");
                        let message = body["error"]["message"].as_str().unwrap_or_default();
                        assert!(
                            message.contains(scope.as_str())
                                && message.contains(&format!("client-{i}")),
                            "{message}"
                        );
                    }
                    _ => assert!(
                        status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                        "{scopes:?} {} {path}: {status} {body}",
                        endpoint.method
                    ),
                }
            }
        }
    }

    #[tokio::test]
    async fn errors_map_to_statuses_in_one_place() {
        let app = app(&[]);
        // ClickHouse unreachable: 503 with the generic message.
        let (status, body) = call(&app, Method::GET, "/v1/events", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");
        let (status, body) = call(&app, Method::GET, "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        // A parameter mistake is caught before the store is asked.
        let (status, body) = call(&app, Method::GET, "/v1/events?limit=0", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["parameter"], "limit");
        let (status, body) = call(&app, Method::GET, "/v1/events/not-a-uuid", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["parameter"], "id");
        // Replay is off unless the config turns it on.
        let replay = "/v1/replay?subject=replay.x&since=0&until=1000";
        let (status, body) = call(&app, Method::POST, replay, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "forbidden");
        // An unknown time zone is the store's finding and the caller's mistake: 400 naming tz.
        let response =
            ApiError::from(StoreError::UnknownTimeZone("Mars/Base".into())).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"]["parameter"], "tz");
    }

    /// A value the parameter's documented schema allows, URL-encoded (`None`: opaque, like a
    /// cursor, which only the service hands out).
    fn documented_valid(schema: &Value) -> Option<String> {
        if let Some(first) = schema["enum"].get(0) {
            return first.as_str().map(str::to_owned);
        }
        if let Some(example) = schema["examples"].get(0) {
            return example.as_str().map(str::to_owned);
        }
        match schema["type"].as_str()? {
            "integer" | "number" => Some(schema["maximum"].to_string()),
            "boolean" => Some("true".into()),
            "array" => Some("a-1".into()),
            "string" => {
                let pattern = schema["pattern"].as_str()?;
                // A subject under the replay prefix: the pattern's literal start, then a token.
                let literal: String = pattern
                    .strip_prefix('^')?
                    .split(['[', '('])
                    .next()?
                    .replace('\\', "");
                (!literal.is_empty()).then(|| format!("{literal}x"))
            }
            _ => None,
        }
    }

    /// Values the parameter's documented schema rules out, URL-encoded.
    fn documented_invalid(schema: &Value) -> Vec<String> {
        if schema["enum"].is_array() {
            return vec!["not-one-of-them".into()];
        }
        let mut out = Vec::new();
        match schema["type"].as_str().unwrap_or_default() {
            "integer" => {
                out.push("x".into());
                if let Some(min) = schema["minimum"].as_u64() {
                    out.push(format!("{}", i128::from(min) - 1));
                }
                if let Some(max) = schema["maximum"].as_u64() {
                    out.push(format!("{}", u128::from(max) + 1));
                }
            }
            "number" => {
                out.push("x".into());
                if let Some(max) = schema["maximum"].as_f64() {
                    out.push(format!("{}", max + 0.5));
                }
            }
            "boolean" => out.push("maybe".into()),
            "array" => {
                let items = &schema["items"];
                if items["pattern"].is_string() {
                    out.push("bad%20id%21".into());
                }
                if let Some(max) = items["maxLength"].as_u64() {
                    out.push("x".repeat(max as usize + 1));
                }
                if let Some(max) = schema["maxItems"].as_u64() {
                    out.push(vec!["a"; max as usize + 1].join(","));
                }
            }
            "string" if schema["pattern"].is_string() => out.push("%21%21".into()),
            "string"
                if schema["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("RFC 3339")) =>
            {
                out.push("yesterday".into());
            }
            _ => {}
        }
        out
    }

    /// Every query parameter of every operation: a value its schema allows is not refused
    /// for that parameter, a value it rules out is a 400 naming it, and the one since/until
    /// rule is stated and enforced the same way everywhere.
    #[tokio::test]
    async fn the_document_states_what_the_parser_enforces() {
        let app = app(&[]);
        let (_, document) = call(&app, Method::GET, "/openapi.json", None).await;
        for endpoint in openapi::ENDPOINTS.iter().filter(|e| !e.query.is_empty()) {
            let operation = &document["paths"][endpoint.path][endpoint.method];
            let params: Vec<&Value> = operation["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter(|p| p["in"] == "query")
                .collect();
            let name = |p: &Value| p["name"].as_str().expect("name").to_owned();
            let required: Vec<(String, String)> = params
                .iter()
                .filter(|p| p["required"] == true)
                .map(|p| {
                    (
                        name(p),
                        documented_valid(&p["schema"]).expect("a valid value"),
                    )
                })
                .collect();
            // The required parameters (valid), with `given` in place of theirs.
            let ask = async |given: &[(&str, &str)]| {
                let mut query: Vec<String> = required
                    .iter()
                    .filter(|(n, _)| given.iter().all(|(g, _)| g != n))
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                query.extend(given.iter().map(|(n, v)| format!("{n}={v}")));
                let uri = format!("{}?{}", concrete(endpoint.path), query.join("&"));
                call(&app, method(endpoint), &uri, None).await
            };
            let what = |p: &str, v: &str| format!("{} {} {p}={v}", endpoint.method, endpoint.path);
            for p in &params {
                let param = name(p);
                if let Some(mut value) = documented_valid(&p["schema"]) {
                    if param == "until" {
                        // Later than any since the other parameters carry.
                        value = "2100-01-01T00:00:00Z".into();
                    }
                    let (status, body) = ask(&[(&param, &value)]).await;
                    assert_ne!(
                        body["error"]["parameter"],
                        param,
                        "{} is allowed by the document: {status} {body}",
                        what(&param, &value)
                    );
                }
                for value in documented_invalid(&p["schema"]) {
                    let (status, body) = ask(&[(&param, &value)]).await;
                    assert_eq!(
                        status,
                        StatusCode::BAD_REQUEST,
                        "{}: {body}",
                        what(&param, &value)
                    );
                    assert_eq!(
                        body["error"]["parameter"],
                        param,
                        "{}",
                        what(&param, &value)
                    );
                }
            }
            // since = until: refused, naming until, as the document says.
            let until = params.iter().find(|p| p["name"] == "until");
            if let Some(until) = until {
                assert!(
                    until["description"]
                        .as_str()
                        .is_some_and(|d| d.contains("later than since")),
                    "{} {}: {until}",
                    endpoint.method,
                    endpoint.path
                );
                let at = "2026-11-22T03:00:00Z";
                let (status, body) = ask(&[("since", at), ("until", at)]).await;
                assert_eq!(
                    status,
                    StatusCode::BAD_REQUEST,
                    "{}: {body}",
                    what("until", at)
                );
                assert_eq!(body["error"]["parameter"], "until", "{}", what("until", at));
            }
        }
    }

    #[tokio::test]
    async fn the_document_asks_for_a_token_exactly_when_the_service_does() {
        let (_, open) = call(&app(&[]), Method::GET, "/openapi.json", None).await;
        assert!(open.get("security").is_none(), "{open}");
        assert!(open["components"].get("securitySchemes").is_none());
        let events = &open["paths"]["/v1/events"]["get"];
        assert!(events["responses"].get("401").is_none());
        let (_, closed) = call(&app(&["s3cret"]), Method::GET, "/openapi.json", None).await;
        assert_eq!(closed["security"], json!([{"bearer": []}]));
        assert!(closed["paths"]["/v1/events"]["get"]["responses"]["401"].is_object());
        assert_eq!(closed["paths"]["/metrics"]["get"]["security"], json!([]));
        // /metrics says what it serves.
        let metrics = &open["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        assert!(
            metrics[sightline_runtime::METRICS_CONTENT_TYPE].is_object(),
            "{metrics}"
        );
        // The configured bounds are stated.
        let limit = &events["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == "limit")
            .expect("limit")["schema"];
        assert_eq!(limit["maximum"], 900);
    }
}
