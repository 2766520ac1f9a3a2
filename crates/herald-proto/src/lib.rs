//! Herald's gRPC protocol, `herald.v1`, shared by the server
//! (`herald-server`) and the SDK (`herald-client`).
//!
//! - [`v1`]: the messages and the client and server stubs generated from
//!   `proto/herald/v1/herald.proto` (prost + tonic, compiled by protox at
//!   build time: no system `protoc`). Every `bytes` field is a
//!   [`bytes::Bytes`], so an event's payload is a slice of the receive
//!   buffer, not a copy.
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors, for gRPC reflection.
//! - Errors: a failed call's status carries a `google.rpc.ErrorInfo` detail
//!   whose `reason` is the stable error code of `docs/errors.md` and whose
//!   domain is [`ERROR_DOMAIN`]; [`status`] builds one, [`error_info`] reads
//!   it back.
//! - Conversions between the wire messages and `herald-types`.
//!
//! This crate depends on tonic's code generation only (no transport, no
//! server), so a client pulls no server code through it.

use std::collections::HashMap;

use herald_types::{Event, EventError, EventInput, ExtensionValue, StoredEvent, TopicName};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The generated `herald.v1` messages and services.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// The compiled `herald.v1` file descriptor set (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));

/// The path of every `herald.v1` method (`/herald.v1.Events/Publish`), as
/// gRPC calls them.
pub const METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/herald_methods.rs"));

/// The `domain` of Herald's `google.rpc.ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "herald.dev";

/// A status with `grpc` as its code, `message`, and an `ErrorInfo` detail
/// carrying the stable error `code` and `metadata` (for example
/// `current_version` of a `version_conflict`).
pub fn status(
    grpc: tonic::Code,
    code: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> tonic::Status {
    let details = ErrorDetails::with_error_info(code, ERROR_DOMAIN, metadata);
    tonic::Status::with_error_details(grpc, message, details)
}

/// The stable error code and metadata of a status Herald produced, if it
/// carries them.
pub fn error_info(status: &tonic::Status) -> Option<(String, HashMap<String, String>)> {
    let info = status.get_details_error_info()?;
    (info.domain == ERROR_DOMAIN).then_some((info.reason, info.metadata))
}

/// Every gRPC status by its canonical name (`NOT_FOUND`, …), as the error
/// table (`docs/errors.md`) names them.
pub const GRPC_CODES: [(&str, tonic::Code); 17] = [
    ("OK", tonic::Code::Ok),
    ("CANCELLED", tonic::Code::Cancelled),
    ("UNKNOWN", tonic::Code::Unknown),
    ("INVALID_ARGUMENT", tonic::Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", tonic::Code::DeadlineExceeded),
    ("NOT_FOUND", tonic::Code::NotFound),
    ("ALREADY_EXISTS", tonic::Code::AlreadyExists),
    ("PERMISSION_DENIED", tonic::Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", tonic::Code::ResourceExhausted),
    ("FAILED_PRECONDITION", tonic::Code::FailedPrecondition),
    ("ABORTED", tonic::Code::Aborted),
    ("OUT_OF_RANGE", tonic::Code::OutOfRange),
    ("UNIMPLEMENTED", tonic::Code::Unimplemented),
    ("INTERNAL", tonic::Code::Internal),
    ("UNAVAILABLE", tonic::Code::Unavailable),
    ("DATA_LOSS", tonic::Code::DataLoss),
    ("UNAUTHENTICATED", tonic::Code::Unauthenticated),
];

/// The gRPC status named `name` ([`GRPC_CODES`]); `None` for a name that is
/// not one. There is no fallback: a `const` caller turns a typo in its
/// table into a compile error (the server's code table does), never into
/// `INTERNAL`.
pub const fn grpc_code(name: &str) -> Option<tonic::Code> {
    let mut index = 0;
    while index < GRPC_CODES.len() {
        let (known, code) = GRPC_CODES[index];
        if same(known.as_bytes(), name.as_bytes()) {
            return Some(code);
        }
        index += 1;
    }
    None
}

/// `a == b`, usable in a `const fn`.
const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut index = 0;
    while index < a.len() {
        if a[index] != b[index] {
            return false;
        }
        index += 1;
    }
    true
}

// ------------------------------------------------------------ conversions

impl From<Event> for v1::Event {
    fn from(event: Event) -> Self {
        Self {
            id: event.id,
            source: event.source,
            r#type: event.ty,
            specversion: event.specversion,
            subject: event.subject,
            time: event.time,
            datacontenttype: event.datacontenttype,
            dataschema: event.dataschema,
            data: event.data,
            key: event.key,
            correlationid: event.correlationid,
            causationid: event.causationid,
            traceparent: event.traceparent,
            tracestate: event.tracestate,
            deliver_at_ms: event.deliver_at,
            delay_ms: None,
            extensions: event
                .extensions
                .into_iter()
                .map(|(name, value)| (name, value.into()))
                .collect(),
            partition: None,
        }
    }
}

impl From<EventInput> for v1::Event {
    fn from(input: EventInput) -> Self {
        let partition = input.partition;
        Self {
            partition,
            ..input.event.into()
        }
    }
}

impl v1::Event {
    /// The event a publisher sent, checked by the same rules as the JSON
    /// codecs (see [`EventInput::from_parts`]); `now_ms` is the clock for
    /// `delay_ms` and generated ids.
    pub fn into_input(self, now_ms: i64) -> Result<EventInput, EventError> {
        let (partition, delay_ms) = (self.partition, self.delay_ms);
        EventInput::from_parts(self.into_event()?, partition, delay_ms, now_ms)
    }

    /// The attributes as an [`Event`], unchecked but for extension values.
    fn into_event(self) -> Result<Event, EventError> {
        let mut extensions = std::collections::BTreeMap::new();
        for (name, value) in self.extensions {
            let value = match value.value {
                Some(v1::extension_value::Value::String(text)) => ExtensionValue::String(text),
                Some(v1::extension_value::Value::Bool(flag)) => ExtensionValue::Bool(flag),
                Some(v1::extension_value::Value::Integer(number)) => {
                    ExtensionValue::Integer(number)
                }
                None => {
                    return Err(EventError::InvalidAttribute {
                        name,
                        reason: "has no value; leave it out instead".to_owned(),
                    });
                }
            };
            extensions.insert(name, value);
        }
        Ok(Event {
            id: self.id,
            source: self.source,
            ty: self.r#type,
            specversion: self.specversion,
            subject: self.subject,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data: self.data,
            key: self.key,
            correlationid: self.correlationid,
            causationid: self.causationid,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            deliver_at: self.deliver_at_ms,
            extensions,
        })
    }
}

impl From<ExtensionValue> for v1::ExtensionValue {
    fn from(value: ExtensionValue) -> Self {
        use v1::extension_value::Value;
        let value = match value {
            ExtensionValue::String(text) => Value::String(text),
            ExtensionValue::Bool(flag) => Value::Bool(flag),
            ExtensionValue::Integer(number) => Value::Integer(number),
        };
        Self { value: Some(value) }
    }
}

impl From<StoredEvent> for v1::StoredEvent {
    fn from(stored: StoredEvent) -> Self {
        Self {
            topic: stored.topic.into_string(),
            partition: stored.partition,
            offset: stored.offset,
            appended_at_ms: stored.appended_at,
            event: Some(stored.event.into()),
        }
    }
}

/// Why a message from the server could not be read as a Herald type.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} from the server: {reason}")]
pub struct MalformedMessage {
    /// The message kind.
    pub what: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl TryFrom<v1::StoredEvent> for StoredEvent {
    type Error = MalformedMessage;

    fn try_from(stored: v1::StoredEvent) -> Result<Self, Self::Error> {
        let malformed = |reason: String| MalformedMessage {
            what: "StoredEvent",
            reason,
        };
        let topic: TopicName = stored
            .topic
            .parse()
            .map_err(|error: herald_types::InvalidName| malformed(error.to_string()))?;
        let event = stored
            .event
            .ok_or_else(|| malformed("no event".to_owned()))?
            .into_event()
            .map_err(|error| malformed(error.to_string()))?;
        Ok(StoredEvent {
            topic,
            partition: stored.partition,
            offset: stored.offset,
            appended_at: stored.appended_at_ms,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn given_event_when_round_tripped_through_proto_should_be_equal() {
        let mut event = Event::new("e-1", "/tests", "order.created");
        event.data = Some(Bytes::from_static(b"{\"total\":3}"));
        event.key = Some("order-1".to_owned());
        event
            .extensions
            .insert("tenant".to_owned(), ExtensionValue::Integer(7));
        let wire: v1::Event = event.clone().into();
        let back = wire.into_input(0).map(|input| input.event);
        assert_eq!(back.ok(), Some(event));
    }

    #[test]
    fn given_empty_id_and_delay_when_into_input_should_generate_id_and_deliver_at() {
        let wire = v1::Event {
            source: "/tests".to_owned(),
            r#type: "t".to_owned(),
            delay_ms: Some(500),
            partition: Some(2),
            ..v1::Event::default()
        };
        let input = wire.into_input(1_000).ok();
        let input = input.as_ref();
        assert!(input.is_some_and(|input| !input.event.id.is_empty()));
        assert_eq!(input.and_then(|input| input.event.deliver_at), Some(1_500));
        assert_eq!(input.and_then(|input| input.partition), Some(2));
        assert_eq!(
            input.map(|input| input.event.specversion.as_str()),
            Some("1.0")
        );
    }

    #[test]
    fn given_missing_source_when_into_input_should_refuse() {
        let wire = v1::Event {
            r#type: "t".to_owned(),
            ..v1::Event::default()
        };
        let refused = wire.into_input(0).err();
        assert_eq!(refused.map(|error| error.code()), Some("invalid_event"));
    }

    #[test]
    fn given_every_canonical_status_name_when_mapped_should_give_that_status_never_internal() {
        // Each status's canonical name from tonic's own variant name
        // (`NotFound` → `NOT_FOUND`), not from the table under test.
        for number in 0..=16 {
            let code = tonic::Code::from_i32(number);
            let mut name = String::new();
            for (index, letter) in format!("{code:?}").chars().enumerate() {
                if letter.is_uppercase() && index > 0 {
                    name.push('_');
                }
                name.push(letter.to_ascii_uppercase());
            }
            assert_eq!(grpc_code(&name), Some(code), "{name}");
        }
    }

    #[test]
    fn given_an_unknown_status_name_when_mapped_should_give_none_not_internal() {
        assert_eq!(grpc_code("NOT_FUOND"), None);
    }

    #[test]
    fn given_status_with_error_info_should_read_code_and_metadata_back() {
        let metadata = HashMap::from([("current_version".to_owned(), "4".to_owned())]);
        let status = status(tonic::Code::Aborted, "version_conflict", "no", metadata);
        let (code, metadata) = error_info(&status).unwrap_or_default();
        assert_eq!(code, "version_conflict");
        assert_eq!(
            metadata.get("current_version").map(String::as_str),
            Some("4")
        );
        assert_eq!(status.code(), tonic::Code::Aborted);
    }
}
