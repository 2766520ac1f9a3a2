//! Workflow definitions (`herald-workflows` behind HTTP): deploy, list,
//! show. Deploying needs `workflows:manage`, reading `workflows:run` or
//! `workflows:manage` (the permission table).
//!
//! | method and path | body / query | answer |
//! |---|---|---|
//! | `POST /v1/workflows` | a DSL 1.0 document, `application/yaml` or `application/json` | 201 `{namespace, name, version}`; 400 `invalid_workflow` with `path`; 409 `workflow_version_exists` |
//! | `GET /v1/workflows` | | 200 `{workflows: [{namespace, name, versions, latest}]}` |
//! | `GET /v1/workflows/{namespace}/{name}` | `version` (default: the latest) | 200 `{namespace, name, versions, definition}`; 404 `workflow_not_found` |
//! | `POST /v1/workflows/{namespace}/{name}/instances` | `{input, version?}` | 201 instance, `Location` |
//! | `GET /v1/workflow-instances` | `namespace, name, status, started_after, started_before, limit, before` | 200 `{instances}`, newest first |
//! | `GET /v1/workflow-instances/{instance_id}` | `wait_ms` | 200 instance; 404 `workflow_instance_not_found` |
//! | `GET /v1/workflow-instances/{instance_id}/history` | `limit, from` | 200 `{steps}` |
//! | `POST /v1/workflow-instances/{instance_id}/cancel`, `/suspend`, `/resume`, `/retry` | | 200 instance; 409 `workflow_instance_ended` / `workflow_instance_conflict` |
//! | `POST /v1/workflow-instances/{instance_id}/rerun` | | 201 a new instance of the same version and input, `Location` |
//! | `GET /v1/workflow-instances/{instance_id}/events` (SSE), `/ws` (WebSocket) | `Last-Event-ID` / `from` | its history records as they are written, until its end |

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_types::format_rfc3339_ms;
use herald_workflows::history::Record;
use herald_workflows::store::{Definitions, StoredDefinition};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{JsonBody, NoQuery, Query};
use crate::problem::{Code, Problem};

/// What a deploy answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deployed {
    /// `document.namespace`.
    pub namespace: String,
    /// `document.name`.
    pub name: String,
    /// `document.version`.
    pub version: String,
}

/// One deployed workflow in a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowSummary {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its versions, oldest first (semantic-version order where they are
    /// dotted numbers).
    pub versions: Vec<String>,
    /// The newest version.
    pub latest: String,
}

/// `GET /v1/workflows`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowList {
    /// Every deployed workflow, by namespace and name.
    pub workflows: Vec<WorkflowSummary>,
}

/// A deployed definition.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DefinitionView {
    /// Its version.
    pub version: String,
    /// When it was deployed (RFC 3339).
    #[schema(format = DateTime)]
    pub deployed_at: String,
    /// The document, as JSON.
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
}

/// `GET /v1/workflows/{namespace}/{name}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowView {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its versions, oldest first.
    pub versions: Vec<String>,
    /// The version asked for (default: the latest).
    pub definition: DefinitionView,
}

/// `GET /v1/workflows/{namespace}/{name}` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// The version to show (default: the latest).
    #[serde(default)]
    pub version: Option<String>,
}

/// The engine's definitions store.
fn definitions(state: &AppState) -> Result<&Definitions, Problem> {
    Ok(state.workflows.get()?.definitions())
}

/// The body must be YAML or JSON (by its `Content-Type`).
fn check_media_type(headers: &HeaderMap) -> Result<(), Problem> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match media.as_deref() {
        Some("application/yaml" | "application/x-yaml" | "text/yaml" | "application/json") => {
            Ok(())
        }
        _ => Err(Problem::new(
            Code::UnsupportedMediaType,
            "A workflow definition is sent as application/yaml or application/json.",
        )),
    }
}

/// `POST /v1/workflows` → 201.
#[utoipa::path(
    post, path = "/v1/workflows", tag = "workflows",
    request_body(content(
        (String = "application/yaml"),
        (Object = "application/json"),
    ), description = "A Serverless Workflow DSL 1.0 document."),
    responses(
        (status = 201, description = "Deployed: this version is now fixed.", body = Deployed,
         headers(("Location" = String, description = "The workflow's URL."))),
    )
)]
pub async fn deploy(
    State(state): State<AppState>,
    headers: HeaderMap,
    _query: NoQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    check_media_type(&headers)?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        Problem::new(Code::InvalidWorkflow, "The definition is not UTF-8 text.")
            .with("path", serde_json::Value::String(String::new()))
    })?;
    let now = state.clock.now_ms();
    // Through the engine: a new latest version's `schedule.on` takes over.
    let stored = state
        .workflows
        .get()?
        .deploy(text, format_rfc3339_ms(now))
        .await?;
    let location = format!("/v1/workflows/{}/{}", stored.namespace, stored.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Deployed {
            namespace: stored.namespace,
            name: stored.name,
            version: stored.version,
        }),
    )
        .into_response())
}

/// `GET /v1/workflows` → 200.
#[utoipa::path(
    get, path = "/v1/workflows", tag = "workflows",
    responses((status = 200, description = "Every deployed workflow with its versions.", body = WorkflowList))
)]
pub async fn list(
    State(state): State<AppState>,
    _query: NoQuery,
) -> Result<Json<WorkflowList>, Problem> {
    let workflows = definitions(&state)?
        .list()
        .await?
        .into_iter()
        .map(|(namespace, name, versions)| WorkflowSummary {
            latest: versions.last().cloned().unwrap_or_default(),
            namespace,
            name,
            versions,
        })
        .collect();
    Ok(Json(WorkflowList { workflows }))
}

/// `GET /v1/workflows/{namespace}/{name}` → 200.
#[utoipa::path(
    get, path = "/v1/workflows/{namespace}/{name}", tag = "workflows",
    params(
        ("namespace" = String, Path, description = "`document.namespace`."),
        ("name" = String, Path, description = "`document.name`."),
        ShowQuery,
    ),
    responses((status = 200, description = "Its versions and one definition.", body = WorkflowView))
)]
pub async fn show(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<ShowQuery>,
) -> Result<Json<WorkflowView>, Problem> {
    let definitions = definitions(&state)?;
    let versions = definitions.versions(&namespace, &name).await?;
    let stored: StoredDefinition = match &query.version {
        Some(version) => definitions.get(&namespace, &name, version).await?,
        None => definitions.latest(&namespace, &name).await?,
    };
    Ok(Json(WorkflowView {
        namespace,
        name,
        versions,
        definition: DefinitionView {
            version: stored.version,
            deployed_at: stored.deployed_at,
            document: stored.source,
        },
    }))
}

// ---- instances ------------------------------------------------------------

/// `POST /v1/workflows/{namespace}/{name}/instances` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The workflow's input (`$workflow.input`); `null` when absent.
    #[serde(default)]
    pub input: serde_json::Value,
    /// The version to run (default: the latest). The instance keeps it.
    #[serde(default)]
    pub version: Option<String>,
}

/// An instance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceBody {
    /// Its id.
    pub instance_id: String,
    /// Its definition's namespace.
    pub namespace: String,
    /// Its definition's name.
    pub name: String,
    /// The version it runs, for its whole life.
    pub version: String,
    /// `pending`, `running`, `waiting`, `suspended`, `completed`, `faulted` or `cancelled`.
    #[schema(value_type = String)]
    pub status: herald_workflows::Status,
    /// Its input.
    pub input: serde_json::Value,
    /// Its output, once completed.
    pub output: Option<serde_json::Value>,
    /// Its error, once faulted: a problem (`type`, `status`, `title`,
    /// `detail`, `instance`: the JSON Pointer of the faulting task).
    #[schema(value_type = Option<Object>)]
    pub error: Option<herald_workflows::WorkflowError>,
    /// When it started (RFC 3339).
    #[schema(format = DateTime)]
    pub started_at: String,
    /// When it ended (RFC 3339).
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
}

impl From<herald_workflows::InstanceView> for InstanceBody {
    fn from(view: herald_workflows::InstanceView) -> Self {
        Self {
            instance_id: view.instance_id,
            namespace: view.namespace,
            name: view.name,
            version: view.version,
            status: view.status,
            input: view.input,
            output: view.output,
            error: view.error,
            started_at: view.started_at,
            ended_at: view.ended_at,
        }
    }
}

/// `GET /v1/workflow-instances`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceList {
    /// Newest first.
    pub instances: Vec<InstanceBody>,
}

/// `GET /v1/workflow-instances` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only this workflow name.
    #[serde(default)]
    pub name: Option<String>,
    /// Only this status.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub status: Option<herald_workflows::Status>,
    /// At most this many (1 to 1,000; default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only instances older than this one (the last id of a page).
    #[serde(default)]
    pub before: Option<String>,
    /// Only instances started at or after this time (RFC 3339).
    #[serde(default)]
    pub started_after: Option<String>,
    /// Only instances started before this time (RFC 3339).
    #[serde(default)]
    pub started_before: Option<String>,
}

/// `GET /v1/workflow-instances/{instance_id}` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowInstanceQuery {
    /// Wait up to this long (at most 60,000 ms) for the instance to end.
    #[serde(default)]
    #[param(maximum = 60000)]
    pub wait_ms: Option<u64>,
}

/// `GET /v1/workflow-instances/{instance_id}/history` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// At most this many steps (1 to 10,000; default 1,000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
    /// Skip the steps before this index.
    #[serde(default)]
    pub from: Option<usize>,
}

/// One step of an instance: a task run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StepBody {
    /// The task's name.
    pub task: String,
    /// Its JSON Pointer in the definition (`/do/1/askAgent`).
    pub path: String,
    /// `running`, `completed` or `faulted`.
    pub status: String,
    /// Its input (after `input.from`).
    pub input: Option<serde_json::Value>,
    /// Its output.
    pub output: Option<serde_json::Value>,
    /// Its error.
    #[schema(value_type = Option<Object>)]
    pub error: Option<herald_workflows::WorkflowError>,
    /// Its attempt (a `try` that retries counts up).
    pub attempt: u32,
    /// When it started (RFC 3339).
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
}

/// `GET /v1/workflow-instances/{instance_id}/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryBody {
    /// Task runs in the order they began.
    pub steps: Vec<StepBody>,
}

const MAX_WAIT_MS: u64 = 60_000;

fn engine(state: &AppState) -> Result<&herald_workflows::Engine, Problem> {
    state.workflows.get()
}

/// `POST /v1/workflows/{namespace}/{name}/instances` → 201.
#[utoipa::path(
    post, path = "/v1/workflows/{namespace}/{name}/instances", tag = "workflows",
    params(
        ("namespace" = String, Path, description = "`document.namespace`."),
        ("name" = String, Path, description = "`document.name`."),
    ),
    request_body = StartRequest,
    responses(
        (status = 201, description = "Started.", body = InstanceBody,
         headers(("Location" = String, description = "The instance's URL."))),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    _query: NoQuery,
    JsonBody(request): JsonBody<StartRequest>,
) -> Result<Response, Problem> {
    let view = engine(&state)?
        .start_instance(&namespace, &name, request.version.as_deref(), request.input)
        .await?;
    let location = format!("/v1/workflow-instances/{}", view.instance_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(InstanceBody::from(view)),
    )
        .into_response())
}

/// `GET /v1/workflow-instances` → 200.
#[utoipa::path(
    get, path = "/v1/workflow-instances", tag = "workflows",
    params(ListQuery),
    responses((status = 200, description = "Instances, newest first.", body = InstanceList))
)]
pub async fn instances(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<InstanceList>, Problem> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(Code::InvalidArgument, "limit is 1 to 1,000."));
    }
    let time = |field: &str, value: Option<&str>| {
        value
            .map(|text| {
                herald_types::parse_rfc3339_ms(text).map_err(|error| {
                    Problem::new(Code::InvalidArgument, format!("{field}: {error}."))
                })
            })
            .transpose()
    };
    let filter = herald_workflows::ListFilter {
        started_after: time("started_after", query.started_after.as_deref())?,
        started_before: time("started_before", query.started_before.as_deref())?,
        namespace: query.namespace,
        name: query.name,
        status: query.status,
        before: query.before,
    };
    let instances = engine(&state)?
        .list(&filter, limit)
        .await?
        .into_iter()
        .map(InstanceBody::from)
        .collect();
    Ok(Json(InstanceList { instances }))
}

/// `GET /v1/workflow-instances/{instance_id}` → 200.
#[utoipa::path(
    get, path = "/v1/workflow-instances/{instance_id}", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance."), ShowInstanceQuery),
    responses((status = 200, description = "The instance (once ended, or after `wait_ms`).", body = InstanceBody))
)]
pub async fn instance(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    Query(query): Query<ShowInstanceQuery>,
) -> Result<Json<InstanceBody>, Problem> {
    let engine = engine(&state)?;
    let view = match query.wait_ms {
        Some(wait) if wait > MAX_WAIT_MS => {
            return Err(Problem::new(
                Code::InvalidArgument,
                format!("wait_ms is at most {MAX_WAIT_MS}."),
            ));
        }
        Some(wait) if wait > 0 => {
            tokio::select! {
                view = engine.wait(&instance_id, std::time::Duration::from_millis(wait)) => view?,
                () = state.stopping.cancelled() => engine.get(&instance_id).await?,
            }
        }
        _ => engine.get(&instance_id).await?,
    };
    Ok(Json(view.into()))
}

/// `GET /v1/workflow-instances/{instance_id}/history` → 200.
#[utoipa::path(
    get, path = "/v1/workflow-instances/{instance_id}/history", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance."), HistoryQuery),
    responses((status = 200, description = "Its task runs, step by step.", body = HistoryBody))
)]
pub async fn history(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryBody>, Problem> {
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(Problem::new(Code::InvalidArgument, "limit is 1 to 10,000."));
    }
    let steps = engine(&state)?
        .history(&instance_id)
        .await?
        .into_iter()
        .skip(query.from.unwrap_or(0))
        .take(limit)
        .map(|step| StepBody {
            task: step.task,
            path: step.path,
            status: step.status.to_owned(),
            input: step.input,
            output: step.output,
            error: step.error,
            attempt: step.attempt,
            started_at: step.started_at,
            ended_at: step.ended_at,
        })
        .collect();
    Ok(Json(HistoryBody { steps }))
}

/// `POST /v1/workflow-instances/{instance_id}/cancel` → 200.
#[utoipa::path(
    post, path = "/v1/workflow-instances/{instance_id}/cancel", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance.")),
    responses((status = 200, description = "Cancel asked: what it waits on stops, `catch`es that take the cancel run their `do` (compensation), and it ends `cancelled`.", body = InstanceBody))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    _query: NoQuery,
) -> Result<Json<InstanceBody>, Problem> {
    Ok(Json(engine(&state)?.cancel(&instance_id).await?.into()))
}

/// `POST /v1/workflow-instances/{instance_id}/suspend` → 200.
#[utoipa::path(
    post, path = "/v1/workflow-instances/{instance_id}/suspend", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance.")),
    responses((status = 200, description = "Suspend asked: it stops at its next task or wait; timers due meanwhile fire on resume.", body = InstanceBody))
)]
pub async fn suspend(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    _query: NoQuery,
) -> Result<Json<InstanceBody>, Problem> {
    Ok(Json(engine(&state)?.suspend(&instance_id).await?.into()))
}

/// `POST /v1/workflow-instances/{instance_id}/resume` → 200.
#[utoipa::path(
    post, path = "/v1/workflow-instances/{instance_id}/resume", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance.")),
    responses((status = 200, description = "Resumed from where it was suspended.", body = InstanceBody))
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    _query: NoQuery,
) -> Result<Json<InstanceBody>, Problem> {
    Ok(Json(engine(&state)?.resume(&instance_id).await?.into()))
}

/// `POST /v1/workflow-instances/{instance_id}/retry` → 200.
#[utoipa::path(
    post, path = "/v1/workflow-instances/{instance_id}/retry", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance.")),
    responses((status = 200, description = "A faulted instance runs again from the task that failed; what completed before it is not run again.", body = InstanceBody))
)]
pub async fn retry(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    _query: NoQuery,
) -> Result<Json<InstanceBody>, Problem> {
    Ok(Json(engine(&state)?.retry(&instance_id).await?.into()))
}

/// One event of `GET /v1/workflow-instances/{instance_id}/events`
/// (documentation only).
#[derive(Debug, utoipa::ToSchema)]
#[allow(
    dead_code,
    reason = "describes the SSE frames for OpenAPI; never built"
)]
pub struct InstanceStreamEvent {
    /// The record's CloudEvents type: the DSL's lifecycle events
    /// (`io.serverlessworkflow.workflow.started.v1`,
    /// `io.serverlessworkflow.task.completed.v1`, …) or Herald's
    /// (`dev.herald.workflow.effect.v1`, `dev.herald.workflow.timer.v1`, …).
    pub event: String,
    /// The record's version in the history: send it back as
    /// `Last-Event-ID` to resume after it.
    pub id: String,
    /// The record, as JSON text (`kind` names it).
    pub data: String,
}

/// `GET /v1/workflow-instances/{instance_id}/events` → SSE.
#[utoipa::path(
    get, path = "/v1/workflow-instances/{instance_id}/events", tag = "workflows",
    params(
        ("instance_id" = String, Path, description = "The instance."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this record's version."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: the instance's history records from the first (or after `Last-Event-ID`), then each as it is written; the stream ends after the instance's end (`…workflow.completed.v1`, `…faulted.v1` or `…cancelled.v1`).",
         content_type = "text/event-stream", body = InstanceStreamEvent),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    headers: HeaderMap,
    _query: NoQuery,
) -> Result<Response, Problem> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;

    let engine = engine(&state)?.clone();
    let from = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(|version| version + 1)
            .ok_or_else(|| {
                Problem::new(
                    Code::InvalidArgument,
                    "Last-Event-ID is the version of a record (a number).",
                )
            })?,
    };
    // Unknown instances are refused before the stream starts.
    engine.get(&instance_id).await?;
    let stream = follow(engine, instance_id, from)
        .map(|item| {
            Ok::<_, std::convert::Infallible>(match item {
                Ok((version, record)) => Event::default()
                    .event(record.event_type())
                    .id(version.to_string())
                    .json_data(&record)
                    .unwrap_or_else(|error| {
                        Event::default().event("error").data(error.to_string())
                    }),
                Err(problem) => Event::default()
                    .event("error")
                    .data(serde_json::to_string(&problem).unwrap_or_default()),
            })
        })
        .take_until(state.stopping.clone().cancelled_owned());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// An instance's history records from version `from`, then each as it is
/// written, ending after the instance's end (or after an error).
fn follow(
    engine: herald_workflows::Engine,
    id: String,
    from: u64,
) -> impl futures::Stream<Item = Result<(u64, Record), Problem>> + Send {
    use futures::StreamExt as _;
    futures::stream::unfold(
        (engine, id, from, false),
        |(engine, id, from, ended)| async move {
            if ended {
                return None;
            }
            let records = match engine
                .records(&id, from, std::time::Duration::from_secs(15))
                .await
            {
                Ok(records) => records,
                Err(error) => {
                    return Some((vec![Err(Problem::from(error))], (engine, id, from, true)));
                }
            };
            let mut next = from;
            let mut end = false;
            let items = records
                .into_iter()
                .map(|(version, record)| {
                    next = version + 1;
                    end |= matches!(
                        record,
                        Record::Completed { .. }
                            | Record::Faulted { .. }
                            | Record::Cancelled { .. }
                    );
                    Ok((version, record))
                })
                .collect::<Vec<_>>();
            Some((items, (engine, id, next, end)))
        },
    )
    .flat_map(futures::stream::iter)
}

/// `GET /v1/workflow-instances/{instance_id}/ws` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SocketQuery {
    /// The first record's version (default 0: from the start); an `id`
    /// received plus one resumes after it.
    #[serde(default)]
    pub from: Option<u64>,
}

/// `GET /v1/workflow-instances/{instance_id}/ws` → WebSocket.
#[utoipa::path(
    get, path = "/v1/workflow-instances/{instance_id}/ws", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance."), SocketQuery),
    responses(
        (status = 101, description = "Switching Protocols to a WebSocket: one JSON text message per history record, `{\"id\": <version>, \"event\": \"<CloudEvents type>\", \"record\": {…}}`, as the SSE stream sends them; the socket closes after the instance's end, or after `{\"error\": problem}`."),
    )
)]
pub async fn socket(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    Query(query): Query<SocketQuery>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, Problem> {
    use axum::extract::ws::Message;
    use futures::{SinkExt as _, StreamExt as _};

    let engine = engine(&state)?.clone();
    let upgrade = super::push::limited(upgrade.map_err(super::push::upgrade_problem)?, &state);
    engine.get(&instance_id).await?;
    let stopping = state.stopping.clone();
    let from = query.from.unwrap_or(0);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let (mut sender, mut receiver) = socket.split();
        let mut records = Box::pin(follow(engine, instance_id, from));
        loop {
            tokio::select! {
                item = records.next() => {
                    let message = match item {
                        Some(Ok((version, record))) => serde_json::json!({
                            "id": version, "event": record.event_type(), "record": record,
                        }),
                        Some(Err(problem)) => serde_json::json!({"error": problem}),
                        None => {
                            let _ = sender.close().await;
                            return;
                        }
                    };
                    if sender.send(Message::text(message.to_string())).await.is_err() {
                        return;
                    }
                }
                incoming = receiver.next() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                () = stopping.cancelled() => {
                    let _ = sender.close().await;
                    return;
                }
            }
        }
    }))
}

/// `POST /v1/workflow-instances/{instance_id}/rerun` → 201.
#[utoipa::path(
    post, path = "/v1/workflow-instances/{instance_id}/rerun", tag = "workflows",
    params(("instance_id" = String, Path, description = "The instance to run again.")),
    responses(
        (status = 201, description = "A new instance of the same definition version, with the same input (the instance itself is left as it is).", body = InstanceBody,
         headers(("Location" = String, description = "The new instance's URL."))),
    )
)]
pub async fn rerun(
    State(state): State<AppState>,
    Path(instance_id): Path<String>,
    _query: NoQuery,
) -> Result<Response, Problem> {
    let view = engine(&state)?.rerun(&instance_id).await?;
    let location = format!("/v1/workflow-instances/{}", view.instance_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(InstanceBody::from(view)),
    )
        .into_response())
}
