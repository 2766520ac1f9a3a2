//! Instances run by the engine on the real default backend, one test per
//! task type and per rule of the DSL's reference, plus the durable ones:
//! restarts in the middle of a wait, an HTTP call not repeated once
//! recorded, cancel with compensation, suspend and resume, retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_backend::{Backend, TopicSpec};
use herald_types::{Event, EventInput, TopicName};
use herald_workflows::{Engine, InstanceView, Options, Status};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::open;

const SETTLE: Duration = Duration::from_secs(30);

struct Harness {
    dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    engine: Engine,
    jobs: herald_jobs::Handle,
    jobs_stop: CancellationToken,
    jobs_task: tokio::task::JoinHandle<()>,
    max_history_records: usize,
}

impl Harness {
    async fn start() -> Self {
        Self::on(
            tempfile::tempdir().unwrap(),
            Options::default().max_history_records,
        )
        .await
    }

    /// An engine whose instances' histories hold at most `max_history_records`.
    async fn bounded(max_history_records: usize) -> Self {
        Self::on(tempfile::tempdir().unwrap(), max_history_records).await
    }

    async fn on(dir: tempfile::TempDir, max_history_records: usize) -> Self {
        let backend = open(dir.path()).await;
        let policy = herald_webhooks::TargetPolicy::new(&["127.0.0.1"]).unwrap();
        let sender = herald_webhooks::Sender::new(policy, Duration::from_secs(2)).unwrap();
        let options = Options {
            http_timeout: Duration::from_secs(5),
            max_history_records,
            ..Options::default()
        };
        let service = herald_jobs::Service::start(
            Arc::clone(&backend),
            herald_jobs::Options::default(),
            Arc::new(herald_jobs::SystemClock),
        )
        .await
        .unwrap();
        let jobs = service.handle();
        let jobs_stop = CancellationToken::new();
        let jobs_task = tokio::spawn(service.run(jobs_stop.clone()));
        let engine = Engine::start(
            Arc::clone(&backend),
            herald_workflows::Services {
                http: Some(sender),
                jobs: Some(jobs.clone()),
            },
            options,
            Arc::new(herald_workflows::WorkflowMetrics::default()),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        engine.recover().await.unwrap();
        Self {
            dir,
            backend,
            engine,
            jobs,
            jobs_stop,
            jobs_task,
            max_history_records,
        }
    }

    /// Stops the engine where it is (its instances resume at the next
    /// start) and opens everything again.
    async fn restart(self) -> Self {
        let Self {
            dir,
            backend,
            engine,
            jobs,
            jobs_stop,
            jobs_task,
            max_history_records,
        } = self;
        engine.shutdown().await;
        jobs_stop.cancel();
        jobs_task.await.unwrap();
        drop(jobs);
        drop(engine);
        backend.shutdown().await.unwrap();
        drop(backend);
        Self::on(dir, max_history_records).await
    }

    async fn deploy(&self, yaml: &str) {
        self.engine
            .deploy(yaml, "2026-12-03T00:00:00.000Z".into())
            .await
            .unwrap();
    }

    async fn start_instance(&self, name: &str, input: Value) -> String {
        self.engine
            .start_instance("test", name, None, input)
            .await
            .unwrap()
            .instance_id
    }

    async fn ended(&self, id: &str) -> InstanceView {
        let view = self.engine.wait(id, SETTLE).await.unwrap();
        assert!(view.status.ended(), "not ended: {view:?}");
        view
    }

    async fn run(&self, name: &str, input: Value) -> InstanceView {
        let id = self.start_instance(name, input).await;
        self.ended(&id).await
    }

    async fn until_status(&self, id: &str, status: Status) -> InstanceView {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let view = self.engine.get(id).await.unwrap();
            if view.status == status {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {status:?}: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn topic(&self, name: &str) {
        self.backend
            .create_topic(TopicSpec::new(TopicName::try_from(name).unwrap()))
            .await
            .unwrap();
    }

    async fn publish(&self, topic: &str, ty: &str, data: Value) {
        let mut event = Event::new(Event::generate_id(0), "/test", ty);
        event.data = Some(serde_json::to_vec(&data).unwrap().into());
        event.datacontenttype = Some("application/json".into());
        self.backend
            .publish(
                &TopicName::try_from(topic).unwrap(),
                vec![EventInput {
                    event,
                    partition: None,
                }],
            )
            .await
            .unwrap();
    }

    async fn events(&self, topic: &str) -> Vec<Value> {
        let read = self
            .backend
            .read(&TopicName::try_from(topic).unwrap(), 0, 0, 100)
            .await
            .unwrap();
        read.events
            .iter()
            .map(|stored| serde_json::to_value(stored).unwrap())
            .collect()
    }
}

fn workflow(name: &str, body: &str) -> String {
    format!("document: {{ dsl: '1.0.0', namespace: test, name: {name}, version: '1' }}\n{body}")
}

/// A request as received: its request line, JSON body and header lines
/// (lowercased).
type Received = (String, Value, Vec<String>);

/// A tiny HTTP/1.1 server answering each request with the next of
/// `answers` (the last one again once they run out), keeping what it got.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(answers: Vec<(u16, Value)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let got = Arc::clone(&got);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(read) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                        let text = String::from_utf8_lossy(&buffer).into_owned();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let head = &text[..end];
                        let length = head
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buffer.len() < end + 4 + length {
                            continue;
                        }
                        let body: Value =
                            serde_json::from_slice(&buffer[end + 4..end + 4 + length])
                                .unwrap_or(Value::Null);
                        let mut lines = head.lines();
                        let request_line = lines.next().unwrap_or_default().to_owned();
                        let headers: Vec<String> = lines.map(str::to_lowercase).collect();
                        let index = {
                            let mut got = got.lock().unwrap();
                            got.push((request_line, body, headers));
                            got.len() - 1
                        };
                        let (status, answer) = answers[index.min(answers.len() - 1)].clone();
                        let answer = answer.to_string();
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        return;
                    }
                });
            }
        });
        Self { url, requests }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

#[tokio::test]
async fn given_set_switch_and_transforms_should_flow_data_as_the_dsl_says() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "flow",
            r#"
input: { from: '{ order: .order, skip: .skip }' }
do:
  - start: { set: { total: '${ .order.items | map(.price) | add }', skip: '${ .skip }' }, export: { as: '$context + { seen: .total }' } }
  - skipped: { if: '.skip | not', set: { total: -1 } }
  - route:
      switch:
        - big: { when: '.total > 100', then: discount }
        - small: { then: exit }
  - unreachable: { set: { never: true } }
  - discount: { set: { total: '${ .total * 0.9 }', context: '${ $context.seen }' }, output: { as: '.total' } }
output: { as: '{ result: ., input: $workflow.input.order.id }' }
"#,
        ))
        .await;
    let view = harness
        .run(
            "flow",
            json!({"order": {"id": "o1", "items": [{"price": 100}, {"price": 20}]}, "skip": true, "extra": 1}),
        )
        .await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"result": 108.0, "input": "o1"})));
    // `then: exit` at the top ends the workflow with the input it had.
    let small = harness
        .run(
            "flow",
            json!({"order": {"id": "o2", "items": [{"price": 5}]}, "skip": false}),
        )
        .await;
    assert_eq!(
        small.output,
        Some(json!({"result": {"total": -1}, "input": "o2"}))
    );
}

#[tokio::test]
async fn given_for_loops_should_iterate_stop_at_while_and_exit() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "loops",
            r#"
do:
  - init: { set: { sum: 0 } }
  - add:
      for: { each: n, in: '$workflow.input.numbers', at: i }
      while: '.sum < 10'
      do:
        - step: { set: { sum: '${ .sum + $n }', last: '${ $i }' } }
        - stopAtNegative:
            switch:
              - negative: { when: '$n < 0', then: exit }
              - other: { then: continue }
"#,
        ))
        .await;
    let view = harness.run("loops", json!({"numbers": [1, 2, 3]})).await;
    assert_eq!(view.output, Some(json!({"sum": 6, "last": 2})));
    // `while` is checked before each iteration.
    let view = harness.run("loops", json!({"numbers": [5, 6, 7, 8]})).await;
    assert_eq!(view.output, Some(json!({"sum": 11, "last": 1})));
    // `then: exit` inside the body leaves the loop.
    let view = harness.run("loops", json!({"numbers": [1, -1, 100]})).await;
    assert_eq!(view.output, Some(json!({"sum": 0, "last": 1})));
}

#[tokio::test]
async fn given_forks_should_gather_in_order_or_take_the_winner() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "forks",
            r#"
do:
  - all:
      fork:
        branches:
          - slow: { wait: { milliseconds: 50 }, output: { as: '"slow"' } }
          - fast: { set: { v: fast }, output: { as: .v } }
  - race:
      fork:
        compete: true
        branches:
          - tortoise: { wait: PT1H, output: { as: '"tortoise"' } }
          - hare: { set: { v: hare }, output: { as: .v } }
      output: { as: '{ race: . }' }
"#,
        ))
        .await;
    let view = harness.run("forks", json!({})).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"race": "hare"})));
    let history = harness.engine.history(&view.instance_id).await.unwrap();
    let all = history.iter().find(|step| step.task == "all").unwrap();
    assert_eq!(all.output, Some(json!(["slow", "fast"])));
}

#[tokio::test]
async fn given_raise_and_catch_filters_should_catch_only_what_they_name() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "errors",
            r#"
use:
  errors:
    notFound: { type: https://example.com/not-found, status: 404, title: Not found }
do:
  - guarded:
      try:
        - fail: { raise: { error: notFound } }
      catch:
        errors: { with: { type: https://example.com/not-found } }
        as: problem
        when: '$problem.status == 404'
        do:
          - note: { set: { caught: '${ $problem.type }', at: '${ $problem.instance }' } }
  - unguarded:
      try:
        - fail: { raise: { error: { type: https://example.com/boom, status: '${ 400 + 18 }', detail: '${ "input " + (.caught | tostring) }' } } }
      catch:
        errors: { with: { status: 404 } }
"#,
        ))
        .await;
    let view = harness.run("errors", json!({})).await;
    assert_eq!(view.status, Status::Faulted, "{view:?}");
    let error = view.error.unwrap();
    assert_eq!(error.type_, "https://example.com/boom");
    assert_eq!(error.status, 418);
    assert_eq!(
        error.detail.as_deref(),
        Some("input https://example.com/not-found")
    );
    assert_eq!(
        error.instance.as_deref(),
        Some("/do/1/unguarded/try/0/fail")
    );
    let history = harness.engine.history(&view.instance_id).await.unwrap();
    let note = history.iter().find(|step| step.task == "note").unwrap();
    assert_eq!(
        note.output,
        Some(json!({"caught": "https://example.com/not-found", "at": "/do/0/guarded/try/0/fail"}))
    );
}

#[tokio::test]
async fn given_an_openapi_call_should_load_the_document_once_and_call_the_operation() {
    let document = json!({
        "openapi": "3.0.3",
        "info": {"title": "pets", "version": "1"},
        "paths": {
            "/pets/{petId}": {
                "parameters": [{"name": "petId", "in": "path", "required": true}],
                "get": {
                    "operationId": "getPetById",
                    "parameters": [
                        {"name": "verbose", "in": "query"},
                        {"name": "x-tenant", "in": "header", "required": true}
                    ]
                }
            }
        }
    });
    let pet = json!({"id": 7, "name": "Rex"});
    let receiver = Receiver::start(vec![
        (200, document),
        (200, pet.clone()),
        (200, pet.clone()),
    ])
    .await;
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "pets",
            &format!(
                r#"
do:
  - getPet:
      call: openapi
      with:
        document: {{ endpoint: '{}/specs/pets.json' }}
        operationId: getPetById
        parameters: {{ petId: '${{ .id }}', verbose: true, x-tenant: acme }}
"#,
                receiver.url
            ),
        ))
        .await;
    for _ in 0..2 {
        let view = harness.run("pets", json!({"id": 7})).await;
        assert_eq!(view.status, Status::Completed, "{view:?}");
        assert_eq!(view.output, Some(pet.clone()));
    }
    let requests = receiver.requests.lock().unwrap().clone();
    // The document once, then the operation twice (servers: none, so the
    // document's own origin).
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[0].0, "GET /specs/pets.json HTTP/1.1");
    for (line, _, headers) in &requests[1..] {
        assert_eq!(line, "GET /pets/7?verbose=true HTTP/1.1");
        assert!(
            headers.contains(&"x-tenant: acme".to_owned()),
            "{headers:?}"
        );
        assert!(
            headers
                .iter()
                .any(|header| header.starts_with("idempotency-key: ")),
            "{headers:?}"
        );
    }
    // An unknown operation is a validation error the instance faults with.
    harness
        .deploy(&workflow(
            "nopets",
            &format!(
                "do:\n  - x: {{ call: openapi, with: {{ document: {{ content: {{ openapi: 3.0.3, servers: [ {{ url: '{}' }} ], paths: {{}} }} }}, operationId: nothing }} }}\n",
                receiver.url
            ),
        ))
        .await;
    let view = harness.run("nopets", json!({})).await;
    assert_eq!(view.status, Status::Faulted);
    let error = view.error.unwrap();
    assert!(error.type_.ends_with("/errors/validation"), "{error:?}");
    assert!(error.detail.unwrap().contains("nothing"));
}

#[tokio::test]
async fn given_a_flaky_service_should_retry_with_backoff_up_to_the_limit() {
    let harness = Harness::start().await;
    let flaky = Receiver::start(vec![
        (503, json!({"error": "busy"})),
        (503, json!({"error": "busy"})),
        (200, json!({"category": "billing"})),
    ])
    .await;
    harness
        .deploy(&workflow(
            "retry",
            &format!(
                r#"
use:
  retries:
    quick: {{ delay: {{ milliseconds: 20 }}, backoff: {{ exponential: {{}} }}, limit: {{ attempt: {{ count: 3 }} }} }}
do:
  - classify:
      try:
        - call: {{ call: http, with: {{ method: post, endpoint: '{url}/classify/{{id}}', body: {{ text: '${{ .text }}' }} }} }}
      catch:
        errors: {{ with: {{ type: https://serverlessworkflow.io/spec/1.0.0/errors/communication }} }}
        retry: quick
"#,
                url = flaky.url
            ),
        ))
        .await;
    let view = harness.run("retry", json!({"id": 7, "text": "hi"})).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"category": "billing"})));
    let requests = flaky.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[0].0.starts_with("POST /classify/7 "),
        "{requests:?}"
    );
    assert_eq!(requests[0].1, json!({"text": "hi"}));
    // Each attempt is a call of its own, with a key of its own.
    let keys: Vec<&String> = requests
        .iter()
        .filter_map(|(_, _, headers)| headers.iter().find(|h| h.starts_with("idempotency-key:")))
        .collect();
    assert_eq!(keys.len(), 3);
    assert_ne!(keys[0], keys[1]);

    // Never answering 2xx: three attempts, then the error.
    let down = Receiver::start(vec![(503, json!({}))]).await;
    harness
        .deploy(
            &workflow(
                "retry",
                &format!(
                    r#"
use:
  retries:
    quick: {{ delay: {{ milliseconds: 5 }}, limit: {{ attempt: {{ count: 3 }} }} }}
do:
  - classify:
      try:
        - call: {{ call: http, with: {{ method: get, endpoint: '{url}/x' }} }}
      catch:
        errors: {{ with: {{ type: https://serverlessworkflow.io/spec/1.0.0/errors/communication }} }}
        retry: quick
"#,
                    url = down.url
                ),
            )
            .replace("version: '1'", "version: '2'"),
        )
        .await;
    let view = harness.run("retry", json!({})).await;
    assert_eq!(view.status, Status::Faulted, "{view:?}");
    let error = view.error.unwrap();
    assert_eq!(
        error.type_,
        "https://serverlessworkflow.io/spec/1.0.0/errors/communication"
    );
    assert_eq!(error.status, 503);
    assert_eq!(down.count(), 3);
    let history = harness.engine.history(&view.instance_id).await.unwrap();
    assert_eq!(
        history
            .iter()
            .find(|step| step.task == "classify")
            .unwrap()
            .attempt,
        3
    );
}

#[tokio::test]
async fn given_a_restart_during_a_wait_should_fire_at_the_recorded_time_and_not_call_again() {
    let harness = Harness::start().await;
    let service = Receiver::start(vec![(200, json!({"ok": true}))]).await;
    harness
        .deploy(&workflow(
            "durable",
            &format!(
                r#"
do:
  - before: {{ call: http, with: {{ method: post, endpoint: '{url}/before' }} }}
  - nap: {{ wait: {{ milliseconds: 1500 }} }}
  - after: {{ set: {{ done: true }} }}
"#,
                url = service.url
            ),
        ))
        .await;
    let id = harness.start_instance("durable", json!({})).await;
    harness.until_status(&id, Status::Waiting).await;
    let harness = harness.restart().await;
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"done": true})));
    // The call before the wait was recorded: not made again on replay.
    assert_eq!(service.count(), 1);
    // The timer kept its due time: it fired neither at once nor reset.
    let history = harness.engine.history(&id).await.unwrap();
    let nap = history.iter().find(|step| step.task == "nap").unwrap();
    let (began, ended) = (
        herald_types::parse_rfc3339_ms(nap.started_at.as_deref().unwrap()).unwrap(),
        herald_types::parse_rfc3339_ms(nap.ended_at.as_deref().unwrap()).unwrap(),
    );
    assert!(ended - began >= 1500, "fired after {} ms", ended - began);
    // Not reset by the replay: its due time was recorded once, and kept.
    let records = harness
        .engine
        .records(&id, 0, Duration::ZERO)
        .await
        .unwrap();
    let timers: Vec<i64> = records
        .iter()
        .filter_map(|(_, record)| match record {
            herald_workflows::history::Record::TimerSet { due, .. } => Some(*due),
            _ => None,
        })
        .collect();
    assert_eq!(timers.len(), 1, "{records:?}");
}

#[tokio::test]
async fn given_emit_and_listen_should_publish_and_wait_for_the_correlated_answer() {
    let harness = Harness::start().await;
    harness.topic("tasks").await;
    harness.topic("answers").await;
    harness
        .deploy(&workflow(
            "ask",
            r#"
do:
  - ask:
      emit:
        event:
          with: { topic: tasks, source: /support, type: agent.task, data: '${ { question: .text } }' }
  - answer:
      listen:
        to:
          one:
            with: { topic: answers, type: question.answered }
            correlate: { question: { from: .data.questionId, expect: '${ $workflow.input.id }' } }
      output: { as: '.[0].answer' }
"#,
        ))
        .await;
    let id = harness
        .start_instance("ask", json!({"id": "q1", "text": "why?"}))
        .await;
    harness.until_status(&id, Status::Waiting).await;
    let tasks = harness.events("tasks").await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["type"], "agent.task");
    assert_eq!(tasks[0]["data"], json!({"question": "why?"}));
    assert_eq!(tasks[0]["causationid"], json!(id));
    // Another question's answer and another type do not end the wait.
    harness
        .publish(
            "answers",
            "question.answered",
            json!({"questionId": "q2", "answer": "no"}),
        )
        .await;
    harness
        .publish(
            "answers",
            "other.type",
            json!({"questionId": "q1", "answer": "no"}),
        )
        .await;
    harness
        .publish(
            "answers",
            "question.answered",
            json!({"questionId": "q1", "answer": "because"}),
        )
        .await;
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!("because")));
}

#[tokio::test]
async fn given_a_listen_that_times_out_should_raise_timeout_for_the_catch() {
    let harness = Harness::start().await;
    harness.topic("answers").await;
    harness
        .deploy(&workflow(
            "late",
            r#"
do:
  - wait:
      try:
        - answer:
            listen: { to: { one: { with: { topic: answers, type: never } } } }
            timeout: { after: { milliseconds: 200 } }
      catch:
        errors: { with: { type: https://serverlessworkflow.io/spec/1.0.0/errors/timeout } }
        as: late
        do:
          - escalate: { set: { escalated: true, status: '${ $late.status }' } }
"#,
        ))
        .await;
    let view = harness.run("late", json!({})).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"escalated": true, "status": 408})));
}

#[tokio::test]
async fn given_listen_any_until_a_strategy_should_collect_until_its_event_comes() {
    let harness = Harness::start().await;
    harness.topic("carts").await;
    harness
        .deploy(&workflow(
            "cart",
            r#"
do:
  - collect:
      listen:
        to:
          any: [ { with: { topic: carts, type: item.added } } ]
          until: { one: { with: { topic: carts, type: cart.closed } } }
  - count: { set: { items: '${ map(.sku) }' } }
"#,
        ))
        .await;
    let id = harness.start_instance("cart", json!({})).await;
    harness.until_status(&id, Status::Waiting).await;
    harness
        .publish("carts", "item.added", json!({"sku": "a"}))
        .await;
    harness
        .publish("carts", "other", json!({"sku": "ignored"}))
        .await;
    harness
        .publish("carts", "item.added", json!({"sku": "b"}))
        .await;
    harness
        .publish("carts", "cart.closed", json!({"sku": "not an item"}))
        .await;
    harness
        .publish("carts", "item.added", json!({"sku": "too late"}))
        .await;
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"items": ["a", "b"]})));
}

#[tokio::test]
async fn given_a_cancel_during_a_wait_should_run_the_compensation_and_end_cancelled() {
    let harness = Harness::start().await;
    harness.topic("ledger").await;
    harness
        .deploy(&workflow(
            "booking",
            r#"
do:
  - book:
      try:
        - reserve: { emit: { event: { with: { topic: ledger, source: /b, type: reserved } } } }
        - hold: { wait: PT1H }
      catch:
        do:
          - release: { emit: { event: { with: { topic: ledger, source: /b, type: released } } } }
"#,
        ))
        .await;
    let id = harness.start_instance("booking", json!({})).await;
    harness.until_status(&id, Status::Waiting).await;
    harness.engine.cancel(&id).await.unwrap();
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Cancelled, "{view:?}");
    let types: Vec<Value> = harness
        .events("ledger")
        .await
        .iter()
        .map(|event| event["type"].clone())
        .collect();
    assert_eq!(types, [json!("reserved"), json!("released")]);
    // An ended instance cannot be cancelled again.
    assert!(matches!(
        harness.engine.cancel(&id).await,
        Err(herald_workflows::EngineError::Ended("cancelled"))
    ));
}

#[tokio::test]
async fn given_a_suspended_instance_should_stop_and_resume_where_it_was() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "pausable",
            r#"
do:
  - first: { set: { step: 1 } }
  - nap: { wait: { milliseconds: 300 } }
  - second: { set: { step: 2 } }
"#,
        ))
        .await;
    let id = harness.start_instance("pausable", json!({})).await;
    harness.until_status(&id, Status::Waiting).await;
    harness.engine.suspend(&id).await.unwrap();
    harness.until_status(&id, Status::Suspended).await;
    // Past the timer's due time it stays suspended.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        harness.engine.get(&id).await.unwrap().status,
        Status::Suspended
    );
    // Survives a restart suspended.
    let harness = harness.restart().await;
    harness.until_status(&id, Status::Suspended).await;
    harness.engine.resume(&id).await.unwrap();
    let view = harness.ended(&id).await;
    assert_eq!(view.output, Some(json!({"step": 2})));
}

#[tokio::test]
async fn given_a_faulted_instance_when_retried_should_run_from_the_failed_task() {
    let harness = Harness::start().await;
    let service = Receiver::start(vec![
        (200, json!({"n": 1})),
        (500, json!({})),
        (200, json!({"n": 2})),
    ])
    .await;
    harness
        .deploy(&workflow(
            "resumable",
            &format!(
                r#"
do:
  - one: {{ call: http, with: {{ method: get, endpoint: '{url}/one' }} }}
  - two: {{ call: http, with: {{ method: get, endpoint: '{url}/two' }} }}
"#,
                url = service.url
            ),
        ))
        .await;
    let view = harness.run("resumable", json!({})).await;
    assert_eq!(view.status, Status::Faulted, "{view:?}");
    assert_eq!(view.error.as_ref().unwrap().status, 500);
    assert!(matches!(
        harness.engine.resume(&view.instance_id).await,
        Err(herald_workflows::EngineError::Ended("faulted"))
    ));
    harness.engine.retry(&view.instance_id).await.unwrap();
    let view = harness.ended(&view.instance_id).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"n": 2})));
    // `one` completed before the fault: not called again.
    assert_eq!(service.count(), 3);
}

#[tokio::test]
async fn given_a_new_version_deployed_while_an_instance_waits_should_keep_it_on_its_version() {
    let harness = Harness::start().await;
    let body = |label: &str| {
        format!(
            "do:\n  - nap: {{ wait: {{ milliseconds: 300 }} }}\n  - label: {{ set: {{ version: {label} }} }}\n"
        )
    };
    harness.deploy(&workflow("versioned", &body("one"))).await;
    let id = harness.start_instance("versioned", json!({})).await;
    harness.until_status(&id, Status::Waiting).await;
    harness
        .deploy(&workflow("versioned", &body("two")).replace("version: '1'", "version: '2'"))
        .await;
    let view = harness.ended(&id).await;
    assert_eq!(
        (view.version.as_str(), view.output),
        ("1", Some(json!({"version": "one"})))
    );
    let newer = harness.run("versioned", json!({})).await;
    assert_eq!(
        (newer.version.as_str(), newer.output),
        ("2", Some(json!({"version": "two"})))
    );
}

#[tokio::test]
async fn given_schedule_on_should_start_one_instance_per_matching_event_even_after_a_restart() {
    let harness = Harness::start().await;
    harness.topic("questions").await;
    harness
        .deploy(&workflow(
            "triage",
            r#"
schedule: { on: { one: { with: { topic: questions, type: question.asked } } } }
do:
  - read: { set: { text: '${ $workflow.input[0].data.text }', id: '${ $workflow.input[0].id }' } }
"#,
        ))
        .await;
    let list = |harness: &Harness| {
        let engine = harness.engine.clone();
        async move {
            engine
                .list(
                    &herald_workflows::ListFilter {
                        name: Some("triage".into()),
                        ..Default::default()
                    },
                    100,
                )
                .await
                .unwrap()
        }
    };
    harness
        .publish("questions", "question.asked", json!({"text": "one"}))
        .await;
    harness
        .publish("questions", "other.thing", json!({"text": "not me"}))
        .await;
    harness
        .publish("questions", "question.asked", json!({"text": "two"}))
        .await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    let instances = loop {
        let instances = list(&harness).await;
        if instances.len() >= 2 && instances.iter().all(|view| view.status.ended()) {
            break instances;
        }
        assert!(tokio::time::Instant::now() < deadline, "{instances:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut texts: Vec<Value> = instances
        .iter()
        .map(|view| view.output.as_ref().unwrap()["text"].clone())
        .collect();
    texts.sort_by_key(ToString::to_string);
    assert_eq!(texts, [json!("one"), json!("two")]);
    // The input is the array of triggering events.
    assert_eq!(instances[0].input[0]["topic"], "questions");
    // After a restart nothing starts twice, and new events still start.
    let harness = harness.restart().await;
    harness
        .publish("questions", "question.asked", json!({"text": "three"}))
        .await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let instances = list(&harness).await;
        if instances.len() >= 3 && instances.iter().all(|view| view.status.ended()) {
            assert_eq!(instances.len(), 3, "{instances:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{instances:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ended instances of `name`, oldest first, once there are `count`.
async fn ended_instances(harness: &Harness, name: &str, count: usize) -> Vec<InstanceView> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let mut instances = harness
            .engine
            .list(
                &herald_workflows::ListFilter {
                    name: Some(name.into()),
                    ..Default::default()
                },
                100,
            )
            .await
            .unwrap();
        instances.retain(|view| view.status.ended());
        if instances.len() >= count {
            instances.reverse();
            return instances;
        }
        assert!(tokio::time::Instant::now() < deadline, "{instances:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn started_ms(view: &InstanceView) -> i64 {
    herald_types::parse_rfc3339_ms(&view.started_at).unwrap()
}

#[tokio::test]
async fn given_schedule_every_should_start_one_per_tick_and_go_on_after_a_restart() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "ticker",
            "schedule: { every: PT1S }\ndo:\n  - a: { set: { at: '${ $workflow.startedAt.epoch.milliseconds }' } }\n",
        ))
        .await;
    let before = ended_instances(&harness, "ticker", 2).await;
    let harness = harness.restart().await;
    let after = ended_instances(&harness, "ticker", before.len() + 1).await;
    // One start per tick: never two within one period, none lost to the
    // restart (ids distinct, each started once).
    let mut ids: Vec<&str> = after.iter().map(|view| view.instance_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), after.len());
    for pair in after.windows(2) {
        let gap = started_ms(&pair[1]) - started_ms(&pair[0]);
        assert!(gap >= 900, "two starts {gap} ms apart: {pair:?}");
    }
    assert!(after.iter().all(|view| view.status == Status::Completed));
    assert_eq!(after[0].input, json!({}));
}

#[tokio::test]
async fn given_schedule_after_should_start_again_only_once_the_last_one_ended() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "again",
            "schedule: { after: PT1S }\ndo:\n  - pause: { wait: { milliseconds: 300 } }\n",
        ))
        .await;
    let instances = ended_instances(&harness, "again", 2).await;
    let first_end =
        herald_types::parse_rfc3339_ms(instances[0].ended_at.as_deref().unwrap()).unwrap();
    assert!(
        started_ms(&instances[1]) >= first_end + 1000,
        "started before the last one ended + 1 s: {instances:?}"
    );
}

#[tokio::test]
async fn given_schedule_cron_with_seconds_should_start_on_the_pattern() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "crony",
            "schedule: { cron: '* * * * * *' }\ndo:\n  - a: { set: {} }\n",
        ))
        .await;
    let instances = ended_instances(&harness, "crony", 2).await;
    assert_ne!(instances[0].instance_id, instances[1].instance_id);
    let gap = started_ms(&instances[1]) - started_ms(&instances[0]);
    assert!(gap >= 900, "{instances:?}");
}

#[tokio::test]
async fn given_herald_functions_should_await_a_job_and_append_to_a_stream_once_across_a_restart() {
    let harness = Harness::start().await;
    harness.topic("orders").await;
    harness
        .deploy(&workflow(
            "pricing",
            r#"
do:
  - price: { call: herald.job, with: { queue: pricing, data: { sku: '${ .sku }' } } }
  - record:
      call: herald.append
      with:
        topic: orders
        stream: '${ "order-" + $workflow.input.sku }'
        expectedVersion: no_stream
        event: { type: order.priced, data: '${ . }' }
  - pause: { wait: PT2S }
"#,
        ))
        .await;
    // A worker: takes the request and answers with a price.
    let jobs = harness.jobs.clone();
    let worker = tokio::spawn(async move {
        loop {
            let request = herald_backend::FetchRequest {
                member: "worker".into(),
                max: 1,
                wait_ms: 1_000,
            };
            let Ok(deliveries) = jobs.fetch("pricing", request).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if let Some(delivery) = deliveries.into_iter().next() {
                assert_eq!(delivery.request.data, json!({"sku": "A7"}));
                let complete: herald_jobs::CompleteRequest = serde_json::from_value(json!({
                    "result": {"price": 42},
                    "delivery_id": delivery.delivery_id,
                }))
                .unwrap();
                jobs.complete(&delivery.request.job_id, complete)
                    .await
                    .unwrap();
                return;
            }
        }
    });
    let id = harness
        .start_instance("pricing", json!({"sku": "A7"}))
        .await;
    harness.until_status(&id, Status::Waiting).await;
    worker.await.unwrap();
    // Recorded before the wait: a restart replays the job's result and the
    // append instead of submitting or appending again.
    let harness = harness.restart().await;
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(
        view.output,
        Some(json!({"stream": "order-A7", "firstVersion": 0, "lastVersion": 0}))
    );
    let stream = harness
        .backend
        .read_stream(
            &TopicName::try_from("orders").unwrap(),
            &herald_types::StreamId::try_from("order-A7").unwrap(),
            0,
            herald_backend::Direction::Forward,
            10,
        )
        .await
        .unwrap();
    assert_eq!(stream.events.len(), 1);
    let event = &stream.events[0].1.event;
    assert_eq!(event.ty, "order.priced");
    assert_eq!(
        serde_json::from_slice::<Value>(event.data.as_deref().unwrap()).unwrap(),
        json!({"price": 42})
    );
    assert_eq!(event.causationid.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn given_a_failed_job_or_a_version_conflict_should_raise_errors_a_catch_can_take() {
    let harness = Harness::start().await;
    harness.topic("orders").await;
    harness
        .deploy(&workflow(
            "strict",
            r#"
do:
  - first: { call: herald.append, with: { topic: orders, stream: s1, event: { type: a, data: 1 } } }
  - guarded:
      try:
        - again: { call: herald.append, with: { topic: orders, stream: s1, expectedVersion: no_stream, event: { type: b, data: 2 } } }
      catch:
        errors: { with: { status: 409 } }
        as: conflict
        do:
          - note: { set: { conflict: '${ $conflict.status }' } }
"#,
        ))
        .await;
    let view = harness.run("strict", json!({})).await;
    assert_eq!(view.output, Some(json!({"conflict": 409})), "{view:?}");
    harness
        .deploy(&workflow(
            "failing",
            "do:\n  - price: { call: herald.job, with: { queue: broken, data: 1 } }\n",
        ))
        .await;
    let id = harness.start_instance("failing", json!({})).await;
    let jobs = harness.jobs.clone();
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let request = herald_backend::FetchRequest {
            member: "worker".into(),
            max: 1,
            wait_ms: 500,
        };
        let Ok(deliveries) = jobs.fetch("broken", request).await else {
            // No queue before the submit.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if let Some(delivery) = deliveries.into_iter().next() {
            let complete: herald_jobs::CompleteRequest =
                serde_json::from_value(json!({"error": "no price list"})).unwrap();
            jobs.complete(&delivery.request.job_id, complete)
                .await
                .unwrap();
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request came: {:?}",
            harness.engine.get(&id).await
        );
    }
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Faulted);
    let error = view.error.unwrap();
    assert!(error.type_.ends_with("/errors/runtime"), "{error:?}");
    assert!(
        error
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("no price list"),
        "{error:?}"
    );
}

#[tokio::test]
async fn given_a_loop_longer_than_the_history_bound_should_compact_and_finish_across_a_restart() {
    // 1,000 iterations of two records each under a bound of 200: without
    // compaction the instance would fault at the 200th record.
    let harness = Harness::bounded(200).await;
    harness
        .deploy(&workflow(
            "long",
            r#"
do:
  - sum:
      for: { each: n, in: '${ .numbers }' }
      do:
        - add: { set: { total: '${ .total + $n }' } }
        - nap: { if: '${ $n == 700 }', wait: PT1.5S }
"#,
        ))
        .await;
    let numbers: Vec<u64> = (1..=1000).collect();
    let id = harness
        .start_instance("long", json!({ "numbers": numbers }))
        .await;
    // Parked at n = 700, then restarted: the replay starts from the
    // snapshot and the loop from its mark.
    harness.until_status(&id, Status::Waiting).await;
    let harness = harness.restart().await;
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"total": 500_500})));
    // Inspection still reads every step (the stream keeps them all).
    let steps = harness.engine.history(&id).await.unwrap();
    assert_eq!(steps.len(), 1 + 1000 + 1, "the loop, each add, one nap");
    assert!(steps.iter().all(|step| step.status == "completed"));
}

#[tokio::test]
async fn given_a_try_retrying_many_times_should_compact_and_end_with_the_error() {
    let harness = Harness::bounded(200).await;
    harness
        .deploy(&workflow(
            "stubborn",
            r#"
do:
  - guarded:
      try:
        - fail:
            raise:
              error: { type: https://example.com/errors/busy, status: 503 }
      catch:
        errors: { with: { status: 503 } }
        retry: { delay: PT0S, limit: { attempt: { count: 300 } } }
"#,
        ))
        .await;
    let view = harness.run("stubborn", json!({})).await;
    assert_eq!(view.status, Status::Faulted, "{view:?}");
    let error = view.error.unwrap();
    assert_eq!(error.type_, "https://example.com/errors/busy", "{error:?}");
    let steps = harness.engine.history(&view.instance_id).await.unwrap();
    let attempts = steps.iter().filter(|step| step.task == "fail").count();
    assert_eq!(attempts, 300);
}

#[tokio::test]
async fn given_nested_loops_when_restarted_mid_way_should_replay_each_iteration_as_it_was() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "nested",
            r#"
do:
  - init: { set: { acc: 0, seen: [] } }
  - outer:
      for: { each: a, in: '[1, 2]' }
      do:
        - inner:
            for: { each: b, in: '[10, 20]' }
            do:
              - add: { set: { acc: '${ .acc + $a * $b }', seen: '${ .seen + [$a * $b] }' } }
              - pause: { if: '$a == 2 and $b == 10', wait: { milliseconds: 400 } }
"#,
        ))
        .await;
    let id = harness.start_instance("nested", json!({})).await;
    harness.until_status(&id, Status::Waiting).await;
    let harness = harness.restart().await;
    let view = harness.ended(&id).await;
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(
        view.output,
        Some(json!({"acc": 90, "seen": [10, 20, 20, 40]}))
    );
}

#[tokio::test]
async fn given_instances_waiting_on_long_timers_should_park_them_and_fire_each_after_a_restart() {
    let harness = Harness::start().await;
    harness
        .deploy(&workflow(
            "sleepers",
            "do:\n  - nap: { wait: { milliseconds: 2500 } }\n  - done: { set: { woke: true } }\n",
        ))
        .await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(harness.start_instance("sleepers", json!({})).await);
    }
    // Parked: waiting, each holding no task of its own.
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let (live, parked) = harness.engine.load();
        if live == 0 && parked == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "live {live}, parked {parked}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        assert_eq!(
            harness.engine.get(id).await.unwrap().status,
            Status::Waiting
        );
    }
    // A restart schedules them again from their entries and each fires.
    let harness = harness.restart().await;
    assert_eq!(harness.engine.load().1, ids.len());
    for id in &ids {
        let view = harness.ended(id).await;
        assert_eq!(view.output, Some(json!({"woke": true})), "{view:?}");
        let history = harness.engine.history(id).await.unwrap();
        let nap = history.iter().find(|step| step.task == "nap").unwrap();
        let (began, ended) = (
            herald_types::parse_rfc3339_ms(nap.started_at.as_deref().unwrap()).unwrap(),
            herald_types::parse_rfc3339_ms(nap.ended_at.as_deref().unwrap()).unwrap(),
        );
        assert!(ended - began >= 2500, "fired after {} ms", ended - began);
    }
    assert_eq!(harness.engine.load(), (0, 0));
}

/// The DSL's argument table (dsl.md, "Runtime expression arguments"): what
/// each expression sees where it is written.
#[tokio::test]
async fn given_each_expression_scope_should_see_the_arguments_the_dsl_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path()).await;
    let options = Options {
        secrets: [("apiKey".to_owned(), "s3cr3t".to_owned())].into(),
        ..Options::default()
    };
    let engine = Engine::start(
        Arc::clone(&backend),
        herald_workflows::Services::default(),
        options,
        Arc::new(herald_workflows::WorkflowMetrics::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    engine
        .deploy(
            &workflow(
                "scopes",
                r#"
use:
  secrets: [ apiKey ]
input:
  from: '{ raw: ., wf: $workflow.input.x, runtime: $runtime.name, secret: $secrets.apiKey }'
do:
  - first:
      if: '$task.name == "first" and $context == {}'
      input: { from: '{ v: .raw.x, from: $task.reference }' }
      set:
        input: '${ $input }'
        started: '${ $task.startedAt.epoch.milliseconds > 0 }'
        workflowId: '${ $workflow.id | length > 0 }'
        raw: '${ $task.input | del(.raw) }'
      output: { as: '. + { seenInput: $input.v }' }
      export: { as: '$context + { out: $output.seenInput, ctx: true }' }
  - second:
      set: { context: '${ $context }', secretListed: '${ $secrets.apiKey }' }
output:
  as: '{ result: ., context: $context, workflowInput: $workflow.input }'
"#,
            ),
            String::new(),
        )
        .await
        .unwrap();
    let view = engine
        .start_instance("test", "scopes", None, json!({"x": 7}))
        .await
        .unwrap();
    let view = engine.wait(&view.instance_id, SETTLE).await.unwrap();
    assert_eq!(view.status, Status::Completed, "{view:?}");
    let output = view.output.unwrap();
    // `second` saw `$context` as `first` exported it, and the secret.
    assert_eq!(
        output["result"],
        json!({"context": {"out": 7, "ctx": true}, "secretListed": "s3cr3t"})
    );
    // Workflow `output.as` sees the final `$context` and the raw input.
    assert_eq!(output["context"], json!({"out": 7, "ctx": true}));
    assert_eq!(output["workflowInput"], json!({"x": 7}));
    // `first`'s own output: `input.from` (with `$task`), the task on
    // `$input`, `output.as` adding what `$input` held.
    let history = engine.history(&view.instance_id).await.unwrap();
    let first = history.iter().find(|step| step.task == "first").unwrap();
    assert_eq!(
        first.output,
        Some(json!({
            "input": {"v": 7, "from": "/do/0/first"},
            "started": true, "workflowId": true, "seenInput": 7,
            "raw": {"wf": 7, "runtime": "herald", "secret": "s3cr3t"}
        }))
    );
    // (`raw` above: the workflow's `input.from` saw `$workflow`, `$runtime`
    // and `$secrets`; `$task.input` is the task's raw input.) The step
    // records the transformed input.
    assert_eq!(first.input, Some(json!({"v": 7, "from": "/do/0/first"})));
    engine.shutdown().await;
    backend.shutdown().await.unwrap();
}

/// An engine of a node sharing `backend` with others (as on NATS).
async fn node(backend: &Arc<dyn Backend>) -> Engine {
    let options = Options {
        shared_backend: true,
        ..Options::default()
    };
    Engine::start(
        Arc::clone(backend),
        herald_workflows::Services::default(),
        options,
        Arc::new(herald_workflows::WorkflowMetrics::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// Several nodes on one backend: a node that starts does not run what a
/// live node runs; once that node is gone, another takes its instances
/// over (timers included) and they end once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_nodes_sharing_a_backend_should_run_each_instance_on_one_and_adopt_a_gone_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path()).await;
    let first = node(&backend).await;
    first.recover().await.unwrap();
    first
        .deploy(
            &workflow(
                "napping",
                "do:\n  - nap: { wait: { milliseconds: 1500 } }\n  - after: { set: { done: true } }\n",
            ),
            "2026-12-03T00:00:00.000Z".into(),
        )
        .await
        .unwrap();
    let id = first
        .start_instance("test", "napping", None, json!({}))
        .await
        .unwrap()
        .instance_id;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while first.get(&id).await.unwrap().status != Status::Waiting {
        assert!(tokio::time::Instant::now() < deadline, "never waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A second node starts: the first lives, so it neither resumes nor
    // adopts the instance.
    let second = node(&backend).await;
    assert_eq!(second.recover().await.unwrap(), 0, "a live node's instance");
    assert_eq!(second.adopt_orphans().await.unwrap(), 0);
    assert_eq!(second.load(), (0, 0));

    // The first goes away before the timer is due: the second takes the
    // instance over and it ends there, after its recorded due time.
    first.shutdown().await;
    assert_eq!(second.adopt_orphans().await.unwrap(), 1);
    assert_eq!(second.adopt_orphans().await.unwrap(), 0, "adopted once");
    let view = second.wait(&id, SETTLE).await.unwrap();
    assert_eq!(view.status, Status::Completed, "{view:?}");
    assert_eq!(view.output, Some(json!({"done": true})));
    let history = second.history(&id).await.unwrap();
    let naps = history.iter().filter(|step| step.task == "nap").count();
    assert_eq!(naps, 1, "the timer fired once: {history:?}");
    // Ended: no owner left to adopt (removed right after the end).
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !backend
        .kv_keys(herald_workflows::engine::OWNERS_BUCKET, "", None, 10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "an owner stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    second.shutdown().await;
}
