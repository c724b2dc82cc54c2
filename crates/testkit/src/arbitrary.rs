//! Property-test inputs shared by every parser's tests: arbitrary JSON documents, shaped often enough
//! like the real bodies (the field names they expect, values of every kind) that the parsers' deeper
//! paths are reached, not only their first type check.

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Field names the orderflow bodies use, mixed with arbitrary ones.
const NAMES: &[&str] = &[
    "customer_id",
    "items",
    "product_id",
    "quantity",
    "payment_method",
    "name",
    "price_cents",
    "stock",
    "amount_cents",
    "order_id",
    "charge",
    "mode",
    "latency_ms",
    "error_rate",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1_000i64..2_000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,70}".prop_map(Value::String),
        "[a-z_]{1,12}".prop_map(Value::String),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(NAMES).prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

/// Any JSON document up to a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((name(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}
