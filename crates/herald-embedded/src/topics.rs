//! [`Topics`] on the embedded backend: topic changes run to completion
//! under the admin lock, each topic's partitions as `herald-log` logs
//! ([`crate::topic::TopicRuntime`]).

use crate::EmbeddedBackend;
use crate::Topic;
use crate::blocking;
use crate::topic::TopicRuntime;
use async_trait::async_trait;
use herald_backend::Error;
use herald_backend::Result;
use herald_backend::TopicDescription;
use herald_backend::TopicInfo;
use herald_backend::TopicSpec;
use herald_backend::TopicUpdate;
use herald_backend::Topics;
use herald_types::TopicName;
use std::sync::Arc;
use std::sync::PoisonError;
use tracing::info;

#[async_trait]
impl Topics for EmbeddedBackend {
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicInfo> {
        self.administer(move |inner| async move {
            inner.check_open()?;
            spec.validate()?;
            let _admin = inner.admin_lock().await?;
            if inner.topic(&spec.name).is_ok() {
                return Err(Error::TopicExists {
                    topic: spec.name.to_string(),
                });
            }
            {
                let topics = inner.topics.read().unwrap_or_else(PoisonError::into_inner);
                let partitions = topics
                    .values()
                    .map(|topic| u64::from(topic.info().spec.partitions))
                    .sum();
                inner.topic_limits.check(&spec, topics.len(), partitions)?;
            }
            let dir = inner.topic_dir(&spec.name);
            {
                let dir = dir.clone();
                blocking(move || {
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir).map_err(|error| Error::Unavailable {
                            detail: format!("{}: {error}", dir.display()),
                        })?;
                    }
                    Ok(())
                })
                .await?;
            }
            let info = TopicInfo {
                spec: spec.clone(),
                created_at: inner.now(),
            };
            // A topic of the same name deleted earlier leaves no stream index.
            inner.streams.purge(&spec.name).await?;
            let partitions = inner.open_partitions(&spec).await?;
            let runtime = Arc::new(Topic::new(TopicRuntime::new(
                info.clone(),
                dir,
                partitions,
                inner.dedup_run_ids,
            )));
            if let Err(error) = runtime.open_dedup(inner.now()).await {
                let _ = runtime.close().await;
                return Err(error);
            }
            let (meta, stored) = (inner.meta.clone(), info.clone());
            if let Err(error) = blocking(move || meta.put_topic(&stored)).await {
                let _ = runtime.close().await;
                return Err(error);
            }
            inner
                .topics
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(spec.name.clone(), runtime);
            info!(topic = %spec.name, partitions = spec.partitions, "Created topic.");
            Ok(info)
        })
        .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.check_open()?;
        let topics = self
            .inner
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(topics.values().map(|topic| topic.info()).collect())
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicDescription> {
        let runtime = self.inner.topic(topic)?;
        Ok(TopicDescription {
            info: runtime.info(),
            partition_info: runtime.partition_info(),
        })
    }

    async fn update_topic(&self, topic: &TopicName, update: TopicUpdate) -> Result<TopicInfo> {
        let topic = topic.clone();
        self.administer(move |inner| async move {
            let _admin = inner.admin_lock().await?;
            let runtime = inner.topic(&topic)?;
            let mut info = runtime.info();
            let spec = info.spec.updated(&update);
            spec.validate()?;
            let window_changed = spec.dedup_window_ms != info.spec.dedup_window_ms;
            info.spec = spec;
            let (meta, stored) = (inner.meta.clone(), info.clone());
            blocking(move || meta.put_topic(&stored)).await?;
            runtime.set_info(info.clone());
            runtime.set_retention(&info.spec).await?;
            if window_changed {
                // Publishes now see the ids the log holds within the new
                // window, as they would after a restart.
                runtime.rebuild_dedup(inner.now()).await?;
            }
            Ok(info)
        })
        .await
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<()> {
        let topic = topic.clone();
        self.administer(move |inner| async move {
            let _admin = inner.admin_lock().await?;
            let runtime = inner.topic(&topic)?;
            let (meta, name) = (inner.meta.clone(), topic.to_string());
            blocking(move || meta.delete_topic(&name)).await?;
            inner
                .topics
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&topic);
            runtime.close().await?;
            inner.streams.purge(&topic).await?;
            let dir = runtime.dir.clone();
            blocking(move || {
                std::fs::remove_dir_all(&dir).map_err(|error| Error::Unavailable {
                    detail: format!("{}: {error}", dir.display()),
                })
            })
            .await?;
            info!(topic = %topic, "Deleted topic.");
            Ok(())
        })
        .await
    }
}
