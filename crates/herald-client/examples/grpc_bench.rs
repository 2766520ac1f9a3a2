//! Throughput of the gRPC path: `PublishStream` through the SDK's
//! [`Publisher`], then `Consume` with one ack per event, each with the
//! server's CPU time per event (from `/proc/<pid>/stat`).
//!
//! ```text
//! cargo build --release -p herald-server
//! cargo run --release -p herald-client --example grpc_bench -- \
//!     [events=200000] [size=128] [fsync=always|never] [window=64] [batch=1000]
//! ```
//!
//! With `workload=append` it measures event-store appends instead (W6):
//! `writers` tasks append `batch` events of `size` bytes per append to
//! `streams` streams (each writer owns the streams `s % writers == w`, so it
//! knows the version to expect) for `seconds`, each append with its exact
//! expected version, and reports appends/s, events/s and p50/p99.
//!
//! It starts `target/release/herald` (or `$BENCH_HERALD_BIN`) on a temp data dir
//! and port 0, and stops it at the end. With `cert=<pem> key=<pem> ca=<pem>`
//! the server runs with `[tls]` and the client connects over `https://`
//! trusting `ca` (README, "TLS", makes such files with openssl).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_client::{Client, Event, Fsync, GroupMode, GroupOptions, TopicOptions};

/// `USER_HZ`: the unit of `/proc/<pid>/stat` CPU times on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

#[tokio::main]
async fn main() {
    let args: Vec<(String, String)> = std::env::args()
        .skip(1)
        .filter_map(|arg| {
            arg.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let get = |name: &str, default: &str| {
        args.iter()
            .find(|(key, _)| key == name)
            .map_or(default.to_owned(), |(_, value)| value.clone())
    };
    let events: usize = get("events", "200000").parse().unwrap();
    let size: usize = get("size", "128").parse().unwrap();
    let fsync = match get("fsync", "always").as_str() {
        "never" => Fsync::Never,
        _ => Fsync::Always,
    };
    let window: usize = get("window", "64").parse().unwrap();
    let batch: usize = get("batch", "1000").parse().unwrap();

    let data = tempfile::tempdir().unwrap();
    let tls = match (get("cert", "").as_str(), get("key", "").as_str()) {
        ("", "") => None,
        (cert, key) => Some((cert.to_owned(), key.to_owned())),
    };
    let (mut server, addr) = start_server(data.path(), tls.as_ref());
    let pid = server.id();
    let client = match tls {
        None => Client::connect(format!("http://{addr}")).await.unwrap(),
        Some(_) => Client::builder(format!("https://{addr}"))
            .ca_certificate(std::fs::read(get("ca", "ca.pem")).unwrap())
            .connect()
            .await
            .unwrap(),
    };
    // Retried while storage opens.
    client.list_topics().await.unwrap();
    if get("workload", "stream") == "append" {
        let writers: u64 = get("writers", "32").parse().unwrap();
        let streams: u64 = get("streams", "10000").parse().unwrap();
        let seconds: u64 = get("seconds", "10").parse().unwrap();
        let per_append: usize = get("batch", "1").parse().unwrap();
        appends(
            &client, pid, fsync, writers, streams, per_append, size, seconds,
        )
        .await;
        let _ = server.kill();
        let _ = server.wait();
        return;
    }
    client
        .create_topic(TopicOptions::new("bench").fsync(fsync))
        .await
        .unwrap();
    client
        .put_group(
            "bench",
            GroupOptions::new("drain", GroupMode::Queue).max_in_flight(100_000),
        )
        .await
        .unwrap();

    // Publish.
    let payload = Bytes::from(vec![b'x'; size]);
    let publisher = client
        .publisher("bench")
        .window(window)
        .max_batch(batch)
        .linger(Duration::from_millis(1))
        .build();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(events);
    for n in 0..events {
        let mut event = Event::new(format!("e{n}"), "/bench", "bench.event");
        event.datacontenttype = Some("application/octet-stream".to_owned());
        event.data = Some(payload.clone());
        pending.push_back(publisher.publish(event).await.unwrap());
        // Keep the futures from growing without bound.
        while pending.len() > 100_000 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
    let publish_elapsed = started.elapsed().as_secs_f64();
    let publish_cpu = cpu_seconds(pid) - cpu_before;

    // Consume with one ack per event.
    let mut consumer = client
        .consumer("bench", "drain")
        .credits(1_000)
        .build()
        .await
        .unwrap();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut received = 0;
    while received < events {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack().unwrap();
        received += 1;
    }
    // Wait until the acks are applied.
    loop {
        let status = client.group_status("bench", "drain").await.unwrap();
        if status.in_flight == 0 && status.partitions.iter().all(|p| p.lag == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let consume_elapsed = started.elapsed().as_secs_f64();
    let consume_cpu = cpu_seconds(pid) - cpu_before;

    let fsync_name = if fsync == Fsync::Never {
        "never"
    } else {
        "always"
    };
    println!(
        "publish  {events} x {size} B fsync={fsync_name} window={window} batch={batch}: \
         {:.0} events/s, {:.1} MB/s, server CPU {:.2} us/event",
        events as f64 / publish_elapsed,
        (events * size) as f64 / publish_elapsed / 1e6,
        publish_cpu * 1e6 / events as f64,
    );
    println!(
        "consume  {events} x {size} B, ack per event, credits 1000: \
         {:.0} events/s, server CPU {:.2} us/event",
        events as f64 / consume_elapsed,
        consume_cpu * 1e6 / events as f64,
    );
    drop(consumer);
    let _ = server.kill();
    let _ = server.wait();
}

/// W6: appends with an exact expected version from `writers` tasks.
#[allow(clippy::too_many_arguments)]
async fn appends(
    client: &Client,
    pid: u32,
    fsync: Fsync,
    writers: u64,
    streams: u64,
    per_append: usize,
    size: usize,
    seconds: u64,
) {
    use herald_client::Expected;
    client
        .create_topic(TopicOptions::new("accounts").fsync(fsync))
        .await
        .unwrap();
    let payload = Bytes::from(vec![b'x'; size]);
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (client, payload) = (client.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let owned: Vec<u64> = (0..streams).filter(|s| s % writers == writer).collect();
            let mut versions: Vec<Option<u64>> = vec![None; owned.len()];
            let mut latencies = Vec::new();
            let mut next = writer as usize % owned.len().max(1);
            while Instant::now() < deadline {
                next = (next * 7 + 13) % owned.len();
                let stream = format!("account-{}", owned[next]);
                let events = (0..per_append).map(|_| {
                    let mut event = Event::new("", "/bench", "account.credited");
                    event.datacontenttype = Some("application/octet-stream".to_owned());
                    event.data = Some(payload.clone());
                    event
                });
                let sent = Instant::now();
                let appended = client
                    .append(
                        "accounts",
                        &stream,
                        events,
                        Expected::from_current(versions[next]),
                    )
                    .await
                    .unwrap();
                latencies.push(sent.elapsed());
                versions[next] = Some(appended.last_version);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let appends = latencies.len();
    println!(
        "append   {writers} writers, {streams} streams, {per_append} x {size} B per append, \
         fsync={}: {:.0} appends/s, {:.0} events/s, p50 {:?}, p99 {:?}, server CPU {:.1} us/append",
        if fsync == Fsync::Never {
            "never"
        } else {
            "always"
        },
        appends as f64 / elapsed,
        (appends * per_append) as f64 / elapsed,
        quantile(0.5),
        quantile(0.99),
        cpu * 1e6 / appends as f64,
    );
}

/// Starts herald on port 0; returns it with the address it reports.
fn start_server(data_dir: &std::path::Path, tls: Option<&(String, String)>) -> (Child, String) {
    let binary =
        std::env::var("BENCH_HERALD_BIN").unwrap_or_else(|_| "target/release/herald".to_owned());
    let mut command = Command::new(&binary);
    if let Some((cert, key)) = tls {
        command
            .env("HERALD_TLS__CERT_FILE", cert)
            .env("HERALD_TLS__KEY_FILE", key);
    }
    let mut child = command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            panic!("{binary} exited before listening: {:?}", child.wait());
        };
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix("herald listening on ") {
            break addr.trim().to_owned();
        }
    };
    (child, addr)
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    (utime + stime) / TICKS_PER_SECOND
}
