//! The client subcommands of `herald`: they talk to a running server over
//! its REST API (`--server`, else `HERALD_SERVER`, else the context's
//! server — see [`context`] — else `http://127.0.0.1:7800`). An
//! `https://` server is verified against the system's roots, or only
//! against `--ca-cert` (`HERALD_CA_CERT`); `--client-cert`/`--client-key`
//! present a client certificate (mTLS).
//!
//! Output is a human table by default, `--output json` for scripts. Exit
//! codes scripts can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the server refused the request (the problem's `code` and `detail` are printed) |
//! | 2 | bad command line |
//! | 3 | the server could not be reached (for `tail`: not even after its retries) |
//! | 4 | a local file could not be read (or the contexts file) |
//! | 5 | the server answered something that is not Herald's API (not JSON, not SSE) |

mod auth;
mod blob;
mod consume;
mod context;
mod group;
mod job;
mod lineage;
mod publish;
mod sse;
mod tail;
mod topic;
mod webhook;
mod workflow;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

pub use auth::{AuthCommand, KeyCommand};
pub use blob::BlobCommand;
pub use consume::ConsumeArgs;
pub use context::{ContextCommand, Settings};
pub use group::GroupCommand;
pub use job::JobCommand;
pub use lineage::LineageArgs;
pub use publish::PublishArgs;
pub use tail::TailArgs;
pub use topic::TopicCommand;
pub use webhook::{EndpointCommand, WebhookCommand};
pub use workflow::WorkflowCommand;

/// Where the server is and how to print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    // The `HERALD_*` variables are read by `Settings::resolve`, not by clap:
    // `herald context add` saves what the flags say, never the environment.
    /// The server's base URL [env: HERALD_SERVER] [default: the context's
    /// server, else http://127.0.0.1:7800] (client subcommands)
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,

    /// Use this saved context (`herald context list`) [env: HERALD_CONTEXT]
    /// [default: the selected one] (client subcommands)
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,

    /// Credentials: an API key (`hrd_…`) or a JWT, sent as `Authorization:
    /// Bearer` [env: HERALD_TOKEN] (client subcommands)
    #[arg(long, global = true)]
    pub token: Option<String>,

    /// How to print results (client subcommands)
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,

    /// CA certificates (PEM) to trust for an https:// server, instead of
    /// the system's roots [env: HERALD_CA_CERT] (client subcommands)
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// Client certificate chain (PEM) for a server that asks for one (mTLS;
    /// with --client-key) [env: HERALD_CLIENT_CERT]
    #[arg(long, value_name = "FILE", global = true, requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// The private key (PEM) of --client-cert [env: HERALD_CLIENT_KEY]
    #[arg(long, value_name = "FILE", global = true, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// The exit codes of the client subcommands, for `--help` (keep in step
/// with [`Error::exit_code`] and the module docs).
pub const EXIT_CODES: &str = "\
Exit codes (client subcommands):
  0  done
  1  the server refused the request (its problem code and detail are printed)
  2  bad command line (or an unknown --context)
  3  the server could not be reached (tail: not even after --retries)
  4  a local file could not be read (or the contexts file)
  5  the server answered something that is not Herald's API";

/// The environment variables the client subcommands read: `herald serve`
/// ignores them, so that a shell set up for the CLI can still start a
/// server (its own `HERALD_*` variables are configuration keys).
pub const CLIENT_ENV: &[&str] = &[
    "HERALD_SERVER",
    "HERALD_CONTEXT",
    "HERALD_TOKEN",
    "HERALD_CA_CERT",
    "HERALD_CLIENT_CERT",
    "HERALD_CLIENT_KEY",
];

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The server's JSON, one document per result.
    Json,
}

/// A client subcommand.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe, update and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Publish one event from flags, or many from an NDJSON file or stdin.
    Publish(PublishArgs),
    /// Follow a topic over SSE, with filters; resumes where it left off after a cut.
    Tail(TailArgs),
    /// Join a consumer group and print (and ack) what it delivers.
    Consume(ConsumeArgs),
    /// Inspect and steer consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Submit jobs and follow them.
    #[command(subcommand)]
    Job(JobCommand),
    /// Upload and download blobs.
    #[command(subcommand)]
    Blob(BlobCommand),
    /// What one event caused (events, deliveries, jobs, workflow steps,
    /// webhook attempts), drawn as a tree.
    Lineage(LineageArgs),
    /// API keys and the caller's identity.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Webhook endpoints, their attempts, redelivery and recovery.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Workflow definitions and instances: deploy, start, inspect, cancel.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Named servers and their credentials (`--context`, HERALD_CONTEXT).
    #[command(subcommand)]
    Context(ContextCommand),
}

/// Why a client command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a problem.
    #[error("{code}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem's stable code.
        code: String,
        /// What to fix.
        detail: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached.
    #[error("{0}")]
    Connection(String),
    /// A local file.
    #[error("{0}")]
    File(String),
    /// The server answered something that is not Herald's API.
    #[error("{0}")]
    Protocol(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Problem { .. } => 1,
            Self::Usage(_) => 2,
            Self::Connection(_) => 3,
            Self::File(_) => 4,
            Self::Protocol(_) => 5,
        })
    }
}

/// Runs a client command to completion.
pub fn run(client: &ClientArgs, command: ClientCommand) -> Result<(), Error> {
    let command = match command {
        ClientCommand::Context(command) => return context::run(client, command),
        command => command,
    };
    let env = |name: &str| std::env::var(name).ok();
    let settings = Settings::resolve(client, &env)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::Connection(format!("cannot start the async runtime: {error}")))?;
    let api = Api::new(&settings, client.output)?;
    runtime.block_on(async {
        match command {
            ClientCommand::Topic(command) => topic::run(&api, command).await,
            ClientCommand::Publish(args) => publish::run(&api, args).await,
            ClientCommand::Tail(args) => tail::run(&api, args).await,
            ClientCommand::Consume(args) => consume::run(&api, args).await,
            ClientCommand::Group(command) => group::run(&api, command).await,
            ClientCommand::Job(command) => job::run(&api, command).await,
            ClientCommand::Blob(command) => blob::run(&api, command).await,
            ClientCommand::Lineage(args) => lineage::run(&api, args).await,
            ClientCommand::Auth(command) => auth::run(&api, command).await,
            ClientCommand::Webhook(command) => webhook::run(&api, command).await,
            ClientCommand::Workflow(command) => workflow::run(&api, command).await,
            ClientCommand::Context(_) => Ok(()),
        }
    })
}

/// A thin REST client: JSON in, JSON out, problems as [`Error::Problem`].
#[derive(Debug, Clone)]
pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
    /// Whether a client certificate is presented (for error hints).
    client_identity: bool,
    pub(crate) output: Output,
}

impl Api {
    fn new(client: &Settings, output: Output) -> Result<Self, Error> {
        let base = client.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!(
                "--server {base:?} must start with http:// or https://"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = client.token.as_deref().filter(|token| !token.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Usage("--token has characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder();
        if let Some(path) = &client.ca_cert {
            let certs = reqwest::Certificate::from_pem_bundle(&read_file("--ca-cert", path)?)
                .map_err(|error| bad_pem("--ca-cert", path, &error))?;
            http = http.tls_certs_only(certs);
        }
        if let (Some(cert), Some(key)) = (&client.client_cert, &client.client_key) {
            let mut pem = read_file("--client-cert", cert)?;
            pem.push(b'\n');
            pem.extend(read_file("--client-key", key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|error| bad_pem("--client-cert/--client-key", cert, &error))?;
            http = http.identity(identity);
        }
        let http = http
            .default_headers(headers)
            .build()
            .map_err(|error| Error::Connection(format!("cannot build the HTTP client: {error}")))?;
        Ok(Self {
            base,
            http,
            client_identity: client.client_cert.is_some(),
            output,
        })
    }

    /// A path segment, percent-encoded.
    pub(crate) fn segment(value: &str) -> String {
        let mut encoded = String::with_capacity(value.len());
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                encoded.push(char::from(byte));
            } else {
                let _ = write!(encoded, "%{byte:02X}");
            }
        }
        encoded
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value, Error> {
        self.send(self.http.get(self.url(path))).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub(crate) async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value, Error> {
        self.post_body(path, content_type, body.into()).await
    }

    pub(crate) async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<Value, Error> {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    pub(crate) async fn patch(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send(self.http.patch(self.url(path)).json(body)).await
    }

    /// Opens an SSE stream; an answer that is not one is [`Error::Protocol`].
    pub(crate) async fn sse(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let response = self.stream(path, query, last_event_id).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("text/event-stream") {
            Ok(response)
        } else {
            Err(Error::Protocol(format!(
                "{} answered a stream request with {content_type:?}, not text/event-stream",
                self.base
            )))
        }
    }

    /// Opens a streaming GET (SSE); a problem answer becomes [`Error::Problem`].
    pub(crate) async fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let query: Vec<String> = query
            .iter()
            .map(|(name, value)| format!("{name}={}", Self::segment(value)))
            .collect();
        let url = format!("{}?{}", self.url(path), query.join("&"));
        let mut request = self.http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        match self.answer(response).await {
            Err(error) => Err(error),
            Ok(_) => Err(Error::Protocol(format!(
                "{} answered {status} to a stream request",
                self.base
            ))),
        }
    }

    pub(crate) async fn delete(&self, path: &str) -> Result<Value, Error> {
        self.send(self.http.delete(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Error> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        self.answer(response).await
    }

    /// A request that got no answer, with a hint where TLS is the likely
    /// reason: a server certificate from a CA the client does not trust,
    /// or a server that requires a client certificate (TLS 1.3 reports that
    /// as a `CertificateRequired` alert or, when the server's close wins the
    /// race, only as a closed connection: closed, reset, or a broken pipe
    /// when the request was being written).
    fn unreachable(&self, error: &reqwest::Error) -> Error {
        const CLOSED: [&str; 4] = [
            "certificaterequired",
            "connection closed",
            "connection reset",
            "broken pipe",
        ];
        let cause = root_cause(error);
        let lower = cause.to_lowercase();
        let hint = if cause.contains("invalid peer certificate") {
            " (trust the server's CA with --ca-cert or HERALD_CA_CERT)"
        } else if self.base.starts_with("https://")
            && !self.client_identity
            && CLOSED.iter().any(|closed| lower.contains(closed))
        {
            " (if the server requires client certificates: --client-cert and --client-key)"
        } else {
            ""
        };
        Error::Connection(format!("cannot reach {}: {cause}{hint}", self.base))
    }

    /// The JSON of a success, or the problem of a failure.
    async fn answer(&self, response: reqwest::Response) -> Result<Value, Error> {
        let status = response.status();
        let bytes = response.bytes().await.map_err(|error| {
            Error::Connection(format!("reading the answer from {}: {error}", self.base))
        })?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                Error::Protocol(format!(
                    "{} answered {status} with something that is not JSON",
                    self.base
                ))
            })?
        };
        if status.is_success() {
            return Ok(body);
        }
        let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
        Err(Error::Problem {
            status: status.as_u16(),
            code: text("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            detail: text("detail")
                .or_else(|| text("title"))
                .unwrap_or_else(|| status.to_string()),
        })
    }

    /// Prints `value` as JSON, or as a table of `columns` over `rows`.
    pub(crate) fn print(&self, value: &Value, columns: &[&str], rows: &[Value]) {
        match self.output {
            Output::Json => print_json(value),
            Output::Table => print_table(columns, rows),
        }
    }
}

/// The error an SSE `event: error` frame carries: a problem (`{code,
/// detail}`) when it is one, else the text as the server's complaint.
/// Worth reconnecting for: no answer, or a server that is (re)starting or
/// stopping (502–504, `unavailable` included).
pub(crate) fn retryable(error: &Error) -> bool {
    match error {
        Error::Connection(_) => true,
        Error::Problem { status, .. } => matches!(status, 502..=504),
        _ => false,
    }
}

pub(crate) fn stream_error(data: &str) -> Error {
    let problem: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let text = |field: &str| {
        problem
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match text("code") {
        Some(code) => Error::Problem {
            status: problem
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|status| u16::try_from(status).ok())
                .unwrap_or(500),
            code,
            detail: text("detail").or_else(|| text("title")).unwrap_or_default(),
        },
        None => Error::Problem {
            status: 500,
            code: "stream_error".into(),
            detail: data.to_owned(),
        },
    }
}

/// The bytes of a file a flag names.
fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|error| Error::File(format!("cannot read {flag} {}: {error}", path.display())))
}

fn bad_pem(flag: &str, path: &Path, error: &reqwest::Error) -> Error {
    Error::File(format!(
        "{flag} {}: not usable PEM: {}",
        path.display(),
        root_cause(error)
    ))
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// One JSON document on stdout.
pub(crate) fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    emit(&text);
}

/// Writes a line to stdout, ignoring a closed pipe (`herald … | head`).
pub(crate) fn emit(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

/// A cell: strings bare, `null` as `-`, anything else as compact JSON.
pub(crate) fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// Aligned columns; each row is an object, each column a field path with
/// `.` for nesting.
pub(crate) fn print_table(columns: &[&str], rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|column| cell(lookup(row, column)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            cells
                .iter()
                .map(|row| row[index].chars().count())
                .chain([column.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    emit(&line(
        columns.iter().map(|column| column.to_uppercase()).collect(),
    ));
    for row in cells {
        emit(&line(row));
    }
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |value, field| value.get(field))
}
