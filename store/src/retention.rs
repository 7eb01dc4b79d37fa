//! Retention: how long each table keeps its rows.
//!
//! Rows are kept for their table's days counted from the later of when they were captured
//! (sent, for heartbeats) and when they arrived, so an event from an edge that was offline
//! longer than retention, or whose clock ran behind, stays that long after it arrives
//! instead of being deleted at once (ingest also counts it, `events_expired_on_arrival`).
//! Partitions stay by capture day, so copies of one event always share a partition and
//! collapse. Rollups count from their hour: an aggregate has no arrival time.
//!
//! On servers with TTL the tables carry `TTL greatest(<time>, <arrival>) + INTERVAL <days>
//! DAY` (with `ttl_only_drop_parts = 1` where available, so expiry drops whole parts instead
//! of rewriting them: a part goes when its last row is due); a changed setting alters the
//! TTL at the next start, without touching data that is still inside the new window. On
//! servers without TTL (ClickHouse 18.16) a sweep drops a partition on a schedule once all
//! of it is past the cutoff and none of its parts was written after the cutoff (a part is
//! written when rows arrive, or merged later, so this errs on keeping). Tables are
//! partitioned by day (rollups by month): rows live up to a day (a month for rollups)
//! longer than with TTL, never shorter. (Ingest runs the sweep on its leader, on a
//! schedule: [`sweep`] is one pass.)

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};

use crate::capabilities::Capabilities;
use crate::tables;

/// How long each table keeps its rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days of raw events.
    pub events_days: u32,
    /// Days of per-object detections.
    pub detections_days: u32,
    /// Days of hourly rollups.
    pub rollups_days: u32,
    /// Days of edge heartbeats.
    pub heartbeats_days: u32,
    /// Days of track records (counted from the track's start, or its arrival if later).
    pub tracks_days: u32,
    /// How often the partition sweep runs on servers without TTL, in seconds.
    pub sweep_interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            events_days: 30,
            detections_days: 30,
            rollups_days: 400,
            heartbeats_days: 30,
            tracks_days: 30,
            sweep_interval_secs: 3600,
        }
    }
}

/// How a table is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// `toYYYYMMDD(...)`
    Day,
    /// `toYYYYMM(...)`
    Month,
}

/// A table under retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedTable {
    pub name: &'static str,
    /// What the days count from: the later of capture and arrival where rows have both.
    pub ttl_time: &'static str,
    pub partitioning: Partitioning,
    /// Whether the table gets its arrival column with its TTL: the tables kept by views,
    /// whose rows carry no arrival time of their own (see [`ARRIVAL_COLUMN`]).
    pub adds_arrival: bool,
}

/// The arrival column the tables kept by views get on a server with TTL: the view does not
/// write it, so it is computed at the view's insert (MATERIALIZED, not DEFAULT: an
/// `INSERT ... SELECT` without a column list, like migration 4's backfill, still fits). Added with the TTL, not by a
/// migration: ClickHouse 18.16 refuses a view's insert into a table with a column the view
/// does not write ("Expected column"), and its sweep needs no such column (it reads when
/// each part was written). Rows stored before it was added read it as the time they are
/// read until a merge writes it down: they stay up to their retention after the upgrade,
/// never less.
pub const ARRIVAL_COLUMN: &str = "ingested_at DateTime('UTC') MATERIALIZED now()";

/// The later of capture and arrival, for the tables that record both.
const CAPTURED_OR_ARRIVED: &str = "greatest(captured_at, ingested_at)";

impl RetentionSettings {
    /// Every retained table with its retention in days.
    pub fn tables(&self) -> [(RetainedTable, u32); 7] {
        [
            (
                RetainedTable {
                    name: tables::EVENTS,
                    ttl_time: CAPTURED_OR_ARRIVED,
                    partitioning: Partitioning::Day,
                    adds_arrival: false,
                },
                self.events_days,
            ),
            (
                RetainedTable {
                    name: tables::EVENTS_BY_ID,
                    ttl_time: CAPTURED_OR_ARRIVED,
                    partitioning: Partitioning::Day,
                    adds_arrival: true,
                },
                self.events_days,
            ),
            (
                RetainedTable {
                    name: tables::DETECTIONS,
                    ttl_time: CAPTURED_OR_ARRIVED,
                    partitioning: Partitioning::Day,
                    adds_arrival: true,
                },
                self.detections_days,
            ),
            (
                RetainedTable {
                    name: tables::DETECTIONS_HOURLY,
                    ttl_time: "hour",
                    partitioning: Partitioning::Month,
                    adds_arrival: false,
                },
                self.rollups_days,
            ),
            (
                RetainedTable {
                    name: tables::EDGE_HEARTBEATS,
                    ttl_time: "greatest(sent_at, received_at)",
                    partitioning: Partitioning::Day,
                    adds_arrival: false,
                },
                self.heartbeats_days,
            ),
            (
                RetainedTable {
                    name: tables::TRACKS,
                    ttl_time: "greatest(started_at, ingested_at)",
                    partitioning: Partitioning::Day,
                    adds_arrival: false,
                },
                self.tracks_days,
            ),
            (
                RetainedTable {
                    name: tables::TRACKS_BY_ID,
                    ttl_time: "greatest(started_at, ingested_at)",
                    partitioning: Partitioning::Day,
                    adds_arrival: true,
                },
                self.tracks_days,
            ),
        ]
    }

    /// The statements that set TTL on a server that has it.
    pub fn ttl_statements(&self, db: &str, caps: Capabilities) -> Vec<String> {
        if !caps.ttl {
            return Vec::new();
        }
        self.tables()
            .iter()
            .flat_map(|(table, days)| table.ttl_statements(db, *days, caps))
            .collect()
    }
}

impl RetainedTable {
    /// The statements that give this table a TTL of `days` and, where the server can, make
    /// the TTL drop whole parts.
    fn ttl_statements(&self, db: &str, days: u32, caps: Capabilities) -> Vec<String> {
        let mut out = Vec::new();
        if self.adds_arrival {
            out.push(format!(
                "ALTER TABLE `{db}`.{} ADD COLUMN IF NOT EXISTS {ARRIVAL_COLUMN}",
                self.name
            ));
        }
        out.push(format!(
            "ALTER TABLE `{db}`.{} MODIFY TTL {} + INTERVAL {days} DAY",
            self.name, self.ttl_time
        ));
        if caps.ttl_only_drop_parts {
            out.push(format!(
                "ALTER TABLE `{db}`.{} MODIFY SETTING ttl_only_drop_parts = 1",
                self.name
            ));
        }
        out
    }
}

/// Brings the tables' TTL in line with the settings, touching only tables whose TTL differs.
pub async fn apply_ttl(
    client: &Client,
    db: &str,
    settings: &RetentionSettings,
    caps: Capabilities,
) -> Result<(), clickhouse::error::Error> {
    if !caps.ttl {
        return Ok(());
    }
    for (table, days) in settings.tables() {
        let engine = crate::capabilities::engine_full(client, db, table.name).await?;
        let wanted = format!("TTL {} + toIntervalDay({days})", table.ttl_time);
        let drop_parts = !caps.ttl_only_drop_parts || engine.contains("ttl_only_drop_parts = 1");
        if engine.contains(&wanted) && drop_parts {
            continue;
        }
        tracing::info!(table = table.name, days, "setting table TTL");
        for statement in table.ttl_statements(db, days, caps) {
            client.query(&statement).execute().await?;
        }
    }
    Ok(())
}

/// The first instant after the partition `id` (e.g. `20261122` or `202611`); `None` if the
/// id does not parse.
pub fn partition_end(id: &str, partitioning: Partitioning) -> Option<OffsetDateTime> {
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let date = match partitioning {
        Partitioning::Day if id.len() == 8 => {
            let month = Month::try_from(id[4..6].parse::<u8>().ok()?).ok()?;
            Date::from_calendar_date(id[..4].parse().ok()?, month, id[6..].parse().ok()?)
                .ok()?
                .next_day()?
        }
        Partitioning::Month if id.len() == 6 => {
            let (year, month): (i32, u8) = (id[..4].parse().ok()?, id[4..].parse().ok()?);
            let (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            Date::from_calendar_date(year, Month::try_from(month).ok()?, 1).ok()?
        }
        _ => return None,
    };
    Some(date.midnight().assume_utc())
}

/// Drops every partition wholly older than its table's retention and not written to since
/// the cutoff; returns how many.
pub async fn sweep(
    client: &Client,
    db: &str,
    settings: &RetentionSettings,
    now: OffsetDateTime,
) -> Result<usize, clickhouse::error::Error> {
    let mut dropped = 0;
    for (table, days) in settings.tables() {
        let cutoff = now - time::Duration::days(i64::from(days));
        // When each partition was last written: its newest part, made when rows arrived or
        // by a later merge.
        let partitions: Vec<(String, u32)> = client
            .query(
                "SELECT partition, toUInt32(max(modification_time)) FROM system.parts \
                 WHERE database = ? AND table = ? AND active GROUP BY partition",
            )
            .bind(db)
            .bind(table.name)
            .fetch_all()
            .await?;
        for (id, written) in partitions {
            let Some(end) = partition_end(&id, table.partitioning) else {
                tracing::warn!(table = table.name, partition = %id, "unexpected partition id, not touching it");
                continue;
            };
            let arrived_late = i64::from(written) > cutoff.unix_timestamp();
            if arrived_late && end <= cutoff {
                tracing::debug!(table = table.name, partition = %id, "expired by capture time, kept: written since the cutoff");
            }
            if end <= cutoff && !arrived_late {
                // `id` is all digits (checked by partition_end), so it is safe in SQL.
                client
                    .query(&format!(
                        "ALTER TABLE `{db}`.{} DROP PARTITION {id}",
                        table.name
                    ))
                    .execute()
                    .await?;
                tracing::info!(table = table.name, partition = %id, days, "dropped an expired partition");
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ends() {
        let end = partition_end("20261231", Partitioning::Day).unwrap();
        assert_eq!(
            end.date(),
            Date::from_calendar_date(2027, Month::January, 1).unwrap()
        );
        let end = partition_end("202612", Partitioning::Month).unwrap();
        assert_eq!(
            end.date(),
            Date::from_calendar_date(2027, Month::January, 1).unwrap()
        );
        assert_eq!(partition_end("2026-12", Partitioning::Month), None);
        assert_eq!(partition_end("20261332", Partitioning::Day), None);
        assert_eq!(partition_end("tuple()", Partitioning::Day), None);
    }

    #[test]
    fn ttl_statements_follow_capabilities() {
        let s = RetentionSettings::default();
        assert!(s.ttl_statements("db", Capabilities::LEGACY).is_empty());
        let modern = s.ttl_statements("db", Capabilities::MODERN);
        assert_eq!(modern.len(), 17);
        assert!(modern[0].contains("TTL greatest(captured_at, ingested_at) + INTERVAL 30 DAY"));
        // The tables kept by views get their arrival column before their TTL names it.
        assert_eq!(
            modern[2],
            "ALTER TABLE `db`.events_by_id ADD COLUMN IF NOT EXISTS ingested_at DateTime('UTC') MATERIALIZED now()"
        );
        assert!(modern[3].contains(
            "events_by_id MODIFY TTL greatest(captured_at, ingested_at) + INTERVAL 30 DAY"
        ));
        assert!(modern[5].starts_with("ALTER TABLE `db`.detections ADD COLUMN IF NOT EXISTS"));
        assert!(modern[8].contains("MODIFY TTL hour + INTERVAL 400 DAY"));
        assert!(
            modern[12]
                .contains("tracks MODIFY TTL greatest(started_at, ingested_at) + INTERVAL 30 DAY")
        );
        assert_eq!(
            modern[14],
            "ALTER TABLE `db`.tracks_by_id ADD COLUMN IF NOT EXISTS ingested_at DateTime('UTC') MATERIALIZED now()"
        );
        assert!(modern[15].contains(
            "tracks_by_id MODIFY TTL greatest(started_at, ingested_at) + INTERVAL 30 DAY"
        ));
        assert!(modern[10].contains(
            "edge_heartbeats MODIFY TTL greatest(sent_at, received_at) + INTERVAL 30 DAY"
        ));
    }
}
