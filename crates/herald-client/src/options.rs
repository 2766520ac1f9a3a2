//! Settings for topics and groups, and stream expectations.

use std::time::Duration;

use herald_proto::v1;

/// When a topic's publishes are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Before the publish is acknowledged (survives power loss). The
    /// default.
    #[default]
    Always,
    /// At most the interval after the acknowledgement.
    Interval(Duration),
    /// Left to the OS (survives a process crash, not power loss).
    Never,
}

/// A topic to create.
///
/// ```
/// use herald_client::{Fsync, TopicOptions};
/// let orders = TopicOptions::new("orders").partitions(8).fsync(Fsync::Never);
/// # let _ = orders;
/// ```
#[derive(Debug, Clone)]
pub struct TopicOptions(v1::Topic);

impl TopicOptions {
    /// A topic named `name` with the server's defaults.
    pub fn new(name: impl Into<String>) -> Self {
        Self(v1::Topic {
            name: name.into(),
            ..v1::Topic::default()
        })
    }

    /// Partitions (1 to 1,024; fixed at creation).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.0.partitions = partitions;
        self
    }

    /// The durability policy.
    pub fn fsync(mut self, fsync: Fsync) -> Self {
        let (policy, interval) = match fsync {
            Fsync::Always => (v1::Fsync::Always, 0),
            Fsync::Interval(every) => (
                v1::Fsync::Interval,
                u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            ),
            Fsync::Never => (v1::Fsync::Never, 0),
        };
        self.0.fsync = policy.into();
        self.0.fsync_interval_ms = interval;
        self
    }

    /// Retention limits (any may be `None`: unlimited).
    pub fn retention(
        mut self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
        max_events: Option<u64>,
    ) -> Self {
        self.0.retention = Some(v1::Retention {
            max_age_ms: max_age.map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            max_bytes,
            max_events,
        });
        self
    }

    /// The publish dedup window (zero turns dedup off).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.0.dedup_window_ms = Some(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The largest event accepted, in bytes.
    pub fn max_event_bytes(mut self, max: u64) -> Self {
        self.0.max_event_bytes = Some(max);
        self
    }

    /// Where dead letters of this topic's groups are also published.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.0.dead_letter_topic = Some(topic.into());
        self
    }

    pub(crate) fn into_proto(self) -> v1::Topic {
        self.0
    }
}

/// When a queue or keyed group's settles are confirmed: once applied
/// (`Async`, the default: persisted within 50 ms; a crash may bring back
/// the last window's acked events once) or only once persisted (`Sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckDurability {
    /// Confirmed once applied.
    #[default]
    Async,
    /// Confirmed once persisted.
    Sync,
}

/// How a group hands out events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupMode {
    /// Partitions assigned to members, read in order, offsets committed
    /// (acking a delivery commits past it).
    Stream,
    /// Any member takes any event; per-event acks, leases, redelivery.
    Queue,
    /// Like queue, but one event in flight per key, in publish order.
    Keyed,
}

impl GroupMode {
    pub(crate) fn from_proto(mode: i32) -> Option<Self> {
        match v1::GroupMode::try_from(mode).ok()? {
            v1::GroupMode::Stream => Some(Self::Stream),
            v1::GroupMode::Queue => Some(Self::Queue),
            v1::GroupMode::Keyed => Some(Self::Keyed),
            v1::GroupMode::Unspecified => None,
        }
    }
}

/// Where a group starts, or is reset to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first event still kept.
    Earliest,
    /// Only events published from now on.
    Latest,
    /// This offset in every partition.
    Offset(u64),
    /// The first event appended at or after this time (ms since the epoch).
    TimeMs(i64),
}

impl Start {
    pub(crate) fn into_proto(self) -> v1::Start {
        use v1::start::Start as Wire;
        let start = match self {
            Self::Earliest => Wire::Earliest(true),
            Self::Latest => Wire::Latest(true),
            Self::Offset(offset) => Wire::Offset(offset),
            Self::TimeMs(time_ms) => Wire::TimeMs(time_ms),
        };
        v1::Start { start: Some(start) }
    }
}

/// A group to create or update.
///
/// ```
/// use std::time::Duration;
/// use herald_client::{GroupMode, GroupOptions};
/// let billing = GroupOptions::new("billing", GroupMode::Queue)
///     .ack_wait(Duration::from_secs(10))
///     .max_deliveries(3);
/// # let _ = billing;
/// ```
#[derive(Debug, Clone)]
pub struct GroupOptions(v1::Group);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl GroupOptions {
    /// A group named `name` in `mode`, with the server's defaults.
    pub fn new(name: impl Into<String>, mode: GroupMode) -> Self {
        let mode = match mode {
            GroupMode::Stream => v1::GroupMode::Stream,
            GroupMode::Queue => v1::GroupMode::Queue,
            GroupMode::Keyed => v1::GroupMode::Keyed,
        };
        Self(v1::Group {
            name: name.into(),
            mode: mode.into(),
            ..v1::Group::default()
        })
    }

    /// Where a new group starts (default: earliest).
    pub fn start(mut self, start: Start) -> Self {
        self.0.start = Some(start.into_proto());
        self
    }

    /// How long a delivery is leased before it is redelivered.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.0.ack_wait_ms = millis(wait);
        self
    }

    /// Deliveries of one event before it goes to the dead letters.
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.0.max_deliveries = max;
        self
    }

    /// Delays before each redelivery (the last one repeats).
    pub fn backoff(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.0.backoff_ms = delays.into_iter().map(millis).collect();
        self
    }

    /// Leased deliveries outstanding in the whole group at most.
    pub fn max_in_flight(mut self, max: u32) -> Self {
        self.0.max_in_flight = max;
        self
    }

    /// Stream mode: how long a silent member keeps its partitions.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.0.session_timeout_ms = millis(timeout);
        self
    }

    /// Only events of these types.
    pub fn filter_types(mut self, types: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.0.filter_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events whose subject starts with `prefix`.
    pub fn filter_subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.0.filter_subject_prefix = Some(prefix.into());
        self
    }

    /// Queue/keyed: whether the server confirms settles before or after it
    /// persists them (default `Async`).
    pub fn ack_durability(mut self, durability: AckDurability) -> Self {
        self.0.ack_durability = match durability {
            AckDurability::Async => v1::AckDurability::Async,
            AckDurability::Sync => v1::AckDurability::Sync,
        }
        .into();
        self
    }

    pub(crate) fn into_proto(self) -> v1::Group {
        self.0
    }
}

/// What an append expects of the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist.
    Exists,
    /// The stream's last version must be exactly this.
    Version(u64),
}

impl Expected {
    /// `Version(v)` for a stream at `v`, `NoStream` for none.
    pub fn from_current(current: Option<u64>) -> Self {
        current.map_or(Self::NoStream, Self::Version)
    }

    pub(crate) fn into_proto(self) -> v1::Expectation {
        use v1::expectation::Expected as Wire;
        let expected = match self {
            Self::Any => Wire::Any(true),
            Self::NoStream => Wire::NoStream(true),
            Self::Exists => Wire::Exists(true),
            Self::Version(version) => Wire::Version(version),
        };
        v1::Expectation {
            expected: Some(expected),
        }
    }
}
