//! No card token, password or admin token reaches a log: the services' lines of full sagas
//! (confirmed, declined, out of stock) and of admin requests, at debug level for orderflow's own
//! code, never contain one.

use crate::harness::{Options, System};
use serde_json::json;
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(no_card_token_reaches_a_log);

/// Every card token starts so (`tok_visa`, `tok_chargeDeclined`, ...).
const CARD_TOKEN_PREFIX: &str = "tok_";
/// In the services' PostgreSQL URLs.
const DATABASE_PASSWORD: &str = "s3cret-db-pw";

async fn no_card_token_reaches_a_log(backend: Backend) {
    let debug = "info,platform=debug,order_service=debug,inventory_service=debug,\
                 payment_service=debug,gateway_sim=debug";
    let options = Options {
        service_env: vec![("RUST_LOG".into(), debug.into())],
        database_password: Some(DATABASE_PASSWORD),
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    // Admin requests to a service and to the gateway simulator, so that both hold the token in use.
    system.put_product("sku-1", 1299, 2).await;
    system.set_gateway_faults(&json!({"mode": "ok"})).await;
    let confirmed = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    let declined = system
        .place(
            json!([{"product_id": "sku-1", "quantity": 1}]),
            "tok_chargeDeclined",
        )
        .await;
    let out_of_stock = system
        .place(
            json!([{"product_id": "sku-1", "quantity": 5}]),
            "tok_mastercard",
        )
        .await;
    assert_eq!(system.wait_final(&confirmed).await["status"], "confirmed");
    assert_eq!(
        system.wait_final(&declined).await["cancel_reason"],
        "payment_declined"
    );
    assert_eq!(
        system.wait_final(&out_of_stock).await["cancel_reason"],
        "insufficient_stock"
    );
    system.verified().await;

    let logs = system.logs();
    assert!(
        logs.contains(&confirmed) && logs.contains("event applied"),
        "the logs hold the sagas at debug level:\n{logs}"
    );
    if backend == Backend::Postgres {
        assert!(
            logs.contains("postgres://postgres:***@"),
            "the services were given the password and say so, masked:\n{logs}"
        );
    }
    // Each secret the processes hold, and the lines that give one away. The password is checked on
    // both backends: on SQLite nobody is given one, so finding it would mean a mix-up elsewhere.
    let secrets = [
        ("card tokens", CARD_TOKEN_PREFIX),
        ("the database password", DATABASE_PASSWORD),
        ("the admin token", system.admin_token.as_str()),
    ];
    for (secret, needle) in secrets {
        let leaks: Vec<&str> = logs.lines().filter(|line| line.contains(needle)).collect();
        assert!(
            leaks.is_empty(),
            "{secret} in the logs:\n{}",
            leaks.join("\n")
        );
    }
}
