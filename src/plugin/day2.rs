//! The commands that work on one enrollment resource in the cluster, through its own connection:
//! `device-key` (of a group's device or a set's member), `registrations` and `rotate`.

use futures::TryStreamExt;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    Error,
    cluster::{Cluster, ClusterArgs},
    connect::{self, Dps},
};
use crate::{
    api::{EnrollmentGroup, IndividualEnrollment, IndividualEnrollmentSet, KeySlot, ROTATE_KEYS_ANNOTATION},
    controller::{derive_device_key, desired::DpsRecord, kinds::EnrollmentKind},
    dps::{
        IfMatch,
        models::{
            AttestationMechanism, DeviceRegistrationState,
            IndividualEnrollment as IndividualEnrollmentRecord, Secret as DpsSecret,
        },
    },
};

/// An enrollment resource, of either kind.
enum Target {
    Group(Box<EnrollmentGroup>),
    Individual(Box<IndividualEnrollment>),
}

impl Target {
    /// `EnrollmentGroup iot/thermostats`.
    fn what(&self) -> String {
        match self {
            Self::Group(g) => {
                format!("EnrollmentGroup {}/{}", g.namespace().unwrap_or_default(), g.name_any())
            }
            Self::Individual(e) => {
                format!("IndividualEnrollment {}/{}", e.namespace().unwrap_or_default(), e.name_any())
            }
        }
    }

    fn dps_id(&self) -> String {
        match self {
            Self::Group(g) => g.dps_id(),
            Self::Individual(e) => e.dps_id(),
        }
    }

    fn keys(&self) -> (bool, Option<&crate::api::KeysStatus>) {
        let (symmetric, status) = match self {
            Self::Group(g) => {
                (g.spec.attestation.symmetric_key.is_some(), g.status.as_ref().map(|s| &s.enrollment))
            }
            Self::Individual(e) => {
                (e.spec.attestation.symmetric_key.is_some(), e.status.as_ref().map(|s| &s.enrollment))
            }
        };
        (symmetric, status.and_then(|s| s.keys.as_deref()))
    }

    async fn dps(&self, cluster: &Cluster) -> Result<Dps, Error> {
        let (namespace, service) = match self {
            Self::Group(g) => (g.namespace(), &g.spec.settings.service_ref),
            Self::Individual(e) => (e.namespace(), &e.spec.settings.service_ref),
        };
        connect::from_service(
            cluster,
            &namespace.unwrap_or_default(),
            service,
            &cluster.operator_namespace,
            None,
        )
        .await
    }
}

/// `NAME`, or `KIND/NAME` with a kind kubectl knows the enrollments by.
fn parse_target(text: &str) -> Result<(Option<bool>, &str), Error> {
    let Some((kind, name)) = text.split_once('/') else { return Ok((None, text)) };
    let group = match kind.to_ascii_lowercase().as_str() {
        "enrollmentgroup" | "enrollmentgroups" | "eg" | "dpseg" => true,
        "individualenrollment" | "individualenrollments" | "ie" | "dpsie" => false,
        _ => return Err(Error::Input(format!("{text}: not an EnrollmentGroup or IndividualEnrollment"))),
    };
    Ok((Some(group), name))
}

async fn find(cluster: &Cluster, text: &str) -> Result<Target, Error> {
    let (group, name) = parse_target(text)?;
    let namespace = &cluster.namespace;
    let get_group = async {
        let api = Api::<EnrollmentGroup>::namespaced(cluster.client.clone(), namespace);
        api.get_opt(name).await.map_err(|source| Error::Kube {
            action: format!("reading EnrollmentGroup {namespace}/{name}"),
            source,
        })
    };
    let get_individual = async {
        let api = Api::<IndividualEnrollment>::namespaced(cluster.client.clone(), namespace);
        api.get_opt(name).await.map_err(|source| Error::Kube {
            action: format!("reading IndividualEnrollment {namespace}/{name}"),
            source,
        })
    };
    let found = match group {
        Some(true) => (get_group.await?, None),
        Some(false) => (None, get_individual.await?),
        None => (get_group.await?, get_individual.await?),
    };
    match found {
        (Some(_), Some(_)) => Err(Error::Input(format!(
            "both an EnrollmentGroup and an IndividualEnrollment {namespace}/{name} exist: say \
             enrollmentgroup/{name} or individualenrollment/{name}"
        ))),
        (Some(group), None) => Ok(Target::Group(Box::new(group))),
        (None, Some(individual)) => Ok(Target::Individual(Box::new(individual))),
        (None, None) => {
            let kinds = match group {
                Some(true) => "EnrollmentGroup",
                Some(false) => "IndividualEnrollment",
                None => "EnrollmentGroup or IndividualEnrollment",
            };
            Err(Error::NotFound(format!("there is no {kinds} {namespace}/{name}")))
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DeviceKeyArgs {
    /// The symmetric-key EnrollmentGroup (`NAME`), or IndividualEnrollmentSet (`ieset/NAME`).
    pub group: String,
    /// The device's registration id.
    pub registration_id: String,
    /// This slot's key: primary or secondary (default: for a group, the active slot, the one the
    /// operator gives devices; for a set, primary, the one its device keys Secret holds).
    #[arg(long, value_parser = ["primary", "secondary"])]
    pub slot: Option<String>,
}

pub async fn device_key(cluster_args: &ClusterArgs, args: DeviceKeyArgs) -> Result<(), Error> {
    let cluster = cluster_args.connect().await?;
    let key = match args.group.split_once('/') {
        Some((kind, name)) if is_set_kind(kind) => member_key(&cluster, name, &args).await?,
        _ => group_device_key(&cluster, &args).await?,
    };
    println!("{}", key.expose());
    Ok(())
}

fn is_set_kind(kind: &str) -> bool {
    let kind = kind.to_ascii_lowercase();
    ["individualenrollmentset", "individualenrollmentsets", "ieset", "dpsset"].contains(&kind.as_str())
}

fn chosen_slot(slot: Option<&str>, default: KeySlot) -> KeySlot {
    match slot {
        Some("secondary") => KeySlot::Secondary,
        Some(_) => KeySlot::Primary,
        None => default,
    }
}

/// The key in `slot` of what DPS answered to `action`.
fn key_in(mechanism: AttestationMechanism, slot: KeySlot, action: &str) -> Result<DpsSecret, Error> {
    let keys = mechanism.symmetric_key.unwrap_or_default();
    let key = match slot {
        KeySlot::Primary => keys.primary_key,
        KeySlot::Secondary => keys.secondary_key,
    };
    key.ok_or_else(|| Error::Connection(format!("{action}: DPS holds no {slot:?} key")))
}

/// A device's key derived from its group's key in DPS.
async fn group_device_key(cluster: &Cluster, args: &DeviceKeyArgs) -> Result<DpsSecret, Error> {
    let name = args.group.split_once('/').map_or(args.group.as_str(), |(_, name)| name);
    let group = find(cluster, &format!("enrollmentgroup/{name}")).await?;
    let (symmetric, keys) = group.keys();
    if !symmetric {
        return Err(Error::Input(format!("{} uses X.509: its devices have no derived keys", group.what())));
    }
    let slot = chosen_slot(args.slot.as_deref(), keys.map(|k| k.active_slot).unwrap_or_default());
    let dps = group.dps(cluster).await?;
    let id = group.dps_id();
    let action = format!("reading the keys of enrollment group {id} from {}", dps.name);
    let mechanism = dps
        .client
        .attestation_mechanism::<crate::dps::models::EnrollmentGroup>(&id)
        .await
        .map_err(|source| Error::Dps { action: action.clone(), source })?;
    let key = key_in(mechanism, slot, &action)?;
    derive_device_key(&key, &args.registration_id)
        .ok_or_else(|| Error::Connection(format!("{action}: the {slot:?} key is not base64")))
}

/// A set member's key, as DPS holds it for the enrollment the set made (derived from the set's
/// key when it was written).
async fn member_key(cluster: &Cluster, name: &str, args: &DeviceKeyArgs) -> Result<DpsSecret, Error> {
    let namespace = &cluster.namespace;
    let what = format!("IndividualEnrollmentSet {namespace}/{name}");
    let api = Api::<IndividualEnrollmentSet>::namespaced(cluster.client.clone(), namespace);
    let set = api
        .get_opt(name)
        .await
        .map_err(|source| Error::Kube { action: format!("reading {what}"), source })?
        .ok_or_else(|| Error::NotFound(format!("there is no {what}")))?;
    if set.spec.attestation.symmetric_key.is_none() {
        return Err(Error::Input(format!("{what} uses no symmetric keys: its devices have no derived keys")));
    }
    let dps =
        connect::from_service(cluster, namespace, &set.spec.service_ref, &cluster.operator_namespace, None)
            .await?;
    let id = &args.registration_id;
    let action = format!("reading individual enrollment {id} from {}", dps.name);
    let record = match dps.client.get::<IndividualEnrollmentRecord>(id).await {
        Ok(record) => record,
        Err(crate::dps::Error::NotFound { .. }) => {
            return Err(Error::NotFound(format!("{what} has no member {id} in {}", dps.name)));
        }
        Err(source) => return Err(Error::Dps { action, source }),
    };
    if record.made_by_set() != Some(format!("{namespace}/{name}").as_str()) {
        return Err(Error::NotFound(format!(
            "individual enrollment {id} in {} was not made by {what}",
            dps.name
        )));
    }
    let mechanism = dps
        .client
        .attestation_mechanism::<IndividualEnrollmentRecord>(id)
        .await
        .map_err(|source| Error::Dps { action: action.clone(), source })?;
    key_in(mechanism, chosen_slot(args.slot.as_deref(), KeySlot::Primary), &action)
}

#[derive(clap::Args, Debug)]
pub struct RegistrationsArgs {
    /// The EnrollmentGroup or IndividualEnrollment (`NAME`, or `eg/NAME`, `ie/NAME`).
    pub name: String,
    /// Output format: table, json or yaml.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
    pub output: String,
    /// Delete this device's registration record, so that it provisions afresh (its device in
    /// IoT Hub stays).
    #[arg(long, value_name = "REGISTRATION_ID")]
    pub delete: Option<String>,
}

pub async fn registrations(cluster_args: &ClusterArgs, args: RegistrationsArgs) -> Result<(), Error> {
    let cluster = cluster_args.connect().await?;
    let target = find(&cluster, &args.name).await?;
    let dps = target.dps(&cluster).await?;
    let id = target.dps_id();
    let action = format!("reading the registrations of {} from {}", target.what(), dps.name);
    let failed = |source| Error::Dps { action: action.clone(), source };
    let records: Vec<DeviceRegistrationState> = match &target {
        Target::Group(_) => {
            dps.client.query_registrations(&id, Some(100)).try_collect().await.map_err(failed)?
        }
        Target::Individual(_) => match dps.client.get_registration(&id).await {
            Ok(record) => vec![record],
            Err(crate::dps::Error::NotFound { .. }) => Vec::new(),
            Err(source) => return Err(failed(source)),
        },
    };
    let Some(delete) = args.delete else {
        print!("{}", render_registrations(&records, &args.output));
        return Ok(());
    };
    let record = records
        .iter()
        .find(|r| r.registration_id.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(&delete)))
        .ok_or_else(|| {
            Error::NotFound(format!("{} has no registration record {delete} in DPS", target.what()))
        })?;
    let if_match = record.etag.as_deref().map_or(IfMatch::Any, IfMatch::Etag);
    dps.client.delete_registration(&delete, if_match).await.map_err(|source| Error::Dps {
        action: format!("deleting registration record {delete} in {}", dps.name),
        source,
    })?;
    println!(
        "Deleted the registration record of {delete}; the device provisions afresh at its next registration."
    );
    Ok(())
}

/// The records as a table, JSON or YAML.
pub fn render_registrations(records: &[DeviceRegistrationState], format: &str) -> String {
    match format {
        "json" => format!("{}\n", serde_json::to_string_pretty(records).unwrap_or_default()),
        "yaml" => serde_yaml_ng::to_string(records).unwrap_or_default(),
        _ if records.is_empty() => "No registration records.\n".into(),
        _ => {
            let text = |value: Option<String>| value.unwrap_or_else(|| "-".into());
            let rows = records.iter().map(|r| {
                [
                    text(r.registration_id.clone()),
                    text(r.status.map(|s| format!("{s:?}").to_lowercase())),
                    text(r.device_id.clone()),
                    text(r.assigned_hub.clone()),
                    text(r.last_updated_date_time_utc.map(|t| t.0.to_string())),
                    text(r.error_message.clone()),
                ]
            });
            super::status::table(
                &["REGISTRATION ID", "STATUS", "DEVICE ID", "ASSIGNED HUB", "LAST UPDATED", "ERROR"],
                rows,
            )
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct RotateArgs {
    /// The EnrollmentGroup or IndividualEnrollment (`NAME`, or `eg/NAME`, `ie/NAME`).
    pub name: String,
}

pub async fn rotate(cluster_args: &ClusterArgs, args: RotateArgs) -> Result<(), Error> {
    let cluster = cluster_args.connect().await?;
    let target = find(&cluster, &args.name).await?;
    let what = target.what();
    match target.keys() {
        (false, _) => return Err(Error::Input(format!("{what} uses no symmetric keys: nothing to rotate"))),
        (true, None) => {
            return Err(Error::Input(format!(
                "{what} has no key status yet: rotate once the operator has synced it"
            )));
        }
        (true, Some(keys)) if keys.generated != Some(true) => {
            return Err(Error::Input(format!(
                "{what} uses keys you supply, which the operator never rotates: write a new key into the slot \
                 devices do not use in its Secret, then make it the activeKey"
            )));
        }
        (true, Some(_)) => {}
    }
    let trigger = jiff::Timestamp::now().to_string();
    let patch = Patch::Merge(json!({"metadata": {"annotations": {ROTATE_KEYS_ANNOTATION: trigger}}}));
    let params = PatchParams::default();
    let name = args.name.split_once('/').map_or(args.name.as_str(), |(_, name)| name);
    let patched = match target {
        Target::Group(_) => Api::<EnrollmentGroup>::namespaced(cluster.client.clone(), &cluster.namespace)
            .patch(name, &params, &patch)
            .await
            .map(drop),
        Target::Individual(_) => {
            Api::<IndividualEnrollment>::namespaced(cluster.client.clone(), &cluster.namespace)
                .patch(name, &params, &patch)
                .await
                .map(drop)
        }
    };
    patched.map_err(|source| Error::Kube { action: format!("annotating {what}"), source })?;
    println!(
        "Started a key rotation of {what} ({ROTATE_KEYS_ANNOTATION}={trigger}); its status.keys shows it through."
    );
    Ok(())
}
