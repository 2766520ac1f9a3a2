//! `herald.v1.Streams`: event streams (event sourcing) over topics.

use herald_backend::Direction;
use herald_proto::v1;
use herald_types::{StreamId, TopicName};
use tonic::{Request, Response, Status};

use super::{GrpcState, backend_status, caller, convert, invalid, limit};
use crate::auth::permissions::Action;
use crate::http::streams::{DEFAULT_READ_LIMIT, MAX_READ_LIMIT};

/// The `Streams` service.
#[derive(Debug)]
pub(super) struct StreamsService {
    state: GrpcState,
}

impl StreamsService {
    pub(super) fn new(state: GrpcState) -> Self {
        Self { state }
    }
}

fn names(topic: &str, stream: &str) -> Result<(TopicName, StreamId), Status> {
    Ok((convert::name(topic)?, convert::name(stream)?))
}

#[tonic::async_trait]
impl v1::streams_server::Streams for StreamsService {
    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let traceparent = super::events::traceparent(&request);
        let request = request.into_inner();
        caller.require(Action::StreamsAppend, &request.topic)?;
        let (topic, stream, expected, mut inputs) =
            convert::append_request(request, self.state.clock.now_ms())?;
        let incoming = traceparent.as_deref();
        let _spans = crate::trace::appending(&topic, &stream, &mut inputs, incoming);
        let appended = backend
            .append(&topic, &stream, inputs, expected)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::AppendResponse {
            first_version: appended.first_version,
            last_version: appended.last_version,
            positions: appended
                .positions
                .into_iter()
                .map(convert::publish_result)
                .collect(),
        }))
    }

    async fn read_stream(
        &self,
        request: Request<v1::ReadStreamRequest>,
    ) -> Result<Response<v1::ReadStreamResponse>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::StreamsRead, &request.topic)?;
        let (topic, stream) = names(&request.topic, &request.stream)?;
        let limit = limit(request.limit, DEFAULT_READ_LIMIT, MAX_READ_LIMIT)?;
        let (direction, from) = if request.backward {
            (
                Direction::Backward,
                request.from_version.unwrap_or(u64::MAX),
            )
        } else {
            (Direction::Forward, request.from_version.unwrap_or(0))
        };
        let slice = backend
            .read_stream(&topic, &stream, from, direction, limit)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::ReadStreamResponse {
            events: slice
                .events
                .into_iter()
                .map(|(version, event)| v1::VersionedEvent {
                    version,
                    event: Some(event.into()),
                })
                .collect(),
            next_version: slice.next_version,
        }))
    }

    async fn get_stream(
        &self,
        request: Request<v1::StreamRequest>,
    ) -> Result<Response<v1::StreamMetadata>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::StreamsRead, &request.topic)?;
        let (topic, stream) = names(&request.topic, &request.stream)?;
        let metadata = backend
            .stream_metadata(&topic, &stream)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::StreamMetadata {
            stream: metadata.stream.into_string(),
            version: metadata.version,
            created_at_ms: metadata.created_at,
            updated_at_ms: metadata.updated_at,
        }))
    }

    async fn delete_stream(
        &self,
        request: Request<v1::DeleteStreamRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::StreamsDelete, &request.topic)?;
        let (topic, stream) = names(&request.topic, &request.stream)?;
        backend
            .delete_stream(&topic, &stream, request.hard)
            .await
            .map_err(backend_status)?;
        if request.hard {
            caller
                .stream_hard_deleted(topic.as_str(), stream.as_str())
                .await;
        }
        Ok(Response::new(v1::Empty {}))
    }

    async fn put_snapshot(
        &self,
        request: Request<v1::PutSnapshotRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::StreamsAppend, &request.topic)?;
        let (topic, stream) = names(&request.topic, &request.stream)?;
        let snapshot = request
            .snapshot
            .ok_or_else(|| invalid("snapshot", "is required"))?;
        let state: serde_json::Value = serde_json::from_slice(&snapshot.state_json)
            .map_err(|error| invalid("snapshot.state_json", format!("not JSON: {error}")))?;
        backend
            .put_snapshot(&topic, &stream, snapshot.version, state)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn get_snapshot(
        &self,
        request: Request<v1::StreamRequest>,
    ) -> Result<Response<v1::GetSnapshotResponse>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::StreamsRead, &request.topic)?;
        let (topic, stream) = names(&request.topic, &request.stream)?;
        let snapshot = backend
            .get_snapshot(&topic, &stream)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::GetSnapshotResponse {
            snapshot: snapshot.map(|snapshot| v1::Snapshot {
                version: snapshot.version,
                state_json: serde_json::to_vec(&snapshot.state)
                    .unwrap_or_default()
                    .into(),
            }),
        }))
    }
}
