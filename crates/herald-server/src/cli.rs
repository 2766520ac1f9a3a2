//! The `herald` command line.
//!
//! One subcommand per activity: `serve` runs the server; later subcommands
//! act on resources (`herald topic …`, `herald publish …`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::commands::{ClientArgs, ClientCommand};
use crate::config::{
    AuthOverrides, BackendKind, LogFormat, LogLevel, LogOverrides, NatsOverrides, Overrides,
};

/// Herald: an event backbone in one binary.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    propagate_version = true,
    after_help = crate::commands::EXIT_CODES
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Where the server is and how to print (client subcommands).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Talk to a running server (topics, publish, consume, groups, jobs, blobs).
    #[command(flatten)]
    Client(ClientCommand),
}

/// `herald serve`. Flags override `HERALD_*` variables, which override the
/// configuration file, which overrides the defaults.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file [default: ./herald.toml, if it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7800]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Directory for all durable state [default: ./herald-data]
    // UTF-8 and non-empty, like every other layer's value (TOML and HERALD_*
    // are UTF-8): a bad path is refused here, by a message naming the flag.
    #[arg(
        long,
        value_name = "PATH",
        value_parser = NonEmptyStringValueParser::new().map(PathBuf::from)
    )]
    pub data_dir: Option<PathBuf>,

    /// Storage backend: embedded (this machine) or nats (a NATS JetStream
    /// cluster, see --nats-url) [default: embedded]
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<BackendKind>,

    /// NATS server URLs, comma-separated (backend = nats)
    /// [default: nats://127.0.0.1:4222]
    #[arg(long, value_name = "URLS")]
    pub nats_url: Option<String>,

    /// Log line format [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. `info` or `herald_server=debug,info` [default: info]
    #[arg(long, value_name = "DIRECTIVE")]
    pub log_level: Option<LogLevel>,

    /// Serve a non-loopback --listen without any authentication configured
    /// (auth.insecure); a warning is logged at every start
    #[arg(long)]
    pub insecure: bool,
}

impl ServeArgs {
    /// The configuration layer these flags form.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            backend: self.backend,
            nats: NatsOverrides {
                url: self.nats_url.clone(),
            },
            log: LogOverrides {
                format: self.log_format,
                level: self.log_level.clone(),
            },
            auth: AuthOverrides {
                insecure: self.insecure.then_some(true),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn given_cli_definition_should_be_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn given_serve_flags_when_parsed_should_become_overrides() {
        let cli = Cli::try_parse_from([
            "herald",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("parsed as another command");
        };
        let overrides = args.overrides();
        assert_eq!(overrides.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(overrides.log.format, Some(LogFormat::Json));
        assert_eq!(overrides.data_dir, None);
    }

    #[test]
    fn given_empty_data_dir_flag_when_parsed_should_fail_naming_flag() {
        let error = Cli::try_parse_from(["herald", "serve", "--data-dir", ""]).unwrap_err();
        assert!(error.to_string().contains("--data-dir"), "{error}");
    }

    #[test]
    fn given_client_subcommands_when_parsed_should_take_global_flags() {
        let cli = Cli::try_parse_from([
            "herald",
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--server",
            "http://127.0.0.1:9",
            "--output",
            "json",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Client(_)));
        assert_eq!(cli.client.server.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(cli.client.output, crate::commands::Output::Json);
        let error = Cli::try_parse_from(["herald", "publish", "orders"]).unwrap_err();
        assert!(error.to_string().contains("--type"), "{error}");
    }

    #[test]
    fn given_tls_flags_when_parsed_should_take_them_and_require_cert_and_key_together() {
        let cli = Cli::try_parse_from([
            "herald",
            "topic",
            "list",
            "--server",
            "https://herald.example:7800",
            "--ca-cert",
            "ca.pem",
            "--client-cert",
            "me.pem",
            "--client-key",
            "me.key",
        ])
        .unwrap();
        assert_eq!(cli.client.ca_cert, Some(PathBuf::from("ca.pem")));
        assert_eq!(cli.client.client_key, Some(PathBuf::from("me.key")));
        let error = Cli::try_parse_from(["herald", "topic", "list", "--client-cert", "me.pem"])
            .unwrap_err();
        assert!(error.to_string().contains("--client-key"), "{error}");
    }

    #[test]
    fn given_help_should_document_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "0  done",
            "3  the server could not be reached",
            "5  the server answered",
        ] {
            assert!(help.contains(code), "{help}");
        }
    }

    #[test]
    fn given_bad_listen_flag_when_parsed_should_fail() {
        let error = Cli::try_parse_from(["herald", "serve", "--listen", "nope"]).unwrap_err();
        assert!(error.to_string().contains("--listen"), "{error}");
    }
}
