//! `herald workflow …`: deploy and show definitions (`workflows:manage` to
//! deploy), start instances, follow, inspect and steer them
//! (`workflows:run`).

use clap::Subcommand;
use serde_json::{Value, json};

use super::{Api, Error};

/// Workflow subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Deploy a definition (a DSL 1.0 YAML or JSON file; `-` for stdin).
    Deploy {
        /// The file
        file: String,
    },
    /// List deployed workflows and their versions.
    List,
    /// Show a definition.
    Show {
        /// `namespace/name`, or `namespace/name@version` (default: the latest)
        workflow: String,
    },
    /// Start an instance and print it (with --wait, once it ended).
    Start {
        /// `namespace/name`, or `namespace/name@version` (default: the latest)
        workflow: String,
        /// The input, JSON (default null)
        #[arg(long)]
        input: Option<String>,
        /// Wait up to this many seconds for it to end
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// List instances, newest first.
    Instances {
        /// Only this workflow (`namespace/name` or `namespace`)
        #[arg(long)]
        workflow: Option<String>,
        /// Only this status
        #[arg(long)]
        status: Option<String>,
        /// Only instances started at or after this time (RFC 3339)
        #[arg(long, value_name = "TIME")]
        started_after: Option<String>,
        /// Only instances started before this time (RFC 3339)
        #[arg(long, value_name = "TIME")]
        started_before: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show an instance (with --wait, once it ended).
    Get {
        /// The instance's id
        instance_id: String,
        /// Wait up to this many seconds for it to end
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// An instance's steps: each task run with its input, output, error and times.
    History {
        /// The instance's id
        instance_id: String,
    },
    /// Cancel an instance (its compensations run).
    Cancel {
        /// The instance's id
        instance_id: String,
    },
    /// Suspend an instance at its next task or wait.
    Suspend {
        /// The instance's id
        instance_id: String,
    },
    /// Resume a suspended instance.
    Resume {
        /// The instance's id
        instance_id: String,
    },
    /// Run a faulted instance again from the task that failed.
    Retry {
        /// The instance's id
        instance_id: String,
    },
    /// Start a new instance of the same version with the same input.
    Rerun {
        /// The instance's id
        instance_id: String,
    },
}

const INSTANCE_COLUMNS: &[&str] = &[
    "instance_id",
    "namespace",
    "name",
    "version",
    "status",
    "started_at",
    "ended_at",
];
const STEP_COLUMNS: &[&str] = &[
    "path",
    "task",
    "status",
    "attempt",
    "started_at",
    "ended_at",
    "output",
    "error",
];

/// `namespace/name[@version]`.
fn split(workflow: &str) -> Result<(&str, &str, Option<&str>), Error> {
    let (path, version) = match workflow.split_once('@') {
        Some((path, version)) if !version.is_empty() => (path, Some(version)),
        Some(_) => return Err(Error::Usage(format!("{workflow:?}: a version after `@`"))),
        None => (workflow, None),
    };
    path.split_once('/')
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
        .map(|(namespace, name)| (namespace, name, version))
        .ok_or_else(|| Error::Usage(format!("{workflow:?}: use `namespace/name[@version]`")))
}

fn instance_path(instance_id: &str) -> String {
    format!("/v1/workflow-instances/{}", Api::segment(instance_id))
}

fn print_instance(api: &Api, instance: &Value) {
    api.print(instance, INSTANCE_COLUMNS, std::slice::from_ref(instance));
}

/// Up to `seconds` (the server's long poll is at most 60 s a call).
async fn wait_for_end(api: &Api, instance_id: &str, seconds: u64) -> Result<Value, Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let wait_ms = u64::try_from(left.as_millis())
            .unwrap_or(u64::MAX)
            .min(60_000);
        let instance = api
            .get(&format!("{}?wait_ms={wait_ms}", instance_path(instance_id)))
            .await?;
        let ended = matches!(
            instance["status"].as_str(),
            Some("completed" | "faulted" | "cancelled")
        );
        if ended || left.is_zero() {
            return Ok(instance);
        }
    }
}

pub(crate) async fn run(api: &Api, command: WorkflowCommand) -> Result<(), Error> {
    match command {
        WorkflowCommand::Deploy { file } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|error| Error::File(format!("reading stdin: {error}")))?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|error| Error::File(format!("{file}: {error}")))?
            };
            let content_type = if text.trim_start().starts_with('{') {
                "application/json"
            } else {
                "application/yaml"
            };
            let deployed = api
                .post_raw("/v1/workflows", content_type, text.into_bytes())
                .await?;
            api.print(
                &deployed,
                &["namespace", "name", "version"],
                std::slice::from_ref(&deployed),
            );
            Ok(())
        }
        WorkflowCommand::List => {
            let listed = api.get("/v1/workflows").await?;
            let rows = listed["workflows"].as_array().cloned().unwrap_or_default();
            api.print(&listed, &["namespace", "name", "latest", "versions"], &rows);
            Ok(())
        }
        WorkflowCommand::Show { workflow } => {
            let (namespace, name, version) = split(&workflow)?;
            let mut path = format!(
                "/v1/workflows/{}/{}",
                Api::segment(namespace),
                Api::segment(name)
            );
            if let Some(version) = version {
                path.push_str(&format!("?version={}", Api::segment(version)));
            }
            super::print_json(&api.get(&path).await?);
            Ok(())
        }
        WorkflowCommand::Start {
            workflow,
            input,
            wait,
        } => {
            let (namespace, name, version) = split(&workflow)?;
            let input: Value = match input {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|error| Error::Usage(format!("--input is not JSON: {error}")))?,
                None => Value::Null,
            };
            let mut body = json!({"input": input});
            if let Some(version) = version {
                body["version"] = json!(version);
            }
            let mut instance = api
                .post(
                    &format!(
                        "/v1/workflows/{}/{}/instances",
                        Api::segment(namespace),
                        Api::segment(name)
                    ),
                    &body,
                )
                .await?;
            let id = instance["instance_id"].as_str().map(str::to_owned);
            if let (Some(seconds), Some(id)) = (wait, id) {
                instance = wait_for_end(api, &id, seconds).await?;
            }
            print_instance(api, &instance);
            Ok(())
        }
        WorkflowCommand::Instances {
            workflow,
            status,
            started_after,
            started_before,
            limit,
        } => {
            let mut query = format!("?limit={limit}");
            if let Some(workflow) = workflow {
                match workflow.split_once('/') {
                    Some((namespace, name)) => query.push_str(&format!(
                        "&namespace={}&name={}",
                        Api::segment(namespace),
                        Api::segment(name)
                    )),
                    None => query.push_str(&format!("&namespace={}", Api::segment(&workflow))),
                }
            }
            for (name, value) in [
                ("status", status),
                ("started_after", started_after),
                ("started_before", started_before),
            ] {
                if let Some(value) = value {
                    query.push_str(&format!("&{name}={}", Api::segment(&value)));
                }
            }
            let listed = api.get(&format!("/v1/workflow-instances{query}")).await?;
            let rows = listed["instances"].as_array().cloned().unwrap_or_default();
            api.print(&listed, INSTANCE_COLUMNS, &rows);
            Ok(())
        }
        WorkflowCommand::Get { instance_id, wait } => {
            let instance = match wait {
                Some(seconds) => wait_for_end(api, &instance_id, seconds).await?,
                None => api.get(&instance_path(&instance_id)).await?,
            };
            if api.output == super::Output::Json {
                super::print_json(&instance);
            } else {
                print_instance(api, &instance);
                for field in ["output", "error"] {
                    if !instance[field].is_null() {
                        super::emit(&format!("{field}: {}", instance[field]));
                    }
                }
            }
            Ok(())
        }
        WorkflowCommand::History { instance_id } => {
            let history = api
                .get(&format!("{}/history", instance_path(&instance_id)))
                .await?;
            let rows = history["steps"].as_array().cloned().unwrap_or_default();
            api.print(&history, STEP_COLUMNS, &rows);
            Ok(())
        }
        WorkflowCommand::Cancel { instance_id } => control(api, &instance_id, "cancel").await,
        WorkflowCommand::Suspend { instance_id } => control(api, &instance_id, "suspend").await,
        WorkflowCommand::Resume { instance_id } => control(api, &instance_id, "resume").await,
        WorkflowCommand::Retry { instance_id } => control(api, &instance_id, "retry").await,
        WorkflowCommand::Rerun { instance_id } => control(api, &instance_id, "rerun").await,
    }
}

async fn control(api: &Api, instance_id: &str, action: &str) -> Result<(), Error> {
    let instance = api
        .post(
            &format!("{}/{action}", instance_path(instance_id)),
            &json!({}),
        )
        .await?;
    print_instance(api, &instance);
    Ok(())
}
