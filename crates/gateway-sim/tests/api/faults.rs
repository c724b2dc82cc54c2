//! Fault modes switched at run time through `/admin/faults`, and what each does to `/v1` calls.

use crate::helpers::TestApp;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn is_unavailable((status, body): &(u16, Value)) -> bool {
    *status == 503 && body["error"]["code"] == "unavailable"
}

#[tokio::test]
async fn faults_start_off_and_bad_settings_are_refused_whole() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/admin/faults").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"mode": "ok", "latency_ms": 1000, "error_rate": 0.5})
    );

    let (status, body) = app
        .post(
            "/admin/faults",
            None,
            json!({"mode": "sideways", "latency_ms": -3, "error_rate": 2, "extra": 1}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["type"], "urn:orderflow:problem:validation");
    assert_eq!(body["errors"].as_array().unwrap().len(), 4);
    let response = app
        .client
        .post(format!("{}/admin/faults", app.address))
        .body("mode=down")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    assert_eq!(app.get("/admin/faults").await.1["mode"], "ok");
}

#[tokio::test]
async fn down_refuses_every_call_without_touching_the_ledger_until_ok() {
    let app = TestApp::spawn().await;
    let settings = app.set_faults(json!({"mode": "down"})).await;
    assert_eq!(
        settings,
        json!({"mode": "down", "latency_ms": 1000, "error_rate": 0.5})
    );
    assert_eq!(app.get("/admin/faults").await.1, settings);

    assert!(is_unavailable(&app.charge("k1", 100, "tok_visa").await));
    assert!(is_unavailable(&app.refund("r1", "ch_1").await));
    assert!(is_unavailable(&app.get("/v1/charges").await));
    // Only the gateway API is down: health and the admin routes still answer.
    assert_eq!(app.get("/health/ready").await.0, 200);
    assert_eq!(
        app.get("/admin/stats").await.1,
        json!({"requests": 3, "unavailable": 3, "delayed": 0, "hung": 0})
    );

    app.set_faults(json!({"mode": "ok"})).await;
    assert!(app.list("/v1/charges").await.is_empty(), "nothing recorded");
    let (status, body) = app.charge("k1", 100, "tok_visa").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.list("/v1/charges").await.len(), 1);
}

#[tokio::test]
async fn slow_delays_every_call_and_then_handles_it() {
    let app = TestApp::spawn().await;
    app.set_faults(json!({"mode": "slow", "latency_ms": 300}))
        .await;
    let started = Instant::now();
    let (status, body) = app.charge("k1", 100, "tok_visa").await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    app.set_faults(json!({"mode": "ok"})).await;
    let started = Instant::now();
    assert_eq!(app.list("/v1/charges").await.len(), 1);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(app.get("/admin/stats").await.1["delayed"], 1);
}

#[tokio::test]
async fn flaky_fails_a_share_of_the_calls_without_touching_the_ledger() {
    let app = TestApp::spawn().await;
    app.set_faults(json!({"mode": "flaky", "error_rate": 0.5}))
        .await;
    let mut succeeded = 0;
    let mut unavailable = 0;
    for n in 0..40 {
        let answer = app.charge(&format!("k{n}"), 100, "tok_visa").await;
        if is_unavailable(&answer) {
            unavailable += 1;
        } else {
            assert_eq!(answer.0, 200, "{}", answer.1);
            succeeded += 1;
        }
    }
    // Both outcomes in 40 fair draws; the chance of either missing is 2^-39.
    assert!(
        succeeded > 0 && unavailable > 0,
        "{succeeded}/{unavailable}"
    );
    assert_eq!(app.get("/admin/stats").await.1["unavailable"], unavailable);

    app.set_faults(json!({"mode": "flaky", "error_rate": 1.0}))
        .await;
    for n in 0..5 {
        assert!(is_unavailable(
            &app.charge(&format!("all{n}"), 1, "tok_visa").await
        ));
    }
    app.set_faults(json!({"mode": "flaky", "error_rate": 0}))
        .await;
    for n in 0..5 {
        assert_eq!(app.charge(&format!("none{n}"), 1, "tok_visa").await.0, 200);
    }
    assert_eq!(app.list("/v1/charges").await.len(), succeeded + 5);
}

#[tokio::test]
async fn hang_never_answers_and_does_not_hold_up_shutdown() {
    let app = TestApp::spawn().await;
    app.set_faults(json!({"mode": "hang"})).await;

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = impatient
        .get(format!("{}/v1/charges", app.address))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");

    // A patient client is still waiting when the server is asked to stop.
    let patient = tokio::spawn(
        app.client
            .post(format!("{}/v1/charges", app.address))
            .header("Idempotency-Key", "k1")
            .json(&json!({"amount_cents": 100, "payment_method": "tok_visa"}))
            .send(),
    );
    let waited = Instant::now();
    while app.get("/admin/stats").await.1["hung"] != 2 {
        assert!(waited.elapsed() < Duration::from_secs(5), "never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let server = app.request_stop();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("shutdown completes despite hanging calls")
        .unwrap();
    let answer = patient.await.unwrap().unwrap();
    assert_eq!(answer.status().as_u16(), 503);
}
