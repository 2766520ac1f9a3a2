//! API keys and the caller's identity: `POST`, `GET /v1/auth/keys`,
//! `PATCH`, `DELETE /v1/auth/keys/{key_id}`,
//! `POST /v1/auth/keys/{key_id}/rotate` (all `admin`), and
//! `GET /v1/auth/whoami` (anyone). The key store is
//! [`crate::auth::keys`]; a key's secret (`key`) is in the answers of
//! create and rotate only, and is never stored.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use herald_backend::Expect;
use herald_types::{format_rfc3339_ms, parse_rfc3339_ms};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{JsonBody, NoQuery, from_value};
use crate::auth::Caller;
use crate::auth::keys::{self, KeyRecord};
use crate::auth::limits::{LimitOverrides, Limits};
use crate::auth::permissions::Permission;
use crate::problem::{Code, Problem};

/// `POST /v1/auth/keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for people (1 to 200 characters).
    name: String,
    /// What the key may do.
    permissions: Vec<Permission>,
    /// When the key stops working, RFC 3339; never when absent.
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Rate limits and quotas that differ from the server's `[auth.limits]`.
    #[serde(default)]
    limits: LimitOverrides,
}

/// `PATCH /v1/auth/keys/{key_id}`: what to change; absent fields stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// A new name.
    #[serde(default)]
    name: Option<String>,
    /// New permissions (replacing the old ones).
    #[serde(default)]
    permissions: Option<Vec<Permission>>,
    /// Limits to set (merged field by field into the key's).
    #[serde(default)]
    limits: Option<LimitOverrides>,
}

/// `POST /v1/auth/keys/{key_id}/rotate`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old secret keeps working, in ms (0, the default: it
    /// stops at once).
    #[serde(default)]
    overlap_ms: u64,
}

/// A new secret: shown only in this answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeySecret {
    /// The API key (`hrd_…`): send it as `Authorization: Bearer <key>`. It
    /// is not stored and cannot be shown again.
    key: String,
    /// The key as stored.
    #[serde(flatten)]
    view: KeyView,
}

/// A key as listed (never its secret or hash). `limits` are the key's own
/// (unset fields follow the server's `[auth.limits]`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    key_id: String,
    name: String,
    permissions: Vec<Permission>,
    limits: LimitOverrides,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

impl From<&KeyRecord> for KeyView {
    fn from(record: &KeyRecord) -> Self {
        Self {
            key_id: record.key_id.clone(),
            name: record.name.clone(),
            permissions: record.permissions.clone(),
            limits: record.limits,
            created_at: format_rfc3339_ms(record.created_at),
            last_used_at: record.last_used_at.map(format_rfc3339_ms),
            expires_at: record.expires_at.map(format_rfc3339_ms),
        }
    }
}

/// `GET /v1/auth/keys`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

/// `GET /v1/auth/whoami`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// `anonymous` (auth off), `bootstrap`, `key:<key id>`, `jwt:<sub>` or
    /// `cert:<name>`.
    identity: String,
    /// What it may do.
    permissions: Vec<Permission>,
    /// Its effective rate limits and quotas (0: unlimited).
    limits: Limits,
}

/// `POST /v1/auth/keys` → 201 `{key_id, key, …}`; the key is shown only here.
#[utoipa::path(
    post, path = "/v1/auth/keys", tag = "auth",
    request_body(content = CreateKey, description = "The key's name, permissions, optional expiry and limits."),
    responses((status = 201, description = "Created; `key` is shown only here.", body = KeySecret,
        headers(("Location" = String, description = "The key's URL."))))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    _query: NoQuery,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, Problem> {
    let request: CreateKey = from_value(body)?;
    check_name(&request.name)?;
    check_permissions(&request.permissions)?;
    let expires_at = request
        .expires_at
        .as_deref()
        .map(|text| parse_rfc3339_ms(text).map_err(|error| invalid("expires_at", error)))
        .transpose()?;
    let kv = state.auth.kv()?;
    let key_id = keys::new_key_id()?;
    let secret = keys::new_secret(&key_id)?;
    let record = KeyRecord {
        key_id: key_id.clone(),
        name: request.name,
        permissions: request.permissions,
        limits: request.limits,
        created_at: state.auth.now_ms(),
        last_used_at: None,
        expires_at,
        hash: secret.hash,
        previous_hash: None,
        previous_until: None,
    };
    state
        .auth
        .keys()
        .write(&*kv, record.clone(), Expect::Absent)
        .await?;
    caller
        .audit(
            "key.created",
            Some(crate::auth::permissions::Action::Admin),
            &key_id,
            serde_json::json!({"name": record.name, "permissions": record.permissions}),
        )
        .await;
    let location = format!("/v1/auth/keys/{key_id}");
    let answer = KeySecret {
        key: secret.token,
        view: KeyView::from(&record),
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(answer),
    )
        .into_response())
}

/// `GET /v1/auth/keys` → 200 `{keys: [...]}` (never the secrets).
#[utoipa::path(
    get, path = "/v1/auth/keys", tag = "auth",
    responses((status = 200, description = "Every key.", body = KeyList))
)]
pub async fn list(
    State(state): State<AppState>,
    _query: NoQuery,
) -> Result<Json<KeyList>, Problem> {
    let kv = state.auth.kv()?;
    let records = state.auth.keys().list(&*kv).await?;
    Ok(Json(KeyList {
        keys: records.iter().map(KeyView::from).collect(),
    }))
}

/// `PATCH /v1/auth/keys/{key_id}` → 200 the key; effective at once (limits
/// included: this is how limits change without a restart).
#[utoipa::path(
    patch, path = "/v1/auth/keys/{key_id}", tag = "auth",
    params(("key_id" = String, Path, description = "The key.")),
    request_body(content = UpdateKey, description = "What to change."),
    responses((status = 200, description = "The changed key.", body = KeyView))
)]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key_id): Path<String>,
    _query: NoQuery,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<KeyView>, Problem> {
    let request: UpdateKey = from_value(body)?;
    if let Some(name) = &request.name {
        check_name(name)?;
    }
    if let Some(permissions) = &request.permissions {
        check_permissions(permissions)?;
    }
    let record = change(&state, &key_id, |record| {
        if let Some(name) = &request.name {
            record.name.clone_from(name);
        }
        if let Some(permissions) = &request.permissions {
            record.permissions.clone_from(permissions);
        }
        if let Some(limits) = &request.limits {
            record.limits = record.limits.merged(limits);
        }
        Ok(())
    })
    .await?;
    caller
        .audit(
            "key.updated",
            Some(crate::auth::permissions::Action::Admin),
            &key_id,
            serde_json::json!({"permissions": record.permissions, "limits": record.limits}),
        )
        .await;
    Ok(Json(KeyView::from(&record)))
}

/// `DELETE /v1/auth/keys/{key_id}` → 204; the key stops working at once.
#[utoipa::path(
    delete, path = "/v1/auth/keys/{key_id}", tag = "auth",
    params(("key_id" = String, Path, description = "The key.")),
    responses((status = 204, description = "Revoked."))
)]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key_id): Path<String>,
    _query: NoQuery,
) -> Result<StatusCode, Problem> {
    let kv = state.auth.kv()?;
    if !state.auth.keys().delete(&*kv, &key_id).await? {
        return Err(key_not_found(&key_id));
    }
    caller
        .audit(
            "key.revoked",
            Some(crate::auth::permissions::Action::Admin),
            &key_id,
            serde_json::Value::Null,
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/keys/{key_id}/rotate` → 200 `{key_id, key}`: a new
/// secret, same id and permissions; the old one works `overlap_ms` more.
#[utoipa::path(
    post, path = "/v1/auth/keys/{key_id}/rotate", tag = "auth",
    params(("key_id" = String, Path, description = "The key.")),
    request_body(content = RotateKey, description = "How long the old secret keeps working (default 0)."),
    responses((status = 200, description = "The new secret, shown only here.", body = KeySecret))
)]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key_id): Path<String>,
    _query: NoQuery,
    body: axum::body::Bytes,
) -> Result<Json<KeySecret>, Problem> {
    let request: RotateKey = if body.is_empty() {
        RotateKey::default()
    } else {
        let value = serde_json::from_slice(&body)
            .map_err(|error| Problem::new(Code::MalformedJson, error.to_string()))?;
        from_value(value)?
    };
    let overlap = i64::try_from(request.overlap_ms).unwrap_or(i64::MAX);
    let secret = keys::new_secret(&key_id)?;
    let now = state.auth.now_ms();
    let hash = secret.hash.clone();
    let record = change(&state, &key_id, |record| {
        let previous = std::mem::replace(&mut record.hash, hash.clone());
        (record.previous_hash, record.previous_until) = if overlap > 0 {
            (Some(previous), Some(now.saturating_add(overlap)))
        } else {
            (None, None)
        };
        Ok(())
    })
    .await?;
    caller
        .audit(
            "key.rotated",
            Some(crate::auth::permissions::Action::Admin),
            &key_id,
            serde_json::json!({"overlap_ms": request.overlap_ms}),
        )
        .await;
    Ok(Json(KeySecret {
        key: secret.token,
        view: KeyView::from(&record),
    }))
}

/// `GET /v1/auth/whoami` → 200 `{identity, permissions, limits}`.
#[utoipa::path(
    get, path = "/v1/auth/whoami", tag = "auth",
    responses((status = 200, description = "The caller's identity.", body = WhoAmI))
)]
pub async fn whoami(Extension(caller): Extension<Caller>, _query: NoQuery) -> Json<WhoAmI> {
    Json(WhoAmI {
        identity: caller.principal.id.clone(),
        permissions: caller.principal.permissions.clone(),
        limits: caller.principal.limits(),
    })
}

/// Applies `edit` to the stored record by compare-and-set, retrying on a
/// concurrent change.
async fn change(
    state: &AppState,
    key_id: &str,
    edit: impl Fn(&mut KeyRecord) -> Result<(), Problem>,
) -> Result<KeyRecord, Problem> {
    let kv = state.auth.kv()?;
    let store = state.auth.keys();
    loop {
        let Some((mut record, revision)) = store.read(&*kv, key_id).await? else {
            return Err(key_not_found(key_id));
        };
        edit(&mut record)?;
        match store
            .write(&*kv, record.clone(), Expect::Revision(revision))
            .await
        {
            Ok(_) => return Ok(record),
            Err(keys::Error::Backend(herald_backend::Error::RevisionMismatch { .. })) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

fn check_name(name: &str) -> Result<(), Problem> {
    if name.is_empty() || name.chars().count() > 200 {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    Ok(())
}

fn check_permissions(permissions: &[Permission]) -> Result<(), Problem> {
    for (index, permission) in permissions.iter().enumerate() {
        permission
            .check()
            .map_err(|error| invalid(&format!("permissions[{index}]"), error))?;
    }
    Ok(())
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Problem {
    Problem::new(Code::InvalidArgument, format!("{field}: {reason}"))
}

fn key_not_found(key_id: &str) -> Problem {
    Problem::new(Code::KeyNotFound, format!("no API key {key_id:?}"))
}
