//! Delivery attempts against real HTTP receivers on loopback (allowed
//! explicitly, as `webhooks.allow_targets` would): the signature checked
//! by the reference Python library, answers and their classes, timeouts,
//! redirects not followed, and the SSRF guard refusing what it must.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use herald_types::webhook::{Secret, verify};
use herald_webhooks::{ErrorClass, Message, Outcome, Sender, TargetPolicy};
use reqwest::header::{HeaderName, HeaderValue};

mod delivery;

const TIMEOUT: Duration = Duration::from_secs(5);

fn now_s() -> i64 {
    now_ms() / 1_000
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn loopback_sender() -> Sender {
    Sender::new(
        TargetPolicy::new(&["127.0.0.1/32"]).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap()
}

/// What a receiver saw: each request's headers and body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// Serves `router` on 127.0.0.1, port 0.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A receiver answering every POST with `answer`, recording what it got.
async fn receiver(answer: fn() -> axum::response::Response) -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    // Every path and method: the tests post to `/` and `/hook`.
    let router = Router::new().fallback(move |headers: HeaderMap, body: axum::body::Bytes| {
        let record = Arc::clone(&record);
        async move {
            record.lock().unwrap().push((headers, body.to_vec()));
            answer()
        }
    });
    (serve(router).await, seen)
}

fn url(addr: SocketAddr, path: &str) -> reqwest::Url {
    format!("http://{addr}{path}").parse().unwrap()
}

const BODY: &[u8] = br#"{"specversion":"1.0","id":"e1","source":"/t","type":"order.created","data":{"n":"caf\u00e9"}}"#;

fn message(id: &str) -> Message<'_> {
    Message {
        id,
        body: bytes::Bytes::from_static(BODY),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    }
}

/// One attempt of message `m` to `target`, signed with `secret`, no static
/// headers, the default timeout.
async fn send_plain(sender: &Sender, target: &reqwest::Url, secret: &Secret) -> Outcome {
    sender
        .send(target, &[secret], &[], &message("m"), now_s(), TIMEOUT)
        .await
}

#[tokio::test]
async fn given_a_2xx_receiver_when_sent_should_deliver_signed_headers_it_can_verify() {
    let (addr, seen) = receiver(|| StatusCode::NO_CONTENT.into_response()).await;
    let secret = Secret::from_bytes(&[42; 32]).unwrap();
    let headers = [(
        HeaderName::from_static("x-team"),
        HeaderValue::from_static("billing"),
    )];
    let timestamp = now_s();
    let outcome = loopback_sender()
        .send(
            &url(addr, "/hook"),
            &[&secret],
            &headers,
            &message("msg_1"),
            timestamp,
            TIMEOUT,
        )
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.status_code, Some(204));
    let seen = seen.lock().unwrap();
    let (got, body) = &seen[0];
    assert_eq!(body, BODY);
    assert_eq!(got["webhook-id"], "msg_1");
    assert_eq!(got["webhook-timestamp"], timestamp.to_string().as_str());
    assert_eq!(got["content-type"], "application/cloudevents+json");
    assert_eq!(got["x-team"], "billing");
    assert_eq!(
        got["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let signature = got["webhook-signature"].to_str().unwrap();
    assert_eq!(
        verify(
            &secret,
            "msg_1",
            &timestamp.to_string(),
            signature,
            body,
            now_s()
        ),
        Ok(())
    );
}

#[tokio::test]
async fn given_static_headers_naming_webhook_headers_when_sent_should_keep_heralds_own() {
    let (addr, seen) = receiver(|| StatusCode::OK.into_response()).await;
    let secret = Secret::from_bytes(&[1; 24]).unwrap();
    let headers = [
        (
            HeaderName::from_static("webhook-id"),
            HeaderValue::from_static("forged"),
        ),
        (
            HeaderName::from_static("webhook-signature"),
            HeaderValue::from_static("v1,Zm9yZ2Vk"),
        ),
    ];
    let outcome = loopback_sender()
        .send(
            &url(addr, "/"),
            &[&secret],
            &headers,
            &message("msg_2"),
            now_s(),
            TIMEOUT,
        )
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0.get_all("webhook-id").iter().count(), 1);
    assert_eq!(seen[0].0["webhook-id"], "msg_2");
    assert!(
        !seen[0].0["webhook-signature"]
            .to_str()
            .unwrap()
            .contains("Zm9yZ2Vk")
    );
}

#[tokio::test]
async fn given_failing_answers_when_sent_should_classify_them_and_keep_an_excerpt() {
    let (addr, _) =
        receiver(|| (StatusCode::INTERNAL_SERVER_ERROR, "x".repeat(5000)).into_response()).await;
    let secret = Secret::from_bytes(&[1; 24]).unwrap();
    let sender = loopback_sender();
    let outcome = send_plain(&sender, &url(addr, "/"), &secret).await;
    assert_eq!(outcome.class, ErrorClass::Status);
    assert_eq!(outcome.status_code, Some(500));
    assert_eq!(
        outcome.response_excerpt.len(),
        herald_webhooks::attempt::EXCERPT_BYTES
    );

    let (addr, _) = receiver(|| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "slow down",
        )
            .into_response()
    })
    .await;
    let outcome = send_plain(&sender, &url(addr, "/"), &secret).await;
    assert_eq!(outcome.class, ErrorClass::Status);
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(outcome.response_excerpt, "slow down");

    let (addr, _) = receiver(|| StatusCode::GONE.into_response()).await;
    let outcome = send_plain(&sender, &url(addr, "/"), &secret).await;
    assert!(outcome.gone && !outcome.succeeded());
}

#[tokio::test]
async fn given_a_receiver_slower_than_the_timeout_when_sent_should_time_out() {
    let (release, hold) = tokio::sync::watch::channel(false);
    let router = Router::new().route(
        "/",
        post(move || {
            let mut hold = hold.clone();
            async move {
                let _ = hold.wait_for(|released| *released).await;
                StatusCode::OK
            }
        }),
    );
    let addr = serve(router).await;
    let secret = Secret::from_bytes(&[1; 24]).unwrap();
    let outcome = loopback_sender()
        .send(
            &url(addr, "/"),
            &[&secret],
            &[],
            &message("m"),
            now_s(),
            Duration::from_millis(200),
        )
        .await;
    let _ = release.send(true);
    assert_eq!(outcome.class, ErrorClass::Timeout, "{outcome:?}");
    assert_eq!(outcome.status_code, None);
}

#[tokio::test]
async fn given_a_redirect_to_a_private_address_when_sent_should_fail_without_following_it() {
    let (inner, inner_seen) = receiver(|| StatusCode::OK.into_response()).await;
    let router = Router::new().route(
        "/",
        post(move || async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", format!("http://{inner}/internal"))],
            )
        }),
    );
    let outer = serve(router).await;
    let secret = Secret::from_bytes(&[1; 24]).unwrap();
    let outcome = send_plain(&loopback_sender(), &url(outer, "/"), &secret).await;
    assert_eq!(outcome.class, ErrorClass::Status);
    assert_eq!(outcome.status_code, Some(307));
    assert!(
        inner_seen.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
}

#[tokio::test]
async fn given_the_default_policy_when_sent_to_loopback_should_refuse_before_connecting() {
    let (addr, seen) = receiver(|| StatusCode::OK.into_response()).await;
    let sender = Sender::new(TargetPolicy::default(), Duration::from_secs(2)).unwrap();
    let secret = Secret::from_bytes(&[1; 24]).unwrap();
    for target in [
        url(addr, "/"),
        // A name that resolves to 127.0.0.1: refused by the resolver.
        format!("http://localhost:{}/", addr.port())
            .parse()
            .unwrap(),
    ] {
        let outcome = send_plain(&sender, &target, &secret).await;
        assert_eq!(
            outcome.class,
            ErrorClass::TargetNotAllowed,
            "{target}: {outcome:?}"
        );
        assert!(
            outcome
                .error
                .as_deref()
                .is_some_and(|error| error.contains("loopback")),
            "{outcome:?}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// The reference receiver (`tests/webhooks/receiver.py`), or `None` where Python's
/// `standardwebhooks` is not installed (`.ci/run` installs it; under CI
/// its absence fails the test).
struct PythonReceiver {
    child: Child,
    port: u16,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    stdin: std::process::ChildStdin,
}

impl PythonReceiver {
    fn start(secrets: &[String]) -> Option<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(secrets)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let mut lines = BufReader::new(child.stdout.take()?).lines();
        let Some(Ok(first)) = lines.next() else {
            let status = child.wait().ok();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take()?, &mut stderr);
            assert!(
                std::env::var_os("CI").is_none(),
                "the Python receiver did not start under CI ({status:?}): {stderr}"
            );
            eprintln!("skipped: Python standardwebhooks is not installed ({stderr})");
            return None;
        };
        let port = first.strip_prefix("port ")?.parse().ok()?;
        let stdin = child.stdin.take()?;
        Some(Self {
            child,
            port,
            lines,
            stdin,
        })
    }

    fn next_line(&mut self) -> String {
        self.lines.next().unwrap().unwrap()
    }

    /// Teaches the receiver a new secret (it verifies with each it knows).
    fn add_secret(&mut self, secret: &str) {
        use std::io::Write as _;
        writeln!(self.stdin, "secret {secret}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for PythonReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn given_the_reference_library_as_receiver_when_sent_should_verify_through_a_rotation() {
    let (old, new) = (
        Secret::from_bytes(&[3; 24]).unwrap(),
        Secret::from_bytes(&[9; 64]).unwrap(),
    );
    let Some(mut python) = PythonReceiver::start(&[new.to_string(), old.to_string()]) else {
        return;
    };
    let target: reqwest::Url = format!("http://127.0.0.1:{}/hook", python.port)
        .parse()
        .unwrap();
    let sender = loopback_sender();
    // Before, during and after a rotation: old alone, both, new alone.
    for (id, secrets, verified_by) in [
        ("msg_old", vec![&old], "1"),
        ("msg_both", vec![&new, &old], "0,1"),
        ("msg_new", vec![&new], "0"),
    ] {
        let outcome = sender
            .send(&target, &secrets, &[], &message(id), now_s(), TIMEOUT)
            .await;
        let line = python.next_line();
        assert_eq!(line, format!("ok {id} {verified_by}"), "{outcome:?}");
        assert_eq!(outcome.status_code, Some(204));
    }
    // A secret the receiver does not know is refused by it.
    let stranger = Secret::from_bytes(&[5; 32]).unwrap();
    let outcome = sender
        .send(
            &target,
            &[&stranger],
            &[],
            &message("msg_x"),
            now_s(),
            TIMEOUT,
        )
        .await;
    assert!(python.next_line().starts_with("bad msg_x "));
    assert_eq!(outcome.status_code, Some(401));
    assert_eq!(outcome.class, ErrorClass::Status);
}
