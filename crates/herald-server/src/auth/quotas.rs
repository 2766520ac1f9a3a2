//! Quotas per identity: topics and partitions created (`max_topics`,
//! `max_partitions` of [`super::limits::Limits`]) and blob bytes uploaded
//! (`max_blob_bytes`).
//!
//! Bookkeeping in the backend's `Kv` (bucket [`BUCKET`]), so it survives
//! restarts and works on any backend:
//!
//! ```text
//! topic/<topic>               → the identity that created it
//! owned/<identity>/<topic>    → its partitions
//! blob/<identity>/<blob id>   → its size (what the identity uploaded)
//! blob-owner/<blob id>/<identity>   (so the collector can forget a blob)
//! ```
//!
//! An upload may take what is left of the identity's blob quota; past it,
//! it is cut off (409 `limit_exceeded`, nothing kept). The check is made
//! when the upload starts, so uploads of one identity running at the same
//! time can together pass the quota by what each was allowed.
//!
//! A create first reserves (writes both records; `topic/<topic>` only if
//! absent), then counts the identity's `owned/` records: over a quota, the
//! reservation is removed and the create refused (409 `limit_exceeded`,
//! nothing created). Concurrent creates of one identity each count the
//! other's reservation, so together they can never pass the quota (at
//! worst both are refused). A create that then fails releases its
//! reservation; a delete releases the topic's. With auth off nothing is
//! recorded. Topics the server makes itself (`jobs.<queue>`,
//! `herald.audit`) count for no one.

use bytes::Bytes;
use herald_backend::{Backend, Error as BackendError, Expect, Kv, TopicInfo, TopicSpec};
use herald_types::TopicName;

use super::Caller;
use super::permissions::Action;
use crate::problem::{Code, Problem};

/// The `Kv` bucket of the bookkeeping.
pub const BUCKET: &str = "auth.usage";

/// Creates the topic `spec` describes for `caller` within its quotas (REST
/// and gRPC both come here): reserve, create, release if the create fails.
pub async fn create_topic(
    backend: &dyn Backend,
    caller: &Caller,
    spec: TopicSpec,
) -> Result<TopicInfo, Problem> {
    let name = spec.name.clone();
    let reserved = reserve_topic(backend, caller, name.as_str(), spec.partitions).await?;
    match backend.create_topic(spec).await {
        Ok(info) => Ok(info),
        Err(error) => {
            if reserved {
                release_topic(backend, name.as_str()).await;
            }
            Err(error.into())
        }
    }
}

/// Deletes `topic` for `caller` (REST and gRPC both come here): its quota
/// is released and the delete audited.
pub async fn delete_topic(
    backend: &dyn Backend,
    caller: &Caller,
    topic: &TopicName,
) -> Result<(), Problem> {
    backend.delete_topic(topic).await?;
    release_topic(backend, topic.as_str()).await;
    caller
        .audit(
            "topic.deleted",
            Some(Action::TopicsManage),
            topic.as_str(),
            serde_json::Value::Null,
        )
        .await;
    Ok(())
}

/// Reserves `topic` with `partitions` for the caller, or refuses with 409
/// `limit_exceeded` when it would pass the caller's quotas. Returns whether
/// a reservation was made (none with auth off, or when the topic is
/// someone's already: the create then answers `topic_exists`).
pub async fn reserve_topic(
    kv: &dyn Kv,
    caller: &Caller,
    topic: &str,
    partitions: u32,
) -> Result<bool, Problem> {
    let Some(identity) = caller.accounted() else {
        return Ok(false);
    };
    let owner = Bytes::from(identity.to_owned());
    match kv
        .kv_put(BUCKET, &format!("topic/{topic}"), owner, Expect::Absent)
        .await
    {
        Ok(_) => {}
        Err(BackendError::RevisionMismatch { .. }) => return Ok(false),
        Err(error) => return Err(error.into()),
    }
    let owned = format!("owned/{identity}/{topic}");
    if let Err(error) = kv
        .kv_put(
            BUCKET,
            &owned,
            Bytes::from(partitions.to_string()),
            Expect::Any,
        )
        .await
    {
        release_topic(kv, topic).await;
        return Err(error.into());
    }
    let limits = caller.principal.limits();
    let (topics, total) = match usage(kv, identity).await {
        Ok(usage) => usage,
        Err(error) => {
            release_topic(kv, topic).await;
            return Err(error.into());
        }
    };
    let over = if limits.max_topics > 0 && topics > u64::from(limits.max_topics) {
        Some(("max_topics", limits.max_topics))
    } else if limits.max_partitions > 0 && total > u64::from(limits.max_partitions) {
        Some(("max_partitions", limits.max_partitions))
    } else {
        None
    };
    if let Some((key, max)) = over {
        release_topic(kv, topic).await;
        return Err(Problem::new(
            Code::LimitExceeded,
            format!(
                "topic \"{topic}\" would exceed {identity}'s {key} = {max}; delete some of its topics first, or ask for a higher limit"
            ),
        )
        .with("limit", serde_json::json!(key)));
    }
    Ok(true)
}

/// Forgets `topic`'s reservation (its creator's count goes down). Best
/// effort: a failure is logged, and at worst over-counts.
pub async fn release_topic(kv: &dyn Kv, topic: &str) {
    let key = format!("topic/{topic}");
    let owner = match kv.kv_get(BUCKET, &key).await {
        Ok(Some(entry)) => String::from_utf8_lossy(&entry.value).into_owned(),
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, topic, "Cannot read a topic's owner; its quota stays counted.");
            return;
        }
    };
    let owned = format!("owned/{owner}/{topic}");
    for key in [owned.as_str(), key.as_str()] {
        if let Err(error) = kv.kv_delete(BUCKET, key, Expect::Any).await {
            tracing::warn!(%error, topic, "Cannot release a topic's quota.");
        }
    }
}

/// What is left of the caller's blob quota: `None` when it has none (or
/// auth is off), 409 `limit_exceeded` when nothing is left.
pub async fn blob_allowance(kv: &dyn Kv, caller: &Caller) -> Result<Option<u64>, Problem> {
    let max = caller.principal.limits().max_blob_bytes;
    let Some(identity) = caller.accounted().filter(|_| max > 0) else {
        return Ok(None);
    };
    let (_, used) = sum(kv, &format!("blob/{identity}/")).await?;
    match max.checked_sub(used).filter(|left| *left > 0) {
        Some(left) => Ok(Some(left)),
        None => Err(blob_quota_exceeded(identity, max)),
    }
}

/// 409 `limit_exceeded`: an upload past the identity's `max_blob_bytes`.
pub fn blob_quota_exceeded(identity: &str, max: u64) -> Problem {
    Problem::new(
        Code::LimitExceeded,
        format!("the upload would exceed {identity}'s max_blob_bytes = {max}; nothing was kept"),
    )
    .with("limit", serde_json::json!("max_blob_bytes"))
}

/// Counts blob `id` of `size` bytes against the caller (once, however
/// often it uploads the same bytes). Best effort: a failure is logged.
pub async fn record_blob(kv: &dyn Kv, caller: &Caller, id: &str, size: u64) {
    let Some(identity) = caller.accounted() else {
        return;
    };
    let records = [
        (format!("blob/{identity}/{id}"), size.to_string()),
        (format!("blob-owner/{id}/{identity}"), String::new()),
    ];
    for (key, value) in records {
        if let Err(error) = kv
            .kv_put(BUCKET, &key, Bytes::from(value), Expect::Any)
            .await
        {
            tracing::warn!(%error, blob = id, "Cannot count a blob against its uploader's quota.");
        }
    }
}

/// Forgets blob `id` (the collector removed it): its uploaders' counts go
/// down. Best effort: a failure is logged, and at worst over-counts.
pub async fn forget_blob(kv: &dyn Kv, id: &str) {
    let prefix = format!("blob-owner/{id}/");
    let owners = match kv.kv_keys(BUCKET, &prefix, None, 10_000).await {
        Ok(owners) => owners,
        Err(error) => {
            tracing::warn!(%error, blob = id, "Cannot read a blob's uploaders; their quotas stay counted.");
            return;
        }
    };
    for owner_key in owners {
        let identity = owner_key.trim_start_matches(&prefix).to_owned();
        for key in [format!("blob/{identity}/{id}"), owner_key] {
            if let Err(error) = kv.kv_delete(BUCKET, &key, Expect::Any).await {
                tracing::warn!(%error, blob = id, "Cannot release a blob's quota.");
            }
        }
    }
}

/// The identity's topics and their partitions.
async fn usage(kv: &dyn Kv, identity: &str) -> Result<(u64, u64), BackendError> {
    sum(kv, &format!("owned/{identity}/")).await
}

/// How many records start with `prefix`, and the sum of their numbers.
async fn sum(kv: &dyn Kv, prefix: &str) -> Result<(u64, u64), BackendError> {
    let (mut topics, mut partitions) = (0_u64, 0_u64);
    let mut after: Option<String> = None;
    loop {
        let keys = kv.kv_keys(BUCKET, prefix, after.as_deref(), 1_000).await?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        for key in &keys {
            if let Some(entry) = kv.kv_get(BUCKET, key).await? {
                topics += 1;
                partitions += String::from_utf8_lossy(&entry.value)
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
        after = Some(last);
    }
    Ok((topics, partitions))
}
