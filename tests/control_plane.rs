//! The control plane end to end: a running `netd up` driven through the CLI, the HTTP API,
//! SIGHUP and the raw control socket. Real namespaces; needs root (CI runs as root).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{
    Daemon, TestTopology, http, http_api, netd_bin, netd_cli, netd_ok, netns_exists, ping,
    require_privileges,
};

const TOPOLOGY: &str = r#"
[host]
capacity = "1gbit"

[tenants.{p}-a]
guaranteed = "400mbit"

[tenants.{p}-b]
guaranteed = "400mbit"

[servers.{p}-a1]
tenant = "{p}-a"
ip = "10.66.0.1/24"

[servers.{p}-a2]
tenant = "{p}-a"
ip = "10.66.0.2/24"

[servers.{p}-b1]
tenant = "{p}-b"
ip = "10.66.0.1/24"
"#;

fn status(topo: &TestTopology) -> serde_json::Value {
    serde_json::from_str(&netd_ok(topo, &["status", "--json"])).expect("status JSON")
}

fn tenant<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {status}"))
}

fn port_rx_frames(topo: &TestTopology, server: &str) -> u64 {
    common::port_counters(topo, server)["rx_frames"]
        .as_u64()
        .unwrap()
}

#[test]
fn servers_and_tenants_are_added_and_removed_live() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let (a, a1, a3) = (topo.name("a"), topo.name("a1"), topo.name("a3"));

    // A server from a TOML fragment: its namespace and TAP appear and it is reachable.
    let fragment = std::env::temp_dir().join(format!("{}-a3.toml", topo.prefix));
    std::fs::write(
        &fragment,
        format!("tenant = \"{a}\"\nip = \"10.66.0.3/24\"\n"),
    )
    .unwrap();
    let out = netd_ok(
        &topo,
        &["add-server", &a3, "--file", fragment.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(&fragment);
    assert!(out.contains(&format!("server {a3}: added")), "{out}");
    assert!(netns_exists(&a3));
    assert!(ping(&a1, "10.66.0.3", 3), "a1 -> new a3 failed");
    assert!(ping(&a3, "10.66.0.2", 3), "new a3 -> a2 failed");
    assert!(
        tenant(&status(&topo), &a)["servers"]
            .as_array()
            .unwrap()
            .len()
            == 3
    );

    // Removing it tears down exactly its namespace; the others keep working.
    let out = netd_ok(&topo, &["remove-server", &a3]);
    assert!(out.contains(&format!("server {a3}: removed")), "{out}");
    assert!(!netns_exists(&a3), "a3's namespace left behind");
    assert!(netns_exists(&a1) && netns_exists(&topo.name("b1")));
    assert!(!ping(&a1, "10.66.0.3", 1), "removed a3 still answers");
    assert!(ping(&a1, "10.66.0.2", 3), "a1 -> a2 broken by the removal");

    // Tenants: added, refused removal while it has servers, removed when empty.
    let c = topo.name("c");
    netd_ok(
        &topo,
        &["add-tenant", &c, "--guaranteed", "100mbit", "--weight", "3"],
    );
    assert_eq!(tenant(&status(&topo), &c)["weight"], 3);
    let (ok, _, err) = netd_cli(&topo, &["remove-tenant", &a]);
    assert!(!ok && err.contains("still has servers"), "{err}");
    netd_ok(&topo, &["remove-tenant", &c]);
    let names: Vec<String> = status(&topo)["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, [a.clone(), topo.name("b")]);

    // The running state written back is a topology `netd check` accepts.
    let written = std::env::temp_dir().join(format!("{}-running.toml", topo.prefix));
    std::fs::write(&written, netd_ok(&topo, &["status", "--toml"])).unwrap();
    let check = std::process::Command::new(netd_bin())
        .arg("check")
        .arg(&written)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&written);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn rejected_changes_leave_everything_as_it_was() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let before = netd_ok(&topo, &["status", "--toml"]);
    let a = topo.name("a");

    // Sum of guarantees above capacity: the validator's own error, nothing changed.
    let (ok, _, err) = netd_cli(&topo, &["set-rate", &a, "--guaranteed", "700mbit"]);
    assert!(!ok, "over-capacity change accepted");
    assert!(
        err.contains("sum of tenant guarantees 1100mbit exceeds the host capacity 1gbit"),
        "{err}"
    );
    assert!(
        err.contains(&topo.path.display().to_string()),
        "names the file: {err}"
    );
    // Unknown tenant; a ceiling below the guarantee; a server with a duplicate IP.
    let (ok, _, err) = netd_cli(&topo, &["set-rate", "nosuch", "--weight", "2"]);
    assert!(!ok && err.contains("No such tenant: \"nosuch\""), "{err}");
    let (ok, _, err) = netd_cli(&topo, &["set-rate", &a, "--ceiling", "10mbit"]);
    assert!(
        !ok && err.contains("ceiling is below the guarantee"),
        "{err}"
    );
    let dup = topo.name("dup");
    let (ok, _, err) = netd_cli(
        &topo,
        &["add-server", &dup, "--tenant", &a, "--ip", "10.66.0.2/24"],
    );
    assert!(
        !ok && err.contains("address already used by server"),
        "{err}"
    );
    assert!(!netns_exists(&dup), "a rejected server left a namespace");

    assert_eq!(netd_ok(&topo, &["status", "--toml"]), before);
    assert!(ping(&topo.name("a1"), "10.66.0.2", 3));
}

#[test]
fn reload_and_sighup_apply_only_the_difference() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut netd = Daemon::start(&topo, &[]);
    let (a1, a3, b) = (topo.name("a1"), topo.name("a3"), topo.name("b"));
    assert!(ping(&a1, "10.66.0.2", 2));
    let rx_before = port_rx_frames(&topo, &a1);
    assert!(rx_before > 0);

    // Edit the file: b's guarantee and one new server.
    let text = std::fs::read_to_string(&topo.path).unwrap();
    let edited = text.replacen(
        &format!("[tenants.{b}]\nguaranteed = \"400mbit\""),
        &format!("[tenants.{b}]\nguaranteed = \"300mbit\""),
        1,
    ) + &format!(
        "\n[servers.{a3}]\ntenant = \"{}\"\nip = \"10.66.0.3/24\"\n",
        topo.name("a")
    );
    assert_ne!(edited, text);
    std::fs::write(&topo.path, &edited).unwrap();
    let out = netd_ok(&topo, &["reload"]);
    let changes: Vec<&str> = out.lines().filter(|l| !l.starts_with("applied")).collect();
    assert_eq!(
        changes,
        [
            format!("tenant {b}: guaranteed 400mbit → 300mbit"),
            format!(
                "server {a3}: added (tenant {}, mac {}, ip 10.66.0.3/24, netns {a3})",
                topo.name("a"),
                status(&topo)["servers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["name"] == a3.as_str())
                    .unwrap()["mac"]
                    .as_str()
                    .unwrap()
            ),
        ]
    );
    assert!(ping(&a1, "10.66.0.3", 3), "a1 -> reloaded a3 failed");
    // Untouched ports kept their TAP and counters.
    assert!(port_rx_frames(&topo, &a1) > rx_before);
    assert_eq!(tenant(&status(&topo), &b)["guaranteed_bps"], 300_000_000);
    // Reloading the same file again changes nothing.
    assert_eq!(netd_ok(&topo, &["reload"]).trim(), "nothing to change");

    // SIGHUP does the same: back to the original file.
    std::fs::write(&topo.path, &text).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &netd.pid().to_string()])
        .status()
        .unwrap();
    let removed = format!("server {a3}: removed");
    assert!(
        netd.wait_for(&removed, Duration::from_secs(10)).is_some(),
        "SIGHUP did not reload; log:\n{}",
        netd.log()
    );
    assert!(!netns_exists(&a3));
    assert_eq!(tenant(&status(&topo), &b)["guaranteed_bps"], 400_000_000);
    let log = netd.log();
    let applied = log
        .lines()
        .filter(|l| l.contains("control change applied"))
        .count();
    assert_eq!(applied, 4, "exactly the four changes were applied:\n{log}");
}

#[test]
fn http_api_serves_metrics_status_and_changes() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut netd = Daemon::start(&topo, &["--http", "127.0.0.1:0"]);
    let addr = http_api(&mut netd);
    assert!(ping(&topo.name("a1"), "10.66.0.2", 2));

    let (code, text) = http(&addr, "GET", "/metrics", None);
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text parses");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let (a, b) = (topo.name("a"), topo.name("b"));
    assert!(value("netd_tenant_rx_frames_total", &[("tenant", &a)]).unwrap() > 0.0);
    assert!(
        value(
            "netd_port_tx_bytes_total",
            &[("server", &topo.name("a2")), ("tenant", &a)]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(
            "netd_tenant_drops_total",
            &[("tenant", &b), ("reason", "storm_control")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value("netd_tenant_guaranteed_bits_per_second", &[("tenant", &a)]),
        Some(400e6)
    );
    assert!(value("netd_tenant_entitlement_bits_per_second", &[("tenant", &b)]).is_some());
    assert!(value("netd_tenant_own_bytes_total", &[("tenant", &a)]).is_some());
    assert!(value("netd_tenant_queue_bytes", &[("tenant", &a)]).is_some());
    assert!(
        value(
            "netd_tenant_rate_bits_per_second",
            &[("tenant", &a), ("window", "1s"), ("direction", "in")]
        )
        .is_some()
    );

    // A change over HTTP; a rejected one gets 400 and the validator's message.
    let body = format!(r#"{{"tenant":"{b}","guaranteed":"200mbit","weight":2}}"#);
    let (code, answer) = http(&addr, "POST", "/api/set-rate", Some(&body));
    assert_eq!(code, 200, "{answer}");
    let body = format!(r#"{{"tenant":"{b}","guaranteed":"900mbit"}}"#);
    let (code, answer) = http(&addr, "POST", "/api/set-rate", Some(&body));
    assert_eq!(code, 400);
    assert!(answer.contains("exceeds the host capacity"), "{answer}");
    let (code, answer) = http(&addr, "POST", "/api/set-rate", Some("{not json"));
    assert_eq!(code, 400);
    assert!(answer.contains("Malformed request"), "{answer}");
    let (code, answer) = http(&addr, "GET", "/api/status", None);
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let t = tenant(&status["result"], &b);
    assert_eq!(
        (t["guaranteed_bps"].as_u64(), t["weight"].as_u64()),
        (Some(200_000_000), Some(2))
    );
    let (code, answer) = http(&addr, "GET", "/api/stats", None);
    assert_eq!(code, 200);
    assert!(answer.contains("\"borrowed_bytes\""), "{answer}");
}

#[test]
fn public_http_addresses_and_second_daemons_are_refused() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut public = Daemon::spawn(&topo, &["--http", "0.0.0.0:0"]);
    assert_eq!(public.wait_exit(), Some(1));
    assert!(public.log().contains("non-loopback"), "{}", public.log());
    assert!(
        !netns_exists(&topo.name("a1")),
        "a refused start created namespaces"
    );

    let _netd = Daemon::start(&topo, &[]);
    let mut second = Daemon::spawn(&topo, &[]);
    assert_eq!(second.wait_exit(), Some(1));
    assert!(
        second.log().contains("Another daemon already serves"),
        "{}",
        second.log()
    );
    // The first one is unharmed.
    assert!(ping(&topo.name("a1"), "10.66.0.2", 2));
}

#[test]
fn control_socket_survives_bad_and_slow_clients() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let _netd = Daemon::start(&topo, &[]);
    let path = format!("/run/netd/{}.sock", topo.prefix);
    let ask = |stream: &mut UnixStream, line: &[u8]| -> serde_json::Value {
        stream.write_all(line).unwrap();
        let mut answer = String::new();
        BufReader::new(&*stream).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
    };
    // A slow client that connects and sends half a line holds nobody up.
    let mut slow = UnixStream::connect(&path).unwrap();
    slow.write_all(b"{\"cmd\":").unwrap();

    let mut client = UnixStream::connect(&path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let answer = ask(&mut client, b"{\"cmd\":\"explode\"}\n");
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("Malformed request")
    );
    // Same connection still serves after a malformed line.
    let answer = ask(&mut client, b"{\"cmd\":\"status\"}\n");
    assert_eq!(answer["ok"], true, "{answer}");

    let mut big = UnixStream::connect(&path).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = ask(&mut big, &vec![b'x'; 100_000]);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Request too large"),
        "{answer}"
    );

    // The slow client is cut off after the read timeout, with an error.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&slow).read_line(&mut answer).unwrap();
    assert!(answer.contains("Timed out"), "{answer:?}");
    // And the CLI still works.
    netd_ok(&topo, &["stats"]);
}

/// Run `command` as user `nobody` (uid/gid 65534, no groups); return (success, stdout).
fn as_nobody(command: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .args(command)
        .output()
        .expect("run setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Issue 11, item 1: any local user could add and remove servers over the loopback HTTP API.
#[test]
fn http_api_refuses_every_request_without_the_admin_token() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let metrics_token = "m".repeat(40);
    let metrics_file = topo.path.with_extension("metrics-token");
    let _metrics_file = common::TempFile::create(&metrics_file, &metrics_token, 0o600);
    let mut netd = Daemon::start(
        &topo,
        &[
            "--http",
            "127.0.0.1:0",
            "--metrics-token-file",
            metrics_file.to_str().unwrap(),
        ],
    );
    let api = http_api(&mut netd);
    let victim = topo.name("a2");

    // The admin token is root's alone.
    let meta = std::fs::metadata(&api.token_file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    assert!(
        !as_nobody(&["cat", &api.token_file]).0,
        "nobody read the token"
    );

    // The issue's reproduction, as nobody: refused, and nothing changes.
    let url = format!("http://{}/api/remove-server", api.addr);
    let body = format!(r#"{{"name":"{victim}"}}"#);
    let (_, answer) = as_nobody(&[
        "curl",
        "-s",
        "-XPOST",
        &url,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
    ]);
    assert!(answer.contains("Authentication required"), "{answer:?}");
    assert!(
        netns_exists(&victim),
        "an unauthenticated request removed a server"
    );

    // Every endpoint, unknown ones too, wants the token; a wrong one is no better.
    let wrong = format!("Bearer {}", "x".repeat(64));
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/api/status"),
        ("GET", "/api/topology"),
        ("POST", "/api/reload"),
        ("POST", "/api/remove-server"),
        ("GET", "/nowhere"),
    ] {
        for authorization in [None, Some(wrong.as_str()), Some(api.token.as_str())] {
            let (code, answer) =
                common::http_as(&api.addr, authorization, method, path, Some(&body));
            assert_eq!(
                code, 401,
                "{method} {path} with {authorization:?}: {answer}"
            );
            let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer["ok"], false);
        }
    }
    // The metrics token reads metrics and nothing else.
    let metrics = format!("Bearer {metrics_token}");
    let (code, text) = common::http_as(&api.addr, Some(&metrics), "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(text.contains("netd_tenant_rx_frames_total"));
    for (method, path) in [("GET", "/api/status"), ("POST", "/api/remove-server")] {
        let (code, answer) = common::http_as(&api.addr, Some(&metrics), method, path, Some(&body));
        assert_eq!(code, 403, "{method} {path}: {answer}");
    }
    assert!(netns_exists(&victim));

    // A body over the bound gets a JSON 413, unread.
    let big = "x".repeat(100_000);
    let (code, answer) = http(&api, "POST", "/api/set-rate", Some(&big));
    assert_eq!(code, 413, "{answer}");
    assert!(answer.contains("Request too large"), "{answer}");

    // The admin token does what the socket does.
    let (code, answer) = http(&api, "POST", "/api/remove-server", Some(&body));
    assert_eq!(code, 200, "{answer}");
    assert!(!netns_exists(&victim));
    // The generated token file goes with the daemon.
    netd.stop();
    assert!(!std::path::Path::new(&api.token_file).exists());
}

/// Half-open connections were all held for 20 s+; now a connection cap answers the excess at
/// once and the header timeout closes the idle ones.
#[test]
fn http_api_bounds_idle_connections() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut netd = Daemon::start(&topo, &["--http", "127.0.0.1:0"]);
    let api = http_api(&mut netd);
    let started = std::time::Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(&api.addr).unwrap())
        .collect();
    // Beyond the cap of 64, netd answers 503 without reading, then closes.
    let mut busy = 0;
    let mut closed_in_time = 0;
    for mut stream in idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        use std::io::Read;
        let _ = stream.read_to_string(&mut answer);
        if answer.contains(" 503 ") {
            assert!(answer.contains("\"ok\":false"), "{answer}");
            busy += 1;
        } else if started.elapsed() < Duration::from_secs(9) {
            closed_in_time += 1; // cut by the 5 s header timeout
        }
    }
    assert_eq!(busy, 16, "connections over the cap of 64");
    assert_eq!(
        closed_in_time, 64,
        "idle connections were held past the header timeout"
    );
    // And the API still answers.
    let (code, _) = http(&api, "GET", "/api/status", None);
    assert_eq!(code, 200);
}

/// Issue 11, item 7: a port whose device vanished was disabled with one log line; status,
/// the API and metrics now show it, with its read failures.
#[test]
fn a_port_whose_device_vanished_shows_down_everywhere() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut netd = Daemon::start(&topo, &["--http", "127.0.0.1:0"]);
    let api = http_api(&mut netd);
    let a1 = topo.name("a1");
    assert!(ping(&a1, "10.66.0.2", 1));
    let (_, metrics) = http(&api, "GET", "/metrics", None);
    assert!(metrics.contains("\nnetd_up 1\n"), "{metrics}");
    assert!(metrics.contains("netd_build_info{version=\""), "{metrics}");
    let up = format!(
        "netd_port_up{{server=\"{a1}\",tenant=\"{}\"}} 1",
        topo.name("a")
    );
    assert!(metrics.contains(&up), "{metrics}");

    // The server deletes its own eth0: the TAP's device is gone under netd's fd.
    let out = std::process::Command::new("ip")
        .args(["-n", &a1, "link", "del", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let server = loop {
        let s = status(&topo);
        let server = s["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == a1.as_str())
            .unwrap()
            .clone();
        if server["state"] == "down" || std::time::Instant::now() > deadline {
            break server;
        }
        // A frame towards it makes the loop touch the dead device.
        let _ = ping(&topo.name("a2"), "10.66.0.1", 1);
    };
    assert_eq!(server["state"], "down", "{server}");
    let (_, metrics) = http(&api, "GET", "/metrics", None);
    assert!(metrics.contains(&up.replace("} 1", "} 0")), "{metrics}");
    let read_errors = metrics
        .lines()
        .find(|l| l.starts_with("netd_port_read_errors_total") && l.contains(&a1))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap();
    assert!(read_errors >= 1, "{metrics}");
    let text = netd_ok(&topo, &["status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&a1) && l.contains(" down ")),
        "{text}"
    );
    // Tenant b is unharmed.
    assert_eq!(
        status(&topo)["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "down")
            .count(),
        1
    );
    // Logs to a pipe carry no colour codes and no Rust debug text for absent options.
    let log = netd.log();
    assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log");
    let running = log
        .lines()
        .find(|l| l.contains("data path running"))
        .unwrap();
    assert!(!running.contains("None"), "{running}");
    let up_line = log.lines().find(|l| l.contains("netd is up")).unwrap();
    assert!(!up_line.contains("Some("), "{up_line}");
}

/// Issue 11, item 8: a non-root `netd status` said no daemon runs when the truth is that
/// only root may use the control socket.
#[test]
fn a_user_who_may_not_use_the_socket_is_told_so() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    // A run directory of this test's own, and a copy of netd that `nobody` may execute
    // wherever the checkout lives.
    let dir = topo.path.with_extension("run");
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = common::TempDir(dir.clone());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let netd_copy = dir.join("netd");
    std::fs::copy(netd_bin(), &netd_copy).unwrap();
    let socket = dir.join("x.sock");
    let _netd = Daemon::start(&topo, &["--socket", socket.to_str().unwrap()]);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&netd_copy)
        .arg("status")
        .env("NETD_RUN_DIR", &dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("only root may use its control socket"),
        "{stderr}"
    );
}

/// Issue 11, item 2: `add-tenant; add-server; reload` deleted the new server without a word,
/// and so did a restart. Live changes are now written back to the file, and a reload that
/// would remove a server created live needs `--prune`.
#[test]
fn live_changes_survive_reload_and_restart_and_pruning_is_explicit() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut netd = Daemon::start(&topo, &[]);
    let (t, s) = (topo.name("t"), topo.name("s"));
    netd_ok(&topo, &["add-tenant", &t, "--guaranteed", "50mbit"]);
    netd_ok(
        &topo,
        &["add-server", &s, "--tenant", &t, "--ip", "10.9.0.5/24"],
    );
    netd_ok(&topo, &["reload"]);
    assert!(netns_exists(&s), "reload removed a server created live");
    let file = std::fs::read_to_string(&topo.path).unwrap();
    assert!(file.contains(&format!("[servers.{s}]")), "{file}");
    assert!(
        file.starts_with("\n[host]"),
        "the file's own layout is kept: {file}"
    );

    // A restart reads the file: the server is still there.
    netd.stop();
    assert!(!netns_exists(&s));
    let _netd = Daemon::start(&topo, &[]);
    assert!(netns_exists(&s), "a restart lost a server created live");

    // The operator takes it out of the file: reload shows it and refuses without --prune.
    let edited = file.replace(&format!("[servers.{s}]"), "[servers.gone]");
    let edited = edited.replace("[servers.gone]\ntenant", "[removed.gone]\ntenant");
    let start = edited.find("[removed.gone]").unwrap();
    let end = edited[start..]
        .find("\n\n")
        .map_or(edited.len(), |e| start + e + 1);
    std::fs::write(
        &topo.path,
        format!("{}{}", &edited[..start], &edited[end..]),
    )
    .unwrap();
    let (ok, _, err) = netd_cli(&topo, &["reload"]);
    assert!(!ok && err.contains("--prune") && err.contains(&s), "{err}");
    assert!(netns_exists(&s));
    // Gone once the operator says so; and a restart since keeps it gone.
    netd_ok(&topo, &["reload", "--prune"]);
    assert!(!netns_exists(&s));
}

/// Issue 12 (its control-plane part): several tenants' rates in one change, validated as a
/// whole, so guarantee moves between tenants at full capacity, from the CLI and over HTTP;
/// one bad member refuses it all.
#[test]
fn set_rate_moves_guarantee_between_tenants_in_one_change() {
    require_privileges();
    let topo = TestTopology::new(TOPOLOGY);
    let mut netd = Daemon::start(&topo, &["--http", "127.0.0.1:0"]);
    let (a, b) = (topo.name("a"), topo.name("b"));
    let guarantees = |topo: &TestTopology| {
        let s = status(topo);
        (
            tenant(&s, &a)["guaranteed_bps"].as_u64().unwrap(),
            tenant(&s, &b)["guaranteed_bps"].as_u64().unwrap(),
        )
    };
    // 400 + 400 of 1000: a to 700 alone would pass the capacity, with b to 300 it does not.
    let (ok, _, err) = netd_cli(&topo, &["set-rate", &a, "--guaranteed", "700mbit"]);
    assert!(!ok, "{err}");
    let (ok, out, err) = netd_cli(
        &topo,
        &[
            "set-rate",
            &format!("{a}.guaranteed=700mbit"),
            &format!("{b}.guaranteed=300mbit"),
            &format!("{b}.weight=3"),
        ],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(guarantees(&topo), (700_000_000, 300_000_000));
    let file = std::fs::read_to_string(&topo.path).unwrap();
    assert!(
        file.contains("700mbit") && file.contains("300mbit"),
        "not written back: {file}"
    );
    // One bad member (a ceiling below its guarantee) refuses the whole change.
    let (ok, _, err) = netd_cli(
        &topo,
        &[
            "set-rate",
            &format!("{a}.guaranteed=400mbit"),
            &format!("{b}.ceiling=100mbit"),
        ],
    );
    assert!(
        !ok && err.contains("ceiling is below the guarantee"),
        "{err}"
    );
    assert_eq!(guarantees(&topo), (700_000_000, 300_000_000));
    // Flags and assignments do not mix.
    let (ok, _, err) = netd_cli(
        &topo,
        &["set-rate", &format!("{a}.weight=2"), "--weight", "2"],
    );
    assert!(!ok && err.contains("not both"), "{err}");
    // The same over HTTP, in one POST.
    let api = http_api(&mut netd);
    let body = format!(
        r#"{{"rates":[{{"tenant":"{b}","guaranteed":"400mbit"}},{{"tenant":"{a}","guaranteed":"400mbit"}}]}}"#
    );
    let (code, answer) = http(&api, "POST", "/api/set-rates", Some(&body));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(guarantees(&topo), (400_000_000, 400_000_000));
}
