//! Group commit under load, with the numbers behind it: appends/s, commit
//! rounds/s, appends per round, and the process's CPU time per append.
//!
//! `cargo run --release -p herald-log --example group_commit -- [appenders] [value bytes] [seconds] [always|interval|never]`
#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a measuring tool")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_log::{FsyncPolicy, Log, LogEnv, LogHandle, LogOptions, NewRecord, WriterOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let appenders: u64 = args.first().map_or(64, |value| value.parse().unwrap());
    let size: usize = args.get(1).map_or(128, |value| value.parse().unwrap());
    let seconds: u64 = args.get(2).map_or(5, |value| value.parse().unwrap());
    let fsync = match args.get(3).map_or("always", String::as_str) {
        "never" => FsyncPolicy::Never,
        "interval" => FsyncPolicy::Interval(Duration::from_millis(100)),
        _ => FsyncPolicy::Always,
    };
    let base = std::env::var_os("HERALD_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = LogEnv::default();
    let metrics = Arc::clone(&env.metrics);
    let log = Log::open(
        dir.path(),
        LogOptions {
            fsync,
            ..LogOptions::default()
        },
        env,
    )
    .unwrap();
    let mut writer_options = WriterOptions::default();
    if let Some(linger) = std::env::var_os("HERALD_COMMIT_LINGER_US") {
        writer_options.commit_linger =
            Duration::from_micros(linger.to_string_lossy().parse().unwrap());
    }
    let handle = LogHandle::spawn(log, writer_options, Arc::clone(&metrics)).unwrap();
    let value = Bytes::from(vec![0xa5u8; size]);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time();
    let rounds_before = metrics.commit_rounds_total();
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let (handle, value, stop, count) = (
                    handle.clone(),
                    value.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&count),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        handle
                            .append(vec![NewRecord::new(value.clone())])
                            .await
                            .unwrap();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu_before;
    let appends = count.load(Ordering::Relaxed) as f64;
    let rounds = (metrics.commit_rounds_total() - rounds_before) as f64;
    println!(
        "appenders={appenders} size={size}B fsync={fsync:?}: {:.0} appends/s, {:.0} rounds/s, {:.1} appends/round, {:.2} µs CPU/append",
        appends / elapsed,
        rounds / elapsed,
        appends / rounds,
        cpu / appends * 1e6
    );
    runtime.block_on(handle.close()).unwrap();
}

/// User + system CPU seconds of this process, from /proc.
fn cpu_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
