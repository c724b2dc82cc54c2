//! Charges, refunds and their ledger: idempotent, searchable, persistent.

use crate::helpers::TestApp;
use serde_json::json;

#[tokio::test]
async fn a_good_card_is_charged() {
    let app = TestApp::spawn().await;
    let (status, body) = app.charge("k1", 1299, "tok_visa").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["amount_cents"], 1299);
    assert!(body["id"].as_str().unwrap().starts_with("ch_"));

    let charges = app.list("/v1/charges").await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["id"], body["id"]);
    assert_eq!(charges[0]["order_id"], "order-k1");
    assert_eq!(charges[0]["idempotency_key"], "k1");
    assert_eq!(charges[0]["refunded"], false);
}

#[tokio::test]
async fn a_declined_card_gets_402_and_is_recorded() {
    let app = TestApp::spawn().await;
    let (status, body) = app.charge("k1", 500, "tok_chargeDeclined").await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "card_declined");
    let (status, body) = app.charge("k2", 500, "tok_nonsense").await;
    assert_eq!(status, 402, "{body}");

    let charges = app.list("/v1/charges").await;
    assert_eq!(charges.len(), 2);
    assert!(charges.iter().all(|c| c["status"] == "declined"));
    // The same key again gives the same decline, not a new attempt.
    let (status, _) = app.charge("k1", 500, "tok_chargeDeclined").await;
    assert_eq!(status, 402);
    assert_eq!(app.list("/v1/charges").await.len(), 2);
}

#[tokio::test]
async fn the_same_key_twice_charges_once() {
    let app = TestApp::spawn().await;
    let (_, first) = app.charge("order-1", 700, "tok_mastercard").await;
    let (status, second) = app.charge("order-1", 700, "tok_mastercard").await;
    assert_eq!(status, 200);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(app.list("/v1/charges").await.len(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_charge_once() {
    let app = TestApp::spawn().await;
    let (a, b, c) = tokio::join!(
        app.charge("same", 100, "tok_visa"),
        app.charge("same", 100, "tok_visa"),
        app.charge("same", 100, "tok_visa"),
    );
    assert_eq!(a.1["id"], b.1["id"]);
    assert_eq!(b.1["id"], c.1["id"]);
    assert_eq!(app.list("/v1/charges").await.len(), 1);
}

#[tokio::test]
async fn a_key_reused_for_another_charge_is_refused() {
    let app = TestApp::spawn().await;
    app.charge("k", 700, "tok_visa").await;
    let (status, body) = app.charge("k", 701, "tok_visa").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    let (status, _) = app.charge("k", 700, "tok_amex").await;
    assert_eq!(status, 409);
    assert_eq!(app.list("/v1/charges").await.len(), 1);
}

#[tokio::test]
async fn a_charge_is_refunded_at_most_once() {
    let app = TestApp::spawn().await;
    let (_, charge) = app.charge("k", 900, "tok_visa").await;
    let charge_id = charge["id"].as_str().unwrap();

    let (status, refund) = app.refund("refund-k", charge_id).await;
    assert_eq!(status, 200, "{refund}");
    assert_eq!(refund["status"], "succeeded");
    assert_eq!(refund["charge"], charge_id);
    assert_eq!(refund["amount_cents"], 900);
    assert!(refund["id"].as_str().unwrap().starts_with("re_"));

    // Same key, and a different key for the same charge: both give the existing refund.
    let (status, again) = app.refund("refund-k", charge_id).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], refund["id"]);
    let (status, other_key) = app.refund("another", charge_id).await;
    assert_eq!(status, 200);
    assert_eq!(other_key["id"], refund["id"]);

    let refunds = app.list("/v1/refunds").await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["order_id"], "order-k");
    assert_eq!(app.list("/v1/charges").await[0]["refunded"], true);
}

#[tokio::test]
async fn unknown_and_declined_charges_cannot_be_refunded() {
    let app = TestApp::spawn().await;
    let (status, body) = app.refund("r1", "ch_nope").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "resource_missing");

    let (_, declined) = app.charge("k", 100, "tok_chargeDeclined").await;
    let (status, body) = app
        .refund("r2", declined["error"]["charge"].as_str().unwrap())
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(app.list("/v1/refunds").await.is_empty());
}

#[tokio::test]
async fn a_refund_key_reused_for_another_charge_is_refused() {
    let app = TestApp::spawn().await;
    let (_, first) = app.charge("a", 100, "tok_visa").await;
    let (_, second) = app.charge("b", 100, "tok_visa").await;
    app.refund("r", first["id"].as_str().unwrap()).await;
    let (status, body) = app.refund("r", second["id"].as_str().unwrap()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn bad_requests_are_problems() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/charges",
            None,
            json!({"amount_cents": 1, "payment_method": "tok_visa"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "urn:orderflow:problem:bad-request");

    let long_key = "k".repeat(256);
    let (status, _) = app.charge(&long_key, 1, "tok_visa").await;
    assert_eq!(status, 400);

    let (status, body) = app
        .post(
            "/v1/charges",
            Some("k"),
            json!({"amount_cents": -5, "payment_method": "", "colour": "red"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);
    assert!(app.list("/v1/charges").await.is_empty());

    let response = app
        .client
        .get(format!("{}/v1/charges?customer=1", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn the_ledger_can_be_searched_by_order() {
    let app = TestApp::spawn().await;
    let (_, a) = app.charge("a", 100, "tok_visa").await;
    app.charge("b", 200, "tok_visa").await;
    let (_, a_again) = app.charge("a", 100, "tok_visa").await;
    assert_eq!(a["id"], a_again["id"]);
    app.refund("ra", a["id"].as_str().unwrap()).await;

    let charges = app.list("/v1/charges?order_id=order-a").await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["id"], a["id"]);
    assert_eq!(app.list("/v1/refunds?order_id=order-a").await.len(), 1);
    assert!(app.list("/v1/refunds?order_id=order-b").await.is_empty());
    let all = app.list("/v1/charges").await;
    assert_eq!(all[0]["id"], a["id"], "oldest first");
}

#[tokio::test]
async fn the_ledger_survives_a_restart() {
    let app = TestApp::spawn().await;
    let (_, before) = app.charge("k", 100, "tok_visa").await;
    let dir = app.stop().await;

    let app = TestApp::spawn_in(dir).await;
    let (status, after) = app.charge("k", 100, "tok_visa").await;
    assert_eq!(status, 200);
    assert_eq!(after["id"], before["id"]);
    assert_eq!(app.list("/v1/charges").await.len(), 1);
}

#[tokio::test]
async fn readiness_checks_the_ledger() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn charges_can_be_searched_by_idempotency_key() {
    let app = TestApp::spawn().await;
    let (_, charged) = app.charge("key-a", 1200, "tok_visa").await;
    app.charge("key-b", 300, "tok_chargeDeclined").await;

    let found = app.list("/v1/charges?idempotency_key=key-a").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["id"], charged["id"]);
    assert_eq!(found[0]["status"], "succeeded");
    let declined = app.list("/v1/charges?idempotency_key=key-b").await;
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0]["status"], "declined");
    // A key that never charged: an empty list, not an error, which is what settles "was it charged?".
    assert!(
        app.list("/v1/charges?idempotency_key=key-c")
            .await
            .is_empty()
    );
    // Both filters at once narrow further.
    assert!(
        app.list("/v1/charges?idempotency_key=key-a&order_id=order-key-b")
            .await
            .is_empty()
    );
    let (status, _) = app.get("/v1/refunds?idempotency_key=key-a").await;
    assert_eq!(status, 400);
}
