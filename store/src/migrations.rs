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
use crate::rebuild::{self, Rebuild, RebuildError};

/// One migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
    /// A table rebuilt into a new layout: the SQL makes the new table, [`rebuild::run`]
    /// copies and swaps.
    pub rebuild: Option<Rebuild>,
}

/// All migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../migrations/0001_events.sql"),
        rebuild: None,
    },
    Migration {
        version: 2,
        name: "detections",
        sql: include_str!("../migrations/0002_detections.sql"),
        rebuild: None,
    },
    Migration {
        version: 3,
        name: "detections_hourly",
        sql: include_str!("../migrations/0003_detections_hourly.sql"),
        rebuild: None,
    },
    Migration {
        version: 4,
        name: "events_by_id",
        sql: include_str!("../migrations/0004_events_by_id.sql"),
        rebuild: None,
    },
    Migration {
        version: 5,
        name: "edge_heartbeats",
        sql: include_str!("../migrations/0005_edge_heartbeats.sql"),
        rebuild: None,
    },
    Migration {
        version: 6,
        name: "edge_heartbeats_v2",
        sql: include_str!("../migrations/0006_edge_heartbeats_v2.sql"),
        rebuild: None,
    },
    Migration {
        version: 7,
        name: "tracks",
        sql: include_str!("../migrations/0007_tracks.sql"),
        rebuild: None,
    },
    Migration {
        version: 8,
        name: "tracks_by_id",
        sql: include_str!("../migrations/0008_tracks_by_id.sql"),
        rebuild: None,
    },
    Migration {
        version: 9,
        name: "event_zones",
        sql: include_str!("../migrations/0009_event_zones.sql"),
        rebuild: None,
    },
    Migration {
        version: 10,
        name: "snapshots",
        sql: include_str!("../migrations/0010_snapshots.sql"),
        rebuild: None,
    },
    Migration {
        version: 11,
        name: "heartbeat_uploads",
        sql: include_str!("../migrations/0011_heartbeat_uploads.sql"),
        rebuild: None,
    },
    Migration {
        version: 12,
        name: "events_layout",
        sql: include_str!("../migrations/0012_events_layout.sql"),
        rebuild: Some(Rebuild {
            table: crate::tables::EVENTS,
            marker: "index_granularity = 1024",
            arrival: "ingested_at",
            id: "event_id",
        }),
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
    /// A table rebuild stopped. Starting again resumes it.
    #[error("migration {version:04}_{name} {source}")]
    Rebuild {
        version: u32,
        name: &'static str,
        #[source]
        source: RebuildError,
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
            Self::Rebuild { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

impl Migration {
    /// The migration's statements for database `db`.
    pub fn statements(&self, db: &str) -> Vec<String> {
        split_statements(&self.sql.replace("{db}", &format!("`{db}`")))
    }

    /// The statements to apply the migration by hand on a store nobody writes to meanwhile:
    /// its SQL, then a rebuild's copy, renames and views.
    pub fn printed_statements(&self, db: &str) -> Vec<String> {
        let mut statements = self.statements(db);
        if let Some(rebuild) = self.rebuild {
            statements.extend(rebuild.plain_statements(db, &statements_before(db, self.version)));
        }
        statements
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

/// Every statement of the migrations before `version`, in order.
pub fn statements_before(db: &str, version: u32) -> Vec<String> {
    MIGRATIONS
        .iter()
        .filter(|m| m.version < version)
        .flat_map(|m| m.statements(db))
        .collect()
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
    migrate_to(client, db, u32::MAX).await
}

/// Applies the migrations not yet recorded up to version `last`: a store as an older build
/// left it, for tests of the migrations that come after.
pub async fn migrate_to(client: &Client, db: &str, last: u32) -> Result<Vec<u32>, MigrationError> {
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
    for migration in unapplied(&applied)?
        .into_iter()
        .filter(|m| m.version <= last)
    {
        let statements = match migration.rebuild {
            Some(plan) => {
                let create = migration.statements(db);
                let earlier = statements_before(db, migration.version);
                rebuild::run(client, db, plan, &create, &earlier)
                    .await
                    .map_err(|source| MigrationError::Rebuild {
                        version: migration.version,
                        name: migration.name,
                        source,
                    })?;
                Vec::new()
            }
            None => migration.statements(db),
        };
        for (i, statement) in statements.iter().enumerate() {
            run_statement(client, db, statement)
                .await
                .map_err(|source| {
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
        record_applied(client, db, migration).await?;
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

/// Records `migration` as applied (its statements have run). Benchmarks also use it to keep
/// a store on an older schema while a build that would migrate it runs.
///
/// # Errors
/// When ClickHouse refuses the write or cannot be reached.
pub async fn record_applied(
    client: &Client,
    db: &str,
    migration: &Migration,
) -> Result<(), MigrationError> {
    client
        .query(&format!(
            "INSERT INTO `{db}`.schema_migrations (version, name, checksum) VALUES (?, ?, ?)"
        ))
        .bind(migration.version)
        .bind(migration.name)
        .bind(migration.checksum())
        .execute()
        .await
        .map_err(MigrationError::Bookkeeping)
}

/// Runs one migration statement. `ALTER TABLE t ADD COLUMN IF NOT EXISTS ...` is run as a
/// plain `ADD COLUMN` of the columns the table lacks (ClickHouse 18.16 has no `IF NOT EXISTS`
/// there), so it stays safe to run twice; two replicas adding the same column at once make
/// one of them fail with "already exists", and it then finds nothing left to add.
async fn run_statement(
    client: &Client,
    db: &str,
    statement: &str,
) -> Result<(), clickhouse::error::Error> {
    let Some((table, _)) = add_columns_target(statement) else {
        return client.query(statement).execute().await;
    };
    let mut attempts = 0;
    loop {
        let existing: Vec<String> = client
            .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
            .bind(db)
            .bind(table.as_str())
            .fetch_all()
            .await?;
        let Some(portable) = add_missing_columns(statement, &existing) else {
            return Ok(());
        };
        match client.query(&portable).execute().await {
            Err(error) if attempts == 0 && error.to_string().contains("already exists") => {
                attempts += 1;
            }
            done => return done,
        }
    }
}

/// `statement` as ClickHouse 18.16 takes it: `ADD COLUMN IF NOT EXISTS` (which it lacks) as a
/// plain `ADD COLUMN` of every column, for a schema applied by hand once
/// (`ingest-service --print-schema legacy`); anything else as it is.
pub fn portable(statement: String) -> String {
    add_missing_columns(&statement, &[]).unwrap_or(statement)
}

/// For `ALTER TABLE <db>.<table> ADD COLUMN IF NOT EXISTS ...`: the table's name and the
/// clauses after it.
fn add_columns_target(statement: &str) -> Option<(String, Vec<String>)> {
    let rest = without_comments(statement);
    let rest = rest.strip_prefix("ALTER TABLE ")?;
    let (target, clauses) = rest.split_once(char::is_whitespace)?;
    let table = target.rsplit('.').next()?.trim_matches('`').to_owned();
    let clauses = split_top_level(clauses);
    clauses
        .iter()
        .all(|c| c.starts_with("ADD COLUMN IF NOT EXISTS "))
        .then_some((table, clauses))
}

/// The statement without its whole-line comments.
fn without_comments(statement: &str) -> String {
    statement
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("never empty").push(c);
    }
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
}

/// The statement as a plain `ADD COLUMN` of the columns not in `existing`; `None` if every
/// column is there already.
fn add_missing_columns(statement: &str, existing: &[String]) -> Option<String> {
    let (_, clauses) = add_columns_target(statement)?;
    let text = without_comments(statement);
    let head = text.split_whitespace().take(3).collect::<Vec<_>>();
    let missing: Vec<String> = clauses
        .iter()
        .filter_map(|c| {
            let column = c.strip_prefix("ADD COLUMN IF NOT EXISTS ")?;
            let name = column.split_whitespace().next()?;
            (!existing.iter().any(|e| e == name)).then(|| format!("ADD COLUMN {column}"))
        })
        .collect();
    (!missing.is_empty()).then(|| format!("{} {}", head.join(" "), missing.join(", ")))
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
        assert_eq!(statements.len(), 18);
        // Every statement is safe to run twice: DDL with IF NOT EXISTS, backfills that skip
        // what is already there (ADD COLUMN IF NOT EXISTS runs as adds of what is missing).
        assert!(statements.iter().all(|s| s.contains("`db`.")
            && (s.contains("IF NOT EXISTS") || s.contains("NOT IN (SELECT"))));
        assert!(
            statements
                .iter()
                .all(|s| !s.contains("{db}") && !s.ends_with(';'))
        );
    }

    #[test]
    fn adding_columns_adds_only_the_missing_ones_without_if_not_exists() {
        let statement = "-- why\nALTER TABLE `db`.t\n    ADD COLUMN IF NOT EXISTS a UInt8 DEFAULT 1,\n    ADD COLUMN IF NOT EXISTS b Map(String, UInt8),\n    ADD COLUMN IF NOT EXISTS c Nullable(Int64)";
        assert_eq!(add_columns_target(statement).unwrap().0, "t");
        assert_eq!(
            add_missing_columns(statement, &["a".into()]).unwrap(),
            "ALTER TABLE `db`.t ADD COLUMN b Map(String, UInt8), ADD COLUMN c Nullable(Int64)"
        );
        let all = ["a", "b", "c"].map(String::from);
        assert_eq!(add_missing_columns(statement, &all), None);
        // Anything else runs as written.
        assert!(add_columns_target("ALTER TABLE `db`.t DROP COLUMN a").is_none());
        assert!(add_columns_target("CREATE TABLE IF NOT EXISTS `db`.t (x UInt8)").is_none());
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
            rebuild: None,
        };
        assert_eq!(crlf.checksum(), "72d150e7c77ff168");
        assert_eq!(MIGRATIONS[0].checksum(), "a4e2ca193c0f0aa5");
        assert_ne!(MIGRATIONS[0].checksum(), MIGRATIONS[1].checksum());
    }
}
