//! netd under systemd: the notification protocol a `Type=notify` unit relies on, spoken to
//! a socket the test holds (systemd is not PID 1 here), and the shipped unit file checked by
//! `systemd-analyze verify`. Needs root (netd creates namespaces); names carry the run's
//! prefix.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, TempDir, TestTopology, require_privileges};

const TOPOLOGY: &str = r#"
[host]
capacity = "1gbit"

[tenants.{p}-a]
guaranteed = "100mbit"

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.79.0.10/24"
"#;

/// Start netd as a `Type=notify` unit with `WatchdogSec=` would: a notify socket the test
/// holds (returned, with the directory it lives in) and a 200 ms watchdog.
fn spawn_as_systemd_would(topo: &TestTopology) -> (Daemon, UnixDatagram, TempDir) {
    let dir = TempDir::new(&topo.prefix);
    let path = dir.0.join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let path = path.to_str().unwrap().to_string();
    let netd = Daemon::spawn_with_env(
        topo,
        &[],
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
    );
    (netd, socket, dir)
}

/// Wait for a notification containing `want`; return every datagram seen until then.
fn wait_for(socket: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = text.contains(want);
        seen.push(text);
        if found {
            return seen;
        }
    }
    panic!("no {want:?} within {within:?}; got {seen:?}");
}

#[test]
fn netd_tells_systemd_ready_watchdog_reloading_and_stopping() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let (mut netd, socket, _dir) = spawn_as_systemd_would(&topo);
    let ready = wait_for(&socket, "READY=1", Duration::from_secs(30));
    assert!(
        ready.last().unwrap().contains("STATUS=serving 1 servers"),
        "{ready:?}"
    );
    // At READY=1 the server's eth0 is there and has carrier (netd holds its TAP).
    let link = Command::new("ip")
        .args(["-n", &topo.name("a1"), "link", "show", "eth0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("LOWER_UP"),
        "READY=1 before the servers were up: {link}"
    );
    // The watchdog at half of 200 ms: several pings in a second.
    let start = Instant::now();
    for _ in 0..3 {
        wait_for(&socket, "WATCHDOG=1", Duration::from_secs(1));
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "watchdog too slow"
    );
    // A reload says so, then ready again.
    let status = Command::new("kill")
        .args(["-HUP", &netd.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let seen = wait_for(&socket, "RELOADING=1", Duration::from_secs(5));
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    wait_for(&socket, "READY=1", Duration::from_secs(10));
    let (stop, socket) = std::thread::scope(|scope| {
        let stopping = scope.spawn(|| wait_for(&socket, "STOPPING=1", Duration::from_secs(10)));
        let code = netd.stop();
        (code, stopping.join().unwrap())
    });
    assert_eq!(stop, Some(0));
    assert!(socket.last().unwrap().contains("STOPPING=1"));
}

#[test]
fn the_shipped_unit_file_verifies() {
    require_privileges();
    assert!(
        Command::new("sh")
            .args(["-c", "command -v systemd-analyze"])
            .output()
            .unwrap()
            .status
            .success(),
        "this test needs systemd-analyze: run .ci/run or apt-get install systemd"
    );
    let topo = TestTopology::new(TOPOLOGY);
    let dir = TempDir::new(&topo.prefix);
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/netd@.service"
    ))
    .unwrap();
    // The unit as installed, pointing at this build and this topology.
    let netd = common::netd_bin();
    let unit = unit
        .replace("/usr/local/bin/netd", netd.to_str().unwrap())
        .replace("/etc/netd/%i.toml", topo.path.to_str().unwrap());
    let file = dir.0.join(format!("netd-{}@.service", topo.prefix));
    std::fs::write(&file, unit).unwrap();
    let instance = dir.0.join(format!("netd-{}@x.service", topo.prefix));
    std::os::unix::fs::symlink(&file, &instance).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains(&format!("netd-{}", topo.prefix)),
        "warnings about the unit: {text}"
    );
}

/// Stops a netd that no test helper started (the one `netd upgrade` made): SIGTERM, then
/// waits up to 10 s for it to go, SIGKILL after that.
struct StopPidOnDrop(u32);

impl Drop for StopPidOnDrop {
    fn drop(&mut self) {
        let pid = self.0.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > deadline {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Issue 11, upgrade under systemd: `netd upgrade` makes the daemon start the installed
/// binary with `--take-over` in its own environment (so in the unit's cgroup, with its notify
/// socket); the old one tells systemd the new main pid, and the new one says READY=1 and pets
/// the watchdog.
#[test]
fn netd_upgrade_hands_over_and_tells_systemd_the_new_main_pid() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let (mut old, socket, _dir) = spawn_as_systemd_would(&topo);
    wait_for(&socket, "READY=1", Duration::from_secs(30));

    let (ok, out, err) = common::netd_cli(&topo, &["upgrade"]);
    assert!(ok, "{out}{err}\n{}", old.log());
    let pid: u32 = out
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let new = StopPidOnDrop(pid);
    let seen = wait_for(&socket, &format!("MAINPID={pid}"), Duration::from_secs(10));
    assert!(!seen.iter().any(|s| s.contains("STOPPING=1")), "{seen:?}");
    wait_for(&socket, "READY=1", Duration::from_secs(10));
    wait_for(&socket, "WATCHDOG=1", Duration::from_secs(1));
    assert!(common::netns_exists(&topo.name("a1")));
    // Stopping the new netd tears down as ever (its log goes to the old one's stderr).
    drop(new);
    assert_eq!(old.wait_exit(), Some(0), "{}", old.log());
    assert!(old.log().contains("took the ports over"), "{}", old.log());
    assert!(!common::netns_exists(&topo.name("a1")), "a1 left behind");
}
