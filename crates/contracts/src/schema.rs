//! The event contracts as JSON Schemas (draft 2020-12), generated from the Rust types, which stay the
//! source of truth, with an example of each. The files under `schemas/events/` are these, written by
//! `orderflow schemas generate` with the documents made from them (`crate::documents`) and checked in;
//! a test fails when they drift from the code.

use crate::envelope::Wire;
use crate::events::{
    INVENTORY_REJECTED, INVENTORY_RESERVED, InventoryRejected, InventoryReserved, ORDER_CANCELLED,
    ORDER_CONFIRMED, ORDER_CREATED, OrderCancelled, OrderConfirmed, OrderCreated, OrderCreatedV1,
    PAYMENT_FAILED, PAYMENT_REFUNDED, PAYMENT_SUCCEEDED, PaymentFailed, PaymentRefunded,
    PaymentSucceeded, V1, V2,
};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// The schema of one version of one event type's payload, and an example of a whole message.
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub event_type: &'static str,
    pub version: &'static str,
    pub schema: Value,
    /// An envelope holding a typical payload; a test holds it to the schemas and the decoder.
    pub example: Value,
}

impl EventSchema {
    /// The schema of `T`, the payload of `event_type` in `version`, with `data` as its example.
    fn of<T: JsonSchema>(event_type: &'static str, version: &'static str, data: Value) -> Self {
        let mut schema = generate::<T>();
        schema["title"] = format!("{event_type} {version}").into();
        Self {
            event_type,
            version,
            schema,
            example: example_envelope(event_type, version, data),
        }
    }

    /// What the payload is, from its type's documentation.
    pub fn description(&self) -> &str {
        self.schema["description"].as_str().unwrap_or_default()
    }

    /// Where the schema lives, relative to the `schemas` directory.
    pub fn path(&self) -> String {
        format!("events/{}/{}.json", self.event_type, self.version)
    }
}

/// Every event type and version this build reads and writes, in the order a saga meets them.
pub fn event_schemas() -> Vec<EventSchema> {
    let charge_id = "ch_3f9a1c7e5b2d4a60";
    vec![
        EventSchema::of::<OrderCreatedV1>(
            ORDER_CREATED,
            V1,
            json!({
                "customer_id": "customer-42",
                "items": [
                    {"product_id": "sku-espresso-beans", "quantity": 2},
                    {"product_id": "sku-milk-frother", "quantity": 1}
                ],
                "payment_method": "tok_visa",
                "deadline_at": "2026-12-01T09:30:30Z"
            }),
        ),
        EventSchema::of::<OrderCreated>(
            ORDER_CREATED,
            V2,
            json!({
                "customer_id": "customer-42",
                "currency": "EUR",
                "items": [
                    {"product_id": "sku-espresso-beans", "quantity": 2},
                    {"product_id": "sku-milk-frother", "quantity": 1}
                ],
                "payment_method": "tok_visa",
                "deadline_at": "2026-12-01T09:30:30Z"
            }),
        ),
        EventSchema::of::<InventoryReserved>(
            INVENTORY_RESERVED,
            V1,
            json!({
                "lines": [
                    {"product_id": "sku-espresso-beans", "quantity": 2, "unit_price_cents": 1450},
                    {"product_id": "sku-milk-frother", "quantity": 1, "unit_price_cents": 3900}
                ],
                "total_cents": 6800
            }),
        ),
        EventSchema::of::<InventoryRejected>(
            INVENTORY_REJECTED,
            V1,
            json!({
                "reason": "insufficient_stock",
                "lines": [{"product_id": "sku-milk-frother", "requested": 1, "available": 0}]
            }),
        ),
        EventSchema::of::<PaymentSucceeded>(
            PAYMENT_SUCCEEDED,
            V1,
            json!({"amount_cents": 6800, "charge_id": charge_id}),
        ),
        EventSchema::of::<PaymentFailed>(PAYMENT_FAILED, V1, json!({"reason": "payment_declined"})),
        EventSchema::of::<PaymentRefunded>(
            PAYMENT_REFUNDED,
            V1,
            json!({"amount_cents": 6800, "charge_id": charge_id}),
        ),
        EventSchema::of::<OrderConfirmed>(ORDER_CONFIRMED, V1, json!({"total_cents": 6800})),
        EventSchema::of::<OrderCancelled>(
            ORDER_CANCELLED,
            V1,
            json!({"reason": "payment_declined"}),
        ),
    ]
}

/// `data` in an envelope with fixed ids and times, so that the generated documents do not change from
/// one run to the next. The first event of the saga has no cause; the others are caused by it.
fn example_envelope(event_type: &str, version: &str, data: Value) -> Value {
    let first = event_type == ORDER_CREATED;
    let created = "0193a1b2-7c00-7d4e-9a51-3c2f8e6b1a01";
    json!({
        "event_id": if first { created } else { "0193a1b2-7c05-7f10-8b22-4d3e9f7c2b02" },
        "type": event_type,
        "version": version,
        "occurred_at": if first { "2026-12-01T09:30:00Z" } else { "2026-12-01T09:30:00.004Z" },
        "order_id": "0193a1b2-7bff-7a3c-8e11-2b1f7d5a0c99",
        "correlation_id": "checkout-7f3a9c",
        "causation_id": if first { Value::Null } else { created.into() },
        "data": data
    })
}

/// Where the envelope's schema lives, relative to the `schemas` directory.
pub const ENVELOPE_PATH: &str = "events/envelope.json";

/// The schema of the envelope every event travels in; its `data` is checked against the event's own.
pub fn envelope_schema() -> Value {
    generate::<Wire>()
}

fn generate<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// How many `$ref`s in a row [`resolve`] follows; ours point straight at a definition.
const MAX_REFERENCES: usize = 32;

/// `schema` with its `$ref` (into `root`'s `$defs`) followed; the schema itself when it has none or
/// the reference leads nowhere.
pub(crate) fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut current = schema;
    for _ in 0..MAX_REFERENCES {
        let Some(name) = current
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|reference| reference.strip_prefix("#/$defs/"))
        else {
            break;
        };
        match root.get("$defs").and_then(|defs| defs.get(name)) {
            Some(target) => current = target,
            None => break,
        }
    }
    current
}

/// An RFC 3339 timestamp, as `time::serde::rfc3339` writes and reads it.
pub(crate) fn timestamp(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time"
    })
}
