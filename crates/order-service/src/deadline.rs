//! The saga deadline. An order still pending at its `deadline_at` (stock or payment never answered) is
//! cancelled with reason `timeout`, and `orders.cancelled` tells inventory to release its stock and
//! payment never to charge (or to refund). Deadlines are stored with the orders, so an order-service
//! restart picks up where it left off.

use crate::domain::OrderStatus;
use crate::outcomes::{Ended, Outcomes};
use crate::storage::{self, Overdue};
use contracts::Envelope;
use contracts::events::{CancelReason, Event, OrderCancelled};
use platform::Shutdown;
use platform::db::{Db, SqlError, now_us};
use platform::outbox;
use platform::telemetry::OutageLog;
use std::time::Duration;

/// Orders cancelled per step; more simply wait for the next step.
const BATCH: i64 = 100;
/// The sweeper never sleeps longer than this, so orders created meanwhile are not missed by much.
const MAX_SLEEP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct DeadlineSweeper {
    db: Db,
    outcomes: Outcomes,
}

impl DeadlineSweeper {
    pub fn new(db: Db, outcomes: Outcomes) -> Self {
        Self { db, outcomes }
    }

    /// One step: cancels up to one batch of overdue orders; returns how many it cancelled.
    pub async fn cancel_overdue(&self) -> Result<usize, SqlError> {
        let overdue = storage::overdue_orders(&self.db, now_us(), BATCH).await?;
        let mut cancelled = 0;
        for order in overdue {
            if self.cancel(&order).await? {
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }

    /// Cancels one order if it is still pending; the status check and the cancellation are one
    /// conditional update, so a confirmation that commits first wins.
    async fn cancel(&self, order: &Overdue) -> Result<bool, SqlError> {
        let reason = CancelReason::Timeout;
        let mut tx = self.db.begin().await?;
        let Some(took) = storage::finish(
            &mut tx,
            order.order_id,
            OrderStatus::Cancelled,
            None,
            Some(reason),
        )
        .await?
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        let mut envelope = Envelope::first(
            order.order_id,
            order.correlation_id.clone(),
            Event::OrderCancelled(OrderCancelled { reason }),
        );
        envelope.meta.causation_id = order.created_event_id;
        envelope.meta.priority = order.priority;
        // The sweep's cancellation is a span of the order's trace, under the request that placed it.
        let span = tracing::info_span!("deadline", order_id = %order.order_id,
            correlation_id = %order.correlation_id, trace_id = tracing::field::Empty);
        let trace = platform::telemetry::join_trace(&span, order.placed_by);
        span.record("trace_id", tracing::field::display(trace.trace_id));
        envelope.meta.trace = Some(trace);
        storage::record_timeline(&mut tx, &[&envelope]);
        outbox::enqueue(&mut tx, &envelope);
        let ended = Ended {
            reason: Some(reason),
            ..Ended::of(&envelope.meta, OrderStatus::Cancelled, took)
        };
        self.outcomes.ended_after_commit(&mut tx, ended);
        tx.commit().await?;
        tracing::warn!(order_id = %order.order_id, correlation_id = %order.correlation_id,
            trace_id = envelope.meta.trace.map(|trace| tracing::field::display(trace.trace_id)),
            "saga deadline passed; order cancelled (timeout), stock will be released and any charge refunded");
        Ok(true)
    }

    /// Sweeps until shutdown, sleeping until the next deadline (at most a second).
    pub async fn run(&self, mut shutdown: Shutdown) {
        let mut outage = OutageLog::new(
            "saga deadline sweep",
            "overdue orders are cancelled once the database answers",
        );
        loop {
            let swept = match self.cancel_overdue().await {
                Ok(n) if n as i64 == BATCH => Ok(Duration::ZERO),
                Ok(_) => storage::next_deadline(&self.db)
                    .await
                    .map(|next| match next {
                        Some(next) => {
                            let wait_us = u64::try_from(next - now_us()).unwrap_or(0);
                            Duration::from_micros(wait_us).min(MAX_SLEEP)
                        }
                        None => MAX_SLEEP,
                    }),
                Err(error) => Err(error),
            };
            let pause = match swept {
                Ok(pause) => {
                    outage.succeeded();
                    pause
                }
                Err(error) => {
                    outage.failed(&error, MAX_SLEEP);
                    MAX_SLEEP
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.requested() => return,
            }
        }
    }
}
