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
    /// Build the edge under `topo`'s prefix.
    pub fn new(topo: &TestTopology) -> EmulatedEdge {
        let (edge, net) = (topo.name("edge"), topo.name("net"));
        let guard = EmulatedEdge { edge, net };
        let ip = |args: &str| {
            let status = Command::new("ip")
                .args(args.split_whitespace())
                .status()
                .expect("run ip");
            assert!(status.success(), "ip {args}");
        };
        let (edge, net) = (&guard.edge, &guard.net);
        ip(&format!("netns add {edge}"));
        ip(&format!("netns add {net}"));
        ip(&format!(
            "-n {edge} link add eth1 type veth peer name eth0 netns {net}"
        ));
        let (ok, out) = sh(
            edge,
            &format!(
                "ip link set lo up && ip addr add {UPLINK_ADDRESS}/24 dev eth1 && \
                 ip link set eth1 up && ip route add default via 198.51.100.1"
            ),
        );
        assert!(ok, "{out}");
        let (ok, out) = sh(
            net,
            &format!(
                "ip link set lo up && ip addr add {INTERNET_HOST}/32 dev lo && \
                 ip addr add 198.51.100.1/24 dev eth0 && ip link set eth0 up && \
                 ip route add 203.0.113.0/28 via {UPLINK_ADDRESS} && \
                 ip route add 10.0.0.0/8 via {UPLINK_ADDRESS}"
            ),
        );
        assert!(ok, "{out}");
        guard
    }
}

impl Drop for EmulatedEdge {
    fn drop(&mut self) {
        for ns in [&self.edge, &self.net] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}
