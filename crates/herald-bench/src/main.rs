//! `herald-bench`: the same workload against Herald and the system a user
//! would pick instead (NATS JetStream, PostgreSQL), on the same machine in
//! the same run, alternating peer and Herald (A B A B …), with the noise of
//! every run recorded. The method is `../shared/design/benchmarks.md`.
//!
//! ```text
//! cargo build --release -p herald-server --bin herald -p herald-bench
//! target/release/herald-bench --quick
//! target/release/herald-bench --pairs 5 --seconds 10 --out bench-out
//! ```
//!
//! Each run gets a fresh server on a fresh temp dir. Per run it writes
//! `<out>/<point>-<pair>-<system>.json`; at the end it prints one table row
//! per point (median, min–max, ratio per pair) and writes `summary.json`,
//! `throughput.svg` and `latency.svg` (`--replot <dir>` redraws them).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod charts;
mod noise;
mod peers;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{Value, json};

use crate::peers::{Binaries, Herald, Level, Nats, Postgres};
use crate::workloads::{Run, Timing};

#[derive(Debug, Parser)]
#[command(about = "Herald side by side with NATS JetStream and PostgreSQL")]
struct Args {
    /// One pair per point, short runs (the whole pass in under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Peer/Herald pairs per point.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up seconds per run (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Workloads, in order (w1, w2, w3, w4, w6).
    #[arg(long, value_delimiter = ',', default_value = "w1,w3,w4,w6,w2")]
    workloads: Vec<String>,
    /// Acks in flight for W1, on both sides (events).
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Herald Publisher max batch for W1 (window / batch batches in flight).
    #[arg(long, default_value_t = 250)]
    herald_batch: usize,
    /// Backlog for W4 (events of 128 B).
    #[arg(long, default_value_t = 500_000)]
    backlog: u64,
    /// Writers for W6.
    #[arg(long, default_value_t = 32)]
    writers: u64,
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
    /// Where servers keep their data (default: the system temp dir).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Only redraw the charts of an earlier run from its `summary.json`.
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
    /// Concurrent producers (W2), 0 when not applicable.
    producers: u64,
}

impl Point {
    fn id(&self) -> String {
        let mut id = format!("{}-{}-{}B", self.workload, self.level.name(), self.size);
        if self.producers > 0 {
            id.push_str(&format!("-{}p", self.producers));
        }
        id
    }

    fn latency(&self) -> bool {
        self.workload == "w3"
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(dir) = &args.replot {
        let summary: Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json"))?)?;
        let points = summary["points"].as_array().cloned().unwrap_or_default();
        charts::write(dir, &points)?;
        eprintln!("charts: {}", dir.display());
        return Ok(());
    }
    if args.quick {
        args.pairs = 1;
        args.seconds = args.seconds.min(3.0);
        args.warmup = args.warmup.min(1.0);
        args.backlog = args.backlog.min(100_000);
    }
    let bins = Binaries {
        herald: args.herald_bin.clone().unwrap_or_else(peers::find_herald),
        nats: args.nats_bin.clone().unwrap_or_else(peers::find_nats),
        postgres: args.pg_bin.clone().unwrap_or_else(peers::find_postgres),
        tmp: args.tmp.clone().unwrap_or_else(std::env::temp_dir),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let machine = json!({
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "load_average_at_start": noise::load_average(),
        "herald": bins.herald.display().to_string(),
        "nats_server": peers::version(&bins.nats),
        "postgres": peers::version(&bins.postgres.join("postgres")),
    });
    eprintln!("herald-bench: {machine}");

    let mut points = Vec::new();
    for workload in &args.workloads {
        match workload.as_str() {
            "w1" => {
                for level in [Level::D1, Level::D2] {
                    for size in [128, 1024] {
                        points.push(Point {
                            workload: "w1",
                            level,
                            size,
                            peer: "nats",
                            unit: "events/s",
                            producers: 0,
                        });
                    }
                }
            }
            "w3" => {
                for level in [Level::D1, Level::D2] {
                    let sizes: &[usize] = if args.quick { &[128] } else { &[128, 1024] };
                    for &size in sizes {
                        points.push(Point {
                            workload: "w3",
                            level,
                            size,
                            peer: "nats",
                            unit: "p99 µs",
                            producers: 0,
                        });
                    }
                }
            }
            "w4" => points.push(Point {
                workload: "w4",
                level: Level::D1,
                size: 128,
                peer: "nats",
                unit: "events/s",
                producers: 0,
            }),
            "w6" => points.push(Point {
                workload: "w6",
                level: Level::D2,
                size: 128,
                peer: "postgres",
                unit: "appends/s",
                producers: 0,
            }),
            "w2" => {
                let counts: &[u64] = if args.quick { &[64] } else { &[4, 16, 64] };
                for &producers in counts {
                    points.push(Point {
                        workload: "w2",
                        level: Level::D2,
                        size: 128,
                        peer: "nats",
                        unit: "events/s",
                        producers,
                    });
                }
            }
            other => anyhow::bail!("unknown workload {other} (w1, w2, w3, w4, w6)"),
        }
    }

    let total = points.len() * args.pairs * 2;
    let mut done = 0;
    let mut rows = Vec::new();
    for point in &points {
        let mut peer_runs = Vec::new();
        let mut herald_runs = Vec::new();
        for pair in 1..=args.pairs {
            for system in [point.peer, "herald"] {
                done += 1;
                eprint!(
                    "[{done:>3}/{total}] {} {system:<8} pair {pair}/{} … ",
                    point.id(),
                    args.pairs
                );
                let run = run_one(&args, &bins, point, system, timing)
                    .await
                    .with_context(|| format!("{} on {system}", point.id()))?;
                eprintln!("{}", describe(point, &run));
                let record = json!({
                    "point": point.id(),
                    "workload": point.workload,
                    "durability": point.level.name(),
                    "size": point.size,
                    "system": system,
                    "pair": pair,
                    "throughput": run.throughput,
                    "throughput_unit": if point.workload == "w6" { "appends/s" } else { "events/s" },
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

    print_table(&rows, &args);
    let summary = json!({"machine": machine, "args": format!("{args:?}"), "points": rows,
                         "load_average_at_end": noise::load_average()});
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    charts::write(&args.out, &rows)?;
    eprintln!("JSON: {}", args.out.display());
    Ok(())
}

async fn run_one(
    args: &Args,
    bins: &Binaries,
    point: &Point,
    system: &str,
    timing: Timing,
) -> Result<Run> {
    let size = point.size;
    match (point.workload, system) {
        ("w6", "postgres") => {
            let pg = tokio::task::block_in_place(|| Postgres::start(bins))?;
            workloads::w6_postgres(&pg, args.writers, 10_000, size, timing).await
        }
        (workload, "nats") => {
            let nats = Nats::start(bins, point.level)?;
            let (url, pid) = (nats.url.clone(), nats.pid());
            match workload {
                "w1" => workloads::w1_nats(&url, pid, size, args.window, timing).await,
                "w3" => workloads::w3_nats(&url, pid, size, timing).await,
                "w2" => workloads::w2_nats(&url, pid, point.producers, size, timing).await,
                _ => workloads::w4_nats(&url, pid, args.backlog, size).await,
            }
        }
        (workload, _) => {
            let herald = Herald::start(bins)?;
            let (endpoint, pid) = (herald.endpoint.clone(), herald.pid());
            match workload {
                "w1" => {
                    workloads::w1_herald(
                        &endpoint,
                        pid,
                        point.level,
                        size,
                        args.window,
                        args.herald_batch,
                        timing,
                    )
                    .await
                }
                "w3" => workloads::w3_herald(&endpoint, pid, point.level, size, timing).await,
                "w2" => {
                    workloads::w2_herald(&endpoint, pid, point.level, point.producers, size, timing)
                        .await
                }
                "w4" => workloads::w4_herald(&endpoint, pid, point.level, args.backlog, size).await,
                _ => workloads::w6_herald(&endpoint, pid, args.writers, 10_000, size, timing).await,
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
        "herald-bench: {} pair(s) per point, {} s measured after {} s warm-up, load average now {:.2}",
        args.pairs,
        args.seconds,
        args.warmup,
        noise::load_average()
    );
    println!(
        "{:<16} {:<4} {:<10} {:<9} {:>10} {:>21} {:>10} {:>21} {:>8} {:>16} {:>12}",
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
            "{:<16} {:<4} {:<10} {:<9} {:>10.0} {:>21} {:>10.0} {:>21} {:>7.2}× {:>16} {:>12.2}",
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
        if row["workload"] != "w1" && row["workload"] != "w4" {
            for (name, side) in [(row["peer"].as_str().unwrap_or(""), p), ("herald", h)] {
                println!(
                    "{:>16}   {name:<8} medians: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs, {:.0}/s",
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
}
