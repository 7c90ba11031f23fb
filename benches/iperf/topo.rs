//! The bench's topology model: one description feeds both sides.
//!
//! A [`BenchTopo`] is read from a file under `topology/` (validated by netd's own loader, so
//! the MACs are the ones netd derives) or generated (throughput and scale scenarios). The
//! netd side renders it back to TOML with every namespace name under the run's prefix; the
//! kernel side builds the same servers (MAC, IP, MTU) on a bridge with HTB classes of the
//! same rates. [`BenchTopo::entitlement`] is the ideal allocation the shaping figures are
//! judged against.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use netd::topology::Rate;

/// One tenant's rates, in bits per second.
#[derive(Debug, Clone)]
pub struct BenchTenant {
    pub name: String,
    pub guaranteed: u64,
    pub ceiling: u64,
    pub weight: u32,
}

/// One server: its tenant (index into `tenants`), MAC, IPv4 with prefix, MTU.
#[derive(Debug, Clone)]
pub struct BenchServer {
    pub name: String,
    pub tenant: usize,
    pub mac: [u8; 6],
    pub ip: String,
    pub mtu: u16,
}

/// A topology both sides build.
#[derive(Debug, Clone)]
pub struct BenchTopo {
    pub capacity: u64,
    pub tenants: Vec<BenchTenant>,
    pub servers: Vec<BenchServer>,
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

impl BenchTopo {
    /// Load and validate a topology file with netd's own loader.
    pub fn load(path: &Path) -> Result<BenchTopo> {
        let t = netd::topology::load(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(BenchTopo {
            capacity: t.capacity.bits_per_sec(),
            tenants: t
                .tenants
                .iter()
                .map(|x| BenchTenant {
                    name: x.name.clone(),
                    guaranteed: x.guaranteed.bits_per_sec(),
                    ceiling: x.ceiling.bits_per_sec(),
                    weight: x.weight,
                })
                .collect(),
            servers: t
                .servers
                .iter()
                .map(|s| BenchServer {
                    name: s.name.clone(),
                    tenant: s.tenant.index(),
                    mac: s.mac.0,
                    ip: s.ip.to_string(),
                    mtu: s.mtu,
                })
                .collect(),
        })
    }

    /// Generate `tenants` tenants of `per_tenant` servers each, guarantees splitting
    /// `capacity` evenly; server `i` is `s{i}` with MAC `02:00:00:xx:xx:xx` (i) and, inside
    /// its tenant, IP `10.0.{j/250}.{j%250+1}/16` for its index `j` in the tenant.
    pub fn generated(capacity: u64, tenants: usize, per_tenant: usize) -> BenchTopo {
        let guaranteed = capacity / tenants as u64;
        // Round down to whole kbit so the rendered rate is exact.
        let guaranteed = guaranteed - guaranteed % 1000;
        let tenants_v = (0..tenants)
            .map(|k| BenchTenant {
                name: format!("g{k}"),
                guaranteed,
                ceiling: capacity,
                weight: 1,
            })
            .collect();
        let mut servers = Vec::new();
        for k in 0..tenants {
            for j in 0..per_tenant {
                let i = k * per_tenant + j;
                let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
                servers.push(BenchServer {
                    name: format!("s{i}"),
                    tenant: k,
                    mac: [0x02, 0, 0, b[1], b[2], b[3]],
                    ip: format!("10.0.{}.{}/16", j / 250, j % 250 + 1),
                    mtu: 1500,
                });
            }
        }
        BenchTopo {
            capacity,
            tenants: tenants_v,
            servers,
        }
    }

    /// Return the server named `name`.
    pub fn server(&self, name: &str) -> Result<&BenchServer> {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no server {name} in the bench topology"))
    }

    /// Return the IPv4 address (without prefix) of server `name`.
    pub fn addr(&self, name: &str) -> Result<String> {
        let ip = &self.server(name)?.ip;
        Ok(ip.split('/').next().unwrap_or(ip).to_string())
    }

    /// Return the names of tenant `k`'s servers.
    pub fn servers_of(&self, k: usize) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.tenant == k)
            .map(|s| s.name.clone())
            .collect()
    }

    /// Render the topology as a netd TOML file; `netns(server)` names each namespace.
    pub fn to_toml(&self, netns: impl Fn(&str) -> String) -> String {
        let rate = |bits: u64| Rate::from_bits_per_sec(bits).to_string();
        let mut s = String::from("# Generated by the iperf bench runner; removed after the run.\n");
        let _ = writeln!(s, "[host]\ncapacity = \"{}\"\n", rate(self.capacity));
        for t in &self.tenants {
            let _ = writeln!(
                s,
                "[tenants.{}]\nguaranteed = \"{}\"\nceiling = \"{}\"\nweight = {}\n",
                t.name,
                rate(t.guaranteed),
                rate(t.ceiling),
                t.weight
            );
        }
        for v in &self.servers {
            let _ = writeln!(
                s,
                "[servers.{}]\ntenant = \"{}\"\nip = \"{}\"\nmac = \"{}\"\nnetns = \"{}\"\nmtu = {}\n",
                v.name,
                self.tenants[v.tenant].name,
                v.ip,
                mac_str(&v.mac),
                netns(&v.name),
                v.mtu
            );
        }
        s
    }

    /// Check that the rendered file is valid for netd (before starting anything).
    pub fn validate(&self) -> Result<()> {
        let text = self.to_toml(|n| format!("x{n}"));
        if let Err(errors) = netd::topology::parse(Path::new("bench.toml"), &text) {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            bail!("generated topology is invalid: {}", list.join("; "));
        }
        Ok(())
    }

    /// Ideal L2 rate (bits/s) of each tenant when `active` tenants saturate and the others
    /// are idle: guarantees first, then the spare water-filled by weight, capped at ceilings.
    pub fn entitlement(&self, active: &[bool]) -> Vec<f64> {
        let n = self.tenants.len();
        let cap: Vec<f64> = (0..n)
            .map(|i| {
                if active[i] {
                    self.tenants[i].ceiling.min(self.capacity) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let mut give: Vec<f64> = (0..n)
            .map(|i| (self.tenants[i].guaranteed as f64).min(cap[i]))
            .collect();
        let mut spare = self.capacity as f64 - give.iter().sum::<f64>();
        // Each round either fills the spare or caps at least one tenant: ≤ n rounds.
        for _ in 0..=n {
            let hungry: Vec<usize> = (0..n).filter(|&i| give[i] + 1e-3 < cap[i]).collect();
            if hungry.is_empty() || spare < 1.0 {
                break;
            }
            let total: f64 = hungry
                .iter()
                .map(|&i| f64::from(self.tenants[i].weight.max(1)))
                .sum();
            let mut used = 0.0;
            for &i in &hungry {
                let share = spare * f64::from(self.tenants[i].weight.max(1)) / total;
                let add = share.min(cap[i] - give[i]);
                give[i] += add;
                used += add;
            }
            spare -= used;
        }
        give
    }
}
