//! The edge agent binary against real NATS, ingest and ClickHouse: an uplink that goes away
//! for a while, and an agent killed with SIGKILL again and again. The DuckDB buffer is read
//! afterwards as the record of what the agent committed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use sightline_edge_agent::buffer::Buffer;
use sightline_edge_agent::buffer::worker::BUFFER_FILE;
use sightline_shared::DetectionEvent;
use sightline_tests::fixtures::{KillOnDrop, free_port, poll_until, workspace_binary};
use sightline_tests::stack::Stack;

/// Writes an agent config with synthetic cameras and returns (path, status URL).
fn agent_config(
    dir: &Path,
    stack: &Stack,
    edge: &str,
    cameras: &[(&str, f64, Option<u64>)],
) -> anyhow::Result<(std::path::PathBuf, String)> {
    write_agent_config(dir, &stack.nats.url(), edge, &cameras_toml(cameras))
}

/// `[[cameras]]` tables of synthetic cameras: (id, events per second, stop after so many).
pub(crate) fn cameras_toml(cameras: &[(&str, f64, Option<u64>)]) -> String {
    let mut text = String::new();
    for (id, rate, max) in cameras {
        let max = max.map_or(String::new(), |m| format!(", max_events = {m}"));
        text.push_str(&format!(
            "[[cameras]]\nid = \"{id}\"\nsource = {{ kind = \"synthetic\", events_per_second = {rate:.1}{max} }}\n"
        ));
    }
    text
}

/// Writes an agent config with the given `[[cameras]]` (and any other tables, after them)
/// and the shipped model, and returns (path, status URL).
pub(crate) fn write_agent_config(
    dir: &Path,
    nats: &str,
    edge: &str,
    cameras: &str,
) -> anyhow::Result<(std::path::PathBuf, String)> {
    let port = free_port();
    let repo = crate::repo();
    let mut text = format!(
        r#"
version = 1
edge_id = "{edge}"
[nats]
url = "{nats}"
[publisher]
drain_timeout_secs = 60
ack_timeout_ms = 2000
[storage]
data_dir = "{data}"
check_interval_secs = 1
[status]
listen = "127.0.0.1:{port}"
log_interval_secs = 5
[heartbeat]
interval_secs = 1
[model]
path = "{model}"
labels = "{labels}"
"#,
        data = dir.join("data").display(),
        model = repo.join("models/nanodet_coco_416.onnx").display(),
        labels = repo.join("models/coco.names").display(),
    );
    text.push_str(cameras);
    let path = dir.join("edge-agent.toml");
    std::fs::write(&path, text)?;
    Ok((path, format!("http://127.0.0.1:{port}")))
}

pub(crate) fn spawn_agent(config: &Path, log: &Path) -> anyhow::Result<KillOnDrop> {
    spawn_agent_logging(config, log, "info")
}

/// [`spawn_agent`] with its own log filter (`SIGHTLINE_LOG`).
pub(crate) fn spawn_agent_logging(
    config: &Path,
    log: &Path,
    filter: &str,
) -> anyhow::Result<KillOnDrop> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(KillOnDrop(
        Command::new(workspace_binary("edge-agent"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("SIGHTLINE_LOG", filter)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    ))
}

async fn status(http: &reqwest::Client, base: &str) -> Option<serde_json::Value> {
    let response = http.get(format!("{base}/v1/status")).send().await.ok()?;
    response.json().await.ok()
}

/// The agent's `/metrics` page.
pub(crate) async fn metrics_text(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Waits until the agent's status satisfies `done`.
pub(crate) async fn wait_status(
    http: &reqwest::Client,
    base: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let read = || async { anyhow::Ok(status(http, base).await) };
    match poll_until(timeout, read, |status| status.as_ref().is_some_and(&done)).await? {
        Ok(Some(status)) => Ok(status),
        _ => anyhow::bail!("timed out waiting for {what}"),
    }
}

/// Every event a stopped agent's buffer in `data` holds, and how many are unsent.
pub(crate) fn buffer_contents(data: &Path) -> anyhow::Result<(Vec<DetectionEvent>, u64)> {
    let (buffer, _) = Buffer::open(&data.join(BUFFER_FILE))?;
    let unsent = buffer.stats()?.unsent;
    let events = buffer
        .recent(usize::MAX >> 1)?
        .into_iter()
        .map(|r| r.event)
        .collect();
    Ok((events, unsent))
}

/// Every event id the buffer holds, by camera, with frame numbers; all must be sent.
fn buffered(dir: &Path) -> anyhow::Result<BTreeMap<String, (String, u64)>> {
    let (events, unsent) = buffer_contents(&dir.join("data"))?;
    anyhow::ensure!(unsent == 0, "{unsent} events left unsent");
    Ok(events
        .into_iter()
        .map(|e| (e.event_id.to_string(), (e.camera_id, e.frame_seq)))
        .collect())
}

/// Waits until ClickHouse holds `expected` distinct events of `edge`; returns
/// (rows through FINAL, distinct ids) and the ids.
async fn stored(
    stack: &Stack,
    edge: &str,
    expected: usize,
) -> anyhow::Result<(usize, BTreeSet<String>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ids = stack
            .clickhouse
            .query(&format!(
                "SELECT toString(event_id) FROM sightline.events FINAL WHERE edge_id = '{edge}' FORMAT TabSeparated"
            ))
            .await?;
        let ids: Vec<String> = ids.lines().map(str::to_owned).collect();
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        if unique.len() >= expected || Instant::now() > deadline {
            return Ok((ids.len(), unique));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_edge_delivers_everything_once_when_the_link_returns() -> anyhow::Result<()> {
    // Minutes offline by default; SIGHTLINE_OFFLINE_SECS shortens it for quick runs.
    let offline: u64 = std::env::var("SIGHTLINE_OFFLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut stack = Stack::start().await?;
    let tmp = tempfile::tempdir()?;
    let rate = 50.0;
    let per_camera = (rate as u64) * (offline + 15);
    let (config, base) = agent_config(
        tmp.path(),
        &stack,
        "edge-offline",
        &[
            ("door", rate, Some(per_camera)),
            ("yard", rate, Some(per_camera)),
        ],
    )?;
    let mut agent = spawn_agent(&config, &tmp.path().join("agent.log"))?;
    let http = reqwest::Client::new();
    wait_status(
        &http,
        &base,
        "first publishes",
        Duration::from_secs(30),
        |s| s["events_published"].as_u64() > Some(20),
    )
    .await?;

    // The local endpoint, for an operator on the host.
    let recent: Vec<serde_json::Value> = http
        .get(format!("{base}/v1/events/recent?limit=5"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(recent.len(), 5);
    // The running agent's endpoint is guarded: a rebound name is refused, and a simple
    // cross-site POST (no confirmation header) cannot rotate.
    let rebound = http
        .get(format!("{base}/v1/events/recent"))
        .header(reqwest::header::HOST, "evil.example")
        .send()
        .await?;
    assert_eq!(rebound.status().as_u16(), 421);
    let simple_post = http
        .post(format!("{base}/v1/rotate?force=true"))
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .send()
        .await?;
    assert_eq!(simple_post.status().as_u16(), 403);
    assert!(
        recent
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() > w[1]["seq"].as_u64())
    );
    assert_eq!(recent[0]["event"]["edge_id"], "edge-offline");
    let bad = http
        .get(format!("{base}/v1/events/recent?limit=0"))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("limit"));
    let metrics = metrics_text(&http, &base).await?;
    assert!(
        metrics.contains("sightline_edge_buffer_unsent"),
        "{metrics}"
    );

    stack.nats.kill();
    tokio::time::sleep(Duration::from_secs(offline)).await;
    let during = wait_status(&http, &base, "a backlog", Duration::from_secs(10), |s| {
        s["nats_connected"] == false && s["buffer"]["unsent"].as_u64() > Some(rate as u64)
    })
    .await?;
    tracing::info!(backlog = %during["buffer"]["unsent"], "offline");
    stack.nats.start_again()?;

    let exit = agent.wait_exit(Duration::from_secs(300)).await?;
    anyhow::ensure!(exit.success(), "the agent exited with {exit}");
    let committed = buffered(tmp.path())?;
    assert_eq!(committed.len() as u64, 2 * per_camera);
    let (rows, ids) = stored(&stack, "edge-offline", committed.len()).await?;
    assert_eq!(ids, committed.keys().cloned().collect::<BTreeSet<_>>());
    assert_eq!(rows, ids.len(), "an event is visible twice");
    // Per camera, capture order is frame order, with no gaps.
    for camera in ["door", "yard"] {
        let frames = stack
            .clickhouse
            .query(&format!(
                "SELECT frame_seq FROM sightline.events FINAL WHERE edge_id = 'edge-offline' AND camera_id = '{camera}' ORDER BY captured_at, frame_seq FORMAT TabSeparated"
            ))
            .await?;
        let frames: Vec<u64> = frames
            .lines()
            .map(|l| l.parse())
            .collect::<Result<_, _>>()?;
        assert_eq!(frames, (0..per_camera).collect::<Vec<_>>(), "{camera}");
    }
    // Its heartbeats reached edge_heartbeats; the last ones show the backlog gone.
    let heartbeats = stack
        .clickhouse
        .query(
            "SELECT count(), max(events_created), argMax(backlog, sent_at_ms), max(storage_limit_bytes), max(rss_bytes) > 0 FROM sightline.edge_heartbeats WHERE edge_id = 'edge-offline' FORMAT TabSeparated",
        )
        .await?;
    let fields: Vec<&str> = heartbeats.trim().split('\t').collect();
    assert!(fields[0].parse::<u64>()? >= 5, "{heartbeats}");
    assert!(fields[1].parse::<u64>()? > 0, "{heartbeats}");
    assert_eq!(fields[3], "4000000000", "{heartbeats}");
    assert_eq!(fields[4], "1", "{heartbeats}");
    // Heartbeat v2: the interval, the filesystem's free space, each camera.
    let v2 = stack
        .clickhouse
        .query(
            "SELECT argMax(tuple(schema_version, interval_secs, storage_free_bytes > 0, camera_ids, abs(clock_offset_ms) < 1000), sent_at_ms) FROM sightline.edge_heartbeats WHERE edge_id = 'edge-offline' FORMAT TabSeparated",
        )
        .await?;
    // The clock offset measured against ingest's (one host: well under a second).
    assert_eq!(v2.trim(), "(2,1,1,['door','yard'],1)", "{v2}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_stored_and_bad_ones_dead_lettered() -> anyhow::Result<()> {
    use sightline_shared::heartbeat::{
        CONTENT_TYPE, CONTENT_TYPE_V1, CameraHeartbeat, Heartbeat, HeartbeatV1,
    };
    let stack = Stack::start().await?;
    let js = stack.jetstream().await?;
    let v1 = HeartbeatV1 {
        edge_id: "edge-hb".into(),
        sent_at: sightline_shared::Timestamp::from_millis(1_795_000_000_123),
        agent_version: "0.1.0".into(),
        uptime_secs: 60,
        cameras: 2,
        fps: 0.0,
        events_created: 10,
        events_sent: 7,
        events_dropped: 1,
        backlog: 3,
        oldest_unsent_at: Some(sightline_shared::Timestamp::from_millis(1_794_999_990_000)),
        storage_used_bytes: 1_000,
        storage_limit_bytes: 4_000_000_000,
        cpu_percent: 1.5,
        rss_bytes: 20_000_000,
    };
    let mut v2 = Heartbeat::from(v1.clone());
    v2.edge_id = "edge-hb2".into();
    v2.schema_version = 2;
    v2.interval_secs = 5;
    v2.storage_free_bytes = Some(9_000_000_000);
    v2.camera_states = ["door", "yard"]
        .map(|camera| CameraHeartbeat {
            camera_id: camera.into(),
            state: "running".into(),
            fps: 5.0,
            events_created: 5,
            errors: 0,
        })
        .to_vec();
    let publish = async |subject: &str, content_type: &str, payload: Vec<u8>| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(sightline_shared::codec::CONTENT_TYPE_HEADER, content_type);
        js.publish_with_headers(subject.to_owned(), headers, payload.into())
            .await?
            .await?;
        anyhow::Ok(())
    };
    // Both versions are read.
    let v1_json = serde_json::to_vec(&v1)?;
    publish("sightline.heartbeats.edge-hb", CONTENT_TYPE_V1, v1_json).await?;
    publish("sightline.heartbeats.edge-hb2", CONTENT_TYPE, v2.encode()).await?;
    // Another edge's heartbeat on this subject, and one that is not JSON.
    publish("sightline.heartbeats.edge-x", CONTENT_TYPE, v2.encode()).await?;
    publish(
        "sightline.heartbeats.edge-hb",
        CONTENT_TYPE,
        b"{nope".to_vec(),
    )
    .await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = stack
            .clickhouse
            .query("SELECT edge_id, sent_at_ms, backlog, oldest_unsent_at_ms, cpu_percent, schema_version, interval_secs, storage_free_bytes, camera_ids, camera_states FROM sightline.edge_heartbeats ORDER BY edge_id FORMAT TabSeparated")
            .await?;
        if rows.lines().count() >= 2 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            "edge-hb\t1795000000123\t3\t1794999990000\t1.5\t1\t0\t\\N\t[]\t[]",
            "edge-hb2\t1795000000123\t3\t1794999990000\t1.5\t2\t5\t9000000000\t['door','yard']\t['running','running']"
        ]
    );
    let mut dead = Vec::new();
    while dead.len() < 2 && Instant::now() < deadline {
        dead = stack.dead_letters(10).await?;
    }
    let mut reasons: Vec<_> = dead
        .iter()
        .map(|d| {
            (
                d.original_subject.as_str(),
                d.reason.contains("does not match"),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("sightline.heartbeats.edge-hb", false),
            ("sightline.heartbeats.edge-x", true)
        ]
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_agent_repeatedly_and_every_committed_event_arrives_once() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let tmp = tempfile::tempdir()?;
    let (config, _) = agent_config(
        tmp.path(),
        &stack,
        "edge-crash",
        &[("gate", 300.0, None), ("dock", 300.0, None)],
    )?;
    let log = tmp.path().join("agent.log");
    let mut rng = rand::rng();
    for round in 0..8 {
        let mut agent = spawn_agent(&config, &log)?;
        // Random moments: during start-up and recovery, while committing and publishing.
        let wait = rng.random_range(300..2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        agent.kill()?;
        agent.wait()?;
        tracing::info!(round, after_ms = wait, "killed the edge agent");
    }
    // One last life, with cameras that stop after one event each: the agent drains the
    // backlog and exits by itself.
    let (config, _) = agent_config(
        tmp.path(),
        &stack,
        "edge-crash",
        &[("gate", 300.0, Some(1)), ("dock", 300.0, Some(1))],
    )?;
    let mut agent = spawn_agent(&config, &log)?;
    let exit = agent.wait_exit(Duration::from_secs(300)).await?;
    anyhow::ensure!(exit.success(), "the agent exited with {exit}");

    let committed = buffered(tmp.path())?;
    assert!(committed.len() > 100, "only {} events", committed.len());
    let (rows, ids) = stored(&stack, "edge-crash", committed.len()).await?;
    assert_eq!(ids, committed.keys().cloned().collect::<BTreeSet<_>>());
    assert_eq!(rows, ids.len(), "an event is visible twice");
    stack.stop().await
}
