//! Drives the record batch decoder with arbitrary bytes. For every input it
//! must return a result, never panic; whatever it accepts must re-encode to
//! the same bytes, so damaged bytes can never decode as some other batch.
//!
//! The CRC would stop almost every input at the door, so each input is also
//! decoded a second time with its checksum fixed up: that copy reaches the
//! record parser, where the framing checks must hold on their own.
#![no_main]

use bytes::Bytes;
use herald_log::format::{BATCH_HEADER_LEN, decode_batch, encode_batch, NewRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= BATCH_HEADER_LEN {
        let mut fixed = data.to_vec();
        let length = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
        let end = (12 + length).clamp(16, fixed.len());
        let crc = crc32c(&fixed[16..end]);
        fixed[12..16].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    let Ok((header, records)) = decode_batch(&input) else { return };
    assert_eq!(records.len(), header.record_count as usize);
    // This format version stamps every record with the batch's timestamp;
    // re-encode and compare when the input did too.
    let same_timestamps = header.max_timestamp == header.first_timestamp
        && records.iter().all(|record| record.timestamp == header.first_timestamp);
    if same_timestamps {
        let new_records: Vec<NewRecord> = records
            .iter()
            .map(|record| NewRecord {
                key: record.key.clone(),
                headers: record.headers.clone(),
                value: record.value.clone(),
            })
            .collect();
        let mut encoded = Vec::new();
        encode_batch(&mut encoded, header.base_offset, header.first_timestamp, &new_records);
        assert_eq!(&encoded[..], &data[..header.total_len()]);
    }
}

fn crc32c(bytes: &[u8]) -> u32 {
    herald_log::format::checksum(bytes)
}
