//! The charge worker: the only code that calls the gateway. One step ([`ChargeWorker::try_execute`])
//! handles the longest-due payment with exactly one gateway call at most, so tests can drive it step by
//! step; [`ChargeWorker::run`] just repeats it.
//!
//! Each step: read the payment; count the call and lease the row (its own tiny write); call the gateway
//! with NO transaction open (SQLite has one connection, and a slow gateway must not block the
//! consumers); then record the answer and the events it causes in one transaction. Every write is
//! conditional on the row being as the step found it, so a cancellation during the call is never lost:
//! it wins, and the answer is applied to the refund instead.
//!
//! A charge whose outcome is unknown (a call timed out, the connection broke) is never settled by
//! charging again once the order is cancelled or its deadline is near: the worker looks the charge up
//! under the order's idempotency key and refunds what it finds.
//!
//! Every call goes through the gateway's circuit breaker. While it is open the step makes no call and
//! counts no attempt: the payment just waits until the breaker may let calls through again (or until
//! its last chance to charge, so an order is still told in time). Nothing here reads messages, so an
//! outage of any length never dead-letters one.

use crate::Error;
use crate::breaker::{self, CircuitBreaker, Permit};
use crate::domain::{self, Progress, RETRY, Status, Step};
use crate::gateway::{ChargeOutcome, GatewayClient, GatewayError};
use crate::storage::{self, Change, Payment};
use contracts::events::{PaymentFailed, PaymentFailureReason, PaymentRefunded, PaymentSucceeded};
use contracts::{
    CorrelationId, Currency, Envelope, Event, EventId, EventMeta, Money, Priority, TraceContext,
};
use platform::Shutdown;
use platform::db::{Db, now_us};
use platform::outbox;
use platform::telemetry::OutageLog;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::Instrument;

/// The worker also looks for due payments this often: retries and breaker pauses come due with time,
/// not with an event.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Lanes other than the first look on their own this seldom: lane 0 wakes them when work piles up.
const OTHER_LANES_POLL_EVERY: Duration = Duration::from_secs(5);
/// How long past the call timeout a leased row stays untouched; only matters if the process dies
/// mid-call, after which the call is repeated with the same idempotency key (or, once the order is
/// cancelled, the charge is looked up).
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Why a charge is given up when its answer could no longer arrive before the deadline.
const DEADLINE_NEAR: &str = "the order's deadline is too close for the gateway to answer a charge";

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkOutcome {
    /// Nothing is due.
    Idle,
    Succeeded,
    Declined,
    /// Given up without a charge: deadline passed, or the gateway refused the request for good.
    Failed,
    /// The charge id of a payment being refunded is now known; the refund is due.
    RefundDue,
    /// A lookup found that the key holds no money: nothing to refund.
    NothingCharged,
    Refunded,
    /// The gateway could not answer; the payment is due again after a pause.
    RetryScheduled,
    /// The gateway's circuit breaker is open: no call made, no attempt counted; the payment is due
    /// again when the breaker may let a call through (a charge no later than its deadline).
    BreakerOpen,
    /// The row changed between reading and writing it (a cancellation); the next step sees the change.
    Superseded,
}

impl WorkOutcome {
    /// Whether the step may have left its payment due at once (a refund whose charge is now known, a
    /// payment given up that must still be settled, a row that changed under it), so the lane must look
    /// again rather than wait to be woken.
    fn may_leave_it_due(self) -> bool {
        matches!(
            self,
            WorkOutcome::RefundDue | WorkOutcome::Failed | WorkOutcome::Superseded
        )
    }
}

#[derive(Debug, Clone)]
pub struct ChargeWorker {
    db: Db,
    gateway: GatewayClient,
    /// One per gateway per process: clones of the worker (and the tests watching it) share its verdict.
    breaker: Arc<CircuitBreaker>,
    work_due: Arc<Notify>,
    /// How long one gateway call may take: a charge starts only if its answer is due before the
    /// deadline.
    call_timeout: Duration,
    lease: Duration,
}

/// Which due payments a loop of the worker takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The `n`-th due payment of either priority, express ones first: shared lanes mostly take
    /// different payments.
    Shared(usize),
    /// Express payments only: kept free of normal ones, so that when a flood of normal payments
    /// keeps every shared lane in a gateway call, an express one still starts at once (ADR 15).
    Express,
}

/// A worker-owned payment with everything a step needs; rows lacking any of it cannot be worked on.
struct Due {
    payment: Payment,
    /// The event the emitted events are caused by, rebuilt from the row.
    cause: EventMeta,
    method: String,
    amount: Money,
    currency: Currency,
    deadline_at_us: i64,
}

impl Due {
    /// `None` for a row lacking any of it, which this code never writes.
    fn from_payment(payment: &Payment) -> Option<Self> {
        let event_id = EventId::parse(payment.cause_event_id.as_deref()?)?;
        Some(Self {
            cause: EventMeta {
                event_id,
                occurred_at: OffsetDateTime::now_utc(),
                order_id: payment.order_id,
                // A row stored before correlation ids were checked everywhere may hold any text;
                // its events then go out under a fresh id rather than not at all.
                correlation_id: CorrelationId::parse(&payment.correlation_id).unwrap_or_default(),
                causation_id: None,
                // Set to the worker's span (see `try_execute_lane`).
                trace: None,
                priority: payment.priority,
            },
            method: payment.payment_method.clone()?,
            amount: Money::from_cents(payment.amount_cents?).ok()?,
            currency: match &payment.currency {
                Some(code) => Currency::parse(code).ok()?,
                None => Currency::legacy(),
            },
            deadline_at_us: payment.deadline_at_us?,
            payment: payment.clone(),
        })
    }
}

impl ChargeWorker {
    /// `call_timeout` is the gateway client's; the row lease is derived from it.
    pub fn new(
        db: Db,
        gateway: GatewayClient,
        breaker: Arc<CircuitBreaker>,
        work_due: Arc<Notify>,
        call_timeout: Duration,
    ) -> Self {
        Self {
            db,
            gateway,
            breaker,
            work_due,
            call_timeout,
            lease: call_timeout + LEASE_MARGIN,
        }
    }

    /// The database for `payment`'s work: an express payment's goes ahead of the normal lane's.
    fn db_for(&self, payment: &Payment) -> Db {
        self.db.prioritized(payment.priority)
    }

    /// Handles the longest-due payment, if any, with at most one gateway call.
    pub async fn try_execute(&self) -> Result<WorkOutcome, Error> {
        Ok(self.try_execute_lane(Lane::Shared(0)).await?.0)
    }

    /// One step of `lane`: like [`ChargeWorker::try_execute`], on the lane's due payment (see
    /// [`storage::next_due`]); also whether more payments were due than this lane took.
    async fn try_execute_lane(&self, lane: Lane) -> Result<(WorkOutcome, bool), Error> {
        let now = now_us();
        let (payment, more) = match lane {
            Lane::Shared(nth) => storage::next_due(&self.db, now, nth, None).await?,
            Lane::Express => {
                let db = self.db.prioritized(Priority::Express);
                storage::next_due(&db, now, 0, Some(Priority::Express)).await?
            }
        };
        let Some(payment) = payment else {
            return Ok((WorkOutcome::Idle, false));
        };
        let span = tracing::info_span!("payment", order_id = %payment.order_id,
            correlation_id = %payment.correlation_id, status = payment.status.as_str(),
            attempts = payment.attempts, trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty);
        // The worker's step is a span under the one that handed the payment over, and what it
        // publishes carries this span on.
        let handed_over_by = payment
            .cause_traceparent
            .as_deref()
            .and_then(|traceparent| TraceContext::parse(traceparent).ok());
        let trace = platform::telemetry::join_trace(&span, handed_over_by);
        span.record("trace_id", tracing::field::display(trace.trace_id));
        span.record("span_id", tracing::field::display(trace.span_id));
        let due = Due::from_payment(&payment).map(|mut due| {
            due.cause.trace = Some(trace);
            due
        });
        async {
            let Some(due) = due else {
                let reason = "the payment lacks its cause, method, amount or deadline";
                return self.park(&payment, reason).await;
            };
            let progress = Progress {
                status: due.payment.status,
                attempts: due.payment.attempts,
                deadline_at_us: due.deadline_at_us,
                charge_known: due.payment.charge_id.is_some(),
            };
            match domain::next_step(progress, now, self.call_timeout) {
                None => Ok(WorkOutcome::Superseded),
                Some(Step::GiveUp) => self.give_up(&due, Status::Failed, DEADLINE_NEAR).await,
                Some(Step::GiveUpAndSettle) => {
                    self.give_up(&due, Status::Refunding, DEADLINE_NEAR).await
                }
                Some(Step::Charge) => self.charge(&due).await,
                Some(Step::LookUp) => self.look_up(&due).await,
                Some(Step::Refund) => self.refund(&due).await,
            }
        }
        .instrument(span)
        .await
        .map(|outcome| (outcome, more))
    }

    /// Runs `lanes` loops of steps side by side until shutdown, so up to `lanes` gateway calls are in
    /// flight at once; a step in progress (one gateway call at most) is finished first.
    pub async fn run(&self, lanes: usize, shutdown: Shutdown) {
        let loops =
            (0..lanes.max(1)).map(|lane| self.run_lane(Lane::Shared(lane), shutdown.clone()));
        futures::future::join_all(loops).await;
    }

    /// Runs the express lane's loop until shutdown: express payments only, one gateway call at a
    /// time, woken by the express lane's commits (the worker's `work_due` is the express one). Run
    /// it on the express lane's thread, with a gateway client of its own (ADR 15).
    pub async fn run_express(&self, shutdown: Shutdown) {
        self.run_lane(Lane::Express, shutdown).await;
    }

    async fn run_lane(&self, lane: Lane, mut shutdown: Shutdown) {
        let mut outage = OutageLog::new(
            "charge worker",
            "payments wait in the database until it answers",
        );
        loop {
            if shutdown.is_requested() {
                break;
            }
            let wait = match self.try_execute_lane(lane).await {
                Ok((outcome, more)) => {
                    outage.succeeded();
                    if more {
                        // More is due than this lane took: wake an idle one, so lanes join in as
                        // work piles up (and only then).
                        self.work_due.notify_one();
                    }
                    // Nothing else was due when this lane looked: it waits to be woken (a commit
                    // that makes a payment due does) instead of looking again for nothing.
                    outcome == WorkOutcome::Idle || (!more && !outcome.may_leave_it_due())
                }
                Err(error) => {
                    outage.failed(&error, POLL_EVERY);
                    true
                }
            };
            if wait {
                // Payments also come due with time (retries, breaker pauses); lane 0 looks for them
                // and wakes the others when it finds more than it takes.
                let poll = if lane == Lane::Shared(0) {
                    POLL_EVERY
                } else {
                    OTHER_LANES_POLL_EVERY
                };
                tokio::select! {
                    _ = self.work_due.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.requested() => break,
                }
            }
        }
    }

    /// The charge cannot be made: tell the order, and (`to` = refunding) make sure an earlier call
    /// whose answer was lost leaves no charge behind. `attempts` are the calls made so far.
    async fn give_up(&self, due: &Due, to: Status, why: &str) -> Result<WorkOutcome, Error> {
        self.give_up_after(due, due.payment.attempts, to, why).await
    }

    async fn give_up_after(
        &self,
        due: &Due,
        attempts: i64,
        to: Status,
        why: &str,
    ) -> Result<WorkOutcome, Error> {
        let change = Change {
            from: Status::Charging,
            to,
            attempts,
            charge_id: None,
            last_error: Some(why),
        };
        let mut tx = self.db_for(&due.payment).begin().await?;
        if !storage::apply(&mut tx, due.payment.order_id, change, now_us()).await? {
            tx.rollback().await?;
            return Ok(WorkOutcome::Superseded);
        }
        let failed = Event::PaymentFailed(PaymentFailed {
            reason: PaymentFailureReason::PaymentUnavailable,
        });
        outbox::enqueue(&mut tx, &Envelope::caused_by(&due.cause, failed)).await?;
        tx.commit().await?;
        metrics::counter!("orderflow_payments_total", "outcome" => "unavailable").increment(1);
        tracing::info!(
            reason = why,
            settle_by_lookup = to == Status::Refunding,
            "payment unavailable; the order is told"
        );
        Ok(WorkOutcome::Failed)
    }

    /// Charges the order's amount under its idempotency key.
    async fn charge(&self, due: &Due) -> Result<WorkOutcome, Error> {
        let (permit, attempts) = match self.begin_call(due).await? {
            Ok(call) => call,
            Err(outcome) => return Ok(outcome),
        };
        // The order id is the idempotency key: however often this call is repeated (timeouts, crashes,
        // a refund asking which charge exists), the gateway charges the order at most once.
        let key = due.payment.order_id.to_string();
        let answer = self
            .gateway
            .charge(&key, due.amount, &due.currency, &due.method, &key)
            .await;
        record(permit, &answer);
        match answer {
            Ok(ChargeOutcome::Succeeded { charge_id }) => {
                self.charged(due, attempts, &charge_id).await
            }
            Ok(ChargeOutcome::Declined { code }) => self.declined(due, attempts, &code).await,
            Err(error) if error.transient => self.retry(due, attempts, &error).await,
            // An earlier call may have charged although this one was refused: only the gateway's
            // record can say, so the payment is settled by looking it up.
            Err(error) if due.payment.attempts > 0 => {
                tracing::error!(error = %error, "the gateway refused the charge request after calls of unknown outcome; settling by lookup");
                self.give_up_after(due, attempts, Status::Refunding, &error.reason)
                    .await
            }
            Err(error) => self.charge_refused(due, attempts, &error).await,
        }
    }

    async fn charged(
        &self,
        due: &Due,
        attempts: i64,
        charge_id: &str,
    ) -> Result<WorkOutcome, Error> {
        let order_id = due.payment.order_id;
        let mut tx = self.db_for(&due.payment).begin().await?;
        let succeeded = Change {
            from: Status::Charging,
            to: Status::Succeeded,
            attempts,
            charge_id: Some(charge_id),
            last_error: None,
        };
        let outcome = if storage::apply(&mut tx, order_id, succeeded, now_us()).await? {
            let event = Event::PaymentSucceeded(PaymentSucceeded {
                amount_cents: due.amount,
                charge_id: charge_id.to_owned(),
            });
            outbox::enqueue(&mut tx, &Envelope::caused_by(&due.cause, event)).await?;
            WorkOutcome::Succeeded
        } else {
            // Cancelled during the call: keep the charge id so the refund can be made.
            let found = Change {
                from: Status::Refunding,
                to: Status::Refunding,
                ..succeeded
            };
            if storage::apply(&mut tx, order_id, found, now_us()).await? {
                WorkOutcome::RefundDue
            } else {
                WorkOutcome::Superseded
            }
        };
        tx.commit().await?;
        match outcome {
            WorkOutcome::Succeeded => {
                metrics::counter!("orderflow_payments_total", "outcome" => "succeeded")
                    .increment(1);
                tracing::debug!(
                    charge_id,
                    amount_cents = due.amount.cents(),
                    "payment succeeded"
                );
            }
            WorkOutcome::RefundDue => {
                tracing::info!(
                    charge_id,
                    "charge found for a cancelled order; refunding it"
                );
            }
            _ => {}
        }
        Ok(outcome)
    }

    async fn declined(&self, due: &Due, attempts: i64, code: &str) -> Result<WorkOutcome, Error> {
        let Some(told) = self
            .end_without_charge(
                due,
                attempts,
                Status::Declined,
                PaymentFailureReason::PaymentDeclined,
                code,
            )
            .await?
        else {
            return Ok(WorkOutcome::Superseded);
        };
        metrics::counter!("orderflow_payments_total", "outcome" => "declined").increment(1);
        tracing::debug!(
            decline_code = code,
            order_cancelled = !told,
            "payment declined"
        );
        Ok(WorkOutcome::Declined)
    }

    /// The gateway refuses the charge request itself (not the card): repeating it cannot help.
    async fn charge_refused(
        &self,
        due: &Due,
        attempts: i64,
        error: &GatewayError,
    ) -> Result<WorkOutcome, Error> {
        let ended = self
            .end_without_charge(
                due,
                attempts,
                Status::Failed,
                PaymentFailureReason::PaymentUnavailable,
                &error.reason,
            )
            .await?;
        if ended.is_none() {
            return Ok(WorkOutcome::Superseded);
        }
        metrics::counter!("orderflow_payments_total", "outcome" => "unavailable").increment(1);
        tracing::error!(error = %error, "the gateway refused the charge request; payment failed");
        Ok(WorkOutcome::Failed)
    }

    /// Ends a payment that charged nothing in status `to`. A pending order is told with
    /// `payments.failed {reason}`; a payment whose order was cancelled during the call ends the same
    /// way, silently, since its order is cancelled already and nothing is to be refunded.
    /// Returns whether the order was told, or `None` if the row changed meanwhile.
    async fn end_without_charge(
        &self,
        due: &Due,
        attempts: i64,
        to: Status,
        reason: PaymentFailureReason,
        last_error: &str,
    ) -> Result<Option<bool>, Error> {
        let order_id = due.payment.order_id;
        let mut tx = self.db_for(&due.payment).begin().await?;
        let ended = Change {
            from: Status::Charging,
            to,
            attempts,
            charge_id: None,
            last_error: Some(last_error),
        };
        let told = storage::apply(&mut tx, order_id, ended, now_us()).await?;
        if told {
            let event = Event::PaymentFailed(PaymentFailed { reason });
            outbox::enqueue(&mut tx, &Envelope::caused_by(&due.cause, event)).await?;
        } else {
            let nothing_to_refund = Change {
                from: Status::Refunding,
                ..ended
            };
            if !storage::apply(&mut tx, order_id, nothing_to_refund, now_us()).await? {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(told))
    }

    /// Settles a payment being refunded whose charge is unknown: asks the gateway which charges the
    /// order's key holds. A charge that took money is then refunded; a key that holds none (or only a
    /// decline) ends the payment without one.
    async fn look_up(&self, due: &Due) -> Result<WorkOutcome, Error> {
        let (permit, attempts) = match self.begin_call(due).await? {
            Ok(call) => call,
            Err(outcome) => return Ok(outcome),
        };
        let key = due.payment.order_id.to_string();
        let answer = self.gateway.find_charges(&key).await;
        record(permit, &answer);
        let found = match answer {
            Ok(found) => found,
            Err(error) if error.transient => return self.retry(due, attempts, &error).await,
            Err(error) => {
                tracing::error!(error = %error,
                    "the gateway refuses the charge search; retrying, an operator must look at it");
                let at = domain::retry_at(now_us(), RETRY.max(), None);
                return self
                    .schedule(&due.payment, attempts, at, &error.reason)
                    .await;
            }
        };
        let order_id = due.payment.order_id;
        let (change, outcome) = match found.iter().find(|charge| charge.succeeded) {
            Some(charge) => (
                Change {
                    from: Status::Refunding,
                    to: Status::Refunding,
                    attempts,
                    charge_id: Some(charge.charge_id.as_str()),
                    last_error: None,
                },
                WorkOutcome::RefundDue,
            ),
            None => (
                Change {
                    from: Status::Refunding,
                    to: if found.is_empty() {
                        Status::Failed
                    } else {
                        Status::Declined
                    },
                    attempts,
                    charge_id: None,
                    last_error: Some("no charge took money for this order"),
                },
                WorkOutcome::NothingCharged,
            ),
        };
        let mut tx = self.db_for(&due.payment).begin().await?;
        if !storage::apply(&mut tx, order_id, change, now_us()).await? {
            tx.rollback().await?;
            return Ok(WorkOutcome::Superseded);
        }
        tx.commit().await?;
        match outcome {
            WorkOutcome::RefundDue => tracing::info!(
                charge_id = change.charge_id,
                "charge found by lookup for an order that will not be fulfilled; refunding it"
            ),
            _ => tracing::info!(
                "lookup found no charge that took money; the payment ends without one"
            ),
        }
        Ok(outcome)
    }

    async fn refund(&self, due: &Due) -> Result<WorkOutcome, Error> {
        let Some(charge_id) = due.payment.charge_id.as_deref() else {
            return Ok(WorkOutcome::Superseded);
        };
        let (permit, attempts) = match self.begin_call(due).await? {
            Ok(call) => call,
            Err(outcome) => return Ok(outcome),
        };
        let key = format!("refund-{}", due.payment.order_id);
        let answer = self.gateway.refund(&key, charge_id).await;
        record(permit, &answer);
        let refund = match answer {
            Ok(refund) => refund,
            Err(error) if error.transient => return self.retry(due, attempts, &error).await,
            Err(error) => {
                // Money stays charged until this is resolved, so the payment is never given up: it is
                // retried at the longest pause, loudly.
                tracing::error!(error = %error, charge_id,
                    "the gateway refuses to refund the charge; retrying, an operator must look at it");
                let at = domain::retry_at(now_us(), RETRY.max(), None);
                return self
                    .schedule(&due.payment, attempts, at, &error.reason)
                    .await;
            }
        };
        let mut tx = self.db_for(&due.payment).begin().await?;
        let refunded = Change {
            from: Status::Refunding,
            to: Status::Refunded,
            attempts,
            charge_id: None,
            last_error: None,
        };
        if !storage::apply(&mut tx, due.payment.order_id, refunded, now_us()).await? {
            tx.rollback().await?;
            return Ok(WorkOutcome::Superseded);
        }
        let event = Event::PaymentRefunded(PaymentRefunded {
            // The gateway's figure is what actually went back; ours only if it sent nonsense.
            amount_cents: Money::from_cents(refund.amount_cents).unwrap_or(due.amount),
            charge_id: charge_id.to_owned(),
        });
        outbox::enqueue(&mut tx, &Envelope::caused_by(&due.cause, event)).await?;
        tx.commit().await?;
        metrics::counter!("orderflow_payments_total", "outcome" => "refunded").increment(1);
        tracing::info!(charge_id, refund_id = %refund.refund_id, amount_cents = refund.amount_cents,
            "payment refunded");
        Ok(WorkOutcome::Refunded)
    }

    /// The gateway could not answer: call again after an exponential, jittered pause (a charge no
    /// later than its last chance to start, so that it is given up in time).
    async fn retry(
        &self,
        due: &Due,
        attempts: i64,
        error: &GatewayError,
    ) -> Result<WorkOutcome, Error> {
        let now = now_us();
        let pause = RETRY.delay(u32::try_from(attempts).unwrap_or(u32::MAX));
        let at = domain::retry_at(now, pause, self.latest_charge(due));
        let outcome = self
            .schedule(&due.payment, attempts, at, &error.reason)
            .await?;
        metrics::counter!("orderflow_payments_total", "outcome" => "retry").increment(1);
        let retry_in_ms = (at - now) / 1000;
        tracing::warn!(error = %error, attempt = attempts, retry_in_ms,
            "gateway unavailable; retrying in {retry_in_ms} ms");
        Ok(outcome)
    }

    /// The breaker refused the call: make the payment due again when the breaker may let one through
    /// (at the earliest after the shortest retry pause, when a trial is deciding right now), and a
    /// charge no later than its deadline, so that it is given up in time if the outage lasts.
    async fn wait_for_breaker(&self, due: &Due, open: breaker::Open) -> Result<WorkOutcome, Error> {
        let now = now_us();
        let at = domain::retry_at(
            now,
            open.retry_after.max(RETRY.min()),
            self.latest_charge(due),
        );
        if !storage::postpone(&self.db_for(&due.payment), &due.payment, at, now).await? {
            return Ok(WorkOutcome::Superseded);
        }
        metrics::counter!("orderflow_payments_total", "outcome" => "breaker_open").increment(1);
        tracing::debug!(
            retry_in_ms = (at - now) / 1000,
            "gateway breaker open; payment waits without calling"
        );
        Ok(WorkOutcome::BreakerOpen)
    }

    /// The last moment a charge of this payment may start, if it is still to be charged.
    fn latest_charge(&self, due: &Due) -> Option<i64> {
        (due.payment.status == Status::Charging)
            .then(|| domain::last_charge_start(due.deadline_at_us, self.call_timeout))
    }

    /// Makes the payment due again at `at` (unix µs), unless it changed since it was claimed.
    async fn schedule(
        &self,
        payment: &Payment,
        attempts: i64,
        at: i64,
        reason: &str,
    ) -> Result<WorkOutcome, Error> {
        let rescheduled = storage::schedule_retry(
            &self.db_for(payment),
            payment.order_id,
            attempts,
            at,
            reason,
            now_us(),
        )
        .await?;
        Ok(if rescheduled {
            WorkOutcome::RetryScheduled
        } else {
            WorkOutcome::Superseded
        })
    }

    /// A row that cannot be worked on (never written by this code) must not block the others: it is
    /// put back at the longest pause and reported.
    async fn park(&self, payment: &Payment, reason: &str) -> Result<WorkOutcome, Error> {
        tracing::error!(
            reason,
            "payment cannot be worked on; retrying later, an operator must look at it"
        );
        let at = domain::retry_at(now_us(), RETRY.max(), None);
        self.schedule(payment, payment.attempts, at, reason).await
    }

    /// Gets ready for one gateway call: a permit from the breaker, and the row claimed for the call.
    /// Gives the permit and the call's attempt number, or the step's outcome when no call may be made
    /// (the breaker is open: the payment waits; the row changed: the next step sees why).
    async fn begin_call(&self, due: &Due) -> Result<Result<(Permit<'_>, i64), WorkOutcome>, Error> {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => return self.wait_for_breaker(due, open).await.map(Err),
        };
        // A permit dropped unused (claim lost) counts as no call for the breaker.
        if !self.claim(&due.payment).await? {
            return Ok(Err(WorkOutcome::Superseded));
        }
        Ok(Ok((permit, due.payment.attempts + 1)))
    }

    /// Counts the coming call and leases the row for its duration; `false` if the row changed.
    async fn claim(&self, payment: &Payment) -> Result<bool, Error> {
        let now = now_us();
        let lease_until = domain::retry_at(now, self.lease, None);
        Ok(storage::claim(&self.db_for(payment), payment, lease_until, now).await?)
    }
}

/// Tells the breaker how the call went. Only signs of an unwell gateway count as failures (timeouts,
/// connection errors, 5xx, 429); a decline or a refused request is an answer, so a success for it.
fn record<T>(permit: Permit<'_>, answer: &Result<T, GatewayError>) {
    permit.record(!matches!(answer, Err(error) if error.transient));
}
