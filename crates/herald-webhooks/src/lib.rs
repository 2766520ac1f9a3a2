//! Herald's outbound webhooks, per the Standard Webhooks specification
//! (v1.0.0), with Svix's behaviour as the bar.
//!
//! What is here so far are the parts every delivery goes through:
//!
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
//!   `Retry-After` honoured).
//!
//! Signatures themselves are pure values in `herald_types::webhook` (the
//! SDK's receiver-side `herald_client::webhooks::verify` uses the same
//! code). Endpoints, delivery from consumer groups, the circuit breaker and
//! the attempt log build on these (issue "Webhooks").

pub mod attempt;
pub mod endpoint;
pub mod schedule;
pub mod ssrf;

pub use attempt::{ErrorClass, Message, Outcome, Sender};
pub use endpoint::{EndpointSpec, Filter, InvalidEndpoint};
pub use schedule::Schedule;
pub use ssrf::{AddressClass, Refused, TargetPolicy};
