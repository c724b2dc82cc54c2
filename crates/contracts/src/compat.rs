//! The compatibility rules between two versions of one schema, as `orderflow schemas check` applies them.
//! Within a version, a schema may only widen: every message valid against the old schema must stay
//! valid against the new one, and every field a reader of the old one relies on must still be there.
//! Anything else is a breaking change and needs a new version beside the old one.
//!
//! The walk understands the shapes `schemars` generates: `$ref` into `$defs`, `anyOf` with `null` for
//! an optional value, `type` as a name or a list, objects, arrays, enums, bounds and patterns.

use crate::schema::resolve;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

crate::text_enum! {
    /// What a change within a version must not do.
    pub enum Rule {
        RequiredFieldRemoved => "required field removed",
        RequiredFieldAdded => "required field added without a default",
        TypeNarrowed => "type narrowed or changed",
        EnumValueRemoved => "enum value removed",
        AdditionalPropertiesTightened => "additionalProperties tightened",
    }
}

/// One incompatible change: where (a JSON pointer into the message, `*` for any array element),
/// which rule, and what exactly changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    pub path: String,
    pub rule: Rule,
    pub detail: String,
}

impl fmt::Display for Breaking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}: {}", self.rule.as_str(), self.detail)
    }
}

/// How deep `$ref`s are followed; our schemas nest three or four levels.
const MAX_DEPTH: usize = 32;

/// Every breaking change from `old` to `new`, two root schemas of the same type and version.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<Breaking> {
    let mut walk = Walk {
        old_root: old,
        new_root: new,
        found: Vec::new(),
    };
    walk.compare(old, new, String::new(), 0);
    walk.found
        .sort_by(|a, b| (&a.path, a.rule).cmp(&(&b.path, b.rule)));
    walk.found
}

struct Walk<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    found: Vec<Breaking>,
}

impl<'a> Walk<'a> {
    fn breaking(&mut self, path: &str, rule: Rule, detail: String) {
        self.found.push(Breaking {
            path: path.to_owned(),
            rule,
            detail,
        });
    }

    fn compare(&mut self, old: &'a Value, new: &'a Value, path: String, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let old = resolve(self.old_root, old);
        let new = resolve(self.new_root, new);
        let (old_nullable, old) = split_null(self.old_root, old);
        let (new_nullable, new) = split_null(self.new_root, new);
        if old_nullable && !new_nullable {
            self.breaking(
                &path,
                Rule::TypeNarrowed,
                "null is no longer allowed".into(),
            );
        }
        let (Some(old), Some(new)) = (old, new) else {
            return;
        };
        self.compare_types(old, new, &path);
        self.compare_bounds(old, new, &path);
        self.compare_enum(old, new, &path);
        self.compare_object(old, new, &path, depth);
        if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
            self.compare(old_items, new_items, format!("{path}/*"), depth + 1);
        }
    }

    fn compare_types(&mut self, old: &Value, new: &Value, path: &str) {
        match (types(old), types(new)) {
            (None, Some(new_types)) => self.breaking(
                path,
                Rule::TypeNarrowed,
                format!("any type → {}", listed(&new_types)),
            ),
            (Some(old_types), Some(new_types)) if !old_types.is_subset(&new_types) => self
                .breaking(
                    path,
                    Rule::TypeNarrowed,
                    format!("{} → {}", listed(&old_types), listed(&new_types)),
                ),
            _ => {}
        }
        for keyword in ["format", "pattern"] {
            if let Some(now) = new.get(keyword)
                && old.get(keyword) != Some(now)
            {
                let before = old.get(keyword).map_or("none".to_owned(), Value::to_string);
                self.breaking(
                    path,
                    Rule::TypeNarrowed,
                    format!("{keyword} {before} → {now}"),
                );
            }
        }
    }

    /// A lower bound raised or an upper bound lowered (or one added) refuses values the old schema
    /// accepted.
    fn compare_bounds(&mut self, old: &Value, new: &Value, path: &str) {
        const LOWER: [&str; 4] = ["minimum", "exclusiveMinimum", "minLength", "minItems"];
        const UPPER: [&str; 4] = ["maximum", "exclusiveMaximum", "maxLength", "maxItems"];
        for (keywords, tighter) in [
            (LOWER, (|old, new| new > old) as fn(f64, f64) -> bool),
            (UPPER, |old, new| new < old),
        ] {
            for keyword in keywords {
                let Some(now) = new.get(keyword).and_then(Value::as_f64) else {
                    continue;
                };
                match old.get(keyword).and_then(Value::as_f64) {
                    Some(before) if !tighter(before, now) => {}
                    Some(before) => self.breaking(
                        path,
                        Rule::TypeNarrowed,
                        format!("{keyword} {before} → {now}"),
                    ),
                    None => {
                        self.breaking(path, Rule::TypeNarrowed, format!("{keyword} {now} added"))
                    }
                }
            }
        }
    }

    fn compare_enum(&mut self, old: &Value, new: &Value, path: &str) {
        let Some(now) = new.get("enum").and_then(Value::as_array) else {
            return;
        };
        match old.get("enum").and_then(Value::as_array) {
            Some(before) => {
                for value in before.iter().filter(|value| !now.contains(value)) {
                    self.breaking(path, Rule::EnumValueRemoved, value.to_string());
                }
            }
            None => self.breaking(
                path,
                Rule::TypeNarrowed,
                format!("limited to the values {}", Value::Array(now.clone())),
            ),
        }
    }

    fn compare_object(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        let old_properties = old.get("properties").and_then(Value::as_object);
        let new_properties = new.get("properties").and_then(Value::as_object);
        if old_properties.is_none() && new_properties.is_none() {
            return;
        }
        let new_field = |name: &str| new_properties.and_then(|properties| properties.get(name));
        let old_required = required(old);
        let new_required = required(new);
        let closed =
            |schema: &Value| schema.get("additionalProperties") == Some(&Value::Bool(false));
        if closed(new) && !closed(old) {
            self.breaking(
                path,
                Rule::AdditionalPropertiesTightened,
                "fields the schema does not name are now refused".into(),
            );
        }
        for name in &old_required {
            let field = format!("{path}/{name}");
            if new_field(name).is_none() {
                self.breaking(
                    &field,
                    Rule::RequiredFieldRemoved,
                    "no longer in the schema".into(),
                );
            } else if !new_required.contains(name) {
                self.breaking(&field, Rule::RequiredFieldRemoved, "now optional".into());
            }
        }
        for name in new_required.difference(&old_required) {
            if new_field(name).is_none_or(|field| field.get("default").is_none()) {
                self.breaking(
                    &format!("{path}/{name}"),
                    Rule::RequiredFieldAdded,
                    "messages written without it are refused".into(),
                );
            }
        }
        for (name, before) in old_properties.into_iter().flatten() {
            let field = format!("{path}/{name}");
            match new_field(name) {
                Some(now) => self.compare(before, now, field, depth + 1),
                // Dropping an optional field only matters if messages carrying it are now refused.
                None if closed(new) && !old_required.contains(name.as_str()) => self.breaking(
                    &field,
                    Rule::AdditionalPropertiesTightened,
                    "optional field removed: messages that carry it are refused".into(),
                ),
                None => {}
            }
        }
    }
}

/// An `anyOf` of one schema and `null` (how an `Option` of a named type is written) as whether null is
/// allowed, and the other schema. Any other schema: whether its `type` lists null, and itself.
fn split_null<'a>(root: &'a Value, schema: &'a Value) -> (bool, Option<&'a Value>) {
    if let Some(variants) = schema.get("anyOf").and_then(Value::as_array) {
        let is_null = |variant: &Value| variant.get("type") == Some(&Value::from("null"));
        let nullable = variants.iter().any(is_null);
        let rest: Vec<&Value> = variants
            .iter()
            .filter(|variant| !is_null(variant))
            .collect();
        return match rest.as_slice() {
            [one] => (nullable, Some(resolve(root, one))),
            _ => (nullable, Some(schema)),
        };
    }
    let nullable = match schema.get("type") {
        Some(Value::String(name)) => name == "null",
        Some(Value::Array(names)) => names.contains(&Value::from("null")),
        _ => false,
    };
    (nullable, Some(schema))
}

/// The JSON types a schema allows, without null; `None` when it does not say (any type).
fn types(schema: &Value) -> Option<BTreeSet<&str>> {
    let listed: Vec<&str> = match schema.get("type")? {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    // An integer is a number: widening integer to number is compatible.
    let mut set: BTreeSet<&str> = listed.into_iter().filter(|name| *name != "null").collect();
    if set.contains("number") {
        set.insert("integer");
    }
    Some(set)
}

fn required(schema: &Value) -> BTreeSet<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn listed(types: &BTreeSet<&str>) -> String {
    types.iter().copied().collect::<Vec<_>>().join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A schema shaped like the generated ones: a root object, a line type in `$defs`, an enum, an
    /// optional reference.
    fn before() -> Value {
        json!({
            "$defs": {
                "Line": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[a-z]+$"},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000}
                    },
                    "required": ["sku", "quantity"]
                },
                "Reason": {"type": "string", "enum": ["timeout", "declined"]},
                "Id": {"type": "string", "format": "uuid"}
            },
            "type": "object",
            "properties": {
                "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}, "minItems": 1},
                "reason": {"$ref": "#/$defs/Reason"},
                "note": {"type": ["string", "null"]},
                "cause": {"anyOf": [{"$ref": "#/$defs/Id"}, {"type": "null"}]},
                "extra": true
            },
            "required": ["lines", "reason"]
        })
    }

    fn changed(change: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut after = before();
        change(&mut after);
        breaking_changes(&before(), &after)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn an_unchanged_or_widened_schema_is_compatible() {
        assert_eq!(changed(|_| {}), Vec::<String>::new());
        let widened = changed(|s| {
            s["$defs"]["Reason"]["enum"] = json!(["timeout", "declined", "fraud"]);
            s["$defs"]["Line"]["properties"]["quantity"]["maximum"] = json!(5000);
            s["$defs"]["Line"]["properties"]["quantity"]["type"] = json!("number");
            s["properties"]["lines"]
                .as_object_mut()
                .unwrap()
                .remove("minItems");
            s["properties"]["added"] = json!({"type": "string"});
            s["properties"]["defaulted"] = json!({"type": "string", "default": "x"});
            s["required"] = json!(["lines", "reason", "defaulted"]);
        });
        assert_eq!(widened, Vec::<String>::new());
    }

    #[test]
    fn a_required_field_removed_or_made_optional_breaks() {
        let found = changed(|s| {
            s["properties"].as_object_mut().unwrap().remove("reason");
            s["$defs"]["Line"]["required"] = json!(["sku"]);
        });
        assert_eq!(
            found,
            [
                "/lines/*/quantity: required field removed: now optional",
                "/reason: required field removed: no longer in the schema",
            ]
        );
    }

    #[test]
    fn a_required_field_added_without_a_default_breaks() {
        let found = changed(|s| {
            s["properties"]["currency"] = json!({"type": "string"});
            s["required"] = json!(["lines", "reason", "currency"]);
        });
        assert_eq!(
            found,
            [
                "/currency: required field added without a default: messages written without it are refused"
            ]
        );
    }

    #[test]
    fn a_type_narrowed_or_changed_breaks() {
        let found = changed(|s| {
            s["$defs"]["Line"]["properties"]["quantity"]["type"] = json!("string");
            s["$defs"]["Line"]["properties"]["sku"]["pattern"] = json!("^[a-z]{1,8}$");
            s["properties"]["note"]["type"] = json!("string");
            s["properties"]["cause"] = json!({"$ref": "#/$defs/Id"});
            s["properties"]["lines"]["maxItems"] = json!(50);
            s["$defs"]["Line"]["properties"]["quantity"]["minimum"] = json!(2);
        });
        assert_eq!(
            found,
            [
                "/cause: type narrowed or changed: null is no longer allowed",
                "/lines: type narrowed or changed: maxItems 50 added",
                "/lines/*/quantity: type narrowed or changed: integer → string",
                "/lines/*/quantity: type narrowed or changed: minimum 1 → 2",
                r#"/lines/*/sku: type narrowed or changed: pattern "^[a-z]+$" → "^[a-z]{1,8}$""#,
                "/note: type narrowed or changed: null is no longer allowed",
            ]
        );
    }

    #[test]
    fn an_enum_value_removed_breaks() {
        let found = changed(|s| s["$defs"]["Reason"]["enum"] = json!(["timeout"]));
        assert_eq!(found, [r#"/reason: enum value removed: "declined""#]);
    }

    #[test]
    fn additional_properties_tightened_breaks() {
        let found = changed(|s| {
            s["additionalProperties"] = json!(false);
            s["properties"].as_object_mut().unwrap().remove("extra");
        });
        assert_eq!(
            found,
            [
                "/: additionalProperties tightened: fields the schema does not name are now refused",
                "/extra: additionalProperties tightened: optional field removed: messages that carry it are refused",
            ]
        );
    }
}
