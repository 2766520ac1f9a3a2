//! `herald-bench nodes`: three Herald nodes against one, on one NATS
//! server (issue 19): the same work with the clients spread over the
//! nodes, in alternating pairs.
//!
//! ```text
//! cargo build --release --bin herald --bin herald-bench
//! target/release/herald-bench nodes --pairs 3 --out bench-nodes
//! ```
//!
//! Each run starts a fresh `nats-server -js` (D2: `sync_interval: always`)
//! and 1 or 3 `herald serve --backend nats` on it; the server CPU counted
//! is all of them together. Points: unary publish from 64 producers
//! spread over the nodes (D1 and D2), and the drain of a 200,000-event
//! backlog by 4 consumers of one queue group spread over the nodes (the
//! group runs on one node; consumers on the others are forwarded to it).
//! On one machine three nodes share its cores, so this measures what
//! spreading costs or gains here, not how a cluster of machines scales.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::peers::{self, Binaries, Herald, Level, Nats};
use crate::workloads::{self, Timing};

/// The settings of `herald-bench nodes`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodesArgs {
    /// Pairs (one node, three nodes) per point.
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Measured seconds per publish run (after the warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Warm-up seconds per publish run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Producers of the publish points.
    #[arg(long, default_value_t = 64)]
    producers: u64,
    /// Backlog of the drain point (events of 128 B).
    #[arg(long, default_value_t = 200_000)]
    backlog: u64,
    /// Where `summary.json` goes.
    #[arg(long, default_value = "bench-nodes")]
    out: PathBuf,
    /// The herald binary (default: next to this binary).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// nats-server 2.15 (default: $BENCH_NATS_BIN, pip's scripts dir, PATH).
    #[arg(long)]
    nats_bin: Option<PathBuf>,
    /// Where servers keep their data (default: the system temp dir).
    #[arg(long)]
    tmp: Option<PathBuf>,
}

/// One system: a NATS server and the Herald nodes on it.
struct System {
    nodes: Vec<Herald>,
    _nats: Nats,
}

impl System {
    async fn start(bins: &Binaries, level: Level, count: usize) -> Result<Self> {
        let nats = Nats::start(bins, level)?;
        let env = [
            ("HERALD_BACKEND", "nats"),
            ("HERALD_NATS__URL", nats.url.as_str()),
        ];
        let mut nodes = Vec::new();
        for _ in 0..count {
            nodes.push(Herald::launch_with_env(
                &bins.herald,
                &bins.tmp,
                Stdio::inherit(),
                false,
                &env,
            )?);
        }
        let http = reqwest::Client::new();
        for node in &nodes {
            peers::wait_ok(&http, &format!("{}/readyz", node.endpoint.url), "herald").await?;
        }
        crate::noise::add_server_root(nats.pid());
        for node in &nodes[1..] {
            crate::noise::add_server_root(node.pid());
        }
        Ok(Self { nodes, _nats: nats })
    }

    fn endpoints(&self) -> Vec<peers::Endpoint> {
        self.nodes
            .iter()
            .map(|node| node.endpoint.clone())
            .collect()
    }
}

/// Runs the comparison.
pub async fn run(args: NodesArgs) -> Result<()> {
    let bins = Binaries {
        herald: args.herald_bin.clone().unwrap_or_else(peers::find_herald),
        nats: args.nats_bin.clone().unwrap_or_else(peers::find_nats),
        postgres: PathBuf::new(),
        tmp: args.tmp.clone().unwrap_or_else(std::env::temp_dir),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let points = [
        ("publish-D1", Level::D1),
        ("publish-D2", Level::D2),
        ("drain-D1", Level::D1),
    ];
    let mut rows = Vec::new();
    for (point, level) in points {
        let mut figures: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for pair in 1..=args.pairs {
            for (slot, count) in [(0, 1), (1, 3)] {
                let system = System::start(&bins, level, count).await?;
                let endpoints = system.endpoints();
                let pid = system.nodes[0].pid();
                let run = if point.starts_with("publish") {
                    workloads::nodes_publish(&endpoints, pid, level, args.producers, timing).await?
                } else {
                    workloads::nodes_drain(&endpoints, pid, level, args.backlog, 4).await?
                };
                drop(system);
                let events = if point.starts_with("publish") {
                    run.latency.map_or(0, |latency| latency.count)
                } else {
                    args.backlog
                };
                let per_event = run.noise.server_cpu * 1e6 / events.max(1) as f64;
                let latency = run.latency.map_or(String::new(), |l| {
                    format!(" p50 {:.0} µs p99 {:.0} µs", l.p50, l.p99)
                });
                eprintln!(
                    "{point} pair {pair}/{} {count} node(s): {:.0} events/s{latency}, server CPU {per_event:.1} µs/event",
                    args.pairs, run.throughput
                );
                figures[slot].push(run.throughput);
                cpu[slot].push(per_event);
                let record = json!({
                    "point": point, "nodes": count, "pair": pair,
                    "throughput": run.throughput,
                    "latency": run.latency.map(|l| json!({"p50": l.p50, "p99": l.p99})),
                    "server_cpu_us_per_event": per_event,
                    "noise": run.noise.to_json(), "extra": run.extra,
                });
                std::fs::write(
                    args.out.join(format!("{point}-{count}n-{pair}.json")),
                    serde_json::to_vec_pretty(&record)?,
                )?;
            }
        }
        let one = median(&figures[0]);
        let three = median(&figures[1]);
        rows.push(json!({
            "point": point,
            "one_node": one, "three_nodes": three, "ratio": three / one,
            "cpu_one": median(&cpu[0]), "cpu_three": median(&cpu[1]),
        }));
    }
    println!("point        one node    three nodes   3 ÷ 1   CPU µs/event 1 / 3");
    for row in &rows {
        println!(
            "{:<12} {:>9.0}/s {:>10.0}/s {:>6.2}×   {:.1} / {:.1}",
            row["point"].as_str().unwrap_or_default(),
            row["one_node"].as_f64().unwrap_or_default(),
            row["three_nodes"].as_f64().unwrap_or_default(),
            row["ratio"].as_f64().unwrap_or_default(),
            row["cpu_one"].as_f64().unwrap_or_default(),
            row["cpu_three"].as_f64().unwrap_or_default(),
        );
    }
    let summary: Value = json!({"args": format!("{args:?}"), "points": rows});
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
