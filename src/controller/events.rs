//! Kubernetes events, grouped into series the way client-go's recorder groups them.
//!
//! kube's `Recorder` keys a series without its note, and the events API keeps a series' note
//! fixed, so a new message under an old reason showed the old text with a higher count.
//! client-go's `tools/events` keys on the note as well (`getKey` in `event_broadcaster.go`): the
//! same words again grow a series, new words start a new event.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};

/// How long a series stays open after it was last seen (client-go and kube use 6 minutes).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// The most of a note the events API takes.
const NOTE_LIMIT: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    warning: bool,
    reason: String,
    /// The object's uid, or its kind/namespace/name when it has none.
    regarding: String,
    note: String,
}

struct Open {
    name: String,
    namespace: String,
    count: i32,
    last_seen: Timestamp,
}

/// Where the reconcilers' events go: each on its own, or, for enrollments created in one bulk
/// call, together on their connection.
pub struct Events {
    recorder: Arc<Recorder>,
    bulk_creates: BulkCreates,
}

impl Events {
    /// `instance`: the operator's Pod, named as the events' reporting instance.
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let recorder = Arc::new(Recorder::new(client, "dps-operator", instance));
        Self { bulk_creates: BulkCreates::new(recorder.clone()), recorder }
    }

    /// Publishes an event about `object`; failures to publish are logged, never fatal.
    pub async fn publish<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        if let Err(error) = self.recorder.publish(&object.object_ref(&()), warning, reason, note).await {
            tracing::warn!(error = super::error::kube_failure(&error), reason, "could not publish an event");
        }
    }

    /// Announces, with the others created in bulk on the connection `regarding` about the same
    /// time, that `what` `id` was created in DPS at `host`.
    pub fn announce_bulk_create(
        &self,
        regarding: &ObjectReference,
        what: &'static str,
        host: &str,
        id: &str,
    ) {
        self.bulk_creates.add(regarding, what, host, id);
    }
}

struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    series: Mutex<HashMap<SeriesKey, Open>>,
}

impl Recorder {
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            series: Mutex::default(),
        }
    }

    /// Publishes an event about `regarding`: a new event, or one more of a series with the same
    /// type, reason and note. Cluster-scoped objects get their events in `default`.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let note = truncate(note, NOTE_LIMIT);
        let key = SeriesKey {
            warning,
            reason: reason.to_owned(),
            regarding: regarding.uid.clone().unwrap_or_else(|| {
                let field = |f: &Option<String>| f.clone().unwrap_or_default();
                format!(
                    "{}/{}/{}",
                    field(&regarding.kind),
                    field(&regarding.namespace),
                    field(&regarding.name)
                )
            }),
            note,
        };
        let now = Timestamp::now();
        // The lock is never held across a call: every reconcile publishes through this recorder.
        let open = {
            let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            series.retain(|_, open| open.last_seen + SERIES_TTL > now);
            series.get_mut(&key).map(|open| {
                open.count += 1;
                open.last_seen = now;
                (open.name.clone(), open.namespace.clone(), open.count)
            })
        };
        if let Some((name, namespace, count)) = open {
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            return Ok(());
        }
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            action: Some(reason.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(key.note.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = events.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        let open = Open { name, namespace, count: 1, last_seen: now };
        self.series.lock().unwrap_or_else(|e| e.into_inner()).insert(key, open);
        Ok(())
    }
}

/// How long the creates made in bulk on one connection are gathered into one event.
pub const ANNOUNCE_WINDOW: Duration = Duration::from_secs(10);

/// How many ids an announcement lists.
const LISTED: usize = 20;

/// Enrollments created in bulk calls, announced together: one `Created` event on their
/// connection for each kind's creates within [`ANNOUNCE_WINDOW`], rather than one per
/// enrollment. A wave of 10,000 new enrollments would otherwise write 10,000 events, one more
/// API server write each; an enrollment created alone still gets its own event.
struct BulkCreates {
    recorder: Arc<Recorder>,
    waiting: Arc<Mutex<HashMap<String, Tally>>>,
}

struct Tally {
    regarding: ObjectReference,
    what: &'static str,
    host: String,
    ids: Vec<String>,
    count: usize,
}

impl BulkCreates {
    pub fn new(recorder: Arc<Recorder>) -> Self {
        Self { recorder, waiting: Arc::default() }
    }

    /// Counts the create of `what` `id` in DPS at `host`, made in a bulk call on the connection
    /// `regarding`; the first of a window schedules the event.
    pub fn add(&self, regarding: &ObjectReference, what: &'static str, host: &str, id: &str) {
        let key = format!("{}|{}|{what}", regarding.uid.as_deref().unwrap_or_default(), host);
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let tally = waiting.entry(key.clone()).or_insert_with(|| {
            let (recorder, waiting) = (self.recorder.clone(), self.waiting.clone());
            tokio::spawn(async move {
                tokio::time::sleep(ANNOUNCE_WINDOW).await;
                let tally = waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                if let Some(tally) = tally {
                    let note = announcement(tally.what, &tally.host, &tally.ids, tally.count);
                    if let Err(error) = recorder.publish(&tally.regarding, false, "Created", note).await {
                        tracing::warn!(
                            error = super::error::kube_failure(&error),
                            "could not publish an event"
                        );
                    }
                }
            });
            Tally { regarding: regarding.clone(), what, host: host.to_owned(), ids: Vec::new(), count: 0 }
        });
        tally.count += 1;
        if tally.ids.len() < LISTED {
            tally.ids.push(id.to_owned());
        }
    }
}

/// The note announcing `count` creates of `what`, listing `ids` (the first of them).
fn announcement(what: &str, host: &str, ids: &[String], count: usize) -> String {
    let more = count.saturating_sub(ids.len());
    let listed = ids.join(", ");
    let tail = if more > 0 { format!("{listed} and {more} more") } else { listed };
    let plural = if count == 1 { "" } else { "s" };
    format!("Created {count} {what}{plural} in DPS at {host} in bulk calls: {tail}.")
}

/// Cuts `text` to at most `limit` bytes on a character boundary, marking the cut with `…`.
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{NOTE_LIMIT, announcement, truncate};

    #[test]
    fn an_announcement_counts_every_create_and_lists_the_first() {
        let ids: Vec<String> = ["boiler-1", "boiler-2"].map(str::to_owned).into();
        assert_eq!(
            announcement("individual enrollment", "dps.example", &ids, 2),
            "Created 2 individual enrollments in DPS at dps.example in bulk calls: boiler-1, boiler-2."
        );
        assert_eq!(
            announcement("enrollment group", "dps.example", &ids, 143),
            "Created 143 enrollment groups in DPS at dps.example in bulk calls: boiler-1, boiler-2 and 141 more."
        );
    }

    #[test]
    fn truncation_keeps_whole_characters_within_the_limit() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("é".repeat(600), NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT && cut.ends_with('…'), "{}", cut.len());
    }
}
