//! Operations endpoints under `/v1/admin`.
//!
//! `POST /v1/admin/flush`: persist consumer-group state now (ops and tests).
//! Queue and keyed groups apply acks in memory and persist them every 50 ms;
//! this persists them at once, so that every ack answered before the flush
//! answers survives a crash (`kill -9`, power loss). 200 `{"flushed": true}`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use super::extract::NoQuery;
use crate::problem::Problem;

/// `POST /v1/admin/flush` → 200 `{"flushed": true}` once group state is durable.
#[utoipa::path(
    post, path = "/v1/admin/flush", tag = "operations",
    responses((status = 200, description = "Group state is durable.", body = Flushed))
)]
pub async fn flush(
    State(state): State<AppState>,
    _query: NoQuery,
) -> Result<Json<Flushed>, Problem> {
    state.storage.get()?.flush_group_state().await?;
    Ok(Json(Flushed { flushed: true }))
}

/// The answer of a flush.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Flushed {
    flushed: bool,
}
