//! Rate limits and quotas per identity (the quotas' bookkeeping is
//! [`super::quotas`]).
//!
//! Every identity has [`Limits`]: the server's `[auth.limits]`, overridden
//! field by field by its API key's `limits` (changed with `PATCH
//! /v1/auth/keys/{key_id}`, effective at once on this node, so limits change
//! without a restart). 0 means unlimited.
//!
//! Rates are GCRA buckets (`governor`), one set per identity, whose burst is
//! one second's worth: `requests_per_s` is checked for every request,
//! `publish_events_per_s` and `publish_bytes_per_s` for every publish
//! (REST and gRPC). Over a rate the call answers 429 `rate_limited` with
//! `Retry-After` (gRPC `RESOURCE_EXHAUSTED`); nothing was done. The buckets
//! of identities idle for a minute are dropped (a full bucket is the same
//! as a new one).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::problem::{Code, Problem};

/// Buckets unused for this long are dropped.
const IDLE: Duration = Duration::from_secs(60);

/// An identity's limits; 0 is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests per second, all routes together (a gRPC stream is one
    /// request).
    pub requests_per_s: u32,
    /// Events published per second.
    pub publish_events_per_s: u32,
    /// Bytes of event payloads published per second.
    pub publish_bytes_per_s: u32,
    /// Topics this identity may have created and not deleted.
    pub max_topics: u32,
    /// Partitions of those topics together.
    pub max_partitions: u32,
    /// Bytes of blobs this identity has uploaded and the collector has not
    /// removed yet.
    pub max_blob_bytes: u64,
}

/// An API key's own limits: each field set replaces the server's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    /// See [`Limits::requests_per_s`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_s: Option<u32>,
    /// See [`Limits::publish_events_per_s`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_events_per_s: Option<u32>,
    /// See [`Limits::publish_bytes_per_s`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_bytes_per_s: Option<u32>,
    /// See [`Limits::max_topics`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_topics: Option<u32>,
    /// See [`Limits::max_partitions`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_partitions: Option<u32>,
    /// See [`Limits::max_blob_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_blob_bytes: Option<u64>,
}

impl LimitOverrides {
    /// `defaults` with these overrides applied.
    pub fn over(&self, defaults: Limits) -> Limits {
        Limits {
            requests_per_s: self.requests_per_s.unwrap_or(defaults.requests_per_s),
            publish_events_per_s: self
                .publish_events_per_s
                .unwrap_or(defaults.publish_events_per_s),
            publish_bytes_per_s: self
                .publish_bytes_per_s
                .unwrap_or(defaults.publish_bytes_per_s),
            max_topics: self.max_topics.unwrap_or(defaults.max_topics),
            max_partitions: self.max_partitions.unwrap_or(defaults.max_partitions),
            max_blob_bytes: self.max_blob_bytes.unwrap_or(defaults.max_blob_bytes),
        }
    }

    /// `other`'s fields where set, these elsewhere.
    pub fn merged(&self, other: &Self) -> Self {
        Self {
            requests_per_s: other.requests_per_s.or(self.requests_per_s),
            publish_events_per_s: other.publish_events_per_s.or(self.publish_events_per_s),
            publish_bytes_per_s: other.publish_bytes_per_s.or(self.publish_bytes_per_s),
            max_topics: other.max_topics.or(self.max_topics),
            max_partitions: other.max_partitions.or(self.max_partitions),
            max_blob_bytes: other.max_blob_bytes.or(self.max_blob_bytes),
        }
    }
}

/// One identity's buckets.
#[derive(Debug)]
pub struct Buckets {
    limits: Limits,
    requests: Option<DefaultDirectRateLimiter>,
    events: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
}

impl Buckets {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            requests: bucket(limits.requests_per_s),
            events: bucket(limits.publish_events_per_s),
            bytes: bucket(limits.publish_bytes_per_s),
        }
    }

    /// The limits these buckets enforce.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes one request, or refuses with 429.
    pub fn request(&self) -> Result<(), Problem> {
        take(self.requests.as_ref(), 1, "requests_per_s")
    }

    /// Takes a publish of `events` events and `bytes` payload bytes, or
    /// refuses with 429 (413 when it is larger than one second's worth).
    pub fn publish(&self, events: usize, bytes: usize) -> Result<(), Problem> {
        take(self.events.as_ref(), events, "publish_events_per_s")?;
        take(self.bytes.as_ref(), bytes, "publish_bytes_per_s")
    }
}

fn bucket(per_second: u32) -> Option<DefaultDirectRateLimiter> {
    NonZeroU32::new(per_second).map(|rate| RateLimiter::direct(Quota::per_second(rate)))
}

fn take(bucket: Option<&DefaultDirectRateLimiter>, cells: usize, key: &str) -> Result<(), Problem> {
    let (Some(bucket), Some(cells)) = (
        bucket,
        NonZeroU32::new(u32::try_from(cells).unwrap_or(u32::MAX)),
    ) else {
        return Ok(());
    };
    match bucket.check_n(cells) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Err(rate_limited(key, wait))
        }
        Err(_insufficient) => Err(Problem::new(
            Code::PayloadTooLarge,
            format!(
                "this request alone is more than one second of the identity's {key} ({cells}); send smaller batches"
            ),
        )),
    }
}

/// The payload bytes of `events`, as `publish_bytes_per_s` counts them.
pub fn payload_bytes(events: &[herald_types::EventInput]) -> usize {
    events
        .iter()
        .map(|input| input.event.data.as_ref().map_or(0, bytes::Bytes::len))
        .sum()
}

/// 429 `rate_limited` naming the limit, with `retry_after_s` (the
/// `Retry-After` header) rounded up to whole seconds.
pub fn rate_limited(key: &str, wait: Duration) -> Problem {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Problem::new(
        Code::RateLimited,
        format!("over this identity's {key}; retry in {} s", seconds.max(1)),
    )
    .with("retry_after_s", serde_json::json!(seconds.max(1)))
    .with("limit", serde_json::json!(key))
}

/// The buckets of every identity seen recently.
#[derive(Debug, Default)]
pub struct RateLimits {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    buckets: HashMap<String, (Arc<Buckets>, Instant)>,
    swept: Option<Instant>,
}

impl RateLimits {
    /// The buckets of `identity` with `limits`; new ones when the limits
    /// changed.
    pub fn buckets(&self, identity: &str, limits: Limits) -> Arc<Buckets> {
        let now = Instant::now();
        let mut registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if registry
            .swept
            .is_none_or(|swept| now.duration_since(swept) > IDLE)
        {
            registry
                .buckets
                .retain(|_, (_, used)| now.duration_since(*used) < IDLE);
            registry.swept = Some(now);
        }
        match registry.buckets.get_mut(identity) {
            Some((buckets, used)) if buckets.limits == limits => {
                *used = now;
                Arc::clone(buckets)
            }
            _ => {
                let buckets = Arc::new(Buckets::new(limits));
                registry
                    .buckets
                    .insert(identity.to_owned(), (Arc::clone(&buckets), now));
                buckets
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_rate_when_burst_used_should_refuse_with_retry_after() {
        let buckets = Buckets::new(Limits {
            requests_per_s: 2,
            ..Limits::default()
        });
        assert!(buckets.request().is_ok());
        assert!(buckets.request().is_ok());
        let refused = buckets.request().unwrap_err();
        assert_eq!(refused.code(), Code::RateLimited);
        assert!(
            refused
                .extensions()
                .iter()
                .any(|(name, value)| *name == "retry_after_s" && value == 1)
        );
    }

    #[test]
    fn given_zero_limits_should_never_refuse() {
        let buckets = Buckets::new(Limits::default());
        for _ in 0..1_000 {
            assert!(buckets.request().is_ok());
            assert!(buckets.publish(1_000, 1 << 20).is_ok());
        }
    }

    #[test]
    fn given_publish_larger_than_a_second_should_refuse_as_too_large() {
        let buckets = Buckets::new(Limits {
            publish_bytes_per_s: 10,
            ..Limits::default()
        });
        assert_eq!(
            buckets.publish(1, 11).unwrap_err().code(),
            Code::PayloadTooLarge
        );
        assert!(buckets.publish(1, 10).is_ok());
        assert_eq!(buckets.publish(1, 1).unwrap_err().code(), Code::RateLimited);
    }

    #[test]
    fn given_changed_limits_when_buckets_asked_should_start_new_ones() {
        let registry = RateLimits::default();
        let one = Limits {
            requests_per_s: 1,
            ..Limits::default()
        };
        let first = registry.buckets("key:a", one);
        assert!(first.request().is_ok());
        assert!(registry.buckets("key:a", one).request().is_err());
        let raised = Limits {
            requests_per_s: 5,
            ..Limits::default()
        };
        assert!(registry.buckets("key:a", raised).request().is_ok());
        assert!(registry.buckets("key:b", one).request().is_ok());
    }

    #[test]
    fn given_overrides_should_replace_only_the_fields_set() {
        let defaults = Limits {
            requests_per_s: 100,
            publish_events_per_s: 10,
            ..Limits::default()
        };
        let overrides = LimitOverrides {
            requests_per_s: Some(0),
            ..LimitOverrides::default()
        };
        let limits = overrides.over(defaults);
        assert_eq!(limits.requests_per_s, 0);
        assert_eq!(limits.publish_events_per_s, 10);
    }
}
