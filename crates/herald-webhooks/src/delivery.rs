//! Delivery: an endpoint's runner in this process, its fetch loop per
//! topic, and one delivery (filter, rate limit, attempt, log, settle). The
//! module docs of [`crate::service`] tell the whole path.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use herald_backend::{AckDurability, Delivery, FetchRequest};
use herald_types::webhook::Secret;
use herald_types::{GroupName, TopicName, format_rfc3339_ms};
use reqwest::header::{HeaderName, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::attempt::{ErrorClass, Outcome};
use crate::circuit::{Circuit, Permit};
use crate::metrics::EndpointMetrics;
use crate::schedule::Schedule;
use crate::service::{
    Error, Result, Shared, event_message_id, group_name, millis, new_secret, now_ms, spec_of,
};
use crate::store::{Endpoint, EndpointStats, Trigger};

/// An endpoint's delivery machinery in this process.
#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) live: RwLock<Arc<Live>>,
    pub(crate) circuit: Mutex<Circuit>,
    pub(crate) stats: Mutex<Counts>,
    /// Its series in the service's metrics.
    pub(crate) metrics: EndpointMetrics,
    pub(crate) budget: Arc<Semaphore>,
    /// The rate limit's next free slot.
    pub(crate) next_slot: tokio::sync::Mutex<Option<Instant>>,
    /// When the current run of failures began (ms), `None` after a success.
    pub(crate) failing_since: Mutex<Option<i64>>,
    pub(crate) cancel: CancellationToken,
}

/// What a runner counted since this process started: the API's
/// [`EndpointStats`], its times kept as ms until shown.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    pub(crate) attempts: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) consecutive_failures: u32,
    pub(crate) in_flight: u32,
    pub(crate) last_attempt_ms: Option<i64>,
    pub(crate) last_success_ms: Option<i64>,
}

impl Counts {
    pub(crate) fn view(&self) -> EndpointStats {
        EndpointStats {
            attempts: self.attempts,
            succeeded: self.succeeded,
            failed: self.failed,
            consecutive_failures: self.consecutive_failures,
            in_flight: self.in_flight,
            last_attempt_at: self.last_attempt_ms.map(format_rfc3339_ms),
            last_success_at: self.last_success_ms.map(format_rfc3339_ms),
        }
    }
}

/// An endpoint as delivery uses it.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) record: Endpoint,
    pub(crate) revision: u64,
    pub(crate) url: reqwest::Url,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Its secrets, parsed, each with the end of its overlap (ms).
    pub(crate) secrets: Vec<(Secret, Option<i64>)>,
    /// The consumer group delivering to it ([`group_name`]).
    pub(crate) group: GroupName,
}

impl Live {
    pub(crate) fn new(record: Endpoint, revision: u64) -> Result<Self> {
        let spec = spec_of(&record);
        let checked = spec.check_fields(new_secret)?;
        let secrets = record
            .secrets
            .iter()
            .filter_map(|stored| Some((Secret::parse(&stored.secret).ok()?, stored.expires_at)))
            .collect();
        Ok(Self {
            group: group_name(&record.endpoint_id),
            record,
            revision,
            url: checked.url,
            headers: checked.headers,
            secrets,
        })
    }

    /// The secrets that sign at `now_ms`: the current one and those whose
    /// overlap has not ended.
    pub(crate) fn signing(&self, now_ms: i64) -> Vec<&Secret> {
        self.secrets
            .iter()
            .filter(|(_, expires)| expires.is_none_or(|end| end > now_ms))
            .map(|(secret, _)| secret)
            .collect()
    }
}

/// Fetches `runner`'s endpoint's deliveries from its group on `topic`, as
/// the circuit and the in-flight budget allow, until the runner stops.
pub(crate) async fn topic_loop(shared: Arc<Shared>, runner: Arc<Runner>, topic: TopicName) {
    let cancel = runner.cancel.clone();
    let mut ready = false;
    let wait = |duration: Duration| pause(&cancel, duration);
    while !cancel.is_cancelled() {
        let live = runner.live();
        let endpoint_id = live.record.endpoint_id.clone();
        if !ready {
            match shared.ensure_group(&live.record, &topic).await {
                Ok(()) => ready = true,
                // Its topic does not exist yet: it is waited for.
                Err(Error::Backend(herald_backend::Error::TopicNotFound { .. })) => {
                    if !wait(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    warn!(%error, endpoint = %endpoint_id, topic = %topic, "Could not set up webhook delivery; trying again.");
                    if !wait(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let permit = runner
            .circuit
            .lock()
            .map_or(Permit::Open, |mut circuit| circuit.permit(Instant::now()));
        runner.metrics.circuit(&runner.circuit_now());
        let max = match permit {
            Permit::Wait(until) => {
                if !wait(until.saturating_duration_since(Instant::now())).await {
                    return;
                }
                continue;
            }
            Permit::Probe => 1,
            Permit::Open => shared.options.max_in_flight.max(1),
        };
        let Some(permits) = take_slots(&runner.budget, max as usize, &cancel).await else {
            return;
        };
        let request = FetchRequest {
            member: shared.options.member.clone(),
            max: u32::try_from(permits.len()).unwrap_or(1),
            wait_ms: 1_000,
        };
        let group = &live.group;
        let fetched = tokio::select! {
            () = cancel.cancelled() => {
                runner.probe_unused(permit);
                return;
            }
            fetched = shared.backend.fetch(&topic, group, request) => fetched,
        };
        let deliveries = match fetched {
            Ok(fetched) => fetched.deliveries,
            Err(
                herald_backend::Error::TopicNotFound { .. }
                | herald_backend::Error::GroupNotFound { .. },
            ) => {
                runner.probe_unused(permit);
                ready = false;
                continue;
            }
            Err(error) => {
                runner.probe_unused(permit);
                warn!(%error, endpoint = %endpoint_id, topic = %topic, "Could not fetch webhook deliveries; trying again.");
                if !wait(Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if deliveries.is_empty() {
            runner.probe_unused(permit);
        }
        let probe = permit == Permit::Probe;
        for (delivery, budget) in deliveries.into_iter().zip(permits) {
            shared.tasks.spawn(deliver(
                Arc::clone(&shared),
                Arc::clone(&runner),
                topic.clone(),
                delivery,
                budget,
                probe,
            ));
        }
    }
}

impl Runner {
    pub(crate) fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(live) => Arc::clone(&live),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub(crate) fn circuit_now(&self) -> Circuit {
        self.circuit.lock().map(|c| *c).unwrap_or_default()
    }

    /// Takes a newer stored revision of the endpoint into use; `false` when
    /// its topics changed (its loops must be replaced).
    pub(crate) fn update(&self, record: &Endpoint, revision: u64) -> bool {
        let current = self.live();
        if current.record.filter.topics != record.filter.topics {
            return false;
        }
        if current.revision < revision {
            match Live::new(record.clone(), revision) {
                Ok(live) => {
                    if let Ok(mut slot) = self.live.write() {
                        *slot = Arc::new(live);
                    }
                }
                Err(error) => warn!(%error, "A stored webhook endpoint fails its checks."),
            }
        }
        true
    }

    /// A probe that found nothing to send leaves the circuit half-open.
    fn probe_unused(&self, permit: Permit) {
        if permit == Permit::Probe
            && let Ok(mut circuit) = self.circuit.lock()
            && *circuit == (Circuit::HalfOpen { probing: true })
        {
            *circuit = Circuit::HalfOpen { probing: false };
        }
    }

    /// Waits for the rate limit's next slot.
    async fn pace(&self, rate_per_s: Option<u32>) {
        let Some(rate) = rate_per_s.filter(|rate| *rate > 0) else {
            return;
        };
        let interval = Duration::from_secs(1) / rate;
        let due = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let due = next.map_or(now, |slot| slot.max(now));
            *next = Some(due + interval);
            due
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Waits `duration`; `false` when `cancel` fired first.
pub(crate) async fn pause(cancel: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(duration) => true,
    }
}

/// Slots a fetch waits a moment to gather once every slot was taken.
const REFILL: usize = 16;

/// How long a fetch waits for [`REFILL`] slots.
const REFILL_WAIT: Duration = Duration::from_millis(1);

/// One slot of `budget` (waiting for it), then as many more as are free,
/// up to `max` in all; `None` once `cancel` fires. When every slot was
/// taken (the endpoint is kept busy), it waits up to [`REFILL_WAIT`] for
/// [`REFILL`] of them: a busy endpoint's attempts end one by one, and a
/// fetch per freed slot cost more than the attempt's own work around it.
pub(crate) async fn take_slots(
    budget: &Arc<Semaphore>,
    max: usize,
    cancel: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let (first, waited) = match Arc::clone(budget).try_acquire_owned() {
        Ok(permit) => (permit, false),
        Err(_) => tokio::select! {
            () = cancel.cancelled() => return None,
            permit = Arc::clone(budget).acquire_owned() => (permit.ok()?, true),
        },
    };
    let mut slots = vec![first];
    while slots.len() < max {
        match Arc::clone(budget).try_acquire_owned() {
            Ok(permit) => slots.push(permit),
            Err(_) => break,
        }
    }
    let enough = max.min(REFILL);
    if waited && slots.len() < enough {
        let deadline = tokio::time::Instant::now() + REFILL_WAIT;
        while slots.len() < enough {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                permit = Arc::clone(budget).acquire_owned() => slots.push(permit.ok()?),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    Some(slots)
}

/// What follows attempt number `attempt` of a message (`what` names it in
/// a dead letter's reason): an ack after a success; after a failure, a
/// retry after the schedule's delay, or a dead letter after the last
/// attempt (at once for a refused target when `refused_is_final`). Returns
/// the settle and the attempt record's `next`.
pub(crate) fn after_attempt(
    schedule: &Schedule,
    attempt: u32,
    outcome: &Outcome,
    what: &str,
    refused_is_final: bool,
) -> (Settle, String) {
    if outcome.succeeded() {
        return (Settle::Ack, "acked".to_owned());
    }
    let refused = refused_is_final && outcome.class == ErrorClass::TargetNotAllowed;
    match schedule.next_delay(attempt, rand::random(), outcome.retry_after) {
        Some(delay) if !refused => (
            Settle::Nack(delay),
            format!("retry_in_ms:{}", millis(delay)),
        ),
        _ => (
            Settle::Reject(format!(
                "{what} failed after {attempt} attempts ({}): {}",
                outcome.class.as_str(),
                outcome.error.as_deref().unwrap_or("failed")
            )),
            "dead_lettered".to_owned(),
        ),
    }
}

/// Settles a delivery, logging a failure (the lease expires and the
/// message comes back: at least once).
pub(crate) async fn settle(
    shared: &Shared,
    topic: &TopicName,
    group: &GroupName,
    delivery_id: &str,
    how: Settle,
) {
    let ids = [delivery_id.to_owned()];
    let result = match how {
        Settle::Ack => {
            shared
                .backend
                .ack(topic, group, &ids, AckDurability::Async)
                .await
        }
        Settle::Nack(delay) => {
            shared
                .backend
                .nack(topic, group, &ids, Some(delay), AckDurability::Async)
                .await
        }
        Settle::Reject(reason) => {
            shared
                .backend
                .reject(topic, group, &ids, &reason, AckDurability::Async)
                .await
        }
    };
    if let Err(error) = result {
        warn!(%error, topic = %topic, group = %group, "Could not settle a webhook delivery; it comes back.");
    }
}

pub(crate) enum Settle {
    Ack,
    Nack(Duration),
    Reject(String),
}

/// One delivery: filter, rate limit, attempt, log, settle.
async fn deliver(
    shared: Arc<Shared>,
    runner: Arc<Runner>,
    topic: TopicName,
    delivery: Delivery,
    budget: OwnedSemaphorePermit,
    probe: bool,
) {
    let live = runner.live();
    let endpoint_id = live.record.endpoint_id.clone();
    let group = &live.group;
    let event = &delivery.event;
    if !live.record.filter.matches(event) {
        settle(&shared, &topic, group, &delivery.delivery_id, Settle::Ack).await;
        return;
    }
    if let Ok(mut stats) = runner.stats.lock() {
        stats.in_flight += 1;
    }
    let message_id = event_message_id(event);
    let held = if probe {
        None
    } else {
        runner
            .circuit
            .lock()
            .ok()
            .and_then(|circuit| circuit.allows(Instant::now()))
    };
    if let Some(until) = held {
        // Fetched before the circuit opened: back for when it half-opens.
        let delay = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let outcome = Outcome {
            status_code: None,
            latency: Duration::ZERO,
            class: ErrorClass::CircuitOpen,
            error: Some("the endpoint's circuit is open: not sent".to_owned()),
            response_excerpt: String::new(),
            retry_after: None,
            gone: false,
        };
        let record = shared.attempt_record(
            &endpoint_id,
            message_id,
            delivery.attempt,
            &outcome,
            Trigger::Scheduled,
            format!("retry_in_ms:{}", millis(delay)),
        );
        shared
            .log_and_settle(
                record,
                &topic,
                group,
                &delivery.delivery_id,
                Settle::Nack(delay),
            )
            .await;
        runner.done();
        return;
    }
    runner.pace(live.record.rate_limit_per_s).await;
    let outcome = shared.send(&live, event, &message_id).await;
    // The budget bounds requests to the endpoint; logging and settling go on
    // without it (the log's writer batches them), so the next attempt need
    // not wait for this one's record to be durable.
    drop(budget);
    let now = now_ms();
    let opened = {
        let Ok(mut circuit) = runner.circuit.lock() else {
            return;
        };
        if outcome.succeeded() {
            circuit.succeeded();
            false
        } else {
            circuit.failed(Instant::now(), shared.options.circuit)
        }
    };
    if opened {
        warn!(endpoint = %endpoint_id, "Webhook endpoint's circuit opened.");
    }
    runner.metrics.circuit(&runner.circuit_now());
    if let Ok(mut stats) = runner.stats.lock() {
        stats.consecutive_failures = if outcome.succeeded() {
            0
        } else {
            stats.consecutive_failures + 1
        };
    }
    let (settle_how, next) = if outcome.gone {
        // The receiver says it is gone for good (Standard Webhooks: 410).
        (
            Settle::Nack(Duration::from_secs(1)),
            "endpoint_disabled".to_owned(),
        )
    } else {
        after_attempt(
            &shared.options.schedule,
            delivery.attempt,
            &outcome,
            "webhook delivery",
            false,
        )
    };
    let record = shared.attempt_record(
        &endpoint_id,
        message_id,
        delivery.attempt,
        &outcome,
        Trigger::Scheduled,
        next,
    );
    runner.note(&outcome);
    shared
        .log_and_settle(record, &topic, group, &delivery.delivery_id, settle_how)
        .await;
    runner.done();
    // When this run of failures began, kept here as it happens (the stored
    // record follows, through the reconcile).
    let failing_since = runner.failing_since.lock().ok().and_then(|mut since| {
        let before = *since;
        if outcome.succeeded() {
            *since = None;
        } else {
            since.get_or_insert(now);
        }
        before
    });
    if outcome.succeeded() {
        if failing_since.is_some() {
            shared.note_recovery(&endpoint_id).await;
        }
    } else if outcome.gone {
        shared
            .disable(&endpoint_id, "the receiver answered 410 Gone")
            .await;
    } else {
        shared.note_failure(&endpoint_id, failing_since, now).await;
    }
}

impl Runner {
    /// Counts an attempt's outcome in the stats and the metrics.
    pub(crate) fn note(&self, outcome: &Outcome) {
        self.metrics.attempt(outcome);
        if let Ok(mut stats) = self.stats.lock() {
            let now = now_ms();
            stats.attempts += 1;
            stats.last_attempt_ms = Some(now);
            if outcome.succeeded() {
                stats.succeeded += 1;
                stats.last_success_ms = Some(now);
            } else {
                stats.failed += 1;
            }
        }
    }

    fn done(&self) {
        if let Ok(mut stats) = self.stats.lock() {
            stats.in_flight = stats.in_flight.saturating_sub(1);
        }
    }
}
