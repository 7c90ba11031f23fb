//! Peer switches for the throughput scenario: Open vSwitch's userspace (netdev) datapath and
//! vde_switch, each forwarding between the same two servers' TAPs, where installed.
//!
//! Both are set up as `shared/PEERS.md` describes. vde_switch: persistent TAPs made with
//! `ip tuntap` (no address in the root namespace), attached with `vde_switch --tap A --tap B`,
//! then moved into the servers' namespaces and addressed there. Open vSwitch: a private
//! `ovsdb-server` + `ovs-vswitchd` (own run directory, so a system OVS is untouched), a
//! `datapath_type=netdev` bridge with `type=tap` ports and `userspace-tso-enable=true`, the
//! TAPs it creates moved into the namespaces (it keeps forwarding through its fds). Neither
//! peer can shape by the contract (PEERS: no guarantee with borrowing on the netdev
//! datapath), so they appear only in the unshaped throughput rows.
//!
//! Dropping a [`PeerBed`] stops the peer's processes and deletes its namespaces, TAPs and
//! run directory, also after a failure half-way through `up`.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{self, run, run_args, sleep};
use crate::topo::{BenchTopo, mac_str};

const T: Duration = Duration::from_secs(20);
/// Where Debian's openvswitch-common keeps the database schema.
const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// A peer switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Peer {
    /// Open vSwitch, netdev (userspace) datapath, TAP ports with userspace TSO.
    Ovs,
    /// vde_switch (Debian's vde2).
    Vde,
}

impl Peer {
    /// Every peer, in column order.
    pub const ALL: [Peer; 2] = [Peer::Ovs, Peer::Vde];

    /// Return true when this peer's programs are installed.
    pub fn installed(self) -> bool {
        let tools: &[&str] = match self {
            Peer::Ovs => &["ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool"],
            Peer::Vde => &["vde_switch"],
        };
        tools.iter().all(|t| proc::has(t)) && (self != Peer::Ovs || Path::new(OVS_SCHEMA).exists())
    }

    /// Return the Debian package that provides this peer.
    pub fn package(self) -> &'static str {
        match self {
            Peer::Ovs => "openvswitch-switch",
            Peer::Vde => "vde2",
        }
    }

    /// Return a label for logs and the table.
    pub fn label(self) -> &'static str {
        match self {
            Peer::Ovs => "open vswitch netdev, tap ports, userspace tso",
            Peer::Vde => "vde_switch",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Peer::Ovs => "o",
            Peer::Vde => "v",
        }
    }
}

/// A peer switch forwarding between `topo`'s servers, each in its own namespace.
pub struct PeerBed {
    pub peer: Peer,
    /// `{run prefix}{tag}`: TAP names are `{base}{i}`, namespaces `{base}-{server}`.
    base: String,
    dir: PathBuf,
    taps: Vec<String>,
    /// Root-namespace links the peer made itself (OVS's bridge port and `ovs-netdev`).
    extra_links: Vec<String>,
    /// Pid files of the peer's daemons.
    pidfiles: Vec<PathBuf>,
}

impl PeerBed {
    /// Bring `peer` up between `topo`'s servers (namespaces `{run_prefix}{tag}-{server}`).
    pub fn up(peer: Peer, topo: &BenchTopo, run_prefix: &str, tmp: &Path) -> Result<PeerBed> {
        let base = format!("{run_prefix}{}", peer.tag());
        let dir = tmp.join(format!("{base}-run"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bed = PeerBed {
            peer,
            taps: (0..topo.servers.len())
                .map(|i| format!("{base}{i}"))
                .collect(),
            base,
            dir,
            extra_links: Vec::new(),
            pidfiles: Vec::new(),
        };
        // From here on a failure drops `bed`, which removes whatever was made.
        let mut batch = String::new();
        for s in &topo.servers {
            let _ = writeln!(batch, "netns add {}", bed.ns(&s.name));
        }
        run_args(&["ip", "-batch", "-"], Some(&batch), T)?;
        match peer {
            Peer::Vde => bed.start_vde()?,
            Peer::Ovs => bed.start_ovs()?,
        }
        for (tap, s) in bed.taps.iter().zip(&topo.servers) {
            wait_link(tap)?;
            let ns = bed.ns(&s.name);
            run_args(&["ip", "link", "set", tap, "netns", &ns], None, T)?;
            let batch = format!(
                "link set {tap} name eth0\nlink set eth0 address {} mtu {}\n\
                 addr add {} dev eth0\nlink set eth0 up\nlink set lo up\n",
                mac_str(&s.mac),
                s.mtu,
                s.ip
            );
            run_args(&["ip", "-n", &ns, "-batch", "-"], Some(&batch), T)?;
        }
        Ok(bed)
    }

    fn start_vde(&mut self) -> Result<()> {
        let mut batch = String::new();
        for tap in &self.taps {
            let _ = writeln!(batch, "tuntap add dev {tap} mode tap");
        }
        run_args(&["ip", "-batch", "-"], Some(&batch), T)?;
        let pidfile = self.dir.join("vde.pid");
        self.pidfiles.push(pidfile.clone());
        let mut cmd = Command::new("vde_switch");
        // One --tap per TAP (the comma form makes one TAP named "a,b").
        for tap in &self.taps {
            cmd.args(["--tap", tap]);
        }
        cmd.arg("--sock")
            .arg(self.dir.join("ctl"))
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--daemon");
        run(cmd, "vde_switch (apt-get install vde2)", None, T)?;
        wait_file(&pidfile)
    }

    fn start_ovs(&mut self) -> Result<()> {
        let dir = self.dir.clone();
        let db = dir.join("conf.db");
        let remote = format!("unix:{}", dir.join("db.sock").display());
        // Remember whether a system OVS already made `ovs-netdev`: only ours is deleted.
        let had_ovs_netdev = link_exists("ovs-netdev");
        let ovs = |args: &[&str], what: &str| -> Result<String> {
            let mut cmd = Command::new(args[0]);
            cmd.args(&args[1..])
                .env("OVS_RUNDIR", &dir)
                .env("OVS_LOGDIR", &dir)
                .env("OVS_DBDIR", &dir);
            run(cmd, what, None, T)
        };
        let db_s = db.display().to_string();
        ovs(
            &["ovsdb-tool", "create", &db_s, OVS_SCHEMA],
            "ovsdb-tool create",
        )?;
        let pid_db = dir.join("ovsdb-server.pid");
        self.pidfiles.push(pid_db.clone());
        ovs(
            &[
                "ovsdb-server",
                &db_s,
                &format!("--remote=p{remote}"),
                &format!("--pidfile={}", pid_db.display()),
                &format!("--log-file={}", dir.join("ovsdb-server.log").display()),
                "--detach",
            ],
            "ovsdb-server",
        )?;
        let vsctl = |args: &[&str]| -> Result<String> {
            let mut all = vec!["ovs-vsctl", "--timeout=20"];
            let db_arg = format!("--db={remote}");
            all.push(&db_arg);
            all.extend_from_slice(args);
            ovs(&all, "ovs-vsctl")
        };
        vsctl(&["--no-wait", "init"])?;
        vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:userspace-tso-enable=true",
        ])?;
        let pid_sw = dir.join("ovs-vswitchd.pid");
        self.pidfiles.push(pid_sw.clone());
        ovs(
            &[
                "ovs-vswitchd",
                &remote,
                &format!("--pidfile={}", pid_sw.display()),
                &format!("--log-file={}", dir.join("ovs-vswitchd.log").display()),
                "--detach",
            ],
            "ovs-vswitchd",
        )?;
        let br = format!("{}b", self.base);
        self.extra_links.push(br.clone());
        if !had_ovs_netdev {
            self.extra_links.push("ovs-netdev".into());
        }
        vsctl(&[
            "add-br",
            &br,
            "--",
            "set",
            "bridge",
            &br,
            "datapath_type=netdev",
        ])?;
        for tap in self.taps.clone() {
            vsctl(&[
                "add-port",
                &br,
                &tap,
                "--",
                "set",
                "Interface",
                &tap,
                "type=tap",
            ])?;
        }
        Ok(())
    }

    /// Return the namespace of `server`.
    pub fn ns(&self, server: &str) -> String {
        format!("{}-{server}", self.base)
    }

    /// Return the pid whose CPU time is the switch's (vde_switch, ovs-vswitchd).
    pub fn pid(&self) -> Option<u32> {
        let file = self.pidfiles.last()?;
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }
}

impl Drop for PeerBed {
    fn drop(&mut self) {
        for file in self.pidfiles.iter().rev() {
            let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let _ = run_args(&["kill", "-TERM", &pid.to_string()], None, T);
            // Wait (bounded) for it to go, then insist.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = run_args(&["kill", "-KILL", &pid.to_string()], None, T);
        }
        proc::delete_namespaces(&format!("{}-", self.base));
        for link in self.taps.iter().chain(&self.extra_links) {
            if link_exists(link) {
                let _ = run_args(&["ip", "link", "del", link], None, T);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Wait (bounded) until the root namespace has link `name` (OVS makes its TAPs asynchronously).
fn wait_link(name: &str) -> Result<()> {
    let deadline = Instant::now() + T;
    while !link_exists(name) {
        if Instant::now() > deadline {
            bail!("link {name} did not appear within {T:?}");
        }
        sleep(Duration::from_millis(20))?;
    }
    Ok(())
}

fn wait_file(path: &Path) -> Result<()> {
    let deadline = Instant::now() + T;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {T:?}", path.display());
        }
        sleep(Duration::from_millis(20))?;
    }
    Ok(())
}
