//! Liveness (`/healthz`) and readiness (`/readyz`).
//!
//! Liveness says the process answers HTTP: always 200 while it does.
//! Readiness says it can do useful work: 200 only between storage having
//! opened and shutdown having begun, 503 before and after, so a load balancer
//! neither sends traffic to a server still recovering its log nor to one
//! draining. While open, a backend that reports itself degraded (group state
//! failing to persist for a while: acks would be lost to a crash) also
//! answers 503, `{"status":"degraded","reason":"…"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;

/// Where the server is in its life, as readiness sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Listening, storage not open yet.
    Starting,
    /// Storage open; serving.
    Ready,
    /// Shutdown has begun.
    Stopping,
}

impl Phase {
    /// The `status` member of `/readyz`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            Self::Starting => 0,
            Self::Ready => 1,
            Self::Stopping => 2,
        }
    }

    const fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Starting,
            1 => Self::Ready,
            _ => Self::Stopping,
        }
    }
}

/// The shared, current [`Phase`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<AtomicU8>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(AtomicU8::new(Phase::Starting.to_u8())))
    }
}

impl Readiness {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase.to_u8(), Ordering::Release);
    }
}

/// Body of both endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `ok` for liveness; a [`Phase`] or `degraded` for readiness.
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
    /// Readiness, `degraded`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /healthz`: 200 `{"status":"ok"}`.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers.", body = Status))
)]
pub async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok",
        reason: None,
    })
}

/// `GET /readyz`: 200 `{"status":"ready"}`, or 503 with the phase.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Storage is open; serving.", body = Status),
        (status = 503, description = "Starting (recovering storage), stopping, or degraded (with a reason: e.g. group state failing to persist).", body = Status),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Status>) {
    let phase = state.readiness.phase();
    if phase != Phase::Ready {
        let status = Status {
            status: phase.as_str(),
            reason: None,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(status));
    }
    let degraded = state
        .backend()
        .ok()
        .and_then(herald_backend::Backend::degraded);
    match degraded {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Status {
                status: "degraded",
                reason: Some(reason),
            }),
        ),
        None => (
            StatusCode::OK,
            Json(Status {
                status: phase.as_str(),
                reason: None,
            }),
        ),
    }
}
