//! `text_enum!`: an enum whose variants each have one stable text form, written once. That text is what
//! the wire, the database, the API and the logs use; the macro derives `as_str`, `parse`, `Display`,
//! `FromStr`, `TryFrom<String>` (so a row struct reads it with `#[sqlx(try_from = "String")]`), serde
//! and the JSON Schema from the one table, so no two places can spell a variant differently.

/// Declares a fieldless enum with the text of each variant:
///
/// ```
/// contracts::text_enum! {
///     /// Where a parcel is.
///     pub enum Parcel {
///         Packed => "packed",
///         Shipped => "shipped",
///     }
/// }
/// assert_eq!(Parcel::parse("shipped"), Some(Parcel::Shipped));
/// assert_eq!(Parcel::Packed.to_string(), "packed");
/// ```
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The variant's text form.
            pub const fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The variant whose text form is `raw`, if any.
            pub fn parse(raw: &str) -> Option<Self> {
                match raw {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The text forms, for error messages: `a, b or c`.
            pub fn choices() -> String {
                $crate::text_enum::choices(Self::ALL.iter().map(Self::as_str))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::ValueError;

            fn from_str(raw: &str) -> Result<Self, $crate::ValueError> {
                Self::parse(raw).ok_or_else(|| {
                    $crate::ValueError(format!("'{}' is not one of {}", raw.escape_debug(), Self::choices()))
                })
            }
        }

        impl ::std::convert::TryFrom<String> for $name {
            type Error = $crate::ValueError;

            fn try_from(raw: String) -> Result<Self, $crate::ValueError> {
                raw.parse()
            }
        }

        impl $crate::text_enum::__serde::Serialize for $name {
            fn serialize<S: $crate::text_enum::__serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::text_enum::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::text_enum::__serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = <::std::borrow::Cow<'de, str> as $crate::text_enum::__serde::Deserialize>::deserialize(deserializer)?;
                raw.parse().map_err(<D::Error as $crate::text_enum::__serde::de::Error>::custom)
            }
        }

        impl $crate::text_enum::__schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut $crate::text_enum::__schemars::SchemaGenerator) -> $crate::text_enum::__schemars::Schema {
                $crate::text_enum::__schemars::json_schema!({
                    "type": "string",
                    "enum": [$($text),+]
                })
            }
        }

        impl $crate::text_enum::__utoipa::PartialSchema for $name {
            fn schema() -> $crate::text_enum::__utoipa::openapi::RefOr<$crate::text_enum::__utoipa::openapi::schema::Schema> {
                $crate::values::openapi_schema($crate::text_enum::__serde_json::json!({
                    "type": "string",
                    "enum": [$($text),+]
                }))
            }
        }

        impl $crate::text_enum::__utoipa::ToSchema for $name {
            fn name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
        }
    };
}

#[doc(hidden)]
pub use schemars as __schemars;
#[doc(hidden)]
pub use serde as __serde;
#[doc(hidden)]
pub use serde_json as __serde_json;
#[doc(hidden)]
pub use utoipa as __utoipa;

/// `a`, `a or b`, `a, b or c`.
#[doc(hidden)]
pub fn choices<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    let texts: Vec<&str> = texts.collect();
    match texts.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    text_enum! {
        /// A test enum.
        enum Light {
            Red => "red",
            Amber => "amber",
            Green => "green",
        }
    }

    #[test]
    fn every_variant_round_trips_through_its_text() {
        for light in Light::ALL {
            assert_eq!(Light::parse(light.as_str()), Some(*light));
            assert_eq!(light.to_string().parse::<Light>().unwrap(), *light);
            let json = serde_json::to_string(light).unwrap();
            assert_eq!(serde_json::from_str::<Light>(&json).unwrap(), *light);
        }
        assert_eq!(Light::parse("blue"), None);
    }

    #[test]
    fn an_unknown_text_names_the_choices() {
        let error = "blue".parse::<Light>().unwrap_err();
        assert_eq!(error.0, "'blue' is not one of red, amber or green");
        assert!(serde_json::from_str::<Light>("\"blue\"").is_err());
        assert!(serde_json::from_str::<Light>("3").is_err());
    }
}
