//! Group commit of group state, for every backend: callers that need their
//! changes persisted take a ticket ([`Flusher::persist_now`]) and wait for
//! a flush round that started after it; the backend's flush task runs the
//! rounds ([`Flusher::round`]). Concurrent callers share a round, and the
//! round runs in that task, so a caller that goes away changes nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use herald_backend::{Error, Result};
use tokio::sync::{Notify, watch};

/// Tickets and rounds of one backend's group-state flushes.
#[derive(Debug)]
pub struct Flusher {
    /// Tickets given out.
    requested: AtomicU64,
    /// Wakes the flush task early.
    wake: Notify,
    /// The last round: the highest ticket it covered and its outcome.
    rounds: watch::Sender<(u64, Result<()>)>,
}

impl Default for Flusher {
    fn default() -> Self {
        Self::new()
    }
}

impl Flusher {
    pub fn new() -> Self {
        Self {
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            rounds: watch::Sender::new((0, Ok(()))),
        }
    }

    /// Waits until every change made before this call is persisted: asks
    /// for a round and waits for one that started after the ask.
    pub async fn persist_now(&self) -> Result<()> {
        let mut rounds = self.rounds.subscribe();
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        loop {
            {
                let round = rounds.borrow_and_update();
                if round.0 >= ticket {
                    return round.1.clone();
                }
            }
            if rounds.changed().await.is_err() {
                return Err(Error::ShuttingDown);
            }
        }
    }

    /// Asks for a round soon, without waiting for it.
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    /// Resolves when a caller asks for a round.
    pub async fn asked(&self) {
        self.wake.notified().await;
    }

    /// Runs one round with `flush` and answers every ticket given out
    /// before it started. Only the flush task (and shutdown, after stopping
    /// it) calls this, so rounds never overlap.
    pub async fn round<F>(&self, flush: F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        let covered = self.requested.load(Ordering::SeqCst);
        let result = flush.await;
        let answer = result.clone();
        self.rounds.send_modify(|round| *round = (covered, answer));
        result
    }

    /// The last round, at shutdown (the flush task stopped): callers still
    /// waiting get its outcome, and so does every later caller.
    pub fn close(&self, result: Result<()>) {
        self.rounds.send_modify(|round| *round = (u64::MAX, result));
    }
}
