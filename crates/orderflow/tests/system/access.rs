//! Locked-down access: admin operations (catalog writes, the gateway simulator's faults) need the
//! admin token (without one the answer is 401, with a wrong one 403, and nothing changes); a client
//! over its rate limit gets 429; slow clients are cut off instead of holding the server.

use crate::harness::{Options, System};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use testkit::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// A client over its rate limit gets 429 with `Retry-After` before anything is done; other routes
/// (health, metrics) are never limited; after the wait it is let in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_gets_429_and_changes_nothing() {
    let options = Options {
        service_args: vec![
            "--rate-limit".into(),
            "1".into(),
            "--rate-limit-burst".into(),
            "3".into(),
        ],
        ..Options::default()
    };
    let Some(system) = System::start_with(Backend::Sqlite, options).await else {
        return;
    };
    system.put_product("sku-limited", 100, 100).await;
    let http = reqwest::Client::new();
    let mut accepted = 0;
    let mut limited = Vec::new();
    let mut placed = Vec::new();
    let started = Instant::now();
    for n in 0..10 {
        let response = http
            .post(format!("{}/orders", system.order_url))
            .header("Idempotency-Key", format!("limited-{n}"))
            .json(&json!({
                "customer_id": "c-limited",
                "items": [{"product_id": "sku-limited", "quantity": 1}],
                "payment_method": "tok_visa",
            }))
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::ACCEPTED => {
                accepted += 1;
                let body: Value = response.json().await.unwrap();
                placed.push(body["order_id"].as_str().unwrap().to_owned());
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
                let problem: Value = response.json().await.unwrap();
                assert_eq!(
                    problem["type"], "urn:orderflow:problem:rate-limited",
                    "{problem}"
                );
                limited.push(retry_after);
            }
            other => panic!("POST /orders answered {other}"),
        }
    }
    // The burst, and one more for each second the requests took.
    let refilled = usize::try_from(started.elapsed().as_secs()).unwrap_or(usize::MAX);
    assert!(
        (3..=3 + refilled).contains(&accepted) && !limited.is_empty(),
        "{accepted} accepted"
    );
    assert_eq!(accepted + limited.len(), 10);
    // Probes and scrapers are never limited.
    for _ in 0..10 {
        let (status, _) = system
            .get_json(&format!("{}/health/ready", system.order_url))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Only the accepted orders exist: a refused request created nothing.
    let mut conn = system.connect_to("order").await;
    let (orders,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(orders, accepted as i64);
    // Told to wait, the client is let in after the wait.
    tokio::time::sleep(Duration::from_secs(limited[limited.len() - 1])).await;
    let (status, body) = system
        .get_json(&format!("{}/orders/{}", system.order_url, placed[0]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A slowloris client (trickling its headers to hold connections) is cut off after the header
/// timeout, so with every connection slot held by one, a normal client still gets in; a body that
/// does not arrive in time gets 408 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_the_server() {
    const SLOTS: usize = 4;
    let options = Options {
        service_args: vec![
            "--http-max-connections".into(),
            SLOTS.to_string(),
            "--http-header-timeout".into(),
            "1s".into(),
            "--http-request-timeout".into(),
            "1s".into(),
        ],
        ..Options::default()
    };
    let Some(system) = System::start_with(Backend::Sqlite, options).await else {
        return;
    };
    let address = system.order_url.trim_start_matches("http://").to_owned();

    // Every slot taken by a client that sends a header line every 200 ms, forever.
    let slow: Vec<_> = (0..SLOTS)
        .map(|n| {
            let address = address.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut stream = TcpStream::connect(&address).await.unwrap();
                stream
                    .write_all(b"GET /health/live HTTP/1.1\r\nHost: orderflow\r\n")
                    .await
                    .unwrap();
                let mut buffer = [0_u8; 1024];
                loop {
                    let line = format!("X-Slow-{n}: {:?}\r\n", started.elapsed());
                    if stream.write_all(line.as_bytes()).await.is_err() {
                        return started.elapsed();
                    }
                    let read =
                        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer))
                            .await;
                    // Closed (or reset) by the server.
                    if let Ok(Ok(0) | Err(_)) = read {
                        return started.elapsed();
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "a slowloris connection was held for 30 s"
                    );
                }
            })
        })
        .collect();
    // A normal client gets its answer although every slot was taken.
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("{}/health/live", system.order_url))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("a normal request is served once the slow clients are cut off");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(20));
    for held in slow {
        let held = held.await.unwrap();
        assert!(held < Duration::from_secs(10), "held for {held:?}");
    }

    // A body announced and never sent: 408 after the request timeout, and no product.
    let inventory = system.inventory_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(inventory).await.unwrap();
    let head = format!(
        "PUT /products/sku-slow HTTP/1.1\r\nHost: orderflow\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        system.admin_token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
    let (status, _) = system
        .get_json(&format!("{}/products/sku-slow", system.inventory_url))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
