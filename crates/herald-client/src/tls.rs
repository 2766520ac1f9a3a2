//! `https://` endpoints: one rustls client configuration (aws-lc-rs), used
//! by both transports — the unary calls' own HTTP/2 connection
//! (`unary.rs`) and tonic's `Channel` for streams, through
//! [`TlsConnector`] — so that both trust the same CA and present the same
//! client certificate.
//!
//! tonic's own TLS is not used: it would build a second configuration from
//! the same settings, and its `Channel` would then have to carry the unary
//! calls too (slower: `unary.rs`). The channel's endpoint is given the
//! `http://` form of the address (so tonic adds nothing of its own on top
//! of the stream [`TlsConnector`] hands it) and the `https://` origin, which
//! its requests carry as `:scheme`.
//!
//! Trust: the CA certificates given to
//! [`ClientBuilder::ca_certificate`](crate::ClientBuilder::ca_certificate)
//! and none other, else the system's roots.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use crate::Error;

/// ALPN: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// What a client trusts and presents over TLS.
#[derive(Clone, Default)]
pub(crate) struct Settings {
    /// PEM CA certificates to trust instead of the system's roots.
    pub(crate) ca: Option<Vec<u8>>,
    /// PEM certificate chain and private key to present (mTLS).
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a private key in a debug print.
        f.debug_struct("Settings")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Settings {
    /// The rustls configuration these settings make.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match &self.ca {
            Some(pem) => ca_roots(pem)?,
            None => {
                let mut roots = RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    tracing::debug!(%error, "Skipped a system root certificate.");
                }
                roots.add_parsable_certificates(native.certs);
                roots
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| tls_error("the crypto provider", &error))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| tls_error("the client certificate", &error))?;
                if chain.is_empty() {
                    return Err(tls_error(
                        "the client certificate",
                        &"no PEM certificate (BEGIN CERTIFICATE)",
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|error| tls_error("the client key", &error))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| tls_error("the client certificate and key", &error))?
            }
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

fn ca_roots(pem: &[u8]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate.map_err(|error| tls_error("the CA certificate", &error))?;
        roots
            .add(certificate)
            .map_err(|error| tls_error("the CA certificate", &error))?;
    }
    if roots.is_empty() {
        return Err(tls_error(
            "the CA certificate",
            &"no PEM certificate (BEGIN CERTIFICATE)",
        ));
    }
    Ok(roots)
}

fn tls_error(what: &str, error: &dyn std::fmt::Display) -> Error {
    Error::Tls {
        reason: format!("{what}: {error}"),
    }
}

/// Opens TCP connections to one endpoint and runs the TLS handshake on
/// them. As a `Service<Uri>` it is the connector of the streams' `Channel`
/// (the URI is ignored: the connector knows its endpoint).
#[derive(Clone)]
pub(crate) struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    address: Arc<str>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector for `endpoint` (`https://host[:port]`, port 443 by
    /// default), verifying the server as `host`.
    pub(crate) fn new(endpoint: &Uri, config: Arc<ClientConfig>) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason: reason.to_owned(),
        };
        let host = endpoint.host().ok_or_else(|| invalid("no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned())
            .map_err(|_| invalid("the host is not a DNS name or an IP address"))?;
        let port = endpoint.port_u16().unwrap_or(443);
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
            address: Arc::from(format!("{host}:{port}")),
        })
    }

    /// A TLS connection to the endpoint (TCP_NODELAY, handshake done).
    pub(crate) async fn connect(&self) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&*self.address).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_ca_or_identity_that_is_not_pem_should_fail_with_a_tls_error_naming_it() {
        let bad_ca = Settings {
            ca: Some(b"not a certificate".to_vec()),
            identity: None,
        };
        let bad_identity = Settings {
            ca: None,
            identity: Some((b"nope".to_vec(), b"nope".to_vec())),
        };

        let ca_error = bad_ca.client_config().unwrap_err();
        let identity_error = bad_identity.client_config().unwrap_err();

        assert!(
            ca_error.to_string().starts_with("TLS: the CA certificate"),
            "{ca_error}"
        );
        assert!(
            identity_error
                .to_string()
                .starts_with("TLS: the client certificate"),
            "{identity_error}"
        );
    }

    #[test]
    fn given_https_endpoints_should_verify_the_host_and_default_to_port_443() {
        let config = Settings::default().client_config().unwrap();
        let named = TlsConnector::new(
            &Uri::from_static("https://herald.example"),
            Arc::clone(&config),
        )
        .unwrap();
        let ip = TlsConnector::new(&Uri::from_static("https://[::1]:7800"), config).unwrap();

        assert_eq!(&*named.address, "herald.example:443");
        assert_eq!(
            named.server_name,
            ServerName::try_from("herald.example").unwrap()
        );
        assert_eq!(&*ip.address, "[::1]:7800");
        assert!(matches!(ip.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn given_settings_with_a_key_when_printed_should_not_show_the_key() {
        let settings = Settings {
            ca: None,
            identity: Some((b"cert".to_vec(), b"SECRET KEY".to_vec())),
        };

        assert!(!format!("{settings:?}").contains("SECRET"));
    }
}
