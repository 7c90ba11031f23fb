//! `netd status --cluster`: every host (alive or not, from its lease) and every tenant's
//! rates across hosts, from what the hosts publish in the store.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::ClusterReport;
use crate::control::report::Status;
use crate::topology::cluster;

/// One host's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostLine {
    pub name: String,
    pub underlay: String,
    /// Its lease is held (an external host counts as alive).
    pub alive: bool,
    /// A VXLAN endpoint netd does not run.
    pub external: bool,
    /// Servers the topology places there.
    pub servers: usize,
    /// The store revision its part was last applied from (0: unknown).
    pub applied_revision: i64,
    /// The host sees the store (from its last status).
    pub store_connected: bool,
    /// Why its last part could not be applied, if so.
    pub apply_error: Option<String>,
}

/// One tenant's rates summed over the live hosts, bit/s over the last second.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantLine {
    pub name: String,
    pub guaranteed: String,
    /// Hosts that run its servers.
    pub hosts: usize,
    pub in_bps: u64,
    pub out_bps: u64,
}

/// The whole cluster at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub revision: i64,
    pub hosts: Vec<HostLine>,
    pub tenants: Vec<TenantLine>,
}

/// Build the cluster's status from what the store holds.
pub fn cluster_status(report: &ClusterReport) -> Result<ClusterStatus, String> {
    let Some(text) = &report.topology else {
        return Err("no cluster topology in etcd: `netd push FILE --etcd URL` stores one".into());
    };
    let cluster = cluster::from_json(Path::new("etcd"), text)
        .map_err(|e| crate::topology::LoadError::Invalid(e).to_string())?;
    let published: BTreeMap<&str, Status> = report
        .status
        .iter()
        .filter_map(|(host, json)| Some((host.as_str(), serde_json::from_str(json).ok()?)))
        .collect();
    let per_host = cluster.servers_per_host();
    let hosts = cluster
        .hosts
        .iter()
        .map(|h| {
            let health = published
                .get(h.name.as_str())
                .and_then(|s| s.store.as_ref());
            HostLine {
                name: h.name.clone(),
                underlay: h.underlay.to_string(),
                alive: h.external || report.alive.contains(&h.name),
                external: h.external,
                servers: per_host.get(h.name.as_str()).copied().unwrap_or(0),
                applied_revision: health.map_or(0, |s| s.applied_revision),
                store_connected: health.is_some_and(|s| s.connected),
                apply_error: health.and_then(|s| s.apply_error.clone()),
            }
        })
        .collect();
    let mut tenants: BTreeMap<&str, TenantLine> = cluster
        .tenants()
        .map(|(name, guaranteed, _)| {
            let line = TenantLine {
                name: name.to_string(),
                guaranteed: guaranteed.unwrap_or_default().to_string(),
                ..TenantLine::default()
            };
            (name, line)
        })
        .collect();
    for (host, status) in &published {
        if !report.alive.contains(*host) {
            continue;
        }
        for t in &status.tenants {
            if let Some(line) = tenants.get_mut(t.name.as_str()) {
                line.hosts += 1;
                line.in_bps += t.rates.in_1s_bps;
                line.out_bps += t.rates.out_1s_bps;
            }
        }
    }
    Ok(ClusterStatus {
        revision: report.revision,
        hosts,
        tenants: tenants.into_values().collect(),
    })
}

/// Render the cluster's status as text.
pub fn render(status: &ClusterStatus) -> String {
    let mut out = format!("cluster at etcd revision {}\n", status.revision);
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<6} {:>7} {:>9}  store",
        "HOST", "UNDERLAY", "ALIVE", "SERVERS", "APPLIED"
    );
    for h in &status.hosts {
        let store = match (&h.apply_error, h.alive && !h.external, h.store_connected) {
            _ if h.external => "external (no netd)".to_string(),
            (Some(error), _, _) => format!("cannot apply: {error}"),
            (None, false, _) => "-".to_string(),
            (None, true, true) => "connected".to_string(),
            (None, true, false) => "unreachable (forwarding with the last state)".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<6} {:>7} {:>9}  {store}",
            h.name,
            h.underlay,
            if h.alive { "yes" } else { "NO" },
            h.servers,
            h.applied_revision,
        );
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>12} {:>6} {:>14} {:>14}",
        "TENANT", "GUARANTEED", "HOSTS", "IN (1s)", "OUT (1s)"
    );
    for t in &status.tenants {
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>6} {:>14} {:>14}",
            t.name,
            t.guaranteed,
            t.hosts,
            crate::topology::Rate::from_bits_per_sec(t.in_bps).to_string(),
            crate::topology::Rate::from_bits_per_sec(t.out_bps).to_string(),
        );
    }
    out
}
