//! Herald's value types: the names of topics, groups and streams; the event
//! envelope (CloudEvents 1.0 plus Herald's attributes) with its JSON and HTTP
//! binary-mode codecs; positions in a topic; Kafka-compatible key
//! partitioning; RFC 3339 timestamps; and Standard Webhooks signatures.
//!
//! Pure values and pure functions: no I/O, no async, no global state (the one
//! impurity is the randomness in the UUIDv7 ids assigned to events sent
//! without one). Every parser here is total: bad input gives an error that
//! says what to fix, never a panic.

mod event;
mod names;
#[cfg(feature = "openapi")]
pub mod openapi;
mod partition;
mod position;
mod time;
pub mod webhook;

pub use event::{
    Event, EventError, EventInput, ExtensionValue, MAX_EXTENSION_NAME_LEN, RESERVED_ATTRIBUTES,
    SPEC_VERSION, StoredEvent,
};
pub use names::{GroupName, InvalidName, MAX_NAME_LEN, StreamId, TopicName};
pub use partition::{murmur2, partition_for_key};
pub use position::{InvalidPosition, Position, Positions};
pub use time::{
    InvalidTimestamp, MAX_RFC3339_MS, MIN_RFC3339_MS, format_rfc3339_ms, parse_rfc3339_ms,
};
