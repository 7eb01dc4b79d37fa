//! Keyset pagination: no gaps or repeats while inserts continue, ties on capture time.

use std::collections::HashSet;

use sightline_shared::{DetectionEvent, EventId, Timestamp};
use sightline_tests::Stack;

use super::{has, ids, ndjson, newest_first, order_key};
use crate::{known_events, now};

/// `n` events of `camera`, four per millisecond (ties broken by id), one second apart,
/// ending `end_ago_ms` before now.
fn tied_events(camera: &str, n: usize, end_ago_ms: i64) -> Vec<DetectionEvent> {
    let template = known_events("edge-p", camera, 4);
    let start = now().as_millis() - end_ago_ms - (n as i64 / 4) * 1000;
    (0..n)
        .map(|i| {
            let mut e = template[i % 4].clone();
            e.captured_at = Timestamp::from_millis(start + (i as i64 / 4) * 1000);
            e.event_id = EventId::new_v7(e.captured_at);
            e
        })
        .collect()
}

async fn page_through(
    stack: &Stack,
    query: &str,
    during: impl AsyncFn(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<DetectionEvent>> {
    let mut out: Vec<DetectionEvent> = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let path = match &cursor {
            Some(c) => format!("/v1/events?{query}&cursor={c}"),
            None => format!("/v1/events?{query}"),
        };
        let (status, body) = stack.get(&path).await?;
        assert_eq!(status, 200, "{body}");
        out.extend(serde_json::from_value::<Vec<DetectionEvent>>(
            body["events"].clone(),
        )?);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        during(page).await?;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_has_no_gaps_or_repeats_while_inserts_continue() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut original = tied_events("pager", 1000, 600_000);
    stack.insert_direct(&original).await?;
    newest_first(&mut original);

    // While paging: newer events arrive, and copies of stored ones (a redelivery) land too.
    let during = async |page: usize| {
        let newer = tied_events("pager", 8, -5_000 - page as i64 * 10_000);
        stack.insert_direct(&newer).await?;
        let copies: Vec<_> = original.iter().skip(page * 29).take(5).cloned().collect();
        stack.insert_direct(&copies).await
    };
    let newest = page_through(&stack, "camera=pager&limit=37", during).await?;
    assert_eq!(
        ids(&newest),
        ids(&original),
        "newest first: every original once, in order"
    );

    // Label filters page through the per-object table's keys: same guarantees.
    let cars = page_through(&stack, "camera=pager&label=car&limit=13", async |_| Ok(())).await?;
    let everything = stack.text("/v1/events/export?camera=pager").await?;
    let want: Vec<DetectionEvent> = ndjson(&everything)?
        .into_iter()
        .filter(|e| has(e, &["car"], 0.0, 1.0))
        .collect();
    assert!(want.len() > 500, "{}", want.len());
    assert_eq!(ids(&cars), ids(&want), "label pages");

    let oldest = page_through(&stack, "camera=pager&limit=41&sort=oldest", during).await?;
    let mut seen = HashSet::new();
    assert!(oldest.iter().all(|e| seen.insert(e.event_id)), "a repeat");
    let mut want = ids(&original);
    want.reverse();
    assert_eq!(
        ids(&oldest)[..1000],
        want[..],
        "oldest first: originals first, in order"
    );
    assert!(oldest.len() > 1000, "newer events show up at the end");
    assert!(
        oldest
            .windows(2)
            .all(|w| order_key(&w[0]) < order_key(&w[1])),
        "oldest first is strictly ascending"
    );
    stack.stop().await
}
