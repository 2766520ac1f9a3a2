//! `schedule.on`: an event matching the filters of a workflow's latest
//! version starts an instance of it, with `[event]` as its input (the DSL:
//! "the array of triggering CloudEvents"), at most once per event.
//!
//! Each topic the filters name is read through a queue group of its own,
//! `workflows.<namespace>.<name>` (starting at the events published after
//! the trigger first ran), so a restart resumes exactly where the trigger
//! was, and an event is acknowledged only once its instance started. The
//! instance id an event starts is claimed first in the `Kv` bucket
//! [`TRIGGERS_BUCKET`] under the topic and the event's id, so an event
//! delivered again (a crash before the ack) finds its instance instead of
//! starting a second one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_backend::{
    AckDurability, Error as BackendError, Expect, FetchRequest, GroupMode, GroupSpec, StartPosition,
};
use herald_types::{Event, GroupName, TopicName};
use serde_json::Value;
use tracing::warn;

use crate::engine::{Engine, EngineError};
use crate::eval::{Compiled, Scope};
use crate::now_ms;
use crate::run::Listening;
use crate::schedule::Clock;
use crate::store::StoredDefinition;

/// The `Kv` bucket of events that started instances: key
/// `<namespace>/<name>/<topic>/<event id>`, value the instance id.
pub const TRIGGERS_BUCKET: &str = "workflows.triggers";

impl Engine {
    /// Makes `namespace/name`'s trigger follow its latest version: stops
    /// the one of an older version, starts one if the latest has a
    /// `schedule` (`on` here, `every`, `cron` or `after` in
    /// [`crate::schedule`]).
    pub(crate) async fn refresh_trigger(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(), EngineError> {
        let stored = self.definitions().latest(namespace, name).await?;
        let key = format!("{namespace}/{name}");
        {
            let triggers = self.triggers();
            let Ok(mut triggers) = triggers.lock() else {
                return Ok(());
            };
            if let Some((version, cancel)) = triggers.get(&key) {
                if *version == stored.version {
                    return Ok(());
                }
                cancel.cancel();
            }
            triggers.remove(&key);
        }
        let compiled = self
            .compiled(&stored.namespace, &stored.name, &stored.version)
            .await?;
        let Some(schedule) = compiled.definition.workflow.schedule.as_ref() else {
            return Ok(());
        };
        let cancel = self.cancel_token().child_token();
        if let Ok(mut triggers) = self.triggers().lock() {
            triggers.insert(key, (stored.version.clone(), cancel.clone()));
        }
        if let Ok(Some(clock)) = Clock::of(schedule) {
            let engine = self.clone();
            self.tracker().spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = engine.clock(clock, stored) => {}
                }
            });
            return Ok(());
        }
        if schedule.on.is_none() {
            return Ok(());
        }
        let probe = filter_of(&compiled)?;
        let group = group_of(&stored)?;
        for topic in probe.topics {
            // Set up before the deploy answers, so the events published
            // after it are the trigger's (a topic created later is set up
            // when it appears).
            match self
                .backend()
                .put_group(&topic, &group, trigger_group())
                .await
            {
                Ok(_) | Err(BackendError::TopicNotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            let engine = self.clone();
            let compiled = Arc::clone(&compiled);
            let stored = stored.clone();
            let cancel = cancel.clone();
            self.tracker().spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = engine.follow(compiled, stored, topic) => {}
                }
            });
        }
        Ok(())
    }

    /// Reads `topic` through the trigger's group for ever, starting an
    /// instance for each event that matches.
    async fn follow(&self, compiled: Arc<Compiled>, stored: StoredDefinition, topic: TopicName) {
        let Ok(group) = group_of(&stored) else {
            return;
        };
        let backend = self.backend();
        loop {
            match backend.put_group(&topic, &group, trigger_group()).await {
                Ok(_) => break,
                Err(BackendError::TopicNotFound { .. }) => {}
                Err(error) => {
                    warn!(%topic, %error, "Cannot set up a workflow trigger's group; trying again.");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        loop {
            let request = FetchRequest {
                member: "workflow-engine".to_owned(),
                max: 64,
                wait_ms: 5_000,
            };
            let fetched = match backend.fetch(&topic, &group, request).await {
                Ok(fetched) => fetched,
                Err(error) => {
                    warn!(%topic, %error, "A workflow trigger's fetch failed; trying again.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for delivery in fetched.deliveries {
                let envelope = serde_json::to_value(&delivery.event).unwrap_or(Value::Null);
                let started = match self.trigger(&compiled, &stored, &topic, &envelope).await {
                    Ok(()) => true,
                    Err(error) => {
                        warn!(%topic, event = %delivery.event.event.id, %error,
                              "A workflow trigger could not start its instance; it will be delivered again.");
                        false
                    }
                };
                let ids = [delivery.delivery_id];
                let settled = if started {
                    backend.ack(&topic, &group, &ids, AckDurability::Sync).await
                } else {
                    backend
                        .nack(
                            &topic,
                            &group,
                            &ids,
                            Some(Duration::from_secs(1)),
                            AckDurability::Async,
                        )
                        .await
                };
                if let Err(error) = settled {
                    warn!(%topic, %error, "Settling a workflow trigger's delivery failed.");
                }
            }
        }
    }

    /// Starts the instance `envelope` asks for, if it matches and did not
    /// start one already.
    async fn trigger(
        &self,
        compiled: &Compiled,
        stored: &StoredDefinition,
        topic: &TopicName,
        envelope: &Value,
    ) -> Result<(), EngineError> {
        let mut filter = filter_of(compiled)?;
        // An expression failing on this event: it does not match.
        if !filter
            .offer(compiled, envelope, &Scope::default())
            .unwrap_or(false)
        {
            return Ok(());
        }
        let event_id = envelope["id"].as_str().unwrap_or_default();
        let key = format!("{}/{}/{topic}/{event_id}", stored.namespace, stored.name);
        let backend = self.backend();
        let id = match backend.kv_get(TRIGGERS_BUCKET, &key).await? {
            Some(entry) => String::from_utf8_lossy(&entry.value).into_owned(),
            None => {
                let id = Event::generate_id(now_ms());
                match backend
                    .kv_put(
                        TRIGGERS_BUCKET,
                        &key,
                        Bytes::from(id.clone()),
                        Expect::Absent,
                    )
                    .await
                {
                    Ok(_) => id,
                    Err(BackendError::RevisionMismatch { .. }) => backend
                        .kv_get(TRIGGERS_BUCKET, &key)
                        .await?
                        .map(|entry| String::from_utf8_lossy(&entry.value).into_owned())
                        .unwrap_or(id),
                    Err(error) => return Err(error.into()),
                }
            }
        };
        self.start_with_id(&id, stored, Value::Array(vec![envelope.clone()]))
            .await?;
        Ok(())
    }
}

/// A fresh matcher of the workflow's `schedule.on` (one per event: an
/// event starts an instance alone).
fn filter_of(compiled: &Compiled) -> Result<Listening, EngineError> {
    Listening::new(
        compiled,
        on(compiled),
        "schedule.on",
        &Value::Null,
        &Scope::default(),
    )
    .map_err(|fault| {
        EngineError::Storage(BackendError::invalid("schedule.on", format!("{fault:?}")))
    })
}

/// The trigger's group on each of its topics.
fn group_of(stored: &StoredDefinition) -> Result<GroupName, EngineError> {
    GroupName::try_from(format!("workflows.{}.{}", stored.namespace, stored.name)).map_err(
        |error| EngineError::Storage(BackendError::invalid("schedule.on", error.to_string())),
    )
}

/// A queue group from the events published after it was made.
fn trigger_group() -> GroupSpec {
    let mut spec = GroupSpec::new(GroupMode::Queue);
    spec.start = StartPosition::Latest;
    spec
}

fn on(compiled: &Compiled) -> &crate::dsl::EventConsumption {
    static NONE: std::sync::OnceLock<crate::dsl::EventConsumption> = std::sync::OnceLock::new();
    compiled
        .definition
        .workflow
        .schedule
        .as_ref()
        .and_then(|schedule| schedule.on.as_ref())
        .unwrap_or_else(|| {
            NONE.get_or_init(|| crate::dsl::EventConsumption {
                one: None,
                any: Some(Vec::new()),
                all: None,
                until: None,
            })
        })
}
