//! The one retry-timing policy of orderflow: exponential from a minimum, capped at a maximum, with full
//! jitter above the minimum. Everything that waits before trying again uses it: NATS connects and
//! reconnects, the outbox relay, the consumer runtime (redeliveries, pulls, declarations, a database
//! outage), supervised tasks, `orderflow up`'s child restarts and payment-service's gateway retries.
//!
//! The exponential part comes from `backon`; the jitter is ours because backon's adds up to 100 % on top
//! of the delay, where full jitter draws the delay itself from the whole range, so that many callers that
//! failed together spread out over it instead of retrying together against a recovering dependency.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// Attempts beyond this all wait the maximum; it only bounds the work of computing the ceiling.
const MAX_DOUBLINGS: u32 = 64;

/// A retry-timing policy. Copy it freely: it holds no state; [`Retries`] counts failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Exponential from `min` (doubling) up to `max`, with full jitter. `max` below `min` means `min`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            jitter: true,
        }
    }

    /// The same delays without jitter: for a single caller (one supervisor restarting its own child),
    /// where nobody retries in step with it and predictable pauses read better in its log.
    pub const fn without_jitter(self) -> Self {
        Self {
            jitter: false,
            ..self
        }
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max.max(self.min)
    }

    /// The longest pause before retry number `attempt` (1 for the first retry): `min × 2^(attempt-1)`,
    /// capped at the maximum.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let nth = attempt.clamp(1, MAX_DOUBLINGS) - 1;
        let exponential = ExponentialBuilder::new()
            .with_min_delay(self.min)
            .with_max_delay(self.max())
            .without_max_times()
            .build()
            .nth(nth as usize)
            .unwrap_or(self.max());
        // backon doubles in f32; whole microseconds take its rounding noise back out.
        let micros = (exponential.as_nanos() + 500) / 1000;
        Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX)).min(self.max())
    }

    /// The pause before retry number `attempt`, drawn with `unit` (uniform in [0, 1)) between the
    /// minimum and [`Backoff::ceiling`]; without jitter, the ceiling itself. Deterministic, for tests.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if !self.jitter {
            return ceiling;
        }
        self.min + (ceiling - self.min).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The pause before retry number `attempt`, with fresh randomness.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }

    /// The pauses for retries 1, 2, 3, ... without end, as a backon backoff.
    pub fn delays(self) -> Delays {
        Delays {
            policy: self,
            attempt: 0,
        }
    }
}

impl BackoffBuilder for Backoff {
    type Backoff = Delays;

    fn build(self) -> Delays {
        self.delays()
    }
}

/// The endless sequence of pauses of one [`Backoff`]; a `backon::Backoff` as any iterator of durations is.
#[derive(Debug, Clone)]
pub struct Delays {
    policy: Backoff,
    attempt: u32,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(self.policy.delay(self.attempt))
    }
}

/// Consecutive failures of one thing that is retried (a task, a child process, a dependency), and the
/// pause before its next try: the policy's, growing while it keeps failing and starting over once a
/// try lasted `healthy_after` (a thing that ran that long before failing was not failing in a loop).
#[derive(Debug, Clone)]
pub struct Retries {
    policy: Backoff,
    healthy_after: Duration,
    failures: u32,
    total: u64,
}

impl Retries {
    pub fn new(policy: Backoff, healthy_after: Duration) -> Self {
        Self {
            policy,
            healthy_after,
            failures: 0,
            total: 0,
        }
    }

    /// Records a failure after a try that lasted `ran` (zero: it never started) and returns the pause
    /// before the next try.
    pub fn failed(&mut self, ran: Duration) -> Duration {
        if ran >= self.healthy_after {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.total = self.total.saturating_add(1);
        self.policy.delay(self.failures)
    }

    /// Failures so far, never reset: the restart number in a log line.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

    #[test]
    fn ceilings_double_from_the_minimum_up_to_the_maximum() {
        let ceilings: Vec<u128> = (1..=8).map(|n| POLICY.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(POLICY.ceiling(0), POLICY.min());
        assert_eq!(POLICY.ceiling(u32::MAX), POLICY.max());
    }

    #[test]
    fn full_jitter_spans_minimum_to_ceiling() {
        assert_eq!(POLICY.delay_with(3, 0.0), Duration::from_millis(200));
        assert_eq!(POLICY.delay_with(3, 1.0), Duration::from_millis(800));
        assert_eq!(POLICY.delay_with(3, 0.5), Duration::from_millis(500));
        for _ in 0..100 {
            let delay = POLICY.delay(5);
            assert!(
                delay >= POLICY.min() && delay <= POLICY.ceiling(5),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn without_jitter_every_pause_is_the_ceiling() {
        let steady = POLICY.without_jitter();
        assert_eq!(steady.delay_with(2, 0.0), Duration::from_millis(400));
        assert_eq!(steady.delay(4), Duration::from_millis(1600));
    }

    #[test]
    fn retries_grow_while_failing_and_start_over_after_a_healthy_run() {
        let mut retries = Retries::new(POLICY.without_jitter(), Duration::from_secs(30));
        let pauses: Vec<u128> = (0..3)
            .map(|_| retries.failed(Duration::ZERO).as_millis())
            .collect();
        assert_eq!(pauses, [200, 400, 800]);
        assert_eq!(retries.failed(Duration::from_secs(30)).as_millis(), 200);
        assert_eq!(retries.total(), 4);
    }

    #[test]
    fn delays_never_end() {
        assert_eq!(POLICY.delays().take(1000).count(), 1000);
    }
}
