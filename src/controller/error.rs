//! Why a reconcile did not complete, with the condition reason users see and how to retry.

use std::time::Duration;

use crate::dps::{self, RetryClass};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Secret {namespace}/{name} does not exist")]
    SecretNotFound { namespace: String, name: String },

    #[error("Secret {namespace}/{name} has no key {key}")]
    SecretKeyMissing { namespace: String, name: String, key: String },

    #[error("key {key} of Secret {namespace}/{name} {problem}")]
    SecretValueInvalid { namespace: String, name: String, key: String, problem: String },

    #[error("ConfigMap {namespace}/{name} has no key {key}")]
    ConfigMapKeyMissing { namespace: String, name: String, key: String },

    #[error("the certificate in key {key} of Secret {namespace}/{name} {problem}")]
    CertificateInvalid { namespace: String, name: String, key: String, problem: String },

    #[error("cert-manager Certificate {namespace}/{name} {problem}")]
    CertManagerCertificate { namespace: String, name: String, problem: String },

    #[error("{kind} {name} does not exist")]
    ConnectionNotFound { kind: &'static str, name: String },

    #[error(
        "ClusterProvisioningService {name} may not be used from namespace {namespace} (see its allowedNamespaces)"
    )]
    ConnectionNotAllowed { name: String, namespace: String },

    #[error("the credentials of {connection} are invalid: {problem}")]
    InvalidCredentials { connection: String, problem: String },

    #[error(
        "DPS already has {what} {id}, which this resource did not create; set spec.adoption: Adopt to take it over"
    )]
    AlreadyExists { what: &'static str, id: String },

    #[error(
        "{what} {id} on DPS at {host} is managed by {owner}; this resource makes no change to it in DPS and \
         its deletion leaves it alone. Delete this resource, or give it another id"
    )]
    OwnedByAnother { what: &'static str, id: String, host: String, owner: String },

    #[error(
        "DPS already has {what} {id} and the Secret {namespace}/{secret} for its keys does not exist; the \
         keys DPS holds could not be read into it, so nothing was written (devices in the field use those \
         keys). Grant the credentials of {connection} the permission to read attestation mechanisms, or \
         create the Secret with the keys DPS holds"
    )]
    KeysUnreadable {
        what: &'static str,
        id: String,
        namespace: String,
        secret: String,
        connection: String,
        #[source]
        source: Box<dps::Error>,
    },

    #[error(
        "Secret {namespace}/{secret} does not exist and spec.attestation.symmetricKey.createSecret is false: \
         create it with the keys devices use under primaryKey and secondaryKey (kubectl dps import \
         --with-keys writes it). Nothing is written to DPS until then"
    )]
    KeySecretAwaited { namespace: String, secret: String },

    #[error(
        "DPS holds {what} {id} with {held}, but {found}; an adoption never replaces the credentials devices \
         use, so nothing was written. {remedy}"
    )]
    AdoptedCredentialDiffers { what: &'static str, id: String, held: String, found: String, remedy: String },

    #[error(
        "annotation dps.iot.dev/paused is {value:?}; it must be \"true\" (no writes to DPS) or \"false\". \
         Until it is, nothing is written"
    )]
    InvalidPausedAnnotation { value: String },

    #[error(
        "DPS has {what} {id} with {actual} attestation, but the spec asks for {desired}; DPS cannot change the \
         attestation kind in place: delete the enrollment in DPS or use another id"
    )]
    AttestationKindMismatch { what: &'static str, id: String, actual: String, desired: String },

    #[error(
        "Secret {namespace}/{name} exists and was not written by the operator for this group's device keys; it \
         is left as it is. Choose another spec.deviceKeys.secretName, or delete that Secret"
    )]
    SecretNotOwned { namespace: String, name: String },

    #[error("the spec is invalid: {0}")]
    InvalidSpec(String),

    /// A set's member list that cannot be used: nothing is written until it is fixed.
    #[error("the member list cannot be used, so nothing is written or removed until it is fixed: {0}")]
    MemberListInvalid(#[from] crate::controller::enrollment_set::ListError),

    #[error(
        "{what} {id} in DPS was made by IndividualEnrollmentSet {set}, which owns it; this resource leaves it \
         alone. Remove the id from the set first, or give this resource another id"
    )]
    MadeBySet { what: &'static str, id: String, set: String },

    #[error(
        "the device keys of {members} members take {bytes} bytes, more than the {limit} a Secret holds; \
         Secret {namespace}/{name} is not written (split the set, or leave out deviceKeysSecretName)"
    )]
    DeviceKeysTooLarge { namespace: String, name: String, members: usize, bytes: usize, limit: usize },

    #[error(
        "{count} enrollments of IndividualEnrollmentSet {set} could not be deleted from DPS, so the set \
         stays until they are (retried); the first: {first}"
    )]
    MembersNotDeleted { set: String, count: usize, first: String },

    #[error(
        "Secret {namespace}/{name} exists and was not written by the operator for this set's device keys; it \
         is left as it is. Choose another deviceKeysSecretName, or delete that Secret"
    )]
    DeviceKeysSecretNotOwned { namespace: String, name: String },

    /// A connection an enrollment uses whose own inputs (credentials, CA bundle) cannot be read.
    #[error("{connection} cannot be used")]
    ConnectionUnusable {
        connection: String,
        #[source]
        source: Box<Error>,
    },

    #[error("DPS call failed on {connection}")]
    Dps {
        connection: String,
        #[source]
        source: dps::Error,
    },

    #[error("leader election failed: {0}")]
    LeaderElection(String),

    /// A command-line option the operator cannot start with.
    #[error("{0}")]
    InvalidOption(String),

    #[error(
        "CRD {crd} does not store {storage_version}: apply the CRDs of this release (kubectl apply \
         --server-side --force-conflicts -f charts/dps-operator/crds/)"
    )]
    CrdsOutdated { crd: String, storage_version: &'static str },

    /// `action` is what was asked of the API server, e.g. "writing the status of
    /// IndividualEnrollment iot/boiler".
    #[error("{action} {}", kube_failure(.error))]
    Kube { action: String, error: kube::Error },
}

/// An error and its causes, as one sentence chain for a condition or event message.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How a failed Kubernetes API call reads after what was asked: the API server's own code, reason
/// and message for a refusal (kube's `Display` of it is a debug dump of the whole `Status`).
pub fn kube_failure(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let message = status.message.trim_end_matches('.');
            match (status.reason.as_str(), message) {
                ("", "") => format!("was refused by the API server: {}", status.code),
                ("", message) => format!("was refused by the API server: {} {message}", status.code),
                (reason, "") => format!("was refused by the API server: {} {reason}", status.code),
                (reason, message) => {
                    format!("was refused by the API server: {} {reason}: {message}", status.code)
                }
            }
        }
        other => format!("failed: {}", describe(other)),
    }
}

/// A failed watch, in the words of [`kube_failure`].
pub fn watch_failure(error: &kube::runtime::watcher::Error) -> String {
    use kube::runtime::watcher::Error as Watch;
    match error {
        Watch::InitialListFailed(error) => format!("listing {}", kube_failure(error)),
        Watch::WatchStartFailed(error) => format!("starting the watch {}", kube_failure(error)),
        Watch::WatchFailed(error) => format!("watching {}", kube_failure(error)),
        Watch::WatchError(status) => format!("watching {}", kube_failure(&kube::Error::Api(status.clone()))),
        Watch::NoResourceVersion => error.to_string(),
    }
}

/// How soon to try again after an error, before backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Nothing changes until the spec or an input changes; check again slowly.
    WhenInputsChange,
    /// Try again at once (after re-reading).
    Now,
    /// Try again after this long.
    After(Duration),
    /// Transient: back off exponentially.
    Backoff,
}

impl Error {
    pub fn kube(action: impl Into<String>, error: kube::Error) -> Self {
        Self::Kube { action: action.into(), error }
    }

    /// The tracking id of the failed DPS call, for the log.
    pub fn tracking_id(&self) -> Option<&str> {
        match self {
            Self::Dps { source, .. } => source.tracking_id(),
            Self::KeysUnreadable { source, .. } => source.tracking_id(),
            Self::ConnectionUnusable { source, .. } => source.tracking_id(),
            _ => None,
        }
    }

    /// The stable PascalCase reason of the `Ready` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ConnectionUnusable { source, .. } => source.reason(),
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyMissing { .. } | Self::ConfigMapKeyMissing { .. } => "SecretKeyMissing",
            Self::SecretValueInvalid { .. } => "SecretInvalid",
            Self::CertificateInvalid { .. } => "CertificateInvalid",
            Self::CertManagerCertificate { .. } => "CertificateNotIssued",
            Self::ConnectionNotFound { kind: "ClusterProvisioningService", .. } => {
                "ClusterProvisioningServiceNotFound"
            }
            Self::ConnectionNotFound { .. } => "ProvisioningServiceNotFound",
            Self::ConnectionNotAllowed { .. } => "ConnectionNotAllowed",
            Self::InvalidCredentials { .. } => "InvalidCredentials",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::AttestationKindMismatch { .. } => "AttestationKindMismatch",
            Self::OwnedByAnother { .. } => "Conflict",
            Self::KeysUnreadable { .. } => "KeysUnreadable",
            Self::KeySecretAwaited { .. } => "SecretNotFound",
            Self::AdoptedCredentialDiffers { .. } => "CredentialsDiffer",
            Self::InvalidPausedAnnotation { .. } => "InvalidAnnotation",
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::MemberListInvalid(_) => "MemberListInvalid",
            Self::MadeBySet { .. } => "Conflict",
            Self::DeviceKeysTooLarge { .. } => "DeviceKeysTooLarge",
            Self::DeviceKeysSecretNotOwned { .. } => "SecretNotOwned",
            Self::MembersNotDeleted { .. } => "DeleteFailed",
            Self::SecretNotOwned { .. } => "SecretNotOwned",
            Self::Dps { source, .. } => source.reason(),
            Self::Kube { .. } => "KubernetesApiError",
            Self::LeaderElection(_) => "LeaderElectionFailed",
            Self::InvalidOption(_) => "InvalidOption",
            Self::CrdsOutdated { .. } => "CrdsOutdated",
        }
    }

    /// Whether only a change of the spec can help (kstatus `Stalled`).
    pub fn is_stalled(&self) -> bool {
        match self {
            Self::AlreadyExists { .. }
            | Self::AttestationKindMismatch { .. }
            | Self::InvalidSpec(_)
            | Self::MemberListInvalid(_)
            | Self::MadeBySet { .. }
            | Self::DeviceKeysTooLarge { .. }
            | Self::DeviceKeysSecretNotOwned { .. }
            | Self::SecretNotOwned { .. }
            | Self::OwnedByAnother { .. }
            | Self::InvalidPausedAnnotation { .. } => true,
            Self::Dps { source, .. } => source.retry_class() == RetryClass::Permanent,
            Self::ConnectionUnusable { source, .. } => source.is_stalled(),
            _ => false,
        }
    }

    pub fn retry(&self) -> Retry {
        match self {
            Self::ConnectionUnusable { source, .. } => source.retry(),
            Self::Dps { source, .. } => match source.retry_class() {
                RetryClass::Permanent | RetryClass::Credentials => Retry::WhenInputsChange,
                RetryClass::Reread => Retry::Now,
                RetryClass::After(Some(wait)) => Retry::After(wait),
                RetryClass::After(None) | RetryClass::Backoff => Retry::Backoff,
            },
            Self::Kube { .. }
            | Self::LeaderElection(_)
            | Self::CrdsOutdated { .. }
            | Self::MembersNotDeleted { .. } => Retry::Backoff,
            Self::KeysUnreadable { source, .. } => match source.retry_class() {
                RetryClass::Backoff | RetryClass::After(_) => Retry::Backoff,
                _ => Retry::WhenInputsChange,
            },
            // Missing Secrets and connections are watched: a change triggers a reconcile.
            _ => Retry::WhenInputsChange,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_errors_name_the_secret_and_key_and_are_not_stalled() {
        let error = Error::SecretKeyMissing {
            namespace: "iot".into(),
            name: "keys".into(),
            key: "primaryKey".into(),
        };
        assert_eq!(error.to_string(), "Secret iot/keys has no key primaryKey");
        assert_eq!(
            (error.reason(), error.is_stalled(), error.retry()),
            ("SecretKeyMissing", false, Retry::WhenInputsChange)
        );
    }

    #[test]
    fn adoption_refusals_and_rejected_specs_stall() {
        let exists = Error::AlreadyExists { what: "enrollment group", id: "g".into() };
        assert!(exists.is_stalled());
        assert_eq!(exists.reason(), "AlreadyExists");
        assert!(exists.to_string().contains("spec.adoption: Adopt"));
    }

    #[test]
    fn a_refusal_of_the_api_server_reads_as_one_sentence_with_its_own_words() {
        let status = kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "the server rejected our request due to an error in our request".into(),
            ..Default::default()
        };
        let error = Error::kube(
            "recording the claim on IndividualEnrollment default/csa-1",
            kube::Error::Api(Box::new(status)),
        );
        let text = describe(&error);
        assert_eq!(
            text,
            "recording the claim on IndividualEnrollment default/csa-1 was refused by the API server: 422 Invalid: \
             the server rejected our request due to an error in our request"
        );
        assert!(!text.contains("Status {"), "no debug dump: {text}");
        assert_eq!((error.reason(), error.retry()), ("KubernetesApiError", Retry::Backoff));
    }
}
