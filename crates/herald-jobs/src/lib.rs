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
//! | requests to workers | topic `jobs.<queue>` (created by the queue's first submit), one event per part, keyed by the part key (or the job id), subject = the key; group `workers` (queue mode) |
//! | dead letters | every queue topic's dead-letter topic is `herald.jobs.dead`; the service consumes it with the queue group `herald-jobs` |
//! | transitions | topic `herald.jobs`: one event per transition, type `herald.job.<kind>`, subject and key = job id |
//!
//! # How a job runs
//!
//! ```text
//! submit ── check ── Kv put (absent) ── timers, blob pins ── publish requests ── emit `submitted`
//! worker ── fetch from `workers` (leases, backoff, max_deliveries apply) ── `running`
//!        ── progress (extends the lease) ── complete (CAS the record, then ack the delivery)
//! lease expired max_deliveries times ── dead letter ── herald.jobs.dead ── part failed
//! timer loop (every `timer_interval`) ── due deadline: partial / failed; due expiry: remove
//! ```
//!
//! Every change is a compare-and-set of the job's record ([`model::apply`]
//! is the pure state machine; its [`model::Effect`]s are executed after the
//! record is stored), so concurrent workers, the timer loop and the
//! dead-letter loop never lose each other's updates. State is in the backend
//! only: a restart loses nothing but in-process waiters, which reconnect.
//!
//! Effects run after the record is stored: a crash between the two can lose
//! a transition event (the record stays the truth) or, at submit, leave a job
//! whose requests were never published (it then ends at its deadline).

pub mod error;
pub mod model;
mod service;

pub use error::{Error, Result};
pub use model::{
    CompleteRequest, Job, Notify, Outcome, Part, PartInput, PartStatus, Progress, ProgressRequest,
    Status, SubmitRequest,
};
pub use service::{
    BLOB_REFS_BUCKET, Clock, Handle, JOBS_BUCKET, JobDelivery, JobEvent, JobRequest, Options,
    Service, SystemClock, TIMERS_BUCKET, blob_is_referenced,
};
