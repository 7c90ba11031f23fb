//! `netd up`: build the kernel side of a topology, run the data path, tear down on shutdown.
//!
//! Contract: [`up`] returns only after everything it created is removed again, whether the
//! shutdown future fired, the data path failed, or start-up failed half-way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::datapath::DataPath;
use crate::kernel::{self, KernelError};
use crate::port::TapPort;
use crate::shaper::ShaperConfig;
use crate::stats::Stats;
use crate::switch::Switch;
use crate::topology::Topology;
use crate::wire::vnet::VNET_HDR_LEN;

/// Options of `netd up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Log every counter at this interval.
    pub stats_interval: Option<Duration>,
    /// Use TAP offloads (virtio-net header, checksum/TSO/USO): 64 KiB frames instead of MTU.
    pub offload: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            stats_interval: None,
            offload: true,
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
}

/// Run `topology` until `shutdown` completes; return the final counters.
pub async fn up(
    topology: Topology,
    options: UpOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<Stats>, DaemonError> {
    let vnet_hdr_len = options.offload.then_some(VNET_HDR_LEN);
    let mut plumbing = kernel::bring_up(&topology, vnet_hdr_len)?;
    let ports = plumbing
        .take_taps()
        .into_iter()
        .map(|tap| TapPort::new(tap.port, tap.file))
        .collect();
    let stats = Arc::new(Stats::new(topology.servers.len(), topology.tenants.len()));
    let (datapath, stop) = DataPath::new(
        Switch::new(&topology),
        ShaperConfig::from_topology(&topology),
        ports,
        vnet_hdr_len.unwrap_or(0),
        stats.clone(),
    )
    .map_err(DaemonError::StartDataPath)?;
    let thread = datapath.spawn().map_err(DaemonError::StartDataPath)?;
    let mut finished = tokio::task::spawn_blocking(move || thread.join());
    info!(
        topology = %topology.name,
        tenants = topology.tenants.len(),
        servers = topology.servers.len(),
        "netd is up"
    );

    let mut ticker = options.stats_interval.map(tokio::time::interval);
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("shutting down");
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
                log_stats(&topology, &stats);
            }
        }
    };
    if let Err(err) = &result {
        error!(cause = %err, "stopping after a data path failure");
    }
    log_stats(&topology, &stats);
    plumbing.tear_down();
    info!("removed every namespace and TAP netd created");
    result.map(|()| stats)
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
