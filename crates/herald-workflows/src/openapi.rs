//! `call: openapi`: an OpenAPI document (3.0, 3.1, or Swagger 2.0), an
//! `operationId` and the call's evaluated `parameters` turned into the HTTP
//! request the operation makes ([`request`]). Pure: the caller loads the
//! document ([`parse_document`] reads its bytes) and sends the request.
//!
//! - The base URL is the first server of the operation (its own `servers`,
//!   else its path's, else the document's; a server's `{variables}` take
//!   their `default`); a relative server URL, or none (which means `/`),
//!   resolves against where the document was loaded from. Swagger 2.0:
//!   `schemes` (the first `http`/`https` one; else the document's scheme,
//!   else `https`) + `host` (else the document's) + `basePath`.
//! - The declared parameters (the path's, overridden by the operation's on
//!   the same `name` and `in`; local `$ref`s followed) take their value by
//!   name: `path` fills `{name}` (percent-encoded as a segment), `query`
//!   appends pairs (arrays as repeated pairs by default, per `style` /
//!   `explode`, or 2.0's `collectionFormat`), `header` sets a header,
//!   `cookie` joins `name=value`s into one `cookie` header. A declared
//!   parameter whose value is missing or `null` is left out, or refused
//!   when it is required (path parameters always are).
//! - The body (OpenAPI 3, when the operation has a `requestBody`): the
//!   parameter `body` if given, else the parameters no declared parameter
//!   took, as an object; Swagger 2.0: the `in: body` parameter's value (by
//!   its name, or `body`). Parameters neither declared nor taken by a body
//!   are ignored.
//!
//! A broken document, an unknown operation or a missing required parameter
//! is a validation error (400).

use serde_json::{Map, Value};
use url::Url;

use crate::error::WorkflowError;

/// How many `$ref`s in a row are followed before giving up (a cycle).
const MAX_REF_DEPTH: usize = 32;

/// The operation methods of a path item, in the order they are searched.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Parses an OpenAPI document's bytes: JSON (text starting with `{`), or
/// YAML. Anything but an object is refused (a validation error).
pub fn parse_document(bytes: &[u8]) -> Result<Value, WorkflowError> {
    let text = std::str::from_utf8(bytes).map_err(|error| {
        WorkflowError::validation(format!("the OpenAPI document is not UTF-8: {error}"))
    })?;
    let text = text.trim_start_matches('\u{feff}');
    let document: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|error| {
            WorkflowError::validation(format!("the OpenAPI document is not JSON: {error}"))
        })?
    } else {
        serde_norway::from_str(text).map_err(|error| {
            WorkflowError::validation(format!("the OpenAPI document is not YAML: {error}"))
        })?
    };
    if document.is_object() {
        Ok(document)
    } else {
        Err(WorkflowError::validation(
            "the OpenAPI document is not an object",
        ))
    }
}

/// OpenAPI documents loaded lately, by URL: a workflow calling one API
/// many times loads its document once a minute at most.
#[derive(Debug, Default)]
pub struct Documents {
    loaded: std::sync::Mutex<
        std::collections::HashMap<String, (std::time::Instant, std::sync::Arc<Value>)>,
    >,
}

impl Documents {
    /// How long a loaded document is used before it is loaded again.
    pub const FRESH: std::time::Duration = std::time::Duration::from_secs(60);
    /// The most documents kept.
    pub const MAX: usize = 256;

    /// The document loaded from `url` less than [`Self::FRESH`] ago.
    #[must_use]
    pub fn get(&self, url: &Url) -> Option<std::sync::Arc<Value>> {
        let loaded = self.loaded.lock().ok()?;
        loaded
            .get(url.as_str())
            .filter(|(at, _)| at.elapsed() < Self::FRESH)
            .map(|(_, document)| std::sync::Arc::clone(document))
    }

    /// Keeps `document`, loaded from `url` now.
    pub fn put(&self, url: &Url, document: std::sync::Arc<Value>) {
        let Ok(mut loaded) = self.loaded.lock() else {
            return;
        };
        if loaded.len() >= Self::MAX {
            loaded.retain(|_, (at, _)| at.elapsed() < Self::FRESH);
            if loaded.len() >= Self::MAX {
                loaded.clear();
            }
        }
        loaded.insert(
            url.as_str().to_owned(),
            (std::time::Instant::now(), document),
        );
    }
}

/// The request an operation makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, upper case (`GET`).
    pub method: String,
    /// Absolute: the server's URL, the operation's path with its path
    /// parameters filled (percent-encoded), its query parameters appended.
    pub url: Url,
    /// Header parameters by lower-case name (values as text), the cookie
    /// parameters folded into one `cookie` header, and `content-type` (a
    /// JSON media type) when there is a body.
    pub headers: Map<String, Value>,
    /// The body, to send as JSON.
    pub body: Option<Value>,
}

/// Finds `operation_id` in `document` and builds its request from
/// `parameters` (name → value, already evaluated JSON).
///
/// `document_url` is where the document was loaded from: relative
/// `servers[].url` (and a missing `servers`, meaning `/`; Swagger 2.0's
/// missing `host` or `schemes`) resolve against it. `None` for an inline
/// document, which then needs an absolute server.
pub fn request(
    document: &Value,
    document_url: Option<&Url>,
    operation_id: &str,
    parameters: &Map<String, Value>,
) -> Result<Request, WorkflowError> {
    let fail = |detail: String| {
        WorkflowError::validation(format!("OpenAPI operation {operation_id:?}: {detail}"))
    };
    let swagger = document.get("swagger").is_some();
    let found = find(document, operation_id)?;
    let base = if swagger {
        swagger_base(document, document_url)
    } else {
        server_base(document, &found, document_url)
    }
    .map_err(fail)?;
    let declared = declared_parameters(document, &found).map_err(fail)?;
    let mut built = Built::default();
    for parameter in &declared {
        built.add(parameter, parameters, swagger).map_err(fail)?;
    }
    let path = fill_path(found.path, &built.path, parameters, &mut built.taken).map_err(fail)?;
    let mut body = built.body.take();
    if !swagger && let Some(request_body) = found.operation.get("requestBody") {
        let request_body = resolve(document, request_body).map_err(fail)?;
        body = body_of(parameters, &built.taken);
        if body.is_none() && request_body.get("required") == Some(&Value::Bool(true)) {
            return Err(fail(
                "its request body is required and no parameter gives it".into(),
            ));
        }
        built.content_type = json_media_type(request_body);
    }

    let mut url = base;
    url.set_fragment(None);
    let joined = format!("{}{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    if !built.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in &built.query {
            pairs.append_pair(name, value);
        }
    }
    let mut headers = built.headers;
    if !built.cookies.is_empty() {
        headers.insert("cookie".into(), Value::String(built.cookies.join("; ")));
    }
    if body.is_some() {
        headers.insert(
            "content-type".into(),
            Value::String(built.content_type.unwrap_or_else(|| JSON.to_owned())),
        );
    }
    Ok(Request {
        method: found.method.to_ascii_uppercase(),
        url,
        headers,
        body,
    })
}

const JSON: &str = "application/json";

/// An operation found by its id.
struct Found<'a> {
    path: &'a str,
    method: &'a str,
    item: &'a Value,
    operation: &'a Value,
}

fn find<'a>(document: &'a Value, operation_id: &str) -> Result<Found<'a>, WorkflowError> {
    let unknown = || {
        WorkflowError::validation(format!(
            "the OpenAPI document has no operation {operation_id:?}"
        ))
    };
    let paths = document
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(unknown)?;
    for (path, item) in paths {
        let item = resolve(document, item).map_err(|detail| {
            WorkflowError::validation(format!("OpenAPI path {path:?}: {detail}"))
        })?;
        for method in METHODS {
            if let Some(operation) = item.get(method)
                && operation.get("operationId").and_then(Value::as_str) == Some(operation_id)
            {
                return Ok(Found {
                    path,
                    method,
                    item,
                    operation,
                });
            }
        }
    }
    Err(unknown())
}

/// `value`, or what its local `$ref` (`#/…`) points at, followed up to
/// [`MAX_REF_DEPTH`] times.
fn resolve<'a>(document: &'a Value, mut value: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..MAX_REF_DEPTH {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return Ok(value);
        };
        let Some(pointer) = reference.strip_prefix('#') else {
            return Err(format!("$ref {reference:?} is not local (#/…)"));
        };
        value = document
            .pointer(pointer)
            .ok_or_else(|| format!("$ref {reference:?} points at nothing"))?;
    }
    Err(format!(
        "more than {MAX_REF_DEPTH} $refs in a row (a cycle?)"
    ))
}

/// OpenAPI 3: the first server of the operation, its path or the document.
fn server_base(
    document: &Value,
    found: &Found<'_>,
    document_url: Option<&Url>,
) -> Result<Url, String> {
    let servers = [found.operation, found.item, document]
        .into_iter()
        .filter_map(|holder| holder.get("servers").and_then(Value::as_array))
        .find(|servers| !servers.is_empty());
    let Some(server) = servers.and_then(|servers| servers.first()) else {
        return absolute("/", document_url);
    };
    let template = server
        .get("url")
        .and_then(Value::as_str)
        .ok_or("its server has no url")?;
    let variables = server.get("variables");
    let mut url = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        url.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("server url {template:?} has an unclosed {{"))?;
        let name = &after[..close];
        let default = variables
            .and_then(|variables| variables.get(name))
            .and_then(|variable| variable.get("default"))
            .ok_or_else(|| format!("server variable {name:?} has no default"))?;
        url.push_str(&plain(default));
        rest = &after[close + 1..];
    }
    url.push_str(rest);
    absolute(&url, document_url)
}

/// Swagger 2.0: `schemes` + `host` + `basePath`, the document's scheme and
/// host by default.
fn swagger_base(document: &Value, document_url: Option<&Url>) -> Result<Url, String> {
    let web = |scheme: &str| scheme == "http" || scheme == "https";
    let scheme = document
        .get("schemes")
        .and_then(Value::as_array)
        .and_then(|schemes| {
            schemes
                .iter()
                .filter_map(Value::as_str)
                .find(|scheme| web(scheme))
        })
        .or_else(|| document_url.map(Url::scheme).filter(|scheme| web(scheme)))
        .unwrap_or("https");
    let host = match document.get("host").and_then(Value::as_str) {
        Some(host) => host.to_owned(),
        None => {
            let url = document_url.ok_or("the document has no host and no URL")?;
            let host = url.host_str().ok_or("the document has no host")?;
            match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            }
        }
    };
    let base_path = document
        .get("basePath")
        .and_then(Value::as_str)
        .unwrap_or("/");
    let slash = if base_path.starts_with('/') { "" } else { "/" };
    let url = format!("{scheme}://{host}{slash}{base_path}");
    Url::parse(&url).map_err(|error| format!("{url:?} is not a URL: {error}"))
}

/// `url`, resolved against `document_url` when relative.
fn absolute(url: &str, document_url: Option<&Url>) -> Result<Url, String> {
    match Url::parse(url) {
        Ok(url) => Ok(url),
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            let base = document_url.ok_or_else(|| {
                format!("the server url {url:?} is relative and the document has no URL")
            })?;
            base.join(url)
                .map_err(|error| format!("server url {url:?}: {error}"))
        }
        Err(error) => Err(format!("server url {url:?}: {error}")),
    }
}

/// The path item's parameters, then the operation's (replacing one of the
/// same `name` and `in`), `$ref`s followed.
fn declared_parameters<'a>(
    document: &'a Value,
    found: &Found<'a>,
) -> Result<Vec<&'a Value>, String> {
    let mut declared: Vec<&Value> = Vec::new();
    let key = |parameter: &Value| {
        (
            parameter
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            parameter
                .get("in")
                .and_then(Value::as_str)
                .map(str::to_owned),
        )
    };
    for holder in [found.item, found.operation] {
        let Some(list) = holder.get("parameters").and_then(Value::as_array) else {
            continue;
        };
        for parameter in list {
            let parameter = resolve(document, parameter)?;
            let this = key(parameter);
            match declared.iter().position(|other| key(other) == this) {
                Some(index) => declared[index] = parameter,
                None => declared.push(parameter),
            }
        }
    }
    Ok(declared)
}

/// The request's parts, as the declared parameters fill them.
#[derive(Default)]
struct Built {
    /// Path parameters by name, encoded.
    path: Vec<(String, String)>,
    query: Vec<(String, String)>,
    headers: Map<String, Value>,
    cookies: Vec<String>,
    /// Swagger 2.0's `in: body`.
    body: Option<Value>,
    content_type: Option<String>,
    /// The names of the parameters used.
    taken: Vec<String>,
}

impl Built {
    fn add(
        &mut self,
        parameter: &Value,
        parameters: &Map<String, Value>,
        swagger: bool,
    ) -> Result<(), String> {
        let name = parameter
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a parameter has no name")?;
        let location = parameter
            .get("in")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("parameter {name:?} has no `in`"))?;
        let required = location == "path" || parameter.get("required") == Some(&Value::Bool(true));
        let mut value = parameters.get(name).filter(|value| !value.is_null());
        let mut taken = name;
        if value.is_none() && location == "body" {
            value = parameters.get("body").filter(|value| !value.is_null());
            taken = "body";
        }
        let Some(value) = value else {
            if required {
                return Err(format!(
                    "the required {location} parameter {name:?} is missing"
                ));
            }
            return Ok(());
        };
        self.taken.push(taken.to_owned());
        let explode = parameter.get("explode").and_then(Value::as_bool);
        let style = parameter.get("style").and_then(Value::as_str);
        match location {
            "path" => self
                .path
                .push((name.to_owned(), encode_segment(&simple(value, explode)))),
            "query" => {
                if swagger {
                    let format = parameter.get("collectionFormat").and_then(Value::as_str);
                    self.query.extend(swagger_query(name, value, format));
                } else {
                    self.query.extend(query(name, value, style, explode));
                }
            }
            "header" => {
                self.headers.insert(
                    name.to_ascii_lowercase(),
                    Value::String(simple(value, explode)),
                );
            }
            "cookie" => self
                .cookies
                .push(format!("{name}={}", simple(value, Some(false)))),
            "body" if swagger => self.body = Some(value.clone()),
            "formData" if swagger => {
                return Err(format!(
                    "the formData parameter {name:?} is not supported (bodies are sent as JSON)"
                ));
            }
            other => return Err(format!("parameter {name:?} is in {other:?}")),
        }
        Ok(())
    }
}

/// The operation's path with its `{name}`s filled: by the declared path
/// parameters, else by a parameter of that name (taken), else refused.
fn fill_path(
    template: &str,
    filled: &[(String, String)],
    parameters: &Map<String, Value>,
    taken: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("path {template:?} has an unclosed {{"));
        };
        let name = &after[..close];
        if let Some((_, value)) = filled.iter().find(|(filled, _)| filled == name) {
            out.push_str(value);
        } else if let Some(value) = parameters.get(name).filter(|value| !value.is_null()) {
            out.push_str(&encode_segment(&simple(value, None)));
            taken.push(name.to_owned());
        } else {
            return Err(format!("the path parameter {name:?} is missing"));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// OpenAPI 3's body: `parameters.body`, else the parameters not taken (as
/// an object), else none.
fn body_of(parameters: &Map<String, Value>, taken: &[String]) -> Option<Value> {
    if !taken.iter().any(|name| name == "body")
        && let Some(body) = parameters.get("body")
    {
        return Some(body.clone());
    }
    let rest: Map<String, Value> = parameters
        .iter()
        .filter(|(name, _)| !taken.contains(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    (!rest.is_empty()).then_some(Value::Object(rest))
}

/// The request body's first JSON media type (`application/json`,
/// `…+json`), if it names one.
fn json_media_type(request_body: &Value) -> Option<String> {
    request_body
        .get("content")
        .and_then(Value::as_object)?
        .keys()
        .find(|media| {
            let essence = media.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case(JSON) || essence.to_ascii_lowercase().ends_with("+json")
        })
        .cloned()
}

/// OpenAPI 3's query pairs for `value`, by `style` (`form` by default) and
/// `explode` (by default: `true` for `form`).
fn query(
    name: &str,
    value: &Value,
    style: Option<&str>,
    explode: Option<bool>,
) -> Vec<(String, String)> {
    let style = style.unwrap_or("form");
    let explode = explode.unwrap_or(style == "form");
    match value {
        Value::Array(items) => {
            let separator = match style {
                "spaceDelimited" => " ",
                "pipeDelimited" => "|",
                _ => ",",
            };
            if explode {
                items
                    .iter()
                    .map(|item| (name.to_owned(), plain(item)))
                    .collect()
            } else {
                vec![(name.to_owned(), joined(items.iter().map(plain), separator))]
            }
        }
        Value::Object(fields) if style == "deepObject" => fields
            .iter()
            .map(|(key, field)| (format!("{name}[{key}]"), plain(field)))
            .collect(),
        Value::Object(fields) if explode => fields
            .iter()
            .map(|(key, field)| (key.clone(), plain(field)))
            .collect(),
        Value::Object(_) => vec![(name.to_owned(), simple(value, Some(false)))],
        scalar => vec![(name.to_owned(), plain(scalar))],
    }
}

/// Swagger 2.0's query pairs for `value`, by `collectionFormat` (`csv` by
/// default; `multi` repeats the pair).
fn swagger_query(name: &str, value: &Value, format: Option<&str>) -> Vec<(String, String)> {
    let Value::Array(items) = value else {
        return vec![(name.to_owned(), plain(value))];
    };
    let separator = match format.unwrap_or("csv") {
        "multi" => {
            return items
                .iter()
                .map(|item| (name.to_owned(), plain(item)))
                .collect();
        }
        "ssv" => " ",
        "tsv" => "\t",
        "pipes" => "|",
        _ => ",",
    };
    vec![(name.to_owned(), joined(items.iter().map(plain), separator))]
}

/// `value` in the `simple` style (path, header): arrays and objects as
/// comma-separated items (`k,v,…`, or `k=v,…` exploded).
fn simple(value: &Value, explode: Option<bool>) -> String {
    match value {
        Value::Array(items) => joined(items.iter().map(plain), ","),
        Value::Object(fields) if explode == Some(true) => joined(
            fields
                .iter()
                .map(|(key, field)| format!("{key}={}", plain(field))),
            ",",
        ),
        Value::Object(fields) => joined(
            fields
                .iter()
                .flat_map(|(key, field)| [key.clone(), plain(field)]),
            ",",
        ),
        scalar => plain(scalar),
    }
}

fn joined(items: impl Iterator<Item = String>, separator: &str) -> String {
    items.collect::<Vec<_>>().join(separator)
}

/// A JSON value as header, query or path text: a string as is, anything
/// else as JSON (as the `call: http` task renders them).
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `text` percent-encoded as one path segment: everything but RFC 3986's
/// unreserved characters (so `/` becomes `%2F`, a space `%20`).
fn encode_segment(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn petstore() -> Value {
        json!({
            "openapi": "3.0.3",
            "servers": [{"url": "https://pets.example/v1"}],
            "paths": {
                "/pets/{petId}": {
                    "parameters": [
                        {"name": "petId", "in": "path", "required": true},
                        {"name": "verbose", "in": "query", "description": "path level"}
                    ],
                    "get": {
                        "operationId": "showPetById",
                        "parameters": [
                            {"name": "verbose", "in": "query", "required": true},
                            {"name": "X-Request-Id", "in": "header"},
                            {"name": "session", "in": "cookie"},
                            {"name": "theme", "in": "cookie"}
                        ]
                    },
                    "put": {
                        "operationId": "updatePet",
                        "parameters": [{"name": "dryRun", "in": "query"}],
                        "requestBody": {
                            "required": true,
                            "content": {"application/merge-patch+json": {}}
                        }
                    }
                },
                "/pets": {
                    "post": {
                        "operationId": "createPet",
                        "requestBody": {"$ref": "#/components/requestBodies/Pet"}
                    },
                    "get": {
                        "operationId": "listPets",
                        "parameters": [
                            {"$ref": "#/components/parameters/limit"},
                            {"name": "tags", "in": "query"},
                            {"name": "ids", "in": "query", "explode": false}
                        ]
                    }
                }
            },
            "components": {
                "parameters": {
                    "limit": {"$ref": "#/components/parameters/limitDefinition"},
                    "limitDefinition": {"name": "limit", "in": "query", "required": true}
                },
                "requestBodies": {
                    "Pet": {"required": true, "content": {"application/json": {}}}
                }
            }
        })
    }

    #[test]
    fn given_path_query_header_and_cookie_parameters_when_building_should_place_each() {
        let request = request(
            &petstore(),
            None,
            "showPetById",
            &params(json!({
                "petId": 42,
                "verbose": true,
                "X-Request-Id": "r-1",
                "session": "s1",
                "theme": "dark",
                "ignored": "x"
            })),
        )
        .unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.url.as_str(),
            "https://pets.example/v1/pets/42?verbose=true"
        );
        assert_eq!(
            Value::Object(request.headers),
            json!({"x-request-id": "r-1", "cookie": "session=s1; theme=dark"})
        );
        assert_eq!(request.body, None);
    }

    #[test]
    fn given_a_request_body_when_parameters_remain_should_send_them_as_the_body() {
        let request = request(
            &petstore(),
            None,
            "updatePet",
            &params(json!({"petId": "7", "dryRun": false, "name": "Rex", "age": 3})),
        )
        .unwrap();
        assert_eq!(request.method, "PUT");
        assert_eq!(
            request.url.as_str(),
            "https://pets.example/v1/pets/7?dryRun=false"
        );
        assert_eq!(request.body, Some(json!({"name": "Rex", "age": 3})));
        assert_eq!(
            request.headers.get("content-type"),
            Some(&json!("application/merge-patch+json"))
        );
    }

    #[test]
    fn given_a_body_parameter_should_send_it_whole() {
        let request = request(
            &petstore(),
            None,
            "createPet",
            &params(json!({"body": {"name": "Rex"}, "other": 1})),
        )
        .unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.url.as_str(), "https://pets.example/v1/pets");
        assert_eq!(request.body, Some(json!({"name": "Rex"})));
        assert_eq!(
            request.headers.get("content-type"),
            Some(&json!("application/json"))
        );
    }

    #[test]
    fn given_a_required_request_body_when_nothing_gives_it_should_be_a_validation_error() {
        let error = request(&petstore(), None, "createPet", &Map::new()).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.type_.ends_with("/validation"));
        assert!(error.detail.unwrap().contains("createPet"));
    }

    #[test]
    fn given_a_ref_parameter_should_follow_it() {
        let request =
            request(&petstore(), None, "listPets", &params(json!({"limit": 10}))).unwrap();
        assert_eq!(
            request.url.as_str(),
            "https://pets.example/v1/pets?limit=10"
        );
    }

    #[test]
    fn given_cyclic_refs_should_be_a_validation_error() {
        let document = json!({
            "openapi": "3.1.0",
            "servers": [{"url": "https://h"}],
            "paths": {"/a": {"get": {
                "operationId": "a",
                "parameters": [{"$ref": "#/components/parameters/x"}]
            }}},
            "components": {"parameters": {
                "x": {"$ref": "#/components/parameters/y"},
                "y": {"$ref": "#/components/parameters/x"}
            }}
        });
        let error = request(&document, None, "a", &Map::new()).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.detail.unwrap().contains("cycle"));
    }

    #[test]
    fn given_a_missing_required_parameter_should_be_a_validation_error_naming_it() {
        let error = request(
            &petstore(),
            None,
            "showPetById",
            &params(json!({"petId": 1})),
        )
        .unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.type_.ends_with("/validation"));
        let detail = error.detail.unwrap();
        assert!(detail.contains("\"verbose\""), "{detail}");

        let error = request(
            &petstore(),
            None,
            "showPetById",
            &params(json!({"verbose": 1})),
        )
        .unwrap_err();
        assert!(error.detail.unwrap().contains("\"petId\""));
    }

    #[test]
    fn given_an_unknown_operation_id_should_be_a_validation_error_naming_it() {
        let error = request(&petstore(), None, "deletePet", &Map::new()).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.type_.ends_with("/validation"));
        assert!(error.detail.unwrap().contains("\"deletePet\""));
    }

    #[test]
    fn given_a_path_value_with_a_space_and_a_slash_should_encode_it_as_one_segment() {
        let request = request(
            &petstore(),
            None,
            "showPetById",
            &params(json!({"petId": "a b/c?d", "verbose": "x y"})),
        )
        .unwrap();
        assert_eq!(
            request.url.as_str(),
            "https://pets.example/v1/pets/a%20b%2Fc%3Fd?verbose=x+y"
        );
    }

    #[test]
    fn given_array_query_parameters_should_repeat_or_join_them_by_explode() {
        let request = request(
            &petstore(),
            None,
            "listPets",
            &params(json!({"limit": 5, "tags": ["a", "b"], "ids": [1, 2]})),
        )
        .unwrap();
        assert_eq!(
            request.url.as_str(),
            "https://pets.example/v1/pets?limit=5&tags=a&tags=b&ids=1%2C2"
        );
    }

    #[test]
    fn given_server_variables_should_substitute_their_defaults() {
        let document = json!({
            "openapi": "3.0.0",
            "servers": [{
                "url": "{scheme}://{region}.api.example:{port}/{base}",
                "variables": {
                    "scheme": {"default": "http", "enum": ["http", "https"]},
                    "region": {"default": "eu"},
                    "port": {"default": "8443"},
                    "base": {"default": "v2"}
                }
            }],
            "paths": {"/things": {"get": {"operationId": "things"}}}
        });
        let request = request(&document, None, "things", &Map::new()).unwrap();
        assert_eq!(request.url.as_str(), "http://eu.api.example:8443/v2/things");
    }

    #[test]
    fn given_a_relative_server_should_resolve_it_against_the_document_url() {
        let mut document = json!({
            "openapi": "3.0.0",
            "servers": [{"url": "/api/v3"}],
            "paths": {"/things": {"get": {"operationId": "things"}}}
        });
        let at = Url::parse("https://docs.example:8080/specs/openapi.json").unwrap();
        let built = request(&document, Some(&at), "things", &Map::new()).unwrap();
        assert_eq!(
            built.url.as_str(),
            "https://docs.example:8080/api/v3/things"
        );

        // No servers at all: `/`, on the document's origin.
        document.as_object_mut().unwrap().remove("servers");
        let built = request(&document, Some(&at), "things", &Map::new()).unwrap();
        assert_eq!(built.url.as_str(), "https://docs.example:8080/things");

        // Inline (no URL): refused.
        let error = request(&document, None, "things", &Map::new()).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.detail.unwrap().contains("relative"));
    }

    #[test]
    fn given_an_operation_server_should_prefer_it() {
        let document = json!({
            "openapi": "3.0.0",
            "servers": [{"url": "https://root.example"}],
            "paths": {"/x": {"get": {
                "operationId": "x",
                "servers": [{"url": "https://op.example/base/"}]
            }}}
        });
        let built = request(&document, None, "x", &Map::new()).unwrap();
        assert_eq!(built.url.as_str(), "https://op.example/base/x");
    }

    fn swagger() -> Value {
        json!({
            "swagger": "2.0",
            "host": "petstore.swagger.io",
            "basePath": "/v2",
            "schemes": ["https", "http"],
            "paths": {
                "/pet": {
                    "post": {
                        "operationId": "addPet",
                        "parameters": [
                            {"in": "body", "name": "pet", "required": true, "schema": {}}
                        ]
                    }
                },
                "/pet/findByStatus": {
                    "get": {
                        "operationId": "findPetsByStatus",
                        "parameters": [
                            {"$ref": "#/parameters/status"},
                            {"name": "tags", "in": "query", "type": "array"}
                        ]
                    }
                }
            },
            "parameters": {
                "status": {
                    "name": "status", "in": "query", "required": true,
                    "type": "array", "collectionFormat": "multi"
                }
            }
        })
    }

    #[test]
    fn given_swagger_2_when_building_should_use_host_base_path_and_body_parameter() {
        let built = request(
            &swagger(),
            None,
            "addPet",
            &params(json!({"pet": {"name": "Rex"}, "extra": 1})),
        )
        .unwrap();
        assert_eq!(built.method, "POST");
        assert_eq!(built.url.as_str(), "https://petstore.swagger.io/v2/pet");
        assert_eq!(built.body, Some(json!({"name": "Rex"})));
        assert_eq!(
            built.headers.get("content-type"),
            Some(&json!("application/json"))
        );

        // The body parameter's value also goes by `body`.
        let built = request(
            &swagger(),
            None,
            "addPet",
            &params(json!({"body": {"name": "Tom"}})),
        )
        .unwrap();
        assert_eq!(built.body, Some(json!({"name": "Tom"})));

        let error = request(&swagger(), None, "addPet", &Map::new()).unwrap_err();
        assert!(error.detail.unwrap().contains("\"pet\""));
    }

    #[test]
    fn given_swagger_2_query_arrays_should_follow_collection_format() {
        let built = request(
            &swagger(),
            None,
            "findPetsByStatus",
            &params(json!({"status": ["available", "sold"], "tags": ["a", "b"]})),
        )
        .unwrap();
        assert_eq!(
            built.url.as_str(),
            "https://petstore.swagger.io/v2/pet/findByStatus?status=available&status=sold&tags=a%2Cb"
        );
    }

    #[test]
    fn given_swagger_2_without_host_or_schemes_should_take_the_document_urls() {
        let mut document = swagger();
        let object = document.as_object_mut().unwrap();
        object.remove("host");
        object.remove("schemes");
        let at = Url::parse("http://localhost:9000/swagger.json").unwrap();
        let built = request(
            &document,
            Some(&at),
            "findPetsByStatus",
            &params(json!({"status": "sold"})),
        )
        .unwrap();
        assert_eq!(
            built.url.as_str(),
            "http://localhost:9000/v2/pet/findByStatus?status=sold"
        );
    }

    #[test]
    fn given_yaml_bytes_should_parse_the_document() {
        let yaml = br"
openapi: 3.0.0
servers:
  - url: https://api.example
paths:
  /greet/{who}:
    get:
      operationId: greet
      parameters:
        - name: who
          in: path
          required: true
      responses:
        200:
          description: ok
";
        let document = parse_document(yaml).unwrap();
        let built = request(&document, None, "greet", &params(json!({"who": "ann"}))).unwrap();
        assert_eq!(built.url.as_str(), "https://api.example/greet/ann");

        let json = br#"{"openapi": "3.0.0", "paths": {}}"#;
        assert_eq!(
            parse_document(json).unwrap(),
            json!({"openapi": "3.0.0", "paths": {}})
        );
    }

    #[test]
    fn given_unreadable_bytes_should_be_a_validation_error() {
        for bytes in [&b"{not json"[..], b"- a\n- b\n", b"a: [b\n", b"\xff\xfe"] {
            let error = parse_document(bytes).unwrap_err();
            assert_eq!(error.status, 400, "{bytes:?}");
            assert!(error.type_.ends_with("/validation"));
        }
    }
}
