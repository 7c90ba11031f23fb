//! Scenario `uplink`: servers reaching the outside through netd's routed uplink, beside the
//! kernel doing the same job, in the same run.
//!
//! Both sides get their own emulated edge, entirely in namespaces: `…-edge` (the host's own
//! stack, uplink `eth1` = 198.51.100.2) and `…-net` (the provider's router, which routes the
//! public subnet 203.0.113.0/28 to the host, and an internet host 192.0.2.1).
//!
//! - netd: `netd up` on a topology with `[uplink]` (router namespace per tenant, TUN port,
//!   double masquerade for NAT tenants; see README "Reaching the outside").
//! - kernel: per tenant a router namespace holding a Linux bridge with the servers' veths and
//!   the gateway address, IPv4 forwarding, masquerade for NAT tenants, and a veth to the
//!   edge; the edge routes public subnets, masquerades NAT tenants out of `eth1`, and shapes
//!   with tuned HTB on two IFBs: one fed by the tenants' veths' ingress (upload) and one by
//!   their egress (download), classes per tenant classified by u32 on the tenant's address
//!   as the edge sees it. Why not HTB on `eth1` itself and an IFB on its ingress: after
//!   masquerade every NAT tenant has the uplink's address there, and this kernel has no
//!   `fw`, `connmark` or `ctinfo` classifier to tell them apart by a mark; at the tenants'
//!   veths the kernel shapes exactly what netd shapes at its uplink ports.
//!
//! Figures (receiver goodput; wire bytes = goodput × 1514 / 1448 for the split):
//! - one TCP flow each way through NAT and through a public address, the uplink not
//!   binding (10 Gbit/s): target netd ≥ 0.8 × the kernel's goodput;
//! - upload, then download, split among three tenants (two NAT with the same subnet, one
//!   public) on a 300 Mbit/s uplink: error against weighted water-filling, target ≤ 0.5%.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::Ctx;
use crate::iperf::{Client, IperfServer, Load, settle};
use crate::kernel_side::Htb;
use crate::netd_side::NetdBed;
use crate::proc::{check_stop, delete_namespaces, run_args};
use crate::report::{Figures, Side, Target};
use crate::scenarios::Outcome;

const T: Duration = Duration::from_secs(60);
const INTERNET_HOST: &str = "192.0.2.1";
/// Wire bytes per goodput byte at MTU 1500 with TCP timestamps.
const WIRE_PER_GOODPUT: f64 = 1514.0 / 1448.0;

/// One routed tenant with one server.
#[derive(Debug, Clone, Copy)]
struct Tenant {
    name: &'static str,
    nat: bool,
    /// Gateway address with the subnet's prefix.
    gateway: &'static str,
    /// The server's address with prefix.
    server: &'static str,
    guaranteed_mbit: u64,
    weight: u32,
}

const NAT_A: Tenant = Tenant {
    name: "a",
    nat: true,
    gateway: "10.1.0.1/24",
    server: "10.1.0.10/24",
    guaranteed_mbit: 100,
    weight: 2,
};
const NAT_B: Tenant = Tenant {
    name: "b",
    nat: true,
    gateway: "10.1.0.1/24",
    server: "10.1.0.10/24",
    guaranteed_mbit: 60,
    weight: 1,
};
const PUBLIC_C: Tenant = Tenant {
    name: "c",
    nat: false,
    gateway: "203.0.113.1/28",
    server: "203.0.113.2/28",
    guaranteed_mbit: 40,
    weight: 1,
};

/// Uplink capacity of the split runs; guarantees 100/60/40 leave 100 to lend 2:1:1.
const SPLIT_CAPACITY_MBIT: u64 = 300;
/// Uplink capacity of the throughput runs: not binding.
const OPEN_CAPACITY_MBIT: u64 = 10_000;

/// Both sides of one uplink set-up; dropping it removes every namespace of both.
struct UplinkBed {
    prefix: String,
    netd: Option<NetdBed>,
    netd_prefix: String,
    kernel_prefix: String,
}

impl Drop for UplinkBed {
    fn drop(&mut self) {
        if let Some(mut netd) = self.netd.take() {
            netd.down(Duration::from_secs(60));
        }
        delete_namespaces(&self.prefix);
    }
}

impl UplinkBed {
    fn up(ctx: &Ctx, tag: &str, tenants: &[Tenant], capacity_mbit: u64) -> Result<UplinkBed> {
        let prefix = format!("{}u{tag}", ctx.prefix);
        let mut bed = UplinkBed {
            netd_prefix: format!("{prefix}n"),
            kernel_prefix: format!("{prefix}k"),
            prefix,
            netd: None,
        };
        edge(ctx, &bed.netd_prefix)?;
        edge(ctx, &bed.kernel_prefix)?;
        let text = netd_topology(&bed.netd_prefix, tenants, capacity_mbit);
        bed.netd = Some(NetdBed::up_text(
            &text,
            &bed.netd_prefix,
            &ctx.tmp,
            &ctx.netd_args,
            Duration::from_secs(60),
        )?);
        kernel_side(&bed.kernel_prefix, tenants, capacity_mbit)?;
        Ok(bed)
    }

    /// The namespaces of `side`'s server of `tenant` and of its internet host.
    fn ends(&self, side: Side, tenant: &Tenant) -> (String, String) {
        let p = match side {
            Side::Netd => &self.netd_prefix,
            _ => &self.kernel_prefix,
        };
        (format!("{p}-{}1", tenant.name), format!("{p}-net"))
    }
}

/// Run `ip ARGS` (split on spaces).
fn ip(args: &str) -> Result<()> {
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut full = vec!["ip"];
    full.extend(&args);
    run_args(&full, None, T).map(|_| ())
}

/// Run a command in namespace `ns` (split on spaces).
fn ns(ns: &str, args: &str) -> Result<()> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend(args.split_whitespace());
    run_args(&full, None, T).map(|_| ())
}

/// Run `nft -f -` with `script` in namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    run_args(
        &["ip", "netns", "exec", ns, "nft", "-f", "-"],
        Some(script),
        T,
    )
    .map(|_| ())
}

/// Build `{p}-edge` and `{p}-net` (see the module docs) with the README's demo script.
fn edge(ctx: &Ctx, p: &str) -> Result<()> {
    let script = ctx.repo.join("scripts/demo-edge");
    let mut cmd = std::process::Command::new(script);
    cmd.arg("up")
        .env("EDGE_NETNS", format!("{p}-edge"))
        .env("NET_NETNS", format!("{p}-net"));
    crate::proc::run(cmd, "scripts/demo-edge up", None, T).map(|_| ())
}

/// The netd side's topology: the uplink in `{p}-edge`, one server per tenant.
fn netd_topology(p: &str, tenants: &[Tenant], capacity_mbit: u64) -> String {
    let mut text = format!(
        "[host]\ncapacity = \"20gbit\"\n\n[uplink]\ninterface = \"eth1\"\nnetns = \"{p}-edge\"\n\
         capacity = \"{capacity_mbit}mbit\"\n"
    );
    for t in tenants {
        text.push_str(&format!(
            "\n[tenants.{n}]\nguaranteed = \"1gbit\"\ngateway = \"{g}\"\nnat = {nat}\n\
             [tenants.{n}.uplink]\nguaranteed = \"{gm}mbit\"\nweight = {w}\n\
             [servers.{p}-{n}1]\ntenant = \"{n}\"\nip = \"{s}\"\n",
            n = t.name,
            g = t.gateway,
            nat = t.nat,
            gm = t.guaranteed_mbit,
            w = t.weight,
            s = t.server,
        ));
    }
    text
}

/// The kernel side (see the module docs), under `{p}-`.
fn kernel_side(p: &str, tenants: &[Tenant], capacity_mbit: u64) -> Result<()> {
    let edge = format!("{p}-edge");
    ns(&edge, "sysctl -q -w net.ipv4.ip_forward=1")?;
    let mut nat_veths = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let (router, server) = (format!("{p}-r{}", t.name), format!("{p}-{}1", t.name));
        let (host_ip, router_ip) = (format!("169.254.{i}.1"), format!("169.254.{i}.2"));
        let veth = format!("kt{i}");
        ip(&format!("netns add {router}"))?;
        ip(&format!("netns add {server}"))?;
        for cmd in [
            "link set lo up".to_string(),
            "link add br0 type bridge".into(),
            format!("addr add {} dev br0", t.gateway),
            "link set br0 up".into(),
        ] {
            ip(&format!("-n {router} {cmd}"))?;
        }
        ip(&format!(
            "-n {server} link add eth0 type veth peer name p0 netns {router}"
        ))?;
        ip(&format!("-n {router} link set p0 master br0 up"))?;
        let gateway = t.gateway.split('/').next().unwrap_or_default();
        for cmd in [
            "link set lo up".to_string(),
            format!("addr add {} dev eth0", t.server),
            "link set eth0 up".into(),
            format!("route add default via {gateway}"),
        ] {
            ip(&format!("-n {server} {cmd}"))?;
        }
        ip(&format!(
            "-n {edge} link add {veth} type veth peer name uplink0 netns {router}"
        ))?;
        ip(&format!("-n {edge} addr add {host_ip}/30 dev {veth}"))?;
        ip(&format!("-n {edge} link set {veth} up"))?;
        ip(&format!("-n {router} addr add {router_ip}/30 dev uplink0"))?;
        ip(&format!("-n {router} link set uplink0 up"))?;
        ip(&format!("-n {router} route add default via {host_ip}"))?;
        ns(&router, "sysctl -q -w net.ipv4.ip_forward=1")?;
        if t.nat {
            nft(
                &router,
                "table ip k {\n chain post {\n type nat hook postrouting priority srcnat;\n \
                 oifname \"uplink0\" masquerade\n }\n}\n",
            )?;
            nat_veths.push(format!("\"{veth}\""));
        } else {
            let subnet = "203.0.113.0/28";
            ip(&format!(
                "-n {edge} route add {subnet} via {router_ip} dev {veth}"
            ))?;
        }
    }
    if !nat_veths.is_empty() {
        nft(
            &edge,
            &format!(
                "table ip k {{\n chain post {{\n type nat hook postrouting priority srcnat;\n \
                 iifname {{ {} }} oifname \"eth1\" masquerade\n }}\n}}\n",
                nat_veths.join(", ")
            ),
        )?;
    }
    kernel_shaping(&edge, tenants, capacity_mbit)
}

/// Tuned HTB on two IFBs in the edge: upload from the tenants' veths' ingress, download
/// from their egress; one class per tenant, u32 on its address as the edge sees it.
fn kernel_shaping(edge: &str, tenants: &[Tenant], capacity_mbit: u64) -> Result<()> {
    let tc = |args: String| ns(edge, &format!("tc {args}"));
    for (ifb, _) in [("ifbup", "src"), ("ifbdn", "dst")] {
        ip(&format!(
            "-n {edge} link add {ifb} txqueuelen 1000 type ifb"
        ))?;
        ip(&format!("-n {edge} link set {ifb} up"))?;
        tc(format!("qdisc add dev {ifb} root handle 1: htb"))?;
        let burst = tuned_burst(capacity_mbit);
        tc(format!(
            "class add dev {ifb} parent 1: classid 1:1 htb rate {capacity_mbit}mbit \
             ceil {capacity_mbit}mbit burst {burst} cburst {burst}"
        ))?;
    }
    for (i, t) in tenants.iter().enumerate() {
        let veth = format!("kt{i}");
        // What the edge sees of the tenant: its router's address (NAT), or its subnet.
        let address = if t.nat {
            format!("169.254.{i}.2/32")
        } else {
            "203.0.113.0/28".to_string()
        };
        tc(format!("qdisc add dev {veth} clsact"))?;
        tc(format!(
            "filter add dev {veth} ingress protocol all u32 match u32 0 0 \
             action mirred egress redirect dev ifbup"
        ))?;
        tc(format!(
            "filter add dev {veth} egress protocol all u32 match u32 0 0 \
             action mirred egress redirect dev ifbdn"
        ))?;
        for (ifb, field) in [("ifbup", "src"), ("ifbdn", "dst")] {
            let class = 10 + i;
            let burst = tuned_burst(t.guaranteed_mbit);
            tc(format!(
                "class add dev {ifb} parent 1:1 classid 1:{class} htb rate {g}mbit \
                 ceil {capacity_mbit}mbit burst {burst} cburst {cburst} quantum {q}",
                g = t.guaranteed_mbit,
                cburst = tuned_burst(capacity_mbit),
                q = t.weight * 60_000,
            ))?;
            tc(format!(
                "filter add dev {ifb} parent 1: protocol ip prio 1 u32 match ip {field} \
                 {address} flowid 1:{class}"
            ))?;
        }
    }
    Ok(())
}

/// The kernel bench's tuned HTB burst: max(100 kB, 1 ms at the rate), in bytes.
fn tuned_burst(mbit: u64) -> u64 {
    (mbit * 1_000_000 / 8 / 1000).max(100_000)
}

/// Run one TCP flow per tenant at once, `download` reversed; return each receiver's goodput.
fn flows(
    ctx: &Ctx,
    bed: &UplinkBed,
    side: Side,
    tenants: &[Tenant],
    download: bool,
    secs: f64,
) -> Result<Vec<f64>> {
    let port = |i: usize| 5201 + u16::try_from(i).unwrap_or(0);
    let mut servers = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        servers.push(IperfServer::start(&bed.ends(side, t).1, port(i))?);
    }
    // Every server listens before any client starts, so the flows start and end together.
    settle()?;
    let mut clients = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let (server_ns, _) = bed.ends(side, t);
        let port = port(i);
        let load = Load {
            secs: secs + ctx.warm,
            flows: 1,
            udp_len: None,
            cc: ctx.cc.clone(),
        };
        clients.push(Client::start_with(
            &server_ns,
            INTERNET_HOST,
            port,
            &load,
            ctx.warm,
            download,
        )?);
    }
    let rates = clients
        .into_iter()
        .map(|c| c.finish().map(|r| r.goodput_bps))
        .collect::<Result<Vec<f64>>>()?;
    drop(servers);
    Ok(rates)
}

fn sides(ctx: &Ctx) -> [Side; 2] {
    [Side::Netd, Side::Kernel(Htb::Tuned, ctx.tap_offloads)]
}

/// Water-filling of `capacity` among busy tenants (bit/s).
fn entitlement(capacity: f64, tenants: &[Tenant]) -> Vec<f64> {
    let mut give: Vec<f64> = tenants
        .iter()
        .map(|t| t.guaranteed_mbit as f64 * 1e6)
        .collect();
    let spare = capacity - give.iter().sum::<f64>();
    let weights: f64 = tenants.iter().map(|t| f64::from(t.weight)).sum();
    for (g, t) in give.iter_mut().zip(tenants) {
        *g += spare * f64::from(t.weight) / weights;
    }
    give
}

/// The scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    const NAME: &str = "uplink";
    let (mut out, mut fig) = (Outcome::default(), Figures::new(ctx.tap_offloads));
    // Throughput: one flow each way, NAT and public, the uplink not binding.
    {
        let bed = UplinkBed::up(ctx, "t", &[NAT_A, PUBLIC_C], OPEN_CAPACITY_MBIT)?;
        for rep in 0..ctx.reps {
            for side in sides(ctx) {
                for (tenant, what) in [(NAT_A, "NAT"), (PUBLIC_C, "public")] {
                    for (download, dir) in [(false, "upload"), (true, "download")] {
                        check_stop()?;
                        let rate = flows(ctx, &bed, side, &[tenant], download, ctx.tput_secs)?[0];
                        let metric = format!("{what} {dir}, 1 TCP flow");
                        eprintln!(
                            "  {NAME} rep {rep} {}: {metric}: {:.0} Mbit/s",
                            side.label(),
                            rate / 1e6
                        );
                        fig.add(&metric, side, rate / 1e6);
                        out.runs.push(json!({"scenario": NAME, "rep": rep, "side": side.label(), "metric": metric, "goodput_bps": rate}));
                    }
                }
            }
        }
        let mut lowest = f64::INFINITY;
        for what in ["NAT", "public"] {
            for dir in ["upload", "download"] {
                let row = fig.row(NAME, &format!("{what} {dir}, 1 TCP flow"), "Mbit/s", None);
                lowest = lowest.min(row.ratio.unwrap_or(0.0));
                out.rows.push(row);
            }
        }
        let metric = "netd ÷ kernel goodput, lowest of the four";
        fig.add(metric, Side::Netd, lowest);
        out.rows
            .push(fig.row(NAME, metric, "×", Some(Target::AtLeast(0.8))));
    }
    // The split among three tenants, each direction.
    let tenants = [NAT_A, NAT_B, PUBLIC_C];
    let want = entitlement(SPLIT_CAPACITY_MBIT as f64 * 1e6, &tenants);
    let bed = UplinkBed::up(ctx, "s", &tenants, SPLIT_CAPACITY_MBIT)?;
    for rep in 0..ctx.reps {
        for side in sides(ctx) {
            for (download, dir) in [(false, "upload"), (true, "download")] {
                check_stop()?;
                let rates = flows(ctx, &bed, side, &tenants, download, ctx.shape_secs)?;
                let mut worst: f64 = 0.0;
                for ((t, rate), w) in tenants.iter().zip(&rates).zip(&want) {
                    let error = (rate * WIRE_PER_GOODPUT - w) / w * 100.0;
                    worst = worst.max(error.abs());
                    fig.add(&format!("{dir} error {}", t.name), side, error);
                }
                eprintln!(
                    "  {NAME} rep {rep} {}: {dir} split max |error| {worst:.2}%",
                    side.label()
                );
                fig.add(&format!("{dir} max |error|"), side, worst);
                out.runs.push(json!({"scenario": NAME, "rep": rep, "side": side.label(), "direction": dir, "goodput_bps": rates, "want_wire_bps": want}));
            }
        }
    }
    for dir in ["upload", "download"] {
        for t in &tenants {
            out.rows
                .push(fig.row(NAME, &format!("{dir} error {}", t.name), "%", None));
        }
        let metric = format!("{dir} max |error|");
        out.rows
            .push(fig.row(NAME, &metric, "%", Some(Target::AtMost(0.5))));
    }
    out.facts.insert(
        "uplink_split".into(),
        json!({"capacity_mbit": SPLIT_CAPACITY_MBIT, "want_mbit": want.iter().map(|w| w / 1e6).collect::<Vec<_>>()}),
    );
    drop(bed);
    Ok(out)
}
