//! Freshness: how long an event takes from its capture to being visible in the query API,
//! along the path users have, and how long events held by a killed ingest take to appear.
//!
//! `cargo build --profile bench -p sightline-ingest --bins && cargo bench -p sightline-tests
//! --bench freshness` starts nats-server and ClickHouse (of the `SIGHTLINE_SERVERS`
//! generation), the real `ingest-service` binary with its default batch and consumer settings
//! (so `kill -9` is real), and the query service in-process. Events are stamped with their
//! capture time and go through the edge agent's DuckDB buffer and publisher (appends from
//! many cameras at once, as the buffer thread groups them), at each rate of
//! `SIGHTLINE_BENCH_RATES` (default `1000,50000` events/s) for `SIGHTLINE_BENCH_SECS`
//! (default 20). One event in `rate / 100` is a probe (its own camera); a reader polls the
//! API for the probes every 50 ms, newest-unseen first, and takes each one's
//! capture-to-visible time (until the answer that first listed it). Printed per rate: p50,
//! p95, p99 and max of capture-to-visible, and ingest's INSERT latency over the phase (its
//! `sightline_ingest_insert_duration_seconds` histogram: bucket bounds, so "p95 <= x ms",
//! and how many took at most 50 ms, the target, which is a bound of its own). It also prints
//! the file system the servers' data is on: ClickHouse's INSERTs pay for its file creation.
//! Each rate also prints how many cores each part kept busy (nats-server, ClickHouse, ingest,
//! the edge buffer's thread and the rest of this process, from /proc), to show where the
//! time goes when the machine cannot keep up.
//! Then the same at the first rate with ingest killed (`kill -9`) halfway (plus a random
//! part of a second) and restarted 2 s later: how long after the restart the last held event
//! appeared, and how many probes it held.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::join_all;
use prometheus_client::registry::Registry;
use sightline_edge_agent::buffer::worker;
use sightline_edge_agent::metrics::Metrics;
use sightline_edge_agent::outbox::Message;
use sightline_ingest::metrics::INSERT_TARGET_SECS;
use sightline_query::QueryConfig;
use sightline_shared::EventId;
use sightline_shared::config::ClickHouseConfig;
use sightline_tests::NatsServer;
use sightline_tests::fixtures::{self, KillOnDrop, free_port, spawn_ingest};
use tokio_util::sync::CancellationToken;

const WINDOW: usize = 256;
/// Probes per second, whatever the rate.
const PROBES_PER_SEC: u64 = 100;
/// How often the reader asks.
const POLL: Duration = Duration::from_millis(50);

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// The ingest service as a process of its own, so that it can be killed for real.
struct Ingest {
    config: std::path::PathBuf,
    metrics_port: u16,
    child: Option<KillOnDrop>,
}

impl Ingest {
    fn spawn(&mut self) -> anyhow::Result<()> {
        self.child = Some(spawn_ingest(
            &self.config,
            &format!("127.0.0.1:{}", self.metrics_port),
            std::process::Stdio::inherit(),
        )?);
        Ok(())
    }

    fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(response) = http.get(&url).send().await
                && response.status() == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("ingest did not become ready within 60 s")
    }

    /// The INSERT latency histogram: (upper bound in seconds, cumulative count).
    async fn insert_histogram(&self, http: &reqwest::Client) -> anyhow::Result<Vec<(f64, f64)>> {
        let text = http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("sightline_ingest_insert_duration_seconds_bucket"))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, count))
            })
            .collect())
    }
}

/// The INSERT histogram's buckets between two readings: (upper bound in s, cumulative count).
fn insert_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let earlier: HashMap<u64, f64> = before.iter().map(|(b, c)| (b.to_bits(), *c)).collect();
    after
        .iter()
        .map(|(b, c)| (*b, c - earlier.get(&b.to_bits()).copied().unwrap_or(0.0)))
        .collect()
}

/// The smallest bucket bound under which `q` of the inserts in `delta` fall, in ms; and how
/// many inserts there were.
fn insert_quantile(delta: &[(f64, f64)], q: f64) -> (f64, f64) {
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    let bound = delta
        .iter()
        .find(|(_, c)| *c >= total * q)
        .map_or(f64::NAN, |(b, _)| b * 1000.0);
    (bound, total)
}

/// How many inserts in `delta` took at most `secs` (a bucket bound: exact).
fn inserts_within(delta: &[(f64, f64)], secs: f64) -> f64 {
    delta
        .iter()
        .find(|(b, _)| *b == secs)
        .map_or(f64::NAN, |(_, c)| *c)
}

/// What one phase measured.
struct Phase {
    /// Capture-to-visible of each probe, seconds, sorted.
    latencies: Vec<f64>,
    /// When the last probe captured before `restart` became visible, after it.
    after_restart: Option<f64>,
    /// With a kill: how many probes captured before it became visible only after the
    /// restart, and the last of them, seconds after the restart.
    held: Option<(usize, f64)>,
    /// CPU seconds of the edge buffer's thread (one per phase).
    buffer_cpu: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rates: Vec<u64> = env("SIGHTLINE_BENCH_RATES", "1000,50000")
        .split(',')
        .map(|r| r.trim().parse())
        .collect::<Result<_, _>>()
        .context("SIGHTLINE_BENCH_RATES: comma-separated events per second")?;
    let secs: u64 = env("SIGHTLINE_BENCH_SECS", "20").parse()?;
    let nats = NatsServer::start()?;
    let (clickhouse, _admin, _sink) = sightline_tests::stack::bench_clickhouse().await?;
    println!(
        "freshness benchmark on the {} servers (ClickHouse {}): {secs} s per rate, {PROBES_PER_SEC} probes/s",
        clickhouse.servers().name(),
        clickhouse.query("SELECT version()").await?,
    );
    println!("  servers' data in {}", fixtures::data_filesystem());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ingest.toml");
    // Ingest's defaults, what users run; `SIGHTLINE_BENCH_ACK_WAIT_SECS` sets another ack
    // wait (60: as before issue 21), to compare in one sitting.
    let ack_wait = std::env::var("SIGHTLINE_BENCH_ACK_WAIT_SECS")
        .ok()
        .filter(|secs| !secs.trim().is_empty())
        .map(|secs| secs.trim().parse::<u64>())
        .transpose()
        .context("SIGHTLINE_BENCH_ACK_WAIT_SECS: whole seconds")?
        .map(|secs| format!("[consumer]\nack_wait_secs = {secs}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"{}\"\n[clickhouse]\nurl = \"{}\"\n{ack_wait}",
            nats.url(),
            clickhouse.url()
        ),
    )?;
    if !ack_wait.is_empty() {
        println!("  ingest with {}", ack_wait.trim().replace('\n', " "));
    }
    let mut ingest = Ingest {
        config,
        metrics_port: free_port(),
        child: None,
    };
    let http = reqwest::Client::new();
    ingest.spawn()?;
    ingest.wait_ready(&http).await?;

    // The query service, in-process, as the read-only user; no NATS features.
    let mut query = QueryConfig {
        clickhouse: ClickHouseConfig {
            user: sightline_tests::stack::READER.into(),
            ..clickhouse.config()
        },
        ..Default::default()
    };
    query.replay.enabled = false;
    query.snapshots.enabled = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let service = tokio::spawn(sightline_query::run(
        query,
        listener,
        stop.clone().cancelled_owned(),
    ));
    sightline_tests::stack::wait_ready(&http, &api).await?;
    let client = async_nats::connect(nats.url()).await?;

    println!(
        "  {:<28} {:>8} {:>8} {:>8} {:>8}   {:>22}",
        "capture -> visible, ms", "p50", "p95", "p99", "max", "INSERT p50 / p95 / p99"
    );
    for (k, &rate) in rates.iter().enumerate() {
        let before = ingest.insert_histogram(&http).await?;
        let processes = [
            ("nats-server", nats.pid()),
            ("ClickHouse", clickhouse.pid()),
            ("ingest", ingest.child.as_ref().map(|c| c.id())),
        ];
        let cpu_before = Cpu::sample(&processes);
        let phase = run_phase(&client, &http, &api, &mut ingest, rate, secs, k, false).await?;
        let cpu = Cpu::sample(&processes).since(&cpu_before);
        let after = ingest.insert_histogram(&http).await?;
        let ms = |q| quantile(&phase.latencies, q) * 1000.0;
        let delta = insert_delta(&before, &after);
        let insert = |q| insert_quantile(&delta, q);
        println!(
            "  {:<28} {:>8.0} {:>8.0} {:>8.0} {:>8.0}   <= {:.0} / {:.0} / {:.0} ms ({:.0} inserts, {:.0} within {:.0} ms)",
            format!("{rate} events/s"),
            ms(0.5),
            ms(0.95),
            ms(0.99),
            ms(1.0),
            insert(0.5).0,
            insert(0.95).0,
            insert(0.99).0,
            insert(1.0).1,
            inserts_within(&delta, INSERT_TARGET_SECS),
            INSERT_TARGET_SECS * 1000.0,
        );
        println!(
            "    {cpu} (the edge buffer's thread alone {:.2} cores)",
            phase.buffer_cpu / cpu.elapsed
        );
    }
    let rate = rates[0];
    let phase = run_phase(
        &client,
        &http,
        &api,
        &mut ingest,
        rate,
        secs,
        rates.len(),
        true,
    )
    .await?;
    let (held, held_last) = phase.held.unwrap_or((0, f64::NAN));
    println!(
        "  {rate} events/s, ingest killed (kill -9) about halfway and restarted 2 s later: every held event visible {:.1} s after the restart (capture -> visible max {:.1} s); {held} probes captured before the kill appeared after the restart, the last {held_last:.1} s after it",
        phase.after_restart.unwrap_or(f64::NAN),
        quantile(&phase.latencies, 1.0)
    );
    stop.cancel();
    service.await??;
    ingest.kill_9()?;
    Ok(())
}

/// CPU time (user + system) of the servers and of this process, from /proc: where a phase's
/// time goes on a machine they all share.
struct Cpu {
    at: Instant,
    /// Seconds since the earlier sample, once taken [`Cpu::since`] it.
    elapsed: f64,
    /// (name, seconds), in the order sampled.
    seconds: Vec<(String, f64)>,
}

impl Cpu {
    fn sample(processes: &[(&str, Option<u32>)]) -> Self {
        let mut seconds: Vec<(String, f64)> = processes
            .iter()
            .map(|(name, pid)| {
                let used = pid
                    .and_then(|pid| cpu_seconds(&format!("/proc/{pid}/stat")))
                    .unwrap_or(f64::NAN);
                ((*name).to_owned(), used)
            })
            .collect();
        seconds.push((
            "this process (edge buffer, publisher, cameras, query API, reader)".into(),
            cpu_seconds("/proc/self/stat").unwrap_or(f64::NAN),
        ));
        Self {
            at: Instant::now(),
            elapsed: 0.0,
            seconds,
        }
    }

    /// Cores kept busy by each between `earlier` and this sample.
    fn since(&self, earlier: &Self) -> Self {
        let elapsed = self.at.duration_since(earlier.at).as_secs_f64();
        Self {
            at: self.at,
            elapsed,
            seconds: self
                .seconds
                .iter()
                .zip(&earlier.seconds)
                .map(|((name, now), (_, then))| (name.clone(), (now - then) / elapsed))
                .collect(),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cores busy:")?;
        for (name, cores) in &self.seconds {
            write!(f, " {name} {cores:.2},")?;
        }
        let total: f64 = self.seconds.iter().map(|(_, c)| c).sum();
        write!(
            f,
            " in all {total:.2} of {}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )
    }
}

/// Messages in the events stream so far (its last sequence) and acknowledged by ingest's
/// durable consumer (its ack floor; 0 before ingest made it).
async fn progress(client: &async_nats::Client) -> anyhow::Result<(u64, u64)> {
    let js = async_nats::jetstream::new(client.clone());
    let Ok(stream) = js
        .get_stream(sightline_shared::subjects::EVENTS_STREAM)
        .await
    else {
        return Ok((0, 0));
    };
    let published = stream.get_info().await?.state.last_sequence;
    let acked = stream
        .consumer_info("sightline-ingest")
        .await
        .map_or(0, |info| info.ack_floor.stream_sequence);
    Ok((published, acked))
}

/// CPU seconds of this process's threads named `name` (as the kernel truncates it, 15 bytes).
fn thread_cpu_seconds(name: &str) -> f64 {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| cpu_seconds(&task.path().join("stat").display().to_string()))
        .sum()
}

/// User + system seconds from a `/proc/.../stat` file (fields 14 and 15, in clock ticks;
/// the command name before them may hold spaces, so fields count from its closing `)`).
fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ: 100 on Linux, whatever the kernel's own tick rate.
    Some(ticks as f64 / 100.0)
}

/// `rate` events/s for `secs` through a fresh edge buffer and publisher; probes on camera
/// `probe-<n>`; with `kill`, ingest is killed halfway and started again 2 s later.
#[allow(clippy::too_many_arguments)]
async fn run_phase(
    client: &async_nats::Client,
    http: &reqwest::Client,
    api: &str,
    ingest: &mut Ingest,
    rate: u64,
    secs: u64,
    n: usize,
    kill: bool,
) -> anyhow::Result<Phase> {
    let dir = tempfile::tempdir()?;
    let metrics = Metrics::new(&mut Registry::default());
    let (handle, thread) = sightline_tests::data::bench_buffer(dir.path(), &metrics)?;
    let closed = CancellationToken::new();
    let mut outbox = handle.outbox(worker::PAGE_SIZE, closed.clone());
    let publisher = sightline_tests::data::bench_publisher(client, WINDOW, &metrics);
    let publishing = tokio::spawn(async move {
        let report = publisher.run(&mut outbox, &CancellationToken::new()).await;
        outbox.flush();
        report
    });

    // The reader: every probe's first sighting.
    let probe_camera = format!("probe-{n}");
    let phase_start = sightline_runtime::now();
    let start_progress = progress(client).await?;
    let (probes_tx, mut probes_rx) = tokio::sync::mpsc::unbounded_channel::<(EventId, i64)>();
    let reading = {
        let (http, api, camera) = (http.clone(), api.to_owned(), probe_camera.clone());
        tokio::spawn(async move {
            let mut unseen: HashMap<EventId, i64> = HashMap::new();
            let mut seen: Vec<(i64, i64)> = Vec::new(); // (captured, visible) ms
            let mut generating = true;
            loop {
                while let Ok(probe) = probes_rx.try_recv() {
                    unseen.insert(probe.0, probe.1);
                }
                if probes_rx.is_closed() && probes_rx.is_empty() {
                    generating = false;
                }
                if !generating && unseen.is_empty() {
                    return Ok::<_, anyhow::Error>(seen);
                }
                if let Some(oldest) = unseen.values().min().copied() {
                    // Oldest unseen first, page by page to the newest.
                    let mut cursor: Option<String> = None;
                    loop {
                        let mut url = format!(
                            "{api}/v1/events?camera={camera}&sort=oldest&limit=1000&since={oldest}"
                        );
                        if let Some(c) = &cursor {
                            url.push_str(&format!("&cursor={c}"));
                        }
                        let page: serde_json::Value = http.get(&url).send().await?.json().await?;
                        let answered = sightline_runtime::now().as_millis();
                        for event in page["events"].as_array().into_iter().flatten() {
                            let id: EventId =
                                event["event_id"].as_str().context("an event id")?.parse()?;
                            if let Some(captured) = unseen.remove(&id) {
                                seen.push((captured, answered));
                            }
                        }
                        match page["next_cursor"].as_str() {
                            Some(next) => cursor = Some(next.to_owned()),
                            None => break,
                        }
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };

    // The cameras: every 10 ms, rate/100 events at once, stamped now.
    let per_tick = (rate / 100).max(1);
    let probe_every = (rate / PROBES_PER_SEC).max(1);
    let mut rng = rand::rng();
    let mut track = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut i: u64 = 0;
    let mut restart_at: Option<i64> = None;
    let mut killed_at: Option<i64> = None;
    let mut respawn_at: Option<Instant> = None;
    let mut commits = Vec::new();
    // Halfway, plus up to a second: a kill at a whole second after the start can land
    // between two of ingest's one-second batches, with nothing held.
    let kill_after = Duration::from_secs(secs / 2)
        + Duration::from_millis(rand::Rng::random_range(&mut rng, 0..1000));
    while started.elapsed() < Duration::from_secs(secs) || respawn_at.is_some() {
        ticker.tick().await;
        // With `kill`: ingest killed halfway, started again 2 s later; the cameras go on.
        if kill && killed_at.is_none() && started.elapsed() >= kill_after {
            ingest.kill_9()?;
            killed_at = Some(sightline_runtime::now().as_millis());
            respawn_at = Some(Instant::now() + Duration::from_secs(2));
        }
        if respawn_at.is_some_and(|at| Instant::now() >= at) {
            respawn_at = None;
            ingest.spawn()?;
            restart_at = Some(sightline_runtime::now().as_millis());
        }
        i = tick(
            &handle,
            &mut commits,
            &probes_tx,
            &probe_camera,
            per_tick,
            probe_every,
            i,
            &mut rng,
            &mut track,
        )
        .await?;
    }
    let generated = started.elapsed();
    let (published, ingested) = progress(client).await?;
    for commit in commits {
        for result in commit.await? {
            result.map_err(|e| anyhow::anyhow!("append: {e:?}"))?;
        }
    }
    // The rate the cameras really kept (the buffer never holds them back: if the pipeline
    // cannot keep up, the latencies say so).
    println!(
        "    {i} events in {:.1} s ({:.0}/s), all committed {:.1} s after the start; when the cameras stopped, {} published to JetStream and {} acknowledged by ingest (of the phase's); {} read back from the buffer file (the rest from memory)",
        generated.as_secs_f64(),
        i as f64 / generated.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        published.saturating_sub(start_progress.0),
        ingested.saturating_sub(start_progress.1),
        metrics.buffer_rows_read_from_file.get(),
    );
    drop(probes_tx);
    closed.cancel();
    let report = publishing.await?;
    anyhow::ensure!(
        report.unpublished == 0,
        "{} events unpublished",
        report.unpublished
    );
    // The buffer's thread ends with the phase: its CPU is read while it still runs.
    let buffer_cpu = thread_cpu_seconds("sightline-buffe");
    handle.close().await;
    let _ = thread.join();
    let seen = tokio::time::timeout(Duration::from_secs(180), reading)
        .await
        .context("some probes were not visible within 180 s")???;
    anyhow::ensure!(
        seen.iter()
            .all(|(captured, _)| *captured >= phase_start.as_millis()),
        "a probe from before the phase"
    );
    let mut latencies: Vec<f64> = seen
        .iter()
        .map(|(captured, visible)| (visible - captured) as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let after_restart = restart_at.map(|restart| {
        seen.iter()
            .filter(|(captured, _)| *captured < restart)
            .map(|(_, visible)| (visible - restart) as f64 / 1000.0)
            .fold(0.0, f64::max)
    });
    // Probes captured before the kill that were not visible until after the restart: those
    // the killed ingest held unacknowledged, and those still on their way to it.
    let held = killed_at.zip(restart_at).map(|(killed, restart)| {
        let held: Vec<f64> = seen
            .iter()
            .filter(|(captured, visible)| *captured < killed && *visible >= restart)
            .map(|(_, visible)| (visible - restart) as f64 / 1000.0)
            .collect();
        (held.len(), held.into_iter().fold(f64::NAN, f64::max))
    });
    if kill {
        ingest.wait_ready(http).await?;
    }
    Ok(Phase {
        latencies,
        after_restart,
        held,
        buffer_cpu,
    })
}

/// One tick of the cameras: `per_tick` events handed to the buffer at once without waiting
/// for their commits (as the agent's cameras do; the buffer thread groups them), every
/// `probe_every`th a probe. Their commits go to `commits`, checked at the end of the phase.
/// Returns the next event number.
#[allow(clippy::too_many_arguments)]
async fn tick(
    handle: &worker::BufferHandle,
    commits: &mut Vec<tokio::task::JoinHandle<Vec<Result<u64, worker::AppendError>>>>,
    probes: &tokio::sync::mpsc::UnboundedSender<(EventId, i64)>,
    probe_camera: &str,
    per_tick: u64,
    probe_every: u64,
    mut i: u64,
    rng: &mut impl rand::Rng,
    track: &mut u64,
) -> anyhow::Result<u64> {
    let now = sightline_runtime::now();
    let mut appends = Vec::with_capacity(per_tick as usize);
    for _ in 0..per_tick {
        let mut event = sightline_tests::data::event(i as usize, Some(now), track, rng);
        if i.is_multiple_of(probe_every) {
            event.camera_id = probe_camera.to_owned();
            probes
                .send((event.event_id, now.as_millis()))
                .map_err(|_| anyhow::anyhow!("the reader stopped"))?;
        }
        appends.push(handle.submit(Message::Event(event), None));
        i += 1;
    }
    // The cameras go on to their next frames; the commits are checked at the end.
    commits.push(tokio::spawn(join_all(appends)));
    Ok(i)
}
