//! The consumer runtime: the one place that turns a JetStream message into a committed effect.
//!
//! For each message: decode the envelope (undecodable: dead-letter) → begin a transaction → record the
//! event in the inbox (already there: a duplicate, so just ack) → run the service's [`Handler`] inside
//! the same transaction → commit (which wakes the outbox relay if the handler enqueued events) → ack.
//! Handlers never see NATS: they change state and enqueue outbox events, nothing else.
//!
//! How a message can leave its consumer (ADR 0009), and nothing else may remove it:
//! - acked, after its effect committed (or because the inbox shows it was applied before);
//! - dead-lettered: copied to the `DLQ` stream, and only once JetStream acknowledged the copy,
//!   terminated. A permanent failure (undecodable, unknown type or version, a broken invariant, a
//!   handler that panicked) goes at once; a failure that may pass is retried with backoff and goes once
//!   it failed `max_deliver` times. The runtime counts those failures itself, in the service's
//!   database, and the server's own limit is off: the server never gives up on a message first.
//!
//! What does not count against a message: an outage of the service's own database. The consumer then
//! holds the message, stops pulling, reports `database` as not ready, and tries the same message again
//! with backoff until the database answers; a database that is down for an hour dead-letters nothing.
//! Under load, messages that have already arrived are applied together (ADR 0010): one transaction
//! for the batch, one inbox statement for all of its events, the handlers in stream order (so one
//! order's events stay in sequence), one commit, then every ack. Anything unusual in a batch (a
//! handler error, a panic, a database outage) rolls the batch back and handles its messages one at
//! a time as described above, so batching changes only the cost of the common case.
//!
//! The consumer also outlives its broker-side declaration: a consumer deleted on the broker, or one
//! that cannot be declared yet, is declared again with backoff.

use crate::backoff::{Backoff, Retries};
use crate::db::{
    Db, Executor, SqlError, Tx, format_us, is_infrastructure, now_us, query, values_placeholders,
};
use crate::health::Readiness;
use crate::nats::{DeliveryPolicy, StreamLimits, declare_consumer, declare_stream, header_value};
use crate::outbox::CORRELATION_HEADER;
use crate::shutdown::Shutdown;
use crate::telemetry::error_chain;
use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, AckKind};
use contracts::topology::{ConsumerSpec, DLQ, dead_letter_headers, dead_letter_subject};
use contracts::trace::TRACEPARENT_HEADER;
use contracts::{DecodeError, Envelope, Priority, TraceContext};
use futures::{FutureExt, StreamExt};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::Instrument;

/// Messages asked for per pull request; also how many a consumer holds unacknowledged at most.
const PULL_BATCH: usize = 100;
/// The unacknowledged messages the broker lets one durable consumer have, across its instances: the
/// batches in hand of a few instances, or one batch and messages waiting for a retry. Beyond it the
/// broker delivers nothing more until acks come back, so a slow consumer's backlog stays in the
/// stream, where admission control sees it, instead of in flight.
pub const MAX_ACK_PENDING: i64 = 4 * PULL_BATCH as i64;
/// The most events recorded in the inbox by one statement (a power of two).
const MAX_INBOX_CHUNK: usize = 64;
/// Lifetime of one pull request.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// How long past its expiry a pull request may stay silent before it is presumed lost.
const PULL_GRACE: Duration = Duration::from_millis(500);
/// The longest a normal consumer waits for its service's express batches before its own batch.
const NORMAL_YIELDS_AT_MOST: Duration = Duration::from_millis(50);
/// Pauses after the broker refused a pull, or a declaration failed: growing while it keeps failing.
const BROKER_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
/// Pauses between tries of a held message while the service's database is unavailable.
const OUTAGE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// After this long without a message, the consumer checks that it still exists on the broker: a
/// deleted consumer answers pull requests with silence, not with an error.
const IDLE_CHECK: Duration = Duration::from_secs(3);
/// A pull or declaration that worked for this long starts the backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// The readiness check that a consumer waiting out a database outage reports on.
pub const DATABASE_CHECK: &str = "database";

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (a race with another instance, a row not there yet): retried with
    /// backoff, and counted against the message's delivery limit.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Will never succeed for this event (a broken invariant): dead-letter it now.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// The service's own database is unavailable: nothing is wrong with the event. Never counted
    /// against it; the consumer waits for the database instead.
    #[error("database unavailable: {0}")]
    Infrastructure(String),
}

impl From<SqlError> for HandlerError {
    fn from(error: SqlError) -> Self {
        if is_infrastructure(&error) {
            HandlerError::Infrastructure(error_chain(&error))
        } else {
            HandlerError::Transient(error_chain(&error))
        }
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

    /// Waits until the handler can take on more events of `lane`; the consumer asks before each
    /// pull. A handler whose work goes on after the commit, in a queue of its own, holds the consumer
    /// back here while that queue is full: the backlog then stays in the stream, bounded by nothing
    /// but the stream, and admission control sees it there (ADR 16).
    fn ready(&self, lane: Priority) -> impl Future<Output = ()> + Send {
        let _ = lane;
        std::future::ready(())
    }
}

contracts::text_enum! {
    /// What happened to one message; returned by [`Consumer::process`] so tests can drive single steps.
    pub enum Outcome {
        Applied => "applied",
        Duplicate => "duplicate",
        /// Nak'ed to be tried again after a pause (a failure that may pass, or a dead letter that could
        /// not be stored yet), or handed back unprocessed at shutdown.
        Retrying => "retrying",
        DeadLettered => "dead_lettered",
        /// Acked unread: a copy of a dual-published event in a version this consumer does not read,
        /// whose copy in a version it reads it handles.
        Skipped => "skipped",
    }
}

/// One durable consumer of one service.
pub struct Consumer<H> {
    spec: ConsumerSpec,
    policy: DeliveryPolicy,
    /// The service's database, for the consumer's lane.
    db: Db,
    js: jetstream::Context,
    handler: H,
    readiness: Readiness,
    /// What a missing `DLQ` stream is declared again with (its replicas; it has no age limit).
    streams: StreamLimits,
    gate: PriorityGate,
}

/// Lets a service's express work go first (ADR 15): while one of its express consumers handles
/// events, its normal consumers wait before they take on their next batch, so that the machine's
/// cores go to the express events. The wait is bounded: a steady flow of express events slows the
/// normal lane but never stops it.
#[derive(Debug, Clone, Default)]
pub struct PriorityGate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    /// Express batches being handled right now.
    express_busy: AtomicUsize,
    express_done: Notify,
}

/// Held while an express batch is handled.
struct ExpressBusy(Arc<GateState>);

impl Drop for ExpressBusy {
    fn drop(&mut self) {
        if self.0.express_busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.express_done.notify_waiters();
        }
    }
}

impl PriorityGate {
    fn express_busy(&self) -> ExpressBusy {
        self.0.express_busy.fetch_add(1, Ordering::AcqRel);
        ExpressBusy(Arc::clone(&self.0))
    }

    /// Waits until no express batch is being handled, or [`NORMAL_YIELDS_AT_MOST`].
    async fn normal_turn(&self) {
        let until = tokio::time::Instant::now() + NORMAL_YIELDS_AT_MOST;
        loop {
            // Made before the check, so an express batch ending in between still wakes it.
            let done = self.0.express_done.notified();
            if self.0.express_busy.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(until, done).await.is_err() {
                return;
            }
        }
    }
}

/// A decoded message, with the span its lines are logged in.
struct Delivery<'a> {
    message: &'a jetstream::Message,
    span: tracing::Span,
    envelope: Envelope,
    sequence: u64,
    delivered: i64,
}

/// What a dead letter says about the failures that led to it.
#[derive(serde::Deserialize)]
struct Failures {
    #[serde(rename = "failures")]
    count: i64,
    first_failed_at_us: i64,
}

impl<H: Handler> Consumer<H> {
    pub fn new(
        spec: ConsumerSpec,
        policy: DeliveryPolicy,
        db: Db,
        js: jetstream::Context,
        handler: H,
        readiness: Readiness,
    ) -> Self {
        Self {
            spec,
            policy,
            db: db.prioritized(spec.priority),
            js,
            handler,
            readiness,
            streams: StreamLimits {
                max_age: Duration::ZERO,
                replicas: 1,
            },
            gate: PriorityGate::default(),
        }
    }

    /// The gate shared with the service's other consumers, so that its express lane goes first.
    pub fn with_gate(mut self, gate: PriorityGate) -> Self {
        self.gate = gate;
        self
    }

    /// The streams' settings of the service, for declaring a missing `DLQ` again as it was: on a
    /// cluster with its replicas. One replica unless given.
    pub fn with_streams(mut self, streams: StreamLimits) -> Self {
        self.streams = streams;
        self
    }

    /// Pulls and processes messages until shutdown. The message in hand is always finished (acked,
    /// nak'ed or dead-lettered) before returning, so a stop never leaves one waiting for `ack_wait`.
    pub async fn run(&self, mut shutdown: Shutdown) {
        let name = self.spec.name;
        let mut retries = Retries::new(BROKER_BACKOFF, HEALTHY_AFTER);
        loop {
            let attempt = Instant::now();
            let consumer = match declare_consumer(&self.js, self.spec, &self.policy).await {
                Ok(consumer) => consumer,
                Err(error) => {
                    let pause = retries.failed(attempt.elapsed());
                    let reason = error_chain(&error);
                    tracing::warn!(consumer = name, error = %reason,
                        retry_in_ms = pause.as_millis() as u64, "cannot declare the consumer; retrying");
                    self.readiness
                        .report(name, name, Err(format!("not consuming: {reason}")));
                    if sleep_or_stop(pause, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            self.readiness.report(name, name, Ok(()));
            tracing::info!(consumer = name, "consuming");
            match self.consume(consumer, &mut shutdown).await {
                Pulled::Stopped => return,
                Pulled::Broken(reason) => {
                    let pause = retries.failed(attempt.elapsed());
                    tracing::warn!(consumer = name, error = %reason,
                        retry_in_ms = pause.as_millis() as u64, "cannot pull; declaring the consumer again");
                    if sleep_or_stop(pause, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Pulls with short requests, renewed in a loop, until shutdown or until the consumer seems gone.
    /// Short requests instead of one endless subscription: a request lost with a broker restart or a
    /// dropped connection is replaced within a second or two (ADR 0008).
    async fn consume(&self, mut consumer: PullConsumer, shutdown: &mut Shutdown) -> Pulled {
        let mut last_message = Instant::now();
        loop {
            tokio::select! {
                () = self.handler.ready(self.spec.priority) => {}
                _ = shutdown.requested() => return Pulled::Stopped,
            }
            let batch = consumer
                .batch()
                .max_messages(PULL_BATCH)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut messages = match batch {
                Ok(messages) => messages,
                Err(error) => return Pulled::Broken(error_chain(&error)),
            };
            loop {
                // Messages of a live request arrive within its expiry, and its end is signalled;
                // silence beyond that means the request died with the connection.
                let next = tokio::select! {
                    next = tokio::time::timeout(PULL_EXPIRES + PULL_GRACE, messages.next()) => next,
                    _ = shutdown.requested() => {
                        self.hand_back(&mut messages).await;
                        return Pulled::Stopped;
                    }
                };
                match next {
                    Ok(Some(Ok(message))) => {
                        last_message = Instant::now();
                        // What has arrived already joins the batch: under load one transaction
                        // applies many messages; when idle a message is never kept waiting.
                        let mut batch = vec![message];
                        // How the request ended, if it did while the batch was gathered; the
                        // messages in hand are finished first either way.
                        let mut request_end = None;
                        while batch.len() < PULL_BATCH {
                            match messages.next().now_or_never() {
                                Some(Some(Ok(message))) => batch.push(message),
                                Some(Some(Err(error))) => {
                                    request_end = Some(Err(error.to_string()));
                                    break;
                                }
                                Some(None) => {
                                    request_end = Some(Ok(()));
                                    break;
                                }
                                None => break,
                            }
                        }
                        // In transactions of at most TX_BATCH: an express transaction waiting
                        // for the service's database waits for one of them at most, and the
                        // express lane goes first between them.
                        for chunk in batch.chunks(crate::db::TX_BATCH) {
                            let express_busy = match self.spec.priority {
                                Priority::Express => Some(self.gate.express_busy()),
                                Priority::Normal => {
                                    self.gate.normal_turn().await;
                                    None
                                }
                            };
                            self.process_batch(chunk, shutdown).await;
                            drop(express_busy);
                        }
                        if shutdown.is_requested() {
                            if request_end.is_none() {
                                self.hand_back(&mut messages).await;
                            }
                            return Pulled::Stopped;
                        }
                        match request_end {
                            Some(Err(reason)) => return Pulled::Broken(reason),
                            Some(Ok(())) => break,
                            None => {}
                        }
                    }
                    // An error status (the consumer deleted, the request refused): never pull again
                    // at once, which would spin against a broker that keeps refusing.
                    Ok(Some(Err(error))) => return Pulled::Broken(error.to_string()),
                    Ok(None) | Err(_) => break,
                }
            }
            if last_message.elapsed() >= IDLE_CHECK {
                last_message = Instant::now();
                if let Err(error) = consumer.info().await {
                    return Pulled::Broken(format!(
                        "consumer check failed: {}",
                        error_chain(&error)
                    ));
                }
            }
        }
    }

    /// At shutdown: the open pull request still delivers messages until it ends (within its expiry),
    /// and each would wait out `ack_wait` for a process that is gone. They are nak'ed as they come,
    /// unread, so that another instance (or this one, restarted) gets them at once. Nothing counts
    /// against them: the runtime counts failures itself.
    async fn hand_back(&self, messages: &mut pull::Batch) {
        let until = tokio::time::Instant::now() + PULL_EXPIRES + PULL_GRACE;
        let mut handed_back = 0_u32;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, messages.next()).await {
            ack(self.spec.name, &message, AckKind::Nak(None)).await;
            handed_back += 1;
        }
        if handed_back > 0 {
            tracing::info!(
                consumer = self.spec.name,
                events = handed_back,
                "handed back events delivered during shutdown"
            );
        }
    }

    /// Handles one message to the end: applied and acked, duplicate and acked, nak'ed for a retry, or
    /// dead-lettered and terminated. While the service's database is unavailable it keeps the message
    /// (and stops pulling) until the database is back or shutdown is requested.
    pub async fn process(&self, message: &jetstream::Message, shutdown: &mut Shutdown) -> Outcome {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            // Only a message that did not come from a JetStream consumer lacks this; it cannot be
            // acked either, so there is nothing to keep.
            Err(_) => (0, 1),
        };
        match crate::schema::decode(&message.payload) {
            Ok(envelope) => {
                let delivery = self.delivery(message, envelope, sequence, delivered);
                self.process_decoded(&delivery, shutdown).await
            }
            Err(DecodeError::UnsupportedVersion { .. }) if also_published_readable(message) => {
                tracing::debug!(
                    consumer = self.spec.name,
                    sequence,
                    "a copy of a dual-published event in a version this consumer does not read; it handles the other"
                );
                ack(self.spec.name, message, AckKind::Ack).await;
                self.counted(Outcome::Skipped)
            }
            Err(error) => {
                let failures = self.permanent_failure(sequence, delivered).await;
                let outcome = self
                    .dead_letter(message, sequence, failures, &decode_reason(&error))
                    .await;
                self.counted(outcome)
            }
        }
    }

    /// [`Consumer::process`] for a message already decoded.
    async fn process_decoded(&self, delivery: &Delivery<'_>, shutdown: &mut Shutdown) -> Outcome {
        let started = Instant::now();
        let outcome = self
            .handle(delivery, shutdown)
            .instrument(delivery.span.clone())
            .await;
        self.timed(started.elapsed(), 1);
        self.counted(outcome)
    }

    /// Records how long handling took for each of `messages` handled together (from the start of
    /// their transaction to its commit, or to the end of their failure handling).
    fn timed(&self, took: Duration, messages: usize) {
        metrics::histogram!("orderflow_event_handling_duration_seconds", "consumer" => self.spec.name)
            .record_many(took.as_secs_f64(), messages);
    }

    fn counted(&self, outcome: Outcome) -> Outcome {
        metrics::counter!("orderflow_events_consumed_total",
            "consumer" => self.spec.name, "outcome" => outcome.as_str())
        .increment(1);
        outcome
    }

    /// A decoded message ready to handle. Handling it is a span of the saga's trace, under the span
    /// that published it (the message's `traceparent`; a message without one starts a trace), and
    /// the events it causes carry that span on.
    fn delivery<'a>(
        &self,
        message: &'a jetstream::Message,
        mut envelope: Envelope,
        sequence: u64,
        delivered: i64,
    ) -> Delivery<'a> {
        let published_by = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(TRACEPARENT_HEADER))
            .and_then(|value| TraceContext::parse(value.as_str()).ok());
        // Every line about one event is logged in this span: which consumer, which event of which
        // saga, in which trace.
        let span = tracing::info_span!(
            "event",
            consumer = self.spec.name,
            subject = %message.subject,
            event_id = %envelope.meta.event_id,
            order_id = %envelope.meta.order_id,
            correlation_id = %envelope.meta.correlation_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = published_by.map(|parent| tracing::field::display(parent.span_id)),
            delivered,
        );
        let handling = crate::telemetry::join_trace(&span, published_by);
        span.record("trace_id", tracing::field::display(handling.trace_id));
        span.record("span_id", tracing::field::display(handling.span_id));
        envelope.meta.trace = Some(handling);
        // The lane is the subject's: what the event causes travels in it too.
        envelope.meta.priority = Priority::of_subject(message.subject.as_str()).0;
        Delivery {
            message,
            span,
            envelope,
            sequence,
            delivered,
        }
    }

    /// Handles messages that arrived together. The common case — every one decodes and applies —
    /// costs one transaction; anything else rolls the batch back and handles each message on its
    /// own with [`Consumer::process`], in stream order, with all of its failure handling.
    pub async fn process_batch(
        &self,
        messages: &[jetstream::Message],
        shutdown: &mut Shutdown,
    ) -> Vec<Outcome> {
        let decoded: Option<Vec<Delivery<'_>>> = messages
            .iter()
            .map(|message| {
                let info = message.info().ok()?;
                let envelope = crate::schema::decode(&message.payload).ok()?;
                Some(self.delivery(message, envelope, info.stream_sequence, info.delivered))
            })
            .collect();
        let mut outcomes = Vec::with_capacity(messages.len());
        let Some(deliveries) = decoded else {
            // Something in the batch does not decode: it is dead-lettered on its own way.
            for message in messages {
                outcomes.push(self.process(message, shutdown).await);
            }
            return outcomes;
        };
        let started = Instant::now();
        let applied = if deliveries.len() > 1 {
            self.apply_batch_keeping_alive(&deliveries).await
        } else {
            None
        };
        let Some(applied) = applied else {
            // A lone message, or a batch that did not commit: one by one, decoded already.
            for delivery in &deliveries {
                outcomes.push(self.process_decoded(delivery, shutdown).await);
            }
            return outcomes;
        };
        self.timed(started.elapsed(), deliveries.len());
        for (delivery, applied) in deliveries.iter().zip(applied) {
            delivery.span.in_scope(|| {
                if applied {
                    tracing::debug!(batch = deliveries.len(), "event applied");
                } else {
                    tracing::debug!(batch = deliveries.len(), "duplicate event ignored");
                }
            });
            ack(self.spec.name, delivery.message, AckKind::Ack).await;
            outcomes.push(self.counted(if applied {
                Outcome::Applied
            } else {
                Outcome::Duplicate
            }));
        }
        outcomes
    }

    /// [`Consumer::apply_batch`], kept alive (see [`Consumer::keeping_alive`]). `None` when the batch
    /// did not commit, for whatever reason (then nothing of it did), or a handler panicked.
    async fn apply_batch_keeping_alive(&self, deliveries: &[Delivery<'_>]) -> Option<Vec<bool>> {
        let messages: Vec<&jetstream::Message> = deliveries.iter().map(|d| d.message).collect();
        match self
            .keeping_alive(&messages, self.apply_batch(deliveries))
            .await
        {
            Ok(Ok(applied)) => Some(applied),
            Ok(Err(error)) => {
                tracing::debug!(consumer = self.spec.name, error = %error,
                    batch = deliveries.len(), "batch not applied; handling its messages one by one");
                None
            }
            Err(_) => None,
        }
    }

    /// Runs `work`, telling the server "still working" about `messages` every third of `ack_wait`, so
    /// a slow handler (a busy database) is not redelivered to another instance while it is still
    /// running. A panic in `work` is caught and returned.
    async fn keeping_alive<T>(
        &self,
        messages: &[&jetstream::Message],
        work: impl Future<Output = T>,
    ) -> std::thread::Result<T> {
        let work = AssertUnwindSafe(work).catch_unwind();
        tokio::pin!(work);
        let every = self.policy.ack_wait / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = ticks.tick() => {
                    for message in messages {
                        ack(self.spec.name, message, AckKind::Progress).await;
                    }
                }
            }
        }
    }

    /// Records every event of the batch in the inbox with a statement per chunk, runs the handler for each
    /// one that was new (order by order, each order's in stream order) and commits once. Per event: `true` applied, `false` a
    /// duplicate (applied before, or earlier in this batch).
    async fn apply_batch(&self, deliveries: &[Delivery<'_>]) -> Result<Vec<bool>, HandlerError> {
        let mut tx = self.db.begin().await?;
        let mut new_events = std::collections::HashSet::new();
        let mut rest = deliveries;
        while !rest.is_empty() {
            // Chunks of a power of two (a batch of 37 as 32 + 4 + 1): the connection's statement
            // cache then holds a few shapes of the statement instead of one per batch size.
            let size = 1 << rest.len().min(MAX_INBOX_CHUNK).ilog2();
            let (chunk, after) = rest.split_at(size);
            new_events.extend(self.record_in_inbox(&mut tx, chunk).await?);
            rest = after;
        }
        // Applied in order-id order, one order's events in stream order (a stable sort): a service's
        // consumers update the same rows (order-inventory and order-payments each an order's row),
        // and batches taking their locks in opposite orders deadlock on PostgreSQL, which breaks a
        // deadlock only after its `deadlock_timeout` (1 s), a stall of every order in both batches.
        let mut in_lock_order: Vec<usize> = (0..deliveries.len()).collect();
        in_lock_order.sort_by_key(|&index| deliveries[index].envelope.meta.order_id);
        let mut applied = vec![false; deliveries.len()];
        for index in in_lock_order {
            let delivery = &deliveries[index];
            // Removed when applied: a second copy of the event in the same batch is a duplicate.
            let new = new_events.remove(&delivery.envelope.meta.event_id.to_string());
            if new {
                self.handler
                    .handle(&mut tx, &delivery.envelope)
                    .instrument(delivery.span.clone())
                    .await?;
                if delivery.delivered > 1 {
                    forget_failures(tx.conn(), self.spec.name, delivery.sequence).await?;
                }
            }
            applied[index] = new;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Inserts the chunk's events into the inbox; returns the ids of those that were not there yet.
    async fn record_in_inbox(
        &self,
        tx: &mut Tx,
        chunk: &[Delivery<'_>],
    ) -> Result<Vec<String>, SqlError> {
        let sql = format!(
            "INSERT INTO inbox (consumer, event_id, subject, order_id, processed_at_us) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING event_id",
            values_placeholders(chunk.len(), 5)
        );
        let now = now_us();
        let mut insert = query(sql);
        for delivery in chunk {
            let meta = &delivery.envelope.meta;
            insert = insert
                .bind(self.spec.name)
                .bind(meta.event_id.to_string())
                .bind(delivery.envelope.subject().into_owned())
                .bind(meta.order_id.to_string())
                .bind(now);
        }
        insert.fetch_all(tx.conn()).await
    }

    async fn handle(&self, delivery: &Delivery<'_>, shutdown: &mut Shutdown) -> Outcome {
        let Delivery {
            message, envelope, ..
        } = delivery;
        let (sequence, delivered) = (delivery.sequence, delivery.delivered);
        let mut outage: Option<(Instant, u32)> = None;
        loop {
            match self
                .apply_keeping_alive(message, envelope, sequence, delivered)
                .await
            {
                Ok(applied) => {
                    if let Some((since, _)) = outage {
                        self.database_back(since);
                    }
                    if applied {
                        tracing::debug!("event applied");
                    } else {
                        tracing::debug!("duplicate event ignored");
                    }
                    ack(self.spec.name, message, AckKind::Ack).await;
                    return if applied {
                        Outcome::Applied
                    } else {
                        Outcome::Duplicate
                    };
                }
                Err(HandlerError::Infrastructure(reason)) => {
                    let (since, tries) = outage.get_or_insert((Instant::now(), 0));
                    *tries += 1;
                    if *tries == 1 {
                        tracing::error!(%reason, "database unavailable; holding the event and pausing this consumer until it answers");
                    }
                    self.readiness.report(
                        DATABASE_CHECK,
                        self.spec.name,
                        Err(format!("unavailable for {:.0?}: {reason}", since.elapsed())),
                    );
                    if self
                        .hold(message, OUTAGE_BACKOFF.delay(*tries), shutdown)
                        .await
                    {
                        // Shutdown: hand the message back at once; nothing was counted against it.
                        ack(self.spec.name, message, AckKind::Nak(None)).await;
                        return Outcome::Retrying;
                    }
                }
                Err(HandlerError::Permanent(reason)) => {
                    if let Some((since, _)) = outage {
                        self.database_back(since);
                    }
                    let failures = self.permanent_failure(sequence, delivered).await;
                    return self.dead_letter(message, sequence, failures, &reason).await;
                }
                Err(HandlerError::Transient(reason)) => {
                    if let Some((since, _)) = outage {
                        self.database_back(since);
                    }
                    let failures = match self.record_failure(sequence, &reason).await {
                        Ok(failures) => failures,
                        // Counting needs the database; if it is gone, this was an outage after all.
                        Err(error) if is_infrastructure(&error) => {
                            outage.get_or_insert((Instant::now(), 0));
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(error = %error_chain(&error),
                                "cannot count the failure; going by the broker's delivery count");
                            Failures {
                                count: delivered,
                                first_failed_at_us: now_us(),
                            }
                        }
                    };
                    if failures.count >= self.policy.max_deliver {
                        let reason = format!("gave up after {} failures: {reason}", failures.count);
                        return self.dead_letter(message, sequence, failures, &reason).await;
                    }
                    let delay = self.policy.delay_after(failures.count);
                    tracing::warn!(%reason, failures = failures.count, retry_in_ms = delay.as_millis() as u64,
                        "event failed; will retry");
                    ack(self.spec.name, message, AckKind::Nak(Some(delay))).await;
                    return Outcome::Retrying;
                }
            }
        }
    }

    fn database_back(&self, since: Instant) {
        self.readiness
            .report(DATABASE_CHECK, self.spec.name, Ok(()));
        tracing::info!(
            outage_ms = since.elapsed().as_millis() as u64,
            "database available again; consuming"
        );
    }

    /// Keeps `message` (in-progress acks) for `pause`; `true` if shutdown was requested meanwhile.
    async fn hold(
        &self,
        message: &jetstream::Message,
        pause: Duration,
        shutdown: &mut Shutdown,
    ) -> bool {
        let every = self.policy.ack_wait / 3;
        let until = tokio::time::Instant::now() + pause;
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep((until - now).min(every)) => {
                    ack(self.spec.name, message, AckKind::Progress).await;
                }
                _ = shutdown.requested() => return true,
            }
        }
    }

    /// Applies the event, kept alive (see [`Consumer::keeping_alive`]). A handler that panics fails
    /// the event for good: the panic is a bug that the same event would trigger again, so it is
    /// dead-lettered instead of taking the consumer down.
    async fn apply_keeping_alive(
        &self,
        message: &jetstream::Message,
        envelope: &Envelope,
        sequence: u64,
        delivered: i64,
    ) -> Result<bool, HandlerError> {
        self.keeping_alive(&[message], self.apply(envelope, sequence, delivered))
            .await
            .unwrap_or_else(|panic| {
                let reason = format!("the handler panicked: {}", panic_message(panic.as_ref()));
                tracing::error!(%reason, "handler panicked; the event will be dead-lettered");
                Err(HandlerError::Permanent(reason))
            })
    }

    /// Runs inbox check and handler in one transaction. `Ok(false)`: the event was already applied.
    async fn apply(
        &self,
        envelope: &Envelope,
        sequence: u64,
        delivered: i64,
    ) -> Result<bool, HandlerError> {
        let mut tx = self.db.begin().await?;
        let inserted = query(
            "INSERT INTO inbox (consumer, event_id, subject, order_id, processed_at_us) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(self.spec.name)
        .bind(envelope.meta.event_id.to_string())
        .bind(envelope.subject().into_owned())
        .bind(envelope.meta.order_id.to_string())
        .bind(now_us())
        .execute(tx.conn())
        .await?;
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        self.handler.handle(&mut tx, envelope).await?;
        // Only a redelivered message can have failed before; a first delivery skips the statement.
        if delivered > 1 {
            forget_failures(tx.conn(), self.spec.name, sequence).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Counts one more failure of the message at `sequence`, in a transaction of its own (the
    /// handler's was rolled back), and returns the count with the time of the first failure.
    async fn record_failure(&self, sequence: u64, reason: &str) -> Result<Failures, SqlError> {
        let now = now_us();
        query(
            "INSERT INTO consumer_failures (consumer, stream_sequence, failures, first_failed_at_us, \
             last_failed_at_us, last_error) VALUES ($1, $2, 1, $3, $3, $4) \
             ON CONFLICT (consumer, stream_sequence) DO UPDATE SET \
             failures = consumer_failures.failures + 1, last_failed_at_us = excluded.last_failed_at_us, \
             last_error = excluded.last_error RETURNING failures, first_failed_at_us",
        )
        .bind(self.spec.name)
        .bind(stream_sequence(sequence))
        .bind(now)
        .bind(reason.to_owned())
        .fetch_one(self.db.pool())
        .await
    }

    /// The failures a permanently failing message adds up to: this one, plus any counted before (a
    /// redelivered message may have failed transiently first). Needs no database for a first
    /// delivery, so a poison message is set aside even while the database is down.
    async fn permanent_failure(&self, sequence: u64, delivered: i64) -> Failures {
        let now = now_us();
        let earlier: Option<Failures> = if delivered > 1 {
            query(
                "SELECT failures, first_failed_at_us FROM consumer_failures \
                 WHERE consumer = $1 AND stream_sequence = $2",
            )
            .bind(self.spec.name)
            .bind(stream_sequence(sequence))
            .fetch_optional(self.db.pool())
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        match earlier {
            Some(earlier) => Failures {
                count: earlier.count + 1,
                ..earlier
            },
            None => Failures {
                count: 1,
                first_failed_at_us: now,
            },
        }
    }

    /// Copies the message, unchanged, to `dlq.<consumer>` with headers saying why, then terminates it.
    /// If the copy cannot be stored, the message is nak'ed instead: it must not vanish. A missing DLQ
    /// stream is declared again; a message too large to be copied with the dead-letter headers is
    /// copied cut to fit, saying so and where the original is.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        failures: Failures,
        reason: &str,
    ) -> Outcome {
        let name = self.spec.name;
        let failed_at = format_us(now_us());
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(
            dead_letter_headers::SUBJECT,
            header_value(message.subject.as_str()),
        );
        headers.insert(dead_letter_headers::CONSUMER, name);
        headers.insert(dead_letter_headers::ERROR, header_value(reason));
        headers.insert(
            dead_letter_headers::DELIVERIES,
            failures.count.to_string().as_str(),
        );
        headers.insert(
            dead_letter_headers::FIRST_FAILED_AT,
            format_us(failures.first_failed_at_us).as_str(),
        );
        headers.insert(dead_letter_headers::FAILED_AT, failed_at.as_str());
        if let Ok(info) = message.info() {
            headers.insert(dead_letter_headers::STREAM, header_value(info.stream));
            headers.insert(
                dead_letter_headers::STREAM_SEQUENCE,
                sequence.to_string().as_str(),
            );
        }
        // The dead letter gets its own message id: the original one may sit in the DLQ's window already
        // from an earlier dead-lettering that was replayed.
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq-{name}-{}", uuid::Uuid::now_v7()).as_str(),
        );
        let stored = match self
            .store_dead_letter(headers.clone(), &message.payload)
            .await
        {
            Err(error) if error.kind() == PublishErrorKind::StreamNotFound => {
                tracing::warn!(
                    consumer = name,
                    "the DLQ stream is missing; declaring it again"
                );
                match declare_stream(&self.js, DLQ, self.streams).await {
                    Ok(()) => self.store_dead_letter(headers, &message.payload).await,
                    Err(declare) => Err(jetstream::context::PublishError::with_source(
                        PublishErrorKind::StreamNotFound,
                        declare,
                    )),
                }
            }
            Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                self.store_cut_dead_letter(headers, &message.payload).await
            }
            other => other,
        };
        match stored {
            Ok(()) => {
                if let Err(error) = forget_failures(self.db.pool(), name, sequence).await {
                    // Harmless: the retention sweep removes the count later.
                    tracing::debug!(error = %error_chain(&error), "failure count not cleared");
                }
                // An undecodable message has no span with its saga's ids; the relay's header may.
                let correlation_id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(CORRELATION_HEADER))
                    .map(|v| v.as_str().to_owned());
                tracing::error!(consumer = name, subject = %message.subject, %reason,
                    failures = failures.count, correlation_id = correlation_id.as_deref(),
                    "message dead-lettered; inspect and replay it with `orderflow dlq`");
                ack(name, message, AckKind::Term).await;
                Outcome::DeadLettered
            }
            Err(error) => {
                let delay = self.policy.delay_after(failures.count);
                tracing::error!(consumer = name, %reason, dlq_error = %error_chain(&error),
                    retry_in_ms = delay.as_millis() as u64, "cannot dead-letter message; will retry");
                ack(name, message, AckKind::Nak(Some(delay))).await;
                Outcome::Retrying
            }
        }
    }

    async fn store_dead_letter(
        &self,
        headers: async_nats::HeaderMap,
        payload: &bytes::Bytes,
    ) -> Result<(), jetstream::context::PublishError> {
        self.js
            .publish_with_headers(
                dead_letter_subject(self.spec.name),
                headers,
                payload.clone(),
            )
            .await?
            .await
            .map(drop)
    }

    /// Stores the first bytes of a payload too large to be dead-lettered whole with its headers. The
    /// original stays in its stream (until the stream's age limit) at the sequence the headers name.
    async fn store_cut_dead_letter(
        &self,
        mut headers: async_nats::HeaderMap,
        payload: &bytes::Bytes,
    ) -> Result<(), jetstream::context::PublishError> {
        headers.insert(
            dead_letter_headers::TRUNCATED,
            payload.len().to_string().as_str(),
        );
        let header_bytes: usize = headers
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|value| name.to_string().len() + value.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum();
        let room = self
            .js
            .client()
            .max_payload()
            .saturating_sub(header_bytes + CUT_MARGIN);
        let cut = payload.slice(..room.min(payload.len()));
        tracing::warn!(
            consumer = self.spec.name,
            original_bytes = payload.len(),
            kept_bytes = cut.len(),
            "message too large to dead-letter whole; storing its beginning"
        );
        self.store_dead_letter(headers, &cut).await
    }
}

/// Room left for the protocol's own header framing when a dead letter's payload is cut to fit.
const CUT_MARGIN: usize = 256;

/// How [`Consumer::consume`] ended.
enum Pulled {
    Stopped,
    /// The broker refused or stopped answering: back off and declare the consumer again.
    Broken(String),
}

/// Sleeps `pause` unless shutdown comes first; `true` when it did.
async fn sleep_or_stop(pause: Duration, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = shutdown.requested() => true,
    }
}

/// Stream sequences fit in a BIGINT for any stream that could exist; the cast never saturates.
fn stream_sequence(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

async fn forget_failures(
    executor: Executor<'_>,
    consumer: &str,
    sequence: u64,
) -> Result<(), SqlError> {
    query("DELETE FROM consumer_failures WHERE consumer = $1 AND stream_sequence = $2")
        .bind(consumer.to_owned())
        .bind(stream_sequence(sequence))
        .execute(executor)
        .await
        .map(drop)
}

async fn ack(consumer: &str, message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        // The effect is committed (or nothing changed); a lost ack only means a redelivery, which
        // the inbox turns into a no-op.
        tracing::warn!(consumer, error = %error, "acknowledgement not sent");
    }
}

/// Whether `message` is one copy of a dual-published event (see `outbox::PUBLISHED_AS_HEADER`) whose
/// versions include one this process reads, of the type its subject names.
fn also_published_readable(message: &jetstream::Message) -> bool {
    let Some(versions) = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(crate::outbox::PUBLISHED_AS_HEADER))
    else {
        return false;
    };
    let (_, event_type) = Priority::of_subject(message.subject.as_str());
    versions
        .as_str()
        .split(',')
        .any(|version| crate::schema::reads(&event_type, version))
}

fn decode_reason(error: &DecodeError) -> String {
    format!("cannot decode event: {}", error_chain(error))
}

/// The text a panic was raised with, if it was text.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
/// An event a consumer handled, as its inbox remembers it (until retention forgets it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HandledEvent {
    pub consumer: String,
    pub event_id: String,
    pub subject: String,
    /// When its effect committed.
    pub handled_at_us: i64,
}

/// Which of `event_ids` each of `consumers` handled, and when: what `orderflow trace` shows as the
/// handling side of each event. One statement per consumer, on the inbox's primary key.
pub async fn handled_events(
    db: &Db,
    consumers: &[&str],
    event_ids: &[String],
) -> Result<Vec<HandledEvent>, SqlError> {
    let mut handled = Vec::new();
    if event_ids.is_empty() {
        return Ok(handled);
    }
    for consumer in consumers {
        let ids: Vec<String> = (2..event_ids.len() + 2).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT consumer, event_id, subject, processed_at_us AS handled_at_us FROM inbox \
             WHERE consumer = $1 AND event_id IN ({})",
            ids.join(", ")
        );
        let mut select = query(sql).bind(*consumer);
        for event_id in event_ids {
            select = select.bind(event_id.clone());
        }
        handled.extend(select.fetch_all::<HandledEvent>(db.pool()).await?);
    }
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_normal_lane_waits_for_the_express_lane_but_not_for_ever() {
        let gate = PriorityGate::default();
        // Nothing express in hand: no wait at all.
        assert!(gate.normal_turn().now_or_never().is_some());

        let busy = gate.express_busy();
        let mut turn = Box::pin(gate.normal_turn());
        assert!((&mut turn).now_or_never().is_none());
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), turn)
            .await
            .expect("let through once the express batch is done");

        // An express lane that is never done holds the normal lane back a bounded time only.
        let _never_done = gate.express_busy();
        let started = Instant::now();
        gate.normal_turn().await;
        assert!(started.elapsed() >= NORMAL_YIELDS_AT_MOST);
    }
}
