//! The gateway's hops of an event's trace: publish, group delivery and its
//! settlement, push to a tail subscriber (crate `herald_trace` has the
//! why). All of it is a no-op while tracing is off.
//!
//! - A publish opens one `publish` span per event, a child of the event's
//!   own `traceparent` or else the request's `traceparent` header (else a
//!   new trace), and stores the span's context in the event: every later
//!   hop is its descendant.
//! - A delivery to a group member is a `deliver` span, child of the event's
//!   `traceparent`; the delivered copy carries the `deliver` span's context,
//!   so a consumer that continues it (the SDK does) is its child.
//! - Its ack, nack or reject is a `settle` span, child of the `deliver`
//!   span, found by delivery id in a bounded memory of recent deliveries.
//! - Each event pushed to an SSE or WebSocket tail is a `push` span.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex, PoisonError};

use axum::http::HeaderMap;
use herald_backend::FetchResponse;
use herald_types::{EventInput, GroupName, StoredEvent, StreamId, TopicName};
use tracing::Span;

/// Deliveries remembered for their settlement's span; older ones settle
/// without one.
const REMEMBERED: usize = 65_536;

/// The `traceparent` of a request's headers (HTTP, or gRPC metadata as
/// headers).
pub(crate) fn incoming(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
}

/// Opens the `publish` span of each event and stamps its context into the
/// event. Keep the spans until the append returns.
pub(crate) fn publishing(
    topic: &TopicName,
    events: &mut [EventInput],
    incoming: Option<&str>,
) -> Vec<Span> {
    stamp(events, incoming, |input, parent| {
        herald_trace::hop!(
            "publish",
            parent,
            otel.kind = "producer",
            messaging.destination.name = %topic,
            messaging.message.id = %input.event.id,
        )
    })
}

/// [`publishing`] for an append to an event-store stream: `append` spans.
pub(crate) fn appending(
    topic: &TopicName,
    stream: &StreamId,
    events: &mut [EventInput],
    incoming: Option<&str>,
) -> Vec<Span> {
    stamp(events, incoming, |input, parent| {
        herald_trace::hop!(
            "append",
            parent,
            otel.kind = "producer",
            messaging.destination.name = %topic,
            herald.stream = %stream,
            messaging.message.id = %input.event.id,
        )
    })
}

/// Opens a span per event, a child of its own `traceparent` or else of the
/// request's, and stores the span's context in the event.
fn stamp(
    events: &mut [EventInput],
    incoming: Option<&str>,
    open: impl Fn(&EventInput, Option<&str>) -> Span,
) -> Vec<Span> {
    if !herald_trace::enabled() {
        return Vec::new();
    }
    events
        .iter_mut()
        .map(|input| {
            let parent = input.event.traceparent.clone();
            let span = open(input, parent.as_deref().or(incoming));
            if let Some(context) = herald_trace::traceparent(&span) {
                input.event.traceparent = Some(context);
            }
            span
        })
        .collect()
}

/// Records a `deliver` span per delivery of `fetched` and hands its context
/// to the consumer in the delivered event.
pub(crate) fn delivered(topic: &TopicName, group: &GroupName, fetched: &mut FetchResponse) {
    if !herald_trace::enabled() {
        return;
    }
    for delivery in &mut fetched.deliveries {
        let event = &mut delivery.event.event;
        let span = herald_trace::hop!(
            "deliver",
            event.traceparent.as_deref(),
            otel.kind = "consumer",
            messaging.destination.name = %topic,
            messaging.consumer.group.name = %group,
            messaging.message.id = %event.id,
            herald.attempt = delivery.attempt,
        );
        if let Some(context) = herald_trace::traceparent(&span) {
            remember(&delivery.delivery_id, &context);
            event.traceparent = Some(context);
        }
    }
}

/// Records a `settle` span (`ack`, `nack`, `extend` or `reject`) per
/// delivery id that was recently delivered.
pub(crate) fn settled(action: &'static str, group: &GroupName, delivery_ids: &[String]) {
    if !herald_trace::enabled() {
        return;
    }
    for id in delivery_ids {
        let Some(parent) = recall(id, action != "extend") else {
            continue;
        };
        let _span = herald_trace::hop!(
            "settle",
            Some(&parent),
            otel.name = action,
            messaging.consumer.group.name = %group,
        );
    }
}

/// Records a `push` span for an event sent to a tail subscriber (SSE,
/// WebSocket or gRPC `Subscribe`), and the context the pushed copy carries.
pub(crate) fn pushed(event: &mut StoredEvent) {
    if !herald_trace::enabled() {
        return;
    }
    let span = herald_trace::hop!(
        "push",
        event.event.traceparent.as_deref(),
        otel.kind = "producer",
        messaging.destination.name = %event.topic,
        messaging.message.id = %event.event.id,
    );
    if let Some(context) = herald_trace::traceparent(&span) {
        event.event.traceparent = Some(context);
    }
}

#[derive(Default)]
struct Recent {
    contexts: HashMap<String, String>,
    order: VecDeque<String>,
}

static RECENT: LazyLock<Mutex<Recent>> = LazyLock::new(Mutex::default);

fn remember(delivery_id: &str, context: &str) {
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    if recent
        .contexts
        .insert(delivery_id.to_owned(), context.to_owned())
        .is_none()
    {
        recent.order.push_back(delivery_id.to_owned());
    }
    while recent.order.len() > REMEMBERED {
        if let Some(oldest) = recent.order.pop_front() {
            recent.contexts.remove(&oldest);
        }
    }
}

fn recall(delivery_id: &str, forget: bool) -> Option<String> {
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    if forget {
        // Its place in `order` goes when it comes round (an unknown id then).
        recent.contexts.remove(delivery_id)
    } else {
        recent.contexts.get(delivery_id).cloned()
    }
}
