//! Writing batches to ClickHouse, and telling transient failures from permanent ones.

use std::time::{Duration, Instant};

use clickhouse::Client;
use thiserror::Error;

use sightline_store::insert::{dedup_token, insert_rows};
use sightline_store::{ErrorKind, EventRow, tables};

use crate::metrics::{InsertOutcome, Metrics};

/// A failed INSERT, classified.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InsertError {
    #[error("transient ClickHouse error: {0}")]
    Transient(#[source] clickhouse::error::Error),
    #[error("ClickHouse rejected the data (code {code}): {source}")]
    Permanent {
        code: u32,
        #[source]
        source: clickhouse::error::Error,
    },
}

impl InsertError {
    /// Sorts a client error into transient or permanent.
    ///
    /// Only bad data is permanent: retrying the same rows can never succeed, so they are
    /// isolated and dead-lettered. Everything else (network, timeouts, too many parts,
    /// memory, a missing table or column) is transient and retried forever: a schema or
    /// server problem must not empty the stream into the dead-letter stream.
    pub fn classify(error: clickhouse::error::Error) -> Self {
        match sightline_store::classify(&error) {
            ErrorKind::BadData { code } => Self::Permanent {
                code,
                source: error,
            },
            _ => Self::Transient(error),
        }
    }
}

/// Inserts batches of rows into the `events` table.
#[derive(Debug, Clone)]
pub struct Sink {
    client: Client,
    timeout: Duration,
    metrics: Metrics,
    dedup_tokens: bool,
}

impl Sink {
    /// A sink writing through `client` (which names the database).
    pub fn new(client: Client, timeout: Duration, metrics: Metrics) -> Self {
        Self {
            client,
            timeout,
            metrics,
            dedup_tokens: false,
        }
    }

    /// Gives every INSERT an `insert_deduplication_token` made from its rows' event ids
    /// (servers with [`sightline_store::Capabilities::insert_dedup_token`]),
    /// so the same rows sent again, after an answer that was lost, are dropped by the
    /// server at insert time, in the views' tables too, instead of stored twice.
    pub fn with_dedup_tokens(mut self, on: bool) -> Self {
        self.dedup_tokens = on;
        self
    }

    /// Writes `rows` in one INSERT; they are all stored or none is.
    pub async fn insert(&self, rows: &[EventRow]) -> Result<(), InsertError> {
        let started = Instant::now();
        let result = self.try_insert(rows).await.map_err(InsertError::classify);
        self.metrics
            .insert_seconds
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                self.metrics.insert(InsertOutcome::Ok);
                self.metrics.batch_rows.observe(rows.len() as f64);
                self.metrics.rows_inserted.inc_by(rows.len() as u64);
            }
            Err(InsertError::Transient(_)) => self.metrics.insert(InsertOutcome::TransientError),
            Err(InsertError::Permanent { .. }) => {
                self.metrics.insert(InsertOutcome::PermanentError)
            }
        }
        result
    }

    async fn try_insert(&self, rows: &[EventRow]) -> Result<(), clickhouse::error::Error> {
        let token = self.dedup_tokens.then(|| dedup_token(rows));
        insert_rows(&self.client, tables::EVENTS, rows, self.timeout, token).await
    }

    /// The `events` table's columns (name and type, by name): what the rows are written
    /// against. Compared with the columns at start-up before any row is dead-lettered.
    /// Bounded by the insert timeout, so a server that stops answering cannot stall the
    /// writer here.
    pub async fn columns(&self) -> Result<Vec<(String, String)>, clickhouse::error::Error> {
        let query = self
            .client
            .query(
                "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = ? ORDER BY name",
            )
            .bind(tables::EVENTS)
            .fetch_all::<(String, String)>();
        tokio::time::timeout(self.timeout, query)
            .await
            .unwrap_or(Err(clickhouse::error::Error::TimedOut))
    }

    /// Whether ClickHouse answers a trivial query.
    pub async fn ping(&self) -> bool {
        self.client.query("SELECT 1").execute().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_data_errors_as_permanent() {
        let e = InsertError::classify(clickhouse::error::Error::BadResponse(
            "Code: 117. DB::Exception: x".into(),
        ));
        assert!(matches!(e, InsertError::Permanent { code: 117, .. }));
        let e = InsertError::classify(clickhouse::error::Error::BadResponse(
            "Code: 252. Too many parts".into(),
        ));
        assert!(matches!(e, InsertError::Transient(_)));
        let e = InsertError::classify(clickhouse::error::Error::TimedOut);
        assert!(matches!(e, InsertError::Transient(_)));
        // A table missing or changed is the schema's fault, never the rows'.
        let e = InsertError::classify(clickhouse::error::Error::BadResponse(
            "Code: 60. Table sightline.events doesn't exist".into(),
        ));
        assert!(matches!(e, InsertError::Transient(_)));
    }
}
