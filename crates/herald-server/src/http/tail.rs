//! Following a topic: the event stream behind SSE and WebSocket subscriptions.
//!
//! A subscription holds one position per partition: the next offset to read.
//! It reads whole partitions in turn (up to [`READ_EVENTS`] at a time), keeps
//! the events that pass its filters, and when every partition is at its end
//! waits on the backend's tail notification — no polling.
//!
//! Each event goes out with the subscription's positions *after* it, as a
//! [`Positions`] string (`0:15,1:7`). That string is the SSE `id`, so a client
//! that reconnects with it as `Last-Event-ID` resumes exactly after the last
//! event it received: nothing lost, nothing twice.
//!
//! Slow clients are paused, not buffered for: the stream is pulled by the
//! connection, so a client that stops reading stops the reads (TCP
//! backpressure), and a subscription holds at most one read of events in
//! memory, however far behind it is.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use herald_backend::{Backend, Error, Result};
use herald_types::{Position, Positions, StoredEvent, TopicName};

/// Events read from a partition per read.
pub(crate) const READ_EVENTS: usize = 64;
/// How long one wait for new events lasts before it is renewed.
const WAIT: Duration = Duration::from_secs(30);

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// Every partition's first kept event.
    Earliest,
    /// Only events published from now on.
    Latest,
    /// Exact positions (as in an SSE id); partitions not named start at
    /// the earliest.
    At(Positions),
}

impl std::str::FromStr for Start {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            positions => positions
                .parse::<Positions>()
                .map(Start::At)
                .map_err(|error| {
                    format!("{error}; use earliest, latest or <partition>:<offset>,…")
                }),
        }
    }
}

/// Which events a subscription receives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Event types; empty means all.
    pub(crate) types: Vec<String>,
    /// Receive only events whose subject starts with this.
    pub(crate) subject: Option<String>,
    /// Receive only events with this correlation id.
    pub(crate) correlationid: Option<String>,
}

impl Filter {
    fn matches(&self, event: &StoredEvent) -> bool {
        let event = &event.event;
        (self.types.is_empty() || self.types.contains(&event.ty))
            && self.subject.as_deref().is_none_or(|prefix| {
                event
                    .subject
                    .as_deref()
                    .is_some_and(|subject| subject.starts_with(prefix))
            })
            && self
                .correlationid
                .as_deref()
                .is_none_or(|wanted| event.correlationid.as_deref() == Some(wanted))
    }
}

/// An event and the positions to resume after it.
#[derive(Debug, Clone)]
pub(crate) struct Tailed {
    pub(crate) event: StoredEvent,
    pub(crate) resume: Positions,
}

/// The starting offset of every partition of `topic`.
pub(crate) async fn start(
    backend: &dyn Backend,
    topic: &TopicName,
    start: &Start,
) -> Result<Vec<u64>> {
    let description = backend.describe_topic(topic).await?;
    let partitions = &description.partition_info;
    match start {
        Start::Earliest => Ok(partitions
            .iter()
            .map(|partition| partition.start_offset)
            .collect()),
        Start::Latest => Ok(partitions
            .iter()
            .map(|partition| partition.end_offset)
            .collect()),
        Start::At(positions) => {
            for position in positions.iter() {
                if position.partition as usize >= partitions.len() {
                    return Err(Error::PartitionNotFound {
                        topic: topic.to_string(),
                        partition: position.partition,
                        partitions: partitions.len() as u32,
                    });
                }
            }
            Ok(partitions
                .iter()
                .map(|partition| {
                    positions
                        .get(partition.partition)
                        .map_or(partition.start_offset, |offset| {
                            offset.max(partition.start_offset)
                        })
                })
                .collect())
        }
    }
}

struct State {
    backend: Arc<dyn Backend>,
    topic: TopicName,
    filter: Filter,
    positions: Vec<u64>,
    ready: VecDeque<Tailed>,
    next_partition: usize,
}

/// Follows `topic` from `positions` forever: every event that passes
/// `filter`, in order per partition. Ends with an error item if the backend
/// fails (e.g. the topic is deleted or the server shuts down).
pub(crate) fn follow(
    backend: Arc<dyn Backend>,
    topic: TopicName,
    positions: Vec<u64>,
    filter: Filter,
) -> impl Stream<Item = Result<Tailed>> {
    let state = State {
        backend,
        topic,
        filter,
        positions,
        ready: VecDeque::new(),
        next_partition: 0,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match next(&mut state).await {
            Ok(tailed) => Some((Ok(tailed), Some(state))),
            Err(error) => Some((Err(error), None)),
        }
    })
}

async fn next(state: &mut State) -> Result<Tailed> {
    loop {
        if let Some(mut tailed) = state.ready.pop_front() {
            crate::trace::pushed(&mut tailed.event);
            return Ok(tailed);
        }
        if !read_some(state).await? {
            wait(state).await?;
        }
    }
}

/// Reads from the partitions in turn until one yields events; returns
/// whether any was read (even if filtered out).
async fn read_some(state: &mut State) -> Result<bool> {
    let count = state.positions.len();
    for _ in 0..count {
        let partition = state.next_partition % count;
        state.next_partition = partition + 1;
        let from = state.positions[partition];
        let read = match state
            .backend
            .read(&state.topic, partition as u32, from, READ_EVENTS)
            .await
        {
            Ok(read) => read,
            Err(Error::OffsetOutOfRange { start, .. }) => {
                // Retention removed events this subscription had not read.
                state.positions[partition] = start;
                return Ok(true);
            }
            Err(error) => return Err(error),
        };
        if read.events.is_empty() {
            continue;
        }
        for event in read.events {
            state.positions[partition] = event.offset + 1;
            if state.filter.matches(&event) {
                let resume = Positions(
                    state
                        .positions
                        .iter()
                        .enumerate()
                        .map(|(partition, offset)| Position::new(partition as u32, *offset))
                        .collect(),
                );
                state.ready.push_back(Tailed { event, resume });
            }
        }
        return Ok(true);
    }
    Ok(false)
}

/// Waits until any partition has an event at its position.
async fn wait(state: &State) -> Result<()> {
    if state.positions.is_empty() {
        // A topic always has a partition; never spin if it somehow had none.
        std::future::pending::<()>().await;
    }
    let waits = state
        .positions
        .iter()
        .enumerate()
        .map(|(partition, offset)| {
            let (backend, topic) = (Arc::clone(&state.backend), state.topic.clone());
            let offset = *offset;
            Box::pin(async move {
                backend
                    .wait_for(&topic, partition as u32, offset, WAIT)
                    .await
            })
        });
    let (result, _, _) = futures::future::select_all(waits).await;
    result.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_from_strings_when_parsed_should_understand_named_and_exact_positions() {
        assert_eq!("earliest".parse::<Start>(), Ok(Start::Earliest));
        assert_eq!("latest".parse::<Start>(), Ok(Start::Latest));
        let Start::At(positions) = "0:15,1:7".parse::<Start>().unwrap() else {
            panic!("not positions")
        };
        assert_eq!(positions.get(1), Some(7));
        assert!(
            "yesterday"
                .parse::<Start>()
                .unwrap_err()
                .contains("earliest")
        );
    }
}
