//! Standard Webhooks signatures (specification v1.0.0, scheme `v1`):
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` with the
//! endpoint's secret, sent as `webhook-signature: v1,<base64>`; several
//! space-separated signatures while a rotated secret overlaps the new one.
//!
//! A secret is 24 to 64 random bytes, written `whsec_` + standard base64
//! (the form Svix and the reference libraries print and parse). Signing and
//! verifying are pure: the caller gives the time.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest bytes a secret may have (the specification's lower bound).
pub const MIN_SECRET_BYTES: usize = 24;
/// Most bytes a secret may have (the specification's upper bound).
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a `webhook-timestamp` may be from the verifier's clock, in
/// seconds: 5 minutes, as every reference library has it.
pub const TOLERANCE_S: i64 = 5 * 60;

/// The headers of a signed delivery.
pub const HEADER_ID: &str = "webhook-id";
/// Unix seconds of the attempt.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Space-separated `v1,<base64>` entries.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

type HmacSha256 = Hmac<Sha256>;

/// An endpoint's signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not `whsec_` followed by base64.
    #[error("a webhook secret is `whsec_` followed by base64")]
    NotBase64,
    /// Too short or too long once decoded.
    #[error(
        "a webhook secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes once decoded; this one has {0}"
    )]
    Length(usize),
}

impl Secret {
    /// A secret of these bytes (24 to 64 of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len()));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// Parses `whsec_<base64>` (padding optional, as the reference
    /// libraries accept it).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::NotBase64)?;
        let bytes = STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| SecretError::NotBase64)?;
        Self::from_bytes(&bytes)
    }

    /// The `v1,<base64>` signature of one delivery.
    #[must_use]
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut signature = String::new();
        self.push_signature(&mut signature, id, timestamp, body);
        signature
    }

    /// Appends the `v1,<base64>` signature of one delivery to `out`.
    fn push_signature(&self, out: &mut String, id: &str, timestamp: i64, body: &[u8]) {
        let mac = self.mac(id, timestamp, body);
        out.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), out);
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length: cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Whether `signature` (the base64 of a `v1` entry) is this secret's,
    /// compared in constant time.
    fn matches(&self, id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        let Ok(expected) = STANDARD.decode(signature) else {
            return false;
        };
        self.mac(id, timestamp, body)
            .verify_slice(&expected)
            .is_ok()
    }
}

impl fmt::Display for Secret {
    /// The `whsec_<base64>` form, the one to show once and hand to receivers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The `webhook-signature` header value: one `v1` entry per secret (the
/// current one first, then any still overlapping after a rotation).
#[must_use]
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    // Written into one string: it is on every delivery's path.
    let mut header = String::with_capacity(48);
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        secret.push_signature(&mut header, id, timestamp, body);
    }
    header
}

/// Why a delivery did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A `webhook-*` header is missing or not text.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not Unix seconds")]
    BadTimestamp,
    /// The timestamp is more than five minutes from now.
    #[error("webhook-timestamp is {0} s from now, more than the 300 s tolerance")]
    TooOld(i64),
    /// No `v1` entry matches the secret.
    #[error("no signature matches the secret")]
    NoMatch,
    /// The secret itself is not a webhook secret.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// Verifies a delivery from its three header values and the raw body, at
/// `now_s` (Unix seconds): the timestamp within ±5 minutes and at least one
/// `v1` entry of `signatures` made with `secret`.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_s: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_s.saturating_sub(timestamp);
    if skew.saturating_abs() > TOLERANCE_S {
        return Err(VerifyError::TooOld(skew));
    }
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .any(|(version, signature)| {
            version == "v1" && secret.matches(id, timestamp, body, signature)
        });
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's test vectors
    /// (`standard-webhooks/libraries`, the Python and Rust suites).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn given_the_specification_example_when_signed_should_give_its_signature() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        assert_eq!(secret.to_string(), SECRET);
    }

    #[test]
    fn given_a_signed_delivery_when_verified_should_accept_it_and_refuse_any_change() {
        let secret = Secret::parse(SECRET).unwrap();
        let ts = TIMESTAMP.to_string();
        assert_eq!(verify(&secret, ID, &ts, SIGNATURE, BODY, TIMESTAMP), Ok(()));
        assert_eq!(
            verify(
                &secret,
                ID,
                &ts,
                SIGNATURE,
                br#"{"test": 2432232315}"#,
                TIMESTAMP
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, "msg_other", &ts, SIGNATURE, BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, ID, &ts, SIGNATURE, BODY, TIMESTAMP + 301),
            Err(VerifyError::TooOld(301))
        );
        assert_eq!(
            verify(&secret, ID, "soon", SIGNATURE, BODY, TIMESTAMP),
            Err(VerifyError::BadTimestamp)
        );
        let other = Secret::from_bytes(&[7; 32]).unwrap();
        assert_eq!(
            verify(&other, ID, &ts, SIGNATURE, BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn given_two_secrets_when_signed_should_verify_with_either() {
        let (old, new) = (
            Secret::from_bytes(&[1; 24]).unwrap(),
            Secret::from_bytes(&[2; 64]).unwrap(),
        );
        let header = signature_header([&new, &old], ID, TIMESTAMP, BODY);
        assert_eq!(header.split(' ').count(), 2);
        let ts = TIMESTAMP.to_string();
        for secret in [&old, &new] {
            assert_eq!(verify(secret, ID, &ts, &header, BODY, TIMESTAMP), Ok(()));
        }
        // An unknown version is skipped, not an error.
        let with_v1a = format!("v1a,AAAA {header}");
        assert_eq!(verify(&new, ID, &ts, &with_v1a, BODY, TIMESTAMP), Ok(()));
    }

    #[test]
    fn given_bad_secrets_when_parsed_should_say_why() {
        assert_eq!(Secret::parse("MfKQ9r8GKYqr"), Err(SecretError::NotBase64));
        assert_eq!(Secret::parse("whsec_!!!"), Err(SecretError::NotBase64));
        assert_eq!(Secret::parse("whsec_AAAA"), Err(SecretError::Length(3)));
        assert_eq!(Secret::from_bytes(&[0; 65]), Err(SecretError::Length(65)));
        // Padding is optional.
        let padded = Secret::from_bytes(&[7; 32]).unwrap().to_string();
        assert!(padded.ends_with('='));
        assert_eq!(
            Secret::parse(padded.trim_end_matches('=')),
            Secret::parse(&padded)
        );
        assert_eq!(format!("{:?}", Secret::parse(SECRET).unwrap()), "Secret(…)");
    }
}
