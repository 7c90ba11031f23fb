//! An emulated edge for the uplink tests, built entirely in namespaces: `{p}-edge` stands
//! in for the host's own stack (uplink `eth1` = 198.51.100.2/24, default via the provider),
//! `{p}-net` for the provider's router (198.51.100.1) and an internet host (192.0.2.1 on its
//! `lo`). The provider routes 203.0.113.0/28 (the tests' public tenant) and 10.0.0.0/8 (to
//! prove NAT tenants stay unreachable) to the host's uplink address.

use std::process::Command;

use super::{TestTopology, sh};

/// The host's uplink address.
pub const UPLINK_ADDRESS: &str = "198.51.100.2";
/// The internet host, on the provider's side.
pub const INTERNET_HOST: &str = "192.0.2.1";

/// The emulated edge: the host's stack and the provider's network; removed on drop.
pub struct EmulatedEdge {
    /// The host's stack.
    pub edge: String,
    /// The provider's router and the internet host.
    pub net: String,
}

impl EmulatedEdge {
    /// Build the edge under `topo`'s prefix with the README's demo script
    /// (`scripts/demo-edge up`, so the tests run the demo's own edge), plus a route the
    /// demo does not need: the provider routes 10.0.0.0/8 to the host too.
    pub fn new(topo: &TestTopology) -> EmulatedEdge {
        let guard = EmulatedEdge {
            edge: topo.name("edge"),
            net: topo.name("net"),
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-edge");
        let out = Command::new(script)
            .arg("up")
            .env("EDGE_NETNS", &guard.edge)
            .env("NET_NETNS", &guard.net)
            .output()
            .expect("run scripts/demo-edge");
        assert!(
            out.status.success(),
            "scripts/demo-edge up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (ok, out) = sh(
            &guard.net,
            &format!("ip route add 10.0.0.0/8 via {UPLINK_ADDRESS}"),
        );
        assert!(ok, "{out}");
        guard
    }
}

impl EmulatedEdge {
    /// The host's `forwarding` setting on the uplink interface (what netd sets and restores).
    pub fn uplink_forwarding(&self) -> String {
        sh(&self.edge, "cat /proc/sys/net/ipv4/conf/eth1/forwarding").1
    }
}

impl Drop for EmulatedEdge {
    fn drop(&mut self) {
        for ns in [&self.edge, &self.net] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}
