//! Who may call the emulator: shared access signatures verified as the Azure SDK's own validation
//! code does, and bearer tokens from the emulator's Microsoft Entra ID token endpoint.

use std::{collections::HashMap, time::Duration};

use percent_encoding::percent_decode_str;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

/// How far past its expiry a SAS token is still accepted.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A shared access policy: a name and two keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPolicy {
    pub name: String,
    pub primary_key: Vec<u8>,
    pub secondary_key: Vec<u8>,
}

/// Why a request was not authenticated (the 401 message).
pub type Refusal = String;

/// A `SharedAccessSignature sr=..&sig=..&se=..&skn=..` header, read but not yet verified.
pub struct SasToken {
    /// `sr` exactly as sent: the signature covers it so.
    sr_raw: String,
    se_raw: String,
    signature: Vec<u8>,
    pub key_name: String,
    pub expiry: u64,
}

impl SasToken {
    pub fn parse(header: &str) -> Result<Self, Refusal> {
        let token = header
            .strip_prefix("SharedAccessSignature ")
            .ok_or_else(|| "The authorization header is not a SharedAccessSignature.".to_owned())?;
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for part in token.split('&') {
            let (name, value) =
                part.split_once('=').ok_or_else(|| "The SharedAccessSignature is malformed.".to_owned())?;
            fields.insert(name, value);
        }
        let field = |name: &str| {
            fields.get(name).copied().ok_or_else(|| format!("The SharedAccessSignature has no {name}."))
        };
        let (sr_raw, se_raw) = (field("sr")?, field("se")?);
        let signature = BASE64
            .decode(decode(field("sig")?).trim())
            .map_err(|_| "The SharedAccessSignature signature is not base64.".to_owned())?;
        let key_name = decode(field("skn")?);
        let expiry = decode(se_raw)
            .parse()
            .map_err(|_| "The SharedAccessSignature expiry is not a number.".to_owned())?;
        Ok(Self { sr_raw: sr_raw.to_owned(), se_raw: se_raw.to_owned(), signature, key_name, expiry })
    }

    /// Whether one of `keys` signed the token.
    pub fn signed_by_any<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> bool {
        let string_to_sign = format!("{}\n{}", self.sr_raw, self.se_raw);
        keys.into_iter().any(|key| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            ring::hmac::verify(&key, string_to_sign.as_bytes(), &self.signature).is_ok()
        })
    }

    /// What the token is for, decoded, lower case, without a trailing `/`.
    pub fn audience(&self) -> String {
        decode(&self.sr_raw).trim_end_matches('/').to_ascii_lowercase()
    }

    pub fn check_expiry(&self, now: u64) -> Result<(), Refusal> {
        if self.expiry + MAX_CLOCK_SKEW.as_secs() < now {
            return Err("The SharedAccessSignature has expired.".into());
        }
        Ok(())
    }
}

fn decode(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// Verifies a service API SAS for a request to `host` + `path`: the signature over `sr` exactly
/// as sent, with the primary or the secondary key of the named policy; not expired beyond the
/// clock skew; and `sr` covering the request.
pub fn verify_sas(
    header: &str,
    host: &str,
    path: &str,
    policies: &[AccessPolicy],
    now: u64,
) -> Result<(), Refusal> {
    let token = SasToken::parse(header)?;
    let policy = policies
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(&token.key_name))
        .ok_or_else(|| format!("There is no shared access policy named '{}'.", token.key_name))?;
    if !token.signed_by_any([policy.primary_key.as_slice(), policy.secondary_key.as_slice()]) {
        return Err("The SharedAccessSignature signature is not valid for the policy's keys.".into());
    }
    token.check_expiry(now)?;
    let audience = token.audience();
    let target = format!("{host}{path}").to_ascii_lowercase();
    if !target.starts_with(&audience) {
        return Err(format!("The SharedAccessSignature is for '{audience}', not this service."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SAS token as Microsoft's docs build one ("Control access to Azure IoT Hub Device
    /// Provisioning Service with shared access signatures"): `sr` the URL-encoded resource URI,
    /// signed with HMAC-SHA256 over `sr` and the expiry on two lines.
    fn shared_access_signature(resource: &str, policy: &str, key: &[u8], expiry: u64) -> String {
        let sr = encode(resource);
        let signature = encode(&sign(key, &format!("{sr}\n{expiry}")));
        format!("SharedAccessSignature sr={sr}&sig={signature}&se={expiry}&skn={policy}")
    }

    fn sign(key: &[u8], text: &str) -> String {
        BASE64.encode(ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), text.as_bytes()))
    }

    fn encode(text: &str) -> String {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    const HOST: &str = "mydps.azure-devices-provisioning.net";
    const NOW: u64 = 1_700_000_000;

    fn policies() -> Vec<AccessPolicy> {
        vec![AccessPolicy {
            name: "provisioningserviceowner".into(),
            primary_key: vec![1; 32],
            secondary_key: vec![2; 32],
        }]
    }

    fn verify(token: &str) -> Result<(), Refusal> {
        verify_sas(token, HOST, "/enrollments/d", &policies(), NOW)
    }

    #[test]
    fn tokens_from_either_key_are_accepted() {
        assert_eq!(
            verify(&shared_access_signature(HOST, "provisioningserviceowner", &[1; 32], NOW + 60)),
            Ok(())
        );
        assert_eq!(
            verify(&shared_access_signature(HOST, "provisioningserviceowner", &[2; 32], NOW + 60)),
            Ok(())
        );
    }

    #[test]
    fn field_order_and_escape_casing_do_not_matter_as_long_as_sr_is_signed_as_sent() {
        let se = NOW + 60;
        let sr = "MyDps.azure-devices-provisioning.net%2f"; // lower-case escape, as the C SDK writes
        let sig = sign(&[1; 32], &format!("{sr}\n{se}"));
        let token = format!(
            "SharedAccessSignature skn=provisioningserviceowner&se={se}&sig={}&sr={sr}",
            encode(&sig)
        );
        assert_eq!(verify(&token), Ok(()));
    }

    #[test]
    fn expiry_allows_five_minutes_of_clock_skew() {
        let token = |se| shared_access_signature(HOST, "provisioningserviceowner", &[1; 32], se);
        assert_eq!(verify(&token(NOW - 299)), Ok(()));
        assert!(verify(&token(NOW - 301)).unwrap_err().contains("expired"));
    }

    #[test]
    fn wrong_keys_names_audiences_and_shapes_are_refused() {
        let wrong_key = shared_access_signature(HOST, "provisioningserviceowner", &[3; 32], NOW + 60);
        assert!(verify(&wrong_key).unwrap_err().contains("signature"));
        let wrong_name = shared_access_signature(HOST, "enrollmentread", &[1; 32], NOW + 60);
        assert!(verify(&wrong_name).unwrap_err().contains("enrollmentread"));
        let other_service = shared_access_signature(
            "other.azure-devices-provisioning.net",
            "provisioningserviceowner",
            &[1; 32],
            NOW + 60,
        );
        assert!(verify(&other_service).unwrap_err().contains("not this service"));
        let narrower = shared_access_signature(
            &format!("{HOST}/enrollmentGroups"),
            "provisioningserviceowner",
            &[1; 32],
            NOW + 60,
        );
        assert!(verify(&narrower).is_err(), "a token for one path does not cover another");
        assert!(verify("Bearer abc").is_err());
        assert!(verify("SharedAccessSignature sr=x").unwrap_err().contains("se"));
    }
}
