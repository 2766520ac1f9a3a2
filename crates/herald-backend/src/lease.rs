//! Leases: which of the nodes sharing one backend runs a background task
//! that must run on one node at a time (the job timers, the blob collector,
//! the webhook attempt log's retention).
//!
//! A lease is a key in the `Kv` bucket [`LEASES_BUCKET`] whose value names
//! its holder and the wall-clock time it lasts until. It is taken and
//! renewed by compare-and-set, so two nodes never both believe they hold
//! it from what they read: a node takes a lease that is absent or has
//! expired, renews its own every third of the lease's length, and gives
//! it up at shutdown (the next node takes it at once) — or, dying, leaves
//! it to expire. A holder that cannot renew stops its task once its own
//! lease has run out by its own clock, before any other node can take it
//! (clocks are assumed to agree to well within a lease's length).
//!
//! A backend no other process shares (the embedded one, which locks its
//! data directory: [`Backend::is_shared`]) needs no lease:
//! [`run_while_held`] runs the task at once and writes nothing.
//!
//! A task run under a lease must still be safe if it overlaps another
//! node's run for a moment (a lease that expired during a long pause): the
//! lease makes overlap rare, the task's own compare-and-set writes make it
//! harmless.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Backend, Error, Expect, Result};

/// The `Kv` bucket of leases, by name.
pub const LEASES_BUCKET: &str = "leases";

/// A lease's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    /// Who holds it (one [`Lease`]'s id).
    holder: String,
    /// Until when, in milliseconds since the epoch.
    until_ms: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// One node's claim on a named lease.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<dyn Backend>,
    name: String,
    holder: String,
    length: Duration,
    /// The revision of our value while we hold it.
    revision: Option<u64>,
    /// When our hold runs out by our own clock.
    held_until: Option<Instant>,
}

impl Lease {
    /// A claim on the lease `name` that lasts `length` unrenewed, by a
    /// holder of its own (unique per claim).
    pub fn new(backend: Arc<dyn Backend>, name: &str, length: Duration) -> Self {
        Self {
            backend,
            name: name.to_owned(),
            holder: uuid::Uuid::now_v7().to_string(),
            length,
            revision: None,
            held_until: None,
        }
    }

    /// Whether we hold the lease by our own clock.
    pub fn is_held(&self) -> bool {
        self.held_until.is_some_and(|until| Instant::now() < until)
    }

    /// Takes the lease if it is free or expired, renews it if we hold it;
    /// returns whether we hold it now. On an error the hold stands until
    /// it runs out ([`Lease::is_held`]).
    pub async fn try_hold(&mut self) -> Result<bool> {
        let started = Instant::now();
        let value = Holder {
            holder: self.holder.clone(),
            until_ms: now_ms()
                .saturating_add(i64::try_from(self.length.as_millis()).unwrap_or(i64::MAX)),
        };
        let value = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        let expect = match self.revision {
            Some(revision) => Expect::Revision(revision),
            None => match self.backend.kv_get(LEASES_BUCKET, &self.name).await? {
                None => Expect::Absent,
                Some(entry) => {
                    let current: Option<Holder> = serde_json::from_slice(&entry.value).ok();
                    match current {
                        Some(current)
                            if current.holder != self.holder && current.until_ms > now_ms() =>
                        {
                            return Ok(false);
                        }
                        // Expired, ours from before, or unreadable.
                        _ => Expect::Revision(entry.revision),
                    }
                }
            },
        };
        match self
            .backend
            .kv_put(LEASES_BUCKET, &self.name, value, expect)
            .await
        {
            Ok(revision) => {
                if self.revision.is_none() {
                    debug!(lease = self.name, holder = self.holder, "Took a lease.");
                }
                self.revision = Some(revision);
                self.held_until = Some(started + self.length);
                Ok(true)
            }
            Err(Error::RevisionMismatch { .. }) => {
                // Another node took it (ours had expired) or got there first.
                self.revision = None;
                self.held_until = None;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Gives the lease up if we hold it, so another node can take it now.
    pub async fn release(&mut self) {
        self.held_until = None;
        if let Some(revision) = self.revision.take() {
            match self
                .backend
                .kv_delete(LEASES_BUCKET, &self.name, Expect::Revision(revision))
                .await
            {
                Ok(_) | Err(Error::RevisionMismatch { .. }) => {}
                Err(error) => {
                    warn!(%error, lease = self.name, "Could not give up a lease; it expires.");
                }
            }
        }
    }
}

/// Whether anyone holds the lease `name` now (by this node's clock): a
/// node that keeps a lease of its own says it is alive this way.
pub async fn is_held(backend: &dyn Backend, name: &str) -> Result<bool> {
    Ok(backend
        .kv_get(LEASES_BUCKET, name)
        .await?
        .and_then(|entry| serde_json::from_slice::<Holder>(&entry.value).ok())
        .is_some_and(|holder| holder.until_ms > now_ms()))
}

/// Runs `task` while this node holds the lease `name` (see the module
/// docs), until `cancel` fires: the task gets a token that fires when the
/// lease is lost or at shutdown, and is started again whenever the lease
/// is taken again. Returns once the task has stopped and the lease is
/// given up.
pub async fn run_while_held<F, Fut>(
    backend: Arc<dyn Backend>,
    name: impl Into<String>,
    length: Duration,
    cancel: CancellationToken,
    mut task: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !backend.is_shared() {
        task(cancel).await;
        return;
    }
    let name: String = name.into();
    let name = name.as_str();
    let mut lease = Lease::new(backend, name, length);
    let renew_every = length / 3;
    let mut running: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        let held = match lease.try_hold().await {
            Ok(held) => held,
            Err(error) => {
                warn!(%error, lease = name, "Could not renew a lease; retrying.");
                lease.is_held()
            }
        };
        match (&running, held) {
            (None, true) => {
                info!(
                    lease = name,
                    "Holding the lease: running its task on this node."
                );
                let stop = cancel.child_token();
                running = Some((stop.clone(), tokio::spawn(task(stop))));
            }
            (Some(_), false) => {
                info!(
                    lease = name,
                    "Lost the lease: stopping its task on this node."
                );
                stop_task(running.take()).await;
            }
            _ => {}
        }
        // A task that ended on its own is started again at the next renewal.
        if running
            .as_ref()
            .is_some_and(|(_, handle)| handle.is_finished())
        {
            stop_task(running.take()).await;
        }
        let wait = match lease.held_until {
            // Renew well before it runs out, and stop by then at the latest.
            Some(until) if held => renew_every.min(until.saturating_duration_since(Instant::now())),
            _ => renew_every,
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    stop_task(running.take()).await;
    lease.release().await;
}

async fn stop_task(running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>) {
    if let Some((stop, handle)) = running {
        stop.cancel();
        if let Err(error) = handle.await
            && error.is_panic()
        {
            warn!(%error, "A lease's task panicked.");
        }
    }
}
