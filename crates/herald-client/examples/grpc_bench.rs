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
//! It starts `target/release/herald` (or `$HERALD_BIN`) on a temp data dir
//! and port 0, and stops it at the end.
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
        .filter_map(|arg| arg.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
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
    let (mut server, addr) = start_server(data.path());
    let pid = server.id();
    let client = Client::connect(format!("http://{addr}")).await.unwrap();
    // Retried while storage opens.
    client.list_topics().await.unwrap();
    client
        .create_topic(TopicOptions::new("bench").fsync(fsync))
        .await
        .unwrap();
    client
        .put_group("bench", GroupOptions::new("drain", GroupMode::Queue).max_in_flight(100_000))
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

    let fsync_name = if fsync == Fsync::Never { "never" } else { "always" };
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

/// Starts herald on port 0; returns it with the address it reports.
fn start_server(data_dir: &std::path::Path) -> (Child, String) {
    let binary = std::env::var("HERALD_BIN").unwrap_or_else(|_| "target/release/herald".to_owned());
    let mut child = Command::new(&binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("herald printed its address").unwrap();
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
