//! OpenAPI schemas (feature `openapi`) for the types whose JSON comes from
//! hand-written serde code, so that a derive would describe the Rust shape
//! instead of the wire shape: names are pattern-checked strings, events are
//! CloudEvents JSON objects with RFC 3339 times.

use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Deprecated, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::event::{EventInput, StoredEvent};
use crate::names::{GroupName, MAX_NAME_LEN, StreamId, TopicName};

/// The naming rule (`names`) as a JSON Schema pattern.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

fn name_schema(description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_NAME_LEN))
        .pattern(Some(NAME_PATTERN))
        .description(Some(description))
        .into()
}

macro_rules! name_schema {
    ($name:ident, $description:literal) => {
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                name_schema($description)
            }
        }
        impl ToSchema for $name {}
    };
}

name_schema!(
    TopicName,
    "A topic name: 1–200 characters of [A-Za-z0-9._-], starting with a letter or digit."
);
name_schema!(
    GroupName,
    "A group name: 1–200 characters of [A-Za-z0-9._-], starting with a letter or digit."
);
name_schema!(
    StreamId,
    "A stream id: 1–200 characters of [A-Za-z0-9._-], starting with a letter or digit."
);

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .description(Some(description))
}

fn date_time(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some(description))
}

fn unsigned(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .description(Some(description))
}

fn any_json(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .description(Some(description))
}

/// An extension attribute's value: a string, a boolean or an integer.
fn extension_value() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .description(Some(
            "An extension attribute (name: 1–20 characters of a-z0-9): a string, boolean or \
             integer.",
        ))
        .into()
}

/// The attributes events have in common, on input and output.
fn common_attributes(object: ObjectBuilder) -> ObjectBuilder {
    object
        .property(
            "specversion",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["1.0"]))
                .description(Some("CloudEvents version; only 1.0.")),
        )
        .property("id", string("The event id (unique per source)."))
        .property("source", string("CloudEvents source (a URI-reference)."))
        .property("type", string("The event type."))
        .property("subject", string("CloudEvents subject."))
        .property(
            "time",
            date_time("When it happened (RFC 3339), kept verbatim."),
        )
        .property("datacontenttype", string("Media type of the data."))
        .property("dataschema", string("Schema of the data (a URI)."))
        .property(
            "key",
            string("Partition key: events of one key keep their order."),
        )
        .property("correlationid", string("Correlation id."))
        .property(
            "causationid",
            string("Id of the event that caused this one."),
        )
        .property("traceparent", string("W3C trace context."))
        .property("tracestate", string("W3C trace state."))
        .property(
            "deliverat",
            date_time("Deliver to groups no earlier than this (RFC 3339)."),
        )
        .property(
            "data",
            any_json("The payload: JSON, or a string for textual content types."),
        )
        .property(
            "data_base64",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_encoding("base64")
                .description(Some("A binary payload, base64-encoded.")),
        )
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
            extension_value(),
        ))))
}

impl PartialSchema for EventInput {
    /// A CloudEvent in structured mode, as published.
    fn schema() -> RefOr<Schema> {
        common_attributes(ObjectBuilder::new().description(Some(
            "A CloudEvent (structured mode) plus Herald's attributes. A missing id is \
             assigned by Herald; give deliverat or delayms, not both; data or data_base64, \
             not both. Herald's own topic, offset and appendedat are refused \
             (reserved_attribute).",
        )))
        .property(
            "delayms",
            unsigned("Deliver to groups no earlier than this many ms from now."),
        )
        .property(
            "partitionkey",
            string("The CloudEvents Partitioning extension: the same as key (send one)."),
        )
        .property(
            "deliver_at",
            date_time("Deprecated: the former name of deliverat.")
                .deprecated(Some(Deprecated::True)),
        )
        .property(
            "delay_ms",
            unsigned("Deprecated: the former name of delayms.").deprecated(Some(Deprecated::True)),
        )
        .property(
            "partition",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                .minimum(Some(0))
                .description(Some("Pin the event to this partition.")),
        )
        .required("specversion")
        .required("source")
        .required("type")
        .into()
    }
}

impl ToSchema for EventInput {
    fn name() -> std::borrow::Cow<'static, str> {
        "CloudEvent".into()
    }
}

impl PartialSchema for StoredEvent {
    /// A CloudEvent as Herald serves it, with its position.
    fn schema() -> RefOr<Schema> {
        common_attributes(ObjectBuilder::new().description(Some(
            "A stored event: the CloudEvent with the topic, partition and offset it was \
             appended at, and when.",
        )))
        .property("topic", TopicName::schema())
        .property(
            "partition",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                .minimum(Some(0)),
        )
        .property("offset", unsigned("The event's offset in its partition."))
        .property(
            "appendedat",
            date_time("When Herald appended it (RFC 3339, ms, UTC)."),
        )
        .required("specversion")
        .required("id")
        .required("source")
        .required("type")
        .required("topic")
        .required("partition")
        .required("offset")
        .required("appendedat")
        .into()
    }
}

impl ToSchema for StoredEvent {
    fn name() -> std::borrow::Cow<'static, str> {
        "Event".into()
    }
}

/// A JSON array of published events (`application/cloudevents-batch+json`).
pub fn event_batch_schema() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            EventInput::name(),
        )))
        .description(Some(
            "A batch of CloudEvents, appended atomically per partition.",
        ))
        .into()
}
