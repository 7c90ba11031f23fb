//! One host's netd following the cluster's state in etcd.
//!
//! A session connects, takes the host's lease, lists the watched keys, applies this host's
//! part, then watches from the next revision and applies each change as it comes, renewing
//! the lease and publishing the host's status as it goes. Whatever ends a session (etcd
//! gone, the watch compacted away, the lease lost) ends only that session: the data path
//! keeps forwarding with the last part applied, [`StoreHealth`] says the store is
//! unreachable, and a new session starts after a pause, listing afresh. So a host catches
//! up with whatever changed while it was away, and a compacted revision costs a re-list.
//!
//! Applying goes through [`Control::follow`]: the same diff and apply as `netd reload`, so
//! an unchanged tenant is never disturbed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Alive, Snapshot, Store, StoreConfig, StoreError};
use crate::control::Control;
use crate::control::journal::unix_ms;
use crate::topology::cluster::{self, Cluster};

/// Pause before a new session after one failed; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(4);
/// How often a host publishes its status besides after each change.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// What the host knows of the store, for `netd status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// The host's name in the cluster.
    pub host: String,
    /// A session is up: the host sees changes as they come.
    pub connected: bool,
    /// Why the last session ended, while no new one is up.
    pub error: Option<String>,
    /// When the store was last seen up (or the session ended), Unix time in ms.
    pub since_unix_ms: u64,
    /// The store's revision this host's part was last applied from.
    pub applied_revision: i64,
    /// When that was, Unix time in ms.
    pub applied_unix_ms: u64,
    /// Why the last part read could not be applied, if it could not (the host keeps the
    /// part before it).
    pub apply_error: Option<String>,
    /// The hosts alive as last seen.
    pub alive: BTreeSet<String>,
    /// The lease this host's keys are on, while a session holds one.
    #[serde(skip)]
    pub lease: Option<i64>,
}

/// The health shared between the follower and the control plane.
pub type SharedHealth = Arc<Mutex<StoreHealth>>;

/// Read this host's part of the cluster from the store, to start with.
pub async fn first_part(
    config: &StoreConfig,
    host: &str,
) -> anyhow::Result<crate::topology::Topology> {
    let mut store = Store::connect(config).await?;
    let snapshot = store.list().await?;
    let key = store.keys.topology();
    let text = snapshot.topology.ok_or(StoreError::NoTopology { key })?;
    let cluster = cluster::host_part(Path::new("etcd"), &text, host)
        .map_err(crate::topology::LoadError::Invalid)?;
    let mut part = cluster
        .view(host, |h| h == host || snapshot.alive.contains(h))
        .map_err(crate::topology::LoadError::Invalid)?;
    // Named after the host: several hosts' netd may share a machine (and a run dir).
    part.name = host.to_string();
    Ok(part)
}

/// Give up this host's lease (its `alive` and status keys go at once), as a host that
/// stops cleanly does; at most a second, and nothing if etcd cannot be reached.
pub async fn leave(config: &StoreConfig, health: &SharedHealth) {
    let lease = health.lock().unwrap_or_else(|e| e.into_inner()).lease;
    let Some(lease) = lease else {
        return;
    };
    let revoke = async {
        let mut store = Store::connect(config).await?;
        store.revoke(lease).await
    };
    match tokio::time::timeout(Duration::from_secs(1), revoke).await {
        Ok(Ok(())) => info!("left the cluster: lease revoked"),
        Ok(Err(err)) => {
            warn!(cause = %error_chain(&err), "cannot revoke the lease: the other hosts drop this one when it expires")
        }
        Err(_) => {
            warn!("etcd did not answer: the other hosts drop this one when its lease expires")
        }
    }
}

/// Follow the store until the task is dropped: sessions one after another.
pub async fn run(control: Arc<Control>, config: StoreConfig, host: String, health: SharedHealth) {
    let alive = Alive {
        pid: std::process::id(),
        since_unix_ms: unix_ms(),
    };
    let mut follower = Follower {
        control,
        config,
        host,
        health,
        alive,
        cluster: None,
        applied: None,
    };
    let mut retry = FIRST_RETRY;
    loop {
        let Err(error) = follower.follow(&mut retry).await;
        warn!(cause = %error, retry_ms = retry.as_millis(), "store unreachable: forwarding with the last state applied");
        follower.update(|h| {
            if h.connected || h.error.is_none() {
                h.since_unix_ms = unix_ms();
            }
            h.connected = false;
            h.error = Some(error_chain(&error));
        });
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Say an error with its causes, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

struct Follower {
    control: Arc<Control>,
    config: StoreConfig,
    host: String,
    health: SharedHealth,
    alive: Alive,
    /// The last topology read and this host's validated part of it (read again only when
    /// it changes).
    cluster: Option<(String, Cluster)>,
    /// The part last applied, as the cluster gave it (before the daemon's renumbering).
    applied: Option<crate::topology::Topology>,
}

impl Follower {
    fn update(&self, change: impl FnOnce(&mut StoreHealth)) {
        change(&mut self.health.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One session: connect, hold the lease, list, apply, then follow the watch; return
    /// why it ended (it never ends well). `retry` is reset once the session is up.
    async fn follow(
        &mut self,
        retry: &mut Duration,
    ) -> Result<std::convert::Infallible, StoreError> {
        let mut store = Store::connect(&self.config).await?;
        let lease = store
            .register(&self.host, self.config.lease_ttl, &self.alive)
            .await?;
        self.update(|h| h.lease = Some(lease));
        let mut renewal = store.keeper(lease).await?;
        let mut known = store.list().await?;
        let mut watch = store.watch(known.revision + 1).await?;
        info!(
            revision = known.revision,
            lease, "following the cluster in etcd"
        );
        self.update(|h| {
            h.connected = true;
            h.error = None;
            h.since_unix_ms = unix_ms();
        });
        *retry = FIRST_RETRY;
        self.apply(&known).await;
        // Published whatever happened: a new session says it is connected again.
        self.publish(&mut store, lease).await?;
        // Renew well within the lease's time, so one late renewal does not lose it.
        let mut renew = tokio::time::interval(self.config.lease_ttl / 3);
        let mut status = tokio::time::interval(STATUS_INTERVAL);
        loop {
            tokio::select! {
                message = watch.message() => {
                    let response = message?.ok_or_else(|| StoreError::WatchEnded("stream closed".into()))?;
                    if response.compact_revision() > 0 {
                        return Err(StoreError::Compacted(response.compact_revision()));
                    }
                    if response.canceled() {
                        return Err(StoreError::WatchEnded(response.cancel_reason().into()));
                    }
                    let mut relevant = false;
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let value = match event.event_type() {
                            etcd_client::EventType::Put => Some(kv.value()),
                            etcd_client::EventType::Delete => None,
                        };
                        relevant |= known.take(&store.keys, kv.key(), value)?;
                    }
                    if let Some(header) = response.header() {
                        known.revision = header.revision();
                    }
                    if relevant && self.apply(&known).await {
                        self.publish(&mut store, lease).await?;
                    }
                }
                _ = renew.tick() => renewal.renew().await?,
                _ = status.tick() => self.publish(&mut store, lease).await?,
            }
        }
    }

    /// Apply this host's part of `known`; return whether it changed anything. A part that
    /// cannot be read or applied is logged and kept in the health, and the host keeps the
    /// part before it; a part that did not change is not applied again.
    async fn apply(&mut self, known: &Snapshot) -> bool {
        let Some(text) = &known.topology else {
            warn!("no cluster topology in etcd yet: `netd push FILE --etcd URL` stores one");
            return false;
        };
        if self.cluster.as_ref().is_none_or(|(old, _)| old != text) {
            match cluster::host_part(Path::new("etcd"), text, &self.host) {
                Ok(parsed) => self.cluster = Some((text.clone(), parsed)),
                Err(errors) => {
                    let error = crate::topology::LoadError::Invalid(errors).to_string();
                    warn!(cause = %error, "the cluster topology in etcd is invalid: keeping the last one");
                    self.update(|h| h.apply_error = Some(error));
                    return false;
                }
            }
        }
        let Some((_, cluster)) = &self.cluster else {
            return false;
        };
        let me = self.host.as_str();
        let part = match cluster.view(me, |h| h == me || known.alive.contains(h)) {
            Ok(part) => part,
            Err(errors) => {
                let error = crate::topology::LoadError::Invalid(errors).to_string();
                warn!(cause = %error, "this host's part cannot be read: keeping the last one");
                self.update(|h| h.apply_error = Some(error));
                return false;
            }
        };
        let revision = known.revision;
        if self.applied.as_ref() == Some(&part) {
            self.update(|h| {
                h.alive.clone_from(&known.alive);
                h.applied_revision = revision;
            });
            return false;
        }
        let outcome = self.control.follow(part.clone(), "etcd").await;
        if outcome.is_ok() {
            self.applied = Some(part);
        }
        self.update(|h| {
            h.alive.clone_from(&known.alive);
            match outcome {
                Ok(_) => {
                    h.applied_revision = revision;
                    h.applied_unix_ms = unix_ms();
                    h.apply_error = None;
                }
                Err(error) => h.apply_error = Some(error_chain(&error)),
            }
        });
        true
    }

    /// Publish this host's status on its lease.
    async fn publish(&self, store: &mut Store, lease: i64) -> Result<(), StoreError> {
        // The control plane's status carries the store's health too.
        let status = self.control.status().await;
        let text = serde_json::to_string(&status).unwrap_or_default();
        store.publish_status(&self.host, lease, &text).await
    }
}
