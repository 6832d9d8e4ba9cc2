//! The set controller: its watch, and the changes that call for a pass: a Secret or ConfigMap a
//! set reads, and its connection.

use std::sync::Arc;

use futures::{FutureExt, StreamExt, future::BoxFuture};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use k8s_openapi::api::core::v1::ConfigMap;

use crate::{
    api::{IndividualEnrollmentSet, ProvisioningService, ServiceKind},
    controller::{
        Error,
        context::Context,
        finalizer::trigger,
        names::object_key,
        run::scoped,
        watches::{Changes, SecretMetadata, prune},
    },
};

/// The set controller for `namespace` (`None`: all), triggered by `secrets` and `services`
/// changes besides its own: answers when its store has listed everything once, and the
/// controller, running until shutdown.
pub fn controller(
    client: &Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    secrets: Changes<SecretMetadata>,
    services: Changes<ProvisioningService>,
) -> (BoxFuture<'static, ()>, BoxFuture<'static, ()>) {
    let sets: Api<IndividualEnrollmentSet> = scoped(client, namespace);
    let mut config = watcher::Config::default();
    if let Some(selector) = &ctx.config.watch_label_selector {
        config = config.labels(selector);
    }
    // Status writes and other metadata do not call for a pass; the spec, the deletion and the
    // annotations the operator reads do.
    let (store, writer) = reflector::store();
    let events = watcher(sets, config).modify(prune::<IndividualEnrollmentSet>).default_backoff();
    let changes = reflector(writer, events)
        .applied_objects()
        .predicate_filter(|s: &IndividualEnrollmentSet| Some(trigger(s.meta())), Default::default());
    let controller = Controller::for_stream(changes, store.clone());
    let (synced, by_secret, by_map, by_service) = (store.clone(), store.clone(), store.clone(), store);
    let config_maps =
        watcher(scoped::<PartialObjectMeta<ConfigMap>>(client, namespace), watcher::Config::default())
            .modify(prune::<PartialObjectMeta<ConfigMap>>)
            .default_backoff()
            .touched_objects();
    let running = controller
        .watches_stream(secrets, move |secret| {
            reading(&by_secret, secret.namespace(), &secret.name_any(), false)
        })
        .watches_stream(config_maps, move |map| reading(&by_map, map.namespace(), &map.name_any(), true))
        .watches_stream(services, move |service| {
            let same = |s: &IndividualEnrollmentSet| {
                s.namespace() == service.namespace()
                    && s.spec.service_ref.kind.unwrap_or_default() == ServiceKind::ProvisioningService
                    && s.spec.service_ref.name == service.name_any()
            };
            matching(&by_service, same)
        })
        .with_config(controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles))
        .graceful_shutdown_on(ctx.health.stopped())
        .run(super::reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    let synced = async move {
        while tokio::time::timeout(std::time::Duration::from_millis(250), synced.wait_until_ready())
            .await
            .is_err()
        {}
    };
    (synced.boxed(), running.boxed())
}

/// A pass failed before its status could be written; it runs again after a while.
fn error_policy(set: Arc<IndividualEnrollmentSet>, error: &Error, _: Arc<Context>) -> controller::Action {
    tracing::warn!(object = %object_key(&*set), %error, "reconcile failed");
    controller::Action::requeue(std::time::Duration::from_secs(30))
}

/// The sets in `store` that read the ConfigMap (`config_map`) or Secret `name` in `namespace`.
fn reading(
    store: &Store<IndividualEnrollmentSet>,
    namespace: Option<String>,
    name: &str,
    config_map: bool,
) -> Vec<ObjectRef<IndividualEnrollmentSet>> {
    matching(store, |set| {
        let lists = set.spec.member_lists.iter();
        let listed = match config_map {
            true => lists.filter_map(|l| l.config_map_ref.as_ref()).any(|r| r.name == name),
            false => lists.filter_map(|l| l.secret_ref.as_ref()).any(|r| r.name == name),
        };
        let symmetric = set.spec.attestation.symmetric_key.as_ref();
        let keys = !config_map
            && symmetric.is_some_and(|s| {
                s.secret_ref.name == name || s.device_keys_secret_name.as_deref() == Some(name)
            });
        set.namespace() == namespace && (listed || keys)
    })
}

fn matching(
    store: &Store<IndividualEnrollmentSet>,
    wanted: impl Fn(&IndividualEnrollmentSet) -> bool,
) -> Vec<ObjectRef<IndividualEnrollmentSet>> {
    store.state().into_iter().filter(|s| wanted(s)).map(|s| ObjectRef::from_obj(&*s)).collect()
}
