//! Where the cloud keeps snapshots: the [`SnapshotStore`] trait, one object per snapshot id,
//! and its first implementation over JetStream's object store ([`JetStreamSnapshots`],
//! bucket [`sightline_shared::subjects::SNAPSHOTS_BUCKET`]). Ingest's snapshot writer puts
//! and (for retention) deletes; the query service gets. Nothing else names the
//! implementation: an S3-compatible store (the `object_store` crate) is a second
//! implementation of the same four calls (see ARCHITECTURE.md).
//!
//! Every call is bounded by a timeout; a store that does not answer in time, or a NATS
//! connection that is down, is [`ObjectError::Unavailable`] (a 503 in the API, a retry in
//! the writer).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use thiserror::Error;
use tokio::io::AsyncReadExt as _;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// Why a store call failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ObjectError {
    /// The store is unreachable or did not answer in time; worth retrying.
    #[error("the snapshot store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("the snapshot store failed: {0}")]
    Failed(String),
}

/// What a store holds, for its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the store uses (objects and their bookkeeping).
    pub bytes: u64,
}

/// A store of snapshots, keyed by snapshot id. Putting an id again replaces the object
/// (a redelivered upload writes the same bytes again).
pub trait SnapshotStore: fmt::Debug + Send + Sync {
    /// Stores `bytes` under `id`, with `metadata` (key/value pairs the store keeps with it).
    fn put<'a>(
        &'a self,
        id: Uuid,
        bytes: Bytes,
        metadata: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<(), ObjectError>>;
    /// The object under `id`; `None` if there is none.
    fn get(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Bytes>, ObjectError>>;
    /// Removes the object under `id`; `false` if there was none (an object deleted before
    /// may still answer `true`: the JetStream store keeps a deletion marker). Either way it
    /// is gone afterwards.
    fn delete(&self, id: Uuid) -> BoxFuture<'_, Result<bool, ObjectError>>;
    /// The ids of every object (for audits and tests: it reads the whole index).
    fn list(&self) -> BoxFuture<'_, Result<Vec<Uuid>, ObjectError>>;
    /// What the store holds.
    fn usage(&self) -> BoxFuture<'_, Result<Usage, ObjectError>>;
}

/// How long one store call may take before it is [`ObjectError::Unavailable`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Snapshots in a JetStream object store bucket. The bucket is looked up at the first call
/// (and again after a failed look-up), so a service may start before it exists.
pub struct JetStreamSnapshots {
    js: jetstream::Context,
    bucket: String,
    store: OnceCell<object_store::ObjectStore>,
}

impl fmt::Debug for JetStreamSnapshots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSnapshots")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl JetStreamSnapshots {
    /// The bucket `bucket`, looked up when first used.
    pub fn new(js: jetstream::Context, bucket: &str) -> Self {
        Self {
            js,
            bucket: bucket.to_owned(),
            store: OnceCell::new(),
        }
    }

    /// Creates the bucket if it does not exist (ingest does, at start-up), with `replicas`
    /// copies, file storage and no age limit: the retention sweep removes objects by their
    /// capture time.
    pub async fn declare(&self, replicas: usize) -> anyhow::Result<()> {
        match self.js.get_object_store(&self.bucket).await {
            Ok(store) => {
                let _ = self.store.set(store);
                return Ok(());
            }
            Err(error) if error.kind() == jetstream::context::ObjectStoreErrorKind::GetStore => {}
            Err(error) => return Err(anyhow::anyhow!(error)),
        }
        let store = self
            .js
            .create_object_store(object_store::Config {
                bucket: self.bucket.clone(),
                description: Some("Sightline snapshots, checked by ingest".into()),
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("failed to create the bucket {}: {e}", self.bucket))?;
        let _ = self.store.set(store);
        Ok(())
    }

    async fn store(&self) -> Result<&object_store::ObjectStore, ObjectError> {
        self.store
            .get_or_try_init(|| async {
                self.js
                    .get_object_store(&self.bucket)
                    .await
                    .map_err(|e| ObjectError::Unavailable(format!("bucket {}: {e}", self.bucket)))
            })
            .await
    }
}

/// Runs `call` within [`CALL_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    call: impl Future<Output = Result<T, ObjectError>>,
) -> Result<T, ObjectError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(ObjectError::Unavailable(format!(
                "{what} took longer than {CALL_TIMEOUT:?}"
            )))
        })
}

/// An async-nats error as ours: timeouts and connection trouble are transient.
fn classify(what: &str, error: impl fmt::Display + fmt::Debug) -> ObjectError {
    let text = format!("{what}: {error}");
    let debug = format!("{error:?}").to_ascii_lowercase();
    if debug.contains("timedout")
        || debug.contains("timed out")
        || debug.contains("noresponders")
        || debug.contains("no responders")
        || debug.contains("disconnect")
        || debug.contains("broken pipe")
    {
        ObjectError::Unavailable(text)
    } else {
        ObjectError::Failed(text)
    }
}

impl SnapshotStore for JetStreamSnapshots {
    fn put<'a>(
        &'a self,
        id: Uuid,
        bytes: Bytes,
        metadata: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<(), ObjectError>> {
        Box::pin(bounded("put", async move {
            let store = self.store().await?;
            let meta = object_store::ObjectMetadata {
                name: id.to_string(),
                // One chunk per snapshot: a writer killed mid-put leaves at most one chunk
                // without its metadata, never a half-written object.
                chunk_size: Some(bytes.len().max(1)),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect::<HashMap<_, _>>(),
                ..Default::default()
            };
            store
                .put(meta, &mut bytes.as_ref())
                .await
                .map_err(|e| classify("put", e))?;
            Ok(())
        }))
    }

    fn get(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Bytes>, ObjectError>> {
        Box::pin(bounded("get", async move {
            let store = self.store().await?;
            let mut object = match store.get(id.to_string()).await {
                Ok(object) => object,
                Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(error) => return Err(classify("get", error)),
            };
            let mut bytes = Vec::with_capacity(object.info().size);
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| classify("read", e))?;
            Ok(Some(Bytes::from(bytes)))
        }))
    }

    fn delete(&self, id: Uuid) -> BoxFuture<'_, Result<bool, ObjectError>> {
        Box::pin(bounded("delete", async move {
            let store = self.store().await?;
            match store.delete(id.to_string()).await {
                Ok(()) => Ok(true),
                Err(error) if error.kind() == object_store::DeleteErrorKind::NotFound => Ok(false),
                Err(error) => Err(classify("delete", error)),
            }
        }))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Uuid>, ObjectError>> {
        Box::pin(async move {
            let store = self.store().await?;
            let mut list = bounded("list", async {
                store.list().await.map_err(|e| classify("list", e))
            })
            .await?;
            let mut ids = Vec::new();
            while let Some(info) = list.next().await {
                let info = info.map_err(|e| classify("list", e))?;
                if !info.deleted {
                    match info.name.parse() {
                        Ok(id) => ids.push(id),
                        Err(_) => {
                            tracing::warn!(name = %info.name, "an object whose name is not a snapshot id")
                        }
                    }
                }
            }
            Ok(ids)
        })
    }

    fn usage(&self) -> BoxFuture<'_, Result<Usage, ObjectError>> {
        Box::pin(bounded("usage", async move {
            let mut stream = self
                .js
                .get_stream(format!("OBJ_{}", self.bucket))
                .await
                .map_err(|e| classify("stream info", e))?;
            let info = stream
                .info()
                .await
                .map_err(|e| classify("stream info", e))?;
            Ok(Usage {
                bytes: info.state.bytes,
            })
        }))
    }
}

/// Publishes one snapshot upload as an edge does (the JPEG `payload`, `header`'s headers,
/// `Nats-Msg-Id` = the snapshot id) on the camera's snapshot subject, and waits for
/// JetStream's ack: only then is the upload the cloud's.
pub async fn publish_upload(
    js: &jetstream::Context,
    edge_id: &str,
    camera_id: &str,
    header: &sightline_shared::snapshot::SnapshotHeader,
    payload: Bytes,
) -> Result<(), ObjectError> {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in header.headers() {
        headers.insert(name, value.as_str());
    }
    let message = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers)
        .message_id(header.id.to_string());
    let subject = sightline_shared::subjects::snapshot_subject(edge_id, camera_id);
    bounded("publish", async {
        js.send_publish(subject, message)
            .await
            .map_err(|e| classify("publish", e))?
            .await
            .map_err(|e| classify("publish ack", e))?;
        Ok(())
    })
    .await
}
