//! Running a definition's compiled expressions: each is found by the path
//! of its field (the paths [`crate::definition`] compiled them under),
//! given the DSL's runtime arguments and the variables of the scopes around
//! it, and run on its input. A failure is the DSL's `…/errors/expression`
//! (400).

use std::collections::HashMap;
use std::sync::Arc;

use jaq_core::{Ctx, Vars, unwrap_valr};
use jaq_json::Val;
use serde_json::{Map, Value};

use crate::definition::Definition;
use crate::dsl::join_paths;
use crate::error::WorkflowError;
use crate::expr::{self, Data, Expression};

/// A deployed definition ready to run: its expressions by path.
#[derive(Debug)]
pub struct Compiled {
    /// The definition.
    pub definition: Definition,
    by_path: HashMap<String, Expression>,
}

impl Compiled {
    /// Indexes `definition`'s expressions.
    #[must_use]
    pub fn new(definition: Definition) -> Arc<Self> {
        let by_path = definition
            .expressions
            .iter()
            .map(|expression| (expression.path.clone(), expression.clone()))
            .collect();
        Arc::new(Self {
            definition,
            by_path,
        })
    }

    fn expression(&self, path: &str) -> Result<&Expression, WorkflowError> {
        self.by_path.get(path).ok_or_else(|| {
            WorkflowError::runtime(format!("no compiled expression at {path} (a Herald bug)"))
        })
    }

    /// Runs the expression of the field at `path` on `on`; its first output
    /// (`null` when it has none).
    pub fn eval(&self, path: &str, on: &Value, scope: &Scope) -> Result<Value, WorkflowError> {
        let expression = self.expression(path)?;
        run(expression, on, scope)
    }

    /// Whether the expression at `path` holds on `on` (jq truthiness: all
    /// but `false` and `null`).
    pub fn holds(&self, path: &str, on: &Value, scope: &Scope) -> Result<bool, WorkflowError> {
        Ok(!matches!(
            self.eval(path, on, scope)?,
            Value::Null | Value::Bool(false)
        ))
    }

    /// A value whose strings may be whole `${ … }` expressions, at any depth,
    /// with each expression run on `on`.
    pub fn template(
        &self,
        value: &Value,
        path: &str,
        on: &Value,
        scope: &Scope,
    ) -> Result<Value, WorkflowError> {
        Ok(match value {
            Value::String(text) => match expr::embedded(text) {
                Some(_) => self.eval(path, on, scope)?,
                None => value.clone(),
            },
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        self.template(item, &format!("{path}[{index}]"), on, scope)
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(name, member)| {
                        Ok((
                            name.clone(),
                            self.template(member, &join_paths(path, name), on, scope)?,
                        ))
                    })
                    .collect::<Result<Map<String, Value>, WorkflowError>>()?,
            ),
            other => other.clone(),
        })
    }

    /// `input.from` / `output.as` / `export.as` at `path`: an expression
    /// (a string), or a template.
    pub fn transform(
        &self,
        value: &Value,
        path: &str,
        on: &Value,
        scope: &Scope,
    ) -> Result<Value, WorkflowError> {
        match value {
            Value::String(_) => self.eval(path, on, scope),
            other => self.template(other, path, on, scope),
        }
    }
}

/// The values an expression may read: the DSL's runtime arguments
/// (`$input`, `$context`, …) and the variables of enclosing scopes (`for`'s
/// `each`/`at`, `catch`'s `as`), innermost last.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// By name, with the `$`.
    pub variables: Vec<(String, Value)>,
}

impl Scope {
    /// This scope with `name` (without `$`) bound to `value`.
    #[must_use]
    pub fn with(&self, name: &str, value: Value) -> Self {
        let mut variables = self.variables.clone();
        variables.push((format!("${name}"), value));
        Self { variables }
    }

    /// This scope with the runtime argument `name` (with `$`) set.
    pub fn set(&mut self, name: &str, value: Value) {
        if let Some(slot) = self
            .variables
            .iter_mut()
            .rev()
            .find(|(bound, _)| bound == name)
        {
            slot.1 = value;
        } else {
            self.variables.push((name.to_owned(), value));
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.variables
            .iter()
            .rev()
            .find(|(bound, _)| bound == name)
            .map(|(_, value)| value)
    }
}

fn run(expression: &Expression, on: &Value, scope: &Scope) -> Result<Value, WorkflowError> {
    let fail = |message: String| {
        WorkflowError::expression(format!(
            "{} (`{}`): {message}",
            expression.path, expression.code
        ))
    };
    let to_val = |value: &Value| -> Result<Val, WorkflowError> {
        serde_json::from_value(value.clone()).map_err(|error| fail(error.to_string()))
    };
    let values = expression
        .variables
        .iter()
        .map(|name| to_val(scope.get(name).unwrap_or(&Value::Null)))
        .collect::<Result<Vec<Val>, _>>()?;
    let input = to_val(on)?;
    let filter = &expression.filter;
    let ctx = Ctx::<Data>::new(&filter.lut, Vars::new(values));
    let first = filter.id.run((ctx, input)).map(unwrap_valr).next();
    match first {
        None => Ok(Value::Null),
        Some(Err(error)) => Err(fail(error.to_string())),
        Some(Ok(value)) => from_val(&value).map_err(fail),
    }
}

/// A jq value as JSON: non-finite numbers and byte strings have no JSON
/// form and fail.
fn from_val(value: &Val) -> Result<Value, String> {
    let text = value.to_string();
    serde_json::from_str(&text).map_err(|_| {
        let shown: String = text.chars().take(60).collect();
        format!("the result {shown} is not JSON (NaN, infinity or bytes)")
    })
}
