//! The uplink shaped both ways under real TCP: two routed tenants (one NAT, one public)
//! upload to and download from the internet host of an emulated edge at the same time.
//!
//! A rate-measuring test: it runs alone (its own test binary, one test), never beside other
//! rate tests. What it measures is what the benchmark counts: L2 wire bytes. iperf3's
//! receiver goodput over the run minus its first seconds (`-O`), at MTU 1500 with TCP
//! timestamps, is 1448 payload bytes per 1514-byte frame on the wire, which is what the
//! shaper charges; so wire rate = goodput × 1514 / 1448, exact for full-sized segments.
//!
//! Tolerance: 1%, as issue 10 asks. Measured on the 2-core VM, 4 runs of this test (debug
//! build, as CI runs it, BBR), 2026-12-06: every tenant within 0.61% in both directions
//! (a +0.31…+0.61%, c −0.22…−0.42%). Until the uplink had its own 50 ms queue bound
//! (`[uplink] queue_delay`), errors reached 4.5%: a tenant's download flow lost whole GRO
//! super-frames at a 20 ms bound and backed off, and this test guarded only 5%.

mod common;

use common::edge::{EmulatedEdge, INTERNET_HOST};
use common::iperf::{IperfServer, client_with, report};
use common::{Daemon, TestTopology, require_privileges};

/// Wire bytes per goodput byte (see the module docs).
const WIRE_PER_GOODPUT: f64 = 1514.0 / 1448.0;
/// Seconds measured, after seconds left out for TCP's ramp-up.
const SECS: u32 = 8;
const OMIT: u32 = 2;
/// See the module docs.
const TOLERANCE: f64 = 0.01;

/// Uplink 200 Mbit/s each way; host capacity well above it, so only the uplink shapes.
/// Both busy: a = 60 + 100 × 1/4 = 85 Mbit/s, c = 40 + 100 × 3/4 = 115 Mbit/s.
const TOPOLOGY: &str = r#"
[host]
capacity = "2gbit"

[uplink]
interface = "eth1"
netns = "{p}-edge"
capacity = "200mbit"

[tenants.{p}-a]
guaranteed = "500mbit"
gateway = "10.1.0.1/24"
nat = true

[tenants.{p}-a.uplink]
guaranteed = "60mbit"
weight = 1

[tenants.{p}-c]
guaranteed = "500mbit"
gateway = "203.0.113.1/28"

[tenants.{p}-c.uplink]
guaranteed = "40mbit"
weight = 3

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.1.0.10/24"

[servers.{p}-c1]
tenant = "{p}-c"
ip = "203.0.113.2/28"
"#;

/// The tenants' entitlements when both are busy, in bit/s (a, c).
const ENTITLED: [f64; 2] = [85e6, 115e6];

/// Both tenants at once in one direction; return each one's wire rate (bit/s).
fn both_at_once(topo: &TestTopology, edge: &EmulatedEdge, download: bool) -> [f64; 2] {
    let _servers = [5201, 5202].map(|port| IperfServer::start(&edge.net, port));
    let clients = [("a1", 5201), ("c1", 5202)].map(|(s, port)| {
        client_with(
            &topo.name(s),
            INTERNET_HOST,
            port,
            SECS + OMIT,
            OMIT,
            1,
            download,
        )
    });
    clients.map(|c| report(c).received_bps() * WIRE_PER_GOODPUT)
}

#[test]
fn upload_and_download_each_give_two_tenants_their_uplink_entitlement() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let edge = EmulatedEdge::new(&topo);
    let _netd = Daemon::start(&topo, &[]);
    let mut lines = Vec::new();
    let mut worst: f64 = 0.0;
    for (direction, download) in [("upload", false), ("download", true)] {
        let rates = both_at_once(&topo, &edge, download);
        for ((name, rate), want) in ["a", "c"].iter().zip(rates).zip(ENTITLED) {
            let error = (rate - want) / want;
            worst = worst.max(error.abs());
            lines.push(format!(
                "{direction} {name}: entitled {:.2} Mbit/s, measured {:.2} Mbit/s ({:+.2}%)",
                want / 1e6,
                rate / 1e6,
                error * 100.0
            ));
        }
    }
    // The uplink table (rates, drops per direction) explains a miss.
    lines.push(common::netd_ok(&topo, &["status"]));
    let text = lines.join("\n");
    println!("{text}");
    assert!(
        worst <= TOLERANCE,
        "a tenant is off its uplink entitlement by more than {:.0}%:\n{text}",
        TOLERANCE * 100.0
    );
}
