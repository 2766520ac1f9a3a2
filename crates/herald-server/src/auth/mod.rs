//! Authentication and authorization: API keys, JWT, client certificates,
//! permissions per action and resource, rate limits and quotas per
//! identity, the audit trail. `docs/security.md` is the user's guide.
//!
//! ```text
//! request ─▶ policy::enforce (a route layer: REST, SSE, WebSocket, gRPC)
//!   1. the route's rule, from ONE table keyed by route template / gRPC
//!      method (policy.rs); a route without a rule is refused (fail closed)
//!   2. open routes (/healthz, /readyz, gRPC health) pass untouched
//!   3. credentials → Principal (Auth::authenticate):
//!        Authorization: Bearer <token>   (any route)
//!        ?access_token=<token>           (SSE and WebSocket routes only;
//!                                         removed from the URI before the
//!                                         handler — and any log — sees it)
//!        the TLS client certificate      (PeerCertificate, auth.mtls)
//!      token: the bootstrap key, an `hrd_` API key, or a JWT
//!      none or bad → 401 unauthenticated (gRPC UNAUTHENTICATED)
//!   4. the rule's action on the route's resource (the path's topic or
//!      queue, the job's queue, the blob) → else 403 forbidden naming both
//!      (gRPC PERMISSION_DENIED), audited; resources inside a gRPC message
//!      or a JSON body are checked by the handler once read (Caller::require)
//!   5. requests_per_s of the identity → else 429 rate_limited + Retry-After
//!   6. the Caller goes into the request's extensions for the handler
//! ```
//!
//! With no credential source configured (loopback only, or `--insecure`),
//! every request is the `anonymous` identity with `admin` on everything.

pub mod audit;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod permissions;
pub mod policy;
pub mod quotas;

use std::sync::Arc;

use herald_log::Clock;

use self::audit::{Audit, Entry};
use self::keys::KeyStore;
use self::limits::{Buckets, Limits, RateLimits};
use self::permissions::{Action, Permission};
use crate::config::{AuthOptions, MtlsIdentity};
use crate::http::StorageSlot;
use crate::problem::{Code, Problem};

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

/// How an identity proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Auth is off (loopback without configuration, or `--insecure`).
    None,
    /// The configured bootstrap key.
    Bootstrap,
    /// An API key, by id.
    ApiKey(String),
    /// A JWT.
    Jwt,
    /// A TLS client certificate.
    Certificate,
}

/// An authenticated identity.
#[derive(Debug)]
pub struct Principal {
    /// Stable id: `anonymous`, `bootstrap`, `key:<key id>`, `jwt:<sub>`,
    /// `cert:<name>`.
    pub id: String,
    /// How it authenticated.
    pub credential: Credential,
    /// What it may do.
    pub permissions: Vec<Permission>,
    /// Its rate buckets (and limits).
    pub buckets: Arc<Buckets>,
}

impl Principal {
    /// Whether it may take `action` on `resource`.
    pub fn allows(&self, action: Action, resource: &str) -> bool {
        permissions::allows(&self.permissions, action, resource)
    }

    /// Its effective limits.
    pub fn limits(&self) -> Limits {
        self.buckets.limits()
    }
}

/// The authenticated caller of a request (in its extensions; for gRPC, in
/// the `tonic::Request`'s): what handlers check resources against.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Arc<Principal>,
    audit: Audit,
}

impl Caller {
    /// Ok when the caller may take `action` on `resource`; else 403
    /// `forbidden` naming both, audited.
    pub fn require(&self, action: Action, resource: &str) -> Result<(), Problem> {
        if self.principal.allows(action, resource) {
            return Ok(());
        }
        Err(forbidden(&self.audit, &self.principal.id, action, resource))
    }

    /// Whether the caller may take `action` on `resource` (for filtering
    /// lists; nothing is audited).
    pub fn may(&self, action: Action, resource: &str) -> bool {
        self.principal.allows(action, resource)
    }

    /// Takes a publish of `events` events, `bytes` bytes from the caller's
    /// rate buckets, or refuses with 429.
    pub fn publish(&self, events: usize, bytes: usize) -> Result<(), Problem> {
        self.principal.buckets.publish(events, bytes)
    }

    /// The identity whose quotas count, or `None` with auth off.
    pub fn accounted(&self) -> Option<&str> {
        (self.principal.credential != Credential::None).then_some(self.principal.id.as_str())
    }

    /// Audits a hard delete of `stream` on `topic` (REST and gRPC).
    pub async fn stream_hard_deleted(&self, topic: &str, stream: &str) {
        self.audit(
            "stream.hard_deleted",
            Some(Action::StreamsDelete),
            topic,
            serde_json::json!({ "stream": stream }),
        )
        .await;
    }

    /// Appends an audit entry for something this caller did.
    pub async fn audit(
        &self,
        kind: &'static str,
        action: Option<Action>,
        resource: &str,
        detail: serde_json::Value,
    ) {
        self.audit
            .record(Entry {
                kind,
                identity: self.principal.id.clone(),
                action: action.map(Action::as_str),
                resource: resource.to_owned(),
                detail,
            })
            .await;
    }
}

/// 403 `forbidden` naming `action` and `resource`; the refusal is audited.
fn forbidden(audit: &Audit, identity: &str, action: Action, resource: &str) -> Problem {
    audit.spawn(Entry {
        kind: "permission.denied",
        identity: identity.to_owned(),
        action: Some(action.as_str()),
        resource: resource.to_owned(),
        detail: serde_json::Value::Null,
    });
    Problem::new(
        Code::Forbidden,
        format!("{identity} may not {action} on \"{resource}\""),
    )
    .with("action", serde_json::json!(action.as_str()))
    .with("resource", serde_json::json!(resource))
}

/// Why auth could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The JWT keys could not be loaded.
    #[error(transparent)]
    Jwt(#[from] jwt::ConfigError),
}

/// The server's authentication state: credential sources, the key store,
/// rate buckets, the audit trail. One per server, shared by REST and gRPC.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    bootstrap_hash: Option<String>,
    jwt: Option<jwt::Verifier>,
    mtls: Vec<MtlsIdentity>,
    /// `[auth.limits]`, replaced by a configuration reload (SIGHUP).
    defaults: std::sync::RwLock<Limits>,
    public_metrics: bool,
    public_docs: bool,
    keys: KeyStore,
    rates: RateLimits,
    storage: StorageSlot,
    clock: Arc<dyn Clock>,
    audit: Audit,
}

impl Auth {
    /// Auth as `options` configure it, with keys in `storage` (once open).
    pub fn new(
        options: &AuthOptions,
        storage: StorageSlot,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, Error> {
        let bootstrap_hash =
            (!options.bootstrap_key.is_empty()).then(|| keys::hash(&options.bootstrap_key));
        Ok(Arc::new(Self {
            enabled: options.is_configured(),
            bootstrap_hash,
            jwt: jwt::Verifier::new(&options.jwt)?,
            mtls: options.mtls.clone(),
            defaults: std::sync::RwLock::new(options.limits),
            public_metrics: options.public_metrics,
            public_docs: options.public_docs,
            keys: KeyStore::default(),
            rates: RateLimits::default(),
            audit: Audit::new(storage.clone(), Arc::clone(&clock), options.is_configured()),
            storage,
            clock,
        }))
    }

    /// Whether credentials are required.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The key store.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The server's default limits (`[auth.limits]`).
    pub fn default_limits(&self) -> Limits {
        *self
            .defaults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the default limits (a configuration reload): every request
    /// from now on is held to them (an identity's buckets are rebuilt when
    /// its limits change), API keys' own overrides still applying.
    pub fn set_default_limits(&self, limits: Limits) {
        *self
            .defaults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    /// Now, in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The key-value store behind keys and quotas, or 503 while opening.
    pub fn kv(&self) -> Result<Arc<dyn herald_backend::Backend>, Problem> {
        Ok(self.storage.get()?.shared_backend())
    }

    /// A caller for `principal`.
    pub fn caller(&self, principal: Arc<Principal>) -> Caller {
        Caller {
            principal,
            audit: self.audit.clone(),
        }
    }

    /// 403 for `identity` lacking `action` on `resource` (audited).
    pub fn forbidden(&self, identity: &str, action: Action, resource: &str) -> Problem {
        forbidden(&self.audit, identity, action, resource)
    }

    /// Who presented `token` and/or `certificate`: 401 when neither proves
    /// an identity. With auth off, `anonymous` with `admin`.
    pub async fn authenticate(
        self: &Arc<Self>,
        token: Option<&str>,
        certificate: Option<&PeerCertificate>,
    ) -> Result<Arc<Principal>, Problem> {
        if !self.enabled {
            return Ok(self.principal(
                "anonymous",
                Credential::None,
                vec![Permission::admin()],
                self.default_limits(),
            ));
        }
        if let Some(token) = token {
            return self.authenticate_token(token).await;
        }
        if let Some(certificate) = certificate {
            let mut names = certificate
                .subject_common_name
                .iter()
                .chain(&certificate.dns_names);
            let identity =
                names.find_map(|name| self.mtls.iter().find(|identity| identity.name == *name));
            return match identity {
                Some(identity) => Ok(self.principal(
                    &format!("cert:{}", identity.name),
                    Credential::Certificate,
                    identity.permissions.clone(),
                    self.default_limits(),
                )),
                None => Err(unauthenticated(
                    "the client certificate maps to no identity (auth.mtls)",
                )),
            };
        }
        Err(unauthenticated(
            "credentials required: send `Authorization: Bearer <API key or JWT>`",
        ))
    }

    async fn authenticate_token(self: &Arc<Self>, token: &str) -> Result<Arc<Principal>, Problem> {
        if let Some(bootstrap) = &self.bootstrap_hash
            && keys::equal(&keys::hash(token), bootstrap)
        {
            return Ok(self.principal(
                "bootstrap",
                Credential::Bootstrap,
                vec![Permission::admin()],
                self.default_limits(),
            ));
        }
        if let Some(key_id) = keys::key_id_of(token) {
            let kv = self.kv()?;
            let record = self.keys.find(&*kv, key_id).await.map_err(Problem::from)?;
            let now = self.clock.now_ms();
            let Some(record) = record.filter(|record| record.accepts(token, now)) else {
                return Err(unauthenticated("unknown, revoked or expired API key"));
            };
            if record
                .last_used_at
                .is_none_or(|last| now - last >= keys::LAST_USED_GRANULARITY_MS)
            {
                let auth = Arc::clone(self);
                let used = Arc::clone(&record);
                tokio::spawn(async move { auth.keys.touch(&*kv, &used, now).await });
            }
            return Ok(self.principal(
                &format!("key:{}", record.key_id),
                Credential::ApiKey(record.key_id.clone()),
                record.permissions.clone(),
                record.limits.over(self.default_limits()),
            ));
        }
        if let Some(verifier) = &self.jwt {
            let claims = verifier
                .verify(token)
                .map_err(|error| unauthenticated(&error.to_string()))?;
            return Ok(self.principal(
                &format!("jwt:{}", claims.subject),
                Credential::Jwt,
                claims.permissions,
                self.default_limits(),
            ));
        }
        Err(unauthenticated(
            "the bearer token is not a valid credential",
        ))
    }

    fn principal(
        &self,
        id: &str,
        credential: Credential,
        permissions: Vec<Permission>,
        limits: Limits,
    ) -> Arc<Principal> {
        Arc::new(Principal {
            id: id.to_owned(),
            credential,
            permissions,
            buckets: self.rates.buckets(id, limits),
        })
    }

    /// Whether `/metrics` is open.
    pub fn public_metrics(&self) -> bool {
        self.public_metrics || !self.enabled
    }

    /// Whether `/openapi.json`, `/docs` and reflection are open.
    pub fn public_docs(&self) -> bool {
        self.public_docs || !self.enabled
    }
}

/// 401 `unauthenticated`.
pub fn unauthenticated(detail: &str) -> Problem {
    Problem::new(Code::Unauthenticated, detail.to_owned())
}
