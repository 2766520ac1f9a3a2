//! Dead-letter copies: the rows a group flush recorded are published to
//! the topic's dead-letter topic by the `dead-letter-copies` task
//! (deterministic event ids, so a retry after a crash is deduplicated).

use crate::Inner;
use crate::blocking;
use crate::meta::DeadLetterRecord;
use herald_backend::PartitionOffset;
use herald_backend::Result;
use herald_groups::DeadLetterEffect;
use herald_groups::dead_letter_copy;
use herald_types::EventInput;
use herald_types::GroupName;
use herald_types::TopicName;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::error;
use tracing::warn;

use herald_groups::read_one;

/// A row of `dead_letter_copies`: the group's key and the dead letter's id.
type CopyRow = (String, u64);

/// Dead-letter copies read per publishing pass.
const COPY_BATCH: usize = 256;

/// After a failed pass, dead-letter copies are retried after this long,
/// doubling up to [`COPY_RETRY_MAX`].
const COPY_RETRY: Duration = Duration::from_millis(200);
const COPY_RETRY_MAX: Duration = Duration::from_secs(30);

impl Inner {
    /// Publishes pending dead-letter copies to their topics' dead-letter
    /// topics, oldest first, and forgets each once published (or once it
    /// cannot be: the topic, its dead-letter topic or the event is gone).
    /// Each copy's event id is derived from its dead letter, so one
    /// published again after a crash is deduplicated. Returns whether more
    /// are pending.
    pub(crate) async fn publish_copies(&self) -> Result<bool> {
        let meta = self.meta.clone();
        let pending = blocking(move || meta.pending_copies(COPY_BATCH)).await?;
        let more = pending.len() == COPY_BATCH;
        // Per dead-letter topic: the copies, and the rows they clear.
        let mut batches: BTreeMap<TopicName, (Vec<EventInput>, Vec<CopyRow>)> = BTreeMap::new();
        let mut dropped = Vec::new();
        for (key, id, record) in pending {
            let found = key.split_once('/').and_then(|(topic, group)| {
                let topic = topic.parse::<TopicName>().ok()?;
                let group = group.parse::<GroupName>().ok()?;
                Some((self.lookup_topic(&topic)?, group))
            });
            let Some((source, group)) = found else {
                dropped.push((key, id));
                continue;
            };
            let Some(target) = source.info().spec.dead_letter_topic else {
                dropped.push((key, id));
                continue;
            };
            if self.lookup_topic(&target).is_none() {
                warn!(topic = %source.name, dead_letter_topic = %target, "The dead-letter topic does not exist; the dead letter is kept in the group's list only.");
                dropped.push((key, id));
                continue;
            }
            let Some(event) = read_one(&*source.runtime, record.original).await? else {
                warn!(topic = %source.name, partition = record.original.partition, offset = record.original.offset, "A dead letter's event is gone from the log; no copy published.");
                dropped.push((key, id));
                continue;
            };
            let batch = batches.entry(target).or_default();
            batch.0.push(dead_letter_copy(
                &event,
                &group,
                &record.reason,
                record.attempts,
                id,
            ));
            batch.1.push((key, id));
        }
        let now = self.now();
        for (target, (copies, rows)) in batches {
            let Some(runtime) = self.lookup_topic(&target) else {
                continue;
            };
            let published = match runtime.runtime.publish(copies.clone(), now).await {
                Ok(_) => rows,
                // Down for now (an I/O error, shutting down): retried later.
                Err(error) if error.is_retryable() => return Err(error),
                // One copy the dead-letter topic refuses (too large for it,
                // say) must not hold up the others: one by one, and the
                // refused ones are kept in the list only.
                Err(_) => {
                    let mut published = Vec::with_capacity(rows.len());
                    for (copy, row) in copies.into_iter().zip(rows) {
                        match runtime.runtime.publish(vec![copy], now).await {
                            Ok(_) => published.push(row),
                            Err(error) if error.is_retryable() => return Err(error),
                            Err(error) => {
                                error!(dead_letter_topic = %target, group = %row.0, id = row.1, %error, "The dead-letter topic refuses this copy; the dead letter is kept in the group's list only.");
                                dropped.push(row);
                            }
                        }
                    }
                    published
                }
            };
            self.metrics
                .dead_letter_copies
                .inc_by(published.len() as u64);
            let meta = self.meta.clone();
            blocking(move || meta.copies_done(&published)).await?;
        }
        let meta = self.meta.clone();
        blocking(move || meta.copies_done(&dropped)).await?;
        Ok(more)
    }
}

/// A dead letter as the list records it.
pub(crate) fn dead_letter_record(effect: &DeadLetterEffect) -> DeadLetterRecord {
    DeadLetterRecord {
        original: PartitionOffset {
            partition: effect.partition,
            offset: effect.offset,
        },
        reason: effect.reason.clone(),
        attempts: effect.attempts,
        dead_at: effect.dead_at,
    }
}

/// The `dead-letter-copies` task: publishes pending dead-letter copies at
/// start (a restart may have left some), whenever a flush recorded new
/// ones, and again after a failure with a doubling backoff.
pub(crate) async fn copy_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut retry = COPY_RETRY;
    let mut pending = true;
    loop {
        if pending {
            match inner.publish_copies().await {
                Ok(more) => {
                    retry = COPY_RETRY;
                    pending = more;
                    if more {
                        continue;
                    }
                }
                Err(error) => {
                    inner.metrics.dead_letter_copy_failures.inc();
                    warn!(%error, retry_ms = retry.as_millis() as u64, "Publishing dead-letter copies failed; will retry.");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                        () = inner.copies_wanted.notified() => {}
                    }
                    retry = (retry * 2).min(COPY_RETRY_MAX);
                    continue;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = inner.copies_wanted.notified() => pending = true,
        }
    }
}
