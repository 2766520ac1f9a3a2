//! Blobs: `POST /v1/blobs`, `GET`/`HEAD /v1/blobs/{id}` (see
//! [`crate::blobs`] for storage).
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/blobs` | raw bytes, streamed (≤ `limits.max_blob_bytes`, not `max_request_bytes`) | 201 `{id: "sha256:<hex>", size}` with `Location` |
//! | `GET /v1/blobs/{id}` | `Range: bytes=a-b`, `a-`, `-n` (one range) | 200, or 206 with `Content-Range`, or 416 |
//! | `HEAD /v1/blobs/{id}` | | 200 with `Content-Length` |
//!
//! A `Range` that is not a single byte range is ignored (200, whole blob),
//! as RFC 9110 allows; one that starts past the end is 416
//! `range_not_satisfiable` with `Content-Range: bytes */<size>`.

use std::ops::Range;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Serialize;

use super::AppState;
use super::extract::NoQuery;
use crate::auth::{Caller, quotas};
use crate::blobs::{self, BlobInfo};
use crate::problem::Problem;
use axum::Extension;

/// A stored blob (`POST /v1/blobs`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BlobView {
    /// `sha256:<64 hex digits>`: the content's address.
    #[schema(example = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")]
    pub id: String,
    /// Size in bytes.
    pub size: u64,
}

/// `POST /v1/blobs` → 201 `{id, size}`.
#[utoipa::path(
    post, path = "/v1/blobs", tag = "blobs",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The blob's bytes, streamed; at most `limits.max_blob_bytes`."),
    responses(
        (status = 201, description = "Stored (or already there: the same id).", body = BlobView,
         headers(("Location" = String, description = "The blob's URL."))),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    _query: NoQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let backend = state.backend()?;
    let allowance = quotas::blob_allowance(backend, &caller).await?;
    let max = allowance.map_or(state.blobs.max_bytes(), |left| {
        left.min(state.blobs.max_bytes())
    });
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    let too_large = |max| match allowance {
        Some(left) if left <= state.blobs.max_bytes() => quotas::blob_quota_exceeded(
            &caller.principal.id,
            caller.principal.limits().max_blob_bytes,
        ),
        _ => Problem::from(blobs::Error::TooLarge { max }),
    };
    if announced.is_some_and(|length| length > max) {
        drain(&mut stream).await;
        return Err(too_large(max));
    }
    if let Err(error) = state.blobs.check_space(announced.unwrap_or(0)) {
        drain(&mut stream).await;
        return Err(error.into());
    }
    let BlobInfo { id, size } = match state.blobs.put_within(&mut stream, max).await {
        Ok(info) => info,
        Err(error @ blobs::Error::InsufficientStorage { .. }) => {
            drain(&mut stream).await;
            return Err(error.into());
        }
        Err(blobs::Error::TooLarge { max }) => {
            drain(&mut stream).await;
            return Err(too_large(max));
        }
        Err(error) => return Err(error.into()),
    };
    quotas::record_blob(backend, &caller, &id, size).await;
    let location = format!("/v1/blobs/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(BlobView { id, size }),
    )
        .into_response())
}

/// Reads and discards up to [`DRAIN_BYTES`] more of a refused upload, so
/// that a client still sending (most do not wait for `100 Continue`) reads
/// the 413 instead of a broken pipe. A larger rest is cut off.
async fn drain(stream: &mut axum::body::BodyDataStream) {
    let mut drained = 0_u64;
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.len() as u64;
            if drained > DRAIN_BYTES {
                return;
            }
        }
    };
    // A client that stalls does not hold the refusal up for long.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, read).await;
}

/// How much of a refused upload is read (and discarded) before answering.
pub const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// How long a refused upload is read before answering.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /v1/blobs/{id}` → 200 or 206, streamed.
#[utoipa::path(
    get, path = "/v1/blobs/{id}", tag = "blobs",
    params(("id" = String, Path, description = "The blob's id, `sha256:<hex>`."),
           ("Range" = Option<String>, Header, description = "One byte range: `bytes=a-b`, `bytes=a-` or `bytes=-n`.")),
    responses(
        (status = 200, description = "The whole blob.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for, with `Content-Range`.", content_type = "application/octet-stream", body = Vec<u8>),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _query: NoQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let size = state.blobs.size(&id).await?;
    let range = match headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
    {
        None => None,
        Some(text) => match parse_range(text, size) {
            RangeRequest::Ignored => None,
            RangeRequest::Satisfiable(range) => Some(range),
            RangeRequest::NotSatisfiable => {
                let problem: Problem = blobs::Error::RangeNotSatisfiable {
                    start: first_byte(text).unwrap_or(size),
                    size,
                }
                .into();
                let mut response = problem.into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(response);
            }
        },
    };
    let stream = if size == 0 {
        Body::empty()
    } else {
        Body::from_stream(state.blobs.get(&id, range.clone()).await?)
    };
    let mut response = Response::new(stream);
    let headers = response.headers_mut();
    blob_headers(headers, &id);
    match range {
        Some(range) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(range.end - range.start),
            );
            if let Ok(value) =
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", range.start, range.end - 1))
            {
                headers.insert(header::CONTENT_RANGE, value);
            }
        }
        None => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    Ok(response)
}

/// `HEAD /v1/blobs/{id}` → 200 with `Content-Length`.
#[utoipa::path(
    head, path = "/v1/blobs/{id}", tag = "blobs",
    params(("id" = String, Path, description = "The blob's id, `sha256:<hex>`.")),
    responses(
        (status = 200, description = "The blob exists; `Content-Length` is its size."),
        (status = 404, description = "No such blob."),
    )
)]
pub async fn head(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _query: NoQuery,
) -> Result<Response, Problem> {
    let size = state.blobs.size(&id).await?;
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    blob_headers(headers, &id);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

fn blob_headers(headers: &mut HeaderMap, id: &str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content-addressed: the bytes behind an id never change.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{id}\"")) {
        headers.insert(header::ETAG, etag);
    }
}

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Not one byte range (or malformed): serve the whole blob.
    Ignored,
    /// These bytes.
    Satisfiable(Range<u64>),
    /// Starts at or past the end.
    NotSatisfiable,
}

fn parse_range(text: &str, size: u64) -> RangeRequest {
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignored;
    };
    if spec.contains(',') {
        return RangeRequest::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |digits: &str| -> Option<u64> {
        (!digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    if first.is_empty() {
        // A suffix: the last n bytes.
        return match parse(last) {
            None => RangeRequest::Ignored,
            Some(0) => RangeRequest::NotSatisfiable,
            Some(_) if size == 0 => RangeRequest::NotSatisfiable,
            Some(suffix) => RangeRequest::Satisfiable(size.saturating_sub(suffix)..size),
        };
    }
    let Some(start) = parse(first) else {
        return RangeRequest::Ignored;
    };
    let last = if last.is_empty() {
        None
    } else {
        match parse(last) {
            Some(last) if last >= start => Some(last),
            _ => return RangeRequest::Ignored,
        }
    };
    if start >= size {
        return RangeRequest::NotSatisfiable;
    }
    let end = last.map_or(size, |last| last.saturating_add(1).min(size));
    RangeRequest::Satisfiable(start..end)
}

fn first_byte(text: &str) -> Option<u64> {
    text.trim()
        .strip_prefix("bytes=")?
        .split_once('-')?
        .0
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_range_headers_when_parsed_should_follow_rfc_9110() {
        use RangeRequest::{Ignored, NotSatisfiable, Satisfiable};
        for (text, expected) in [
            ("bytes=0-9", Satisfiable(0..10)),
            ("bytes=90-", Satisfiable(90..100)),
            ("bytes=90-500", Satisfiable(90..100)),
            ("bytes=-10", Satisfiable(90..100)),
            ("bytes=-500", Satisfiable(0..100)),
            ("bytes=100-", NotSatisfiable),
            ("bytes=-0", NotSatisfiable),
            ("bytes=5-1", Ignored),
            ("bytes=0-1,5-9", Ignored),
            ("items=0-1", Ignored),
            ("bytes=x-1", Ignored),
            ("bytes=1-x", Ignored),
        ] {
            assert_eq!(parse_range(text, 100), expected, "{text}");
        }
    }
}
