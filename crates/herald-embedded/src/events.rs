//! [`Events`] on the embedded backend: publish, read and wait on a topic's
//! partition logs.

use crate::EmbeddedBackend;
use async_trait::async_trait;
use herald_backend::Events;
use herald_backend::PublishResult;
use herald_backend::ReadResult;
use herald_backend::Result;
use herald_types::EventInput;
use herald_types::TopicName;
use std::time::Duration;

#[async_trait]
impl Events for EmbeddedBackend {
    async fn publish(
        &self,
        topic: &TopicName,
        events: Vec<EventInput>,
    ) -> Result<Vec<PublishResult>> {
        let runtime = self.inner.topic(topic)?;
        runtime.runtime.publish(events, self.inner.now()).await
    }

    async fn read(
        &self,
        topic: &TopicName,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadResult> {
        self.inner.topic(topic)?.read(partition, from, max).await
    }

    async fn read_correlated(
        &self,
        topic: &TopicName,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadResult> {
        self.inner
            .topic(topic)?
            .read_correlated(partition, from, max)
            .await
    }

    async fn offset_for_time(
        &self,
        topic: &TopicName,
        partition: u32,
        time_ms: i64,
    ) -> Result<u64> {
        self.inner
            .topic(topic)?
            .offset_for_time(partition, time_ms)
            .await
    }

    async fn wait_for(
        &self,
        topic: &TopicName,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64> {
        self.inner
            .topic(topic)?
            .wait_for(partition, offset, timeout)
            .await
    }
}
