//! Request extractors whose every failure is a [`Problem`].
//!
//! axum's own extractors answer bad input with `text/plain` rejections; these
//! wrap them (or replace them) so that a client always gets
//! `application/problem+json` with a stable code:
//!
//! | input | problem |
//! |---|---|
//! | a path segment that is not a valid name | 400 `invalid_name` |
//! | an unknown, malformed or out-of-range query parameter | 400 `invalid_argument` |
//! | a body that is not JSON | 400 `malformed_json` |
//! | JSON of the wrong shape: unknown or missing fields, wrong types | 400 `invalid_argument` |
//! | a `Content-Type` that is not JSON | 415 `unsupported_media_type` |
//! | a body over `limits.max_request_bytes` | 413 `payload_too_large` |

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use herald_types::{GroupName, TopicName};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::error::Category;

use super::AppState;
use crate::problem::{Code, Problem};

/// The `{topic}` of a path, validated.
#[derive(Debug)]
pub struct TopicPath(pub TopicName);

impl FromRequestParts<AppState> for TopicPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Path(topic) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::new(Code::InvalidName, rejection.body_text()))?;
        Ok(Self(topic.parse()?))
    }
}

/// The `{topic}` and `{group}` of a path, validated.
#[derive(Debug)]
pub struct GroupPath {
    /// The topic.
    pub topic: TopicName,
    /// The group.
    pub group: GroupName,
}

impl FromRequestParts<AppState> for GroupPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Path((topic, group)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::new(Code::InvalidName, rejection.body_text()))?;
        Ok(Self {
            topic: topic.parse()?,
            group: group.parse()?,
        })
    }
}

/// Query parameters. Declare `T` with `#[serde(deny_unknown_fields)]` so
/// that an unknown parameter is refused rather than ignored.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(params)| Self(params))
            .map_err(|rejection| Problem::new(Code::InvalidArgument, rejection.body_text()))
    }
}

/// The query of an endpoint that takes no parameters: any parameter is
/// refused (a typo must not be silently ignored).
pub type NoQuery = Query<NoParams>;

/// No query parameters at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A JSON request body: `Content-Type` `application/json` or any `+json`
/// type (or none), parsed into `T`. An empty body reads as `{}`, so an
/// endpoint whose fields are all optional can be called without one.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        match media_type(request.headers())? {
            None => {}
            Some(media) if is_json(&media) => {}
            Some(media) => {
                return Err(Problem::new(
                    Code::UnsupportedMediaType,
                    format!("Content-Type {media} is not accepted here; send application/json."),
                ));
            }
        }
        let body = read_body(request, state).await?;
        parse_json(&body).map(Self)
    }
}

/// Reads the whole body, at most `limits.max_request_bytes` of it.
pub async fn read_body(request: Request, state: &AppState) -> Result<Bytes, Problem> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    Code::PayloadTooLarge,
                    format!(
                        "The request body exceeds the limit of {} bytes \
                         (limits.max_request_bytes).",
                        state.max_request_bytes
                    ),
                )
            } else {
                Problem::new(
                    Code::InvalidArgument,
                    format!("Cannot read the request body: {}", rejection.body_text()),
                )
            }
        })
}

/// Parses a JSON object body: a syntax error is `malformed_json`, a
/// document of the wrong shape (not an object, unknown or missing fields,
/// wrong types) `invalid_argument`. An empty (or all-whitespace) body is `{}`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        None => serde_json::from_slice(b"{}"),
        Some(b'{') => serde_json::from_slice(body),
        // serde would read an array as a struct's fields in order; the API
        // takes objects only. Tell a syntax error from a wrong shape first.
        Some(_) => {
            return match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => Err(Problem::new(
                    Code::InvalidArgument,
                    "Invalid request body: expected a JSON object.",
                )),
                Err(error) => Err(json_problem(&error)),
            };
        }
    }
    .map_err(|error| json_problem(&error))
}

/// Converts an already parsed JSON value into `T` (shape errors only).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Problem> {
    serde_json::from_value(value).map_err(|error| json_problem(&error))
}

fn json_problem(error: &serde_json::Error) -> Problem {
    match error.classify() {
        Category::Data => Problem::new(
            Code::InvalidArgument,
            format!("Invalid request body: {error}."),
        ),
        Category::Syntax | Category::Eof | Category::Io => Problem::new(
            Code::MalformedJson,
            format!("The request body is not valid JSON: {error}."),
        ),
    }
}

/// The media type of the request (`type/subtype`, lower case, without
/// parameters), if it has a `Content-Type`. A header that is not visible
/// ASCII is refused as an unsupported media type.
pub fn media_type(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_not_ascii| {
        Problem::new(
            Code::UnsupportedMediaType,
            "The Content-Type header is not visible ASCII.",
        )
    })?;
    let essence = text.split(';').next().unwrap_or_default().trim();
    Ok(Some(essence.to_ascii_lowercase()))
}

/// `application/json` or any `+json` structured syntax suffix.
fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// Checks a name-valued field of a JSON object before the whole object is
/// parsed, so that a bad name is `invalid_name`, like a bad name in a path,
/// rather than a generic `invalid_argument`. Absent, `null` or non-string
/// values are left to the parse.
pub fn check_topic_name_field(body: &serde_json::Value, field: &str) -> Result<(), Problem> {
    if let Some(name) = body.get(field).and_then(serde_json::Value::as_str) {
        name.parse::<TopicName>()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn given_syntax_error_when_parsed_should_be_malformed_json() {
        for body in [&b"{"[..], b"{\"count\": }", b"nope"] {
            let problem = parse_json::<Sample>(body).unwrap_err();
            assert_eq!(problem.code(), Code::MalformedJson, "{body:?}");
        }
    }

    #[test]
    fn given_wrong_shape_when_parsed_should_be_invalid_argument_naming_field() {
        let problem = parse_json::<Sample>(br#"{"cuont": 1}"#).unwrap_err();
        assert_eq!(problem.code(), Code::InvalidArgument);
        assert!(problem.detail().unwrap_or_default().contains("cuont"));
        let problem = parse_json::<Sample>(br#"{"count": "x"}"#).unwrap_err();
        assert_eq!(problem.code(), Code::InvalidArgument);
    }

    #[test]
    fn given_json_that_is_not_an_object_when_parsed_should_be_invalid_argument() {
        for body in [&b"[1]"[..], b"3", b"\"x\"", b" null"] {
            let problem = parse_json::<Sample>(body).unwrap_err();
            assert_eq!(problem.code(), Code::InvalidArgument, "{body:?}");
        }
    }

    #[test]
    fn given_empty_body_when_parsed_should_read_as_empty_object() {
        assert_eq!(parse_json::<Sample>(b"  \n").unwrap().count, 0);
    }

    #[test]
    fn given_content_type_with_parameters_when_read_should_give_lowercase_essence() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(
            media_type(&headers).unwrap().as_deref(),
            Some("application/json")
        );
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
    }

    #[test]
    fn given_query_with_unknown_parameter_should_be_invalid_argument() {
        let uri: axum::http::Uri = "/x?limt=3".parse().unwrap();
        let rejection = axum::extract::Query::<NoParams>::try_from_uri(&uri).unwrap_err();
        assert!(rejection.body_text().contains("limt"));
        let uri: axum::http::Uri = "/x".parse().unwrap();
        assert!(axum::extract::Query::<NoParams>::try_from_uri(&uri).is_ok());
    }
}
