//! The cluster's state in etcd: its key layout, `netd push`, what `netd status --cluster`
//! reads, and (in [`follow`]) how each host's netd follows it.
//!
//! Key layout, under one prefix (default `/netd/v1`; `v1` is the layout's version, so a
//! later layout can live beside this one during an upgrade):
//!
//! | key | written by | value |
//! |---|---|---|
//! | `<prefix>/cluster/topology` | `netd push`, in one transaction | the cluster topology as compact JSON, every derived value explicit ([`Cluster::to_json`]) |
//! | `<prefix>/cluster/alive/<host>` | that host's netd, on its lease | JSON: pid, start time |
//! | `<prefix>/status/<host>` | that host's netd, on its lease, every few seconds and after each change | JSON: the revision applied, the store's health, tenants' rates |
//!
//! Each netd lists and watches the topology and the `alive` keys, nothing else (status
//! writes wake nobody). At each change a host reads the stored JSON and validates only its
//! own part ([`crate::topology::cluster::host_part`]): a hundredth of a 100-host cluster,
//! about a millisecond; a host whose part did not change applies nothing. A host whose
//! lease expires loses its `alive` key, and the others drop its servers from their
//! tunnels.
//!
//! Why one key: a push must be one transaction, and per-host or per-tenant keys would make
//! the first push of a large cluster one operation per key, past etcd's default limit of
//! 128 per transaction, and per-host parts repeat each server in every part of its tenant
//! (2.3 MB for 100 hosts × 10 servers, past etcd's 1.5 MiB request limit). One key of
//! 0.2 MB holds 1000 servers.

pub mod follow;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use serde::{Deserialize, Serialize};

use crate::topology::Cluster;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/netd/v1";
/// The default lease time of a host's keys.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long connecting to etcd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request to etcd may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the cluster's state is and how a host holds its place in it.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// etcd endpoints, `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix, without a trailing `/`.
    pub prefix: String,
    /// How long a host's keys outlive its last keep-alive.
    pub lease_ttl: Duration,
    /// An etcd user and password, where etcd has authentication on.
    pub credentials: Option<Credentials>,
}

/// An etcd user and its password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, …)", self.user)
    }
}

impl Credentials {
    /// `user` with the password read from `path`, a file only its owner may read (one line).
    pub fn read(user: &str, path: &std::path::Path) -> Result<Credentials, StoreError> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let bad = |reason: String| StoreError::Password {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mode = file.metadata().map_err(|e| bad(e.to_string()))?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:o} lets others read it; chmod 600 it"
            )));
        }
        let mut text = String::new();
        file.take(4097)
            .read_to_string(&mut text)
            .map_err(|e| bad(e.to_string()))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() || password.len() > 4096 || password.contains('\n') {
            return Err(bad("expected one line of 1 to 4096 bytes".into()));
        }
        Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

impl StoreConfig {
    /// A configuration for one endpoint with the default prefix and lease time.
    pub fn new(endpoint: &str) -> StoreConfig {
        StoreConfig {
            endpoints: vec![endpoint.to_string()],
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
            credentials: None,
        }
    }

    fn keys(&self) -> Keys {
        Keys(self.prefix.trim_end_matches('/').to_string())
    }
}

/// The key layout (see the module docs).
#[derive(Debug, Clone)]
struct Keys(String);

impl Keys {
    fn topology(&self) -> String {
        format!("{}/cluster/topology", self.0)
    }
    fn alive_prefix(&self) -> String {
        format!("{}/cluster/alive/", self.0)
    }
    fn alive(&self, host: &str) -> String {
        format!("{}{host}", self.alive_prefix())
    }
    fn status_prefix(&self) -> String {
        format!("{}/status/", self.0)
    }
    fn status(&self, host: &str) -> String {
        format!("{}{host}", self.status_prefix())
    }
}

/// Why talking to the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Cannot reach etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd request failed")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("No cluster topology in etcd at {key}: store one with `netd push FILE --etcd URL`")]
    NoTopology { key: String },
    #[error("The revisions after {0} were compacted: listing again")]
    Compacted(i64),
    #[error("etcd ended the watch: {0}")]
    WatchEnded(String),
    #[error("The host's lease expired")]
    LeaseLost,
    #[error("The topology changed in etcd since revision {0}; nothing was written")]
    Conflict(i64),
    #[error("Cannot use the etcd password file {path}: {reason}")]
    Password {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("Bad value at {key}: {reason}")]
    BadValue { key: String, reason: String },
}

/// What the store holds for the hosts: the topology and who is alive, at a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    /// The stored topology (JSON), if one was pushed.
    pub topology: Option<String>,
    /// Hosts whose netd holds its lease.
    pub alive: BTreeSet<String>,
}

/// What a host says of itself while it runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alive {
    pub pid: u32,
    /// When it started, Unix time in ms.
    pub since_unix_ms: u64,
}

/// What `netd status --cluster` reads.
#[derive(Debug, Clone, Default)]
pub struct ClusterReport {
    pub revision: i64,
    pub topology: Option<String>,
    pub alive: BTreeSet<String>,
    /// Each host's last status, raw JSON, by host.
    pub status: BTreeMap<String, String>,
}

/// A connection to the store.
pub struct Store {
    client: Client,
    keys: Keys,
}

/// Run `request` with the request timeout.
async fn timed<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(REQUEST_TIMEOUT)),
    }
}

impl Store {
    /// Connect to the store.
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(c) = &config.credentials {
            options = options.with_user(c.user.clone(), c.password.clone());
        }
        let connecting = Client::connect(config.endpoints.clone(), Some(options));
        let client = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => {
                let endpoints = config.endpoints.join(",");
                return Err(StoreError::Connect { endpoints, source });
            }
            Err(_) => return Err(StoreError::Timeout(CONNECT_TIMEOUT * 2)),
        };
        Ok(Store {
            client,
            keys: config.keys(),
        })
    }

    /// Store a validated cluster topology in one transaction; return the revision it was
    /// written at. With `expect`, write only if the topology is still at that revision (0:
    /// only if there is none).
    pub async fn push(
        &mut self,
        cluster: &Cluster,
        expect: Option<i64>,
    ) -> Result<i64, StoreError> {
        let key = self.keys.topology();
        let put = TxnOp::put(key.clone(), cluster.to_json(), None);
        let mut txn = Txn::new();
        if let Some(revision) = expect {
            txn = txn.when([Compare::mod_revision(key, CompareOp::Equal, revision)]);
        }
        let response = timed(self.client.txn(txn.and_then([put]))).await?;
        if !response.succeeded() {
            return Err(StoreError::Conflict(expect.unwrap_or(0)));
        }
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Read what the hosts follow (the topology and who is alive), at one revision.
    pub async fn list(&mut self) -> Result<Snapshot, StoreError> {
        let options = GetOptions::new().with_prefix();
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.topology(), None),
            TxnOp::get(self.keys.alive_prefix(), Some(options)),
        ]);
        let response = timed(self.client.txn(txn)).await?;
        let mut snapshot = Snapshot {
            revision: response.header().map_or(0, |h| h.revision()),
            ..Snapshot::default()
        };
        for op in response.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                for kv in get.kvs() {
                    snapshot.take(&self.keys, kv.key(), Some(kv.value()))?;
                }
            }
        }
        Ok(snapshot)
    }

    /// Watch what the hosts follow from `revision` on (two watches on one stream).
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new().with_start_revision(revision);
        let mut stream = timed(self.client.watch(self.keys.topology(), Some(options))).await?;
        created(&mut stream).await?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        timed(stream.watch(self.keys.alive_prefix(), Some(options))).await?;
        created(&mut stream).await?;
        Ok(stream)
    }

    /// Take a lease and put `host`'s alive key on it; return the lease.
    pub async fn register(
        &mut self,
        host: &str,
        ttl: Duration,
        alive: &Alive,
    ) -> Result<i64, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = timed(self.client.lease_grant(seconds, None)).await?.id();
        let value = serde_json::to_string(alive).unwrap_or_default();
        let options = PutOptions::new().with_lease(lease);
        timed(self.client.put(self.keys.alive(host), value, Some(options))).await?;
        Ok(lease)
    }

    /// Open the keep-alive stream of `lease`, for a session's renewals.
    pub async fn keeper(&mut self, lease: i64) -> Result<LeaseRenewal, StoreError> {
        let (keeper, stream) = timed(self.client.lease_keep_alive(lease)).await?;
        Ok(LeaseRenewal { keeper, stream })
    }

    /// Publish `host`'s status (JSON) on its lease.
    pub async fn publish_status(
        &mut self,
        host: &str,
        lease: i64,
        status: &str,
    ) -> Result<(), StoreError> {
        let options = PutOptions::new().with_lease(lease);
        timed(
            self.client
                .put(self.keys.status(host), status, Some(options)),
        )
        .await?;
        Ok(())
    }

    /// Give up `lease` at once: the host's keys go now, not when the lease would expire.
    pub async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        timed(self.client.lease_revoke(lease)).await?;
        Ok(())
    }

    /// Read everything `netd status --cluster` shows.
    pub async fn report(&mut self) -> Result<ClusterReport, StoreError> {
        let snapshot = self.list().await?;
        let options = GetOptions::new().with_prefix();
        let prefix = self.keys.status_prefix();
        let response = timed(self.client.get(prefix.clone(), Some(options))).await?;
        let mut status = BTreeMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Some(host) = key.strip_prefix(&prefix) {
                let value = String::from_utf8_lossy(kv.value()).into_owned();
                status.insert(host.to_string(), value);
            }
        }
        Ok(ClusterReport {
            revision: snapshot.revision,
            topology: snapshot.topology,
            alive: snapshot.alive,
            status,
        })
    }
}

/// The keep-alive stream of one lease.
pub struct LeaseRenewal {
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
}

impl LeaseRenewal {
    /// Renew the lease once; `LeaseLost` if it has expired.
    pub async fn renew(&mut self) -> Result<(), StoreError> {
        timed(self.keeper.keep_alive()).await?;
        match timed(self.stream.message()).await? {
            Some(response) if response.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseLost),
        }
    }
}

/// Wait for the answer to a watch request: created, or why not.
async fn created(stream: &mut WatchStream) -> Result<(), StoreError> {
    match timed(stream.message()).await? {
        Some(response) if response.created() && !response.canceled() => Ok(()),
        Some(response) if response.compact_revision() > 0 => {
            Err(StoreError::Compacted(response.compact_revision()))
        }
        Some(response) => Err(StoreError::WatchEnded(response.cancel_reason().into())),
        None => Err(StoreError::WatchEnded("no answer to the watch".into())),
    }
}

impl Snapshot {
    /// Take one key's new value (`None`: deleted) into the snapshot; return whether it is
    /// one the hosts follow (the topology, or who is alive).
    fn take(&mut self, keys: &Keys, key: &[u8], value: Option<&[u8]>) -> Result<bool, StoreError> {
        let key = String::from_utf8_lossy(key);
        if key == keys.topology() {
            self.topology =
                match value {
                    Some(bytes) => Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                        StoreError::BadValue {
                            key: key.to_string(),
                            reason: "not UTF-8 text".into(),
                        }
                    })?),
                    None => None,
                };
            return Ok(true);
        }
        if let Some(host) = key.strip_prefix(&keys.alive_prefix()) {
            match value {
                Some(_) => self.alive.insert(host.to_string()),
                None => self.alive.remove(host),
            };
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_layout_is_versioned_under_one_prefix() {
        let keys = StoreConfig::new("http://127.0.0.1:2379").keys();
        assert_eq!(keys.topology(), "/netd/v1/cluster/topology");
        assert_eq!(keys.alive("a"), "/netd/v1/cluster/alive/a");
        assert_eq!(keys.status("a"), "/netd/v1/status/a");
        let mut config = StoreConfig::new("x");
        config.prefix = "/lab/netd/v1/".into();
        assert_eq!(config.keys().topology(), "/lab/netd/v1/cluster/topology");
    }

    #[test]
    fn a_snapshot_follows_the_topology_and_who_is_alive() {
        let keys = StoreConfig::new("x").keys();
        let mut snapshot = Snapshot::default();
        let take = |s: &mut Snapshot, key: String, value: Option<&[u8]>| {
            s.take(&keys, key.as_bytes(), value).unwrap()
        };
        assert!(take(&mut snapshot, keys.topology(), Some(b"{}")));
        assert!(take(&mut snapshot, keys.alive("a"), Some(b"{}")));
        assert!(take(&mut snapshot, keys.alive("b"), Some(b"{}")));
        assert!(!take(&mut snapshot, keys.status("a"), Some(b"{}")));
        assert!(take(&mut snapshot, keys.alive("a"), None));
        assert_eq!(snapshot.topology.as_deref(), Some("{}"));
        assert_eq!(snapshot.alive, BTreeSet::from(["b".to_string()]));
        let bad = snapshot.take(&keys, keys.topology().as_bytes(), Some(&[0xff]));
        assert!(matches!(bad, Err(StoreError::BadValue { .. })));
    }
}
