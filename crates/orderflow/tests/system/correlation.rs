//! One correlation id follows a saga: from the request, through every event, into every service's logs.

use crate::harness::{Options, System};
use serde_json::json;
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(correlation_id_follows_the_saga_everywhere);

async fn correlation_id_follows_the_saga_everywhere(backend: Backend) {
    // Each service's per-event lines (debug since issue 8; the default level writes one line per
    // saga) must carry the saga's ids.
    let options = Options {
        service_env: vec![("RUST_LOG".into(), "info,platform::consumer=debug".into())],
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let correlation_id = format!("corr-{}", uuid::Uuid::new_v4());

    let (status, headers, body) = system
        .post_order(
            &json!({
                "customer_id": "c-1",
                "items": [{"product_id": "sku-1", "quantity": 1}],
                "payment_method": "tok_visa"
            }),
            &[("X-Correlation-ID", correlation_id.as_str())],
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(headers["x-correlation-id"], correlation_id.as_str());
    assert_eq!(body["correlation_id"], correlation_id.as_str());
    let id = body["order_id"].as_str().unwrap().to_owned();
    let order = system.wait_final(&id).await;
    assert_eq!(order["correlation_id"], correlation_id.as_str());
    system.wait_stock("sku-1", 9, 0, 1).await;

    let mut seen = 0;
    for stream in ["ORDERS", "INVENTORY", "PAYMENTS"] {
        for (subject, envelope) in system.events_of(stream, &id).await {
            assert_eq!(
                envelope["correlation_id"],
                correlation_id.as_str(),
                "{subject}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 4);

    for service in [&system.order, &system.inventory, &system.payment] {
        let log = service.log();
        assert!(
            log.lines()
                .any(|line| line.contains(&correlation_id) && line.contains(&id)),
            "{} never logged correlation id {correlation_id} with order {id}:\n{log}",
            service.name()
        );
    }
    let (generated_status, generated, _) = system
        .post_order(
            &json!({"customer_id": "c-1", "items": [{"product_id": "sku-1", "quantity": 1}], "payment_method": "tok_visa"}),
            &[],
        )
        .await;
    assert_eq!(generated_status, 202);
    let generated = generated["x-correlation-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
}
