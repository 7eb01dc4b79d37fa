//! Rebuilding a table whose layout ClickHouse cannot change in place.
//!
//! ClickHouse fixes a MergeTree table's granularity and sorting key when the table is made.
//! A migration that changes them (`Migration::rebuild`) makes a new table beside the old
//! one (its SQL: `CREATE TABLE <table>_rebuild AS <table> ...`) and then, here:
//!
//! 1. copies every partition of `<table>` into `<table>_rebuild`, one at a time, while the
//!    table stays live (ingest may keep writing);
//! 2. copies what arrived meanwhile, into any partition (an edge back online sends old
//!    days): each partition whose row count grew is completed with the rows the new table
//!    lacks. A view never sees these copies (none reads `<table>_rebuild`). Should a row be
//!    copied twice anyway (two writers running the rebuild at once), that is harmless: the
//!    tables are ReplacingMergeTree on a key that includes the event id, and readers use
//!    `LIMIT 1 BY`;
//! 3. renames `<table>` to `<table>_old`. New writes fail from here until step 4 (ingest
//!    keeps the batch and retries it), and every partition is completed from `<table>_old`
//!    once more;
//! 4. renames `<table>_rebuild` to `<table>`;
//! 5. makes the views over the table read the new one. On ClickHouse 18.16 (Ordinary
//!    databases) a view follows its source's *name* and already does. In an Atomic database
//!    (modern servers) it followed the renamed old table, so each view is dropped and made
//!    again from its migration's text, and the rows another writer put in the new table
//!    before that are passed through the view by hand;
//! 6. drops `<table>_old`, after waiting for the INSERTs already running at step 3 and
//!    copying what they wrote into it since (a modern server lets them finish into the
//!    renamed table; 18.16's rename waits for them): renamed `<table>_dropped` at once,
//!    then dropped a partition at a time (a crash meanwhile: dropped at the next start).
//!
//! A crash anywhere leaves a state the next start recognises from which tables exist and
//! which layout `<table>` has (its `engine_full` carries [`Rebuild::marker`]):
//!
//! | `<table>` | `_rebuild` | `_old` | resumes at |
//! |---|---|---|---|
//! | old layout | any | no | 1 (partitions copied are kept, a half-copied one completed) |
//! | missing | yes | yes | 3's copy |
//! | missing | no | yes | `_old` renamed back, then 1 |
//! | new layout | no | yes | 5 |
//! | new layout | no | no | done |
//!
//! Two writers may run it at once (replicas starting together without a lock): nothing is
//! dropped that the other may be filling, and a step that fails because the other moved
//! the tables on is followed by the next one from the new state.
//!
//! What it costs: the copy reads and writes every row once (the query bench's 10M events:
//! under a minute), and the disk holds both tables until step 6. The views' tables are
//! never rewritten. One imprecision, only with another writer running during the swap (an
//! ingest replica of an older build in a rolling upgrade): a row that writer put in the new
//! table in the moment before step 5 made the views again may be counted twice in the
//! hourly rollup, as a redelivered event already may be; `events` and `detections` hold it
//! once.

use clickhouse::Client;

use crate::capabilities::Capabilities;
use thiserror::Error;

/// Why a rebuild stopped. Starting again resumes it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// ClickHouse is unreachable; worth retrying.
    #[error("stopped: ClickHouse unreachable: {0}")]
    Unavailable(#[source] clickhouse::error::Error),
    /// A step was rejected.
    #[error("failed while {step}: {source}")]
    Step {
        step: String,
        #[source]
        source: clickhouse::error::Error,
    },
    /// The tables are in a state the rebuild did not leave them in.
    #[error("cannot go on: {0}")]
    State(String),
}

impl RebuildError {
    /// Whether retrying later can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A rebuild of one table into a new layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuild {
    /// The table rebuilt.
    pub table: &'static str,
    /// Text the rebuilt table's `engine_full` has and the old one's lacks.
    pub marker: &'static str,
    /// The table's arrival-time column (`DateTime`, set by the server on insert): what
    /// tells rows that arrived during the copy.
    pub arrival: &'static str,
    /// The column that names a row (with the sorting key, what makes two copies one).
    pub id: &'static str,
}

/// How far back from the newest row copied a catch-up copy reaches: longer than an INSERT
/// can run between taking its arrival time and becoming visible.
const CATCH_UP_MARGIN_SECS: u32 = 60;

/// How long the swap waits for INSERTs that began before it (a batch's INSERT is bounded by
/// ingest's ClickHouse timeout, 30 s by default).
const INSERT_WAIT_SECS: u32 = 120;

/// How many times a rebuild goes on after another writer moved the tables under it.
const MAX_RACES: u32 = 8;

/// How many steps a rebuild takes at most: the four of one run, and those of every race.
const MAX_STEPS: u32 = 4 * (MAX_RACES + 1);

/// What a rebuild does on a server, one step named at a time for errors.
struct Run<'a> {
    client: &'a Client,
    db: &'a str,
    rebuild: Rebuild,
    /// The migration's statements: what makes the new table.
    create: &'a [String],
    /// Every statement of the migrations before it: where the views over the table are.
    earlier: &'a [String],
}

/// Which of the tables exist, and the layout of the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `<table>` with the old layout: start (or start again) at the copy.
    Old,
    /// Only `_rebuild` and `_old`: the crash came between the renames.
    BetweenRenames,
    /// Only `_old`: restore it, then start again.
    OnlyOld,
    /// `<table>` rebuilt, `_old` still there: the views and the drop are left.
    Swapped,
    /// Nothing left to do.
    Done,
}

impl Rebuild {
    /// The new table's name while it is being filled.
    pub fn new_name(&self) -> String {
        format!("{}_rebuild", self.table)
    }

    /// The old table's name between the swap and its drop.
    pub fn old_name(&self) -> String {
        format!("{}_old", self.table)
    }

    /// The old table's name once nothing needs it, while it is dropped.
    pub fn dropped_name(&self) -> String {
        format!("{}_dropped", self.table)
    }

    /// The statements a person applying the schema by hand runs after the migration's SQL
    /// (`ingest-service --print-schema`), on a store nobody writes to meanwhile; `earlier`
    /// are the statements of the migrations before.
    pub fn plain_statements(&self, db: &str, earlier: &[String]) -> Vec<String> {
        let (table, new, old) = (self.table, self.new_name(), self.old_name());
        let mut statements = vec![
            format!("INSERT INTO `{db}`.{new} SELECT * FROM `{db}`.{table}"),
            format!("RENAME TABLE `{db}`.{table} TO `{db}`.{old}"),
            format!("RENAME TABLE `{db}`.{new} TO `{db}`.{table}"),
        ];
        // Harmless where views follow the name (18.16), needed where they follow the table.
        for view in views_over(db, table, earlier) {
            statements.push(format!("DROP TABLE IF EXISTS `{db}`.{}", view.name));
            statements.push(view.create);
        }
        statements.push(format!("DROP TABLE `{db}`.{old}"));
        statements
    }
}

/// A materialized view over the rebuilt table, as its migration made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) name: String,
    pub(crate) target: String,
    /// The `CREATE MATERIALIZED VIEW` statement.
    pub(crate) create: String,
    /// Its `SELECT`.
    pub(crate) select: String,
}

impl View {
    /// The view's own insert for the rows of its source that match `condition`.
    pub(crate) fn backfill(&self, db: &str, condition: &str) -> String {
        let select = match self.select.find("\nGROUP BY") {
            Some(at) => format!(
                "{}\nWHERE {condition}{}",
                &self.select[..at],
                &self.select[at..]
            ),
            None => format!("{}\nWHERE {condition}", self.select),
        };
        format!("INSERT INTO `{db}`.{} {select}", self.target)
    }
}

/// Whether `engine_full` has `setting` (`name = value`) exactly, not as a prefix of a
/// longer value.
fn has_setting(engine_full: &str, setting: &str) -> bool {
    engine_full.match_indices(setting).any(|(at, _)| {
        engine_full[at + setting.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_ascii_alphanumeric())
    })
}

/// Whether SQL `text` reads `db`.`table` (`FROM`, names quoted or not).
fn reads_table(text: &str, db: &str, table: &str) -> bool {
    let unquoted = text.replace('`', "");
    let source = format!("FROM {db}.{table}");
    unquoted.match_indices(&source).any(|(at, _)| {
        unquoted[at + source.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// Every materialized view that `statements` make over `table`, in order.
pub(crate) fn views_over(db: &str, table: &str, statements: &[String]) -> Vec<View> {
    statements
        .iter()
        .filter_map(|statement| {
            let text: String = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let rest = text.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS ")?;
            if !reads_table(&text, db, table) {
                return None;
            }
            let unqualify = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
            let name = unqualify(rest.split_whitespace().next()?);
            let target = unqualify(rest.split(" TO ").nth(1)?.split_whitespace().next()?);
            let select = text.split_once(" AS\nSELECT")?.1;
            Some(View {
                name,
                target,
                select: format!("SELECT{select}"),
                create: text.clone(),
            })
        })
        .collect()
}

/// Runs `rebuild` to its end, from wherever an earlier run stopped: `create` are its
/// migration's statements (they make the new table), `earlier` those of the migrations
/// before (they made the views over the table).
pub async fn run(
    client: &Client,
    db: &str,
    rebuild: Rebuild,
    create: &[String],
    earlier: &[String],
) -> Result<(), RebuildError> {
    Run {
        client,
        db,
        rebuild,
        create,
        earlier,
    }
    .go()
    .await
}

impl Run<'_> {
    fn failed(&self, step: &str) -> impl FnOnce(clickhouse::error::Error) -> RebuildError {
        let step = step.to_owned();
        move |source| {
            if crate::error::is_unavailable(&source) {
                RebuildError::Unavailable(source)
            } else {
                RebuildError::Step { step, source }
            }
        }
    }

    async fn execute(&self, step: &str, sql: &str) -> Result<(), RebuildError> {
        self.client
            .query(sql)
            .execute()
            .await
            .map_err(self.failed(step))
    }

    fn qualified(&self, table: &str) -> String {
        format!("`{}`.{table}", self.db)
    }

    /// The three tables' `engine_full`, read at once (`None` for one that does not exist).
    /// ClickHouse 18.16 fails a read of `system.tables` that meets a table being renamed or
    /// dropped: such a read is tried again.
    async fn tables(&self) -> Result<[Option<String>; 3], RebuildError> {
        let names = [
            self.rebuild.table.to_owned(),
            self.rebuild.new_name(),
            self.rebuild.old_name(),
        ];
        let mut tries = 0;
        let found: Vec<(String, String)> = loop {
            let read = self
                .client
                .query(
                    "SELECT name, engine_full FROM system.tables \
                     WHERE database = ? AND name IN (?, ?, ?)",
                )
                .bind(self.db)
                .bind(&names[0])
                .bind(&names[1])
                .bind(&names[2])
                .fetch_all()
                .await;
            match read {
                Ok(found) => break found,
                Err(error) if tries < 10 && !crate::error::is_unavailable(&error) => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(error) => return Err(self.failed("reading the tables' state")(error)),
            }
        };
        Ok(names.map(|name| {
            found
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, engine)| engine.clone())
        }))
    }

    async fn state(&self) -> Result<State, RebuildError> {
        let [live, new, old] = self.tables().await?;
        let (new, old) = (new.is_some(), old.is_some());
        let rebuilt = live.as_ref().map(|e| has_setting(e, self.rebuild.marker));
        Ok(match (rebuilt, new, old) {
            (Some(false), _, false) => State::Old,
            (None, true, true) => State::BetweenRenames,
            (None, false, true) => State::OnlyOld,
            (Some(true), false, true) => State::Swapped,
            (Some(true), false, false) => State::Done,
            _ => {
                return Err(RebuildError::State(format!(
                    "`{}` {}, `{}` {}, `{}` {}: resolve by hand (keep the table with the \
                         data, drop or rename the others), then start again",
                    self.rebuild.table,
                    match rebuilt {
                        None => "missing",
                        Some(true) => "rebuilt",
                        Some(false) => "not rebuilt",
                    },
                    self.rebuild.new_name(),
                    if new { "exists" } else { "missing" },
                    self.rebuild.old_name(),
                    if old { "exists" } else { "missing" },
                )));
            }
        })
    }

    async fn go(&self) -> Result<(), RebuildError> {
        let table = self.rebuild.table;
        let mut raced = 0;
        for _ in 0..MAX_STEPS {
            let state = self.state().await?;
            if state == State::Done {
                // A crash may have left the old table set aside and not yet dropped.
                self.drop_set_aside().await?;
                tracing::info!(table, "table rebuilt");
                return Ok(());
            }
            tracing::info!(table, ?state, "rebuilding a table into a new layout");
            let Err(error) = self.advance(state).await else {
                continue;
            };
            // Another writer running the same rebuild (two replicas without a lock) may
            // have moved the tables under this one: go on from where it left them. A step
            // that failed with the tables as they were is an error.
            let now = self.state().await?;
            if now == state || raced == MAX_RACES || error.is_transient() {
                return Err(error);
            }
            raced += 1;
            tracing::info!(table, %error, ?state, ?now, "another writer moved the rebuild on");
        }
        Err(RebuildError::State(format!(
            "`{table}` still not rebuilt after {MAX_STEPS} steps"
        )))
    }

    /// Takes the tables from `state` to the next state.
    async fn advance(&self, state: State) -> Result<(), RebuildError> {
        let (table, new, old) = (
            self.rebuild.table,
            self.rebuild.new_name(),
            self.rebuild.old_name(),
        );
        let rename = |from: &str, to: &str| {
            format!(
                "RENAME TABLE {} TO {}",
                self.qualified(from),
                self.qualified(to)
            )
        };
        match state {
            State::OnlyOld => {
                self.execute("restoring the old table", &rename(&old, table))
                    .await
            }
            State::Old => {
                self.copy().await?;
                self.execute("renaming the old table", &rename(table, &old))
                    .await
            }
            State::BetweenRenames => {
                // `_old` is written no more (but by INSERTs already running on a modern
                // server: see `Swapped`): completing every partition from it completes
                // the new table.
                self.copy_all(&old).await?;
                self.execute("renaming the new table", &rename(&new, table))
                    .await
            }
            State::Swapped => {
                // An INSERT already running when `<table>` was renamed away goes on into
                // the old table on a modern server (18.16's rename waits for it): what it
                // wrote after step 3's copy is copied now, before the views are made again
                // (it went through the views it started with, which still write to their
                // tables: tested). Those still running are waited for.
                let views_follow_names = self.database_engine().await? == "Ordinary";
                if !views_follow_names {
                    self.wait_for_inserts().await?;
                }
                self.copy_recent(&old, table).await?;
                if !views_follow_names {
                    self.follow_views().await?;
                }
                // Out of the way at once (a second writer finds the rebuild done), then
                // dropped.
                self.execute(
                    "setting the old table aside",
                    &rename(&old, &self.rebuild.dropped_name()),
                )
                .await?;
                self.drop_set_aside().await
            }
            State::Done => Ok(()),
        }
    }

    /// Steps 1 and 2: makes the new table (or takes the one a stopped run left: copying a
    /// row twice is harmless) and copies every partition, then what arrived meanwhile.
    async fn copy(&self) -> Result<(), RebuildError> {
        let (table, new) = (self.rebuild.table, self.rebuild.new_name());
        for (i, statement) in self.create.iter().enumerate() {
            self.execute(&format!("statement {}", i + 1), statement)
                .await?;
        }
        // Table settings that depend on the server (small compressed blocks where the
        // table can have them) are in place before any row is written.
        let caps = Capabilities::detect(self.client)
            .await
            .map_err(self.failed("detecting the server's capabilities"))?;
        // And its insert deduplication window, so a batch retried meanwhile is recognised.
        let dedup = caps
            .insert_dedup_token
            .then(|| crate::capabilities::dedup_statement(self.db, &new));
        for statement in caps
            .layout_statements(self.db, &new)
            .into_iter()
            .chain(dedup)
        {
            self.execute("setting the new table's layout", &statement)
                .await?;
        }
        self.copy_all(table).await?;
        // Step 2: what arrived meanwhile, in any partition (an edge back online sends old
        // days): each partition is compared again and completed.
        self.copy_all(table).await
    }

    /// Drops the old table set aside at the end, if there is one: partition by partition
    /// first, as ClickHouse refuses to drop a table over `max_table_size_to_drop` (50 GB
    /// by default) at once.
    async fn drop_set_aside(&self) -> Result<(), RebuildError> {
        // A second writer dropping it too makes some of these fail (18.16: "Deleting data
        // part ... doesn't exist"): what is left is looked at again.
        let mut tries = 0;
        loop {
            match self.try_drop_set_aside().await {
                Err(error) if tries < 5 && !error.is_transient() => {
                    tries += 1;
                    tracing::info!(%error, "dropping the old table again");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                done => return done,
            }
        }
    }

    async fn try_drop_set_aside(&self) -> Result<(), RebuildError> {
        let aside = self.rebuild.dropped_name();
        let exists: u64 = self
            .client
            .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
            .bind(self.db)
            .bind(&aside)
            .fetch_one()
            .await
            .map_err(self.failed("looking for the old table set aside"))?;
        if exists == 0 {
            return Ok(());
        }
        for partition in self.partitions(&aside).await? {
            self.client
                .query(&format!(
                    "ALTER TABLE {} DROP PARTITION ID ?",
                    self.qualified(&aside)
                ))
                .bind(&partition)
                .execute()
                .await
                .map_err(self.failed(&format!("dropping the old table's partition {partition}")))?;
        }
        self.execute(
            "dropping the old table",
            &format!("DROP TABLE IF EXISTS {}", self.qualified(&aside)),
        )
        .await
    }

    /// The ids of `table`'s partitions, in order.
    async fn partitions(&self, table: &str) -> Result<Vec<String>, RebuildError> {
        self.client
            .query(
                "SELECT DISTINCT partition_id FROM system.parts \
                 WHERE database = ? AND table = ? AND active ORDER BY partition_id",
            )
            .bind(self.db)
            .bind(table)
            .fetch_all()
            .await
            .map_err(self.failed(&format!("listing the partitions of {table}")))
    }

    /// Copies every partition of `from` into the new table, completing those it has begun.
    async fn copy_all(&self, from: &str) -> Result<(), RebuildError> {
        let partitions = self.partitions(from).await?;
        let started = std::time::Instant::now();
        for (i, partition) in partitions.iter().enumerate() {
            self.copy_partition(from, partition).await?;
            tracing::info!(
                from,
                partition,
                done = i + 1,
                of = partitions.len(),
                elapsed_s = started.elapsed().as_secs(),
                "copied a partition"
            );
        }
        Ok(())
    }

    /// Copies one partition of `from` into the new table. A partition a stopped run began
    /// is completed with the rows it lacks, and one it finished is left, so a resumed
    /// rebuild does not store rows twice (readers would skip the copies, but a page whose
    /// rows have unmerged copies costs a second read).
    async fn copy_partition(&self, from: &str, partition: &str) -> Result<(), RebuildError> {
        let (new, id) = (self.rebuild.new_name(), self.rebuild.id);
        let count = |of: String| async move {
            self.client
                .query(&format!("SELECT count() FROM {of} WHERE _partition_id = ?"))
                .bind(partition)
                .fetch_one::<u64>()
                .await
                .map_err(self.failed(&format!("counting the rows of partition {partition}")))
        };
        let copied = count(self.qualified(&new)).await?;
        let missing = if copied == 0 {
            String::new()
        } else if copied >= count(self.qualified(from)).await? {
            return Ok(());
        } else {
            format!(
                " AND {id} NOT IN (SELECT {id} FROM {} WHERE _partition_id = ?)",
                self.qualified(&new)
            )
        };
        let mut query = self
            .client
            .query(&format!(
                "INSERT INTO {} SELECT * FROM {} WHERE _partition_id = ?{missing}",
                self.qualified(&new),
                self.qualified(from)
            ))
            .bind(partition);
        if copied > 0 {
            query = query.bind(partition);
        }
        query
            .execute()
            .await
            .map_err(self.failed(&format!("copying partition {partition}")))
    }

    /// On a modern server (an Atomic database), waits (at most [`INSERT_WAIT_SECS`]) until
    /// no INSERT that was running when this step began is still running: one that began
    /// before the rename writes into the old table. (18.16 has no `query_kind`, and its
    /// rename waited.)
    async fn wait_for_inserts(&self) -> Result<(), RebuildError> {
        let began = std::time::Instant::now();
        loop {
            let waited = began.elapsed().as_secs_f64();
            let running: u64 = self
                .client
                .query(
                    "SELECT count() FROM system.processes \
                     WHERE query_kind = 'Insert' AND elapsed >= ?",
                )
                .bind(waited)
                .fetch_one()
                .await
                .map_err(self.failed("looking for INSERTs still running"))?;
            if running == 0 {
                return Ok(());
            }
            if waited >= f64::from(INSERT_WAIT_SECS) {
                tracing::warn!(running, "INSERTs from before the swap still run; going on");
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn database_engine(&self) -> Result<String, RebuildError> {
        self.client
            .query("SELECT engine FROM system.databases WHERE name = ?")
            .bind(self.db)
            .fetch_one()
            .await
            .map_err(self.failed("reading the database's engine"))
    }

    /// [`CATCH_UP_MARGIN_SECS`] before the newest arrival in `table` (seconds).
    async fn since_newest(&self, table: &str) -> Result<u32, RebuildError> {
        let arrival = self.rebuild.arrival;
        let newest: u32 = self
            .client
            .query(&format!(
                "SELECT toUInt32(max({arrival})) FROM {}",
                self.qualified(table)
            ))
            .fetch_one()
            .await
            .map_err(self.failed(&format!("reading the newest row of {table}")))?;
        Ok(newest.saturating_sub(CATCH_UP_MARGIN_SECS))
    }

    /// Copies into `into` the rows of `from` it lacks among those that arrived within
    /// [`CATCH_UP_MARGIN_SECS`] of the newest row of `from`, or later.
    async fn copy_recent(&self, from: &str, into: &str) -> Result<(), RebuildError> {
        let (arrival, id) = (self.rebuild.arrival, self.rebuild.id);
        let since = self.since_newest(from).await?;
        self.execute(
            &format!("copying the rows of {from} that {into} lacks"),
            &format!(
                "INSERT INTO {into_q} SELECT * FROM {} WHERE {arrival} >= toDateTime({since}) \
                 AND {id} NOT IN (SELECT {id} FROM {into_q} WHERE {arrival} >= toDateTime({since}))",
                self.qualified(from),
                into_q = self.qualified(into),
            ),
        )
        .await?;
        tracing::info!(from, into, since, "copied the rows that arrived meanwhile");
        Ok(())
    }

    /// Logs, as an error, each materialized view in the database that reads the table and
    /// is not the schema's own (a power user's): in an Atomic database it stopped with the
    /// rename, and only its owner can make it again.
    async fn warn_of_other_views(&self, ours: &[View]) -> Result<(), RebuildError> {
        let all: Vec<(String, String)> = self
            .client
            .query(
                "SELECT name, create_table_query FROM system.tables \
                 WHERE database = ? AND engine = 'MaterializedView'",
            )
            .bind(self.db)
            .fetch_all()
            .await
            .map_err(self.failed("listing the database's views"))?;
        for (name, create) in all {
            if reads_table(&create, self.db, self.rebuild.table)
                && !ours.iter().any(|v| v.name == name)
            {
                tracing::error!(
                    view = name,
                    table = self.rebuild.table,
                    "a materialized view that is not the schema's reads the rebuilt table and \
                     no longer receives its rows: make it again over the new table \
                     (docs/operations.md, \"Schema upgrades that rebuild a table\")"
                );
            }
        }
        Ok(())
    }

    /// Step 5 in an Atomic database (modern servers): the views over the table are made
    /// again over the new one. (In an Ordinary one, 18.16's, views follow their source's
    /// name and read the new table already.)
    async fn follow_views(&self) -> Result<(), RebuildError> {
        let (table, old, arrival, id) = (
            self.rebuild.table,
            self.rebuild.old_name(),
            self.rebuild.arrival,
            self.rebuild.id,
        );
        let views = views_over(self.db, table, self.earlier);
        self.warn_of_other_views(&views).await?;
        for view in &views {
            self.execute(
                &format!("dropping view {}", view.name),
                &format!("DROP TABLE IF EXISTS {}", self.qualified(&view.name)),
            )
            .await?;
            self.execute(&format!("making view {} again", view.name), &view.create)
                .await?;
        }
        // Rows another writer put in the new table before the views were made again: the
        // ones `_old` does not have (those went through the views when first written), up
        // to now (later ones went through the views just made; within this second, one may
        // be counted twice by the rollup).
        let until: u32 = self
            .client
            .query("SELECT toUInt32(now())")
            .fetch_one()
            .await
            .map_err(self.failed("reading the server's clock"))?;
        let since = self.since_newest(&old).await?;
        let condition = format!(
            "{arrival} >= toDateTime({since}) AND {arrival} <= toDateTime({until}) AND {id} NOT IN \
             (SELECT {id} FROM {} WHERE {arrival} >= toDateTime({since}))",
            self.qualified(&old)
        );
        for view in &views {
            self.execute(
                &format!("passing new rows through view {}", view.name),
                &view.backfill(self.db, &condition),
            )
            .await?;
        }
        tracing::info!(
            table,
            views = views.len(),
            "views made again over the rebuilt table"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn earlier() -> Vec<String> {
        crate::migrations::statements_before("db", 12)
    }

    #[test]
    fn finds_the_views_over_events_with_their_targets() {
        let views = views_over("db", "events", &earlier());
        let names: Vec<_> = views
            .iter()
            .map(|v| (v.name.as_str(), v.target.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("detections_mv", "detections"),
                ("detections_hourly_mv", "detections_hourly"),
                ("events_by_id_mv", "events_by_id"),
            ]
        );
        assert!(
            views
                .iter()
                .all(|v| v.create.starts_with("CREATE MATERIALIZED VIEW"))
        );
        // No view over `events_by_id` is taken for one over `events`.
        assert!(views_over("db", "events_by", &earlier()).is_empty());
        // A power user's view, as a modern server shows it.
        let theirs = "CREATE MATERIALIZED VIEW db.mine TO db.t (`x` UInt8) AS SELECT 1 AS x FROM db.events WHERE 1";
        assert!(reads_table(theirs, "db", "events"));
        assert!(!reads_table(theirs, "db", "event"));
        assert!(has_setting(
            "MergeTree ORDER BY a SETTINGS index_granularity = 1024",
            "index_granularity = 1024"
        ));
        assert!(has_setting(
            "X SETTINGS index_granularity = 1024, min_compress_block_size = 4096",
            "index_granularity = 1024"
        ));
        assert!(!has_setting(
            "X SETTINGS index_granularity = 10240",
            "index_granularity = 1024"
        ));
        assert!(!reads_table(
            "SELECT 1 FROM db.events_by_id",
            "db",
            "events"
        ));
    }

    #[test]
    fn a_backfill_filters_before_grouping() {
        let views = views_over("db", "events", &earlier());
        let hourly = views[1].backfill("db", "x = 1");
        assert!(hourly.starts_with("INSERT INTO `db`.detections_hourly SELECT\n"));
        assert!(hourly.contains("AS confidence\nWHERE x = 1\nGROUP BY hour"));
        let by_id = views[2].backfill("db", "x = 1");
        assert!(by_id.ends_with("FROM `db`.events\nWHERE x = 1"));
    }
}
