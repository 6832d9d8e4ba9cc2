//! Request bodies read the way DPS reads them, by the official swagger's definitions: a value of
//! the wrong JSON type, or outside a definition's enum, is refused; properties a definition does
//! not have are dropped (DPS ignores members it does not know); a null is the same as leaving the
//! property out; read-only properties are the service's to fill, never the client's. Twin
//! collections are kept as sent.

use std::sync::LazyLock;

use serde_json::{Map, Value};

/// The swagger of the DPS service API the emulator answers (2021-10-01).
pub const SERVICE_SWAGGER: &str = include_str!("../../tests/specs/dps-service-2021-10-01.json");

static DEFINITIONS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    let swagger: Value = serde_json::from_str(SERVICE_SWAGGER).expect("the embedded swagger is JSON");
    swagger["definitions"].as_object().cloned().expect("the swagger has definitions")
});

/// Why a body does not fit its definition: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// A JSON path such as `attestation.type`.
    pub path: String,
    pub expected: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} must be {}", self.path, self.expected)
    }
}

/// Reads `value` as the swagger definition `name` (e.g. `IndividualEnrollment`).
pub fn read(name: &str, value: Value) -> Result<Value, Mismatch> {
    let definition = DEFINITIONS.get(name).unwrap_or_else(|| panic!("the swagger defines {name}"));
    read_schema(definition, value, name)
}

fn resolve(schema: &Value) -> &Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            DEFINITIONS.get(name).unwrap_or_else(|| panic!("the swagger defines {name}"))
        }
        None => schema,
    }
}

fn mismatch(path: &str, expected: impl Into<String>) -> Mismatch {
    Mismatch { path: path.to_owned(), expected: expected.into() }
}

fn read_schema(schema: &Value, value: Value, path: &str) -> Result<Value, Mismatch> {
    let schema = resolve(schema);
    // A twin collection (`additionalProperties` of its own) is the device's JSON, kept as sent.
    if schema.get("additionalProperties").is_some_and(Value::is_object) {
        return match value {
            Value::Object(_) => Ok(value),
            _ => Err(mismatch(path, "a JSON object")),
        };
    }
    let type_ = schema.get("type").and_then(Value::as_str).unwrap_or("object");
    match (type_, value) {
        ("object", Value::Object(fields)) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                // A free-form object (`payload`, `info`).
                return Ok(Value::Object(fields));
            };
            let mut read = Map::new();
            for (name, value) in fields {
                let Some(property) = properties.get(&name) else { continue };
                if value.is_null() || property.get("readOnly") == Some(&Value::Bool(true)) {
                    continue;
                }
                let value = read_schema(property, value, &format!("{path}.{name}"))?;
                read.insert(name, value);
            }
            Ok(Value::Object(read))
        }
        ("string", Value::String(text)) => match schema.get("enum").and_then(Value::as_array) {
            Some(allowed) if !allowed.iter().any(|a| a.as_str() == Some(&text)) => {
                let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                Err(mismatch(path, format!("one of {}", names.join(", "))))
            }
            _ => Ok(Value::String(text)),
        },
        ("integer", Value::Number(number)) if number.is_i64() || number.is_u64() => Ok(Value::Number(number)),
        ("boolean", Value::Bool(flag)) => Ok(Value::Bool(flag)),
        ("array", Value::Array(items)) => {
            let item_schema = schema.get("items").cloned().unwrap_or(Value::Null);
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| read_schema(&item_schema, item, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        (type_, _) => Err(mismatch(
            path,
            match type_ {
                "object" => "a JSON object",
                "string" => "a string",
                "integer" => "an integer",
                "boolean" => "true or false",
                "array" => "a list",
                other => other,
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_read_only_and_null_members_are_dropped_and_twins_kept() {
        let body = json!({
            "registrationId": "d1",
            "attestation": {"type": "tpm", "tpm": {"endorsementKey": "AAAA", "extra": 1}},
            "registrationState": {"status": "assigned"},
            "createdDateTimeUtc": "2020-01-01T00:00:00Z",
            "capabilities": null,
            "initialTwin": {"tags": {"site": {"floor": 3}, "a": "b"}},
            "misspelt": true,
        });
        assert_eq!(
            read("IndividualEnrollment", body).unwrap(),
            json!({
                "registrationId": "d1",
                "attestation": {"type": "tpm", "tpm": {"endorsementKey": "AAAA"}},
                "initialTwin": {"tags": {"site": {"floor": 3}, "a": "b"}},
            })
        );
    }

    #[test]
    fn wrong_types_and_enum_values_name_the_place() {
        let refused = |body: Value| read("EnrollmentGroup", body).unwrap_err().to_string();
        assert_eq!(
            refused(json!({"enrollmentGroupId": "g", "allocationPolicy": "nearest"})),
            "EnrollmentGroup.allocationPolicy must be one of hashed, geoLatency, static, custom"
        );
        assert_eq!(
            refused(json!({"enrollmentGroupId": "g", "iotHubs": ["a", 3]})),
            "EnrollmentGroup.iotHubs[1] must be a string"
        );
        assert_eq!(
            refused(json!({"enrollmentGroupId": "g", "capabilities": {"iotEdge": "yes"}})),
            "EnrollmentGroup.capabilities.iotEdge must be true or false"
        );
        assert_eq!(
            refused(json!({"enrollmentGroupId": "g", "initialTwin": {"tags": []}})),
            "EnrollmentGroup.initialTwin.tags must be a JSON object"
        );
    }
}
