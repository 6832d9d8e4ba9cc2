//! What DPS refuses in an enrollment, with DPS-like 400 answers, and what it fills in. Enrollments
//! are the swagger's JSON, as [`crate::swagger::read`] leaves them.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Map, Value, json};

use super::{certificate, error::ApiError, kind::Kind};

/// Registration and enrollment group ids: at most 128 alphanumerics and `-._:`, the last one
/// alphanumeric or `-`.
pub fn check_id(kind: Kind, id: &str) -> Result<(), ApiError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
    let last_ok = id.chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
    if id.is_empty() || id.len() > 128 || !id.chars().all(valid_char) || !last_ok {
        return Err(ApiError::bad_request(
            400002,
            format!(
                "The {} '{id}' is invalid: use up to 128 alphanumerics and '-', '.', '_', ':', ending in an alphanumeric or '-'.",
                kind.id_name()
            ),
        ));
    }
    Ok(())
}

/// IoT Hub device ids: at most 128 ASCII alphanumerics and `-.+%_#*?!(),=@$'`.
pub fn check_device_id(device_id: &str) -> Result<(), ApiError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-.+%_#*?!(),=@$'".contains(c);
    if device_id.is_empty() || device_id.len() > 128 || !device_id.chars().all(valid_char) {
        return Err(ApiError::bad_request(400003, format!("The device id '{device_id}' is invalid.")));
    }
    Ok(())
}

/// The allocation settings DPS refuses: hubs that are not linked, a custom allocation without a
/// usable webhook, a static allocation over more than one hub.
pub fn check_allocation(item: &Map<String, Value>, linked_hubs: Option<&[String]>) -> Result<(), ApiError> {
    let hubs: Vec<&str> = item
        .get("iotHubs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(linked) = linked_hubs
        && let Some(unknown) = hubs.iter().find(|hub| !linked.iter().any(|l| l.eq_ignore_ascii_case(hub)))
    {
        return Err(ApiError::bad_request(
            400012,
            format!("The IoT hub '{unknown}' is not linked to this provisioning service."),
        ));
    }
    match item.get("allocationPolicy").and_then(Value::as_str) {
        Some("custom") => {
            let Some(custom) = item.get("customAllocationDefinition") else {
                return Err(ApiError::bad_request(
                    400013,
                    "Custom allocation needs customAllocationDefinition with webhookUrl and apiVersion.",
                ));
            };
            let field = |name| custom.get(name).and_then(Value::as_str).unwrap_or_default();
            if !field("webhookUrl").starts_with("https://") {
                return Err(ApiError::bad_request(
                    400013,
                    "customAllocationDefinition.webhookUrl must be an https URL.",
                ));
            }
            // Read by characters: the value is the client's, and may be any text.
            let date: String = field("apiVersion").chars().take(10).collect();
            let is_date = date.len() == 10
                && date
                    .chars()
                    .enumerate()
                    .all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
            if !is_date || date.as_str() < "2018-09-01" {
                return Err(ApiError::bad_request(
                    400013,
                    "customAllocationDefinition.apiVersion must be 2018-09-01-preview or later.",
                ));
            }
        }
        // Without iotHubs DPS takes the hub from its linked hubs: it accepts `static` with none
        // (azure-sdk-for-python, `test_device_registration.pyTestDeviceRegistrationtest_device_registration_lifecycle.json`,
        // where a device then registers to the one linked hub). The swagger names "the desired
        // IoT hub": more than one is refused.
        Some("static") if hubs.len() > 1 => {
            return Err(ApiError::bad_request(
                400014,
                "Static allocation takes at most one IoT hub in iotHubs.",
            ));
        }
        _ => {}
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(400004, message)
}

/// Checks an attestation and makes it what DPS stores: keys checked, or generated when omitted
/// (kept from `existing` on an update), certificate info computed from the certificates, which
/// are never kept.
pub fn normalize_attestation(
    kind: Kind,
    attestation: Option<Value>,
    existing: Option<&Value>,
    now: jiff::Timestamp,
) -> Result<Value, ApiError> {
    let Some(Value::Object(mut attestation)) = attestation else {
        return Err(invalid(format!("The {} needs an attestation.", kind.what())));
    };
    let type_ = attestation.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if type_.is_empty() {
        return Err(invalid("The attestation needs a type: tpm, x509 or symmetricKey."));
    }
    if let Some(other) =
        ["tpm", "x509", "symmetricKey"].iter().find(|b| **b != type_ && attestation.contains_key(**b))
    {
        return Err(invalid(format!(
            "The attestation of type {type_} also carries a {other} attestation; send only the one of its type."
        )));
    }
    let existing_type = existing.and_then(|e| e["type"].as_str());
    if let Some(existing_type) = existing_type
        && existing_type != type_
    {
        return Err(invalid(format!(
            "The attestation type cannot change from {existing_type} to {type_}; delete the enrollment and create it again."
        )));
    }
    match type_.as_str() {
        "tpm" => check_tpm(kind, &attestation)?,
        "symmetricKey" => {
            let keys = symmetric_keys(
                attestation.get("symmetricKey"),
                existing.and_then(|e| e.get("symmetricKey")),
            )?;
            attestation.insert("symmetricKey".into(), keys);
        }
        "x509" => {
            let x509 = attestation
                .get_mut("x509")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| invalid("X.509 attestation needs an x509 section."))?;
            normalize_x509(kind, x509, existing.and_then(|e| e.get("x509")), now)?;
        }
        _ => {
            return Err(invalid(format!(
                "An attestation of type {type_} cannot be used; choose tpm, x509 or symmetricKey."
            )));
        }
    }
    Ok(Value::Object(attestation))
}

/// A TPM attestation: individual enrollments only, with a base64 endorsement key (and storage
/// root key, when given).
fn check_tpm(kind: Kind, attestation: &Map<String, Value>) -> Result<(), ApiError> {
    if kind == Kind::Group {
        return Err(invalid("Enrollment groups do not support TPM attestation."));
    }
    let tpm = attestation.get("tpm").ok_or_else(|| invalid("TPM attestation needs a tpm section."))?;
    if tpm.get("endorsementKey").is_none() {
        return Err(invalid("TPM attestation needs an endorsementKey."));
    }
    for name in ["endorsementKey", "storageRootKey"] {
        if let Some(key) = tpm.get(name).and_then(Value::as_str)
            && (key.is_empty() || BASE64.decode(key).is_err())
        {
            return Err(invalid(format!("The TPM {name} is not valid base64.")));
        }
    }
    Ok(())
}

/// The symmetric keys DPS keeps: each as `given`, else as `kept` (on an update), else generated.
fn symmetric_keys(given: Option<&Value>, kept: Option<&Value>) -> Result<Value, ApiError> {
    let key = |name: &str| {
        let chosen = given
            .and_then(|g| g.get(name))
            .filter(|v| !v.is_null())
            .or_else(|| kept.and_then(|k| k.get(name)));
        symmetric_key(name, chosen.and_then(Value::as_str))
    };
    Ok(json!({"primaryKey": key("primaryKey")?, "secondaryKey": key("secondaryKey")?}))
}

/// An X.509 attestation: exactly one section the kind allows, certificate info computed from the
/// certificates (or kept from `kept`, on an update), a CA reference that names its primary.
fn normalize_x509(
    kind: Kind,
    x509: &mut Map<String, Value>,
    kept: Option<&Value>,
    now: jiff::Timestamp,
) -> Result<(), ApiError> {
    let present: Vec<&str> = ["clientCertificates", "signingCertificates", "caReferences"]
        .into_iter()
        .filter(|name| x509.contains_key(*name))
        .collect();
    let allowed: &[&str] = match kind {
        Kind::Individual => &["clientCertificates"],
        Kind::Group => &["signingCertificates", "caReferences"],
    };
    if present.len() != 1 || !allowed.contains(&present[0]) {
        let what = match kind {
            Kind::Individual => "individual enrollment",
            Kind::Group => "enrollment group",
        };
        return Err(invalid(format!(
            "X.509 attestation of an {what} needs exactly one of {}.",
            allowed.join(" or ")
        )));
    }
    for section in ["clientCertificates", "signingCertificates"] {
        if let Some(Value::Object(certificates)) = x509.get_mut(section) {
            fill_certificate_info(certificates, kept.and_then(|k| k.get(section)), now)?;
        }
    }
    if let Some(references) = x509.get("caReferences")
        && references.get("primary").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        return Err(invalid("caReferences needs the name of a primary CA certificate."));
    }
    Ok(())
}

/// A symmetric key as DPS keeps it: the given one if it is 16 to 64 bytes of base64, or 64 random
/// bytes when none was given.
fn symmetric_key(name: &str, key: Option<&str>) -> Result<String, ApiError> {
    let Some(key) = key else {
        return Ok(BASE64.encode(crate::random_bytes::<64>()));
    };
    match BASE64.decode(key) {
        Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(key.to_owned()),
        Ok(_) => Err(ApiError::bad_request(
            400005,
            format!("The symmetric {name} must be between 16 and 64 bytes."),
        )),
        Err(_) => Err(ApiError::bad_request(400005, format!("The symmetric {name} is not valid base64."))),
    }
}

/// Reads each certificate sent and records its info in its place; a slot sent without a
/// certificate keeps the info of the certificate it had.
fn fill_certificate_info(
    certificates: &mut Map<String, Value>,
    kept: Option<&Value>,
    now: jiff::Timestamp,
) -> Result<(), ApiError> {
    for name in ["primary", "secondary"] {
        let Some(Value::Object(slot)) = certificates.get_mut(name) else { continue };
        let info = match slot.remove("certificate").as_ref().and_then(Value::as_str) {
            Some(text) => {
                let read = certificate::info(text).map_err(|e| {
                    ApiError::bad_request(400006, format!("The {name} certificate is invalid: {e}."))
                })?;
                if read.not_after < now {
                    return Err(ApiError::bad_request(
                        400006,
                        format!("The {name} certificate has expired."),
                    ));
                }
                read.json
            }
            None => kept.and_then(|k| k.get(name)?.get("info").cloned()).ok_or_else(|| {
                ApiError::bad_request(400006, format!("The {name} certificate is missing."))
            })?,
        };
        *slot = Map::from_iter([("info".to_owned(), info)]);
    }
    // A secondary alone is fine: the Azure CLI's live test removes the primary certificate
    // (`az iot dps enrollment update --rc`) and DPS answers `clientCertificates.primary: null`
    // (azure-iot-cli-extension, `azext_iot/tests/dps/enrollment/test_iot_dps_enrollment_int.py`,
    // `test_dps_enrollment_x509_lifecycle`).
    if !certificates.contains_key("primary") && !certificates.contains_key("secondary") {
        return Err(ApiError::bad_request(400006, "A primary or a secondary certificate is required."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_dps_rules() {
        for valid in ["a", "device-01", "Boiler:0042", "x.y_z-", &"a".repeat(128)] {
            assert!(check_id(Kind::Individual, valid).is_ok(), "{valid}");
        }
        for invalid in ["", "dev ice", "device_", "device.", "dev/ice", &"a".repeat(129)] {
            let error = check_id(Kind::Group, invalid).unwrap_err();
            assert_eq!((error.status, error.code), (400, 400002), "{invalid}");
            assert!(error.message.contains("enrollment group id"));
        }
    }

    #[test]
    fn symmetric_keys_are_generated_checked_and_kept() {
        let now = jiff::Timestamp::now();
        let mechanism = |primary: Option<&str>| {
            Some(json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": primary}}))
        };
        let generated = normalize_attestation(Kind::Group, mechanism(None), None, now).unwrap();
        for key in ["primaryKey", "secondaryKey"] {
            let key = generated["symmetricKey"][key].as_str().unwrap();
            assert_eq!(BASE64.decode(key).unwrap().len(), 64);
        }
        let kept = normalize_attestation(Kind::Group, mechanism(None), Some(&generated), now).unwrap();
        assert_eq!(kept, generated, "an update without keys keeps them");

        let short = BASE64.encode([1u8; 15]);
        assert_eq!(
            normalize_attestation(Kind::Group, mechanism(Some(&short)), None, now).unwrap_err().code,
            400005
        );
        assert_eq!(
            normalize_attestation(Kind::Group, mechanism(Some("***")), None, now).unwrap_err().code,
            400005
        );
    }

    #[test]
    fn attestation_shapes_dps_refuses_are_refused() {
        let now = jiff::Timestamp::now();
        let tpm = json!({"type": "tpm", "tpm": {"endorsementKey": "AAAA"}});
        assert!(normalize_attestation(Kind::Individual, Some(tpm.clone()), None, now).is_ok());
        let group = normalize_attestation(Kind::Group, Some(tpm.clone()), None, now).unwrap_err();
        assert!(group.message.contains("TPM"), "{group:?}");
        assert!(normalize_attestation(Kind::Individual, Some(json!({"type": "none"})), None, now).is_err());
        assert!(
            normalize_attestation(Kind::Individual, None, None, now)
                .unwrap_err()
                .message
                .contains("needs an attestation")
        );
        let mixed = json!({"type": "tpm", "tpm": {"endorsementKey": "AAAA"}, "symmetricKey": {}});
        assert!(normalize_attestation(Kind::Individual, Some(mixed), None, now).is_err());
        let symmetric = json!({"type": "symmetricKey", "symmetricKey": {}});
        let changed = normalize_attestation(Kind::Individual, Some(symmetric), Some(&tpm), now).unwrap_err();
        assert!(changed.message.contains("cannot change"));
    }

    #[test]
    fn allocation_rules() {
        let check =
            |item: Value, linked: Option<&[String]>| check_allocation(item.as_object().unwrap(), linked);
        let hubs = json!(["a.azure-devices.net", "b.azure-devices.net"]);
        assert!(check(json!({"allocationPolicy": "static", "iotHubs": hubs}), None).is_err());
        assert!(
            check(json!({"allocationPolicy": "static", "iotHubs": ["a.azure-devices.net"]}), None).is_ok()
        );
        assert!(check(json!({"allocationPolicy": "static"}), None).is_ok(), "DPS takes the linked hub");
        assert!(check(json!({"allocationPolicy": "custom"}), None).is_err());
        let webhook = |url: &str, version: &str| json!({"allocationPolicy": "custom", "customAllocationDefinition": {"webhookUrl": url, "apiVersion": version}});
        assert!(check(webhook("https://f.net/api", "2021-10-01"), None).is_ok());
        assert!(check(webhook("http://f.net", "2021-10-01"), None).is_err());
        assert!(check(webhook("https://f.net", "2017-01-01"), None).is_err());
        assert!(check(webhook("https://f.net", "2021-1"), None).is_err());
        // Not a panic: the date is compared by characters (a fuzz target found the byte slice).
        assert!(check(webhook("https://f.net", "2021-10-0\u{e9}"), None).is_err());
        assert!(check(webhook("https://f.net", "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"), None).is_err());
        let linked = vec!["a.azure-devices.net".to_owned()];
        assert!(
            check(json!({"iotHubs": hubs}), Some(&linked))
                .unwrap_err()
                .message
                .contains("b.azure-devices.net")
        );
    }
}
