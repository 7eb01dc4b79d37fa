//! What the ClickHouse server can do, detected once at start-up.
//!
//! The schema runs on ClickHouse 18.16 (Debian's package) and on modern servers; the
//! differences that matter are handled here rather than scattered through the code.

use clickhouse::{Client, Row};
use serde::Deserialize;

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
}

impl Capabilities {
    /// What a modern server (24.x and later) has: used to print the modern schema.
    pub const MODERN: Self = Self {
        version: (24, 8),
        ttl: true,
        ttl_only_drop_parts: true,
        partitions_per_insert_limit: true,
    };

    /// What Debian's ClickHouse 18.16 has.
    pub const LEGACY: Self = Self {
        version: (18, 16),
        ttl: false,
        ttl_only_drop_parts: false,
        partitions_per_insert_limit: false,
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
        Ok(Self {
            version,
            ttl,
            ttl_only_drop_parts,
            partitions_per_insert_limit,
        })
    }
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
    fn parses_versions() {
        assert_eq!(parse_version("18.16.1"), (18, 16));
        assert_eq!(parse_version("26.9.2.1"), (26, 9));
        assert_eq!(parse_version("garbage"), (0, 0));
    }
}
