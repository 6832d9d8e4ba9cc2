//! The enrollment reconciler, for both kinds: resolve → build → compare and decide → apply →
//! status, behind a finalizer that removes the enrollment from DPS when the resource goes.

use std::{sync::Arc, time::Duration};

use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, finalizer},
};

use super::{
    Error, Retry,
    conditions::{self, CERTIFICATE_EXPIRING_SOON, Observation, READY, RECONCILING, STALLED},
    connection::Connection,
    context::{Context, object_key},
    desired::{DpsRecord, Facts, Plan, ResolvedCertificate, decide, desired_comparable},
    kinds::{EnrollmentKind, Registrations, registration_record, summarize},
    secrets::Reader,
};
use crate::{
    api::{
        Adoption, AttestationKind, CertificateInfo, CertificatesStatus, DeletionPolicy, EnrollmentStatus,
        ManagementPolicy, PAUSED_ANNOTATION,
    },
    dps::{self, IfMatch},
};

/// The finalizer that holds a resource until its enrollment is removed from DPS.
pub const FINALIZER: &str = "dps.iot.dev/cleanup";
/// How many of a group's latest registrations the status lists.
const LATEST_REGISTRATIONS: usize = 5;

pub async fn reconcile<K: EnrollmentKind>(
    object: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, finalizer::Error<Error>> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let key = object_key(&*object);
    let started = std::time::Instant::now();
    let object = match ctx.latest(&api, object).await {
        Ok(Some(object)) => object,
        Ok(None) => return Ok(Action::await_change()),
        Err(error) => {
            let action = format!("read {key}");
            return Err(finalizer::Error::ApplyFailed(Error::kube(action, error)));
        }
    };
    let result = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            finalizer::Event::Apply(object) => apply(object, &ctx).await,
            finalizer::Event::Cleanup(object) => cleanup(object, &ctx).await,
        }
    })
    .await;
    if result.is_ok() {
        ctx.record_success(&key);
    }
    let reason = result.as_ref().err().map(|error| match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error.reason(),
        _ => "KubernetesApiError",
    });
    ctx.health.metrics.reconciled(K::kind(&()).as_ref(), started.elapsed(), reason);
    result
}

/// When to try again after a failed reconcile: as the error asks, with exponential backoff and
/// jitter for transient failures, capped at five minutes.
pub fn error_policy<K: EnrollmentKind>(
    object: Arc<K>,
    error: &finalizer::Error<Error>,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.record_failure(&object_key(&*object));
    let retry = match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error.retry(),
        _ => Retry::Backoff,
    };
    tracing::warn!(object = %object_key(&*object), %error, failures, "reconcile failed");
    Action::requeue(retry_delay(retry, failures))
}

pub fn retry_delay(retry: Retry, failures: u32) -> Duration {
    const CAP: Duration = Duration::from_secs(300);
    match retry {
        Retry::Now => Duration::from_secs(1),
        // Spread the callers DPS held back, so they do not all return at once.
        Retry::After(wait) => wait + jitter(wait, 1.0),
        Retry::WhenInputsChange => CAP,
        Retry::Backoff => jitter(Duration::from_secs(1u64 << failures.clamp(1, 9)).min(CAP), 0.2),
    }
}

/// `duration` ± `fraction` at random, so checks of many resources spread out.
pub fn jitter(duration: Duration, fraction: f64) -> Duration {
    let unit = f64::from(u32::from_le_bytes(crate::random_bytes())) / f64::from(u32::MAX);
    duration.mul_f64(1.0 - fraction + 2.0 * fraction * unit)
}

fn is_paused<K: ResourceExt>(object: &K) -> bool {
    object.annotations().get(PAUSED_ANNOTATION).is_some_and(|value| value == "true")
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
    host: String,
    /// When to look at DPS again.
    next_check: Duration,
}

#[derive(Debug, PartialEq)]
enum Done {
    /// Settled, and the drift check is not due: DPS was not consulted.
    NotDue,
    InSync,
    Created,
    Recreated,
    /// Written because the spec or a referenced Secret changed (`inputs_changed`), or because
    /// DPS was changed outside Kubernetes.
    Updated {
        drift: Vec<&'static str>,
        inputs_changed: bool,
    },
    Adopted,
    /// Not written (observe-only or paused): what differs, or that it is missing.
    Reported {
        drift: Vec<&'static str>,
        missing: bool,
    },
}

async fn apply<K: EnrollmentKind>(object: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let id = object.dps_id();
    let old = object.current_status().cloned();
    let old_enrollment = old.as_ref().map(K::enrollment_status).cloned().unwrap_or_default();
    let mut recorded = old_enrollment.clone();
    let result = sync(&*object, ctx, &id, &old_enrollment, &mut recorded).await;

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
        is_paused(&*object),
    );
    let registrations = match &result {
        Ok(synced) if synced.registrations != Registrations::Unknown => synced.registrations.clone(),
        _ => old.as_ref().map_or(Registrations::Unknown, K::registrations),
    };
    let ready = enrollment.conditions.iter().any(|c| c.type_ == READY && c.status == "True");
    ctx.health.metrics.set_ready(K::kind(&()).as_ref(), &object_key(&*object), Some(ready));
    let status = K::make_status(enrollment, id.clone(), registrations);
    if old.as_ref() != Some(&status) {
        write_status(ctx, &*object, &status).await?;
    }
    publish_events(ctx, &*object, &id, &old_enrollment, &result).await;
    Ok(Action::requeue(result?.next_check))
}

async fn sync<K: EnrollmentKind>(
    object: &K,
    ctx: &Context,
    id: &str,
    old: &EnrollmentStatus,
    // The status as this pass has written it so far: `old`, then the claim.
    recorded: &mut EnrollmentStatus,
) -> Result<Synced<K::Record>, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let settings = object.settings();
    let input = object.attestation_input()?;
    let connection = ctx.connections.for_enrollment(&ctx.client, &settings.service_ref, &namespace).await?;
    let dps_error = |source| Error::Dps { connection: connection.name.clone(), source };
    let owner = object
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidSpec("the resource has no uid yet".into()))?;
    let webhook = settings.custom_allocation.as_ref().map(|c| &c.webhook_url_secret_ref);
    let resolved =
        Reader { client: &ctx.client, namespace: &namespace }.resolve(input, webhook, &owner).await?;
    let mut desired = object.build(id, &resolved)?;
    let digest = resolved.secrets_digest();
    let interval = drift_interval(object, Some(&connection), ctx);

    // A settled resource (its generation handled, in sync, its Secrets unchanged) needs DPS only
    // when its drift check is due; events about it (its own status writes, unrelated Secret
    // changes) cost no DPS call.
    let synced =
        old.conditions.iter().any(|c| c.type_ == READY && c.status == "True" && c.reason == "Synced");
    let old_thumbprints = old.certificates.as_ref().and_then(|c| {
        Some((
            c.primary.as_ref()?.sha256_thumbprint.clone(),
            c.secondary.as_ref().map(|i| i.sha256_thumbprint.clone()),
        ))
    });
    // Whether the spec or a referenced Secret changed since the last pass.
    let inputs_changed = old.observed_generation != object.meta().generation
        || old.secrets_digest != digest
        || old_thumbprints != resolved.certificate_thumbprints();
    let settled = old.claimed == Some(true) && synced && !inputs_changed;
    let key = object_key(object);
    if settled && let Some(since) = ctx.since_check(&key).filter(|since| *since < interval) {
        return Ok(Synced {
            done: Done::NotDue,
            record: None,
            digest,
            certificates: resolved.certificates,
            registrations: Registrations::Unknown,
            host: connection.host.clone(),
            next_check: interval - since,
        });
    }
    ctx.checked(&key);

    // On a due check, read DPS from the connection's query snapshot rather than a GET each. A
    // snapshot record with the etag this resource last saw is the record it wrote: in sync.
    // Any other (changed outside, or a snapshot older than our own last write) is confirmed with
    // a GET before anything is decided from it.
    let snapshot_record = if settled {
        let max_age = (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let snapshot = ctx.snapshot::<K::Record>(&connection, max_age).await.map_err(dps_error)?;
        snapshot
            .records
            .get(&id.to_lowercase())
            .and_then(|value| serde_json::from_value::<K::Record>(value.clone()).ok())
            .filter(|record| record.etag().is_some() && record.etag() == old.etag.as_deref())
    } else {
        None
    };
    let desired_comparable = desired_comparable(&desired, &resolved);
    let may_write = !is_paused(object) && settings.management_policy != Some(ManagementPolicy::ObserveOnly);
    let mut snapshot_record = snapshot_record;
    // 409 and 412 mean DPS changed between our read and our write: read again and retry.
    let mut attempts = 0;
    let (done, record) = loop {
        attempts += 1;
        let observed = match snapshot_record.take() {
            Some(record) => Some(record),
            None => match connection.client.get::<K::Record>(id).await {
                Ok(record) => Some(record),
                Err(dps::Error::NotFound { .. }) => None,
                Err(source) => return Err(dps_error(source)),
            },
        };
        let observed_comparable = observed.as_ref().map(DpsRecord::comparable);
        let plan = decide(Facts {
            may_write,
            adopt: settings.adoption == Some(Adoption::Adopt),
            claimed: recorded.claimed == Some(true),
            desired: &desired_comparable,
            observed: observed_comparable.as_ref().zip(observed.as_ref().and_then(|r| r.etag())),
            secrets_changed: recorded.claimed == Some(true) && digest != recorded.secrets_digest,
            what: K::WHAT,
            id,
        })?;
        let written = match plan {
            Plan::InSync => Ok((Done::InSync, observed)),
            Plan::Report { drift, missing } => Ok((Done::Reported { drift, missing }, observed)),
            Plan::Create { recreate } => {
                if recorded.claimed != Some(true) {
                    // Claim before creating, so a restart between the create and the status
                    // write does not mistake our own enrollment for someone else's; and record
                    // the keys being written, so an answer lost on the way does not write them
                    // again.
                    claim::<K>(ctx, object, id, recorded, digest.clone()).await?;
                }
                match connection.client.put(&desired, IfMatch::None).await {
                    Ok(created) => {
                        Ok((if recreate { Done::Recreated } else { Done::Created }, Some(created)))
                    }
                    Err(dps::Error::Conflict { .. }) if !recreate => {
                        // Someone else created it between our read and our create.
                        *recorded = old.clone();
                        return Err(Error::AlreadyExists { what: K::WHAT, id: id.to_owned() });
                    }
                    Err(source) => Err(source),
                }
            }
            Plan::Update { etag, drift, adopt } => {
                if adopt {
                    // The keys DPS holds stay unknown until this update is answered.
                    let unknown = recorded.secrets_digest.clone();
                    claim::<K>(ctx, object, id, recorded, unknown).await?;
                }
                desired.set_etag(Some(etag.clone()));
                match connection.client.put(&desired, IfMatch::Etag(&etag)).await {
                    Ok(updated) => Ok((
                        if adopt { Done::Adopted } else { Done::Updated { drift, inputs_changed } },
                        Some(updated),
                    )),
                    Err(source) => Err(source),
                }
            }
        };
        match written {
            Ok(outcome) => break outcome,
            Err(dps::Error::PreconditionFailed { .. } | dps::Error::Conflict { .. }) if attempts < 3 => {
                continue;
            }
            Err(source) => return Err(dps_error(source)),
        }
    };

    let registrations = if K::IS_GROUP {
        match connection.client.query_registrations(id, Some(100)).try_collect::<Vec<_>>().await {
            Ok(states) => Registrations::Group(summarize(&states, LATEST_REGISTRATIONS)),
            Err(error) => {
                tracing::info!(%error, "could not read the registrations of enrollment group {id}");
                Registrations::Unknown
            }
        }
    } else {
        Registrations::Device(record.as_ref().and_then(K::registration_state).map(registration_record))
    };
    Ok(Synced {
        done,
        record,
        digest,
        certificates: resolved.certificates,
        registrations,
        host: connection.host.clone(),
        next_check: jitter(interval, 0.2),
    })
}

/// Marks the enrollment as ours in the status before the write that creates or adopts it, with
/// the digest of the keys DPS will hold once that write is done.
async fn claim<K: EnrollmentKind>(
    ctx: &Context,
    object: &K,
    id: &str,
    recorded: &mut EnrollmentStatus,
    secrets_digest: Option<String>,
) -> Result<(), Error> {
    let claimed = EnrollmentStatus { claimed: Some(true), secrets_digest, ..recorded.clone() };
    let registrations = object.current_status().map_or(Registrations::Unknown, K::registrations);
    write_status(ctx, object, &K::make_status(claimed.clone(), id.to_owned(), registrations)).await?;
    *recorded = claimed;
    Ok(())
}

async fn write_status<K: EnrollmentKind>(ctx: &Context, object: &K, status: &K::Status) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    ctx.write_status(&api, object, status)
        .await
        .map_err(|e| Error::kube(format!("write the status of {}", object_key(object)), e))
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
    paused: bool,
) -> EnrollmentStatus {
    let mut status = EnrollmentStatus { observed_generation: generation, attestation, ..old.clone() };
    let observations = match result {
        Err(error) => conditions::outcome(Err((error.reason(), error.is_stalled())), &describe(error)),
        Ok(synced) => {
            if let Some(record) = &synced.record {
                status.etag = record.etag().map(str::to_owned);
                status.created_time = record.created().map(|t| Time(t.0));
                status.last_updated_time = record.updated().map(|t| Time(t.0));
            }
            if matches!(synced.done, Done::Reported { missing: true, .. }) {
                status.etag = None;
            }
            if !matches!(synced.done, Done::Reported { .. }) {
                status.secrets_digest = synced.digest.clone();
            }
            status.certificates =
                synced.certificates.as_ref().map(|(primary, secondary)| CertificatesStatus {
                    primary: Some(certificate_info(primary)),
                    secondary: secondary.as_ref().map(certificate_info),
                });
            status.drift = match &synced.done {
                Done::Reported { drift, .. } => drift.iter().map(|d| d.to_string()).collect(),
                _ => Vec::new(),
            };
            let held = format!("DPS at {} holds {} {id} as specified.", synced.host, K::WHAT);
            match &synced.done {
                Done::Reported { drift, missing } => {
                    let reason = if paused { "Paused" } else { "ObserveOnly" };
                    let why = if paused {
                        "the dps.iot.dev/paused annotation is set"
                    } else {
                        "managementPolicy is ObserveOnly"
                    };
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
                        (true, held)
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
                _ => conditions::outcome(Ok("Synced"), &held),
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
                "CertificateExpiresSoon",
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
            Done::Created => (false, "Created", format!("Created {what} {id} in DPS at {}.", synced.host)),
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
            Done::Updated { drift, inputs_changed: true }
                if old.observed_generation != object.meta().generation =>
            {
                (false, "Updated", format!("Updated {what} {id} in DPS ({}).", drift.join(", ")))
            }
            Done::Updated { drift, inputs_changed: true } => (
                false,
                "SecretRotated",
                format!("Wrote the new {} of {what} {id} from its Secret.", drift.join(", ")),
            ),
            Done::Updated { drift, inputs_changed: false } => {
                let changed = drift.join(", ");
                (
                    false,
                    "DriftCorrected",
                    format!("Restored {changed} of {what} {id}, changed in DPS outside Kubernetes."),
                )
            }
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

/// Whether the CustomResourceDefinition of `K` is being deleted.
async fn crd_being_deleted<K: EnrollmentKind>(ctx: &Context) -> Result<bool, Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let name = format!("{}.{}", K::plural(&()), K::group(&()));
    let crd = Api::<CustomResourceDefinition>::all(ctx.client.clone())
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("read CustomResourceDefinition {name}"), e))?;
    Ok(crd.is_none_or(|crd| crd.metadata.deletion_timestamp.is_some()))
}

async fn cleanup<K: EnrollmentKind>(object: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let id = object.dps_id();
    let namespace = object.namespace().unwrap_or_default();
    let settings = object.settings();
    let claimed = object.current_status().map(K::enrollment_status).is_some_and(|s| s.claimed == Some(true));
    let writes_off = is_paused(&*object) || settings.management_policy == Some(ManagementPolicy::ObserveOnly);
    // Uninstalling (deleting the CRD deletes every resource of the kind) never deletes in DPS.
    let uninstalling = crd_being_deleted::<K>(ctx).await?;
    if !claimed || writes_off || uninstalling || settings.deletion_policy == Some(DeletionPolicy::Orphan) {
        if claimed {
            let why = if uninstalling {
                "its CustomResourceDefinition is being deleted"
            } else {
                "deletion policy Orphan, observe-only or paused"
            };
            ctx.event(&*object, false, "Orphaned", format!("Left {} {id} in DPS ({why}).", K::WHAT)).await;
        }
        return Ok(Action::await_change());
    }
    let result = async {
        let connection =
            ctx.connections.for_enrollment(&ctx.client, &settings.service_ref, &namespace).await?;
        let policy = settings
            .deletion_policy
            .or_else(|| connection.defaults.as_ref().and_then(|d| d.deletion_policy))
            .unwrap_or_default();
        if policy == DeletionPolicy::Orphan {
            return Ok(false);
        }
        let dps_error = |source| Error::Dps { connection: connection.name.clone(), source };
        let gone = |result: Result<(), dps::Error>| match result {
            Ok(()) | Err(dps::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(dps_error(source)),
        };
        gone(connection.client.delete::<K::Record>(&id, IfMatch::None).await)?;
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
        Ok(true)
    }
    .await;
    match result {
        Ok(deleted) => {
            ctx.forget(&*object);
            ctx.health.metrics.set_ready(K::kind(&()).as_ref(), &object_key(&*object), None);
            let note = if deleted {
                format!("Deleted {} {id} from DPS.", K::WHAT)
            } else {
                format!("Left {} {id} in DPS (the connection's deletion policy is Orphan).", K::WHAT)
            };
            ctx.event(&*object, false, if deleted { "Deleted" } else { "Orphaned" }, note).await;
            Ok(Action::await_change())
        }
        Err(error) => {
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
            let status = K::make_status(enrollment, id, registrations);
            if old.as_ref() != Some(&status) {
                write_status(ctx, &*object, &status).await?;
                ctx.event(&*object, true, "DeletionBlocked", message).await;
            }
            Err(error)
        }
    }
}
