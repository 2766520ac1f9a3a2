//! Consumer groups: settings, fetch and acknowledgement types, status.

use herald_types::{GroupName, StoredEvent};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a group hands out events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GroupMode {
    /// Each partition is assigned to one live member and read in order;
    /// members commit offsets.
    Stream,
    /// Any member gets any event; each delivery is a lease acked one by one.
    Queue,
    /// Queue semantics, but per key at most one event in flight, in order.
    Keyed,
}

impl std::fmt::Display for GroupMode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Stream => "stream",
            Self::Queue => "queue",
            Self::Keyed => "keyed",
        })
    }
}

/// When an ack (nack, extend, reject) is confirmed relative to persisting
/// it: the group's `ack_durability`, or asked for per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AckDurability {
    /// Confirmed once applied; persisted shortly after (the embedded
    /// backend: within its flush interval, 50 ms). A crash can bring back
    /// the last window's acked events once; nothing is lost.
    #[default]
    Async,
    /// Confirmed only once persisted. Concurrent ones share a write.
    Sync,
}

impl AckDurability {
    /// The stronger of the two.
    pub fn max(self, other: Self) -> Self {
        if self == Self::Sync || other == Self::Sync {
            Self::Sync
        } else {
            Self::Async
        }
    }
}

impl std::fmt::Display for AckDurability {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Async => "async",
            Self::Sync => "sync",
        })
    }
}

/// Where a group starts reading, or is reset to. In JSON: `"earliest"`,
/// `"latest"`, `{"offset": 42}` or `{"time": "2026-11-26T10:00:00Z"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StartRepr", into = "StartRepr")]
pub enum StartPosition {
    /// The first event still kept.
    Earliest,
    /// Only events published from now on.
    Latest,
    /// This offset in every partition (clamped to what is kept).
    Offset {
        /// The offset.
        offset: u64,
    },
    /// The first event appended at or after this time, per partition.
    Time {
        /// Ms since the Unix epoch.
        time_ms: i64,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StartRepr {
    Named(NamedStart),
    Offset { offset: u64 },
    Time { time: String },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum NamedStart {
    Earliest,
    Latest,
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for StartPosition {
    /// `"earliest"`, `"latest"`, `{"offset": n}` or `{"time": "<RFC 3339>"}`.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["earliest", "latest"])),
            )
            .item(
                ObjectBuilder::new()
                    .property(
                        "offset",
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                            .minimum(Some(0)),
                    )
                    .required("offset"),
            )
            .item(
                ObjectBuilder::new()
                    .property(
                        "time",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
                    )
                    .required("time"),
            )
            .description(Some(
                "Where to start: the earliest event kept, only new events, an offset in every \
                 partition, or the first event at or after a time (RFC 3339).",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for StartPosition {}

impl TryFrom<StartRepr> for StartPosition {
    type Error = String;

    fn try_from(repr: StartRepr) -> std::result::Result<Self, String> {
        Ok(match repr {
            StartRepr::Named(NamedStart::Earliest) => Self::Earliest,
            StartRepr::Named(NamedStart::Latest) => Self::Latest,
            StartRepr::Offset { offset } => Self::Offset { offset },
            StartRepr::Time { time } => Self::Time {
                time_ms: herald_types::parse_rfc3339_ms(&time)
                    .map_err(|error| format!("start time {time:?} is not RFC 3339: {error}"))?,
            },
        })
    }
}

impl From<StartPosition> for StartRepr {
    fn from(start: StartPosition) -> Self {
        match start {
            StartPosition::Earliest => Self::Named(NamedStart::Earliest),
            StartPosition::Latest => Self::Named(NamedStart::Latest),
            StartPosition::Offset { offset } => Self::Offset { offset },
            StartPosition::Time { time_ms } => Self::Time {
                time: herald_types::format_rfc3339_ms(time_ms),
            },
        }
    }
}

/// Which events a group receives; the others are skipped (and count as
/// handled).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupFilter {
    /// Event types to receive; empty means all.
    pub types: Vec<String>,
    /// Receive only events whose subject starts with this.
    pub subject_prefix: Option<String>,
}

impl GroupFilter {
    /// Whether an event of `ty` with `subject` passes.
    pub fn matches(&self, ty: &str, subject: Option<&str>) -> bool {
        let type_ok = self.types.is_empty() || self.types.iter().any(|wanted| wanted == ty);
        let subject_ok = self
            .subject_prefix
            .as_deref()
            .is_none_or(|prefix| subject.is_some_and(|subject| subject.starts_with(prefix)));
        type_ok && subject_ok
    }
}

/// A group's settings (`PUT /v1/topics/{topic}/groups/{group}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupSpec {
    /// Delivery mode; fixed for the group's life.
    pub mode: GroupMode,
    /// Where a new group starts.
    #[serde(default = "defaults::start")]
    pub start: StartPosition,
    /// Queue/keyed: how long a delivery is leased before it is redelivered.
    #[serde(default = "defaults::ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Queue/keyed: deliveries of one event before it goes to dead letters.
    #[serde(default = "defaults::max_deliveries")]
    pub max_deliveries: u32,
    /// Queue/keyed: delay before the n-th redelivery (the last entry repeats).
    #[serde(default = "defaults::backoff_ms")]
    pub backoff_ms: Vec<u64>,
    /// Queue/keyed: leased deliveries outstanding at most (flow control).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: u32,
    /// Stream: a member not heard from for this long leaves the group.
    #[serde(default = "defaults::session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Which events the group receives.
    #[serde(default)]
    pub filter: GroupFilter,
    /// Queue/keyed: whether acks, nacks, extends and rejects are confirmed
    /// before (`async`, the default) or after (`sync`) they are persisted.
    #[serde(default)]
    pub ack_durability: AckDurability,
    /// Keyed: what orders events, the event's `key` (the default) or its
    /// `subject` (an event without one is ordered by its key).
    #[serde(default, skip_serializing_if = "OrderBy::is_key")]
    pub order_by: OrderBy,
}

/// What a keyed group orders events by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrderBy {
    /// The event's partition key.
    #[default]
    Key,
    /// The event's `subject`, else its key.
    Subject,
}

impl OrderBy {
    /// Whether this is the default, [`OrderBy::Key`].
    #[must_use]
    pub fn is_key(&self) -> bool {
        *self == Self::Key
    }
}

mod defaults {
    use super::StartPosition;
    pub fn start() -> StartPosition {
        StartPosition::Earliest
    }
    pub fn ack_wait_ms() -> u64 {
        30_000
    }
    pub fn max_deliveries() -> u32 {
        5
    }
    pub fn backoff_ms() -> Vec<u64> {
        vec![1_000, 5_000, 30_000]
    }
    pub fn max_in_flight() -> u32 {
        1_000
    }
    pub fn session_timeout_ms() -> u64 {
        30_000
    }
}

/// The most deliveries a group may lease at once.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 100_000;

/// The most steps a group's `backoff_ms` may have.
pub const MAX_BACKOFF_STEPS: usize = 64;

/// The longest member id, in bytes.
pub const MAX_MEMBER_LEN: usize = 200;

impl GroupSpec {
    /// A group in `mode` with every default.
    pub fn new(mode: GroupMode) -> Self {
        Self {
            mode,
            start: defaults::start(),
            ack_wait_ms: defaults::ack_wait_ms(),
            max_deliveries: defaults::max_deliveries(),
            backoff_ms: defaults::backoff_ms(),
            max_in_flight: defaults::max_in_flight(),
            session_timeout_ms: defaults::session_timeout_ms(),
            filter: GroupFilter::default(),
            ack_durability: AckDurability::Async,
            order_by: OrderBy::Key,
        }
    }

    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.ack_wait_ms == 0 {
            return Err(Error::invalid("ack_wait_ms", "must be positive"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::invalid("max_deliveries", "must be at least 1"));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight) {
            return Err(Error::invalid(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
            ));
        }
        if self.session_timeout_ms == 0 {
            return Err(Error::invalid("session_timeout_ms", "must be positive"));
        }
        if self.backoff_ms.len() > MAX_BACKOFF_STEPS {
            return Err(Error::invalid(
                "backoff_ms",
                format!("at most {MAX_BACKOFF_STEPS} steps"),
            ));
        }
        Ok(())
    }

    /// The delay before redelivering after the `attempts`-th delivery failed.
    pub fn backoff(&self, attempts: u32) -> u64 {
        let index = (attempts.max(1) - 1) as usize;
        self.backoff_ms
            .get(index)
            .or(self.backoff_ms.last())
            .copied()
            .unwrap_or(0)
    }
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group's name.
    pub name: GroupName,
    /// Its settings.
    #[serde(flatten)]
    pub spec: GroupSpec,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
}

/// A fetch (`POST .../fetch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FetchRequest {
    /// The member asking (any stable string naming a consumer instance).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub member: String,
    /// Deliveries wanted at most.
    #[serde(default = "default_fetch_max")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10_000))]
    pub max: u32,
    /// Wait up to this long for at least one delivery.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 300_000))]
    pub wait_ms: u64,
}

fn default_fetch_max() -> u32 {
    100
}

/// The most deliveries one fetch returns, and the longest it waits.
pub const MAX_FETCH: u32 = 10_000;
/// The longest a fetch may wait.
pub const MAX_FETCH_WAIT_MS: u64 = 300_000;

impl FetchRequest {
    /// Checks the request.
    pub fn validate(&self) -> Result<()> {
        if self.member.is_empty() || self.member.len() > MAX_MEMBER_LEN {
            return Err(Error::invalid(
                "member",
                format!("must be 1 to {MAX_MEMBER_LEN} characters"),
            ));
        }
        if !(1..=MAX_FETCH).contains(&self.max) {
            return Err(Error::invalid(
                "max",
                format!("must be between 1 and {MAX_FETCH}"),
            ));
        }
        if self.wait_ms > MAX_FETCH_WAIT_MS {
            return Err(Error::invalid(
                "wait_ms",
                format!("must be at most {MAX_FETCH_WAIT_MS}"),
            ));
        }
        Ok(())
    }
}

/// One delivery of an event to a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// Opaque id to ack, nack, extend or reject this delivery with.
    pub delivery_id: String,
    /// 1 for the first delivery of the event to this group, then 2, 3…
    pub attempt: u32,
    /// The event.
    pub event: StoredEvent,
}

/// What a fetch returns.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FetchResponse {
    /// The deliveries, possibly none.
    pub deliveries: Vec<Delivery>,
    /// Stream mode: the partitions this member owns now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Vec<u32>>,
    /// Stream mode: the generation to commit with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// What an ack, nack, extend or reject did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckOutcome {
    /// Deliveries it applied to.
    pub acked: u64,
    /// Ids it did not apply to: malformed, unknown, or already settled.
    pub unknown: Vec<String>,
}

/// A stream-mode commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitRequest {
    /// The member committing.
    pub member: String,
    /// The generation its assignment came with.
    pub generation: u64,
    /// Next offsets to read, per partition.
    pub offsets: Vec<PartitionOffset>,
}

/// An offset in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionOffset {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    /// The member's id.
    pub member: String,
    /// Stream mode: its partitions.
    pub partitions: Vec<u32>,
    /// Ms since it was last heard from.
    pub idle_ms: u64,
}

/// One partition of a group's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupPartitionStatus {
    /// The partition.
    pub partition: u32,
    /// Everything before this offset is handled (committed, acked, dead-lettered or filtered).
    pub committed: u64,
    /// One past the partition's last event.
    pub end_offset: u64,
    /// `end_offset - committed`.
    pub lag: u64,
    /// Stream mode: the member that owns it.
    pub assigned_to: Option<String>,
}

/// A group's state (`GET .../groups/{group}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    #[serde(flatten)]
    pub info: GroupInfo,
    /// Live members.
    pub members: Vec<MemberStatus>,
    /// Per partition.
    pub partitions: Vec<GroupPartitionStatus>,
    /// Deliveries leased and not yet settled.
    pub in_flight: u64,
    /// Events waiting for a redelivery or their delivery time.
    pub pending: u64,
    /// Events in the group's dead-letter list.
    pub dead_letters: u64,
    /// Stream mode: the current generation.
    pub generation: u64,
    /// What this process has done for the group since it started.
    #[serde(default)]
    pub counters: GroupCounters,
}

/// A group's work, counted by this process since it started (a restart
/// starts them at zero, as Prometheus counters expect).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupCounters {
    /// Deliveries handed out (first deliveries and redeliveries).
    pub delivered: u64,
    /// Of those, redeliveries (attempt 2 or later).
    pub redelivered: u64,
    /// Deliveries acked.
    pub acked: u64,
    /// Deliveries nacked (to be redelivered after their delay).
    pub nacked: u64,
    /// Deliveries rejected (dead letters at once).
    pub rejected: u64,
}

/// An event that exhausted its deliveries or was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dead letter's id in the group's list (for redrive).
    pub id: u64,
    /// The event, if retention still keeps it.
    pub event: Option<StoredEvent>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Deliveries it had.
    pub attempts: u32,
    /// Where it is in the topic.
    pub original: PartitionOffset,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_at: i64,
}
