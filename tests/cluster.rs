//! Many hosts: three emulated hosts (a namespace each for the host's own stack, joined by an
//! underlay bridge), one etcd on loopback, a netd per host following the cluster from it,
//! and tenants spanning the hosts over VXLAN. Needs root, etcd and iproute2.
//!
//! The tests run one at a time (a lock): each runs an etcd and three netds on a 2-core
//! machine, and two of them check how soon a change is applied.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cluster::{
    Etcd, Underlay, host_stats, host_status, push, send_udp, start_host, wait_until,
};
use common::{Daemon, TestTopology, ping, require_privileges, sh};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// acme on all three hosts, blue on a and b with the same addresses as acme's.
const CLUSTER: &str = r#"
[hosts.a]
underlay = "192.0.2.1"
netns = "{p}-ha"
capacity = "10gbit"

[hosts.b]
underlay = "192.0.2.2"
netns = "{p}-hb"
capacity = "10gbit"

[hosts.c]
underlay = "192.0.2.3"
netns = "{p}-hc"
capacity = "10gbit"

[tenants.acme]
guaranteed = "1gbit"
vni = 1001

[tenants.blue]
guaranteed = "1gbit"

[servers.acme-a]
tenant = "acme"
host = "a"
ip = "10.1.0.1/24"
netns = "{p}-acme-a"
mac = "02:00:00:00:0a:01"

[servers.acme-b]
tenant = "acme"
host = "b"
ip = "10.1.0.2/24"
netns = "{p}-acme-b"
mac = "02:00:00:00:0a:02"

[servers.acme-c]
tenant = "acme"
host = "c"
ip = "10.1.0.3/24"
netns = "{p}-acme-c"
mac = "02:00:00:00:0a:03"

[servers.blue-a]
tenant = "blue"
host = "a"
ip = "10.1.0.1/24"
netns = "{p}-blue-a"
mac = "02:00:00:00:0b:01"

[servers.blue-b]
tenant = "blue"
host = "b"
ip = "10.1.0.2/24"
netns = "{p}-blue-b"
mac = "02:00:00:00:0b:02"
"#;

/// Three hosts running the cluster. Fields drop in order: the netds first (their servers
/// go with them), then etcd, the underlay and the topology's leftovers.
struct Lab {
    hosts: BTreeMap<&'static str, Daemon>,
    etcd: Etcd,
    underlay: Underlay,
    topo: TestTopology,
}

impl Lab {
    /// Build the underlay, start etcd, push `template` and start a netd on each host.
    fn start(template: &str, lease_ttl: u32) -> Lab {
        let lab = Lab::start_hosts(template, &["a", "b", "c"], lease_ttl);
        // Each host sees the others once their alive keys are in.
        for name in ["a", "b", "c"] {
            let seen = wait_until(Duration::from_secs(10), || {
                lab.remote_servers(name).len() >= 2
            });
            assert!(
                seen.is_some(),
                "host {name} never saw the others: {}",
                lab.log(name)
            );
        }
        lab
    }

    /// As [`Lab::start`], with a netd on `hosts` only (192.0.2.1, .2, .3 for a, b, c).
    fn start_hosts(template: &str, hosts: &[&'static str], lease_ttl: u32) -> Lab {
        require_privileges();
        let topo = TestTopology::new(template);
        let mut underlay = Underlay::new(&topo.prefix);
        for (name, addr) in [("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")] {
            if hosts.contains(&name) {
                underlay.add_host(name, addr);
            }
        }
        let etcd = Etcd::start(&topo.prefix);
        push(&etcd, &topo.path);
        let mut lab = Lab {
            hosts: BTreeMap::new(),
            etcd,
            underlay,
            topo,
        };
        for name in hosts {
            lab.start_host(name, lease_ttl);
        }
        lab
    }

    fn start_host(&mut self, name: &'static str, lease_ttl: u32) {
        let daemon = start_host(&self.topo.prefix, &self.etcd, name, lease_ttl);
        self.hosts.insert(name, daemon);
    }

    fn ns(&self, server: &str) -> String {
        self.topo.name(server)
    }

    fn log(&self, host: &str) -> String {
        self.hosts.get(host).map(Daemon::log).unwrap_or_default()
    }

    /// The remote servers host `name`'s switch knows.
    fn remote_servers(&self, name: &str) -> Vec<String> {
        let stats = host_stats(&self.topo.prefix, name);
        stats["remote"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| s["server"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Push `template` (with this run's prefix) as the cluster's new topology.
    fn push(&self, template: &str) {
        let path = self.topo.path.with_extension("next.toml");
        std::fs::write(&path, template.replace("{p}", &self.topo.prefix)).unwrap();
        push(&self.etcd, &path);
        let _ = std::fs::remove_file(&path);
    }
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[test]
fn a_tenant_spans_three_hosts_and_tenants_with_the_same_addresses_stay_apart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(CLUSTER, 10);
    for (from, to) in [
        ("acme-a", "10.1.0.2"),
        ("acme-a", "10.1.0.3"),
        ("acme-c", "10.1.0.2"),
    ] {
        assert!(ping(&lab.ns(from), to, 3), "{from} → {to} across hosts");
    }
    assert!(ping(&lab.ns("blue-a"), "10.1.0.2", 3), "blue-a → blue-b");
    // blue has no server on c: acme-c's address is nobody's in blue.
    assert!(
        !ping(&lab.ns("blue-a"), "10.1.0.3", 2),
        "blue reached acme-c"
    );
    // The same address answered from each tenant's own server.
    let neighbour = |server: &str| sh(&lab.ns(server), "ip neigh show 10.1.0.2").1;
    assert!(
        neighbour("acme-a").contains("02:00:00:00:0a:02"),
        "{}",
        neighbour("acme-a")
    );
    assert!(
        neighbour("blue-a").contains("02:00:00:00:0b:02"),
        "{}",
        neighbour("blue-a")
    );
    // A TCP flow across hosts completes, with the tunnel's MTU.
    let (ok, out) = sh(&lab.ns("acme-a"), "ip link show eth0");
    assert!(ok && out.contains("mtu 1450"), "{out}");
    let bits = common::iperf::tcp_flow(&lab.ns("acme-a"), &lab.ns("acme-b"), "10.1.0.2");
    assert!(bits > 1e8, "a TCP flow across hosts got {bits} bit/s");
}

/// A VXLAN datagram (VNI `vni`) carrying an ICMP echo request from `src` (MAC, IPv4) to
/// acme-a.
fn echo_request(vni: u32, src_mac: [u8; 6], src_ip: [u8; 4]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&(vni << 8).to_be_bytes());
    d.extend_from_slice(&[2, 0, 0, 0, 0x0a, 0x01]); // acme-a
    d.extend_from_slice(&src_mac);
    d.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src_ip);
    ip.extend_from_slice(&[10, 1, 0, 1]);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !u16::try_from(sum).unwrap();
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    d.extend_from_slice(&ip);
    d.extend_from_slice(&[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]); // echo request, id 1 seq 0
    d
}

#[test]
fn a_spoofed_frame_injected_on_the_underlay_is_dropped_and_counted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::start(CLUSTER, 10);
    // A stranger on the underlay, at an address that is no host of the cluster.
    let rogue = lab.underlay.add_host("x", "192.0.2.99");
    let tunnel_drops = |lab: &Lab, reason: &str| {
        host_stats(&lab.topo.prefix, "a")["tunnel"]["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    };
    // Echo requests acme-a's kernel received, which background frames do not move.
    let echoes = |lab: &Lab| common::icmp_in_echos(&lab.ns("acme-a"));
    let before = echoes(&lab);
    // 1. From a stranger, as acme-b: not a cluster host.
    let as_acme_b = echo_request(1001, [2, 0, 0, 0, 0x0a, 0x02], [10, 1, 0, 2]);
    send_udp(&rogue, "192.0.2.1:4789", &as_acme_b);
    // 2. From host b, claiming to be acme-c (which runs on c): not that host's server.
    let as_acme_c = echo_request(1001, [2, 0, 0, 0, 0x0a, 0x03], [10, 1, 0, 3]);
    send_udp(&lab.underlay.host_ns("b"), "192.0.2.1:4789", &as_acme_c);
    // 3. From host b with a VNI that is no tenant's.
    send_udp(
        &lab.underlay.host_ns("b"),
        "192.0.2.1:4789",
        &echo_request(4242, [2, 0, 0, 0, 0x0a, 0x02], [10, 1, 0, 2]),
    );
    // 4. From host b as acme-b, but with blue-b's address: the switch's guard drops it.
    let spoofed_ip = echo_request(1001, [2, 0, 0, 0, 0x0a, 0x02], [10, 1, 0, 9]);
    send_udp(&lab.underlay.host_ns("b"), "192.0.2.1:4789", &spoofed_ip);
    let counted = wait_until(Duration::from_secs(5), || {
        tunnel_drops(&lab, "not_a_host") >= 1
            && tunnel_drops(&lab, "unknown_sender") >= 1
            && tunnel_drops(&lab, "unknown_vni") >= 1
    });
    assert!(
        counted.is_some(),
        "tunnel drops: {}",
        host_stats(&lab.topo.prefix, "a")["tunnel"]
    );
    let remote = host_stats(&lab.topo.prefix, "a")["remote"].clone();
    let acme_b = remote
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["server"] == "acme-b")
        .cloned()
        .unwrap();
    assert!(
        acme_b["counters"]["drops"]["spoofed_ipv4"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{acme_b}"
    );
    assert_eq!(
        echoes(&lab),
        before,
        "a spoofed echo request reached acme-a"
    );
    // The same datagram, truthful, from host b gets through (the check is not vacuous).
    send_udp(&lab.underlay.host_ns("b"), "192.0.2.1:4789", &as_acme_b);
    assert!(wait_until(Duration::from_secs(5), || echoes(&lab) == before + 1).is_some());
    lab.hosts.clear();
}

const ADDED: &str = r#"
[servers.acme-c2]
tenant = "acme"
host = "c"
ip = "10.1.0.4/24"
netns = "{p}-acme-c2"
"#;

#[test]
fn a_server_pushed_appears_on_its_host_and_every_host_applies_it_within_a_second() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(CLUSTER, 10);
    let logged = ["a", "b"].map(|host| lab.log(host).len());
    let pushed_at = unix_ms();
    lab.push(&format!("{CLUSTER}{ADDED}"));
    let applied = |host: &str| -> Option<u64> {
        let store = &host_status(&lab.topo.prefix, host)["store"];
        store["applied_unix_ms"].as_u64()
    };
    let all = wait_until(Duration::from_secs(5), || {
        ["a", "b", "c"]
            .iter()
            .all(|h| applied(h).is_some_and(|at| at >= pushed_at))
    });
    assert!(
        all.is_some(),
        "not every host applied the push: {:?}\n{}",
        ["a", "b", "c"].map(applied),
        lab.log("c")
    );
    for host in ["a", "b", "c"] {
        let took = applied(host).unwrap() - pushed_at;
        assert!(
            took <= 1000,
            "host {host} applied the push {took} ms after it"
        );
    }
    // It runs on c, and the others reach it.
    assert!(common::netns_exists(&lab.ns("acme-c2")));
    assert!(ping(&lab.ns("acme-a"), "10.1.0.4", 3));
    assert!(ping(&lab.ns("acme-b"), "10.1.0.4", 3));
    // An unchanged tenant was not disturbed: no change to blue or its servers on the hosts
    // that run it, since the push.
    let since = |i: usize, host: &str| lab.log(host)[logged[i]..].to_string();
    assert!(
        !since(0, "a").contains("blue") && !since(1, "b").contains("blue"),
        "{}",
        lab.log("a")
    );
}

#[test]
fn a_host_killed_leaves_the_others_when_its_lease_expires_and_comes_back_with_its_servers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::start(CLUSTER, 2);
    assert!(ping(&lab.ns("acme-a"), "10.1.0.3", 2));
    lab.hosts.get_mut("c").unwrap().kill();
    // Within the lease time (2 s) and a little: a and b drop c's server.
    let gone = wait_until(Duration::from_secs(8), || {
        !lab.remote_servers("a").contains(&"acme-c".to_string())
            && !lab.remote_servers("b").contains(&"acme-c".to_string())
    });
    assert!(
        gone.is_some(),
        "c's server is still known: {}",
        lab.log("a")
    );
    let cluster = std::process::Command::new(common::netd_bin())
        .args(["status", "--cluster", "--json", "--etcd", &lab.etcd.url])
        .output()
        .unwrap();
    let cluster: serde_json::Value = serde_json::from_slice(&cluster.stdout).unwrap();
    let c = cluster["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "c")
        .cloned()
        .unwrap();
    assert_eq!(c["alive"], false, "{cluster}");
    // The servers of a and b still reach each other meanwhile.
    assert!(ping(&lab.ns("acme-a"), "10.1.0.2", 2));
    // c's netd starts again: it adopts its server (left running), and the others see it.
    lab.start_host("c", 2);
    let back = wait_until(Duration::from_secs(8), || {
        lab.remote_servers("a").contains(&"acme-c".to_string())
    });
    assert!(back.is_some(), "c did not come back: {}", lab.log("c"));
    assert!(ping(&lab.ns("acme-a"), "10.1.0.3", 3));
}

#[test]
fn forwarding_goes_on_while_etcd_is_down_and_a_change_after_it_returns_is_applied() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::start(CLUSTER, 3);
    // A ping every 100 ms across hosts for the whole outage: 60 of them.
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("acme-a"),
            "ping",
            "-n",
            "-q",
            "-c",
            "60",
            "-i",
            "0.1",
            "10.1.0.2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.etcd.stop();
    let connected = |lab: &Lab| host_status(&lab.topo.prefix, "a")["store"]["connected"].as_bool();
    let noticed = wait_until(Duration::from_secs(15), || connected(&lab) == Some(false));
    assert!(
        noticed.is_some(),
        "a never said etcd was unreachable: {}",
        lab.log("a")
    );
    let store = host_status(&lab.topo.prefix, "a")["store"].clone();
    assert!(store["error"].is_string(), "{store}");
    std::thread::sleep(Duration::from_secs(2));
    lab.etcd.resume();
    let out = pinger.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(" 0% packet loss"),
        "forwarding stopped: {summary}"
    );
    // Back: a change made now reaches every host.
    let reconnected = wait_until(Duration::from_secs(15), || connected(&lab) == Some(true));
    assert!(
        reconnected.is_some(),
        "a did not reconnect: {}",
        lab.log("a")
    );
    lab.push(&format!("{CLUSTER}{ADDED}"));
    let reached = wait_until(Duration::from_secs(10), || {
        common::netns_exists(&lab.ns("acme-c2"))
    });
    assert!(
        reached.is_some(),
        "c did not apply the change after etcd came back"
    );
    assert!(ping(&lab.ns("acme-a"), "10.1.0.4", 5), "{}", lab.log("a"));
}

/// Host a runs netd; host k is a Linux host with the kernel's own VXLAN: a `vxlan` device
/// for acme's VNI and a bridge, with a plain namespace behind it as its server.
const WITH_KERNEL_HOST: &str = r#"
[hosts.a]
underlay = "192.0.2.1"
netns = "{p}-ha"
capacity = "10gbit"

[hosts.k]
underlay = "192.0.2.9"
capacity = "10gbit"
external = true

[tenants.acme]
guaranteed = "1gbit"
vni = 1001

[servers.acme-a]
tenant = "acme"
host = "a"
ip = "10.1.0.1/24"
netns = "{p}-acme-a"

[servers.acme-k]
tenant = "acme"
host = "k"
ip = "10.1.0.9/24"
mac = "02:00:00:00:0a:09"
netns = "{p}-acme-k"
"#;

#[test]
fn a_kernel_vxlan_host_and_a_netd_host_share_a_tenant() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::start_hosts(WITH_KERNEL_HOST, &["a"], 10);
    let k = lab.underlay.add_host("k", "192.0.2.9");
    let server = lab.ns("acme-k");
    lab.underlay.add_server_ns(&server);
    // The kernel's side, as a Linux host would set it up. Its underlay NIC computes
    // checksums (tx off: a veth would leave the inner ones to the receiving kernel, which
    // no real wire does; without it the ACKs reach netd's side with partial checksums).
    let script = format!(
        "ethtool -K eth0 tx off >/dev/null && \
         ip link add vx0 type vxlan id 1001 dstport 4789 local 192.0.2.9 nolearning && \
         ip link add br0 type bridge && ip link set vx0 master br0 && \
         ip link add vk type veth peer name eth0 netns {server} && ip link set vk master br0 && \
         ip link set vx0 up && ip link set vk up && ip link set br0 up && \
         bridge fdb append 00:00:00:00:00:00 dev vx0 dst 192.0.2.1"
    );
    let (ok, out) = sh(&k, &script);
    assert!(ok, "kernel host: {out}");
    let (ok, out) = sh(
        &server,
        "ip link set eth0 address 02:00:00:00:0a:09 mtu 1450 && \
         ip addr add 10.1.0.9/24 dev eth0 && ip link set eth0 up && ip link set lo up",
    );
    assert!(ok, "kernel host's server: {out}");
    assert!(ping(&server, "10.1.0.1", 3), "kernel host → netd host");
    assert!(
        ping(&lab.ns("acme-a"), "10.1.0.9", 3),
        "netd host → kernel host"
    );
    // A TCP flow each way completes, at the tunnel's MTU on both sides.
    for (client, server_ns, addr) in [
        (lab.ns("acme-a"), server.clone(), "10.1.0.9"),
        (server.clone(), lab.ns("acme-a"), "10.1.0.1"),
    ] {
        let bits = common::iperf::tcp_flow(&client, &server_ns, addr);
        assert!(bits > 1e8, "{client} → {addr}: {bits} bit/s");
    }
    lab.hosts.clear();
}

#[test]
fn an_etcd_with_authentication_takes_the_operators_credentials_and_nothing_less() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_privileges();
    let topo = TestTopology::new(CLUSTER);
    let etcd = Etcd::start(&topo.prefix);
    let (ok, out) = etcd.ctl(&["user", "add", "root:root-pw-4711", "--interactive=false"]);
    assert!(ok, "{out}");
    let (ok, out) = etcd.ctl(&["auth", "enable"]);
    assert!(ok, "{out}");
    let dir = common::TempDir::new(&format!("{}-pw", topo.prefix));
    let private = common::TempFile::create(&dir.0.join("pw"), "root-pw-4711\n", 0o600);
    let shared = common::TempFile::create(&dir.0.join("open"), "root-pw-4711\n", 0o644);
    let wrong = common::TempFile::create(&dir.0.join("wrong"), "not-it\n", 0o600);
    let push = |extra: &[&str]| common::cluster::try_push(&etcd, &topo.path, extra);
    let (ok, text) = push(&[]);
    assert!(!ok, "pushed without credentials: {text}");
    let (ok, text) = push(&[
        "--etcd-user",
        "root",
        "--etcd-password-file",
        wrong.0.to_str().unwrap(),
    ]);
    assert!(!ok, "pushed with a wrong password: {text}");
    let (ok, text) = push(&[
        "--etcd-user",
        "root",
        "--etcd-password-file",
        shared.0.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("chmod 600"), "{text}");
    let (ok, text) = push(&[
        "--etcd-user",
        "root",
        "--etcd-password-file",
        private.0.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
}
