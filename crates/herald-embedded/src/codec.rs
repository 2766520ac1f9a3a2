//! How an event is stored as a log record.
//!
//! The payload is the record's value, untouched (no copy, no re-encoding);
//! the partition key is the record's key; every other attribute is a record
//! header with a short name:
//!
//! | header | attribute | encoding |
//! |---|---|---|
//! | `id` `src` `type` `sv` | id, source, type, specversion | UTF-8 |
//! | `sub` `time` `dct` `dsc` | subject, time, datacontenttype, dataschema | UTF-8 |
//! | `cor` `cau` `tp` `ts` | correlationid, causationid, traceparent, tracestate | UTF-8 |
//! | `at` | deliver_at | i64 LE, ms since the Unix epoch |
//! | `nodata` | the event has no data (value empty) | empty |
//! | `x:<name>` | extension `<name>` | `s` + UTF-8, `b` + 0/1, or `i` + i64 LE |
//! | `stm` | the event-sourcing stream the event belongs to | UTF-8 stream id |
//! | `ver` | its version in that stream | u64 LE |
//!
//! `stm` and `ver` are what the stream index is derived from: replaying a
//! partition's records rebuilds every (stream, version) → offset entry, so
//! the index can always catch up with the log (see `stream.rs`). They are not
//! event attributes and are not returned as such.
//!
//! Unknown headers are ignored on read, so later versions may add some.

use bytes::{BufMut, Bytes, BytesMut};
use herald_log::{Header, HeaderName, NewRecord, Record};
use herald_types::{Event, ExtensionValue, StoredEvent, TopicName};

/// The record for `event`. Header names are static; the values are copied
/// into one buffer the headers share (one allocation, not one per header).
pub(crate) fn encode(event: &Event) -> NewRecord {
    let optional = [
        ("sub", &event.subject),
        ("time", &event.time),
        ("dct", &event.datacontenttype),
        ("dsc", &event.dataschema),
        ("cor", &event.correlationid),
        ("cau", &event.causationid),
        ("tp", &event.traceparent),
        ("ts", &event.tracestate),
    ];
    let mut values = BytesMut::with_capacity(
        event.id.len()
            + event.source.len()
            + event.ty.len()
            + event.specversion.len()
            + optional
                .iter()
                .map(|(_, value)| value.as_ref().map_or(0, String::len))
                .sum::<usize>()
            + if event.deliver_at.is_some() { 8 } else { 0 },
    );
    // Each header's name and the end of its value in `values`.
    let mut ends: Vec<(HeaderName, usize)> = Vec::with_capacity(8 + event.extensions.len());
    let mut text = |name: &'static str, value: &str, values: &mut BytesMut| {
        values.put_slice(value.as_bytes());
        ends.push((HeaderName::from_static(name), values.len()));
    };
    text("id", &event.id, &mut values);
    text("src", &event.source, &mut values);
    text("type", &event.ty, &mut values);
    text("sv", &event.specversion, &mut values);
    for (name, value) in optional {
        if let Some(value) = value {
            text(name, value, &mut values);
        }
    }
    if let Some(at) = event.deliver_at {
        values.put_slice(&at.to_le_bytes());
        ends.push((HeaderName::from_static("at"), values.len()));
    }
    if event.data.is_none() {
        ends.push((HeaderName::from_static("nodata"), values.len()));
    }
    for (name, value) in &event.extensions {
        match value {
            ExtensionValue::String(text) => {
                values.put_u8(b's');
                values.put_slice(text.as_bytes());
            }
            ExtensionValue::Bool(flag) => {
                values.put_u8(b'b');
                values.put_u8(u8::from(*flag));
            }
            ExtensionValue::Integer(number) => {
                values.put_u8(b'i');
                values.put_i64_le(*number);
            }
        }
        ends.push((HeaderName::from(format!("x:{name}")), values.len()));
    }
    let values = values.freeze();
    let mut start = 0;
    let headers = ends
        .into_iter()
        .map(|(name, end)| {
            let value = values.slice(start..end);
            start = end;
            Header { name, value }
        })
        .collect();
    NewRecord {
        key: event
            .key
            .as_ref()
            .map(|key| Bytes::copy_from_slice(key.as_bytes())),
        headers,
        value: event.data.clone().unwrap_or_default(),
    }
}

/// The record for `event` appended to `stream` at `version`: the event's
/// record plus the `stm` and `ver` headers.
pub(crate) fn encode_in_stream(event: &Event, stream: &str, version: u64) -> NewRecord {
    let mut record = encode(event);
    record.headers.push(Header {
        name: HeaderName::from_static(STREAM_HEADER),
        value: Bytes::copy_from_slice(stream.as_bytes()),
    });
    record.headers.push(Header {
        name: HeaderName::from_static(VERSION_HEADER),
        value: Bytes::copy_from_slice(&version.to_le_bytes()),
    });
    record
}

const STREAM_HEADER: &str = "stm";
const VERSION_HEADER: &str = "ver";

/// The stream and version a record was appended at, if it was appended to a
/// stream (both headers present and well formed).
pub(crate) fn record_stream(record: &Record) -> Option<(&str, u64)> {
    let mut stream = None;
    let mut version = None;
    for header in &record.headers {
        match header.name.as_str() {
            STREAM_HEADER => stream = std::str::from_utf8(&header.value).ok(),
            VERSION_HEADER => {
                version = <[u8; 8]>::try_from(header.value.as_ref())
                    .ok()
                    .map(u64::from_le_bytes);
            }
            _ => {}
        }
    }
    Some((stream?, version?))
}

/// Why a record is not a valid event.
#[derive(Debug, thiserror::Error)]
#[error("record at offset {offset} is not a valid event: {reason}")]
pub(crate) struct DecodeError {
    offset: u64,
    reason: String,
}

/// The event stored in `record` of `topic`'s `partition`.
pub(crate) fn decode(
    topic: &TopicName,
    partition: u32,
    record: Record,
) -> Result<StoredEvent, DecodeError> {
    let offset = record.offset;
    let bad = |reason: String| DecodeError { offset, reason };
    let text = |value: &Bytes| {
        String::from_utf8(value.to_vec()).map_err(|_| bad("attribute is not UTF-8".into()))
    };
    let mut event = Event {
        id: String::new(),
        source: String::new(),
        ty: String::new(),
        specversion: String::new(),
        subject: None,
        time: None,
        datacontenttype: None,
        dataschema: None,
        data: Some(record.value),
        key: None,
        correlationid: None,
        causationid: None,
        traceparent: None,
        tracestate: None,
        deliver_at: None,
        extensions: Default::default(),
    };
    for header in &record.headers {
        match header.name.as_bytes() {
            b"id" => event.id = text(&header.value)?,
            b"src" => event.source = text(&header.value)?,
            b"type" => event.ty = text(&header.value)?,
            b"sv" => event.specversion = text(&header.value)?,
            b"sub" => event.subject = Some(text(&header.value)?),
            b"time" => event.time = Some(text(&header.value)?),
            b"dct" => event.datacontenttype = Some(text(&header.value)?),
            b"dsc" => event.dataschema = Some(text(&header.value)?),
            b"cor" => event.correlationid = Some(text(&header.value)?),
            b"cau" => event.causationid = Some(text(&header.value)?),
            b"tp" => event.traceparent = Some(text(&header.value)?),
            b"ts" => event.tracestate = Some(text(&header.value)?),
            b"at" => {
                let bytes: [u8; 8] = header
                    .value
                    .as_ref()
                    .try_into()
                    .map_err(|_| bad("deliver_at is not 8 bytes".into()))?;
                event.deliver_at = Some(i64::from_le_bytes(bytes));
            }
            b"nodata" => event.data = None,
            _ => {
                if let Some(extension) = header.name.as_str().strip_prefix("x:") {
                    let value = decode_extension(&header.value)
                        .ok_or_else(|| bad(format!("extension {extension} is malformed")))?;
                    event.extensions.insert(extension.to_owned(), value);
                }
            }
        }
    }
    if event.id.is_empty()
        || event.source.is_empty()
        || event.ty.is_empty()
        || event.specversion.is_empty()
    {
        return Err(bad("a required attribute is missing".into()));
    }
    event.key = record.key.map(|key| text(&key)).transpose()?;
    Ok(StoredEvent {
        topic: topic.clone(),
        partition,
        offset,
        appended_at: record.timestamp,
        event,
    })
}

fn decode_extension(bytes: &[u8]) -> Option<ExtensionValue> {
    let (tag, rest) = bytes.split_first()?;
    match tag {
        b's' => String::from_utf8(rest.to_vec())
            .ok()
            .map(ExtensionValue::String),
        b'b' => match rest {
            [flag] => Some(ExtensionValue::Bool(*flag != 0)),
            _ => None,
        },
        b'i' => rest
            .try_into()
            .ok()
            .map(|bytes: [u8; 8]| ExtensionValue::Integer(i64::from_le_bytes(bytes))),
        _ => None,
    }
}

/// Whether a stored record's event has a correlation or causation id,
/// without decoding it.
pub(crate) fn is_correlated(record: &Record) -> bool {
    record
        .headers
        .iter()
        .any(|header| matches!(header.name.as_bytes(), b"cor" | b"cau"))
}

/// The event id of a stored record, without decoding the rest.
pub(crate) fn record_id(record: &Record) -> Option<&[u8]> {
    record
        .headers
        .iter()
        .find(|header| header.name == "id")
        .map(|header| header.value.as_ref())
}
