//! Deployed definitions, in the backend's key-value store: one record per
//! `namespace/name/version`, written once (compare-and-set on absence), so
//! a version never changes once deployed and an instance that started on
//! it finds it as it was. Built on the backend traits only, like the job
//! and webhook services.

use std::cmp::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use herald_backend::{Backend, Expect};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{Definition, DefinitionError};

/// The bucket of deployed definitions (key `namespace/name/version`).
pub const DEFINITIONS_BUCKET: &str = "workflows.definitions";

/// Why a deploy or a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The definition is broken or uses what Herald does not run.
    #[error(transparent)]
    Invalid(#[from] DefinitionError),
    /// This `namespace/name/version` is deployed already (a version never
    /// changes: deploy a new one).
    #[error("workflow {0} is deployed already; deploy it under a new version")]
    VersionExists(String),
    /// No such definition.
    #[error("no workflow {0}")]
    NotFound(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] herald_backend::Error),
    /// A stored record cannot be read.
    #[error("stored workflow {key} is unreadable: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A deployed definition as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDefinition {
    /// `document.namespace`.
    pub namespace: String,
    /// `document.name`.
    pub name: String,
    /// `document.version`.
    pub version: String,
    /// When it was deployed (RFC 3339, ms, UTC).
    pub deployed_at: String,
    /// The document as JSON.
    pub source: Value,
}

impl StoredDefinition {
    /// Parses the stored document again (it passed the same checks when
    /// deployed).
    pub fn definition(&self) -> Result<Definition, DefinitionError> {
        Definition::parse(&self.source.to_string())
    }
}

/// The deployed definitions.
#[derive(Clone)]
pub struct Definitions {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Definitions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Definitions")
            .finish_non_exhaustive()
    }
}

impl Definitions {
    /// The definitions in `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Checks `text` (YAML or JSON) and stores it under its
    /// `namespace/name/version`, once: a version deployed already is
    /// [`StoreError::VersionExists`], whatever the text.
    pub async fn deploy(
        &self,
        text: &str,
        deployed_at: String,
    ) -> Result<StoredDefinition, StoreError> {
        let definition = Definition::parse(text)?;
        let document = &definition.workflow.document;
        let stored = StoredDefinition {
            namespace: document.namespace.clone(),
            name: document.name.clone(),
            version: document.version.clone(),
            deployed_at,
            source: definition.source.clone(),
        };
        let key = definition.key();
        let value = serde_json::to_vec(&stored).map_err(|error| StoreError::Corrupt {
            key: key.clone(),
            reason: error.to_string(),
        })?;
        match self
            .backend
            .kv_put(DEFINITIONS_BUCKET, &key, Bytes::from(value), Expect::Absent)
            .await
        {
            Ok(_) => Ok(stored),
            Err(herald_backend::Error::RevisionMismatch { .. }) => {
                Err(StoreError::VersionExists(key))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// One version.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<StoredDefinition, StoreError> {
        let key = format!("{namespace}/{name}/{version}");
        let entry = self
            .backend
            .kv_get(DEFINITIONS_BUCKET, &key)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        serde_json::from_slice(&entry.value).map_err(|error| StoreError::Corrupt {
            key,
            reason: error.to_string(),
        })
    }

    /// The versions of `namespace/name`, oldest first (by [`compare_versions`]).
    pub async fn versions(&self, namespace: &str, name: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{namespace}/{name}/");
        let mut versions: Vec<String> = self
            .keys(&prefix)
            .await?
            .into_iter()
            .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(versions)
    }

    /// The newest version of `namespace/name`.
    pub async fn latest(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<StoredDefinition, StoreError> {
        let versions = self.versions(namespace, name).await?;
        let Some(version) = versions.last() else {
            return Err(StoreError::NotFound(format!("{namespace}/{name}")));
        };
        self.get(namespace, name, version).await
    }

    /// Every deployed `namespace/name` with its versions, oldest first.
    pub async fn list(&self) -> Result<Vec<(String, String, Vec<String>)>, StoreError> {
        let mut listed: Vec<(String, String, Vec<String>)> = Vec::new();
        for key in self.keys("").await? {
            let mut parts = key.splitn(3, '/');
            let (Some(namespace), Some(name), Some(version)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            match listed.last_mut() {
                Some((last_namespace, last_name, versions))
                    if last_namespace == namespace && last_name == name =>
                {
                    versions.push(version.to_owned());
                }
                _ => listed.push((
                    namespace.to_owned(),
                    name.to_owned(),
                    vec![version.to_owned()],
                )),
            }
        }
        for (_, _, versions) in &mut listed {
            versions.sort_by(|a, b| compare_versions(a, b));
        }
        Ok(listed)
    }

    /// Every key under `prefix`, in pages.
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        const PAGE: usize = 1_000;
        let mut keys = Vec::new();
        loop {
            let page = self
                .backend
                .kv_keys(
                    DEFINITIONS_BUCKET,
                    prefix,
                    keys.last().map(String::as_str),
                    PAGE,
                )
                .await?;
            let done = page.len() < PAGE;
            keys.extend(page);
            if done {
                return Ok(keys);
            }
        }
    }
}

/// Orders versions as semantic versions do where they are dotted numbers
/// (`1.10.0` after `1.9.2`; a pre-release `1.0.0-rc.1` before `1.0.0`),
/// and by text otherwise.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(version: &str) -> (Option<Vec<u64>>, Option<&str>) {
        let (core, pre) = match version.split_once(['-', '+']) {
            Some((core, pre)) => (core, Some(pre)),
            None => (version, None),
        };
        let numbers = core
            .split('.')
            .map(|part| part.parse::<u64>().ok())
            .collect();
        (numbers, pre)
    }
    match (split(a), split(b)) {
        ((Some(left), left_pre), (Some(right), right_pre)) => left
            .cmp(&right)
            .then_with(|| match (left_pre, right_pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(left), Some(right)) => left.cmp(right),
            })
            .then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_versions_should_order_like_semver_where_they_are_numbers() {
        let mut versions = vec!["1.10.0", "1.9.2", "1.0.0", "1.0.0-rc.1", "2", "beta", "0.9"];
        versions.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            versions,
            ["0.9", "1.0.0-rc.1", "1.0.0", "1.9.2", "1.10.0", "2", "beta"]
        );
    }
}
