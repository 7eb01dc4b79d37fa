//! `GET /v1/edges`: the fleet as its heartbeats show it, online and offline.

use std::time::Duration;

use sightline_shared::Timestamp;
use sightline_shared::heartbeat::{CONTENT_TYPE, CameraHeartbeat, Heartbeat, HeartbeatV1};
use sightline_tests::Stack;
use sightline_tests::fixtures::poll_until;

/// Two edges as their heartbeats show them: `fleet-a` reporting now (every 10 s, backlog 3,
/// cameras `gate` running and `yard` retrying, v2 fields set) and `fleet-b` last heard from
/// an hour ago (backlog 42). The console's browser test shows the same fleet.
pub(crate) async fn seed_fleet(stack: &Stack) -> anyhow::Result<()> {
    let now = sightline_runtime::now();
    // An edge that just reported, as an agent does.
    let mut heartbeat = Heartbeat::from(HeartbeatV1 {
        edge_id: "fleet-a".into(),
        sent_at: now,
        agent_version: "0.1.0".into(),
        uptime_secs: 600,
        cameras: 2,
        fps: 9.0,
        events_created: 100,
        events_sent: 97,
        events_dropped: 1,
        backlog: 3,
        oldest_unsent_at: Some(Timestamp::from_millis(now.as_millis() - 4_000)),
        storage_used_bytes: 1_000_000_000,
        storage_limit_bytes: 4_000_000_000,
        cpu_percent: 12.5,
        rss_bytes: 80_000_000,
    });
    heartbeat.schema_version = 2;
    heartbeat.interval_secs = 10;
    heartbeat.storage_free_bytes = Some(9_000_000_000);
    heartbeat.clock_offset_ms = Some(-35);
    heartbeat.uploads_pending = 4;
    heartbeat.uploads_sent = 20;
    heartbeat.upload_bytes = 1_200_000;
    heartbeat.camera_states = ["gate", "yard"]
        .map(|camera| CameraHeartbeat {
            camera_id: camera.into(),
            state: if camera == "gate" {
                "running"
            } else {
                "retrying"
            }
            .into(),
            fps: 4.5,
            events_created: 50,
            errors: u64::from(camera == "yard"),
        })
        .to_vec();
    let js = stack.jetstream().await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(sightline_shared::codec::CONTENT_TYPE_HEADER, CONTENT_TYPE);
    js.publish_with_headers(
        sightline_shared::subjects::heartbeat_subject("fleet-a"),
        headers,
        heartbeat.encode().into(),
    )
    .await?
    .await?;
    // An edge last heard from an hour ago, stored then.
    stack
        .clickhouse
        .query(
            "INSERT INTO sightline.edge_heartbeats (edge_id, sent_at, sent_at_ms, agent_version, \
             interval_secs, backlog, received_at) VALUES ('fleet-b', now() - 3600, \
             toInt64(now() - 3600) * 1000, '0.0.9', 10, 42, now() - 3600)",
        )
        .await?;

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_shows_every_edge_online_or_offline_offline_first() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    seed_fleet(&stack).await?;
    let answer = poll_until(
        Duration::from_secs(30),
        || async { stack.get("/v1/edges").await },
        |(_, body)| body["count"] == 2,
    )
    .await?;
    let (status, body) = answer.map_err(|(s, b)| anyhow::anyhow!("{s}: {b}"))?;
    assert_eq!(status, 200);
    let edges = body["edges"].as_array().unwrap();
    // Offline first.
    assert_eq!(edges[0]["edge_id"], "fleet-b");
    assert_eq!(edges[0]["status"], "offline");
    assert!(edges[0]["seconds_since_heartbeat"].as_i64().unwrap() >= 3590);
    assert_eq!(edges[0]["backlog"]["events"], 42);
    let a = &edges[1];
    assert_eq!(
        (&a["edge_id"], &a["status"]),
        (&"fleet-a".into(), &"online".into())
    );
    assert_eq!(a["interval_secs"], 10);
    assert_eq!(a["agent_version"], "0.1.0");
    assert_eq!(a["backlog"]["events"], 3);
    let age = a["backlog"]["oldest_unsent_age_secs"].as_f64().unwrap();
    assert!((4.0..40.0).contains(&age), "{age}");
    assert_eq!(a["storage"]["used_percent"], 25.0);
    assert_eq!(a["storage"]["free_bytes"], 9_000_000_000u64);
    assert_eq!(a["clock_offset_ms"], -35);
    assert_eq!(a["uploads"]["pending"], 4);
    assert_eq!(a["uploads"]["bytes"], 1_200_000);
    assert_eq!(a["cameras"][1]["camera_id"], "yard");
    assert_eq!(a["cameras"][1]["state"], "retrying");
    assert_eq!(a["cameras"][1]["errors"], 1);

    // Filters and orders.
    let (_, online) = stack.get("/v1/edges?status=online").await?;
    assert_eq!(online["count"], 1);
    assert_eq!(online["edges"][0]["edge_id"], "fleet-a");
    let (_, by_backlog) = stack.get("/v1/edges?sort=backlog").await?;
    assert_eq!(by_backlog["edges"][0]["edge_id"], "fleet-b");
    let (_, by_id) = stack.get("/v1/edges?sort=edge").await?;
    assert_eq!(by_id["edges"][0]["edge_id"], "fleet-a");

    // One edge; unknown and bad ids; bad parameters.
    let (status, one) = stack.get("/v1/edges/fleet-a").await?;
    assert_eq!(status, 200);
    // The same edge as in the list, but for the ages, which a second boundary between the
    // two requests may move (CI saw 4 s in the list and 5 s here).
    let ages = |edge: &serde_json::Value| {
        let mut edge = edge.clone();
        let since = edge["seconds_since_heartbeat"].take().as_f64().unwrap();
        let backlog = edge["backlog"]["oldest_unsent_age_secs"]
            .take()
            .as_f64()
            .unwrap();
        (edge, since, backlog)
    };
    let ((one, one_since, one_backlog), (listed, since, backlog)) = (ages(&one), ages(a));
    assert_eq!(one, listed);
    assert!(
        (0.0..=2.0).contains(&(one_since - since)),
        "{since} then {one_since}"
    );
    assert!(
        (0.0..=2.0).contains(&(one_backlog - backlog)),
        "{backlog} then {one_backlog}"
    );
    for (path, want, parameter) in [
        ("/v1/edges/nobody", 404, None),
        ("/v1/edges/no%20body", 400, Some("id")),
        ("/v1/edges?status=asleep", 400, Some("status")),
        ("/v1/edges/fleet-a?x=1", 400, Some("x")),
    ] {
        let (status, body) = stack.get(path).await?;
        assert_eq!(status, want, "{path}: {body}");
        if let Some(parameter) = parameter {
            assert_eq!(body["error"]["parameter"], parameter, "{path}: {body}");
        }
    }
    stack.stop().await
}
