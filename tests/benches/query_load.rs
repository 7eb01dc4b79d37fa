//! The query service under attack: its peak memory and whether `/readyz` stays quick while
//! a second process sends it the worst requests of the hardening review, in a bounded loop
//! on loopback.
//!
//! `cargo bench -p sightline-tests --bench query_load` (or `cargo test --bench query_load`
//! for a debug build; `SIGHTLINE_QUERY_BIN` names the query-service binary to measure,
//! otherwise the one beside this bench) starts ClickHouse (of the `SIGHTLINE_SERVERS`
//! generation), loads `SIGHTLINE_LOAD_EVENTS` events (default 1,000,000) over the last 7
//! days, starts the real query-service binary with its default limits (and `max_limit` raised
//! to 20,000, the label-page attack), measures it idle, then for `SIGHTLINE_LOAD_SECS`
//! (default 60) runs `SIGHTLINE_LOAD_WORKERS` (default 16) request loops and
//! `SIGHTLINE_LOAD_SLOW` (default 200) slow clients at once:
//! - stats by camera and label per minute over the week (millions of buckets unbounded);
//! - the same per hour (within the bound: the heaviest answer that succeeds);
//! - whole-store exports, half abandoned after the first chunk;
//! - a page of 20,000 events filtered by every label, and one unfiltered;
//! - the camera list over the week;
//! - slow clients sending a request's headers a byte at a time, and reconnecting when cut.
//!
//! Meanwhile `/readyz` is probed every 250 ms and the service's resident memory sampled every
//! 100 ms. Prints the idle baseline, the peak (VmHWM) and `/readyz` p50/p99/max, and the
//! statuses each attack got. Targets: peak RSS under 512 MiB (half the chart's default
//! limit), `/readyz` always under a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sightline_shared::Timestamp;
use sightline_store::EventRow;
use sightline_tests::data;
use sightline_tests::stack::{bench_clickhouse, proc_status_bytes, spawn_query_binary};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Mutex;

const DAY_MS: i64 = 86_400_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user and system) process `pid` has used.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at its closing paren.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the paren.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Probes `/readyz` every 250 ms until `stop`, from a thread and runtime of its own (the
/// attack's tasks must not delay the probe itself); the latencies (a failure counts as 5 s).
fn probe_readiness(
    api: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<Duration>, usize)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the probe");
        runtime.block_on(probe(reqwest::Client::new(), api, stop))
    })
}

async fn probe(
    http: reqwest::Client,
    api: String,
    stop: Arc<AtomicBool>,
) -> (Vec<Duration>, usize) {
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = tokio::time::timeout(
            Duration::from_secs(5),
            http.get(format!("{api}/readyz")).send(),
        )
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status() == 200));
        latencies.push(if ok {
            started.elapsed()
        } else {
            Duration::from_secs(5)
        });
        failed += usize::from(!ok);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (latencies, failed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = env_or("SIGHTLINE_LOAD_EVENTS", 1_000_000);
    let secs = env_or("SIGHTLINE_LOAD_SECS", 60) as u64;
    let workers = env_or("SIGHTLINE_LOAD_WORKERS", 16);
    let slow = env_or("SIGHTLINE_LOAD_SLOW", 200);

    let (clickhouse, _admin, sink) = bench_clickhouse().await?;
    println!(
        "query load test on the {} servers (ClickHouse {}): loading {n} events over 7 days",
        clickhouse.servers().name(),
        clickhouse.query("SELECT version()").await?,
    );
    let end = sightline_runtime::now().as_millis() - 60_000;
    let start = end - 7 * DAY_MS;
    let step = (7 * DAY_MS) as f64 / n as f64;
    let (mut rng, mut track) = (rand::rng(), 0);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
        let rows: Vec<EventRow> = chunk
            .iter()
            .map(|&i| {
                let at = Timestamp::from_millis(start + (i as f64 * step) as i64);
                EventRow::from(data::event(i, Some(at), &mut track, &mut rng))
            })
            .collect();
        for batch in rows.chunks(50_000) {
            sink.insert(batch).await.map_err(|e| anyhow::anyhow!(e))?;
        }
    }

    // The real binary, so its memory is its own.
    let dir = tempfile::tempdir()?;
    let binary = std::env::var("SIGHTLINE_QUERY_BIN")
        .ok()
        .map(std::path::PathBuf::from);
    // SIGHTLINE_LOAD_CONFIG: more config lines for the service, to compare settings.
    let extra = format!(
        "max_limit = 20000\n{}",
        std::env::var("SIGHTLINE_LOAD_CONFIG").unwrap_or_default()
    );
    let (mut child, api) =
        spawn_query_binary(binary.clone(), &clickhouse.url(), &extra, dir.path()).await?;
    let binary = binary.map_or_else(|| "the debug build".to_owned(), |b| b.display().to_string());
    let port = api.rsplit(':').next().unwrap_or_default().to_owned();
    let pid = child.id();
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // Idle baseline: a few ordinary requests, then readiness probes.
    for _ in 0..5 {
        http.get(format!("{api}/v1/events?limit=100"))
            .send()
            .await?
            .error_for_status()?;
    }
    let idle_rss = proc_status_bytes(pid, "VmRSS:")?;
    let stop = Arc::new(AtomicBool::new(false));
    let idle_probe = probe_readiness(api.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut idle_ready, _) = idle_probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe panicked"))?;

    let since = Timestamp::from_millis(start).to_rfc3339();
    let until = Timestamp::from_millis(end + 60_000).to_rfc3339();
    let labels: String = data::LABELS.iter().map(|l| format!("&label={l}")).collect();
    let attacks: Vec<(&str, String)> = vec![
        (
            "stats 1m by camera,label, a week",
            format!("/v1/stats?group_by=camera,label&interval=1m&since={since}&until={until}"),
        ),
        (
            "stats 1h by camera,label, a week",
            format!("/v1/stats?group_by=camera,label&interval=1h&since={since}&until={until}"),
        ),
        ("export everything", "/v1/events/export".to_owned()),
        (
            "20000 by every label",
            format!("/v1/events?limit=20000{labels}"),
        ),
        ("20000 unfiltered", "/v1/events?limit=20000".to_owned()),
        ("cameras over a week", format!("/v1/cameras?since={since}")),
    ];
    let statuses: Arc<Mutex<BTreeMap<(String, u16), usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (http, api, attacks, statuses) =
            (http.clone(), api.clone(), attacks.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = w;
            while Instant::now() < deadline {
                let (name, path) = &attacks[round % attacks.len()];
                round += 1;
                let status = match http.get(format!("{api}{path}")).send().await {
                    Ok(mut response) => {
                        let status = response.status().as_u16();
                        // Half the exports are abandoned after their first chunk.
                        let abandon = path.contains("export") && round % 2 == 0;
                        while let Ok(Some(_)) = response.chunk().await {
                            if abandon {
                                break;
                            }
                        }
                        status
                    }
                    Err(_) => 0,
                };
                *statuses
                    .lock()
                    .await
                    .entry(((*name).to_owned(), status))
                    .or_default() += 1;
            }
        }));
    }
    let cut_off = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..slow {
        let (address, cut_off) = (format!("127.0.0.1:{port}"), cut_off.clone());
        tasks.push(tokio::spawn(async move {
            let request = b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
            while Instant::now() < deadline {
                let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let mut sent = 0;
                while Instant::now() < deadline {
                    let byte = request.get(sent).copied().unwrap_or(b'a');
                    if stream.write_all(&[byte]).await.is_err() {
                        cut_off.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }));
    }
    let probe = probe_readiness(api.clone(), stop.clone());
    let cpu_before = cpu_secs(pid)?;
    let mut peak_sampled = 0;
    while Instant::now() < deadline {
        peak_sampled = peak_sampled.max(proc_status_bytes(pid, "VmRSS:")?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.await?;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ready, failed) = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe panicked"))?;
    let cpu = cpu_secs(pid)? - cpu_before;
    let peak = proc_status_bytes(pid, "VmHWM:")?;
    let after = proc_status_bytes(pid, "VmRSS:")?;
    child.kill().ok();
    child.wait().ok();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("query-service binary: {binary}");
    println!("{workers} request loops and {slow} slow clients for {secs} s, {n} events stored");
    println!(
        "  resident memory: idle {:.0} MiB, peak {:.0} MiB (sampled {:.0} MiB), after {:.0} MiB; target < 512 MiB: {}",
        mib(idle_rss),
        mib(peak),
        mib(peak_sampled),
        mib(after),
        if peak < 512 << 20 { "met" } else { "MISSED" }
    );
    println!(
        "  /readyz idle: p50 {:.1} ms, p99 {:.1} ms ({} probes)",
        quantile(&mut idle_ready, 0.5),
        quantile(&mut idle_ready, 0.99),
        idle_ready.len()
    );
    let worst = ready.iter().max().copied().unwrap_or_default();
    println!(
        "  /readyz under attack: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {failed} failed of {}; target < 1 s: {}",
        quantile(&mut ready, 0.5),
        quantile(&mut ready, 0.99),
        worst.as_secs_f64() * 1000.0,
        ready.len(),
        if worst < Duration::from_secs(1) && failed == 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  service CPU during the attack: {cpu:.1} s of {secs} s ({:.0} % of one core)",
        cpu * 100.0 / secs as f64
    );
    println!(
        "  slow clients cut off by the header-read timeout: {}",
        cut_off.load(Ordering::Relaxed)
    );
    for ((name, status), count) in statuses.lock().await.iter() {
        println!("  {name:<34} {status:>3}: {count}");
    }
    Ok(())
}
