//! Transient failures: retried with backoff up to the delivery limit, then dead-lettered with the
//! error and the delivery count; once the cause is fixed, a replay completes the saga.

use crate::dead_letters::{dead_letters, dlq};
use crate::harness::{Options, SAGA_DEADLINE, System};
use serde_json::json;
use testkit::on_both_backends;
use testkit::{Backend, wait_until};

on_both_backends!(a_failure_that_outlasts_its_retries_is_dead_lettered_and_replayed);

async fn a_failure_that_outlasts_its_retries_is_dead_lettered_and_replayed(backend: Backend) {
    let options = Options {
        service_args: vec!["--max-deliver".into(), "3".into()],
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;

    // Break inventory's storage behind its back: every reservation now fails, transiently as far as
    // the service can tell (a database error may pass).
    system
        .execute_sql(
            "inventory",
            "ALTER TABLE reservations RENAME TO reservations_away",
        )
        .await;
    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    let letter = wait_until("the event to be dead-lettered", SAGA_DEADLINE, || async {
        dead_letters(&system, Some("inventory-orders"))
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(letter["deliveries"], 3, "{letter}");
    assert!(
        letter["error"]
            .as_str()
            .unwrap_or_default()
            .contains("reservations"),
        "{letter}"
    );
    assert!(letter["first_failed_at"] != letter["failed_at"], "{letter}");
    assert_eq!(system.order(&id).await["status"], "pending");

    system
        .execute_sql(
            "inventory",
            "ALTER TABLE reservations_away RENAME TO reservations",
        )
        .await;
    dlq(&system, &["replay", &letter["id"].to_string()]);

    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    system.wait_stock("sku-1", 9, 0, 1).await;
    assert!(dead_letters(&system, None).is_empty());
    system.verified().await;
}
