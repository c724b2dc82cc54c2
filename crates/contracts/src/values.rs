//! Value types with their invariants. Each is parsed once at the edge (HTTP body, event payload, database
//! row) and trusted everywhere after that: a `Quantity` is always 1–1000, a `Money` is never negative.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The JSON Schema of a value type, written beside its parser so the two cannot drift apart unnoticed
/// (a test checks both against the same samples), for the event schemas (`schemars`) and the HTTP
/// APIs' OpenAPI documents (`utoipa`) alike.
macro_rules! value_schema {
    ($name:ty, $schema:tt) => {
        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!($schema)
            }
        }

        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                $crate::values::openapi_schema(::serde_json::json!($schema))
            }
        }

        impl ::utoipa::ToSchema for $name {
            fn name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
        }
    };
}

/// A JSON Schema written as JSON, as an OpenAPI schema. The literals above are all valid, which the
/// OpenAPI documents' tests see; one that were not would show as an empty schema there.
pub fn openapi_schema(
    schema: serde_json::Value,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::RefOr::T(serde_json::from_value(schema).unwrap_or_default())
}
pub(crate) use value_schema;

/// Why a raw value is not a valid domain value. The message is written for the API caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

/// Identifier of an order: a UUID (v7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ValueError(format!("'{raw}' is not a UUID")))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

value_schema!(OrderId, {
    "description": "Identifier of an order: a UUID (v7, so ids sort by creation time).",
    "type": "string",
    "format": "uuid"
});

impl TryFrom<String> for OrderId {
    type Error = ValueError;
    fn try_from(raw: String) -> Result<Self, ValueError> {
        Self::parse(&raw)
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// 1–64 characters of `[A-Za-z0-9._:-]`: safe in URLs, logs and NATS subjects alike.
fn parse_token(raw: &str, what: &str) -> Result<String, ValueError> {
    if raw.is_empty() || raw.len() > 64 {
        return Err(ValueError(format!(
            "{what} must be 1 to 64 characters long"
        )));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(ValueError(format!(
            "{what} may only contain letters, digits and . _ : -"
        )));
    }
    Ok(raw.to_owned())
}

/// The conversions of a value type that wraps its checked text (`struct T(String)` with
/// `T::parse(&str)`): from a `String` through the parser (what serde's `try_from` uses), back to the
/// `String`, and `Display` as the text itself.
macro_rules! text_value {
    ($name:ty) => {
        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(raw: String) -> Result<Self, ValueError> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// What [`parse_token`] accepts, as a JSON Schema pattern.
macro_rules! token_pattern {
    () => {
        "^[A-Za-z0-9._:-]{1,64}$"
    };
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $description:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, ValueError> {
                parse_token(raw, $what).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        value_schema!($name, {
            "description": $description,
            "type": "string",
            "pattern": token_pattern!()
        });

        text_value!($name);
    };
}

token_type!(
    /// Identifier of a product in the catalog (a SKU).
    ProductId,
    "product_id",
    "Identifier of a product in the catalog (a SKU): 1 to 64 letters, digits and . _ : -"
);
token_type!(
    /// Identifier of the customer who placed an order; orderflow does not own customers.
    CustomerId,
    "customer_id",
    "Identifier of the customer who placed the order: 1 to 64 letters, digits and . _ : -"
);

/// The id that ties every request, event and log line of one saga together: 1–128 visible ASCII
/// characters (no spaces, no control characters), so it is safe in HTTP and NATS headers and in logs.
/// Callers may choose it (`X-Correlation-ID`); events carry it, and every consumer checks it again on
/// decode, because a value from the wire is only as good as whoever published it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CorrelationId(String);

impl CorrelationId {
    pub const MAX_LEN: usize = 128;

    /// A new random id, for a saga whose caller did not choose one.
    pub fn new() -> Self {
        Self(Uuid::new_v4().to_string())
    }

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ValueError(format!(
                "a correlation id must be 1 to {} visible ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

value_schema!(CorrelationId, {
    "description": "The id that ties every request, event and log line of one saga together: 1 to 128 visible ASCII characters.",
    "type": "string",
    "pattern": "^[!-~]{1,128}$"
});

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

text_value!(CorrelationId);

/// The currency of an order's amounts: an ISO 4217 code in capitals (`USD`, `EUR`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValueError(
                "currency must be an ISO 4217 code of three capital letters, like USD or EUR"
                    .into(),
            ))
        }
    }

    /// The currency of every order from before orders named one (`orders.created` v1): the system
    /// charged in US dollars.
    pub fn legacy() -> Self {
        Self("USD".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

value_schema!(Currency, {
    "description": "The currency of the order's amounts: an ISO 4217 code in capitals.",
    "type": "string",
    "pattern": "^[A-Z]{3}$"
});

text_value!(Currency);

/// The opaque payment token the gateway charges (`tok_visa`, ...): 1–64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentMethod(String);

impl PaymentMethod {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > 64 {
            return Err(ValueError(
                "payment_method must be 1 to 64 characters long".into(),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValueError(
                "payment_method must not contain control characters".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// `char::is_control` is Unicode's Cc category: U+0000 to U+001F and U+007F to U+009F.
value_schema!(PaymentMethod, {
    "description": "The opaque payment token the gateway charges (tok_visa, ...): 1 to 64 characters, no control characters.",
    "type": "string",
    "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,64}$"
});

text_value!(PaymentMethod);

/// How many units of one product an order line asks for: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: i64 = 1000;

    pub fn new(raw: i64) -> Result<Self, ValueError> {
        if (1..=Self::MAX).contains(&raw) {
            Ok(Self(raw as u32))
        } else {
            Err(ValueError(format!(
                "quantity must be an integer from 1 to {}",
                Self::MAX
            )))
        }
    }

    pub fn get(&self) -> i64 {
        i64::from(self.0)
    }
}

value_schema!(Quantity, {
    "description": "How many units of one product a line holds.",
    "type": "integer",
    "minimum": 1,
    "maximum": Quantity::MAX
});

impl TryFrom<i64> for Quantity {
    type Error = ValueError;
    fn try_from(raw: i64) -> Result<Self, ValueError> {
        Self::new(raw)
    }
}

impl From<Quantity> for i64 {
    fn from(value: Quantity) -> i64 {
        value.get()
    }
}

/// An amount of money in cents, never negative. One currency for the whole system (for now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_cents(cents: i64) -> Result<Self, ValueError> {
        if cents >= 0 {
            Ok(Self(cents))
        } else {
            Err(ValueError("an amount of money cannot be negative".into()))
        }
    }

    pub fn cents(&self) -> i64 {
        self.0
    }

    /// `None` on overflow, which no real order reaches; callers treat it as a broken invariant.
    pub fn times(self, quantity: Quantity) -> Option<Money> {
        self.0.checked_mul(quantity.get()).map(Money)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }
}

value_schema!(Money, {
    "description": "An amount of money in cents, never negative.",
    "type": "integer",
    "minimum": 0,
    "maximum": i64::MAX
});

impl TryFrom<i64> for Money {
    type Error = ValueError;
    fn try_from(cents: i64) -> Result<Self, ValueError> {
        Self::from_cents(cents)
    }
}

impl From<Money> for i64 {
    fn from(value: Money) -> i64 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_ids_accept_the_documented_alphabet_only() {
        assert!(ProductId::parse("sku-1.a_b:C").is_ok());
        assert!(ProductId::parse("").is_err());
        assert!(ProductId::parse(&"x".repeat(65)).is_err());
        assert!(ProductId::parse(&"x".repeat(64)).is_ok());
        assert!(ProductId::parse("sku 1").is_err());
        assert!(ProductId::parse("sku/1").is_err());
    }

    #[test]
    fn quantity_is_between_one_and_a_thousand() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(1000).is_ok());
        assert!(Quantity::new(1001).is_err());
        assert!(Quantity::new(-3).is_err());
    }

    #[test]
    fn money_is_never_negative_and_multiplies_by_quantity() {
        assert!(Money::from_cents(-1).is_err());
        let price = Money::from_cents(1299).unwrap();
        assert_eq!(
            price.times(Quantity::new(2).unwrap()).unwrap().cents(),
            2598
        );
    }

    #[test]
    fn payment_method_rejects_empty_long_and_control_characters() {
        assert!(PaymentMethod::parse("tok_visa").is_ok());
        assert!(PaymentMethod::parse("").is_err());
        assert!(PaymentMethod::parse(&"a".repeat(65)).is_err());
        assert!(PaymentMethod::parse("tok\n").is_err());
    }

    #[test]
    fn correlation_ids_are_visible_ascii_of_bounded_length() {
        assert!(CorrelationId::parse("req-42_a.b:c/d").is_ok());
        assert!(CorrelationId::parse(&"c".repeat(128)).is_ok());
        for bad in [
            "",
            "two words",
            "line\nbreak",
            "tab\t",
            "ünï",
            &"c".repeat(129),
        ] {
            assert!(CorrelationId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<CorrelationId>("\"x\\r\\ny\"").is_err());
    }

    #[test]
    fn order_ids_round_trip_through_text() {
        let id = OrderId::new();
        assert_eq!(OrderId::parse(&id.to_string()).unwrap(), id);
        assert!(OrderId::parse("not-a-uuid").is_err());
    }
}
