//! Deploy-time checks, written from the DSL 1.0 reference: what parses,
//! and what is refused with which path.

use std::time::Duration;

use super::*;
use crate::dsl::{
    Backoff, Call, CallOutput, DslDuration, Endpoint, ErrorRef, FlowDirective, ListenRead,
    RetryRef, Set, TaskKind, TimeoutRef, parse_iso8601_duration,
};

const HEADER: &str =
    "document: { dsl: '1.0.0', namespace: support, name: question, version: '1.0.0' }\n";

fn parse(body: &str) -> Result<Definition, DefinitionError> {
    Definition::parse(&format!("{HEADER}{body}"))
}

/// Each `(body, path, needle)`: refused at `path`, the message holding
/// `needle`.
fn assert_refused(cases: &[(&str, &str, &str)]) {
    for (body, path, needle) in cases {
        let (at, message) = refused(body);
        assert_eq!(at, *path, "{body}\n{message}");
        assert!(message.contains(needle), "{body}\n{at}: {message}");
    }
}

fn refused(body: &str) -> (String, String) {
    match parse(body) {
        Err(DefinitionError::Invalid { path, message }) => (path, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The scenario-5 workflow of the product contract, close to what the
/// reference notes validated against the DSL's schema.
const CUSTOMER_QUESTION: &str = r#"
document: { dsl: '1.0.3', namespace: support, name: customer-question, version: '1.0.0' }
schedule: { on: { one: { with: { topic: questions, type: com.example.question.asked.v1 } } } }
use:
  retries:
    http-backoff: { delay: { seconds: 2 }, backoff: { exponential: {} }, limit: { attempt: { count: 5 } },
                    jitter: { from: { milliseconds: 100 }, to: { seconds: 1 } } }
  secrets: [ crm-token ]
do:
  - classify:
      try:
        - callClassifier:
            call: http
            with: { method: post, endpoint: http://127.0.0.1:9000/classify,
                    body: '${ { text: $workflow.input[0].data.text } }' }
            output: { as: .category }
            export: { as: '$context + { category: . }' }
      catch: { errors: { with: { type: https://serverlessworkflow.io/spec/1.0.0/errors/communication } }, retry: http-backoff }
  - route:
      switch:
        - billing: { when: '.category == "billing"', then: askAgent }
        - other: { then: end }
  - askAgent:
      emit: { event: { with: { topic: agents, source: /support, type: com.example.agent.task.v1,
                               data: '${ { question: $workflow.input[0].data, category: $context.category } }' } } }
  - awaitAnswer:
      try:
        - waitForAnswer:
            listen: { to: { one: { with: { topic: answers, type: com.example.answer.provided.v1 },
                                    correlate: { questionId: { from: .data.questionId, expect: '${ $workflow.input[0].data.questionId }' } } } } }
            timeout: { after: { hours: 24 } }
      catch:
        errors: { with: { type: https://serverlessworkflow.io/spec/1.0.0/errors/timeout } }
        as: err
        do:
          - giveUp: { raise: { error: { type: https://example.com/errors/unanswered, status: 504, title: Unanswered } } }
  - pause:
      wait: PT1M30S
  - close:
      set: { closed: true }
"#;

#[test]
fn given_the_customer_question_workflow_when_parsed_should_give_its_tasks() {
    let definition = Definition::parse(CUSTOMER_QUESTION).unwrap();
    assert_eq!(definition.key(), "support/customer-question/1.0.0");
    let tasks = &definition.workflow.do_.0;
    let names: Vec<&str> = tasks.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "classify",
            "route",
            "askAgent",
            "awaitAnswer",
            "pause",
            "close"
        ]
    );
    let TaskKind::Try(classify) = &tasks[0].1.kind else {
        panic!("classify is a try")
    };
    assert_eq!(
        classify.catch.retry,
        Some(RetryRef::Named("http-backoff".to_owned()))
    );
    let (_, call) = &classify.try_.0[0];
    let TaskKind::Call(Call::Http(http)) = &call.kind else {
        panic!("a call: http")
    };
    assert_eq!(http.method, "post");
    assert_eq!(
        http.endpoint,
        Endpoint::Uri("http://127.0.0.1:9000/classify".to_owned())
    );
    assert_eq!(http.output, None);
    assert!(call.common.output.is_some() && call.common.export.is_some());
    let TaskKind::Switch(cases) = &tasks[1].1.kind else {
        panic!("route is a switch")
    };
    assert_eq!(cases[0].1.then, FlowDirective::Goto("askAgent".to_owned()));
    assert_eq!(cases[1].1.when, None);
    assert_eq!(cases[1].1.then, FlowDirective::End);
    let TaskKind::Try(await_answer) = &tasks[3].1.kind else {
        panic!("awaitAnswer is a try")
    };
    let (_, listen) = &await_answer.try_.0[0];
    assert_eq!(
        listen.common.timeout,
        Some(TimeoutRef::Inline(crate::dsl::Timeout {
            after: DslDuration(Duration::from_secs(24 * 3600))
        }))
    );
    assert_eq!(await_answer.catch.as_.as_deref(), Some("err"));
    let (_, give_up) = &await_answer.catch.do_.as_ref().unwrap().0[0];
    assert!(
        matches!(&give_up.kind, TaskKind::Raise(raise) if matches!(&raise.error, ErrorRef::Inline(error) if error.status == 504))
    );
    assert_eq!(
        tasks[4].1.kind,
        TaskKind::Wait(DslDuration(Duration::from_secs(90)))
    );
    assert!(matches!(&tasks[5].1.kind, TaskKind::Set(Set::Map(map)) if map["closed"] == true));
    let retry = &definition
        .workflow
        .use_
        .as_ref()
        .unwrap()
        .retries
        .as_ref()
        .unwrap()["http-backoff"];
    assert_eq!(
        retry.backoff,
        Some(Backoff::Exponential(crate::dsl::Empty {}))
    );
    assert_eq!(
        retry
            .limit
            .as_ref()
            .unwrap()
            .attempt
            .as_ref()
            .unwrap()
            .count,
        Some(5)
    );
}

#[test]
fn given_json_when_parsed_should_read_it_like_yaml() {
    let json = r#"{"document": {"dsl": "1.0.0", "namespace": "n", "name": "w", "version": "1"},
                   "do": [{"greet": {"set": "${ {hello: .name} }"}}]}"#;
    let definition = Definition::parse(json).unwrap();
    assert!(matches!(
        &definition.workflow.do_.0[0].1.kind,
        TaskKind::Set(Set::Expr(_))
    ));
    assert_eq!(definition.source["document"]["name"], "w");
}

#[test]
fn given_each_task_kind_when_parsed_should_be_recognised() {
    let definition = parse(
        r#"
use:
  functions:
    notify: { call: http, with: { method: post, endpoint: 'http://127.0.0.1/notify' } }
do:
  - a: { call: notify, with: { to: me } }
  - b: { do: [ { inner: { set: { x: 1 } } } ] }
  - c: { for: { each: order, in: .orders, at: i }, while: '$i < 10', do: [ { step: { set: { y: 2 } } } ] }
  - d: { fork: { compete: true, branches: [ { left: { wait: PT1S } }, { right: { wait: { seconds: 2 } } } ] } }
  - e: { listen: { to: { any: [ { with: { topic: t, type: t1 } }, { with: { topic: t, type: t2 } } ], until: '. | length > 1' }, read: envelope } }
  - f: { call: http, with: { method: get, endpoint: 'http://127.0.0.1/pets/{id}', output: response } }
  - g: { emit: { event: { with: { topic: t, source: /s, type: t, data: { a: 1 } } } }, then: exit }
"#,
    )
    .unwrap();
    let kinds: Vec<&TaskKind> = definition
        .workflow
        .do_
        .0
        .iter()
        .map(|(_, task)| &task.kind)
        .collect();
    assert!(
        matches!(kinds[0], TaskKind::Call(Call::Function { name, with }) if name == "notify" && with["to"] == "me")
    );
    assert!(matches!(kinds[1], TaskKind::Do(list) if list.0.len() == 1));
    assert!(
        matches!(kinds[2], TaskKind::For(looping) if looping.for_.each.as_deref() == Some("order") && looping.while_.is_some())
    );
    assert!(matches!(kinds[3], TaskKind::Fork(fork) if fork.compete && fork.branches.0.len() == 2));
    assert!(
        matches!(kinds[4], TaskKind::Listen(listen) if listen.listen.read == Some(ListenRead::Envelope) && listen.listen.to.any.as_ref().unwrap().len() == 2)
    );
    assert!(
        matches!(kinds[5], TaskKind::Call(Call::Http(http)) if http.output == Some(CallOutput::Response))
    );
    assert_eq!(
        definition.workflow.do_.0[6].1.common.then,
        Some(FlowDirective::Exit)
    );
}

#[test]
fn given_a_broken_field_when_parsed_should_name_its_path() {
    let cases = [
        // Unknown field in a call's arguments.
        (
            "do:\n  - a: { set: { x: 1 } }\n  - b: { set: { y: 1 } }\n  - checkCredit: { call: http, with: { method: get, endpoint: 'http://x', bdy: 1 } }\n",
            "do[2].checkCredit.with.bdy",
            "bdy",
        ),
        // A typo in a common field.
        (
            "do:\n  - a: { set: { x: 1 }, outptu: { as: . } }\n",
            "do[0].a.outptu",
            "if, input, output",
        ),
        // Nested deep: a for's body, a try's catch.
        (
            "do:\n  - loop: { for: { in: .xs }, do: [ { t: { try: [ { u: { wait: soon } } ], catch: {} } } ] }\n",
            "do[0].loop.do[0].t.try[0].u.wait",
            "ISO 8601",
        ),
        // A task with no kind.
        (
            "do:\n  - nothing: { then: end }\n",
            "do[0].nothing",
            "needs one of",
        ),
        // Two tasks in one list entry.
        (
            "do:\n  - a: { set: { x: 1 } }\n    b: { set: { y: 1 } }\n",
            "do[0]",
            "one task per list entry",
        ),
        // A bad enum value.
        (
            "do:\n  - a: { call: http, with: { method: get, endpoint: 'http://x', output: body } }\n",
            "do[0].a.with.output",
            "unknown variant",
        ),
        // A missing required field.
        (
            "do:\n  - a: { for: { each: x }, do: [ { b: { set: {} } } ] }\n",
            "do[0].a.for",
            "in",
        ),
    ];
    assert_refused(&cases);
}

#[test]
fn given_unsupported_features_when_parsed_should_be_refused_by_name() {
    assert_refused(&[
        (
            "do:\n  - build: { run: { container: { image: alpine } } }\n",
            "do[0].build.run.container",
            "run.container is not supported",
        ),
        (
            "do:\n  - sh: { run: { shell: { command: ls } } }\n",
            "do[0].sh.run.shell",
            "run.shell",
        ),
        (
            "do:\n  - rpc: { call: grpc, with: {} }\n",
            "do[0].rpc.call",
            "call: grpc is not supported",
        ),
        (
            "do:\n  - ai: { call: mcp, with: {} }\n",
            "do[0].ai.call",
            "mcp",
        ),
        (
            "do:\n  - c: { call: 'fn:1.0.0@catalog' }\n",
            "do[0].c.call",
            "catalog",
        ),
        (
            "do:\n  - r: { call: http, with: { method: get, endpoint: 'http://x', redirect: true } }\n",
            "do[0].r.with.redirect",
            "redirects",
        ),
        (
            "evaluate: { language: javascript }\ndo:\n  - a: { set: {} }\n",
            "evaluate.language",
            "jq",
        ),
    ]);
}

#[test]
fn given_references_to_nothing_when_parsed_should_be_refused() {
    assert_refused(&[
        (
            "do:\n  - a: { set: {}, then: nowhere }\n",
            "do[0].a.then",
            "nowhere",
        ),
        (
            "do:\n  - a: { call: undefinedFunction }\n",
            "do[0].a.call",
            "use.functions",
        ),
        (
            "do:\n  - a: { try: [ { b: { set: {} } } ], catch: { retry: missing } }\n",
            "do[0].a.catch.retry",
            "use.retries",
        ),
        (
            "do:\n  - a: { raise: { error: missing } }\n",
            "do[0].a.raise.error",
            "use.errors",
        ),
        (
            "do:\n  - a: { wait: PT1S, timeout: missing }\n",
            "do[0].a.timeout",
            "use.timeouts",
        ),
        (
            "do:\n  - a: { switch: [ { x: { then: gone } } ] }\n",
            "do[0].a.switch[0].x.then",
            "gone",
        ),
        (
            "do:\n  - a: { set: {} }\n  - a: { set: {} }\n",
            "do[1].a",
            "already",
        ),
        // `then` looks in its own list, not the enclosing one.
        (
            "do:\n  - outer: { do: [ { inner: { set: {}, then: last } } ] }\n  - last: { set: {} }\n",
            "do[0].outer.do[0].inner.then",
            "last",
        ),
        (
            "do:\n  - e: { emit: { event: { with: { topic: t, source: /s } } } }\n",
            "do[0].e.emit.event.with",
            "type",
        ),
        (
            "do:\n  - e: { emit: { event: { with: { source: /s, type: t } } } }\n",
            "do[0].e.emit.event.with.topic",
            "topic",
        ),
        (
            "do:\n  - l: { listen: { to: { all: [ { with: { topic: a } }, { with: { type: t } } ] } } }\n",
            "do[0].l.listen.to.all[1].with.topic",
            "topic",
        ),
        (
            "do:\n  - e: { emit: { event: { with: { topic: 'no spaces', source: /s, type: t } } } }\n",
            "do[0].e.emit.event.with.topic",
            "invalid topic name",
        ),
        (
            "do:\n  - f: { call: openapi, with: { document: { name: petstore }, operationId: getPet } }\n",
            "do[0].f.with.document",
            "`endpoint`",
        ),
        (
            "do:\n  - f: { call: openapi, with: { document: { endpoint: 'http://x/o.json' }, operationId: getPet, redirect: true } }\n",
            "do[0].f.with.redirect",
            "redirect",
        ),
        (
            "do:\n  - l: { listen: { to: { one: { with: {} }, all: [] } } }\n",
            "do[0].l.listen.to",
            "exactly one",
        ),
        ("do: []\n", "do", "at least one task"),
        (
            "do:\n  - l: { listen: { to: { any: [ { with: { topic: a } } ], until: true } } }\n",
            "do[0].l.listen.to.until",
            "foreach",
        ),
        (
            "do:\n  - l: { listen: { to: { any: [ { with: { topic: a } } ], until: { one: { with: { type: x } } } } } }\n",
            "do[0].l.listen.to.until.one.with.topic",
            "topic",
        ),
        (
            "schedule: { cron: '61 * * * *' }\ndo:\n  - a: { set: {} }\n",
            "schedule.cron",
            "not a cron pattern",
        ),
        (
            "schedule: { every: PT0.5S }\ndo:\n  - a: { set: {} }\n",
            "schedule.every",
            "at least 1 s",
        ),
        (
            "schedule: { every: PT1M, cron: '* * * * *' }\ndo:\n  - a: { set: {} }\n",
            "schedule",
            "one of",
        ),
    ]);
}

#[test]
fn given_listen_until_a_strategy_should_parse() {
    let body = "do:\n  - l: { listen: { to: { any: [ { with: { topic: a, type: x } } ], until: { all: [ { with: { topic: a, type: y } }, { with: { topic: b, type: z } } ] } } } }\n";
    assert!(parse(body).is_ok(), "{:?}", parse(body).err());
}

#[test]
fn given_time_schedules_should_parse_every_cron_with_or_without_seconds_and_after() {
    for schedule in [
        "every: PT1M",
        "every: { minutes: 5 }",
        "cron: '0 9 * * MON-FRI'",
        "cron: '*/10 * * * * *'",
        "cron: '@hourly'",
        "after: PT30S",
    ] {
        let body = format!("schedule: {{ {schedule} }}\ndo:\n  - a: {{ set: {{}} }}\n");
        assert!(parse(&body).is_ok(), "{schedule}: {:?}", parse(&body).err());
    }
}

#[test]
fn given_document_versions_when_parsed_should_take_1_0_x_only() {
    let with_dsl = |dsl: &str| {
        format!(
            "document: {{ dsl: '{dsl}', namespace: n, name: w, version: '1' }}\ndo:\n  - a: {{ set: {{}} }}\n"
        )
    };
    for dsl in ["1.0.0", "1.0.3", "1.0"] {
        assert!(Definition::parse(&with_dsl(dsl)).is_ok(), "{dsl}");
    }
    for dsl in ["0.8", "1.1.0", "1.0.x", "1.0.0-alpha5"] {
        let error = Definition::parse(&with_dsl(dsl)).unwrap_err();
        assert_eq!(error.path(), "document.dsl", "{dsl}");
    }
    let error = Definition::parse("document: { dsl: '1.0.0', namespace: 'a b', name: w, version: '1' }\ndo: [ { a: { set: {} } } ]").unwrap_err();
    assert_eq!(error.path(), "document.namespace");
    assert!(matches!(
        Definition::parse("do: [ : ]"),
        Err(DefinitionError::Syntax(_))
    ));
    assert_eq!(
        Definition::parse("do:\n  - a: { set: {} }\n")
            .unwrap_err()
            .path(),
        ""
    );
}

#[test]
fn given_durations_when_parsed_should_take_iso_8601_and_objects() {
    for (text, expected) in [
        ("PT5M", Duration::from_secs(300)),
        ("P1DT2H", Duration::from_secs(93_600)),
        ("PT0.5S", Duration::from_millis(500)),
        ("P2W", Duration::from_secs(1_209_600)),
        ("PT1H30M15S", Duration::from_secs(5415)),
    ] {
        assert_eq!(parse_iso8601_duration(text), Some(expected), "{text}");
    }
    for text in [
        "", "P", "PT", "5M", "P1M", "P1Y", "PT1.5M", "PT5S5M", "PTM", "P1DT", "PT5MS",
    ] {
        assert_eq!(parse_iso8601_duration(text), None, "{text}");
    }
    let definition = parse("do:\n  - a: { wait: { minutes: 1, milliseconds: 250 } }\n").unwrap();
    assert_eq!(
        definition.workflow.do_.0[0].1.kind,
        TaskKind::Wait(DslDuration(Duration::from_millis(60_250)))
    );
    let (at, _) = refused("do:\n  - a: { wait: { fortnights: 1 } }\n");
    assert_eq!(at, "do[0].a.wait");
}

#[test]
fn given_functions_when_parsed_should_check_them_like_tasks() {
    let (at, message) =
        refused("use:\n  functions:\n    f: { call: grpc, with: {} }\ndo:\n  - a: { call: f }\n");
    assert_eq!(at, "use.functions.f.call", "{message}");
}

#[test]
fn given_expressions_when_deployed_should_compile_each_with_its_scope() {
    let definition = Definition::parse(CUSTOMER_QUESTION).unwrap();
    let paths: Vec<&str> = definition
        .expressions
        .iter()
        .map(|found| found.path.as_str())
        .collect();
    for path in [
        "do[0].classify.try[0].callClassifier.with.body",
        "do[0].classify.try[0].callClassifier.output.as",
        "do[0].classify.try[0].callClassifier.export.as",
        "do[1].route.switch[0].billing.when",
        "do[2].askAgent.emit.event.with.data",
        "do[3].awaitAnswer.try[0].waitForAnswer.listen.to.one.correlate.questionId.from",
        "do[3].awaitAnswer.try[0].waitForAnswer.listen.to.one.correlate.questionId.expect",
    ] {
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
    // Literals are not expressions.
    assert!(
        !paths
            .iter()
            .any(|path| path.ends_with("with.endpoint") || path.ends_with("with.type"))
    );
    let scoped = parse(
        "do:\n  - loop: { for: { each: order, in: .orders, at: n }, while: '$n < 3', do: [ { s: { set: { id: '${ $order.id }', at: '${ $n }' } } } ] }\n  - t: { try: [ { a: { set: {} } } ], catch: { as: failure, when: '$failure.status == 500', do: [ { b: { set: { why: '${ $failure.title }' } } } ] } }\n",
    )
    .unwrap();
    let set_id = scoped
        .expressions
        .iter()
        .find(|found| found.path == "do[0].loop.do[0].s.set.id")
        .unwrap();
    assert!(
        set_id.variables.iter().any(|name| name == "$order"),
        "{:?}",
        set_id.variables
    );
}

#[test]
fn given_broken_expressions_when_deployed_should_name_their_field() {
    assert_refused(&[
        (
            "do:\n  - a: { set: {}, if: '.x ==' }\n",
            "do[0].a.if",
            "jq syntax",
        ),
        (
            "do:\n  - a: { set: { y: '${ .x | nosuch }' } }\n",
            "do[0].a.set.y",
            "undefined filter nosuch",
        ),
        (
            "do:\n  - a: { set: { y: '${ $item }' } }\n",
            "do[0].a.set.y",
            "undefined variable $item",
        ),
        (
            "do:\n  - a: { for: { in: .xs }, do: [ { b: { set: {} } } ] }\n  - c: { set: { y: '${ $item }' } }\n",
            "do[1].c.set.y",
            "$item",
        ),
        (
            "do:\n  - a: { switch: [ { x: { when: '.a = = 1', then: end } } ] }\n",
            "do[0].a.switch[0].x.when",
            "jq syntax",
        ),
        (
            "do:\n  - a: { set: '${ env.HOME }' }\n",
            "do[0].a.set",
            "env",
        ),
        (
            "do:\n  - a: { call: http, with: { method: get, endpoint: '${ \"http://x/\" + }' } }\n",
            "do[0].a.with.endpoint",
            "jq syntax",
        ),
        (
            "input: { from: '$secrets.' }\ndo:\n  - a: { set: {} }\n",
            "input.from",
            "jq syntax",
        ),
    ]);
}
