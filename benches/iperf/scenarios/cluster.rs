//! Scenario `cluster` (issue 13): H emulated hosts × 10 servers following one etcd, on this
//! one machine (`--cluster-hosts`, default 100).
//!
//! Each host is a namespace on one underlay bridge (192.0.2.N/24) with a netd of its own
//! (`up --etcd URL --host hNNN`). Tenant `tK` has one server on each of hosts K … K+9
//! (mod H), so every host runs 10 servers of 10 tenants and knows 90 remote servers. The
//! etcd server is Debian's, on loopback, with a temporary data dir. Figures:
//! - push → applied: from just before `netd push`'s transaction to each affected host's
//!   `applied_unix_ms` (what it publishes in its status key right after applying), over
//!   `reps` × 4 pushes (a server added, then removed, on alternate tenants): p50 and p99 over
//!   every affected host of every push; target p99 ≤ 1 s;
//! - memory: each netd's VmRSS once all are up (median and largest);
//! - etcd's size: its database file as `etcdctl endpoint status` reports it, after the run;
//! - one TCP flow between two hosts: netd's VXLAN beside the kernel's own (a bridge and a
//!   `vxlan` device in two more host namespaces on the same underlay), alternating, as a
//!   ratio; target ≥ 0.8.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::Ctx;
use crate::iperf::{Client, IperfServer, Load, settle};
use crate::kernel_side::{Htb, Offloads};
use crate::measure::{percentile, status_kb};
use crate::proc::{self, check_stop, sleep};
use crate::report::{Figures, Side, Target};
use crate::scenarios::Outcome;

const NAME: &str = "13 cluster";
/// Servers per host, and hosts per tenant.
const PER_HOST: usize = 10;
/// The kernel's side of the throughput pair: two hosts at these underlay addresses.
const KERNEL_HOSTS: [(&str, &str); 2] = [("ka", "192.0.2.251"), ("kb", "192.0.2.252")];

/// Run the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let hosts = ctx.cluster_hosts;
    if !(PER_HOST..=200).contains(&hosts) {
        bail!("--cluster-hosts must be 10 to 200, not {hosts}");
    }
    let mut out = Outcome::default();
    let mut fig = Figures::new(ctx.tap_offloads);
    let _neighbours = NeighbourTable::room_for(hosts)?;
    let lab = Lab::up(ctx, hosts)?;
    let rss: Vec<f64> = lab
        .netds
        .values()
        .filter_map(|c| status_kb(c.id(), "VmRSS"))
        .map(|kb| kb as f64 / 1024.0)
        .collect();
    fig.add(
        "netd RSS per host (median)",
        Side::Netd,
        percentile(&rss, 0.5),
    );
    fig.add(
        "netd RSS per host (largest)",
        Side::Netd,
        percentile(&rss, 1.0),
    );
    eprintln!(
        "  {NAME}: {hosts} hosts up; netd RSS median {:.1} MiB",
        percentile(&rss, 0.5)
    );

    let latencies = lab.propagation(ctx.reps as usize * 4)?;
    fig.add(
        "push → applied on every affected host: p50",
        Side::Netd,
        percentile(&latencies, 0.5),
    );
    fig.add(
        "push → applied on every affected host: p99",
        Side::Netd,
        percentile(&latencies, 0.99),
    );
    let (db_mb, in_use_mb) = lab.etcd_size()?;
    fig.add("etcd database size", Side::Netd, db_mb);
    fig.add("etcd database in use", Side::Netd, in_use_mb);

    let kernel = KernelPair::up(&lab)?;
    let side_kernel = Side::Kernel(Htb::Off, Offloads::Veth);
    let mut flows = Vec::new();
    let mut reach_waits = Vec::new();
    for rep in 0..ctx.reps {
        for side in [Side::Netd, side_kernel] {
            check_stop()?;
            let (client, server, addr) = match side {
                Side::Netd => (lab.server_ns(0, 0), lab.server_ns(0, 1), "10.0.0.2"),
                _ => (kernel.server_ns(0), kernel.server_ns(1), "10.9.0.2"),
            };
            // Reachable first (the first pings of a fresh pair can be lost: see the note).
            let waited = Instant::now();
            while crate::iperf::ping(&client, addr, 1).map_or(true, |rtts| rtts.is_empty()) {
                if waited.elapsed() > Duration::from_secs(30) {
                    bail!("{}: {client} cannot reach {addr}", side.label());
                }
                check_stop()?;
            }
            let waited = waited.elapsed().as_secs_f64();
            if waited > 1.5 {
                eprintln!(
                    "  {NAME} {}: {addr} reachable after {waited:.1} s",
                    side.label()
                );
            }
            reach_waits.push(json!({"rep": rep, "side": side, "s": waited}));
            let _iperf = IperfServer::start(&server, 5201)?;
            settle()?;
            let load = Load {
                secs: ctx.tput_secs,
                flows: 1,
                udp_len: None,
                cc: ctx.cc.clone(),
            };
            let r = Client::start(&client, addr, 5201, &load)?.finish()?;
            eprintln!(
                "  {NAME} rep {rep} {:<34} {:.2} Gbit/s",
                side.label(),
                r.goodput_bps / 1e9
            );
            fig.add("1 TCP flow between two hosts", side, r.goodput_bps / 1e9);
            flows.push(json!({"rep": rep, "side": side, "iperf": r}));
        }
    }
    let median = |side: Side| {
        let v: Vec<f64> = flows
            .iter()
            .filter(|f| f["side"] == json!(side))
            .filter_map(|f| f["iperf"]["goodput_bps"].as_f64())
            .collect();
        percentile(&v, 0.5)
    };
    let ratio = median(Side::Netd) / median(side_kernel);
    fig.add("1 TCP flow: netd / the kernel's VXLAN", Side::Netd, ratio);
    out.runs.push(json!({
        "scenario": NAME, "hosts": hosts, "servers": hosts * PER_HOST,
        "netd_rss_mib": rss, "push_to_applied_ms": latencies, "etcd_db_mb": db_mb,
        "etcd_in_use_mb": in_use_mb, "flows": flows, "reachable_after_s": reach_waits,
    }));
    let rows = [
        ("netd RSS per host (median)", "MiB", None),
        ("netd RSS per host (largest)", "MiB", None),
        ("push → applied on every affected host: p50", "ms", None),
        (
            "push → applied on every affected host: p99",
            "ms",
            Some(Target::AtMost(1000.0)),
        ),
        ("etcd database size", "MB", None),
        ("etcd database in use", "MB", None),
        ("1 TCP flow between two hosts", "Gbit/s", None),
        (
            "1 TCP flow: netd / the kernel's VXLAN",
            "×",
            Some(Target::AtLeast(0.8)),
        ),
    ];
    for (metric, unit, target) in rows {
        out.rows.push(fig.row(NAME, metric, unit, target));
    }
    out.facts.insert("cluster_hosts".into(), json!(hosts));
    out.facts.insert(
        "cluster_ratio_target".into(),
        json!("1 TCP flow between two hosts: netd / kernel vxlan ≥ 0.8"),
    );
    drop(kernel);
    drop(lab);
    Ok(out)
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Run `script` in namespace `ns` with `sh -c`.
fn in_ns(ns: &str, script: &str) -> Result<String> {
    proc::run(
        proc::ns_cmd(ns, &["sh", "-c", script]),
        script,
        None,
        Duration::from_secs(30),
    )
}

/// The emulated cluster: underlay, etcd, a netd per host; torn down on drop.
struct Lab {
    prefix: String,
    hosts: usize,
    dir: PathBuf,
    etcd: Child,
    url: String,
    netds: BTreeMap<usize, Child>,
    runtime: tokio::runtime::Runtime,
    /// The cluster file as pushed last.
    text: String,
    /// Where each netd's log goes (kept after the run).
    logs: PathBuf,
}

impl Lab {
    fn up(ctx: &Ctx, hosts: usize) -> Result<Lab> {
        let prefix = format!("{}c", ctx.prefix);
        let dir = ctx.tmp.join(format!("{prefix}-cluster"));
        std::fs::create_dir_all(&dir)?;
        let (url, etcd) = start_etcd(&prefix, &dir)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let logs = ctx.out_dir.join("cluster-logs");
        std::fs::create_dir_all(&logs)?;
        let mut lab = Lab {
            logs,
            prefix,
            hosts,
            dir,
            etcd,
            url,
            netds: BTreeMap::new(),
            runtime,
            text: String::new(),
        };
        lab.underlay()?;
        lab.text = lab.topology(None);
        lab.push()?;
        let started = Instant::now();
        for h in 0..hosts {
            check_stop()?;
            let child = Command::new(env!("CARGO_BIN_EXE_netd"))
                .args(["--log-format", "json", "up", "--etcd", &lab.url])
                .args(["--host", &host_name(h), "--lease-ttl", "10", "--socket"])
                .arg(lab.dir.join(format!("{}.sock", host_name(h))))
                .env("NETD_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    lab.logs.join(format!("{}.log", host_name(h))),
                )?)
                .spawn()
                .context("starting netd")?;
            lab.netds.insert(h, child);
        }
        // Up once every host applied the topology with all its peers alive.
        let want = PER_HOST * (PER_HOST - 1);
        let deadline = Instant::now() + Duration::from_secs(120 + hosts as u64);
        loop {
            check_stop()?;
            let known = lab.remote_counts()?;
            if known.len() == hosts && known.values().all(|&n| n == want) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the cluster did not come up: remote servers per host {known:?}");
            }
            sleep(Duration::from_millis(500))?;
        }
        eprintln!(
            "  {NAME}: {hosts} netd up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(lab)
    }

    /// Build the bridge and the host namespaces.
    fn underlay(&self) -> Result<()> {
        let ul = format!("{}-ul", self.prefix);
        proc::run_args(&["ip", "netns", "add", &ul], None, Duration::from_secs(10))?;
        in_ns(&ul, "ip link add br0 type bridge && ip link set br0 up")?;
        for h in 0..self.hosts {
            self.add_host(&host_name(h), &format!("192.0.2.{}", h + 1))?;
        }
        Ok(())
    }

    fn add_host(&self, name: &str, addr: &str) -> Result<String> {
        let ul = format!("{}-ul", self.prefix);
        let ns = format!("{}-{name}", self.prefix);
        proc::run_args(&["ip", "netns", "add", &ns], None, Duration::from_secs(10))?;
        in_ns(
            &ul,
            &format!(
                "ip link add u-{name} type veth peer name eth0 netns {ns} && ip link set u-{name} master br0 up"
            ),
        )?;
        in_ns(
            &ns,
            &format!("ip addr add {addr}/24 dev eth0 && ip link set eth0 up && ip link set lo up"),
        )?;
        Ok(ns)
    }

    /// The cluster file: every host, tenant tK on hosts K … K+9, plus `extra` servers.
    fn topology(&self, extra: Option<(usize, usize)>) -> String {
        let mut t = String::new();
        for h in 0..self.hosts {
            t.push_str(&format!(
                "[hosts.{}]\nunderlay = \"192.0.2.{}\"\nnetns = \"{}-{}\"\ncapacity = \"10gbit\"\n\n",
                host_name(h),
                h + 1,
                self.prefix,
                host_name(h)
            ));
        }
        for k in 0..self.hosts {
            t.push_str(&format!("[tenants.t{k:03}]\nguaranteed = \"100mbit\"\n\n"));
            for i in 0..PER_HOST {
                t.push_str(&self.server_entry(k, i, (k + i) % self.hosts));
            }
        }
        if let Some((k, h)) = extra {
            t.push_str(&self.server_entry(k, PER_HOST, h));
        }
        t
    }

    fn server_entry(&self, tenant: usize, i: usize, host: usize) -> String {
        format!(
            "[servers.t{tenant:03}-{i}]\ntenant = \"t{tenant:03}\"\nhost = \"{}\"\nip = \"10.0.0.{}/24\"\nnetns = \"{}\"\n\n",
            host_name(host),
            i + 1,
            self.server_ns(tenant, i)
        )
    }

    fn server_ns(&self, tenant: usize, i: usize) -> String {
        format!("{}-t{tenant:03}-{i}", self.prefix)
    }

    /// Push the current text; return the revision.
    fn push(&self) -> Result<i64> {
        let file = self.dir.join("cluster.toml");
        std::fs::write(&file, &self.text)?;
        let cluster = match netd::topology::load_any(&file)? {
            netd::topology::AnyTopology::Cluster(c) => c,
            netd::topology::AnyTopology::Single(_) => bail!("not a cluster topology"),
        };
        let config = netd::store::StoreConfig::new(&self.url);
        let revision = self.runtime.block_on(async {
            let mut store = netd::store::Store::connect(&config).await?;
            store.push(&cluster, None).await
        })?;
        Ok(revision)
    }

    /// Every host's published status, by host.
    fn statuses(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        let config = netd::store::StoreConfig::new(&self.url);
        let report = self.runtime.block_on(async {
            let mut store = netd::store::Store::connect(&config).await?;
            store.report().await
        })?;
        Ok(report
            .status
            .into_iter()
            .filter_map(|(h, json)| Some((h, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// How many remote servers each host's netd knows (from its control socket).
    fn remote_counts(&self) -> Result<BTreeMap<usize, usize>> {
        let mut counts = BTreeMap::new();
        for h in 0..self.hosts {
            let socket = self.dir.join(format!("{}.sock", host_name(h)));
            let Ok(out) = Command::new(env!("CARGO_BIN_EXE_netd"))
                .arg("--socket")
                .arg(&socket)
                .args(["stats", "--json"])
                .output()
            else {
                continue;
            };
            let Ok(stats) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                continue;
            };
            counts.insert(h, stats["remote"].as_array().map_or(0, Vec::len));
        }
        Ok(counts)
    }

    /// Push `pushes` changes (a server added to a tenant, then removed again); return every
    /// affected host's push → applied time, in ms.
    fn propagation(&self, pushes: usize) -> Result<Vec<f64>> {
        let self_ = self;
        let mut latencies = Vec::new();
        for p in 0..pushes {
            check_stop()?;
            let tenant = (p / 2 * 7) % self_.hosts;
            // The new server goes on the host after the tenant's last.
            let host = (tenant + PER_HOST) % self_.hosts;
            let adding = p % 2 == 0;
            let text = self_.topology(adding.then_some((tenant, host)));
            let affected: Vec<String> = (0..=PER_HOST)
                .map(|i| host_name((tenant + i) % self_.hosts))
                .collect();
            let pushed_at = unix_ms();
            let file = self_.dir.join("cluster.toml");
            std::fs::write(&file, &text)?;
            let cluster = match netd::topology::load_any(&file)? {
                netd::topology::AnyTopology::Cluster(c) => c,
                netd::topology::AnyTopology::Single(_) => bail!("not a cluster topology"),
            };
            let config = netd::store::StoreConfig::new(&self_.url);
            let revision = self_.runtime.block_on(async {
                let mut store = netd::store::Store::connect(&config).await?;
                store.push(&cluster, None).await
            })?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let applied = loop {
                let statuses = self_.statuses()?;
                let applied: Vec<f64> = affected
                    .iter()
                    .filter_map(|h| {
                        let store = &statuses.get(h)?["store"];
                        (store["applied_revision"].as_i64()? >= revision)
                            .then(|| store["applied_unix_ms"].as_u64())
                            .flatten()
                    })
                    .map(|at| at.saturating_sub(pushed_at) as f64)
                    .collect();
                if applied.len() == affected.len() {
                    break applied;
                }
                if Instant::now() > deadline {
                    bail!(
                        "push {p}: only {} of {} hosts applied it",
                        applied.len(),
                        affected.len()
                    );
                }
                sleep(Duration::from_millis(20))?;
            };
            eprintln!(
                "  {NAME} push {p} ({} t{tenant:03}): applied on {} hosts, slowest {:.0} ms",
                if adding { "add to" } else { "remove from" },
                applied.len(),
                applied.iter().copied().fold(0.0, f64::max)
            );
            latencies.extend(applied);
            // Let the hosts settle before the next change.
            sleep(Duration::from_millis(300))?;
        }
        Ok(latencies)
    }

    /// etcd's database size and the part in use, in MB.
    fn etcd_size(&self) -> Result<(f64, f64)> {
        let out = proc::run_args(
            &[
                "etcdctl",
                "--endpoints",
                &self.url,
                "endpoint",
                "status",
                "-w",
                "json",
            ],
            None,
            Duration::from_secs(10),
        )?;
        let status: serde_json::Value = serde_json::from_str(&out)?;
        let s = &status[0]["Status"];
        let mb = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1e6;
        Ok((mb(&s["dbSize"]), mb(&s["dbSizeInUse"])))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.netds.values() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in self.netds.values_mut() {
            let _ = child.wait();
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        proc::delete_namespaces(&self.prefix);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn host_name(h: usize) -> String {
    format!("h{h:03}")
}

/// Start etcd on loopback with its data in `dir`; return its URL and process.
fn start_etcd(prefix: &str, dir: &std::path::Path) -> Result<(String, Child)> {
    let port = |_| -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (client, peer) = (port(0)?, port(1)?);
    let url = format!("http://127.0.0.1:{client}");
    let peer = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", prefix, "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("{prefix}={peer}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log"))?)
        .spawn()
        .context("starting etcd (apt-get install etcd-server)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while proc::run_args(
        &["etcdctl", "--endpoints", &url, "endpoint", "health"],
        None,
        Duration::from_secs(5),
    )
    .is_err()
    {
        if Instant::now() > deadline {
            bail!("etcd did not start");
        }
        sleep(Duration::from_millis(200))?;
    }
    Ok((url, child))
}

/// Room in the kernel's neighbour table for the emulated cluster, given back on drop.
///
/// Every namespace shares one ARP table (`gc_thresh3`, 1024 entries by default): 100 hosts
/// that each know 20 others and 1000 servers that each know a few peers overflow it, and
/// then new neighbours fail (`ping: sendmsg: No buffer space available`, "neighbor table
/// overflow" in the kernel log) for tens of seconds. Real hosts each have their own table.
struct NeighbourTable {
    before: Vec<(String, String)>,
}

impl NeighbourTable {
    fn room_for(hosts: usize) -> Result<NeighbourTable> {
        let entries = (hosts * (4 * PER_HOST + 2 * PER_HOST)).max(1024);
        let mut before = Vec::new();
        for (key, value) in [("gc_thresh2", entries / 2), ("gc_thresh3", entries)] {
            let name = format!("net.ipv4.neigh.default.{key}");
            let old = proc::run_args(&["sysctl", "-n", &name], None, Duration::from_secs(5))?;
            let old = old.trim().to_string();
            if old.parse::<usize>().unwrap_or(0) < value {
                let set = format!("{name}={value}");
                proc::run_args(&["sysctl", "-q", "-w", &set], None, Duration::from_secs(5))?;
                before.push((name, old));
            }
        }
        Ok(NeighbourTable { before })
    }
}

impl Drop for NeighbourTable {
    fn drop(&mut self) {
        for (name, old) in self.before.iter().rev() {
            let set = format!("{name}={old}");
            let _ = proc::run_args(&["sysctl", "-q", "-w", &set], None, Duration::from_secs(5));
        }
    }
}

/// The kernel's VXLAN between two more hosts on the same underlay: a bridge and a `vxlan`
/// device each, with a server namespace behind.
struct KernelPair {
    prefix: String,
}

impl KernelPair {
    fn up(lab: &Lab) -> Result<KernelPair> {
        let pair = KernelPair {
            prefix: format!("{}k", lab.prefix),
        };
        for (i, (name, addr)) in KERNEL_HOSTS.iter().enumerate() {
            let host = lab.add_host(&format!("k{name}"), addr)?;
            let server = pair.server_ns(i);
            proc::run_args(
                &["ip", "netns", "add", &server],
                None,
                Duration::from_secs(10),
            )?;
            let other = KERNEL_HOSTS[1 - i].1;
            in_ns(
                &host,
                &format!(
                    "ip link add vx0 type vxlan id 4242 dstport 4789 local {addr} nolearning && \
                     ip link add br0 type bridge && ip link set vx0 master br0 && \
                     ip link add vk type veth peer name eth0 netns {server} && ip link set vk master br0 && \
                     ip link set vx0 up && ip link set vk up && ip link set br0 up && \
                     bridge fdb append 00:00:00:00:00:00 dev vx0 dst {other}"
                ),
            )?;
            in_ns(
                &server,
                &format!(
                    "ip addr add 10.9.0.{}/24 dev eth0 && ip link set eth0 mtu 1450 up && ip link set lo up",
                    i + 1
                ),
            )?;
        }
        Ok(pair)
    }

    fn server_ns(&self, i: usize) -> String {
        format!("{}-s{i}", self.prefix)
    }
}

impl Drop for KernelPair {
    fn drop(&mut self) {
        proc::delete_namespaces(&self.prefix);
    }
}
