//! Sparse per-segment indexes: offset → file position, and time → offset.
//!
//! ```text
//! Offset index entry (8 bytes, little-endian)      Time index entry (12 bytes)
//! 0  4  relative_offset u32  (offset - base)       0  8  timestamp       i64 (ms)
//! 4  4  position        u32  (batch start)         8  4  relative_offset u32
//! ```
//!
//! An entry is added for a batch when at least `index_interval_bytes` were
//! written since the previous entry, so a lookup reads at most about that many
//! bytes past the entry it lands on. Entries always point at a batch start.
//! Indexes are derived data: the active segment's live only in memory and are
//! written at seal and at clean close; recovery rebuilds any that are missing,
//! malformed, or disagree with the segment.

use bytes::Buf;

/// Bytes of one offset index entry.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Bytes of one time index entry.
pub const TIME_ENTRY_LEN: usize = 12;

/// Offset index of one segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    /// `(relative_offset, position)`, both strictly increasing.
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub(crate) fn push(&mut self, relative_offset: u32, position: u32) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|last| last.0 < relative_offset && last.1 < position)
        );
        self.entries.push((relative_offset, position));
    }

    /// The last entry at or before `relative_offset`, or the segment start.
    pub(crate) fn floor(&self, relative_offset: u32) -> (u32, u32) {
        let index = self
            .entries
            .partition_point(|entry| entry.0 <= relative_offset);
        if index == 0 {
            (0, 0)
        } else {
            self.entries[index - 1]
        }
    }

    pub(crate) fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN);
        for (relative_offset, position) in &self.entries {
            bytes.extend_from_slice(&relative_offset.to_le_bytes());
            bytes.extend_from_slice(&position.to_le_bytes());
        }
        bytes
    }

    /// Parses an index file, checking that entries increase and point inside a
    /// segment of `segment_len` bytes. `None` if the bytes are not a valid index.
    pub(crate) fn decode(mut bytes: &[u8], segment_len: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return None;
        }
        let mut index = Self {
            entries: Vec::with_capacity(bytes.len() / OFFSET_ENTRY_LEN),
        };
        while bytes.has_remaining() {
            let entry = (bytes.get_u32_le(), bytes.get_u32_le());
            let increasing = index
                .entries
                .last()
                .is_none_or(|last| last.0 < entry.0 && last.1 < entry.1);
            if !increasing || u64::from(entry.1) >= segment_len {
                return None;
            }
            index.entries.push(entry);
        }
        Some(index)
    }
}

/// Time index of one segment. Herald's append timestamps never decrease
/// within a partition, so the entries are sorted by both fields.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    /// `(timestamp, relative_offset)`: timestamp non-decreasing, offset increasing.
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    pub(crate) fn push(&mut self, timestamp: i64, relative_offset: u32) {
        self.entries.push((timestamp, relative_offset));
    }

    pub(crate) fn last_timestamp(&self) -> Option<i64> {
        self.entries.last().map(|entry| entry.0)
    }

    /// A relative offset from which a forward scan finds the first record
    /// with a timestamp at or after `timestamp`: the last entry strictly
    /// before it, or the segment start.
    pub(crate) fn scan_start(&self, timestamp: i64) -> u32 {
        let index = self.entries.partition_point(|entry| entry.0 < timestamp);
        if index == 0 {
            0
        } else {
            self.entries[index - 1].1
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len() * TIME_ENTRY_LEN);
        for (timestamp, relative_offset) in &self.entries {
            bytes.extend_from_slice(&timestamp.to_le_bytes());
            bytes.extend_from_slice(&relative_offset.to_le_bytes());
        }
        bytes
    }

    /// Parses a time index file; `None` if malformed or if an entry points
    /// at or past `record_count` records.
    pub(crate) fn decode(mut bytes: &[u8], record_count: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
            return None;
        }
        let mut index = Self {
            entries: Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN),
        };
        while bytes.has_remaining() {
            let entry = (bytes.get_i64_le(), bytes.get_u32_le());
            let sorted = index
                .entries
                .last()
                .is_none_or(|last| last.0 <= entry.0 && last.1 < entry.1);
            if !sorted || u64::from(entry.1) >= record_count {
                return None;
            }
            index.entries.push(entry);
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_entries_when_floor_should_return_last_at_or_before() {
        let mut index = OffsetIndex::default();
        index.push(10, 4096);
        index.push(20, 8192);
        assert_eq!(index.floor(0), (0, 0));
        assert_eq!(index.floor(9), (0, 0));
        assert_eq!(index.floor(10), (10, 4096));
        assert_eq!(index.floor(19), (10, 4096));
        assert_eq!(index.floor(500), (20, 8192));
    }

    #[test]
    fn given_encoded_index_when_decoded_should_round_trip_and_reject_garbage() {
        let mut index = OffsetIndex::default();
        index.push(10, 4096);
        index.push(20, 8192);
        let bytes = index.encode();
        assert_eq!(OffsetIndex::decode(&bytes, 10_000), Some(index));
        assert_eq!(
            OffsetIndex::decode(&bytes, 8192),
            None,
            "position past the segment"
        );
        assert_eq!(
            OffsetIndex::decode(&bytes[..5], 10_000),
            None,
            "partial entry"
        );
        let mut swapped = bytes.clone();
        swapped.rotate_left(OFFSET_ENTRY_LEN);
        assert_eq!(OffsetIndex::decode(&swapped, 10_000), None, "decreasing");
    }

    #[test]
    fn given_time_entries_when_scan_start_should_land_before_target() {
        let mut index = TimeIndex::default();
        index.push(100, 5);
        index.push(200, 9);
        assert_eq!(index.scan_start(50), 0);
        assert_eq!(index.scan_start(100), 0);
        assert_eq!(index.scan_start(150), 5);
        assert_eq!(index.scan_start(201), 9);
        let bytes = index.encode();
        assert_eq!(TimeIndex::decode(&bytes, 10), Some(index));
        assert_eq!(TimeIndex::decode(&bytes, 9), None);
    }
}
