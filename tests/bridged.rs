//! The bridged uplink: each tenant's L2 domain extended onto its VLAN of a trunk.
//!
//! The trunk is a TAP in `{p}-edge` (the host's NIC to netd, which attaches it by
//! AF_PACKET). This test holds the TAP's other end and is the provider's VLAN switch: a
//! frame tagged 100 goes to the host in `{p}-v100`, 200 to `{p}-v200`, and back with its
//! tag. (This machine's kernel has neither 802.1Q devices nor VLAN-filtering bridges, so a
//! kernel namespace cannot be the VLAN switch; tags on the trunk are real 802.1Q either
//! way.) Both upstream hosts have the same address, 10.1.0.254, as do the two tenants'
//! servers, 10.1.0.1: nothing may cross. Needs root.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Daemon, TestTopology, icmp_in_echos, ping, require_privileges, sh};

const TOPOLOGY: &str = r#"
[host]
capacity = "10gbit"

[uplink]
interface = "trunk0"
netns = "{p}-edge"
capacity = "1gbit"
mode = "bridged"

[tenants.a]
guaranteed = "100mbit"
vlan = 100

[tenants.b]
guaranteed = "100mbit"
vlan = 200

[servers.a1]
tenant = "a"
ip = "10.1.0.1/24"
netns = "{p}-a1"

[servers.b1]
tenant = "b"
ip = "10.1.0.1/24"
netns = "{p}-b1"
"#;

/// Open a TAP named `name` in namespace `ns` (plain frames), up, with `addr` if given.
fn tap_in(ns: &str, name: &str, addr: Option<&str>) -> OwnedFd {
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", ns])
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "ip netns add {ns}");
    let owned = name.to_string();
    let fd = netd::kernel::netns::run_in(ns, move || netd::kernel::sys::open_tap(&owned, None))
        .expect("a TAP in the namespace");
    // No IPv6 of its own: the trunk's host stack and the upstream hosts say nothing but
    // what the test makes them say.
    let mut script = format!(
        "sysctl -qw net.ipv6.conf.{name}.disable_ipv6=1 && ip link set {name} up && ip link set lo up"
    );
    if let Some(addr) = addr {
        script.push_str(&format!(" && ip addr add {addr} dev {name}"));
    }
    let (ok, out) = sh(ns, &script);
    assert!(ok, "{ns}: {out}");
    fd
}

/// The provider's VLAN switch: relays between the trunk TAP and one TAP per VLAN, taking
/// tags off and putting them on, until dropped.
struct VlanSwitch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Frames from the trunk without a tag, or on another VLAN.
    pub strays: Arc<AtomicU64>,
    /// Frames to put on the trunk as they are (tags and all).
    pub inject: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl VlanSwitch {
    fn start(trunk: OwnedFd, access: Vec<(u16, OwnedFd)>) -> VlanSwitch {
        let stop = Arc::new(AtomicBool::new(false));
        let strays = Arc::new(AtomicU64::new(0));
        let inject = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
        let (flag, count, queued) = (stop.clone(), strays.clone(), inject.clone());
        let thread = std::thread::spawn(move || {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            let mut buf = vec![0u8; 70_000];
            while !flag.load(Ordering::Relaxed) {
                for frame in queued.lock().unwrap().drain(..) {
                    let _ = nix::unistd::write(&trunk, &frame);
                }
                let mut fds = vec![PollFd::new(trunk.as_fd(), PollFlags::POLLIN)];
                fds.extend(
                    access
                        .iter()
                        .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
                );
                if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                    continue;
                }
                let ready: Vec<bool> = fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
                    .collect();
                drop(fds);
                if ready[0]
                    && let Ok(n) = nix::unistd::read(&trunk, &mut buf)
                {
                    let frame = &buf[..n];
                    let vlan = (n >= 18 && frame[12..14] == [0x81, 0x00])
                        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff);
                    match vlan.and_then(|v| access.iter().find(|(id, _)| *id == v)) {
                        Some((_, fd)) => {
                            let mut untagged = frame[..12].to_vec();
                            untagged.extend_from_slice(&frame[16..]);
                            let _ = nix::unistd::write(fd, &untagged);
                        }
                        None => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for (i, (vlan, fd)) in access.iter().enumerate() {
                    if ready[i + 1]
                        && let Ok(n) = nix::unistd::read(fd, &mut buf)
                        && n >= 14
                    {
                        let mut tagged = buf[..12].to_vec();
                        tagged.extend_from_slice(&[0x81, 0x00]);
                        tagged.extend_from_slice(&vlan.to_be_bytes());
                        tagged.extend_from_slice(&buf[12..n]);
                        let _ = nix::unistd::write(&trunk, &tagged);
                    }
                }
            }
        });
        VlanSwitch {
            stop,
            thread: Some(thread),
            strays,
            inject,
        }
    }
}

impl Drop for VlanSwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn two_tenants_reach_their_own_vlans_of_a_trunk_and_nothing_crosses() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let trunk = tap_in(&topo.name("edge"), "trunk0", None);
    let v100 = tap_in(&topo.name("v100"), "eth0", Some("10.1.0.254/24"));
    let v200 = tap_in(&topo.name("v200"), "eth0", Some("10.1.0.254/24"));
    let switch = VlanSwitch::start(trunk, vec![(100, v100), (200, v200)]);
    let daemon = Daemon::start(&topo, &[]);

    // Each tenant reaches the host on its own VLAN, by the same address.
    assert!(
        ping(&topo.name("a1"), "10.1.0.254", 3),
        "a1 → VLAN 100: {}",
        daemon.log()
    );
    assert!(ping(&topo.name("b1"), "10.1.0.254", 3), "b1 → VLAN 200");
    let mac = |ns: &str| {
        sh(ns, "cat /sys/class/net/eth0/address")
            .1
            .trim()
            .to_string()
    };
    let neighbour = |ns: &str| sh(ns, "ip neigh show 10.1.0.1").1;
    assert!(neighbour(&topo.name("v100")).contains(&mac(&topo.name("a1"))));
    assert!(neighbour(&topo.name("v200")).contains(&mac(&topo.name("b1"))));
    // From upstream, VLAN 100's 10.1.0.1 is a1, never b1.
    let (a_before, b_before) = (
        icmp_in_echos(&topo.name("a1")),
        icmp_in_echos(&topo.name("b1")),
    );
    assert!(ping(&topo.name("v100"), "10.1.0.1", 3));
    assert!(icmp_in_echos(&topo.name("a1")) >= a_before + 3);
    assert_eq!(
        icmp_in_echos(&topo.name("b1")),
        b_before,
        "VLAN 100 reached tenant b"
    );
    // TCP both ways across the trunk (segmented by the kernel where the tags go on).
    for (client, server, addr) in [
        (topo.name("a1"), topo.name("v100"), "10.1.0.254"),
        (topo.name("v200"), topo.name("b1"), "10.1.0.1"),
    ] {
        let bits = common::iperf::tcp_flow(&client, &server, addr);
        assert!(bits > 1e7, "{client} → {addr}: {bits} bit/s");
    }
    // Upstream frames without a tag, on a VLAN of no tenant, or claiming a server's MAC are
    // dropped and counted.
    let a1_mac: Vec<u8> = mac(&topo.name("a1"))
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let frame = |tag: Option<u16>, src: &[u8]| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(src);
        if let Some(vlan) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&vlan.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    };
    let stranger = [2, 0, 0, 0, 0x77, 0x77];
    switch.inject.lock().unwrap().extend([
        frame(None, &stranger),
        frame(Some(300), &stranger),
        frame(Some(100), &a1_mac),
    ]);
    let stats = |what: &str| {
        let out = common::netd_ok(&topo, &["stats", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[what].clone()
    };
    let mut counted = false;
    for _ in 0..50 {
        let trunk = stats("trunk");
        if trunk["untagged"] == 1 && trunk["unknown_vlan"] == 1 {
            counted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(counted, "trunk drops: {}", stats("trunk"));
    let tenants = stats("tenants");
    let a = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "a")
        .unwrap();
    assert!(
        a["counters"]["drops"]["spoofed_mac"].as_u64().unwrap_or(0) >= 1,
        "{a}"
    );
    // Only tagged frames of the tenants' VLANs left the host (netd's: the trunk's own
    // stack has no address).
    assert_eq!(switch.strays.load(Ordering::Relaxed), 0);
    drop(daemon);
    drop(switch);
}
