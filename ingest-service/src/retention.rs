//! Retention on a schedule, on the leader only:
//!
//! - the partition sweep on servers without TTL (ClickHouse 18.16): one pass of
//!   [`sightline_store::retention::sweep`] every `sweep_interval_secs`;
//! - on every server, snapshots: an object store has no TTL that counts from capture (a
//!   bucket's max age counts from upload), and ClickHouse's TTL would forget which objects
//!   to delete, so [`sweep_snapshots`] deletes the objects of expired `snapshots` rows and
//!   then the rows.

use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use sightline_runtime::objects::SnapshotStore;
use sightline_store::retention::{RetentionSettings, sweep};
use sightline_store::tables::SNAPSHOTS;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::leader::Leadership;
use crate::metrics::Metrics;

/// Runs the partition sweep every `sweep_interval_secs` until `cancel` fires (servers
/// without TTL only).
pub(crate) async fn run_sweeps(
    client: Client,
    db: String,
    settings: RetentionSettings,
    metrics: Metrics,
    leadership: Leadership,
    cancel: CancellationToken,
) {
    let interval = Duration::from_secs(settings.sweep_interval_secs);
    on_the_leader(interval, &leadership, &cancel, || async {
        match sweep(&client, &db, &settings, OffsetDateTime::now_utc()).await {
            Ok(n) => {
                metrics.retention_partitions_dropped.inc_by(n as u64);
            }
            Err(error) => {
                metrics.retention_errors.inc();
                tracing::error!(%error, "retention sweep failed; will try again");
            }
        }
    })
    .await;
}

/// Runs [`sweep_snapshots`] every `sweep_interval_secs` until `cancel` fires.
pub(crate) async fn run_snapshot_sweeps(
    client: Client,
    store: Arc<dyn SnapshotStore>,
    settings: RetentionSettings,
    metrics: Metrics,
    leadership: Leadership,
    cancel: CancellationToken,
) {
    let interval = Duration::from_secs(settings.sweep_interval_secs);
    on_the_leader(interval, &leadership, &cancel, || async {
        let now = sightline_runtime::now().as_millis();
        match sweep_snapshots(&client, store.as_ref(), &settings, now).await {
            Ok(n) => {
                metrics.snapshots_expired.inc_by(n);
            }
            Err(error) => {
                metrics.retention_errors.inc();
                tracing::error!(%error, "snapshot retention sweep failed; will try again");
            }
        }
    })
    .await;
}

/// Runs `pass` every `interval` (the first at once) until `cancel` fires, on the replica
/// that leads (the Lease holder, or the only instance).
async fn on_the_leader<F: Future<Output = ()>>(
    interval: Duration,
    leadership: &Leadership,
    cancel: &CancellationToken,
    mut pass: impl FnMut() -> F,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if leadership.is_leader() {
            pass().await;
        }
    }
}

/// Most snapshots expired per statement.
const EXPIRE_BATCH: usize = 5_000;

/// When a snapshot is due: a day after what it shows, counted like its event's or track's
/// retention from the later of capture and arrival (its `stored_at`), so a picture is never
/// removed before its record and outlives it by at most a day (plus however much later than
/// the record it was uploaded).
fn cutoffs(settings: &RetentionSettings, now_ms: i64) -> [(&'static str, i64); 2] {
    let cutoff = |days: u32| now_ms - (i64::from(days) + 1) * 86_400_000;
    [
        ("track_id = 0", cutoff(settings.events_days)),
        ("track_id > 0", cutoff(settings.tracks_days)),
    ]
}

/// Deletes the objects of every expired snapshot, then its rows; returns how many. An
/// object already gone (a sweep interrupted after the objects, before the rows) is fine.
/// Rows go by a mutation, which ClickHouse applies shortly after: until then the API
/// answers 404 for the picture, as it will after.
pub(crate) async fn sweep_snapshots(
    client: &Client,
    store: &dyn SnapshotStore,
    settings: &RetentionSettings,
    now_ms: i64,
) -> anyhow::Result<u64> {
    let mut expired = 0;
    for (owner, cutoff) in cutoffs(settings, now_ms) {
        // Page by id, so a sweep gets through any number (the rows of one page go by a
        // mutation ClickHouse applies later: the next page must not read them again).
        let mut after: Option<uuid::Uuid> = None;
        loop {
            let after_clause = after.map_or(String::new(), |id| {
                format!(" AND snapshot_id > toUUID('{id}')")
            });
            let ids: Vec<String> = client
                .query(&format!(
                    "SELECT toString(snapshot_id) FROM {SNAPSHOTS} WHERE {owner}{after_clause} \
                     GROUP BY snapshot_id HAVING max(greatest(captured_at_ms, stored_at_ms)) < ? \
                     ORDER BY snapshot_id LIMIT ?"
                ))
                .bind(cutoff)
                .bind(EXPIRE_BATCH as u64)
                .fetch_all()
                .await?;
            let mut gone = Vec::with_capacity(ids.len());
            for id in &ids {
                let Ok(uuid) = id.parse::<uuid::Uuid>() else {
                    continue;
                };
                store.delete(uuid).await?;
                gone.push(format!("toUUID('{uuid}')"));
                after = Some(uuid);
            }
            if !gone.is_empty() {
                client
                    .query(&format!(
                        "ALTER TABLE {SNAPSHOTS} DELETE WHERE snapshot_id IN ({})",
                        gone.join(",")
                    ))
                    .execute()
                    .await?;
                tracing::info!(
                    snapshots = gone.len(),
                    owner,
                    "expired snapshots removed (objects, then rows)"
                );
                expired += gone.len() as u64;
            }
            if ids.len() < EXPIRE_BATCH {
                break;
            }
        }
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_lives_a_day_past_its_records_retention() {
        let settings = RetentionSettings {
            events_days: 30,
            tracks_days: 7,
            ..RetentionSettings::default()
        };
        let now = 100 * 86_400_000;
        assert_eq!(
            cutoffs(&settings, now),
            [
                ("track_id = 0", now - 31 * 86_400_000),
                ("track_id > 0", now - 8 * 86_400_000)
            ]
        );
    }
}
