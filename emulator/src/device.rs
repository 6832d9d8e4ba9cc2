//! The device (registration) API: a device registers through the enrollment that names it (its
//! individual enrollment, else the symmetric-key group its key derives from), is assigned an IoT
//! hub by that enrollment's allocation policy, and can look the result up. The reference is
//! DPS's device swagger (`dps-device-2021-10-01.json`) and what the Node device SDK's HTTP
//! transport sends (`azure-iot-sdk-node`, `provisioning/transport/http/src/http.ts`).

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Map, Value, json};

use super::{
    auth::SasToken,
    error::ApiError,
    store::{Registration, Store, new_etag, without_keys},
};
use crate::dps_time;

/// The device API versions real clients send: the Node, C# and CLI device clients
/// `2019-03-31`, docs and the iot-identity-service client `2021-06-01`, the old C SDK
/// `2018-09-01-preview`, and the swagger's own.
pub const DEVICE_API_VERSIONS: &[&str] =
    &["2018-09-01-preview", "2018-11-01", "2019-03-31", "2021-06-01", "2021-10-01", "2025-07-01-preview"];

/// The ID scope when none is given: DPS's are `0ne` and eight hex digits.
pub const DEFAULT_ID_SCOPE: &str = "0ne00E0A1E5";

/// A device API operation, with the ID scope and registration id of its path.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceOperation {
    Register { id_scope: String, registration_id: String },
    OperationStatus { id_scope: String, registration_id: String, operation_id: String },
    Status { id_scope: String, registration_id: String },
}

impl DeviceOperation {
    /// The path's operation, when it is one of the device API's: `segments` as sent (decoded),
    /// `lower` the same in lower case.
    pub fn route(method: &axum::http::Method, segments: &[String], lower: &[&str]) -> Option<Self> {
        let (id_scope, registration_id) = (segments.first()?.clone(), segments.get(2)?.clone());
        Some(match (lower, method.as_str()) {
            ([_, "registrations", _, "register"], "PUT") => Self::Register { id_scope, registration_id },
            ([_, "registrations", _, "operations", _], "GET") => {
                Self::OperationStatus { id_scope, registration_id, operation_id: segments[4].clone() }
            }
            ([_, "registrations", _], "POST") => Self::Status { id_scope, registration_id },
            _ => return None,
        })
    }

    pub fn operation_id(&self) -> &'static str {
        match self {
            Self::Register { .. } => "RuntimeRegistration_RegisterDevice",
            Self::OperationStatus { .. } => "RuntimeRegistration_OperationStatusLookup",
            Self::Status { .. } => "RuntimeRegistration_DeviceRegistrationStatusLookup",
        }
    }

    pub fn id_scope(&self) -> &str {
        match self {
            Self::Register { id_scope, .. }
            | Self::OperationStatus { id_scope, .. }
            | Self::Status { id_scope, .. } => id_scope,
        }
    }

    pub fn registration_id(&self) -> &str {
        match self {
            Self::Register { registration_id, .. }
            | Self::OperationStatus { registration_id, .. }
            | Self::Status { registration_id, .. } => registration_id,
        }
    }
}

/// The enrollment a device registers through: an individual one, or a group (`group_id`).
#[derive(Debug, PartialEq)]
pub struct Enrolled {
    pub group_id: Option<String>,
    pub item: Map<String, Value>,
}

/// A device's key in a symmetric-key group: HMAC-SHA256 of its registration id with the group
/// key (devices hold it base64-encoded).
pub fn derived_key(group_key: &[u8], registration_id: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, group_key);
    ring::hmac::sign(&key, registration_id.as_bytes()).as_ref().to_vec()
}

/// The keys of a symmetric-key attestation, decoded; none for another kind.
fn symmetric_keys(item: &Map<String, Value>) -> Option<Vec<Vec<u8>>> {
    let attestation = item.get("attestation")?;
    if attestation["type"] != "symmetricKey" {
        return None;
    }
    let keys = &attestation["symmetricKey"];
    Some(
        ["primaryKey", "secondaryKey"]
            .iter()
            .filter_map(|slot| keys[*slot].as_str().and_then(|key| BASE64.decode(key).ok()))
            .collect(),
    )
}

/// How a device proves who it is.
pub enum Credentials<'a> {
    /// A SAS token: the `Authorization` header.
    Sas(&'a str),
    /// The certificate chain it presented in the TLS handshake (DER, leaf first); the handshake
    /// proved it holds the leaf's key.
    Certificate(&'a [Vec<u8>]),
    None,
}

/// Authenticates a device and finds its enrollment. Its individual enrollment decides when it
/// has one, even to refuse it (a disabled individual enrollment is how DPS takes one device out
/// of a group); else the first group its credentials fit: the symmetric-key group its key
/// derives from, or the X.509 group its certificate chains up to.
pub fn enrollment_of(
    store: &Store,
    id_scope: &str,
    registration_id: &str,
    credentials: &Credentials<'_>,
    now: u64,
) -> Result<Enrolled, ApiError> {
    let authorization = match credentials {
        Credentials::Sas(header) => header,
        Credentials::Certificate(chain) => return by_certificate(store, registration_id, chain, now),
        Credentials::None => {
            return Err(ApiError::unauthorized(
                "The request has no Authorization header or client certificate.",
            ));
        }
    };
    let token = SasToken::parse(authorization).map_err(ApiError::unauthorized)?;
    let resource = format!("{id_scope}/registrations/{registration_id}").to_ascii_lowercase();
    if token.audience() != resource {
        return Err(ApiError::unauthorized(format!(
            "The SharedAccessSignature is for '{}', not '{resource}'.",
            token.audience()
        )));
    }
    if !token.key_name.eq_ignore_ascii_case("registration") {
        return Err(ApiError::unauthorized("A device's SharedAccessSignature names the key 'registration'."));
    }
    token.check_expiry(now).map_err(ApiError::unauthorized)?;
    let refused = || {
        ApiError::unauthorized(format!(
            "No enrollment for registration id '{registration_id}' accepts this SharedAccessSignature."
        ))
    };
    if let Some(item) = store.enrollments.get(&registration_id.to_lowercase()) {
        let keys = symmetric_keys(item).ok_or_else(refused)?;
        return if token.signed_by_any(keys.iter().map(Vec::as_slice)) {
            Ok(Enrolled { group_id: None, item: item.clone() })
        } else {
            Err(refused())
        };
    }
    store
        .enrollment_groups
        .values()
        .find(|group| {
            symmetric_keys(group).is_some_and(|keys| {
                let derived: Vec<Vec<u8>> =
                    keys.iter().map(|key| derived_key(key, registration_id)).collect();
                token.signed_by_any(derived.iter().map(Vec::as_slice))
            })
        })
        .map(|group| Enrolled {
            group_id: group.get("enrollmentGroupId").and_then(Value::as_str).map(str::to_owned),
            item: group.clone(),
        })
        .ok_or_else(refused)
}

/// Finds the enrollment of an X.509 device: its registration id is its certificate's common
/// name; an individual enrollment holds the leaf's thumbprint; a group trusts its signing
/// certificates, or the verified CA certificates it references, and the device's leaf must chain
/// up to one of them through the intermediates it presents ([`crate::chain`]).
fn by_certificate(
    store: &Store,
    registration_id: &str,
    chain: &[Vec<u8>],
    now: u64,
) -> Result<Enrolled, ApiError> {
    let unauthorized = |message: String| ApiError::unauthorized(message);
    let presented = crate::chain::parse(chain)
        .map_err(|_| unauthorized("The client certificate is not a well-formed X.509 certificate.".into()))?;
    let leaf =
        presented.first().ok_or_else(|| unauthorized("The client presented no certificate.".into()))?;
    let common_name = leaf
        .certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    if !common_name.eq_ignore_ascii_case(registration_id) {
        return Err(unauthorized(format!(
            "The client certificate is for '{common_name}', not '{registration_id}': an X.509 device registers \
             under its certificate's common name."
        )));
    }
    let at = x509_parser::time::ASN1Time::from_timestamp(now as i64)
        .map_err(|_| unauthorized("The time is out of range.".into()))?;
    if !leaf.certificate.validity().is_valid_at(at) {
        return Err(unauthorized("The client certificate is expired or not valid yet.".into()));
    }
    let refused = || {
        unauthorized(format!(
            "No enrollment for registration id '{registration_id}' accepts this client certificate."
        ))
    };
    if let Some(item) = store.enrollments.get(&registration_id.to_lowercase()) {
        let client = &item["attestation"]["x509"]["clientCertificates"];
        let leaf_thumbprint = thumbprint(leaf.der);
        let holds =
            SLOTS.iter().any(|slot| client[*slot]["info"]["sha256Thumbprint"] == leaf_thumbprint.as_str());
        return if item["attestation"]["type"] == "x509" && holds {
            Ok(Enrolled { group_id: None, item: item.clone() })
        } else {
            Err(refused())
        };
    }
    store
        .enrollment_groups
        .values()
        .find(|group| {
            group["attestation"]["type"] == "x509"
                && trusted_by(store, group, &presented).iter().any(|trusted| {
                    crate::chain::parse(std::slice::from_ref(trusted))
                        .is_ok_and(|trusted| crate::chain::reaches(&presented, &trusted[0], at))
                })
        })
        .map(|group| Enrolled {
            group_id: group.get("enrollmentGroupId").and_then(Value::as_str).map(str::to_owned),
            item: group.clone(),
        })
        .ok_or_else(refused)
}

const SLOTS: [&str; 2] = ["primary", "secondary"];

fn thumbprint(der: &[u8]) -> String {
    crate::certificate::thumbprint(&ring::digest::SHA256, der)
}

/// The certificates (DER) a group's devices must chain up to: its signing certificates as
/// uploaded, or the verified CA certificates its `caReferences` name. A signing certificate the
/// emulator does not hold (a state file from before it kept them) is taken from the presented
/// chain when the device presents it.
fn trusted_by(
    store: &Store,
    group: &Map<String, Value>,
    presented: &[crate::chain::Parsed<'_>],
) -> Vec<Vec<u8>> {
    let x509 = &group["attestation"]["x509"];
    let mut trusted = Vec::new();
    for slot in SLOTS {
        if let Some(wanted) = x509["signingCertificates"][slot]["info"]["sha256Thumbprint"].as_str() {
            let uploaded = store.certificates.get(wanted).and_then(|der| BASE64.decode(der).ok());
            let presented = || presented.iter().find(|p| thumbprint(p.der) == wanted).map(|p| p.der.to_vec());
            trusted.extend(uploaded.or_else(presented));
        }
        if let Some(name) = x509["caReferences"][slot].as_str() {
            trusted.extend(store.verified_certificates.get(name).and_then(|der| BASE64.decode(der).ok()));
        }
    }
    trusted
}

/// The hubs an enrollment may assign devices to: its `iotHubs`, else its `iotHubHostName`, else
/// every hub linked to the DPS.
pub fn hubs_of(item: &Map<String, Value>, linked_hubs: &[String]) -> Vec<String> {
    let listed: Vec<String> = item
        .get("iotHubs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|hub| hub.as_str().map(str::to_owned))
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    match item.get("iotHubHostName").and_then(Value::as_str) {
        Some(hub) => vec![hub.to_owned()],
        None => linked_hubs.to_vec(),
    }
}

/// The hub `policy` assigns `registration_id` to among `hubs`. `hashed` (DPS's default) spreads
/// devices evenly and gives one id the same hub every time; `static` takes the one hub listed;
/// `geoLatency` takes the first, as every hub is as near as any other to an emulator.
pub fn allocate(policy: Option<&str>, hubs: &[String], registration_id: &str) -> Option<String> {
    match policy {
        Some("static" | "geoLatency") => hubs.first().cloned(),
        _ => {
            let digest =
                ring::digest::digest(&ring::digest::SHA256, registration_id.to_lowercase().as_bytes());
            let bytes: [u8; 8] = digest.as_ref()[..8].try_into().expect("eight bytes");
            let index = (u64::from_be_bytes(bytes) % hubs.len().max(1) as u64) as usize;
            hubs.get(index).cloned()
        }
    }
}

/// Where the allocation policy put a device: its hub, and for custom allocation the payload the
/// webhook returned for the device.
#[derive(Debug, PartialEq)]
pub struct Assignment {
    pub hub: String,
    pub payload: Option<Value>,
}

impl From<String> for Assignment {
    fn from(hub: String) -> Self {
        Self { hub, payload: None }
    }
}

/// The request DPS sends a custom allocation webhook (docs: "Understand custom allocation
/// policies"): the enrollment, without keys; the device's runtime context (its registration id,
/// its current hub and device id when it registered before, its attestation kind, the payload it
/// sent); and the hubs it may be assigned to.
pub fn webhook_request(
    enrolled: &Enrolled,
    registration_id: &str,
    current: Option<&Value>,
    payload: &Value,
    hubs: &[String],
) -> Value {
    let enrollment = if enrolled.group_id.is_some() { "enrollmentGroup" } else { "individualEnrollment" };
    let mut context = json!({ "registrationId": registration_id });
    if let Some(current) = current {
        context["currentIotHubHostName"] = current["assignedHub"].clone();
        context["currentDeviceId"] = current["deviceId"].clone();
    }
    let kind = enrolled.item.get("attestation").and_then(|a| a["type"].as_str()).unwrap_or("symmetricKey");
    context[kind] = json!({});
    if !payload.is_null() {
        context["payload"] = payload.clone();
    }
    json!({
        enrollment: Value::Object(without_keys(&enrolled.item)),
        "deviceRuntimeContext": context,
        "linkedHubs": hubs,
    })
}

/// The assignment in a webhook's answer: `iotHubHostName`, one of `hubs`, and a `payload`.
pub fn webhook_assignment(answer: &Value, hubs: &[String]) -> Result<Assignment, String> {
    let hub = answer["iotHubHostName"]
        .as_str()
        .ok_or("The custom allocation webhook answered no iotHubHostName.")?;
    if !hubs.iter().any(|h| h.eq_ignore_ascii_case(hub)) {
        return Err(format!("The custom allocation webhook chose {hub}, which the enrollment may not use."));
    }
    Ok(Assignment { hub: hub.to_owned(), payload: answer.get("payload").filter(|p| !p.is_null()).cloned() })
}

/// Registers the device `registration_id` through `enrolled`, recording the registration as DPS
/// does, and answers its registration state as the device API shows it. `assignment` is where
/// the allocation policy put it (the caller ran a custom allocation webhook), or why nowhere.
pub fn register(
    store: &mut Store,
    enrolled: &Enrolled,
    registration_id: &str,
    assignment: Result<Assignment, String>,
    now: jiff::Timestamp,
) -> Value {
    let key = registration_id.to_lowercase();
    let previous = store.registrations.get(&key).map(|r| r.state.clone());
    let time = json!(dps_time(now));
    let mut state = json!({
        "registrationId": registration_id,
        "createdDateTimeUtc": previous.as_ref().map_or(time.clone(), |p| p["createdDateTimeUtc"].clone()),
        "lastUpdatedDateTimeUtc": time,
        "etag": new_etag(),
    });
    if enrolled.item.get("provisioningStatus").and_then(Value::as_str) == Some("disabled") {
        // Refused, and nothing recorded: the enrollment's registration stays as it was.
        state["status"] = json!("disabled");
        state["errorCode"] = json!(401204);
        state["errorMessage"] = json!("The enrollment is disabled.");
        return device_view(state, enrolled);
    }
    let reprovision = enrolled.item.get("reprovisionPolicy");
    let keep_hub = reprovision.is_some_and(|p| p["updateHubAssignment"] == false);
    let previous_hub = previous.as_ref().and_then(|p| p["assignedHub"].as_str()).map(str::to_owned);
    let assignment = match (&previous_hub, keep_hub) {
        (Some(hub), true) => Ok(Assignment::from(hub.clone())),
        _ => assignment,
    };
    match assignment {
        Ok(Assignment { hub, payload }) => {
            if let Some(payload) = payload {
                state["payload"] = payload;
            }
            let device_id = match &enrolled.group_id {
                None => enrolled.item.get("deviceId").and_then(Value::as_str).unwrap_or(registration_id),
                Some(_) => registration_id,
            };
            let migrate = reprovision.is_none_or(|p| p["migrateDeviceData"] != false);
            let substatus = match previous_hub.as_deref() {
                None => "initialAssignment",
                Some(previous) if previous == hub => "reprovisionedToInitialAssignment",
                Some(_) if migrate => "deviceDataMigrated",
                Some(_) => "deviceDataReset",
            };
            state["assignedHub"] = json!(hub);
            state["deviceId"] = json!(device_id);
            state["status"] = json!("assigned");
            state["substatus"] = json!(substatus);
        }
        Err(why) => {
            state["status"] = json!("failed");
            state["errorCode"] = json!(400209);
            state["errorMessage"] = json!(why);
        }
    }
    store
        .registrations
        .insert(key, Registration { state: state.clone(), enrollment_group_id: enrolled.group_id.clone() });
    device_view(state, enrolled)
}

/// A registration record as the device API shows it: with the attestation's part, which for a
/// symmetric-key group names the group.
pub fn device_view(mut state: Value, enrolled: &Enrolled) -> Value {
    let kind = enrolled.item.get("attestation").and_then(|a| a["type"].as_str()).unwrap_or("symmetricKey");
    let part = match &enrolled.group_id {
        Some(group) => json!({ "enrollmentGroupId": group }),
        None => json!({}),
    };
    state[kind] = part;
    state
}

/// The registration operations in flight: by operation id, the registration id and the state
/// the device gets when it asks.
#[derive(Default)]
pub struct Operations {
    by_id: HashMap<String, (String, Value)>,
}

/// How many finished operations are kept for devices to look up.
const OPERATIONS_KEPT: usize = 10_000;

impl Operations {
    /// Records an operation's outcome; answers its id.
    pub fn start(&mut self, registration_id: &str, state: Value) -> String {
        if self.by_id.len() >= OPERATIONS_KEPT {
            self.by_id.clear();
        }
        let id = format!("4.{}.{}", hex(&crate::random_bytes::<8>()), hex(&crate::random_bytes::<8>()));
        self.by_id.insert(id.clone(), (registration_id.to_lowercase(), state));
        id
    }

    /// The outcome of operation `id` of `registration_id`.
    pub fn get(&self, registration_id: &str, id: &str) -> Option<&Value> {
        self.by_id.get(id).filter(|(of, _)| of.eq_ignore_ascii_case(registration_id)).map(|(_, state)| state)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: &str = "0ne00000000";

    fn sas(resource: &str, key: &[u8], expiry: u64) -> String {
        let encode = |text: &str| {
            percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let sr = encode(resource);
        let hmac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            format!("{sr}\n{expiry}").as_bytes(),
        );
        format!(
            "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn=registration",
            encode(&BASE64.encode(hmac))
        )
    }

    fn symmetric(id_field: &str, id: &str, key: &[u8]) -> Map<String, Value> {
        let key = BASE64.encode(key);
        json!({
            id_field: id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn the_derived_key_matches_the_published_test_vector() {
        // dps-api.md §8: group key bytes 0x00..0x3f, registration id device-01.
        let group_key: Vec<u8> = (0u8..64).collect();
        assert_eq!(
            BASE64.encode(derived_key(&group_key, "device-01")),
            "4mnWPt8Zt2l+dGRNpd2grurMijx75QG0Gw4rgHMHFgA="
        );
    }

    #[test]
    fn a_device_is_found_by_its_own_key_or_by_a_key_derived_from_its_group_s() {
        let mut store = Store::default();
        store.enrollments.insert("boiler".into(), symmetric("registrationId", "boiler", &[1; 32]));
        store
            .enrollment_groups
            .insert("thermostats".into(), symmetric("enrollmentGroupId", "thermostats", &[2; 32]));
        let resource = |id: &str| format!("{SCOPE}/registrations/{id}");
        let found = |id: &str, token: &str| enrollment_of(&store, SCOPE, id, &Credentials::Sas(token), 1_000);

        let own = found("boiler", &sas(&resource("boiler"), &[1; 32], 2_000)).unwrap();
        assert_eq!(own.group_id, None);
        let member = found("t-7", &sas(&resource("t-7"), &derived_key(&[2; 32], "t-7"), 2_000)).unwrap();
        assert_eq!(member.group_id.as_deref(), Some("thermostats"));

        let refused = |id: &str, token: &str| found(id, token).unwrap_err().status;
        assert_eq!(refused("boiler", &sas(&resource("boiler"), &[9; 32], 2_000)), 401, "a wrong key");
        assert_eq!(refused("t-7", &sas(&resource("t-7"), &[2; 32], 2_000)), 401, "the group key itself");
        assert_eq!(
            refused("t-8", &sas(&resource("t-7"), &derived_key(&[2; 32], "t-7"), 2_000)),
            401,
            "another id's"
        );
        assert_eq!(refused("boiler", &sas(&resource("boiler"), &[1; 32], 100)), 401, "expired");
        // Its individual enrollment decides: the group key does not open it.
        assert_eq!(
            refused("boiler", &sas(&resource("boiler"), &derived_key(&[2; 32], "boiler"), 2_000)),
            401
        );
        assert_eq!(
            enrollment_of(&store, SCOPE, "boiler", &Credentials::None, 1_000).unwrap_err().status,
            401
        );
    }

    #[test]
    fn an_x509_device_is_found_by_its_thumbprint_or_by_a_chain_to_a_certificate_its_group_trusts() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "Devices CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let device = |name: &str| {
            let mut params = CertificateParams::new(Vec::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap()
        };
        let info = |pem: &str| json!({"info": crate::certificate::info(pem).unwrap().json});
        let (camera, member) = (device("camera-1"), device("camera-2"));
        let mut store = Store::default();
        let individual = json!({"registrationId": "camera-1", "attestation": {"type": "x509",
            "x509": {"clientCertificates": {"primary": info(&camera.pem())}}}});
        store.enrollments.insert("camera-1".into(), individual.as_object().unwrap().clone());
        let group = json!({"enrollmentGroupId": "cameras", "attestation": {"type": "x509",
            "x509": {"signingCertificates": {"primary": info(&ca.pem())}}}});
        store.enrollment_groups.insert("cameras".into(), group.as_object().unwrap().clone());
        store.certificates.insert(thumbprint(ca.der()), BASE64.encode(ca.der()));
        let now = jiff::Timestamp::now().as_second() as u64;
        let found = |id: &str, chain: Vec<Vec<u8>>| {
            enrollment_of(&store, SCOPE, id, &Credentials::Certificate(&chain), now)
        };

        assert_eq!(found("camera-1", vec![camera.der().to_vec()]).unwrap().group_id, None);
        let through_group = found("camera-2", vec![member.der().to_vec(), ca.der().to_vec()]).unwrap();
        assert_eq!(through_group.group_id.as_deref(), Some("cameras"));
        let alone = found("camera-2", vec![member.der().to_vec()]).unwrap();
        assert_eq!(alone.group_id.as_deref(), Some("cameras"), "the leaf alone chains to the group's root");
        assert_eq!(
            found("camera-9", vec![member.der().to_vec(), ca.der().to_vec()]).unwrap_err().status,
            401,
            "another name"
        );
        // A chain that claims the CA without its signature: the CA's certificate after another CA's leaf.
        let other_key = KeyPair::generate().unwrap();
        let mut other = CertificateParams::new(Vec::new()).unwrap();
        other.distinguished_name.push(DnType::CommonName, "Devices CA");
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other_issuer = Issuer::new(other, other_key);
        let mut forged = CertificateParams::new(Vec::new()).unwrap();
        forged.distinguished_name.push(DnType::CommonName, "camera-5");
        let forged = forged.signed_by(&KeyPair::generate().unwrap(), &other_issuer).unwrap();
        assert_eq!(
            found("camera-5", vec![forged.der().to_vec(), ca.der().to_vec()]).unwrap_err().status,
            401
        );
    }

    #[test]
    fn hashed_allocation_is_stable_per_id_and_spreads_over_the_hubs() {
        let hubs = vec!["a.azure-devices.net".to_owned(), "b.azure-devices.net".to_owned()];
        let first = allocate(Some("hashed"), &hubs, "device-1");
        assert_eq!(first, allocate(None, &hubs, "DEVICE-1"), "ids compare case-insensitively");
        let assigned: Vec<_> =
            (0..100).filter_map(|i| allocate(Some("hashed"), &hubs, &format!("d-{i}"))).collect();
        let on_a = assigned.iter().filter(|hub| *hub == &hubs[0]).count();
        assert!((30..=70).contains(&on_a), "{on_a} of 100 on the first hub");
        assert_eq!(allocate(Some("static"), &hubs, "device-1").as_deref(), Some("a.azure-devices.net"));
        assert_eq!(allocate(Some("hashed"), &[], "device-1"), None);
    }

    #[test]
    fn a_custom_allocation_webhook_gets_the_documented_request_and_its_answer_assigns() {
        let mut item = symmetric("enrollmentGroupId", "meters", &[1; 32]);
        item.insert(
            "customAllocationDefinition".into(),
            json!({"webhookUrl": "https://f/api?code=k", "apiVersion": "2021-10-01"}),
        );
        let enrolled = Enrolled { group_id: Some("meters".into()), item };
        let hubs = vec!["a.azure-devices.net".to_owned(), "b.azure-devices.net".to_owned()];
        let current = json!({"assignedHub": "a.azure-devices.net", "deviceId": "m-1"});
        let request = webhook_request(&enrolled, "m-1", Some(&current), &json!({"site": 7}), &hubs);
        assert_eq!(request["enrollmentGroup"]["enrollmentGroupId"], "meters");
        assert!(
            request["enrollmentGroup"]["attestation"].get("symmetricKey").is_none(),
            "no keys: {request}"
        );
        let context = &request["deviceRuntimeContext"];
        assert_eq!(
            (context["registrationId"].as_str(), context["currentIotHubHostName"].as_str()),
            (Some("m-1"), Some("a.azure-devices.net"))
        );
        assert_eq!((&context["payload"], &context["symmetricKey"]), (&json!({"site": 7}), &json!({})));
        assert_eq!(request["linkedHubs"], json!(hubs));

        let answer = json!({"iotHubHostName": "b.azure-devices.net", "payload": {"floor": 3}});
        let assigned = webhook_assignment(&answer, &hubs).unwrap();
        assert_eq!(
            (assigned.hub.as_str(), assigned.payload.as_ref()),
            ("b.azure-devices.net", Some(&json!({"floor": 3})))
        );
        assert!(
            webhook_assignment(&json!({"iotHubHostName": "elsewhere.azure-devices.net"}), &hubs).is_err()
        );
        assert!(webhook_assignment(&json!({}), &hubs).is_err());
        let mut store = Store::default();
        let state = register(&mut store, &enrolled, "m-1", Ok(assigned), jiff::Timestamp::now());
        assert_eq!(
            (&state["assignedHub"], &state["payload"]),
            (&json!("b.azure-devices.net"), &json!({"floor": 3}))
        );
    }

    #[test]
    fn a_re_registration_follows_the_reprovision_policy() {
        let mut store = Store::default();
        let mut item = symmetric("registrationId", "boiler", &[1; 32]);
        item.insert("deviceId".into(), json!("boiler-device"));
        let enrolled = Enrolled { group_id: None, item };
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let first = register(
            &mut store,
            &enrolled,
            "boiler",
            Ok(Assignment::from("a.azure-devices.net".to_owned())),
            now,
        );
        assert_eq!(
            (&first["status"], &first["substatus"], &first["deviceId"]),
            (&json!("assigned"), &json!("initialAssignment"), &json!("boiler-device"))
        );
        let moved = register(
            &mut store,
            &enrolled,
            "boiler",
            Ok(Assignment::from("b.azure-devices.net".to_owned())),
            now,
        );
        assert_eq!(
            (&moved["assignedHub"], &moved["substatus"]),
            (&json!("b.azure-devices.net"), &json!("deviceDataMigrated"))
        );
        assert_eq!(moved["createdDateTimeUtc"], first["createdDateTimeUtc"]);
        assert_ne!(moved["etag"], first["etag"]);

        let mut pinned = enrolled.item.clone();
        pinned.insert(
            "reprovisionPolicy".into(),
            json!({"updateHubAssignment": false, "migrateDeviceData": true}),
        );
        let pinned = Enrolled { group_id: None, item: pinned };
        let kept = register(
            &mut store,
            &pinned,
            "boiler",
            Ok(Assignment::from("a.azure-devices.net".to_owned())),
            now,
        );
        assert_eq!(
            (&kept["assignedHub"], &kept["substatus"]),
            (&json!("b.azure-devices.net"), &json!("reprovisionedToInitialAssignment"))
        );
        assert_eq!(store.registrations["boiler"].state["assignedHub"], "b.azure-devices.net");

        let mut disabled = enrolled.item.clone();
        disabled.insert("provisioningStatus".into(), json!("disabled"));
        let refused = register(
            &mut store,
            &Enrolled { group_id: None, item: disabled },
            "boiler",
            Ok(Assignment::from("a.azure-devices.net".to_owned())),
            now,
        );
        assert_eq!(refused["status"], "disabled");
        assert_eq!(
            store.registrations["boiler"].state["assignedHub"], "b.azure-devices.net",
            "nothing recorded"
        );

        let failed = register(&mut store, &enrolled, "boiler", Err("No IoT hub.".into()), now);
        assert_eq!((&failed["status"], &failed["errorMessage"]), (&json!("failed"), &json!("No IoT hub.")));
    }
}
