//! The transactional outbox. A service never publishes directly: it inserts the event into `outbox` in
//! the same transaction as the state change ([`enqueue`]), so either both happen or neither does. The
//! [`Relay`] then publishes pending rows in `sequence` order, waits for JetStream's acknowledgement and
//! only then marks them published. A crash anywhere in between means the row is published again, which
//! `Nats-Msg-Id` de-duplication (and, beyond its window, every consumer's inbox) makes harmless.
//!
//! During a rolling upgrade an event may go out in two versions (dual publishing, [`PublishVersions`]):
//! one row, the payload in the first version, and the relay writes the other from it. Both copies
//! carry the same event id, so a consumer that reads both acts once (its inbox), and both carry
//! [`PUBLISHED_AS_HEADER`], so a consumer that reads only one skips the other instead of
//! dead-lettering it.

use crate::backoff::Backoff;
use crate::db::{
    Db, Executor, InsertAtCommit, Session, SqlError, Tx, now_us, query, values_placeholders,
};
use crate::nats::{StreamLimits, declare_streams, header_value};
use crate::shutdown::Shutdown;
use crate::telemetry::{OutageLog, error_chain};
use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use contracts::trace::TRACEPARENT_HEADER;
use contracts::{Envelope, Priority};
use std::collections::HashSet;
use std::future::IntoFuture;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use utoipa::ToSchema;

pub use contracts::envelope::{CORRELATION_HEADER, PUBLISHED_AS_HEADER};

/// The versions a producer publishes its events in (`ORDERFLOW_PUBLISH_VERSIONS`): `v1`, `v1,v2`
/// (dual publishing, while consumers are upgraded) or `v2`. An event whose type has only some of them
/// goes out in those; one that has none of them, in its default version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishVersions(Vec<&'static str>);

impl PublishVersions {
    /// Whether `version` is among them.
    pub fn includes(&self, version: &str) -> bool {
        self.0.contains(&version)
    }

    /// `envelope` in each of these versions its type has and that can carry it, with the version; the
    /// default version when none can.
    fn encode(&self, envelope: &Envelope) -> Vec<(&'static str, Vec<u8>)> {
        let encoded: Vec<(&'static str, Vec<u8>)> = self
            .0
            .iter()
            .filter_map(|version| Some((*version, envelope.to_json_as(version)?)))
            .collect();
        if encoded.is_empty() {
            vec![(envelope.event.version(), envelope.to_json())]
        } else {
            encoded
        }
    }
}

impl Default for PublishVersions {
    /// What every consumer reads, whatever its version: v1.
    fn default() -> Self {
        Self(vec![contracts::events::V1])
    }
}

impl FromStr for PublishVersions {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        const KNOWN: [&str; 2] = [contracts::events::V1, contracts::events::V2];
        let mut versions = Vec::new();
        for part in raw.split(',').map(str::trim) {
            let Some(version) = KNOWN.iter().find(|known| **known == part) else {
                return Err(format!(
                    "'{part}' is not an event version; use v1, v1,v2 or v2"
                ));
            };
            if versions.contains(version) {
                return Err(format!("{part} is listed twice"));
            }
            versions.push(*version);
        }
        versions.sort_unstable();
        Ok(Self(versions))
    }
}

/// Publishes are pipelined this many at a time: many in flight is what makes JetStream fast.
const BATCH: i64 = 256;
/// The relay also polls this often, in case a wake-up was missed (another instance, a manual insert).
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How soon a relay tries again when another instance's relay held the turn; also the longest a
/// relay holding the turn waits before its next step, since the other instances' rows wait for it.
const TURN_TAKEN_PAUSE: Duration = Duration::from_millis(20);
/// Pauses while NATS or the database is unavailable, growing while it lasts.
const OUTAGE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Adds `envelope` to the outbox inside the caller's transaction, in its default version.
pub fn enqueue(tx: &mut Tx, envelope: &Envelope) {
    enqueue_as(tx, envelope, &PublishVersions::default());
}

/// Adds `envelope` to the outbox inside the caller's transaction, to be published in `versions`. The
/// row is written when the transaction commits, with the transaction's other outbox rows.
pub fn enqueue_as(tx: &mut Tx, envelope: &Envelope, versions: &PublishVersions) {
    let mut encoded = versions.encode(envelope);
    let publish_versions = (encoded.len() > 1).then(|| {
        let listed: Vec<&str> = encoded.iter().map(|(version, _)| *version).collect();
        listed.join(",")
    });
    // The first version's payload is stored; the relay writes the others from it.
    let (_, payload) = encoded.swap_remove(0);
    tx.insert_at_commit(
        &OUTBOX,
        [
            envelope.meta.event_id.to_string().into(),
            envelope.subject().into_owned().into(),
            envelope.meta.order_id.to_string().into(),
            envelope.meta.correlation_id.as_str().into(),
            payload.into(),
            now_us().into(),
            publish_versions.into(),
            envelope.meta.trace.map(|trace| trace.to_string()).into(),
            rank(envelope.meta.priority).into(),
        ],
    );
    tx.outbox_written(envelope.meta.priority);
}

/// The outbox, its rows inserted as the transaction commits, in the order they were enqueued: their
/// sequence, which the relay publishes in, follows it.
static OUTBOX: InsertAtCommit<9> = InsertAtCommit::new(
    "outbox",
    [
        "event_id",
        "subject",
        "order_id",
        "correlation_id",
        "payload",
        "created_at_us",
        "publish_versions",
        "traceparent",
        "priority",
    ],
    "",
);

/// The events of one service waiting to be published. A backlog that grows, or whose oldest event
/// ages, means the relay cannot keep up or cannot reach the broker: every saga waits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct OutboxBacklog {
    /// Events not yet published.
    pub unpublished: u64,
    /// How long the oldest of them has waited, in milliseconds; absent when there is none.
    pub oldest_age_ms: Option<u64>,
}

#[derive(serde::Deserialize)]
struct BacklogRow {
    unpublished: i64,
    oldest_us: Option<i64>,
}

/// The service's outbox backlog, as of now. One statement over the index of unpublished rows: cheap
/// enough for every readiness probe and scrape while the backlog is small, which it is unless
/// something is wrong.
pub async fn backlog(db: &Db) -> Result<OutboxBacklog, SqlError> {
    let row: BacklogRow = query(
        "SELECT COUNT(*) AS unpublished, MIN(created_at_us) AS oldest_us \
         FROM outbox WHERE published_at_us IS NULL",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(OutboxBacklog {
        unpublished: u64::try_from(row.unpublished).unwrap_or(0),
        oldest_age_ms: row
            .oldest_us
            .map(|oldest| u64::try_from((now_us() - oldest) / 1000).unwrap_or(0)),
    })
}

/// The events of one lane waiting to be published: how many, and the head of the relay's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaneBacklog {
    pub unpublished: u64,
    /// The sequence of the oldest unpublished event: it moves up as the relay publishes.
    pub head_sequence: Option<u64>,
    /// When that event was written.
    pub head_created_at_us: Option<i64>,
}

#[derive(serde::Deserialize)]
struct LaneBacklogRow {
    unpublished: i64,
    head_sequence: Option<i64>,
    head_created_at_us: Option<i64>,
}

/// `lane`'s backlog, as of now, read through the index the relay reads by.
pub async fn lane_backlog(db: &Db, lane: Priority) -> Result<LaneBacklog, SqlError> {
    let row: LaneBacklogRow = query(
        "SELECT COUNT(*) AS unpublished, MIN(sequence) AS head_sequence, \
         (SELECT created_at_us FROM outbox WHERE published_at_us IS NULL AND priority = $1 \
          ORDER BY sequence LIMIT 1) AS head_created_at_us \
         FROM outbox WHERE published_at_us IS NULL AND priority = $1",
    )
    .bind(rank(lane))
    .fetch_one(db.pool())
    .await?;
    Ok(LaneBacklog {
        unpublished: u64::try_from(row.unpublished).unwrap_or(0),
        head_sequence: row.head_sequence.and_then(|head| u64::try_from(head).ok()),
        head_created_at_us: row.head_created_at_us,
    })
}

/// The outbox's `priority` column: express rows rank higher.
fn rank(lane: Priority) -> i64 {
    match lane {
        Priority::Normal => 0,
        Priority::Express => 1,
    }
}

/// Wakes the relay of a lane right after a commit, so events leave within milliseconds instead of a
/// poll period.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutboxSignal {
    normal: Arc<Notify>,
    express: Arc<Notify>,
}

impl OutboxSignal {
    fn of(&self, lane: Priority) -> &Notify {
        match lane {
            Priority::Normal => &self.normal,
            Priority::Express => &self.express,
        }
    }

    pub(crate) fn wake(&self, lane: Priority) {
        // `notify_one` keeps a permit when the relay is busy, so a wake-up during a publish is not lost.
        self.of(lane).notify_one();
    }

    /// Until rows of `lane` (of either lane when `None`) were committed.
    async fn woken(&self, lane: Option<Priority>) {
        match lane {
            Some(lane) => self.of(lane).notified().await,
            None => {
                tokio::select! {
                    _ = self.normal.notified() => {}
                    _ = self.express.notified() => {}
                }
            }
        }
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

/// Publishes the outbox of one service, or of one of its lanes.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Db,
    js: jetstream::Context,
    /// For declaring the streams again when one has gone missing on the broker.
    limits: StreamLimits,
    /// The lane whose rows it publishes; every row, express ones first, when `None`.
    lane: Option<Priority>,
    /// PostgreSQL: the session the relay's steps run on, and whether it holds the outbox's turn.
    turn: Arc<tokio::sync::Mutex<Turn>>,
}

/// A relay's hold on the outbox, on PostgreSQL.
#[derive(Debug, Default)]
struct Turn {
    session: Option<Session>,
    held: bool,
}

#[derive(serde::Deserialize)]
struct PendingRow {
    sequence: i64,
    event_id: String,
    subject: String,
    correlation_id: String,
    payload: Vec<u8>,
    publish_versions: Option<String>,
    traceparent: Option<String>,
}

impl PendingRow {
    /// Every message the row is published as: `(Nats-Msg-Id, payload)`. The first version keeps the
    /// event id as its message id (what a row meant before dual publishing); the others add their
    /// version, so that the broker's de-duplication keeps them apart.
    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        let mut messages = vec![(self.event_id.clone(), self.payload.clone())];
        let Some(listed) = &self.publish_versions else {
            return messages;
        };
        // Our own payload, written by `enqueue_as`: it decodes, and carries every version listed.
        let envelope = match Envelope::from_json(&self.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(event_id = %self.event_id, versions = %listed, error = %error_chain(&error),
                    "an outbox row to publish in several versions does not decode; only its first goes out");
                return messages;
            }
        };
        for version in listed.split(',').skip(1) {
            if let Some(payload) = envelope.to_json_as(version) {
                messages.push((format!("{}:{version}", self.event_id), payload));
            }
        }
        messages
    }
}

impl Relay {
    /// The relay is woken by the commits of transactions begun on `db` that wrote outbox rows.
    pub fn new(db: Db, js: jetstream::Context, limits: StreamLimits) -> Self {
        Self {
            db,
            js,
            limits,
            lane: None,
            turn: Arc::default(),
        }
    }

    /// The same relay for the rows of `lane` only: each lane's relay publishes on that lane's own
    /// thread and connection (ADR 15), so an express event never waits for a batch of normal ones.
    /// One order's events are all in one lane, so they still leave in the order they were written.
    pub fn only(mut self, lane: Priority) -> Self {
        self.lane = Some(lane);
        self
    }

    /// One step: publishes up to one batch of pending rows and marks the acknowledged ones. Returns how
    /// many were published (none when another instance's relay holds the turn). Stops at the first
    /// failure; the rest stay pending for the next step.
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        Ok(match self.step().await? {
            Step::Published { events, .. } => events,
            Step::OtherRelay => 0,
        })
    }

    /// One step, taking turns with the other instances' relays on PostgreSQL, where several
    /// instances of a service share one outbox: a relay publishes only while its session holds the
    /// outbox's advisory lock, so one relay publishes at a time. No row then goes out twice (the
    /// broker's de-duplication only covers two minutes), and every order's events leave in the order
    /// they were written. A relay that finds the lock taken leaves the rows to its holder.
    ///
    /// The holder keeps the lock from step to step while it finds rows (two statements a step: read
    /// them, mark them), gives it back after a step that found none, and gives it up with its session
    /// after any failure: closing the session ends the lock however the failure left it. Rows
    /// published but not marked go out again, as after a crash. On SQLite one process writes the
    /// file, and the rows are read and marked on its connection.
    async fn step(&self) -> Result<Step, RelayError> {
        let mut turn = self.turn.lock().await;
        let Turn { session, held } = &mut *turn;
        let session = match session {
            Some(session) => session,
            None => match self.db.session().await? {
                Some(mut opened) => {
                    // The session's statements touch a few rows each, through the primary key and
                    // the index of unpublished rows. After five runs PostgreSQL may plan a prepared
                    // statement once and keep that plan until the table is analyzed again, and on a
                    // new outbox, a few rows in a page, a scan of the whole table is the cheapest
                    // plan: published rows stay for the retention, so until autovacuum's next
                    // analyze every mark read thousands of rows to mark two (5-12 ms a mark after
                    // 12 s at 350 orders/s, seen with auto_explain).
                    query("SET enable_seqscan = off")
                        .execute(opened.conn())
                        .await?;
                    session.insert(opened)
                }
                None => {
                    let events = self.publish_batch(None).await?;
                    return Ok(Step::Published {
                        events,
                        turn_held: false,
                    });
                }
            },
        };
        let step = self.step_in_turn(session, held).await;
        if step.is_err() {
            *turn = Turn::default();
        }
        step
    }

    /// One step on the relay's session, taking the outbox's turn first unless it is `held`.
    async fn step_in_turn(
        &self,
        session: &mut Session,
        held: &mut bool,
    ) -> Result<Step, RelayError> {
        // One turn per lane: the lanes publish disjoint rows. The normal lane keeps the outbox's key
        // from before lanes, so that a relay of an older instance still takes turns with it during a
        // rolling upgrade (a session's lock and a transaction's on one key exclude each other).
        let key = match self.lane {
            Some(Priority::Express) => "express.",
            Some(Priority::Normal) | None => "",
        };
        if !*held {
            let lock: OutboxLock = query(
                "SELECT pg_try_advisory_lock(hashtext('orderflow.outbox.' || $1 || \
                 current_schema())) AS taken",
            )
            .bind(key)
            .fetch_one(session.conn())
            .await?;
            if !lock.taken {
                return Ok(Step::OtherRelay);
            }
            *held = true;
        }
        let events = self.publish_batch(Some(session)).await?;
        if events == 0 {
            query(
                "SELECT pg_advisory_unlock(hashtext('orderflow.outbox.' || $1 || \
                 current_schema())) AS released",
            )
            .bind(key)
            .execute(session.conn())
            .await?;
            *held = false;
        }
        Ok(Step::Published {
            events,
            turn_held: *held,
        })
    }

    /// Publishes up to one batch of pending rows, express ones first, reading and marking them on
    /// `session` (PostgreSQL) or else on the pool.
    async fn publish_batch(&self, mut session: Option<&mut Session>) -> Result<usize, RelayError> {
        let pending = match self.lane {
            Some(lane) => query(
                "SELECT sequence, event_id, subject, correlation_id, payload, publish_versions, \
                 traceparent FROM outbox WHERE published_at_us IS NULL AND priority = $2 \
                 ORDER BY sequence LIMIT $1",
            )
            .bind(BATCH)
            .bind(rank(lane)),
            None => query(
                "SELECT sequence, event_id, subject, correlation_id, payload, publish_versions, \
                 traceparent FROM outbox WHERE published_at_us IS NULL \
                 ORDER BY priority DESC, sequence LIMIT $1",
            )
            .bind(BATCH),
        };
        let rows: Vec<PendingRow> = pending.fetch_all(on(&self.db, &mut session)).await?;
        if rows.is_empty() {
            return Ok(0);
        }

        // Send every publish first and only then wait for the acks: one round trip for the batch. A
        // row is published once every message it stands for is acknowledged.
        let mut in_flight = Vec::with_capacity(rows.len());
        let mut failure = None;
        let mut unsent = HashSet::new();
        'rows: for row in &rows {
            for (message_id, payload) in row.messages() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    header_value(&message_id),
                );
                // Rows written before correlation ids were checked on decode may hold anything.
                headers.insert(CORRELATION_HEADER, header_value(&row.correlation_id));
                if let Some(versions) = &row.publish_versions {
                    headers.insert(PUBLISHED_AS_HEADER, header_value(versions));
                }
                if let Some(traceparent) = &row.traceparent {
                    headers.insert(TRACEPARENT_HEADER, header_value(traceparent));
                }
                match self
                    .js
                    .publish_with_headers(row.subject.clone(), headers, payload.into())
                    .await
                {
                    Ok(ack) => in_flight.push((row, ack)),
                    Err(error) => {
                        failure = Some(publish_error(row, error));
                        unsent.insert(row.sequence);
                        break 'rows;
                    }
                }
            }
        }
        // Await the acks together: each one's timeout starts when it is first polled, so awaiting them
        // one by one after the broker died would cost the timeout once per event in the batch.
        let (rows_in_flight, acks): (Vec<_>, Vec<_>) = in_flight.into_iter().unzip();
        let answers =
            futures::future::join_all(acks.into_iter().map(IntoFuture::into_future)).await;
        for (row, answer) in rows_in_flight.iter().zip(answers) {
            if let Err(error) = answer {
                unsent.insert(row.sequence);
                failure.get_or_insert(publish_error(row, error));
            }
        }
        let mut published: Vec<i64> = rows_in_flight
            .iter()
            .map(|row| row.sequence)
            .filter(|sequence| !unsent.contains(sequence))
            .collect();
        published.dedup();
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
            mark.bind(now_us())
                .execute(on(&self.db, &mut session))
                .await?;
            let mut by_subject: Vec<(&str, u64)> = Vec::new();
            for row in rows_in_flight
                .iter()
                .filter(|row| !unsent.contains(&row.sequence))
            {
                match by_subject
                    .iter_mut()
                    .find(|(subject, _)| *subject == row.subject)
                {
                    Some((_, count)) => *count += 1,
                    None => by_subject.push((&row.subject, 1)),
                }
            }
            for (subject, count) in by_subject {
                metrics::counter!("orderflow_events_published_total",
                    "subject" => subject.to_owned(), "outcome" => "published")
                .increment(count);
            }
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
            let published = self.step().await;
            if let Err(RelayError::Publish { source, .. }) = &published
                && source.kind() == PublishErrorKind::StreamNotFound
            {
                tracing::warn!("a stream is missing on the broker; declaring the streams again");
                if let Err(error) = declare_streams(&self.js, self.limits).await {
                    tracing::warn!(error = %error_chain(&error), "cannot declare the streams");
                }
            }
            let pause = match published {
                Ok(Step::Published { events, turn_held }) => {
                    outage.succeeded();
                    if events as i64 == BATCH {
                        continue;
                    }
                    // The other instances' rows wait for the holder's next step.
                    if turn_held {
                        TURN_TAKEN_PAUSE
                    } else {
                        POLL_EVERY
                    }
                }
                // This instance's rows wait for the other relay's next step, or for this one's turn,
                // whichever comes first.
                Ok(Step::OtherRelay) => {
                    outage.succeeded();
                    TURN_TAKEN_PAUSE
                }
                Err(error) => {
                    let pause = OUTAGE_BACKOFF.delay(outage.failures().saturating_add(1));
                    outage.failed(&error, pause);
                    pause
                }
            };
            tokio::select! {
                _ = self.db.outbox_signal().woken(self.lane), if outage.failures() == 0 => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.requested() => break,
            }
        }
        self.flush().await;
    }

    /// At shutdown, once every other task has stopped: publishes everything still pending, so that
    /// the sagas the last handled messages moved on do not wait for this instance to come back. The
    /// service's grace period bounds it; whatever fails stays pending for the next start.
    async fn flush(&self) {
        let mut flushed = 0;
        loop {
            match self.publish_pending().await {
                Ok(n) => {
                    flushed += n;
                    if (n as i64) < BATCH {
                        tracing::info!(events = flushed, "outbox flushed");
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error),
                        "outbox not flushed at shutdown; it will be published on the next start");
                    return;
                }
            }
        }
    }
}

/// What one relay step did.
enum Step {
    /// `events` published; `turn_held`: the relay still holds the outbox's turn (PostgreSQL).
    Published { events: usize, turn_held: bool },
    /// Another instance's relay was publishing this outbox; its rows are in its hands.
    OtherRelay,
}

#[derive(serde::Deserialize)]
struct OutboxLock {
    taken: bool,
}

/// The relay's session, or else the pool.
fn on<'a>(db: &'a Db, session: &'a mut Option<&mut Session>) -> Executor<'a> {
    match session {
        Some(session) => session.conn(),
        None => db.pool(),
    }
}

/// A row that could not be published, counted as such; it stays pending for the next step.
fn publish_error(row: &PendingRow, source: PublishError) -> RelayError {
    metrics::counter!("orderflow_events_published_total",
        "subject" => row.subject.clone(), "outcome" => "failed")
    .increment(1);
    RelayError::Publish {
        event_id: row.event_id.clone(),
        subject: row.subject.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_versions_are_one_or_two_known_versions_in_order() {
        let parsed = |raw: &str| raw.parse::<PublishVersions>();
        assert_eq!(parsed("v1"), Ok(PublishVersions::default()));
        assert_eq!(parsed("v2,v1"), parsed("v1, v2"));
        assert!(parsed("v1,v2").unwrap().includes("v2"));
        assert!(!parsed("v1").unwrap().includes("v2"));
        assert_eq!(
            parsed("v3"),
            Err("'v3' is not an event version; use v1, v1,v2 or v2".into())
        );
        assert_eq!(parsed("v1,v1"), Err("v1 is listed twice".into()));
        assert!(parsed("").is_err());
    }
}
