//! One request cannot exhaust the query service: every answer is bounded (a 400 that says
//! how to narrow the request), exports are limited in number (429), every ClickHouse call
//! has a client-side timeout, every HTTP listener cuts off slow and idle clients, and a
//! large page filtered by label needs no `IN` list past ClickHouse's `max_query_size`.

use std::time::{Duration, Instant};

use sightline_shared::{DetectionEvent, Timestamp};
use sightline_store::ErrorKind;
use sightline_tests::{Stack, data};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::now;

/// `n` events of 64 cameras and 12 labels, one every 3.6 s up to a minute ago.
fn spread(n: usize) -> Vec<DetectionEvent> {
    let (mut rng, mut track) = (rand::rng(), 0);
    let end = now().as_millis() - 60_000;
    (0..n)
        .map(|i| {
            let at = Timestamp::from_millis(end - (n - i) as i64 * 3_600);
            data::event(i, Some(at), &mut track, &mut rng)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_bounded_and_say_how_to_narrow_the_request() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let events = spread(30_000);
    stack.insert_direct(&events).await?;
    let small = stack
        .start_query(|c| {
            c.max_limit = 1000;
            c.max_result_rows = 5000;
        })
        .await?;
    let http = stack.http.clone();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let response = http.get(url).send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<serde_json::Value>().await?))
        }
    };
    // A minute per camera and label over 30 hours: tens of thousands of buckets in all,
    // though no group has more than 1800 (the per-group rule passes).
    let since = Timestamp::from_millis(now().as_millis() - 31 * 3_600_000).to_rfc3339();
    let until = now().to_rfc3339();
    let (status, body) = get(format!(
        "{small}/v1/stats?group_by=camera,label&interval=1m&since={since}&until={until}"
    ))
    .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("5000") && message.contains("interval"),
        "{message}"
    );
    // Narrowed as it says: hours per camera fit.
    let (status, body) = get(format!(
        "{small}/v1/stats?group_by=camera&interval=1h&since={since}&until={until}"
    ))
    .await?;
    assert_eq!(status, 200, "{body}");
    let buckets = body["buckets"].as_array().map_or(0, Vec::len);
    assert!((64..=5000).contains(&buckets), "{buckets}");

    // The camera list is bounded the same way.
    let tiny = stack
        .start_query(|c| {
            c.default_limit = 10;
            c.max_limit = 10;
            c.max_result_rows = 20;
        })
        .await?;
    let (status, body) = get(format!("{tiny}/v1/cameras")).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_large");

    // A page of 20,000 by label (every label, so every event matches): its keys no longer
    // become one IN list of 20,001 pairs, which passed max_query_size (500 before).
    let big = stack.start_query(|c| c.max_limit = 20_000).await?;
    let labels: String = data::LABELS.iter().map(|l| format!("&label={l}")).collect();
    let (status, body) = get(format!("{big}/v1/events?limit=20000{labels}")).await?;
    assert_eq!(status, 200, "{}", body["error"]);
    let page = body["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(page.len(), 20_000);
    let cursor = body["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (status, body) = get(format!(
        "{big}/v1/events?limit=20000{labels}&cursor={cursor}"
    ))
    .await?;
    assert_eq!(status, 200, "{}", body["error"]);
    let rest = body["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(rest.len(), 10_000);
    assert!(body["next_cursor"].is_null());
    // Every event once, newest first.
    let mut ids: Vec<String> = page
        .iter()
        .chain(&rest)
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids[0], events[events.len() - 1].event_id.to_string());
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30_000);

    // ClickHouse's own bound for a query without a LIMIT: the codes both generations
    // give for an answer past max_result_rows are read as "too large".
    let client = sightline_store::client(&stack.clickhouse.config())?;
    let error = client
        .query("SELECT number FROM system.numbers LIMIT 100000")
        .with_setting("max_result_rows", "10")
        .with_setting("result_overflow_mode", "throw")
        .with_setting("wait_end_of_query", "1")
        .fetch_all::<u64>()
        .await
        .expect_err("an answer past max_result_rows");
    assert!(
        matches!(
            sightline_store::classify(&error),
            ErrorKind::ResultTooLarge { .. }
        ),
        "{error}"
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_beyond_the_limit_are_busy_until_one_ends() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Enough that one export cannot fit in the sockets' buffers while nobody reads it.
    stack.insert_direct(&spread(30_000)).await?;
    let api = stack.start_query(|c| c.max_concurrent_exports = 1).await?;
    let url = format!("{api}/v1/events/export");
    let held = stack.http.get(&url).send().await?;
    assert_eq!(held.status(), 200);
    let busy = stack.http.get(&url).send().await?;
    assert_eq!(busy.status(), 429);
    let body: serde_json::Value = busy.json().await?;
    assert_eq!(body["error"]["code"], "busy");
    // The first one read to its end frees the place.
    let text = held.text().await?;
    assert_eq!(text.lines().count(), 30_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = stack.http.get(format!("{url}?limit=5")).send().await?;
        if next.status() == 200 {
            assert_eq!(next.text().await?.lines().count(), 5);
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.stop().await
}

/// A ClickHouse that accepts connections and never answers.
async fn silent_server() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok((url, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_clickhouse_gets_timeouts_not_hung_requests() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (silent, server) = silent_server().await?;
    let api = stack
        .start_query_unready(|c| {
            c.clickhouse.url = silent.clone();
            c.clickhouse.timeout_ms = 1000;
            // Far longer than the ClickHouse timeout: only that can answer in time.
            c.request_timeout_secs = 120;
            // An export's deadline is its ClickHouse time limit plus the call timeout.
            c.export_timeout_secs = 2;
        })
        .await?;
    for (path, status) in [
        ("/v1/events", 504),
        ("/v1/events/export", 504),
        ("/v1/cameras", 504),
        ("/v1/stats?tz=Europe/Berlin", 504),
        ("/readyz", 503),
    ] {
        let started = Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            stack.http.get(format!("{api}{path}")).send(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{path} hung"))??;
        assert_eq!(response.status(), status, "{path}");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(20), "{path}: {waited:?}");
    }
    server.abort();
    stack.stop().await
}

/// Opens a connection to `address`, sends half a request's headers, and returns how long
/// the server took to close it (`None`: still open after 20 s). Then the same for a
/// connection left idle after one whole request.
async fn cut_off_after(address: &str, path: &str) -> anyhow::Result<[Option<Duration>; 2]> {
    async fn closed_within(stream: &mut TcpStream) -> anyhow::Result<Option<Duration>> {
        let started = Instant::now();
        let mut buf = vec![0; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0) | Err(_)) => return Ok(Some(started.elapsed())),
                // A 408 or the previous response: keep reading until the close.
                Ok(Ok(_)) => {}
            }
        }
    }
    let mut slow = TcpStream::connect(address).await?;
    slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes())
        .await?;
    let slow = closed_within(&mut slow).await?;
    let mut idle = TcpStream::connect(address).await?;
    idle.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let idle = closed_within(&mut idle).await?;
    Ok([slow, idle])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_cuts_off_slow_and_idle_clients() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(|c| c.http.header_read_timeout_secs = 1).await?;
    let api = stack
        .start_query(|c| c.header_read_timeout_secs = 1)
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let data = tempfile::tempdir()?;
    let config: sightline_edge_agent::config::AgentConfig = sightline_shared::config::parse(
        &format!(
            r#"
        version = 1
        edge_id = "edge-slow"
        [nats]
        url = "{}"
        [storage]
        data_dir = "{}"
        [status]
        listen = "127.0.0.1:{port}"
        header_read_timeout_secs = 1
        [[cameras]]
        id = "lobby"
        source = {{ kind = "synthetic", events_per_second = 1.0 }}
        "#,
            stack.nats.url(),
            data.path().display()
        ),
        "edge-agent.toml",
    )?;
    let stop = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(sightline_edge_agent::run(
        config,
        stop.clone().cancelled_owned(),
    ));
    let edge = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&edge).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the edge status endpoint never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, address) in [
        ("query", api.trim_start_matches("http://").to_owned()),
        (
            "ingest",
            stack.ingest_http.trim_start_matches("http://").to_owned(),
        ),
        ("edge", edge),
    ] {
        let [slow, idle] = cut_off_after(&address, "/healthz").await?;
        for (what, closed) in [("half a request", slow), ("an idle connection", idle)] {
            let closed =
                closed.unwrap_or_else(|| panic!("{name}: {what} was still open after 20 s"));
            assert!(
                closed < Duration::from_secs(10),
                "{name}: {what}: {closed:?}"
            );
        }
    }
    stop.cancel();
    agent.await??;
    stack.stop().await
}
