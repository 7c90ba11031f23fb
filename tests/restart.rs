//! Issue 11: a netd that crashes or is killed does not take servers off the network. Their
//! namespaces and persistent TAPs stay; the next `netd up` adopts them, and connections
//! open across the crash go on. Real namespaces; needs root (CI runs as root).

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::tcp::Connection;
use common::{Daemon, TestTopology, netd_bin, netns_exists, ping, require_privileges};

const TOPOLOGY: &str = r#"
[host]
capacity = "1gbit"

[tenants.{p}-a]
guaranteed = "400mbit"

[tenants.{p}-b]
guaranteed = "400mbit"

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.67.0.1/24"
ipv6 = "fd67::1/64"

[servers.{p}-a2]
tenant = "{p}-a"
ip = "10.67.0.2/24"
ipv6 = "fd67::2/64"

[servers.{p}-b1]
tenant = "{p}-b"
ip = "10.67.0.1/24"
"#;

#[test]
fn a_killed_netd_is_restarted_under_running_servers_and_their_connections_go_on() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut netd = Daemon::start(&topo, &[]);
    let mut connection = Connection::open(&topo.name("a1"), &topo.name("a2"), "10.67.0.2:7070");
    connection.exchange(b"before the crash", "before the crash");

    netd.kill();
    for server in ["a1", "a2", "b1"] {
        assert!(netns_exists(&topo.name(server)), "{server} went with netd");
    }
    // Sent while nothing switches: TCP retransmits it once netd is back.
    connection.client.write_all(b"during").unwrap();

    // A start that fails half-way lets go of what it adopted: nothing is deleted.
    let mut failed =
        Daemon::spawn_with_env(&topo, &[], &[("NETD_FAIL_AFTER_SERVER", &topo.name("a2"))]);
    assert_eq!(failed.wait_exit(), Some(1), "{}", failed.log());
    for server in ["a1", "a2", "b1"] {
        assert!(
            netns_exists(&topo.name(server)),
            "a failed start removed {server}"
        );
    }

    let mut netd = Daemon::start(&topo, &[]);
    let adopted = netd
        .wait_for("namespaces, TAPs and routers ready", Duration::from_secs(1))
        .expect("bring-up logged");
    assert!(adopted.contains("\"adopted\":3"), "{adopted}");
    let mut during = [0; 6];
    connection
        .server
        .read_exact(&mut during)
        .expect("retransmitted after the restart");
    assert_eq!(&during, b"during");
    connection.exchange(b"after the restart", "after the restart");
    // IPv6 and isolation are as before.
    assert!(ping(&topo.name("a2"), "fd67::1", 2));
    assert!(
        !ping(&topo.name("b1"), "10.67.0.2", 1),
        "b1 reached tenant a"
    );

    // A stop is a stop: the adopted servers go like the rest.
    assert_eq!(netd.stop(), Some(0));
    for server in ["a1", "a2", "b1"] {
        assert!(!netns_exists(&topo.name(server)), "{server} left behind");
    }
}

#[test]
fn a_restart_refuses_servers_that_no_longer_match_and_netd_down_removes_them() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let file = topo.path.to_str().unwrap().to_string();
    let down = || {
        Command::new(netd_bin())
            .args(["down", &file])
            .output()
            .unwrap()
    };
    let mut netd = Daemon::start(&topo, &[]);
    // Never under a running daemon.
    let out = down();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("netd is running"));

    netd.kill();
    let a1 = topo.name("a1");
    let changed = Command::new("ip")
        .args([
            "-n",
            &a1,
            "link",
            "set",
            "eth0",
            "address",
            "02:00:00:67:00:99",
        ])
        .status()
        .unwrap();
    assert!(changed.success());
    let mut refused = Daemon::spawn(&topo, &[]);
    assert_eq!(refused.wait_exit(), Some(1));
    let log = refused.log();
    assert!(
        log.contains(&format!("server \\\"{a1}\\\"")) && log.contains("MAC is 02:00:00:67:00:99"),
        "{log}"
    );
    assert!(log.contains("netd down FILE"), "{log}");
    // Refusing changed nothing.
    for server in ["a1", "a2", "b1"] {
        assert!(
            netns_exists(&topo.name(server)),
            "the refusal removed {server}"
        );
    }

    let out = down();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("removed 3 namespace(s)"), "{stdout}");
    for server in ["a1", "a2", "b1"] {
        assert!(!netns_exists(&topo.name(server)));
    }
    let _netd = Daemon::start(&topo, &[]);
    assert!(ping(&a1, "10.67.0.2", 2));
}

/// Issue 11, upgrade: `netd up FILE --take-over` takes the TAPs from the running netd over
/// its control socket; the old one exits without tearing down, the servers never lose their
/// interface, and a connection open before goes on.
#[test]
fn take_over_hands_the_taps_to_a_new_netd_and_connections_go_on() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut old = Daemon::start(&topo, &[]);
    let mut connection = Connection::open(&topo.name("a1"), &topo.name("a2"), "10.67.0.2:7070");
    connection.exchange(b"before the upgrade", "before the upgrade");

    let mut new = Daemon::start(&topo, &["--take-over"]);
    assert_eq!(old.wait_exit(), Some(0), "{}", old.log());
    assert!(
        old.log().contains("handed over to a new netd"),
        "{}",
        old.log()
    );
    let took = new
        .wait_for("took the ports over", Duration::from_secs(1))
        .expect("the new netd logs the hand-over");
    let line: serde_json::Value = serde_json::from_str(&took).expect("JSON log line");
    let gap_ms = line["fields"]["gap_ms"].as_f64().expect("gap_ms");
    assert!(gap_ms >= 0.0, "{took}");
    connection.exchange(b"after the upgrade", "after the upgrade");
    assert!(ping(&topo.name("a2"), "fd67::1", 2));
    assert!(
        !ping(&topo.name("b1"), "10.67.0.2", 1),
        "b1 reached tenant a"
    );
    // The new netd serves the control socket, and a stop still removes everything.
    let (ok, out, err) = common::netd_cli(&topo, &["status", "--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(new.stop(), Some(0));
    for server in ["a1", "a2", "b1"] {
        assert!(!netns_exists(&topo.name(server)), "{server} left behind");
    }
}

#[test]
fn take_over_without_a_running_netd_is_refused_and_creates_nothing() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut new = Daemon::spawn(&topo, &["--take-over"]);
    assert_eq!(new.wait_exit(), Some(1));
    assert!(
        new.log().contains("Cannot reach the running netd"),
        "{}",
        new.log()
    );
    assert!(!netns_exists(&topo.name("a1")));
}

/// The running state wins over a file edited since: the new netd takes over what the old one
/// runs (here a guarantee the file no longer says), not what the file says.
#[test]
fn take_over_runs_the_running_state_not_a_file_edited_since() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut old = Daemon::start(&topo, &[]);
    let text = std::fs::read_to_string(&topo.path).unwrap();
    std::fs::write(&topo.path, text.replacen("400mbit", "300mbit", 1)).unwrap();
    let new = Daemon::start(&topo, &["--take-over"]);
    assert_eq!(old.wait_exit(), Some(0), "{}", old.log());
    assert!(new.log().contains("differs from the file"), "{}", new.log());
    let (ok, out, err) = common::netd_cli(&topo, &["status", "--json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == topo.name("a"))
        .unwrap_or_else(|| panic!("no tenant a in {status}"))
        .clone();
    assert_eq!(a["guaranteed_bps"], 400_000_000, "{a}");
    assert!(ping(&topo.name("a1"), "10.67.0.2", 2));
}
