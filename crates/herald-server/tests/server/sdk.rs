//! The gRPC API through the Rust SDK (`herald-client`) against the real
//! binary: publishing (unary, batched, pipelined), every group mode through
//! `Consume`, subscriptions from a position, disconnects, typed errors, and
//! the decider-style aggregate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use herald_client::{
    Aggregate, Client, Decider, Error, ErrorCode, Event, Expected, From, GroupMode, GroupOptions,
    HandleError, RetryPolicy, TopicOptions,
};
use serde::{Deserialize, Serialize};

use crate::support::{TestServer, serve, serve_at};

/// Long enough that only a prompt release (not expiry) explains a
/// redelivery within a test.
const LONG_ACK_WAIT: Duration = Duration::from_secs(120);
/// How long a test waits for something that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(10);

async fn server_and_client() -> (TestServer, Client) {
    let (server, _api) = TestServer::start_ready().await;
    let client = Client::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    (server, client)
}

fn keyed(id: &str, key: &str) -> Event {
    let mut event = Event::new(id, "/sdk-tests", "test.event");
    event.key = Some(key.to_owned());
    event.data = Some(Bytes::from(format!("{{\"id\":\"{id}\"}}")));
    event
}

async fn next_within(consumer: &mut herald_client::Consumer) -> herald_client::Delivery {
    tokio::time::timeout(PROMPTLY, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is open")
        .unwrap()
}

#[tokio::test]
async fn given_sdk_when_publishing_single_batched_and_pipelined_should_store_each_once_in_order() {
    let (server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("orders").partitions(4))
        .await
        .unwrap();

    let single = client
        .publish("orders", [keyed("s-1", "k0")])
        .await
        .unwrap();
    assert_eq!(single.len(), 1);
    assert_eq!(single[0].id, "s-1");
    let batch: Vec<Event> = (0..10).map(|n| keyed(&format!("b-{n}"), "k1")).collect();
    let results = client.publish("orders", batch).await.unwrap();
    assert_eq!(results.len(), 10);
    assert!(
        results
            .windows(2)
            .all(|pair| pair[0].offset + 1 == pair[1].offset)
    );

    // Pipelined: 5,000 events over 16 keys, many batches in flight.
    let publisher = client
        .publisher("orders")
        .max_batch(100)
        .window(16)
        .linger(Duration::from_millis(2))
        .build();
    let mut pending = Vec::new();
    for n in 0..5_000 {
        let key = format!("key-{}", n % 16);
        pending.push((
            key.clone(),
            publisher
                .publish(keyed(&format!("p-{n}"), &key))
                .await
                .unwrap(),
        ));
    }
    let mut last_offset: HashMap<String, (u32, u64)> = HashMap::new();
    let mut positions = HashSet::new();
    for (key, ack) in pending {
        let stored = ack.await.unwrap();
        assert!(!stored.duplicate);
        assert!(positions.insert((stored.partition, stored.offset)));
        if let Some((partition, offset)) = last_offset.get(&key) {
            assert_eq!(*partition, stored.partition, "one key, one partition");
            assert!(
                stored.offset > *offset,
                "publish order kept per key: {key} {} after {offset} ({})",
                stored.offset,
                stored.id
            );
        }
        last_offset.insert(key, (stored.partition, stored.offset));
    }

    // Everything is readable back, once.
    let mut total = 0;
    for partition in 0..4 {
        let (events, _) = client.read("orders", partition, 0, 10_000).await.unwrap();
        total += events.len();
    }
    assert_eq!(total, 5_011);

    // A retried publish with the same id is a duplicate, not a new event.
    let again = client
        .publish("orders", [keyed("s-1", "k0")])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].offset, single[0].offset);

    // gRPC calls are counted and timed by method.
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let create = r#"herald_http_request_duration_seconds_count{method="POST",route="/herald.v1.Topics/CreateTopic",status="2xx"} 1"#;
    assert!(
        metrics.contains(create),
        "missing {create:?} in:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"route="/herald.v1.Events/Publish""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn given_server_restarted_on_its_address_when_calling_unary_should_reconnect_without_retries()
{
    let (server, _api) = TestServer::start_ready().await;
    let addr = server.addr;
    // No retries: only the reconnect of a connection found closed before
    // the call was sent can make the calls after the restart succeed.
    let client = Client::builder(format!("http://{addr}"))
        .retry(RetryPolicy::none())
        .connect()
        .await
        .unwrap();
    client
        .create_topic(TopicOptions::new("restarts"))
        .await
        .unwrap();
    let before = client
        .publish("restarts", [keyed("before", "k")])
        .await
        .unwrap();
    assert_eq!(before[0].offset, 0);

    server.signal("TERM").await;
    let (status, _stderr, dir) = server.wait().await;
    assert!(status.success(), "graceful stop: {status}");
    let command = serve_at(dir.path(), &dir.path().join("data"), &addr.to_string());
    let (_server, _api) = TestServer::ready(TestServer::spawn(dir, command).await).await;

    let after = client
        .publish("restarts", [keyed("after", "k")])
        .await
        .unwrap();
    assert_eq!(after[0].offset, 1, "the second event follows the first");
    let (events, _) = client.read("restarts", 0, 0, 10).await.unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(ids, ["before", "after"]);
}

#[tokio::test]
async fn given_bad_requests_when_called_through_sdk_should_get_typed_errors() {
    let (_server, client) = server_and_client().await;

    let unknown = client
        .publish("missing", [keyed("x", "k")])
        .await
        .unwrap_err();
    assert!(matches!(
        unknown,
        Error::Api {
            code: ErrorCode::TopicNotFound,
            ..
        }
    ));
    let publisher = client.publisher("missing").build();
    let pending = publisher.publish(keyed("y", "k")).await.unwrap();
    assert_eq!(
        pending.await.unwrap_err().code(),
        Some(&ErrorCode::TopicNotFound)
    );

    client
        .create_topic(TopicOptions::new("orders"))
        .await
        .unwrap();
    let exists = client
        .create_topic(TopicOptions::new("orders"))
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Some(&ErrorCode::TopicExists));
    let bad_name = client
        .create_topic(TopicOptions::new("no spaces"))
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Some(&ErrorCode::InvalidName));
    let no_group = client
        .consumer("orders", "nobody")
        .build()
        .await
        .unwrap_err();
    assert_eq!(no_group.code(), Some(&ErrorCode::GroupNotFound));

    // An invalid event is refused before it is sent.
    let invalid = client
        .publish("orders", [Event::new("z", "", "t")])
        .await
        .unwrap_err();
    assert!(matches!(invalid, Error::InvalidEvent(_)));

    // A version conflict says where the stream is.
    client
        .append(
            "orders",
            "order-1",
            [keyed("c-1", "order-1")],
            Expected::NoStream,
        )
        .await
        .unwrap();
    let conflict = client
        .append(
            "orders",
            "order-1",
            [keyed("c-2", "order-1")],
            Expected::NoStream,
        )
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Some(&ErrorCode::VersionConflict));
    assert_eq!(conflict.current_version(), Some(0));
    let (events, _) = client
        .read_stream("orders", "order-1", None, false, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "the refused append changed nothing");
}

#[tokio::test]
async fn given_queue_group_when_two_consumers_ack_should_process_every_event_once() {
    let (_server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("jobs").partitions(2))
        .await
        .unwrap();
    client
        .put_group("jobs", GroupOptions::new("workers", GroupMode::Queue))
        .await
        .unwrap();
    let events: Vec<Event> = (0..1_000)
        .map(|n| keyed(&format!("j-{n}"), &format!("k{n}")))
        .collect();
    client.publish("jobs", events).await.unwrap();

    let mut handles = Vec::new();
    for member in ["a", "b"] {
        let mut consumer = client
            .consumer("jobs", "workers")
            .member(member)
            .credits(64)
            .build()
            .await
            .unwrap();
        assert_eq!(consumer.mode(), GroupMode::Queue);
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
            {
                let delivery = delivery.unwrap();
                seen.push(delivery.event().event.id.clone());
                delivery.ack().unwrap();
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 1_000);
    assert_eq!(all.len(), 1_000, "no event delivered twice");

    let status = client.group_status("jobs", "workers").await.unwrap();
    assert_eq!(status.in_flight, 0);
    assert!(
        status
            .partitions
            .iter()
            .all(|partition| partition.committed == partition.end_offset)
    );
}

#[tokio::test]
async fn given_keyed_group_when_consuming_should_keep_one_in_flight_per_key_in_order() {
    let (_server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("accounts"))
        .await
        .unwrap();
    client
        .put_group("accounts", GroupOptions::new("ledger", GroupMode::Keyed))
        .await
        .unwrap();
    let events: Vec<Event> = (0..60)
        .map(|n| keyed(&format!("{}-{n}", n % 3), &format!("acct-{}", n % 3)))
        .collect();
    client.publish("accounts", events).await.unwrap();

    let mut consumer = client
        .consumer("accounts", "ledger")
        .credits(100)
        .build()
        .await
        .unwrap();
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for _ in 0..60 {
        // Take everything deliverable now: at most one per key.
        let first = next_within(&mut consumer).await;
        let mut batch = vec![first];
        while let Ok(Some(Ok(more))) =
            tokio::time::timeout(Duration::from_millis(100), consumer.next()).await
        {
            batch.push(more);
        }
        let keys: HashSet<String> = batch
            .iter()
            .map(|delivery| delivery.event().event.key.clone().unwrap())
            .collect();
        assert_eq!(keys.len(), batch.len(), "one in flight per key");
        for delivery in batch {
            let event = &delivery.event().event;
            let n: usize = event.id.split('-').nth(1).unwrap().parse().unwrap();
            per_key
                .entry(event.key.clone().unwrap())
                .or_default()
                .push(n);
            delivery.ack().unwrap();
        }
        if per_key.values().map(Vec::len).sum::<usize>() == 60 {
            break;
        }
    }
    for (key, order) in per_key {
        assert_eq!(order.len(), 20, "{key}");
        assert!(
            order.windows(2).all(|pair| pair[0] < pair[1]),
            "{key}: {order:?}"
        );
    }
}

#[tokio::test]
async fn given_stream_group_when_consumer_acks_should_commit_and_rebalance_on_leave() {
    let (_server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("clicks").partitions(2))
        .await
        .unwrap();
    client
        .put_group(
            "clicks",
            GroupOptions::new("analytics", GroupMode::Stream).session_timeout(LONG_ACK_WAIT),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..100)
        .map(|n| keyed(&format!("c-{n}"), &format!("u{n}")))
        .collect();
    client.publish("clicks", events).await.unwrap();

    let mut first = client
        .consumer("clicks", "analytics")
        .member("first")
        .build()
        .await
        .unwrap();
    assert_eq!(first.mode(), GroupMode::Stream);
    let mut last_offset: HashMap<u32, u64> = HashMap::new();
    for _ in 0..100 {
        let delivery = next_within(&mut first).await;
        let event = delivery.event();
        if let Some(previous) = last_offset.get(&event.partition) {
            assert_eq!(event.offset, previous + 1, "in order per partition");
        }
        last_offset.insert(event.partition, event.offset);
        delivery.ack().unwrap();
    }
    assert_eq!(
        first.assignment().map(|(partitions, _)| partitions),
        Some(vec![0, 1])
    );
    // Commits are pipelined: wait until they are applied.
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let status = client.group_status("clicks", "analytics").await.unwrap();
        if status.partitions.iter().all(|partition| partition.lag == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "commits not applied: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second member takes a partition; when the first leaves (its call
    // ends), the second gets both at once, long before the session timeout.
    let mut second = client
        .consumer("clicks", "analytics")
        .member("second")
        .build()
        .await
        .unwrap();
    client
        .publish(
            "clicks",
            (0..10).map(|n| keyed(&format!("d-{n}"), &format!("u{n}"))),
        )
        .await
        .unwrap();
    let delivery = next_within(&mut second).await;
    drop(delivery);
    drop(first);
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let status = client.group_status("clicks", "analytics").await.unwrap();
        let members: Vec<&str> = status
            .members
            .iter()
            .map(|member| member.member.as_str())
            .collect();
        if members == ["second"] {
            assert_eq!(status.members[0].partitions, vec![0, 1]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first never left: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn given_consumer_dropped_with_unacked_leases_should_redeliver_them_to_another_promptly() {
    let (_server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("tasks"))
        .await
        .unwrap();
    client
        .put_group(
            "tasks",
            GroupOptions::new("workers", GroupMode::Queue).ack_wait(LONG_ACK_WAIT),
        )
        .await
        .unwrap();
    client
        .publish("tasks", (0..10).map(|n| keyed(&format!("t-{n}"), "k")))
        .await
        .unwrap();

    let mut doomed = client
        .consumer("tasks", "workers")
        .member("doomed")
        .credits(10)
        .build()
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next_within(&mut doomed).await);
    }
    let status = client.group_status("tasks", "workers").await.unwrap();
    assert_eq!(status.in_flight, 10);

    // The consumer goes away while still holding its deliveries.
    drop(doomed);
    let mut survivor = client
        .consumer("tasks", "workers")
        .member("survivor")
        .credits(10)
        .build()
        .await
        .unwrap();
    let mut redelivered = HashSet::new();
    for _ in 0..10 {
        let delivery = next_within(&mut survivor).await;
        assert_eq!(delivery.attempt(), 2);
        redelivered.insert(delivery.event().event.id.clone());
        delivery.ack().unwrap();
    }
    assert_eq!(redelivered.len(), 10);
    // The old deliveries can no longer be settled.
    let stale = held.pop().unwrap();
    assert!(matches!(stale.ack(), Err(Error::Closed) | Ok(())));
}

#[tokio::test]
async fn given_raw_consume_call_when_client_disconnects_should_release_leases_at_once() {
    use herald_proto::v1;
    let (server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("tasks"))
        .await
        .unwrap();
    client
        .put_group(
            "tasks",
            GroupOptions::new("workers", GroupMode::Queue).ack_wait(LONG_ACK_WAIT),
        )
        .await
        .unwrap();
    client
        .publish("tasks", (0..5).map(|n| keyed(&format!("t-{n}"), "k")))
        .await
        .unwrap();

    // A client on its own connection that vanishes without a goodbye.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = v1::groups_client::GroupsClient::new(channel);
    let (requests, receiver) = tokio::sync::mpsc::channel(8);
    requests
        .send(v1::ConsumeRequest {
            request: Some(v1::consume_request::Request::Start(v1::ConsumeStart {
                topic: "tasks".into(),
                group: "workers".into(),
                member: "raw".into(),
                credit: 5,
            })),
            seq: 0,
        })
        .await
        .unwrap();
    let mut responses = raw
        .consume(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while received < 5 {
        let message = responses.message().await.unwrap().unwrap();
        if let Some(v1::consume_response::Response::Deliveries(batch)) = message.response {
            received += batch.deliveries.len();
        }
    }
    drop(requests);
    drop(responses);
    drop(raw);

    let mut other = client
        .consumer("tasks", "workers")
        .credits(5)
        .build()
        .await
        .unwrap();
    for _ in 0..5 {
        let delivery = next_within(&mut other).await;
        assert_eq!(delivery.attempt(), 2);
        delivery.ack().unwrap();
    }
}

#[tokio::test]
async fn given_subscriber_from_position_should_get_events_from_there_then_live_ones() {
    let (_server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("feed"))
        .await
        .unwrap();
    client
        .publish("feed", (0..20).map(|n| keyed(&format!("f-{n}"), "k")))
        .await
        .unwrap();
    let mut subscriber = client
        .subscribe("feed")
        .from(From::Positions(vec![(0, 15)]))
        .build()
        .await
        .unwrap();
    for expected in 15..20 {
        let event = tokio::time::timeout(PROMPTLY, subscriber.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.offset, expected);
    }
    client.publish("feed", [keyed("live", "k")]).await.unwrap();
    let live = tokio::time::timeout(PROMPTLY, subscriber.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(live.event.id, "live");
    assert_eq!(subscriber.positions(), vec![(0, 21)]);

    let filtered = client
        .subscribe("feed")
        .from(From::Earliest)
        .types(["other.type"])
        .build()
        .await
        .unwrap();
    drop(filtered);
    let missing = client.subscribe("nope").build().await.unwrap_err();
    assert_eq!(missing.code(), Some(&ErrorCode::TopicNotFound));
}

#[tokio::test]
async fn given_grpc_health_should_report_serving_once_ready() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let (server, _client) = server_and_client().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "herald.v1.Events", "herald.v1.Groups"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
    }
}

/// What a reflection client of either version sees: the services listed,
/// and a `herald.v1` file found by symbol.
macro_rules! reflect {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new($channel);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("herald.v1.Topics".to_owned()),
        ]
        .map(|message| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        });
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let mut services = Vec::new();
        let mut files = 0;
        while let Some(answer) = answers.message().await.unwrap() {
            match answer.message_response.unwrap() {
                MessageResponse::ListServicesResponse(list) => {
                    services.extend(list.service.into_iter().map(|service| service.name));
                }
                MessageResponse::FileDescriptorResponse(found) => {
                    files += found.file_descriptor_proto.len();
                }
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
        (services, files)
    }};
}

#[tokio::test]
async fn given_grpc_tooling_should_find_services_by_reflection_and_unimplemented_for_the_rest() {
    let (server, _client) = server_and_client().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (version, (services, files)) in [
        ("v1", reflect!(v1, channel.clone())),
        ("v1alpha", reflect!(v1alpha, channel.clone())),
    ] {
        for service in [
            "herald.v1.Events",
            "herald.v1.Topics",
            "herald.v1.Webhooks",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                services.iter().any(|listed| listed == service),
                "{version}: {service} not in {services:?}"
            );
        }
        assert!(files >= 1, "{version}: no file for herald.v1.Topics");
    }
    // A service or a method Herald does not have: UNIMPLEMENTED, as gRPC
    // clients expect (not an HTTP 404 or 403 they would see as UNKNOWN).
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in ["/no.such.Service/Call", "/herald.v1.Topics/NoSuchMethod"] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, herald_proto::v1::Empty, _>(
                tonic::Request::new(herald_proto::v1::Empty {}),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
}

#[test]
fn given_every_server_error_code_should_be_known_to_the_sdk() {
    for code in herald_server::problem::Code::ALL {
        let parsed: ErrorCode = code.as_str().parse().unwrap();
        assert!(
            !matches!(parsed, ErrorCode::Other(_)),
            "the SDK does not know {}",
            code.as_str()
        );
    }
}

// ------------------------------------------------------------ aggregates

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    created: bool,
    paid_by: Option<String>,
}

enum Command {
    Create,
    Pay(String),
}

struct Orders;

impl Decider for Orders {
    type State = Order;
    type Command = Command;
    type Refusal = String;

    fn evolve(mut state: Order, event: &Event) -> Order {
        match event.ty.as_str() {
            "order.created" => state.created = true,
            "order.paid" => {
                state.paid_by = event.subject.clone();
            }
            _ => {}
        }
        state
    }

    fn decide(command: &Command, state: &Order) -> Result<Vec<Event>, String> {
        match command {
            Command::Create if state.created => Err("exists".into()),
            Command::Create => Ok(vec![Event::new("", "/orders", "order.created")]),
            Command::Pay(_) if !state.created => Err("no such order".into()),
            Command::Pay(_) if state.paid_by.is_some() => Err("already paid".into()),
            Command::Pay(payer) => {
                let mut paid = Event::new("", "/orders", "order.paid");
                paid.subject = Some(payer.clone());
                Ok(vec![paid])
            }
        }
    }
}

#[tokio::test]
async fn given_two_concurrent_payments_when_handled_by_aggregate_should_let_exactly_one_win() {
    let (_server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("orders"))
        .await
        .unwrap();
    let orders = Aggregate::<Orders>::new(client.clone(), "orders").snapshot_every(1);
    let created = orders.handle("order-7", &Command::Create).await.unwrap();
    assert_eq!(created.version, Some(0));

    let (alice, bob) = (Command::Pay("alice".into()), Command::Pay("bob".into()));
    let (first, second) = tokio::join!(
        orders.handle("order-7", &alice),
        orders.handle("order-7", &bob),
    );
    let outcomes = [first, second];
    let wins = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(wins, 1, "exactly one payment wins");
    assert!(outcomes.iter().any(|outcome| matches!(
        outcome,
        Err(HandleError::Refused(reason)) if reason == "already paid"
    )));

    let loaded = orders.load("order-7").await.unwrap();
    assert_eq!(loaded.version, Some(1));
    assert!(loaded.state.created && loaded.state.paid_by.is_some());
    // Every append snapshots here: the snapshot holds the latest state.
    let (version, state) = client
        .get_snapshot("orders", "order-7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(version, 1);
    assert_eq!(
        serde_json::from_value::<Order>(state).unwrap(),
        loaded.state
    );
}

// ------------------------------------------------------------ jobs and blobs

#[tokio::test]
async fn given_sdk_job_with_blob_when_a_worker_completes_it_should_notify_and_return_the_result() {
    use futures::StreamExt as _;
    use herald_client::{JobSpec, JobStatus};
    use serde_json::json;

    let (_server, client) = server_and_client().await;
    let text = "alpha beta gamma";
    let blob = client
        .put_blob_bytes(text.as_bytes().to_vec())
        .await
        .unwrap();
    assert!(blob.id.starts_with("sha256:"));
    assert_eq!(blob.size, text.len() as u64);
    let again = client
        .put_blob_bytes(text.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(again, blob, "content-addressed: stored once");

    let job = client
        .submit_job(
            "wordcount",
            JobSpec::new(json!({"lang": "en"})).blob(&blob.id),
        )
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    let mut watch = Box::pin(client.watch_job(&job.job_id).await.unwrap());
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(update) = watch.next().await {
            seen.push(update.unwrap());
        }
        seen
    });

    let mut worker = client.job_worker("wordcount").member("w1");
    let task = tokio::time::timeout(PROMPTLY, worker.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.job_id, job.job_id);
    assert_eq!(task.data, json!({"lang": "en"}));
    let input = client
        .get_blob_bytes(task.blob.as_deref().unwrap())
        .await
        .unwrap();
    let words = std::str::from_utf8(&input).unwrap().split(' ').count();
    task.progress(Some(0.5), Some("counting")).await.unwrap();
    let done = task.complete(json!({"words": words})).await.unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);

    let result = client.wait_job(&job.job_id, PROMPTLY).await.unwrap();
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.result, Some(json!({"words": 3})));
    // Times in RFC 3339, as over REST.
    let created = herald_types::parse_rfc3339_ms(job.created_at.as_deref().unwrap()).unwrap();
    let expires = herald_types::parse_rfc3339_ms(result.expires_at.as_deref().unwrap()).unwrap();
    assert!(expires > created, "{result:?}");
    assert_eq!(result.created_at, job.created_at);
    let seen = tokio::time::timeout(PROMPTLY, watcher)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.first().map(|job| job.status), Some(JobStatus::Pending));
    assert_eq!(
        seen.last().map(|job| job.status),
        Some(JobStatus::Succeeded)
    );
    assert!(
        seen.iter().any(|job| job.status == JobStatus::Running),
        "{seen:?}"
    );

    // A range of the blob.
    let mut range = Box::pin(client.get_blob(&blob.id, Some(6..10)).await.unwrap());
    let mut part = Vec::new();
    while let Some(chunk) = range.next().await {
        part.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(part, b"beta");
}

#[tokio::test]
async fn given_a_job_worker_started_before_its_queue_exists_when_a_job_is_submitted_should_receive_it()
 {
    use herald_client::JobSpec;
    use serde_json::json;

    let (_server, client) = server_and_client().await;
    let mut worker = client.job_worker("later").member("w1");
    // The queue does not exist yet: the worker waits (its fetches answer
    // queue_not_found, which it does not surface) and creates nothing.
    let early = tokio::time::timeout(Duration::from_millis(1_500), worker.next()).await;
    assert!(early.is_err(), "a task before any submit: {early:?}");
    let topics = client.list_topics().await.unwrap();
    assert!(topics.is_empty(), "{topics:?}");

    let job = client
        .submit_job("later", JobSpec::new(json!({"n": 1})))
        .await
        .unwrap();
    let task = tokio::time::timeout(PROMPTLY, worker.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.job_id, job.job_id);
}

#[tokio::test]
async fn given_bad_job_requests_through_sdk_should_get_typed_errors() {
    use herald_client::JobSpec;
    use serde_json::json;

    let (_server, client) = server_and_client().await;
    let missing = client.job("no-such-job").await.unwrap_err();
    assert_eq!(missing.code(), Some(&ErrorCode::JobNotFound));
    let no_blob = client
        .submit_job(
            "q",
            JobSpec::new(json!({})).blob(format!("sha256:{}", "0".repeat(64))),
        )
        .await
        .unwrap_err();
    assert_eq!(no_blob.code(), Some(&ErrorCode::BlobNotFound));
    let unknown_blob = client.get_blob_bytes("sha256:nothex").await.unwrap_err();
    assert_eq!(unknown_blob.code(), Some(&ErrorCode::BlobNotFound));
}

/// Hardening point 6 through the SDK: `Delivery::ack_persisted` returns
/// once the server persisted the ack, so a `kill -9` right after it does not
/// bring the event back; an event only `ack`ed then may come back.
#[tokio::test]
async fn given_acks_persisted_through_the_sdk_when_the_server_is_killed_should_not_redeliver_them()
{
    let (server, client) = server_and_client().await;
    client
        .create_topic(TopicOptions::new("jobs"))
        .await
        .unwrap();
    client
        .put_group("jobs", GroupOptions::new("workers", GroupMode::Queue))
        .await
        .unwrap();
    let events: Vec<Event> = (0..20).map(|n| keyed(&format!("j-{n}"), "k")).collect();
    client.publish("jobs", events).await.unwrap();
    let mut consumer = client
        .consumer("jobs", "workers")
        .member("w")
        .credits(20)
        .build()
        .await
        .unwrap();
    let mut persisted = HashSet::new();
    for _ in 0..20 {
        let delivery = next_within(&mut consumer).await;
        persisted.insert(delivery.event().event.id.clone());
        delivery.ack_persisted().await.unwrap();
    }
    server.signal("KILL").await;
    let (_status, _stderr, dir) = server.wait().await;
    let command = serve(dir.path());
    let (server, _api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let client = Client::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let mut consumer = client
        .consumer("jobs", "workers")
        .member("checker")
        .build()
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_millis(1_500), consumer.next()).await;
    assert!(
        again.is_err(),
        "an ack persisted through the SDK came back: {:?}",
        again
            .ok()
            .flatten()
            .map(|delivery| delivery.map(|d| d.event().event.id.clone()))
    );
    assert_eq!(persisted.len(), 20);
}
