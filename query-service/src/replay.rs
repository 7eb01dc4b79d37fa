//! `POST /v1/replay`: republish a filtered time range of stored events to a NATS subject,
//! oldest first, at a bounded rate, as a background job whose progress the caller polls.
//!
//! A job reads the range a page at a time through the same keyset pagination as
//! `GET /v1/events` (so no ClickHouse query stays open while the job waits on its rate), and
//! publishes each event with core NATS in the wire format of the contract (bincode or JSON,
//! named by `Content-Type`), plus a `Sightline-Replay-Id` header. It flushes after every page,
//! so a job reported `done` has handed every event to the server. To keep replayed events
//! durably, capture the subject in a JetStream stream on the receiving side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use sightline_runtime::now;
use sightline_shared::codec::{CONTENT_TYPE_HEADER, ContentType, encode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ReplayConfig;
use crate::model::{ReplayQuery, Sort};
use crate::store::Store;

/// The header that marks a replayed message with its job.
pub(crate) const REPLAY_ID_HEADER: &str = "Sightline-Replay-Id";

/// Events read from ClickHouse per page.
const PAGE: u32 = 1000;
/// Longest wait for NATS to confirm a page was received.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

/// A job's progress, as `GET /v1/replay/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Progress {
    pub id: Uuid,
    pub state: JobState,
    pub subject: String,
    pub since: String,
    pub until: String,
    pub rate: u32,
    pub encoding: &'static str,
    /// Events in the range, counted when the job starts (`null` until then).
    pub total: Option<u64>,
    pub published: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug)]
struct Job {
    progress: Mutex<Progress>,
    cancel: CancellationToken,
}

impl Job {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn finish(&self, state: JobState, error: Option<String>) {
        let mut p = self.progress();
        p.state = state;
        p.error = error;
        p.finished_at = Some(now().to_rfc3339());
    }
}

/// Why a replay could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("replay is disabled in this service's config")]
    Disabled,
    #[error("{0} replays are already running; wait for one to finish")]
    Busy(usize),
}

/// The replay jobs of this process.
#[derive(Debug, Clone)]
pub(crate) struct Replays {
    jobs: Arc<Mutex<VecDeque<Arc<Job>>>>,
    nats: Option<async_nats::Client>,
    store: Store,
    config: ReplayConfig,
    shutdown: CancellationToken,
    published: Counter,
}

impl Replays {
    /// Jobs publish through `nats` (replay is disabled without it) and stop at `shutdown`.
    pub(crate) fn new(
        config: ReplayConfig,
        nats: Option<async_nats::Client>,
        store: Store,
        shutdown: CancellationToken,
        published: Counter,
    ) -> Self {
        Self {
            jobs: Arc::default(),
            nats,
            store,
            config,
            shutdown,
            published,
        }
    }

    pub(crate) fn config(&self) -> &ReplayConfig {
        &self.config
    }

    fn jobs(&self) -> MutexGuard<'_, VecDeque<Arc<Job>>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a job for `q` and returns its first progress report.
    pub(crate) fn start(&self, q: ReplayQuery) -> Result<Progress, StartError> {
        // The service connects to NATS only when replay is enabled.
        let Some(nats) = self.nats.clone() else {
            return Err(StartError::Disabled);
        };
        let job = {
            let mut jobs = self.jobs();
            let running = jobs
                .iter()
                .filter(|j| j.progress().state == JobState::Running)
                .count();
            if running >= self.config.max_concurrent {
                return Err(StartError::Busy(running));
            }
            // Forget the oldest finished jobs beyond what the config keeps.
            while jobs.len() > self.config.keep_finished + self.config.max_concurrent {
                match jobs
                    .iter()
                    .position(|j| j.progress().state != JobState::Running)
                {
                    Some(i) => drop(jobs.remove(i)),
                    None => break,
                }
            }
            let job = Arc::new(Job {
                progress: Mutex::new(Progress {
                    id: Uuid::now_v7(),
                    state: JobState::Running,
                    subject: q.subject.clone(),
                    since: q.since.to_rfc3339(),
                    until: q.until.to_rfc3339(),
                    rate: q.rate,
                    encoding: q.encoding.as_str(),
                    total: None,
                    published: 0,
                    started_at: now().to_rfc3339(),
                    finished_at: None,
                    error: None,
                }),
                cancel: self.shutdown.child_token(),
            });
            jobs.push_back(job.clone());
            job
        };
        let progress = job.progress().clone();
        tracing::info!(id = %progress.id, subject = %q.subject, since = %progress.since, until = %progress.until, rate = q.rate, "replay started");
        let (store, published) = (self.store.clone(), self.published.clone());
        tokio::spawn(async move {
            let outcome = run(&job, &store, &nats, &q, &published).await;
            let id = job.progress().id;
            match outcome {
                Ok(()) if job.cancel.is_cancelled() => {
                    tracing::warn!(%id, "replay cancelled");
                    job.finish(JobState::Cancelled, None);
                }
                Ok(()) => {
                    tracing::info!(%id, published = job.progress().published, "replay done");
                    job.finish(JobState::Done, None);
                }
                Err(error) => {
                    tracing::error!(%id, error = %format!("{error:#}"), "replay failed");
                    job.finish(JobState::Failed, Some(format!("{error:#}")));
                }
            }
        });
        Ok(progress)
    }

    /// A job's progress.
    pub(crate) fn get(&self, id: Uuid) -> Option<Progress> {
        self.find(id).map(|j| j.progress().clone())
    }

    /// Every remembered job, oldest first.
    pub(crate) fn list(&self) -> Vec<Progress> {
        self.jobs().iter().map(|j| j.progress().clone()).collect()
    }

    /// Asks a job to stop; its state becomes `cancelled` once it has.
    pub(crate) fn cancel(&self, id: Uuid) -> Option<Progress> {
        let job = self.find(id)?;
        job.cancel.cancel();
        let progress = job.progress().clone();
        Some(progress)
    }

    fn find(&self, id: Uuid) -> Option<Arc<Job>> {
        self.jobs().iter().find(|j| j.progress().id == id).cloned()
    }
}

async fn run(
    job: &Job,
    store: &Store,
    nats: &async_nats::Client,
    q: &ReplayQuery,
    published: &Counter,
) -> anyhow::Result<()> {
    // `replay_query` made sure the filter has both ends of the range.
    let filter = &q.filter;
    let total = store.count_events(filter).await?;
    job.progress().total = Some(total);

    let mut headers = HeaderMap::new();
    headers.insert(REPLAY_ID_HEADER, job.progress().id.to_string().as_str());
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut cursor = None;
    loop {
        let page = tokio::select! {
            () = job.cancel.cancelled() => return Ok(()),
            page = store.list_events(filter, Sort::Oldest, cursor, PAGE) => page?,
        };
        for event in &page.events {
            // Pace against the start, so the rate holds on average without drift.
            let due = started + Duration::from_secs_f64(sent as f64 / f64::from(q.rate));
            tokio::select! {
                () = job.cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(due) => {}
            }
            // Each event in its own schema version's layout (a v1 event stays v1).
            let payload = encode(event, q.encoding)?;
            let mut headers = headers.clone();
            headers.insert(
                CONTENT_TYPE_HEADER,
                ContentType::of_event(event, q.encoding)
                    .to_string()
                    .as_str(),
            );
            nats.publish_with_headers(q.subject.clone(), headers, payload.into())
                .await?;
            sent += 1;
            published.inc();
            job.progress().published = sent;
        }
        tokio::time::timeout(FLUSH_TIMEOUT, nats.flush())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "NATS did not confirm the published events within {FLUSH_TIMEOUT:?}"
                )
            })??;
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}
