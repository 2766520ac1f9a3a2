//! Herald's durable workflows, written in the CNCF Serverless Workflow DSL
//! 1.0 (YAML or JSON).
//!
//! This crate starts with what a deploy needs: [`Definition::parse`] reads
//! a document into typed structures ([`dsl`]) and refuses, before anything
//! runs, a definition that is broken or uses what Herald does not run, with
//! an error naming the path of the offending field (`do[2].checkCredit.call`).
//!
//! What is checked at deploy time:
//!
//! - the shape of every field (unknown fields are refused, as the DSL's
//!   schema does), durations (ISO 8601 `P…DT…H…M…S` or
//!   `{days, hours, minutes, seconds, milliseconds}`), `document.dsl` 1.0.x;
//! - each task has exactly one kind (`call`, `do`, `emit`, `for`, `fork`,
//!   `listen`, `raise`, `set`, `switch`, `try`, `wait`); `run` (containers,
//!   scripts, shells, sub-workflows) and `call` of `grpc`, `asyncapi`, `a2a`
//!   and `mcp` are refused by name;
//! - names: task names unique in their list, `then: <name>` naming a task
//!   of the same list, `call: <name>` a function of `use.functions`, and
//!   named retries, timeouts and errors defined under `use`.
//!
//! - every runtime expression compiles (jq, through jaq, [`expr`]) with the
//!   variables in scope where it is written: a syntax error, an unknown
//!   function or variable fails the deploy with the field's path.

pub mod definition;
pub mod dsl;
pub mod engine;
pub mod error;
pub mod eval;
pub mod expr;
pub mod history;
pub mod metrics;
pub mod openapi;
pub mod run;
pub mod schedule;
pub mod store;
pub mod triggers;

pub use definition::{Definition, DefinitionError};
pub use engine::{
    Engine, EngineError, InstanceView, ListFilter, Options, Services, Status, StepView,
};
pub use error::WorkflowError;
pub use metrics::WorkflowMetrics;

/// Wall-clock time, ms since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
