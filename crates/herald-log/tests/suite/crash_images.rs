//! Crash images through the filesystem seam.
//!
//! Each image: a seeded random workload (commit rounds of random appends,
//! rolls, retention, clean reopens) runs on an in-memory filesystem armed to
//! stop the machine at a random fsync; the test then takes what a disk would
//! hold after power loss — only synced bytes, or synced bytes plus a torn
//! piece of the unsynced tail, or that piece with flipped bytes — reopens the
//! log on it and checks:
//!
//! 1. recovery succeeds (no error, no panic);
//! 2. the log is exactly a prefix of what was attempted: offsets dense from
//!    the start, every record byte-for-byte the one appended at that offset;
//! 3. under `fsync = always`, every acknowledged record is there;
//! 4. the recovered log takes new appends at its end, and they survive a
//!    clean reopen.

use std::sync::Arc;

use herald_log::{FsyncPolicy, Log, LogOptions, ManualClock, MemFs, NewRecord, Retention, Tail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{mem_dir, mem_env, read_all, record, same};

/// Randomized crash images per run of the normal test command.
const IMAGES: u64 = 10_000;

#[derive(Debug, Default)]
struct Tally {
    images: u64,
    torn: u64,
    corrupted_tails: u64,
    acknowledged_checked: u64,
    violations: Vec<String>,
}

#[test]
fn given_10000_random_crash_images_when_recovered_should_yield_a_prefix_with_every_acked_record() {
    let mut tally = Tally::default();
    for seed in 0..IMAGES {
        if let Err(violation) = run_image(seed, &mut tally) {
            tally.violations.push(format!("seed {seed}: {violation}"));
        }
    }
    println!(
        "crash images: {} run ({} torn tails, {} corrupted tails), {} acknowledged records checked, {} violations",
        tally.images,
        tally.torn,
        tally.corrupted_tails,
        tally.acknowledged_checked,
        tally.violations.len()
    );
    assert!(
        tally.violations.is_empty(),
        "violations:\n{}",
        tally.violations.join("\n")
    );
    assert_eq!(tally.images, IMAGES);
}

fn run_image(seed: u64, tally: &mut Tally) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let fsync = match rng.random_range(0..10) {
        0 => FsyncPolicy::Never,
        1 => FsyncPolicy::Interval(std::time::Duration::from_millis(10)),
        _ => FsyncPolicy::Always,
    };
    let options = LogOptions {
        fsync,
        segment_bytes: rng.random_range(300..4000),
        index_interval_bytes: rng.random_range(40..600),
        retention: Retention {
            max_records: rng.random_bool(0.3).then(|| rng.random_range(5..60)),
            ..Retention::default()
        },
        ..LogOptions::default()
    };
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let env = || mem_env(&fs, Arc::clone(&clock));
    let mut log =
        Some(Log::open(mem_dir(), options.clone(), env()).map_err(|error| error.to_string())?);
    fs.crash_after_syncs(rng.random_range(0..60));

    // Everything ever submitted, in offset order (offsets are assigned in
    // submission order), and how far acknowledgements reached.
    let mut attempted: Vec<NewRecord> = Vec::new();
    let mut acknowledged_end = 0u64;
    let mut tag = seed * 1_000_000;
    while let Some(current) = log.as_mut()
        && !fs.has_crashed()
    {
        match rng.random_range(0..100) {
            0..=84 => {
                let appends: Vec<Vec<NewRecord>> = (0..rng.random_range(1..5))
                    .map(|_| {
                        (0..rng.random_range(1..4))
                            .map(|_| {
                                tag += 1;
                                record(tag, rng.random_range(0..200))
                            })
                            .collect()
                    })
                    .collect();
                let slices: Vec<&[NewRecord]> = appends.iter().map(Vec::as_slice).collect();
                let result = current.append_round(&slices);
                attempted.extend(appends.into_iter().flatten());
                if let Ok(acks) = result {
                    acknowledged_end = acks
                        .last()
                        .map_or(acknowledged_end, |ack| ack.last_offset + 1);
                }
            }
            85..=89 => {
                let _ = current.roll();
            }
            90..=93 => {
                clock.advance(1_000);
                let _ = current.apply_retention();
            }
            94..=96 => {
                let _ = current.sync();
            }
            _ => {
                // A clean restart in the middle of the workload.
                if let Some(closing) = log.take() {
                    let _ = closing.close();
                }
                if !fs.has_crashed() {
                    let reopened = Log::open(mem_dir(), options.clone(), env())
                        .map_err(|error| format!("clean reopen: {error}"))?;
                    log = Some(reopened);
                }
            }
        }
    }
    drop(log);

    let tail = match rng.random_range(0..3) {
        0 => Tail::Lost,
        1 => {
            tally.torn += 1;
            Tail::Torn {
                keep: rng.random_range(0..400),
            }
        }
        _ => {
            tally.corrupted_tails += 1;
            Tail::Corrupt {
                keep: rng.random_range(1..400),
                every: rng.random_range(1..50),
                seed: rng.random(),
            }
        }
    };
    let image = fs.crash_image(tail);
    let image_env = || mem_env(&image, Arc::clone(&clock));
    let mut recovered = Log::open(mem_dir(), options.clone(), image_env())
        .map_err(|error| format!("recovery failed: {error}"))?;
    let reader = recovered.reader();
    let start = reader.start_offset();
    let end = reader.end_offset();
    let records = read_all(&reader, start);

    if records.len() as u64 != end - start {
        return Err(format!(
            "read {} records, expected {}..{end}",
            records.len(),
            start
        ));
    }
    for (index, stored) in records.iter().enumerate() {
        let offset = start + index as u64;
        if stored.offset != offset {
            return Err(format!(
                "offset {} where {offset} was expected",
                stored.offset
            ));
        }
        match attempted.get(offset as usize) {
            Some(original) if same(stored, original) => {}
            Some(_) => return Err(format!("record {offset} is not the one appended")),
            None => return Err(format!("record {offset} was never appended")),
        }
    }
    if options.fsync == FsyncPolicy::Always {
        if end < acknowledged_end {
            return Err(format!(
                "acknowledged up to {acknowledged_end}, recovered only to {end}"
            ));
        }
        tally.acknowledged_checked += acknowledged_end.saturating_sub(start);
    }

    // The recovered log goes on.
    let ack = recovered
        .append_round(&[&[record(u64::MAX - seed, 33)]])
        .map_err(|error| format!("append after recovery: {error}"))?;
    if ack[0].base_offset != end {
        return Err(format!(
            "append after recovery at {}, expected {end}",
            ack[0].base_offset
        ));
    }
    recovered
        .close()
        .map_err(|error| format!("close after recovery: {error}"))?;
    let reopened = Log::open(mem_dir(), options, image_env())
        .map_err(|error| format!("second reopen: {error}"))?;
    let last = reopened
        .reader()
        .read(end, 1024)
        .map_err(|error| error.to_string())?;
    if last.records.len() != 1 || !same(&last.records[0], &record(u64::MAX - seed, 33)) {
        return Err("the append after recovery did not survive a clean reopen".into());
    }
    tally.images += 1;
    Ok(())
}
