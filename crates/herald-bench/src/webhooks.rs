//! `herald-bench webhooks`: W7, webhook delivery.
//!
//! ```text
//! cargo build --release -p herald-bench -p herald-server --bin herald --bin herald-bench
//! target/release/herald-bench webhooks --out w7-out
//! ```
//!
//! 1. **Ceiling**: a receiver in this process (axum, answering 204 after
//!    parsing the JSON body, as it does for Herald) is driven directly by
//!    `--concurrency` posters of the body Herald delivers for one of this
//!    run's events (same attributes, `--size` bytes of data; until
//!    2026-12-05 a body with 3 bytes of data, about half the size) through
//!    one reqwest client (the stack Herald's sender uses: hyper, rustls
//!    unused on `http://`), for `--seconds`: the receiver's raw rate. The reference runs the posters in a process of their own
//!    (`herald-bench webhook-client`, as Herald is one), each request with
//!    Herald's headers and per-request timeout; the same with plain
//!    requests from this process is reported beside it. The reference is
//!    measured again once Herald has stopped, and the mean of both taken
//!    (this host's speed drifts by ±10% within a minute).
//! 2. **Throughput**: `herald serve` (release, fresh temp dir, allowed to
//!    reach loopback), a topic of 4 partitions and one endpoint on it.
//!    First from a backlog: `--backlog-events` events published while the
//!    endpoint is disabled, then it is enabled (deliveries alone, as the
//!    ceiling sends alone). Then `--events` events published in batches of
//!    500 while it delivers; each rate from the first delivery to the last.
//! 3. **Beside a failing endpoint**: a second endpoint on the same topic
//!    whose receiver waits 1 s and answers 500 (it fills its own in-flight
//!    budget and its circuit opens); `--events` more, the healthy
//!    endpoint's rate again.
//! 4. **Latency**: events published at `--rate` for `--latency-seconds`,
//!    one per publish call, each stamped with the time its publish was
//!    sent; publish → receipt p50/p99 at the healthy receiver (the failing
//!    endpoint still beside it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use herald_client::{Client, Event, ExtensionValue, TopicOptions};
use serde_json::{Value, json};

use crate::noise::Snapshot;
use crate::peers::{self, Herald};
use crate::workloads::{Latency, histogram, nanos};

/// W7's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Events per throughput phase with publishing beside.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Events of the phase from a backlog: enough for seconds of delivery,
    /// so its rate is not a moment's (it is compared with the ceiling's
    /// `--seconds`).
    #[arg(long, default_value_t = 200_000)]
    backlog_events: u64,
    /// Concurrent requests of the ceiling phase (Herald's per-endpoint
    /// in-flight budget is `webhooks.max_in_flight`, 64 by default).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of the ceiling phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Event payload bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Events per second of the latency phase.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// Where `summary.json` goes.
    #[arg(long, default_value = "w7-out")]
    out: PathBuf,
    /// The herald binary (default: next to this binary).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
}

const TOPIC: &str = "w7.events";
const STAMP: &str = "sentns";

/// What a receiver counted.
#[derive(Default)]
struct Counts {
    received: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    latency: Mutex<Option<Histogram<u64>>>,
}

impl Counts {
    fn reset(&self) {
        self.received.store(0, Ordering::SeqCst);
        *self
            .first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn rate(&self) -> f64 {
        let first = *self
            .first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (first, last) {
            (Some(first), Some(last)) if last > first => {
                self.received.load(Ordering::SeqCst).saturating_sub(1) as f64
                    / (last - first).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// A receiver: parses each body (as any real one would), records its
/// stamp's latency, answers `status` after `delay`.
async fn receiver(
    clock: Instant,
    status: u16,
    delay: Duration,
) -> Result<(SocketAddr, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    let state = Arc::clone(&counts);
    let router = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let counts = Arc::clone(&state);
        async move {
            let now = Instant::now();
            if let Ok(event) = serde_json::from_slice::<Value>(&body)
                && let Some(sent) = event[STAMP].as_u64()
                && let Ok(mut latency) = counts.latency.lock()
                && let Some(latency) = latency.as_mut()
            {
                let at = nanos(now.saturating_duration_since(clock));
                latency.saturating_record((at.saturating_sub(sent) / 1_000).max(1));
            }
            counts.received.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut first) = counts.first.lock() {
                first.get_or_insert(now);
            }
            if let Ok(mut last) = counts.last.lock() {
                *last = Some(now);
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            axum::http::StatusCode::from_u16(status)
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((addr, counts))
}

fn event(payload: &Bytes, n: u64, sent_ns: Option<u64>) -> Event {
    let mut event = Event::new("", "/w7", "w7.created");
    event.subject = Some(format!("s-{}", n % 1_024));
    event.datacontenttype = Some("application/octet-stream".to_owned());
    event.data = Some(payload.clone());
    if let Some(sent) = sent_ns {
        event.extensions.insert(
            STAMP.to_owned(),
            ExtensionValue::Integer(i64::try_from(sent).unwrap_or(i64::MAX)),
        );
    }
    event
}

/// The ceiling's requests: a plain POST of the body, or one shaped as
/// Herald's sender shapes an attempt (its headers, of the same lengths,
/// and a per-request timeout: a timer armed and dropped each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Plain,
    Herald,
}

/// The headers of Herald's attempts, with values of their usual lengths
/// (`webhook-signature` is one `v1,` HMAC-SHA256 in base64).
const HERALD_HEADERS: [(&str, &str); 5] = [
    ("content-type", "application/cloudevents+json"),
    (
        "user-agent",
        concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")),
    ),
    ("webhook-id", "w7.events.0.1234567"),
    ("webhook-timestamp", "1764633600"),
    (
        "webhook-signature",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ),
];

/// Herald's attempt timeout (`webhooks.attempt_timeout_ms`'s default).
const HERALD_TIMEOUT: Duration = Duration::from_secs(15);

/// The body the ceiling posts: what Herald delivers for one of this run's
/// events (`size` bytes of data, as Herald serializes a stored event), so
/// the receiver reads and parses as much per request as from Herald.
fn sample_body(size: usize) -> Result<Bytes> {
    let mut event = event(&Bytes::from(vec![b'x'; size]), 1, None);
    event.id = "0190f0f0-0000-7000-8000-000000000000".to_owned();
    let stored = herald_types::StoredEvent {
        topic: TOPIC.parse()?,
        partition: 0,
        offset: 1_234_567,
        appended_at: 1_764_633_600_000,
        event,
    };
    Ok(Bytes::from(serde_json::to_vec(&stored)?))
}

/// `concurrency` posters of `body` to `url` through one reqwest client
/// (Herald's sender's stack: hyper, rustls unused on `http://`) for
/// `seconds`: the requests answered, and this process's CPU seconds.
async fn post_for(
    url: &str,
    concurrency: usize,
    seconds: f64,
    shape: Shape,
    body: Bytes,
) -> Result<(u64, f64)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let before = Snapshot::take(None);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, body) = (http.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < end {
                let mut request = http.post(&url).body(body.clone());
                request = match shape {
                    Shape::Plain => request.header("content-type", "application/cloudevents+json"),
                    Shape::Herald => HERALD_HEADERS
                        .iter()
                        .fold(request, |request, (name, value)| {
                            request.header(*name, *value)
                        })
                        .timeout(HERALD_TIMEOUT),
                };
                request.send().await?.bytes().await?;
                sent += 1;
            }
            Ok::<_, anyhow::Error>(sent)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, Snapshot::take(None).since(&before).client_cpu))
}

/// The receiver's own rate under `concurrency` posters from this process,
/// plain requests, and this process's CPU per request (client and receiver
/// together): the figure W7 compared against until 2026-12-05.
async fn ceiling_in_process(addr: SocketAddr, args: &WebhookArgs) -> Result<(f64, f64)> {
    let started = Instant::now();
    let (total, cpu) = post_for(
        &format!("http://{addr}/hook"),
        args.concurrency,
        args.seconds,
        Shape::Plain,
        sample_body(args.size)?,
    )
    .await?;
    Ok((
        total as f64 / started.elapsed().as_secs_f64(),
        per_unit(cpu, total),
    ))
}

/// The receiver's rate under `concurrency` posters in a process of their
/// own (`herald-bench webhook-client`), each request shaped as Herald's:
/// the same client stack in the same place as Herald's sender, so the
/// receiver does the same work per request. Its CPU per request, client
/// and receiver (this process) together.
async fn ceiling_separate(addr: SocketAddr, args: &WebhookArgs) -> Result<(f64, f64)> {
    let before = Snapshot::take(None);
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "webhook-client",
            "--url",
            &format!("http://{addr}/hook"),
            "--concurrency",
            &args.concurrency.to_string(),
            "--seconds",
            &args.seconds.to_string(),
            "--shape",
            "herald",
            "--size",
            &args.size.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .await?;
    // This process's CPU counts the waited-for child's (`cutime`): client
    // and receiver together.
    let cpu = Snapshot::take(None).since(&before).client_cpu;
    if !output.status.success() {
        bail!("the ceiling's client failed: {}", output.status);
    }
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let requests = report["requests"].as_u64().context("requests")?;
    let seconds = report["seconds"].as_f64().context("seconds")?;
    Ok((requests as f64 / seconds, per_unit(cpu, requests)))
}

/// `herald-bench webhook-client`: the ceiling's posters in their own
/// process; prints `{requests, seconds, cpu_s}` (its own CPU).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, value_enum, default_value_t = Shape::Herald)]
    shape: Shape,
    /// Event payload bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
}

/// Runs [`ClientArgs`].
pub async fn client(args: ClientArgs) -> Result<()> {
    let started = Instant::now();
    let (requests, cpu) = post_for(
        &args.url,
        args.concurrency,
        args.seconds,
        args.shape,
        sample_body(args.size)?,
    )
    .await?;
    println!(
        "{}",
        json!({"requests": requests, "seconds": started.elapsed().as_secs_f64(), "cpu_s": cpu})
    );
    Ok(())
}

/// Microseconds of `cpu` seconds per one of `units`.
fn per_unit(cpu: f64, units: u64) -> f64 {
    cpu * 1e6 / units.max(1) as f64
}

/// One throughput phase: `count` events published, then waited for at the
/// receiver; its rate, and the server's and this process's CPU per delivery
/// (the publish included).
async fn phase(
    client: &Client,
    payload: &Bytes,
    counts: &Counts,
    count: u64,
    server: u32,
) -> Result<(f64, f64, f64)> {
    counts.reset();
    let before = Snapshot::take(Some(server));
    publish_all(client, payload, count).await?;
    wait_for(counts, count, Duration::from_secs(300)).await?;
    let noise = Snapshot::take(Some(server)).since(&before);
    Ok((
        counts.rate(),
        per_unit(noise.server_cpu, count),
        per_unit(noise.client_cpu, count),
    ))
}

/// A throughput phase from a backlog: `count` events published while the
/// endpoint is disabled, then it is enabled; its rate, and the server's
/// CPU per delivery from the enabling to the last receipt (deliveries
/// only: no publishing beside them, as none runs beside the ceiling).
async fn backlog_phase(
    client: &Client,
    http: &reqwest::Client,
    endpoint: &str,
    payload: &Bytes,
    counts: &Counts,
    count: u64,
    server: u32,
) -> Result<(f64, f64)> {
    publish_all(client, payload, count).await?;
    counts.reset();
    let before = Snapshot::take(Some(server));
    let response = http
        .patch(endpoint)
        .json(&json!({"enabled": true}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("enabling the endpoint: {}", response.status());
    }
    wait_for(counts, count, Duration::from_secs(300)).await?;
    let noise = Snapshot::take(Some(server)).since(&before);
    Ok((counts.rate(), per_unit(noise.server_cpu, count)))
}

async fn create_endpoint(
    http: &reqwest::Client,
    server: &str,
    target: SocketAddr,
    enabled: bool,
) -> Result<String> {
    let response = http
        .post(format!("{server}/v1/webhooks/endpoints"))
        .json(&json!({
            "url": format!("http://{target}/hook"),
            "filter": {"topics": [TOPIC]},
            "enabled": enabled,
        }))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status.as_u16() != 201 {
        bail!("creating an endpoint: {status} {body}");
    }
    body["endpoint_id"]
        .as_str()
        .map(str::to_owned)
        .context("no endpoint_id")
}

/// Publishes `count` events in batches of 500.
async fn publish_all(client: &Client, payload: &Bytes, count: u64) -> Result<()> {
    let mut n = 0;
    while n < count {
        let batch: Vec<Event> = (n..(n + 500).min(count))
            .map(|i| event(payload, i, None))
            .collect();
        n += batch.len() as u64;
        client.publish(TOPIC, batch).await?;
    }
    Ok(())
}

async fn wait_for(counts: &Counts, count: u64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while counts.received.load(Ordering::SeqCst) < count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} deliveries within {limit:?}",
                counts.received.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn run(args: WebhookArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let clock = Instant::now();
    let payload = Bytes::from(vec![b'x'; args.size]);
    let (healthy, counts) = receiver(clock, 204, Duration::ZERO).await?;

    // 1. The receiver's ceiling: Herald's requests from a process of
    // their own (the reference), and plain ones from this process.
    let (ceiling_before, ceiling_cpu_before) = ceiling_separate(healthy, &args).await?;
    eprintln!(
        "w7: receiver ceiling {ceiling_before:.0} req/s ({} concurrent from another process, Herald's request shape, {ceiling_cpu_before:.1} µs CPU per request, client and receiver)",
        args.concurrency
    );
    let (in_process, in_process_cpu) = ceiling_in_process(healthy, &args).await?;
    eprintln!(
        "w7: receiver ceiling {in_process:.0} req/s (plain requests from this process, {in_process_cpu:.1} µs CPU per request)"
    );

    // 2. Herald delivering to it.
    let herald_bin = args.herald_bin.clone().unwrap_or_else(peers::find_herald);
    let herald = Herald::launch_with_env(
        &herald_bin,
        &std::env::temp_dir(),
        Stdio::inherit(),
        false,
        &[("HERALD_WEBHOOKS__ALLOW_TARGETS", r#"["127.0.0.1/32"]"#)],
    )?;
    let server = herald.endpoint.url.clone();
    let client = Client::connect(server.clone()).await?;
    client.list_topics().await?;
    client
        .create_topic(TopicOptions::new(TOPIC).partitions(4))
        .await?;
    let http = reqwest::Client::new();
    let endpoint = create_endpoint(&http, &server, healthy, false).await?;
    let (backlog, backlog_cpu) = backlog_phase(
        &client,
        &http,
        &format!("{server}/v1/webhooks/endpoints/{endpoint}"),
        &payload,
        &counts,
        args.backlog_events,
        herald.pid(),
    )
    .await?;
    eprintln!(
        "w7: {backlog:.0} deliveries/s to one endpoint from a backlog ({backlog_cpu:.1} µs server CPU per delivery)"
    );
    let (alone, server_cpu, bench_cpu) =
        phase(&client, &payload, &counts, args.events, herald.pid()).await?;
    eprintln!(
        "w7: {alone:.0} deliveries/s to one endpoint ({server_cpu:.1} µs server + {bench_cpu:.1} µs receiver and publisher CPU per delivery)"
    );

    // 3. Beside a failing, slow endpoint.
    let (failing, failing_counts) = receiver(clock, 500, Duration::from_secs(1)).await?;
    create_endpoint(&http, &server, failing, true).await?;
    let (beside, _, _) = phase(&client, &payload, &counts, args.events, herald.pid()).await?;
    eprintln!(
        "w7: {beside:.0} deliveries/s beside a failing endpoint (it got {} attempts)",
        failing_counts.received.load(Ordering::SeqCst)
    );

    // 4. Latency at a paced rate.
    counts.reset();
    if let Ok(mut latency) = counts.latency.lock() {
        *latency = Some(histogram()?);
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let total = (args.rate * args.latency_seconds) as u64;
    let started = Instant::now();
    for n in 0..total {
        let due = started + interval * u32::try_from(n).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let sent = nanos(Instant::now().saturating_duration_since(clock));
        client
            .publish(TOPIC, [event(&payload, n, Some(sent))])
            .await?;
    }
    wait_for(&counts, total, Duration::from_secs(120)).await?;
    let latency = counts
        .latency
        .lock()
        .ok()
        .and_then(|mut latency| latency.take())
        .context("latency histogram")?;
    let latency = Latency::from_histogram(&latency);
    drop(herald);

    // 5. The ceiling again, Herald stopped: this host's speed drifts by
    // ±10% within a minute, so the reference is the mean of both.
    let (ceiling_after, ceiling_cpu_after) = ceiling_separate(healthy, &args).await?;
    eprintln!(
        "w7: receiver ceiling {ceiling_after:.0} req/s after ({ceiling_cpu_after:.1} µs CPU per request)"
    );
    let ceiling = f64::midpoint(ceiling_before, ceiling_after);
    let ceiling_cpu = f64::midpoint(ceiling_cpu_before, ceiling_cpu_after);
    eprintln!(
        "w7: {:.1}% of the ceiling from a backlog, {:.1}% with publishing beside",
        100.0 * backlog / ceiling,
        100.0 * alone / ceiling
    );
    let summary = json!({
        "receiver_ceiling_per_s": ceiling,
        "ceiling_cpu_us_per_request": ceiling_cpu,
        "receiver_ceiling_before_per_s": ceiling_before,
        "receiver_ceiling_after_per_s": ceiling_after,
        "deliveries_per_s": alone,
        "server_cpu_us_per_delivery": server_cpu,
        "bench_cpu_us_per_delivery": bench_cpu,
        "share_of_ceiling": alone / ceiling,
        "receiver_ceiling_in_process_per_s": in_process,
        "ceiling_in_process_cpu_us_per_request": in_process_cpu,
        "share_of_ceiling_in_process": alone / in_process,
        "deliveries_per_s_from_backlog": backlog,
        "server_cpu_us_per_delivery_from_backlog": backlog_cpu,
        "share_of_ceiling_from_backlog": backlog / ceiling,
        "deliveries_per_s_beside_failing": beside,
        "beside_vs_alone": beside / alone,
        "failing_endpoint_attempts": failing_counts.received.load(Ordering::SeqCst),
        "publish_to_receipt_us": latency.to_json(),
        "args": format!("{args:?}"),
    });
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
