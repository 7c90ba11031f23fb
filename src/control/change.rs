//! Changes to a running topology: each is turned into a whole new topology file and run
//! through the same [`validate()`](crate::topology::validate()) as a file on disk, so a
//! change is accepted exactly when the topology it leads to would be, with the same errors.
//!
//! Contract: [`propose`] is pure: it reads the running [`Topology`] and returns the new one
//! (ids renumbered against the running one, see [`Topology::with_ids_from`]) or an error; the
//! running state is untouched either way. [`Diff::between`] says what applying it touches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ControlError;
use crate::topology::file::{FileServer, FileTenant, FileTopology};
use crate::topology::{PortId, TenantId, Topology, validate};

/// A change an operator asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Change {
    /// Change a tenant's rates; absent fields keep their value.
    SetRate {
        tenant: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guaranteed: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ceiling: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<i64>,
        /// Change the tenant's rates on the uplink (`[tenants.NAME.uplink]`, each direction)
        /// rather than its own.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        uplink: bool,
    },
    /// Change several tenants' rates at once, validated as a whole: guarantee moves from one
    /// tenant to another without the sum passing the capacity half-way.
    SetRates { rates: Vec<RateChange> },
    /// Add a tenant (keys as in a `[tenants.NAME]` table).
    AddTenant { name: String, tenant: FileTenant },
    /// Remove a tenant that has no servers.
    RemoveTenant { name: String },
    /// Add a server (keys as in a `[servers.NAME]` table).
    AddServer { name: String, server: FileServer },
    /// Remove a server.
    RemoveServer { name: String },
}

/// One tenant's new rates in a [`Change::SetRates`]; absent fields keep their value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateChange {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guaranteed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// The tenant's rates on the uplink rather than its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uplink: bool,
}

impl Change {
    /// The tenants' new rates a `set-rate` or `set-rates` carries (none for other changes).
    pub fn rate_changes(&self) -> Vec<RateChange> {
        match self {
            Change::SetRate {
                tenant,
                guaranteed,
                ceiling,
                weight,
                uplink,
            } => vec![RateChange {
                tenant: tenant.clone(),
                guaranteed: guaranteed.clone(),
                ceiling: ceiling.clone(),
                weight: *weight,
                uplink: *uplink,
            }],
            Change::SetRates { rates } => rates.clone(),
            _ => Vec::new(),
        }
    }
}

/// Build the topology that `change` leads to, validated and renumbered against `running`.
///
/// `next_tenant`/`next_port` are the next fresh ids; they advance only on success.
pub fn propose(
    running: &Topology,
    change: &Change,
    next_tenant: &mut u32,
    next_port: &mut u32,
) -> Result<Topology, ControlError> {
    let mut file = running.to_file();
    match change {
        Change::SetRate { .. } | Change::SetRates { .. } => {
            let rates = change.rate_changes();
            if rates.is_empty() {
                return Err(ControlError::NothingToChange("(none named)".into()));
            }
            for rate in &rates {
                set_rate(&mut file, rate)?;
            }
        }
        Change::AddTenant { name, tenant } => {
            if file.tenants.contains_key(name) {
                return Err(ControlError::TenantExists(name.clone()));
            }
            file.tenants.insert(name.clone(), tenant.clone());
        }
        Change::RemoveTenant { name } => {
            let Some(t) = running.tenant_by_name(name) else {
                return Err(ControlError::UnknownTenant(name.clone()));
            };
            let servers: Vec<String> = running.servers_of(t.id).map(|s| s.name.clone()).collect();
            if !servers.is_empty() {
                return Err(ControlError::TenantHasServers {
                    tenant: name.clone(),
                    servers,
                });
            }
            file.tenants.remove(name);
        }
        Change::AddServer { name, server } => {
            if file.servers.contains_key(name) {
                return Err(ControlError::ServerExists(name.clone()));
            }
            file.servers.insert(name.clone(), server.clone());
        }
        Change::RemoveServer { name } => {
            if file.servers.remove(name).is_none() {
                return Err(ControlError::UnknownServer(name.clone()));
            }
        }
    }
    accept(running, &running.source, &file, next_tenant, next_port)
}

/// Parse the CLI's `TENANT.KEY=VALUE` assignments into one [`RateChange`] per tenant (and
/// per uplink or not), in the order tenants first appear. Keys: `guaranteed`, `ceiling`,
/// `weight`, and the same after `uplink.` for the tenant's rates on the uplink.
pub fn parse_assignments(args: &[String]) -> Result<Vec<RateChange>, String> {
    let mut rates: Vec<RateChange> = Vec::new();
    for arg in args {
        let (lhs, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?}: expected TENANT.KEY=VALUE"))?;
        let (tenant, uplink, key) = ["guaranteed", "ceiling", "weight"]
            .iter()
            .find_map(|key| {
                if let Some(tenant) = lhs.strip_suffix(&format!(".uplink.{key}")) {
                    Some((tenant, true, *key))
                } else {
                    lhs.strip_suffix(&format!(".{key}"))
                        .map(|tenant| (tenant, false, *key))
                }
            })
            .filter(|(tenant, _, _)| !tenant.is_empty())
            .ok_or_else(|| {
                format!("{arg:?}: expected TENANT.KEY=VALUE with KEY guaranteed, ceiling, weight or uplink.<one of those>")
            })?;
        let index = match rates
            .iter()
            .position(|r| r.tenant == tenant && r.uplink == uplink)
        {
            Some(index) => index,
            None => {
                rates.push(RateChange {
                    tenant: tenant.to_string(),
                    guaranteed: None,
                    ceiling: None,
                    weight: None,
                    uplink,
                });
                rates.len() - 1
            }
        };
        let rate = &mut rates[index];
        match key {
            "guaranteed" => rate.guaranteed = Some(value.to_string()),
            "ceiling" => rate.ceiling = Some(value.to_string()),
            _ => {
                rate.weight = Some(
                    value
                        .parse()
                        .map_err(|_| format!("{arg:?}: a weight is a whole number"))?,
                );
            }
        }
    }
    Ok(rates)
}

/// Write one tenant's new rates into `file` (validated later, with the whole file).
fn set_rate(file: &mut FileTopology, rate: &RateChange) -> Result<(), ControlError> {
    let entry = file
        .tenants
        .get_mut(&rate.tenant)
        .ok_or_else(|| ControlError::UnknownTenant(rate.tenant.clone()))?;
    if rate.guaranteed.is_none() && rate.ceiling.is_none() && rate.weight.is_none() {
        return Err(ControlError::NothingToChange(rate.tenant.clone()));
    }
    let (g_slot, c_slot, w_slot) = if rate.uplink {
        let rates = entry.uplink.get_or_insert_default();
        (&mut rates.guaranteed, &mut rates.ceiling, &mut rates.weight)
    } else {
        (&mut entry.guaranteed, &mut entry.ceiling, &mut entry.weight)
    };
    if let Some(g) = &rate.guaranteed {
        *g_slot = Some(g.clone());
    }
    if let Some(c) = &rate.ceiling {
        *c_slot = Some(c.clone());
    }
    if let Some(w) = rate.weight {
        *w_slot = Some(w);
    }
    Ok(())
}

/// Validate `file` as if read from `path` and renumber it against `running`.
pub fn accept(
    running: &Topology,
    path: &Path,
    file: &FileTopology,
    next_tenant: &mut u32,
    next_port: &mut u32,
) -> Result<Topology, ControlError> {
    let mut topology = validate(path, file).map_err(ControlError::Invalid)?;
    // Keep the daemon's name (the socket is named after it) whatever the file is called.
    topology.name = running.name.clone();
    let (mut t, mut p) = (*next_tenant, *next_port);
    let topology = topology.with_ids_from(running, &mut t, &mut p);
    (*next_tenant, *next_port) = (t, p);
    Ok(topology)
}

/// What applying a new topology touches, by stable id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub tenants_added: Vec<TenantId>,
    pub tenants_removed: Vec<TenantId>,
    /// Tenants whose rates, weight, storm limit, gateway or NAT changed.
    pub tenants_changed: Vec<TenantId>,
    pub servers_added: Vec<PortId>,
    pub servers_removed: Vec<PortId>,
    /// Servers whose MAC, addresses or MTU changed: their link is re-applied in place.
    pub servers_relinked: Vec<PortId>,
    /// Servers whose tenant or per-server rates changed (switch/shaper only).
    pub servers_changed: Vec<PortId>,
    pub capacity_changed: bool,
    /// The `[uplink]` section changed (its capacity; the rest is refused live).
    pub uplink_changed: bool,
    /// Servers of other hosts (a cluster's) that came, went or changed address.
    pub remote_added: Vec<PortId>,
    pub remote_removed: Vec<PortId>,
    pub remote_changed: Vec<PortId>,
}

impl Diff {
    /// Compare two topologies with stable ids (the second from [`propose`] or [`accept`]).
    pub fn between(old: &Topology, new: &Topology) -> Diff {
        let mut diff = Diff {
            capacity_changed: old.capacity != new.capacity,
            uplink_changed: old.uplink != new.uplink,
            ..Diff::default()
        };
        let old_t: BTreeSet<TenantId> = old.tenants.iter().map(|t| t.id).collect();
        let new_t: BTreeSet<TenantId> = new.tenants.iter().map(|t| t.id).collect();
        diff.tenants_added = new_t.difference(&old_t).copied().collect();
        diff.tenants_removed = old_t.difference(&new_t).copied().collect();
        for id in old_t.intersection(&new_t) {
            let (a, b) = (old.tenant(*id), new.tenant(*id));
            if (
                a.guaranteed,
                a.ceiling,
                a.weight,
                a.broadcast_pps,
                &a.gateway,
                a.nat,
                &a.uplink,
                a.vni,
            ) != (
                b.guaranteed,
                b.ceiling,
                b.weight,
                b.broadcast_pps,
                &b.gateway,
                b.nat,
                &b.uplink,
                b.vni,
            ) {
                diff.tenants_changed.push(*id);
            }
        }
        let old_s: BTreeSet<PortId> = old.servers.iter().map(|s| s.id).collect();
        let new_s: BTreeSet<PortId> = new.servers.iter().map(|s| s.id).collect();
        diff.servers_added = new_s.difference(&old_s).copied().collect();
        diff.servers_removed = old_s.difference(&new_s).copied().collect();
        for id in old_s.intersection(&new_s) {
            let (a, b) = (old.server(*id), new.server(*id));
            // The default route follows the tenant's gateway: a new one relinks its servers.
            let (router_a, router_b) = (old.router_of(a), new.router_of(b));
            if (a.mac, a.ip, a.ipv6, a.mtu, a.dhcp, router_a)
                != (b.mac, b.ip, b.ipv6, b.mtu, b.dhcp, router_b)
            {
                diff.servers_relinked.push(*id);
            } else if (a.tenant, a.guaranteed, a.ceiling) != (b.tenant, b.guaranteed, b.ceiling) {
                diff.servers_changed.push(*id);
            }
        }
        let remote = |t: &'_ Topology| -> BTreeMap<PortId, crate::topology::RemoteServer> {
            let servers = t.cluster.iter().flat_map(|c| c.remote.iter());
            servers.map(|r| (r.id, r.clone())).collect()
        };
        let (old_r, new_r) = (remote(old), remote(new));
        diff.remote_added = new_r
            .keys()
            .filter(|id| !old_r.contains_key(id))
            .copied()
            .collect();
        diff.remote_removed = old_r
            .keys()
            .filter(|id| !new_r.contains_key(id))
            .copied()
            .collect();
        diff.remote_changed = new_r
            .iter()
            .filter(|(id, r)| old_r.get(id).is_some_and(|o| o != *r))
            .map(|(id, _)| *id)
            .collect();
        diff
    }

    /// Return true when nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Rate, parse};

    const BASE: &str = r#"
        [host]
        capacity = "1gbit"
        [tenants.a]
        guaranteed = "400mbit"
        [tenants.c]
        guaranteed = "400mbit"
        [servers.a1]
        tenant = "a"
        ip = "10.0.0.1/24"
        [servers.c1]
        tenant = "c"
        ip = "10.0.0.1/24"
    "#;

    fn base() -> (Topology, u32, u32) {
        let t = parse(Path::new("base.toml"), BASE).unwrap();
        let nt = u32::try_from(t.tenant_id_bound()).unwrap();
        let np = u32::try_from(t.port_id_bound()).unwrap();
        (t, nt, np)
    }

    fn set_rate(tenant: &str, guaranteed: &str) -> Change {
        Change::SetRate {
            tenant: tenant.into(),
            guaranteed: Some(guaranteed.into()),
            ceiling: None,
            weight: None,
            uplink: false,
        }
    }

    #[test]
    fn set_rates_moves_guarantee_that_one_step_at_a_time_could_not() {
        let (t, mut nt, mut np) = base();
        let capacity = t.capacity.bits_per_sec();
        let a = t.tenant_by_name("a").unwrap().guaranteed.bits_per_sec();
        let c = t.tenant_by_name("c").unwrap().guaranteed.bits_per_sec();
        let spare = capacity
            - t.tenants
                .iter()
                .map(|t| t.guaranteed.bits_per_sec())
                .sum::<u64>();
        // Give c all the spare and 100 Mbit/s of a's: alone, that passes the capacity.
        let c_new = format!("{}bit", c + spare + 100_000_000);
        let a_new = format!("{}bit", a - 100_000_000);
        assert!(propose(&t, &set_rate("c", &c_new), &mut nt, &mut np).is_err());
        let both = Change::SetRates {
            rates: parse_assignments(&[
                format!("a.guaranteed={a_new}"),
                format!("c.guaranteed={c_new}"),
            ])
            .unwrap(),
        };
        let new = propose(&t, &both, &mut nt, &mut np).unwrap();
        assert_eq!(
            new.tenant_by_name("c").unwrap().guaranteed.bits_per_sec(),
            c + spare + 100_000_000
        );
        // One bad member refuses the whole change.
        let bad = Change::SetRates {
            rates: parse_assignments(&[format!("a.guaranteed={a_new}"), "nobody.weight=2".into()])
                .unwrap(),
        };
        assert!(matches!(
            propose(&t, &bad, &mut nt, &mut np),
            Err(ControlError::UnknownTenant(_))
        ));
    }

    #[test]
    fn assignments_group_by_tenant_and_direction() {
        let args: Vec<String> = [
            "a.guaranteed=1mbit",
            "web.eu.ceiling=2mbit",
            "a.weight=3",
            "a.uplink.ceiling=4mbit",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let rates = parse_assignments(&args).unwrap();
        assert_eq!(rates.len(), 3, "{rates:?}");
        assert_eq!(rates[0].tenant, "a");
        assert_eq!(rates[0].guaranteed.as_deref(), Some("1mbit"));
        assert_eq!(rates[0].weight, Some(3));
        assert_eq!(rates[1].tenant, "web.eu");
        assert!(rates[2].uplink && rates[2].ceiling.as_deref() == Some("4mbit"));
        for bad in ["a", "a.colour=red", ".weight=1", "a.weight=x"] {
            assert!(parse_assignments(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_rate_changes_only_that_tenant() {
        let (t, mut nt, mut np) = base();
        let new = propose(&t, &set_rate("c", "500mbit"), &mut nt, &mut np).unwrap();
        assert_eq!(
            new.tenant_by_name("c").unwrap().guaranteed,
            Rate::from_bits_per_sec(500_000_000)
        );
        let diff = Diff::between(&t, &new);
        assert_eq!(
            diff,
            Diff {
                tenants_changed: vec![t.tenant_by_name("c").unwrap().id],
                ..Diff::default()
            }
        );
    }

    #[test]
    fn rejected_changes_carry_the_validators_errors() {
        let (t, mut nt, mut np) = base();
        let err = propose(&t, &set_rate("c", "700mbit"), &mut nt, &mut np).unwrap_err();
        let ControlError::Invalid(errors) = &err else {
            panic!("{err}")
        };
        assert_eq!(errors.len(), 1);
        assert!(
            err.to_string()
                .contains("sum of tenant guarantees 1100mbit exceeds the host capacity 1gbit"),
            "{err}"
        );
        let err = propose(&t, &set_rate("zz", "1mbit"), &mut nt, &mut np).unwrap_err();
        assert!(matches!(err, ControlError::UnknownTenant(ref n) if n == "zz"));
        let err = propose(
            &t,
            &Change::RemoveTenant { name: "a".into() },
            &mut nt,
            &mut np,
        )
        .unwrap_err();
        assert!(err.to_string().contains("a1"), "{err}");
        assert_eq!((nt, np), (2, 2), "ids only advance on success");
    }

    #[test]
    fn added_objects_get_fresh_ids_and_others_keep_theirs() {
        let (t, mut nt, mut np) = base();
        // "b" sorts between "a" and "c": ids must not shift.
        let add = Change::AddTenant {
            name: "b".into(),
            tenant: FileTenant {
                guaranteed: Some("100mbit".into()),
                ..FileTenant::default()
            },
        };
        let t2 = propose(&t, &add, &mut nt, &mut np).unwrap();
        assert_eq!(t2.tenant_by_name("b").unwrap().id, TenantId(2));
        assert_eq!(t2.tenant_by_name("c").unwrap().id, TenantId(1));
        let server = Change::AddServer {
            name: "b1".into(),
            server: FileServer {
                tenant: Some("b".into()),
                ip: Some("10.0.0.1/24".into()),
                ..FileServer::default()
            },
        };
        let t3 = propose(&t2, &server, &mut nt, &mut np).unwrap();
        let b1 = t3.server_by_name("b1").unwrap();
        assert_eq!((b1.id, b1.tenant), (PortId(2), TenantId(2)));
        assert_eq!(t3.server_by_name("c1").unwrap().id, PortId(1));
        let diff = Diff::between(&t2, &t3);
        assert_eq!(diff.servers_added, [PortId(2)]);
        assert!(diff.tenants_changed.is_empty() && diff.servers_removed.is_empty());
        // Removing it again, then adding it again: a new id (never reused).
        let t4 = propose(
            &t3,
            &Change::RemoveServer { name: "b1".into() },
            &mut nt,
            &mut np,
        )
        .unwrap();
        assert_eq!(Diff::between(&t3, &t4).servers_removed, [PortId(2)]);
        let t5 = propose(&t4, &server, &mut nt, &mut np).unwrap();
        assert_eq!(t5.server_by_name("b1").unwrap().id, PortId(3));
    }

    #[test]
    fn reload_diff_touches_only_what_changed() {
        let (t, mut nt, mut np) = base();
        let edited =
            BASE.replace(
                "guaranteed = \"400mbit\"\n        [tenants.c]",
                "guaranteed = \"300mbit\"\n        [tenants.c]",
            )
            .replace(
                "ip = \"10.0.0.1/24\"\n        [servers.c1]",
                "ip = \"10.0.0.9/24\"\n        [servers.c1]",
            ) + "\n[servers.c2]\ntenant = \"c\"\nip = \"10.0.0.2/24\"\n";
        let file = FileTopology::from_toml(Path::new("base.toml"), &edited).unwrap();
        let new = accept(&t, Path::new("base.toml"), &file, &mut nt, &mut np).unwrap();
        let diff = Diff::between(&t, &new);
        assert_eq!(diff.tenants_changed, [TenantId(0)]);
        assert_eq!(diff.servers_relinked, [PortId(0)]);
        assert_eq!(diff.servers_added, [PortId(2)]);
        assert!(diff.servers_removed.is_empty() && diff.servers_changed.is_empty());
        // The same file again: nothing to do.
        let same = FileTopology::from_toml(Path::new("base.toml"), BASE).unwrap();
        let again = accept(&t, Path::new("base.toml"), &same, &mut nt, &mut np).unwrap();
        assert!(Diff::between(&t, &again).is_empty());
    }

    #[test]
    fn running_state_round_trips_through_toml() {
        let (t, mut nt, mut np) = base();
        let text = toml::to_string(&t.to_file()).unwrap();
        let file = FileTopology::from_toml(Path::new("base.toml"), &text).unwrap();
        let back = accept(&t, Path::new("base.toml"), &file, &mut nt, &mut np).unwrap();
        assert_eq!(back, t, "{text}");
    }
}
