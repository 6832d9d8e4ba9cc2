//! A set pass's writes to DPS: creates, updates and deletes in bulk calls of ten, a few calls at
//! a time (the connection's rate limiter sets the pace), each item's failure kept by its id.

use futures::{StreamExt, stream};

use crate::{
    api::MemberFailure,
    controller::{connection::Connection, describe},
    dps::{
        MAX_BULK_ITEMS,
        models::{AttestationMechanism, AttestationType, BulkMode, IndividualEnrollment},
    },
};

/// Bulk calls in flight at once per pass.
const CALLS_AT_ONCE: usize = 4;

/// What to write.
#[derive(Default)]
pub struct Writes {
    pub creates: Vec<IndividualEnrollment>,
    /// Updates whose etag the index knows (`updateIfMatchETag`), and those it does not
    /// (enrollments this set wrote in bulk since the last query; bulk answers carry no etags):
    /// their etags are read first, since DPS's bulk `update` of an item without one is a create,
    /// refused for an item that exists.
    pub updates: Vec<IndividualEnrollment>,
    pub blind_updates: Vec<IndividualEnrollment>,
    /// Ids of this set's enrollments to delete, with the attestation type DPS wants named.
    pub deletes: Vec<Box<str>>,
    pub attestation: Option<AttestationType>,
}

impl Writes {
    /// How many enrollments are to be written.
    pub fn count(&self) -> usize {
        self.creates.len() + self.updates.len() + self.blind_updates.len() + self.deletes.len()
    }
}

/// What came of the writes.
#[derive(Debug, Default)]
pub struct Written {
    /// Ids (as written) created or updated.
    pub written: Vec<String>,
    pub deleted: Vec<Box<str>>,
    pub failures: Vec<MemberFailure>,
    pub delete_failures: Vec<MemberFailure>,
    /// DPS held something other than the index said (a create found an id, an etag had
    /// changed): the index is to be read again.
    pub stale: bool,
}

/// Makes the writes; never fails as a whole, each failed item is reported by id.
pub async fn run(connection: &Connection, mut writes: Writes) -> Written {
    let mut written = Written::default();
    let blind = std::mem::take(&mut writes.blind_updates);
    read_etags(connection, blind, &mut writes.updates, &mut written).await;
    let attestation = writes.attestation.unwrap_or(AttestationType::SymmetricKey);
    let deletes: Vec<IndividualEnrollment> = writes
        .deletes
        .iter()
        .map(|id| IndividualEnrollment {
            registration_id: id.to_string(),
            attestation: AttestationMechanism { type_: attestation, ..Default::default() },
            ..Default::default()
        })
        .collect();
    let batches = [
        (BulkMode::Create, writes.creates),
        (BulkMode::UpdateIfMatchETag, writes.updates),
        (BulkMode::Delete, deletes),
    ];
    let calls = batches.into_iter().flat_map(|(mode, items)| {
        let mut chunks = Vec::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push((mode, items.by_ref().take(MAX_BULK_ITEMS).collect::<Vec<_>>()));
        }
        chunks
    });
    let answers = stream::iter(calls)
        .map(|(mode, chunk)| async move {
            let answer = connection.client.bulk(mode, &chunk).await;
            (mode, chunk, answer)
        })
        .buffer_unordered(CALLS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    for (mode, chunk, answer) in answers {
        let failed: Vec<(String, String, String)> = match answer {
            Ok(result) => result
                .errors
                .into_iter()
                .map(|e| (e.registration_id, item_reason(e.error_code).to_owned(), e.error_status))
                .collect(),
            Err(error) => {
                let reason = error.reason().to_owned();
                let message = describe(&connection.dps_error(error));
                chunk
                    .iter()
                    .map(|item| (item.registration_id.clone(), reason.clone(), message.clone()))
                    .collect()
            }
        };
        written.count(mode, chunk, failed);
    }
    written
}

/// Reads the etag of each of `blind` (enrollments written since the last query) into `updates`.
async fn read_etags(
    connection: &Connection,
    blind: Vec<IndividualEnrollment>,
    updates: &mut Vec<IndividualEnrollment>,
    written: &mut Written,
) {
    let read = stream::iter(blind)
        .map(|record| async move {
            let found = connection.client.get::<IndividualEnrollment>(&record.registration_id).await;
            (record, found)
        })
        .buffer_unordered(CALLS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    for (record, found) in read {
        match found {
            Ok(found) => updates.push(IndividualEnrollment { etag: found.etag, ..record }),
            Err(error) => {
                written.stale = true;
                let error = describe(&connection.dps_error(error));
                written.failures.push(MemberFailure {
                    registration_id: record.registration_id,
                    reason: "DpsError".into(),
                    message: format!("reading it before the update failed: {error}"),
                });
            }
        }
    }
}

impl Written {
    /// Counts one bulk call's items: `failed` (id, reason, message) and the rest done.
    fn count(
        &mut self,
        mode: BulkMode,
        chunk: Vec<IndividualEnrollment>,
        failed: Vec<(String, String, String)>,
    ) {
        let is_failed = |id: &str| failed.iter().any(|(failed, ..)| failed.eq_ignore_ascii_case(id));
        for item in chunk.into_iter().filter(|item| !is_failed(&item.registration_id)) {
            match mode {
                BulkMode::Delete => self.deleted.push(item.registration_id.into_boxed_str()),
                _ => self.written.push(item.registration_id),
            }
        }
        for (id, reason, message) in failed {
            // A 404 deleting is no failure: the enrollment is gone either way.
            if mode == BulkMode::Delete && reason == "NotFound" {
                self.deleted.push(id.into_boxed_str());
                continue;
            }
            self.stale |= matches!(reason.as_str(), "AlreadyExists" | "PreconditionFailed" | "NotFound");
            let message = format!("DPS refused to {} it: {message}", verb(mode));
            let failure = MemberFailure { registration_id: id, reason, message };
            match mode {
                BulkMode::Delete => self.delete_failures.push(failure),
                _ => self.failures.push(failure),
            }
        }
    }
}

fn verb(mode: BulkMode) -> &'static str {
    match mode {
        BulkMode::Create => "create",
        BulkMode::Update | BulkMode::UpdateIfMatchETag => "update",
        BulkMode::Delete => "delete",
    }
}

/// The reason of a failed bulk item, by the HTTP status its six-digit DPS error code begins with.
fn item_reason(code: i32) -> &'static str {
    match code / 1000 {
        400 => "InvalidEnrollment",
        401 | 403 => "Unauthorized",
        404 => "NotFound",
        409 => "AlreadyExists",
        412 => "PreconditionFailed",
        429 => "Throttled",
        _ => "DpsError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_errors_are_named_by_the_status_their_code_begins_with() {
        assert_eq!(item_reason(409201), "AlreadyExists");
        assert_eq!(item_reason(412002), "PreconditionFailed");
        assert_eq!(item_reason(400004), "InvalidEnrollment");
        assert_eq!(item_reason(500000), "DpsError");
    }
}
