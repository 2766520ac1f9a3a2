//! The workloads, once per system. Each run starts after a warm-up: the
//! noise snapshot and the counters are taken when the warm-up ends, and the
//! figures cover only what follows.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::AckPolicy};
use bytes::Bytes;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use herald_client::{Client, Event, Expected, Fsync, GroupMode, GroupOptions, TopicOptions};
use serde_json::{Value, json};

use crate::noise::{Noise, Snapshot};
use crate::peers::{Level, Postgres};

/// Warm-up and measured durations.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Latency {
    fn from_histogram(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            max: h.max() as f64,
            count: h.len(),
        }
    }

    pub fn to_json(self) -> Value {
        json!({"p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999,
               "max_us": self.max, "count": self.count})
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Run {
    /// Events per second (W6: appends per second).
    pub throughput: f64,
    pub latency: Option<Latency>,
    pub noise: Noise,
    /// Workload-specific figures (events, redeliveries, MB/s…).
    pub extra: Value,
}

fn histogram() -> Result<Histogram<u64>> {
    // 1 µs to 60 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn herald_fsync(level: Level) -> Fsync {
    match level {
        Level::D1 => Fsync::Never,
        Level::D2 => Fsync::Always,
    }
}

fn herald_event(payload: &Bytes) -> Event {
    let mut event = Event::new("", "/bench", "bench.event");
    event.datacontenttype = Some("application/octet-stream".to_owned());
    event.data = Some(payload.clone());
    event
}

async fn nats_stream(url: &str) -> Result<jetstream::Context> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    // JetStream may still be starting: retry briefly.
    let mut attempts = 0;
    loop {
        let created = js
            .get_or_create_stream(jetstream::stream::Config {
                name: "bench".to_owned(),
                subjects: vec!["bench".to_owned()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => return Ok(js),
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// A client, once the server's storage is open (the SDK retries while it
/// opens).
async fn herald_client(endpoint: &str) -> Result<Client> {
    let client = Client::connect(endpoint.to_owned()).await?;
    client.list_topics().await?;
    Ok(client)
}

async fn herald_topic(endpoint: &str, level: Level) -> Result<Client> {
    let client = herald_client(endpoint).await?;
    client
        .create_topic(
            TopicOptions::new("bench")
                .partitions(1)
                .fsync(herald_fsync(level)),
        )
        .await?;
    Ok(client)
}

/// Measured window: set when the warm-up ends.
struct Window {
    warm: Instant,
    end: Instant,
    base: Option<(Snapshot, u64)>,
    pid: u32,
}

impl Window {
    fn new(timing: Timing, pid: u32) -> Self {
        let now = Instant::now();
        Self {
            warm: now + timing.warmup,
            end: now + timing.warmup + timing.measure,
            base: None,
            pid,
        }
    }

    /// Takes the base snapshot once the warm-up is over; false once the run
    /// should end.
    fn tick(&mut self, count: u64) -> bool {
        let now = Instant::now();
        if self.base.is_none() && now >= self.warm {
            self.base = Some((Snapshot::take(Some(self.pid)), count));
        }
        now < self.end
    }

    fn measuring(&self) -> bool {
        self.base.is_some()
    }

    /// (noise, events counted after the warm-up, seconds).
    fn finish(self, count: u64) -> Result<(Noise, u64, f64)> {
        let after = Snapshot::take(Some(self.pid));
        let (base, at) = self.base.context("the run ended before its warm-up")?;
        Ok((after.since(&base), count - at, after.seconds_since(&base)))
    }
}

// ------------------------------------------------------------------ W1

/// W1 on NATS: async publish with at most `window` acks in flight.
pub async fn w1_nats(url: &str, pid: u32, size: usize, window: usize, t: Timing) -> Result<Run> {
    let js = nats_stream(url).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let mut pending = VecDeque::with_capacity(window);
    let mut acked = 0u64;
    let mut meter = Window::new(t, pid);
    while meter.tick(acked) {
        if pending.len() >= window {
            let ack: jetstream::context::PublishAckFuture =
                pending.pop_front().context("empty window")?;
            ack.await?;
            acked += 1;
        }
        pending.push_back(js.publish("bench", payload.clone()).await?);
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
        acked += 1;
    }
    throughput_run(meter, acked, size, json!({"window": window}))
}

/// W1 on Herald: the SDK's Publisher, at most `window` events unacked.
pub async fn w1_herald(
    endpoint: &str,
    pid: u32,
    level: Level,
    size: usize,
    window: usize,
    batch: usize,
    t: Timing,
) -> Result<Run> {
    let client = herald_topic(endpoint, level).await?;
    let publisher = client
        .publisher("bench")
        .max_batch(batch)
        .window(window.div_ceil(batch).max(1))
        .linger(Duration::from_millis(1))
        .build();
    let payload = Bytes::from(vec![b'x'; size]);
    let mut pending = VecDeque::with_capacity(window);
    let mut acked = 0u64;
    let mut meter = Window::new(t, pid);
    while meter.tick(acked) {
        if pending.len() >= window {
            let ack: herald_client::PendingPublish = pending.pop_front().context("empty window")?;
            ack.await?;
            acked += 1;
        }
        pending.push_back(publisher.publish(herald_event(&payload)).await?);
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
        acked += 1;
    }
    throughput_run(
        meter,
        acked,
        size,
        json!({"window": window, "max_batch": batch, "linger_ms": 1}),
    )
}

fn throughput_run(meter: Window, count: u64, size: usize, mut extra: Value) -> Result<Run> {
    let (noise, events, seconds) = meter.finish(count)?;
    let rate = events as f64 / seconds;
    extra["events"] = json!(events);
    extra["mb_per_s"] = json!(rate * size as f64 / 1e6);
    extra["server_cpu_us_per_event"] = json!(noise.server_cpu * 1e6 / events.max(1) as f64);
    extra["client_cpu_us_per_event"] = json!(noise.client_cpu * 1e6 / events.max(1) as f64);
    Ok(Run {
        throughput: rate,
        latency: None,
        noise,
        extra,
    })
}

// ------------------------------------------------------------------ W3

/// W3 on NATS: one publish in flight, its ack awaited.
pub async fn w3_nats(url: &str, pid: u32, size: usize, t: Timing) -> Result<Run> {
    let js = nats_stream(url).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let mut hist = histogram()?;
    let mut count = 0u64;
    let mut meter = Window::new(t, pid);
    while meter.tick(count) {
        let sent = Instant::now();
        js.publish("bench", payload.clone()).await?.await?;
        if meter.measuring() {
            hist.record(micros(sent.elapsed()))?;
        }
        count += 1;
    }
    latency_run(meter, count, &hist)
}

/// W3 on Herald: one unary Publish of one event in flight.
pub async fn w3_herald(
    endpoint: &str,
    pid: u32,
    level: Level,
    size: usize,
    t: Timing,
) -> Result<Run> {
    let client = herald_topic(endpoint, level).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let mut hist = histogram()?;
    let mut count = 0u64;
    let mut meter = Window::new(t, pid);
    while meter.tick(count) {
        let sent = Instant::now();
        client.publish("bench", [herald_event(&payload)]).await?;
        if meter.measuring() {
            hist.record(micros(sent.elapsed()))?;
        }
        count += 1;
    }
    latency_run(meter, count, &hist)
}

fn latency_run(meter: Window, count: u64, hist: &Histogram<u64>) -> Result<Run> {
    let (noise, events, seconds) = meter.finish(count)?;
    Ok(Run {
        throughput: events as f64 / seconds,
        latency: Some(Latency::from_histogram(hist)),
        noise,
        extra: json!({"events": events, "in_flight": 1}),
    })
}

// ------------------------------------------------------------------ W4

/// W4 on NATS: a backlog of `backlog` events, drained by one pull consumer
/// (batches of 1,000, explicit ack per message, at most 1,000 unacked).
pub async fn w4_nats(url: &str, pid: u32, backlog: u64, size: usize) -> Result<Run> {
    let js = nats_stream(url).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let mut pending = VecDeque::with_capacity(1000);
    for _ in 0..backlog {
        if pending.len() >= 1000 {
            let ack: jetstream::context::PublishAckFuture =
                pending.pop_front().context("empty window")?;
            ack.await?;
        }
        pending.push_back(js.publish("bench", payload.clone()).await?);
    }
    for ack in pending {
        ack.await?;
    }
    let stream = js.get_stream("bench").await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("drain".to_owned()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 1000,
            ..Default::default()
        })
        .await?;
    let before = Snapshot::take(Some(pid));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await?;
    let mut received = 0u64;
    let mut redelivered = 0u64;
    while received < backlog {
        let message = messages.next().await.context("message stream ended")??;
        if message.info().is_ok_and(|info| info.delivered > 1) {
            redelivered += 1;
        }
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        received += 1;
    }
    // Until the server has applied every ack.
    loop {
        let info = consumer.get_info().await?;
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drained(before, pid, backlog, redelivered, size)
}

/// W4 on Herald: the same backlog drained by one queue-group Consumer with
/// 1,000 credits and an ack per delivery (at most 1,000 in flight).
pub async fn w4_herald(
    endpoint: &str,
    pid: u32,
    level: Level,
    backlog: u64,
    size: usize,
) -> Result<Run> {
    let client = herald_topic(endpoint, level).await?;
    client
        .put_group(
            "bench",
            GroupOptions::new("drain", GroupMode::Queue).max_in_flight(1000),
        )
        .await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let publisher = client.publisher("bench").max_batch(1000).window(64).build();
    let mut pending = VecDeque::with_capacity(10_000);
    for _ in 0..backlog {
        if pending.len() >= 10_000 {
            let ack: herald_client::PendingPublish = pending.pop_front().context("empty window")?;
            ack.await?;
        }
        pending.push_back(publisher.publish(herald_event(&payload)).await?);
    }
    for ack in pending {
        ack.await?;
    }
    let before = Snapshot::take(Some(pid));
    let mut consumer = client
        .consumer("bench", "drain")
        .credits(1000)
        .build()
        .await?;
    let mut received = 0u64;
    let mut redelivered = 0u64;
    while received < backlog {
        let delivery = consumer.next().await.context("consumer ended")??;
        if delivery.attempt() > 1 {
            redelivered += 1;
        }
        delivery.ack()?;
        received += 1;
    }
    loop {
        let status = client.group_status("bench", "drain").await?;
        if status.in_flight == 0 && status.partitions.iter().all(|p| p.lag == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drained(before, pid, backlog, redelivered, size)
}

fn drained(before: Snapshot, pid: u32, events: u64, redelivered: u64, size: usize) -> Result<Run> {
    let after = Snapshot::take(Some(pid));
    let noise = after.since(&before);
    let rate = events as f64 / noise.seconds;
    Ok(Run {
        throughput: rate,
        latency: None,
        noise,
        extra: json!({
            "backlog": events,
            "redelivered": redelivered,
            "mb_per_s": rate * size as f64 / 1e6,
            "server_cpu_us_per_event": noise.server_cpu * 1e6 / events.max(1) as f64,
        }),
    })
}

// ------------------------------------------------------------------ W6

/// W6 on Herald: `writers` tasks append one event each to streams they own
/// (`stream % writers == writer`, of `streams`), with the exact expected
/// version. Throughput is appends/s.
pub async fn w6_herald(
    endpoint: &str,
    pid: u32,
    writers: u64,
    streams: u64,
    size: usize,
    t: Timing,
) -> Result<Run> {
    /// One writer's streams and what it knows of their versions.
    struct Writer {
        owned: Vec<u64>,
        versions: Vec<Option<u64>>,
        next: usize,
        conflicts: u64,
    }
    let client = herald_client(endpoint).await?;
    client
        .create_topic(TopicOptions::new("accounts").fsync(Fsync::Always))
        .await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let init = |writer: u64| {
        let owned: Vec<u64> = (0..streams).filter(|s| s % writers == writer).collect();
        Writer {
            versions: vec![None; owned.len()],
            owned,
            next: 0,
            conflicts: 0,
        }
    };
    let (mut run, states) = concurrent(pid, writers, t, init, move |mut w: Writer| {
        let (client, payload) = (client.clone(), payload.clone());
        async move {
            w.next = (w.next * 7 + 13) % w.owned.len().max(1);
            let stream = format!("account-{}", w.owned[w.next]);
            let expected = Expected::from_current(w.versions[w.next]);
            let mut event = Event::new("", "/bench", "account.credited");
            event.datacontenttype = Some("application/octet-stream".to_owned());
            event.data = Some(payload);
            match client.append("accounts", &stream, [event], expected).await {
                Ok(appended) => w.versions[w.next] = Some(appended.last_version),
                Err(error) if error.current_version().is_some() => {
                    w.conflicts += 1;
                    w.versions[w.next] = error.current_version();
                }
                Err(error) => return Err(error.into()),
            }
            Ok(w)
        }
    })
    .await?;
    let conflicts: u64 = states.iter().map(|w| w.conflicts).sum();
    let appends = run.latency.map_or(0, |l| l.count);
    run.extra = json!({
        "writers": writers, "streams": streams, "events_per_append": 1,
        "appends": appends, "conflicts": conflicts,
        "server_cpu_us_per_append": run.noise.server_cpu * 1e6 / appends.max(1) as f64,
    });
    Ok(run)
}

/// W6 on PostgreSQL: pgbench, `writers` clients (2 threads), the same stream
/// ownership, each append an INSERT of the stream's next version (the
/// primary key refuses a duplicate version).
pub async fn w6_postgres(
    pg: &Postgres,
    writers: u64,
    streams: u64,
    size: usize,
    t: Timing,
) -> Result<Run> {
    let script = format!(
        "\\set s :client_id + :clients * random(0, {streams} / :clients - 1)\n\
         INSERT INTO events (stream, version, data)\n  \
         SELECT :s, base.next, repeat('x', {size})\n  \
         FROM (SELECT coalesce(max(version), -1) + 1 AS next FROM events WHERE stream = :s) base;\n"
    );
    pg.write_file("append.sql", &script)?;
    let common = format!("-c {writers} -j 2 -D clients={writers} -f append.sql");
    let warmup = t.warmup.as_secs().max(1);
    let (pg_ref, common_ref) = (pg, common.clone());
    tokio::task::block_in_place(|| pg_ref.pgbench(&format!("{common_ref} -T {warmup}")))?;
    let before = Snapshot::take(Some(pg.pid()));
    let seconds = t.measure.as_secs().max(1);
    let output = tokio::task::block_in_place(|| {
        pg.pgbench(&format!("{common} -T {seconds} -l --log-prefix=w6log"))
    })?;
    let after = Snapshot::take(Some(pg.pid()));
    let noise = after.since(&before);
    let tps: f64 = output
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {output}"))?;
    // Per-transaction log: client_id transaction_no time_us script_no epoch us.
    let mut hist = histogram()?;
    for entry in std::fs::read_dir(pg.dir.path())? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("w6log") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                hist.record(u64::max(us, 1))?;
            }
        }
    }
    if hist.is_empty() {
        bail!("pgbench wrote no transaction log");
    }
    let latency = Latency::from_histogram(&hist);
    Ok(Run {
        throughput: tps,
        latency: Some(latency),
        noise,
        extra: json!({
            "writers": writers, "streams": streams, "events_per_append": 1,
            "appends": latency.count, "client": "pgbench -j 2",
            "server_cpu_us_per_append": noise.server_cpu * 1e6 / latency.count.max(1) as f64,
        }),
    })
}

// ------------------------------------------------------------------ W2

/// W2 on NATS: `producers` tasks on one connection, each with one publish
/// in flight (its ack awaited before the next).
pub async fn w2_nats(url: &str, pid: u32, producers: u64, size: usize, t: Timing) -> Result<Run> {
    let js = nats_stream(url).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let (run, _) = concurrent(
        pid,
        producers,
        t,
        |_| (),
        move |()| {
            let (js, payload) = (js.clone(), payload.clone());
            async move {
                js.publish("bench", payload).await?.await?;
                Ok(())
            }
        },
    )
    .await?;
    Ok(run)
}

/// W2 on Herald: `producers` tasks on one client (one HTTP/2 connection),
/// each with one unary Publish of one event in flight.
pub async fn w2_herald(
    endpoint: &str,
    pid: u32,
    level: Level,
    producers: u64,
    size: usize,
    t: Timing,
) -> Result<Run> {
    let client = herald_topic(endpoint, level).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let (run, _) = concurrent(
        pid,
        producers,
        t,
        |_| (),
        move |()| {
            let (client, payload) = (client.clone(), payload.clone());
            async move {
                client.publish("bench", [herald_event(&payload)]).await?;
                Ok(())
            }
        },
    )
    .await?;
    Ok(run)
}

/// Runs `op` in a loop on `tasks` tasks, each with its own state (from
/// `init`, passed through every call) until the end of the run; counts and
/// times the operations started after the warm-up. Returns the states too.
async fn concurrent<S, I, F, Fut>(
    pid: u32,
    tasks: u64,
    t: Timing,
    init: I,
    op: F,
) -> Result<(Run, Vec<S>)>
where
    S: Send + 'static,
    I: Fn(u64) -> S,
    F: Fn(S) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<S>> + Send,
{
    let started = Instant::now();
    let warm = started + t.warmup;
    let end = warm + t.measure;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (op, mut state) = (op.clone(), init(task));
        handles.push(tokio::spawn(async move {
            let mut hist = histogram()?;
            while Instant::now() < end {
                let sent = Instant::now();
                state = op(state).await?;
                if sent >= warm {
                    hist.record(micros(sent.elapsed()))?;
                }
            }
            Ok::<_, anyhow::Error>((hist, state))
        }));
    }
    tokio::time::sleep_until(warm.into()).await;
    let before = Snapshot::take(Some(pid));
    let mut hist = histogram()?;
    let mut states = Vec::new();
    for handle in handles {
        let (h, state) = handle.await??;
        hist.add(&h)?;
        states.push(state);
    }
    let after = Snapshot::take(Some(pid));
    let noise = after.since(&before);
    let latency = Latency::from_histogram(&hist);
    let run = Run {
        throughput: latency.count as f64 / noise.seconds,
        latency: Some(latency),
        noise,
        extra: json!({
            "tasks": tasks, "events": latency.count,
            "flushes_per_s": noise.flushes as f64 / noise.seconds,
            "server_cpu_us_per_event": noise.server_cpu * 1e6 / latency.count.max(1) as f64,
        }),
    };
    Ok((run, states))
}
