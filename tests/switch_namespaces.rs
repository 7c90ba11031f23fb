//! `netd up` end to end: real namespaces, real TAPs, real ping/tcpdump inside them.
//!
//! Needs root and /dev/net/tun (CI runs as root). Every test uses its own name prefix and
//! its guards remove the daemon and namespaces even when an assertion fails.

mod common;

use std::time::Duration;

use common::{
    Daemon, TestTopology, datapath_scheduling, datapath_task, exec, netns_exists, ping,
    require_privileges, sh,
};

/// Two tenants with overlapping address space; `a` and `b` are the same tenant.
const TWO_TENANTS: &str = r#"
[host]
capacity = "10gbit"

[tenants.{p}-x]
guaranteed = "1gbit"

[tenants.{p}-y]
guaranteed = "1gbit"

[servers.{p}-xa]
tenant = "{p}-x"
ip = "10.77.0.1/24"
ipv6 = "fd77::1/64"

[servers.{p}-xb]
tenant = "{p}-x"
ip = "10.77.0.2/24"
ipv6 = "fd77::2/64"

[servers.{p}-ya]
tenant = "{p}-y"
ip = "10.77.0.1/24"

[servers.{p}-yb]
tenant = "{p}-y"
ip = "10.77.0.2/24"

[servers.{p}-yc]
tenant = "{p}-y"
ip = "10.77.0.3/24"
"#;

#[test]
fn servers_of_one_tenant_reach_each_other_and_overlapping_tenants_both_work() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let _netd = Daemon::start(&topo, &[]);
    // Same addresses in both tenants: each pair reaches its own peer.
    assert!(ping(&topo.name("xa"), "10.77.0.2", 3), "x: xa -> xb failed");
    assert!(ping(&topo.name("ya"), "10.77.0.2", 3), "y: ya -> yb failed");
    assert!(ping(&topo.name("yb"), "10.77.0.1", 3), "y: yb -> ya failed");
    // The ARP entry each sees is its own tenant's server, not the other tenant's.
    let (_, neigh) = sh(&topo.name("xa"), "ip neigh show 10.77.0.2");
    let xb_mac = mac_of(&topo.name("xb"));
    assert!(
        neigh.contains(&xb_mac),
        "xa resolved 10.77.0.2 to {neigh:?}, want xb's {xb_mac}"
    );
}

#[test]
fn nothing_crosses_tenants() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let _netd = Daemon::start(&topo, &[]);
    // 10.77.0.3 exists only in tenant y: tenant x cannot reach it, even by ARP.
    assert!(
        !ping(&topo.name("xa"), "10.77.0.3", 2),
        "x reached tenant y's 10.77.0.3"
    );
    let (_, neigh) = sh(&topo.name("xa"), "ip neigh show 10.77.0.3");
    assert!(
        !neigh.contains("lladdr"),
        "tenant y's MAC leaked to tenant x: {neigh}"
    );
    // Unicast to another tenant's MAC, forced with a static ARP entry, is dropped too.
    let yc_mac = mac_of(&topo.name("yc"));
    let (ok, out) = sh(
        &topo.name("xa"),
        &format!("ip neigh replace 10.77.0.99 lladdr {yc_mac} dev eth0"),
    );
    assert!(ok, "{out}");
    let (ok, out) = sh(&topo.name("yc"), "ip addr add 10.77.0.99/32 dev eth0");
    assert!(ok, "{out}");
    assert!(
        !ping(&topo.name("xa"), "10.77.0.99", 2),
        "x reached y's MAC by unicast"
    );
}

#[test]
fn broadcasts_stay_inside_their_tenant() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let _netd = Daemon::start(&topo, &[]);
    let same = topo.name("xb");
    let other = topo.name("yb");
    // Capture broadcasts in a peer of the sender's tenant (control) and in the other tenant.
    let capture = |ns: String| {
        std::thread::spawn(move || {
            // Inbound only: what the switch delivered to this server.
            let (_, out) = sh(
                &ns,
                "timeout 4 tcpdump -e -n -l -Q in -i eth0 -c 100 'ether broadcast and ip' 2>/dev/null",
            );
            out.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    let seen_same = capture(same);
    let seen_other = capture(other);
    std::thread::sleep(Duration::from_millis(1500));
    // An IPv4 broadcast ping: each request is an Ethernet broadcast.
    let _ = exec(
        &topo.name("xa"),
        &[
            "ping",
            "-b",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.77.0.255",
        ],
    );
    let (seen_same, seen_other) = (seen_same.join().unwrap(), seen_other.join().unwrap());
    assert!(
        seen_same.len() >= 3,
        "the sender's own tenant saw only {seen_same:?}"
    );
    assert!(
        seen_other.is_empty(),
        "another tenant saw broadcasts: {seen_other:?}"
    );
}

#[test]
fn a_server_that_spoofs_its_mac_or_ip_reaches_nobody_and_is_counted() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let mut netd = Daemon::start(&topo, &[]);
    let xa = topo.name("xa");
    let ya = topo.name("ya");
    assert!(ping(&xa, "10.77.0.2", 2), "baseline ping failed");
    assert!(ping(&ya, "10.77.0.2", 2), "baseline ping failed");

    // xa takes another MAC: every frame it sends now has a foreign source MAC.
    let (ok, out) = sh(
        &xa,
        "ip neigh flush dev eth0; ip link set dev eth0 address 02:99:99:99:99:01",
    );
    assert!(ok, "{out}");
    assert!(
        !ping(&xa, "10.77.0.2", 3),
        "spoofed MAC still reached its peer"
    );

    // ya takes another IP: its ARP sender and IPv4 source no longer match.
    let (ok, out) = sh(
        &ya,
        "ip neigh flush dev eth0; ip addr flush dev eth0; ip addr add 10.77.0.50/24 dev eth0",
    );
    assert!(ok, "{out}");
    assert!(
        !ping(&ya, "10.77.0.2", 3),
        "spoofed IP still reached its peer"
    );
    // And even with the peer's MAC known, the spoofed IPv4 source is dropped.
    let yb_mac = mac_of(&topo.name("yb"));
    let (ok, out) = sh(
        &ya,
        &format!("ip neigh replace 10.77.0.2 lladdr {yb_mac} dev eth0"),
    );
    assert!(ok, "{out}");
    assert!(
        !ping(&ya, "10.77.0.2", 2),
        "spoofed IPv4 source reached its peer"
    );

    assert_eq!(
        netd.stop(),
        Some(0),
        "netd did not exit cleanly; log:\n{}",
        netd.log()
    );
    let xa_drops = netd.port_drops(&xa);
    let ya_drops = netd.port_drops(&ya);
    assert!(xa_drops.contains("spoofed_mac"), "xa drops: {xa_drops}");
    assert!(ya_drops.contains("spoofed_arp"), "ya drops: {ya_drops}");
    assert!(ya_drops.contains("spoofed_ipv4"), "ya drops: {ya_drops}");
}

#[test]
fn ipv6_link_local_and_global_work_and_spoofed_ipv6_is_dropped() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let mut netd = Daemon::start(&topo, &[]);
    let xa = topo.name("xa");
    let xb_ll = link_local_of(&topo.name("xb"));
    assert!(
        exec(
            &xa,
            &[
                "ping",
                "-6",
                "-n",
                "-q",
                "-c",
                "3",
                "-W",
                "1",
                "-i",
                "0.2",
                &format!("{xb_ll}%eth0")
            ]
        )
        .status
        .success(),
        "link-local ping xa -> xb failed"
    );
    assert!(
        exec(
            &xa,
            &[
                "ping", "-6", "-n", "-q", "-c", "3", "-W", "1", "-i", "0.2", "fd77::2"
            ]
        )
        .status
        .success(),
        "global ping failed"
    );
    // ya has no IPv6 configured: its link-local works, a global address it invents does not.
    let ya = topo.name("ya");
    let yb_ll = link_local_of(&topo.name("yb"));
    assert!(
        exec(
            &ya,
            &[
                "ping",
                "-6",
                "-n",
                "-q",
                "-c",
                "2",
                "-W",
                "1",
                "-i",
                "0.2",
                &format!("{yb_ll}%eth0")
            ]
        )
        .status
        .success(),
        "link-local ping ya -> yb failed"
    );
    let (ok, out) = sh(&topo.name("yb"), "ip -6 addr add fd99::2/64 dev eth0 nodad");
    assert!(ok, "{out}");
    let (ok, out) = sh(&ya, "ip -6 addr add fd99::1/64 dev eth0 nodad");
    assert!(ok, "{out}");
    assert!(
        !exec(
            &ya,
            &[
                "ping", "-6", "-n", "-q", "-c", "2", "-W", "1", "-i", "0.2", "fd99::2"
            ]
        )
        .status
        .success(),
        "an undeclared IPv6 source got through"
    );
    assert_eq!(netd.stop(), Some(0));
    assert!(
        netd.port_drops(&ya).contains("spoofed_ipv6"),
        "ya drops: {}",
        netd.port_drops(&ya)
    );
}

#[test]
fn sigterm_removes_every_namespace_and_tap() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let mut netd = Daemon::start(&topo, &[]);
    let names: Vec<String> = ["xa", "xb", "ya", "yb", "yc"]
        .iter()
        .map(|n| topo.name(n))
        .collect();
    for ns in &names {
        assert!(netns_exists(ns), "{ns} missing while netd runs");
        let (ok, out) = sh(ns, "ip -o link show eth0");
        assert!(ok && out.contains("UP"), "{ns}: eth0 not up: {out}");
    }
    assert_eq!(netd.stop(), Some(0), "log:\n{}", netd.log());
    for ns in &names {
        assert!(!netns_exists(ns), "{ns} left behind after SIGTERM");
    }
    assert!(common::namespaces_with_prefix(&topo.prefix).is_empty());
}

/// Assert that `netd` exited 1 naming `what` in its error, and created no namespace.
fn assert_refused_before_anything_exists(topo: &TestTopology, mut netd: Daemon, what: &str) {
    assert_eq!(netd.wait_exit(), Some(1), "log:\n{}", netd.log());
    assert!(netd.log().contains(what), "no clear error: {}", netd.log());
    assert!(common::namespaces_with_prefix(&topo.prefix).is_empty());
}

#[test]
fn datapath_cpu_pins_the_data_path_and_a_missing_cpu_is_refused_before_anything_exists() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let refused = Daemon::spawn(&topo, &["--datapath-cpu", &cpus.to_string()]);
    assert_refused_before_anything_exists(&topo, refused, "--datapath-cpu");

    let cpu = cpus - 1;
    let mut netd = Daemon::start(&topo, &["--datapath-cpu", &cpu.to_string()]);
    let status = std::fs::read_to_string(datapath_task(netd.pid()).join("status")).expect("status");
    let allowed: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("Cpus_allowed_list:").map(str::trim))
        .collect();
    assert_eq!(
        allowed,
        vec![cpu.to_string().as_str()],
        "data path affinity"
    );
    assert!(
        ping(&topo.name("xa"), "10.77.0.2", 3),
        "no forwarding when pinned"
    );
    assert_eq!(netd.stop(), Some(0), "log:\n{}", netd.log());
}

#[test]
fn the_data_path_runs_real_time_by_default_and_as_told_otherwise() {
    require_privileges();
    const FIFO: (u32, u32) = (1, 1);
    let topo = TestTopology::new(TWO_TENANTS);
    // As root netd may run real-time threads; if this fails, the host denies root real-time
    // CPU time (a cgroup without it) and netd's log says so.
    let mut explicit = Daemon::start(&topo, &["--datapath-priority", "realtime:3"]);
    assert_eq!(datapath_scheduling(explicit.pid()), (1, 3), "realtime:3");
    assert_eq!(explicit.stop(), Some(0), "log:\n{}", explicit.log());

    let mut netd = Daemon::start(&topo, &[]);
    assert_eq!(datapath_scheduling(netd.pid()), FIFO, "default");
    assert!(
        ping(&topo.name("xa"), "10.77.0.2", 3),
        "no forwarding when real-time"
    );
    assert_eq!(netd.stop(), Some(0), "log:\n{}", netd.log());

    let mut normal = Daemon::start(&topo, &["--datapath-priority", "normal"]);
    assert_eq!(datapath_scheduling(normal.pid()).0, 0, "normal");
    assert_eq!(normal.stop(), Some(0), "log:\n{}", normal.log());
}

#[test]
fn without_real_time_rights_an_explicit_request_is_refused_and_the_default_falls_back() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    // Root without CAP_SYS_NICE: what netd meets in a container or an unprivileged unit.
    const NO_SYS_NICE: [&str; 3] = [
        "setpriv",
        "--inh-caps=-sys_nice",
        "--bounding-set=-sys_nice",
    ];
    let explicit = Daemon::spawn_under(&NO_SYS_NICE, &topo, &["--datapath-priority", "realtime:3"]);
    assert_refused_before_anything_exists(&topo, explicit, "--datapath-priority realtime:3");

    let mut netd = Daemon::start_under(&NO_SYS_NICE, &topo, &[]);
    assert_eq!(datapath_scheduling(netd.pid()).0, 0, "fell back to normal");
    assert!(netd.log().contains("normal priority"), "{}", netd.log());
    assert!(
        ping(&topo.name("xa"), "10.77.0.2", 3),
        "no forwarding at normal priority"
    );
    assert_eq!(netd.stop(), Some(0), "log:\n{}", netd.log());
}

#[test]
fn a_clashing_namespace_makes_up_fail_and_stays_untouched() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    let clash = topo.name("yb");
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &clash])
            .status()
            .unwrap()
            .success()
    );
    // A marker inside it, to prove netd did not recreate or touch it.
    let (ok, out) = sh(&clash, "ip link add marker0 type veth peer name marker1");
    assert!(ok, "{out}");
    let mut netd = Daemon::spawn(&topo, &[]);
    let code = netd.wait_exit();
    assert_eq!(
        code,
        Some(1),
        "netd should refuse to start; log:\n{}",
        netd.log()
    );
    assert!(
        netd.log().contains(&clash),
        "error does not name the clash:\n{}",
        netd.log()
    );
    let (ok, out) = sh(&clash, "ip -o link show marker0");
    assert!(
        ok && out.contains("marker0"),
        "the pre-existing namespace was touched: {out}"
    );
    for other in ["xa", "xb", "ya", "yc"] {
        assert!(
            !netns_exists(&topo.name(other)),
            "netd created {other} before refusing"
        );
    }
}

#[test]
fn an_invalid_topology_creates_nothing() {
    require_privileges();
    // Valid names, but a duplicate MAC: validation must fail before any namespace exists.
    let topo = TestTopology::new(
        r#"
[host]
capacity = "1gbit"
[tenants.{p}-x]
guaranteed = "100mbit"
[servers.{p}-a]
tenant = "{p}-x"
ip = "10.78.0.1/24"
mac = "02:00:00:00:00:01"
[servers.{p}-b]
tenant = "{p}-x"
ip = "10.78.0.2/24"
mac = "02:00:00:00:00:01"
"#,
    );
    let netd = Daemon::spawn(&topo, &[]);
    assert_refused_before_anything_exists(&topo, netd, "02:00:00:00:00:01");
}

#[test]
fn a_failure_half_way_through_start_up_rolls_back_what_was_created() {
    require_privileges();
    // The fault injection is compiled out of release builds: without it netd would come up
    // and this test wait for ever. `scripts/test` (and CI) build debug.
    if cfg!(not(debug_assertions)) {
        panic!("needs a debug build of netd (NETD_FAIL_AFTER_SERVER): run without --release");
    }
    let topo = TestTopology::new(TWO_TENANTS);
    // Servers are created in name order: xa, xb, ya, yb, yc. Fail right after ya.
    let mut child = std::process::Command::new(common::netd_bin())
        .args(["up"])
        .arg(&topo.path)
        .env("NETD_FAIL_AFTER_SERVER", topo.name("ya"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn netd");
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("Injected failure"), "{err}");
    assert!(
        common::namespaces_with_prefix(&topo.prefix).is_empty(),
        "start-up failure left namespaces behind: {:?}\n{err}",
        common::namespaces_with_prefix(&topo.prefix)
    );
}

#[test]
fn without_root_up_refuses_with_a_clear_message_and_creates_nothing() {
    require_privileges();
    let topo = TestTopology::new(TWO_TENANTS);
    // Drop to an unprivileged uid for the daemon only (util-linux setpriv).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::netd_bin())
        .arg("up")
        .arg(&topo.path)
        .output()
        .expect("run setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("must run as root"), "{err}");
    assert!(common::namespaces_with_prefix(&topo.prefix).is_empty());
}

/// Return the MAC of `eth0` inside `ns`.
fn mac_of(ns: &str) -> String {
    let (ok, out) = sh(ns, "cat /sys/class/net/eth0/address");
    assert!(ok, "{out}");
    out.trim().to_string()
}

/// Return the link-local IPv6 address of `eth0` inside `ns`.
fn link_local_of(ns: &str) -> String {
    let (ok, out) = sh(
        ns,
        "ip -6 -o addr show dev eth0 scope link | awk '{print $4}' | cut -d/ -f1",
    );
    assert!(
        ok && !out.trim().is_empty(),
        "no link-local address in {ns}: {out}"
    );
    out.trim().to_string()
}
