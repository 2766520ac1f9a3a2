//! Herald's job service: jobs, scatter-gather parts, deadlines and results,
//! built only on the backend traits (so it runs on any backend).
//!
//! # Where things live
//!
//! | what | where |
//! |---|---|
//! | job records | `Kv` bucket `jobs`, key = job id, updated by compare-and-set |
//! | timers (deadlines, result expiry) | `Kv` bucket `jobs.timers`, key `<due ms, 20 digits>.<kind>.<job id>`, so keys sort by due time |
//! | blob references | `Kv` bucket `blob.refs`, key `<blob id>/<job id>` |
//! | blobs being collected | `Kv` bucket `blob.collecting`, key `<blob id>` (see [`blobs`]) |
//! | requests to workers | topic `jobs.<queue>` (created by the queue's first submit), one event per part, keyed by the part key (or the job id), subject = the key; group `workers` (queue mode) |
//! | dead letters | every queue topic's dead-letter topic is `herald.jobs.dead`; the service consumes it with the queue group `herald-jobs` |
//! | transitions | topic `herald.jobs`: one event per transition, type `herald.job.<kind>`, subject and key = job id |
//!
//! # How a job runs
//!
//! ```text
//! submit ── check ── deadline timer ── publish requests ── pin blob ── Kv put (absent) ── emit `submitted`
//! worker ── fetch from `workers` (leases, backoff, max_deliveries apply) ── `running`
//!        ── progress (extends the lease) ── complete (CAS the record, then ack the delivery)
//! lease expired max_deliveries times ── dead letter ── herald.jobs.dead ── part failed
//! timer loop (every `timer_interval`) ── due deadline: partial / failed; due expiry: remove;
//!                                        transition events that failed to publish: again
//! ```
//!
//! Every change is a compare-and-set of the job's record ([`model::apply`]
//! is the pure state machine; its [`model::Effect`]s are data), so
//! concurrent workers, the timer loop and the dead-letter loop never lose
//! each other's updates. State is in the backend only: a restart loses
//! nothing but in-process waiters, which reconnect.
//!
//! # Crashes and callers that go away
//!
//! A submit or an update, once started, runs to completion even if its
//! caller goes away (`herald_backend::cancel::run_to_completion`). Against
//! crashes the order of the writes does the work:
//!
//! - A transition's timers and blob pins are written before its record, so
//!   a stored transition always has them. One whose record is never stored
//!   leaves a timer that finds nothing to do (expiry checks that the job
//!   ended and is due) and a pin that is removed, or at worst keeps a blob
//!   longer.
//! - A submit publishes the job's requests before its record, which is the
//!   commit point: a stored job is always dispatched and always has its
//!   deadline. A worker may see a request just ahead of its record (also
//!   one consuming `jobs.<queue>` with its own group): an update of a job
//!   made less than [`Options::orphan_grace_ms`] ago (job ids are UUIDv7s)
//!   waits up to 500 ms for its record, and a fetch that still finds none
//!   hands the request out again a second later. Requests of a job never
//!   stored are discarded by workers' fetches once the grace has passed,
//!   with their blob pins.
//! - Transition events are published after the record, with fixed ids
//!   (`<job>.<version>`, requests `<job>[.<part>]`), so a retry is
//!   absorbed by the topic's dedup window. One that fails is retried by the
//!   timer loop; a crash between a record and its event loses that event
//!   (the record stays the truth; closing that would cost one more durable
//!   write per transition).

pub mod blobs;
pub mod error;
mod metrics;
pub mod model;
mod service;

pub use blobs::{BLOB_COLLECTING_BUCKET, BLOB_REFS_BUCKET, BlobStorage, blob_is_referenced};
pub use error::{Error, Result};
pub use metrics::JobMetrics;
pub use model::{
    CompleteRequest, Job, JobView, Notify, Outcome, Part, PartInput, PartStatus, Progress,
    ProgressRequest, Status, SubmitRequest,
};
pub use service::{
    Clock, Handle, JOBS_BUCKET, JobDelivery, JobEvent, JobRequest, Options, Service, SystemClock,
    TIMERS_BUCKET,
};
