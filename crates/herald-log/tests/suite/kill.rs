//! `kill -9` for real: a child process appends with `fsync = always` from
//! several concurrent tasks and prints each acknowledged offset; the parent
//! kills it with SIGKILL at a random moment, reopens the log, and checks that
//! every acknowledged record is there, byte for byte.
//!
//! The child is this same test binary, re-run with `--exact` on the ignored
//! test `kill::child_appender` and the log directory in an environment
//! variable.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use herald_log::{Log, LogHandle, LogOptions, WriterOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{read_all, record, same, std_env};

const CHILD_DIR: &str = "HERALD_LOG_KILL_CHILD_DIR";
const APPENDERS: u64 = 8;
const VALUE_LEN: usize = 300;

/// Segments small enough that kills also land around rolls.
fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        ..LogOptions::default()
    }
}

/// A record's tag says which appender wrote it and its sequence number.
fn tag(appender: u64, sequence: u64) -> u64 {
    appender << 32 | sequence
}

#[test]
fn given_child_killed_with_sigkill_when_log_reopened_should_hold_every_acknowledged_record() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("partition-0");
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    const KILLS: usize = 6;
    for round in 0..KILLS {
        let kill_after = rng.random_range(1..400);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "kill::child_appender",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &log_dir)
            .env("HERALD_LOG_KILL_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let mut fields = rest.split(' ').map(|field| field.parse::<u64>().unwrap());
            let (offset, tag) = (fields.next().unwrap(), fields.next().unwrap());
            acknowledged.push((offset, tag));
            seen += 1;
            if seen == kill_after {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert!(
            seen >= kill_after,
            "child stopped before being killed (saw {seen} acks)"
        );
    }

    let log = Log::open(&log_dir, options(), std_env()).unwrap();
    let records = read_all(&log.reader(), 0);
    println!(
        "kill -9: {KILLS} kills, {} acknowledged records, {} recovered",
        acknowledged.len(),
        records.len()
    );
    for (offset, tag) in &acknowledged {
        let stored = records
            .get(*offset as usize)
            .unwrap_or_else(|| panic!("acknowledged offset {offset} lost"));
        assert_eq!(stored.offset, *offset);
        assert!(
            same(stored, &record(*tag, VALUE_LEN)),
            "offset {offset} holds other bytes"
        );
    }
    for (index, stored) in records.iter().enumerate() {
        assert_eq!(stored.offset, index as u64, "offsets are dense");
    }
}

/// The child: appends from several tasks until killed. Ignored, so it runs
/// only when the parent test starts it.
#[test]
#[ignore = "run by the kill -9 test as a child process"]
fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let round: u64 = std::env::var("HERALD_LOG_KILL_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let env = std_env();
        let metrics = Arc::clone(&env.metrics);
        let log = Log::open(dir, options(), env).unwrap();
        let handle = LogHandle::spawn(log, WriterOptions::default(), metrics).unwrap();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        for appender in 0..APPENDERS {
            let handle = handle.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                for sequence in 0.. {
                    let tag = tag(round * APPENDERS + appender, sequence);
                    let ack = handle.append(vec![record(tag, VALUE_LEN)]).await.unwrap();
                    if sender.send((ack.base_offset, tag)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        while let Some((offset, tag)) = receiver.recv().await {
            writeln!(stdout, "ACK {offset} {tag}").unwrap();
            stdout.flush().unwrap();
        }
    });
}
