//! Drives the gRPC request conversions with arbitrary bytes: the first byte
//! picks a message, the rest is decoded as it (prost, like tonic does) and,
//! if it decodes, converted exactly as the server's services convert it
//! (`herald_server::grpc::convert`, which uses `herald-proto`'s
//! `v1::Event::into_input`), or as the SDK converts what the server sends
//! (`StoredEvent::try_from`). No message may panic. An event the server
//! accepts must survive the way back: encoded again it converts to the same
//! event, and its CloudEvents JSON rendering (what REST and SSE serve)
//! decodes to it too.
#![no_main]

use herald_backend::StartPosition;
use herald_fuzz::{NOW_MS, assert_json_round_trip};
use herald_proto::v1;
use herald_server::grpc::convert;
use herald_types::{EventInput, StoredEvent};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            if let Ok(request) = v1::PublishRequest::decode(bytes)
                && let Ok((_, inputs)) = convert::publish_request(request, NOW_MS)
            {
                inputs.iter().for_each(check_accepted);
            }
        }
        1 => {
            if let Ok(request) = v1::AppendRequest::decode(bytes)
                && let Ok((_, _, _, inputs)) = convert::append_request(request, NOW_MS)
            {
                inputs.iter().for_each(check_accepted);
            }
        }
        2 => {
            if let Ok(request) = v1::CreateTopicRequest::decode(bytes)
                && let Some(topic) = request.topic
                && let Ok(spec) = convert::topic_spec(&topic)
            {
                let _ = spec.validate();
            }
        }
        3 => {
            if let Ok(request) = v1::PutGroupRequest::decode(bytes)
                && let Some(group) = request.group
                && let Ok(spec) = convert::group_spec(group)
            {
                let _ = spec.validate();
            }
        }
        4 => {
            if let Ok(request) = v1::ResetGroupRequest::decode(bytes) {
                let _ = convert::start_position(request.to, StartPosition::Earliest);
            }
        }
        _ => {
            // The SDK's side: a stored event from the server.
            if let Ok(wire) = v1::StoredEvent::decode(bytes)
                && let Ok(stored) = StoredEvent::try_from(wire)
            {
                let again = v1::StoredEvent::from(stored.clone()).encode_to_vec();
                let wire = v1::StoredEvent::decode(again.as_slice()).expect("own encoding decodes");
                let back = StoredEvent::try_from(wire).expect("own encoding converts");
                assert_eq!(back, stored);
            }
        }
    }
});

/// An event the server accepted: valid, the same after a trip over the wire
/// and back, and the same after a trip through its JSON rendering.
fn check_accepted(input: &EventInput) {
    assert!(input.event.validate().is_ok());
    let wire = v1::Event::from(input.clone()).encode_to_vec();
    let wire = v1::Event::decode(wire.as_slice()).expect("own encoding decodes");
    let back = wire.into_input(NOW_MS).expect("own encoding is accepted");
    assert_eq!(&back, input);
    // gRPC takes data bytes as they are: JSON data may have any whitespace.
    assert_json_round_trip(&input.event, false);
}
