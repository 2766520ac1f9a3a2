//! Scenario 3 of the product: scatter-gather over shard workers.
//!
//! A batch of user-profile updates is split into chunks by user shard
//! (`user_id % shards`); each chunk is one part of a job, keyed
//! `shard-<nn>`. Each shard worker consumes the queue's topic
//! (`jobs.profiles`) with its own queue group whose filter is its key
//! (`filter.subject_prefix`), so it sees only its shard's parts; it applies
//! the updates and completes its part. The client long-polls the job: it
//! ends `succeeded` with every shard's result, or — when a shard never
//! answers — `partial` at its deadline, listing exactly the silent shard.
//!
//! [`run`] plays the client and the workers against a running Herald.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The queue the example uses.
pub const QUEUE: &str = "profiles";

/// What a run saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The job.
    pub job_id: String,
    /// Its final status (`succeeded` or `partial`).
    pub status: String,
    /// The parts that never reported.
    pub missing: Vec<String>,
    /// Each reporting shard's result, by key.
    pub gathered: BTreeMap<String, Value>,
    /// Which part keys each worker received, by its shard key.
    pub seen: BTreeMap<String, BTreeSet<String>>,
    /// Parts done of the total, as the job reported.
    pub done: u64,
}

/// The part key of shard `index`.
pub fn shard_key(index: usize) -> String {
    format!("shard-{index:02}")
}

/// Splits `users` profile updates over `shards` shards (at most 100), runs
/// a worker per shard — the one for `silent` receives its part and never
/// answers — and gathers the result with a deadline of `deadline_ms`.
pub async fn run(
    server: &str,
    users: usize,
    shards: usize,
    silent: Option<usize>,
    deadline_ms: u64,
) -> Result<Report> {
    ensure!((1..=100).contains(&shards), "1 to 100 shards");
    let http = reqwest::Client::new();
    let parts: Vec<Value> = (0..shards)
        .map(|shard| {
            let updates: Vec<Value> = (0..users)
                .filter(|user| user % shards == shard)
                .map(|user| json!({"user_id": user, "set": {"tier": if user % 3 == 0 { "gold" } else { "silver" }}}))
                .collect();
            json!({"key": shard_key(shard), "data": {"updates": updates}})
        })
        .collect();
    let submitted = http
        .post(format!("{server}/v1/queues/{QUEUE}/jobs"))
        .json(&json!({"parts": parts, "deadline_ms": deadline_ms}))
        .send()
        .await
        .context("cannot reach Herald")?;
    let job_id = expect(submitted, 202).await?["job_id"]
        .as_str()
        .context("job_id")?
        .to_owned();

    // The submit created the queue (its topic jobs.<queue>); each shard's
    // group reads it from the start and skips other jobs' requests, so
    // groups made after the submit still see this job's parts.
    for shard in 0..shards {
        let key = shard_key(shard);
        let group = http
            .put(format!("{server}/v1/topics/jobs.{QUEUE}/groups/{key}"))
            .json(&json!({
                "mode": "queue",
                "start": "earliest",
                "ack_wait_ms": 60_000,
                "filter": {"subject_prefix": key},
            }))
            .send()
            .await?;
        ensure!(
            group.status().is_success(),
            "group {key}: {}",
            group.text().await?
        );
    }

    let cancel = CancellationToken::new();
    let seen = Arc::new(Mutex::new(BTreeMap::<String, BTreeSet<String>>::new()));
    let workers: Vec<_> = (0..shards)
        .map(|shard| {
            tokio::spawn(shard_worker(
                http.clone(),
                server.to_owned(),
                job_id.clone(),
                shard_key(shard),
                silent == Some(shard),
                Arc::clone(&seen),
                cancel.clone(),
            ))
        })
        .collect();

    let job = loop {
        let job = http
            .get(format!("{server}/v1/jobs/{job_id}?wait_ms=5000"))
            .send()
            .await?;
        let job = expect(job, 200).await?;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "partial" | "failed")
        ) {
            break job;
        }
    };
    cancel.cancel();
    for worker in workers {
        worker.await??;
    }

    let gathered = job["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|part| part["status"] == "succeeded")
        .filter_map(|part| Some((part["key"].as_str()?.to_owned(), part["result"].clone())))
        .collect();
    let missing = job["missing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|key| key.as_str().map(str::to_owned))
        .collect();
    let seen = seen.lock().map(|seen| seen.clone()).unwrap_or_default();
    Ok(Report {
        job_id,
        status: job["status"].as_str().unwrap_or_default().to_owned(),
        missing,
        gathered,
        seen,
        done: job["progress"]["done"].as_u64().unwrap_or_default(),
    })
}

/// One shard's worker: fetches its group's parts of job `job_id` (acking
/// other jobs' requests unseen), applies the updates and completes its part
/// (unless `silent`), then acks.
async fn shard_worker(
    http: reqwest::Client,
    server: String,
    job_id: String,
    key: String,
    silent: bool,
    seen: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    cancel: CancellationToken,
) -> Result<()> {
    let group_url = format!("{server}/v1/topics/jobs.{QUEUE}/groups/{key}");
    loop {
        let fetch = http
            .post(format!("{group_url}/fetch"))
            .json(&json!({"member": key, "max": 10, "wait_ms": 500}))
            .send();
        let fetched = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            fetched = fetch => expect(fetched?, 200).await?,
        };
        for delivery in fetched["deliveries"].as_array().into_iter().flatten() {
            let request: Value = delivery["event"]["data"].clone();
            if request["job_id"] != job_id.as_str() {
                ack(&http, &group_url, delivery).await?;
                continue;
            }
            let part = request["part"].as_str().context("part")?.to_owned();
            if let Ok(mut seen) = seen.lock() {
                seen.entry(key.clone()).or_default().insert(part.clone());
            }
            if silent {
                continue;
            }
            let updates = request["data"]["updates"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let gold = updates
                .iter()
                .filter(|update| update["set"]["tier"] == "gold")
                .count();
            let done = http
                .post(format!("{server}/v1/jobs/{job_id}/complete"))
                .json(&json!({"part": part, "result": {"users_updated": updates.len(), "gold": gold}}))
                .send()
                .await?;
            expect(done, 200).await?;
            ack(&http, &group_url, delivery).await?;
        }
    }
}

/// Acks `delivery` in the group at `group_url`.
async fn ack(http: &reqwest::Client, group_url: &str, delivery: &Value) -> Result<()> {
    let acked = http
        .post(format!("{group_url}/ack"))
        .json(&json!({"delivery_ids": [delivery["delivery_id"]]}))
        .send()
        .await?;
    expect(acked, 200).await?;
    Ok(())
}

async fn expect(response: reqwest::Response, status: u16) -> Result<Value> {
    let actual = response.status().as_u16();
    let body = response.text().await?;
    ensure!(actual == status, "expected {status}, got {actual}: {body}");
    Ok(serde_json::from_str(&body)?)
}
