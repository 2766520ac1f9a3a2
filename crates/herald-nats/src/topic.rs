//! The topic catalogue: every topic's settings in the key-value stream
//! (bucket [`TOPICS_BUCKET`]), cached per node.
//!
//! Every node caches the topics it uses. A change on any node is a message
//! on the bucket's subjects, which every node subscribes to: the entry is
//! dropped at once. An entry is also read again after [`CACHE_TTL`], which
//! bounds how stale a node can be after it missed a change (while
//! disconnected). A read that started before a change never caches what it
//! read (the generation check in [`Catalogue::put`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_backend::{Result, TopicInfo};
use herald_types::TopicName;
use tokio::task::JoinHandle;

use crate::names::{Names, stored_prefix};
use crate::unavailable;

/// The bucket of topic settings.
pub(crate) const TOPICS_BUCKET: &str = "topics";

/// How long a node uses a cached topic before reading it again.
const CACHE_TTL: Duration = Duration::from_secs(2);

/// A topic as a node uses it.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) info: TopicInfo,
    /// The settings' revision in the key-value stream.
    pub(crate) revision: u64,
    /// Per partition: its stream, its subject prefix (the stream holds
    /// `<prefix>.>`) and the subject of its plain events (`<prefix>.e`).
    pub(crate) streams: Vec<String>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) subjects: Vec<String>,
    /// Per partition: where its stream republishes what it stored
    /// (headers only, with `Nats-Sequence`), `<stored>.>`.
    pub(crate) stored: Vec<String>,
    /// Spreads this node's publishes of events with neither key nor
    /// partition when the topic does not deduplicate.
    pub(crate) round_robin: AtomicU64,
}

impl Topic {
    pub(crate) fn new(names: &Names, info: TopicInfo, revision: u64) -> Self {
        let name = &info.spec.name;
        let partitions = 0..info.spec.partitions;
        let prefixes: Vec<String> = partitions
            .clone()
            .map(|partition| names.partition_prefix(name, partition))
            .collect();
        Self {
            streams: partitions
                .map(|partition| names.partition_stream(name, partition))
                .collect(),
            subjects: prefixes
                .iter()
                .map(|prefix| format!("{prefix}.e"))
                .collect(),
            stored: prefixes
                .iter()
                .map(|prefix| stored_prefix(prefix))
                .collect(),
            prefixes,
            info,
            revision,
            round_robin: AtomicU64::new(0),
        }
    }

    pub(crate) fn name(&self) -> &TopicName {
        &self.info.spec.name
    }
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<TopicName, (Arc<Topic>, Instant)>,
    /// Bumped by every change seen.
    generation: u64,
}

/// The per-node cache of topics, kept fresh by a subscription.
#[derive(Debug)]
pub(crate) struct Catalogue {
    cache: Arc<Mutex<Cache>>,
    watcher: JoinHandle<()>,
}

impl Catalogue {
    pub(crate) async fn new(client: async_nats::Client, names: &Names) -> Result<Self> {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let mut changes = client
            .subscribe(names.kv_bucket_filter(TOPICS_BUCKET))
            .await
            .map_err(|error| unavailable("subscribe to topic changes", error))?;
        let watcher = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                while changes.next().await.is_some() {
                    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
                    cache.entries.clear();
                    cache.generation += 1;
                }
            })
        };
        Ok(Self { cache, watcher })
    }

    /// The cached topic, if fresh; else the generation to hand to
    /// [`Catalogue::put`] after reading it.
    pub(crate) fn get(&self, name: &TopicName) -> std::result::Result<Arc<Topic>, u64> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.entries.get(name) {
            Some((topic, at)) if at.elapsed() < CACHE_TTL => Ok(Arc::clone(topic)),
            _ => Err(cache.generation),
        }
    }

    /// Caches `topic`, read while the cache was at `generation`, unless a
    /// change came since.
    pub(crate) fn put(&self, topic: &Arc<Topic>, generation: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.generation == generation {
            cache
                .entries
                .insert(topic.name().clone(), (Arc::clone(topic), Instant::now()));
        }
    }

    /// Forgets every topic (this node changed one).
    pub(crate) fn invalidate(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.entries.clear();
        cache.generation += 1;
    }

    pub(crate) fn close(&self) {
        self.watcher.abort();
    }
}
