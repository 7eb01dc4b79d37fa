//! Bringing a server's schema up to this build: detect what the server can do, apply the
//! migrations, set retention TTL and the table settings (insert deduplication windows,
//! compressed block sizes) where the server has them. Where several writers start together, the caller serialises this with a
//! [`SchemaLock`] (ingest holds a Kubernetes Lease); the store knows nothing of how.

use std::future::Future;

use clickhouse::Client;
use thiserror::Error;

use crate::capabilities::{self, Capabilities};
use crate::error::is_unavailable;
use crate::migrations::{self, MigrationError};
use crate::retention::{self, RetentionSettings};

/// Runs schema work one writer at a time.
pub trait SchemaLock: Sync {
    /// Runs `work` while holding the lock: waits for it first, keeps it while `work` runs.
    fn hold<F>(&self, work: F) -> impl Future<Output = F::Output> + Send
    where
        F: Future + Send,
        F::Output: Send;
}

/// No lock: the only writer (outside Kubernetes, tests, benches).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLock;

impl SchemaLock for NoLock {
    fn hold<F>(&self, work: F) -> impl Future<Output = F::Output> + Send
    where
        F: Future + Send,
        F::Output: Send,
    {
        work
    }
}

/// A lock where there is one, none where there is not.
impl<L: SchemaLock> SchemaLock for Option<L> {
    async fn hold<F>(&self, work: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        match self {
            Some(lock) => lock.hold(work).await,
            None => work.await,
        }
    }
}

/// Why the ClickHouse schema could not be prepared.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SetupError {
    #[error("failed to detect the ClickHouse server's capabilities: {0}")]
    Detect(#[source] clickhouse::error::Error),
    #[error(transparent)]
    Migrate(#[from] MigrationError),
    #[error("failed to set the retention TTL: {0}")]
    Ttl(#[source] clickhouse::error::Error),
    #[error("failed to set the tables' insert deduplication window: {0}")]
    TableSettings(#[source] clickhouse::error::Error),
}

impl SetupError {
    /// Whether retrying later can help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Detect(e) | Self::Ttl(e) | Self::TableSettings(e) => is_unavailable(e),
            Self::Migrate(e) => e.is_transient(),
        }
    }
}

/// Detects what the server can do, then, under `lock`, applies the migrations and sets
/// retention TTL and the table settings (deduplication windows, block sizes) where the server
/// has them (a second writer that waited for the lock finds nothing left to migrate and sets
/// the same TTL).
pub async fn prepare(
    admin: &Client,
    db: &str,
    retention: &RetentionSettings,
    lock: &impl SchemaLock,
) -> Result<Capabilities, SetupError> {
    let caps = Capabilities::detect(admin)
        .await
        .map_err(SetupError::Detect)?;
    let work = async {
        migrations::migrate(admin, db).await?;
        retention::apply_ttl(admin, db, retention, caps)
            .await
            .map_err(SetupError::Ttl)?;
        capabilities::apply_table_settings(admin, db, caps)
            .await
            .map_err(SetupError::TableSettings)
    };
    lock.hold(work).await?;
    Ok(caps)
}

/// Every statement the schema takes on a server with `caps`, in order: the bootstrap, the
/// migrations (a rebuild as its plain copy and renames), the retention TTL, the table
/// settings (for review, or to apply by hand: `ingest-service --print-schema`).
pub fn statements(db: &str, retention: &RetentionSettings, caps: Capabilities) -> Vec<String> {
    migrations::bootstrap(db)
        .into_iter()
        .chain(
            migrations::MIGRATIONS
                .iter()
                .flat_map(|m| m.printed_statements(db))
                .map(|s| {
                    if caps.add_column_if_not_exists {
                        s
                    } else {
                        migrations::portable(s)
                    }
                }),
        )
        .chain(retention.ttl_statements(db, caps))
        .chain(caps.table_setting_statements(db))
        .collect()
}
