//! The soak's actors. Each runs until its token is cancelled, counts what
//! it does in [`Stats`], and counts every failure instead of stopping: a
//! consumer whose call broke joins again, an SSE subscriber reconnects.
//!
//! - publishers: an open-loop schedule at the set rate, at most
//!   `producers` unary publishes in flight, each one event of `size` bytes
//!   with a key out of `keys` and its scheduled time in the `sentns`
//!   extension (so consumers can time publish → delivery);
//! - a queue group and a keyed group, `consumers` members each, acking
//!   most deliveries, nacking a fraction (with a delay) and rejecting a
//!   fraction (dead letters); a redriver delivers the dead letters again
//!   every so often;
//! - appenders: event-stream appends with the exact expected version to
//!   streams each appender owns (so a conflict is an error);
//! - jobs: a submitter and workers that complete (or fail a fraction of)
//!   them;
//! - SSE subscribers that connect to the topic's stream, stay a while,
//!   leave, and come back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use herald_client::{Client, Delivery, Event, Expected, ExtensionValue, JobSpec, RetryPolicy};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::stats::Stats;
use crate::workloads::{Rng, micros, nanos, pace};

/// The topic every publisher writes and every consumer reads.
pub const EVENTS: &str = "soak.events";
/// Where the groups of [`EVENTS`] copy their dead letters.
pub const DEAD: &str = "soak.dead";
/// The topic of the event streams.
pub const ACCOUNTS: &str = "soak.accounts";
/// The queue group.
pub const QUEUE: &str = "soak-queue";
/// The keyed group.
pub const KEYED: &str = "soak-keyed";
/// The job queue.
pub const JOBS: &str = "soak";
/// The extension carrying an event's scheduled send time (ns since
/// [`Stats::clock`]).
pub const STAMP: &str = "sentns";

/// A client that reports every failure: no retries by the SDK.
pub async fn client(endpoint: &str) -> Result<Client> {
    Ok(Client::builder(endpoint)
        .retry(RetryPolicy::none())
        .connect()
        .await?)
}

/// One event of `payload` for key `key`, stamped `sent_ns`.
pub fn event(payload: &Bytes, key: u64, sent_ns: u64) -> Event {
    let mut event = Event::new("", "/soak", "soak.event");
    event.datacontenttype = Some("application/octet-stream".to_owned());
    event.data = Some(payload.clone());
    event.key = Some(format!("key-{key}"));
    event.extensions.insert(
        STAMP.to_owned(),
        ExtensionValue::Integer(i64::try_from(sent_ns).unwrap_or(i64::MAX)),
    );
    event
}

/// Publishes for `seconds` from `producers` tasks, each with one publish in
/// flight, as fast as the server acknowledges; returns events per second
/// over the last two thirds (the first third warms up).
pub async fn max_publish_rate(
    client: &Client,
    stats: &Arc<Stats>,
    topic: &str,
    producers: usize,
    size: usize,
    keys: u64,
    seconds: f64,
) -> Result<MaxRate> {
    let started = Instant::now();
    let warm = started + Duration::from_secs_f64(seconds / 3.0);
    let end = started + Duration::from_secs_f64(seconds);
    let at_warm = tokio::spawn({
        let stats = Arc::clone(stats);
        async move {
            tokio::time::sleep_until(warm.into()).await;
            stats.counters()
        }
    });
    let payload = Bytes::from(vec![b'x'; size]);
    let mut tasks = Vec::new();
    for producer in 0..producers as u64 {
        let (client, payload, topic) = (client.clone(), payload.clone(), topic.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut counted = 0u64;
            let mut rng = Rng(producer.wrapping_mul(0x9e37_79b9) ^ 0xca1);
            while Instant::now() < end {
                let event = event(&payload, rng.next() % keys, 0);
                client.publish(&topic, [event]).await?;
                if Instant::now() >= warm {
                    counted += 1;
                }
            }
            Ok::<_, anyhow::Error>(counted)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let window = (end - warm).as_secs_f64();
    let before = at_warm.await?;
    let after = stats.counters();
    let rate = |name: &str| {
        let taken = after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
        taken as f64 / window
    };
    Ok(MaxRate {
        published: total as f64 / window,
        queue: rate("queue_delivered"),
        keyed: rate("keyed_delivered"),
    })
}

/// What the calibration measured, events/s over its last two thirds:
/// published, and first deliveries of each group in the same window.
#[derive(Debug, Clone, Copy)]
pub struct MaxRate {
    pub published: f64,
    pub queue: f64,
    pub keyed: f64,
}

impl MaxRate {
    /// The rate the whole mix carried: publishing beyond what the groups
    /// take only builds a backlog, so the slowest of the three.
    pub fn carried(&self) -> f64 {
        self.published.min(self.queue).min(self.keyed)
    }
}

/// The publishers: an open-loop schedule of `rate` events per second,
/// paced on a thread of its own with the OS timer (the async timer would
/// add up to a millisecond to every send), each publish spawned on the
/// runtime of `runtime`; at most `producers` in flight, so a slow server
/// makes sends late, and the latency (from the scheduled time) counts it.
/// Returns once `stop` is cancelled and the publishes in flight are done.
pub struct Publishers {
    pub client: Client,
    pub stats: Arc<Stats>,
    pub rate: f64,
    pub producers: usize,
    pub size: usize,
    pub keys: u64,
}

impl Publishers {
    pub fn spawn(
        self,
        runtime: tokio::runtime::Handle,
        stop: CancellationToken,
    ) -> Result<std::thread::JoinHandle<Result<()>>> {
        Ok(std::thread::Builder::new()
            .name("soak-publish-schedule".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(self.run(&runtime, &stop))
            })?)
    }

    async fn run(self, runtime: &tokio::runtime::Handle, stop: &CancellationToken) -> Result<()> {
        let slots = Arc::new(Semaphore::new(self.producers));
        let payload = Bytes::from(vec![b'x'; self.size]);
        let interval = 1e9 / self.rate.max(0.001);
        let start = Instant::now();
        let mut rng = Rng(0x50a6);
        let mut sent = 0u64;
        while !stop.is_cancelled() {
            let scheduled = start + Duration::from_nanos((sent as f64 * interval) as u64);
            pace(scheduled).await;
            let slot = slots.clone().acquire_owned().await?;
            self.stats
                .set_behind(u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX));
            let stamp = nanos(scheduled.saturating_duration_since(self.stats.clock));
            let event = event(&payload, rng.next() % self.keys, stamp);
            let (client, stats) = (self.client.clone(), self.stats.clone());
            runtime.spawn(async move {
                match client.publish(EVENTS, [event]).await {
                    Ok(_) => {
                        stats.add("published", 1);
                        stats.record("publish", micros(scheduled.elapsed()));
                    }
                    Err(error) => stats.error("publish", &error),
                }
                drop(slot);
            });
            sent += 1;
        }
        let all = u32::try_from(self.producers).context("too many producers")?;
        let _done = slots.acquire_many(all).await?;
        Ok(())
    }
}

/// An fdatasync probe on the server's filesystem, independent of it:
/// `pwrite` 128 B at the end of a file of its own, then `fdatasync`, every
/// `every`, each timed into `disk_sync`. On a virtual disk an fdatasync
/// sometimes waits 0.1–3 s behind the device's queue, and every writer on
/// the machine waits with it; the probe tells such a stall of the disk apart
/// from one of the server (BENCHMARKS.md, "Soak"). Its load is negligible
/// next to the server's (50 syncs/s against thousands).
pub struct DiskProbe {
    pub dir: std::path::PathBuf,
    pub stats: Arc<Stats>,
    pub every: Duration,
}

impl DiskProbe {
    /// The file wraps around at this size, so a long soak keeps it small.
    const WRAP_BYTES: u64 = 64 << 20;

    pub fn spawn(self, stop: CancellationToken) -> Result<std::thread::JoinHandle<Result<()>>> {
        let file = tempfile::tempfile_in(&self.dir)
            .with_context(|| format!("disk probe file in {}", self.dir.display()))?;
        Ok(std::thread::Builder::new()
            .name("soak-disk-probe".into())
            .spawn(move || {
                use std::os::unix::fs::FileExt as _;
                let record = [b'p'; 128];
                let mut offset = 0u64;
                while !stop.is_cancelled() {
                    let at = Instant::now();
                    file.write_all_at(&record, offset)?;
                    file.sync_data()?;
                    self.stats.record("disk_sync", micros(at.elapsed()));
                    offset = (offset + record.len() as u64) % Self::WRAP_BYTES;
                    std::thread::sleep(self.every);
                }
                Ok(())
            })?)
    }
}

/// How a group's members settle what they get.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    pub nack_fraction: f64,
    pub reject_fraction: f64,
    pub nack_delay: Duration,
}

/// One member of `group` (queue or keyed: `name` is the counters' prefix),
/// until `done`. A broken consumer is counted and joins again.
pub struct Member {
    pub endpoint: String,
    pub group: &'static str,
    pub name: &'static str,
    pub stats: Arc<Stats>,
    pub settle: Settle,
    /// Ids of events this group rejected: their next delivery is a
    /// redrive, which is not timed (it was published long ago).
    pub rejected: Arc<Mutex<HashSet<String>>>,
    pub seed: u64,
}

impl Member {
    pub async fn run(self, done: CancellationToken) {
        let mut rng = Rng(self.seed);
        while !done.is_cancelled() {
            let consumer = match client(&self.endpoint).await {
                Ok(client) => client
                    .consumer(EVENTS, self.group)
                    .credits(256)
                    .build()
                    .await
                    .map_err(anyhow::Error::from),
                Err(error) => Err(error),
            };
            let mut consumer = match consumer {
                Ok(consumer) => consumer,
                Err(error) => {
                    self.stats.error(self.name, &format!("{error:#}"));
                    tokio::select! {
                        () = done.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    () = done.cancelled() => return,
                    next = consumer.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => self.settle(delivery, &mut rng),
                    Some(Err(error)) => {
                        self.stats.error(self.name, &error);
                        break;
                    }
                    None => {
                        self.stats.error(self.name, &"the consumer ended");
                        break;
                    }
                }
            }
        }
    }

    fn settle(&self, delivery: Delivery, rng: &mut Rng) {
        let counter = |what: &str| format!("{}_{what}", self.name);
        self.stats.add(&counter("delivered"), 1);
        let first = delivery.attempt() == 1;
        if !first {
            self.stats.add(&counter("redelivered"), 1);
        }
        let event = &delivery.event().event;
        let redriven = first
            && self
                .rejected
                .lock()
                .is_ok_and(|mut rejected| rejected.remove(&event.id));
        if first
            && !redriven
            && let Some(ExtensionValue::Integer(sent)) = event.extensions.get(STAMP)
        {
            let latency = self.stats.since_stamp(u64::try_from(*sent).unwrap_or(0));
            self.stats.record(&counter("e2e"), latency);
        }
        let draw = rng.unit();
        let settled = if draw < self.settle.reject_fraction {
            if let Ok(mut rejected) = self.rejected.lock() {
                rejected.insert(event.id.clone());
            }
            self.stats.add(&counter("rejected"), 1);
            delivery.reject("soak: rejected on purpose")
        } else if draw < self.settle.reject_fraction + self.settle.nack_fraction {
            self.stats.add(&counter("nacked"), 1);
            delivery.nack(Some(self.settle.nack_delay))
        } else {
            self.stats.add(&counter("acked"), 1);
            delivery.ack()
        };
        if let Err(error) = settled {
            self.stats.error(self.name, &error);
        }
    }
}

/// Delivers every dead letter of both groups again, every `every`.
pub async fn redriver(client: Client, stats: Arc<Stats>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for group in [QUEUE, KEYED] {
            match client.redrive(EVENTS, group, Vec::new()).await {
                Ok(count) => stats.add("redriven", count),
                Err(error) => stats.error("redrive", &error),
            }
        }
    }
}

/// Appends one event at a time, `rate` per second, to streams
/// `acct-<appender>-<n>` (n < `streams`), each with the exact version it
/// last saw: only this appender writes them, so a conflict is an error.
pub struct Appender {
    pub client: Client,
    pub stats: Arc<Stats>,
    pub appender: u64,
    pub streams: u64,
    pub rate: f64,
    pub size: usize,
}

impl Appender {
    pub async fn run(self, stop: CancellationToken) {
        let mut versions: Vec<Option<u64>> = vec![None; self.streams as usize];
        let mut rng = Rng(0xacc7 ^ self.appender.wrapping_mul(0x2545_f491));
        let payload = Bytes::from(vec![b'x'; self.size]);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate.max(0.001)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let index = (rng.next() % self.streams) as usize;
            let stream = format!("acct-{}-{index}", self.appender);
            let mut event = Event::new("", "/soak", "account.credited");
            event.datacontenttype = Some("application/octet-stream".to_owned());
            event.data = Some(payload.clone());
            let expected = Expected::from_current(versions[index]);
            let started = Instant::now();
            match self
                .client
                .append(ACCOUNTS, &stream, [event], expected)
                .await
            {
                Ok(appended) => {
                    versions[index] = Some(appended.last_version);
                    self.stats.add("appends", 1);
                    self.stats.record("append", micros(started.elapsed()));
                }
                Err(error) => {
                    if let Some(current) = error.current_version() {
                        versions[index] = Some(current);
                    }
                    self.stats.error("append", &error);
                }
            }
        }
    }
}

/// Appends `events` events of `size` bytes to [`ACCOUNTS`] before the run,
/// [`SEED_PER_APPEND`] per append, each to a new stream `seed-<n>`, from
/// [`SEED_TASKS`] tasks at once (the SDK's retries on: this is setup, not
/// the measured mix).
pub async fn seed_streams(client: &Client, events: u64, size: usize) -> Result<()> {
    let payload = Bytes::from(vec![b's'; size]);
    let appends = events.div_ceil(SEED_PER_APPEND);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..SEED_TASKS {
        let client = client.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            for n in (task..appends).step_by(SEED_TASKS as usize) {
                let count = SEED_PER_APPEND.min(events - n * SEED_PER_APPEND);
                let batch = (0..count).map(|_| {
                    let mut event = Event::new("", "/soak", "account.opened");
                    event.datacontenttype = Some("application/octet-stream".to_owned());
                    event.data = Some(payload.clone());
                    event
                });
                client
                    .append(ACCOUNTS, &format!("seed-{n}"), batch, Expected::NoStream)
                    .await
                    .with_context(|| format!("seeding stream seed-{n}"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// Events per append of [`seed_streams`].
const SEED_PER_APPEND: u64 = 100;
/// Appends in flight at once in [`seed_streams`].
const SEED_TASKS: u64 = 8;

/// Submits `rate` jobs per second to [`JOBS`], each stamped with its
/// submit time; results are kept `ttl` (so records expire during the soak).
pub async fn job_submitter(
    client: Client,
    stats: Arc<Stats>,
    rate: f64,
    ttl: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let spec = JobSpec::new(json!({ STAMP: stats.now_ns() })).result_ttl(ttl);
        match client.submit_job(JOBS, spec).await {
            Ok(_) => stats.add("jobs_submitted", 1),
            Err(error) => stats.error("jobs", &error),
        }
    }
}

/// A job worker until `done`: completes each request, or fails a fraction
/// of them; times submit → completed.
pub async fn job_worker(
    client: Client,
    stats: Arc<Stats>,
    member: String,
    fail_fraction: f64,
    seed: u64,
    done: CancellationToken,
) {
    let mut worker = client.job_worker(JOBS).member(member);
    let mut rng = Rng(seed);
    loop {
        let task = tokio::select! {
            () = done.cancelled() => return,
            task = worker.next() => task,
        };
        let task = match task {
            Ok(task) => task,
            Err(error) => {
                stats.error("jobs", &error);
                tokio::select! {
                    () = done.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        let sent = task.data.get(STAMP).and_then(serde_json::Value::as_u64);
        let (ended, counter) = if rng.unit() < fail_fraction {
            (task.fail("soak: failed on purpose").await, "jobs_failed")
        } else {
            (task.complete(json!({"ok": true})).await, "jobs_completed")
        };
        match ended {
            Ok(_) => {
                stats.add(counter, 1);
                if let Some(sent) = sent {
                    stats.record("job", stats.since_stamp(sent));
                }
            }
            Err(error) => stats.error("jobs", &error),
        }
    }
}

/// An SSE subscriber of [`EVENTS`] (`GET /v1/topics/{topic}/events/stream`,
/// from the latest event) that stays between `stay.0` and `stay.1`, leaves,
/// and connects again, until `stop`.
pub struct SseSubscriber {
    pub http: reqwest::Client,
    pub url: String,
    pub stats: Arc<Stats>,
    pub stay: (Duration, Duration),
    pub seed: u64,
}

impl SseSubscriber {
    pub async fn run(self, stop: CancellationToken) {
        let mut rng = Rng(self.seed);
        while !stop.is_cancelled() {
            let span = self.stay.1.saturating_sub(self.stay.0);
            let stay = self.stay.0 + span.mul_f64(rng.unit());
            if self.session(stay, &stop).await.is_err() {
                return;
            }
            let pause = Duration::from_millis(rng.next() % 500);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One connection for `stay`; `Err` only when `stop` fired.
    async fn session(&self, stay: Duration, stop: &CancellationToken) -> Result<(), ()> {
        let response = tokio::select! {
            () = stop.cancelled() => return Err(()),
            response = self.http.get(&self.url).send() => response,
        };
        let response = match response.and_then(reqwest::Response::error_for_status) {
            Ok(response) => response,
            Err(error) => {
                self.stats.error("sse", &error);
                return Ok(());
            }
        };
        self.stats.add("sse_sessions", 1);
        let deadline = tokio::time::Instant::now() + stay;
        let mut body = response.bytes_stream();
        let mut pending = Vec::new();
        loop {
            let chunk = tokio::select! {
                () = stop.cancelled() => return Err(()),
                () = tokio::time::sleep_until(deadline) => return Ok(()),
                chunk = body.next() => chunk,
            };
            match chunk {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    let complete = pending.iter().rposition(|byte| *byte == b'\n');
                    if let Some(end) = complete {
                        self.lines(&pending[..end]);
                        pending.drain(..=end);
                    }
                }
                Some(Err(error)) => {
                    self.stats.error("sse", &error);
                    return Ok(());
                }
                None => {
                    self.stats.error("sse", &"the server ended the stream");
                    return Ok(());
                }
            }
        }
    }

    /// Counts and times the `data:` lines (one per event).
    fn lines(&self, text: &[u8]) {
        let marker = format!("\"{STAMP}\":");
        for line in text.split(|byte| *byte == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            self.stats.add("sse_events", 1);
            let stamp = data
                .windows(marker.len())
                .position(|window| window == marker.as_bytes())
                .map(|at| &data[at + marker.len()..])
                .map(|rest| {
                    rest.iter()
                        .take_while(|byte| byte.is_ascii_digit())
                        .fold(0u64, |n, digit| {
                            n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
                        })
                });
            if let Some(sent) = stamp {
                self.stats.record("sse_e2e", self.stats.since_stamp(sent));
            }
        }
    }
}
