//! Structured logs to stderr, as text or JSON lines, and the export of hop
//! spans over OpenTelemetry (OTLP) when `telemetry.otlp_endpoint` is set.
//!
//! stdout is kept for machine-readable output (`herald listening on …`), so
//! logs never go there.
//!
//! The exporter sends only the hop spans (target [`herald_trace::TARGET`]):
//! one per step of an event's journey, whatever `log.level` says. A log line
//! written inside a hop span carries its `trace_id`.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogFormat, LogOptions, OtlpProtocol, TelemetryOptions};

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
    /// The OTLP exporter could not be built (a malformed endpoint).
    #[error("cannot export traces to telemetry.otlp_endpoint '{endpoint}'")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Flushes and stops the span exporter when dropped (at the end of
/// `herald serve`). Drop it inside the runtime's context: the gRPC exporter
/// sends on the runtime.
#[derive(Debug, Default)]
#[must_use = "spans are flushed when the guard is dropped"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "Spans not exported at shutdown.");
        }
    }
}

/// Installs logging and, when an OTLP endpoint is set, the span exporter.
/// Call it inside a tokio runtime's context.
pub fn init_with_traces(log: &LogOptions, telemetry: &TelemetryOptions) -> Result<Guard, Error> {
    if telemetry.otlp_endpoint.is_empty() {
        init(log)?;
        return Ok(Guard::default());
    }
    let endpoint = telemetry.otlp_endpoint.clone();
    let exporter = match telemetry.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&endpoint)
            .build(),
    }
    .map_err(|source| Error::Exporter { endpoint, source })?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        telemetry.sample_ratio.get(),
    )));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(telemetry.service_name.clone())
                .build(),
        )
        .build();
    let hops = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("herald"))
        .with_filter(Targets::new().with_target(herald_trace::TARGET, LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(hops);
    let filter = env_filter(log)?;
    let installed = match log.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
    installed.map_err(|error| Error::Install(Box::new(error)))?;
    herald_trace::enable();
    Ok(Guard {
        provider: Some(provider),
    })
}

fn env_filter(options: &LogOptions) -> Result<EnvFilter, Error> {
    let level = options.level.as_str();
    EnvFilter::builder()
        .parse(level)
        .map_err(|source| Error::Level {
            level: level.to_owned(),
            source,
        })
}

/// Installs the global subscriber described by `options`.
pub fn init(options: &LogOptions) -> Result<(), Error> {
    let filter = env_filter(options)?;
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
