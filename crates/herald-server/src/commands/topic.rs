//! `herald topic …`

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::{Api, Error};

/// Topic subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// The topic's name
        name: String,
        /// Partitions (fixed at creation)
        #[arg(long)]
        partitions: Option<u32>,
        /// Durability of an acknowledged publish
        #[arg(long, value_enum)]
        fsync: Option<Fsync>,
        /// With --fsync interval: the interval
        #[arg(long, value_name = "MS")]
        fsync_interval_ms: Option<u64>,
        #[command(flatten)]
        limits: Limits,
    },
    /// List topics.
    List,
    /// Show a topic and its partitions.
    Describe {
        /// The topic
        name: String,
    },
    /// Change retention and limits.
    Update {
        /// The topic
        name: String,
        #[command(flatten)]
        limits: Limits,
    },
    /// Delete a topic, its events and its groups.
    Delete {
        /// The topic
        name: String,
    },
}

/// Durability policy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Fsync {
    /// fsync before acknowledging
    Always,
    /// fsync within an interval
    Interval,
    /// leave it to the OS
    Never,
}

/// Retention and limits, shared by create and update.
#[derive(Debug, Args)]
pub struct Limits {
    /// Remove events older than this
    #[arg(long, value_name = "MS")]
    retention_max_age_ms: Option<u64>,
    /// Keep about this many bytes per partition
    #[arg(long, value_name = "BYTES")]
    retention_max_bytes: Option<u64>,
    /// Keep about this many events per partition
    #[arg(long, value_name = "COUNT")]
    retention_max_events: Option<u64>,
    /// Deduplication window for event ids (0 turns it off)
    #[arg(long, value_name = "MS")]
    dedup_window_ms: Option<u64>,
    /// Largest event accepted
    #[arg(long, value_name = "BYTES")]
    max_event_bytes: Option<u64>,
    /// Topic that receives the groups' dead letters
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
}

impl Limits {
    fn apply(&self, body: &mut Map<String, Value>) {
        let mut retention = Map::new();
        for (key, value) in [
            ("max_age_ms", self.retention_max_age_ms),
            ("max_bytes", self.retention_max_bytes),
            ("max_events", self.retention_max_events),
        ] {
            if let Some(value) = value {
                retention.insert(key.into(), json!(value));
            }
        }
        if !retention.is_empty() {
            body.insert("retention".into(), Value::Object(retention));
        }
        if let Some(window) = self.dedup_window_ms {
            body.insert("dedup_window_ms".into(), json!(window));
        }
        if let Some(max) = self.max_event_bytes {
            body.insert("max_event_bytes".into(), json!(max));
        }
        if let Some(topic) = &self.dead_letter_topic {
            body.insert("dead_letter_topic".into(), json!(topic));
        }
    }
}

const TOPIC_COLUMNS: &[&str] = &[
    "name",
    "partitions",
    "fsync",
    "dedup_window_ms",
    "max_event_bytes",
    "dead_letter_topic",
];

pub(crate) async fn run(api: &Api, command: TopicCommand) -> Result<(), Error> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            fsync,
            fsync_interval_ms,
            limits,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            if let Some(partitions) = partitions {
                body.insert("partitions".into(), json!(partitions));
            }
            if let Some(fsync) = fsync {
                let policy = match fsync {
                    Fsync::Always => "always",
                    Fsync::Interval => "interval",
                    Fsync::Never => "never",
                };
                body.insert("fsync".into(), json!(policy));
            }
            if let Some(interval) = fsync_interval_ms {
                body.insert("fsync_interval_ms".into(), json!(interval));
            }
            limits.apply(&mut body);
            let topic = api.post("/v1/topics", &Value::Object(body)).await?;
            api.print(&topic, TOPIC_COLUMNS, std::slice::from_ref(&topic));
        }
        TopicCommand::List => {
            let listed = api.get("/v1/topics").await?;
            let topics = listed
                .get("topics")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            api.print(&listed, TOPIC_COLUMNS, &topics);
        }
        TopicCommand::Describe { name } => {
            let topic = api
                .get(&format!("/v1/topics/{}", Api::segment(&name)))
                .await?;
            let partitions = topic
                .get("partition_info")
                .or_else(|| topic.get("partitions").filter(|value| value.is_array()))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            api.print(
                &topic,
                &["partition", "start_offset", "end_offset", "bytes"],
                &partitions,
            );
        }
        TopicCommand::Update { name, limits } => {
            let mut body = Map::new();
            limits.apply(&mut body);
            if body.is_empty() {
                return Err(Error::Usage(
                    "nothing to update: give at least one limit".into(),
                ));
            }
            let topic = api
                .patch(
                    &format!("/v1/topics/{}", Api::segment(&name)),
                    &Value::Object(body),
                )
                .await?;
            api.print(&topic, TOPIC_COLUMNS, std::slice::from_ref(&topic));
        }
        TopicCommand::Delete { name } => {
            api.delete(&format!("/v1/topics/{}", Api::segment(&name)))
                .await?;
            if api.output == super::Output::Json {
                super::print_json(&json!({ "deleted": name }));
            } else {
                super::emit(&format!("deleted topic {name}"));
            }
        }
    }
    Ok(())
}
