//! The outbox relay against a real nats-server: events leave in commit order, are marked only once
//! the broker acknowledged them, and a dead broker costs one ack timeout per batch, not per event.

use contracts::events::{CancelReason, OrderCancelled};
use contracts::{CorrelationId, Envelope, Event, OrderId};
use platform::db::{Db, query};
use platform::nats::StreamLimits;
use platform::outbox::{Relay, enqueue};
use std::time::{Duration, Instant};
use testkit::NatsServer;

const LIMITS: StreamLimits = StreamLimits {
    max_age: Duration::from_secs(3600),
    replicas: 1,
};

async fn setup(nats: &NatsServer, dir: &tempfile::TempDir) -> (Db, Relay) {
    let url = format!("sqlite://{}/relay.db?mode=rwc", dir.path().display());
    let db = Db::connect(&url, "relay", &[]).await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    platform::nats::declare_streams(&js, LIMITS).await.unwrap();
    let relay = Relay::new(db.clone(), js, LIMITS);
    (db, relay)
}

async fn enqueue_cancellations(db: &Db, count: usize) -> Vec<Envelope> {
    let mut tx = db.begin().await.unwrap();
    let mut events = Vec::new();
    for _ in 0..count {
        let event = Envelope::first(
            OrderId::new(),
            CorrelationId::parse("corr").unwrap(),
            Event::OrderCancelled(OrderCancelled {
                reason: CancelReason::Timeout,
            }),
        );
        enqueue(&mut tx, &event);
        events.push(event);
    }
    tx.commit().await.unwrap();
    events
}

async fn unpublished(db: &Db) -> i64 {
    query("SELECT COUNT(*) FROM outbox WHERE published_at_us IS NULL")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn events_are_published_in_order_and_marked_once_acknowledged() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (db, relay) = setup(&nats, &dir).await;
    let events = enqueue_cancellations(&db, 20).await;

    assert_eq!(relay.publish_pending().await.unwrap(), 20);
    assert_eq!(unpublished(&db).await, 0);
    assert_eq!(relay.publish_pending().await.unwrap(), 0);

    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("ORDERS").await.unwrap();
    for (sequence, event) in (1..).zip(&events) {
        let stored = stream.get_raw_message(sequence).await.unwrap();
        assert_eq!(Envelope::from_json(&stored.payload).unwrap(), *event);
        assert_eq!(
            stored.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(event.meta.event_id.to_string().as_str())
        );
    }
}

#[tokio::test]
async fn a_dead_broker_fails_a_batch_after_one_ack_timeout_and_keeps_it_pending() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (db, relay) = setup(&nats, &dir).await;
    enqueue_cancellations(&db, 20).await;
    nats.kill();

    let started = Instant::now();
    assert!(relay.publish_pending().await.is_err());
    // Twenty lost acks awaited one after another would take 20 × the 5 s ack timeout; together they
    // take one. The bound is loose on purpose: it separates the two designs, not two machines.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a dead broker stalled the relay for {:?}",
        started.elapsed()
    );
    assert_eq!(unpublished(&db).await, 20);

    nats.restart().await;
    let published =
        testkit::wait_until("the relay to catch up", Duration::from_secs(30), || async {
            match relay.publish_pending().await {
                Ok(n) if unpublished(&db).await == 0 => Some(n),
                _ => None,
            }
        })
        .await;
    assert!(published <= 20);
}

/// On PostgreSQL the instances of a service share one outbox and take turns publishing it: a relay
/// keeps the turn while it finds rows, so another's steps leave the rows to it; it gives the turn
/// back after a step that finds none, and when it goes away its session ends and the turn with it.
#[tokio::test]
async fn relays_sharing_an_outbox_take_turns_and_a_gone_one_leaves_its_turn() {
    let nats = NatsServer::start().await;
    let Some(database) = testkit::TestDatabase::create(testkit::Backend::Postgres).await else {
        return;
    };
    let db = Db::connect(&database.url(), "relay", &[]).await.unwrap();
    let js = async_nats::jetstream::new(nats.client().await);
    platform::nats::declare_streams(&js, LIMITS).await.unwrap();
    let first = Relay::new(db.clone(), js.clone(), LIMITS);
    let second = Relay::new(db.clone(), js.clone(), LIMITS);
    let mut events = enqueue_cancellations(&db, 5).await;
    assert_eq!(first.publish_pending().await.unwrap(), 5);

    events.extend(enqueue_cancellations(&db, 3).await);
    assert_eq!(second.publish_pending().await.unwrap(), 0);
    assert_eq!(unpublished(&db).await, 3);
    assert_eq!(first.publish_pending().await.unwrap(), 3);
    assert_eq!(first.publish_pending().await.unwrap(), 0);

    events.extend(enqueue_cancellations(&db, 2).await);
    assert_eq!(second.publish_pending().await.unwrap(), 2);
    events.extend(enqueue_cancellations(&db, 4).await);
    assert_eq!(first.publish_pending().await.unwrap(), 0);
    drop(second);
    // The server ends the closed session's lock as soon as it notices the connection gone.
    testkit::wait_until(
        "the turn of the relay that went away to be free",
        Duration::from_secs(30),
        || async { (first.publish_pending().await.unwrap() == 4).then_some(()) },
    )
    .await;
    assert_eq!(unpublished(&db).await, 0);

    // Each event once, in the order written.
    let stream = js.get_stream("ORDERS").await.unwrap();
    assert_eq!(
        stream.get_info().await.unwrap().state.messages,
        events.len() as u64
    );
    for (sequence, event) in (1..).zip(&events) {
        let stored = stream.get_raw_message(sequence).await.unwrap();
        assert_eq!(Envelope::from_json(&stored.payload).unwrap(), *event);
    }
}
