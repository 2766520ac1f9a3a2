//! Blobs in a JetStream object store bucket (`<prefix>-blobs`, stream
//! `OBJ_<prefix>-blobs`), as an [`object_store::ObjectStore`], so the
//! server's blob service (content addressing, size limits, the collector)
//! runs unchanged over it and every Herald node sees every blob.
//!
//! The layout is NATS's own (ADR-20), so `nats object ls` shows the blobs:
//! an object's bytes are chunks on `$O.<bucket>.C.<nuid>`, its description
//! ([`ObjectInfo`]: name, size, chunk count, SHA-256 digest) one message on
//! `$O.<bucket>.M.<base64url name>`, kept last-per-subject by a rollup.
//! Reading goes through async-nats (an ordered consumer over the chunks,
//! the digest checked at the end). Writing is done here, not with
//! async-nats' `put`, for three reasons:
//!
//! - an upload arrives as parts ([`MultipartUpload`]), not as one reader;
//! - an upload that is aborted or dropped must leave nothing: its chunks
//!   are purged by their subject, which needs the nuid this module picks;
//! - rename (how a finished upload becomes `sha256/<hex>`) writes the new
//!   description first and removes the old name second, so a crash in
//!   between leaves the blob under both names, never under none (async-nats'
//!   `update_metadata` does it the other way round).
//!
//! Chunks are [`CHUNK_BYTES`]; up to [`ACKS_IN_FLIGHT`] of them are
//! published before the first acknowledgement is awaited. A part is
//! answered once all its chunks are acknowledged; the description is
//! written only after every part is, so a described object is complete.
//! Memory per upload is one part plus the chunks in flight.
//!
//! A ranged read skips the bytes before its start as they arrive: chunks
//! of concurrent uploads interleave in the stream, so there is no offset
//! to seek to. A crash between a delete's tombstone and its chunk purge,
//! or inside an upload, leaves chunks no description names; they take
//! space until the bucket is purged (nothing reads them).

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, object_store as nats_objects};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use herald_backend::Result as BackendResult;
use nats_objects::ObjectInfo;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RenameTargetMode, UploadPart,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::{NatsBackend, unavailable};

/// Bytes per chunk message (NATS's own default).
pub const CHUNK_BYTES: usize = 128 * 1024;
/// Chunks published ahead of their acknowledgements.
const ACKS_IN_FLIGHT: usize = 32;
/// The name errors carry.
const STORE: &str = "NATS object store";

/// A JetStream object store bucket as an [`ObjectStore`].
#[derive(Clone)]
pub struct NatsBlobs {
    inner: Arc<Shared>,
}

struct Shared {
    js: jetstream::Context,
    bucket: String,
    objects: nats_objects::ObjectStore,
    stream: jetstream::stream::Stream,
}

impl fmt::Debug for NatsBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBlobs")
            .field("bucket", &self.inner.bucket)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for NatsBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NatsBlobs({})", self.inner.bucket)
    }
}

impl NatsBackend {
    /// The system's blob bucket (`<prefix>-blobs`), created with the
    /// backend's replicas if missing.
    pub async fn blobs(&self) -> BackendResult<NatsBlobs> {
        let inner = &self.inner;
        let bucket = inner.names.blob_bucket();
        let objects = inner
            .js
            .create_object_store(nats_objects::Config {
                bucket: bucket.clone(),
                description: Some("Herald blobs".into()),
                num_replicas: inner.replicas,
                ..nats_objects::Config::default()
            })
            .await
            .map_err(|error| unavailable("create the blob bucket", error))?;
        let stream = inner
            .js
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|error| unavailable("open the blob bucket's stream", error))?;
        Ok(NatsBlobs {
            inner: Arc::new(Shared {
                js: inner.js.clone(),
                bucket,
                objects,
                stream,
            }),
        })
    }
}

fn generic(error: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(error),
    }
}

fn generic_message(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: message.into(),
    }
}

fn not_found(location: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: location.to_string(),
        source: format!("no object {location} in the bucket").into(),
    }
}

fn meta_of(info: &ObjectInfo) -> ObjectMeta {
    let modified = info.modified.map_or(0, |at| {
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    });
    ObjectMeta {
        location: Path::from(info.name.as_str()),
        last_modified: chrono::DateTime::from_timestamp_millis(modified).unwrap_or_default(),
        size: info.size as u64,
        e_tag: Some(info.nuid.clone()),
        version: None,
    }
}

impl Shared {
    fn chunk_subject(&self, nuid: &str) -> String {
        format!("$O.{}.C.{nuid}", self.bucket)
    }

    fn meta_subject(&self, name: &str) -> String {
        format!("$O.{}.M.{}", self.bucket, URL_SAFE.encode(name))
    }

    /// The description of `location`, `None` if there is none.
    async fn info(&self, location: &Path) -> object_store::Result<Option<ObjectInfo>> {
        match self.objects.info(location.as_ref()).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(error) if error.kind() == nats_objects::InfoErrorKind::NotFound => Ok(None),
            Err(error) => Err(generic(error)),
        }
    }

    /// Writes `info` as the description of its name (replacing any).
    async fn describe(&self, info: &ObjectInfo) -> object_store::Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        let body = serde_json::to_vec(info).map_err(generic)?;
        self.js
            .publish_with_headers(self.meta_subject(&info.name), headers, body.into())
            .await
            .map_err(generic)?
            .await
            .map_err(generic)?;
        Ok(())
    }

    async fn purge(&self, subject: String) -> object_store::Result<()> {
        self.stream
            .purge()
            .filter(subject)
            .await
            .map_err(generic)
            .map(drop)
    }
}

/// What an upload's writer task is told, in call order.
enum Command {
    Part(PutPayload, oneshot::Sender<object_store::Result<()>>),
    Complete(oneshot::Sender<object_store::Result<PutResult>>),
}

/// One upload: parts go to a writer task in the order `put_part` is called
/// (the chunks' order is the object's order), whatever order their futures
/// are polled in.
struct Upload {
    commands: mpsc::UnboundedSender<Command>,
    location: Path,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

fn writer_gone() -> object_store::Error {
    generic_message("the upload's writer stopped".into())
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (answer, answered) = oneshot::channel();
        let sent = self.commands.send(Command::Part(data, answer));
        Box::pin(async move {
            sent.map_err(|_| writer_gone())?;
            answered.await.map_err(|_| writer_gone())?
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let (answer, answered) = oneshot::channel();
        self.commands
            .send(Command::Complete(answer))
            .map_err(|_| writer_gone())?;
        answered.await.map_err(|_| writer_gone())?
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        // Closing the channel ends the writer, which purges the chunks.
        let (closed, _) = mpsc::unbounded_channel();
        self.commands = closed;
        Ok(())
    }
}

/// Writes one upload's chunks as its parts arrive and, on completion, its
/// description; ended without completion (aborted, dropped, a failed
/// part), it purges what it wrote.
struct Writer {
    shared: Arc<Shared>,
    name: String,
    nuid: String,
    subject: String,
    hash: Sha256,
    size: usize,
    chunks: usize,
    /// Bytes of the current, not yet full, chunk.
    pending: BytesMut,
    acks: VecDeque<jetstream::context::PublishAckFuture>,
}

impl Writer {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut failed = false;
        while let Some(command) = commands.recv().await {
            match command {
                Command::Part(data, answer) => {
                    let written = if failed {
                        Err(generic_message("an earlier part failed".into()))
                    } else {
                        self.part(data).await
                    };
                    failed |= written.is_err();
                    let _ = answer.send(written);
                }
                Command::Complete(answer) => {
                    let completed = if failed {
                        Err(generic_message("a part failed".into()))
                    } else {
                        self.complete().await
                    };
                    let done = completed.is_ok();
                    let _ = answer.send(completed);
                    if done {
                        return;
                    }
                    failed = true;
                }
            }
        }
        // Not completed: nothing of it may stay.
        self.acks.clear();
        if let Err(error) = self.shared.purge(self.subject.clone()).await {
            warn!(%error, object = self.name, "Could not purge an unfinished blob upload's chunks.");
        }
    }

    async fn part(&mut self, data: PutPayload) -> object_store::Result<()> {
        for piece in data.iter() {
            self.hash.update(piece);
            self.size += piece.len();
            let mut rest = piece.clone();
            while !rest.is_empty() {
                let room = CHUNK_BYTES - self.pending.len();
                if self.pending.is_empty() && rest.len() >= CHUNK_BYTES {
                    let chunk = rest.split_to(CHUNK_BYTES);
                    self.publish(chunk).await?;
                    continue;
                }
                let take = room.min(rest.len());
                self.pending.extend_from_slice(&rest.split_to(take));
                if self.pending.len() == CHUNK_BYTES {
                    let chunk = self.pending.split().freeze();
                    self.publish(chunk).await?;
                }
            }
        }
        self.settle(0).await
    }

    async fn publish(&mut self, chunk: Bytes) -> object_store::Result<()> {
        self.settle(ACKS_IN_FLIGHT - 1).await?;
        let ack = self
            .shared
            .js
            .publish(self.subject.clone(), chunk)
            .await
            .map_err(generic)?;
        self.acks.push_back(ack);
        self.chunks += 1;
        Ok(())
    }

    /// Awaits acknowledgements until at most `left` are outstanding.
    async fn settle(&mut self, left: usize) -> object_store::Result<()> {
        while self.acks.len() > left {
            if let Some(ack) = self.acks.pop_front() {
                ack.await.map_err(generic)?;
            }
        }
        Ok(())
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if !self.pending.is_empty() {
            let chunk = self.pending.split().freeze();
            self.publish(chunk).await?;
        }
        self.settle(0).await?;
        let location = Path::from(self.name.as_str());
        let replaced = self.shared.info(&location).await?;
        let digest = std::mem::take(&mut self.hash).finalize();
        let info = ObjectInfo {
            name: self.name.clone(),
            description: None,
            metadata: std::collections::HashMap::new(),
            headers: None,
            options: Some(nats_objects::ObjectOptions {
                link: None,
                max_chunk_size: Some(CHUNK_BYTES),
            }),
            bucket: self.shared.bucket.clone(),
            nuid: self.nuid.clone(),
            size: self.size,
            chunks: self.chunks,
            modified: Some(time::OffsetDateTime::now_utc()),
            digest: Some(format!("SHA-256={}", URL_SAFE.encode(digest))),
            deleted: false,
        };
        self.shared.describe(&info).await?;
        if let Some(old) = replaced.filter(|old| old.nuid != self.nuid) {
            self.shared
                .purge(self.shared.chunk_subject(&old.nuid))
                .await?;
        }
        Ok(PutResult {
            e_tag: Some(self.nuid.clone()),
            version: None,
            extensions: Default::default(),
        })
    }
}

impl NatsBlobs {
    fn upload(&self, location: &Path) -> Upload {
        let nuid = uuid::Uuid::now_v7().simple().to_string();
        let (commands, received) = mpsc::unbounded_channel();
        let writer = Writer {
            shared: Arc::clone(&self.inner),
            name: location.to_string(),
            subject: self.inner.chunk_subject(&nuid),
            nuid,
            hash: Sha256::new(),
            size: 0,
            chunks: 0,
            pending: BytesMut::with_capacity(CHUNK_BYTES),
            acks: VecDeque::new(),
        };
        tokio::spawn(writer.run(received));
        Upload {
            commands,
            location: location.clone(),
        }
    }
}

/// The bytes of `range` from `stream`, which starts at offset 0: what
/// comes before is read and dropped, what comes after is not read.
fn window(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    futures::stream::unfold((stream, 0_u64), move |(mut stream, mut at)| {
        let range = range.clone();
        async move {
            while at < range.end {
                let mut bytes = match stream.next().await? {
                    Ok(bytes) => bytes,
                    Err(error) => return Some((Err(error), (stream, u64::MAX))),
                };
                let start = at;
                at += bytes.len() as u64;
                if at <= range.start {
                    continue;
                }
                let from = usize::try_from(range.start.saturating_sub(start)).unwrap_or(0);
                let to = usize::try_from(range.end.min(at) - start).unwrap_or(bytes.len());
                bytes.truncate(to);
                return Some((Ok(bytes.split_off(from)), (stream, at)));
            }
            None
        }
    })
    .boxed()
}

#[async_trait]
impl ObjectStore for NatsBlobs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let mut upload = self.upload(location);
        upload.put_part(payload).await?;
        upload.complete().await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(self.upload(location)))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let Some(info) = self.inner.info(location).await? else {
            return Err(not_found(location));
        };
        let meta = meta_of(&info);
        options.check_preconditions(&meta)?;
        let range = match &options.range {
            Some(range) => range.as_range(meta.size).map_err(generic)?,
            None => 0..meta.size,
        };
        let payload = if options.head {
            futures::stream::empty().boxed()
        } else {
            let object = match self.inner.objects.get(location.as_ref()).await {
                Ok(object) => object,
                Err(error) if error.kind() == nats_objects::GetErrorKind::NotFound => {
                    return Err(not_found(location));
                }
                Err(error) => return Err(generic(error)),
            };
            let bytes = tokio_util::io::ReaderStream::with_capacity(object, CHUNK_BYTES)
                .map_err(generic)
                .boxed();
            if range == (0..meta.size) {
                bytes
            } else {
                window(bytes, range.clone())
            }
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Attributes::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let shared = Arc::clone(&self.inner);
        locations
            .and_then(move |location| {
                let shared = Arc::clone(&shared);
                async move {
                    // async-nats writes the tombstone first, then purges
                    // the chunks: a crash in between leaves no reader a
                    // description of chunks that are gone.
                    match shared.objects.delete(location.as_ref()).await {
                        Ok(()) => Ok(location),
                        Err(error) if error.kind() == nats_objects::DeleteErrorKind::NotFound => {
                            Err(not_found(&location))
                        }
                        Err(error) => Err(generic(error)),
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let shared = Arc::clone(&self.inner);
        let prefix = prefix.map(|prefix| format!("{prefix}/"));
        futures::stream::once(async move { shared.objects.list().await.map_err(generic) })
            .map_ok(|listing| listing.map_err(generic))
            .try_flatten()
            .try_filter_map(move |info| {
                let keep = prefix
                    .as_deref()
                    .is_none_or(|prefix| info.name.starts_with(prefix));
                futures::future::ready(Ok(keep.then(|| meta_of(&info))))
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let base = prefix
            .map(|prefix| format!("{prefix}/"))
            .unwrap_or_default();
        let mut objects = Vec::new();
        let mut common_prefixes = std::collections::BTreeSet::new();
        let mut listing = self.list(prefix);
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let rest = meta.location.as_ref()[base.len()..].to_owned();
            match rest.split_once('/') {
                Some((directory, _)) => {
                    common_prefixes.insert(Path::from(format!("{base}{directory}")));
                }
                None => objects.push(meta),
            }
        }
        Ok(ListResult {
            common_prefixes: common_prefixes.into_iter().collect(),
            objects,
            extensions: Default::default(),
        })
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(object_store::Error::NotImplemented {
            operation: format!("copy {from} to {to} (blobs are renamed, never copied)"),
            implementer: STORE.into(),
        })
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let Some(mut info) = self.inner.info(from).await? else {
            return Err(not_found(from));
        };
        let replaced = self.inner.info(to).await?;
        if replaced.is_some() && options.target_mode == RenameTargetMode::Create {
            return Err(object_store::Error::AlreadyExists {
                path: to.to_string(),
                source: "the target exists".into(),
            });
        }
        info.name = to.to_string();
        info.modified = Some(time::OffsetDateTime::now_utc());
        // The new name first: a crash after it leaves both names, not none.
        self.inner.describe(&info).await?;
        if let Some(old) = replaced.filter(|old| old.nuid != info.nuid) {
            self.inner
                .purge(self.inner.chunk_subject(&old.nuid))
                .await?;
        }
        self.inner
            .purge(self.inner.meta_subject(from.as_ref()))
            .await
    }
}
