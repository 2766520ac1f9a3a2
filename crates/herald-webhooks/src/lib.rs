//! Herald's outbound webhooks, per the Standard Webhooks specification
//! (v1.0.0), with Svix's behaviour as the bar.
//!
//! - [`service`]: endpoints stored in the backend's `Kv`, delivery from the
//!   log through one consumer group per endpoint and topic (so delivery
//!   resumes exactly after a restart, with the groups' leases, delays and
//!   dead letters), the circuit breaker ([`circuit`]), auto-disable, and
//!   the attempt log ([`store`]);
//! - [`ssrf`]: which addresses a webhook may reach (public ones, plus
//!   `webhooks.allow_targets`), enforced in the resolver the HTTP client
//!   connects through, so the address checked is the address connected to;
//! - [`attempt`]: one signed POST of a CloudEvent (`webhook-id`,
//!   `webhook-timestamp`, `webhook-signature` with one `v1` entry per live
//!   secret, `traceparent`), redirects not followed, and its outcome for
//!   the attempt log (status, latency, a bounded excerpt, an error class);
//! - [`endpoint`]: an endpoint's definition (URL, filter on topics, type
//!   patterns and subject prefix, secret, static headers, rate limit,
//!   ordering) checked whole, with the stable codes of its refusals;
//! - [`schedule`]: when to try again (Svix's schedule with ±20% jitter,
//!   `Retry-After` honoured);
//! - [`jobs`]: jobs' `notify.webhook_url`, through the same machinery;
//! - [`metrics`]: attempts by endpoint and outcome, latency, circuit state,
//!   disabled endpoints.
//!
//! Signatures themselves are pure values in `herald_types::webhook` (the
//! SDK's receiver-side `herald_client::webhooks::verify` uses the same
//! code).

pub mod attempt;
pub mod circuit;
mod delivery;
pub mod endpoint;
pub mod jobs;
pub mod metrics;
pub mod schedule;
pub mod service;
pub mod ssrf;
pub mod store;

pub use attempt::{ErrorClass, Message, Outcome, Sender};
pub use endpoint::{EndpointSpec, Filter, InvalidEndpoint};
pub use metrics::WebhookMetrics;
pub use schedule::Schedule;
pub use service::{AttemptQuery, EndpointPatch, Error, Handle, Options, Service};
pub use ssrf::{AddressClass, Refused, TargetPolicy};
pub use store::{AttemptRecord, EndpointView};
