//! Drives the CloudEvents JSON batch decoder (`EventInput::batch_from_json`,
//! `application/cloudevents-batch+json`) with arbitrary bytes. It must
//! return a result, never panic; an accepted batch is non-empty, every
//! event in it is valid, and the batch rendered as a JSON array decodes
//! back to the same events in the same order.
#![no_main]

use herald_fuzz::NOW_MS;
use herald_types::{Event, EventInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = EventInput::batch_from_json(data, NOW_MS) else {
        return;
    };
    assert!(!batch.is_empty());
    let events: Vec<&Event> = batch.iter().map(|input| &input.event).collect();
    for event in &events {
        assert!(event.validate().is_ok());
    }
    let json = serde_json::to_vec(&events).expect("an accepted batch renders as JSON");
    let back = EventInput::batch_from_json(&json, NOW_MS)
        .unwrap_or_else(|error| panic!("the rendering of an accepted batch is refused: {error}"));
    let back: Vec<&Event> = back.iter().map(|input| &input.event).collect();
    assert_eq!(back, events);
});
