//! The latest appends, kept in memory so that the publisher's live pages need no query.
//!
//! Every DuckDB statement costs milliseconds of planning, and a page read from the file
//! decompresses what the checkpoints compressed: at a steady rate serving pages from memory
//! halves the CPU per event, and a burst (a group commit of 100 ms at 50,000 events/s holds
//! 5,000) goes out in order without being read back. The cache is bounded by bytes, not
//! rows, so an outage's backlog cannot grow it without limit; whatever falls out is read
//! from the file.

use std::collections::VecDeque;

use crate::outbox::Outgoing;

/// What the cache holds at most: payloads plus [`ROW_OVERHEAD`] per row.
pub(super) const CAPACITY_BYTES: usize = 16 << 20;

/// What a cached row costs beside its payload and its strings (the row itself, the
/// `VecDeque` slot, the allocations' headers), roughly.
const ROW_OVERHEAD: usize = std::mem::size_of::<Outgoing>() + 64;

/// Contiguous seqs ending at the newest append, oldest first.
#[derive(Debug)]
pub(super) struct Fresh {
    rows: VecDeque<Outgoing>,
    bytes: usize,
    capacity: usize,
}

/// What `row` costs the cache.
pub(super) fn cost(row: &Outgoing) -> usize {
    row.payload.len() + row.head.edge_id.len() + row.head.camera_id.len() + ROW_OVERHEAD
}

impl Fresh {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            rows: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// Adds the newest rows (their seqs continue the cache's), dropping the oldest beyond
    /// the capacity.
    pub(super) fn extend(&mut self, rows: impl IntoIterator<Item = Outgoing>) {
        for row in rows {
            debug_assert!(self.rows.back().is_none_or(|last| last.seq + 1 == row.seq));
            self.bytes += cost(&row);
            self.rows.push_back(row);
        }
        while self.bytes > self.capacity {
            self.pop_front();
        }
    }

    /// The oldest seq held.
    pub(super) fn first_seq(&self) -> Option<u64> {
        self.rows.front().map(|row| row.seq)
    }

    /// Whether `seq` and every later append are held.
    pub(super) fn holds_from(&self, seq: u64) -> bool {
        self.first_seq().is_some_and(|first| first <= seq)
    }

    /// Forgets the rows before `seq`.
    pub(super) fn forget_before(&mut self, seq: u64) {
        while self.first_seq().is_some_and(|first| first < seq) {
            self.pop_front();
        }
    }

    /// Takes up to `n` of the oldest rows.
    pub(super) fn take(&mut self, n: usize) -> Vec<Outgoing> {
        let n = n.min(self.rows.len());
        let taken: Vec<Outgoing> = self.rows.drain(..n).collect();
        self.bytes -= taken.iter().map(cost).sum::<usize>();
        taken
    }

    pub(super) fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(row) = self.rows.pop_front() {
            self.bytes -= cost(&row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::STORED;
    use sightline_shared::codec::EventHead;
    use sightline_shared::{EventId, Timestamp};

    fn row(seq: u64, payload: usize) -> Outgoing {
        Outgoing {
            seq,
            head: EventHead {
                event_id: EventId::new_v7(Timestamp::from_millis(1_000)),
                schema_version: 1,
                edge_id: "edge".into(),
                camera_id: "cam".into(),
            },
            content_type: STORED,
            payload: vec![0u8; payload].into(),
        }
    }

    #[test]
    fn holds_the_newest_rows_within_its_bytes() {
        let one = cost(&row(1, 1000));
        let mut fresh = Fresh::new(3 * one);
        fresh.extend((1..=5).map(|seq| row(seq, 1000)));
        assert_eq!(fresh.first_seq(), Some(3));
        assert!(fresh.holds_from(4) && !fresh.holds_from(2));
        assert_eq!(fresh.bytes, 3 * one);
        let taken: Vec<u64> = fresh.take(2).iter().map(|r| r.seq).collect();
        assert_eq!(taken, [3, 4]);
        assert_eq!(fresh.bytes, one);
        fresh.forget_before(6);
        assert_eq!((fresh.first_seq(), fresh.bytes), (None, 0));
        fresh.extend([row(6, 10)]);
        fresh.clear();
        assert_eq!((fresh.first_seq(), fresh.bytes), (None, 0));
    }
}
