//! End-to-end tests of the `herald` binary, run as a child process: each test
//! gets its own temp directory (working directory and data directory) and
//! port 0, and readies the server by the address it prints on stdout.
//!
//! One test binary for the crate (builds are slow); areas are modules.

mod auth;
mod auth_table;
mod blobs;
mod cli;
mod cloudevents;
mod cluster;
mod config;
mod console;
mod disk_full;
mod erasure;
mod events;
mod groups;
mod http;
mod jobs;
mod lifecycle;
mod limits;
mod lineage;
mod openapi;
mod order_payment;
mod push;
mod restart;
mod robustness;
mod scenarios;
mod sdk;
mod streams;
mod support;
mod support_workflow;
mod tls;
mod topics;
mod traces;
mod webhooks;
mod workflows;
