//! Scenario 7: N servers (tenants of 10), start-up time, netd memory, 2-server throughput.
//!
//! For each N the topology is generated (capacity 100 Gbit/s split evenly as guarantees),
//! brought up by netd and by the kernel (N namespaces and veths on one bridge, N/10 HTB
//! classes, N source-MAC filters), then one TCP flow runs between the first two servers on
//! each side, alternating. The kernel side keeps veth's default offloads here (its best
//! case): netd has no TAP offloads yet. The measured servers' filters come first in the u32
//! list, which slightly favours the kernel at N = 1000.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::Ctx;
use crate::bed::Bed;
use crate::iperf::{Client, IperfServer, Load, settle};
use crate::kernel_side::{Htb, Offloads};
use crate::measure::status_kb;
use crate::proc::check_stop;
use crate::report::{Figures, Side, Target};
use crate::scenarios::Outcome;
use crate::topo::BenchTopo;

const NAME: &str = "7 scale";

/// Run scenario 7 for `ctx.scale` sizes.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let (mut out, mut fig) = (Outcome::default(), Figures::new(ctx.tap_offloads));
    let sides = [Side::Netd, Side::Kernel(Htb::Tuned, Offloads::Veth)];
    for &n in &ctx.scale {
        check_stop()?;
        let topo = BenchTopo::generated(100_000_000_000, n / 10, 10);
        let mut bed = Bed::up(ctx, &topo)?;
        let pid = bed.netd.pid().unwrap_or(0);
        let rss_up = status_kb(pid, "VmRSS").unwrap_or(0);
        fig.add(
            &format!("N={n}: start-up"),
            Side::Netd,
            bed.netd.startup.as_secs_f64(),
        );
        fig.add(
            &format!("N={n}: start-up"),
            sides[1],
            bed.kernel.startup.as_secs_f64(),
        );
        fig.add(
            &format!("N={n}: netd RSS"),
            Side::Netd,
            rss_up as f64 / 1024.0,
        );
        let mut goodputs = Vec::new();
        for rep in 0..ctx.reps {
            for side in sides {
                check_stop()?;
                bed.prepare(side)?;
                let _server = IperfServer::start(&bed.ns(side, "s1"), 5201)?;
                settle()?;
                let load = Load {
                    secs: ctx.scale_secs,
                    flows: 1,
                    udp_len: None,
                    cc: ctx.cc.clone(),
                };
                let r =
                    Client::start(&bed.ns(side, "s0"), &topo.addr("s1")?, 5201, &load)?.finish()?;
                eprintln!(
                    "  {NAME} N={n} rep {rep} {:<40} {:.2} Gbit/s",
                    side.label(),
                    r.goodput_bps / 1e9
                );
                fig.add(&format!("N={n}: 1 TCP flow"), side, r.goodput_bps / 1e9);
                goodputs.push(json!({"rep": rep, "side": side, "iperf": r}));
            }
        }
        let hwm = status_kb(pid, "VmHWM").unwrap_or(0);
        let t = Instant::now();
        bed.netd.down(Duration::from_secs(300));
        let netd_down = t.elapsed().as_secs_f64();
        let t = Instant::now();
        drop(bed);
        let kernel_down = t.elapsed().as_secs_f64();
        eprintln!(
            "  {NAME} N={n} netd RSS {} kB (peak {hwm} kB); tear-down netd {netd_down:.1} s, kernel {kernel_down:.1} s",
            rss_up
        );
        out.runs.push(json!({
            "scenario": NAME, "servers": n, "netd_rss_kb": rss_up, "netd_hwm_kb": hwm,
            "netd_teardown_s": netd_down, "kernel_teardown_s": kernel_down,
            "runs": goodputs,
        }));
        // Issue 14: a thousand servers up in under 2 s.
        let startup_target = (n >= 1000).then_some(Target::AtMost(2.0));
        out.rows
            .push(fig.row(NAME, &format!("N={n}: start-up"), "s", startup_target));
        out.rows
            .push(fig.row(NAME, &format!("N={n}: netd RSS"), "MiB", None));
        out.rows
            .push(fig.row(NAME, &format!("N={n}: 1 TCP flow"), "Gbit/s", None));
        fig.add(&format!("N={n}: tear-down"), Side::Netd, netd_down);
        fig.add(&format!("N={n}: tear-down"), sides[1], kernel_down);
        // Issue 11: a thousand servers gone in under 5 s.
        let target = (n >= 1000).then_some(Target::AtMost(5.0));
        out.rows
            .push(fig.row(NAME, &format!("N={n}: tear-down"), "s", target));
    }
    Ok(out)
}
