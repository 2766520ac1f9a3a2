//! [`Groups`] on the NATS backend: settings in the `groups` bucket, every
//! other call run by the group's owner (`group.rs`), here or forwarded.

use std::time::Duration;

use async_trait::async_trait;
use herald_backend::{
    AckDurability, AckOutcome, CommitRequest, DeadLetter, Error, Expect, FetchRequest,
    FetchResponse, GroupInfo, GroupSpec, GroupStatus, Groups, Result, StartPosition,
};
use herald_groups::{GroupRuntime, Settle};
use herald_types::{GroupName, TopicName};
use tracing::{info, warn};

use crate::group::{Call, GROUPS_BUCKET, Reply, group_key};
use crate::kv::KvWrite;
use crate::topics::now_ms;
use crate::{NatsBackend, unavailable};

/// How many times a settings write that lost a race reads again.
const RETRIES: usize = 8;

fn decode_info(value: &[u8]) -> Result<GroupInfo> {
    serde_json::from_slice(value).map_err(|error| Error::Corrupt {
        detail: format!("group settings: {error}"),
    })
}

fn encode_json<T: serde::Serialize>(value: &T) -> Result<bytes::Bytes> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|error| Error::Corrupt {
            detail: format!("group record: {error}"),
        })
}

fn unexpected(reply: &Reply) -> Error {
    unavailable("group call", format!("unexpected answer {reply:?}"))
}

impl NatsBackend {
    async fn settle(
        &self,
        topic: &TopicName,
        group: &GroupName,
        kind: Settle,
        ids: &[String],
        details: (Option<u64>, &str),
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (ms, reason) = details;
        let call = Call::Settle {
            kind,
            ids: ids.to_vec(),
            ms,
            reason: reason.to_owned(),
            durability,
        };
        match self.inner.group_call(topic, group, call).await? {
            Reply::Outcome(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    async fn call_done(&self, topic: &TopicName, group: &GroupName, call: Call) -> Result<()> {
        match self.inner.group_call(topic, group, call).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

fn millis(duration: Option<Duration>) -> Option<u64> {
    duration.map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait]
impl Groups for NatsBackend {
    async fn put_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        spec: GroupSpec,
    ) -> Result<(GroupInfo, bool)> {
        spec.validate()?;
        let inner = &self.inner;
        inner.check_open()?;
        inner.topic(topic).await?;
        let key = group_key(topic, group);
        for _ in 0..RETRIES {
            if let Some(entry) = inner.kv_get(GROUPS_BUCKET, &key).await? {
                let mut info = decode_info(&entry.value)?;
                if info.spec.mode != spec.mode {
                    return Err(Error::GroupConflict {
                        group: group.to_string(),
                        existing: info.spec.mode.to_string(),
                    });
                }
                info.spec = spec.clone();
                match inner
                    .kv_put(
                        GROUPS_BUCKET,
                        &key,
                        encode_json(&info)?,
                        Expect::Revision(entry.revision),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(Error::RevisionMismatch { .. }) => continue,
                    Err(error) => return Err(error),
                }
                // The owner (whichever node) takes the new settings now; a
                // node taking the group over later reads them.
                if let Err(error) = self.call_done(topic, group, Call::Reload).await {
                    warn!(group = %key, %error, "New group settings stored; the running group takes them when it next moves.");
                }
                return Ok((info, false));
            }
            let info = GroupInfo {
                name: group.clone(),
                spec: spec.clone(),
                created_at: now_ms(),
            };
            let starts = inner.start_offsets(topic, spec.start).await?;
            let initial = GroupRuntime::new(
                key.clone(),
                info.clone(),
                herald_groups::Budget::default(),
                &starts,
                None,
            )
            .snapshot();
            // Settings and first state in one batch: a caller that goes
            // away leaves both or neither.
            let written = inner
                .kv_write_many(vec![
                    KvWrite {
                        bucket: crate::group::STATE_BUCKET,
                        key: key.clone(),
                        value: Some(crate::group::initial_state(initial)?),
                        expect: Expect::Any,
                    },
                    KvWrite {
                        bucket: GROUPS_BUCKET,
                        key: key.clone(),
                        value: Some(encode_json(&info)?),
                        expect: Expect::Absent,
                    },
                ])
                .await?;
            if written.is_some() {
                info!(topic = %topic, group = %group, mode = %spec.mode, "Created group.");
                return Ok((info, true));
            }
        }
        Err(unavailable(
            "group settings",
            format!("{key:?} kept changing"),
        ))
    }

    async fn list_groups(&self, topic: &TopicName) -> Result<Vec<GroupInfo>> {
        let inner = &self.inner;
        inner.topic(topic).await?;
        let keys = inner
            .kv_keys(GROUPS_BUCKET, &format!("{topic}/"), None, usize::MAX)
            .await?;
        let mut groups = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(entry) = inner.kv_get(GROUPS_BUCKET, key).await? {
                groups.push(decode_info(&entry.value)?);
            }
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
    }

    async fn group_status(&self, topic: &TopicName, group: &GroupName) -> Result<GroupStatus> {
        match self.inner.group_call(topic, group, Call::Status).await? {
            Reply::Status(status) => Ok(*status),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = group_key(topic, group);
        for _ in 0..RETRIES {
            let Some(entry) = inner.kv_get(GROUPS_BUCKET, &key).await? else {
                return Err(Error::GroupNotFound {
                    topic: topic.to_string(),
                    group: group.to_string(),
                });
            };
            let info = decode_info(&entry.value)?;
            // Settings, state and lease in one batch; the owner's next
            // write, expecting its lease, fails, and it stops running the
            // group.
            if inner.delete_group_rows(&key, entry.revision).await? {
                inner.release_here(&key);
                inner.forget_group_rows(&key, info.created_at).await;
                info!(topic = %topic, group = %group, "Deleted group.");
                return Ok(());
            }
        }
        Err(unavailable(
            "group settings",
            format!("{key:?} kept changing"),
        ))
    }

    async fn fetch(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: FetchRequest,
    ) -> Result<FetchResponse> {
        request.validate()?;
        match self
            .inner
            .group_call(topic, group, Call::Fetch(request))
            .await?
        {
            Reply::Fetch(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    async fn ack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        self.settle(
            topic,
            group,
            Settle::Ack,
            delivery_ids,
            (None, ""),
            durability,
        )
        .await
    }

    async fn nack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        delay: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        self.settle(
            topic,
            group,
            Settle::Nack,
            delivery_ids,
            (millis(delay), ""),
            durability,
        )
        .await
    }

    async fn extend(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        ack_wait: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        self.settle(
            topic,
            group,
            Settle::Extend,
            delivery_ids,
            (millis(ack_wait), ""),
            durability,
        )
        .await
    }

    async fn reject(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        reason: &str,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        self.settle(
            topic,
            group,
            Settle::Reject,
            delivery_ids,
            (None, reason),
            durability,
        )
        .await
    }

    async fn commit(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: CommitRequest,
    ) -> Result<()> {
        self.call_done(topic, group, Call::Commit(request)).await
    }

    async fn reset(&self, topic: &TopicName, group: &GroupName, to: StartPosition) -> Result<()> {
        self.call_done(topic, group, Call::Reset(to)).await
    }

    async fn leave(&self, topic: &TopicName, group: &GroupName, member: &str) -> Result<()> {
        self.call_done(topic, group, Call::Leave(member.to_owned()))
            .await
    }

    async fn dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        match self
            .inner
            .group_call(topic, group, Call::DeadLetters(limit))
            .await?
        {
            Reply::DeadLetters(letters) => Ok(letters),
            other => Err(unexpected(&other)),
        }
    }

    async fn redrive(
        &self,
        topic: &TopicName,
        group: &GroupName,
        ids: Option<&[u64]>,
    ) -> Result<u64> {
        match self
            .inner
            .group_call(topic, group, Call::Redrive(ids.map(<[u64]>::to_vec)))
            .await?
        {
            Reply::Count(count) => Ok(count),
            other => Err(unexpected(&other)),
        }
    }
}
