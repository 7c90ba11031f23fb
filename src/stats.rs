//! Counters: per-port and per-tenant atomics, and the reason for every drop.
//!
//! Contract: the data path never logs per frame; it bumps a counter. Counters are plain
//! relaxed atomics: readers (shutdown summary, `--stats-interval`, the control plane)
//! may see a frame counted in one counter and not yet in another, never a torn value.
//!
//! Growth: tables are indexed by stable ids (see [`crate::topology`]). When the control plane
//! adds tenants or servers it builds a larger [`Stats`] with [`Stats::grown`], which shares
//! every existing counter (each is an `Arc`), and hands it to the data path; no count is lost
//! in the swap. Counters of removed ids stay (retired) and are no longer reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why the switch dropped a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than an Ethernet header or than its own headers claim.
    Truncated,
    /// Headers that do not parse (bad version, bad lengths, ...).
    Malformed,
    /// Longer than the port's MTU plus the Ethernet header.
    Oversized,
    /// An EtherType other than IPv4, ARP or IPv6 (VLAN tags included).
    UnsupportedEtherType,
    /// Source MAC is not the port's own.
    SpoofedMac,
    /// IPv4 source address is not the port's own.
    SpoofedIpv4,
    /// ARP sender hardware or protocol address is not the port's own.
    SpoofedArp,
    /// IPv6 source address is neither the port's address nor its link-local one, or a
    /// Neighbour Discovery message claims another node's address (NA target, link-layer
    /// address option), or is one only routers may send (Router Advertisement, Redirect).
    SpoofedIpv6,
    /// Unicast destination MAC that no port of the sender's tenant owns.
    UnknownDestination,
    /// Unicast addressed to the port it came from.
    Hairpin,
    /// The tenant's shaper queue was full.
    QueueFull,
    /// Writing to the destination TAP failed.
    WriteFailed,
    /// Broadcast/multicast above the port's storm-control limit (packets/s).
    StormControl,
    /// A GSO super-frame towards a port that takes only plain frames (it would need
    /// segmenting in software).
    GsoUnsupported,
    /// A DHCP server's answer (UDP from port 67 to 68) from a server's port: only the
    /// tenant's gateway answers DHCP.
    RogueDhcp,
    /// Longer than the destination port's MTU (a GSO super-frame: its segments), counted on
    /// the destination.
    TooBig,
}

impl DropReason {
    /// Every reason, in display order.
    pub const ALL: [DropReason; 16] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::Oversized,
        DropReason::UnsupportedEtherType,
        DropReason::SpoofedMac,
        DropReason::SpoofedIpv4,
        DropReason::SpoofedArp,
        DropReason::SpoofedIpv6,
        DropReason::UnknownDestination,
        DropReason::Hairpin,
        DropReason::QueueFull,
        DropReason::WriteFailed,
        DropReason::StormControl,
        DropReason::GsoUnsupported,
        DropReason::RogueDhcp,
        DropReason::TooBig,
    ];

    /// Return the stable snake_case name used in logs, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::Oversized => "oversized",
            DropReason::UnsupportedEtherType => "unsupported_ethertype",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIpv4 => "spoofed_ipv4",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedIpv6 => "spoofed_ipv6",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::Hairpin => "hairpin",
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
            DropReason::StormControl => "storm_control",
            DropReason::GsoUnsupported => "gso_unsupported",
            DropReason::RogueDhcp => "rogue_dhcp",
            DropReason::TooBig => "too_big",
        }
    }

    /// Return the position in [`DropReason::ALL`], for indexing per-reason counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const REASONS: usize = DropReason::ALL.len();

/// Frames and bytes in each direction plus drops by reason, as relaxed atomics; for a port
/// also its failed reads (failed writes are the `write_failed` drops).
#[derive(Debug, Default)]
pub struct Counters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    drops: [AtomicU64; REASONS],
    /// Reads from the port that failed (other than "nothing to read"). The data path gives a
    /// port up at its first, so a port is down exactly when this is not zero.
    pub read_errors: AtomicU64,
    /// Times the port was muted for sending more frames netd had to drop than its budget
    /// (see [`crate::quarantine`]).
    pub quarantines: AtomicU64,
}

/// A point-in-time copy of [`Counters`], for printing and serialising.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub read_errors: u64,
    pub quarantines: u64,
    /// Non-zero drop counts by reason name.
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

impl Counters {
    /// Count one frame received by the switch.
    #[inline]
    pub fn count_rx(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count one frame sent by the switch.
    #[inline]
    pub fn count_tx(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count one dropped frame.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a failed read (the data path then stops serving the port).
    pub fn count_read_error(&self) {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a quarantine of the port.
    pub fn count_quarantine(&self) {
        self.quarantines.fetch_add(1, Ordering::Relaxed);
    }

    /// Return true while the data path serves the port: no read of it has failed.
    pub fn is_up(&self) -> bool {
        self.read_errors.load(Ordering::Relaxed) == 0
    }

    /// Return how many frames were dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Copy every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            read_errors: self.read_errors.load(Ordering::Relaxed),
            quarantines: self.quarantines.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r.as_str(), self.drops(r)))
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }
}

/// Why the VXLAN tunnel dropped a datagram before any switch port saw it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelDrop {
    /// It came from an address that is not one of the cluster's hosts.
    NotAHost,
    /// Too short for a VXLAN header and an Ethernet header, or without a VNI (I flag).
    Malformed,
    /// Its VNI is none of this host's tenants'.
    UnknownVni,
    /// Its inner source MAC is none of that tenant's servers on the host it came from.
    UnknownSender,
}

impl TunnelDrop {
    pub const ALL: [TunnelDrop; 4] = [
        TunnelDrop::NotAHost,
        TunnelDrop::Malformed,
        TunnelDrop::UnknownVni,
        TunnelDrop::UnknownSender,
    ];

    /// Return the reason's name in metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelDrop::NotAHost => "not_a_host",
            TunnelDrop::Malformed => "malformed",
            TunnelDrop::UnknownVni => "unknown_vni",
            TunnelDrop::UnknownSender => "unknown_sender",
        }
    }
}

/// The VXLAN tunnel's own counters (what its ports' counters cannot say).
#[derive(Debug, Default)]
pub struct TunnelCounters {
    pub rx_datagrams: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_datagrams: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Sends the kernel refused (no route, buffer full).
    pub tx_errors: AtomicU64,
    drops: [AtomicU64; 4],
}

impl TunnelCounters {
    /// Count one dropped datagram.
    pub fn count_drop(&self, reason: TunnelDrop) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Return how many datagrams were dropped for `reason`.
    pub fn drops(&self, reason: TunnelDrop) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// Count `datagrams` received, of `len` bytes in all.
    pub fn count_rx(&self, datagrams: usize, len: usize) {
        self.rx_datagrams
            .fetch_add(datagrams as u64, Ordering::Relaxed);
        self.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Count `datagrams` sent, of `len` bytes in all.
    pub fn count_tx(&self, datagrams: usize, len: usize) {
        self.tx_datagrams
            .fetch_add(datagrams as u64, Ordering::Relaxed);
        self.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// Frames the bridged uplink's trunk dropped before any port saw them.
#[derive(Debug, Default)]
pub struct TrunkCounters {
    /// Without a VLAN tag.
    pub untagged: AtomicU64,
    /// On a VLAN of no tenant.
    pub unknown_vlan: AtomicU64,
}

/// How the data-path thread is scheduled now, published by the loop when it changes.
#[derive(Debug, Default)]
pub struct DataPathGauges {
    /// The real-time priority it runs at (0: normal priority).
    pub realtime_priority: AtomicU64,
    /// Times it stepped down to normal priority, busy past its real-time budget.
    pub step_downs: AtomicU64,
}

/// The shaper's view of one tenant, copied out by the data path every few tens of ms.
#[derive(Debug, Default)]
pub struct ShaperGauges {
    pub own_bytes: AtomicU64,
    pub borrowed_bytes: AtomicU64,
    pub queued_frames: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub dropped_frames: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub marked_frames: AtomicU64,
    pub cut_frames: AtomicU64,
}

/// A copy of [`ShaperGauges`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShaperSnapshot {
    /// Bytes sent on the tenant's own (guaranteed) tokens.
    pub own_bytes: u64,
    /// Bytes sent on tokens borrowed from idle tenants.
    pub borrowed_bytes: u64,
    pub queued_frames: u64,
    pub queued_bytes: u64,
    pub dropped_frames: u64,
    pub dropped_bytes: u64,
    /// Frames marked Congestion Experienced (ECN) to slow their sender down.
    pub marked_frames: u64,
    /// TCP super-frames that lost one segment to slow their sender down.
    pub cut_frames: u64,
}

impl ShaperGauges {
    /// Store the shaper's counters for this tenant.
    pub fn publish(&self, c: &crate::shaper::TenantCounters) {
        self.own_bytes.store(c.own_bytes, Ordering::Relaxed);
        self.borrowed_bytes
            .store(c.borrowed_bytes, Ordering::Relaxed);
        self.queued_frames.store(c.queued_frames, Ordering::Relaxed);
        self.queued_bytes.store(c.queued_bytes, Ordering::Relaxed);
        self.dropped_frames
            .store(c.dropped_frames, Ordering::Relaxed);
        self.dropped_bytes.store(c.dropped_bytes, Ordering::Relaxed);
        self.marked_frames.store(c.marked_frames, Ordering::Relaxed);
        self.cut_frames.store(c.cut_frames, Ordering::Relaxed);
    }

    /// Copy the gauges.
    pub fn snapshot(&self) -> ShaperSnapshot {
        ShaperSnapshot {
            own_bytes: self.own_bytes.load(Ordering::Relaxed),
            borrowed_bytes: self.borrowed_bytes.load(Ordering::Relaxed),
            queued_frames: self.queued_frames.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
            dropped_frames: self.dropped_frames.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
            marked_frames: self.marked_frames.load(Ordering::Relaxed),
            cut_frames: self.cut_frames.load(Ordering::Relaxed),
        }
    }
}

/// Counters for every port (index = `PortId`) and every tenant (index = `TenantId`).
///
/// A frame is counted as rx on its ingress port and tenant, as tx on each egress port and
/// tenant, and a drop on the ingress port and tenant.
#[derive(Debug)]
pub struct Stats {
    pub ports: Vec<Arc<Counters>>,
    pub tenants: Vec<Arc<Counters>>,
    /// The shaper's per-tenant counters (index = `TenantId`).
    pub shaper: Vec<Arc<ShaperGauges>>,
    /// The uplink shapers' per-tenant counters, per direction (index = `TenantId`).
    pub upload: Vec<Arc<ShaperGauges>>,
    pub download: Vec<Arc<ShaperGauges>>,
    /// The data-path thread's scheduling.
    pub datapath: Arc<DataPathGauges>,
    /// The VXLAN tunnel's, on a host of a cluster.
    pub tunnel: Arc<TunnelCounters>,
    /// The bridged uplink's trunk's.
    pub trunk: Arc<TrunkCounters>,
}

impl Stats {
    /// Create zeroed counters for `ports` ports and `tenants` tenants.
    pub fn new(ports: usize, tenants: usize) -> Stats {
        Stats {
            ports: (0..ports).map(|_| Arc::default()).collect(),
            tenants: (0..tenants).map(|_| Arc::default()).collect(),
            shaper: (0..tenants).map(|_| Arc::default()).collect(),
            upload: (0..tenants).map(|_| Arc::default()).collect(),
            download: (0..tenants).map(|_| Arc::default()).collect(),
            datapath: Arc::default(),
            tunnel: Arc::default(),
            trunk: Arc::default(),
        }
    }

    /// Return a copy sharing every existing counter, with zeroed ones appended up to `ports`
    /// ports and `tenants` tenants (never shrinks).
    pub fn grown(&self, ports: usize, tenants: usize) -> Stats {
        fn grow<T: Default>(v: &[Arc<T>], len: usize) -> Vec<Arc<T>> {
            let mut out = v.to_vec();
            while out.len() < len {
                out.push(Arc::default());
            }
            out
        }
        Stats {
            ports: grow(&self.ports, ports),
            tenants: grow(&self.tenants, tenants),
            shaper: grow(&self.shaper, tenants),
            upload: grow(&self.upload, tenants),
            download: grow(&self.download, tenants),
            datapath: self.datapath.clone(),
            tunnel: self.tunnel.clone(),
            trunk: self.trunk.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r}");
        }
    }

    #[test]
    fn grown_shares_existing_counters() {
        let stats = Stats::new(1, 1);
        stats.ports[0].count_rx(10);
        let grown = stats.grown(3, 2);
        assert_eq!(
            (grown.ports.len(), grown.tenants.len(), grown.shaper.len()),
            (3, 2, 2)
        );
        grown.ports[0].count_rx(5);
        assert_eq!(stats.ports[0].snapshot().rx_bytes, 15, "same counter");
        assert_eq!(stats.grown(0, 0).ports.len(), 1, "never shrinks");
    }

    #[test]
    fn snapshot_lists_only_nonzero_drops() {
        let c = Counters::default();
        c.count_rx(100);
        c.count_drop(DropReason::SpoofedMac);
        c.count_drop(DropReason::SpoofedMac);
        let s = c.snapshot();
        assert_eq!((s.rx_frames, s.rx_bytes), (1, 100));
        assert_eq!(s.drops.get("spoofed_mac"), Some(&2));
        assert_eq!(s.drops.len(), 1);
    }
}
