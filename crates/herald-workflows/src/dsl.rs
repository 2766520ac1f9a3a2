//! The DSL's documents as Rust types, written from the DSL 1.0 reference.
//!
//! Field names are the DSL's (`do`, `use`, `if`, `as` get a trailing `_` in
//! Rust). Runtime expressions ([`Expr`]) are kept as written, `${ … }` or
//! bare. Structures refuse unknown fields, as the DSL's schema does, so a
//! typo fails the deploy with its path instead of being ignored.
//!
//! A task is a map whose kind is the key present (`call`, `for`, …) beside
//! the fields every task has ([`TaskCommon`]); a task list (`do`) is a list
//! of single-entry maps, name → task. Both are read by hand
//! ([`Task`]'s and [`TaskList`]'s `Deserialize`), through [`nested`], so an
//! error deep inside keeps its whole path.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A runtime expression (jq), as written: `${ … }`, or bare where the
/// field's type is an expression.
pub type Expr = String;

/// A workflow definition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Its identity: `dsl`, `namespace`, `name`, `version`, …
    pub document: Document,
    /// How the workflow's input is checked and transformed.
    #[serde(default)]
    pub input: Option<Input>,
    /// Reusable components, referenced by name.
    #[serde(default, rename = "use")]
    pub use_: Option<Use>,
    /// The tasks, run in order.
    #[serde(rename = "do")]
    pub do_: TaskList,
    /// The whole workflow's timeout.
    #[serde(default)]
    pub timeout: Option<TimeoutRef>,
    /// How the workflow's output is transformed and checked.
    #[serde(default)]
    pub output: Option<Output>,
    /// What starts instances besides the API.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// The expression language (jq only) and mode.
    #[serde(default)]
    pub evaluate: Option<Evaluate>,
}

/// `document`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The DSL version, `1.0.x`.
    pub dsl: String,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The definition's version (semantic versioning).
    pub version: String,
    /// A title.
    #[serde(default)]
    pub title: Option<String>,
    /// A summary (Markdown).
    #[serde(default)]
    pub summary: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Anything else.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// `input`: a JSON Schema and a transformation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The schema the raw input must satisfy.
    #[serde(default)]
    pub schema: Option<Value>,
    /// An expression (or an object with expressions) over the raw input.
    #[serde(default)]
    pub from: Option<Value>,
}

/// `output`: a transformation and a JSON Schema.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The schema the transformed output must satisfy.
    #[serde(default)]
    pub schema: Option<Value>,
    /// An expression (or an object with expressions) over the raw output.
    #[serde(default, rename = "as")]
    pub as_: Option<Value>,
}

/// `export`: what a task adds to `$context`.
pub type Export = Output;

/// `use`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Use {
    /// Authentication policies by name (kept as written).
    #[serde(default)]
    pub authentications: Option<Map<String, Value>>,
    /// Errors by name, for `raise`.
    #[serde(default)]
    pub errors: Option<BTreeMap<String, ErrorDef>>,
    /// Extensions (refused when present: Herald runs none).
    #[serde(default)]
    pub extensions: Option<Vec<Value>>,
    /// Reusable tasks, called as `call: <name>`.
    #[serde(default)]
    pub functions: Option<BTreeMap<String, Task>>,
    /// Retry policies by name, for `catch.retry`.
    #[serde(default)]
    pub retries: Option<BTreeMap<String, RetryPolicy>>,
    /// The secrets the workflow may read, as `$secrets`.
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// Timeouts by name.
    #[serde(default)]
    pub timeouts: Option<BTreeMap<String, Timeout>>,
    /// Catalogs (refused when present: Herald resolves none).
    #[serde(default)]
    pub catalogs: Option<Map<String, Value>>,
}

/// `schedule`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Start one every this long.
    #[serde(default)]
    pub every: Option<DslDuration>,
    /// Start one on this cron schedule.
    #[serde(default)]
    pub cron: Option<String>,
    /// Start one again this long after the last completed.
    #[serde(default)]
    pub after: Option<DslDuration>,
    /// Start one per matching event (or set of events).
    #[serde(default)]
    pub on: Option<EventConsumption>,
}

/// `evaluate`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    /// The expression language: `jq` only.
    #[serde(default)]
    pub language: Option<String>,
    /// `strict` (expressions only in `${ }`) or `loose`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// A timeout, inline or by name (`use.timeouts`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TimeoutRef {
    /// `{after: <duration>}`.
    Inline(Timeout),
    /// A name under `use.timeouts`.
    Named(String),
}

/// `{after: <duration>}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    /// How long.
    pub after: DslDuration,
}

/// A duration: ISO 8601 (`PT5M`, `P1DT2H`, `PT0.5S`) or
/// `{days, hours, minutes, seconds, milliseconds}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DslDuration(pub Duration);

impl<'de> Deserialize<'de> for DslDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Parts {
            #[serde(default)]
            days: u64,
            #[serde(default)]
            hours: u64,
            #[serde(default)]
            minutes: u64,
            #[serde(default)]
            seconds: u64,
            #[serde(default)]
            milliseconds: u64,
        }
        match Value::deserialize(deserializer)? {
            Value::String(text) => parse_iso8601_duration(&text).map(DslDuration).ok_or_else(|| {
                de::Error::custom(format!(
                    "{text:?} is not an ISO 8601 duration Herald reads (P[nW][nD][T[nH][nM][n[.n]S]]; \
                     years and months have no fixed length)"
                ))
            }),
            object @ Value::Object(_) => {
                let parts: Parts = serde_json::from_value(object).map_err(de::Error::custom)?;
                let millis = [
                    (parts.days, 86_400_000),
                    (parts.hours, 3_600_000),
                    (parts.minutes, 60_000),
                    (parts.seconds, 1_000),
                    (parts.milliseconds, 1),
                ]
                .iter()
                .try_fold(0u64, |sum, (count, unit)| {
                    count.checked_mul(*unit).and_then(|part| sum.checked_add(part))
                })
                .ok_or_else(|| de::Error::custom("the duration is too long"))?;
                Ok(DslDuration(Duration::from_millis(millis)))
            }
            _ => Err(de::Error::custom(
                "expected a duration: an ISO 8601 string or {days, hours, minutes, seconds, milliseconds}",
            )),
        }
    }
}

/// `P[nW][nD][T[nH][nM][n[.n]S]]`, at least one part; `None` otherwise
/// (years and months, whose length varies, included).
pub fn parse_iso8601_duration(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total = Duration::ZERO;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, u64)]| -> Option<()> {
        let mut number = String::new();
        let mut allowed = units.iter();
        for character in part.chars() {
            if character.is_ascii_digit() || character == '.' {
                number.push(character);
                continue;
            }
            // Units in order, each at most once.
            let (_, seconds) = allowed.by_ref().find(|(unit, _)| *unit == character)?;
            if number.is_empty() {
                return None;
            }
            let value: f64 = number.parse().ok()?;
            if number.contains('.') && *seconds != 1 {
                return None;
            }
            total =
                total.checked_add(Duration::try_from_secs_f64(value * *seconds as f64).ok()?)?;
            number.clear();
            any = true;
        }
        number.is_empty().then_some(())
    };
    take(date, &[('W', 604_800), ('D', 86_400)])?;
    if let Some(time) = time {
        take(time, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    }
    any.then_some(total)
}

/// A list of named tasks, in order: `[{name: task}, …]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskList(pub Vec<(String, Task)>);

impl<'de> Deserialize<'de> for TaskList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = TaskList;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a list of tasks, each a map of one name to its task")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TaskList, A::Error> {
                let mut tasks = Vec::new();
                while let Some(NamedTask(name, task)) = seq.next_element()? {
                    tasks.push((name, task));
                }
                Ok(TaskList(tasks))
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// One entry of a task list: a map of exactly one name to its task.
struct NamedTask(String, Task);

impl<'de> Deserialize<'de> for NamedTask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = NamedTask;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a map of one task name to its task")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NamedTask, A::Error> {
                let Some((name, task)) = map.next_entry::<String, Task>()? else {
                    return Err(de::Error::custom("an empty map: name the task"));
                };
                if let Some(other) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "one task per list entry: {other:?} beside {name:?} (indent it as a list item of its own)"
                    )));
                }
                Ok(NamedTask(name, task))
            }
        }
        deserializer.deserialize_map(EntryVisitor)
    }
}

/// A task: the fields every task has, and its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// `if`, `input`, `output`, `export`, `timeout`, `then`, `metadata`.
    pub common: TaskCommon,
    /// What it does.
    pub kind: TaskKind,
}

/// The fields every task has.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCommon {
    /// Run only when this holds (on the raw input).
    #[serde(default, rename = "if")]
    pub if_: Option<Expr>,
    /// The input's schema and transformation.
    #[serde(default)]
    pub input: Option<Input>,
    /// The output's transformation and schema.
    #[serde(default)]
    pub output: Option<Output>,
    /// What goes into `$context`.
    #[serde(default)]
    pub export: Option<Export>,
    /// The task's timeout.
    #[serde(default)]
    pub timeout: Option<TimeoutRef>,
    /// What runs next.
    #[serde(default)]
    pub then: Option<FlowDirective>,
    /// Anything else.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

const COMMON_FIELDS: [&str; 7] = [
    "if", "input", "output", "export", "timeout", "then", "metadata",
];

/// `then`: what runs after a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowDirective {
    /// The next task in the list (the default).
    Continue,
    /// Leave the current list (the enclosing task completes).
    Exit,
    /// End the workflow.
    End,
    /// The task of this name in the same list.
    Goto(String),
}

impl<'de> Deserialize<'de> for FlowDirective {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(deserializer)?.as_str() {
            "continue" => Self::Continue,
            "exit" => Self::Exit,
            "end" => Self::End,
            "" => {
                return Err(de::Error::custom(
                    "an empty `then`: continue, exit, end or a task name",
                ));
            }
            name => Self::Goto(name.to_owned()),
        })
    }
}

/// What a task does.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// `call`.
    Call(Call),
    /// `do`: a sequence.
    Do(TaskList),
    /// `emit`.
    Emit(Emit),
    /// `for`.
    For(For),
    /// `fork`.
    Fork(Fork),
    /// `listen`.
    Listen(Listen),
    /// `raise`.
    Raise(Raise),
    /// `set`.
    Set(Set),
    /// `switch`: cases in order.
    Switch(Vec<(String, SwitchCase)>),
    /// `try`/`catch`.
    Try(Try),
    /// `wait`.
    Wait(DslDuration),
}

/// The keys that name a task's kind, in the order they are looked for:
/// `for` and `try` first, since a `for` task also has `do` (and a `try`
/// has `catch`), `do` last.
const KINDS: [&str; 12] = [
    "for", "try", "call", "emit", "fork", "listen", "raise", "run", "set", "switch", "wait", "do",
];

impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(deserializer)?;
        let Some(kind) = KINDS.iter().find(|kind| fields.contains_key(**kind)) else {
            return Err(de::Error::custom(
                "a task needs one of call, do, emit, for, fork, listen, raise, set, switch, try, wait",
            ));
        };
        let mut common = Map::new();
        for name in COMMON_FIELDS {
            if let Some(value) = fields.remove(name) {
                common.insert(name.to_owned(), value);
            }
        }
        let common: TaskCommon = nested(Value::Object(common))?;
        let body = Value::Object(fields);
        let kind = kind_of(kind, body).map_err(|error| explain_unknown(kind, error))?;
        Ok(Task { common, kind })
    }
}

/// The kind `kind` of a task, from its fields without the common ones.
fn kind_of<E: de::Error>(kind: &str, body: Value) -> Result<TaskKind, E> {
    Ok(match kind {
        "call" => TaskKind::Call(nested::<CallTask, _>(body)?.into_call()?),
        "do" => TaskKind::Do(nested::<DoTask, _>(body)?.do_),
        "emit" => TaskKind::Emit(nested::<EmitTask, _>(body)?.emit),
        "for" => TaskKind::For(nested(body)?),
        "fork" => TaskKind::Fork(nested::<ForkTask, _>(body)?.fork),
        "listen" => TaskKind::Listen(nested(body)?),
        "raise" => TaskKind::Raise(nested::<RaiseTask, _>(body)?.raise),
        "run" => {
            let what = body["run"]
                .as_object()
                .and_then(|run| {
                    ["container", "script", "shell", "workflow"]
                        .into_iter()
                        .find(|kind| run.contains_key(*kind))
                })
                .unwrap_or("run");
            return Err(de::Error::custom(marked(
                &format!("run.{what}"),
                &format!(
                    "run.{what} is not supported: Herald runs no containers, scripts, shells or \
                         sub-workflows (use call: http, or a Herald job)"
                ),
            )));
        }
        "set" => TaskKind::Set(nested::<SetTask, _>(body)?.set),
        "switch" => TaskKind::Switch(
            nested::<SwitchTask, _>(body)?
                .switch
                .into_iter()
                .map(|NamedCase(name, case)| (name, case))
                .collect(),
        ),
        "try" => TaskKind::Try(nested(body)?),
        "wait" => TaskKind::Wait(nested::<WaitTask, _>(body)?.wait),
        other => unreachable!("{other} is in KINDS"),
    })
}

/// An unknown field beside a task's kind: serde names only the kind's own
/// fields as expected; say that the common ones are allowed too.
fn explain_unknown<E: de::Error>(kind: &str, error: E) -> E {
    let (path, message) = split_marked(&error.to_string());
    if message.starts_with("unknown field") && !path.contains(['.', '[']) {
        let field = message.split('`').nth(1).unwrap_or(&path);
        return E::custom(marked(
            &path,
            &format!(
                "unknown field `{field}`: a `{kind}` task takes its own fields and if, input, \
                 output, export, timeout, then, metadata"
            ),
        ));
    }
    error
}

/// Deserializes `value` as a `T` inside a custom `Deserialize`, keeping the
/// path of an error below it: the error's message then starts with the
/// marked path, which [`crate::definition`] joins to the outer one.
pub(crate) fn nested<T: DeserializeOwned, E: de::Error>(value: Value) -> Result<T, E> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|error| {
        let outer = error.path().to_string();
        let (inner, message) = split_marked(&error.inner().to_string());
        E::custom(marked(&join_paths(&outer, &inner), &message))
    })
}

const MARK: char = '\u{1}';

/// A message carrying the path below where it is raised.
pub(crate) fn marked(path: &str, message: &str) -> String {
    format!("{MARK}{path}{MARK}{message}")
}

/// The path marked in `message` (empty when none) and the message itself.
pub(crate) fn split_marked(message: &str) -> (String, String) {
    message
        .strip_prefix(MARK)
        .and_then(|rest| rest.split_once(MARK))
        .map_or_else(
            || (String::new(), message.to_owned()),
            |(path, message)| (path.to_owned(), message.to_owned()),
        )
}

/// `outer` then `inner` (serde_path_to_error's `.` is the empty path).
pub(crate) fn join_paths(outer: &str, inner: &str) -> String {
    let outer = if outer == "." { "" } else { outer };
    let inner = if inner == "." { "" } else { inner };
    match (outer.is_empty(), inner.is_empty()) {
        (true, _) => inner.to_owned(),
        (_, true) => outer.to_owned(),
        _ if inner.starts_with('[') => format!("{outer}{inner}"),
        _ => format!("{outer}.{inner}"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallTask {
    call: String,
    #[serde(default)]
    with: Option<Value>,
}

impl CallTask {
    fn into_call<E: de::Error>(self) -> Result<Call, E> {
        let with = self.with;
        match self.call.as_str() {
            "http" => Ok(Call::Http(
                nested(with.unwrap_or(Value::Null))
                    .map_err(|error: E| prefix_error(&error, "with"))?,
            )),
            "openapi" => Ok(Call::OpenApi(
                nested(with.unwrap_or(Value::Null))
                    .map_err(|error: E| prefix_error(&error, "with"))?,
            )),
            kind @ ("grpc" | "asyncapi" | "a2a" | "mcp") => Err(E::custom(marked(
                "call",
                &format!(
                    "call: {kind} is not supported (Herald calls http and openapi, and functions)"
                ),
            ))),
            name => Ok(Call::Function {
                name: name.to_owned(),
                with: match with {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(arguments)) => arguments,
                    Some(_) => {
                        return Err(E::custom(marked(
                            "with",
                            "a function's arguments are a map",
                        )));
                    }
                },
            }),
        }
    }
}

/// Puts `field` in front of the path an error carries.
fn prefix_error<E: de::Error>(error: &E, field: &str) -> E {
    let (path, message) = split_marked(&error.to_string());
    E::custom(marked(&join_paths(field, &path), &message))
}

/// `call`.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `call: http`.
    Http(HttpCall),
    /// `call: openapi`.
    OpenApi(OpenApiCall),
    /// `call: <function>`: one of `use.functions`.
    Function {
        /// The function's name.
        name: String,
        /// Its arguments.
        with: Map<String, Value>,
    },
}

/// `call: http`'s `with`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// The HTTP method.
    pub method: String,
    /// Where: a URI template, an expression, or `{uri, authentication}`.
    pub endpoint: Endpoint,
    /// Headers (a map, or an expression).
    #[serde(default)]
    pub headers: Option<Value>,
    /// The body.
    #[serde(default)]
    pub body: Option<Value>,
    /// Query parameters (a map, or an expression).
    #[serde(default)]
    pub query: Option<Value>,
    /// What the call's output is: `content` (default), `response` or `raw`.
    #[serde(default)]
    pub output: Option<CallOutput>,
    /// Whether redirects are followed (Herald's outbound client never
    /// follows them; `true` is refused at deploy time).
    #[serde(default)]
    pub redirect: Option<bool>,
}

/// An endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Endpoint {
    /// A URI template or an expression.
    Uri(String),
    /// `{uri, authentication}`.
    Object(EndpointObject),
}

/// `{uri, authentication}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointObject {
    /// A URI template or an expression.
    pub uri: String,
    /// A policy, inline or by name (kept as written).
    #[serde(default)]
    pub authentication: Option<Value>,
}

/// `output` of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallOutput {
    /// The response's content, decoded.
    Content,
    /// The whole response: status, headers, content.
    Response,
    /// The content's bytes, base64.
    Raw,
}

/// `call: openapi`'s `with`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenApiCall {
    /// The OpenAPI document: `{endpoint}` or `{name, endpoint}`.
    pub document: Value,
    /// The operation.
    #[serde(rename = "operationId")]
    pub operation_id: String,
    /// Its parameters by name.
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// A policy, inline or by name (kept as written).
    #[serde(default)]
    pub authentication: Option<Value>,
    /// `content` (default), `response` or `raw`.
    #[serde(default)]
    pub output: Option<CallOutput>,
    /// Whether redirects are followed (refused when `true`).
    #[serde(default)]
    pub redirect: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoTask {
    #[serde(rename = "do")]
    do_: TaskList,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitTask {
    emit: Emit,
}

/// `emit`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// The event.
    pub event: EmitEvent,
}

/// `emit.event`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitEvent {
    /// CloudEvent attributes and `data` (values may be expressions).
    pub with: Map<String, Value>,
}

/// `for`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct For {
    /// The loop.
    #[serde(rename = "for")]
    pub for_: ForLoop,
    /// Keep going while this holds.
    #[serde(default, rename = "while")]
    pub while_: Option<Expr>,
    /// The body.
    #[serde(rename = "do")]
    pub do_: TaskList,
}

/// `for.each`, `for.in`, `for.at`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForLoop {
    /// The item's variable (default `item`).
    #[serde(default)]
    pub each: Option<String>,
    /// The collection.
    #[serde(rename = "in")]
    pub in_: Expr,
    /// The index's variable (default `index`).
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForkTask {
    fork: Fork,
}

/// `fork`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fork {
    /// The branches, run concurrently.
    pub branches: TaskList,
    /// Whether the first branch to complete wins (its output), the others
    /// cancelled.
    #[serde(default)]
    pub compete: bool,
}

/// `listen`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// What to listen to and how to read it.
    pub listen: ListenSpec,
    /// An iterator over the events as they come (kept as written).
    #[serde(default)]
    pub foreach: Option<Value>,
}

/// `listen.to`, `listen.read`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSpec {
    /// The events.
    pub to: EventConsumption,
    /// `data` (default), `envelope` or `raw`.
    #[serde(default)]
    pub read: Option<ListenRead>,
}

/// `listen.read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenRead {
    /// The events' data.
    Data,
    /// The whole events.
    Envelope,
    /// The data as received.
    Raw,
}

/// An event consumption strategy: exactly one of `one`, `any`, `all`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventConsumption {
    /// One event.
    #[serde(default)]
    pub one: Option<EventFilter>,
    /// Any of these (until `until`).
    #[serde(default)]
    pub any: Option<Vec<EventFilter>>,
    /// All of these.
    #[serde(default)]
    pub all: Option<Vec<EventFilter>>,
    /// With `any`: an expression, or a strategy, that ends the listening.
    #[serde(default)]
    pub until: Option<Value>,
}

impl EventConsumption {
    /// Its filters with their paths under `path` (`…one`, `…any[1]`,
    /// `…all[0]`), in order.
    #[must_use]
    pub fn filters(&self, path: &str) -> Vec<(String, &EventFilter)> {
        let mut filters: Vec<(String, &EventFilter)> = self
            .one
            .iter()
            .map(|filter| (join_paths(path, "one"), filter))
            .collect();
        for (field, listed) in [("any", &self.any), ("all", &self.all)] {
            let at = join_paths(path, field);
            for (index, filter) in listed.iter().flatten().enumerate() {
                filters.push((format!("{at}[{index}]"), filter));
            }
        }
        filters
    }
}

/// An event filter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Attribute values the event must have (expressions allowed).
    #[serde(default)]
    pub with: Option<Map<String, Value>>,
    /// Correlation keys: `{name: {from, expect}}`.
    #[serde(default)]
    pub correlate: Option<BTreeMap<String, Correlation>>,
}

/// `correlate.<name>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    /// What to read from the event.
    pub from: Expr,
    /// What it must equal.
    #[serde(default)]
    pub expect: Option<Expr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RaiseTask {
    raise: Raise,
}

/// `raise`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raise {
    /// The error, inline or by name (`use.errors`).
    pub error: ErrorRef,
}

/// An error, inline or by name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ErrorRef {
    /// Inline.
    Inline(ErrorDef),
    /// A name under `use.errors`.
    Named(String),
}

/// An error (RFC 7807 problem details).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDef {
    /// A URI naming the kind of error.
    #[serde(rename = "type")]
    pub type_: String,
    /// The status (an integer, or an expression).
    pub status: Value,
    /// A title.
    #[serde(default)]
    pub title: Option<String>,
    /// A detail.
    #[serde(default)]
    pub detail: Option<String>,
    /// Where (a JSON Pointer; set by the engine when absent).
    #[serde(default)]
    pub instance: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTask {
    set: Set,
}

/// `set`: a map (values may be expressions) or one expression.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Set {
    /// A map.
    Map(Map<String, Value>),
    /// An expression.
    Expr(Expr),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchTask {
    switch: Vec<NamedCase>,
}

/// One entry of `switch`: a map of one case name to its case.
struct NamedCase(String, SwitchCase);

impl<'de> Deserialize<'de> for NamedCase {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, SwitchCase>::deserialize(deserializer)?;
        let mut entries = map.into_iter();
        match (entries.next(), entries.next()) {
            (Some((name, case)), None) => Ok(NamedCase(name, case)),
            _ => Err(de::Error::custom(
                "each switch entry is a map of one case name to its case",
            )),
        }
    }
}

/// A `switch` case.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchCase {
    /// When it matches (none: the default case).
    #[serde(default)]
    pub when: Option<Expr>,
    /// Where to go.
    pub then: FlowDirective,
}

/// `try`/`catch`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Try {
    /// The tasks tried.
    #[serde(rename = "try")]
    pub try_: TaskList,
    /// What is caught and what then happens.
    pub catch: Catch,
}

/// `catch`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catch {
    /// Which errors: `{with: {type, status, …}}`.
    #[serde(default)]
    pub errors: Option<ErrorFilter>,
    /// The caught error's variable (default `error`).
    #[serde(default, rename = "as")]
    pub as_: Option<String>,
    /// Catch only when this holds.
    #[serde(default)]
    pub when: Option<Expr>,
    /// Catch only when this does not hold.
    #[serde(default, rename = "exceptWhen")]
    pub except_when: Option<Expr>,
    /// Retry the tried tasks, inline or by name (`use.retries`).
    #[serde(default)]
    pub retry: Option<RetryRef>,
    /// Run these once caught (compensation).
    #[serde(default, rename = "do")]
    pub do_: Option<TaskList>,
}

/// `catch.errors`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorFilter {
    /// Properties the error must have.
    #[serde(default)]
    pub with: Option<Map<String, Value>>,
}

/// A retry policy, inline or by name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RetryRef {
    /// Inline.
    Inline(RetryPolicy),
    /// A name under `use.retries`.
    Named(String),
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retry only when this holds.
    #[serde(default)]
    pub when: Option<Expr>,
    /// Retry only when this does not hold.
    #[serde(default, rename = "exceptWhen")]
    pub except_when: Option<Expr>,
    /// The base delay.
    #[serde(default)]
    pub delay: Option<DslDuration>,
    /// How the delay grows.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// How many attempts, for how long.
    #[serde(default)]
    pub limit: Option<RetryLimit>,
    /// A random part added to each delay.
    #[serde(default)]
    pub jitter: Option<Jitter>,
}

/// `backoff`: exactly one of `constant`, `linear`, `exponential` (each an
/// empty map: the DSL defines no factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Backoff {
    /// `delay` each time.
    Constant(Empty),
    /// `delay × n`.
    Linear(Empty),
    /// `delay × 2ⁿ`.
    Exponential(Empty),
}

/// An empty map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `limit`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryLimit {
    /// Per attempt.
    #[serde(default)]
    pub attempt: Option<AttemptLimit>,
    /// For all attempts together.
    #[serde(default)]
    pub duration: Option<DslDuration>,
}

/// `limit.attempt`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptLimit {
    /// At most this many attempts.
    #[serde(default)]
    pub count: Option<u32>,
    /// Each at most this long.
    #[serde(default)]
    pub duration: Option<DslDuration>,
}

/// `jitter`: a random duration between `from` and `to`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jitter {
    /// At least.
    pub from: DslDuration,
    /// At most.
    pub to: DslDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitTask {
    wait: DslDuration,
}
