//! `herald-bench http`: the gateway's points of issue 22, each beside a
//! ceiling on the same machine.
//!
//! ```text
//! cargo build --release -p herald-bench -p herald-server --bin herald --bin herald-bench
//! target/release/herald-bench http --out http-out
//! ```
//!
//! 1. **Publish, one event per request** and **a batch of 100 per
//!    request**: `--concurrency` tasks post through one reqwest client
//!    (HTTP/1.1, keep-alive) for `--seconds`, to `herald serve` (release,
//!    fresh temp dir, topic `bench`, `--fsync`) and to the ceiling: a plain
//!    axum handler on the same path, on a runtime of its own with as many
//!    workers as Herald's, that parses the JSON body and answers 201 with a
//!    `results` array shaped like Herald's. The two alternate, `--pairs`
//!    times per point. The events carry no id (Herald assigns one), so no
//!    request is a duplicate.
//! 2. **gRPC unary publish of one event** (W2 D1's shape): `--concurrency`
//!    tasks on one SDK client, each with one `Publish` in flight, against
//!    Herald (topic `bench-unary`, one partition, `--fsync`) and against a
//!    ceiling: tonic's generated `herald.v1.Events` service in an axum
//!    router, as Herald serves it, answering with a result per event and
//!    storing nothing. The floor of the RPC stack itself, client and server.
//! 3. **SSE fan-out**: `--subscribers` subscribers of
//!    `GET /v1/topics/bench/events/stream` (from latest), one connection
//!    each; the SDK publishes `--sse-rate` events per second for
//!    `--sse-seconds`, each stamped with its send time; every subscriber
//!    times every event from send to its `data:` line. Deliveries per
//!    second, publish → subscriber p50/p99/max, and how many of the
//!    expected deliveries arrived.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use futures::StreamExt;
use herald_client::{Event, ExtensionValue, Fsync, TopicOptions};
use serde_json::{Value, json};

use crate::noise::ProcessFootprint;
use crate::peers::{self, Herald};
use crate::workloads::{Latency, Run, Timing, concurrent, herald_event, histogram, nanos};
use herald_client::proto as v1;

/// The HTTP points' settings.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Concurrent requests of the publish points.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds per publish run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Ceiling/Herald pairs per publish point.
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Event payload bytes (a JSON string of this many characters).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// The topic's fsync policy (never: D1, always: D2).
    #[arg(long, default_value = "never")]
    fsync: String,
    /// SSE subscribers.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Events per second published during the SSE point.
    #[arg(long, default_value_t = 50.0)]
    sse_rate: f64,
    /// Seconds of the SSE point.
    #[arg(long, default_value_t = 10.0)]
    sse_seconds: f64,
    /// Where `summary.json` goes.
    #[arg(long, default_value = "http-out")]
    out: PathBuf,
    /// The herald binary (default: next to this binary).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
}

const TOPIC: &str = "bench";
const UNARY_TOPIC: &str = "bench-unary";
const STAMP: &str = "sentns";

/// One CloudEvent without an id, as JSON.
fn event_json(payload: &str) -> Value {
    json!({
        "specversion": "1.0",
        "source": "/bench",
        "type": "bench.http",
        "datacontenttype": "application/json",
        "data": payload,
    })
}

/// The REST ceiling: parses the body as JSON and answers 201 with a
/// result per event.
fn rest_ceiling() -> axum::Router {
    let offset = Arc::new(AtomicU64::new(0));
    axum::Router::new().route(
        "/v1/topics/{topic}/events",
        axum::routing::post(move |body: axum::body::Bytes| {
            let offset = Arc::clone(&offset);
            async move {
                let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, String::new());
                };
                let count = parsed.as_array().map_or(1, Vec::len) as u64;
                let first = offset.fetch_add(count, Ordering::Relaxed);
                let results: Vec<Value> = (first..first + count)
                    .map(|offset| {
                        json!({"id": format!("e-{offset}"), "partition": 0, "offset": offset, "duplicate": false})
                    })
                    .collect();
                (
                    axum::http::StatusCode::CREATED,
                    json!({ "results": results }).to_string(),
                )
            }
        }),
    )
}

/// The gRPC ceiling: `herald.v1.Events` answering `Publish` with a result
/// per event and storing nothing, served as Herald serves it (tonic's
/// generated service in an axum router).
#[derive(Default)]
struct CeilingEvents {
    offset: AtomicU64,
}

type Unanswered<T> = futures::stream::Empty<Result<T, tonic::Status>>;

#[tonic::async_trait]
impl v1::events_server::Events for CeilingEvents {
    async fn publish(
        &self,
        request: tonic::Request<v1::PublishRequest>,
    ) -> Result<tonic::Response<v1::PublishResponse>, tonic::Status> {
        let count = request.get_ref().events.len() as u64;
        let first = self.offset.fetch_add(count, Ordering::Relaxed);
        let results = (first..first + count)
            .map(|offset| v1::PublishResult {
                id: format!("e-{offset}"),
                partition: 0,
                offset,
                duplicate: false,
            })
            .collect();
        Ok(tonic::Response::new(v1::PublishResponse { results }))
    }

    type PublishStreamStream = Unanswered<v1::PublishAck>;

    async fn publish_stream(
        &self,
        _: tonic::Request<tonic::Streaming<v1::PublishRequest>>,
    ) -> Result<tonic::Response<Self::PublishStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the ceiling answers Publish only",
        ))
    }

    async fn read(
        &self,
        _: tonic::Request<v1::ReadRequest>,
    ) -> Result<tonic::Response<v1::ReadResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the ceiling answers Publish only",
        ))
    }

    type SubscribeStream = Unanswered<v1::SubscribeResponse>;

    async fn subscribe(
        &self,
        _: tonic::Request<v1::SubscribeRequest>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the ceiling answers Publish only",
        ))
    }
}

fn grpc_ceiling() -> axum::Router {
    axum::Router::new().route_service(
        "/herald.v1.Events/{*method}",
        v1::events_server::EventsServer::new(CeilingEvents::default()),
    )
}

/// Serves `router` on a runtime of its own (`workers` threads), apart from
/// the bench's clients; returns its address.
fn serve_apart(router: axum::Router, workers: usize) -> Result<std::net::SocketAddr> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("ceiling")
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ceiling".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                    let _ = axum::serve(listener, router).await;
                }
            });
        })?;
    Ok(addr)
}

/// One publish run: `concurrency` posters of `body` to `url` for
/// `seconds`; requests per second and the latency of each.
async fn drive(
    url: &str,
    body: &Bytes,
    content_type: &str,
    args: &HttpArgs,
) -> Result<(f64, Latency)> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, url, body, content_type) = (
            http.clone(),
            url.to_owned(),
            body.clone(),
            content_type.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram()?;
            let mut sent = 0u64;
            while Instant::now() < end {
                let at = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", &content_type)
                    .body(body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let text = response.bytes().await?;
                ensure!(
                    status == reqwest::StatusCode::CREATED,
                    "{url} answered {status}: {}",
                    String::from_utf8_lossy(&text)
                );
                latency.saturating_record((nanos(at.elapsed()) / 1_000).max(1));
                sent += 1;
            }
            Ok::<_, anyhow::Error>((sent, latency))
        }));
    }
    let mut total = 0;
    let mut merged = histogram()?;
    for task in tasks {
        let (sent, latency) = task.await??;
        total += sent;
        merged.add(&latency)?;
    }
    Ok((
        total as f64 / started.elapsed().as_secs_f64(),
        Latency::from_histogram(&merged),
    ))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the HTTP points.
pub async fn run(args: HttpArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let herald_bin = args.herald_bin.clone().unwrap_or_else(peers::find_herald);
    let herald = Herald::launch(
        &herald_bin,
        std::path::Path::new("/tmp"),
        Stdio::inherit(),
        false,
    )?;
    let http = reqwest::Client::new();
    peers::wait_ok(&http, &format!("{}/readyz", herald.endpoint.url), "herald").await?;
    let fsync = match args.fsync.as_str() {
        "always" => Fsync::Always,
        "never" => Fsync::Never,
        other => anyhow::bail!("--fsync: always or never, not {other}"),
    };
    let client = herald.endpoint.client().await?;
    client
        .create_topic(TopicOptions::new(TOPIC).partitions(4).fsync(fsync))
        .await?;
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let ceiling = serve_apart(rest_ceiling(), workers)?;

    let payload = "x".repeat(args.size);
    let one = Bytes::from(event_json(&payload).to_string());
    let batch =
        Bytes::from(Value::Array((0..100).map(|_| event_json(&payload)).collect()).to_string());
    let points = [
        ("publish-1", one, "application/cloudevents+json", 1.0),
        (
            "publish-100",
            batch,
            "application/cloudevents-batch+json",
            100.0,
        ),
    ];
    let mut results = Vec::new();
    for (name, body, content_type, per_request) in &points {
        let (mut ceiling_rates, mut herald_rates) = (Vec::new(), Vec::new());
        let mut latencies = Vec::new();
        for pair in 0..args.pairs {
            let ceiling_url = format!("http://{ceiling}/v1/topics/{TOPIC}/events");
            let herald_url = format!("{}/v1/topics/{TOPIC}/events", herald.endpoint.url);
            let (ceiling_rate, ceiling_latency) =
                drive(&ceiling_url, body, content_type, &args).await?;
            let (herald_rate, herald_latency) =
                drive(&herald_url, body, content_type, &args).await?;
            println!(
                "http: {name} pair {pair}: ceiling {ceiling_rate:.0} req/s (p50 {} µs, p99 {} µs), herald {herald_rate:.0} req/s (p50 {} µs, p99 {} µs) = {:.2}",
                ceiling_latency.p50,
                ceiling_latency.p99,
                herald_latency.p50,
                herald_latency.p99,
                herald_rate / ceiling_rate
            );
            ceiling_rates.push(ceiling_rate);
            herald_rates.push(herald_rate);
            latencies.push(
                json!({"ceiling": ceiling_latency.to_json(), "herald": herald_latency.to_json()}),
            );
        }
        let mut ratios: Vec<f64> = herald_rates
            .iter()
            .zip(&ceiling_rates)
            .map(|(herald, ceiling)| herald / ceiling)
            .collect();
        results.push(json!({
            "point": name,
            "events_per_request": per_request,
            "ceiling_requests_per_s": ceiling_rates,
            "herald_requests_per_s": herald_rates,
            "herald_events_per_s_median": median(&mut herald_rates.clone()) * per_request,
            "ratio_median": median(&mut ratios),
            "latency_us": latencies,
        }));
    }

    let unary = grpc_unary(&herald, fsync, workers, &args).await?;
    let sse = sse_fan_out(&herald, &args).await?;
    let summary = json!({
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "size": args.size,
        "fsync": args.fsync,
        "herald": peers::version(&herald_bin),
        "publish": results,
        "grpc_unary": unary,
        "sse": sse,
    });
    let path = args.out.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)?;
    println!("http: wrote {}", path.display());
    Ok(())
}

/// The gRPC point: `--concurrency` tasks on one SDK client, each with one
/// unary `Publish` of one event in flight (W2's shape), against the tonic
/// ceiling and against Herald (a topic of one partition, `--fsync`),
/// alternating `--pairs` times. The ceiling runs in this process, so its
/// CPU per call is the client's and the ceiling's together.
async fn grpc_unary(
    herald: &Herald,
    fsync: Fsync,
    workers: usize,
    args: &HttpArgs,
) -> Result<Value> {
    let herald_client = herald.endpoint.client().await?;
    herald_client
        .create_topic(TopicOptions::new(UNARY_TOPIC).partitions(1).fsync(fsync))
        .await?;
    let ceiling = serve_apart(grpc_ceiling(), workers)?;
    let ceiling_client = herald_client::Client::connect(format!("http://{ceiling}")).await?;
    let timing = Timing {
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let run = |client: herald_client::Client, pid: u32| {
        let payload = Bytes::from(vec![b'x'; args.size]);
        concurrent(
            pid,
            args.concurrency as u64,
            timing,
            |_| (),
            move |()| {
                let (client, event) = (client.clone(), herald_event(&payload));
                async move {
                    client.publish(UNARY_TOPIC, [event]).await?;
                    Ok(())
                }
            },
        )
    };
    let per_call =
        |cpu: f64, run: &Run| cpu * 1e6 / run.latency.map_or(1, |l| l.count.max(1)) as f64;
    let mut pairs = Vec::new();
    let mut ratios = Vec::new();
    for pair in 0..args.pairs {
        let (ceiling_run, _) = run(ceiling_client.clone(), std::process::id()).await?;
        let (herald_run, _) = run(herald_client.clone(), herald.pid()).await?;
        let ceiling_cpu = per_call(ceiling_run.noise.client_cpu, &ceiling_run);
        let (server_cpu, client_cpu) = (
            per_call(herald_run.noise.server_cpu, &herald_run),
            per_call(herald_run.noise.client_cpu, &herald_run),
        );
        let ratio = herald_run.throughput / ceiling_run.throughput;
        println!(
            "http: gRPC unary pair {pair}: ceiling {:.0} calls/s ({ceiling_cpu:.1} µs CPU per call, client and ceiling), herald {:.0} calls/s ({server_cpu:.1} µs server + {client_cpu:.1} µs client CPU per call) = {ratio:.2}",
            ceiling_run.throughput, herald_run.throughput,
        );
        ratios.push(ratio);
        pairs.push(json!({
            "ceiling_calls_per_s": ceiling_run.throughput,
            "ceiling_cpu_us_per_call": ceiling_cpu,
            "herald_calls_per_s": herald_run.throughput,
            "herald_server_cpu_us_per_call": server_cpu,
            "herald_client_cpu_us_per_call": client_cpu,
            "latency_us": {
                "ceiling": ceiling_run.latency.map(Latency::to_json),
                "herald": herald_run.latency.map(Latency::to_json),
            },
        }));
    }
    Ok(json!({ "pairs": pairs, "ratio_median": median(&mut ratios) }))
}

/// The SSE fan-out point.
async fn sse_fan_out(herald: &Herald, args: &HttpArgs) -> Result<Value> {
    let clock = Instant::now();
    let url = format!(
        "{}/v1/topics/{TOPIC}/events/stream?from=latest",
        herald.endpoint.url
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;
    let delivered = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        let (http, url, delivered, connected, stop) = (
            http.clone(),
            url.clone(),
            Arc::clone(&delivered),
            Arc::clone(&connected),
            stop.clone(),
        );
        subscribers.push(tokio::spawn(async move {
            let mut latency = histogram()?;
            let response = http.get(&url).send().await?;
            ensure!(
                response.status().is_success(),
                "SSE answered {}",
                response.status()
            );
            connected.fetch_add(1, Ordering::SeqCst);
            let mut body = response.bytes_stream();
            let mut line = Vec::new();
            loop {
                let chunk = tokio::select! {
                    () = stop.cancelled() => break,
                    chunk = body.next() => chunk,
                };
                let Some(chunk) = chunk else { break };
                for &byte in chunk?.iter() {
                    if byte != b'\n' {
                        line.push(byte);
                        continue;
                    }
                    if let Some(data) = line.strip_prefix(b"data:")
                        && let Some(sent) = stamp(data)
                    {
                        let at = nanos(clock.elapsed());
                        latency.saturating_record((at.saturating_sub(sent) / 1_000).max(1));
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    line.clear();
                }
            }
            Ok::<_, anyhow::Error>(latency)
        }));
    }
    let connecting = Instant::now();
    while connected.load(Ordering::SeqCst) < args.subscribers as u64 {
        ensure!(
            connecting.elapsed() < Duration::from_secs(60),
            "only {} of {} SSE subscribers connected in 60 s",
            connected.load(Ordering::SeqCst),
            args.subscribers
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A subscription from `latest` starts at the end as of its request;
    // give the last ones a moment to be following.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = herald.endpoint.client().await?;
    let interval = Duration::from_secs_f64(1.0 / args.sse_rate);
    let started = Instant::now();
    let mut published = 0u64;
    while started.elapsed() < Duration::from_secs_f64(args.sse_seconds) {
        crate::workloads::pace(started + interval.mul_f64(published as f64)).await;
        let mut event = Event::new("", "/bench", "bench.sse");
        let sent = nanos(clock.elapsed());
        event.extensions.insert(
            STAMP.to_owned(),
            ExtensionValue::Integer(i64::try_from(sent).unwrap_or(i64::MAX)),
        );
        client.publish(TOPIC, [event]).await?;
        published += 1;
    }
    let expected = published * args.subscribers as u64;
    let draining = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected
        && draining.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let server = ProcessFootprint::take(herald.pid());
    stop.cancel();
    let mut merged = histogram()?;
    for subscriber in subscribers {
        merged.add(&subscriber.await.context("subscriber")??)?;
    }
    let got = delivered.load(Ordering::Relaxed);
    let latency = Latency::from_histogram(&merged);
    println!(
        "http: SSE fan-out to {} subscribers: {published} events published, {got} of {expected} deliveries ({:.0}/s), p50 {} µs, p99 {} µs, max {} µs; server RSS {:.1} MB, {} fds",
        args.subscribers,
        got as f64 / seconds,
        latency.p50,
        latency.p99,
        latency.max,
        server.rss_bytes as f64 / 1e6,
        server.open_fds,
    );
    Ok(json!({
        "subscribers": args.subscribers,
        "rate": args.sse_rate,
        "published": published,
        "expected": expected,
        "delivered": got,
        "deliveries_per_s": got as f64 / seconds,
        "latency_us": latency.to_json(),
        "server_rss_bytes": server.rss_bytes,
        "server_open_fds": server.open_fds,
    }))
}

/// The `sentns` stamp in an SSE `data:` line (the event's JSON), without
/// parsing the whole of it.
fn stamp(data: &[u8]) -> Option<u64> {
    let key = b"\"sentns\":";
    let at = data.windows(key.len()).position(|window| window == key)? + key.len();
    let digits: Vec<u8> = data[at..]
        .iter()
        .copied()
        .skip_while(|byte| *byte == b' ')
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_read_from_an_sse_data_line() {
        assert_eq!(stamp(br#"{"id":"a","sentns": 12345,"x":1}"#), Some(12345));
        assert_eq!(stamp(br#"{"id":"a"}"#), None);
    }

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert!((median(&mut [3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&mut [4.0, 1.0]) - 4.0).abs() < f64::EPSILON);
    }
}
