//! Bounded resources: WebSocket message size, topic and partition counts,
//! no queue created by a worker fetch, and connection timeouts (a client
//! that sends half a request, or nothing, is disconnected while others are
//! served).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Api, TestServer, expect_json, expect_problem, serve};

/// Far above every timeout these tests configure: only a server that never
/// disconnects reaches it.
const GUARD: Duration = Duration::from_secs(60);

/// A server started with `HERALD_<name>=<value>` for each of `env`, ready.
async fn server_with(env: &[(&str, &str)]) -> (TestServer, crate::support::Api) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    for (name, value) in env {
        command.env(name, value);
    }
    TestServer::ready(TestServer::spawn(dir, command).await).await
}

/// Reads until the server closes the connection (EOF or reset); panics if
/// it is still open after [`GUARD`]. Returns what it read.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(GUARD, async {
        let mut buffer = [0_u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    received
}

#[tokio::test]
async fn given_a_websocket_message_over_the_request_limit_when_sent_should_close_the_socket_without_acting_on_it()
 {
    let (server, api) = server_with(&[("HERALD_LIMITS__MAX_REQUEST_BYTES", "4096")]).await;
    api.create_topic(json!({ "name": "jobs" })).await;
    api.put_group("jobs", "workers", json!({ "mode": "queue" }))
        .await;
    let url = server
        .url("/v1/topics/jobs/groups/workers/ws?member=socket&max=10")
        .replacen("http://", "ws://", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Valid settlement JSON: under the limit it would be answered.
    let ids: Vec<String> = (0..1_000).map(|index| format!("0.0.{index}")).collect();
    let message = json!({ "ack": ids }).to_string();
    assert!(message.len() > 4096);
    socket.send(Message::text(message)).await.unwrap();

    let answered = tokio::time::timeout(GUARD, async {
        while let Some(incoming) = socket.next().await {
            match incoming {
                Ok(Message::Text(text)) => return Some(text.to_string()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    })
    .await
    .expect("the socket stayed open");
    assert_eq!(answered, None, "the oversized message was acted on");
    // The server goes on.
    assert_eq!(api.get("/healthz").await.status(), 200);
}

/// Asserts the problem's status and code, and that its detail names `key`.
async fn refused_naming(response: reqwest::Response, status: u16, code: &str, key: &str) {
    let problem = expect_problem(response, status, code).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(key), "{problem}");
}

#[tokio::test]
async fn given_topic_limits_when_creating_past_them_should_answer_limit_exceeded_and_create_nothing()
 {
    let (_server, api) = server_with(&[
        ("HERALD_LIMITS__MAX_TOPICS", "3"),
        ("HERALD_LIMITS__MAX_PARTITIONS", "6"),
        ("HERALD_LIMITS__MAX_PARTITIONS_PER_TOPIC", "4"),
    ])
    .await;
    let too_wide = api
        .post("/v1/topics", &json!({"name": "wide", "partitions": 5}))
        .await;
    refused_naming(
        too_wide,
        400,
        "invalid_argument",
        "limits.max_partitions_per_topic",
    )
    .await;
    api.create_topic(json!({"name": "a", "partitions": 4}))
        .await;
    let over_partitions = api
        .post("/v1/topics", &json!({"name": "b", "partitions": 3}))
        .await;
    refused_naming(
        over_partitions,
        409,
        "limit_exceeded",
        "limits.max_partitions",
    )
    .await;
    api.create_topic(json!({"name": "b", "partitions": 1}))
        .await;
    api.create_topic(json!({"name": "c", "partitions": 1}))
        .await;
    let over_topics = api.post("/v1/topics", &json!({"name": "d"})).await;
    refused_naming(over_topics, 409, "limit_exceeded", "limits.max_topics").await;
    let listed = expect_json(api.get("/v1/topics").await, 200).await;
    let names: Vec<&str> = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|topic| topic["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    // Deleting one makes room again.
    assert_eq!(api.delete("/v1/topics/c").await.status(), 204);
    api.create_topic(json!({"name": "d"})).await;
}

#[tokio::test]
async fn given_an_unknown_queue_when_a_worker_fetches_should_answer_queue_not_found_and_create_no_topic()
 {
    let (_server, api) = TestServer::start_ready().await;
    let fetched = api
        .post(
            "/v1/queues/typo/fetch",
            &json!({"member": "w1", "max": 1, "wait_ms": 0}),
        )
        .await;
    expect_problem(fetched, 404, "queue_not_found").await;
    let listed = expect_json(api.get("/v1/topics").await, 200).await;
    assert_eq!(listed["topics"], json!([]), "{listed}");

    // A submit creates the queue; then fetching works.
    let submitted = api
        .post("/v1/queues/typo/jobs", &json!({"data": {"n": 1}}))
        .await;
    expect_json(submitted, 202).await;
    let fetched = api
        .post(
            "/v1/queues/typo/fetch",
            &json!({"member": "w1", "max": 1, "wait_ms": 5_000}),
        )
        .await;
    let fetched = expect_json(fetched, 200).await;
    assert_eq!(fetched["deliveries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn given_create_queues_on_fetch_when_a_worker_fetches_an_unknown_queue_should_create_it() {
    let (_server, api) = server_with(&[("HERALD_JOBS__CREATE_QUEUES_ON_FETCH", "true")]).await;
    let fetched = api
        .post(
            "/v1/queues/early/fetch",
            &json!({"member": "w1", "max": 1, "wait_ms": 0}),
        )
        .await;
    let fetched = expect_json(fetched, 200).await;
    assert_eq!(fetched["deliveries"], json!([]));
    assert_eq!(api.get("/v1/topics/jobs.early").await.status(), 200);
}

#[tokio::test]
async fn given_a_client_that_sends_half_a_request_head_when_it_stalls_should_be_disconnected_while_others_are_served()
 {
    // Default settings: the header read timeout is 10 s.
    let (server, api) = TestServer::start_ready().await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: her")
        .await
        .unwrap();
    let others = async {
        for _ in 0..20 {
            assert_eq!(api.get("/healthz").await.status(), 200);
        }
    };
    let (received, ()) = tokio::join!(closed_by_server(&mut stalled), others);
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "the half request was answered: {}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test]
async fn given_clients_that_send_nothing_or_half_a_preface_when_idle_timeout_passes_should_be_disconnected()
 {
    let (server, api) = server_with(&[("HERALD_CONNECTIONS__IDLE_TIMEOUT_MS", "300")]).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half_preface = TcpStream::connect(server.addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (silent_got, preface_got) = tokio::join!(
        closed_by_server(&mut silent),
        closed_by_server(&mut half_preface)
    );
    assert!(silent_got.is_empty());
    assert!(preface_got.is_empty());
    // The server keeps serving. A fresh client: `api`'s pooled connection
    // idled past 300 ms too, and reusing it races its close.
    drop(api);
    assert_eq!(Api::new(&server).get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn given_a_connection_served_several_times_when_it_then_idles_past_idle_timeout_should_be_closed()
 {
    // The header read timeout (which also closes an idle HTTP/1 connection)
    // is far beyond the guard: only the idle timeout, counted from the last
    // answer, can close this one.
    let (server, _api) = server_with(&[
        ("HERALD_CONNECTIONS__IDLE_TIMEOUT_MS", "300"),
        ("HERALD_CONNECTIONS__HEADER_READ_TIMEOUT_MS", "600000"),
    ])
    .await;
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..3 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0_u8; 512];
        let read = kept.read(&mut buffer).await.unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    }
    assert!(closed_by_server(&mut kept).await.is_empty());
}

#[tokio::test]
async fn given_a_request_body_that_stalls_when_idle_timeout_passes_should_fail_and_close_the_connection()
 {
    let (server, _api) = server_with(&[("HERALD_CONNECTIONS__IDLE_TIMEOUT_MS", "300")]).await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/topics HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"name\": ",
        )
        .await
        .unwrap();
    let received = closed_by_server(&mut stalled).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "not refused: {text}"
    );
    // A fresh client: the one that waited for readiness may hold a pooled
    // connection the server has just closed for idling past 300 ms, and
    // reusing it races the close (IncompleteMessage).
    let listed = expect_json(Api::new(&server).get("/v1/topics").await, 200).await;
    assert_eq!(listed["topics"], json!([]));
}

#[tokio::test]
async fn given_a_long_poll_longer_than_the_idle_timeout_when_waiting_should_still_be_answered() {
    let (_server, api) = server_with(&[("HERALD_CONNECTIONS__IDLE_TIMEOUT_MS", "200")]).await;
    api.create_topic(json!({"name": "orders"})).await;
    api.put_group("orders", "billing", json!({"mode": "queue"}))
        .await;
    // In flight for 1.5 s, far past the idle timeout: not idle.
    let fetched: Value = api.fetch("orders", "billing", "m1", 1, 1_500).await;
    assert_eq!(fetched["deliveries"], json!([]));
}

#[tokio::test]
async fn given_an_address_at_its_connection_limit_when_it_connects_again_should_be_closed_while_others_connect()
 {
    let (server, api) = server_with(&[("HERALD_CONNECTIONS__MAX_PER_ADDRESS", "2")]).await;
    drop(api);
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    // Open connections (each served once, kept open) until one is closed
    // unanswered: at most 2 are served at once.
    let mut held = Vec::new();
    loop {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(request).await;
        let mut buffer = [0_u8; 512];
        match stream.read(&mut buffer).await {
            Ok(read) if buffer[..read].starts_with(b"HTTP/1.1 200") => held.push(stream),
            _ => break,
        }
        assert!(
            held.len() <= 2,
            "a third connection from one address was served"
        );
    }
    // Another address (127.0.0.2 is loopback too) has its own count.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(server.addr).await.unwrap();
    other.write_all(request).await.unwrap();
    let mut buffer = [0_u8; 512];
    let read = other.read(&mut buffer).await.unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    // Closing one frees its place.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let mut again = TcpStream::connect(server.addr).await.unwrap();
        let _ = again.write_all(request).await;
        let mut buffer = [0_u8; 512];
        if matches!(again.read(&mut buffer).await, Ok(read) if buffer[..read].starts_with(b"HTTP/1.1 200"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
