//! The enrollment finalizer and the claim annotation. A new enrollment's first write to its own
//! object holds both, just before the create it prepares: one write where a finalizer first and a
//! claim in the status after took two.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{
    Error,
    kinds::{EnrollmentKind, api_of},
    memory::Memories,
    names::{object_key, resource_name},
};
use crate::api::{CLAIM_ANNOTATION, PAUSED_ANNOTATION, ROTATE_KEYS_ANNOTATION};

/// The finalizer that holds a resource until its enrollment is removed from DPS.
pub const FINALIZER: &str = "dps.iot.dev/cleanup";

/// What a write of an object's metadata changes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MetadataChange<'a> {
    pub add_finalizer: bool,
    /// `Some(Some(value))` sets the claim annotation, `Some(None)` removes it.
    pub claim: Option<Option<&'a str>>,
}

pub fn has_finalizer(meta: &ObjectMeta) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == FINALIZER)
}

pub fn claim_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref()?.get(CLAIM_ANNOTATION).map(String::as_str)
}

/// The JSON patch of `change` on metadata read as `meta`. Each operation is guarded by a test of
/// what it changes, so that another writer's change to the same list or map fails the patch
/// instead of being overwritten. Empty when nothing changes.
///
/// `meta` may come from the watch cache, which drops annotations the operator never reads (the
/// copy of the manifest `kubectl apply` keeps): a map left empty by that still exists on the live
/// object, so only a missing map is tested for `null`.
pub fn metadata_patch(meta: &ObjectMeta, change: MetadataChange) -> Vec<Value> {
    let mut patch = Vec::new();
    if change.add_finalizer && !has_finalizer(meta) {
        match meta.finalizers.as_ref().filter(|f| !f.is_empty()) {
            None => patch.extend([
                json!({"op": "test", "path": "/metadata/finalizers", "value": null}),
                json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}),
            ]),
            Some(finalizers) => patch.extend([
                json!({"op": "test", "path": "/metadata/finalizers", "value": finalizers}),
                json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}),
            ]),
        }
    }
    // `/` in a JSON pointer is written `~1`.
    let annotation = format!("/metadata/annotations/{}", CLAIM_ANNOTATION.replace('/', "~1"));
    match (change.claim, claim_of(meta)) {
        (Some(Some(value)), held) if held != Some(value) => match &meta.annotations {
            None => patch.extend([
                json!({"op": "test", "path": "/metadata/annotations", "value": null}),
                json!({"op": "add", "path": "/metadata/annotations", "value": {CLAIM_ANNOTATION: value}}),
            ]),
            Some(_) => patch.push(json!({"op": "add", "path": annotation, "value": value})),
        },
        (Some(None), Some(held)) => patch.extend([
            json!({"op": "test", "path": annotation, "value": held}),
            json!({"op": "remove", "path": annotation}),
        ]),
        _ => {}
    }
    patch
}

/// `meta` once `change` is written to it.
pub fn changed(meta: &ObjectMeta, change: MetadataChange) -> ObjectMeta {
    let mut meta = meta.clone();
    if change.add_finalizer && !has_finalizer(&meta) {
        meta.finalizers.get_or_insert_default().push(FINALIZER.to_owned());
    }
    match change.claim {
        Some(Some(value)) => {
            meta.annotations.get_or_insert_default().insert(CLAIM_ANNOTATION.to_owned(), value.to_owned());
        }
        Some(None) => {
            meta.annotations.as_mut().map(|a| a.remove(CLAIM_ANNOTATION));
        }
        None => {}
    }
    meta
}

/// What of an object's metadata calls for a reconcile when it changes: a resource deleted and
/// created again under its name is another resource; its spec (generation); its deletion; the
/// paused and rotate-keys annotations; and the operator's own finalizers and claim, so that a write dropping them
/// (`kubectl replace`, an edit) has them restored at once.
pub fn trigger(meta: &ObjectMeta) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    meta.uid.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()).hash(&mut hasher);
    let annotation = |name| meta.annotations.as_ref().and_then(|a| a.get(name));
    annotation(PAUSED_ANNOTATION).hash(&mut hasher);
    annotation(ROTATE_KEYS_ANNOTATION).hash(&mut hasher);
    annotation(CLAIM_ANNOTATION).hash(&mut hasher);
    for finalizer in meta.finalizers.iter().flatten().filter(|f| f.starts_with("dps.iot.dev/")) {
        finalizer.hash(&mut hasher);
    }
    hasher.finish()
}

/// How many times a metadata write whose guard failed is read afresh and tried again.
const GUARD_RETRIES: usize = 3;

/// Writes `change` to the metadata of `object`, read as `meta`; answers the object written, or
/// `None` when nothing changes. A guard that fails (another writer came first, or the copy read
/// was stale) has the object read afresh and the write tried again at once.
pub async fn write_metadata<K>(
    client: &kube::Client,
    memory: &Memories,
    object: &K,
    meta: &ObjectMeta,
    change: MetadataChange<'_>,
) -> Result<Option<K>, kube::Error>
where
    K: EnrollmentKind,
{
    let api = api_of(client, object);
    let key = object_key(object);
    let mut meta = std::borrow::Cow::Borrowed(meta);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let patch = metadata_patch(&meta, change);
        if patch.is_empty() {
            return Ok(None);
        }
        // Its own write is no reason to reconcile again: the watch event it causes is expected.
        let previous = memory.expect_trigger(&key, Some(trigger(&changed(&meta, change))));
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch)).expect("a JSON patch");
        let error =
            match api.patch(&object.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await {
                Ok(written) => {
                    memory.wrote(&written);
                    return Ok(Some(written));
                }
                Err(error) => error,
            };
        memory.expect_trigger(&key, previous);
        let guard_failed = matches!(&error, kube::Error::Api(status) if status.code == 422);
        if !guard_failed || attempt == GUARD_RETRIES {
            return Err(error);
        }
        // Read afresh; one gone, replaced by another of the same name or being deleted (which
        // takes no new finalizer) is the caller's to handle.
        match api.get_opt(&object.name_any()).await? {
            Some(latest)
                if latest.meta().uid == object.meta().uid && latest.meta().deletion_timestamp.is_none() =>
            {
                meta = std::borrow::Cow::Owned(latest.meta().clone());
            }
            _ => return Err(error),
        }
    }
}

/// Removes the finalizer from `object`, read just before, once its cleanup is done.
pub async fn remove_finalizer<K>(client: &kube::Client, object: &K) -> Result<(), Error>
where
    K: EnrollmentKind,
{
    let finalizers = object.meta().finalizers.clone().unwrap_or_default();
    let Some(index) = finalizers.iter().position(|f| f == FINALIZER) else { return Ok(()) };
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .expect("a JSON patch");
    let api = api_of(client, object);
    match api.patch(&object.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await {
        Ok(_) => Ok(()),
        // Gone already: another pass removed the last finalizer.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => {
            Err(Error::kube(format!("removing the finalizer from {}", resource_name(object)), error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(finalizers: &[&str], annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            finalizers: (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect()),
            annotations: (!annotations.is_empty())
                .then(|| annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    /// `patch` applied to an object with metadata `meta`, as the API server applies it: there a
    /// missing member tests equal to null, which the json-patch crate needs spelt out.
    fn patched(meta: &ObjectMeta, patch: Vec<Value>) -> Result<Value, String> {
        let mut metadata = serde_json::to_value(meta).unwrap();
        for member in ["finalizers", "annotations"] {
            metadata.as_object_mut().unwrap().entry(member).or_insert(Value::Null);
        }
        let mut object = json!({ "metadata": metadata });
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch)).unwrap();
        json_patch::patch(&mut object, &patch).map_err(|e| e.to_string())?;
        Ok(object["metadata"].clone())
    }

    fn apply(meta: &ObjectMeta, change: MetadataChange) -> Result<Value, String> {
        patched(meta, metadata_patch(meta, change))
    }

    #[test]
    fn the_finalizer_and_the_claim_go_in_one_patch_that_keeps_what_others_wrote() {
        let claim = MetadataChange { add_finalizer: true, claim: Some(Some("uid@dps.example")) };
        let fresh = apply(&meta(&[], &[]), claim).unwrap();
        assert_eq!(fresh["finalizers"], json!([FINALIZER]));
        assert_eq!(fresh["annotations"], json!({CLAIM_ANNOTATION: "uid@dps.example"}));

        let others = meta(&["other/finalizer"], &[("team", "boilers")]);
        let kept = apply(&others, claim).unwrap();
        assert_eq!(kept["finalizers"], json!(["other/finalizer", FINALIZER]));
        assert_eq!(kept["annotations"], json!({"team": "boilers", CLAIM_ANNOTATION: "uid@dps.example"}));

        let done = meta(&[FINALIZER], &[(CLAIM_ANNOTATION, "uid@dps.example")]);
        assert!(metadata_patch(&done, claim).is_empty(), "nothing to write");
        let removed = apply(&done, MetadataChange { claim: Some(None), ..Default::default() }).unwrap();
        assert_eq!(removed["annotations"], json!({}));
        assert!(
            metadata_patch(&meta(&[], &[]), MetadataChange { claim: Some(None), ..Default::default() })
                .is_empty()
        );
    }

    #[test]
    fn a_patch_made_from_a_stale_read_fails_instead_of_overwriting() {
        let claim = MetadataChange { add_finalizer: true, claim: Some(Some("uid@dps.example")) };
        let read = meta(&[], &[]);
        // Meanwhile another controller added its finalizer, a user an annotation.
        let patch = metadata_patch(&read, claim);
        assert!(patched(&meta(&["other/finalizer"], &[]), patch.clone()).is_err());
        assert!(patched(&meta(&[], &[("team", "boilers")]), patch).is_err(), "the user's annotation is kept");
        let read = meta(&["other/finalizer"], &[]);
        let patch = metadata_patch(&read, claim);
        assert!(patched(&meta(&["other/finalizer", "third/finalizer"], &[]), patch.clone()).is_err());
        assert!(patched(&read, patch).is_ok());
    }
    /// The metadata the watch cache holds of an object whose live metadata is `live`.
    fn cached(live: &ObjectMeta) -> ObjectMeta {
        let mut object =
            k8s_openapi::api::core::v1::ConfigMap { metadata: live.clone(), ..Default::default() };
        crate::controller::watches::prune(&mut object);
        object.metadata
    }

    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

    #[test]
    fn the_claim_is_recorded_whatever_the_cache_pruned() {
        let claim = MetadataChange { add_finalizer: true, claim: Some(Some("uid@dps.example")) };
        let cases = [
            ("no annotations", meta(&[], &[])),
            ("only pruned annotations (kubectl apply)", meta(&[], &[(LAST_APPLIED, "{}")])),
            (
                "other annotations (Argo CD)",
                meta(&[], &[(LAST_APPLIED, "{}"), ("argocd.argoproj.io/tracking-id", "app:dps.iot.dev/x")]),
            ),
            (
                "another claim (copied with a manifest)",
                meta(&["other/finalizer"], &[(CLAIM_ANNOTATION, "other@dps.example")]),
            ),
        ];
        for (case, live) in cases {
            let written = patched(&live, metadata_patch(&cached(&live), claim))
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(written["annotations"][CLAIM_ANNOTATION], "uid@dps.example", "{case}");
            assert!(written["finalizers"].as_array().unwrap().contains(&json!(FINALIZER)), "{case}");
            for (name, value) in
                live.annotations.iter().flatten().filter(|(name, _)| *name != CLAIM_ANNOTATION)
            {
                assert_eq!(written["annotations"][name], json!(value), "{case}: {name} kept");
            }
        }
        let done = meta(&[FINALIZER], &[(LAST_APPLIED, "{}"), (CLAIM_ANNOTATION, "uid@dps.example")]);
        assert!(
            metadata_patch(&cached(&done), claim).is_empty(),
            "the claim already there: nothing to write"
        );
    }

    #[test]
    fn a_patch_from_a_copy_older_than_the_live_annotations_fails_rather_than_guesses() {
        let claim = MetadataChange { add_finalizer: false, claim: Some(Some("uid@dps.example")) };
        // Read with annotations; meanwhile `kubectl replace` wrote the object without any.
        let read = meta(&[], &[("team", "boilers")]);
        assert!(patched(&meta(&[], &[]), metadata_patch(&read, claim)).is_err());
        // Read without annotations; meanwhile someone added one.
        assert!(patched(&meta(&[], &[("team", "boilers")]), metadata_patch(&meta(&[], &[]), claim)).is_err());
    }

    #[test]
    fn the_trigger_changes_with_the_operators_own_finalizer_and_claim_and_nothing_else_of_theirs() {
        let base = meta(&[FINALIZER], &[(CLAIM_ANNOTATION, "uid@dps.example")]);
        let claim = MetadataChange { add_finalizer: true, claim: Some(Some("uid@dps.example")) };
        assert_eq!(
            trigger(&changed(&meta(&[], &[]), claim)),
            trigger(&base),
            "what a write leaves is expected"
        );
        assert_ne!(
            trigger(&meta(&[], &[(CLAIM_ANNOTATION, "uid@dps.example")])),
            trigger(&base),
            "finalizer dropped"
        );
        assert_ne!(trigger(&meta(&[FINALIZER], &[])), trigger(&base), "claim dropped");
        let others =
            meta(&[FINALIZER, "other/finalizer"], &[(CLAIM_ANNOTATION, "uid@dps.example"), ("team", "x")]);
        assert_eq!(trigger(&others), trigger(&base), "others' finalizers and annotations are no reason");
    }
}
