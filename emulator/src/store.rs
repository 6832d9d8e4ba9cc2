//! The emulator's state and DPS's rules for changing it: ids compared case-insensitively, a fresh
//! opaque etag on every write, 409 for a create over an existing item, 412 for a stale etag,
//! symmetric keys kept but never returned by reads, quotas. Items are the swagger's JSON.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{certificate, error::ApiError, kind::Kind, validation};
use crate::{dps_time, random_bytes};

/// Limits on what the emulator holds, as DPS has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    pub individual_enrollments: usize,
    /// Per attestation kind: DPS allows 100 X.509 and 100 symmetric key groups.
    pub enrollment_groups_per_attestation: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self { individual_enrollments: 1_000_000, enrollment_groups_per_attestation: 100 }
    }
}

/// A device's registration record (the swagger's `DeviceRegistrationState`) and the group it
/// registered through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub state: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// Everything the emulator holds, keyed by lower-case id: enrollments as DPS keeps them, keys
/// included.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Store {
    pub enrollments: BTreeMap<String, Map<String, Value>>,
    pub enrollment_groups: BTreeMap<String, Map<String, Value>>,
    pub registrations: BTreeMap<String, Registration>,
    /// Every signing certificate uploaded to a group, base64 DER by SHA-256 thumbprint: DPS
    /// verifies devices against the certificates themselves though reads show only their info.
    #[serde(default)]
    pub certificates: BTreeMap<String, String>,
    /// The CA certificates verified on the DPS resource, base64 DER by name: what a group's
    /// `caReferences` name.
    #[serde(default)]
    pub verified_certificates: BTreeMap<String, String>,
}

/// The signing certificates (DER) an attestation sends.
fn signing_certificates(attestation: Option<&Value>) -> Vec<Vec<u8>> {
    let Some(signing) = attestation.map(|a| &a["x509"]["signingCertificates"]) else { return Vec::new() };
    ["primary", "secondary"]
        .iter()
        .filter_map(|slot| signing[*slot]["certificate"].as_str().and_then(certificate::der))
        .collect()
}

/// A bulk operation's mode (the swagger's `BulkEnrollmentOperation.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkMode {
    Create,
    Update,
    UpdateIfMatchETag,
    Delete,
}

impl BulkMode {
    pub fn parse(mode: &str) -> Option<Self> {
        Some(match mode {
            "create" => Self::Create,
            "update" => Self::Update,
            "updateIfMatchETag" => Self::UpdateIfMatchETag,
            "delete" => Self::Delete,
            _ => return None,
        })
    }
}

/// The JSON of an answer: `provisioningStatus` is always there, null when it was not set (every
/// answer in azure-sdk-for-python's
/// `test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_symmetrickey_lifecycle.json`).
/// Fields sent as null or left out stay left out (`capabilities`, `reprovisionPolicy`): DPS
/// answers with no defaults of its own (the same recording).
fn answer(item: &Map<String, Value>) -> Value {
    let mut answer = item.clone();
    answer.entry("provisioningStatus").or_insert(Value::Null);
    Value::Object(answer)
}

/// An item as reads show it: without its symmetric keys.
pub(crate) fn without_keys(item: &Map<String, Value>) -> Map<String, Value> {
    let mut item = item.clone();
    if let Some(Value::Object(attestation)) = item.get_mut("attestation") {
        attestation.remove("symmetricKey");
    }
    item
}

/// A new opaque etag, shaped like DPS's: base64 of a quoted GUID-like value.
pub(crate) fn new_etag() -> String {
    let bytes = random_bytes::<16>();
    let inner: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    BASE64.encode(format!("\"{inner}\""))
}

/// Compares an `If-Match` value with a stored etag; clients send it raw or quoted.
fn etag_matches(if_match: &str, etag: Option<&str>) -> bool {
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s).to_owned()
    };
    etag.is_some_and(|etag| unquote(if_match) == unquote(etag))
}

/// Continuation tokens are the last id of the previous page, base64-encoded.
fn continuation_after(token: Option<&str>) -> Result<Option<String>, ApiError> {
    token
        .map(|token| {
            BASE64
                .decode(token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| ApiError::bad_request(400010, "The continuation token is invalid."))
        })
        .transpose()
}

/// One page of `items` (sorted by key) after the continuation, and the token of the next page.
pub fn page<'a, V: 'a, T>(
    items: impl Iterator<Item = (&'a String, V)>,
    answer: impl Fn(V) -> T,
    page_size: usize,
    continuation: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let after = continuation_after(continuation)?;
    let mut remaining =
        items.filter(|(key, _)| after.as_ref().is_none_or(|after| key.as_str() > after.as_str())).peekable();
    let mut page = Vec::new();
    let mut last_key = None;
    // Only the page's items are answered: skipping the pages before costs a comparison each.
    while page.len() < page_size {
        let Some((key, item)) = remaining.next() else { break };
        last_key = Some(key.clone());
        page.push(answer(item));
    }
    let next = remaining.peek().is_some().then(|| BASE64.encode(last_key.unwrap_or_default()));
    Ok((page, next))
}

impl Store {
    fn table(&self, kind: Kind) -> &BTreeMap<String, Map<String, Value>> {
        match kind {
            Kind::Individual => &self.enrollments,
            Kind::Group => &self.enrollment_groups,
        }
    }

    fn table_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Map<String, Value>> {
        match kind {
            Kind::Individual => &mut self.enrollments,
            Kind::Group => &mut self.enrollment_groups,
        }
    }

    /// Creates or replaces an item under the rules of DPS's PUT; `item` is the body as
    /// [`crate::swagger::read`] left it. Answers the item as stored, keys included: the answer to
    /// a PUT holds the symmetric keys, given or generated, unlike every read (the same
    /// recording's PUTs, individual and group).
    pub fn put(
        &mut self,
        kind: Kind,
        path_id: &str,
        item: Value,
        if_match: Option<&str>,
        quotas: &Quotas,
        linked_hubs: Option<&[String]>,
    ) -> Result<Value, ApiError> {
        let Value::Object(mut item) = item else {
            return Err(ApiError::bad_request(400008, format!("The {} must be a JSON object.", kind.what())));
        };
        let id = item.get(kind.id_field()).and_then(Value::as_str).unwrap_or_default().to_owned();
        validation::check_id(kind, &id)?;
        if !id.eq_ignore_ascii_case(path_id) {
            return Err(ApiError::bad_request(
                400007,
                format!("The {} '{id}' in the body does not match '{path_id}' in the path.", kind.id_name()),
            ));
        }
        let key = path_id.to_lowercase();
        let existing = self.table(kind).get(&key);
        let stored_etag = existing.and_then(|e| e.get("etag")).and_then(Value::as_str);
        match (existing, if_match.map(str::trim)) {
            (Some(_), None) => return Err(ApiError::conflict(kind)),
            // Any If-Match, `*` included, needs an existing item (RFC 7232).
            (None, Some(_)) => return Err(ApiError::precondition_failed(kind.what(), path_id)),
            (Some(_), Some(tag)) if tag != "*" && !etag_matches(tag, stored_etag) => {
                return Err(ApiError::precondition_failed(kind.what(), path_id));
            }
            _ => {}
        }
        let now = jiff::Timestamp::now();
        let kept = existing.and_then(|e| e.get("attestation"));
        let created = existing.and_then(|e| e.get("createdDateTimeUtc")).cloned();
        let sent = item.remove("attestation");
        let signing = signing_certificates(sent.as_ref());
        let attestation = validation::normalize_attestation(kind, sent, kept, now)?;
        if kind == Kind::Individual
            && let Some(device_id) = item.get("deviceId").and_then(Value::as_str)
        {
            validation::check_device_id(device_id)?;
        }
        validation::check_allocation(&item, linked_hubs)?;
        if existing.is_none() {
            self.check_quota(kind, attestation["type"].as_str().unwrap_or_default(), quotas)?;
        }
        item.insert("attestation".into(), attestation);
        item.insert("etag".into(), Value::String(new_etag()));
        item.insert("createdDateTimeUtc".into(), created.unwrap_or_else(|| json!(dps_time(now))));
        item.insert("lastUpdatedDateTimeUtc".into(), json!(dps_time(now)));
        let answered = answer(&item);
        self.table_mut(kind).insert(key, item);
        for der in signing {
            self.certificates
                .insert(certificate::thumbprint(&ring::digest::SHA256, &der), BASE64.encode(der));
        }
        Ok(answered)
    }

    fn check_quota(&self, kind: Kind, attestation: &str, quotas: &Quotas) -> Result<(), ApiError> {
        let (count, limit) = match kind {
            Kind::Individual => (self.enrollments.len(), quotas.individual_enrollments),
            Kind::Group => (
                self.enrollment_groups.values().filter(|g| g["attestation"]["type"] == attestation).count(),
                quotas.enrollment_groups_per_attestation,
            ),
        };
        if count >= limit {
            let per = match kind {
                Kind::Group => format!(" with {attestation} attestation"),
                Kind::Individual => String::new(),
            };
            return Err(ApiError::new(
                403,
                403002,
                format!("The quota of {limit} {}s{per} is used up.", kind.what()),
            ));
        }
        Ok(())
    }

    fn item(&self, kind: Kind, id: &str) -> Result<&Map<String, Value>, ApiError> {
        self.table(kind).get(&id.to_lowercase()).ok_or_else(|| ApiError::not_found(Some(kind), id))
    }

    /// What a GET answers: no keys, and for an individual enrollment its registration state,
    /// `{"registrationId", "status": "unassigned"}` until a device registers (the GET in
    /// `test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_symmetrickey_lifecycle.json`).
    pub fn get(&self, kind: Kind, id: &str) -> Result<Value, ApiError> {
        let mut read = self.listed(kind, self.item(kind, id)?);
        if kind == Kind::Individual {
            let registration_id = read.get("registrationId").cloned().unwrap_or_default();
            read.entry("registrationState")
                .or_insert_with(|| json!({"registrationId": registration_id, "status": "unassigned"}));
        }
        Ok(answer(&read))
    }

    /// What a query answers for an item: no keys, and no registration state for an enrollment
    /// no device used (the same recording's queries). The recordings hold no query of a
    /// registered one: the emulator keeps its registration state there, as DPS keeps it with the
    /// enrollment.
    fn listed(&self, kind: Kind, item: &Map<String, Value>) -> Map<String, Value> {
        let mut listed = without_keys(item);
        if kind == Kind::Individual {
            let id = item.get("registrationId").and_then(Value::as_str).unwrap_or_default().to_lowercase();
            if let Some(registration) = self.registrations.get(&id) {
                listed.insert("registrationState".into(), registration.state.clone());
            }
        }
        listed
    }

    /// The attestation with its keys, as `POST .../attestationmechanism` returns it.
    pub fn attestation(&self, kind: Kind, id: &str) -> Result<Value, ApiError> {
        Ok(self.item(kind, id)?.get("attestation").cloned().unwrap_or_default())
    }

    pub fn delete(&mut self, kind: Kind, id: &str, if_match: Option<&str>) -> Result<(), ApiError> {
        let item = self.item(kind, id)?;
        if let Some(if_match) = if_match
            && if_match.trim() != "*"
            && !etag_matches(if_match, item.get("etag").and_then(Value::as_str))
        {
            return Err(ApiError::precondition_failed(kind.what(), id));
        }
        self.table_mut(kind).remove(&id.to_lowercase());
        Ok(())
    }

    pub fn query(
        &self,
        kind: Kind,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ApiError> {
        page(self.table(kind).iter(), |item| answer(&self.listed(kind, item)), page_size, continuation)
    }

    /// Applies a bulk operation item by item; `items` are read by the swagger, or the errors
    /// reading them. Returns the failed ids with their errors.
    pub fn bulk(
        &mut self,
        kind: Kind,
        mode: BulkMode,
        items: Vec<(String, Result<Value, ApiError>)>,
        quotas: &Quotas,
        linked_hubs: Option<&[String]>,
    ) -> Vec<(String, ApiError)> {
        let mut errors = Vec::new();
        for (id, item) in items {
            let result = item.and_then(|item| {
                let etag = item.get("etag").and_then(Value::as_str).map(str::to_owned);
                match mode {
                    BulkMode::Create => self.put(kind, &id, item, None, quotas, linked_hubs).map(drop),
                    // An item without an etag is a create: over an existing one DPS answers the
                    // item 409 "already exists" and leaves it (azure-sdk-for-python,
                    // `test_individual_enrollments.pyTestIndividualEnrollmentstest_individual_enrollment_bulk_operations.json`
                    // and `test_enrollment_groups.pyTestEnrollmentGroupstest_enrollment_group_bulk_operations.json`).
                    // With an etag it replaces the item that has it.
                    BulkMode::Update => {
                        self.put(kind, &id, item, etag.as_deref(), quotas, linked_hubs).map(drop)
                    }
                    BulkMode::UpdateIfMatchETag => match etag {
                        Some(etag) => self.put(kind, &id, item, Some(&etag), quotas, linked_hubs).map(drop),
                        None => Err(ApiError::precondition_failed(kind.what(), &id)),
                    },
                    BulkMode::Delete => self.delete(kind, &id, None),
                }
            });
            if let Err(error) = result {
                errors.push((id, error));
            }
        }
        errors
    }
}
