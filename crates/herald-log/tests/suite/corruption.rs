//! Damage in the middle of the active segment (a disk fault in bytes that
//! were fsynced and acknowledged): recovery fences off the bad batch and
//! keeps every valid batch after it, instead of cutting the segment there.

use std::sync::Arc;

use herald_log::{Log, LogError, LogOptions, ManualClock, MemFs, Tail};

use crate::support::{batches, mem_dir, mem_env, read_all, record, same};

const BATCHES: u64 = 20;

/// A log with `BATCHES` acknowledged one-record appends under `fsync =
/// always`, left by a crash (no clean close).
fn crashed_log() -> MemFs {
    let fs = MemFs::new();
    let mut log = recover(&fs).unwrap();
    for tag in 0..BATCHES {
        log.append_round(&[&[record(tag, 60)]]).unwrap();
    }
    drop(log);
    fs.crash_image(Tail::Lost)
}

/// Opens the log on `fs` with default options (recovering it).
fn recover(fs: &MemFs) -> Result<Log, LogError> {
    Log::open(
        mem_dir(),
        LogOptions::default(),
        mem_env(fs, Arc::new(ManualClock::new(2_000))),
    )
}

fn active_path() -> std::path::PathBuf {
    mem_dir().join("00000000000000000000.log")
}

/// Flips the byte `at` bytes into batch `batch` of the first segment.
fn damage(fs: &MemFs, batch: usize, at: usize, xor: u8) {
    let bytes = fs.read_file(&active_path()).unwrap();
    let (position, _) = batches(&bytes)[batch];
    assert!(fs.corrupt_file(&active_path(), position + at, xor));
}

/// Checks that exactly the offsets in `lost` read as lost and every other
/// acknowledged record is served intact.
fn assert_fenced(log: &Log, lost: std::ops::Range<u64>) {
    let reader = log.reader();
    assert_eq!(
        reader.end_offset(),
        BATCHES,
        "no acknowledged batch was cut"
    );
    for offset in 0..BATCHES {
        match reader.read(offset, 1) {
            Ok(batch) if !lost.contains(&offset) => {
                assert_eq!(batch.records[0].offset, offset);
                assert!(
                    same(&batch.records[0], &record(offset, 60)),
                    "record {offset}"
                );
            }
            Err(LogError::Lost {
                from, resume_at, ..
            }) if lost.contains(&offset) => {
                assert_eq!((from, resume_at), (offset, lost.end));
            }
            other => panic!("offset {offset}: {other:?}"),
        }
    }
}

#[test]
fn given_bit_flip_in_a_middle_batch_of_the_active_segment_when_recovered_should_fence_it_and_keep_later_batches()
 {
    let image = crashed_log();
    damage(&image, 10, 50, 0x04);
    let env = mem_env(&image, Arc::new(ManualClock::new(2_000)));
    let metrics = Arc::clone(&env.metrics);
    let mut log = Log::open(mem_dir(), LogOptions::default(), env).unwrap();
    assert_fenced(&log, 10..11);
    assert_eq!(metrics.corrupt_batches_total(), 1);

    // The writer goes on after the last valid batch, and all of it survives
    // a clean reopen and another crash.
    let ack = log.append_round(&[&[record(99, 10)]]).unwrap();
    assert_eq!(ack[0].base_offset, BATCHES);
    drop(log);
    let image = image.crash_image(Tail::Lost);
    let log = recover(&image).unwrap();
    assert_eq!(log.reader().end_offset(), BATCHES + 1);
    let tail = read_all(&log.reader(), 11);
    assert_eq!(tail.len() as u64, BATCHES + 1 - 11);
    assert!(same(&tail[tail.len() - 1], &record(99, 10)));
}

#[test]
fn given_damaged_length_field_in_the_active_segment_when_recovered_should_find_the_next_batch_and_fence_only_the_bad_one()
 {
    for (at, xor) in [(8, 0x01), (10, 0x80), (11, 0xff), (0, 0x01), (16, 0x02)] {
        let image = crashed_log();
        damage(&image, 7, at, xor);
        let log = recover(&image).unwrap();
        assert_fenced(&log, 7..8);
    }
}

#[test]
fn given_damaged_first_and_last_but_one_batches_when_recovered_should_fence_both() {
    let image = crashed_log();
    damage(&image, 0, 45, 0x10);
    damage(&image, 18, 60, 0x10);
    let log = recover(&image).unwrap();
    let reader = log.reader();
    assert_eq!(reader.end_offset(), BATCHES);
    assert!(matches!(
        reader.read(0, 1),
        Err(LogError::Lost { resume_at: 1, .. })
    ));
    assert!(matches!(
        reader.read(18, 1),
        Err(LogError::Lost { resume_at: 19, .. })
    ));
    for offset in (1..18).chain(19..BATCHES) {
        let batch = reader.read(offset, 1).unwrap();
        assert!(
            same(&batch.records[0], &record(offset, 60)),
            "record {offset}"
        );
    }
}

#[test]
fn given_damage_in_the_last_batch_when_recovered_should_truncate_it_as_a_torn_tail() {
    let image = crashed_log();
    damage(&image, 19, 50, 0x04);
    let env = mem_env(&image, Arc::new(ManualClock::new(2_000)));
    let metrics = Arc::clone(&env.metrics);
    let mut log = Log::open(mem_dir(), LogOptions::default(), env).unwrap();
    assert_eq!(
        log.reader().end_offset(),
        19,
        "nothing valid after it: a tail"
    );
    assert!(metrics.recovery_truncated_bytes_total() > 0);
    assert_eq!(
        log.append_round(&[&[record(7, 1)]]).unwrap()[0].base_offset,
        19
    );
}

#[test]
fn given_damage_after_a_clean_close_when_reopened_should_never_serve_it_nor_cut_later_batches() {
    // Batches past the last index entry are validated at open and fenced;
    // batches before it are checked when read and refused.
    for (index_interval_bytes, refused_at_read) in [(4096, false), (256, true)] {
        let fs = MemFs::new();
        let clock = Arc::new(ManualClock::new(1_000));
        let options = LogOptions {
            index_interval_bytes,
            ..LogOptions::default()
        };
        let mut log =
            Log::open(mem_dir(), options.clone(), mem_env(&fs, Arc::clone(&clock))).unwrap();
        for tag in 0..BATCHES {
            log.append_round(&[&[record(tag, 60)]]).unwrap();
        }
        log.close().unwrap();
        damage(&fs, 10, 70, 0x01);
        let log = Log::open(mem_dir(), options, mem_env(&fs, clock)).unwrap();
        if refused_at_read {
            assert_eq!(log.reader().end_offset(), BATCHES);
            assert!(matches!(
                log.reader().read(10, 1),
                Err(LogError::Corrupt { .. })
            ));
            assert_eq!(read_all(&log.reader(), 11).len() as u64, BATCHES - 11);
        } else {
            assert_fenced(&log, 10..11);
        }
    }
}

/// A crash at any fsync of the recovery that fences the damage must leave a
/// disk the next recovery handles the same way.
#[test]
fn given_crash_during_the_recovery_of_a_damaged_active_segment_when_recovered_again_should_keep_every_other_batch()
 {
    for syncs in 0..8 {
        let image = crashed_log();
        damage(&image, 5, 44, 0x20);
        image.crash_after_syncs(syncs);
        let opened = recover(&image);
        drop(opened);
        let again = image.crash_image(Tail::Lost);
        let log = recover(&again).unwrap();
        assert_fenced(&log, 5..6);
    }
}
