//! Rows into Rust values, the same way on both backends: a row is a list of named column values, read
//! through serde. A struct with `#[derive(serde::Deserialize)]` reads its fields by column name, a tuple
//! reads the columns in order, and any other type (`i64`, `String`, `Option<…>`, a text enum) reads a
//! row of exactly one column. The values borrow from the backend's row, so nothing is copied twice.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

/// One column value as the backend returned it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ValueRef<'r> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'r str),
    Blob(&'r [u8]),
}

/// One row: the column names of its statement and its values, in the same order.
pub(crate) struct RowRef<'r> {
    pub names: Vec<&'r str>,
    pub values: Vec<ValueRef<'r>>,
}

/// Why a row did not fit the type asked for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub(crate) String);

impl de::Error for DecodeError {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        DecodeError(message.to_string())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(row: RowRef<'_>) -> Result<T, DecodeError> {
    T::deserialize(row)
}

impl<'r> RowRef<'r> {
    fn single(self) -> Result<ValueRef<'r>, DecodeError> {
        match self.values.as_slice() {
            [value] => Ok(*value),
            values => Err(DecodeError(format!(
                "expected a row of one column, got {} ({})",
                values.len(),
                self.names.join(", ")
            ))),
        }
    }
}

impl<'de> de::Deserializer<'de> for RowRef<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.single()?.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.single()?.deserialize_option(visitor)
    }

    /// A sequence is one column's blob (`Vec<u8>`); the columns in order are a tuple.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.single()?.deserialize_seq(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.single()?.deserialize_bool(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let columns = self.names.into_iter().zip(self.values);
        visitor.visit_map(MapDeserializer::new(columns))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(SeqDeserializer::new(self.values.into_iter()))
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct tuple_struct enum identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, DecodeError> for ValueRef<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for ValueRef<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self {
            ValueRef::Null => visitor.visit_unit(),
            ValueRef::Integer(n) => visitor.visit_i64(n),
            ValueRef::Real(x) => visitor.visit_f64(x),
            ValueRef::Text(text) => visitor.visit_borrowed_str(text),
            ValueRef::Blob(bytes) => visitor.visit_borrowed_bytes(bytes),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self {
            ValueRef::Null => visitor.visit_none(),
            value => visitor.visit_some(value),
        }
    }

    /// `Vec<u8>` asks for a sequence; a blob is one of bytes.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self {
            ValueRef::Blob(bytes) => visitor.visit_seq(SeqDeserializer::new(bytes.iter().copied())),
            value => value.deserialize_any(visitor),
        }
    }

    /// SQLite has no boolean type: it stores 0 and 1.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self {
            ValueRef::Integer(n) => visitor.visit_bool(n != 0),
            value => value.deserialize_any(visitor),
        }
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Line {
        product_id: String,
        quantity: i64,
        note: Option<String>,
        #[serde(rename = "payload")]
        bytes: Vec<u8>,
    }

    fn row<'r>(names: &[&'r str], values: Vec<ValueRef<'r>>) -> RowRef<'r> {
        RowRef {
            names: names.to_vec(),
            values,
        }
    }

    #[test]
    fn a_struct_reads_its_fields_by_column_name() {
        let names = ["quantity", "payload", "product_id", "note"];
        let values = vec![
            ValueRef::Integer(3),
            ValueRef::Blob(b"{}"),
            ValueRef::Text("p-1"),
            ValueRef::Null,
        ];
        let line: Line = decode(row(&names, values)).unwrap();
        assert_eq!(
            line,
            Line {
                product_id: "p-1".into(),
                quantity: 3,
                note: None,
                bytes: b"{}".to_vec(),
            }
        );
    }

    #[test]
    fn a_tuple_reads_columns_in_order_and_a_scalar_reads_the_only_column() {
        let names = ["a", "b"];
        let pair: (String, i64) =
            decode(row(&names, vec![ValueRef::Text("x"), ValueRef::Integer(7)])).unwrap();
        assert_eq!(pair, ("x".to_owned(), 7));
        let count: i64 = decode(row(&names[..1], vec![ValueRef::Integer(7)])).unwrap();
        assert_eq!(count, 7);
        let none: Option<i64> = decode(row(&names[..1], vec![ValueRef::Null])).unwrap();
        assert_eq!(none, None);
        let blob: Vec<u8> = decode(row(&names[..1], vec![ValueRef::Blob(b"{}")])).unwrap();
        assert_eq!(blob, b"{}");
    }

    #[test]
    fn a_row_that_does_not_fit_says_why() {
        let names = ["a", "b"];
        let two = || vec![ValueRef::Integer(1), ValueRef::Integer(2)];
        let scalar = decode::<i64>(row(&names, two())).unwrap_err();
        assert!(scalar.0.contains("one column, got 2 (a, b)"), "{scalar}");
        let missing = decode::<Line>(row(&names, two())).unwrap_err();
        assert!(missing.0.contains("missing field"), "{missing}");
        let null = decode::<i64>(row(&names[..1], vec![ValueRef::Null])).unwrap_err();
        assert!(null.0.contains("unit"), "{null}");
    }
}
