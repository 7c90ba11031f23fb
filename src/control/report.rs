//! What the control plane reports: status, counters, entitlement and Prometheus text.
//!
//! Contract: everything here is pure and serialisable; the same [`Status`] and
//! [`StatsReport`] values back `netd status`, `netd stats`, the JSON endpoints and
//! `/metrics`, so every view says the same thing.
//!
//! Entitlement ([`entitlement`]): what the shaper owes each tenant right now, computed from
//! the configured rates and which tenants are active (sent in the last 100 ms, or have
//! frames queued): active tenants get their guarantee plus a weighted water-filled share of
//! the capacity the others leave, capped at their ceiling; an idle tenant is owed its
//! guarantee (it is there the moment it sends), which the others may use meanwhile.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

pub use crate::shaper::entitlement::{Demand, entitlement};
use crate::stats::{CounterSnapshot, DropReason, ShaperSnapshot};

/// Status of the whole daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub topology: String,
    pub source: String,
    pub capacity_bps: u64,
    pub uptime_secs: f64,
    pub tenants: Vec<TenantStatus>,
    pub servers: Vec<ServerStatus>,
    /// The uplink's capacity in each direction, when there is an uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink_capacity_bps: Option<u64>,
    /// How this host follows its cluster's store, for a host of a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::store::follow::StoreHealth>,
}

/// Measured rates over two sliding windows, in bit/s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Into the switch (sent by the tenant/server), last 100 ms.
    pub in_100ms_bps: u64,
    /// Into the switch, last second.
    pub in_1s_bps: u64,
    /// Out of the switch (delivered to the tenant/server), last 100 ms.
    pub out_100ms_bps: u64,
    /// Out of the switch, last second.
    pub out_1s_bps: u64,
}

/// One tenant's configuration and current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub name: String,
    pub id: u32,
    pub guaranteed_bps: u64,
    pub ceiling_bps: u64,
    pub weight: u32,
    pub broadcast_pps: u32,
    pub servers: Vec<String>,
    pub rates: Rates,
    pub queued_frames: u64,
    pub queued_bytes: u64,
    pub active: bool,
    pub entitlement_bps: u64,
    /// A routed tenant's share of the uplink, per direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkStatus>,
}

/// A routed tenant on the uplink: its rates there and what crossed it each way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub guaranteed_bps: u64,
    pub ceiling_bps: u64,
    pub weight: u32,
    /// From the tenant's servers out through the uplink (charged to the tenant).
    pub upload: DirectionStatus,
    /// From the uplink in to the tenant's servers (charged to the tenant).
    pub download: DirectionStatus,
}

/// One direction of a tenant's uplink traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionStatus {
    /// Bytes (Ethernet frames as the switch carried them) so far.
    pub bytes: u64,
    pub rate_100ms_bps: u64,
    pub rate_1s_bps: u64,
    pub queued_bytes: u64,
    /// Bytes the uplink shaper dropped (queue full).
    pub dropped_bytes: u64,
    /// Frames the uplink shaper marked Congestion Experienced (early signal).
    #[serde(default)]
    pub marked_frames: u64,
    /// Frames that lost their last segment (early signal to a sender without ECN).
    #[serde(default)]
    pub cut_frames: u64,
    /// What the uplink shaper owes the tenant in this direction now.
    pub entitlement_bps: u64,
}

/// One server's identity and current rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    pub id: u32,
    pub tenant: String,
    pub mac: String,
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    pub netns: String,
    /// `up` while the data path serves its port, `down` once its device is gone.
    pub state: PortState,
    pub rates: Rates,
}

/// Whether the data path serves a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    #[default]
    Up,
    /// Reading it failed for good (its device vanished, e.g. the server deleted `eth0`).
    Down,
}

impl PortState {
    /// Return the name shown by `netd status`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Up => "up",
            PortState::Down => "down",
        }
    }
}

/// Every counter, per tenant and per port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub tenants: Vec<TenantStats>,
    pub ports: Vec<PortStats>,
    #[serde(default)]
    pub datapath: DataPathStats,
    /// The ports of servers on other hosts, as this host's switch counts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteStats>,
    /// The VXLAN tunnel's own counters, on a host of a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStats>,
    /// What the bridged uplink's trunk dropped before any port saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<TrunkStats>,
}

/// Frames from the trunk without a VLAN tag, or on a VLAN of no tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrunkStats {
    pub untagged: u64,
    pub unknown_vlan: u64,
}

/// One remote server's port: what came from it over the tunnel, what went to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteStats {
    pub server: String,
    pub host: String,
    pub tenant: String,
    pub counters: Counts,
}

/// The tunnel's datagrams, and those it dropped before any port saw them, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStats {
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub drops: BTreeMap<String, u64>,
}

impl From<&crate::stats::TunnelCounters> for TunnelStats {
    fn from(c: &crate::stats::TunnelCounters) -> TunnelStats {
        use std::sync::atomic::Ordering::Relaxed;
        TunnelStats {
            rx_datagrams: c.rx_datagrams.load(Relaxed),
            rx_bytes: c.rx_bytes.load(Relaxed),
            tx_datagrams: c.tx_datagrams.load(Relaxed),
            tx_bytes: c.tx_bytes.load(Relaxed),
            tx_errors: c.tx_errors.load(Relaxed),
            drops: crate::stats::TunnelDrop::ALL
                .iter()
                .map(|&r| (r.as_str().to_string(), c.drops(r)))
                .collect(),
        }
    }
}

/// How the data-path thread is scheduled (see README, "Scheduling the data path").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPathStats {
    /// The `SCHED_FIFO` priority it runs at now; 0 when at normal priority.
    pub realtime_priority: u64,
    /// Times it stepped down to normal priority, busy 2 ms without a pause.
    pub step_downs: u64,
}

/// Frames/bytes in and out, drops by reason (every reason, zeros included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Failed reads of a port (zero for tenants; failed writes are `drops.write_failed`).
    #[serde(default)]
    pub read_errors: u64,
    /// Times a port was muted for flooding netd with frames it drops (zero for tenants).
    #[serde(default)]
    pub quarantines: u64,
    pub drops: BTreeMap<String, u64>,
}

impl From<CounterSnapshot> for Counts {
    fn from(s: CounterSnapshot) -> Counts {
        Counts {
            rx_frames: s.rx_frames,
            rx_bytes: s.rx_bytes,
            tx_frames: s.tx_frames,
            tx_bytes: s.tx_bytes,
            read_errors: s.read_errors,
            quarantines: s.quarantines,
            drops: DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_string(),
                        s.drops.get(r.as_str()).copied().unwrap_or(0),
                    )
                })
                .collect(),
        }
    }
}

/// The shaper's counters of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShaperCounts {
    pub own_bytes: u64,
    pub borrowed_bytes: u64,
    pub queued_frames: u64,
    pub queued_bytes: u64,
    pub dropped_frames: u64,
    pub dropped_bytes: u64,
    /// Frames marked Congestion Experienced (ECN); absent from an older netd's reports.
    #[serde(default)]
    pub marked_frames: u64,
    /// TCP super-frames cut by one segment; absent from an older netd's reports.
    #[serde(default)]
    pub cut_frames: u64,
}

impl From<ShaperSnapshot> for ShaperCounts {
    fn from(s: ShaperSnapshot) -> ShaperCounts {
        ShaperCounts {
            own_bytes: s.own_bytes,
            borrowed_bytes: s.borrowed_bytes,
            queued_frames: s.queued_frames,
            queued_bytes: s.queued_bytes,
            dropped_frames: s.dropped_frames,
            dropped_bytes: s.dropped_bytes,
            marked_frames: s.marked_frames,
            cut_frames: s.cut_frames,
        }
    }
}

/// One tenant's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStats {
    pub tenant: String,
    pub counters: Counts,
    pub shaper: ShaperCounts,
}

/// One port's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortStats {
    pub server: String,
    pub tenant: String,
    pub counters: Counts,
}

/// Escape a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render the Prometheus text exposition format (version 0.0.4).
pub fn prometheus(status: &Status, stats: &StatsReport) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    let t = |name: &str| format!("tenant=\"{}\"", label(name));
    let port = |server: &str, tenant: &str| format!("server=\"{}\",{}", label(server), t(tenant));
    type Field = fn(&Counts) -> u64;
    let fields: [(&str, &str, Field); 4] = [
        ("rx_bytes", "Bytes received by the switch", |c| c.rx_bytes),
        ("rx_frames", "Frames received by the switch", |c| {
            c.rx_frames
        }),
        ("tx_bytes", "Bytes sent by the switch", |c| c.tx_bytes),
        ("tx_frames", "Frames sent by the switch", |c| c.tx_frames),
    ];
    for (field, help, get) in fields {
        family(
            &format!("netd_tenant_{field}_total"),
            "counter",
            &format!("{help}, per tenant."),
            stats
                .tenants
                .iter()
                .map(|s| (t(&s.tenant), get(&s.counters)))
                .collect(),
        );
        family(
            &format!("netd_port_{field}_total"),
            "counter",
            &format!("{help}, per port (server)."),
            stats
                .ports
                .iter()
                .map(|p| (port(&p.server, &p.tenant), get(&p.counters)))
                .collect(),
        );
    }
    family(
        "netd_tenant_drops_total",
        "counter",
        "Frames dropped, per tenant and reason.",
        stats
            .tenants
            .iter()
            .flat_map(|s| {
                s.counters.drops.iter().map(|(reason, n)| {
                    (format!("{},reason=\"{}\"", t(&s.tenant), label(reason)), *n)
                })
            })
            .collect(),
    );
    family(
        "netd_port_drops_total",
        "counter",
        "Frames dropped, per ingress port and reason.",
        stats
            .ports
            .iter()
            .flat_map(|p| {
                p.counters.drops.iter().map(|(reason, n)| {
                    let labels = format!(
                        "{},reason=\"{}\"",
                        port(&p.server, &p.tenant),
                        label(reason)
                    );
                    (labels, *n)
                })
            })
            .collect(),
    );
    family(
        "netd_remote_drops_total",
        "counter",
        "Frames from a server on another host dropped by this host's switch, per reason.",
        stats
            .remote
            .iter()
            .flat_map(|p| {
                p.counters.drops.iter().map(|(reason, n)| {
                    let labels = format!(
                        "{},host=\"{}\",reason=\"{}\"",
                        port(&p.server, &p.tenant),
                        label(&p.host),
                        label(reason)
                    );
                    (labels, *n)
                })
            })
            .collect(),
    );
    if let Some(trunk) = &stats.trunk {
        family(
            "netd_trunk_dropped_total",
            "counter",
            "Frames from the bridged uplink's trunk dropped before any port saw them: without a VLAN tag, or on a VLAN of no tenant.",
            vec![
                ("reason=\"untagged\"".to_string(), trunk.untagged),
                ("reason=\"unknown_vlan\"".to_string(), trunk.unknown_vlan),
            ],
        );
    }
    if let Some(tunnel) = &stats.tunnel {
        family(
            "netd_tunnel_dropped_total",
            "counter",
            "VXLAN datagrams dropped before any port saw them: not from a cluster host, malformed, a VNI of no local tenant, or a sender MAC that is not that tenant's server on that host.",
            tunnel
                .drops
                .iter()
                .map(|(reason, n)| (format!("reason=\"{}\"", label(reason)), *n))
                .collect(),
        );
        for (name, help, value) in [
            (
                "rx_datagrams",
                "VXLAN datagrams received.",
                tunnel.rx_datagrams,
            ),
            (
                "rx_bytes",
                "VXLAN bytes received (UDP payload).",
                tunnel.rx_bytes,
            ),
            ("tx_datagrams", "VXLAN datagrams sent.", tunnel.tx_datagrams),
            (
                "tx_bytes",
                "VXLAN bytes sent (UDP payload).",
                tunnel.tx_bytes,
            ),
            (
                "tx_errors",
                "VXLAN sends the kernel refused.",
                tunnel.tx_errors,
            ),
        ] {
            family(
                &format!("netd_tunnel_{name}_total"),
                "counter",
                help,
                vec![(String::new(), value)],
            );
        }
    }
    family(
        "netd_port_read_errors_total",
        "counter",
        "Failed reads of a port's device, per port (server); failed writes are the \
         write_failed drops.",
        stats
            .ports
            .iter()
            .map(|p| (port(&p.server, &p.tenant), p.counters.read_errors))
            .collect(),
    );
    family(
        "netd_port_quarantines_total",
        "counter",
        "Times a port was muted (not read for the rest of a 100 ms window) for sending more \
         frames netd had to drop than its budget, per port (server).",
        stats
            .ports
            .iter()
            .map(|p| (port(&p.server, &p.tenant), p.counters.quarantines))
            .collect(),
    );
    family(
        "netd_port_up",
        "gauge",
        "1 while the data path serves the port, 0 once its device is gone.",
        status
            .servers
            .iter()
            .map(|s| {
                (
                    port(&s.name, &s.tenant),
                    u64::from(s.state == PortState::Up),
                )
            })
            .collect(),
    );
    family(
        "netd_up",
        "gauge",
        "1 while netd runs (a scrape that gets an answer).",
        vec![(String::new(), 1)],
    );
    family(
        "netd_build_info",
        "gauge",
        "Always 1; the version of the running netd as a label.",
        vec![(format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1)],
    );
    type ShaperField = fn(&ShaperCounts) -> u64;
    let shaper: [(&str, &str, &str, ShaperField); 7] = [
        (
            "netd_tenant_own_bytes_total",
            "counter",
            "Bytes sent on the tenant's own (guaranteed) tokens.",
            |s| s.own_bytes,
        ),
        (
            "netd_tenant_borrowed_bytes_total",
            "counter",
            "Bytes sent on tokens borrowed from idle tenants.",
            |s| s.borrowed_bytes,
        ),
        (
            "netd_tenant_queue_frames",
            "gauge",
            "Frames waiting in the tenant's shaper queue.",
            |s| s.queued_frames,
        ),
        (
            "netd_tenant_queue_bytes",
            "gauge",
            "Bytes waiting in the tenant's shaper queue.",
            |s| s.queued_bytes,
        ),
        (
            "netd_tenant_shaper_dropped_frames_total",
            "counter",
            "Frames the shaper dropped (queue full).",
            |s| s.dropped_frames,
        ),
        (
            "netd_tenant_shaper_ecn_marked_frames_total",
            "counter",
            "Frames the shaper marked Congestion Experienced (ECN) to slow their sender.",
            |s| s.marked_frames,
        ),
        (
            "netd_tenant_shaper_cut_frames_total",
            "counter",
            "TCP super-frames the shaper cut by one segment to slow their sender.",
            |s| s.cut_frames,
        ),
    ];
    for (name, kind, help, get) in shaper {
        family(
            name,
            kind,
            help,
            stats
                .tenants
                .iter()
                .map(|s| (t(&s.tenant), get(&s.shaper)))
                .collect(),
        );
    }
    type DirectionField = fn(&DirectionStatus) -> u64;
    let uplink: [(&str, &str, &str, DirectionField); 6] = [
        (
            "netd_uplink_bytes_total",
            "counter",
            "Bytes that crossed the uplink, per routed tenant and direction.",
            |d| d.bytes,
        ),
        (
            "netd_uplink_bits_per_second",
            "gauge",
            "Rate over the last second on the uplink, per routed tenant and direction.",
            |d| d.rate_1s_bps,
        ),
        (
            "netd_uplink_entitlement_bits_per_second",
            "gauge",
            "What the uplink shaper owes the tenant now, per direction.",
            |d| d.entitlement_bps,
        ),
        (
            "netd_uplink_dropped_bytes_total",
            "counter",
            "Bytes the uplink shaper dropped (queue full), per routed tenant and direction.",
            |d| d.dropped_bytes,
        ),
        (
            "netd_uplink_ecn_marked_frames_total",
            "counter",
            "Frames the uplink shaper marked CE as an early signal, per routed tenant and direction.",
            |d| d.marked_frames,
        ),
        (
            "netd_uplink_cut_frames_total",
            "counter",
            "Frames that lost a segment as an early signal on the uplink, per routed tenant and direction.",
            |d| d.cut_frames,
        ),
    ];
    for (name, kind, help, get) in uplink {
        let samples = status
            .tenants
            .iter()
            .filter_map(|s| Some((s, s.uplink?)))
            .flat_map(|(s, u)| {
                [("upload", u.upload), ("download", u.download)].map(|(direction, d)| {
                    (format!("{},direction=\"{direction}\"", t(&s.name)), get(&d))
                })
            })
            .collect();
        family(name, kind, help, samples);
    }
    type TenantField = fn(&TenantStatus) -> u64;
    let config: [(&str, &str, TenantField); 3] = [
        (
            "netd_tenant_entitlement_bits_per_second",
            "What the shaper owes the tenant now, given which tenants are active.",
            |s| s.entitlement_bps,
        ),
        (
            "netd_tenant_guaranteed_bits_per_second",
            "Configured guaranteed rate.",
            |s| s.guaranteed_bps,
        ),
        (
            "netd_tenant_ceiling_bits_per_second",
            "Configured ceiling.",
            |s| s.ceiling_bps,
        ),
    ];
    for (name, help, get) in config {
        family(
            name,
            "gauge",
            help,
            status
                .tenants
                .iter()
                .map(|s| (t(&s.name), get(s)))
                .collect(),
        );
    }
    family(
        "netd_tenant_rate_bits_per_second",
        "gauge",
        "Measured rate per tenant over a sliding window, into (in) and out of (out) the switch.",
        status
            .tenants
            .iter()
            .flat_map(|s| {
                let r = s.rates;
                [
                    ("in", "100ms", r.in_100ms_bps),
                    ("in", "1s", r.in_1s_bps),
                    ("out", "100ms", r.out_100ms_bps),
                    ("out", "1s", r.out_1s_bps),
                ]
                .map(|(dir, window, v)| {
                    (
                        format!("{},direction=\"{dir}\",window=\"{window}\"", t(&s.name)),
                        v,
                    )
                })
            })
            .collect(),
    );
    family(
        "netd_capacity_bits_per_second",
        "gauge",
        "Host capacity shared among tenants.",
        vec![(String::new(), status.capacity_bps)],
    );
    family(
        "netd_datapath_realtime_priority",
        "gauge",
        "SCHED_FIFO priority of the data-path thread now (0: normal priority).",
        vec![(String::new(), stats.datapath.realtime_priority)],
    );
    family(
        "netd_datapath_step_downs_total",
        "counter",
        "Times the data path stepped down from real time, busy 2 ms without a pause.",
        vec![(String::new(), stats.datapath.step_downs)],
    );
    if let Some(store) = &status.store {
        family(
            "netd_store_connected",
            "gauge",
            "1 while this host follows the cluster in etcd; 0 while etcd is unreachable (it forwards with the last state applied).",
            vec![(String::new(), u64::from(store.connected))],
        );
        family(
            "netd_store_applied_revision",
            "gauge",
            "The etcd revision this host's part of the cluster was last applied from.",
            vec![(
                String::new(),
                u64::try_from(store.applied_revision).unwrap_or(0),
            )],
        );
        family(
            "netd_cluster_hosts_alive",
            "gauge",
            "Hosts of the cluster holding their lease, as last seen.",
            vec![(String::new(), store.alive.len() as u64)],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    fn sample() -> (Status, StatsReport) {
        let mut counts = Counts::from(CounterSnapshot::default());
        counts.rx_bytes = 1500;
        counts.drops.insert("storm_control".into(), 7);
        let status = Status {
            topology: "t".into(),
            source: "t.toml".into(),
            capacity_bps: 1000 * M,
            uptime_secs: 1.0,
            tenants: vec![TenantStatus {
                name: "acme".into(),
                id: 0,
                guaranteed_bps: 100 * M,
                ceiling_bps: 1000 * M,
                weight: 1,
                broadcast_pps: 1000,
                servers: vec!["web".into()],
                rates: Rates {
                    in_100ms_bps: 5,
                    ..Rates::default()
                },
                queued_frames: 0,
                queued_bytes: 0,
                active: true,
                entitlement_bps: 1000 * M,
                uplink: Some(UplinkStatus {
                    guaranteed_bps: 10 * M,
                    ceiling_bps: 100 * M,
                    weight: 1,
                    upload: DirectionStatus {
                        bytes: 42,
                        cut_frames: 3,
                        ..DirectionStatus::default()
                    },
                    download: DirectionStatus::default(),
                }),
            }],
            servers: vec![],
            uplink_capacity_bps: Some(100 * M),
            store: None,
        };
        let stats = StatsReport {
            tenants: vec![TenantStats {
                tenant: "acme".into(),
                counters: counts.clone(),
                shaper: ShaperCounts::default(),
            }],
            ports: vec![PortStats {
                server: "web".into(),
                tenant: "acme".into(),
                counters: counts,
            }],
            datapath: DataPathStats {
                realtime_priority: 1,
                step_downs: 3,
            },
            remote: Vec::new(),
            tunnel: None,
            trunk: None,
        };
        (status, stats)
    }

    #[test]
    fn prometheus_text_has_typed_families_and_labels() {
        let (status, stats) = sample();
        let text = prometheus(&status, &stats);
        assert!(
            text.contains("netd_uplink_bytes_total{tenant=\"acme\",direction=\"upload\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("netd_uplink_cut_frames_total{tenant=\"acme\",direction=\"upload\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE netd_tenant_rx_bytes_total counter\nnetd_tenant_rx_bytes_total{tenant=\"acme\"} 1500\n"), "{text}");
        assert!(
            text.contains(
                "netd_port_drops_total{server=\"web\",tenant=\"acme\",reason=\"storm_control\"} 7\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("netd_tenant_entitlement_bits_per_second{tenant=\"acme\"} 1000000000\n")
        );
        assert!(
            text.contains("netd_datapath_step_downs_total 3\n"),
            "{text}"
        );
        assert!(text.contains("netd_tenant_rate_bits_per_second{tenant=\"acme\",direction=\"in\",window=\"100ms\"} 5\n"));
        assert!(
            text.contains("\nnetd_capacity_bits_per_second 1000000000\n"),
            "{text}"
        );
        // Every sample line is `name{labels} integer` or `name integer`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
