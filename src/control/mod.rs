//! The control plane: live changes, status and counters of a running daemon.
//!
//! Contract:
//! - Every change ([`Change`], or `reload` of the topology file) is turned into a whole new
//!   topology and validated exactly like a topology file ([`change`]); a rejected change
//!   returns the validator's errors and leaves the running state and traffic untouched.
//! - An accepted change is applied all or nothing: links of changed servers are re-applied,
//!   new servers get their namespace and TAP exactly as at start-up (rolled back if any step
//!   fails), then the data path takes the new switch, shaper parameters, counters and ports
//!   in one [`Update`] between two batches; only then are removed servers torn down. Tenants
//!   whose configuration did not change keep their queued frames, tokens and counters.
//! - Ids are stable for the life of the daemon (see [`crate::topology`]): names map to the
//!   ids they were first given; new tenants and servers get fresh ids after every id ever used
//!   and are never renumbered, so the shaper, the switch, the counters and the data path's
//!   port table (all keyed by id) need no translation. Counters grow for new ids
//!   ([`Stats::grown`]); removed ids' counters are retired (kept, no longer reported).
//! - Changes are serialised (one lock around the running state); reads of counters and
//!   rates never wait for the data path.
//! - Every action is logged with `tracing`: who (socket peer uid/pid, HTTP peer, SIGHUP),
//!   what, and old → new.
//!
//! Transports: a Unix socket with one JSON [`Request`]/[`Response`] per line ([`socket`]),
//! an optional loopback HTTP API ([`http`]), and the CLI's client ([`client`]).

pub mod auth;
pub mod change;
pub mod client;
pub mod console;
pub mod http;
pub mod journal;
pub mod persist;
pub mod rates;
pub mod report;
pub mod socket;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

pub use change::{Change, Diff, RateChange};
use rates::{LONG, Meter, RateMeter, SHORT};
use report::{
    Counts, DataPathStats, Demand, DirectionStatus, PortState, PortStats, Rates, RemoteStats,
    ServerStatus, ShaperCounts, StatsReport, Status, TenantStats, TenantStatus, TunnelStats,
    UplinkStatus,
};

use crate::datapath::{Update, UpdateHandle};
use crate::gateway::GatewayPort;
use crate::handover;
use crate::kernel::{self, KernelError, Plumbing};
use crate::port::{Offload, Port, TapPort, UplinkPort};
use crate::shaper::Shaping;
use crate::stats::Stats;
use crate::switch::Switch;
use crate::topology::{self, LoadError, TenantId, Topology, ValidationError};

/// How long a change waits for the data path to take it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{}", format_invalid(.0))]
    Invalid(Vec<ValidationError>),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("No such tenant: {0:?}")]
    UnknownTenant(String),
    #[error("No such server: {0:?}")]
    UnknownServer(String),
    #[error("Tenant {0:?} already exists")]
    TenantExists(String),
    #[error("Server {0:?} already exists")]
    ServerExists(String),
    #[error("Tenant {tenant:?} still has servers ({}); remove them first", servers.join(", "))]
    TenantHasServers {
        tenant: String,
        servers: Vec<String>,
    },
    #[error("Nothing to change for tenant {0:?}: give --guaranteed, --ceiling or --weight")]
    NothingToChange(String),
    #[error("Cannot apply the change; nothing was changed")]
    Kernel(#[source] KernelError),
    #[error("The data path did not take the change (is it still running?)")]
    DataPathGone,
    #[error("Another daemon already serves {0}")]
    AlreadyRunning(PathBuf),
    #[error("Cannot listen on {path}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Refusing to serve HTTP on the non-loopback address {0}; pass --http-allow-public to really do it"
    )]
    PublicAddress(std::net::SocketAddr),
    #[error(
        "The topology file no longer has servers created live: {}; reload would remove them: pass --prune to do so",
        .0.join(", ")
    )]
    WouldRemoveLiveServers(Vec<String>),
    #[error("Cannot change this live: {0}")]
    NotLive(String),
    #[error(
        "This host follows its cluster's topology in etcd: change the cluster file and run `netd push FILE --etcd URL`"
    )]
    FollowsCluster,
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
}

fn format_invalid(errors: &[ValidationError]) -> String {
    LoadError::Invalid(errors.to_vec()).to_string()
}

/// A request to the daemon, one JSON object per line on the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Tenants, servers, configured and current rates ([`Status`]).
    Status,
    /// Every counter ([`StatsReport`]).
    Stats,
    /// The running state as a topology file (TOML text).
    Topology,
    /// Prometheus text.
    Metrics,
    /// Re-read the topology file and apply the difference; servers created live that the
    /// file no longer has are removed only with `prune`.
    Reload {
        #[serde(default)]
        prune: bool,
    },
    /// Apply one change.
    Apply { change: Box<Change> },
    /// The last changes asked, applied or refused, with who and when ([`journal`]).
    Changes,
    /// Hand the TAPs and TUNs to the asking process, a new netd taking over (control socket
    /// only; see [`crate::handover`]).
    HandOver,
    /// Start the netd binary as installed now, with `--take-over`: an upgrade in place.
    Upgrade,
}

/// The daemon's answer: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: impl Serialize) -> Response {
        Response {
            ok: true,
            result: Some(serde_json::to_value(result).unwrap_or_default()),
            error: None,
        }
    }

    /// A failure with a message (the error's whole chain).
    pub fn error(err: &dyn std::error::Error) -> Response {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Response::failure(message)
    }

    /// A failure with this message.
    pub fn failure(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }
}

/// What an applied change did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// One line per touched object: `tenant acme: guaranteed 100mbit → 200mbit`.
    pub changes: Vec<String>,
    /// Microseconds from handing the update to the data path until it was applied.
    pub datapath_us: Option<u64>,
}

/// The running daemon's mutable state (behind [`Control`]'s lock).
pub struct Running {
    topology: Topology,
    next_tenant: u32,
    next_port: u32,
    plumbing: Plumbing,
    datapath: UpdateHandle,
    /// What new servers' TAPs carry (as the ones made at start-up).
    offload: Offload,
    /// Servers added by `add-server` since start: a reload removes them only when told to.
    live_servers: BTreeSet<String>,
}

/// The control plane of one daemon, shared by the socket, HTTP and signal handlers.
pub struct Control {
    state: tokio::sync::Mutex<Running>,
    stats: RwLock<Arc<Stats>>,
    rates: Mutex<RateMeter>,
    started: Instant,
    /// Told once the ports went to a new netd: the daemon then exits without tearing down.
    handed_over: tokio::sync::Notify,
    /// The pid of the netd the ports went to.
    successor: Mutex<Option<u32>>,
    /// How to start this daemon again (`netd upgrade`), when known.
    relaunch: Option<Relaunch>,
    /// The last changes asked.
    journal: journal::Journal,
    /// How this host follows its cluster's store, for a host of a cluster.
    store: Option<crate::store::follow::SharedHealth>,
}

/// The command line that started this daemon, to start the installed binary the same way.
#[derive(Debug, Clone)]
pub struct Relaunch {
    /// The binary's path as it was at start (an upgrade installs the new one there).
    pub exe: PathBuf,
    /// `netd up`'s arguments, program name excluded.
    pub args: Vec<std::ffi::OsString>,
}

impl Control {
    /// Take over the running topology, its plumbing and the data path's update handle.
    pub fn new(
        topology: Topology,
        plumbing: Plumbing,
        datapath: UpdateHandle,
        offload: Offload,
        stats: Arc<Stats>,
    ) -> Control {
        let next_tenant = u32::try_from(topology.tenant_id_bound()).unwrap_or(u32::MAX);
        let next_port = u32::try_from(topology.port_id_bound()).unwrap_or(u32::MAX);
        let live_servers = persist::live_servers(&topology.source);
        Control {
            state: tokio::sync::Mutex::new(Running {
                topology,
                next_tenant,
                next_port,
                plumbing,
                datapath,
                offload,
                live_servers,
            }),
            stats: RwLock::new(stats),
            rates: Mutex::new(RateMeter::default()),
            started: Instant::now(),
            handed_over: tokio::sync::Notify::new(),
            successor: Mutex::new(None),
            relaunch: None,
            journal: journal::Journal::default(),
            store: None,
        }
    }

    /// Say where this host's store health is kept (a host of a cluster).
    #[must_use]
    pub fn with_store_health(mut self, health: crate::store::follow::SharedHealth) -> Control {
        self.store = Some(health);
        self
    }

    /// Return the current counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Return a copy of the running topology.
    pub async fn topology(&self) -> Topology {
        self.state.lock().await.topology.clone()
    }

    /// Sample the counters for the sliding-window rates.
    pub fn sample(&self) {
        let stats = self.stats();
        self.rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(&stats, Instant::now());
    }

    /// Close the TAPs' namespaces: call after the data path stopped.
    pub async fn tear_down(&self) {
        self.state.lock().await.plumbing.tear_down();
    }

    /// Say how this daemon was started, for `netd upgrade`.
    #[must_use]
    pub fn with_relaunch(mut self, relaunch: Relaunch) -> Control {
        self.relaunch = Some(relaunch);
        self
    }

    /// Wait until the ports went to a new netd ([`Control::hand_over`]); return its pid.
    pub async fn handed_over(&self) -> Option<u32> {
        self.handed_over.notified().await;
        *self.successor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start the binary installed at this daemon's path as `netd up … --take-over`; it then
    /// takes the ports over on its own connection. Return its pid. It inherits this daemon's
    /// environment (systemd's notify socket too) except `WATCHDOG_PID`, which names this one.
    pub fn upgrade(&self, origin: &str) -> Result<u32, String> {
        let relaunch = self
            .relaunch
            .as_ref()
            .ok_or("This daemon does not know how it was started")?;
        let mut command = std::process::Command::new(&relaunch.exe);
        command
            .args(&relaunch.args)
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null());
        if !relaunch.args.iter().any(|a| a == "--take-over") {
            command.arg("--take-over");
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("Cannot start {}: {e}", relaunch.exe.display()))?;
        let pid = child.id();
        info!(origin, pid, exe = %relaunch.exe.display(), "upgrade: started the installed netd to take over");
        // Reaped here if it ends while this daemon still runs (a take-over that failed);
        // once the hand-over succeeds this process exits and it is reparented.
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                warn!(pid, %status, "the netd started to take over exited");
            }
        });
        Ok(pid)
    }

    /// Hand every TAP and TUN to the new netd at the other end of `stream` (see
    /// [`crate::handover`]); on success let go of the kernel state and tell
    /// [`Control::handed_over`], otherwise put the ports back and carry on.
    pub async fn hand_over(&self, stream: tokio::net::UnixStream, origin: &str) {
        let peer = stream.peer_cred().ok();
        let root = peer.is_some_and(|cred| cred.uid() == 0);
        let mut stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => return warn!(origin, cause = %err, "hand-over: bad connection"),
        };
        if !root {
            warn!(origin, "hand-over refused: the peer is not root");
            return refuse_hand_over(stream, Response::failure("Only root may take over netd"))
                .await;
        }
        let mut state = self.state.lock().await;
        // Made before the data path lets go: the gap is only what must be in it.
        let topology = toml::to_string(&state.topology.to_file()).unwrap_or_default();
        let names = handed_ports(&state.topology);
        let ports = match detach_fd_ports(&state, &names).await {
            Ok(ports) => ports,
            Err(refusal) => return refuse_hand_over(stream, refusal).await,
        };
        let stopped_at_usec = kernel::sys::monotonic_usec();
        // One pass, so each name goes with its fd.
        let (handed, fds): (Vec<_>, Vec<_>) = ports
            .iter()
            .filter_map(|p| Some((names.get(&p.id())?.clone(), p.fd()?)))
            .unzip();
        let offer = handover::Offer {
            topology,
            ports: handed,
            vnet_header: state.offload != Offload::None,
            stopped_at_usec,
        };
        let exchange = tokio::task::spawn_blocking(move || {
            let answer = handover::give(&mut stream, &Response::ok(offer), &fds);
            (answer, stream)
        })
        .await;
        match exchange {
            Ok((Ok(handover::Answer::Taken), stream)) => {
                info!(
                    origin,
                    ports = ports.len(),
                    "handed over to a new netd: exiting without tearing down"
                );
                state.plumbing.release();
                drop(ports);
                *self.successor.lock().unwrap_or_else(|e| e.into_inner()) = peer
                    .and_then(|cred| cred.pid())
                    .and_then(|pid| u32::try_from(pid).ok());
                // Closed by our exit, which is what the new netd waits for.
                std::mem::forget(stream);
                self.handed_over.notify_one();
            }
            outcome => {
                let why = match outcome {
                    Ok((Ok(_), _)) => "the new netd did not take the ports".to_string(),
                    Ok((Err(err), _)) => err.to_string(),
                    Err(err) => err.to_string(),
                };
                warn!(origin, cause = %why, "hand-over failed: carrying on with the ports");
                let update = Update {
                    add: ports,
                    switch: Some(Switch::new(&state.topology)),
                    ..Update::default()
                };
                if state.datapath.send(update).is_err() {
                    error!("the data path is gone: the ports could not be put back");
                }
            }
        }
    }

    /// Let go of the namespaces, TAPs and routers without tearing them down (after a
    /// failure: the next netd adopts them).
    pub async fn release(&self) {
        self.state.lock().await.plumbing.release();
    }

    /// Answer one request; `origin` says who asked (for the logs).
    pub async fn handle(&self, request: Request, origin: &str) -> Response {
        match request {
            Request::Status => Response::ok(self.status().await),
            Request::Stats => Response::ok(self.stats_report().await),
            Request::Topology => Response::ok(self.topology_toml().await),
            Request::Metrics => Response::ok(self.metrics().await),
            Request::Reload { prune } => result(self.reload(origin, prune).await),
            Request::Apply { change } => result(self.apply(*change, origin).await),
            Request::Changes => Response::ok(self.journal.recent()),
            Request::HandOver => Response::failure("A hand-over is asked on the control socket"),
            Request::Upgrade => match self.upgrade(origin) {
                Ok(pid) => Response::ok(serde_json::json!({ "pid": pid })),
                Err(message) => Response::failure(message),
            },
        }
    }

    /// Return the running state as topology-file TOML.
    pub async fn topology_toml(&self) -> String {
        let topology = self.topology().await;
        let text = toml::to_string(&topology.to_file()).unwrap_or_default();
        format!(
            "# Running state of netd topology {:?} (from {}), written by `netd status --toml`.\n{text}",
            topology.name,
            topology.source.display()
        )
    }

    /// Return the Prometheus text of the current status and counters.
    pub async fn metrics(&self) -> String {
        let (status, stats) = (self.status().await, self.stats_report().await);
        report::prometheus(&status, &stats)
    }

    /// Return the status: configuration, rates, queues, entitlement.
    pub async fn status(&self) -> Status {
        let topology = self.topology().await;
        let stats = self.stats();
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let measure = |rx: Meter, tx: Meter| Rates {
            in_100ms_bps: rates.rate(rx, SHORT),
            in_1s_bps: rates.rate(rx, LONG),
            out_100ms_bps: rates.rate(tx, SHORT),
            out_1s_bps: rates.rate(tx, LONG),
        };
        let mut tenants: Vec<TenantStatus> = topology
            .tenants
            .iter()
            .map(|t| {
                let i = t.id.index();
                let shaper = stats
                    .shaper
                    .get(i)
                    .map(|g| g.snapshot())
                    .unwrap_or_default();
                let rates = measure(Meter::TenantIn(i), Meter::TenantOut(i));
                let guaranteed = t.guaranteed.bits_per_sec();
                TenantStatus {
                    name: t.name.clone(),
                    id: t.id.0,
                    guaranteed_bps: guaranteed,
                    ceiling_bps: t.ceiling.bits_per_sec(),
                    weight: t.weight,
                    broadcast_pps: t.broadcast_pps,
                    servers: topology.servers_of(t.id).map(|s| s.name.clone()).collect(),
                    rates,
                    queued_frames: shaper.queued_frames,
                    queued_bytes: shaper.queued_bytes,
                    // Active: frames waiting, or sending above 1% of its guarantee.
                    active: shaper.queued_frames > 0
                        || u128::from(rates.in_100ms_bps) * 100 > u128::from(guaranteed),
                    entitlement_bps: 0,
                    uplink: t.uplink.as_ref().map(|u| {
                        let port = u.port.index();
                        let rates = measure(Meter::PortIn(port), Meter::PortOut(port));
                        uplink_status(u, &stats, i, rates)
                    }),
                }
            })
            .collect();
        if let Some(uplink) = &topology.uplink {
            uplink_entitlements(uplink.capacity.bits_per_sec(), &mut tenants);
        }
        let demands: Vec<Demand> = tenants
            .iter()
            .map(|t| Demand {
                guaranteed: t.guaranteed_bps,
                ceiling: t.ceiling_bps,
                weight: t.weight,
                active: t.active,
            })
            .collect();
        let capacity = topology.capacity.bits_per_sec();
        for (t, e) in tenants
            .iter_mut()
            .zip(report::entitlement(capacity, &demands))
        {
            t.entitlement_bps = e;
        }
        let servers = topology
            .servers
            .iter()
            .map(|s| {
                let i = s.id.index();
                ServerStatus {
                    name: s.name.clone(),
                    id: s.id.0,
                    tenant: topology.tenant(s.tenant).name.clone(),
                    mac: s.mac.to_string(),
                    ip: s.ip.to_string(),
                    ipv6: s.ipv6.map(|n| n.to_string()),
                    netns: s.netns.clone(),
                    state: if stats.ports.get(i).is_none_or(|c| c.is_up()) {
                        PortState::Up
                    } else {
                        PortState::Down
                    },
                    rates: measure(Meter::PortIn(i), Meter::PortOut(i)),
                }
            })
            .collect();
        Status {
            topology: topology.name.clone(),
            source: topology.source.display().to_string(),
            capacity_bps: capacity,
            uptime_secs: self.started.elapsed().as_secs_f64(),
            tenants,
            servers,
            uplink_capacity_bps: topology.uplink.as_ref().map(|u| u.capacity.bits_per_sec()),
            store: self
                .store
                .as_ref()
                .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        }
    }

    /// Return every counter of the current tenants and ports.
    pub async fn stats_report(&self) -> StatsReport {
        let topology = self.topology().await;
        let stats = self.stats();
        let counts = |v: &[Arc<crate::stats::Counters>], i: usize| -> Counts {
            v.get(i).map(|c| c.snapshot()).unwrap_or_default().into()
        };
        StatsReport {
            tenants: topology
                .tenants
                .iter()
                .map(|t| TenantStats {
                    tenant: t.name.clone(),
                    counters: counts(&stats.tenants, t.id.index()),
                    shaper: ShaperCounts::from(
                        stats
                            .shaper
                            .get(t.id.index())
                            .map(|g| g.snapshot())
                            .unwrap_or_default(),
                    ),
                })
                .collect(),
            ports: topology
                .servers
                .iter()
                .map(|s| PortStats {
                    server: s.name.clone(),
                    tenant: topology.tenant(s.tenant).name.clone(),
                    counters: counts(&stats.ports, s.id.index()),
                })
                .collect(),
            datapath: DataPathStats {
                realtime_priority: stats.datapath.realtime_priority.load(Ordering::Relaxed),
                step_downs: stats.datapath.step_downs.load(Ordering::Relaxed),
            },
            remote: topology
                .cluster
                .iter()
                .flat_map(|c| c.remote.iter())
                .map(|r| RemoteStats {
                    server: r.name.clone(),
                    host: r.host.clone(),
                    tenant: topology.tenant(r.tenant).name.clone(),
                    counters: counts(&stats.ports, r.id.index()),
                })
                .collect(),
            tunnel: topology
                .cluster
                .as_ref()
                .map(|_| TunnelStats::from(stats.tunnel.as_ref())),
            trunk: topology
                .uplink
                .as_ref()
                .filter(|u| u.mode == crate::topology::UplinkMode::Bridged)
                .map(|_| report::TrunkStats {
                    untagged: stats.trunk.untagged.load(Ordering::Relaxed),
                    unknown_vlan: stats.trunk.unknown_vlan.load(Ordering::Relaxed),
                }),
        }
    }

    /// Apply this host's part of its cluster, as read from the store (see
    /// [`crate::store`]): the same diff and apply as a reload, so what did not change is
    /// not touched.
    pub async fn follow(&self, part: Topology, origin: &str) -> Result<Applied, ControlError> {
        let mut state = self.state.lock().await;
        let (mut nt, mut np) = (state.next_tenant, state.next_port);
        let mut part = part;
        // Keep the daemon's name (the socket is named after it).
        part.name.clone_from(&state.topology.name);
        let new = part.with_ids_from(&state.topology, &mut nt, &mut np);
        self.commit(&mut state, Ok((new, nt, np)), origin, "follow", None)
            .await
    }

    /// Re-read the topology file and apply the difference.
    pub async fn reload(&self, origin: &str, prune: bool) -> Result<Applied, ControlError> {
        let mut state = self.state.lock().await;
        if state.topology.cluster.is_some() {
            return Err(ControlError::FollowsCluster);
        }
        let path = state.topology.source.clone();
        let result = (|| {
            let text = topology::read_text(&path)?;
            let file = topology::file::FileTopology::from_toml(&path, &text)
                .map_err(|e| ControlError::Invalid(vec![e]))?;
            let (mut nt, mut np) = (state.next_tenant, state.next_port);
            let new = change::accept(&state.topology, &path, &file, &mut nt, &mut np)?;
            let lost: Vec<String> = state
                .live_servers
                .iter()
                .filter(|name| new.server_by_name(name).is_none())
                .cloned()
                .collect();
            if !lost.is_empty() && !prune {
                return Err(ControlError::WouldRemoveLiveServers(lost));
            }
            Ok((new, nt, np))
        })();
        self.commit(&mut state, result, origin, "reload", None)
            .await
    }

    /// Validate and apply one change.
    pub async fn apply(&self, change: Change, origin: &str) -> Result<Applied, ControlError> {
        let mut state = self.state.lock().await;
        if state.topology.cluster.is_some() {
            return Err(ControlError::FollowsCluster);
        }
        let (mut nt, mut np) = (state.next_tenant, state.next_port);
        let result =
            change::propose(&state.topology, &change, &mut nt, &mut np).map(|new| (new, nt, np));
        let action = match &change {
            Change::SetRate { .. } => "set-rate",
            Change::SetRates { .. } => "set-rates",
            Change::AddTenant { .. } => "add-tenant",
            Change::RemoveTenant { .. } => "remove-tenant",
            Change::AddServer { .. } => "add-server",
            Change::RemoveServer { .. } => "remove-server",
        };
        self.commit(&mut state, result, origin, action, Some(&change))
            .await
    }

    /// Apply a validated new topology (or log the rejection) and record the outcome in the
    /// change log. A `change` is written back to the topology file first, and the file
    /// restored if applying it fails.
    async fn commit(
        &self,
        state: &mut Running,
        proposed: Result<(Topology, u32, u32), ControlError>,
        origin: &str,
        action: &str,
        change: Option<&Change>,
    ) -> Result<Applied, ControlError> {
        let outcome = self
            .apply_proposed(state, proposed, origin, action, change)
            .await;
        self.journal.record(origin, action, &outcome);
        outcome
    }

    /// [`Control::commit`] but for the change log.
    async fn apply_proposed(
        &self,
        state: &mut Running,
        proposed: Result<(Topology, u32, u32), ControlError>,
        origin: &str,
        action: &str,
        change: Option<&Change>,
    ) -> Result<Applied, ControlError> {
        let (new, next_tenant, next_port) = match proposed {
            Ok(p) => p,
            Err(err) => {
                warn!(origin, action, cause = %err, "control change rejected; nothing changed");
                return Err(err);
            }
        };
        let diff = Diff::between(&state.topology, &new);
        let threads = state.datapath.threads();
        let not_live = routing_change_not_live(&state.topology, &new).or_else(|| {
            crate::datapath::threads::refusal(&new, threads)
                .map(|why| format!("{why} (netd runs {threads} data-path threads)"))
        });
        if let Some(why) = not_live {
            let err = ControlError::NotLive(why);
            warn!(origin, action, cause = %err, "control change rejected; nothing changed");
            return Err(err);
        }
        let changes = describe(&state.topology, &new, &diff);
        if diff.is_empty() {
            info!(origin, action, "control change: nothing to do");
            return Ok(Applied {
                changes,
                datapath_us: None,
            });
        }
        let source = state.topology.source.clone();
        let previous = match change.filter(|_| !source.as_os_str().is_empty()) {
            Some(change) => match persist::write_back(&source, change, &new) {
                Ok(text) => Some(text),
                Err(err) => {
                    warn!(origin, action, cause = %err, "control change rejected; nothing changed");
                    return Err(ControlError::Persist(err));
                }
            },
            None => None,
        };
        match self.apply_diff(state, &new, &diff).await {
            Ok(us) => {
                track_live_servers(&mut state.live_servers, change, &new);
                for change in &changes {
                    info!(origin, action, change = %change, datapath_us = us, "control change applied");
                }
                state.topology = new;
                state.next_tenant = next_tenant;
                state.next_port = next_port;
                Ok(Applied {
                    changes,
                    datapath_us: Some(us),
                })
            }
            Err(err) => {
                if let Some(text) = previous
                    && let Err(restore) = persist::restore(&source, &text)
                {
                    error!(cause = %restore, "the topology file keeps a change that was not applied");
                }
                warn!(origin, action, cause = %err, "control change failed; nothing changed");
                Err(err)
            }
        }
    }

    /// Relink, plumb, hand the data path its update, tear down removed servers; return how
    /// long the data path took, in µs. On failure undo what was done.
    async fn apply_diff(
        &self,
        state: &mut Running,
        new: &Topology,
        diff: &Diff,
    ) -> Result<u64, ControlError> {
        let old = state.topology.clone();
        let relink_back = |done: &[crate::topology::PortId]| {
            for id in done {
                if let Err(err) = kernel::relink(old.server(*id), old.router_of(old.server(*id))) {
                    warn!(server = %old.server(*id).name, cause = %err, "cannot restore link");
                }
            }
        };
        let mut relinked = Vec::new();
        for &id in &diff.servers_relinked {
            if let Err(err) = kernel::relink(new.server(id), new.router_of(new.server(id))) {
                relink_back(&relinked);
                return Err(ControlError::Kernel(err));
            }
            relinked.push(id);
        }
        let mut added: Vec<Box<dyn Port>> = Vec::new();
        let mut added_netns: Vec<String> = Vec::new();
        let undo_added = |plumbing: &mut Plumbing, added: Vec<Box<dyn Port>>, netns: &[String]| {
            drop(added);
            for name in netns {
                if let Err(err) = plumbing.remove_server(name) {
                    warn!(netns = %name, cause = %err, "namespace left behind");
                }
            }
        };
        for &id in &diff.servers_added {
            let (server, router) = (new.server(id), new.router_of(new.server(id)));
            match state.plumbing.add_server(server, router, state.offload) {
                Ok(tap) => {
                    added.push(Box::new(TapPort::new(tap.port, tap.file, state.offload)));
                    added_netns.push(new.server(id).netns.clone());
                }
                Err(err) => {
                    undo_added(&mut state.plumbing, added, &added_netns);
                    relink_back(&relinked);
                    return Err(ControlError::Kernel(err));
                }
            }
        }

        let (old_gateways, new_gateways) = gateways_touched(&old, new, diff);
        added.extend(new_gateways);
        let (routers_gone, routers_new) = routers_touched(&old, new);
        for tenant in &routers_new {
            match state.plumbing.add_router(new, tenant, state.offload) {
                Ok(tun) => {
                    let port = UplinkPort::new(tun.port, tun.file, state.offload, tun.gateway_mac);
                    added.push(Box::new(port));
                }
                Err(err) => {
                    for done in routers_new.iter().take_while(|t| t.id != tenant.id) {
                        let _ = state.plumbing.remove_router(new, done);
                    }
                    undo_added(&mut state.plumbing, added, &added_netns);
                    relink_back(&relinked);
                    return Err(ControlError::Kernel(err));
                }
            }
        }

        let current = self.stats();
        // The tunnel and the trunk are built anew when their switch ports change.
        let shared_gone = crate::port::shared_ports_to_replace(&old, new);
        if shared_gone.is_some() {
            let shared = crate::port::shared_ports(new, &state.plumbing, state.offload, &current);
            match shared {
                Ok(ports) => added.extend(ports),
                Err(err) => {
                    undo_added(&mut state.plumbing, added, &added_netns);
                    relink_back(&relinked);
                    return Err(ControlError::Kernel(KernelError::SharedSocket(err)));
                }
            }
        }
        let (ports, tenants) = (new.port_id_bound(), new.tenant_id_bound());
        let stats = (ports > current.ports.len() || tenants > current.tenants.len())
            .then(|| Arc::new(current.grown(ports, tenants)));
        let shaper = Shaping::from_topology(new);
        let shaper = (shaper != Shaping::from_topology(&old)).then_some(shaper);
        let (done, applied) = tokio::sync::oneshot::channel();
        let mut remove = diff.servers_removed.clone();
        remove.extend(old_gateways);
        remove.extend(shared_gone.into_iter().flatten());
        remove.extend(
            routers_gone
                .iter()
                .filter_map(|t| t.uplink.as_ref().map(|u| u.port)),
        );
        let update = Update {
            remove,
            add: added,
            switch: Some(Switch::new(new)),
            shaper,
            stats: stats.clone(),
            done: Some(done),
            ..Update::default()
        };
        let start = Instant::now();
        if let Err(update) = state.datapath.send(update) {
            let update = *update;
            undo_added(&mut state.plumbing, update.add, &added_netns);
            relink_back(&relinked);
            return Err(ControlError::DataPathGone);
        }
        let removed = match tokio::time::timeout(APPLY_TIMEOUT, applied).await {
            Ok(Ok(removed)) => removed,
            // The update may still be applied later; nothing sensible can be undone.
            _ => return Err(ControlError::DataPathGone),
        };
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(stats) = stats {
            *self.stats.write().unwrap_or_else(|e| e.into_inner()) = stats;
        }
        // Close the removed TAPs and TUNs, then delete their namespaces.
        drop(removed);
        for &id in &diff.servers_removed {
            let netns = &old.server(id).netns;
            if let Err(err) = state.plumbing.remove_server(netns) {
                warn!(netns = %netns, cause = %err, "namespace of a removed server left behind");
            }
        }
        for tenant in &routers_gone {
            if let Err(err) = state.plumbing.remove_router(&old, tenant) {
                warn!(tenant = %tenant.name, cause = %err, "router of a removed tenant left behind");
            }
        }
        Ok(us)
    }
}

/// Answer a hand-over with `refusal` (blocking I/O, off the runtime).
async fn refuse_hand_over(mut stream: std::os::unix::net::UnixStream, refusal: Response) {
    let _ = tokio::task::spawn_blocking(move || handover::give(&mut stream, &refusal, &[])).await;
}

/// Take every port with an fd (servers' TAPs, routers' TUNs) out of the data path; return
/// them, or the refusal to send when the data path does not let go.
async fn detach_fd_ports(
    state: &Running,
    names: &HashMap<topology::PortId, handover::HandedPort>,
) -> Result<Vec<Box<dyn Port>>, Response> {
    let (done, detached) = tokio::sync::oneshot::channel();
    let update = Update {
        remove: names.keys().copied().collect(),
        switch: Some(Switch::new(&state.topology)),
        done: Some(done),
        ..Update::default()
    };
    if state.datapath.send(update).is_err() {
        return Err(Response::error(&ControlError::DataPathGone));
    }
    // No timeout: once sent, the update is applied whatever we do, and giving up here
    // would leave the ports unpolled and closed. A data path that is gone drops `done`.
    detached
        .await
        .map_err(|_| Response::error(&ControlError::DataPathGone))
}

/// Name every port with an fd (servers' TAPs, routers' TUNs) as a hand-over names it.
fn handed_ports(topology: &Topology) -> HashMap<topology::PortId, handover::HandedPort> {
    let servers = topology.servers.iter().map(|s| {
        let name = s.name.clone();
        (s.id, handover::HandedPort::Server { name })
    });
    let routers = topology
        .tenants
        .iter()
        .filter(|t| t.is_routed())
        .filter_map(|t| {
            let tenant = t.name.clone();
            Some((
                t.uplink.as_ref()?.port,
                handover::HandedPort::Uplink { tenant },
            ))
        });
    servers.chain(routers).collect()
}

/// A routed tenant's uplink status from its uplink port's counters and `rates` (upload
/// leaves the switch through that port, download enters there) and the uplink shapers'
/// gauges of tenant index `tenant`; entitlements are filled in later.
fn uplink_status(
    uplink: &crate::topology::TenantUplink,
    stats: &Stats,
    tenant: usize,
    rates: Rates,
) -> UplinkStatus {
    let port = stats.ports.get(uplink.port.index());
    let counters = port.map(|c| c.snapshot()).unwrap_or_default();
    let shaped = |gauges: &[Arc<crate::stats::ShaperGauges>]| {
        gauges.get(tenant).map(|g| g.snapshot()).unwrap_or_default()
    };
    let (up, down) = (shaped(&stats.upload), shaped(&stats.download));
    UplinkStatus {
        guaranteed_bps: uplink.guaranteed.bits_per_sec(),
        ceiling_bps: uplink.ceiling.bits_per_sec(),
        weight: uplink.weight,
        upload: DirectionStatus {
            bytes: counters.tx_bytes,
            rate_100ms_bps: rates.out_100ms_bps,
            rate_1s_bps: rates.out_1s_bps,
            queued_bytes: up.queued_bytes,
            dropped_bytes: up.dropped_bytes,
            marked_frames: up.marked_frames,
            cut_frames: up.cut_frames,
            entitlement_bps: 0,
        },
        download: DirectionStatus {
            bytes: counters.rx_bytes,
            rate_100ms_bps: rates.in_100ms_bps,
            rate_1s_bps: rates.in_1s_bps,
            queued_bytes: down.queued_bytes,
            dropped_bytes: down.dropped_bytes,
            marked_frames: down.marked_frames,
            cut_frames: down.cut_frames,
            entitlement_bps: 0,
        },
    }
}

/// Fill in each routed tenant's entitlement on the uplink, per direction: the same
/// water-filling as the host's, over the uplink's capacity, among the tenants active in that
/// direction (sending above 1% of their uplink guarantee, or with frames queued).
fn uplink_entitlements(capacity: u64, tenants: &mut [TenantStatus]) {
    type Pick = fn(&mut UplinkStatus) -> &mut DirectionStatus;
    let directions: [Pick; 2] = [|u| &mut u.upload, |u| &mut u.download];
    for direction in directions {
        let demands: Vec<Demand> = tenants
            .iter_mut()
            .filter_map(|t| t.uplink.as_mut())
            .map(|u| {
                let (guaranteed, ceiling, weight) = (u.guaranteed_bps, u.ceiling_bps, u.weight);
                let d = direction(u);
                Demand {
                    guaranteed,
                    ceiling,
                    weight,
                    active: d.queued_bytes > 0
                        || u128::from(d.rate_100ms_bps) * 100 > u128::from(guaranteed),
                }
            })
            .collect();
        let owed = report::entitlement(capacity, &demands);
        for (u, e) in tenants
            .iter_mut()
            .filter_map(|t| t.uplink.as_mut())
            .zip(owed)
        {
            direction(u).entitlement_bps = e;
        }
    }
}

/// Keep the set of servers added live up to date after an applied change.
fn track_live_servers(live: &mut BTreeSet<String>, change: Option<&Change>, new: &Topology) {
    match change {
        Some(Change::AddServer { name, .. }) => {
            live.insert(name.clone());
        }
        Some(Change::RemoveServer { name }) => {
            live.remove(name);
        }
        _ => live.retain(|n| new.server_by_name(n).is_some()),
    }
}

/// The routed tenants whose routers go (in `old`, no longer routed in `new`) and come (routed
/// in `new` only). Routers of tenants in both stay as they are ([`routing_change_not_live`]
/// refuses changes to them).
fn routers_touched(
    old: &Topology,
    new: &Topology,
) -> (Vec<crate::topology::Tenant>, Vec<crate::topology::Tenant>) {
    let routed = |t: &Topology, name: &str| t.tenant_by_name(name).is_some_and(|t| t.is_routed());
    let gone = old
        .tenants
        .iter()
        .filter(|t| t.is_routed() && !routed(new, &t.name))
        .cloned()
        .collect();
    let come = new
        .tenants
        .iter()
        .filter(|t| t.is_routed() && !routed(old, &t.name))
        .cloned()
        .collect();
    (gone, come)
}

/// Why a change to the uplink's plumbing cannot be applied live, if it cannot: the uplink's
/// interface or namespace, or an existing routed tenant's subnet, NAT or routing. Rates and
/// routed tenants coming or going are live.
fn routing_change_not_live(old: &Topology, new: &Topology) -> Option<String> {
    let place = |t: &Topology| {
        t.uplink
            .as_ref()
            .map(|u| (u.interface.clone(), u.netns.clone(), u.mode))
    };
    if place(old) != place(new) {
        return Some(
            "the [uplink] section's presence, interface, netns or mode changed; restart netd"
                .into(),
        );
    }
    let routing = |t: &crate::topology::Tenant| {
        (t.is_routed(), t.nat, t.gateway.as_ref().map(|g| g.subnet()))
    };
    old.tenants.iter().find_map(|before| {
        let after = new.tenant_by_name(&before.name)?;
        let routed = before.is_routed() || after.is_routed();
        (routed && routing(before) != routing(after)).then(|| {
            format!(
                "the routing of tenant {:?} (its gateway subnet, nat or uplink) changed; \
                 remove its servers and the tenant and add them again, or restart netd",
                before.name
            )
        })
    })
}

/// The gateway ports a change replaces: those of tenants whose gateway or servers changed
/// (their leases and routes follow), as old ids to remove and new ports to add. Other
/// tenants' gateways keep running untouched.
fn gateways_touched(
    old: &Topology,
    new: &Topology,
    diff: &Diff,
) -> (Vec<crate::topology::PortId>, Vec<Box<dyn Port>>) {
    let mut touched: BTreeSet<TenantId> = BTreeSet::new();
    touched.extend(&diff.tenants_added);
    touched.extend(&diff.tenants_removed);
    touched.extend(&diff.tenants_changed);
    let servers = diff.servers_added.iter().chain(&diff.servers_removed);
    let servers = servers
        .chain(&diff.servers_relinked)
        .chain(&diff.servers_changed);
    for id in servers {
        // A server's tenant before and after (it may have moved).
        for topology in [old, new] {
            touched.extend(
                topology
                    .servers
                    .iter()
                    .filter(|s| s.id == *id)
                    .map(|s| s.tenant),
            );
        }
    }
    let removed = touched
        .iter()
        .filter_map(|&id| old.tenant_by_id(id)?.gateway.as_ref())
        .map(|g| g.port)
        .collect();
    let added = touched
        .iter()
        .filter_map(|&id| GatewayPort::of(new, id))
        .map(|port| Box::new(port) as Box<dyn Port>)
        .collect();
    (removed, added)
}

fn result(r: Result<Applied, ControlError>) -> Response {
    match r {
        Ok(applied) => Response::ok(applied),
        Err(err) => Response::error(&err),
    }
}

/// Describe a diff as `what: old → new` lines.
pub fn describe(old: &Topology, new: &Topology, diff: &Diff) -> Vec<String> {
    let mut lines = Vec::new();
    if diff.capacity_changed {
        lines.push(format!("capacity: {} → {}", old.capacity, new.capacity));
    }
    if diff.uplink_changed {
        let capacity = |t: &Topology| t.uplink.as_ref().map(|u| u.capacity.to_string());
        let (a, b) = (capacity(old), capacity(new));
        let none = || "none".to_string();
        lines.push(format!(
            "uplink capacity: {} → {}",
            a.unwrap_or_else(none),
            b.unwrap_or_else(none)
        ));
    }
    for &id in &diff.tenants_added {
        let t = new.tenant(id);
        lines.push(format!(
            "tenant {}: added (guaranteed {}, ceiling {}, weight {}, broadcast_pps {})",
            t.name, t.guaranteed, t.ceiling, t.weight, t.broadcast_pps
        ));
    }
    for &id in &diff.tenants_changed {
        let (a, b) = (old.tenant(id), new.tenant(id));
        let mut parts = Vec::new();
        if a.guaranteed != b.guaranteed {
            parts.push(format!("guaranteed {} → {}", a.guaranteed, b.guaranteed));
        }
        if a.ceiling != b.ceiling {
            parts.push(format!("ceiling {} → {}", a.ceiling, b.ceiling));
        }
        if a.weight != b.weight {
            parts.push(format!("weight {} → {}", a.weight, b.weight));
        }
        if a.broadcast_pps != b.broadcast_pps {
            parts.push(format!(
                "broadcast_pps {} → {}",
                a.broadcast_pps, b.broadcast_pps
            ));
        }
        if let (Some(x), Some(y)) = (&a.uplink, &b.uplink) {
            // Only what changed, as for the tenant's own rates.
            if x.guaranteed != y.guaranteed {
                parts.push(format!(
                    "uplink guaranteed {} → {}",
                    x.guaranteed, y.guaranteed
                ));
            }
            if x.ceiling != y.ceiling {
                parts.push(format!("uplink ceiling {} → {}", x.ceiling, y.ceiling));
            }
            if x.weight != y.weight {
                parts.push(format!("uplink weight {} → {}", x.weight, y.weight));
            }
        }
        lines.push(format!("tenant {}: {}", b.name, parts.join(", ")));
    }
    for &id in &diff.tenants_removed {
        lines.push(format!("tenant {}: removed", old.tenant(id).name));
    }
    let remote = |t: &Topology, id| {
        t.cluster
            .iter()
            .flat_map(|c| c.remote.iter())
            .find(|r| r.id == id)
            .map(|r| {
                format!(
                    "remote server {} on host {} ({}, {})",
                    r.name, r.host, r.mac, r.ip
                )
            })
            .unwrap_or_default()
    };
    for &id in &diff.remote_added {
        lines.push(format!("{}: reachable", remote(new, id)));
    }
    for &id in &diff.remote_changed {
        lines.push(format!("{}: changed", remote(new, id)));
    }
    for &id in &diff.remote_removed {
        lines.push(format!("{}: gone", remote(old, id)));
    }
    for &id in &diff.servers_added {
        let s = new.server(id);
        lines.push(format!(
            "server {}: added (tenant {}, mac {}, ip {}, netns {})",
            s.name,
            new.tenant(s.tenant).name,
            s.mac,
            s.ip,
            s.netns
        ));
    }
    for &id in diff.servers_relinked.iter().chain(&diff.servers_changed) {
        let (a, b) = (old.server(id), new.server(id));
        let show = |t: &Topology, s: &crate::topology::Server| {
            format!(
                "tenant {} mac {} ip {} ipv6 {} mtu {} guaranteed {} ceiling {}",
                t.tenant(s.tenant).name,
                s.mac,
                s.ip,
                s.ipv6.map_or("-".to_string(), |n| n.to_string()),
                s.mtu,
                s.guaranteed.map_or("-".to_string(), |r| r.to_string()),
                s.ceiling.map_or("-".to_string(), |r| r.to_string()),
            )
        };
        lines.push(format!(
            "server {}: {} → {}",
            b.name,
            show(old, a),
            show(new, b)
        ));
    }
    for &id in &diff.servers_removed {
        lines.push(format!("server {}: removed", old.server(id).name));
    }
    lines
}
