//! W3C trace context through Herald's hops.
//!
//! An event carries the `traceparent` of the hop that stored it. Each hop
//! that moves it on (a group delivery and its ack, a job's dispatch and end,
//! a workflow task, a webhook attempt, an SSE or WebSocket push) opens a
//! span with [`hop!`], whose parent is that `traceparent`, and hands its
//! own context on ([`traceparent`]) to what it stores or sends. So one trace
//! shows the event's whole journey.
//!
//! Spans are `tracing` spans with target [`TARGET`]; the server exports
//! them over OTLP through `tracing-opentelemetry` when
//! `telemetry.otlp_endpoint` is set, and calls [`enable`]. Until then
//! [`hop!`] returns a disabled span and costs one atomic load, so nothing
//! on the hot paths pays for tracing that is off. Each hop span records its
//! trace id in the field `trace_id`, so log lines inside it carry it.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every hop span.
pub const TARGET: &str = "herald::hop";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns hop spans on (the server does, once its OTLP exporter is installed).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether hop spans are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Opens a hop span (INFO, target [`TARGET`]) continuing the trace of a
/// `traceparent` (an `Option<&str>`; none: a new root, or a child of the
/// current span). Fields after it are the span's, as in `info_span!`,
/// `otel.kind` among them. A disabled span while tracing is off.
#[macro_export]
macro_rules! hop {
    ($name:literal, $traceparent:expr $(, $($fields:tt)*)?) => {{
        if $crate::enabled() {
            let span = ::tracing::info_span!(
                target: "herald::hop",
                $name,
                trace_id = ::tracing::field::Empty
                $(, $($fields)*)?
            );
            $crate::follow(&span, $traceparent);
            span
        } else {
            ::tracing::Span::none()
        }
    }};
}

/// Makes `traceparent` (if valid) the parent of `span`, which must not
/// have been entered yet, and records the span's trace id in its
/// `trace_id` field.
pub fn follow(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse) {
        // Fails only when no OpenTelemetry layer is installed or the span is
        // disabled: then there is nothing to parent.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        span.record("trace_id", tracing::field::display(own.trace_id()));
    }
}

/// Links `span` to the hop of `traceparent` (a consumer's span to the
/// publish it processes, when it is not that publish's child).
pub fn link(span: &Span, traceparent: Option<&str>) {
    if let Some(other) = traceparent.and_then(parse) {
        span.add_link(other);
    }
}

/// The `traceparent` of `span`, to store in an event or send on: none for
/// a disabled span or without an OpenTelemetry layer.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_none() {
        return None;
    }
    format(span.context().span().span_context())
}

/// Parses a W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`; a later
/// version's extra fields are ignored, as the spec asks). None when it is
/// malformed or names the all-zero trace or span.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut fields = traceparent.trim().split('-');
    let version = fields.next()?;
    let trace_id = fields.next()?;
    let span_id = fields.next()?;
    let flags = fields.next()?;
    let hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace_id, 32) || !hex(span_id, 16) {
        return None;
    }
    if !hex(flags, 2) || (version == "00" && fields.next().is_some()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sampled = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    Some(SpanContext::new(
        trace_id,
        span_id,
        sampled,
        true,
        TraceState::default(),
    ))
}

/// A span context as a version-00 `traceparent`; none when it is invalid.
pub fn format(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn given_a_traceparent_when_parsed_and_formatted_should_round_trip() {
        let context = parse(PARENT).unwrap();
        assert!(context.is_remote());
        assert!(context.is_sampled());
        assert_eq!(format(&context).as_deref(), Some(PARENT));
    }

    #[test]
    fn given_malformed_traceparents_when_parsed_should_refuse_them() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }

    #[test]
    fn given_tracing_on_when_a_hop_follows_a_traceparent_should_be_its_child_in_that_trace() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        enable();
        let handed_on = tracing::subscriber::with_default(subscriber, || {
            let span = hop!("deliver", Some(PARENT), otel.kind = "consumer");
            let handed_on = traceparent(&span).unwrap();
            let consumer = hop!("consume", None);
            link(&consumer, Some(&handed_on));
            drop(consumer);
            drop(span);
            handed_on
        });
        let spans = exporter.get_finished_spans().unwrap();
        let deliver = spans.iter().find(|span| span.name == "deliver").unwrap();
        assert_eq!(
            deliver.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(deliver.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(deliver.span_kind, opentelemetry::trace::SpanKind::Consumer);
        let handed = parse(&handed_on).unwrap();
        assert_eq!(handed.span_id(), deliver.span_context.span_id());
        let consume = spans.iter().find(|span| span.name == "consume").unwrap();
        assert_ne!(consume.span_context.trace_id(), handed.trace_id());
        assert_eq!(
            consume.links.links[0].span_context.span_id(),
            handed.span_id()
        );
    }
}
