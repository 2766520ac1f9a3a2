//! A deployable definition: a document parsed ([`crate::dsl`]) and checked,
//! or refused with the path of what is wrong.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::dsl::{
    Call, ErrorRef, RetryRef, Task, TaskKind, TaskList, TimeoutRef, Workflow, join_paths, nested,
    split_marked,
};

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
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The workflow.
    pub workflow: Workflow,
    /// The document as JSON (what `$workflow.definition` shows).
    pub source: Value,
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
        Ok(Self { workflow, source })
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
    if let Some(schedule) = &workflow.schedule
        && let Some(on) = &schedule.on
    {
        check_consumption(on, "schedule.on")?;
    }
    check_list(&workflow.do_, "do", &names)
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
        TaskKind::Call(Call::OpenApi(openapi)) => {
            check_redirect(openapi.redirect, &at("with.redirect"))?;
            if openapi.operation_id.is_empty() {
                return Err(DefinitionError::at(
                    at("with.operationId"),
                    "must not be empty",
                ));
            }
        }
        TaskKind::Call(Call::Function { name, .. }) => {
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
                        "{name:?} is not a call Herald knows (http, openapi) nor a function under use.functions"
                    ),
                ));
            }
        }
        TaskKind::Do(list) => check_list(list, &at("do"), names)?,
        TaskKind::Emit(emit) => {
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
        TaskKind::Listen(listen) => check_consumption(&listen.listen.to, &at("listen.to"))?,
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
    Ok(())
}

#[cfg(test)]
mod tests;
