//! Permissions: which actions an identity may take on which resources.
//!
//! A permission is `{actions: [...], resources: [...]}`; an identity holds a
//! list of them and may take an action on a resource when one permission
//! lists both. Resources are names (a topic, a queue, a blob id) matched by
//! pattern:
//!
//! | pattern | matches |
//! |---|---|
//! | `orders` | exactly `orders` |
//! | `orders.*` | every name that starts with `orders.` (a tenant's prefix), not `orders` itself |
//! | `*` | everything |
//!
//! Actions are `<resource kind>:<verb>` ([`Action`]); `<kind>:*` grants
//! every verb of a kind, and `admin` grants everything, including the
//! `admin` routes (keys, flush, compact) and the audit topic
//! [`AUDIT_TOPIC`], which nothing else reaches.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The audit topic: readable (and anything else) only with `admin`.
pub const AUDIT_TOPIC: &str = "herald.audit";

/// Declares [`Action`] from one table: variant, wire name, what it allows.
macro_rules! actions {
    ($( $(#[doc = $doc:literal])* $variant:ident => $wire:literal; )*) => {
        /// One action an identity may be granted.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Action {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Action {
            /// Every action, in table order.
            pub const ALL: &'static [Action] = &[$(Self::$variant),*];

            /// The action's wire name (`topics:publish`).
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire,)* }
            }
        }
    };
}

actions! {
    /// Publish events to a topic.
    TopicsPublish => "topics:publish";
    /// Consume a topic through a group: fetch, ack, nack, extend, reject,
    /// commit, leave, the group WebSocket and gRPC `Consume`.
    TopicsConsume => "topics:consume";
    /// Read a topic: describe it, list it, read events by offset, tail it
    /// (SSE, WebSocket, gRPC `Subscribe`).
    TopicsRead => "topics:read";
    /// Create, change and delete topics.
    TopicsManage => "topics:manage";
    /// See a group's status and dead letters.
    GroupsRead => "groups:read";
    /// Create, delete and reset groups, redrive dead letters.
    GroupsManage => "groups:manage";
    /// Append to event streams (and store snapshots) on a topic.
    StreamsAppend => "streams:append";
    /// Read event streams, their metadata and snapshots.
    StreamsRead => "streams:read";
    /// Delete event streams (soft or hard).
    StreamsDelete => "streams:delete";
    /// Submit jobs to a queue.
    JobsSubmit => "jobs:submit";
    /// Work a queue: fetch, ack, nack, progress, complete.
    JobsWork => "jobs:work";
    /// Read jobs and watch their progress.
    JobsRead => "jobs:read";
    /// Download blobs.
    BlobsRead => "blobs:read";
    /// Upload blobs.
    BlobsWrite => "blobs:write";
    /// Manage webhook endpoints.
    WebhooksManage => "webhooks:manage";
    /// Manage workflow definitions.
    WorkflowsManage => "workflows:manage";
    /// Start and inspect workflow instances.
    WorkflowsRun => "workflows:run";
    /// Read `/metrics` (when `auth.public_metrics` is off).
    MetricsRead => "metrics:read";
    /// Everything: API keys, the admin routes, the audit topic, and every
    /// other action on the resources it is granted on.
    Admin => "admin";
}

impl Action {
    /// The kind before the `:` (`topics`), or `admin`.
    pub fn kind(self) -> &'static str {
        let wire = self.as_str();
        wire.split_once(':').map_or(wire, |(kind, _)| kind)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = InvalidPermission;

    fn from_str(wire: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|action| action.as_str() == wire)
            .ok_or_else(|| InvalidPermission::Action(wire.to_owned()))
    }
}

/// A permission that does not parse. The message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPermission {
    /// Not an action (nor `<kind>:*`).
    #[error(
        "unknown action \"{0}\" (expected `<kind>:<verb>` such as topics:publish, `<kind>:*`, or admin)"
    )]
    Action(String),
    /// Not a resource pattern.
    #[error(
        "invalid resource pattern \"{0}\" (expected a name, a prefix ending in `*` such as orders.*, or *)"
    )]
    Resource(String),
    /// A permission with no action or no resource.
    #[error("a permission needs at least one action and one resource")]
    Empty,
}

/// A granted action: one action, every action of a kind (`topics:*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Granted {
    /// Exactly this action.
    One(Action),
    /// Every action of this kind (`topics:*`).
    Kind(&'static str),
}

impl Granted {
    fn allows(&self, action: Action) -> bool {
        match self {
            Self::One(Action::Admin) => true,
            Self::One(granted) => *granted == action,
            Self::Kind(kind) => action != Action::Admin && action.kind() == *kind,
        }
    }
}

impl FromStr for Granted {
    type Err = InvalidPermission;

    fn from_str(wire: &str) -> Result<Self, Self::Err> {
        if let Some(kind) = wire.strip_suffix(":*") {
            return Action::ALL
                .iter()
                .map(|action| action.kind())
                .find(|known| *known == kind && *known != "admin")
                .map(Self::Kind)
                .ok_or_else(|| InvalidPermission::Action(wire.to_owned()));
        }
        wire.parse().map(Self::One)
    }
}

impl fmt::Display for Granted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(action) => f.write_str(action.as_str()),
            Self::Kind(kind) => write!(f, "{kind}:*"),
        }
    }
}

impl Serialize for Granted {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Granted {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = String::deserialize(deserializer)?;
        wire.parse().map_err(serde::de::Error::custom)
    }
}

/// A resource pattern (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern(String);

impl Pattern {
    /// Whether `resource` matches.
    pub fn matches(&self, resource: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => resource.starts_with(prefix),
            None => self.0 == resource,
        }
    }

    /// `*`.
    pub fn any() -> Self {
        Self("*".to_owned())
    }
}

impl FromStr for Pattern {
    type Err = InvalidPermission;

    fn from_str(wire: &str) -> Result<Self, Self::Err> {
        let body = wire.strip_suffix('*').unwrap_or(wire);
        let valid = (body.len() < 256)
            && (!body.is_empty() || wire == "*")
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if valid {
            Ok(Self(wire.to_owned()))
        } else {
            Err(InvalidPermission::Resource(wire.to_owned()))
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = String::deserialize(deserializer)?;
        wire.parse().map_err(serde::de::Error::custom)
    }
}

/// One permission: these actions on these resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// `topics:publish`, `topics:*`, `admin`, … (docs/security.md lists them).
    #[schema(value_type = Vec<String>, example = json!(["topics:publish", "topics:read"]))]
    pub actions: Vec<Granted>,
    /// Resource patterns: `orders`, `orders.*`, `*`.
    #[schema(value_type = Vec<String>, example = json!(["orders.*"]))]
    pub resources: Vec<Pattern>,
}

impl Permission {
    /// `actions` on `resources`; both must be non-empty.
    pub fn new(actions: Vec<Granted>, resources: Vec<Pattern>) -> Result<Self, InvalidPermission> {
        let permission = Self { actions, resources };
        permission.check()?;
        Ok(permission)
    }

    /// Every action on everything.
    pub fn admin() -> Self {
        Self {
            actions: vec![Granted::One(Action::Admin)],
            resources: vec![Pattern::any()],
        }
    }

    /// Refuses an empty action or resource list.
    pub fn check(&self) -> Result<(), InvalidPermission> {
        if self.actions.is_empty() || self.resources.is_empty() {
            return Err(InvalidPermission::Empty);
        }
        Ok(())
    }

    fn grants(&self, action: Action) -> bool {
        self.actions.iter().any(|granted| granted.allows(action))
    }

    fn is_admin(&self) -> bool {
        self.actions.contains(&Granted::One(Action::Admin))
    }
}

/// Whether `permissions` allow `action` on `resource`. The audit topic needs
/// `admin` whatever the action.
pub fn allows(permissions: &[Permission], action: Action, resource: &str) -> bool {
    permissions.iter().any(|permission| {
        let action_ok = if resource == AUDIT_TOPIC {
            permission.is_admin()
        } else {
            permission.grants(action)
        };
        action_ok
            && permission
                .resources
                .iter()
                .any(|pattern| pattern.matches(resource))
    })
}

/// Whether `permissions` allow `action` on at least one resource: the check
/// made before the resource is known (a gRPC call before its message is
/// read); the exact check follows once it is.
pub fn allows_somewhere(permissions: &[Permission], action: Action) -> bool {
    permissions
        .iter()
        .any(|permission| permission.grants(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permission(actions: &[&str], resources: &[&str]) -> Permission {
        Permission::new(
            actions.iter().map(|a| a.parse().unwrap()).collect(),
            resources.iter().map(|r| r.parse().unwrap()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn given_prefix_pattern_when_matched_should_take_names_under_the_prefix_only() {
        let pattern: Pattern = "orders.*".parse().unwrap();
        assert!(pattern.matches("orders.eu"));
        assert!(pattern.matches("orders.eu.paid"));
        assert!(!pattern.matches("orders"));
        assert!(!pattern.matches("ordersx"));
        assert!(!pattern.matches("payments.eu"));
        assert!(Pattern::any().matches("anything"));
        let exact: Pattern = "orders".parse().unwrap();
        assert!(exact.matches("orders") && !exact.matches("orders.eu"));
    }

    #[test]
    fn given_bad_patterns_and_actions_when_parsed_should_be_refused_naming_them() {
        for bad in ["", "or*ders", "a b", "**", "orders/x"] {
            let error = bad.parse::<Pattern>().unwrap_err();
            assert!(error.to_string().contains(&format!("\"{bad}\"")), "{error}");
        }
        for bad in ["publish", "topics:fly", "admin:*", "*", "nope:*"] {
            assert!(bad.parse::<Granted>().is_err(), "{bad}");
        }
        assert_eq!(
            Permission::new(vec![], vec![Pattern::any()]),
            Err(InvalidPermission::Empty)
        );
    }

    #[test]
    fn given_scoped_permission_when_checked_should_allow_only_its_actions_on_its_resources() {
        let permissions = [permission(
            &["topics:publish", "topics:read"],
            &["orders.*"],
        )];
        assert!(allows(&permissions, Action::TopicsPublish, "orders.eu"));
        assert!(!allows(&permissions, Action::TopicsManage, "orders.eu"));
        assert!(!allows(&permissions, Action::TopicsPublish, "payments"));
        assert!(allows_somewhere(&permissions, Action::TopicsRead));
        assert!(!allows_somewhere(&permissions, Action::JobsSubmit));
    }

    #[test]
    fn given_kind_wildcard_when_checked_should_allow_that_kind_but_not_admin() {
        let permissions = [permission(&["topics:*"], &["*"])];
        assert!(allows(&permissions, Action::TopicsManage, "orders"));
        assert!(!allows(&permissions, Action::StreamsRead, "orders"));
        assert!(!allows(&permissions, Action::Admin, "*"));
    }

    #[test]
    fn given_audit_topic_when_checked_should_need_admin() {
        let reader = [permission(&["topics:read"], &["*"])];
        assert!(!allows(&reader, Action::TopicsRead, AUDIT_TOPIC));
        assert!(allows(
            &[Permission::admin()],
            Action::TopicsRead,
            AUDIT_TOPIC
        ));
    }

    #[test]
    fn given_permission_json_when_round_tripped_should_keep_wire_names() {
        let json = serde_json::json!({"actions": ["topics:*", "admin"], "resources": ["orders.*"]});
        let parsed: Permission = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), json);
        let bad = serde_json::json!({"actions": ["topics:fly"], "resources": ["*"]});
        let error = serde_json::from_value::<Permission>(bad).unwrap_err();
        assert!(error.to_string().contains("topics:fly"), "{error}");
    }
}
