//! Named contexts (`herald context add|use|list|rm`), as `nats context`:
//! a server and its credentials saved under a name, so that
//! `herald --context prod topic list` (or `HERALD_CONTEXT=prod`, or the
//! selected context) needs no `--server`/`--token`.
//!
//! They live in one file, `$XDG_CONFIG_HOME/herald/config.toml` (or
//! `~/.config/herald/config.toml`), written owner-only because it may hold
//! tokens:
//!
//! ```text
//! context = "prod"                 # the selected one
//! [contexts.prod]
//! server = "https://herald.internal:7800"
//! token = "hrd_…"                  # optional, as ca_cert, client_cert, client_key
//! ```
//!
//! Each setting is taken from, first to last: its flag, its `HERALD_*`
//! variable, the context (`--context`, else `HERALD_CONTEXT`, else the
//! selected one), the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ClientArgs, Error, Output};

/// The server used when nothing names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7800";

/// Context subcommands.
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Save (or replace) a context from --server and the credential flags
    /// (--token, --ca-cert, --client-cert, --client-key) given with it.
    Add {
        /// The context's name
        name: String,
        /// Also select it
        #[arg(long)]
        select: bool,
    },
    /// Select the context commands use when neither --context nor
    /// HERALD_CONTEXT names one.
    Use {
        /// The context's name
        name: String,
    },
    /// List the contexts; the selected one is marked `*`.
    #[command(visible_alias = "ls")]
    List,
    /// Delete a context.
    #[command(visible_alias = "remove")]
    Rm {
        /// The context's name
        name: String,
    },
}

/// One saved context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The server's base URL.
    pub server: String,
    /// An API key or JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// CA certificates (PEM) to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate chain (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

/// The config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The selected context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

/// Where a client command connects and with what, once flags, environment
/// and context are layered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The server's base URL.
    pub server: String,
    /// Credentials.
    pub token: Option<String>,
    /// CA certificates (PEM) to trust.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate chain and key (PEM).
    pub client_cert: Option<PathBuf>,
    /// The key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl Settings {
    /// Layers flag > `HERALD_*` variable > context > default; `env` reads a
    /// variable (empty counts as unset).
    pub fn resolve(args: &ClientArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        let named = args.context.clone().or_else(|| env("HERALD_CONTEXT"));
        // The file is read only when something may come from it.
        let context = match config_path(&env) {
            Some(path) if named.is_some() || path.exists() => {
                let file = load(&path)?;
                match named {
                    Some(name) => Some(file.contexts.get(&name).cloned().ok_or_else(|| {
                        Error::Usage(format!(
                            "no context named {name:?} in {} (herald context list)",
                            path.display()
                        ))
                    })?),
                    None => file
                        .context
                        .as_ref()
                        .and_then(|name| file.contexts.get(name).cloned()),
                }
            }
            Some(_) => None,
            None if named.is_some() => {
                return Err(Error::Usage(
                    "--context/HERALD_CONTEXT: neither XDG_CONFIG_HOME nor HOME is set".into(),
                ));
            }
            None => None,
        }
        .unwrap_or_default();
        let path = |flag: &Option<PathBuf>, name: &str, saved: Option<PathBuf>| {
            flag.clone()
                .or_else(|| env(name).map(PathBuf::from))
                .or(saved)
        };
        let server = args
            .server
            .clone()
            .or_else(|| env("HERALD_SERVER"))
            .or(Some(context.server).filter(|server| !server.is_empty()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        // A certificate and its key come as a pair from one layer.
        let (client_cert, client_key) = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => (Some(cert.clone()), Some(key.clone())),
            _ => (
                path(&None, "HERALD_CLIENT_CERT", context.client_cert),
                path(&None, "HERALD_CLIENT_KEY", context.client_key),
            ),
        };
        Ok(Self {
            server,
            token: args
                .token
                .clone()
                .or_else(|| env("HERALD_TOKEN"))
                .or(context.token),
            ca_cert: path(&args.ca_cert, "HERALD_CA_CERT", context.ca_cert),
            client_cert,
            client_key,
        })
    }
}

/// Runs a context subcommand (no server involved).
pub(crate) fn run(args: &ClientArgs, command: ContextCommand) -> Result<(), Error> {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let path = config_path(&env).ok_or_else(|| {
        Error::Usage("cannot place the config file: neither XDG_CONFIG_HOME nor HOME is set".into())
    })?;
    let mut file = if path.exists() {
        load(&path)?
    } else {
        File::default()
    };
    match command {
        ContextCommand::Add { name, select } => {
            validate_name(&name)?;
            let server = args.server.clone().ok_or_else(|| {
                Error::Usage(format!(
                    "context add {name} needs --server (and optionally --token, --ca-cert, \
                     --client-cert, --client-key)"
                ))
            })?;
            if !(server.starts_with("http://") || server.starts_with("https://")) {
                return Err(Error::Usage(format!(
                    "--server {server:?} must start with http:// or https://"
                )));
            }
            file.contexts.insert(
                name.clone(),
                Context {
                    server,
                    token: args.token.clone(),
                    ca_cert: args.ca_cert.clone().map(absolute),
                    client_cert: args.client_cert.clone().map(absolute),
                    client_key: args.client_key.clone().map(absolute),
                },
            );
            if select || file.context.is_none() && file.contexts.len() == 1 {
                file.context = Some(name.clone());
            }
            save(&path, &file)?;
            eprintln!("saved context {name} in {}", path.display());
        }
        ContextCommand::Use { name } => {
            known(&file, &name, &path)?;
            file.context = Some(name.clone());
            save(&path, &file)?;
            eprintln!("selected context {name}");
        }
        ContextCommand::Rm { name } => {
            known(&file, &name, &path)?;
            file.contexts.remove(&name);
            if file.context.as_deref() == Some(name.as_str()) {
                file.context = None;
            }
            save(&path, &file)?;
            eprintln!("deleted context {name}");
        }
        ContextCommand::List => {
            let rows: Vec<Value> = file
                .contexts
                .iter()
                .map(|(name, context)| {
                    json!({
                        "name": name,
                        "selected": file.context.as_deref() == Some(name.as_str()),
                        "server": context.server,
                        // Never print a secret: only whether there is one.
                        "token": context.token.is_some(),
                        "ca_cert": context.ca_cert,
                        "client_cert": context.client_cert,
                    })
                })
                .collect();
            match args.output {
                Output::Json => super::print_json(&json!({ "contexts": rows })),
                Output::Table => {
                    let rows: Vec<Value> = rows
                        .into_iter()
                        .map(|mut row| {
                            row["name"] = json!(format!(
                                "{}{}",
                                row["name"].as_str().unwrap_or_default(),
                                if row["selected"] == json!(true) {
                                    " *"
                                } else {
                                    ""
                                }
                            ));
                            row["token"] = json!(if row["token"] == json!(true) {
                                "yes"
                            } else {
                                "no"
                            });
                            row
                        })
                        .collect();
                    super::print_table(&["name", "server", "token", "ca_cert"], &rows);
                }
            }
        }
    }
    Ok(())
}

/// `$XDG_CONFIG_HOME/herald/config.toml`, else `$HOME/.config/herald/config.toml`.
fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("herald").join("config.toml"))
}

fn load(path: &Path) -> Result<File, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Error::File(format!("cannot read {}: {error}", path.display())))?;
    toml::from_str(&text)
        .map_err(|error| Error::File(format!("{}: not a herald config: {error}", path.display())))
}

/// Writes the file owner-only (it may hold tokens), via a rename so that a
/// crash leaves the old file or the new one.
fn save(path: &Path, file: &File) -> Result<(), Error> {
    let failed =
        |error: std::io::Error| Error::File(format!("cannot write {}: {error}", path.display()));
    let text = toml::to_string(file)
        .map_err(|error| Error::File(format!("cannot encode the contexts: {error}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let temporary = path.with_extension("toml.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&temporary).map_err(failed)?;
    std::io::Write::write_all(&mut out, text.as_bytes()).map_err(failed)?;
    out.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

fn known(file: &File, name: &str, path: &Path) -> Result<(), Error> {
    if file.contexts.contains_key(name) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "no context named {name:?} in {} (herald context list)",
            path.display()
        )))
    }
}

fn validate_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "context name {name:?}: use 1–100 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Paths are saved absolute: the context is used from any directory.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: Option<&str>, context: Option<&str>) -> ClientArgs {
        ClientArgs {
            server: server.map(str::to_owned),
            context: context.map(str::to_owned),
            token: None,
            output: Output::Table,
            ca_cert: None,
            client_cert: None,
            client_key: None,
        }
    }

    #[test]
    fn given_flag_env_and_context_when_resolved_should_take_them_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald").join("config.toml");
        let mut file = File {
            context: Some("dev".into()),
            ..File::default()
        };
        for (name, server) in [("dev", "http://dev:1"), ("prod", "https://prod:2")] {
            file.contexts.insert(
                name.into(),
                Context {
                    server: server.into(),
                    token: Some(format!("{name}-token")),
                    ..Context::default()
                },
            );
        }
        save(&path, &file).unwrap();
        let home = dir.path().to_str().unwrap().to_owned();
        let env_with = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.clone())
            }
        };
        let base = vec![("XDG_CONFIG_HOME", home.clone())];
        let selected = Settings::resolve(&args(None, None), &env_with(base.clone())).unwrap();
        assert_eq!(selected.server, "http://dev:1");
        assert_eq!(selected.token.as_deref(), Some("dev-token"));
        let mut with_env = base.clone();
        with_env.push(("HERALD_CONTEXT", "prod".into()));
        let by_env = Settings::resolve(&args(None, None), &env_with(with_env.clone())).unwrap();
        assert_eq!(by_env.server, "https://prod:2");
        let by_flag =
            Settings::resolve(&args(None, Some("dev")), &env_with(with_env.clone())).unwrap();
        assert_eq!(by_flag.server, "http://dev:1");
        with_env.push(("HERALD_SERVER", "http://env:3".into()));
        with_env.push(("HERALD_TOKEN", "env-token".into()));
        let server_env = Settings::resolve(&args(None, None), &env_with(with_env.clone())).unwrap();
        assert_eq!(server_env.server, "http://env:3");
        assert_eq!(server_env.token.as_deref(), Some("env-token"));
        let flag =
            Settings::resolve(&args(Some("http://flag:4"), None), &env_with(with_env)).unwrap();
        assert_eq!(flag.server, "http://flag:4");
        let nothing = Settings::resolve(
            &args(None, None),
            &env_with(vec![("XDG_CONFIG_HOME", format!("{home}/none"))]),
        )
        .unwrap();
        assert_eq!(nothing.server, DEFAULT_SERVER);
        assert_eq!(nothing.token, None);
        let unknown = Settings::resolve(&args(None, Some("nope")), &env_with(base)).unwrap_err();
        assert!(unknown.to_string().contains("nope"), "{unknown}");
    }
}
