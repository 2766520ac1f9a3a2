//! Operations endpoints under `/v1/admin`.
//!
//! `POST /v1/admin/flush`: persist consumer-group state now (ops and tests).
//! Queue and keyed groups apply acks in memory and persist them every 50 ms;
//! this persists them at once, so that every ack answered before the flush
//! answers survives a crash (`kill -9`, power loss). 200 `{"flushed": true}`.
//!
//! `POST /v1/admin/compact`: carry out the pending erasures of hard-deleted
//! streams now and wait for them. A hard delete makes a stream's events
//! unreadable at once and schedules a compaction of the segments holding
//! them, which runs in the background soon after; this runs it now and
//! answers once the payloads are gone from every file of the data
//! directory. 200 `{"partitions", "segments", "events"}`: what this pass did
//! (zeros when nothing was pending).

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

/// `POST /v1/admin/compact` → 200 once every pending erasure is carried out.
#[utoipa::path(
    post, path = "/v1/admin/compact", tag = "operations",
    responses((status = 200, description = "Hard-deleted events are erased from disk.", body = Compacted))
)]
pub async fn compact(
    State(state): State<AppState>,
    _query: NoQuery,
) -> Result<Json<Compacted>, Problem> {
    let report = state.storage.get()?.compact().await?;
    Ok(Json(Compacted {
        partitions: report.partitions,
        segments: report.segments,
        events: report.events,
    }))
}

/// The answer of a compaction.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Compacted {
    /// Partitions whose pending erasures were carried out.
    partitions: usize,
    /// Segments rewritten.
    segments: usize,
    /// Events whose contents were erased.
    events: u64,
}

/// The answer of a flush.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Flushed {
    flushed: bool,
}
