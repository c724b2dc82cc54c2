//! The envelope every event travels in: who it is about (`order_id`), which saga it belongs to
//! (`correlation_id`), what caused it (`causation_id`), and a unique `event_id` that is also the
//! `Nats-Msg-Id` (broker de-duplication) and the inbox key (consumer de-duplication).

use crate::events::Event;
use crate::priority::Priority;
use crate::trace::TraceContext;
use crate::values::value_schema;
use crate::values::{CorrelationId, OrderId};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

/// Identifier of one event: a UUIDv7, so ids sort by the time they were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Uuid::parse_str(raw).ok().map(Self)
    }
}

value_schema!(EventId, {
    "description": "Identifier of one event: a UUID (v7). Also the Nats-Msg-Id and the consumers' inbox key.",
    "type": "string",
    "format": "uuid"
});

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why bytes received from the broker are not an event this build can handle. All of these are
/// permanent: redelivering the same bytes gives the same answer. Text taken from the message is shown
/// escaped and shortened (see [`shown`]), so an error never carries control characters or megabytes
/// into a log line or a header.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the message is not a JSON event envelope")]
    Malformed(#[source] serde_json::Error),
    #[error("unknown event type '{0}'")]
    UnknownType(String),
    #[error("event type '{event_type}' has no version '{version}' in this build")]
    UnsupportedVersion { event_type: String, version: String },
    #[error("the payload of '{event_type}' is invalid")]
    InvalidData {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the payload of '{event_type}' breaks a rule: {reason}")]
    Invariant { event_type: String, reason: String },
    /// The event breaks its JSON Schema (the envelope's, or its type and version's); each violation
    /// names the JSON path and the rule, like `/data/items/0/quantity: 0 is less than the minimum of 1`.
    #[error("the event breaks its schema: {}", violations.join("; "))]
    Schema { violations: Vec<String> },
}

/// Text from a message as an error may show it: control and non-ASCII characters escaped, and cut to
/// [`SHOWN_CHARS`] characters.
pub fn shown(raw: &str) -> String {
    let escaped: String = raw.chars().flat_map(char::escape_default).collect();
    match escaped.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}...", &escaped[..cut]),
        None => escaped,
    }
}

/// Header carrying the saga's correlation id, so operators can follow a saga with plain NATS tools.
pub const CORRELATION_HEADER: &str = "Orderflow-Correlation-Id";
/// Header of a dual-published event's copies: every version it went out in (`v1,v2`).
pub const PUBLISHED_AS_HEADER: &str = "Orderflow-Published-As";

/// How much of a value from a message an error shows.
pub const SHOWN_CHARS: usize = 64;

/// Everything in the envelope except the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub event_id: EventId,
    pub occurred_at: OffsetDateTime,
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub causation_id: Option<EventId>,
    /// The span that made this event (or, on an event received, the span handling it), whose
    /// `traceparent` the events it causes carry. It travels in a message header, not in the payload:
    /// tracing is not part of the event's contract.
    pub trace: Option<TraceContext>,
    /// The lane the saga travels in, which its subjects say (see [`Priority`]); not in the payload
    /// either.
    pub priority: Priority,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub meta: EventMeta,
    pub event: Event,
}

/// The wire form: the metadata, `type` and `version` beside each other, the payload under `data`
/// (CloudEvents attribute names). Every field is checked on the way in: ids must be UUIDs, the
/// correlation id must pass the same rules as at the HTTP edge, and a field this build does not know
/// is refused rather than ignored, because a producer that sends one expects it to mean something.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "envelope",
    description = "What every event travels in. `data` holds the payload, whose schema is the one of its `type` and `version` (events/<type>/<version>.json)."
)]
pub(crate) struct Wire {
    event_id: EventId,
    /// The event type: also the NATS subject it is published on, with `express` after its first
    /// token in the express lane (`orders.express.created`).
    #[serde(rename = "type")]
    #[schemars(regex(pattern = r"^[a-z]+\.[a-z_]+$"))]
    event_type: String,
    /// The version of the payload's schema.
    #[schemars(regex(pattern = r"^v[1-9][0-9]*$"))]
    version: String,
    /// When the producer made the event.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    occurred_at: OffsetDateTime,
    /// The order the saga is about.
    order_id: OrderId,
    correlation_id: CorrelationId,
    /// The event that caused this one; absent or null for the first event of a saga.
    causation_id: Option<EventId>,
    #[schemars(schema_with = "payload")]
    data: serde_json::Value,
}

fn payload(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The payload.",
        "type": "object"
    })
}

impl Envelope {
    /// The first event of a saga, caused by a request rather than another event.
    pub fn first(order_id: OrderId, correlation_id: CorrelationId, event: Event) -> Self {
        Self {
            meta: EventMeta {
                event_id: EventId::new(),
                occurred_at: OffsetDateTime::now_utc(),
                order_id,
                correlation_id,
                causation_id: None,
                trace: None,
                priority: Priority::Normal,
            },
            event,
        }
    }

    /// The same event, in the lane of `priority`.
    pub fn prioritized(mut self, priority: Priority) -> Self {
        self.meta.priority = priority;
        self
    }

    /// The subject the event is published on: its type, in its lane.
    pub fn subject(&self) -> std::borrow::Cow<'_, str> {
        self.meta.priority.subject(self.event.event_type())
    }

    /// The same event, made by the span `trace`.
    pub fn traced(mut self, trace: Option<TraceContext>) -> Self {
        self.meta.trace = trace;
        self
    }

    /// An event caused by `cause`: same order, same saga, same trace, same lane.
    pub fn caused_by(cause: &EventMeta, event: Event) -> Self {
        Self {
            meta: EventMeta {
                event_id: EventId::new(),
                occurred_at: OffsetDateTime::now_utc(),
                order_id: cause.order_id,
                correlation_id: cause.correlation_id.clone(),
                causation_id: Some(cause.event_id),
                trace: cause.trace,
                priority: cause.priority,
            },
            event,
        }
    }

    /// The event in its default version ([`Event::version`]).
    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_as(self.event.version()).unwrap_or_default()
    }

    /// The event in `version`; `None` when that version cannot carry it (see [`Event::data_as`]).
    pub fn to_json_as(&self, version: &str) -> Option<Vec<u8>> {
        let data = self.event.data_as(version)?;
        let meta = self.meta.clone();
        let wire = Wire {
            event_id: meta.event_id,
            event_type: self.event.event_type().to_owned(),
            version: version.to_owned(),
            occurred_at: meta.occurred_at,
            order_id: meta.order_id,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            data,
        };
        // A struct of strings and JSON values always serializes.
        serde_json::to_vec(&wire).ok()
    }

    /// Decodes bytes from the broker. Never panics, whatever the bytes: anything but a valid envelope
    /// of a known type and version is a [`DecodeError`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        Self::from_wire(wire)
    }

    /// [`Envelope::from_json`] for a message already parsed as JSON (to check it against its schema
    /// first).
    pub fn from_value(value: serde_json::Value) -> Result<Self, DecodeError> {
        let wire: Wire = serde_json::from_value(value).map_err(DecodeError::Malformed)?;
        Self::from_wire(wire)
    }

    fn from_wire(wire: Wire) -> Result<Self, DecodeError> {
        let event = Event::decode(&wire.event_type, &wire.version, wire.data)?;
        Ok(Self {
            meta: EventMeta {
                event_id: wire.event_id,
                occurred_at: wire.occurred_at,
                order_id: wire.order_id,
                correlation_id: wire.correlation_id,
                causation_id: wire.causation_id,
                trace: None,
                priority: Priority::Normal,
            },
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CancelReason, ORDER_CREATED, OrderCancelled, PaymentSucceeded};
    use crate::values::Money;

    #[test]
    fn an_envelope_round_trips_through_json() {
        let first = Envelope::first(
            OrderId::new(),
            CorrelationId::parse("corr-1").unwrap(),
            Event::OrderCancelled(OrderCancelled {
                reason: CancelReason::Timeout,
            }),
        );
        let next = Envelope::caused_by(
            &first.meta,
            Event::PaymentSucceeded(PaymentSucceeded {
                amount_cents: Money::from_cents(10).unwrap(),
                charge_id: "ch_1".into(),
            }),
        );
        let decoded = Envelope::from_json(&next.to_json()).unwrap();
        assert_eq!(decoded, next);
        assert_eq!(decoded.meta.causation_id, Some(first.meta.event_id));
        assert_eq!(decoded.meta.correlation_id.as_str(), "corr-1");
    }

    #[test]
    fn unknown_versions_types_and_garbage_are_rejected() {
        let event = Envelope::first(
            OrderId::new(),
            CorrelationId::new(),
            Event::OrderCancelled(OrderCancelled {
                reason: CancelReason::Timeout,
            }),
        );
        let mut wire: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        wire["version"] = "v9".into();
        let bytes = serde_json::to_vec(&wire).unwrap();
        assert!(matches!(
            Envelope::from_json(&bytes),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        wire["version"] = "v1".into();
        wire["type"] = "orders.teleported".into();
        let bytes = serde_json::to_vec(&wire).unwrap();
        assert!(matches!(
            Envelope::from_json(&bytes),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            Envelope::from_json(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
    }

    fn order_created(currency: &str) -> Envelope {
        use crate::events::{OrderCreated, OrderLine};
        use crate::values::{Currency, CustomerId, PaymentMethod, ProductId, Quantity};
        Envelope::first(
            OrderId::new(),
            CorrelationId::new(),
            Event::OrderCreated(OrderCreated {
                customer_id: CustomerId::parse("c-1").unwrap(),
                currency: Currency::parse(currency).unwrap(),
                items: vec![OrderLine {
                    product_id: ProductId::parse("sku-1").unwrap(),
                    quantity: Quantity::new(3).unwrap(),
                }],
                payment_method: PaymentMethod::parse("tok_visa").unwrap(),
                deadline_at: OffsetDateTime::UNIX_EPOCH,
            }),
        )
    }

    #[test]
    fn an_order_in_the_legacy_currency_travels_as_v1_and_is_upcast_on_the_way_in() {
        let event = order_created("USD");
        let wire: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(wire["version"], "v1");
        assert!(wire["data"].get("currency").is_none(), "{wire}");
        assert_eq!(Envelope::from_json(&event.to_json()).unwrap(), event);
    }

    #[test]
    fn an_order_in_another_currency_travels_as_v2() {
        let event = order_created("EUR");
        let wire: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(wire["version"], "v2");
        assert_eq!(wire["data"]["currency"], "EUR");
        assert_eq!(Envelope::from_json(&event.to_json()).unwrap(), event);
        // A v2 in the legacy currency reads like the v1 it could have been.
        let mut as_v2 =
            serde_json::from_slice::<serde_json::Value>(&order_created("USD").to_json()).unwrap();
        as_v2["version"] = "v2".into();
        as_v2["data"]["currency"] = "USD".into();
        let decoded = Envelope::from_json(&serde_json::to_vec(&as_v2).unwrap()).unwrap();
        assert_eq!(decoded.event.version(), "v1");
        as_v2["version"] = "v3".into();
        assert!(matches!(
            Envelope::from_json(&serde_json::to_vec(&as_v2).unwrap()),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        as_v2["version"] = "v1".into();
        assert!(
            matches!(
                Envelope::from_json(&serde_json::to_vec(&as_v2).unwrap()),
                Err(DecodeError::InvalidData { .. })
            ),
            "v1 has no currency field"
        );
    }

    /// A valid envelope as JSON, to break one field at a time.
    fn valid_wire() -> serde_json::Value {
        let event = Envelope::first(
            OrderId::new(),
            CorrelationId::new(),
            Event::OrderCancelled(OrderCancelled {
                reason: CancelReason::Timeout,
            }),
        );
        serde_json::from_slice(&event.to_json()).unwrap()
    }

    fn decode(wire: &serde_json::Value) -> Result<Envelope, DecodeError> {
        Envelope::from_json(&serde_json::to_vec(wire).unwrap())
    }

    #[test]
    fn hostile_metadata_is_refused_and_never_echoed_raw() {
        let mut wire = valid_wire();
        wire["type"] = "orders.created\nX: 1".into();
        let error = decode(&wire).unwrap_err().to_string();
        assert!(!error.contains('\n') && error.contains("\\n"), "{error}");

        let mut wire = valid_wire();
        wire["version"] = "v1\r\n".into();
        let error = decode(&wire).unwrap_err().to_string();
        assert!(!error.contains('\r') && !error.contains('\n'), "{error}");

        for bad in ["a\r\nb", "", "with space"] {
            let mut wire = valid_wire();
            wire["correlation_id"] = bad.into();
            assert!(
                matches!(decode(&wire), Err(DecodeError::Malformed(_))),
                "{bad:?}"
            );
        }

        let mut wire = valid_wire();
        wire["type"] = "x".repeat(100_000).into();
        assert!(decode(&wire).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn unknown_fields_are_refused_in_the_envelope_and_the_payload() {
        let mut wire = valid_wire();
        wire["priority"] = "high".into();
        assert!(matches!(decode(&wire), Err(DecodeError::Malformed(_))));
        let mut wire = valid_wire();
        wire["data"]["refund"] = true.into();
        assert!(matches!(
            decode(&wire),
            Err(DecodeError::InvalidData { .. })
        ));
    }

    #[test]
    fn an_order_created_must_hold_valid_lines() {
        let created = |items: serde_json::Value| {
            let mut wire = valid_wire();
            wire["type"] = ORDER_CREATED.into();
            wire["data"] = serde_json::json!({
                "customer_id": "c-1",
                "items": items,
                "payment_method": "tok_visa",
                "deadline_at": "2030-01-01T00:00:00Z",
            });
            decode(&wire)
        };
        let line = serde_json::json!({"product_id": "sku-1", "quantity": 1});
        assert!(created(serde_json::json!([line])).is_ok());
        assert!(matches!(
            created(serde_json::json!([])),
            Err(DecodeError::Invariant { .. })
        ));
        assert!(matches!(
            created(serde_json::json!([line, line])),
            Err(DecodeError::Invariant { .. })
        ));
    }

    #[test]
    fn deep_nesting_large_and_non_utf8_payloads_are_errors() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Envelope::from_json(deep.as_bytes()).is_err());
        let mut wire = valid_wire();
        let mut nested = serde_json::json!(1);
        for _ in 0..200 {
            nested = serde_json::json!([nested]);
        }
        wire["data"]["reason"] = nested;
        let bytes = serde_json::to_vec(&wire).unwrap_or_default();
        assert!(Envelope::from_json(&bytes).is_err());
        assert!(Envelope::from_json(&vec![b'x'; 1024 * 1024]).is_err());
        assert!(Envelope::from_json(b"\xff\xfe{\"a\": 1}").is_err());
    }

    #[test]
    fn shown_text_is_escaped_and_bounded() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"y".repeat(65)), format!("{}...", "y".repeat(64)));
        assert_eq!(shown("ü"), "\\u{fc}");
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = Envelope::from_json(&bytes);
        }

        #[test]
        fn decoding_mutated_envelopes_never_panics(
            field in proptest::sample::select(vec!["type", "version", "correlation_id", "event_id", "order_id", "occurred_at", "causation_id", "data"]),
            value in "\\PC{0,40}|[\\x00-\\x1f]{1,5}",
        ) {
            let mut wire = valid_wire();
            wire[field] = value.into();
            if let Ok(envelope) = decode(&wire) {
                // Whatever decodes re-encodes to something that decodes the same.
                proptest::prop_assert_eq!(Envelope::from_json(&envelope.to_json()).unwrap(), envelope);
            }
        }
    }
}
