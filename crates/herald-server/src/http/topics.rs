//! Topics: `POST /v1/topics`, `GET /v1/topics`, and `GET`, `PATCH`,
//! `DELETE /v1/topics/{topic}`.
//!
//! Bodies are the backend's [`TopicSpec`] and [`TopicUpdate`] (unknown
//! fields refused). Answers render a topic as its settings plus
//! `created_at` as RFC 3339 (the backend keeps ms; the API speaks RFC 3339).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use herald_backend::{PartitionInfo, TopicDescription, TopicInfo, TopicSpec, TopicUpdate};
use herald_types::{TopicName, format_rfc3339_ms};
use serde::Serialize;

use super::AppState;
use super::extract::{JsonBody, NoQuery, TopicPath, check_topic_name_field, from_value};
use crate::auth::permissions::Action;
use crate::auth::{Caller, quotas};
use crate::problem::Problem;

/// `POST /v1/topics` → 201 topic, with `Location`.
#[utoipa::path(
    post, path = "/v1/topics", tag = "topics",
    request_body(content = TopicSpec, description = "The topic's settings; all but `name` optional."),
    responses(
        (status = 201, description = "Created.", body = TopicView,
         headers(("Location" = String, description = "The topic's URL."))),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    _query: NoQuery,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, Problem> {
    let backend = state.backend()?;
    check_topic_name_field(&body, "name")?;
    if let Some(name) = body.get("name").and_then(serde_json::Value::as_str) {
        caller.require(Action::TopicsManage, name)?;
    }
    check_topic_name_field(&body, "dead_letter_topic")?;
    let spec: TopicSpec = from_value(body)?;
    let info = quotas::create_topic(backend, &caller, spec).await?;
    let location = format!("/v1/topics/{}", info.spec.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(TopicView::from(info)),
    )
        .into_response())
}

/// `GET /v1/topics` → 200 `{topics: [...]}`.
#[utoipa::path(
    get, path = "/v1/topics", tag = "topics",
    responses((status = 200, description = "Every topic.", body = TopicList))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    _query: NoQuery,
) -> Result<Json<TopicList>, Problem> {
    let topics = state.backend()?.list_topics().await?;
    // Only the topics the caller may read.
    Ok(Json(TopicList {
        topics: topics
            .into_iter()
            .filter(|info| caller.may(Action::TopicsRead, info.spec.name.as_str()))
            .map(TopicView::from)
            .collect(),
    }))
}

/// `GET /v1/topics/{topic}` → 200 topic with `partition_info`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}", tag = "topics", params(("topic" = TopicName, Path, description = "The topic.", example = "orders")),
    responses((status = 200, description = "The topic and its partitions.", body = TopicDescriptionView))
)]
pub async fn describe(
    State(state): State<AppState>,
    TopicPath(topic): TopicPath,
    _query: NoQuery,
) -> Result<Json<TopicDescriptionView>, Problem> {
    let description = state.backend()?.describe_topic(&topic).await?;
    Ok(Json(TopicDescriptionView::from(description)))
}

/// `PATCH /v1/topics/{topic}` (retention, limits, dead-letter topic) → 200 topic.
#[utoipa::path(
    patch, path = "/v1/topics/{topic}", tag = "topics", params(("topic" = TopicName, Path, description = "The topic.", example = "orders")),
    request_body(content = TopicUpdate, description = "The settings to change; absent ones stay."),
    responses((status = 200, description = "The changed topic.", body = TopicView))
)]
pub async fn update(
    State(state): State<AppState>,
    TopicPath(topic): TopicPath,
    _query: NoQuery,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<TopicView>, Problem> {
    let backend = state.backend()?;
    check_topic_name_field(&body, "dead_letter_topic")?;
    let update: TopicUpdate = from_value(body)?;
    let info = backend.update_topic(&topic, update).await?;
    Ok(Json(TopicView::from(info)))
}

/// `DELETE /v1/topics/{topic}` → 204.
#[utoipa::path(
    delete, path = "/v1/topics/{topic}", tag = "topics", params(("topic" = TopicName, Path, description = "The topic.", example = "orders")),
    responses((status = 204, description = "Deleted, with its events and groups."))
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    TopicPath(topic): TopicPath,
    _query: NoQuery,
) -> Result<StatusCode, Problem> {
    quotas::delete_topic(state.backend()?, &caller, &topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A topic as the API renders it: its settings and `created_at`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Topic)]
pub struct TopicView {
    #[serde(flatten)]
    spec: TopicSpec,
    /// Creation time, RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<TopicInfo> for TopicView {
    fn from(info: TopicInfo) -> Self {
        Self {
            created_at: format_rfc3339_ms(info.created_at),
            spec: info.spec,
        }
    }
}

/// `GET /v1/topics`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopicList {
    topics: Vec<TopicView>,
}

/// `GET /v1/topics/{topic}`: the topic and each partition's extent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = TopicDescription)]
pub struct TopicDescriptionView {
    #[serde(flatten)]
    topic: TopicView,
    partition_info: Vec<PartitionInfo>,
}

impl From<TopicDescription> for TopicDescriptionView {
    fn from(description: TopicDescription) -> Self {
        Self {
            topic: TopicView::from(description.info),
            partition_info: description.partition_info,
        }
    }
}
