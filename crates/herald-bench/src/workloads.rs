//! The workloads, once per system. Each run starts after a warm-up: the
//! noise snapshot and the counters are taken when the warm-up ends, and the
//! figures cover only what follows.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::AckPolicy};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use herald_client::{Client, Event, Expected, Fsync, GroupMode, GroupOptions, TopicOptions};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::noise::{Noise, Snapshot};
use crate::peers::{Endpoint, Level, Postgres};

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
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
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

pub(crate) fn histogram() -> Result<Histogram<u64>> {
    // 1 µs to 60 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

pub(crate) fn micros(elapsed: Duration) -> u64 {
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

pub(crate) fn herald_event(payload: &Bytes) -> Event {
    let mut event = Event::new("", "/bench", "bench.event");
    event.datacontenttype = Some("application/octet-stream".to_owned());
    event.data = Some(payload.clone());
    event
}

/// A JetStream context with `partitions` file streams: `bench` (subject
/// `bench`) for one, else `bench0..` (subjects `bench.0..`).
async fn nats_streams(url: &str, partitions: u32) -> Result<jetstream::Context> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    for partition in 0..partitions {
        let (name, subject) = if partitions == 1 {
            ("bench".to_owned(), nats_subject(1, 0))
        } else {
            (
                format!("bench{partition}"),
                nats_subject(partitions, partition),
            )
        };
        // JetStream may still be starting: retry briefly.
        let mut attempts = 0;
        loop {
            let created = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![subject.clone()],
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => break,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(js)
}

/// The subject of stream `partition` of `partitions`.
fn nats_subject(partitions: u32, partition: u32) -> String {
    if partitions == 1 {
        "bench".to_owned()
    } else {
        format!("bench.{}", partition % partitions)
    }
}

async fn nats_stream(url: &str) -> Result<jetstream::Context> {
    nats_streams(url, 1).await
}

/// A client, once the server's storage is open (the SDK retries while it
/// opens).
async fn herald_client(endpoint: &Endpoint) -> Result<Client> {
    let client = endpoint.client().await?;
    client.list_topics().await?;
    Ok(client)
}

async fn herald_topic(endpoint: &Endpoint, level: Level) -> Result<Client> {
    herald_topic_partitions(endpoint, level, 1).await
}

async fn herald_topic_partitions(
    endpoint: &Endpoint,
    level: Level,
    partitions: u32,
) -> Result<Client> {
    let client = herald_client(endpoint).await?;
    client
        .create_topic(
            TopicOptions::new("bench")
                .partitions(partitions)
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
        Self::starting(Instant::now(), timing, pid)
    }

    /// A window whose warm-up began at `now`.
    fn starting(now: Instant, timing: Timing, pid: u32) -> Self {
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
    endpoint: &Endpoint,
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

// ------------------------------------------------------------ pacing

/// Waits until `deadline` with the OS timer (tens of µs late), not Tokio's
/// 1 ms timer wheel, which would add up to a millisecond to every
/// scheduled send on both sides.
pub(crate) async fn pace(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(Duration::from_millis(2))
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse.into()).await;
    }
    let now = Instant::now();
    if deadline > now {
        // The last < 2 ms on the OS timer, blocking this thread. W3 runs on
        // its own single-threaded runtime with nothing in flight while it
        // waits; W5's producer blocks one worker and the other runs the
        // consumer and connection tasks. (`block_in_place` here handed the
        // worker's core to another thread on every send: ~130 µs of client
        // CPU per send, and delayed replies.)
        std::thread::sleep(deadline - now);
    }
}

pub(crate) fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

// ------------------------------------------------------------------ W3

/// W3, open loop: sends on a fixed schedule of `rate` per second, one
/// publish in flight; each latency is taken from the send's *scheduled*
/// time, so a slow reply that delays the next sends is counted in them (no
/// coordinated omission). Sends scheduled before the end are all made,
/// unless they fall behind by more than a whole measured window.
async fn open_loop<P, F>(pid: u32, rate: u64, t: Timing, mut send: P) -> Result<Run>
where
    P: FnMut() -> F,
    F: Future<Output = Result<()>>,
{
    let clock = Instant::now();
    let mut meter = Window::starting(clock, t, pid);
    let interval = 1e9 / rate.max(1) as f64;
    let cutoff = meter.end + t.measure;
    let mut hist = histogram()?;
    let (mut n, mut measured, mut behind) = (0u64, 0u64, 0u64);
    loop {
        let scheduled = clock + Duration::from_nanos((n as f64 * interval) as u64);
        if scheduled >= meter.end {
            break;
        }
        if Instant::now() >= cutoff {
            behind = nanos(meter.end - scheduled) * rate / 1_000_000_000;
            break;
        }
        pace(scheduled).await;
        meter.tick(measured);
        send().await?;
        if scheduled >= meter.warm {
            hist.record(micros(scheduled.elapsed()))?;
            measured += 1;
        }
        n += 1;
    }
    let (noise, events, seconds) = meter.finish(measured)?;
    Ok(Run {
        throughput: events as f64 / seconds,
        latency: Some(Latency::from_histogram(&hist)),
        noise,
        extra: json!({"events": events, "in_flight": 1, "offered_per_s": rate,
                      "not_sent_at_cutoff": behind, "latency_from": "scheduled send time"}),
    })
}

/// W3 on NATS: one publish in flight, its ack awaited, open loop.
pub async fn w3_nats(url: &str, pid: u32, size: usize, rate: u64, t: Timing) -> Result<Run> {
    let js = nats_stream(url).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    open_loop(pid, rate, t, || {
        let (js, payload) = (js.clone(), payload.clone());
        async move {
            js.publish("bench", payload).await?.await?;
            Ok(())
        }
    })
    .await
}

/// Runs `work` (a W3 run) on its own OS thread with a single-threaded
/// runtime, on both sides alike. A serial client has one request in flight;
/// on the shared multi-threaded runtime each request and its reply hopped
/// between worker threads (the caller, the connection task, tonic's buffer
/// task), each hop a wake-up of an idle vCPU, which is client latency, not
/// the server's.
pub async fn on_own_thread<F, Fut>(work: F) -> Result<Run>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Run>>,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("serial-client".into())
        .spawn(move || {
            let run = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(work()));
            let _ = done.send(run);
        })?;
    result.await?
}

/// W3 on Herald: one unary Publish of one event in flight, open loop.
pub async fn w3_herald(
    endpoint: &Endpoint,
    pid: u32,
    level: Level,
    size: usize,
    rate: u64,
    t: Timing,
) -> Result<Run> {
    let client = herald_topic(endpoint, level).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    open_loop(pid, rate, t, || {
        let (client, event) = (client.clone(), herald_event(&payload));
        async move {
            client.publish("bench", [event]).await?;
            Ok(())
        }
    })
    .await
}

// ------------------------------------------------------- consumers (W4, W5)

/// What the consumer tasks of a run saw. Payloads of W5 start with their
/// scheduled send time (ns since `clock`, little endian); a delivery of an
/// event scheduled inside the window (set by `open`, ns since `clock`) is
/// recorded end to end.
struct Deliveries {
    clock: Instant,
    window: [AtomicU64; 2],
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    redelivered: AtomicU64,
    e2e: std::sync::Mutex<Histogram<u64>>,
}

impl Deliveries {
    fn new() -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            clock: Instant::now(),
            window: [AtomicU64::new(0), AtomicU64::new(0)],
            delivered: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            e2e: std::sync::Mutex::new(histogram()?),
        }))
    }

    fn open(&self, window: std::ops::Range<u64>) {
        self.window[1].store(window.end, Ordering::Relaxed);
        self.window[0].store(window.start, Ordering::Relaxed);
    }

    fn window(&self) -> std::ops::Range<u64> {
        self.window[0].load(Ordering::Relaxed)..self.window[1].load(Ordering::Relaxed)
    }

    fn record(&self, payload: &[u8], redelivered: bool) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if redelivered {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let window = self.window();
        if window.is_empty() {
            return;
        }
        let now = nanos(self.clock.elapsed());
        if window.contains(&now) {
            self.delivered_in_window.fetch_add(1, Ordering::Relaxed);
        }
        let scheduled = payload
            .first_chunk::<8>()
            .map_or(u64::MAX, |b| u64::from_le_bytes(*b));
        if window.contains(&scheduled)
            && let Ok(mut hist) = self.e2e.lock()
        {
            hist.saturating_record((now.saturating_sub(scheduled) / 1000).max(1));
        }
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Consumer tasks, aborted on drop.
#[derive(Default)]
struct Consumers(Vec<JoinHandle<Result<()>>>);

impl Consumers {
    /// Fails if a consumer task has ended (they run until aborted).
    fn check(&mut self) -> Result<()> {
        for handle in &mut self.0 {
            if let Some(ended) = handle.now_or_never() {
                ended??;
                bail!("a consumer ended early");
            }
        }
        Ok(())
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Polls `done` every 5 ms until it is true (then true) or `deadline`
/// passes (then false).
async fn wait_for<F, Fut>(deadline: Option<Instant>, mut done: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    loop {
        if done().await? {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The durable pull consumer `durable` of stream `bench`: explicit ack, at
/// most 1,000 unacked.
async fn nats_consumer(js: &jetstream::Context, durable: &str) -> Result<()> {
    js.get_stream("bench")
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable.to_owned()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 1000,
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn nats_pull(
    js: &jetstream::Context,
    durable: &str,
) -> Result<jetstream::consumer::PullConsumer> {
    js.get_stream("bench")
        .await?
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!("consumer {durable}: {e}"))
}

/// One pull subscriber of `durable` on its own connection (batches of
/// 1,000, an explicit ack per message), feeding `sink` until aborted.
async fn nats_subscriber(
    url: &str,
    durable: &str,
    sink: Arc<Deliveries>,
) -> Result<JoinHandle<Result<()>>> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let consumer = nats_pull(&js, durable).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await?;
    Ok(tokio::spawn(async move {
        let _js = js;
        while let Some(message) = messages.next().await {
            let message = message?;
            let redelivered = message.info().is_ok_and(|info| info.delivered > 1);
            sink.record(&message.payload, redelivered);
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }))
}

/// Whether the server has every ack of `durable` and nothing pending.
async fn nats_settled(js: &jetstream::Context, durable: &str) -> Result<bool> {
    let consumer = nats_pull(js, durable).await?;
    let info = consumer.get_info().await?;
    Ok(info.num_ack_pending == 0 && info.num_pending == 0)
}

/// A queue group on `bench`: at most 1,000 leased deliveries.
async fn herald_group(client: &Client, group: &str) -> Result<()> {
    client
        .put_group(
            "bench",
            GroupOptions::new(group, GroupMode::Queue).max_in_flight(1000),
        )
        .await?;
    Ok(())
}

/// One `Consumer` of `group` on its own client (connection), 1,000
/// credits, an ack per event, feeding `sink` until aborted.
async fn herald_subscriber(
    endpoint: &Endpoint,
    group: &str,
    sink: Arc<Deliveries>,
) -> Result<JoinHandle<Result<()>>> {
    let client = herald_client(endpoint).await?;
    let mut consumer = client
        .consumer("bench", group)
        .credits(1000)
        .build()
        .await?;
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let payload = delivery.event().event.data.as_deref().unwrap_or_default();
            sink.record(payload, delivery.attempt() > 1);
            delivery.ack()?;
        }
        Ok(())
    }))
}

/// Whether the group has nothing in flight and no lag.
async fn herald_settled(client: &Client, group: &str) -> Result<bool> {
    let status = client.group_status("bench", group).await?;
    Ok(status.in_flight == 0 && status.partitions.iter().all(|p| p.lag == 0))
}

// ------------------------------------------------------------------ W4

/// Publishes one payload to `bench`; returns its ack, to await.
async fn nats_send(
    js: jetstream::Context,
    payload: Bytes,
) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
    let ack = js.publish("bench", payload).await?;
    Ok(async move { ack.await.map(drop).map_err(anyhow::Error::from) })
}

/// Queues one event with `payload` on the Publisher; returns its ack.
async fn herald_send(
    publisher: herald_client::Publisher,
    payload: Bytes,
) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
    let ack = publisher.publish(herald_event(&payload)).await?;
    Ok(async move { ack.await.map(drop).map_err(anyhow::Error::from) })
}

/// Acks in flight while filling a W4 backlog, both sides: below
/// async-nats's own limit (5,000 by default; past it `publish` waits for
/// acks this loop has not awaited yet, a deadlock).
const FILL_WINDOW: usize = 4096;

/// Publishes `count` events of `size` as fast as the window allows (not
/// measured): `publish` returns an ack to await.
async fn fill<P, F, A>(count: u64, size: usize, window: usize, mut publish: P) -> Result<()>
where
    P: FnMut(Bytes) -> F,
    F: Future<Output = Result<A>>,
    A: Future<Output = Result<()>>,
{
    let payload = Bytes::from(vec![b'x'; size]);
    let mut pending = VecDeque::with_capacity(window);
    for _ in 0..count {
        if pending.len() >= window {
            pending.pop_front().context("empty window")?.await?;
        }
        pending.push_back(publish(payload.clone()).await?);
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

/// W4 on NATS: a backlog of `backlog` events, drained by `consumers` pull
/// subscribers of one durable consumer, each on its own connection.
pub async fn w4_nats(
    url: &str,
    pid: u32,
    backlog: u64,
    consumers: u64,
    size: usize,
) -> Result<Run> {
    let js = nats_stream(url).await?;
    fill(backlog, size, FILL_WINDOW, |payload| {
        nats_send(js.clone(), payload)
    })
    .await?;
    nats_consumer(&js, "drain").await?;
    let drain = Drain {
        pid,
        backlog,
        consumers,
        size,
    };
    drain
        .run(
            |sink| nats_subscriber(url, "drain", sink),
            || nats_settled(&js, "drain"),
        )
        .await
}

/// W4 on Herald: the same backlog drained by `consumers` Consumers of one
/// queue group, each on its own client.
pub async fn w4_herald(
    endpoint: &Endpoint,
    pid: u32,
    level: Level,
    backlog: u64,
    consumers: u64,
    size: usize,
) -> Result<Run> {
    drain_over(
        std::slice::from_ref(endpoint),
        pid,
        level,
        backlog,
        consumers,
        size,
    )
    .await
}

/// W4 on Herald with the consumers spread round-robin over `endpoints`
/// (nodes sharing one backend; the backlog is filled through the first).
async fn drain_over(
    endpoints: &[Endpoint],
    pid: u32,
    level: Level,
    backlog: u64,
    consumers: u64,
    size: usize,
) -> Result<Run> {
    let client = herald_topic(&endpoints[0], level).await?;
    herald_group(&client, "drain").await?;
    let publisher = client.publisher("bench").max_batch(1000).window(64).build();
    fill(backlog, size, FILL_WINDOW, |payload| {
        herald_send(publisher.clone(), payload)
    })
    .await?;
    let drain = Drain {
        pid,
        backlog,
        consumers,
        size,
    };
    let mut next = 0;
    drain
        .run(
            |sink| {
                let endpoint = endpoints[next % endpoints.len()].clone();
                next += 1;
                async move { herald_subscriber(&endpoint, "drain", sink).await }
            },
            || herald_settled(&client, "drain"),
        )
        .await
}

/// A W4 drain, measured from the first consumer's start.
struct Drain {
    pid: u32,
    backlog: u64,
    consumers: u64,
    size: usize,
}

impl Drain {
    /// Starts `consumers` consumer tasks with `subscribe`, waits until
    /// `backlog` deliveries are in and `settled` says the server has every
    /// ack, and reports the rate.
    async fn run<S, SF, F, Fut>(self, mut subscribe: S, settled: F) -> Result<Run>
    where
        S: FnMut(Arc<Deliveries>) -> SF,
        SF: Future<Output = Result<JoinHandle<Result<()>>>>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        let before = Snapshot::take(Some(self.pid));
        let sink = Deliveries::new()?;
        let mut tasks = Consumers::default();
        for _ in 0..self.consumers {
            tasks.0.push(subscribe(sink.clone()).await?);
        }
        wait_for(None, || {
            let checked = tasks.check().map(|()| sink.delivered() >= self.backlog);
            async move { checked }
        })
        .await?;
        wait_for(None, settled).await?;
        let noise = Snapshot::take(Some(self.pid)).since(&before);
        let events = self.backlog;
        let rate = events as f64 / noise.seconds;
        Ok(Run {
            throughput: rate,
            latency: None,
            noise,
            extra: json!({
                "backlog": events,
                "consumers": self.consumers,
                "delivered": sink.delivered(),
                "redelivered": sink.redelivered.load(Ordering::Relaxed),
                "mb_per_s": rate * self.size as f64 / 1e6,
                "server_cpu_us_per_event": noise.server_cpu * 1e6 / events.max(1) as f64,
            }),
        })
    }
}

// ------------------------------------------------------------------ W5

/// W5 settings: offered events/s, acks in flight, payload size.
#[derive(Debug, Clone, Copy)]
pub struct E2e {
    pub rate: u64,
    pub window: usize,
    pub size: usize,
}

/// W5: one producer sends `rate / 1000` events every millisecond on a fixed
/// schedule (at most `window` unacked), each payload carrying its
/// scheduled time; `sink` (fed by the consumer tasks) records delivery
/// minus scheduled time. `publish` sends one event and returns its ack.
async fn end_to_end<P, F, A>(
    pid: u32,
    spec: E2e,
    t: Timing,
    sink: Arc<Deliveries>,
    mut tasks: Consumers,
    mut publish: P,
) -> Result<Run>
where
    P: FnMut(Bytes) -> F,
    F: Future<Output = Result<A>>,
    A: Future<Output = Result<()>> + Send + 'static,
{
    // Prime: one untimed event through before the schedule starts, so the
    // consumer is live on both sides (a fresh Herald group consumer can
    // otherwise sit in its first long poll for up to 5 s).
    publish(Bytes::from(vec![b'x'; spec.size.max(8)]))
        .await?
        .await?;
    let primed = wait_for(Some(Instant::now() + Duration::from_secs(30)), || {
        let checked = tasks.check().map(|()| sink.delivered() >= 1);
        async move { checked }
    })
    .await?;
    if !primed {
        bail!("the consumer got nothing within 30 s");
    }
    let start = Instant::now();
    let base = nanos(start - sink.clock);
    let window = base + nanos(t.warmup)..base + nanos(t.warmup + t.measure);
    sink.open(window.clone());
    let clock = sink.clock;
    let per_tick = (spec.rate / 1000).max(1);
    let mut meter = Window::starting(start, t, pid);
    let slots = Arc::new(Semaphore::new(spec.window));
    let (acks, mut unacked) =
        mpsc::unbounded_channel::<(u64, A, tokio::sync::OwnedSemaphorePermit)>();
    let ack_window = window.clone();
    let acker = tokio::spawn(async move {
        let mut hist = histogram()?;
        while let Some((scheduled, ack, slot)) = unacked.recv().await {
            ack.await?;
            drop(slot);
            if ack_window.contains(&scheduled) {
                hist.saturating_record(
                    (nanos(clock.elapsed()).saturating_sub(scheduled) / 1000).max(1),
                );
            }
        }
        Ok::<_, anyhow::Error>(hist)
    });
    // An overloaded system gets 1 s to catch up on its schedule, then 3 s
    // to deliver; what is left is reported (not_sent_at_cutoff,
    // all_delivered), its latency (at least that late) is not recorded.
    let cutoff = meter.end + Duration::from_secs(1);
    let (mut tick, mut published, mut max_lag, mut not_sent) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let at = start + Duration::from_millis(tick);
        let scheduled = nanos(at - clock);
        if at >= meter.end {
            break;
        }
        if Instant::now() >= cutoff {
            not_sent = nanos(meter.end - at) * spec.rate / 1_000_000_000;
            break;
        }
        pace(at).await;
        meter.tick(published);
        tasks.check()?;
        let mut payload = vec![b'x'; spec.size.max(8)];
        payload[..8].copy_from_slice(&scheduled.to_le_bytes());
        let payload = Bytes::from(payload);
        for _ in 0..per_tick {
            let slot = slots.clone().acquire_owned().await?;
            let ack = publish(payload.clone()).await?;
            published += 1;
            acks.send((scheduled, ack, slot))
                .map_err(|_| anyhow::anyhow!("the ack task ended"))?;
        }
        if meter.measuring() {
            max_lag = max_lag.max((published + 1).saturating_sub(sink.delivered()));
        }
        tick += 1;
    }
    drop(acks);
    let ack_hist = acker.await??;
    let (noise, _, _) = meter.finish(published)?;
    // Every published event delivered (bounded: an overloaded system may
    // not catch up).
    let deadline = Instant::now() + Duration::from_secs(3);
    let complete = wait_for(Some(deadline), || {
        let checked = tasks.check().map(|()| sink.delivered() > published);
        async move { checked }
    })
    .await?;
    drop(tasks);
    let e2e = sink
        .e2e
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned histogram"))?
        .clone();
    let measured_s = (window.end - window.start) as f64 / 1e9;
    Ok(Run {
        throughput: sink.delivered_in_window.load(Ordering::Relaxed) as f64 / measured_s,
        latency: Some(Latency::from_histogram(&e2e)),
        noise,
        extra: json!({
            "offered_per_s": spec.rate, "window": spec.window, "producers": 1, "consumers": 1,
            "published": published, "delivered": sink.delivered() - 1,
            "redelivered": sink.redelivered.load(Ordering::Relaxed),
            "all_delivered": complete, "not_sent_at_cutoff": not_sent,
            "max_lag": max_lag,
            "latency": "delivery time minus scheduled send time",
            "publish_ack_latency": Latency::from_histogram(&ack_hist).to_json(),
        }),
    })
}

/// W5 on NATS: async publish, a durable pull consumer with explicit acks.
pub async fn w5_nats(url: &str, pid: u32, spec: E2e, t: Timing) -> Result<Run> {
    let js = nats_stream(url).await?;
    nats_consumer(&js, "e2e").await?;
    let sink = Deliveries::new()?;
    let tasks = Consumers(vec![nats_subscriber(url, "e2e", sink.clone()).await?]);
    end_to_end(pid, spec, t, sink, tasks, |payload| {
        nats_send(js.clone(), payload)
    })
    .await
}

/// W5 on Herald: the Publisher (no linger: what a tick queued goes at
/// once), a queue-group Consumer acking each event.
pub async fn w5_herald(
    endpoint: &Endpoint,
    pid: u32,
    level: Level,
    spec: E2e,
    t: Timing,
) -> Result<Run> {
    let client = herald_topic(endpoint, level).await?;
    herald_group(&client, "e2e").await?;
    let publisher = client.publisher("bench").linger(Duration::ZERO).build();
    let sink = Deliveries::new()?;
    let tasks = Consumers(vec![
        herald_subscriber(endpoint, "e2e", sink.clone()).await?,
    ]);
    end_to_end(pid, spec, t, sink, tasks, |payload| {
        herald_send(publisher.clone(), payload)
    })
    .await
}

// ------------------------------------------------------------------ W6

/// W6 settings: writers, streams, events per append, Zipf or uniform
/// stream choice.
#[derive(Debug, Clone, Copy)]
pub struct W6 {
    pub writers: u64,
    pub streams: u64,
    pub events: u64,
    pub zipf: bool,
}

/// Zipf exponent of the skewed points.
const ZIPF_S: f64 = 1.1;

impl W6 {
    /// Streams each writer owns: writer `w` owns rank `r` as stream
    /// `r * writers + w` (so no two writers share a stream).
    fn per_writer(self) -> u64 {
        (self.streams / self.writers).max(1)
    }

    fn json(self) -> Value {
        json!({"writers": self.writers, "streams": self.streams,
               "events_per_append": self.events,
               "stream_choice": if self.zipf { format!("zipf s={ZIPF_S}") } else { "uniform".to_owned() }})
    }
}

/// splitmix64: a small, seedable generator (no dependency).
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The cumulative distribution of ranks 0..n with weight 1 / (rank+1)^s.
fn zipf_cdf(n: u64, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-s)).collect();
    let total: f64 = weights.iter().sum();
    let mut sum = 0.0;
    weights
        .iter()
        .map(|w| {
            sum += w / total;
            sum
        })
        .collect()
}

/// Draws a rank: from `cdf` (Zipf) or uniform over `n`.
fn draw(rng: &mut Rng, n: u64, cdf: Option<&[f64]>) -> usize {
    let u = rng.unit();
    let rank = match cdf {
        Some(cdf) => cdf.partition_point(|&c| c < u),
        None => (u * n as f64) as usize,
    };
    rank.min(n as usize - 1)
}

/// W6 on Herald: `writers` tasks append `events` events at a time to
/// streams they own, with the exact expected version, so no conflict is
/// expected; afterwards the events stored are checked against the appends
/// acknowledged. Throughput is appends/s.
pub async fn w6_herald(
    endpoint: &Endpoint,
    pid: u32,
    spec: W6,
    size: usize,
    t: Timing,
) -> Result<Run> {
    /// One writer's streams and what it knows of their versions.
    struct Writer {
        id: u64,
        rng: Rng,
        versions: Vec<Option<u64>>,
        appends: u64,
        conflicts: u64,
    }
    let client = herald_client(endpoint).await?;
    client
        .create_topic(TopicOptions::new("accounts").fsync(Fsync::Always))
        .await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let per = spec.per_writer();
    let cdf: Option<Arc<Vec<f64>>> = spec.zipf.then(|| Arc::new(zipf_cdf(per, ZIPF_S)));
    let init = |writer: u64| Writer {
        id: writer,
        rng: Rng(writer.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed),
        versions: vec![None; per as usize],
        appends: 0,
        conflicts: 0,
    };
    let op_client = client.clone();
    let (mut run, states) = concurrent(pid, spec.writers, t, init, move |mut w: Writer| {
        let (client, payload, cdf) = (op_client.clone(), payload.clone(), cdf.clone());
        async move {
            let rank = draw(&mut w.rng, per, cdf.as_deref().map(Vec::as_slice));
            let stream = format!("account-{}", rank as u64 * spec.writers + w.id);
            let events = (0..spec.events).map(|_| {
                let mut event = Event::new("", "/bench", "account.credited");
                event.datacontenttype = Some("application/octet-stream".to_owned());
                event.data = Some(payload.clone());
                event
            });
            let expected = Expected::from_current(w.versions[rank]);
            match client.append("accounts", &stream, events, expected).await {
                Ok(appended) => {
                    w.versions[rank] = Some(appended.last_version);
                    w.appends += 1;
                }
                Err(error) if error.current_version().is_some() => {
                    w.conflicts += 1;
                    w.versions[rank] = error.current_version();
                }
                Err(error) => return Err(error.into()),
            }
            Ok(w)
        }
    })
    .await?;
    let conflicts: u64 = states.iter().map(|w| w.conflicts).sum();
    let appends_total: u64 = states.iter().map(|w| w.appends).sum();
    // Verify: the topic holds exactly the acknowledged events, and a sample
    // of streams is at the version its writer last saw.
    let topic = client.describe_topic("accounts").await?;
    let stored: u64 = topic
        .partitions
        .iter()
        .map(|p| p.end_offset - p.start_offset)
        .sum();
    let mut sampled = 0u64;
    let mut mismatched = 0u64;
    for w in &states {
        for (rank, version) in w
            .versions
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some())
            .take(2)
        {
            let stream = format!("account-{}", rank as u64 * spec.writers + w.id);
            let meta = client.stream_metadata("accounts", &stream).await?;
            sampled += 1;
            if Some(meta.version) != *version {
                mismatched += 1;
            }
        }
    }
    let expected_events = appends_total * spec.events;
    let appends = run.latency.map_or(0, |l| l.count);
    let mut extra = spec.json();
    extra["appends"] = json!(appends);
    extra["events_per_s"] = json!(run.throughput * spec.events as f64);
    extra["conflicts"] = json!(conflicts);
    extra["expected_conflicts"] = json!(0);
    extra["verification"] = json!({
        "appends_acknowledged_total": appends_total,
        "events_expected": expected_events,
        "events_stored": stored,
        "streams_sampled": sampled, "stream_versions_mismatched": mismatched,
        "ok": stored == expected_events && mismatched == 0 && conflicts == 0,
    });
    extra["server_cpu_us_per_append"] = json!(run.noise.server_cpu * 1e6 / appends.max(1) as f64);
    run.extra = extra;
    Ok(run)
}

/// W6 on raw NATS JetStream: what an event-store append needs, done by
/// hand, as Herald's NATS backend does it: one stream (`ACCOUNTS`, atomic
/// publish allowed), one subject per event stream (`accounts.<stream>`),
/// optimistic concurrency through `Nats-Expected-Last-Subject-Sequence` on
/// the append's first message, and the events of one append as one atomic
/// batch (ADR-50). Each writer owns its streams (as on Herald and
/// PostgreSQL), so no conflict is expected; afterwards the stream's
/// message count is checked against the acknowledged appends.
pub async fn w6_nats(url: &str, pid: u32, spec: W6, size: usize, t: Timing) -> Result<Run> {
    /// One writer's streams and the last sequence of each it knows.
    struct Writer {
        id: u64,
        rng: Rng,
        last: Vec<u64>,
        appends: u64,
    }
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let mut attempts = 0;
    let mut stream = loop {
        let created = js
            .get_or_create_stream(jetstream::stream::Config {
                name: "ACCOUNTS".to_owned(),
                subjects: vec!["accounts.>".to_owned()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: 1,
                allow_atomic_publish: true,
                ..Default::default()
            })
            .await;
        match created {
            Ok(stream) => break stream,
            // JetStream may still be starting.
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    let payload = Bytes::from(vec![b'x'; size]);
    let per = spec.per_writer();
    let cdf: Option<Arc<Vec<f64>>> = spec.zipf.then(|| Arc::new(zipf_cdf(per, ZIPF_S)));
    let init = |writer: u64| Writer {
        id: writer,
        rng: Rng(writer.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed),
        last: vec![0; per as usize],
        appends: 0,
    };
    let batches = Arc::new(AtomicU64::new(0));
    let (mut run, states) = concurrent(pid, spec.writers, t, init, move |mut w: Writer| {
        let (client, js, payload, cdf) = (client.clone(), js.clone(), payload.clone(), cdf.clone());
        let batches = Arc::clone(&batches);
        async move {
            let rank = draw(&mut w.rng, per, cdf.as_deref().map(Vec::as_slice));
            let subject = format!("accounts.account-{}", rank as u64 * spec.writers + w.id);
            let batch = format!("b{}", batches.fetch_add(1, Ordering::Relaxed));
            let mut sent = 0;
            for index in 1..=spec.events {
                let mut headers = async_nats::HeaderMap::new();
                if index == 1 {
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        w.last[rank].to_string(),
                    );
                }
                if spec.events > 1 {
                    headers.insert("Nats-Batch-Id", batch.as_str());
                    headers.insert("Nats-Batch-Sequence", index.to_string());
                }
                if index < spec.events {
                    client
                        .publish_with_headers(subject.clone(), headers, payload.clone())
                        .await?;
                    sent += 1;
                    continue;
                }
                if spec.events > 1 {
                    headers.insert("Nats-Batch-Commit", "1");
                }
                match js
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await?
                    .await
                {
                    Ok(ack) => {
                        w.last[rank] = ack.sequence;
                        w.appends += 1;
                    }
                    // A conflict is not expected (each writer owns its
                    // streams): any failure ends the run.
                    Err(error) => {
                        anyhow::bail!("append {batch} ({sent} sent before) failed: {error}");
                    }
                }
            }
            Ok(w)
        }
    })
    .await?;
    let appends_total: u64 = states.iter().map(|w| w.appends).sum();
    let stored = stream.info().await?.state.messages;
    let expected_events = appends_total * spec.events;
    let appends = run.latency.map_or(0, |l| l.count);
    let mut extra = spec.json();
    extra["appends"] = json!(appends);
    extra["events_per_s"] = json!(run.throughput * spec.events as f64);
    extra["conflicts"] = json!(0);
    extra["expected_conflicts"] = json!(0);
    extra["verification"] = json!({
        "appends_acknowledged_total": appends_total,
        "events_expected": expected_events,
        "events_stored": stored,
        "ok": stored == expected_events,
    });
    extra["server_cpu_us_per_append"] = json!(run.noise.server_cpu * 1e6 / appends.max(1) as f64);
    run.extra = extra;
    Ok(run)
}

/// W6 on PostgreSQL: pgbench, `writers` clients (at most 2 threads), the
/// same stream ownership and choice; each append is one INSERT of the
/// stream's next `events` versions (the primary key refuses a duplicate
/// version), one transaction. Afterwards `count(*)` is checked against the
/// transactions pgbench completed.
pub async fn w6_postgres(pg: &Postgres, spec: W6, size: usize, t: Timing) -> Result<Run> {
    let per = spec.per_writer();
    let rank = if spec.zipf {
        format!("random_zipfian(1, {per}, {ZIPF_S}) - 1")
    } else {
        format!("random(0, {per} - 1)")
    };
    let script = format!(
        "\\set r {rank}\n\
         \\set s :client_id + :clients * :r\n\
         INSERT INTO events (stream, version, data)\n  \
         SELECT :s, base.next + g, repeat('x', {size})\n  \
         FROM (SELECT coalesce(max(version), -1) + 1 AS next FROM events WHERE stream = :s) base,\n  \
         generate_series(0, {last}) g;\n",
        last = spec.events - 1
    );
    pg.write_file("append.sql", &script)?;
    let writers = spec.writers;
    let common = format!(
        "-c {writers} -j {} -D clients={writers} -f append.sql",
        writers.min(2)
    );
    let warmup = t.warmup.as_secs().max(1);
    let warm_output = tokio::task::block_in_place(|| pg.pgbench(&format!("{common} -T {warmup}")))?;
    let before = Snapshot::take(Some(pg.pid()));
    let seconds = t.measure.as_secs().max(1);
    let output = tokio::task::block_in_place(|| {
        pg.pgbench(&format!("{common} -T {seconds} -l --log-prefix=w6log"))
    })?;
    let after = Snapshot::take(Some(pg.pid()));
    let noise = after.since(&before);
    let tps: f64 = pgbench_figure(&output, "tps = ")
        .with_context(|| format!("no tps in pgbench output: {output}"))?;
    let processed = |out: &str| {
        pgbench_figure(out, "number of transactions actually processed: ")
            .with_context(|| format!("no transaction count in pgbench output: {out}"))
    };
    let failed = |out: &str| pgbench_figure(out, "number of failed transactions: ").unwrap_or(0.0);
    let appends_total = (processed(&warm_output)? + processed(&output)?) as u64;
    let conflicts = (failed(&warm_output) + failed(&output)) as u64;
    let stored: u64 = tokio::task::block_in_place(|| pg.query("SELECT count(*) FROM events"))?
        .trim()
        .parse()
        .context("count(*)")?;
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
    let expected_events = appends_total * spec.events;
    let mut extra = spec.json();
    extra["appends"] = json!(latency.count);
    extra["events_per_s"] = json!(tps * spec.events as f64);
    extra["client"] = json!(format!("pgbench -j {}", writers.min(2)));
    extra["conflicts"] = json!(conflicts);
    extra["expected_conflicts"] = json!(0);
    extra["verification"] = json!({
        "appends_acknowledged_total": appends_total,
        "events_expected": expected_events,
        "events_stored": stored,
        "ok": stored == expected_events && conflicts == 0,
    });
    extra["server_cpu_us_per_append"] = json!(noise.server_cpu * 1e6 / latency.count.max(1) as f64);
    Ok(Run {
        throughput: tps,
        latency: Some(latency),
        noise,
        extra,
    })
}

/// The number after `prefix` on a line of pgbench's output.
fn pgbench_figure(output: &str, prefix: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').next())
        .and_then(|v| v.parse().ok())
}

// ------------------------------------------------------------------ W2

/// W2 on NATS: `producers` tasks on one connection, each with one publish
/// in flight (its ack awaited before the next); with `partitions` > 1,
/// producer i publishes to stream `bench{i % partitions}`.
pub async fn w2_nats(
    url: &str,
    pid: u32,
    producers: u64,
    partitions: u32,
    size: usize,
    t: Timing,
) -> Result<Run> {
    let js = nats_streams(url, partitions).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let subject = move |task: u64| nats_subject(partitions, (task % u64::from(partitions)) as u32);
    let (mut run, _) = concurrent(pid, producers, t, subject, move |subject: String| {
        let (js, payload) = (js.clone(), payload.clone());
        async move {
            js.publish(subject.clone(), payload).await?.await?;
            Ok(subject)
        }
    })
    .await?;
    run.extra["partitions"] = json!(partitions);
    Ok(run)
}

/// W2 on Herald: `producers` tasks on one client (one HTTP/2 connection),
/// each with one unary Publish of one event in flight; with `partitions` >
/// 1, each producer's events carry its own key, spreading them.
pub async fn w2_herald(
    endpoint: &Endpoint,
    pid: u32,
    level: Level,
    producers: u64,
    partitions: u32,
    size: usize,
    t: Timing,
) -> Result<Run> {
    let client = herald_topic_partitions(endpoint, level, partitions).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let key = move |task: u64| (partitions > 1).then(|| format!("producer-{task}"));
    let (mut run, _) = concurrent(pid, producers, t, key, move |key: Option<String>| {
        let (client, mut event) = (client.clone(), herald_event(&payload));
        event.key.clone_from(&key);
        async move {
            client.publish("bench", [event]).await?;
            Ok(key)
        }
    })
    .await?;
    run.extra["partitions"] = json!(partitions);
    Ok(run)
}

/// Runs `op` in a loop on `tasks` tasks, each with its own state (from
/// `init`, passed through every call) until the end of the run; counts and
/// times the operations started after the warm-up. Returns the states too.
pub(crate) async fn concurrent<S, I, F, Fut>(
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

// ------------------------------------------------------ several nodes

/// Several Herald nodes sharing one backend (`herald-bench nodes`): W2's
/// shape (`producers` tasks, one unary publish of one event in flight
/// each, keyed by producer over 4 partitions), the producers spread
/// round-robin over `endpoints`, each node's on a client of its own.
pub async fn nodes_publish(
    endpoints: &[Endpoint],
    pid: u32,
    level: Level,
    producers: u64,
    t: Timing,
) -> Result<Run> {
    herald_topic_partitions(&endpoints[0], level, 4).await?;
    let mut clients = Vec::new();
    for endpoint in endpoints {
        clients.push(herald_client(endpoint).await?);
    }
    let payload = Bytes::from(vec![b'x'; 128]);
    let count = clients.len() as u64;
    let init = |task: u64| {
        (
            clients[usize::try_from(task % count).unwrap_or(0)].clone(),
            format!("producer-{task}"),
        )
    };
    let (mut run, _) = concurrent(
        pid,
        producers,
        t,
        init,
        move |(client, key): (Client, String)| {
            let mut event = herald_event(&payload);
            event.key = Some(key.clone());
            async move {
                client.publish("bench", [event]).await?;
                Ok((client, key))
            }
        },
    )
    .await?;
    run.extra = json!({"nodes": endpoints.len(), "producers": producers, "partitions": 4});
    Ok(run)
}

/// Several Herald nodes sharing one backend: W4's drain of a `backlog`
/// (filled through the first node) by `consumers` consumers of one queue
/// group spread round-robin over `endpoints` (a group runs on one node;
/// the others forward to it).
pub async fn nodes_drain(
    endpoints: &[Endpoint],
    pid: u32,
    level: Level,
    backlog: u64,
    consumers: u64,
) -> Result<Run> {
    let mut run = drain_over(endpoints, pid, level, backlog, consumers, 128).await?;
    run.extra["nodes"] = json!(endpoints.len());
    Ok(run)
}
