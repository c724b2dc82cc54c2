//! The consumer runtime against a real nats-server and a real SQLite database, with handlers written
//! for each case: which failures count against a message, which hold it, what a dead letter says, and
//! how the consumer outlives its declaration on the broker.

use contracts::events::{CancelReason, OrderCancelled};
use contracts::topology::{ConsumerSpec, INVENTORY_ORDERS, dead_letter_headers};
use contracts::{CorrelationId, Envelope, Event, EventId, OrderId};
use futures::StreamExt;
use platform::consumer::{Consumer, Handler, HandlerError, Outcome};
use platform::db::{Db, Tx, query};
use platform::health::Readiness;
use platform::nats::{DeliveryPolicy, StreamLimits, declare_streams};
use platform::shutdown::{Shutdown, ShutdownTrigger};
use sqlx::{Connection, Executor};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{NatsServer, wait_until};

const LIMITS: StreamLimits = StreamLimits {
    max_age: Duration::from_secs(3600),
    replicas: 1,
};
const SPEC: ConsumerSpec = INVENTORY_ORDERS;
const PATIENCE: Duration = Duration::from_secs(30);

/// What the test handler does with each event it is given.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Records the event in a table of its own.
    Apply,
    /// Fails the event as a failure of the event itself (counted).
    FailTransiently,
    /// Panics.
    Panic,
    /// Applies every event but this one, which fails transiently.
    FailOne(EventId),
    /// Applies every event but this one, for which it panics.
    PanicOn(EventId),
}

#[derive(Clone)]
struct TestHandler {
    behaviour: Behaviour,
    calls: Arc<AtomicU32>,
    /// A second connection to the database: while handling each event, how many applied events it
    /// sees committed (all zero for a batch that is one transaction).
    observer: Option<Db>,
    committed_when_handled: Arc<Mutex<Vec<i64>>>,
}

impl TestHandler {
    fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            calls: Arc::new(AtomicU32::new(0)),
            observer: None,
            committed_when_handled: Arc::default(),
        }
    }

    fn observed_by(self, observer: Db) -> Self {
        Self {
            observer: Some(observer),
            ..self
        }
    }
}

impl Handler for TestHandler {
    async fn handle(&self, tx: &mut Tx, envelope: &Envelope) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = envelope.meta.event_id;
        match self.behaviour {
            Behaviour::FailTransiently => Err(HandlerError::Transient("not yet".into())),
            Behaviour::FailOne(failing) if failing == id => {
                Err(HandlerError::Transient("not yet".into()))
            }
            Behaviour::Panic => panic!("the handler has a bug"),
            Behaviour::PanicOn(failing) if failing == id => panic!("the handler has a bug"),
            Behaviour::Apply | Behaviour::FailOne(_) | Behaviour::PanicOn(_) => {
                query("INSERT INTO applied (event_id) VALUES ($1)")
                    .bind(id.to_string())
                    .execute(tx.conn())
                    .await?;
                if let Some(observer) = &self.observer {
                    let committed: i64 = query("SELECT COUNT(*) FROM applied")
                        .fetch_one(observer.pool())
                        .await?;
                    self.committed_when_handled.lock().unwrap().push(committed);
                }
                Ok(())
            }
        }
    }
}

struct Fixture {
    nats: NatsServer,
    db: Db,
    db_url: String,
    js: async_nats::jetstream::Context,
    readiness: Readiness,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(declare: bool) -> Fixture {
        let nats = NatsServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}/consumer.db?mode=rwc", dir.path().display());
        let db = Db::connect(&db_url, "consumer", &[]).await.unwrap();
        // `position` keeps the order in which events were applied.
        query(
            "CREATE TABLE applied (position INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE)",
        )
            .execute(db.pool())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(nats.client().await);
        if declare {
            declare_streams(&js, LIMITS).await.unwrap();
        }
        Fixture {
            nats,
            db,
            db_url,
            js,
            readiness: Readiness::default(),
            _dir: dir,
        }
    }

    /// Runs a consumer with `handler` until the returned trigger fires (or is dropped).
    fn run(
        &self,
        handler: TestHandler,
        max_deliver: i64,
    ) -> (ShutdownTrigger, tokio::task::JoinHandle<()>) {
        let policy = DeliveryPolicy {
            max_deliver,
            ack_wait: Duration::from_secs(2),
            ..DeliveryPolicy::default()
        };
        let consumer = Consumer::new(
            SPEC,
            policy,
            self.db.clone(),
            self.js.clone(),
            handler,
            self.readiness.clone(),
        );
        let (trigger, shutdown): (ShutdownTrigger, Shutdown) = platform::shutdown::channel();
        let task = tokio::spawn(async move { consumer.run(shutdown).await });
        (trigger, task)
    }

    /// A consumer to drive step by step, and its pull consumer on the broker.
    async fn stepped(
        &self,
        handler: TestHandler,
    ) -> (
        Consumer<TestHandler>,
        async_nats::jetstream::consumer::PullConsumer,
    ) {
        let policy = DeliveryPolicy {
            max_deliver: 5,
            ack_wait: Duration::from_secs(2),
            ..DeliveryPolicy::default()
        };
        let pull = platform::nats::declare_consumer(&self.js, SPEC, &policy)
            .await
            .unwrap();
        let consumer = Consumer::new(
            SPEC,
            policy,
            self.db.clone(),
            self.js.clone(),
            handler,
            self.readiness.clone(),
        );
        (consumer, pull)
    }

    /// The next `count` messages of `pull`, fetched together as the runtime would.
    async fn fetch(
        pull: &async_nats::jetstream::consumer::PullConsumer,
        count: usize,
    ) -> Vec<async_nats::jetstream::Message> {
        let mut fetched = Vec::new();
        while fetched.len() < count {
            let mut batch = pull
                .fetch()
                .max_messages(count - fetched.len())
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .unwrap();
            while let Some(message) = batch.next().await {
                fetched.push(message.unwrap());
            }
        }
        fetched
    }

    /// Fetches the `count` messages published so far and hands them to `handler` as one batch.
    async fn process_together(&self, handler: TestHandler, count: usize) -> Vec<Outcome> {
        let (consumer, pull) = self.stepped(handler).await;
        let messages = Fixture::fetch(&pull, count).await;
        let (_trigger, mut shutdown) = platform::shutdown::channel();
        let outcomes = consumer.process_batch(&messages, &mut shutdown).await;
        // Acks are processed by the server on their own; a message nak'ed for a later retry stays
        // pending until then. Every other message must leave the pending list.
        let retrying = outcomes.iter().filter(|o| **o == Outcome::Retrying).count();
        wait_until("the acks processed", PATIENCE, || {
            let mut pull = pull.clone();
            async move {
                let pending = pull.info().await.unwrap().num_ack_pending;
                (pending == retrying).then_some(())
            }
        })
        .await;
        outcomes
    }

    /// The event ids in `applied`, in the order they were applied.
    async fn applied_in_order(&self) -> Vec<String> {
        query("SELECT event_id FROM applied ORDER BY position")
            .fetch_all(self.db.pool())
            .await
            .unwrap()
    }

    async fn publish(&self) -> Envelope {
        let event = Envelope::first(
            OrderId::new(),
            CorrelationId::new(),
            Event::OrderCancelled(OrderCancelled {
                reason: CancelReason::Timeout,
            }),
        );
        self.publish_envelope(&event, &event.meta.event_id.to_string())
            .await;
        event
    }

    /// Publishes `count` events in turn; their ids, in stream order.
    async fn publish_many(&self, count: usize) -> Vec<EventId> {
        let mut published = Vec::with_capacity(count);
        for _ in 0..count {
            published.push(self.publish().await.meta.event_id);
        }
        published
    }

    /// Publishes `event` under broker message id `message_id`: a new id stores a second copy.
    async fn publish_envelope(&self, event: &Envelope, message_id: &str) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        self.js
            .publish_with_headers("orders.cancelled", headers, event.to_json().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes `payload` as it is, under a fresh broker message id.
    async fn publish_raw(&self, payload: Vec<u8>) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", EventId::new().to_string().as_str());
        self.js
            .publish_with_headers("orders.cancelled", headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn applied(&self) -> i64 {
        self.number("SELECT COUNT(*) FROM applied").await
    }

    /// The one number `sql` reads from the test database.
    async fn number(&self, sql: &'static str) -> i64 {
        query(sql).fetch_one(self.db.pool()).await.unwrap()
    }

    /// The dead letters of the test consumer, oldest first.
    async fn dead_letters(&self) -> Vec<async_nats::HeaderMap> {
        let Ok(mut stream) = self.js.get_stream("DLQ").await else {
            return Vec::new();
        };
        let state = stream.info().await.unwrap().state.clone();
        let mut letters = Vec::new();
        if state.messages == 0 {
            return letters;
        }
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                letters.push(message.headers);
            }
        }
        letters
    }
}

fn header(headers: &async_nats::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failing_event_is_dead_lettered_at_its_limit_counting_across_restarts() {
    let fixture = Fixture::new(true).await;
    let handler = TestHandler::new(Behaviour::FailTransiently);
    fixture.publish().await;

    // Two failures in a first run of the consumer...
    let (stop, task) = fixture.run(handler.clone(), 3);
    wait_until("two failures", PATIENCE, || async {
        (handler.calls.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    stop.trigger();
    task.await.unwrap();
    assert!(fixture.dead_letters().await.is_empty());
    let first_failure: i64 = fixture
        .number("SELECT first_failed_at_us FROM consumer_failures")
        .await;

    // ...and the third in the next run is the last: the count and the first failure's time were kept.
    let (_stop, _task) = fixture.run(handler.clone(), 3);
    let letters = wait_until("the dead letter", PATIENCE, || async {
        let letters = fixture.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(header(&letters[0], dead_letter_headers::DELIVERIES), "3");
    assert_eq!(
        header(&letters[0], dead_letter_headers::FIRST_FAILED_AT),
        platform::db::format_us(first_failure)
    );
    assert!(header(&letters[0], dead_letter_headers::ERROR).contains("gave up after 3 failures"));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    let left: i64 = fixture
        .number("SELECT COUNT(*) FROM consumer_failures")
        .await;
    assert_eq!(left, 0, "the count goes with the message");
}

#[tokio::test]
async fn a_locked_database_holds_the_event_without_counting_it() {
    let fixture = Fixture::new(true).await;
    let handler = TestHandler::new(Behaviour::Apply);
    // One allowed failure: anything counted would dead-letter the event at once.
    let (_stop, _task) = fixture.run(handler.clone(), 1);
    let mut lock = sqlx::SqliteConnection::connect(&fixture.db_url)
        .await
        .unwrap();
    lock.execute("BEGIN EXCLUSIVE").await.unwrap();
    let event = fixture.publish().await;

    wait_until("the database reported unavailable", PATIENCE, || async {
        fixture
            .readiness
            .checks()
            .get("database")
            .is_some_and(Result::is_err)
            .then_some(())
    })
    .await;
    // Held longer than its ack wait (in-progress acks), and never dead-lettered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(fixture.dead_letters().await.is_empty());

    lock.execute("ROLLBACK").await.unwrap();
    wait_until("the held event applied", PATIENCE, || async {
        (fixture.applied().await == 1).then_some(())
    })
    .await;
    assert_eq!(fixture.readiness.checks()["database"], Ok(()));
    let applied: String = query("SELECT event_id FROM applied")
        .fetch_one(fixture.db.pool())
        .await
        .unwrap();
    assert_eq!(applied, event.meta.event_id.to_string());
    assert!(fixture.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_handler_that_panics_dead_letters_the_event_and_the_consumer_goes_on() {
    let fixture = Fixture::new(true).await;
    let handler = TestHandler::new(Behaviour::Panic);
    let (_stop, task) = fixture.run(handler, 5);
    fixture.publish().await;
    let letters = wait_until("the dead letter", PATIENCE, || async {
        let letters = fixture.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert!(header(&letters[0], dead_letter_headers::ERROR).contains("the handler has a bug"));
    assert!(!task.is_finished(), "the consumer died with its handler");
}

/// Counts the JetStream API requests the consumer makes, to tell backing off from spinning.
async fn count_api_requests(nats: &NatsServer, window: Duration) -> usize {
    let client = nats.client().await;
    let mut requests = client.subscribe("$JS.API.>").await.unwrap();
    let until = tokio::time::Instant::now() + window;
    let mut count = 0;
    while let Ok(Some(_)) = tokio::time::timeout_at(until, requests.next()).await {
        count += 1;
    }
    count
}

#[tokio::test]
async fn a_consumer_that_cannot_be_declared_retries_with_backoff_until_it_can() {
    // The broker is up but the stream is not there yet, as while the first service is still
    // starting: declaring the consumer fails.
    let fixture = Fixture::new(false).await;
    let handler = TestHandler::new(Behaviour::Apply);
    let (_stop, task) = fixture.run(handler, 5);
    let requests = count_api_requests(&fixture.nats, Duration::from_secs(3)).await;
    assert!(requests <= 12, "{requests} API requests in 3 s: spinning");
    assert!(!task.is_finished(), "the consumer gave up");
    assert!(fixture.readiness.checks()[SPEC.name].is_err());

    declare_streams(&fixture.js, LIMITS).await.unwrap();
    fixture.publish().await;
    wait_until(
        "the event applied once the stream exists",
        PATIENCE,
        || async { (fixture.applied().await == 1).then_some(()) },
    )
    .await;
    assert_eq!(fixture.readiness.checks()[SPEC.name], Ok(()));
}

#[tokio::test]
async fn pulls_refused_by_the_broker_back_off_instead_of_spinning() {
    let fixture = Fixture::new(true).await;
    let handler = TestHandler::new(Behaviour::Apply);
    let (_stop, task) = fixture.run(handler, 5);
    fixture.publish().await;
    wait_until("the first event applied", PATIENCE, || async {
        (fixture.applied().await == 1).then_some(())
    })
    .await;

    // The stream goes, and with it the consumer: every pull and every declaration now fails.
    let gone = Instant::now();
    fixture.js.delete_stream("ORDERS").await.unwrap();
    let requests = count_api_requests(&fixture.nats, Duration::from_secs(4)).await;
    assert!(requests <= 15, "{requests} API requests in 4 s: spinning");
    assert!(!task.is_finished());

    declare_streams(&fixture.js, LIMITS).await.unwrap();
    fixture.publish().await;
    wait_until(
        "an event applied after the stream came back",
        PATIENCE,
        || async { (fixture.applied().await == 2).then_some(()) },
    )
    .await;
    assert!(gone.elapsed() < PATIENCE);
}

#[tokio::test]
async fn messages_that_arrive_together_are_applied_in_one_transaction() {
    let fixture = Fixture::new(true).await;
    let observer = Db::connect(&fixture.db_url, "consumer", &[]).await.unwrap();
    let handler = TestHandler::new(Behaviour::Apply).observed_by(observer);
    let published: Vec<String> = fixture
        .publish_many(20)
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    let outcomes = fixture.process_together(handler.clone(), 20).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    assert_eq!(
        *handler.committed_when_handled.lock().unwrap(),
        vec![0; 20],
        "no event of the batch committed before the last was handled: one transaction"
    );
    // Each event is another order's, and order ids (UUID v7) grow with time: order by order is
    // stream order here.
    assert_eq!(fixture.applied_in_order().await, published);
}

/// A batch takes its locks in one order whatever the stream's (so a service's consumers, whose
/// batches update the same orders, never deadlock): order by order, each order's events in stream
/// order.
#[tokio::test]
async fn a_batch_is_applied_order_by_order_each_orders_events_in_stream_order() {
    let fixture = Fixture::new(true).await;
    let handler = TestHandler::new(Behaviour::Apply);
    let (first, second) = (OrderId::new(), OrderId::new());
    let (earlier, later) = if first < second {
        (first, second)
    } else {
        (second, first)
    };
    let event_of = |order_id| {
        Envelope::first(
            order_id,
            CorrelationId::new(),
            Event::OrderCancelled(OrderCancelled {
                reason: CancelReason::Timeout,
            }),
        )
    };
    let stream = [
        event_of(later),
        event_of(earlier),
        event_of(later),
        event_of(earlier),
    ];
    for event in &stream {
        fixture
            .publish_envelope(event, &event.meta.event_id.to_string())
            .await;
    }
    let outcomes = fixture.process_together(handler, stream.len()).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    let id = |index: usize| stream[index].meta.event_id.to_string();
    assert_eq!(
        fixture.applied_in_order().await,
        [id(1), id(3), id(0), id(2)]
    );
}

#[tokio::test]
async fn a_second_copy_of_an_event_in_the_same_batch_is_a_duplicate() {
    let fixture = Fixture::new(true).await;
    let handler = TestHandler::new(Behaviour::Apply);
    let event = fixture.publish().await;
    // The relay publishing a row again after the broker's duplicate window: a second stream message.
    fixture.publish_envelope(&event, "a-later-copy").await;
    let outcomes = fixture.process_together(handler.clone(), 2).await;
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Duplicate]);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(fixture.applied().await, 1);
}

#[tokio::test]
async fn one_failing_event_in_a_batch_does_not_hold_back_the_others() {
    let fixture = Fixture::new(true).await;
    let published = fixture.publish_many(5).await;
    let handler = TestHandler::new(Behaviour::FailOne(published[2]));
    let outcomes = fixture.process_together(handler, 5).await;
    use Outcome::{Applied, Retrying};
    assert_eq!(outcomes, [Applied, Applied, Retrying, Applied, Applied]);
    let mut expected: Vec<String> = published.iter().map(ToString::to_string).collect();
    expected.remove(2);
    assert_eq!(fixture.applied_in_order().await, expected);
    let failures: i64 = fixture
        .number("SELECT failures FROM consumer_failures")
        .await;
    assert_eq!(failures, 1, "only the failing event is counted, once");
}

#[tokio::test]
async fn a_panic_in_a_batch_dead_letters_only_the_event_that_caused_it() {
    let fixture = Fixture::new(true).await;
    let published = fixture.publish_many(3).await;
    let handler = TestHandler::new(Behaviour::PanicOn(published[1]));
    let outcomes = fixture.process_together(handler, 3).await;
    use Outcome::{Applied, DeadLettered};
    assert_eq!(outcomes, [Applied, DeadLettered, Applied]);
    assert_eq!(fixture.applied().await, 2);
    let letters = fixture.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert!(header(&letters[0], dead_letter_headers::ERROR).contains("the handler has a bug"));
}

#[tokio::test]
async fn an_event_that_breaks_its_schema_is_dead_lettered_naming_the_path_and_the_rule() {
    let fixture = Fixture::new(true).await;
    let before = fixture.publish().await;
    let valid = Envelope::first(
        OrderId::new(),
        CorrelationId::new(),
        Event::OrderCancelled(OrderCancelled {
            reason: CancelReason::Timeout,
        }),
    );
    let mut broken: serde_json::Value = serde_json::from_slice(&valid.to_json()).unwrap();
    broken["data"]["reason"] = "teleported".into();
    fixture
        .publish_raw(serde_json::to_vec(&broken).unwrap())
        .await;
    let after = fixture.publish().await;
    let outcomes = fixture
        .process_together(TestHandler::new(Behaviour::Apply), 3)
        .await;
    use Outcome::{Applied, DeadLettered};
    assert_eq!(outcomes, [Applied, DeadLettered, Applied]);
    let expected = [before, after].map(|event| event.meta.event_id.to_string());
    assert_eq!(fixture.applied_in_order().await, expected);
    let letters = fixture.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let error = header(&letters[0], dead_letter_headers::ERROR);
    assert!(
        error.contains(r#"/data/reason: "teleported" is not one of"#),
        "{error}"
    );
}

#[tokio::test]
async fn the_broker_lets_a_consumer_hold_only_a_few_batches_unacknowledged() {
    let fixture = Fixture::new(true).await;
    let policy = DeliveryPolicy::default();
    let mut pull = platform::nats::declare_consumer(&fixture.js, SPEC, &policy)
        .await
        .unwrap();
    // Beyond it the broker delivers nothing more, so a slow consumer's backlog stays in the stream,
    // where admission control counts it (ADR 16).
    let declared = pull.info().await.unwrap().config.max_ack_pending;
    assert_eq!(declared, platform::consumer::MAX_ACK_PENDING);
    assert!(
        declared <= 400,
        "{declared} messages in flight per consumer"
    );
}
