//! [`Streams`] on the embedded backend: appends through the topic's
//! partition logs, the stream index of [`crate::stream`] for reads.

use crate::EmbeddedBackend;
use crate::task_error;
use async_trait::async_trait;
use herald_backend::AppendResult;
use herald_backend::Direction;
use herald_backend::ExpectedVersion;
use herald_backend::Result;
use herald_backend::Snapshot as StreamSnapshot;
use herald_backend::StreamMetadata;
use herald_backend::StreamSlice;
use herald_backend::Streams;
use herald_types::EventInput;
use herald_types::StreamId;
use herald_types::TopicName;
use std::sync::Arc;

#[async_trait]
impl Streams for EmbeddedBackend {
    async fn append(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        events: Vec<EventInput>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let runtime = self.inner.topic(topic)?;
        self.inner
            .streams
            .append(
                Arc::clone(&runtime.runtime),
                Arc::clone(&runtime.streams),
                stream,
                events,
                expected,
            )
            .await
    }

    async fn read_stream(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        let runtime = self.inner.topic(topic)?;
        self.inner
            .streams
            .read(&runtime, stream, from_version, direction, limit)
            .await
    }

    async fn stream_metadata(
        &self,
        topic: &TopicName,
        stream: &StreamId,
    ) -> Result<StreamMetadata> {
        self.inner.topic(topic)?;
        self.inner.streams.metadata(topic, stream).await
    }

    async fn delete_stream(&self, topic: &TopicName, stream: &StreamId, hard: bool) -> Result<()> {
        let runtime = self.inner.topic(topic)?;
        let (inner, stream) = (Arc::clone(&self.inner), stream.clone());
        // Runs to completion even if the caller goes away: once the delete
        // is committed, its events must become unreadable and be compacted.
        tokio::spawn(async move {
            let erased = inner
                .streams
                .delete(&runtime, &runtime.streams, &stream, hard)
                .await?;
            if !erased.is_empty() {
                inner.mark_erased(&runtime, &erased);
            }
            Ok(())
        })
        .await
        .map_err(|error| task_error(&error))?
    }

    async fn put_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        version: u64,
        state: serde_json::Value,
    ) -> Result<()> {
        self.inner.topic(topic)?;
        self.inner
            .streams
            .put_snapshot(topic, stream, version, &state)
            .await
    }

    async fn get_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
    ) -> Result<Option<StreamSnapshot>> {
        self.inner.topic(topic)?;
        self.inner.streams.get_snapshot(topic, stream).await
    }
}
