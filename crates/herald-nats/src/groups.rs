//! [`Groups`] on the NATS backend: not built yet. Every call fails with
//! `unavailable`, naming what is missing, and `herald serve` does not offer
//! this backend until groups are here (issue "The NATS JetStream backend").

use std::time::Duration;

use async_trait::async_trait;
use herald_backend::{
    AckDurability, AckOutcome, CommitRequest, DeadLetter, FetchRequest, FetchResponse, GroupInfo,
    GroupSpec, GroupStatus, Groups, Result, StartPosition,
};
use herald_types::{GroupName, TopicName};

use crate::{NatsBackend, not_built};

#[async_trait]
impl Groups for NatsBackend {
    async fn put_group(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _spec: GroupSpec,
    ) -> Result<(GroupInfo, bool)> {
        Err(not_built("consumer groups"))
    }

    async fn list_groups(&self, _topic: &TopicName) -> Result<Vec<GroupInfo>> {
        Err(not_built("consumer groups"))
    }

    async fn group_status(&self, _topic: &TopicName, _group: &GroupName) -> Result<GroupStatus> {
        Err(not_built("consumer groups"))
    }

    async fn delete_group(&self, _topic: &TopicName, _group: &GroupName) -> Result<()> {
        Err(not_built("consumer groups"))
    }

    async fn fetch(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _request: FetchRequest,
    ) -> Result<FetchResponse> {
        Err(not_built("consumer groups"))
    }

    async fn ack(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _delivery_ids: &[String],
        _durability: AckDurability,
    ) -> Result<AckOutcome> {
        Err(not_built("consumer groups"))
    }

    async fn nack(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _delivery_ids: &[String],
        _delay: Option<Duration>,
        _durability: AckDurability,
    ) -> Result<AckOutcome> {
        Err(not_built("consumer groups"))
    }

    async fn extend(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _delivery_ids: &[String],
        _ack_wait: Option<Duration>,
        _durability: AckDurability,
    ) -> Result<AckOutcome> {
        Err(not_built("consumer groups"))
    }

    async fn reject(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _delivery_ids: &[String],
        _reason: &str,
        _durability: AckDurability,
    ) -> Result<AckOutcome> {
        Err(not_built("consumer groups"))
    }

    async fn commit(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _request: CommitRequest,
    ) -> Result<()> {
        Err(not_built("consumer groups"))
    }

    async fn reset(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _to: StartPosition,
    ) -> Result<()> {
        Err(not_built("consumer groups"))
    }

    async fn leave(&self, _topic: &TopicName, _group: &GroupName, _member: &str) -> Result<()> {
        Err(not_built("consumer groups"))
    }

    async fn dead_letters(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        Err(not_built("consumer groups"))
    }

    async fn redrive(
        &self,
        _topic: &TopicName,
        _group: &GroupName,
        _ids: Option<&[u64]>,
    ) -> Result<u64> {
        Err(not_built("consumer groups"))
    }
}
