//! The lineage query: what one event caused, or what one correlation id
//! ties together, as a tree in causal order.
//!
//! Events come from the index ([`crate::index`]); what happened to them is
//! looked up where it is kept, per event found (never a scan):
//!
//! - `event`: an event; its parent is its `causationid`.
//! - `delivery`: the event in one consumer group of its topic: `handled`
//!   (the group is past it: acked, committed or filtered), `dead_lettered`
//!   (it is among the group's dead letters) or `pending` (not yet).
//! - `job`: a job's transitions on `herald.jobs` (they carry the job's
//!   `correlationid` and `causationid`), shown as the job at its latest
//!   state; its request events on `jobs.<queue>` are the job's and not
//!   listed apart.
//! - `workflow_step`: a workflow instance (its history's first record
//!   carries the triggering event's ids) and each task its history records
//!   as completed or faulted, under it. What an instance emits has the
//!   instance's id as its `causationid`, so it hangs under the instance.
//! - `webhook_attempt`: an attempt to deliver an event (or a job's end)
//!   to a webhook endpoint.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use herald_backend::{Backend, Direction, Error as BackendError, GroupStatus};
use herald_types::{GroupName, StreamId, TopicName};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::index::{By, Entry, IndexerHandle, lookup};

/// At most this many nodes in an answer (the answer says when it stopped).
pub const MAX_NODES: usize = 10_000;
/// How long a query waits for the index to take in what was just appended.
const CATCH_UP: Duration = Duration::from_secs(2);
/// The job service's transitions topic.
const JOBS_TOPIC: &str = "herald.jobs";
/// The workflow histories' topic.
const WORKFLOWS_TOPIC: &str = "herald.workflows";
const JOB_REQUEST_TYPE: &str = "herald.job.request";
const WORKFLOW_STARTED_TYPE: &str = "io.serverlessworkflow.workflow.started.v1";
/// A workflow history's source: `/herald/workflows/<instance>`.
const WORKFLOW_SOURCE: &str = "/herald/workflows/";

/// Where a lineage query starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Every event with this correlation id, and what they caused.
    Correlation(String),
    /// Everything the event of this id caused.
    Causation(String),
    /// The event at this position, and everything it caused.
    Event {
        /// Its topic.
        topic: TopicName,
        /// Its partition.
        partition: u32,
        /// Its offset.
        offset: u64,
    },
}

/// What kind of thing a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An event.
    Event,
    /// An event's state in one consumer group.
    Delivery,
    /// A job.
    Job,
    /// A workflow instance, or one of its tasks.
    WorkflowStep,
    /// One attempt to deliver to a webhook endpoint.
    WebhookAttempt,
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Its id: an event's id, `<event id>@<group>`, a job id, a workflow
    /// instance id (`<instance>/<task key>` for a task), an attempt id.
    pub id: String,
    /// The id of the node it came from (none: a root).
    pub parent: Option<String>,
    /// When it happened (RFC 3339), when known.
    pub at: Option<String>,
    /// Its depth in the tree (0: a root).
    pub depth: u32,
    /// The rest, by kind: an event's `topic`, `partition`, `offset`,
    /// `type`, `source`, `subject`, `correlationid`; a delivery's `group`
    /// and `state`; a job's `queue` and `status`; a step's `name` and
    /// `status`; an attempt's `endpoint`, `status_code`, `succeeded`.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub detail: Map<String, Value>,
    #[serde(skip)]
    at_ms: i64,
}

/// A query's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Answer {
    /// The nodes, each after its parent, siblings by time.
    pub nodes: Vec<Node>,
    /// Whether [`MAX_NODES`] cut it short.
    pub truncated: bool,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed (or the event asked for is not there).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The starting event does not exist.
    #[error("no event at {topic} partition {partition} offset {offset}")]
    EventNotFound {
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: u32,
        /// Its offset.
        offset: u64,
    },
}

/// Answers lineage queries.
#[derive(Debug, Clone)]
pub struct Lineage {
    backend: Arc<dyn Backend>,
    webhooks: Option<herald_webhooks::Handle>,
    indexer: IndexerHandle,
}

impl Lineage {
    /// Queries over `backend`'s index; with `webhooks`, attempts are listed.
    #[must_use]
    pub fn new(
        backend: Arc<dyn Backend>,
        webhooks: Option<herald_webhooks::Handle>,
        indexer: IndexerHandle,
    ) -> Self {
        Self {
            backend,
            webhooks,
            indexer,
        }
    }

    /// The tree of `start`.
    pub async fn query(&self, start: Start) -> Result<Answer, Error> {
        self.indexer.caught_up(CATCH_UP).await;
        let backend = &*self.backend;
        let mut entries: Vec<Entry> = Vec::new();
        let mut seen: HashSet<(String, u32, u64)> = HashSet::new();
        let mut frontier: VecDeque<String> = VecDeque::new();
        let mut add = |entry: Entry, entries: &mut Vec<Entry>, frontier: &mut VecDeque<String>| {
            if seen.insert((entry.topic.clone(), entry.partition, entry.offset)) {
                frontier.push_back(entry.id.clone());
                if let Some(instance) = workflow_instance(&entry) {
                    frontier.push_back(instance.to_owned());
                }
                if entry.topic == JOBS_TOPIC
                    && let Some(job) = &entry.subject
                {
                    frontier.push_back(job.clone());
                }
                entries.push(entry);
            }
        };
        match &start {
            Start::Correlation(correlation) => {
                for entry in lookup(backend, By::Correlation, correlation, MAX_NODES).await? {
                    add(entry, &mut entries, &mut frontier);
                }
            }
            Start::Causation(cause) => {
                frontier.push_back(cause.clone());
                for entry in lookup(backend, By::Id, cause, 1).await? {
                    add(entry, &mut entries, &mut frontier);
                }
            }
            Start::Event {
                topic,
                partition,
                offset,
            } => {
                let read = backend.read(topic, *partition, *offset, 1).await?;
                let stored = read
                    .events
                    .into_iter()
                    .find(|stored| stored.offset == *offset)
                    .ok_or_else(|| Error::EventNotFound {
                        topic: topic.as_str().to_owned(),
                        partition: *partition,
                        offset: *offset,
                    })?;
                let mut root = Entry::of(&stored);
                // The root of this tree, whatever caused it.
                root.causationid = None;
                add(root, &mut entries, &mut frontier);
            }
        }
        // Everything caused by what was found, transitively.
        let mut followed: HashSet<String> = HashSet::new();
        while let Some(id) = frontier.pop_front() {
            if entries.len() >= MAX_NODES {
                break;
            }
            if !followed.insert(id.clone()) {
                continue;
            }
            for entry in lookup(backend, By::Causation, &id, MAX_NODES).await? {
                add(entry, &mut entries, &mut frontier);
            }
        }
        let mut nodes = self.nodes(entries).await?;
        let truncated = nodes.len() > MAX_NODES;
        nodes.truncate(MAX_NODES);
        Ok(Answer {
            nodes: in_causal_order(nodes),
            truncated,
        })
    }

    /// The nodes of the events found, and what happened to them.
    async fn nodes(&self, entries: Vec<Entry>) -> Result<Vec<Node>, Error> {
        let backend = &*self.backend;
        let mut nodes = Vec::new();
        let mut jobs: BTreeMap<String, (Entry, Entry)> = BTreeMap::new();
        let mut groups = Groups::default();
        let endpoints = match &self.webhooks {
            Some(webhooks) => webhooks.list().await.unwrap_or_default(),
            None => Vec::new(),
        };
        for entry in entries {
            if entry.ty == JOB_REQUEST_TYPE {
                continue;
            }
            if entry.topic == JOBS_TOPIC {
                let Some(job) = entry.subject.clone() else {
                    continue;
                };
                let (first, last) = jobs.entry(job).or_insert((entry.clone(), entry.clone()));
                if entry.offset < first.offset {
                    *first = entry;
                } else if entry.offset > last.offset {
                    *last = entry;
                }
                continue;
            }
            if let Some(instance) = workflow_instance(&entry) {
                nodes.extend(self.workflow(instance, &entry).await?);
                continue;
            }
            if entry.topic == WORKFLOWS_TOPIC {
                continue;
            }
            let id = entry.id.clone();
            for (group, state) in groups.states(backend, &entry).await? {
                nodes.push(node(
                    Kind::Delivery,
                    format!("{id}@{group}"),
                    Some(id.clone()),
                    None,
                    json!({"topic": entry.topic, "group": group, "state": state}),
                ));
            }
            for endpoint in &endpoints {
                if endpoint.filter.topics.contains(&entry.topic) {
                    nodes.extend(self.attempts(&endpoint.endpoint_id, &entry, &id).await);
                }
            }
            nodes.push(event_node(entry));
        }
        for (job, (first, last)) in jobs {
            let status = last.ty.strip_prefix("herald.job.").unwrap_or(&last.ty);
            nodes.extend(
                self.attempts(herald_webhooks::jobs::JOBS_ENDPOINT_ID, &last, &job)
                    .await,
            );
            let mut job_node = node(
                Kind::Job,
                job,
                first.causationid.clone(),
                Some(first.at),
                json!({"status": status, "correlationid": first.correlationid}),
            );
            job_node.at_ms = first.at;
            nodes.push(job_node);
        }
        Ok(nodes)
    }

    /// Attempts to deliver the event of `entry` to `endpoint`, under `parent`.
    async fn attempts(&self, endpoint: &str, entry: &Entry, parent: &str) -> Vec<Node> {
        let Some(webhooks) = &self.webhooks else {
            return Vec::new();
        };
        let message =
            herald_webhooks::store::message_id(&entry.topic, entry.partition, entry.offset);
        let query = herald_webhooks::AttemptQuery {
            message_id: Some(message),
            ..herald_webhooks::AttemptQuery::default()
        };
        let Ok(attempts) = webhooks.attempts(endpoint, query).await else {
            return Vec::new();
        };
        attempts
            .into_iter()
            .map(|attempt| {
                let at_ms = herald_types::parse_rfc3339_ms(&attempt.at).unwrap_or(0);
                let mut attempt_node = node(
                    Kind::WebhookAttempt,
                    attempt.attempt_id,
                    Some(parent.to_owned()),
                    None,
                    json!({
                        "endpoint": attempt.endpoint_id,
                        "attempt": attempt.attempt,
                        "succeeded": attempt.succeeded,
                        "status_code": attempt.status_code,
                        "next": attempt.next,
                    }),
                );
                attempt_node.at = Some(attempt.at);
                attempt_node.at_ms = at_ms;
                attempt_node
            })
            .collect()
    }

    /// A workflow instance started by the event of `started` (its history's
    /// first record), and its tasks.
    async fn workflow(&self, instance: &str, started: &Entry) -> Result<Vec<Node>, Error> {
        let data = self.record_data(started).await?;
        let name = format!(
            "{}/{}",
            data["namespace"].as_str().unwrap_or_default(),
            data["name"].as_str().unwrap_or_default()
        );
        let mut nodes = vec![node(
            Kind::WorkflowStep,
            instance.to_owned(),
            started.causationid.clone(),
            Some(started.at),
            json!({"name": name, "status": "started"}),
        )];
        let (Ok(topic), Ok(stream)) = (
            TopicName::try_from(WORKFLOWS_TOPIC),
            StreamId::try_from(instance),
        ) else {
            return Ok(nodes);
        };
        let mut from = 0;
        while nodes.len() < MAX_NODES {
            let slice = match self
                .backend
                .read_stream(&topic, &stream, from, Direction::Forward, 256)
                .await
            {
                Ok(slice) => slice,
                Err(BackendError::StreamNotFound { .. }) => break,
                Err(error) => return Err(error.into()),
            };
            for (_, stored) in &slice.events {
                let Some(data) = stored.event.data.as_deref() else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<Value>(data) else {
                    continue;
                };
                let status = match record["kind"].as_str() {
                    Some("task_completed") => "completed",
                    Some("task_faulted") => "faulted",
                    Some(kind @ ("completed" | "faulted" | "cancelled")) => {
                        nodes[0].detail.insert("status".into(), json!(kind));
                        continue;
                    }
                    _ => continue,
                };
                let key = record["key"].as_str().unwrap_or_default();
                let at = record["at"].as_i64().unwrap_or(stored.appended_at);
                nodes.push(node(
                    Kind::WorkflowStep,
                    format!("{instance}/{key}"),
                    Some(instance.to_owned()),
                    Some(at),
                    json!({"name": record["name"], "status": status}),
                ));
            }
            match slice.next_version {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(nodes)
    }

    /// The data of the history record at `entry`.
    async fn record_data(&self, entry: &Entry) -> Result<Value, Error> {
        let Ok(topic) = TopicName::try_from(entry.topic.as_str()) else {
            return Ok(Value::Null);
        };
        let read = self
            .backend
            .read(&topic, entry.partition, entry.offset, 1)
            .await?;
        Ok(read
            .events
            .first()
            .and_then(|stored| stored.event.data.as_deref())
            .and_then(|data| serde_json::from_slice(data).ok())
            .unwrap_or(Value::Null))
    }
}

/// The instance whose history record `entry` is (its first, the one the
/// index holds).
fn workflow_instance(entry: &Entry) -> Option<&str> {
    (entry.topic == WORKFLOWS_TOPIC && entry.ty == WORKFLOW_STARTED_TYPE)
        .then(|| entry.source.strip_prefix(WORKFLOW_SOURCE))
        .flatten()
}

/// Consumer groups of the topics met, asked once per query.
#[derive(Default)]
struct Groups {
    by_topic: HashMap<String, Vec<Group>>,
}

/// A group's status and the positions of its dead letters.
struct Group {
    name: GroupName,
    status: GroupStatus,
    dead: Vec<(u32, u64)>,
}

impl Groups {
    /// The event's state in each group of its topic.
    async fn states(
        &mut self,
        backend: &dyn Backend,
        entry: &Entry,
    ) -> Result<Vec<(String, &'static str)>, Error> {
        if !self.by_topic.contains_key(&entry.topic) {
            let mut groups = Vec::new();
            if let Ok(topic) = TopicName::try_from(entry.topic.as_str()) {
                let listed = match backend.list_groups(&topic).await {
                    Ok(listed) => listed,
                    Err(BackendError::TopicNotFound { .. }) => Vec::new(),
                    Err(error) => return Err(error.into()),
                };
                for info in listed {
                    let Ok(status) = backend.group_status(&topic, &info.name).await else {
                        continue;
                    };
                    let dead = if status.dead_letters > 0 {
                        backend
                            .dead_letters(&topic, &info.name, 1_000)
                            .await
                            .unwrap_or_default()
                            .into_iter()
                            .map(|letter| (letter.original.partition, letter.original.offset))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    groups.push(Group {
                        name: info.name,
                        status,
                        dead,
                    });
                }
            }
            self.by_topic.insert(entry.topic.clone(), groups);
        }
        let groups = self
            .by_topic
            .get(&entry.topic)
            .map_or(&[][..], Vec::as_slice);
        Ok(groups
            .iter()
            .map(|Group { name, status, dead }| {
                let state = if dead.contains(&(entry.partition, entry.offset)) {
                    "dead_lettered"
                } else if status
                    .partitions
                    .iter()
                    .any(|p| p.partition == entry.partition && entry.offset < p.committed)
                {
                    "handled"
                } else {
                    "pending"
                };
                (name.as_str().to_owned(), state)
            })
            .collect())
    }
}

fn node(kind: Kind, id: String, parent: Option<String>, at_ms: Option<i64>, detail: Value) -> Node {
    let detail = match detail {
        Value::Object(map) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    };
    Node {
        kind,
        id,
        parent,
        at: at_ms.map(herald_types::format_rfc3339_ms),
        depth: 0,
        detail,
        at_ms: at_ms.unwrap_or(0),
    }
}

fn event_node(entry: Entry) -> Node {
    node(
        Kind::Event,
        entry.id,
        entry.causationid,
        Some(entry.at),
        json!({
            "topic": entry.topic,
            "partition": entry.partition,
            "offset": entry.offset,
            "type": entry.ty,
            "source": entry.source,
            "subject": entry.subject,
            "correlationid": entry.correlationid,
        }),
    )
}

/// Orders nodes depth first from the roots (those whose parent is not
/// among them), siblings by time then kind, and sets their depths. A node
/// whose parent is itself or a descendant (a cycle of causation ids) is
/// listed as a root.
fn in_causal_order(nodes: Vec<Node>) -> Vec<Node> {
    let ids: HashSet<String> = nodes.iter().map(|node| node.id.clone()).collect();
    let mut children: HashMap<Option<String>, Vec<Node>> = HashMap::new();
    for node in nodes {
        let parent = node.parent.clone().filter(|parent| ids.contains(parent));
        children.entry(parent).or_default().push(node);
    }
    for siblings in children.values_mut() {
        siblings.sort_by(|a, b| (a.at_ms, a.kind, &a.id).cmp(&(b.at_ms, b.kind, &b.id)));
    }
    let mut ordered = Vec::new();
    let mut placed: HashSet<String> = HashSet::new();
    let mut stack: Vec<(Node, u32)> = children
        .remove(&None)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .map(|node| (node, 0))
        .collect();
    loop {
        while let Some((mut node, depth)) = stack.pop() {
            if !placed.insert(node.id.clone()) {
                continue;
            }
            node.depth = depth;
            if let Some(kids) = children.remove(&Some(node.id.clone())) {
                stack.extend(kids.into_iter().rev().map(|kid| (kid, depth + 1)));
            }
            ordered.push(node);
        }
        // What is left hangs off a cycle: start again from its earliest.
        let Some(key) = children
            .iter()
            .filter(|(_, kids)| !kids.is_empty())
            .min_by_key(|(_, kids)| kids[0].at_ms)
            .map(|(key, _)| key.clone())
        else {
            break;
        };
        let kids = children.remove(&key).unwrap_or_default();
        stack.extend(kids.into_iter().rev().map(|kid| (kid, 0)));
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kind: Kind, id: &str, parent: Option<&str>, at_ms: i64) -> Node {
        node(
            kind,
            id.into(),
            parent.map(Into::into),
            Some(at_ms),
            json!({}),
        )
    }

    #[test]
    fn given_nodes_in_any_order_should_list_each_after_its_parent_siblings_by_time() {
        let ordered = in_causal_order(vec![
            at(Kind::Event, "pay", Some("order"), 20),
            at(Kind::Job, "job", Some("order"), 10),
            at(Kind::Event, "order", None, 0),
            at(Kind::Event, "receipt", Some("pay"), 30),
            at(Kind::Event, "stray", Some("elsewhere"), 5),
        ]);
        let listed: Vec<(&str, u32)> = ordered
            .iter()
            .map(|node| (node.id.as_str(), node.depth))
            .collect();
        assert_eq!(
            listed,
            [
                ("order", 0),
                ("job", 1),
                ("pay", 1),
                ("receipt", 2),
                ("stray", 0)
            ]
        );
    }

    #[test]
    fn given_a_cycle_of_causation_ids_should_still_list_every_node_once() {
        let ordered = in_causal_order(vec![
            at(Kind::Event, "a", Some("b"), 0),
            at(Kind::Event, "b", Some("a"), 1),
        ]);
        let mut ids: Vec<&str> = ordered.iter().map(|node| node.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b"]);
    }
}
