//! [`Streams`] on the NATS backend: a stream's events are ordinary events of
//! its topic, in the partition of its id, on a subject of their own in the
//! partition's stream (`<partition prefix>.s.<stream id>`), each with its
//! version in `Herald-Version`.
//!
//! - The stream's head (version, sequence, time) is its subject's last
//!   message: one direct get, no index to keep.
//! - An append expects that head with `Nats-Expected-Last-Subject-Sequence`
//!   on its first message and goes as one atomic batch, so two writers
//!   racing on a stream get one winner per version, and versions stay dense.
//! - Reading from a version finds its sequence by bisection over the
//!   subject (a direct get per probe: versions grow with sequences), then
//!   reads the subject's messages in batches.
//! - Deletion: a row in the `streams` bucket (kept, so a deleted id is
//!   never reused) fences appends; a hard delete also purges the subject,
//!   which removes the events from the partition for good, and the
//!   snapshot. A delete runs to completion even if its caller goes away.
//!   An append that read the stream live just before a delete's row was
//!   written can still land after it (there is no lock across the two
//!   streams); for a hard delete the purge then misses that event.
//! - Snapshots: the `streams.snapshots` bucket.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_trait::async_trait;
use bytes::Bytes;
use herald_backend::{
    AppendResult, Direction, Error, Expect, ExpectedVersion, PublishResult, Result, Snapshot,
    StreamMetadata, StreamSlice, Streams,
};
use herald_types::{EventInput, StoredEvent, StreamId, TopicName, partition_for_key};
use serde::{Deserialize, Serialize};

use crate::api::{self, Failure, Outgoing, Start};
use crate::names::stream_subject;
use crate::topic::Topic;
use crate::{Inner, NatsBackend, codec, events, found, unavailable};

/// Deleted streams' rows.
pub(crate) const STREAMS_BUCKET: &str = "streams";
/// Streams' snapshots.
pub(crate) const SNAPSHOTS_BUCKET: &str = "streams.snapshots";

/// How many messages one read of a stream asks for at most.
const READ_BATCH: usize = 1000;

/// A stream's last event.
#[derive(Debug, Clone, Copy)]
struct Head {
    version: u64,
    sequence: u64,
    at: i64,
}

/// A deleted stream, as its row keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deleted {
    hard: bool,
    version: u64,
    created_at: i64,
    updated_at: i64,
}

/// Where a stream lives.
struct Place {
    topic: Arc<Topic>,
    partition: u32,
    subject: String,
    /// The key of its row and snapshot.
    key: String,
}

fn version_of(message: &StreamMessage) -> Result<u64> {
    codec::stream_of(&message.headers)
        .map(|(_, version)| version)
        .ok_or_else(|| Error::Corrupt {
            detail: format!(
                "{}: a stream event without {}",
                message.subject,
                codec::VERSION
            ),
        })
}

fn not_found(topic: &TopicName, stream: &StreamId) -> Error {
    Error::StreamNotFound {
        topic: topic.to_string(),
        stream: stream.to_string(),
    }
}

impl Inner {
    async fn place(&self, topic: &TopicName, stream: &StreamId) -> Result<Place> {
        let topic = self.topic(topic).await?;
        let partition = partition_for_key(stream.as_str().as_bytes(), topic.info.spec.partitions);
        let subject = stream_subject(&topic.prefixes[partition as usize], stream.as_str());
        let key = format!("{}/{}", topic.name(), stream.as_str());
        Ok(Place {
            topic,
            partition,
            subject,
            key,
        })
    }

    async fn partition_stream(
        &self,
        place: &Place,
    ) -> Result<async_nats::jetstream::stream::Stream<()>> {
        self.stream(&place.topic.streams[place.partition as usize])
            .await
    }

    /// The first (`first`) or last message of the stream's subject.
    async fn stream_end(&self, place: &Place, first: bool) -> Result<Option<StreamMessage>> {
        let stream = self.partition_stream(place).await?;
        let result = if first {
            stream
                .direct_get_next_for_subject(place.subject.clone(), None)
                .await
        } else {
            stream
                .direct_get_last_for_subject(place.subject.clone())
                .await
        };
        found(result, "stream read")
    }

    async fn head(&self, place: &Place) -> Result<Option<Head>> {
        let Some(message) = self.stream_end(place, false).await? else {
            return Ok(None);
        };
        Ok(Some(Head {
            version: version_of(&message)?,
            sequence: message.sequence,
            at: api::millis(message.time),
        }))
    }

    async fn deleted(&self, place: &Place) -> Result<Option<(Deleted, u64)>> {
        let Some(entry) = self.kv_get(STREAMS_BUCKET, &place.key).await? else {
            return Ok(None);
        };
        let row = serde_json::from_slice(&entry.value).map_err(|error| Error::Corrupt {
            detail: format!("stream row {}: {error}", place.key),
        })?;
        Ok(Some((row, entry.revision)))
    }

    /// The sequence of the stream's first message at version `version` or
    /// later (`head` is its last), by bisection over the subject.
    async fn sequence_of(&self, place: &Place, version: u64, head: Head) -> Result<u64> {
        if version >= head.version {
            return Ok(head.sequence);
        }
        let stream = self.partition_stream(place).await?;
        let (mut low, mut high) = (1u64, head.sequence);
        while low < high {
            let middle = low + (high - low) / 2;
            let probe = stream
                .direct_get_next_for_subject(place.subject.clone(), Some(middle))
                .await
                .map_err(|error| unavailable("stream read", error))?;
            if version_of(&probe)? >= version {
                high = middle.min(probe.sequence);
            } else {
                low = probe.sequence + 1;
            }
        }
        Ok(low)
    }

    /// The stream's messages from sequence `from`, at most `max`.
    async fn stream_messages(
        &self,
        place: &Place,
        from: u64,
        max: usize,
    ) -> Result<Vec<StreamMessage>> {
        api::direct_get_batch(
            &self.client,
            self.api_prefix(),
            api::Batch {
                stream: &place.topic.streams[place.partition as usize],
                start: Start::Sequence(from),
                max,
                max_bytes: None,
                subject: Some(&place.subject),
            },
            self.timeout(),
        )
        .await
        .map_err(|error| unavailable("stream read", error))
    }

    fn stored(
        &self,
        place: &Place,
        messages: Vec<StreamMessage>,
    ) -> Result<Vec<(u64, StoredEvent)>> {
        messages
            .into_iter()
            .map(|message| {
                let version = version_of(&message)?;
                let event = events::decode(place.topic.name(), place.partition, message)?;
                Ok((version, event))
            })
            .collect()
    }

    async fn append_to(
        &self,
        place: &Place,
        stream: &StreamId,
        events: &[EventInput],
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        loop {
            if self.deleted(place).await?.is_some() {
                return Err(Error::StreamDeleted {
                    topic: place.topic.name().to_string(),
                    stream: stream.to_string(),
                });
            }
            let head = self.head(place).await?;
            let current = head.map(|head| head.version);
            if !expected.admits(current) {
                return Err(Error::VersionConflict {
                    stream: stream.to_string(),
                    expected,
                    current,
                });
            }
            let first_version = current.map_or(0, |version| version + 1);
            let messages: Vec<Outgoing> = events
                .iter()
                .zip(first_version..)
                .enumerate()
                .map(|(index, (input, version))| {
                    let mut headers = HeaderMap::new();
                    if index == 0 {
                        headers.insert(
                            "Nats-Expected-Last-Subject-Sequence",
                            head.map_or(0, |head| head.sequence).to_string(),
                        );
                    }
                    headers.insert(codec::STREAM, codec::escape(stream.as_str()));
                    headers.insert(codec::VERSION, version.to_string());
                    let payload = codec::encode(&input.event, &mut headers);
                    Outgoing {
                        subject: place.subject.clone(),
                        headers,
                        payload,
                    }
                })
                .collect();
            match api::publish_batch(&self.client, messages, self.timeout()).await {
                Ok(ack) => {
                    let count = events.len() as u64;
                    let first = ack.sequence + 1 - count;
                    return Ok(AppendResult {
                        first_version,
                        last_version: first_version + count - 1,
                        positions: events
                            .iter()
                            .zip(first..)
                            .map(|(input, sequence)| PublishResult {
                                id: input.event.id.clone(),
                                partition: place.partition,
                                offset: sequence - 1,
                                duplicate: false,
                            })
                            .collect(),
                    });
                }
                // Another writer moved the stream: look again (with
                // `Any` this appends after it; otherwise the check above
                // reports the conflict).
                Err(Failure::Api(error)) if error.is_wrong_last_sequence() => {}
                Err(Failure::NoStream) => {
                    self.repair_partition(&place.topic, place.partition).await?;
                }
                Err(Failure::TooLarge) => {
                    return Err(Error::PayloadTooLarge {
                        size: events
                            .iter()
                            .map(|input| input.event.encoded_len())
                            .max()
                            .unwrap_or(0),
                        max: self.client.max_payload(),
                    });
                }
                Err(error) => return Err(unavailable("stream append", error)),
            }
        }
    }

    async fn delete_stream_at(&self, place: Place, stream: StreamId, hard: bool) -> Result<()> {
        let existing = self.deleted(&place).await?;
        let row = match &existing {
            Some((row, _)) if row.hard || !hard => return Ok(()),
            Some((row, _)) => Deleted {
                hard,
                ..row.clone()
            },
            None => {
                let Some(head) = self.head(&place).await? else {
                    return Err(not_found(place.topic.name(), &stream));
                };
                let created_at = match self.stream_end(&place, true).await? {
                    Some(first) => api::millis(first.time),
                    None => head.at,
                };
                Deleted {
                    hard,
                    version: head.version,
                    created_at,
                    updated_at: head.at,
                }
            }
        };
        let value = Bytes::from(serde_json::to_vec(&row).map_err(|error| Error::Corrupt {
            detail: error.to_string(),
        })?);
        let expect = existing.map_or(Expect::Absent, |(_, revision)| Expect::Revision(revision));
        self.kv_put(STREAMS_BUCKET, &place.key, value, expect)
            .await?;
        if hard {
            self.partition_stream(&place)
                .await?
                .purge()
                .filter(place.subject.clone())
                .await
                .map_err(|error| unavailable("purge a hard-deleted stream", error))?;
            self.kv_delete(SNAPSHOTS_BUCKET, &place.key, Expect::Any)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Streams for NatsBackend {
    async fn append(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        mut events: Vec<EventInput>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let inner = &self.inner;
        let place = inner.place(topic, stream).await?;
        for input in &mut events {
            input.event.key = Some(stream.to_string());
            input.partition = None;
        }
        place.topic.info.spec.check_events(&events)?;
        if events.len() > api::MAX_BATCH {
            return Err(Error::invalid(
                "events",
                format!(
                    "at most {} events per append on the NATS backend (one atomic batch)",
                    api::MAX_BATCH
                ),
            ));
        }
        inner.append_to(&place, stream, &events, expected).await
    }

    async fn read_stream(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        let inner = &self.inner;
        let place = inner.place(topic, stream).await?;
        if inner.deleted(&place).await?.is_some() {
            return Err(not_found(topic, stream));
        }
        let Some(head) = inner.head(&place).await? else {
            return Err(not_found(topic, stream));
        };
        let limit = limit.clamp(1, READ_BATCH);
        match direction {
            Direction::Forward => {
                if from_version > head.version {
                    return Ok(StreamSlice {
                        events: Vec::new(),
                        next_version: None,
                    });
                }
                let from = inner.sequence_of(&place, from_version, head).await?;
                let messages = inner.stream_messages(&place, from, limit).await?;
                let events = inner.stored(&place, messages)?;
                let next_version = match events.last() {
                    Some(&(last, _)) if last < head.version => Some(last + 1),
                    _ => None,
                };
                Ok(StreamSlice {
                    events,
                    next_version,
                })
            }
            Direction::Backward => {
                let top = from_version.min(head.version);
                let bottom = top.saturating_sub(limit as u64 - 1);
                let from = inner.sequence_of(&place, bottom, head).await?;
                let messages = inner
                    .stream_messages(&place, from, (top - bottom + 1) as usize)
                    .await?;
                let mut events: Vec<(u64, StoredEvent)> = inner
                    .stored(&place, messages)?
                    .into_iter()
                    .filter(|(version, _)| *version <= top)
                    .collect();
                events.reverse();
                let next_version = match events.last() {
                    Some(&(last, _)) if last > 0 => Some(last - 1),
                    _ => None,
                };
                Ok(StreamSlice {
                    events,
                    next_version,
                })
            }
        }
    }

    async fn stream_metadata(
        &self,
        topic: &TopicName,
        stream: &StreamId,
    ) -> Result<StreamMetadata> {
        let inner = &self.inner;
        let place = inner.place(topic, stream).await?;
        if let Some((row, _)) = inner.deleted(&place).await? {
            return Ok(StreamMetadata {
                stream: stream.clone(),
                version: row.version,
                created_at: row.created_at,
                updated_at: row.updated_at,
                deleted: true,
            });
        }
        let Some(head) = inner.head(&place).await? else {
            return Err(not_found(topic, stream));
        };
        let created_at = match inner.stream_end(&place, true).await? {
            Some(first) => api::millis(first.time),
            None => head.at,
        };
        Ok(StreamMetadata {
            stream: stream.clone(),
            version: head.version,
            created_at,
            updated_at: head.at,
            deleted: false,
        })
    }

    async fn delete_stream(&self, topic: &TopicName, stream: &StreamId, hard: bool) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let place = inner.place(topic, stream).await?;
        let stream = stream.clone();
        // Runs to completion even if the caller goes away: a row without
        // its purge would leave a hard-deleted stream's events readable.
        tokio::spawn(async move { inner.delete_stream_at(place, stream, hard).await })
            .await
            .map_err(|error| unavailable("stream delete task", error))?
    }

    async fn put_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        version: u64,
        state: serde_json::Value,
    ) -> Result<()> {
        let inner = &self.inner;
        let place = inner.place(topic, stream).await?;
        if inner.deleted(&place).await?.is_some() {
            return Err(not_found(topic, stream));
        }
        let Some(head) = inner.head(&place).await? else {
            return Err(not_found(topic, stream));
        };
        if version > head.version {
            return Err(Error::invalid(
                "version",
                format!(
                    "the stream is at version {}; a snapshot cannot be ahead of it",
                    head.version
                ),
            ));
        }
        let snapshot = Snapshot { version, state };
        let value = Bytes::from(
            serde_json::to_vec(&snapshot).map_err(|error| Error::Corrupt {
                detail: error.to_string(),
            })?,
        );
        inner
            .kv_put(SNAPSHOTS_BUCKET, &place.key, value, Expect::Any)
            .await
            .map(drop)
    }

    async fn get_snapshot(&self, topic: &TopicName, stream: &StreamId) -> Result<Option<Snapshot>> {
        let inner = &self.inner;
        let place = inner.place(topic, stream).await?;
        if inner.deleted(&place).await?.is_some() || inner.head(&place).await?.is_none() {
            return Err(not_found(topic, stream));
        }
        let Some(entry) = inner.kv_get(SNAPSHOTS_BUCKET, &place.key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&entry.value)
            .map(Some)
            .map_err(|error| Error::Corrupt {
                detail: format!("snapshot {}: {error}", place.key),
            })
    }
}
