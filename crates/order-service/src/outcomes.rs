//! What order-service tells about the orders it accepts and ends: the one info line per saga, the
//! business metrics (orders by final status and cancel reason, how long sagas take) and the counts of
//! the last minute that `/status` shows. All of it happens once the change has committed, so a batch
//! rolled back and handled again never counts an order twice.

use crate::domain::OrderStatus;
use contracts::events::CancelReason;
use contracts::{CorrelationId, EventMeta, Money, OrderId, TraceContext};
use platform::db::Tx;
use platform::health::DetailsProbe;
use platform::telemetry::LastMinute;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How an order ended, with what the saga's outcome line and metrics say about it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub trace: Option<TraceContext>,
    pub status: OrderStatus,
    pub total: Option<Money>,
    pub reason: Option<CancelReason>,
    /// From acceptance to this end.
    pub took: Duration,
}

impl Ended {
    /// `meta`'s order, ended `status` after `took`.
    pub fn of(meta: &EventMeta, status: OrderStatus, took: Duration) -> Self {
        Self {
            order_id: meta.order_id,
            correlation_id: meta.correlation_id.clone(),
            trace: meta.trace,
            status,
            total: None,
            reason: None,
            took,
        }
    }
}

/// Shared by the API, the consumers and the deadline sweep of one process.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    last_minute: LastMinute,
}

impl Outcomes {
    /// An order was accepted (its transaction committed).
    pub fn accepted(&self) {
        metrics::counter!("orderflow_orders_accepted_total").increment(1);
        self.last_minute.add("accepted");
    }

    /// Logs and counts `ended` once `tx` commits.
    pub fn ended_after_commit(&self, tx: &mut Tx, ended: Ended) {
        let outcomes = self.clone();
        tx.after_commit(move || outcomes.ended(&ended));
    }

    fn ended(&self, ended: &Ended) {
        let status = ended.status.as_str();
        let reason = ended.reason.map(|reason| reason.as_str()).unwrap_or("");
        metrics::counter!("orderflow_orders_finished_total", "status" => status, "reason" => reason)
            .increment(1);
        metrics::histogram!("orderflow_saga_duration_seconds", "status" => status)
            .record(ended.took.as_secs_f64());
        self.last_minute.add(status);
        // The saga's one line at info, under a root span of its own: the fields of the consumer's
        // event span, where the commit ran, would double its size on every order. Failures are
        // logged inside the event span, with all of its context.
        let trace_id = ended
            .trace
            .map(|trace| tracing::field::display(trace.trace_id));
        let span = tracing::info_span!(parent: None, "saga");
        span.in_scope(|| match ended.reason {
            None => tracing::info!(order_id = %ended.order_id,
                correlation_id = %ended.correlation_id, trace_id,
                total_cents = ended.total.as_ref().map(Money::cents), took_ms = ended.took.as_millis() as u64,
                "order {status}"),
            Some(reason) => tracing::info!(order_id = %ended.order_id,
                correlation_id = %ended.correlation_id, trace_id,
                reason = reason.as_str(), took_ms = ended.took.as_millis() as u64,
                "order {status}"),
        });
    }

    /// `/status`'s `orders_last_minute`: orders accepted, confirmed and cancelled in the last minute.
    pub fn details(&self) -> DetailsProbe {
        let last_minute = self.last_minute.clone();
        Arc::new(move |_db| {
            let counts: BTreeMap<&str, u64> = last_minute.counts();
            let details = BTreeMap::from([(
                "orders_last_minute".to_owned(),
                serde_json::json!({
                    "accepted": counts.get("accepted").copied().unwrap_or(0),
                    "confirmed": counts.get(OrderStatus::Confirmed.as_str()).copied().unwrap_or(0),
                    "cancelled": counts.get(OrderStatus::Cancelled.as_str()).copied().unwrap_or(0),
                }),
            )]);
            Box::pin(async move { details })
        })
    }
}
