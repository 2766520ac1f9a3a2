//! RFC 9457 problem details (`application/problem+json`): the one shape of
//! every error the HTTP API returns, and the table of stable error codes.
//!
//! ```json
//! {
//!   "type": "urn:herald:problem:not_found",
//!   "title": "Not found",
//!   "status": 404,
//!   "detail": "No route for GET /nope.",
//!   "code": "not_found"
//! }
//! ```
//!
//! `code` is the stable, machine-readable identifier clients match on; it is
//! an extension member, as RFC 9457 §3.2 allows. `type` is derived from it
//! as a URN: Herald has no published documentation site whose URLs could
//! promise to stay put, and a URN identifies without pretending to resolve.
//! `title` is fixed per code; `detail` is free text about this occurrence.
//!
//! A code, once released, never changes meaning. New failure modes add codes
//! to [`Code`], each with its HTTP status (and, later, its gRPC code).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Media type of problem details.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Prefix of the `type` URI; the code follows it.
pub const TYPE_PREFIX: &str = "urn:herald:problem:";

/// The stable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// No resource at this path.
    NotFound,
    /// The path exists but not for this method.
    MethodNotAllowed,
    /// The server failed; nothing the client can fix.
    Internal,
}

impl Code {
    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status this code is returned with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short, fixed, human-readable summary.
    pub const fn title(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Internal => "Internal server error",
        }
    }
}

/// One problem details document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    code: Code,
    detail: Option<String>,
}

impl Problem {
    /// A problem of kind `code`, explained by `detail`.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: Some(detail.into()),
        }
    }

    /// The stable code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// What went wrong this time.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

/// The document as serialized: members in RFC 9457 order, then extensions.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    code: &'static str,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            type_uri: format!("{TYPE_PREFIX}{}", self.code.as_str()),
            title: self.code.title(),
            status: self.code.status().as_u16(),
            detail: self.detail.as_deref(),
            code: self.code.as_str(),
        }
        .serialize(serializer)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.code.status(), axum::Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_not_found_when_serialized_should_carry_rfc9457_members_and_code() {
        let problem = Problem::new(Code::NotFound, "No route for GET /nope.");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "urn:herald:problem:not_found",
                "title": "Not found",
                "status": 404,
                "detail": "No route for GET /nope.",
                "code": "not_found",
            })
        );
    }

    #[test]
    fn given_problem_when_into_response_should_set_status_and_media_type() {
        let response = Problem::new(Code::MethodNotAllowed, "x").into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}
