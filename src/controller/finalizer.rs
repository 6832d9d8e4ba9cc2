//! The enrollment finalizer and the claim annotation. A new enrollment's first write to its own
//! object holds both, just before the create it prepares: one write where a finalizer first and a
//! claim in the status after took two.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{Error, context::Context, kinds::EnrollmentKind};
use crate::api::CLAIM_ANNOTATION;

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
    let annotations = meta.annotations.as_ref().filter(|a| !a.is_empty());
    match (change.claim, claim_of(meta)) {
        (Some(Some(value)), held) if held != Some(value) => match annotations {
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

/// Writes `change` to the metadata of `object`, read as `meta`; answers the object written, or
/// `None` when nothing changes.
pub async fn write_metadata<K>(
    ctx: &Context,
    object: &K,
    meta: &ObjectMeta,
    change: MetadataChange<'_>,
) -> Result<Option<K>, kube::Error>
where
    K: EnrollmentKind,
{
    let patch = metadata_patch(meta, change);
    if patch.is_empty() {
        return Ok(None);
    }
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch)).expect("a JSON patch");
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let written = api.patch(&object.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
    ctx.wrote(&written);
    Ok(Some(written))
}

/// Removes the finalizer from `object`, read just before, once its cleanup is done.
pub async fn remove_finalizer<K>(ctx: &Context, object: &K) -> Result<(), Error>
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
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    match api.patch(&object.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await {
        Ok(_) => Ok(()),
        // Gone already: another pass removed the last finalizer.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => {
            Err(Error::kube(format!("remove the finalizer of {}", super::context::object_key(object)), error))
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
}
