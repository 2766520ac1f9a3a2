//! `herald.v1.Topics`: topic administration.

use herald_backend::TopicUpdate;
use herald_proto::v1;
use herald_types::TopicName;
use tonic::{Request, Response, Status};

use super::{GrpcState, backend_status, caller, convert, invalid};
use crate::auth::permissions::Action;
use crate::auth::quotas;

/// The `Topics` service.
#[derive(Debug)]
pub(super) struct TopicsService {
    state: GrpcState,
}

impl TopicsService {
    pub(super) fn new(state: GrpcState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl v1::topics_server::Topics for TopicsService {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::Topic>, Status> {
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let topic = request
            .into_inner()
            .topic
            .ok_or_else(|| invalid("topic", "is required"))?;
        caller.require(Action::TopicsManage, &topic.name)?;
        let spec = convert::topic_spec(&topic)?;
        let info = quotas::create_topic(&*backend, &caller, spec).await?;
        Ok(Response::new(convert::topic(info)))
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let topics = backend.list_topics().await.map_err(backend_status)?;
        // Only the topics the caller may read.
        Ok(Response::new(v1::ListTopicsResponse {
            topics: topics
                .into_iter()
                .filter(|info| caller.may(Action::TopicsRead, info.spec.name.as_str()))
                .map(convert::topic)
                .collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::TopicRequest>,
    ) -> Result<Response<v1::TopicDescription>, Status> {
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let request = request.into_inner();
        caller.require(Action::TopicsRead, &request.topic)?;
        let topic: TopicName = convert::name(&request.topic)?;
        let description = backend
            .describe_topic(&topic)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(convert::topic_description(description)))
    }

    async fn update_topic(
        &self,
        request: Request<v1::UpdateTopicRequest>,
    ) -> Result<Response<v1::Topic>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::TopicsManage, &request.topic)?;
        let topic: TopicName = convert::name(&request.topic)?;
        let update = TopicUpdate {
            retention: request.retention.as_ref().map(convert::retention_spec),
            dedup_window_ms: request.dedup_window_ms,
            max_event_bytes: request.max_event_bytes,
            ..TopicUpdate::default()
        };
        let info = backend
            .update_topic(&topic, update)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(convert::topic(info)))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::TopicRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let request = request.into_inner();
        caller.require(Action::TopicsManage, &request.topic)?;
        let topic: TopicName = convert::name(&request.topic)?;
        quotas::delete_topic(&*backend, &caller, &topic).await?;
        Ok(Response::new(v1::Empty {}))
    }
}
