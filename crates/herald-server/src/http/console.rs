//! The web console: `GET /ui` (a redirect to `/ui/`), `GET /ui/` (the page)
//! and `GET /ui/{file}` (its scripts and styles).
//!
//! The console is a hand-written page of plain HTML, CSS and JavaScript
//! modules in `crates/herald-server/console/`, compiled into the binary
//! here with `include_bytes!`: no CDN, no build step, nothing to install to
//! build or run Herald. It uses only the public REST API (`/v1`, `/readyz`,
//! `/openapi.json`), with the API key the user enters sent as
//! `Authorization: Bearer` (`?access_token=` on SSE), so what the console
//! can do, a client can. The assets themselves are public (`auth::policy`
//! gives `/ui` the `Open` rule): they hold no data.
//!
//! Caching: the assets keep their names from one release to the next, so
//! they are served with `Cache-Control: no-cache` and an `ETag` (a hash of
//! the bytes, computed at compile time); a browser revalidates and gets 304
//! while the binary is the same. Every answer carries a Content-Security-
//! Policy that allows only the console's own scripts and styles and
//! requests to this origin.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;
use crate::problem::{Code, Problem};

/// Where the console is served.
pub const CONSOLE_PATH: &str = "/ui";

/// The console's Content-Security-Policy: its own files, requests to this
/// origin only, no inline script or style, never in a frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its path under `/ui/` (`""` is the page itself).
    pub path: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
    /// Its entity tag (quoted), from a hash of `bytes`.
    pub etag: &'static str,
}

/// Declares the embedded files: `asset!(path under /ui/, file under
/// console/, content type)`; the ETag is computed at compile time.
macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr) => {{
        const BYTES: &[u8] = include_bytes!(concat!("../../console/", $file));
        const ETAG: &str = etag!(BYTES);
        Asset {
            path: $path,
            content_type: $content_type,
            bytes: BYTES,
            etag: ETAG,
        }
    }};
}

/// A quoted hexadecimal FNV-1a hash of the bytes, as a `&'static str`.
macro_rules! etag {
    ($bytes:expr) => {{
        const TEXT: [u8; 18] = etag_text(fnv1a($bytes));
        match std::str::from_utf8(&TEXT) {
            Ok(text) => text,
            Err(_) => panic!("an ETag is ASCII"),
        }
    }};
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file of `crates/herald-server/console/` (a test checks that none
/// is missing).
pub const ASSETS: &[Asset] = &[
    asset!("", "index.html", HTML),
    asset!("console.css", "console.css", CSS),
    asset!("favicon.svg", "favicon.svg", SVG),
    asset!("app.js", "app.js", JS),
    asset!("api.js", "api.js", JS),
    asset!("dom.js", "dom.js", JS),
    asset!("pages/overview.js", "pages/overview.js", JS),
    asset!("pages/topics.js", "pages/topics.js", JS),
    asset!("pages/events.js", "pages/events.js", JS),
    asset!("pages/groups.js", "pages/groups.js", JS),
    asset!("pages/streams.js", "pages/streams.js", JS),
    asset!("pages/jobs.js", "pages/jobs.js", JS),
    asset!("pages/workflows.js", "pages/workflows.js", JS),
    asset!("pages/webhooks.js", "pages/webhooks.js", JS),
    asset!("pages/tail.js", "pages/tail.js", JS),
    asset!("pages/login.js", "pages/login.js", JS),
];

/// The console's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(CONSOLE_PATH, get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|headers: HeaderMap| async move { serve("", &headers) }),
        )
        .route(
            "/ui/{*path}",
            get(|uri: Uri, headers: HeaderMap| async move {
                serve(
                    uri.path().strip_prefix("/ui/").unwrap_or_default(),
                    &headers,
                )
            }),
        )
}

/// One file, 304 when the browser's copy is current, 404 problem when there
/// is no such file.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|asset| asset.path == path) else {
        return Problem::new(Code::NotFound, format!("The console has no file {path:?}."))
            .into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag == asset.etag)
        });
    let common = [
        (header::ETAG, HeaderValue::from_static(asset.etag)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.bytes,
    )
        .into_response()
}

/// 64-bit FNV-1a: a cheap, stable hash for entity tags (not a security
/// measure: the bytes are public).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        index += 1;
    }
    hash
}

/// `"` + 16 hexadecimal digits + `"`.
const fn etag_text(hash: u64) -> [u8; 18] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'"'; 18];
    let mut index = 0;
    while index < 16 {
        let nibble = (hash >> (60 - 4 * index)) & 0xf;
        text[1 + index] = DIGITS[nibble as usize];
        index += 1;
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn files(dir: &Path, prefix: &str, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                files(&entry.path(), &format!("{name}/"), found);
            } else {
                found.insert(name);
            }
        }
    }

    #[test]
    fn given_console_directory_should_embed_every_file_once() {
        let mut on_disk = BTreeSet::new();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        files(&dir, "", &mut on_disk);
        let embedded: BTreeSet<String> = ASSETS
            .iter()
            .map(|asset| {
                if asset.path.is_empty() {
                    "index.html".to_owned()
                } else {
                    asset.path.to_owned()
                }
            })
            .collect();
        assert_eq!(embedded.len(), ASSETS.len(), "a path is listed twice");
        assert_eq!(on_disk, embedded, "console/ and ASSETS differ");
    }

    #[test]
    fn given_assets_should_have_distinct_quoted_etags() {
        let tags: BTreeSet<&str> = ASSETS.iter().map(|asset| asset.etag).collect();
        assert_eq!(tags.len(), ASSETS.len());
        for asset in ASSETS {
            assert_eq!(asset.etag.len(), 18);
            assert!(asset.etag.starts_with('"') && asset.etag.ends_with('"'));
        }
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
