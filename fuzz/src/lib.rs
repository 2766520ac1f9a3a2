//! What the fuzz targets assert of the event codecs, shared by them: an
//! event one decoder accepted renders in each content mode to something the
//! matching decoder accepts back as the same event.

use bytes::Bytes;
use herald_types::{Event, EventInput, ExtensionValue};

/// The clock the targets decode with (2026-01-01T00:00:00Z), for `delay_ms`
/// and generated ids.
pub const NOW_MS: i64 = 1_767_225_600_000;

/// Structured mode: the event rendered as CloudEvents JSON parses back to
/// itself. `data` is compared as is, unless `exact_data` is false and the
/// content type is JSON: then by its JSON value, since JSON data is stored
/// compact and only a decoder that takes bytes as they are (binary mode,
/// gRPC) can hand in other whitespace.
pub fn assert_json_round_trip(event: &Event, exact_data: bool) {
    let json = serde_json::to_vec(event).expect("an accepted event renders as JSON");
    let back = match EventInput::from_json(&json, NOW_MS) {
        Ok(back) => back.event,
        Err(error) => panic!(
            "the JSON rendering of an accepted event is refused: {error}\n{}",
            String::from_utf8_lossy(&json)
        ),
    };
    if exact_data || !event.is_json() {
        assert_eq!(
            &back,
            event,
            "JSON rendering: {}",
            String::from_utf8_lossy(&json)
        );
    } else {
        let (mut left, mut right) = (back.clone(), event.clone());
        assert_eq!(json_value(&left.data), json_value(&right.data));
        left.data = None;
        right.data = None;
        assert_eq!(
            left,
            right,
            "JSON rendering: {}",
            String::from_utf8_lossy(&json)
        );
    }
}

/// Binary mode: the event sent as `ce-*` headers, `Content-Type` and body
/// parses back to itself, but for extensions, which headers carry as
/// strings.
pub fn assert_binary_round_trip(event: &Event) {
    let headers = event.binary_headers();
    let body = event.data.clone().unwrap_or_default();
    let back = EventInput::from_binary(
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
        event.datacontenttype.as_deref(),
        body,
        NOW_MS,
    );
    let back = match back {
        Ok(back) => back.event,
        Err(error) => {
            panic!("the binary rendering of an accepted event is refused: {error}: {headers:?}")
        }
    };
    let mut expected = event.clone();
    for value in expected.extensions.values_mut() {
        *value = ExtensionValue::String(value.to_string());
    }
    if expected.data.as_ref().is_some_and(Bytes::is_empty) {
        // An empty body is no data.
        expected.data = None;
    }
    assert_eq!(back, expected, "binary headers: {headers:?}");
}

/// JSON data as a value to compare. Valid JSON that `serde_json::Value`
/// cannot hold (a number past `f64`, such as `1.8e6777`) is compared as
/// its text without the whitespace between tokens, which is all that a
/// compact rendering changes.
fn json_value(data: &Option<Bytes>) -> Option<serde_json::Value> {
    data.as_ref().map(|bytes| {
        serde_json::from_slice(bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&without_whitespace(bytes)).into())
        })
    })
}

/// JSON text without the whitespace outside its strings.
fn without_whitespace(text: &[u8]) -> Vec<u8> {
    let (mut kept, mut in_string, mut escaped) = (Vec::with_capacity(text.len()), false, false);
    for &byte in text {
        if in_string {
            kept.push(byte);
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = byte == b'"';
            kept.push(byte);
        }
    }
    kept
}
