//! TLS on the one listener (`[tls]`): rustls with the aws-lc-rs provider,
//! certificates from PEM files reloaded without a restart, and optional
//! client certificates (mTLS).
//!
//! ```text
//! accept (connections.rs) ─▶ Tls::accept, within tls.handshake_timeout_ms:
//!   peek the first byte: not a TLS handshake record (0x16)?
//!     → a plain-HTTP client: answer 400 `tls_required`, close
//!   rustls handshake with the *current* ServerConfig
//!     ALPN h2 | http/1.1 (gRPC needs h2), client certificate per client_auth
//!   → the TLS stream, and the verified client certificate's identity
//!     (PeerCertificate), which every request of the connection carries in
//!     its extensions
//!
//! Tls::watch (a task): every tls.reload_interval_ms, and on SIGHUP
//!   read cert_file, key_file, client_ca_file
//!   unchanged since the last attempt (and no SIGHUP)? nothing to do
//!   build a new ServerConfig: ok → swapped in for new connections;
//!   failed (bad PEM, key not matching) → the old one stays, ERROR logged
//! ```
//!
//! A reload replaces the whole `ServerConfig` (certificate, key and client
//! CA together) behind a lock that is held only to clone an `Arc`, so a
//! connection accepted after the swap uses the new files and one accepted
//! before keeps the config it was accepted with: open connections never
//! notice a rotation. Changes are detected by content, not modification
//! time: a cert and key written one after the other are retried until the
//! pair matches, and a file that stays broken is reported once, not at
//! every poll.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{ClientAuth, TlsOptions};
use crate::problem::{self, Code, Problem};

/// ALPN protocols the server offers, preferred first: gRPC needs h2.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The identity of a client that presented a certificate verified against
/// `tls.client_ca_file` (the auth layer's type: it maps it to an identity
/// through `auth.mtls`): inserted into the extensions of every request on
/// its connection, absent on connections without one.
pub use crate::auth::PeerCertificate;

impl PeerCertificate {
    /// The identity in a DER certificate; `None` if it does not parse (it
    /// was verified by rustls first, so that does not happen in practice).
    pub fn from_der(certificate: &CertificateDer<'_>) -> Option<Self> {
        let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
        Some(Self {
            subject_common_name: common_name(parsed.subject()),
            dns_names: parsed.valid_dns_names().map(str::to_owned).collect(),
        })
    }
}

/// Why TLS could not be set up from its files. Every message names the key
/// and the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read tls.{key} {}", path.display())]
    Read {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("tls.{key} {}: {what}", path.display())]
    Pem {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What it lacks.
        what: &'static str,
        /// The PEM error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the certificate and key (a key that does not match
    /// the certificate, an unsupported key type).
    #[error("tls.cert_file {} and tls.key_file {} cannot be used", cert.display(), key.display())]
    CertifiedKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// A certificate of the client CA file is not a usable CA.
    #[error("tls.client_ca_file {}: not a usable CA certificate", path.display())]
    ClientCaCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// No client certificate verifier could be built from the CA file.
    #[error("tls.client_ca_file {}: cannot verify client certificates with it", path.display())]
    ClientVerifier {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The crypto provider supports none of the protocol versions (a build
    /// without TLS 1.2 and 1.3).
    #[error("the TLS crypto provider is unusable")]
    Provider(#[source] rustls::Error),
}

/// The listener's TLS: the current server configuration and what it was
/// loaded from.
pub struct Tls {
    files: Files,
    handshake_timeout: Duration,
    reload_interval: Duration,
    current: RwLock<TlsAcceptor>,
    /// What the last reload attempt read (successful or not), so that an
    /// unchanged file is neither reloaded nor reported again.
    attempted: Mutex<Contents>,
    metrics: TlsMetrics,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// A connection whose handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Nothing within `tls.handshake_timeout_ms`.
    #[error("no TLS handshake within {} ms (tls.handshake_timeout_ms)", .0.as_millis())]
    Timeout(Duration),
    /// The client spoke something else than TLS (it was told so).
    #[error("the client sent plain text, not a TLS handshake")]
    Plaintext,
    /// The handshake failed (a client that does not trust our certificate,
    /// one without a required client certificate, or a closed socket).
    #[error("TLS handshake failed")]
    Failed(#[source] io::Error),
}

impl Tls {
    /// Loads the files named by `options` (which must have TLS enabled).
    /// Fails, naming the file, if any is missing or unusable: the server
    /// must not start without the TLS it was asked for.
    pub fn load(options: &TlsOptions, metrics: TlsMetrics) -> Result<Arc<Self>, Error> {
        let files = Files::from(options);
        let contents = files.read();
        let config = files.server_config(&contents)?;
        Ok(Arc::new(Self {
            files,
            handshake_timeout: options.handshake_timeout(),
            reload_interval: options.reload_interval(),
            current: RwLock::new(TlsAcceptor::from(config)),
            attempted: Mutex::new(contents),
            metrics,
        }))
    }

    /// The acceptor of new connections.
    fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again and, if they changed since the last attempt
    /// (or `force`), swaps in a configuration built from them. Returns
    /// whether a new configuration is in place; a failure keeps the old one
    /// and is logged (once per change of the files).
    pub fn reload(&self, force: bool) -> bool {
        let contents = self.files.read();
        {
            let mut attempted = self
                .attempted
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !force && *attempted == contents {
                return false;
            }
            attempted.clone_from(&contents);
        }
        match self.files.server_config(&contents) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    TlsAcceptor::from(config);
                self.metrics.reloaded(true);
                info!(cert = %self.files.cert.display(), "Reloaded the TLS certificate; new connections use it.");
                true
            }
            Err(failure) => {
                self.metrics.reloaded(false);
                error!(error = %failure, source = ?std::error::Error::source(&failure),
                    "Cannot reload TLS; new connections keep the previous certificate.");
                false
            }
        }
    }

    /// Reloads when the files change (polled every
    /// `tls.reload_interval_ms`) and on SIGHUP, until `stop` fires.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut hangups = Hangups::install();
        let mut poll = tokio::time::interval(self.reload_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let force = tokio::select! {
                () = stop.cancelled() => return,
                _ = poll.tick() => false,
                () = hangups.next() => {
                    info!("Received SIGHUP; reloading the TLS files.");
                    true
                }
            };
            // File reads and key parsing: off the async threads.
            let this = Arc::clone(&self);
            if let Err(failure) = tokio::task::spawn_blocking(move || this.reload(force)).await {
                error!(error = %failure, "The TLS reload task failed.");
            }
        }
    }

    /// Completes the TLS handshake of an accepted connection, within the
    /// handshake timeout; returns the stream and the client's certificate
    /// identity, if it presented one. A client that speaks plain HTTP is
    /// answered 400 `tls_required` and closed.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, Option<PeerCertificate>), HandshakeError> {
        let acceptor = self.acceptor();
        let handshake = async {
            let mut first = [0u8; 1];
            let peeked = tcp.peek(&mut first).await.map_err(HandshakeError::Failed)?;
            if peeked == 1 && first[0] != TLS_HANDSHAKE_RECORD {
                // Counted before answering: the answer waits for the client.
                self.metrics.handshake_failed(&HandshakeError::Plaintext);
                refuse_plaintext(tcp).await;
                return Err(HandshakeError::Plaintext);
            }
            let stream = acceptor.accept(tcp).await.map_err(HandshakeError::Failed)?;
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[_]>::first)
                .and_then(PeerCertificate::from_der);
            Ok((stream, peer))
        };
        let outcome = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .unwrap_or(Err(HandshakeError::Timeout(self.handshake_timeout)));
        if let Err(failure) = &outcome
            && !matches!(failure, HandshakeError::Plaintext)
        {
            self.metrics.handshake_failed(failure);
        }
        outcome
    }

    /// `tls.cert_file`, for logs.
    pub fn cert_file(&self) -> &Path {
        &self.files.cert
    }
}

/// Answers a plain-HTTP client on the TLS port with a 400 problem that says
/// what to do, instead of a reset. The request is read first (what has
/// arrived of it), so that closing does not discard unread bytes, which
/// would turn the close into a reset the client sees before the answer.
async fn refuse_plaintext(mut tcp: TcpStream) {
    let mut request = [0u8; 4096];
    let _ = tcp.read(&mut request).await;
    let problem = Problem::new(
        Code::TlsRequired,
        "this port speaks TLS only: use https:// (and the server's CA)",
    );
    let body = serde_json::to_string(&problem).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        problem::CONTENT_TYPE,
        body.len()
    );
    if tcp.write_all(response.as_bytes()).await.is_ok() && tcp.shutdown().await.is_ok() {
        // Until the client closes (bounded by the handshake timeout).
        while matches!(tcp.read(&mut request).await, Ok(read) if read > 0) {}
    }
}

/// The files TLS is loaded from.
#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth: ClientAuth,
}

/// What reading each file gave: its bytes, or the kind of error.
type Read = Result<Vec<u8>, io::ErrorKind>;

/// The files' contents as read for one load.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Contents {
    cert: Read,
    key: Read,
    client_ca: Option<Read>,
}

impl From<&TlsOptions> for Files {
    fn from(options: &TlsOptions) -> Self {
        Self {
            cert: options.cert_file.clone(),
            key: options.key_file.clone(),
            client_ca: (!options.client_ca_file.as_os_str().is_empty())
                .then(|| options.client_ca_file.clone()),
            client_auth: options.client_auth,
        }
    }
}

impl Files {
    fn read(&self) -> Contents {
        let read = |path: &Path| std::fs::read(path).map_err(|error| error.kind());
        Contents {
            cert: read(&self.cert),
            key: read(&self.key),
            client_ca: self.client_ca.as_deref().map(read),
        }
    }

    /// A server configuration from `contents`: the certificate chain and
    /// key, ALPN, and the client verifier `client_auth` asks for.
    fn server_config(&self, contents: &Contents) -> Result<Arc<ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert_bytes = bytes("cert_file", &self.cert, &contents.cert)?;
        let chain = CertificateDer::pem_slice_iter(cert_bytes)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|chain| {
                if chain.is_empty() {
                    Err(rustls_pki_types::pem::Error::NoItemsFound)
                } else {
                    Ok(chain)
                }
            })
            .map_err(|source| Error::Pem {
                key: "cert_file",
                path: self.cert.clone(),
                what: "expected PEM certificates (BEGIN CERTIFICATE)",
                source,
            })?;
        let key_bytes = bytes("key_file", &self.key, &contents.key)?;
        let key = PrivateKeyDer::from_pem_slice(key_bytes).map_err(|source| Error::Pem {
            key: "key_file",
            path: self.key.clone(),
            what: "expected a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            source,
        })?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(Error::Provider)?;
        let builder = match (&self.client_ca, &contents.client_ca, self.client_auth) {
            (Some(path), Some(read), ClientAuth::Optional | ClientAuth::Required) => {
                let roots = client_roots(path, read)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.client_auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|source| Error::ClientVerifier {
                    path: path.clone(),
                    source,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| Error::CertifiedKey {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                    source,
                })?;
        config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// The bytes of a file that was read, or the error naming it.
fn bytes<'a>(key: &'static str, path: &Path, read: &'a Read) -> Result<&'a [u8], Error> {
    read.as_deref().map_err(|&kind| Error::Read {
        key,
        path: path.to_owned(),
        source: io::Error::from(kind),
    })
}

/// The CA certificates of `tls.client_ca_file`.
fn client_roots(path: &Path, read: &Read) -> Result<RootCertStore, Error> {
    let pem_error = |source| Error::Pem {
        key: "client_ca_file",
        path: path.to_owned(),
        what: "expected PEM CA certificates (BEGIN CERTIFICATE)",
        source,
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(bytes("client_ca_file", path, read)?) {
        let certificate = certificate.map_err(pem_error)?;
        roots
            .add(certificate)
            .map_err(|source| Error::ClientCaCertificate {
                path: path.to_owned(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(pem_error(rustls_pki_types::pem::Error::NoItemsFound));
    }
    Ok(roots)
}

/// The value of the last `commonName` (2.5.4.3) attribute of a DER `Name`
/// (the contents of its SEQUENCE: RDN SETs of type-and-value SEQUENCEs).
fn common_name(mut name: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let mut found = None;
    while !name.is_empty() {
        let (set, rest) = der_element(name, 0x31)?;
        name = rest;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, rest) = der_element(attributes, 0x30)?;
            attributes = rest;
            let (oid, value) = der_element(attribute, 0x06)?;
            if oid != COMMON_NAME {
                continue;
            }
            // Any string type (UTF8String, PrintableString, …): all are
            // read as UTF-8, which the ASCII ones are too.
            let (&tag, _) = value.split_first()?;
            let (text, _) = der_element(value, tag)?;
            found = Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    found
}

/// One DER element of tag `tag` at the start of `input`: its contents and
/// what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&actual, rest) = input.split_first()?;
    if actual != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (digits, after) = rest.split_at(octets);
        rest = after;
        digits
            .iter()
            .fold(0usize, |length, &digit| (length << 8) | usize::from(digit))
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// SIGHUP, where there is such a thing.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|error| {
                    warn!(%error, "Cannot handle SIGHUP; TLS files are still reloaded when they change.");
                })
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the next SIGHUP (never, without a handler).
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// TLS metrics: reloads by outcome, failed handshakes by reason.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    reloads: Family<OutcomeLabel, Counter>,
    handshake_failures: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl TlsMetrics {
    /// Registers the metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_tls_reloads",
            "Reloads of the TLS files after they changed or on SIGHUP, by outcome (ok, failed)",
            self.reloads.clone(),
        );
        registry.register(
            "herald_tls_handshake_failures",
            "TLS connections closed before their handshake completed, by reason (timeout, plaintext, failed)",
            self.handshake_failures.clone(),
        );
    }

    fn reloaded(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    fn handshake_failed(&self, failure: &HandshakeError) {
        let reason = match failure {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Plaintext => "plaintext",
            HandshakeError::Failed(_) => "failed",
        };
        debug!(error = %failure, source = ?std::error::Error::source(failure), "TLS handshake failed.");
        self.handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
