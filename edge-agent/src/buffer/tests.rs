use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sightline_shared::{DetectionEvent, Timestamp};

use super::*;
use crate::config::SyntheticConfig;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_763_000_000_000;

fn event(i: u64, day: i64) -> DetectionEvent {
    let mut e = crate::synthetic::make_event(
        "edge-1",
        &format!("cam-{}", i % 3),
        &SyntheticConfig::default(),
        i,
        &mut 1,
        &mut rand::rng(),
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
    // An outage while running: the live lag grows past two pages, and the newest page
    // (the last 10 of seqs 52..=100) jumps ahead of it.
    let more: Vec<_> = (51..100).map(|i| event(i, 0)).collect();
    buffer.append(&more, T0).unwrap();
    let live = buffer.next_page(10).unwrap();
    assert_eq!(live.first().map(|s| s.seq), Some(91));
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
fn a_corrupt_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.duckdb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let (mut buffer, opened) = Buffer::open(&path).unwrap();
    let Opened::MovedAside(aside) = opened else {
        panic!("expected the file to be moved aside, got {opened:?}");
    };
    assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 64 * 1024]);
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
    assert!(matches!(opened, Opened::MovedAside(_)), "{opened:?}");
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
                    let expected: Vec<u64> = model.rows.iter().filter(|(_, (_, sent))| !sent)
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
