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
//! fsync), an S3 bucket with the `s3` cargo feature, or, with
//! `backend = "nats"`, the system's JetStream object store bucket
//! (`herald_nats::blobs`), so every node sees every blob.
//!
//! - Upload: the body streams into a multipart upload of `tmp/<uuid>` in
//!   [`CHUNK_BYTES`] parts (at most [`UPLOAD_CONCURRENCY`] in flight) while
//!   the hash and size are computed; over the size limit or cut off, the
//!   upload is aborted (a dropped upload removes its staging file too), so
//!   nothing is left. Complete, it is renamed to `sha256/<hex>`: an equal
//!   blob already there is replaced by identical bytes (dedup: one copy),
//!   which also refreshes its age for the collector.
//! - Free-space reserve (local store): an upload is refused with
//!   [`Error::InsufficientStorage`] (507) before it starts if the free space
//!   under the store, less its announced `Content-Length`, is below
//!   `blobs.min_free_bytes`; and while it streams (checked every
//!   [`SPACE_CHECK_BYTES`]) if the free space falls below the reserve plus
//!   what the upload still buffers, or the disk refuses a write (`ENOSPC`).
//!   The upload is aborted: nothing is left.
//! - Download: a ranged or whole `get` whose stream is the response body.
//!   Once the body is in, finishing and renaming run to completion even if
//!   the request goes away (`run_to_completion`): a finished upload dropped
//!   before its rename would leave `tmp/<uuid>` behind.
//! - Collection: every `gc_interval_ms`, blobs older than
//!   `unreferenced_ttl_ms` that no job references (the job service's
//!   `blob.refs` Kv bucket) are deleted, and so are stale uploads. The
//!   reference check and the delete cannot race a job pinning the blob:
//!   the collector claims the blob first (`herald_jobs::blobs`, which
//!   explains why), and a job that pins a blob being collected waits for
//!   the claim to end and is refused if the blob is gone.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _};
use herald_backend::Backend;
use herald_backend::cancel::run_to_completion;
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
/// How often (in bytes received) an upload checks the free space.
pub const SPACE_CHECK_BYTES: u64 = 1024 * 1024;

/// Where blobs are kept. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobStore {
    /// Set at open, or, for a store that lives in the backend (NATS), once
    /// the backend has connected ([`BlobStore::attach`]); until then calls
    /// fail with [`Error::NotReady`].
    store: Arc<OnceLock<Arc<dyn ObjectStore>>>,
    max_bytes: u64,
    /// The local store's directory and the free space uploads must leave
    /// there; `None` for S3 or a zero reserve.
    reserve: Option<(PathBuf, u64)>,
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
    /// The upload would leave less free space than `blobs.min_free_bytes`;
    /// nothing was kept.
    #[error(
        "the upload would leave {free} bytes free on the disk, under the reserve of {reserve} bytes (blobs.min_free_bytes); nothing was kept"
    )]
    InsufficientStorage {
        /// Free bytes the upload would leave (or the disk has, if it refused a
        /// write).
        free: u64,
        /// `blobs.min_free_bytes`.
        reserve: u64,
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
    /// The store lives in the backend, which has not connected yet.
    #[error("blob storage is not ready yet (the backend is connecting)")]
    NotReady,
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
    /// `min_free_bytes` is the free-space reserve of the local store.
    pub fn open(
        data_dir: &FsPath,
        s3_bucket: &str,
        max_bytes: u64,
        min_free_bytes: u64,
    ) -> Result<Self, Error> {
        let reserve = (s3_bucket.is_empty() && min_free_bytes > 0)
            .then(|| (data_dir.join("blobs"), min_free_bytes));
        let store = Self::local_or_s3(data_dir, s3_bucket)?;
        Ok(Self {
            store: Arc::new(OnceLock::from(store)),
            max_bytes,
            reserve,
        })
    }

    /// A store whose objects live in the backend: calls fail with
    /// [`Error::NotReady`] until [`BlobStore::attach`] gives it them.
    pub fn in_backend(max_bytes: u64) -> Self {
        Self {
            store: Arc::new(OnceLock::new()),
            max_bytes,
            reserve: None,
        }
    }

    /// Gives a store made by [`BlobStore::in_backend`] its objects (every
    /// clone sees them); a store that has them keeps its own.
    pub fn attach(&self, store: Arc<dyn ObjectStore>) {
        if self.store.set(store).is_err() {
            warn!("Blob storage was attached twice; keeping the first.");
        }
    }

    fn store(&self) -> Result<&Arc<dyn ObjectStore>, Error> {
        self.store.get().ok_or(Error::NotReady)
    }

    fn local_or_s3(data_dir: &FsPath, s3_bucket: &str) -> Result<Arc<dyn ObjectStore>, Error> {
        Ok(if s3_bucket.is_empty() {
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
        })
    }

    /// Refuses with [`Error::InsufficientStorage`] if the disk holding the
    /// store has less free space than the reserve plus `pending` bytes.
    pub fn check_space(&self, pending: u64) -> Result<(), Error> {
        let Some((root, reserve)) = &self.reserve else {
            return Ok(());
        };
        let Some(free) = free_bytes(root) else {
            return Ok(());
        };
        if free < reserve.saturating_add(pending) {
            return Err(Error::InsufficientStorage {
                free: free.saturating_sub(pending),
                reserve: *reserve,
            });
        }
        Ok(())
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
        let upload = self.store()?.put_multipart(&temp).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK_BYTES);
        let mut hasher = Sha256::new();
        let mut size = 0_u64;
        let mut next_space_check = SPACE_CHECK_BYTES;
        let mut body = body;
        let streamed: Result<(), Error> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(Error::CutOff)?;
                size = size.saturating_add(chunk.len() as u64);
                if size > max {
                    return Err(Error::TooLarge { max });
                }
                if size >= next_space_check {
                    // What is buffered but not yet written still needs room.
                    let buffered = (UPLOAD_CONCURRENCY as u64 + 1) * CHUNK_BYTES as u64;
                    self.check_space(buffered.min(size))?;
                    next_space_check = size + SPACE_CHECK_BYTES;
                }
                hasher.update(&chunk);
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(|error| self.store_error(error))?;
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
        let id = format!("sha256:{}", hex(&hasher.finalize()));
        let store = Arc::clone(self.store()?);
        let stored = run_to_completion(async move {
            // A failed part aborts the whole upload; a failed rename leaves
            // the temporary object: either way nothing is left behind.
            let finished = match writer.finish().await {
                Ok(_) => store.rename(&temp, &blob_path(&id)).await,
                Err(error) => Err(error),
            };
            if let Err(error) = finished {
                let _ = store.delete(&temp).await;
                return Err(error);
            }
            Ok(id)
        })
        .await;
        let id = stored.map_err(|error| self.store_error(error))?;
        debug!(blob = %id, size, "Stored a blob.");
        Ok(BlobInfo { id, size })
    }

    /// The blob's size, or [`Error::NotFound`].
    pub async fn size(&self, id: &str) -> Result<u64, Error> {
        if !herald_jobs::model::is_blob_id(id) {
            return Err(not_found(id));
        }
        match self.store()?.head(&blob_path(id)).await {
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
        match self.store()?.get_opts(&blob_path(id), options).await {
            Ok(result) => Ok(result.into_stream()),
            Err(object_store::Error::NotFound { .. }) => Err(not_found(id)),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes blobs older than `ttl_ms` at `now_ms` that no job references,
    /// and stale uploads; returns how many blobs it deleted. Each deletion
    /// is claimed first, so a job cannot pin the blob between the reference
    /// check and the delete (`herald_jobs::blobs`); claims a stopped pass
    /// left are finished first.
    pub async fn collect(
        &self,
        backend: &dyn Backend,
        ttl_ms: u64,
        now_ms: i64,
    ) -> Result<usize, Error> {
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let mut deleted = 0;
        match herald_jobs::blobs::collections_in_progress(backend).await {
            Ok(claimed) => {
                for id in claimed {
                    deleted += usize::from(self.collect_one(backend, &id, false).await?);
                }
            }
            Err(error) => {
                warn!(%error, "Cannot read blob collections in progress; collecting later.");
                return Ok(deleted);
            }
        }
        let Ok(store) = self.store() else {
            return Ok(0);
        };
        let mut listing = store.list(None);
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let age = now_ms.saturating_sub(meta.last_modified.timestamp_millis());
            let location = meta.location.as_ref();
            if let Some(hex) = location.strip_prefix("sha256/") {
                if age < ttl {
                    continue;
                }
                let id = format!("sha256:{hex}");
                deleted += usize::from(self.collect_one(backend, &id, true).await?);
            } else if location.starts_with("tmp/") && age > STALE_UPLOAD_MS {
                store.delete(&meta.location).await?;
            }
        }
        Ok(deleted)
    }

    /// Deletes `id` if no job references it, under a collection claim;
    /// returns whether it deleted it. `look_first`: check the references
    /// before claiming (most old blobs still referenced stay, and need no
    /// claim); not for a claim left by a stopped pass, which must end.
    async fn collect_one(
        &self,
        backend: &dyn Backend,
        id: &str,
        look_first: bool,
    ) -> Result<bool, Error> {
        if look_first {
            match herald_jobs::blob_is_referenced(backend, id).await {
                Ok(true) => return Ok(false),
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, blob = id, "Cannot check blob references; collecting later.");
                    return Ok(false);
                }
            }
        }
        match herald_jobs::blobs::begin_collection(backend, id).await {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(error) => {
                warn!(%error, blob = id, "Cannot claim a blob for collection; collecting later.");
                return Ok(false);
            }
        }
        let removed = match self.store()?.delete(&blob_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
            Err(error) => {
                // The claim stays: the next pass finishes it.
                return Err(error.into());
            }
        };
        crate::auth::quotas::forget_blob(backend, id).await;
        if let Err(error) = herald_jobs::blobs::end_collection(backend, id).await {
            warn!(%error, blob = id, "Cannot end a blob collection; the next pass does.");
        }
        debug!(blob = %id, "Removed an unreferenced blob.");
        Ok(removed)
    }
}

impl herald_jobs::BlobStorage for BlobStore {
    fn exists<'a>(
        &'a self,
        blob: &'a str,
    ) -> herald_jobs::blobs::BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            BlobStore::exists(self, blob)
                .await
                .map_err(|error| error.to_string())
        })
    }
}

impl BlobStore {
    /// A store error; `ENOSPC` from the local disk is
    /// [`Error::InsufficientStorage`].
    fn store_error(&self, error: object_store::Error) -> Error {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::StorageFull
            {
                let reserve = self.reserve.as_ref().map_or(0, |(_, reserve)| *reserve);
                return Error::InsufficientStorage { free: 0, reserve };
            }
            source = cause.source();
        }
        Error::Store(error)
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
#[cfg(target_os = "linux")]
fn free_bytes(path: &FsPath) -> Option<u64> {
    let stats = rustix::fs::statvfs(path).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

#[cfg(not(target_os = "linux"))]
fn free_bytes(_path: &FsPath) -> Option<u64> {
    None
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

/// Runs the collector every `interval_ms` until `cancel` fires, on one
/// node at a time of those sharing the backend (the lease
/// `blobs.collector`, `herald_backend::lease`).
pub async fn collect_loop(
    blobs: BlobStore,
    backend: Arc<dyn Backend>,
    ttl_ms: u64,
    interval_ms: u64,
    cancel: tokio_util::sync::CancellationToken,
) {
    let shared = Arc::clone(&backend);
    herald_backend::lease::run_while_held(
        backend,
        "blobs.collector",
        std::time::Duration::from_secs(30),
        cancel,
        move |stop| {
            collect_every(
                blobs.clone(),
                Arc::clone(&shared),
                ttl_ms,
                interval_ms,
                stop,
            )
        },
    )
    .await;
}

async fn collect_every(
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

    /// Every file under `dir`, as paths relative to it.
    fn files(dir: &FsPath) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&next) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(
        clippy::async_yields_async,
        reason = "the cancellation harness's setup yields the operation under test"
    )]
    async fn given_upload_dropped_at_each_await_should_leave_the_whole_blob_or_nothing() {
        use herald_backend::cancel::{Outcome, drop_at_each_await};

        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), "", 1 << 20, 0).unwrap();
        let root = dir.path().join("blobs");
        let content = |polls: usize| -> Vec<Bytes> {
            (0..3)
                .map(|chunk| Bytes::from(format!("upload {polls}, chunk {chunk};").repeat(100)))
                .collect()
        };
        drop_at_each_await(
            200,
            |polls| {
                let (store, chunks) = (store.clone(), content(polls));
                async move {
                    // A body whose every chunk takes a poll of its own.
                    let body = futures::stream::iter(chunks).then(|chunk| async move {
                        tokio::task::yield_now().await;
                        Ok::<_, axum::Error>(chunk)
                    });
                    async move { store.put(Box::pin(body)).await }
                }
            },
            |outcome| {
                let whole: Vec<u8> = content(match &outcome {
                    Outcome::Dropped(polls) | Outcome::Finished(polls, _) => *polls,
                })
                .concat();
                let id = format!("sha256:{}", hex(&Sha256::digest(&whole)));
                if let Outcome::Finished(_, stored) = &outcome {
                    assert_eq!(stored.as_ref().unwrap().id, id);
                }
                let (store, root) = (store.clone(), root.clone());
                async move {
                    // Cleanup of a dropped upload may take a moment.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while files(&root).iter().any(|file| file.starts_with("tmp")) {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "a dropped upload left {:?}",
                            files(&root)
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    if store.exists(&id).await.unwrap() {
                        let mut stream = store.get(&id, None).await.unwrap();
                        let mut read = Vec::new();
                        while let Some(chunk) = stream.next().await {
                            read.extend_from_slice(&chunk.unwrap());
                        }
                        assert_eq!(read, whole, "a stored blob is whole");
                    }
                }
            },
        )
        .await;
    }
}
