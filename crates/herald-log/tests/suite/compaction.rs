//! Erasure by compaction (`Log::erase`): what it leaves and what a crash in
//! the middle of it leaves.
//!
//! The crash images run a seeded workload (appends, rolls, reopens), then
//! erase a random set of offsets on a filesystem armed to stop at a random
//! fsync of the compaction, take what a disk would hold after power loss and
//! check that recovery:
//!
//! 1. succeeds and leaves no `.compacting` file behind;
//! 2. yields every acknowledged record at its offset, each either
//!    byte-for-byte the one appended or (if it was to be erased) erased;
//! 3. never serves a half-compacted segment: per segment, either every
//!    record to erase is erased or none is;
//! 4. can finish the job: erasing again erases them all, and the result
//!    survives a clean reopen (indexes consistent with the data).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use herald_log::{
    Filesystem, FsyncPolicy, Log, LogOptions, ManualClock, MemFs, NewRecord, Record, Tail,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::support::{mem_dir, mem_env, read_all, record, same};

/// Seeded crash images per run of the normal test command.
const IMAGES: u64 = 2_000;

fn marked(marker: &str, index: u64) -> NewRecord {
    NewRecord {
        key: Some(Bytes::from(format!("{marker}-key-{index}"))),
        headers: vec![herald_log::Header {
            name: "stm".into(),
            value: Bytes::from(format!("{marker}-header")),
        }],
        value: Bytes::from(format!("payload {marker} {index}")),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Every file of the log directory, with its bytes.
fn files(fs: &MemFs, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = fs.list(dir).expect("list");
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = fs.read_file(&dir.join(&name)).expect("read file");
            (name, bytes)
        })
        .collect()
}

#[test]
fn given_records_in_sealed_and_active_segments_when_erased_should_leave_no_bytes_and_keep_the_others()
 {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let options = LogOptions {
        segment_bytes: 600,
        index_interval_bytes: 100,
        ..LogOptions::default()
    };
    let mut log = Log::open(mem_dir(), options.clone(), mem_env(&fs, Arc::clone(&clock))).unwrap();
    let mut appended = Vec::new();
    let mut secret = Vec::new();
    for index in 0..40u64 {
        // Every fifth record is the secret one; the rest are other streams'.
        let record = if index % 5 == 0 {
            secret.push(index);
            marked("SECRET", index)
        } else {
            marked("other", index)
        };
        let other = marked("other", 1000 + index);
        log.append_round(&[&[record.clone(), other.clone()]])
            .unwrap();
        appended.push(record);
        appended.push(other);
    }
    // Offsets: record `index` of the loop is at 2 * index.
    let offsets: Vec<u64> = secret.iter().map(|index| index * 2).collect();
    let last_active = appended.len() as u64 - 2;
    let mut offsets_with_active = offsets.clone();
    offsets_with_active.push(last_active);

    let report = log.erase(&offsets_with_active).unwrap();
    assert!(report.segments > 1, "{report:?}");
    assert_eq!(report.records, offsets_with_active.len() as u64);
    let check = |records: &[Record]| {
        assert_eq!(records.len(), appended.len());
        for (offset, (stored, original)) in records.iter().zip(&appended).enumerate() {
            assert_eq!(stored.offset, offset as u64);
            if offsets_with_active.contains(&(offset as u64)) {
                assert!(stored.is_erased(), "offset {offset} not erased");
            } else {
                assert!(same(stored, original), "offset {offset} changed");
            }
        }
    };
    check(&read_all(&log.reader(), 0));
    // Erasing again rewrites nothing.
    assert_eq!(
        log.erase(&offsets_with_active).unwrap(),
        herald_log::Erased::default()
    );
    // The log goes on, and a clean reopen reads the same through the
    // rewritten indexes.
    let ack = log.append_round(&[&[marked("after", 1)]]).unwrap();
    assert_eq!(ack[0].base_offset, appended.len() as u64);
    log.close().unwrap();
    for (name, bytes) in files(&fs, &mem_dir()) {
        assert!(
            !contains(&bytes, b"SECRET"),
            "{name} still holds the secret"
        );
        assert!(!name.ends_with(".compacting"), "{name} left behind");
    }
    let log = Log::open(mem_dir(), options, mem_env(&fs, clock)).unwrap();
    let records = read_all(&log.reader(), 0);
    check(&records[..records.len() - 1]);
    // A read from the middle (through the sparse index) lands right.
    let middle = log.reader().read(37, 64).unwrap();
    assert_eq!(middle.records[0].offset, 37);
}

#[test]
fn given_offsets_outside_the_log_when_erased_should_do_nothing() {
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut log = Log::open(mem_dir(), LogOptions::default(), mem_env(&fs, clock)).unwrap();
    log.append_round(&[&[record(1, 10)]]).unwrap();
    let report = log.erase(&[5, 6, u64::MAX]).unwrap();
    assert_eq!(report, herald_log::Erased::default());
    assert_eq!(fs.list(&mem_dir()).unwrap().len(), 1, "no roll, no rewrite");
}

#[derive(Debug, Default)]
struct Tally {
    images: u64,
    switched: u64,
    not_switched: u64,
    violations: Vec<String>,
}

#[test]
fn given_2000_crash_images_during_compaction_when_recovered_should_serve_whole_segments_old_or_new()
{
    let mut tally = Tally::default();
    for seed in 0..IMAGES {
        if let Err(violation) = run_image(seed, &mut tally) {
            tally.violations.push(format!("seed {seed}: {violation}"));
        }
    }
    println!(
        "compaction crash images: {} run, {} segments found compacted, {} found untouched, {} violations",
        tally.images,
        tally.switched,
        tally.not_switched,
        tally.violations.len()
    );
    assert!(
        tally.violations.is_empty(),
        "violations:\n{}",
        tally.violations.join("\n")
    );
    assert!(tally.switched > 0 && tally.not_switched > 0, "{tally:?}");
}

fn run_image(seed: u64, tally: &mut Tally) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let options = LogOptions {
        fsync: FsyncPolicy::Always,
        segment_bytes: rng.random_range(300..2000),
        index_interval_bytes: rng.random_range(40..400),
        ..LogOptions::default()
    };
    let fs = MemFs::new();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let env = |fs: &MemFs| mem_env(fs, Arc::clone(&clock));
    let error = |context: &str| {
        let context = context.to_owned();
        move |error: herald_log::LogError| format!("{context}: {error}")
    };
    let mut log = Log::open(mem_dir(), options.clone(), env(&fs)).map_err(error("open"))?;
    let mut appended: Vec<NewRecord> = Vec::new();
    let mut tag = seed * 1_000_000;
    for _ in 0..rng.random_range(5..40) {
        match rng.random_range(0..10) {
            0 => log.roll().map_err(error("roll"))?,
            1 => {
                log.close().map_err(error("close"))?;
                log = Log::open(mem_dir(), options.clone(), env(&fs)).map_err(error("reopen"))?;
            }
            _ => {
                let records: Vec<NewRecord> = (0..rng.random_range(1..4))
                    .map(|_| {
                        tag += 1;
                        record(tag, rng.random_range(0..120))
                    })
                    .collect();
                log.append_round(&[&records]).map_err(error("append"))?;
                appended.extend(records);
            }
        }
    }
    if appended.is_empty() {
        log.append_round(&[&[record(tag + 1, 10)]])
            .map_err(error("append"))?;
        appended.push(record(tag + 1, 10));
    }
    let all: Vec<u64> = (0..appended.len() as u64).collect();
    let count = rng.random_range(1..=all.len().min(8));
    let mut to_erase: Vec<u64> = all.choose_multiple(&mut rng, count).copied().collect();
    to_erase.sort_unstable();

    fs.crash_after_syncs(rng.random_range(0..14));
    let _ = log.erase(&to_erase);
    drop(log);
    let tail = if rng.random_bool(0.5) {
        Tail::Lost
    } else {
        Tail::Torn {
            keep: rng.random_range(0..200),
        }
    };
    let image = fs.crash_image(tail);
    tally.images += 1;

    let mut recovered =
        Log::open(mem_dir(), options.clone(), env(&image)).map_err(error("recovery"))?;
    let names = image.list(&mem_dir()).map_err(|error| error.to_string())?;
    if let Some(name) = names.iter().find(|name| name.ends_with(".compacting")) {
        return Err(format!("{name} left behind"));
    }
    let records = read_all(&recovered.reader(), 0);
    if records.len() < appended.len() {
        return Err(format!(
            "{} records recovered, {} acknowledged",
            records.len(),
            appended.len()
        ));
    }
    check_records(&records, &appended, &to_erase, None)?;

    // Per segment: all or nothing.
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|name| name.strip_suffix(".log")?.parse().ok())
        .collect();
    bases.sort_unstable();
    for (position, base) in bases.iter().enumerate() {
        let next = bases.get(position + 1).copied().unwrap_or(u64::MAX);
        let in_segment: Vec<&Record> = to_erase
            .iter()
            .filter(|offset| (*base..next).contains(*offset))
            .filter_map(|offset| records.get(*offset as usize))
            .collect();
        let erased = in_segment
            .iter()
            .filter(|record| record.is_erased())
            .count();
        // An appended record may itself be empty, so count only the others.
        let erasable = in_segment
            .iter()
            .filter(|record| {
                let original = &appended[record.offset as usize];
                !(original.key.is_none()
                    && original.headers.is_empty()
                    && original.value.is_empty())
            })
            .count();
        let was_empty = in_segment.len() - erasable;
        if erasable == 0 {
            continue;
        }
        if erased == in_segment.len() {
            tally.switched += 1;
        } else if erased == was_empty {
            tally.not_switched += 1;
        } else {
            return Err(format!(
                "segment {base} is half compacted: {erased} of {} erased",
                in_segment.len()
            ));
        }
    }

    // Finish the job, and check it holds across a clean reopen.
    recovered
        .erase(&to_erase)
        .map_err(error("erase after recovery"))?;
    check_records(
        &read_all(&recovered.reader(), 0),
        &appended,
        &to_erase,
        Some(true),
    )?;
    recovered.close().map_err(error("close"))?;
    let reopened = Log::open(mem_dir(), options, env(&image)).map_err(error("clean reopen"))?;
    let records = read_all(&reopened.reader(), 0);
    check_records(&records, &appended, &to_erase, Some(true))?;
    // Reads through the sparse index from every offset land where asked.
    for offset in (0..appended.len() as u64).step_by(7) {
        let batch = reopened
            .reader()
            .read(offset, 1)
            .map_err(error("read after reopen"))?;
        if batch.records.first().map(|record| record.offset) != Some(offset) {
            return Err(format!("a read at {offset} did not start there"));
        }
    }
    Ok(())
}

/// Checks `records` against what was appended: each at its offset, erased
/// if `erased` says so (`None`: either is fine for offsets to erase).
fn check_records(
    records: &[Record],
    appended: &[NewRecord],
    to_erase: &[u64],
    erased: Option<bool>,
) -> Result<(), String> {
    for (offset, original) in appended.iter().enumerate() {
        let offset = offset as u64;
        let Some(stored) = records.get(offset as usize) else {
            return Err(format!("record {offset} is missing"));
        };
        if stored.offset != offset {
            return Err(format!(
                "offset {} where {offset} was expected",
                stored.offset
            ));
        }
        let targeted = to_erase.binary_search(&offset).is_ok();
        let intact = same(stored, original);
        let ok = match (targeted, erased) {
            (false, _) => intact,
            (true, None) => intact || stored.is_erased(),
            (true, Some(true)) => stored.is_erased(),
            (true, Some(false)) => intact,
        };
        if !ok {
            return Err(format!(
                "record {offset} is neither the original nor erased as expected"
            ));
        }
    }
    Ok(())
}
