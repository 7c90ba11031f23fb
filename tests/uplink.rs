//! The routed uplink end to end, on an emulated edge built in namespaces (nothing in the root
//! namespace): `{p}-edge` stands in for the host's own stack and holds the uplink interface
//! `eth1`; a veth joins it to `{p}-net`, which plays the provider's router and an internet
//! host (192.0.2.1 on its `lo`). The provider routes the public tenant's subnet to the
//! host's uplink address, as a provider would. Needs root (CI runs as root); every name
//! carries the run's prefix, and the guards remove everything also on failure.

mod common;

use std::time::Duration;

use common::edge::{EmulatedEdge, INTERNET_HOST, UPLINK_ADDRESS};
use common::iperf::OneShotServer;
use common::tcp::Connection;
use common::{Daemon, TestTopology, netns_exists, ping, require_privileges, sh};

const TOPOLOGY: &str = r#"
[host]
capacity = "1gbit"

[uplink]
interface = "eth1"
netns = "{p}-edge"
capacity = "500mbit"

[tenants.{p}-a]
guaranteed = "100mbit"
gateway = "10.1.0.1/24"
nat = true

[tenants.{p}-b]
guaranteed = "100mbit"
gateway = "10.1.0.1/24"
nat = true

[tenants.{p}-c]
guaranteed = "100mbit"
gateway = "203.0.113.1/28"

[tenants.{p}-d]
guaranteed = "100mbit"
gateway = "10.2.0.1/24"
nat = true

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.1.0.10/24"

[servers.{p}-b1]
tenant = "{p}-b"
ip = "10.1.0.10/24"

[servers.{p}-c1]
tenant = "{p}-c"
ip = "203.0.113.2/28"

[servers.{p}-d1]
tenant = "{p}-d"
ip = "10.2.0.10/24"
"#;

/// A one-second iperf3 client in `ns`; true when it transferred.
fn iperf_client(ns: &str, target: &str, port: u16, bind: Option<&str>) -> bool {
    let bind = bind.map(|b| format!("-B {b}")).unwrap_or_default();
    sh(
        ns,
        &format!("iperf3 -c {target} -p {port} -t 1 {bind} >/dev/null"),
    )
    .0
}

#[test]
fn nat_tenants_with_the_same_address_reach_the_internet_at_once_from_the_uplink_address() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    let (a1, b1) = (topo.name("a1"), topo.name("b1"));
    assert!(
        ping(&a1, INTERNET_HOST, 3),
        "a1 cannot reach the internet host"
    );
    // Both 10.1.0.10, at the same time, each on its own connection.
    let servers =
        [5201, 5202].map(|port| OneShotServer::start(&topo.name("net"), INTERNET_HOST, port));
    let clients = std::thread::scope(|scope| {
        let a = scope.spawn(|| iperf_client(&a1, INTERNET_HOST, 5201, None));
        let b = scope.spawn(|| iperf_client(&b1, INTERNET_HOST, 5202, None));
        [a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(clients, [true, true], "both NAT tenants transfer at once");
    for server in servers {
        assert_eq!(server.client_address(), UPLINK_ADDRESS);
    }
}

#[test]
fn the_internet_reaches_a_public_server_by_its_own_address_and_sees_it_as_itself() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    let (c1, net) = (topo.name("c1"), topo.name("net"));
    // Inwards: the internet host connects to the server's own address.
    let server = OneShotServer::start(&c1, "203.0.113.2", 5201);
    assert!(iperf_client(&net, "203.0.113.2", 5201, Some(INTERNET_HOST)));
    assert_eq!(server.client_address(), INTERNET_HOST);
    // Outwards: the server is seen with its own address, not NATed.
    let server = OneShotServer::start(&net, INTERNET_HOST, 5203);
    assert!(iperf_client(&c1, INTERNET_HOST, 5203, None));
    assert_eq!(server.client_address(), "203.0.113.2");
    // Both directions were counted on c's uplink, and only there.
    let status: serde_json::Value =
        serde_json::from_str(&common::netd_ok(&topo, &["status", "--json"])).unwrap();
    let uplink = |tenant: &str| {
        let tenants = status["tenants"].as_array().unwrap();
        let t = tenants
            .iter()
            .find(|t| t["name"] == topo.name(tenant))
            .unwrap();
        t["uplink"].clone()
    };
    for direction in ["upload", "download"] {
        let bytes = uplink("c")[direction]["bytes"].as_u64().unwrap();
        assert!(bytes > 1_000_000, "c {direction}: {bytes} bytes");
        // Tenant a sent nothing but what its kernel may send on its own (a few frames).
        let idle = uplink("a")[direction]["bytes"].as_u64().unwrap();
        assert!(idle < 10_000, "a {direction}: {idle} bytes");
    }
    let text = common::netd_ok(&topo, &["status"]);
    assert!(text.contains("uplink: 500.0Mbit/s each way"), "{text}");
}

#[test]
fn private_addresses_stay_private_from_other_tenants_and_from_outside() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    let (a1, d1, net) = (topo.name("a1"), topo.name("d1"), topo.name("net"));
    assert!(ping(&d1, "10.2.0.1", 2), "d1 reaches its gateway");
    assert!(
        !ping(&a1, "10.2.0.10", 2),
        "a1 reached tenant d's private address"
    );
    // Even with the provider routing 10/8 to the host, a NAT tenant is not reachable.
    assert!(
        !ping(&net, "10.1.0.10", 2),
        "the internet reached a NAT server"
    );
    assert!(ping(&a1, INTERNET_HOST, 2), "a1 still reaches the internet");
}

#[test]
fn sigterm_leaves_no_router_namespace_route_rule_or_forwarding_behind() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let edge = EmulatedEdge::new(&topo);
    let forwarding = || edge.uplink_forwarding();
    let before = forwarding();
    let mut netd = Daemon::start(&topo, &[]);
    let routers: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|t| format!("{}.{}.router", topo.prefix, topo.name(t)))
        .collect();
    assert!(routers.iter().all(|r| netns_exists(r)), "{routers:?}");
    assert_eq!(forwarding().trim(), "1");
    let (_, tables) = sh(&edge.edge, "nft list tables");
    assert!(tables.contains("netd_"), "{tables}");
    let (_, routes) = sh(&edge.edge, "ip -4 route");
    assert!(routes.contains("203.0.113.0/28 via 169.254."), "{routes}");
    assert_eq!(netd.stop(), Some(0), "{}", netd.log());
    assert!(routers.iter().all(|r| !netns_exists(r)), "routers left");
    let (_, tables) = sh(&edge.edge, "nft list tables");
    assert!(!tables.contains("netd_"), "nft table left: {tables}");
    let (_, routes) = sh(&edge.edge, "ip -4 route");
    assert!(!routes.contains("169.254."), "routes left: {routes}");
    let (_, links) = sh(&edge.edge, "ip -o link");
    assert!(!links.contains(": nd"), "veths left: {links}");
    assert_eq!(forwarding(), before, "forwarding not restored");
}

#[test]
fn a_missing_uplink_interface_is_refused_before_anything_is_created() {
    require_privileges();
    let topo = TestTopology::new(&TOPOLOGY.replace("interface = \"eth1\"", "interface = \"eth9\""));
    let edge = EmulatedEdge::new(&topo);
    let (ok, _, err) = common::netd_cli(&topo, &["check", topo.path.to_str().unwrap()]);
    assert!(!ok && err.contains("interface \"eth9\""), "{err}");
    let mut netd = Daemon::spawn(&topo, &[]);
    assert_ne!(netd.wait_exit(), Some(0));
    let log = netd.log();
    assert!(
        log.contains("eth9") && log.contains("does not exist"),
        "{log}"
    );
    let left: Vec<String> = common::namespaces_with_prefix(&topo.prefix)
        .into_iter()
        .filter(|ns| *ns != edge.edge && *ns != edge.net)
        .collect();
    assert!(left.is_empty(), "created before refusing: {left:?}");
}

#[test]
fn a_routed_tenant_added_live_reaches_the_internet_and_its_router_goes_with_it() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    let (e, e1) = (topo.name("e"), topo.name("e1"));
    let router = format!("{}.{e}.router", topo.prefix);
    common::netd_ok(
        &topo,
        &[
            "add-tenant",
            &e,
            "--guaranteed",
            "50mbit",
            "--gateway",
            "10.3.0.1/24",
            "--nat",
        ],
    );
    assert!(netns_exists(&router), "no router for the new tenant");
    common::netd_ok(
        &topo,
        &["add-server", &e1, "--tenant", &e, "--ip", "10.3.0.10/24"],
    );
    assert!(
        ping(&e1, INTERNET_HOST, 3),
        "a server added live cannot reach the internet"
    );
    common::netd_ok(&topo, &["remove-server", &e1]);
    common::netd_ok(&topo, &["remove-tenant", &e]);
    assert!(
        !netns_exists(&router),
        "the removed tenant's router is left"
    );
    assert!(
        ping(&topo.name("a1"), INTERNET_HOST, 2),
        "a1 lost the internet"
    );
}

#[test]
fn changing_a_routed_tenants_nat_live_is_refused_and_changes_nothing() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    let text = std::fs::read_to_string(&topo.path).unwrap();
    let changed = text.replacen(
        "gateway = \"10.2.0.1/24\"\nnat = true",
        "gateway = \"10.2.0.1/24\"",
        1,
    );
    assert_ne!(text, changed);
    std::fs::write(&topo.path, &changed).unwrap();
    let (ok, _, err) = common::netd_cli(&topo, &["reload"]);
    assert!(
        !ok && err.contains("Cannot change this live") && err.contains(&topo.name("d")),
        "{err}"
    );
    assert!(
        ping(&topo.name("d1"), INTERNET_HOST, 2),
        "d1 lost the internet"
    );
}

#[test]
fn set_rate_on_the_uplink_changes_the_tenants_uplink_rates_live_and_in_the_file() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    let c = topo.name("c");
    common::netd_ok(
        &topo,
        &[
            "set-rate",
            &c,
            "--uplink",
            "--guaranteed",
            "50mbit",
            "--weight",
            "3",
        ],
    );
    let status: serde_json::Value =
        serde_json::from_str(&common::netd_ok(&topo, &["status", "--json"])).unwrap();
    let tenant = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == c.as_str())
        .unwrap()
        .clone();
    assert_eq!(tenant["uplink"]["guaranteed_bps"], 50_000_000);
    assert_eq!(tenant["uplink"]["weight"], 3);
    assert_eq!(tenant["guaranteed_bps"], 100_000_000, "the host rates stay");
    let text = std::fs::read_to_string(&topo.path).unwrap();
    assert!(
        text.contains(&format!(
            "[tenants.{c}.uplink]\nguaranteed = \"50mbit\"\nweight = 3"
        )),
        "{text}"
    );
    // Above the uplink's capacity with the others' guarantees: refused, nothing changes.
    let (ok, _, err) = common::netd_cli(
        &topo,
        &["set-rate", &c, "--uplink", "--guaranteed", "400mbit"],
    );
    assert!(!ok && err.contains("uplink guarantees sum to"), "{err}");
    assert!(ping(&topo.name("c1"), INTERNET_HOST, 2));
}

#[test]
fn a_tenant_cannot_reach_the_hosts_own_stack() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    // The host's uplink address answers the internet, never a tenant.
    assert!(
        ping(&edge.net, UPLINK_ADDRESS, 2),
        "the internet reaches the host"
    );
    for server in ["a1", "c1"] {
        assert!(
            !ping(&topo.name(server), UPLINK_ADDRESS, 2),
            "{server} reached the host's own stack"
        );
    }
    assert!(
        ping(&topo.name("c1"), INTERNET_HOST, 2),
        "c1 still reaches the internet"
    );
}

/// Issue 11: a killed netd's routers stay, and the restart adopts them without touching what
/// is inside (NAT state included), so a NAT server's connection to the internet goes on; an
/// upgrade (`--take-over`) hands their TUNs over as well.
/// `netd down` after a kill restores the uplink's forwarding as a stop does.
#[test]
fn a_nat_servers_connection_to_the_internet_survives_kill_restart_and_upgrade() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let edge = EmulatedEdge::new(&topo);
    let forwarding = || edge.uplink_forwarding();
    let before = forwarding();
    let mut netd = Daemon::start(&topo, &[]);
    let internet = format!("{INTERNET_HOST}:7071");
    let mut connection = Connection::open(&topo.name("a1"), &edge.net, &internet);
    connection.exchange(b"before the crash", "before the crash");

    netd.kill();
    let mut netd = Daemon::start(&topo, &[]);
    let ready = netd
        .wait_for("namespaces, TAPs and routers ready", Duration::from_secs(1))
        .expect("bring-up logged");
    // Four servers and four routers.
    assert!(ready.contains("\"adopted\":8"), "{ready}");
    connection.exchange(b"after the restart", "after the restart");
    assert!(
        ping(&topo.name("c1"), INTERNET_HOST, 2),
        "public tenant cut off"
    );

    netd.kill();
    let out = std::process::Command::new(common::netd_bin())
        .args(["down", topo.path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (_, tables) = sh(&edge.edge, "nft list tables");
    assert!(!tables.contains("netd_"), "nft table left: {tables}");
    assert_eq!(forwarding(), before, "netd down did not restore forwarding");
}
