//! `/health/ready` over a real (SQLite) database: it answers 503 naming whatever the tasks report down
//! (a task being restarted, a database a consumer cannot write to), and 200 once all is well again.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use platform::db::Db;
use platform::health::{Health, Readiness};
use platform::http::with_common_routes;
use serde_json::Value;
use tower::ServiceExt;

async fn ready(health: &Health) -> (StatusCode, Value) {
    let router = with_common_routes(
        axum::Router::new(),
        health.clone(),
        &platform::http::api_document(
            "test",
            "a test",
            utoipa::openapi::OpenApiBuilder::new().build(),
        ),
        &platform::http::EdgePolicy::default(),
    );
    let response = router
        .oneshot(Request::get("/health/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn readiness_names_the_task_that_is_down_and_a_database_a_consumer_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/health.db?mode=rwc", dir.path().display());
    let readiness = Readiness::default();
    readiness.register("charge-worker");
    let health = Health::new(
        "test",
        Db::connect(&url, "health", &[]).await.unwrap(),
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        readiness.clone(),
    );
    let (status, body) = ready(&health).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["charge-worker"], "ok");
    assert_eq!(body["checks"]["database"], "ok");

    readiness.report(
        "charge-worker",
        "charge-worker",
        Err("down, restarting in 100 ms: it panicked: boom".into()),
    );
    let (status, body) = ready(&health).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["checks"]["charge-worker"]
            .as_str()
            .unwrap()
            .contains("it panicked: boom"),
        "{body}"
    );
    readiness.report("charge-worker", "charge-worker", Ok(()));

    // The probe itself may pass while a consumer sees the database fail: the consumer's word counts.
    readiness.report(
        "database",
        "inventory-orders",
        Err("unavailable for 3s: locked".into()),
    );
    let (status, body) = ready(&health).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["checks"]["database"],
        "inventory-orders: unavailable for 3s: locked"
    );
    readiness.report("database", "inventory-orders", Ok(()));
    assert_eq!(ready(&health).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_outbox_backlog_at_its_limit_makes_the_service_not_ready_and_says_how_old() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/health.db?mode=rwc", dir.path().display());
    let db = Db::connect(&url, "health", &[]).await.unwrap();
    let health = Health::new(
        "test",
        db.clone(),
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        Readiness::default(),
    )
    .with_outbox(2);
    let (status, body) = ready(&health).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["outbox"], "ok");

    let ten_seconds_ago = platform::db::now_us() - 10_000_000;
    for n in 0..2 {
        platform::db::query(
            "INSERT INTO outbox (event_id, subject, order_id, correlation_id, payload, created_at_us) \
             VALUES ($1, 'orders.created', 'o', 'c', x'7b7d', $2)",
        )
        .bind(format!("event-{n}"))
        .bind(ten_seconds_ago)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let (status, body) = ready(&health).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let outbox = body["checks"]["outbox"].as_str().unwrap();
    assert!(
        outbox.starts_with("2 events wait to be published (the limit is 2), the oldest for 10 s"),
        "{outbox}"
    );

    let status = health.status().await;
    let backlog = status.outbox.unwrap();
    assert_eq!(backlog.unpublished, 2);
    assert!(backlog.oldest_age_ms.unwrap() >= 10_000, "{backlog:?}");
    assert_eq!(status.ready.checks["outbox"], outbox);
}
