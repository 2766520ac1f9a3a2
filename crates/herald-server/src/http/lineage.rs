//! `GET /v1/lineage`: what one event caused, as a tree (`herald-lineage`).

use axum::Json;
use axum::extract::State;
use herald_lineage::{Answer, Start};
use herald_types::TopicName;
use serde::Deserialize;

use super::AppState;
use super::extract::Query;
use crate::problem::{Code, Problem};

/// Where the tree starts: one of `correlationid`, `causationid`, or
/// `topic` with `partition` (default 0) and `offset`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LineageQuery {
    /// Every event with this correlation id, and what they caused.
    correlationid: Option<String>,
    /// Everything the event of this id caused.
    causationid: Option<String>,
    /// The topic of the event to start from…
    topic: Option<String>,
    /// …its partition (default 0)…
    partition: Option<u32>,
    /// …and its offset.
    offset: Option<u64>,
}

impl LineageQuery {
    fn start(self) -> Result<Start, Problem> {
        let invalid = |detail: &str| Problem::new(Code::InvalidArgument, detail.to_owned());
        let by_position = self.topic.is_some() || self.offset.is_some() || self.partition.is_some();
        match (self.correlationid, self.causationid, by_position) {
            (Some(correlation), None, false) if !correlation.is_empty() => {
                Ok(Start::Correlation(correlation))
            }
            (None, Some(cause), false) if !cause.is_empty() => Ok(Start::Causation(cause)),
            (None, None, true) => {
                let (Some(topic), Some(offset)) = (self.topic, self.offset) else {
                    return Err(invalid(
                        "invalid lineage query: a position needs topic and offset (partition defaults to 0)",
                    ));
                };
                let topic = TopicName::try_from(topic.as_str()).map_err(|error| {
                    Problem::new(Code::InvalidName, format!("invalid topic: {error}"))
                })?;
                Ok(Start::Event {
                    topic,
                    partition: self.partition.unwrap_or(0),
                    offset,
                })
            }
            _ => Err(invalid(
                "invalid lineage query: give one of correlationid, causationid, or topic&partition&offset (non-empty)",
            )),
        }
    }
}

/// `GET /v1/lineage?correlationid=|causationid=|topic=&partition=&offset=`
/// → 200 `{nodes, truncated}`.
#[utoipa::path(
    get, path = "/v1/lineage", tag = "lineage",
    params(LineageQuery),
    responses(
        (status = 200, description = "The events, deliveries, jobs, workflow steps and webhook \
                                      attempts that followed, each after its parent.", body = Answer),
    )
)]
pub async fn lineage(
    State(state): State<AppState>,
    Query(query): Query<LineageQuery>,
) -> Result<Json<Answer>, Problem> {
    let start = query.start()?;
    let answer = state.lineage.get()?.query(start).await?;
    Ok(Json(answer))
}
