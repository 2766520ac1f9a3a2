//! `herald auth …`: API keys (`admin`) and the caller's identity.

use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::{Api, Error};

/// Auth subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Show who the credentials (`--token` / HERALD_TOKEN) belong to.
    Whoami,
    /// Create, list, rotate and revoke API keys (needs `admin`).
    #[command(subcommand)]
    Key(KeyCommand),
}

/// API key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its secret is printed once, never again.
    Create {
        /// A name for people
        name: String,
        /// A permission: `ACTIONS=RESOURCES`, each a comma-separated list,
        /// e.g. `topics:publish,topics:read=orders.*` (repeatable)
        #[arg(long = "allow", value_name = "ACTIONS=RESOURCES", required = true)]
        allow: Vec<String>,
        /// When the key stops working (RFC 3339)
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
        /// This key's requests per second (0: unlimited)
        #[arg(long, value_name = "N")]
        requests_per_s: Option<u32>,
    },
    /// List keys (never their secrets).
    List,
    /// Give a key a new secret (same id and permissions); printed once.
    Rotate {
        /// The key's id
        key_id: String,
        /// How long the old secret keeps working
        #[arg(long, value_name = "MS", default_value_t = 0)]
        overlap_ms: u64,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key's id
        key_id: String,
    },
}

const KEY_COLUMNS: &[&str] = &["key_id", "name", "created_at", "last_used_at", "expires_at"];

pub(crate) async fn run(api: &Api, command: AuthCommand) -> Result<(), Error> {
    match command {
        AuthCommand::Whoami => {
            let me = api.get("/v1/auth/whoami").await?;
            api.print(&me, &["identity"], std::slice::from_ref(&me));
        }
        AuthCommand::Key(KeyCommand::Create {
            name,
            allow,
            expires_at,
            requests_per_s,
        }) => {
            let permissions = allow
                .iter()
                .map(|spec| permission(spec))
                .collect::<Result<Vec<_>, _>>()?;
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("permissions".into(), Value::Array(permissions));
            if let Some(expires_at) = expires_at {
                body.insert("expires_at".into(), json!(expires_at));
            }
            if let Some(rate) = requests_per_s {
                body.insert("limits".into(), json!({ "requests_per_s": rate }));
            }
            let created = api.post("/v1/auth/keys", &Value::Object(body)).await?;
            api.print(&created, &["key_id", "key"], std::slice::from_ref(&created));
        }
        AuthCommand::Key(KeyCommand::List) => {
            let listed = api.get("/v1/auth/keys").await?;
            let keys = listed
                .get("keys")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            api.print(&listed, KEY_COLUMNS, &keys);
        }
        AuthCommand::Key(KeyCommand::Rotate { key_id, overlap_ms }) => {
            let path = format!("/v1/auth/keys/{}/rotate", Api::segment(&key_id));
            let rotated = api
                .post(&path, &json!({ "overlap_ms": overlap_ms }))
                .await?;
            api.print(&rotated, &["key_id", "key"], std::slice::from_ref(&rotated));
        }
        AuthCommand::Key(KeyCommand::Revoke { key_id }) => {
            api.delete(&format!("/v1/auth/keys/{}", Api::segment(&key_id)))
                .await?;
            if api.output == super::Output::Json {
                super::print_json(&json!({ "revoked": key_id }));
            } else {
                super::emit(&format!("revoked key {key_id}"));
            }
        }
    }
    Ok(())
}

/// `topics:publish,topics:read=orders.*,payments` as a permission.
fn permission(spec: &str) -> Result<Value, Error> {
    let (actions, resources) = spec.split_once('=').ok_or_else(|| {
        Error::Usage(format!(
            "--allow {spec:?}: expected ACTIONS=RESOURCES, e.g. topics:publish=orders.*"
        ))
    })?;
    let list = |text: &str| -> Vec<Value> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| json!(item))
            .collect()
    };
    Ok(json!({ "actions": list(actions), "resources": list(resources) }))
}
