//! Fault tests: servers really killed, then started again.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use sightline_shared::Encoding;
use sightline_tests::Stack;
use sightline_tests::fixtures::{SlowProxy, poll_until};
use sightline_tests::stack::publish_via;

use crate::{deliver, known_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_and_ingest_crash_lose_nothing() -> anyhow::Result<()> {
    // A short ack wait so the crashed consumer's messages come back quickly.
    let mut stack = Stack::start_with(|c| c.consumer.ack_wait_secs = 2).await?;
    let before = known_events("edge-f", "cam", 10);
    stack.publish(before.clone(), Encoding::Bincode).await?;
    stack.wait_for_events("camera=cam", 10).await?;

    stack.clickhouse.kill();
    // The API says so clearly instead of hanging or lying.
    let (status, body) = stack.get("/v1/events?limit=5").await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    // Readiness follows a background ping each second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stack.get("/readyz").await?.0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still ready 5 s after ClickHouse died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ingest_ready = |stack: &Stack| {
        let url = format!("{}/readyz", stack.ingest_http);
        let http = stack.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(
        ingest_ready(&stack).await,
        503,
        "ingest is not ready without ClickHouse"
    );

    // Events published while ClickHouse is down wait in JetStream, unacknowledged. The
    // ingest service holding them in a batch crashes; its successor must get them again.
    let during = known_events("edge-f", "cam2", 30);
    let report = stack.publish(during.clone(), Encoding::Bincode).await?;
    assert_eq!(report.published, 30);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.crash_ingest().await;
    stack.start_ingest().await?;

    stack.clickhouse.start_again()?;
    let got = stack.wait_for_events("camera=cam2&limit=100", 30).await?;
    // The new ingest may still be in its start-up backoff (up to 10 s) while the events are
    // already visible: a fast server (26.x starts in a second) comes back before it retries.
    let ready = poll_until(
        Duration::from_secs(30),
        || async { Ok(ingest_ready(&stack).await) },
        |status| *status == 200,
    )
    .await?;
    assert_eq!(ready, Ok(200), "ingest is ready again");
    assert_eq!(got.len(), 30);
    let all = stack.wait_for_events("limit=100", 40).await?;
    assert_eq!(all.len(), 40);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_under_steady_load_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack
        .clickhouse
        .query("SYSTEM STOP MERGES sightline.events")
        .await?;
    // 3000 events over about 3 s, in 30 publishes of 100; ClickHouse is down in the middle.
    let events = known_events("edge-l", "load", 3000);
    let load = {
        let js = stack.jetstream().await?;
        let events = events.clone();
        tokio::spawn(async move {
            let mut published = 0;
            for chunk in events.chunks(100) {
                published += publish_via(js.clone(), chunk.to_vec(), Encoding::Bincode, 64)
                    .await
                    .published;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            published
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack.clickhouse.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.clickhouse.start_again()?;
    assert_eq!(load.await?, 3000);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let distinct =
        "SELECT count() FROM (SELECT event_id FROM sightline.events LIMIT 1 BY event_id)";
    loop {
        let stored: usize = stack.clickhouse.query(distinct).await?.parse()?;
        if stored == 3000 {
            break;
        }
        assert!(
            stored < 3000 && std::time::Instant::now() < deadline,
            "{stored} of 3000 stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Through the query path, the newest 1000 are each there once.
    let newest = stack
        .wait_for_events("camera=load&limit=1000", 1000)
        .await?;
    let want: Vec<_> = events[2000..].iter().rev().map(|e| e.event_id).collect();
    assert_eq!(newest.iter().map(|e| e.event_id).collect::<Vec<_>>(), want);
    stack.stop().await
}

/// Waits until all `n` events of the stream are acknowledged, then checks those of `camera`
/// were each stored once: the rows as stored (merges must be stopped: a second copy would
/// still be there), the hourly rollup (`detections` in all) and the messages ingest
/// received. Returns ingest's metrics.
async fn assert_stored_once(
    stack: &Stack,
    camera: &str,
    n: u64,
    detections: usize,
) -> anyhow::Result<String> {
    stack
        .wait_for_consumer(
            "every event acknowledged",
            Duration::from_secs(90),
            |info| info.ack_floor.stream_sequence >= n && info.num_ack_pending == 0,
        )
        .await?;
    // A second delivery already on its way would be written within a batch wait or two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = format!("SELECT count() FROM sightline.events WHERE camera_id = '{camera}'");
    assert_eq!(stack.clickhouse.query(&rows).await?, n.to_string());
    let rollup = format!(
        "SELECT countMerge(detections) FROM sightline.detections_hourly WHERE camera_id = '{camera}'"
    );
    assert_eq!(
        stack.clickhouse.query(&rollup).await?,
        detections.to_string()
    );
    let metrics = stack.ingest_metrics().await?;
    assert_eq!(
        sightline_tests::stack::metric(&metrics, "sightline_ingest_messages_received_total", ""),
        n as f64,
        "{metrics}"
    );
    Ok(metrics)
}

/// ClickHouse slow rather than down: each answer comes 0.7 s late, under the quarter of
/// the ack wait (4 s) that one wait may take, and batches (150 rows: more than tokio's
/// budget of reads per poll, after which a channel says Pending whatever it holds) are
/// smaller than a pull (2,000), so messages pulled ahead wait unread through several
/// hand-overs in a row. Their waits add up; the pull is dropped before they reach the ack
/// wait, and each event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_clickhouse_and_small_batches_double_nothing() -> anyhow::Result<()> {
    let (stack, proxy) = stack_with_slow_clickhouse(|c| {
        c.consumer.ack_wait_secs = 4;
        c.consumer.fetch_batch = 2_000;
        c.batch.max_rows = 150;
    })
    .await?;
    stack
        .clickhouse
        .query("SYSTEM STOP MERGES sightline.events")
        .await?;
    proxy.set_delay(Duration::from_millis(700));
    let events = known_events("edge-s", "slow-small", 3000);
    let detections: usize = events.iter().map(|e| e.detections.len()).sum();
    stack.publish(events, Encoding::Bincode).await?;
    assert_stored_once(&stack, "slow-small", 3000, detections).await?;
    proxy.set_delay(Duration::ZERO);
    stack.stop().await
}

/// A ClickHouse outage of several ack waits under load: the service holds a batch being
/// retried, one waiting behind it, one filling and what the client pulled ahead. None of it
/// may expire and come back as a second delivery: the rows would be stored twice (merged
/// away only later) and the hourly rollup would count them twice for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_ack_wait_redelivers_and_doubles_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(|c| {
        c.consumer.ack_wait_secs = 2;
        c.consumer.fetch_batch = 100;
        c.batch.max_rows = 300;
    })
    .await?;
    stack
        .clickhouse
        .query("SYSTEM STOP MERGES sightline.events")
        .await?;
    stack.clickhouse.kill();
    let events = known_events("edge-o", "outage", 3000);
    let detections: usize = events.iter().map(|e| e.detections.len()).sum();
    let report = publish_via(stack.jetstream().await?, events, Encoding::Bincode, 64).await;
    assert_eq!(report.published, 3000);
    // Five ack waits with every batch stuck.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.clickhouse.start_again()?;
    stack
        .clickhouse
        .query("SYSTEM STOP MERGES sightline.events")
        .await?;
    let metrics = assert_stored_once(&stack, "outage", 3000, detections).await?;
    assert!(
        sightline_tests::stack::metric(&metrics, "sightline_ingest_pulls_restarted_total", "")
            >= 1.0,
        "the pull was dropped while the writer was stuck: {metrics}"
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_then_back_the_publisher_retries_until_acked() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let js = stack.jetstream().await?;
    stack.nats.kill();
    let events = known_events("edge-n", "cam", 25);
    let publishing = tokio::spawn(publish_via(js, events, Encoding::Bincode, 8));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !publishing.is_finished(),
        "nothing can be acknowledged while NATS is down"
    );
    stack.nats.start_again()?;
    let report = tokio::time::timeout(Duration::from_secs(60), publishing).await??;
    assert_eq!((report.published, report.unpublished), (25, 0));
    let got = stack.wait_for_events("camera=cam&limit=100", 25).await?;
    assert_eq!(got.len(), 25);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_ingest_replicas_repeatedly_while_they_drain() -> anyhow::Result<()> {
    const N: usize = 200_000;
    let mut stack = Stack::start().await?;
    // From here on only real processes ingest, and they get killed.
    stack.crash_ingest().await;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("ingest.toml");
    std::fs::write(
        &config_path,
        format!(
            "[nats]\nurl = \"{}\"\n[clickhouse]\nurl = \"{}\"\n[consumer]\nack_wait_secs = 2\n\
             [batch]\nmax_rows = 20000\nmax_wait_ms = 200\n",
            stack.nats.url(),
            stack.clickhouse.url()
        ),
    )?;
    let mut events = Vec::with_capacity(N);
    for camera in 0..20 {
        events.extend(known_events("edge-k", &format!("cam-{camera}"), N / 20));
    }
    let report = stack.publish(events, Encoding::Bincode).await?;
    assert_eq!(report.published as usize, N);

    let spawn = || {
        sightline_tests::fixtures::spawn_ingest(
            &config_path,
            "127.0.0.1:0",
            std::process::Stdio::null(),
        )
    };
    let distinct =
        "SELECT count() FROM (SELECT event_id FROM sightline.events LIMIT 1 BY event_id)";
    // Two replicas share the durable consumer each round; one dies halfway, the other at the
    // end of the round. SIGKILL: mid-batch, mid-insert or mid-ack, wherever they are.
    for (round, run_ms) in [700u64, 1300, 500, 1700, 900].into_iter().enumerate() {
        let (mut first, mut second) = (spawn()?, spawn()?);
        tokio::time::sleep(Duration::from_millis(run_ms / 2)).await;
        first.kill()?;
        first.wait()?;
        tokio::time::sleep(Duration::from_millis(run_ms / 2)).await;
        second.kill()?;
        second.wait()?;
        let stored = stack.clickhouse.query(distinct).await?;
        tracing::info!(round, stored, "killed ingest");
    }
    let mut survivors = [spawn()?, spawn()?];
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let stored: usize = stack.clickhouse.query(distinct).await?.parse()?;
        if stored >= N {
            assert_eq!(stored, N);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {stored} of {N} events stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing stuck: every message acknowledged once the survivor has caught up.
    stack
        .wait_for_consumer("nothing pending", Duration::from_secs(30), |info| {
            info.num_pending == 0 && info.num_ack_pending == 0
        })
        .await?;
    for survivor in &mut survivors {
        survivor.kill()?;
        survivor.wait()?;
    }
    // Through the query path: one camera's newest 1000, each exactly once.
    let seen = stack
        .wait_for_events("camera=cam-7&limit=1000", 1000)
        .await?;
    let unique: std::collections::HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(unique.len(), 1000);
    let raw: usize = stack
        .clickhouse
        .query("SELECT count() FROM sightline.events")
        .await?
        .parse()?;
    tracing::info!(
        raw,
        distinct = N,
        "rows stored including redelivered duplicates"
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_new_consumer_settings_updates_the_durable_consumer() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let before = stack.consumer_info().await?.config;
    assert_eq!(before.ack_wait, Duration::from_secs(10));
    stack.crash_ingest().await;
    stack.ingest_config.consumer.ack_wait_secs = 3;
    stack.ingest_config.consumer.max_ack_pending = 1234;
    stack.start_ingest().await?;
    let after = stack
        .wait_for_consumer("the new ack wait", Duration::from_secs(30), |info| {
            info.config.ack_wait == Duration::from_secs(3)
        })
        .await?
        .config;
    assert_eq!(
        (after.ack_wait, after.max_ack_pending),
        (Duration::from_secs(3), 1234)
    );
    // And it still delivers.
    deliver(&stack, "edge-u", "cam-u", 10).await?;
    stack.stop().await
}

/// A stack whose ingest reaches ClickHouse through a [`SlowProxy`] (no delay yet; 20 s
/// request timeout), with `tweak` applied to ingest's config as well.
async fn stack_with_slow_clickhouse(
    tweak: impl FnOnce(&mut sightline_ingest::IngestConfig),
) -> anyhow::Result<(Stack, SlowProxy)> {
    let mut proxy = None;
    let stack = Stack::start_with(|c| {
        let port = c
            .clickhouse
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok());
        let slow = SlowProxy::start(port.expect("clickhouse port")).expect("proxy");
        c.clickhouse.url = format!("http://127.0.0.1:{}", slow.port());
        c.clickhouse.timeout_ms = 20_000;
        proxy = Some(slow);
        tweak(c);
    })
    .await?;
    Ok((stack, proxy.expect("proxy started")))
}

/// An INSERT whose answer is lost (the server stored the rows, the client timed out before
/// the answer came) is retried whole; on a server with insert deduplication tokens the retry
/// is dropped at insert time, so the rows as stored (merges stopped) and the hourly rollup
/// hold each event once. 18.16 has no tokens: there the copy collapses only at merge, and
/// the rollup keeps it (ARCHITECTURE.md, "ClickHouse versions").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_whose_answer_is_lost_is_retried_and_stored_once() -> anyhow::Result<()> {
    if !sightline_tests::Servers::only(
        sightline_tests::Servers::Modern,
        "ClickHouse 18.16 has no insert deduplication tokens: a batch retried after a lost \
             answer is stored twice until merged",
    ) {
        return Ok(());
    }
    let (stack, proxy) = stack_with_slow_clickhouse(|c| {
        c.clickhouse.timeout_ms = 1_500;
        c.batch.max_rows = 500;
        c.batch.max_wait_ms = 1_000;
    })
    .await?;
    stack.clickhouse.query("SYSTEM STOP MERGES").await?;
    // Every answer is now held back past the client's timeout: the INSERTs land, their
    // answers never arrive, and the writer sends the same batch again, and again.
    proxy.set_delay(Duration::from_secs(3));
    let events = known_events("edge-dedup", "cam-dedup", 500);
    let detections: usize = events.iter().map(|e| e.detections.len()).sum();
    stack.publish(events, Encoding::Bincode).await?;
    let retried = stack
        .wait_for_ingest_metrics("two INSERTs that timed out", Duration::from_secs(60), |m| {
            sightline_tests::stack::metric(m, "sightline_ingest_inserts_total", "TransientError")
                >= 2.0
        })
        .await?;
    assert_eq!(
        sightline_tests::stack::metric(&retried, "sightline_ingest_inserts_total", "Ok"),
        0.0
    );
    // The server holds the batch once, although it was sent at least twice.
    let rows = "SELECT count() FROM sightline.events WHERE camera_id = 'cam-dedup'";
    assert_eq!(stack.clickhouse.query(rows).await?, "500");
    proxy.set_delay(Duration::ZERO);
    assert_stored_once(&stack, "cam-dedup", 500, detections).await?;
    stack.stop().await
}

/// An INSERT slower than the ack wait (ClickHouse's answers held back by a proxy) must not
/// get its messages redelivered: the writer keeps them alive for as long as the batch is in
/// hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_insert_keeps_its_messages_alive_and_nothing_is_redelivered() -> anyhow::Result<()> {
    let (stack, proxy) = stack_with_slow_clickhouse(|c| {
        c.consumer.ack_wait_secs = 2;
        c.batch.max_rows = 2_000;
        // Most likely one batch of all of them; a second one waits for the writer (and is
        // kept alive meanwhile). The most the ack wait allows.
        c.batch.max_wait_ms = 1_000;
    })
    .await?;
    stack
        .clickhouse
        .query("SYSTEM STOP MERGES sightline.events")
        .await?;
    // Every answer of ClickHouse to ingest now takes 7 s, over three ack waits (and within
    // the request timeout, so the INSERT succeeds, slowly).
    proxy.set_delay(Duration::from_secs(7));
    let started = std::time::Instant::now();
    let events = known_events("edge-slow", "cam-slow", 2_000);
    let detections: usize = events.iter().map(|e| e.detections.len()).sum();
    stack.publish(events, Encoding::Bincode).await?;
    let stored = poll_until(
        Duration::from_secs(60),
        || {
            stack.clickhouse.query(
                "SELECT count(), uniqExact(event_id) FROM sightline.events \
                 WHERE camera_id = 'cam-slow' FORMAT TabSeparated",
            )
        },
        |stored| stored.ends_with("\t2000"),
    )
    .await?;
    assert_eq!(stored.unwrap_or_else(|last| last), "2000\t2000");
    // The rows are in at once; the answer, and so the acks, come 7 s later. Meanwhile
    // nothing may be redelivered: each event stored and received once.
    let metrics = assert_stored_once(&stack, "cam-slow", 2000, detections).await?;
    assert!(
        started.elapsed() > Duration::from_secs(7),
        "the insert was not slow"
    );
    assert!(
        sightline_tests::stack::metric(&metrics, "sightline_ingest_batch_keep_alives_total", "")
            >= 1.0,
        "{metrics}"
    );
    proxy.set_delay(Duration::ZERO);
    stack.stop().await
}

/// The durable consumer deleted under a running ingest (an operator, a lost server state):
/// ingest notices, declares it again from the last ack floor it read and goes on; nothing is
/// lost, nothing shows twice, and nothing stored is replayed (the hourly rollup would count
/// it again). A restarted ingest keeps the new durable's start.
/// What `sql` answers once it answers `want`, or after 10 s. The API shows an event once it
/// is in `events`; ClickHouse fills the views' tables (the rollup among them) right after,
/// so a view read straight after a delivery can still be short.
async fn settled(
    clickhouse: &sightline_tests::ClickHouseServer,
    sql: &str,
    want: &str,
) -> anyhow::Result<String> {
    let read = || clickhouse.query(sql);
    let (Ok(answer) | Err(answer)) =
        poll_until(Duration::from_secs(10), read, |r: &String| r == want).await?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_declared_again_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(|c| c.consumer.info_interval_secs = 1).await?;
    deliver(&stack, "edge-x", "cam-x", 10).await?;
    // Ingest reads the ack floor every second: wait until it has seen all ten acknowledged.
    let ack_floor = |floor: f64| {
        move |m: &str| {
            sightline_tests::stack::metric(m, "sightline_ingest_consumer_ack_floor", "") >= floor
        }
    };
    let read = Duration::from_secs(30);
    stack
        .wait_for_ingest_metrics("an ack floor of 10", read, ack_floor(10.0))
        .await?;
    delete_durable(&stack).await?;
    deliver(&stack, "edge-x", "cam-y", 10).await?;
    let all = stack.wait_for_events("edge=edge-x&limit=100", 20).await?;
    assert_eq!(all.len(), 20, "each event once through the query path");
    // A reading of the new durable past the old one's position: the one that would count
    // stored events as lost if readings of two durables were compared.
    let metrics = stack
        .wait_for_ingest_metrics("an ack floor of 20", read, ack_floor(20.0))
        .await?;
    assert!(
        sightline_tests::stack::metric(&metrics, "sightline_ingest_consumer_redeclared_total", "")
            >= 1.0,
        "{metrics}"
    );
    // Passing from the old durable to the new one is no loss.
    assert_eq!(
        sightline_tests::stack::metric(&metrics, "sightline_ingest_events_lost_total", ""),
        0.0,
        "{metrics}"
    );
    let info = stack.consumer_info().await?;
    assert_eq!(
        info.config.deliver_policy,
        DeliverPolicy::ByStartSequence { start_sequence: 11 },
        "the new durable starts past the ack floor"
    );
    // known_events gives 13 detections per 10 events; a replay of cam-x would make it 39.
    let rollup = "SELECT countMerge(detections) FROM sightline.detections_hourly \
                  WHERE camera_id IN ('cam-x', 'cam-y', 'cam-z')";
    // The API shows an event once it is in `events`; ClickHouse fills the views' tables
    // (the rollup among them) right after: wait for the rollup to catch up.
    assert_eq!(settled(&stack.clickhouse, rollup, "26").await?, "26");

    // A restart declares the existing durable without touching its deliver policy (the
    // server cannot change it in place).
    stack.crash_ingest().await;
    stack.start_ingest().await?;
    deliver(&stack, "edge-x", "cam-z", 10).await?;
    assert_eq!(settled(&stack.clickhouse, rollup, "39").await?, "39");
    assert_eq!(
        stack.consumer_info().await?.config.deliver_policy,
        DeliverPolicy::ByStartSequence { start_sequence: 11 },
        "the restart kept the durable's start"
    );
    let metrics = stack
        .wait_for_ingest_metrics("an ack floor of 30", read, ack_floor(30.0))
        .await?;
    assert_eq!(
        sightline_tests::stack::metric(&metrics, "sightline_ingest_events_lost_total", ""),
        0.0,
        "{metrics}"
    );
    stack.stop().await
}

/// Deletes ingest's durable consumer. nats-server 2.9 sometimes deletes a busy consumer yet
/// answers 500 (error code 10051, "directory not empty" while removing its files): try
/// again until it says deleted or not found.
async fn delete_durable(stack: &Stack) -> anyhow::Result<()> {
    let stream = stack.events_stream().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match stream
            .delete_consumer(&stack.ingest_config.consumer.durable_name)
            .await
        {
            Ok(_) => break,
            Err(error) if error.to_string().contains("not found") => break,
            Err(error)
                if error.to_string().contains("10051") && std::time::Instant::now() < deadline =>
            {
                tracing::warn!(%error, "deleting the consumer raced the server's own cleanup");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The operator's replay from a point in time (docs/operations.md): ingest stopped, its
/// durable replaced by one that starts an hour back. nats-server 2.9 refuses any update of
/// such a durable, so ingest must use it as it is; it replays, and nothing shows twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_made_by_hand_to_replay_from_a_time_is_used_as_it_is() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // No merges: the replayed copies stay visible as rows (reads collapse them).
    stack
        .clickhouse
        .query("SYSTEM STOP MERGES sightline.events")
        .await?;
    deliver(&stack, "edge-r", "cam-r", 10).await?;
    stack.crash_ingest().await;
    delete_durable(&stack).await?;
    stack
        .events_stream()
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(stack.ingest_config.consumer.durable_name.clone()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::now_utc() - time::Duration::hours(1),
            },
            filter_subject: sightline_shared::subjects::EVENTS_SUBJECTS.into(),
            ..Default::default()
        })
        .await?;
    stack.start_ingest().await?;
    deliver(&stack, "edge-r", "cam-s", 10).await?;
    let all = stack.wait_for_events("edge=edge-r&limit=100", 20).await?;
    assert_eq!(all.len(), 20, "each event once through the query path");
    let info = stack.consumer_info().await?;
    assert!(
        matches!(
            info.config.deliver_policy,
            DeliverPolicy::ByStartTime { .. }
        ),
        "{info:?}"
    );
    assert_eq!(
        info.config.ack_wait,
        Duration::from_secs(30),
        "used as made"
    );
    assert_eq!(
        info.delivered.consumer_sequence, 20,
        "the ten stored before were replayed"
    );
    let rows = stack
        .clickhouse
        .query("SELECT count() FROM sightline.events WHERE edge_id = 'edge-r'")
        .await?;
    assert_eq!(
        rows, "30",
        "the replay reached ClickHouse and collapses on reading"
    );
    stack.stop().await
}

/// Events the stream's limits remove before ingest received them (ClickHouse down for longer
/// than the stream holds them) are lost: each one is counted and logged, and nothing else is
/// lost. (Messages already delivered to ingest, held in its batches or its pull buffer, are
/// stored once ClickHouse is back even though the stream dropped them meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_stream_discards_before_delivery_are_counted_as_lost() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(|c| {
        c.stream.max_bytes = 256 * 1024;
        c.consumer.max_ack_pending = 100;
        c.consumer.fetch_batch = 100;
        c.batch.max_rows = 50;
        c.consumer.info_interval_secs = 1;
        // Long enough that nothing is redelivered while ClickHouse is down (a redelivery
        // in the interval the consumer passes the gap makes the count short).
        c.consumer.ack_wait_secs = 120;
    })
    .await?;
    stack.clickhouse.kill();
    let n = 3_000;
    let report = stack
        .publish(known_events("edge-l", "cam-l", n), Encoding::Bincode)
        .await?;
    assert_eq!(report.published as usize, n);
    async fn losses(stack: &Stack) -> anyhow::Result<(usize, usize)> {
        let metrics = stack.ingest_metrics().await?;
        let value = |name| sightline_tests::stack::metric(&metrics, name, "") as usize;
        Ok((
            value("sightline_ingest_events_lost_total"),
            value("sightline_ingest_events_unreachable"),
        ))
    }
    // While ClickHouse is down the consumer stands behind the removed events (shown as
    // unreachable), or has already passed over some (counted as lost).
    stack
        .wait_for_ingest_metrics("a loss", Duration::from_secs(15), |m| {
            let value = |name| sightline_tests::stack::metric(m, name, "");
            value("sightline_ingest_events_lost_total")
                + value("sightline_ingest_events_unreachable")
                > 0.0
        })
        .await?;

    // ClickHouse back: what ingest received and what the stream still holds is stored, and
    // with the losses that is every event published, none counted twice.
    stack.clickhouse.start_again()?;
    let stored = || async {
        let sql = "SELECT uniqExact(event_id) FROM sightline.events WHERE camera_id = 'cam-l'";
        anyhow::Ok(stack.clickhouse.query(sql).await?.parse::<usize>()?)
    };
    // (A query may fail while ClickHouse starts: that reads as nothing stored yet.)
    let accounted = || async { Ok(stored().await.unwrap_or(0) + losses(&stack).await?.0) };
    let _ = poll_until(Duration::from_secs(120), accounted, |&t| t >= n).await?;
    // A little longer: nothing more may arrive or be counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (stored, (lost, unreachable)) = (stored().await?, losses(&stack).await?);
    assert_eq!(
        stored + lost,
        n,
        "stored {stored} + lost {lost} = published"
    );
    assert!(lost > 0 && stored > 0, "stored {stored}, lost {lost}");
    assert_eq!(unreachable, 0, "the consumer passed the gap");
    let first = stack
        .events_stream()
        .await?
        .cached_info()
        .state
        .first_sequence;
    assert!(
        lost < first as usize,
        "only removed events are counted lost"
    );
    stack.stop().await
}

/// A test that fails through `?` drops its stack in its async body, ingest's own runtime
/// with it: that must shut everything down quietly, so the test shows its own error rather
/// than tokio's "Cannot drop a runtime in a context where blocking is not allowed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_dropped_without_stop_goes_quietly() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    drop(stack);
    Ok(())
}
