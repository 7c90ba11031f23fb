//! The kernel reference: the same topology on a Linux bridge with IFB + HTB, as a guard.
//!
//! Layout (all names under the run prefix, nothing in the root namespace):
//! ```text
//!  {p}k-{server} ns: eth0 (veth; the server's MAC, IP, MTU) ──┐
//!  {p}k-sw ns:  {p}p{i} (veth peer) ─ bridge {p}b{tenant}     │ one per server
//!               ingress qdisc on every port: u32 match-all → mirred egress redirect {p}ifb
//!               {p}ifb: HTB  1:1 rate=ceil=capacity
//!                            1:(10+k) rate=guaranteed ceil=ceiling   (one per tenant)
//!                            u32 filters on the source MAC → the sender's tenant class
//! ```
//! One bridge per tenant keeps tenants apart (they may reuse addresses, as in netd), and
//! all bridges' ports share the one IFB, so HTB sees the whole host as netd's shaper does.
//! Shaping is charged to the SENDING tenant, as in netd: every frame entering the bridge is
//! redirected through the IFB and classified by its source MAC (negative u32 offsets reach
//! the Ethernet header in front of the network header).
//!
//! `br_netfilter` hooks are switched off in the switch namespace (the kernel at its best).
//! The IFB gets `txqueuelen 1000` (its default, 32, makes HTB's leaf FIFOs too short for TCP
//! at 1 Gbit/s); both HTB flavours share it.
//!
//! Two HTB flavours, swapped between runs without rebuilding the bed ([`KernelBed::apply`]):
//! - [`Htb::Default`]: `rate`/`ceil` only: tc's default burst (~1.5 kB on this 1 GHz timer)
//!   and `r2q 10` quanta (capped at 200000 B, so loans split by quantum, not weight).
//! - [`Htb::Tuned`]: `burst = cburst = max(100 kB, 1 ms of the rate)` (netd's own bucket
//!   size), `quantum = weight × 60000` so loans split by weight.
//!
//! Dropping the bed deletes every namespace it created.

use std::fmt::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netd::topology::Rate;

use crate::proc::{self, ns_cmd, run, run_args};
use crate::topo::BenchTopo;

/// Which HTB parameters the IFB carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Htb {
    Default,
    Tuned,
    /// No shaping at all: the ports are not redirected to the IFB, so frames cross the
    /// bridge alone (the kernel's fastest switch; the throughput reference of issue 5).
    Off,
}

/// The servers' interface offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Offloads {
    /// veth defaults: checksum offload, TSO/GSO: 64 KB frames cross the bridge.
    Veth,
    /// As netd's TAP (no vnet header): `tx off tso off`, software GSO: 1514-byte frames.
    AsTap,
}

const T: Duration = Duration::from_secs(120);

/// A kernel bridge + HTB topology.
pub struct KernelBed {
    run_prefix: String,
    ns_prefix: String,
    topo: BenchTopo,
    sw: String,
    current: Option<(Htb, Offloads)>,
    /// The ports' ingress is redirected to the IFB (true unless [`Htb::Off`] is in force).
    redirected: bool,
    /// Time to build namespaces, veths, bridge, IFB and ingress redirects.
    pub startup: Duration,
}

/// Return `1:{minor}` for tenant `k`'s class (minor in hex, as tc reads it).
fn class_of(k: usize) -> String {
    format!("1:{:x}", 0x10 + k)
}

/// Return tuned HTB's ` burst B cburst B` for a class of `bits`/s: max(100 kB, 1 ms of the
/// rate), netd's own bucket size rule with tc's floor.
fn tuned_burst(bits: u64) -> String {
    let b = (bits / 8 / 1000).max(100_000);
    format!(" burst {b} cburst {b}")
}

fn rate(bits: u64) -> String {
    Rate::from_bits_per_sec(bits).to_string()
}

impl KernelBed {
    /// Build `topo` with namespaces `{ns_prefix}-{server}` and `{ns_prefix}-sw`.
    pub fn up(topo: &BenchTopo, run_prefix: &str, ns_prefix: &str) -> Result<KernelBed> {
        let start = Instant::now();
        let mut bed = KernelBed {
            run_prefix: run_prefix.to_string(),
            ns_prefix: ns_prefix.to_string(),
            topo: topo.clone(),
            sw: format!("{ns_prefix}-sw"),
            current: None,
            redirected: false,
            startup: Duration::ZERO,
        };
        // From here on, a failure drops `bed`, which deletes whatever was created.
        let mut batch = format!("netns add {}\n", bed.sw);
        for s in &topo.servers {
            let _ = writeln!(batch, "netns add {}", bed.ns(&s.name));
        }
        run_args(&["ip", "-batch", "-"], Some(&batch), T)?;

        let ifb = bed.ifb();
        let mut batch = format!("link add {ifb} txqueuelen 1000 type ifb\nlink set {ifb} up\n");
        for k in 0..topo.tenants.len() {
            let br = bed.bridge(k);
            let _ = writeln!(
                batch,
                "link add {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0\n\
                 link set {br} up"
            );
        }
        for (i, s) in topo.servers.iter().enumerate() {
            let br = bed.bridge(s.tenant);
            let port = bed.port(i);
            let _ = writeln!(
                batch,
                "link add {port} type veth peer name eth0 address {} mtu {} netns {}",
                crate::topo::mac_str(&s.mac),
                s.mtu,
                bed.ns(&s.name)
            );
            let _ = writeln!(batch, "link set {port} mtu {} master {br} up", s.mtu);
        }
        run_args(&["ip", "-n", &bed.sw, "-batch", "-"], Some(&batch), T)?;
        run(
            ns_cmd(
                &bed.sw,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0",
                    "net.bridge.bridge-nf-call-arptables=0",
                ],
            ),
            "sysctl bridge-nf-call-*=0",
            None,
            T,
        )?;
        for s in &topo.servers {
            let batch = format!(
                "addr add {} dev eth0\nlink set eth0 up\nlink set lo up\n",
                s.ip
            );
            run_args(
                &["ip", "-n", &bed.ns(&s.name), "-batch", "-"],
                Some(&batch),
                T,
            )?;
        }
        bed.set_redirect(true)?;
        bed.startup = start.elapsed();
        Ok(bed)
    }

    /// Redirect every port's ingress to the IFB (where HTB shapes), or remove the redirects.
    fn set_redirect(&mut self, on: bool) -> Result<()> {
        if self.redirected == on {
            return Ok(());
        }
        let ifb = self.ifb();
        let mut batch = String::new();
        for i in 0..self.topo.servers.len() {
            let port = self.port(i);
            if on {
                let _ = writeln!(batch, "qdisc add dev {port} handle ffff: ingress");
                let _ = writeln!(
                    batch,
                    "filter add dev {port} parent ffff: protocol all prio 1 u32 match u32 0 0 \
                     action mirred egress redirect dev {ifb}"
                );
            } else {
                let _ = writeln!(batch, "qdisc del dev {port} handle ffff: ingress");
            }
        }
        run_args(&["tc", "-n", &self.sw, "-batch", "-"], Some(&batch), T).with_context(|| {
            format!(
                "setting the IFB redirects {}",
                if on { "on" } else { "off" }
            )
        })?;
        self.redirected = on;
        Ok(())
    }

    /// Return the namespace of bench server `server`.
    pub fn ns(&self, server: &str) -> String {
        format!("{}-{server}", self.ns_prefix)
    }

    fn bridge(&self, tenant: usize) -> String {
        format!("{}b{tenant}", self.run_prefix)
    }

    /// Return the IFB's name (in the switch namespace).
    pub fn ifb(&self) -> String {
        format!("{}ifb", self.run_prefix)
    }

    fn port(&self, i: usize) -> String {
        format!("{}p{i}", self.run_prefix)
    }

    /// Put `htb` on the IFB and set the servers' offloads, unless already in force.
    pub fn apply(&mut self, htb: Htb, offloads: Offloads) -> Result<()> {
        let (old_htb, old_off) = match self.current {
            Some((h, o)) => (Some(h), Some(o)),
            None => (None, None),
        };
        if old_off != Some(offloads) && (old_off.is_some() || offloads != Offloads::Veth) {
            self.set_offloads(offloads)?;
        }
        if old_htb != Some(htb) {
            self.set_htb(htb)?;
        }
        self.current = Some((htb, offloads));
        Ok(())
    }

    fn set_offloads(&self, offloads: Offloads) -> Result<()> {
        let on = if offloads == Offloads::Veth {
            "on"
        } else {
            "off"
        };
        for s in &self.topo.servers {
            // `tx off` takes TSO with it; turning it back on restores the veth defaults.
            run(
                ns_cmd(
                    &self.ns(&s.name),
                    &["ethtool", "-K", "eth0", "tx", on, "tso", on],
                ),
                "ethtool -K (apt-get install ethtool)",
                None,
                T,
            )?;
        }
        Ok(())
    }

    /// Return the tc line that `verb`s (adds, changes) tenant `k`'s class with `guaranteed`.
    fn class_line(&self, verb: &str, htb: Htb, k: usize, guaranteed: u64) -> String {
        let t = &self.topo;
        let tenant = &t.tenants[k];
        let extra = match htb {
            Htb::Default | Htb::Off => String::new(),
            Htb::Tuned => format!(
                "{} quantum {}",
                tuned_burst(guaranteed.max(tenant.ceiling)),
                60_000 * u64::from(tenant.weight.max(1))
            ),
        };
        format!(
            "class {verb} dev {} parent 1:1 classid {} htb rate {} ceil {}{extra}",
            self.ifb(),
            class_of(k),
            rate(guaranteed),
            rate(tenant.ceiling.min(t.capacity)),
        )
    }

    /// Change the guarantees (HTB `rate`) of tenants' classes live, in one `tc -batch`, as
    /// an operator would with `tc class change`.
    pub fn change_guarantees(&self, changes: &[(usize, u64)]) -> Result<()> {
        let Some((htb @ (Htb::Default | Htb::Tuned), _)) = self.current else {
            bail!("no HTB in force to change (the bridge runs unshaped)");
        };
        let mut batch = String::new();
        for &(k, bits) in changes {
            let _ = writeln!(batch, "{}", self.class_line("change", htb, k, bits));
        }
        run_args(&["tc", "-n", &self.sw, "-batch", "-"], Some(&batch), T)
            .context("tc class change")?;
        Ok(())
    }

    fn set_htb(&mut self, htb: Htb) -> Result<()> {
        self.set_redirect(htb != Htb::Off)?;
        if htb == Htb::Off {
            return Ok(());
        }
        let ifb = self.ifb();
        let t = &self.topo;
        // Delete the old tree (its classes and filters go with it); none exists the first time.
        let _ = run_args(
            &["tc", "-n", &self.sw, "qdisc", "del", "dev", &ifb, "root"],
            None,
            T,
        );
        let mut batch = String::new();
        let _ = writeln!(batch, "qdisc add dev {ifb} root handle 1: htb");
        let root_extra = if htb == Htb::Tuned {
            tuned_burst(t.capacity)
        } else {
            String::new()
        };
        let _ = writeln!(
            batch,
            "class add dev {ifb} parent 1: classid 1:1 htb rate {c} ceil {c}{root_extra}",
            c = rate(t.capacity)
        );
        for k in 0..t.tenants.len() {
            let line = self.class_line("add", htb, k, t.tenants[k].guaranteed);
            let _ = writeln!(batch, "{line}");
        }
        for s in &t.servers {
            let m = s.mac;
            // Source MAC: bytes -8..-3 before the network header.
            let _ = writeln!(
                batch,
                "filter add dev {ifb} parent 1: protocol all prio 1 u32 \
                 match u32 0x{:02x}{:02x}{:02x}{:02x} 0xffffffff at -8 \
                 match u16 0x{:02x}{:02x} 0xffff at -4 flowid {}",
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                class_of(s.tenant)
            );
        }
        // tc warns about big quanta on stderr with the default r2q; that is the point of the
        // default flavour, so only the exit status matters.
        run_args(&["tc", "-n", &self.sw, "-batch", "-"], Some(&batch), T)
            .with_context(|| format!("applying HTB {htb:?}"))?;
        Ok(())
    }

    /// Return `tc -s class show` of the IFB (kept in the JSON to verify the classification).
    pub fn class_stats(&self) -> String {
        run_args(
            &[
                "tc",
                "-n",
                &self.sw,
                "-s",
                "class",
                "show",
                "dev",
                &self.ifb(),
            ],
            None,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// Return the bytes each tenant's HTB class sent so far (index = tenant).
    pub fn class_bytes(&self) -> Vec<u64> {
        let text = self.class_stats();
        let mut bytes = vec![0; self.topo.tenants.len()];
        let mut current: Option<usize> = None;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"class") {
                current = (0..bytes.len()).find(|&k| words.get(2) == Some(&class_of(k).as_str()));
            } else if words.first() == Some(&"Sent") {
                if let (Some(k), Some(b)) = (current, words.get(1)) {
                    bytes[k] = b.parse().unwrap_or(0);
                }
                current = None;
            }
        }
        bytes
    }
}

impl Drop for KernelBed {
    fn drop(&mut self) {
        proc::delete_namespaces(&format!("{}-", self.ns_prefix));
    }
}
