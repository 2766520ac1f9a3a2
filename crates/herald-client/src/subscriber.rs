//! Tailing a topic over `Subscribe`, resuming after a lost connection from
//! the last position delivered: nothing lost, nothing twice.

use std::collections::{BTreeMap, VecDeque};

use futures::StreamExt as _;
use herald_proto::v1;
use herald_types::StoredEvent;

use crate::{Client, Error, Result};

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// Every partition's first kept event.
    Earliest,
    /// Only events published from now on.
    Latest,
    /// The next offset per partition (partitions not listed start at the
    /// earliest).
    Positions(Vec<(u32, u64)>),
}

/// Builds a [`Subscriber`].
#[derive(Debug)]
pub struct SubscriberBuilder {
    client: Client,
    topic: String,
    from: From,
    types: Vec<String>,
    subject_prefix: Option<String>,
    correlationid: Option<String>,
}

impl SubscriberBuilder {
    pub(crate) fn new(client: Client, topic: &str) -> Self {
        Self {
            client,
            topic: topic.to_owned(),
            from: From::Latest,
            types: Vec::new(),
            subject_prefix: None,
            correlationid: None,
        }
    }

    /// Where to start (default: latest).
    pub fn from(mut self, from: From) -> Self {
        self.from = from;
        self
    }

    /// Only events of these types.
    pub fn types(mut self, types: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events whose subject starts with `prefix`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = Some(prefix.into());
        self
    }

    /// Only events of one correlation id.
    pub fn correlationid(mut self, id: impl Into<String>) -> Self {
        self.correlationid = Some(id.into());
        self
    }

    /// Opens the subscription (errors such as an unknown topic surface
    /// here).
    pub async fn build(self) -> Result<Subscriber> {
        let mut subscriber = Subscriber {
            client: self.client,
            topic: self.topic,
            start: self.from,
            positions: BTreeMap::new(),
            types: self.types,
            subject_prefix: self.subject_prefix,
            correlationid: self.correlationid,
            responses: None,
            ready: VecDeque::new(),
        };
        subscriber.open().await?;
        Ok(subscriber)
    }
}

/// A tail of a topic: every event that passes the filters, in order per
/// partition.
#[derive(Debug)]
pub struct Subscriber {
    client: Client,
    topic: String,
    start: From,
    /// The next offset per partition delivered so far.
    positions: BTreeMap<u32, u64>,
    types: Vec<String>,
    subject_prefix: Option<String>,
    correlationid: Option<String>,
    responses: Option<tonic::Streaming<v1::SubscribeResponse>>,
    ready: VecDeque<StoredEvent>,
}

impl Subscriber {
    /// The next event; reconnects (per the client's retry policy) when the
    /// connection breaks. `None` after an error it cannot recover from has
    /// been returned.
    pub async fn next(&mut self) -> Option<Result<StoredEvent>> {
        let mut attempt = 0;
        loop {
            if let Some(event) = self.ready.pop_front() {
                self.positions.insert(event.partition, event.offset + 1);
                return Some(Ok(event));
            }
            let responses = self.responses.as_mut()?;
            let failure = match responses.next().await {
                Some(Ok(batch)) => {
                    for event in batch.events {
                        match StoredEvent::try_from(event) {
                            Ok(event) => self.ready.push_back(event),
                            Err(malformed) => return Some(Err(malformed.into())),
                        }
                    }
                    attempt = 0;
                    continue;
                }
                Some(Err(status)) => Error::from(status),
                None => Error::Rpc(Box::new(tonic::Status::unavailable(
                    "the server ended the subscription",
                ))),
            };
            self.responses = None;
            let policy = self.client.retry_policy();
            attempt += 1;
            if !failure.is_retryable() || attempt >= policy.attempts {
                return Some(Err(failure));
            }
            tokio::time::sleep(policy.backoff(attempt)).await;
            if let Err(error) = self.open().await
                && !error.is_retryable()
            {
                return Some(Err(error));
            }
        }
    }

    /// The next offset per partition: where a new subscription resumes.
    pub fn positions(&self) -> Vec<(u32, u64)> {
        self.positions
            .iter()
            .map(|(&partition, &offset)| (partition, offset))
            .collect()
    }

    async fn open(&mut self) -> Result<()> {
        use v1::from::From as Wire;
        let from = if self.positions.is_empty() {
            match &self.start {
                From::Earliest => Wire::Earliest(true),
                From::Latest => Wire::Latest(true),
                From::Positions(positions) => Wire::Positions(positions_proto(positions)),
            }
        } else {
            // Resume exactly after what was delivered; partitions not seen
            // yet resume where the subscription started them.
            let mut merged: BTreeMap<u32, u64> = match &self.start {
                From::Positions(positions) => positions.iter().copied().collect(),
                From::Earliest | From::Latest => BTreeMap::new(),
            };
            merged.extend(self.positions.iter().map(|(&p, &o)| (p, o)));
            if matches!(self.start, From::Latest) {
                let described = self.client.describe_topic(&self.topic).await?;
                for partition in described.partitions {
                    merged
                        .entry(partition.partition)
                        .or_insert(partition.end_offset);
                }
            }
            Wire::Positions(positions_proto(&merged.into_iter().collect::<Vec<_>>()))
        };
        let request = v1::SubscribeRequest {
            topic: self.topic.clone(),
            from: Some(v1::From { from: Some(from) }),
            types: self.types.clone(),
            subject_prefix: self.subject_prefix.clone(),
            correlationid: self.correlationid.clone(),
        };
        let responses = self
            .client
            .events_stream()
            .subscribe(request)
            .await?
            .into_inner();
        self.responses = Some(responses);
        Ok(())
    }
}

fn positions_proto(positions: &[(u32, u64)]) -> v1::Positions {
    v1::Positions {
        offsets: positions
            .iter()
            .map(|&(partition, offset)| v1::PartitionOffset { partition, offset })
            .collect(),
    }
}
