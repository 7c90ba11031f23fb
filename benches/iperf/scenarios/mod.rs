//! The scenarios of issue 4, each measured on netd and on the kernel's bridge + HTB.
//!
//! Every scenario brings up one [`Bed`](crate::bed::Bed) (or a few, one after the other),
//! alternates the sides run by run (rep 1: netd, kernel…; rep 2: netd, kernel…), and returns
//! an [`Outcome`]: table rows, raw per-run records and plot files.
//!
//! | name | what | module |
//! |---|---|---|
//! | `throughput` | unshaped 1/4 TCP flows, UDP 64 B; CPU per GB | [`throughput`] |
//! | `shaped` | one tenant shaped to 5 Gbit/s, 1/4 TCP flows: accuracy, retransmits | [`throughput`] |
//! | `guarantee` | three tenants saturating: L2 vs entitlement | [`shaping`] |
//! | `loans` | idle tenant lent by weight (5:3); ceiling binding; lone tenant | [`shaping`] |
//! | `aggressor` | 16 flows vs 1 flow | [`shaping`] |
//! | `latency` | ping p50/p99 idle, beside a saturating tenant, inside it | [`shaping`] |
//! | `realloc` | ms until the split holds within 5% after a tenant leaves/returns | [`shaping`] |
//! | `ratechange` | ms until the split holds within 5% after a live guarantee change | [`shaping`] |
//! | `scale` | 10/100/1000 servers: start-up, netd RSS, 2-server throughput | [`scale`] |
//! | `uplink` | routed uplink: 1 flow each way via NAT and public; 3-tenant split each way | [`uplink`] |
//! | `restart` | `kill -9` and restart: forwarding gap, TCP kept (10/100/1000 servers) | [`restart`] |
//! | `console` | what 10 open console pages cost netd's CPU | [`console`] |
//! | `cluster` | 100 hosts × 10 servers on etcd: push → applied, memory, etcd size, VXLAN flow | [`cluster`] |

pub mod cluster;
pub mod console;
pub mod restart;
pub mod scale;
pub mod shaping;
pub mod throughput;
pub mod uplink;

use serde::Serialize;

use crate::report::Row;

/// Every scenario, in run order.
pub const ALL: [&str; 13] = [
    "throughput",
    "shaped",
    "guarantee",
    "loans",
    "aggressor",
    "latency",
    "realloc",
    "ratechange",
    "scale",
    "uplink",
    "restart",
    "console",
    "cluster",
];

/// What a scenario produced.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub rows: Vec<Row>,
    /// Raw per-run records.
    pub runs: Vec<serde_json::Value>,
    /// Plot files, relative to the output directory.
    pub plots: Vec<String>,
    /// Facts learnt on the way (offloads, tc class counters…).
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// Run scenario `name`.
pub fn run(ctx: &crate::Ctx, name: &str) -> anyhow::Result<Outcome> {
    match name {
        "throughput" => throughput::run(ctx),
        "shaped" => throughput::shaped(ctx),
        "guarantee" => shaping::guarantee(ctx),
        "loans" => shaping::loans(ctx),
        "aggressor" => shaping::aggressor(ctx),
        "latency" => shaping::latency(ctx),
        "realloc" => shaping::realloc(ctx),
        "ratechange" => shaping::ratechange(ctx),
        "scale" => scale::run(ctx),
        "uplink" => uplink::run(ctx),
        "restart" => restart::run(ctx),
        "console" => console::run(ctx),
        "cluster" => cluster::run(ctx),
        other => anyhow::bail!("unknown scenario {other:?}; known: {}", ALL.join(", ")),
    }
}
