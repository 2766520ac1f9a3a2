//! The event envelope: CloudEvents 1.0 plus Herald's attributes, and its
//! codecs for the CloudEvents HTTP content modes.
//!
//! # Attributes
//!
//! - CloudEvents context attributes: `specversion` (only `"1.0"`), `id`,
//!   `source`, `type` (required; a missing or empty `id` gets a UUIDv7 from
//!   Herald), and the optional `subject`, `time` (RFC 3339, validated and kept
//!   verbatim), `datacontenttype`, `dataschema`.
//! - Herald attributes: `key` (the partition key; `partitionkey`, the
//!   CloudEvents Partitioning extension, is read as `key`), `correlationid`,
//!   `causationid`, W3C `traceparent` / `tracestate`, and `deliverat` (RFC
//!   3339) or `delayms` (ms from now), which become [`Event::deliver_at`].
//!   `partition` on input pins the partition ([`EventInput::partition`]).
//!   `deliver_at` and `delay_ms`, the names before Herald kept to
//!   CloudEvents' naming rule, are still read (deprecated).
//! - Extensions: any other attribute whose name is 1–20 characters of
//!   `a-z0-9`, with a string, boolean or integer value.
//! - Server-assigned `topic`, `offset` and `appendedat` (and `partition`)
//!   are added when an event is rendered as a [`StoredEvent`]. A producer
//!   that sets `topic`, `offset` or `appendedat` (or `appended_at`) is
//!   refused (`reserved_attribute`) rather than silently overwritten.
//! - JSON text is refused (`malformed_json`) when a string holds an escaped
//!   UTF-16 surrogate without its other half: no UTF-8 text can carry it.
//!
//! `datacontenttype` must be visible ASCII without surrounding whitespace:
//! binary mode carries it as the `Content-Type` header.
//!
//! Every string attribute, when present, must be non-empty (CloudEvents
//! requires it of most of them; for the others an empty value is more likely
//! a mistake than a meaning). `null` means absent, as the CloudEvents JSON
//! format says, except for `data`, where it is the JSON value `null`.
//!
//! # Data
//!
//! [`Event::data`] holds the payload bytes. A content type is *JSON* when it
//! is absent or its media type, without parameters, is `*/json` or
//! `*/*+json`; it is *textual* when it is `text/*` and not JSON.
//!
//! - Structured mode, `data`: with a JSON content type, the compact JSON text
//!   of the value (whitespace outside strings removed; numbers and escapes
//!   kept exactly as sent); otherwise `data` must be a JSON string and its
//!   UTF-8 bytes are stored. `data_base64` is decoded (standard alphabet,
//!   padding optional). Both at once is an error.
//! - Binary mode: the body, as is; an empty body means no data.
//! - Rendering ([`Serialize`]): JSON content type and bytes that parse as JSON
//!   nested at most [`MAX_DATA_DEPTH`] levels → `data` with the JSON
//!   embedded; textual content type and UTF-8 bytes →
//!   `data` as a string; anything else → `data_base64`. So rendering and
//!   parsing back gives the same event, except that JSON data loses
//!   insignificant whitespace (which only binary mode can bring in).
//!
//! Serialization targets JSON: the embedded JSON data is a
//! [`serde_json::value::RawValue`], which other serializers render oddly.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::{NoContext, Timestamp, Uuid};

use crate::names::{Echo, TopicName};
use crate::time::{MAX_RFC3339_MS, MIN_RFC3339_MS, format_rfc3339_ms, parse_rfc3339_ms};

/// The only CloudEvents version Herald accepts.
pub const SPEC_VERSION: &str = "1.0";

/// A CloudEvents 1.0 event with Herald's attributes (see the module docs for
/// the rules each attribute follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CloudEvents `id`; with `source`, identifies the event (and is the key of
    /// a topic's dedup window).
    pub id: String,
    /// CloudEvents `source`, a URI-reference.
    pub source: String,
    /// CloudEvents `type`.
    pub ty: String,
    /// CloudEvents `specversion`; always `"1.0"`.
    pub specversion: String,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// CloudEvents `time`, RFC 3339, kept as sent.
    pub time: Option<String>,
    /// CloudEvents `datacontenttype`; absent means JSON.
    pub datacontenttype: Option<String>,
    /// CloudEvents `dataschema`.
    pub dataschema: Option<String>,
    /// The payload bytes: JSON text when the content type is JSON, the decoded
    /// bytes for `data_base64`, the body in binary mode.
    pub data: Option<Bytes>,
    /// Herald: the partition key.
    pub key: Option<String>,
    /// Herald: the id shared by every event of one conversation or flow.
    pub correlationid: Option<String>,
    /// Herald: the id of the event that caused this one.
    pub causationid: Option<String>,
    /// W3C trace context `traceparent` (`00-<trace id>-<span id>-<flags>`).
    pub traceparent: Option<String>,
    /// W3C trace context `tracestate`.
    pub tracestate: Option<String>,
    /// Herald: ms since the Unix epoch before which queue and keyed groups do
    /// not deliver the event.
    pub deliver_at: Option<i64>,
    /// CloudEvents extension attributes, by name.
    pub extensions: BTreeMap<String, ExtensionValue>,
}

/// The value of a CloudEvents extension attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtensionValue {
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// An integer. CloudEvents' `Integer` is 32-bit; Herald accepts any `i64`.
    Integer(i64),
}

/// What a publisher sends: the event plus an optional explicit partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInput {
    /// The event.
    pub event: Event,
    /// The partition asked for, if any; otherwise the key (or round robin)
    /// decides.
    pub partition: Option<u32>,
}

/// An event as stored: server-assigned coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The topic it is in.
    pub topic: TopicName,
    /// The partition it is in.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// When it was appended, in ms since the Unix epoch.
    pub appended_at: i64,
    /// The event.
    pub event: Event,
}

/// Why an event was refused. Every message says what to fix; [`code`]
/// gives the stable machine code for the API's problem documents.
///
/// [`code`]: EventError::code
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {source}")]
    MalformedJson {
        /// Line of the error (1-based).
        line: usize,
        /// Column of the error (1-based).
        column: usize,
        /// What the parser found.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is fine but is not the shape expected (an object for one
    /// event, an array of objects for a batch).
    #[error("expected {expected}, found {found}")]
    WrongShape {
        /// What was expected.
        expected: &'static str,
        /// What the JSON value was.
        found: &'static str,
    },
    /// A batch with no events.
    #[error("the batch is empty; send at least one event")]
    EmptyBatch,
    /// A required attribute is absent (or `null`).
    #[error("missing required attribute \"{name}\"")]
    MissingAttribute {
        /// The attribute.
        name: &'static str,
    },
    /// An attribute is present but its value breaks a rule.
    #[error("invalid attribute {}: {reason}", Echo(name))]
    InvalidAttribute {
        /// The attribute.
        name: String,
        /// What is wrong and what to send instead.
        reason: String,
    },
    /// The same attribute appears twice.
    #[error("attribute {} is given twice; send it once", Echo(name))]
    DuplicateAttribute {
        /// The attribute.
        name: String,
    },
    /// Two attributes that exclude each other are both present.
    #[error("\"{first}\" and \"{second}\" exclude each other; send only one")]
    ConflictingAttributes {
        /// One of them.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A producer set an attribute only Herald assigns (`topic`, `offset`,
    /// `appendedat`), or an extension took a name of Herald's or
    /// CloudEvents' own attributes.
    #[error("attribute {} is reserved: {}", Echo(name), reserved_reason(name))]
    ReservedAttribute {
        /// The attribute.
        name: String,
    },
    /// A JSON string holds an escaped UTF-16 surrogate without its other
    /// half (`"\ud800"`): JSON parsers differ on it (I-JSON, RFC 7493,
    /// forbids it), and no UTF-8 text can hold it.
    #[error(
        "malformed JSON: a lone UTF-16 surrogate escape (\\u{code:04x}) at line {line} column {column}; \
         send the character itself or a complete surrogate pair"
    )]
    LoneSurrogate {
        /// Line of the escape (1-based).
        line: usize,
        /// Column of the escape's backslash (1-based).
        column: usize,
        /// The surrogate's code unit.
        code: u16,
    },
    /// An element of a batch is refused; nothing of the batch is taken.
    #[error("events[{index}]: {source}")]
    InBatch {
        /// The element's index in the batch, from 0.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: Box<EventError>,
    },
}

impl EventError {
    /// The stable machine code: `"malformed_json"` when the body is not JSON
    /// (or holds a lone surrogate), `"reserved_attribute"` for an attribute
    /// a producer may not set, `"invalid_event"` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson { .. } | Self::LoneSurrogate { .. } => "malformed_json",
            Self::ReservedAttribute { .. } => "reserved_attribute",
            Self::InBatch { source, .. } => source.code(),
            _ => "invalid_event",
        }
    }

    fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::InvalidAttribute {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    fn malformed(source: serde_json::Error) -> Self {
        Self::MalformedJson {
            line: source.line(),
            column: source.column(),
            source,
        }
    }
}

impl Event {
    /// Whether it names a correlation or a causation (what the lineage
    /// index files).
    pub fn is_correlated(&self) -> bool {
        self.correlationid.is_some() || self.causationid.is_some()
    }

    /// A minimal event: `specversion` 1.0, the given `id`, `source` and `type`,
    /// nothing else.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            specversion: SPEC_VERSION.to_owned(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            key: None,
            correlationid: None,
            causationid: None,
            traceparent: None,
            tracestate: None,
            deliver_at: None,
            extensions: BTreeMap::new(),
        }
    }

    /// Checks the rules of the module docs on an event built in code (parsing
    /// checks them already): `specversion` 1.0, required attributes non-empty,
    /// optional ones non-empty when present, `time` RFC 3339, `traceparent`
    /// well formed, `deliver_at` representable, extension names valid and not
    /// reserved.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.specversion != SPEC_VERSION {
            return Err(EventError::invalid(
                "specversion",
                format!(
                    "Herald accepts only \"1.0\", got {}",
                    Echo(&self.specversion)
                ),
            ));
        }
        for (name, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(EventError::invalid(name, "must not be empty"));
            }
        }
        for (name, value) in self.optional_strings() {
            if value.is_some_and(str::is_empty) {
                return Err(EventError::invalid(
                    name,
                    "must not be empty; leave it out instead",
                ));
            }
        }
        if let Some(content_type) = &self.datacontenttype
            && !is_header_value(content_type)
        {
            return Err(EventError::invalid(
                "datacontenttype",
                "must be a media type in visible ASCII without surrounding whitespace \
                 (binary mode carries it as the Content-Type header)",
            ));
        }
        if let Some(time) = &self.time {
            parse_rfc3339_ms(time)
                .map_err(|error| EventError::invalid("time", error.to_string()))?;
        }
        if let Some(traceparent) = &self.traceparent {
            validate_traceparent(traceparent)?;
        }
        if let Some(deliver_at) = self.deliver_at
            && !(MIN_RFC3339_MS..=MAX_RFC3339_MS).contains(&deliver_at)
        {
            return Err(EventError::invalid(
                "deliverat",
                "must be between the years 0000 and 9999 (RFC 3339)",
            ));
        }
        for name in self.extensions.keys() {
            if is_reserved(name) {
                return Err(EventError::ReservedAttribute { name: name.clone() });
            }
            validate_extension_name(name)?;
        }
        Ok(())
    }

    /// An estimate of the event's stored size in bytes: the lengths of its
    /// attribute names and values and of its data. Used for per-topic event
    /// size limits, so it counts what the client controls.
    pub fn encoded_len(&self) -> usize {
        const NUMBER: usize = 8;
        let required = [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
            ("specversion", &self.specversion),
        ];
        let required: usize = required
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        let optional: usize = self
            .optional_strings()
            .iter()
            .filter_map(|(name, value)| value.map(|value| name.len() + value.len()))
            .sum();
        let extensions: usize = self
            .extensions
            .iter()
            .map(|(name, value)| {
                name.len()
                    + match value {
                        ExtensionValue::String(text) => text.len(),
                        ExtensionValue::Bool(_) => 1,
                        ExtensionValue::Integer(_) => NUMBER,
                    }
            })
            .sum();
        let data = self
            .data
            .as_ref()
            .map_or(0, |data| "data".len() + data.len());
        let deliver_at = self.deliver_at.map_or(0, |_| "deliver_at".len() + NUMBER);
        required + optional + extensions + data + deliver_at
    }

    /// Whether the data is JSON by its content type (absent counts as JSON).
    pub fn is_json(&self) -> bool {
        is_json_content_type(self.datacontenttype.as_deref())
    }

    /// The event's attributes as CloudEvents HTTP binary-mode headers
    /// (`ce-<name>`, values percent-encoded), for sending it with the data as
    /// the body. `datacontenttype` is not among them: it is the
    /// `Content-Type`. Extensions are rendered as strings.
    pub fn binary_headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        let mut push = |name: &str, value: &str| {
            headers.push((format!("ce-{name}"), percent_encode(value)));
        };
        push("specversion", &self.specversion);
        push("id", &self.id);
        push("source", &self.source);
        push("type", &self.ty);
        for (name, value) in self.optional_strings() {
            if let Some(value) = value
                && name != "datacontenttype"
            {
                push(name, value);
            }
        }
        if let Some(deliver_at) = self.deliver_at {
            push(DELIVER_AT, &format_rfc3339_ms(deliver_at));
        }
        for (name, value) in self.renderable_extensions() {
            push(name, &value.to_string());
        }
        headers
    }

    /// The optional string attributes with their names, in rendering order.
    fn optional_strings(&self) -> [(&'static str, Option<&str>); 9] {
        [
            ("subject", self.subject.as_deref()),
            ("time", self.time.as_deref()),
            ("datacontenttype", self.datacontenttype.as_deref()),
            ("dataschema", self.dataschema.as_deref()),
            ("key", self.key.as_deref()),
            ("correlationid", self.correlationid.as_deref()),
            ("causationid", self.causationid.as_deref()),
            ("traceparent", self.traceparent.as_deref()),
            ("tracestate", self.tracestate.as_deref()),
        ]
    }

    /// Extensions that can be rendered without clashing with another member:
    /// parsing never produces others, but the fields are public.
    fn renderable_extensions(&self) -> impl Iterator<Item = (&String, &ExtensionValue)> {
        self.extensions
            .iter()
            .filter(|(name, _)| validate_extension_name(name).is_ok() && !is_reserved(name))
    }
}

impl EventInput {
    /// Parses one event in CloudEvents structured mode
    /// (`application/cloudevents+json` or `application/json`): a JSON object.
    /// `now_ms` is the clock for `delay_ms` and for generated ids.
    pub fn from_json(body: &[u8], now_ms: i64) -> Result<EventInput, EventError> {
        match parse_document(body)? {
            Document::Object(members) => {
                let parsed = Draft::from_members(&members)?.finish(now_ms, IdRule::Generate)?;
                Ok(parsed.input)
            }
            Document::Array(_) => Err(EventError::WrongShape {
                expected: "a JSON object (one event; send an array of events as \
                           application/cloudevents-batch+json)",
                found: "an array",
            }),
            Document::Other(found) => Err(EventError::WrongShape {
                expected: "a JSON object (one event)",
                found,
            }),
        }
    }

    /// Parses a batch in the CloudEvents JSON batch format
    /// (`application/cloudevents-batch+json`): a non-empty JSON array of event
    /// objects. An error names the index of the first bad element.
    pub fn batch_from_json(body: &[u8], now_ms: i64) -> Result<Vec<EventInput>, EventError> {
        let elements = match parse_document(body)? {
            Document::Array(elements) => elements,
            Document::Object(_) => {
                return Err(EventError::WrongShape {
                    expected: "a JSON array of events (send one event as \
                               application/cloudevents+json)",
                    found: "an object",
                });
            }
            Document::Other(found) => {
                return Err(EventError::WrongShape {
                    expected: "a JSON array of events",
                    found,
                });
            }
        };
        if elements.is_empty() {
            return Err(EventError::EmptyBatch);
        }
        elements
            .into_iter()
            .enumerate()
            .map(|(index, element)| {
                parse_element(element, now_ms).map_err(|error| EventError::InBatch {
                    index,
                    source: Box::new(error),
                })
            })
            .collect()
    }

    /// Parses one event in CloudEvents HTTP binary mode: attributes from the
    /// `ce-<name>` headers (names case-insensitive, values percent-decoded per
    /// the CloudEvents HTTP binding; other headers are ignored),
    /// `datacontenttype` from `content_type` (the `Content-Type` header), and
    /// the body as the data (an empty body is no data). Herald attributes come
    /// the same way: `ce-key`, `ce-partition`, `ce-delay_ms`, `ce-deliver_at`…
    /// Extensions are strings, since headers carry no types.
    pub fn from_binary<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        content_type: Option<&str>,
        body: Bytes,
        now_ms: i64,
    ) -> Result<EventInput, EventError> {
        let draft = Draft::from_headers(headers, content_type, body)?;
        let input = draft.finish(now_ms, IdRule::Generate)?.input;
        check_json_data(&input.event)?;
        Ok(input)
    }
}

impl From<Event> for EventInput {
    /// The event, partitioned by its key (or round robin).
    fn from(event: Event) -> Self {
        Self {
            event,
            partition: None,
        }
    }
}

impl EventInput {
    /// An event built in code or decoded from a binary protocol (gRPC): the
    /// same rules as the JSON codecs. An empty `id` gets a generated one, an
    /// empty `specversion` means 1.0, and `delay_ms` (ms from `now_ms`)
    /// becomes `deliver_at` (sending both is refused). Then
    /// [`Event::validate`].
    pub fn from_parts(
        mut event: Event,
        partition: Option<u32>,
        delay_ms: Option<u64>,
        now_ms: i64,
    ) -> Result<EventInput, EventError> {
        if event.id.is_empty() {
            event.id = Event::generate_id(now_ms);
        }
        if event.specversion.is_empty() {
            SPEC_VERSION.clone_into(&mut event.specversion);
        }
        if let Some(delay) = delay_ms {
            if event.deliver_at.is_some() {
                return Err(EventError::ConflictingAttributes {
                    first: DELIVER_AT,
                    second: DELAY_MS,
                });
            }
            event.deliver_at = Some(deliver_at_after(delay, now_ms)?);
        }
        event.validate()?;
        check_json_data(&event)?;
        Ok(EventInput { event, partition })
    }
}

impl Event {
    /// A new event id as Herald assigns them: a UUIDv7 carrying `now_ms`, so
    /// ids sort by time. Publishers that retry should assign ids up front
    /// (with this or their own scheme) so a retried publish deduplicates.
    pub fn generate_id(now_ms: i64) -> String {
        new_event_id(now_ms)
    }
}

impl StoredEvent {
    /// Parses a stored event as [`StoredEvent`]'s [`Serialize`] renders it
    /// (what a client reads back): the event plus `topic`, `partition`,
    /// `offset` and `appended_at`, all required, and a non-empty `id`.
    pub fn from_json(body: &[u8]) -> Result<StoredEvent, EventError> {
        match parse_document(body)? {
            Document::Object(members) => stored_from_members(&members),
            Document::Array(_) => Err(EventError::WrongShape {
                expected: "a JSON object",
                found: "an array",
            }),
            Document::Other(found) => Err(EventError::WrongShape {
                expected: "a JSON object",
                found,
            }),
        }
    }
}

impl fmt::Display for ExtensionValue {
    /// The CloudEvents canonical string form (`true`, `42`, or the string).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(text) => formatter.write_str(text),
            Self::Bool(value) => write!(formatter, "{value}"),
            Self::Integer(value) => write!(formatter, "{value}"),
        }
    }
}

impl From<String> for ExtensionValue {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

impl From<&str> for ExtensionValue {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

impl From<bool> for ExtensionValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<i64> for ExtensionValue {
    fn from(value: i64) -> Self {
        Self::Integer(value)
    }
}

impl Serialize for ExtensionValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::String(text) => serializer.serialize_str(text),
            Self::Bool(value) => serializer.serialize_bool(*value),
            Self::Integer(value) => serializer.serialize_i64(*value),
        }
    }
}

impl Serialize for Event {
    /// Structured-mode CloudEvents JSON (see the module docs for `data`).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        serialize_attributes(self, &mut map)?;
        serialize_data(data_out(self), &mut map)?;
        map.end()
    }
}

impl Serialize for StoredEvent {
    /// Structured-mode CloudEvents JSON plus `topic`, `partition`, `offset`
    /// and `appended_at` (RFC 3339 with milliseconds, UTC).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WithData(self, data_out(&self.event)).serialize(serializer)
    }
}

impl StoredEvent {
    /// Appends the event's JSON, as [`Serialize`] writes it, to `out`: for
    /// a hot path (webhook bodies). Data that goes out as `data_base64` is
    /// encoded straight into `out` (base64 has nothing to escape), not
    /// through a string of its own and serde_json's escaping.
    ///
    /// # Errors
    /// Those of [`serde_json::to_writer`] (none for these types).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let data = data_out(&self.event);
        let Some(DataOut::Base64(bytes)) = data else {
            return serde_json::to_writer(out, &WithData(self, data));
        };
        serde_json::to_writer(&mut *out, &WithData(self, None))?;
        // The object is never empty (`specversion` and `id` always are):
        // the data goes in as its last member, before the closing brace.
        out.pop();
        out.extend_from_slice(b",\"data_base64\":\"");
        let start = out.len();
        out.resize(
            start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
            0,
        );
        let written = STANDARD
            .encode_slice(bytes, &mut out[start..])
            .unwrap_or_default();
        out.truncate(start + written);
        out.extend_from_slice(b"\"}");
        Ok(())
    }
}

/// A stored event serialized with its data as given (found once).
struct WithData<'a>(&'a StoredEvent, Option<DataOut<'a>>);

impl Serialize for WithData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Self(stored, data) = self;
        let mut map = serializer.serialize_map(None)?;
        serialize_attributes(&stored.event, &mut map)?;
        map.serialize_entry("topic", &stored.topic)?;
        map.serialize_entry("partition", &stored.partition)?;
        map.serialize_entry("offset", &stored.offset)?;
        map.serialize_entry(APPENDED_AT, &format_rfc3339_ms(stored.appended_at))?;
        serialize_data(*data, &mut map)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for StoredEvent {
    /// The inverse of [`Serialize`], through [`StoredEvent::from_json`].
    /// Works with `serde_json` only (it captures the raw JSON).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        StoredEvent::from_json(raw.get().as_bytes()).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A parsed event with what came along with it.
struct Parsed<'a> {
    input: EventInput,
    server: ServerMembers<'a>,
}

/// Server-assigned members seen on input, kept raw: [`EventInput`] ignores
/// them, [`StoredEvent::from_json`] requires them.
#[derive(Default)]
struct ServerMembers<'a> {
    topic: Option<&'a RawValue>,
    offset: Option<&'a RawValue>,
    appended_at: Option<&'a RawValue>,
    /// The first of them seen (structured or binary mode), as sent: a
    /// publish that sets one is refused.
    named: Option<String>,
}

/// What to do about a missing or empty `id`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IdRule {
    /// Assign a UUIDv7 (publishing).
    Generate,
    /// Refuse (reading back a stored event, which always has one).
    Require,
}

/// A top-level JSON value, with object members and array elements kept raw.
enum Document<'a> {
    Object(Vec<(String, &'a RawValue)>),
    Array(Vec<&'a RawValue>),
    Other(&'static str),
}

fn parse_document(body: &[u8]) -> Result<Document<'_>, EventError> {
    let document = serde_json::from_slice(body).map_err(EventError::malformed)?;
    // serde_json checks surrogate pairs only in what it decodes into
    // strings, not in the raw values kept here (`data` above all).
    check_surrogates(body)?;
    Ok(document)
}

/// Data taken as bytes (binary mode, gRPC) under a JSON content type is
/// refused when it is JSON holding a lone surrogate escape, as structured
/// mode refuses it; bytes that are not JSON at all stay opaque, as before.
fn check_json_data(event: &Event) -> Result<(), EventError> {
    let Some(data) = &event.data else {
        return Ok(());
    };
    if !is_json_content_type(event.datacontenttype.as_deref()) {
        return Ok(());
    }
    match check_surrogates(data) {
        Err(error) if serde_json::from_slice::<de::IgnoredAny>(data).is_ok() => Err(error),
        _ => Ok(()),
    }
}

/// Refuses a `\uXXXX` escape of a UTF-16 surrogate that is not part of a
/// pair (a high one followed at once by an escaped low one), anywhere in a
/// JSON text (any bytes are safe to scan; the answer means something for
/// well-formed JSON). Escapes only occur inside
/// strings, and a backslash there always starts one, so a scan for
/// backslashes that skips each escape it finds sees every escape once.
pub fn check_surrogates(json: &[u8]) -> Result<(), EventError> {
    let hex = |at: usize| -> Option<u16> {
        let digits = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let escaped_unit = |at: usize| -> Option<u16> {
        (json.get(at..at + 2)? == b"\\u")
            .then(|| hex(at + 2))
            .flatten()
    };
    let mut at = 0;
    while let Some(found) = json.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let start = at + found;
        let Some(unit) = escaped_unit(start) else {
            // Any other escape is two bytes.
            at = start + 2;
            continue;
        };
        at = start + 6;
        match unit {
            0xD800..=0xDBFF => {
                if escaped_unit(at).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) {
                    at += 6;
                    continue;
                }
            }
            0xDC00..=0xDFFF => {}
            _ => continue,
        }
        let before = &json[..start];
        let line = before.iter().filter(|byte| **byte == b'\n').count() + 1;
        let column = start
            - before
                .iter()
                .rposition(|byte| *byte == b'\n')
                .map_or(0, |at| at + 1)
            + 1;
        return Err(EventError::LoneSurrogate {
            line,
            column,
            code: unit,
        });
    }
    Ok(())
}

fn parse_element(element: &RawValue, now_ms: i64) -> Result<EventInput, EventError> {
    // The element was validated as part of the whole document, so this only
    // splits it into members.
    match serde_json::from_str(element.get()).map_err(EventError::malformed)? {
        Document::Object(members) => Ok(Draft::from_members(&members)?
            .finish(now_ms, IdRule::Generate)?
            .input),
        Document::Array(_) => Err(EventError::WrongShape {
            expected: "an event object",
            found: "an array",
        }),
        Document::Other(found) => Err(EventError::WrongShape {
            expected: "an event object",
            found,
        }),
    }
}

fn stored_from_members(members: &[(String, &RawValue)]) -> Result<StoredEvent, EventError> {
    let Parsed { input, server } = Draft::from_members(members)?.finish(0, IdRule::Require)?;
    let topic = required("topic", server.topic, json_string)?;
    let topic = TopicName::try_from(topic)
        .map_err(|error| EventError::invalid("topic", error.to_string()))?;
    let partition = input
        .partition
        .ok_or(EventError::MissingAttribute { name: "partition" })?;
    let offset = required("offset", server.offset, json_unsigned)?;
    let appended_at = required(APPENDED_AT, server.appended_at, json_string)?;
    let appended_at = parse_rfc3339_ms(&appended_at)
        .map_err(|error| EventError::invalid(APPENDED_AT, error.to_string()))?;
    Ok(StoredEvent {
        topic,
        partition,
        offset,
        appended_at,
        event: input.event,
    })
}

/// A member that must be present and not `null`, parsed by `parse`.
fn required<T>(
    name: &'static str,
    value: Option<&RawValue>,
    parse: fn(&str, &RawValue) -> Result<Option<T>, EventError>,
) -> Result<T, EventError> {
    value
        .map(|value| parse(name, value))
        .transpose()?
        .flatten()
        .ok_or(EventError::MissingAttribute { name })
}

/// Attributes gathered from one JSON object or one set of headers, before the
/// rules run.
#[derive(Default)]
struct Draft<'a> {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    key: Option<String>,
    correlationid: Option<String>,
    causationid: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    deliver_at: Option<String>,
    delay_ms: Option<u64>,
    partition: Option<u32>,
    /// Structured mode `data`, raw.
    data: Option<&'a RawValue>,
    /// Structured mode `data_base64`, still encoded.
    data_base64: Option<String>,
    /// Binary mode body.
    body: Option<Bytes>,
    extensions: BTreeMap<String, ExtensionValue>,
    server: ServerMembers<'a>,
}

impl<'a> Draft<'a> {
    /// The slot of a string-valued attribute, by name.
    fn string_slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.ty,
            "subject" => &mut self.subject,
            "time" => &mut self.time,
            "datacontenttype" => &mut self.datacontenttype,
            "dataschema" => &mut self.dataschema,
            "key" => &mut self.key,
            "correlationid" => &mut self.correlationid,
            "causationid" => &mut self.causationid,
            "traceparent" => &mut self.traceparent,
            "tracestate" => &mut self.tracestate,
            DELIVER_AT => &mut self.deliver_at,
            _ => return None,
        })
    }

    /// Structured mode: the members of one JSON object.
    fn from_members(members: &[(String, &'a RawValue)]) -> Result<Self, EventError> {
        let mut draft = Draft::default();
        let mut seen = HashMap::with_capacity(members.len());
        for (sent, value) in members {
            let name = canonical_name(sent);
            if let Some(first) = seen.insert(name, sent.as_str()) {
                return Err(repeated(first, sent));
            }
            if let Some(slot) = draft.string_slot(name) {
                *slot = json_string(sent, value)?;
                continue;
            }
            if SERVER_ASSIGNED.contains(&name) {
                draft.server.named.get_or_insert_with(|| sent.clone());
            }
            match name {
                "partition" => {
                    draft.partition = json_unsigned(name, value)?
                        .map(|partition| {
                            u32::try_from(partition).map_err(|_| {
                                EventError::invalid(name, "must be an integer from 0 to 4294967295")
                            })
                        })
                        .transpose()?;
                }
                DELAY_MS => draft.delay_ms = json_unsigned(sent, value)?,
                "data" => draft.data = Some(value),
                "data_base64" => draft.data_base64 = json_string(name, value)?,
                "topic" => draft.server.topic = Some(value),
                "offset" => draft.server.offset = Some(value),
                APPENDED_AT => draft.server.appended_at = Some(value),
                _ => {
                    validate_extension_name(name)?;
                    if let Some(value) = json_extension(name, value)? {
                        draft.extensions.insert(sent.clone(), value);
                    }
                }
            }
        }
        Ok(draft)
    }

    /// Binary mode: `ce-*` headers, the content type and the body.
    fn from_headers<'h>(
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Self, EventError> {
        let mut draft = Draft::default();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (header, value) in headers {
            let Some(sent) = header
                .get(..3)
                .filter(|prefix| prefix.eq_ignore_ascii_case("ce-"))
                .and(header.get(3..))
            else {
                continue;
            };
            let sent = sent.to_ascii_lowercase();
            let name = canonical_name(&sent).to_owned();
            if let Some(first) = seen.insert(name.clone(), sent.clone()) {
                return Err(repeated(&format!("ce-{first}"), &format!("ce-{sent}")));
            }
            let value = decode_header_value(value).map_err(|reason| {
                EventError::invalid(&name, format!("header ce-{name} {reason}"))
            })?;
            match name.as_str() {
                "datacontenttype" => {
                    return Err(EventError::invalid(
                        &name,
                        "in binary mode the content type is the Content-Type header; \
                         drop ce-datacontenttype",
                    ));
                }
                "data" | "data_base64" => {
                    return Err(EventError::invalid(
                        &name,
                        "in binary mode the data is the request body; drop this header",
                    ));
                }
                _ => {}
            }
            if let Some(slot) = draft.string_slot(&name) {
                *slot = Some(value);
                continue;
            }
            match name.as_str() {
                "partition" => {
                    draft.partition = Some(parse_digits(&value).ok_or_else(|| {
                        EventError::invalid(&name, "must be an integer from 0 to 4294967295")
                    })?);
                }
                DELAY_MS => {
                    draft.delay_ms = Some(parse_digits(&value).ok_or_else(|| {
                        EventError::invalid(&sent, "must be a non-negative integer (milliseconds)")
                    })?);
                }
                "topic" | "offset" | APPENDED_AT => {
                    draft.server.named.get_or_insert(sent);
                }
                _ => {
                    validate_extension_name(&name)?;
                    draft.extensions.insert(name, ExtensionValue::String(value));
                }
            }
        }
        draft.datacontenttype = content_type
            .map(str::trim)
            .filter(|content_type| !content_type.is_empty())
            .map(str::to_owned);
        draft.body = Some(body).filter(|body| !body.is_empty());
        Ok(draft)
    }

    /// Applies the rules and builds the event.
    fn finish(self, now_ms: i64, id_rule: IdRule) -> Result<Parsed<'a>, EventError> {
        let specversion = self.specversion.ok_or(EventError::MissingAttribute {
            name: "specversion",
        })?;
        let source = self
            .source
            .ok_or(EventError::MissingAttribute { name: "source" })?;
        let ty = self
            .ty
            .ok_or(EventError::MissingAttribute { name: "type" })?;
        let id = match (self.id.filter(|id| !id.is_empty()), id_rule) {
            (Some(id), _) => id,
            (None, IdRule::Generate) => new_event_id(now_ms),
            (None, IdRule::Require) => return Err(EventError::MissingAttribute { name: "id" }),
        };
        if id_rule == IdRule::Generate
            && let Some(name) = self.server.named
        {
            return Err(EventError::ReservedAttribute { name });
        }
        let deliver_at = match (self.deliver_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(EventError::ConflictingAttributes {
                    first: DELIVER_AT,
                    second: DELAY_MS,
                });
            }
            (Some(text), None) => Some(
                parse_rfc3339_ms(&text)
                    .map_err(|error| EventError::invalid(DELIVER_AT, error.to_string()))?,
            ),
            (None, Some(delay)) => Some(deliver_at_after(delay, now_ms)?),
            (None, None) => None,
        };
        let data = match (self.data, self.data_base64, self.body) {
            (Some(_), Some(_), _) => {
                return Err(EventError::ConflictingAttributes {
                    first: "data",
                    second: "data_base64",
                });
            }
            (Some(data), None, _) => Some(json_data(data, self.datacontenttype.as_deref())?),
            (None, Some(encoded), _) => Some(decode_base64(&encoded)?),
            (None, None, body) => body,
        };
        let event = Event {
            id,
            source,
            ty,
            specversion,
            subject: self.subject,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data,
            key: self.key,
            correlationid: self.correlationid,
            causationid: self.causationid,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            deliver_at,
            extensions: self.extensions,
        };
        event.validate()?;
        Ok(Parsed {
            input: EventInput {
                event,
                partition: self.partition,
            },
            server: self.server,
        })
    }
}

/// Ids Herald assigns: UUIDv7 with the caller's clock (`now_ms`, clamped at
/// the epoch) in its first 48 bits and 74 random bits, so ids sort by time to
/// the millisecond and are unique without coordination. No shared counter:
/// it would be global state and a lock on the publish path, and a clock that
/// once jumped ahead would drag every later id with it.
fn new_event_id(now_ms: i64) -> String {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let (seconds, subsec_nanos) = (ms / 1000, (ms % 1000) as u32 * 1_000_000);
    Uuid::new_v7(Timestamp::from_unix(NoContext, seconds, subsec_nanos)).to_string()
}

/// The delivery time `delay` ms after `now_ms`, if representable.
fn deliver_at_after(delay: u64, now_ms: i64) -> Result<i64, EventError> {
    i64::try_from(delay)
        .ok()
        .and_then(|delay| now_ms.checked_add(delay))
        .filter(|deliver_at| *deliver_at <= MAX_RFC3339_MS)
        .ok_or_else(|| {
            EventError::invalid(
                DELAY_MS,
                "is too large: the delivery time would be after the year 9999",
            )
        })
}

/// A string attribute: a JSON string, or `null` for absent.
fn json_string(name: &str, value: &RawValue) -> Result<Option<String>, EventError> {
    match value.get().as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'"') => serde_json::from_str(value.get())
            .map(Some)
            .map_err(|error| EventError::invalid(name, error.to_string())),
        _ => Err(EventError::invalid(
            name,
            format!("must be a string, got {}", json_kind(value)),
        )),
    }
}

/// A non-negative integer attribute, or `null` for absent.
fn json_unsigned(name: &str, value: &RawValue) -> Result<Option<u64>, EventError> {
    if value.get() == "null" {
        return Ok(None);
    }
    serde_json::from_str::<u64>(value.get())
        .map(Some)
        .map_err(|_| {
            EventError::invalid(
                name,
                format!("must be a non-negative integer, got {}", Echo(value.get())),
            )
        })
}

/// An extension's value: string, boolean or integer; `null` for absent.
fn json_extension(name: &str, value: &RawValue) -> Result<Option<ExtensionValue>, EventError> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b't') => Ok(Some(ExtensionValue::Bool(true))),
        Some(b'f') => Ok(Some(ExtensionValue::Bool(false))),
        Some(b'"') => serde_json::from_str(text)
            .map(|text| Some(ExtensionValue::String(text)))
            .map_err(|error| EventError::invalid(name, error.to_string())),
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<i64>(text)
            .map(|number| Some(ExtensionValue::Integer(number)))
            .map_err(|_| {
                EventError::invalid(
                    name,
                    format!(
                        "extension values must be a string, a boolean or an integer \
                         from -2^63 to 2^63-1, got {}",
                        Echo(text)
                    ),
                )
            }),
        _ => Err(EventError::invalid(
            name,
            format!(
                "extension values must be a string, a boolean or an integer, got {}",
                json_kind(value)
            ),
        )),
    }
}

/// The deepest nesting JSON `data` may have. Herald stores the text as is
/// and could serve any depth, but common JSON parsers (serde_json's default
/// among them) refuse documents nested past 128 levels, so one deeper event
/// would make every read or delivery that contains it unreadable to them.
/// Binary mode and gRPC take data bytes as they are, so deeper JSON data
/// can be stored that way; it is rendered as `data_base64`.
pub const MAX_DATA_DEPTH: usize = 64;

/// The deepest array/object nesting of JSON text (brackets in strings
/// don't count).
fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Structured-mode `data` to bytes by the content type.
fn json_data(data: &RawValue, content_type: Option<&str>) -> Result<Bytes, EventError> {
    if is_json_content_type(content_type) {
        let depth = json_depth(data.get().as_bytes());
        if depth > MAX_DATA_DEPTH {
            return Err(EventError::invalid(
                "data",
                format!("is nested {depth} levels deep; at most {MAX_DATA_DEPTH} are accepted"),
            ));
        }
        return Ok(Bytes::from(minify_json(data.get())));
    }
    if data.get().starts_with('"') {
        let text: String = serde_json::from_str(data.get())
            .map_err(|error| EventError::invalid("data", error.to_string()))?;
        return Ok(Bytes::from(text));
    }
    Err(EventError::invalid(
        "data",
        format!(
            "is {}, but datacontenttype {} is not JSON; send the data as a string, \
             or binary data as data_base64",
            json_kind(data),
            Echo(content_type.unwrap_or_default())
        ),
    ))
}

fn decode_base64(encoded: &str) -> Result<Bytes, EventError> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(encoded).map(Bytes::from).map_err(|error| {
        EventError::invalid(
            "data_base64",
            format!("is not valid base64 (RFC 4648): {error}"),
        )
    })
}

/// Removes the whitespace outside strings from valid JSON text.
fn minify_json(text: &str) -> String {
    let mut compact = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for character in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == '"' {
                in_string = false;
            }
        } else if matches!(character, ' ' | '\t' | '\n' | '\r') {
            continue;
        } else if character == '"' {
            in_string = true;
        }
        compact.push(character);
    }
    compact
}

/// What kind of JSON value a raw value is, for messages.
fn json_kind(value: &RawValue) -> &'static str {
    match value.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Whether a content type declares JSON: absent, or a media type (parameters
/// stripped, case-insensitive) of `*/json` or `*/*+json`.
fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    media_type(content_type)
        .split_once('/')
        .is_some_and(|(_, subtype)| {
            let subtype = subtype.as_bytes();
            subtype.eq_ignore_ascii_case(b"json")
                || subtype
                    .len()
                    .checked_sub(b"+json".len())
                    .is_some_and(|at| subtype[at..].eq_ignore_ascii_case(b"+json"))
        })
}

/// Whether `text` can be an HTTP header value as it is: visible ASCII,
/// spaces and tabs inside, nothing HTTP would trim around it.
fn is_header_value(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_graphic() || byte == b' ' || byte == b'\t')
        && text.trim_matches([' ', '\t']) == text
}

/// Whether a content type is textual (`text/*`) and not JSON.
fn is_text_content_type(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|content_type| {
        media_type(content_type)
            .as_bytes()
            .get(..b"text/".len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"text/"))
            && !is_json_content_type(Some(content_type))
    })
}

/// A content type's media type: parameters stripped, trimmed (compared
/// case-insensitively by its callers; it is on every served event's path,
/// so not lowercased into a copy).
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// The longest extension attribute name (CloudEvents: 1–20 characters of
/// `a-z0-9`).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;

/// The attribute names an extension may not have: the CloudEvents context
/// attributes and Herald's own (those a producer sets and those it serves).
pub const RESERVED_ATTRIBUTES: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "key",
    "partitionkey",
    "partition",
    "delayms",
    "deliverat",
    "correlationid",
    "causationid",
    "traceparent",
    "tracestate",
    "topic",
    "offset",
    "appendedat",
    // The names before 0.2 (not valid CloudEvents names), still read.
    "delay_ms",
    "deliver_at",
    "appended_at",
];

/// The attributes only Herald assigns, refused on publish
/// (`reserved_attribute`); `partition` is not among them: a producer may
/// pin one.
pub const SERVER_ASSIGNED: &[&str] = &["topic", "offset", APPENDED_AT];

/// When an event is due (RFC 3339), on the wire.
pub const DELIVER_AT: &str = "deliverat";
/// How long from now an event is due (ms), on input.
pub const DELAY_MS: &str = "delayms";
/// When an event was appended (RFC 3339), on the wire.
pub const APPENDED_AT: &str = "appendedat";

/// The name an attribute is read under: `partitionkey` (the CloudEvents
/// Partitioning extension) is `key`, and the names Herald used before it
/// kept to CloudEvents' `a-z0-9` (`deliver_at`, `delay_ms`,
/// `appended_at`; deprecated, read for one more release) are today's.
fn canonical_name(name: &str) -> &str {
    match name {
        "partitionkey" => "key",
        "deliver_at" => DELIVER_AT,
        "delay_ms" => DELAY_MS,
        "appended_at" => APPENDED_AT,
        other => other,
    }
}

/// The error for an attribute seen twice: the same name, or two names of
/// one attribute (`key` and `partitionkey`, `deliverat` and `deliver_at`).
fn repeated(first: &str, second: &str) -> EventError {
    if first == second {
        EventError::DuplicateAttribute {
            name: second.to_owned(),
        }
    } else {
        EventError::InvalidAttribute {
            name: second.to_owned(),
            reason: format!("names the same attribute as {}; send only one", Echo(first)),
        }
    }
}

/// Why a reserved attribute is refused, for its error message.
fn reserved_reason(name: &str) -> &'static str {
    if SERVER_ASSIGNED.contains(&canonical_name(name)) {
        "Herald assigns it when the event is appended; drop it from the event"
    } else {
        "it is a CloudEvents or Herald attribute and cannot be an extension"
    }
}

/// Extension names per CloudEvents: 1–20 of `a-z0-9`.
fn validate_extension_name(name: &str) -> Result<(), EventError> {
    let valid = (1..=MAX_EXTENSION_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(EventError::invalid(
            name,
            "is not a known attribute, and extension attribute names must be 1 to 20 \
             lowercase letters (a-z) or digits",
        ))
    }
}

/// Names that are never extensions: CloudEvents context attributes, `data`,
/// and Herald's own attributes, including the server-assigned ones.
fn is_reserved(name: &str) -> bool {
    RESERVED_ATTRIBUTES.contains(&name)
}

/// W3C trace context: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, trace id and
/// parent id not all zeros.
fn validate_traceparent(value: &str) -> Result<(), EventError> {
    let invalid = |what: &str| {
        EventError::invalid(
            "traceparent",
            format!(
                "{} {what}; expected W3C trace context 00-<32 hex trace id>-<16 hex parent id>-<2 hex \
                 flags>, lowercase, ids not all zeros",
                Echo(value)
            ),
        )
    };
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace_id, parent_id, flags] = parts.as_slice() else {
        return Err(invalid("does not have four dash-separated fields"));
    };
    let is_hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    if *version != "00" {
        return Err(invalid("has a version other than 00"));
    }
    if !is_hex(trace_id, 32) || !is_hex(parent_id, 16) || !is_hex(flags, 2) {
        return Err(invalid(
            "has a field of the wrong length or a non-hex digit",
        ));
    }
    if trace_id.bytes().all(|byte| byte == b'0') || parent_id.bytes().all(|byte| byte == b'0') {
        return Err(invalid("has an all-zero id"));
    }
    Ok(())
}

/// A binary-mode header value to the attribute value: unquote a
/// double-quoted string, then one round of percent-decoding, which must give
/// UTF-8. The error completes "header ce-<name> …".
fn decode_header_value(value: &str) -> Result<String, String> {
    let value = value.trim_matches([' ', '\t']);
    let unquoted;
    let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        unquoted = unquote(&value[1..value.len() - 1])?;
        unquoted.as_str()
    } else {
        value
    };
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let high = bytes.get(index + 1).and_then(|digit| hex_value(*digit));
            let low = bytes.get(index + 2).and_then(|digit| hex_value(*digit));
            let (Some(high), Some(low)) = (high, low) else {
                return Err(
                    "has a '%' not followed by two hex digits; encode '%' as %25".to_owned(),
                );
            };
            decoded.push(high << 4 | low);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| "percent-decodes to bytes that are not UTF-8".to_owned())
}

/// The inside of an HTTP quoted-string: `\x` stands for `x`.
fn unquote(inner: &str) -> Result<String, String> {
    let mut text = String::with_capacity(inner.len());
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => match characters.next() {
                Some(escaped) => text.push(escaped),
                None => return Err("has a quoted string ending in a lone '\\'".to_owned()),
            },
            '"' => return Err("has a '\"' inside a quoted string; escape it as \\\"".to_owned()),
            character => text.push(character),
        }
    }
    Ok(text)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes per the CloudEvents HTTP binding: space, `"`, `%` and
/// everything outside printable ASCII, as upper-case `%XX` of the UTF-8 bytes.
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if matches!(byte, 0x21..=0x7e) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Plain decimal digits only (no sign, no spaces).
fn parse_digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl<'de> Deserialize<'de> for Document<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            members.push((name, map.next_value::<&'de RawValue>()?));
        }
        Ok(Document::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            elements.push(element);
        }
        Ok(Document::Array(elements))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Document::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Document::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Document::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Document::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Document::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Document::Other("null"))
    }
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

fn serialize_attributes<M: SerializeMap>(event: &Event, map: &mut M) -> Result<(), M::Error> {
    map.serialize_entry("specversion", &event.specversion)?;
    map.serialize_entry("id", &event.id)?;
    map.serialize_entry("source", &event.source)?;
    map.serialize_entry("type", &event.ty)?;
    for (name, value) in event.optional_strings() {
        if let Some(value) = value {
            map.serialize_entry(name, value)?;
        }
    }
    if let Some(deliver_at) = event.deliver_at {
        map.serialize_entry(DELIVER_AT, &format_rfc3339_ms(deliver_at))?;
    }
    for (name, value) in event.renderable_extensions() {
        map.serialize_entry(name, value)?;
    }
    Ok(())
}

/// How an event's data goes out in structured mode.
#[derive(Clone, Copy)]
enum DataOut<'a> {
    /// `data`, the JSON as it is.
    Json(&'a RawValue),
    /// `data`, a string.
    Text(&'a str),
    /// `data_base64`.
    Base64(&'a [u8]),
}

fn data_out(event: &Event) -> Option<DataOut<'_>> {
    let data = event.data.as_ref()?;
    let content_type = event.datacontenttype.as_deref();
    if is_json_content_type(content_type) {
        // Deeper JSON (binary mode and gRPC take bytes as they are) goes
        // out as data_base64: embedded, the structured decoder would refuse
        // the event, and at 128 levels serde_json could not read it at all.
        if json_depth(data) <= MAX_DATA_DEPTH
            && check_surrogates(data).is_ok()
            && let Ok(json) = serde_json::from_slice::<&RawValue>(data)
        {
            return Some(DataOut::Json(json));
        }
    } else if is_text_content_type(content_type)
        && let Ok(text) = std::str::from_utf8(data)
    {
        return Some(DataOut::Text(text));
    }
    Some(DataOut::Base64(data))
}

fn serialize_data<M: SerializeMap>(data: Option<DataOut<'_>>, map: &mut M) -> Result<(), M::Error> {
    match data {
        None => Ok(()),
        Some(DataOut::Json(json)) => map.serialize_entry("data", json),
        Some(DataOut::Text(text)) => map.serialize_entry("data", text),
        Some(DataOut::Base64(bytes)) => map.serialize_entry("data_base64", &STANDARD.encode(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_714_564_800_000; // 2024-05-01T12:00:00Z

    #[expect(
        clippy::needless_pass_by_value,
        reason = "reads better at the call sites"
    )]
    fn parse(json: serde_json::Value) -> Result<EventInput, EventError> {
        EventInput::from_json(json.to_string().as_bytes(), NOW)
    }

    fn event(json: serde_json::Value) -> Event {
        parse(json).unwrap().event
    }

    fn minimal_without_id() -> String {
        without(minimal(), "id").to_string()
    }

    fn minimal() -> serde_json::Value {
        json!({"specversion": "1.0", "id": "e-1", "source": "/orders", "type": "order.created"})
    }

    fn with(
        mut base: serde_json::Value,
        name: &str,
        value: serde_json::Value,
    ) -> serde_json::Value {
        base[name] = value;
        base
    }

    fn without(mut base: serde_json::Value, name: &str) -> serde_json::Value {
        base.as_object_mut().unwrap().remove(name);
        base
    }

    fn invalid_reason(result: Result<EventInput, EventError>, attribute: &str) -> String {
        match result {
            Err(EventError::InvalidAttribute { name, reason }) if name == attribute => reason,
            other => panic!("expected invalid attribute {attribute:?}, got {other:?}"),
        }
    }

    fn ce_headers(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut headers = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "/orders"),
            ("ce-type", "order.created"),
        ];
        headers.extend_from_slice(extra);
        headers
    }

    fn binary(
        headers: &[(&'static str, &'static str)],
        content_type: Option<&str>,
        body: &'static [u8],
    ) -> Result<EventInput, EventError> {
        EventInput::from_binary(
            headers.iter().copied(),
            content_type,
            Bytes::from_static(body),
            NOW,
        )
    }

    // --- structured mode: required attributes and ids ----------------------

    #[test]
    fn given_minimal_event_when_parsed_should_keep_required_attributes_only() {
        let input = parse(minimal()).unwrap();
        assert_eq!(
            input,
            EventInput {
                event: Event::new("e-1", "/orders", "order.created"),
                partition: None
            }
        );
    }

    #[test]
    fn given_missing_or_empty_id_when_parsed_should_assign_uuid_v7_on_the_given_clock() {
        for json in [
            without(minimal(), "id"),
            with(minimal(), "id", json!("")),
            with(minimal(), "id", json!(null)),
        ] {
            let id = event(json).id;
            let uuid = Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 7);
            let (seconds, _) = uuid.get_timestamp().unwrap().to_unix();
            assert_eq!(seconds, (NOW / 1000) as u64);
        }
    }

    #[test]
    fn given_many_generated_ids_in_one_millisecond_when_compared_should_be_unique() {
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| event(without(minimal(), "id")).id)
            .collect();
        assert_eq!(ids.len(), 1000);
        let later = EventInput::from_json(minimal_without_id().as_bytes(), NOW + 1).unwrap();
        assert!(ids.iter().all(|id| *id < later.event.id));
    }

    #[test]
    fn given_missing_required_attribute_when_parsed_should_name_it() {
        for name in ["specversion", "source", "type"] {
            for json in [without(minimal(), name), with(minimal(), name, json!(null))] {
                let error = parse(json).unwrap_err();
                assert_eq!(
                    error.to_string(),
                    format!("missing required attribute \"{name}\"")
                );
                assert_eq!(error.code(), "invalid_event");
            }
        }
    }

    #[test]
    fn given_other_specversion_when_parsed_should_accept_only_1_0() {
        let reason = invalid_reason(
            parse(with(minimal(), "specversion", json!("0.3"))),
            "specversion",
        );
        assert_eq!(reason, r#"Herald accepts only "1.0", got "0.3""#);
        let reason = invalid_reason(
            parse(with(minimal(), "specversion", json!(1.0))),
            "specversion",
        );
        assert_eq!(reason, "must be a string, got a number");
    }

    #[test]
    fn given_empty_or_non_string_attributes_when_parsed_should_reject() {
        for name in ["source", "type"] {
            let reason = invalid_reason(parse(with(minimal(), name, json!(""))), name);
            assert_eq!(reason, "must not be empty");
        }
        for name in [
            "subject",
            "datacontenttype",
            "dataschema",
            "key",
            "correlationid",
            "causationid",
            "tracestate",
        ] {
            let reason = invalid_reason(parse(with(minimal(), name, json!(""))), name);
            assert_eq!(reason, "must not be empty; leave it out instead");
            let reason = invalid_reason(parse(with(minimal(), name, json!(["x"]))), name);
            assert_eq!(reason, "must be a string, got an array");
        }
    }

    #[test]
    fn given_optional_attributes_when_parsed_should_keep_them_and_treat_null_as_absent() {
        let json = json!({
            "specversion": "1.0", "id": "e-1", "source": "/orders", "type": "order.created",
            "subject": "order-42", "time": "2024-05-01T14:00:00.5+02:00",
            "dataschema": "https://example.com/order.json", "key": "order-42",
            "correlationid": "c-1", "causationid": "e-0",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "congo=t61rcWkgMzE", "datacontenttype": null,
        });
        let event = event(json);
        assert_eq!(event.subject.as_deref(), Some("order-42"));
        assert_eq!(event.time.as_deref(), Some("2024-05-01T14:00:00.5+02:00"));
        assert_eq!(
            event.dataschema.as_deref(),
            Some("https://example.com/order.json")
        );
        assert_eq!(event.key.as_deref(), Some("order-42"));
        assert_eq!(event.correlationid.as_deref(), Some("c-1"));
        assert_eq!(event.causationid.as_deref(), Some("e-0"));
        assert_eq!(event.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert!(event.traceparent.is_some());
        assert_eq!(event.datacontenttype, None);
    }

    #[test]
    fn given_time_not_rfc3339_when_parsed_should_reject_naming_the_format() {
        let reason = invalid_reason(parse(with(minimal(), "time", json!("yesterday"))), "time");
        assert!(
            reason.contains(r#""yesterday" is not an RFC 3339 timestamp"#),
            "{reason}"
        );
    }

    #[test]
    fn given_duplicate_attribute_when_parsed_should_reject() {
        let body = br#"{"specversion":"1.0","id":"a","source":"/s","type":"t","id":"b"}"#;
        let error = EventInput::from_json(body, NOW).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"attribute "id" is given twice; send it once"#
        );
    }

    // --- structured mode: JSON shape -----------------------------------------

    #[test]
    fn given_malformed_json_when_parsed_should_give_line_and_column_and_code() {
        let error = EventInput::from_json(b"{\n  \"id\": \"a\",\n  oops\n}", NOW).unwrap_err();
        assert_eq!(error.code(), "malformed_json");
        let EventError::MalformedJson { line, column, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!((*line, *column), (3, 3));
        assert!(error.to_string().starts_with("malformed JSON: "), "{error}");
        assert!(error.to_string().contains("line 3 column 3"), "{error}");
        for body in [
            &b""[..],
            b"{",
            b"{\"a\":1} x",
            b"\xff\xfe",
            b"{\"a\":\"\xff\"}",
        ] {
            assert_eq!(
                EventInput::from_json(body, NOW).unwrap_err().code(),
                "malformed_json"
            );
        }
    }

    #[test]
    fn given_json_that_is_not_an_object_when_parsed_should_say_what_was_found() {
        let error = EventInput::from_json(b"[]", NOW).unwrap_err();
        assert_eq!(error.code(), "invalid_event");
        assert!(
            error
                .to_string()
                .contains("application/cloudevents-batch+json"),
            "{error}"
        );
        assert!(error.to_string().ends_with("found an array"), "{error}");
        for (body, found) in [
            ("\"x\"", "a string"),
            ("1", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let error = EventInput::from_json(body.as_bytes(), NOW).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("expected a JSON object (one event), found {found}")
            );
        }
    }

    // --- structured mode: extensions and reserved names ----------------------

    #[test]
    fn given_extensions_when_parsed_should_keep_strings_booleans_and_integers() {
        let mut json = minimal();
        json["tenant"] = json!("acme");
        json["urgent"] = json!(true);
        json["priority"] = json!(-5);
        json["big"] = json!(i64::MAX);
        json["unset"] = json!(null);
        let event = event(json);
        let expected: BTreeMap<String, ExtensionValue> = [
            ("big".to_owned(), ExtensionValue::Integer(i64::MAX)),
            ("priority".to_owned(), ExtensionValue::Integer(-5)),
            (
                "tenant".to_owned(),
                ExtensionValue::String("acme".to_owned()),
            ),
            ("urgent".to_owned(), ExtensionValue::Bool(true)),
        ]
        .into();
        assert_eq!(event.extensions, expected);
    }

    #[test]
    fn given_extension_of_another_json_type_when_parsed_should_reject() {
        for value in [
            json!(1.5),
            json!({"a": 1}),
            json!([1]),
            json!(u64::MAX),
            json!(1e3),
        ] {
            let reason = invalid_reason(parse(with(minimal(), "ext", value.clone())), "ext");
            assert!(
                reason.starts_with("extension values must be a string, a boolean or an integer"),
                "{value}: {reason}"
            );
        }
    }

    #[test]
    fn given_bad_extension_names_when_parsed_should_reject_with_the_naming_rule() {
        for name in [
            "Tenant",
            "my_ext",
            "my-ext",
            "abcdefghijklmnopqrstu",
            "é",
            "",
        ] {
            let reason = invalid_reason(parse(with(minimal(), name, json!("x"))), name);
            assert!(
                reason.contains("1 to 20 lowercase letters (a-z) or digits"),
                "{name}: {reason}"
            );
        }
        assert!(parse(with(minimal(), "abcdefghijklmnopqrst", json!("x"))).is_ok());
    }

    #[test]
    fn given_server_assigned_members_when_published_should_refuse_as_reserved() {
        for (name, value) in [
            ("topic", json!("other")),
            ("offset", json!(7)),
            ("appendedat", json!("2024-05-01T12:00:00Z")),
            ("appended_at", json!("garbage")),
        ] {
            let error = parse(with(minimal(), name, value)).unwrap_err();
            assert_eq!(error.code(), "reserved_attribute", "{name}");
            assert!(error.to_string().contains("Herald assigns it"), "{error}");
            let header: &'static str = format!("ce-{name}").leak();
            let headers = ce_headers(&[(header, "1")]);
            let error = binary(&headers, None, b"").unwrap_err();
            assert_eq!(error.code(), "reserved_attribute", "ce-{name}");
        }
        // `partition` pins one: a producer may send it.
        assert_eq!(
            parse(with(minimal(), "partition", json!(1)))
                .unwrap()
                .partition,
            Some(1)
        );
    }

    #[test]
    fn given_reserved_name_as_extension_in_code_when_validated_should_reject() {
        let mut event = Event::new("e-1", "/s", "t");
        event.extensions.insert("topic".to_owned(), "x".into());
        let error = event.validate().unwrap_err();
        assert!(error.to_string().contains("reserved"), "{error}");
    }

    // --- structured mode: Herald attributes ----------------------------------

    #[test]
    fn given_partition_when_parsed_should_pin_it_and_reject_non_u32() {
        assert_eq!(
            parse(with(minimal(), "partition", json!(3)))
                .unwrap()
                .partition,
            Some(3)
        );
        assert_eq!(
            parse(with(minimal(), "partition", json!(null)))
                .unwrap()
                .partition,
            None
        );
        for value in [json!(-1), json!(1.5), json!("3"), json!(4_294_967_296_u64)] {
            assert!(
                matches!(
                    parse(with(minimal(), "partition", value.clone())),
                    Err(EventError::InvalidAttribute { name, .. }) if name == "partition"
                ),
                "{value}"
            );
        }
    }

    #[test]
    fn given_deliver_at_or_delay_when_parsed_should_set_deliver_at_ms() {
        let at = event(with(
            minimal(),
            "deliver_at",
            json!("2024-05-01T12:00:01.5Z"),
        ));
        assert_eq!(at.deliver_at, Some(NOW + 1500));
        let delayed = event(with(minimal(), "delay_ms", json!(30_000)));
        assert_eq!(delayed.deliver_at, Some(NOW + 30_000));
    }

    #[test]
    fn given_both_deliver_at_and_delay_when_parsed_should_reject_as_conflict() {
        let json = with(
            with(minimal(), "delay_ms", json!(1)),
            "deliver_at",
            json!("2024-05-01T12:00:00Z"),
        );
        let error = parse(json).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#""deliverat" and "delayms" exclude each other; send only one"#
        );
    }

    #[test]
    fn given_the_names_before_cloudevents_rules_when_parsed_should_still_read_them() {
        let at = event(with(
            minimal(),
            "deliver_at",
            json!("2024-05-01T12:00:01.500Z"),
        ));
        assert_eq!(at.deliver_at, Some(NOW + 1500));
        let delayed = event(with(minimal(), "delay_ms", json!(30_000)));
        assert_eq!(delayed.deliver_at, Some(NOW + 30_000));
        let headers = ce_headers(&[("ce-delay_ms", "1000")]);
        let input = binary(&headers, None, b"").unwrap();
        assert_eq!(input.event.deliver_at, Some(NOW + 1000));
        // Rendered under today's name only.
        let text = serde_json::to_string(&at).unwrap();
        assert!(
            text.contains(r#""deliverat":"2024-05-01T12:00:01.500Z""#),
            "{text}"
        );
        assert!(!text.contains("deliver_at"), "{text}");
    }

    #[test]
    fn given_an_attribute_under_two_of_its_names_when_parsed_should_reject_naming_both() {
        for (old, new, value) in [
            ("deliver_at", "deliverat", json!("2024-05-01T12:00:01Z")),
            ("delay_ms", "delayms", json!(5)),
            ("partitionkey", "key", json!("k")),
        ] {
            let error = parse(with(with(minimal(), new, value.clone()), old, value)).unwrap_err();
            assert!(
                matches!(&error, EventError::InvalidAttribute { reason, .. } if reason.contains("names the same attribute")),
                "{old}/{new}: {error}"
            );
            assert_eq!(error.code(), "invalid_event");
        }
        let headers = ce_headers(&[("ce-key", "a"), ("ce-partitionkey", "a")]);
        assert!(binary(&headers, None, b"").is_err());
    }

    #[test]
    fn given_partitionkey_when_parsed_should_be_the_partition_key() {
        let input = event(with(minimal(), "partitionkey", json!("order-42")));
        assert_eq!(input.key.as_deref(), Some("order-42"));
        assert!(input.extensions.is_empty());
        let headers = ce_headers(&[("ce-partitionkey", "order-7")]);
        let input = binary(&headers, None, b"").unwrap();
        assert_eq!(input.event.key.as_deref(), Some("order-7"));
        let mut built = Event::new("e-1", "/orders", "order.created");
        built
            .extensions
            .insert("partitionkey".to_owned(), "x".into());
        assert_eq!(built.validate().unwrap_err().code(), "reserved_attribute");
    }

    #[test]
    fn given_lone_surrogate_escapes_when_parsed_should_refuse_as_malformed_json() {
        for (body, line, column) in [
            (r#"{"data": {"x": "\ud800"}}"#, 1, 17),
            (r#"{"data": "\udc00"}"#, 1, 11),
            ("{\n  \"subject\": \"a\\ud83d\"}", 2, 16),
            (r#"{"data": ["\ud83d\u0041"]}"#, 1, 12),
            (r#"{"data": "\uD800x"}"#, 1, 11),
        ] {
            let error = EventInput::from_json(body.as_bytes(), NOW).unwrap_err();
            assert!(
                matches!(error, EventError::LoneSurrogate { line: l, column: c, .. } if l == line && c == column),
                "{body}: {error:?}"
            );
            assert_eq!(error.code(), "malformed_json", "{body}");
        }
        let batch = r#"[{"specversion":"1.0","source":"/s","type":"t","data":"\udbff"}]"#;
        assert_eq!(
            EventInput::batch_from_json(batch.as_bytes(), NOW)
                .unwrap_err()
                .code(),
            "malformed_json"
        );
        // Bytes under a JSON content type (binary mode, gRPC) the same way;
        // bytes that are not JSON at all stay opaque.
        let lone = br#"{"x":"\ud800"}"#;
        let headers = ce_headers(&[]);
        let error = binary(&headers, Some("application/json"), lone).unwrap_err();
        assert_eq!(error.code(), "malformed_json");
        assert!(binary(&headers, Some("text/plain"), lone).is_ok());
        assert!(binary(&headers, Some("application/json"), br#"not json \ud800"#).is_ok());
        let mut built = Event::new("e-1", "/orders", "order.created");
        built.data = Some(Bytes::from_static(lone));
        let error = EventInput::from_parts(built.clone(), None, None, NOW).unwrap_err();
        assert_eq!(error.code(), "malformed_json");
        // Such data stored before the check is served as data_base64.
        let text = serde_json::to_string(&built).unwrap();
        assert!(
            text.contains("data_base64") && !text.contains("ud800"),
            "{text}"
        );
        // Pairs, escaped backslashes and plain text are fine.
        for data in [
            r#""\ud83d\ude00""#,
            r#""\\ud800""#,
            r#""\\\ud83d\uDE00""#,
            r#""é \u00e9""#,
        ] {
            let body = format!(
                r#"{{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{data}}}"#
            );
            assert!(
                EventInput::from_json(body.as_bytes(), NOW).is_ok(),
                "{data}"
            );
        }
    }

    #[test]
    fn given_bad_delay_or_deliver_at_when_parsed_should_reject() {
        for value in [json!(-1), json!(1.5), json!("10"), json!(u64::MAX)] {
            assert!(
                parse(with(minimal(), "delay_ms", value.clone())).is_err(),
                "{value}"
            );
        }
        let reason = invalid_reason(
            parse(with(minimal(), "delayms", json!(i64::MAX))),
            "delayms",
        );
        assert!(reason.contains("too large"), "{reason}");
        let reason = invalid_reason(
            parse(with(minimal(), "deliverat", json!("soon"))),
            "deliverat",
        );
        assert!(reason.contains("RFC 3339"), "{reason}");
        assert!(parse(with(minimal(), "deliverat", json!(5))).is_err());
        assert!(parse(with(minimal(), "deliver_at", json!(5))).is_err());
    }

    #[test]
    fn given_valid_traceparent_when_parsed_should_keep_it() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            event(with(minimal(), "traceparent", json!(value)))
                .traceparent
                .as_deref(),
            Some(value)
        );
    }

    #[test]
    fn given_malformed_traceparent_when_parsed_should_reject_with_expected_format() {
        for value in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let reason = invalid_reason(
                parse(with(minimal(), "traceparent", json!(value))),
                "traceparent",
            );
            assert!(
                reason.contains("expected W3C trace context 00-"),
                "{value}: {reason}"
            );
        }
    }

    // --- structured mode: data ------------------------------------------------

    #[test]
    fn given_json_data_when_parsed_should_store_compact_text_exactly() {
        let body = br#"{"specversion":"1.0","id":"a","source":"/s","type":"t",
            "data" : { "note" : "two  spaces\n\"q\"" ,
                       "big" : 123456789012345678901234567890, "x": 1.50e2 } }"#;
        let event = EventInput::from_json(body, NOW).unwrap().event;
        assert_eq!(
            event.data.unwrap(),
            Bytes::from_static(
                br#"{"note":"two  spaces\n\"q\"","big":123456789012345678901234567890,"x":1.50e2}"#
            )
        );
    }

    #[test]
    fn given_json_content_types_when_data_is_a_string_should_store_json_text() {
        for content_type in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
            "application/vnd.herald.order+json",
            "text/json",
        ] {
            let json = with(
                with(minimal(), "datacontenttype", json!(content_type)),
                "data",
                json!("hi"),
            );
            assert_eq!(
                event(json).data.unwrap(),
                Bytes::from_static(b"\"hi\""),
                "{content_type}"
            );
        }
        assert_eq!(
            event(with(minimal(), "data", json!("hi"))).data.unwrap(),
            Bytes::from_static(b"\"hi\"")
        );
        assert_eq!(
            event(with(minimal(), "data", json!(null))).data.unwrap(),
            Bytes::from_static(b"null")
        );
    }

    #[test]
    fn given_text_content_type_when_data_is_a_string_should_store_its_bytes() {
        let json = with(
            with(minimal(), "datacontenttype", json!("text/plain")),
            "data",
            json!("héllo \"x\""),
        );
        assert_eq!(
            event(json).data.unwrap(),
            Bytes::from("héllo \"x\"".as_bytes())
        );
        let json = with(
            with(minimal(), "datacontenttype", json!("application/xml")),
            "data",
            json!("<a/>"),
        );
        assert_eq!(event(json).data.unwrap(), Bytes::from_static(b"<a/>"));
    }

    #[test]
    fn given_non_json_content_type_when_data_is_not_a_string_should_reject() {
        for value in [json!({"a": 1}), json!(1), json!(null), json!([])] {
            let json = with(
                with(minimal(), "datacontenttype", json!("text/plain")),
                "data",
                value.clone(),
            );
            let reason = invalid_reason(parse(json), "data");
            assert!(
                reason.contains(r#"datacontenttype "text/plain" is not JSON"#),
                "{value}: {reason}"
            );
        }
    }

    #[test]
    fn given_data_base64_when_parsed_should_decode_with_or_without_padding() {
        let json = with(
            with(
                minimal(),
                "datacontenttype",
                json!("application/octet-stream"),
            ),
            "data_base64",
            json!("AAEC/w=="),
        );
        assert_eq!(
            event(json).data.unwrap(),
            Bytes::from_static(&[0, 1, 2, 255])
        );
        assert_eq!(
            event(with(minimal(), "data_base64", json!("AAEC/w")))
                .data
                .unwrap(),
            Bytes::from_static(&[0, 1, 2, 255])
        );
        assert_eq!(
            event(with(minimal(), "data_base64", json!(null))).data,
            None
        );
    }

    #[test]
    fn given_bad_base64_or_both_data_members_when_parsed_should_reject() {
        for value in [json!("not base64!"), json!("A"), json!(5)] {
            assert!(
                matches!(
                    parse(with(minimal(), "data_base64", value.clone())),
                    Err(EventError::InvalidAttribute { name, .. }) if name == "data_base64"
                ),
                "{value}"
            );
        }
        let json = with(
            with(minimal(), "data", json!(1)),
            "data_base64",
            json!("AA=="),
        );
        assert!(matches!(
            parse(json),
            Err(EventError::ConflictingAttributes {
                first: "data",
                second: "data_base64"
            })
        ));
    }

    #[test]
    fn given_deeply_nested_data_when_parsed_should_refuse_it_without_overflowing_the_stack() {
        let nested = |depth: usize| {
            format!(
                r#"{{"specversion":"1.0","source":"/s","type":"t","data":{}"[{{\"]"{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        // At the limit (brackets inside strings don't count): accepted.
        let data = EventInput::from_json(nested(MAX_DATA_DEPTH).as_bytes(), NOW)
            .unwrap()
            .event
            .data
            .unwrap();
        assert!(data.len() > 2 * MAX_DATA_DEPTH);
        let rendered = serde_json::to_string(&Event {
            data: Some(data),
            ..Event::new("a", "/s", "t")
        })
        .unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&rendered).is_ok());
        // Past it, and far past it: refused, naming data.
        for depth in [MAX_DATA_DEPTH + 1, 100_000] {
            let error = EventInput::from_json(nested(depth).as_bytes(), NOW).unwrap_err();
            assert!(error.to_string().contains("data"), "{error}");
        }
        let depth = 100_000;
        let deep_extension = format!(
            r#"{{"specversion":"1.0","source":"/s","type":"t","ext":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(EventInput::from_json(deep_extension.as_bytes(), NOW).is_err());
    }

    #[test]
    fn given_content_type_that_cannot_be_a_header_when_parsed_should_refuse_it() {
        // Found by the fuzz target event_json: " application/json" was
        // stored as sent, but binary mode carries the content type as the
        // Content-Type header, which HTTP trims (and which cannot hold
        // control or non-ASCII characters), so the event could not be sent
        // on in binary mode as itself.
        for content_type in [
            " application/json",
            "text/plain ",
            "text/pl\u{1}ain",
            "text/plé",
        ] {
            let json = with(minimal(), "datacontenttype", json!(content_type));
            let error = parse(json).unwrap_err();
            assert!(
                error.to_string().contains("datacontenttype"),
                "{content_type:?}: {error}"
            );
        }
        let json = with(
            minimal(),
            "datacontenttype",
            json!("text/plain; charset=utf-8"),
        );
        assert!(parse(json).is_ok());
    }

    #[test]
    fn given_json_data_nested_past_the_limit_in_binary_mode_when_rendered_should_read_back() {
        // Binary mode (and gRPC) take the body as it is, so JSON data may
        // be nested deeper than structured mode accepts. Found by the fuzz
        // target event_binary: such an event rendered with `data` embedded
        // was refused by the structured decoder (so a consumed event could
        // not be published again as it is), and at 128 levels the rendered
        // event was past serde_json's own recursion limit.
        for depth in [MAX_DATA_DEPTH + 1, 128] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let headers = [
                ("ce-specversion", "1.0"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
            ];
            let event =
                EventInput::from_binary(headers, Some("application/json"), Bytes::from(body), NOW)
                    .unwrap()
                    .event;
            let rendered = serde_json::to_string(&event).unwrap();
            assert!(
                serde_json::from_str::<serde_json::Value>(&rendered).is_ok(),
                "depth {depth}: the rendering is not readable JSON"
            );
            let back = EventInput::from_json(rendered.as_bytes(), NOW);
            assert_eq!(
                back.map(|input| input.event).ok(),
                Some(event),
                "depth {depth}"
            );
        }
    }

    // --- batches ---------------------------------------------------------------

    #[test]
    fn given_batch_when_parsed_should_keep_order() {
        let body = json!([
            minimal(),
            with(with(minimal(), "id", json!("e-2")), "partition", json!(1))
        ]);
        let inputs = EventInput::batch_from_json(body.to_string().as_bytes(), NOW).unwrap();
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[0].event.id, "e-1");
        assert_eq!(
            (inputs[1].event.id.as_str(), inputs[1].partition),
            ("e-2", Some(1))
        );
    }

    #[test]
    fn given_bad_element_when_batch_parsed_should_name_its_index() {
        let batch = json!([
            minimal(),
            minimal(),
            minimal(),
            without(minimal(), "source")
        ]);
        let error = EventInput::batch_from_json(batch.to_string().as_bytes(), NOW).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"events[3]: missing required attribute "source""#
        );
        assert_eq!(error.code(), "invalid_event");
        let error = EventInput::batch_from_json(
            br#"[{"specversion":"1.0","source":"/s","type":"t"}, 7]"#,
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "events[1]: expected an event object, found a number"
        );
    }

    #[test]
    fn given_empty_batch_or_non_array_when_batch_parsed_should_reject() {
        let error = EventInput::batch_from_json(b" [ ] ", NOW).unwrap_err();
        assert!(matches!(error, EventError::EmptyBatch));
        assert_eq!(
            error.to_string(),
            "the batch is empty; send at least one event"
        );
        let error = EventInput::batch_from_json(minimal().to_string().as_bytes(), NOW).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected a JSON array of events"),
            "{error}"
        );
        assert_eq!(
            EventInput::batch_from_json(b"[{]", NOW).unwrap_err().code(),
            "malformed_json"
        );
    }

    // --- binary mode -------------------------------------------------------------

    #[test]
    fn given_ce_headers_when_parsed_in_binary_mode_should_build_the_event() {
        let headers = ce_headers(&[
            ("CE-Subject", "order%2042%20%E2%82%AC"),
            ("ce-time", "2024-05-01T12:00:00Z"),
            ("Ce-Key", "order-42"),
            ("ce-partition", "2"),
            ("ce-delayms", "1000"),
            ("ce-correlationid", "c-1"),
            ("ce-tenant", "acme"),
            ("content-length", "7"),
            ("authorization", "Bearer x"),
        ]);
        let input = binary(&headers, Some("application/json"), br#"{"a":1}"#).unwrap();
        let event = &input.event;
        assert_eq!(input.partition, Some(2));
        assert_eq!(event.subject.as_deref(), Some("order 42 €"));
        assert_eq!(event.key.as_deref(), Some("order-42"));
        assert_eq!(event.correlationid.as_deref(), Some("c-1"));
        assert_eq!(event.deliver_at, Some(NOW + 1000));
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(event.data.as_deref(), Some(&br#"{"a":1}"#[..]));
        assert_eq!(event.extensions.len(), 1);
        assert_eq!(
            event.extensions["tenant"],
            ExtensionValue::String("acme".to_owned())
        );
    }

    #[test]
    fn given_quoted_header_value_when_parsed_should_unescape_it() {
        let headers = ce_headers(&[("ce-subject", r#" "a \"b\" c" "#)]);
        let event = binary(&headers, None, b"").unwrap().event;
        assert_eq!(event.subject.as_deref(), Some(r#"a "b" c"#));
    }

    #[test]
    fn given_bad_percent_encoding_when_parsed_should_reject() {
        for value in ["100%", "%zz", "%C0%A0", "%FF", "%e2%82"] {
            let headers = vec![
                ("ce-specversion", "1.0"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("ce-subject", value),
            ];
            let reason = invalid_reason(binary(&headers, None, b""), "subject");
            assert!(
                reason.starts_with("header ce-subject "),
                "{value}: {reason}"
            );
        }
        let headers = ce_headers(&[("ce-subject", "%e2%82%ac")]);
        assert_eq!(
            binary(&headers, None, b"")
                .unwrap()
                .event
                .subject
                .as_deref(),
            Some("€")
        );
    }

    #[test]
    fn given_missing_ce_header_when_parsed_should_name_the_attribute() {
        let headers = vec![("ce-specversion", "1.0"), ("ce-type", "t")];
        let error = binary(&headers, None, b"x").unwrap_err();
        assert_eq!(error.to_string(), r#"missing required attribute "source""#);
        let event = binary(
            &[
                ("ce-specversion", "1.0"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
            ],
            None,
            b"",
        )
        .unwrap()
        .event;
        assert!(!event.id.is_empty());
    }

    #[test]
    fn given_data_or_content_type_headers_when_parsed_should_reject() {
        for name in ["ce-datacontenttype", "ce-data", "ce-data_base64"] {
            let headers = ce_headers(&[(name, "x")]);
            assert!(binary(&headers, None, b"").is_err(), "{name}");
        }
    }

    #[test]
    fn given_same_header_twice_in_any_case_when_parsed_should_reject() {
        let headers = ce_headers(&[("CE-ID", "other")]);
        let error = binary(&headers, None, b"").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"attribute "ce-id" is given twice; send it once"#
        );
    }

    #[test]
    fn given_empty_body_when_parsed_should_have_no_data() {
        let input = binary(&ce_headers(&[]), Some("  "), b"").unwrap();
        assert_eq!(input.event.data, None);
        assert_eq!(input.event.datacontenttype, None);
    }

    #[test]
    fn given_bad_herald_headers_when_parsed_should_reject() {
        for (name, value) in [
            ("ce-partition", "-1"),
            ("ce-partition", "4294967296"),
            ("ce-delay_ms", "soon"),
            ("ce-deliver_at", "tomorrow"),
            ("ce-Bad_Name", "x"),
            ("ce-", "x"),
        ] {
            let headers = ce_headers(&[(name, value)]);
            assert!(binary(&headers, None, b"").is_err(), "{name}: {value}");
        }
    }

    // --- rendering -----------------------------------------------------------------

    fn full_event() -> Event {
        let mut event = Event::new("e-1", "/orders", "order.created");
        event.subject = Some("order-42".to_owned());
        event.time = Some("2024-05-01T14:00:00+02:00".to_owned());
        event.datacontenttype = Some("application/json".to_owned());
        event.data = Some(Bytes::from_static(br#"{"total":12.50,"items":[1,2]}"#));
        event.key = Some("order-42".to_owned());
        event.correlationid = Some("c-1".to_owned());
        event.causationid = Some("e-0".to_owned());
        event.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
        event.tracestate = Some("congo=t61rcWkgMzE".to_owned());
        event.deliver_at = Some(NOW + 250);
        event.extensions.insert("tenant".to_owned(), "acme".into());
        event.extensions.insert("priority".to_owned(), 5.into());
        event.extensions.insert("urgent".to_owned(), true.into());
        event
    }

    #[test]
    fn given_stored_event_when_rendered_should_give_structured_cloudevent_with_coordinates() {
        let stored = StoredEvent {
            topic: "orders".parse().unwrap(),
            partition: 2,
            offset: 15,
            appended_at: NOW,
            event: full_event(),
        };
        let text = serde_json::to_string(&stored).unwrap();
        assert!(
            text.starts_with(
                r#"{"specversion":"1.0","id":"e-1","source":"/orders","type":"order.created","#
            ),
            "{text}"
        );
        assert!(
            text.ends_with(r#""data":{"total":12.50,"items":[1,2]}}"#),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "specversion": "1.0", "id": "e-1", "source": "/orders", "type": "order.created",
                "subject": "order-42", "time": "2024-05-01T14:00:00+02:00",
                "datacontenttype": "application/json", "key": "order-42",
                "correlationid": "c-1", "causationid": "e-0",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "tracestate": "congo=t61rcWkgMzE", "deliverat": "2024-05-01T12:00:00.250Z",
                "priority": 5, "tenant": "acme", "urgent": true,
                "topic": "orders", "partition": 2, "offset": 15,
                "appendedat": "2024-05-01T12:00:00.000Z",
                "data": {"total": 12.5, "items": [1, 2]},
            })
        );
    }

    #[test]
    fn given_data_of_each_kind_when_rendered_should_pick_data_or_data_base64() {
        let render = |content_type: Option<&str>, data: &'static [u8]| {
            let mut event = Event::new("a", "/s", "t");
            event.datacontenttype = content_type.map(str::to_owned);
            event.data = Some(Bytes::from_static(data));
            let value = serde_json::to_value(&event).unwrap();
            (
                value.get("data").cloned(),
                value.get("data_base64").cloned(),
            )
        };
        assert_eq!(render(None, b"[1, 2]"), (Some(json!([1, 2])), None));
        assert_eq!(
            render(Some("application/x+json"), b"\"s\""),
            (Some(json!("s")), None)
        );
        assert_eq!(render(Some("text/plain"), b"hi"), (Some(json!("hi")), None));
        assert_eq!(
            render(Some("text/plain"), b"\xff"),
            (None, Some(json!("/w==")))
        );
        assert_eq!(
            render(None, b"not json"),
            (None, Some(json!("bm90IGpzb24=")))
        );
        assert_eq!(
            render(Some("application/json"), b"{oops"),
            (None, Some(json!("e29vcHM=")))
        );
        assert_eq!(
            render(Some("text/json"), b"{oops"),
            (None, Some(json!("e29vcHM=")))
        );
        assert_eq!(
            render(Some("application/octet-stream"), b"hi"),
            (None, Some(json!("aGk=")))
        );
    }

    #[test]
    fn given_extension_named_like_a_reserved_attribute_when_rendered_should_skip_it() {
        let mut event = Event::new("a", "/s", "t");
        event.extensions.insert("id".to_owned(), "clash".into());
        event.extensions.insert("Bad Name".to_owned(), "x".into());
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            value,
            json!({"specversion": "1.0", "id": "a", "source": "/s", "type": "t"})
        );
    }

    #[test]
    fn given_rendered_stored_event_when_read_back_should_be_equal() {
        let stored = StoredEvent {
            topic: "orders".parse().unwrap(),
            partition: 1,
            offset: 9,
            appended_at: NOW,
            event: full_event(),
        };
        let text = serde_json::to_vec(&stored).unwrap();
        assert_eq!(StoredEvent::from_json(&text).unwrap(), stored);
        let list: Vec<StoredEvent> =
            serde_json::from_str(&format!("[{}]", String::from_utf8(text).unwrap())).unwrap();
        assert_eq!(list, vec![stored]);
    }

    #[test]
    fn given_stored_event_json_without_coordinates_when_read_should_name_the_missing_one() {
        let error = StoredEvent::from_json(minimal().to_string().as_bytes()).unwrap_err();
        assert_eq!(error.to_string(), r#"missing required attribute "topic""#);
        let json = with(
            with(without(minimal(), "id"), "topic", json!("t")),
            "partition",
            json!(0),
        );
        let json = with(
            with(json, "offset", json!(0)),
            "appended_at",
            json!("2024-05-01T12:00:00Z"),
        );
        assert_eq!(
            StoredEvent::from_json(json.to_string().as_bytes())
                .unwrap_err()
                .to_string(),
            r#"missing required attribute "id""#
        );
    }

    #[test]
    fn given_event_when_sized_should_count_attributes_and_data() {
        let event = Event::new("e-1", "/s", "t");
        let base = "id".len() + 3 + "source".len() + 2 + "type".len() + 1 + "specversion".len() + 3;
        assert_eq!(event.encoded_len(), base);
        let mut bigger = event.clone();
        bigger.data = Some(Bytes::from(vec![0; 1000]));
        bigger.key = Some("k".to_owned());
        bigger.extensions.insert("n".to_owned(), 1.into());
        assert_eq!(bigger.encoded_len(), base + 4 + 1000 + 3 + 1 + 1 + 8);
    }

    #[test]
    fn given_event_when_rendered_as_binary_headers_should_percent_encode() {
        let mut event = Event::new("a b", "/s", "t");
        event.subject = Some("100% \"€\"".to_owned());
        event.datacontenttype = Some("text/plain".to_owned());
        let headers = event.binary_headers();
        assert!(headers.contains(&("ce-id".to_owned(), "a%20b".to_owned())));
        assert!(headers.contains(&(
            "ce-subject".to_owned(),
            "100%25%20%22%E2%82%AC%22".to_owned()
        )));
        assert!(headers.iter().all(|(name, _)| name != "ce-datacontenttype"));
    }

    // --- properties -------------------------------------------------------------------

    fn text() -> impl Strategy<Value = String> {
        "\\PC{1,12}"
    }

    fn hex(len: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[0-9a-f]{{{len}}}"))
            .unwrap()
            .prop_filter("ids are not all zeros", |hex| {
                hex.bytes().any(|byte| byte != b'0')
            })
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |number| number.is_finite())
                .prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Content type and data that render and parse back unchanged.
    fn content_and_data() -> impl Strategy<Value = (Option<String>, Option<Bytes>)> {
        let json_type = prop_oneof![
            Just(None),
            Just(Some("application/json".to_owned())),
            Just(Some(
                "application/vnd.herald+json; charset=utf-8".to_owned()
            )),
            Just(Some("text/json".to_owned())),
            Just(Some("Application/Problem+JSON".to_owned())),
        ];
        let binary_type = prop_oneof![
            Just(Some("application/octet-stream".to_owned())),
            Just(Some("image/png".to_owned())),
        ];
        prop_oneof![
            json_type
                .clone()
                .prop_map(|content_type| (content_type, None)),
            (json_type, json_value()).prop_map(|(content_type, value)| {
                (
                    content_type,
                    Some(Bytes::from(serde_json::to_vec(&value).unwrap())),
                )
            }),
            (
                prop_oneof![
                    Just("text/plain; charset=utf-8"),
                    Just("TEXT/Markdown ; charset=utf-8")
                ],
                "\\PC{0,16}"
            )
                .prop_map(|(content_type, text)| (
                    Some(content_type.to_owned()),
                    Some(Bytes::from(text))
                )),
            (binary_type, proptest::collection::vec(any::<u8>(), 0..32))
                .prop_map(|(content_type, bytes)| (content_type, Some(Bytes::from(bytes)))),
            proptest::collection::vec(any::<u8>(), 0..32)
                .prop_filter("not JSON", |bytes| serde_json::from_slice::<&RawValue>(
                    bytes
                )
                .is_err())
                .prop_map(|bytes| (None, Some(Bytes::from(bytes)))),
        ]
    }

    fn extension_value() -> impl Strategy<Value = ExtensionValue> {
        prop_oneof![
            "\\PC{0,8}".prop_map(ExtensionValue::String),
            any::<bool>().prop_map(ExtensionValue::Bool),
            any::<i64>().prop_map(ExtensionValue::Integer),
        ]
    }

    prop_compose! {
        fn any_event()(
            (id, source, ty) in (text(), text(), text()),
            (subject, dataschema, key) in (
                proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text()),
            ),
            (correlationid, causationid, tracestate) in (
                proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text()),
            ),
            time in proptest::option::of(prop_oneof![
                (MIN_RFC3339_MS..=MAX_RFC3339_MS).prop_map(format_rfc3339_ms),
                Just("2024-05-01T14:00:00.123456+02:00".to_owned()),
            ]),
            traceparent in proptest::option::of(
                (hex(32), hex(16), hex(2)).prop_map(|(trace, parent, flags)| format!("00-{trace}-{parent}-{flags}"))
            ),
            deliver_at in proptest::option::of(MIN_RFC3339_MS..=MAX_RFC3339_MS),
            extensions in proptest::collection::btree_map(
                "[a-z0-9]{1,20}".prop_filter("not reserved", |name| !is_reserved(name)),
                extension_value(),
                0..4,
            ),
            (datacontenttype, data) in content_and_data(),
        ) -> Event {
            Event {
                id, source, ty, specversion: SPEC_VERSION.to_owned(), subject, time,
                datacontenttype, dataschema, data, key, correlationid, causationid,
                traceparent, tracestate, deliver_at, extensions,
            }
        }
    }

    proptest! {
        #[test]
        fn given_any_event_when_rendered_and_parsed_should_round_trip(event in any_event()) {
            let json = serde_json::to_vec(&event).unwrap();
            let input = EventInput::from_json(&json, NOW).unwrap();
            prop_assert_eq!(input, EventInput { event, partition: None });
        }

        #[test]
        fn given_any_stored_event_when_rendered_and_read_should_round_trip(
            event in any_event(),
            partition in any::<u32>(),
            offset in any::<u64>(),
            appended_at in MIN_RFC3339_MS..=MAX_RFC3339_MS,
        ) {
            let stored = StoredEvent { topic: "orders".parse().unwrap(), partition, offset, appended_at, event };
            let json = serde_json::to_vec(&stored).unwrap();
            prop_assert_eq!(StoredEvent::from_json(&json).unwrap(), stored.clone());
            // The hot path's writer writes the same bytes.
            let mut written = b"before".to_vec();
            stored.write_json(&mut written).unwrap();
            prop_assert_eq!(&written[b"before".len()..], &json[..]);
            // Published again as it is, it names attributes Herald assigns.
            let error = EventInput::from_json(&json, NOW).unwrap_err();
            prop_assert_eq!(error.code(), "reserved_attribute");
        }

        #[test]
        fn given_any_events_when_rendered_as_batch_should_parse_back_in_order(
            events in proptest::collection::vec(any_event(), 1..5)
        ) {
            let json = serde_json::to_vec(&events).unwrap();
            let inputs = EventInput::batch_from_json(&json, NOW).unwrap();
            let parsed: Vec<Event> = inputs.into_iter().map(|input| input.event).collect();
            prop_assert_eq!(parsed, events);
        }

        #[test]
        fn given_any_event_when_sent_in_binary_mode_should_round_trip_with_string_extensions(
            mut event in any_event()
        ) {
            if event.data.as_ref().is_some_and(Bytes::is_empty) {
                event.data = None;
            }
            let headers = event.binary_headers();
            let parsed = EventInput::from_binary(
                headers.iter().map(|(name, value)| (name.as_str(), value.as_str())),
                event.datacontenttype.as_deref(),
                event.data.clone().unwrap_or_default(),
                NOW,
            ).unwrap().event;
            for value in event.extensions.values_mut() {
                *value = ExtensionValue::String(value.to_string());
            }
            prop_assert_eq!(parsed, event);
        }

        #[test]
        fn given_arbitrary_bytes_when_parsed_should_not_panic(
            body in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let _ = EventInput::from_json(&body, NOW);
            let _ = EventInput::batch_from_json(&body, NOW);
            let _ = StoredEvent::from_json(&body);
        }

        #[test]
        fn given_arbitrary_members_when_parsed_should_not_panic(
            members in proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::sample::select(vec![
                            "specversion", "id", "source", "type", "subject", "time",
                            "datacontenttype", "dataschema", "data", "data_base64", "key",
                            "partition", "delay_ms", "deliver_at", "correlationid", "causationid",
                            "traceparent", "tracestate", "topic", "offset", "appended_at", "ext",
                        ]).prop_map(str::to_owned),
                        "\\PC{0,4}",
                    ],
                    prop_oneof![
                        json_value(),
                        Just(json!("1.0")),
                        Just(json!("text/plain")),
                        Just(json!("2024-05-01T12:00:00Z")),
                        Just(json!(i64::MAX)),
                        Just(json!(-1)),
                    ],
                ),
                0..12,
            ),
            now_ms in any::<i64>(),
        ) {
            let object: serde_json::Map<String, serde_json::Value> = members.into_iter().collect();
            let body = serde_json::to_vec(&object).unwrap();
            if let Ok(input) = EventInput::from_json(&body, now_ms) {
                prop_assert!(input.event.validate().is_ok());
                prop_assert!(serde_json::to_vec(&input.event).is_ok());
            }
            let _ = EventInput::batch_from_json(&[b"[", &body[..], b"]"].concat(), now_ms);
        }

        #[test]
        fn given_arbitrary_headers_when_parsed_in_binary_mode_should_not_panic(
            headers in proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::sample::select(vec![
                            "ce-specversion", "CE-ID", "ce-source", "ce-type", "ce-time",
                            "ce-partition", "ce-delay_ms", "ce-deliver_at", "ce-traceparent",
                            "ce-x", "ce-data", "content-type",
                        ]).prop_map(str::to_owned),
                        "\\PC{0,6}",
                    ],
                    prop_oneof![Just("1.0".to_owned()), "\\PC{0,12}", "[%0-9a-fA-F\"\\\\ ]{0,12}"],
                ),
                0..10,
            ),
            content_type in proptest::option::of("\\PC{0,12}"),
            body in proptest::collection::vec(any::<u8>(), 0..32),
            now_ms in any::<i64>(),
        ) {
            let _ = EventInput::from_binary(
                headers.iter().map(|(name, value)| (name.as_str(), value.as_str())),
                content_type.as_deref(),
                Bytes::from(body),
                now_ms,
            );
        }
    }
}
