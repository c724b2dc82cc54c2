//! Locked-down access: admin operations (catalog writes, the gateway simulator's faults) need the
//! admin token. Without one the answer is 401, with a wrong one 403, and nothing changes.

use crate::harness::System;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations_need_the_admin_token() {
    let Some(system) = System::start(Backend::Sqlite).await else {
        return;
    };
    system.put_product("sku-locked", 500, 7).await;
    let http = reqwest::Client::new();
    let product = format!("{}/products/sku-locked", system.inventory_url);
    let faults = format!("{}/admin/faults", system.gateway_url);
    let change = json!({"name": "Changed", "price_cents": 1, "stock": 1000});
    let outage = json!({"mode": "down"});

    for (authorization, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Basic dXNlcjpwYXNz"), StatusCode::UNAUTHORIZED),
        (
            Some("Bearer not-the-admin-token-0123"),
            StatusCode::FORBIDDEN,
        ),
    ] {
        for (request, what) in [
            (http.put(&product).json(&change), "PUT /products/sku-locked"),
            (
                http.put(format!("{}/products/sku-new", system.inventory_url))
                    .json(&change),
                "PUT /products/sku-new",
            ),
            (http.post(&faults).json(&outage), "POST /admin/faults"),
            (
                http.get(format!("{}/admin/stats", system.gateway_url)),
                "GET /admin/stats",
            ),
        ] {
            let request = match authorization {
                Some(value) => request.header("Authorization", value),
                None => request,
            };
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status, "{what} with {authorization:?}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{what}"
            );
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
            }
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["status"], status.as_u16(), "{what}: {problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains("ORDERFLOW_ADMIN_TOKEN")),
                "{what}: {problem}"
            );
        }
    }

    // Nothing changed: the product as it was, no new one, the gateway still charging.
    let (_, kept) = system.get_json(&product).await;
    assert_eq!(
        (
            kept["name"].as_str(),
            kept["price_cents"].as_i64(),
            kept["available"].as_i64()
        ),
        (Some("Product sku-locked"), Some(500), Some(7)),
        "{kept}"
    );
    let (status, _) = system
        .get_json(&format!("{}/products/sku-new", system.inventory_url))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, settings) = system.admin_get_json(&faults).await;
    assert_eq!(settings["mode"], "ok", "{settings}");

    // Reading the catalog stays public, and the right token still works.
    let id = system
        .place(
            json!([{"product_id": "sku-locked", "quantity": 1}]),
            "tok_visa",
        )
        .await;
    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    system.put_product("sku-locked", 600, 3).await;
    let (_, changed) = system.get_json(&product).await;
    assert_eq!(changed["price_cents"], 600, "{changed}");
}
