//! Receiving Herald's webhooks: every delivery is signed per Standard
//! Webhooks v1 (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//! A receiver checks it with [`verify`] before trusting the body:
//!
//! ```
//! # fn handle(headers: &http::HeaderMap, body: &[u8]) -> Result<(), herald_client::webhooks::VerifyError> {
//! let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"; // the endpoint's, from its creation
//! herald_client::webhooks::verify(secret, headers, body)?;
//! // The body is a CloudEvent in structured JSON; `webhook-id` is the
//! // same on every attempt of one message: deduplicate on it.
//! # Ok(())
//! # }
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

pub use herald_types::webhook::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, SecretError, TOLERANCE_S, VerifyError,
};

/// Verifies one delivery against the endpoint's secret (`whsec_…`) at the
/// current time: the three `webhook-*` headers present, the timestamp within
/// ±5 minutes, and a `v1` signature of the exact body made with the secret
/// (any one of several, as during a secret rotation).
pub fn verify(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    verify_at(secret, headers, body, now_s)
}

/// [`verify`] at `now_s` (Unix seconds).
pub fn verify_at(
    secret: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    now_s: i64,
) -> Result<(), VerifyError> {
    let secret = Secret::parse(secret)?;
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .ok_or(VerifyError::MissingHeader(name))
    };
    herald_types::webhook::verify(
        &secret,
        header(HEADER_ID)?,
        header(HEADER_TIMESTAMP)?,
        header(HEADER_SIGNATURE)?,
        body,
        now_s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_signed_headers_when_verified_should_accept_and_without_them_refuse() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = Secret::parse(secret)
            .unwrap()
            .sign("msg_1", 1_700_000_000, body);
        let mut headers = http::HeaderMap::new();
        headers.insert(HEADER_ID, "msg_1".parse().unwrap());
        headers.insert(HEADER_TIMESTAMP, "1700000000".parse().unwrap());
        assert_eq!(
            verify_at(secret, &headers, body, 1_700_000_010),
            Err(VerifyError::MissingHeader(HEADER_SIGNATURE))
        );
        headers.insert(HEADER_SIGNATURE, signature.parse().unwrap());
        assert_eq!(verify_at(secret, &headers, body, 1_700_000_010), Ok(()));
        assert!(verify(secret, &headers, body).is_err(), "2023 is long past");
        assert_eq!(
            verify_at("not a secret", &headers, body, 1_700_000_010),
            Err(VerifyError::Secret(SecretError::NotBase64))
        );
    }
}
