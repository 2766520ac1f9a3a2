//! A webhook endpoint's definition: where to deliver, what, and how;
//! checked whole before it is stored, so a delivery never meets a bad one.

use std::collections::BTreeMap;

use herald_types::webhook::Secret;
use herald_types::{StoredEvent, TopicName};
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::ssrf::{Refused, TargetPolicy};

/// Most topics one endpoint filters on.
pub const MAX_TOPICS: usize = 64;
/// Most event-type patterns one endpoint filters on.
pub const MAX_TYPES: usize = 64;
/// Most static headers.
pub const MAX_HEADERS: usize = 32;
/// Longest URL, description, pattern or header value, in bytes.
pub const MAX_TEXT: usize = 2048;

/// Headers an endpoint may not set: Herald's own and the ones the HTTP
/// client owns.
const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "traceparent",
    "tracestate",
];

/// Which events an endpoint receives: from these topics, optionally only
/// of these types and under a subject prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Filter {
    /// The topics delivered from (at least one).
    pub topics: Vec<String>,
    /// Event types; `*` matches any run of characters (`order.*`,
    /// `*.failed`, `*`). Empty or absent: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Only events whose `subject` starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
}

impl Filter {
    /// Whether `event` passes the type and subject parts (the topic part
    /// is which groups the endpoint reads).
    #[must_use]
    pub fn matches(&self, event: &StoredEvent) -> bool {
        let event = &event.event;
        let type_ok = self.types.is_empty()
            || self
                .types
                .iter()
                .any(|pattern| glob_matches(pattern, &event.ty));
        let subject_ok = self.subject_prefix.as_deref().is_none_or(|prefix| {
            event
                .subject
                .as_deref()
                .is_some_and(|subject| subject.starts_with(prefix))
        });
        type_ok && subject_ok
    }
}

/// `*` matches any run of characters; everything else matches itself.
#[must_use]
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole pattern had to be the whole text.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// An endpoint as asked for (`POST /v1/webhooks/endpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointSpec {
    /// Where deliveries are posted: `http://` or `https://`.
    pub url: String,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What is delivered.
    pub filter: Filter,
    /// `whsec_…`; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Sent with every delivery (Herald's own headers cannot be set).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second at most; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    /// One delivery in flight per subject, in log order (else parallel).
    #[serde(default)]
    pub ordered: bool,
    /// Delivering (true by default).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// Why a spec was refused; `code` is the problem's stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEndpoint {
    /// The target is refused by the SSRF guard (400 `target_not_allowed`).
    #[error(transparent)]
    TargetNotAllowed(#[from] Refused),
    /// Any other field (400 `invalid_argument`), naming it.
    #[error("{field}: {reason}")]
    Field {
        /// The JSON path of the field (`filter.topics[2]`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl InvalidEndpoint {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The stable error code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::TargetNotAllowed(_) => "target_not_allowed",
            Self::Field { .. } => "invalid_argument",
        }
    }
}

/// A spec once checked: the URL parsed, the secret parsed or made, the
/// headers valid.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The parsed URL.
    pub url: reqwest::Url,
    /// The signing secret.
    pub secret: Secret,
    /// The static headers, parsed.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl EndpointSpec {
    /// Checks every field, and the target against `policy` (resolving a
    /// host name now; each delivery checks again what it connects to).
    /// `new_secret` makes a secret when the spec has none.
    pub async fn check(
        &self,
        policy: &TargetPolicy,
        new_secret: impl FnOnce() -> Secret,
    ) -> Result<Checked, InvalidEndpoint> {
        let checked = self.check_fields(new_secret)?;
        policy.check_target(&checked.url).await?;
        Ok(checked)
    }

    /// The checks that need no resolver.
    pub fn check_fields(
        &self,
        new_secret: impl FnOnce() -> Secret,
    ) -> Result<Checked, InvalidEndpoint> {
        text("url", &self.url)?;
        let url: reqwest::Url = self
            .url
            .parse()
            .map_err(|error| InvalidEndpoint::field("url", format!("not a URL: {error}")))?;
        if let Some(description) = &self.description {
            text("description", description)?;
        }
        let filter = &self.filter;
        if filter.topics.is_empty() {
            return Err(InvalidEndpoint::field(
                "filter.topics",
                "name at least one topic",
            ));
        }
        if filter.topics.len() > MAX_TOPICS {
            return Err(InvalidEndpoint::field(
                "filter.topics",
                format!("at most {MAX_TOPICS} topics"),
            ));
        }
        for (index, topic) in filter.topics.iter().enumerate() {
            topic.parse::<TopicName>().map_err(|error| {
                InvalidEndpoint::field(format!("filter.topics[{index}]"), error.to_string())
            })?;
        }
        if filter.types.len() > MAX_TYPES {
            return Err(InvalidEndpoint::field(
                "filter.types",
                format!("at most {MAX_TYPES} patterns"),
            ));
        }
        for (index, pattern) in filter.types.iter().enumerate() {
            let field = format!("filter.types[{index}]");
            text(&field, pattern)?;
            if pattern.is_empty() {
                return Err(InvalidEndpoint::field(
                    field,
                    "an empty pattern matches nothing",
                ));
            }
        }
        if let Some(prefix) = &filter.subject_prefix {
            text("filter.subject_prefix", prefix)?;
        }
        let secret = match &self.secret {
            Some(secret) => Secret::parse(secret)
                .map_err(|error| InvalidEndpoint::field("secret", error.to_string()))?,
            None => new_secret(),
        };
        if self.headers.len() > MAX_HEADERS {
            return Err(InvalidEndpoint::field(
                "headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| InvalidEndpoint::field(&field, "not an HTTP header name"))?;
            if RESERVED_HEADERS.contains(&parsed.as_str()) {
                return Err(InvalidEndpoint::field(
                    &field,
                    "set by Herald on every delivery; an endpoint cannot set it",
                ));
            }
            text(&field, value)?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| InvalidEndpoint::field(&field, "not a valid header value"))?;
            headers.push((parsed, value));
        }
        if self.rate_limit_per_s == Some(0) {
            return Err(InvalidEndpoint::field(
                "rate_limit_per_s",
                "at least 1 (leave it out for no limit)",
            ));
        }
        Ok(Checked {
            url,
            secret,
            headers,
        })
    }
}

fn text(field: &str, value: &str) -> Result<(), InvalidEndpoint> {
    if value.len() > MAX_TEXT {
        return Err(InvalidEndpoint::field(
            field,
            format!("at most {MAX_TEXT} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> EndpointSpec {
        serde_json::from_value(json).unwrap()
    }

    fn secret() -> Secret {
        Secret::from_bytes(&[4; 32]).unwrap()
    }

    #[test]
    fn given_globs_when_matched_should_treat_star_as_any_run() {
        for (pattern, text, expected) in [
            ("order.created", "order.created", true),
            ("order.created", "order.created.v2", false),
            ("order.*", "order.created", true),
            ("order.*", "order.", true),
            ("order.*", "orders.created", false),
            ("*.failed", "job.failed", true),
            ("*.failed", "job.failed.twice", false),
            ("*", "anything", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn given_a_minimal_spec_when_checked_should_make_a_secret_and_enable_it() {
        let spec = spec(serde_json::json!({
            "url": "https://hooks.example.com/herald",
            "filter": {"topics": ["orders"]},
        }));
        assert!(spec.enabled && !spec.ordered);
        let checked = spec.check_fields(secret).unwrap();
        assert_eq!(checked.secret, secret());
        assert_eq!(checked.url.host_str(), Some("hooks.example.com"));
    }

    #[test]
    fn given_bad_fields_when_checked_should_name_the_field() {
        for (json, field) in [
            (
                serde_json::json!({"url": "not a url", "filter": {"topics": ["t"]}}),
                "url",
            ),
            (
                serde_json::json!({"url": "https://x.example", "filter": {"topics": []}}),
                "filter.topics",
            ),
            (
                serde_json::json!({"url": "https://x.example", "filter": {"topics": ["ok", "bad name!"]}}),
                "filter.topics[1]",
            ),
            (
                serde_json::json!({"url": "https://x.example", "filter": {"topics": ["t"], "types": [""]}}),
                "filter.types[0]",
            ),
            (
                serde_json::json!({"url": "https://x.example", "filter": {"topics": ["t"]}, "secret": "whsec_AAAA"}),
                "secret",
            ),
            (
                serde_json::json!({"url": "https://x.example", "filter": {"topics": ["t"]}, "headers": {"Webhook-Signature": "x"}}),
                "headers.Webhook-Signature",
            ),
            (
                serde_json::json!({"url": "https://x.example", "filter": {"topics": ["t"]}, "headers": {"x-ok": "line\nbreak"}}),
                "headers.x-ok",
            ),
            (
                serde_json::json!({"url": "https://x.example", "filter": {"topics": ["t"]}, "rate_limit_per_s": 0}),
                "rate_limit_per_s",
            ),
        ] {
            let error = spec(json.clone()).check_fields(secret).unwrap_err();
            assert!(
                matches!(&error, InvalidEndpoint::Field { field: got, .. } if got == field),
                "{json}: {error}"
            );
            assert_eq!(error.code(), "invalid_argument");
        }
        assert!(
            serde_json::from_value::<EndpointSpec>(serde_json::json!({
                "url": "https://x.example", "filter": {"topics": ["t"]}, "retries": 3
            }))
            .is_err(),
            "unknown fields are refused"
        );
    }

    #[tokio::test]
    async fn given_a_loopback_target_when_checked_should_answer_target_not_allowed() {
        let spec = spec(serde_json::json!({
            "url": "http://127.0.0.1:9000/hook",
            "filter": {"topics": ["t"]},
        }));
        let error = spec
            .check(&TargetPolicy::default(), secret)
            .await
            .unwrap_err();
        assert_eq!(error.code(), "target_not_allowed");
        let allowed = TargetPolicy::new(&["127.0.0.1/32"]).unwrap();
        assert!(spec.check(&allowed, secret).await.is_ok());
    }

    #[test]
    fn given_filters_when_events_pass_should_match_type_and_subject() {
        let event = |ty: &str, subject: Option<&str>| {
            let mut body =
                serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": ty});
            if let Some(subject) = subject {
                body["subject"] = subject.into();
            }
            let input =
                herald_types::EventInput::from_json(body.to_string().as_bytes(), 0).unwrap();
            StoredEvent {
                topic: "t".parse().unwrap(),
                partition: 0,
                offset: 0,
                appended_at: 0,
                event: input.event,
            }
        };
        let filter = Filter {
            topics: vec!["t".into()],
            types: vec!["order.*".into(), "refund.issued".into()],
            subject_prefix: Some("eu/".into()),
        };
        assert!(filter.matches(&event("order.created", Some("eu/42"))));
        assert!(filter.matches(&event("refund.issued", Some("eu/"))));
        assert!(!filter.matches(&event("order.created", Some("us/42"))));
        assert!(!filter.matches(&event("order.created", None)));
        assert!(!filter.matches(&event("invoice.sent", Some("eu/42"))));
        let all = Filter {
            topics: vec!["t".into()],
            types: vec![],
            subject_prefix: None,
        };
        assert!(all.matches(&event("anything", None)));
    }
}
