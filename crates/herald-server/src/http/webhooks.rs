//! Webhook endpoints (`herald-webhooks` behind HTTP), all under the
//! `webhooks:manage` permission; creating or changing an endpoint also
//! needs `topics:read` on each topic it delivers from (an endpoint reads
//! them on the caller's behalf).
//!
//! | method and path | body / query | answer |
//! |---|---|---|
//! | `POST /v1/webhooks/endpoints` | [`EndpointSpec`] | 201 the endpoint with its `secret`; 400 `target_not_allowed` for a refused address |
//! | `GET /v1/webhooks/endpoints` | | 200 `{endpoints}` |
//! | `GET`, `PATCH`, `DELETE /v1/webhooks/endpoints/{endpoint_id}` | `PATCH`: [`EndpointPatch`] | 200 / 200 / 204 |
//! | `POST …/{endpoint_id}/rotate-secret` | `{overlap_ms?}` | 200 `{secret}` |
//! | `GET …/{endpoint_id}/attempts` | `status`, `message_id`, `limit`, `before` | 200 `{attempts}`, newest first |
//! | `POST …/{endpoint_id}/messages/{message_id}/redeliver` | | 202 |
//! | `POST …/{endpoint_id}/recover` | `{since, until?}` (RFC 3339) | 202 `{redelivering}` |
//! | `GET /v1/webhooks/jobs` | | 200 `{secret, endpoint_id}`: how jobs' `notify.webhook_url` deliveries are signed, and the pseudo-endpoint their attempts are logged under |

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use herald_types::parse_rfc3339_ms;
use herald_webhooks::endpoint::EndpointSpec;
use herald_webhooks::{AttemptQuery, AttemptRecord, EndpointPatch, EndpointView};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{JsonBody, NoQuery, Query};
use crate::auth::Caller;
use crate::auth::permissions::Action;
use crate::problem::{Code, Problem};

/// `GET /v1/webhooks/endpoints`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    /// Every endpoint, oldest first.
    pub endpoints: Vec<EndpointView>,
}

/// `POST …/rotate-secret`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the old secret keeps signing next to the new one, in ms
    /// (default `webhooks.rotation_overlap_ms`).
    #[serde(default)]
    pub overlap_ms: Option<u64>,
}

/// The new secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewSecret {
    /// `whsec_…`.
    pub secret: String,
}

/// The attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptList {
    /// Newest first.
    pub attempts: Vec<AttemptRecord>,
}

/// `POST …/recover`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Redeliver what failed from this time on (RFC 3339).
    #[schema(format = DateTime)]
    pub since: String,
    /// … up to this time (default: now).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

/// What a recover started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recovering {
    /// Messages put back for delivery, each with a fresh schedule.
    pub redelivering: u64,
}

/// An endpoint reads its topics for whoever made it: they must be allowed to
/// (REST and gRPC).
pub(crate) fn require_topics(caller: &Caller, topics: &[String]) -> Result<(), Problem> {
    for topic in topics {
        caller.require(Action::TopicsRead, topic)?;
    }
    Ok(())
}

fn time(field: &str, text: &str) -> Result<i64, Problem> {
    parse_rfc3339_ms(text).map_err(|error| {
        Problem::new(
            Code::InvalidArgument,
            format!("invalid {field}: not RFC 3339 ({error})"),
        )
    })
}

/// Job notifications' settings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobNotifications {
    /// The secret jobs' `notify.webhook_url` deliveries are signed with.
    pub secret: String,
    /// Their attempts are at `/v1/webhooks/endpoints/{endpoint_id}/attempts`.
    pub endpoint_id: String,
}

/// `GET /v1/webhooks/jobs` → 200.
#[utoipa::path(
    get, path = "/v1/webhooks/jobs", tag = "webhooks",
    responses((status = 200, description = "How jobs' `notify.webhook_url` deliveries are signed and where their attempts are logged.", body = JobNotifications))
)]
pub async fn jobs(
    State(state): State<AppState>,
    _query: NoQuery,
) -> Result<Json<JobNotifications>, Problem> {
    Ok(Json(JobNotifications {
        secret: state.webhooks()?.job_secret().await?,
        endpoint_id: herald_webhooks::jobs::JOBS_ENDPOINT_ID.to_owned(),
    }))
}

/// `POST /v1/webhooks/endpoints` → 201.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints", tag = "webhooks",
    request_body = EndpointSpec,
    responses(
        (status = 201, description = "Created; `secret` is shown here (and on rotation) only.", body = EndpointView,
         headers(("Location" = String, description = "The endpoint's URL."))),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    _query: NoQuery,
    JsonBody(spec): JsonBody<EndpointSpec>,
) -> Result<Response, Problem> {
    require_topics(&caller, &spec.filter.topics)?;
    let view = state.webhooks()?.create(spec).await?;
    let location = format!("/v1/webhooks/endpoints/{}", view.endpoint_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// `GET /v1/webhooks/endpoints` → 200.
#[utoipa::path(
    get, path = "/v1/webhooks/endpoints", tag = "webhooks",
    responses((status = 200, description = "Every endpoint (never the secrets).", body = EndpointList))
)]
pub async fn list(
    State(state): State<AppState>,
    _query: NoQuery,
) -> Result<Json<EndpointList>, Problem> {
    Ok(Json(EndpointList {
        endpoints: state.webhooks()?.list().await?,
    }))
}

/// `GET /v1/webhooks/endpoints/{endpoint_id}` → 200.
#[utoipa::path(
    get, path = "/v1/webhooks/endpoints/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint.")),
    responses((status = 200, description = "The endpoint, its state and counters.", body = EndpointView))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(endpoint_id): Path<String>,
    _query: NoQuery,
) -> Result<Json<EndpointView>, Problem> {
    Ok(Json(state.webhooks()?.get(&endpoint_id).await?))
}

/// `PATCH /v1/webhooks/endpoints/{endpoint_id}` → 200.
#[utoipa::path(
    patch, path = "/v1/webhooks/endpoints/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint.")),
    request_body = EndpointPatch,
    responses((status = 200, description = "The changed endpoint; `enabled: true` re-enables a disabled one.", body = EndpointView))
)]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(endpoint_id): Path<String>,
    _query: NoQuery,
    JsonBody(patch): JsonBody<EndpointPatch>,
) -> Result<Json<EndpointView>, Problem> {
    if let Some(filter) = &patch.filter {
        require_topics(&caller, &filter.topics)?;
    }
    Ok(Json(state.webhooks()?.update(&endpoint_id, patch).await?))
}

/// `DELETE /v1/webhooks/endpoints/{endpoint_id}` → 204.
#[utoipa::path(
    delete, path = "/v1/webhooks/endpoints/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint.")),
    responses((status = 204, description = "Deleted, with its groups and attempt log."))
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(endpoint_id): Path<String>,
    _query: NoQuery,
) -> Result<StatusCode, Problem> {
    state.webhooks()?.delete(&endpoint_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhooks/endpoints/{endpoint_id}/rotate-secret` → 200.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint.")),
    request_body = RotateSecret,
    responses((status = 200, description = "The new secret; deliveries carry a signature of each secret until the overlap ends.", body = NewSecret))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path(endpoint_id): Path<String>,
    _query: NoQuery,
    JsonBody(request): JsonBody<RotateSecret>,
) -> Result<Json<NewSecret>, Problem> {
    let overlap = request.overlap_ms.map(Duration::from_millis);
    let secret = state
        .webhooks()?
        .rotate_secret(&endpoint_id, overlap)
        .await?;
    Ok(Json(NewSecret { secret }))
}

/// `GET /v1/webhooks/endpoints/{endpoint_id}/attempts` → 200.
#[utoipa::path(
    get, path = "/v1/webhooks/endpoints/{endpoint_id}/attempts", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint."), AttemptQuery),
    responses((status = 200, description = "Attempts, newest first.", body = AttemptList))
)]
pub async fn attempts(
    State(state): State<AppState>,
    Path(endpoint_id): Path<String>,
    Query(query): Query<AttemptQuery>,
) -> Result<Json<AttemptList>, Problem> {
    let attempts = state.webhooks()?.attempts(&endpoint_id, query).await?;
    Ok(Json(AttemptList { attempts }))
}

/// `POST /v1/webhooks/endpoints/{endpoint_id}/messages/{message_id}/redeliver` → 202.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{endpoint_id}/messages/{message_id}/redeliver", tag = "webhooks",
    params(
        ("endpoint_id" = String, Path, description = "The endpoint."),
        ("message_id" = String, Path, description = "The message (`webhook-id`: `<topic>.<partition>.<offset>`)."),
    ),
    responses((status = 202, description = "One more attempt is on its way; its outcome shows in the attempts."))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    Path((endpoint_id, message_id)): Path<(String, String)>,
    _query: NoQuery,
) -> Result<StatusCode, Problem> {
    state
        .webhooks()?
        .redeliver(&endpoint_id, &message_id)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v1/webhooks/endpoints/{endpoint_id}/recover` → 202.
#[utoipa::path(
    post, path = "/v1/webhooks/endpoints/{endpoint_id}/recover", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint.")),
    request_body = Recover,
    responses((status = 202, description = "Every message that failed in the window is delivered again, with a fresh schedule.", body = Recovering))
)]
pub async fn recover(
    State(state): State<AppState>,
    Path(endpoint_id): Path<String>,
    _query: NoQuery,
    JsonBody(request): JsonBody<Recover>,
) -> Result<Response, Problem> {
    let since = time("since", &request.since)?;
    let until = request
        .until
        .as_deref()
        .map(|until| time("until", until))
        .transpose()?;
    let redelivering = state
        .webhooks()?
        .recover(&endpoint_id, since, until)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Recovering { redelivering })).into_response())
}
