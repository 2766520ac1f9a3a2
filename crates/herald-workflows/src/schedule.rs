//! `schedule.every`, `schedule.cron` and `schedule.after`: instances of a
//! workflow's latest version started on time, with `{}` as their input.
//!
//! - `every`: one every this long, whether the last one ended or not (the
//!   first one `every` after the deploy);
//! - `cron`: one at each time the pattern names, in UTC (five fields, or
//!   six with seconds first; `@hourly` and the like);
//! - `after`: one at once, then one this long after the last one ended
//!   (whatever its end).
//!
//! The schedule's state is one `Kv` entry in [`SCHEDULES_BUCKET`] under
//! `<namespace>/<name>`: the next start's due time and, once that start is
//! claimed, its instance id. A start is claimed (the id written, with the
//! entry's revision expected) before the instance starts, and the due time
//! moves on only once it started: a crash in between starts the claimed
//! instance again (starting is idempotent by id), and two engines on one
//! store never both start a tick. Ticks missed while no engine ran start
//! one instance, at once, not one per missed tick (cron's and Kubernetes'
//! `CronJob` way).

use std::str::FromStr as _;
use std::time::Duration;

use bytes::Bytes;
use herald_backend::{Error as BackendError, Expect};
use herald_types::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use crate::dsl::Schedule;
use crate::engine::{Engine, EngineError};
use crate::now_ms;
use crate::store::StoredDefinition;

/// The `Kv` bucket of time schedules' state, by `<namespace>/<name>`.
pub const SCHEDULES_BUCKET: &str = "workflows.schedules";

/// The shortest `every` (and `after`) a schedule takes.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A time schedule, checked.
#[derive(Debug, Clone)]
pub enum Clock {
    /// `every`.
    Every(Duration),
    /// `cron`.
    Cron(Box<croner::Cron>),
    /// `after`.
    After(Duration),
}

impl Clock {
    /// The time schedule of `schedule`, if it has one; an error names what
    /// is wrong (the caller adds the path).
    pub fn of(schedule: &Schedule) -> Result<Option<Self>, (&'static str, String)> {
        let set = [
            schedule.every.is_some(),
            schedule.cron.is_some(),
            schedule.after.is_some(),
            schedule.on.is_some(),
        ];
        if set.iter().filter(|set| **set).count() > 1 {
            return Err((
                "",
                "a schedule takes one of `every`, `cron`, `after` and `on`".to_owned(),
            ));
        }
        let interval = |duration: Duration, field: &'static str| {
            if duration < MIN_INTERVAL {
                Err((field, format!("at least {} s", MIN_INTERVAL.as_secs())))
            } else {
                Ok(duration)
            }
        };
        if let Some(every) = schedule.every {
            return Ok(Some(Self::Every(interval(every.0, "every")?)));
        }
        if let Some(after) = schedule.after {
            return Ok(Some(Self::After(interval(after.0, "after")?)));
        }
        if let Some(pattern) = &schedule.cron {
            let cron = croner::Cron::from_str(pattern).map_err(|error| {
                (
                    "cron",
                    format!("{pattern:?} is not a cron pattern: {error}"),
                )
            })?;
            return Ok(Some(Self::Cron(Box::new(cron))));
        }
        Ok(None)
    }

    /// The first due time of a schedule set up at `now`.
    fn first(&self, now: i64) -> i64 {
        match self {
            Self::Every(every) => now.saturating_add(millis(*every)),
            Self::Cron(cron) => next_cron(cron, now),
            Self::After(_) => now,
        }
    }

    /// The due time after the start due at `due`, at `now` (`every` and
    /// `cron`: ticks already past are skipped).
    fn next(&self, due: i64, now: i64) -> i64 {
        match self {
            Self::Every(every) => {
                let every = millis(*every).max(1);
                let next = due.saturating_add(every);
                if next > now {
                    next
                } else {
                    // The first tick of the same cadence after now.
                    now + (every - (now - due) % every)
                }
            }
            Self::Cron(cron) => next_cron(cron, due.max(now)),
            // Set when the instance ended.
            Self::After(_) => i64::MAX,
        }
    }

    /// What the schedule's entry says of it: a changed schedule starts
    /// over.
    fn describe(&self) -> String {
        match self {
            Self::Every(every) => format!("every {} ms", every.as_millis()),
            Self::Cron(cron) => format!("cron {}", cron.as_str()),
            Self::After(after) => format!("after {} ms", after.as_millis()),
        }
    }
}

/// The first cron time strictly after `after` (ms), or never.
fn next_cron(cron: &croner::Cron, after: i64) -> i64 {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after)
        .and_then(|time| cron.find_next_occurrence(&time, false).ok())
        .map_or(i64::MAX, |next| next.timestamp_millis())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A schedule's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tick {
    /// The schedule it follows ([`Clock::describe`]).
    schedule: String,
    /// When the next start is due, ms since the Unix epoch.
    due: i64,
    /// The instance claimed for that start.
    #[serde(default)]
    instance: Option<String>,
}

impl Engine {
    /// Runs `stored`'s time schedule until cancelled.
    pub(crate) async fn clock(&self, clock: Clock, stored: StoredDefinition) {
        let key = format!("{}/{}", stored.namespace, stored.name);
        loop {
            match self.tick(&clock, &stored, &key).await {
                Ok(()) => {}
                Err(error) => {
                    warn!(workflow = %key, %error, "A workflow schedule failed a step; trying again.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One step of a schedule: set it up, wait for its due time and claim
    /// the start, start the claimed instance and move the due time on.
    async fn tick(
        &self,
        clock: &Clock,
        stored: &StoredDefinition,
        key: &str,
    ) -> Result<(), EngineError> {
        let backend = self.backend();
        let describe = clock.describe();
        let (tick, revision) = match backend.kv_get(SCHEDULES_BUCKET, key).await? {
            Some(entry) => match serde_json::from_slice::<Tick>(&entry.value) {
                Ok(tick) if tick.schedule == describe => (tick, entry.revision),
                // Another schedule (a new version changed it) or an
                // unreadable entry: this one starts over.
                _ => {
                    let tick = Tick {
                        schedule: describe,
                        due: clock.first(now_ms()),
                        instance: None,
                    };
                    self.put_tick(key, &tick, Expect::Revision(entry.revision))
                        .await?;
                    return Ok(());
                }
            },
            None => {
                let tick = Tick {
                    schedule: describe,
                    due: clock.first(now_ms()),
                    instance: None,
                };
                self.put_tick(key, &tick, Expect::Absent).await?;
                return Ok(());
            }
        };
        match tick.instance.clone() {
            None => {
                let wait = u64::try_from(tick.due.saturating_sub(now_ms())).unwrap_or(0);
                if wait > 0 {
                    // Woken early now and then, to see a changed entry.
                    tokio::time::sleep(Duration::from_millis(wait.min(60_000))).await;
                    return Ok(());
                }
                let claimed = Tick {
                    instance: Some(Event::generate_id(now_ms())),
                    ..tick
                };
                self.put_tick(key, &claimed, Expect::Revision(revision))
                    .await?;
            }
            Some(id) => {
                self.start_with_id(&id, stored, Value::Object(serde_json::Map::new()))
                    .await?;
                let due = match clock {
                    Clock::After(after) => {
                        let ended = self.ended_at(&id).await?;
                        ended.saturating_add(millis(*after))
                    }
                    clock => clock.next(tick.due, now_ms()),
                };
                let next = Tick {
                    schedule: tick.schedule,
                    due,
                    instance: None,
                };
                self.put_tick(key, &next, Expect::Revision(revision))
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits for instance `id` to end; when it did, ms since the epoch.
    async fn ended_at(&self, id: &str) -> Result<i64, EngineError> {
        loop {
            let view = self.wait(id, Duration::from_secs(60)).await?;
            if view.status.ended() {
                return Ok(view
                    .ended_at
                    .as_deref()
                    .and_then(|at| herald_types::parse_rfc3339_ms(at).ok())
                    .unwrap_or_else(now_ms));
            }
            if self.cancel_token().is_cancelled() {
                // The engine stops: the schedule resumes at its next start.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Writes a schedule's entry; another writer won: nothing to do here
    /// (the next step reads what it wrote).
    async fn put_tick(&self, key: &str, tick: &Tick, expect: Expect) -> Result<(), EngineError> {
        let value = serde_json::to_vec(tick).map_err(|error| {
            EngineError::Storage(BackendError::invalid("schedule", error.to_string()))
        })?;
        match self
            .backend()
            .kv_put(SCHEDULES_BUCKET, key, Bytes::from(value), expect)
            .await
        {
            Ok(_) | Err(BackendError::RevisionMismatch { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
