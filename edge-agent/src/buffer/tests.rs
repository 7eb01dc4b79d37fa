use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sightline_shared::{DetectionEvent, Timestamp};

use super::*;
use crate::config::SyntheticConfig;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_763_000_000_000;

/// The `i`th test event: the same detections on every run (their number, and so the
/// event's size, is drawn from a generator seeded with `i`).
fn event(i: u64, day: i64) -> DetectionEvent {
    let mut e = crate::synthetic::make_event(
        "edge-1",
        &format!("cam-{}", i % 3),
        &SyntheticConfig::default(),
        i,
        &mut 1,
        &mut StdRng::seed_from_u64(i),
    );
    e.captured_at = Timestamp::from_millis(T0 + day * DAY + i as i64);
    e.event_id = sightline_shared::EventId::new_v7(e.captured_at);
    e
}

fn open(dir: &tempfile::TempDir) -> Buffer {
    Buffer::open(&dir.path().join("buffer.duckdb")).unwrap().0
}

fn drain(buffer: &mut Buffer, page: usize) -> Vec<Outgoing> {
    let mut out = Vec::new();
    loop {
        let rows = buffer.next_page(page).unwrap();
        if rows.is_empty() {
            return out;
        }
        assert!(
            rows.windows(2).all(|w| w[0].seq < w[1].seq),
            "a page is in seq order"
        );
        out.extend(rows);
    }
}

#[test]
fn events_survive_a_reopen_until_marked_sent() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..10).map(|i| event(i, 0)).collect();
    {
        let mut buffer = open(&dir);
        assert_eq!(
            buffer.append(&events, T0).unwrap(),
            (1..=10).collect::<Vec<_>>()
        );
        let page = buffer.next_page(20).unwrap();
        assert_eq!(page.len(), 10);
        assert_eq!(page[0].event().unwrap(), events[0]);
        buffer.mark_sent(&[1, 2, 4]).unwrap();
    }
    let mut buffer = open(&dir);
    let left: Vec<u64> = drain(&mut buffer, 3).iter().map(|s| s.seq).collect();
    assert_eq!(left, vec![3, 5, 6, 7, 8, 9, 10]);
    let stats = buffer.stats().unwrap();
    assert_eq!((stats.rows, stats.unsent), (10, 7));
    assert_eq!(
        stats.oldest_unsent_ms,
        Some(events[2].captured_at.as_millis())
    );
    // New appends continue the sequence.
    assert_eq!(buffer.append(&[event(10, 0)], T0).unwrap(), vec![11]);
}

#[test]
fn live_events_are_not_stuck_behind_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    let backlog: Vec<_> = (0..50).map(|i| event(i, 0)).collect();
    buffer.append(&backlog, T0).unwrap();
    drop(buffer);
    // After a restart everything unsent is backlog; an event created now goes out in the
    // first page, before the backlog has drained.
    let mut buffer = open(&dir);
    buffer.append(&[event(50, 0)], T0).unwrap();
    let first = buffer.next_page(10).unwrap();
    assert_eq!(first.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![51]);
    let second = buffer.next_page(10).unwrap();
    assert_eq!(second.first().map(|s| s.seq), Some(1));
    // An outage while running, longer than memory holds (here about 20 events' worth of
    // bytes): the live lag grows past two pages, and what memory holds (the newest of seqs
    // 52..=100) jumps ahead of what only the file has.
    let capacity = 20 * fresh::cost(&event(0, 0).encode(1).unwrap());
    buffer.fresh = fresh::Fresh::new(capacity);
    let more: Vec<_> = (51..100).map(|i| event(i, 0)).collect();
    // Memory keeps the newest rows whose costs fit: seqs `held_from..=100`.
    let mut bytes = 0;
    let held_from = more
        .iter()
        .enumerate()
        .rev()
        .map(|(i, e)| (52 + i as u64, e))
        .take_while(|(seq, e)| {
            bytes += fresh::cost(&e.encode(*seq).unwrap());
            bytes <= capacity
        })
        .last()
        .map(|(seq, _)| seq)
        .unwrap();
    assert!(
        (53..=91).contains(&held_from),
        "the scenario: memory holds less than the lag and at least a page, from {held_from}"
    );
    buffer.append(&more, T0).unwrap();
    let cached_from = buffer.fresh.first_seq().unwrap();
    assert_eq!(cached_from, held_from);
    buffer.take_rows_read_from_file();
    let live = buffer.next_page(10).unwrap();
    assert_eq!(live.first().map(|s| s.seq), Some(cached_from));
    assert_eq!(
        buffer.take_rows_read_from_file(),
        0,
        "the live page is from memory"
    );
    let rest = drain(&mut buffer, 10);
    let mut all: Vec<u64> = first
        .iter()
        .chain(&second)
        .chain(&live)
        .chain(&rest)
        .map(|s| s.seq)
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<_>>(),
        "every event exactly once"
    );
}

#[test]
fn a_burst_bigger_than_two_pages_goes_out_from_memory_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    // What one group commit holds at 50,000 events/s: 100 ms of them.
    let burst: Vec<_> = (0..5000).map(|i| event(i, 0)).collect();
    buffer.append(&burst, T0).unwrap();
    let sent: Vec<u64> = drain(&mut buffer, 1000).iter().map(|s| s.seq).collect();
    assert_eq!(sent.len(), 5000);
    let out_of_order = sent.iter().zip(1..).find(|(seq, i)| **seq != *i);
    assert_eq!(out_of_order, None, "every event once, oldest first");
    assert_eq!(
        buffer.take_rows_read_from_file(),
        0,
        "no page was read from the file"
    );
    // After a restart memory holds nothing: the same rows come from the file.
    drop(buffer);
    let mut buffer = open(&dir);
    assert_eq!(drain(&mut buffer, 1000).len(), 5000);
    assert_eq!(buffer.take_rows_read_from_file(), 5000);
}

#[test]
fn a_corrupt_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let (mut buffer, opened) = Buffer::open(&path).unwrap();
    let Opened::Recovered(recovery) = opened else {
        panic!("expected the file to be set aside, got {opened:?}");
    };
    assert!(recovery.main_damaged);
    assert_eq!(recovery.uncounted_ranges, 1, "nothing of it could be read");
    assert_eq!(
        std::fs::read(&recovery.set_aside[0]).unwrap(),
        vec![0x5a; 64 * 1024]
    );
    assert_eq!(buffer.append(&[event(0, 0)], T0).unwrap(), vec![1]);
}

#[test]
fn a_truncated_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    {
        let mut buffer = open(&dir);
        buffer.append(&[event(0, 0)], T0).unwrap();
        buffer.checkpoint().unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..5000]).unwrap();
    let (_, opened) = Buffer::open(&path).unwrap();
    assert!(matches!(opened, Opened::Recovered(_)), "{opened:?}");
}

#[test]
fn a_backlog_emptied_by_drops_does_not_hide_live_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    buffer
        .append(&[event(0, 0), event(1, 0), event(2, 0)], T0)
        .unwrap();
    drop(buffer);
    let mut buffer = open(&dir);
    buffer.append(&[event(3, 0), event(4, 0)], T0).unwrap();
    assert_eq!(buffer.next_page(1).unwrap()[0].seq, 4);
    assert_eq!(buffer.drop_oldest_unsent(3).unwrap().len(), 3);
    // The backlog's turn, but it is gone: the waiting live row comes instead.
    assert_eq!(buffer.next_page(1).unwrap()[0].seq, 5);
}

#[test]
fn a_file_from_a_newer_agent_is_refused_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    {
        let buffer = open(&dir);
        buffer
            .conn
            .execute_batch("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
            .unwrap();
    }
    let error = Buffer::open(&path).unwrap_err().to_string();
    assert!(error.contains("schema version 99"), "{error}");
    assert!(path.exists());
}

#[test]
fn compaction_gives_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    let events: Vec<_> = (0..20_000).map(|i| event(i, i as i64 / 10_000)).collect();
    buffer.append(&events, T0).unwrap();
    buffer.mark_sent(&(1..=20_000).collect::<Vec<_>>()).unwrap();
    buffer.checkpoint().unwrap();
    let before = buffer.file_bytes();
    assert_eq!(buffer.delete_sent_day(day_of(T0)).unwrap(), 10_000);
    let (_, now) = buffer.compact().unwrap();
    assert!(now < before * 3 / 4, "{before} -> {now}");
    assert!(!dir.path().join("buffer.duckdb.compact").exists());
    assert_eq!(buffer.stats().unwrap().rows, 10_000);
    assert_eq!(buffer.append(&[event(1, 1)], T0).unwrap(), vec![20_001]);
}

/// Small groups go through a second connection: after a compaction replaced the file, they
/// must land in the new one.
#[test]
fn small_appends_after_a_compaction_land_in_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    let events: Vec<_> = (0..6).map(|i| event(i, 0)).collect();
    // One group of 3 (prepared statements) before, one after.
    assert_eq!(buffer.append(&events[..3], T0).unwrap(), vec![1, 2, 3]);
    buffer.mark_sent(&[1]).unwrap();
    buffer.compact().unwrap();
    assert_eq!(buffer.append(&events[3..], T0).unwrap(), vec![4, 5, 6]);
    drop(buffer);
    let mut buffer = open(&dir);
    let unsent = drain(&mut buffer, 100);
    assert_eq!(
        unsent.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    assert_eq!(ids(&unsent), ids_of(&events[1..]));
    assert_eq!(buffer.stats().unwrap().rows, 6);
}

/// Every group size, on both sides of the prepared-statement path (chunks of 16, 8, 4, 2
/// and 1 rows; appenders past 32), stores each row once with its own payload.
#[test]
fn groups_of_every_size_store_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    let mut all = Vec::new();
    let mut i = 0;
    for size in [1, 2, 3, 15, 16, 17, 31, 37, 63, 64, 65, 200] {
        let group: Vec<_> = (i..i + size).map(|j| event(j, 0)).collect();
        i += size;
        let seqs = buffer.append(&group, T0).unwrap();
        assert_eq!(seqs.len(), group.len());
        all.extend(group);
    }
    drop(buffer);
    let mut buffer = open(&dir);
    let rows = drain(&mut buffer, 1000);
    assert_eq!(rows.len(), all.len());
    assert_eq!(ids(&rows), ids_of(&all));
    for (row, event) in rows.iter().zip(&all) {
        assert_eq!(row.head.event_id, event.event_id, "seq {}", row.seq);
        assert_eq!(event.encode(row.seq).unwrap().payload, row.payload);
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append this many events, captured on this day.
    Append(u8, u8),
    /// Read a page of this size and ack the events whose bit is set in the mask.
    Publish(u8, u64),
    /// The agent restarts: what the publisher had read but not acked is forgotten (the
    /// kill -9 test in `tests/` does this with a real crash).
    Restart,
    /// Rotation deletes the sent rows of this day.
    Rotate(u8),
    /// `drop_oldest` removes this many unsent events.
    DropOldest(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..40, 0u8..3).prop_map(|(n, d)| Op::Append(n, d)),
        4 => (1u8..30, any::<u64>()).prop_map(|(n, m)| Op::Publish(n, m)),
        1 => Just(Op::Restart),
        1 => (0u8..3).prop_map(Op::Rotate),
        1 => (1u8..5).prop_map(Op::DropOldest),
    ]
}

/// What the buffer should hold: seq -> (event, sent).
#[derive(Debug, Default)]
struct Model {
    rows: BTreeMap<u64, (DetectionEvent, bool)>,
    /// Read by the publisher in this process life and not acked (in flight).
    taken: BTreeSet<u64>,
    next_seq: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn buffer_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = open(&dir);
        let mut model = Model { next_seq: 1, ..Model::default() };
        let mut n = 0u64;
        for op in ops {
            match op {
                Op::Append(count, day) => {
                    let events: Vec<_> = (0..count).map(|_| { n += 1; event(n, i64::from(day)) }).collect();
                    let seqs = buffer.append(&events, T0).unwrap();
                    for (seq, e) in seqs.iter().zip(events) {
                        prop_assert_eq!(*seq, model.next_seq);
                        model.rows.insert(*seq, (e, false));
                        model.next_seq += 1;
                    }
                }
                Op::Publish(size, mask) => {
                    let page = buffer.next_page(usize::from(size)).unwrap();
                    prop_assert!(page.len() <= usize::from(size));
                    let mut acked = Vec::new();
                    for (i, stored) in page.iter().enumerate() {
                        let (event, sent) = &model.rows[&stored.seq];
                        prop_assert!(!sent, "a sent event was offered again");
                        prop_assert!(model.taken.insert(stored.seq), "an event was offered twice");
                        prop_assert_eq!(event, &stored.event().unwrap());
                        if mask >> (i % 64) & 1 == 1 {
                            acked.push(stored.seq);
                        }
                    }
                    buffer.mark_sent(&acked).unwrap();
                    for seq in acked {
                        model.taken.remove(&seq);
                        if let Some(row) = model.rows.get_mut(&seq) { row.1 = true; }
                    }
                }
                Op::Restart => {
                    drop(buffer);
                    buffer = open(&dir);
                    model.taken.clear();
                }
                Op::Rotate(day) => {
                    let day = day_of(T0 + i64::from(day) * DAY);
                    let deleted = buffer.delete_sent_day(day).unwrap();
                    let before = model.rows.len();
                    model.rows.retain(|_, (e, sent)| !(*sent && day_of(e.captured_at.as_millis()) == day));
                    prop_assert_eq!(deleted as usize, before - model.rows.len());
                }
                Op::DropOldest(count) => {
                    let dropped = buffer.drop_oldest_unsent(u64::from(count)).unwrap();
                    // The oldest unsent not handed to the publisher (those it holds may yet be sent).
                    let expected: Vec<u64> = model.rows.iter()
                        .filter(|(seq, (_, sent))| !sent && !model.taken.contains(seq))
                        .map(|(seq, _)| *seq).take(usize::from(count)).collect();
                    prop_assert_eq!(dropped.iter().map(|d| d.seq).collect::<Vec<_>>(), expected.clone());
                    for seq in expected { model.rows.remove(&seq); model.taken.remove(&seq); }
                }
            }
            let stats = buffer.stats().unwrap();
            prop_assert_eq!(stats.rows as usize, model.rows.len());
            prop_assert_eq!(stats.unsent as usize, model.rows.values().filter(|r| !r.1).count());
        }
        // Whatever is unsent and not in flight comes out exactly once, and in flight events
        // come back after a restart.
        let rest: BTreeSet<u64> = drain(&mut buffer, 7).iter().map(|s| s.seq).collect();
        let expected: BTreeSet<u64> = model.rows.iter()
            .filter(|(seq, (_, sent))| !sent && !model.taken.contains(seq)).map(|(s, _)| *s).collect();
        prop_assert_eq!(rest, expected);
        drop(buffer);
        let mut buffer = open(&dir);
        let after: BTreeSet<u64> = drain(&mut buffer, 64).iter().map(|s| s.seq).collect();
        let unsent: BTreeSet<u64> = model.rows.iter().filter(|(_, (_, sent))| !sent).map(|(s, _)| *s).collect();
        prop_assert_eq!(after, unsent);
    }
}

/// Writes `events` to the day logs under `dir`, as the worker does for every committed event.
fn write_day_logs(dir: &Path, events: &[DetectionEvent]) {
    let mut logs = crate::daylog::DayLogs::new(dir);
    for e in events {
        logs.write(e).unwrap();
    }
}

fn ids(rows: &[Outgoing]) -> BTreeSet<EventId> {
    rows.iter().map(|r| r.head.event_id).collect()
}

fn flip(bytes: &mut [u8], at: usize, len: usize) {
    for b in &mut bytes[at..at + len] {
        *b ^= 0xff;
    }
}

/// A power cut garbles a WAL entry. DuckDB then refuses the database, or (when the entry
/// looks like a torn tail) replays the WAL only up to it. Either way the main file is kept
/// with its backlog, and what the WAL held comes back from the day logs.
#[test]
fn a_damaged_wal_costs_no_event() {
    let live = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..150).map(|i| event(i, 0)).collect();
    let mut buffer = open(&live);
    buffer.append(&events[..100], T0).unwrap();
    buffer.mark_sent(&(1..=40).collect::<Vec<_>>()).unwrap();
    buffer.checkpoint().unwrap();
    for e in &events[100..] {
        buffer.append(std::slice::from_ref(e), T0).unwrap();
    }
    // The power cut: the files as they are on disk while the agent runs.
    let main = std::fs::read(live.path().join("buffer.duckdb")).unwrap();
    let wal = std::fs::read(live.path().join("buffer.duckdb.wal")).unwrap();
    drop(buffer);
    let mut set_aside = 0;
    for eighth in 1..8 {
        let cut = tempfile::tempdir().unwrap();
        let path = cut.path().join("buffer.duckdb");
        std::fs::write(&path, &main).unwrap();
        let mut damaged = wal.clone();
        flip(&mut damaged, wal.len() * eighth / 8, 64);
        std::fs::write(cut.path().join("buffer.duckdb.wal"), &damaged).unwrap();
        write_day_logs(cut.path(), &events);

        let (mut buffer, opened) = Buffer::open(&path).unwrap();
        let Opened::Recovered(recovery) = opened else {
            panic!("damage at {eighth}/8 of the WAL went unnoticed");
        };
        assert!(!recovery.main_damaged, "{recovery:?}");
        assert_eq!(recovery.unrecoverable, 0);
        if let [wal_aside] = recovery.set_aside.as_slice() {
            assert!(wal_aside.to_string_lossy().ends_with(".wal") && wal_aside.exists());
            assert_eq!(recovery.from_logs, 50, "all the WAL held: {recovery:?}");
            set_aside += 1;
        } else {
            assert!(recovery.set_aside.is_empty(), "{recovery:?}");
        }
        let drained = drain(&mut buffer, 32);
        assert_eq!(drained.len(), 110, "damage at {eighth}/8: {recovery:?}");
        assert_eq!(ids(&drained), ids_of(&events[40..]));
    }
    assert!(set_aside > 0, "DuckDB never refused a damaged WAL");
}

fn ids_of(events: &[DetectionEvent]) -> BTreeSet<EventId> {
    events.iter().map(|e| e.event_id).collect()
}

/// Whichever block of the main file a power cut damages, every unsent event is published
/// after the restart: read back from the damaged file where it can be, from the day logs
/// where it cannot. Blocks the open does not read are found damaged while running and
/// recovered in place, as the worker does.
#[test]
fn whichever_block_is_damaged_every_unsent_event_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..6000).map(|i| event(i, 0)).collect();
    {
        let mut buffer = open(&dir);
        buffer.append(&events, T0).unwrap();
        buffer.mark_sent(&(1..=2000).collect::<Vec<_>>()).unwrap();
        buffer.checkpoint().unwrap();
    }
    let clean = std::fs::read(dir.path().join("buffer.duckdb")).unwrap();
    let unsent = ids_of(&events[2000..]);
    // DuckDB: a 4 KiB header, two 4 KiB database headers, then 256 KiB blocks.
    let (headers, block) = (3 * 4096, 256 * 1024);
    let blocks = (clean.len() - headers).div_ceil(block);
    assert!(blocks >= 3, "{} bytes", clean.len());
    let mut salvaged = 0;
    let mut damage_found = 0;
    for target in std::iter::once(0).chain((0..blocks).map(|k| headers + k * block + 512)) {
        let case = tempfile::tempdir().unwrap();
        let path = case.path().join("buffer.duckdb");
        let mut bytes = clean.clone();
        flip(&mut bytes, target, 256);
        std::fs::write(&path, &bytes).unwrap();
        write_day_logs(case.path(), &events);
        let (mut buffer, opened) = Buffer::open(&path).unwrap();
        let mut recoveries: Vec<Recovery> = match opened {
            Opened::Recovered(recovery) => vec![recovery],
            Opened::Clean => Vec::new(),
        };
        let mut published = BTreeSet::new();
        loop {
            match buffer.next_page(500) {
                Ok(rows) if rows.is_empty() => break,
                Ok(rows) => published.extend(ids(&rows)),
                Err(error) if Buffer::is_damage(&error) => {
                    recoveries.push(buffer.recover_damaged(&error).unwrap());
                }
                Err(error) => panic!("damage at byte {target}: {error}"),
            }
        }
        let missing: Vec<_> = unsent.difference(&published).collect();
        assert!(
            missing.is_empty(),
            "damage at byte {target}: {} unsent events never came back ({recoveries:?})",
            missing.len()
        );
        for recovery in &recoveries {
            assert_eq!(recovery.unrecoverable, 0, "{recovery:?}");
            assert!(with_suffix(&recovery.set_aside[0], recover::MARKER_SUFFIX).exists());
            salvaged += recovery.salvaged;
        }
        damage_found += recoveries.len();
    }
    assert!(damage_found > 0, "no damage was ever noticed");
    assert!(
        salvaged > 0,
        "nothing was ever read back from a damaged file"
    );
}

/// Appends `events` and garbles the payload of the row with seq 3, as a bad block would.
fn append_with_a_bad_row(buffer: &mut Buffer, events: &[DetectionEvent]) {
    buffer.append(events, T0).unwrap();
    buffer
        .conn
        .execute(
            "UPDATE outbox SET payload = '\\x00\\x01'::BLOB WHERE seq = 3",
            [],
        )
        .unwrap();
}

/// One unreadable row must neither end the backlog nor be thrown away.
#[test]
fn an_unreadable_row_is_quarantined_and_paging_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..10).map(|i| event(i, 0)).collect();
    append_with_a_bad_row(&mut open(&dir), &events);
    let mut buffer = open(&dir);
    let drained = drain(&mut buffer, 4);
    assert_eq!(
        drained.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(buffer.take_quarantined(), 1);
    assert_eq!(buffer.stats().unwrap().quarantined, 1);
    let (seq, reason): (i64, String) = buffer
        .conn
        .query_row("SELECT seq, reason FROM quarantine", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(seq, 3);
    assert!(reason.contains("malformed"), "{reason}");
}

/// A damaged file's quarantined rows move to the new buffer's quarantine: the copy is
/// deleted by rotation with its day, and quarantined rows are never deleted.
#[test]
fn a_recovered_copy_keeps_its_quarantined_rows() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..10).map(|i| event(i, 0)).collect();
    let mut buffer = open(&dir);
    // Memory holds none of them, so the pages are read from the file, bad row and all.
    buffer.fresh = fresh::Fresh::new(0);
    append_with_a_bad_row(&mut buffer, &events);
    assert_eq!(drain(&mut buffer, 4).len(), 9);
    assert_eq!(buffer.take_quarantined(), 1);
    let damage = BufferError::Other {
        path: buffer.path().to_owned(),
        message: "a bad block".into(),
    };
    let recovery = buffer.recover_damaged(&damage).unwrap();
    assert_eq!(recovery.salvaged, 9, "{recovery:?}");
    assert_eq!(recovery.quarantine_kept, 1, "{recovery:?}");
    // Kept, not quarantined again.
    assert_eq!(buffer.take_quarantined(), 0);
    assert_eq!(buffer.stats().unwrap().quarantined, 1);
    let (seq, payload, reason): (i64, Vec<u8>, String) = buffer
        .conn
        .query_row("SELECT seq, payload, reason FROM quarantine", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((seq, payload), (3, vec![0, 1]));
    assert!(reason.contains("malformed"), "{reason}");
    assert_eq!(
        ids(&drain(&mut buffer, 4)),
        ids_of(&[&events[..2], &events[3..]].concat())
    );
}

/// A buffer an older agent wrote (before rows recorded their content type) drains with this
/// code, and a row of another schema version is handed out as it is, under its own type.
#[test]
fn rows_of_every_version_are_published_as_they_were_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    // Schema v1 events, as the agents of then made them.
    let events: Vec<_> = (0..5)
        .map(|i| {
            let mut e = event(i, 0);
            e.schema_version = 1;
            for d in &mut e.detections {
                d.zones.clear();
            }
            e
        })
        .collect();
    {
        // What the agent before migration 0002 left: its schema and v1 rows.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0].2).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_ms BIGINT NOT NULL); INSERT INTO schema_migrations VALUES (1, 'buffer', 0)",
        )
        .unwrap();
        for (seq, e) in (1..).zip(&events) {
            let payload =
                sightline_shared::codec::encode(e, sightline_shared::Encoding::Bincode).unwrap();
            let captured = e.captured_at.as_millis();
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    seq,
                    e.event_id.to_string(),
                    e.camera_id,
                    captured,
                    day_of(captured),
                    T0,
                    payload
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?)",
                params![seq, captured, day_of(captured), payload],
            )
            .unwrap();
        }
    }
    let mut buffer = open(&dir);
    // A later schema version's row (as a future agent would leave it before a downgrade).
    let mut newer = event(5, 0);
    newer.schema_version = sightline_shared::SCHEMA_VERSION + 1;
    let newer_type = sightline_shared::ContentType {
        kind: sightline_shared::Kind::Event,
        encoding: sightline_shared::Encoding::Json,
        schema_version: newer.schema_version,
    };
    // (This build cannot encode a version it does not know: JSON stands in for its layout.)
    let payload = serde_json::to_vec(&newer).unwrap();
    let row = Outgoing::from_stored(0, &newer_type.to_string(), payload.clone()).unwrap();
    buffer
        .insert_recovered(vec![(row, newer.captured_at.as_millis())], T0)
        .unwrap();
    let drained = drain(&mut buffer, 10);
    assert_eq!(drained.len(), 6);
    for (row, e) in drained.iter().zip(&events) {
        assert_eq!(row.content_type.to_string(), V1_STORED);
        assert_eq!(&row.event().unwrap(), e);
    }
    let last = drained.last().unwrap();
    assert_eq!(last.content_type, newer_type);
    assert!(!last.is_current());
    assert_eq!(last.head.event_id, newer.event_id);
    assert_eq!(last.payload.as_ref(), payload.as_slice());
}

/// A recovery that cannot complete (here the damaged file cannot be set aside) leaves the
/// buffer unusable, for the worker to stop the agent, never running on a stand-in.
#[test]
fn a_failed_recovery_leaves_the_buffer_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    let mut buffer = open(&dir);
    buffer.append(&[event(0, 0)], T0).unwrap();
    // Whatever second the recovery runs in, its set-aside name is taken by a non-empty
    // directory, so the rename fails.
    let now = sightline_runtime::now().as_millis() / 1000;
    for secs in now..now + 60 {
        let taken = with_suffix(&path, &format!("{CORRUPT_SUFFIX}{secs}"));
        std::fs::create_dir_all(taken.join("x")).unwrap();
    }
    let damage = BufferError::Other {
        path,
        message: "a bad block".into(),
    };
    assert!(buffer.recover_damaged(&damage).is_err());
    let why = buffer.unusable().expect("unusable").to_owned();
    assert!(why.contains("cannot set"), "{why}");
    assert!(
        buffer.append(&[event(1, 0)], T0).is_err(),
        "no stand-in database"
    );
    // The file is where it was, and the next open finds the event.
    drop(buffer);
    let mut buffer = open(&dir);
    assert_eq!(drain(&mut buffer, 10).len(), 1);
}

/// Events `drop_oldest` deleted were counted as dropped: a recovery that re-reads the day
/// logs must not store them again.
#[test]
fn a_recovery_does_not_bring_back_what_drop_oldest_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..100).map(|i| event(i, 0)).collect();
    write_day_logs(dir.path(), &events);
    let mut buffer = open(&dir);
    buffer.append(&events, T0).unwrap();
    let dropped: BTreeSet<EventId> = buffer
        .drop_oldest_unsent(30)
        .unwrap()
        .iter()
        .map(|d| d.event_id.parse().unwrap())
        .collect();
    assert_eq!(dropped.len(), 30);
    let damage = BufferError::Other {
        path: buffer.path().to_owned(),
        message: "a bad block".into(),
    };
    let recovery = buffer.recover_damaged(&damage).unwrap();
    assert_eq!(recovery.salvaged, 70, "{recovery:?}");
    assert_eq!(recovery.from_logs, 0, "{recovery:?}");
    let drained = ids(&drain(&mut buffer, 32));
    assert_eq!(drained, ids_of(&events[30..]));
    assert!(drained.is_disjoint(&dropped));
}

#[test]
fn track_ids_are_never_handed_out_twice_across_restarts_and_recoveries() {
    let dir = tempfile::tempdir().unwrap();
    let mut handed_out = Vec::new();
    {
        let mut buffer = open(&dir);
        handed_out.push(buffer.reserve_track_ids(256).unwrap());
        handed_out.push(buffer.reserve_track_ids(256).unwrap());
    }
    {
        let mut buffer = open(&dir);
        handed_out.push(buffer.reserve_track_ids(10).unwrap());
    }
    assert_eq!(handed_out, [1..257, 257..513, 513..523]);
    // A damaged file: its readable counter plus the margin for reservations a lost WAL made.
    let path = dir.path().join("buffer.duckdb");
    let mut buffer = open(&dir);
    buffer.close_for_replacement();
    let (mut recovered, _) = recover::recover_main(
        &path,
        &corrupt_path(&path),
        &"a bad block",
        Recovery::default(),
        1,
    )
    .unwrap();
    let next = recovered.reserve_track_ids(1).unwrap();
    assert_eq!(next.start, 523 + RECOVERED_TRACK_ID_MARGIN);
    drop(recovered);
    // A file nothing can be read from: the clock is all that is left.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let (mut buffer, _) = Buffer::open(&path).unwrap();
    let next = buffer.reserve_track_ids(1).unwrap();
    let micros = sightline_runtime::now().as_millis() as u64 * 1000;
    assert!(
        next.start <= micros && next.start > micros - 60_000_000,
        "{next:?}"
    );
}

/// A v1 event this build encodes (a day log an older agent wrote, read back by a recovery)
/// is stored under the v1 content type its payload has, so it reads back and goes out whole.
#[test]
fn a_version_1_event_is_stored_under_its_own_version() {
    let mut old = event(3, 0);
    old.schema_version = 1;
    for d in &mut old.detections {
        d.zones.clear();
    }
    let row = Outgoing::encode(7, &old).unwrap();
    assert_eq!(row.content_type.to_string(), V1_STORED);
    assert_eq!(row.event().unwrap(), old);
    let stored =
        Outgoing::from_stored(7, &row.content_type.to_string(), row.payload.to_vec()).unwrap();
    assert_eq!(stored.head.event_id, old.event_id);
}

fn upload_of(e: &DetectionEvent) -> UploadRequest {
    UploadRequest::of_event(
        uuid::Uuid::now_v7(),
        e,
        format!("snapshots/{}.jpg", e.event_id),
    )
}

#[test]
fn uploads_are_queued_with_their_event_and_sent_only_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    let events: Vec<_> = (0..3).map(|i| event(i, 0)).collect();
    let uploads = [
        Some(upload_of(&events[0])),
        None,
        Some(upload_of(&events[2])),
    ];
    let seqs = buffer.append_with_uploads(&events, &uploads, T0).unwrap();
    // Queued, but their events are unsent: nothing to upload yet; and none while more
    // rows than asked are unsent (events first).
    assert_eq!(buffer.upload_counts().unwrap().pending, 2);
    assert!(buffer.pending_uploads(10, 100).unwrap().0.is_empty());
    let (none, unsent) = buffer.pending_uploads(10, 2).unwrap();
    assert!(none.is_empty());
    assert_eq!(unsent, 3);
    // Strictly oldest first: the newer upload waits behind the older one's unsent event.
    buffer.mark_sent(&seqs[2..]).unwrap();
    assert!(buffer.pending_uploads(10, 100).unwrap().0.is_empty());
    buffer.mark_sent(&seqs[..2]).unwrap();
    let (ready, _) = buffer.pending_uploads(10, 100).unwrap();
    assert_eq!(ready.len(), 2, "oldest queued first");
    assert_eq!(ready[0], uploads[0].clone().unwrap());
    // Done: uploaded or dropped, never pending again; a late outcome changes nothing.
    let first = uploads[0].as_ref().unwrap().snapshot_id;
    let last = uploads[2].as_ref().unwrap().snapshot_id;
    buffer
        .finish_uploads(
            &[
                (first, UploadOutcome::Uploaded { bytes: 1234 }),
                (
                    last,
                    UploadOutcome::Dropped {
                        why: crate::metrics::UploadDrop::Missing,
                        reason: "gone".into(),
                    },
                ),
            ],
            T0,
        )
        .unwrap();
    // A late outcome changes nothing, and says so (so it is not counted twice).
    assert_eq!(
        buffer
            .finish_uploads(&[(last, UploadOutcome::Uploaded { bytes: 1 })], T0)
            .unwrap(),
        [false]
    );
    assert_eq!(buffer.upload_counts().unwrap().pending, 0);
    assert_eq!(
        buffer.upload_state(first).unwrap(),
        Some(("uploaded".into(), None))
    );
    assert_eq!(
        buffer.upload_state(last).unwrap(),
        Some(("dropped".into(), Some("gone".into())))
    );
}

#[test]
fn a_crash_keeps_the_queue_and_a_failed_append_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = event(1, 0);
    let upload = upload_of(&e);
    {
        let mut buffer = open(&dir);
        buffer
            .append_with_uploads(std::slice::from_ref(&e), &[Some(upload)], T0)
            .unwrap();
        // Dropped without a checkpoint: the WAL holds the transaction.
        std::mem::forget(buffer);
    }
    let mut buffer = open(&dir);
    assert_eq!(buffer.upload_counts().unwrap().pending, 1);
    // An event that cannot be stored takes its upload with it.
    let mut bad = event(2, 0);
    bad.schema_version = 99;
    let bad_upload = upload_of(&bad);
    assert!(
        buffer
            .append_with_uploads(&[bad], &[Some(bad_upload.clone())], T0)
            .is_err()
    );
    assert_eq!(buffer.upload_state(bad_upload.snapshot_id).unwrap(), None);
    assert_eq!(buffer.upload_counts().unwrap().pending, 1);
}

#[test]
fn a_tracks_new_picture_supersedes_its_pending_one_and_rotation_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = open(&dir);
    let e = event(1, 0);
    let track = |n: i64| UploadRequest {
        snapshot_id: uuid::Uuid::now_v7(),
        owner: sightline_shared::snapshot::Owner::Track(7),
        camera_id: "cam-1".into(),
        path: "snapshots/track-7.jpg".into(),
        captured_ms: T0 + n,
        day: crate::daylog::day_of(T0),
    };
    let (first, second) = (track(1), track(2));
    buffer
        .append_with_uploads(std::slice::from_ref(&e), &[Some(first.clone())], T0)
        .unwrap();
    buffer
        .append_with_uploads(&[event(2, 0)], &[Some(second.clone())], T0)
        .unwrap();
    assert_eq!(buffer.take_superseded(), 1);
    assert_eq!(buffer.take_superseded(), 0);
    assert_eq!(
        buffer.upload_state(first.snapshot_id).unwrap(),
        Some(("dropped".into(), Some(super::uploads::SUPERSEDED.into())))
    );
    let other_day = upload_of(&event(3, 1));
    buffer
        .append_with_uploads(&[event(3, 1)], &[Some(other_day)], T0)
        .unwrap();
    let gone = buffer
        .delete_uploads_of_day(crate::daylog::day_of(T0))
        .unwrap();
    assert_eq!(gone, [second]);
    assert_eq!(buffer.upload_counts().unwrap().pending, 1);
    // The full-disk policy's dropped events take their uploads along.
    let seqs: Vec<u64> = buffer
        .append_with_uploads(&[event(4, 1)], &[Some(upload_of(&event(4, 1)))], T0)
        .unwrap();
    assert_eq!(buffer.drop_uploads_of(&seqs, T0).unwrap(), 1);
    assert_eq!(buffer.upload_counts().unwrap().pending, 1);
}

#[test]
fn a_set_aside_buffers_pending_uploads_are_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    let events: Vec<_> = (0..4).map(|i| event(i, 0)).collect();
    let uploads: Vec<_> = events.iter().map(|e| Some(upload_of(e))).collect();
    {
        let mut buffer = open(&dir);
        buffer.append_with_uploads(&events, &uploads, T0).unwrap();
        let done = uploads[0].as_ref().unwrap().snapshot_id;
        buffer
            .finish_uploads(&[(done, UploadOutcome::Uploaded { bytes: 1 })], T0)
            .unwrap();
        buffer.checkpoint().unwrap();
    }
    // Set aside by an agent that did not recover it: the next open salvages it.
    std::fs::rename(&path, corrupt_path(&path)).unwrap();
    let (buffer, _) = Buffer::open(&path).unwrap();
    let pending: Vec<_> = buffer
        .uploads()
        .unwrap()
        .into_iter()
        .filter(|u| u.state == "pending")
        .map(|u| u.snapshot_id)
        .collect();
    let want: Vec<_> = uploads[1..]
        .iter()
        .map(|u| u.as_ref().unwrap().snapshot_id)
        .collect();
    assert_eq!(
        pending, want,
        "the pending ones, in order; not the uploaded one"
    );
    // Sendable at once: their events came back as new rows, and they name none.
    assert_eq!(buffer.pending_uploads(10, u64::MAX).unwrap().0.len(), 3);
}

#[test]
fn a_quarantined_events_upload_is_dropped_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (0..5).map(|i| event(i, 0)).collect();
    let mut buffer = open(&dir);
    // Row 3's upload; then its payload is garbled, as a bad block would.
    let upload = upload_of(&events[2]);
    let uploads: Vec<_> = (0..5).map(|i| (i == 2).then(|| upload.clone())).collect();
    buffer.append_with_uploads(&events, &uploads, T0).unwrap();
    buffer
        .conn
        .execute(
            "UPDATE outbox SET payload = '\\x00\\x01'::BLOB WHERE seq = 3",
            [],
        )
        .unwrap();
    // Reopened, so the rows are read from the file (not from the appends kept in memory).
    drop(buffer);
    let mut buffer = open(&dir);
    let sent: Vec<u64> = drain(&mut buffer, 10).iter().map(|r| r.seq).collect();
    buffer.mark_sent(&sent).unwrap();
    assert_eq!(buffer.take_quarantined(), 1);
    // Its event never reaches the cloud: its picture must not go, and is counted dropped.
    assert_eq!(
        buffer.upload_state(upload.snapshot_id).unwrap(),
        Some(("dropped".into(), Some("event quarantined".into())))
    );
    assert_eq!(buffer.take_uploads_dropped_with_events(), 1);
    assert!(buffer.pending_uploads(10, 100).unwrap().0.is_empty());
}
