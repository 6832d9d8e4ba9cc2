//! A swagger as a contract: the operations it declares, and a check that an answer is one of
//! those it allows.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::Value;

/// The swagger's operations: operation id → (method, path template, operation object).
pub fn operations(spec: &Value) -> BTreeMap<String, (Method, String, Value)> {
    let mut operations = BTreeMap::new();
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_owned();
            operations.insert(id, (method.to_uppercase().parse().unwrap(), path.clone(), operation.clone()));
        }
    }
    operations
}

/// Checks answers against the schema the swagger declares for an operation and status.
pub struct Contract {
    pub spec: Value,
    pub operations: BTreeMap<String, (Method, String, Value)>,
}

impl Contract {
    pub fn new(spec: Value) -> Self {
        Self { operations: operations(&spec), spec }
    }

    /// Fails with the violations when `body` is not what `operation` may answer with `status`.
    pub fn check(&self, operation: &str, status: u16, body: &Value) {
        let responses = &self.operations[operation].2["responses"];
        let declared =
            responses.get(status.to_string()).filter(|_| status < 400).unwrap_or(&responses["default"]);
        let Some(schema) = declared.get("schema") else {
            assert!(body.is_null(), "{operation} {status} declares no body but got {body}");
            return;
        };
        let mut schema = schema.clone();
        schema["definitions"] = self.spec["definitions"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .build(&schema)
            .expect("the swagger schema compiles");
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{operation} answered {status} with a body the swagger does not allow: {errors:?}\n{body}"
        );
    }
}
