//! `herald consume …`: join a group, print deliveries, settle them.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::{Api, Error, Output};

/// `herald consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic
    topic: String,
    /// The group (created in --mode if it does not exist)
    group: String,
    /// The group's mode: it is created in this mode, and an existing group
    /// of another mode is an error [default: queue for a new group, the
    /// group's own for an existing one]
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// This consumer's member id [default: cli-<pid>]
    #[arg(long)]
    member: Option<String>,
    /// Deliveries per fetch
    #[arg(long, default_value_t = 100)]
    max: u32,
    /// Stop after this many deliveries [default: run until interrupted]
    #[arg(long)]
    count: Option<u64>,
    /// What to do with each delivery
    #[arg(long, value_enum, default_value_t = Settle::Ack)]
    settle: Settle,
    /// Stop when a fetch waits this long for nothing
    #[arg(long, value_name = "MS")]
    idle_exit_ms: Option<u64>,
}

/// Group mode.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// partitions assigned to members, offsets committed
    Stream,
    /// any member gets any event, acked one by one
    Queue,
    /// queue, with one event per key in flight
    Keyed,
}

/// How deliveries are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Settle {
    /// ack (queue/keyed) or commit (stream)
    Ack,
    /// nack: redeliver after the backoff
    Nack,
    /// leave them leased (they are redelivered after the ack wait)
    None,
}

pub(crate) async fn run(api: &Api, args: ConsumeArgs) -> Result<(), Error> {
    let group_path = format!(
        "/v1/topics/{}/groups/{}",
        Api::segment(&args.topic),
        Api::segment(&args.group)
    );
    let wanted = args.mode.map(|mode| match mode {
        Mode::Stream => "stream",
        Mode::Queue => "queue",
        Mode::Keyed => "keyed",
    });
    match api.get(&group_path).await {
        Ok(group) => {
            let actual = group.get("mode").and_then(Value::as_str).unwrap_or("?");
            if let Some(wanted) = wanted.filter(|wanted| *wanted != actual) {
                // The server would refuse to change the mode too (409
                // group_conflict); consuming it in another mode than asked
                // for would silently change the semantics.
                return Err(Error::Problem {
                    status: 409,
                    code: "group_conflict".into(),
                    detail: format!(
                        "group {:?} on topic {:?} is in {actual} mode, not {wanted} (--mode); \
                         drop --mode, or use another group",
                        args.group, args.topic
                    ),
                });
            }
        }
        Err(Error::Problem { code, .. }) if code == "group_not_found" => {
            api.put(&group_path, &json!({ "mode": wanted.unwrap_or("queue") }))
                .await?;
        }
        Err(error) => return Err(error),
    }
    let member = args
        .member
        .clone()
        .unwrap_or_else(|| format!("cli-{}", std::process::id()));
    let mut received = 0u64;
    if api.output == Output::Table {
        super::emit("PARTITION  OFFSET  ATTEMPT  TYPE  ID  DATA");
    }
    let result = tokio::select! {
        result = consume(api, &args, &group_path, &member, &mut received) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    // Hand leases and partitions back at once rather than after timeouts.
    let _ = api
        .post(&format!("{group_path}/leave"), &json!({ "member": member }))
        .await;
    result
}

async fn consume(
    api: &Api,
    args: &ConsumeArgs,
    group_path: &str,
    member: &str,
    received: &mut u64,
) -> Result<(), Error> {
    let wait_ms = args.idle_exit_ms.unwrap_or(5_000).min(30_000);
    loop {
        let max = args.count.map_or(args.max, |count| {
            u32::try_from(count - *received)
                .unwrap_or(u32::MAX)
                .min(args.max)
        });
        let fetched = api
            .post(
                &format!("{group_path}/fetch"),
                &json!({ "member": member, "max": max, "wait_ms": wait_ms }),
            )
            .await?;
        let deliveries = fetched
            .get("deliveries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if deliveries.is_empty() {
            if args.idle_exit_ms.is_some() {
                return Ok(());
            }
            continue;
        }
        for delivery in &deliveries {
            print_delivery(api.output, delivery);
        }
        *received += deliveries.len() as u64;
        settle(api, args.settle, group_path, member, &fetched, &deliveries).await?;
        if args.count.is_some_and(|count| *received >= count) {
            return Ok(());
        }
    }
}

async fn settle(
    api: &Api,
    settle: Settle,
    group_path: &str,
    member: &str,
    fetched: &Value,
    deliveries: &[Value],
) -> Result<(), Error> {
    if settle == Settle::None {
        return Ok(());
    }
    if let Some(generation) = fetched.get("generation") {
        // Stream mode: commit the next offset of each partition.
        let mut next: BTreeMap<u64, u64> = BTreeMap::new();
        for delivery in deliveries {
            let event = delivery.get("event");
            let partition = event
                .and_then(|event| event.get("partition"))
                .and_then(Value::as_u64);
            let offset = event
                .and_then(|event| event.get("offset"))
                .and_then(Value::as_u64);
            if let (Some(partition), Some(offset)) = (partition, offset) {
                let entry = next.entry(partition).or_insert(0);
                *entry = (*entry).max(offset + 1);
            }
        }
        if settle == Settle::Ack {
            let offsets: Vec<Value> = next
                .iter()
                .map(|(partition, offset)| json!({ "partition": partition, "offset": offset }))
                .collect();
            let body = json!({ "member": member, "generation": generation, "offsets": offsets });
            api.post(&format!("{group_path}/commit"), &body).await?;
        }
        return Ok(());
    }
    let ids: Vec<Value> = deliveries
        .iter()
        .filter_map(|delivery| delivery.get("delivery_id").cloned())
        .collect();
    let action = if settle == Settle::Ack { "ack" } else { "nack" };
    api.post(
        &format!("{group_path}/{action}"),
        &json!({ "delivery_ids": ids }),
    )
    .await?;
    Ok(())
}

fn print_delivery(output: Output, delivery: &Value) {
    match output {
        Output::Json => super::emit(&delivery.to_string()),
        Output::Table => {
            let event = delivery.get("event").cloned().unwrap_or(Value::Null);
            let data = event
                .get("data")
                .or_else(|| event.get("data_base64"))
                .map(|data| {
                    let text = super::cell(Some(data));
                    if text.chars().count() > 60 {
                        format!("{}…", text.chars().take(60).collect::<String>())
                    } else {
                        text
                    }
                });
            super::emit(&format!(
                "{}  {}  {}  {}  {}  {}",
                super::cell(event.get("partition")),
                super::cell(event.get("offset")),
                super::cell(delivery.get("attempt")),
                super::cell(event.get("type")),
                super::cell(event.get("id")),
                data.unwrap_or_else(|| "-".into())
            ));
        }
    }
}
