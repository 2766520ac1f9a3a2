//! Blob references, and why the blob collector cannot delete a blob under a
//! job that pins it.
//!
//! A job pins each blob it references in the `Kv` bucket `blob.refs`
//! (`<blob id>/<job id>`); the collector (herald-server) deletes blobs that
//! are old and unpinned. A plain check-then-delete races a new pin: a pin
//! written between the collector's reference check and its delete leaves a
//! job whose blob is gone. So both sides write first and check second:
//!
//! ```text
//! pin:        put blob.refs/<blob>/<job>  → wait while blob.collecting/<blob> exists → the blob exists?
//! collector:  put blob.collecting/<blob>  → no blob.refs/<blob>/… ?  → delete the blob → delete the marker
//! ```
//!
//! With a linearizable `Kv`, if the collector's reference check missed the
//! pin, the pin was written after the marker, so the pin's own check sees
//! the marker — or, once it is gone, finds the blob deleted. The pin then
//! fails and is removed, and the job is refused (`blob_not_found`) rather
//! than run without its blob. A pin that wins makes every later collection
//! pass skip the blob. A marker left by a collector that stopped midway is
//! finished by its next pass ([`collections_in_progress`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use herald_backend::{Backend, Expect};

use crate::error::{Error, Result};

/// The `Kv` bucket of blob references: `<blob id>/<job id>`.
pub const BLOB_REFS_BUCKET: &str = "blob.refs";
/// The `Kv` bucket of blobs the collector is deleting: `<blob id>`.
pub const BLOB_COLLECTING_BUCKET: &str = "blob.collecting";

/// How long a pin waits for a collection of its blob in progress to end.
const COLLECTION_WAIT: Duration = Duration::from_secs(5);
/// How often it looks.
const COLLECTION_POLL: Duration = Duration::from_millis(10);

/// A boxed future, for [`BlobStorage`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where blobs are stored, as the job service needs it: to check that a
/// blob it has just pinned is still there.
pub trait BlobStorage: Send + Sync + std::fmt::Debug {
    /// Whether the blob exists; `Err` with a description if storage failed.
    fn exists<'a>(&'a self, blob: &'a str) -> BoxFuture<'a, std::result::Result<bool, String>>;
}

/// Whether any job still references `blob` (a result or input blob of a
/// job whose record has not expired).
pub async fn blob_is_referenced(backend: &dyn Backend, blob: &str) -> Result<bool> {
    let keys = backend
        .kv_keys(BLOB_REFS_BUCKET, &format!("{blob}/"), None, 1)
        .await?;
    Ok(!keys.is_empty())
}

fn pin_key(blob: &str, job_id: &str) -> String {
    format!("{blob}/{job_id}")
}

/// Pins `blob` for `job_id`, then checks that it is still there and not
/// being collected (see the module docs); removes the pin again if not.
/// `field` names the blob in the error. Idempotent.
pub(crate) async fn pin(
    backend: &dyn Backend,
    storage: Option<&dyn BlobStorage>,
    blob: &str,
    job_id: &str,
    field: &str,
) -> Result<()> {
    backend
        .kv_put(
            BLOB_REFS_BUCKET,
            &pin_key(blob, job_id),
            Bytes::new(),
            Expect::Any,
        )
        .await?;
    let verified = verify(backend, storage, blob, field).await;
    if verified.is_err() {
        let _ = unpin(backend, blob, job_id).await;
    }
    verified
}

async fn verify(
    backend: &dyn Backend,
    storage: Option<&dyn BlobStorage>,
    blob: &str,
    field: &str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + COLLECTION_WAIT;
    while backend
        .kv_get(BLOB_COLLECTING_BUCKET, blob)
        .await?
        .is_some()
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(herald_backend::Error::Unavailable {
                detail: format!("blob {blob:?} is being collected; retry"),
            }
            .into());
        }
        tokio::time::sleep(COLLECTION_POLL).await;
    }
    let Some(storage) = storage else {
        return Ok(());
    };
    match storage.exists(blob).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::BlobNotFound {
            field: field.to_owned(),
            blob: blob.to_owned(),
        }),
        Err(detail) => Err(herald_backend::Error::Unavailable { detail }.into()),
    }
}

/// Removes `job_id`'s pin of `blob`.
pub(crate) async fn unpin(backend: &dyn Backend, blob: &str, job_id: &str) -> Result<()> {
    backend
        .kv_delete(BLOB_REFS_BUCKET, &pin_key(blob, job_id), Expect::Any)
        .await?;
    Ok(())
}

/// The collector claims `blob` for deletion. `true`: no job references it,
/// and none can pin it until [`end_collection`]: delete it, then call that.
/// `false`: a job references it; the claim is withdrawn.
pub async fn begin_collection(backend: &dyn Backend, blob: &str) -> Result<bool> {
    match backend
        .kv_put(BLOB_COLLECTING_BUCKET, blob, Bytes::new(), Expect::Absent)
        .await
    {
        // Present: left by a pass that stopped midway; this pass goes on.
        Ok(_) | Err(herald_backend::Error::RevisionMismatch { .. }) => {}
        Err(error) => return Err(error.into()),
    }
    if blob_is_referenced(backend, blob).await? {
        end_collection(backend, blob).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Ends a collection [`begin_collection`] started (the blob deleted, or
/// not: pins are allowed again either way).
pub async fn end_collection(backend: &dyn Backend, blob: &str) -> Result<()> {
    backend
        .kv_delete(BLOB_COLLECTING_BUCKET, blob, Expect::Any)
        .await?;
    Ok(())
}

/// Blobs whose collection began and did not end (the collector stopped
/// midway); the next pass finishes them.
pub async fn collections_in_progress(backend: &dyn Backend) -> Result<Vec<String>> {
    Ok(backend
        .kv_keys(BLOB_COLLECTING_BUCKET, "", None, 10_000)
        .await?)
}
