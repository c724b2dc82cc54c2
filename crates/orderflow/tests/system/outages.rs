//! An outage is not poison. While the services' own database is unavailable (PostgreSQL cut off by a
//! proxy, the SQLite files locked by another process) for a whole minute under load, every event
//! waits without counting against its delivery limit, `/health/ready` names the database, and once it
//! is back every saga completes with nothing dead-lettered. Consumers that vanish from the broker come
//! back by themselves.

use crate::chaos::{self, Deadlines, ORDERS, assert_nothing_lost, place_patiently};
use crate::harness::{Options, SAGA_DEADLINE, System};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use std::time::{Duration, Instant};
use testkit::on_both_backends;
use testkit::{Backend, wait_until};

/// Longer than the 21 s after which the old redelivery schedule had dead-lettered everything in
/// flight, and as long as a PostgreSQL failover may take.
const OUTAGE: Duration = Duration::from_secs(60);
/// How long a client keeps retrying an order: the outage and then some.
const CLIENT_PATIENCE: Duration = Duration::from_secs(180);

/// Sagas outlive the outage (their deadline is longer), so every order that can succeed should.
fn outage_options(database_proxy: bool) -> Options {
    Options {
        order_args: vec!["--saga-timeout".into(), "3m".into()],
        service_args: vec!["--ack-wait".into(), "3s".into()],
        database_proxy,
        ..Options::default()
    }
}

/// Waits until every service answers `/health/ready` with 503 and a `database` check that is not ok.
async fn wait_database_not_ready(system: &System) {
    for url in [
        &system.order_url,
        &system.inventory_url,
        &system.payment_url,
    ] {
        let ready = format!("{url}/health/ready");
        wait_until(
            &format!("{ready} to report the database down"),
            OUTAGE,
            || async {
                let response = reqwest::get(&ready).await.ok()?;
                let status = response.status();
                let body: Value = response.json().await.ok()?;
                (status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["database"] != "ok")
                    .then_some(())
            },
        )
        .await;
    }
}

/// Places the first part of the load, runs `outage` while more orders keep coming (their clients
/// retrying until the database is back), then checks that nothing was lost or dead-lettered.
async fn under_load_through(system: &System, outage: impl Future<Output = ()>) {
    let mut ids = place_patiently(system, 0..80, SAGA_DEADLINE).await;
    let (more, ()) = tokio::join!(place_patiently(system, 80..140, CLIENT_PATIENCE), outage);
    ids.extend(more);
    ids.extend(place_patiently(system, 140..ORDERS, SAGA_DEADLINE).await);
    assert_nothing_lost(system, &ids, Deadlines::NeverMissed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_for_a_minute_under_load_dead_letters_nothing() {
    let Some(system) = chaos::start_with(Backend::Postgres, outage_options(true)).await else {
        return;
    };
    let proxy = system
        .db_proxy
        .as_ref()
        .expect("a proxy in front of PostgreSQL");
    under_load_through(&system, async {
        proxy.cut();
        let cut = Instant::now();
        wait_database_not_ready(&system).await;
        tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
        proxy.restore();
    })
    .await;
}

/// Holds `BEGIN EXCLUSIVE` on a service's SQLite file: no other connection can write until rollback.
async fn lock(url: &str) -> sqlx::SqliteConnection {
    let mut conn = sqlx::SqliteConnection::connect(url)
        .await
        .expect("open the service's SQLite file");
    conn.execute("PRAGMA busy_timeout = 30000; BEGIN EXCLUSIVE")
        .await
        .expect("lock the database");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_for_a_minute_under_load_dead_letters_nothing() {
    let Some(system) = chaos::start_with(Backend::Sqlite, outage_options(false)).await else {
        return;
    };
    under_load_through(&system, async {
        let mut locks = Vec::new();
        for store in ["order", "inventory", "payment"] {
            locks.push(lock(&system.db_url(store)).await);
        }
        let locked = Instant::now();
        wait_database_not_ready(&system).await;
        tokio::time::sleep(OUTAGE.saturating_sub(locked.elapsed())).await;
        for mut conn in locks {
            conn.execute("ROLLBACK").await.expect("unlock the database");
            conn.close().await.expect("close");
        }
    })
    .await;
}

on_both_backends!(a_consumer_deleted_on_the_broker_is_declared_again_and_its_orders_complete);

async fn a_consumer_deleted_on_the_broker_is_declared_again_and_its_orders_complete(
    backend: Backend,
) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 100, 1000).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            system
                .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
                .await,
        );
    }
    let js = system.jetstream().await;
    let orders = js.get_stream("ORDERS").await.expect("the ORDERS stream");
    assert!(
        orders
            .delete_consumer("inventory-orders")
            .await
            .expect("delete")
            .success
    );
    let deleted = Instant::now();
    for _ in 0..10 {
        ids.push(
            system
                .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
                .await,
        );
    }
    wait_until(
        "inventory-orders to be declared again",
        Duration::from_secs(15),
        || async {
            orders
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("inventory-orders")
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
    assert!(deleted.elapsed() < Duration::from_secs(15));
    for id in &ids {
        assert_eq!(system.wait_final(id).await["status"], "confirmed");
    }
    system.wait_stock("sku-1", 980, 0, 20).await;
    system.verified().await;
}
