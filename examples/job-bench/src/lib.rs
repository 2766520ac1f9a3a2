//! Jobs end to end under load, over the HTTP API: `clients` concurrent
//! clients each submit a job and long-poll its result, again and again,
//! while `workers` workers fetch from the queue and complete (which acks).
//! A job's latency runs from just before its submit to its result fetched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Herald's base URL.
    pub server: String,
    /// The queue.
    pub queue: String,
    /// Jobs in all.
    pub jobs: usize,
    /// Concurrent submitting clients.
    pub clients: usize,
    /// Concurrent workers.
    pub workers: usize,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Jobs completed.
    pub jobs: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Jobs per second.
    pub jobs_per_sec: f64,
    /// Median end-to-end latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Runs the load; see the crate docs.
pub async fn run(settings: Settings) -> Result<Report> {
    let http = reqwest::Client::new();
    let cancel = CancellationToken::new();
    let workers: Vec<_> = (0..settings.workers)
        .map(|index| {
            tokio::spawn(worker(
                http.clone(),
                settings.clone(),
                format!("bench-worker-{index}"),
                cancel.clone(),
            ))
        })
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(settings.jobs)));
    let started = Instant::now();
    let clients: Vec<_> = (0..settings.clients)
        .map(|_| {
            tokio::spawn(client(
                http.clone(),
                settings.clone(),
                Arc::clone(&next),
                Arc::clone(&latencies),
            ))
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    for worker in workers {
        worker.await??;
    }
    let mut latencies = latencies.lock().map(|all| all.clone()).unwrap_or_default();
    ensure!(latencies.len() == settings.jobs, "not every job completed");
    latencies.sort_unstable();
    let percentile = |fraction: f64| {
        let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    };
    Ok(Report {
        jobs: latencies.len(),
        elapsed,
        jobs_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(0.50),
        p99: percentile(0.99),
    })
}

async fn client(
    http: reqwest::Client,
    settings: Settings,
    next: Arc<AtomicUsize>,
    latencies: Arc<Mutex<Vec<Duration>>>,
) -> Result<()> {
    let server = &settings.server;
    while next.fetch_add(1, Ordering::Relaxed) < settings.jobs {
        let started = Instant::now();
        let submitted = http
            .post(format!("{server}/v1/queues/{}/jobs", settings.queue))
            .json(&json!({"data": {"n": 1}}))
            .send()
            .await?;
        ensure!(submitted.status() == 202, "submit: {}", submitted.status());
        let submitted: Value = submitted.json().await?;
        let job_id = submitted["job_id"].as_str().context("job_id")?.to_owned();
        loop {
            let job: Value = http
                .get(format!("{server}/v1/jobs/{job_id}?wait_ms=30000"))
                .send()
                .await?
                .json()
                .await?;
            if job["status"] == "succeeded" {
                break;
            }
            ensure!(job["status"] != "failed", "job failed: {job}");
        }
        if let Ok(mut all) = latencies.lock() {
            all.push(started.elapsed());
        }
    }
    Ok(())
}

async fn worker(
    http: reqwest::Client,
    settings: Settings,
    member: String,
    cancel: CancellationToken,
) -> Result<()> {
    let server = &settings.server;
    loop {
        let fetch = http
            .post(format!("{server}/v1/queues/{}/fetch", settings.queue))
            .json(&json!({"member": member, "max": 1, "wait_ms": 500}))
            .send();
        let response = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            response = fetch => response?,
        };
        // 404 queue_not_found until the first submit creates the queue.
        if response.status() == 404 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let fetched: Value = response.json().await?;
        for delivery in fetched["deliveries"].as_array().into_iter().flatten() {
            let job_id = delivery["job_id"].as_str().context("job_id")?;
            let done = http
                .post(format!("{server}/v1/jobs/{job_id}/complete"))
                .json(&json!({"result": {"ok": true}, "delivery_id": delivery["delivery_id"]}))
                .send()
                .await?;
            ensure!(done.status() == 200, "complete: {}", done.status());
        }
    }
}
