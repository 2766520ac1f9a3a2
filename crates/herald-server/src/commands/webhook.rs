//! `herald webhook …`: endpoints, their attempt log, redelivery and
//! recovery (`webhooks:manage`).

use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::{Api, Error};

/// Webhook subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create, list, update and delete endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// An endpoint's delivery attempts, newest first.
    Attempts {
        /// The endpoint's id
        endpoint_id: String,
        /// Only `succeeded` or `failed` ones
        #[arg(long)]
        status: Option<String>,
        /// Only this message's (`<topic>.<partition>.<offset>`)
        #[arg(long)]
        message: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send a message to an endpoint once more, now.
    Redeliver {
        /// The endpoint's id
        endpoint_id: String,
        /// The message (`webhook-id`: `<topic>.<partition>.<offset>`)
        message: String,
    },
    /// Deliver again everything that failed (was dead-lettered) since a time.
    Recover {
        /// The endpoint's id
        endpoint_id: String,
        /// From this time on (RFC 3339)
        #[arg(long)]
        since: String,
        /// Up to this time (RFC 3339; default now)
        #[arg(long)]
        until: Option<String>,
    },
}

/// Endpoint subcommands.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint; its signing secret is printed (also later by
    /// `rotate-secret`, never by list).
    Create {
        /// Where deliveries are posted
        url: String,
        /// A topic to deliver from (repeatable; at least one)
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// An event type pattern, `*` as wildcard (repeatable; default all)
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only events whose subject starts with this
        #[arg(long)]
        subject_prefix: Option<String>,
        /// A description for people
        #[arg(long)]
        description: Option<String>,
        /// A static header, `Name: value` (repeatable)
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The signing secret (`whsec_…`; generated when absent)
        #[arg(long)]
        secret: Option<String>,
        /// Deliveries per second at most
        #[arg(long)]
        rate_limit_per_s: Option<u32>,
        /// One delivery in flight per subject, in log order
        #[arg(long)]
        ordered: bool,
        /// Create it disabled
        #[arg(long)]
        disabled: bool,
    },
    /// List endpoints with their state.
    List,
    /// Show one endpoint, its state and counters.
    Get {
        /// The endpoint's id
        endpoint_id: String,
    },
    /// Change an endpoint (only what is given).
    Update {
        /// The endpoint's id
        endpoint_id: String,
        /// A new URL
        #[arg(long)]
        url: Option<String>,
        /// New topics (replacing the filter's; with --type and --subject-prefix)
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// New type patterns (with --topic)
        #[arg(long = "type")]
        types: Vec<String>,
        /// A new subject prefix (with --topic)
        #[arg(long)]
        subject_prefix: Option<String>,
        /// A new description
        #[arg(long)]
        description: Option<String>,
        /// A new rate limit (0: none)
        #[arg(long)]
        rate_limit_per_s: Option<u32>,
        /// Enable (also after Herald disabled it)
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable
        #[arg(long)]
        disable: bool,
    },
    /// Give the endpoint a new secret; the old one keeps signing for the overlap.
    RotateSecret {
        /// The endpoint's id
        endpoint_id: String,
        /// How long the old secret keeps signing (default: the server's)
        #[arg(long, value_name = "MS")]
        overlap_ms: Option<u64>,
    },
    /// Delete an endpoint (its attempt log too).
    Delete {
        /// The endpoint's id
        endpoint_id: String,
    },
}

const ENDPOINT_COLUMNS: &[&str] = &["endpoint_id", "url", "state", "ordered", "description"];
const ATTEMPT_COLUMNS: &[&str] = &[
    "at",
    "message_id",
    "attempt",
    "status_code",
    "latency_ms",
    "error_class",
    "next",
];

fn endpoint_path(endpoint_id: &str) -> String {
    format!("/v1/webhooks/endpoints/{}", Api::segment(endpoint_id))
}

fn headers(given: &[String]) -> Result<Map<String, Value>, Error> {
    given
        .iter()
        .map(|header| {
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| Error::Usage(format!("--header {header:?}: use `Name: value`")))?;
            Ok((name.trim().to_owned(), json!(value.trim())))
        })
        .collect()
}

pub(crate) async fn run(api: &Api, command: WebhookCommand) -> Result<(), Error> {
    match command {
        WebhookCommand::Endpoint(command) => endpoint(api, command).await,
        WebhookCommand::Attempts {
            endpoint_id,
            status,
            message,
            limit,
        } => {
            let mut query = format!("?limit={limit}");
            if let Some(status) = status {
                query.push_str(&format!("&status={}", Api::segment(&status)));
            }
            if let Some(message) = message {
                query.push_str(&format!("&message_id={}", Api::segment(&message)));
            }
            let listed = api
                .get(&format!("{}/attempts{query}", endpoint_path(&endpoint_id)))
                .await?;
            let rows = listed["attempts"].as_array().cloned().unwrap_or_default();
            api.print(&listed, ATTEMPT_COLUMNS, &rows);
            Ok(())
        }
        WebhookCommand::Redeliver {
            endpoint_id,
            message,
        } => {
            let answer = api
                .post(
                    &format!(
                        "{}/messages/{}/redeliver",
                        endpoint_path(&endpoint_id),
                        Api::segment(&message)
                    ),
                    &json!({}),
                )
                .await?;
            done(api, &answer, &format!("redelivering {message}"));
            Ok(())
        }
        WebhookCommand::Recover {
            endpoint_id,
            since,
            until,
        } => {
            let mut body = json!({"since": since});
            if let Some(until) = until {
                body["until"] = json!(until);
            }
            let answer = api
                .post(&format!("{}/recover", endpoint_path(&endpoint_id)), &body)
                .await?;
            done(
                api,
                &answer,
                &format!("redelivering {}", super::cell(answer.get("redelivering"))),
            );
            Ok(())
        }
    }
}

async fn endpoint(api: &Api, command: EndpointCommand) -> Result<(), Error> {
    match command {
        EndpointCommand::Create {
            url,
            topics,
            types,
            subject_prefix,
            description,
            headers: given,
            secret,
            rate_limit_per_s,
            ordered,
            disabled,
        } => {
            let mut filter = json!({"topics": topics, "types": types});
            if let Some(prefix) = subject_prefix {
                filter["subject_prefix"] = json!(prefix);
            }
            let mut body = json!({
                "url": url,
                "filter": filter,
                "headers": headers(&given)?,
                "ordered": ordered,
                "enabled": !disabled,
            });
            for (field, value) in [
                ("description", description.map(Value::from)),
                ("secret", secret.map(Value::from)),
                ("rate_limit_per_s", rate_limit_per_s.map(Value::from)),
            ] {
                if let Some(value) = value {
                    body[field] = value;
                }
            }
            let created = api.post("/v1/webhooks/endpoints", &body).await?;
            let mut columns = ENDPOINT_COLUMNS.to_vec();
            columns.push("secret");
            api.print(&created, &columns, std::slice::from_ref(&created));
        }
        EndpointCommand::List => {
            let listed = api.get("/v1/webhooks/endpoints").await?;
            let rows = listed["endpoints"].as_array().cloned().unwrap_or_default();
            api.print(&listed, ENDPOINT_COLUMNS, &rows);
        }
        EndpointCommand::Get { endpoint_id } => {
            let view = api.get(&endpoint_path(&endpoint_id)).await?;
            api.print(&view, ENDPOINT_COLUMNS, std::slice::from_ref(&view));
            if api.output == super::Output::Table {
                super::emit(&format!("stats {}", view["stats"]));
            }
        }
        EndpointCommand::Update {
            endpoint_id,
            url,
            topics,
            types,
            subject_prefix,
            description,
            rate_limit_per_s,
            enable,
            disable,
        } => {
            let mut body = json!({});
            if !topics.is_empty() {
                let mut filter = json!({"topics": topics, "types": types});
                if let Some(prefix) = subject_prefix {
                    filter["subject_prefix"] = json!(prefix);
                }
                body["filter"] = filter;
            } else if !types.is_empty() || subject_prefix.is_some() {
                return Err(Error::Usage(
                    "--type and --subject-prefix replace the filter: give its --topic too".into(),
                ));
            }
            for (field, value) in [
                ("url", url.map(Value::from)),
                ("description", description.map(Value::from)),
                ("rate_limit_per_s", rate_limit_per_s.map(Value::from)),
                (
                    "enabled",
                    (enable || disable).then_some(Value::from(enable)),
                ),
            ] {
                if let Some(value) = value {
                    body[field] = value;
                }
            }
            let view = api.patch(&endpoint_path(&endpoint_id), &body).await?;
            api.print(&view, ENDPOINT_COLUMNS, std::slice::from_ref(&view));
        }
        EndpointCommand::RotateSecret {
            endpoint_id,
            overlap_ms,
        } => {
            let body = overlap_ms.map_or_else(|| json!({}), |ms| json!({"overlap_ms": ms}));
            let answer = api
                .post(
                    &format!("{}/rotate-secret", endpoint_path(&endpoint_id)),
                    &body,
                )
                .await?;
            api.print(&answer, &["secret"], std::slice::from_ref(&answer));
        }
        EndpointCommand::Delete { endpoint_id } => {
            let answer = api.delete(&endpoint_path(&endpoint_id)).await?;
            done(api, &answer, &format!("deleted {endpoint_id}"));
        }
    }
    Ok(())
}

/// Prints the answer (JSON) or a one-line confirmation (table).
fn done(api: &Api, answer: &Value, message: &str) {
    if api.output == super::Output::Json {
        super::print_json(answer);
    } else {
        super::emit(message);
    }
}
