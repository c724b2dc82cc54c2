//! The JSON Schemas generated from the event types: the checked-in files are the generated ones, and each
//! value type's schema accepts exactly what its parser accepts.

use contracts::schema::{envelope_schema, event_schemas, files};
use contracts::{CorrelationId, CustomerId, Money, OrderId, PaymentMethod, ProductId, Quantity};
use proptest::prelude::*;
use schemars::JsonSchema;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The repository's `schemas/` directory.
fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// Every `.json` file under `dir`, as a path relative to `root`.
fn json_files(dir: &Path, root: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, root, found);
        } else if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            let relative = path.strip_prefix(root).unwrap();
            found.insert(relative.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn the_checked_in_schemas_are_the_ones_the_code_generates() {
    let dir = schemas_dir();
    let fix =
        "run `cargo run -p orderflow -- schemas generate` and commit schemas/ with the change";
    let generated = files();
    for (path, text) in &generated {
        let on_disk = std::fs::read_to_string(dir.join(path))
            .unwrap_or_else(|_| panic!("schemas/{path} is missing: {fix}"));
        // Compared as JSON, so that only a change of the contract counts, not one of formatting.
        let on_disk: Value = serde_json::from_str(&on_disk)
            .unwrap_or_else(|error| panic!("schemas/{path} is not JSON ({error}): {fix}"));
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            on_disk, expected,
            "schemas/{path} differs from the code: {fix}"
        );
    }
    let mut present = BTreeSet::new();
    json_files(&dir.join("events"), &dir, &mut present);
    let expected: BTreeSet<String> = generated.into_iter().map(|(path, _)| path).collect();
    let extra: Vec<&String> = present.difference(&expected).collect();
    assert!(
        extra.is_empty(),
        "schemas/ holds files the code does not generate, {extra:?}: {fix}"
    );
}

#[test]
fn every_schema_compiles_and_names_its_type_and_version() {
    jsonschema::draft202012::new(&envelope_schema()).unwrap();
    let events = event_schemas();
    assert_eq!(events.len(), 8, "one schema per event type, all in v1");
    for event in events {
        jsonschema::draft202012::new(&event.schema).unwrap();
        let title = format!("{} {}", event.event_type, event.version);
        assert_eq!(event.schema["title"], json!(title));
        assert_eq!(
            event.schema["additionalProperties"],
            json!(false),
            "{title}"
        );
    }
}

/// Whether `value` is valid against `T`'s schema, formats included (as the consumers check).
fn accepts<T: JsonSchema>(value: &Value) -> bool {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema.as_value())
        .unwrap()
        .is_valid(value)
}

/// Text near the rules' edges: each alphabet the parsers care about, control characters, non-ASCII
/// letters, and lengths around the limits.
fn edgy_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._:-]{0,70}",
        "[!-~]{0,130}",
        "[ -~\u{0}-\u{1f}\u{7f}-\u{9f}é€😀]{0,70}",
        "\\PC{0,70}",
    ]
}

proptest! {
    #[test]
    fn each_text_value_schema_accepts_what_its_parser_accepts(raw in edgy_text()) {
        let value = json!(raw);
        prop_assert_eq!(accepts::<ProductId>(&value), ProductId::parse(&raw).is_ok());
        prop_assert_eq!(accepts::<CustomerId>(&value), CustomerId::parse(&raw).is_ok());
        prop_assert_eq!(accepts::<CorrelationId>(&value), CorrelationId::parse(&raw).is_ok());
        prop_assert_eq!(accepts::<PaymentMethod>(&value), PaymentMethod::parse(&raw).is_ok());
        prop_assert_eq!(accepts::<OrderId>(&value), OrderId::parse(&raw).is_ok());
    }

    #[test]
    fn each_number_schema_accepts_what_its_parser_accepts(n in prop_oneof![-3i64..1_004, any::<i64>()]) {
        let value = json!(n);
        prop_assert_eq!(accepts::<Quantity>(&value), Quantity::new(n).is_ok());
        prop_assert_eq!(accepts::<Money>(&value), Money::from_cents(n).is_ok());
    }
}

#[test]
fn an_order_id_is_a_uuid_in_both() {
    assert!(accepts::<OrderId>(&json!(OrderId::new().to_string())));
    assert!(!accepts::<OrderId>(&json!("not-a-uuid")));
    assert!(OrderId::parse("not-a-uuid").is_err());
}
