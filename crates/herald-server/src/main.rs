//! The `herald` binary: parse the command line, then hand over to the library.
//!
//! Exit codes: 0 after a clean shutdown; 2 for a usage or configuration
//! error (as clap does for bad flags); 1 for any other failure. Fatal errors
//! are printed to stderr as one line, `error: <what>: <why>`.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use herald_server::cli::{Cli, Command, ServeArgs};
use herald_server::config::{self, Sources};
use herald_server::{Options, Server, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// mimalloc instead of glibc malloc: the request paths allocate per event
/// and per request, and glibc's malloc/free took ~17% of the server's CPU
/// there (BENCHMARKS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Client(command) => {
            return match herald_server::commands::run(&cli.client, command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    error.exit_code()
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let insecure = matches!(
                error.downcast_ref::<herald_server::server::Error>(),
                Some(herald_server::server::Error::Insecure { .. })
            );
            if insecure || error.downcast_ref::<config::Error>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let sources = Sources::from_process(args.config.clone(), args.overrides());
    let options = config::load(&sources)?;
    disable_transparent_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("herald-worker")
        .build()
        .context("cannot start the async runtime")?;
    // The OTLP gRPC exporter's channel lives on the runtime: built and
    // flushed (the guard's drop) inside its context.
    let _context = runtime.enter();
    let _spans = telemetry::init_with_traces(&options.log, &options.telemetry)?;
    debug!(?options, "Loaded configuration.");
    runtime.block_on(run(options, sources))
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas, so the first touch of a fresh 2 MiB region faults in
/// and zeroes a whole huge page inside one allocation: on a VM, 4–7 ms in
/// the middle of one request, each time the heap grows (found as W3's
/// slowest publishes, where the dedup window's map and queue doubled:
/// BENCHMARKS.md). With 4 KiB pages that cost is spread over
/// the allocations that touch them. Latency-bound servers (Redis, MongoDB)
/// give the same advice.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        warn!(%error, "Cannot turn transparent huge pages off; latency may spike as the heap grows.");
    }
}

async fn run(options: Options, sources: Sources) -> anyhow::Result<()> {
    let server = Server::bind(options).await?;
    #[cfg(unix)]
    tokio::spawn(reload_on_hangup(
        sources,
        server.reloader(),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?,
    ));
    #[cfg(not(unix))]
    drop(sources);
    // Installed before the address is announced: a SIGTERM sent by whoever
    // reads the announcement must find the handler in place, not kill us.
    let signals = Signals::install().context("cannot install signal handlers")?;
    announce(server.local_addr());

    let cancel = CancellationToken::new();
    tokio::spawn(signals.cancel_on_signal(cancel.clone()));
    server.run(cancel).await?;
    Ok(())
}

/// SIGHUP: the configuration is loaded again from the same sources (the
/// file, the environment of the start, the flags) and what can change
/// without a restart is applied ([`herald_server::server::Reloader`]); a
/// configuration that no longer loads is logged and changes nothing.
#[cfg(unix)]
async fn reload_on_hangup(
    sources: Sources,
    reloader: herald_server::server::Reloader,
    mut hangups: tokio::signal::unix::Signal,
) {
    while hangups.recv().await.is_some() {
        match config::load(&sources) {
            Ok(options) => reloader.apply(&options),
            Err(error) => {
                tracing::error!(%error, "SIGHUP: the configuration does not load; keeping the one in force.");
            }
        }
    }
}

/// Tells a supervisor or test harness where we listen, on stdout, once.
fn announce(addr: SocketAddr) {
    let mut stdout = io::stdout().lock();
    // Without a stdout (closed pipe) there is no one to tell; that must not
    // stop the server, and the address is in the logs too.
    if let Err(error) = writeln!(stdout, "herald listening on {addr}").and_then(|()| stdout.flush())
    {
        warn!(%error, "Cannot write the listening address to stdout.");
    }
}

/// SIGINT and SIGTERM: the first starts a graceful shutdown, a second one
/// exits at once (without draining; storage must survive that anyway).
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            "ctrl-c"
        }
    }

    async fn cancel_on_signal(mut self, cancel: CancellationToken) {
        let signal = self.next().await;
        info!(signal, "Received signal; shutting down gracefully.");
        cancel.cancel();
        let signal = self.next().await;
        warn!(
            signal,
            "Received a second signal; exiting without draining."
        );
        std::process::exit(130);
    }
}
