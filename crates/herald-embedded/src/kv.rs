//! [`Kv`] on the embedded backend: buckets in `meta.redb`.

use crate::EmbeddedBackend;
use crate::blocking;
use async_trait::async_trait;
use bytes::Bytes;
use herald_backend::Error;
use herald_backend::Expect;
use herald_backend::Kv;
use herald_backend::KvDurability;
use herald_backend::KvEntry;
use herald_backend::Result;

/// Bucket and key names for the kv store: 1–200 bytes, no NUL.
pub(crate) fn check_kv_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 || name.contains('\0') {
        return Err(Error::invalid(field, "must be 1 to 200 bytes without NUL"));
    }
    Ok(())
}

#[async_trait]
impl Kv for EmbeddedBackend {
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        check_kv_name("key", key)?;
        let (meta, bucket, key) = (self.inner.meta.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || meta.kv_get(&bucket, &key)).await
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes, expect: Expect) -> Result<u64> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        check_kv_name("key", key)?;
        let (meta, bucket, key) = (self.inner.meta.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || meta.kv_put(&bucket, &key, &value, expect)).await
    }

    async fn kv_put_many(
        &self,
        entries: Vec<(String, String, Bytes)>,
        durability: KvDurability,
    ) -> Result<()> {
        self.inner.check_open()?;
        for (bucket, key, _) in &entries {
            check_kv_name("bucket", bucket)?;
            check_kv_name("key", key)?;
        }
        let meta = self.inner.meta.clone();
        blocking(move || meta.kv_put_many(&entries, durability)).await
    }

    async fn kv_delete(&self, bucket: &str, key: &str, expect: Expect) -> Result<bool> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        check_kv_name("key", key)?;
        let (meta, bucket, key) = (self.inner.meta.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || meta.kv_delete(&bucket, &key, expect)).await
    }

    async fn kv_delete_many(&self, entries: Vec<(String, String)>) -> Result<u64> {
        self.inner.check_open()?;
        for (bucket, key) in &entries {
            check_kv_name("bucket", bucket)?;
            check_kv_name("key", key)?;
        }
        let meta = self.inner.meta.clone();
        blocking(move || meta.kv_delete_many(&entries)).await
    }

    async fn kv_keys(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        let (meta, bucket, prefix, after) = (
            self.inner.meta.clone(),
            bucket.to_owned(),
            prefix.to_owned(),
            after.map(str::to_owned),
        );
        blocking(move || meta.kv_keys(&bucket, &prefix, after.as_deref(), limit)).await
    }
}
