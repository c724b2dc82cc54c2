//! `orderflow verify`, run as the real binary as an operator would: a quiet system after each way a
//! saga ends passes, a unit of stock invented behind the services' backs is named, and a database it
//! cannot read is told apart from a violation, with the reason.

use crate::harness::{System, shown, text};
use serde_json::{Value, json};
use std::process::{Command, Output};
use testkit::Backend;
use testkit::{free_port, on_both_backends};

on_both_backends!(a_quiet_system_verifies_and_a_corrupted_stock_count_is_named);

/// Changes the inventory's data directly, as a bug or a careless operator would.
async fn a_quiet_system_verifies_and_a_corrupted_stock_count_is_named(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-v", 1299, 5).await;
    let confirmed = system
        .place(json!([{"product_id": "sku-v", "quantity": 2}]), "tok_visa")
        .await;
    let short = system
        .place(json!([{"product_id": "sku-v", "quantity": 10}]), "tok_visa")
        .await;
    let declined = system
        .place(
            json!([{"product_id": "sku-v", "quantity": 1}]),
            "tok_chargeDeclined",
        )
        .await;
    assert_eq!(system.wait_final(&confirmed).await["status"], "confirmed");
    assert_eq!(system.wait_final(&short).await["status"], "cancelled");
    assert_eq!(system.wait_final(&declined).await["status"], "cancelled");
    system.wait_stock("sku-v", 3, 0, 2).await;

    let passed = system.verified().await;
    assert_eq!(
        text(&passed.stdout),
        "checked 3 orders, 1 product: OK\n",
        "{}",
        shown(&passed)
    );

    system
        .execute_sql(
            "inventory",
            "UPDATE products SET sold = sold + 1 WHERE product_id = 'sku-v'",
        )
        .await;

    let failed = system.verify(&[]);
    assert_eq!(failed.status.code(), Some(1), "{}", shown(&failed));
    let stdout = text(&failed.stdout);
    assert!(
        stdout.contains(
            "product sku-v violates stock-conserved: available 3 + reserved 0 + sold 3 = 6, \
             but its starting stock is 5"
        ),
        "{}",
        shown(&failed)
    );
    assert!(
        stdout.contains("product sku-v violates stock-sold"),
        "{}",
        shown(&failed)
    );
    assert!(
        stdout.ends_with("checked 3 orders, 1 product: 2 violations\n"),
        "{}",
        shown(&failed)
    );

    let as_json = system.verify(&["--json"]);
    assert_eq!(as_json.status.code(), Some(1), "{}", shown(&as_json));
    let report: Value = serde_json::from_slice(&as_json.stdout).expect("a JSON report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["orders"], 3);
    let rules: Vec<(&str, &str)> = report["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap_or_default(),
                v["rule"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [("sku-v", "stock-conserved"), ("sku-v", "stock-sold")]
    );
}

on_both_backends!(verify_judges_only_a_quiet_system_and_counts_dead_letters);

/// A system still at work is named as such (which consumer holds what), and dead letters fail the run
/// unless they are allowed.
async fn verify_judges_only_a_quiet_system_and_counts_dead_letters(backend: Backend) {
    let Some(mut system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-q", 1299, 5).await;
    system.payment.kill();
    let order = system
        .place(json!([{"product_id": "sku-q", "quantity": 1}]), "tok_visa")
        .await;
    let busy = testkit::wait_for(
        "verify to see payment-service's backlog",
        crate::harness::SAGA_DEADLINE,
        || async {
            let output = system.verify(&[]);
            let stdout = text(&output.stdout);
            // The order's event waits for payment-service either on the broker or, when the broker
            // handed it to a pull of the killed process before it noticed the connection was gone,
            // delivered and unacknowledged until its ack wait runs out: both are a system at work.
            let held = [
                "consumer payment-orders violates quiet: 1 message pending and 0 unacknowledged",
                "consumer payment-orders violates quiet: 0 messages pending and 1 unacknowledged",
            ];
            if output.status.code() == Some(1) && held.iter().any(|line| stdout.contains(line)) {
                Ok(stdout)
            } else {
                Err(shown(&output))
            }
        },
    )
    .await;
    assert!(
        busy.contains(&format!("order {order} violates settled: still pending")),
        "{busy}"
    );

    system.payment.restart();
    assert_eq!(system.wait_final(&order).await["status"], "confirmed");
    system.verified().await;

    let js = system.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "verify-poison");
    js.publish_with_headers("orders.created", headers, b"{}".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let refused = testkit::wait_until(
        "verify to count the dead letters",
        crate::harness::SAGA_DEADLINE,
        || async {
            let output = system.verify(&[]);
            let stdout = text(&output.stdout);
            (stdout.contains("consumer inventory-orders violates no-dead-letters")
                && stdout.contains("consumer payment-orders violates no-dead-letters"))
            .then_some(output)
        },
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", shown(&refused));
    let allowed = system.verified_allowing_dead_letters().await;
    assert!(
        text(&allowed.stderr).contains("2 dead letters in DLQ, allowed by --allow-dead-letters"),
        "{}",
        shown(&allowed)
    );
}

fn verify_alone(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ORDERFLOW_") {
            command.env_remove(key);
        }
    }
    command
        .arg("verify")
        .args(args)
        .output()
        .expect("run orderflow verify")
}

/// Exit status 2 means nothing was checked; the message says which database and why (a refused
/// PostgreSQL connection used to wait out the pool's 5 s and then say only that the pool timed out).
#[test]
fn a_database_verify_cannot_read_exits_2_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = verify_alone(&["--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2), "{}", shown(&missing));
    assert!(
        text(&missing.stderr).contains("order.db does not exist"),
        "{}",
        shown(&missing)
    );

    let closed = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let refused = verify_alone(&["--database-url", &closed]);
    assert_eq!(refused.status.code(), Some(2), "{}", shown(&refused));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("cannot read order-service's database")
            && stderr.to_lowercase().contains("connection refused"),
        "{}",
        shown(&refused)
    );

    let ignored = verify_alone(&["--order-db", "sqlite://order.db?cache=shared"]);
    assert_eq!(ignored.status.code(), Some(2), "{}", shown(&ignored));
    assert!(
        text(&ignored.stderr).contains("--order-db"),
        "{}",
        shown(&ignored)
    );
}
