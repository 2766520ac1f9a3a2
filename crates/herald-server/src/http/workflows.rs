//! Workflow definitions (`herald-workflows` behind HTTP): deploy, list,
//! show. Deploying needs `workflows:manage`, reading `workflows:run` or
//! `workflows:manage` (the permission table).
//!
//! | method and path | body / query | answer |
//! |---|---|---|
//! | `POST /v1/workflows` | a DSL 1.0 document, `application/yaml` or `application/json` | 201 `{namespace, name, version}`; 400 `invalid_workflow` with `path`; 409 `workflow_version_exists` |
//! | `GET /v1/workflows` | | 200 `{workflows: [{namespace, name, versions, latest}]}` |
//! | `GET /v1/workflows/{namespace}/{name}` | `version` (default: the latest) | 200 `{namespace, name, versions, definition}`; 404 `workflow_not_found` |

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_types::format_rfc3339_ms;
use herald_workflows::store::{Definitions, StoredDefinition};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{NoQuery, Query};
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

fn definitions(state: &AppState) -> Result<Definitions, Problem> {
    Ok(Definitions::new(state.shared_backend()?))
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
    let stored = definitions(&state)?
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
