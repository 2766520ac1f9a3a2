//! The audit trail: security-relevant actions as CloudEvents on the topic
//! [`AUDIT_TOPIC`] (`herald.audit`, one partition, created on first use),
//! which only `admin` may read.
//!
//! | type | when |
//! |---|---|
//! | `herald.audit.key.created` / `.rotated` / `.updated` / `.revoked` | an API key changed |
//! | `herald.audit.topic.deleted` | a topic was deleted |
//! | `herald.audit.stream.hard_deleted` | a stream was hard-deleted (erased) |
//! | `herald.audit.permission.denied` | a request was refused with 403 |
//!
//! `data` is `{identity, action, resource, …}`; `subject` is the resource.
//! Only with auth on: without it everyone is `anonymous` and nothing is
//! written (the topic is not created).
//! Writing is best effort: a failure is logged at WARN and does not fail
//! the request it records (the request already happened).

use std::sync::Arc;

use herald_backend::{Backend, Error as BackendError, TopicSpec};
use herald_types::{Event, EventInput, TopicName, format_rfc3339_ms};
use tracing::warn;

pub use super::permissions::AUDIT_TOPIC;
use crate::http::StorageSlot;

/// The source of every audit event.
pub const SOURCE: &str = "/herald/audit";

/// One audited action.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The event type after `herald.audit.` (`key.created`).
    pub kind: &'static str,
    /// Who did it (`key:<id>`, `jwt:<sub>`, `bootstrap`, `anonymous`).
    pub identity: String,
    /// The action it needed, if one.
    pub action: Option<&'static str>,
    /// What it acted on (a topic, a key id).
    pub resource: String,
    /// More about it.
    pub detail: serde_json::Value,
}

/// Appends [`Entry`]s to the audit topic.
#[derive(Debug, Clone)]
pub struct Audit {
    storage: StorageSlot,
    clock: Arc<dyn herald_log::Clock>,
    enabled: bool,
}

impl Audit {
    /// An audit trail on the storage in `storage` (once open). With auth
    /// off (`enabled` false: everyone is `anonymous` with `admin`) there is
    /// no one to tell apart, and nothing is written.
    pub fn new(storage: StorageSlot, clock: Arc<dyn herald_log::Clock>, enabled: bool) -> Self {
        Self {
            storage,
            clock,
            enabled,
        }
    }

    /// Appends `entry`; logs a failure.
    pub async fn record(&self, entry: Entry) {
        if !self.enabled {
            return;
        }
        let backend = match self.storage.get() {
            Ok(storage) => storage.shared_backend(),
            Err(_) => {
                warn!(kind = entry.kind, identity = %entry.identity, "Storage not open; audit entry not written.");
                return;
            }
        };
        if let Err(error) = self.append(&*backend, &entry).await {
            warn!(%error, kind = entry.kind, identity = %entry.identity, resource = %entry.resource, "Cannot write an audit entry.");
        }
    }

    /// Appends `entry` without waiting for it (for refusals, whose answer
    /// must not wait on a write).
    pub fn spawn(&self, entry: Entry) {
        let audit = self.clone();
        tokio::spawn(async move { audit.record(entry).await });
    }

    async fn append(&self, backend: &dyn Backend, entry: &Entry) -> Result<(), BackendError> {
        let topic: TopicName =
            AUDIT_TOPIC
                .parse()
                .map_err(|error: herald_types::InvalidName| {
                    BackendError::invalid("topic", error.to_string())
                })?;
        let now = self.clock.now_ms();
        let mut event = Event::new(
            uuid::Uuid::now_v7().to_string(),
            SOURCE,
            format!("herald.audit.{}", entry.kind),
        );
        event.subject = Some(entry.resource.clone());
        event.time = Some(format_rfc3339_ms(now));
        event.key = Some(entry.identity.clone());
        let mut data = serde_json::json!({
            "identity": entry.identity,
            "resource": entry.resource,
            "action": entry.action,
        });
        if let (Some(data), Some(detail)) = (data.as_object_mut(), entry.detail.as_object()) {
            data.extend(detail.clone());
        }
        event.data = Some(bytes::Bytes::from(data.to_string()));
        let input = || {
            vec![EventInput {
                event: event.clone(),
                partition: None,
            }]
        };
        match backend.publish(&topic, input()).await {
            Err(BackendError::TopicNotFound { .. }) => {
                let mut spec = TopicSpec::new(topic.clone());
                spec.partitions = 1;
                match backend.create_topic(spec).await {
                    Ok(_) | Err(BackendError::TopicExists { .. }) => {}
                    Err(error) => return Err(error),
                }
                backend.publish(&topic, input()).await.map(drop)
            }
            other => other.map(drop),
        }
    }
}
