//! Log engine benchmarks, and the machine's raw limits measured the same way.
//!
//! `cargo bench -p herald-log --bench log` runs them all; a filter selects
//! some, e.g. `cargo bench -p herald-log --bench log -- 'append/always'`.
//! Files go to `HERALD_BENCH_DIR` if set, else the system temp directory: put
//! it on the disk you want to measure.
//!
//! - `append/{policy}/{size}B/{appenders}`: appends/s with N concurrent
//!   appenders, each keeping one append (one record) in flight, through the
//!   writer thread and group commit.
//! - `read/sequential/{size}B`: bytes/s reading a 64 MiB log front to back.
//! - `erase/segment_64MiB/1KiB`: time of one `LogHandle::erase` of one
//!   record in a sealed 64 MiB segment of 1 KiB records (the whole segment is
//!   rewritten and fsynced, and the partition's appends wait meanwhile).
//! - `machine/write_bandwidth`: sequential 1 MiB writes and one final
//!   fdatasync, bytes/s.
//! - `machine/append_fdatasync`: one writer, 128 B append + fdatasync per
//!   iteration: the single-writer fsync rate group commit is judged against.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_log::{FsyncPolicy, Log, LogEnv, LogHandle, LogOptions, NewRecord, WriterOptions};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("HERALD_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    tempfile::tempdir_in(base).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(dir: &std::path::Path, fsync: FsyncPolicy) -> LogHandle {
    let env = LogEnv::default();
    let metrics = Arc::clone(&env.metrics);
    let options = LogOptions {
        fsync,
        ..LogOptions::default()
    };
    let log = Log::open(dir, options, env).unwrap();
    LogHandle::spawn(log, WriterOptions::default(), metrics).unwrap()
}

fn append(criterion: &mut Criterion) {
    let runtime = runtime();
    let policies = [
        ("always", FsyncPolicy::Always),
        (
            "interval",
            FsyncPolicy::Interval(Duration::from_millis(100)),
        ),
        ("never", FsyncPolicy::Never),
    ];
    for (name, policy) in policies {
        let mut group = criterion.benchmark_group(format!("append/{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        for size in [128usize, 1024] {
            for appenders in [1u64, 16, 64] {
                group.throughput(Throughput::Elements(1));
                let id = BenchmarkId::new(format!("{size}B"), appenders);
                group.bench_function(id, |bencher| {
                    let dir = bench_dir();
                    let handle = open(dir.path(), policy);
                    let value = Bytes::from(vec![0xa5u8; size]);
                    bencher.iter_custom(|iterations| {
                        runtime.block_on(run_appenders(&handle, &value, appenders, iterations))
                    });
                    runtime.block_on(handle.close()).unwrap();
                });
            }
        }
        group.finish();
    }
}

/// `appenders` tasks share `iterations` appends, each with one in flight.
async fn run_appenders(
    handle: &LogHandle,
    value: &Bytes,
    appenders: u64,
    iterations: u64,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|index| {
            let handle = handle.clone();
            let value = value.clone();
            let count = iterations / appenders + u64::from(index < iterations % appenders);
            tokio::spawn(async move {
                for _ in 0..count {
                    handle
                        .append(vec![NewRecord::new(value.clone())])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

fn read(criterion: &mut Criterion) {
    let runtime = runtime();
    let mut group = criterion.benchmark_group("read");
    group.sample_size(10);
    for size in [128usize, 1024] {
        let dir = bench_dir();
        let handle = open(dir.path(), FsyncPolicy::Never);
        let records = fill_64_mib(&runtime, &handle, size);
        let reader = handle.reader().clone();
        group.throughput(Throughput::Bytes(records * size as u64));
        group.bench_function(
            BenchmarkId::new("sequential", format!("{size}B")),
            |bencher| {
                bencher.iter(|| {
                    let mut next = 0;
                    let mut count = 0;
                    loop {
                        let batch = reader.read(next, 1024 * 1024).unwrap();
                        if batch.records.is_empty() {
                            break;
                        }
                        count += batch.records.len();
                        next = batch.next_offset;
                    }
                    count
                });
            },
        );
        runtime.block_on(handle.close()).unwrap();
    }
    group.finish();
}

/// Appends about 64 MiB of `size`-byte records, 100 per append; returns how
/// many.
fn fill_64_mib(runtime: &tokio::runtime::Runtime, handle: &LogHandle, size: usize) -> u64 {
    let appends = 64 * 1024 * 1024 / size / 100;
    runtime.block_on(async {
        let value = Bytes::from(vec![0x5au8; size]);
        for _ in 0..appends {
            handle
                .append(vec![NewRecord::new(value.clone()); 100])
                .await
                .unwrap();
        }
    });
    (appends * 100) as u64
}

fn erase(criterion: &mut Criterion) {
    let runtime = runtime();
    let mut group = criterion.benchmark_group("erase");
    group.sample_size(10);
    let dir = bench_dir();
    let handle = open(dir.path(), FsyncPolicy::Never);
    let records = fill_64_mib(&runtime, &handle, 1024);
    runtime.block_on(handle.roll()).unwrap();
    let mut offset = 0u64;
    group.bench_function(BenchmarkId::new("segment_64MiB", "1KiB"), |bencher| {
        bencher.iter(|| {
            offset = (offset + 7919) % records;
            runtime.block_on(handle.erase(vec![offset])).unwrap()
        });
    });
    runtime.block_on(handle.close()).unwrap();
    group.finish();
}

fn machine(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("machine");
    group.sample_size(10);
    const TOTAL: usize = 256 * 1024 * 1024;
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.bench_function("write_bandwidth", |bencher| {
        let chunk = vec![0x33u8; 1024 * 1024];
        bencher.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let dir = bench_dir();
                let mut file = std::fs::File::create(dir.path().join("bandwidth")).unwrap();
                let started = Instant::now();
                for _ in 0..TOTAL / chunk.len() {
                    file.write_all(&chunk).unwrap();
                }
                file.sync_data().unwrap();
                elapsed += started.elapsed();
            }
            elapsed
        });
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_fdatasync", |bencher| {
        let dir = bench_dir();
        let file = std::fs::File::create(dir.path().join("appends")).unwrap();
        let record = [0x44u8; 128];
        let mut position = 0u64;
        bencher.iter(|| {
            file.write_all_at(&record, position).unwrap();
            file.sync_data().unwrap();
            position += record.len() as u64;
        });
    });
    group.finish();
}

criterion_group!(benches, machine, append, read, erase);
criterion_main!(benches);
