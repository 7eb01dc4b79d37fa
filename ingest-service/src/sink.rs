//! Writing batches to ClickHouse, and telling transient failures from permanent ones.

use std::time::{Duration, Instant};

use clickhouse::Client;
use thiserror::Error;

use crate::metrics::{InsertOutcome, Metrics};
use crate::schema::{EVENTS_TABLE, EventRow};

/// ClickHouse error codes that mean "this data is wrong" rather than "try again later":
/// retrying the same rows can never succeed, so they are isolated and dead-lettered.
/// (6 CANNOT_PARSE_TEXT, 26 CANNOT_PARSE_QUOTED_STRING, 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED,
/// 33 CANNOT_READ_ALL_DATA, 38 CANNOT_PARSE_DATE, 41 CANNOT_PARSE_DATETIME, 53 TYPE_MISMATCH,
/// 69 ARGUMENT_OUT_OF_BOUND, 70 CANNOT_CONVERT_TYPE, 72 CANNOT_PARSE_NUMBER,
/// 117 INCORRECT_DATA, 131 TOO_LARGE_STRING_SIZE, 190 SIZES_OF_ARRAYS_DOESNT_MATCH.)
/// Everything else (network, timeouts, too many parts, memory, missing table) is transient
/// and retried forever: a schema or server problem must not empty the stream into the
/// dead-letter stream.
pub const PERMANENT_CODES: &[u32] = &[6, 26, 27, 33, 38, 41, 53, 69, 70, 72, 117, 131, 190];

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
    pub fn classify(error: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        match &error {
            E::BadResponse(text) => match server_code(text) {
                Some(code) if PERMANENT_CODES.contains(&code) => Self::Permanent {
                    code,
                    source: error,
                },
                _ => Self::Transient(error),
            },
            // Our own rows failed to serialize: retrying cannot help.
            E::Custom(_) | E::DataFormat(_) | E::SequenceMustHaveLength => Self::Permanent {
                code: 0,
                source: error,
            },
            _ => Self::Transient(error),
        }
    }
}

/// Extracts `N` from a ClickHouse error text such as `Code: 117. DB::Exception: ...`.
pub fn server_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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
    /// (servers with [`Capabilities::insert_dedup_token`](crate::capabilities::Capabilities)),
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
        insert_rows(&self.client, EVENTS_TABLE, rows, self.timeout, token).await
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
            .bind(EVENTS_TABLE)
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

/// The deduplication token of a batch: the same rows in the same order (a batch retried
/// whole) give the same token, any other batch (a bisected half, a batch formed anew from
/// redeliveries) another one. SHA-256 over the event ids, with the row count.
pub fn dedup_token(rows: &[EventRow]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    for row in rows {
        hash.update(row.event_id.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sightline-{}-{hex}", rows.len())
}

/// One INSERT of `rows` into `table` in RowBinary, with `timeout` on both sending the rows
/// and waiting for the server's answer, so a server that stops answering fails the insert
/// instead of hanging it; `dedup_token`, where given, is the INSERT's
/// `insert_deduplication_token`.
pub async fn insert_rows<T>(
    client: &Client,
    table: &str,
    rows: &[T],
    timeout: Duration,
    dedup_token: Option<String>,
) -> Result<(), clickhouse::error::Error>
where
    T: clickhouse::RowWrite + for<'a> clickhouse::Row<Value<'a> = T>,
{
    let mut insert = client
        .insert::<T>(table)
        .await?
        .with_timeouts(Some(timeout), Some(timeout));
    if let Some(token) = dedup_token {
        // Views' tables skip the blocks whose source block was a duplicate (the default
        // since 24.x, said here so a profile cannot turn it off).
        insert = insert
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
    }
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<EventRow> {
        use sightline_shared::{DetectionEvent, EventId, ModelInfo, SCHEMA_VERSION, Timestamp};
        (0..n)
            .map(|i| {
                let at = Timestamp::from_millis(1_790_000_000_000 + i as i64);
                EventRow::from(DetectionEvent {
                    event_id: EventId::new_v7(at),
                    schema_version: SCHEMA_VERSION,
                    edge_id: "e".into(),
                    camera_id: "c".into(),
                    captured_at: at,
                    frame_seq: i as u64,
                    motion_score: 0.0,
                    detections: vec![],
                    model: ModelInfo {
                        name: "m".into(),
                        version: "1".into(),
                    },
                    inference_ms: 1.0,
                    snapshot: None,
                    description: None,
                    attributes: Default::default(),
                })
            })
            .collect()
    }

    #[test]
    fn a_batch_retried_whole_keeps_its_token_and_no_other_batch_shares_it() {
        let batch = rows(6);
        assert_eq!(dedup_token(&batch), dedup_token(&batch.clone()));
        // Bisected halves, a reordered batch and a batch with one more row are other batches.
        let others = [
            dedup_token(&batch[..3]),
            dedup_token(&batch[3..]),
            dedup_token(&batch.iter().rev().cloned().collect::<Vec<_>>()),
            dedup_token(&[batch.clone(), rows(1)].concat()),
        ];
        for other in &others {
            assert_ne!(other, &dedup_token(&batch));
        }
        assert_ne!(others[0], others[1]);
    }

    #[test]
    fn reads_server_codes() {
        assert_eq!(
            server_code("Code: 117, e.displayText() = DB::Exception: bad"),
            Some(117)
        );
        assert_eq!(
            server_code("bad response: Code: 53. DB::Exception: Type mismatch"),
            Some(53)
        );
        assert_eq!(server_code("connection refused"), None);
    }

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
    }
}
