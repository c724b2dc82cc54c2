//! Every consumed event is checked against its contract before it is decoded: first the envelope's
//! JSON Schema, then the schema of the payload's declared type and version (`contracts::schema`, the
//! files under `schemas/events/`). A message that breaks either is dead-lettered with each violation's
//! JSON path and rule. The validators are compiled once per process, when a service starts
//! ([`compile`]), never per message.

use crate::telemetry::printable;
use contracts::schema::{envelope_schema, event_schemas};
use contracts::{DecodeError, Envelope};
use jsonschema::Validator;
use serde_json::Value;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::OnceLock;

/// The most violations one error lists; the first ones say what is wrong.
const MAX_VIOLATIONS: usize = 8;
/// How much of one violation an error shows, in bytes (it may quote the offending value).
const VIOLATION_BYTES: usize = 240;

/// This build's own schemas do not compile: a bug in the build, not in any message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the event schemas built into this program do not compile: {0}")]
pub struct SchemaError(String);

/// The event versions a consumer reads (`ORDERFLOW_READ_VERSIONS`): by default every version this build
/// knows. Fewer make it read as an older build would, to rehearse a rolling upgrade: a version it does
/// not read is skipped when the same event also went out in one it reads, and dead-lettered otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadVersions(Option<Vec<String>>);

impl ReadVersions {
    /// Every version this build knows.
    pub fn all() -> Self {
        Self(None)
    }

    fn includes(&self, version: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|versions| versions.iter().any(|read| read == version))
    }
}

impl FromStr for ReadVersions {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let versions: Vec<String> = raw.split(',').map(|part| part.trim().to_owned()).collect();
        match versions
            .iter()
            .find(|version| !matches!(version.as_str(), "v1" | "v2"))
        {
            Some(unknown) => Err(format!(
                "'{unknown}' is not an event version; use v1 or v1,v2"
            )),
            None => Ok(Self(Some(versions))),
        }
    }
}

struct Validators {
    envelope: Validator,
    /// One per type and version read.
    events: HashMap<(&'static str, &'static str), Validator>,
}

static VALIDATORS: OnceLock<Result<Validators, SchemaError>> = OnceLock::new();

/// Compiles the validators for the versions `read` now, so a service fails at start rather than on
/// its first message if this build's schemas were broken. The first call in a process decides.
pub fn compile(read: &ReadVersions) -> Result<(), SchemaError> {
    validators(read).map(|_| ())
}

fn validators(read: &ReadVersions) -> Result<&'static Validators, SchemaError> {
    VALIDATORS
        .get_or_init(|| Validators::compile(read))
        .as_ref()
        .map_err(Clone::clone)
}

/// Checks a message against the envelope's schema and its payload's, then decodes it. Never panics,
/// whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let message: Value = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
    let validators = validators(&ReadVersions::all()).map_err(|error| DecodeError::Schema {
        violations: vec![error.to_string()],
    })?;
    validators.check(&message)?;
    Envelope::from_value(message)
}

/// Whether this process reads `version` of `event_type`.
pub fn reads(event_type: &str, version: &str) -> bool {
    validators(&ReadVersions::all())
        .is_ok_and(|validators| validators.events.contains_key(&(event_type, version)))
}

impl Validators {
    fn compile(read: &ReadVersions) -> Result<Self, SchemaError> {
        let envelope = validator(&envelope_schema(), "the envelope")?;
        let mut events = HashMap::new();
        for event in event_schemas()
            .into_iter()
            .filter(|event| read.includes(event.version))
        {
            let compiled = validator(&event.schema, &event.path())?;
            events.insert((event.event_type, event.version), compiled);
        }
        Ok(Self { envelope, events })
    }

    /// The envelope first: only a valid one names a type and version to look the payload's schema up
    /// by. A known type in a version not read is refused here; an unknown type is left to the
    /// decoder, which says so.
    fn check(&self, message: &Value) -> Result<(), DecodeError> {
        violations(&self.envelope, message, "")?;
        let declared = |field: &str| message.get(field).and_then(Value::as_str).unwrap_or("");
        let (event_type, version) = (declared("type"), declared("version"));
        match self.events.get(&(event_type, version)) {
            Some(payload) => violations(payload, &message["data"], "/data"),
            None if !contracts::events::versions_of(event_type).is_empty() => {
                Err(DecodeError::UnsupportedVersion {
                    event_type: contracts::envelope::shown(event_type),
                    version: contracts::envelope::shown(version),
                })
            }
            None => Ok(()),
        }
    }
}

fn validator(schema: &Value, name: &str) -> Result<Validator, SchemaError> {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|error| SchemaError(format!("{name}: {error}")))
}

/// Each violation as `path: rule`, the path a JSON pointer into the whole message.
fn violations(validator: &Validator, instance: &Value, prefix: &str) -> Result<(), DecodeError> {
    let found: Vec<String> = validator
        .iter_errors(instance)
        .take(MAX_VIOLATIONS)
        .map(|error| {
            let path = format!("{prefix}{}", error.instance_path().as_str());
            let path = if path.is_empty() { "(root)" } else { &path };
            printable(&format!("{path}: {error}"), VIOLATION_BYTES)
        })
        .collect();
    if found.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Schema { violations: found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::events::{OrderCreated, OrderLine};
    use contracts::{
        CorrelationId, CustomerId, Event, OrderId, PaymentMethod, ProductId, Quantity,
    };
    use serde_json::json;
    use time::OffsetDateTime;

    fn order_created() -> Envelope {
        Envelope::first(
            OrderId::new(),
            CorrelationId::new(),
            Event::OrderCreated(OrderCreated {
                customer_id: CustomerId::parse("c-1").unwrap(),
                currency: contracts::Currency::legacy(),
                items: vec![OrderLine {
                    product_id: ProductId::parse("sku-1").unwrap(),
                    quantity: Quantity::new(2).unwrap(),
                }],
                payment_method: PaymentMethod::parse("tok_visa").unwrap(),
                deadline_at: OffsetDateTime::now_utc(),
            }),
        )
    }

    fn wire(envelope: &Envelope) -> Value {
        serde_json::from_slice(&envelope.to_json()).unwrap()
    }

    fn violations_of(message: &Value) -> Vec<String> {
        match decode(&serde_json::to_vec(message).unwrap()) {
            Err(DecodeError::Schema { violations }) => violations,
            other => panic!("expected schema violations, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_event_decodes_as_it_was_written() {
        compile(&ReadVersions::all()).unwrap();
        let event = order_created();
        assert_eq!(decode(&event.to_json()).unwrap(), event);
    }

    #[test]
    fn a_payload_violation_names_its_path_in_the_message_and_the_rule() {
        let mut message = wire(&order_created());
        message["data"]["items"][0]["quantity"] = json!(0);
        assert_eq!(
            violations_of(&message),
            ["/data/items/0/quantity: 0 is less than the minimum of 1"]
        );
        message["data"]["items"][0]["quantity"] = json!(1);
        message["data"]["coupon"] = json!("FREE");
        assert_eq!(
            violations_of(&message),
            ["/data: Additional properties are not allowed ('coupon' was unexpected)"]
        );
    }

    #[test]
    fn an_envelope_violation_is_found_before_the_payload_is_looked_at() {
        let mut message = wire(&order_created());
        message.as_object_mut().unwrap().remove("event_id");
        message["data"] = json!({});
        assert_eq!(
            violations_of(&message),
            [r#"(root): "event_id" is a required property"#]
        );
        let mut message = wire(&order_created());
        message["order_id"] = json!("not-a-uuid");
        assert_eq!(
            violations_of(&message),
            [r#"/order_id: "not-a-uuid" is not a "uuid""#]
        );
    }

    #[test]
    fn an_unknown_type_or_version_is_said_as_such() {
        let mut message = wire(&order_created());
        message["version"] = json!("v9");
        let bytes = serde_json::to_vec(&message).unwrap();
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        message["version"] = json!("v1");
        message["type"] = json!("orders.teleported");
        let bytes = serde_json::to_vec(&message).unwrap();
        assert!(matches!(decode(&bytes), Err(DecodeError::UnknownType(_))));
    }

    #[test]
    fn a_hostile_value_is_quoted_escaped_and_cut() {
        let mut message = wire(&order_created());
        message["data"]["customer_id"] = json!(format!("\n{}", "x".repeat(10_000)));
        let violations = violations_of(&message);
        assert_eq!(violations.len(), 1);
        assert!(
            violations[0].starts_with(r#"/data/customer_id: "\n"#),
            "{violations:?}"
        );
        assert!(
            violations[0].len() <= VIOLATION_BYTES,
            "{}",
            violations[0].len()
        );
        assert!(!violations[0].contains('\n'));
    }

    #[test]
    fn bytes_that_are_not_json_are_malformed() {
        assert!(matches!(
            decode(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
    }
}
