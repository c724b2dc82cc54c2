//! Admission control: `POST /orders` refuses a new order (503 with `Retry-After`) while its saga
//! would likely take longer than `ORDERFLOW_ADMISSION_MAX_WAIT` to finish, instead of accepting work
//! that can only end cancelled by its deadline (ADR 16).
//!
//! The estimate of a lane is the wait of a new order's events along the saga's path: in
//! order-service's outbox, then, step after step, at the slowest consumer. Each of these queues waits
//! its backlog divided by the pace it has kept while it had one (a consumer's read from the broker,
//! the outbox's from how fast its head moves); a queue that has items waiting and finished nothing
//! for a while (its service or database is down, the broker is away) waits as long as its oldest
//! item has. Each lane is estimated on its own consumers, so express orders are still admitted while
//! the normal lane sheds.
//!
//! A lane also sheds while its events waiting in the outbox near `ORDERFLOW_OUTBOX_READY_LIMIT`, at
//! which `/health/ready` reports order-service not ready: accepting orders faster than the relay
//! publishes them would otherwise take the whole service out of its load balancer, the express lane
//! with it, well before the wait reaches the limit.

use contracts::Priority;
use contracts::topology::{
    ConsumerSpec, INVENTORY_ORDERS, INVENTORY_ORDERS_EXPRESS, ORDER_INVENTORY,
    ORDER_INVENTORY_EXPRESS, ORDER_PAYMENTS, ORDER_PAYMENTS_EXPRESS, PAYMENT_INVENTORY,
    PAYMENT_INVENTORY_EXPRESS, PAYMENT_ORDERS, PAYMENT_ORDERS_EXPRESS,
};
use platform::Shutdown;
use platform::db::{Db, duration_us, now_us};
use platform::nats::{ConsumerProgress, consumer_progress};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the estimate is brought up to date: requests read the latest one, never the broker.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The span of history a queue's pace is measured over: consumers finish their messages in pulled
/// batches of up to 100, so a shorter one swings with each batch.
const PACE_WINDOW: Duration = Duration::from_secs(5);

/// A pace measured over less than this is not trusted yet: the backlog has only just appeared.
const PACE_AT_LEAST: Duration = Duration::from_millis(500);

/// Shedding stops once the estimate is back under this share of the limit, so that an estimate
/// hovering at the limit does not switch shedding on and off (and log it) at every refresh.
const RESUME_BELOW: f64 = 0.8;

/// The share of `ORDERFLOW_OUTBOX_READY_LIMIT` at which a lane's outbox backlog sheds its new orders:
/// far enough under the limit for the orders accepted between two refreshes and the other lane's
/// events to fit.
pub(crate) const SHED_AT_OUTBOX_SHARE: u64 = 80;

/// How long the broker may take to answer one refresh.
const BROKER_TIMEOUT: Duration = Duration::from_secs(1);

/// The saga's path for one lane: steps in sequence, each done by consumers side by side.
fn path(lane: Priority) -> [&'static [ConsumerSpec]; 3] {
    match lane {
        // orders.created reaches inventory (to reserve) and payment (the charge's intent); the
        // reservation reaches payment (the amount: it charges) and order-service (an out-of-stock
        // cancels); the payment's outcome reaches order-service, which ends the order.
        Priority::Normal => [
            &[INVENTORY_ORDERS, PAYMENT_ORDERS],
            &[PAYMENT_INVENTORY, ORDER_INVENTORY],
            &[ORDER_PAYMENTS],
        ],
        Priority::Express => [
            &[INVENTORY_ORDERS_EXPRESS, PAYMENT_ORDERS_EXPRESS],
            &[PAYMENT_INVENTORY_EXPRESS, ORDER_INVENTORY_EXPRESS],
            &[ORDER_PAYMENTS_EXPRESS],
        ],
    }
}

/// What admission control shows the API: per lane, the latest estimate and whether it sheds.
#[derive(Debug, Clone)]
pub struct Admission {
    /// `None`: admission control is off, and every order is accepted.
    max_wait: Option<Duration>,
    /// A lane's events waiting in the outbox at which its new orders are refused.
    shed_at_outbox: u64,
    normal: Arc<LaneState>,
    express: Arc<LaneState>,
}

#[derive(Debug, Default)]
struct LaneState {
    estimate_us: AtomicU64,
    unpublished: AtomicU64,
    /// Orders let in since the last refresh: each adds an event to the outbox that the refresh has
    /// not seen, and a flood lets in thousands between two.
    admitted_since_refresh: AtomicU64,
    shedding: AtomicBool,
}

/// What one refresh saw of a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaneLoad {
    /// How long a new order's saga would likely take.
    pub estimate: Duration,
    /// The lane's events waiting in order-service's outbox.
    pub unpublished: u64,
}

/// A refused order: why, how long the saga would take now, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    pub cause: Shed,
    pub estimate: Duration,
    pub retry_after: Duration,
}

/// Why a lane sheds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// A new order's saga would take longer than the limit.
    SagaWait,
    /// `unpublished` events of the lane wait in the outbox, near the readiness limit.
    OutboxBacklog { unpublished: u64 },
}

impl Admission {
    /// `outbox_ready_limit`: the outbox backlog at which the service reports not ready
    /// (`ORDERFLOW_OUTBOX_READY_LIMIT`).
    pub fn new(max_wait: Option<Duration>, outbox_ready_limit: u64) -> Self {
        Self {
            max_wait,
            shed_at_outbox: (outbox_ready_limit * SHED_AT_OUTBOX_SHARE / 100).max(1),
            normal: Arc::default(),
            express: Arc::default(),
        }
    }

    /// Below this a lane's outbox backlog no longer keeps it shedding.
    fn outbox_resumes_below(&self) -> u64 {
        (self.shed_at_outbox as f64 * RESUME_BELOW) as u64
    }

    fn lane(&self, lane: Priority) -> &LaneState {
        match lane {
            Priority::Normal => &self.normal,
            Priority::Express => &self.express,
        }
    }

    /// The longest a new order's saga may be expected to take for it to be accepted.
    pub fn max_wait(&self) -> Option<Duration> {
        self.max_wait
    }

    /// Whether a new order of `lane` may be accepted now.
    pub fn admit(&self, lane: Priority) -> Result<(), Overloaded> {
        let state = self.lane(lane);
        let Some(max_wait) = self.max_wait else {
            return Ok(());
        };
        let mut unpublished = state.unpublished.load(Ordering::Relaxed);
        if !state.shedding.load(Ordering::Relaxed) {
            unpublished += state.admitted_since_refresh.fetch_add(1, Ordering::Relaxed);
            if unpublished < self.shed_at_outbox {
                return Ok(());
            }
        }
        let estimate = Duration::from_micros(state.estimate_us.load(Ordering::Relaxed));
        let cause = if unpublished >= self.outbox_resumes_below() {
            Shed::OutboxBacklog { unpublished }
        } else {
            Shed::SagaWait
        };
        Err(Overloaded {
            cause,
            estimate,
            retry_after: retry_after(estimate, max_wait),
        })
    }

    /// Takes `load` as `lane`'s latest, shedding while its estimate is above the limit or its outbox
    /// backlog near the readiness limit (and until both are well under them again); logs a change of
    /// state.
    pub fn update(&self, lane: Priority, load: LaneLoad) {
        let Some(max_wait) = self.max_wait else {
            return;
        };
        let LaneLoad {
            estimate,
            unpublished,
        } = load;
        let state = self.lane(lane);
        state
            .estimate_us
            .store(duration_us(estimate).unsigned_abs(), Ordering::Relaxed);
        state.unpublished.store(unpublished, Ordering::Relaxed);
        state.admitted_since_refresh.store(0, Ordering::Relaxed);
        metrics::gauge!("orderflow_admission_estimate_seconds", "priority" => lane.as_str())
            .set(estimate.as_secs_f64());
        let was_shedding = state.shedding.load(Ordering::Relaxed);
        let shedding = if was_shedding {
            estimate.as_secs_f64() >= max_wait.as_secs_f64() * RESUME_BELOW
                || unpublished >= self.outbox_resumes_below()
        } else {
            estimate > max_wait || unpublished >= self.shed_at_outbox
        };
        if shedding == was_shedding {
            return;
        }
        state.shedding.store(shedding, Ordering::Relaxed);
        metrics::gauge!("orderflow_admission_shedding", "priority" => lane.as_str())
            .set(if shedding { 1.0 } else { 0.0 });
        let estimate_ms = estimate.as_millis() as u64;
        let max_wait_ms = max_wait.as_millis() as u64;
        if !shedding {
            tracing::info!(
                priority = lane.as_str(),
                estimate_ms,
                max_wait_ms,
                unpublished,
                "shedding stopped: new {} orders are accepted again",
                lane.as_str()
            );
        } else if estimate > max_wait {
            tracing::info!(
                priority = lane.as_str(),
                estimate_ms,
                max_wait_ms,
                "shedding started: new {} orders are refused with 503 while their saga would take longer than ORDERFLOW_ADMISSION_MAX_WAIT",
                lane.as_str()
            );
        } else {
            tracing::info!(
                priority = lane.as_str(),
                unpublished,
                shed_at = self.shed_at_outbox,
                "shedding started: new {} orders are refused with 503 while their events waiting in the outbox are near ORDERFLOW_OUTBOX_READY_LIMIT",
                lane.as_str()
            );
        }
    }

    /// A lane's events waiting in the outbox at which its new orders are refused.
    pub fn shed_at_outbox(&self) -> u64 {
        self.shed_at_outbox
    }

    /// What `/status` shows of it: the limit (absent when off) and each lane's estimate and state.
    pub fn details(&self) -> serde_json::Value {
        let lane = |lane: Priority| {
            let state = self.lane(lane);
            serde_json::json!({
                "estimate_ms": state.estimate_us.load(Ordering::Relaxed) / 1000,
                "outbox_unpublished": state.unpublished.load(Ordering::Relaxed),
                "shedding": state.shedding.load(Ordering::Relaxed),
            })
        };
        serde_json::json!({
            "max_wait_ms": self.max_wait.map(|max_wait| max_wait.as_millis() as u64),
            "shed_at_outbox": self.shed_at_outbox,
            "normal": lane(Priority::Normal),
            "express": lane(Priority::Express),
        })
    }

    /// Registers the metrics at zero, so that dashboards and alerts have a series before the first
    /// refusal.
    pub fn describe(&self) {
        // What the dashboard draws the estimate against (0: off).
        metrics::gauge!("orderflow_admission_max_wait_seconds")
            .set(self.max_wait.map_or(0.0, |max_wait| max_wait.as_secs_f64()));
        for lane in [Priority::Normal, Priority::Express] {
            metrics::counter!("orderflow_admission_rejected_total", "priority" => lane.as_str())
                .increment(0);
            metrics::gauge!("orderflow_admission_shedding", "priority" => lane.as_str()).set(0.0);
            metrics::gauge!("orderflow_admission_estimate_seconds", "priority" => lane.as_str())
                .set(0.0);
        }
    }
}

/// How long until the backlog is likely to have drained under the limit: the estimate's excess over
/// it (new orders being refused meanwhile), at least a second.
fn retry_after(estimate: Duration, max_wait: Duration) -> Duration {
    estimate
        .saturating_sub(max_wait)
        .max(Duration::from_secs(1))
}

/// One queue on the saga's path as a refresh sees it: a durable consumer, or the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Queue {
    /// Items no worker has taken yet (undelivered messages, unpublished events).
    untaken: u64,
    /// Items still to finish: the untaken and those in hand.
    backlog: u64,
    /// A counter that grows by one per item finished: its rate is the queue's pace.
    finished: u64,
    /// How long its oldest unfinished item has waited.
    waited: Duration,
}

impl Queue {
    fn of_consumer(progress: &ConsumerProgress, now_us: i64) -> Self {
        Self {
            untaken: progress.undelivered,
            backlog: progress.backlog(),
            finished: progress.finished(),
            waited: progress
                .oldest_waiting_since
                .map(|since| age(now_us, platform::db::to_us(since)))
                .unwrap_or_default(),
        }
    }

    fn of_outbox(outbox: &platform::outbox::LaneBacklog, now_us: i64) -> Self {
        Self {
            untaken: outbox.unpublished,
            backlog: outbox.unpublished,
            // Rows leave the head of the queue in sequence order: how far the head has moved is
            // how many were published.
            finished: outbox.head_sequence.unwrap_or(0),
            waited: outbox
                .head_created_at_us
                .map(|created| age(now_us, created))
                .unwrap_or_default(),
        }
    }
}

/// One queue's pace, measured over its recent progress.
#[derive(Debug, Default)]
struct Meter {
    /// `(when, items finished)`, oldest first, since the queue's backlog appeared, over
    /// [`PACE_WINDOW`] at most.
    samples: VecDeque<(Instant, u64)>,
}

impl Meter {
    /// The wait of an item joining `queue` now.
    fn wait(&mut self, at: Instant, queue: &Queue) -> Duration {
        if queue.untaken == 0 {
            // Idle, or only a batch in hand (soon done) and messages waiting for a retry (which hold
            // nothing up): a new item is taken at once. What it did before says nothing about its
            // pace under load.
            self.samples.clear();
            return Duration::ZERO;
        }
        self.samples.push_back((at, queue.finished));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(then, _)| at.duration_since(*then) >= PACE_WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(&(since, finished_then)) = self.samples.front() else {
            return queue.waited;
        };
        let span = at.duration_since(since);
        if span < PACE_AT_LEAST {
            // Too new to tell its pace: what the oldest has waited is all that is known.
            return queue.waited;
        }
        let finished = queue.finished.saturating_sub(finished_then);
        if finished > 0 {
            let pace = finished as f64 / span.as_secs_f64();
            return Duration::from_secs_f64(queue.backlog as f64 / pace);
        }
        // Nothing finished for a while and items wait untaken: stalled (its service is down, or
        // waits for its database) for as long as its oldest item has waited.
        queue.waited
    }
}

/// The estimate of one lane, from what the broker and the outbox tell.
#[derive(Debug)]
struct LaneEstimator {
    lane: Priority,
    outbox: Meter,
    meters: Vec<Vec<Meter>>,
    /// The wait along the consumers as of the last answer from the broker: kept while the broker
    /// does not answer (a busy broker answering late is no reason to admit everything).
    consumers_wait: Duration,
}

impl LaneEstimator {
    fn new(lane: Priority) -> Self {
        Self {
            lane,
            outbox: Meter::default(),
            meters: path(lane)
                .iter()
                .map(|step| step.iter().map(|_| Meter::default()).collect())
                .collect(),
            consumers_wait: Duration::ZERO,
        }
    }

    /// The wait along the path: in the outbox, then at each step's slowest consumer, given
    /// `progress[step][consumer]` (or, without an answer from the broker, the wait it gave last) and
    /// the wall clock `now_us`.
    fn estimate(
        &mut self,
        at: Instant,
        now_us: i64,
        outbox: &Queue,
        progress: Option<&[Vec<ConsumerProgress>]>,
    ) -> Duration {
        if let Some(progress) = progress {
            self.consumers_wait = self
                .meters
                .iter_mut()
                .zip(progress)
                .map(|(meters, step)| {
                    meters
                        .iter_mut()
                        .zip(step)
                        .map(|(meter, progress)| {
                            meter.wait(at, &Queue::of_consumer(progress, now_us))
                        })
                        .max()
                        .unwrap_or_default()
                })
                .sum();
        }
        self.outbox.wait(at, outbox) + self.consumers_wait
    }
}

/// Where every consumer of `lane`'s path stands, read from the broker all at once.
async fn read_path(
    js: &async_nats::jetstream::Context,
    lane: Priority,
) -> Result<Vec<Vec<ConsumerProgress>>, platform::nats::NatsError> {
    futures::future::try_join_all(path(lane).iter().map(|step| {
        futures::future::try_join_all(step.iter().map(|spec| consumer_progress(js, spec)))
    }))
    .await
}

fn age(now_us: i64, since_us: i64) -> Duration {
    Duration::from_micros(u64::try_from(now_us - since_us).unwrap_or(0))
}

/// Keeps `admission` up to date until `shutdown`. While the broker does not answer, the consumers'
/// part of the estimate stays as it was last and the outbox's part goes on growing: orders are still
/// accepted into the outbox while the broker is away, and refused once they would wait too long.
pub async fn run(
    admission: Admission,
    db: Db,
    js: async_nats::jetstream::Context,
    mut shutdown: Shutdown,
) {
    let mut lanes = [
        LaneEstimator::new(Priority::Normal),
        LaneEstimator::new(Priority::Express),
    ];
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.requested() => return,
        }
        for estimator in &mut lanes {
            let outbox = match platform::outbox::lane_backlog(&db, estimator.lane).await {
                Ok(backlog) => Queue::of_outbox(&backlog, now_us()),
                Err(error) => {
                    // The API answers 503 itself while the database is away.
                    tracing::debug!(error = %error, "admission: cannot read the outbox");
                    Queue::default()
                }
            };
            let progress =
                match tokio::time::timeout(BROKER_TIMEOUT, read_path(&js, estimator.lane)).await {
                    Ok(Ok(progress)) => Some(progress),
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "admission: cannot read the consumers");
                        None
                    }
                    Err(_) => {
                        tracing::debug!("admission: the broker did not answer in time");
                        None
                    }
                };
            let estimate =
                estimator.estimate(Instant::now(), now_us(), &outbox, progress.as_deref());
            let load = LaneLoad {
                estimate,
                unpublished: outbox.untaken,
            };
            admission.update(estimator.lane, load);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wall clock of the tests, in microseconds.
    const NOW_US: i64 = 1_000_000_000;
    const WAITED: Duration = Duration::from_secs(3);

    /// A consumer whose oldest unfinished message has waited [`WAITED`].
    fn consumer(undelivered: u64, unacknowledged: u64, delivered: u64) -> ConsumerProgress {
        ConsumerProgress {
            undelivered,
            unacknowledged,
            delivered,
            oldest_waiting_since: Some(platform::db::from_us(NOW_US - WAITED.as_micros() as i64)),
        }
    }

    fn queue(undelivered: u64, unacknowledged: u64, delivered: u64) -> Queue {
        Queue::of_consumer(&consumer(undelivered, unacknowledged, delivered), NOW_US)
    }

    #[test]
    fn an_idle_consumer_makes_no_wait() {
        let mut meter = Meter::default();
        assert_eq!(
            meter.wait(Instant::now(), &queue(0, 0, 500)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_backlog_waits_as_long_as_the_consumer_takes_to_work_it_off_at_its_pace() {
        let mut meter = Meter::default();
        let start = Instant::now();
        // A fresh backlog: its pace is not known yet, so the oldest message's wait stands.
        assert_eq!(meter.wait(start, &queue(400, 100, 0)), WAITED);
        // One second later it has finished 200 (delivered 300, 100 of them in hand): 200/s, and
        // 900 + 100 to go take 5 s.
        let later = start + Duration::from_secs(1);
        assert_eq!(
            meter.wait(later, &queue(900, 100, 300)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_pace_is_measured_over_the_recent_window_only() {
        let mut meter = Meter::default();
        let start = Instant::now();
        // Slow at first (10 per 500 ms), then fast (100 per 500 ms).
        let mut delivered = 0;
        let mut at = start;
        for step in 0..18 {
            delivered += if step < 6 { 10 } else { 100 };
            at += Duration::from_millis(500);
            meter.wait(at, &queue(1000, 0, delivered));
        }
        // The last 5 s (10 steps) finished 1,000: 200/s, so 1,000 take 5 s.
        assert_eq!(
            meter.wait(at, &queue(1000, 0, delivered)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn a_stalled_consumer_waits_as_long_as_its_oldest_message() {
        let mut meter = Meter::default();
        let start = Instant::now();
        meter.wait(start, &queue(50, 0, 700));
        let later = start + Duration::from_secs(1);
        assert_eq!(meter.wait(later, &queue(80, 0, 700)), WAITED);
    }

    #[test]
    fn a_message_waiting_to_be_tried_again_holds_nothing_up() {
        // One poison message, redelivered after a backoff, and nothing else to do: new messages
        // would be delivered at once.
        let mut meter = Meter::default();
        let start = Instant::now();
        meter.wait(start, &queue(0, 1, 40));
        let later = start + Duration::from_secs(1);
        assert_eq!(meter.wait(later, &queue(0, 1, 41)), Duration::ZERO);
    }

    #[test]
    fn a_backlog_that_clears_forgets_its_pace() {
        let mut meter = Meter::default();
        let start = Instant::now();
        meter.wait(start, &queue(100, 0, 0));
        meter.wait(start + Duration::from_secs(1), &queue(0, 0, 100));
        // A new backlog a minute later is measured afresh.
        let again = start + Duration::from_secs(60);
        assert_eq!(meter.wait(again, &queue(10, 0, 100)), WAITED);
    }

    #[test]
    fn the_outbox_is_paced_by_how_fast_its_head_moves() {
        let outbox = |unpublished: u64, head: u64| {
            Queue::of_outbox(
                &platform::outbox::LaneBacklog {
                    unpublished,
                    head_sequence: Some(head),
                    head_created_at_us: Some(NOW_US - 2_000_000),
                },
                NOW_US,
            )
        };
        let mut meter = Meter::default();
        let start = Instant::now();
        assert_eq!(
            meter.wait(start, &outbox(3000, 10_000)),
            Duration::from_secs(2)
        );
        // 1,500 published in a second, 3,000 more waiting: 2 s.
        let later = start + Duration::from_secs(1);
        assert_eq!(
            meter.wait(later, &outbox(3000, 11_500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            Queue::of_outbox(&platform::outbox::LaneBacklog::default(), NOW_US),
            Queue::default()
        );
    }

    #[test]
    fn a_lane_waits_for_the_outbox_then_each_steps_slowest_consumer() {
        let mut lane = LaneEstimator::new(Priority::Normal);
        let start = Instant::now();
        let with_oldest = |mut progress: ConsumerProgress, age_s: i64| {
            progress.oldest_waiting_since = Some(platform::db::from_us(NOW_US - age_s * 1_000_000));
            progress
        };
        let steps = vec![
            vec![
                with_oldest(consumer(10, 0, 0), 2),
                with_oldest(consumer(10, 0, 0), 4),
            ],
            vec![consumer(0, 0, 0), with_oldest(consumer(5, 0, 0), 1)],
            vec![consumer(0, 0, 0)],
        ];
        let outbox = |waited_ms: u64| Queue {
            untaken: 3,
            backlog: 3,
            finished: 7,
            waited: Duration::from_millis(waited_ms),
        };
        // Fresh backlogs: their oldest messages' waits, 4 s and 1 s, after 500 ms in the outbox.
        assert_eq!(
            lane.estimate(start, NOW_US, &outbox(500), Some(&steps)),
            Duration::from_millis(5_500)
        );
        // The broker does not answer: the consumers' part stays, the outbox's grows.
        assert_eq!(
            lane.estimate(start, NOW_US, &outbox(2_000), None),
            Duration::from_millis(7_000)
        );
    }

    /// A lane's load with only a wait.
    fn waiting(estimate: Duration) -> LaneLoad {
        LaneLoad {
            estimate,
            unpublished: 0,
        }
    }

    #[test]
    fn shedding_starts_above_the_limit_and_stops_well_under_it() {
        let admission = Admission::new(Some(Duration::from_secs(10)), 10_000);
        assert!(admission.admit(Priority::Normal).is_ok());
        admission.update(Priority::Normal, waiting(Duration::from_millis(12_300)));
        let refused = admission.admit(Priority::Normal).unwrap_err();
        assert_eq!(refused.cause, Shed::SagaWait);
        assert_eq!(refused.estimate, Duration::from_millis(12_300));
        assert_eq!(refused.retry_after, Duration::from_millis(2_300));
        // The express lane is estimated on its own.
        assert!(admission.admit(Priority::Express).is_ok());
        // Just under the limit: still shedding, until well under it.
        admission.update(Priority::Normal, waiting(Duration::from_millis(9_000)));
        assert!(admission.admit(Priority::Normal).is_err());
        admission.update(Priority::Normal, waiting(Duration::from_millis(7_000)));
        assert!(admission.admit(Priority::Normal).is_ok());
    }

    #[test]
    fn an_outbox_backlog_near_the_readiness_limit_sheds_its_lane_whatever_the_wait() {
        let admission = Admission::new(Some(Duration::from_secs(10)), 10_000);
        let backlog = |unpublished| LaneLoad {
            estimate: Duration::from_millis(900),
            unpublished,
        };
        admission.update(Priority::Normal, backlog(7_998));
        // The orders let in since the refresh count before the next one sees them.
        assert!(admission.admit(Priority::Normal).is_ok());
        assert!(admission.admit(Priority::Normal).is_ok());
        let refused = admission.admit(Priority::Normal).unwrap_err();
        assert_eq!(refused.cause, Shed::OutboxBacklog { unpublished: 8_000 });
        admission.update(Priority::Normal, backlog(7_999));
        assert!(admission.admit(Priority::Normal).is_ok());
        admission.update(Priority::Normal, backlog(8_000));
        let refused = admission.admit(Priority::Normal).unwrap_err();
        assert_eq!(refused.cause, Shed::OutboxBacklog { unpublished: 8_000 });
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(admission.admit(Priority::Express).is_ok());
        // Until well under it.
        admission.update(Priority::Normal, backlog(6_500));
        assert!(admission.admit(Priority::Normal).is_err());
        admission.update(Priority::Normal, backlog(6_300));
        assert!(admission.admit(Priority::Normal).is_ok());
    }

    #[test]
    fn status_shows_each_lanes_estimate_and_state() {
        let admission = Admission::new(Some(Duration::from_secs(15)), 10_000);
        admission.update(
            Priority::Normal,
            LaneLoad {
                estimate: Duration::from_millis(18_600),
                unpublished: 420,
            },
        );
        assert_eq!(
            admission.details(),
            serde_json::json!({
                "max_wait_ms": 15_000,
                "shed_at_outbox": 8_000,
                "normal": {"estimate_ms": 18_600, "outbox_unpublished": 420, "shedding": true},
                "express": {"estimate_ms": 0, "outbox_unpublished": 0, "shedding": false},
            })
        );
    }

    #[test]
    fn with_admission_control_off_every_order_is_accepted() {
        let admission = Admission::new(None, 10_000);
        admission.update(
            Priority::Normal,
            LaneLoad {
                estimate: Duration::from_secs(3_600),
                unpublished: 1_000_000,
            },
        );
        assert!(admission.admit(Priority::Normal).is_ok());
    }

    #[test]
    fn retry_after_is_the_excess_over_the_limit_and_at_least_a_second() {
        let max_wait = Duration::from_secs(15);
        assert_eq!(
            retry_after(Duration::from_millis(15_001), max_wait),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_after(Duration::from_millis(40_200), max_wait),
            Duration::from_millis(25_200)
        );
    }
}
