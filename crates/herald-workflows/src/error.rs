//! Errors a running workflow raises and catches: RFC 7807 problem details
//! with the DSL's standard types (`https://serverlessworkflow.io/spec/1.0.0/errors/…`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The prefix of the DSL's standard error types.
pub const STANDARD: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/";

/// The type of the error a cancel raises in the instance (Herald's: the DSL
/// has none). A `catch` that takes it runs its `do` (compensation), and the
/// cancel goes on unwinding: a cancelled instance ends `cancelled`.
pub const CANCELLED: &str = "https://herald.dev/workflows/errors/cancelled";

/// An error in a running workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{type_} ({status}): {}", title.as_deref().unwrap_or(""))]
pub struct WorkflowError {
    /// A URI naming the kind of error.
    #[serde(rename = "type")]
    pub type_: String,
    /// An HTTP-like status.
    pub status: u16,
    /// A short summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Where: the JSON Pointer of the faulting task (`/do/1/askAgent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl WorkflowError {
    /// A standard error: `kind` is `communication`, `timeout`, ….
    #[must_use]
    pub fn standard(kind: &str, status: u16, title: &str, detail: impl Into<String>) -> Self {
        Self {
            type_: format!("{STANDARD}{kind}"),
            status,
            title: Some(title.to_owned()),
            detail: Some(detail.into()),
            instance: None,
        }
    }

    /// `…/errors/expression` (400): an expression failed.
    #[must_use]
    pub fn expression(detail: impl Into<String>) -> Self {
        Self::standard("expression", 400, "Expression failed", detail)
    }

    /// `…/errors/runtime` (500).
    #[must_use]
    pub fn runtime(detail: impl Into<String>) -> Self {
        Self::standard("runtime", 500, "Runtime error", detail)
    }

    /// `…/errors/communication` with `status`.
    #[must_use]
    pub fn communication(status: u16, detail: impl Into<String>) -> Self {
        Self::standard("communication", status, "Communication failed", detail)
    }

    /// `…/errors/timeout` (408).
    #[must_use]
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::standard("timeout", 408, "Timed out", detail)
    }

    /// `…/errors/validation` (400).
    #[must_use]
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::standard("validation", 400, "Invalid", detail)
    }

    /// `…/errors/authorization` (403).
    #[must_use]
    pub fn authorization(detail: impl Into<String>) -> Self {
        Self::standard("authorization", 403, "Not authorized", detail)
    }

    /// The error a cancel raises.
    #[must_use]
    pub fn cancelled() -> Self {
        Self {
            type_: CANCELLED.to_owned(),
            status: 499,
            title: Some("Cancelled".to_owned()),
            detail: Some("The instance was cancelled.".to_owned()),
            instance: None,
        }
    }

    /// This error, placed at `reference` unless it already has a place.
    #[must_use]
    pub fn at(mut self, reference: &str) -> Self {
        if self.instance.is_none() {
            self.instance = Some(reference.to_owned());
        }
        self
    }

    /// As JSON (what `catch.as` binds and filters compare).
    #[must_use]
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
