//! `herald-bench soak`: a mixed workload against one `herald serve` for a
//! set duration, sampling the server's footprint and the latencies every
//! few seconds, with a verdict on whether they stayed flat.
//!
//! ```text
//! cargo build --release -p herald-bench -p herald-server --bin herald --bin herald-bench
//! target/release/herald-bench soak --duration 30m --out soak-out
//! ```
//!
//! 1. Start `herald serve` on a fresh temp dir (its warnings and errors go
//!    to `<out>/server.log`, and count as errors).
//! 2. Seed the event store (`--seed-stream-events`, so its index is
//!    larger than its page cache from the start), then start the mix
//!    (`mix.rs`) but the publishers: a queue and a keyed
//!    group consuming with nacks and rejects (dead letters) and a periodic
//!    redrive, stream appends with expected versions, jobs, SSE subscribers
//!    connecting and leaving.
//! 3. Calibrate: `producers` tasks publish back to back at D2 (`fsync =
//!    always`) to the event topic for `--calibrate` seconds, with the rest
//!    of the mix at work (so the maximum is the mix's, not a lone
//!    publisher's). The maximum is what the whole mix carried over the last
//!    two thirds: the lowest of the publish rate and each group's first
//!    deliveries (publishing faster than the groups take only builds a
//!    backlog). Once the groups have caught up, the publishers run at
//!    `--fraction-of-max` (0.5) of that maximum (or `--rate`) for
//!    `--duration`, open loop.
//! 4. Every `--sample-every` seconds: the server's RSS, threads, open fds,
//!    CPU and data size; per operation the count and p50/p99/max over that
//!    window; the groups' lag and dead letters; errors. One line printed,
//!    one row in `samples.csv` and `samples.jsonl`.
//! 5. Stop publishing, let both groups drain (bounded), and write
//!    `summary.json` with the verdict: after the warm-up (the first
//!    `--warmup-fraction` of the run), RSS and publish p99 are flat if the
//!    median of the last third of the samples is within `--tolerance`
//!    (±10%) of the median of the first third (RSS), or the p99 of every
//!    publish of the last third of the windows is within it of the first
//!    third's (publish p99, leaving out the windows in which an independent
//!    fdatasync probe on the same disk stalled, and the one after each);
//!    the run passes if both are flat, nothing failed (errors and server log lines are 0) and both
//!    groups drained. The exit status is 1 when it does not pass.

mod mix;
mod stats;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use herald_client::{Client, Fsync, GroupMode, GroupOptions, Start, TopicOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use self::mix::{ACCOUNTS, DEAD, EVENTS, KEYED, QUEUE};
use self::stats::{LATENCIES, Stats, latencies_json};
use crate::median;
use crate::noise::{self, ProcessFootprint, Snapshot};
use crate::peers::{self, Herald};
use crate::workloads::histogram;

/// `herald-bench soak`: see the module docs (and README, "Soak").
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long the mix runs: `90s`, `30m`, `1h`, or seconds.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    duration: Duration,
    /// Publish rate, events/s (default: `--fraction-of-max` of the rate
    /// measured at start).
    #[arg(long)]
    rate: Option<f64>,
    /// The share of the measured maximum publish rate to run at.
    #[arg(long, default_value_t = 0.5)]
    fraction_of_max: f64,
    /// Seconds of the maximum-rate measurement at start.
    #[arg(long, default_value_t = 10.0)]
    calibrate: f64,
    /// Concurrent publishers (publishes in flight at most), each one unary
    /// publish of one event at a time.
    #[arg(long, default_value_t = 32)]
    producers: usize,
    /// Event payload bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Partitions of the event topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Distinct event keys (the keyed group orders per key).
    #[arg(long, default_value_t = 256)]
    keys: u64,
    /// Members of each group (queue and keyed).
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Share of deliveries nacked (redelivered after `--nack-delay-ms`).
    #[arg(long, default_value_t = 0.01)]
    nack_fraction: f64,
    /// Share of deliveries rejected (dead letters).
    #[arg(long, default_value_t = 0.001)]
    reject_fraction: f64,
    #[arg(long, default_value_t = 50)]
    nack_delay_ms: u64,
    /// Seconds between redrives of every dead letter of both groups.
    #[arg(long, default_value_t = 30.0)]
    redrive_every: f64,
    /// Stream appends per second, over all appenders.
    #[arg(long, default_value_t = 200.0)]
    append_rate: f64,
    /// Concurrent appenders; each owns `--streams` streams.
    #[arg(long, default_value_t = 4)]
    appenders: u64,
    #[arg(long, default_value_t = 1000)]
    streams: u64,
    /// Events appended to the event store before anything else runs (in
    /// appends of 100, to streams `seed-<n>` nothing touches again), so
    /// the stream index starts larger than its page cache: the mix's
    /// appends grow `streams.redb` by ~2.5 MB a minute, and without a seed
    /// its 32 MiB cache (`storage.stream_index_cache_bytes`) went on
    /// filling, and the server's RSS with it, until minute 20 of a
    /// 30-minute run, past the warm-up (BENCHMARKS.md, "Soak"). 0: none.
    #[arg(long, default_value_t = 400_000)]
    seed_stream_events: u64,
    /// Jobs submitted per second.
    #[arg(long, default_value_t = 10.0)]
    job_rate: f64,
    #[arg(long, default_value_t = 2)]
    job_workers: usize,
    /// Share of jobs their worker fails.
    #[arg(long, default_value_t = 0.01)]
    job_fail_fraction: f64,
    /// SSE subscribers connected at a time (each leaves and comes back).
    #[arg(long, default_value_t = 4)]
    sse: usize,
    /// Seconds an SSE subscriber stays, at least and at most.
    #[arg(long, value_delimiter = ',', default_value = "2,20")]
    sse_stay: Vec<f64>,
    /// Retention per partition of each topic, MiB: the disk stays bounded,
    /// retention runs during the soak, and the data, and what grows with it
    /// (the server's RSS grew about 6 MB per 100 MB of data until retention
    /// began, BENCHMARKS.md "Soak"), reaches its steady state inside the
    /// warm-up: at the rates of 2026-12-04 (4,300–5,000 events/s) 4 × 64
    /// MiB fill in about 3 minutes (at 2,000–2,900 events/s, about 5). (It
    /// was 256 MiB, which filled after 25 minutes of a 30-minute run.)
    #[arg(long, default_value_t = 64)]
    retention_mib: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    sample_every: f64,
    /// Share of the run that is warm-up, left out of the verdict. A
    /// third: with the event store seeded (`--seed-stream-events`) the
    /// server's memory grew for its first 5–9 minutes at 4,300–5,000
    /// events/s (the dedup window fills in 2, the topics reach retention,
    /// 4 × 2 × 64 MiB, in about 5) and then stayed level
    /// (BENCHMARKS.md, "Soak"), so a 30-minute soak judges the last 20
    /// minutes, thirds of ~7 minutes. (It was half while the stream index's
    /// cache filled for 20 minutes, and a fifth before that was known.)
    #[arg(long, default_value_t = 1.0 / 3.0)]
    warmup_fraction: f64,
    /// How far the last third's median may be from the first third's
    /// (RSS, publish p99) to count as flat.
    #[arg(long, default_value_t = 0.10)]
    tolerance: f64,
    /// A disk probe's fdatasync at least this slow (ms) marks its sample
    /// window, and the one after it (the backlog drains there), as a disk
    /// stall: publish p99 is judged without them (and with them, for the
    /// record).
    #[arg(long, default_value_t = 100)]
    disk_stall_ms: u64,
    /// CPU time the hypervisor took from this VM in a sample window
    /// (`steal` in `/proc/stat`, in cores over the window) at or above
    /// which the window, and the one after it, count as the host's stall:
    /// publish p99 is judged without them, as with disk stalls.
    #[arg(long, default_value_t = 0.1)]
    steal_limit: f64,
    /// Output dir: samples.csv, samples.jsonl, summary.json, server.log.
    #[arg(long, default_value = "soak-out")]
    out: PathBuf,
    /// The herald binary (default: $BENCH_HERALD_BIN, next to this binary,
    /// target/release/herald).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// Where the server keeps its data (default: the system temp dir).
    #[arg(long)]
    tmp: Option<PathBuf>,
}

/// `90s`, `30m`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => (&text[..at], &text[at..]),
        None => (text, "s"),
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with s, m or h"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

/// Runs a soak; `Err` when it could not run or did not pass (after writing
/// everything it measured).
pub async fn run(args: SoakArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let stats = Arc::new(Stats::new()?);
    let herald_bin = args.herald_bin.clone().unwrap_or_else(peers::find_herald);
    let tmp = args.tmp.clone().unwrap_or_else(std::env::temp_dir);
    let server_log = args.out.join("server.log");
    let log_file = File::create(&server_log)
        .with_context(|| format!("cannot create {}", server_log.display()))?;
    let herald = Herald::launch(&herald_bin, &tmp, Stdio::from(log_file), false)?;
    let pid = herald.pid();
    eprintln!(
        "soak: herald {} pid {pid} on {}, data in {}",
        herald_bin.display(),
        herald.endpoint.url,
        herald.data_dir().display()
    );
    // Setup calls may wait for storage to open: the SDK's retries on.
    let admin = Client::connect(herald.endpoint.url.clone()).await?;
    admin.list_topics().await?;
    setup(&admin, &args).await?;
    if args.seed_stream_events > 0 {
        let seeding = Instant::now();
        mix::seed_streams(&admin, args.seed_stream_events, args.size).await?;
        eprintln!(
            "soak: seeded the event store with {} events in {:.1} s",
            args.seed_stream_events,
            seeding.elapsed().as_secs_f64()
        );
    }
    // From here on the SDK's reports of what it recovered from (at DEBUG)
    // are errors of the soak.
    tracing_subscriber::registry()
        .with(
            stats::SdkEvents(stats.clone()).with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("herald_client", tracing::Level::DEBUG),
            ),
        )
        .try_init()
        .context("tracing subscriber")?;

    // Everything but the publishers starts first, so the maximum is
    // measured with the rest of the mix at work.
    let stop = CancellationToken::new();
    let done = CancellationToken::new();
    let tasks = start_actors(&herald.endpoint.url, &stats, &args, &stop, &done).await?;
    let (rate, calibration) = match args.rate {
        Some(rate) => (rate, None),
        None => {
            let max = calibrate(&herald.endpoint.url, &admin, &stats, &args).await?;
            eprintln!(
                "soak: max rate {:.0} events/s carried by the whole mix (published {:.0}/s by {} producers at D2, first deliveries {:.0}/s queue, {:.0}/s keyed); running at {:.0}%",
                max.carried(),
                max.published,
                args.producers,
                max.queue,
                max.keyed,
                args.fraction_of_max * 100.0
            );
            (max.carried() * args.fraction_of_max, Some(max))
        }
    };
    eprintln!(
        "soak: {} at {rate:.0} events/s, sampling every {} s",
        describe_duration(args.duration),
        args.sample_every
    );
    let baseline = stats.counters();
    let publishers = mix::Publishers {
        client: mix::client(&herald.endpoint.url).await?,
        stats: stats.clone(),
        rate,
        producers: args.producers,
        size: args.size,
        keys: args.keys.max(1),
    }
    .spawn(tokio::runtime::Handle::current(), stop.clone())?;

    let probe = mix::DiskProbe {
        dir: tmp.clone(),
        stats: stats.clone(),
        every: Duration::from_millis(20),
    }
    .spawn(stop.clone())?;

    let started = Instant::now();
    let mut sampler = Sampler::new(
        &args,
        pid,
        herald.data_dir(),
        server_log.clone(),
        stats.clone(),
    )?;
    let every = Duration::from_secs_f64(args.sample_every);
    let mut tick = tokio::time::interval_at((started + every).into(), every);
    while started.elapsed() < args.duration {
        tick.tick().await;
        sampler.sample(&admin, started.elapsed()).await?;
    }

    // Stop producing; let the groups take what is left.
    stop.cancel();
    tokio::task::spawn_blocking(move || publishers.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the publish schedule panicked"))??;
    tokio::task::spawn_blocking(move || probe.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the disk probe panicked"))??;
    let drained = drain(&admin, Duration::from_secs(60)).await?;
    done.cancel();
    for task in tasks {
        task.await?;
    }
    let groups = json!({
        QUEUE: group_json(&admin, QUEUE).await?,
        KEYED: group_json(&admin, KEYED).await?,
    });
    let server_log_lines = sampler.server_log_lines();
    let verdict = verdict(
        &sampler.rows,
        &sampler.publish_windows,
        &args,
        drained,
        stats.count("errors"),
        server_log_lines,
    );
    let summary = json!({
        "args": format!("{args:?}"),
        "herald": herald_bin.display().to_string(),
        "measured_max_publish_per_s": calibration.map(|max| max.carried()),
        "calibration": calibration.map(|max| json!({
            "published_per_s": max.published,
            "queue_first_deliveries_per_s": max.queue,
            "keyed_first_deliveries_per_s": max.keyed,
        })),
        "publish_rate_per_s": rate,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "samples": sampler.rows.len(),
        "verdict": verdict,
        "counters": since(&stats.counters(), &baseline),
        "latencies_us": latencies_json(&sampler.totals),
        "groups_at_end": groups,
        "errors": stats.errors_json(),
        "server_log": sampler.server_log_head(20),
        "machine": {
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "load_average_at_end": noise::load_average(),
        },
    });
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    print_summary(&summary);
    eprintln!("soak: samples and summary in {}", args.out.display());
    drop(herald);
    if verdict["pass"] != json!(true) {
        bail!("the soak did not pass: {}", verdict["reasons"]);
    }
    Ok(())
}

/// The topics and groups of the mix (fresh server: all created).
async fn setup(admin: &Client, args: &SoakArgs) -> Result<()> {
    let retention = Some(args.retention_mib * 1024 * 1024);
    admin
        .create_topic(
            TopicOptions::new(DEAD)
                .fsync(Fsync::Always)
                .retention(None, retention, None),
        )
        .await?;
    admin
        .create_topic(
            TopicOptions::new(EVENTS)
                .partitions(args.partitions)
                .fsync(Fsync::Always)
                .retention(None, retention, None)
                .dead_letter_topic(DEAD),
        )
        .await?;
    admin
        .create_topic(
            TopicOptions::new(ACCOUNTS)
                .partitions(2)
                .fsync(Fsync::Always)
                .retention(None, retention, None),
        )
        .await?;
    for (group, mode) in [(QUEUE, GroupMode::Queue), (KEYED, GroupMode::Keyed)] {
        admin
            .put_group(
                EVENTS,
                GroupOptions::new(group, mode)
                    .start(Start::Latest)
                    .ack_wait(Duration::from_secs(10))
                    .max_deliveries(5)
                    .max_in_flight(2000),
            )
            .await?;
    }
    Ok(())
}

/// The maximum publish rate of the soak's publishers at D2, on the event
/// topic while the rest of the mix runs (the groups and SSE subscribers
/// take what it publishes); then waits until the groups have caught up.
async fn calibrate(
    endpoint: &str,
    admin: &Client,
    stats: &Arc<Stats>,
    args: &SoakArgs,
) -> Result<mix::MaxRate> {
    let client = mix::client(endpoint).await?;
    let max = mix::max_publish_rate(
        &client,
        stats,
        EVENTS,
        args.producers,
        args.size,
        args.keys.max(1),
        args.calibrate,
    )
    .await?;
    if !drain(admin, Duration::from_secs(120)).await? {
        bail!("the groups did not catch up within 120 s of the calibration");
    }
    Ok(max)
}

/// `now` minus `base`, counter by counter.
fn since(
    now: &BTreeMap<&'static str, u64>,
    base: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    now.iter()
        .map(|(name, count)| (*name, count - base.get(name).copied().unwrap_or(0)))
        .collect()
}

/// Starts every actor but the publishers (consumers and job workers stop
/// on `done`, the others on `stop`).
async fn start_actors(
    endpoint: &str,
    stats: &Arc<Stats>,
    args: &SoakArgs,
    stop: &CancellationToken,
    done: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let settle = mix::Settle {
        nack_fraction: args.nack_fraction,
        reject_fraction: args.reject_fraction,
        nack_delay: Duration::from_millis(args.nack_delay_ms),
    };
    for (group, name) in [(QUEUE, "queue"), (KEYED, "keyed")] {
        let rejected = Arc::new(Mutex::new(HashSet::new()));
        for member in 0..args.consumers as u64 {
            let member = mix::Member {
                endpoint: endpoint.to_owned(),
                group,
                name,
                stats: stats.clone(),
                settle,
                rejected: rejected.clone(),
                seed: 0x5eed ^ (member << 8) ^ name.len() as u64,
            };
            tasks.push(tokio::spawn(member.run(done.clone())));
        }
    }
    let redrive = Duration::from_secs_f64(args.redrive_every);
    tasks.push(tokio::spawn(mix::redriver(
        mix::client(endpoint).await?,
        stats.clone(),
        redrive,
        stop.clone(),
    )));
    let appenders = args.appenders.max(1);
    let appends = mix::client(endpoint).await?;
    for appender in 0..appenders {
        let appender = mix::Appender {
            client: appends.clone(),
            stats: stats.clone(),
            appender,
            streams: args.streams.max(1),
            rate: args.append_rate / appenders as f64,
            size: args.size,
        };
        tasks.push(tokio::spawn(appender.run(stop.clone())));
    }
    let jobs = mix::client(endpoint).await?;
    tasks.push(tokio::spawn(mix::job_submitter(
        jobs.clone(),
        stats.clone(),
        args.job_rate,
        Duration::from_secs(60),
        stop.clone(),
    )));
    for worker in 0..args.job_workers as u64 {
        tasks.push(tokio::spawn(mix::job_worker(
            mix::client(endpoint).await?,
            stats.clone(),
            format!("soak-worker-{worker}"),
            args.job_fail_fraction,
            0x10b ^ worker,
            done.clone(),
        )));
    }
    let http = reqwest::Client::new();
    let stay = (
        Duration::from_secs_f64(args.sse_stay.first().copied().unwrap_or(2.0)),
        Duration::from_secs_f64(args.sse_stay.get(1).copied().unwrap_or(20.0)),
    );
    for subscriber in 0..args.sse as u64 {
        let subscriber = mix::SseSubscriber {
            http: http.clone(),
            url: format!("{endpoint}/v1/topics/{EVENTS}/events/stream?from=latest"),
            stats: stats.clone(),
            stay,
            seed: 0x55e ^ subscriber,
        };
        tasks.push(tokio::spawn(subscriber.run(stop.clone())));
    }
    Ok(tasks)
}

/// Waits (at most `limit`) until both groups have nothing left to deliver
/// and nothing in flight; whether they got there.
async fn drain(admin: &Client, limit: Duration) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        let mut settled = true;
        for group in [QUEUE, KEYED] {
            let status = admin.group_status(EVENTS, group).await?;
            settled &= status.in_flight == 0 && status.partitions.iter().all(|p| p.lag == 0);
        }
        if settled {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn group_json(admin: &Client, group: &str) -> Result<Value> {
    let status = admin.group_status(EVENTS, group).await?;
    Ok(json!({
        "lag": status.partitions.iter().map(|p| p.lag).sum::<u64>(),
        "in_flight": status.in_flight,
        "pending": status.pending,
        "dead_letters": status.dead_letters,
    }))
}

/// Samples the server and the window's figures.
struct Sampler {
    pid: u32,
    data_dir: PathBuf,
    server_log: PathBuf,
    stats: Arc<Stats>,
    csv: File,
    jsonl: File,
    last: Snapshot,
    last_counters: BTreeMap<&'static str, u64>,
    last_log_lines: u64,
    /// The whole run's histograms.
    totals: BTreeMap<&'static str, Histogram<u64>>,
    /// Each sample's publish histogram, for the verdict's p99 over whole
    /// thirds of the run.
    publish_windows: Vec<Window>,
    rows: Vec<Value>,
}

/// The columns of `samples.csv`.
const CSV_COLUMNS: &str = "t_s,rss_mb,threads,open_fds,server_cpu_cores,client_cpu_cores,data_mb,\
published_per_s,publish_p50_us,publish_p99_us,publish_max_us,queue_e2e_p99_us,keyed_e2e_p99_us,\
sse_e2e_p99_us,append_p99_us,job_p99_us,queue_acked_per_s,keyed_acked_per_s,sse_events_per_s,\
appends_per_s,jobs_completed_per_s,queue_lag,keyed_lag,dead_letters,schedule_behind_ms,errors,\
server_log_lines,disk_sync_p99_us,disk_sync_max_us,steal_cores";

impl Sampler {
    fn new(
        args: &SoakArgs,
        pid: u32,
        data_dir: PathBuf,
        server_log: PathBuf,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        let mut csv = File::create(args.out.join("samples.csv"))?;
        writeln!(csv, "{CSV_COLUMNS}")?;
        let totals = LATENCIES
            .iter()
            .map(|name| Ok((*name, histogram()?)))
            .collect::<Result<_>>()?;
        // The window starts now: what the calibration left is not in it.
        stats.take_window()?;
        Ok(Self {
            pid,
            data_dir,
            server_log,
            last_counters: stats.counters(),
            stats,
            csv,
            jsonl: File::create(args.out.join("samples.jsonl"))?,
            last: Snapshot::take(Some(pid)),
            last_log_lines: 0,
            totals,
            publish_windows: Vec::new(),
            rows: Vec::new(),
        })
    }

    async fn sample(&mut self, admin: &Client, elapsed: Duration) -> Result<()> {
        let footprint = ProcessFootprint::take(self.pid);
        let now = Snapshot::take(Some(self.pid));
        let noise = now.since(&self.last);
        self.last = now;
        let window = self.stats.take_window()?;
        if let Some(publish) = window.get("publish") {
            self.publish_windows.push(Window {
                t_s: elapsed.as_secs_f64(),
                publish: publish.clone(),
                disk_sync_max_us: window.get("disk_sync").map_or(0, Histogram::max),
                steal_cores: noise.steal / noise.seconds.max(1e-9),
            });
        }
        for (name, hist) in &window {
            if let Some(total) = self.totals.get_mut(name) {
                total.add(hist)?;
            }
        }
        let counters = self.stats.counters();
        let seconds = noise.seconds.max(1e-9);
        let per_second = |name: &str| {
            let delta = counters.get(name).copied().unwrap_or(0)
                - self.last_counters.get(name).copied().unwrap_or(0);
            delta as f64 / seconds
        };
        let delta = |name: &str| {
            counters.get(name).copied().unwrap_or(0)
                - self.last_counters.get(name).copied().unwrap_or(0)
        };
        let queue = group_json(admin, QUEUE).await?;
        let keyed = group_json(admin, KEYED).await?;
        let log_lines = self.server_log_lines();
        let p = |name: &str, quantile: f64| {
            window
                .get(name)
                .filter(|hist| !hist.is_empty())
                .map_or(0, |hist| hist.value_at_quantile(quantile))
        };
        let max = |name: &str| window.get(name).map_or(0, Histogram::max);
        let row = json!({
            "t_s": elapsed.as_secs_f64(),
            "rss_mb": footprint.rss_bytes as f64 / 1e6,
            "threads": footprint.threads,
            "open_fds": footprint.open_fds,
            "server_cpu_cores": noise.server_cpu / seconds,
            "client_cpu_cores": noise.client_cpu / seconds,
            "steal_cores": noise.steal / seconds,
            "data_mb": noise::dir_bytes(&self.data_dir) as f64 / 1e6,
            "per_s": {
                "published": per_second("published"),
                "queue_acked": per_second("queue_acked"),
                "keyed_acked": per_second("keyed_acked"),
                "sse_events": per_second("sse_events"),
                "appends": per_second("appends"),
                "jobs_completed": per_second("jobs_completed"),
            },
            "latency_us": latencies_json(&window),
            "groups": {QUEUE: queue, KEYED: keyed},
            "schedule_behind_ms": self.stats.behind_us() as f64 / 1000.0,
            "errors": delta("errors"),
            "server_log_lines": log_lines - self.last_log_lines,
        });
        let fields = [
            format!("{:.1}", row["t_s"].as_f64().unwrap_or(0.0)),
            format!("{:.1}", row["rss_mb"].as_f64().unwrap_or(0.0)),
            footprint.threads.to_string(),
            footprint.open_fds.to_string(),
            format!("{:.2}", noise.server_cpu / seconds),
            format!("{:.2}", noise.client_cpu / seconds),
            format!("{:.1}", row["data_mb"].as_f64().unwrap_or(0.0)),
            format!("{:.0}", per_second("published")),
            p("publish", 0.5).to_string(),
            p("publish", 0.99).to_string(),
            max("publish").to_string(),
            p("queue_e2e", 0.99).to_string(),
            p("keyed_e2e", 0.99).to_string(),
            p("sse_e2e", 0.99).to_string(),
            p("append", 0.99).to_string(),
            p("job", 0.99).to_string(),
            format!("{:.0}", per_second("queue_acked")),
            format!("{:.0}", per_second("keyed_acked")),
            format!("{:.0}", per_second("sse_events")),
            format!("{:.0}", per_second("appends")),
            format!("{:.1}", per_second("jobs_completed")),
            queue["lag"].to_string(),
            keyed["lag"].to_string(),
            (queue["dead_letters"].as_u64().unwrap_or(0)
                + keyed["dead_letters"].as_u64().unwrap_or(0))
            .to_string(),
            format!("{:.1}", self.stats.behind_us() as f64 / 1000.0),
            delta("errors").to_string(),
            (log_lines - self.last_log_lines).to_string(),
            p("disk_sync", 0.99).to_string(),
            max("disk_sync").to_string(),
            format!("{:.2}", noise.steal / seconds),
        ];
        writeln!(self.csv, "{}", fields.join(","))?;
        writeln!(self.jsonl, "{row}")?;
        println!(
            "[{:>6.0}s] rss {:>7.1} MB fds {:>4} thr {:>3} cpu {:.2} | pub {:>6.0}/s p99 {:>6} µs | \
             queue p99 {:>6} µs lag {:>5} | keyed p99 {:>6} µs lag {:>5} | sse {:>6.0}/s p99 {:>6} µs | \
             append p99 {:>6} µs | job p99 {:>6} µs | dead {} | behind {:.0} ms | errors {} log {} | disk max {} µs | steal {:.2}",
            elapsed.as_secs_f64(),
            footprint.rss_bytes as f64 / 1e6,
            footprint.open_fds,
            footprint.threads,
            noise.server_cpu / seconds,
            per_second("published"),
            p("publish", 0.99),
            p("queue_e2e", 0.99),
            queue["lag"],
            p("keyed_e2e", 0.99),
            keyed["lag"],
            per_second("sse_events"),
            p("sse_e2e", 0.99),
            p("append", 0.99),
            p("job", 0.99),
            fields[23],
            self.stats.behind_us() as f64 / 1000.0,
            delta("errors"),
            log_lines - self.last_log_lines,
            max("disk_sync"),
            noise.steal / seconds,
        );
        self.last_counters = counters;
        self.last_log_lines = log_lines;
        self.rows.push(row);
        Ok(())
    }

    /// Lines the server has logged (warnings and errors: it runs at
    /// `--log-level warn`).
    fn server_log_lines(&self) -> u64 {
        std::fs::read(&self.server_log)
            .map(|log| log.iter().filter(|byte| **byte == b'\n').count() as u64)
            .unwrap_or(0)
    }

    fn server_log_head(&self, lines: usize) -> Vec<String> {
        std::fs::read_to_string(&self.server_log)
            .unwrap_or_default()
            .lines()
            .take(lines)
            .map(str::to_owned)
            .collect()
    }
}

/// Whether a series stayed flat after the warm-up: the median of the last
/// third of the samples against the median of the first third.
fn flatness(rows: &[Value], warmup_s: f64, tolerance: f64, value: &dyn Fn(&Value) -> f64) -> Value {
    let after: Vec<f64> = rows
        .iter()
        .filter(|row| row["t_s"].as_f64().unwrap_or(0.0) >= warmup_s)
        .map(value)
        .collect();
    let third = after.len() / 3;
    if third == 0 {
        return json!({"flat": false, "why": format!("{} samples after the warm-up; need at least 3", after.len())});
    }
    let first = median(&after[..third]);
    let last = median(&after[after.len() - third..]);
    let change = if first > 0.0 {
        last / first - 1.0
    } else {
        f64::NAN
    };
    json!({
        "flat": change.abs() <= tolerance,
        "first_third": first,
        "last_third": last,
        "change": change,
        "min": after.iter().copied().fold(f64::INFINITY, f64::min),
        "max": after.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "samples": after.len(),
    })
}

/// One sample window's publish latencies and the slowest fdatasync of the
/// disk probe in it.
struct Window {
    t_s: f64,
    publish: Histogram<u64>,
    disk_sync_max_us: u64,
    /// CPU the hypervisor took from the machine (steal), cores.
    steal_cores: f64,
}

/// When a window measures the machine rather than the server: the disk
/// probe waited `disk_us` or more for an fdatasync, or the hypervisor took
/// `steal_cores` or more of the CPU (`steal` in `/proc/stat`).
#[derive(Debug, Clone, Copy)]
struct Stalls {
    disk_us: u64,
    steal_cores: f64,
}

impl Stalls {
    fn of(self, window: &Window) -> bool {
        window.disk_sync_max_us >= self.disk_us || window.steal_cores >= self.steal_cores
    }
}

/// Whether a latency's p99 stayed flat after the warm-up: the p99 of every
/// latency recorded in the last third of the sample windows against the p99
/// of the first third's. A window's own p99 is too noisy a unit: one disk
/// stall of 100–300 ms (an fdatasync that waits behind the device's
/// queue) sets the p99 of the 10 s around it, so the windows' p99s are
/// bimodal and the median of a third moves with how many stalls it caught.
/// Over a third of the run (about 10 minutes and 1.7 M publishes in a
/// 30-minute soak) stalls count by how long they last, and a p99 that
/// really grows still shows.
///
/// With `stalls`, the windows in which the disk probe waited that long
/// for an fdatasync or the hypervisor took that much CPU (steal), and the
/// window after each (where the backlog drains), are left out of both
/// thirds: a stall of the disk or of the host is not the server's. The
/// thirds are cut by time first, so leaving windows out does not move
/// them; if either third keeps less than half of its windows, the machine
/// was too unsteady to judge, and the p99 does not count as flat.
fn flatness_over_thirds(
    windows: &[Window],
    warmup_s: f64,
    tolerance: f64,
    quantile: f64,
    stalls: Option<Stalls>,
) -> Value {
    let stalled: Vec<bool> = windows
        .iter()
        .enumerate()
        .map(|(index, window)| {
            let stall = |window: &Window| stalls.is_some_and(|stalls| stalls.of(window));
            stall(window)
                || index
                    .checked_sub(1)
                    .is_some_and(|before| stall(&windows[before]))
        })
        .collect();
    let after: Vec<(&Window, bool)> = windows
        .iter()
        .zip(stalled)
        .filter(|(window, _)| window.t_s >= warmup_s)
        .collect();
    let third = after.len() / 3;
    if third == 0 {
        return json!({"flat": false, "why": format!("{} samples after the warm-up; need at least 3", after.len())});
    }
    let merged = |part: &[(&Window, bool)]| {
        let mut all = part[0].0.publish.clone();
        all.reset();
        let mut kept = 0usize;
        for (window, stalled) in part {
            if !stalled {
                // Same bounds and precision (one constructor): cannot fail.
                let _ = all.add(&window.publish);
                kept += 1;
            }
        }
        (all, kept)
    };
    let ((first, first_kept), (last, last_kept)) = (
        merged(&after[..third]),
        merged(&after[after.len() - third..]),
    );
    let (first_q, last_q) = (
        first.value_at_quantile(quantile) as f64,
        last.value_at_quantile(quantile) as f64,
    );
    let change = if first_q > 0.0 {
        last_q / first_q - 1.0
    } else {
        f64::NAN
    };
    let steady = first_kept * 2 >= third && last_kept * 2 >= third;
    let mut judged = json!({
        "flat": steady && change.abs() <= tolerance,
        "first_third": first_q,
        "last_third": last_q,
        "change": change,
        "first_third_count": first.len(),
        "last_third_count": last.len(),
        "samples": after.len(),
    });
    if let Some(stalls) = stalls {
        judged["disk_stall_us"] = json!(stalls.disk_us);
        judged["steal_limit_cores"] = json!(stalls.steal_cores);
        judged["windows_per_third"] = json!(third);
        judged["windows_left_out"] = json!({
            "first_third": third - first_kept,
            "last_third": third - last_kept,
        });
        if !steady {
            judged["why"] = json!(
                "the disk or the host stalled in more than half of a third's windows: not judged"
            );
        }
    }
    judged
}

fn verdict(
    rows: &[Value],
    publish_windows: &[Window],
    args: &SoakArgs,
    drained: bool,
    errors: u64,
    log_lines: u64,
) -> Value {
    let warmup_s = args.duration.as_secs_f64() * args.warmup_fraction;
    let tolerance = args.tolerance;
    let rss = flatness(rows, warmup_s, tolerance, &|row| {
        row["rss_mb"].as_f64().unwrap_or(0.0)
    });
    let p99 = |op: &'static str| {
        move |row: &Value| row["latency_us"][op]["p99_us"].as_f64().unwrap_or(0.0)
    };
    let stalls = Stalls {
        disk_us: args.disk_stall_ms * 1000,
        steal_cores: args.steal_limit,
    };
    let publish_p99 =
        flatness_over_thirds(publish_windows, warmup_s, tolerance, 0.99, Some(stalls));
    let mut reasons = Vec::new();
    if rss["flat"] != json!(true) {
        reasons.push("RSS not flat".to_owned());
    }
    if publish_p99["flat"] != json!(true) {
        reasons.push("publish p99 not flat".to_owned());
    }
    if errors > 0 {
        reasons.push(format!("{errors} errors"));
    }
    if log_lines > 0 {
        reasons.push(format!("{log_lines} server log lines (warnings or errors)"));
    }
    if !drained {
        reasons.push("the groups did not drain within 60 s".to_owned());
    }
    // For the record, not the verdict.
    let informative: BTreeMap<&str, Value> = [
        (
            "publish_p99_with_disk_stalls",
            flatness_over_thirds(publish_windows, warmup_s, tolerance, 0.99, None),
        ),
        (
            "publish_p99_window_median",
            flatness(rows, warmup_s, tolerance, &p99("publish")),
        ),
        (
            "open_fds",
            flatness(rows, warmup_s, tolerance, &|row| {
                row["open_fds"].as_f64().unwrap_or(0.0)
            }),
        ),
        (
            "threads",
            flatness(rows, warmup_s, tolerance, &|row| {
                row["threads"].as_f64().unwrap_or(0.0)
            }),
        ),
        (
            "queue_e2e_p99",
            flatness(rows, warmup_s, tolerance, &p99("queue_e2e")),
        ),
        (
            "keyed_e2e_p99",
            flatness(rows, warmup_s, tolerance, &p99("keyed_e2e")),
        ),
        (
            "sse_e2e_p99",
            flatness(rows, warmup_s, tolerance, &p99("sse_e2e")),
        ),
        (
            "append_p99",
            flatness(rows, warmup_s, tolerance, &p99("append")),
        ),
        ("job_p99", flatness(rows, warmup_s, tolerance, &p99("job"))),
    ]
    .into_iter()
    .collect();
    json!({
        "pass": reasons.is_empty(),
        "reasons": reasons,
        "method": format!(
            "samples from {warmup_s:.0} s on (after the first {:.0}% of the run); flat = within ±{:.0}% of the first third in the last third: RSS by the median of the samples, publish p99 over every publish of the third but in windows where the disk probe's fdatasync took {} ms or more or the hypervisor took {} cores or more (steal), and the window after each",
            args.warmup_fraction * 100.0, tolerance * 100.0, args.disk_stall_ms, args.steal_limit
        ),
        "rss": rss,
        "publish_p99": publish_p99,
        "errors": errors,
        "server_log_lines": log_lines,
        "drained": drained,
        "also": informative,
    })
}

fn describe_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds >= 60.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{seconds:.0} s")
    }
}

fn print_summary(summary: &Value) {
    let verdict = &summary["verdict"];
    let flat = |what: &str, unit: &str| {
        let v = &verdict[what];
        format!(
            "{what}: {} (first third {:.1} {unit}, last third {:.1} {unit}, change {:+.1}%)",
            if v["flat"] == json!(true) {
                "flat"
            } else {
                "NOT FLAT"
            },
            v["first_third"].as_f64().unwrap_or(f64::NAN),
            v["last_third"].as_f64().unwrap_or(f64::NAN),
            v["change"].as_f64().unwrap_or(f64::NAN) * 100.0
        )
    };
    println!();
    println!(
        "soak verdict: {}",
        if verdict["pass"] == json!(true) {
            "PASS"
        } else {
            "FAIL"
        }
    );
    println!("  {}", verdict["method"].as_str().unwrap_or(""));
    println!("  {}", flat("rss", "MB"));
    println!("  {}", flat("publish_p99", "µs"));
    println!(
        "    windows left out for disk stalls: {} (first third), {} (last third) of {} each; with them: {:+.1}%",
        verdict["publish_p99"]["windows_left_out"]["first_third"],
        verdict["publish_p99"]["windows_left_out"]["last_third"],
        verdict["publish_p99"]["windows_per_third"],
        verdict["also"]["publish_p99_with_disk_stalls"]["change"]
            .as_f64()
            .unwrap_or(f64::NAN)
            * 100.0
    );
    println!(
        "  errors {}, server log lines {}, drained {}",
        verdict["errors"], verdict["server_log_lines"], verdict["drained"]
    );
    println!("  counters: {}", summary["counters"]);
    println!("  groups at the end: {}", summary["groups_at_end"]);
    if let Some(errors) = summary["errors"].as_array().filter(|e| !e.is_empty()) {
        println!("  errors by kind:");
        for error in errors.iter().take(20) {
            println!(
                "    {:>6} × {}: {}",
                error["count"], error["what"], error["message"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(values: &[f64]) -> Vec<Value> {
        values
            .iter()
            .enumerate()
            .map(|(index, value)| json!({"t_s": (index as f64 + 1.0) * 10.0, "rss_mb": value}))
            .collect()
    }

    fn rss(row: &Value) -> f64 {
        row["rss_mb"].as_f64().unwrap_or(0.0)
    }

    #[test]
    fn given_durations_with_units_when_parsed_should_give_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn given_a_series_that_levels_off_after_the_warmup_when_judged_should_be_flat() {
        // Warm-up (the first 20 s) grows; after it the level moves 5%.
        let series = rows(&[10.0, 50.0, 100.0, 101.0, 99.0, 102.0, 104.0, 105.0, 103.0]);
        let judged = flatness(&series, 30.0, 0.10, &rss);
        assert_eq!(judged["flat"], json!(true), "{judged}");
        assert_eq!(judged["samples"], json!(7));
    }

    #[test]
    fn given_a_series_that_keeps_growing_when_judged_should_not_be_flat() {
        let series = rows(&[100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0]);
        let judged = flatness(&series, 0.0, 0.10, &rss);
        assert_eq!(judged["flat"], json!(false), "{judged}");
        assert!(
            judged["change"]
                .as_f64()
                .is_some_and(|change| change > 0.10)
        );
    }

    /// Windows of 29,000 publishes of 5 ms; a stalled one adds `waiting`
    /// publishes of 200 ms (400: 1.4% of the window), and the disk probe
    /// saw the stall when `probe_saw_it`.
    const DISK_ONLY: Stalls = Stalls {
        disk_us: 100_000,
        steal_cores: f64::INFINITY,
    };

    fn windows(stalls: &[bool], probe_saw_it: bool) -> Vec<Window> {
        windows_waiting(stalls, probe_saw_it, 400)
    }

    fn windows_waiting(stalls: &[bool], probe_saw_it: bool, waiting: u64) -> Vec<Window> {
        stalls
            .iter()
            .enumerate()
            .map(|(index, stall)| {
                let mut publish = crate::workloads::histogram().unwrap();
                publish.record_n(5_000, 29_000).unwrap();
                if *stall {
                    publish.record_n(200_000, waiting).unwrap();
                }
                Window {
                    t_s: (index as f64 + 1.0) * 10.0,
                    publish,
                    disk_sync_max_us: if *stall && probe_saw_it { 180_000 } else { 900 },
                    steal_cores: 0.0,
                }
            })
            .collect()
    }

    #[test]
    fn given_stalls_spread_unevenly_when_p99_judged_over_thirds_should_be_flat() {
        // Each window's p99 is either 5 ms or 200 ms; the first third has
        // one stalled window in four, the last two in four: the median of
        // the windows' p99s goes from 5 to 102 ms, the p99 over each third
        // stays at 5 ms.
        let series = windows(
            &[
                false, true, false, false, true, false, true, false, true, false, false, true,
            ],
            false,
        );
        let judged = flatness_over_thirds(&series, 0.0, 0.10, 0.99, None);
        assert_eq!(judged["flat"], json!(true), "{judged}");
    }

    #[test]
    fn given_a_p99_that_grows_when_judged_over_thirds_should_not_be_flat() {
        let mut series = windows(&[false; 9], false);
        for window in &mut series[6..] {
            window.publish.record_n(40_000, 2_000).unwrap();
        }
        let judged = flatness_over_thirds(&series, 0.0, 0.10, 0.99, Some(DISK_ONLY));
        assert_eq!(judged["flat"], json!(false), "{judged}");
    }

    #[test]
    fn given_disk_stalls_only_in_the_last_third_when_the_probe_saw_them_should_leave_them_out() {
        // Two long stalls in the last third's eight windows (1,500
        // publishes wait in each): counted, they push its p99 to 200 ms.
        let mut stalls = [false; 24];
        stalls[17] = true;
        stalls[21] = true;
        let series = windows_waiting(&stalls, true, 1_500);
        let counted = flatness_over_thirds(&series, 0.0, 0.10, 0.99, None);
        assert_eq!(counted["flat"], json!(false), "{counted}");
        let judged = flatness_over_thirds(&series, 0.0, 0.10, 0.99, Some(DISK_ONLY));
        assert_eq!(judged["flat"], json!(true), "{judged}");
        // The stalled windows and the one after each.
        assert_eq!(
            judged["windows_left_out"]["last_third"],
            json!(4),
            "{judged}"
        );
    }

    #[test]
    fn given_publish_stalls_the_probe_did_not_see_when_judged_should_count_them() {
        // The server stalled, the disk did not: nothing is left out.
        let stalls = [
            false, false, false, false, false, false, false, false, true, false, false, true,
        ];
        let series = windows_waiting(&stalls, false, 1_500);
        let judged = flatness_over_thirds(&series, 0.0, 0.10, 0.99, Some(DISK_ONLY));
        assert_eq!(judged["flat"], json!(false), "{judged}");
        assert_eq!(
            judged["windows_left_out"]["last_third"],
            json!(0),
            "{judged}"
        );
    }

    /// The hypervisor took the CPU (steal) in the windows the server
    /// stalled in; the disk was fine: those windows are the host's.
    #[test]
    fn given_publish_stalls_while_the_host_took_the_cpu_when_judged_should_leave_them_out() {
        let mut stalls = [false; 15];
        stalls[12] = true;
        let mut series = windows_waiting(&stalls, false, 3_000);
        for (window, stalled) in series.iter_mut().zip(stalls) {
            window.steal_cores = if stalled { 0.6 } else { 0.02 };
        }
        let limits = Stalls {
            disk_us: 100_000,
            steal_cores: 0.1,
        };
        let judged = flatness_over_thirds(&series, 0.0, 0.10, 0.99, Some(limits));
        assert_eq!(judged["flat"], json!(true), "{judged}");
        assert_eq!(
            judged["windows_left_out"]["last_third"],
            json!(2),
            "{judged}"
        );
        let disk_only = flatness_over_thirds(&series, 0.0, 0.10, 0.99, Some(DISK_ONLY));
        assert_eq!(disk_only["flat"], json!(false), "{disk_only}");
    }

    #[test]
    fn given_a_disk_stalling_in_most_windows_when_judged_should_not_count_as_flat() {
        // Stalls in windows 1 and 3 leave 1, 2 and 3 of the first third out.
        let stalls = [
            false, true, false, true, false, false, false, false, false, false, false, false,
        ];
        let judged =
            flatness_over_thirds(&windows(&stalls, true), 0.0, 0.10, 0.99, Some(DISK_ONLY));
        assert_eq!(judged["flat"], json!(false), "{judged}");
        assert!(judged["why"].as_str().is_some(), "{judged}");
    }

    #[test]
    fn given_too_few_samples_after_the_warmup_when_judged_should_not_be_flat() {
        let judged = flatness(&rows(&[1.0, 1.0, 1.0]), 25.0, 0.10, &rss);
        assert_eq!(judged["flat"], json!(false), "{judged}");
    }
}
