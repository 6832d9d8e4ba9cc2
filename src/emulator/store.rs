//! The emulator's state and DPS's rules for changing it: ids compared case-insensitively, a fresh
//! opaque etag on every write, 409 for a create over an existing item, 412 for a stale etag,
//! symmetric keys kept but never returned, quotas.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};

use super::{
    error::ApiError,
    validation::{self, Kind},
};
use crate::dps::{
    Enrollment,
    models::{
        AttestationMechanism, AttestationType, BulkMode, DeviceRegistrationState, EnrollmentGroup,
        IndividualEnrollment, RegistrationStatus, Timestamp,
    },
};
use crate::random_bytes;

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

/// A device's registration record and the group it registered through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub state: DeviceRegistrationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// Everything the emulator holds, keyed by lower-case id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Store {
    pub enrollments: BTreeMap<String, IndividualEnrollment>,
    pub enrollment_groups: BTreeMap<String, EnrollmentGroup>,
    pub registrations: BTreeMap<String, Registration>,
}

/// An enrollment kind as the emulator handles it.
pub trait Record: Enrollment + Clone {
    const KIND: Kind;
    /// How messages name it.
    const WHAT: &'static str;
    /// The `x-ms-item-type` of a query answer.
    const ITEM_TYPE: &'static str;
    fn table(store: &Store) -> &BTreeMap<String, Self>;
    fn table_mut(store: &mut Store) -> &mut BTreeMap<String, Self>;
    fn attestation(&self) -> &AttestationMechanism;
    fn attestation_mut(&mut self) -> &mut AttestationMechanism;
    fn etag(&self) -> Option<&str>;
    fn created(&self) -> Option<Timestamp>;
    /// Sets the etag, creation and last update time.
    fn stamp(&mut self, etag: String, created: Timestamp, updated: Timestamp);
    /// Checks of the fields besides the id and attestation. Fields sent as null or left out stay
    /// so: DPS answers them left out (`capabilities`, `reprovisionPolicy`) or null
    /// (`provisioningStatus`), never with defaults of its own (azure-sdk-for-python,
    /// `test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_symmetrickey_lifecycle.json`).
    fn settle(&mut self, linked_hubs: Option<&[String]>) -> Result<(), ApiError>;
    /// What a GET returns: no keys, and for an individual enrollment its registration state,
    /// `unassigned` until a device registers (the same recording's GET).
    fn read(&self, store: &Store) -> Self {
        self.listed(store)
    }
    /// What a query returns: no keys, and no registration state for an enrollment no device
    /// used (the same recording's queries). The recordings hold no query of a registered one:
    /// the emulator keeps its registration state there, as DPS keeps it with the enrollment.
    fn listed(&self, store: &Store) -> Self;
    /// The JSON of an answer: `provisioningStatus` is always there, null when it was not set
    /// (every answer in the same recording).
    ///
    /// Certificate validity times are whole seconds (`2023-05-19T23:10:43Z`), unlike the
    /// record's own times (the recording
    /// `test_individual_enrollments.pyTestIndividualEnrollmentstest_enrollment_x509_lifecycle.json`).
    fn answer(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(fields) = value.as_object_mut() {
            fields.entry("provisioningStatus").or_insert(serde_json::Value::Null);
        }
        for certificates in ["clientCertificates", "signingCertificates"] {
            for slot in ["primary", "secondary"] {
                for time in ["notBeforeUtc", "notAfterUtc"] {
                    let path = format!("/attestation/x509/{certificates}/{slot}/info/{time}");
                    if let Some(time) = value.pointer_mut(&path)
                        && let Some((whole, _)) = time.as_str().and_then(|text| text.split_once('.'))
                    {
                        *time = serde_json::Value::String(format!("{whole}Z"));
                    }
                }
            }
        }
        value
    }
}

/// The accessors both kinds implement the same way (their fields have the same names).
macro_rules! record_fields {
    () => {
        fn attestation(&self) -> &AttestationMechanism {
            &self.attestation
        }
        fn attestation_mut(&mut self) -> &mut AttestationMechanism {
            &mut self.attestation
        }
        fn etag(&self) -> Option<&str> {
            self.etag.as_deref()
        }
        fn created(&self) -> Option<Timestamp> {
            self.created_date_time_utc
        }
        fn stamp(&mut self, etag: String, created: Timestamp, updated: Timestamp) {
            self.etag = Some(etag);
            self.created_date_time_utc = Some(created);
            self.last_updated_date_time_utc = Some(updated);
        }
    };
}

macro_rules! settle_common {
    ($item:expr, $linked_hubs:expr) => {{
        validation::check_allocation(
            $item.allocation_policy,
            $item.iot_hubs.as_deref(),
            $item.custom_allocation_definition.as_ref(),
            $linked_hubs,
        )?;
    }};
}

fn without_keys(attestation: &AttestationMechanism) -> AttestationMechanism {
    AttestationMechanism { symmetric_key: None, ..attestation.clone() }
}

impl Record for IndividualEnrollment {
    const KIND: Kind = Kind::Individual;
    const WHAT: &'static str = "enrollment";
    const ITEM_TYPE: &'static str = "Enrollment";

    fn table(store: &Store) -> &BTreeMap<String, Self> {
        &store.enrollments
    }
    fn table_mut(store: &mut Store) -> &mut BTreeMap<String, Self> {
        &mut store.enrollments
    }
    record_fields!();
    fn settle(&mut self, linked_hubs: Option<&[String]>) -> Result<(), ApiError> {
        if let Some(device_id) = &self.device_id {
            validation::check_device_id(device_id)?;
        }
        // The registration state is the service's to keep, never the client's to send.
        self.registration_state = None;
        settle_common!(self, linked_hubs);
        Ok(())
    }
    fn read(&self, store: &Store) -> Self {
        let mut read = self.listed(store);
        read.registration_state.get_or_insert_with(|| DeviceRegistrationState {
            registration_id: Some(self.registration_id.clone()),
            status: Some(RegistrationStatus::Unassigned),
            ..Default::default()
        });
        read
    }
    fn listed(&self, store: &Store) -> Self {
        let registration =
            store.registrations.get(&self.registration_id.to_lowercase()).map(|r| r.state.clone());
        Self {
            attestation: without_keys(&self.attestation),
            registration_state: registration,
            ..self.clone()
        }
    }
}

impl Record for EnrollmentGroup {
    const KIND: Kind = Kind::Group;
    const WHAT: &'static str = "enrollment group";
    const ITEM_TYPE: &'static str = "EnrollmentGroup";

    fn table(store: &Store) -> &BTreeMap<String, Self> {
        &store.enrollment_groups
    }
    fn table_mut(store: &mut Store) -> &mut BTreeMap<String, Self> {
        &mut store.enrollment_groups
    }
    record_fields!();
    fn settle(&mut self, linked_hubs: Option<&[String]>) -> Result<(), ApiError> {
        settle_common!(self, linked_hubs);
        Ok(())
    }
    fn listed(&self, _: &Store) -> Self {
        Self { attestation: without_keys(&self.attestation), ..self.clone() }
    }
}

/// A new opaque etag, shaped like DPS's: base64 of a quoted GUID-like value.
fn new_etag() -> String {
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
pub fn page<'a, T: 'a>(
    items: impl Iterator<Item = (&'a String, T)>,
    page_size: usize,
    continuation: Option<&str>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let after = continuation_after(continuation)?;
    let mut remaining =
        items.filter(|(key, _)| after.as_ref().is_none_or(|after| key.as_str() > after.as_str())).peekable();
    let mut page = Vec::new();
    let mut last_key = None;
    while page.len() < page_size {
        let Some((key, item)) = remaining.next() else { break };
        last_key = Some(key.clone());
        page.push(item);
    }
    let next = remaining.peek().is_some().then(|| BASE64.encode(last_key.unwrap_or_default()));
    Ok((page, next))
}

impl Store {
    /// Creates or replaces an item under the rules of DPS's PUT.
    pub fn put<R: Record>(
        &mut self,
        path_id: &str,
        mut item: R,
        if_match: Option<&str>,
        quotas: &Quotas,
        linked_hubs: Option<&[String]>,
    ) -> Result<R, ApiError> {
        validation::check_id(R::KIND, item.id())?;
        if !item.id().eq_ignore_ascii_case(path_id) {
            return Err(ApiError::bad_request(
                400007,
                format!(
                    "The {} '{}' in the body does not match '{path_id}' in the path.",
                    R::KIND.id_name(),
                    item.id()
                ),
            ));
        }
        let key = path_id.to_lowercase();
        let existing = R::table(self).get(&key);
        match (existing, if_match.map(str::trim)) {
            (Some(_), None) => return Err(ApiError::conflict(R::KIND)),
            // Any If-Match, `*` included, needs an existing item (RFC 7232).
            (None, Some(_)) => return Err(ApiError::precondition_failed(R::WHAT, path_id)),
            (Some(existing), Some(tag)) if tag != "*" && !etag_matches(tag, existing.etag()) => {
                return Err(ApiError::precondition_failed(R::WHAT, path_id));
            }
            _ => {}
        }
        let now = Timestamp::now();
        let kept = existing.map(|e| e.attestation().clone());
        let created = existing.and_then(R::created).unwrap_or(now);
        let attestation = std::mem::take(item.attestation_mut());
        *item.attestation_mut() =
            validation::normalize_attestation(R::KIND, attestation, kept.as_ref(), now)?;
        item.settle(linked_hubs)?;
        if kept.is_none() {
            self.check_quota::<R>(item.attestation().type_, quotas)?;
        }
        item.stamp(new_etag(), created, now);
        R::table_mut(self).insert(key, item.clone());
        // The answer to a PUT holds the symmetric keys, given or generated, unlike every read
        // (the same recording's PUTs, individual and group).
        Ok(item)
    }

    fn check_quota<R: Record>(&self, attestation: AttestationType, quotas: &Quotas) -> Result<(), ApiError> {
        let (count, limit) = match R::KIND {
            Kind::Individual => (self.enrollments.len(), quotas.individual_enrollments),
            Kind::Group => (
                self.enrollment_groups.values().filter(|g| g.attestation.type_ == attestation).count(),
                quotas.enrollment_groups_per_attestation,
            ),
        };
        if count >= limit {
            return Err(ApiError::new(
                403,
                403002,
                format!(
                    "The quota of {limit} {}s{} is used up.",
                    R::WHAT,
                    match R::KIND {
                        Kind::Group => format!(" with {attestation:?} attestation"),
                        Kind::Individual => String::new(),
                    }
                ),
            ));
        }
        Ok(())
    }

    pub fn get<R: Record>(&self, id: &str) -> Result<R, ApiError> {
        R::table(self)
            .get(&id.to_lowercase())
            .map(|item| item.read(self))
            .ok_or_else(|| ApiError::not_found(R::WHAT, id))
    }

    /// The attestation with its keys, as `POST .../attestationmechanism` returns it.
    pub fn attestation<R: Record>(&self, id: &str) -> Result<AttestationMechanism, ApiError> {
        let item = R::table(self).get(&id.to_lowercase()).ok_or_else(|| ApiError::not_found(R::WHAT, id))?;
        Ok(item.attestation().clone())
    }

    pub fn delete<R: Record>(&mut self, id: &str, if_match: Option<&str>) -> Result<(), ApiError> {
        let key = id.to_lowercase();
        let item = R::table(self).get(&key).ok_or_else(|| ApiError::not_found(R::WHAT, id))?;
        if let Some(if_match) = if_match
            && if_match.trim() != "*"
            && !etag_matches(if_match, item.etag())
        {
            return Err(ApiError::precondition_failed(R::WHAT, id));
        }
        R::table_mut(self).remove(&key);
        Ok(())
    }

    pub fn query<R: Record>(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<R>, Option<String>), ApiError> {
        page(R::table(self).iter().map(|(key, item)| (key, item.listed(self))), page_size, continuation)
    }

    /// Applies a bulk operation item by item; returns the failed ids with their errors.
    pub fn bulk<R: Record>(
        &mut self,
        mode: BulkMode,
        items: Vec<R>,
        quotas: &Quotas,
        linked_hubs: Option<&[String]>,
    ) -> Vec<(String, ApiError)> {
        let mut errors = Vec::new();
        for item in items {
            let id = item.id().to_owned();
            let result = match mode {
                BulkMode::Create => self.put(&id, item, None, quotas, linked_hubs).map(drop),
                // An item without an etag is a create: over an existing one DPS answers the
                // item 409 "already exists" and leaves it (azure-sdk-for-python,
                // `test_individual_enrollments.pyTestIndividualEnrollmentstest_individual_enrollment_bulk_operations.json`
                // and `test_enrollment_groups.pyTestEnrollmentGroupstest_enrollment_group_bulk_operations.json`).
                // With an etag it replaces the item that has it.
                BulkMode::Update => {
                    let etag = item.etag().map(str::to_owned);
                    self.put(&id, item, etag.as_deref(), quotas, linked_hubs).map(drop)
                }
                BulkMode::UpdateIfMatchETag => match item.etag().map(str::to_owned) {
                    Some(etag) => self.put(&id, item, Some(&etag), quotas, linked_hubs).map(drop),
                    None => Err(ApiError::precondition_failed(R::WHAT, &id)),
                },
                BulkMode::Delete => self.delete::<R>(&id, None),
            };
            if let Err(error) = result {
                errors.push((id, error));
            }
        }
        errors
    }
}
