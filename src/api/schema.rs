//! Hand-written schema pieces that the derives cannot express: free-form JSON, the conditions list
//! and the validation patterns shared by several kinds.

use kube::core::{Message, Rule};
use schemars::{Schema, generate::SchemaGenerator, json_schema};

// Formats are CEL rules rather than `pattern`s: the API server's message for a pattern quotes the
// regular expression, a rule's message can say in words what is allowed.

/// DNS-1123 subdomain: what Kubernetes accepts as the name of a Secret, ConfigMap or custom resource.
const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A key in a Secret's or ConfigMap's data.
const DATA_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// DPS registration and enrollment group ids: alphanumerics and `-._:`, the last character
/// alphanumeric or `-`, at most 128 characters (checked by `maxLength`).
const DPS_ID_PATTERN: &str = r"^[A-Za-z0-9\-._:]*[A-Za-z0-9\-]$";

/// IoT Hub device ids: ASCII alphanumerics and `-.+%_#*?!(),=@$'`.
const DEVICE_ID_PATTERN: &str = r"^[A-Za-z0-9\-.+%_#*?!(),=@$']+$";

/// A DNS host name with at least two labels, e.g. `contoso.azure-devices.net`.
const HOST_NAME_PATTERN: &str =
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63 letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit.
const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// A Go-style duration such as `30s`, `10m` or `1h30m`.
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// An Azure API version: a real calendar date, e.g. `2021-10-01`, or one with `-preview`.
pub const API_VERSION_PATTERN: &str = r"^[0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-9]))(-preview)?$";

/// Base64 (standard alphabet, padded).
const BASE64_PATTERN: &str = r"^[A-Za-z0-9+/]*={0,2}$";

/// A UUID, as Entra ID client and tenant ids are written.
const UUID_PATTERN: &str = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

fn matching(pattern: &str, message: &str) -> Rule {
    Rule::new(format!(r#"self.matches(r"{pattern}")"#)).message(message)
}

/// The name of a Secret or ConfigMap.
pub fn object_name() -> Rule {
    matching(
        DNS_SUBDOMAIN_PATTERN,
        "must be a Kubernetes object name: lower-case letters, digits, - and ., starting and ending with a \
         letter or digit",
    )
}

/// A key of a Secret's or ConfigMap's data.
pub fn data_key() -> Rule {
    matching(DATA_KEY_PATTERN, "must be a data key: letters, digits, - _ and . only")
}

/// A registration or enrollment group id.
pub fn dps_id() -> Rule {
    matching(
        DPS_ID_PATTERN,
        "must be at most 128 letters, digits and - . _ : ending in a letter, digit or - (what DPS accepts)",
    )
}

/// An IoT Hub device id.
pub fn device_id() -> Rule {
    matching(
        DEVICE_ID_PATTERN,
        "must be at most 128 ASCII letters, digits and - . + % _ # * ? ! ( ) , = @ $ ' (what IoT Hub accepts \
         as a device id)",
    )
}

/// A host name; `example` shows one.
pub fn host_name(example: &str) -> Rule {
    matching(
        HOST_NAME_PATTERN,
        &format!("must be a host name such as {example}, without scheme, port or path"),
    )
}

/// The host names of a list of IoT hubs: the message names the first entry that is not one.
pub fn hub_host_names() -> Rule {
    let rule = format!(r#"self.all(hub, hub.matches(r"{HOST_NAME_PATTERN}"))"#);
    let message = format!(
        r#"'entry "' + self.filter(hub, !hub.matches(r"{HOST_NAME_PATTERN}"))[0] + '" must be a host name such as contoso-hub.azure-devices.net, without scheme, port or path'"#
    );
    Rule::new(rule).message(Message::Expression(message))
}

/// Registration ids that are also keys of a Secret's data: DPS ids without `:`.
pub fn device_key_ids() -> Rule {
    let pattern = r"^[A-Za-z0-9\-._]*[A-Za-z0-9\-]$";
    let rule = format!(r#"self.all(id, id.matches(r"{pattern}"))"#);
    let message = format!(
        r#"'registration id "' + self.filter(id, !id.matches(r"{pattern}"))[0] + '" must be letters, digits and - . _ ending in a letter, digit or - (it names a key of the Secret)'"#
    );
    Rule::new(rule).message(Message::Expression(message))
}

/// A Go-style duration.
pub fn duration() -> Rule {
    matching(DURATION_PATTERN, "must be a duration such as 30s, 10m or 1h30m")
}

/// Base64 text.
pub fn base64() -> Rule {
    matching(BASE64_PATTERN, "must be base64 (letters, digits, + and /, padded with =)")
}

/// A DPS instance's service host, not the global device endpoint that every DPS shares.
pub fn not_the_device_endpoint() -> Rule {
    Rule::new(r#"!self.matches(r"(?i)^global\.azure-devices-provisioning\.")"#).message(
        "is DPS's global device endpoint, which devices register with; give your DPS instance's service host, \
         such as contoso.azure-devices-provisioning.net (the portal's Overview page shows it as Service endpoint)",
    )
}

/// A TPM public key given as base64, not as the persistent handle the key lives at in the TPM.
pub fn not_a_tpm_handle() -> Rule {
    Rule::new(r#"!self.matches(r"^0[xX][0-9a-fA-F]{1,8}$")"#).message(
        "is a TPM persistent handle such as 0x81000001, not a key: give the public key itself, base64, as \
         tpm2_readpublic or the device SDK prints it",
    )
}

/// The keys of a label selector (`matchLabels` and `matchExpressions`): each a label key, since no
/// namespace can carry another. The message names the first that is not.
pub fn label_selector_keys() -> Rule {
    let pattern = LABEL_KEY_PATTERN;
    let keys = "(has(self.matchLabels) ? self.matchLabels.map(k, k) : []) + \
                (has(self.matchExpressions) ? self.matchExpressions.map(e, e.key) : [])";
    let rule = format!(r#"({keys}).all(k, k.matches(r"{pattern}"))"#);
    let message = format!(
        r#"'label key "' + ({keys}).filter(k, !k.matches(r"{pattern}"))[0] + '" is not a label key (letters, digits, - _ and ., at most 63, after an optional prefix such as iot.contoso.com/): no namespace can carry it'"#
    );
    Rule::new(rule).message(Message::Expression(message))
}

/// Bounds a label selector's schema as Kubernetes bounds label selectors (keys, values, how many),
/// so that rules over its keys fit the API server's CEL cost budget.
pub fn bounded_label_selector(schema: &mut Schema) {
    let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else { return };
    let bound = |value: Option<&mut serde_json::Value>, limits: serde_json::Value| {
        if let (Some(object), Some(limits)) = (value.and_then(|v| v.as_object_mut()), limits.as_object()) {
            object.extend(limits.clone());
        }
    };
    if let Some(labels) = properties.get_mut("matchLabels") {
        bound(Some(labels), serde_json::json!({"maxProperties": 64}));
        bound(labels.get_mut("additionalProperties"), serde_json::json!({"maxLength": 63}));
    }
    if let Some(expressions) = properties.get_mut("matchExpressions") {
        bound(Some(expressions), serde_json::json!({"maxItems": 64}));
        let item = expressions.pointer_mut("/items/properties");
        if let Some(item) = item.and_then(|i| i.as_object_mut()) {
            bound(item.get_mut("key"), serde_json::json!({"maxLength": 317}));
            bound(item.get_mut("operator"), serde_json::json!({"maxLength": 12}));
            if let Some(values) = item.get_mut("values") {
                bound(Some(values), serde_json::json!({"maxItems": 64}));
                bound(values.get_mut("items"), serde_json::json!({"maxLength": 63}));
            }
        }
    }
}

/// A UUID.
pub fn uuid() -> Rule {
    matching(UUID_PATTERN, "must be a UUID such as 00000000-0000-0000-0000-000000000000")
}

/// Any JSON object, kept as written (twin tags, desired properties, device information).
// CEL cannot type such an object (neither as an object with unknown fields nor as a map of
// untyped values), so rules about its contents live in the controller.
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `metav1.Condition` list, merged by `type` under server-side apply.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let condition = generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    json_schema!({
        "type": "array",
        "description": "The latest observations of the resource's state. `Ready` summarises it; \
            `Reconciling` and `Stalled` follow the kstatus conventions used by `kubectl wait`, \
            Flux and Argo CD.",
        "items": condition,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}

/// Makes optional fields plain optional fields: drops `nullable: true` and `null` enum members.
///
/// The derive marks every `Option` nullable, which would make the API server keep an explicit
/// `null` (and CEL's `has()` see the field as set). Without it, a `null` is pruned like an omitted
/// field. We never serialize `None` as `null`, so nothing we write needs it.
pub fn drop_nullable(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(object) => {
            object.remove("nullable");
            if let Some(serde_json::Value::Array(members)) = object.get_mut("enum") {
                members.retain(|member| !member.is_null());
            }
            object.values_mut().for_each(drop_nullable);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nullable),
        _ => {}
    }
}

/// Joins the lines of each paragraph of every `description`: doc comments are wrapped for the
/// source, while `kubectl explain` wraps text to the terminal itself.
pub fn unwrap_descriptions(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(object) => {
            if let Some(serde_json::Value::String(description)) = object.get_mut("description") {
                *description = unwrap_paragraphs(description);
            }
            object.values_mut().for_each(unwrap_descriptions);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn unwrap_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Adds `property` to an object schema only so that setting it is refused with `message`.
///
/// Unknown fields are silently pruned for clients that do not ask for strict field validation,
/// which would turn a mistake (a cross-namespace reference, TPM on a group) into a different
/// valid object. Declaring the field and refusing it gives every client the same clear error.
/// `property_schema` should accept what users would write there, so that the rule, not a type
/// error, is what they see.
pub fn refuse_property(
    schema: &mut Schema,
    property: &str,
    property_schema: serde_json::Value,
    description: &str,
    message: &str,
) {
    let object = schema.ensure_object();
    let properties =
        object.entry("properties").or_insert_with(|| serde_json::Value::Object(Default::default()));
    if let Some(properties) = properties.as_object_mut() {
        let mut property_schema = property_schema;
        property_schema["description"] = description.into();
        properties.insert(property.to_owned(), property_schema);
    }
    let rules =
        object.entry("x-kubernetes-validations").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(rules) = rules.as_array_mut() {
        rules.push(serde_json::json!({
            "rule": format!("!has(self.{property})"),
            "message": message,
            "fieldPath": format!(".{property}"),
            "reason": "FieldValueForbidden",
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drop_nullable_removes_nullable_and_null_enum_members_at_every_depth() {
        let mut schema = json!({
            "type": "object",
            "nullable": true,
            "properties": {
                "policy": {"type": "string", "nullable": true, "enum": ["a", null, "b"]},
                "list": {"type": "array", "items": {"type": "string", "nullable": true}},
            },
        });
        drop_nullable(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {
                    "policy": {"type": "string", "enum": ["a", "b"]},
                    "list": {"type": "array", "items": {"type": "string"}},
                },
            })
        );
    }

    #[test]
    fn unwrap_descriptions_joins_lines_within_paragraphs_only() {
        let mut schema = json!({
            "description": "First line\nsecond line.\n\nNext paragraph\n  indented.",
            "properties": {"a": {"description": "one\ntwo"}, "description": {"type": "string"}},
        });
        unwrap_descriptions(&mut schema);
        assert_eq!(schema["description"], json!("First line second line.\n\nNext paragraph indented."));
        assert_eq!(schema["properties"]["a"]["description"], json!("one two"));
        assert_eq!(schema["properties"]["description"], json!({"type": "string"}));
    }

    #[test]
    fn refuse_property_declares_the_field_and_a_rule_naming_it() {
        let mut schema = Schema::from(
            json!({"type": "object", "properties": {"name": {"type": "string"}}})
                .as_object()
                .unwrap()
                .clone(),
        );
        refuse_property(
            &mut schema,
            "namespace",
            json!({"type": "string"}),
            "not allowed",
            "remove namespace",
        );
        let value = schema.to_value();
        assert_eq!(value["properties"]["namespace"], json!({"type": "string", "description": "not allowed"}));
        assert_eq!(value["properties"]["name"]["type"], json!("string"));
        let rule = &value["x-kubernetes-validations"][0];
        assert_eq!(rule["rule"], json!("!has(self.namespace)"));
        assert_eq!(rule["fieldPath"], json!(".namespace"));
        assert_eq!(rule["message"], json!("remove namespace"));
    }
}
