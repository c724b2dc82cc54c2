//! The gateway's rules, free of I/O: which requests are well-formed, which test tokens succeed, and when a
//! repeated idempotency key is a replay rather than a misuse.

use contracts::{Currency, PaymentMethod};
use platform::http::FieldError;
use serde_json::Value;

/// Test tokens that always succeed, as on Stripe's test mode. Every other token is declined, so a test
/// can provoke a decline without configuring anything.
const SUCCEEDING_TOKENS: [&str; 3] = ["tok_visa", "tok_mastercard", "tok_amex"];
/// The token documented as "declined"; it gets Stripe's generic decline code, any unknown token another
/// one, so the ledger tells the two apart.
const DECLINED_TOKEN: &str = "tok_chargeDeclined";

/// The longest idempotency key or order reference the gateway stores, as on Stripe.
const MAX_KEY_CHARS: usize = 255;

/// The client's idempotency key: what makes a retried request return the first answer instead of
/// charging again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Refuses a missing key and one outside 1–255 characters.
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let raw = raw.ok_or("the Idempotency-Key header is required")?;
        let chars = raw.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS {
            return Err(format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_CHARS} characters long"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated `POST /v1/charges` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub amount_cents: i64,
    /// USD when the request names none.
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    /// The merchant's reference, stored so the ledger can be searched by order.
    pub order_id: Option<String>,
}

impl ChargeRequest {
    /// Reports every invalid or unknown field at once.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };
        let mut errors = unknown_fields(
            object,
            &["amount_cents", "currency", "payment_method", "order_id"],
        );
        let amount_cents = match object.get("amount_cents") {
            None => {
                errors.push(FieldError::new("amount_cents", "is required"));
                None
            }
            Some(value) => match value.as_i64() {
                Some(cents) if cents > 0 => Some(cents),
                _ => {
                    errors.push(FieldError::new(
                        "amount_cents",
                        "must be an integer greater than 0",
                    ));
                    None
                }
            },
        };
        let payment_method = match object.get("payment_method") {
            None => {
                errors.push(FieldError::new("payment_method", "is required"));
                None
            }
            Some(Value::String(raw)) => match PaymentMethod::parse(raw) {
                Ok(method) => Some(method),
                Err(error) => {
                    errors.push(FieldError::new("payment_method", error.to_string()));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::new("payment_method", "must be a string"));
                None
            }
        };
        let currency = match object.get("currency") {
            None | Some(Value::Null) => Some(Currency::legacy()),
            Some(Value::String(raw)) => match Currency::parse(raw) {
                Ok(currency) => Some(currency),
                Err(error) => {
                    errors.push(FieldError::new("currency", error.to_string()));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::new("currency", "must be a string"));
                None
            }
        };
        let order_id = match object.get("order_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(raw)) if (1..=MAX_KEY_CHARS).contains(&raw.chars().count()) => {
                Some(raw.clone())
            }
            Some(_) => {
                errors.push(FieldError::new(
                    "order_id",
                    format!("must be a string of 1 to {MAX_KEY_CHARS} characters"),
                ));
                None
            }
        };
        match (amount_cents, currency, payment_method) {
            (Some(amount_cents), Some(currency), Some(payment_method)) if errors.is_empty() => {
                Ok(Self {
                    amount_cents,
                    currency,
                    payment_method,
                    order_id,
                })
            }
            _ => Err(errors),
        }
    }
}

/// A validated `POST /v1/refunds` body: the charge to refund in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub charge_id: String,
}

impl RefundRequest {
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };
        let mut errors = unknown_fields(object, &["charge"]);
        let charge_id = match object.get("charge") {
            None => {
                errors.push(FieldError::new("charge", "is required"));
                None
            }
            Some(Value::String(raw)) if (1..=MAX_KEY_CHARS).contains(&raw.chars().count()) => {
                Some(raw.clone())
            }
            Some(_) => {
                errors.push(FieldError::new(
                    "charge",
                    "must be a charge id such as ch_...",
                ));
                None
            }
        };
        match charge_id {
            Some(charge_id) if errors.is_empty() => Ok(Self { charge_id }),
            _ => Err(errors),
        }
    }
}

fn unknown_fields(object: &serde_json::Map<String, Value>, known: &[&str]) -> Vec<FieldError> {
    object
        .keys()
        .filter(|key| !known.contains(&key.as_str()))
        .map(|key| FieldError::new(key.as_str(), "is not a known field"))
        .collect()
}

/// What the card network says about a new charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Succeed,
    Decline { decline_code: &'static str },
}

pub fn decide(method: &PaymentMethod) -> Decision {
    if SUCCEEDING_TOKENS.contains(&method.as_str()) {
        Decision::Succeed
    } else if method.as_str() == DECLINED_TOKEN {
        Decision::Decline {
            decline_code: "generic_decline",
        }
    } else {
        Decision::Decline {
            decline_code: "invalid_token",
        }
    }
}

contracts::text_enum! {
    /// A stored charge's outcome.
    pub enum ChargeStatus {
        Succeeded => "succeeded",
        Declined => "declined",
    }
}

/// A key sent again is a replay only if it asks for the same charge; otherwise the client has a bug
/// (one key for two payments) and must hear about it instead of getting someone else's answer.
pub fn is_replay(stored: &crate::ledger::Charge, request: &ChargeRequest) -> bool {
    stored.amount_cents == request.amount_cents
        && stored.currency == request.currency.as_str()
        && stored.payment_method == request.payment_method.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_good_tokens_succeed_and_everything_else_is_declined() {
        for token in ["tok_visa", "tok_mastercard", "tok_amex"] {
            assert_eq!(
                decide(&PaymentMethod::parse(token).unwrap()),
                Decision::Succeed
            );
        }
        assert_eq!(
            decide(&PaymentMethod::parse("tok_chargeDeclined").unwrap()),
            Decision::Decline {
                decline_code: "generic_decline"
            }
        );
        assert!(matches!(
            decide(&PaymentMethod::parse("tok_unknown").unwrap()),
            Decision::Decline { .. }
        ));
    }

    #[test]
    fn a_charge_body_reports_every_bad_field() {
        let errors = ChargeRequest::parse(&json!({
            "amount_cents": 0, "payment_method": 7, "order_id": "", "extra": true
        }))
        .unwrap_err();
        let mut fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            ["amount_cents", "extra", "order_id", "payment_method"]
        );
        assert_eq!(ChargeRequest::parse(&json!({})).unwrap_err().len(), 2);
        assert!(ChargeRequest::parse(&json!([1])).is_err());
        assert!(
            ChargeRequest::parse(&json!({"amount_cents": 1.5, "payment_method": "tok_visa"}))
                .is_err()
        );
    }

    #[test]
    fn a_valid_charge_body_parses_with_an_optional_order() {
        let request =
            ChargeRequest::parse(&json!({"amount_cents": 1299, "payment_method": "tok_visa"}))
                .unwrap();
        assert_eq!(request.amount_cents, 1299);
        assert_eq!(request.order_id, None);
        let request = ChargeRequest::parse(
            &json!({"amount_cents": 1, "payment_method": "tok_visa", "order_id": "o-1"}),
        )
        .unwrap();
        assert_eq!(request.order_id.as_deref(), Some("o-1"));
    }

    #[test]
    fn idempotency_keys_are_one_to_255_characters() {
        assert!(IdempotencyKey::parse(None).is_err());
        assert!(IdempotencyKey::parse(Some("")).is_err());
        assert!(IdempotencyKey::parse(Some(&"k".repeat(256))).is_err());
        assert_eq!(
            IdempotencyKey::parse(Some(&"k".repeat(255)))
                .unwrap()
                .as_str(),
            "k".repeat(255)
        );
    }

    #[test]
    fn a_key_is_a_replay_only_for_the_same_amount_currency_and_method() {
        let request =
            ChargeRequest::parse(&json!({"amount_cents": 500, "payment_method": "tok_visa"}))
                .unwrap();
        let stored = |amount_cents: i64, currency: &str, method: &str| crate::ledger::Charge {
            id: "ch_1".into(),
            idempotency_key: "k".into(),
            amount_cents,
            currency: currency.into(),
            payment_method: method.into(),
            status: ChargeStatus::Succeeded,
            decline_code: None,
            order_id: None,
            created_at_us: 0,
            refund_id: None,
        };
        assert!(is_replay(&stored(500, "USD", "tok_visa"), &request));
        assert!(!is_replay(&stored(501, "USD", "tok_visa"), &request));
        assert!(!is_replay(&stored(500, "EUR", "tok_visa"), &request));
        assert!(!is_replay(&stored(500, "USD", "tok_amex"), &request));
        let euros = ChargeRequest::parse(
            &json!({"amount_cents": 500, "currency": "EUR", "payment_method": "tok_visa"}),
        )
        .unwrap();
        assert!(is_replay(&stored(500, "EUR", "tok_visa"), &euros));
        let refused = ChargeRequest::parse(
            &json!({"amount_cents": 500, "currency": "euro", "payment_method": "tok_visa"}),
        )
        .unwrap_err();
        assert_eq!(refused[0].field, "currency");
    }

    #[test]
    fn a_refund_names_its_charge_and_nothing_else() {
        assert_eq!(
            RefundRequest::parse(&json!({"charge": "ch_1"}))
                .unwrap()
                .charge_id,
            "ch_1"
        );
        assert_eq!(
            RefundRequest::parse(&json!({"charge": 1, "amount": 5}))
                .unwrap_err()
                .len(),
            2
        );
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_a_request_or_named_errors(body in testkit::arbitrary::json_value()) {
            if let Err(errors) = ChargeRequest::parse(&body) {
                proptest::prop_assert!(!errors.is_empty());
            }
            if let Err(errors) = RefundRequest::parse(&body) {
                proptest::prop_assert!(!errors.is_empty());
            }
        }
    }
}
