//! Structured logs to stderr, as text or JSON lines.
//!
//! stdout is kept for machine-readable output (`herald listening on …`), so
//! logs never go there.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogOptions};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `log.level` directive did not parse (normally caught by config).
    #[error("invalid log.level '{level}'")]
    Level {
        /// The directive.
        level: String,
        /// Why it did not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("cannot install the log subscriber")]
    Install(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Installs the global subscriber described by `options`.
pub fn init(options: &LogOptions) -> Result<(), Error> {
    let level = options.level.as_str();
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|source| Error::Level {
            level: level.to_owned(),
            source,
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match options.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(Error::Install)
}
