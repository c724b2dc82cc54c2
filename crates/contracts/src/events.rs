//! The event catalog: every fact one service tells the others, with its payload. The event `type` is also
//! the NATS subject it is published on (with `express` after its first token in the express lane, see
//! [`crate::priority`]), so "where is `inventory.reserved` produced/consumed" is one grep.
//!
//! Versions: a breaking change of a payload is a new version beside the old one (docs/evolving-events.md).
//! Handlers see one type per event, the newest; an older version is upcast to it in exactly one place
//! (`orders.created` v1 → v2: [`OrderCreated::from`]), in [`Event::decode`].

use crate::DecodeError;
use crate::envelope::shown;
use crate::values::{Currency, CustomerId, Money, PaymentMethod, ProductId, Quantity};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const ORDER_CREATED: &str = "orders.created";
pub const ORDER_CONFIRMED: &str = "orders.confirmed";
pub const ORDER_CANCELLED: &str = "orders.cancelled";
pub const INVENTORY_RESERVED: &str = "inventory.reserved";
pub const INVENTORY_REJECTED: &str = "inventory.rejected";
pub const PAYMENT_SUCCEEDED: &str = "payments.succeeded";
pub const PAYMENT_FAILED: &str = "payments.failed";
pub const PAYMENT_REFUNDED: &str = "payments.refunded";

/// The versions of `event_type` this build reads and writes, oldest first; none for an unknown type.
pub fn versions_of(event_type: &str) -> &'static [&'static str] {
    match event_type {
        ORDER_CREATED => &[V1, V2],
        ORDER_CONFIRMED | ORDER_CANCELLED | INVENTORY_RESERVED | INVENTORY_REJECTED
        | PAYMENT_SUCCEEDED | PAYMENT_FAILED | PAYMENT_REFUNDED => &[V1],
        _ => &[],
    }
}

/// The service that publishes events of `event_type`, judged by its subject prefix.
pub fn producer_of(event_type: &str) -> &'static str {
    match event_type.split('.').next() {
        Some("orders") => "order-service",
        Some("inventory") => "inventory-service",
        Some("payments") => "payment-service",
        _ => "unknown",
    }
}

pub const V1: &str = "v1";
/// `orders.created` only: the order names its currency.
pub const V2: &str = "v2";

/// One line of an order: a product and how many units of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// The most lines one order may have.
pub const MAX_ORDER_LINES: usize = 50;

/// Why the lines of an order are not acceptable; the message is written for the API caller.
pub fn check_order_lines(lines: &[OrderLine]) -> Result<(), String> {
    if lines.is_empty() || lines.len() > MAX_ORDER_LINES {
        return Err(format!("an order must hold 1 to {MAX_ORDER_LINES} lines"));
    }
    let mut seen = std::collections::HashSet::with_capacity(lines.len());
    match lines.iter().find(|line| !seen.insert(&line.product_id)) {
        Some(line) => Err(format!(
            "product {} appears in more than one line; put the whole quantity in one line",
            line.product_id
        )),
        None => Ok(()),
    }
}

/// An order was accepted and is waiting for stock and payment (v1, from before orders named their
/// currency: every amount is in US dollars).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCreatedV1 {
    pub customer_id: CustomerId,
    /// The lines of the order, each product in one line only (a rule the schema cannot state; the
    /// consumers check it).
    #[schemars(length(min = 1, max = MAX_ORDER_LINES))]
    pub items: Vec<OrderLine>,
    pub payment_method: PaymentMethod,
    /// When the saga gives up on this order; carried so every service can stop working on it then.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub deadline_at: OffsetDateTime,
}

/// The upcast of `orders.created` v1 to v2, the one place where a v1 order becomes what handlers see:
/// it was in the one currency there was.
impl From<OrderCreatedV1> for OrderCreated {
    fn from(v1: OrderCreatedV1) -> Self {
        Self {
            customer_id: v1.customer_id,
            currency: Currency::legacy(),
            items: v1.items,
            payment_method: v1.payment_method,
            deadline_at: v1.deadline_at,
        }
    }
}

impl OrderCreated {
    /// The order as v1 carries it, if v1 can: only an order in the legacy currency.
    pub fn as_v1(&self) -> Option<OrderCreatedV1> {
        (self.currency == Currency::legacy()).then(|| OrderCreatedV1 {
            customer_id: self.customer_id.clone(),
            items: self.items.clone(),
            payment_method: self.payment_method.clone(),
            deadline_at: self.deadline_at,
        })
    }
}

/// An order was accepted and is waiting for stock and payment; it names the currency its amounts are
/// charged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCreated {
    pub customer_id: CustomerId,
    pub currency: Currency,
    /// The lines of the order, each product in one line only (a rule the schema cannot state; the
    /// consumers check it).
    #[schemars(length(min = 1, max = MAX_ORDER_LINES))]
    pub items: Vec<OrderLine>,
    pub payment_method: PaymentMethod,
    /// When the saga gives up on this order; carried so every service can stop working on it then.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(schema_with = "crate::schema::timestamp")]
    pub deadline_at: OffsetDateTime,
}

/// A reserved line, with the unit price in force when it was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PricedLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub unit_price_cents: Money,
}

/// Every line of the order is reserved; the prices are the ones in force at reservation time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryReserved {
    pub lines: Vec<PricedLine>,
    pub total_cents: Money,
}

crate::text_enum! {
    pub enum RejectReason {
        InsufficientStock => "insufficient_stock",
        UnknownProduct => "unknown_product",
    }
}

/// A line that could not be reserved, and why the reservation as a whole failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectedLine {
    pub product_id: ProductId,
    pub requested: Quantity,
    /// Units available when the reservation was tried; `None` for an unknown product.
    pub available: Option<i64>,
}

/// Nothing was reserved for the order (reservations are all-or-nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryRejected {
    pub reason: RejectReason,
    pub lines: Vec<RejectedLine>,
}

/// The gateway charged the order's total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentSucceeded {
    pub amount_cents: Money,
    /// The gateway's id of the charge.
    pub charge_id: String,
}

crate::text_enum! {
    pub enum PaymentFailureReason {
        PaymentDeclined => "payment_declined",
        PaymentUnavailable => "payment_unavailable",
    }
}

/// The order could not be charged: declined, or the gateway could not be reached before the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentFailed {
    pub reason: PaymentFailureReason,
}

/// A charge that landed after the order was cancelled has been refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRefunded {
    pub amount_cents: Money,
    /// The gateway's id of the charge that was refunded.
    pub charge_id: String,
}

/// The order is stocked and paid: final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderConfirmed {
    pub total_cents: Money,
}

crate::text_enum! {
    pub enum CancelReason {
        InsufficientStock => "insufficient_stock",
        UnknownProduct => "unknown_product",
        PaymentDeclined => "payment_declined",
        PaymentUnavailable => "payment_unavailable",
        Timeout => "timeout",
    }
}

impl From<RejectReason> for CancelReason {
    fn from(reason: RejectReason) -> Self {
        match reason {
            RejectReason::InsufficientStock => CancelReason::InsufficientStock,
            RejectReason::UnknownProduct => CancelReason::UnknownProduct,
        }
    }
}

impl From<PaymentFailureReason> for CancelReason {
    fn from(reason: PaymentFailureReason) -> Self {
        match reason {
            PaymentFailureReason::PaymentDeclined => CancelReason::PaymentDeclined,
            PaymentFailureReason::PaymentUnavailable => CancelReason::PaymentUnavailable,
        }
    }
}

/// The order will not be fulfilled: final. Stock and payment are released or refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub reason: CancelReason,
}

/// Every event of the saga. The variant decides the type, subject and payload schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OrderCreated(OrderCreated),
    OrderConfirmed(OrderConfirmed),
    OrderCancelled(OrderCancelled),
    InventoryReserved(InventoryReserved),
    InventoryRejected(InventoryRejected),
    PaymentSucceeded(PaymentSucceeded),
    PaymentFailed(PaymentFailed),
    PaymentRefunded(PaymentRefunded),
}

impl Event {
    /// The event type, which is also the subject it is published on.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::OrderCreated(_) => ORDER_CREATED,
            Event::OrderConfirmed(_) => ORDER_CONFIRMED,
            Event::OrderCancelled(_) => ORDER_CANCELLED,
            Event::InventoryReserved(_) => INVENTORY_RESERVED,
            Event::InventoryRejected(_) => INVENTORY_REJECTED,
            Event::PaymentSucceeded(_) => PAYMENT_SUCCEEDED,
            Event::PaymentFailed(_) => PAYMENT_FAILED,
            Event::PaymentRefunded(_) => PAYMENT_REFUNDED,
        }
    }

    /// The service that publishes this event (each stream has exactly one producer).
    pub fn producer(&self) -> &'static str {
        producer_of(self.event_type())
    }

    /// The version the event is written in by default: the oldest that can carry it, so that a
    /// consumer that reads only the old one still reads every event it can.
    pub fn version(&self) -> &'static str {
        match self {
            Event::OrderCreated(created) if created.as_v1().is_none() => V2,
            _ => V1,
        }
    }

    /// The versions of this event's type, oldest first.
    pub fn versions(&self) -> &'static [&'static str] {
        versions_of(self.event_type())
    }

    /// The payload in `version`'s form; `None` when the type has no such version, or the version
    /// cannot carry this event (an order in another currency than v1's).
    pub(crate) fn data_as(&self, version: &str) -> Option<serde_json::Value> {
        let encoded = match (self, version) {
            (Event::OrderCreated(p), V1) => serde_json::to_value(p.as_v1()?),
            (Event::OrderCreated(p), V2) => serde_json::to_value(p),
            (_, V1) => match self {
                Event::OrderCreated(_) => return None,
                Event::OrderConfirmed(p) => serde_json::to_value(p),
                Event::OrderCancelled(p) => serde_json::to_value(p),
                Event::InventoryReserved(p) => serde_json::to_value(p),
                Event::InventoryRejected(p) => serde_json::to_value(p),
                Event::PaymentSucceeded(p) => serde_json::to_value(p),
                Event::PaymentFailed(p) => serde_json::to_value(p),
                Event::PaymentRefunded(p) => serde_json::to_value(p),
            },
            _ => return None,
        };
        // Payloads are plain structs of strings, integers and lists: serde_json cannot fail on them.
        encoded.ok()
    }

    /// Decodes a payload of a known type and version. An unknown type or version is a permanent error:
    /// retrying will not make this build understand it.
    pub fn decode(
        event_type: &str,
        version: &str,
        data: serde_json::Value,
    ) -> Result<Event, DecodeError> {
        fn payload<T: serde::de::DeserializeOwned>(
            event_type: &str,
            data: serde_json::Value,
        ) -> Result<T, DecodeError> {
            serde_json::from_value(data).map_err(|source| DecodeError::InvalidData {
                event_type: event_type.to_owned(),
                source,
            })
        }
        let unsupported = || DecodeError::UnsupportedVersion {
            event_type: shown(event_type),
            version: shown(version),
        };
        if event_type != ORDER_CREATED && version != V1 {
            return Err(unsupported());
        }
        Ok(match event_type {
            ORDER_CREATED => {
                let created: OrderCreated = match version {
                    V1 => payload::<OrderCreatedV1>(event_type, data)?.into(),
                    V2 => payload(event_type, data)?,
                    _ => return Err(unsupported()),
                };
                check_order_lines(&created.items).map_err(|reason| DecodeError::Invariant {
                    event_type: event_type.to_owned(),
                    reason,
                })?;
                Event::OrderCreated(created)
            }
            ORDER_CONFIRMED => Event::OrderConfirmed(payload(event_type, data)?),
            ORDER_CANCELLED => Event::OrderCancelled(payload(event_type, data)?),
            INVENTORY_RESERVED => Event::InventoryReserved(payload(event_type, data)?),
            INVENTORY_REJECTED => Event::InventoryRejected(payload(event_type, data)?),
            PAYMENT_SUCCEEDED => Event::PaymentSucceeded(payload(event_type, data)?),
            PAYMENT_FAILED => Event::PaymentFailed(payload(event_type, data)?),
            PAYMENT_REFUNDED => Event::PaymentRefunded(payload(event_type, data)?),
            other => return Err(DecodeError::UnknownType(shown(other))),
        })
    }
}
