//! Serving snapshots: `GET /v1/events/{id}/snapshot` and `GET /v1/tracks/{id}/snapshot`.
//!
//! The `snapshots` row names the object and its SHA-256; the object comes from the
//! [`SnapshotStore`] and is served only if it hashes to that (a damaged object is a 500,
//! logged and counted, never served). `ETag` is the SHA-256 (with the width, for a
//! thumbnail), so `If-None-Match` answers 304 without reading the object. Thumbnails
//! (`max_width`) are made off the async workers and kept in a bounded cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sightline_runtime::objects::{ObjectError, SnapshotStore};
use sightline_shared::snapshot::Owner;
use uuid::Uuid;

use crate::metrics::Metrics;
use sightline_store::SnapshotRow;

/// Where snapshots are served from.
#[derive(Debug, Clone)]
pub(crate) struct Snapshots {
    pub store: Arc<dyn SnapshotStore>,
    pub thumbnails: Arc<Thumbnails>,
    pub quality: u8,
    /// Thumbnails made at once (each decodes a whole picture): more wait their turn.
    pub making: Arc<tokio::sync::Semaphore>,
}

/// Thumbnails by (snapshot id, width), up to a byte budget; the oldest go first.
#[derive(Debug)]
pub(crate) struct Thumbnails {
    max_bytes: usize,
    inner: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<(Uuid, u32), Bytes>,
    order: VecDeque<(Uuid, u32)>,
    bytes: usize,
}

impl Thumbnails {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Cache::default()),
        }
    }

    fn get(&self, key: (Uuid, u32)) -> Option<Bytes> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .get(&key)
            .cloned()
    }

    fn insert(&self, key: (Uuid, u32), value: Bytes) {
        if value.len() > self.max_bytes {
            return;
        }
        let mut cache = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries.contains_key(&key) {
            return;
        }
        while cache.bytes + value.len() > self.max_bytes {
            let Some(old) = cache.order.pop_front() else {
                break;
            };
            if let Some(gone) = cache.entries.remove(&old) {
                cache.bytes -= gone.len();
            }
        }
        cache.bytes += value.len();
        cache.order.push_back(key);
        cache.entries.insert(key, value);
    }
}

/// Why a stored snapshot cannot be served.
#[derive(Debug)]
pub(crate) enum ServeError {
    /// The row names an object the store does not have (404).
    Gone(String),
    /// The store failed or is unreachable.
    Store(ObjectError),
    /// The object is damaged or could not be scaled (500; logged).
    Internal(String),
}

impl From<ObjectError> for ServeError {
    fn from(e: ObjectError) -> Self {
        Self::Store(e)
    }
}

/// How long a client may keep a picture without asking again: an event's never changes;
/// a track's is replaced when the track finds a better frame, so it is revalidated.
fn cache_control(owner: Owner) -> &'static str {
    match owner {
        Owner::Event(_) => "private, max-age=86400",
        Owner::Track(_) => "private, no-cache",
    }
}

impl Snapshots {
    /// The snapshot `row` names (of `owner`, named `what` in errors), as a response:
    /// 304 if `request` already has it, else the checked picture or its thumbnail.
    pub(crate) async fn respond(
        &self,
        row: SnapshotRow,
        owner: Owner,
        width: Option<u32>,
        request: &HeaderMap,
        metrics: &Metrics,
        what: &str,
    ) -> Result<Response, ServeError> {
        let etag = match width {
            Some(w) => format!("\"{}-w{w}\"", row.sha256),
            None => format!("\"{}\"", row.sha256),
        };
        let headers = [
            (header::ETAG, etag.clone()),
            (header::CACHE_CONTROL, cache_control(owner).to_owned()),
        ];
        let matches = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == etag
            });
        if matches {
            return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
        }
        let cached = width.and_then(|w| self.thumbnails.get((row.snapshot_id, w)));
        let body = match cached {
            Some(thumbnail) => thumbnail,
            None => {
                let Some(bytes) = self.store.get(row.snapshot_id).await? else {
                    // Retention deletes the object first, then the row (by a mutation
                    // ClickHouse applies shortly after): an expiring picture shows here.
                    tracing::warn!(snapshot = %row.snapshot_id, "a snapshot row names an object the store does not have (expiring, or lost)");
                    metrics.snapshots_missing.inc();
                    return Err(ServeError::Gone(format!(
                        "the snapshot of {what} is recorded but its picture is gone"
                    )));
                };
                let actual = sightline_shared::jpeg::sha256_hex(&bytes);
                if actual != row.sha256 {
                    metrics.snapshot_damaged.inc();
                    return Err(ServeError::Internal(format!(
                        "snapshot {} does not match its SHA-256: stored {}, read {actual}",
                        row.snapshot_id, row.sha256
                    )));
                }
                match width {
                    Some(w) => self.thumbnail(row.snapshot_id, bytes, w).await?,
                    None => bytes,
                }
            }
        };
        metrics.snapshots_served.inc();
        Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                sightline_shared::snapshot::CONTENT_TYPE,
            )],
            headers,
            Body::from(body),
        )
            .into_response())
    }

    /// `bytes` scaled to at most `width` (as they are if narrower already), made off the
    /// async workers and cached.
    async fn thumbnail(&self, id: Uuid, bytes: Bytes, width: u32) -> Result<Bytes, ServeError> {
        let quality = self.quality;
        let source = bytes.clone();
        let _turn = self
            .making
            .acquire()
            .await
            .map_err(|e| ServeError::Internal(format!("the thumbnail queue closed: {e}")))?;
        // Another request may have made it while this one waited.
        if let Some(made) = self.thumbnails.get((id, width)) {
            return Ok(made);
        }
        let made = tokio::task::spawn_blocking(move || {
            sightline_runtime::picture::thumbnail(&source, width, quality)
        })
        .await
        .map_err(|e| ServeError::Internal(format!("making a thumbnail panicked: {e}")))?
        .map_err(|e| ServeError::Internal(format!("thumbnail of {id}: {e}")))?;
        let thumbnail = made.map_or(bytes, Bytes::from);
        self.thumbnails.insert((id, width), thumbnail.clone());
        Ok(thumbnail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbnail_cache_keeps_to_its_budget_oldest_out_first() {
        let cache = Thumbnails::new(10);
        let id = |n: u128| Uuid::from_u128(n);
        cache.insert((id(1), 100), Bytes::from_static(b"aaaa"));
        cache.insert((id(2), 100), Bytes::from_static(b"bbbb"));
        assert!(cache.get((id(1), 100)).is_some());
        cache.insert((id(3), 100), Bytes::from_static(b"cccc"));
        assert!(cache.get((id(1), 100)).is_none(), "the oldest went");
        assert_eq!(
            cache.get((id(3), 100)).unwrap(),
            Bytes::from_static(b"cccc")
        );
        assert!(
            cache.get((id(3), 200)).is_none(),
            "the width is part of the key"
        );
        cache.insert((id(4), 1), Bytes::from(vec![0; 11]));
        assert!(cache.get((id(4), 1)).is_none(), "larger than the budget");
        assert_eq!(cache.inner.lock().unwrap().bytes, 8);
    }
}
