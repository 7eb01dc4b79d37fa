//! What the ClickHouse server can do, detected once at start-up.
//!
//! The schema runs on ClickHouse 18.16 (Debian's package) and on modern servers; the
//! differences that matter are handled here rather than scattered through the code.

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::tables;

/// The server's relevant capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `(major, minor)` of the server version.
    pub version: (u32, u32),
    /// Table TTL (`ALTER TABLE ... MODIFY TTL`): ClickHouse 19.6 and later.
    pub ttl: bool,
    /// The `ttl_only_drop_parts` MergeTree setting (drop whole expired parts, no rewrites).
    pub ttl_only_drop_parts: bool,
    /// The `max_partitions_per_insert_block` guard (default 100 partitions per INSERT):
    /// a backlog spanning more days than that would be refused forever, so ingest lifts it.
    pub partitions_per_insert_limit: bool,
    /// Insert deduplication on non-replicated tables (`non_replicated_deduplication_window`)
    /// keyed by the client's `insert_deduplication_token`, with materialized views that
    /// deduplicate by their source block: a batch sent again whole is dropped at insert time
    /// in `events` and in every view's table. Taken from 24.8 on, where views follow the
    /// source block (tested on 26.9; earlier servers with tokens deduplicated a view's
    /// blocks by their own contents, which could drop a rollup block that only looks
    /// like an earlier one). See [`DEDUP_WINDOW_BLOCKS`].
    pub insert_dedup_token: bool,
    /// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`: not in 18.16, taken from 19.1 on. The
    /// migration runner adds only missing columns on any server; this decides how the printed
    /// schema (`--print-schema`) spells such a statement.
    pub add_column_if_not_exists: bool,
    /// The `min_compress_block_size` / `max_compress_block_size` MergeTree settings (a
    /// table's own compressed block sizes): not in 18.16, where they are server-wide. See
    /// [`SMALL_BLOCKS`].
    pub table_compress_blocks: bool,
}

/// The compressed block sizes of `events` where the table can have its own: 4-64 kB
/// instead of 64 kB-1 MB. A read of a few rows decompresses whole blocks of every column,
/// so with the 1,024-row granules of migration 0012 this is what makes reading 100 events
/// spread over 50 cameras about 2.5x cheaper (docs/benchmarks.md, issue 21). Whole-table
/// scans read the same bytes; the files compress a little less well.
pub const SMALL_BLOCKS: &str = "min_compress_block_size = 4096, max_compress_block_size = 65536";

/// The tables given [`SMALL_BLOCKS`].
pub const SMALL_BLOCK_TABLES: [&str; 1] = [tables::EVENTS];

/// How many recent insert blocks each table remembers for deduplication (one per partition
/// an INSERT touches): a retried batch is recognised if fewer than this many blocks were
/// inserted since its first try. At ingest's batch sizes that is many minutes of traffic;
/// each remembered block costs a hash in the table's metadata.
pub const DEDUP_WINDOW_BLOCKS: u32 = 1000;

/// The tables a batch of events is written to: `events` and the materialized views' tables.
/// Each deduplicates itself; a view's table skips a block whose source block was a duplicate.
pub const DEDUP_TABLES: [&str; 4] = tables::WRITTEN_WITH_EVENTS;

impl Capabilities {
    /// What a modern server (24.x and later) has: used to print the modern schema.
    pub const MODERN: Self = Self {
        version: (24, 8),
        ttl: true,
        ttl_only_drop_parts: true,
        partitions_per_insert_limit: true,
        insert_dedup_token: true,
        add_column_if_not_exists: true,
        table_compress_blocks: true,
    };

    /// What Debian's ClickHouse 18.16 has.
    pub const LEGACY: Self = Self {
        version: (18, 16),
        ttl: false,
        ttl_only_drop_parts: false,
        partitions_per_insert_limit: false,
        insert_dedup_token: false,
        add_column_if_not_exists: false,
        table_compress_blocks: false,
    };

    /// Asks the server.
    pub async fn detect(client: &Client) -> Result<Self, clickhouse::error::Error> {
        #[derive(Row, Deserialize)]
        struct Version {
            version: String,
        }
        let Version { version } = client
            .query("SELECT version() AS version")
            .fetch_one::<Version>()
            .await?;
        let version = parse_version(&version);
        let ttl = version >= (19, 6);
        let ttl_only_drop_parts = ttl && client
            .query(
                "SELECT count() FROM system.merge_tree_settings WHERE name = 'ttl_only_drop_parts'",
            )
            .fetch_one::<u64>()
            .await
            .is_ok_and(|n| n > 0);
        let partitions_per_insert_limit = client
            .query("SELECT count() FROM system.settings WHERE name = 'max_partitions_per_insert_block'")
            .fetch_one::<u64>()
            .await?
            > 0;
        let insert_dedup_token = version >= (24, 8)
            && client
            .query("SELECT count() FROM system.settings WHERE name = 'insert_deduplication_token'")
            .fetch_one::<u64>()
            .await?
            > 0
            && client
                .query("SELECT count() FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'")
                .fetch_one::<u64>()
                .await?
                > 0;
        let table_compress_blocks = client
            .query("SELECT count() FROM system.merge_tree_settings WHERE name = 'max_compress_block_size'")
            .fetch_one::<u64>()
            .await?
            > 0;
        Ok(Self {
            version,
            ttl,
            ttl_only_drop_parts,
            partitions_per_insert_limit,
            insert_dedup_token,
            add_column_if_not_exists: version >= (19, 1),
            table_compress_blocks,
        })
    }

    /// The statements that give the tables of [`DEDUP_TABLES`] their deduplication window
    /// on a server with insert deduplication tokens (none elsewhere). Like TTL, table
    /// settings applied after the migrations, so the migrations stay one set for every
    /// server.
    pub fn dedup_statements(self, db: &str) -> Vec<String> {
        if !self.insert_dedup_token {
            return Vec::new();
        }
        DEDUP_TABLES
            .iter()
            .map(|table| dedup_statement(db, table))
            .collect()
    }

    /// The statements that give `table` the layout settings this server allows a table
    /// ([`SMALL_BLOCKS`]); none on 18.16.
    pub fn layout_statements(self, db: &str, table: &str) -> Vec<String> {
        if !self.table_compress_blocks {
            return Vec::new();
        }
        vec![format!(
            "ALTER TABLE `{db}`.{table} MODIFY SETTING {SMALL_BLOCKS}"
        )]
    }

    /// Every table setting applied after the migrations: the deduplication windows and the
    /// layout settings.
    pub fn table_setting_statements(self, db: &str) -> Vec<String> {
        let mut statements = self.dedup_statements(db);
        for table in SMALL_BLOCK_TABLES {
            statements.extend(self.layout_statements(db, table));
        }
        statements
    }
}

pub(crate) fn dedup_statement(db: &str, table: &str) -> String {
    format!(
        "ALTER TABLE `{db}`.{table} MODIFY SETTING non_replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}"
    )
}

/// Gives each table of [`DEDUP_TABLES`] its deduplication window where the server has
/// insert deduplication tokens, and each of [`SMALL_BLOCK_TABLES`] its block sizes where
/// tables can have their own, when the table lacks them.
pub async fn apply_table_settings(
    client: &Client,
    db: &str,
    caps: Capabilities,
) -> Result<(), clickhouse::error::Error> {
    if caps.insert_dedup_token {
        let wanted = format!("non_replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}");
        for table in DEDUP_TABLES {
            if !engine_full(client, db, table).await?.contains(&wanted) {
                tracing::info!(
                    table,
                    blocks = DEDUP_WINDOW_BLOCKS,
                    "setting the table's insert deduplication window"
                );
                client.query(&dedup_statement(db, table)).execute().await?;
            }
        }
    }
    for table in SMALL_BLOCK_TABLES {
        for statement in caps.layout_statements(db, table) {
            if !engine_full(client, db, table).await?.contains(SMALL_BLOCKS) {
                tracing::info!(
                    table,
                    SMALL_BLOCKS,
                    "setting the table's compressed block sizes"
                );
                client.query(&statement).execute().await?;
            }
        }
    }
    Ok(())
}

/// A table's `engine_full` (its engine with TTL and settings), to tell whether a table
/// setting is in place already.
pub(crate) async fn engine_full(
    client: &Client,
    db: &str,
    table: &str,
) -> Result<String, clickhouse::error::Error> {
    client
        .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(table)
        .fetch_one()
        .await
}

/// `"18.16.1"` -> `(18, 16)`; anything unparsable counts as `(0, 0)`, the most careful choice.
pub fn parse_version(text: &str) -> (u32, u32) {
    let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_servers_with_tokens_get_deduplication_windows() {
        assert!(Capabilities::LEGACY.dedup_statements("db").is_empty());
        let statements = Capabilities::MODERN.dedup_statements("db");
        assert_eq!(statements.len(), DEDUP_TABLES.len());
        assert!(
            statements
                .iter()
                .all(|s| s.contains("non_replicated_deduplication_window = 1000"))
        );
        assert!(statements[3].starts_with("ALTER TABLE `db`.detections_hourly"));
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("18.16.1"), (18, 16));
        assert_eq!(parse_version("26.9.2.1"), (26, 9));
        assert_eq!(parse_version("garbage"), (0, 0));
    }
}
