//! The enrollment reconciler, for both kinds: resolve → build → compare and decide → apply →
//! status, behind a finalizer that removes the enrollment from DPS when the resource goes.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use kube::{Api, ResourceExt, runtime::controller::Action};

use super::{
    Error, Retry,
    conditions::{self, CERTIFICATE_EXPIRING_SOON, Observation, READY, RECONCILING, STALLED},
    connection::Connection,
    context::{Context, object_key, resource_name},
    converge::{Done, Edges, Keys, Known, Pass, converge, drop_claim},
    desired::{
        AttestationInput, DpsRecord, Resolved, ResolvedCertificate, attestation_type, desired_comparable,
        drift,
    },
    device_keys,
    error::describe,
    finalizer::{MetadataChange, claim_of, has_finalizer, remove_finalizer, write_metadata},
    kinds::{EnrollmentKind, Registrations, registration_record, summarize},
    ownership::{
        ClaimKey, Owner, Ownership, annotation_change, claim_annotation, claim_elsewhere, holds_claim,
        ownership, recorded_claim,
    },
    secrets::Reader,
};
use crate::{
    api::{
        Adoption, AttestationKind, CertificateInfo, CertificatesStatus, DeletionPolicy, DeviceKeysStatus,
        EnrollmentStatus, ManagementPolicy, PAUSED_ANNOTATION,
    },
    dps::{self, IfMatch},
};

/// How many of a group's latest registrations the status lists.
const LATEST_REGISTRATIONS: usize = 5;

pub async fn reconcile<K: EnrollmentKind>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let key = object_key(&*object);
    let started = std::time::Instant::now();
    // The next check is what this pass decides.
    ctx.check_after(&key, None);
    let result = match ctx.latest(&api, object.clone()).await {
        Ok(Some(object)) if object.meta().deletion_timestamp.is_none() => apply(object, &ctx).await,
        Ok(Some(object)) if has_finalizer(object.meta()) => cleanup(object, &ctx).await,
        // Gone, or being deleted without the finalizer (it never claimed anything in DPS): nothing
        // about it is worth remembering.
        Ok(_) => {
            ctx.forget(&*object);
            Ok(Action::await_change())
        }
        Err(error) => Err(Error::kube(format!("reading {}", resource_name(&*object)), error)),
    };
    if result.is_ok() {
        ctx.record_success(&key);
    }
    let reason = result.as_ref().err().map(Error::reason);
    ctx.health.metrics.reconciled(K::kind(&()).as_ref(), started.elapsed(), reason);
    result
}

/// When to try again after a failed reconcile: as the error asks, with exponential backoff and
/// jitter for transient failures, capped at five minutes.
pub fn error_policy<K: EnrollmentKind>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&object_key(&*object));
    let tracking_id = error.tracking_id();
    tracing::warn!(object = %object_key(&*object), %error, failures, tracking_id, "reconcile failed");
    Action::requeue(retry_delay(error.retry(), failures))
}

/// The first delay after a transient failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);

/// The longest wait between attempts.
const CAP: Duration = Duration::from_secs(300);

/// The delay after `failures` transient failures in a row, before jitter.
fn backoff(failures: u32) -> Duration {
    (BACKOFF_BASE * (1u32 << failures.clamp(1, 8).saturating_sub(1))).min(CAP)
}

pub fn retry_delay(retry: Retry, failures: u32) -> Duration {
    match retry {
        Retry::Now => Duration::from_secs(1),
        // Spread the callers DPS held back, so they do not all return at once.
        Retry::After(wait) => wait + jitter(wait, 1.0),
        Retry::WhenInputsChange => CAP,
        // 5 s, 10 s, 20 s … 5 min: a DPS that fails every call costs one resource at most five
        // attempts in its first two minutes.
        Retry::Backoff => jitter(backoff(failures), 0.2),
    }
}

/// `duration` ± `fraction` at random, so checks of many resources spread out.
pub fn jitter(duration: Duration, fraction: f64) -> Duration {
    let unit = f64::from(u32::from_le_bytes(crate::random_bytes())) / f64::from(u32::MAX);
    duration.mul_f64(1.0 - fraction + 2.0 * fraction * unit)
}

/// Whether the operator writes to DPS for an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    Manage,
    ObserveOnly,
    /// The `dps.iot.dev/paused: "true"` annotation.
    Paused,
}

impl WriteMode {
    /// The mode of `object`; any value of the paused annotation but `"true"` and `"false"` is an
    /// error, since the user meant something and writing on would be a guess.
    pub fn of<K: EnrollmentKind>(object: &K) -> Result<Self, Error> {
        match object.annotations().get(PAUSED_ANNOTATION).map(String::as_str) {
            Some("true") => return Ok(Self::Paused),
            None | Some("false") => {}
            Some(value) => return Err(Error::InvalidPausedAnnotation { value: value.to_owned() }),
        }
        Ok(match object.settings().management_policy {
            Some(ManagementPolicy::ObserveOnly) => Self::ObserveOnly,
            _ => Self::Manage,
        })
    }

    fn may_write(self) -> bool {
        self == Self::Manage
    }

    /// The reason of `Ready` when DPS holds what the spec says.
    fn in_sync_reason(self) -> &'static str {
        match self {
            Self::Manage => "Synced",
            Self::ObserveOnly => "ObserveOnly",
            Self::Paused => "Paused",
        }
    }

    /// Why nothing is written, for messages.
    fn why_not_written(self) -> &'static str {
        match self {
            Self::Manage => "",
            Self::ObserveOnly => "managementPolicy is ObserveOnly",
            Self::Paused => "the dps.iot.dev/paused annotation is \"true\"",
        }
    }
}

/// The drift check interval: the enrollment's, else its connection's, else the operator's.
fn drift_interval<K: EnrollmentKind>(object: &K, connection: Option<&Connection>, ctx: &Context) -> Duration {
    let parse = |text: &String| text.parse::<kube::core::Duration>().ok().map(Duration::from);
    object
        .settings()
        .drift_check_interval
        .as_ref()
        .and_then(parse)
        .or_else(|| {
            connection.and_then(|c| c.defaults.as_ref()?.drift_check_interval.as_ref()).and_then(parse)
        })
        .unwrap_or(ctx.config.drift_check_interval)
}

/// What a successful pass did and found.
#[derive(Debug)]
struct Synced<R> {
    done: Done,
    record: Option<R>,
    digest: Option<String>,
    certificates: Option<(ResolvedCertificate, Option<ResolvedCertificate>)>,
    registrations: Registrations,
    /// The group's device keys Secret as this pass left it; `None` when it was not looked at.
    device_keys: Option<Option<DeviceKeysStatus>>,
    host: String,
    /// Whether the enrollment is now this resource's on `host`, confirmed by DPS.
    owned: bool,
    /// When to look at DPS again.
    next_check: Duration,
}

async fn apply<K: EnrollmentKind>(object: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let id = object.dps_id();
    let uid = object.meta().uid.clone().unwrap_or_default();
    let old = object.current_status().cloned();
    let old_enrollment = old.as_ref().map(K::enrollment_status).cloned().unwrap_or_default();
    let mut recorded = recorded_claim(old_enrollment.clone(), claim_of(object.meta()), &uid);
    let mode = WriteMode::of(&*object);
    // An annotation that cannot be read stops all writes, as pausing does.
    let shown_mode = *mode.as_ref().unwrap_or(&WriteMode::Paused);
    // The object's metadata as this pass has written it.
    let meta = Mutex::new(object.meta().clone());
    let result = match mode {
        Ok(mode) => sync(&*object, ctx, &id, mode, &old_enrollment, &mut recorded, &meta).await,
        Err(error) => Err(error),
    };

    let kind = object.attestation_input().map(|input| input.kind()).ok();
    let now = Time(jiff::Timestamp::now());
    let enrollment = enrollment_status::<K>(
        &recorded,
        object.meta().generation,
        kind,
        &id,
        &result,
        &now,
        ctx.config.certificate_expiry_warning,
        shown_mode,
    );
    let registrations = match &result {
        Ok(synced) if synced.registrations != Registrations::Unknown => synced.registrations.clone(),
        _ => old.as_ref().map_or(Registrations::Unknown, K::registrations),
    };
    let ready = enrollment.conditions.iter().any(|c| c.type_ == READY && c.status == "True");
    ctx.set_ready(&*object, ready);
    let expiring = |conditions: &[Condition]| {
        conditions.iter().find(|c| c.type_ == CERTIFICATE_EXPIRING_SOON && c.status == "True").cloned()
    };
    let newly_expiring =
        expiring(&enrollment.conditions).filter(|_| expiring(&old_enrollment.conditions).is_none());
    // The device keys Secret as this pass left it, else as the status had it.
    let device_keys = match &result {
        Ok(synced) => synced.device_keys.clone(),
        Err(_) => None,
    }
    .unwrap_or_else(|| old.as_ref().and_then(K::device_keys_status).cloned());
    let make_status = |enrollment, registrations| {
        let mut status = K::make_status(enrollment, id.clone(), registrations);
        K::set_device_keys(&mut status, device_keys.clone());
        status
    };
    // A status without an etag (created in bulk, whose answers carry none) gets it, and DPS's
    // times, with its next write for another reason: filling them in alone would cost a write
    // per enrollment at the first check, and at every restart.
    let only_filled_in = old_enrollment.etag.is_none() && {
        let bare = EnrollmentStatus {
            etag: None,
            created_time: old_enrollment.created_time.clone(),
            last_updated_time: old_enrollment.last_updated_time.clone(),
            ..enrollment.clone()
        };
        old.as_ref() == Some(&make_status(bare, registrations.clone()))
    };
    // Every resource gets the finalizer (a new one with its first claim, in the same write), the
    // claim annotation its status backs, and none that it does not.
    let meta = meta.into_inner().unwrap_or_else(|e| e.into_inner());
    let claim = annotation_change(claim_of(&meta), &enrollment, &uid);
    let change = MetadataChange { add_finalizer: true, claim: claim.as_ref().map(Option::as_deref) };
    if let Err(error) = write_metadata(ctx, &*object, &meta, change).await {
        return gone_meanwhile(ctx, &*object, error).await;
    }
    let status = make_status(enrollment, registrations);
    if old.as_ref() != Some(&status) && !only_filled_in {
        write_status(ctx, &*object, &status).await?;
    }
    publish_events(ctx, &*object, &id, &old_enrollment, &result).await;
    if let Some(expiring) = newly_expiring {
        ctx.event(&*object, true, CERTIFICATE_EXPIRING_SOON, expiring.message).await;
    }
    ctx.check_after(&object_key(&*object), Some(result?.next_check));
    Ok(Action::await_change())
}

async fn sync<K: EnrollmentKind>(
    object: &K,
    ctx: &Context,
    id: &str,
    mode: WriteMode,
    old: &EnrollmentStatus,
    // The claim as this pass has recorded it so far: `old` (with a claim annotation it did not
    // catch up with), then the claim.
    recorded: &mut EnrollmentStatus,
    meta: &Mutex<ObjectMeta>,
) -> Result<Synced<K::Record>, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let settings = object.settings();
    let input = object.attestation_input()?;
    let connection =
        ctx.connections.for_enrollment(&ctx.client, &ctx.caches, &settings.service_ref, &namespace).await?;
    let host = connection.host.clone();
    let dps_error = |source| connection.dps_error(source);
    let owner_reference = object
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidSpec("the resource has no uid yet".into()))?;
    let webhook = settings.custom_allocation.as_ref().map(|c| &c.webhook_url_secret_ref);
    let reader = Reader::knowing(&ctx.client, &namespace, &ctx.caches.secrets);
    let resolved = reader.resolve(input, webhook).await?;
    let desired = object.build(id, &resolved)?;
    let digest = resolved.secrets_digest(&ctx.digest_key);
    // A status from before digests were keyed holds the plain SHA-256: for the same secrets it
    // is taken over as it is, not read as a change of the keys (which would write to DPS).
    if recorded.secrets_digest.is_some() && recorded.secrets_digest == resolved.unkeyed_secrets_digest() {
        recorded.secrets_digest = digest.clone();
    }
    let interval = drift_interval(object, Some(&connection), ctx);

    // A claim belongs to the DPS it was made on: when the connection now points at another DPS,
    // the enrollment there is created afresh under the adoption rules, and the one left behind is
    // never touched again.
    if let Some(elsewhere) = claim_elsewhere(recorded, &host) {
        let note = format!(
            "The connection now points at DPS at {host}: {} {id} at {elsewhere} is left there untouched, and \
             is not deleted with this resource.",
            K::WHAT
        );
        ctx.event(object, true, "ConnectionMoved", note).await;
        drop_claim(recorded);
    }
    let ownership = ownership(recorded, &host);

    // One owner per enrollment: a resource that may write, or that holds a claim, must hold the
    // enrollment's entry in the register.
    let me = Owner {
        uid: owner_reference.uid.as_str().into(),
        name: resource_name(object).into(),
        confirmed: ownership == Ownership::Owned,
        created: object.meta().creation_timestamp.as_ref().map(|t| t.0),
    };
    let claim_key = ClaimKey::new(&host, <K::Record as dps::Enrollment>::COLLECTION, id);
    if (mode.may_write() || ownership != Ownership::None)
        && let Err(holder) = ctx.owners.acquire(claim_key, me)
    {
        drop_claim(recorded);
        return Err(Error::OwnedByAnother {
            what: K::WHAT,
            id: id.to_owned(),
            host,
            owner: holder.name.into(),
        });
    }

    // A settled resource (its generation handled, in sync, its Secrets unchanged) needs DPS only
    // when its drift check is due; events about it (unrelated Secret changes, a connection's
    // status) cost no DPS call.
    let synced = old
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True" && c.reason == mode.in_sync_reason());
    let old_thumbprints = old.certificates.as_ref().and_then(|c| {
        Some((
            c.primary.as_ref()?.sha256_thumbprint.clone(),
            c.secondary.as_ref().map(|i| i.sha256_thumbprint.clone()),
        ))
    });
    // Whether the spec or a referenced Secret changed since the last pass.
    let inputs_changed = old.observed_generation != object.meta().generation
        || recorded.secrets_digest != digest
        || old_thumbprints != resolved.certificate_thumbprints();
    let settled = ownership == Ownership::Owned && synced && !inputs_changed;
    let key = object_key(object);
    if settled && let Some(since) = ctx.since_check(&key).filter(|since| *since < interval) {
        return Ok(Synced {
            done: Done::NotDue,
            record: None,
            digest,
            certificates: resolved.certificates,
            registrations: Registrations::Unknown,
            device_keys: None,
            host,
            owned: true,
            next_check: interval - since,
        });
    }
    ctx.checked(&key);

    // On a due check, read DPS from the connection's query snapshot rather than a GET each. A
    // snapshot record with the etag this resource last saw is the record it wrote: in sync. One
    // created in bulk has no etag recorded: a snapshot record holding what the spec describes is
    // in sync too. Any other (changed outside, or a snapshot older than our own last write) is
    // confirmed with a GET before anything is decided from it.
    let known = if settled {
        let max_age = (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let snapshot = ctx.snapshot::<K::Record>(&connection, max_age).await.map_err(dps_error)?;
        let desired = desired_comparable(&desired, &resolved);
        snapshot
            .records
            .get(&id.to_lowercase())
            .and_then(|json| serde_json::from_str::<K::Record>(json).ok())
            .filter(|record| match old.etag.as_deref() {
                Some(etag) => record.etag() == Some(etag),
                None => drift(&desired, &record.comparable()).is_empty(),
            })
            .map_or(Known::Unknown, Known::Record)
    } else if ownership == Ownership::None && mode.may_write() {
        // A new enrollment: when the snapshot does not hold it, it is created without a GET. An
        // older snapshot only costs a 409 and a read, so it may be as old as a drift interval.
        let snapshot = ctx.snapshot::<K::Record>(&connection, interval).await.map_err(dps_error)?;
        if snapshot.records.contains_key(&id.to_lowercase()) { Known::Unknown } else { Known::Absent }
    } else {
        Known::Unknown
    };
    let key_secret = match input {
        AttestationInput::SymmetricKey(secret) => Some(secret.name.as_str()),
        _ => None,
    };
    let edges = LiveEdges {
        ctx,
        object,
        connection: &connection,
        reader: &reader,
        owner_reference: &owner_reference,
        id,
        meta,
    };
    let mut pass = Pass {
        what: K::WHAT,
        id,
        host: &host,
        connection: &connection.name,
        namespace: &namespace,
        may_write: mode.may_write(),
        adopt: settings.adoption == Some(Adoption::Adopt),
        key_secret,
        inputs_changed,
        ownership,
        resolved,
        desired,
        digest,
        digest_key: &ctx.digest_key,
        known,
    };
    let (done, record) = converge(&edges, &mut pass, recorded).await?;
    let Pass { ownership, resolved, digest, .. } = pass;

    let registrations = if K::IS_GROUP {
        match connection.client.query_registrations(id, Some(100)).try_collect::<Vec<_>>().await {
            Ok(states) => Registrations::Group(summarize(&states, LATEST_REGISTRATIONS)),
            Err(error) => {
                tracing::info!(%error, "could not read the registrations of enrollment group {id}");
                Registrations::Unknown
            }
        }
    } else {
        // A GET holds the registration state (`unassigned` before any device registered); a
        // query's records hold none, and say nothing about it.
        match record.as_ref().and_then(K::registration_state) {
            Some(state) => Registrations::Device(Some(Box::new(registration_record(state)))),
            None => Registrations::Unknown,
        }
    };
    // A group's device keys follow its key once the group is ours and written as specified.
    let device_keys = if mode.may_write() && ownership == Ownership::Owned {
        let written = object.current_status().and_then(K::device_keys_status);
        let group_key = resolved.keys.as_ref().map(|keys| &keys.0);
        if let (Some(keys), Some(group_secret)) = (object.device_keys(), key_secret)
            && keys.secret_name == group_secret
        {
            return Err(Error::InvalidSpec(format!(
                "spec.deviceKeys.secretName is {group_secret}, the group key's Secret: it would be overwritten"
            )));
        }
        let plan = device_keys::plan(object.device_keys(), group_key, written, &ctx.digest_key);
        Some(device_keys::apply(&reader, &owner_reference, plan).await?)
    } else {
        None
    };
    Ok(Synced {
        done,
        record,
        digest,
        certificates: resolved.certificates,
        registrations,
        device_keys,
        host,
        owned: ownership == Ownership::Owned,
        next_check: jitter(interval, 0.2),
    })
}

/// The I/O of a pass: this enrollment's DPS calls on its connection, and the status and Secret
/// writes in its namespace.
struct LiveEdges<'a, K> {
    ctx: &'a Context,
    object: &'a K,
    connection: &'a Connection,
    reader: &'a Reader<'a>,
    owner_reference: &'a OwnerReference,
    id: &'a str,
    meta: &'a Mutex<ObjectMeta>,
}

impl<K: EnrollmentKind> Edges<K::Record> for LiveEdges<'_, K> {
    async fn get(&self) -> Result<Option<K::Record>, dps::Error> {
        match self.connection.client.get::<K::Record>(self.id).await {
            Ok(record) => Ok(Some(record)),
            Err(dps::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn keys_in_dps(&self) -> Result<Option<Keys>, dps::Error> {
        let mechanism = self.connection.client.attestation_mechanism::<K::Record>(self.id).await?;
        Ok(mechanism.symmetric_key.and_then(|k| Some((k.primary_key?, k.secondary_key?))))
    }

    async fn put(&self, record: &K::Record, if_match: IfMatch<'_>) -> Result<K::Record, dps::Error> {
        self.connection.client.put(record, if_match).await
    }

    async fn create(&self, record: &K::Record) -> Result<(K::Record, bool), dps::Error> {
        let items = self.connection.bulk.create(record.clone()).await?;
        if items > 1 {
            self.ctx.announce_bulk_create(self.connection, K::WHAT, self.id);
        }
        Ok((record.clone(), items > 1))
    }

    async fn discard_key_secret(&self, name: &str) -> Result<bool, Error> {
        let secrets = &self.ctx.caches.secrets;
        let Some(version) = secrets.own_version(self.reader.namespace, name) else {
            return Ok(false);
        };
        self.reader.delete_key_secret(name, &version).await?;
        secrets.not_own(self.reader.namespace, name);
        Ok(true)
    }

    fn failed(&self, source: dps::Error) -> Error {
        self.connection.dps_error(source)
    }

    async fn create_key_secret(&self, name: &str, keys: Keys, from_dps: bool) -> Result<Keys, Error> {
        let namespace = self.reader.namespace;
        // Its watch event can arrive before the create's answer: it is known to be ours already.
        let secrets = &self.ctx.caches.secrets;
        secrets.creating_own(namespace, name);
        let created = self.reader.create_key_secret(name, self.owner_reference, keys).await;
        let (keys, version) = created.inspect_err(|_| secrets.not_own(namespace, name))?;
        match version {
            Some(version) => secrets.created_own(namespace, name, &version),
            None => secrets.not_own(namespace, name),
        }
        if from_dps {
            let note = format!(
                "Created Secret {namespace}/{name} with the keys DPS holds for {} {}.",
                K::WHAT,
                self.id
            );
            self.ctx.event(self.object, false, "KeysRestored", note).await;
        }
        Ok(keys)
    }

    async fn record_claim(&self, host: &str) -> Result<(), Error> {
        let annotation = claim_annotation(&self.owner_reference.uid, host);
        let change = MetadataChange { add_finalizer: true, claim: Some(Some(&annotation)) };
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let written = write_metadata(self.ctx, self.object, &meta, change).await.map_err(|e| {
            Error::kube(format!("recording the claim on {} (DPS at {host})", resource_name(self.object)), e)
        })?;
        if let Some(written) = written {
            *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = written.meta().clone();
        }
        Ok(())
    }

    fn build(&self, resolved: &Resolved) -> Result<K::Record, Error> {
        self.object.build(self.id, resolved)
    }

    fn release(&self) {
        self.ctx.owners.release(&self.owner_reference.uid);
    }
}

async fn write_status<K: EnrollmentKind>(ctx: &Context, object: &K, status: &K::Status) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    ctx.write_status(&api, object, status)
        .await
        .map_err(|e| Error::kube(format!("writing the status of {}", resource_name(object)), e))
}

fn certificate_info(certificate: &ResolvedCertificate) -> CertificateInfo {
    let facts = &certificate.facts;
    CertificateInfo {
        subject: facts.subject.clone(),
        issuer: facts.issuer.clone(),
        serial_number: facts.serial_number.clone(),
        sha1_thumbprint: facts.sha1_thumbprint.clone(),
        sha256_thumbprint: facts.sha256_thumbprint.clone(),
        not_before: Time(facts.not_before),
        not_after: Time(facts.not_after),
    }
}

/// The status after a pass: a pure function of the old status, the spec's generation and the
/// outcome.
#[allow(clippy::too_many_arguments)]
fn enrollment_status<K: EnrollmentKind>(
    old: &EnrollmentStatus,
    generation: Option<i64>,
    attestation: Option<AttestationKind>,
    id: &str,
    result: &Result<Synced<K::Record>, Error>,
    now: &Time,
    expiry_warning: Duration,
    mode: WriteMode,
) -> EnrollmentStatus {
    let mut status = EnrollmentStatus { observed_generation: generation, attestation, ..old.clone() };
    let observations = match result {
        Err(error) => conditions::outcome(Err((error.reason(), error.is_stalled())), &describe(error)),
        Ok(synced) => {
            if let Some(record) = &synced.record {
                status.etag = record.etag().map(str::to_owned);
                status.provisioning_status = Some(match record.comparable().provisioning_status {
                    dps::models::ProvisioningStatus::Enabled => crate::api::ProvisioningStatus::Enabled,
                    dps::models::ProvisioningStatus::Disabled => crate::api::ProvisioningStatus::Disabled,
                });
                status.created_time = record.created().map(|t| Time(t.0));
                status.last_updated_time = record.updated().map(|t| Time(t.0));
            }
            if matches!(synced.done, Done::Reported { missing: true, .. }) {
                status.etag = None;
            }
            if !matches!(synced.done, Done::Reported { .. }) {
                status.secrets_digest = synced.digest.clone();
            }
            status.certificates = synced.certificates.as_ref().map(|(primary, secondary)| {
                Box::new(CertificatesStatus {
                    primary: Some(certificate_info(primary)),
                    secondary: secondary.as_ref().map(certificate_info),
                })
            });
            status.drift = match &synced.done {
                Done::Reported { drift, .. } => drift.iter().map(|d| d.to_string()).collect(),
                _ => Vec::new(),
            };
            if synced.owned {
                status.claimed = Some(true);
                status.create_pending = None;
                status.claimed_host = Some(synced.host.clone());
            }
            let held = format!("DPS at {} holds {} {id} as specified.", synced.host, K::WHAT);
            let reason = mode.in_sync_reason();
            let why = mode.why_not_written();
            match &synced.done {
                Done::Reported { drift, missing } => {
                    let (ready, message) = if *missing {
                        (
                            false,
                            format!(
                                "DPS at {} has no {} {id}; not created because {why}.",
                                synced.host,
                                K::WHAT
                            ),
                        )
                    } else if drift.is_empty() {
                        (true, format!("{held} Nothing is written because {why}."))
                    } else {
                        (
                            false,
                            format!(
                                "DPS differs from the spec in {}; not corrected because {why}.",
                                drift.join(", ")
                            ),
                        )
                    };
                    vec![
                        Observation::new(READY, ready, reason, message.clone()),
                        Observation::new(RECONCILING, false, reason, message.clone()),
                        Observation::new(STALLED, false, reason, message),
                    ]
                }
                _ if mode != WriteMode::Manage => {
                    conditions::outcome(Ok(reason), &format!("{held} Nothing is written because {why}."))
                }
                _ => conditions::outcome(Ok(reason), &held),
            }
        }
    };
    let mut observations = observations;
    if let Some(certificates) = &status.certificates {
        let soon: Vec<String> =
            [("primary", certificates.primary.as_ref()), ("secondary", certificates.secondary.as_ref())]
                .into_iter()
                .filter_map(|(slot, info)| {
                    let info = info?;
                    let remaining = info.not_after.0.duration_since(now.0);
                    (remaining.as_secs() < expiry_warning.as_secs() as i64).then(|| {
                        format!("the {slot} certificate {} expires on {}", info.subject, info.not_after.0)
                    })
                })
                .collect();
        observations.push(if soon.is_empty() {
            Observation::new(
                CERTIFICATE_EXPIRING_SOON,
                false,
                "CertificatesValid",
                "No certificate expires soon.",
            )
        } else {
            Observation::new(
                CERTIFICATE_EXPIRING_SOON,
                true,
                CERTIFICATE_EXPIRING_SOON,
                format!("{}.", soon.join("; ")),
            )
        });
    }
    status.conditions = conditions::update(&old.conditions, &observations, generation, now);
    status
}

async fn publish_events<K: EnrollmentKind>(
    ctx: &Context,
    object: &K,
    id: &str,
    old: &EnrollmentStatus,
    result: &Result<Synced<K::Record>, Error>,
) {
    let what = K::WHAT;
    let (warning, reason, note) = match result {
        Ok(synced) => match &synced.done {
            Done::NotDue | Done::InSync => return,
            // Announced on the connection, with the others of its bulk call.
            Done::Created { in_bulk: true } => return,
            Done::Created { in_bulk: false } => {
                (false, "Created", format!("Created {what} {id} in DPS at {}.", synced.host))
            }
            Done::Recreated => (
                false,
                "DriftCorrected",
                format!("Recreated {what} {id}, which had been deleted from DPS outside Kubernetes."),
            ),
            Done::Adopted => (
                false,
                "Adopted",
                format!("Adopted {what} {id}, which already existed in DPS, and made it match the spec."),
            ),
            Done::Updated { drift, inputs_changed: true, .. }
                if old.observed_generation != object.meta().generation =>
            {
                (false, "Updated", format!("Updated {what} {id} in DPS ({}).", drift.join(", ")))
            }
            Done::Updated { drift, inputs_changed: true, .. } => (
                false,
                "SecretRotated",
                format!("Wrote the new {} of {what} {id} from its Secret.", drift.join(", ")),
            ),
            Done::Updated { drift, outside: true, .. } => (
                false,
                "DriftCorrected",
                format!("Restored {} of {what} {id}, changed in DPS outside Kubernetes.", drift.join(", ")),
            ),
            // DPS as last seen, the spec changed while writes were off (paused, observe-only, a
            // failing connection): catching up with the spec.
            Done::Updated { drift, .. } => (
                false,
                "Updated",
                format!("Updated {what} {id} in DPS ({}) to match the spec.", drift.join(", ")),
            ),
            Done::Reported { drift, missing } => {
                let previous: Vec<&str> = old.drift.iter().map(String::as_str).collect();
                if *missing {
                    (
                        true,
                        "DriftDetected",
                        format!("DPS has no {what} {id}; it is not created while writes are off."),
                    )
                } else if drift.is_empty() || *drift == previous {
                    return;
                } else {
                    (
                        true,
                        "DriftDetected",
                        format!(
                            "DPS differs from the spec in {}; not corrected while writes are off.",
                            drift.join(", ")
                        ),
                    )
                }
            }
        },
        Err(error) => {
            let message = describe(error);
            let previous = old.conditions.iter().find(|c| c.type_ == READY);
            if previous.is_some_and(|c| c.reason == error.reason() && c.message == message) {
                return;
            }
            (true, error.reason(), message)
        }
    };
    ctx.event(object, warning, reason, note).await;
}

/// The end of a pass whose last metadata write failed: when the resource was deleted meanwhile
/// (gone, or being deleted and so refusing a new finalizer), it never claimed anything, and its
/// place in the register of owners is given up; otherwise the error.
async fn gone_meanwhile<K: EnrollmentKind>(
    ctx: &Context,
    object: &K,
    error: kube::Error,
) -> Result<Action, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let failed = |error| Error::kube(format!("adding the finalizer to {}", resource_name(object)), error);
    let latest = match &error {
        kube::Error::Api(status) if [404, 422].contains(&status.code) => {
            api.get_opt(&object.name_any()).await.map_err(failed)?
        }
        _ => return Err(failed(error)),
    };
    if latest.is_some_and(|latest| latest.meta().deletion_timestamp.is_none()) {
        return Err(failed(error));
    }
    ctx.owners.release(object.meta().uid.as_deref().unwrap_or_default());
    ctx.forget(object);
    Ok(Action::await_change())
}

/// Whether the CustomResourceDefinition of `K` is being deleted.
async fn crd_being_deleted<K: EnrollmentKind>(ctx: &Context) -> Result<bool, Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let name = format!("{}.{}", K::plural(&()), K::group(&()));
    let crd = Api::<CustomResourceDefinition>::all(ctx.client.clone())
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading CustomResourceDefinition {name}"), e))?;
    Ok(crd.is_none_or(|crd| crd.metadata.deletion_timestamp.is_some()))
}

async fn cleanup<K: EnrollmentKind>(object: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    // The deletion policy that applies is the one on the latest object: the watch cache may still
    // hold a copy from before the user set `Orphan` just ahead of the delete.
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = object.name_any();
    let Some(object) = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading {}", resource_name(&*object)), e))?
    else {
        return Ok(Action::await_change());
    };
    let result = delete_from_dps(&object, ctx).await;
    match result {
        Ok(outcome) => {
            if let Outcome::Left { claimed: true, .. } = outcome {
                keep_key_secret(&object, ctx).await?;
            }
            let id = object.dps_id();
            let event = match &outcome {
                Outcome::Deleted => Some(("Deleted", format!("Deleted {} {id} from DPS.", K::WHAT))),
                Outcome::Left { claimed: true, why } => {
                    Some(("Orphaned", format!("Left {} {id} in DPS: {why}.", K::WHAT)))
                }
                Outcome::Left { claimed: false, .. } => None,
            };
            if let Some((reason, note)) = event {
                ctx.event(&object, false, reason, note).await;
            }
            remove_finalizer(ctx, &object).await?;
            ctx.owners.release(object.meta().uid.as_deref().unwrap_or_default());
            ctx.forget(&object);
            Ok(Action::await_change())
        }
        Err(error) => {
            let id = object.dps_id();
            let message = format!(
                "Could not delete {} {id} from DPS: {}. It is retried; to leave it in DPS and let the resource go, run \
                 `kubectl patch {} {} -n {namespace} --type merge -p '{{\"spec\":{{\"deletionPolicy\":\"Orphan\"}}}}'`.",
                K::WHAT,
                describe(&error),
                K::kind(&()).to_lowercase(),
                object.name_any(),
            );
            let old = object.current_status().cloned();
            let mut enrollment = old.as_ref().map(K::enrollment_status).cloned().unwrap_or_default();
            let now = Time(jiff::Timestamp::now());
            let observations = conditions::outcome(Err(("DeletionBlocked", false)), &message);
            enrollment.conditions =
                conditions::update(&enrollment.conditions, &observations, object.meta().generation, &now);
            let registrations = old.as_ref().map_or(Registrations::Unknown, K::registrations);
            let mut status = K::make_status(enrollment, id, registrations);
            K::set_device_keys(&mut status, old.as_ref().and_then(K::device_keys_status).cloned());
            if old.as_ref() != Some(&status) {
                write_status(ctx, &object, &status).await?;
                ctx.event(&object, true, "DeletionBlocked", message).await;
            }
            Err(error)
        }
    }
}

/// What deleting a resource did in DPS.
#[derive(Debug, PartialEq)]
enum Outcome {
    Deleted,
    /// Left in DPS; `claimed`: the enrollment was this resource's, so its keys must outlive it.
    Left {
        claimed: bool,
        why: String,
    },
}

async fn delete_from_dps<K: EnrollmentKind>(object: &K, ctx: &Context) -> Result<Outcome, Error> {
    let id = object.dps_id();
    let namespace = object.namespace().unwrap_or_default();
    let settings = object.settings();
    let status = object.current_status().map(K::enrollment_status).cloned().unwrap_or_default();
    let uid = object.meta().uid.clone().unwrap_or_default();
    let status = recorded_claim(status, claim_of(object.meta()), &uid);
    let left = |claimed: bool, why: &str| Ok(Outcome::Left { claimed, why: why.to_owned() });
    if !holds_claim(&status) {
        return left(false, "this resource never created or adopted it");
    }
    // Uninstalling (deleting the CRD deletes every resource of the kind) never deletes in DPS.
    if crd_being_deleted::<K>(ctx).await? {
        return left(true, "its CustomResourceDefinition is being deleted");
    }
    match WriteMode::of(object) {
        Ok(WriteMode::Manage) => {}
        Ok(mode) => return left(true, &format!("nothing is deleted because {}", mode.why_not_written())),
        Err(error) => return left(true, &format!("nothing is deleted because the {error}")),
    }
    if settings.deletion_policy == Some(DeletionPolicy::Orphan) {
        return left(true, "its deletionPolicy is Orphan");
    }
    let connection =
        ctx.connections.for_enrollment(&ctx.client, &ctx.caches, &settings.service_ref, &namespace).await?;
    let policy = settings
        .deletion_policy
        .or_else(|| connection.defaults.as_ref().and_then(|d| d.deletion_policy))
        .unwrap_or_default();
    if policy == DeletionPolicy::Orphan {
        return left(true, &format!("the deletion policy of {} is Orphan", connection.name));
    }
    match ownership(&status, &connection.host) {
        Ownership::Owned => {}
        // A create DPS never confirmed: whatever is at the id may be someone else's.
        Ownership::CreatePending => return left(true, "DPS never confirmed that this resource created it"),
        Ownership::None => {
            let elsewhere = status.claimed_host.as_deref().unwrap_or("another DPS");
            return left(
                true,
                &format!(
                    "it was created at {elsewhere}, and the connection now points at {}",
                    connection.host
                ),
            );
        }
    }
    let dps_error = |source| connection.dps_error(source);
    let gone = |result: Result<(), dps::Error>| match result {
        Ok(()) | Err(dps::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(dps_error(source)),
    };
    let attestation = attestation_type(object.attestation_input()?.kind());
    gone(connection.bulk.delete::<K::Record>(&id, attestation).await)?;
    if settings.delete_registration_records == Some(true) {
        let registrations: Vec<String> = if K::IS_GROUP {
            let states: Vec<_> = connection
                .client
                .query_registrations(&id, Some(100))
                .try_collect()
                .await
                .map_err(dps_error)?;
            states.into_iter().filter_map(|s| s.registration_id).collect()
        } else {
            vec![id.clone()]
        };
        for registration in registrations {
            gone(connection.client.delete_registration(&registration, IfMatch::None).await)?;
        }
    }
    Ok(Outcome::Deleted)
}

/// The enrollment stays in DPS: its generated key Secret must outlive the resource, or the keys
/// devices use would be lost with it.
async fn keep_key_secret<K: EnrollmentKind>(object: &K, ctx: &Context) -> Result<(), Error> {
    let Ok(AttestationInput::SymmetricKey(secret)) = object.attestation_input() else { return Ok(()) };
    let namespace = object.namespace().unwrap_or_default();
    let uid = object.meta().uid.clone().unwrap_or_default();
    let reader = Reader::new(&ctx.client, &namespace);
    if reader.release_secret(&secret.name, &uid).await? {
        let note = format!(
            "Secret {namespace}/{} keeps the keys of {} {}, which stays in DPS; it is no longer owned by this \
             resource and is not deleted with it.",
            secret.name,
            K::WHAT,
            object.dps_id()
        );
        ctx.event(object, false, "SecretKept", note).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dps_failing_every_call_gets_at_most_five_attempts_in_two_minutes() {
        // Each retry at the earliest the jitter allows (-20%).
        let mut at = Duration::ZERO;
        let mut attempts = 1;
        for failures in 1.. {
            at += backoff(failures).mul_f64(0.8);
            if at > Duration::from_secs(120) {
                break;
            }
            attempts += 1;
        }
        assert_eq!(attempts, 5);
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(30), CAP);
        let jittered = retry_delay(Retry::Backoff, 2);
        assert!((Duration::from_secs(8)..=Duration::from_secs(12)).contains(&jittered), "{jittered:?}");
    }
}
