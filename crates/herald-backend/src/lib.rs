//! The backend boundary: where topics, events, consumer groups and small
//! durable state live.
//!
//! Services (jobs, workflows, webhooks) and the gateway talk to storage only
//! through [`Backend`]. Two backends implement it — `herald-embedded` (the
//! default: Herald's own log plus redb) and, later, `herald-nats` (JetStream) —
//! and both run the same conformance suite (`conformance`, feature
//! `test-util`), so the semantics below are held by tests, not by prose alone.
//!
//! The doc comment of each method is its contract. Common to all:
//!
//! - Calls are cancel-safe to drop: an operation of several steps either
//!   completes or leaves nothing behind when its caller goes away (the
//!   embedded backend finishes such steps with [`cancel::run_to_completion`]).
//!   A dropped `publish` may still have been applied: the caller must treat
//!   it as unknown and re-publish with the same event ids, which answers in
//!   its normal time with the original position (deduplication makes that
//!   safe).
//! - Bad input returns [`Error::InvalidArgument`] (or a more specific variant)
//!   and changes nothing.
//! - Errors say whether retrying can help ([`Error::is_retryable`]).

pub mod cancel;
pub mod error;
pub mod group;
pub mod kv;
pub mod lease;
pub mod stream;
pub mod topic;

#[cfg(feature = "test-util")]
pub mod conformance;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_types::{EventInput, GroupName, StoredEvent, StreamId, TopicName};
use serde::Serialize;

pub use error::{Error, Result};
pub use group::{
    AckDurability, AckOutcome, CommitRequest, DeadLetter, Delivery, FetchRequest, FetchResponse,
    GroupCounters, GroupFilter, GroupInfo, GroupMode, GroupPartitionStatus, GroupSpec, GroupStatus,
    MemberStatus, OrderBy, PartitionOffset, StartPosition,
};
pub use kv::{Expect, KvDurability, KvEntry};
pub use stream::{AppendResult, Direction, ExpectedVersion, Snapshot, StreamMetadata, StreamSlice};
pub use topic::{
    Fsync, PartitionInfo, RetentionSpec, TopicDescription, TopicInfo, TopicSpec, TopicUpdate,
};

/// Where one published event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishResult {
    /// The event's id (assigned by Herald if the publisher gave none).
    pub id: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Whether the id was seen within the dedup window: the position is the
    /// original one and nothing was appended.
    pub duplicate: bool,
}

/// Events read from one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadResult {
    /// The events, in offset order, from the offset asked for.
    pub events: Vec<StoredEvent>,
    /// The offset to read next.
    pub next_offset: u64,
}

/// Topics: create, list, describe, change, delete.
#[async_trait]
pub trait Topics: Send + Sync {
    /// Creates a topic. Durable when it returns: the topic survives a
    /// restart. [`Error::TopicExists`] if the name is taken.
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicInfo>;

    /// Every topic, by name.
    async fn list_topics(&self) -> Result<Vec<TopicInfo>>;

    /// A topic with its partitions' extents.
    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicDescription>;

    /// Changes retention, limits or the dead-letter topic.
    async fn update_topic(&self, topic: &TopicName, update: TopicUpdate) -> Result<TopicInfo>;

    /// Deletes a topic, its events and its groups.
    async fn delete_topic(&self, topic: &TopicName) -> Result<()>;
}

/// Publishing and reading events.
#[async_trait]
pub trait Events: Send + Sync {
    /// Appends `events` to `topic`, each to its explicit partition, else the
    /// partition of its key ([`herald_types::partition_for_key`]), else round
    /// robin. Returns one result per event, in order, only once every appended
    /// event is durable under the topic's fsync policy.
    ///
    /// - All events are validated first (size, partition); any invalid event
    ///   fails the whole call and nothing is appended.
    /// - The events of one call that land in one partition are appended
    ///   atomically and contiguously, in call order.
    /// - An event whose id was published to the topic within the dedup window
    ///   (also before a restart, also earlier in the same call) is not
    ///   appended again: its result carries the original position and
    ///   `duplicate = true`.
    async fn publish(
        &self,
        topic: &TopicName,
        events: Vec<EventInput>,
    ) -> Result<Vec<PublishResult>>;

    /// Reads up to `max` events of one partition from offset `from`.
    /// [`Error::OffsetOutOfRange`] if `from` was removed by retention; an
    /// empty result at the end. Offsets of events erased by a hard stream
    /// delete are skipped, so offsets in a result may have gaps.
    async fn read(
        &self,
        topic: &TopicName,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadResult>;

    /// Reads the events with a `correlationid` or a `causationid` among the
    /// next `max` offsets of one partition from `from` (what the lineage
    /// index files); `next_offset` follows the last offset looked at, so a
    /// partition without such events is still walked `max` at a time.
    /// Errors as [`Events::read`]. The default reads every event and keeps
    /// those; a backend that can tell them apart before decoding does so.
    async fn read_correlated(
        &self,
        topic: &TopicName,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadResult> {
        let mut read = self.read(topic, partition, from, max).await?;
        read.events.retain(|stored| stored.event.is_correlated());
        Ok(read)
    }

    /// The offset of the first event of the partition appended at or after
    /// `time_ms`, or the end offset.
    async fn offset_for_time(&self, topic: &TopicName, partition: u32, time_ms: i64)
    -> Result<u64>;

    /// Waits until the partition has an event at `offset` or later, or until
    /// `timeout`; returns the partition's end offset then.
    async fn wait_for(
        &self,
        topic: &TopicName,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64>;
}

/// Consumer groups in stream, queue and keyed mode.
#[async_trait]
pub trait Groups: Send + Sync {
    /// Creates a group, or updates the settings of an existing one (its mode
    /// cannot change: [`Error::GroupConflict`]). Returns the group and whether
    /// it was created. Durable when it returns.
    async fn put_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        spec: GroupSpec,
    ) -> Result<(GroupInfo, bool)>;

    /// The topic's groups, by name (an unknown topic: [`Error::TopicNotFound`]).
    async fn list_groups(&self, topic: &TopicName) -> Result<Vec<GroupInfo>>;

    /// The group's members, positions, lag, in-flight and dead-letter counts.
    async fn group_status(&self, topic: &TopicName, group: &GroupName) -> Result<GroupStatus>;

    /// Deletes the group and its state.
    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<()>;

    /// Hands out up to `max` deliveries to `member`, waiting up to `wait_ms`
    /// for the first. Fetching is also the member's heartbeat.
    ///
    /// - stream: the member's assigned partitions are read in order from its
    ///   position; the response carries the assignment and generation;
    ///   joining, leaving and missed heartbeats rebalance and bump the
    ///   generation.
    /// - queue: any event to any member; each delivery is a lease of
    ///   `ack_wait_ms`; at most `max_in_flight` leases outstanding; delayed
    ///   events (`deliver_at`) are not handed out before their time.
    /// - keyed: as queue, and per key at most one event in flight, in
    ///   publish order.
    ///
    /// Delivery is at least once: an event whose lease expires or is nacked
    /// is delivered again (after the backoff), to any member, until acked,
    /// rejected, or `max_deliveries` is reached (then dead-lettered).
    async fn fetch(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: FetchRequest,
    ) -> Result<FetchResponse>;

    /// Settles deliveries as handled. Idempotent: an id already settled, or
    /// unknown, is reported in `unknown` and changes nothing. An acked event
    /// is never delivered again while the backend runs.
    ///
    /// `durability` is the least the caller wants; the stronger of it and
    /// the group's `ack_durability` applies (pass [`AckDurability::Async`]
    /// for the group's own). `Async`: the ack is confirmed once applied and
    /// persisted within the backend's documented ack window, so after a
    /// crash an event acked within that window may come back once. `Sync`:
    /// confirmed only once persisted; a confirmed ack never comes back. If
    /// persisting fails, a sync call fails with a retryable error (the ack
    /// stays applied and is persisted once storage recovers). Same for
    /// nack, extend and reject.
    async fn ack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        durability: AckDurability,
    ) -> Result<AckOutcome>;

    /// Returns deliveries for redelivery after `delay` (or the backoff), or
    /// dead-letters those that reached `max_deliveries` (then it returns
    /// once the dead letters are recorded). The redelivery time survives a
    /// restart.
    async fn nack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        delay: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome>;

    /// Extends leases by `ack_wait` from now (the group's `ack_wait_ms` if none).
    async fn extend(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        ack_wait: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome>;

    /// Sends deliveries straight to dead letters with `reason`; returns once
    /// the dead letters are recorded (atomically with the events leaving
    /// the group). When the topic names a dead-letter topic, a copy of each
    /// is published there at least once, shortly after.
    async fn reject(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        reason: &str,
        durability: AckDurability,
    ) -> Result<AckOutcome>;

    /// Stream mode: records the member's next offsets. A member of an older
    /// generation, or one committing a partition it does not own, gets
    /// [`Error::StaleGeneration`]. Durable when it returns.
    async fn commit(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: CommitRequest,
    ) -> Result<()>;

    /// Moves the group to `to` in every partition, dropping leases and
    /// pending redeliveries (stream mode: bumps the generation).
    async fn reset(&self, topic: &TopicName, group: &GroupName, to: StartPosition) -> Result<()>;

    /// The member leaves: its leases return to the group at once and (stream
    /// mode) its partitions are reassigned.
    async fn leave(&self, topic: &TopicName, group: &GroupName, member: &str) -> Result<()>;

    /// Up to `limit` dead letters, oldest first.
    async fn dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>>;

    /// Delivers the given dead letters (all when `ids` is `None`) again, as
    /// first deliveries; returns how many.
    async fn redrive(
        &self,
        topic: &TopicName,
        group: &GroupName,
        ids: Option<&[u64]>,
    ) -> Result<u64>;
}

/// Small durable state with compare-and-set.
#[async_trait]
pub trait Kv: Send + Sync {
    /// The value at `key` in `bucket`, if any.
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>>;

    /// Writes `value` if the current state matches `expect`; returns the new
    /// revision. [`Error::RevisionMismatch`] otherwise. Durable when it returns.
    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes, expect: Expect) -> Result<u64>;

    /// Writes every `(bucket, key, value)` unconditionally, durable as
    /// `durability` says. A backend that can does it in one step (the
    /// embedded one: one transaction, with one fsync for
    /// [`KvDurability::Sync`] and none for [`KvDurability::Deferred`]), so a
    /// caller that gathers many small writes (the webhook attempt log) pays
    /// for one. Either all are written or, on an error, possibly none. This
    /// default writes each durably, which satisfies either.
    async fn kv_put_many(
        &self,
        entries: Vec<(String, String, Bytes)>,
        durability: KvDurability,
    ) -> Result<()> {
        let _ = durability;
        for (bucket, key, value) in entries {
            self.kv_put(&bucket, &key, value, Expect::Any).await?;
        }
        Ok(())
    }

    /// Deletes `key` if the current state matches `expect`; returns whether
    /// there was a value.
    async fn kv_delete(&self, bucket: &str, key: &str, expect: Expect) -> Result<bool>;

    /// Deletes every `(bucket, key)` unconditionally (absent ones are
    /// skipped), durable when it returns; returns how many were there. A
    /// backend that can does it in one durable step (the embedded one: one
    /// transaction, one fsync), so a sweep of many (the webhook attempt
    /// log's retention) pays for one. Either all are deleted or, on an
    /// error, possibly none.
    async fn kv_delete_many(&self, entries: Vec<(String, String)>) -> Result<u64> {
        let mut deleted = 0;
        for (bucket, key) in entries {
            if self.kv_delete(&bucket, &key, Expect::Any).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Keys of `bucket` starting with `prefix`, in order, after `after`, at most `limit`.
    async fn kv_keys(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;
}

/// Event streams (event sourcing): per-aggregate histories on a topic with
/// optimistic concurrency.
///
/// A stream lives on a topic (its category) and is identified by its
/// [`StreamId`]. Its events are ordinary events of the topic — consumer
/// groups, reads and subscriptions see them — whose key is the stream id, so
/// they all land in the partition [`herald_types::partition_for_key`] gives
/// it, in version order. Versions are dense from 0. A topic with streams
/// should not have retention limits: an event removed by retention is
/// silently missing from the stream's reads.
#[async_trait]
pub trait Streams: Send + Sync {
    /// Appends `events` to `stream` on `topic` if its current version meets
    /// `expected`, atomically: all of them with consecutive versions from
    /// the stream's next, contiguous in one partition, or none.
    ///
    /// - Each event's `key` is set to the stream id (any key or explicit
    ///   partition given is replaced).
    /// - A mismatch is [`Error::VersionConflict`] carrying the current
    ///   version (`None`: no stream) and appends nothing.
    /// - A deleted stream takes no more events, whatever the expectation:
    ///   [`Error::StreamDeleted`].
    /// - Appends to one stream are serialized; appends to different streams
    ///   run concurrently. Returns once durable under the topic's fsync
    ///   policy, and once the events are readable with
    ///   [`Streams::read_stream`].
    /// - Stream appends are not deduplicated by event id: the expected
    ///   version is what makes a retry safe.
    /// - Empty `events`, or an invalid event: [`Error::InvalidArgument`].
    async fn append(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        events: Vec<EventInput>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult>;

    /// Reads up to `limit` (at least 1) events of `stream` from
    /// `from_version`: forward in ascending versions, backward in descending
    /// versions (from `min(from_version, version)`: pass `u64::MAX` to read
    /// from the end). Costs O(events read), never a scan of the topic.
    /// [`Error::StreamNotFound`] if the stream does not exist or was
    /// deleted. A forward read past the end is empty.
    async fn read_stream(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice>;

    /// The stream's version and times, also for a deleted stream
    /// (`deleted = true`). [`Error::StreamNotFound`] if it never existed.
    async fn stream_metadata(&self, topic: &TopicName, stream: &StreamId)
    -> Result<StreamMetadata>;

    /// Deletes a stream. Durable when it returns.
    ///
    /// - soft (`hard = false`): the stream reads as deleted
    ///   ([`Error::StreamNotFound`]; metadata says `deleted`) and takes no
    ///   more events; its events stay in the topic for consumers.
    /// - hard: as soft, and the stream's index and snapshot are removed, and
    ///   from when this returns its events are read by no API: topic reads,
    ///   subscriptions and group deliveries skip their offsets (leases on
    ///   them end). The backend then removes their bytes from its files
    ///   (the embedded backend: by compacting the segments holding them,
    ///   soon after; pending erasures survive a restart).
    ///
    /// Deleting a deleted stream again is allowed (soft then hard upgrades).
    /// [`Error::StreamNotFound`] if it never existed.
    async fn delete_stream(&self, topic: &TopicName, stream: &StreamId, hard: bool) -> Result<()>;

    /// Stores a snapshot of the stream's state folded up to `version`,
    /// replacing any earlier one. `version` must not exceed the stream's
    /// version ([`Error::InvalidArgument`]). Durable when it returns.
    async fn put_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        version: u64,
        state: serde_json::Value,
    ) -> Result<()>;

    /// The stream's latest snapshot, if any. [`Error::StreamNotFound`] if the
    /// stream does not exist or was deleted.
    async fn get_snapshot(&self, topic: &TopicName, stream: &StreamId) -> Result<Option<Snapshot>>;
}

/// Something the backend cannot do now, for readiness (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthIssue {
    /// What is affected: `topic orders partition 0`, `meta.redb`, …
    pub component: String,
    /// The stable code of the calls that fail meanwhile
    /// (`storage_unavailable`).
    pub code: &'static str,
    /// The error that caused it.
    pub error: String,
    /// Since when, in ms since the Unix epoch.
    pub since_ms: i64,
}

/// What [`Backend::storage_stats`] reports of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStorageStats {
    /// The topic.
    pub topic: TopicName,
    /// Segment files over its partitions.
    pub segments: u64,
    /// Event ids in its dedup window.
    pub dedup_ids: u64,
}

/// A whole backend.
#[async_trait]
pub trait Backend: Topics + Events + Groups + Kv + Streams + std::fmt::Debug {
    /// Whether storage is open and serving.
    fn is_ready(&self) -> bool;

    /// What the backend cannot do now, empty when healthy: storage whose
    /// disk refused a write or fsync (a full disk, an I/O error) is listed
    /// until the backend has recovered it, which it does by itself once the
    /// disk works again; so is group state that has failed to persist for a
    /// while (acks made since would be lost to a crash).
    fn health(&self) -> Vec<HealthIssue> {
        Vec::new()
    }

    /// Storage figures per topic that only the backend knows (segment
    /// files, ids in the dedup window), for metrics; empty where the
    /// backend has none to give (the NATS server reports its own).
    fn storage_stats(&self) -> Vec<TopicStorageStats> {
        Vec::new()
    }

    /// Whether other processes (Herald nodes) may use the same storage at
    /// once (NATS), so work that must run once needs a lease
    /// ([`crate::lease`]); the embedded backend locks its data directory.
    fn is_shared(&self) -> bool {
        false
    }

    /// Stops background work, persists group state, and closes storage
    /// cleanly (each partition flushed and fsynced). Calls after it fail with
    /// [`Error::ShuttingDown`].
    async fn shutdown(&self) -> Result<()>;
}
