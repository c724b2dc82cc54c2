//! Nothing from the wire can stop a service: hostile messages on `orders.created` (line breaks in the
//! type, the version or the correlation id, deep nesting, a payload near the broker's limit, bytes that
//! are not UTF-8, an unknown type, version or field) are each set aside in the DLQ by both consumers of
//! the stream, the services stay ready, and the orders behind them go through. A correlation id with
//! line breaks that reaches an outbox table is published with its header escaped, not a panicking
//! relay. And the dead-letter stream itself may vanish: it is declared again and nothing is lost.

use crate::dead_letters::{dead_letters, dlq_at};
use crate::harness::{SAGA_DEADLINE, System, shown, text};
use contracts::events::{CancelReason, OrderCancelled};
use contracts::{CorrelationId, Envelope, Event, OrderId};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::on_both_backends;
use testkit::{Backend, wait_until};

on_both_backends!(
    hostile_messages_are_dead_lettered_and_the_flow_goes_on,
    a_line_break_in_a_stored_correlation_id_is_escaped_by_the_relay,
    a_deleted_dead_letter_stream_is_declared_again_and_keeps_the_poison,
);

/// A valid `orders.created` envelope as JSON, to be broken one way or another.
fn envelope() -> Value {
    json!({
        "event_id": uuid::Uuid::now_v7().to_string(),
        "type": "orders.created",
        "version": "v1",
        "occurred_at": "2030-01-01T00:00:00Z",
        "order_id": uuid::Uuid::now_v7().to_string(),
        "correlation_id": "hostile",
        "causation_id": null,
        "data": {
            "customer_id": "c-1",
            "items": [{"product_id": "sku-1", "quantity": 1}],
            "payment_method": "tok_visa",
            "deadline_at": "2030-01-01T00:00:30Z"
        }
    })
}

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut wire = envelope();
    wire[field] = value;
    serde_json::to_vec(&wire).unwrap()
}

/// Every hostile message, by name.
fn hostile_messages(max_payload: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut unknown_field = envelope();
    unknown_field["data"]["gift_wrap"] = json!(true);
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let mut huge = envelope();
    // Near the broker's limit: with its own header the message still fits, but no copy with the
    // dead-letter headers would.
    let filler = max_payload - serde_json::to_vec(&huge).unwrap().len() - 300;
    huge["data"]["note"] = json!("x".repeat(filler));
    vec![
        (
            "line break in type",
            with("type", json!("orders.created\nX: 1")),
        ),
        (
            "line break in version",
            with("version", json!("v1\r\nX: 1")),
        ),
        (
            "line break in correlation id",
            with("correlation_id", json!("c\r\nX: 1")),
        ),
        ("deep nesting", deep.into_bytes()),
        ("near the max payload", serde_json::to_vec(&huge).unwrap()),
        (
            "not UTF-8",
            b"\xff\xfe{\"type\": \"orders.created\"}".to_vec(),
        ),
        ("unknown type", with("type", json!("orders.teleported"))),
        ("unknown version", with("version", json!("v7"))),
        ("unknown field", serde_json::to_vec(&unknown_field).unwrap()),
    ]
}

async fn publish(system: &System, subject: &str, message_id: &str, payload: Vec<u8>) {
    let js = system.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", message_id);
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("JetStream stores the message");
}

async fn assert_ready(system: &System) {
    for url in [
        &system.order_url,
        &system.inventory_url,
        &system.payment_url,
    ] {
        let response = reqwest::get(format!("{url}/health/ready")).await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
    }
}

async fn hostile_messages_are_dead_lettered_and_the_flow_goes_on(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let max_payload = system.nats.client().await.server_info().max_payload;
    let messages = hostile_messages(max_payload);
    for (n, (_, payload)) in messages.iter().enumerate() {
        publish(
            &system,
            "orders.created",
            &format!("hostile-{n}"),
            payload.clone(),
        )
        .await;
    }
    let order = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&order).await["status"], "confirmed");

    let letters = wait_until(
        "every hostile message dead-lettered by both consumers",
        SAGA_DEADLINE,
        || async {
            let letters = dead_letters(&system, None);
            (letters.len() == 2 * messages.len()).then_some(letters)
        },
    )
    .await;
    for consumer in ["inventory-orders", "payment-orders"] {
        let mine: Vec<&Value> = letters
            .iter()
            .filter(|letter| letter["consumer"] == consumer)
            .collect();
        assert_eq!(mine.len(), messages.len(), "{consumer}: {mine:#?}");
        for letter in &mine {
            let error = letter["error"].as_str().unwrap_or_default();
            assert!(!error.contains('\n') && !error.contains('\r'), "{letter}");
            assert_eq!(letter["deliveries"], 1, "{letter}");
        }
        // The one too large to copy whole with the dead-letter headers was cut, and says so; it
        // cannot be replayed as it is.
        let cut = mine
            .iter()
            .find(|letter| letter["truncated_from"].as_u64().is_some())
            .unwrap_or_else(|| panic!("no cut dead letter: {mine:#?}"));
        let replay = dlq_at(&system.nats.url(), &["replay", &cut["id"].to_string()]);
        assert!(!replay.status.success(), "{}", shown(&replay));
        assert!(
            text(&replay.stderr).contains("holds only the beginning"),
            "{}",
            shown(&replay)
        );
    }
    assert_ready(&system).await;
    system.verified_allowing_dead_letters().await;
}

async fn a_line_break_in_a_stored_correlation_id_is_escaped_by_the_relay(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    // A row as an older version (or a careless operator) may have left it: the payload is a fine
    // event, the column beside it is not.
    let event = Envelope::first(
        OrderId::new(),
        CorrelationId::parse("stored").unwrap(),
        Event::OrderCancelled(OrderCancelled {
            reason: CancelReason::Timeout,
        }),
    );
    insert_outbox_row(&system, &event, "stored\r\nX-Injected: 1").await;

    let stored = wait_until("the row to be published", SAGA_DEADLINE, || async {
        system
            .stream_messages("ORDERS")
            .await
            .into_iter()
            .find(|(payload, _)| *payload == event.to_json())
    })
    .await;
    let header = stored
        .1
        .get("Orderflow-Correlation-Id")
        .map(|v| v.as_str().to_owned());
    assert_eq!(header.as_deref(), Some("stored\\r\\nX-Injected: 1"));
    assert!(stored.1.get("X-Injected").is_none());

    // The relay carries on with what follows.
    let order = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&order).await["status"], "confirmed");
    assert_ready(&system).await;
}

/// Inserts an outbox row into order-service's database behind its back.
async fn insert_outbox_row(system: &System, event: &Envelope, correlation_id: &str) {
    let mut conn = system.connect_to("order").await;
    sqlx::query(
        "INSERT INTO outbox (event_id, subject, order_id, correlation_id, payload, created_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.meta.event_id.to_string())
    .bind(event.subject().into_owned())
    .bind(event.meta.order_id.to_string())
    .bind(correlation_id.to_owned())
    .bind(event.to_json())
    .bind(platform::db::now_us())
    .execute(&mut conn)
    .await
    .expect("insert the row");
    conn.close().await.unwrap();
}

async fn a_deleted_dead_letter_stream_is_declared_again_and_keeps_the_poison(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let js = system.jetstream().await;
    assert!(js.delete_stream("DLQ").await.expect("delete DLQ").success);
    publish(
        &system,
        "orders.created",
        "poison-no-dlq",
        b"{\"not\": \"an event\"}".to_vec(),
    )
    .await;

    let letters = wait_until(
        "the poison in a DLQ declared again",
        SAGA_DEADLINE,
        || async {
            js.get_stream("DLQ").await.ok()?;
            let letters = dead_letters(&system, None);
            (letters.len() == 2).then_some(letters)
        },
    )
    .await;
    for letter in &letters {
        assert_eq!(letter["payload"], json!({"not": "an event"}), "{letter}");
    }
    let order = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&order).await["status"], "confirmed");
    system.verified_allowing_dead_letters().await;
}
