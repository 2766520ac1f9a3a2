//! A deployable definition: a document parsed ([`crate::dsl`]) and checked,
//! or refused with the path of what is wrong.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::dsl::{
    Call, Endpoint, ErrorRef, Input, Output, RetryRef, Set, Task, TaskKind, TaskList, TimeoutRef,
    Workflow, join_paths, nested, split_marked,
};
use crate::expr::{self, ARGUMENTS, Expression};

/// Why a definition cannot be deployed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The text is neither JSON nor YAML.
    #[error("not a YAML or JSON document: {0}")]
    Syntax(String),
    /// A field is missing, of the wrong type or unknown, a reference names
    /// nothing, or a feature Herald does not run is used.
    #[error("{path}: {message}")]
    Invalid {
        /// Where, e.g. `do[2].checkCredit.call` (empty: the document).
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl DefinitionError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Where the error is (empty for a syntax error or the whole document).
    pub fn path(&self) -> &str {
        match self {
            Self::Syntax(_) => "",
            Self::Invalid { path, .. } => path,
        }
    }
}

/// A definition that passed every deploy-time check.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The workflow.
    pub workflow: Workflow,
    /// The document as JSON (what `$workflow.definition` shows).
    pub source: Value,
    /// Every runtime expression, compiled, by the path of its field.
    pub expressions: Vec<Expression>,
}

impl Definition {
    /// Parses a DSL 1.0 document, YAML or JSON, and checks it.
    pub fn parse(text: &str) -> Result<Self, DefinitionError> {
        let source: Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text)
                .map_err(|error| DefinitionError::Syntax(error.to_string()))?
        } else {
            serde_norway::from_str(text)
                .map_err(|error| DefinitionError::Syntax(error.to_string()))?
        };
        let workflow: Workflow = nested(source.clone()).map_err(|error: serde_json::Error| {
            let (path, message) = split_marked(&error.to_string());
            DefinitionError::at(path, message)
        })?;
        check(&workflow)?;
        let expressions = Expressions::of(&workflow)?;
        Ok(Self {
            workflow,
            source,
            expressions,
        })
    }

    /// `namespace/name/version`, the key a definition is deployed under.
    pub fn key(&self) -> String {
        let document = &self.workflow.document;
        format!(
            "{}/{}/{}",
            document.namespace, document.name, document.version
        )
    }
}

/// The checks beyond shapes: versions, names, references, features.
fn check(workflow: &Workflow) -> Result<(), DefinitionError> {
    let document = &workflow.document;
    let supported = document
        .dsl
        .strip_prefix("1.0")
        .is_some_and(|rest| rest.is_empty() || rest.strip_prefix('.').is_some_and(is_number));
    if !supported {
        return Err(DefinitionError::at(
            "document.dsl",
            format!("DSL {:?} is not supported: Herald runs 1.0.x", document.dsl),
        ));
    }
    for (field, value) in [
        ("namespace", &document.namespace),
        ("name", &document.name),
        ("version", &document.version),
    ] {
        let valid = !value.is_empty()
            && value
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-._".contains(&byte));
        if !valid {
            return Err(DefinitionError::at(
                format!("document.{field}"),
                "must be non-empty letters, digits, `-`, `.` or `_`",
            ));
        }
    }
    if let Some(evaluate) = &workflow.evaluate {
        if evaluate
            .language
            .as_deref()
            .is_some_and(|language| language != "jq")
        {
            return Err(DefinitionError::at(
                "evaluate.language",
                "Herald evaluates jq only",
            ));
        }
        if let Some(mode) = &evaluate.mode
            && mode != "strict"
            && mode != "loose"
        {
            return Err(DefinitionError::at("evaluate.mode", "strict or loose"));
        }
    }
    let names = Names::of(workflow);
    if let Some(used) = &workflow.use_ {
        if used
            .extensions
            .as_ref()
            .is_some_and(|extensions| !extensions.is_empty())
        {
            return Err(DefinitionError::at(
                "use.extensions",
                "extensions are not supported",
            ));
        }
        if used
            .catalogs
            .as_ref()
            .is_some_and(|catalogs| !catalogs.is_empty())
        {
            return Err(DefinitionError::at(
                "use.catalogs",
                "catalogs are not supported",
            ));
        }
        for (name, function) in used.functions.iter().flatten() {
            check_task(
                function,
                &format!("use.functions.{name}"),
                &names,
                &HashSet::new(),
            )?;
        }
    }
    if let Some(timeout) = &workflow.timeout {
        names.timeout(timeout, "timeout")?;
    }
    if let Some(schedule) = &workflow.schedule {
        crate::schedule::Clock::of(schedule).map_err(|(field, message)| {
            DefinitionError::at(join_paths("schedule", field), message)
        })?;
    }
    if let Some(schedule) = &workflow.schedule
        && let Some(on) = &schedule.on
    {
        check_consumption(on, "schedule.on")?;
        if on.all.is_some() || on.until.is_some() {
            return Err(DefinitionError::at(
                "schedule.on",
                "schedule.on takes `one` or `any` here (an instance per matching event); \
                 `all` and `until` are not supported yet",
            ));
        }
    }
    check_list(&workflow.do_, "do", &names)
}

/// The arguments Herald's functions cannot do without.
fn check_builtin(
    name: &str,
    with: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), DefinitionError> {
    let required: &[&str] = if name == crate::run::herald::JOB {
        &["queue"]
    } else {
        &["topic", "stream"]
    };
    for field in required {
        if !with.contains_key(*field) {
            return Err(DefinitionError::at(path, format!("{name} takes `{field}`")));
        }
    }
    if name == crate::run::herald::APPEND {
        check_topic(with.get("topic"), &join_paths(path, "topic"))?;
        if with.contains_key("events") == with.contains_key("event") {
            return Err(DefinitionError::at(
                path,
                format!("{name} takes `events` (a list) or `event` (one), not both"),
            ));
        }
    }
    Ok(())
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// What `use` defines, for references.
struct Names<'a> {
    functions: HashSet<&'a str>,
    retries: HashSet<&'a str>,
    timeouts: HashSet<&'a str>,
    errors: HashSet<&'a str>,
}

impl<'a> Names<'a> {
    fn of(workflow: &'a Workflow) -> Self {
        fn keys_of<T>(map: Option<&BTreeMap<String, T>>) -> HashSet<&str> {
            map.into_iter()
                .flat_map(|map| map.keys().map(String::as_str))
                .collect()
        }
        let used = workflow.use_.as_ref();
        Self {
            functions: keys_of(used.and_then(|used| used.functions.as_ref())),
            retries: keys_of(used.and_then(|used| used.retries.as_ref())),
            timeouts: keys_of(used.and_then(|used| used.timeouts.as_ref())),
            errors: keys_of(used.and_then(|used| used.errors.as_ref())),
        }
    }

    fn timeout(&self, timeout: &TimeoutRef, path: &str) -> Result<(), DefinitionError> {
        match timeout {
            TimeoutRef::Named(name) if !self.timeouts.contains(name.as_str()) => Err(
                DefinitionError::at(path, format!("no timeout {name:?} under use.timeouts")),
            ),
            _ => Ok(()),
        }
    }
}

/// A task list: unique names, `then` targets in the list, each task.
fn check_list(list: &TaskList, path: &str, names: &Names<'_>) -> Result<(), DefinitionError> {
    let mut seen = HashSet::new();
    for (index, (name, _)) in list.0.iter().enumerate() {
        if !seen.insert(name.as_str()) {
            return Err(DefinitionError::at(
                format!("{path}[{index}].{name}"),
                "a task of this name is already in the list",
            ));
        }
    }
    if list.0.is_empty() {
        return Err(DefinitionError::at(
            path,
            "a task list needs at least one task",
        ));
    }
    for (index, (name, task)) in list.0.iter().enumerate() {
        check_task(task, &format!("{path}[{index}].{name}"), names, &seen)?;
    }
    Ok(())
}

fn check_task(
    task: &Task,
    path: &str,
    names: &Names<'_>,
    siblings: &HashSet<&str>,
) -> Result<(), DefinitionError> {
    let at = |field: &str| join_paths(path, field);
    if let Some(crate::dsl::FlowDirective::Goto(target)) = &task.common.then
        && !siblings.contains(target.as_str())
    {
        return Err(DefinitionError::at(
            at("then"),
            format!("no task {target:?} in this list to go to"),
        ));
    }
    if let Some(timeout) = &task.common.timeout {
        names.timeout(timeout, &at("timeout"))?;
    }
    match &task.kind {
        TaskKind::Call(Call::Http(http)) => {
            check_redirect(http.redirect, &at("with.redirect"))?;
            check_method(&http.method, &at("with.method"))?;
        }
        TaskKind::Call(Call::OpenApi(call)) => {
            check_redirect(call.redirect, &at("with.redirect"))?;
            let source = ["endpoint", "content"]
                .iter()
                .filter(|field| call.document.get(**field).is_some())
                .count();
            if !call.document.is_string() && source != 1 {
                return Err(DefinitionError::at(
                    at("with.document"),
                    "the OpenAPI document takes `endpoint` (its URL) or `content` (the document itself)",
                ));
            }
            if call.operation_id.is_empty() {
                return Err(DefinitionError::at(
                    at("with.operationId"),
                    "an operationId names the operation",
                ));
            }
        }
        TaskKind::Call(Call::Function { name, with }) => {
            if !names.functions.contains(name.as_str()) && crate::run::is_builtin(name) {
                return check_builtin(name, with, &at("with"));
            }
            if name.contains('@') {
                return Err(DefinitionError::at(
                    at("call"),
                    format!("{name:?} names a catalog function: catalogs are not supported"),
                ));
            }
            if !names.functions.contains(name.as_str()) {
                return Err(DefinitionError::at(
                    at("call"),
                    format!(
                        "{name:?} is not a call Herald knows (http, openapi, herald.job, herald.append) nor a function under use.functions"
                    ),
                ));
            }
        }
        TaskKind::Do(list) => check_list(list, &at("do"), names)?,
        TaskKind::Emit(emit) => {
            check_topic(emit.event.with.get("topic"), &at("emit.event.with.topic"))?;
            for attribute in ["source", "type"] {
                if !emit.event.with.contains_key(attribute) {
                    return Err(DefinitionError::at(
                        at("emit.event.with"),
                        format!("an emitted event needs `{attribute}`"),
                    ));
                }
            }
        }
        TaskKind::For(looping) => check_list(&looping.do_, &at("do"), names)?,
        TaskKind::Fork(fork) => check_list(&fork.branches, &at("fork.branches"), names)?,
        TaskKind::Listen(listen) => {
            if listen.foreach.is_some() {
                return Err(DefinitionError::at(
                    at("foreach"),
                    "listen.foreach is not supported yet: the listen's output is the array of events",
                ));
            }
            check_consumption(&listen.listen.to, &at("listen.to"))?;
        }
        TaskKind::Raise(raise) => {
            if let ErrorRef::Named(name) = &raise.error
                && !names.errors.contains(name.as_str())
            {
                return Err(DefinitionError::at(
                    at("raise.error"),
                    format!("no error {name:?} under use.errors"),
                ));
            }
        }
        TaskKind::Set(_) | TaskKind::Wait(_) => {}
        TaskKind::Switch(cases) => {
            if cases.is_empty() {
                return Err(DefinitionError::at(
                    at("switch"),
                    "a switch needs at least one case",
                ));
            }
            for (index, (case_name, case)) in cases.iter().enumerate() {
                if let crate::dsl::FlowDirective::Goto(target) = &case.then
                    && !siblings.contains(target.as_str())
                {
                    return Err(DefinitionError::at(
                        at(&format!("switch[{index}].{case_name}.then")),
                        format!("no task {target:?} in this list to go to"),
                    ));
                }
            }
        }
        TaskKind::Try(tried) => {
            check_list(&tried.try_, &at("try"), names)?;
            if let Some(RetryRef::Named(name)) = &tried.catch.retry
                && !names.retries.contains(name.as_str())
            {
                return Err(DefinitionError::at(
                    at("catch.retry"),
                    format!("no retry policy {name:?} under use.retries"),
                ));
            }
            if let Some(list) = &tried.catch.do_ {
                check_list(list, &at("catch.do"), names)?;
            }
        }
    }
    Ok(())
}

fn check_redirect(redirect: Option<bool>, path: &str) -> Result<(), DefinitionError> {
    if redirect == Some(true) {
        return Err(DefinitionError::at(
            path,
            "Herald's outbound client never follows redirects (a redirect could lead past the SSRF guard)",
        ));
    }
    Ok(())
}

fn check_method(method: &str, path: &str) -> Result<(), DefinitionError> {
    const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];
    if METHODS.contains(&method.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(DefinitionError::at(
            path,
            format!("{method:?} is not an HTTP method Herald sends"),
        ))
    }
}

fn check_consumption(
    consumption: &crate::dsl::EventConsumption,
    path: &str,
) -> Result<(), DefinitionError> {
    let strategies = [
        consumption.one.is_some(),
        consumption.any.is_some(),
        consumption.all.is_some(),
    ];
    if strategies.iter().filter(|present| **present).count() != 1 {
        return Err(DefinitionError::at(path, "exactly one of one, any, all"));
    }
    if consumption.until.is_some() && consumption.any.is_none() {
        return Err(DefinitionError::at(
            join_paths(path, "until"),
            "`until` goes with `any`",
        ));
    }
    match &consumption.until {
        Some(Value::Object(strategy)) => {
            let until: crate::dsl::EventConsumption =
                serde_json::from_value(Value::Object(strategy.clone())).map_err(|error| {
                    DefinitionError::at(join_paths(path, "until"), error.to_string())
                })?;
            if until.until.is_some() {
                return Err(DefinitionError::at(
                    join_paths(&join_paths(path, "until"), "until"),
                    "an `until` strategy has no `until` of its own",
                ));
            }
            check_consumption(&until, &join_paths(path, "until"))?;
        }
        Some(Value::Bool(_)) => {
            return Err(DefinitionError::at(
                join_paths(path, "until"),
                "`until` is an expression or a consumption strategy (`until: false`, listening for ever, goes with `foreach`, which Herald does not run)",
            ));
        }
        _ => {}
    }
    for (at, filter) in consumption.filters(path) {
        check_topic(
            filter.with.as_ref().and_then(|with| with.get("topic")),
            &join_paths(&at, "with.topic"),
        )?;
    }
    Ok(())
}

/// An event emitted or listened for names its Herald topic in `topic`: a
/// topic name, or an expression giving one.
fn check_topic(topic: Option<&Value>, path: &str) -> Result<(), DefinitionError> {
    match topic {
        Some(Value::String(text)) if expr::embedded(text).is_some() => Ok(()),
        Some(Value::String(text)) => herald_types::TopicName::try_from(text.as_str())
            .map(|_| ())
            .map_err(|error| DefinitionError::at(path, error.to_string())),
        Some(_) => Err(DefinitionError::at(path, "a topic name (a string)")),
        None => Err(DefinitionError::at(
            path,
            "Herald needs the topic of the events: set `topic` (a Herald topic name)",
        )),
    }
}

/// Finds and compiles every runtime expression of a workflow, with the
/// variables in scope where it is written. Fields whose type is an
/// expression (`if`, `when`, `for.in`, `while`, `set` as a string, …) take
/// bare jq or `${ … }`; strings elsewhere (maps of `set`, `with`, `body`,
/// `emit.event.with`, …) are expressions only as a whole `${ … }`.
struct Expressions {
    variables: Vec<String>,
    found: Vec<Expression>,
}

impl Expressions {
    fn of(workflow: &Workflow) -> Result<Vec<Expression>, DefinitionError> {
        let mut walker = Self {
            variables: ARGUMENTS.iter().map(|name| (*name).to_owned()).collect(),
            found: Vec::new(),
        };
        walker.input(workflow.input.as_ref(), "input")?;
        walker.output(workflow.output.as_ref(), "output")?;
        if let Some(used) = &workflow.use_ {
            for (name, function) in used.functions.iter().flatten() {
                walker.task(function, &format!("use.functions.{name}"))?;
            }
            for (name, retry) in used.retries.iter().flatten() {
                walker.retry(retry, &format!("use.retries.{name}"))?;
            }
        }
        if let Some(on) = workflow
            .schedule
            .as_ref()
            .and_then(|schedule| schedule.on.as_ref())
        {
            walker.consumption(on, "schedule.on")?;
        }
        walker.list(&workflow.do_, "do")?;
        Ok(walker.found)
    }

    fn compile(&mut self, path: String, code: &str) -> Result<(), DefinitionError> {
        let filter = expr::compile(code, &self.variables)
            .map_err(|message| DefinitionError::at(path.clone(), message))?;
        self.found.push(Expression {
            path,
            code: code.to_owned(),
            variables: self.variables.clone(),
            filter: std::sync::Arc::new(filter),
        });
        Ok(())
    }

    /// A field whose type is an expression.
    fn field(&mut self, text: Option<&String>, path: String) -> Result<(), DefinitionError> {
        match text {
            Some(text) => self.compile(path, expr::expression_field(text)),
            None => Ok(()),
        }
    }

    /// A value: each string that is a whole `${ … }`, at any depth.
    fn value(&mut self, value: &Value, path: &str) -> Result<(), DefinitionError> {
        match value {
            Value::String(text) => match expr::embedded(text) {
                Some(code) => self.compile(path.to_owned(), code),
                None => Ok(()),
            },
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(index, item)| self.value(item, &format!("{path}[{index}]"))),
            Value::Object(members) => members
                .iter()
                .try_for_each(|(name, member)| self.value(member, &join_paths(path, name))),
            _ => Ok(()),
        }
    }

    /// `input.from` / `output.as` / `export.as`: an expression, or an
    /// object holding some.
    fn transform(&mut self, value: Option<&Value>, path: String) -> Result<(), DefinitionError> {
        match value {
            Some(Value::String(text)) => self.compile(path, expr::expression_field(text)),
            Some(other) => self.value(other, &path),
            None => Ok(()),
        }
    }

    fn input(&mut self, input: Option<&Input>, path: &str) -> Result<(), DefinitionError> {
        self.transform(
            input.and_then(|input| input.from.as_ref()),
            join_paths(path, "from"),
        )
    }

    fn output(&mut self, output: Option<&Output>, path: &str) -> Result<(), DefinitionError> {
        self.transform(
            output.and_then(|output| output.as_.as_ref()),
            join_paths(path, "as"),
        )
    }

    fn list(&mut self, list: &TaskList, path: &str) -> Result<(), DefinitionError> {
        for (index, (name, task)) in list.0.iter().enumerate() {
            self.task(task, &format!("{path}[{index}].{name}"))?;
        }
        Ok(())
    }

    /// Runs `inside` with `names` (without `$`) in scope.
    fn scoped(
        &mut self,
        names: &[&str],
        inside: impl FnOnce(&mut Self) -> Result<(), DefinitionError>,
    ) -> Result<(), DefinitionError> {
        let before = self.variables.len();
        self.variables
            .extend(names.iter().map(|name| format!("${name}")));
        let result = inside(self);
        self.variables.truncate(before);
        result
    }

    fn retry(
        &mut self,
        retry: &crate::dsl::RetryPolicy,
        path: &str,
    ) -> Result<(), DefinitionError> {
        self.field(retry.when.as_ref(), join_paths(path, "when"))?;
        self.field(retry.except_when.as_ref(), join_paths(path, "exceptWhen"))
    }

    fn consumption(
        &mut self,
        consumption: &crate::dsl::EventConsumption,
        path: &str,
    ) -> Result<(), DefinitionError> {
        for (at, filter) in consumption.filters(path) {
            if let Some(with) = &filter.with {
                self.value(&Value::Object(with.clone()), &join_paths(&at, "with"))?;
            }
            for (name, correlation) in filter.correlate.iter().flatten() {
                let here = join_paths(&join_paths(&at, "correlate"), name);
                self.field(Some(&correlation.from), join_paths(&here, "from"))?;
                self.field(correlation.expect.as_ref(), join_paths(&here, "expect"))?;
            }
        }
        match &consumption.until {
            Some(Value::String(text)) => {
                self.compile(join_paths(path, "until"), expr::expression_field(text))
            }
            Some(Value::Object(strategy)) => {
                let strategy: crate::dsl::EventConsumption =
                    serde_json::from_value(Value::Object(strategy.clone())).map_err(|error| {
                        DefinitionError::at(join_paths(path, "until"), error.to_string())
                    })?;
                self.consumption(&strategy, &join_paths(path, "until"))
            }
            _ => Ok(()),
        }
    }

    fn task(&mut self, task: &Task, path: &str) -> Result<(), DefinitionError> {
        let at = |field: &str| join_paths(path, field);
        let common = &task.common;
        self.field(common.if_.as_ref(), at("if"))?;
        self.input(common.input.as_ref(), &at("input"))?;
        match &task.kind {
            TaskKind::Call(Call::Http(http)) => {
                let endpoint = match &http.endpoint {
                    Endpoint::Uri(uri) => uri,
                    Endpoint::Object(object) => &object.uri,
                };
                self.value(&Value::String(endpoint.clone()), &at("with.endpoint"))?;
                for (field, value) in [
                    ("headers", &http.headers),
                    ("body", &http.body),
                    ("query", &http.query),
                ] {
                    match value {
                        // An expression giving the whole map.
                        Some(Value::String(text)) if field != "body" => {
                            self.compile(
                                at(&format!("with.{field}")),
                                expr::expression_field(text),
                            )?;
                        }
                        Some(value) => self.value(value, &at(&format!("with.{field}")))?,
                        None => {}
                    }
                }
            }
            TaskKind::Call(Call::OpenApi(openapi)) => {
                self.value(&openapi.document, &at("with.document"))?;
                if let Some(parameters) = &openapi.parameters {
                    self.value(&Value::Object(parameters.clone()), &at("with.parameters"))?;
                }
            }
            TaskKind::Call(Call::Function { with, .. }) => {
                self.value(&Value::Object(with.clone()), &at("with"))?;
            }
            TaskKind::Do(list) => self.list(list, &at("do"))?,
            TaskKind::Emit(emit) => {
                self.value(
                    &Value::Object(emit.event.with.clone()),
                    &at("emit.event.with"),
                )?;
            }
            TaskKind::For(looping) => {
                self.field(Some(&looping.for_.in_), at("for.in"))?;
                let each = looping.for_.each.as_deref().unwrap_or("item");
                let index = looping.for_.at.as_deref().unwrap_or("index");
                self.scoped(&[each, index], |walker| {
                    walker.field(looping.while_.as_ref(), at("while"))?;
                    walker.list(&looping.do_, &at("do"))
                })?;
            }
            TaskKind::Fork(fork) => self.list(&fork.branches, &at("fork.branches"))?,
            TaskKind::Listen(listen) => {
                self.consumption(&listen.listen.to, &at("listen.to"))?;
                if let Some(foreach) = &listen.foreach {
                    self.value(foreach, &at("foreach"))?;
                }
            }
            TaskKind::Raise(raise) => {
                if let ErrorRef::Inline(error) = &raise.error {
                    let error = serde_json::json!({
                        "status": error.status, "title": error.title, "detail": error.detail,
                        "instance": error.instance,
                    });
                    self.value(&error, &at("raise.error"))?;
                }
            }
            TaskKind::Set(Set::Map(map)) => self.value(&Value::Object(map.clone()), &at("set"))?,
            TaskKind::Set(Set::Expr(text)) => {
                self.compile(at("set"), expr::expression_field(text))?;
            }
            TaskKind::Switch(cases) => {
                for (index, (name, case)) in cases.iter().enumerate() {
                    self.field(
                        case.when.as_ref(),
                        at(&format!("switch[{index}].{name}.when")),
                    )?;
                }
            }
            TaskKind::Try(tried) => {
                self.list(&tried.try_, &at("try"))?;
                let catch = &tried.catch;
                let caught = catch.as_.as_deref().unwrap_or("error");
                self.scoped(&[caught], |walker| {
                    walker.field(catch.when.as_ref(), at("catch.when"))?;
                    walker.field(catch.except_when.as_ref(), at("catch.exceptWhen"))?;
                    if let Some(RetryRef::Inline(retry)) = &catch.retry {
                        walker.retry(retry, &at("catch.retry"))?;
                    }
                    if let Some(list) = &catch.do_ {
                        walker.list(list, &at("catch.do"))?;
                    }
                    Ok(())
                })?;
            }
            TaskKind::Wait(_) => {}
        }
        self.output(common.output.as_ref(), &at("output"))?;
        self.output(common.export.as_ref(), &at("export"))
    }
}

#[cfg(test)]
mod tests;
