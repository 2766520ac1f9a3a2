//! Herald's log engine (work in progress).
pub mod metrics;
pub use metrics::LogMetrics;
