//! `herald-bench`: the same workload against Herald and the system a user
//! would pick instead (NATS JetStream, PostgreSQL), on the same machine in
//! the same run, alternating peer and Herald (A B A B …), with the noise of
//! every run recorded. The method is `../shared/design/benchmarks.md`.
//!
//! ```text
//! cargo build --release --bin herald --bin herald-bench
//! target/release/herald-bench --quick            # ~1.5 min
//! target/release/herald-bench --out bench-out    # W1–W6, 5 pairs, ~26 min
//! ```
//!
//! Each run gets a fresh server on a fresh temp dir. Per run it writes
//! `<out>/<point>-<pair>-<system>.json`; at the end it prints one table row
//! per point (median, min–max, ratio per pair) and writes `summary.json`,
//! `summary.md` (the tables BENCHMARKS.md embeds), `throughput.svg` and
//! `latency.svg` (`--replot <dir>` redraws the last three).
//!
//! `herald-bench soak` is the other mode: one server under a mixed workload
//! for a set duration, its footprint and latencies sampled until the end
//! (`soak/mod.rs`). `herald-bench webhooks` is W7, webhook delivery
//! against its receiver's ceiling (`webhooks.rs`); `herald-bench timers`
//! W8's timers, workflow instances waiting at once (`timers.rs`);
//! `herald-bench workflows` W8 side by side with Restate (`workflows.rs`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod charts;
mod http;
mod nodes;
mod noise;
mod peers;
mod report;
mod restart;
mod soak;
mod timers;
mod webhooks;
mod workflows;
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::peers::{Binaries, Herald, Level, Nats, Postgres};
use crate::workloads::{E2e, Run, Timing, W6};

#[derive(Debug, Parser)]
#[command(
    about = "Herald side by side with NATS JetStream and PostgreSQL; or a soak of Herald alone",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// A mixed workload against one server for a set duration at about half
    /// its measured maximum publish rate, sampling RSS, open files, threads
    /// and p99 every 10 s, with a verdict on flatness.
    Soak(Box<soak::SoakArgs>),
    /// W7: webhook deliveries per second against the receiver's own
    /// ceiling, beside a failing endpoint, and publish → receipt latency.
    Webhooks(webhooks::WebhookArgs),
    /// W7's ceiling client in a process of its own (run by `webhooks`).
    #[command(hide = true)]
    WebhookClient(webhooks::ClientArgs),
    /// W8's timers: many workflow instances waiting on durable timers at
    /// once; the server's RSS while they wait, and how late they fire.
    Timers(timers::TimerArgs),
    /// W8: a three-step durable workflow on Herald and on Restate, side by
    /// side: instances per second, start-to-completion p50/p99.
    Workflows(workflows::WorkflowArgs),
    /// The gateway: REST publish of one event and of 100 per request
    /// against a plain axum handler, gRPC unary publish against tonic's
    /// service storing nothing, and SSE fan-out to many subscribers.
    Http(http::HttpArgs),
    /// W9's recovery: time until serving again, and RSS then, after
    /// `kill -9` and after a clean stop, at growing log sizes.
    Restart(restart::RestartArgs),
    /// Three Herald nodes against one on one NATS server: publish and a
    /// queue-group drain with the clients spread over the nodes.
    Nodes(nodes::NodesArgs),
}

/// The side-by-side comparison (no subcommand).
#[derive(Debug, clap::Args)]
struct Args {
    /// One pair per point, fewer points, short runs (the whole pass in
    /// under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Peer/Herald pairs per point.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Measured seconds per run (after the warm-up). The default keeps the
    /// full suite under 30 minutes on 2 cores (BENCHMARKS.md).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Warm-up seconds per run (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Workloads, in order (w1, w2, w3, w4, w5, w6).
    #[arg(long, value_delimiter = ',', default_value = "w1,w3,w5,w4,w6,w2")]
    workloads: Vec<String>,
    /// Only these points of the workloads (ids as in the results, e.g.
    /// `w6-D2-128B-1w-1e`): to profile one point at a time.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Acks in flight for W1, on both sides (events).
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Herald Publisher max batch for W1 (window / batch batches in flight).
    #[arg(long, default_value_t = 250)]
    herald_batch: usize,
    /// Backlog for W4 (events of 128 B).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Measured seconds per W3 run: its result is a tail percentile, which
    /// the method wants from 30–60 s per point (6 s × 5 pairs = 30 s per
    /// side).
    #[arg(long, default_value_t = 6.0)]
    w3_seconds: f64,
    /// W3 offered rate at D1 (sends per second, one in flight).
    #[arg(long, default_value_t = 2000)]
    w3_rate_d1: u64,
    /// W3 offered rate at D2 (sends per second, one in flight).
    #[arg(long, default_value_t = 400)]
    w3_rate_d2: u64,
    /// Output dir for the JSON files.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// The herald binary (default: $BENCH_HERALD_BIN, next to this binary,
    /// target/release/herald).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// nats-server 2.15 (default: $BENCH_NATS_BIN, pip's scripts dir, PATH).
    #[arg(long)]
    nats_bin: Option<PathBuf>,
    /// PostgreSQL's bin dir (default: newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// Run Herald with authentication on: this bootstrap key (at least 32
    /// characters) is configured and sent by every client, so the figures
    /// include the cost of checking credentials and permissions.
    #[arg(long, value_name = "KEY")]
    auth_key: Option<String>,
    /// Where servers keep their data (default: the system temp dir).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Run Herald over TLS: a CA and a server certificate are made for the
    /// run, `herald serve` gets `[tls]`, the clients connect with https://
    /// trusting that CA.
    #[arg(long)]
    tls: bool,
    /// The backend Herald runs on: `embedded` (its own storage), or `nats`
    /// (a `nats-server -js` of its own per run, at the point's durability
    /// level, its CPU counted as Herald's): Herald-on-NATS against raw
    /// NATS shows the overhead Herald adds.
    #[arg(long, value_parser = ["embedded", "nats"], default_value = "embedded")]
    backend: String,
    /// Only redraw the charts and `summary.md` of an earlier run from its
    /// `summary.json`.
    #[arg(long)]
    replot: Option<PathBuf>,
}

/// One point of a workload: compared across `pairs` runs of each system.
#[derive(Debug, Clone)]
struct Point {
    workload: &'static str,
    level: Level,
    size: usize,
    peer: &'static str,
    /// What the headline figure is.
    unit: &'static str,
    /// Concurrent producers (W2) or writers (W6), 0 when not applicable.
    producers: u64,
    /// Partitions (W2; NATS: streams).
    partitions: u32,
    /// Consumers (W4), 0 when not applicable.
    consumers: u64,
    /// Offered events/s (W3, W5), 0 when not applicable.
    rate: u64,
    /// Events per append (W6), 0 when not applicable.
    events: u64,
    /// Zipf stream choice (W6).
    zipf: bool,
}

impl Point {
    fn new(workload: &'static str, level: Level, size: usize) -> Self {
        let (peer, unit) = match workload {
            "w6" => ("postgres", "appends/s"),
            "w3" | "w5" => ("nats", "p99 µs"),
            _ => ("nats", "events/s"),
        };
        Self {
            workload,
            level,
            size,
            peer,
            unit,
            producers: 0,
            partitions: 1,
            consumers: 0,
            rate: 0,
            events: 0,
            zipf: false,
        }
    }

    fn id(&self) -> String {
        let mut id = format!("{}-{}-{}B", self.workload, self.level.name(), self.size);
        match self.workload {
            "w2" => id.push_str(&format!("-{}p", self.producers)),
            "w4" => id.push_str(&format!("-{}c", self.consumers)),
            "w5" => id.push_str(&format!("-{}k", self.rate / 1000)),
            "w6" => id.push_str(&format!("-{}w-{}e", self.producers, self.events)),
            _ => {}
        }
        if self.partitions > 1 {
            id.push_str(&format!("-{}part", self.partitions));
        }
        if self.zipf {
            id.push_str("-zipf");
        }
        id
    }

    /// Whether the headline is a latency (p99, lower is better).
    fn latency(&self) -> bool {
        matches!(self.workload, "w3" | "w5")
    }

    fn w6(&self) -> W6 {
        W6 {
            writers: self.producers,
            streams: 10_000,
            events: self.events,
            zipf: self.zipf,
        }
    }

    fn params(&self) -> Value {
        json!({"producers": self.producers, "partitions": self.partitions,
               "consumers": self.consumers, "offered_per_s": self.rate,
               "events_per_append": self.events, "zipf": self.zipf})
    }
}

/// The points of the selected workloads, in order.
fn points(args: &Args) -> Result<Vec<Point>> {
    let quick = args.quick;
    let mut points = Vec::new();
    for workload in &args.workloads {
        match workload.as_str() {
            "w1" => {
                let sizes: &[usize] = if quick { &[128] } else { &[128, 1024, 4096] };
                for level in [Level::D1, Level::D2] {
                    for &size in sizes {
                        points.push(Point::new("w1", level, size));
                    }
                }
            }
            "w2" => {
                let shapes: &[(u64, u32)] = if quick {
                    &[(64, 1), (64, 4)]
                } else {
                    &[(4, 1), (16, 1), (64, 1), (64, 4)]
                };
                for &(producers, partitions) in shapes {
                    points.push(Point {
                        producers,
                        partitions,
                        ..Point::new("w2", Level::D2, 128)
                    });
                }
                // The same 64 producers at D1: the aim wants D2 at least
                // half of it.
                points.push(Point {
                    producers: 64,
                    partitions: 1,
                    ..Point::new("w2", Level::D1, 128)
                });
            }
            "w3" => {
                let sizes: &[usize] = if quick { &[128] } else { &[128, 1024] };
                for (level, rate) in [(Level::D1, args.w3_rate_d1), (Level::D2, args.w3_rate_d2)] {
                    for &size in sizes {
                        points.push(Point {
                            rate,
                            ..Point::new("w3", level, size)
                        });
                    }
                }
            }
            "w4" => {
                for consumers in [1, 2, 4] {
                    points.push(Point {
                        consumers,
                        ..Point::new("w4", Level::D1, 128)
                    });
                }
            }
            "w5" => {
                let shapes: &[(Level, &[u64])] = if quick {
                    &[(Level::D1, &[10_000, 50_000])]
                } else {
                    &[
                        (Level::D1, &[10_000, 25_000, 50_000]),
                        (Level::D2, &[10_000, 25_000, 50_000]),
                    ]
                };
                for &(level, rates) in shapes {
                    for &rate in rates {
                        points.push(Point {
                            rate,
                            ..Point::new("w5", level, 128)
                        });
                    }
                }
            }
            "w6" => {
                let shapes: &[(u64, u64, bool)] = if quick {
                    &[(32, 1, false), (32, 10, false), (32, 1, true)]
                } else {
                    &[
                        (1, 1, false),
                        (1, 10, false),
                        (32, 1, false),
                        (32, 10, false),
                        (32, 1, true),
                    ]
                };
                // Herald on NATS is set against raw NATS doing the same
                // appends; the embedded backend against PostgreSQL.
                let peer = if args.backend == "nats" {
                    "nats"
                } else {
                    "postgres"
                };
                for &(producers, events, zipf) in shapes {
                    points.push(Point {
                        producers,
                        events,
                        zipf,
                        peer,
                        ..Point::new("w6", Level::D2, 128)
                    });
                }
            }
            other => anyhow::bail!("unknown workload {other} (w1, w2, w3, w4, w5, w6)"),
        }
    }
    if !args.only.is_empty() {
        points.retain(|point| args.only.contains(&point.id()));
        anyhow::ensure!(
            !points.is_empty(),
            "--only {} names no point of --workloads {}",
            args.only.join(","),
            args.workloads.join(",")
        );
    }
    Ok(points)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Soak(soak)) => return soak::run(*soak).await,
        Some(Command::Webhooks(w7)) => return webhooks::run(w7).await,
        Some(Command::WebhookClient(client)) => return webhooks::client(client).await,
        Some(Command::Timers(w8)) => return timers::run(w8).await,
        Some(Command::Workflows(w8)) => return workflows::run(w8).await,
        Some(Command::Nodes(nodes)) => return nodes::run(nodes).await,
        Some(Command::Restart(w9)) => return restart::run(w9).await,
        Some(Command::Http(points)) => return http::run(points).await,
        None => {}
    }
    let mut args = cli.args;
    if let Some(dir) = &args.replot {
        let summary: Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json"))?)?;
        let points = summary["points"].as_array().cloned().unwrap_or_default();
        charts::write(dir, &points)?;
        std::fs::write(dir.join("summary.md"), report::markdown(&summary))?;
        eprintln!("charts and summary.md: {}", dir.display());
        return Ok(());
    }
    let started = Instant::now();
    if args.quick {
        args.pairs = 1;
        args.seconds = args.seconds.min(2.0);
        args.w3_seconds = args.w3_seconds.min(2.0);
        args.warmup = args.warmup.min(1.0);
        args.backlog = args.backlog.min(100_000);
    }
    if let Some(key) = &args.auth_key {
        let _ = peers::AUTH_KEY.set(key.clone());
    }
    let bins = Binaries {
        herald: args.herald_bin.clone().unwrap_or_else(peers::find_herald),
        nats: args.nats_bin.clone().unwrap_or_else(peers::find_nats),
        postgres: args.pg_bin.clone().unwrap_or_else(peers::find_postgres),
        tmp: args.tmp.clone().unwrap_or_else(std::env::temp_dir),
    };
    if args.backend == "nats" {
        let _ = peers::HERALD_ON_NATS.set(bins.nats.clone());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let probe_seconds = if args.quick { 1.0 } else { 3.0 };
    let fdatasync = noise::fdatasync_probe(&bins.tmp, probe_seconds, None)?;
    let paced = noise::fdatasync_probe(&bins.tmp, probe_seconds, Some(args.w3_rate_d2))?;
    let machine = json!({
        "fdatasync_at_start": fdatasync,
        "fdatasync_paced_at_start": paced,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "load_average_at_start": noise::load_average(),
        "herald": bins.herald.display().to_string(),
        "nats_server": peers::version(&bins.nats),
        "postgres": peers::version(&bins.postgres.join("postgres")),
    });
    eprintln!("herald-bench: {machine}");

    let points = points(&args)?;
    let total = points.len() * args.pairs * 2;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} runs, ETA {eta_precise} | {msg}",
        )?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    // A hidden bar (stderr not a terminal) prints nothing: say it plainly.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut done = 0;
    let mut rows = Vec::new();
    for point in &points {
        let mut peer_runs = Vec::new();
        let mut herald_runs = Vec::new();
        for pair in 1..=args.pairs {
            for system in [point.peer, "herald"] {
                done += 1;
                let what = format!("{} {system:<8} pair {pair}/{}", point.id(), args.pairs);
                bar.set_message(what.clone());
                let timing = match point.workload {
                    "w3" => Timing {
                        measure: Duration::from_secs_f64(args.w3_seconds),
                        ..timing
                    },
                    _ => timing,
                };
                let run = run_one(&args, &bins, point, system, timing)
                    .await
                    .with_context(|| format!("{} on {system}", point.id()))?;
                say(format!(
                    "[{done:>3}/{total}] {what} {}",
                    describe(point, &run)
                ));
                bar.inc(1);
                let record = json!({
                    "point": point.id(),
                    "workload": point.workload,
                    "durability": point.level.name(),
                    "size": point.size,
                    "params": point.params(),
                    "system": system,
                    "pair": pair,
                    "throughput": run.throughput,
                    "throughput_unit": match point.workload {
                        "w6" => "appends/s",
                        "w5" => "delivered events/s",
                        _ => "events/s",
                    },
                    "latency": run.latency.map(workloads::Latency::to_json),
                    "noise": run.noise.to_json(),
                    "extra": run.extra,
                });
                let file = args
                    .out
                    .join(format!("{}-{pair}-{system}.json", point.id()));
                std::fs::write(&file, serde_json::to_string_pretty(&record)?)?;
                if system == "herald" {
                    herald_runs.push(run);
                } else {
                    peer_runs.push(run);
                }
            }
        }
        rows.push(summarise(point, &peer_runs, &herald_runs));
    }

    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    print_table(&rows, &args);
    println!(
        "total elapsed: {:.0} s ({:.1} min) for {total} runs",
        elapsed,
        elapsed / 60.0
    );
    let fdatasync_end = noise::fdatasync_probe(&bins.tmp, probe_seconds, None)?;
    println!(
        "one 128 B pwrite + fdatasync on this disk: p50 {} µs at the start, {} µs at the end; paced at the W3 D2 rate ({}/s): p50 {} µs (the W3 D2 aim: Herald's p50 within 1.5× of one fdatasync)",
        machine["fdatasync_at_start"]["p50_us"],
        fdatasync_end["p50_us"],
        args.w3_rate_d2,
        machine["fdatasync_paced_at_start"]["p50_us"]
    );
    let summary = json!({"machine": machine, "args": format!("{args:?}"), "points": rows,
                         "runs": total, "elapsed_seconds": elapsed,
                         "fdatasync_at_end": fdatasync_end,
                         "load_average_at_end": noise::load_average()});
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    charts::write(&args.out, &rows)?;
    std::fs::write(args.out.join("summary.md"), report::markdown(&summary))?;
    eprintln!("JSON, charts and summary.md: {}", args.out.display());
    Ok(())
}

async fn run_one(
    args: &Args,
    bins: &Binaries,
    point: &Point,
    system: &str,
    timing: Timing,
) -> Result<Run> {
    let (size, level) = (point.size, point.level);
    let e2e = E2e {
        rate: point.rate,
        window: args.window,
        size,
    };
    match (point.workload, system) {
        ("w6", "postgres") => {
            let pg = tokio::task::block_in_place(|| Postgres::start(bins))?;
            workloads::w6_postgres(&pg, point.w6(), size, timing).await
        }
        (workload, "nats") => {
            let nats = Nats::start(bins, level)?;
            let (url, pid) = (nats.url.clone(), nats.pid());
            match workload {
                "w1" => workloads::w1_nats(&url, pid, size, args.window, timing).await,
                "w3" => {
                    let (url, rate) = (url.clone(), point.rate);
                    workloads::on_own_thread(move || async move {
                        workloads::w3_nats(&url, pid, size, rate, timing).await
                    })
                    .await
                }
                "w2" => {
                    let (producers, partitions) = (point.producers, point.partitions);
                    workloads::w2_nats(&url, pid, producers, partitions, size, timing).await
                }
                "w5" => workloads::w5_nats(&url, pid, e2e, timing).await,
                "w6" => workloads::w6_nats(&url, pid, point.w6(), size, timing).await,
                _ => workloads::w4_nats(&url, pid, args.backlog, point.consumers, size).await,
            }
        }
        (workload, _) => {
            let herald = Herald::start_at(bins, args.tls, level)?;
            let (endpoint, pid) = (herald.endpoint.clone(), herald.pid());
            match workload {
                "w1" => {
                    let (window, batch) = (args.window, args.herald_batch);
                    workloads::w1_herald(&endpoint, pid, level, size, window, batch, timing).await
                }
                "w3" => {
                    let (endpoint, rate) = (endpoint.clone(), point.rate);
                    workloads::on_own_thread(move || async move {
                        workloads::w3_herald(&endpoint, pid, level, size, rate, timing).await
                    })
                    .await
                }
                "w2" => {
                    let (producers, partitions) = (point.producers, point.partitions);
                    workloads::w2_herald(&endpoint, pid, level, producers, partitions, size, timing)
                        .await
                }
                "w4" => {
                    let (backlog, consumers) = (args.backlog, point.consumers);
                    workloads::w4_herald(&endpoint, pid, level, backlog, consumers, size).await
                }
                "w5" => workloads::w5_herald(&endpoint, pid, level, e2e, timing).await,
                _ => workloads::w6_herald(&endpoint, pid, point.w6(), size, timing).await,
            }
        }
    }
}

/// The headline figure of a run: throughput, or p99 for latency points.
fn headline(point: &Point, run: &Run) -> f64 {
    if point.latency() {
        run.latency.map_or(f64::NAN, |l| l.p99)
    } else {
        run.throughput
    }
}

fn describe(point: &Point, run: &Run) -> String {
    let n = &run.noise;
    let figure = match run.latency {
        Some(l) if point.latency() => format!(
            "p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs max {:.0} µs ({:.0}/s)",
            l.p50, l.p99, l.p999, l.max, run.throughput
        ),
        Some(l) => format!(
            "{:.0} {} p50 {:.0} µs p99 {:.0} µs",
            run.throughput, point.unit, l.p50, l.p99
        ),
        None => format!("{:.0} {}", run.throughput, point.unit),
    };
    let figure = match &run.extra["verification"]["ok"] {
        Value::Bool(true) => format!("{figure}, conflicts 0, events stored = acknowledged"),
        Value::Bool(false) => format!(
            "{figure}, VERIFICATION FAILED: {} conflicts, {}",
            run.extra["conflicts"], run.extra["verification"]
        ),
        _ => figure,
    };
    format!(
        "{figure} | cpu server {:.2}s client {:.2}s other {:.2} cores | flushes {} dev {:.0} MB srv {:.0} MB | load {:.2}",
        n.server_cpu,
        n.client_cpu,
        n.other_cores(),
        n.flushes,
        n.device_bytes_written as f64 / 1e6,
        n.server_bytes_written as f64 / 1e6,
        n.load_average
    )
}

fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn summarise(point: &Point, peer: &[Run], herald: &[Run]) -> Value {
    let figures = |runs: &[Run]| runs.iter().map(|r| headline(point, r)).collect::<Vec<_>>();
    let (p, h) = (figures(peer), figures(herald));
    // Herald ÷ peer, per pair (for latency: lower is better).
    let ratios: Vec<f64> = p.iter().zip(&h).map(|(p, h)| h / p).collect();
    let per_run =
        |runs: &[Run], f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let side = |runs: &[Run], figs: &[f64]| {
        let (lo, hi) = min_max(figs);
        let lat = |f: fn(&workloads::Latency) -> f64| {
            per_run(runs, &|r: &Run| r.latency.as_ref().map_or(f64::NAN, f))
        };
        json!({
            "median": median(figs), "min": lo, "max": hi, "runs": figs,
            "throughput_median": per_run(runs, &|r: &Run| r.throughput),
            "p50_us_median": lat(|l| l.p50),
            "p99_us_median": lat(|l| l.p99),
            "p999_us_median": lat(|l| l.p999),
            "max_us_median": lat(|l| l.max),
            "server_cpu_us_per_unit_median": per_run(runs, &|r: &Run| {
                r.noise.server_cpu * 1e6 / (r.throughput * r.noise.seconds).max(1.0)
            }),
            "client_cpu_cores_median": per_run(runs, &|r: &Run| r.noise.client_cpu / r.noise.seconds),
            "other_cores_max": runs.iter().map(|r| r.noise.other_cores()).fold(0.0, f64::max),
            "flushes_per_s_median": per_run(runs, &|r: &Run| r.noise.flushes as f64 / r.noise.seconds),
            "load_average_max": runs.iter().map(|r| r.noise.load_average).fold(0.0, f64::max),
        })
    };
    json!({
        "point": point.id(),
        "workload": point.workload,
        "durability": point.level.name(),
        "size": point.size,
        "params": point.params(),
        "headline": if point.latency() { "p99 latency" } else { "throughput" },
        "unit": point.unit,
        "peer": point.peer,
        "peer_figures": side(peer, &p),
        "herald_figures": side(herald, &h),
        "ratios": ratios,
        "ratio_median": median(&ratios),
    })
}

fn print_table(rows: &[Value], args: &Args) {
    println!();
    println!(
        "herald-bench: {} pair(s) per point, {} s measured (W3: {} s) after {} s warm-up, load average now {:.2}",
        args.pairs,
        args.seconds,
        args.w3_seconds,
        args.warmup,
        noise::load_average()
    );
    println!(
        "{:<24} {:<4} {:<10} {:<9} {:>10} {:>21} {:>10} {:>21} {:>8} {:>16} {:>12}",
        "point",
        "dur",
        "unit",
        "peer",
        "peer med",
        "peer min–max",
        "herald med",
        "herald min–max",
        "ratio",
        "ratio min–max",
        "other cores"
    );
    for row in rows {
        let num = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
        let (p, h) = (&row["peer_figures"], &row["herald_figures"]);
        let ratios: Vec<f64> = row["ratios"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let (rlo, rhi) = min_max(&ratios);
        let other = num(p, "other_cores_max").max(num(h, "other_cores_max"));
        println!(
            "{:<24} {:<4} {:<10} {:<9} {:>10.0} {:>21} {:>10.0} {:>21} {:>7.2}× {:>16} {:>12.2}",
            row["point"].as_str().unwrap_or(""),
            row["durability"].as_str().unwrap_or(""),
            row["unit"].as_str().unwrap_or(""),
            row["peer"].as_str().unwrap_or(""),
            num(p, "median"),
            format!("{:.0}–{:.0}", num(p, "min"), num(p, "max")),
            num(h, "median"),
            format!("{:.0}–{:.0}", num(h, "min"), num(h, "max")),
            num(row, "ratio_median"),
            format!("{rlo:.2}–{rhi:.2}"),
            other,
        );
        if !matches!(row["workload"].as_str(), Some("w1" | "w4")) {
            for (name, side) in [(row["peer"].as_str().unwrap_or(""), p), ("herald", h)] {
                println!(
                    "{:>24}   {name:<8} medians: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs, {:.0}/s",
                    "",
                    num(side, "p50_us_median"),
                    num(side, "p99_us_median"),
                    num(side, "p999_us_median"),
                    num(side, "max_us_median"),
                    num(side, "throughput_median"),
                );
            }
        }
    }
    println!(
        "ratio = herald ÷ peer per pair (throughput: higher is better for herald; p99: lower is better)"
    );
    println!(
        "W3/W5 latency from the scheduled send time (open loop); W5 = publish→delivery; W6 = D2, conflicts expected 0 (see extra.verification)"
    );
}
