//! Leader election: only the replica holding the Lease runs the controllers; a standby waits,
//! healthy and ready to take over.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::{sync::watch, task::JoinHandle};

use super::{Error, names::FIELD_MANAGER};
use crate::http::Health;

/// Leader election: only the replica holding the Lease writes.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    /// This replica's name (the pod name).
    pub identity: String,
}

/// The Lease of the operators reconciling what `selector` selects: `base` for all, else `base`
/// and a hash of the selector, so that each shard elects its own leader.
pub fn lease_name(base: &str, selector: Option<&str>) -> String {
    match selector {
        None => base.to_owned(),
        Some(selector) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, selector.as_bytes());
            let hash: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("{base}-{hash}")
        }
    }
}

/// How long a Lease is held without renewal, and how early it is renewed. A standby looks at the
/// Lease again only when it would expire, so this also bounds a graceful handover (the leader
/// releases it on SIGTERM); a leader that cannot renew for this long steps down.
const LEASE_DURATION: u64 = 4;
const LEASE_GRACE: u64 = 2;

/// The Lease, held by this replica.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Leadership {
    /// Waits, as a standby (healthy, ready to take over), until this replica holds the Lease;
    /// `None` when told to stop first.
    pub async fn acquire(
        client: &Client,
        election: LeaderElection,
        health: &Health,
    ) -> Result<Option<Self>, Error> {
        tracing::info!(lease = %election.lease_name, namespace = %election.lease_namespace, identity = %election.identity, "standby: waiting for the Lease");
        let manager = LeaseManagerBuilder::new(client.clone(), election.lease_name)
            .with_namespace(election.lease_namespace)
            .with_identity(election.identity)
            .with_duration(LEASE_DURATION)
            .with_grace(LEASE_GRACE)
            .with_field_manager(FIELD_MANAGER)
            .build()
            .await
            .map_err(|e| Error::LeaderElection(e.to_string()))?;
        let (mut leading, task) = manager.watch().await;
        health.set_ready(true);
        let mut stopped = std::pin::pin!(health.stopped());
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => changed.map_err(|_| Error::LeaderElection("the lease manager stopped".into()))?,
                _ = &mut stopped => return Ok(None),
            }
        }
        health.set_ready(false);
        tracing::info!("leading: this replica holds the Lease");
        Ok(Some(Self { leading, task }))
    }

    /// Runs `controllers` while the Lease is held; when they end, hands the Lease over at once
    /// rather than letting it expire.
    pub async fn run(mut self, controllers: impl Future<Output = ()>) -> Result<(), Error> {
        let leading = &mut self.leading;
        let lost = async {
            while leading.changed().await.is_ok() {
                if !*leading.borrow() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = controllers => {}
            _ = lost => return Err(Error::LeaderElection("lost the Lease to another replica".into())),
        }
        drop(self.leading);
        let _ = self.task.await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_selector_has_a_lease_of_its_own_and_no_selector_keeps_the_name() {
        assert_eq!(lease_name("dps-operator", None), "dps-operator");
        let shard = lease_name("dps-operator", Some("sharding.dps.iot.dev/key=shard1"));
        assert!(shard.starts_with("dps-operator-") && shard.len() == "dps-operator-".len() + 8, "{shard}");
        assert_eq!(shard, lease_name("dps-operator", Some("sharding.dps.iot.dev/key=shard1")));
        assert_ne!(shard, lease_name("dps-operator", Some("!sharding.dps.iot.dev/key")));
    }
}
