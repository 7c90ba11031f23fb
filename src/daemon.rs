//! `netd up`: build the kernel side of a topology, run the data path, tear down on shutdown.
//!
//! Contract: [`up`] returns only after everything it created is removed again (namespaces,
//! TAPs, the control socket), whether the shutdown future fired, the data path failed, or
//! start-up failed half-way. It refuses to start, creating nothing, when another live daemon
//! serves its control socket.
//!
//! While running, the control plane ([`crate::control`]) serves the Unix socket (and the HTTP
//! API when asked), samples counters for the sliding-window rates, and SIGHUP re-reads the
//! topology file and applies the difference, like `netd reload`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::control::auth::{AuthError, HttpAuth, Token};
use crate::control::{self, Control, ControlError, rates};

use crate::datapath::Priority;
use crate::datapath::threads::{self, Group};
use crate::gateway::GatewayPort;
use crate::handover;
use crate::kernel::{self, KernelError, Plumbing};
use crate::port::{Offload, Port, TapPort, UplinkPort};
use crate::shaper::Shaping;
use crate::stats::Stats;
use crate::switch::Switch;
use crate::topology::Topology;

/// Options of `netd up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Log every counter at this interval.
    pub stats_interval: Option<Duration>,
    /// Use TAP offloads (virtio-net header, checksum/TSO/USO): 64 KiB frames instead of MTU.
    pub offload: bool,
    /// Control socket path (default `/run/netd/<topology name>.sock`).
    pub socket: Option<PathBuf>,
    /// Serve the HTTP API on this address.
    pub http: Option<SocketAddr>,
    /// Allow a non-loopback HTTP address.
    pub http_allow_public: bool,
    /// Read the HTTP API's admin token from this file (default: generate one and write it to
    /// `<run dir>/<topology>.http-token`).
    pub http_token_file: Option<PathBuf>,
    /// Read a token that grants `GET /metrics` only from this file.
    pub metrics_token_file: Option<PathBuf>,
    /// Pin the data-path thread to this CPU.
    pub datapath_cpu: Option<usize>,
    /// Schedule the data-path thread so (`None`: real-time where the kernel allows it).
    pub datapath_priority: Option<Priority>,
    /// How many data-path loops share the servers' ports (1: one loop owns every port).
    pub datapath_threads: usize,
    /// Take the TAPs over from the netd running this topology ([`crate::handover`]).
    pub take_over: bool,
    /// How this daemon was started, so `netd upgrade` can start the installed binary alike.
    pub relaunch: Option<control::Relaunch>,
    /// For a host of a cluster: the store it follows and its name there.
    pub cluster: Option<ClusterOptions>,
}

/// How a host of a cluster follows the cluster's state.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub store: crate::store::StoreConfig,
    /// This host's name in `[hosts]`.
    pub host: String,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            stats_interval: None,
            offload: true,
            socket: None,
            http: None,
            http_allow_public: false,
            http_token_file: None,
            metrics_token_file: None,
            datapath_cpu: None,
            datapath_priority: None,
            datapath_threads: 1,
            take_over: false,
            relaunch: None,
            cluster: None,
        }
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("Cannot start the data path")]
    StartDataPath(#[source] std::io::Error),
    #[error("The data path failed")]
    DataPath(#[source] std::io::Error),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("Cannot serve HTTP on {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot install the SIGHUP handler")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    HandOver(#[from] handover::HandOverError),
    #[error("The topology handed over does not fit: {0}")]
    HandedTopology(String),
    #[error("--datapath-threads {threads}: {why}")]
    Threads { threads: usize, why: String },
}

/// Removes a file netd created (control socket, token) when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stops the data path when dropped, unless disarmed.
struct StopOnDrop(Option<crate::datapath::StopHandle>);

impl StopOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            stop.stop();
        }
    }
}

/// Aborts a task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `topology` until `shutdown` completes; return the final counters.
pub async fn up(
    topology: Topology,
    options: UpOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<Stats>, DaemonError> {
    let socket_path = options
        .socket
        .clone()
        .unwrap_or_else(|| control::socket::socket_path(&topology.name));
    if let Some(addr) = options.http {
        control::http::check_addr(addr, options.http_allow_public)?;
    }
    // Root, /dev/net/tun and iproute2 first: the clearest refusal (and the socket needs root).
    kernel::check_privileges()?;
    let threads = options.datapath_threads.max(1);
    if let Some(why) = threads::refusal(&topology, threads) {
        return Err(DaemonError::Threads { threads, why });
    }
    // The operator's token files are read before anything exists, so a bad one creates nothing.
    let operator_tokens = options
        .http
        .map(|_| read_operator_tokens(&options))
        .transpose()?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    // Claim the socket before creating anything: a second daemon for the same topology stops
    // here. Taking over, the old daemon still holds it: bound once it has gone (below).
    let (topology, prepared, start, mut plumbing) = if options.take_over {
        let (topology, prepared, taken) = take_over(topology, &socket_path, threads)?;
        (
            topology,
            prepared,
            Start::TakingOver(taken),
            Plumbing::default(),
        )
    } else {
        let endpoints = Endpoints::bind(
            &socket_path,
            &options,
            operator_tokens.as_ref(),
            &topology.name,
        )
        .await?;
        let offload = Offload::with_header(options.offload);
        let mut plumbing = kernel::bring_up(&topology, offload)?;
        let ports = kernel_ports(&mut plumbing, offload);
        let mut prepared = prepare(&topology, ports, offload, threads)?;
        let shared = crate::port::shared_ports(&topology, &plumbing, offload, &prepared.stats)
            .and_then(|ports| prepared.datapath.attach(ports));
        shared.map_err(DaemonError::StartDataPath)?;
        (topology, prepared, Start::Fresh(endpoints), plumbing)
    };
    let Prepared {
        datapath,
        stop,
        stats,
        offload,
    } = prepared;
    let updates = datapath.update_handle();
    let (thread, priority) = datapath
        .spawn(options.datapath_cpu, options.datapath_priority)
        .map_err(DaemonError::StartDataPath)?;
    info!(%priority, cpu = options.datapath_cpu, threads, "data path running");
    let mut finished = tokio::task::spawn_blocking(move || thread.join());
    // Until the loop below owns it: an early return stops the data path, or the process
    // would wait for its thread forever, still reading the TAPs.
    let early_exit = StopOnDrop(Some(stop.clone()));
    let endpoints = match start {
        Start::Fresh(endpoints) => endpoints,
        Start::TakingOver(taken) => {
            let stopped_at = taken.offer.stopped_at_usec;
            let gap_us = kernel::sys::monotonic_usec().saturating_sub(stopped_at);
            info!(
                gap_ms = gap_us as f64 / 1000.0,
                ports = taken.offer.ports.len(),
                "took the ports over: forwarding again"
            );
            // From here the servers are ours: whatever fails, they must not be torn down.
            taken
                .confirm()
                .map_err(|e| DaemonError::HandOver(e.into()))?;
            plumbing = Plumbing::handed_over(&topology);
            match Endpoints::bind(
                &socket_path,
                &options,
                operator_tokens.as_ref(),
                &topology.name,
            )
            .await
            {
                Ok(bound) => bound,
                Err(err) => {
                    plumbing.release();
                    error!("servers left running: `netd up FILE` adopts them");
                    return Err(err);
                }
            }
        }
    };
    early_exit.disarm();
    let Endpoints {
        listener,
        http,
        http_auth,
        _socket_file,
    } = endpoints;
    let mut control = Control::new(
        topology.clone(),
        std::mem::take(&mut plumbing),
        updates,
        offload,
        stats.clone(),
    );
    if let Some(relaunch) = options.relaunch.clone() {
        control = control.with_relaunch(relaunch);
    }
    let health = options.cluster.as_ref().map(|c| {
        let health = crate::store::follow::StoreHealth {
            host: c.host.clone(),
            ..Default::default()
        };
        Arc::new(std::sync::Mutex::new(health))
    });
    if let Some(health) = &health {
        control = control.with_store_health(health.clone());
    }
    let health_for_leave = health.clone();
    let control = Arc::new(control);
    let follower = options
        .cluster
        .clone()
        .zip(health)
        .map(|(cluster, health)| {
            let follow =
                crate::store::follow::run(control.clone(), cluster.store, cluster.host, health);
            Task(tokio::spawn(follow))
        });
    let _socket_task = Task(tokio::spawn(control::socket::serve(
        listener,
        control.clone(),
        control::socket::Limits::default(),
    )));
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let _http_task = http.zip(http_auth.as_ref()).map(|(listener, setup)| {
        let limits = control::http::HttpLimits::default();
        let router = control::http::router(control.clone(), setup.auth.clone(), limits);
        Task(tokio::spawn(control::http::serve(listener, router, limits)))
    });
    let _sampler = {
        let control = control.clone();
        Task(tokio::spawn(async move {
            let mut every = tokio::time::interval(rates::SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                control.sample();
            }
        }))
    };
    info!(
        topology = %topology.name,
        tenants = topology.tenants.len(),
        servers = topology.servers.len(),
        socket = %socket_path.display(),
        http = http_addr.map(|a| a.to_string()),
        http_token = http_auth.as_ref().map(|s| s.token_file.display().to_string()),
        "netd is up"
    );

    let notifier = crate::systemd::Notifier::from_env().map(Arc::new);
    notify(
        notifier.as_deref(),
        &format!("READY=1\nSTATUS=serving {} servers", topology.servers.len()),
    );
    let _watchdog = notifier
        .clone()
        .zip(crate::systemd::watchdog_interval())
        .map(|(notifier, interval)| {
            // Half the interval, as sd_watchdog_enabled(3) advises. The task runs only while
            // the control plane's runtime does; the data path's death ends `up` (below).
            Task(tokio::spawn(async move {
                let mut every = tokio::time::interval(interval / 2);
                loop {
                    every.tick().await;
                    notify(Some(&notifier), "WATCHDOG=1");
                }
            }))
        });
    let mut ticker = options.stats_interval.map(tokio::time::interval);
    tokio::pin!(shutdown);
    let mut handed_over = false;
    let result = loop {
        tokio::select! {
            successor = control.handed_over() => {
                // The new netd polls the TAPs now; ours are closed. Only gateways are left.
                handed_over = true;
                // Under systemd the new netd becomes the unit's main process.
                if let Some(pid) = successor {
                    notify(notifier.as_deref(), &format!("MAINPID={pid}"));
                }
                stop.stop();
                let _ = (&mut finished).await;
                break Ok(());
            }
            () = &mut shutdown => {
                info!("shutting down");
                notify(notifier.as_deref(), "STOPPING=1");
                stop.stop();
                let _ = (&mut finished).await;
                break Ok(());
            }
            joined = &mut finished => {
                break match joined {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(err))) => Err(DaemonError::DataPath(err)),
                    _ => Err(DaemonError::DataPath(std::io::Error::other("data path thread panicked"))),
                };
            }
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                log_stats(&control.topology().await, &control.stats());
            }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the topology file");
                let reloading = format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    crate::kernel::sys::monotonic_usec()
                );
                notify(notifier.as_deref(), &reloading);
                // The outcome (applied or rejected, and why) is logged by the control plane.
                let _ = control.reload("sighup", false).await;
                notify(notifier.as_deref(), "READY=1");
            }
        }
    };
    if let Err(err) = &result {
        error!(cause = %err, "stopping after a data path failure");
    }
    // No more changes from the store while tearing down (nor a new lease after leaving).
    drop(follower);
    log_stats(&control.topology().await, &control.stats());
    if handed_over {
        info!("handed over: the servers run on under the new netd");
    } else if result.is_err() {
        // A failure is a crash, not a stop: the servers stay for the next netd to adopt.
        control.release().await;
        error!("the servers stay up: `netd up FILE` adopts them, `netd down FILE` removes them");
    } else {
        control.tear_down().await;
        info!("removed every namespace and TAP netd created");
        // Its servers are gone: tell the other hosts now, not when the lease would expire.
        if let (Some(cluster), Some(health)) = (&options.cluster, &health_for_leave) {
            crate::store::follow::leave(&cluster.store, health).await;
        }
    }
    result.map(|()| control.stats())
}

/// How `up` starts: from nothing, its endpoints bound; or taking the ports over from a
/// running netd, binding its endpoints once that one has gone.
enum Start {
    Fresh(Endpoints),
    TakingOver(handover::Taken),
}

/// A data path built and ready to spawn, with its counters.
struct Prepared {
    datapath: Group,
    stop: crate::datapath::StopHandle,
    stats: Arc<Stats>,
    /// What the servers' TAPs carry.
    offload: Offload,
}

/// Build the data path of `topology` around `ports` (plus the tenants' gateways).
fn prepare(
    topology: &Topology,
    mut ports: Vec<Box<dyn Port>>,
    offload: Offload,
    threads: usize,
) -> Result<Prepared, DaemonError> {
    for tenant in &topology.tenants {
        if let Some(gateway) = GatewayPort::of(topology, tenant.id) {
            ports.push(Box::new(gateway));
        }
    }
    let stats = Arc::new(Stats::new(
        topology.port_id_bound(),
        topology.tenant_id_bound(),
    ));
    let (datapath, stop) = Group::new(
        threads,
        Switch::new(topology),
        Shaping::from_topology(topology),
        ports,
        stats.clone(),
    )
    .map_err(DaemonError::StartDataPath)?;
    Ok(Prepared {
        datapath,
        stop,
        stats,
        offload,
    })
}

/// Take the ports over from the daemon on `socket_path`; return the topology it runs (live
/// changes included, read as if from `file_topology`'s file), the data path with them
/// attached, ready to spawn, and the hand-over to confirm once it runs.
///
/// Everything that does not need the ports is built before asking for them (the shapers'
/// queues of a thousand servers take 20 ms to allocate): usually the running state is the
/// file, as live changes are written back to it; if not, it is built again from the state.
fn take_over(
    file_topology: Topology,
    socket_path: &std::path::Path,
    threads: usize,
) -> Result<(Topology, Prepared, handover::Taken), DaemonError> {
    let file_text = toml::to_string(&file_topology.to_file()).unwrap_or_default();
    let early = prepare(&file_topology, Vec::new(), Offload::None, threads)?;
    let mut taken = handover::take(socket_path)?;
    let offload = Offload::with_header(taken.offer.vnet_header);
    let built = if taken.offer.topology == file_text {
        Ok((file_topology, early))
    } else {
        drop(early);
        warn!("the running topology differs from the file: building its data path in the gap");
        crate::topology::parse(&file_topology.source, &taken.offer.topology)
            .map_err(|errors| {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                DaemonError::HandedTopology(errors.join("; "))
            })
            .and_then(|topology| {
                if let Some(why) = threads::refusal(&topology, threads) {
                    return Err(DaemonError::Threads { threads, why });
                }
                let prepared = prepare(&topology, Vec::new(), offload, threads)?;
                Ok((topology, prepared))
            })
    };
    let attached = built.and_then(|(topology, mut prepared)| {
        let ports = handed_ports(&topology, &mut taken, offload)?;
        prepared
            .datapath
            .attach(ports)
            .map_err(DaemonError::StartDataPath)?;
        prepared.offload = offload;
        Ok((topology, prepared))
    });
    match attached {
        Ok((topology, prepared)) => Ok((topology, prepared, taken)),
        Err(err) => {
            taken.abort();
            Err(err)
        }
    }
}

/// Turn the handed-over fds into ports of `topology`: every server's TAP and every routed
/// tenant's TUN must be there.
fn handed_ports(
    topology: &Topology,
    taken: &mut handover::Taken,
    offload: Offload,
) -> Result<Vec<Box<dyn Port>>, DaemonError> {
    let fds = std::mem::take(&mut taken.fds);
    let mut ports: Vec<Box<dyn Port>> = Vec::with_capacity(fds.len());
    for (name, fd) in taken.offer.ports.iter().zip(fds) {
        let file = std::fs::File::from(fd);
        let unknown = || DaemonError::HandedTopology(format!("{name:?} is not in the topology"));
        match name {
            handover::HandedPort::Server { name } => {
                let server = topology.server_by_name(name).ok_or_else(unknown)?;
                ports.push(Box::new(TapPort::new(server.id, file, offload)));
            }
            handover::HandedPort::Uplink { tenant } => {
                let tenant = topology.tenant_by_name(tenant).ok_or_else(unknown)?;
                let (Some(routed), Some(gateway)) = (&tenant.uplink, &tenant.gateway) else {
                    return Err(unknown());
                };
                ports.push(Box::new(UplinkPort::new(
                    routed.port,
                    file,
                    offload,
                    gateway.mac,
                )));
            }
        }
    }
    let expected =
        topology.servers.len() + topology.tenants.iter().filter(|t| t.is_routed()).count();
    if ports.len() != expected {
        return Err(DaemonError::HandedTopology(format!(
            "{} ports handed over, the topology has {expected}",
            ports.len()
        )));
    }
    Ok(ports)
}

/// The servers' TAP ports and the routers' TUN ports `plumbing` made.
fn kernel_ports(plumbing: &mut Plumbing, offload: Offload) -> Vec<Box<dyn Port>> {
    let mut ports: Vec<Box<dyn Port>> = plumbing
        .take_taps()
        .into_iter()
        .map(|tap| Box::new(TapPort::new(tap.port, tap.file, offload)) as Box<dyn Port>)
        .collect();
    for tun in plumbing.take_uplinks() {
        let port = UplinkPort::new(tun.port, tun.file, offload, tun.gateway_mac);
        ports.push(Box::new(port));
    }
    ports
}

/// Where the control plane listens: the control socket, and HTTP when asked.
struct Endpoints {
    listener: tokio::net::UnixListener,
    http: Option<tokio::net::TcpListener>,
    http_auth: Option<HttpAuthSetup>,
    _socket_file: RemoveOnDrop,
}

impl Endpoints {
    async fn bind(
        socket_path: &std::path::Path,
        options: &UpOptions,
        tokens: Option<&OperatorTokens>,
        name: &str,
    ) -> Result<Endpoints, DaemonError> {
        let listener = control::socket::bind(socket_path)?;
        let socket_file = RemoveOnDrop(socket_path.to_path_buf());
        let http = match options.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Http { addr, source })?,
            ),
            None => None,
        };
        let http_auth = tokens
            .map(|tokens| http_auth(tokens.clone(), socket_path, name))
            .transpose()?;
        Ok(Endpoints {
            listener,
            http,
            http_auth,
            _socket_file: socket_file,
        })
    }
}

/// Tell systemd `state` when netd runs under a `Type=notify` unit; a failure is logged, never
/// fatal (a supervisor that stopped listening must not stop the network).
fn notify(notifier: Option<&crate::systemd::Notifier>, state: &str) {
    if let Some(notifier) = notifier
        && let Err(err) = notifier.send(state)
    {
        warn!(cause = %err, state, "cannot notify systemd");
    }
}

/// The tokens an operator named in files: admin (if given) and metrics.
#[derive(Clone)]
struct OperatorTokens {
    admin: Option<(Token, PathBuf)>,
    metrics: Option<Token>,
}

/// Read the token files the operator named.
fn read_operator_tokens(options: &UpOptions) -> Result<OperatorTokens, AuthError> {
    let admin = match &options.http_token_file {
        Some(path) => Some((Token::read_file(path)?, path.clone())),
        None => None,
    };
    let metrics = match &options.metrics_token_file {
        Some(path) => Some(Token::read_file(path)?),
        None => None,
    };
    Ok(OperatorTokens { admin, metrics })
}

/// The HTTP API's authentication as `up` set it up.
struct HttpAuthSetup {
    auth: HttpAuth,
    /// Where the admin token is (logged, for the operator).
    token_file: PathBuf,
    /// Removes the token file on exit when netd wrote it.
    _generated: Option<RemoveOnDrop>,
}

/// Build the HTTP API's authentication: the operator's admin token, or a fresh one written
/// beside the control socket.
fn http_auth(
    tokens: OperatorTokens,
    socket_path: &std::path::Path,
    name: &str,
) -> Result<HttpAuthSetup, AuthError> {
    let (admin, token_file, generated) = match tokens.admin {
        Some((token, path)) => (token, path, None),
        None => {
            let path = control::auth::token_path(socket_path, name);
            let token = Token::generate()?;
            token.write_file(&path)?;
            (token, path.clone(), Some(RemoveOnDrop(path)))
        }
    };
    Ok(HttpAuthSetup {
        auth: HttpAuth::new(admin, tokens.metrics)?,
        token_file,
        _generated: generated,
    })
}

/// Log every tenant's and port's counters, one line each.
pub fn log_stats(topology: &Topology, stats: &Stats) {
    for tenant in &topology.tenants {
        let s = stats.tenants[tenant.id.index()].snapshot();
        let shaped = stats.shaper[tenant.id.index()].snapshot();
        info!(
            tenant = %tenant.name,
            rx_frames = s.rx_frames, rx_bytes = s.rx_bytes,
            tx_frames = s.tx_frames, tx_bytes = s.tx_bytes,
            drops = ?s.drops,
            own_bytes = shaped.own_bytes, borrowed_bytes = shaped.borrowed_bytes,
            queued_bytes = shaped.queued_bytes, shaper_dropped_frames = shaped.dropped_frames,
            "tenant counters"
        );
    }
    for server in &topology.servers {
        let s = stats.ports[server.id.index()].snapshot();
        info!(
            server = %server.name,
            rx_frames = s.rx_frames, rx_bytes = s.rx_bytes,
            tx_frames = s.tx_frames, tx_bytes = s.tx_bytes,
            drops = ?s.drops,
            "port counters"
        );
    }
}
