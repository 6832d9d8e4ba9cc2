//! The pure middle of the reconcile: `build` the DPS record from the spec and the resolved
//! Secrets, `compare` it with what DPS holds, and `decide` what to do. No I/O here.

use serde_json::{Map, Value};

use super::{Error, digest_key::DigestKey, enrollment_set::SET_MARK, key_rotation::KeySecretState};
use crate::{
    api::{self, EnrollmentSettings},
    certificates::CertificateFacts,
    dps::models::{
        AllocationPolicy, AttestationMechanism, AttestationType, CustomAllocationDefinition,
        DeviceCapabilities, EnrollmentGroup, IndividualEnrollment, InitialTwin, InitialTwinProperties,
        ProvisioningStatus, ReprovisionPolicy, Secret, SymmetricKeyAttestation, TpmAttestation,
        X509Attestation, X509CaReferences, X509CertificateWithInfo, X509Certificates,
    },
};

/// An enrollment's attestation as its spec states it.
#[derive(Clone, Copy, Debug)]
pub enum AttestationInput<'a> {
    SymmetricKey(&'a api::SymmetricKeyAttestation),
    /// Leaf certificates of an individual enrollment.
    ClientCertificates(&'a api::CertificatePair),
    /// Signing certificates of an enrollment group.
    SigningCertificates(&'a api::CertificatePair),
    CaReferences(&'a api::CaReferences),
    Tpm(&'a api::TpmAttestation),
}

impl AttestationInput<'_> {
    pub fn kind(&self) -> api::AttestationKind {
        match self {
            Self::SymmetricKey(_) => api::AttestationKind::SymmetricKey,
            Self::ClientCertificates(_) | Self::SigningCertificates(_) | Self::CaReferences(_) => {
                api::AttestationKind::X509
            }
            Self::Tpm(_) => api::AttestationKind::Tpm,
        }
    }
}

/// A certificate read from a Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedCertificate {
    /// The first certificate of the Secret's value, as PEM.
    pub pem: String,
    pub facts: CertificateFacts,
}

impl ResolvedCertificate {
    /// What the status shows of it.
    pub fn info(&self) -> api::CertificateInfo {
        let facts = &self.facts;
        api::CertificateInfo {
            subject: facts.subject.clone(),
            issuer: facts.issuer.clone(),
            serial_number: facts.serial_number.clone(),
            sha1_thumbprint: facts.sha1_thumbprint.clone(),
            sha256_thumbprint: facts.sha256_thumbprint.clone(),
            not_before: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(facts.not_before),
            not_after: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(facts.not_after),
            current: None,
            pem: None,
        }
    }
}

/// A certificate pair that rolls over (the spec names a primary alone), and the previous
/// certificate it keeps, if any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollover {
    pub previous: Option<Previous>,
}

/// The previous certificate, kept in the secondary slot ([`super::rollover`] decides).
#[derive(Clone, Debug, PartialEq)]
pub struct Previous {
    pub certificate: ResolvedCertificate,
    /// When it stopped being the current one.
    pub since: jiff::Timestamp,
    /// When it leaves the secondary slot.
    pub until: jiff::Timestamp,
}

/// What the Secrets an enrollment references hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    /// Primary and secondary symmetric key (base64).
    pub keys: Option<(Secret, Secret)>,
    /// What the key Secret says besides the keys: the active slot and its rotation.
    pub key_secret: Option<KeySecretState>,
    /// Set when the certificates roll over (a primary alone in the spec).
    pub rollover: Option<Rollover>,
    /// Primary and optional secondary certificate.
    pub certificates: Option<(ResolvedCertificate, Option<ResolvedCertificate>)>,
    pub webhook_url: Option<Secret>,
}

impl Resolved {
    /// A digest of the secret inputs (symmetric keys, webhook URL), to notice a changed Secret
    /// without comparing secrets DPS does not return: HMAC-SHA256 with the operator's own key,
    /// so that it confirms nothing about a guessed secret to whoever reads the status.
    pub fn secrets_digest(&self, key: &DigestKey) -> Option<String> {
        let mut nothing_secret = false;
        let digest =
            key.sign(|context| nothing_secret = self.digest_parts(|part| context.update(part)).is_none());
        (!nothing_secret).then_some(digest)
    }

    /// The unkeyed SHA-256 digest statuses held before digests were keyed: only compared, to
    /// take such a status over without treating its secrets as changed.
    pub fn unkeyed_secrets_digest(&self) -> Option<String> {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        self.digest_parts(|part| context.update(part))?;
        Some(hex(context.finish().as_ref()))
    }

    fn digest_parts(&self, mut update: impl FnMut(&[u8])) -> Option<()> {
        if self.keys.is_none() && self.webhook_url.is_none() {
            return None;
        }
        let keys = self.keys.as_ref();
        let parts = [
            Some("dps-operator/secrets/v1"),
            keys.map(|k| k.0.expose()),
            keys.map(|k| k.1.expose()),
            self.webhook_url.as_ref().map(Secret::expose),
        ];
        for part in parts {
            update(part.unwrap_or_default().as_bytes());
            update(&[0]);
        }
        Some(())
    }

    /// The SHA-256 thumbprints of the certificates, primary and secondary.
    pub fn certificate_thumbprints(&self) -> Option<(String, Option<String>)> {
        let (primary, secondary) = self.certificates.as_ref()?;
        Some((
            primary.facts.sha256_thumbprint.clone(),
            secondary.as_ref().map(|s| s.facts.sha256_thumbprint.clone()),
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DPS attestation for `input` with the material in `resolved`.
fn attestation(input: AttestationInput<'_>, resolved: &Resolved) -> AttestationMechanism {
    let certificates = || {
        let slot = |c: &ResolvedCertificate| X509CertificateWithInfo {
            certificate: Some(c.pem.clone()),
            info: None,
        };
        resolved.certificates.as_ref().map(|(primary, secondary)| X509Certificates {
            primary: Some(slot(primary)),
            secondary: secondary.as_ref().map(slot),
        })
    };
    let mut mechanism = AttestationMechanism::default();
    match input {
        AttestationInput::SymmetricKey(_) => {
            mechanism.type_ = AttestationType::SymmetricKey;
            mechanism.symmetric_key = Some(SymmetricKeyAttestation {
                primary_key: resolved.keys.as_ref().map(|k| k.0.clone()),
                secondary_key: resolved.keys.as_ref().map(|k| k.1.clone()),
            });
        }
        AttestationInput::ClientCertificates(_) => {
            mechanism.type_ = AttestationType::X509;
            mechanism.x509 =
                Some(X509Attestation { client_certificates: certificates(), ..Default::default() });
        }
        AttestationInput::SigningCertificates(_) => {
            mechanism.type_ = AttestationType::X509;
            mechanism.x509 =
                Some(X509Attestation { signing_certificates: certificates(), ..Default::default() });
        }
        AttestationInput::CaReferences(references) => {
            mechanism.type_ = AttestationType::X509;
            mechanism.x509 = Some(X509Attestation {
                ca_references: Some(X509CaReferences {
                    primary: Some(references.primary.clone()),
                    secondary: references.secondary.clone(),
                }),
                ..Default::default()
            });
        }
        AttestationInput::Tpm(tpm) => {
            mechanism.type_ = AttestationType::Tpm;
            mechanism.tpm = Some(TpmAttestation {
                endorsement_key: tpm.endorsement_key.clone(),
                storage_root_key: tpm.storage_root_key.clone(),
            });
        }
    }
    mechanism
}

/// The DPS attestation type of an attestation kind.
pub fn attestation_type(kind: api::AttestationKind) -> AttestationType {
    match kind {
        api::AttestationKind::SymmetricKey => AttestationType::SymmetricKey,
        api::AttestationKind::X509 => AttestationType::X509,
        api::AttestationKind::Tpm => AttestationType::Tpm,
    }
}

/// IoT Hub's limits on a twin section ("Understand and use device twins in IoT Hub",
/// learn.microsoft.com/azure/iot-hub/iot-hub-devguide-device-twins: tags and properties format,
/// device twin size).
struct TwinLimits {
    /// The section's size as IoT Hub counts it: 8 KB for tags, 32 KB for desired properties.
    size: usize,
}

/// Property names: UTF-8, at most 1 KB.
const TWIN_NAME_BYTES: usize = 1024;
/// String values: UTF-8, at most 4 KB.
const TWIN_STRING_BYTES: usize = 4096;
/// Objects nest at most 10 deep below the section.
const TWIN_DEPTH: usize = 10;

/// Checks a twin section against IoT Hub's limits before anything is sent: IoT Hub would refuse
/// it only when a device provisions. The CRD schema cannot look inside free-form JSON.
fn check_twin(field: &str, twin: &Map<String, Value>, limits: TwinLimits) -> Result<(), Error> {
    let size =
        twin_size(twin, 1).map_err(|(path, what)| Error::InvalidSpec(format!("{field}{path} {what}")))?;
    if size > limits.size {
        return Err(Error::InvalidSpec(format!(
            "{field} is {size} bytes as IoT Hub counts them; IoT Hub allows {}",
            limits.size
        )));
    }
    Ok(())
}

/// The size of `map`, nested `depth` deep, as IoT Hub counts it: each name plus its value;
/// strings count their characters but control characters, numbers 8 bytes, booleans 4, objects
/// what they hold. Or where a limit is broken (the path below `map`) and how.
fn twin_size(map: &Map<String, Value>, depth: usize) -> Result<usize, (String, String)> {
    let mut size = 0;
    for (name, value) in map {
        let here = format!(".{name}");
        let within = |(path, what): (String, String)| (format!("{here}{path}"), what);
        if name.contains(['.', '$', ' ']) || name.chars().any(char::is_control) {
            let what = format!(
                "has the property name {name:?}; twin property names cannot contain '.', '$', spaces or control characters"
            );
            return Err((String::new(), what));
        }
        if name.len() > TWIN_NAME_BYTES {
            let what =
                format!("has a property name of {} bytes; IoT Hub allows {TWIN_NAME_BYTES}", name.len());
            return Err((String::new(), what));
        }
        size += name.chars().filter(|c| !c.is_control()).count();
        size += match value {
            Value::Object(_) if depth == TWIN_DEPTH => {
                return Err((here, format!("nests objects deeper than IoT Hub's {TWIN_DEPTH} levels")));
            }
            Value::Object(inner) => twin_size(inner, depth + 1).map_err(within)?,
            Value::String(text) if text.len() > TWIN_STRING_BYTES => {
                let what = format!("is a string of {} bytes; IoT Hub allows {TWIN_STRING_BYTES}", text.len());
                return Err((here, what));
            }
            Value::String(text) => text.chars().filter(|c| !c.is_control()).count(),
            Value::Number(_) => 8,
            Value::Bool(_) => 4,
            Value::Array(items) => items.iter().map(|item| item.to_string().len()).sum(),
            Value::Null => 0,
        };
    }
    Ok(size)
}

/// The fields both enrollment kinds share, built from the common settings.
struct Common {
    capabilities: DeviceCapabilities,
    initial_twin: Option<InitialTwin>,
    provisioning_status: ProvisioningStatus,
    reprovision_policy: ReprovisionPolicy,
    allocation_policy: Option<AllocationPolicy>,
    iot_hubs: Option<Vec<String>>,
    custom_allocation_definition: Option<CustomAllocationDefinition>,
}

/// Checks the initial twin against IoT Hub's limits; the admission webhook runs the same check.
pub fn check_initial_twin(twin: Option<&api::InitialTwin>) -> Result<(), Error> {
    if let Some(tags) = twin.and_then(|t| t.tags.as_ref()) {
        check_twin("spec.initialTwin.tags", &tags.to_map(), TwinLimits { size: 8 * 1024 })?;
    }
    if let Some(desired) = twin.and_then(|t| t.desired_properties.as_ref()) {
        check_twin("spec.initialTwin.desiredProperties", &desired.to_map(), TwinLimits { size: 32 * 1024 })?;
    }
    Ok(())
}

fn common(settings: &EnrollmentSettings, resolved: &Resolved) -> Result<Common, Error> {
    let twin = settings.initial_twin.as_ref();
    check_initial_twin(twin)?;
    let reprovision = settings.reprovision_policy.as_ref();
    Ok(Common {
        capabilities: DeviceCapabilities { iot_edge: settings.iot_edge.unwrap_or(false) },
        initial_twin: twin.map(|twin| InitialTwin {
            tags: twin.tags.as_ref().map(api::JsonObject::to_map),
            properties: twin
                .desired_properties
                .as_ref()
                .map(|desired| InitialTwinProperties { desired: Some(desired.to_map()) }),
        }),
        provisioning_status: match settings.provisioning_status.unwrap_or_default() {
            api::ProvisioningStatus::Enabled => ProvisioningStatus::Enabled,
            api::ProvisioningStatus::Disabled => ProvisioningStatus::Disabled,
        },
        reprovision_policy: ReprovisionPolicy {
            update_hub_assignment: reprovision.and_then(|r| r.update_hub_assignment).unwrap_or(true),
            migrate_device_data: reprovision.and_then(|r| r.migrate_device_data).unwrap_or(true),
        },
        allocation_policy: settings.allocation_policy.map(|policy| match policy {
            api::AllocationPolicy::Hashed => AllocationPolicy::Hashed,
            api::AllocationPolicy::GeoLatency => AllocationPolicy::GeoLatency,
            api::AllocationPolicy::Static => AllocationPolicy::Static,
            api::AllocationPolicy::Custom => AllocationPolicy::Custom,
        }),
        iot_hubs: settings.iot_hubs.clone(),
        custom_allocation_definition: match (&settings.custom_allocation, &resolved.webhook_url) {
            (Some(custom), Some(url)) => Some(CustomAllocationDefinition {
                webhook_url: url.clone(),
                api_version: custom.api_version.clone(),
            }),
            _ => None,
        },
    })
}

/// The enrollment group DPS should hold.
pub fn enrollment_group(
    id: &str,
    input: AttestationInput<'_>,
    settings: &EnrollmentSettings,
    resolved: &Resolved,
) -> Result<EnrollmentGroup, Error> {
    let common = common(settings, resolved)?;
    Ok(EnrollmentGroup {
        enrollment_group_id: id.to_owned(),
        attestation: attestation(input, resolved),
        capabilities: Some(common.capabilities),
        initial_twin: common.initial_twin,
        provisioning_status: Some(common.provisioning_status),
        reprovision_policy: Some(common.reprovision_policy),
        allocation_policy: common.allocation_policy,
        iot_hubs: common.iot_hubs,
        custom_allocation_definition: common.custom_allocation_definition,
        ..Default::default()
    })
}

/// The individual enrollment DPS should hold.
pub fn individual_enrollment(
    spec: &api::IndividualEnrollmentSpec,
    id: &str,
    input: AttestationInput<'_>,
    resolved: &Resolved,
) -> Result<IndividualEnrollment, Error> {
    Ok(IndividualEnrollment {
        registration_id: id.to_owned(),
        device_id: spec.device_id.clone(),
        optional_device_information: spec.optional_device_information.clone(),
        attestation: attestation(input, resolved),
        ..individual_template(&spec.settings, resolved)?
    })
}

/// An individual enrollment with the fields `settings` give every enrollment, and no id or
/// attestation yet: what the members of a set start from.
pub fn individual_template(
    settings: &EnrollmentSettings,
    resolved: &Resolved,
) -> Result<IndividualEnrollment, Error> {
    let common = common(settings, resolved)?;
    Ok(IndividualEnrollment {
        capabilities: Some(common.capabilities),
        initial_twin: common.initial_twin,
        provisioning_status: Some(common.provisioning_status),
        reprovision_policy: Some(common.reprovision_policy),
        allocation_policy: common.allocation_policy,
        iot_hubs: common.iot_hubs,
        custom_allocation_definition: common.custom_allocation_definition,
        ..Default::default()
    })
}

/// What of an enrollment can be compared between the spec and DPS: every field DPS returns,
/// certificates by thumbprint (DPS never returns them), keys not at all (see
/// [`Resolved::secrets_digest`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Comparable {
    pub attestation_type: AttestationType,
    pub certificate_thumbprints: (Option<String>, Option<String>),
    pub ca_references: Option<X509CaReferences>,
    pub tpm: Option<TpmAttestation>,
    pub device_id: Option<String>,
    pub optional_device_information: Option<Map<String, Value>>,
    pub iot_edge: bool,
    pub initial_twin: Option<InitialTwin>,
    pub provisioning_status: ProvisioningStatus,
    pub reprovision_policy: ReprovisionPolicy,
    pub allocation_policy: Option<AllocationPolicy>,
    pub iot_hubs: Vec<String>,
    pub custom_allocation: Option<(String, Option<String>)>,
}

/// An enrollment of either kind, as far as comparing goes.
pub trait DpsRecord {
    fn comparable(&self) -> Comparable;
    fn etag(&self) -> Option<&str>;
    fn set_etag(&mut self, etag: Option<String>);
    fn created(&self) -> Option<crate::dps::models::Timestamp>;
    fn updated(&self) -> Option<crate::dps::models::Timestamp>;
    /// The IndividualEnrollmentSet whose mark the record carries: none of a resource's own.
    fn made_by_set(&self) -> Option<&str> {
        None
    }
    /// The enrollment group (its DPS id) that made the record to block one of its devices.
    fn blocks_a_device_of(&self) -> Option<&str> {
        None
    }
}

/// The `optionalDeviceInformation` entry that marks an enrollment a group made to block a device.
pub const BLOCKED_MARK: &str = "blockedByEnrollmentGroup";

/// The record accessors both kinds implement the same way.
macro_rules! record_accessors {
    () => {
        fn etag(&self) -> Option<&str> {
            self.etag.as_deref()
        }
        fn set_etag(&mut self, etag: Option<String>) {
            self.etag = etag;
        }
        fn created(&self) -> Option<crate::dps::models::Timestamp> {
            self.created_date_time_utc
        }
        fn updated(&self) -> Option<crate::dps::models::Timestamp> {
            self.last_updated_date_time_utc
        }
    };
}

fn thumbprints(attestation: &AttestationMechanism) -> (Option<String>, Option<String>) {
    let x509 = attestation.x509.as_ref();
    let certificates = x509.and_then(|x| x.client_certificates.as_ref().or(x.signing_certificates.as_ref()));
    let thumbprint = |slot: Option<&X509CertificateWithInfo>| {
        slot?.info.as_ref().map(|i| i.sha256_thumbprint.to_ascii_uppercase())
    };
    (
        thumbprint(certificates.and_then(|c| c.primary.as_ref())),
        thumbprint(certificates.and_then(|c| c.secondary.as_ref())),
    )
}

macro_rules! comparable {
    ($record:expr, $device_id:expr, $information:expr) => {{
        let record = $record;
        let mut hubs = record.iot_hubs.clone().unwrap_or_default();
        hubs.sort_by_key(|hub| hub.to_ascii_lowercase());
        Comparable {
            attestation_type: record.attestation.type_,
            certificate_thumbprints: thumbprints(&record.attestation),
            ca_references: record.attestation.x509.as_ref().and_then(|x| x.ca_references.clone()),
            tpm: record.attestation.tpm.clone(),
            device_id: $device_id,
            optional_device_information: $information,
            iot_edge: record.capabilities.as_ref().is_some_and(|c| c.iot_edge),
            initial_twin: record.initial_twin.clone().filter(|t| t.tags.is_some() || t.properties.is_some()),
            provisioning_status: record.provisioning_status.unwrap_or_default(),
            reprovision_policy: record.reprovision_policy.clone().unwrap_or_default(),
            allocation_policy: record.allocation_policy,
            iot_hubs: hubs,
            custom_allocation: record
                .custom_allocation_definition
                .as_ref()
                .map(|c| (c.api_version.clone(), Some(c.webhook_url.expose().to_owned()))),
        }
    }};
}

impl DpsRecord for EnrollmentGroup {
    fn comparable(&self) -> Comparable {
        comparable!(self, None, None)
    }
    record_accessors!();
}

impl DpsRecord for IndividualEnrollment {
    fn comparable(&self) -> Comparable {
        comparable!(self, self.device_id.clone(), self.optional_device_information.clone())
    }
    fn made_by_set(&self) -> Option<&str> {
        self.optional_device_information.as_ref()?.get(SET_MARK)?.as_str()
    }
    fn blocks_a_device_of(&self) -> Option<&str> {
        self.optional_device_information.as_ref()?.get(BLOCKED_MARK)?.as_str()
    }
    record_accessors!();
}

/// The desired record's comparable form: certificate thumbprints from what was read from the
/// Secrets, since the record to send carries the certificates themselves.
pub fn desired_comparable(desired: &impl DpsRecord, resolved: &Resolved) -> Comparable {
    let mut comparable = desired.comparable();
    if let Some((primary, secondary)) = &resolved.certificates {
        comparable.certificate_thumbprints = (
            Some(primary.facts.sha256_thumbprint.clone()),
            secondary.as_ref().map(|s| s.facts.sha256_thumbprint.clone()),
        );
    }
    comparable
}

impl Comparable {
    /// A digest of the record as far as [`drift`] compares it: the same for what the operator
    /// sent and for what DPS then holds, so a write whose answer was lost is still known for its
    /// own. Made with `key` (the webhook URL, a secret, is left out anyway).
    pub fn content_digest(&self, key: &DigestKey) -> String {
        let normalized = Comparable {
            // DPS may not echo TPM keys nor the webhook URL; hubs compare case-insensitively.
            tpm: None,
            custom_allocation: self.custom_allocation.as_ref().map(|(version, _)| (version.clone(), None)),
            iot_hubs: self.iot_hubs.iter().map(|hub| hub.to_ascii_lowercase()).collect(),
            ..self.clone()
        };
        // Members in a fixed (sorted) order, whatever order the twin was written in.
        let text = serde_json::to_value(&normalized).map(|value| value.to_string()).unwrap_or_default();
        let mut digest = key.sign(|context| {
            context.update(b"dps-operator/content/v1");
            context.update(text.as_bytes());
        });
        // 128 bits tell records apart; every cached status holds one.
        digest.truncate("hmac-sha256:".len() + 32);
        digest
    }
}

/// The names of the fields where DPS differs from the spec.
pub fn drift(desired: &Comparable, actual: &Comparable) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            fields.push(name);
        }
    };
    check("attestation", desired.attestation_type != actual.attestation_type);
    check("attestation.certificates", desired.certificate_thumbprints != actual.certificate_thumbprints);
    check("attestation.caReferences", desired.ca_references != actual.ca_references);
    // DPS may not echo the TPM keys; compare them only when it does.
    check("attestation.tpm", actual.tpm.is_some() && desired.tpm != actual.tpm);
    check("deviceId", desired.device_id != actual.device_id);
    check(
        "optionalDeviceInformation",
        desired.optional_device_information != actual.optional_device_information,
    );
    check("iotEdge", desired.iot_edge != actual.iot_edge);
    check("initialTwin", desired.initial_twin != actual.initial_twin);
    check("provisioningStatus", desired.provisioning_status != actual.provisioning_status);
    check("reprovisionPolicy", desired.reprovision_policy != actual.reprovision_policy);
    check("allocationPolicy", desired.allocation_policy != actual.allocation_policy);
    check(
        "iotHubs",
        desired
            .iot_hubs
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .ne(actual.iot_hubs.iter().map(|h| h.to_ascii_lowercase())),
    );
    let webhook = |c: &Option<(String, Option<String>)>| c.as_ref().map(|(version, _)| version.clone());
    let webhook_url = |c: &Option<(String, Option<String>)>| c.as_ref().and_then(|(_, url)| url.clone());
    check(
        "customAllocation",
        webhook(&desired.custom_allocation) != webhook(&actual.custom_allocation)
            || (webhook_url(&actual.custom_allocation).is_some()
                && webhook_url(&desired.custom_allocation) != webhook_url(&actual.custom_allocation)),
    );
    fields
}

/// What the reconcile knows when it decides.
#[derive(Debug)]
pub struct Facts<'a> {
    /// Whether the operator may write (managed, not paused).
    pub may_write: bool,
    pub adopt: bool,
    /// Whether this resource created or adopted the enrollment.
    pub claimed: bool,
    pub desired: &'a Comparable,
    /// What DPS holds: its comparable form and etag.
    pub observed: Option<(&'a Comparable, &'a str)>,
    /// Whether the keys (or other unreadable secret inputs) differ from those last written.
    pub secrets_changed: bool,
    pub what: &'static str,
    pub id: &'a str,
}

/// What to do.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Nothing: DPS holds what the spec describes.
    InSync,
    /// Create the enrollment (it is missing in DPS).
    Create { recreate: bool },
    /// Take it over as it is: DPS already holds what the spec describes.
    Adopt,
    /// Replace it, with its etag, because of these differences.
    Update { etag: String, drift: Vec<&'static str>, adopt: bool },
    /// Report, do not write: the differences, or that it is missing.
    Report { drift: Vec<&'static str>, missing: bool },
}

pub fn decide(facts: Facts<'_>) -> Result<Plan, Error> {
    let Some((observed, etag)) = facts.observed else {
        return Ok(if facts.may_write {
            Plan::Create { recreate: facts.claimed }
        } else {
            Plan::Report { drift: Vec::new(), missing: true }
        });
    };
    if !facts.claimed
        && let Some(set) = observed.optional_device_information.as_ref().and_then(|info| info.get(SET_MARK))
    {
        let set = set.as_str().unwrap_or_default().to_owned();
        return Err(Error::MadeBySet { what: facts.what, id: facts.id.to_owned(), set });
    }
    if !facts.claimed && !facts.adopt {
        return Err(Error::AlreadyExists { what: facts.what, id: facts.id.to_owned() });
    }
    if observed.attestation_type != facts.desired.attestation_type {
        return Err(Error::AttestationKindMismatch {
            what: facts.what,
            id: facts.id.to_owned(),
            actual: format!("{:?}", observed.attestation_type),
            desired: format!("{:?}", facts.desired.attestation_type),
        });
    }
    let mut differences = drift(facts.desired, observed);
    if facts.secrets_changed {
        differences.push("attestation.symmetricKey");
    }
    let adopting = !facts.claimed;
    Ok(match (differences.is_empty(), facts.may_write) {
        (true, true) if adopting => Plan::Adopt,
        (true, false) if adopting => Plan::Report { drift: differences, missing: false },
        (true, _) => Plan::InSync,
        (false, true) => Plan::Update { etag: etag.to_owned(), drift: differences, adopt: adopting },
        (false, false) => Plan::Report { drift: differences, missing: false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        CustomAllocation, InitialTwin as SpecTwin, ReprovisionPolicy as SpecReprovision, SecretKeySelector,
        SecretReference, ServiceRef,
    };
    use serde_json::json;

    fn settings() -> EnrollmentSettings {
        serde_json::from_value(json!({"serviceRef": {"name": "dps"}})).unwrap()
    }

    fn keys() -> Resolved {
        Resolved {
            keys: Some((Secret::new("cHJpbWFyeQ=="), Secret::new("c2Vjb25kYXJ5"))),
            ..Default::default()
        }
    }

    fn secret() -> api::SymmetricKeyAttestation {
        api::SymmetricKeyAttestation {
            secret_ref: SecretReference { name: "keys".into() },
            create_secret: None,
            rotation: None,
        }
    }

    #[test]
    fn every_setting_reaches_the_dps_record() {
        let mut settings = settings();
        settings.service_ref = ServiceRef { kind: None, name: "dps".into() };
        settings.iot_hubs = Some(vec!["b.azure-devices.net".into(), "a.azure-devices.net".into()]);
        settings.allocation_policy = Some(api::AllocationPolicy::Custom);
        settings.custom_allocation = Some(Box::new(CustomAllocation {
            webhook_url_secret_ref: SecretKeySelector { name: "hook".into(), key: "url".into() },
            api_version: "2021-10-01".into(),
        }));
        settings.initial_twin = Some(SpecTwin {
            tags: Some(api::JsonObject::from(json!({"site": "Redmond"}).as_object().unwrap())),
            desired_properties: Some(api::JsonObject::from(json!({"interval": 60}).as_object().unwrap())),
        });
        settings.iot_edge = Some(true);
        settings.reprovision_policy =
            Some(SpecReprovision { update_hub_assignment: Some(false), migrate_device_data: None });
        settings.provisioning_status = Some(api::ProvisioningStatus::Disabled);
        let resolved = Resolved { webhook_url: Some(Secret::new("https://f.example/api?code=k")), ..keys() };
        let secret = secret();
        let group =
            enrollment_group("g", AttestationInput::SymmetricKey(&secret), &settings, &resolved).unwrap();
        assert_eq!(
            serde_json::to_value(&group).unwrap(),
            json!({
                "enrollmentGroupId": "g",
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "cHJpbWFyeQ==", "secondaryKey": "c2Vjb25kYXJ5"}},
                "capabilities": {"iotEdge": true},
                "initialTwin": {"tags": {"site": "Redmond"}, "properties": {"desired": {"interval": 60}}},
                "provisioningStatus": "disabled",
                "reprovisionPolicy": {"updateHubAssignment": false, "migrateDeviceData": true},
                "allocationPolicy": "custom",
                "iotHubs": ["b.azure-devices.net", "a.azure-devices.net"],
                "customAllocationDefinition": {"webhookUrl": "https://f.example/api?code=k", "apiVersion": "2021-10-01"},
            })
        );
    }

    #[test]
    fn individual_fields_and_tpm_reach_the_dps_record() {
        let spec: api::IndividualEnrollmentSpec = serde_json::from_value(json!({
            "serviceRef": {"name": "dps"},
            "deviceId": "kiosk-3",
            "optionalDeviceInformation": {"serial": "K3"},
            "attestation": {"tpm": {"endorsementKey": "AAAA", "storageRootKey": "BBBB"}},
        }))
        .unwrap();
        let tpm = spec.attestation.tpm.clone().unwrap();
        let enrollment =
            individual_enrollment(&spec, "kiosk-3.store", AttestationInput::Tpm(&tpm), &Resolved::default())
                .unwrap();
        let value = serde_json::to_value(&enrollment).unwrap();
        assert_eq!(
            value["attestation"],
            json!({"type": "tpm", "tpm": {"endorsementKey": "AAAA", "storageRootKey": "BBBB"}})
        );
        assert_eq!(
            (value["deviceId"].clone(), value["optionalDeviceInformation"].clone()),
            (json!("kiosk-3"), json!({"serial": "K3"}))
        );
        assert_eq!(value["registrationId"], json!("kiosk-3.store"));
    }

    #[test]
    fn twin_names_iot_hub_refuses_are_caught_before_dps() {
        let mut settings = settings();
        settings.initial_twin = Some(SpecTwin {
            tags: Some(api::JsonObject::from(json!({"building": {"floor.3": 1}}).as_object().unwrap())),
            desired_properties: None,
        });
        let secret = secret();
        let error =
            enrollment_group("g", AttestationInput::SymmetricKey(&secret), &settings, &keys()).unwrap_err();
        assert!(error.to_string().contains("spec.initialTwin.tags.building"), "{error}");
        assert!(error.is_stalled());
    }

    #[test]
    fn twins_beyond_iot_hub_limits_are_refused_naming_the_place() {
        fn nested(levels: usize) -> Value {
            (0..levels).fold(json!("leaf"), |inner, level| json!({ format!("l{level}"): inner }))
        }
        let check = |tags: Value| {
            check_twin("spec.initialTwin.tags", tags.as_object().unwrap(), TwinLimits { size: 8 * 1024 })
                .map_err(|e| e.to_string())
        };
        assert_eq!(check(nested(10)), Ok(()), "10 levels of objects are allowed");
        let deep = check(nested(11)).unwrap_err();
        let path = "spec.initialTwin.tags.l10.l9.l8.l7.l6.l5.l4.l3.l2.l1";
        assert!(deep.contains(&format!("{path} nests objects deeper than IoT Hub's 10 levels")), "{deep}");
        let long = check(json!({"site": "x".repeat(4097)})).unwrap_err();
        assert!(long.contains("spec.initialTwin.tags.site is a string of 4097 bytes"), "{long}");
        let name = check(json!({"n".repeat(1025): 1})).unwrap_err();
        assert!(name.contains("property name of 1025 bytes"), "{name}");
        let big: Map<String, Value> = (0..3).map(|i| (format!("k{i}"), json!("v".repeat(3000)))).collect();
        let size = check(Value::Object(big)).unwrap_err();
        assert!(size.contains("is 9006 bytes as IoT Hub counts them; IoT Hub allows 8192"), "{size}");
        assert_eq!(check(json!({"n": 1, "b": true, "s": "ok", "z": null})), Ok(()));
    }

    #[test]
    fn what_dps_fills_in_or_reorders_is_not_drift() {
        let secret = secret();
        let mut settings = settings();
        settings.iot_hubs = Some(vec!["B.azure-devices.net".into(), "a.azure-devices.net".into()]);
        let desired =
            enrollment_group("g", AttestationInput::SymmetricKey(&secret), &settings, &keys()).unwrap();
        let mut stored = desired.clone();
        stored.attestation.symmetric_key = None;
        stored.iot_hubs = Some(vec!["a.azure-devices.net".into(), "b.azure-devices.net".into()]);
        stored.etag = Some("e1".into());
        assert_eq!(drift(&desired_comparable(&desired, &keys()), &stored.comparable()), Vec::<&str>::new());

        stored.provisioning_status = Some(ProvisioningStatus::Disabled);
        stored.iot_hubs = Some(vec!["a.azure-devices.net".into()]);
        assert_eq!(drift(&desired.comparable(), &stored.comparable()), ["provisioningStatus", "iotHubs"]);
    }

    #[test]
    fn certificates_are_compared_by_thumbprint() {
        let facts = |thumbprint: &str| CertificateFacts {
            subject: "CN=a".into(),
            issuer: "CN=a".into(),
            sha1_thumbprint: String::new(),
            sha256_thumbprint: thumbprint.into(),
            serial_number: "01".into(),
            not_before: jiff::Timestamp::UNIX_EPOCH,
            not_after: jiff::Timestamp::MAX,
            version: 3,
            common_name: None,
        };
        let resolved = Resolved {
            certificates: Some((ResolvedCertificate { pem: "PEM".into(), facts: facts("AA") }, None)),
            ..Default::default()
        };
        let pair = api::CertificatePair {
            primary: Some(api::CertificateSecretRef { name: "ca".into(), key: None }),
            certificate_ref: None,
            secondary: None,
            rollover_overlap: None,
        };
        let desired =
            enrollment_group("g", AttestationInput::SigningCertificates(&pair), &settings(), &resolved)
                .unwrap();
        let mut stored = desired.clone();
        let slot = stored
            .attestation
            .x509
            .as_mut()
            .unwrap()
            .signing_certificates
            .as_mut()
            .unwrap()
            .primary
            .as_mut()
            .unwrap();
        slot.certificate = None;
        slot.info = Some(crate::dps::models::X509CertificateInfo {
            subject_name: "CN=a".into(),
            sha1_thumbprint: String::new(),
            sha256_thumbprint: "aa".into(),
            issuer_name: "CN=a".into(),
            not_before_utc: crate::dps::models::Timestamp(jiff::Timestamp::UNIX_EPOCH),
            not_after_utc: crate::dps::models::Timestamp(jiff::Timestamp::UNIX_EPOCH),
            serial_number: "01".into(),
            version: 3,
        });
        assert!(drift(&desired_comparable(&desired, &resolved), &stored.comparable()).is_empty());
        let rotated = Resolved {
            certificates: Some((ResolvedCertificate { pem: "PEM".into(), facts: facts("BB") }, None)),
            ..Default::default()
        };
        assert_eq!(
            drift(&desired_comparable(&desired, &rotated), &stored.comparable()),
            ["attestation.certificates"]
        );
    }

    fn facts<'a>(desired: &'a Comparable, observed: Option<(&'a Comparable, &'a str)>) -> Facts<'a> {
        Facts {
            may_write: true,
            adopt: false,
            claimed: true,
            desired,
            observed,
            secrets_changed: false,
            what: "enrollment group",
            id: "g",
        }
    }

    #[test]
    fn decisions() {
        let secret = secret();
        let desired = enrollment_group("g", AttestationInput::SymmetricKey(&secret), &settings(), &keys())
            .unwrap()
            .comparable();
        let mut changed = desired.clone();
        changed.iot_edge = true;

        assert_eq!(
            decide(facts(&desired, Some((&desired, "e")))).unwrap(),
            Plan::InSync,
            "in sync: no write"
        );
        assert_eq!(
            decide(Facts { claimed: false, ..facts(&desired, None) }).unwrap(),
            Plan::Create { recreate: false }
        );
        assert_eq!(
            decide(facts(&desired, None)).unwrap(),
            Plan::Create { recreate: true },
            "deleted outside: restore"
        );
        assert_eq!(
            decide(facts(&desired, Some((&changed, "e")))).unwrap(),
            Plan::Update { etag: "e".into(), drift: vec!["iotEdge"], adopt: false }
        );
        assert_eq!(
            decide(Facts { secrets_changed: true, ..facts(&desired, Some((&desired, "e"))) }).unwrap(),
            Plan::Update { etag: "e".into(), drift: vec!["attestation.symmetricKey"], adopt: false },
            "a rotated key is written although DPS does not show keys"
        );

        let refused = decide(Facts { claimed: false, ..facts(&desired, Some((&desired, "e"))) }).unwrap_err();
        assert!(matches!(refused, Error::AlreadyExists { .. }));
        assert_eq!(
            decide(Facts { claimed: false, adopt: true, ..facts(&desired, Some((&desired, "e"))) }).unwrap(),
            Plan::Adopt,
            "an adoption with nothing to change writes nothing"
        );

        let observe = |observed| decide(Facts { may_write: false, ..facts(&desired, observed) }).unwrap();
        assert_eq!(observe(Some((&changed, "e"))), Plan::Report { drift: vec!["iotEdge"], missing: false });
        assert_eq!(observe(None), Plan::Report { drift: vec![], missing: true });

        let mut x509 = desired.clone();
        x509.attestation_type = AttestationType::X509;
        let mismatch = decide(facts(&desired, Some((&x509, "e")))).unwrap_err();
        assert!(matches!(mismatch, Error::AttestationKindMismatch { .. }), "never changed in place");
    }

    #[test]
    fn the_secrets_digest_changes_with_either_key_and_confirms_nothing_without_the_operator_s_key() {
        let key = DigestKey::random();
        let digest = keys().secrets_digest(&key).unwrap();
        assert!(digest.starts_with("hmac-sha256:") && digest.len() == "hmac-sha256:".len() + 64, "{digest}");
        assert!(!digest.contains("cHJpbWFyeQ"));
        assert_eq!(keys().secrets_digest(&key), Some(digest.clone()), "stable for one key");
        // Who reads the status cannot check a guess: the plain hash of the keys is not it, and
        // another key gives another digest.
        assert_ne!(keys().unkeyed_secrets_digest(), Some(digest.clone()));
        assert_ne!(keys().secrets_digest(&DigestKey::random()), Some(digest.clone()));
        let rotated =
            Resolved { keys: Some((Secret::new("cHJpbWFyeQ=="), Secret::new("bmV3"))), ..Default::default() };
        assert_ne!(rotated.secrets_digest(&key).unwrap(), digest);
        let webhook = Resolved { webhook_url: Some(Secret::new("https://f.example/?code=1")), ..keys() };
        assert_ne!(webhook.secrets_digest(&key).unwrap(), digest, "the webhook URL counts");
        assert_eq!(Resolved::default().secrets_digest(&key), None);
    }

    #[test]
    fn only_an_individual_enrollment_marked_by_a_set_is_made_by_one() {
        let marked = |information: serde_json::Value| IndividualEnrollment {
            optional_device_information: serde_json::from_value(information).unwrap(),
            ..Default::default()
        };
        assert_eq!(marked(json!({SET_MARK: "iot/fleet"})).made_by_set(), Some("iot/fleet"));
        assert_eq!(marked(json!({"site": "plant-7"})).made_by_set(), None);
        assert_eq!(marked(json!(null)).made_by_set(), None);
        assert_eq!(EnrollmentGroup::default().made_by_set(), None);
        assert_eq!(marked(json!({BLOCKED_MARK: "thermostats"})).blocks_a_device_of(), Some("thermostats"));
        assert_eq!(marked(json!({BLOCKED_MARK: "thermostats"})).made_by_set(), None);
        assert_eq!(marked(json!({SET_MARK: "iot/fleet"})).blocks_a_device_of(), None);
    }
}
