//! Consumer groups: everything under `/v1/topics/{topic}/groups/{group}`.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/topics/{topic}/groups` | | 200 `{groups: [...]}` (by name) |
//! | `PUT …/{group}` | [`GroupSpec`] | 201 (created) or 200 (updated) group |
//! | `GET …/{group}` | | 200 status |
//! | `DELETE …/{group}` | | 204 |
//! | `POST …/fetch` | `{member, max, wait_ms}` | 200 `{deliveries, assignment?, generation?}` |
//! | `POST …/ack` | `{delivery_ids, sync?}` | 200 `{acked, unknown}` |
//! | `POST …/nack` | `{delivery_ids, delay_ms?, sync?}` | 200 `{nacked, unknown}` |
//! | `POST …/extend` | `{delivery_ids, ack_wait_ms?, sync?}` | 200 `{extended, unknown}` |
//! | `POST …/reject` | `{delivery_ids, reason?, sync?}` | 200 `{rejected, unknown}` |
//! | `POST …/commit` | `{member, generation, offsets}` | 200 `{}` |
//! | `POST …/reset` | `{to}` | 200 `{}` |
//! | `POST …/leave` | `{member}` | 200 `{}` |
//! | `GET …/dead-letters?limit=` | | 200 `{events: [...]}` |
//! | `POST …/dead-letters/redrive` | `{ids?}` | 200 `{redriven}` |
//!
//! A fetch long-polls up to `wait_ms`; when the server starts shutting down,
//! a waiting fetch answers 503 `shutting_down` at once instead of holding
//! the shutdown up. `sync: true` on a settle answers only once it is
//! persisted, whatever the group's `ack_durability`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_backend::{
    AckDurability, AckOutcome, CommitRequest, DeadLetter, FetchRequest, FetchResponse, GroupInfo,
    GroupPartitionStatus, GroupSpec, GroupStatus, MemberStatus, PartitionOffset, StartPosition,
};
use herald_types::{GroupName, StoredEvent, TopicName, format_rfc3339_ms};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{GroupPath, JsonBody, NoQuery, Query, TopicPath};
use crate::problem::{Code, Problem};

/// Dead letters listed when `limit` is not given.
pub const DEFAULT_DEAD_LETTER_LIMIT: u32 = 100;
/// The most dead letters one listing returns.
pub const MAX_DEAD_LETTER_LIMIT: u32 = 10_000;
/// The longest `reason` a reject may carry, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;
/// The longest member id, in bytes (as the backend's fetch allows).
pub const MAX_MEMBER_BYTES: usize = herald_backend::group::MAX_MEMBER_LEN;

/// `PUT …/groups/{group}` → 201 with `Location` if created, else 200.
#[utoipa::path(
    put, path = "/v1/topics/{topic}/groups/{group}", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = GroupSpec,
    responses(
        (status = 201, description = "Created.", body = GroupView,
         headers(("Location" = String, description = "The group's URL."))),
        (status = 200, description = "Updated (the mode cannot change).", body = GroupView),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(spec): JsonBody<GroupSpec>,
) -> Result<Response, Problem> {
    let (info, created) = state
        .backend()?
        .put_group(&path.topic, &path.group, spec)
        .await?;
    let view = Json(GroupView::from(info));
    Ok(if created {
        let location = format!("/v1/topics/{}/groups/{}", path.topic, path.group);
        (StatusCode::CREATED, [(header::LOCATION, location)], view).into_response()
    } else {
        view.into_response()
    })
}

/// `GET /v1/topics/{topic}/groups` → 200 `{groups: [...]}`, by name.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/groups", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders")),
    responses((status = 200, description = "The topic's groups, by name.", body = GroupList))
)]
pub async fn list(
    State(state): State<AppState>,
    TopicPath(topic): TopicPath,
    _query: NoQuery,
) -> Result<Json<GroupList>, Problem> {
    let groups = state.backend()?.list_groups(&topic).await?;
    Ok(Json(GroupList {
        groups: groups.into_iter().map(GroupView::from).collect(),
    }))
}

/// `GET /v1/topics/{topic}/groups`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupList {
    groups: Vec<GroupView>,
}

/// `GET …/groups/{group}` → 200 status.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/groups/{group}", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    responses((status = 200, description = "The group's state.", body = GroupStatusView))
)]
pub async fn status(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
) -> Result<Json<GroupStatusView>, Problem> {
    let status = state
        .backend()?
        .group_status(&path.topic, &path.group)
        .await?;
    Ok(Json(GroupStatusView::from(status)))
}

/// `DELETE …/groups/{group}` → 204.
#[utoipa::path(
    delete, path = "/v1/topics/{topic}/groups/{group}", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    responses((status = 204, description = "Deleted."))
)]
pub async fn delete(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
) -> Result<StatusCode, Problem> {
    state
        .backend()?
        .delete_group(&path.topic, &path.group)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/fetch` → 200 deliveries (long-polls up to `wait_ms`).
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/fetch", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = FetchRequest,
    responses((status = 200, description = "Deliveries, possibly none (after waiting up to `wait_ms`).", body = FetchResponse))
)]
pub async fn fetch(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<FetchRequest>,
) -> Result<Json<FetchResponse>, Problem> {
    let backend = state.backend()?;
    // Dropping a fetch is safe (backend contract); a delivery it may have
    // leased is delivered again after its lease, or after the restart.
    tokio::select! {
        biased;
        fetched = backend.fetch(&path.topic, &path.group, request) => {
            let mut fetched = fetched?;
            crate::trace::delivered(&path.topic, &path.group, &mut fetched);
            Ok(Json(fetched))
        }
        () = state.stopping.cancelled() => Err(Problem::new(
            Code::ShuttingDown,
            "The server is shutting down; fetch again once it is back (or from another).",
        )),
    }
}

/// What a nack did: `{nacked, unknown}` (an ack answers `{acked, unknown}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NackOutcome {
    /// Deliveries released for redelivery.
    pub nacked: u64,
    /// Ids it did not apply to: malformed, unknown, or already settled.
    pub unknown: Vec<String>,
}

/// What an extend did: `{extended, unknown}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ExtendOutcome {
    /// Deliveries whose leases were extended.
    pub extended: u64,
    /// Ids it did not apply to: malformed, unknown, or already settled.
    pub unknown: Vec<String>,
}

/// What a reject did: `{rejected, unknown}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RejectOutcome {
    /// Deliveries sent to the dead letters.
    pub rejected: u64,
    /// Ids it did not apply to: malformed, unknown, or already settled.
    pub unknown: Vec<String>,
}

impl From<AckOutcome> for NackOutcome {
    fn from(outcome: AckOutcome) -> Self {
        Self {
            nacked: outcome.acked,
            unknown: outcome.unknown,
        }
    }
}

impl From<AckOutcome> for ExtendOutcome {
    fn from(outcome: AckOutcome) -> Self {
        Self {
            extended: outcome.acked,
            unknown: outcome.unknown,
        }
    }
}

impl From<AckOutcome> for RejectOutcome {
    fn from(outcome: AckOutcome) -> Self {
        Self {
            rejected: outcome.acked,
            unknown: outcome.unknown,
        }
    }
}

/// `POST …/ack` `{delivery_ids}` → 200 `{acked, unknown}`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/ack", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = AckRequest,
    responses((status = 200, description = "What was acked; idempotent.", body = AckOutcome))
)]
pub async fn ack(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<AckRequest>,
) -> Result<Json<AckOutcome>, Problem> {
    let outcome = state
        .backend()?
        .ack(
            &path.topic,
            &path.group,
            &request.delivery_ids,
            durability(request.sync),
        )
        .await?;
    crate::trace::settled("ack", &path.group, &request.delivery_ids);
    Ok(Json(outcome))
}

/// `POST …/nack` `{delivery_ids, delay_ms?}` → 200 `{nacked, unknown}`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/nack", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = NackRequest,
    responses((status = 200, description = "What was released for redelivery.", body = NackOutcome))
)]
pub async fn nack(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<NackRequest>,
) -> Result<Json<NackOutcome>, Problem> {
    let delay = request.delay_ms.map(Duration::from_millis);
    let outcome = state
        .backend()?
        .nack(
            &path.topic,
            &path.group,
            &request.delivery_ids,
            delay,
            durability(request.sync),
        )
        .await?;
    crate::trace::settled("nack", &path.group, &request.delivery_ids);
    Ok(Json(outcome.into()))
}

/// `POST …/extend` `{delivery_ids, ack_wait_ms?}` → 200 `{extended, unknown}`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/extend", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = ExtendRequest,
    responses((status = 200, description = "Whose leases were extended.", body = ExtendOutcome))
)]
pub async fn extend(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> Result<Json<ExtendOutcome>, Problem> {
    if request.ack_wait_ms == Some(0) {
        return Err(Problem::new(
            Code::InvalidArgument,
            "invalid ack_wait_ms: must be positive (omit it for the group's ack_wait_ms)",
        ));
    }
    let ack_wait = request.ack_wait_ms.map(Duration::from_millis);
    let outcome = state
        .backend()?
        .extend(
            &path.topic,
            &path.group,
            &request.delivery_ids,
            ack_wait,
            durability(request.sync),
        )
        .await?;
    crate::trace::settled("extend", &path.group, &request.delivery_ids);
    Ok(Json(outcome.into()))
}

/// `POST …/reject` `{delivery_ids, reason?}` → 200 `{rejected, unknown}`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/reject", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = RejectRequest,
    responses((status = 200, description = "What went to the dead letters.", body = RejectOutcome))
)]
pub async fn reject(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<RejectRequest>,
) -> Result<Json<RejectOutcome>, Problem> {
    let reason = request.reason.as_deref().unwrap_or("no reason given");
    if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(Problem::new(
            Code::InvalidArgument,
            format!("invalid reason: must be 1 to {MAX_REASON_BYTES} bytes"),
        ));
    }
    let outcome = state
        .backend()?
        .reject(
            &path.topic,
            &path.group,
            &request.delivery_ids,
            reason,
            durability(request.sync),
        )
        .await?;
    crate::trace::settled("reject", &path.group, &request.delivery_ids);
    Ok(Json(outcome.into()))
}

/// `POST …/commit` (stream mode) → 200 `{}`; 409 `stale_generation`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/commit", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = CommitRequest,
    responses((status = 200, description = "Committed.", body = Empty))
)]
pub async fn commit(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<CommitRequest>,
) -> Result<Json<Empty>, Problem> {
    state
        .backend()?
        .commit(&path.topic, &path.group, request)
        .await?;
    Ok(Json(Empty {}))
}

/// `POST …/reset` `{to}` → 200 `{}`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/reset", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = ResetRequest,
    responses((status = 200, description = "Reset.", body = Empty))
)]
pub async fn reset(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<ResetRequest>,
) -> Result<Json<Empty>, Problem> {
    state
        .backend()?
        .reset(&path.topic, &path.group, request.to)
        .await?;
    Ok(Json(Empty {}))
}

/// `POST …/leave` `{member}` → 200 `{}`: the member's leases return to the
/// group at once and (stream mode) its partitions are reassigned.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/leave", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = LeaveRequest,
    responses((status = 200, description = "Left.", body = Empty))
)]
pub async fn leave(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<LeaveRequest>,
) -> Result<Json<Empty>, Problem> {
    if request.member.is_empty() || request.member.len() > MAX_MEMBER_BYTES {
        return Err(Problem::new(
            Code::InvalidArgument,
            format!("invalid member: must be 1 to {MAX_MEMBER_BYTES} characters"),
        ));
    }
    state
        .backend()?
        .leave(&path.topic, &path.group, &request.member)
        .await?;
    Ok(Json(Empty {}))
}

/// `GET …/dead-letters?limit=` → 200 `{events: [...]}`, oldest first.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/groups/{group}/dead-letters", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers"), LimitQuery),
    responses((status = 200, description = "Dead letters, oldest first.", body = DeadLetterList))
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    path: GroupPath,
    Query(query): Query<LimitQuery>,
) -> Result<Json<DeadLetterList>, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_DEAD_LETTER_LIMIT);
    if !(1..=MAX_DEAD_LETTER_LIMIT).contains(&limit) {
        return Err(Problem::new(
            Code::InvalidArgument,
            format!("invalid limit: must be between 1 and {MAX_DEAD_LETTER_LIMIT}"),
        ));
    }
    let letters = state
        .backend()?
        .dead_letters(&path.topic, &path.group, limit as usize)
        .await?;
    Ok(Json(DeadLetterList {
        events: letters.into_iter().map(DeadLetterView::from).collect(),
    }))
}

/// `POST …/dead-letters/redrive` `{ids?}` → 200 `{redriven}`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/groups/{group}/dead-letters/redrive", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers")),
    request_body = RedriveRequest,
    responses((status = 200, description = "How many were published again.", body = RedriveResponse))
)]
pub async fn redrive(
    State(state): State<AppState>,
    path: GroupPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<RedriveRequest>,
) -> Result<Json<RedriveResponse>, Problem> {
    let redriven = state
        .backend()?
        .redrive(&path.topic, &path.group, request.ids.as_deref())
        .await?;
    Ok(Json(RedriveResponse { redriven }))
}

/// The durability a settle asks for: `sync: true`, or the group's own.
pub(crate) fn durability(sync: bool) -> AckDurability {
    if sync {
        AckDurability::Sync
    } else {
        AckDurability::Async
    }
}

/// `{delivery_ids, sync?}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    delivery_ids: Vec<String>,
    /// Answer only once persisted (whatever the group's `ack_durability`).
    #[serde(default)]
    sync: bool,
}

/// `{delivery_ids, delay_ms?, sync?}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    delivery_ids: Vec<String>,
    /// Redeliver after this long; the group's backoff when absent.
    #[serde(default)]
    delay_ms: Option<u64>,
    /// Answer only once persisted (whatever the group's `ack_durability`).
    #[serde(default)]
    sync: bool,
}

/// `{delivery_ids, ack_wait_ms?, sync?}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    delivery_ids: Vec<String>,
    /// The new lease, from now; the group's `ack_wait_ms` when absent.
    #[serde(default)]
    ack_wait_ms: Option<u64>,
    /// Answer only once persisted (whatever the group's `ack_durability`).
    #[serde(default)]
    sync: bool,
}

/// `{delivery_ids, reason?, sync?}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    delivery_ids: Vec<String>,
    /// Why; kept with the dead letter.
    #[serde(default)]
    reason: Option<String>,
    /// Answer only once persisted (whatever the group's `ack_durability`).
    #[serde(default)]
    sync: bool,
}

/// `{to}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    to: StartPosition,
}

/// `{member}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    member: String,
}

/// `{ids?}`: all dead letters when absent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default)]
    ids: Option<Vec<u64>>,
}

/// `?limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// At most this many (default 100, at most 10,000).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<u32>,
}

/// `{}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Empty {}

/// `{redriven}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedriveResponse {
    redriven: u64,
}

/// A group as the API renders it: name, settings, `created_at` (RFC 3339).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Group)]
pub struct GroupView {
    name: String,
    #[serde(flatten)]
    spec: GroupSpec,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<GroupInfo> for GroupView {
    fn from(info: GroupInfo) -> Self {
        Self {
            name: info.name.into_string(),
            spec: info.spec,
            created_at: format_rfc3339_ms(info.created_at),
        }
    }
}

/// `GET …/groups/{group}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = GroupStatus)]
pub struct GroupStatusView {
    #[serde(flatten)]
    group: GroupView,
    members: Vec<MemberStatus>,
    partitions: Vec<GroupPartitionStatus>,
    in_flight: u64,
    pending: u64,
    dead_letters: u64,
    generation: u64,
}

impl From<GroupStatus> for GroupStatusView {
    fn from(status: GroupStatus) -> Self {
        Self {
            group: GroupView::from(status.info),
            members: status.members,
            partitions: status.partitions,
            in_flight: status.in_flight,
            pending: status.pending,
            dead_letters: status.dead_letters,
            generation: status.generation,
        }
    }
}

/// `GET …/dead-letters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    events: Vec<DeadLetterView>,
}

/// One dead letter: `dead_at` as RFC 3339.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetter)]
pub struct DeadLetterView {
    id: u64,
    event: Option<StoredEvent>,
    reason: String,
    attempts: u32,
    original: PartitionOffset,
    #[schema(format = DateTime)]
    dead_at: String,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        Self {
            id: letter.id,
            event: letter.event,
            reason: letter.reason,
            attempts: letter.attempts,
            original: letter.original,
            dead_at: format_rfc3339_ms(letter.dead_at),
        }
    }
}
