//! Runtime expressions: jq, through jaq, compiled once per definition at
//! deploy time (a syntax error or an unknown variable or function is a
//! deploy error naming the field), run many times.
//!
//! jaq's standard library is available except `env` (the server's
//! environment is not the workflow's business); `input`/`inputs` do not
//! compile (no input stream). Variables are the DSL's runtime arguments
//! ([`ARGUMENTS`]) and those a scope adds (`for`'s `each`/`at`, `catch`'s
//! `as`).

use std::fmt;
use std::sync::Arc;

use jaq_core::compile::{self, Filter, Undefined};
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{Compiler, Native, data};
use jaq_json::Val;

/// The data jaq runs on.
pub type Data = data::JustLut<Val>;

/// A compiled filter (owned, `Send + Sync`).
pub type JqFilter = Filter<Native<Data>>;

/// The runtime arguments every expression may read.
pub const ARGUMENTS: [&str; 8] = [
    "$input",
    "$output",
    "$context",
    "$task",
    "$workflow",
    "$runtime",
    "$secrets",
    "$authorization",
];

/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 16 * 1024;

/// A compiled expression and where it came from.
#[derive(Clone)]
pub struct Expression {
    /// The field it is written in, e.g. `do[0].classify.if`.
    pub path: String,
    /// The jq text (without `${ }`).
    pub code: String,
    /// The variables it was compiled with, in the order their values are
    /// given when it runs.
    pub variables: Vec<String>,
    /// The filter.
    pub filter: Arc<JqFilter>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Expression")
            .field("path", &self.path)
            .field("code", &self.code)
            .field("variables", &self.variables)
            .finish_non_exhaustive()
    }
}

/// The jq text of a field whose type is an expression: `${ … }` unwrapped,
/// or the whole text (the DSL allows a bare expression there).
pub fn expression_field(text: &str) -> &str {
    embedded(text).unwrap_or(text)
}

/// The jq text of a string inside a map or a plain-string field: only
/// `${ … }` is an expression; `None` for a literal.
pub fn embedded(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    trimmed
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .map(str::trim)
}

/// Compiles `code` with `variables` (each starting with `$`).
pub fn compile(code: &str, variables: &[String]) -> Result<JqFilter, String> {
    if code.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "the expression is {} bytes, over the limit of {MAX_EXPRESSION_BYTES}",
            code.len()
        ));
    }
    if code.trim().is_empty() {
        return Err("an empty expression".to_owned());
    }
    let arena = Arena::default();
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .map_err(|errors| describe_load(&errors))?;
    let funs = jaq_core::funs()
        .chain(jaq_std::funs().filter(|(name, _, _)| *name != "env"))
        .chain(jaq_json::funs());
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(variables.iter().map(String::as_str))
        .compile(modules)
        .map_err(|errors| describe_compile(&errors))
}

fn describe_load(errors: &load::Errors<&str, ()>) -> String {
    let mut described = Vec::new();
    for (_, error) in errors {
        match error {
            load::Error::Io(failures) => {
                described.extend(failures.iter().map(|(name, why)| format!("{name}: {why}")));
            }
            load::Error::Lex(failures) => {
                described.extend(failures.iter().map(|(expect, rest)| {
                    format!("expected {} at {}", expect.as_str(), near(rest))
                }));
            }
            load::Error::Parse(failures) => {
                described.extend(failures.iter().map(|(expect, token)| {
                    format!("expected {} at {}", expect.as_str(), near(token))
                }));
            }
        }
    }
    format!("jq syntax: {}", described.join("; "))
}

fn describe_compile(errors: &compile::Errors<&str, ()>) -> String {
    let described: Vec<String> = errors
        .iter()
        .flat_map(|(_, errors)| errors)
        .map(|(name, undefined)| match undefined {
            Undefined::Var => format!(
                "undefined variable {name} (variables here: the DSL's $input, $output, \
                 $context, $task, $workflow, $runtime, $secrets, $authorization, and the \
                 enclosing for's and catch's names)"
            ),
            other => format!("undefined {} {name}", other.as_str()),
        })
        .collect();
    described.join("; ")
}

/// Where an error is: the start of what is left, or the end.
fn near(rest: &str) -> String {
    let snippet: String = rest.chars().take(20).collect();
    if snippet.is_empty() {
        "the end".to_owned()
    } else {
        format!("{snippet:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jaq_core::{Ctx, Vars, unwrap_valr};

    fn variables() -> Vec<String> {
        ARGUMENTS.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn given_an_expression_when_compiled_should_run_with_its_variables() {
        let filter = compile("{ total: (.items | add), who: $input.name }", &variables()).unwrap();
        let input: Val = serde_json::from_value(serde_json::json!({"items": [1, 2, 3]})).unwrap();
        let name: Val = serde_json::from_value(serde_json::json!({"name": "ada"})).unwrap();
        let values = std::iter::repeat_n(Val::Null, ARGUMENTS.len())
            .enumerate()
            .map(|(index, null)| if index == 0 { name.clone() } else { null });
        let ctx = Ctx::<Data>::new(&filter.lut, Vars::new(values));
        let outputs: Vec<Val> = filter
            .id
            .run((ctx, input))
            .map(unwrap_valr)
            .collect::<Result<_, _>>()
            .unwrap();
        let text: Vec<String> = outputs.iter().map(ToString::to_string).collect();
        assert_eq!(text, [r#"{"total":6,"who":"ada"}"#]);
    }

    #[test]
    fn given_broken_expressions_when_compiled_should_say_what_is_wrong() {
        for (code, needle) in [
            (".a |", "expected term"),
            ("{ a: 1", "closing brace"),
            ("$nope + 1", "undefined variable $nope"),
            ("nosuchfunction(1)", "undefined filter nosuchfunction"),
            ("env", "undefined filter env"),
            ("$ENV", "undefined variable"),
            ("input", "undefined filter input"),
            ("   ", "empty"),
        ] {
            let error = compile(code, &variables()).map(|_| ()).unwrap_err();
            assert!(error.contains(needle), "{code}: {error}");
        }
        let long = ".".repeat(MAX_EXPRESSION_BYTES + 1);
        assert!(compile(&long, &variables()).is_err());
    }

    #[test]
    fn given_expression_text_should_unwrap_only_whole_dollar_braces() {
        assert_eq!(expression_field("${ .a }"), ".a");
        assert_eq!(expression_field(".a == 1"), ".a == 1");
        assert_eq!(embedded("  ${ { a: .b } }  "), Some("{ a: .b }"));
        assert_eq!(embedded("price: ${x}"), None);
        assert_eq!(embedded("plain"), None);
    }
}
