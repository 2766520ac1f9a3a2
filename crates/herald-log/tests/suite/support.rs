//! Shared helpers for the log tests.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use herald_log::{
    Clock, Header, LogEnv, LogMetrics, ManualClock, MemFs, NewRecord, Record, SystemClock,
};

/// An environment over `fs` with a manual clock.
pub fn mem_env(fs: &MemFs, clock: Arc<ManualClock>) -> LogEnv {
    LogEnv {
        fs: Arc::new(fs.clone()),
        clock,
        metrics: LogMetrics::new(),
    }
}

/// An environment over the real filesystem and clock.
pub fn std_env() -> LogEnv {
    LogEnv {
        clock: Arc::new(SystemClock) as Arc<dyn Clock>,
        ..LogEnv::default()
    }
}

/// The directory the in-memory tests put their log in.
pub fn mem_dir() -> PathBuf {
    PathBuf::from("/data/topic/0")
}

/// A record whose bytes say who wrote it, so a test can check each one.
pub fn record(tag: u64, value_len: usize) -> NewRecord {
    let mut value = Vec::with_capacity(value_len);
    let mut state = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..value_len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        value.push(state as u8);
    }
    NewRecord {
        key: (!tag.is_multiple_of(3)).then(|| Bytes::from(format!("key-{}", tag % 7))),
        headers: if tag.is_multiple_of(2) {
            vec![Header {
                name: "tag".into(),
                value: Bytes::from(tag.to_le_bytes().to_vec()),
            }]
        } else {
            Vec::new()
        },
        value: Bytes::from(value),
    }
}

/// Whether a stored record holds exactly the bytes that were appended.
pub fn same(stored: &Record, appended: &NewRecord) -> bool {
    stored.key == appended.key
        && stored.headers == appended.headers
        && stored.value == appended.value
}

/// Reads every visible record of the log from `from`.
pub fn read_all(reader: &herald_log::LogReader, from: u64) -> Vec<Record> {
    let mut records = Vec::new();
    let mut next = from;
    loop {
        let batch = reader.read(next, 16 * 1024).expect("read");
        if batch.records.is_empty() {
            return records;
        }
        next = batch.next_offset;
        records.extend(batch.records);
    }
}

/// Where each batch of a segment file's bytes starts, and its length, by the
/// length fields (up to the first batch that does not fit).
pub fn batches(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut position = 0;
    while position + 12 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[position + 8..position + 12].try_into().unwrap());
        let total = 12 + length as usize;
        if total < 40 || position + total > bytes.len() {
            break;
        }
        found.push((position, total));
        position += total;
    }
    found
}
