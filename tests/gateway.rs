//! A tenant's gateway end to end: real namespaces, ping, routes and Debian's DHCP client
//! (busybox `udhcpc`) inside them. Needs root (CI runs as root); names carry a per-run
//! prefix and every guard cleans up on failure.

mod common;

use common::{Daemon, TempFile, TestTopology, netd_ok, ping, require_privileges, sh};

const TOPOLOGY: &str = r#"
[host]
capacity = "1gbit"

[tenants.{p}-a]
guaranteed = "400mbit"
gateway = "10.78.0.1/24"
gateway6 = "fd00:78::1/64"
dns = ["192.0.2.53"]

[tenants.{p}-b]
guaranteed = "400mbit"

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.78.0.10/24"
ipv6 = "fd00:78::10/64"

[servers.{p}-a2]
tenant = "{p}-a"
ip = "10.78.0.11/24"
dhcp = true

[servers.{p}-b1]
tenant = "{p}-b"
ip = "10.78.0.20/24"
"#;

/// The drops by reason netd counted on one server's port.
fn port_drops(topo: &TestTopology, server: &str) -> serde_json::Value {
    common::port_counters(topo, server)["drops"].clone()
}

#[test]
fn a_server_pings_its_gateway_through_its_default_route() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let a1 = topo.name("a1");
    let (ok, routes) = sh(&a1, "ip -4 route show default");
    assert!(
        ok && routes.contains("default via 10.78.0.1 dev eth0"),
        "{routes}"
    );
    assert!(ping(&a1, "10.78.0.1", 3), "a1 cannot ping its gateway");
    // Tenant b has no gateway: the same address answers nothing there.
    assert!(
        !ping(&topo.name("b1"), "10.78.0.1", 2),
        "b1 reached a's gateway"
    );
    let (_, routes) = sh(&topo.name("b1"), "ip -4 route show default");
    assert!(routes.trim().is_empty(), "b1 got a default route: {routes}");
}

#[test]
fn a_server_with_ipv6_finds_its_gateway_by_neighbour_discovery_and_routes_through_it() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let a1 = topo.name("a1");
    let (ok, routes) = sh(&a1, "ip -6 route show default");
    assert!(
        ok && routes.contains("default via fd00:78::1 dev eth0"),
        "{routes}"
    );
    assert!(
        ping(&a1, "fd00:78::1", 3),
        "a1 cannot ping its IPv6 gateway"
    );
    // The gateway's address was learnt by neighbour discovery, from the gateway's MAC.
    let (_, neighbours) = sh(&a1, "ip -6 neigh show fd00:78::1");
    assert!(neighbours.contains("lladdr"), "{neighbours}");
    // A server without IPv6 gets no IPv6 route.
    let (_, routes) = sh(&topo.name("b1"), "ip -6 route show default");
    assert!(routes.trim().is_empty(), "{routes}");
}

/// Run Debian's `udhcpc` in namespace `ns` until it has a lease (5 tries, 1 s apart);
/// return (success, its output). Its own script would rewrite the host's
/// `/etc/resolv.conf`: this one only configures `eth0` and writes the DNS servers it was
/// given to `dns_file`.
fn udhcpc(topo: &TestTopology, ns: &str, dns_file: &std::path::Path) -> (bool, String) {
    assert!(
        std::path::Path::new("/sbin/udhcpc").exists()
            || std::path::Path::new("/usr/sbin/udhcpc").exists(),
        "this test needs udhcpc: run .ci/run or apt-get install udhcpc"
    );
    let script_path = topo.path.with_extension(format!("{ns}.udhcpc.sh"));
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
           deconfig) ip -4 addr flush dev \"$interface\"; ip link set \"$interface\" up ;;\n\
           bound|renew) ip addr add \"$ip/$mask\" dev \"$interface\"\n\
             for r in $router; do ip route replace default via \"$r\" dev \"$interface\"; break; done\n\
             echo \"$dns\" > {} ;;\n\
         esac\n",
        dns_file.display()
    );
    let _script = TempFile::create(&script_path, &script, 0o700);
    let command = format!(
        "udhcpc -i eth0 -n -q -f -t 5 -T 1 -s {}",
        script_path.display()
    );
    sh(ns, &command)
}

#[test]
fn a_dhcp_server_gets_its_lease_with_udhcpc_then_pings_the_gateway() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let a2 = topo.name("a2");
    let (_, before) = sh(&a2, "ip -4 -o addr show dev eth0");
    assert!(
        before.trim().is_empty(),
        "a dhcp server came up with an address: {before}"
    );
    let (_, link) = sh(&a2, "ip -o link show dev eth0");
    assert!(link.contains("UP"), "{link}");

    let dns_file = topo.path.with_extension("dns");
    let _dns_file = TempFile::create(&dns_file, "", 0o600);
    let (ok, out) = udhcpc(&topo, &a2, &dns_file);
    assert!(ok, "udhcpc got no lease:\n{out}");
    let (_, addr) = sh(&a2, "ip -4 -o addr show dev eth0");
    assert!(addr.contains("10.78.0.11/24"), "{addr}");
    let (_, routes) = sh(&a2, "ip -4 route show default");
    assert!(routes.contains("default via 10.78.0.1"), "{routes}");
    let dns = std::fs::read_to_string(&dns_file).unwrap();
    assert_eq!(dns.trim(), "192.0.2.53");
    assert!(
        ping(&a2, "10.78.0.1", 3),
        "a2 cannot ping its gateway after DHCP"
    );
    assert!(ping(&a2, "10.78.0.10", 2), "a2 cannot reach a1 after DHCP");
}

#[test]
fn a_spoofed_frame_towards_the_gateway_is_dropped_and_counted() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let a1 = topo.name("a1");
    assert!(ping(&a1, "10.78.0.1", 1));
    // An address a1 does not own in the topology: its packets are spoofed.
    let (ok, out) = sh(&a1, "ip addr add 10.78.0.99/24 dev eth0");
    assert!(ok, "{out}");
    let (ok, _) = sh(&a1, "ping -n -q -c 2 -W 1 -i 0.2 -I 10.78.0.99 10.78.0.1");
    assert!(!ok, "the gateway answered a spoofed source");
    let drops = port_drops(&topo, &a1);
    assert!(
        drops["spoofed_ipv4"].as_u64().unwrap_or(0) >= 2,
        "spoofed pings not counted: {drops}"
    );
    // a1's own address still works.
    assert!(ping(&a1, "10.78.0.1", 2));
}

/// A server added live to a tenant with a gateway gets its lease: the tenant's gateway is
/// rebuilt with it, and the other tenant's is not touched.
#[test]
fn a_server_added_live_gets_its_lease_from_the_rebuilt_gateway() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let (a, a3) = (topo.name("a"), topo.name("a3"));
    netd_ok(
        &topo,
        &[
            "add-server",
            &a3,
            "--tenant",
            &a,
            "--ip",
            "10.78.0.12/24",
            "--dhcp",
        ],
    );
    let dns_file = topo.path.with_extension("dns3");
    let _dns_file = TempFile::create(&dns_file, "", 0o600);
    let (ok, out) = udhcpc(&topo, &a3, &dns_file);
    assert!(ok, "udhcpc got no lease for a server added live:\n{out}");
    let (_, addr) = sh(&a3, "ip -4 -o addr show dev eth0");
    assert!(addr.contains("10.78.0.12/24"), "{addr}");
    assert!(ping(&a3, "10.78.0.1", 3), "a3 cannot ping its gateway");
    // The servers that were there keep reaching the gateway.
    assert!(ping(&topo.name("a1"), "10.78.0.1", 2));
}
