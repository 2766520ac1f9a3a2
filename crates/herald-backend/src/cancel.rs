//! Cancellation: operations that must not stop halfway when their caller
//! goes away, and (feature `test-util`) the harness that checks it.
//!
//! A Rust future stops at whichever `.await` it was parked on when it is
//! dropped: an HTTP client that disconnects, a gRPC stream that ends with
//! requests in flight, an SDK timeout. An operation made of several steps
//! (reserve an id, append, record the position) would then leave its first
//! steps behind. [`run_to_completion`] wraps such an operation: it is polled
//! in place, by its caller, as any future (no task hop, no reordering), and
//! only if it is dropped before finishing is the rest of it handed to a
//! spawned task, which finishes it and discards the result.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `operation` to its end even if the returned future is dropped
/// first (see the module docs). Outside a Tokio runtime a dropped operation
/// is dropped (there is nothing to finish it on).
pub fn run_to_completion<F>(operation: F) -> RunToCompletion<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    RunToCompletion {
        operation: Some(Box::pin(operation)),
    }
}

/// The future of [`run_to_completion`].
#[must_use = "futures do nothing unless polled"]
pub struct RunToCompletion<T: Send + 'static> {
    operation: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> std::fmt::Debug for RunToCompletion<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RunToCompletion")
            .field("finished", &self.operation.is_none())
            .finish()
    }
}

impl<T: Send + 'static> Future for RunToCompletion<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(operation) = self.operation.as_mut() else {
            // Polled after it returned: a caller bug, but not ours to panic on.
            return Poll::Pending;
        };
        let output = std::task::ready!(operation.as_mut().poll(cx));
        self.operation = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for RunToCompletion<T> {
    fn drop(&mut self) {
        if let Some(operation) = self.operation.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = operation.await;
            });
        }
    }
}

/// [`drop_at_each_await`] tries every poll count up to this one, then
/// doubles it.
#[cfg(feature = "test-util")]
pub const EVERY_POLL_UP_TO: usize = 64;

/// What [`drop_at_each_await`] saw at one step count.
#[cfg(feature = "test-util")]
#[derive(Debug)]
pub enum Outcome<T> {
    /// The future was dropped after this many polls without finishing.
    Dropped(usize),
    /// It finished within this many polls, with its output.
    Finished(usize, T),
}

/// The harness for cancellation: for `n = 1, 2, …` it awaits `prepare(n)`
/// (setup that is not under test), which gives a fresh operation; polls that
/// `n` times — the first at once, each later one after the operation woke
/// its task, so every poll moves it to its next `.await` — then drops it and
/// runs `check(outcome)`, which asserts the invariant the operation must
/// keep (everything or nothing; a retry answers normally). It stops after
/// the first `n` at which the operation finishes and returns that `n`.
/// Panics if none up to `max_polls` does.
///
/// `n` takes every value up to [`EVERY_POLL_UP_TO`], then doubles: an
/// operation whose wakes grow with what earlier rounds left behind (a
/// network backend's listing wakes its task per message received, and each
/// round adds a topic) is still outrun, and its first awaits, where most of
/// the state changes, are each tried.
#[cfg(feature = "test-util")]
pub async fn drop_at_each_await<Op, Prepare, PrepareFut, Check, CheckFut>(
    max_polls: usize,
    mut prepare: Prepare,
    mut check: Check,
) -> usize
where
    Op: Future,
    Prepare: FnMut(usize) -> PrepareFut,
    PrepareFut: Future<Output = Op>,
    Check: FnMut(Outcome<Op::Output>) -> CheckFut,
    CheckFut: Future<Output = ()>,
{
    let counts = (1..=EVERY_POLL_UP_TO.min(max_polls)).chain(
        std::iter::successors(Some(EVERY_POLL_UP_TO * 2), |polls| Some(polls * 2))
            .take_while(move |polls| *polls <= max_polls),
    );
    for polls in counts {
        let mut operation = Box::pin(prepare(polls).await);
        let mut finished = None;
        for _ in 0..polls {
            if let Poll::Ready(output) = Step::new(operation.as_mut()).await {
                finished = Some(output);
                break;
            }
        }
        drop(operation);
        match finished {
            Some(output) => {
                check(Outcome::Finished(polls, output)).await;
                return polls;
            }
            None => check(Outcome::Dropped(polls)).await,
        }
    }
    panic!("the operation did not finish within {max_polls} polls");
}

/// One poll of a future, taken once it asked to be polled again: resolves
/// to the poll's result.
#[cfg(feature = "test-util")]
struct Step<'a, F: Future> {
    future: Pin<&'a mut F>,
    polled: bool,
}

#[cfg(feature = "test-util")]
impl<'a, F: Future> Step<'a, F> {
    fn new(future: Pin<&'a mut F>) -> Self {
        Self {
            future,
            polled: false,
        }
    }
}

#[cfg(feature = "test-util")]
impl<F: Future> Future for Step<'_, F> {
    type Output = Poll<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polled {
            // Woken: the next poll of the future is the next step's.
            return Poll::Ready(Poll::Pending);
        }
        self.polled = true;
        match self.future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Poll::Ready(output)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn three_steps(done: Arc<AtomicUsize>) -> usize {
        for _ in 0..3 {
            tokio::task::yield_now().await;
            done.fetch_add(1, Ordering::SeqCst);
        }
        done.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn given_a_wrapped_operation_when_dropped_midway_should_still_finish() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut operation = Box::pin(run_to_completion(three_steps(Arc::clone(&done))));
        assert!(futures_poll_once(operation.as_mut()).is_pending());
        drop(operation);
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) == 3 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped operation did not finish");
    }

    #[tokio::test]
    async fn given_a_wrapped_operation_when_polled_to_the_end_should_return_its_output() {
        let done = Arc::new(AtomicUsize::new(0));
        assert_eq!(run_to_completion(three_steps(done)).await, 3);
    }

    fn futures_poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        let mut context = Context::from_waker(std::task::Waker::noop());
        future.poll(&mut context)
    }

    #[cfg(feature = "test-util")]
    #[tokio::test]
    async fn given_an_operation_of_three_awaits_should_drop_it_at_each_and_then_finish_it() {
        let mut seen = Vec::new();
        let polls = drop_at_each_await(
            10,
            |_| std::future::ready(three_steps(Arc::new(AtomicUsize::new(0)))),
            |outcome| {
                seen.push(match outcome {
                    Outcome::Dropped(polls) => (polls, None),
                    Outcome::Finished(polls, output) => (polls, Some(output)),
                });
                async {}
            },
        )
        .await;
        assert_eq!(polls, 4);
        assert_eq!(
            seen,
            vec![(1, None), (2, None), (3, None), (4, Some(3))],
            "one drop per await, then the whole run"
        );
    }
}
