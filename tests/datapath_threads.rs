//! `netd up --datapath-threads 2`: two loops, each owning half the servers' TAPs (port id
//! modulo 2) and writing to the others' through shared fds, with the host's rates split
//! between their shapers. Servers are numbered so that every pair that talks here is read
//! by different loops. Needs root.

mod common;

use common::{
    Daemon, TestTopology, icmp_in_echos, netd_cli, netd_ok, netns_exists, ping, require_privileges,
};

/// Ports in name order: a1 = 0 (loop 0), a2 = 1 (loop 1), b1 = 2 (loop 0), b2 = 3 (loop 1).
/// Both tenants use the same addresses.
const TOPOLOGY: &str = r#"
[host]
capacity = "1gbit"

[tenants.{p}-a]
guaranteed = "300mbit"

[tenants.{p}-b]
guaranteed = "300mbit"

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.67.0.1/24"

[servers.{p}-a2]
tenant = "{p}-a"
ip = "10.67.0.2/24"

[servers.{p}-b1]
tenant = "{p}-b"
ip = "10.67.0.1/24"

[servers.{p}-b2]
tenant = "{p}-b"
ip = "10.67.0.2/24"
"#;

const TWO_LOOPS: &[&str] = &["--datapath-threads", "2"];

/// Return the bytes the shaper has charged `tenant`, summed over the loops.
fn charged(topo: &TestTopology, tenant: &str) -> u64 {
    let stats: serde_json::Value =
        serde_json::from_str(&netd_ok(topo, &["stats", "--json"])).expect("stats JSON");
    let t = stats["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["tenant"] == tenant))
        .unwrap_or_else(|| panic!("no tenant {tenant} in {stats}"));
    t["shaper"]["own_bytes"].as_u64().unwrap_or(0)
        + t["shaper"]["borrowed_bytes"].as_u64().unwrap_or(0)
}

#[test]
fn servers_on_different_loops_reach_each_other_and_tenants_stay_apart() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, TWO_LOOPS);
    let (a1, a2, b1, b2) = (
        topo.name("a1"),
        topo.name("a2"),
        topo.name("b1"),
        topo.name("b2"),
    );
    let b2_before = icmp_in_echos(&b2);
    assert!(
        ping(&a1, "10.67.0.2", 3),
        "a1 (loop 0) -> a2 (loop 1) failed"
    );
    assert!(
        ping(&a2, "10.67.0.1", 3),
        "a2 (loop 1) -> a1 (loop 0) failed"
    );
    assert_eq!(
        icmp_in_echos(&b2),
        b2_before,
        "b2 has the same address as a2 and must see none of a's pings"
    );
    assert!(ping(&b1, "10.67.0.2", 3), "b1 -> b2 failed");
    // Both loops charged the tenant: the coordinator adds their counters up (published
    // every 50 ms).
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        charged(&topo, &topo.name("a")) > 0,
        "a's bytes are not counted"
    );
    assert!(
        charged(&topo, &topo.name("b")) > 0,
        "b's bytes are not counted"
    );
}

#[test]
fn servers_added_and_removed_live_reach_both_loops_and_a_gateway_is_refused_live() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, TWO_LOOPS);
    let (a, a1, a2, a3) = (
        topo.name("a"),
        topo.name("a1"),
        topo.name("a2"),
        topo.name("a3"),
    );
    // a3 takes the next port id: 4, loop 0. It must reach a2 (loop 1) both ways.
    netd_ok(
        &topo,
        &["add-server", &a3, "--tenant", &a, "--ip", "10.67.0.3/24"],
    );
    assert!(ping(&a3, "10.67.0.2", 3), "new a3 -> a2 failed");
    assert!(ping(&a2, "10.67.0.3", 3), "a2 -> new a3 failed");
    let out = netd_ok(&topo, &["remove-server", &a3]);
    assert!(out.contains("removed"), "{out}");
    assert!(!netns_exists(&a3), "a3's namespace left behind");
    assert!(ping(&a1, "10.67.0.2", 3), "a1 -> a2 broken by the removal");

    // A gateway cannot be served by two loops: refused live, with the reason, nothing changed.
    let with_gateway = std::fs::read_to_string(&topo.path).unwrap().replace(
        &format!("[tenants.{a}]\n"),
        &format!("[tenants.{a}]\ngateway = \"10.67.0.254/24\"\n"),
    );
    std::fs::write(&topo.path, with_gateway).unwrap();
    let (ok, out, err) = netd_cli(&topo, &["reload"]);
    assert!(
        !ok,
        "a gateway was accepted live with two loops:\n{out}{err}"
    );
    assert!(
        err.contains("data-path thread") && err.contains("gateway"),
        "the refusal does not say why:\n{err}"
    );
    assert!(
        ping(&a1, "10.67.0.2", 3),
        "a1 -> a2 broken by the refused reload"
    );
}

#[test]
fn a_topology_with_a_gateway_is_refused_before_anything_is_created() {
    require_privileges();
    let topo = TestTopology::new(&TOPOLOGY.replace(
        "[tenants.{p}-a]\n",
        "[tenants.{p}-a]\ngateway = \"10.67.0.254/24\"\n",
    ));
    let mut netd = Daemon::spawn(&topo, TWO_LOOPS);
    let code = netd.wait_exit();
    assert_ne!(code, Some(0), "netd ran a gateway on two loops");
    let log = netd.log();
    assert!(
        log.contains("--datapath-threads 2") && log.contains("tenant gateways"),
        "the refusal does not say why:\n{log}"
    );
    assert!(
        !netns_exists(&topo.name("a1")),
        "a namespace was created before the refusal"
    );
}

#[test]
fn a_netd_with_two_loops_hands_its_taps_over_to_the_next() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut old = Daemon::start(&topo, TWO_LOOPS);
    let (a1, b1) = (topo.name("a1"), topo.name("b1"));
    assert!(ping(&a1, "10.67.0.2", 2));
    let mut extra = vec!["--take-over"];
    extra.extend_from_slice(TWO_LOOPS);
    let _new = Daemon::start(&topo, &extra);
    assert_eq!(old.wait_exit(), Some(0), "the old netd:\n{}", old.log());
    assert!(ping(&a1, "10.67.0.2", 3), "a1 -> a2 after the take-over");
    assert!(ping(&b1, "10.67.0.2", 3), "b1 -> b2 after the take-over");
}
