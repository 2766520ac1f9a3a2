//! Jobs' `notify.webhook_url`: when a job ends, its final state is POSTed
//! to the URL its submitter gave, through the same machinery as endpoints
//! (signed, retried on the schedule, dead-lettered, logged).
//!
//! The service reads the job service's transition topic (`herald.jobs`)
//! with its own queue group `webhooks.jobs`, only the ends
//! (`herald.job.succeeded`, `.failed`, `.partial`); for each it loads the
//! job's record and, when it asks to be notified, sends the transition
//! event with the job (result included) as its data. The signing secret
//! is `webhooks.job_secret`, or one generated once and kept in `Kv`
//! (`GET /v1/webhooks/jobs` shows it). Attempts are logged under the
//! pseudo-endpoint `jobs` (`GET /v1/webhooks/endpoints/jobs/attempts`).
//! There is no circuit: every job names its own receiver.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_backend::{Delivery, Expect, FetchRequest, GroupMode};
use herald_types::webhook::Secret;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::attempt::{Message, Outcome};
use crate::delivery::{Settle, after_attempt, pause, settle, take_slots};
use crate::service::{Error, Result, Shared, name, new_secret, now_ms};
use crate::store::{Trigger, message_id};

/// The pseudo-endpoint id job notifications are logged under.
pub const JOBS_ENDPOINT_ID: &str = "jobs";
/// Settings the service keeps (the generated job secret).
pub const SETTINGS_BUCKET: &str = "webhooks.settings";
const JOB_SECRET_KEY: &str = "job_secret";
/// The transitions that end a job.
const ENDS: [&str; 3] = [
    "herald.job.succeeded",
    "herald.job.failed",
    "herald.job.partial",
];

/// The secret job notifications are signed with: the configured one, else
/// the stored one, else a new one stored now.
pub(crate) async fn job_secret(shared: &Shared) -> Result<Secret> {
    if let Some(secret) = &shared.options.job_secret {
        return Ok(secret.clone());
    }
    let backend = &shared.backend;
    loop {
        if let Some(entry) = backend.kv_get(SETTINGS_BUCKET, JOB_SECRET_KEY).await? {
            let text = String::from_utf8_lossy(&entry.value);
            return Secret::parse(&text).map_err(|error| Error::Corrupt(error.to_string()));
        }
        let secret = new_secret();
        match backend
            .kv_put(
                SETTINGS_BUCKET,
                JOB_SECRET_KEY,
                Bytes::from(secret.to_string()),
                Expect::Absent,
            )
            .await
        {
            Ok(_) => return Ok(secret),
            // Another node stored one first: use it.
            Err(herald_backend::Error::RevisionMismatch { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Consumes the job transitions until `cancel` fires.
pub(crate) async fn jobs_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    let topic = shared.options.jobs_topic.clone();
    let group = name::<herald_types::GroupName>("webhooks.jobs");
    let budget = Arc::new(Semaphore::new(shared.options.max_in_flight.max(1) as usize));
    let started = now_ms();
    let mut ready = false;
    while !cancel.is_cancelled() {
        if !ready {
            // Jobs that end from when the service first ran (the group is
            // made once; the topic may appear only later, with the first job).
            let mut spec = shared.options.delivery_group(GroupMode::Queue, started);
            spec.filter.types = ENDS.iter().map(|ty| (*ty).to_owned()).collect();
            match shared.backend.put_group(&topic, &group, spec).await {
                Ok(_) => ready = true,
                // No job has run yet.
                Err(herald_backend::Error::TopicNotFound { .. }) => {
                    if !pause(&cancel, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    warn!(%error, "Could not set up job notifications; trying again.");
                    if !pause(&cancel, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(permits) = take_slots(&budget, usize::MAX, &cancel).await else {
            return;
        };
        let request = FetchRequest {
            member: shared.options.member.clone(),
            max: u32::try_from(permits.len()).unwrap_or(1),
            wait_ms: 1_000,
        };
        let fetched = tokio::select! {
            () = cancel.cancelled() => return,
            fetched = shared.backend.fetch(&topic, &group, request) => fetched,
        };
        match fetched {
            Ok(fetched) => {
                for (delivery, permit) in fetched.deliveries.into_iter().zip(permits) {
                    let shared_for_task = Arc::clone(&shared);
                    shared
                        .tasks
                        .spawn(notify(shared_for_task, delivery, permit));
                }
            }
            Err(
                herald_backend::Error::TopicNotFound { .. }
                | herald_backend::Error::GroupNotFound { .. },
            ) => ready = false,
            Err(error) => {
                warn!(%error, "Could not fetch job notifications; trying again.");
                if !pause(&cancel, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    }
}

/// One job's end: notify its URL, if it gave one.
async fn notify(shared: Arc<Shared>, delivery: Delivery, _permit: OwnedSemaphorePermit) {
    let topic = shared.options.jobs_topic.clone();
    let group = name::<herald_types::GroupName>("webhooks.jobs");
    let event = &delivery.event;
    let job_id = event.event.subject.clone().unwrap_or_default();
    let job = match shared
        .backend
        .kv_get(herald_jobs::JOBS_BUCKET, &job_id)
        .await
    {
        Ok(Some(entry)) => serde_json::from_slice::<herald_jobs::Job>(&entry.value).ok(),
        Ok(None) => None,
        Err(error) => {
            warn!(%error, job = %job_id, "Could not read a job to notify; it comes back.");
            return;
        }
    };
    let Some((job, url)) = job.and_then(|job| {
        let url = job
            .notify
            .as_ref()?
            .webhook_url
            .parse::<reqwest::Url>()
            .ok()?;
        Some((job, url))
    }) else {
        settle(&shared, &topic, &group, &delivery.delivery_id, Settle::Ack).await;
        return;
    };
    let secret = match job_secret(&shared).await {
        Ok(secret) => secret,
        Err(error) => {
            warn!(%error, "No job notification secret; the notification comes back.");
            return;
        }
    };
    // The transition event, with the whole job (its result) as data, as
    // `GET /v1/jobs/{job_id}` renders it (times in RFC 3339).
    let mut notification = event.clone();
    notification.event.datacontenttype = Some("application/json".to_owned());
    let view = herald_jobs::JobView::from(job);
    notification.event.data = Some(Bytes::from(serde_json::to_vec(&view).unwrap_or_default()));
    let body = Bytes::from(serde_json::to_vec(&notification).unwrap_or_default());
    let id = message_id(event.topic.as_str(), event.partition, event.offset);
    let message = Message {
        id: &id,
        body,
        traceparent: event.event.traceparent.as_deref(),
    };
    let now = now_ms();
    let outcome: Outcome = shared
        .sender
        .send(
            &url,
            &[&secret],
            &[],
            &message,
            now / 1000,
            shared.options.attempt_timeout,
        )
        .await;
    let (how, next) = after_attempt(
        &shared.options.schedule,
        delivery.attempt,
        &outcome,
        &format!("job notification to {url}"),
        true,
    );
    let record = shared.attempt_record(
        JOBS_ENDPOINT_ID,
        id,
        delivery.attempt,
        &outcome,
        Trigger::Scheduled,
        next,
    );
    shared.note_outcome(JOBS_ENDPOINT_ID, &outcome);
    shared
        .log_and_settle(record, &topic, &group, &delivery.delivery_id, how)
        .await;
}
