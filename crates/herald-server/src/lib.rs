//! Herald's gateway and wiring: configuration, the data directory, the HTTP
//! listener, metrics and the shutdown sequence. The `herald` binary
//! (`src/main.rs`) is a thin shell over this library.
//!
//! # Life of the process
//!
//! ```text
//! herald serve
//!   Cli::parse                      flags
//!   config::load                    defaults → herald.toml → HERALD_* env → flags
//!   telemetry::init_with_traces     logs to stderr (text | json), spans over OTLP if set
//!   Server::bind(options)           lock <data_dir>/LOCK, load the [tls] files, bind the listener
//!   Server::run(cancel)             serve HTTP (TLS: reload the files on change/SIGHUP);
//!                                   open storage; /readyz → 200
//!     … SIGINT / SIGTERM cancels …
//!                                   /readyz → 503, stop accepting,
//!                                   drain in-flight requests (≤ shutdown_timeout_ms),
//!                                   close storage (releases the lock), exit 0
//! ```
//!
//! Fatal errors are typed ([`server::Error`], [`config::Error`],
//! [`data_dir::Error`]); each one's message names the offending key, path or
//! address so `main` can print it as a single line.

pub mod auth;
pub mod blobs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connections;
pub mod data_dir;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod problem;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tls;
mod trace;

pub use config::Options;
pub use server::Server;
