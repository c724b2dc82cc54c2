//! The event contracts as JSON Schemas (draft 2020-12), generated from the Rust types, which stay the
//! source of truth. The files under `schemas/events/` are these, written by `orderflow schemas
//! generate` and checked in; a test fails when they drift from the code.

use crate::envelope::Wire;
use crate::events::{
    INVENTORY_REJECTED, INVENTORY_RESERVED, InventoryRejected, InventoryReserved, ORDER_CANCELLED,
    ORDER_CONFIRMED, ORDER_CREATED, OrderCancelled, OrderConfirmed, OrderCreated, PAYMENT_FAILED,
    PAYMENT_REFUNDED, PAYMENT_SUCCEEDED, PaymentFailed, PaymentRefunded, PaymentSucceeded, V1,
};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

/// The schema of one version of one event type's payload.
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub event_type: &'static str,
    pub version: &'static str,
    pub schema: Value,
}

impl EventSchema {
    fn of<T: JsonSchema>(event_type: &'static str, version: &'static str) -> Self {
        let mut schema = generate::<T>();
        schema["title"] = format!("{event_type} {version}").into();
        Self {
            event_type,
            version,
            schema,
        }
    }

    /// Where the schema lives, relative to the `schemas` directory.
    pub fn path(&self) -> String {
        format!("events/{}/{}.json", self.event_type, self.version)
    }
}

/// Every event type and version this build reads and writes.
pub fn event_schemas() -> Vec<EventSchema> {
    vec![
        EventSchema::of::<OrderCreated>(ORDER_CREATED, V1),
        EventSchema::of::<OrderConfirmed>(ORDER_CONFIRMED, V1),
        EventSchema::of::<OrderCancelled>(ORDER_CANCELLED, V1),
        EventSchema::of::<InventoryReserved>(INVENTORY_RESERVED, V1),
        EventSchema::of::<InventoryRejected>(INVENTORY_REJECTED, V1),
        EventSchema::of::<PaymentSucceeded>(PAYMENT_SUCCEEDED, V1),
        EventSchema::of::<PaymentFailed>(PAYMENT_FAILED, V1),
        EventSchema::of::<PaymentRefunded>(PAYMENT_REFUNDED, V1),
    ]
}

/// Where the envelope's schema lives, relative to the `schemas` directory.
pub const ENVELOPE_PATH: &str = "events/envelope.json";

/// The schema of the envelope every event travels in; its `data` is checked against the event's own.
pub fn envelope_schema() -> Value {
    generate::<Wire>()
}

/// Every schema file as `(path relative to the schemas directory, content)`, in a stable order and
/// form (two-space indents, a final newline), so the checked-in files compare byte for byte.
pub fn files() -> Vec<(String, String)> {
    let mut files = vec![(ENVELOPE_PATH.to_owned(), pretty(&envelope_schema()))];
    files.extend(
        event_schemas()
            .into_iter()
            .map(|event| (event.path(), pretty(&event.schema))),
    );
    files
}

fn pretty(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

fn generate<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// An RFC 3339 timestamp, as `time::serde::rfc3339` writes and reads it.
pub(crate) fn timestamp(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time"
    })
}
