//! The OpenAPI 3.1 document served at `/openapi.json`, written from the same parameter specs
//! the handlers parse with ([`crate::params`]), the same endpoint table the router is
//! checked against and the service's own settings (whether tokens are required, the
//! configured bounds), so it describes what the running service really does.

use serde_json::{Value, json};

use sightline_shared::subjects::MAX_SUBJECT_LEN;
use sightline_shared::validate::{MAX_ID_LEN, MAX_LABEL_LEN};

use crate::config::Scope;
use crate::params::{self, Kind, Limits, Param};

/// What the document takes from the service's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Tokens are configured: every operation but the open ones needs one.
    pub auth: bool,
    pub limits: Limits,
    /// Replays publish only under this subject prefix.
    pub replay_prefix: String,
}

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Query parameters, by group.
    pub query: &'static [&'static [Param]],
    /// The scope a client needs when authentication is on; `None`: open to everyone.
    pub scope: Option<Scope>,
    /// Success status and the schema of its body (`None`: not JSON).
    pub ok: (u16, Option<&'static str>),
    /// Error statuses this operation can answer with, beyond 401 and 5xx.
    pub errors: &'static [u16],
}

const fn op(
    scope: Scope,
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [&'static [Param]],
    ok: (u16, Option<&'static str>),
    errors: &'static [u16],
) -> Endpoint {
    Endpoint {
        method,
        path,
        summary,
        query,
        scope: Some(scope),
        ok,
        errors,
    }
}

const fn open(
    path: &'static str,
    summary: &'static str,
    ok: (u16, Option<&'static str>),
) -> Endpoint {
    Endpoint {
        method: "get",
        path,
        summary,
        query: &[],
        scope: None,
        ok,
        errors: &[],
    }
}

/// The streamed export: no request timeout applies to it.
pub const EXPORT_PATH: &str = "/v1/events/export";

/// Every operation the service offers.
pub const ENDPOINTS: &[Endpoint] = &[
    op(
        Scope::Read,
        "get",
        "/v1/events",
        "Events matching a filter, one page at a time (keyset pagination: pass next_cursor back as cursor).",
        params::LIST_QUERY,
        (200, Some("EventPage")),
        &[400, 429],
    ),
    op(
        Scope::Export,
        "get",
        EXPORT_PATH,
        "Every event matching a filter, streamed as NDJSON (application/x-ndjson) or CSV (text/csv). A few run at once; beyond that the answer is 429 busy.",
        params::EXPORT_QUERY,
        (200, None),
        &[400, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/events/{id}",
        "One event by id, with the tracks its detections belong to.",
        &[],
        (200, Some("EventDetail")),
        &[400, 404, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/events/{id}/snapshot",
        "The event's snapshot as the edge took it (image/jpeg), checked against its SHA-256; ETag is the SHA-256 (304 on If-None-Match), max_width scales it down for a thumbnail. 404 when the cloud has no picture of the event.",
        params::SNAPSHOT_QUERY,
        (200, None),
        &[304, 400, 404, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/cameras",
        "Every camera with its edges, first and last capture and event count.",
        params::CAMERAS_QUERY,
        (200, Some("CameraList")),
        &[400, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/edges",
        "Every edge as its latest heartbeat shows it: online or offline (no heartbeat for three of its intervals), backlog and the age of its oldest unsent event, storage used against its budget and free space, clock offset, agent version, snapshot uploads and each camera's state and fps; offline edges first.",
        params::EDGES_QUERY,
        (200, Some("EdgeList")),
        &[400, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/edges/{id}",
        "One edge by id, as its latest heartbeat shows it; 404 if the cloud has none (within heartbeat retention).",
        &[],
        (200, Some("Edge")),
        &[400, 404, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/stats",
        "Detections per time bucket, grouped by camera and/or label, from the hourly rollup where it can answer exactly; or, with measure=objects, distinct objects (ended tracks, counted in the bucket they started in) and their dwell time, also by zone.",
        params::STATS_QUERY,
        (200, Some("Stats")),
        &[400, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/tracks",
        "Tracks (one object's whole visit to a camera) matching a filter, the latest record of each, one page at a time (keyset pagination: pass next_cursor back as cursor).",
        params::TRACKS_QUERY,
        (200, Some("TrackPage")),
        &[400, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/tracks/{id}",
        "One track by id (<edge_id>:<track_id>), its latest record.",
        &[],
        (200, Some("Track")),
        &[400, 404, 429],
    ),
    op(
        Scope::Read,
        "get",
        "/v1/tracks/{id}/snapshot",
        "The track's best frame (image/jpeg), the newest the edge uploaded: it changes when the track finds a better frame (Cache-Control: no-cache; revalidate with the ETag). max_width scales it down. 404 when the cloud has no picture of the track.",
        params::SNAPSHOT_QUERY,
        (200, None),
        &[304, 400, 404, 429],
    ),
    op(
        Scope::Replay,
        "post",
        "/v1/replay",
        "Start republishing a time range of events, oldest first, at a bounded rate, to a NATS subject under the configured prefix.",
        params::REPLAY_QUERY,
        (202, Some("ReplayProgress")),
        &[400, 403, 429],
    ),
    op(
        Scope::Replay,
        "get",
        "/v1/replay",
        "Every replay this process remembers, oldest first.",
        &[],
        (200, Some("ReplayList")),
        &[400],
    ),
    op(
        Scope::Replay,
        "get",
        "/v1/replay/{id}",
        "A replay's progress.",
        &[],
        (200, Some("ReplayProgress")),
        &[400, 404],
    ),
    op(
        Scope::Replay,
        "delete",
        "/v1/replay/{id}",
        "Cancel a replay.",
        &[],
        (200, Some("ReplayProgress")),
        &[400, 404],
    ),
    open(
        "/healthz",
        "Liveness: the process answers.",
        (200, Some("Status")),
    ),
    open(
        "/readyz",
        "Readiness: ClickHouse answers (503 otherwise).",
        (200, Some("Status")),
    ),
    open("/metrics", "Prometheus metrics (text format).", (200, None)),
    open("/openapi.json", "This document.", (200, None)),
    open(
        "/",
        "The web console (HTML): events, the fleet and activity, shown from this API with the tab's token.",
        (200, None),
    ),
    open(
        "/assets/{file}",
        "The console's scripts and styles (content-hashed names: cached for good).",
        (200, None),
    ),
];

fn param_schema(kind: Kind, settings: &Settings) -> Value {
    match kind {
        Kind::Ids => json!({"type": "array", "maxItems": params::MAX_LIST,
            "items": {"type": "string", "pattern": format!("^[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}$")}}),
        Kind::Labels => json!({"type": "array", "maxItems": params::MAX_LIST,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_LEN}}),
        Kind::Time => json!({"type": "string",
            "description": "RFC 3339 (2026-11-22T03:00:00Z) or integer epoch milliseconds, 1970 to 2105",
            "examples": ["2026-11-22T03:00:00Z", "1795000000000"]}),
        Kind::Confidence => json!({"type": "number", "minimum": 0, "maximum": 1}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Choice(choices) => json!({"type": "string", "enum": choices}),
        Kind::Count(bound) => {
            json!({"type": "integer", "minimum": 1, "maximum": settings.limits.max(bound)})
        }
        Kind::Cursor => json!({"type": "string", "pattern": "^[0-9a-f]{52}$"}),
        Kind::TrackCursor => json!({"type": "string", "pattern": "^([0-9a-f]{2}){19,}$"}),
        Kind::Duration => {
            json!({"type": "number", "minimum": 0, "maximum": params::MAX_DURATION_SECS, "description": "seconds"})
        }
        Kind::Subject => {
            // Tokens of A-Z a-z 0-9 _ - separated by dots, below the prefix (which the config
            // requires to end in a dot).
            let token = "[A-Za-z0-9_-]+";
            let prefix = regex_escape(&settings.replay_prefix);
            json!({"type": "string", "pattern": format!("^{prefix}{token}(\\.{token})*$"), "maxLength": MAX_SUBJECT_LEN})
        }
        Kind::TimeZone => json!({"type": "string", "examples": ["UTC", "Europe/Berlin"]}),
    }
}

/// `text` matched literally in a regular expression.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

fn parameters(endpoint: &Endpoint, settings: &Settings) -> Vec<Value> {
    let mut out: Vec<Value> = endpoint
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let schema = if endpoint.path.starts_with("/v1/tracks/") {
                json!({"type": "string", "pattern": format!("^[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}:[1-9][0-9]*$"),
                    "examples": ["edge-01:42"]})
            } else if endpoint.path.starts_with("/assets/") {
                json!({"type": "string", "pattern": "^[A-Za-z0-9._-]+$",
                    "examples": ["index-P1kptxfQ.js"]})
            } else if endpoint.path.starts_with("/v1/edges/") {
                json!({"type": "string", "pattern": format!("^[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}$"),
                    "examples": ["edge-01"]})
            } else {
                json!({"type": "string", "format": "uuid"})
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect();
    for p in endpoint.query.iter().flat_map(|g| g.iter()) {
        let mut param = json!({
            "name": p.name,
            "in": "query",
            "required": p.required,
            "description": p.doc,
            "schema": param_schema(p.kind, settings),
        });
        if matches!(p.kind, Kind::Ids | Kind::Labels) {
            param["style"] = json!("form");
            param["explode"] = json!(false);
        }
        out.push(param);
    }
    out
}

fn response_body(schema: Option<&str>, path: &str) -> Value {
    match (schema, path) {
        (Some(schema), _) => {
            json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
        }
        (None, "/metrics") => {
            let mut content = serde_json::Map::new();
            content.insert(
                sightline_runtime::METRICS_CONTENT_TYPE.to_owned(),
                json!({"schema": {"type": "string"}}),
            );
            json!({ "content": content })
        }
        (None, "/openapi.json") => {
            json!({"content": {"application/json": {"schema": {"type": "object"}}}})
        }
        (None, EXPORT_PATH) => json!({"content": {
            "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/Event"}},
            "text/csv": {"schema": {"type": "string", "description": format!("header: {}", crate::export::CSV_HEADER.trim_end())}}}}),
        (None, "/") => json!({"content": {"text/html": {"schema": {"type": "string"}}}}),
        (None, "/assets/{file}") => json!({"content": {
            "text/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}}}}),
        (None, path) if path.ends_with("/snapshot") => {
            json!({"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                "headers": {"ETag": {"schema": {"type": "string"}, "description": "the picture's SHA-256 (with -w<max_width> for a thumbnail), quoted"},
                    "Cache-Control": {"schema": {"type": "string"}}}})
        }
        (None, _) => json!({"content": {"text/plain": {"schema": {"type": "string"}}}}),
    }
}

/// The operation `method` (any case) on the route template `path`, if documented.
pub fn endpoint(method: &str, path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|e| e.path == path && e.method.eq_ignore_ascii_case(method))
}

/// Whether the route template `path` is open without a token: the probes, metrics, this
/// document and the console's page and assets (which hold no data).
pub fn is_open(path: &str) -> bool {
    ENDPOINTS
        .iter()
        .any(|e| e.scope.is_none() && e.path == path)
}

/// The whole document for a service configured as `settings`.
pub fn document(settings: &Settings) -> Value {
    let mut paths = serde_json::Map::new();
    for e in ENDPOINTS {
        let mut responses = serde_json::Map::new();
        let mut ok = response_body(e.ok.1, e.path);
        ok["description"] = json!("success");
        responses.insert(e.ok.0.to_string(), ok);
        let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let needs_token = e.scope.is_some() && settings.auth;
        for status in e.errors.iter().chain(if needs_token {
            &[401, 403][..]
        } else {
            &[][..]
        }) {
            let response = if *status == 304 {
                json!({"description": "not modified: If-None-Match named the current ETag"})
            } else {
                error.clone()
            };
            responses.insert(status.to_string(), response);
        }
        // 503: ClickHouse unavailable or the query over its limits (replay bookkeeping
        // does not touch it); 504: past the request timeout, or ClickHouse did not answer
        // in time (an export's first rows).
        let reads_clickhouse =
            e.path.starts_with("/v1/") && !(e.path.starts_with("/v1/replay") && e.method != "post");
        if reads_clickhouse {
            responses.insert("503".into(), error.clone());
        }
        if e.path.starts_with("/v1/") {
            responses.insert("504".into(), error.clone());
        }
        let mut operation = json!({
            "summary": e.summary,
            "operationId": format!("{}{}", e.method, e.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": parameters(e, settings),
            "responses": responses,
        });
        if let (true, Some(scope)) = (settings.auth, e.scope) {
            operation["x-sightline-scope"] = json!(scope.as_str());
            operation["description"] = json!(format!(
                "Needs a client with the `{}` scope (403 otherwise).",
                scope.as_str()
            ));
        }
        if settings.auth && e.scope.is_none() {
            operation["security"] = json!([]);
        }
        paths
            .entry(e.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|item| item.insert(e.method.to_owned(), operation));
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Sightline query API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": if settings.auth {
                "Historical detection events. Every bad parameter is a 400 whose body names it; unknown parameters are rejected. Send Authorization: Bearer <token> to every operation but the probes, /metrics and this document; each operation needs its scope (read, export or replay) on the client the token belongs to. An answer that would be larger than the service allows is a 400 too_large that says how to narrow the request."
            } else {
                "Historical detection events. Every bad parameter is a 400 whose body names it; unknown parameters are rejected. This service has no tokens configured: no operation needs one."
            },
        },
        "paths": paths,
        "components": {"schemas": schemas()},
    });
    if settings.auth {
        document["security"] = json!([{"bearer": []}]);
        document["components"]["securitySchemes"] =
            json!({"bearer": {"type": "http", "scheme": "bearer"}});
    }
    document
}

/// A track: its latest record, with its id and length in view.
fn track_schema() -> Value {
    let time = json!({"type": "string", "format": "date-time"});
    let unit = json!({"type": "number", "minimum": 0, "maximum": 1});
    json!({"type": "object", "additionalProperties": false,
        "required": ["id", "duration_secs", "record_id", "schema_version", "edge_id", "camera_id", "track_id", "revision", "label", "class_id", "started_at", "last_seen_at", "ended_by", "frames", "max_confidence", "mean_confidence", "best", "path", "zones", "arrival_event_id", "snapshot", "attributes"],
        "properties": {
            "id": {"type": "string", "description": "<edge_id>:<track_id>", "examples": ["edge-01:42"]},
            "duration_secs": {"type": "number", "description": "last_seen_at minus started_at"},
            "record_id": {"type": "string", "format": "uuid", "description": "the latest record's id"},
            "schema_version": {"type": "integer"},
            "edge_id": {"type": "string"},
            "camera_id": {"type": "string"},
            "track_id": {"type": "integer", "minimum": 1, "description": "unique per edge"},
            "revision": {"type": "integer", "description": "0 for a track's first record, one more for each later one"},
            "label": {"type": "string"},
            "class_id": {"type": "integer", "minimum": 0},
            "started_at": time,
            "last_seen_at": time,
            "ended_by": {"type": ["string", "null"], "enum": ["lost", "shutdown", null], "description": "null while the track lasts"},
            "frames": {"type": "integer", "minimum": 1},
            "max_confidence": unit,
            "mean_confidence": unit,
            "best": {"type": "object", "additionalProperties": false, "required": ["captured_at", "bbox", "confidence"],
                "properties": {"captured_at": time, "bbox": {"$ref": "#/components/schemas/BoundingBox"}, "confidence": unit}},
            "path": {"type": "array", "maxItems": sightline_shared::track::MAX_PATH_POINTS, "description": "where it stood (bottom-centre of its box, normalised), oldest first",
                "items": {"type": "object", "additionalProperties": false, "required": ["at", "x", "y"],
                    "properties": {"at": time, "x": unit, "y": unit}}},
            "zones": {"type": "array", "maxItems": sightline_shared::track::MAX_ZONE_VISITS, "description": "its stays in zones, in the order it entered them",
                "items": {"type": "object", "additionalProperties": false, "required": ["zone", "entered_at", "exited_at"],
                    "properties": {"zone": {"type": "string"}, "entered_at": time, "exited_at": {"type": ["string", "null"], "format": "date-time"}}}},
            "arrival_event_id": {"type": ["string", "null"], "format": "uuid", "description": "the event that reported its arrival"},
            "snapshot": {"type": ["string", "null"], "description": "the best frame's snapshot, a path on the edge"},
            "attributes": {"type": "object", "additionalProperties": {"type": "string"}}}})
}

/// An edge as `GET /v1/edges` shows it (`crate::fleet::Edge`).
fn edge_schema() -> Value {
    let count = json!({"type": "integer", "minimum": 0});
    let object = |props: Value| {
        let required: Vec<&String> = props
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
    };
    object(json!({
        "edge_id": {"type": "string"},
        "status": {"type": "string", "enum": ["online", "offline"], "description": "offline: no heartbeat received for three of its intervals (30 s assumed for an agent that states none)"},
        "last_heartbeat_at": {"type": "string", "format": "date-time", "description": "when the edge sent its latest heartbeat, by its clock"},
        "seconds_since_heartbeat": count,
        "interval_secs": {"type": "integer", "minimum": 0, "description": "0: not stated (a v1 agent)"},
        "agent_version": {"type": "string"},
        "uptime_secs": count,
        "backlog": object(json!({
            "events": count,
            "oldest_unsent_at": {"type": ["string", "null"], "format": "date-time"},
            "oldest_unsent_age_secs": {"type": ["number", "null"]}})),
        "storage": object(json!({
            "used_bytes": count, "limit_bytes": count,
            "free_bytes": {"type": ["integer", "null"]},
            "used_percent": {"type": "number"}})),
        "clock_offset_ms": {"type": ["integer", "null"], "description": "the edge clock minus the cloud's"},
        "cpu_percent": {"type": "number"},
        "rss_bytes": count,
        "events": object(json!({"created": count, "sent": count, "dropped": count, "quarantined": count, "refused": count})),
        "uploads": object(json!({"pending": count, "sent": count, "dropped": count, "errors": count, "bytes": count})),
        "cameras": {"type": "array", "items": object(json!({
            "camera_id": {"type": "string"}, "state": {"type": "string"}, "fps": {"type": "number"},
            "events_created": count, "errors": count}))}}))
}

/// `GET /v1/events/{id}`: the event, and the tracks its detections belong to.
fn event_detail_schema() -> Value {
    let mut schema = event_schema();
    if let Some(required) = schema["required"].as_array_mut() {
        required.push(json!("tracks"));
    }
    schema["properties"]["tracks"] = json!({"type": "array", "description": "the tracks of its detections (track_id on this event's edge); 404 there until the edge sent the track's first record",
        "items": {"type": "object", "additionalProperties": false, "required": ["id", "label", "href"],
            "properties": {"id": {"type": "string", "examples": ["edge-01:42"]}, "label": {"type": "string"}, "href": {"type": "string", "examples": ["/v1/tracks/edge-01:42"]}}}});
    schema
}

fn event_schema() -> Value {
    json!({"type": "object", "additionalProperties": false,
        "required": ["event_id", "schema_version", "edge_id", "camera_id", "captured_at", "frame_seq", "motion_score", "detections", "model", "inference_ms"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "schema_version": {"type": "integer"},
            "edge_id": {"type": "string"},
            "camera_id": {"type": "string"},
            "captured_at": {"type": "string", "format": "date-time", "description": "UTC, millisecond precision"},
            "frame_seq": {"type": "integer"},
            "motion_score": {"type": "number"},
            "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}},
            "model": {"type": "object", "additionalProperties": false, "required": ["name", "version"],
                "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
            "inference_ms": {"type": "number"},
            "snapshot": {"type": ["string", "null"], "description": "the snapshot's path on the edge (the edge took one)"},
            "snapshot_url": {"type": "string", "description": "where the API serves the snapshot: present only when the picture is stored in the cloud"},
            "description": {"type": ["string", "null"]},
            "attributes": {"type": "object", "additionalProperties": {"type": "string"}}}})
}

fn schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "enum": ["bad_parameter", "too_large", "unauthorized", "forbidden", "not_found", "method_not_allowed", "busy", "unavailable", "over_limit", "timeout", "internal"]},
                "parameter": {"type": "string", "description": "the parameter at fault (bad_parameter only)"},
                "message": {"type": "string"}}}}},
        "Detection": {"type": "object", "additionalProperties": false,
            "required": ["label", "class_id", "confidence", "bbox"],
            "properties": {
                "label": {"type": "string"},
                "class_id": {"type": "integer", "minimum": 0},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "bbox": {"$ref": "#/components/schemas/BoundingBox"},
                "track_id": {"type": ["integer", "null"], "description": "the track it belongs to on this event's edge: GET /v1/tracks/<edge_id>:<track_id>"},
                "zones": {"type": "array", "items": {"type": "string"}, "description": "the zones of its camera it stood in (schema version 2; empty in version 1 events)"}}},
        "BoundingBox": {"type": "object", "additionalProperties": false,
            "required": ["x_min", "y_min", "x_max", "y_max"],
            "description": "normalised to the frame, 0 to 1",
            "properties": {"x_min": {"type": "number"}, "y_min": {"type": "number"}, "x_max": {"type": "number"}, "y_max": {"type": "number"}}},
        "Event": event_schema(),
        "EventPage": {"type": "object", "additionalProperties": false, "required": ["count", "events", "next_cursor"],
            "properties": {
                "count": {"type": "integer"},
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                "next_cursor": {"type": ["string", "null"], "description": "pass as cursor for the next page; null on the last page"}}},
        "Camera": {"type": "object", "additionalProperties": false,
            "required": ["camera_id", "edges", "first_seen", "last_seen", "events"],
            "properties": {
                "camera_id": {"type": "string"},
                "edges": {"type": "array", "items": {"type": "string"}},
                "first_seen": {"type": "string", "format": "date-time"},
                "last_seen": {"type": "string", "format": "date-time"},
                "events": {"type": "integer", "description": "stored event rows; a redelivered copy counts until ClickHouse merges it"}}},
        "CameraList": {"type": "object", "additionalProperties": false, "required": ["count", "cameras"],
            "properties": {"count": {"type": "integer"}, "cameras": {"type": "array", "items": {"$ref": "#/components/schemas/Camera"}}}},
        "Stats": {"type": "object", "additionalProperties": false,
            "required": ["measure", "interval", "tz", "group_by", "since", "until", "source", "buckets"],
            "properties": {
                "measure": {"type": "string", "enum": params::MEASURES},
                "interval": {"type": "string", "enum": params::INTERVALS},
                "tz": {"type": "string"},
                "group_by": {"type": "string", "enum": params::GROUPINGS},
                "since": {"type": "string", "format": "date-time"},
                "until": {"type": "string", "format": "date-time"},
                "source": {"type": "string", "enum": ["rollup", "raw", "tracks"],
                    "description": "the table that answered: detections_hourly (rollup), detections (raw) or tracks"},
                "buckets": {"type": "array", "items": {"type": "object", "additionalProperties": false,
                    "required": ["start", "max_confidence"],
                    "properties": {
                        "start": {"type": "string", "format": "date-time"},
                        "camera_id": {"type": "string"},
                        "label": {"type": "string"},
                        "zone": {"type": "string"},
                        "detections": {"type": "integer", "description": "measure=detections: detected objects, one per frame"},
                        "objects": {"type": "integer", "description": "measure=objects: distinct objects (ended tracks) that started in the bucket"},
                        "dwell_p50_secs": {"type": "number", "description": "measure=objects: median time in view (in the zones, when zones are asked for); the value at position floor(0.5 n) of the n sorted"},
                        "dwell_p95_secs": {"type": "number", "description": "measure=objects: 95th percentile, the value at position floor(0.95 n) of the n sorted"},
                        "max_confidence": {"type": "number"}}}}}},
        "Track": track_schema(),
        "Edge": edge_schema(),
        "EdgeList": {"type": "object", "additionalProperties": false, "required": ["count", "edges"],
            "properties": {"count": {"type": "integer"}, "edges": {"type": "array", "items": {"$ref": "#/components/schemas/Edge"}}}},
        "TrackPage": {"type": "object", "additionalProperties": false, "required": ["count", "tracks", "next_cursor"],
            "properties": {
                "count": {"type": "integer"},
                "tracks": {"type": "array", "items": {"$ref": "#/components/schemas/Track"}},
                "next_cursor": {"type": ["string", "null"], "description": "pass as cursor for the next page; null on the last page"}}},
        "EventDetail": event_detail_schema(),
        "ReplayProgress": {"type": "object", "additionalProperties": false,
            "required": ["id", "state", "subject", "since", "until", "rate", "encoding", "total", "published", "started_at", "finished_at", "error"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "state": {"type": "string", "enum": ["running", "done", "failed", "cancelled"]},
                "subject": {"type": "string"},
                "since": {"type": "string", "format": "date-time"},
                "until": {"type": "string", "format": "date-time"},
                "rate": {"type": "integer"},
                "encoding": {"type": "string", "enum": params::ENCODINGS},
                "total": {"type": ["integer", "null"]},
                "published": {"type": "integer"},
                "started_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "error": {"type": ["string", "null"]}}},
        "ReplayList": {"type": "object", "additionalProperties": false, "required": ["replays"],
            "properties": {"replays": {"type": "array", "items": {"$ref": "#/components/schemas/ReplayProgress"}}}},
        "Status": {"type": "object"},
    })
}
