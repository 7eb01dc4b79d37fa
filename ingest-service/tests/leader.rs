//! Leader election against a fake Kubernetes API server: a real HTTP server on loopback
//! that stores Leases and enforces `resourceVersion` on replace, as the API server does.
//! Two candidates, one wins, the winner dies, the other takes over; racing candidates never
//! both win; a stopping leader hands over at once; a leader whose API calls stall stops
//! leading before anyone else can start; a holder whose clock is off is not overthrown
//! while it renews.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::{Value, json};
use sightline_ingest::leader::{Elector, LeaderMode, LeaderSettings};
use tokio_util::sync::CancellationToken;

type Shared = Arc<Mutex<HashMap<String, (u64, Value)>>>;
type Reply = (StatusCode, Json<Value>);

fn status(code: u16, reason: &str) -> Reply {
    (
        StatusCode::from_u16(code).expect("status code"),
        Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": reason, "reason": reason, "code": code}),
        ),
    )
}

fn with_version(mut lease: Value, version: u64) -> Value {
    lease["metadata"]["resourceVersion"] = json!(version.to_string());
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease
}

async fn get_lease(State(s): State<Shared>, Path((_, name)): Path<(String, String)>) -> Reply {
    match s.lock().expect("lock").get(&name) {
        Some((v, lease)) => (StatusCode::OK, Json(with_version(lease.clone(), *v))),
        None => status(404, "NotFound"),
    }
}

async fn create_lease(
    State(s): State<Shared>,
    Path(_): Path<String>,
    Json(lease): Json<Value>,
) -> Reply {
    let mut leases = s.lock().expect("lock");
    let name = lease["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if leases.contains_key(&name) {
        return status(409, "AlreadyExists");
    }
    leases.insert(name, (1, lease.clone()));
    (StatusCode::CREATED, Json(with_version(lease, 1)))
}

async fn replace_lease(
    State(s): State<Shared>,
    Path((_, name)): Path<(String, String)>,
    Json(lease): Json<Value>,
) -> Reply {
    let mut leases = s.lock().expect("lock");
    let Some((current, _)) = leases.get(&name).cloned() else {
        return status(404, "NotFound");
    };
    if lease["metadata"]["resourceVersion"].as_str() != Some(current.to_string().as_str()) {
        return status(409, "Conflict");
    }
    leases.insert(name, (current + 1, lease.clone()));
    (StatusCode::OK, Json(with_version(lease, current + 1)))
}

async fn fake_api() -> (kube::Client, Shared) {
    let state: Shared = Arc::default();
    let client = front(state.clone(), Arc::default()).await;
    (client, state)
}

/// A client of the fake API server's `state` through a front of its own, which stops
/// answering (every call hangs, as with a stalled API server or a cut network) while
/// `stalled` is set.
async fn front(state: Shared, stalled: Arc<AtomicBool>) -> kube::Client {
    let app = axum::Router::new()
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
            post(create_lease),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(get_lease).put(replace_lease),
        )
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let stalled = stalled.clone();
                async move {
                    if stalled.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    next.run(request).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(url.parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

fn candidate(client: &kube::Client, identity: &str) -> Elector {
    let settings = LeaderSettings {
        mode: LeaderMode::Kubernetes,
        lease_name: "sightline-ingest".into(),
        lease_duration_secs: 2,
        renew_interval_secs: 1,
    };
    let api: Api<Lease> = Api::namespaced(client.clone(), "sightline");
    Elector::new(api, &settings, identity)
}

fn lease(state: &Shared) -> Value {
    state
        .lock()
        .expect("lock")
        .get("sightline-ingest")
        .map(|l| l.1.clone())
        .unwrap_or_default()
}

fn holder(state: &Shared) -> Option<String> {
    lease(state)["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn one_wins_and_the_other_takes_over_when_the_winner_dies() {
    let (client, state) = fake_api().await;
    let (a, b) = (
        candidate(&client, "ingest-a"),
        candidate(&client, "ingest-b"),
    );
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a creates the Lease"
    );
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b sees it held");
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&state).as_deref(), Some("ingest-a"));

    // a dies: it stops renewing. Until the Lease expires b still waits.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!b.try_acquire_or_renew().await.unwrap(), "not expired yet");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "b takes over the expired Lease"
    );
    assert_eq!(holder(&state).as_deref(), Some("ingest-b"));
    // a comes back: b holds a fresh Lease, so a follows.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert_eq!(lease(&state)["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn candidates_racing_for_an_expired_lease_never_both_win() {
    let (client, _state) = fake_api().await;
    assert!(
        candidate(&client, "gone")
            .try_acquire_or_renew()
            .await
            .unwrap()
    );
    for round in 0..3 {
        let contenders: Vec<Elector> = (0..4)
            .map(|i| candidate(&client, &format!("c{round}-{i}")))
            .collect();
        // A candidate judges expiry by its own clock from when it first saw the record: each
        // looks once, then they race once the 2 s have passed for all of them.
        for contender in &contenders {
            assert!(!contender.try_acquire_or_renew().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let results =
            futures::future::join_all(contenders.iter().map(Elector::try_acquire_or_renew)).await;
        let winners = results.iter().filter(|r| matches!(r, Ok(true))).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
    }
}

#[tokio::test]
async fn a_stopping_leader_hands_over_at_once() {
    let (client, state) = fake_api().await;
    let stop_a = CancellationToken::new();
    let mut a = candidate(&client, "ingest-a").spawn(stop_a.clone());
    while !a.is_leader() {
        assert!(a.changed().await, "the elector stopped");
    }
    let stop_b = CancellationToken::new();
    let b = candidate(&client, "ingest-b").spawn(stop_b.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.is_leader() && !b.is_leader(), "one leader at a time");
    stop_a.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.is_leader());
    assert_eq!(holder(&state), None, "released on shutdown");
    // b picks it up on its next round (1 s), before the old Lease's 2 s would have expired.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(b.is_leader());
    assert_eq!(holder(&state).as_deref(), Some("ingest-b"));
    stop_b.cancel();
}

/// Start-up schema work runs under its Lease one replica at a time: three replicas starting
/// together never overlap, each runs once, and the Lease is free afterwards. A replica that
/// died holding it (no release) delays the next only until the Lease expires.
#[tokio::test]
async fn schema_work_runs_one_replica_at_a_time() {
    let (client, state) = fake_api().await;
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let job = |name: &'static str| {
        let (inside, most) = (inside.clone(), most.clone());
        async move {
            let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            name
        }
    };
    let (a, b, c) = (
        candidate(&client, "ingest-a"),
        candidate(&client, "ingest-b"),
        candidate(&client, "ingest-c"),
    );
    tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join3(a.hold(job("a")), b.hold(job("b")), c.hold(job("c"))),
    )
    .await
    .expect("every replica got its turn");
    assert_eq!(
        most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never two at once"
    );
    assert_eq!(holder(&state), None, "released after");

    // A replica dies holding the Lease: the next one waits for the 2 s expiry, no longer.
    assert!(a.try_acquire_or_renew().await.unwrap());
    let started = std::time::Instant::now();
    assert_eq!(b.hold(job("b")).await, "b");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

/// Watches two leaderships until `until`, every 10 ms: whether both ever led at once, and
/// who leads at the end.
async fn watch_pair(
    a: &sightline_ingest::leader::Leadership,
    b: &sightline_ingest::leader::Leadership,
    until: Duration,
) -> (bool, bool, bool) {
    let end = std::time::Instant::now() + until;
    let mut both = false;
    while std::time::Instant::now() < end {
        both |= a.is_leader() && b.is_leader();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (both, a.is_leader(), b.is_leader())
}

#[tokio::test]
async fn a_leader_whose_api_calls_stall_stops_leading_before_another_can_start() {
    let (client_b, state) = fake_api().await;
    let stalled = Arc::new(AtomicBool::new(false));
    let client_a = front(state.clone(), stalled.clone()).await;
    let stop = CancellationToken::new();
    let mut a = candidate(&client_a, "ingest-a").spawn(stop.clone());
    while !a.is_leader() {
        assert!(a.changed().await, "the elector stopped");
    }
    let b = candidate(&client_b, "ingest-b").spawn(stop.clone());
    // a's API calls hang from now on: its renewals never arrive, the Lease expires (2 s),
    // and b takes over. a must have stopped leading by then, by its own clock.
    stalled.store(true, Ordering::SeqCst);
    let (both, a_leads, b_leads) = watch_pair(&a, &b, Duration::from_secs(6)).await;
    assert!(!both, "two leaders at once");
    assert!(!a_leads && b_leads, "b took over: a {a_leads}, b {b_leads}");
    assert_eq!(holder(&state).as_deref(), Some("ingest-b"));
    stop.cancel();
}

#[tokio::test]
async fn a_holder_whose_clock_is_off_keeps_the_lease_while_it_renews() {
    let (client, state) = fake_api().await;
    // A holder whose clock is an hour slow renews every 500 ms: its renewTime always looks
    // expired to a candidate with a correct clock, but the record keeps changing.
    let renewing = CancellationToken::new();
    tokio::spawn({
        let (state, renewing) = (state.clone(), renewing.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while !renewing.is_cancelled() {
                tick.tick().await;
                let slow = k8s_openapi::jiff::Timestamp::now()
                    - k8s_openapi::jiff::SignedDuration::from_secs(3600);
                let mut leases = state.lock().expect("lock");
                let version = leases.get("sightline-ingest").map_or(1, |l| l.0 + 1);
                let lease = json!({"metadata": {"name": "sightline-ingest"},
                    "spec": {"holderIdentity": "skewed", "leaseDurationSeconds": 2,
                             "renewTime": slow.to_string(), "acquireTime": slow.to_string()}});
                leases.insert("sightline-ingest".into(), (version, lease));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = CancellationToken::new();
    let b = candidate(&client, "ingest-b").spawn(stop.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!b.is_leader(), "b overthrew a holder that renews");
    assert_eq!(holder(&state).as_deref(), Some("skewed"));
    // Once the holder stops renewing, b takes over after the Lease's duration by b's clock.
    renewing.cancel();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(b.is_leader(), "b took over the abandoned Lease");
    stop.cancel();
}
