//! A group's blocked devices: each a disabled individual enrollment with the device's registration
//! id, which DPS looks at before any group, so the device is refused and the rest of the group is
//! not. The group marks the enrollments it makes (in their service-side device information) and
//! records their ids in its status; it removes only its own.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::{
    api::BlockedDevice,
    controller::{
        Error,
        connection::Connection,
        desired::{BLOCKED_MARK, DpsRecord},
        secrets::Reader,
    },
    dps::{
        self, IfMatch,
        models::{
            AttestationMechanism, AttestationType, IndividualEnrollment, ProvisioningStatus,
            SymmetricKeyAttestation, X509Attestation, X509CertificateWithInfo, X509Certificates,
        },
    },
};

/// What to change: ids to block (not blocked yet) and ids to unblock (blocked, no longer asked).
#[derive(Debug, PartialEq)]
pub struct Plan<'a> {
    pub block: Vec<&'a BlockedDevice>,
    pub unblock: Vec<String>,
}

/// Compares the spec's blocked devices with those the status records (ids compare
/// case-insensitively, as in DPS).
pub fn plan<'a>(wanted: &'a [BlockedDevice], recorded: &[String]) -> Plan<'a> {
    let lower = |id: &str| id.to_ascii_lowercase();
    let recorded_ids: BTreeSet<String> = recorded.iter().map(|id| lower(id)).collect();
    let wanted_ids: BTreeSet<String> = wanted.iter().map(|d| lower(&d.registration_id)).collect();
    Plan {
        block: wanted.iter().filter(|d| !recorded_ids.contains(&lower(&d.registration_id))).collect(),
        unblock: recorded.iter().filter(|id| !wanted_ids.contains(&lower(id))).cloned().collect(),
    }
}

/// Carries out the plan for group `group_id`; answers the ids blocked afterwards.
pub async fn sync(
    wanted: &[BlockedDevice],
    recorded: &[String],
    group_id: &str,
    connection: &Connection,
    reader: &Reader<'_>,
) -> Result<Vec<String>, Error> {
    let plan = plan(wanted, recorded);
    if plan.block.is_empty() && plan.unblock.is_empty() {
        return Ok(recorded.to_vec());
    }
    let mut blocked: Vec<String> = recorded.iter().filter(|id| !plan.unblock.contains(id)).cloned().collect();
    for id in &plan.unblock {
        unblock(id, group_id, connection).await?;
    }
    for device in plan.block {
        block(device, group_id, connection, reader).await?;
        blocked.push(device.registration_id.clone());
    }
    Ok(blocked)
}

/// Makes the disabled individual enrollment that blocks `device`; one this group made before (its
/// status write lost) is taken as it is; anyone else's is refused.
async fn block(
    device: &BlockedDevice,
    group_id: &str,
    connection: &Connection,
    reader: &Reader<'_>,
) -> Result<(), Error> {
    let id = &device.registration_id;
    let attestation = match &device.certificate_secret_ref {
        None => AttestationMechanism {
            type_: AttestationType::SymmetricKey,
            // No keys: DPS makes keys no device ever gets.
            symmetric_key: Some(SymmetricKeyAttestation::default()),
            ..Default::default()
        },
        Some(secret) => {
            let certificate = reader.certificate(secret).await?.pem;
            let primary = Some(X509CertificateWithInfo { certificate: Some(certificate), info: None });
            let certificates = Some(X509Certificates { primary, secondary: None });
            AttestationMechanism {
                type_: AttestationType::X509,
                x509: Some(X509Attestation { client_certificates: certificates, ..Default::default() }),
                ..Default::default()
            }
        }
    };
    let mark: Map<String, Value> = [(BLOCKED_MARK.to_owned(), json!(group_id))].into_iter().collect();
    let record = IndividualEnrollment {
        registration_id: id.clone(),
        attestation,
        provisioning_status: Some(ProvisioningStatus::Disabled),
        optional_device_information: Some(mark),
        ..Default::default()
    };
    match connection.client.put(&record, IfMatch::None).await {
        Ok(_) => Ok(()),
        Err(dps::Error::Conflict { .. }) => match ours(id, group_id, connection).await? {
            Some(_) => Ok(()),
            None => Err(Error::InvalidSpec(format!(
                "spec.blockedDevices: DPS already has an individual enrollment {id} that this group did not make; \
                 it is left as it is (disable it there, or remove it and let the group block the device)"
            ))),
        },
        Err(source) => Err(connection.dps_error(source)),
    }
}

/// Removes the enrollment that blocked `id`, if it is still this group's.
async fn unblock(id: &str, group_id: &str, connection: &Connection) -> Result<(), Error> {
    let Some(etag) = ours(id, group_id, connection).await? else { return Ok(()) };
    match connection.client.delete::<IndividualEnrollment>(id, IfMatch::Etag(&etag)).await {
        Ok(()) | Err(dps::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(connection.dps_error(source)),
    }
}

/// The etag of the individual enrollment `id` when this group made it to block the device.
async fn ours(id: &str, group_id: &str, connection: &Connection) -> Result<Option<String>, Error> {
    let found = match connection.client.get::<IndividualEnrollment>(id).await {
        Ok(found) => found,
        Err(dps::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(connection.dps_error(source)),
    };
    Ok(if found.blocks_a_device_of() == Some(group_id) { found.etag } else { None })
}

/// Removes every enrollment the group made to block a device, when the group leaves DPS.
pub async fn unblock_all(recorded: &[String], group_id: &str, connection: &Connection) -> Result<(), Error> {
    for id in recorded {
        unblock(id, group_id, connection).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> BlockedDevice {
        BlockedDevice { registration_id: id.into(), certificate_secret_ref: None }
    }

    #[test]
    fn new_ids_are_blocked_and_ids_no_longer_asked_unblocked_case_insensitively() {
        let wanted = [device("Sensor-1"), device("sensor-3")];
        let plan = plan(&wanted, &["sensor-1".into(), "sensor-2".into()]);
        assert_eq!(plan.block, [&wanted[1]]);
        assert_eq!(plan.unblock, ["sensor-2"]);
        let settled = super::plan(&wanted, &["sensor-1".into(), "SENSOR-3".into()]);
        assert_eq!(settled, Plan { block: vec![], unblock: vec![] });
    }
}
