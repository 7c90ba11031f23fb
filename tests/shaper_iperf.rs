//! The shaper under real TCP: three tenants through `netd up`, iperf3 in namespaces.
//!
//! Rate-measuring tests: they run one at a time (a process-wide lock), never beside each
//! other, or the 2-core machine turns them into noise. Tolerance: ±10% of each tenant's
//! entitlement, converted to TCP goodput (the benchmark runner measures tighter).

mod common;

use std::sync::Mutex;

use common::iperf::{IperfServer, client, report};
use common::{Daemon, TestTopology, require_privileges};

static SERIAL: Mutex<()> = Mutex::new(());

/// Share of an Ethernet frame's bytes that is TCP payload at MTU 1500 with timestamps:
/// 1448 payload bytes per 1514-byte frame (tc, and netd, count the frame).
const GOODPUT_PER_L2: f64 = 1448.0 / 1514.0;

const THREE_TENANTS: &str = r#"
[host]
capacity = "300mbit"

[tenants.{p}-t1]
guaranteed = "150mbit"
weight = 2

[tenants.{p}-t2]
guaranteed = "90mbit"

[tenants.{p}-t3]
guaranteed = "60mbit"

[servers.{p}-1s]
tenant = "{p}-t1"
ip = "10.80.0.1/24"
[servers.{p}-1r]
tenant = "{p}-t1"
ip = "10.80.0.2/24"

[servers.{p}-2s]
tenant = "{p}-t2"
ip = "10.80.0.1/24"
[servers.{p}-2r]
tenant = "{p}-t2"
ip = "10.80.0.2/24"

[servers.{p}-3s]
tenant = "{p}-t3"
ip = "10.80.0.1/24"
[servers.{p}-3r]
tenant = "{p}-t3"
ip = "10.80.0.2/24"
"#;

/// Ideal entitlement (bit/s) for demands `d`: guarantees first, then weighted water-filling.
fn entitlement(
    capacity: f64,
    guaranteed: &[f64],
    ceiling: &[f64],
    weight: &[f64],
    demand: &[f64],
) -> Vec<f64> {
    let mut give: Vec<f64> = demand
        .iter()
        .zip(guaranteed)
        .map(|(d, g)| d.min(*g))
        .collect();
    let mut spare = capacity - give.iter().sum::<f64>();
    let cap: Vec<f64> = demand.iter().zip(ceiling).map(|(d, c)| d.min(*c)).collect();
    while spare > 1.0 {
        let hungry: Vec<usize> = (0..give.len())
            .filter(|&i| give[i] + 1e-6 < cap[i])
            .collect();
        if hungry.is_empty() {
            break;
        }
        let total_weight: f64 = hungry.iter().map(|&i| weight[i]).sum();
        let mut used = 0.0;
        for &i in &hungry {
            let add = (spare * weight[i] / total_weight).min(cap[i] - give[i]);
            give[i] += add;
            used += add;
        }
        spare -= used;
        if used < 1.0 {
            break;
        }
    }
    give
}

fn run_phase(topo: &TestTopology, tenants: &[&str], secs: u32) -> Vec<f64> {
    let servers: Vec<IperfServer> = tenants
        .iter()
        .map(|t| IperfServer::start(&topo.name(&format!("{t}r")), 5201))
        .collect();
    let clients: Vec<_> = tenants
        .iter()
        .map(|t| client(&topo.name(&format!("{t}s")), "10.80.0.2", 5201, secs, 1, 1))
        .collect();
    let rates = clients
        .into_iter()
        .map(|c| report(c).received_bps())
        .collect();
    drop(servers);
    rates
}

#[test]
fn three_tenants_get_their_entitlement_and_share_an_idle_tenants_bandwidth_by_weight() {
    three_tenants_share(&[]);
}

/// The same with two data-path loops: each tenant's sender and receiver are read by
/// different loops (ports 2k and 2k+1), so every tenant's rates are split between the two
/// shapers every millisecond.
#[test]
fn two_data_path_loops_keep_every_entitlement_and_loan() {
    three_tenants_share(&["--datapath-threads", "2"]);
}

/// Run the three tenants all busy, then t3 idle, through netd started with `extra`; check
/// every tenant's TCP goodput against its entitlement.
fn three_tenants_share(extra: &[&str]) {
    require_privileges();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let topo = TestTopology::new(THREE_TENANTS);
    let _netd = Daemon::start(&topo, extra);
    let mbit = 1e6;
    let guaranteed = [150.0 * mbit, 90.0 * mbit, 60.0 * mbit];
    let ceiling = [300.0 * mbit; 3];
    let weight = [2.0, 1.0, 1.0];

    // All three saturate: each gets exactly its guarantee (they sum to the capacity).
    let busy = run_phase(&topo, &["1", "2", "3"], 5);
    let want = entitlement(
        300.0 * mbit,
        &guaranteed,
        &ceiling,
        &weight,
        &[f64::INFINITY; 3],
    );
    let mut report_lines = Vec::new();
    for i in 0..3 {
        let goodput_want = want[i] * GOODPUT_PER_L2;
        report_lines.push(format!(
            "all busy t{}: entitlement {:.1} Mbit/s (goodput {:.1}), measured {:.1} Mbit/s",
            i + 1,
            want[i] / mbit,
            goodput_want / mbit,
            busy[i] / mbit
        ));
    }
    // t3 silent: t1 and t2 split its 60 Mbit/s 2:1 by weight.
    let loaned = run_phase(&topo, &["1", "2"], 5);
    let want_loan = entitlement(
        300.0 * mbit,
        &guaranteed,
        &ceiling,
        &weight,
        &[f64::INFINITY, f64::INFINITY, 0.0],
    );
    for i in 0..2 {
        report_lines.push(format!(
            "t3 idle t{}: entitlement {:.1} Mbit/s (goodput {:.1}), measured {:.1} Mbit/s",
            i + 1,
            want_loan[i] / mbit,
            want_loan[i] * GOODPUT_PER_L2 / mbit,
            loaned[i] / mbit
        ));
    }
    let text = report_lines.join("\n");
    println!("{text}");
    for i in 0..3 {
        let goodput_want = want[i] * GOODPUT_PER_L2;
        let err = (busy[i] - goodput_want) / goodput_want;
        assert!(
            err.abs() <= 0.10,
            "all busy: t{} off by {:.1}%\n{text}",
            i + 1,
            err * 100.0
        );
    }
    for i in 0..2 {
        let goodput_want = want_loan[i] * GOODPUT_PER_L2;
        let err = (loaned[i] - goodput_want) / goodput_want;
        assert!(
            err.abs() <= 0.10,
            "t3 idle: t{} off by {:.1}%\n{text}",
            i + 1,
            err * 100.0
        );
    }
}
