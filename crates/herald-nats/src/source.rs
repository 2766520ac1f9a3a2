//! A topic's partitions as `herald-groups` reads them ([`Source`]): reads
//! are the backend's; each partition's end is kept in memory, moved by the
//! stream's republished headers of every stored message (its sequence),
//! so `end_offsets` needs no request and `wait_any` wakes once an event is
//! stored, never before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use herald_backend::{ReadResult, Result};
use herald_groups::Source;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::events::{read_bytes, stored_sequence};
use crate::topic::Topic;
use crate::{Inner, unavailable};

/// The partitions of one topic, for its groups.
#[derive(Debug)]
pub(crate) struct PartitionSource {
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    /// Per partition: one past the last stored event (its last sequence).
    ends: Arc<Vec<AtomicU64>>,
    grew: Arc<Notify>,
    watcher: JoinHandle<()>,
}

impl PartitionSource {
    pub(crate) async fn open(inner: Arc<Inner>, topic: Arc<Topic>) -> Result<Self> {
        // Subscribe first, then read the ends: an event stored in between
        // is seen by one or the other.
        let mut subscriptions = Vec::with_capacity(topic.stored.len());
        for (partition, stored) in topic.stored.iter().enumerate() {
            let subscription = inner
                .client
                .subscribe(format!("{stored}.>"))
                .await
                .map_err(|error| unavailable("subscribe", error))?;
            subscriptions.push(subscription.map(move |message| (partition, message)));
        }
        let mut ends = Vec::with_capacity(topic.streams.len());
        for (partition, stream) in (0u32..).zip(&topic.streams) {
            let extent = inner.partition_state(&topic, partition, stream).await?;
            ends.push(AtomicU64::new(extent.last_sequence));
        }
        let ends = Arc::new(ends);
        let grew = Arc::new(Notify::new());
        let watcher = {
            let (ends, grew) = (Arc::clone(&ends), Arc::clone(&grew));
            let mut stored = futures::stream::select_all(subscriptions);
            tokio::spawn(async move {
                while let Some((partition, message)) = stored.next().await {
                    if let Some(sequence) = stored_sequence(&message) {
                        ends[partition].fetch_max(sequence, Ordering::SeqCst);
                        grew.notify_waiters();
                    }
                }
            })
        };
        Ok(Self {
            inner,
            topic,
            ends,
            grew,
            watcher,
        })
    }

    fn end(&self, partition: u32) -> u64 {
        self.ends
            .get(partition as usize)
            .map_or(0, |end| end.load(Ordering::SeqCst))
    }
}

impl Drop for PartitionSource {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[async_trait]
impl Source for PartitionSource {
    fn end_offsets(&self) -> Vec<u64> {
        self.ends
            .iter()
            .map(|end| end.load(Ordering::SeqCst))
            .collect()
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<ReadResult> {
        self.inner
            .read_partition(&self.topic, partition, from, max, read_bytes(max))
            .await
    }

    async fn read_chunk(&self, partition: u32, from: u64, max_bytes: usize) -> Result<ReadResult> {
        self.inner
            .read_partition(&self.topic, partition, from, 10_000, max_bytes)
            .await
    }

    async fn wait_any(&self, waits: &[(u32, u64)]) {
        if waits.is_empty() {
            return std::future::pending().await;
        }
        loop {
            let grew = self.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if waits
                .iter()
                .any(|&(partition, offset)| self.end(partition) > offset)
            {
                return;
            }
            grew.await;
        }
    }
}
