//! JetStream API requests async-nats has no call for: atomic batch publish
//! (ADR-50) and batched direct get (ADR-31).

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The most messages one atomic batch may hold (a server limit).
pub(crate) const MAX_BATCH: usize = 1000;

/// JetStream's error codes for a failed `Nats-Expected-Last-Subject-Sequence`
/// (or `-Sequence`) check: with the sequence in the message (10071), or
/// without (10164, what a check in an atomic batch answers).
const WRONG_LAST_SEQUENCE: [u64; 2] = [10071, 10164];

/// An error reply of the JetStream API.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ApiError {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub err_code: u64,
    #[serde(default)]
    pub description: String,
}

impl ApiError {
    /// Whether an expected-last-sequence check failed (nothing was stored).
    pub(crate) fn is_wrong_last_sequence(&self) -> bool {
        WRONG_LAST_SEQUENCE.contains(&self.err_code)
    }

    /// Whether the server refused a batch for holding an id it has seen
    /// (or one twice).
    pub(crate) fn is_duplicate(&self) -> bool {
        self.description.to_ascii_lowercase().contains("duplicate")
    }
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered with an error.
    Api(ApiError),
    /// No stream listens on the subject (no responders).
    NoStream,
    /// A message is larger than the server's `max_payload`; nothing of
    /// the batch was stored.
    TooLarge,
    /// No answer, or none that could be read.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api(error) => write!(
                f,
                "{} (code {}, error {})",
                error.description, error.code, error.err_code
            ),
            Self::NoStream => f.write_str("no stream for the subject"),
            Self::TooLarge => f.write_str("a message is larger than the server's max_payload"),
            Self::Transport(detail) => f.write_str(detail),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Reply<T> {
    Error { error: ApiError },
    Ok(T),
}

/// A stored message's position, as a publish acknowledges it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PubAck {
    #[serde(rename = "seq")]
    pub sequence: u64,
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default)]
    pub count: Option<u64>,
}

/// A message to publish.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, Failure> {
    match serde_json::from_slice::<Reply<T>>(payload) {
        Ok(Reply::Ok(value)) => Ok(value),
        Ok(Reply::Error { error }) => Err(Failure::Api(error)),
        Err(error) => Err(Failure::Transport(format!(
            "unreadable JetStream reply ({error}): {}",
            String::from_utf8_lossy(payload)
        ))),
    }
}

/// Publishes one message and waits for its acknowledgement.
pub(crate) async fn publish(
    client: &Client,
    message: Outgoing,
    timeout: Duration,
) -> Result<PubAck, Failure> {
    let reply = tokio::time::timeout(
        timeout,
        client.request_with_headers(message.subject, message.headers, message.payload),
    )
    .await
    .map_err(|_| Failure::Transport("no acknowledgement in time".into()))?
    .map_err(|error| match error.kind() {
        async_nats::RequestErrorKind::NoResponders => Failure::NoStream,
        async_nats::RequestErrorKind::MaxPayloadExceeded => Failure::TooLarge,
        _ => Failure::Transport(error.to_string()),
    })?;
    parse(&reply.payload)
}

/// Publishes `messages` (at most [`MAX_BATCH`], on one stream) as one atomic
/// batch: all are stored, contiguously and in order, or none. Returns the
/// acknowledgement of the last. A lone message is published on its own.
pub(crate) async fn publish_batch(
    client: &Client,
    mut messages: Vec<Outgoing>,
    timeout: Duration,
) -> Result<PubAck, Failure> {
    let Some(mut last) = messages.pop() else {
        return Err(Failure::Transport("an empty batch".into()));
    };
    if messages.is_empty() {
        return publish(client, last, timeout).await;
    }
    let batch = herald_types::Event::generate_id(
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis()),
        )
        .unwrap_or(i64::MAX),
    );
    let mut sequence = 0u64;
    for mut message in messages {
        sequence += 1;
        message.headers.insert("Nats-Batch-Id", batch.as_str());
        message
            .headers
            .insert("Nats-Batch-Sequence", sequence.to_string());
        client
            .publish_with_headers(message.subject, message.headers, message.payload)
            .await
            .map_err(|error| match error.kind() {
                async_nats::PublishErrorKind::MaxPayloadExceeded => Failure::TooLarge,
                _ => Failure::Transport(error.to_string()),
            })?;
    }
    sequence += 1;
    last.headers.insert("Nats-Batch-Id", batch.as_str());
    last.headers
        .insert("Nats-Batch-Sequence", sequence.to_string());
    last.headers.insert("Nats-Batch-Commit", "1");
    publish(client, last, timeout).await
}

/// Where a batched direct get starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// At this stream sequence (or the first after it).
    Sequence(u64),
    /// At the first message stored at or after this time (ms since the
    /// Unix epoch).
    Time(i64),
}

#[derive(Debug, serde::Serialize)]
struct BatchRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<String>,
    batch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_by_subj: Option<String>,
}

/// What a batched direct get asks for.
#[derive(Debug, Clone)]
pub(crate) struct Batch<'a> {
    /// The stream.
    pub stream: &'a str,
    /// Where to start.
    pub start: Start,
    /// At most this many messages.
    pub max: usize,
    /// Stop adding messages past about this many bytes.
    pub max_bytes: Option<usize>,
    /// Only messages of this subject (filter).
    pub subject: Option<&'a str>,
}

/// Up to `request.max` messages from `request.start` (fewer when
/// `max_bytes` is reached; at least one if there is one), in sequence
/// order; empty at the end. `api` is the API prefix (`$JS.API`, or a
/// domain's).
pub(crate) async fn direct_get_batch(
    client: &Client,
    api: &str,
    request: Batch<'_>,
    timeout: Duration,
) -> Result<Vec<StreamMessage>, Failure> {
    let Batch {
        stream,
        start,
        max: batch,
        max_bytes,
        subject,
    } = request;
    let next_by_subj = subject.map(str::to_owned);
    let request = match start {
        Start::Sequence(seq) => BatchRequest {
            seq: Some(seq.max(1)),
            start_time: None,
            batch,
            max_bytes,
            next_by_subj,
        },
        Start::Time(ms) => {
            let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .map_err(|error| Failure::Transport(error.to_string()))?
                .format(&Rfc3339)
                .map_err(|error| Failure::Transport(error.to_string()))?;
            BatchRequest {
                seq: None,
                start_time: Some(time),
                batch,
                max_bytes,
                next_by_subj,
            }
        }
    };
    let payload =
        serde_json::to_vec(&request).map_err(|error| Failure::Transport(error.to_string()))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| Failure::Transport(error.to_string()))?;
    client
        .publish_with_reply(format!("{api}.DIRECT.GET.{stream}"), inbox, payload.into())
        .await
        .map_err(|error| Failure::Transport(error.to_string()))?;
    let mut messages = Vec::new();
    loop {
        let reply = tokio::time::timeout(timeout, replies.next())
            .await
            .map_err(|_| Failure::Transport("direct get: no reply in time".into()))?
            .ok_or_else(|| Failure::Transport("direct get: subscription closed".into()))?;
        if let Some(status) = reply.status {
            match status.as_u16() {
                503 => return Err(Failure::NoStream),
                // The end of the batch, or nothing to read.
                204 | 404 => break,
                code => {
                    return Err(Failure::Api(ApiError {
                        code,
                        err_code: 0,
                        description: reply.description.unwrap_or_default(),
                    }));
                }
            }
        }
        let message = StreamMessage::try_from(reply)
            .map_err(|error| Failure::Transport(format!("direct get: {error}")))?;
        messages.push(message);
        if messages.len() >= batch {
            break;
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(messages)
}

/// Milliseconds since the Unix epoch of a message's time.
pub(crate) fn millis(time: OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
