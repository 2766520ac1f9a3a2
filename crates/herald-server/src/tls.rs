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
/// `tls.client_ca_file`: inserted into the extensions of every request on
/// its connection (absent on connections without one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name (the last CN attribute, the most specific).
    pub subject_common_name: Option<String>,
    /// The DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
}

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
        if let Err(failure) = &outcome {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::extract::Extension;
    use axum::routing::get;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::config::ConnectionOptions;

    /// A test CA that signs server and client certificates.
    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Self { issuer }
        }

        fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// A leaf certificate and its key (PEM), for `names`, with subject CN
        /// `common_name`.
        fn leaf(&self, common_name: &str, names: &[&str]) -> (String, String) {
            let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Herald tests");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    /// TLS files in a temp dir: the server's certificate from `ca`.
    struct Files {
        dir: tempfile::TempDir,
        options: TlsOptions,
    }

    impl Files {
        fn new(ca: &Ca, client_auth: ClientAuth, client_ca: Option<&Ca>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut options = TlsOptions {
                cert_file: dir.path().join("server.pem"),
                key_file: dir.path().join("server.key"),
                client_auth,
                handshake_timeout_ms: std::num::NonZeroU64::new(2_000).unwrap(),
                ..TlsOptions::default()
            };
            if let Some(client_ca) = client_ca {
                options.client_ca_file = dir.path().join("clients.pem");
                std::fs::write(&options.client_ca_file, client_ca.pem()).unwrap();
            }
            let files = Self { dir, options };
            files.write_server(ca);
            files
        }

        fn write_server(&self, ca: &Ca) {
            let (cert, key) = ca.leaf("herald", &["localhost", "127.0.0.1"]);
            std::fs::write(&self.options.cert_file, cert).unwrap();
            std::fs::write(&self.options.key_file, key).unwrap();
        }
    }

    /// `GET /peer`: the connection's client identity, as the request sees it.
    async fn peer(certificate: Option<Extension<PeerCertificate>>) -> String {
        match certificate {
            Some(Extension(peer)) => format!(
                "cn={} dns={}",
                peer.subject_common_name.unwrap_or_default(),
                peer.dns_names.join(",")
            ),
            None => "anonymous".to_owned(),
        }
    }

    /// A TLS listener on port 0 serving `/peer`, until the token fires.
    struct Listener {
        addr: SocketAddr,
        tls: Arc<Tls>,
        stop: CancellationToken,
        task: JoinHandle<io::Result<()>>,
    }

    impl Listener {
        async fn start(options: &TlsOptions) -> Self {
            let tls = Tls::load(options, TlsMetrics::default()).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = CancellationToken::new();
            let app = Router::new().route("/peer", get(peer));
            let task = tokio::spawn(crate::connections::serve(
                listener,
                app,
                ConnectionOptions::default(),
                Some(Arc::clone(&tls)),
                stop.clone(),
            ));
            Self {
                addr,
                tls,
                stop,
                task,
            }
        }

        fn url(&self) -> String {
            format!("https://localhost:{}/peer", self.addr.port())
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap().unwrap();
        }
    }

    /// An HTTPS client trusting only `ca`, presenting `identity` if given.
    fn client(ca: &Ca, identity: Option<&(String, String)>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)));
        if let Some((cert, key)) = identity {
            let pem = format!("{cert}\n{key}");
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    async fn body(client: &reqwest::Client, url: &str) -> Result<String, reqwest::Error> {
        client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }

    #[tokio::test]
    async fn given_required_client_auth_when_client_presents_a_ca_signed_certificate_should_put_its_identity_in_request_extensions()
     {
        let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
        let files = Files::new(&server_ca, ClientAuth::Required, Some(&client_ca));
        let listener = Listener::start(&files.options).await;
        let identity = client_ca.leaf("billing-service", &["billing.internal"]);

        let seen = body(&client(&server_ca, Some(&identity)), &listener.url()).await;

        assert_eq!(seen.unwrap(), "cn=billing-service dns=billing.internal");
        listener.stop().await;
    }

    #[tokio::test]
    async fn given_required_client_auth_when_client_has_no_certificate_or_one_of_another_ca_should_refuse_it()
     {
        let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
        let files = Files::new(&server_ca, ClientAuth::Required, Some(&client_ca));
        let listener = Listener::start(&files.options).await;
        let stranger = Ca::new("another CA").leaf("intruder", &["intruder.example"]);

        let without = body(&client(&server_ca, None), &listener.url()).await;
        let foreign = body(&client(&server_ca, Some(&stranger)), &listener.url()).await;

        assert!(without.is_err(), "{without:?}");
        assert!(foreign.is_err(), "{foreign:?}");
        listener.stop().await;
    }

    #[tokio::test]
    async fn given_optional_client_auth_should_serve_clients_with_and_without_a_certificate() {
        let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
        let files = Files::new(&server_ca, ClientAuth::Optional, Some(&client_ca));
        let listener = Listener::start(&files.options).await;
        let identity = client_ca.leaf("reporting", &[]);

        let anonymous = body(&client(&server_ca, None), &listener.url()).await;
        let known = body(&client(&server_ca, Some(&identity)), &listener.url()).await;

        assert_eq!(anonymous.unwrap(), "anonymous");
        assert_eq!(known.unwrap(), "cn=reporting dns=");
        listener.stop().await;
    }

    #[tokio::test]
    async fn given_tls_listener_when_a_client_sends_plain_http_should_answer_400_tls_required_and_close()
     {
        let ca = Ca::new("server CA");
        let files = Files::new(&ca, ClientAuth::None, None);
        let listener = Listener::start(&files.options).await;
        let mut tcp = TcpStream::connect(listener.addr).await.unwrap();

        tcp.write_all(b"GET /peer HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();

        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\"code\":\"tls_required\""), "{answer}");
        listener.stop().await;
    }

    #[tokio::test]
    async fn given_tls_listener_when_a_client_never_starts_the_handshake_should_close_it() {
        let ca = Ca::new("server CA");
        let mut files = Files::new(&ca, ClientAuth::None, None);
        files.options.handshake_timeout_ms = std::num::NonZeroU64::new(100).unwrap();
        let listener = Listener::start(&files.options).await;
        let mut tcp = TcpStream::connect(listener.addr).await.unwrap();

        // Bounded only so that a regression fails instead of hanging.
        let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut [0u8; 16]))
            .await
            .expect("the server should close a silent connection");

        assert_eq!(read.unwrap(), 0, "closed without an answer");
        listener.stop().await;
    }

    #[tokio::test]
    async fn given_rotated_files_when_reloaded_should_serve_new_connections_the_new_certificate_and_keep_open_ones()
     {
        let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
        let files = Files::new(&old_ca, ClientAuth::None, None);
        let listener = Listener::start(&files.options).await;
        let connected = client(&old_ca, None);
        assert_eq!(
            body(&connected, &listener.url()).await.unwrap(),
            "anonymous"
        );

        assert!(!listener.tls.reload(false), "nothing changed yet");
        files.write_server(&new_ca);
        assert!(listener.tls.reload(false));

        let fresh_new = body(&client(&new_ca, None), &listener.url()).await;
        let fresh_old = body(&client(&old_ca, None), &listener.url()).await;
        let reused = body(&connected, &listener.url()).await;
        assert_eq!(fresh_new.unwrap(), "anonymous");
        assert!(
            fresh_old.is_err(),
            "a new connection gets the new certificate"
        );
        assert_eq!(reused.unwrap(), "anonymous", "the open connection goes on");
        listener.stop().await;
    }

    #[tokio::test]
    async fn given_a_bad_pem_when_reloaded_should_keep_the_previous_certificate() {
        let ca = Ca::new("server CA");
        let files = Files::new(&ca, ClientAuth::None, None);
        let listener = Listener::start(&files.options).await;

        std::fs::write(
            &files.options.cert_file,
            "-----BEGIN CERTIFICATE-----\nnope\n",
        )
        .unwrap();
        assert!(!listener.tls.reload(false), "a bad file is not loaded");
        let other_key = ca.leaf("other", &["localhost"]).1;
        files.write_server(&ca);
        std::fs::write(&files.options.key_file, other_key).unwrap();
        assert!(
            !listener.tls.reload(false),
            "a key of another certificate is not loaded"
        );

        let served = body(&client(&ca, None), &listener.url()).await;
        assert_eq!(served.unwrap(), "anonymous");
        let metrics = {
            let mut registry = Registry::default();
            listener.tls.metrics.register(&mut registry);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        assert!(
            metrics.contains("herald_tls_reloads_total{outcome=\"failed\"} 2"),
            "{metrics}"
        );
        drop(files.dir);
        listener.stop().await;
    }

    #[test]
    fn given_missing_or_mismatched_files_when_loaded_should_fail_naming_the_file() {
        let ca = Ca::new("server CA");
        let files = Files::new(&ca, ClientAuth::None, None);
        let mut missing = files.options.clone();
        missing.key_file = files.dir.path().join("absent.key");
        std::fs::write(&files.options.key_file, ca.leaf("other", &[]).1).unwrap();

        let absent = Tls::load(&missing, TlsMetrics::default()).unwrap_err();
        let mismatched = Tls::load(&files.options, TlsMetrics::default()).unwrap_err();

        assert!(absent.to_string().contains("tls.key_file"), "{absent}");
        assert!(absent.to_string().contains("absent.key"), "{absent}");
        assert!(
            matches!(mismatched, Error::CertifiedKey { .. }),
            "{mismatched}"
        );
    }

    #[test]
    fn given_a_subject_with_several_attributes_should_read_its_common_name() {
        let (cert, _) = Ca::new("CA").leaf("orders-worker", &["a.example", "b.example"]);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();

        let peer = PeerCertificate::from_der(&der).unwrap();

        assert_eq!(peer.subject_common_name.as_deref(), Some("orders-worker"));
        assert_eq!(peer.dns_names, ["a.example", "b.example"]);
    }
}
