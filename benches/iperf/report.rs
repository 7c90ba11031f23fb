//! Results: figures collected per side, the markdown table, and the JSON file.
//!
//! Every measured value goes into a [`Figures`] collector under (metric, side); a scenario
//! then turns each metric into a [`Row`]: median and min–max per side, the netd/kernel ratio
//! (against tuned HTB when it ran, else default HTB), and the target checked on
//! netd's median. Raw per-run records (iperf3 summaries, counters, tc class stats, RTTs)
//! travel beside the rows into `results.json`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::kernel_side::{Htb, Offloads};
use crate::peers::Peer;

/// Which switch a figure was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Side {
    Netd,
    /// The same netd with its data-path thread moved to normal (CFS) priority, as
    /// `--datapath-priority normal` runs it: what the real-time default buys, in the same run.
    NetdNormalPriority,
    /// The same netd with `--datapath-threads N` (`--netd-threads`): whether more loops
    /// than one cost anything on this machine, in the same run.
    NetdThreads(u8),
    Kernel(Htb, Offloads),
    /// A peer switch (throughput only, where installed).
    Peer(Peer),
}

impl Side {
    /// Return the column this side's figures go to.
    pub fn column(self, tap_offloads: Offloads) -> Column {
        match self {
            Side::Netd => Column::Netd,
            Side::NetdNormalPriority => Column::NetdNormalPriority,
            Side::NetdThreads(_) => Column::NetdThreads,
            Side::Kernel(Htb::Default, _) => Column::KernelDefault,
            Side::Kernel(Htb::Off, _) => Column::KernelBridge,
            Side::Kernel(Htb::Tuned, o) if o == tap_offloads => Column::KernelTuned,
            // Only the throughput scenario runs tuned HTB with both offload settings; the
            // veth-default run is the kernel at its best and gets the extra column.
            Side::Kernel(Htb::Tuned, _) => Column::KernelTunedVeth,
            Side::Peer(Peer::Ovs) => Column::Ovs,
            Side::Peer(Peer::Vde) => Column::Vde,
        }
    }

    /// Return a short label for logs and plots.
    pub fn label(self) -> String {
        match self {
            Side::Netd => "netd".into(),
            Side::NetdNormalPriority => "netd, normal priority".into(),
            Side::NetdThreads(n) => format!("netd, {n} data-path threads"),
            Side::Peer(p) => p.label().into(),
            Side::Kernel(Htb::Off, o) => {
                format!("kernel bridge, no HTB, {o:?} offloads").to_lowercase()
            }
            Side::Kernel(h, o) => format!("kernel HTB {h:?}, {o:?} offloads").to_lowercase(),
        }
    }
}

/// A column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Column {
    Netd,
    NetdNormalPriority,
    NetdThreads,
    KernelDefault,
    KernelTuned,
    KernelTunedVeth,
    KernelBridge,
    Ovs,
    Vde,
}

const COLUMNS: [Column; 9] = [
    Column::Netd,
    Column::NetdNormalPriority,
    Column::NetdThreads,
    Column::KernelDefault,
    Column::KernelTuned,
    Column::KernelTunedVeth,
    Column::KernelBridge,
    Column::Ovs,
    Column::Vde,
];

/// Median, min and max of a figure over repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

impl Stat {
    fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            values: values.to_vec(),
        })
    }
}

/// A target from the issue, checked on netd's median.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// At most `factor` × the kernel's median (tuned HTB first) plus `plus`.
    KernelTimes {
        factor: f64,
        plus: f64,
    },
}

impl Target {
    fn text(self, unit: &str) -> String {
        match self {
            Target::AtMost(x) => format!("≤ {} {unit}", fmt(x)),
            Target::AtLeast(x) => format!("≥ {} {unit}", fmt(x)),
            Target::KernelTimes { factor, plus } => {
                format!("≤ {} × kernel + {} {unit}", fmt(factor), fmt(plus))
            }
        }
    }

    fn check(self, v: f64, kernel: Option<f64>) -> bool {
        match self {
            Target::AtMost(x) => v <= x,
            Target::AtLeast(x) => v >= x,
            Target::KernelTimes { factor, plus } => kernel.is_some_and(|k| v <= factor * k + plus),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub columns: BTreeMap<String, Stat>,
    /// netd median ÷ kernel median (tuned HTB, else default HTB); none for signed errors.
    pub ratio: Option<f64>,
    /// netd median ÷ the unshaped kernel bridge's median, where that ran (throughput).
    pub ratio_bridge: Option<f64>,
    pub target: Option<String>,
    pub pass: Option<bool>,
}

/// Values collected by (metric, column) during a scenario.
#[derive(Debug, Default)]
pub struct Figures {
    values: BTreeMap<(String, Column), Vec<f64>>,
    /// The tap-matched offload setting of this run (decides the tuned column).
    pub tap_offloads: Option<Offloads>,
}

impl Figures {
    /// Start collecting; `tap_offloads` is the offload setting of the like-for-like column.
    pub fn new(tap_offloads: Offloads) -> Figures {
        Figures {
            values: BTreeMap::new(),
            tap_offloads: Some(tap_offloads),
        }
    }

    /// Record `value` of `metric` measured on `side`.
    pub fn add(&mut self, metric: &str, side: Side, value: f64) {
        let col = side.column(self.tap_offloads.unwrap_or(Offloads::AsTap));
        self.values
            .entry((metric.to_string(), col))
            .or_default()
            .push(value);
    }

    /// Turn `metric` into a row of scenario `scenario`.
    pub fn row(&self, scenario: &str, metric: &str, unit: &str, target: Option<Target>) -> Row {
        let mut columns = BTreeMap::new();
        for col in COLUMNS {
            if let Some(stat) = self
                .values
                .get(&(metric.to_string(), col))
                .and_then(|v| Stat::of(v))
            {
                columns.insert(format!("{col:?}"), stat);
            }
        }
        let netd = columns.get("Netd").map(|s| s.median);
        let kernel = columns
            .get("KernelTuned")
            .or_else(|| columns.get("KernelDefault"))
            .or_else(|| columns.get("KernelTunedVeth"))
            .map(|s| s.median);
        // A ratio of signed errors means nothing; compare their magnitudes in the table.
        let ratio = match (netd, kernel) {
            _ if metric.contains("error") && !metric.contains('|') => None,
            (Some(n), Some(k)) if k != 0.0 => Some(n / k),
            _ => None,
        };
        let ratio_bridge = match (netd, columns.get("KernelBridge")) {
            (Some(n), Some(b)) if b.median != 0.0 => Some(n / b.median),
            _ => None,
        };
        Row {
            scenario: scenario.to_string(),
            metric: metric.to_string(),
            unit: unit.to_string(),
            columns,
            ratio,
            ratio_bridge,
            target: target.map(|t| t.text(unit)),
            pass: target.and_then(|t| netd.map(|n| t.check(n, kernel))),
        }
    }
}

/// Format a figure with sensible precision.
pub fn fmt(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "–".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(s: Option<&Stat>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.values.len() == 1 => fmt(s.median),
        Some(s) => format!("{} [{}–{}]", fmt(s.median), fmt(s.min), fmt(s.max)),
    }
}

/// Render the rows as a markdown table (with the machine facts as a header line); a switch
/// column that no row filled (a peer not installed, a flavour not run) is left out.
pub fn markdown(header: &str, rows: &[Row]) -> String {
    let switches: Vec<(Column, &str)> = [
        (Column::Netd, "netd"),
        (Column::NetdNormalPriority, "netd, normal priority"),
        (Column::NetdThreads, "netd, data-path threads"),
        (Column::KernelDefault, "kernel default HTB"),
        (Column::KernelTuned, "kernel tuned HTB"),
        (Column::KernelTunedVeth, "kernel tuned, veth offloads"),
        (Column::KernelBridge, "kernel bridge, no HTB"),
        (Column::Ovs, "OVS netdev"),
        (Column::Vde, "vde_switch"),
    ]
    .into_iter()
    .filter(|(col, _)| {
        rows.iter()
            .any(|r| r.columns.contains_key(&format!("{col:?}")))
    })
    .collect();
    let with_bridge = rows.iter().any(|r| r.ratio_bridge.is_some());
    let mut head = vec!["scenario", "metric", "unit"];
    head.extend(switches.iter().map(|(_, name)| *name));
    head.push("netd/kernel");
    if with_bridge {
        head.push("netd/bridge");
    }
    head.extend(["target", ""]);
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    let ratio = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
    for r in rows {
        let mut cells = vec![r.scenario.clone(), r.metric.clone(), r.unit.clone()];
        cells.extend(
            switches
                .iter()
                .map(|(col, _)| cell(r.columns.get(&format!("{col:?}")))),
        );
        cells.push(ratio(r.ratio));
        if with_bridge {
            cells.push(ratio(r.ratio_bridge));
        }
        cells.push(r.target.clone().unwrap_or_else(|| "–".into()));
        cells.push(
            match r.pass {
                Some(true) => "pass",
                Some(false) => "**miss**",
                None => "",
            }
            .into(),
        );
        // A `|` inside a cell (as in "|error|") would end the cell: escape it.
        let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | ").trim_end());
    }
    out
}
