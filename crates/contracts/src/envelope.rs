//! The envelope every event travels in: who it is about (`order_id`), which saga it belongs to
//! (`correlation_id`), what caused it (`causation_id`), and a unique `event_id` that is also the
//! `Nats-Msg-Id` (broker de-duplication) and the inbox key (consumer de-duplication).

use crate::events::Event;
use crate::values::OrderId;
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
/// permanent: redelivering the same bytes gives the same answer.
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
}

/// Everything in the envelope except the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    pub event_id: EventId,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub order_id: OrderId,
    pub correlation_id: String,
    pub causation_id: Option<EventId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub meta: EventMeta,
    pub event: Event,
}

/// The wire form: the metadata, `type` and `version` beside each other, the payload under `data`
/// (CloudEvents attribute names).
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(flatten)]
    meta: EventMeta,
    #[serde(rename = "type")]
    event_type: String,
    version: String,
    data: serde_json::Value,
}

impl Envelope {
    /// The first event of a saga, caused by a request rather than another event.
    pub fn first(order_id: OrderId, correlation_id: String, event: Event) -> Self {
        Self {
            meta: EventMeta {
                event_id: EventId::new(),
                occurred_at: OffsetDateTime::now_utc(),
                order_id,
                correlation_id,
                causation_id: None,
            },
            event,
        }
    }

    /// An event caused by `cause`: same order, same saga.
    pub fn caused_by(cause: &EventMeta, event: Event) -> Self {
        Self {
            meta: EventMeta {
                event_id: EventId::new(),
                occurred_at: OffsetDateTime::now_utc(),
                order_id: cause.order_id,
                correlation_id: cause.correlation_id.clone(),
                causation_id: Some(cause.event_id),
            },
            event,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            meta: self.meta.clone(),
            event_type: self.event.event_type().to_owned(),
            version: self.event.version().to_owned(),
            data: self.event.data(),
        };
        // A struct of strings and JSON values always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        let event = Event::decode(&wire.event_type, &wire.version, wire.data)?;
        Ok(Self {
            meta: wire.meta,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CancelReason, OrderCancelled, PaymentSucceeded};
    use crate::values::Money;

    #[test]
    fn an_envelope_round_trips_through_json() {
        let first = Envelope::first(
            OrderId::new(),
            "corr-1".into(),
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
        assert_eq!(decoded.meta.correlation_id, "corr-1");
    }

    #[test]
    fn unknown_versions_types_and_garbage_are_rejected() {
        let event = Envelope::first(
            OrderId::new(),
            "c".into(),
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
}
