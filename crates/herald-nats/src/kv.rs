//! [`Kv`] on the NATS backend: every bucket in one stream, one message kept
//! per key (its subject); a key's revision is its message's stream
//! sequence, and compare-and-set is `Nats-Expected-Last-Subject-Sequence`.
//!
//! One stream rather than a JetStream KV bucket per Herald bucket, so that
//! a batch over several buckets ([`Kv::kv_put_many`]) is one atomic batch.
//! A delete writes a tombstone (`Herald-Op: del`, no payload) that expires
//! after [`TOMBSTONE_TTL`] (`Nats-TTL`); until then reads treat it as
//! absent, and a write that expects absence expects the tombstone.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use async_trait::async_trait;
use bytes::Bytes;
use herald_backend::{Error, Expect, Kv, KvDurability, KvEntry, Result};

use crate::api::{self, Failure, Outgoing};
use crate::{Inner, NatsBackend, found, unavailable};

/// How long a deleted key's tombstone stays (long enough for every node
/// to see the delete; then the key's subject is empty).
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

const OP: &str = "Herald-Op";

/// A key's last message: absent, a tombstone (at its sequence), or a value.
enum Last {
    Absent,
    Deleted(u64),
    Value(KvEntry),
}

impl Last {
    fn revision(&self) -> Option<u64> {
        match self {
            Self::Value(entry) => Some(entry.revision),
            Self::Absent | Self::Deleted(_) => None,
        }
    }

    /// The subject sequence a write that expects absence must name.
    fn absent_sequence(&self) -> Option<u64> {
        match self {
            Self::Absent => Some(0),
            Self::Deleted(sequence) => Some(*sequence),
            Self::Value(_) => None,
        }
    }
}

fn last_of(message: StreamMessage) -> Last {
    if message
        .headers
        .get(OP)
        .is_some_and(|op| op.as_str() == "del")
    {
        Last::Deleted(message.sequence)
    } else {
        Last::Value(KvEntry {
            value: message.payload,
            revision: message.sequence,
        })
    }
}

impl Inner {
    /// Creates the key-value stream, or brings its settings up to date.
    pub(crate) async fn ensure_kv_stream(&self) -> Result<()> {
        let config = Config {
            name: self.names.kv_stream(),
            subjects: vec![self.names.kv_subjects()],
            max_messages_per_subject: 1,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: self.replicas,
            allow_direct: true,
            allow_atomic_publish: true,
            allow_message_ttl: true,
            description: Some("Herald key-value state (all buckets)".into()),
            ..Config::default()
        };
        match self.js.get_stream(&config.name).await {
            Ok(_) => self
                .js
                .update_stream(&config)
                .await
                .map(drop)
                .map_err(|error| unavailable("update the key-value stream", error)),
            Err(_) => self
                .js
                .create_stream(config)
                .await
                .map(drop)
                .map_err(|error| unavailable("create the key-value stream", error)),
        }
    }

    async fn kv_last(&self, bucket: &str, key: &str) -> Result<Last> {
        self.check_open()?;
        let stream = self.stream(&self.names.kv_stream()).await?;
        let last = stream
            .direct_get_last_for_subject(self.names.kv_subject(bucket, key))
            .await;
        Ok(found(last, "key-value read")?.map_or(Last::Absent, last_of))
    }

    pub(crate) fn kv_message(&self, bucket: &str, key: &str, value: Option<Bytes>) -> Outgoing {
        let mut headers = HeaderMap::new();
        let payload = match value {
            Some(value) => value,
            None => {
                headers.insert(OP, "del");
                headers.insert("Nats-TTL", format!("{}s", TOMBSTONE_TTL.as_secs()));
                Bytes::new()
            }
        };
        Outgoing {
            subject: self.names.kv_subject(bucket, key),
            headers,
            payload,
        }
    }

    /// Writes `value` (a tombstone for `None`) at `key` if the key's last
    /// message is at `expected` (0: none); `Ok(None)` if it is not.
    async fn kv_write(
        &self,
        bucket: &str,
        key: &str,
        value: Option<Bytes>,
        expected: Option<u64>,
    ) -> Result<Option<u64>> {
        self.check_open()?;
        let mut message = self.kv_message(bucket, key, value);
        if let Some(expected) = expected {
            message
                .headers
                .insert("Nats-Expected-Last-Subject-Sequence", expected.to_string());
        }
        match api::publish(&self.client, message, self.timeout()).await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(Failure::Api(error)) if error.is_wrong_last_sequence() => Ok(None),
            Err(error) => Err(unavailable("key-value write", error)),
        }
    }

    fn mismatch(key: &str, expected: Option<u64>, current: &Last) -> Error {
        Error::RevisionMismatch {
            key: key.to_owned(),
            expected,
            current: current.revision(),
        }
    }
}

/// How many times a write that lost a race with a tombstone's arrival or
/// expiry reads the key again before giving up.
const RETRIES: usize = 8;

/// The operations of [`Kv`], on the backend's shared state (the topic
/// catalogue uses them too).
impl Inner {
    pub(crate) async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>> {
        Ok(match self.kv_last(bucket, key).await? {
            Last::Value(entry) => Some(entry),
            Last::Absent | Last::Deleted(_) => None,
        })
    }

    pub(crate) async fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expect: Expect,
    ) -> Result<u64> {
        let inner = self;
        match expect {
            Expect::Any => {
                let written = inner.kv_write(bucket, key, Some(value), None).await?;
                written.ok_or_else(|| unavailable("key-value write", "refused"))
            }
            Expect::Revision(revision) => {
                match inner
                    .kv_write(bucket, key, Some(value), Some(revision))
                    .await?
                {
                    Some(written) => Ok(written),
                    None => {
                        let current = inner.kv_last(bucket, key).await?;
                        Err(Inner::mismatch(key, Some(revision), &current))
                    }
                }
            }
            Expect::Absent => {
                // A tombstone counts as absent: expect it, or nothing once
                // it has expired.
                let mut last = Last::Absent;
                for _ in 0..RETRIES {
                    let Some(expected) = last.absent_sequence() else {
                        return Err(Inner::mismatch(key, None, &last));
                    };
                    if let Some(written) = inner
                        .kv_write(bucket, key, Some(value.clone()), Some(expected))
                        .await?
                    {
                        return Ok(written);
                    }
                    last = inner.kv_last(bucket, key).await?;
                }
                Err(unavailable(
                    "key-value write",
                    format!("{key:?} kept changing"),
                ))
            }
        }
    }

    pub(crate) async fn kv_put_many(
        &self,
        entries: Vec<(String, String, Bytes)>,
        durability: KvDurability,
    ) -> Result<()> {
        // JetStream acknowledges a message once stored: both durabilities
        // are met the same way.
        let _ = durability;
        self.check_open()?;
        let messages: Vec<Outgoing> = entries
            .into_iter()
            .map(|(bucket, key, value)| self.kv_message(&bucket, &key, Some(value)))
            .collect();
        self.kv_batches(messages).await
    }

    pub(crate) async fn kv_delete(&self, bucket: &str, key: &str, expect: Expect) -> Result<bool> {
        let inner = self;
        for _ in 0..RETRIES {
            let last = inner.kv_last(bucket, key).await?;
            let revision = match (&last, expect) {
                (Last::Value(entry), Expect::Any) => entry.revision,
                (Last::Value(entry), Expect::Revision(expected)) if entry.revision == expected => {
                    expected
                }
                (Last::Absent | Last::Deleted(_), Expect::Any | Expect::Absent) => {
                    return Ok(false);
                }
                (_, Expect::Revision(expected)) => {
                    return Err(Inner::mismatch(key, Some(expected), &last));
                }
                (Last::Value(_), Expect::Absent) => return Err(Inner::mismatch(key, None, &last)),
            };
            if inner
                .kv_write(bucket, key, None, Some(revision))
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Err(unavailable(
            "key-value delete",
            format!("{key:?} kept changing"),
        ))
    }

    pub(crate) async fn kv_delete_many(&self, entries: Vec<(String, String)>) -> Result<u64> {
        let mut messages = Vec::new();
        for (bucket, key) in entries {
            if let Last::Value(_) = self.kv_last(&bucket, &key).await? {
                messages.push(self.kv_message(&bucket, &key, None));
            }
        }
        let deleted = messages.len() as u64;
        self.kv_batches(messages).await?;
        Ok(deleted)
    }

    /// Keys of `bucket` starting with `prefix`, after `after`, in order:
    /// one pass over the bucket's messages (batched direct gets filtered by
    /// the bucket's subjects; one message per key, so a tombstone is seen
    /// as such without reading its key again).
    pub(crate) async fn kv_keys(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.check_open()?;
        let stream = self.names.kv_stream();
        let filter = self.names.kv_bucket_filter(bucket);
        let mut keys = Vec::new();
        let mut from = 1;
        loop {
            let messages = api::direct_get_batch(
                &self.client,
                self.api_prefix(),
                api::Batch {
                    stream: &stream,
                    start: api::Start::Sequence(from),
                    max: KEYS_BATCH,
                    max_bytes: None,
                    subject: Some(&filter),
                },
                self.timeout(),
            )
            .await
            .map_err(|error| unavailable("key-value listing", error))?;
            let Some(last) = messages.last() else {
                break;
            };
            from = last.sequence + 1;
            for message in messages {
                let Some(key) = self.names.kv_key(bucket, &message.subject) else {
                    continue;
                };
                if key.starts_with(prefix)
                    && after.is_none_or(|after| key.as_str() > after)
                    && matches!(last_of(message), Last::Value(_))
                {
                    keys.push(key);
                }
            }
        }
        keys.sort_unstable();
        keys.truncate(limit);
        Ok(keys)
    }
}

/// Messages per batched direct get of a key listing.
const KEYS_BATCH: usize = 1000;

#[async_trait]
impl Kv for NatsBackend {
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>> {
        self.inner.kv_get(bucket, key).await
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes, expect: Expect) -> Result<u64> {
        self.inner.kv_put(bucket, key, value, expect).await
    }

    async fn kv_put_many(
        &self,
        entries: Vec<(String, String, Bytes)>,
        durability: KvDurability,
    ) -> Result<()> {
        self.inner.kv_put_many(entries, durability).await
    }

    async fn kv_delete(&self, bucket: &str, key: &str, expect: Expect) -> Result<bool> {
        self.inner.kv_delete(bucket, key, expect).await
    }

    async fn kv_delete_many(&self, entries: Vec<(String, String)>) -> Result<u64> {
        self.inner.kv_delete_many(entries).await
    }

    async fn kv_keys(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.inner.kv_keys(bucket, prefix, after, limit).await
    }
}

impl Inner {
    /// Stores `messages` in atomic batches of at most [`api::MAX_BATCH`]
    /// (one batch, all or nothing, for up to that many).
    async fn kv_batches(&self, mut messages: Vec<Outgoing>) -> Result<()> {
        while !messages.is_empty() {
            let rest = messages.split_off(messages.len().min(api::MAX_BATCH));
            api::publish_batch(&self.client, messages, self.timeout())
                .await
                .map_err(|error| unavailable("key-value batch", error))?;
            messages = rest;
        }
        Ok(())
    }
}

/// One write of [`Inner::kv_write_many`]: `value` (a delete for `None`) at
/// `key` of `bucket`, if the key is as `expect` says.
#[derive(Debug)]
pub(crate) struct KvWrite {
    pub bucket: &'static str,
    pub key: String,
    pub value: Option<Bytes>,
    pub expect: Expect,
}

impl Inner {
    /// Writes `writes` in one atomic batch (at most [`api::MAX_BATCH`]),
    /// each under its expectation: `Ok(Some(revision))` of the last write,
    /// or `Ok(None)` if an expectation failed (nothing was written).
    pub(crate) async fn kv_write_many(&self, writes: Vec<KvWrite>) -> Result<Option<u64>> {
        self.check_open()?;
        let mut messages = Vec::with_capacity(writes.len());
        for write in writes {
            let expected = match write.expect {
                Expect::Any => None,
                Expect::Revision(revision) => Some(revision),
                Expect::Absent => {
                    match self
                        .kv_last(write.bucket, &write.key)
                        .await?
                        .absent_sequence()
                    {
                        Some(sequence) => Some(sequence),
                        None => return Ok(None),
                    }
                }
            };
            let mut message = self.kv_message(write.bucket, &write.key, write.value);
            if let Some(expected) = expected {
                message
                    .headers
                    .insert("Nats-Expected-Last-Subject-Sequence", expected.to_string());
            }
            messages.push(message);
        }
        match api::publish_batch(&self.client, messages, self.timeout()).await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(Failure::Api(error)) if error.is_wrong_last_sequence() => Ok(None),
            Err(error) => Err(unavailable("key-value batch", error)),
        }
    }
}
