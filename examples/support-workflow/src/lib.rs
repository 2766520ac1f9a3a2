//! Scenario 5 of the product: a customer question handled by a durable
//! workflow (`support.yaml`, the Serverless Workflow DSL 1.0).
//!
//! A `customer.question` event on topic `questions` starts an instance
//! (`schedule.on`), which decides whether a human is needed (a `switch`),
//! classifies the question over HTTP (with retries), branches by category
//! to emit a task for an agent on `agent-tasks`, waits for the agent's
//! `question.answered` on `answers` (correlated by question id, with a
//! timeout that escalates), notifies the customer through a flaky service
//! (retried with backoff), closes the question in a CRM, and emits
//! `question.closed` on `support-events`. When a later step fails, or the
//! instance is cancelled while it waits, the agent's task is withdrawn
//! (`question.withdrawn`: the compensation).
//!
//! [`Services`] are the HTTP services the workflow calls (classifier,
//! notifier, CRM), [`spawn_agent`] the agent, [`setup`] creates the topics
//! and deploys the workflow, [`ask`] publishes a question, [`run`] plays it
//! all against a running Herald.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The workflow, with `SERVICES` and `ANSWER_TIMEOUT_MS` to fill in.
pub const WORKFLOW: &str = include_str!("../support.yaml");

/// The workflow's namespace and name.
pub const WORKFLOW_PATH: &str = "support/customer-question";

/// The definition for services at `services` (`http://host:port`) and an
/// agent that must answer within `answer_timeout_ms`.
pub fn definition(services: &str, answer_timeout_ms: u64) -> String {
    WORKFLOW
        .replace("SERVICES", services)
        .replace("ANSWER_TIMEOUT_MS", &answer_timeout_ms.to_string())
}

/// One call a service received.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `/classify`, `/notify` or `/crm/close`.
    pub path: &'static str,
    /// The question it is about.
    pub question: String,
    /// Its `Idempotency-Key` header.
    pub idempotency_key: String,
}

#[derive(Debug, Default)]
struct ServiceState {
    calls: Mutex<Vec<Call>>,
    /// `/notify` fails this many times per question before it succeeds.
    notify_failures: usize,
    /// While set, `/classify` holds its answer until released.
    hold: Mutex<Option<Arc<Notify>>>,
    /// Told when a held request arrived.
    held: Notify,
}

/// The HTTP services the workflow calls: a classifier (by keywords), a
/// notifier that fails the first calls of each question, and a CRM that
/// refuses questions mentioning `crm-down`.
#[derive(Debug)]
pub struct Services {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<ServiceState>,
    stop: CancellationToken,
}

impl Services {
    /// Serves on a free local port; `/notify` fails `notify_failures`
    /// times per question first.
    pub async fn start(notify_failures: usize) -> Result<Self> {
        let state = Arc::new(ServiceState {
            notify_failures,
            ..ServiceState::default()
        });
        let app = axum::Router::new()
            .route("/classify", axum::routing::post(classify))
            .route("/notify", axum::routing::post(notify))
            .route("/crm/close", axum::routing::post(crm_close))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await
        });
        Ok(Self { url, state, stop })
    }

    /// The calls received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default()
    }

    /// From now on `/classify` holds its answers until [`Held::release`];
    /// waits for the next such request to arrive.
    pub fn hold_classifier(&self) -> Held {
        let gate = Arc::new(Notify::new());
        if let Ok(mut hold) = self.state.hold.lock() {
            *hold = Some(Arc::clone(&gate));
        }
        Held {
            state: Arc::clone(&self.state),
            gate,
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Requests to `/classify` held back.
#[derive(Debug)]
pub struct Held {
    state: Arc<ServiceState>,
    gate: Arc<Notify>,
}

impl Held {
    /// Waits until a held request arrived.
    pub async fn arrived(&self) {
        self.state.held.notified().await;
    }

    /// Lets held requests (and later ones) be answered.
    pub fn release(self) {
        if let Ok(mut hold) = self.state.hold.lock() {
            *hold = None;
        }
        self.gate.notify_waiters();
    }
}

fn record(state: &ServiceState, path: &'static str, headers: &HeaderMap, body: &Value) -> usize {
    let question = body["id"]
        .as_str()
        .or_else(|| body["questionId"].as_str())
        .unwrap_or_default()
        .to_owned();
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Ok(mut calls) = state.calls.lock() else {
        return 0;
    };
    calls.push(Call {
        path,
        question: question.clone(),
        idempotency_key,
    });
    calls
        .iter()
        .filter(|call| call.path == path && call.question == question)
        .count()
}

async fn classify(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    record(&state, "/classify", &headers, &body);
    let gate = state.hold.lock().ok().and_then(|hold| hold.clone());
    if let Some(gate) = gate {
        let released = gate.notified();
        state.held.notify_waiters();
        released.await;
    }
    let text = body["text"].as_str().unwrap_or_default().to_lowercase();
    let category = if ["bill", "invoice", "refund"]
        .iter()
        .any(|word| text.contains(word))
    {
        "billing"
    } else if text.contains("password") || text.contains("login") {
        "account"
    } else {
        "general"
    };
    Json(json!({"category": category}))
}

async fn notify(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let seen = record(&state, "/notify", &headers, &body);
    if seen <= state.notify_failures {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn crm_close(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    record(&state, "/crm/close", &headers, &body);
    if body["text"]
        .as_str()
        .unwrap_or_default()
        .contains("crm-down")
    {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn expect(response: reqwest::Response, status: u16) -> Result<Value> {
    let got = response.status().as_u16();
    let text = response.text().await?;
    ensure!(got == status, "expected {status}, got {got}: {text}");
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

/// The topics the workflow uses.
pub const TOPICS: [&str; 4] = ["questions", "agent-tasks", "answers", "support-events"];

/// Creates the topics and deploys the workflow (calling `services`, with
/// agents given `answer_timeout_ms` to answer).
pub async fn setup(server: &str, services: &str, answer_timeout_ms: u64) -> Result<()> {
    let http = reqwest::Client::new();
    for topic in TOPICS {
        let created = http
            .post(format!("{server}/v1/topics"))
            .json(&json!({"name": topic}))
            .send()
            .await
            .context("cannot reach Herald")?;
        ensure!(
            matches!(created.status().as_u16(), 201 | 409),
            "creating topic {topic}: {}",
            created.text().await?
        );
    }
    let deployed = http
        .post(format!("{server}/v1/workflows"))
        .header("content-type", "application/yaml")
        .body(definition(services, answer_timeout_ms))
        .send()
        .await?;
    let status = deployed.status().as_u16();
    ensure!(
        matches!(status, 201 | 409),
        "deploying the workflow: {}",
        deployed.text().await?
    );
    Ok(())
}

/// Publishes a customer question.
pub async fn ask(server: &str, id: &str, text: &str, needs_human: bool) -> Result<()> {
    let event = json!({
        "specversion": "1.0", "id": format!("question-{id}"), "source": "/customers",
        "type": "customer.question",
        "data": {"id": id, "text": text, "needsHuman": needs_human},
    });
    let published = reqwest::Client::new()
        .post(format!("{server}/v1/topics/questions/events"))
        .json(&event)
        .send()
        .await?;
    expect(published, 201).await?;
    Ok(())
}

/// The agent: takes tasks from `agent-tasks` (group `agents`) and answers
/// each on `answers`, except questions that mention `no-answer`.
pub fn spawn_agent(server: &str, stop: CancellationToken) -> tokio::task::JoinHandle<Result<()>> {
    let server = server.to_owned();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let group = format!("{server}/v1/topics/agent-tasks/groups/agents");
        let made = http
            .put(&group)
            .json(&json!({"mode": "queue", "start": "earliest"}))
            .send()
            .await?;
        ensure!(
            matches!(made.status().as_u16(), 200 | 201),
            "creating the agents' group: {}",
            made.text().await?
        );
        while !stop.is_cancelled() {
            let fetched = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                fetched = http
                    .post(format!("{group}/fetch"))
                    .json(&json!({"member": "agent-1", "max": 10, "wait_ms": 500}))
                    .send() => fetched,
            };
            let Ok(fetched) = fetched else {
                // The server restarts in some tests: try again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(fetched) = expect(fetched, 200).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for delivery in fetched["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let task = &delivery["event"]["data"];
                let question = task["questionId"].as_str().unwrap_or_default();
                if !task["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("no-answer")
                {
                    let answer = json!({
                        "specversion": "1.0", "id": format!("answer-{question}"),
                        "source": "/agents", "type": "question.answered",
                        "data": {"questionId": question,
                                 "answer": format!("answer to {question} ({})", task["queue"].as_str().unwrap_or_default())},
                    });
                    expect(
                        http.post(format!("{server}/v1/topics/answers/events"))
                            .json(&answer)
                            .send()
                            .await?,
                        201,
                    )
                    .await?;
                }
                expect(
                    http.post(format!("{group}/ack"))
                        .json(&json!({"delivery_ids": [delivery["delivery_id"]]}))
                        .send()
                        .await?,
                    200,
                )
                .await?;
            }
        }
        Ok(())
    })
}

/// The instance a question started, once it started (within `wait`).
pub async fn instance_of(server: &str, question: &str, wait: Duration) -> Result<Value> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let listed = expect(
            http.get(format!(
                "{server}/v1/workflow-instances?namespace=support&name=customer-question&limit=1000"
            ))
            .send()
            .await?,
            200,
        )
        .await?;
        let found = listed["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|instance| instance["input"][0]["data"]["id"] == question);
        if let Some(instance) = found {
            return Ok(instance.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no instance for question {question}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The instance once it ended (within `wait`).
pub async fn ended(server: &str, instance_id: &str, wait: Duration) -> Result<Value> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait_ms = u64::try_from(left.as_millis())
            .unwrap_or(u64::MAX)
            .min(60_000);
        let instance = expect(
            http.get(format!(
                "{server}/v1/workflow-instances/{instance_id}?wait_ms={wait_ms}"
            ))
            .send()
            .await?,
            200,
        )
        .await?;
        let done = matches!(
            instance["status"].as_str(),
            Some("completed" | "faulted" | "cancelled")
        );
        if done {
            return Ok(instance);
        }
        if left.is_zero() {
            bail!("instance {instance_id} did not end: {instance}");
        }
    }
}

/// The events on `topic` (its first partition), as read.
pub async fn events(server: &str, topic: &str) -> Result<Vec<Value>> {
    let read = expect(
        reqwest::Client::new()
            .get(format!(
                "{server}/v1/topics/{topic}/events?partition=0&from_offset=0&limit=1000"
            ))
            .send()
            .await?,
        200,
    )
    .await?;
    Ok(read["events"].as_array().cloned().unwrap_or_default())
}

/// The support events (`question.closed`, `.escalated`, `.withdrawn`) of
/// each question, in order.
pub async fn outcomes(server: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in events(server, "support-events").await? {
        let question = event["data"]["questionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        outcomes.entry(question).or_default().push(kind);
    }
    Ok(outcomes)
}

/// What [`run`] saw: each question's instance as it ended (one that needs
/// no human ends at once, at the `switch`), and the support events.
#[derive(Debug)]
pub struct Report {
    /// Each question's instance, ended.
    pub instances: BTreeMap<String, Value>,
    /// Each question's support events.
    pub outcomes: BTreeMap<String, Vec<String>>,
    /// The calls the services received.
    pub calls: Vec<Call>,
}

/// Plays the scenario against a running Herald (which must be allowed to
/// call local services: `webhooks.allow_targets = ["127.0.0.1/32"]`): a
/// billing question and a general one answered, one nobody answers
/// (escalated), one the CRM refuses (compensated), and one that needs no
/// human.
pub async fn run(server: &str, answer_timeout_ms: u64) -> Result<Report> {
    let services = Services::start(2).await?;
    setup(server, &services.url, answer_timeout_ms).await?;
    let stop = CancellationToken::new();
    let agent = spawn_agent(server, stop.clone());
    let questions = [
        ("q-bill", "Why is my bill so high?", true),
        ("q-general", "Where is my parcel?", true),
        ("q-silent", "no-answer: anyone?", true),
        ("q-crm", "crm-down: please close", true),
        ("q-self", "How do I reset my password?", false),
    ];
    for (id, text, needs_human) in questions {
        ask(server, id, text, needs_human).await?;
    }
    let mut instances = BTreeMap::new();
    for (id, _, _) in questions {
        let instance = instance_of(server, id, Duration::from_secs(30)).await?;
        let id_of = instance["instance_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let done = ended(
            server,
            &id_of,
            Duration::from_millis(answer_timeout_ms) + Duration::from_secs(30),
        )
        .await?;
        instances.insert(id.to_owned(), done);
    }
    stop.cancel();
    agent.await??;
    Ok(Report {
        instances,
        outcomes: outcomes(server).await?,
        calls: services.calls(),
    })
}
