//! [`Groups`] on the embedded backend: the group state machines of
//! [`crate::group`] behind the trait, dead letters and redrive.

use crate::EmbeddedBackend;
use crate::blocking;
use crate::meta::group_key;
use async_trait::async_trait;
use herald_backend::AckDurability;
use herald_backend::AckOutcome;
use herald_backend::CommitRequest;
use herald_backend::DeadLetter;
use herald_backend::Error;
use herald_backend::FetchRequest;
use herald_backend::FetchResponse;
use herald_backend::GroupInfo;
use herald_backend::GroupSpec;
use herald_backend::GroupStatus;
use herald_backend::Groups;
use herald_backend::Result;
use herald_backend::StartPosition;
use herald_groups::GroupRuntime;
use herald_groups::Settle;
use herald_groups::read_one;
use herald_types::GroupName;
use herald_types::TopicName;
use std::sync::Arc;
use std::sync::PoisonError;
use std::time::Duration;
use tracing::info;

#[async_trait]
impl Groups for EmbeddedBackend {
    async fn put_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        spec: GroupSpec,
    ) -> Result<(GroupInfo, bool)> {
        spec.validate()?;
        let (topic, group) = (topic.clone(), group.clone());
        self.administer(move |inner| async move {
            let (topic, group) = (&topic, &group);
            let _admin = inner.admin_lock().await?;
            let runtime = inner.topic(topic)?;
            let key = group_key(topic.as_str(), group.as_str());
            let existing = runtime
                .groups
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(group)
                .cloned();
            if let Some(existing) = existing {
                let mut info = existing.info();
                if info.spec.mode != spec.mode {
                    return Err(Error::GroupConflict {
                        group: group.to_string(),
                        existing: info.spec.mode.to_string(),
                    });
                }
                info.spec = spec.clone();
                let (meta, stored) = (inner.meta.clone(), info.clone());
                // Stored and made in memory by one task, so a caller that goes
                // away cannot leave the two apart.
                blocking(move || {
                    meta.put_group(&key, &stored, None)?;
                    existing.set_spec(spec);
                    Ok(())
                })
                .await?;
                return Ok((info, false));
            }
            let info = GroupInfo {
                name: group.clone(),
                spec: spec.clone(),
                created_at: inner.now(),
            };
            let starts = runtime.start_offsets(spec.start).await?;
            let created = Arc::new(GroupRuntime::new(
                key.clone(),
                info.clone(),
                inner.group_budget,
                &starts,
                None,
            ));
            let state =
                serde_json::to_vec(&created.snapshot()).map_err(|error| Error::Corrupt {
                    detail: format!("group state: {error}"),
                })?;
            let (meta, stored, added) = (inner.meta.clone(), info.clone(), Arc::clone(&inner));
            let name = group.clone();
            blocking(move || {
                meta.put_group(&key, &stored, Some(&state))?;
                runtime
                    .groups
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name, created);
                added.group_added.notify_waiters();
                Ok(())
            })
            .await?;
            info!(topic = %topic, group = %group, mode = %spec.mode, "Created group.");
            Ok((info, true))
        })
        .await
    }

    async fn list_groups(&self, topic: &TopicName) -> Result<Vec<GroupInfo>> {
        let runtime = self.inner.topic(topic)?;
        // A BTreeMap: already in name order.
        let groups = runtime
            .groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|group| group.info())
            .collect();
        Ok(groups)
    }

    async fn group_status(&self, topic: &TopicName, group: &GroupName) -> Result<GroupStatus> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let (members, partitions, in_flight, pending, generation) =
            found.status(&runtime.end_offsets(), self.inner.now());
        let (meta, key) = (self.inner.meta.clone(), found.key.clone());
        let dead_letters = blocking(move || meta.dead_letter_count(&key)).await?;
        Ok(GroupStatus {
            info: found.info(),
            members,
            partitions,
            in_flight,
            pending,
            dead_letters,
            generation,
            counters: found.counters(),
        })
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<()> {
        let (topic, group) = (topic.clone(), group.clone());
        self.administer(move |inner| async move {
            let _admin = inner.admin_lock().await?;
            let (runtime, found) = inner.group(&topic, &group)?;
            let (meta, key, name) = (inner.meta.clone(), found.key.clone(), group.clone());
            // Deleted from storage and memory by one task (see put_group).
            blocking(move || {
                meta.delete_group(&key)?;
                runtime
                    .groups
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                Ok(())
            })
            .await
        })
        .await
    }

    async fn fetch(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: FetchRequest,
    ) -> Result<FetchResponse> {
        request.validate()?;
        let (runtime, found) = self.inner.group(topic, group)?;
        let clock = Arc::clone(&self.inner.env.clock);
        let (response, buried) = found
            .fetch(&*runtime.runtime, &request, move || clock.now_ms())
            .await?;
        if buried {
            self.inner.kick_flush();
        }
        Ok(response)
    }

    async fn ack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let (outcome, _) = found.settle(delivery_ids, Settle::Ack, |state, id| {
            (state.ack(id, now), None)
        });
        self.inner.settled(&found, durability, false).await?;
        Ok(outcome)
    }

    async fn nack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        delay: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let delay_ms = delay.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let (outcome, buried) = found.settle(delivery_ids, Settle::Nack, |state, id| {
            state.nack(id, delay_ms, now)
        });
        self.inner.settled(&found, durability, buried).await?;
        Ok(outcome)
    }

    async fn extend(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        ack_wait: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let ack_wait_ms = ack_wait.map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        let (outcome, _) = found.settle(delivery_ids, Settle::Extend, |state, id| {
            (state.extend(id, ack_wait_ms, now), None)
        });
        self.inner.settled(&found, durability, false).await?;
        Ok(outcome)
    }

    async fn reject(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        reason: &str,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let (outcome, buried) = found.settle(delivery_ids, Settle::Reject, |state, id| {
            let effect = state.reject(id, reason, now);
            (effect.is_some(), effect)
        });
        self.inner.settled(&found, durability, buried).await?;
        Ok(outcome)
    }

    async fn commit(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: CommitRequest,
    ) -> Result<()> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let offsets: Vec<(u32, u64)> = request
            .offsets
            .iter()
            .map(|entry| (entry.partition, entry.offset))
            .collect();
        found.commit(
            &request.member,
            request.generation,
            &offsets,
            &runtime.end_offsets(),
        )?;
        self.inner.persist_now().await
    }

    async fn reset(&self, topic: &TopicName, group: &GroupName, to: StartPosition) -> Result<()> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let starts = runtime.start_offsets(to).await?;
        found.reset(&starts);
        self.inner.persist_now().await
    }

    async fn leave(&self, topic: &TopicName, group: &GroupName, member: &str) -> Result<()> {
        let (_, found) = self.inner.group(topic, group)?;
        found.leave(member, self.inner.now());
        Ok(())
    }

    async fn dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let (meta, key) = (self.inner.meta.clone(), found.key.clone());
        let records = blocking(move || meta.dead_letters(&key, limit)).await?;
        let mut letters = Vec::with_capacity(records.len());
        for (id, record) in records {
            let event = read_one(&*runtime.runtime, record.original).await?;
            letters.push(DeadLetter {
                id,
                event,
                reason: record.reason,
                attempts: record.attempts,
                original: record.original,
                dead_at: record.dead_at,
            });
        }
        Ok(letters)
    }

    /// Reads the dead letters and their events (changing nothing), then in
    /// one step makes the events deliverable and queues the ids to leave the
    /// list, then waits for the flush that writes both in one transaction.
    /// A caller that goes away before that step changed nothing; after it,
    /// the flush happens anyway.
    async fn redrive(
        &self,
        topic: &TopicName,
        group: &GroupName,
        ids: Option<&[u64]>,
    ) -> Result<u64> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let _one_at_a_time = found.redriving.lock().await;
        let (meta, key, ids) = (
            self.inner.meta.clone(),
            found.key.clone(),
            ids.map(<[u64]>::to_vec),
        );
        let records = blocking(move || meta.dead_letters_by_id(&key, ids.as_deref())).await?;
        let mut events = Vec::with_capacity(records.len());
        let mut listed = Vec::with_capacity(records.len());
        for (id, record) in records {
            listed.push(id);
            // Gone from the log: it leaves the list, with nothing to deliver.
            if let Some(event) = read_one(&*runtime.runtime, record.original).await? {
                events.push(event);
            }
        }
        let count = found.redrive(events, listed, self.inner.now());
        self.inner.persist_now().await?;
        Ok(count)
    }
}
