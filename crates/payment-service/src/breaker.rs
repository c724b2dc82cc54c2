//! A circuit breaker: when the gateway is failing, stop calling it for a while instead of adding load to
//! a struggling service and time to every payment, then probe carefully before trusting it again.
//!
//! ```text
//! closed    --of the last `window` outcomes, at least `min_calls`, failure rate >= threshold--> open
//! open      --`open_for` elapsed (checked when a caller asks)-------------------------------> half-open
//! half-open --a trial call succeeds-----------------------------------------------------------> closed (window emptied)
//! half-open --a trial call fails--------------------------------------------------------------> open (for `open_for` again)
//! ```
//!
//! The window counts outcomes, not time: "the last 20 calls" judges a quiet gateway and a busy one the
//! same way, and a few failures long ago still weigh until newer calls push them out. Open refuses
//! every call without making it. Half-open lets at most `half_open_trials` calls through at once; the
//! first trial outcome decides, and calls beyond the limit are refused as if open.
//!
//! A caller asks with [`CircuitBreaker::try_acquire`] and reports the call's outcome on the [`Permit`].
//! A permit dropped without an outcome counts as neither success nor failure: the call was never made
//! or never finished (the caller gave up first), so it says nothing about the gateway; a half-open
//! trial slot it held is freed for the next caller. Outcomes of calls that started before the latest
//! transition are ignored: they describe a gateway the breaker has already judged.
//!
//! Time comes from a [`Clock`], so tests walk through every transition without sleeping. The state sits
//! behind a std `Mutex` held for a few field updates only, never across an await.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Where the breaker reads the time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real, monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to; clones share one time. For tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The breaker's tuning, valid by construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    failure_threshold: f64,
    min_calls: usize,
    window: usize,
    open_for: Duration,
    half_open_trials: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid circuit breaker settings: {0}")]
pub struct InvalidBreakerConfig(String);

impl BreakerConfig {
    /// `failure_threshold`: the failure rate (above 0, at most 1) that opens the breaker;
    /// `min_calls`: how many outcomes (1 to `window`) the window must hold before it can open;
    /// `window`: how many of the latest outcomes count; `open_for`: how long it stays open;
    /// `half_open_trials`: how many trial calls (at least 1) half-open lets through at once.
    pub fn new(
        failure_threshold: f64,
        min_calls: usize,
        window: usize,
        open_for: Duration,
        half_open_trials: usize,
    ) -> Result<Self, InvalidBreakerConfig> {
        let invalid = |reason: String| Err(InvalidBreakerConfig(reason));
        if !(failure_threshold > 0.0 && failure_threshold <= 1.0) {
            return invalid(format!(
                "the failure threshold must be above 0 and at most 1, not {failure_threshold}"
            ));
        }
        if window == 0 {
            return invalid("the window must hold at least 1 call".into());
        }
        if min_calls == 0 || min_calls > window {
            return invalid(format!(
                "the minimum number of calls must be from 1 to the window ({window}), not {min_calls}"
            ));
        }
        if open_for.is_zero() {
            return invalid("the open duration must be longer than 0".into());
        }
        if half_open_trials == 0 {
            return invalid("half-open must let at least 1 trial call through".into());
        }
        Ok(Self {
            failure_threshold,
            min_calls,
            window,
            open_for,
            half_open_trials,
        })
    }
}

contracts::text_enum! {
    /// The breaker's state as exported: the gauge `orderflow_circuit_breaker_state` holds 0, 1 or 2.
    pub enum State {
        Closed => "closed",
        Open => "open",
        HalfOpen => "half_open",
    }
}

impl State {
    fn gauge_value(&self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        }
    }
}

/// The breaker refused a call. `retry_after`: when it may let a call through again; zero when it is
/// half-open and all trial slots are taken (a trial is deciding right now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open; calls may resume in {} ms", .retry_after.as_millis())]
pub struct Open {
    pub retry_after: Duration,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// Resolved once, so a transition updates them with an atomic store, even inside the lock.
    metrics: BreakerMetrics,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every transition; a permit remembers the one it was given in, so that a late outcome
    /// from an earlier phase is recognised and ignored.
    generation: u64,
}

#[derive(Debug)]
enum Phase {
    Closed {
        /// The latest outcomes, oldest first; `true` is a failure.
        outcomes: VecDeque<bool>,
        failures: usize,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        trials_in_flight: usize,
    },
}

impl Phase {
    fn closed() -> Self {
        Phase::Closed {
            outcomes: VecDeque::new(),
            failures: 0,
        }
    }

    fn state(&self) -> State {
        match self {
            Phase::Closed { .. } => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct BreakerMetrics {
    state: metrics::Gauge,
    to_closed: metrics::Counter,
    to_open: metrics::Counter,
    to_half_open: metrics::Counter,
}

impl BreakerMetrics {
    fn new(name: &'static str) -> Self {
        let to = |state: State| {
            metrics::counter!("orderflow_circuit_breaker_transitions_total",
                "breaker" => name, "to" => state.as_str())
        };
        Self {
            state: metrics::gauge!("orderflow_circuit_breaker_state", "breaker" => name),
            to_closed: to(State::Closed),
            to_open: to(State::Open),
            to_half_open: to(State::HalfOpen),
        }
    }
}

/// A transition that just happened, for the log line written after the lock is released.
#[derive(Debug, Clone, Copy)]
struct Transition {
    from: State,
    to: State,
    /// The window's failures and calls, when it is what opened the breaker.
    window: Option<(usize, usize)>,
}

impl CircuitBreaker {
    /// `name` labels the metrics and log lines (`breaker="gateway"`). Starts closed.
    pub fn new(name: &'static str, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let metrics = BreakerMetrics::new(name);
        metrics.state.set(State::Closed.gauge_value());
        Self {
            name,
            config,
            clock,
            inner: Mutex::new(Inner {
                phase: Phase::closed(),
                generation: 0,
            }),
            metrics,
        }
    }

    /// The current state (an open breaker whose time is up shows as half-open).
    pub fn state(&self) -> State {
        let now = self.clock.now();
        let (state, transition) = {
            let mut inner = self.lock();
            let transition = self.expire_open(&mut inner, now);
            (inner.phase.state(), transition)
        };
        self.announce(transition);
        state
    }

    /// Asks to make one call: a permit to make it and report its outcome, or `Open` if the call must
    /// not be made now.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Open> {
        let now = self.clock.now();
        let (result, transition) = {
            let mut inner = self.lock();
            let transition = self.expire_open(&mut inner, now);
            let generation = inner.generation;
            let result = match &mut inner.phase {
                Phase::Closed { .. } => Ok(()),
                Phase::Open { until } => Err(Open {
                    retry_after: until.saturating_duration_since(now),
                }),
                Phase::HalfOpen { trials_in_flight }
                    if *trials_in_flight < self.config.half_open_trials =>
                {
                    *trials_in_flight += 1;
                    Ok(())
                }
                Phase::HalfOpen { .. } => Err(Open {
                    retry_after: Duration::ZERO,
                }),
            };
            (
                result.map(|()| Permit {
                    breaker: self,
                    generation,
                    settled: false,
                }),
                transition,
            )
        };
        self.announce(transition);
        result
    }

    /// Applies one permit's end: `Some(true)` a success, `Some(false)` a failure, `None` no outcome.
    fn settle(&self, generation: u64, outcome: Option<bool>) {
        let now = self.clock.now();
        let transition = {
            let mut inner = self.lock();
            if inner.generation != generation {
                return;
            }
            match (&mut inner.phase, outcome) {
                (Phase::Closed { .. }, None) | (Phase::Open { .. }, _) => None,
                (Phase::Closed { outcomes, failures }, Some(success)) => {
                    outcomes.push_back(!success);
                    *failures += usize::from(!success);
                    if outcomes.len() > self.config.window && outcomes.pop_front() == Some(true) {
                        *failures -= 1;
                    }
                    let (failures, calls) = (*failures, outcomes.len());
                    let rate = failures as f64 / calls as f64;
                    (calls >= self.config.min_calls && rate >= self.config.failure_threshold).then(
                        || {
                            let open = Phase::Open {
                                until: now + self.config.open_for,
                            };
                            Transition {
                                window: Some((failures, calls)),
                                ..self.enter(&mut inner, open)
                            }
                        },
                    )
                }
                (Phase::HalfOpen { trials_in_flight }, None) => {
                    // Only trial permits are given in a half-open generation.
                    *trials_in_flight = trials_in_flight.saturating_sub(1);
                    None
                }
                (Phase::HalfOpen { .. }, Some(true)) => {
                    Some(self.enter(&mut inner, Phase::closed()))
                }
                (Phase::HalfOpen { .. }, Some(false)) => {
                    let open = Phase::Open {
                        until: now + self.config.open_for,
                    };
                    Some(self.enter(&mut inner, open))
                }
            }
        };
        self.announce(transition);
    }

    /// Open turns half-open once its time is up; the first caller to look makes the change.
    fn expire_open(&self, inner: &mut Inner, now: Instant) -> Option<Transition> {
        match inner.phase {
            Phase::Open { until } if now >= until => Some(self.enter(
                inner,
                Phase::HalfOpen {
                    trials_in_flight: 0,
                },
            )),
            _ => None,
        }
    }

    /// Moves to `phase` and exports it, under the lock so the gauge never lags behind a newer state.
    fn enter(&self, inner: &mut Inner, phase: Phase) -> Transition {
        let from = inner.phase.state();
        let to = phase.state();
        inner.phase = phase;
        inner.generation += 1;
        self.metrics.state.set(to.gauge_value());
        match to {
            State::Closed => &self.metrics.to_closed,
            State::Open => &self.metrics.to_open,
            State::HalfOpen => &self.metrics.to_half_open,
        }
        .increment(1);
        Transition {
            from,
            to,
            window: None,
        }
    }

    /// Logs a transition once, saying what happens next.
    fn announce(&self, transition: Option<Transition>) {
        let Some(Transition { from, to, window }) = transition else {
            return;
        };
        let breaker = self.name;
        let from = from.as_str();
        match to {
            State::Open => {
                let (failures, calls) = window.unwrap_or_default();
                let why = if window.is_some() {
                    "too many calls failed"
                } else {
                    "the trial call failed"
                };
                tracing::warn!(
                    breaker,
                    from,
                    failures,
                    calls,
                    "breaker open ({why}): {breaker} calls fail fast for {}",
                    human(self.config.open_for)
                );
            }
            State::HalfOpen => tracing::info!(
                breaker,
                from,
                "breaker half-open: letting up to {} trial call(s) through to the {breaker}",
                self.config.half_open_trials
            ),
            State::Closed => tracing::info!(
                breaker,
                from,
                "breaker closed: the trial call succeeded; {breaker} calls flow again"
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the state consistent before anything that could panic, so a poisoned
        // lock still guards a usable state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Leave to make one call. Report its outcome with [`Permit::record`]; dropping it unreported counts
/// as no outcome (see the module documentation).
#[derive(Debug)]
#[must_use = "a permit reports the call's outcome; dropping it at once counts as no call"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    settled: bool,
}

impl Permit<'_> {
    /// `success`: the gateway answered (a decline and a refused request are answers too); `false` only
    /// for what says the gateway is unwell: a timeout, a connection failure, a 5xx or 429.
    pub fn record(mut self, success: bool) {
        self.settled = true;
        self.breaker.settle(self.generation, Some(success));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.generation, None);
        }
    }
}

/// "5 s" for whole seconds, "250 ms" otherwise: how an operator reads a duration in a log line.
fn human(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    const OPEN_FOR: Duration = Duration::from_secs(5);

    /// Opens at 50 % failures over the last 4 calls once 2 were seen; one trial at a time.
    fn breaker_with(trials: usize) -> (CircuitBreaker, ManualClock) {
        let clock = ManualClock::default();
        let config = BreakerConfig::new(0.5, 2, 4, OPEN_FOR, trials).unwrap();
        let breaker = CircuitBreaker::new("gateway", config, Arc::new(clock.clone()));
        (breaker, clock)
    }

    fn breaker() -> (CircuitBreaker, ManualClock) {
        breaker_with(1)
    }

    fn call(breaker: &CircuitBreaker, success: bool) {
        breaker.try_acquire().unwrap().record(success);
    }

    fn open(breaker: &CircuitBreaker) {
        call(breaker, false);
        call(breaker, false);
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn a_closed_breaker_lets_calls_through() {
        let (breaker, _) = breaker();
        for _ in 0..10 {
            call(&breaker, true);
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn it_opens_only_once_min_calls_were_seen() {
        let (breaker, _) = breaker();
        call(&breaker, false);
        assert_eq!(breaker.state(), State::Closed, "1 call is below min_calls");
        call(&breaker, false);
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn it_opens_at_the_threshold_over_the_window_and_not_below() {
        let (breaker, _) = breaker();
        call(&breaker, true);
        call(&breaker, true);
        call(&breaker, false);
        assert_eq!(breaker.state(), State::Closed, "1/3 is below 50 %");
        call(&breaker, true);
        assert_eq!(
            breaker.state(),
            State::Closed,
            "window [ok ok fail ok]: 1/4"
        );
        call(&breaker, false);
        assert_eq!(
            breaker.state(),
            State::Open,
            "window [ok fail ok fail]: 2/4"
        );
    }

    #[test]
    fn only_the_latest_outcomes_count() {
        let (quick, _) = breaker();
        call(&quick, true);
        call(&quick, false);
        assert_eq!(quick.state(), State::Open, "1/2 with min_calls 2");

        let (breaker, _) = breaker();
        for success in [true, true, false, true, true, true, true, false] {
            call(&breaker, success);
        }
        // The early failure has slid out: the window is [ok ok ok fail].
        assert_eq!(breaker.state(), State::Closed);
        // [ok ok fail fail] opens it, although over all calls only 3 of 9 failed.
        call(&breaker, false);
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn an_open_breaker_fails_fast_until_its_time_is_up() {
        let (breaker, clock) = breaker();
        open(&breaker);
        let refused = breaker.try_acquire().unwrap_err();
        assert_eq!(refused.retry_after, OPEN_FOR);
        clock.advance(Duration::from_secs(3));
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(2)
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(breaker.state(), State::HalfOpen);
        assert!(breaker.try_acquire().is_ok());
    }

    #[test]
    fn half_open_lets_only_the_allowed_trials_through_at_once() {
        let (breaker, clock) = breaker_with(2);
        open(&breaker);
        clock.advance(OPEN_FOR);
        let first = breaker.try_acquire().unwrap();
        let second = breaker.try_acquire().unwrap();
        let refused = breaker.try_acquire().unwrap_err();
        assert_eq!(refused.retry_after, Duration::ZERO);
        assert_eq!(breaker.state(), State::HalfOpen);
        // A trial that ends without an outcome frees its slot.
        drop(first);
        let third = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err());
        // The first outcome decides; the other trial's later outcome is ignored.
        second.record(true);
        assert_eq!(breaker.state(), State::Closed);
        third.record(false);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn a_trial_success_closes_it_with_an_empty_window() {
        let (breaker, clock) = breaker();
        open(&breaker);
        clock.advance(OPEN_FOR);
        call(&breaker, true);
        assert_eq!(breaker.state(), State::Closed);
        // The failures that opened it are forgotten: one new failure is below min_calls.
        call(&breaker, false);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn a_trial_failure_opens_it_for_another_full_period() {
        let (breaker, clock) = breaker();
        open(&breaker);
        clock.advance(OPEN_FOR + Duration::from_secs(1));
        call(&breaker, false);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.try_acquire().unwrap_err().retry_after, OPEN_FOR);
        clock.advance(OPEN_FOR);
        assert_eq!(breaker.state(), State::HalfOpen);
    }

    #[test]
    fn outcomes_of_calls_from_before_a_transition_are_ignored() {
        let (breaker, clock) = breaker();
        let slow = breaker.try_acquire().unwrap();
        open(&breaker);
        clock.advance(OPEN_FOR);
        let trial = breaker.try_acquire().unwrap();
        // A call started while closed ends during half-open: it is not a trial and decides nothing.
        slow.record(true);
        assert_eq!(breaker.state(), State::HalfOpen);
        assert!(
            breaker.try_acquire().is_err(),
            "the trial slot is still taken"
        );
        trial.record(false);
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn a_dropped_permit_counts_as_no_call() {
        let (breaker, _) = breaker();
        for _ in 0..10 {
            drop(breaker.try_acquire().unwrap());
        }
        call(&breaker, false);
        assert_eq!(breaker.state(), State::Closed, "only 1 outcome counted");
    }

    #[test]
    fn it_is_safe_to_share_between_threads() {
        let (breaker, clock) = breaker_with(3);
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (breaker, clock) = (&breaker, &clock);
                scope.spawn(move || {
                    for n in 0..500 {
                        if let Ok(permit) = breaker.try_acquire() {
                            permit.record((n + thread) % 3 != 0);
                        }
                        if n % 50 == 0 {
                            clock.advance(OPEN_FOR);
                        }
                    }
                });
            }
        });
        // Whatever the interleaving, the state is coherent: a success after the time is up closes it.
        clock.advance(OPEN_FOR);
        while breaker.state() != State::Closed {
            if let Ok(permit) = breaker.try_acquire() {
                permit.record(true);
            }
            clock.advance(OPEN_FOR);
        }
        let inner = breaker.lock();
        let Phase::Closed { outcomes, failures } = &inner.phase else {
            panic!("closed");
        };
        assert_eq!(*failures, outcomes.iter().filter(|failed| **failed).count());
    }

    #[test]
    fn invalid_settings_are_refused() {
        let second = Duration::from_secs(1);
        assert!(BreakerConfig::new(0.0, 1, 1, second, 1).is_err());
        assert!(BreakerConfig::new(1.1, 1, 1, second, 1).is_err());
        assert!(BreakerConfig::new(f64::NAN, 1, 1, second, 1).is_err());
        assert!(BreakerConfig::new(0.5, 0, 1, second, 1).is_err());
        assert!(BreakerConfig::new(0.5, 5, 4, second, 1).is_err());
        assert!(BreakerConfig::new(0.5, 1, 0, second, 1).is_err());
        assert!(BreakerConfig::new(0.5, 1, 1, Duration::ZERO, 1).is_err());
        assert!(BreakerConfig::new(0.5, 1, 1, second, 0).is_err());
        assert!(BreakerConfig::new(1.0, 1, 1, second, 1).is_ok());
    }

    #[test]
    fn state_and_transitions_are_exported() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let (breaker, clock) = breaker();
            let rendered = handle.render();
            assert!(
                rendered.contains(r#"orderflow_circuit_breaker_state{breaker="gateway"} 0"#),
                "{rendered}"
            );
            open(&breaker);
            assert!(
                handle
                    .render()
                    .contains(r#"orderflow_circuit_breaker_state{breaker="gateway"} 1"#)
            );
            clock.advance(OPEN_FOR);
            assert_eq!(breaker.state(), State::HalfOpen);
            assert!(
                handle
                    .render()
                    .contains(r#"orderflow_circuit_breaker_state{breaker="gateway"} 2"#)
            );
            call(&breaker, true);
            let rendered = handle.render();
            assert!(rendered.contains(r#"orderflow_circuit_breaker_state{breaker="gateway"} 0"#));
            for to in ["open", "half_open", "closed"] {
                let line = format!(
                    r#"orderflow_circuit_breaker_transitions_total{{breaker="gateway",to="{to}"}} 1"#
                );
                assert!(rendered.contains(&line), "{line} in {rendered}");
            }
        });
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(5)), "5 s");
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
        assert_eq!(human(Duration::from_millis(1500)), "1500 ms");
    }
}
