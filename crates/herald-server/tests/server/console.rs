//! The web console's files at `/ui` (the pages themselves are driven in a
//! real browser by `tests/console/`): served from the binary with their
//! media types, revalidated by ETag, public even with auth on (while the
//! API they call is not), and whole: every file a page or module names is
//! served, and none comes from another origin.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;

use herald_server::http::console::ASSETS;

use crate::auth_table::server_with_auth;
use crate::support::expect_problem;

#[tokio::test]
async fn given_auth_on_when_console_files_are_fetched_without_credentials_should_serve_each() {
    let (_server, anonymous, _admin) = server_with_auth(&[]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = client.get(anonymous.url("/ui")).send().await.unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/ui/");
    for asset in ASSETS {
        let url = anonymous.url(&format!("/ui/{}", asset.path));
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], asset.content_type, "{url}");
        assert_eq!(headers["etag"], asset.etag, "{url}");
        assert_eq!(headers["cache-control"], "no-cache", "{url}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{url}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            asset.bytes,
            "{url}"
        );
        let revalidated = client
            .get(&url)
            .header("if-none-match", asset.etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), 304, "{url}");
        assert!(revalidated.bytes().await.unwrap().is_empty());
    }
    expect_problem(anonymous.get("/ui/no-such-file.js").await, 404, "not_found").await;
    // The files are public; the data behind them is not.
    expect_problem(anonymous.get("/v1/topics").await, 401, "unauthenticated").await;
}

#[test]
fn given_console_files_should_name_only_files_the_binary_serves() {
    let served: BTreeSet<String> = ASSETS.iter().map(|asset| asset.path.to_owned()).collect();
    for asset in ASSETS {
        // The SVG namespace is a name, not a request.
        let text = std::str::from_utf8(asset.bytes)
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("https://") && !text.contains("http://"),
            "{} names another origin: the console's files all come from the binary",
            asset.path
        );
        let base = asset.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        for reference in references(&text) {
            let resolved = resolve(base, &reference);
            assert!(
                served.contains(&resolved),
                "{} names {reference} ({resolved}), which /ui/ does not serve",
                asset.path
            );
        }
    }
}

/// The relative files a page or module names: `src="…"`, `href="…"` (not
/// `#` routes) and `from '…'` imports.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (opening, closing) in [("src=\"", '"'), ("href=\"", '"'), ("from '", '\'')] {
        for piece in text.split(opening).skip(1) {
            let target = piece.split(closing).next().unwrap_or_default();
            if !target.is_empty() && !target.starts_with('#') && !target.contains('$') {
                found.push(target.to_owned());
            }
        }
    }
    found
}

/// `target` relative to the directory `base` (both under `/ui/`).
fn resolve(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> = base.split('/').filter(|part| !part.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "." | "" => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    parts.join("/")
}
