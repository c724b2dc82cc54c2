//! The transactional outbox. A service never publishes directly: it inserts the event into `outbox` in
//! the same transaction as the state change ([`enqueue`]), so either both happen or neither does. The
//! [`Relay`] then publishes pending rows in `sequence` order, waits for JetStream's acknowledgement and
//! only then marks them published. A crash anywhere in between means the row is published again, which
//! `Nats-Msg-Id` de-duplication (and, beyond its window, every consumer's inbox) makes harmless.

use crate::backoff::Backoff;
use crate::db::{Db, SqlError, Tx, now_us, query, values_placeholders};
use crate::nats::{StreamLimits, declare_streams, header_value};
use crate::shutdown::Shutdown;
use crate::telemetry::{OutageLog, error_chain};
use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use contracts::Envelope;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Header carrying the saga's correlation id, so operators can follow a saga with plain NATS tools.
pub const CORRELATION_HEADER: &str = "Orderflow-Correlation-Id";

/// Publishes are pipelined this many at a time: many in flight is what makes JetStream fast.
const BATCH: i64 = 256;
/// The relay also polls this often, in case a wake-up was missed (another instance, a manual insert).
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Pauses while NATS or the database is unavailable, growing while it lasts.
const OUTAGE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Adds `envelope` to the outbox inside the caller's transaction.
pub async fn enqueue(tx: &mut Tx, envelope: &Envelope) -> Result<(), SqlError> {
    query(
        "INSERT INTO outbox (event_id, subject, order_id, correlation_id, payload, created_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(envelope.meta.event_id.to_string())
    .bind(envelope.event.subject())
    .bind(envelope.meta.order_id.to_string())
    .bind(envelope.meta.correlation_id.as_str().to_owned())
    .bind(envelope.to_json())
    .bind(now_us())
    .execute(tx.conn())
    .await?;
    tx.outbox_written();
    Ok(())
}

/// Wakes the relay right after a commit, so events leave within milliseconds instead of a poll period.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    pub(crate) fn wake(&self) {
        // `notify_one` keeps a permit when the relay is busy, so a wake-up during a publish is not lost.
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot read or mark outbox rows")]
    Database(#[from] SqlError),
    #[error("cannot publish event {event_id} to {subject}")]
    Publish {
        event_id: String,
        subject: String,
        #[source]
        source: PublishError,
    },
}

/// Publishes the outbox of one service.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Db,
    js: jetstream::Context,
    /// For declaring the streams again when one has gone missing on the broker.
    limits: StreamLimits,
}

#[derive(serde::Deserialize)]
struct PendingRow {
    sequence: i64,
    event_id: String,
    subject: String,
    correlation_id: String,
    payload: Vec<u8>,
}

impl Relay {
    /// The relay is woken by the commits of transactions begun on `db` that wrote outbox rows.
    pub fn new(db: Db, js: jetstream::Context, limits: StreamLimits) -> Self {
        Self { db, js, limits }
    }

    /// One step: publishes up to one batch of pending rows and marks the acknowledged ones. Returns how
    /// many were published. Stops at the first failure; the rest stay pending for the next step.
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        let rows: Vec<PendingRow> = query(
            "SELECT sequence, event_id, subject, correlation_id, payload FROM outbox \
             WHERE published_at_us IS NULL ORDER BY sequence LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(self.db.pool())
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        // Send every publish first and only then wait for the acks: one round trip for the batch.
        let mut in_flight = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in &rows {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                header_value(&row.event_id),
            );
            // Rows written before correlation ids were checked on decode may hold anything.
            headers.insert(CORRELATION_HEADER, header_value(&row.correlation_id));
            match self
                .js
                .publish_with_headers(row.subject.clone(), headers, row.payload.clone().into())
                .await
            {
                Ok(ack) => in_flight.push((row, ack)),
                Err(error) => {
                    failure = Some(publish_error(row, error));
                    break;
                }
            }
        }
        // Await the acks together: each one's timeout starts when it is first polled, so awaiting them
        // one by one after the broker died would cost the timeout once per event in the batch.
        let (rows_in_flight, acks): (Vec<_>, Vec<_>) = in_flight.into_iter().unzip();
        let answers =
            futures::future::join_all(acks.into_iter().map(IntoFuture::into_future)).await;
        let mut published = Vec::with_capacity(answers.len());
        for (row, answer) in rows_in_flight.into_iter().zip(answers) {
            match answer {
                Ok(_) => published.push(row.sequence),
                Err(error) => {
                    failure.get_or_insert(publish_error(row, error));
                }
            }
        }

        if !published.is_empty() {
            // Listing the rows (not a range) never marks one that committed after our SELECT. The
            // statement's text depends only on how many there are, so SQLite's statement cache keeps
            // a few shapes instead of one per batch.
            let mut mark = query(format!(
                "UPDATE outbox SET published_at_us = ${} WHERE sequence IN ({})",
                published.len() + 1,
                values_placeholders(published.len(), 1)
            ));
            for sequence in &published {
                mark = mark.bind(*sequence);
            }
            mark.bind(now_us()).execute(self.db.pool()).await?;
            metrics::counter!("orderflow_outbox_published_total").increment(published.len() as u64);
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(published.len()),
        }
    }

    /// Publishes until shutdown: immediately when woken, at least every second, and with growing pauses
    /// (up to 5 s) while NATS or the database is unavailable. Events stay safely in the table meanwhile.
    /// A stream that has gone missing on the broker is declared again.
    pub async fn run(&self, mut shutdown: Shutdown) {
        let mut outage = OutageLog::new(
            "outbox relay",
            "events stay in the outbox and are published once NATS and the database answer",
        );
        loop {
            if shutdown.is_requested() {
                break;
            }
            let published = self.publish_pending().await;
            if let Err(RelayError::Publish { source, .. }) = &published
                && source.kind() == PublishErrorKind::StreamNotFound
            {
                tracing::warn!("a stream is missing on the broker; declaring the streams again");
                if let Err(error) = declare_streams(&self.js, self.limits).await {
                    tracing::warn!(error = %error_chain(&error), "cannot declare the streams");
                }
            }
            let pause = match published {
                Ok(n) => {
                    outage.succeeded();
                    if n as i64 == BATCH {
                        continue;
                    }
                    POLL_EVERY
                }
                Err(error) => {
                    let pause = OUTAGE_BACKOFF.delay(outage.failures().saturating_add(1));
                    metrics::counter!("orderflow_outbox_publish_errors_total").increment(1);
                    outage.failed(&error, pause);
                    pause
                }
            };
            tokio::select! {
                _ = self.db.outbox_signal().woken(), if outage.failures() == 0 => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.requested() => break,
            }
        }
        // Last chance to send what the final handled messages produced; whatever fails stays pending.
        if let Ok(Err(error)) =
            tokio::time::timeout(Duration::from_secs(2), self.publish_pending()).await
        {
            tracing::warn!(error = %error_chain(&error), "outbox not flushed at shutdown; it will be published on the next start");
        }
    }
}

fn publish_error(row: &PendingRow, source: PublishError) -> RelayError {
    RelayError::Publish {
        event_id: row.event_id.clone(),
        subject: row.subject.clone(),
        source,
    }
}
