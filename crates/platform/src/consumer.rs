//! The consumer runtime: the one place that turns a JetStream message into a committed effect.
//!
//! For each message: decode the envelope (undecodable: dead-letter and terminate) → begin a
//! transaction → record the event in the inbox (already there: a duplicate, so just ack) → run the
//! service's [`Handler`] inside the same transaction → commit → ack → wake the outbox relay.
//! A transient failure is nak'ed with the policy's backoff; the last allowed delivery and permanent
//! failures are copied to the `DLQ` stream (awaiting its ack) and then terminated.
//! Handlers never see NATS: they change state and enqueue outbox events, nothing else.

use crate::db::{Db, Tx, now_us};
use crate::nats::{DeliveryPolicy, NatsError, declare_consumer};
use crate::outbox::OutboxSignal;
use crate::shutdown::Shutdown;
use crate::telemetry::error_chain;
use async_nats::jetstream::{self, AckKind};
use contracts::topology::{ConsumerSpec, dead_letter_headers, dead_letter_subject};
use contracts::{DecodeError, Envelope};
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tracing::Instrument;

/// Messages asked for per pull request; also how many a consumer holds unacknowledged at most.
const PULL_BATCH: usize = 100;
/// Lifetime of one pull request.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// How long past its expiry a pull request may stay silent before it is presumed lost.
const PULL_GRACE: Duration = Duration::from_millis(500);
/// Pause before pulling again after the broker refused a pull request.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (database busy, a dependency down): retry after a backoff.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Will never succeed for this event (a broken invariant): dead-letter it now.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::Transient(error_chain(&error))
    }
}

/// A service's reaction to events. It gets the open transaction and the decoded envelope; everything it
/// writes (state and outbox rows) commits together with the inbox record.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        tx: &mut Tx,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called after an applied event's transaction committed: the moment to wake a worker that acts
    /// on what the handler wrote (waking it from `handle` would let it look before the commit).
    fn committed(&self) {}
}

/// What happened to one message; returned by [`Consumer::process`] so tests can drive single steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Retrying,
    DeadLettered,
}

/// One durable consumer of one service.
pub struct Consumer<H> {
    spec: ConsumerSpec,
    policy: DeliveryPolicy,
    db: Db,
    js: jetstream::Context,
    handler: H,
    outbox: OutboxSignal,
    /// When each still-failing message (by stream sequence) first failed, for its dead letter. Kept in
    /// memory: after a restart the first failure this process saw is reported.
    first_failures: Mutex<HashMap<u64, String>>,
}

impl<H: Handler> Consumer<H> {
    pub fn new(
        spec: ConsumerSpec,
        policy: DeliveryPolicy,
        db: Db,
        js: jetstream::Context,
        handler: H,
        outbox: OutboxSignal,
    ) -> Self {
        Self {
            spec,
            policy,
            db,
            js,
            handler,
            outbox,
            first_failures: Mutex::new(HashMap::new()),
        }
    }

    /// Pulls and processes messages until shutdown. The message in hand is always finished (acked,
    /// nak'ed or dead-lettered) before returning, so a stop never leaves one waiting for `ack_wait`.
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), NatsError> {
        let consumer = declare_consumer(&self.js, self.spec, &self.policy).await?;
        tracing::info!(consumer = self.spec.name, "consuming");
        loop {
            // Short pull requests, renewed in a loop, instead of one endless subscription: a request
            // lost with a broker restart or a dropped connection is replaced within a second or two,
            // where a long-lived pull could sit idle until its expiry while events pile up.
            let batch = consumer
                .batch()
                .max_messages(PULL_BATCH)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut messages = match batch {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(consumer = self.spec.name, error = %error_chain(&error),
                        retry_in_ms = PULL_RETRY.as_millis() as u64, "cannot pull; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(PULL_RETRY) => continue,
                        _ = shutdown.requested() => return Ok(()),
                    }
                }
            };
            loop {
                // Messages of a live request arrive within its expiry, and its end is signalled;
                // silence beyond that means the request died with the connection.
                let next = tokio::select! {
                    next = tokio::time::timeout(PULL_EXPIRES + PULL_GRACE, messages.next()) => next,
                    _ = shutdown.requested() => return Ok(()),
                };
                match next {
                    Ok(Some(Ok(message))) => {
                        self.process(&message).await;
                    }
                    Ok(Some(Err(error))) => {
                        tracing::debug!(consumer = self.spec.name, error = %error, "pull request ended");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    /// Handles one message to the end: applied and acked, duplicate and acked, nak'ed for a retry, or
    /// dead-lettered and terminated.
    pub async fn process(&self, message: &jetstream::Message) -> Outcome {
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        let envelope = match Envelope::from_json(&message.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                let reason = decode_reason(&error);
                return self.dead_letter(message, delivered, &reason).await;
            }
        };
        let span = tracing::info_span!(
            "event",
            consumer = self.spec.name,
            event_type = envelope.event.event_type(),
            event_id = %envelope.meta.event_id,
            order_id = %envelope.meta.order_id,
            correlation_id = %envelope.meta.correlation_id,
            delivered,
        );
        async {
            let result = self.apply_keeping_alive(message, &envelope).await;
            let outcome = match result {
                Ok(true) => {
                    self.forget_failure(message);
                    self.outbox.wake();
                    self.handler.committed();
                    tracing::info!("event applied");
                    self.ack(message, AckKind::Ack).await;
                    Outcome::Applied
                }
                Ok(false) => {
                    tracing::info!("duplicate event ignored");
                    self.ack(message, AckKind::Ack).await;
                    Outcome::Duplicate
                }
                Err(HandlerError::Transient(reason)) if delivered < self.policy.max_deliver => {
                    self.note_failure(message);
                    let delay = self.policy.delay_after(delivered);
                    tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "event failed; will retry");
                    self.ack(message, AckKind::Nak(Some(delay))).await;
                    Outcome::Retrying
                }
                Err(error) => {
                    let reason = match error {
                        HandlerError::Transient(reason) => {
                            format!("gave up after {delivered} deliveries: {reason}")
                        }
                        HandlerError::Permanent(reason) => reason,
                    };
                    self.dead_letter(message, delivered, &reason).await
                }
            };
            metrics::counter!("orderflow_events_consumed_total",
                "consumer" => self.spec.name, "outcome" => outcome_label(outcome))
            .increment(1);
            outcome
        }
        .instrument(span)
        .await
    }

    /// Applies the event, telling the server "still working" every third of `ack_wait`, so a slow
    /// handler (a busy database) is not redelivered to another instance while it is still running.
    async fn apply_keeping_alive(
        &self,
        message: &jetstream::Message,
        envelope: &Envelope,
    ) -> Result<bool, HandlerError> {
        let apply = self.apply(envelope);
        tokio::pin!(apply);
        let every = self.policy.ack_wait / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut apply => return result,
                _ = ticks.tick() => self.ack(message, AckKind::Progress).await,
            }
        }
    }

    /// Runs inbox check and handler in one transaction. `Ok(false)`: the event was already applied.
    async fn apply(&self, envelope: &Envelope) -> Result<bool, HandlerError> {
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO inbox (consumer, event_id, subject, order_id, processed_at_us) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(self.spec.name)
        .bind(envelope.meta.event_id.to_string())
        .bind(envelope.event.subject())
        .bind(envelope.meta.order_id.to_string())
        .bind(now_us())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        self.handler.handle(&mut tx, envelope).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Copies the message, unchanged, to `dlq.<consumer>` with headers saying why, then terminates it.
    /// If the copy cannot be stored, the message is nak'ed instead: it must not vanish.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        delivered: i64,
        reason: &str,
    ) -> Outcome {
        let failed_at = crate::db::format_us(now_us());
        let first_failed_at = self
            .forget_failure(message)
            .unwrap_or_else(|| failed_at.clone());
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(dead_letter_headers::SUBJECT, message.subject.as_str());
        headers.insert(dead_letter_headers::CONSUMER, self.spec.name);
        headers.insert(dead_letter_headers::ERROR, reason);
        headers.insert(
            dead_letter_headers::DELIVERIES,
            delivered.to_string().as_str(),
        );
        headers.insert(
            dead_letter_headers::FIRST_FAILED_AT,
            first_failed_at.as_str(),
        );
        headers.insert(dead_letter_headers::FAILED_AT, failed_at.as_str());
        // The dead letter gets its own message id: the original one may sit in the DLQ's window already
        // from an earlier dead-lettering that was replayed.
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq-{}-{}", self.spec.name, uuid::Uuid::now_v7()).as_str(),
        );
        let stored = match self
            .js
            .publish_with_headers(
                dead_letter_subject(self.spec.name),
                headers,
                message.payload.clone(),
            )
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| error_chain(&e)),
            Err(error) => Err(error_chain(&error)),
        };
        match stored {
            Ok(()) => {
                // An undecodable message has no span with its saga's ids; the relay's header may.
                let correlation_id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(crate::outbox::CORRELATION_HEADER))
                    .map(|v| v.as_str().to_owned());
                tracing::error!(consumer = self.spec.name, subject = %message.subject, %reason, delivered,
                    correlation_id = correlation_id.as_deref(),
                    "message dead-lettered; inspect and replay it with `orderflow dlq`");
                self.ack(message, AckKind::Term).await;
                Outcome::DeadLettered
            }
            Err(error) => {
                let delay = self.policy.delay_after(delivered);
                tracing::error!(consumer = self.spec.name, %reason, dlq_error = %error,
                    retry_in_ms = delay.as_millis() as u64, "cannot dead-letter message; will retry");
                self.ack(message, AckKind::Nak(Some(delay))).await;
                Outcome::Retrying
            }
        }
    }

    fn note_failure(&self, message: &jetstream::Message) {
        if let Ok(info) = message.info()
            && let Ok(mut failures) = self.first_failures.lock()
        {
            failures
                .entry(info.stream_sequence)
                .or_insert_with(|| crate::db::format_us(now_us()));
        }
    }

    fn forget_failure(&self, message: &jetstream::Message) -> Option<String> {
        let sequence = message.info().ok()?.stream_sequence;
        self.first_failures.lock().ok()?.remove(&sequence)
    }

    async fn ack(&self, message: &jetstream::Message, kind: AckKind) {
        if let Err(error) = message.ack_with(kind).await {
            // The effect is committed (or nothing changed); a lost ack only means a redelivery, which
            // the inbox turns into a no-op.
            tracing::warn!(consumer = self.spec.name, error = %error, "acknowledgement not sent");
        }
    }
}

fn decode_reason(error: &DecodeError) -> String {
    format!("cannot decode event: {}", error_chain(error))
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Retrying => "retrying",
        Outcome::DeadLettered => "dead_lettered",
    }
}
