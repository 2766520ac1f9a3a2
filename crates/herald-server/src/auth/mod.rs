//! Authentication and authorization: API keys, JWT, client certificates,
//! permissions per action and resource, rate limits and quotas per identity.

/// The verified client certificate of a TLS connection (mTLS).
///
/// The TLS layer inserts one into a request's extensions
/// (`request.extensions_mut().insert(PeerCertificate { .. })`) when the
/// client presented a certificate that verified against the configured
/// client CA; the auth layer maps it to an identity through `auth.mtls`.
/// Absent when the connection is plain TCP or the client sent no
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerCertificate {
    /// The subject's common name (`CN`), when the certificate has one.
    pub subject_common_name: Option<String>,
    /// The DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
}
