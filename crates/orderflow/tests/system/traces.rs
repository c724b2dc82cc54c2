//! One trace follows a saga: the caller's W3C `traceparent` (or a new one) travels in the
//! `traceparent` header of every event, each hop under a span of its own, and the services' log lines
//! about the saga carry its `trace_id`.

use crate::harness::{Options, System};
use serde_json::{Value, json};
use std::collections::HashSet;
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(one_trace_id_follows_every_event_of_a_saga);

const CALLER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// The `traceparent` of every event of `order_id`, by subject, in stream order.
async fn traceparents(system: &System, order_id: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for stream in ["ORDERS", "INVENTORY", "PAYMENTS"] {
        for (payload, headers) in system.stream_messages(stream).await {
            let envelope: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
            if envelope["order_id"] != order_id {
                continue;
            }
            let traceparent = headers
                .get("traceparent")
                .map(|value| value.as_str().to_owned())
                .unwrap_or_else(|| panic!("{} has no traceparent", envelope["type"]));
            found.push((
                envelope["type"].as_str().unwrap_or("").to_owned(),
                traceparent,
            ));
        }
    }
    found
}

/// `(trace id, span id)` of a version-00 traceparent, checking its shape.
fn ids(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    assert_eq!(fields[1].len(), 32, "{traceparent}");
    assert_eq!(fields[2].len(), 16, "{traceparent}");
    (fields[1].to_owned(), fields[2].to_owned())
}

async fn one_trace_id_follows_every_event_of_a_saga(backend: Backend) {
    // The per-event lines are at debug; the default level writes one line per saga.
    let options = Options {
        service_env: vec![("RUST_LOG".into(), "info,platform::consumer=debug".into())],
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let order = json!({
        "customer_id": "c-1",
        "items": [{"product_id": "sku-1", "quantity": 1}],
        "payment_method": "tok_visa"
    });

    let caller = format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01");
    let (status, _, body) = system
        .post_order(&order, &[("traceparent", caller.as_str())])
        .await;
    assert_eq!(status, 202);
    let id = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    system.wait_stock("sku-1", 9, 0, 1).await;

    let events = traceparents(&system, &id).await;
    let types: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        types,
        [
            "orders.created",
            "orders.confirmed",
            "inventory.reserved",
            "payments.succeeded"
        ]
    );
    let mut spans = HashSet::new();
    for (kind, traceparent) in &events {
        let (trace_id, span_id) = ids(traceparent);
        assert_eq!(trace_id, CALLER_TRACE_ID, "{kind}: {traceparent}");
        assert_ne!(
            span_id, CALLER_SPAN_ID,
            "{kind} is a span of its own, under the caller's"
        );
        spans.insert(span_id);
    }
    assert_eq!(
        spans.len(),
        events.len(),
        "each hop is its own span: {events:?}"
    );

    for service in [&system.order, &system.inventory, &system.payment] {
        let log = service.log();
        assert!(
            log.lines().any(|line| line.contains(&id)
                && line.contains(&format!("\"trace_id\":\"{CALLER_TRACE_ID}\""))),
            "{} never logged trace id {CALLER_TRACE_ID} with order {id}:\n{log}",
            service.name()
        );
    }

    // Without a traceparent (or with a malformed one) the request starts a trace of its own, which
    // every event of its saga shares.
    for header in [None, Some("00-not-a-trace-01")] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("traceparent", h)).into_iter().collect();
        let (status, _, body) = system.post_order(&order, &headers).await;
        assert_eq!(status, 202);
        let id = body["order_id"].as_str().unwrap().to_owned();
        system.wait_final(&id).await;
        assert_ne!(one_trace(&system, &id).await, CALLER_TRACE_ID);
    }
}

/// The one trace id every event of `order_id` carries; panics if they do not share one. For the
/// paths no request starts (the saga deadline, a refund by the charge worker), used by their tests.
pub async fn one_trace(system: &System, order_id: &str) -> String {
    let events = traceparents(system, order_id).await;
    assert!(events.len() >= 2, "{events:?}");
    let traces: HashSet<String> = events.iter().map(|(_, tp)| ids(tp).0).collect();
    assert_eq!(traces.len(), 1, "{events:?}");
    traces.into_iter().next().unwrap_or_default()
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, each service exports the spans of a saga, and their parent
/// links join the three services into one tree under the caller's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_of_a_saga_reach_an_otlp_receiver_linked_across_the_services() {
    let receiver = testkit::OtlpReceiver::start().await;
    let options = Options {
        service_env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                receiver.endpoint().into(),
            ),
            // Export within a tenth of a second instead of the default five.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        ..Options::default()
    };
    // Spans do not depend on the backend.
    let Some(system) = System::start_with(Backend::Sqlite, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let caller = format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01");
    let (status, _, body) = system
        .post_order(
            &json!({
                "customer_id": "c-1",
                "items": [{"product_id": "sku-1", "quantity": 1}],
                "payment_method": "tok_visa"
            }),
            &[("traceparent", caller.as_str())],
        )
        .await;
    assert_eq!(status, 202);
    let id = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(system.wait_final(&id).await["status"], "confirmed");

    // Handled by: inventory-orders, payment-orders (orders.created); payment-inventory and
    // order-inventory (inventory.reserved); order-payments (payments.succeeded); inventory-orders and
    // payment-orders (orders.confirmed).
    let consumer = |span: &testkit::ReceivedSpan| span.attributes.get("consumer").cloned();
    let spans = testkit::wait_until(
        "the saga's spans to be exported",
        crate::harness::SAGA_DEADLINE,
        || async {
            let spans: Vec<testkit::ReceivedSpan> = receiver
                .spans()
                .into_iter()
                .filter(|span| span.trace_id == CALLER_TRACE_ID)
                .collect();
            let events = spans.iter().filter(|span| span.name == "event").count();
            let requests = spans.iter().filter(|span| span.name == "request").count();
            let payments = spans.iter().filter(|span| span.name == "payment").count();
            (events >= 7 && requests >= 1 && payments >= 1).then_some(spans)
        },
    )
    .await;

    let by_id: std::collections::HashMap<&str, &testkit::ReceivedSpan> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let services: HashSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["order-service", "inventory-service", "payment-service"]),
        "{spans:#?}"
    );
    let request = spans
        .iter()
        .find(|span| {
            span.name == "request"
                && span.attributes.get("route").map(String::as_str) == Some("/orders")
        })
        .unwrap_or_else(|| panic!("no POST /orders span: {spans:#?}"));
    assert_eq!(request.service, "order-service");
    assert_eq!(request.parent_span_id.as_deref(), Some(CALLER_SPAN_ID));
    // Every other span hangs under a span of the same saga: no link leads outside the tree.
    for span in &spans {
        if span.span_id == request.span_id {
            continue;
        }
        let parent = span.parent_span_id.as_deref().unwrap_or("(none)");
        assert!(
            by_id.contains_key(parent),
            "{} {:?} of {} has parent {parent}, which no exported span of the saga is: {spans:#?}",
            span.name,
            consumer(span),
            span.service
        );
    }
    // The links cross the services: inventory's handling of orders.created is a child of the
    // request, and order-service's handling of payments.succeeded is a child of the payment step.
    let handling = |name: &str, subject: &str| {
        spans
            .iter()
            .find(|span| {
                consumer(span).as_deref() == Some(name)
                    && span.attributes.get("subject").map(String::as_str) == Some(subject)
            })
            .unwrap_or_else(|| panic!("no span of {name} handling {subject}: {spans:#?}"))
    };
    let reserved_by = handling("inventory-orders", "orders.created");
    assert_eq!(reserved_by.service, "inventory-service");
    assert_eq!(
        reserved_by.parent_span_id.as_deref(),
        Some(request.span_id.as_str())
    );
    let confirmed_by = handling("order-payments", "payments.succeeded");
    let parent = by_id[confirmed_by.parent_span_id.as_deref().unwrap()];
    assert_eq!(
        (parent.service.as_str(), parent.name.as_str()),
        ("payment-service", "payment")
    );
    let paid_after = by_id[parent.parent_span_id.as_deref().unwrap()];
    assert_eq!(paid_after.service, "payment-service");
    assert_eq!(paid_after.name, "event");
}
