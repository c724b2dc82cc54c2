//! The order's state machine and the parsing of a new order, free of I/O.
//!
//! `pending` → `confirmed` (payment succeeded) or `cancelled` (stock rejected, payment failed, or the
//! saga deadline passed). Final states absorb every later event: a late event is recorded in the
//! timeline but never changes a decided order.

use contracts::events::{CancelReason, MAX_ORDER_LINES, OrderLine};
use contracts::{Currency, CustomerId, Event, Money, PaymentMethod, Priority, ProductId, Quantity};
use platform::http::FieldError;
use serde_json::Value;
use std::collections::HashSet;

contracts::text_enum! {
    pub enum OrderStatus {
        Pending => "pending",
        Confirmed => "confirmed",
        Cancelled => "cancelled",
    }
}

/// What an incoming event does to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Remember the priced total; the order stays pending.
    RecordTotal(Money),
    Confirm(Money),
    Cancel(CancelReason),
    /// Nothing changes: an event that only belongs in the timeline.
    None,
}

/// What `event` asks of a pending order. Only a pending order changes: the writes that carry the
/// transition out are guarded by its status (`storage::record_total`, `storage::finish`), so a final
/// order absorbs every event, whichever consumer's transaction wrote the final status first.
pub fn requested(event: &Event) -> Transition {
    match event {
        Event::InventoryReserved(reserved) => Transition::RecordTotal(reserved.total_cents),
        Event::InventoryRejected(rejected) => Transition::Cancel(rejected.reason.into()),
        Event::PaymentSucceeded(paid) => Transition::Confirm(paid.amount_cents),
        Event::PaymentFailed(failed) => Transition::Cancel(failed.reason.into()),
        _ => Transition::None,
    }
}

/// A validated `POST /orders` body. Its OpenAPI schema describes the body as it arrives;
/// [`NewOrder::parse`] checks it field by field, so that every invalid field is reported at once.
#[derive(Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
#[schema(
    as = NewOrder,
    description = "The body of POST /orders. Every invalid field is reported at once (422), and a field not named here is refused."
)]
pub struct NewOrder {
    pub customer_id: CustomerId,
    /// What the order is charged in; USD when absent. Another currency needs orders.created v2
    /// published (ORDERFLOW_PUBLISH_VERSIONS).
    #[schema(required = false)]
    pub currency: Currency,
    /// 1 to 50 lines, each product in one line only.
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<OrderLine>,
    pub payment_method: PaymentMethod,
    /// `express` puts the order's saga in the express lane: its events travel on subjects and
    /// consumers of their own, ahead of any backlog of normal orders. `normal` when absent.
    #[schema(required = false)]
    pub priority: Priority,
}

impl NewOrder {
    /// Parses a request body, reporting every invalid field (with its path, e.g. `items[0].quantity`)
    /// rather than only the first.
    pub fn parse(body: &Value) -> Result<NewOrder, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new(
                "body",
                "must be a JSON object with customer_id, items and payment_method",
            )]);
        };
        for key in object.keys() {
            if !matches!(
                key.as_str(),
                "customer_id" | "currency" | "items" | "payment_method" | "priority"
            ) {
                errors.push(FieldError::new(key.clone(), "unknown field"));
            }
        }
        let customer_id = required_str(object.get("customer_id"), "customer_id", &mut errors)
            .and_then(|raw| collect(CustomerId::parse(raw), "customer_id", &mut errors));
        let payment_method =
            required_str(object.get("payment_method"), "payment_method", &mut errors)
                .and_then(|raw| collect(PaymentMethod::parse(raw), "payment_method", &mut errors));
        let items = parse_items(object.get("items"), &mut errors);
        let currency = match object.get("currency") {
            None | Some(Value::Null) => Some(Currency::legacy()),
            Some(raw) => required_str(Some(raw), "currency", &mut errors)
                .and_then(|raw| collect(Currency::parse(raw), "currency", &mut errors)),
        };
        let priority = match object.get("priority") {
            None | Some(Value::Null) => Some(Priority::Normal),
            Some(raw) => required_str(Some(raw), "priority", &mut errors)
                .and_then(|raw| collect(raw.parse::<Priority>(), "priority", &mut errors)),
        };
        match (customer_id, currency, items, payment_method, priority) {
            (
                Some(customer_id),
                Some(currency),
                Some(items),
                Some(payment_method),
                Some(priority),
            ) if errors.is_empty() => Ok(NewOrder {
                customer_id,
                currency,
                items,
                payment_method,
                priority,
            }),
            _ => Err(errors),
        }
    }

    /// The request in one canonical text (sorted keys), to recognise a repeated `Idempotency-Key`
    /// request with the same body.
    pub fn canonical_json(&self) -> String {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|line| {
                serde_json::json!({
                    "product_id": line.product_id.as_str(),
                    "quantity": line.quantity.get(),
                })
            })
            .collect();
        let mut canonical = serde_json::json!({
            "customer_id": self.customer_id.as_str(),
            "items": items,
            "payment_method": self.payment_method.as_str(),
        });
        // Only when it says something: a key stored before orders named a currency still matches
        // its retry.
        if self.currency != Currency::legacy() {
            canonical["currency"] = self.currency.as_str().into();
        }
        if self.priority != Priority::Normal {
            canonical["priority"] = self.priority.as_str().into();
        }
        canonical.to_string()
    }
}

fn required_str<'a>(
    value: Option<&'a Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match value {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(Value::String(raw)) => Some(raw),
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn collect<T>(
    parsed: Result<T, contracts::ValueError>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    parsed
        .map_err(|error| errors.push(FieldError::new(field, error.0)))
        .ok()
}

fn parse_items(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Vec<OrderLine>> {
    let lines = match value {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("items", "is required"));
            return None;
        }
        Some(Value::Array(lines)) => lines,
        Some(_) => {
            errors.push(FieldError::new("items", "must be an array of order lines"));
            return None;
        }
    };
    if lines.is_empty() || lines.len() > MAX_ORDER_LINES {
        errors.push(FieldError::new(
            "items",
            format!("must hold 1 to {MAX_ORDER_LINES} lines"),
        ));
        return None;
    }
    let before = errors.len();
    let mut seen = HashSet::new();
    let mut parsed = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let path = format!("items[{index}]");
        let Some(line) = line.as_object() else {
            errors.push(FieldError::new(
                path,
                "must be an object with product_id and quantity",
            ));
            continue;
        };
        for key in line.keys() {
            if !matches!(key.as_str(), "product_id" | "quantity") {
                errors.push(FieldError::new(format!("{path}.{key}"), "unknown field"));
            }
        }
        let product_field = format!("{path}.product_id");
        let product_id = required_str(line.get("product_id"), &product_field, errors)
            .and_then(|raw| collect(ProductId::parse(raw), &product_field, errors));
        if let Some(product_id) = &product_id
            && !seen.insert(product_id.clone())
        {
            errors.push(FieldError::new(
                &product_field,
                "appears in more than one line; put the whole quantity in one line",
            ));
        }
        let quantity_field = format!("{path}.quantity");
        let quantity = match line.get("quantity") {
            None | Some(Value::Null) => {
                errors.push(FieldError::new(&quantity_field, "is required"));
                None
            }
            Some(Value::Number(n)) if n.as_i64().is_some() => collect(
                Quantity::new(n.as_i64().unwrap_or(0)),
                &quantity_field,
                errors,
            ),
            Some(_) => {
                errors.push(FieldError::new(
                    &quantity_field,
                    format!("must be an integer from 1 to {}", Quantity::MAX),
                ));
                None
            }
        };
        if let (Some(product_id), Some(quantity)) = (product_id, quantity) {
            parsed.push(OrderLine {
                product_id,
                quantity,
            });
        }
    }
    (errors.len() == before).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::events::{
        InventoryRejected, PaymentFailed, PaymentFailureReason, PaymentSucceeded, RejectReason,
    };
    use serde_json::json;

    #[test]
    fn the_documented_body_has_the_limits_the_parser_applies() {
        let document = serde_json::to_value(crate::api::openapi()).unwrap();
        let body = &document["components"]["schemas"]["NewOrder"];
        assert_eq!(
            body["properties"]["items"]["maxItems"],
            json!(MAX_ORDER_LINES)
        );
        assert_eq!(
            body["required"],
            json!(["customer_id", "items", "payment_method"])
        );
    }

    fn fields(body: Value) -> Vec<String> {
        NewOrder::parse(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_order_parses() {
        let order = NewOrder::parse(&json!({
            "customer_id": "c-1",
            "items": [{"product_id": "sku-1", "quantity": 2}],
            "payment_method": "tok_visa"
        }))
        .unwrap();
        assert_eq!(order.items.len(), 1);
        assert_eq!(order.items[0].quantity.get(), 2);
        assert_eq!(order.priority, Priority::Normal);
    }

    #[test]
    fn an_order_may_ask_for_the_express_lane_and_nothing_else() {
        let body = |priority: Value| {
            json!({
                "customer_id": "c-1",
                "items": [{"product_id": "sku-1", "quantity": 1}],
                "payment_method": "tok_visa",
                "priority": priority,
            })
        };
        let express = NewOrder::parse(&body(json!("express"))).unwrap();
        assert_eq!(express.priority, Priority::Express);
        assert_eq!(
            NewOrder::parse(&body(Value::Null)).unwrap().priority,
            Priority::Normal
        );
        for wrong in [json!("urgent"), json!("EXPRESS"), json!(1)] {
            assert_eq!(fields(body(wrong)), ["priority"]);
        }
        // A retry with the same key must say the same: the lane is part of the request.
        let normal = NewOrder::parse(&body(json!("normal"))).unwrap();
        assert_ne!(express.canonical_json(), normal.canonical_json());
        assert!(!normal.canonical_json().contains("priority"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = fields(json!({
            "customer_id": "bad id!",
            "items": [
                {"product_id": "sku-1", "quantity": 0},
                {"product_id": "sku-1", "quantity": 2.5, "colour": "red"},
                "not an object"
            ],
            "payment_method": "",
            "coupon": "FREE"
        }));
        for expected in [
            "coupon",
            "customer_id",
            "payment_method",
            "items[0].quantity",
            "items[1].colour",
            "items[1].product_id",
            "items[1].quantity",
            "items[2]",
        ] {
            assert!(
                errors.iter().any(|f| f == expected),
                "{expected} missing in {errors:?}"
            );
        }
    }

    #[test]
    fn items_must_hold_one_to_fifty_lines() {
        assert_eq!(
            fields(json!({"customer_id": "c", "items": [], "payment_method": "t"})),
            ["items"]
        );
        let many: Vec<Value> = (0..51)
            .map(|i| json!({"product_id": format!("p{i}"), "quantity": 1}))
            .collect();
        assert_eq!(
            fields(json!({"customer_id": "c", "items": many, "payment_method": "t"})),
            ["items"]
        );
        let missing = fields(json!({}));
        assert_eq!(missing.len(), 3);
    }

    #[test]
    fn quantity_must_be_an_integer_in_range() {
        for bad in [json!(0), json!(1001), json!("2"), json!(1.5), json!(-1)] {
            let errors = fields(json!({
                "customer_id": "c", "payment_method": "t",
                "items": [{"product_id": "p", "quantity": bad}]
            }));
            assert_eq!(errors, ["items[0].quantity"]);
        }
    }

    #[test]
    fn stock_and_payment_outcomes_move_a_pending_order_on() {
        let paid = Event::PaymentSucceeded(PaymentSucceeded {
            amount_cents: Money::from_cents(2598).unwrap(),
            charge_id: "ch".into(),
        });
        let rejected = Event::InventoryRejected(InventoryRejected {
            reason: RejectReason::UnknownProduct,
            lines: vec![],
        });
        let declined = Event::PaymentFailed(PaymentFailed {
            reason: PaymentFailureReason::PaymentDeclined,
        });
        assert_eq!(
            requested(&paid),
            Transition::Confirm(Money::from_cents(2598).unwrap())
        );
        assert_eq!(
            requested(&rejected),
            Transition::Cancel(CancelReason::UnknownProduct)
        );
        assert_eq!(
            requested(&declined),
            Transition::Cancel(CancelReason::PaymentDeclined)
        );
    }

    proptest::proptest! {
        /// Whatever the body, the parser answers: an order, or the fields that are wrong.
        #[test]
        fn any_body_is_an_order_or_named_errors(body in testkit::arbitrary::json_value()) {
            match NewOrder::parse(&body) {
                Ok(order) => {
                    let again: Value = serde_json::from_str(&order.canonical_json()).unwrap();
                    proptest::prop_assert_eq!(NewOrder::parse(&again), Ok(order));
                }
                Err(errors) => proptest::prop_assert!(!errors.is_empty()),
            }
        }

        #[test]
        fn any_bytes_never_panic_the_parser(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(body) = serde_json::from_slice::<Value>(&bytes) {
                let _ = NewOrder::parse(&body);
            }
        }
    }
}
