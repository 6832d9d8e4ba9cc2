//! Creates and deletes gathered into bulk calls: DPS takes up to ten enrollments in one bulk
//! operation, billed as one service operation. Its `create` mode never overwrites an enrollment
//! that exists (it answers a per-item 409 instead); its `delete` mode deletes whatever is at each
//! id, as an unconditional single DELETE does.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, oneshot};

use super::{
    Client, Enrollment, Error, MAX_BULK_ITEMS,
    models::{
        AttestationMechanism, AttestationType, BulkMode, EnrollmentGroup, IndividualEnrollment,
        ProvisioningServiceErrorDetails,
    },
};

/// How long a create or delete waits for others to share its bulk call, unless ten are waiting
/// sooner.
pub const GATHER_WINDOW: Duration = Duration::from_millis(500);

/// The bulk calls of one DPS client, gathered per kind and mode.
pub struct BulkCalls {
    enrollments: Modes<IndividualEnrollment>,
    groups: Modes<EnrollmentGroup>,
}

pub struct Modes<E> {
    create: Batcher<E>,
    delete: Batcher<E>,
}

/// An enrollment kind whose writes can be gathered.
pub trait Batched: Enrollment + Clone {
    fn modes(calls: &BulkCalls) -> &Modes<Self>;
    /// What a bulk delete sends for `id`: the id and the attestation type, as the SDKs send a
    /// deleted item (azure-sdk-for-python, recording
    /// `test_individual_enrollments.pyTestIndividualEnrollmentstest_individual_enrollment_bulk_operations.json`).
    fn to_delete(id: &str, attestation: AttestationType) -> Self;
}

fn attestation_of(type_: AttestationType) -> AttestationMechanism {
    AttestationMechanism { type_, ..Default::default() }
}

impl Batched for IndividualEnrollment {
    fn modes(calls: &BulkCalls) -> &Modes<Self> {
        &calls.enrollments
    }
    fn to_delete(id: &str, attestation: AttestationType) -> Self {
        Self {
            registration_id: id.to_owned(),
            attestation: attestation_of(attestation),
            ..Default::default()
        }
    }
}

impl Batched for EnrollmentGroup {
    fn modes(calls: &BulkCalls) -> &Modes<Self> {
        &calls.groups
    }
    fn to_delete(id: &str, attestation: AttestationType) -> Self {
        Self {
            enrollment_group_id: id.to_owned(),
            attestation: attestation_of(attestation),
            ..Default::default()
        }
    }
}

impl<E: Batched> Modes<E> {
    fn new(client: &Arc<Client>, window: Duration) -> Self {
        Self {
            create: Batcher::new(client.clone(), BulkMode::Create, window),
            delete: Batcher::new(client.clone(), BulkMode::Delete, window),
        }
    }
}

impl BulkCalls {
    pub fn new(client: Arc<Client>, window: Duration) -> Self {
        Self { enrollments: Modes::new(&client, window), groups: Modes::new(&client, window) }
    }

    /// Creates `item` in DPS with other creates waiting at the same time, in one bulk call.
    /// An item that exists already fails with [`Error::Conflict`]; nothing is overwritten.
    /// The answer holds no record (DPS's bulk answers carry none; the next query has its etag),
    /// only how many items the call carried.
    pub async fn create<E: Batched>(&self, item: E) -> Result<usize, Error> {
        E::modes(self).create.add(item).await
    }

    /// Deletes the enrollment `id` from DPS with other deletes waiting at the same time, in one
    /// bulk call, as an unconditional DELETE would: one that is gone already fails with
    /// [`Error::NotFound`].
    pub async fn delete<E: Batched>(&self, id: &str, attestation: AttestationType) -> Result<(), Error> {
        E::modes(self).delete.add(E::to_delete(id, attestation)).await.map(drop)
    }
}

/// One item's answer: how many items its call carried, or why it failed.
type Answer = Result<usize, Error>;

pub struct Batcher<E> {
    client: Arc<Client>,
    mode: BulkMode,
    window: Duration,
    state: Arc<Mutex<Waiting<E>>>,
    full: Arc<Notify>,
}

struct Waiting<E> {
    items: Vec<(E, oneshot::Sender<Answer>)>,
    /// Whether a task is gathering and sending the waiting items.
    sending: bool,
}

impl<E: Batched> Batcher<E> {
    fn new(client: Arc<Client>, mode: BulkMode, window: Duration) -> Self {
        Self {
            client,
            mode,
            window,
            state: Arc::new(Mutex::new(Waiting { items: Vec::new(), sending: false })),
            full: Arc::new(Notify::new()),
        }
    }

    async fn add(&self, item: E) -> Answer {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.items.push((item, answer));
            if state.items.len() >= MAX_BULK_ITEMS {
                self.full.notify_one();
            }
            !std::mem::replace(&mut state.sending, true)
        };
        // The sender runs on its own task, so an item whose caller gave up still gets sent and
        // answered to the others in its call.
        if start {
            let sender =
                send(self.client.clone(), self.mode, self.window, self.state.clone(), self.full.clone());
            tokio::spawn(sender);
        }
        answered.await.unwrap_or_else(|_| Err(Error::Abandoned { operation: bulk_operation::<E>(self.mode) }))
    }
}

/// Sends the waiting items, ten at a time, until none wait.
async fn send<E: Batched>(
    client: Arc<Client>,
    mode: BulkMode,
    window: Duration,
    state: Arc<Mutex<Waiting<E>>>,
    full: Arc<Notify>,
) {
    loop {
        let waiting = state.lock().unwrap_or_else(|e| e.into_inner()).items.len();
        if waiting < MAX_BULK_ITEMS {
            let _ = tokio::time::timeout(window, full.notified()).await;
        }
        let batch: Vec<_> = {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            if state.items.is_empty() {
                state.sending = false;
                return;
            }
            let take = state.items.len().min(MAX_BULK_ITEMS);
            state.items.drain(..take).collect()
        };
        let (items, answers): (Vec<E>, Vec<_>) = batch.into_iter().unzip();
        match client.bulk(mode, &items).await {
            Ok(result) => {
                for (item, answer) in items.iter().zip(answers) {
                    let failed = result.errors.iter().find(|e| e.id().eq_ignore_ascii_case(item.id()));
                    let _ = answer.send(
                        failed
                            .map_or(Ok(items.len()), |failed| Err(item_error::<E>(mode, item.id(), failed))),
                    );
                }
            }
            Err(error) => {
                let shared = Arc::new(error);
                for answer in answers {
                    let _ = answer.send(Err(Error::Shared(shared.clone())));
                }
            }
        }
    }
}

fn mode_name(mode: BulkMode) -> &'static str {
    match mode {
        BulkMode::Create => "create",
        BulkMode::Update => "update",
        BulkMode::UpdateIfMatchETag => "updateIfMatchETag",
        BulkMode::Delete => "delete",
    }
}

fn bulk_operation<E: Enrollment>(mode: BulkMode) -> String {
    format!("POST {} (bulk {})", E::COLLECTION, mode_name(mode))
}

/// The error of one item of a bulk call, as the single call would have failed: DPS's error codes
/// are the HTTP status followed by three digits (`409201`).
fn item_error<E: Enrollment>(mode: BulkMode, id: &str, failed: &impl BulkItemError) -> Error {
    let code = failed.code();
    let details = ProvisioningServiceErrorDetails {
        error_code: Some(code),
        message: Some(failed.status().to_owned()),
        ..Default::default()
    };
    let status = u16::try_from(code / 1000).ok().filter(|s| (100..600).contains(s)).unwrap_or(500);
    Error::from_status(format!("bulk {} {}/{id}", mode_name(mode), E::COLLECTION), status, None, details)
}

/// A per-item error of a bulk operation.
pub trait BulkItemError {
    fn id(&self) -> &str;
    fn code(&self) -> i32;
    fn status(&self) -> &str;
}

impl BulkItemError for super::models::BulkEnrollmentOperationError {
    fn id(&self) -> &str {
        &self.registration_id
    }
    fn code(&self) -> i32 {
        self.error_code
    }
    fn status(&self) -> &str {
        &self.error_status
    }
}

impl BulkItemError for super::models::BulkEnrollmentGroupOperationError {
    fn id(&self) -> &str {
        &self.enrollment_group_id
    }
    fn code(&self) -> i32 {
        self.error_code
    }
    fn status(&self) -> &str {
        &self.error_status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dps::models::BulkEnrollmentOperationError;

    #[test]
    fn a_per_item_error_fails_like_the_single_call_would() {
        let exists = BulkEnrollmentOperationError {
            registration_id: "boiler".into(),
            error_code: 409201,
            error_status: "Enrollment already exists.".into(),
        };
        let error = item_error::<IndividualEnrollment>(BulkMode::Create, "boiler", &exists);
        assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "bulk create enrollments/boiler: DPS already has this item: Enrollment already exists. (error 409201)"
        );
        let odd = BulkEnrollmentOperationError { error_code: 7, ..exists };
        assert_eq!(item_error::<IndividualEnrollment>(BulkMode::Create, "boiler", &odd).status(), Some(500));
        let gone = BulkEnrollmentOperationError { error_code: 404201, ..odd };
        let error = item_error::<IndividualEnrollment>(BulkMode::Delete, "boiler", &gone);
        assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
    }
}
