//! One pass's conversation with DPS about one enrollment: read it, settle a create DPS never
//! confirmed, fill a missing key Secret, decide, write, and read again when DPS changed between
//! the read and the write (409, 412). Its I/O goes through [`Edges`], so each decision path has a
//! table test below.

use super::{
    adoption::{self, CertificateSources},
    inputs::Material,
};
use crate::{
    api::EnrollmentStatus,
    controller::{
        Error,
        desired::{DpsRecord, Facts, Plan, Resolved, decide, desired_comparable, drift},
        device_keys,
        digest_key::DigestKey,
        key_rotation::KeySecretState,
        ownership::{Ownership, drop_claim},
    },
    dps::{self, IfMatch, models::Secret},
};

/// A primary and a secondary symmetric key.
pub type Keys = (Secret, Secret);

/// The keys a key Secret holds, and when it was created if this pass created it.
pub type CreatedKeys = (Keys, Option<jiff::Timestamp>);

/// What a pass does outside itself: the DPS calls about its enrollment, and the Kubernetes writes
/// that go with them.
pub trait Edges<R> {
    /// The enrollment as DPS holds it, `None` when DPS has none.
    async fn get(&self) -> Result<Option<R>, dps::Error>;
    /// The symmetric keys DPS holds for the enrollment (the attestation mechanism call), if both.
    async fn keys_in_dps(&self) -> Result<Option<Keys>, dps::Error>;
    async fn put(&self, record: &R, if_match: IfMatch<'_>) -> Result<R, dps::Error>;
    /// Creates the enrollment, never overwriting one that exists (409). Answers the record as
    /// sent (a create gathered into a bulk call learns no etag), and whether the call carried
    /// other creates too.
    async fn create(&self, record: &R) -> Result<(R, bool), dps::Error>;
    /// The error of a failed DPS call, naming the connection.
    fn failed(&self, source: dps::Error) -> Error;
    /// Creates the missing key Secret `name` with `keys` (`from_dps`: the keys DPS holds) and
    /// answers the keys it then holds: another writer may have created it first.
    /// Also answers when the Secret was created, when this call created it.
    async fn create_key_secret(&self, name: &str, keys: Keys, from_dps: bool) -> Result<CreatedKeys, Error>;
    /// Deletes the key Secret `name` this pass created with new keys, when the create they were
    /// for found an enrollment at the id: those keys must never reach DPS. Answers false when
    /// the Secret is not (or no longer) the one this process created.
    async fn discard_key_secret(&self, name: &str) -> Result<bool, Error>;
    /// Records on the resource that it claims the enrollment on `host`, before the DPS write
    /// (a create, an adoption) that makes it its own.
    async fn record_claim(&self, host: &str) -> Result<(), Error>;
    /// The record the spec describes with the material in `resolved`.
    fn build(&self, resolved: &Resolved) -> Result<R, Error>;
    /// Gives up this resource's entry in the register of owners, for another to take.
    fn release(&self);
}

/// What a pass starts from, and what it leaves for the status.
#[derive(Debug)]
pub struct Pass<'a, R> {
    pub what: &'static str,
    pub id: &'a str,
    /// The DPS host and the name of the connection to it.
    pub host: &'a str,
    pub connection: &'a str,
    pub namespace: &'a str,
    pub may_write: bool,
    pub adopt: bool,
    /// Whether the spec or a referenced Secret changed since the last pass.
    pub inputs_changed: bool,
    pub ownership: Ownership,
    /// What the pass writes from, as it changes: a key Secret made, or given up.
    pub material: Material<'a, R>,
    /// The key `material.digest` is made with.
    pub digest_key: &'a DigestKey,
    /// What the connection's query snapshot says, read instead of a GET.
    pub known: Known<R>,
    /// Where the spec's certificates come from, to name them when an adoption finds others.
    pub certificate_sources: CertificateSources,
}

/// What a pass knows of the enrollment in DPS before it reads.
#[derive(Debug)]
pub enum Known<R> {
    /// Nothing: a GET reads it.
    Unknown,
    /// Missing from a recent query snapshot: created without a GET first. A create never
    /// overwrites, so an enrollment that appeared since is answered 409 and then read.
    Absent,
    /// The record in the snapshot, known current.
    Record(R),
}

#[derive(Debug, PartialEq)]
pub enum Done {
    /// Settled, and the drift check is not due: DPS was not consulted.
    NotDue,
    InSync,
    /// `in_bulk`: in a call with other creates, announced with them.
    Created {
        in_bulk: bool,
    },
    Recreated,
    /// Written because the spec or a referenced Secret changed (`inputs_changed`), because DPS
    /// was changed outside Kubernetes (`outside`: its etag is not the one last seen), or because
    /// writes were off when the spec changed.
    Updated {
        drift: Vec<&'static str>,
        inputs_changed: bool,
        outside: bool,
    },
    /// Taken over; `written` when DPS had to be made to match the spec.
    Adopted {
        written: bool,
    },
    /// Not written (observe-only or paused): what differs, or that it is missing.
    Reported {
        drift: Vec<&'static str>,
        missing: bool,
    },
}

/// How often one pass reads again after DPS answered that the enrollment changed meanwhile.
const ATTEMPTS: u32 = 3;

/// Brings DPS in line with `pass`, recording claims in `recorded` (the status as this pass has
/// written it so far). Answers what was done and the record DPS now holds.
pub async fn converge<R: DpsRecord, E: Edges<R>>(
    edges: &E,
    pass: &mut Pass<'_, R>,
    recorded: &mut EnrollmentStatus,
) -> Result<(Done, Option<R>), Error> {
    // Whether the keys in the key Secret are new ones this pass made for its create.
    let mut new_keys = false;
    for attempt in 1..=ATTEMPTS {
        let observed = match std::mem::replace(&mut pass.known, Known::Unknown) {
            Known::Record(record) => Some(record),
            Known::Absent => None,
            Known::Unknown => edges.get().await.map_err(|e| edges.failed(e))?,
        };
        if pass.ownership == Ownership::CreatePending
            && let Some(found) = &observed
        {
            settle_pending_create(edges, pass, recorded, found).await?;
        }
        let filled = fill_key_secret(edges, pass, observed.is_some()).await?;
        new_keys |= filled == Filled::New;
        if let Some(found) = observed.as_ref().filter(|_| pass.adopting()) {
            check_credentials(edges, pass, found, filled == Filled::FromDps).await?;
        }
        let plan = plan(edges, pass, recorded, observed.as_ref())?;
        // Whether DPS holds what this operator last sent, even if its answer was lost.
        let ours = observed.as_ref().is_some_and(|observed| {
            recorded.written_digest == Some(observed.comparable().content_digest(pass.digest_key))
        });
        if matches!(plan, Plan::Create { .. } | Plan::Update { .. }) {
            let desired = desired_comparable(&pass.material.desired, &pass.material.resolved);
            recorded.written_digest = Some(desired.content_digest(pass.digest_key));
        }
        let written = match plan {
            Plan::InSync => return Ok((Done::InSync, observed)),
            Plan::Adopt => {
                claim(edges, pass, recorded).await?;
                return Ok((Done::Adopted { written: false }, observed));
            }
            Plan::Report { drift, missing } => return Ok((Done::Reported { drift, missing }, observed)),
            Plan::Create { recreate } => create(edges, pass, recorded, recreate, &mut new_keys).await?,
            Plan::Update { etag, drift, adopt } => {
                update(edges, pass, recorded, &etag, drift, adopt, ours).await?
            }
        };
        match written {
            Ok(outcome) => return Ok(outcome),
            // DPS changed between the read and the write: read again.
            Err(dps::Error::PreconditionFailed { .. } | dps::Error::Conflict { .. })
                if attempt < ATTEMPTS => {}
            Err(source) => return Err(edges.failed(source)),
        }
    }
    unreachable!("the last attempt returns")
}

/// A create of ours that DPS never confirmed (its answer lost, or the operator stopped): the
/// enrollment `found` at the id is ours only if it holds exactly what was sent.
async fn settle_pending_create<R: DpsRecord, E: Edges<R>>(
    edges: &E,
    pass: &mut Pass<'_, R>,
    recorded: &mut EnrollmentStatus,
    found: &R,
) -> Result<(), Error> {
    let material = &pass.material;
    let same_keys = match &material.resolved.keys {
        None => material.key_secret.is_none(),
        Some(keys) => edges
            .keys_in_dps()
            .await
            .map_err(|e| edges.failed(e))?
            .is_some_and(|held| held.0.expose() == keys.0.expose() && held.1.expose() == keys.1.expose()),
    };
    let desired = desired_comparable(&material.desired, &material.resolved);
    let found = found.comparable();
    // What was sent: the spec now, or, when it changed since, the digest of the create.
    let sent = drift(&desired, &found).is_empty()
        || recorded.written_digest == Some(found.content_digest(pass.digest_key));
    if same_keys && sent {
        pass.ownership = Ownership::Owned;
        // It holds the keys resolved now: they are the ones written.
        recorded.secrets_digest = material.digest.clone();
    } else {
        pass.ownership = Ownership::None;
        drop_claim(recorded);
    }
    Ok(())
}

/// What to do about `observed`. An enrollment refused (not ours, not to adopt) is left to
/// others: this resource gives up its place in the register.
fn plan<R: DpsRecord, E: Edges<R>>(
    edges: &E,
    pass: &Pass<'_, R>,
    recorded: &EnrollmentStatus,
    observed: Option<&R>,
) -> Result<Plan, Error> {
    let owned = pass.ownership == Ownership::Owned;
    let desired = desired_comparable(&pass.material.desired, &pass.material.resolved);
    let observed_comparable = observed.map(DpsRecord::comparable);
    let plan = decide(Facts {
        may_write: pass.may_write,
        adopt: pass.adopt,
        claimed: owned,
        desired: &desired,
        observed: observed_comparable.as_ref().zip(observed.and_then(|r| r.etag())),
        secrets_changed: owned && pass.material.digest != recorded.secrets_digest,
        what: pass.what,
        id: pass.id,
    });
    // A create still pending was settled before: one not ours now is someone else's.
    if plan.is_err() && !owned {
        edges.release();
    }
    plan
}

/// The outcome of a write: what was done and the record DPS answered, or DPS's refusal.
type Written<R> = Result<(Done, Option<R>), dps::Error>;

/// Creates the enrollment. A resource that does not own it yet records the create (a claim
/// still pending, with the keys it writes) before sending it: should the answer be lost, the
/// enrollment then found is recognised as its own, and not written again.
async fn create<R: DpsRecord, E: Edges<R>>(
    edges: &E,
    pass: &mut Pass<'_, R>,
    recorded: &mut EnrollmentStatus,
    recreate: bool,
    new_keys: &mut bool,
) -> Result<Written<R>, Error> {
    if pass.ownership != Ownership::Owned {
        let pending = EnrollmentStatus {
            claimed: None,
            create_pending: Some(true),
            claimed_host: Some(pass.host.to_owned()),
            secrets_digest: pass.material.digest.clone(),
            ..recorded.clone()
        };
        edges.record_claim(pass.host).await?;
        *recorded = pending;
        pass.ownership = Ownership::CreatePending;
    }
    // A create never overwrites: an enrollment that appeared meanwhile is answered 409, and read
    // again.
    let created = edges.create(&pass.material.desired).await;
    if let (Err(dps::Error::Conflict { .. }), true, Some(secret)) =
        (&created, *new_keys, pass.material.key_secret)
        && edges.discard_key_secret(secret).await?
    {
        // The keys were made for an enrollment that turned out to exist: it keeps its own, and
        // the read that follows decides from them (restored, or refused).
        *new_keys = false;
        let material = &mut pass.material;
        material.resolved.keys = None;
        material.desired = edges.build(&material.resolved)?;
        material.digest = material.resolved.secrets_digest(pass.digest_key);
    }
    Ok(created.map(|(created, in_bulk)| {
        pass.ownership = Ownership::Owned;
        (if recreate { Done::Recreated } else { Done::Created { in_bulk } }, Some(created))
    }))
}

/// Writes the spec over the enrollment DPS holds at `etag`; with `adopt`, making it this
/// resource's first. `ours`: DPS holds what this operator last sent, even if the answer was lost.
async fn update<R: DpsRecord, E: Edges<R>>(
    edges: &E,
    pass: &mut Pass<'_, R>,
    recorded: &mut EnrollmentStatus,
    etag: &str,
    drift: Vec<&'static str>,
    adopt: bool,
    ours: bool,
) -> Result<Written<R>, Error> {
    let done = if adopt {
        claim(edges, pass, recorded).await?;
        Done::Adopted { written: true }
    } else {
        // Without an etag seen (created in bulk), a change of the spec explains it; a record
        // this operator sent (its answer lost) is never someone else's.
        let outside = !ours
            && match recorded.etag.as_deref() {
                Some(seen) => seen != etag,
                None => !pass.inputs_changed,
            };
        Done::Updated { drift, inputs_changed: pass.inputs_changed, outside }
    };
    pass.material.desired.set_etag(Some(etag.to_owned()));
    Ok(edges.put(&pass.material.desired, IfMatch::Etag(etag)).await.map(|updated| (done, Some(updated))))
}

/// Refuses an adoption that would replace a credential devices use. `keys_from_dps`: the key
/// Secret was just filled with the keys DPS holds, so they need no comparing.
async fn check_credentials<R: DpsRecord, E: Edges<R>>(
    edges: &E,
    pass: &Pass<'_, R>,
    observed: &R,
    keys_from_dps: bool,
) -> Result<(), Error> {
    let desired = desired_comparable(&pass.material.desired, &pass.material.resolved);
    let sources = &pass.certificate_sources;
    if let Some(difference) = adoption::credential_difference(&desired, &observed.comparable(), sources) {
        return Err(adoption::refusal(pass.what, pass.id, difference));
    }
    let (Some(keys), Some(secret), false) =
        (&pass.material.resolved.keys, pass.material.key_secret, keys_from_dps)
    else {
        return Ok(());
    };
    let held = match edges.keys_in_dps().await {
        Ok(held) => held,
        // Credentials that may not read keys: the Secret the user made is taken at its word (the
        // remedy `KeysUnreadable` names).
        Err(error) if error.retry_class() == dps::RetryClass::Credentials => return Ok(()),
        Err(error) => return Err(edges.failed(error)),
    };
    match held.is_some_and(|held| held.0.expose() == keys.0.expose() && held.1.expose() == keys.1.expose()) {
        true => Ok(()),
        false => Err(adoption::keys_differ(pass.what, pass.id, pass.namespace, secret)),
    }
}

/// An explicit adoption: the enrollment is ours from here on.
async fn claim<R, E: Edges<R>>(
    edges: &E,
    pass: &mut Pass<'_, R>,
    recorded: &mut EnrollmentStatus,
) -> Result<(), Error> {
    edges.record_claim(pass.host).await?;
    recorded.claimed = Some(true);
    recorded.create_pending = None;
    recorded.claimed_host = Some(pass.host.to_owned());
    pass.ownership = Ownership::Owned;
    Ok(())
}

/// What [`fill_key_secret`] put in a missing key Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filled {
    /// Nothing: the Secret exists, or gets no keys.
    Nothing,
    /// New random keys, for an enrollment about to be created.
    New,
    /// The keys DPS holds.
    FromDps,
}

impl<R> Pass<'_, R> {
    /// Whether this pass takes over an enrollment it does not own yet.
    fn adopting(&self) -> bool {
        self.adopt && self.may_write && self.ownership != Ownership::Owned
    }
}

/// Keys for a key Secret that does not exist: new ones for an enrollment about to be created;
/// for one DPS already has (ours, or to adopt), the keys it holds, so devices keep working. An
/// enrollment neither ours nor to adopt gets none: it is refused without a write. Answers
/// what it filled the Secret with.
async fn fill_key_secret<R, E: Edges<R>>(
    edges: &E,
    pass: &mut Pass<'_, R>,
    exists: bool,
) -> Result<Filled, Error> {
    let (None, Some(secret), true) = (&pass.material.resolved.keys, pass.material.key_secret, pass.may_write)
    else {
        return Ok(Filled::Nothing);
    };
    let keys = if !exists {
        Some((device_keys::random_key(), device_keys::random_key()))
    } else if pass.ownership == Ownership::Owned || pass.adopt {
        edges.keys_in_dps().await.map_err(|source| Error::KeysUnreadable {
            what: pass.what,
            id: pass.id.to_owned(),
            namespace: pass.namespace.to_owned(),
            secret: secret.to_owned(),
            connection: pass.connection.to_owned(),
            source: Box::new(source),
        })?
    } else {
        None
    };
    if let Some(keys) = keys {
        let material = &mut pass.material;
        let (keys, created) = edges.create_key_secret(secret, keys, exists).await?;
        material.resolved.keys = Some(keys);
        // Another writer's Secret, created meanwhile, is read again by the next pass.
        let generated = created.is_some();
        material.resolved.key_secret = Some(KeySecretState { generated, created, ..Default::default() });
        material.desired = edges.build(&material.resolved)?;
        material.digest = material.resolved.secrets_digest(pass.digest_key);
        return Ok(if exists { Filled::FromDps } else { Filled::New });
    }
    Ok(Filled::Nothing)
}

#[cfg(test)]
mod tests {
    use std::{
        cell::{Cell, RefCell},
        collections::VecDeque,
        time::Duration,
    };

    use super::*;
    use crate::{
        controller::ownership::ownership,
        dps::models::{AttestationMechanism, AttestationType, IndividualEnrollment, SymmetricKeyAttestation},
    };

    const HOST: &str = "dps.example";
    static DIGEST_KEY: std::sync::LazyLock<DigestKey> = std::sync::LazyLock::new(DigestKey::random);

    fn keys(name: &str) -> Keys {
        (Secret::new(format!("{name}-primary")), Secret::new(format!("{name}-secondary")))
    }

    /// A symmetric-key enrollment `device-1` with these keys (DPS generates them when `None`)
    /// and this device id.
    fn record(keys: Option<&Keys>, device_id: &str) -> IndividualEnrollment {
        IndividualEnrollment {
            registration_id: "device-1".into(),
            device_id: Some(device_id.into()),
            attestation: AttestationMechanism {
                type_: AttestationType::SymmetricKey,
                symmetric_key: Some(SymmetricKeyAttestation {
                    primary_key: keys.map(|k| k.0.clone()),
                    secondary_key: keys.map(|k| k.1.clone()),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// How the fake DPS answers a PUT.
    enum PutAnswer {
        /// Refused with this error; nothing written.
        Fail(dps::Error),
        /// Carried out, then the answer is lost.
        Lost,
        /// Another client writes this record just before ours arrives.
        Raced(Box<IndividualEnrollment>),
    }

    /// DPS holding at most one enrollment, and the Kubernetes side of a pass, recording each call.
    #[derive(Default)]
    struct Fake {
        record: RefCell<Option<IndividualEnrollment>>,
        /// The keys DPS holds for the record.
        keys: RefCell<Option<Keys>>,
        /// Whether the attestation mechanism call is refused (a policy without the permission).
        keys_forbidden: bool,
        /// How the next PUTs are answered; carried out as DPS would once these run out.
        puts: RefCell<VecDeque<PutAnswer>>,
        etags: Cell<u32>,
        /// The key Secret the pass created.
        secret: RefCell<Option<Keys>>,
        calls: RefCell<Vec<&'static str>>,
        /// The hosts of the claims recorded.
        claims: RefCell<Vec<String>>,
    }

    fn details() -> Box<crate::dps::models::ProvisioningServiceErrorDetails> {
        Box::default()
    }

    impl Fake {
        fn holding(record: IndividualEnrollment, keys: Keys) -> Self {
            let fake = Self::default();
            fake.store(record, Some(keys));
            fake
        }

        fn store(&self, mut record: IndividualEnrollment, keys: Option<Keys>) {
            self.etags.set(self.etags.get() + 1);
            record.etag = Some(format!("etag-{}", self.etags.get()));
            record.attestation.symmetric_key = Some(SymmetricKeyAttestation::default());
            *self.keys.borrow_mut() = keys;
            *self.record.borrow_mut() = Some(record);
        }

        fn with_puts(self, answers: impl IntoIterator<Item = PutAnswer>) -> Self {
            self.puts.borrow_mut().extend(answers);
            self
        }

        fn call(&self, what: &'static str) {
            self.calls.borrow_mut().push(what);
        }

        fn calls(&self) -> Vec<&'static str> {
            self.calls.borrow().clone()
        }

        fn dps_keys(&self) -> Option<(String, String)> {
            self.keys.borrow().as_ref().map(|k| (k.0.expose().to_owned(), k.1.expose().to_owned()))
        }

        /// A PUT, or with `IfMatch::None` a create, as DPS carries it out.
        fn write(
            &self,
            what: &'static str,
            record: &IndividualEnrollment,
            if_match: IfMatch<'_>,
        ) -> Result<IndividualEnrollment, dps::Error> {
            self.call(what);
            let operation = format!("{what} enrollments/device-1");
            let lost = match self.puts.borrow_mut().pop_front() {
                Some(PutAnswer::Fail(error)) => return Err(error),
                Some(PutAnswer::Raced(other)) => {
                    self.store(*other, Some(keys("raced")));
                    false
                }
                Some(PutAnswer::Lost) => true,
                None => false,
            };
            let held = self.record.borrow().as_ref().and_then(|r| r.etag.clone());
            match (if_match, held) {
                (IfMatch::None, Some(_)) => {
                    return Err(dps::Error::Conflict { operation, details: details() });
                }
                (IfMatch::Etag(wanted), held) if held.as_deref() != Some(wanted) => {
                    return Err(dps::Error::PreconditionFailed { operation, details: details() });
                }
                _ => {}
            }
            let given = record.attestation.symmetric_key.as_ref();
            let keys = match given.and_then(|k| Some((k.primary_key.clone()?, k.secondary_key.clone()?))) {
                Some(keys) => keys,
                None => self.keys.borrow().clone().unwrap_or_else(|| keys("generated")),
            };
            self.store(record.clone(), Some(keys));
            if lost {
                return Err(dps::Error::Timeout { operation, timeout: Duration::from_secs(5) });
            }
            Ok(self.record.borrow().clone().expect("just stored"))
        }
    }

    impl Edges<IndividualEnrollment> for Fake {
        async fn put(
            &self,
            record: &IndividualEnrollment,
            if_match: IfMatch<'_>,
        ) -> Result<IndividualEnrollment, dps::Error> {
            self.write("PUT", record, if_match)
        }

        async fn create(
            &self,
            record: &IndividualEnrollment,
        ) -> Result<(IndividualEnrollment, bool), dps::Error> {
            self.write("CREATE", record, IfMatch::None).map(|_| (record.clone(), false))
        }

        async fn discard_key_secret(&self, _name: &str) -> Result<bool, Error> {
            self.call("DISCARD");
            *self.secret.borrow_mut() = None;
            Ok(true)
        }

        async fn get(&self) -> Result<Option<IndividualEnrollment>, dps::Error> {
            self.call("GET");
            Ok(self.record.borrow().clone())
        }

        async fn keys_in_dps(&self) -> Result<Option<Keys>, dps::Error> {
            self.call("KEYS");
            if self.keys_forbidden {
                return Err(dps::Error::Forbidden {
                    operation: "POST attestationmechanism".into(),
                    details: details(),
                });
            }
            Ok(self.keys.borrow().clone())
        }

        async fn create_key_secret(
            &self,
            _name: &str,
            keys: Keys,
            _from_dps: bool,
        ) -> Result<CreatedKeys, Error> {
            self.call("SECRET");
            *self.secret.borrow_mut() = Some(keys.clone());
            Ok((keys, Some(jiff::Timestamp::from_second(1_800_000_000).unwrap())))
        }

        async fn record_claim(&self, host: &str) -> Result<(), Error> {
            self.call("CLAIM");
            self.claims.borrow_mut().push(host.to_owned());
            Ok(())
        }

        fn build(&self, resolved: &Resolved) -> Result<IndividualEnrollment, Error> {
            Ok(record(resolved.keys.as_ref(), "thermostat"))
        }

        fn release(&self) {
            self.call("RELEASE");
        }

        fn failed(&self, source: dps::Error) -> Error {
            Error::Dps { connection: "ProvisioningService factory/dps".into(), source }
        }
    }

    /// A pass of a managed resource whose spec names the key Secret `device-1-keys`, holding
    /// `secret_keys` (missing when `None`), with the ownership its status `recorded` gives.
    fn pass(secret_keys: Option<Keys>, recorded: &EnrollmentStatus) -> Pass<'static, IndividualEnrollment> {
        let resolved = Resolved { keys: secret_keys, ..Default::default() };
        Pass {
            what: "individual enrollment",
            id: "device-1",
            host: HOST,
            connection: "dps",
            namespace: "factory",
            may_write: true,
            adopt: false,
            inputs_changed: false,
            ownership: ownership(recorded, HOST),
            material: Material {
                key_secret: Some("device-1-keys"),
                desired: record(resolved.keys.as_ref(), "thermostat"),
                digest: resolved.secrets_digest(&DIGEST_KEY),
                resolved,
            },
            digest_key: &DIGEST_KEY,
            known: Known::Unknown,
            certificate_sources: [None, None],
        }
    }

    fn owned() -> EnrollmentStatus {
        EnrollmentStatus { claimed: Some(true), claimed_host: Some(HOST.into()), ..Default::default() }
    }

    fn run<R>(future: impl std::future::Future<Output = R>) -> R {
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime").block_on(future)
    }

    #[test]
    fn a_new_enrollment_gets_new_keys_and_is_claimed_before_it_is_created() {
        let dps = Fake::default();
        let mut recorded = EnrollmentStatus::default();
        let mut pass = pass(None, &recorded);
        let (done, _) = run(converge(&dps, &mut pass, &mut recorded)).expect("created");
        assert_eq!(done, Done::Created { in_bulk: false });
        assert_eq!(dps.calls(), ["GET", "SECRET", "CLAIM", "CREATE"]);
        assert_eq!(pass.ownership, Ownership::Owned);
        let secret = dps.secret.borrow().clone().expect("a key Secret");
        assert_eq!(dps.dps_keys(), Some((secret.0.expose().into(), secret.1.expose().into())));
        assert_eq!(*dps.claims.borrow(), [HOST]);
        assert_eq!((recorded.create_pending, recorded.claimed_host.as_deref()), (Some(true), Some(HOST)));
        assert_eq!(
            recorded.secrets_digest, pass.material.digest,
            "the claim names the keys the create sends"
        );
    }

    #[test]
    fn an_enrollment_missing_from_the_snapshot_is_created_without_a_read() {
        let dps = Fake::default();
        let mut recorded = EnrollmentStatus::default();
        let mut pass = Pass { known: Known::Absent, ..pass(None, &recorded) };
        let (done, written) = run(converge(&dps, &mut pass, &mut recorded)).expect("created");
        assert_eq!(done, Done::Created { in_bulk: false });
        assert_eq!(dps.calls(), ["SECRET", "CLAIM", "CREATE"]);
        assert_eq!(written.and_then(|r| r.etag), None, "a bulk create learns no etag");
    }

    #[test]
    fn keys_made_for_a_create_that_found_an_enrollment_never_reach_dps() {
        // The snapshot was older than an enrollment another client created at the id.
        for adopt in [false, true] {
            let dps = Fake::holding(record(None, "thermostat"), keys("field"));
            let mut recorded = EnrollmentStatus::default();
            let mut pass = Pass { known: Known::Absent, adopt, ..pass(None, &recorded) };
            let result = run(converge(&dps, &mut pass, &mut recorded));
            assert_eq!(
                dps.dps_keys(),
                Some(("field-primary".into(), "field-secondary".into())),
                "adopt: {adopt}"
            );
            if adopt {
                assert_eq!(result.expect("adopted").0, Done::Adopted { written: false });
                assert_eq!(
                    dps.calls(),
                    ["SECRET", "CLAIM", "CREATE", "DISCARD", "GET", "KEYS", "SECRET", "CLAIM"]
                );
                let secret = dps.secret.borrow().clone().expect("the keys DPS holds");
                assert_eq!(secret.0.expose(), "field-primary");
            } else {
                let error = result.expect_err("not ours");
                assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
                assert_eq!(dps.calls(), ["SECRET", "CLAIM", "CREATE", "DISCARD", "GET", "RELEASE"]);
                assert!(dps.secret.borrow().is_none(), "the new keys are gone");
                assert_eq!((recorded.create_pending, recorded.claimed_host.as_deref()), (None, None));
            }
        }
    }

    #[test]
    fn a_create_whose_answer_was_lost_is_recognised_by_its_content_and_keys() {
        let dps = Fake::default().with_puts([PutAnswer::Lost]);
        let mut recorded = EnrollmentStatus::default();
        let mut first = pass(None, &recorded);
        let error = run(converge(&dps, &mut first, &mut recorded)).expect_err("the answer is lost");
        assert!(matches!(error, Error::Dps { source: dps::Error::Timeout { .. }, .. }), "{error}");
        assert_eq!(recorded.create_pending, Some(true));

        // The next pass reads the Secret the first one created.
        let secret = dps.secret.borrow().clone();
        dps.calls.borrow_mut().clear();
        let mut next = pass(secret, &recorded);
        assert_eq!(next.ownership, Ownership::CreatePending);
        let (done, _) = run(converge(&dps, &mut next, &mut recorded)).expect("in sync");
        assert_eq!(done, Done::InSync);
        assert_eq!(dps.calls(), ["GET", "KEYS"], "confirmed without writing again");
        assert_eq!(next.ownership, Ownership::Owned);
    }

    #[test]
    fn a_pending_create_never_takes_what_another_client_put_at_the_id() {
        let cases = [
            ("other content", record(None, "someone-else"), keys("ours")),
            ("the same content with other keys", record(None, "thermostat"), keys("theirs")),
        ];
        for (case, found, their_keys) in cases {
            let dps = Fake::holding(found, their_keys.clone());
            let mut recorded = EnrollmentStatus {
                create_pending: Some(true),
                claimed_host: Some(HOST.into()),
                ..Default::default()
            };
            let mut pass = pass(Some(keys("ours")), &recorded);
            let error = run(converge(&dps, &mut pass, &mut recorded)).expect_err(case);
            assert!(matches!(error, Error::AlreadyExists { .. }), "{case}: {error}");
            assert_eq!(dps.calls(), ["GET", "KEYS", "RELEASE"], "{case}");
            assert_eq!((recorded.create_pending, recorded.claimed_host.as_deref()), (None, None), "{case}");
            let held = their_keys.0.expose().to_owned();
            assert_eq!(dps.dps_keys().map(|k| k.0), Some(held), "{case}: DPS keeps its keys");
        }
    }

    #[test]
    fn an_enrollment_created_by_another_client_meanwhile_is_read_again_and_not_overwritten() {
        let dps = Fake::default().with_puts([PutAnswer::Raced(Box::new(record(None, "someone-else")))]);
        let mut recorded = EnrollmentStatus::default();
        let mut pass = pass(Some(keys("ours")), &recorded);
        let error = run(converge(&dps, &mut pass, &mut recorded)).expect_err("not ours");
        assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
        assert_eq!(dps.calls(), ["GET", "CLAIM", "CREATE", "GET", "KEYS", "RELEASE"]);
        assert_eq!(
            dps.record.borrow().as_ref().and_then(|r| r.device_id.clone()).as_deref(),
            Some("someone-else")
        );
        assert_eq!(dps.dps_keys(), Some(("raced-primary".into(), "raced-secondary".into())));
    }

    #[test]
    fn an_update_refused_for_a_stale_etag_is_read_again_and_retried_with_the_new_one() {
        let dps = Fake::holding(record(None, "old-name"), keys("ours"))
            .with_puts([PutAnswer::Raced(Box::new(record(None, "older-name")))]);
        let mut recorded = owned();
        let mut pass = pass(Some(keys("ours")), &recorded);
        let (done, written) = run(converge(&dps, &mut pass, &mut recorded)).expect("updated");
        assert!(matches!(done, Done::Updated { ref drift, .. } if drift.contains(&"deviceId")), "{done:?}");
        assert_eq!(dps.calls(), ["GET", "PUT", "GET", "PUT"]);
        assert_eq!(written.and_then(|r| r.device_id).as_deref(), Some("thermostat"));
    }

    #[test]
    fn an_enrollment_changed_at_every_attempt_gives_up_after_three_writes() {
        let raced = (0..3).map(|i| PutAnswer::Raced(Box::new(record(None, &format!("name-{i}")))));
        let dps = Fake::holding(record(None, "old-name"), keys("ours")).with_puts(raced);
        let mut recorded = owned();
        let mut pass = pass(Some(keys("ours")), &recorded);
        let error = run(converge(&dps, &mut pass, &mut recorded)).expect_err("gives up");
        assert!(matches!(error, Error::Dps { source: dps::Error::PreconditionFailed { .. }, .. }), "{error}");
        assert_eq!(dps.calls().iter().filter(|c| **c == "PUT").count(), ATTEMPTS as usize);
    }

    #[test]
    fn adoption_with_a_missing_key_secret_keeps_the_keys_devices_use() {
        let dps = Fake::holding(record(None, "thermostat"), keys("field"));
        let mut recorded = EnrollmentStatus::default();
        let mut pass = Pass { adopt: true, ..pass(None, &recorded) };
        let (done, _) = run(converge(&dps, &mut pass, &mut recorded)).expect("adopted");
        assert_eq!(done, Done::Adopted { written: false }, "it already matched: nothing to write");
        assert_eq!(dps.calls(), ["GET", "KEYS", "SECRET", "CLAIM"]);
        let secret = dps.secret.borrow().clone().expect("a key Secret");
        assert_eq!(secret.0.expose(), "field-primary");
        assert_eq!(dps.dps_keys(), Some(("field-primary".into(), "field-secondary".into())));
        assert_eq!((recorded.claimed, recorded.claimed_host.as_deref()), (Some(true), Some(HOST)));
    }

    #[test]
    fn adoption_checks_the_keys_of_an_existing_secret_and_never_replaces_them() {
        let dps = Fake::holding(record(None, "thermostat"), keys("field"));
        let mut recorded = EnrollmentStatus::default();
        let mut same = Pass { adopt: true, ..pass(Some(keys("field")), &recorded) };
        let (done, _) = run(converge(&dps, &mut same, &mut recorded)).expect("adopted");
        assert_eq!(done, Done::Adopted { written: false });
        assert_eq!(dps.calls(), ["GET", "KEYS", "CLAIM"]);
        assert_eq!(recorded.claimed, Some(true));

        let dps = Fake::holding(record(None, "thermostat"), keys("field"));
        let mut recorded = EnrollmentStatus::default();
        let mut other = Pass { adopt: true, ..pass(Some(keys("other")), &recorded) };
        let error = run(converge(&dps, &mut other, &mut recorded)).expect_err("refused");
        assert_eq!(error.reason(), "CredentialsDiffer");
        assert!(error.to_string().contains("Secret factory/device-1-keys holds other keys"), "{error}");
        assert_eq!(dps.calls(), ["GET", "KEYS"], "nothing written");
        assert_eq!(recorded.claimed, None);
    }

    #[test]
    fn adoption_with_other_settings_writes_them_once_keeping_the_keys() {
        let dps = Fake::holding(record(None, "boiler"), keys("field"));
        let mut recorded = EnrollmentStatus::default();
        let mut pass = Pass { adopt: true, ..pass(Some(keys("field")), &recorded) };
        let (done, _) = run(converge(&dps, &mut pass, &mut recorded)).expect("adopted");
        assert_eq!(done, Done::Adopted { written: true });
        assert_eq!(dps.calls(), ["GET", "KEYS", "CLAIM", "PUT"]);
        assert_eq!(dps.dps_keys(), Some(("field-primary".into(), "field-secondary".into())));
    }

    #[test]
    fn adoption_whose_keys_cannot_be_read_writes_nothing() {
        let dps = Fake { keys_forbidden: true, ..Fake::holding(record(None, "thermostat"), keys("field")) };
        let mut recorded = EnrollmentStatus::default();
        let mut pass = Pass { adopt: true, ..pass(None, &recorded) };
        let error = run(converge(&dps, &mut pass, &mut recorded)).expect_err("refused");
        assert!(matches!(error, Error::KeysUnreadable { .. }), "{error}");
        assert_eq!(error.reason(), "KeysUnreadable");
        assert_eq!(dps.calls(), ["GET", "KEYS"]);
        assert!(dps.secret.borrow().is_none());
    }

    #[test]
    fn an_enrollment_neither_ours_nor_to_adopt_is_refused_without_any_write() {
        for secret_keys in [None, Some(keys("ours"))] {
            let dps = Fake::holding(record(None, "thermostat"), keys("field"));
            let mut recorded = EnrollmentStatus::default();
            let mut pass = pass(secret_keys.clone(), &recorded);
            let error = run(converge(&dps, &mut pass, &mut recorded)).expect_err("refused");
            assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
            assert_eq!(dps.calls(), ["GET", "RELEASE"], "Secret given: {}", secret_keys.is_some());
            assert!(dps.secret.borrow().is_none());
        }
    }

    #[test]
    fn an_observe_only_resource_reports_and_writes_nothing() {
        let dps = Fake::default();
        let mut recorded = EnrollmentStatus::default();
        let mut pass = Pass { may_write: false, ..pass(None, &recorded) };
        let (done, _) = run(converge(&dps, &mut pass, &mut recorded)).expect("reported");
        assert_eq!(done, Done::Reported { drift: Vec::new(), missing: true });
        assert_eq!(dps.calls(), ["GET"]);
    }

    #[test]
    fn a_failed_create_leaves_a_pending_claim_not_ownership() {
        let unavailable = dps::Error::Server { operation: "PUT".into(), status: 503, details: details() };
        let dps = Fake::default().with_puts([PutAnswer::Fail(unavailable)]);
        let mut recorded = EnrollmentStatus::default();
        let mut pass = pass(Some(keys("ours")), &recorded);
        let error = run(converge(&dps, &mut pass, &mut recorded)).expect_err("503");
        assert_eq!(error.retry(), crate::controller::Retry::Backoff);
        assert_eq!(pass.ownership, Ownership::CreatePending);
        assert_eq!((recorded.claimed, recorded.create_pending), (None, Some(true)));

        // Someone else then creates the id: the pending claim does not make it ours.
        dps.store(record(None, "someone-else"), Some(keys("theirs")));
        let mut next = self::pass(Some(keys("ours")), &recorded);
        let error = run(converge(&dps, &mut next, &mut recorded)).expect_err("not ours");
        assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
        assert_eq!(dps.dps_keys(), Some(("theirs-primary".into(), "theirs-secondary".into())));
    }

    #[test]
    fn its_own_write_whose_answer_was_lost_is_never_taken_for_a_change_outside() {
        let dps = Fake::holding(record(None, "old-name"), keys("ours")).with_puts([PutAnswer::Lost]);
        let mut recorded = EnrollmentStatus { etag: Some("etag-1".into()), ..owned() };
        let mut first = pass(Some(keys("ours")), &recorded);
        recorded.secrets_digest = first.material.digest.clone();
        first.inputs_changed = true;
        run(converge(&dps, &mut first, &mut recorded)).expect_err("the answer is lost");
        assert_eq!(recorded.etag.as_deref(), Some("etag-1"), "the etag it knows is stale now");

        // The spec changed again; its pass failed before writing, so the status already shows
        // the new generation: this pass sees no change of its inputs.
        let mut next = pass(Some(keys("ours")), &recorded);
        next.material.desired = record(Some(&keys("ours")), "boiler");
        let (done, _) = run(converge(&dps, &mut next, &mut recorded)).expect("updated");
        assert_eq!(done, Done::Updated { drift: vec!["deviceId"], inputs_changed: false, outside: false });

        // Someone else changes it: that is outside.
        dps.store(record(None, "intruder"), Some(keys("ours")));
        let mut outside = pass(Some(keys("ours")), &recorded);
        outside.material.desired = record(Some(&keys("ours")), "boiler");
        let (done, _) = run(converge(&dps, &mut outside, &mut recorded)).expect("restored");
        assert_eq!(done, Done::Updated { drift: vec!["deviceId"], inputs_changed: false, outside: true });
    }

    #[test]
    fn a_lost_create_is_recognised_by_what_was_sent_even_after_the_spec_changed() {
        let dps = Fake::default().with_puts([PutAnswer::Lost]);
        let mut recorded = EnrollmentStatus::default();
        let mut first = pass(Some(keys("ours")), &recorded);
        run(converge(&dps, &mut first, &mut recorded)).expect_err("the answer is lost");

        let mut next = pass(Some(keys("ours")), &recorded);
        next.material.desired = record(Some(&keys("ours")), "boiler");
        next.inputs_changed = true;
        let (done, _) = run(converge(&dps, &mut next, &mut recorded)).expect("updated");
        assert_eq!(next.ownership, Ownership::Owned);
        assert!(matches!(done, Done::Updated { outside: false, .. }), "{done:?}");
        assert_eq!(dps.calls(), ["GET", "CLAIM", "CREATE", "GET", "KEYS", "PUT"]);
    }

    #[test]
    fn the_content_digest_is_the_same_for_what_was_sent_and_what_dps_echoes() {
        use serde_json::json;
        let twin = |value: serde_json::Value| serde_json::from_value(value).unwrap();
        let mut sent = record(None, "thermostat").comparable();
        sent.iot_hubs = vec!["Contoso-West.azure-devices.net".into()];
        sent.initial_twin = Some(twin(json!({"tags": {"b": 1, "a": {"y": 2, "x": 1}}})));
        sent.custom_allocation =
            Some(("2021-10-01".into(), Some("https://hook.example/?code=secret".into())));
        let mut echoed = sent.clone();
        echoed.iot_hubs = vec!["contoso-west.azure-devices.net".into()];
        echoed.initial_twin = Some(twin(json!({"tags": {"a": {"x": 1, "y": 2}, "b": 1}})));
        echoed.custom_allocation = Some(("2021-10-01".into(), None));
        assert_eq!(sent.content_digest(&DIGEST_KEY), echoed.content_digest(&DIGEST_KEY));
        echoed.device_id = Some("other".into());
        assert_ne!(sent.content_digest(&DIGEST_KEY), echoed.content_digest(&DIGEST_KEY));
    }
}
