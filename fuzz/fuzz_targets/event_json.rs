//! Drives the CloudEvents structured-mode decoder
//! (`EventInput::from_json`, what `POST /v1/topics/{t}/events` takes as
//! `application/cloudevents+json`) and the stored-event reader
//! (`StoredEvent::from_json`, what clients read back) with arbitrary bytes.
//! Each must return a result, never panic; whatever it accepts must be a
//! valid event that renders to JSON (and, for input, to binary-mode
//! headers) which decodes back to the same event.
#![no_main]

use herald_fuzz::{NOW_MS, assert_binary_round_trip, assert_json_round_trip};
use herald_types::{EventInput, StoredEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = EventInput::from_json(data, NOW_MS) {
        assert!(input.event.validate().is_ok());
        assert_json_round_trip(&input.event, true);
        assert_binary_round_trip(&input.event);
    }
    if let Ok(stored) = StoredEvent::from_json(data) {
        let json = serde_json::to_vec(&stored).expect("a stored event renders as JSON");
        let back = StoredEvent::from_json(&json).expect("its rendering reads back");
        assert_eq!(back, stored);
    }
});
