//! The JSON Schemas generated from the event types: the checked-in files are the generated ones, and each
//! value type's schema accepts exactly what its parser accepts.

use contracts::Envelope;
use contracts::documents::{asyncapi, files};
use contracts::schema::{envelope_schema, event_schemas};
use contracts::{CorrelationId, CustomerId, Money, OrderId, PaymentMethod, ProductId, Quantity};
use proptest::prelude::*;
use schemars::JsonSchema;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The repository's root.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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

/// A generated file's content as what it means: JSON and YAML parsed (so only a change of the
/// contract counts, not one of formatting), anything else as text.
fn meaning(path: &str, text: &str) -> Result<Value, String> {
    if path.ends_with(".json") {
        serde_json::from_str(text).map_err(|error| error.to_string())
    } else if path.ends_with(".yaml") {
        serde_saphyr::from_str(text).map_err(|error| error.to_string())
    } else {
        Ok(Value::String(text.to_owned()))
    }
}

#[test]
fn the_checked_in_schemas_and_documents_are_the_ones_the_code_generates() {
    let root = repository();
    let fix =
        "run `cargo run -p orderflow -- schemas generate` and commit what it wrote with the change";
    let generated = files();
    for (path, text) in &generated {
        let on_disk = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|_| panic!("{path} is missing: {fix}"));
        let on_disk = meaning(path, &on_disk)
            .unwrap_or_else(|error| panic!("{path} cannot be read ({error}): {fix}"));
        assert_eq!(
            on_disk,
            meaning(path, text).unwrap(),
            "{path} differs from the code: {fix}"
        );
    }
    let mut present = BTreeSet::new();
    json_files(&root.join("schemas/events"), &root, &mut present);
    let expected: BTreeSet<String> = generated.into_iter().map(|(path, _)| path).collect();
    let extra: Vec<&String> = present.difference(&expected).collect();
    assert!(
        extra.is_empty(),
        "schemas/events holds files the code does not generate, {extra:?}: {fix}"
    );
}

#[test]
fn every_example_is_valid_against_the_schemas_and_decodes() {
    let envelope = jsonschema::draft202012::new(&envelope_schema()).unwrap();
    for event in event_schemas() {
        let payload = jsonschema::draft202012::new(&event.schema).unwrap();
        assert!(envelope.is_valid(&event.example), "{}", event.path());
        assert!(payload.is_valid(&event.example["data"]), "{}", event.path());
        let decoded = Envelope::from_value(event.example.clone()).unwrap();
        assert_eq!(decoded.event.event_type(), event.event_type);
        assert_eq!(decoded.event.version(), event.version);
    }
}

#[test]
fn the_asyncapi_document_lists_every_subject_with_its_producer_and_consumers() {
    let events = event_schemas();
    let document = asyncapi(&events);
    assert_eq!(document["asyncapi"], json!("3.0.0"));
    let operations = document["operations"].as_object().unwrap();
    for event in &events {
        let subject = event.event_type;
        assert_eq!(document["channels"][subject]["address"], json!(subject));
        let senders: Vec<&String> = operations
            .iter()
            .filter(|(_, operation)| operation["action"] == "send")
            .filter(|(_, operation)| {
                operation["channel"]["$ref"] == json!(format!("#/channels/{subject}"))
            })
            .map(|(name, _)| name)
            .collect();
        assert_eq!(senders.len(), 1, "{subject}: one producer, got {senders:?}");
        let message = &document["components"]["messages"][format!("{subject}.{}", event.version)];
        assert_eq!(message["examples"][0]["payload"], event.example);
    }
    assert!(operations.contains_key("order-service.send.orders.created"));
    assert!(operations.contains_key("inventory-orders.receive.orders.created"));
    assert!(operations.contains_key("payment-orders.receive.orders.created"));
    assert!(operations.contains_key("order-inventory.receive.inventory.rejected"));
    assert!(!operations.contains_key("payment-inventory.receive.inventory.rejected"));
}

#[test]
fn every_schema_compiles_and_names_its_type_and_version() {
    jsonschema::draft202012::new(&envelope_schema()).unwrap();
    let events = event_schemas();
    assert_eq!(
        events.len(),
        9,
        "one schema per event type and version: v1 of each, v2 of orders.created"
    );
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
