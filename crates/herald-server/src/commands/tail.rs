//! `herald tail`: follow a topic over SSE, reconnecting where it left off.

use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde_json::Value;

use super::{Api, Error, Output};

/// `herald tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic
    topic: String,
    /// Where to start: earliest, latest, or positions `<partition>:<offset>,…`
    #[arg(long, default_value = "latest")]
    from: String,
    /// Only these event types (comma-separated)
    #[arg(long = "type", value_name = "TYPES")]
    types: Option<String>,
    /// Only events whose subject starts with this
    #[arg(long)]
    subject: Option<String>,
    /// Only events with this correlation id
    #[arg(long)]
    correlationid: Option<String>,
    /// Stop after this many events [default: follow until interrupted]
    #[arg(long)]
    count: Option<u64>,
}

pub(crate) async fn run(api: &Api, args: TailArgs) -> Result<(), Error> {
    let mut query = vec![("from", args.from.clone())];
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
    if api.output == Output::Table {
        super::emit("PARTITION  OFFSET  TYPE  ID  SUBJECT");
    }
    let mut last_id: Option<String> = None;
    let mut printed = 0u64;
    let follow = async {
        loop {
            let response = api.stream(&path, &query, last_id.as_deref()).await?;
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let mut id = None;
                    let mut data = String::new();
                    let mut error = false;
                    for line in frame.lines() {
                        if let Some(value) = line.strip_prefix("id:") {
                            id = Some(value.trim().to_owned());
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data.push_str(value.trim_start());
                        } else if line.trim() == "event: error" {
                            error = true;
                        }
                    }
                    if error {
                        return Err(Error::Connection(format!(
                            "the server ended the stream: {data}"
                        )));
                    }
                    let Some(id) = id else { continue };
                    print_event(api.output, &data);
                    last_id = Some(id);
                    printed += 1;
                    if args.count.is_some_and(|count| printed >= count) {
                        return Ok(());
                    }
                }
            }
            // Cut off (server restart, network): resume exactly after the
            // last event printed.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        result = follow => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn print_event(output: Output, data: &str) {
    match output {
        Output::Json => super::emit(data),
        Output::Table => {
            let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            super::emit(&format!(
                "{}  {}  {}  {}  {}",
                super::cell(event.get("partition")),
                super::cell(event.get("offset")),
                super::cell(event.get("type")),
                super::cell(event.get("id")),
                super::cell(event.get("subject"))
            ));
        }
    }
}
