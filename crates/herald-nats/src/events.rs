//! [`Events`] on the NATS backend: a publish is, per partition, one atomic
//! batch on the partition's stream; reads are batched direct gets.
//!
//! - Offsets: a partition's offset is its stream's sequence − 1.
//! - Deduplication: the event id is the message's `Nats-Msg-Id`, caught by
//!   the stream within its `duplicate_window` (the topic's dedup window).
//!   The window is per partition stream, so an event with neither key nor
//!   partition goes to the partition its id hashes to (not round robin, as
//!   on the embedded backend, when the topic deduplicates): a re-publish
//!   meets its first copy's window.
//! - A batch holding an id the stream has already seen is refused whole by
//!   the server; the partition's events are then published one at a time,
//!   in order, each acknowledged with its own (or its original) position.
//!   Only such a mixed re-publish loses the batch's atomicity.
//! - A publish dropped while its batch is in flight leaves nothing: the
//!   server abandons an uncommitted batch. A dropped single publish may be
//!   stored; a re-publish finds it in the dedup window.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_trait::async_trait;
use futures::StreamExt;
use herald_backend::{Error, Events, PublishResult, ReadResult, Result};
use herald_types::{EventInput, StoredEvent, TopicName, partition_for_key};

use crate::api::{self, Failure, Outgoing, Start};
use crate::topic::Topic;
use crate::{Inner, NatsBackend, codec, unavailable};

/// What a partition stream's state says of its extent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extent {
    pub(crate) first_sequence: u64,
    pub(crate) last_sequence: u64,
    pub(crate) bytes: u64,
}

/// How far ahead of this node's clock a seek by time still asks the
/// server (its clock may be a little ahead).
const FUTURE_SLACK_MS: i64 = 60_000;

/// About how many bytes one read asks for at most.
const READ_BYTES: usize = 1024 * 1024;

/// About what a read of `max` events needs (2 KiB each, 64 KiB to
/// [`READ_BYTES`]), as the embedded backend reads.
pub(crate) fn read_bytes(max: usize) -> usize {
    max.saturating_mul(2048).clamp(64 * 1024, READ_BYTES)
}

impl Inner {
    /// The API prefix of direct gets.
    pub(crate) fn api_prefix(&self) -> &str {
        &self.api
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The extent of partition `partition` (its stream `name`), creating
    /// the stream if a create was cut short.
    pub(crate) async fn partition_state(
        &self,
        topic: &Topic,
        partition: u32,
        name: &str,
    ) -> Result<Extent> {
        // `get_stream` asks for the stream's info: its state is in it.
        let stream = match self.js.get_stream(name).await {
            Ok(stream) => stream,
            Err(_) => {
                self.repair_partition(topic, partition).await?;
                self.js
                    .get_stream(name)
                    .await
                    .map_err(|error| unavailable("partition stream", error))?
            }
        };
        let info = &stream.cached_info().state;
        Ok(Extent {
            first_sequence: info.first_sequence,
            last_sequence: info.last_sequence,
            bytes: info.bytes,
        })
    }

    pub(crate) fn partition_of(topic: &Topic, name: &TopicName, partition: u32) -> Result<usize> {
        if partition < topic.info.spec.partitions {
            Ok(partition as usize)
        } else {
            Err(Error::PartitionNotFound {
                topic: name.to_string(),
                partition,
                partitions: topic.info.spec.partitions,
            })
        }
    }

    /// Up to `max` events (about `max_bytes`) of `partition` from `from`.
    pub(crate) async fn read_partition(
        &self,
        runtime: &Topic,
        partition: u32,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ReadResult> {
        let topic = runtime.name();
        let index = Inner::partition_of(runtime, topic, partition)?;
        let max = max.clamp(1, 10_000);
        let messages = api::direct_get_batch(
            &self.client,
            self.api_prefix(),
            api::Batch {
                stream: &runtime.streams[index],
                start: Start::Sequence(from.saturating_add(1)),
                max,
                max_bytes: Some(max_bytes),
                subject: None,
            },
            self.timeout(),
        )
        .await;
        let messages = match messages {
            Ok(messages) => messages,
            Err(Failure::NoStream) => {
                self.repair_partition(runtime, partition).await?;
                Vec::new()
            }
            Err(error) => return Err(unavailable("read", error)),
        };
        // Retention moved the start past `from`: say so, as the embedded
        // backend does. A start moved by a hard stream delete (a purge of
        // the first events) is not that: reads step over erased events. The
        // stream cannot tell the two apart, so only a topic with retention
        // limits reports it (a topic with streams should have none).
        let retention = &runtime.info.spec.retention;
        let retains = retention.max_age_ms.is_some()
            || retention.max_bytes.is_some()
            || retention.max_events.is_some();
        if retains
            && messages
                .first()
                .is_none_or(|message| message.sequence > from.saturating_add(1))
        {
            let extent = self
                .partition_state(runtime, partition, &runtime.streams[index])
                .await?;
            let start = extent.first_sequence.max(1) - 1;
            if from < start {
                return Err(Error::OffsetOutOfRange {
                    partition,
                    offset: from,
                    start,
                });
            }
        }
        let next_offset = messages.last().map_or(from, |message| message.sequence);
        let events = messages
            .into_iter()
            .map(|message| decode(topic, partition, message))
            .collect::<Result<Vec<_>>>()?;
        Ok(ReadResult {
            events,
            next_offset,
        })
    }

    /// Publishes one partition's events (`inputs`, in call order) and
    /// returns their positions.
    async fn publish_partition(
        &self,
        topic: &Topic,
        partition: u32,
        inputs: &[&EventInput],
    ) -> Result<Vec<(u64, bool)>> {
        let dedup = topic.info.spec.dedup_window_ms > 0;
        let subject = &topic.subjects[partition as usize];
        let message = |input: &EventInput| {
            let mut headers = HeaderMap::new();
            if dedup {
                headers.insert("Nats-Msg-Id", codec::escape(&input.event.id));
            }
            let payload = codec::encode(&input.event, &mut headers);
            Outgoing {
                subject: subject.clone(),
                headers,
                payload,
            }
        };
        let mut positions = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(api::MAX_BATCH) {
            let mut repaired = false;
            loop {
                let messages: Vec<Outgoing> = chunk.iter().map(|input| message(input)).collect();
                match api::publish_batch(&self.client, messages, self.timeout()).await {
                    Ok(ack) if chunk.len() == 1 => {
                        positions.push((ack.sequence - 1, ack.duplicate));
                        break;
                    }
                    Ok(ack) => {
                        let count = ack.count.unwrap_or(chunk.len() as u64);
                        if count != chunk.len() as u64 {
                            return Err(unavailable(
                                "publish",
                                format!("a batch of {} was stored as {count}", chunk.len()),
                            ));
                        }
                        let first = ack.sequence + 1 - count;
                        positions
                            .extend((first..=ack.sequence).map(|sequence| (sequence - 1, false)));
                        break;
                    }
                    Err(Failure::NoStream) if !repaired => {
                        self.repair_partition(topic, partition).await?;
                        repaired = true;
                    }
                    Err(Failure::TooLarge) => {
                        return Err(Error::PayloadTooLarge {
                            size: chunk
                                .iter()
                                .map(|input| input.event.encoded_len())
                                .max()
                                .unwrap_or(0),
                            max: self.client.max_payload(),
                        });
                    }
                    Err(Failure::Api(error))
                        if chunk.len() > 1 && dedup && error.is_duplicate() =>
                    {
                        // An id the stream has seen: one at a time.
                        for input in chunk {
                            let ack = api::publish(&self.client, message(input), self.timeout())
                                .await
                                .map_err(|error| unavailable("publish", error))?;
                            positions.push((ack.sequence - 1, ack.duplicate));
                        }
                        break;
                    }
                    Err(error) => return Err(unavailable("publish", error)),
                }
            }
        }
        Ok(positions)
    }
}

/// The stream sequence of a republished stored message.
pub(crate) fn stored_sequence(message: &async_nats::Message) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get("Nats-Sequence")?
        .as_str()
        .parse()
        .ok()
}

pub(crate) fn decode(
    topic: &TopicName,
    partition: u32,
    message: StreamMessage,
) -> Result<StoredEvent> {
    let event =
        codec::decode(&message.headers, message.payload).map_err(|detail| Error::Corrupt {
            detail: format!(
                "topic {topic} partition {partition} sequence {}: {detail}",
                message.sequence
            ),
        })?;
    Ok(StoredEvent {
        topic: topic.clone(),
        partition,
        offset: message.sequence - 1,
        appended_at: api::millis(message.time),
        event,
    })
}

/// The operations of [`Events`] the backend's own machinery uses too.
impl Inner {
    pub(crate) async fn publish(
        &self,
        topic: &TopicName,
        events: Vec<EventInput>,
    ) -> Result<Vec<PublishResult>> {
        let inner = self;
        let runtime = inner.topic(topic).await?;
        let spec = &runtime.info.spec;
        spec.check_events(&events)?;
        let dedup = spec.dedup_window_ms > 0;
        let partitions = spec.partitions;
        // Each event's partition, and the earlier event of the call it
        // repeats, if any.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut same_as: Vec<Option<usize>> = Vec::with_capacity(events.len());
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut partition_of = Vec::with_capacity(events.len());
        for (index, input) in events.iter().enumerate() {
            let partition = match (input.partition, &input.event.key) {
                (Some(partition), _) => partition,
                (None, Some(key)) => partition_for_key(key.as_bytes(), partitions),
                (None, None) if dedup => partition_for_key(input.event.id.as_bytes(), partitions),
                (None, None) => {
                    (runtime.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions))
                        as u32
                }
            };
            partition_of.push(partition);
            let earlier = if dedup {
                match first_of.get(input.event.id.as_str()) {
                    Some(&earlier) => Some(earlier),
                    None => {
                        first_of.insert(&input.event.id, index);
                        None
                    }
                }
            } else {
                None
            };
            if earlier.is_none() {
                by_partition.entry(partition).or_default().push(index);
            }
            same_as.push(earlier);
        }
        let mut positions: Vec<Option<(u64, bool)>> = vec![None; events.len()];
        let runs = by_partition.iter().map(|(&partition, indices)| {
            let inputs: Vec<&EventInput> = indices.iter().map(|&index| &events[index]).collect();
            let runtime = &runtime;
            async move {
                let found = inner.publish_partition(runtime, partition, &inputs).await?;
                Ok::<_, Error>((indices, found))
            }
        });
        for (indices, found) in futures::future::try_join_all(runs).await? {
            for (&index, position) in indices.iter().zip(found) {
                positions[index] = Some(position);
            }
        }
        let mut results = Vec::with_capacity(events.len());
        for (index, input) in events.iter().enumerate() {
            let (offset, duplicate) = match same_as[index] {
                Some(earlier) => (positions[earlier].map_or(0, |(offset, _)| offset), true),
                None => positions[index].unwrap_or((0, false)),
            };
            results.push(PublishResult {
                id: input.event.id.clone(),
                partition: partition_of[same_as[index].unwrap_or(index)],
                offset,
                duplicate,
            });
        }
        Ok(results)
    }

    pub(crate) async fn offset_for_time(
        &self,
        topic: &TopicName,
        partition: u32,
        time_ms: i64,
    ) -> Result<u64> {
        let inner = self;
        let runtime = inner.topic(topic).await?;
        let index = Inner::partition_of(&runtime, topic, partition)?;
        // Nothing is stored later than now, and the server's clock wraps
        // past 2262 (nanoseconds in an i64): a time well ahead is the end.
        if time_ms > crate::topics::now_ms().saturating_add(FUTURE_SLACK_MS) {
            return Ok(inner
                .partition_state(&runtime, partition, &runtime.streams[index])
                .await?
                .last_sequence);
        }
        // The end is read before the lookup: when nothing at or after the
        // time is stored yet, the answer is that end. Read after, it could
        // include an event stored in between, which the caller (a listen
        // starting now) would then skip.
        let end = inner
            .partition_state(&runtime, partition, &runtime.streams[index])
            .await?
            .last_sequence;
        let found = api::direct_get_batch(
            &inner.client,
            inner.api_prefix(),
            api::Batch {
                stream: &runtime.streams[index],
                start: Start::Time(time_ms),
                max: 1,
                max_bytes: None,
                subject: None,
            },
            inner.timeout(),
        )
        .await
        .map_err(|error| unavailable("seek by time", error))?;
        match found.first() {
            Some(message) => Ok(message.sequence - 1),
            None => Ok(end),
        }
    }
}

#[async_trait]
impl Events for NatsBackend {
    async fn publish(
        &self,
        topic: &TopicName,
        events: Vec<EventInput>,
    ) -> Result<Vec<PublishResult>> {
        self.inner.publish(topic, events).await
    }

    async fn read(
        &self,
        topic: &TopicName,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadResult> {
        let runtime = self.inner.topic(topic).await?;
        let max_bytes = read_bytes(max);
        self.inner
            .read_partition(&runtime, partition, from, max, max_bytes)
            .await
    }

    async fn offset_for_time(
        &self,
        topic: &TopicName,
        partition: u32,
        time_ms: i64,
    ) -> Result<u64> {
        self.inner.offset_for_time(topic, partition, time_ms).await
    }

    async fn wait_for(
        &self,
        topic: &TopicName,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let inner = &self.inner;
        let runtime = inner.topic(topic).await?;
        let index = Inner::partition_of(&runtime, topic, partition)?;
        // Subscribe before looking, so an event stored in between wakes
        // us. The stream republishes each stored message's headers (with
        // its sequence) once stored, so a wake-up is never early.
        let mut stored = inner
            .client
            .subscribe(format!("{}.>", runtime.stored[index]))
            .await
            .map_err(|error| unavailable("subscribe", error))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut end = inner
            .partition_state(&runtime, partition, &runtime.streams[index])
            .await?
            .last_sequence;
        while end <= offset {
            match tokio::time::timeout_at(deadline, stored.next()).await {
                Ok(Some(message)) => {
                    end = end.max(stored_sequence(&message).unwrap_or(0));
                }
                Ok(None) | Err(_) => break,
            }
        }
        let result = end;
        let _ = stored.unsubscribe().await;
        Ok(result)
    }
}
