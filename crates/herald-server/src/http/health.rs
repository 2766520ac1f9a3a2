//! Liveness (`/healthz`) and readiness (`/readyz`).
//!
//! Liveness says the process answers HTTP: always 200 while it does.
//! Readiness says it can do useful work: 200 only between storage having
//! opened and shutdown having begun, 503 before and after, so a load balancer
//! neither sends traffic to a server still recovering its log nor to one
//! draining. While open, storage whose disk refused a write or fsync (a full
//! disk, an I/O error) also makes it 503 `{"status":"degraded"}`, with a
//! `problems` list naming each failed partition or store and its error,
//! until the backend has recovered it (by itself, once the disk works); and
//! so does group state that has failed to persist for a while (acks would be
//! lost to a crash).

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
    /// Readiness while `degraded`: what cannot work now, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<HealthProblem>,
}

/// One part of storage that cannot work now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthProblem {
    /// What: `topic orders partition 0`, `meta.redb`, `streams.redb`.
    #[schema(example = "topic orders partition 0")]
    pub component: String,
    /// The code requests that need it fail with meanwhile.
    #[schema(example = "storage_unavailable")]
    pub code: &'static str,
    /// The error (e.g. `No space left on device`).
    pub error: String,
    /// Since when, in ms since the Unix epoch.
    pub since_ms: i64,
}

/// `GET /healthz`: 200 `{"status":"ok"}`.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers.", body = Status))
)]
pub async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok",
        problems: Vec::new(),
    })
}

/// `GET /readyz`: 200 `{"status":"ready"}`, or 503 with the phase, or 503
/// `degraded` with the problems of storage that failed a write.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Storage is open; serving.", body = Status),
        (status = 503, description = "Starting (recovering storage), stopping, or degraded: storage failed a write (disk full, I/O error) and is not recovered yet; or group state failing to persist; `problems` says what and why.", body = Status),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Status>) {
    let phase = state.readiness.phase();
    if phase != Phase::Ready {
        let status = Status {
            status: phase.as_str(),
            problems: Vec::new(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(status));
    }
    let problems: Vec<HealthProblem> = state
        .backend()
        .map(herald_backend::Backend::health)
        .unwrap_or_default()
        .into_iter()
        .map(|issue| HealthProblem {
            component: issue.component,
            code: issue.code,
            error: issue.error,
            since_ms: issue.since_ms,
        })
        .collect();
    if problems.is_empty() {
        let status = Status {
            status: phase.as_str(),
            problems,
        };
        return (StatusCode::OK, Json(status));
    }
    let status = Status {
        status: "degraded",
        problems,
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(status))
}
