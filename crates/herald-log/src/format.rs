//! The on-disk record batch: encoding, validation and decoding.
//!
//! A batch is the unit of write and of checksum. Every append becomes exactly
//! one batch, so a torn write loses whole appends, never part of one.
//!
//! ```text
//! Record batch (all integers little-endian)
//! pos  size  field
//! 0    8     base_offset      u64  offset of the first record
//! 8    4     length           u32  bytes from pos 12 to the end of the batch
//! 12   4     crc              u32  CRC32C (Castagnoli) of bytes 16..end
//! 16   1     magic            u8   format version, 1
//! 17   1     reserved         u8   0 (anything else is rejected)
//! 18   2     attributes       u16  0 (reserved for compression and control
//!                                     batches; version 1 rejects any flag)
//! 20   4     record_count     u32  >= 1
//! 24   8     first_timestamp  i64  ms since the Unix epoch
//! 32   8     max_timestamp    i64  >= first_timestamp
//! 40   ...   record_count records
//!
//! Record
//! pos  size  field
//! 0    4     length           u32  bytes after this field
//! 4    4     timestamp_delta  u32  ms after first_timestamp
//! 8    4     key_length       u32  0xFFFF_FFFF = no key
//! 12   k     key
//! .    2     header_count     u16
//! .          per header: name_length u16, name (UTF-8), value_length u32, value
//! .    4     value_length     u32
//! .    v     value
//! ```
//!
//! A record's offset is `base_offset` plus its index in the batch. The checksum
//! covers everything after the `crc` field, so a batch whose `base_offset` or
//! `length` was damaged is caught by the framing checks of recovery (offsets
//! must be dense, lengths must fit the file), and one whose body was damaged
//! by the CRC.

use bytes::{Buf, Bytes};

/// Bytes of the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 40;
/// Bytes before the `length` field's counted region (base offset + length).
pub const LENGTH_PREFIX_LEN: usize = 12;
/// The current format version.
pub const MAGIC: u8 = 1;
/// The largest batch accepted on read. A header claiming more is corrupt: this
/// bounds what a damaged length field can make recovery allocate.
pub const MAX_BATCH_LEN: usize = 64 * 1024 * 1024;
const NO_KEY: u32 = u32::MAX;
/// Smallest encoded record: length, timestamp delta, key length, header
/// count, value length.
pub(crate) const MIN_RECORD_LEN: usize = 4 + 4 + 4 + 2 + 4;

/// A record header: a name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name.
    pub name: HeaderName,
    /// The header's value.
    pub value: Bytes,
}

/// A header's name: UTF-8 text, held without a copy of its own (a static
/// string on append, a slice of the batch read on decode), so reading a
/// record allocates nothing per header.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HeaderName(Bytes);

impl HeaderName {
    /// A name from a static string (no allocation).
    pub const fn from_static(name: &'static str) -> Self {
        Self(Bytes::from_static(name.as_bytes()))
    }

    /// A name from bytes read back, if they are UTF-8.
    fn from_utf8(bytes: Bytes) -> Option<Self> {
        std::str::from_utf8(&bytes).ok()?;
        Some(Self(bytes))
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Every constructor takes UTF-8 (checked on decode).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The name's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the name is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for HeaderName {
    fn from(name: String) -> Self {
        Self(Bytes::from(name))
    }
}

impl From<&str> for HeaderName {
    fn from(name: &str) -> Self {
        Self(Bytes::copy_from_slice(name.as_bytes()))
    }
}

impl PartialEq<str> for HeaderName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for HeaderName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Partition key, if any.
    pub key: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// The payload.
    pub value: Bytes,
}

impl NewRecord {
    /// A record with only a value.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            key: None,
            headers: Vec::new(),
            value: value.into(),
        }
    }

    /// The size this record takes in a batch.
    pub fn encoded_len(&self) -> usize {
        MIN_RECORD_LEN
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|header| 2 + header.name.len() + 4 + header.value.len())
                .sum::<usize>()
            + self.value.len()
    }
}

/// A record read from the log. Its byte fields share the buffer the batch was
/// read into (no copy per field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Append time, ms since the Unix epoch.
    pub timestamp: i64,
    /// Partition key, if any.
    pub key: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// The payload.
    pub value: Bytes,
}

impl Record {
    /// Whether this is an erased record: no key, no headers, an empty value
    /// (what [`erase_records`] leaves in place of a record's contents). An
    /// append of such a record reads the same; callers that must tell them
    /// apart never append one.
    pub fn is_erased(&self) -> bool {
        self.key.is_none() && self.headers.is_empty() && self.value.is_empty()
    }
}

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Bytes from position 12 to the end of the batch.
    pub length: u32,
    /// CRC32C of bytes 16..end.
    pub crc: u32,
    /// Format version.
    pub magic: u8,
    /// Reserved flags.
    pub attributes: u16,
    /// Records in the batch.
    pub record_count: u32,
    /// Timestamp of the first record.
    pub first_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
}

impl BatchHeader {
    /// Parses the fixed header from the first [`BATCH_HEADER_LEN`] bytes and
    /// checks what can be checked without the body.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(FormatError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: bytes.len(),
            });
        }
        let mut cursor = &bytes[..BATCH_HEADER_LEN];
        let header = Self {
            base_offset: cursor.get_u64_le(),
            length: cursor.get_u32_le(),
            crc: cursor.get_u32_le(),
            magic: cursor.get_u8(),
            attributes: {
                cursor.advance(1);
                cursor.get_u16_le()
            },
            record_count: cursor.get_u32_le(),
            first_timestamp: cursor.get_i64_le(),
            max_timestamp: cursor.get_i64_le(),
        };
        if header.magic != MAGIC {
            return Err(FormatError::BadMagic(header.magic));
        }
        // Version 1 defines no flags: anything set is damage, not a feature.
        if header.attributes != 0 || bytes[17] != 0 {
            return Err(FormatError::UnknownAttributes(header.attributes));
        }
        let total = header.total_len();
        if !(BATCH_HEADER_LEN..=MAX_BATCH_LEN).contains(&total) {
            return Err(FormatError::BadLength(header.length));
        }
        if header.record_count == 0
            || header.record_count as usize > (total - BATCH_HEADER_LEN) / MIN_RECORD_LEN
        {
            return Err(FormatError::BadRecordCount(header.record_count));
        }
        if header.max_timestamp < header.first_timestamp {
            return Err(FormatError::BadTimestamps);
        }
        if header
            .base_offset
            .checked_add(u64::from(header.record_count))
            .is_none()
        {
            return Err(FormatError::OffsetOverflow);
        }
        Ok(header)
    }

    /// The whole batch's size in bytes.
    pub fn total_len(&self) -> usize {
        LENGTH_PREFIX_LEN + self.length as usize
    }

    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the batch needs.
    #[error("batch truncated: needs {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// Unknown format version.
    #[error("unknown batch format version {0}")]
    BadMagic(u8),
    /// Flags this format version does not define.
    #[error("unknown batch attributes {0:#06x}")]
    UnknownAttributes(u16),
    /// The length field is out of bounds.
    #[error("batch length {0} out of bounds")]
    BadLength(u32),
    /// The record count does not fit the length.
    #[error("record count {0} does not fit the batch")]
    BadRecordCount(u32),
    /// `max_timestamp < first_timestamp`.
    #[error("batch timestamps out of order")]
    BadTimestamps,
    /// `base_offset + record_count` overflows.
    #[error("batch offsets overflow")]
    OffsetOverflow,
    /// The checksum does not match the bytes.
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// A record's framing is inconsistent with the batch.
    #[error("malformed record {index}: {reason}")]
    BadRecord {
        /// The record's index in the batch.
        index: u32,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Appends the batch of `records` (at least one) to `buffer`, all stamped
/// `timestamp`; returns the header written.
pub fn encode_batch(
    buffer: &mut Vec<u8>,
    base_offset: u64,
    timestamp: i64,
    records: &[NewRecord],
) -> BatchHeader {
    debug_assert!(!records.is_empty(), "a batch has at least one record");
    let start = begin_batch(
        buffer,
        base_offset,
        records.len() as u32,
        timestamp,
        timestamp,
    );
    for record in records {
        encode_record(
            buffer,
            0,
            record.key.as_ref(),
            &record.headers,
            &record.value,
        );
    }
    finish_batch(buffer, start)
}

/// Rewrites the batch in `batch` (one whole, valid batch) into `buffer` with
/// the records whose offset `erase` selects replaced by *erased records*: no
/// key, no headers, an empty value, the same timestamp. Offsets, the record
/// count and the batch timestamps stay; the length and CRC are recomputed.
/// Returns the new header and how many records were erased (records already
/// empty are not counted).
pub fn erase_records(
    buffer: &mut Vec<u8>,
    batch: &Bytes,
    erase: impl Fn(u64) -> bool,
) -> Result<(BatchHeader, u32), FormatError> {
    let (header, records) = decode_batch(batch)?;
    let start = begin_batch(
        buffer,
        header.base_offset,
        header.record_count,
        header.first_timestamp,
        header.max_timestamp,
    );
    let mut erased = 0;
    for record in &records {
        // decode_batch checked first_timestamp <= timestamp <= max_timestamp.
        let delta = (record.timestamp - header.first_timestamp) as u32;
        if erase(record.offset) {
            if !record.is_erased() {
                erased += 1;
            }
            encode_record(buffer, delta, None, &[], &Bytes::new());
        } else {
            encode_record(
                buffer,
                delta,
                record.key.as_ref(),
                &record.headers,
                &record.value,
            );
        }
    }
    Ok((finish_batch(buffer, start), erased))
}

/// Writes a batch header with the length and CRC left blank; returns where
/// the batch starts. [`finish_batch`] fills them in.
fn begin_batch(
    buffer: &mut Vec<u8>,
    base_offset: u64,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
) -> usize {
    let start = buffer.len();
    buffer.extend_from_slice(&base_offset.to_le_bytes());
    buffer.extend_from_slice(&[0; 8]); // length and crc, filled by finish_batch
    buffer.push(MAGIC);
    buffer.push(0);
    buffer.extend_from_slice(&0u16.to_le_bytes());
    buffer.extend_from_slice(&record_count.to_le_bytes());
    buffer.extend_from_slice(&first_timestamp.to_le_bytes());
    buffer.extend_from_slice(&max_timestamp.to_le_bytes());
    start
}

fn encode_record(
    buffer: &mut Vec<u8>,
    timestamp_delta: u32,
    key: Option<&Bytes>,
    headers: &[Header],
    value: &Bytes,
) {
    let length = MIN_RECORD_LEN - 4
        + key.map_or(0, Bytes::len)
        + headers
            .iter()
            .map(|header| 2 + header.name.len() + 4 + header.value.len())
            .sum::<usize>()
        + value.len();
    buffer.extend_from_slice(&(length as u32).to_le_bytes());
    buffer.extend_from_slice(&timestamp_delta.to_le_bytes());
    match key {
        Some(key) => {
            buffer.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buffer.extend_from_slice(key);
        }
        None => buffer.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    buffer.extend_from_slice(&(headers.len() as u16).to_le_bytes());
    for header in headers {
        buffer.extend_from_slice(&(header.name.len() as u16).to_le_bytes());
        buffer.extend_from_slice(header.name.as_bytes());
        buffer.extend_from_slice(&(header.value.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&header.value);
    }
    buffer.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buffer.extend_from_slice(value);
}

/// Fills in the length and CRC of the batch starting at `start`, which runs
/// to the end of `buffer`; returns its header.
fn finish_batch(buffer: &mut [u8], start: usize) -> BatchHeader {
    let length = (buffer.len() - start - LENGTH_PREFIX_LEN) as u32;
    buffer[start + 8..start + 12].copy_from_slice(&length.to_le_bytes());
    let crc = checksum(&buffer[start + 16..]);
    buffer[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    let field = |from: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&buffer[start + from..start + from + 8]);
        bytes
    };
    let mut count = [0u8; 4];
    count.copy_from_slice(&buffer[start + 20..start + 24]);
    BatchHeader {
        base_offset: u64::from_le_bytes(field(0)),
        length,
        crc,
        magic: MAGIC,
        attributes: 0,
        record_count: u32::from_le_bytes(count),
        first_timestamp: i64::from_le_bytes(field(24)),
        max_timestamp: i64::from_le_bytes(field(32)),
    }
}

/// The batch checksum (CRC32C) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Checks the batch's header and checksum. `bytes` must hold exactly one batch.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = BatchHeader::parse(bytes)?;
    let total = header.total_len();
    if bytes.len() < total {
        return Err(FormatError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    }
    let computed = checksum(&bytes[16..total]);
    if computed != header.crc {
        return Err(FormatError::Checksum {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Validates a whole batch and decodes its records. The records' byte fields
/// are slices of `bytes`. This is the function the fuzzer drives: for any
/// input it returns a result, never panics, and never allocates more than
/// the input's size in records.
pub fn decode_batch(bytes: &Bytes) -> Result<(BatchHeader, Vec<Record>), FormatError> {
    let header = validate_batch(bytes)?;
    let mut body = bytes.slice(BATCH_HEADER_LEN..header.total_len());
    let mut records = Vec::with_capacity(header.record_count as usize);
    for index in 0..header.record_count {
        let bad = |reason| FormatError::BadRecord { index, reason };
        if body.remaining() < 4 {
            return Err(bad("length past the batch end"));
        }
        let length = body.get_u32_le() as usize;
        if length > body.remaining() || length + 4 < MIN_RECORD_LEN {
            return Err(bad("length out of bounds"));
        }
        let mut record = body.split_to(length);
        let delta = record.get_u32_le();
        let key_length = record.get_u32_le();
        let key = if key_length == NO_KEY {
            None
        } else {
            Some(
                take(&mut record, key_length as usize)
                    .ok_or_else(|| bad("key past the record end"))?,
            )
        };
        if record.remaining() < 2 {
            return Err(bad("header count past the record end"));
        }
        let header_count = record.get_u16_le();
        let mut headers = Vec::with_capacity(usize::from(header_count).min(record.remaining() / 6));
        for _ in 0..header_count {
            if record.remaining() < 2 {
                return Err(bad("header name past the record end"));
            }
            let name_length = usize::from(record.get_u16_le());
            let name = take(&mut record, name_length)
                .ok_or_else(|| bad("header name past the record end"))?;
            let name =
                HeaderName::from_utf8(name).ok_or_else(|| bad("header name is not UTF-8"))?;
            if record.remaining() < 4 {
                return Err(bad("header value past the record end"));
            }
            let value_length = record.get_u32_le() as usize;
            let value = take(&mut record, value_length)
                .ok_or_else(|| bad("header value past the record end"))?;
            headers.push(Header { name, value });
        }
        if record.remaining() < 4 {
            return Err(bad("value length past the record end"));
        }
        let value_length = record.get_u32_le() as usize;
        let value =
            take(&mut record, value_length).ok_or_else(|| bad("value past the record end"))?;
        if record.has_remaining() {
            return Err(bad("trailing bytes in the record"));
        }
        let timestamp = header
            .first_timestamp
            .checked_add(i64::from(delta))
            .filter(|timestamp| *timestamp <= header.max_timestamp)
            .ok_or_else(|| bad("timestamp past the batch's max"))?;
        records.push(Record {
            offset: header.base_offset + u64::from(index),
            timestamp,
            key,
            headers,
            value,
        });
    }
    if body.has_remaining() {
        return Err(FormatError::BadRecord {
            index: header.record_count,
            reason: "trailing bytes after the last record",
        });
    }
    Ok((header, records))
}

fn take(bytes: &mut Bytes, length: usize) -> Option<Bytes> {
    (bytes.remaining() >= length).then(|| bytes.split_to(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<NewRecord> {
        vec![
            NewRecord {
                key: Some(Bytes::from_static(b"order-1")),
                headers: vec![Header {
                    name: "type".into(),
                    value: Bytes::from_static(b"created"),
                }],
                value: Bytes::from_static(b"{\"amount\":3}"),
            },
            NewRecord::new(Bytes::new()),
        ]
    }

    #[test]
    fn given_records_when_encoded_and_decoded_should_round_trip() {
        let mut buffer = Vec::new();
        let written = encode_batch(&mut buffer, 42, 1_700_000_000_000, &sample());
        assert_eq!(buffer.len(), written.total_len());
        let (header, records) = decode_batch(&Bytes::from(buffer)).unwrap();
        assert_eq!(header, written);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].offset, 42);
        assert_eq!(records[1].offset, 43);
        assert_eq!(records[0].key.as_deref(), Some(&b"order-1"[..]));
        assert_eq!(records[0].headers, sample()[0].headers);
        assert_eq!(records[1].key, None);
        assert_eq!(records[1].timestamp, 1_700_000_000_000);
    }

    #[test]
    fn given_a_batch_when_a_record_is_erased_should_keep_offsets_and_the_other_record() {
        let mut buffer = Vec::new();
        let original = encode_batch(&mut buffer, 42, 1_700_000_000_000, &sample());
        let mut rewritten = Vec::new();
        let (header, erased) =
            erase_records(&mut rewritten, &Bytes::from(buffer), |offset| offset == 42).unwrap();
        assert_eq!(erased, 1);
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.record_count, original.record_count);
        assert!(header.total_len() < original.total_len());
        let (_, records) = decode_batch(&Bytes::from(rewritten)).unwrap();
        assert!(records[0].is_erased());
        assert_eq!(records[0].offset, 42);
        assert_eq!(records[0].timestamp, 1_700_000_000_000);
        assert_eq!(records[1].offset, 43);
        // The second record was empty to begin with: it reads as erased too,
        // which is why herald-embedded never appends empty records.
        assert!(records[1].is_erased());
    }

    #[test]
    fn given_any_flipped_bit_when_decoded_should_fail() {
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, 7, 5, &sample());
        // Every byte after the length prefix is covered by framing or CRC.
        for position in 12..buffer.len() {
            let mut damaged = buffer.clone();
            damaged[position] ^= 0x01;
            assert!(
                decode_batch(&Bytes::from(damaged)).is_err(),
                "flip at {position} not caught"
            );
        }
    }

    /// The sample batch with `change` applied to its bytes and its CRC
    /// computed again: damage only the record framing can catch.
    fn resealed(change: impl FnOnce(&mut Vec<u8>)) -> Bytes {
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, 7, 5, &sample());
        change(&mut buffer);
        let crc = checksum(&buffer[16..]);
        buffer[12..16].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(buffer)
    }

    #[test]
    fn given_bad_record_framing_under_a_valid_crc_when_decoded_should_say_where() {
        // The first record: length at 40, delta 44, key length 48, key
        // "order-1" 52..59, header count 59, name length 61, name "type"
        // 63..67, value length 67, value "created" 71..78, value length 78.
        let h = BATCH_HEADER_LEN;
        let reason = |bytes: Bytes| match decode_batch(&bytes) {
            Err(FormatError::BadRecord { index, reason }) => (index, reason),
            other => panic!("expected a bad record, got {other:?}"),
        };
        let key_too_long = resealed(|b| b[h + 8..h + 12].copy_from_slice(&1_000u32.to_le_bytes()));
        assert_eq!(reason(key_too_long), (0, "key past the record end"));
        let name_not_utf8 = resealed(|b| b[h + 23] = 0xff);
        assert_eq!(reason(name_not_utf8), (0, "header name is not UTF-8"));
        let header_value_too_long =
            resealed(|b| b[h + 27..h + 31].copy_from_slice(&1_000u32.to_le_bytes()));
        assert_eq!(
            reason(header_value_too_long),
            (0, "header value past the record end")
        );
        let record_too_long = resealed(|b| b[h..h + 4].copy_from_slice(&100_000u32.to_le_bytes()));
        assert_eq!(reason(record_too_long), (0, "length out of bounds"));
        let too_many_records = resealed(|b| b[20..24].copy_from_slice(&3u32.to_le_bytes()));
        assert_eq!(reason(too_many_records), (2, "length past the batch end"));
        let too_few_records = resealed(|b| b[20..24].copy_from_slice(&1u32.to_le_bytes()));
        assert_eq!(
            reason(too_few_records),
            (1, "trailing bytes after the last record")
        );
    }

    #[test]
    fn given_truncated_batch_when_decoded_should_fail() {
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, 0, 0, &sample());
        for cut in 0..buffer.len() {
            assert!(decode_batch(&Bytes::copy_from_slice(&buffer[..cut])).is_err());
        }
    }
}
