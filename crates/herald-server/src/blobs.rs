//! Blobs: content-addressed (`sha256:<hex>`), streamed in and out through
//! `object_store`, never held whole in memory.
//!
//! ```text
//! <store>/tmp/<uuid>          an upload in progress (object_store stages it as
//!                             tmp/<uuid>#<n> and renames it on completion)
//! <store>/sha256/<hex>        a finished blob, named by its content's hash
//! ```
//!
//! The store is `<data_dir>/blobs` (object_store's `LocalFileSystem`, with
//! fsync), or an S3 bucket with the `s3` cargo feature.
//!
//! - Upload: the body streams into a multipart upload of `tmp/<uuid>` in
//!   [`CHUNK_BYTES`] parts (at most [`UPLOAD_CONCURRENCY`] in flight) while
//!   the hash and size are computed; over the size limit or cut off, the
//!   upload is aborted (a dropped upload removes its staging file too), so
//!   nothing is left. Complete, it is renamed to `sha256/<hex>`: an equal
//!   blob already there is replaced by identical bytes (dedup: one copy),
//!   which also refreshes its age for the collector.
//! - Download: a ranged or whole `get` whose stream is the response body.
//! - Collection: every `gc_interval_ms`, blobs older than
//!   `unreferenced_ttl_ms` that no job references (the job service's
//!   `blob.refs` Kv bucket) are deleted, and so are stale uploads.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _};
use herald_backend::Backend;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, WriteMultipart};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

/// Bytes per multipart part (and so the most an upload buffers per part).
pub const CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one upload written concurrently at most: an upload buffers at
/// most `(UPLOAD_CONCURRENCY + 1) × CHUNK_BYTES`.
pub const UPLOAD_CONCURRENCY: usize = 2;
/// Uploads older than this are stale (their request is long gone).
const STALE_UPLOAD_MS: i64 = 24 * 3_600_000;

/// Where blobs are kept. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    max_bytes: u64,
}

/// A stored blob.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlobInfo {
    /// `sha256:<hex>`.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a blob call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No blob by that id.
    #[error("blob {id:?} does not exist")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The upload passed the size limit; nothing was kept.
    #[error("the blob exceeds limits.max_blob_bytes ({max} bytes); nothing was kept")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The range starts at or after the end of the blob.
    #[error("range starts at {start} but the blob has {size} bytes")]
    RangeNotSatisfiable {
        /// Where the range starts.
        start: u64,
        /// The blob's size.
        size: u64,
    },
    /// The request body failed (the client went away); nothing was kept.
    #[error("the upload was cut off; nothing was kept")]
    CutOff(#[source] axum::Error),
    /// The store failed.
    #[error("blob storage failed")]
    Store(#[from] object_store::Error),
    /// The store could not be set up.
    #[error("cannot open blob storage at {path}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl BlobStore {
    /// The store under `data_dir/blobs`, or the S3 bucket if one is
    /// configured (`s3` feature). Removes uploads a crash left behind.
    pub fn open(data_dir: &FsPath, s3_bucket: &str, max_bytes: u64) -> Result<Self, Error> {
        let store: Arc<dyn ObjectStore> = if s3_bucket.is_empty() {
            let root = data_dir.join("blobs");
            let open_error = |source| Error::Open {
                path: root.display().to_string(),
                source,
            };
            // Uploads in progress when the process stopped are garbage.
            match std::fs::remove_dir_all(root.join("tmp")) {
                Ok(()) => info!("Removed unfinished blob uploads."),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(open_error(error)),
            }
            std::fs::create_dir_all(&root).map_err(open_error)?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root)?.with_fsync(true))
        } else {
            s3_store(s3_bucket)?
        };
        Ok(Self { store, max_bytes })
    }

    /// The largest blob accepted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Streams `body` into a blob; see the module docs.
    pub async fn put(
        &self,
        body: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    ) -> Result<BlobInfo, Error> {
        self.put_within(body, self.max_bytes).await
    }

    /// [`BlobStore::put`] with a smaller limit for this upload (an
    /// identity's remaining blob quota); over it, [`Error::TooLarge`] with
    /// that limit.
    pub async fn put_within(
        &self,
        body: impl Stream<Item = Result<Bytes, axum::Error>> + Unpin,
        max: u64,
    ) -> Result<BlobInfo, Error> {
        let max = max.min(self.max_bytes);
        let temp = Path::from(format!("tmp/{}", uuid::Uuid::now_v7()));
        let upload = self.store.put_multipart(&temp).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK_BYTES);
        let mut hasher = Sha256::new();
        let mut size = 0_u64;
        let mut body = body;
        let streamed: Result<(), Error> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(Error::CutOff)?;
                size = size.saturating_add(chunk.len() as u64);
                if size > max {
                    return Err(Error::TooLarge { max });
                }
                hasher.update(&chunk);
                writer.wait_for_capacity(UPLOAD_CONCURRENCY).await?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(error) = streamed {
            if let Err(abort) = writer.abort().await {
                warn!(error = %abort, "Could not abort a blob upload; the collector removes it.");
            }
            return Err(error);
        }
        writer.finish().await?;
        let id = format!("sha256:{}", hex(&hasher.finalize()));
        if let Err(error) = self.store.rename(&temp, &blob_path(&id)).await {
            let _ = self.store.delete(&temp).await;
            return Err(error.into());
        }
        debug!(blob = %id, size, "Stored a blob.");
        Ok(BlobInfo { id, size })
    }

    /// The blob's size, or [`Error::NotFound`].
    pub async fn size(&self, id: &str) -> Result<u64, Error> {
        if !herald_jobs::model::is_blob_id(id) {
            return Err(not_found(id));
        }
        match self.store.head(&blob_path(id)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Err(not_found(id)),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether the blob exists.
    pub async fn exists(&self, id: &str) -> Result<bool, Error> {
        match self.size(id).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The bytes of `range` (all when `None`) as a stream.
    pub async fn get(
        &self,
        id: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, Error> {
        if !herald_jobs::model::is_blob_id(id) {
            return Err(not_found(id));
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.store.get_opts(&blob_path(id), options).await {
            Ok(result) => Ok(result.into_stream()),
            Err(object_store::Error::NotFound { .. }) => Err(not_found(id)),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes blobs older than `ttl_ms` at `now_ms` that no job references,
    /// and stale uploads; returns how many blobs it deleted.
    pub async fn collect(
        &self,
        backend: &dyn Backend,
        ttl_ms: u64,
        now_ms: i64,
    ) -> Result<usize, Error> {
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let mut deleted = 0;
        let mut listing = self.store.list(None);
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let age = now_ms.saturating_sub(meta.last_modified.timestamp_millis());
            let location = meta.location.as_ref();
            if let Some(hex) = location.strip_prefix("sha256/") {
                if age < ttl {
                    continue;
                }
                let id = format!("sha256:{hex}");
                match herald_jobs::blob_is_referenced(backend, &id).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => {
                        warn!(%error, "Cannot check blob references; collecting later.");
                        return Ok(deleted);
                    }
                }
                self.store.delete(&meta.location).await?;
                crate::auth::quotas::forget_blob(backend, &id).await;
                deleted += 1;
                debug!(blob = %id, "Removed an unreferenced blob.");
            } else if location.starts_with("tmp/") && age > STALE_UPLOAD_MS {
                self.store.delete(&meta.location).await?;
            }
        }
        Ok(deleted)
    }
}

fn blob_path(id: &str) -> Path {
    Path::from(format!("sha256/{}", id.trim_start_matches("sha256:")))
}

fn not_found(id: &str) -> Error {
    Error::NotFound { id: id.to_owned() }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(feature = "s3")]
fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>, Error> {
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "s3"))]
fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>, Error> {
    Err(Error::Open {
        path: format!("s3://{bucket}"),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "blobs.s3_bucket needs a herald built with the `s3` feature",
        ),
    })
}

/// Runs the collector every `interval_ms` until `cancel` fires.
pub async fn collect_loop(
    blobs: BlobStore,
    backend: Arc<dyn Backend>,
    ttl_ms: u64,
    interval_ms: u64,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(interval_ms.max(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = herald_jobs::Clock::now_ms(&herald_jobs::SystemClock);
        match blobs.collect(&*backend, ttl_ms, now).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "Removed unreferenced blobs."),
            Err(error) => warn!(%error, "Blob collection failed; retrying next interval."),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn given_bytes_when_hex_encoded_should_be_lowercase_pairs() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
    }
}
