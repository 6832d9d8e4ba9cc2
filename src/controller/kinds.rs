//! What differs between `EnrollmentGroup` and `IndividualEnrollment` for the reconciler.

use std::fmt::Debug;

use kube::{Resource, ResourceExt, core::NamespaceResourceScope};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    Error,
    desired::{self, AttestationInput, DpsRecord, Resolved},
};
use crate::{
    api::{
        self, EnrollmentGroup, EnrollmentGroupStatus, EnrollmentSettings, EnrollmentStatus,
        IndividualEnrollment, IndividualEnrollmentStatus, RegistrationRecord, RegistrationSummary,
    },
    dps::{self, models::DeviceRegistrationState},
};

/// The registrations an enrollment reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Registrations {
    #[default]
    Unknown,
    Group(RegistrationSummary),
    Device(Option<Box<RegistrationRecord>>),
}

/// An enrollment kind: the custom resource, its DPS record and its status.
pub trait EnrollmentKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    type Record: dps::Batched + DpsRecord + Clone + Debug + Send + Sync;
    type Status: Serialize + Clone + PartialEq + Debug + Send + Sync;
    /// How messages name the DPS item.
    const WHAT: &'static str;
    const IS_GROUP: bool;

    /// The DPS id: the spec's, else the resource's name.
    fn dps_id(&self) -> String;
    fn settings(&self) -> &EnrollmentSettings;
    /// The attestation the spec states (the CRD admits exactly one).
    fn attestation_input(&self) -> Result<AttestationInput<'_>, Error>;
    fn build(&self, id: &str, resolved: &Resolved) -> Result<Self::Record, Error>;
    fn registration_state(record: &Self::Record) -> Option<&DeviceRegistrationState>;
    fn current_status(&self) -> Option<&Self::Status>;
    fn enrollment_status(status: &Self::Status) -> &EnrollmentStatus;
    fn registrations(status: &Self::Status) -> Registrations;
    fn make_status(enrollment: EnrollmentStatus, id: String, registrations: Registrations) -> Self::Status;
    /// The rotation of generated keys the spec asks for.
    fn key_rotation(&self) -> Option<&api::KeyRotation>;
    /// The device keys the spec asks for: only a group's.
    fn device_keys(&self) -> Option<&api::DeviceKeys> {
        None
    }
    /// The device keys Secret `status` records as written.
    fn device_keys_status(_status: &Self::Status) -> Option<&api::DeviceKeysStatus> {
        None
    }
    fn set_device_keys(_status: &mut Self::Status, _written: Option<api::DeviceKeysStatus>) {}
    /// The devices the spec blocks: only a group's.
    fn blocked_devices(&self) -> &[api::BlockedDevice] {
        &[]
    }
    /// The registration ids `status` records as blocked by enrollments this resource made.
    fn blocked_status(_status: &Self::Status) -> &[String] {
        &[]
    }
    fn set_blocked(_status: &mut Self::Status, _ids: Vec<String>) {}
}

/// The API of the enrollments of `object`'s kind in its namespace.
pub fn api_of<K: EnrollmentKind>(client: &kube::Client, object: &K) -> kube::Api<K> {
    kube::Api::namespaced(client.clone(), &object.namespace().unwrap_or_default())
}

impl EnrollmentKind for EnrollmentGroup {
    type Record = dps::models::EnrollmentGroup;
    type Status = EnrollmentGroupStatus;
    const WHAT: &'static str = "enrollment group";
    const IS_GROUP: bool = true;

    fn dps_id(&self) -> String {
        self.spec.enrollment_group_id.clone().unwrap_or_else(|| self.name_any())
    }
    fn settings(&self) -> &EnrollmentSettings {
        &self.spec.settings
    }
    fn key_rotation(&self) -> Option<&api::KeyRotation> {
        self.spec.attestation.symmetric_key.as_ref()?.rotation.as_ref()
    }
    fn attestation_input(&self) -> Result<AttestationInput<'_>, Error> {
        let attestation = &self.spec.attestation;
        Ok(match (&attestation.symmetric_key, &attestation.x509) {
            (Some(key), None) => AttestationInput::SymmetricKey(key),
            (
                None,
                Some(api::GroupX509Attestation { signing_certificates: Some(pair), ca_references: None }),
            ) => AttestationInput::SigningCertificates(pair),
            (
                None,
                Some(api::GroupX509Attestation {
                    ca_references: Some(references),
                    signing_certificates: None,
                }),
            ) => AttestationInput::CaReferences(references),
            _ => return Err(attestation_not_one()),
        })
    }
    fn build(&self, id: &str, resolved: &Resolved) -> Result<Self::Record, Error> {
        desired::enrollment_group(id, self.attestation_input()?, &self.spec.settings, resolved)
    }
    fn registration_state(_: &Self::Record) -> Option<&DeviceRegistrationState> {
        None
    }
    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn enrollment_status(status: &Self::Status) -> &EnrollmentStatus {
        &status.enrollment
    }
    fn registrations(status: &Self::Status) -> Registrations {
        status.registrations.clone().map_or(Registrations::Unknown, Registrations::Group)
    }
    fn make_status(enrollment: EnrollmentStatus, id: String, registrations: Registrations) -> Self::Status {
        EnrollmentGroupStatus {
            enrollment,
            enrollment_group_id: Some(id),
            registrations: match registrations {
                Registrations::Group(summary) => Some(summary),
                _ => None,
            },
            device_keys: None,
            blocked_devices: Vec::new(),
        }
    }
    fn device_keys(&self) -> Option<&api::DeviceKeys> {
        self.spec.device_keys.as_ref()
    }
    fn device_keys_status(status: &Self::Status) -> Option<&api::DeviceKeysStatus> {
        status.device_keys.as_ref()
    }
    fn set_device_keys(status: &mut Self::Status, written: Option<api::DeviceKeysStatus>) {
        status.device_keys = written;
    }
    fn blocked_devices(&self) -> &[api::BlockedDevice] {
        &self.spec.blocked_devices
    }
    fn blocked_status(status: &Self::Status) -> &[String] {
        &status.blocked_devices
    }
    fn set_blocked(status: &mut Self::Status, ids: Vec<String>) {
        status.blocked_devices = ids;
    }
}

impl EnrollmentKind for IndividualEnrollment {
    type Record = dps::models::IndividualEnrollment;
    type Status = IndividualEnrollmentStatus;
    const WHAT: &'static str = "enrollment";
    const IS_GROUP: bool = false;

    fn dps_id(&self) -> String {
        self.spec.registration_id.clone().unwrap_or_else(|| self.name_any())
    }
    fn settings(&self) -> &EnrollmentSettings {
        &self.spec.settings
    }
    fn key_rotation(&self) -> Option<&api::KeyRotation> {
        self.spec.attestation.symmetric_key.as_ref()?.rotation.as_ref()
    }
    fn attestation_input(&self) -> Result<AttestationInput<'_>, Error> {
        let attestation = &self.spec.attestation;
        Ok(match (&attestation.symmetric_key, &attestation.x509, &attestation.tpm) {
            (Some(key), None, None) => AttestationInput::SymmetricKey(key),
            (None, Some(x509), None) => AttestationInput::ClientCertificates(&x509.client_certificates),
            (None, None, Some(tpm)) => AttestationInput::Tpm(tpm),
            _ => return Err(attestation_not_one()),
        })
    }
    fn build(&self, id: &str, resolved: &Resolved) -> Result<Self::Record, Error> {
        desired::individual_enrollment(&self.spec, id, self.attestation_input()?, resolved)
    }
    fn registration_state(record: &Self::Record) -> Option<&DeviceRegistrationState> {
        record.registration_state.as_ref()
    }
    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn enrollment_status(status: &Self::Status) -> &EnrollmentStatus {
        &status.enrollment
    }
    fn registrations(status: &Self::Status) -> Registrations {
        Registrations::Device(status.registration.clone())
    }
    fn make_status(enrollment: EnrollmentStatus, id: String, registrations: Registrations) -> Self::Status {
        IndividualEnrollmentStatus {
            enrollment,
            registration_id: Some(id),
            registration: match registrations {
                Registrations::Device(record) => record,
                _ => None,
            },
        }
    }
}

fn attestation_not_one() -> Error {
    Error::InvalidSpec(
        "spec.attestation must set exactly one attestation kind (is the CRD up to date?)".into(),
    )
}

/// A DPS registration state as the status reports it.
pub fn registration_record(state: &DeviceRegistrationState) -> RegistrationRecord {
    fn text(value: impl Serialize) -> Option<String> {
        serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned))
    }
    RegistrationRecord {
        registration_id: state.registration_id.clone().unwrap_or_default(),
        status: state.status.and_then(text).unwrap_or_else(|| "unassigned".into()),
        substatus: state.substatus.and_then(text),
        device_id: state.device_id.clone(),
        assigned_hub: state.assigned_hub.clone(),
        last_updated_time: state
            .last_updated_date_time_utc
            .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0)),
        error_code: state.error_code,
        error_message: state.error_message.clone(),
    }
}

/// How many of the group's devices are in each state, and the latest few.
pub fn summarize(states: &[DeviceRegistrationState], latest: usize) -> RegistrationSummary {
    use dps::models::RegistrationStatus::*;
    let count = |wanted| states.iter().filter(|s| s.status == Some(wanted)).count() as i64;
    let mut newest: Vec<&DeviceRegistrationState> = states.iter().collect();
    newest.sort_by_key(|state| std::cmp::Reverse(state.last_updated_date_time_utc));
    RegistrationSummary {
        total: states.len() as i64,
        assigned: count(Assigned),
        assigning: count(Assigning),
        unassigned: count(Unassigned) + states.iter().filter(|s| s.status.is_none()).count() as i64,
        failed: count(Failed),
        disabled: count(Disabled),
        latest: newest.into_iter().take(latest).map(registration_record).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dps::models::{RegistrationStatus, Timestamp};

    #[test]
    fn registration_summary_counts_by_status_and_lists_the_newest_first() {
        let state = |id: &str, status, minute: i64| DeviceRegistrationState {
            registration_id: Some(id.into()),
            status,
            last_updated_date_time_utc: Some(Timestamp(jiff::Timestamp::from_second(minute * 60).unwrap())),
            ..Default::default()
        };
        let states = [
            state("a", Some(RegistrationStatus::Assigned), 1),
            state("b", Some(RegistrationStatus::Failed), 5),
            state("c", Some(RegistrationStatus::Assigned), 3),
            state("d", None, 2),
        ];
        let summary = summarize(&states, 2);
        assert_eq!((summary.total, summary.assigned, summary.failed, summary.unassigned), (4, 2, 1, 1));
        let latest: Vec<&str> = summary.latest.iter().map(|r| r.registration_id.as_str()).collect();
        assert_eq!(latest, ["b", "c"]);
        assert_eq!(summary.latest[0].status, "failed");
    }
}
