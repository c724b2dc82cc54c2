//! The HTTP contract of `POST /orders`: every bad request gets its status and names its fields, and
//! creates nothing; `Idempotency-Key` makes a retried request safe.

use crate::harness::System;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(
    bad_requests_are_refused_and_create_nothing,
    idempotency_key_returns_the_same_order,
);

fn order_with(field: &str, value: Value) -> Value {
    let mut body = json!({
        "customer_id": "c-1",
        "items": [{"product_id": "sku-1", "quantity": 1}],
        "payment_method": "tok_visa"
    });
    body[field] = value;
    body
}

async fn bad_requests_are_refused_and_create_nothing(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let http = reqwest::Client::new();
    let url = format!("{}/orders", system.order_url);

    let malformed = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"customer_id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = malformed.json().await.unwrap();
    for key in ["type", "title", "status", "detail"] {
        assert!(problem.get(key).is_some(), "problem lacks {key}: {problem}");
    }

    let not_json = http
        .post(&url)
        .header("content-type", "text/plain")
        .body("customer_id=c-1")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let huge = json!({"customer_id": "c", "payment_method": "x".repeat(70_000), "items": []});
    let too_large = http.post(&url).json(&huge).send().await.unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let many: Vec<Value> = (0..51)
        .map(|i| json!({"product_id": format!("p-{i}"), "quantity": 1}))
        .collect();
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"items": [{"product_id": "sku-1", "quantity": 1}], "payment_method": "tok_visa"}),
            vec!["customer_id"],
        ),
        (
            order_with("customer_id", json!("has space")),
            vec!["customer_id"],
        ),
        (
            order_with("customer_id", json!("c".repeat(65))),
            vec!["customer_id"],
        ),
        (order_with("customer_id", json!(42)), vec!["customer_id"]),
        (order_with("items", json!([])), vec!["items"]),
        (order_with("items", json!(many)), vec!["items"]),
        (
            order_with("items", json!([{"product_id": "sku-1", "quantity": 0}])),
            vec!["items[0].quantity"],
        ),
        (
            order_with("items", json!([{"product_id": "sku-1", "quantity": 1001}])),
            vec!["items[0].quantity"],
        ),
        (
            order_with("items", json!([{"product_id": "sku-1", "quantity": "2"}])),
            vec!["items[0].quantity"],
        ),
        (
            order_with("items", json!([{"product_id": "sku-1", "quantity": 1.5}])),
            vec!["items[0].quantity"],
        ),
        (
            order_with("items", json!([{"product_id": "sku/1", "quantity": 1}])),
            vec!["items[0].product_id"],
        ),
        (
            order_with(
                "items",
                json!([{"product_id": "sku-1", "quantity": 1}, {"product_id": "sku-1", "quantity": 2}]),
            ),
            vec!["items[1].product_id"],
        ),
        (
            order_with(
                "items",
                json!([{"product_id": "sku-1", "quantity": 1, "colour": "red"}]),
            ),
            vec!["items[0].colour"],
        ),
        (
            order_with("payment_method", json!("")),
            vec!["payment_method"],
        ),
        (
            order_with("payment_method", json!("t".repeat(65))),
            vec!["payment_method"],
        ),
        (order_with("coupon", json!("FREE")), vec!["coupon"]),
        (
            json!({"customer_id": "", "items": [{"product_id": "", "quantity": -1}], "payment_method": ""}),
            vec![
                "customer_id",
                "items[0].product_id",
                "items[0].quantity",
                "payment_method",
            ],
        ),
    ];
    for (body, fields) in cases {
        let (status, headers, problem) = system.post_order(&body, &[]).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {problem}"
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors list")
            .iter()
            .map(|e| e["field"].as_str().unwrap_or_default())
            .collect();
        for field in fields {
            assert!(
                named.contains(&field),
                "{body}: {field} not named in {problem}"
            );
        }
    }

    // Nothing was created: the only order the system ever saw is this valid one, placed last. The
    // relay publishes in commit order, so an earlier (wrongly stored) order would be in the stream.
    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    system.wait_final(&id).await;
    let created = orders_created(&system).await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["order_id"], id.as_str());
}

async fn idempotency_key_returns_the_same_order(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let body = json!({
        "customer_id": "c-1",
        "items": [{"product_id": "sku-1", "quantity": 2}],
        "payment_method": "tok_visa"
    });
    let key = [("Idempotency-Key", "retry-me-1")];

    let (first_status, first_headers, first) = system.post_order(&body, &key).await;
    assert_eq!(first_status, StatusCode::ACCEPTED);
    let (again_status, _, again) = system.post_order(&body, &key).await;
    assert_eq!(again_status, StatusCode::ACCEPTED);
    assert_eq!(again["order_id"], first["order_id"]);
    let id = first["order_id"].as_str().unwrap().to_owned();
    assert_eq!(first_headers["location"], format!("/orders/{id}").as_str());

    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(3);
    let (different_status, _, problem) = system.post_order(&other, &key).await;
    assert_eq!(
        different_status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{problem}"
    );

    let order = system.wait_final(&id).await;
    assert_eq!(order["status"], "confirmed");
    let (after_status, _, after) = system.post_order(&body, &key).await;
    assert_eq!(after_status, StatusCode::ACCEPTED);
    assert_eq!(after["order_id"], id.as_str());

    assert_eq!(system.charges_for(&id).await.len(), 1);
    assert_eq!(orders_created(&system).await.len(), 1);
    system.wait_stock("sku-1", 8, 0, 2).await;
}

/// The `orders.created` events in the ORDERS stream, as stored.
async fn orders_created(system: &System) -> Vec<Value> {
    system
        .stream_events("ORDERS")
        .await
        .into_iter()
        .filter(|(subject, _)| subject == "orders.created")
        .map(|(_, event)| event)
        .collect()
}

on_both_backends!(a_key_whose_first_request_is_in_flight_answers_409);

async fn a_key_whose_first_request_is_in_flight_answers_409(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    let body = json!({
        "customer_id": "c-1",
        "items": [{"product_id": "sku-1", "quantity": 1}],
        "payment_method": "tok_visa"
    });
    // The state a first request is in between claiming its key and committing its order: the key is
    // stored with this body and no order yet. (Sorted keys: the canonical form order-service stores.)
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    system
        .execute_sql(
            "order",
            &format!(
                "INSERT INTO idempotency_keys (idempotency_key, request, order_id, created_at_us) \
                 VALUES ('in-flight', '{body}', NULL, {now_us})"
            ),
        )
        .await;

    let (status, _, problem) = system
        .post_order(&body, &[("Idempotency-Key", "in-flight")])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["status"], 409);
    let (other_status, _, _) = system
        .post_order(&body, &[("Idempotency-Key", "another-key")])
        .await;
    assert_eq!(other_status, StatusCode::ACCEPTED);
}

on_both_backends!(concurrent_requests_with_one_key_place_one_order_and_all_get_it);

/// A client that sends its request again before the first answer came (a retry on a short timeout,
/// a double click) gets the one order every time: the key is stored in the order's own transaction,
/// so each repeat waits for that transaction and then finds the key completed.
async fn concurrent_requests_with_one_key_place_one_order_and_all_get_it(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let body = json!({
        "customer_id": "c-1",
        "items": [{"product_id": "sku-1", "quantity": 1}],
        "payment_method": "tok_visa"
    });
    let key = [("Idempotency-Key", "double-click")];
    let answers = futures::future::join_all((0..8).map(|_| system.post_order(&body, &key))).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, _, answer)| {
            assert_eq!(*status, StatusCode::ACCEPTED, "{answer}");
            answer["order_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    assert_eq!(orders_created(&system).await.len(), 1);
}
