//! The uplink: the host's interface towards the provider's network, and what each routed
//! tenant gets on it in each direction.
//!
//! Rules ([`check`], run after gateways were checked, errors collected with the rest):
//! - `[uplink] interface` (an interface name) and `capacity` (a rate) are required; `netns`
//!   is an optional namespace name, `queue_delay` an optional duration (as `[host]`'s, default
//!   [`UPLINK_QUEUE_DELAY`]). Whether the interface exists is the host's business:
//!   `netd check` and `netd up` ask the kernel (see `crate::kernel::uplink`).
//! - With an uplink, every tenant with a gateway gets an uplink port and rates on the uplink:
//!   its own `guaranteed`, `ceiling` (at most the uplink's capacity) and `weight`, unless
//!   `[tenants.NAME.uplink]` overrides them. They hold in each direction separately.
//! - `[tenants.NAME.uplink]` needs `[uplink]` and a gateway; its ceiling is neither below its
//!   guarantee nor above the uplink's capacity; the uplink guarantees of all tenants sum to
//!   at most the uplink's capacity.
//!
//! Uplink ports are numbered after the gateways' ports, in tenant name order.

use std::time::Duration;

use serde::Serialize;

use super::file::{FileRates, FileTopology};
use super::validate::{
    ErrorKind, MAX_IFNAME_LEN, MAX_NETNS_LEN, QUEUE_DELAY_RANGE, Validator, key_segment, quoted,
    saturating_rate,
};
use super::{PortId, Rate, Tenant};

/// `[uplink]`: where tenants leave the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uplink {
    /// The host's interface towards the provider's network (netd never configures it).
    pub interface: String,
    /// The namespace holding the host's own stack; `None`: netd's own namespace.
    pub netns: Option<String>,
    /// What the shaper shares out, in each direction.
    pub capacity: Rate,
    /// How tenants leave through it.
    pub mode: UplinkMode,
    /// Longest a frame waits in a tenant's uplink queue, each way ([`UPLINK_QUEUE_DELAY`]
    /// unless `[uplink] queue_delay` says otherwise).
    pub queue_delay: Duration,
}

/// The uplink's default queue bound: 50 ms. Downloads reach netd
/// as the edge's GRO super-frames, and the ACKs of a 64 KB frame come back at once, so a
/// BBR sender keeps 250–400 KB queued whatever its rate. At 65 Mbit/s that is 30–50 ms:
/// with 20 ms the tenant lost 12% of its download bytes at the bound and ~5500 segments
/// per 8 s were retransmitted; 30 ms still 4600, 40 ms 198, 50 ms 18 (`scripts/uplink-probe`).
pub const UPLINK_QUEUE_DELAY: Duration = Duration::from_millis(50);

/// How tenants leave through the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkMode {
    /// Through the host's kernel: a router namespace per tenant, NAT or public addresses.
    Routed,
    /// On a trunk: each tenant's L2 domain extends onto its VLAN of the interface, where
    /// the provider's network (its router, its other machines) is.
    Bridged,
}

/// A routed tenant's side of the uplink: its port and its rates, per direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantUplink {
    /// The switch port that hands the tenant's routed packets to the host's kernel.
    pub port: PortId,
    pub guaranteed: Rate,
    pub ceiling: Rate,
    pub weight: u32,
    /// Which rates `[tenants.NAME.uplink]` sets; the others follow the tenant's own, so a
    /// change to those carries over to the uplink as it would in the file.
    pub set: UplinkOverrides,
    /// On a bridged uplink, the tenant's VLAN (its port is its VLAN of the trunk).
    pub vlan: Option<u16>,
}

/// Which of a tenant's uplink rates its file sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UplinkOverrides {
    pub guaranteed: bool,
    pub ceiling: bool,
    pub weight: bool,
}

/// Check `[uplink]` and every `[tenants.NAME.uplink]`; give each tenant with a gateway its
/// uplink port (numbered from `first_port`) and rates. Return the uplink, if valid.
pub(super) fn check(
    v: &mut Validator<'_>,
    file: &FileTopology,
    tenants: &mut [Tenant],
    first_port: u32,
) -> Option<Uplink> {
    let uplink = file.uplink.as_ref().and_then(|raw| {
        let interface = match raw.interface.as_deref() {
            None => {
                v.missing("uplink.interface");
                None
            }
            Some(name) => v
                .name(
                    "uplink.interface",
                    name,
                    MAX_IFNAME_LEN,
                    ErrorKind::InvalidName,
                )
                .then(|| name.to_string()),
        };
        let netns_ok = raw.netns.as_deref().is_none_or(|name| {
            v.name("uplink.netns", name, MAX_NETNS_LEN, ErrorKind::InvalidNetns)
        });
        let capacity = v.rate("uplink.capacity", raw.capacity.as_deref(), true);
        let queue_delay = match raw.queue_delay.as_deref() {
            None => Some(UPLINK_QUEUE_DELAY),
            text => v.duration("uplink.queue_delay", text, QUEUE_DELAY_RANGE),
        };
        let mode = match raw.mode.as_deref() {
            None | Some("routed") => Some(UplinkMode::Routed),
            Some("bridged") => Some(UplinkMode::Bridged),
            Some(other) => {
                v.push(
                    "uplink.mode",
                    quoted(Some(other)),
                    ErrorKind::UnknownUplinkMode,
                );
                None
            }
        };
        netns_ok.then_some(())?;
        Some(Uplink {
            interface: interface?,
            netns: raw.netns.clone(),
            capacity: capacity?,
            mode: mode?,
            queue_delay: queue_delay?,
        })
    });
    let bridged = file
        .uplink
        .as_ref()
        .is_some_and(|u| u.mode.as_deref() == Some("bridged"));
    let vlans = check_vlans(v, file, bridged);
    let mut next_port = first_port;
    let mut guarantee_sum: u128 = 0;
    for tenant in tenants.iter_mut() {
        let key = format!("tenants.{}.uplink", key_segment(&tenant.name));
        let raw = file
            .tenants
            .get(&tenant.name)
            .and_then(|t| t.uplink.as_ref());
        if raw.is_some() && file.uplink.is_none() {
            v.push(&key, None, ErrorKind::NeedsUplink);
        }
        let vlan = vlans.get(tenant.name.as_str()).copied();
        if bridged && tenant.gateway.is_some() {
            let gateway_key = format!("tenants.{}.gateway", key_segment(&tenant.name));
            v.push(&gateway_key, None, ErrorKind::GatewayOnBridgedUplink);
        }
        // On a bridged uplink a tenant is on it by its VLAN; routed, by its gateway.
        let on_uplink = if bridged {
            vlan.is_some()
        } else {
            tenant.gateway.is_some()
        };
        if raw.is_some() && !on_uplink && !bridged {
            v.push(&key, None, ErrorKind::NeedsGateway);
        }
        if file.uplink.is_none() || !on_uplink {
            continue;
        }
        // Checked even when [uplink] itself is not valid: every error at once.
        let capacity = uplink.as_ref().map(|u| u.capacity);
        let (Some(rates), Some(_)) = (rates(v, &key, raw, tenant, capacity), &uplink) else {
            continue;
        };
        guarantee_sum += u128::from(rates.0.bits_per_sec());
        tenant.uplink = Some(TenantUplink {
            port: PortId(next_port),
            guaranteed: rates.0,
            ceiling: rates.1,
            weight: rates.2,
            set: UplinkOverrides {
                guaranteed: raw.is_some_and(|r| r.guaranteed.is_some()),
                ceiling: raw.is_some_and(|r| r.ceiling.is_some()),
                weight: raw.is_some_and(|r| r.weight.is_some()),
            },
            vlan,
        });
        next_port += 1;
    }
    if let Some(uplink) = &uplink
        && guarantee_sum > u128::from(uplink.capacity.bits_per_sec())
    {
        let sum = saturating_rate(guarantee_sum);
        v.push(
            "uplink.capacity",
            Some(uplink.capacity.to_string()),
            ErrorKind::UplinkGuaranteesExceedCapacity { sum },
        );
    }
    uplink
}

/// Check every tenant's `vlan` (only on a bridged uplink, 1..=4094, unique); return the
/// valid ones by tenant.
fn check_vlans<'f>(
    v: &mut Validator<'_>,
    file: &'f FileTopology,
    bridged: bool,
) -> std::collections::BTreeMap<&'f str, u16> {
    let mut owner: std::collections::BTreeMap<u16, &str> = std::collections::BTreeMap::new();
    let mut by_tenant = std::collections::BTreeMap::new();
    for (name, t) in &file.tenants {
        let Some(raw) = t.vlan else {
            continue;
        };
        let key = format!("tenants.{}.vlan", key_segment(name));
        if !bridged {
            v.push(&key, Some(raw.to_string()), ErrorKind::NeedsBridgedUplink);
            continue;
        }
        let Some(vlan) = u16::try_from(raw).ok().filter(|n| (1..=4094).contains(n)) else {
            v.push(&key, Some(raw.to_string()), ErrorKind::VlanOutOfRange);
            continue;
        };
        match owner.insert(vlan, name) {
            Some(other) => {
                let kind = ErrorKind::DuplicateVlan {
                    other: other.to_string(),
                };
                v.push(&key, Some(raw.to_string()), kind);
            }
            None => {
                by_tenant.insert(name.as_str(), vlan);
            }
        }
    }
    by_tenant
}

/// A tenant's (guaranteed, ceiling, weight) on the uplink: its overrides, else its own rates
/// with the ceiling capped at the uplink's `capacity` (`None`: the uplink's is not valid).
fn rates(
    v: &mut Validator<'_>,
    key: &str,
    raw: Option<&FileRates>,
    tenant: &Tenant,
    capacity: Option<Rate>,
) -> Option<(Rate, Rate, u32)> {
    let raw = raw.cloned().unwrap_or_default();
    let guaranteed = match raw.guaranteed.as_deref() {
        None => Some(tenant.guaranteed),
        Some(text) => v.rate(&format!("{key}.guaranteed"), Some(text), true),
    };
    let ceiling_key = format!("{key}.ceiling");
    let ceiling = match raw.ceiling.as_deref() {
        None => Some(capacity.map_or(tenant.ceiling, |c| tenant.ceiling.min(c))),
        Some(text) => v.rate(&ceiling_key, Some(text), true),
    };
    let weight = match raw.weight {
        None => Some(tenant.weight),
        Some(w) => u32::try_from(w).ok().filter(|&w| w >= 1).or_else(|| {
            let weight_key = format!("{key}.weight");
            v.push(&weight_key, Some(w.to_string()), ErrorKind::InvalidWeight);
            None
        }),
    };
    let (guaranteed, ceiling, weight) = (guaranteed?, ceiling?, weight?);
    if let Some(capacity) = capacity
        && raw.ceiling.is_some()
        && ceiling > capacity
    {
        let value = quoted(raw.ceiling.as_deref());
        v.push(
            &ceiling_key,
            value,
            ErrorKind::CeilingAboveUplink { capacity },
        );
        return None;
    }
    if ceiling < guaranteed {
        let value = Some(ceiling.to_string());
        v.push(
            &ceiling_key,
            value,
            ErrorKind::CeilingBelowGuarantee { guaranteed },
        );
        return None;
    }
    Some((guaranteed, ceiling, weight))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::topology::{PortKind, parse};

    const BASE: &str = r#"
[host]
capacity = "1gbit"

[uplink]
interface = "eth1"
netns = "edge"
capacity = "100mbit"

[tenants.acme]
guaranteed = "30mbit"
gateway = "10.1.0.1/24"
nat = true

[tenants.blue]
guaranteed = "50mbit"
ceiling = "80mbit"
weight = 3
gateway = "203.0.113.1/28"

[tenants.plain]
guaranteed = "10mbit"

[servers.a1]
tenant = "acme"
ip = "10.1.0.10/24"

[servers.b1]
tenant = "blue"
ip = "203.0.113.2/28"

[servers.p1]
tenant = "plain"
ip = "10.1.0.10/24"
"#;

    /// Assert that one of `errors` names `wanted`.
    fn assert_reported(errors: &[String], wanted: &str) {
        assert!(
            errors.iter().any(|e| e.contains(wanted)),
            "{wanted} not in {errors:#?}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        parse(Path::new("t.toml"), text)
            .expect_err("expected errors")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_uplink_queue_bound_defaults_to_50ms_is_set_apart_from_the_hosts_and_is_checked() {
        let topology = parse(Path::new("t.toml"), BASE).unwrap();
        let uplink = topology.uplink.as_ref().unwrap();
        assert_eq!(uplink.queue_delay, UPLINK_QUEUE_DELAY);
        let shaping = crate::shaper::Shaping::from_topology(&topology);
        assert_eq!(shaping.uplink.queue.max_delay, 50_000_000);
        assert_eq!(shaping.host.queue.max_delay, 100_000_000);

        let text = BASE.replace(
            "capacity = \"100mbit\"",
            "capacity = \"100mbit\"\nqueue_delay = \"30ms\"",
        );
        let topology = parse(Path::new("t.toml"), &text).unwrap();
        let shaping = crate::shaper::Shaping::from_topology(&topology);
        assert_eq!(shaping.uplink.queue.max_delay, 30_000_000);
        // It writes back as it was read.
        let again = toml::to_string(&topology.to_file()).unwrap();
        assert!(again.contains("queue_delay = \"30000us\""), "{again}");

        let text = BASE.replace(
            "capacity = \"100mbit\"",
            "capacity = \"100mbit\"\nqueue_delay = \"5s\"",
        );
        let errors = problems(&text);
        assert_reported(&errors, "uplink.queue_delay = \"5s\"");
    }

    /// The running state written back as a file keeps the uplink rates the file left out
    /// implicit, so a change to the tenant's own rates carries over to the uplink (found by
    /// the console test: a drag on a routed tenant could not be written back).
    #[test]
    fn uplink_rates_the_file_leaves_out_stay_out_of_the_running_state() {
        let text = BASE.replace(
            "[tenants.plain]",
            "[tenants.blue.uplink]\nweight = 2\n\n[tenants.plain]",
        );
        let file = parse(Path::new("t.toml"), &text).unwrap().to_file();
        assert_eq!(file.tenants["acme"].uplink, None);
        assert_eq!(
            file.tenants["blue"].uplink,
            Some(crate::topology::file::FileRates {
                weight: Some(2),
                ..Default::default()
            })
        );
        // A new guarantee of acme's own reaches its uplink rate.
        let mut file = file;
        file.tenants.get_mut("acme").unwrap().guaranteed = Some("40mbit".into());
        let again = crate::topology::validate(Path::new("t.toml"), &file).unwrap();
        let acme = again.tenants.iter().find(|t| t.name == "acme").unwrap();
        assert_eq!(
            acme.uplink.as_ref().unwrap().guaranteed,
            "40mbit".parse().unwrap()
        );
    }

    #[test]
    fn routed_tenants_get_an_uplink_port_and_their_own_rates_capped_at_the_uplink() {
        let topology = parse(Path::new("t.toml"), BASE).unwrap();
        let uplink = topology.uplink.as_ref().unwrap();
        assert_eq!(uplink.interface, "eth1");
        assert_eq!(uplink.netns.as_deref(), Some("edge"));
        assert_eq!(uplink.capacity, "100mbit".parse().unwrap());
        let acme = topology
            .tenant_by_name("acme")
            .unwrap()
            .uplink
            .clone()
            .unwrap();
        assert_eq!(acme.guaranteed, "30mbit".parse().unwrap());
        assert_eq!(
            acme.ceiling,
            "100mbit".parse().unwrap(),
            "capped at the uplink"
        );
        let blue = topology
            .tenant_by_name("blue")
            .unwrap()
            .uplink
            .clone()
            .unwrap();
        assert_eq!((blue.ceiling, blue.weight), ("80mbit".parse().unwrap(), 3));
        assert!(topology.tenant_by_name("plain").unwrap().uplink.is_none());
        // Three servers, two gateways, then two uplink ports.
        let kinds: Vec<_> = topology.ports().map(|p| (p.id(), p.kind())).collect();
        assert_eq!(
            kinds[5..],
            [(acme.port, PortKind::Uplink), (blue.port, PortKind::Uplink)]
        );
        assert_eq!((acme.port, blue.port), (PortId(5), PortId(6)));
        assert_eq!(topology.port_id_bound(), 7);
    }

    #[test]
    fn overrides_apply_per_tenant() {
        let text = BASE.replace(
            "nat = true\n",
            "nat = true\n[tenants.acme.uplink]\nguaranteed = \"20mbit\"\nceiling = \"40mbit\"\nweight = 2\n",
        );
        let topology = parse(Path::new("t.toml"), &text).unwrap();
        let acme = topology
            .tenant_by_name("acme")
            .unwrap()
            .uplink
            .clone()
            .unwrap();
        let want = ("20mbit".parse().unwrap(), "40mbit".parse().unwrap(), 2);
        assert_eq!((acme.guaranteed, acme.ceiling, acme.weight), want);
    }

    #[test]
    fn every_bad_uplink_key_is_named_at_once() {
        let text = BASE
            .replace(
                "interface = \"eth1\"",
                "interface = \"an-interface-name-too-long\"",
            )
            .replace("capacity = \"100mbit\"", "capacity = \"fast\"")
            .replace(
                "gateway = \"203.0.113.1/28\"\n",
                "gateway = \"203.0.113.1/28\"\n[tenants.blue.uplink]\nweight = 0\n",
            )
            .replace(
                "guaranteed = \"10mbit\"\n",
                "guaranteed = \"10mbit\"\n[tenants.plain.uplink]\nguaranteed = \"5mbit\"\n",
            );
        let errors = problems(&text);
        let want = [
            "uplink.interface = \"an-interface-name-too-long\": not a usable interface name",
            "uplink.capacity = \"fast\": malformed rate",
            "tenants.blue.uplink.weight = 0: weight must be",
            "tenants.plain.uplink: needs a gateway",
        ];
        for want in want {
            assert_reported(&errors, want);
        }
    }

    #[test]
    fn uplink_guarantees_above_its_capacity_are_refused() {
        let text = BASE.replace("guaranteed = \"50mbit\"", "guaranteed = \"80mbit\"");
        let errors = problems(&text);
        assert_reported(
            &errors,
            "uplink.capacity = 100mbit: the tenants' uplink guarantees sum to 110mbit",
        );
        let text = BASE.replace(
            "nat = true\n",
            "nat = true\n[tenants.acme.uplink]\nceiling = \"200mbit\"\n",
        );
        let errors = problems(&text);
        assert_reported(
            &errors,
            "tenants.acme.uplink.ceiling = \"200mbit\": ceiling is above the uplink capacity",
        );
    }

    #[test]
    fn a_tenant_uplink_needs_the_uplink() {
        let text = BASE
            .replace(
                "[uplink]\ninterface = \"eth1\"\nnetns = \"edge\"\ncapacity = \"100mbit\"\n",
                "",
            )
            .replace(
                "nat = true\n",
                "nat = true\n[tenants.acme.uplink]\nweight = 2\n",
            );
        let errors = problems(&text);
        assert_reported(&errors, "tenants.acme.uplink: needs an uplink");
    }

    const BRIDGED: &str = r#"
[host]
capacity = "1gbit"
[uplink]
interface = "eth1"
capacity = "100mbit"
mode = "bridged"
[tenants.a]
guaranteed = "10mbit"
vlan = 100
[tenants.b]
guaranteed = "10mbit"
vlan = 200
[tenants.local]
guaranteed = "10mbit"
[servers.a1]
tenant = "a"
ip = "10.1.0.1/24"
[servers.b1]
tenant = "b"
ip = "10.1.0.1/24"
[servers.l1]
tenant = "local"
ip = "10.9.0.1/24"
"#;

    #[test]
    fn on_a_bridged_uplink_tenants_with_a_vlan_get_a_trunk_port() {
        let t = parse(Path::new("b.toml"), BRIDGED).unwrap();
        assert_eq!(t.uplink.as_ref().unwrap().mode, UplinkMode::Bridged);
        let vlans: Vec<_> = t
            .tenants
            .iter()
            .map(|t| t.uplink.as_ref().and_then(|u| u.vlan))
            .collect();
        assert_eq!(
            vlans,
            [Some(100), Some(200), None],
            "local stays off the uplink"
        );
        let kinds: Vec<_> = t.ports().map(|p| p.kind()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == PortKind::Trunk).count(), 2);
        assert!(!t.tenants[0].is_routed());
        // It writes back as it was read.
        let again = toml::to_string(&t.to_file()).unwrap();
        assert!(
            again.contains("mode = \"bridged\"") && again.contains("vlan = 200"),
            "{again}"
        );
    }

    #[test]
    fn every_vlan_problem_is_reported() {
        let text = BRIDGED.replace("vlan = 200", "vlan = 100").replace(
            "guaranteed = \"10mbit\"\n[servers",
            "guaranteed = \"10mbit\"\nvlan = 4095\ngateway = \"10.9.0.254/24\"\n[servers",
        );
        let errors = problems(&text);
        for wanted in [
            "tenants.b.vlan = 100: VLAN already used by tenant \"a\"",
            "tenants.local.vlan = 4095: VLAN must be an integer from 1 to 4094",
            "tenants.local.gateway: a tenant on a bridged uplink has its gateway upstream",
        ] {
            assert_reported(&errors, wanted);
        }
        let routed = BRIDGED.replace("mode = \"bridged\"\n", "");
        let errors = problems(&routed);
        assert_reported(&errors, "tenants.a.vlan = 100: needs a bridged uplink");
        let unknown = BRIDGED.replace("\"bridged\"", "\"switched\"");
        let errors = problems(&unknown);
        assert_reported(&errors, "uplink.mode = \"switched\": unknown uplink mode");
    }
}
