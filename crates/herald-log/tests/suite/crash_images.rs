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
//!
//! The workload also makes the disk full or fail an fsync now and then
//! (`Fault::NoSpace`, `Fault::SyncFails`, which forgets the dirty bytes as
//! Linux does), heals it and lets the log recover from its failed state;
//! the crash may strike during that recovery too.
//!
//! A third of the images also get a bit flip in the middle of the active
//! segment (a batch followed by another complete one, often in bytes that
//! were fsynced and acknowledged), as a disk fault would leave. Then the
//! damaged batch is never served, and every other record is: no valid,
//! acknowledged batch after the damage is cut.

use std::sync::Arc;

use std::ops::Range;

use herald_log::{
    Fault, Filesystem, FsyncPolicy, Log, LogError, LogOptions, ManualClock, MemFs, NewRecord,
    Record, Retention, Tail,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{batches, mem_dir, mem_env, record, same};

/// Randomized crash images per run of the normal test command.
const IMAGES: u64 = 10_000;

#[derive(Debug, Default)]
struct Tally {
    images: u64,
    torn: u64,
    corrupted_tails: u64,
    middle_flips: u64,
    faults: u64,
    acknowledged_checked: u64,
    violations: Vec<String>,
}

#[test]
fn given_10000_random_crash_images_when_recovered_should_yield_a_prefix_with_every_acked_record() {
    let mut tally = Tally::default();
    for seed in std::env::var("CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .map_or(0..IMAGES, |seed: u64| seed..seed + 1)
    {
        if let Err(violation) = run_image(seed, &mut tally) {
            tally.violations.push(format!("seed {seed}: {violation}"));
        }
    }
    println!(
        "crash images: {} run ({} torn tails, {} corrupted tails, {} bit flips mid active segment, {} disk faults recovered from), {} acknowledged records checked, {} violations",
        tally.images,
        tally.torn,
        tally.corrupted_tails,
        tally.middle_flips,
        tally.faults,
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
                // A round refused without a crash was never written.
                if result.is_ok() || fs.has_crashed() {
                    attempted.extend(appends.into_iter().flatten());
                }
                if let Ok(acks) = result {
                    acknowledged_end = acks
                        .last()
                        .map_or(acknowledged_end, |ack| ack.last_offset + 1);
                }
            }
            97 | 98 => {
                // The disk fills up or fails an fsync for one round (or one
                // sync), then heals; the log recovers (a crash may strike
                // during the recovery's own syncs).
                tally.faults += 1;
                let fault = if rng.random_bool(0.5) {
                    Fault::NoSpace
                } else {
                    Fault::SyncFails
                };
                fs.inject(fault);
                let records: Vec<NewRecord> = (0..rng.random_range(1..4))
                    .map(|_| {
                        tag += 1;
                        record(tag, rng.random_range(0..200))
                    })
                    .collect();
                let result = current.append_round(&[&records]);
                if result.is_ok() || fs.has_crashed() {
                    attempted.extend(records);
                }
                if let Ok(acks) = result {
                    acknowledged_end = acks[0].last_offset + 1;
                }
                let _ = current.sync();
                fs.heal();
                if !fs.has_crashed() {
                    let _ = current.recover();
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
    let damaged = if rng.random_bool(0.33) {
        flip_in_middle_of_active_segment(&image, &mut rng)
    } else {
        None
    };
    if damaged.is_some() {
        tally.middle_flips += 1;
    }
    let damaged = damaged.unwrap_or(0..0);
    let image_env = || mem_env(&image, Arc::clone(&clock));
    let mut recovered = Log::open(mem_dir(), options.clone(), image_env())
        .map_err(|error| format!("recovery failed: {error}"))?;
    let reader = recovered.reader();
    let start = reader.start_offset();
    let end = reader.end_offset();
    let (records, fenced) = read_fenced(&reader, start)?;

    for record in &records {
        let offset = record.offset;
        if damaged.contains(&offset) {
            return Err(format!("record {offset} of the damaged batch was served"));
        }
        match attempted.get(offset as usize) {
            Some(original) if same(record, original) => {}
            Some(_) => return Err(format!("record {offset} is not the one appended")),
            None => return Err(format!("record {offset} was never appended")),
        }
    }
    // Offsets are dense: every offset is served, or fenced as the damage.
    let served: Vec<u64> = records.iter().map(|record| record.offset).collect();
    let mut expected = start;
    for offset in served.iter().copied().chain(std::iter::once(end)) {
        while expected < offset {
            if !fenced.iter().any(|range| range.contains(&expected)) {
                return Err(format!(
                    "offset {expected} is neither served nor fenced (served {}..{}, fenced {fenced:?}, damaged {damaged:?}, end {end})",
                    served.first().copied().unwrap_or(0),
                    served.last().copied().unwrap_or(0)
                ));
            }
            if !damaged.contains(&expected) {
                return Err(format!("offset {expected} was fenced but not damaged"));
            }
            expected += 1;
        }
        expected = offset + 1;
    }
    if options.fsync == FsyncPolicy::Always {
        // Every acknowledged record but the damaged ones is there.
        let missing = (start..acknowledged_end)
            .find(|offset| !damaged.contains(offset) && served.binary_search(offset).is_err());
        if let Some(offset) = missing {
            return Err(format!(
                "acknowledged up to {acknowledged_end}, offset {offset} missing (recovered to {end})"
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

/// Flips one byte of a batch of the image's active segment that another
/// complete batch follows; returns the damaged batch's offsets.
fn flip_in_middle_of_active_segment(image: &MemFs, rng: &mut StdRng) -> Option<Range<u64>> {
    let base = image
        .list(&mem_dir())
        .ok()?
        .iter()
        .filter_map(|name| name.strip_suffix(".log")?.parse::<u64>().ok())
        .max()?;
    let path = mem_dir().join(format!("{base:020}.log"));
    let bytes = image.read_file(&path)?;
    let found = batches(&bytes);
    if found.len() < 2 {
        return None;
    }
    let (position, total) = found[rng.random_range(0..found.len() - 1)];
    let first = u64::from_le_bytes(bytes[position..position + 8].try_into().ok()?);
    let count = u32::from_le_bytes(bytes[position + 20..position + 24].try_into().ok()?);
    let at = position + rng.random_range(0..total);
    image.corrupt_file(&path, at, rng.random_range(1..=255));
    Some(first..first + u64::from(count))
}

/// Every record readable from `from`, stepping over fenced ranges (read as
/// [`LogError::Lost`]); returns the records and the fenced ranges.
fn read_fenced(
    reader: &herald_log::LogReader,
    from: u64,
) -> Result<(Vec<Record>, Vec<Range<u64>>), String> {
    let (mut records, mut fenced) = (Vec::new(), Vec::new());
    let mut next = from;
    loop {
        match reader.read(next, 16 * 1024) {
            Ok(batch) if batch.records.is_empty() => return Ok((records, fenced)),
            Ok(batch) => {
                next = batch.next_offset;
                records.extend(batch.records);
            }
            Err(LogError::Lost {
                from, resume_at, ..
            }) => {
                fenced.push(from..resume_at);
                next = resume_at;
            }
            Err(error) => return Err(format!("read at {next}: {error}")),
        }
    }
}
