//! The I/O of a pass, as [`Edges`] asks for it: this enrollment's DPS calls on its connection,
//! and the claim and key Secret writes in its namespace.

use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::converge::{CreatedKeys, Edges, Keys};
use crate::{
    controller::{
        Error,
        connection::Connection,
        context::Context,
        desired::Resolved,
        events::Events,
        finalizer::{MetadataChange, write_metadata},
        kinds::EnrollmentKind,
        memory::Memories,
        names::resource_name,
        ownership::{Owners, claim_annotation},
        secrets::Reader,
        watches::SecretVersions,
    },
    dps::{self, IfMatch},
};

pub struct LiveEdges<'a, K> {
    client: &'a kube::Client,
    memory: &'a Memories,
    events: &'a Events,
    owners: &'a Owners,
    /// The versions of the Secrets this process wrote, so their watch events are known as its own.
    secrets: &'a SecretVersions,
    object: &'a K,
    connection: &'a Connection,
    reader: &'a Reader<'a>,
    owner_reference: &'a OwnerReference,
    id: &'a str,
    /// The object's metadata as this pass has written it.
    meta: &'a Mutex<ObjectMeta>,
}

impl<'a, K> LiveEdges<'a, K> {
    /// The edges of a pass over `object`, whose enrollment `id` is on `connection`.
    pub fn new(
        ctx: &'a Context,
        object: &'a K,
        connection: &'a Connection,
        reader: &'a Reader<'a>,
        owner_reference: &'a OwnerReference,
        id: &'a str,
        meta: &'a Mutex<ObjectMeta>,
    ) -> Self {
        let (client, memory, events, owners) = (&ctx.client, &ctx.memory, &ctx.events, &ctx.owners);
        let secrets = &ctx.caches.secrets;
        Self {
            client,
            memory,
            events,
            owners,
            secrets,
            object,
            connection,
            reader,
            owner_reference,
            id,
            meta,
        }
    }
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
            let connection = self.connection;
            self.events.announce_bulk_create(&connection.reference, K::WHAT, &connection.host, self.id);
        }
        Ok((record.clone(), items > 1))
    }

    fn failed(&self, source: dps::Error) -> Error {
        self.connection.dps_error(source)
    }

    async fn create_key_secret(&self, name: &str, keys: Keys, from_dps: bool) -> Result<CreatedKeys, Error> {
        let namespace = self.reader.namespace;
        // Its watch event can arrive before the create's answer: it is known to be ours already.
        self.secrets.creating_own(namespace, name);
        let created = self.reader.create_key_secret(name, self.owner_reference, keys).await;
        let (keys, created) = created.inspect_err(|_| self.secrets.not_own(namespace, name))?;
        let created = match created {
            Some((version, time)) => {
                self.secrets.created_own(namespace, name, &version);
                Some(time)
            }
            None => {
                self.secrets.not_own(namespace, name);
                None
            }
        };
        if from_dps {
            let note = format!(
                "Created Secret {namespace}/{name} with the keys DPS holds for {} {}.",
                K::WHAT,
                self.id
            );
            self.events.publish(self.object, false, "KeysRestored", note).await;
        }
        Ok((keys, created))
    }

    async fn discard_key_secret(&self, name: &str) -> Result<bool, Error> {
        let Some(version) = self.secrets.own_version(self.reader.namespace, name) else {
            return Ok(false);
        };
        self.reader.delete_key_secret(name, &version).await?;
        self.secrets.not_own(self.reader.namespace, name);
        Ok(true)
    }

    async fn record_claim(&self, host: &str) -> Result<(), Error> {
        let annotation = claim_annotation(&self.owner_reference.uid, host);
        let change = MetadataChange { add_finalizer: true, claim: Some(Some(&annotation)) };
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let written =
            write_metadata(self.client, self.memory, self.object, &meta, change).await.map_err(|e| {
                Error::kube(
                    format!("recording the claim on {} (DPS at {host})", resource_name(self.object)),
                    e,
                )
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
        self.owners.release(&self.owner_reference.uid);
    }
}
