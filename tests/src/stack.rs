//! The cloud side of the pipeline, in-process, against real servers.

use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use sightline_edge_agent::metrics::Metrics as EdgeMetrics;
use sightline_edge_agent::outbox::ChannelOutbox;
use sightline_edge_agent::publisher::{PublishReport, Publisher};
use sightline_ingest::IngestConfig;
use sightline_ingest::metrics::Metrics as IngestMetrics;
use sightline_ingest::sink::Sink;
use sightline_query::QueryConfig;
use sightline_shared::config::{ClickHouseConfig, Validate};
use sightline_shared::{DetectionEvent, Encoding, EventId, subjects};
use sightline_store::EventRow;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fixtures::{ClickHouseServer, NatsServer, poll_until};

/// Logs to the test output; `RUST_LOG` picks the level (default `warn`).
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// An ingest service running on a runtime of its own, so a crash takes all of it: the
/// service and every task it spawned (its writers, its side consumers), mid-whatever.
struct Ingest {
    task: JoinHandle<anyhow::Result<()>>,
    runtime: OwnRuntime,
}

/// A runtime that, dropped, shuts down in the background. Dropping a plain `Runtime` waits
/// for its blocking threads, which tokio refuses in an async context with a panic: a test
/// that returned early with an error (`?`) dropped its stack there and showed that panic
/// instead of its error.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

/// NATS, ClickHouse, the ingest service and the query service.
#[derive(Debug)]
pub struct Stack {
    pub nats: NatsServer,
    pub clickhouse: ClickHouseServer,
    pub ingest_config: IngestConfig,
    /// The query service's config: ClickHouse as the read-only `sightline_reader`.
    pub query_config: QueryConfig,
    /// Base URL of the query API.
    pub api: String,
    /// Base URL of the ingest service's health and metrics endpoint.
    pub ingest_http: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
    ingest: Option<Ingest>,
    query: JoinHandle<anyhow::Result<()>>,
    more_queries: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    /// Starts everything with test-friendly batch timing.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts everything; `tweak` adjusts the ingest config first.
    pub async fn start_with(tweak: impl FnOnce(&mut IngestConfig)) -> anyhow::Result<Self> {
        Self::start_on(NatsServer::start()?, tweak, |_| {}).await
    }

    /// Starts everything on `nats` (say, one with users and permissions); `tweak` and
    /// `tweak_query` adjust the services' configs first (their NATS URLs, for one).
    pub async fn start_on(
        nats: NatsServer,
        tweak: impl FnOnce(&mut IngestConfig),
        tweak_query: impl FnOnce(&mut QueryConfig),
    ) -> anyhow::Result<Self> {
        init_tracing();
        let clickhouse = ClickHouseServer::start()?;
        let clickhouse_config = clickhouse.config();
        let mut ingest_config = IngestConfig {
            nats: nats.config(),
            clickhouse: clickhouse_config.clone(),
            ..Default::default()
        };
        ingest_config.batch.max_wait_ms = 100;
        ingest_config.consumer.ack_wait_secs = 10;
        tweak(&mut ingest_config);
        ingest_config.validate()?;
        let query_config = QueryConfig {
            clickhouse: ClickHouseConfig {
                user: READER.into(),
                ..clickhouse_config
            },
            nats: nats.config(),
            // Off by default in the service; the API tests exercise it.
            replay: sightline_query::ReplayConfig {
                enabled: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut query_config = query_config;
        tweak_query(&mut query_config);
        query_config.validate()?;

        let stop = CancellationToken::new();
        let (api, query) = spawn_query(query_config.clone(), &stop).await?;
        let mut stack = Self {
            nats,
            clickhouse,
            ingest_config,
            query_config,
            api,
            ingest_http: String::new(),
            http: reqwest::Client::new(),
            stop,
            ingest: None,
            query,
            more_queries: Vec::new(),
        };
        stack.start_ingest().await?;
        stack.wait_until_ready().await?;
        Ok(stack)
    }

    /// Starts another query service, its config adjusted by `tweak`; returns its base URL.
    pub async fn start_query(
        &mut self,
        tweak: impl FnOnce(&mut QueryConfig),
    ) -> anyhow::Result<String> {
        let api = self.start_query_unready(tweak).await?;
        wait_ready(&self.http, &api).await?;
        Ok(api)
    }

    /// [`Self::start_query`] without waiting for it to be ready (its ClickHouse may never
    /// answer).
    pub async fn start_query_unready(
        &mut self,
        tweak: impl FnOnce(&mut QueryConfig),
    ) -> anyhow::Result<String> {
        let mut config = self.query_config.clone();
        tweak(&mut config);
        config.validate()?;
        // Its listener is bound before it starts: it accepts connections at once.
        let (api, task) = spawn_query(config, &self.stop).await?;
        self.more_queries.push(task);
        Ok(api)
    }

    /// Writes `events` straight into ClickHouse's `events` table (as the ingest service
    /// would, views included), for tests that need many stored events quickly.
    pub async fn insert_direct(&self, events: &[DetectionEvent]) -> anyhow::Result<()> {
        let client = sightline_store::client(&self.clickhouse.config())?
            .with_database(&self.ingest_config.clickhouse.database);
        let sink = Sink::new(
            client,
            Duration::from_secs(120),
            IngestMetrics::new(&mut prometheus_client::registry::Registry::default()),
        );
        let rows: Vec<EventRow> = events.iter().map(EventRow::from).collect();
        for chunk in rows.chunks(50_000) {
            sink.insert(chunk).await.map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(())
    }

    /// Starts an ingest service (another one after [`Self::crash_ingest`]), on a runtime of
    /// its own.
    pub async fn start_ingest(&mut self) -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        self.ingest_http = format!("http://{}", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ingest")
            .enable_all()
            .build()?;
        let config = self.ingest_config.clone();
        let shutdown = self.stop.child_token().cancelled_owned();
        let task = runtime.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            sightline_ingest::run(config, listener, shutdown).await
        });
        self.ingest = Some(Ingest {
            task,
            runtime: OwnRuntime(Some(runtime)),
        });
        Ok(())
    }

    /// Kills the ingest service mid-whatever: no flush, no acks, no goodbye, like a crash.
    /// Its runtime goes with every task on it, and its connections close.
    pub async fn crash_ingest(&mut self) {
        if let Some(ingest) = self.ingest.take() {
            drop(ingest.runtime);
            let _ = ingest.task.await;
        }
    }

    /// Waits until ingest (schema applied, streams declared) and the query API are ready.
    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        wait_ready(&self.http, &self.ingest_http).await?;
        wait_ready(&self.http, &self.api).await
    }

    /// A JetStream context on the stack's NATS.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(
            async_nats::connect(self.nats.url()).await?,
        ))
    }

    /// The ingest service's durable consumer as the server sees it now.
    pub async fn consumer_info(&self) -> anyhow::Result<async_nats::jetstream::consumer::Info> {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = self
            .jetstream()
            .await?
            .get_consumer_from_stream(
                &self.ingest_config.consumer.durable_name,
                sightline_shared::subjects::EVENTS_STREAM,
            )
            .await?;
        Ok(consumer.info().await?.clone())
    }

    /// Publishes `events` the way the edge agent does, waiting for every ack (60 s at most).
    pub async fn publish(
        &self,
        events: Vec<DetectionEvent>,
        encoding: Encoding,
    ) -> anyhow::Result<PublishReport> {
        let js = self.jetstream().await?;
        tokio::time::timeout(
            Duration::from_secs(60),
            publish_via(js, events, encoding, 64),
        )
        .await
        .context("publishing took more than 60 s")
    }

    /// Everything in the dead-letter stream (up to `max` messages).
    pub async fn dead_letters(&self, max: usize) -> anyhow::Result<Vec<DeadLetter>> {
        let consumer = self
            .jetstream()
            .await?
            .get_stream(subjects::DEADLETTER_STREAM)
            .await?
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await?;
        let mut messages = consumer
            .fetch()
            .max_messages(max)
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        let mut out = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            out.push(DeadLetter {
                original_subject: header(subjects::DEADLETTER_SUBJECT_HEADER),
                reason: header(subjects::DEADLETTER_REASON_HEADER),
                payload: message.payload.to_vec(),
            });
        }
        Ok(out)
    }

    /// `GET {api}{path}`: status and JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self.http.get(format!("{}{path}", self.api)).send().await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    /// `GET {api}{path}`: the body as text; a status other than 2xx is an error.
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        get_text(&self.http, &format!("{}{path}", self.api)).await
    }

    /// Polls `GET /v1/events?{query}` until it returns `count` events (or times out) and
    /// returns them decoded.
    pub async fn wait_for_events(
        &self,
        query: &str,
        count: usize,
    ) -> anyhow::Result<Vec<DetectionEvent>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = 0;
        loop {
            let (status, body) = self.get(&format!("/v1/events?{query}")).await?;
            if status == 200 {
                let events = events_of(&body)?;
                last = events.len();
                if events.len() >= count {
                    return Ok(events);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "expected {count} events for {query:?}, have {last} after 60 s (last status {status})"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /v1/events/{id}` once it answers 200 (at most 10 s): an insert writes `events`
    /// before the views' tables, so for a moment after an event is listed its id may not be
    /// in `events_by_id` yet.
    pub async fn get_event(&self, id: EventId) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(&format!("/v1/events/{id}")).await?;
            if status == 200 {
                return Ok(body);
            }
            if Instant::now() > deadline {
                bail!("GET /v1/events/{id} answered {status} for 10 s: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Text of the ingest service's `/metrics`.
    pub async fn ingest_metrics(&self) -> anyhow::Result<String> {
        get_text(&self.http, &format!("{}/metrics", self.ingest_http)).await
    }

    /// Waits until ingest's metrics satisfy `ready` (at most `timeout`) and returns them;
    /// the error names `what` was awaited and shows the metrics.
    pub async fn wait_for_ingest_metrics(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        match poll_until(timeout, || self.ingest_metrics(), |text| ready(text)).await? {
            Ok(text) => Ok(text),
            Err(text) => bail!("ingest's metrics never showed {what}: {text}"),
        }
    }

    /// Waits until the durable consumer's state satisfies `ready` (at most `timeout`) and
    /// returns it; the error names `what` was awaited and shows the state.
    pub async fn wait_for_consumer(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&async_nats::jetstream::consumer::Info) -> bool,
    ) -> anyhow::Result<async_nats::jetstream::consumer::Info> {
        match poll_until(timeout, || self.consumer_info(), ready).await? {
            Ok(info) => Ok(info),
            Err(info) => bail!("the consumer never showed {what}: {info:?}"),
        }
    }

    /// The events stream, with its state as the server sees it now.
    pub async fn events_stream(&self) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
        Ok(self
            .jetstream()
            .await?
            .get_stream(sightline_shared::subjects::EVENTS_STREAM)
            .await?)
    }

    /// Stops both services in order and reports their errors.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(ingest) = self.ingest {
            let stopped = tokio::time::timeout(Duration::from_secs(30), ingest.task).await;
            drop(ingest.runtime);
            stopped.context("ingest did not stop in 30 s")???;
        }
        for query in std::iter::once(self.query).chain(self.more_queries) {
            tokio::time::timeout(Duration::from_secs(30), query)
                .await
                .context("query did not stop in 30 s")???;
        }
        Ok(())
    }
}

/// The events of a page of `GET /v1/events` as the contract's type: the fields the API adds
/// (`snapshot_url`, which must name the event's own snapshot) are checked and set aside.
pub fn events_of(page: &serde_json::Value) -> anyhow::Result<Vec<DetectionEvent>> {
    let mut events = page["events"].clone();
    for event in events.as_array_mut().into_iter().flatten() {
        if let Some(url) = event.as_object_mut().and_then(|e| e.remove("snapshot_url")) {
            let want = format!(
                "/v1/events/{}/snapshot",
                event["event_id"].as_str().unwrap_or("?")
            );
            anyhow::ensure!(url == want.as_str(), "snapshot_url {url}, want {want}");
        }
    }
    Ok(serde_json::from_value(events)?)
}

/// `GET url`: the body as text; a status other than 2xx is an error.
async fn get_text(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Polls `{base}/readyz` until it answers 200 (30 s at most).
pub async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!("{base} was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The read-only ClickHouse user of `deploy/local/clickhouse-users.xml`.
pub const READER: &str = "sightline_reader";

async fn spawn_query(
    config: QueryConfig,
    stop: &CancellationToken,
) -> anyhow::Result<(String, JoinHandle<anyhow::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(sightline_query::run(
        config,
        listener,
        stop.clone().cancelled_owned(),
    ));
    Ok((api, task))
}

/// A message from the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub original_subject: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// Publishes `events` through the edge agent's publisher with `window` publishes in flight,
/// waiting for every ack.
pub async fn publish_via(
    js: async_nats::jetstream::Context,
    events: Vec<DetectionEvent>,
    encoding: Encoding,
    window: usize,
) -> PublishReport {
    let metrics = EdgeMetrics::default();
    let (tx, mut outbox) = ChannelOutbox::new(events.len().max(1), metrics.clone());
    for event in events {
        // The channel holds them all, so this never waits and never fails.
        let _ = tx.try_send(event);
    }
    drop(tx);
    Publisher::new(js, encoding, window, metrics)
        .run(&mut outbox, &CancellationToken::new())
        .await
}

/// Reads one counter value from Prometheus text, summing over label sets that contain
/// `labels` (e.g. `reason="Decode"`).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The real query-service binary (`binary`, else the one beside the running test) reading
/// `clickhouse_url` as [`READER`], its config `extra` lines first, in `dir`: the child
/// process and its base URL once it is ready. A process of its own, so its memory is its
/// own (`proc_status_bytes`).
pub async fn spawn_query_binary(
    binary: Option<std::path::PathBuf>,
    clickhouse_url: &str,
    extra: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(std::process::Child, String)> {
    let config = dir.join("query.toml");
    std::fs::write(
        &config,
        format!("{extra}\n[clickhouse]\nurl = \"{clickhouse_url}\"\nuser = \"{READER}\"\n"),
    )?;
    let binary = binary.unwrap_or_else(|| crate::fixtures::workspace_binary("query-service"));
    let port = crate::fixtures::free_port();
    let child = std::process::Command::new(&binary)
        .args([
            "--config",
            config.to_str().context("utf-8")?,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("SIGHTLINE_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let api = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &api).await?;
    Ok((child, api))
}

/// A line of `/proc/<pid>/status` in bytes: `VmRSS:` (resident now), `VmHWM:` (its peak).
pub fn proc_status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// A nats-server for a benchmark, a client of it, and the event streams declared as ingest
/// declares them (with its default settings).
pub async fn bench_nats() -> anyhow::Result<(
    NatsServer,
    async_nats::Client,
    async_nats::jetstream::Context,
)> {
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let config = IngestConfig {
        nats: nats.config(),
        ..Default::default()
    };
    sightline_ingest::nats::declare(&js, &config, None).await?;
    Ok((nats, client, js))
}

/// A ClickHouse of the `SIGHTLINE_SERVERS` generation for a benchmark, with the schema in
/// database `sightline`, an admin client of it and a sink that writes as ingest does.
/// `SIGHTLINE_BENCH_SCHEMA=N` stops the migrations at version N: the same bench on the
/// schema an older build left (for a before-and-after in one sitting).
pub async fn bench_clickhouse() -> anyhow::Result<(ClickHouseServer, clickhouse::Client, Sink)> {
    let clickhouse = ClickHouseServer::start()?;
    let admin = sightline_store::client(&clickhouse.config())?;
    let last = bench_schema()?.unwrap_or(u32::MAX);
    sightline_store::migrations::migrate_to(&admin, "sightline", last).await?;
    let sink = sink(&admin);
    Ok((clickhouse, admin, sink))
}

/// The last migration a benchmark's store gets when `SIGHTLINE_BENCH_SCHEMA` holds one
/// back (`None`: all of them).
///
/// # Errors
/// When the variable is not a number.
pub fn bench_schema() -> anyhow::Result<Option<u32>> {
    match std::env::var("SIGHTLINE_BENCH_SCHEMA") {
        Ok(version) => version
            .parse()
            .map(Some)
            .with_context(|| format!("SIGHTLINE_BENCH_SCHEMA={version}: not a migration version")),
        Err(_) => Ok(None),
    }
}

/// A sink that writes events to database `sightline` through `admin` as ingest does.
pub fn sink(admin: &clickhouse::Client) -> Sink {
    Sink::new(
        admin.clone().with_database("sightline"),
        Duration::from_secs(300),
        IngestMetrics::new(&mut prometheus_client::registry::Registry::default()),
    )
}
