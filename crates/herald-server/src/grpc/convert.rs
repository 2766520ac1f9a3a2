//! Wire messages ↔ backend types for the gRPC services. Everything a client
//! sends is checked here or by the backend; nothing is trusted.
//!
//! The request conversions are public so that the fuzz target
//! `fuzz/fuzz_targets/grpc_requests.rs` runs exactly what the services run
//! on a decoded request: any message gives a value or an error, never a
//! panic.

use std::str::FromStr;

use herald_backend::{
    AckDurability, DeadLetter, Delivery, ExpectedVersion, Fsync, GroupFilter, GroupInfo, GroupMode,
    GroupSpec, GroupStatus, PublishResult, RetentionSpec, StartPosition, TopicDescription,
    TopicInfo, TopicSpec,
};
use herald_proto::v1;
use herald_types::{EventInput, InvalidName, StreamId, TopicName, parse_rfc3339_ms};
use herald_webhooks::store::{State, Trigger};
use herald_webhooks::{
    AttemptQuery, AttemptRecord, EndpointPatch, EndpointSpec, EndpointView, Filter,
};
use tonic::Status;

use crate::problem::{Code, Problem};

/// A `Publish` request (one batch of a `PublishStream` too): the topic and
/// the checked events, at least one; `now_ms` for generated ids and
/// `delay_ms`.
pub fn publish_request(
    request: v1::PublishRequest,
    now_ms: i64,
) -> Result<(TopicName, Vec<EventInput>), Problem> {
    let topic: TopicName = request.topic.parse()?;
    if request.events.is_empty() {
        return Err(Problem::new(
            Code::InvalidEvent,
            "The batch is empty; send at least one event.",
        ));
    }
    Ok((topic, inputs(request.events, now_ms)?))
}

/// An `Append` request: topic, stream, expectation and the checked events.
pub fn append_request(
    request: v1::AppendRequest,
    now_ms: i64,
) -> Result<(TopicName, StreamId, ExpectedVersion, Vec<EventInput>), Status> {
    use v1::expectation::Expected;
    let (topic, stream) = (name(&request.topic)?, name(&request.stream)?);
    let expected = match request.expected.and_then(|expected| expected.expected) {
        None | Some(Expected::Any(_)) => ExpectedVersion::Any,
        Some(Expected::NoStream(_)) => ExpectedVersion::NoStream,
        Some(Expected::Exists(_)) => ExpectedVersion::Exists,
        Some(Expected::Version(version)) => ExpectedVersion::Exact(version),
    };
    let inputs = inputs(request.events, now_ms)?;
    Ok((topic, stream, expected, inputs))
}

/// A name (topic, group, stream) from a request field.
pub fn name<T>(text: &str) -> Result<T, Status>
where
    T: FromStr<Err = InvalidName>,
{
    text.parse()
        .map_err(|error: InvalidName| Problem::from(error).into())
}

/// The events of a publish or append, checked; `now_ms` for generated ids
/// and `delay_ms`.
pub fn inputs(events: Vec<v1::Event>, now_ms: i64) -> Result<Vec<EventInput>, Problem> {
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            event.into_input(now_ms).map_err(|error| {
                let problem = Problem::from(error);
                let detail = format!("events[{index}]: {}", problem.detail().unwrap_or_default());
                Problem::new(problem.code(), detail)
            })
        })
        .collect()
}

pub(super) fn publish_result(result: PublishResult) -> v1::PublishResult {
    v1::PublishResult {
        id: result.id,
        partition: result.partition,
        offset: result.offset,
        duplicate: result.duplicate,
    }
}

pub(super) fn fsync(fsync: Fsync) -> v1::Fsync {
    match fsync {
        Fsync::Always => v1::Fsync::Always,
        Fsync::Interval => v1::Fsync::Interval,
        Fsync::Never => v1::Fsync::Never,
    }
}

pub(super) fn retention(retention: RetentionSpec) -> v1::Retention {
    v1::Retention {
        max_age_ms: retention.max_age_ms,
        max_bytes: retention.max_bytes,
        max_events: retention.max_events,
    }
}

pub fn retention_spec(retention: &v1::Retention) -> RetentionSpec {
    RetentionSpec {
        max_age_ms: retention.max_age_ms,
        max_bytes: retention.max_bytes,
        max_events: retention.max_events,
    }
}

pub(super) fn topic(info: TopicInfo) -> v1::Topic {
    let spec = info.spec;
    v1::Topic {
        name: spec.name.into_string(),
        partitions: spec.partitions,
        fsync: fsync(spec.fsync).into(),
        fsync_interval_ms: spec.fsync_interval_ms,
        retention: Some(retention(spec.retention)),
        dedup_window_ms: Some(spec.dedup_window_ms),
        max_event_bytes: Some(spec.max_event_bytes),
        dead_letter_topic: spec
            .dead_letter_topic
            .map(herald_types::TopicName::into_string),
        created_at_ms: info.created_at,
    }
}

/// A create request's topic: unset fields take the defaults.
pub fn topic_spec(topic: &v1::Topic) -> Result<TopicSpec, Status> {
    let mut spec = TopicSpec::new(name(&topic.name)?);
    if topic.partitions != 0 {
        spec.partitions = topic.partitions;
    }
    spec.fsync = match v1::Fsync::try_from(topic.fsync) {
        Ok(v1::Fsync::Unspecified | v1::Fsync::Always) => Fsync::Always,
        Ok(v1::Fsync::Interval) => Fsync::Interval,
        Ok(v1::Fsync::Never) => Fsync::Never,
        Err(_) => return Err(super::invalid("fsync", "unknown value")),
    };
    if topic.fsync_interval_ms != 0 {
        spec.fsync_interval_ms = topic.fsync_interval_ms;
    }
    if let Some(retention) = &topic.retention {
        spec.retention = retention_spec(retention);
    }
    if let Some(window) = topic.dedup_window_ms {
        spec.dedup_window_ms = window;
    }
    if let Some(max) = topic.max_event_bytes {
        spec.max_event_bytes = max;
    }
    spec.dead_letter_topic = topic.dead_letter_topic.as_deref().map(name).transpose()?;
    Ok(spec)
}

pub(super) fn topic_description(description: TopicDescription) -> v1::TopicDescription {
    v1::TopicDescription {
        topic: Some(topic(description.info)),
        partitions: description
            .partition_info
            .into_iter()
            .map(|partition| v1::PartitionInfo {
                partition: partition.partition,
                start_offset: partition.start_offset,
                end_offset: partition.end_offset,
                bytes: partition.bytes,
            })
            .collect(),
    }
}

pub(super) fn mode(mode: GroupMode) -> v1::GroupMode {
    match mode {
        GroupMode::Stream => v1::GroupMode::Stream,
        GroupMode::Queue => v1::GroupMode::Queue,
        GroupMode::Keyed => v1::GroupMode::Keyed,
    }
}

pub(super) fn start(start: StartPosition) -> v1::Start {
    use v1::start::Start;
    let start = match start {
        StartPosition::Earliest => Start::Earliest(true),
        StartPosition::Latest => Start::Latest(true),
        StartPosition::Offset { offset } => Start::Offset(offset),
        StartPosition::Time { time_ms } => Start::TimeMs(time_ms),
    };
    v1::Start { start: Some(start) }
}

/// A start position; absent means `default`.
pub fn start_position(
    start: Option<v1::Start>,
    default: StartPosition,
) -> Result<StartPosition, Status> {
    use v1::start::Start;
    Ok(match start.and_then(|start| start.start) {
        None => default,
        Some(Start::Earliest(_)) => StartPosition::Earliest,
        Some(Start::Latest(_)) => StartPosition::Latest,
        Some(Start::Offset(offset)) => StartPosition::Offset { offset },
        Some(Start::TimeMs(time_ms)) => StartPosition::Time { time_ms },
    })
}

pub(super) fn group(info: GroupInfo) -> v1::Group {
    let spec = info.spec;
    v1::Group {
        name: info.name.into_string(),
        mode: mode(spec.mode).into(),
        start: Some(start(spec.start)),
        ack_wait_ms: spec.ack_wait_ms,
        max_deliveries: spec.max_deliveries,
        backoff_ms: spec.backoff_ms,
        max_in_flight: spec.max_in_flight,
        session_timeout_ms: spec.session_timeout_ms,
        filter_types: spec.filter.types,
        filter_subject_prefix: spec.filter.subject_prefix,
        created_at_ms: info.created_at,
        ack_durability: match spec.ack_durability {
            AckDurability::Async => v1::AckDurability::Async,
            AckDurability::Sync => v1::AckDurability::Sync,
        }
        .into(),
    }
}

/// The durability a settle asks for: `sync`, or the group's own.
pub(super) fn durability(sync: bool) -> AckDurability {
    if sync {
        AckDurability::Sync
    } else {
        AckDurability::Async
    }
}

/// A put request's group: unset (zero) fields take the defaults.
pub fn group_spec(group: v1::Group) -> Result<GroupSpec, Status> {
    let mode = match v1::GroupMode::try_from(group.mode) {
        Ok(v1::GroupMode::Stream) => GroupMode::Stream,
        Ok(v1::GroupMode::Queue) => GroupMode::Queue,
        Ok(v1::GroupMode::Keyed) => GroupMode::Keyed,
        Ok(v1::GroupMode::Unspecified) | Err(_) => {
            return Err(super::invalid("mode", "must be stream, queue or keyed"));
        }
    };
    let mut spec = GroupSpec::new(mode);
    spec.start = start_position(group.start, spec.start)?;
    if group.ack_wait_ms != 0 {
        spec.ack_wait_ms = group.ack_wait_ms;
    }
    if group.max_deliveries != 0 {
        spec.max_deliveries = group.max_deliveries;
    }
    if !group.backoff_ms.is_empty() {
        spec.backoff_ms = group.backoff_ms;
    }
    if group.max_in_flight != 0 {
        spec.max_in_flight = group.max_in_flight;
    }
    if group.session_timeout_ms != 0 {
        spec.session_timeout_ms = group.session_timeout_ms;
    }
    spec.filter = GroupFilter {
        types: group.filter_types,
        subject_prefix: group.filter_subject_prefix,
    };
    spec.ack_durability = match v1::AckDurability::try_from(group.ack_durability) {
        Ok(v1::AckDurability::Async) => AckDurability::Async,
        Ok(v1::AckDurability::Sync) => AckDurability::Sync,
        Err(_) => return Err(super::invalid("ack_durability", "must be async or sync")),
    };
    Ok(spec)
}

pub(super) fn group_status(status: GroupStatus) -> v1::GroupStatus {
    v1::GroupStatus {
        group: Some(group(status.info)),
        members: status
            .members
            .into_iter()
            .map(|member| v1::MemberStatus {
                member: member.member,
                partitions: member.partitions,
                idle_ms: member.idle_ms,
            })
            .collect(),
        partitions: status
            .partitions
            .into_iter()
            .map(|partition| v1::GroupPartitionStatus {
                partition: partition.partition,
                committed: partition.committed,
                end_offset: partition.end_offset,
                lag: partition.lag,
                assigned_to: partition.assigned_to,
            })
            .collect(),
        in_flight: status.in_flight,
        pending: status.pending,
        dead_letters: status.dead_letters,
        generation: status.generation,
    }
}

pub(super) fn delivery(delivery: Delivery) -> v1::Delivery {
    v1::Delivery {
        delivery_id: delivery.delivery_id,
        attempt: delivery.attempt,
        event: Some(delivery.event.into()),
    }
}

pub(super) fn dead_letter(dead: DeadLetter) -> v1::DeadLetter {
    v1::DeadLetter {
        id: dead.id,
        event: dead.event.map(Into::into),
        reason: dead.reason,
        attempts: dead.attempts,
        original: Some(v1::PartitionOffset {
            partition: dead.original.partition,
            offset: dead.original.offset,
        }),
        dead_at_ms: dead.dead_at,
    }
}

/// A create request's endpoint. Its fields are checked by the webhook
/// service, as for REST (`EndpointSpec::check`); only what the wire cannot
/// say is checked here.
pub fn endpoint_spec(endpoint: v1::Endpoint) -> Result<EndpointSpec, Status> {
    let filter = endpoint
        .filter
        .ok_or_else(|| super::invalid("endpoint.filter", "is required"))?;
    Ok(EndpointSpec {
        url: endpoint.url,
        description: endpoint.description,
        filter: endpoint_filter(filter),
        secret: endpoint.secret,
        headers: endpoint.headers.into_iter().collect(),
        rate_limit_per_s: endpoint.rate_limit_per_s,
        ordered: endpoint.ordered,
        enabled: endpoint.enabled.unwrap_or(true),
    })
}

/// An update request as the patch the service applies (and checks whole).
pub fn endpoint_patch(request: v1::UpdateEndpointRequest) -> EndpointPatch {
    EndpointPatch {
        url: request.url,
        description: request.description,
        filter: request.filter.map(endpoint_filter),
        headers: request
            .headers
            .map(|headers| headers.headers.into_iter().collect()),
        rate_limit_per_s: request.rate_limit_per_s,
        ordered: request.ordered,
        enabled: request.enabled,
    }
}

/// A `ListAttempts` request's query (`limit` 0: the service's default).
pub fn attempt_query(request: v1::ListAttemptsRequest) -> AttemptQuery {
    AttemptQuery {
        status: request.status,
        message_id: request.message_id,
        limit: usize::try_from(request.limit)
            .ok()
            .filter(|limit| *limit != 0),
        before: request.before,
    }
}

fn endpoint_filter(filter: v1::EndpointFilter) -> Filter {
    Filter {
        topics: filter.topics,
        types: filter.types,
        subject_prefix: filter.subject_prefix,
    }
}

pub(super) fn endpoint(view: EndpointView) -> v1::Endpoint {
    let stats = view.stats;
    v1::Endpoint {
        endpoint_id: view.endpoint_id,
        url: view.url,
        description: view.description,
        filter: Some(v1::EndpointFilter {
            topics: view.filter.topics,
            types: view.filter.types,
            subject_prefix: view.filter.subject_prefix,
        }),
        secret: view.secret,
        headers: view.headers.into_iter().collect(),
        rate_limit_per_s: view.rate_limit_per_s,
        ordered: view.ordered,
        enabled: Some(view.enabled),
        state: match view.state {
            State::Enabled => v1::EndpointState::Enabled,
            State::CircuitOpen => v1::EndpointState::CircuitOpen,
            State::Disabled => v1::EndpointState::Disabled,
        }
        .into(),
        disabled_reason: view.disabled_reason,
        failing_since_ms: view.failing_since.as_deref().map(time_ms),
        created_at_ms: time_ms(&view.created_at),
        updated_at_ms: time_ms(&view.updated_at),
        stats: Some(v1::EndpointStats {
            attempts: stats.attempts,
            succeeded: stats.succeeded,
            failed: stats.failed,
            consecutive_failures: stats.consecutive_failures,
            in_flight: stats.in_flight,
            last_attempt_at_ms: stats.last_attempt_at.as_deref().map(time_ms),
            last_success_at_ms: stats.last_success_at.as_deref().map(time_ms),
        }),
    }
}

pub(super) fn attempt(record: AttemptRecord) -> v1::Attempt {
    v1::Attempt {
        attempt_id: record.attempt_id,
        endpoint_id: record.endpoint_id,
        message_id: record.message_id,
        attempt: record.attempt,
        at_ms: time_ms(&record.at),
        succeeded: record.succeeded,
        status_code: record.status_code.map(u32::from),
        latency_ms: record.latency_ms,
        error_class: record.error_class,
        error: record.error,
        response_excerpt: record.response_excerpt,
        trigger: match record.trigger {
            Trigger::Scheduled => v1::AttemptTrigger::Scheduled,
            Trigger::Manual => v1::AttemptTrigger::Manual,
        }
        .into(),
        next: record.next,
    }
}

/// A time the webhook service rendered for its JSON shapes (RFC 3339 with
/// milliseconds, from ms it holds), back as ms since the Unix epoch. Herald
/// wrote it, so it parses; 0 if it ever did not.
fn time_ms(text: &str) -> i64 {
    parse_rfc3339_ms(text).unwrap_or_default()
}
