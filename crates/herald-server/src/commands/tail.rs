//! `herald tail`: follow a topic over SSE, as `kcat -C` or `nats sub` would.
//!
//! The start is turned into explicit positions before the first request
//! (`latest` becomes each partition's end offset), so that from the first
//! connection on the CLI always knows where it is: after a cut (a server
//! restart, a network blip) it reconnects with backoff and the last SSE id
//! it saw as `Last-Event-ID`, and the server resumes exactly after it —
//! nothing lost, nothing printed twice. It gives up (exit 3) after
//! `--retries` attempts in a row that brought no event.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use futures::StreamExt;
use serde_json::Value;

use super::{Api, Error, Output};

/// The first wait before reconnecting; it doubles up to `--retry-max-ms`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// A connection that stayed up this long was healthy: the retry budget
/// starts over after it, even if no event came (an idle topic).
const HEALTHY: Duration = Duration::from_secs(30);

/// `herald tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic
    topic: String,
    /// Where to start: earliest, latest, or positions `<partition>:<offset>,…`
    /// [default: latest]
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from: Option<String>,
    /// Only this partition
    #[arg(long, short = 'p')]
    partition: Option<u32>,
    /// Start at this offset (of --partition, else of every partition); a
    /// negative one counts back from the end (`-10`: the last ten)
    #[arg(
        long,
        short = 'o',
        allow_negative_numbers = true,
        conflicts_with = "from_time"
    )]
    offset: Option<i64>,
    /// Start at the first event appended at or after this time (RFC 3339,
    /// e.g. 2026-12-03T08:00:00Z)
    #[arg(long, value_name = "TIME")]
    from_time: Option<String>,
    /// Only these event types (comma-separated)
    #[arg(long = "type", value_name = "TYPES")]
    types: Option<String>,
    /// Only events whose subject starts with this
    #[arg(long)]
    subject: Option<String>,
    /// Only events with this correlation id
    #[arg(long)]
    correlationid: Option<String>,
    /// Exit after this many events [default: follow until interrupted]
    #[arg(long, short = 'c')]
    count: Option<u64>,
    /// Print each event with this template instead of a table, as `kcat -f`:
    /// %t topic, %p partition, %o offset, %k key, %s payload, %S payload
    /// size, %T appended at, %i id, %y type, %j the event as JSON, %% a %;
    /// \n newline, \t tab (no newline is added)
    #[arg(long, short = 'f', value_name = "TEMPLATE")]
    format: Option<String>,
    /// Reconnect attempts in a row, after a cut, before giving up (exit 3)
    #[arg(long, default_value_t = 10, value_name = "N")]
    retries: u32,
    /// Longest wait between reconnect attempts (the wait doubles from 100 ms)
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    retry_max_ms: u64,
}

pub(crate) async fn run(api: &Api, args: TailArgs) -> Result<(), Error> {
    let mut query = vec![("from", start(api, &args).await?)];
    for (name, value) in [
        ("type", &args.types),
        ("subject", &args.subject),
        ("correlationid", &args.correlationid),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    let path = format!("/v1/topics/{}/events/stream", Api::segment(&args.topic));
    let printer = Printer {
        output: api.output,
        format: args.format.as_deref().map(unescape),
    };
    if printer.format.is_none() && api.output == Output::Table {
        printer.write(b"PARTITION  OFFSET  KEY  TYPE  ID  DATA\n");
    }
    let mut follower = Follower {
        api,
        args: &args,
        path,
        query,
        printer,
        last_id: None,
        printed: 0,
    };
    tokio::select! {
        result = follower.follow() => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// The `from` query parameter: explicit positions wherever the CLI can
/// know them, so that a reconnect before the first event still resumes at
/// the right place.
async fn start(api: &Api, args: &TailArgs) -> Result<String, Error> {
    let from = args.from.as_deref().unwrap_or("latest");
    let explicit = args.partition.is_some() || args.offset.is_some() || args.from_time.is_some();
    if !explicit && from != "latest" {
        // `earliest` is as good on a reconnect; positions are positions.
        return Ok(from.to_owned());
    }
    if !matches!(from, "earliest" | "latest") {
        // --partition with explicit positions: the positions say where.
        return Ok(from.to_owned());
    }
    let topic_path = format!("/v1/topics/{}", Api::segment(&args.topic));
    let topic = api.get(&topic_path).await?;
    let partitions = topic
        .get("partition_info")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Protocol(format!("{topic_path}: no partition_info in the answer")))?;
    if let Some(wanted) = args.partition
        && !partitions
            .iter()
            .any(|info| info["partition"].as_u64() == Some(u64::from(wanted)))
    {
        return Err(Error::Usage(format!(
            "--partition {wanted}: topic {:?} has partitions 0..{}",
            args.topic,
            partitions.len()
        )));
    }
    let mut positions = Vec::with_capacity(partitions.len());
    for info in partitions {
        let field = |name: &str| {
            info[name]
                .as_u64()
                .ok_or_else(|| Error::Protocol(format!("{topic_path}: partition without {name}")))
        };
        let (partition, first, end) = (
            field("partition")?,
            field("start_offset")?,
            field("end_offset")?,
        );
        let selected = args
            .partition
            .is_none_or(|wanted| u64::from(wanted) == partition);
        let offset = if !selected {
            // Not followed: skip what is there, filter what comes.
            end
        } else if let Some(offset) = args.offset {
            match u64::try_from(offset) {
                Ok(offset) => offset,
                Err(_) => end.saturating_sub(offset.unsigned_abs()).max(first),
            }
        } else if let Some(time) = &args.from_time {
            offset_at(api, &args.topic, partition, time).await?
        } else if from == "earliest" {
            first
        } else {
            end
        };
        positions.push(format!("{partition}:{offset}"));
    }
    Ok(positions.join(","))
}

/// The offset of the first event of `partition` appended at or after `time`.
async fn offset_at(api: &Api, topic: &str, partition: u64, time: &str) -> Result<u64, Error> {
    let read = api
        .get(&format!(
            "/v1/topics/{}/events?partition={partition}&from_time={}&limit=1",
            Api::segment(topic),
            Api::segment(time)
        ))
        .await?;
    read["events"][0]["offset"]
        .as_u64()
        .or_else(|| read["next_offset"].as_u64())
        .ok_or_else(|| Error::Protocol("a read answered without offsets".into()))
}

struct Follower<'a> {
    api: &'a Api,
    args: &'a TailArgs,
    path: String,
    query: Vec<(&'static str, String)>,
    printer: Printer,
    /// The SSE id of the last event received: where to resume.
    last_id: Option<String>,
    printed: u64,
}

/// How one connection ended.
enum Ended {
    /// `--count` reached, or stdout closed: stop.
    Done,
    /// Cut off: reconnect. Whether it was healthy (brought an event or
    /// lasted), and why it ended.
    Cut { healthy: bool, cause: Error },
}

impl Follower<'_> {
    async fn follow(&mut self) -> Result<(), Error> {
        let mut failures = 0u32;
        loop {
            let cause = match self.connection().await {
                Ok(Ended::Done) => return Ok(()),
                Ok(Ended::Cut { healthy, cause }) => {
                    if healthy {
                        failures = 0;
                    }
                    cause
                }
                Err(error) if super::retryable(&error) => error,
                Err(error) => return Err(error),
            };
            failures += 1;
            if failures > self.args.retries {
                return Err(if self.args.retries == 0 {
                    cause
                } else {
                    Error::Connection(format!(
                        "gave up after {} retries: {cause}",
                        self.args.retries
                    ))
                });
            }
            let wait = FIRST_RETRY
                .saturating_mul(1 << (failures - 1).min(16))
                .min(Duration::from_millis(self.args.retry_max_ms));
            tokio::time::sleep(wait).await;
        }
    }

    /// One SSE connection, from open to cut.
    async fn connection(&mut self) -> Result<Ended, Error> {
        let response = self
            .api
            .sse(&self.path, &self.query, self.last_id.as_deref())
            .await?;
        let opened = tokio::time::Instant::now();
        let mut healthy = false;
        let mut body = response.bytes_stream();
        let mut decoder = super::sse::Decoder::default();
        let cause = loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => {
                    break Error::Connection(format!("the event stream was cut: {error}"));
                }
                None => break Error::Connection("the server ended the event stream".into()),
            };
            for frame in decoder.push(&chunk) {
                if frame.event.as_deref() == Some("error") {
                    let error = super::stream_error(&frame.data);
                    if super::retryable(&error) {
                        return Ok(Ended::Cut {
                            healthy,
                            cause: error,
                        });
                    }
                    return Err(error);
                }
                let Some(id) = frame.id else { continue };
                let event: Value = serde_json::from_str(&frame.data).map_err(|error| {
                    Error::Protocol(format!("an SSE event that is not JSON ({error})"))
                })?;
                self.last_id = Some(id);
                healthy = true;
                let partition = event.get("partition").and_then(Value::as_u64);
                if let Some(wanted) = self.args.partition
                    && partition != Some(u64::from(wanted))
                {
                    continue;
                }
                if !self.printer.event(&event) {
                    return Ok(Ended::Done);
                }
                self.printed += 1;
                if self.args.count.is_some_and(|count| self.printed >= count) {
                    return Ok(Ended::Done);
                }
            }
        };
        Ok(Ended::Cut {
            healthy: healthy || opened.elapsed() >= HEALTHY,
            cause,
        })
    }
}

struct Printer {
    output: Output,
    format: Option<Vec<Piece>>,
}

impl Printer {
    /// Prints one event; `false` once stdout is closed (`| head`).
    fn event(&self, event: &Value) -> bool {
        let bytes = match (&self.format, self.output) {
            (Some(pieces), _) => render(pieces, event),
            (None, Output::Json) => format!("{event}\n").into_bytes(),
            (None, Output::Table) => {
                let data = String::from_utf8_lossy(&payload(event)).into_owned();
                let data = if data.chars().count() > 60 {
                    format!("{}…", data.chars().take(60).collect::<String>())
                } else if data.is_empty() {
                    "-".to_owned()
                } else {
                    data
                };
                format!(
                    "{}  {}  {}  {}  {}  {}\n",
                    super::cell(event.get("partition")),
                    super::cell(event.get("offset")),
                    super::cell(event.get("key")),
                    super::cell(event.get("type")),
                    super::cell(event.get("id")),
                    data.replace('\n', "\\n")
                )
                .into_bytes()
            }
        };
        self.write(&bytes)
    }

    fn write(&self, bytes: &[u8]) -> bool {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(bytes)
            .and_then(|()| stdout.flush())
            .is_ok()
    }
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(char),
}

/// Splits a template into text and `%x` fields, turning `\n`, `\t`, `\r`
/// and `\\` into their characters.
fn unescape(template: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars();
    while let Some(current) = chars.next() {
        match current {
            '\\' => match chars.next() {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('r') => text.push('\r'),
                Some('\\') => text.push('\\'),
                Some(other) => {
                    text.push('\\');
                    text.push(other);
                }
                None => text.push('\\'),
            },
            '%' => match chars.next() {
                Some('%') => text.push('%'),
                Some(field @ ('t' | 'p' | 'o' | 'k' | 's' | 'S' | 'T' | 'i' | 'y' | 'j')) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(field));
                }
                Some(other) => {
                    text.push('%');
                    text.push(other);
                }
                None => text.push('%'),
            },
            other => text.push(other),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

fn render(pieces: &[Piece], event: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let text = |name: &str| match event.get(name) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
            Piece::Field('t') => out.extend_from_slice(text("topic").as_bytes()),
            Piece::Field('p') => out.extend_from_slice(text("partition").as_bytes()),
            Piece::Field('o') => out.extend_from_slice(text("offset").as_bytes()),
            Piece::Field('k') => out.extend_from_slice(text("key").as_bytes()),
            Piece::Field('s') => out.extend(payload(event)),
            Piece::Field('S') => out.extend_from_slice(payload(event).len().to_string().as_bytes()),
            Piece::Field('T') => out.extend_from_slice(text("appendedat").as_bytes()),
            Piece::Field('i') => out.extend_from_slice(text("id").as_bytes()),
            Piece::Field('y') => out.extend_from_slice(text("type").as_bytes()),
            Piece::Field(_) => out.extend_from_slice(event.to_string().as_bytes()),
        }
    }
    out
}

/// The event's payload as bytes: a string as itself, other JSON compact,
/// `data_base64` decoded; none is empty.
fn payload(event: &Value) -> Vec<u8> {
    match (event.get("data"), event.get("data_base64")) {
        (Some(Value::String(text)), _) => text.clone().into_bytes(),
        (Some(Value::Null) | None, Some(Value::String(encoded))) => {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_else(|_| encoded.clone().into_bytes())
        }
        (Some(Value::Null) | None, _) => Vec::new(),
        (Some(other), _) => other.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn given_a_kcat_template_when_rendered_should_fill_each_field() {
        let event = json!({
            "topic": "orders", "partition": 1, "offset": 42, "key": "k-7",
            "id": "e1", "type": "order.placed", "appendedat": "2026-12-03T08:00:00.000Z",
            "data": {"total": 3}
        });
        let pieces = unescape("%t %p %o %k %s %S %T %i %y 100%% %x\\t|\\n");
        assert_eq!(
            String::from_utf8(render(&pieces, &event)).unwrap(),
            "orders 1 42 k-7 {\"total\":3} 11 2026-12-03T08:00:00.000Z e1 order.placed 100% %x\t|\n"
        );
        let binary = json!({"data_base64": "aMOpbGxv"});
        assert_eq!(render(&unescape("%s"), &binary), "héllo".as_bytes());
        assert_eq!(render(&unescape("[%k]"), &json!({})), b"[]");
    }
}
