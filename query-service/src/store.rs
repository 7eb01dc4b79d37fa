//! Reading events from ClickHouse. All values reach SQL through `bind`, which escapes them;
//! no request text is ever pasted into a query.

use clickhouse::Client;
use sightline_ingest::schema::{EVENTS_TABLE, EventRow};
use sightline_shared::{DetectionEvent, EventId};
use thiserror::Error;

use crate::params::EventFilter;

/// A failed read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// ClickHouse could not be reached or timed out: worth retrying later.
    #[error("ClickHouse is unavailable: {0}")]
    Unavailable(#[source] clickhouse::error::Error),
    /// ClickHouse answered with an error.
    #[error("ClickHouse query failed: {0}")]
    Query(#[source] clickhouse::error::Error),
}

impl From<clickhouse::error::Error> for StoreError {
    fn from(error: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        match error {
            E::Network(_) | E::TimedOut => Self::Unavailable(error),
            other => Self::Query(other),
        }
    }
}

/// Reads the tables the ingest service writes.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
}

impl Store {
    /// A store over `client`, which names the database. Each query is limited to
    /// `query_timeout_secs` of execution time on the server.
    pub fn new(client: Client, query_timeout_secs: u64) -> Self {
        Self {
            client: client.with_setting("max_execution_time", query_timeout_secs.to_string()),
        }
    }

    /// Events matching `filter`, newest first, each at most once.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<DetectionEvent>, StoreError> {
        let mut sql = format!("SELECT ?fields FROM {EVENTS_TABLE} WHERE 1");
        if filter.camera.is_some() {
            sql.push_str(" AND camera_id = ?");
        }
        // The coarse `captured_at` bound prunes partitions; the millisecond one is exact.
        if filter.since.is_some() {
            sql.push_str(" AND captured_at >= toDateTime(?) AND captured_at_ms >= ?");
        }
        if filter.until.is_some() {
            sql.push_str(" AND captured_at <= toDateTime(?) AND captured_at_ms < ?");
        }
        sql.push_str(" ORDER BY captured_at_ms DESC, event_id DESC LIMIT 1 BY event_id LIMIT ?");
        let mut query = self.client.query(&sql);
        if let Some(camera) = &filter.camera {
            query = query.bind(camera.as_str());
        }
        if let Some(since) = filter.since {
            query = query.bind(since.as_secs()).bind(since.as_millis());
        }
        if let Some(until) = filter.until {
            query = query.bind(until.as_secs()).bind(until.as_millis());
        }
        let rows = query.bind(filter.limit).fetch_all::<EventRow>().await?;
        Ok(rows.into_iter().map(EventRow::into_event).collect())
    }

    /// One event by id.
    pub async fn get_event(&self, id: EventId) -> Result<Option<DetectionEvent>, StoreError> {
        let row = self
            .client
            .query(&format!(
                "SELECT ?fields FROM {EVENTS_TABLE} WHERE event_id = toUUID(?) LIMIT 1"
            ))
            .bind(id.to_string())
            .fetch_optional::<EventRow>()
            .await?;
        Ok(row.map(EventRow::into_event))
    }

    /// Whether ClickHouse answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client.query("SELECT 1").execute().await?;
        Ok(())
    }
}
