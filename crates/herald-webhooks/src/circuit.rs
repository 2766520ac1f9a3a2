//! An endpoint's circuit breaker: after `failures` consecutive failed
//! attempts the circuit opens and nothing is sent for `cool_down`; then one
//! probe goes out (half-open): its success closes the circuit, its failure
//! opens it again. Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOptions {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long it stays open before a probe.
    pub cool_down: Duration,
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Attempts go out; `failures` in a row so far.
    Closed { failures: u32 },
    /// Nothing goes out until `until`.
    Open { until: Instant },
    /// One probe may go out (`probing` once it has).
    HalfOpen { probing: bool },
}

/// What the delivery loop may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send as much as the in-flight budget allows.
    Open,
    /// Send one probe, nothing else until it is back.
    Probe,
    /// Send nothing until then.
    Wait(Instant),
}

/// How long a loop waits while a probe is out before asking again.
const PROBE_POLL: Duration = Duration::from_millis(50);

impl Default for Circuit {
    fn default() -> Self {
        Self::Closed { failures: 0 }
    }
}

impl Circuit {
    /// Whether the API should call it open (open or probing).
    #[must_use]
    pub fn is_open(&self) -> bool {
        !matches!(self, Self::Closed { .. })
    }

    /// A gauge's value: 0 closed, 1 open, 2 half-open.
    #[must_use]
    pub fn gauge(&self) -> i64 {
        match self {
            Self::Closed { .. } => 0,
            Self::Open { .. } => 1,
            Self::HalfOpen { .. } => 2,
        }
    }

    /// Asks to send at `now`; an open circuit whose cool-down has passed
    /// turns half-open and grants the probe once.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match *self {
            Self::Closed { .. } => Permit::Open,
            Self::Open { until } if now < until => Permit::Wait(until),
            Self::Open { .. } | Self::HalfOpen { probing: false } => {
                *self = Self::HalfOpen { probing: true };
                Permit::Probe
            }
            Self::HalfOpen { probing: true } => Permit::Wait(now + PROBE_POLL),
        }
    }

    /// Whether an attempt already handed out may go now (one fetched
    /// before the circuit opened waits for the probe's answer).
    #[must_use]
    pub fn allows(&self, now: Instant) -> Option<Instant> {
        match *self {
            Self::Closed { .. } => None,
            Self::Open { until } => Some(until.max(now)),
            Self::HalfOpen { .. } => Some(now + PROBE_POLL),
        }
    }

    /// An attempt succeeded: closed.
    pub fn succeeded(&mut self) {
        *self = Self::Closed { failures: 0 };
    }

    /// An attempt failed at `now`; returns whether this opened the circuit.
    pub fn failed(&mut self, now: Instant, options: CircuitOptions) -> bool {
        match *self {
            Self::Closed { failures } => {
                let failures = failures + 1;
                if failures >= options.failures.max(1) {
                    *self = Self::Open {
                        until: now + options.cool_down,
                    };
                    true
                } else {
                    *self = Self::Closed { failures };
                    false
                }
            }
            Self::HalfOpen { .. } => {
                *self = Self::Open {
                    until: now + options.cool_down,
                };
                true
            }
            // An attempt that was out before it opened.
            Self::Open { .. } => false,
        }
    }

    /// Consecutive failures while closed.
    #[must_use]
    pub fn failures(&self) -> u32 {
        match self {
            Self::Closed { failures } => *failures,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: CircuitOptions = CircuitOptions {
        failures: 3,
        cool_down: Duration::from_secs(10),
    };

    #[test]
    fn given_consecutive_failures_should_open_then_probe_once_then_close_on_success() {
        let start = Instant::now();
        let mut circuit = Circuit::default();
        assert!(!circuit.failed(start, OPTIONS));
        circuit.succeeded();
        assert!(!circuit.failed(start, OPTIONS));
        assert!(!circuit.failed(start, OPTIONS));
        assert!(circuit.failed(start, OPTIONS), "third in a row opens");
        assert_eq!(
            circuit.permit(start + Duration::from_secs(1)),
            Permit::Wait(start + OPTIONS.cool_down)
        );
        let later = start + OPTIONS.cool_down;
        assert_eq!(circuit.permit(later), Permit::Probe);
        assert!(
            matches!(circuit.permit(later), Permit::Wait(_)),
            "one probe"
        );
        circuit.succeeded();
        assert_eq!(circuit.permit(later), Permit::Open);
    }

    #[test]
    fn given_a_failed_probe_should_open_again_for_a_whole_cool_down() {
        let start = Instant::now();
        let mut circuit = Circuit::Open { until: start };
        assert_eq!(circuit.permit(start), Permit::Probe);
        let failed_at = start + Duration::from_secs(3);
        assert!(circuit.failed(failed_at, OPTIONS));
        assert_eq!(
            circuit.permit(failed_at),
            Permit::Wait(failed_at + OPTIONS.cool_down)
        );
    }
}
