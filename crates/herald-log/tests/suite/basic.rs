//! The log's API: appends, reads, segments, indexes, retention, waiting.

use std::sync::Arc;
use std::time::Duration;

use herald_log::{
    FsyncPolicy, Log, LogError, LogHandle, LogMetrics, LogOptions, ManualClock, MemFs, NewRecord,
    Retention, Tail, WriterOptions,
};

use crate::support::{mem_dir, mem_env, read_all, record, same, std_env};

fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        ..LogOptions::default()
    }
}

#[test]
fn given_appends_when_read_back_should_return_every_record_in_order() {
    let fs = MemFs::new();
    let mut log = Log::open(
        mem_dir(),
        small_segments(),
        mem_env(&fs, Arc::new(ManualClock::new(1_000))),
    )
    .unwrap();
    let mut appended = Vec::new();
    for round in 0..40u64 {
        let batch: Vec<NewRecord> = (0..3).map(|index| record(round * 3 + index, 50)).collect();
        let acks = log.append_round(&[&batch]).unwrap();
        assert_eq!(acks[0].base_offset, round * 3);
        assert_eq!(acks[0].last_offset, round * 3 + 2);
        appended.extend(batch);
    }
    let reader = log.reader();
    assert_eq!(reader.end_offset(), 120);
    let records = read_all(&reader, 0);
    assert_eq!(records.len(), 120);
    for (offset, (stored, original)) in records.iter().zip(&appended).enumerate() {
        assert_eq!(stored.offset, offset as u64);
        assert!(same(stored, original), "record {offset} differs");
    }
    // Several segments were rolled, and reads from any offset land exactly.
    assert!(
        fs.read_file(&mem_dir().join("00000000000000000000.index"))
            .is_some()
    );
    for from in [0, 1, 17, 59, 60, 119] {
        let batch = reader.read(from, 1).unwrap();
        assert_eq!(batch.records[0].offset, from);
        assert!(same(&batch.records[0], &appended[from as usize]));
    }
    assert!(reader.read(120, 1024).unwrap().records.is_empty());
}

#[test]
fn given_a_record_limit_when_read_should_stop_after_the_batch_that_reaches_it() {
    let fs = MemFs::new();
    let mut log = Log::open(
        mem_dir(),
        small_segments(),
        mem_env(&fs, Arc::new(ManualClock::new(1_000))),
    )
    .unwrap();
    // Batches of 3 records over several segments.
    for round in 0..40u64 {
        let batch: Vec<NewRecord> = (0..3).map(|index| record(round * 3 + index, 20)).collect();
        log.append_round(&[&batch]).unwrap();
    }
    let reader = log.reader();
    // Whole batches: 4 records wanted from offset 1 take the rest of the
    // first batch (1, 2) and the whole second one (3, 4, 5).
    let batch = reader.read_limited(1, 1 << 20, 4).unwrap();
    let offsets: Vec<u64> = batch.records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    assert_eq!(batch.next_offset, 6);
    // Without a limit the same byte budget reads on, across segments.
    assert!(reader.read(1, 1 << 20).unwrap().records.len() > 5);
    // A limit of one still returns a record; reading on from each next
    // offset visits every record once, in order.
    let mut next = 0;
    let mut seen = Vec::new();
    while let Ok(batch) = reader.read_skipping_lost_limited(next, 1 << 20, 1) {
        if batch.records.is_empty() {
            break;
        }
        assert!(batch.records.len() <= 3, "one batch at most");
        seen.extend(batch.records.iter().map(|record| record.offset));
        next = batch.next_offset;
    }
    assert_eq!(seen, (0..120).collect::<Vec<u64>>());
}

#[test]
fn given_clean_close_when_reopened_should_keep_records_and_continue_offsets() {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(1_000));
    let mut log = Log::open(
        mem_dir(),
        small_segments(),
        mem_env(&fs, Arc::clone(&clock)),
    )
    .unwrap();
    for tag in 0..50 {
        log.append_round(&[&[record(tag, 80)]]).unwrap();
    }
    log.close().unwrap();
    assert!(fs.read_file(&mem_dir().join("CLEAN")).is_some());

    let mut log = Log::open(
        mem_dir(),
        small_segments(),
        mem_env(&fs, Arc::clone(&clock)),
    )
    .unwrap();
    assert!(
        fs.read_file(&mem_dir().join("CLEAN")).is_none(),
        "marker removed on open"
    );
    assert_eq!(log.reader().end_offset(), 50);
    let ack = log.append_round(&[&[record(50, 80)]]).unwrap();
    assert_eq!(ack[0].base_offset, 50);
    let records = read_all(&log.reader(), 0);
    assert_eq!(records.len(), 51);
    assert!(
        records
            .iter()
            .all(|stored| same(stored, &record(stored.offset, 80)))
    );
}

#[test]
fn given_timestamps_when_seeking_by_time_should_find_first_record_at_or_after() {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(10_000));
    let mut log = Log::open(
        mem_dir(),
        small_segments(),
        mem_env(&fs, Arc::clone(&clock)),
    )
    .unwrap();
    for tag in 0..100 {
        log.append_round(&[&[record(tag, 40)]]).unwrap();
        clock.advance(10);
    }
    let reader = log.reader();
    // Record n was appended at 10_000 + 10 n.
    assert_eq!(reader.offset_for_timestamp(0).unwrap(), 0);
    assert_eq!(reader.offset_for_timestamp(10_000).unwrap(), 0);
    assert_eq!(reader.offset_for_timestamp(10_001).unwrap(), 1);
    assert_eq!(reader.offset_for_timestamp(10_500).unwrap(), 50);
    assert_eq!(reader.offset_for_timestamp(10_990).unwrap(), 99);
    assert_eq!(
        reader.offset_for_timestamp(11_000).unwrap(),
        100,
        "past the end: the end offset"
    );
    // A clock that steps back does not make timestamps go backwards.
    clock.set(5_000);
    let ack = log.append_round(&[&[record(100, 40)]]).unwrap();
    assert_eq!(ack[0].timestamp, 10_990);
}

#[test]
fn given_retention_limits_when_applied_should_remove_oldest_sealed_segments_only() {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = LogOptions {
        retention: Retention {
            max_records: Some(30),
            ..Retention::default()
        },
        ..small_segments()
    };
    let mut log = Log::open(mem_dir(), options.clone(), mem_env(&fs, Arc::clone(&clock))).unwrap();
    for tag in 0..200 {
        log.append_round(&[&[record(tag, 60)]]).unwrap();
    }
    let removed = log.apply_retention().unwrap();
    assert!(removed > 0);
    let reader = log.reader();
    let start = reader.start_offset();
    assert!(
        start > 0 && 200 - start >= 30,
        "kept at least 30 records, start {start}"
    );
    assert!(
        matches!(reader.read(0, 100), Err(LogError::OffsetOutOfRange { start: s, .. }) if s == start)
    );
    let kept = read_all(&reader, start);
    assert_eq!(kept.first().map(|stored| stored.offset), Some(start));
    assert_eq!(kept.len() as u64, 200 - start);
    let oldest = mem_dir().join("00000000000000000000.log");
    assert!(
        fs.read_file(&oldest).is_none(),
        "the oldest segment's file is gone"
    );
    log.close().unwrap();
    // The start survives a reopen.
    let log = Log::open(mem_dir(), options, mem_env(&fs, Arc::clone(&clock))).unwrap();
    assert_eq!(log.reader().start_offset(), start);
}

#[test]
fn given_age_retention_when_everything_expired_should_keep_only_an_empty_active_segment() {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = LogOptions {
        retention: Retention {
            max_age: Some(Duration::from_secs(60)),
            ..Retention::default()
        },
        ..small_segments()
    };
    let mut log = Log::open(mem_dir(), options, mem_env(&fs, Arc::clone(&clock))).unwrap();
    for tag in 0..100 {
        log.append_round(&[&[record(tag, 60)]]).unwrap();
    }
    assert_eq!(log.apply_retention().unwrap(), 0, "nothing is old yet");
    clock.advance(61_000);
    assert!(log.apply_retention().unwrap() > 0);
    let reader = log.reader();
    assert_eq!(reader.start_offset(), 100);
    assert_eq!(reader.end_offset(), 100);
    assert_eq!(
        log.append_round(&[&[record(100, 10)]]).unwrap()[0].base_offset,
        100
    );
}

#[test]
fn given_size_retention_when_applied_should_keep_at_least_max_bytes() {
    let fs = MemFs::new();
    let options = LogOptions {
        retention: Retention {
            max_bytes: Some(5_000),
            ..Retention::default()
        },
        ..small_segments()
    };
    let mut log = Log::open(
        mem_dir(),
        options,
        mem_env(&fs, Arc::new(ManualClock::new(0))),
    )
    .unwrap();
    for tag in 0..300 {
        log.append_round(&[&[record(tag, 60)]]).unwrap();
    }
    log.apply_retention().unwrap();
    let size = log.reader().size_bytes();
    assert!(
        (5_000..5_000 + 2 * 2048 + 200).contains(&size),
        "size {size}"
    );
}

#[test]
fn given_corrupt_byte_in_sealed_segment_when_read_should_report_and_never_serve_it() {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(0));
    let env = mem_env(&fs, Arc::clone(&clock));
    let metrics = Arc::clone(&env.metrics);
    let mut log = Log::open(mem_dir(), small_segments(), env).unwrap();
    for tag in 0..60 {
        log.append_round(&[&[record(tag, 60)]]).unwrap();
    }
    // Damage a record's value in the middle of the first (sealed) segment.
    let first = mem_dir().join("00000000000000000000.log");
    assert!(fs.corrupt_file(&first, 700, 0xff));
    let reader = log.reader();
    let error = read_all_result(&reader).unwrap_err();
    assert!(matches!(error, LogError::Corrupt { .. }), "{error}");
    assert_eq!(metrics.corrupt_batches_total(), 1);
    // Records before the damage are still served.
    assert_eq!(reader.read(0, 1).unwrap().records[0].offset, 0);
    log.close().unwrap();

    // After a reopen the damage is still refused, not served.
    let log = Log::open(mem_dir(), small_segments(), mem_env(&fs, clock)).unwrap();
    assert!(read_all_result(&log.reader()).is_err());
}

fn read_all_result(reader: &herald_log::LogReader) -> Result<Vec<herald_log::Record>, LogError> {
    let mut next = reader.start_offset();
    let mut all = Vec::new();
    loop {
        let batch = reader.read(next, 512)?;
        if batch.records.is_empty() {
            return Ok(all);
        }
        next = batch.next_offset;
        all.extend(batch.records);
    }
}

#[test]
fn given_missing_or_garbage_index_when_reopened_should_rebuild_it() {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(0));
    let mut log = Log::open(
        mem_dir(),
        small_segments(),
        mem_env(&fs, Arc::clone(&clock)),
    )
    .unwrap();
    for tag in 0..100 {
        log.append_round(&[&[record(tag, 60)]]).unwrap();
    }
    log.close().unwrap();
    let index = mem_dir().join("00000000000000000000.index");
    let original = fs.read_file(&index).unwrap();
    assert!(!original.is_empty());
    herald_log::Filesystem::remove(&fs, &index).unwrap();
    let garbage = mem_dir().join("00000000000000000000.timeindex");
    assert!(fs.corrupt_file(&garbage, 0, 0x80));

    let log = Log::open(mem_dir(), small_segments(), mem_env(&fs, clock)).unwrap();
    assert_eq!(
        fs.read_file(&index).unwrap(),
        original,
        "rebuilt identically"
    );
    let records = read_all(&log.reader(), 0);
    assert_eq!(records.len(), 100);
    assert_eq!(log.reader().offset_for_timestamp(1).unwrap(), 100);
}

#[test]
fn given_bad_appends_when_checked_should_be_refused_without_writing() {
    let fs = MemFs::new();
    let options = LogOptions {
        max_batch_bytes: 1024,
        ..LogOptions::default()
    };
    let mut log = Log::open(
        mem_dir(),
        options,
        mem_env(&fs, Arc::new(ManualClock::new(0))),
    )
    .unwrap();
    assert!(matches!(
        log.append_round(&[&[]]),
        Err(LogError::EmptyAppend)
    ));
    assert!(matches!(
        log.append_round(&[&[record(0, 2000)]]),
        Err(LogError::BatchTooLarge { max: 1024, .. })
    ));
    assert_eq!(log.reader().end_offset(), 0);
    assert!(
        LogOptions {
            segment_bytes: 0,
            ..LogOptions::default()
        }
        .validate()
        .is_err()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const APPENDERS: u64 = 32;
const EACH: u64 = 20;

/// Runs `APPENDERS` tasks each appending `EACH` records in sequence; checks
/// that every append is acknowledged once at a dense offset, in each
/// appender's order, and stored as sent. Returns the commit rounds.
fn concurrent_appends(fsync: FsyncPolicy) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let env = std_env();
    let metrics = Arc::clone(&env.metrics);
    let options = LogOptions {
        fsync,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path().join("p0"), options, env).unwrap();
    let handle = LogHandle::spawn(log, WriterOptions::default(), Arc::clone(&metrics)).unwrap();
    runtime().block_on(async {
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|appender| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let mut offsets = Vec::new();
                    for sequence in 0..EACH {
                        let ack = handle
                            .append(vec![record(appender * 1000 + sequence, 128)])
                            .await
                            .unwrap();
                        offsets.push((ack.base_offset, appender * 1000 + sequence));
                    }
                    offsets
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            let offsets = task.await.unwrap();
            assert!(
                offsets.windows(2).all(|pair| pair[0].0 < pair[1].0),
                "one appender's appends are stored in its order"
            );
            acked.extend(offsets);
        }
        acked.sort_unstable();
        let offsets: Vec<u64> = acked.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(
            offsets,
            (0..APPENDERS * EACH).collect::<Vec<_>>(),
            "dense, each once"
        );
        let reader = handle.reader().clone();
        let records = tokio::task::spawn_blocking(move || read_all(&reader, 0))
            .await
            .unwrap();
        for (stored, (_, tag)) in records.iter().zip(&acked) {
            assert!(same(stored, &record(*tag, 128)));
        }
        handle.close().await.unwrap();
        assert!(matches!(
            handle.append(vec![record(0, 1)]).await,
            Err(LogError::Closed)
        ));
    });
    metrics.commit_rounds_total()
}

#[test]
fn given_concurrent_appenders_when_fsync_always_should_group_commit_and_ack_every_append() {
    let rounds = concurrent_appends(FsyncPolicy::Always);
    assert!(
        rounds < APPENDERS * EACH,
        "{rounds} rounds for {} appends: no group commit",
        APPENDERS * EACH
    );
}

/// Under `never`, an append to an idle writer is written on the caller's
/// thread and the rest queue: the mix must keep every guarantee.
#[test]
fn given_concurrent_appenders_when_fsync_never_should_ack_every_append_once_in_order() {
    concurrent_appends(FsyncPolicy::Never);
}

#[test]
fn given_reader_at_tail_when_record_appended_should_wake() {
    let fs = MemFs::new();
    let log = Log::open(
        mem_dir(),
        LogOptions::default(),
        mem_env(&fs, Arc::new(ManualClock::new(0))),
    )
    .unwrap();
    let handle = LogHandle::spawn(log, WriterOptions::default(), LogMetrics::new()).unwrap();
    runtime().block_on(async {
        let reader = handle.reader().clone();
        let waiter = tokio::spawn(async move { reader.wait_for(0).await });
        tokio::task::yield_now().await;
        handle.append(vec![record(1, 1)]).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), 1);
        let reader = handle.reader().clone();
        let waiter = tokio::spawn(async move { reader.wait_for(5).await });
        handle.close().await.unwrap();
        assert!(matches!(waiter.await.unwrap(), Err(LogError::Closed)));
    });
}

/// A log on `fs` under `fsync = interval` (5 ms) and its writer.
fn interval_log(fs: &MemFs, metrics: Arc<LogMetrics>) -> LogHandle {
    let options = LogOptions {
        fsync: FsyncPolicy::Interval(Duration::from_millis(5)),
        ..LogOptions::default()
    };
    let log = Log::open(
        mem_dir(),
        options,
        mem_env(fs, Arc::new(ManualClock::new(0))),
    )
    .unwrap();
    LogHandle::spawn(log, WriterOptions::default(), metrics).unwrap()
}

/// Waits (bounded) until `fs` has synced more than `after` times.
fn wait_for_sync(fs: &MemFs, after: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs.syncs() == after {
        assert!(
            std::time::Instant::now() < deadline,
            "no interval fsync within 10 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An append written on the caller's thread while the writer sleeps must
/// still get its interval fsync: the writer is woken to schedule it.
#[test]
fn given_interval_policy_when_inline_append_dirties_a_clean_log_should_sync_it() {
    let fs = MemFs::new();
    let metrics = LogMetrics::new();
    let handle = interval_log(&fs, Arc::clone(&metrics));
    runtime().block_on(async {
        // Until an append goes inline onto a clean log (the writer may hold
        // its lock for a moment and take one through the queue instead).
        for tag in 0..1000 {
            // A round trip through the writer, then a moment for it to go
            // back to sleep (if it has not, this only makes the test weaker).
            handle.sync().await.unwrap();
            std::thread::sleep(Duration::from_millis(10));
            let syncs = fs.syncs();
            let inline = metrics.inline_appends_total();
            handle.append(vec![record(tag, 100)]).await.unwrap();
            if metrics.inline_appends_total() > inline {
                wait_for_sync(&fs, syncs);
                handle.close().await.unwrap();
                return;
            }
            wait_for_sync(&fs, syncs);
        }
        panic!("no append was written inline");
    });
}

#[test]
fn given_interval_policy_when_idle_should_sync_within_the_interval() {
    let fs = MemFs::new();
    let handle = interval_log(&fs, LogMetrics::new());
    let syncs_before = fs.syncs();
    runtime().block_on(async {
        handle.append(vec![record(1, 100)]).await.unwrap();
        wait_for_sync(&fs, syncs_before);
        let image = fs.crash_image(Tail::Lost);
        let recovered = Log::open(
            mem_dir(),
            LogOptions::default(),
            mem_env(&image, Arc::new(ManualClock::new(0))),
        )
        .unwrap();
        assert_eq!(
            recovered.reader().end_offset(),
            1,
            "the synced record survives a crash"
        );
        handle.close().await.unwrap();
    });
}
