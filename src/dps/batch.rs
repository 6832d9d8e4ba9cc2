//! Creates gathered into bulk calls: DPS takes up to ten enrollments in one `create` bulk
//! operation, billed as one service operation, and that mode never overwrites an enrollment
//! that exists (it answers a per-item 409 instead).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, oneshot};

use super::{
    Client, Enrollment, Error, MAX_BULK_ITEMS,
    models::{BulkMode, EnrollmentGroup, IndividualEnrollment, ProvisioningServiceErrorDetails},
};

/// How long a create waits for others to share its bulk call, unless ten are waiting sooner.
pub const GATHER_WINDOW: Duration = Duration::from_millis(500);

/// The creates of one DPS client, gathered per kind.
pub struct Creates {
    enrollments: Batcher<IndividualEnrollment>,
    groups: Batcher<EnrollmentGroup>,
}

/// An enrollment kind whose creates can be gathered.
pub trait Batched: Enrollment + Clone {
    fn batcher(creates: &Creates) -> &Batcher<Self>;
}

impl Batched for IndividualEnrollment {
    fn batcher(creates: &Creates) -> &Batcher<Self> {
        &creates.enrollments
    }
}

impl Batched for EnrollmentGroup {
    fn batcher(creates: &Creates) -> &Batcher<Self> {
        &creates.groups
    }
}

impl Creates {
    pub fn new(client: Arc<Client>, window: Duration) -> Self {
        Self { enrollments: Batcher::new(client.clone(), window), groups: Batcher::new(client, window) }
    }

    /// Creates `item` in DPS with other creates waiting at the same time, in one bulk call.
    /// An item that exists already fails with [`Error::Conflict`]; nothing is overwritten.
    /// The answer holds no record (DPS's bulk answers carry none): the next query has its etag.
    pub async fn create<E: Batched>(&self, item: E) -> Result<(), Error> {
        E::batcher(self).create(item).await
    }
}

type Answer = Result<(), Error>;

pub struct Batcher<E> {
    client: Arc<Client>,
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
    fn new(client: Arc<Client>, window: Duration) -> Self {
        Self {
            client,
            window,
            state: Arc::new(Mutex::new(Waiting { items: Vec::new(), sending: false })),
            full: Arc::new(Notify::new()),
        }
    }

    async fn create(&self, item: E) -> Answer {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.items.push((item, answer));
            if state.items.len() >= MAX_BULK_ITEMS {
                self.full.notify_one();
            }
            !std::mem::replace(&mut state.sending, true)
        };
        // The sender runs on its own task, so a create whose caller gave up still gets sent and
        // answered to the others in its call.
        if start {
            tokio::spawn(send(self.client.clone(), self.window, self.state.clone(), self.full.clone()));
        }
        answered.await.unwrap_or_else(|_| Err(Error::Abandoned { operation: bulk_operation::<E>() }))
    }
}

/// Sends the waiting creates, ten at a time, until none wait.
async fn send<E: Batched>(
    client: Arc<Client>,
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
        match client.bulk(BulkMode::Create, &items).await {
            Ok(result) => {
                for (item, answer) in items.iter().zip(answers) {
                    let failed = result.errors.iter().find(|e| e.id().eq_ignore_ascii_case(item.id()));
                    let _ =
                        answer.send(failed.map_or(Ok(()), |failed| Err(item_error::<E>(item.id(), failed))));
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

fn bulk_operation<E: Enrollment>() -> String {
    format!("POST {} (bulk create)", E::COLLECTION)
}

/// The error of one item of a bulk call, as the single call would have failed: DPS's error codes
/// are the HTTP status followed by three digits (`409201`).
fn item_error<E: Enrollment>(id: &str, failed: &impl BulkItemError) -> Error {
    let code = failed.code();
    let details = ProvisioningServiceErrorDetails {
        error_code: Some(code),
        message: Some(failed.status().to_owned()),
        ..Default::default()
    };
    let status = u16::try_from(code / 1000).ok().filter(|s| (100..600).contains(s)).unwrap_or(500);
    Error::from_status(format!("bulk create {}/{id}", E::COLLECTION), status, None, details)
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
        let error = item_error::<IndividualEnrollment>("boiler", &exists);
        assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "bulk create enrollments/boiler: DPS already has this item: Enrollment already exists. (error 409201)"
        );
        let odd = BulkEnrollmentOperationError { error_code: 7, ..exists };
        assert_eq!(item_error::<IndividualEnrollment>("boiler", &odd).status(), Some(500));
    }
}
