//! [`Topics`] on the NATS backend: a topic's settings in the catalogue
//! (`topic.rs`), each partition a JetStream stream.
//!
//! Create claims the name first (a compare-and-set on the settings), then
//! creates the partition streams (replacing any a crashed delete left);
//! delete removes the settings first, then the streams. A node that finds a
//! partition stream missing while the topic's settings exist (a create cut
//! short by a crash) creates it ([`Inner::repair_partition`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, Republish, StorageType};
use async_trait::async_trait;
use bytes::Bytes;
use herald_backend::{
    Error, Expect, PartitionInfo, Result, TopicDescription, TopicInfo, TopicSpec, TopicUpdate,
    Topics,
};
use herald_types::TopicName;
use tracing::{info, warn};

use crate::streams::{SNAPSHOTS_BUCKET, STREAMS_BUCKET};
use crate::topic::{TOPICS_BUCKET, Topic};
use crate::{Inner, NatsBackend, unavailable};

/// JetStream's error code for a stream whose limits exceed what the
/// server (or account) can reserve.
const INSUFFICIENT_RESOURCES: u64 = 10047;

/// A partition stream the server would not create (or update): settings
/// it cannot hold are the caller's to change, anything else is transient.
fn stream_refused(
    partition: u32,
    error: &async_nats::jetstream::context::CreateStreamError,
) -> Error {
    use async_nats::jetstream::context::CreateStreamErrorKind;
    if let CreateStreamErrorKind::JetStream(source) = error.kind()
        && source.error_code() == async_nats::jetstream::ErrorCode(INSUFFICIENT_RESOURCES)
    {
        return Error::invalid(
            "retention.max_bytes",
            format!("more than the NATS servers can reserve for a partition: {source}"),
        );
    }
    unavailable(
        &format!("create the stream of partition {partition}"),
        error,
    )
}

/// The longest duration a stream setting holds (nanoseconds in an i64).
const MAX_DURATION_MS: u64 = i64::MAX as u64 / 1_000_000;

/// The settings of partition `partition`'s stream.
fn partition_config(inner: &Inner, topic: &Topic, partition: u32) -> Config {
    let spec = &topic.info.spec;
    let limit =
        |value: Option<u64>| value.map_or(-1, |value| i64::try_from(value).unwrap_or(i64::MAX));
    // The server keeps durations as nanoseconds in an i64.
    let duration = |ms: u64| Duration::from_millis(ms.min(MAX_DURATION_MS));
    let max_age = spec.retention.max_age_ms.map_or(Duration::ZERO, duration);
    let window = duration(spec.dedup_window_ms.max(1_000));
    Config {
        name: topic.streams[partition as usize].clone(),
        subjects: vec![format!("{}.>", topic.prefixes[partition as usize])],
        max_age,
        max_bytes: limit(spec.retention.max_bytes),
        max_messages: limit(spec.retention.max_events),
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: inner.replicas,
        // 0 would mean the server's default (2 minutes); without
        // deduplication no message carries an id, so the window is moot.
        // The server wants the window within the age limit.
        duplicate_window: if max_age.is_zero() {
            window
        } else {
            window.min(max_age)
        },
        allow_direct: true,
        allow_atomic_publish: true,
        // Each stored message's headers (with its sequence), for waiters.
        republish: Some(Republish {
            source: format!("{}.>", topic.prefixes[partition as usize]),
            destination: format!("{}.>", topic.stored[partition as usize]),
            headers_only: true,
        }),
        description: Some(format!("Herald topic {} partition {partition}", spec.name)),
        ..Config::default()
    }
}

impl Inner {
    /// A topic, from this node's cache or the catalogue.
    pub(crate) async fn topic(&self, name: &TopicName) -> Result<Arc<Topic>> {
        self.check_open()?;
        let generation = match self.topics.get(name) {
            Ok(topic) => return Ok(topic),
            Err(generation) => generation,
        };
        let topic = Arc::new(
            self.read_topic(name)
                .await?
                .ok_or_else(|| Error::TopicNotFound {
                    topic: name.to_string(),
                })?,
        );
        self.topics.put(&topic, generation);
        Ok(topic)
    }

    /// A topic as the catalogue holds it now.
    async fn read_topic(&self, name: &TopicName) -> Result<Option<Topic>> {
        let Some(entry) = self.kv_get(TOPICS_BUCKET, name.as_str()).await? else {
            return Ok(None);
        };
        let info: TopicInfo =
            serde_json::from_slice(&entry.value).map_err(|error| Error::Corrupt {
                detail: format!("topic {name}'s settings: {error}"),
            })?;
        Ok(Some(Topic::new(&self.names, info, entry.revision)))
    }

    async fn create_partition(&self, topic: &Topic, partition: u32) -> Result<()> {
        let config = partition_config(self, topic, partition);
        // What a delete or a create cut short left under this name.
        let _ = self.js.delete_stream(&config.name).await;
        self.js
            .create_stream(config)
            .await
            .map(drop)
            .map_err(|error| stream_refused(partition, &error))
    }

    /// Removes the stream rows and snapshots of topic `name` (its delete,
    /// or one a crash cut short before a create of the same name).
    async fn forget_streams(&self, name: &TopicName) -> Result<()> {
        let prefix = format!("{name}/");
        for bucket in [STREAMS_BUCKET, SNAPSHOTS_BUCKET] {
            loop {
                let keys = self.kv_keys(bucket, &prefix, None, 1000).await?;
                if keys.is_empty() {
                    break;
                }
                let entries = keys
                    .into_iter()
                    .map(|key| (bucket.to_owned(), key))
                    .collect();
                self.kv_delete_many(entries).await?;
            }
        }
        Ok(())
    }

    /// Called when partition `partition`'s stream is missing: creates it if
    /// the topic (as the catalogue holds it now, not as cached) still
    /// exists, as created at the same time.
    pub(crate) async fn repair_partition(&self, topic: &Topic, partition: u32) -> Result<()> {
        match self.read_topic(topic.name()).await? {
            Some(current) if current.info.created_at == topic.info.created_at => {
                warn!(topic = %topic.name(), partition, "The partition's stream was missing (a create cut short); creating it.");
                let config = partition_config(self, &current, partition);
                match self.js.create_stream(config).await {
                    Ok(_) => Ok(()),
                    // Another node repaired it first.
                    Err(_)
                        if self
                            .js
                            .get_stream(&topic.streams[partition as usize])
                            .await
                            .is_ok() =>
                    {
                        Ok(())
                    }
                    Err(error) => Err(unavailable("create a missing partition stream", error)),
                }
            }
            _ => Err(Error::TopicNotFound {
                topic: topic.name().to_string(),
            }),
        }
    }
}

#[async_trait]
impl Topics for NatsBackend {
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicInfo> {
        let inner = &self.inner;
        inner.check_open()?;
        spec.validate()?;
        // Checked against the catalogue as this node sees it: two nodes
        // creating topics at once may both pass the last free place.
        let existing = self.list_topics().await?;
        let partitions = existing
            .iter()
            .map(|topic| u64::from(topic.spec.partitions))
            .sum();
        inner
            .topic_limits
            .check(&spec, existing.len(), partitions)?;
        let info = TopicInfo {
            spec: spec.clone(),
            created_at: now_ms(),
        };
        let value = Bytes::from(serde_json::to_vec(&info).map_err(|error| Error::Corrupt {
            detail: error.to_string(),
        })?);
        let revision = match inner
            .kv_put(TOPICS_BUCKET, spec.name.as_str(), value, Expect::Absent)
            .await
        {
            Ok(revision) => revision,
            Err(Error::RevisionMismatch { .. }) => {
                return Err(Error::TopicExists {
                    topic: spec.name.to_string(),
                });
            }
            Err(error) => return Err(error),
        };
        inner.topics.invalidate();
        let topic = Topic::new(&inner.names, info.clone(), revision);
        let mut created = inner.forget_streams(&spec.name).await;
        for partition in 0..spec.partitions {
            if created.is_err() {
                break;
            }
            created = inner.create_partition(&topic, partition).await;
        }
        if let Err(error) = created {
            // Give the name back; the streams made so far go with the next
            // create or are repaired on use.
            let _ = inner
                .kv_delete(
                    TOPICS_BUCKET,
                    spec.name.as_str(),
                    Expect::Revision(revision),
                )
                .await;
            inner.topics.invalidate();
            return Err(error);
        }
        info!(topic = %spec.name, partitions = spec.partitions, "Created topic.");
        Ok(info)
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.check_open()?;
        let mut topics = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let names = self
                .inner
                .kv_keys(TOPICS_BUCKET, "", after.as_deref(), 1000)
                .await?;
            let Some(last) = names.last().cloned() else {
                break;
            };
            for name in names {
                let Ok(name) = name.parse::<TopicName>() else {
                    continue;
                };
                if let Some(topic) = self.inner.read_topic(&name).await? {
                    topics.push(topic.info);
                }
            }
            after = Some(last);
        }
        Ok(topics)
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicDescription> {
        let inner = &self.inner;
        let topic = inner.topic(topic).await?;
        let mut partition_info = Vec::with_capacity(topic.streams.len());
        for (partition, name) in (0u32..).zip(&topic.streams) {
            let state = inner.partition_state(&topic, partition, name).await?;
            partition_info.push(PartitionInfo {
                partition,
                start_offset: state.first_sequence.max(1) - 1,
                end_offset: state.last_sequence,
                bytes: state.bytes,
            });
        }
        Ok(TopicDescription {
            info: topic.info.clone(),
            partition_info,
        })
    }

    async fn update_topic(&self, topic: &TopicName, update: TopicUpdate) -> Result<TopicInfo> {
        let inner = &self.inner;
        inner.check_open()?;
        let Some(current) = inner.read_topic(topic).await? else {
            return Err(Error::TopicNotFound {
                topic: topic.to_string(),
            });
        };
        let mut info = current.info.clone();
        info.spec = info.spec.updated(&update);
        info.spec.validate()?;
        let value = Bytes::from(serde_json::to_vec(&info).map_err(|error| Error::Corrupt {
            detail: error.to_string(),
        })?);
        let revision = inner
            .kv_put(
                TOPICS_BUCKET,
                topic.as_str(),
                value,
                Expect::Revision(current.revision),
            )
            .await
            .map_err(|error| match error {
                Error::RevisionMismatch { .. } => Error::Unavailable {
                    detail: format!("topic {topic} changed meanwhile; try again"),
                },
                other => other,
            })?;
        inner.topics.invalidate();
        let updated = Topic::new(&inner.names, info.clone(), revision);
        for partition in 0..info.spec.partitions {
            let config = partition_config(inner, &updated, partition);
            inner
                .js
                .update_stream(&config)
                .await
                .map_err(|error| unavailable("update a partition stream", error))?;
        }
        Ok(info)
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let Some(current) = inner.read_topic(topic).await? else {
            return Err(Error::TopicNotFound {
                topic: topic.to_string(),
            });
        };
        if !inner
            .kv_delete(
                TOPICS_BUCKET,
                topic.as_str(),
                Expect::Revision(current.revision),
            )
            .await?
        {
            return Err(Error::TopicNotFound {
                topic: topic.to_string(),
            });
        }
        inner.topics.invalidate();
        inner.forget_groups(topic).await?;
        for name in &current.streams {
            if let Err(error) = inner.js.delete_stream(name).await {
                // The next create of the name replaces it.
                warn!(stream = %name, %error, "Could not delete a deleted topic's stream.");
            }
        }
        inner.forget_streams(topic).await?;
        info!(topic = %topic, "Deleted topic.");
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis()),
    )
    .unwrap_or(i64::MAX)
}
