//! Disk full and I/O errors: a failed write or fsync puts the log in a
//! failed state that refuses appends fast; the writer probes the disk and
//! recovers by itself once it works again, losing nothing acknowledged and
//! duplicating nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_log::{
    Fault, FsyncPolicy, Log, LogError, LogHandle, LogOptions, ManualClock, MemFs, Tail,
    WriterOptions,
};

use crate::support::{mem_dir, mem_env, read_all, record, same};

fn open(fs: &MemFs, fsync: FsyncPolicy) -> Log {
    let options = LogOptions {
        fsync,
        ..LogOptions::default()
    };
    Log::open(
        mem_dir(),
        options,
        mem_env(fs, Arc::new(ManualClock::new(1_000))),
    )
    .unwrap()
}

/// What a machine that lost power now would recover: the tags of the
/// records at each offset from 0 (`None` for offsets fenced off as lost).
fn after_power_loss(fs: &MemFs, tags: &[u64]) -> Vec<Option<u64>> {
    let image = fs.crash_image(Tail::Torn { keep: 1 << 20 });
    let log = open(&image, FsyncPolicy::Always);
    let reader = log.reader();
    (0..reader.end_offset())
        .map(|offset| match reader.read(offset, 1) {
            Ok(batch) => {
                let stored = &batch.records[0];
                tags.iter()
                    .copied()
                    .find(|tag| same(stored, &record(*tag, 50)))
            }
            Err(LogError::Lost { .. }) => None,
            Err(error) => panic!("offset {offset}: {error}"),
        })
        .collect()
}

fn append(log: &mut Log, tag: u64) -> Result<u64, LogError> {
    log.append_round(&[&[record(tag, 50)]])
        .map(|acks| acks[0].base_offset)
}

#[test]
fn given_failed_fsync_when_appending_should_fail_the_round_refuse_appends_and_recover_once_the_disk_works()
 {
    let fs = MemFs::new();
    let mut log = open(&fs, FsyncPolicy::Always);
    let metrics = Arc::clone(log.metrics());
    assert_eq!(append(&mut log, 0).unwrap(), 0);
    fs.inject(Fault::SyncFails);
    assert!(matches!(append(&mut log, 1), Err(LogError::Io { .. })));
    let refused = append(&mut log, 2).unwrap_err();
    assert!(matches!(refused, LogError::Failed { .. }), "{refused}");
    assert!(refused.is_retryable());
    let failure = log.reader().failure().expect("the log reports its failure");
    assert!(
        failure.error.to_string().contains("fsync"),
        "{}",
        failure.error
    );
    assert_eq!(
        log.reader().end_offset(),
        1,
        "the failed round never became visible"
    );
    assert!(log.recover().is_err(), "the disk still fails");

    fs.heal();
    log.recover().unwrap();
    assert!(log.reader().failure().is_none());
    assert_eq!(
        append(&mut log, 3).unwrap(),
        1,
        "the failed round's offset is reused: it was never visible"
    );
    assert_eq!(metrics.io_failures_total(), 1);
    assert_eq!(metrics.recoveries_total(), 1);
    assert_eq!(metrics.failed_logs(), 0);
    assert_eq!(after_power_loss(&fs, &[0, 1, 2, 3]), [Some(0), Some(3)]);
}

#[test]
fn given_full_disk_when_appending_should_refuse_until_space_returns_then_keep_every_acked_record_once()
 {
    let fs = MemFs::new();
    let mut log = open(&fs, FsyncPolicy::Always);
    for tag in 0..3 {
        append(&mut log, tag).unwrap();
    }
    fs.inject(Fault::NoSpace);
    let error = append(&mut log, 3).unwrap_err();
    assert!(error.to_string().contains("No space left"), "{error}");
    assert!(matches!(append(&mut log, 4), Err(LogError::Failed { .. })));
    assert!(log.recover().is_err(), "still full: the probe write fails");
    assert_eq!(log.metrics().failed_logs(), 1);
    assert!(log.reader().failure().is_some());
    // Readers are not affected.
    assert_eq!(read_all(&log.reader(), 0).len(), 3);

    fs.heal();
    log.recover().unwrap();
    assert_eq!(append(&mut log, 5).unwrap(), 3);
    assert_eq!(append(&mut log, 6).unwrap(), 4);
    assert_eq!(
        after_power_loss(&fs, &[0, 1, 2, 3, 4, 5, 6]),
        [Some(0), Some(1), Some(2), Some(5), Some(6)],
        "no byte of the failed round survives"
    );
}

/// Under `interval`, appends are acknowledged once written; a failed fsync
/// may have dropped their dirty pages (Linux marks them clean). Recovery
/// writes them again from what reads still see, so a later power loss does
/// not take them.
#[test]
fn given_failed_interval_fsync_when_recovered_should_write_the_acked_unsynced_records_again() {
    let fs = MemFs::new();
    let mut log = open(&fs, FsyncPolicy::Interval(Duration::from_secs(60)));
    for tag in 0..5 {
        append(&mut log, tag).unwrap();
    }
    fs.inject(Fault::SyncFails);
    assert!(log.sync().is_err());
    assert!(matches!(append(&mut log, 5), Err(LogError::Failed { .. })));
    fs.heal();
    log.recover().unwrap();
    assert_eq!(append(&mut log, 6).unwrap(), 5);
    log.sync().unwrap();
    assert_eq!(
        after_power_loss(&fs, &[0, 1, 2, 3, 4, 5, 6]),
        [Some(0), Some(1), Some(2), Some(3), Some(4), Some(6)]
    );
}

/// If the dropped pages were also evicted, the acknowledged records are
/// gone: their offsets are fenced off as lost, never given to new records.
#[test]
fn given_failed_fsync_and_evicted_pages_when_recovered_should_fence_the_lost_offsets_and_never_reuse_them()
 {
    let fs = MemFs::new();
    let mut log = open(&fs, FsyncPolicy::Interval(Duration::from_secs(60)));
    append(&mut log, 0).unwrap();
    log.sync().unwrap();
    for tag in 1..4 {
        append(&mut log, tag).unwrap();
    }
    fs.inject(Fault::SyncFails);
    assert!(log.sync().is_err());
    fs.evict_forgotten();
    fs.heal();
    log.recover().unwrap();
    let reader = log.reader();
    assert_eq!(reader.end_offset(), 4, "visible offsets never go back");
    assert!(matches!(
        reader.read(1, 1),
        Err(LogError::Lost {
            from: 1,
            resume_at: 4,
            ..
        })
    ));
    assert_eq!(append(&mut log, 4).unwrap(), 4);
    log.sync().unwrap();
    assert_eq!(
        after_power_loss(&fs, &[0, 1, 2, 3, 4]),
        [Some(0), None, None, None, Some(4)]
    );
}

/// Waits until the writer has recovered the log by itself (at most 10 s).
async fn until_recovered(handle: &LogHandle) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.failure().is_some() {
        assert!(Instant::now() < deadline, "not recovered within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The writer thread probes a failed log with backoff and recovers it by
/// itself; appends meanwhile fail fast.
#[test]
fn given_writer_with_full_disk_when_space_returns_should_recover_by_itself() {
    let fs = MemFs::new();
    let log = open(&fs, FsyncPolicy::Always);
    let metrics = Arc::clone(log.metrics());
    let handle = LogHandle::spawn(log, WriterOptions::default(), Arc::clone(&metrics)).unwrap();
    runtime().block_on(async {
        handle.append(vec![record(0, 50)]).await.unwrap();
        fs.inject(Fault::NoSpace);
        assert!(handle.append(vec![record(1, 50)]).await.is_err());
        let refused = handle.append(vec![record(2, 50)]).await.unwrap_err();
        assert!(matches!(refused, LogError::Failed { .. }), "{refused}");
        assert!(handle.failure().is_some());

        fs.heal();
        until_recovered(&handle).await;
        let ack = handle.append(vec![record(3, 50)]).await.unwrap();
        assert_eq!(ack.base_offset, 1);
        assert_eq!(metrics.recoveries_total(), 1);
        handle.close().await.unwrap();
    });
    assert_eq!(after_power_loss(&fs, &[0, 1, 2, 3]), [Some(0), Some(3)]);
}

#[test]
fn given_failed_log_when_dropped_should_no_longer_count_as_failed() {
    let fs = MemFs::new();
    let mut log = open(&fs, FsyncPolicy::Always);
    let metrics = Arc::clone(log.metrics());
    fs.inject(Fault::NoSpace);
    assert!(append(&mut log, 0).is_err());
    assert_eq!(metrics.failed_logs(), 1);
    drop(log);
    assert_eq!(metrics.failed_logs(), 0);
}

/// A failed log under `interval` asks for no interval fsync (which would be
/// refused at once, and the writer would spin on it); the probe takes over.
#[test]
fn given_failed_interval_log_when_asked_for_its_sync_deadline_should_leave_it_to_the_probe() {
    let fs = MemFs::new();
    let mut log = open(&fs, FsyncPolicy::Interval(Duration::from_millis(5)));
    append(&mut log, 0).unwrap();
    assert!(log.sync_deadline().is_some());
    fs.inject(Fault::SyncFails);
    assert!(log.sync().is_err());
    assert!(log.sync_deadline().is_none());
    assert!(log.probe_deadline().is_some());
    fs.heal();
    log.recover().unwrap();
    assert!(log.probe_deadline().is_none());
}

/// Under `never`, an append to an idle writer runs on the caller's thread;
/// if the disk refuses it there, the writer thread must still learn that
/// it has a failed log to probe.
#[test]
fn given_inline_append_refused_by_a_full_disk_when_space_returns_should_recover_by_itself() {
    let fs = MemFs::new();
    let log = open(&fs, FsyncPolicy::Never);
    let metrics = Arc::clone(log.metrics());
    let handle = LogHandle::spawn(log, WriterOptions::default(), Arc::clone(&metrics)).unwrap();
    runtime().block_on(async {
        // Once a control command is answered and an append ran inline, the
        // writer sleeps in its queue (an inline append under `never` does
        // not wake it): the next ones run inline too.
        handle.sync().await.unwrap();
        let mut appended = 0;
        while metrics.inline_appends_total() == 0 {
            handle.append(vec![record(appended, 50)]).await.unwrap();
            appended += 1;
            assert!(appended < 1000, "no append ran inline");
        }
        fs.inject(Fault::NoSpace);
        assert!(handle.append(vec![record(1000, 50)]).await.is_err());
        assert!(handle.failure().is_some());
        fs.heal();
        until_recovered(&handle).await;
        let ack = handle.append(vec![record(1001, 50)]).await.unwrap();
        assert_eq!(ack.base_offset, appended);
        handle.close().await.unwrap();
    });
}
