//! The charge worker: the only code that calls the gateway. It works in turns. A turn, one
//! transaction, writes down what the calls that ended since the last turn learned (each answer and the
//! events it causes) and leases the next due payments, as many as there is room for calls; the calls
//! are then made with NO transaction open (SQLite has one connection, and a slow gateway must not block
//! the consumers). Each leased payment gets one step, with one gateway call at most.
//! [`ChargeWorker::try_execute`] is one step on its own, so tests can drive the worker step by step;
//! [`ChargeWorker::run`] keeps up to its width of calls in flight, in turns.
//!
//! The lease counts the call before it is made (`attempts`, also the row's version), so a crash during a
//! call leaves a payment that may have charged. Every write after a call is conditional on the row being
//! as the lease left it, so a cancellation during the call is never lost: it wins, and the answer is
//! applied to the refund instead.
//!
//! A charge whose outcome is unknown (a call timed out, the connection broke) is never settled by
//! charging again once the order is cancelled or its deadline is near: the worker looks the charge up
//! under the order's idempotency key and refunds what it finds.
//!
//! Every call goes through the gateway's circuit breaker: a payment is leased for a call only with the
//! breaker's permit. While it is open the worker makes no call and counts no attempt: the payment just
//! waits until the breaker may let calls through again (or until its last chance to charge, so an order
//! is still told in time). Nothing here reads messages, so an outage of any length never dead-letters
//! one.

use crate::Error;
use crate::breaker::{CircuitBreaker, Permit};
use crate::domain::{self, Progress, RETRY, Status, Step};
use crate::gateway::{ChargeOutcome, FoundCharge, GatewayClient, GatewayError, Refund};
use crate::storage::{self, Change, Lease, Payment};
use contracts::events::{PaymentFailed, PaymentFailureReason, PaymentRefunded, PaymentSucceeded};
use contracts::{
    CorrelationId, Currency, Envelope, Event, EventId, EventMeta, Money, Priority, TraceContext,
};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use platform::Shutdown;
use platform::db::{Db, Tx, duration_us, now_us};
use platform::outbox;
use platform::telemetry::OutageLog;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::{Instrument, Span};

/// The worker also looks for due payments this often: retries and breaker pauses come due with time,
/// not with an event.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long past the call timeout a leased row stays untouched; only matters if the process dies
/// mid-call, after which the call is repeated with the same idempotency key (or, once the order is
/// cancelled, the charge is looked up).
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Why a charge is given up when its answer could no longer arrive before the deadline.
const DEADLINE_NEAR: &str = "the order's deadline is too close for the gateway to answer a charge";
/// Why a row lacking what a step needs is put back.
const UNWORKABLE: &str = "the payment lacks its cause, method, amount or deadline";

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
    /// The row changed between leasing and writing it (a cancellation); the next step sees the change.
    Superseded,
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
    /// Payments of either priority, express ones first.
    Shared,
    /// Express payments only: kept free of normal ones, so that when a flood of normal payments
    /// keeps every shared call slot busy, an express one still starts at once (ADR 15).
    Express,
}

impl Lane {
    fn only(self) -> Option<Priority> {
        match self {
            Lane::Shared => None,
            Lane::Express => Some(Priority::Express),
        }
    }
}

/// A worker-owned payment with everything a step needs; rows lacking any of it cannot be worked on.
struct Due {
    /// The row as leased: `attempts` counts the call of this step, if it makes one.
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
                // Set to the step's span (see `ChargeWorker::leased`).
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

    /// Calls made for this payment before this step's.
    fn earlier_calls(&self) -> i64 {
        self.payment.attempts - 1
    }
}

/// A payment leased for one step, and what the step is.
struct Leased<'a> {
    payment: Payment,
    span: Span,
    /// When it was leased: what the step was decided for.
    now: i64,
    work: Work<'a>,
}

/// What a leased payment's step does.
enum Work<'a> {
    /// The row lacks what any step needs (see [`Due::from_payment`]).
    Unworkable,
    /// No step applies to the row as it is.
    Nothing,
    /// A step without a call: too late to charge.
    GiveUp(Due, Status),
    /// A gateway call, with the breaker's permit; the lease counted it.
    Call(Due, Step, Permit<'a>),
    /// A call the breaker refused, for this long: the lease counted none.
    BreakerOpen(Due, Duration),
}

/// What a step learned, written down in the next turn.
enum Settle {
    /// Nothing to write.
    Nothing,
    /// Put back until `at` after a failed call (`retry`) or a call that cannot work (refused lookups
    /// and refunds, which are logged when refused, and unworkable rows).
    Reschedule {
        at: i64,
        reason: String,
        retry: Option<GatewayError>,
    },
    /// The breaker refused the call: due again at `at`, no call counted.
    Postpone {
        at: i64,
    },
    /// The charge cannot be made: tell the order, and (`to` = refunding) settle earlier calls whose
    /// answers were lost.
    GiveUp {
        to: Status,
        why: String,
    },
    Charged {
        charge_id: String,
    },
    /// The gateway declined the card, or (`declined` = false) refused the request itself, with no
    /// call of unknown outcome before.
    NotCharged {
        code: String,
        declined: bool,
    },
    LookedUp {
        found: Vec<FoundCharge>,
    },
    Refunded {
        charge_id: String,
        refund: Refund,
    },
}

/// A step whose call has ended, waiting for the next turn to write down what it learned.
struct Worked {
    payment: Payment,
    due: Option<Due>,
    span: Span,
    settle: Settle,
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

    /// Handles the longest-due payment, if any, with at most one gateway call.
    pub async fn try_execute(&self) -> Result<WorkOutcome, Error> {
        let leased = self.turn(Lane::Shared, Vec::new(), 1).await?.0;
        let Some(leased) = leased.into_iter().next() else {
            return Ok(WorkOutcome::Idle);
        };
        let worked = self.work(leased).await;
        let mut tx = self.db.prioritized(worked.payment.priority).begin().await?;
        let outcome = self.settle(&mut tx, worked).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Keeps up to `width` gateway calls in flight until shutdown; the calls in flight when it comes
    /// are finished and written down first.
    pub async fn run(&self, width: usize, shutdown: Shutdown) {
        self.run_lane(Lane::Shared, width.max(1), shutdown).await;
    }

    /// Runs the express lane's loop until shutdown: express payments only, one gateway call at a
    /// time, woken by the express lane's commits (the worker's `work_due` is the express one). Run
    /// it on the express lane's thread, with a gateway client of its own (ADR 15).
    pub async fn run_express(&self, shutdown: Shutdown) {
        self.run_lane(Lane::Express, 1, shutdown).await;
    }

    async fn run_lane(&self, lane: Lane, width: usize, mut shutdown: Shutdown) {
        let mut outage = OutageLog::new(
            "charge worker",
            "payments wait in the database until it answers",
        );
        let mut in_flight = FuturesUnordered::new();
        let mut ended = Vec::new();
        let mut look = true;
        loop {
            let stopping = shutdown.is_requested();
            let room = if look && !stopping {
                width.saturating_sub(in_flight.len())
            } else {
                0
            };
            if room > 0 || !ended.is_empty() {
                match self.turn(lane, std::mem::take(&mut ended), room).await {
                    Ok((leased, more)) => {
                        outage.succeeded();
                        // Fewer were due than there was room for: look again only when woken.
                        look = more;
                        in_flight.extend(leased.into_iter().map(|leased| self.work(leased)));
                    }
                    Err(error) => {
                        // What the ended calls learned is lost with the turn; their rows stay leased
                        // and are stepped again when the lease ends, under the same idempotency keys.
                        outage.failed(&error, POLL_EVERY);
                        look = false;
                    }
                }
            }
            if in_flight.is_empty() {
                if stopping {
                    break;
                }
                // Payments also come due with time (retries, breaker pauses): the worker looks on
                // its own now and then, besides being woken by the commits that make them due.
                tokio::select! {
                    _ = self.work_due.notified() => {}
                    _ = tokio::time::sleep(POLL_EVERY) => {}
                    _ = shutdown.requested() => {}
                }
                look = true;
                continue;
            }
            let has_room = in_flight.len() < width;
            tokio::select! {
                Some(first) = in_flight.next() => {
                    // Calls that ended together are written down in one turn. It leases again
                    // only if the last lease filled the room: otherwise nothing else was due then,
                    // and what comes due since wakes the worker (at most a poll later).
                    ended.push(first);
                    while let Some(Some(worked)) = in_flight.next().now_or_never() {
                        ended.push(worked);
                    }
                }
                _ = self.work_due.notified(), if has_room => look = true,
                _ = tokio::time::sleep(POLL_EVERY), if has_room => look = true,
                _ = shutdown.requested(), if !stopping => {}
            }
        }
    }

    /// One turn, one transaction: writes down what `ended` steps learned, and leases up to `room`
    /// due payments of `lane` for their steps. Also whether the lease filled the room (more may be
    /// due). Leasing alone is a statement on its own.
    async fn turn(
        &self,
        lane: Lane,
        ended: Vec<Worked>,
        room: usize,
    ) -> Result<(Vec<Leased<'_>>, bool), Error> {
        let express = lane == Lane::Express
            || ended
                .iter()
                .any(|worked| worked.payment.priority == Priority::Express);
        let db = self.db.prioritized(if express {
            Priority::Express
        } else {
            Priority::Normal
        });
        // Permits first: a payment is leased for a call only with the breaker's permission, one
        // permit per payment; with none, the lease counts no calls and the steps only wait.
        let mut permits = Vec::new();
        let mut open = None;
        while permits.len() < room {
            match self.breaker.try_acquire() {
                Ok(permit) => permits.push(permit),
                Err(refused) => {
                    open = Some(refused.retry_after);
                    break;
                }
            }
        }
        let now = now_us();
        let lease = Lease {
            now,
            answered_by: now.saturating_add(duration_us(self.call_timeout)),
            until: domain::retry_at(now, self.lease, None),
            limit: if permits.is_empty() {
                room
            } else {
                permits.len()
            },
            only: lane.only(),
            count_calls: !permits.is_empty(),
        };
        let payments = if ended.is_empty() {
            if room == 0 {
                return Ok((Vec::new(), false));
            }
            storage::lease_due(db.pool(), lease).await?
        } else {
            let mut tx = db.begin().await?;
            for worked in ended {
                self.settle(&mut tx, worked).await?;
            }
            let payments = if room > 0 {
                storage::lease_due(tx.conn(), lease).await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            payments
        };
        let more = room > 0 && payments.len() == lease.limit;
        let leased = payments
            .into_iter()
            .map(|payment| self.leased(payment, now, &mut permits, open))
            .collect();
        Ok((leased, more))
    }

    /// Decides the step of a payment leased at `now`, with one of `permits` if it makes a call
    /// (there is one for each such payment when the lease counted calls, and none when it did not:
    /// the breaker refused for `open`).
    fn leased<'a>(
        &self,
        payment: Payment,
        now: i64,
        permits: &mut Vec<Permit<'a>>,
        open: Option<Duration>,
    ) -> Leased<'a> {
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
        let work = match Due::from_payment(&payment) {
            None => Work::Unworkable,
            Some(mut due) => {
                due.cause.trace = Some(trace);
                let progress = Progress {
                    status: due.payment.status,
                    attempts: due.payment.attempts,
                    deadline_at_us: due.deadline_at_us,
                    charge_known: due.payment.charge_id.is_some(),
                };
                match domain::next_step(progress, now, self.call_timeout) {
                    None => Work::Nothing,
                    Some(Step::GiveUp) => Work::GiveUp(due, Status::Failed),
                    Some(Step::GiveUpAndSettle) => Work::GiveUp(due, Status::Refunding),
                    Some(step) => match permits.pop() {
                        Some(permit) => Work::Call(due, step, permit),
                        None => Work::BreakerOpen(due, open.unwrap_or(RETRY.min())),
                    },
                }
            }
        };
        Leased {
            payment,
            span,
            now,
            work,
        }
    }

    /// Carries out a leased payment's step: its gateway call, if it makes one. Writes nothing.
    async fn work(&self, leased: Leased<'_>) -> Worked {
        let Leased {
            payment,
            span,
            now,
            work,
        } = leased;
        let (due, settle) = async {
            match work {
                Work::Unworkable => {
                    tracing::error!(
                        reason = UNWORKABLE,
                        "payment cannot be worked on; retrying later, an operator must look at it"
                    );
                    let at = domain::retry_at(now, RETRY.max(), None);
                    let settle = Settle::Reschedule {
                        at,
                        reason: UNWORKABLE.to_owned(),
                        retry: None,
                    };
                    (None, settle)
                }
                Work::Nothing => (None, Settle::Nothing),
                Work::GiveUp(due, to) => {
                    let why = DEADLINE_NEAR.to_owned();
                    (Some(due), Settle::GiveUp { to, why })
                }
                Work::BreakerOpen(due, retry_after) => {
                    // When the breaker may let a call through (at the earliest after the shortest
                    // retry pause, when a trial is deciding right now), and a charge no later than
                    // its deadline, so that it is given up in time if the outage lasts.
                    let at = domain::retry_at(
                        now,
                        retry_after.max(RETRY.min()),
                        self.latest_charge(&due),
                    );
                    (Some(due), Settle::Postpone { at })
                }
                Work::Call(due, step, permit) => {
                    let settle = match step {
                        Step::Charge => self.charge(&due, permit).await,
                        Step::LookUp => self.look_up(&due, permit).await,
                        Step::Refund => self.refund(&due, permit).await,
                        Step::GiveUp | Step::GiveUpAndSettle => Settle::Nothing,
                    };
                    (Some(due), settle)
                }
            }
        }
        .instrument(span.clone())
        .await;
        Worked {
            payment,
            due,
            span,
            settle,
        }
    }

    /// Charges the order's amount under its idempotency key.
    async fn charge(&self, due: &Due, permit: Permit<'_>) -> Settle {
        // The order id is the idempotency key: however often this call is repeated (timeouts, crashes,
        // a refund asking which charge exists), the gateway charges the order at most once.
        let key = due.payment.order_id.to_string();
        let answer = self
            .gateway
            .charge(&key, due.amount, &due.currency, &due.method, &key)
            .await;
        record(permit, &answer);
        match answer {
            Ok(ChargeOutcome::Succeeded { charge_id }) => Settle::Charged { charge_id },
            Ok(ChargeOutcome::Declined { code }) => Settle::NotCharged {
                code,
                declined: true,
            },
            Err(error) if error.transient => self.retry(due, error),
            // An earlier call may have charged although this one was refused: only the gateway's
            // record can say, so the payment is settled by looking it up.
            Err(error) if due.earlier_calls() > 0 => {
                tracing::error!(error = %error, "the gateway refused the charge request after calls of unknown outcome; settling by lookup");
                Settle::GiveUp {
                    to: Status::Refunding,
                    why: error.reason,
                }
            }
            Err(error) => Settle::NotCharged {
                code: error.reason,
                declined: false,
            },
        }
    }

    /// Settles a payment being refunded whose charge is unknown: asks the gateway which charges the
    /// order's key holds. A charge that took money is then refunded; a key that holds none (or only a
    /// decline) ends the payment without one.
    async fn look_up(&self, due: &Due, permit: Permit<'_>) -> Settle {
        let key = due.payment.order_id.to_string();
        let answer = self.gateway.find_charges(&key).await;
        record(permit, &answer);
        match answer {
            Ok(found) => Settle::LookedUp { found },
            Err(error) if error.transient => self.retry(due, error),
            Err(error) => {
                tracing::error!(error = %error,
                    "the gateway refuses the charge search; retrying, an operator must look at it");
                self.reschedule_refused(error)
            }
        }
    }

    async fn refund(&self, due: &Due, permit: Permit<'_>) -> Settle {
        let Some(charge_id) = due.payment.charge_id.clone() else {
            return Settle::Nothing;
        };
        let key = format!("refund-{}", due.payment.order_id);
        let answer = self.gateway.refund(&key, &charge_id).await;
        record(permit, &answer);
        match answer {
            Ok(refund) => Settle::Refunded { charge_id, refund },
            Err(error) if error.transient => self.retry(due, error),
            Err(error) => {
                // Money stays charged until this is resolved, so the payment is never given up: it is
                // retried at the longest pause, loudly.
                tracing::error!(error = %error, charge_id,
                    "the gateway refuses to refund the charge; retrying, an operator must look at it");
                self.reschedule_refused(error)
            }
        }
    }

    /// The gateway could not answer: call again after an exponential, jittered pause (a charge no
    /// later than its last chance to start, so that it is given up in time).
    fn retry(&self, due: &Due, error: GatewayError) -> Settle {
        let pause = RETRY.delay(u32::try_from(due.payment.attempts).unwrap_or(u32::MAX));
        Settle::Reschedule {
            at: domain::retry_at(now_us(), pause, self.latest_charge(due)),
            reason: error.reason.clone(),
            retry: Some(error),
        }
    }

    /// A request the gateway refuses for good, where giving up is no answer: again at the longest
    /// pause.
    fn reschedule_refused(&self, error: GatewayError) -> Settle {
        Settle::Reschedule {
            at: domain::retry_at(now_us(), RETRY.max(), None),
            reason: error.reason,
            retry: None,
        }
    }

    /// The last moment a charge of this payment may start, if it is still to be charged.
    fn latest_charge(&self, due: &Due) -> Option<i64> {
        (due.payment.status == Status::Charging)
            .then(|| domain::last_charge_start(due.deadline_at_us, self.call_timeout))
    }

    /// Writes down what a step learned, in `tx`; what is logged of it is logged once `tx` commits.
    /// Every write applies only if the row is still as the lease left it.
    async fn settle(&self, tx: &mut Tx, worked: Worked) -> Result<WorkOutcome, Error> {
        let Worked {
            payment,
            due,
            span,
            settle,
        } = worked;
        let order_id = payment.order_id;
        let attempts = payment.attempts;
        let now = now_us();
        let change = |from, to| Change {
            from,
            to,
            attempts,
            charge_id: None,
            last_error: None,
        };
        let outcome = match (settle, due) {
            (Settle::Nothing, _) => WorkOutcome::Superseded,
            (Settle::Reschedule { at, reason, retry }, _) => {
                if !storage::schedule_retry(tx, order_id, attempts, at, &reason, now).await? {
                    return Ok(WorkOutcome::Superseded);
                }
                if let Some(error) = retry {
                    after_commit(tx, span, move || {
                        metrics::counter!("orderflow_payments_total", "outcome" => "retry")
                            .increment(1);
                        let retry_in_ms = (at - now) / 1000;
                        tracing::warn!(error = %error, attempt = attempts, retry_in_ms,
                            "gateway unavailable; retrying in {retry_in_ms} ms");
                    });
                }
                WorkOutcome::RetryScheduled
            }
            (Settle::Postpone { at }, _) => {
                if !storage::postpone(tx, &payment, at, now).await? {
                    return Ok(WorkOutcome::Superseded);
                }
                after_commit(tx, span, move || {
                    metrics::counter!("orderflow_payments_total", "outcome" => "breaker_open")
                        .increment(1);
                    tracing::debug!(
                        retry_in_ms = (at - now) / 1000,
                        "gateway breaker open; payment waits without calling"
                    );
                });
                WorkOutcome::BreakerOpen
            }
            (_, None) => WorkOutcome::Superseded,
            (Settle::GiveUp { to, why }, Some(due)) => {
                let gave_up = Change {
                    last_error: Some(&why),
                    ..change(Status::Charging, to)
                };
                if !storage::apply(tx, order_id, gave_up, now).await? {
                    return Ok(WorkOutcome::Superseded);
                }
                let failed = Event::PaymentFailed(PaymentFailed {
                    reason: PaymentFailureReason::PaymentUnavailable,
                });
                outbox::enqueue(tx, &Envelope::caused_by(&due.cause, failed));
                after_commit(tx, span, move || {
                    metrics::counter!("orderflow_payments_total", "outcome" => "unavailable")
                        .increment(1);
                    tracing::info!(
                        reason = why,
                        settle_by_lookup = to == Status::Refunding,
                        "payment unavailable; the order is told"
                    );
                });
                WorkOutcome::Failed
            }
            (Settle::Charged { charge_id }, Some(due)) => {
                let succeeded = Change {
                    charge_id: Some(&charge_id),
                    ..change(Status::Charging, Status::Succeeded)
                };
                if storage::apply(tx, order_id, succeeded, now).await? {
                    let event = Event::PaymentSucceeded(PaymentSucceeded {
                        amount_cents: due.amount,
                        charge_id: charge_id.clone(),
                    });
                    outbox::enqueue(tx, &Envelope::caused_by(&due.cause, event));
                    let amount_cents = due.amount.cents();
                    after_commit(tx, span, move || {
                        metrics::counter!("orderflow_payments_total", "outcome" => "succeeded")
                            .increment(1);
                        tracing::debug!(charge_id, amount_cents, "payment succeeded");
                    });
                    WorkOutcome::Succeeded
                } else {
                    // Cancelled during the call: keep the charge id so the refund can be made.
                    let found = Change {
                        from: Status::Refunding,
                        to: Status::Refunding,
                        ..succeeded
                    };
                    if !storage::apply(tx, order_id, found, now).await? {
                        return Ok(WorkOutcome::Superseded);
                    }
                    after_commit(tx, span, move || {
                        tracing::info!(
                            charge_id,
                            "charge found for a cancelled order; refunding it"
                        );
                    });
                    WorkOutcome::RefundDue
                }
            }
            (Settle::NotCharged { code, declined }, Some(due)) => {
                // A pending order is told with `payments.failed {reason}`; a payment whose order was
                // cancelled during the call ends the same way, silently, since its order is cancelled
                // already and nothing is to be refunded.
                let (to, reason) = if declined {
                    (Status::Declined, PaymentFailureReason::PaymentDeclined)
                } else {
                    (Status::Failed, PaymentFailureReason::PaymentUnavailable)
                };
                let ended = Change {
                    last_error: Some(&code),
                    ..change(Status::Charging, to)
                };
                let told = storage::apply(tx, order_id, ended, now).await?;
                if told {
                    let event = Event::PaymentFailed(PaymentFailed { reason });
                    outbox::enqueue(tx, &Envelope::caused_by(&due.cause, event));
                } else {
                    let nothing_to_refund = Change {
                        from: Status::Refunding,
                        ..ended
                    };
                    if !storage::apply(tx, order_id, nothing_to_refund, now).await? {
                        return Ok(WorkOutcome::Superseded);
                    }
                }
                after_commit(tx, span, move || {
                    if declined {
                        metrics::counter!("orderflow_payments_total", "outcome" => "declined")
                            .increment(1);
                        tracing::debug!(
                            decline_code = code,
                            order_cancelled = !told,
                            "payment declined"
                        );
                    } else {
                        metrics::counter!("orderflow_payments_total", "outcome" => "unavailable")
                            .increment(1);
                        tracing::error!(
                            error = code,
                            "the gateway refused the charge request; payment failed"
                        );
                    }
                });
                if declined {
                    WorkOutcome::Declined
                } else {
                    WorkOutcome::Failed
                }
            }
            (Settle::LookedUp { found }, Some(_)) => {
                let (looked_up, outcome) = match found.iter().find(|charge| charge.succeeded) {
                    Some(charge) => (
                        Change {
                            charge_id: Some(charge.charge_id.as_str()),
                            ..change(Status::Refunding, Status::Refunding)
                        },
                        WorkOutcome::RefundDue,
                    ),
                    None => {
                        let to = if found.is_empty() {
                            Status::Failed
                        } else {
                            Status::Declined
                        };
                        let none = Change {
                            last_error: Some("no charge took money for this order"),
                            ..change(Status::Refunding, to)
                        };
                        (none, WorkOutcome::NothingCharged)
                    }
                };
                if !storage::apply(tx, order_id, looked_up, now).await? {
                    return Ok(WorkOutcome::Superseded);
                }
                let charge_id = looked_up.charge_id.map(str::to_owned);
                after_commit(tx, span, move || match charge_id {
                    Some(charge_id) => tracing::info!(
                        charge_id,
                        "charge found by lookup for an order that will not be fulfilled; refunding it"
                    ),
                    None => tracing::info!(
                        "lookup found no charge that took money; the payment ends without one"
                    ),
                });
                outcome
            }
            (Settle::Refunded { charge_id, refund }, Some(due)) => {
                let refunded = change(Status::Refunding, Status::Refunded);
                if !storage::apply(tx, order_id, refunded, now).await? {
                    return Ok(WorkOutcome::Superseded);
                }
                let event = Event::PaymentRefunded(PaymentRefunded {
                    // The gateway's figure is what actually went back; ours only if it sent nonsense.
                    amount_cents: Money::from_cents(refund.amount_cents).unwrap_or(due.amount),
                    charge_id: charge_id.clone(),
                });
                outbox::enqueue(tx, &Envelope::caused_by(&due.cause, event));
                after_commit(tx, span, move || {
                    metrics::counter!("orderflow_payments_total", "outcome" => "refunded")
                        .increment(1);
                    tracing::info!(charge_id, refund_id = %refund.refund_id,
                        amount_cents = refund.amount_cents, "payment refunded");
                });
                WorkOutcome::Refunded
            }
        };
        // A refund whose charge is now known, and a payment given up that must still be settled,
        // are due at once: the worker looks again once this commits.
        if matches!(outcome, WorkOutcome::RefundDue | WorkOutcome::Failed) {
            let work_due = self.work_due.clone();
            tx.after_commit(move || work_due.notify_one());
        }
        Ok(outcome)
    }
}

/// Logs (and counts) what a step did in its span, once the turn that wrote it down has committed.
fn after_commit(tx: &mut Tx, span: Span, report: impl FnOnce() + Send + 'static) {
    tx.after_commit(move || span.in_scope(report));
}

/// Tells the breaker how the call went. Only signs of an unwell gateway count as failures (timeouts,
/// connection errors, 5xx, 429); a decline or a refused request is an answer, so a success for it.
fn record<T>(permit: Permit<'_>, answer: &Result<T, GatewayError>) {
    permit.record(!matches!(answer, Err(error) if error.transient));
}
