//! `orderflow verify`, run as the real binary as an operator would: a quiet system after each way a
//! saga ends passes, and a unit of stock invented behind the services' backs is named.

use crate::harness::{System, shown, text};
use serde_json::{Value, json};
use testkit::Backend;
use testkit::on_both_backends;

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
