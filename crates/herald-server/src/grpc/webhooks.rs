//! `herald.v1.Webhooks`: webhook endpoints over gRPC, handled by the same
//! webhook service (`herald_webhooks::Handle`) and the same checks as
//! `http/webhooks.rs`: every method needs `webhooks:manage` (on `*`: an
//! endpoint names no resource), and creating an endpoint or changing its
//! filter also `topics:read` on each topic it delivers from.

use std::time::Duration;

use herald_proto::v1;
use tonic::{Request, Response, Status};

use super::{GrpcState, caller, convert, invalid};
use crate::auth::Caller;
use crate::auth::permissions::Action;
use crate::http::webhooks::require_topics;
use crate::problem::Problem;

/// The `Webhooks` service.
#[derive(Debug)]
pub(super) struct WebhooksService {
    state: GrpcState,
}

impl WebhooksService {
    pub(super) fn new(state: GrpcState) -> Self {
        Self { state }
    }

    /// The caller, once it holds `webhooks:manage` (the permission layer
    /// only checked that it holds it somewhere), and the webhook service.
    /// Every method starts here.
    fn admit<T>(&self, request: &Request<T>) -> Result<(Caller, &herald_webhooks::Handle), Status> {
        let caller = caller(request)?;
        caller.require(Action::WebhooksManage, "*")?;
        Ok((caller, self.state.webhooks.get()?))
    }
}

#[tonic::async_trait]
impl v1::webhooks_server::Webhooks for WebhooksService {
    async fn create_endpoint(
        &self,
        request: Request<v1::CreateEndpointRequest>,
    ) -> Result<Response<v1::Endpoint>, Status> {
        let (caller, webhooks) = self.admit(&request)?;
        let endpoint = request
            .into_inner()
            .endpoint
            .ok_or_else(|| invalid("endpoint", "is required"))?;
        let spec = convert::endpoint_spec(endpoint)?;
        require_topics(&caller, &spec.filter.topics)?;
        let view = webhooks.create(spec).await.map_err(Problem::from)?;
        Ok(Response::new(convert::endpoint(view)))
    }

    async fn list_endpoints(
        &self,
        request: Request<v1::ListEndpointsRequest>,
    ) -> Result<Response<v1::ListEndpointsResponse>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let endpoints = webhooks.list().await.map_err(Problem::from)?;
        Ok(Response::new(v1::ListEndpointsResponse {
            endpoints: endpoints.into_iter().map(convert::endpoint).collect(),
        }))
    }

    async fn get_endpoint(
        &self,
        request: Request<v1::EndpointRequest>,
    ) -> Result<Response<v1::Endpoint>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let endpoint_id = request.into_inner().endpoint_id;
        let view = webhooks.get(&endpoint_id).await.map_err(Problem::from)?;
        Ok(Response::new(convert::endpoint(view)))
    }

    async fn update_endpoint(
        &self,
        request: Request<v1::UpdateEndpointRequest>,
    ) -> Result<Response<v1::Endpoint>, Status> {
        let (caller, webhooks) = self.admit(&request)?;
        let request = request.into_inner();
        let endpoint_id = request.endpoint_id.clone();
        let patch = convert::endpoint_patch(request);
        if let Some(filter) = &patch.filter {
            require_topics(&caller, &filter.topics)?;
        }
        let view = webhooks
            .update(&endpoint_id, patch)
            .await
            .map_err(Problem::from)?;
        Ok(Response::new(convert::endpoint(view)))
    }

    async fn delete_endpoint(
        &self,
        request: Request<v1::EndpointRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let endpoint_id = request.into_inner().endpoint_id;
        webhooks.delete(&endpoint_id).await.map_err(Problem::from)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn rotate_secret(
        &self,
        request: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let request = request.into_inner();
        let overlap = request.overlap_ms.map(Duration::from_millis);
        let secret = webhooks
            .rotate_secret(&request.endpoint_id, overlap)
            .await
            .map_err(Problem::from)?;
        Ok(Response::new(v1::RotateSecretResponse { secret }))
    }

    async fn list_attempts(
        &self,
        request: Request<v1::ListAttemptsRequest>,
    ) -> Result<Response<v1::ListAttemptsResponse>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let request = request.into_inner();
        let endpoint_id = request.endpoint_id.clone();
        let attempts = webhooks
            .attempts(&endpoint_id, convert::attempt_query(request))
            .await
            .map_err(Problem::from)?;
        Ok(Response::new(v1::ListAttemptsResponse {
            attempts: attempts.into_iter().map(convert::attempt).collect(),
        }))
    }

    async fn redeliver(
        &self,
        request: Request<v1::RedeliverRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let request = request.into_inner();
        webhooks
            .redeliver(&request.endpoint_id, &request.message_id)
            .await
            .map_err(Problem::from)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn recover(
        &self,
        request: Request<v1::RecoverRequest>,
    ) -> Result<Response<v1::RecoverResponse>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let request = request.into_inner();
        let redelivering = webhooks
            .recover(&request.endpoint_id, request.since_ms, request.until_ms)
            .await
            .map_err(Problem::from)?;
        Ok(Response::new(v1::RecoverResponse { redelivering }))
    }

    async fn get_job_notifications(
        &self,
        request: Request<v1::JobNotificationsRequest>,
    ) -> Result<Response<v1::JobNotifications>, Status> {
        let (_, webhooks) = self.admit(&request)?;
        let secret = webhooks.job_secret().await.map_err(Problem::from)?;
        Ok(Response::new(v1::JobNotifications {
            secret,
            endpoint_id: herald_webhooks::jobs::JOBS_ENDPOINT_ID.to_owned(),
        }))
    }
}
