//! Group state persistence: the `group-flush` task (group commit of every
//! changed group into one redb transaction, waited on by callers that need
//! durability) and the `group-timer` task (lease expiry, silent members).

use crate::Inner;
use crate::blocking;
use crate::dead_letters::dead_letter_record;
use crate::meta::GroupWrite;
use herald_backend::AckDurability;
use herald_backend::Error;
use herald_backend::Result;
use herald_groups::DirtyState;
use herald_groups::GroupRuntime;
use herald_types::TopicName;
use std::sync::Arc;
use std::sync::PoisonError;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::error;
use tracing::info;
use tracing::warn;

/// Group state failing to persist for this long makes the backend report
/// itself degraded ([`Backend::degraded`]): a few seconds, so one slow or
/// failed fsync does not flap readiness, and an operator hears of a disk
/// that stays broken.
const FLUSH_DEGRADED_AFTER_MS: i64 = 5_000;

impl Inner {
    /// The flush at shutdown (the `group-flush` task stopped): callers
    /// still waiting for a round get this one.
    pub(crate) async fn last_flush(&self) -> Result<()> {
        let flushed = self.flush().await;
        self.record_flush(&flushed);
        self.flusher.close(flushed.clone());
        flushed
    }

    /// Persists the state of every group that changed, with the dead
    /// letters and redrives in their outboxes, in one transaction. On
    /// failure every outbox goes back and the groups stay dirty, so the next
    /// round retries all of it. Only the `group-flush` task (and shutdown,
    /// after stopping it) calls this, so rounds never overlap.
    pub(crate) async fn flush(&self) -> Result<()> {
        let groups = self.all_groups();
        let mut writes = Vec::new();
        let mut taken: Vec<(Arc<GroupRuntime>, herald_groups::Outbox)> = Vec::new();
        for group in groups {
            let Some(DirtyState { snapshot, outbox }) = group.take_dirty() else {
                continue;
            };
            let state = match serde_json::to_vec(&snapshot) {
                Ok(state) => state,
                Err(error) => {
                    group.restore_outbox(outbox);
                    for (group, outbox) in taken {
                        group.restore_outbox(outbox);
                    }
                    return Err(Error::Corrupt {
                        detail: format!("group state: {error}"),
                    });
                }
            };
            let copy = group
                .key
                .split_once('/')
                .and_then(|(topic, _)| topic.parse::<TopicName>().ok())
                .and_then(|topic| self.lookup_topic(&topic))
                .is_some_and(|topic| topic.info().spec.dead_letter_topic.is_some());
            writes.push(GroupWrite {
                key: group.key.clone(),
                state,
                buried: outbox.buried.iter().map(dead_letter_record).collect(),
                copy,
                unlisted: outbox.unlisted.clone(),
            });
            taken.push((group, outbox));
        }
        let meta = self.meta.clone();
        if writes.is_empty() {
            // No group changed, but a deferred key-value write may wait for
            // a durable commit (`KvDurability::Deferred`: within a round).
            if !meta.has_deferred() {
                return Ok(());
            }
            return blocking(move || meta.sync_deferred()).await.map(drop);
        }
        match blocking(move || meta.commit_groups(&writes)).await {
            Ok(recorded) => {
                if recorded > 0 {
                    self.metrics.dead_letters.inc_by(recorded);
                    self.copies_wanted.notify_one();
                }
                Ok(())
            }
            Err(error) => {
                for (group, outbox) in taken {
                    group.restore_outbox(outbox);
                }
                Err(error)
            }
        }
    }

    /// Waits until every group change made before this call is persisted
    /// (with its dead letters): asks the `group-flush` task for a round and
    /// waits for one that started after the ask. Concurrent callers share
    /// a round (one transaction). The round runs in that task, so a caller
    /// that goes away changes nothing.
    pub(crate) async fn persist_now(&self) -> Result<()> {
        self.flusher.persist_now().await
    }

    /// Asks for a flush round soon, without waiting for it.
    pub(crate) fn kick_flush(&self) {
        self.flusher.kick();
    }

    pub(crate) async fn settled(
        &self,
        group: &GroupRuntime,
        durability: AckDurability,
        buried: bool,
    ) -> Result<()> {
        let sync = group.ack_durability().max(durability) == AckDurability::Sync;
        if !sync && !buried {
            return Ok(());
        }
        match self.persist_now().await {
            Ok(()) => Ok(()),
            Err(error) if sync => Err(error),
            Err(error) => {
                warn!(group = %group.key, %error, "Dead letters not recorded yet; the next flush retries.");
                Ok(())
            }
        }
    }

    /// Books the outcome of a flush round: metrics, and how long group
    /// state has been failing to persist (for readiness).
    pub(crate) fn record_flush(&self, result: &Result<()>) {
        let mut failing = self
            .flush_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                self.metrics.flushes.inc();
                self.metrics.flush_failing.set(0);
                if let Some((since, _)) = failing.take() {
                    info!(
                        failed_for_ms = self.now() - since,
                        "Group state persists again."
                    );
                }
            }
            Err(error) => {
                self.metrics.flush_failures.inc();
                self.metrics.flush_failing.set(1);
                match &mut *failing {
                    Some((_, last)) => *last = error.to_string(),
                    None => {
                        error!(%error, "Persisting group state failed; retrying every round.");
                        *failing = Some((self.now(), error.to_string()));
                    }
                }
            }
        }
    }

    /// Group state that has failed to persist for
    /// [`FLUSH_DEGRADED_AFTER_MS`], as a health issue: acks, dead letters and
    /// leases since then are in memory only.
    pub(crate) fn group_state_issue(&self) -> Option<herald_backend::HealthIssue> {
        let failing = self
            .flush_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (since, error) = failing.as_ref()?;
        let for_ms = self.now().saturating_sub(*since);
        (for_ms >= FLUSH_DEGRADED_AFTER_MS).then(|| herald_backend::HealthIssue {
            component: "group state".to_owned(),
            code: "unavailable",
            error: format!(
                "failed to persist for {} s (acks, dead letters and leases since are in memory only): {error}",
                for_ms / 1000
            ),
            since_ms: *since,
        })
    }

    /// Returns once some topic has a group (at once if one has).
    pub(crate) async fn until_a_group_exists(&self) {
        loop {
            let added = self.group_added.notified();
            tokio::pin!(added);
            // Registered before the check: a group added after it wakes us.
            added.as_mut().enable();
            let any = self.topic_list().iter().any(|topic| {
                !topic
                    .groups
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
            });
            if any {
                return;
            }
            added.await;
        }
    }

    pub(crate) fn all_groups(&self) -> Vec<Arc<GroupRuntime>> {
        self.topic_list()
            .iter()
            .flat_map(|topic| topic.group_list())
            .collect()
    }
}

/// The `group-flush` task: a round every `interval`, or at once when a
/// caller asks ([`Inner::persist_now`]); each round covers every ticket
/// given out before it started.
pub(crate) async fn flush_loop(inner: Arc<Inner>, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Ticks only while some group exists (see the module docs); a
        // caller waiting for a round is served either way.
        let tick = async {
            inner.until_a_group_exists().await;
            ticker.tick().await;
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tick => {}
            () = inner.flusher.asked() => {}
        }
        let result = inner
            .flusher
            .round(async {
                let result = inner.flush().await;
                inner.record_flush(&result);
                result
            })
            .await;
        drop(result);
    }
}

pub(crate) async fn timer_loop(inner: Arc<Inner>, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = inner.until_a_group_exists() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut buried = false;
        for topic in inner.topic_list() {
            for group in topic.group_list() {
                buried |= group.tick(inner.now());
            }
        }
        if buried {
            inner.kick_flush();
        }
    }
}
