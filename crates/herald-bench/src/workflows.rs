//! `herald-bench workflows`: W8 — a three-step durable workflow (call a
//! local HTTP service, keep its answer, emit a result) on Herald and on
//! Restate, side by side in one run.
//!
//! ```text
//! cargo build --release -p herald-bench -p herald-server --bin herald --bin herald-bench
//! (cd ~/.cache/herald-restate && npm install @restatedev/restate-server @restatedev/restate-sdk)
//! target/release/herald-bench workflows --out w8-out
//! ```
//!
//! - **The service**: an axum server in this process answers `POST /step`
//!   with `{ok, n}` and takes Restate's emitted result at `POST /emit`.
//! - **Herald**: `herald serve` (release, fresh temp dir, allowed to reach
//!   loopback); the workflow is `call: http` to `/step`, `set`, `emit` to
//!   topic `w8.done`. Each of `--concurrency` clients starts an instance
//!   (`POST /v1/workflows/bench/w8/instances`) and long-polls it until it
//!   completed (`GET …?wait_ms=`); latency is from the start request to the
//!   completed answer.
//! - **Restate**: `restate-server` (from npm, `--restate-dir`, a fresh base
//!   dir) and a Node service on `@restatedev/restate-sdk`: a `workflow`
//!   whose `run` does `ctx.run("call", fetch /step)`, `ctx.set`, and
//!   `ctx.run("emit", fetch /emit)`; each client calls
//!   `POST /w8/<id>/run` on the ingress, which answers once the workflow
//!   completed.
//! - **Durability**: each journals every step before going on. Herald's
//!   history topic is `fsync = always` (the default) and its emit is a
//!   durable publish; Restate's defaults (`rocksdb-disable-wal-fsync =
//!   false` for its log) sync its log; its emit is a call recorded by
//!   `ctx.run`.
//!
//! `--pairs` alternating runs (Restate, Herald, …), `--instances` each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::peers::{self, Guard, Herald, free_port, wait_ok};
use crate::workloads::{Latency, histogram};

/// W8's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkflowArgs {
    /// Instances per run.
    #[arg(long, default_value_t = 2_000)]
    instances: u64,
    /// Concurrent clients (each starts an instance and waits for its end).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Restate/Herald pairs.
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// Where `npm install @restatedev/restate-server @restatedev/restate-sdk` ran.
    #[arg(long, default_value = "~/.cache/herald-restate")]
    restate_dir: String,
    /// Where data dirs go.
    #[arg(long, default_value = "/tmp")]
    tmp: PathBuf,
    /// Where `summary.json` goes.
    #[arg(long, default_value = "w8-out")]
    out: PathBuf,
    /// The herald binary (default: next to this binary).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
}

const HERALD_WORKFLOW: &str = "document: { dsl: '1.0.0', namespace: bench, name: w8, version: '1' }\n\
do:\n  - call: { call: http, with: { method: post, endpoint: 'SERVICE/step', body: { n: '${ .n }' } } }\n  \
- keep: { set: { n: '${ .n }', ok: '${ .ok }' } }\n  \
- done: { emit: { event: { with: { topic: w8.done, source: /bench, type: w8.done, data: '${ . }' } } } }\n";

const RESTATE_SERVICE: &str = r#"
// Node 20 lacks Promise.withResolvers, which the SDK uses (Node 22 has it).
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
  };
}
const restate = require("@restatedev/restate-sdk");
const url = process.env.W8_SERVICE;
const post = async (path, body) => {
  const answer = await fetch(url + path, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  return answer.status === 204 ? null : await answer.json();
};
const w8 = restate.workflow({
  name: "w8",
  handlers: {
    run: async (ctx, input) => {
      const step = await ctx.run("call", () => post("/step", { n: input.n }));
      const kept = { n: input.n, ok: step.ok };
      ctx.set("kept", kept);
      await ctx.run("emit", () => post("/emit", kept));
      return kept;
    },
  },
});
restate.endpoint().bind(w8).listen(Number(process.env.W8_PORT));
"#;

/// The local service both call.
async fn service() -> Result<(String, Arc<AtomicU64>)> {
    let emitted = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&emitted);
    let app = axum::Router::new()
        .route(
            "/step",
            axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                axum::Json(json!({"ok": true, "n": body["n"]}))
            }),
        )
        .route(
            "/emit",
            axum::routing::post(move || {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, emitted))
}

/// Runs `instances` through `one` (start one instance and wait for its
/// end) with `concurrency` clients: throughput and latencies.
async fn drive<F, Fut>(instances: u64, concurrency: usize, one: F) -> Result<(f64, Latency)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let one = Arc::new(one);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (one, next) = (Arc::clone(&one), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut latencies: Histogram<u64> = histogram()?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= instances {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let began = Instant::now();
                one(n).await?;
                latencies.record(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX))?;
            }
        }));
    }
    let mut all: Histogram<u64> = histogram()?;
    for worker in workers {
        all.add(worker.await??)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((instances as f64 / seconds, Latency::from_histogram(&all)))
}

async fn herald_run(args: &WorkflowArgs, service_url: &str, pair: usize) -> Result<(f64, Latency)> {
    let herald_bin = args.herald_bin.clone().unwrap_or_else(peers::find_herald);
    let herald = Herald::launch_with_env(
        &herald_bin,
        &args.tmp,
        Stdio::inherit(),
        false,
        &[("HERALD_WEBHOOKS__ALLOW_TARGETS", r#"["127.0.0.1/32"]"#)],
    )?;
    let server = herald.endpoint.url.clone();
    let http = reqwest::Client::new();
    wait_ok(&http, &format!("{server}/readyz"), "herald").await?;
    let created = http
        .post(format!("{server}/v1/topics"))
        .json(&json!({"name": "w8.done"}))
        .send()
        .await?;
    ensure!(
        created.status().as_u16() == 201,
        "creating w8.done: {}",
        created.text().await?
    );
    let deployed = http
        .post(format!("{server}/v1/workflows"))
        .header("content-type", "application/yaml")
        .body(HERALD_WORKFLOW.replace("SERVICE", service_url))
        .send()
        .await?;
    ensure!(
        deployed.status().as_u16() == 201,
        "deploying: {}",
        deployed.text().await?
    );
    let result = drive(args.instances, args.concurrency, move |n| {
        let (http, server) = (http.clone(), server.clone());
        async move {
            let started = http
                .post(format!("{server}/v1/workflows/bench/w8/instances"))
                .json(&json!({"input": {"n": n}}))
                .send()
                .await?;
            ensure!(
                started.status().as_u16() == 201,
                "start: {}",
                started.text().await?
            );
            let started: Value = started.json().await?;
            let id = started["instance_id"]
                .as_str()
                .context("instance_id")?
                .to_owned();
            loop {
                let view: Value = http
                    .get(format!("{server}/v1/workflow-instances/{id}?wait_ms=30000"))
                    .send()
                    .await?
                    .json()
                    .await?;
                match view["status"].as_str() {
                    Some("completed") => {
                        ensure!(view["output"]["ok"] == true, "output: {view}");
                        return Ok(());
                    }
                    Some("faulted" | "cancelled") => bail!("instance ended {view}"),
                    _ => {}
                }
            }
        }
    })
    .await?;
    println!(
        "w8 pair {pair} herald: {:.0} instances/s, p50 {:.2} ms, p99 {:.2} ms",
        result.0,
        result.1.p50 / 1000.0,
        result.1.p99 / 1000.0
    );
    drop(herald);
    Ok(result)
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(path), |home| Path::new(&home).join(rest)),
        None => PathBuf::from(path),
    }
}

async fn restate_run(
    args: &WorkflowArgs,
    service_url: &str,
    pair: usize,
) -> Result<(f64, Latency)> {
    let dir = expand_home(&args.restate_dir);
    let binary = dir.join("node_modules/@restatedev/restate-server-linux-x64/bin/restate-server");
    ensure!(
        binary.exists(),
        "{} is missing: run `npm install @restatedev/restate-server @restatedev/restate-sdk` in {}",
        binary.display(),
        dir.display()
    );
    let data = tempfile::Builder::new()
        .prefix("restate-")
        .tempdir_in(&args.tmp)?;
    let (ingress, admin, node) = (free_port()?, free_port()?, free_port()?);
    let _server = Guard(
        Command::new(&binary)
            .args(["--no-logo", "--listen-mode", "tcp", "--base-dir"])
            .arg(data.path())
            .env(
                "RESTATE_INGRESS__BIND_ADDRESS",
                format!("127.0.0.1:{ingress}"),
            )
            .env("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{admin}"))
            .env("RESTATE_BIND_ADDRESS", format!("127.0.0.1:{node}"))
            .env(
                "RESTATE_ADVERTISED_ADDRESS",
                format!("http://127.0.0.1:{node}"),
            )
            .env("RESTATE_LOG_FILTER", "warn")
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?,
    );
    let script = dir.join("w8-service.js");
    std::fs::write(&script, RESTATE_SERVICE)?;
    let service_port = free_port()?;
    let _service = Guard(
        Command::new("node")
            .arg(&script)
            .current_dir(&dir)
            .env("W8_SERVICE", service_url)
            .env("W8_PORT", service_port.to_string())
            .env("RESTATE_LOGGING", "WARN")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start node")?,
    );
    let http = reqwest::Client::new();
    wait_ok(
        &http,
        &format!("http://127.0.0.1:{admin}/health"),
        "restate admin",
    )
    .await?;
    // The service listening, then registered.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let registered = http
            .post(format!("http://127.0.0.1:{admin}/deployments"))
            .json(&json!({"uri": format!("http://127.0.0.1:{service_port}")}))
            .send()
            .await;
        match registered {
            Ok(answer) if answer.status().is_success() => break,
            Ok(answer) if Instant::now() >= deadline => {
                bail!("registering the service: {}", answer.text().await?)
            }
            Err(error) if Instant::now() >= deadline => bail!("registering the service: {error}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let result = drive(args.instances, args.concurrency, move |n| {
        let http = http.clone();
        async move {
            let answer = http
                .post(format!("http://127.0.0.1:{ingress}/w8/p{pair}-{n}/run"))
                .json(&json!({"n": n}))
                .send()
                .await?;
            let status = answer.status();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            ensure!(
                status.is_success() && body["ok"] == true,
                "restate answered {status}: {body}"
            );
            Ok(())
        }
    })
    .await?;
    println!(
        "w8 pair {pair} restate: {:.0} instances/s, p50 {:.2} ms, p99 {:.2} ms",
        result.0,
        result.1.p50 / 1000.0,
        result.1.p99 / 1000.0
    );
    Ok(result)
}

/// Runs W8.
pub async fn run(args: WorkflowArgs) -> Result<()> {
    let (service_url, emitted) = service().await?;
    let mut runs = Vec::new();
    for pair in 0..args.pairs {
        let restate = restate_run(&args, &service_url, pair).await?;
        let herald = herald_run(&args, &service_url, pair).await?;
        runs.push(json!({
            "pair": pair,
            "restate": {"instances_per_s": restate.0, "latency": restate.1.to_json()},
            "herald": {"instances_per_s": herald.0, "latency": herald.1.to_json()},
            "ratio": herald.0 / restate.0,
        }));
    }
    let summary = json!({
        "workload": "W8: call a local HTTP service, set, emit; one instance per client at a time",
        "instances": args.instances,
        "concurrency": args.concurrency,
        "restate_emits_received": emitted.load(Ordering::Relaxed),
        "runs": runs,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
