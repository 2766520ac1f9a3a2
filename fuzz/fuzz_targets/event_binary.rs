//! Drives the CloudEvents HTTP binary-mode decoder
//! (`EventInput::from_binary`: `ce-*` headers, `Content-Type`, the body)
//! with arbitrary input. The input is read as lines: the first is the
//! content type (empty: none), then `name: value` header lines up to an
//! empty line, then the body, as is. The decoder must return a result,
//! never panic; an accepted event is valid and renders to binary headers
//! and to structured JSON that decode back to the same event.
#![no_main]

use bytes::Bytes;
use herald_fuzz::{NOW_MS, assert_binary_round_trip, assert_json_round_trip};
use herald_types::EventInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|pair| pair == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    // Header values are visible ASCII in HTTP; the decoder is handed &str.
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let mut lines = head.split('\n');
    let content_type = lines.next().filter(|line| !line.is_empty());
    let headers: Vec<(&str, &str)> = lines
        .map(|line| {
            line.split_once(':')
                .map_or((line, ""), |(name, value)| (name, value.trim_start()))
        })
        .collect();
    let Ok(input) = EventInput::from_binary(
        headers.iter().copied(),
        content_type,
        Bytes::copy_from_slice(body),
        NOW_MS,
    ) else {
        return;
    };
    assert!(input.event.validate().is_ok());
    assert_binary_round_trip(&input.event);
    // The body is taken as is: JSON data may come with any whitespace.
    assert_json_round_trip(&input.event, false);
});
