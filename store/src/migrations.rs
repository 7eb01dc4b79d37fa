//! Versioned, ordered schema migrations.
//!
//! The migrations are the files in `store/migrations/`, compiled into the binary, with
//! `{db}` standing for the database. Applied versions are recorded in `schema_migrations`
//! with a checksum of the file, so an edited migration is caught instead of silently
//! diverging. Every statement is idempotent (`IF NOT EXISTS`), so two replicas starting
//! together may both run a migration and both record it; the record table collapses the
//! duplicate. Where replicas elect (ingest's Kubernetes Lease), they migrate one at a time
//! under the lock [`crate::setup::prepare`] is given. A statement ClickHouse rejects stops
//! the service with the migration named.

use clickhouse::{Client, Row};
use serde::Deserialize;
use thiserror::Error;

use crate::error::is_unavailable;

/// One migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// All migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../migrations/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "detections",
        sql: include_str!("../migrations/0002_detections.sql"),
    },
    Migration {
        version: 3,
        name: "detections_hourly",
        sql: include_str!("../migrations/0003_detections_hourly.sql"),
    },
    Migration {
        version: 4,
        name: "events_by_id",
        sql: include_str!("../migrations/0004_events_by_id.sql"),
    },
    Migration {
        version: 5,
        name: "edge_heartbeats",
        sql: include_str!("../migrations/0005_edge_heartbeats.sql"),
    },
];

/// Why migrating failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// ClickHouse is unreachable; worth retrying.
    #[error("ClickHouse unreachable while migrating: {0}")]
    Unavailable(#[source] clickhouse::error::Error),
    /// A statement was rejected: the service must not run on a half-made schema.
    #[error("migration {version:04}_{name} failed at statement {statement}: {source}")]
    Failed {
        version: u32,
        name: &'static str,
        statement: usize,
        #[source]
        source: clickhouse::error::Error,
    },
    /// A migration that was applied has been edited since.
    #[error(
        "migration {version:04}_{name} was changed after it was applied (checksum {applied} in the database, {current} in this build)"
    )]
    Changed {
        version: u32,
        name: &'static str,
        applied: String,
        current: String,
    },
    /// Reading or writing `schema_migrations` failed.
    #[error("failed to read or record schema_migrations: {0}")]
    Bookkeeping(#[source] clickhouse::error::Error),
}

impl MigrationError {
    /// Whether retrying later can help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Bookkeeping(e) => is_unavailable(e),
            _ => false,
        }
    }
}

impl Migration {
    /// The migration's statements for database `db`.
    pub fn statements(&self, db: &str) -> Vec<String> {
        split_statements(&self.sql.replace("{db}", &format!("`{db}`")))
    }

    /// A stable checksum of the file (FNV-1a, 64 bits, hex).
    pub fn checksum(&self) -> String {
        // Over the text with LF line ends, so a checkout with CRLF files agrees.
        let hash = self
            .sql
            .bytes()
            .filter(|&b| b != b'\r')
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!("{hash:016x}")
    }
}

/// Splits SQL text into statements at lines that end with `;` (trailing spaces and CRLF line
/// ends allowed), dropping pieces that are only comments.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let line = line.trim_end();
        if let Some(end) = line.strip_suffix(';') {
            current.push_str(end);
            statements.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    statements.push(current);
    statements
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
        })
        .collect()
}

/// The statements that create the database and the bookkeeping table.
pub fn bootstrap(db: &str) -> [String; 2] {
    [
        format!("CREATE DATABASE IF NOT EXISTS `{db}`"),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.schema_migrations (\
             version UInt32, name String, checksum String, applied_at DateTime('UTC') DEFAULT now()) \
             ENGINE = ReplacingMergeTree ORDER BY version"
        ),
    ]
}

/// Applies every migration not yet recorded; returns the versions it applied.
pub async fn migrate(client: &Client, db: &str) -> Result<Vec<u32>, MigrationError> {
    for statement in bootstrap(db) {
        client.query(&statement).execute().await.map_err(|e| {
            if is_unavailable(&e) {
                MigrationError::Unavailable(e)
            } else {
                MigrationError::Bookkeeping(e)
            }
        })?;
    }
    let applied = applied(client, db).await?;
    let mut done = Vec::new();
    for migration in unapplied(&applied)? {
        let current = migration.checksum();
        for (i, statement) in migration.statements(db).iter().enumerate() {
            client.query(statement).execute().await.map_err(|source| {
                if is_unavailable(&source) {
                    MigrationError::Unavailable(source)
                } else {
                    MigrationError::Failed {
                        version: migration.version,
                        name: migration.name,
                        statement: i + 1,
                        source,
                    }
                }
            })?;
        }
        client
            .query(&format!(
                "INSERT INTO `{db}`.schema_migrations (version, name, checksum) VALUES (?, ?, ?)"
            ))
            .bind(migration.version)
            .bind(migration.name)
            .bind(current.as_str())
            .execute()
            .await
            .map_err(MigrationError::Bookkeeping)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        done.push(migration.version);
    }
    if let Some(newest) = applied.iter().map(|a| a.version).max()
        && newest > MIGRATIONS.last().map_or(0, |m| m.version)
    {
        tracing::warn!(
            newest,
            "the schema is newer than this build (an upgrade in progress?)"
        );
    }
    Ok(done)
}

/// One recorded version and every checksum recorded for it.
#[derive(Debug, Row, Deserialize)]
struct Applied {
    version: u32,
    checksums: Vec<String>,
}

async fn applied(client: &Client, db: &str) -> Result<Vec<Applied>, MigrationError> {
    // Every checksum recorded for a version (replicas may each have recorded one, and copies
    // collapse only when parts merge): any that differs from this build's file is a change.
    client
        .query(&format!(
            "SELECT version, groupUniqArray(checksum) AS checksums FROM `{db}`.schema_migrations GROUP BY version ORDER BY version"
        ))
        .fetch_all::<Applied>()
        .await
        .map_err(MigrationError::Bookkeeping)
}

/// This build's migrations that `applied` lacks, in order; an applied one whose file
/// changed since is an error (before anything runs).
fn unapplied(applied: &[Applied]) -> Result<Vec<&'static Migration>, MigrationError> {
    let mut pending = Vec::new();
    for migration in MIGRATIONS {
        let Some(recorded) = applied.iter().find(|a| a.version == migration.version) else {
            pending.push(migration);
            continue;
        };
        let current = migration.checksum();
        if let Some(changed) = recorded.checksums.iter().find(|c| **c != current) {
            return Err(MigrationError::Changed {
                version: migration.version,
                name: migration.name,
                applied: changed.clone(),
                current,
            });
        }
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_split() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        let statements: Vec<_> = MIGRATIONS.iter().flat_map(|m| m.statements("db")).collect();
        assert_eq!(statements.len(), 9);
        // Every statement is safe to run twice: DDL with IF NOT EXISTS, backfills that skip
        // what is already there.
        assert!(statements.iter().all(|s| s.contains("`db`.")
            && (s.contains("IF NOT EXISTS") || s.contains("NOT IN (SELECT"))));
        assert!(
            statements
                .iter()
                .all(|s| !s.contains("{db}") && !s.ends_with(';'))
        );
    }

    #[test]
    fn splitting_tolerates_crlf_trailing_spaces_and_comments() {
        let sql = "-- header\r\nCREATE TABLE a (x UInt8);  \r\n\r\n-- only a comment\r\nCREATE VIEW b AS SELECT 1;\n-- trailing\n";
        assert_eq!(
            split_statements(sql),
            [
                "-- header\nCREATE TABLE a (x UInt8)",
                "-- only a comment\nCREATE VIEW b AS SELECT 1"
            ]
        );
    }

    #[test]
    fn checksums_are_stable() {
        // Databases record these: the algorithm and the applied files must never change.
        let crlf = Migration {
            version: 0,
            name: "probe",
            sql: "SELECT 1\r\n",
        };
        assert_eq!(crlf.checksum(), "72d150e7c77ff168");
        assert_eq!(MIGRATIONS[0].checksum(), "a4e2ca193c0f0aa5");
        assert_ne!(MIGRATIONS[0].checksum(), MIGRATIONS[1].checksum());
    }
}
