//! API keys: records in the backend's `Kv` (bucket [`BUCKET`], key = key
//! id), never the secret itself.
//!
//! ```text
//! token   hrd_<key id: 16 hex>_<secret: 32 random bytes, base64url, 43 chars>
//! stored  {key_id, name, permissions, limits, created_at, last_used_at,
//!          expires_at, hash = hex SHA-256(token), previous hash + until}
//! verify  parse → Kv get(key id) (cached) → SHA-256(token) == hash,
//!         compared in constant time; not expired; else the previous hash
//!         while a rotation's overlap lasts
//! ```
//!
//! Why SHA-256 and not a password hash (argon2, bcrypt): the secret is 256
//! random bits, so there is nothing to guess from a stolen hash; password
//! hashes are slow on purpose to protect low-entropy human passwords, and
//! would make every request pay tens of milliseconds for no gain.
//!
//! The key id in the token lets a lookup read one record instead of
//! searching by hash; knowing an id (it is listed to admins) gives nothing
//! without the secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use herald_backend::{Expect, Kv};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::limits::LimitOverrides;
use super::permissions::Permission;

/// The `Kv` bucket of key records.
pub const BUCKET: &str = "auth.keys";
/// Every API key starts with this.
pub const TOKEN_PREFIX: &str = "hrd_";
/// How long a looked-up record is trusted before it is read again. A
/// revocation, rotation or change made on this node takes effect at once
/// (the cache entry is replaced); one made elsewhere (a NATS-backed
/// cluster), within this.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// `last_used_at` is written at most this often per key (a write per
/// request would put a Kv write on every publish).
pub const LAST_USED_GRANULARITY_MS: i64 = 60_000;
/// Records cached at most; past it the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// A stored key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id (in its token, in URLs).
    pub key_id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub permissions: Vec<Permission>,
    /// Rate limits and quotas that differ from the server's `[auth.limits]`.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last use, ms since the epoch (written at most once a minute).
    pub last_used_at: Option<i64>,
    /// Refused from this time on, ms since the epoch.
    pub expires_at: Option<i64>,
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// The hash of the token before the last rotation, accepted until
    /// `previous_until` (a rotation's overlap).
    pub previous_hash: Option<String>,
    /// End of the overlap, ms since the epoch.
    pub previous_until: Option<i64>,
}

impl KeyRecord {
    /// Whether `token` is this key's current secret (or its previous one
    /// during an overlap) at `now_ms`, and the key has not expired.
    pub fn accepts(&self, token: &str, now_ms: i64) -> bool {
        if self.expires_at.is_some_and(|expires| now_ms >= expires) {
            return false;
        }
        let presented = hash(token);
        let current = equal(&presented, &self.hash);
        let previous = match (&self.previous_hash, self.previous_until) {
            (Some(previous), Some(until)) if now_ms < until => equal(&presented, previous),
            _ => false,
        };
        current | previous
    }
}

/// A new secret: the token to hand out once and its hash to store.
#[derive(Debug)]
pub struct NewSecret {
    /// `hrd_<key id>_<secret>`.
    pub token: String,
    /// Hex SHA-256 of `token`.
    pub hash: String,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The OS random number generator failed.
    #[error("cannot draw random bytes for a key")]
    Random(#[source] getrandom::Error),
    /// A stored record is not valid JSON.
    #[error("the record of key {key_id} is corrupt")]
    Corrupt {
        /// The key.
        key_id: String,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] herald_backend::Error),
}

/// A fresh key id (16 hex digits).
pub fn new_key_id() -> Result<String, Error> {
    let mut bytes = [0_u8; 8];
    getrandom::fill(&mut bytes).map_err(Error::Random)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// A fresh secret for `key_id`.
pub fn new_secret(key_id: &str) -> Result<NewSecret, Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(Error::Random)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let token = format!("{TOKEN_PREFIX}{key_id}_{secret}");
    let hash = hash(&token);
    Ok(NewSecret { token, hash })
}

/// The key id inside an `hrd_` token, if it has the shape of one.
pub fn key_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let well_formed = key_id.len() == 16
        && key_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && !secret.is_empty();
    well_formed.then_some(key_id)
}

/// Hex SHA-256 of `token`.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Constant-time equality of two hex hashes.
pub fn equal(left: &str, right: &str) -> bool {
    left.len() == right.len() && bool::from(left.as_bytes().ct_eq(right.as_bytes()))
}

/// Key records through `Kv`, with a small cache in front of lookups.
#[derive(Debug, Default)]
pub struct KeyStore {
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    record: Option<Arc<KeyRecord>>,
    read_at: Instant,
}

impl KeyStore {
    /// The record of `key_id` (from the cache when fresh).
    pub async fn find(&self, kv: &dyn Kv, key_id: &str) -> Result<Option<Arc<KeyRecord>>, Error> {
        if let Some(cached) = self.cached(key_id) {
            return Ok(cached);
        }
        let record = self
            .read(kv, key_id)
            .await?
            .map(|(record, _)| Arc::new(record));
        self.remember(key_id, record.clone());
        Ok(record)
    }

    /// The record and its revision, read from `Kv`.
    pub async fn read(&self, kv: &dyn Kv, key_id: &str) -> Result<Option<(KeyRecord, u64)>, Error> {
        let Some(entry) = kv.kv_get(BUCKET, key_id).await? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&entry.value).map_err(|source| Error::Corrupt {
            key_id: key_id.to_owned(),
            source,
        })?;
        Ok(Some((record, entry.revision)))
    }

    /// Writes `record` if the stored one is at `expect`; the cache takes it
    /// at once.
    pub async fn write(
        &self,
        kv: &dyn Kv,
        record: KeyRecord,
        expect: Expect,
    ) -> Result<u64, Error> {
        let value = serde_json::to_vec(&record).map_err(|source| Error::Corrupt {
            key_id: record.key_id.clone(),
            source,
        })?;
        let revision = kv
            .kv_put(BUCKET, &record.key_id, Bytes::from(value), expect)
            .await?;
        let key_id = record.key_id.clone();
        self.remember(&key_id, Some(Arc::new(record)));
        Ok(revision)
    }

    /// Deletes the record; returns whether there was one. Takes effect at
    /// once on this node.
    pub async fn delete(&self, kv: &dyn Kv, key_id: &str) -> Result<bool, Error> {
        let existed = kv.kv_delete(BUCKET, key_id, Expect::Any).await?;
        self.remember(key_id, None);
        Ok(existed)
    }

    /// Every record, by key id.
    pub async fn list(&self, kv: &dyn Kv) -> Result<Vec<KeyRecord>, Error> {
        let mut records = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let keys = kv.kv_keys(BUCKET, "", after.as_deref(), 1_000).await?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for key_id in &keys {
                if let Some((record, _)) = self.read(kv, key_id).await? {
                    records.push(record);
                }
            }
            after = Some(last);
        }
        Ok(records)
    }

    /// Records that `key_id` was used at `now_ms`, if the stored
    /// `last_used_at` is older than [`LAST_USED_GRANULARITY_MS`]. Best
    /// effort: a concurrent change wins.
    pub async fn touch(&self, kv: &dyn Kv, record: &KeyRecord, now_ms: i64) {
        if record
            .last_used_at
            .is_some_and(|last| now_ms - last < LAST_USED_GRANULARITY_MS)
        {
            return;
        }
        let Ok(Some((mut stored, revision))) = self.read(kv, &record.key_id).await else {
            return;
        };
        if stored
            .last_used_at
            .is_some_and(|last| now_ms - last < LAST_USED_GRANULARITY_MS)
        {
            return;
        }
        stored.last_used_at = Some(now_ms);
        // A lost race only delays the timestamp by one more request.
        let _ = self.write(kv, stored, Expect::Revision(revision)).await;
    }

    fn cached(&self, key_id: &str) -> Option<Option<Arc<KeyRecord>>> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cached = cache.get(key_id)?;
        (cached.read_at.elapsed() < CACHE_TTL).then(|| cached.record.clone())
    }

    fn remember(&self, key_id: &str, record: Option<Arc<KeyRecord>>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY && !cache.contains_key(key_id) {
            cache.clear();
        }
        cache.insert(
            key_id.to_owned(),
            Cached {
                record,
                read_at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(secret: &NewSecret) -> KeyRecord {
        KeyRecord {
            key_id: "0123456789abcdef".into(),
            name: "ci".into(),
            permissions: vec![Permission::admin()],
            limits: LimitOverrides::default(),
            created_at: 0,
            last_used_at: None,
            expires_at: None,
            hash: secret.hash.clone(),
            previous_hash: None,
            previous_until: None,
        }
    }

    #[test]
    fn given_new_secret_should_have_prefix_key_id_and_256_random_bits() {
        let key_id = new_key_id().unwrap();
        let secret = new_secret(&key_id).unwrap();
        assert!(secret.token.starts_with("hrd_"));
        assert_eq!(key_id_of(&secret.token), Some(key_id.as_str()));
        assert_eq!(secret.token.len(), 4 + 16 + 1 + 43);
        assert_ne!(secret.token, new_secret(&key_id).unwrap().token);
        assert_eq!(secret.hash, hash(&secret.token));
        assert!(!secret.hash.contains(&secret.token[21..]));
    }

    #[test]
    fn given_malformed_tokens_should_have_no_key_id() {
        for token in [
            "",
            "hrd_",
            "hrd_abc_x",
            "Bearer",
            "hrd_0123456789abcdeg_x",
            "hrd_0123456789abcdef_",
        ] {
            assert_eq!(key_id_of(token), None, "{token}");
        }
    }

    #[test]
    fn given_record_when_token_checked_should_accept_only_its_secret_before_expiry() {
        let secret = new_secret("0123456789abcdef").unwrap();
        let mut stored = record(&secret);
        assert!(stored.accepts(&secret.token, 1));
        assert!(!stored.accepts(&format!("{}x", secret.token), 1));
        stored.expires_at = Some(10);
        assert!(stored.accepts(&secret.token, 9));
        assert!(!stored.accepts(&secret.token, 10));
    }

    #[test]
    fn given_rotation_with_overlap_when_checked_should_accept_old_secret_until_overlap_ends() {
        let old = new_secret("0123456789abcdef").unwrap();
        let new = new_secret("0123456789abcdef").unwrap();
        let mut stored = record(&new);
        stored.previous_hash = Some(old.hash.clone());
        stored.previous_until = Some(100);
        assert!(stored.accepts(&new.token, 50));
        assert!(stored.accepts(&old.token, 50));
        assert!(!stored.accepts(&old.token, 100));
        assert!(stored.accepts(&new.token, 100));
    }
}
