//! The retention sweep's schedule, on servers without TTL (ClickHouse 18.16): one pass of
//! [`sightline_store::retention::sweep`] every `sweep_interval_secs`, on the leader only.

use std::time::Duration;

use clickhouse::Client;
use sightline_store::retention::{RetentionSettings, sweep};
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
    let mut ticker = tokio::time::interval(Duration::from_secs(settings.sweep_interval_secs));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // One replica sweeps: the Lease holder (or the only instance).
        if !leadership.is_leader() {
            continue;
        }
        match sweep(&client, &db, &settings, OffsetDateTime::now_utc()).await {
            Ok(n) => {
                metrics.retention_partitions_dropped.inc_by(n as u64);
            }
            Err(error) => {
                metrics.retention_errors.inc();
                tracing::error!(%error, "retention sweep failed; will try again");
            }
        }
    }
}
