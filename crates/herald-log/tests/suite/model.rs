//! Model-based property test: random appends, reads, rolls, retention, time
//! seeks, crashes and clean reopens against a `VecDeque` model.
//!
//! The log runs single-threaded with `fsync = always` on the in-memory
//! filesystem, so every acknowledged append is durable and after any crash
//! the recovered log must equal the model exactly.

use std::collections::VecDeque;
use std::sync::Arc;

use herald_log::{Clock, Log, LogOptions, ManualClock, MemFs, Retention, Tail};
use proptest::prelude::*;

use crate::support::{mem_dir, mem_env, read_all, record, same};

#[derive(Debug, Clone)]
enum Op {
    /// A commit round: one append per inner list, one record per size.
    Append(Vec<Vec<usize>>),
    /// Read from a point chosen inside `[start, end]`, up to `max_bytes`.
    Read {
        pick: u16,
        max_bytes: usize,
    },
    Roll,
    /// Advance the clock, then apply retention.
    Retention {
        advance_ms: i64,
    },
    /// Seek by a timestamp chosen among the model's.
    SeekTime {
        pick: u16,
    },
    /// Power loss, then reopen (the tail mode does not matter under always).
    Crash {
        keep: u64,
    },
    CleanReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(prop::collection::vec(0usize..300, 1..4), 1..4).prop_map(Op::Append),
        3 => (any::<u16>(), 1usize..3000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => Just(Op::Roll),
        1 => (0i64..5_000).prop_map(|advance_ms| Op::Retention { advance_ms }),
        1 => any::<u16>().prop_map(|pick| Op::SeekTime { pick }),
        1 => (0u64..500).prop_map(|keep| Op::Crash { keep }),
        1 => Just(Op::CleanReopen),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    tag: u64,
    len: usize,
    timestamp: i64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn given_random_operations_when_compared_to_a_model_should_agree(
        ops in prop::collection::vec(op(), 1..60),
        segment_bytes in 200u64..3000,
        index_interval in 32u32..800,
        max_records in prop::option::of(1u64..50),
        max_age_s in prop::option::of(1u64..10),
    ) {
        let options = LogOptions {
            segment_bytes,
            index_interval_bytes: index_interval,
            retention: Retention {
                max_records,
                max_age: max_age_s.map(std::time::Duration::from_secs),
                ..Retention::default()
            },
            ..LogOptions::default()
        };
        let clock = Arc::new(ManualClock::new(1_000_000));
        let mut fs = MemFs::new();
        let mut log = Log::open(mem_dir(), options.clone(), mem_env(&fs, Arc::clone(&clock))).unwrap();
        let mut model: VecDeque<Entry> = VecDeque::new();
        let mut next_offset = 0u64;
        let mut tag = 0u64;

        for op in ops {
            match op {
                Op::Append(appends) => {
                    let batches: Vec<Vec<_>> = appends
                        .iter()
                        .map(|sizes| sizes.iter().map(|len| { tag += 1; record(tag, *len) }).collect())
                        .collect();
                    let slices: Vec<&[_]> = batches.iter().map(Vec::as_slice).collect();
                    let acks = log.append_round(&slices).unwrap();
                    let mut tags = tag - appends.iter().map(Vec::len).sum::<usize>() as u64;
                    for (sizes, ack) in appends.iter().zip(&acks) {
                        prop_assert_eq!(ack.base_offset, next_offset);
                        for len in sizes {
                            tags += 1;
                            model.push_back(Entry { offset: next_offset, tag: tags, len: *len, timestamp: ack.timestamp });
                            next_offset += 1;
                        }
                    }
                    clock.advance(7);
                }
                Op::Read { pick, max_bytes } => {
                    let reader = log.reader();
                    let start = reader.start_offset();
                    let from = start + u64::from(pick) % (next_offset - start + 1);
                    let batch = reader.read(from, max_bytes).unwrap();
                    let expected: Vec<&Entry> = model.iter().filter(|entry| entry.offset >= from).collect();
                    prop_assert_eq!(batch.records.is_empty(), expected.is_empty());
                    prop_assert!(batch.records.len() <= expected.len());
                    for (stored, entry) in batch.records.iter().zip(expected) {
                        prop_assert_eq!(stored.offset, entry.offset);
                        prop_assert_eq!(stored.timestamp, entry.timestamp);
                        prop_assert!(same(stored, &record(entry.tag, entry.len)));
                    }
                }
                Op::Roll => log.roll().unwrap(),
                Op::Retention { advance_ms } => {
                    clock.advance(advance_ms);
                    log.apply_retention().unwrap();
                }
                Op::SeekTime { pick } => {
                    let reader = log.reader();
                    let target = model
                        .get(usize::from(pick) % (model.len() + 1))
                        .map_or(clock.now_ms() + 1, |entry| entry.timestamp + i64::from(pick % 2));
                    let expected = model.iter().find(|entry| entry.timestamp >= target).map_or(next_offset, |entry| entry.offset);
                    prop_assert_eq!(reader.offset_for_timestamp(target).unwrap(), expected);
                }
                Op::Crash { keep } => {
                    fs.crash_now();
                    drop(log);
                    fs = fs.crash_image(Tail::Torn { keep });
                    log = Log::open(mem_dir(), options.clone(), mem_env(&fs, Arc::clone(&clock))).unwrap();
                }
                Op::CleanReopen => {
                    log.close().unwrap();
                    log = Log::open(mem_dir(), options.clone(), mem_env(&fs, Arc::clone(&clock))).unwrap();
                }
            }
            // Invariants after every step.
            let reader = log.reader();
            let start = reader.start_offset();
            prop_assert_eq!(reader.end_offset(), next_offset);
            let model_start = model.front().map_or(next_offset, |entry| entry.offset);
            prop_assert!(start >= model_start, "start went backwards: {} < {}", start, model_start);
            while model.front().is_some_and(|entry| entry.offset < start) {
                model.pop_front();
            }
            if let Some(max) = max_records && max_age_s.is_none() {
                prop_assert!(next_offset - start >= max.min(next_offset), "retention removed too much");
            }
        }
        let records = read_all(&log.reader(), log.reader().start_offset());
        prop_assert_eq!(records.len(), model.len());
        for (stored, entry) in records.iter().zip(&model) {
            prop_assert_eq!(stored.offset, entry.offset);
            prop_assert!(same(stored, &record(entry.tag, entry.len)));
        }
    }
}
