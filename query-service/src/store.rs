//! Reading events from ClickHouse. All request values reach SQL through `bind`, which
//! escapes them; no request text is ever pasted into a query. Every query carries the
//! configured time and memory limits as ClickHouse settings (the service's user has
//! `readonly = 2`, which allows setting them and nothing else).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use clickhouse::query::Query;
use clickhouse::query::RowCursor;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use sightline_shared::snapshot::Owner;
use sightline_shared::track::{TrackKey, TrackRecord};
use sightline_shared::{DetectionEvent, EventId, Timestamp};
use sightline_store::tables::{
    DETECTIONS, DETECTIONS_HOURLY, EDGE_HEARTBEATS, EVENTS, EVENTS_BY_ID, SNAPSHOTS, TRACKS,
    TRACKS_BY_ID,
};
use sightline_store::{ErrorKind, EventRow, SnapshotRow, TrackRow};
use thiserror::Error;

use crate::model::{
    Cursor, EventFilter, Interval, Measure, Sort, StatsQuery, TrackCursor, TrackFilter,
};

/// A failed read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// ClickHouse could not be reached or timed out: worth retrying later.
    #[error("ClickHouse is unavailable: {0}")]
    Unavailable(#[source] clickhouse::error::Error),
    /// The query ran past the time or memory limit it was given.
    #[error("the query exceeded its ClickHouse limits: {0}")]
    OverLimit(#[source] clickhouse::error::Error),
    /// ClickHouse answered with an error.
    #[error("ClickHouse query failed: {0}")]
    Query(#[source] clickhouse::error::Error),
    /// ClickHouse does not know the time zone the caller named.
    #[error("ClickHouse does not know the time zone {0:?}")]
    UnknownTimeZone(String),
    /// The answer would have more rows than the service returns at once.
    #[error("the answer has more than {0} rows")]
    TooLarge(u64),
    /// ClickHouse did not answer within the client-side timeout.
    #[error("ClickHouse did not answer within {0:?}")]
    TimedOut(Duration),
}

impl From<clickhouse::error::Error> for StoreError {
    fn from(error: clickhouse::error::Error) -> Self {
        match sightline_store::classify(&error) {
            ErrorKind::Unavailable => Self::Unavailable(error),
            // Only the store knows the limit it set: see `Store::call`.
            ErrorKind::OverLimit { .. } | ErrorKind::ResultTooLarge { .. } => {
                Self::OverLimit(error)
            }
            _ => Self::Query(error),
        }
    }
}

/// Limits every query runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub query_timeout_secs: u64,
    pub export_timeout_secs: u64,
    pub max_memory_bytes: u64,
    /// Most rows one answer may have (exports excepted): ClickHouse's `max_result_rows`,
    /// and the total bucket limit of stats and the camera list.
    pub max_result_rows: u64,
    /// How long the client waits for ClickHouse to answer a call (`clickhouse.timeout_ms`).
    pub call_timeout: Duration,
}

impl From<&crate::QueryConfig> for Limits {
    fn from(config: &crate::QueryConfig) -> Self {
        Self {
            query_timeout_secs: config.query_timeout_secs,
            export_timeout_secs: config.export_timeout_secs,
            max_memory_bytes: config.query_max_memory_bytes,
            max_result_rows: config.max_result_rows,
            call_timeout: config.clickhouse.timeout(),
        }
    }
}

/// Reads the tables the ingest service writes.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    export_client: Client,
    /// Time zones ClickHouse knows, and whether their offset is whole hours all year.
    zones: Arc<Mutex<HashMap<String, bool>>>,
    /// How pages over long or open ranges are read.
    page_plan: PagePlan,
    max_result_rows: u64,
    call_timeout: Duration,
    export_timeout: Duration,
}

/// How a page of events over a long or open range is read. The two-step plan is the faster
/// on both server generations CI runs (a camera's latest 100 of 10M events, p50: 25 ms
/// against 214 ms on 18.16, 39 ms against 201 ms on 26.9, docs/benchmarks.md), so it is the
/// one the service uses; the query bench measures both on the server at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PagePlan {
    /// Step 1 reads only the sort key and the filter's columns to find where the page
    /// ends; step 2 reads whole rows only up to that bound.
    #[default]
    TwoStep,
    /// One query, leaving it to the server to stop reading once the page is full (18.16
    /// cannot read in key order at all; 26.9's `optimize_read_in_order` does not help
    /// this query shape, `LIMIT 1 BY` over a camera's rows).
    OneQuery,
}

/// SQL text with the values for its `?`s, in order.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    binds: Vec<BindValue>,
}

#[derive(Debug, Clone, PartialEq)]
enum BindValue {
    Str(String),
    I64(i64),
    F32(f32),
    U64(u64),
}

impl Sql {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: BindValue) -> &mut Self {
        self.binds.push(value);
        self
    }

    /// `other`'s text and binds after this one's.
    fn append(&mut self, other: Self) -> &mut Self {
        self.text.push_str(&other.text);
        self.binds.extend(other.binds);
        self
    }

    /// ` AND column IN (?, ?, ...)` for a non-empty list.
    fn any_of(&mut self, column: &str, values: &[String]) {
        if values.is_empty() {
            return;
        }
        let marks = vec!["?"; values.len()].join(", ");
        self.push(&format!(" AND {column} IN ({marks})"));
        for v in values {
            self.bind(BindValue::Str(v.clone()));
        }
    }

    /// Time bounds: the coarse `captured_at` prunes partitions, the millisecond one is exact.
    fn range(&mut self, since: Option<Timestamp>, until: Option<Timestamp>) {
        if let Some(since) = since {
            self.push(" AND captured_at >= toDateTime(?) AND captured_at_ms >= ?")
                .bind(BindValue::I64(since.as_secs()))
                .bind(BindValue::I64(since.as_millis()));
        }
        if let Some(until) = until {
            self.push(" AND captured_at <= toDateTime(?) AND captured_at_ms < ?")
                .bind(BindValue::I64(until.as_secs()))
                .bind(BindValue::I64(until.as_millis()));
        }
    }

    /// The shared filter over the `events` table.
    fn events_filter(&mut self, filter: &EventFilter) {
        self.any_of("camera_id", &filter.cameras);
        self.any_of("edge_id", &filter.edges);
        self.range(filter.since, filter.until);
        match filter.has_snapshot {
            Some(true) => {
                self.push(" AND isNotNull(snapshot)");
            }
            Some(false) => {
                self.push(" AND isNull(snapshot)");
            }
            None => {}
        }
        // Event snapshots carry their event's capture time (the writer checks), so the
        // range narrows the lookup too.
        if let Some(in_cloud) = filter.in_cloud {
            let not = if in_cloud { "" } else { "NOT " };
            self.push(&format!(
                " AND event_id {not}IN (SELECT event_id FROM {SNAPSHOTS} WHERE track_id = 0"
            ));
            self.range(filter.since, filter.until);
            self.push(")");
        }
        // One detection must match the labels and the confidence bounds together.
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        if !filter.labels.is_empty() {
            conditions.push(format!(
                "l IN ({})",
                vec!["?"; filter.labels.len()].join(", ")
            ));
            binds.extend(filter.labels.iter().cloned().map(BindValue::Str));
        }
        if !filter.zones.is_empty() {
            conditions.push(format!(
                "arrayExists(zone -> zone IN ({}), z)",
                vec!["?"; filter.zones.len()].join(", ")
            ));
            binds.extend(filter.zones.iter().cloned().map(BindValue::Str));
        }
        // Confidence is Float32: compare against Float32 so 0.7 means the stored 0.7.
        if let Some(min) = filter.min_confidence {
            conditions.push("c >= toFloat32(?)".into());
            binds.push(BindValue::F32(min));
        }
        if let Some(max) = filter.max_confidence {
            conditions.push("c <= toFloat32(?)".into());
            binds.push(BindValue::F32(max));
        }
        if !conditions.is_empty() {
            // The zones array only when asked for: it is the widest of the three.
            let (params, arrays) = if filter.zones.is_empty() {
                ("(l, c)", "detections.label, detections.confidence")
            } else {
                (
                    "(l, c, z)",
                    "detections.label, detections.confidence, detections.zones",
                )
            };
            self.push(&format!(
                " AND arrayExists({params} -> {}, {arrays})",
                conditions.join(" AND ")
            ));
            self.binds.extend(binds);
        }
    }

    /// The shared filter over the `detections` table (one row per object).
    fn detections_filter(&mut self, filter: &EventFilter) {
        self.any_of("camera_id", &filter.cameras);
        self.any_of("edge_id", &filter.edges);
        self.any_of("label", &filter.labels);
        self.range(filter.since, filter.until);
        if let Some(min) = filter.min_confidence {
            self.push(" AND confidence >= toFloat32(?)")
                .bind(BindValue::F32(min));
        }
        if let Some(max) = filter.max_confidence {
            self.push(" AND confidence <= toFloat32(?)")
                .bind(BindValue::F32(max));
        }
    }

    /// Only events after `cursor` in `sort` order.
    fn cursor(&mut self, sort: Sort, cursor: Option<Cursor>) {
        let (cmp, coarse) = sort.after();
        if let Some(cursor) = cursor {
            self.push(&format!(
                " AND captured_at {coarse} toDateTime(?) AND (captured_at_ms, event_id) {cmp} (?, toUUID(?))"
            ))
            .bind(BindValue::I64(cursor.captured_at_ms.div_euclid(1000)))
            .bind(BindValue::I64(cursor.captured_at_ms))
            .bind(BindValue::Str(cursor.event_id.to_string()));
        }
    }

    /// Events after `cursor` in `sort` order, ordered, each once, at most `limit`.
    fn events_page(&mut self, sort: Sort, cursor: Option<Cursor>, limit: Option<u64>) {
        self.cursor(sort, cursor);
        let dir = sort.direction();
        self.push(&format!(
            " ORDER BY captured_at_ms {dir}, event_id {dir} LIMIT 1 BY event_id"
        ));
        if let Some(limit) = limit {
            self.push(" LIMIT ?").bind(BindValue::U64(limit));
        }
    }

    fn query(&self, client: &Client) -> Query {
        let mut query = client.query(&self.text);
        for value in &self.binds {
            query = match value {
                BindValue::Str(s) => query.bind(s.as_str()),
                BindValue::I64(n) => query.bind(*n),
                BindValue::F32(n) => query.bind(*n),
                BindValue::U64(n) => query.bind(*n),
            };
        }
        query
    }
}

/// One page of events and where the next one starts.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<DetectionEvent>,
    pub next: Option<Cursor>,
}

impl Page {
    /// The first `limit` of `rows` (fetched one more than `limit`), and the cursor after
    /// them when there were more.
    fn from_rows(mut rows: Vec<EventRow>, limit: u32, sort: Sort) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = more.then(|| rows.last()).flatten().map(|last| Cursor {
            sort,
            captured_at_ms: last.captured_at_ms,
            event_id: last.event_id,
        });
        Self {
            events: rows.into_iter().map(EventRow::into_event).collect(),
            next,
        }
    }
}

/// Where an event is in the `events` table.
#[derive(Debug, Clone, Row, Deserialize)]
struct EventKey {
    camera_id: String,
    captured_at_ms: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    _event_id: uuid::Uuid,
}

/// Ranges up to this long (6 hours) are read in one query; longer or open ones in two steps.
const SHORT_RANGE_MS: i64 = 6 * 3_600_000;

/// One camera in `GET /v1/cameras`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct CameraRow {
    pub camera_id: String,
    pub edges: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub events: u64,
}

/// An edge's latest heartbeat, and how long ago (by ClickHouse's clock) it arrived.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct EdgeRow {
    pub edge_id: String,
    pub sent_at_ms: i64,
    pub seconds_since: i64,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub interval_secs: u32,
    pub backlog: u64,
    pub oldest_unsent_at_ms: Option<i64>,
    pub storage_used_bytes: u64,
    pub storage_limit_bytes: u64,
    pub storage_free_bytes: Option<u64>,
    pub clock_offset_ms: Option<i64>,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub events_created: u64,
    pub events_sent: u64,
    pub events_dropped: u64,
    pub events_quarantined: u64,
    pub events_refused: u64,
    pub uploads_pending: u64,
    pub uploads_sent: u64,
    pub uploads_dropped: u64,
    pub upload_errors: u64,
    pub upload_bytes: u64,
    pub camera_ids: Vec<String>,
    pub camera_states: Vec<String>,
    pub camera_fps: Vec<f64>,
    pub camera_events_created: Vec<u64>,
    pub camera_errors: Vec<u64>,
}

/// One bucket of `GET /v1/stats`; `camera_id` and `label` are empty when not grouped by.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct StatsRow {
    pub start_ms: i64,
    pub camera_id: String,
    pub label: String,
    pub detections: u64,
    pub max_confidence: f32,
}

/// One bucket of `GET /v1/stats?measure=objects`; `camera_id`, `label` and `zone` are
/// empty when not grouped by. Dwell is in milliseconds.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ObjectStatsRow {
    pub start_ms: i64,
    pub camera_id: String,
    pub label: String,
    pub zone: String,
    pub objects: u64,
    pub dwell_p50_ms: i64,
    pub dwell_p95_ms: i64,
    pub max_confidence: f32,
}

/// The buckets of a stats request, by what it counted.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsRows {
    Detections(Vec<StatsRow>),
    Objects(Vec<ObjectStatsRow>),
}

/// Which table answered a stats request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsSource {
    /// `detections_hourly`, the rollup kept by a materialized view.
    Rollup,
    /// `detections`, one row per object.
    Raw,
    /// `tracks`, the latest record of each track.
    Tracks,
}

impl StatsSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rollup => "rollup",
            Self::Raw => "raw",
            Self::Tracks => "tracks",
        }
    }
}

/// One page of tracks and where the next one starts.
#[derive(Debug)]
pub struct TrackPage {
    pub tracks: Vec<TrackRecord>,
    pub next: Option<TrackCursor>,
}

impl Store {
    /// A store over `client`, which names the database.
    pub fn new(client: Client, limits: Limits) -> Self {
        let client = client.with_setting("max_memory_usage", limits.max_memory_bytes.to_string());
        Self {
            max_result_rows: limits.max_result_rows,
            call_timeout: limits.call_timeout,
            export_timeout: Duration::from_secs(limits.export_timeout_secs),
            export_client: client
                .clone()
                .with_setting("max_execution_time", limits.export_timeout_secs.to_string())
                .with_setting(
                    "max_bytes_before_external_sort",
                    (limits.max_memory_bytes / 2).to_string(),
                ),
            // Every answer but an export's is bounded: the queries carry their own LIMIT,
            // and this catches one that does not (the whole answer is buffered on the
            // server first, so an overflow is an error status, not a cut-off body).
            client: client
                .with_setting("max_execution_time", limits.query_timeout_secs.to_string())
                .with_setting("max_result_rows", limits.max_result_rows.to_string())
                .with_setting("result_overflow_mode", "throw")
                .with_setting("wait_end_of_query", "1"),
            zones: Arc::default(),
            page_plan: PagePlan::default(),
        }
    }

    /// Reads pages with `plan` instead of the default one (benchmarks compare the two).
    pub fn with_page_plan(self, page_plan: PagePlan) -> Self {
        Self { page_plan, ..self }
    }

    /// One page of events matching `filter` in `sort` order, after `cursor`.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        sort: Sort,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        // One more than asked tells whether another page exists.
        let fetch = u64::from(limit) + 1;
        // The page, read whole; with `bound`, only rows up to that sort key are read.
        let page = |bound: Option<i64>| {
            let mut sql = Sql::new(&format!("SELECT ?fields FROM {EVENTS} PREWHERE 1"));
            if let Some(bound) = bound {
                let op = match sort {
                    Sort::Newest => ">=",
                    Sort::Oldest => "<=",
                };
                sql.push(&format!(
                    " AND captured_at_ms {op} ? AND captured_at {op} toDateTime(?)"
                ))
                .bind(BindValue::I64(bound))
                .bind(BindValue::I64(bound.div_euclid(1000)));
            }
            sql.events_filter(filter);
            sql.events_page(sort, cursor, Some(fetch));
            sql
        };
        // Labels: the per-object table is ordered by label, so it finds the page's events
        // (camera and capture time) without scanning every event in the range; the events
        // table then reads just those by primary key.
        // (`detections` has no zones: a zone filter reads `events`.)
        if !filter.labels.is_empty()
            && filter.has_snapshot.is_none()
            && filter.in_cloud.is_none()
            && filter.zones.is_empty()
        {
            let mut keys = Sql::new(&format!(
                "SELECT camera_id, captured_at_ms, event_id FROM {DETECTIONS} PREWHERE 1"
            ));
            keys.detections_filter(filter);
            keys.events_page(sort, cursor, Some(fetch));
            let keys = self
                .call(keys.query(&self.client).fetch_all::<EventKey>())
                .await?;
            // Only a full page is trusted: `detections` may keep fewer days than `events`
            // (`retention.detections_days`), so a short answer might end early.
            if keys.len() as u64 == fetch {
                let sql = key_slice(&keys, filter, sort, cursor, fetch);
                let rows = self
                    .call(sql.query(&self.client).fetch_all::<EventRow>())
                    .await?;
                if rows.len() == keys.len() {
                    return Ok(Page::from_rows(rows, limit, sort));
                }
                // `events` may keep fewer days than `detections`: read the plain way.
            }
        }
        // A short explicit range already bounds what is read: one query, filter first.
        let short = matches!((filter.since, filter.until), (Some(since), Some(until))
            if until.as_millis() - since.as_millis() <= SHORT_RANGE_MS);
        if short || self.page_plan == PagePlan::OneQuery {
            let rows = self
                .call(page(None).query(&self.client).fetch_all::<EventRow>())
                .await?;
            return Ok(Page::from_rows(rows, limit, sort));
        }
        // Otherwise two steps ([`PagePlan::TwoStep`]): the first reads only the sort key and
        // the filter's columns to find where the page ends; the second reads whole rows only
        // up to that bound. ClickHouse 18.16 cannot read in key order, so a single query
        // would read every matching row in full (a camera's latest 100 of 10M events: 290
        // ms against 17 + 9 ms, measured).
        let mut keys = Sql::new(&format!("SELECT captured_at_ms FROM {EVENTS} PREWHERE 1"));
        keys.events_filter(filter);
        keys.cursor(sort, cursor);
        keys.push(&format!(
            " ORDER BY captured_at_ms {} LIMIT ?",
            sort.direction()
        ))
        .bind(BindValue::U64(fetch));
        let keys = self
            .call(keys.query(&self.client).fetch_all::<i64>())
            .await?;
        let Some(&bound) = keys.last() else {
            return Ok(Page::from_rows(Vec::new(), limit, sort));
        };
        // Fewer keys than asked: everything matching is at or before the bound anyway.
        let bounded = keys.len() as u64 == fetch;
        let mut rows = self
            .call(
                page(bounded.then_some(bound))
                    .query(&self.client)
                    .fetch_all::<EventRow>(),
            )
            .await?;
        if bounded && (rows.len() as u64) < fetch {
            // Unmerged copies of an event took some of step 1's places, so the bound cut
            // the page short: read it again without the bound (rare, and still correct).
            rows = self
                .call(page(None).query(&self.client).fetch_all::<EventRow>())
                .await?;
        }
        Ok(Page::from_rows(rows, limit, sort))
    }

    /// Every event matching `filter`, streamed in `sort` order, each once.
    pub fn export(
        &self,
        filter: &EventFilter,
        sort: Sort,
        limit: Option<u64>,
    ) -> Result<RowCursor<EventRow>, StoreError> {
        // PREWHERE: whole rows are read only for the rows that match.
        let mut sql = Sql::new(&format!("SELECT ?fields FROM {EVENTS} PREWHERE 1"));
        sql.events_filter(filter);
        sql.events_page(sort, None, limit);
        Ok(sql.query(&self.export_client).fetch::<EventRow>()?)
    }

    /// Distinct events matching `filter`.
    pub async fn count_events(&self, filter: &EventFilter) -> Result<u64, StoreError> {
        let mut sql = Sql::new(&format!("SELECT uniqExact(event_id) FROM {EVENTS} WHERE 1"));
        sql.events_filter(filter);
        self.call(sql.query(&self.client).fetch_one::<u64>()).await
    }

    /// One event by id: the `events_by_id` lookup gives its camera and capture time, which
    /// locate it in `events` by primary key, so found or not it costs two point reads.
    pub async fn get_event(&self, id: EventId) -> Result<Option<DetectionEvent>, StoreError> {
        let Some(place) = self
            .call(
                self.client
                    .query(&format!("SELECT camera_id, captured_at_ms FROM {EVENTS_BY_ID} WHERE event_id = toUUID(?) LIMIT 1"))
                    .bind(id.to_string())
                    .fetch_optional::<(String, i64)>(),
            )
            .await?
        else {
            return Ok(None);
        };
        let row = self
            .call(
                self.client
                    .query(&format!(
                        "SELECT ?fields FROM {EVENTS} WHERE camera_id = ? AND captured_at = toDateTime(?) \
                         AND captured_at_ms = ? AND event_id = toUUID(?) LIMIT 1"
                    ))
                    .bind(place.0.as_str())
                    .bind(place.1.div_euclid(1000))
                    .bind(place.1)
                    .bind(id.to_string())
                    .fetch_optional::<EventRow>(),
            )
            .await?;
        Ok(row.map(EventRow::into_event))
    }

    /// Each edge's latest heartbeat (of `edge` only, if given), by edge id: the fleet as the
    /// cloud last heard from it, within heartbeat retention.
    pub async fn edges(&self, edge: Option<&str>) -> Result<Vec<EdgeRow>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT edge_id, sent_at_ms, toInt64(now()) - toInt64(received_at), agent_version, \
             uptime_secs, interval_secs, backlog, oldest_unsent_at_ms, storage_used_bytes, \
             storage_limit_bytes, storage_free_bytes, clock_offset_ms, cpu_percent, rss_bytes, \
             events_created, events_sent, events_dropped, events_quarantined, events_refused, \
             uploads_pending, uploads_sent, uploads_dropped, upload_errors, upload_bytes, \
             camera_ids, camera_states, camera_fps, camera_events_created, camera_errors \
             FROM {EDGE_HEARTBEATS} WHERE 1"
        ));
        if let Some(edge) = edge {
            sql.push(" AND edge_id = ?")
                .bind(BindValue::Str(edge.to_owned()));
        }
        sql.push(" ORDER BY edge_id, sent_at_ms DESC LIMIT 1 BY edge_id LIMIT ?")
            .bind(BindValue::U64(self.max_result_rows + 1));
        let rows = self
            .call(sql.query(&self.client).fetch_all::<EdgeRow>())
            .await?;
        if rows.len() as u64 > self.max_result_rows {
            return Err(StoreError::TooLarge(self.max_result_rows));
        }
        Ok(rows)
    }

    /// Every camera with events in the range: its edges, first and last capture, and how
    /// many event rows it has (a redelivered copy counts until ClickHouse merges it away).
    pub async fn cameras(&self, range: &EventFilter) -> Result<Vec<CameraRow>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT camera_id, groupUniqArray(edge_id) AS edges, min(captured_at_ms), \
             max(captured_at_ms), count() FROM {EVENTS} WHERE 1"
        ));
        sql.range(range.since, range.until);
        sql.push(" GROUP BY camera_id ORDER BY camera_id LIMIT ?")
            .bind(BindValue::U64(self.max_result_rows + 1));
        let mut rows = self
            .call(sql.query(&self.client).fetch_all::<CameraRow>())
            .await?;
        if rows.len() as u64 > self.max_result_rows {
            return Err(StoreError::TooLarge(self.max_result_rows));
        }
        for row in &mut rows {
            row.edges.sort();
        }
        Ok(rows)
    }

    /// Detections per bucket, grouped as asked: from the hourly rollup when it can answer
    /// exactly (hour or day buckets on hour boundaries in a zone whose offset is whole
    /// hours, no edge or confidence filter), else from the per-object table.
    pub async fn stats(&self, q: &StatsQuery) -> Result<(StatsSource, StatsRows), StoreError> {
        let whole_hours = self.zone_has_whole_hours(&q.tz).await?;
        if q.measure == Measure::Objects {
            let sql = object_stats_sql(q);
            let rows = self.bounded_rows::<ObjectStatsRow>(sql).await?;
            return Ok((StatsSource::Tracks, StatsRows::Objects(rows)));
        }
        let (source, sql) = stats_sql(q, whole_hours);
        let rows = self.bounded_rows::<StatsRow>(sql).await?;
        Ok((source, StatsRows::Detections(rows)))
    }

    /// Every row of `sql`, at most `max_result_rows` of them in total (over every group,
    /// not per group: one more row tells the limit was exceeded).
    async fn bounded_rows<T>(&self, mut sql: Sql) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        sql.push(" LIMIT ?")
            .bind(BindValue::U64(self.max_result_rows + 1));
        let rows = self.call(sql.query(&self.client).fetch_all::<T>()).await?;
        if rows.len() as u64 > self.max_result_rows {
            return Err(StoreError::TooLarge(self.max_result_rows));
        }
        Ok(rows)
    }

    /// One page of tracks matching `filter` in `sort` order (by start, then edge and track
    /// id), after `cursor`: the latest record of each.
    pub async fn list_tracks(
        &self,
        filter: &TrackFilter,
        sort: Sort,
        cursor: Option<&TrackCursor>,
        limit: u32,
    ) -> Result<TrackPage, StoreError> {
        let fetch = u64::from(limit) + 1;
        let sql = tracks_page_sql(filter, sort, cursor, fetch);
        let mut rows = self
            .call(sql.query(&self.client).fetch_all::<TrackRow>())
            .await?;
        let more = rows.len() as u64 == fetch;
        rows.truncate(limit as usize);
        let next = more.then(|| rows.last()).flatten().map(|last| TrackCursor {
            sort,
            started_at_ms: last.started_at_ms,
            edge_id: last.edge_id.clone(),
            track_id: last.track_id,
        });
        Ok(TrackPage {
            tracks: rows.into_iter().map(TrackRow::into_record).collect(),
            next,
        })
    }

    /// The latest snapshot stored of `owner`: an event, or a track of `edge_id`. (An event
    /// has one; a track one per record that had a better frame: the newest wins.)
    pub async fn snapshot(
        &self,
        owner: Owner,
        edge_id: &str,
    ) -> Result<Option<SnapshotRow>, StoreError> {
        let (event_id, track_id) = SnapshotRow::owner_columns(owner);
        let edge = if track_id > 0 { " AND edge_id = ?" } else { "" };
        let mut query = self
            .client
            .query(&format!(
                "SELECT ?fields FROM {SNAPSHOTS} WHERE event_id = toUUID(?){edge} AND track_id = ? \
                 ORDER BY toString(snapshot_id) DESC LIMIT 1"
            ))
            .bind(event_id.to_string());
        if track_id > 0 {
            query = query.bind(edge_id);
        }
        self.call(query.bind(track_id).fetch_optional::<SnapshotRow>())
            .await
    }

    /// Which of `ids` have a snapshot stored in the cloud (for `snapshot_url`).
    pub async fn events_in_cloud(
        &self,
        ids: &[EventId],
    ) -> Result<std::collections::HashSet<EventId>, StoreError> {
        let mut found = std::collections::HashSet::new();
        // In slices, so a page of many thousands stays within ClickHouse's query size.
        for slice in ids.chunks(1000) {
            let marks = vec!["toUUID(?)"; slice.len()].join(", ");
            let mut query = self.client.query(&format!(
                "SELECT DISTINCT toString(event_id) FROM {SNAPSHOTS} \
                 WHERE track_id = 0 AND event_id IN ({marks})"
            ));
            for id in slice {
                query = query.bind(id.to_string());
            }
            for id in self.call(query.fetch_all::<String>()).await? {
                if let Ok(id) = id.parse() {
                    found.insert(id);
                }
            }
        }
        Ok(found)
    }

    /// The latest record of one track: the `tracks_by_id` lookup gives its camera and
    /// start, which locate its records in `tracks` by primary key.
    pub async fn get_track(&self, key: &TrackKey) -> Result<Option<TrackRecord>, StoreError> {
        let Some((camera, started_at_ms)) = self
            .call(
                self.client
                    .query(&format!(
                        "SELECT camera_id, started_at_ms FROM {TRACKS_BY_ID} \
                         WHERE edge_id = ? AND track_id = ? LIMIT 1"
                    ))
                    .bind(key.edge_id.as_str())
                    .bind(key.track_id)
                    .fetch_optional::<(String, i64)>(),
            )
            .await?
        else {
            return Ok(None);
        };
        let row = self
            .call(
                self.client
                    .query(&format!(
                        "SELECT ?fields FROM {TRACKS} WHERE camera_id = ? AND started_at = toDateTime(?) \
                         AND started_at_ms = ? AND edge_id = ? AND track_id = ? \
                         ORDER BY revision DESC LIMIT 1"
                    ))
                    .bind(camera.as_str())
                    .bind(started_at_ms.div_euclid(1000))
                    .bind(started_at_ms)
                    .bind(key.edge_id.as_str())
                    .bind(key.track_id)
                    .fetch_optional::<TrackRow>(),
            )
            .await?;
        Ok(row.map(TrackRow::into_record))
    }

    /// Whether ClickHouse knows `tz`, and if its UTC offset is a whole number of hours in
    /// both January and July (so UTC hours add up to its hours and days). Cached.
    async fn zone_has_whole_hours(&self, tz: &str) -> Result<bool, StoreError> {
        if tz == "UTC" {
            return Ok(true);
        }
        if let Some(&known) = self.zones().get(tz) {
            return Ok(known);
        }
        let answer = self
            .client
            .query(
                "SELECT toUnixTimestamp(toDateTime('2026-01-01 00:00:00', ?)) % 3600 = 0 \
                 AND toUnixTimestamp(toDateTime('2026-07-01 00:00:00', ?)) % 3600 = 0",
            )
            .bind(tz)
            .bind(tz)
            .fetch_one::<u8>();
        let answer = tokio::time::timeout(self.call_timeout, answer)
            .await
            .map_err(|_| StoreError::TimedOut(self.call_timeout))?;
        let whole = match answer {
            Ok(v) => v == 1,
            // The zone is the query's only value from the caller: a bad argument is the zone.
            Err(error)
                if matches!(
                    sightline_store::classify(&error),
                    ErrorKind::BadArgument { .. }
                ) =>
            {
                return Err(StoreError::UnknownTimeZone(tz.to_owned()));
            }
            Err(error) => return Err(error.into()),
        };
        self.zones().insert(tz.to_owned(), whole);
        Ok(whole)
    }

    /// The time-zone cache; a panic elsewhere cannot leave it half-written, so a poisoned
    /// lock is still good.
    fn zones(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.zones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether ClickHouse answers, within the shorter of the call timeout and
    /// [`PING_TIMEOUT`] (a readiness probe must not hang).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let limit = self.call_timeout.min(PING_TIMEOUT);
        self.call_until(
            Instant::now() + limit,
            self.client.query("SELECT 1").execute(),
        )
        .await
    }

    /// When an export started now must have ended on the client side: ClickHouse stops it
    /// at `export_timeout_secs` (its `max_execution_time`), so this is a backstop for a
    /// server that stopped answering, one call timeout later.
    pub fn export_deadline(&self) -> Instant {
        Instant::now() + self.export_timeout + self.call_timeout
    }

    /// Runs one ClickHouse call under the client-side timeout, and names an answer over
    /// `max_result_rows` as too large.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, StoreError> {
        self.call_until(Instant::now() + self.call_timeout, call)
            .await
    }

    /// [`Self::call`] with a deadline of its own (an export's).
    pub(crate) async fn call_until<T>(
        &self,
        deadline: Instant,
        call: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, call).await {
            Err(_) => Err(StoreError::TimedOut(started.elapsed())),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error))
                if matches!(
                    sightline_store::classify(&error),
                    ErrorKind::ResultTooLarge { .. }
                ) =>
            {
                tracing::debug!(%error, "answer over max_result_rows");
                Err(StoreError::TooLarge(self.max_result_rows))
            }
            Ok(Err(error)) => Err(error.into()),
        }
    }
}

/// The longest a readiness ping waits for ClickHouse.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Pages of more keys than this read the slice between them without naming the cameras.
const MAX_SLICE_CAMERAS: usize = 100;

/// The events of a page whose `keys` (camera and capture time, in `sort` order, found in
/// the per-object table) are known: the slice of `events` between the first and the last
/// key's capture time on the keys' cameras, filtered and paged again. Never an `IN` list of
/// every key: a page of 20,000 would pass ClickHouse's `max_query_size`. The slice holds the
/// same events as the keys (the filter is the same), and events after the last key at its
/// very millisecond sort after them and fall off the page's limit.
fn key_slice(
    keys: &[EventKey],
    filter: &EventFilter,
    sort: Sort,
    cursor: Option<Cursor>,
    fetch: u64,
) -> Sql {
    let low = keys.iter().map(|k| k.captured_at_ms).min().unwrap_or(0);
    let high = keys.iter().map(|k| k.captured_at_ms).max().unwrap_or(0);
    let mut sql = Sql::new(&format!(
        "SELECT ?fields FROM {EVENTS} PREWHERE captured_at >= toDateTime(?) \
         AND captured_at <= toDateTime(?) AND captured_at_ms >= ? AND captured_at_ms <= ?"
    ));
    sql.bind(BindValue::I64(low.div_euclid(1000)))
        .bind(BindValue::I64(high.div_euclid(1000)))
        .bind(BindValue::I64(low))
        .bind(BindValue::I64(high));
    let mut cameras: Vec<String> = keys.iter().map(|k| k.camera_id.clone()).collect();
    cameras.sort_unstable();
    cameras.dedup();
    if cameras.len() <= MAX_SLICE_CAMERAS {
        sql.any_of("camera_id", &cameras);
    }
    sql.events_filter(filter);
    sql.events_page(sort, cursor, Some(fetch));
    sql
}

/// The SQL of a stats request: from the hourly rollup when it can answer exactly (hour or
/// day buckets on hour boundaries, in a zone whose offset is whole hours all year, no edge
/// or confidence filter), else from the per-object table.
fn stats_sql(q: &StatsQuery, whole_hours: bool) -> (StatsSource, Sql) {
    let hour_aligned = q.since.as_millis() % 3_600_000 == 0 && q.until.as_millis() % 3_600_000 == 0;
    // One bucket over the whole range adds up hours in any zone.
    let rollup = match q.interval {
        Interval::Hour | Interval::Day => whole_hours,
        Interval::All => true,
        _ => false,
    } && hour_aligned
        && q.filter.edges.is_empty()
        && q.filter.min_confidence.is_none()
        && q.filter.max_confidence.is_none();
    let camera = if q.by_camera { "camera_id" } else { "''" };
    let label = if q.by_label { "label" } else { "''" };
    let (time, table, count, max) = if rollup {
        (
            "hour",
            DETECTIONS_HOURLY,
            "countMerge(detections)",
            "maxMerge(max_confidence)",
        )
    } else {
        ("captured_at", DETECTIONS, "count()", "max(confidence)")
    };
    let mut sql = Sql::new("SELECT ");
    bucket_start(&mut sql, q, time);
    sql.push(&format!(
        " AS start_ms, {camera} AS camera, {label} AS label_, {count} AS detections, \
         {max} AS max_confidence FROM {table} WHERE 1"
    ));
    if rollup {
        sql.push(" AND hour >= toDateTime(?) AND hour < toDateTime(?)")
            .bind(BindValue::I64(q.since.as_secs()))
            .bind(BindValue::I64(q.until.as_secs()));
        sql.any_of("camera_id", &q.filter.cameras);
        sql.any_of("label", &q.filter.labels);
    } else {
        let filter = EventFilter {
            since: Some(q.since),
            until: Some(q.until),
            ..q.filter.clone()
        };
        sql.detections_filter(&filter);
    }
    sql.push(" GROUP BY start_ms, camera, label_ ORDER BY start_ms, camera, label_");
    let source = if rollup {
        StatsSource::Rollup
    } else {
        StatsSource::Raw
    };
    (source, sql)
}

/// The bucket a time falls in, as epoch milliseconds: `time` (a `DateTime` column) rounded
/// down in the query's zone, or the range's start for [`Interval::All`].
fn bucket_start(sql: &mut Sql, q: &StatsQuery, time: &str) {
    let round = match q.interval {
        Interval::Minute => "toStartOfMinute",
        Interval::FiveMinutes => "toStartOfFiveMinute",
        Interval::FifteenMinutes => "toStartOfFifteenMinutes",
        Interval::Hour => "toStartOfHour",
        Interval::Day => "toStartOfDay",
        Interval::All => {
            sql.push("toInt64(?)")
                .bind(BindValue::I64(q.since.as_millis()));
            return;
        }
    };
    sql.push(&format!(
        "toInt64(toUnixTimestamp({round}({time}, ?))) * 1000"
    ))
    .bind(BindValue::Str(q.tz.clone()));
}

/// The records matching `filter`'s fields that never change over a track (camera, edge,
/// label, start): a filter on those keeps all of a track's records or none, so it may narrow
/// the rows before they are deduplicated. (Last seen, length and best score grow with each
/// revision from a well-behaved edge, but a clock stepped back or a third party can send
/// a later record with less: filtered first, an earlier record could stand in for the
/// latest.) The caller orders and deduplicates.
fn latest_tracks(sql: &mut Sql, columns: &str, filter: &TrackFilter) {
    sql.push(&format!("SELECT {columns} FROM {TRACKS} PREWHERE 1"));
    sql.any_of("camera_id", &filter.cameras);
    sql.any_of("edge_id", &filter.edges);
    sql.any_of("label", &filter.labels);
    if let Some(until) = filter.until {
        sql.push(" AND started_at <= toDateTime(?) AND started_at_ms < ?")
            .bind(BindValue::I64(until.as_secs()))
            .bind(BindValue::I64(until.as_millis()));
    }
}

/// The conditions only a track's latest record can answer: when it was last seen, how long
/// it lasted, its best score, where it stood and whether it ended.
fn latest_only(sql: &mut Sql, filter: &TrackFilter) -> bool {
    let mut any = false;
    if let Some(since) = filter.since {
        sql.push(" AND last_seen_at_ms >= ?")
            .bind(BindValue::I64(since.as_millis()));
        any = true;
    }
    if let Some(min) = filter.min_duration_ms {
        sql.push(" AND last_seen_at_ms - started_at_ms >= ?")
            .bind(BindValue::I64(min));
        any = true;
    }
    if let Some(min) = filter.min_confidence {
        sql.push(" AND max_confidence >= toFloat32(?)")
            .bind(BindValue::F32(min));
        any = true;
    }
    if !filter.zones.is_empty() {
        let marks = vec!["?"; filter.zones.len()].join(", ");
        sql.push(&format!(
            " AND arrayExists(z -> z IN ({marks}), `zones.zone`)"
        ));
        for zone in &filter.zones {
            sql.bind(BindValue::Str(zone.clone()));
        }
        any = true;
    }
    match filter.ended {
        Some(true) => {
            sql.push(" AND ended_by != ''");
            any = true;
        }
        Some(false) => {
            sql.push(" AND ended_by = ''");
            any = true;
        }
        None => {}
    }
    if let Some(max) = filter.max_duration_ms {
        sql.push(" AND last_seen_at_ms - started_at_ms <= ?")
            .bind(BindValue::I64(max));
        any = true;
    }
    any
}

/// A page of tracks: the latest record of each, filtered, in `sort` order after `cursor`.
/// Without conditions on the latest record alone, the inner query stops at the page's
/// length too.
fn tracks_page_sql(
    filter: &TrackFilter,
    sort: Sort,
    cursor: Option<&TrackCursor>,
    fetch: u64,
) -> Sql {
    let dir = sort.direction();
    let order = format!("started_at_ms {dir}, edge_id {dir}, track_id {dir}");
    let mut inner = Sql::default();
    latest_tracks(&mut inner, "*", filter);
    if let Some(cursor) = cursor {
        let (cmp, coarse) = sort.after();
        inner
            .push(&format!(
                " AND started_at {coarse} toDateTime(?) AND (started_at_ms, edge_id, track_id) {cmp} (?, ?, ?)"
            ))
            .bind(BindValue::I64(cursor.started_at_ms.div_euclid(1000)))
            .bind(BindValue::I64(cursor.started_at_ms))
            .bind(BindValue::Str(cursor.edge_id.clone()))
            .bind(BindValue::U64(cursor.track_id));
    }
    inner.push(&format!(
        " ORDER BY {order}, revision DESC LIMIT 1 BY edge_id, track_id"
    ));
    let mut outer = Sql::default();
    let narrowed = latest_only(&mut outer, filter);
    if !narrowed {
        inner.push(" LIMIT ?").bind(BindValue::U64(fetch));
    }
    let mut sql = Sql::new("SELECT ?fields FROM (");
    sql.append(inner);
    sql.push(") WHERE 1");
    sql.append(outer);
    sql.push(&format!(" ORDER BY {order} LIMIT ?"))
        .bind(BindValue::U64(fetch));
    sql
}

/// Objects per bucket, from the final record of every track that started in the range: a
/// track counts once, in the bucket it started in; its dwell is its time in view, or with
/// zones, its time in them (summed over its stays; a stay still open at the end lasts until
/// the track was last seen). Quantiles are exact: the value at 0-based position
/// floor(q x n) of the n dwell times sorted (ClickHouse's `quantileExact`).
fn object_stats_sql(q: &StatsQuery) -> Sql {
    let camera = if q.by_camera { "t_camera" } else { "''" };
    let label = if q.by_label { "t_label" } else { "''" };
    let zone = if q.by_zone { "t_zone" } else { "''" };
    let mut sql = Sql::new("SELECT ");
    bucket_start(&mut sql, q, "t_start");
    sql.push(&format!(
        " AS start_ms, {camera} AS camera, {label} AS label_, {zone} AS zone_, count() AS objects, \
         toInt64(quantileExact(0.5)(dwell_ms)) AS p50, toInt64(quantileExact(0.95)(dwell_ms)) AS p95, \
         max(t_conf) AS max_conf FROM ("
    ));
    if q.in_zones() {
        let visit_zone = if q.by_zone { "z_name" } else { "''" };
        sql.push(&format!(
            "SELECT any(started_at) AS t_start, any(camera_id) AS t_camera, any(label) AS t_label, \
             {visit_zone} AS t_zone, any(max_confidence) AS t_conf, \
             sum(ifNull(z_exited, last_seen_at_ms) - z_entered) AS dwell_ms FROM ("
        ));
    } else {
        sql.push(
            "SELECT started_at AS t_start, camera_id AS t_camera, label AS t_label, \
             max_confidence AS t_conf, last_seen_at_ms - started_at_ms AS dwell_ms FROM (",
        );
    }
    // The final record of each track that started in the range.
    let filter = TrackFilter {
        cameras: q.filter.cameras.clone(),
        edges: q.filter.edges.clone(),
        labels: q.filter.labels.clone(),
        ..TrackFilter::default()
    };
    sql.push("SELECT * FROM (");
    latest_tracks(
        &mut sql,
        "edge_id, track_id, camera_id, label, started_at, started_at_ms, last_seen_at_ms, \
         max_confidence, ended_by, `zones.zone` AS zone_names, `zones.entered_at_ms` AS zone_entered, \
         `zones.exited_at_ms` AS zone_exited",
        &filter,
    );
    sql.push(" AND started_at >= toDateTime(?) AND started_at_ms >= ? AND started_at <= toDateTime(?) AND started_at_ms < ?")
        .bind(BindValue::I64(q.since.as_secs()))
        .bind(BindValue::I64(q.since.as_millis()))
        .bind(BindValue::I64(q.until.as_secs()))
        .bind(BindValue::I64(q.until.as_millis()));
    sql.push(" ORDER BY revision DESC LIMIT 1 BY edge_id, track_id) WHERE ended_by != ''");
    if let Some(min) = q.filter.min_confidence {
        sql.push(" AND max_confidence >= toFloat32(?)")
            .bind(BindValue::F32(min));
    }
    if let Some(max) = q.filter.max_confidence {
        sql.push(" AND max_confidence <= toFloat32(?)")
            .bind(BindValue::F32(max));
    }
    sql.push(")");
    if q.in_zones() {
        sql.push(
            " ARRAY JOIN zone_names AS z_name, zone_entered AS z_entered, zone_exited AS z_exited WHERE 1",
        );
        sql.any_of("z_name", &q.zones);
        sql.push(" GROUP BY edge_id, track_id");
        if q.by_zone {
            sql.push(", z_name");
        }
    }
    sql.push(") GROUP BY start_ms, camera, label_, zone_ ORDER BY start_ms, camera, label_, zone_");
    sql
}

#[cfg(test)]
mod tests {
    //! The pure SQL builders: the text and the binds they make, in order. (What the SQL
    //! returns is tested against both server generations in `tests/tests/it/`.)

    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    /// How many `?` the text has: always as many as the binds.
    fn marks(sql: &Sql) -> usize {
        sql.text.matches('?').count()
    }

    #[test]
    fn an_empty_filter_adds_nothing() {
        let mut sql = Sql::new("SELECT 1 FROM t WHERE 1");
        sql.events_filter(&EventFilter::default());
        assert_eq!(sql.text, "SELECT 1 FROM t WHERE 1");
        assert!(sql.binds.is_empty());
    }

    #[test]
    fn a_full_events_filter_binds_every_value_in_order() {
        let filter = EventFilter {
            cameras: vec!["gate".into(), "door".into()],
            edges: vec!["e1".into()],
            labels: vec!["person".into()],
            zones: vec!["driveway".into()],
            since: Some(at(1_795_000_000_500)),
            until: Some(at(1_795_000_100_000)),
            min_confidence: Some(0.5),
            max_confidence: Some(0.9),
            has_snapshot: Some(true),
            in_cloud: Some(false),
        };
        let mut sql = Sql::new("WHERE 1");
        sql.events_filter(&filter);
        assert_eq!(
            sql.text,
            "WHERE 1 AND camera_id IN (?, ?) AND edge_id IN (?) \
             AND captured_at >= toDateTime(?) AND captured_at_ms >= ? \
             AND captured_at <= toDateTime(?) AND captured_at_ms < ? AND isNotNull(snapshot) \
             AND event_id NOT IN (SELECT event_id FROM snapshots WHERE track_id = 0 \
             AND captured_at >= toDateTime(?) AND captured_at_ms >= ? \
             AND captured_at <= toDateTime(?) AND captured_at_ms < ?) \
             AND arrayExists((l, c, z) -> l IN (?) AND arrayExists(zone -> zone IN (?), z) \
             AND c >= toFloat32(?) AND c <= toFloat32(?), \
             detections.label, detections.confidence, detections.zones)"
        );
        assert_eq!(
            sql.binds,
            [
                BindValue::Str("gate".into()),
                BindValue::Str("door".into()),
                BindValue::Str("e1".into()),
                // The coarse bound in whole seconds, rounded down, then the exact one.
                BindValue::I64(1_795_000_000),
                BindValue::I64(1_795_000_000_500),
                BindValue::I64(1_795_000_100),
                BindValue::I64(1_795_000_100_000),
                // The same range again, for the snapshots' look-up.
                BindValue::I64(1_795_000_000),
                BindValue::I64(1_795_000_000_500),
                BindValue::I64(1_795_000_100),
                BindValue::I64(1_795_000_100_000),
                BindValue::Str("person".into()),
                BindValue::Str("driveway".into()),
                BindValue::F32(0.5),
                BindValue::F32(0.9),
            ]
        );
        assert_eq!(marks(&sql), sql.binds.len());
    }

    #[test]
    fn the_detections_filter_matches_each_object_row() {
        let filter = EventFilter {
            labels: vec!["car".into()],
            min_confidence: Some(0.25),
            has_snapshot: Some(false),
            ..EventFilter::default()
        };
        let mut sql = Sql::new("WHERE 1");
        sql.detections_filter(&filter);
        // Snapshots are an event's, not an object's: the per-object table ignores them.
        assert_eq!(
            sql.text,
            "WHERE 1 AND label IN (?) AND confidence >= toFloat32(?)"
        );
        assert_eq!(marks(&sql), sql.binds.len());
    }

    #[test]
    fn pages_continue_strictly_after_the_cursor_in_either_order() {
        let event_id = uuid::Uuid::now_v7();
        for (sort, cmp, coarse, dir) in [
            (Sort::Newest, "<", "<=", "DESC"),
            (Sort::Oldest, ">", ">=", "ASC"),
        ] {
            let cursor = Cursor {
                sort,
                captured_at_ms: -1_500,
                event_id,
            };
            let mut sql = Sql::new("WHERE 1");
            sql.events_page(sort, Some(cursor), Some(101));
            assert_eq!(
                sql.text,
                format!(
                    "WHERE 1 AND captured_at {coarse} toDateTime(?) AND (captured_at_ms, event_id) {cmp} (?, toUUID(?)) \
                     ORDER BY captured_at_ms {dir}, event_id {dir} LIMIT 1 BY event_id LIMIT ?"
                )
            );
            assert_eq!(
                sql.binds,
                [
                    // Seconds round towards the past, also before 1970.
                    BindValue::I64(-2),
                    BindValue::I64(-1_500),
                    BindValue::Str(event_id.to_string()),
                    BindValue::U64(101),
                ]
            );
        }
        let mut first = Sql::new("WHERE 1");
        first.events_page(Sort::Newest, None, None);
        assert_eq!(
            first.text,
            "WHERE 1 ORDER BY captured_at_ms DESC, event_id DESC LIMIT 1 BY event_id"
        );
    }

    fn stats(interval: Interval, since_ms: i64, filter: EventFilter) -> StatsQuery {
        StatsQuery {
            filter,
            since: at(since_ms),
            until: at(since_ms + 86_400_000),
            interval,
            by_camera: true,
            by_label: false,
            measure: Measure::Detections,
            zones: Vec::new(),
            by_zone: false,
            tz: "Europe/Berlin".into(),
        }
    }

    #[test]
    fn a_page_of_tracks_stops_early_only_without_latest_record_conditions() {
        // Conditions on fields a track never changes: the inner query stops at the page.
        let keyed = TrackFilter {
            cameras: vec!["gate".into()],
            until: Some(at(1_795_000_100_000)),
            ..TrackFilter::default()
        };
        let sql = tracks_page_sql(&keyed, Sort::Newest, None, 11);
        assert!(
            sql.text
                .contains("LIMIT 1 BY edge_id, track_id LIMIT ?) WHERE 1 ORDER BY"),
            "{}",
            sql.text
        );
        let cursor = TrackCursor {
            sort: Sort::Newest,
            started_at_ms: 1_795_000_000_500,
            edge_id: "e1".into(),
            track_id: 7,
        };
        // Last seen, length and best score: the latest record's, so after the dedup.
        let growing = TrackFilter {
            cameras: vec!["gate".into()],
            since: Some(at(1_795_000_000_000)),
            min_duration_ms: Some(5_000),
            min_confidence: Some(0.5),
            ..TrackFilter::default()
        };
        let sql = tracks_page_sql(&growing, Sort::Newest, Some(&cursor), 11);
        assert_eq!(
            sql.text,
            format!(
                "SELECT ?fields FROM (SELECT * FROM {TRACKS} PREWHERE 1 AND camera_id IN (?) \
                 AND started_at <= toDateTime(?) \
                 AND (started_at_ms, edge_id, track_id) < (?, ?, ?) \
                 ORDER BY started_at_ms DESC, edge_id DESC, track_id DESC, revision DESC \
                 LIMIT 1 BY edge_id, track_id) WHERE 1 \
                 AND last_seen_at_ms >= ? AND last_seen_at_ms - started_at_ms >= ? \
                 AND max_confidence >= toFloat32(?) \
                 ORDER BY started_at_ms DESC, edge_id DESC, track_id DESC LIMIT ?"
            )
        );
        assert_eq!(
            sql.binds,
            [
                BindValue::Str("gate".into()),
                BindValue::I64(1_795_000_000),
                BindValue::I64(1_795_000_000_500),
                BindValue::Str("e1".into()),
                BindValue::U64(7),
                BindValue::I64(1_795_000_000_000),
                BindValue::I64(5_000),
                BindValue::F32(0.5),
                BindValue::U64(11),
            ]
        );
        // Zones, the end and a longest length are the latest record's alone: the inner
        // query reads every match.
        let latest = TrackFilter {
            zones: vec!["gate".into(), "porch".into()],
            ended: Some(false),
            max_duration_ms: Some(60_000),
            ..TrackFilter::default()
        };
        let sql = tracks_page_sql(&latest, Sort::Oldest, None, 3);
        assert!(
            sql.text.ends_with(
                "LIMIT 1 BY edge_id, track_id) WHERE 1 \
                 AND arrayExists(z -> z IN (?, ?), `zones.zone`) AND ended_by = '' \
                 AND last_seen_at_ms - started_at_ms <= ? \
                 ORDER BY started_at_ms ASC, edge_id ASC, track_id ASC LIMIT ?"
            ),
            "{}",
            sql.text
        );
        // `?fields`, then one mark per bind.
        assert_eq!(marks(&sql), sql.binds.len() + 1);
    }

    #[test]
    fn object_stats_bind_every_value_and_group_by_zone_when_asked() {
        let hour = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000;
        let mut q = stats(
            Interval::All,
            hour,
            EventFilter {
                labels: vec!["car".into()],
                min_confidence: Some(0.5),
                ..EventFilter::default()
            },
        );
        q.measure = Measure::Objects;
        let plain = object_stats_sql(&q);
        assert!(plain.text.starts_with("SELECT toInt64(?) AS start_ms"));
        assert_eq!(plain.binds[0], BindValue::I64(hour));
        assert!(!plain.text.contains("ARRAY JOIN"));
        assert!(plain.text.contains("WHERE ended_by != ''"));
        assert_eq!(marks(&plain), plain.binds.len());
        q.zones = vec!["driveway".into()];
        q.by_zone = true;
        q.interval = Interval::Hour;
        let zoned = object_stats_sql(&q);
        assert!(zoned.text.starts_with(
            "SELECT toInt64(toUnixTimestamp(toStartOfHour(t_start, ?))) * 1000 AS start_ms"
        ));
        assert!(zoned.text.contains(
            "ARRAY JOIN zone_names AS z_name, zone_entered AS z_entered, zone_exited AS z_exited \
             WHERE 1 AND z_name IN (?) GROUP BY edge_id, track_id, z_name"
        ));
        assert_eq!(marks(&zoned), zoned.binds.len());
    }

    #[test]
    fn stats_read_the_rollup_only_where_it_is_exact() {
        let hour = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000;
        let (source, sql) = stats_sql(&stats(Interval::Hour, hour, EventFilter::default()), true);
        assert_eq!(source, StatsSource::Rollup);
        assert!(
            sql.text
                .contains(&format!("FROM {DETECTIONS_HOURLY} WHERE 1 AND hour >= "))
        );
        assert!(sql.text.contains("countMerge(detections)"));
        assert_eq!(sql.binds[0], BindValue::Str("Europe/Berlin".into()));
        assert_eq!(marks(&sql), sql.binds.len());
        // Each of these needs the per-object table.
        let raw = [
            stats(Interval::FiveMinutes, hour, EventFilter::default()),
            stats(Interval::Hour, hour + 60_000, EventFilter::default()),
            stats(
                Interval::Day,
                hour,
                EventFilter {
                    edges: vec!["e1".into()],
                    ..EventFilter::default()
                },
            ),
            stats(
                Interval::Hour,
                hour,
                EventFilter {
                    min_confidence: Some(0.5),
                    ..EventFilter::default()
                },
            ),
        ];
        for q in &raw {
            let (source, sql) = stats_sql(q, true);
            assert_eq!(source, StatsSource::Raw, "{q:?}");
            assert!(sql.text.contains(&format!("FROM {DETECTIONS} WHERE 1")));
            assert_eq!(marks(&sql), sql.binds.len());
        }
        // A zone whose offset is not whole hours (India's +05:30) cannot use hourly rows.
        let (source, _) = stats_sql(&stats(Interval::Hour, hour, EventFilter::default()), false);
        assert_eq!(source, StatsSource::Raw);
    }
}
