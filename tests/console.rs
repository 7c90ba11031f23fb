//! Issue 12: the operator's console in a real browser. This test starts `netd up --http` on
//! a topology of its own, saturates both tenants with iperf3, and runs
//! `tests/console/console.test.mjs` (playwright-core driving Debian's Chromium) against it;
//! the script's checks are listed there. It installs the script's npm package itself
//! (`npm ci`, from the committed lock file) when it is missing.
//!
//! Rate-measuring (the plotted rates against `netd status`, the split after a drag): it is
//! the only test in its binary. Needs root, `/usr/bin/chromium` and Node.js (`scripts/setup
//! --deps` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::iperf::{IperfServer, client};
use common::{Daemon, TestTopology, http_api, require_privileges};

const TOPOLOGY: &str = r#"
[host]
capacity = "400mbit"

[uplink]
interface = "eth1"
netns = "{p}-edge"
capacity = "400mbit"

[tenants.{p}-a]
guaranteed = "150mbit"
gateway = "10.91.0.254/24"
nat = true

[tenants.{p}-b]
guaranteed = "150mbit"
ceiling = "300mbit"
gateway = "10.91.0.254/24"
nat = true

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.91.0.1/24"

[servers.{p}-a2]
tenant = "{p}-a"
ip = "10.91.0.2/24"

[servers.{p}-b1]
tenant = "{p}-b"
ip = "10.91.0.1/24"

[servers.{p}-b2]
tenant = "{p}-b"
ip = "10.91.0.2/24"
"#;

/// How long the iperf3 flows run: longer than the script takes to reach its last rate check.
const FLOW_SECS: u32 = 45;

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// Install playwright-core from the lock file unless it is there.
fn npm_ci(dir: &Path) {
    if dir.join("node_modules/playwright-core").exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .expect("npm (install Node.js: scripts/setup --deps)");
    assert!(
        out.status.success(),
        "npm ci failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_console_shows_live_rates_and_moves_guarantee_by_drag_and_drop() {
    require_privileges();
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "the console test needs Debian's chromium (scripts/setup --deps installs it)"
    );
    let dir = script_dir();
    npm_ci(&dir);
    let topo = TestTopology::new(TOPOLOGY);
    // Both tenants are routed (NAT) through an emulated edge, so their uplink plots show.
    let _edge = common::edge::EmulatedEdge::new(&topo);
    let mut netd = Daemon::start(&topo, &["--http", "127.0.0.1:0"]);
    let api = http_api(&mut netd);
    let _servers = [
        IperfServer::start(&topo.name("a2"), 5201),
        IperfServer::start(&topo.name("b2"), 5201),
    ];
    let flows = [
        client(&topo.name("a1"), "10.91.0.2", 5201, FLOW_SECS, 0, 1),
        client(&topo.name("b1"), "10.91.0.2", 5201, FLOW_SECS, 0, 1),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let servers = ["a1", "a2", "b1", "b2"].map(|s| topo.name(s)).join(",");
    let out = Command::new("timeout")
        .args(["120", "node", "console.test.mjs"])
        .current_dir(&dir)
        .env("NETD_URL", format!("http://{}/", api.addr))
        .env("NETD_TOKEN", &api.token)
        .env("NETD_PID", netd.pid().to_string())
        .env("TENANT_A", topo.name("a"))
        .env("TENANT_B", topo.name("b"))
        .env("SERVERS", servers)
        .env("CAPACITY_BPS", "400000000")
        .env("SCREENSHOT", &screenshot)
        .output()
        .expect("node");
    for flow in flows {
        let _ = common::iperf::report(flow);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
