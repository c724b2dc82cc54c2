//! Group commit for `POST /orders`: requests that arrive while another one holds the database share
//! one transaction, so a burst of orders costs one commit and one write of each touched page instead
//! of one per order (issue 8). On SQLite, where every request waits for the one connection, most
//! requests of a busy second find their order already committed by the time their turn comes.
//!
//! Each request queues what it would write and then waits for whichever comes first: its answer, or
//! the database. Whoever gets the database takes the longest-waiting orders, up to [`TX_BATCH`] (so
//! the express lane waits for one such transaction at most), writes them in one transaction and
//! answers them all after the commit. An order is answered 202 only after the commit that holds it;
//! a request that gives up (the database failed, or its client went away) takes its order off the
//! queue first, so no error is answered for an order that is then created after all.

use crate::api::{Accept, Inserted};
use contracts::{OrderId, Priority};
use platform::db::{Db, SqlError, TX_BATCH, Tx};
use platform::outbox::PublishVersions;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

/// What one queued order's transaction came to; an error is shared by every order of its batch.
pub(crate) type Answer = Result<Inserted, Arc<SqlError>>;

/// The orders waiting for a transaction, one queue per lane: an express order never waits for a
/// batch of normal ones, and its transaction goes ahead of theirs for the connection.
#[derive(Clone)]
pub struct Accepts {
    normal: Lane,
    express: Lane,
    /// The versions `orders.created` goes out in.
    versions: PublishVersions,
}

#[derive(Clone)]
struct Lane {
    db: Db,
    waiting: Arc<Mutex<Vec<Waiting>>>,
}

struct Waiting {
    accept: Accept,
    answer: oneshot::Sender<Answer>,
}

impl Accepts {
    pub fn new(db: &Db, versions: PublishVersions) -> Accepts {
        let lane = |priority| Lane {
            db: db.prioritized(priority),
            waiting: Arc::default(),
        };
        Accepts {
            normal: lane(Priority::Normal),
            express: lane(Priority::Express),
            versions,
        }
    }

    /// Writes `accept` in a transaction, its own or one it shares with the requests of its lane
    /// queued beside it, and says how it went once that transaction ended.
    pub(crate) async fn write(&self, accept: Accept) -> Answer {
        let lane = match accept.priority() {
            Priority::Normal => &self.normal,
            Priority::Express => &self.express,
        };
        let (answer, mut answered) = oneshot::channel();
        let mut queued = Queued::push(lane, Waiting { accept, answer });
        let answer = tokio::select! {
            // An answer already there wins: the transaction this request would start has nothing
            // left to write.
            biased;
            answer = &mut answered => answer,
            tx = lane.db.begin() => match tx {
                Ok(tx) => {
                    // Empty when another request took this one's order into its transaction, which
                    // may still be committing (PostgreSQL): the answer comes from there. Written by
                    // a task of its own: this request going away (its client hung up) must not cut
                    // short a transaction that other requests wait for.
                    let batch = lane.take_batch();
                    if !batch.is_empty() {
                        tokio::spawn(write_batch(tx, batch, self.versions.clone()));
                    }
                    answered.await
                }
                Err(error) => {
                    if queued.take_back() {
                        return Err(Arc::new(error));
                    }
                    // Taken into another request's transaction meanwhile: that one answers.
                    answered.await
                }
            },
        };
        // Answered (or its batch's task is gone): a transaction took the order off the queue.
        queued.in_queue = false;
        answer.unwrap_or_else(|_| Err(Arc::new(SqlError::Closed)))
    }
}

/// A request's order in its lane's queue. A request that goes away while its order still waits
/// there takes it back: nobody would hear of it, and it would be created whenever the next request
/// came.
struct Queued<'a> {
    lane: &'a Lane,
    order_id: OrderId,
    /// Until the request knows a transaction took it.
    in_queue: bool,
}

impl<'a> Queued<'a> {
    fn push(lane: &'a Lane, waiting: Waiting) -> Queued<'a> {
        let order_id = waiting.accept.order_id;
        lane.queue().push(waiting);
        Queued {
            lane,
            order_id,
            in_queue: true,
        }
    }

    /// Takes the order off the queue; `false` when a transaction has taken it already.
    fn take_back(&mut self) -> bool {
        self.in_queue = false;
        let mut queue = self.lane.queue();
        match queue
            .iter()
            .position(|w| w.accept.order_id == self.order_id)
        {
            Some(index) => {
                queue.remove(index);
                true
            }
            None => false,
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.in_queue {
            self.take_back();
        }
    }
}

impl Lane {
    /// The orders one transaction writes: the longest waiting, up to [`TX_BATCH`] of them.
    fn take_batch(&self) -> Vec<Waiting> {
        let mut queue = self.queue();
        let taken = queue.len().min(TX_BATCH);
        queue.drain(..taken).collect()
    }

    fn queue(&self) -> MutexGuard<'_, Vec<Waiting>> {
        // Pushing and taking a Vec cannot leave it half-changed: a panic elsewhere does not spoil it.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes every order of `batch` in `tx` and answers each once the transaction has ended. An order
/// whose key turned out to be taken wrote nothing and is answered so; a failed statement or commit
/// fails them all, and none of them was created.
async fn write_batch(mut tx: Tx, batch: Vec<Waiting>, versions: PublishVersions) {
    let mut outcomes = Vec::with_capacity(batch.len());
    for waiting in &batch {
        match waiting.accept.write(&mut tx, &versions).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => return fail(batch, error),
        }
    }
    if let Err(error) = tx.commit().await {
        return fail(batch, error);
    }
    for (waiting, outcome) in batch.into_iter().zip(outcomes) {
        // A request that went away meanwhile has nobody to tell; its order stands, as it would had
        // the answer been lost on the way back.
        let _ = waiting.answer.send(Ok(outcome));
    }
}

fn fail(batch: Vec<Waiting>, error: SqlError) {
    let error = Arc::new(error);
    for waiting in batch {
        let _ = waiting.answer.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KeyUse;
    use crate::domain::NewOrder;
    use contracts::{CorrelationId, TraceContext};
    use platform::db::query;
    use platform::http::RequestContext;
    use std::time::Duration;
    use testkit::{Backend, TestDatabase};

    async fn database() -> (TestDatabase, Db) {
        let test_db = TestDatabase::create(Backend::Sqlite)
            .await
            .expect("SQLite is always there");
        let db = Db::connect(&test_db.url_for("order"), "order", crate::INFO.migrations)
            .await
            .unwrap();
        (test_db, db)
    }

    fn accept(key: Option<&str>) -> Accept {
        let order = NewOrder::parse(&serde_json::json!({
            "customer_id": "c-1",
            "items": [{"product_id": "sku-1", "quantity": 1}],
            "payment_method": "tok_visa",
        }))
        .unwrap();
        let context = RequestContext {
            correlation_id: CorrelationId::new(),
            trace: TraceContext::new_root(),
        };
        let key = match key {
            Some(key) => KeyUse::New {
                key: key.to_owned(),
                request: order.canonical_json(),
            },
            None => KeyUse::None,
        };
        Accept::new(
            Duration::from_secs(30),
            OrderId::new(),
            &order,
            &context,
            key,
        )
    }

    async fn orders(db: &Db) -> i64 {
        query("SELECT COUNT(*) FROM orders")
            .fetch_one(db.pool())
            .await
            .unwrap()
    }

    /// Waits until `lane` holds `n` orders (the requests are tasks of their own).
    async fn queued(lane: &Lane, n: usize) {
        testkit::wait_until(
            &format!("{n} orders queued"),
            Duration::from_secs(10),
            || async { (lane.queue().len() == n).then_some(()) },
        )
        .await;
    }

    #[tokio::test]
    async fn orders_queued_behind_a_busy_database_are_written_and_each_hears_its_outcome() {
        let (_test_db, db) = database().await;
        let accepts = Accepts::new(&db, PublishVersions::default());
        // A key used before: that request writes nothing, the others in its batch stand.
        let used = accepts.write(accept(Some("used"))).await.unwrap();
        assert_eq!(used, Inserted::Created);

        let held = db.begin().await.unwrap();
        let requests: Vec<_> = [None, Some("used"), None, Some("fresh")]
            .into_iter()
            .map(|key| {
                tokio::spawn({
                    let accepts = accepts.clone();
                    async move { accepts.write(accept(key)).await }
                })
            })
            .collect();
        queued(&accepts.normal, 4).await;
        drop(held);
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.unwrap().unwrap());
        }
        assert_eq!(
            answers,
            [
                Inserted::Created,
                Inserted::KeyUsed,
                Inserted::Created,
                Inserted::Created
            ]
        );
        assert_eq!(orders(&db).await, 4);
        assert!(accepts.normal.queue().is_empty());
    }

    #[tokio::test]
    async fn a_request_that_goes_away_before_its_turn_takes_its_order_back() {
        let (_test_db, db) = database().await;
        let accepts = Accepts::new(&db, PublishVersions::default());
        let held = db.begin().await.unwrap();
        let request = tokio::spawn({
            let accepts = accepts.clone();
            async move { accepts.write(accept(None)).await }
        });
        queued(&accepts.normal, 1).await;
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        assert!(accepts.normal.queue().is_empty());
        drop(held);
        // The next request writes its own order only.
        assert_eq!(
            accepts.write(accept(None)).await.unwrap(),
            Inserted::Created
        );
        assert_eq!(orders(&db).await, 1);
    }
}
