//! herald-log's integration tests, in one binary to keep builds lean.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod basic;
mod compaction;
mod corruption;
mod crash_images;
mod failures;
mod kill;
mod model;
mod support;
