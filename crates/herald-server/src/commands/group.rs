//! `herald group …`

use clap::Subcommand;
use serde_json::{Value, json};

use super::{Api, Error};

/// Group subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// The topic's groups, with their mode, members and total lag.
    #[command(visible_alias = "ls")]
    List {
        /// The topic
        topic: String,
    },
    /// Members, positions, lag, in-flight and dead-letter counts.
    Status {
        /// The topic
        topic: String,
        /// The group
        group: String,
    },
    /// Move the group to a new position in every partition.
    Reset {
        /// The topic
        topic: String,
        /// The group
        group: String,
        /// earliest, latest, offset:<n> or time:<RFC 3339>
        #[arg(long)]
        to: String,
    },
    /// List the group's dead letters.
    DeadLetters {
        /// The topic
        topic: String,
        /// The group
        group: String,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Deliver dead letters again (all, or the given ids).
    Redrive {
        /// The topic
        topic: String,
        /// The group
        group: String,
        /// Dead-letter ids (all when none)
        #[arg(long = "id")]
        ids: Vec<u64>,
    },
}

/// Parses `earliest`, `latest`, `offset:<n>` or `time:<RFC 3339>`.
pub(crate) fn position(text: &str) -> Result<Value, Error> {
    match text {
        "earliest" | "latest" => Ok(json!(text)),
        _ => {
            if let Some(offset) = text.strip_prefix("offset:") {
                let offset: u64 = offset.parse().map_err(|_| {
                    Error::Usage(format!("{text:?}: offset:<n> needs a whole number"))
                })?;
                Ok(json!({ "offset": offset }))
            } else if let Some(time) = text.strip_prefix("time:") {
                Ok(json!({ "time": time }))
            } else {
                Err(Error::Usage(format!(
                    "{text:?}: use earliest, latest, offset:<n> or time:<RFC 3339>"
                )))
            }
        }
    }
}

fn path(topic: &str, group: &str) -> String {
    format!(
        "/v1/topics/{}/groups/{}",
        Api::segment(topic),
        Api::segment(group)
    )
}

pub(crate) async fn run(api: &Api, command: GroupCommand) -> Result<(), Error> {
    match command {
        GroupCommand::List { topic } => {
            let listed = api
                .get(&format!("/v1/topics/{}/groups", Api::segment(&topic)))
                .await?;
            let names: Vec<String> = listed
                .get("groups")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Protocol("a group list without groups".into()))?
                .iter()
                .filter_map(|group| group.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            // One status each, for lag and members: a CLI lists a handful.
            let mut rows = Vec::with_capacity(names.len());
            for name in names {
                let mut status = match api.get(&path(&topic, &name)).await {
                    Ok(status) => status,
                    // Deleted between the list and now.
                    Err(Error::Problem { code, .. }) if code == "group_not_found" => continue,
                    Err(error) => return Err(error),
                };
                status["lag"] = json!(total_lag(&status));
                rows.push(status);
            }
            // The table counts members; the JSON keeps them whole.
            let table: Vec<Value> = rows
                .iter()
                .map(|status| {
                    let mut row = status.clone();
                    row["members"] = json!(
                        status
                            .get("members")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len)
                    );
                    row
                })
                .collect();
            api.print(
                &json!({ "groups": rows }),
                &[
                    "name",
                    "mode",
                    "members",
                    "lag",
                    "in_flight",
                    "dead_letters",
                ],
                &table,
            );
        }
        GroupCommand::Status { topic, group } => {
            let status = api.get(&path(&topic, &group)).await?;
            let partitions = status
                .get("partitions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            api.print(
                &status,
                &["partition", "committed", "end_offset", "lag", "assigned_to"],
                &partitions,
            );
            if api.output == super::Output::Table {
                let lag = total_lag(&status);
                super::emit(&format!(
                    "mode {}  lag {lag}  in flight {}  dead letters {}",
                    super::cell(status.get("mode")),
                    super::cell(status.get("in_flight")),
                    super::cell(status.get("dead_letters"))
                ));
            }
        }
        GroupCommand::Reset { topic, group, to } => {
            let body = json!({ "to": position(&to)? });
            let answer = api
                .post(&format!("{}/reset", path(&topic, &group)), &body)
                .await?;
            if api.output == super::Output::Json {
                super::print_json(&answer);
            } else {
                super::emit(&format!("reset {group} on {topic} to {to}"));
            }
        }
        GroupCommand::DeadLetters {
            topic,
            group,
            limit,
        } => {
            let listed = api
                .get(&format!(
                    "{}/dead-letters?limit={limit}",
                    path(&topic, &group)
                ))
                .await?;
            let letters = listed
                .get("events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            api.print(
                &listed,
                &[
                    "id",
                    "original.partition",
                    "original.offset",
                    "attempts",
                    "reason",
                    "event.id",
                ],
                &letters,
            );
        }
        GroupCommand::Redrive { topic, group, ids } => {
            let body = if ids.is_empty() {
                json!({})
            } else {
                json!({ "ids": ids })
            };
            let answer = api
                .post(
                    &format!("{}/dead-letters/redrive", path(&topic, &group)),
                    &body,
                )
                .await?;
            if api.output == super::Output::Json {
                super::print_json(&answer);
            } else {
                super::emit(&format!("redriven {}", super::cell(answer.get("redriven"))));
            }
        }
    }
    Ok(())
}

/// The lag summed over the group's partitions.
fn total_lag(status: &Value) -> u64 {
    status
        .get("partitions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|partition| partition.get("lag").and_then(Value::as_u64))
        .sum()
}
