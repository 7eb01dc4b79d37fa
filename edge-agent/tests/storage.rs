//! Storage limits against real DuckDB files and real day folders: warnings, rotation order,
//! protection of today, of recent days and of unsent events, the full-disk policies, and
//! that deleting gives the bytes back.

use std::path::Path;
use std::time::Duration;

use sightline_edge_agent::buffer::Buffer;
use sightline_edge_agent::buffer::worker::{self, AppendError, BUFFER_FILE, Settings};
use sightline_edge_agent::config::SyntheticConfig;
use sightline_edge_agent::daylog::{self, DayLogs, day_of};
use sightline_edge_agent::metrics::Metrics;
use sightline_edge_agent::storage::{Budget, FreeSpace, FullPolicy, dir_bytes};
use sightline_shared::{DetectionEvent, EventId, Timestamp};
use tokio_util::sync::CancellationToken;

const DAY: i64 = 86_400_000;
const MB: u64 = 1_000_000;

fn now_ms() -> i64 {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc()).as_millis()
}

fn event(i: u64, at_ms: i64) -> DetectionEvent {
    let mut e = sightline_edge_agent::synthetic::make_event(
        "edge-1",
        "cam-1",
        &SyntheticConfig::default(),
        i,
        &mut 1,
        &mut rand::rng(),
    );
    e.captured_at = Timestamp::from_millis(at_ms);
    e.event_id = EventId::new_v7(e.captured_at);
    e
}

/// Fills `days_ago` with `rows` events (logs included) and a snapshot file of `snapshot`
/// bytes; marks them sent if `sent`.
fn fill_day(dir: &Path, buffer: &mut Buffer, days_ago: i64, rows: u64, snapshot: u64, sent: bool) {
    let at = now_ms() - days_ago * DAY;
    let events: Vec<_> = (0..rows).map(|i| event(i, at)).collect();
    let seqs = buffer.append(&events, now_ms()).expect("append");
    let mut logs = DayLogs::new(dir);
    for e in &events {
        logs.write(e).expect("day log");
    }
    let snapshots = daylog::day_dir(dir, day_of(at)).join("snapshots");
    std::fs::create_dir_all(&snapshots).expect("snapshot dir");
    std::fs::write(snapshots.join("a.jpg"), vec![0u8; snapshot as usize]).expect("snapshot");
    if sent {
        buffer.mark_sent(&seqs).expect("mark sent");
    }
}

fn day_exists(dir: &Path, days_ago: i64) -> bool {
    daylog::day_dir(dir, day_of(now_ms() - days_ago * DAY)).exists()
}

#[test]
fn rotation_deletes_oldest_days_first_and_gives_the_space_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut buffer, _) = Buffer::open(&dir.join(BUFFER_FILE)).unwrap();
    // Six days: 5..2 days ago published, yesterday partly unpublished, today unpublished.
    for days_ago in (2..=5).rev() {
        fill_day(dir, &mut buffer, days_ago, 5_000, 2 * MB, true);
    }
    fill_day(dir, &mut buffer, 1, 5_000, 2 * MB, false);
    fill_day(dir, &mut buffer, 0, 5_000, 2 * MB, false);
    buffer.checkpoint().unwrap();
    let used = dir_bytes(dir);
    let file_before = buffer.file_bytes();
    // A budget that puts usage at about 95 %.
    let budget = Budget {
        limit_bytes: used * 100 / 95,
        min_retention_days: 1,
        policy: FullPolicy::RejectNew,
        min_free_bytes: 0,
        free_space: FreeSpace::Filesystem,
    };
    let rotation = budget
        .rotate(dir, &mut buffer, &mut DayLogs::new(dir), now_ms(), false)
        .unwrap();
    assert!(rotation.before.percent() >= 90.0, "{rotation:?}");
    assert!(rotation.after.percent() < 80.0, "{rotation:?}");
    // Oldest first, and only as many as needed.
    let expected: Vec<String> = (2..=5)
        .rev()
        .map(|d| daylog::day_name(day_of(now_ms() - d * DAY)))
        .take(rotation.days.len())
        .collect();
    assert_eq!(rotation.days, expected);
    assert!(!rotation.days.is_empty());
    assert!(!day_exists(dir, 5));
    assert!(day_exists(dir, 0) && day_exists(dir, 1));
    // The bytes really went back: the directory and the buffer file shrank.
    assert_eq!(rotation.after.used_bytes, dir_bytes(dir));
    assert!(
        buffer.file_bytes() < file_before,
        "{} -> {}",
        file_before,
        buffer.file_bytes()
    );
    // Unpublished events were all kept.
    assert_eq!(buffer.stats().unwrap().unsent, 10_000);

    // Below 90 % nothing happens; forced, the oldest eligible day goes, but never today
    // and never yesterday's unsent rows.
    let again = budget
        .rotate(dir, &mut buffer, &mut DayLogs::new(dir), now_ms(), false)
        .unwrap();
    assert!(again.days.is_empty());
    let mut forced = budget.clone();
    forced.min_retention_days = 0;
    for _ in 0..10 {
        forced
            .rotate(dir, &mut buffer, &mut DayLogs::new(dir), now_ms(), true)
            .unwrap();
    }
    assert!(day_exists(dir, 0));
    assert!(!day_exists(dir, 1), "yesterday's folder may go");
    let stats = buffer.stats().unwrap();
    assert_eq!((stats.rows, stats.unsent), (10_000, 10_000));
}

/// A buffer file moved aside as unreadable is rotated with the day it was moved aside on:
/// old ones go (with their WAL) when the budget needs the room, recent ones stay.
#[test]
fn rotation_deletes_old_unreadable_buffer_copies_and_keeps_recent_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut buffer, _) = Buffer::open(&dir.join(BUFFER_FILE)).unwrap();
    fill_day(dir, &mut buffer, 0, 1_000, MB, false);
    buffer.checkpoint().unwrap();
    let copy = |days_ago: i64| {
        let secs = (now_ms() - days_ago * DAY) / 1000;
        dir.join(format!("{BUFFER_FILE}.corrupt-{secs}"))
    };
    // Ten days old, and two days old (inside min_retention_days below).
    let (old, recent) = (copy(10), copy(2));
    let old_wal = dir.join(format!(
        "{}.wal",
        old.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&old, vec![7u8; 8 * MB as usize]).unwrap();
    std::fs::write(&old_wal, vec![7u8; MB as usize]).unwrap();
    std::fs::write(&recent, vec![7u8; MB as usize]).unwrap();
    let used = dir_bytes(dir);
    let budget = Budget {
        limit_bytes: used * 100 / 95,
        min_retention_days: 3,
        policy: FullPolicy::RejectNew,
        min_free_bytes: 0,
        free_space: FreeSpace::Filesystem,
    };
    let rotation = budget
        .rotate(dir, &mut buffer, &mut DayLogs::new(dir), now_ms(), false)
        .unwrap();
    assert_eq!(
        rotation.days,
        [daylog::day_name(day_of(now_ms() - 10 * DAY))],
        "{rotation:?}"
    );
    assert!(
        !old.exists() && !old_wal.exists(),
        "the old copy and its WAL are gone"
    );
    assert!(
        recent.exists(),
        "a copy inside min_retention_days is kept for the operator"
    );
    // The 9 MB of the old copy came back (give or take the buffer's own bookkeeping).
    let freed = rotation.before.used_bytes - rotation.after.used_bytes;
    assert!(freed > 9 * MB - 64 * 1024, "{rotation:?}");
    assert_eq!(buffer.stats().unwrap().unsent, 1_000);
    // Even rotations forced past the budget keep it while it is inside min_retention_days.
    for _ in 0..5 {
        budget
            .rotate(dir, &mut buffer, &mut DayLogs::new(dir), now_ms(), true)
            .unwrap();
    }
    assert!(
        recent.exists(),
        "min_retention_days protects the recent copy"
    );
}

fn settings(dir: &Path, limit_bytes: u64, policy: FullPolicy, daily_logs: bool) -> Settings {
    Settings {
        data_dir: dir.to_owned(),
        budget: Budget {
            limit_bytes,
            min_retention_days: 0,
            policy,
            min_free_bytes: 0,
            free_space: FreeSpace::Filesystem,
        },
        check_interval: Duration::from_millis(50),
        daily_logs,
        group_window: Duration::ZERO,
    }
}

/// Appends `max` events, 256 at a time concurrently (so commits group as they do with many
/// cameras), stopping after a round with refusals; returns (stored, refusals).
async fn fill(handle: &worker::BufferHandle, max: u64) -> (u64, Vec<AppendError>) {
    let mut stored = 0;
    let mut refused = Vec::new();
    for start in (0..max).step_by(256) {
        let appends = (start..(start + 256).min(max)).map(|i| handle.append(event(i, now_ms())));
        for result in futures::future::join_all(appends).await {
            match result {
                Ok(_) => stored += 1,
                Err(error) => refused.push(error),
            }
        }
        if !refused.is_empty() {
            break;
        }
        // Let the storage check run between rounds.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (stored, refused)
}

#[tokio::test]
async fn reject_new_keeps_what_is_stored_and_counts_what_it_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let (handle, thread) = worker::start(
        settings(tmp.path(), 6 * MB, FullPolicy::RejectNew, true),
        metrics.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    let (stored, refused) = fill(&handle, 200_000).await;
    assert!(!refused.is_empty(), "the budget was never reached");
    assert!(
        refused.iter().all(|e| *e == AppendError::Full),
        "{refused:?}"
    );
    let status = handle.status().await.unwrap();
    assert!(status.full);
    assert_eq!(status.stats.unsent, stored, "nothing stored was lost");
    assert!(metrics.storage_warnings.get() >= 1);
    handle.close().await;
    thread.join().unwrap();
}

#[tokio::test]
async fn drop_oldest_makes_room_and_counts_each_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let (handle, thread) = worker::start(
        // Without day logs, so the buffer is what fills the budget (today's logs are never
        // rotated, and only unsent events can be dropped).
        settings(tmp.path(), 3 * MB, FullPolicy::DropOldest, false),
        metrics.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    let (stored, refused) = fill(&handle, 40_000).await;
    assert!(refused.is_empty(), "{refused:?}");
    let status = handle.status().await.unwrap();
    let dropped = metrics.dropped_total();
    assert!(dropped > 0, "the budget was never reached");
    assert_eq!(
        status.stats.unsent + dropped,
        stored,
        "every event kept or counted"
    );
    assert!(
        status.storage.used_bytes <= 3 * MB * 103 / 100,
        "{status:?}"
    );
    // The newest events are the ones kept.
    let recent = handle.recent(1).await.unwrap();
    assert_eq!(recent[0].event.frame_seq, stored - 1);
    handle.close().await;
    thread.join().unwrap();
}

#[tokio::test]
async fn stop_policy_asks_the_agent_to_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (handle, thread) = worker::start(
        settings(tmp.path(), 6 * MB, FullPolicy::Stop, true),
        Metrics::default(),
        stop.clone(),
    )
    .unwrap();
    let (_, refused) = fill(&handle, 200_000).await;
    assert!(stop.is_cancelled());
    assert!(
        refused.iter().all(|e| *e == AppendError::Stopped),
        "{refused:?}"
    );
    handle.close().await;
    thread.join().unwrap();
}

/// A budget that never fills, with a disk reserve and an injected free-space figure.
fn disk_settings(dir: &Path, min_free_bytes: u64, free: &FreeSpace) -> Settings {
    let mut settings = settings(dir, 1_000 * 1_000 * MB, FullPolicy::RejectNew, true);
    settings.budget.min_free_bytes = min_free_bytes;
    settings.budget.free_space = free.clone();
    settings
}

/// Something else fills the filesystem while the budget is far from used: old days are
/// rotated away to give room back.
#[test]
fn a_disk_low_on_space_rotates_old_days_though_the_budget_is_not_used_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut buffer, _) = Buffer::open(&dir.join(BUFFER_FILE)).unwrap();
    fill_day(dir, &mut buffer, 10, 1_000, MB, true);
    fill_day(dir, &mut buffer, 0, 1_000, MB, false);
    let free = FreeSpace::injected(500 * MB);
    let budget = disk_settings(dir, 100 * MB, &free).budget;
    let rotation = budget
        .rotate(dir, &mut buffer, &mut DayLogs::new(dir), now_ms(), false)
        .unwrap();
    assert!(rotation.days.is_empty(), "the disk has room: {rotation:?}");
    free.set(50 * MB);
    let rotation = budget
        .rotate(dir, &mut buffer, &mut DayLogs::new(dir), now_ms(), false)
        .unwrap();
    assert_eq!(
        rotation.days,
        [daylog::day_name(day_of(now_ms() - 10 * DAY))],
        "{rotation:?}"
    );
    assert!(rotation.before.disk_low(), "{rotation:?}");
    assert!(day_exists(dir, 0), "today is kept");
    assert_eq!(
        buffer.stats().unwrap().unsent,
        1_000,
        "unsent events are kept"
    );
}

/// Polls the worker's status until `check` holds (the storage check runs every 50 ms).
async fn status_until(
    handle: &worker::BufferHandle,
    check: impl Fn(&worker::BufferStatus) -> bool,
) -> worker::BufferStatus {
    for _ in 0..200 {
        let status = handle.status().await.expect("the buffer answers");
        if check(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the storage check never got there");
}

/// Below the reserve new events are refused (counted, nothing stored is lost), and taken
/// again once the disk has room.
#[tokio::test]
async fn a_disk_below_its_reserve_refuses_new_events_until_it_has_room() {
    let tmp = tempfile::tempdir().unwrap();
    let free = FreeSpace::injected(1_000 * MB);
    let (handle, thread) = worker::start(
        disk_settings(tmp.path(), 100 * MB, &free),
        Metrics::default(),
        CancellationToken::new(),
    )
    .unwrap();
    let (stored, refused) = fill(&handle, 1_000).await;
    assert_eq!((stored, refused.len()), (1_000, 0));
    free.set(10 * MB);
    let status = status_until(&handle, |s| s.full).await;
    assert_eq!(status.storage.fs_free_bytes, Some(10 * MB));
    assert!(status.storage.disk_low());
    let refused = handle.append(event(5_000, now_ms())).await.unwrap_err();
    assert_eq!(refused, AppendError::Full);
    free.set(1_000 * MB);
    status_until(&handle, |s| !s.full).await;
    handle.append(event(5_001, now_ms())).await.unwrap();
    assert_eq!(handle.status().await.unwrap().stats.unsent, 1_001);
    handle.close().await;
    thread.join().unwrap();
}

/// A tmpfs mounted for the test and unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` where this machine does not let the test mount one (not root, no tmpfs).
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// The same on a real small filesystem that another file fills.
#[tokio::test]
async fn a_real_small_filesystem_filled_by_another_file_refuses_new_events() {
    let Some(fs) = Tmpfs::mount(48 * MB) else {
        eprintln!("SKIPPED: this machine does not let the test mount a tmpfs");
        return;
    };
    let data = fs.0.path().join("data");
    let mut settings = settings(&data, 1_000 * 1_000 * MB, FullPolicy::RejectNew, true);
    settings.budget.min_free_bytes = 8 * MB;
    let (handle, thread) =
        worker::start(settings, Metrics::default(), CancellationToken::new()).unwrap();
    let (stored, refused) = fill(&handle, 500).await;
    assert_eq!((stored, refused.len()), (500, 0));
    // Another program fills the disk down to 4 MB free.
    let filler = fs.0.path().join("filler");
    let free = sightline_edge_agent::storage::fs_free_bytes(fs.0.path()).unwrap();
    std::fs::write(&filler, vec![1u8; (free - 4 * MB) as usize]).unwrap();
    let status = status_until(&handle, |s| s.full).await;
    assert!(status.storage.fs_free_bytes.unwrap() < 8 * MB, "{status:?}");
    assert_eq!(
        handle.append(event(9_000, now_ms())).await.unwrap_err(),
        AppendError::Full
    );
    std::fs::remove_file(&filler).unwrap();
    status_until(&handle, |s| !s.full).await;
    handle.append(event(9_001, now_ms())).await.unwrap();
    assert_eq!(handle.status().await.unwrap().stats.unsent, 501);
    handle.close().await;
    thread.join().unwrap();
}

/// The counters add up (docs/edge.md): per run, `backlog_at_start + created = published +
/// dropped + quarantined + buffer_unsent`, through a backlog left by the previous run with
/// an unreadable row in it, appends (and refusals, outside the sum), publishing with acks,
/// and `drop_oldest` deleting unsent events when the budget fills.
#[tokio::test]
async fn the_counters_add_up_over_every_path() {
    use sightline_edge_agent::outbox::Outbox as _;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(BUFFER_FILE);
    // The previous run left 300 unsent events, one of them damaged on disk.
    {
        let (mut buffer, _) = Buffer::open(&path).unwrap();
        let old: Vec<_> = (0..300).map(|i| event(i, now_ms())).collect();
        buffer.append(&old, now_ms()).unwrap();
    }
    {
        let conn = duckdb::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE outbox SET payload = '\\x00\\x01'::BLOB WHERE seq = 150",
            [],
        )
        .unwrap();
    }
    let metrics = Metrics::default();
    let (handle, thread) = worker::start(
        settings(tmp.path(), 3 * MB, FullPolicy::DropOldest, false),
        metrics.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(metrics.backlog_at_start.get(), 300);
    // What a camera does with each new event, and what the publisher does with each ack.
    let append = async |i: u64| match handle.append(event(i, now_ms())).await {
        Ok(_) => metrics.events_created.inc(),
        Err(error) => {
            metrics.refused(error.drop_reason(), 1);
            0
        }
    };
    let closed = CancellationToken::new();
    let mut outbox = handle.outbox(256, closed.clone());
    let rounds = 20;
    for round in 0..rounds {
        for i in 0..1_000 {
            append(1_000 + round * 1_000 + i).await;
        }
        // An event that breaks the contract: refused, never created.
        let mut bad = event(0, now_ms());
        bad.camera_id = "not an id".into();
        if let Err(error) = handle.append(bad).await {
            metrics.refused(error.drop_reason(), 1);
        }
        // The publisher gets through part of what is waiting.
        for _ in 0..300 {
            let next = tokio::time::timeout(Duration::from_millis(200), outbox.next());
            let Ok(Some(row)) = next.await else {
                break;
            };
            outbox.confirm(row.seq).await;
            metrics.events_published.inc();
        }
    }
    outbox.flush();
    let status = status_until(&handle, |_| true).await;
    let (start, created) = (
        metrics.backlog_at_start.get() as u64,
        metrics.events_created.get(),
    );
    let (published, dropped) = (metrics.events_published.get(), metrics.dropped_total());
    let quarantined = metrics.events_quarantined.get();
    assert!(dropped > 0, "the budget never filled");
    assert_eq!(quarantined, 1);
    assert_eq!(metrics.refused_total(), rounds);
    assert_eq!(
        start + created,
        published + dropped + quarantined + status.stats.unsent,
        "start {start} + created {created} != published {published} + dropped {dropped} + quarantined {quarantined} + unsent {}",
        status.stats.unsent
    );
    closed.cancel();
    handle.close().await;
    thread.join().unwrap();
}

/// A disk filled by other files beyond what the whole buffer holds: drop_oldest cannot give
/// it its reserve back, so it deletes nothing and new events are refused instead.
#[tokio::test]
async fn drop_oldest_does_not_empty_the_buffer_for_a_disk_others_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let free = FreeSpace::injected(1_000 * MB);
    let mut settings = disk_settings(tmp.path(), 100 * MB, &free);
    settings.budget.policy = FullPolicy::DropOldest;
    let metrics = Metrics::default();
    let (handle, thread) =
        worker::start(settings, metrics.clone(), CancellationToken::new()).unwrap();
    let (stored, _) = fill(&handle, 1_000).await;
    assert_eq!(stored, 1_000);
    // 190 MB short of twice the reserve: far more than the buffer's few hundred KB.
    free.set(10 * MB);
    status_until(&handle, |s| s.full).await;
    assert_eq!(
        metrics.dropped_total(),
        0,
        "nothing the buffer holds was deleted"
    );
    assert_eq!(handle.status().await.unwrap().stats.unsent, 1_000);
    assert_eq!(
        handle.append(event(5_000, now_ms())).await.unwrap_err(),
        AppendError::Full
    );
    handle.close().await;
    thread.join().unwrap();
}

/// Group commit: appends submitted within the window share one transaction, and none
/// reports stored before it commits; with no window, appends made one after the other
/// commit one by one.
#[tokio::test]
async fn appends_within_the_group_window_share_one_commit() {
    use sightline_edge_agent::outbox::Message;
    let tmp = tempfile::tempdir().unwrap();
    for (window, expected) in [(Duration::from_secs(5), 1), (Duration::ZERO, 20)] {
        let dir = tmp.path().join(format!("w{}", window.as_millis()));
        let mut settings = settings(&dir, 1_000 * MB, FullPolicy::RejectNew, false);
        settings.group_window = window;
        let metrics = Metrics::default();
        let (handle, thread) =
            worker::start(settings, metrics.clone(), CancellationToken::new()).unwrap();
        let events: Vec<_> = (0..20).map(|i| event(i, now_ms())).collect();
        let seqs = if window.is_zero() {
            let mut seqs = Vec::new();
            for e in events {
                seqs.push(handle.append(e).await.unwrap());
            }
            seqs
        } else {
            let mut commits: Vec<_> = events
                .into_iter()
                .map(|e| handle.submit(Message::Event(e), None))
                .collect();
            // Within a 5 s window nothing has committed yet.
            assert!(commits[0].try_result().is_none());
            let mut seqs = Vec::new();
            for commit in commits {
                seqs.push(commit.await.unwrap());
            }
            seqs
        };
        assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
        assert_eq!(metrics.buffer_commits.get(), expected, "window {window:?}");
        handle.close().await;
        thread.join().unwrap();
    }
}
