//! Topics: their settings and what describing one returns.

use herald_types::TopicName;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most partitions a topic may have. Each open partition has a writer
/// thread in the embedded backend; 1,024 bounds that per topic, and
/// [`TopicLimits::max_partitions`] across the server.
pub const MAX_PARTITIONS: u32 = 1024;
/// The largest `max_event_bytes` a topic may set (a log batch is at most
/// 64 MiB; larger payloads belong in blobs).
pub const MAX_EVENT_BYTES_LIMIT: u64 = 16 * 1024 * 1024;
/// The longest dedup window a topic may set: 7 days (604,800,000 ms). The
/// window is held in memory (about 50–70 bytes per id: BENCHMARKS.md) and
/// re-read from the log at every open, so its cost is rate × window; a week
/// covers any publisher's retry horizon (an outage over a weekend replayed
/// from an outbox) while bounding both. Longer-lived idempotence belongs to
/// the application (e.g. a stream's expected version).
pub const MAX_DEDUP_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

/// How many topics and partitions a backend holds at most (the server's
/// `[limits]`). Checked when a topic is created; a server that already
/// holds more (the limits were lowered) keeps them, and creates no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Topics at most.
    pub max_topics: u32,
    /// Partitions of one topic at most (at most [`MAX_PARTITIONS`]).
    pub max_partitions_per_topic: u32,
    /// Partitions of all topics together at most.
    pub max_partitions: u32,
}

impl Default for TopicLimits {
    /// 1,000 topics, [`MAX_PARTITIONS`] per topic, 4,096 partitions.
    fn default() -> Self {
        Self {
            max_topics: 1_000,
            max_partitions_per_topic: MAX_PARTITIONS,
            max_partitions: 4_096,
        }
    }
}

impl TopicLimits {
    /// Checks that a backend holding `topics` topics with `partitions`
    /// partitions in all may create `spec` (already validated).
    pub fn check(&self, spec: &TopicSpec, topics: usize, partitions: u64) -> Result<()> {
        if spec.partitions > self.max_partitions_per_topic {
            return Err(Error::invalid(
                "partitions",
                format!(
                    "must be between 1 and {} (limits.max_partitions_per_topic)",
                    self.max_partitions_per_topic
                ),
            ));
        }
        if topics >= self.max_topics as usize {
            return Err(Error::LimitExceeded {
                what: format!("topic {:?}", spec.name.as_str()),
                limit: "limits.max_topics",
                max: self.max_topics.into(),
            });
        }
        if partitions + u64::from(spec.partitions) > u64::from(self.max_partitions) {
            return Err(Error::LimitExceeded {
                what: format!(
                    "topic {:?} with {} partitions (the server has {partitions})",
                    spec.name.as_str(),
                    spec.partitions
                ),
                limit: "limits.max_partitions",
                max: self.max_partitions.into(),
            });
        }
        Ok(())
    }
}

/// When an acknowledged publish is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Fsync {
    /// fsynced before the publish is acknowledged (survives power loss).
    #[default]
    Always,
    /// fsynced at most `fsync_interval_ms` after the acknowledgement.
    Interval,
    /// Left to the OS (survives a process crash, not power loss).
    Never,
}

/// Retention limits; whole segments are removed once past any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetentionSpec {
    /// Remove events older than this.
    pub max_age_ms: Option<u64>,
    /// Keep at most about this many bytes per partition.
    pub max_bytes: Option<u64>,
    /// Keep at most about this many events per partition.
    pub max_events: Option<u64>,
}

/// A topic's settings, as created (`POST /v1/topics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopicSpec {
    /// The topic's name.
    pub name: TopicName,
    /// Number of partitions (1 to 1,024). Fixed at creation.
    #[serde(default = "defaults::partitions")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub partitions: u32,
    /// Durability policy.
    #[serde(default)]
    pub fsync: Fsync,
    /// With `fsync = interval`: the interval.
    #[serde(default = "defaults::fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Retention limits.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// A re-published event id within this window returns the original
    /// position instead of appending again. 0 disables deduplication; at
    /// most 604,800,000 (7 days).
    #[serde(default = "defaults::dedup_window_ms")]
    #[cfg_attr(feature = "openapi", schema(maximum = 604_800_000))]
    pub dedup_window_ms: u64,
    /// The largest event accepted.
    #[serde(default = "defaults::max_event_bytes")]
    pub max_event_bytes: u64,
    /// Where groups send events that exhausted their deliveries, besides
    /// keeping them in the group's dead-letter list.
    #[serde(default)]
    pub dead_letter_topic: Option<TopicName>,
}

mod defaults {
    pub fn partitions() -> u32 {
        1
    }
    pub fn fsync_interval_ms() -> u64 {
        100
    }
    pub fn dedup_window_ms() -> u64 {
        120_000
    }
    pub fn max_event_bytes() -> u64 {
        1024 * 1024
    }
}

impl TopicSpec {
    /// A topic named `name` with every default.
    pub fn new(name: TopicName) -> Self {
        Self {
            name,
            partitions: defaults::partitions(),
            fsync: Fsync::default(),
            fsync_interval_ms: defaults::fsync_interval_ms(),
            retention: RetentionSpec::default(),
            dedup_window_ms: defaults::dedup_window_ms(),
            max_event_bytes: defaults::max_event_bytes(),
            dead_letter_topic: None,
        }
    }

    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(Error::invalid(
                "partitions",
                format!("must be between 1 and {MAX_PARTITIONS}"),
            ));
        }
        if self.fsync == Fsync::Interval && self.fsync_interval_ms == 0 {
            return Err(Error::invalid(
                "fsync_interval_ms",
                "must be positive with fsync = interval",
            ));
        }
        if !(1..=MAX_EVENT_BYTES_LIMIT).contains(&self.max_event_bytes) {
            return Err(Error::invalid(
                "max_event_bytes",
                format!(
                    "must be between 1 and {MAX_EVENT_BYTES_LIMIT}; larger payloads belong in blobs"
                ),
            ));
        }
        if self.retention.max_age_ms == Some(0) {
            return Err(Error::invalid(
                "retention.max_age_ms",
                "must be positive (omit it to keep forever)",
            ));
        }
        if self.retention.max_bytes == Some(0) {
            return Err(Error::invalid(
                "retention.max_bytes",
                "must be positive (omit it for no limit)",
            ));
        }
        if self.retention.max_events == Some(0) {
            return Err(Error::invalid(
                "retention.max_events",
                "must be positive (omit it for no limit)",
            ));
        }
        if self.dedup_window_ms > MAX_DEDUP_WINDOW_MS {
            return Err(Error::invalid(
                "dedup_window_ms",
                format!(
                    "must be at most {MAX_DEDUP_WINDOW_MS} (7 days): the window is kept in memory and re-read from the log at every start; 0 disables deduplication"
                ),
            ));
        }
        if self.dead_letter_topic.as_ref() == Some(&self.name) {
            return Err(Error::invalid(
                "dead_letter_topic",
                "a topic cannot be its own dead-letter topic",
            ));
        }
        Ok(())
    }

    /// Checks a publish's events against these settings before anything is
    /// appended: each event valid, within `max_event_bytes`, and in a
    /// partition the topic has; at least one event.
    pub fn check_events(&self, inputs: &[herald_types::EventInput]) -> Result<()> {
        for (index, input) in inputs.iter().enumerate() {
            input
                .event
                .validate()
                .map_err(|error| Error::invalid(format!("events[{index}]"), error.to_string()))?;
            let size = input.event.encoded_len();
            if size as u64 > self.max_event_bytes {
                return Err(Error::PayloadTooLarge {
                    size,
                    max: self.max_event_bytes as usize,
                });
            }
            if let Some(partition) = input.partition
                && partition >= self.partitions
            {
                return Err(Error::PartitionNotFound {
                    topic: self.name.to_string(),
                    partition,
                    partitions: self.partitions,
                });
            }
        }
        if inputs.is_empty() {
            return Err(Error::invalid("events", "at least one event is needed"));
        }
        Ok(())
    }

    /// Applies `update`, returning the new settings (not yet validated).
    pub fn updated(&self, update: &TopicUpdate) -> Self {
        let mut spec = self.clone();
        if let Some(retention) = update.retention {
            spec.retention = retention;
        }
        if let Some(window) = update.dedup_window_ms {
            spec.dedup_window_ms = window;
        }
        if let Some(max) = update.max_event_bytes {
            spec.max_event_bytes = max;
        }
        if let Some(topic) = &update.dead_letter_topic {
            spec.dead_letter_topic = topic.clone();
        }
        spec
    }
}

/// What `PATCH /v1/topics/{topic}` may change. Absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopicUpdate {
    /// New retention limits (replacing the old ones whole).
    pub retention: Option<RetentionSpec>,
    /// New deduplication window.
    pub dedup_window_ms: Option<u64>,
    /// New event size limit.
    pub max_event_bytes: Option<u64>,
    /// New dead-letter topic; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<TopicName>))]
    pub dead_letter_topic: Option<Option<TopicName>>,
}

fn double_option<'de, D, T>(deserializer: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A topic as stored: its settings and when it was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The settings.
    #[serde(flatten)]
    pub spec: TopicSpec,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
}

/// One partition's extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionInfo {
    /// The partition.
    pub partition: u32,
    /// The first offset still kept.
    pub start_offset: u64,
    /// One past the last event.
    pub end_offset: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// A topic with its partitions' extents (`GET /v1/topics/{topic}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    /// The topic.
    #[serde(flatten)]
    pub info: TopicInfo,
    /// Per partition, in order.
    #[serde(rename = "partition_info")]
    pub partition_info: Vec<PartitionInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: u32) -> TopicSpec {
        let mut spec = TopicSpec::new("orders".parse().unwrap());
        spec.partitions = partitions;
        spec
    }

    #[test]
    fn given_limits_when_a_topic_would_pass_one_should_name_its_key() {
        let limits = TopicLimits {
            max_topics: 2,
            max_partitions_per_topic: 8,
            max_partitions: 10,
        };
        assert!(limits.check(&spec(8), 1, 2).is_ok());
        assert!(limits.check(&spec(1), 1, 9).is_ok(), "exactly at the limit");
        let refused = |result: Result<()>| match result {
            Err(Error::LimitExceeded { limit, .. }) => limit,
            Err(Error::InvalidArgument { field, reason }) => {
                assert!(
                    reason.contains("limits.max_partitions_per_topic"),
                    "{reason}"
                );
                if field == "partitions" {
                    "per topic"
                } else {
                    "?"
                }
            }
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(refused(limits.check(&spec(9), 0, 0)), "per topic");
        assert_eq!(refused(limits.check(&spec(1), 2, 2)), "limits.max_topics");
        assert_eq!(
            refused(limits.check(&spec(2), 1, 9)),
            "limits.max_partitions"
        );
    }
}
