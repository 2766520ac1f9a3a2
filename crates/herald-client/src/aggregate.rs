//! Event-sourced aggregates in the decider style.
//!
//! A [`Decider`] is three pure functions: the initial state, `evolve` (fold
//! one event into the state) and `decide` (a command and the state give the
//! new events, or a refusal). [`Aggregate`] runs one against a Herald event
//! stream: it loads the state from the latest snapshot plus the events after
//! it, decides, and appends with the version it loaded as the expectation.
//! When another writer got there first (`version_conflict`) it loads again
//! and decides again, a bounded number of times — so a command is decided
//! on the state it will actually follow.
//!
//! ```
//! use herald_client::{Decider, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Default, Clone, Serialize, Deserialize)]
//! struct Order { created: bool, paid: bool }
//!
//! enum Command { Create, Pay }
//!
//! struct Orders;
//!
//! impl Decider for Orders {
//!     type State = Order;
//!     type Command = Command;
//!     type Refusal = String;
//!
//!     fn evolve(mut state: Order, event: &Event) -> Order {
//!         match event.ty.as_str() {
//!             "order.created" => state.created = true,
//!             "order.paid" => state.paid = true,
//!             _ => {}
//!         }
//!         state
//!     }
//!
//!     fn decide(command: &Command, state: &Order) -> Result<Vec<Event>, String> {
//!         match command {
//!             Command::Create if state.created => Err("exists".into()),
//!             Command::Create => Ok(vec![Event::new("", "/orders", "order.created")]),
//!             Command::Pay if state.paid => Err("already paid".into()),
//!             Command::Pay => Ok(vec![Event::new("", "/orders", "order.paid")]),
//!         }
//!     }
//! }
//!
//! let state = Orders::evolve(Order::default(), &Event::new("1", "/orders", "order.created"));
//! assert!(state.created);
//! assert!(Orders::decide(&Command::Create, &state).is_err());
//! ```

use std::marker::PhantomData;

use herald_types::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Client, Error, ErrorCode, Expected};

/// An aggregate's behaviour: pure functions, no I/O.
pub trait Decider {
    /// The folded state. `Default` is the state of a stream with no events.
    type State: Default + Serialize + DeserializeOwned + Send;
    /// What callers ask the aggregate to do.
    type Command: Sync;
    /// Why a command is refused (a business rule).
    type Refusal;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Event) -> Self::State;

    /// The events `command` produces on `state`, or why it is refused.
    fn decide(command: &Self::Command, state: &Self::State) -> Result<Vec<Event>, Self::Refusal>;
}

/// An aggregate's state as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<S> {
    /// The folded state.
    pub state: S,
    /// The stream's version (`None`: no stream yet).
    pub version: Option<u64>,
}

/// Why [`Aggregate::handle`] did not append.
#[derive(Debug, thiserror::Error)]
pub enum HandleError<R> {
    /// The decider refused the command.
    #[error("the command was refused")]
    Refused(R),
    /// Other writers kept winning: `attempts` tries all conflicted.
    #[error("gave up after {attempts} conflicting appends")]
    Contended {
        /// Tries made.
        attempts: u32,
    },
    /// Herald failed.
    #[error(transparent)]
    Herald(#[from] Error),
}

/// Runs a [`Decider`] against the event streams of one topic (its
/// category).
#[derive(Debug)]
pub struct Aggregate<D> {
    client: Client,
    topic: String,
    max_attempts: u32,
    snapshot_every: Option<u64>,
    decider: PhantomData<fn() -> D>,
}

/// Events read per page while loading.
const PAGE: u32 = 1_000;

impl<D: Decider> Aggregate<D> {
    /// An aggregate whose streams live on `topic`; up to 5 tries per command,
    /// no snapshots.
    pub fn new(client: Client, topic: impl Into<String>) -> Self {
        Self {
            client,
            topic: topic.into(),
            max_attempts: 5,
            snapshot_every: None,
            decider: PhantomData,
        }
    }

    /// Tries per command when appends conflict (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Store a snapshot whenever an append crosses a multiple of `every`
    /// versions, so loads read at most about `every` events.
    pub fn snapshot_every(mut self, every: u64) -> Self {
        self.snapshot_every = Some(every.max(1));
        self
    }

    /// The state of `stream`: the latest snapshot, then every newer event.
    pub async fn load(&self, stream: &str) -> Result<Loaded<D::State>, Error> {
        let (mut state, mut version) = match self.client.get_snapshot(&self.topic, stream).await {
            Ok(Some((version, json))) => match serde_json::from_value(json) {
                Ok(state) => (state, Some(version)),
                // A snapshot of an older shape: fold from the start.
                Err(_) => (D::State::default(), None),
            },
            Ok(None) => (D::State::default(), None),
            Err(error) if error.code() == Some(&ErrorCode::StreamNotFound) => {
                (D::State::default(), None)
            }
            Err(error) => return Err(error),
        };
        let mut next = version.map_or(0, |version| version + 1);
        loop {
            let read = self
                .client
                .read_stream(&self.topic, stream, Some(next), false, PAGE)
                .await;
            let (events, more) = match read {
                Ok(page) => page,
                Err(error) if error.code() == Some(&ErrorCode::StreamNotFound) => {
                    return Ok(Loaded { state, version });
                }
                Err(error) => return Err(error),
            };
            for (at, event) in &events {
                state = D::evolve(state, &event.event);
                version = Some(*at);
            }
            match more {
                Some(following) if !events.is_empty() => next = following,
                _ => return Ok(Loaded { state, version }),
            }
        }
    }

    /// Decides `command` on the current state of `stream` and appends the
    /// events it produces with optimistic concurrency, retrying on conflict.
    /// Returns the new state and version (unchanged if the command produced
    /// no events).
    pub async fn handle(
        &self,
        stream: &str,
        command: &D::Command,
    ) -> Result<Loaded<D::State>, HandleError<D::Refusal>> {
        for _ in 0..self.max_attempts {
            let Loaded { mut state, version } = self.load(stream).await?;
            let events = D::decide(command, &state).map_err(HandleError::Refused)?;
            if events.is_empty() {
                return Ok(Loaded { state, version });
            }
            let appended = self
                .client
                .append(
                    &self.topic,
                    stream,
                    events.iter().cloned(),
                    Expected::from_current(version),
                )
                .await;
            match appended {
                Ok(appended) => {
                    for event in &events {
                        state = D::evolve(state, event);
                    }
                    self.maybe_snapshot(stream, version, appended.last_version, &state)
                        .await;
                    return Ok(Loaded {
                        state,
                        version: Some(appended.last_version),
                    });
                }
                Err(error) if error.code() == Some(&ErrorCode::VersionConflict) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(HandleError::Contended {
            attempts: self.max_attempts,
        })
    }

    /// Stores a snapshot when the append crossed a multiple of
    /// `snapshot_every`. A failed snapshot only costs later loads time.
    async fn maybe_snapshot(&self, stream: &str, before: Option<u64>, now: u64, state: &D::State) {
        let Some(every) = self.snapshot_every else {
            return;
        };
        let crossed = before.is_none_or(|before| before / every != now / every);
        if !crossed {
            return;
        }
        let Ok(json) = serde_json::to_value(state) else {
            return;
        };
        if let Err(error) = self
            .client
            .put_snapshot(&self.topic, stream, now, &json)
            .await
        {
            tracing::debug!(%error, stream, "Snapshot not stored.");
        }
    }
}
