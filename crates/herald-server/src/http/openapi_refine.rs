//! What the derives cannot say in the OpenAPI document, added to it as JSON
//! after generation ([`super::openapi::finish`]):
//!
//! - **operation ids** unique over the document (`<tag>_<handler>`): utoipa
//!   names an operation after its handler, and `groups::ack` and
//!   `jobs::ack` are both `ack`;
//! - **limits**: the server's real input constraints (name patterns,
//!   lengths, ranges, exclusive attributes), taken from the constants the
//!   code validates with, so the document cannot drift from the code and a
//!   client (or a fuzzer) that follows it is not refused;
//! - **links**: which response feeds which operation (a created topic's name
//!   into its reads, a submitted job's id into its status, a fetch's
//!   delivery ids into ack …), for clients and for schemathesis's stateful
//!   phase (`.ci/schemathesis.sh`).
//!
//! Each rule names where it applies; [`refine`] returns the targets it did
//! not find, and a test keeps that list empty, so renaming a field or a
//! route without updating the rule fails the build's tests.

use serde_json::{Map, Value, json};

use herald_backend::group::{
    MAX_BACKOFF_STEPS, MAX_FETCH, MAX_FETCH_WAIT_MS, MAX_IN_FLIGHT_LIMIT, MAX_MEMBER_LEN,
};
use herald_backend::topic::{MAX_EVENT_BYTES_LIMIT, MAX_PARTITIONS};
use herald_types::{MAX_EXTENSION_NAME_LEN, MAX_NAME_LEN, MAX_RFC3339_MS, RESERVED_ATTRIBUTES};

use super::{events, groups, jobs, streams};

/// A blob id (`herald_jobs::model::is_blob_id`).
pub const BLOB_ID_PATTERN: &str = "^sha256:[0-9a-f]{64}$";
/// A queue: `jobs.<queue>` must be a topic name, so any name characters, the
/// first included, and 5 fewer of them.
pub const QUEUE_PATTERN: &str = "^[A-Za-z0-9._-]+$";
/// The `jobs.` before a queue's name in its topic's.
const QUEUE_TOPIC_PREFIX: &str = "jobs.";
/// A part key: no control characters (`char::is_control`).
const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";
/// W3C trace context as Herald checks it: version 00, lowercase hex, ids
/// not all zeros.
const TRACEPARENT_PATTERN: &str = "^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$";
/// Standard base64, padding optional (the event parser is indifferent to
/// it), canonical: the bits after the last byte are zero, as the decoder
/// requires.
const BASE64_PATTERN: &str =
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw](?:==)?|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?$";
/// `If-Match` of a stream append: `*` or one quoted version.
const IF_MATCH_PATTERN: &str = "^(\\*|\"[0-9]+\")$";
/// 2100-01-01T00:00:00Z, in ms: `delay_ms` is stated as valid until then.
const YEAR_2100_MS: i64 = 4_102_444_800_000;
/// An `http://` or `https://` URL.
const WEBHOOK_URL_PATTERN: &str = "^https?://";

/// Adds operation ids, limits and links; returns the places a rule expected
/// and did not find (empty when the rules and the routes agree).
pub(super) fn refine(document: &mut Value) -> Vec<String> {
    let mut missing = Vec::new();
    unique_operation_ids(document);
    limits(document, &mut missing);
    close_all_of(document, "CompleteRequest", &mut missing);
    event_rules(document, &mut missing);
    path_parameters(document, &mut missing);
    links(document, &mut missing);
    missing
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// Every operation as (method, path, operation).
fn operations_mut(document: &mut Value) -> Vec<(String, String, &mut Map<String, Value>)> {
    let mut found = Vec::new();
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            if let Some(item) = item.as_object_mut() {
                for (method, operation) in item.iter_mut() {
                    if METHODS.contains(&method.as_str())
                        && let Some(operation) = operation.as_object_mut()
                    {
                        found.push((method.clone(), path.clone(), operation));
                    }
                }
            }
        }
    }
    found
}

/// `<first tag>_<handler name>` for every operation.
fn unique_operation_ids(document: &mut Value) {
    for (_, _, operation) in operations_mut(document) {
        let tag = operation
            .get("tags")
            .and_then(|tags| tags.get(0))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let id = operation
            .get("operationId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let (Some(tag), Some(id)) = (tag, id)
            && !id.starts_with(&format!("{tag}_"))
        {
            operation.insert(
                "operationId".to_owned(),
                Value::String(format!("{tag}_{id}")),
            );
        }
    }
}

/// Merges `keywords` into the schema at `pointer`.
fn constrain(document: &mut Value, pointer: &str, keywords: Value, missing: &mut Vec<String>) {
    match (document.pointer_mut(pointer), keywords) {
        (Some(Value::Object(schema)), Value::Object(keywords)) => schema.extend(keywords),
        _ => missing.push(pointer.to_owned()),
    }
}

fn property(schema: &str, name: &str) -> String {
    format!("/components/schemas/{schema}/properties/{name}")
}

fn range(minimum: u64, maximum: u64) -> Value {
    json!({"minimum": minimum, "maximum": maximum})
}

fn length(min: usize, max: usize) -> Value {
    json!({"minLength": min, "maxLength": max})
}

/// The bounds the handlers and backend specs check.
fn limits(document: &mut Value, missing: &mut Vec<String>) {
    let job_limits = herald_jobs::Options::default();
    let rules = [
        // TopicSpec::validate, TopicUpdate (the same checks on the result).
        (
            property("TopicSpec", "partitions"),
            range(1, MAX_PARTITIONS.into()),
        ),
        (
            property("TopicSpec", "max_event_bytes"),
            range(1, MAX_EVENT_BYTES_LIMIT),
        ),
        (
            property("TopicUpdate", "max_event_bytes"),
            range(1, MAX_EVENT_BYTES_LIMIT),
        ),
        (
            property("RetentionSpec", "max_age_ms"),
            json!({"minimum": 1}),
        ),
        (
            property("RetentionSpec", "max_bytes"),
            json!({"minimum": 1}),
        ),
        (
            property("RetentionSpec", "max_events"),
            json!({"minimum": 1}),
        ),
        // GroupSpec::validate.
        (property("GroupSpec", "ack_wait_ms"), json!({"minimum": 1})),
        (
            property("GroupSpec", "max_deliveries"),
            json!({"minimum": 1}),
        ),
        (
            property("GroupSpec", "max_in_flight"),
            range(1, MAX_IN_FLIGHT_LIMIT.into()),
        ),
        (
            property("GroupSpec", "session_timeout_ms"),
            json!({"minimum": 1}),
        ),
        (
            property("GroupSpec", "backoff_ms"),
            json!({"maxItems": MAX_BACKOFF_STEPS}),
        ),
        // FetchRequest::validate (the queue fetch builds one).
        (
            property("FetchRequest", "member"),
            length(1, MAX_MEMBER_LEN),
        ),
        (property("FetchRequest", "max"), range(1, MAX_FETCH.into())),
        (
            property("FetchRequest", "wait_ms"),
            range(0, MAX_FETCH_WAIT_MS),
        ),
        (property("QueueFetch", "member"), length(1, MAX_MEMBER_LEN)),
        (property("QueueFetch", "max"), range(1, MAX_FETCH.into())),
        (
            property("QueueFetch", "wait_ms"),
            range(0, MAX_FETCH_WAIT_MS),
        ),
        // groups::leave, groups::extend, groups::reject.
        (
            property("LeaveRequest", "member"),
            length(1, groups::MAX_MEMBER_BYTES),
        ),
        (
            property("ExtendRequest", "ack_wait_ms"),
            json!({"minimum": 1}),
        ),
        (
            property("RejectRequest", "reason"),
            length(1, groups::MAX_REASON_BYTES),
        ),
        // herald_jobs::model::submit and complete.
        (
            property("SubmitRequest", "parts"),
            json!({"minItems": 1, "maxItems": job_limits.max_parts}),
        ),
        (
            property("SubmitRequest", "deadline_ms"),
            range(1, job_limits.max_ttl_ms),
        ),
        (
            property("SubmitRequest", "result_ttl_ms"),
            range(1, job_limits.max_ttl_ms),
        ),
        (
            property("SubmitRequest", "blob"),
            json!({"pattern": BLOB_ID_PATTERN}),
        ),
        (
            property("PartInput", "key"),
            json!({"minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": NO_CONTROL_PATTERN}),
        ),
        (
            property("Notify", "webhook_url"),
            json!({"pattern": WEBHOOK_URL_PATTERN}),
        ),
        (
            property("JobOutcome", "result_blob"),
            json!({"pattern": BLOB_ID_PATTERN}),
        ),
        (
            "/components/schemas/JobOutcome".to_owned(),
            json!({"not": {"required": ["result", "error"]}}),
        ),
    ];
    for (pointer, keywords) in rules {
        constrain(document, &pointer, keywords, missing);
    }
}

/// Makes the `allOf` schema `name` (a request flattening another type) one
/// object that refuses unknown fields, as its `deny_unknown_fields` parse
/// does: `additionalProperties` cannot see through an `allOf`.
fn close_all_of(document: &mut Value, name: &str, missing: &mut Vec<String>) {
    let pointer = format!("/components/schemas/{name}");
    let Some(parts) = document
        .pointer(&format!("{pointer}/allOf"))
        .and_then(Value::as_array)
        .cloned()
    else {
        missing.push(format!("{pointer}/allOf"));
        return;
    };
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut not = None;
    for part in parts {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(reference) => document
                .pointer(reference.trim_start_matches('#'))
                .cloned()
                .unwrap_or(Value::Null),
            None => part,
        };
        if let Some(part_properties) = part.get("properties").and_then(Value::as_object) {
            properties.extend(part_properties.clone());
        }
        if let Some(part_required) = part.get("required").and_then(Value::as_array) {
            required.extend(part_required.iter().cloned());
        }
        not = not.or_else(|| part.get("not").cloned());
    }
    if let Some(Value::Object(schema)) = document.pointer_mut(&pointer) {
        schema.remove("allOf");
        schema.insert("type".to_owned(), json!("object"));
        schema.insert("properties".to_owned(), Value::Object(properties));
        if !required.is_empty() {
            schema.insert("required".to_owned(), Value::Array(required));
        }
        if let Some(not) = not {
            schema.insert("not".to_owned(), not);
        }
        schema.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
}

/// The event parser's rules (`herald_types::event`) that the generated
/// CloudEvent schema leaves out: extension names, reserved names, pairs
/// that exclude each other, and the formats of some attributes.
fn event_rules(document: &mut Value, missing: &mut Vec<String>) {
    let reserved = RESERVED_ATTRIBUTES.join("|");
    let extension_name = format!("^(?!(?:{reserved})$)[a-z0-9]{{1,{MAX_EXTENSION_NAME_LEN}}}$");
    let pointer = "/components/schemas/CloudEvent";
    let Some(Value::Object(event)) = document.pointer_mut(pointer) else {
        missing.push(pointer.to_owned());
        return;
    };
    let extension = event
        .remove("additionalProperties")
        .unwrap_or_else(|| json!({}));
    event.insert(
        "patternProperties".to_owned(),
        json!({ extension_name: extension }),
    );
    event.insert("additionalProperties".to_owned(), Value::Bool(false));
    event.insert(
        "not".to_owned(),
        json!({"anyOf": [
            {"required": ["data", "data_base64"]},
            {"required": ["key", "partitionkey"]},
            {"required": ["deliverat", "delayms"]},
            {"required": ["deliverat", "deliver_at"]},
            {"required": ["deliverat", "delay_ms"]},
            {"required": ["delayms", "deliver_at"]},
            {"required": ["delayms", "delay_ms"]},
            {"required": ["deliver_at", "delay_ms"]},
        ]}),
    );
    let rules = [
        ("traceparent", json!({"pattern": TRACEPARENT_PATTERN})),
        ("data_base64", json!({"pattern": BASE64_PATTERN})),
        // The delivery time must be before the year 10000; stated as of 2100.
        ("delayms", json!({"maximum": MAX_RFC3339_MS - YEAR_2100_MS})),
        (
            "delay_ms",
            json!({"maximum": MAX_RFC3339_MS - YEAR_2100_MS}),
        ),
    ];
    for (name, keywords) in rules {
        constrain(document, &property("CloudEvent", name), keywords, missing);
    }
    // A stream append (`streams::append`): one event, a non-empty array, or
    // `{events, expected_version}`.
    let event = json!({"$ref": "#/components/schemas/CloudEvent"});
    let events = json!({"type": "array", "minItems": 1, "items": event});
    let append = json!({"oneOf": [
        event,
        events,
        {
            "type": "object",
            "properties": {
                "events": events,
                "expected_version": {"oneOf": [
                    {"type": "string", "enum": ["any", "no_stream", "exists"]},
                    {"type": "integer", "format": "int64", "minimum": 0},
                ]},
            },
            "required": ["events"],
            "additionalProperties": false,
        },
    ]});
    let pointer = format!(
        "{}/requestBody/content/application~1json/schema",
        operation_pointer(("post", STREAM_EVENTS))
    );
    match document.pointer_mut(&pointer) {
        Some(schema) => *schema = append,
        None => missing.push(pointer),
    }
}

/// Path and query parameters: names by their rule, limits by the handler's.
fn path_parameters(document: &mut Value, missing: &mut Vec<String>) {
    let name_ref = |schema: &str| json!({"$ref": format!("#/components/schemas/{schema}")});
    let queue = json!({
        "type": "string",
        "pattern": QUEUE_PATTERN,
        "minLength": 1,
        "maxLength": MAX_NAME_LEN - QUEUE_TOPIC_PREFIX.len(),
    });
    let blob = json!({"type": "string", "pattern": BLOB_ID_PATTERN});
    // (method, path, parameter, schema keywords)
    let queries = [
        (
            "get",
            "/v1/topics/{topic}/events",
            "limit",
            range(1, events::MAX_READ_LIMIT.into()),
        ),
        (
            "get",
            "/v1/topics/{topic}/events",
            "partition",
            range(0, u64::from(MAX_PARTITIONS) - 1),
        ),
        (
            "get",
            "/v1/topics/{topic}/streams/{stream}/events",
            "limit",
            range(1, streams::MAX_READ_LIMIT.into()),
        ),
        (
            "get",
            "/v1/topics/{topic}/streams/{stream}/events",
            "direction",
            json!({"enum": ["forward", "backward", null]}),
        ),
        (
            "get",
            "/v1/topics/{topic}/groups/{group}/dead-letters",
            "limit",
            range(1, groups::MAX_DEAD_LETTER_LIMIT.into()),
        ),
        (
            "get",
            "/v1/jobs/{job_id}",
            "wait_ms",
            range(0, jobs::MAX_WAIT_MS),
        ),
    ];
    let mut found = vec![false; queries.len()];
    for (method, path, operation) in operations_mut(document) {
        let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for parameter in parameters.iter_mut().filter_map(Value::as_object_mut) {
            let text = |key: &str| {
                parameter
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let (name, place) = (text("name"), text("in"));
            let schema = match (place.as_str(), name.as_str()) {
                ("path", "topic") => Some(name_ref("TopicName")),
                ("path", "group") => Some(name_ref("GroupName")),
                ("path", "stream") => Some(name_ref("StreamId")),
                ("path", "queue") => Some(queue.clone()),
                ("path", "id") if path.starts_with("/v1/blobs/") => Some(blob.clone()),
                // events::publish: binary mode is CloudEvents 1.0 too.
                ("header", "ce-specversion") => Some(json!({"type": "string", "enum": ["1.0"]})),
                ("header", "ce-source" | "ce-type" | "ce-id") => {
                    Some(json!({"type": "string", "minLength": 1}))
                }
                // streams::append: a quoted version or `*`; `*` alone.
                ("header", "If-Match") => {
                    Some(json!({"type": "string", "pattern": IF_MATCH_PATTERN}))
                }
                // streams::append: `*` alone (a GET's takes a list of ETags).
                ("header", "If-None-Match") if method == "post" => {
                    Some(json!({"type": "string", "enum": ["*"]}))
                }
                _ => None,
            };
            if let Some(schema) = schema {
                parameter.insert("schema".to_owned(), schema);
                continue;
            }
            for (index, (rule_method, rule_path, rule_name, keywords)) in queries.iter().enumerate()
            {
                if method == *rule_method && path == *rule_path && name == *rule_name {
                    found[index] = true;
                    if let (Some(Value::Object(schema)), Value::Object(keywords)) =
                        (parameter.get_mut("schema"), keywords)
                    {
                        schema.extend(keywords.clone());
                    }
                }
            }
        }
    }
    for ((method, path, name, _), found) in queries.iter().zip(found) {
        if !found {
            missing.push(format!("{method} {path} ?{name}"));
        }
    }
}

/// An operation: (method, path).
type Op = (&'static str, &'static str);

/// One link: from the `status` responses of `source` to `target`.
struct Link {
    source: Op,
    status: &'static [&'static str],
    name: &'static str,
    target: Op,
    parameters: Value,
    body: Option<Value>,
}

impl Link {
    fn new(source: Op, status: &'static [&'static str], name: &'static str, target: Op) -> Self {
        Self {
            source,
            status,
            name,
            target,
            parameters: json!({}),
            body: None,
        }
    }

    fn parameters(mut self, parameters: &Value) -> Self {
        self.parameters = parameters.clone();
        self
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

const TOPICS: &str = "/v1/topics";
const TOPIC: &str = "/v1/topics/{topic}";
const TOPIC_EVENTS: &str = "/v1/topics/{topic}/events";
const GROUP: &str = "/v1/topics/{topic}/groups/{group}";
const STREAM: &str = "/v1/topics/{topic}/streams/{stream}";
const STREAM_EVENTS: &str = "/v1/topics/{topic}/streams/{stream}/events";
const SNAPSHOT: &str = "/v1/topics/{topic}/streams/{stream}/snapshot";
const BLOBS: &str = "/v1/blobs";
const BLOB: &str = "/v1/blobs/{id}";
const SUBMIT: &str = "/v1/queues/{queue}/jobs";
const QUEUE_FETCH: &str = "/v1/queues/{queue}/fetch";
const JOB: &str = "/v1/jobs/{job_id}";
const JOB_PROGRESS: &str = "/v1/jobs/{job_id}/progress";
const JOB_COMPLETE: &str = "/v1/jobs/{job_id}/complete";

/// `…/groups/{group}/<action>`.
fn group_action(action: &str) -> &'static str {
    match action {
        "fetch" => "/v1/topics/{topic}/groups/{group}/fetch",
        "ack" => "/v1/topics/{topic}/groups/{group}/ack",
        "nack" => "/v1/topics/{topic}/groups/{group}/nack",
        "extend" => "/v1/topics/{topic}/groups/{group}/extend",
        "reject" => "/v1/topics/{topic}/groups/{group}/reject",
        "commit" => "/v1/topics/{topic}/groups/{group}/commit",
        "reset" => "/v1/topics/{topic}/groups/{group}/reset",
        "leave" => "/v1/topics/{topic}/groups/{group}/leave",
        "dead-letters" => "/v1/topics/{topic}/groups/{group}/dead-letters",
        _ => "/v1/topics/{topic}/groups/{group}/dead-letters/redrive",
    }
}

/// Which response feeds which operation.
fn link_table() -> Vec<Link> {
    let created_topic = json!({"topic": "$response.body#/name"});
    let same_topic = json!({"topic": "$request.path.topic"});
    let same_group = json!({"topic": "$request.path.topic", "group": "$request.path.group"});
    let same_stream = json!({"topic": "$request.path.topic", "stream": "$request.path.stream"});
    let same_queue = json!({"queue": "$request.path.queue"});
    let submitted = json!({"job_id": "$response.body#/job_id"});
    let leased = json!({"job_id": "$response.body#/deliveries/0/job_id"});
    let first_delivery = json!({"delivery_ids": ["$response.body#/deliveries/0/delivery_id"]});
    let mut table = Vec::new();
    // A created topic: its reads, changes, events, a group and a stream on it.
    let created = ("post", TOPICS);
    for (name, target) in [
        ("describe", ("get", TOPIC)),
        ("update", ("patch", TOPIC)),
        ("delete", ("delete", TOPIC)),
        ("publish", ("post", TOPIC_EVENTS)),
        ("read", ("get", TOPIC_EVENTS)),
    ] {
        table.push(Link::new(created, &["201"], name, target).parameters(&created_topic));
    }
    table.push(
        Link::new(created, &["201"], "create_group", ("put", GROUP))
            .parameters(&json!({"topic": "$response.body#/name", "group": "linked"})),
    );
    table.push(
        Link::new(
            created,
            &["201"],
            "append_to_stream",
            ("post", STREAM_EVENTS),
        )
        .parameters(&json!({"topic": "$response.body#/name", "stream": "linked"})),
    );
    // Published events: read them back where they landed.
    let published = ("post", TOPIC_EVENTS);
    table.push(
        Link::new(published, &["201"], "read_back", ("get", TOPIC_EVENTS)).parameters(&json!({
            "topic": "$request.path.topic",
            "partition": "$response.body#/results/0/partition",
            "from_offset": "$response.body#/results/0/offset",
        })),
    );
    table.push(Link::new(published, &["201"], "describe", ("get", TOPIC)).parameters(&same_topic));
    // A created or updated group: everything done with it.
    for (name, method) in [
        ("status", "get"),
        ("delete", "delete"),
        ("fetch", "post"),
        ("reset", "post"),
        ("leave", "post"),
        ("dead-letters", "get"),
        ("redrive", "post"),
    ] {
        let target = match name {
            "status" | "delete" => GROUP,
            _ => group_action(name),
        };
        table.push(
            Link::new(("put", GROUP), &["200", "201"], name, (method, target))
                .parameters(&same_group),
        );
    }
    // A fetch: settle what it leased, commit (stream mode), leave.
    let fetched = ("post", group_action("fetch"));
    for name in ["ack", "nack", "extend", "reject"] {
        table.push(
            Link::new(fetched, &["200"], name, ("post", group_action(name)))
                .parameters(&same_group)
                .body(first_delivery.clone()),
        );
    }
    table.push(
        Link::new(
            fetched,
            &["200"],
            "commit",
            ("post", group_action("commit")),
        )
        .parameters(&same_group)
        .body(json!({
            "member": "$request.body#/member",
            "generation": "$response.body#/generation",
            "offsets": [{"partition": "$response.body#/assignment/0", "offset": 0}],
        })),
    );
    table.push(
        Link::new(fetched, &["200"], "leave", ("post", group_action("leave")))
            .parameters(&same_group)
            .body(json!({"member": "$request.body#/member"})),
    );
    // A stream appended to: its reads, snapshot and deletion.
    let appended = ("post", STREAM_EVENTS);
    for (name, target) in [
        ("read", ("get", STREAM_EVENTS)),
        ("metadata", ("get", STREAM)),
        ("delete", ("delete", STREAM)),
        ("get_snapshot", ("get", SNAPSHOT)),
    ] {
        table.push(Link::new(appended, &["201"], name, target).parameters(&same_stream));
    }
    table.push(
        Link::new(appended, &["201"], "put_snapshot", ("put", SNAPSHOT))
            .parameters(&same_stream)
            .body(json!({"version": "$response.body#/last_version", "state": {}})),
    );
    table.push(
        Link::new(
            ("put", SNAPSHOT),
            &["200"],
            "get_snapshot",
            ("get", SNAPSHOT),
        )
        .parameters(&same_stream),
    );
    // An uploaded blob: download it, submit a job on it.
    let uploaded = ("post", BLOBS);
    let blob = json!({"id": "$response.body#/id"});
    table.push(Link::new(uploaded, &["201"], "download", ("get", BLOB)).parameters(&blob));
    table.push(Link::new(uploaded, &["201"], "head", ("head", BLOB)).parameters(&blob));
    table.push(
        Link::new(uploaded, &["201"], "submit_job", ("post", SUBMIT))
            .parameters(&json!({"queue": "linked"}))
            .body(json!({"blob": "$response.body#/id", "data": {}})),
    );
    // A submitted job: its status and worker calls, and its queue's fetch.
    let submit = ("post", SUBMIT);
    for (name, target) in [
        ("status", ("get", JOB)),
        ("progress", ("post", JOB_PROGRESS)),
        ("complete", ("post", JOB_COMPLETE)),
    ] {
        table.push(Link::new(submit, &["202"], name, target).parameters(&submitted));
    }
    table.push(Link::new(submit, &["202"], "fetch", ("post", QUEUE_FETCH)).parameters(&same_queue));
    // A worker's fetch: report on, complete, ack or nack what it leased.
    let leased_part = |extra: Value| {
        let mut body = json!({
            "part": "$response.body#/deliveries/0/part",
            "delivery_id": "$response.body#/deliveries/0/delivery_id",
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        body
    };
    let worker = ("post", QUEUE_FETCH);
    table.push(
        Link::new(worker, &["200"], "complete", ("post", JOB_COMPLETE))
            .parameters(&leased)
            .body(leased_part(json!({"result": {}}))),
    );
    table.push(
        Link::new(worker, &["200"], "progress", ("post", JOB_PROGRESS))
            .parameters(&leased)
            .body(leased_part(json!({}))),
    );
    for (name, target) in [
        ("ack", "/v1/queues/{queue}/ack"),
        ("nack", "/v1/queues/{queue}/nack"),
    ] {
        table.push(
            Link::new(worker, &["200"], name, ("post", target))
                .parameters(&same_queue)
                .body(first_delivery.clone()),
        );
    }
    table
}

/// Adds [`link_table`] to the responses it names.
fn links(document: &mut Value, missing: &mut Vec<String>) {
    for link in link_table() {
        let target_id = document
            .pointer(&operation_pointer(link.target))
            .and_then(|operation| operation.get("operationId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(target_id) = target_id else {
            missing.push(format!("link target {} {}", link.target.0, link.target.1));
            continue;
        };
        let mut definition = json!({
            "operationId": target_id,
            "parameters": link.parameters,
        });
        if let Some(body) = &link.body {
            definition["requestBody"] = body.clone();
        }
        for status in link.status {
            let pointer = format!("{}/responses/{status}", operation_pointer(link.source));
            match document
                .pointer_mut(&pointer)
                .and_then(Value::as_object_mut)
            {
                Some(response) => {
                    let links = response
                        .entry("links")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(links) = links.as_object_mut() {
                        links.insert(link.name.to_owned(), definition.clone());
                    }
                }
                None => missing.push(format!("link source {pointer}")),
            }
        }
    }
}

/// The JSON pointer of an operation: `/paths/<escaped path>/<method>`.
fn operation_pointer((method, path): (&str, &str)) -> String {
    format!(
        "/paths/{}/{method}",
        path.replace('~', "~0").replace('/', "~1")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn given_generated_document_when_refined_should_find_every_target_of_every_rule() {
        let document = crate::http::documented_routes().into_openapi();
        let mut document = super::super::openapi::render(document);
        let missing = super::refine(&mut document);
        assert!(missing.is_empty(), "rules without a target: {missing:#?}");
    }
}
