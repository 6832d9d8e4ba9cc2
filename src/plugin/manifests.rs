//! What `kubectl dps import` writes, made from DPS records with no I/O: one resource per enrollment
//! group and individual enrollment, carrying every field as DPS holds it and `adoption: Adopt`,
//! and the Secrets it can fill (webhook URLs, and symmetric keys when they were read).

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret as KubeSecret};
use kube::api::ObjectMeta;
use serde_json::Value;

use super::names::Names;
use crate::{
    api::{
        self, Adoption, CaReferences, CertificatePair, CertificateSecretRef, CustomAllocation,
        DeletionPolicy, EnrollmentGroupSpec, EnrollmentSettings, GroupAttestation, GroupX509Attestation,
        IndividualAttestation, IndividualEnrollmentSpec, IndividualX509Attestation, InitialTwin, JsonObject,
        ReprovisionPolicy, SecretKeySelector, SecretReference, ServiceKind, ServiceRef,
        SymmetricKeyAttestation, TpmAttestation,
    },
    controller::desired::DpsRecord,
    dps::models::{self, AttestationMechanism, X509Certificates},
};

/// The key of the webhook URL in the Secrets import writes.
pub const WEBHOOK_URL_KEY: &str = "url";
/// The annotation naming the DPS host a resource was imported from.
pub const IMPORTED_FROM_ANNOTATION: &str = "dps.iot.dev/imported-from";

/// How the imported resources are written.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The namespace to put in each manifest; none leaves it to `kubectl apply -n`.
    pub namespace: Option<String>,
    /// The connection the resources use.
    pub connection: String,
    pub connection_kind: Option<ServiceKind>,
    pub labels: BTreeMap<String, String>,
    pub deletion_policy: Option<DeletionPolicy>,
    /// The DPS host, recorded on each resource.
    pub host: String,
}

/// One manifest, with the comment that goes above it: what the user still has to provide.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub kind: &'static str,
    pub name: String,
    pub comment: Option<String>,
    pub object: Value,
}

/// An enrollment read from DPS, with its symmetric keys when they were read.
pub struct Imported<R> {
    pub record: R,
    pub keys: Option<(String, String)>,
}

macro_rules! common_of {
    ($record:expr) => {
        Common {
            capabilities: $record.capabilities.as_ref(),
            initial_twin: $record.initial_twin.as_ref(),
            provisioning_status: $record.provisioning_status,
            reprovision_policy: $record.reprovision_policy.as_ref(),
            allocation_policy: $record.allocation_policy,
            iot_hubs: $record.iot_hubs.as_ref(),
            custom_allocation: $record.custom_allocation_definition.as_ref(),
        }
    };
}

/// The manifests for `groups` and `enrollments`: for each, its Secrets first, then the resource.
pub fn manifests<'a>(
    groups: &'a [Imported<models::EnrollmentGroup>],
    enrollments: &'a [Imported<models::IndividualEnrollment>],
    options: &'a Options,
) -> impl Iterator<Item = Manifest> + 'a {
    // Made one resource at a time, so that a large import holds the records, not every manifest.
    let names = Names::assign(
        groups.iter().map(|g| g.record.enrollment_group_id.as_str()),
        enrollments.iter().map(|e| e.record.registration_id.as_str()),
    );
    let groups = groups.iter().zip(names.groups).flat_map(move |(group, name)| {
        let record = &group.record;
        let mut secrets = Secrets::new(name, options);
        let attestation = group_attestation(&record.attestation, &mut secrets, group.keys.as_ref());
        let settings = settings(common_of!(record), &mut secrets, options);
        let spec = EnrollmentGroupSpec {
            enrollment_group_id: Some(record.enrollment_group_id.clone()),
            attestation,
            device_keys: None,
            blocked_devices: Vec::new(),
            settings,
        };
        secrets.finish("EnrollmentGroup", serde_json::to_value(spec))
    });
    let enrollments = enrollments.iter().zip(names.enrollments).flat_map(move |(enrollment, name)| {
        let record = &enrollment.record;
        let mut secrets = Secrets::new(name, options);
        let attestation = individual_attestation(&record.attestation, &mut secrets, enrollment.keys.as_ref());
        let settings = settings(common_of!(record), &mut secrets, options);
        let spec = IndividualEnrollmentSpec {
            registration_id: Some(record.registration_id.clone()),
            attestation,
            device_id: record.device_id.clone(),
            optional_device_information: record.optional_device_information.clone(),
            settings,
        };
        secrets.finish("IndividualEnrollment", serde_json::to_value(spec))
    });
    groups.chain(enrollments)
}

/// What import needs to know of a record of either kind.
pub trait Record {
    /// What DPS calls the kind, for messages.
    const WHAT: &'static str;
    /// Whether its attestation is a symmetric key.
    fn symmetric_key(&self) -> bool;
}

impl Record for models::EnrollmentGroup {
    const WHAT: &'static str = "enrollment group";
    fn symmetric_key(&self) -> bool {
        self.attestation.type_ == models::AttestationType::SymmetricKey
    }
}

impl Record for models::IndividualEnrollment {
    const WHAT: &'static str = "individual enrollment";
    fn symmetric_key(&self) -> bool {
        self.attestation.type_ == models::AttestationType::SymmetricKey
    }
}

/// Why an enrollment group cannot be imported, if it cannot.
pub fn group_skip_reason(group: &models::EnrollmentGroup) -> Option<String> {
    let attestation = &group.attestation;
    let x509 = attestation.x509.as_ref();
    match attestation.type_ {
        models::AttestationType::SymmetricKey => None,
        models::AttestationType::X509
            if x509.is_some_and(|x| x.signing_certificates.is_some() || x.ca_references.is_some()) =>
        {
            None
        }
        other => Some(format!(
            "attestation {other:?} without signing certificates or CA references cannot be managed"
        )),
    }
}

/// Why an individual enrollment cannot be imported, if it cannot.
pub fn enrollment_skip_reason(enrollment: &models::IndividualEnrollment) -> Option<String> {
    if let Some(set) = enrollment.made_by_set() {
        return Some(format!("made by IndividualEnrollmentSet {set}: manage it through that set"));
    }
    if let Some(group) = enrollment.blocks_a_device_of() {
        return Some(format!(
            "blocks a device of enrollment group {group}: manage it through that group's spec.blockedDevices"
        ));
    }
    let attestation = &enrollment.attestation;
    match attestation.type_ {
        models::AttestationType::SymmetricKey => None,
        models::AttestationType::Tpm if attestation.tpm.is_some() => None,
        models::AttestationType::X509 if attestation.x509.as_ref().is_some_and(|x| x.client_certificates.is_some()) => None,
        models::AttestationType::X509 => Some(
            "X.509 with CA references: an IndividualEnrollment takes client certificates; use an enrollment group"
                .into(),
        ),
        other => Some(format!("attestation {other:?} cannot be managed")),
    }
}

/// The fields both record kinds share.
pub struct Common<'a> {
    capabilities: Option<&'a models::DeviceCapabilities>,
    initial_twin: Option<&'a models::InitialTwin>,
    provisioning_status: Option<models::ProvisioningStatus>,
    reprovision_policy: Option<&'a models::ReprovisionPolicy>,
    allocation_policy: Option<models::AllocationPolicy>,
    iot_hubs: Option<&'a Vec<String>>,
    custom_allocation: Option<&'a models::CustomAllocationDefinition>,
}

fn settings(common: Common<'_>, secrets: &mut Secrets<'_>, options: &Options) -> EnrollmentSettings {
    let twin = common.initial_twin.map(|twin| InitialTwin {
        tags: twin.tags.as_ref().map(JsonObject::from),
        desired_properties: twin.properties.as_ref().and_then(|p| p.desired.as_ref()).map(JsonObject::from),
    });
    EnrollmentSettings {
        service_ref: ServiceRef { kind: options.connection_kind, name: options.connection.clone() },
        iot_hubs: common.iot_hubs.filter(|hubs| !hubs.is_empty()).cloned(),
        allocation_policy: common.allocation_policy.map(|policy| match policy {
            models::AllocationPolicy::Hashed => api::AllocationPolicy::Hashed,
            models::AllocationPolicy::GeoLatency => api::AllocationPolicy::GeoLatency,
            models::AllocationPolicy::Static => api::AllocationPolicy::Static,
            models::AllocationPolicy::Custom => api::AllocationPolicy::Custom,
        }),
        custom_allocation: common.custom_allocation.map(|custom| {
            let name = secrets.add("webhook", [(WEBHOOK_URL_KEY, custom.webhook_url.expose().to_owned())]);
            Box::new(CustomAllocation {
                webhook_url_secret_ref: SecretKeySelector { name, key: WEBHOOK_URL_KEY.into() },
                api_version: custom.api_version.clone(),
            })
        }),
        initial_twin: twin.filter(|t| t.tags.is_some() || t.desired_properties.is_some()),
        iot_edge: common.capabilities.is_some_and(|c| c.iot_edge).then_some(true),
        reprovision_policy: common.reprovision_policy.map(|policy| ReprovisionPolicy {
            update_hub_assignment: Some(policy.update_hub_assignment),
            migrate_device_data: Some(policy.migrate_device_data),
        }),
        provisioning_status: Some(match common.provisioning_status.unwrap_or_default() {
            models::ProvisioningStatus::Enabled => api::ProvisioningStatus::Enabled,
            models::ProvisioningStatus::Disabled => api::ProvisioningStatus::Disabled,
        }),
        deletion_policy: options.deletion_policy,
        deletion_protection: None,
        delete_registration_records: None,
        adoption: Some(Adoption::Adopt),
        management_policy: None,
        drift_check_interval: None,
    }
}

fn symmetric_key(secrets: &mut Secrets<'_>, keys: Option<&(String, String)>) -> SymmetricKeyAttestation {
    let name = secrets.name("keys");
    match keys {
        Some((primary, secondary)) => {
            secrets.add("keys", [("primaryKey", primary.clone()), ("secondaryKey", secondary.clone())]);
        }
        None => secrets.fill(format!(
            "Secret {name}: create it with the keys DPS holds under primaryKey and secondaryKey \
             (import with --with-keys to have it written); until then the operator waits and writes nothing."
        )),
    }
    SymmetricKeyAttestation {
        secret_ref: SecretReference { name },
        create_secret: Some(false),
        rotation: None,
    }
}

/// The certificate slots DPS holds, as Secrets the user fills.
fn certificates(certificates: &X509Certificates, secrets: &mut Secrets<'_>) -> CertificatePair {
    let mut slot = |suffix: &str, held: Option<&models::X509CertificateWithInfo>| {
        let held = held?;
        let name = secrets.name(suffix);
        let thumbprint = held.info.as_ref().map(|i| i.sha256_thumbprint.clone()).unwrap_or_default();
        let subject = held.info.as_ref().map(|i| i.subject_name.clone()).unwrap_or_default();
        secrets.fill(format!(
            "Secret {name}: put the certificate (PEM, key tls.crt) of SHA-256 thumbprint {thumbprint} ({subject}) \
             in it; until then the operator waits and writes nothing."
        ));
        Some(CertificateSecretRef { name, key: None })
    };
    let primary = slot("cert", certificates.primary.as_ref());
    let secondary = slot("cert2", certificates.secondary.as_ref());
    CertificatePair { primary, certificate_ref: None, secondary, rollover_overlap: None }
}

fn group_attestation(
    attestation: &AttestationMechanism,
    secrets: &mut Secrets<'_>,
    keys: Option<&(String, String)>,
) -> GroupAttestation {
    let x509 = attestation.x509.as_ref();
    match (x509.and_then(|x| x.signing_certificates.as_ref()), x509.and_then(|x| x.ca_references.as_ref())) {
        _ if attestation.symmetric_key.is_some() || x509.is_none() => {
            GroupAttestation { symmetric_key: Some(symmetric_key(secrets, keys)), x509: None }
        }
        (Some(signing), _) => GroupAttestation {
            symmetric_key: None,
            x509: Some(GroupX509Attestation {
                signing_certificates: Some(certificates(signing, secrets)),
                ca_references: None,
            }),
        },
        (None, references) => GroupAttestation {
            symmetric_key: None,
            x509: Some(GroupX509Attestation {
                signing_certificates: None,
                ca_references: references.map(|r| CaReferences {
                    primary: r.primary.clone().unwrap_or_default(),
                    secondary: r.secondary.clone(),
                }),
            }),
        },
    }
}

fn individual_attestation(
    attestation: &AttestationMechanism,
    secrets: &mut Secrets<'_>,
    keys: Option<&(String, String)>,
) -> IndividualAttestation {
    let none = IndividualAttestation { symmetric_key: None, x509: None, tpm: None };
    match (&attestation.tpm, attestation.x509.as_ref().and_then(|x| x.client_certificates.as_ref())) {
        (Some(tpm), _) => IndividualAttestation {
            tpm: Some(Box::new(TpmAttestation {
                endorsement_key: tpm.endorsement_key.clone(),
                storage_root_key: tpm.storage_root_key.clone(),
            })),
            ..none
        },
        (None, Some(client)) => IndividualAttestation {
            x509: Some(Box::new(IndividualX509Attestation {
                client_certificates: certificates(client, secrets),
            })),
            ..none
        },
        (None, None) => IndividualAttestation { symmetric_key: Some(symmetric_key(secrets, keys)), ..none },
    }
}

/// The Secrets of one resource: those written, and those the user fills.
struct Secrets<'a> {
    resource: String,
    options: &'a Options,
    manifests: Vec<Manifest>,
    to_fill: Option<String>,
}

impl<'a> Secrets<'a> {
    fn new(resource: String, options: &'a Options) -> Self {
        Self { resource, options, manifests: Vec::new(), to_fill: None }
    }

    /// The Secrets written, then the resource of `kind` with `spec`.
    fn finish(mut self, kind: &'static str, spec: Result<Value, serde_json::Error>) -> Vec<Manifest> {
        let resource = resource(kind, &self.resource, self.options, self.to_fill.take(), spec);
        self.manifests.push(resource);
        self.manifests
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.resource)
    }

    /// Writes a Secret with `entries`; answers its name.
    fn add<const N: usize>(&mut self, suffix: &str, entries: [(&str, String); N]) -> String {
        let name = self.name(suffix);
        let secret = KubeSecret {
            metadata: metadata(&name, self.options),
            data: Some(
                entries.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes()))).collect(),
            ),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let mut object = serde_json::to_value(secret).unwrap_or_default();
        object["apiVersion"] = "v1".into();
        object["kind"] = "Secret".into();
        self.manifests.push(Manifest { kind: "Secret", name: name.clone(), comment: None, object });
        name
    }

    /// Notes a Secret the user has to create.
    fn fill(&mut self, what: String) {
        self.to_fill = Some(match self.to_fill.take() {
            Some(before) => format!("{before}\n{what}"),
            None => what,
        });
    }
}

fn metadata(name: &str, options: &Options) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: options.namespace.clone(),
        labels: (!options.labels.is_empty()).then(|| options.labels.clone()),
        ..Default::default()
    }
}

fn resource(
    kind: &'static str,
    name: &str,
    options: &Options,
    comment: Option<String>,
    spec: Result<Value, serde_json::Error>,
) -> Manifest {
    let mut meta = metadata(name, options);
    meta.annotations = Some([(IMPORTED_FROM_ANNOTATION.to_owned(), options.host.clone())].into());
    let object = serde_json::json!({
        "apiVersion": format!("{}/{}", api::GROUP, api::STORAGE_VERSION),
        "kind": kind,
        "metadata": meta,
        // The spec types serialize to JSON objects: they hold no maps with non-string keys.
        "spec": spec.unwrap_or_default(),
    });
    Manifest { kind, name: name.to_owned(), comment, object }
}

/// One manifest as a YAML document, its comment lines first.
pub fn document(manifest: &Manifest) -> String {
    let mut out = String::new();
    for line in manifest.comment.iter().flat_map(|c| c.lines()) {
        out.push_str(&format!("# {line}\n"));
    }
    out.push_str(&serde_yaml_ng::to_string(&manifest.object).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests;
