//! Lineage: what one event caused — the events, deliveries, jobs, workflow
//! steps and webhook attempts that followed from it — as a tree in causal
//! order (`GET /v1/lineage`, `herald lineage`).
//!
//! Events say where they came from with two attributes: `correlationid`
//! (one id for everything that serves one request or business process) and
//! `causationid` (the id of the event that caused this one). Herald's own
//! services carry them on: a job's requests and transitions carry the
//! job's, a workflow instance's first history record carries its triggering
//! event's, and what an instance emits names the instance as its cause.
//!
//! [`Indexer`] keeps an index of them as events are appended (module
//! [`index`]: a tail of every partition writing into the backend's `Kv`,
//! never a scan at query time); [`Lineage::query`] follows it and looks up
//! what happened to each event found (module [`query`]).

pub mod index;
pub mod query;

pub use index::{BUCKET, Entry, Indexer, IndexerHandle};
pub use query::{Answer, Error, Kind, Lineage, MAX_NODES, Node, Start};
