//! Bearer JWTs (`[auth.jwt]`), verified with `jsonwebtoken`.
//!
//! The validation is explicit, never the crate's defaults: only the
//! configured algorithm (so never `none`, and never an HMAC token checked
//! against a public key), `exp`, `iss`, `aud` and `sub` required, `nbf`
//! checked when present, with `leeway_s` of clock skew. The identity is
//! `jwt:<sub>`; its permissions are the configured claim's list of
//! `{actions, resources}` (none when absent).

use std::collections::HashMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::permissions::Permission;
use crate::config::JwtOptions;

/// A configured verifier.
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    validation: Validation,
    claim: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Keys {
    One(DecodingKey),
    /// By `kid`.
    Set(HashMap<String, DecodingKey>),
}

/// A verified token's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`.
    pub subject: String,
    /// The permissions claim.
    pub permissions: Vec<Permission>,
}

/// Why the JWT configuration cannot be used. Messages name the key or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key file could not be read.
    #[error("cannot read {key} file {path}")]
    Read {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file does not hold a usable key.
    #[error("{key}: {path} holds no usable {algorithm} key: {message}")]
    BadKey {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: String,
        /// The algorithm configured.
        algorithm: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a token was refused (401).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Bad signature, expired, wrong issuer or audience, malformed.
    #[error("invalid JWT: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The token's `kid` is not in the JWKS.
    #[error("invalid JWT: no key with its kid in the JWKS")]
    UnknownKid,
    /// The permissions claim is not a list of permissions.
    #[error("invalid JWT: claim {claim} is not a list of {{actions, resources}}: {message}")]
    BadPermissions {
        /// The claim.
        claim: String,
        /// What is wrong.
        message: String,
    },
}

impl Verifier {
    /// The verifier `options` describe (they passed `config`'s checks), or
    /// `None` when JWT is off.
    pub fn new(options: &JwtOptions) -> Result<Option<Self>, ConfigError> {
        let algorithm = match options.algorithm.as_str() {
            "" => return Ok(None),
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => Algorithm::EdDSA,
        };
        let keys = if algorithm == Algorithm::HS256 {
            Keys::One(DecodingKey::from_secret(options.secret.as_bytes()))
        } else if options.jwks_file.is_empty() {
            let key = "auth.jwt.public_key_file";
            let path = options.public_key_file.clone();
            let pem = read(key, &path)?;
            let decoded = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            };
            Keys::One(decoded.map_err(|error| ConfigError::BadKey {
                key,
                path,
                algorithm: options.algorithm.clone(),
                message: error.to_string(),
            })?)
        } else {
            let key = "auth.jwt.jwks_file";
            let path = options.jwks_file.clone();
            let bad = |message: String| ConfigError::BadKey {
                key,
                path: path.clone(),
                algorithm: options.algorithm.clone(),
                message,
            };
            let set: JwkSet = serde_json::from_slice(&read(key, &path)?)
                .map_err(|error| bad(error.to_string()))?;
            let mut keys = HashMap::new();
            for jwk in &set.keys {
                let (Some(kid), Ok(decoding)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk))
                else {
                    continue;
                };
                keys.insert(kid.clone(), decoding);
            }
            if keys.is_empty() {
                return Err(bad("no key with a `kid`".to_owned()));
            }
            Keys::Set(keys)
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = options.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&options.issuer]);
        validation.set_audience(&[&options.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Ok(Some(Self {
            keys,
            validation,
            claim: options.permissions_claim.clone(),
        }))
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let key = match &self.keys {
            Keys::One(key) => key,
            Keys::Set(keys) => {
                let header = jsonwebtoken::decode_header(token)?;
                header
                    .kid
                    .as_ref()
                    .and_then(|kid| keys.get(kid))
                    .ok_or(TokenError::UnknownKid)?
            }
        };
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
            token,
            key,
            &self.validation,
        )?;
        let mut claims = data.claims;
        let subject = match claims.remove("sub") {
            Some(serde_json::Value::String(subject)) => subject,
            _ => String::new(),
        };
        let permissions = match claims.remove(&self.claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(value) => {
                let permissions: Vec<PermissionClaim> =
                    serde_json::from_value(value).map_err(|error| TokenError::BadPermissions {
                        claim: self.claim.clone(),
                        message: error.to_string(),
                    })?;
                permissions.into_iter().map(|claim| claim.0).collect()
            }
        };
        Ok(Claims {
            subject,
            permissions,
        })
    }
}

#[derive(Deserialize)]
#[serde(transparent)]
struct PermissionClaim(Permission);

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn options() -> JwtOptions {
        JwtOptions {
            algorithm: "HS256".into(),
            secret: SECRET.into(),
            issuer: "https://idp.example".into(),
            audience: "herald".into(),
            ..JwtOptions::default()
        }
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn token(claims: &serde_json::Value, algorithm: Algorithm, secret: &str) -> String {
        encode(
            &Header::new(algorithm),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn claims(overrides: &serde_json::Value) -> serde_json::Value {
        let mut claims = serde_json::json!({
            "sub": "svc-a",
            "iss": "https://idp.example",
            "aud": "herald",
            "exp": now() + 300,
            "herald_permissions": [{"actions": ["topics:publish"], "resources": ["orders.*"]}],
        });
        for (name, value) in overrides.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    #[test]
    fn given_valid_hs256_token_should_yield_subject_and_permissions() {
        let verifier = Verifier::new(&options()).unwrap().unwrap();
        let verified = verifier
            .verify(&token(
                &claims(&serde_json::json!({})),
                Algorithm::HS256,
                SECRET,
            ))
            .unwrap();
        assert_eq!(verified.subject, "svc-a");
        assert_eq!(verified.permissions.len(), 1);
    }

    #[test]
    fn given_bad_tokens_should_each_be_refused() {
        let verifier = Verifier::new(&options()).unwrap().unwrap();
        let cases = [
            (
                "expired",
                token(
                    &claims(&serde_json::json!({"exp": now() - 3_600})),
                    Algorithm::HS256,
                    SECRET,
                ),
            ),
            (
                "not yet valid",
                token(
                    &claims(&serde_json::json!({"nbf": now() + 3_600})),
                    Algorithm::HS256,
                    SECRET,
                ),
            ),
            (
                "other issuer",
                token(
                    &claims(&serde_json::json!({"iss": "https://evil"})),
                    Algorithm::HS256,
                    SECRET,
                ),
            ),
            (
                "other audience",
                token(
                    &claims(&serde_json::json!({"aud": "other"})),
                    Algorithm::HS256,
                    SECRET,
                ),
            ),
            (
                "no audience",
                token(
                    &claims(&serde_json::json!({"aud": null})),
                    Algorithm::HS256,
                    SECRET,
                ),
            ),
            (
                "no exp",
                token(
                    &claims(&serde_json::json!({"exp": null})),
                    Algorithm::HS256,
                    SECRET,
                ),
            ),
            (
                "wrong secret",
                token(
                    &claims(&serde_json::json!({})),
                    Algorithm::HS256,
                    "another-secret-another-secret-xx",
                ),
            ),
            (
                "other algorithm",
                token(&claims(&serde_json::json!({})), Algorithm::HS512, SECRET),
            ),
            (
                "bad permissions",
                token(
                    &claims(&serde_json::json!({"herald_permissions": ["admin"]})),
                    Algorithm::HS256,
                    SECRET,
                ),
            ),
            ("garbage", "a.b.c".to_owned()),
        ];
        for (case, token) in cases {
            assert!(verifier.verify(&token).is_err(), "{case} was accepted");
        }
    }

    #[test]
    fn given_alg_none_token_should_be_refused() {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = engine.encode(claims(&serde_json::json!({})).to_string());
        let verifier = Verifier::new(&options()).unwrap().unwrap();
        assert!(verifier.verify(&format!("{header}.{body}.")).is_err());
    }
}
