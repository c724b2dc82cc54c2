//! Dead letters: a message no consumer can handle is set aside without holding up what follows, and
//! `orderflow dlq` (run as the real binary, as an operator would) lists, shows, replays and purges it.

use crate::harness::{SAGA_DEADLINE, System, text};
use serde_json::{Value, json};
use std::process::{Command, Output, Stdio};
use testkit::on_both_backends;
use testkit::{Backend, free_port, wait_until};

on_both_backends!(
    a_poison_message_is_set_aside_and_handled_with_orderflow_dlq,
    a_replayed_event_is_delivered_again_and_applied_once,
);

/// Valid JSON, but not an event envelope: every consumer fails to decode it, on every delivery.
const POISON: &[u8] = br#"{"not": "an event"}"#;

/// Runs `orderflow dlq ARGS --nats-url URL` with no terminal on stdin, as a script would.
pub(crate) fn dlq_at(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .arg("dlq")
        .args(args)
        .args(["--nats-url", url])
        .stdin(Stdio::null())
        .output()
        .expect("run orderflow dlq")
}

/// Runs `orderflow dlq ARGS` against the system, asserts it succeeded, and returns its stdout.
pub(crate) fn dlq(system: &System, args: &[&str]) -> String {
    let output = dlq_at(&system.nats.url(), args);
    assert!(
        output.status.success(),
        "orderflow dlq {args:?} failed ({}):\n{}{}",
        output.status,
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

/// `orderflow dlq list --json`, parsed.
pub(crate) fn dead_letters(system: &System, consumer: Option<&str>) -> Vec<Value> {
    let mut args = vec!["list", "--json"];
    args.extend(consumer.iter().flat_map(|c| ["--consumer", c]));
    let stdout = dlq(system, &args);
    match serde_json::from_str(&stdout) {
        Ok(Value::Array(letters)) => letters,
        _ => panic!("`orderflow dlq list --json` did not print a JSON array:\n{stdout}"),
    }
}

fn of_consumer<'a>(letters: &'a [Value], consumer: &str) -> Vec<&'a Value> {
    letters
        .iter()
        .filter(|letter| letter["consumer"] == consumer)
        .collect()
}

async fn a_poison_message_is_set_aside_and_handled_with_orderflow_dlq(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    assert_eq!(
        dlq(&system, &["list"]).trim(),
        "No dead letters: every message was handled."
    );

    let js = system.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "poison-1");
    js.publish_with_headers("orders.created", headers, POISON.into())
        .await
        .expect("publish the poison message")
        .await
        .expect("JetStream stores the poison message");

    // Both consumers of ORDERS set it aside on its first delivery: redelivering bytes that cannot be
    // decoded would never help.
    let letters = wait_until(
        "the poison message dead-lettered by inventory-orders and payment-orders",
        SAGA_DEADLINE,
        || async {
            let letters = dead_letters(&system, None);
            (of_consumer(&letters, "inventory-orders").len() == 1
                && of_consumer(&letters, "payment-orders").len() == 1)
                .then_some(letters)
        },
    )
    .await;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter["subject"], "orders.created", "{letter:#}");
        assert_eq!(letter["deliveries"], 1, "{letter:#}");
        let error = letter["error"].as_str().unwrap_or_default();
        assert!(error.contains("decode"), "{letter:#}");
        assert_eq!(letter["event_id"], Value::Null, "{letter:#}");
        assert_eq!(letter["payload"], json!({"not": "an event"}), "{letter:#}");
        assert_eq!(letter["payload_format"], "json", "{letter:#}");
    }

    // The message after the poison one goes through as usual.
    let order = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&order).await["status"], "confirmed");

    let poisoned = of_consumer(&letters, "inventory-orders")[0].clone();
    let id = poisoned["id"].as_u64().expect("numeric id").to_string();
    let table = dlq(&system, &["list", "--consumer", "inventory-orders"]);
    let row = table
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no row for dead letter {id}:\n{table}"));
    assert!(
        row.contains("inventory-orders")
            && row.contains("orders.created")
            && row.contains("decode"),
        "{table}"
    );
    assert!(!table.contains("payment-orders"), "{table}");

    let shown = dlq(&system, &["show", &id]);
    assert!(
        shown.contains("Orderflow-Dlq-Subject: orders.created"),
        "{shown}"
    );
    assert!(shown.contains("\"not\": \"an event\""), "{shown}");
    let shown: Value = serde_json::from_str(&dlq(&system, &["show", &id, "--json"])).expect("JSON");
    assert_eq!(shown, poisoned);

    // Replayed, it goes back to orders.created, reaches both consumers, and is set aside again (it
    // still cannot be decoded): inventory-orders has one dead letter again, a new one; payment-orders,
    // whose letter was not replayed, now has two.
    let replayed: Value =
        serde_json::from_str(&dlq(&system, &["replay", &id, "--json"])).expect("JSON");
    assert_eq!(replayed[0]["ids"], json!([poisoned["id"]]), "{replayed:#}");
    assert_eq!(replayed[0]["subject"], "orders.created", "{replayed:#}");
    assert_eq!(replayed[0]["stream"], "ORDERS", "{replayed:#}");
    assert_eq!(replayed[0]["duplicate"], false, "{replayed:#}");
    let letters = wait_until(
        "the replayed poison message dead-lettered again by both consumers",
        SAGA_DEADLINE,
        || async {
            let letters = dead_letters(&system, None);
            let inventory = of_consumer(&letters, "inventory-orders");
            let replaced = inventory.len() == 1 && inventory[0]["id"] != poisoned["id"];
            (replaced && of_consumer(&letters, "payment-orders").len() == 2).then_some(letters)
        },
    )
    .await;
    let again = of_consumer(&letters, "inventory-orders");
    assert_eq!(again.len(), 1, "{letters:#?}");
    assert_ne!(again[0]["id"], poisoned["id"], "{letters:#?}");
    assert_eq!(again[0]["payload"], poisoned["payload"]);
    assert_eq!(dead_letters(&system, Some("inventory-orders")).len(), 1);

    let gone = dlq_at(&system.nats.url(), &["show", &id]);
    assert!(!gone.status.success());
    assert!(
        text(&gone.stderr).contains(&format!("no dead letter with ID {id}")),
        "{}",
        text(&gone.stderr)
    );

    // Without a terminal to ask on, purge wants --yes, and deletes nothing without it.
    let refused = dlq_at(&system.nats.url(), &["purge", "--all"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("pass --yes"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(dead_letters(&system, None).len(), 3);

    let purged = dlq(&system, &["purge", "--all", "--yes"]);
    assert_eq!(purged.trim(), "Deleted 3 dead letters.");
    assert!(dead_letters(&system, None).is_empty());
    assert_eq!(
        dlq(&system, &["replay", "--all"]).trim(),
        "No dead letters to replay."
    );
    // The order placed in between was untouched by all of this.
    assert_eq!(system.order(&order).await["status"], "confirmed");
}

/// A dead letter of a real event, replayed seconds after the event was first published: JetStream's
/// duplicate window must not swallow it, and the consumers' inboxes must keep it from acting twice.
async fn a_replayed_event_is_delivered_again_and_applied_once(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let order = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&order).await["status"], "confirmed");
    system.wait_stock("sku-1", 9, 0, 1).await;
    for consumer in ["inventory-orders", "payment-orders"] {
        system.wait_consumer_idle("ORDERS", consumer).await;
    }

    // Dead-letter the order's orders.created by hand, the way the consumer runtime does: the original
    // payload and headers plus the Orderflow-Dlq-* ones, under a message id of its own.
    let js = system.jetstream().await;
    let orders = js.get_stream("ORDERS").await.expect("ORDERS stream");
    let created = orders
        .get_last_raw_message_by_subject("orders.created")
        .await
        .expect("the orders.created event");
    let envelope: Value = serde_json::from_slice(&created.payload).expect("an envelope");
    assert_eq!(envelope["order_id"], order.as_str());
    let event_id = envelope["event_id"].as_str().expect("event_id").to_owned();
    let mut headers = created.headers.clone();
    for (name, value) in [
        ("Orderflow-Dlq-Subject", "orders.created"),
        ("Orderflow-Dlq-Consumer", "payment-orders"),
        (
            "Orderflow-Dlq-Error",
            "permanent failure: made up by the test",
        ),
        ("Orderflow-Dlq-Deliveries", "5"),
        ("Orderflow-Dlq-Failed-At", "2026-01-01T10:00:00Z"),
        ("Nats-Msg-Id", "dlq-payment-orders-test"),
    ] {
        headers.insert(name, value);
    }
    js.publish_with_headers("dlq.payment-orders", headers, created.payload.clone())
        .await
        .expect("publish the dead letter")
        .await
        .expect("JetStream stores the dead letter");

    let letters = dead_letters(&system, Some("payment-orders"));
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["event_id"], event_id.as_str());
    assert_eq!(letters[0]["order_id"], order.as_str());
    assert_eq!(letters[0]["deliveries"], 5);
    let id = letters[0]["id"].as_u64().expect("numeric id");

    let replayed: Value =
        serde_json::from_str(&dlq(&system, &["replay", "--all", "--json"])).expect("JSON");
    let replayed = &replayed[0];
    assert_eq!(replayed["ids"], json!([id]), "{replayed:#}");
    assert_eq!(replayed["event_id"], event_id.as_str(), "{replayed:#}");
    assert_eq!(
        replayed["message_id"],
        format!("{event_id}-replay-{id}"),
        "{replayed:#}"
    );
    assert_eq!(replayed["duplicate"], false, "{replayed:#}");
    assert!(dead_letters(&system, None).is_empty());

    // The same bytes and headers are back on orders.created, minus the dead-letter bookkeeping.
    let sequence = replayed["stream_sequence"].as_u64().expect("sequence");
    let again = orders.get_raw_message(sequence).await.expect("the replay");
    assert_eq!(again.subject.as_str(), "orders.created");
    assert_eq!(again.payload, created.payload);
    let header = |name: &str| again.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Nats-Msg-Id"),
        Some(format!("{event_id}-replay-{id}"))
    );
    assert_eq!(
        header("Orderflow-Correlation-Id"),
        created
            .headers
            .get("Orderflow-Correlation-Id")
            .map(|v| v.as_str().to_owned())
    );
    assert!(
        again
            .headers
            .iter()
            .all(|(name, _)| !name.to_string().starts_with("Orderflow-Dlq-")),
        "{:?}",
        again.headers
    );

    // Both consumers get it and recognise it: nothing is reserved or charged a second time.
    for consumer in ["inventory-orders", "payment-orders"] {
        system.wait_consumer_idle("ORDERS", consumer).await;
    }
    system.wait_stock("sku-1", 9, 0, 1).await;
    assert_eq!(system.charges_for(&order).await.len(), 1);
    assert_eq!(system.order(&order).await["status"], "confirmed");
    let subjects: Vec<String> = system
        .events_of("INVENTORY", &order)
        .await
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    assert_eq!(subjects, ["inventory.reserved"]);
    assert!(dead_letters(&system, None).is_empty());
}

#[test]
fn an_unreachable_nats_is_named_with_what_to_do() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let output = dlq_at(&url, &["list"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach NATS at {url}")) && stderr.contains("--nats-url"),
        "{stderr}"
    );
}
