//! Storage stays bounded: with retentions of a few seconds, published outbox rows, inbox rows and the
//! streams' messages go, the sagas placed afterwards are unaffected, `orderflow verify` still passes
//! (it reads nothing retention deletes), and the DLQ keeps its letters.

use crate::dead_letters::dead_letters;
use crate::harness::{Options, SAGA_DEADLINE, System};
use serde_json::json;
use testkit::{Backend, on_both_backends, wait_until};

on_both_backends!(expired_rows_and_stream_messages_go_and_the_saga_is_unaffected);

/// Rows of `table` in a service's database, read behind its back.
async fn rows(system: &System, store: &str, table: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = system.connect_to(store).await;
    let count: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    count
}

async fn stream_messages(system: &System, stream: &str) -> u64 {
    let js = system.jetstream().await;
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("info").state.messages
}

async fn place_and_confirm(system: &System, count: usize) {
    for _ in 0..count {
        let id = system
            .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
            .await;
        assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    }
}

async fn expired_rows_and_stream_messages_go_and_the_saga_is_unaffected(backend: Backend) {
    let options = Options {
        service_args: [
            "--outbox-retention",
            "2s",
            "--inbox-retention",
            "5s",
            "--stream-max-age",
            "5s",
            "--ack-wait",
            "1s",
            "--max-deliver",
            "3",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 100, 100).await;
    place_and_confirm(&system, 5).await;
    for store in ["order", "inventory", "payment"] {
        assert!(rows(&system, store, "outbox").await > 0);
        assert!(rows(&system, store, "inbox").await > 0);
    }
    let js = system.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "retention-poison");
    js.publish_with_headers("orders.created", headers, b"not an event".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();

    wait_until(
        "published outbox rows, inbox rows and stream messages to expire",
        SAGA_DEADLINE,
        || async {
            for store in ["order", "inventory", "payment"] {
                if rows(&system, store, "outbox").await > 0
                    || rows(&system, store, "inbox").await > 0
                {
                    return None;
                }
            }
            for stream in ["ORDERS", "INVENTORY", "PAYMENTS"] {
                if stream_messages(&system, stream).await > 0 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Orders and their timelines are the business's record: retention leaves them alone.
    assert_eq!(rows(&system, "order", "orders").await, 5);
    assert!(rows(&system, "order", "order_timeline").await >= 20);
    // Dead letters wait for an operator, however old.
    assert_eq!(dead_letters(&system, None).len(), 2);

    place_and_confirm(&system, 3).await;
    system.wait_stock("sku-1", 92, 0, 8).await;
    system.verified_allowing_dead_letters().await;
}
