//! Spawning `herald` and talking to it.
//!
//! Helpers of tests: a step that fails fails the test, with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Generous: a cold machine under a parallel test run is slow to exec.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to stop after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefix of the line `herald serve` prints once bound.
pub const LISTENING: &str = "herald listening on ";

/// `herald <args>` isolated from the caller: no inherited `HERALD_*`
/// variables, `XDG_CONFIG_HOME` at `cwd/.config`, working directory `cwd`,
/// no stdin, killed if dropped.
pub fn herald(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"HERALD_") {
            command.env_remove(name);
        }
    }
    // The CLI's contexts live under XDG_CONFIG_HOME: never the developer's.
    command
        .env("XDG_CONFIG_HOME", cwd.join(".config"))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// `herald serve` in `dir` on port 0, with data directory `dir/data`.
pub fn serve(dir: &Path) -> Command {
    serve_with_data_dir(dir, &dir.join("data"))
}

/// `herald serve` in `cwd` on port 0, with data directory `data_dir`.
///
/// With `HERALD_TEST_NATS_URL` set (`.ci/run` starts a `nats-server -js`
/// for the scenario tests' second run), the server runs on the NATS
/// backend at that URL, its streams under a prefix of its own derived
/// from `data_dir`: tests stay apart, and a server restarted on the same
/// data directory finds its state.
pub fn serve_with_data_dir(cwd: &Path, data_dir: &Path) -> Command {
    serve_at(cwd, data_dir, "127.0.0.1:0")
}

/// [`serve_with_data_dir`] listening on `listen`.
pub fn serve_at(cwd: &Path, data_dir: &Path, listen: &str) -> Command {
    let mut command = herald(cwd);
    command.args(["serve", "--listen", listen, "--data-dir"]);
    command.arg(data_dir);
    if let Some(url) = std::env::var_os("HERALD_TEST_NATS_URL") {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut hasher);
        command
            .args(["--backend", "nats", "--nats-url"])
            .arg(url)
            .env("HERALD_NATS__PREFIX", format!("t{:016x}", hasher.finish()));
    }
    command
}

/// Runs `command` to completion (it must exit within [`STARTUP_TIMEOUT`]).
pub async fn run_to_exit(mut command: Command) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::time::timeout(STARTUP_TIMEOUT, command.output())
        .await
        .expect("herald should exit by itself")
        .expect("herald should spawn")
}

/// The lines of `stderr` that report a fatal error.
pub fn error_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("error:"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that `output` failed with `code` and exactly one `error:` line,
/// which it returns.
pub fn single_error(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    let errors = error_lines(output);
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    errors.into_iter().next().unwrap_or_default()
}

/// A running `herald serve`.
pub struct TestServer {
    /// The address it reported.
    pub addr: SocketAddr,
    /// Its working directory; the data directory is `data` inside it.
    pub dir: TempDir,
    child: Child,
    stderr: JoinHandle<String>,
}

impl TestServer {
    /// Starts a server in a fresh temp directory.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let command = serve(dir.path());
        Self::spawn(dir, command).await
    }

    /// Spawns `command` (a `herald serve`) and waits for its address.
    pub async fn spawn(dir: TempDir, mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald should spawn");
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let stdout = child.stdout.take().unwrap();
        let addr = match tokio::time::timeout(STARTUP_TIMEOUT, read_address(stdout)).await {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                let status = child.wait().await.unwrap();
                panic!(
                    "herald exited ({status}) without listening; stderr:\n{}",
                    stderr.await.unwrap()
                );
            }
            Err(_) => panic!("herald did not report its address in {STARTUP_TIMEOUT:?}"),
        };
        Self {
            addr,
            dir,
            child,
            stderr,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` (`TERM`, `INT`) to the server.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("server still running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits for the server to exit (within [`EXIT_TIMEOUT`]); returns its
    /// status and everything it wrote to stderr.
    pub async fn wait(mut self) -> (ExitStatus, String, TempDir) {
        let status = tokio::time::timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("herald did not exit within {EXIT_TIMEOUT:?}"))
            .unwrap();
        let stderr = self.stderr.await.unwrap();
        (status, stderr, self.dir)
    }
}

/// Reads stdout until the listening line; `None` if stdout closes first.
async fn read_address(stdout: ChildStdout) -> Option<SocketAddr> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await.ok()? {
        if let Some(addr) = line.strip_prefix(LISTENING) {
            return Some(addr.trim().parse().expect("a socket address"));
        }
    }
    None
}

/// Polls `url` until it answers `status`, for at most [`STARTUP_TIMEOUT`].
pub async fn wait_for_status(
    client: &reqwest::Client,
    url: &str,
    status: u16,
) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let response = client.get(url).send().await.unwrap();
        if response.status().as_u16() == status {
            return response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} still answers {} after {STARTUP_TIMEOUT:?}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestServer {
    /// Starts a server in a fresh temp directory and waits until it is ready
    /// (storage open).
    pub async fn start_ready() -> (Self, Api) {
        Self::ready(Self::start().await).await
    }

    /// Waits until `server` is ready; returns it with a client for it.
    pub async fn ready(server: Self) -> (Self, Api) {
        let api = Api::new(&server);
        wait_for_status(&api.client, &server.url("/readyz"), 200).await;
        (server, api)
    }
}

/// A JSON client for one server's REST API.
#[derive(Clone, Debug)]
pub struct Api {
    /// The HTTP client.
    pub client: reqwest::Client,
    base: String,
}

impl Api {
    /// A client for `server`.
    pub fn new(server: &TestServer) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: server.url(""),
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The same server, every request with `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        Self {
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            base: self.base.clone(),
        }
    }

    /// Creates an API key with `permissions` (this client must be `admin`);
    /// returns its token.
    pub async fn create_key(&self, name: &str, permissions: Value) -> String {
        let created = expect_json(
            self.post(
                "/v1/auth/keys",
                &json!({ "name": name, "permissions": permissions }),
            )
            .await,
            201,
        )
        .await;
        created["key"].as_str().unwrap().to_owned()
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `method path` with raw bytes, a content type (if any) and headers.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(body).send().await.unwrap()
    }

    /// `POST path` with raw bytes (see [`Api::send_raw`]).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.send_raw(reqwest::Method::POST, path, content_type, headers, body)
            .await
    }

    /// `POST /v1/topics` → the topic (asserts 201).
    pub async fn create_topic(&self, spec: Value) -> Value {
        expect_json(self.post("/v1/topics", &spec).await, 201).await
    }

    /// Publishes a batch → the `results` (asserts 201).
    pub async fn publish(&self, topic: &str, events: Value) -> Vec<Value> {
        let response = self
            .post_raw(
                &format!("/v1/topics/{topic}/events"),
                Some("application/cloudevents-batch+json"),
                &[],
                events.to_string(),
            )
            .await;
        let body = expect_json(response, 201).await;
        body["results"].as_array().unwrap().clone()
    }

    /// `PUT` a group → its answer (asserts 200 or 201).
    /// Every event of one partition, as `(offset, event)`, read page by
    /// page from offset 0.
    pub async fn partition_events(&self, topic: &str, partition: u32) -> Vec<(u64, Value)> {
        let mut events = Vec::new();
        let mut from = 0;
        loop {
            let page = expect_json(
                self.get(&format!(
                    "/v1/topics/{topic}/events?partition={partition}&from_offset={from}&limit=100"
                ))
                .await,
                200,
            )
            .await;
            let batch = page["events"].as_array().unwrap();
            if batch.is_empty() {
                return events;
            }
            for event in batch {
                events.push((event["offset"].as_u64().unwrap(), event.clone()));
            }
            from = page["next_offset"].as_u64().unwrap();
        }
    }

    pub async fn put_group(&self, topic: &str, group: &str, spec: Value) -> Value {
        let response = self
            .put(&format!("/v1/topics/{topic}/groups/{group}"), &spec)
            .await;
        let status = response.status().as_u16();
        assert!(status == 200 || status == 201, "PUT group: {status}");
        response.json().await.unwrap()
    }

    /// `POST .../groups/{group}/<action>` → the JSON answer (asserts 200).
    pub async fn group_call(&self, topic: &str, group: &str, action: &str, body: Value) -> Value {
        let response = self
            .post(
                &format!("/v1/topics/{topic}/groups/{group}/{action}"),
                &body,
            )
            .await;
        expect_json(response, 200).await
    }

    /// A fetch → the whole answer (asserts 200).
    pub async fn fetch(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        max: u32,
        wait_ms: u64,
    ) -> Value {
        self.group_call(
            topic,
            group,
            "fetch",
            json!({"member": member, "max": max, "wait_ms": wait_ms}),
        )
        .await
    }

    /// Fetches until a fetch that waited `quiet_ms` brings nothing; returns
    /// every delivery.
    pub async fn drain(&self, topic: &str, group: &str, member: &str, quiet_ms: u64) -> Vec<Value> {
        let mut deliveries = Vec::new();
        loop {
            let fetched = self.fetch(topic, group, member, 1000, quiet_ms).await;
            let batch = fetched["deliveries"].as_array().unwrap().clone();
            if batch.is_empty() {
                return deliveries;
            }
            deliveries.extend(batch);
        }
    }

    /// `GET` a group's status (asserts 200).
    pub async fn group_status(&self, topic: &str, group: &str) -> Value {
        expect_json(
            self.get(&format!("/v1/topics/{topic}/groups/{group}"))
                .await,
            200,
        )
        .await
    }
}

/// Asserts `status` and returns the JSON body.
pub async fn expect_json(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// Asserts that `response` is an RFC 9457 problem with `status` and `code`;
/// returns it.
pub async fn expect_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    let retry_after = response.headers().contains_key("retry-after");
    let problem = expect_json(response, status).await;
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{problem}"
    );
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(problem["status"], status, "{problem}");
    assert_eq!(
        problem["type"],
        format!("urn:herald:problem:{code}"),
        "{problem}"
    );
    assert!(
        problem["title"]
            .as_str()
            .is_some_and(|title| !title.is_empty())
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty())
    );
    assert_eq!(
        retry_after,
        status == 503 || status == 429,
        "Retry-After on 503 only: {problem}"
    );
    problem
}

/// The `event.id` of each delivery.
pub fn delivered_ids(deliveries: &[Value]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery["event"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The `delivery_id` of each delivery.
pub fn delivery_ids(deliveries: &[Value]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery["delivery_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A structured-mode event with `id` (and the required attributes).
pub fn event(id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/tests",
        "type": "test.event",
        "data": {"id": id},
    })
}

/// One Server-Sent Events frame that carried data.
#[derive(Debug, Clone)]
pub struct SseFrame {
    /// Its `event:` type, if any.
    pub event: Option<String>,
    /// Its `id:`, if any.
    pub id: Option<String>,
    /// Its `data:`, parsed as JSON.
    pub data: Value,
}

/// Reads SSE frames with data until `done` says so (each chunk within 20 s).
pub async fn sse_frames(
    response: reqwest::Response,
    mut done: impl FnMut(&[SseFrame]) -> bool,
) -> Vec<SseFrame> {
    use futures::StreamExt as _;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut frames = Vec::new();
    while !done(&frames) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an SSE frame within 20 s")
            .expect("the stream went on")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(|value| value.trim().to_owned())
            };
            if let Some(data) = field("data:") {
                frames.push(SseFrame {
                    event: field("event:"),
                    id: field("id:"),
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
        }
    }
    frames
}

/// The prefixes of the metric families `docs/grafana/herald.json` queries,
/// each checked by the test that exercises that part.
pub const DASHBOARD_PREFIXES: &[&str] = &[
    "herald_group_",
    "herald_topic_",
    "herald_log_",
    "herald_http_",
    "herald_job_",
    "herald_webhook_",
    "herald_workflow_",
];

/// The metric families the Grafana dashboard queries (sample suffixes
/// `_bucket`, `_count`, `_sum` and `_total` taken off).
pub fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/herald.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut rest = target["expr"].as_str().unwrap();
            while let Some(start) = rest.find("herald_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                rest = &rest[start + name.len()..];
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_owned();
                queried.insert(family);
            }
        }
    }
    queried
}

/// Asserts that every family the dashboard queries under `prefixes` is in
/// the scraped `text` (a family shows once it has a sample).
pub fn assert_dashboard_metrics(text: &str, prefixes: &[&str]) {
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| prefixes.iter().any(|prefix| name.starts_with(prefix)))
        .filter(|name| !families.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/grafana/herald.json queries {missing:?}, not in:\n{text}"
    );
}
