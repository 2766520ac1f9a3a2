//! An event as a NATS message, in the spirit of the CloudEvents NATS
//! binding's binary mode: the data is the payload, untouched; each
//! attribute is a header. A consumer reading the stream with plain NATS
//! tools sees a CloudEvent.
//!
//! | header | attribute |
//! |---|---|
//! | `ce-specversion` `ce-id` `ce-source` `ce-type` | the required ones |
//! | `ce-subject` `ce-time` `ce-dataschema` | the optional ones |
//! | `content-type` | datacontenttype |
//! | `ce-key` `ce-correlationid` `ce-causationid` | Herald's |
//! | `traceparent` `tracestate` | W3C trace context |
//! | `Herald-Deliver-At` | deliver_at, ms since the Unix epoch |
//! | `ce-<name>` | extension `<name>`; `Herald-Ext-Types` lists the non-string ones as `name:b` / `name:i` |
//! | `Herald-No-Data` | the event has no data (the payload is empty) |
//! | `Herald-Stream` `Herald-Version` | the event-sourcing stream and version it belongs to |
//!
//! Values are percent-encoded where they hold `%` or control characters
//! (headers cannot hold line breaks). Unknown headers are ignored on read.

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use bytes::Bytes;
use herald_types::{Event, ExtensionValue};

const NO_DATA: &str = "Herald-No-Data";
const DELIVER_AT: &str = "Herald-Deliver-At";
const EXT_TYPES: &str = "Herald-Ext-Types";
pub(crate) const STREAM: &str = "Herald-Stream";
pub(crate) const VERSION: &str = "Herald-Version";

/// The optional string attributes and their headers.
fn optional(event: &Event) -> [(&'static str, Option<&str>); 9] {
    [
        ("ce-subject", event.subject.as_deref()),
        ("ce-time", event.time.as_deref()),
        ("content-type", event.datacontenttype.as_deref()),
        ("ce-dataschema", event.dataschema.as_deref()),
        ("ce-key", event.key.as_deref()),
        ("ce-correlationid", event.correlationid.as_deref()),
        ("ce-causationid", event.causationid.as_deref()),
        ("traceparent", event.traceparent.as_deref()),
        ("tracestate", event.tracestate.as_deref()),
    ]
}

/// The headers (added to `headers`) and payload of `event`.
pub(crate) fn encode(event: &Event, headers: &mut HeaderMap) -> Bytes {
    headers.insert("ce-specversion", escape(&event.specversion));
    headers.insert("ce-id", escape(&event.id));
    headers.insert("ce-source", escape(&event.source));
    headers.insert("ce-type", escape(&event.ty));
    for (name, value) in optional(event) {
        if let Some(value) = value {
            headers.insert(name, escape(value));
        }
    }
    if let Some(at) = event.deliver_at {
        headers.insert(DELIVER_AT, at.to_string());
    }
    let mut types = Vec::new();
    for (name, value) in &event.extensions {
        let Ok(header) = HeaderName::try_from(format!("ce-{name}")) else {
            continue;
        };
        let value = match value {
            ExtensionValue::String(text) => escape(text),
            ExtensionValue::Bool(flag) => {
                types.push(format!("{name}:b"));
                flag.to_string()
            }
            ExtensionValue::Integer(number) => {
                types.push(format!("{name}:i"));
                number.to_string()
            }
        };
        headers.insert(header, value);
    }
    if !types.is_empty() {
        headers.insert(EXT_TYPES, types.join(","));
    }
    match &event.data {
        Some(data) => data.clone(),
        None => {
            headers.insert(NO_DATA, "1");
            Bytes::new()
        }
    }
}

/// The event a message holds, or why it holds none.
pub(crate) fn decode(headers: &HeaderMap, payload: Bytes) -> Result<Event, String> {
    let text = |name: &str| headers.get(name).map(|value| unescape(value.as_str()));
    let required = |name: &str| text(name).ok_or_else(|| format!("no {name} header"));
    let mut event = Event::new(
        required("ce-id")?,
        required("ce-source")?,
        required("ce-type")?,
    );
    event.specversion = required("ce-specversion")?;
    event.subject = text("ce-subject");
    event.time = text("ce-time");
    event.datacontenttype = text("content-type");
    event.dataschema = text("ce-dataschema");
    event.key = text("ce-key");
    event.correlationid = text("ce-correlationid");
    event.causationid = text("ce-causationid");
    event.traceparent = text("traceparent");
    event.tracestate = text("tracestate");
    event.deliver_at = match headers.get(DELIVER_AT) {
        Some(value) => Some(
            value
                .as_str()
                .parse()
                .map_err(|_| format!("bad {DELIVER_AT} {:?}", value.as_str()))?,
        ),
        None => None,
    };
    let types: Vec<(&str, &str)> = headers
        .get(EXT_TYPES)
        .map(|value| {
            value
                .as_str()
                .split(',')
                .filter_map(|entry| entry.split_once(':'))
                .collect()
        })
        .unwrap_or_default();
    let known: Vec<&str> = optional(&event).iter().map(|(name, _)| *name).collect();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let Some(extension) = name.strip_prefix("ce-") else {
            continue;
        };
        if known.contains(&name) || matches!(extension, "specversion" | "id" | "source" | "type") {
            continue;
        }
        let Some(value) = values.last() else {
            continue;
        };
        let value = match types.iter().find(|(typed, _)| *typed == extension) {
            Some((_, "b")) => ExtensionValue::Bool(value.as_str() == "true"),
            Some((_, "i")) => ExtensionValue::Integer(
                value
                    .as_str()
                    .parse()
                    .map_err(|_| format!("bad integer extension {extension}"))?,
            ),
            _ => ExtensionValue::String(unescape(value.as_str())),
        };
        event.extensions.insert(extension.to_owned(), value);
    }
    event.data = if headers.get(NO_DATA).is_some() {
        None
    } else {
        Some(payload)
    };
    Ok(event)
}

/// The stream and version a message belongs to, if it is a stream event.
pub(crate) fn stream_of(headers: &HeaderMap) -> Option<(String, u64)> {
    let stream = unescape(headers.get(STREAM)?.as_str());
    let version = headers.get(VERSION)?.as_str().parse().ok()?;
    Some((stream, version))
}

/// `value` with `%` and control characters as `%XX`.
pub(crate) fn escape(value: &str) -> String {
    if !value
        .bytes()
        .any(|byte| byte == b'%' || byte < 0x20 || byte == 0x7f)
    {
        return value.to_owned();
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for char in value.chars() {
        let code = u32::from(char);
        if char == '%' || code < 0x20 || code == 0x7f {
            escaped.push_str(&format!("%{code:02X}"));
        } else {
            escaped.push(char);
        }
    }
    escaped
}

/// The inverse of [`escape`]; a `%` not followed by two hex digits stays.
pub(crate) fn unescape(value: &str) -> String {
    if !value.contains('%') {
        return value.to_owned();
    }
    let mut bytes = Vec::with_capacity(value.len());
    let raw = value.as_bytes();
    let mut index = 0;
    while index < raw.len() {
        let decoded = (raw[index] == b'%')
            .then(|| raw.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                bytes.push(byte);
                index += 3;
            }
            None => {
                bytes.push(raw[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(bytes).unwrap_or_else(|_| value.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn every_attribute_survives_a_round_trip() {
        let mut event = Event::new("id-1", "/src", "order.placed");
        event.subject = Some("line\nbreak 100%".into());
        event.time = Some("2026-12-03T10:00:00Z".into());
        event.datacontenttype = Some("text/plain".into());
        event.dataschema = Some("https://schema".into());
        event.key = Some("k".into());
        event.correlationid = Some("c".into());
        event.causationid = Some("d".into());
        event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        event.tracestate = Some("a=b".into());
        event.deliver_at = Some(1_800_000_000_000);
        event
            .extensions
            .insert("flag".into(), ExtensionValue::Bool(true));
        event
            .extensions
            .insert("count".into(), ExtensionValue::Integer(-7));
        event
            .extensions
            .insert("note".into(), ExtensionValue::String("é%\r".into()));
        event.data = Some(Bytes::from_static(b"\x00binary"));
        let mut headers = HeaderMap::new();
        let payload = encode(&event, &mut headers);
        assert_eq!(decode(&headers, payload).unwrap(), event);
    }

    #[test]
    fn no_data_and_empty_data_differ() {
        let mut event = Event::new("id", "/s", "t");
        for data in [None, Some(Bytes::new())] {
            event.data = data;
            let mut headers = HeaderMap::new();
            let payload = encode(&event, &mut headers);
            assert_eq!(decode(&headers, payload).unwrap().data, event.data);
        }
    }
}
