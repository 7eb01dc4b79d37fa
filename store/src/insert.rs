//! One INSERT of rows, bounded in time, optionally with an insert deduplication token.

use std::time::Duration;

use clickhouse::Client;

use crate::schema::EventRow;

/// One INSERT of `rows` into `table` in RowBinary, with `timeout` on both sending the rows
/// and waiting for the server's answer, so a server that stops answering fails the insert
/// instead of hanging it; `dedup_token`, where given, is the INSERT's
/// `insert_deduplication_token` (servers with
/// [`Capabilities::insert_dedup_token`](crate::Capabilities::insert_dedup_token)).
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
}
