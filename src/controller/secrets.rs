//! Reading what enrollments and connections reference: symmetric keys, certificates, webhook URLs,
//! connection strings and CA bundles. Errors name the Secret and the key, never the value.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
};

use super::{
    Error,
    desired::{AttestationInput, Resolved, ResolvedCertificate},
    digest_key::DigestKey,
    key_rotation::{self, KeySecretState},
    names::FIELD_MANAGER,
    watches::SecretVersions,
};
use crate::{
    api::{self, KeySlot},
    certificates,
    dps::models::Secret as SecretValue,
};

/// The keys of a symmetric key Secret.
pub const PRIMARY_KEY: &str = "primaryKey";
pub const SECONDARY_KEY: &str = "secondaryKey";

/// Reads objects in one namespace.
pub struct Reader<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    /// The Secrets the watch knows of: one it has listed as absent is not asked for.
    known: Option<&'a SecretVersions>,
}

impl<'a> Reader<'a> {
    pub fn new(client: &'a Client, namespace: &'a str) -> Self {
        Self { client, namespace, known: None }
    }

    /// A reader that does not ask the API server for a Secret the watch `known` lists as absent.
    pub fn knowing(client: &'a Client, namespace: &'a str, known: &'a SecretVersions) -> Self {
        Self { client, namespace, known: Some(known) }
    }

    pub async fn secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        Api::<Secret>::namespaced(self.client.clone(), self.namespace)
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("reading Secret {}/{name}", self.namespace), e))
    }

    async fn existing_secret(&self, name: &str) -> Result<Secret, Error> {
        self.secret(name)
            .await?
            .ok_or_else(|| Error::SecretNotFound { namespace: self.namespace.into(), name: name.into() })
    }

    /// The text under `key` of Secret `name`.
    pub async fn secret_text(&self, name: &str, key: &str) -> Result<SecretValue, Error> {
        let secret = self.existing_secret(name).await?;
        self.text(&secret, name, key)
    }

    /// The text under `key` of `secret`, which is Secret `name`.
    pub fn text(&self, secret: &Secret, name: &str, key: &str) -> Result<SecretValue, Error> {
        let bytes = secret_bytes(secret, key).ok_or_else(|| Error::SecretKeyMissing {
            namespace: self.namespace.into(),
            name: name.into(),
            key: key.into(),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| self.invalid(name, key, "is not UTF-8 text"))?;
        Ok(SecretValue::new(text.trim()))
    }

    fn invalid(&self, name: &str, key: &str, problem: impl Into<String>) -> Error {
        Error::SecretValueInvalid {
            namespace: self.namespace.into(),
            name: name.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The text under `key` of ConfigMap `name`.
    pub async fn config_map_text(&self, name: &str, key: &str) -> Result<String, Error> {
        let missing = || Error::ConfigMapKeyMissing {
            namespace: self.namespace.into(),
            name: name.into(),
            key: key.into(),
        };
        let config_map = Api::<ConfigMap>::namespaced(self.client.clone(), self.namespace)
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("reading ConfigMap {}/{name}", self.namespace), e))?
            .ok_or_else(missing)?;
        config_map.data.and_then(|mut data| data.remove(key)).ok_or_else(missing)
    }

    /// The symmetric keys in Secret `name` and what it says of them (`owner_uid`: the resource
    /// whose generated keys it would hold); `None` when the Secret does not exist.
    pub async fn symmetric_keys(
        &self,
        name: &str,
        owner_uid: &str,
    ) -> Result<Option<((SecretValue, SecretValue), KeySecretState)>, Error> {
        // A key Secret found missing is created, and a create of one that exists after all is
        // answered 409 and read: a watch that lags behind costs a read, never an overwrite.
        if self.known.is_some_and(|known| known.known_absent(self.namespace, name)) {
            return Ok(None);
        }
        let Some(secret) = self.secret(name).await? else { return Ok(None) };
        let key = |key: &str| -> Result<SecretValue, Error> {
            let value = self.text(&secret, name, key)?;
            match BASE64.decode(value.expose()) {
                Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(value),
                Ok(bytes) => Err(self.invalid(
                    name,
                    key,
                    format!("decodes to {} bytes; DPS needs 16 to 64", bytes.len()),
                )),
                Err(_) => Err(self.invalid(name, key, "is not base64")),
            }
        };
        let keys = (key(PRIMARY_KEY)?, key(SECONDARY_KEY)?);
        Ok(Some((keys, self.key_secret_state(&secret, name, owner_uid)?)))
    }

    /// The active slot and the rotation a key Secret records.
    fn key_secret_state(
        &self,
        secret: &Secret,
        name: &str,
        owner_uid: &str,
    ) -> Result<KeySecretState, Error> {
        let active = match secret_bytes(secret, key_rotation::ACTIVE_KEY) {
            None => KeySlot::Primary,
            Some(bytes) => {
                String::from_utf8(bytes).ok().as_deref().and_then(key_rotation::parse_slot).ok_or_else(
                    || self.invalid(name, key_rotation::ACTIVE_KEY, "is neither primaryKey nor secondaryKey"),
                )?
            }
        };
        let annotation = |key: &str| secret.metadata.annotations.as_ref().and_then(|a| a.get(key));
        let owners = secret.metadata.owner_references.iter().flatten();
        Ok(KeySecretState {
            active,
            generated: owners.clone().any(|owner| owner.uid == owner_uid),
            rotating_to: annotation(key_rotation::ROTATING_TO_ANNOTATION)
                .and_then(|a| key_rotation::parse_slot(a)),
            rotated_at: annotation(key_rotation::ROTATED_AT_ANNOTATION).and_then(|a| a.parse().ok()),
            trigger: annotation(key_rotation::TRIGGER_ANNOTATION).cloned(),
            created: secret.metadata.creation_timestamp.as_ref().map(|t| t.0),
            resource_version: secret.metadata.resource_version.clone(),
        })
    }

    /// Gives `slot` of key Secret `name` a new key and records the rotation on it, if the
    /// Secret is still at `version`; answers the Secret's new resourceVersion.
    pub async fn start_key_rotation(
        &self,
        name: &str,
        version: &str,
        slot: KeySlot,
        key: &SecretValue,
        trigger: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let mut annotations = serde_json::json!({key_rotation::ROTATING_TO_ANNOTATION: slot.secret_key()});
        if let Some(trigger) = trigger {
            annotations[key_rotation::TRIGGER_ANNOTATION] = trigger.into();
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": version, "annotations": annotations},
            "data": {slot.secret_key(): BASE64.encode(key.expose())},
        });
        self.patch_key_secret(name, &patch, "starting a key rotation of").await
    }

    /// Makes `slot` the active one of key Secret `name` (at `version`), ending its rotation.
    pub async fn publish_rotated_key(
        &self,
        name: &str,
        version: &str,
        slot: KeySlot,
        at: jiff::Timestamp,
    ) -> Result<Option<String>, Error> {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": version, "annotations": {
                key_rotation::ROTATING_TO_ANNOTATION: null,
                key_rotation::ROTATED_AT_ANNOTATION: at.to_string(),
            }},
            "data": {key_rotation::ACTIVE_KEY: BASE64.encode(slot.secret_key())},
        });
        self.patch_key_secret(name, &patch, "publishing the rotated key of").await
    }

    async fn patch_key_secret(
        &self,
        name: &str,
        patch: &serde_json::Value,
        doing: &str,
    ) -> Result<Option<String>, Error> {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        Api::<Secret>::namespaced(self.client.clone(), self.namespace)
            .patch(name, &params, &Patch::Merge(patch))
            .await
            .map(|secret| secret.metadata.resource_version)
            .map_err(|e| Error::kube(format!("{doing} Secret {}/{name}", self.namespace), e))
    }

    /// Creates Secret `name` holding `data`, labelled as the operator's and owned by `owner` when
    /// given. `None` when a Secret of that name exists already (created meanwhile by another
    /// writer: us in an earlier attempt, another replica, or the user).
    async fn create_secret(
        &self,
        name: &str,
        owner: Option<&OwnerReference>,
        data: BTreeMap<String, ByteString>,
    ) -> Result<Option<Secret>, Error> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.namespace.into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".into(),
                    "dps-operator".into(),
                )])),
                owner_references: owner.map(|owner| vec![owner.clone()]),
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match Api::<Secret>::namespaced(self.client.clone(), self.namespace).create(&params, &secret).await {
            Ok(created) => Ok(Some(created)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(e) => Err(Error::kube(format!("creating Secret {}/{name}", self.namespace), e)),
        }
    }

    /// Creates Secret `name` holding `keys` (primary, secondary), owned by `owner`, and returns
    /// the keys it holds (these, or those of a Secret created meanwhile) and, of our create, the
    /// resourceVersion and the creation time.
    pub async fn create_key_secret(
        &self,
        name: &str,
        owner: &OwnerReference,
        keys: (SecretValue, SecretValue),
    ) -> Result<((SecretValue, SecretValue), Option<(String, jiff::Timestamp)>), Error> {
        let value = |key: &SecretValue| ByteString(key.expose().as_bytes().to_vec());
        let data =
            BTreeMap::from([(PRIMARY_KEY.into(), value(&keys.0)), (SECONDARY_KEY.into(), value(&keys.1))]);
        match self.create_secret(name, Some(owner), data).await? {
            Some(created) => {
                let created = created.metadata.resource_version.zip(created.metadata.creation_timestamp);
                Ok((keys, created.map(|(version, time)| (version, time.0))))
            }
            None => {
                let keys =
                    self.symmetric_keys(name, &owner.uid).await?.map(|(keys, _)| keys).ok_or_else(|| {
                        Error::SecretNotFound { namespace: self.namespace.into(), name: name.into() }
                    })?;
                Ok((keys, None))
            }
        }
    }

    /// Deletes Secret `name` if it still is at `version` (a later version holds someone's edit).
    pub async fn delete_key_secret(&self, name: &str, version: &str) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions { resource_version: Some(version.to_owned()), uid: None }),
            ..DeleteParams::default()
        };
        match Api::<Secret>::namespaced(self.client.clone(), self.namespace).delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(Error::kube(format!("deleting Secret {}/{name}", self.namespace), e)),
        }
    }

    /// Lets Secret `name` outlive `owner`: removes `owner` from its ownerReferences, so the
    /// garbage collector keeps it when the resource goes. A Secret `owner` does not own is left
    /// alone.
    pub async fn release_secret(&self, name: &str, owner_uid: &str) -> Result<bool, Error> {
        let Some(secret) = self.secret(name).await? else { return Ok(false) };
        let references = secret.metadata.owner_references.unwrap_or_default();
        if !references.iter().any(|r| r.uid == owner_uid) {
            return Ok(false);
        }
        let kept: Vec<&OwnerReference> = references.iter().filter(|r| r.uid != owner_uid).collect();
        // The resourceVersion makes the patch fail rather than drop a reference added meanwhile.
        let patch = serde_json::json!({
            "metadata": {"ownerReferences": kept, "resourceVersion": secret.metadata.resource_version}
        });
        Api::<Secret>::namespaced(self.client.clone(), self.namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube(format!("releasing Secret {}/{name}", self.namespace), e))?;
        Ok(true)
    }

    /// Writes Secret `name` to hold exactly `data`, owned by `owner`, by server-side apply: an
    /// entry no longer in `data` goes. A Secret of that name `owner` does not own is refused.
    pub async fn apply_owned_secret(
        &self,
        name: &str,
        owner: &OwnerReference,
        data: &BTreeMap<String, SecretValue>,
    ) -> Result<(), Error> {
        if let Some(existing) = self.secret(name).await?
            && !existing.metadata.owner_references.iter().flatten().any(|r| r.uid == owner.uid)
        {
            return Err(Error::SecretNotOwned { namespace: self.namespace.into(), name: name.into() });
        }
        let data: BTreeMap<&str, String> =
            data.iter().map(|(key, value)| (key.as_str(), BASE64.encode(value.expose()))).collect();
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/managed-by": "dps-operator"},
                "ownerReferences": [owner],
            },
            "type": "Opaque",
            "data": data,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        Api::<Secret>::namespaced(self.client.clone(), self.namespace)
            .patch(name, &params, &Patch::Apply(&secret))
            .await
            .map_err(|e| Error::kube(format!("writing Secret {}/{name}", self.namespace), e))?;
        Ok(())
    }

    /// Deletes Secret `name` if `owner_uid` owns it.
    pub async fn delete_owned_secret(&self, name: &str, owner_uid: &str) -> Result<(), Error> {
        let Some(secret) = self.secret(name).await? else { return Ok(()) };
        if !secret.metadata.owner_references.iter().flatten().any(|r| r.uid == owner_uid) {
            return Ok(());
        }
        let version = secret.metadata.resource_version.unwrap_or_default();
        self.delete_key_secret(name, &version).await
    }

    /// The certificate in the Secret cert-manager Certificate `name` issues.
    async fn issued_certificate(&self, name: &str) -> Result<ResolvedCertificate, Error> {
        let failed = |problem: String| Error::CertManagerCertificate {
            namespace: self.namespace.into(),
            name: name.into(),
            problem,
        };
        let resource = kube::discovery::ApiResource {
            group: "cert-manager.io".into(),
            version: "v1".into(),
            api_version: "cert-manager.io/v1".into(),
            kind: "Certificate".into(),
            plural: "certificates".into(),
        };
        let api =
            Api::<kube::api::DynamicObject>::namespaced_with(self.client.clone(), self.namespace, &resource);
        let certificate = match api.get_opt(name).await {
            Ok(Some(certificate)) => certificate,
            Ok(None) => return Err(failed("does not exist (or cert-manager is not installed)".into())),
            Err(e) => {
                return Err(Error::kube(
                    format!("reading cert-manager Certificate {}/{name}", self.namespace),
                    e,
                ));
            }
        };
        let secret = certificate.data["spec"]["secretName"]
            .as_str()
            .ok_or_else(|| failed("has no spec.secretName".into()))?;
        let reference = api::CertificateSecretRef { name: secret.to_owned(), key: None };
        self.certificate(&reference).await.map_err(|error| match error {
            Error::SecretNotFound { .. } => {
                failed(format!("has not been issued yet: its Secret {secret} does not exist"))
            }
            other => other,
        })
    }

    pub async fn certificate(
        &self,
        reference: &api::CertificateSecretRef,
    ) -> Result<ResolvedCertificate, Error> {
        let key = reference.key();
        let text = self.secret_text(&reference.name, key).await?;
        let invalid = |problem: String| Error::CertificateInvalid {
            namespace: self.namespace.into(),
            name: reference.name.clone(),
            key: key.into(),
            problem,
        };
        let der = certificates::first_certificate_der(text.expose())
            .map_err(|e| invalid(format!("cannot be read: {e}")))?;
        let facts = certificates::facts(&der).map_err(|e| invalid(format!("cannot be read: {e}")))?;
        if facts.not_after < jiff::Timestamp::now() {
            return Err(invalid(format!("expired on {}", facts.not_after)));
        }
        Ok(ResolvedCertificate { pem: certificates::pem(&der), facts })
    }

    /// Everything secret an enrollment needs: keys or certificates, and the webhook URL. A
    /// symmetric key Secret that does not exist leaves `keys` empty: whether to generate keys or
    /// take DPS's is decided once DPS has been read.
    /// `owner_uid`: the resource's, whose generated keys a key Secret it owns holds.
    pub async fn resolve(
        &self,
        input: AttestationInput<'_>,
        webhook: Option<&api::SecretKeySelector>,
        owner_uid: &str,
    ) -> Result<Resolved, Error> {
        let mut resolved = Resolved::default();
        match input {
            AttestationInput::SymmetricKey(secret) => {
                if let Some((keys, state)) = self.symmetric_keys(&secret.secret_ref.name, owner_uid).await? {
                    resolved.keys = Some(keys);
                    resolved.key_secret = Some(state);
                }
            }
            AttestationInput::ClientCertificates(pair) | AttestationInput::SigningCertificates(pair) => {
                let secondary = match &pair.secondary {
                    Some(secondary) => Some(self.certificate(secondary).await?),
                    None => None,
                };
                let primary = match (&pair.primary, &pair.certificate_ref) {
                    (Some(primary), _) => self.certificate(primary).await?,
                    (None, Some(certificate)) => self.issued_certificate(&certificate.name).await?,
                    (None, None) => {
                        return Err(Error::InvalidSpec("the certificates name no primary".into()));
                    }
                };
                resolved.certificates = Some((primary, secondary));
            }
            AttestationInput::CaReferences(_) | AttestationInput::Tpm(_) => {}
        }
        if let Some(webhook) = webhook {
            resolved.webhook_url = Some(self.webhook_url(webhook).await?);
        }
        Ok(resolved)
    }

    /// A custom allocation webhook's URL, which must be https.
    pub async fn webhook_url(&self, webhook: &api::SecretKeySelector) -> Result<SecretValue, Error> {
        let url = self.secret_text(&webhook.name, &webhook.key).await?;
        if !url.expose().starts_with("https://") {
            return Err(self.invalid(&webhook.name, &webhook.key, "is not an https:// URL"));
        }
        Ok(url)
    }
}

fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(value) = secret.data.as_ref().and_then(|data| data.get(key)) {
        return Some(value.0.clone());
    }
    secret.string_data.as_ref().and_then(|data| data.get(key)).map(|text| text.clone().into_bytes())
}

/// The names of the Secrets an enrollment references, to map Secret changes back to it.
pub fn referenced_secrets(input: AttestationInput<'_>, settings: &api::EnrollmentSettings) -> Vec<String> {
    let mut names = Vec::new();
    match input {
        AttestationInput::SymmetricKey(key) => names.push(key.secret_ref.name.clone()),
        AttestationInput::ClientCertificates(pair) | AttestationInput::SigningCertificates(pair) => {
            names.extend(pair.primary.iter().chain(&pair.secondary).map(|s| s.name.clone()));
        }
        AttestationInput::CaReferences(_) | AttestationInput::Tpm(_) => {}
    }
    names.extend(settings.custom_allocation.iter().map(|c| c.webhook_url_secret_ref.name.clone()));
    names
}

/// The annotation cert-manager puts on the Secrets it issues, naming their Certificate.
pub const CERT_MANAGER_CERTIFICATE_ANNOTATION: &str = "cert-manager.io/certificate-name";

/// The cert-manager Certificates an enrollment takes its certificate from: a change of a Secret
/// annotated as issued for one of them concerns it.
pub fn referenced_certificates(input: AttestationInput<'_>) -> Vec<&str> {
    match input {
        AttestationInput::ClientCertificates(pair) | AttestationInput::SigningCertificates(pair) => {
            pair.certificate_ref.iter().map(|c| c.name.as_str()).collect()
        }
        _ => Vec::new(),
    }
}

/// The Secret, in the operator's namespace, that holds the key of every `status.secretsDigest`.
pub const DIGEST_KEY_SECRET: &str = "dps-operator-digest-key";

/// The key of the status digests, kept in [`DIGEST_KEY_SECRET`] in `namespace`, created on the
/// first start.
pub async fn load_digest_key(client: &Client, namespace: &str) -> Result<DigestKey, Error> {
    let reader = Reader::new(client, namespace);
    let unusable = || {
        Error::InvalidSpec(format!(
            "Secret {namespace}/{DIGEST_KEY_SECRET}, the key of the status digests, has no key of 32 \
             bytes or more; delete it to have a new one made (each symmetric-key enrollment is then \
             written to DPS once)"
        ))
    };
    let read = |secret: Secret| {
        let key = secret.data.and_then(|mut data| data.remove("key"));
        key.and_then(|key| DigestKey::from_bytes(key.0)).ok_or_else(unusable)
    };
    if let Some(secret) = reader.secret(DIGEST_KEY_SECRET).await? {
        return read(secret);
    }
    let key = DigestKey::random();
    let data = BTreeMap::from([("key".into(), ByteString(key.bytes().to_vec()))]);
    match reader.create_secret(DIGEST_KEY_SECRET, None, data).await? {
        Some(_) => Ok(key),
        // Another replica was first: use its key.
        None => read(reader.existing_secret(DIGEST_KEY_SECRET).await?),
    }
}
