//! The `netd` command line: thin wrapper over the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing::error;

use netd::control::report::{Rates, Status};
use netd::control::{Applied, Change, Request, client, socket};
use netd::daemon::{self, UpOptions};
use netd::datapath::Priority;
use netd::topology::file::{FileServer, FileTenant};
use netd::topology::{self, Topology};

/// Multi-tenant virtual networking: one TAP per virtual server, an isolated L2 switch, a shaper.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    /// The control socket: where `up` listens, and where the other commands find the daemon
    /// (default: /run/netd/<topology name>.sock, or the only live one there).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Talk to the daemon running this topology file (give it before the command).
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a topology file and print a summary.
    Check {
        /// Topology file (TOML).
        file: PathBuf,
    },
    /// Remove what a netd that was killed left of a topology (its servers' namespaces, its
    /// control socket and token files); refused while a netd serves it.
    Down {
        /// Topology file (TOML).
        file: PathBuf,
    },
    /// Validate a cluster topology file and store it in etcd in one transaction: every
    /// host's netd (`up --etcd URL --host NAME`) applies its part at once.
    Push {
        /// Cluster topology file (TOML, with [hosts]).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Write only if the stored topology is still at this etcd revision (0: only if
        /// none is stored), so two operators cannot overwrite each other unseen.
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
    },
    /// Create the topology's namespaces and TAPs and run the switch until SIGINT/SIGTERM.
    /// With --etcd and --host, run that host's part of the cluster stored in etcd and
    /// follow its changes.
    Up {
        /// Topology file (TOML); none with --etcd.
        #[arg(required_unless_present = "etcd", conflicts_with = "etcd")]
        file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        /// This host's name in the cluster's [hosts] (with --etcd).
        #[arg(long, value_name = "NAME", requires = "etcd")]
        host: Option<String>,
        /// How long this host's keys outlive its last keep-alive (with --etcd); the other
        /// hosts drop its servers when they go.
        #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "etcd")]
        lease_ttl: u64,
        /// Log all counters every this many seconds.
        #[arg(long, value_name = "SECONDS")]
        stats_interval: Option<f64>,
        /// Plain TAPs without checksum/segmentation offload (MTU-sized frames; for comparison).
        #[arg(long)]
        no_offload: bool,
        /// Serve the HTTP API (metrics, JSON, changes) on this address, e.g. 127.0.0.1:9180
        /// or localhost:9180.
        #[arg(long, value_name = "ADDR:PORT", value_parser = parse_http_addr)]
        http: Option<SocketAddr>,
        /// Allow --http on a non-loopback address.
        #[arg(long)]
        http_allow_public: bool,
        /// Read the HTTP API's admin token from this file (mode 0600); default: generate one
        /// into /run/netd/<topology>.http-token.
        #[arg(long, value_name = "FILE", requires = "http")]
        http_token_file: Option<PathBuf>,
        /// Read a token that grants GET /metrics only (for a Prometheus scraper) from this
        /// file (mode 0600).
        #[arg(long, value_name = "FILE", requires = "http")]
        metrics_token_file: Option<PathBuf>,
        /// Pin the data-path thread to this CPU (as switches pin their forwarding threads).
        #[arg(long, value_name = "CPU")]
        datapath_cpu: Option<usize>,
        /// Schedule the data-path thread: `realtime[:N]` (SCHED_FIFO, ahead of the servers'
        /// processes, as the kernel forwards in softirq) or `normal`. Default: realtime:1
        /// where the kernel caps real-time CPU time and netd may use it, else normal.
        #[arg(long, value_name = "normal|realtime[:N]")]
        datapath_priority: Option<Priority>,
        /// Data-path threads: each owns a share of the servers' TAPs and its own shaper, the
        /// host's rates split among them every millisecond. Servers' TAPs only (no gateways,
        /// uplink or hosts); with --datapath-cpu C, thread k runs on CPU C+k.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u16).range(1..=netd::datapath::threads::MAX_THREADS as i64))]
        datapath_threads: u16,
        /// Upgrade: take the servers' TAPs over from the netd running this topology (over its
        /// control socket), which then exits without tearing down; forwarding pauses for
        /// milliseconds and no connection is lost.
        #[arg(long)]
        take_over: bool,
    },
    /// Show tenants, servers, configured and current rates, queues and entitlements.
    /// With --cluster and --etcd: every host of the cluster and every tenant across hosts.
    Status {
        /// Show the whole cluster, from etcd (needs --etcd).
        #[arg(long, requires = "etcd")]
        cluster: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print the running state as a topology file (that `netd check` accepts).
        #[arg(long, conflicts_with_all = ["watch", "json"])]
        toml: bool,
    },
    /// Show every counter: per tenant and port, drops by reason, the shaper's.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change tenants' rates or weights live: one tenant with flags (`set-rate acme
    /// --guaranteed 300mbit`), or several as one change validated as a whole, so guarantee
    /// can move between tenants at full capacity (`set-rate acme.guaranteed=200mbit
    /// globex.guaranteed=300mbit`; keys guaranteed, ceiling, weight, and uplink.KEY).
    SetRate {
        /// The tenant's name, or TENANT.KEY=VALUE assignments.
        #[arg(required = true, value_name = "TENANT | TENANT.KEY=VALUE")]
        tenant: Vec<String>,
        /// New guaranteed rate, e.g. 200mbit.
        #[arg(long, value_name = "RATE")]
        guaranteed: Option<String>,
        /// New ceiling (maximum including borrowed bandwidth), e.g. 1gbit.
        #[arg(long, value_name = "RATE")]
        ceiling: Option<String>,
        /// New weight: its share of loaned bandwidth (at least 1).
        #[arg(long)]
        weight: Option<i64>,
        /// Change the tenant's rates on the uplink (each direction) rather than its own.
        #[arg(long)]
        uplink: bool,
    },
    /// Upgrade in place: the daemon starts the netd binary now installed at its path with
    /// `up … --take-over`, which takes the servers' TAPs over (forwarding pauses for
    /// milliseconds, no connection is lost) while the old daemon exits. Waits until the new
    /// one serves the control socket.
    Upgrade,
    /// Re-read the topology file and apply only the difference (as SIGHUP does). Servers
    /// added live that the file no longer lists are removed only with --prune.
    Reload {
        /// Also remove servers that were added live and are no longer in the file.
        #[arg(long)]
        prune: bool,
    },
    /// Add a tenant.
    AddTenant {
        /// The tenant's name (an interface-name-like word).
        name: String,
        /// Guaranteed rate, e.g. 200mbit.
        #[arg(long, value_name = "RATE")]
        guaranteed: String,
        /// Ceiling (maximum including borrowed bandwidth); default: the host capacity.
        #[arg(long, value_name = "RATE")]
        ceiling: Option<String>,
        /// Share of loaned bandwidth; default 1.
        #[arg(long)]
        weight: Option<i64>,
        /// Storm control: broadcast/multicast frames/s per port.
        #[arg(long, value_name = "PPS")]
        broadcast_pps: Option<i64>,
        /// The tenant's subnet and gateway address, e.g. 10.1.0.1/24.
        #[arg(long, value_name = "ADDR/LEN")]
        gateway: Option<String>,
        /// The tenant's IPv6 subnet and gateway address, e.g. fd00:1::1/64 (needs --gateway).
        #[arg(long, value_name = "ADDR/LEN")]
        gateway6: Option<String>,
        /// Its private subnet leaves with source NAT.
        #[arg(long)]
        nat: bool,
        /// A DNS server handed out by DHCP (repeat for several).
        #[arg(long, value_name = "ADDR")]
        dns: Vec<String>,
    },
    /// Remove a tenant (refused while it has servers).
    RemoveTenant {
        /// The tenant's name.
        name: String,
    },
    /// Add a server: its namespace and TAP are created as at start-up.
    AddServer {
        /// The server's name (also its namespace's, unless --netns says otherwise).
        name: String,
        /// A TOML fragment with the keys of a `[servers.NAME]` table (flags override it).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// The tenant it belongs to.
        #[arg(long)]
        tenant: Option<String>,
        /// IPv4 address with prefix, e.g. 10.1.0.12/24.
        #[arg(long, value_name = "ADDR/LEN")]
        ip: Option<String>,
        /// MAC of its eth0, e.g. 02:00:00:00:01:0c; default: derived from the name.
        #[arg(long)]
        mac: Option<String>,
        /// Network namespace name; default: the server's name.
        #[arg(long)]
        netns: Option<String>,
        /// Global IPv6 address with prefix, e.g. fd00::12/64 (link-local always works).
        #[arg(long, value_name = "ADDR/LEN")]
        ipv6: Option<String>,
        /// MTU of its eth0, 1280 to 9000; default 1500.
        #[arg(long)]
        mtu: Option<i64>,
        /// Its guaranteed share inside the tenant's, e.g. 100mbit.
        #[arg(long, value_name = "RATE")]
        guaranteed: Option<String>,
        /// Its ceiling inside the tenant's, e.g. 500mbit.
        #[arg(long, value_name = "RATE")]
        ceiling: Option<String>,
        /// Leave eth0 unconfigured: the server gets its address from the gateway by DHCP.
        #[arg(long)]
        dhcp: bool,
    },
    /// Remove a server and tear down its namespace and TAP.
    RemoveServer {
        /// The server's name.
        name: String,
    },
}

/// Where a cluster's state is kept.
#[derive(Debug, Clone, clap::Args)]
struct StoreArgs {
    /// etcd endpoint(s), comma-separated, e.g. http://127.0.0.1:2379.
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,
    /// The key prefix in etcd.
    #[arg(long, value_name = "PREFIX", default_value = netd::store::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// The etcd user, where etcd has authentication on (with --etcd-password-file).
    #[arg(long, value_name = "USER", requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// A file (mode 0600) holding the etcd user's password.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The store's configuration, if `--etcd` was given; an error if the password file
    /// cannot be used.
    fn config(&self) -> anyhow::Result<Option<netd::store::StoreConfig>> {
        let Some(etcd) = self.etcd.as_deref() else {
            return Ok(None);
        };
        let credentials = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), Some(path)) => Some(netd::store::Credentials::read(user, path)?),
            _ => None,
        };
        Ok(Some(netd::store::StoreConfig {
            endpoints: etcd.split(',').map(str::to_string).collect(),
            prefix: self.etcd_prefix.clone(),
            lease_ttl: netd::store::DEFAULT_LEASE_TTL,
            credentials,
        }))
    }
}

/// Parse `--http`: an address and port, or a host name (`localhost:9180`) resolved to its
/// first address.
fn parse_http_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|err| format!("{text:?} is not ADDR:PORT or HOST:PORT ({err})"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up { .. }) {
        netd::kernel::sys::exit_quietly_on_broken_pipe();
    }
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { file } => match topology::load_any(&file) {
            Ok(topology::AnyTopology::Cluster(cluster)) => {
                print_cluster_summary(&cluster);
                ExitCode::SUCCESS
            }
            Ok(topology::AnyTopology::Single(topology)) => {
                // What `up` needs of the host that the file cannot say: the uplink exists.
                if let Some(Err(err)) = topology.uplink.as_ref().map(netd::kernel::uplink::check) {
                    eprintln!("error: {}: {err}", file.display());
                    return ExitCode::FAILURE;
                }
                print_summary(&topology);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Up {
            file,
            store,
            host,
            lease_ttl,
            stats_interval,
            no_offload,
            http,
            http_allow_public,
            http_token_file,
            metrics_token_file,
            datapath_cpu,
            datapath_priority,
            datapath_threads,
            take_over,
        } => {
            let config = match store.config() {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    return ExitCode::FAILURE;
                }
            };
            let cluster = match (config, host) {
                (Some(mut config), Some(host)) => {
                    config.lease_ttl = Duration::from_secs(lease_ttl.max(1));
                    Some(daemon::ClusterOptions {
                        store: config,
                        host,
                    })
                }
                (Some(_), None) => {
                    eprintln!("error: --etcd needs --host NAME: which host of the cluster this is");
                    return ExitCode::FAILURE;
                }
                _ => None,
            };
            let topology = match (&file, &cluster) {
                (Some(file), _) => match topology::load(file) {
                    Ok(topology) => Some(topology),
                    Err(err) => {
                        eprintln!("error: {err}");
                        return ExitCode::FAILURE;
                    }
                },
                // Read from the store once the runtime runs.
                (None, _) => None,
            };
            let stats_interval = match stats_interval {
                None => None,
                Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
                Some(s) => {
                    eprintln!(
                        "error: --stats-interval must be a positive number of seconds, not {s}"
                    );
                    return ExitCode::FAILURE;
                }
            };
            // Refuse a CPU netd may not run on before anything is created.
            if let Some(cpu) = datapath_cpu {
                let allowed = netd::kernel::sys::allowed_cpus().unwrap_or_default();
                let wanted = cpu..cpu + usize::from(datapath_threads);
                if let Some(cpu) = wanted.into_iter().find(|c| !allowed.contains(c)) {
                    let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                    eprintln!(
                        "error: --datapath-cpu {cpu}: netd may run only on CPUs {}",
                        list.join(",")
                    );
                    return ExitCode::FAILURE;
                }
            }
            // Refuse a priority netd cannot get before anything is created.
            if let Some(priority) = datapath_priority
                && let Err(err) = priority.check()
            {
                eprintln!(
                    "error: --datapath-priority {priority}: {err} (real-time needs CAP_SYS_NICE \
                     and real-time CPU time in netd's cgroup)"
                );
                return ExitCode::FAILURE;
            }
            let options = UpOptions {
                stats_interval,
                offload: !no_offload,
                socket: cli.socket,
                http,
                http_allow_public,
                http_token_file,
                metrics_token_file,
                datapath_cpu,
                datapath_priority,
                datapath_threads: usize::from(datapath_threads),
                take_over,
                relaunch: relaunch(),
                cluster,
            };
            match run_up(topology, options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    error!("{err:#}");
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Push {
            file,
            store,
            expect_revision,
        } => match push(&file, &store, expect_revision) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            cluster: true,
            store,
            json,
            ..
        } => match cluster_status(&store, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Down { file } => match down(&file, cli.socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
        command => match client_command(cli.socket, cli.topology, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Find the daemon's socket: `--socket`, else `--topology FILE`'s, else the only live one.
fn find_socket(socket: Option<PathBuf>, topology: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = socket {
        return Ok(path);
    }
    if let Some(file) = topology {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(socket::socket_path(&name));
    }
    Ok(client::discover(&socket::run_dir())?)
}

/// How this process was started, for `netd upgrade` to start the installed binary alike.
fn relaunch() -> Option<netd::control::Relaunch> {
    Some(netd::control::Relaunch {
        exe: std::env::current_exe().ok()?,
        args: std::env::args_os().skip(1).collect(),
    })
}

/// Wait until the process listening on the control socket `path` is `pid`.
fn wait_for_server_pid(path: &Path, pid: u64, within: Duration) -> anyhow::Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let deadline = std::time::Instant::now() + within;
    loop {
        let serving = std::os::unix::net::UnixStream::connect(path)
            .ok()
            .and_then(|s| getsockopt(&s, PeerCredentials).ok())
            .map(|cred| u64::try_from(cred.pid()).unwrap_or_default());
        if serving == Some(pid) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "netd (pid {pid}) did not take over within {within:?}; see its log (the old netd goes on when a hand-over fails)"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send one request; return its result or fail with the daemon's error.
fn call(path: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let response = client::request(path, request, Duration::from_secs(30))?;
    if response.ok {
        Ok(response.result.unwrap_or_default())
    } else {
        anyhow::bail!(response.error.unwrap_or_else(|| "unknown error".into()))
    }
}

fn client_command(
    socket: Option<PathBuf>,
    topology: Option<PathBuf>,
    command: Command,
) -> anyhow::Result<()> {
    let path = find_socket(socket, topology)?;
    let change = match command {
        Command::Check { .. }
        | Command::Up { .. }
        | Command::Down { .. }
        | Command::Push { .. }
        | Command::Status { cluster: true, .. } => {
            unreachable!("handled by main")
        }
        Command::Status {
            watch, json, toml, ..
        } => {
            if toml {
                print!(
                    "{}",
                    call(&path, &Request::Topology)?
                        .as_str()
                        .unwrap_or_default()
                );
                return Ok(());
            }
            loop {
                let value = call(&path, &Request::Status)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&value)?);
                } else {
                    let status: Status = serde_json::from_value(value)?;
                    if watch {
                        // Clear the screen and go home, like watch(1).
                        print!("\x1b[2J\x1b[H");
                    }
                    print_status(&status);
                }
                if !watch {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Command::Stats { json } => {
            let value = call(&path, &Request::Stats)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_stats(&serde_json::from_value(value)?);
            }
            return Ok(());
        }
        Command::Upgrade => {
            let started = call(&path, &Request::Upgrade)?;
            let pid = started["pid"].as_u64().unwrap_or_default();
            wait_for_server_pid(&path, pid, Duration::from_secs(30))?;
            println!("upgraded: netd (pid {pid}) serves {}", path.display());
            return Ok(());
        }
        Command::Reload { prune } => {
            let applied = call(&path, &Request::Reload { prune })?;
            print_applied(&serde_json::from_value(applied)?);
            return Ok(());
        }
        Command::SetRate {
            tenant,
            guaranteed,
            ceiling,
            weight,
            uplink,
        } => match tenant.as_slice() {
            [one] if !one.contains('=') => Change::SetRate {
                tenant: one.clone(),
                guaranteed,
                ceiling,
                weight,
                uplink,
            },
            _ if guaranteed.is_some() || ceiling.is_some() || weight.is_some() || uplink => {
                anyhow::bail!(
                    "give one tenant with --guaranteed/--ceiling/--weight/--uplink, or TENANT.KEY=VALUE assignments, not both"
                )
            }
            assignments => Change::SetRates {
                rates: netd::control::change::parse_assignments(assignments)
                    .map_err(anyhow::Error::msg)?,
            },
        },
        Command::AddTenant {
            name,
            guaranteed,
            ceiling,
            weight,
            broadcast_pps,
            gateway,
            gateway6,
            nat,
            dns,
        } => Change::AddTenant {
            name,
            tenant: FileTenant {
                guaranteed: Some(guaranteed),
                ceiling,
                weight,
                broadcast_pps,
                gateway,
                gateway6,
                nat: nat.then_some(true),
                dns: (!dns.is_empty()).then_some(dns),
                uplink: None,
                vni: None,
                vlan: None,
            },
        },
        Command::RemoveTenant { name } => Change::RemoveTenant { name },
        Command::AddServer {
            name,
            file,
            tenant,
            ip,
            mac,
            netns,
            ipv6,
            mtu,
            guaranteed,
            ceiling,
            dhcp,
        } => {
            let mut server = match file {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| anyhow::anyhow!("Cannot read {}: {e}", file.display()))?;
                    toml::from_str::<FileServer>(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                }
                None => FileServer::default(),
            };
            let set = |slot: &mut Option<String>, v: Option<String>| {
                if v.is_some() {
                    *slot = v;
                }
            };
            set(&mut server.tenant, tenant);
            set(&mut server.ip, ip);
            set(&mut server.mac, mac);
            set(&mut server.netns, netns);
            set(&mut server.ipv6, ipv6);
            set(&mut server.guaranteed, guaranteed);
            set(&mut server.ceiling, ceiling);
            if mtu.is_some() {
                server.mtu = mtu;
            }
            if dhcp {
                server.dhcp = Some(true);
            }
            Change::AddServer { name, server }
        }
        Command::RemoveServer { name } => Change::RemoveServer { name },
    };
    let applied: Applied = serde_json::from_value(call(
        &path,
        &Request::Apply {
            change: Box::new(change),
        },
    )?)?;
    print_applied(&applied);
    Ok(())
}

fn print_applied(applied: &Applied) {
    if applied.changes.is_empty() {
        println!("nothing to change");
    }
    for line in &applied.changes {
        println!("{line}");
    }
    if let Some(us) = applied.datapath_us {
        println!("applied in the data path in {:.2} ms", us as f64 / 1000.0);
    }
}

/// Format bit/s with an SI prefix, e.g. `123.4M`.
fn bps(v: u64) -> String {
    let v = v as f64;
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn rates(r: &Rates) -> String {
    format!(
        "{:>8} {:>8} {:>8} {:>8}",
        bps(r.in_100ms_bps),
        bps(r.in_1s_bps),
        bps(r.out_100ms_bps),
        bps(r.out_1s_bps)
    )
}

/// The routed tenants' shares of the uplink, per direction.
fn print_uplink(s: &Status, capacity: u64) {
    println!();
    println!(
        "uplink: {}bit/s each way; up = from the servers out, down = in to them; rates over 1 s",
        bps(capacity)
    );
    println!(
        "{:<16} {:>8} {:>8} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9}",
        "TENANT",
        "GUAR",
        "CEIL",
        "WEIGHT",
        "UP",
        "UP-ENT",
        "UP-DROP",
        "DOWN",
        "DOWN-ENT",
        "DOWN-DROP"
    );
    for t in &s.tenants {
        let Some(u) = &t.uplink else { continue };
        println!(
            "{:<16} {:>8} {:>8} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9}",
            t.name,
            bps(u.guaranteed_bps),
            bps(u.ceiling_bps),
            u.weight,
            bps(u.upload.rate_1s_bps),
            bps(u.upload.entitlement_bps),
            u.upload.dropped_bytes,
            bps(u.download.rate_1s_bps),
            bps(u.download.entitlement_bps),
            u.download.dropped_bytes,
        );
    }
}

fn print_status(s: &Status) {
    println!(
        "topology {} ({}), capacity {}bit/s, up {:.0} s",
        s.topology,
        s.source,
        bps(s.capacity_bps),
        s.uptime_secs
    );
    println!("rates in bit/s: in = sent into the switch, out = delivered; over 100 ms and 1 s");
    println!(
        "{:<16} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}  servers",
        "TENANT",
        "GUAR",
        "CEIL",
        "WEIGHT",
        "ENTITLED",
        "IN100ms",
        "IN1s",
        "OUT100ms",
        "OUT1s",
        "QFRAMES",
        "QBYTES"
    );
    for t in &s.tenants {
        println!(
            "{:<16} {:>8} {:>8} {:>6} {:>8} {} {:>7} {:>9}  {}",
            t.name,
            bps(t.guaranteed_bps),
            bps(t.ceiling_bps),
            t.weight,
            bps(t.entitlement_bps),
            rates(&t.rates),
            t.queued_frames,
            t.queued_bytes,
            t.servers.join(",")
        );
    }
    if let Some(capacity) = s.uplink_capacity_bps {
        print_uplink(s, capacity);
    }
    println!();
    println!(
        "{:<16} {:<16} {:<18} {:<19} {:<16} {:<5} {:>8} {:>8} {:>8} {:>8}",
        "SERVER", "TENANT", "MAC", "IP", "NETNS", "STATE", "IN100ms", "IN1s", "OUT100ms", "OUT1s"
    );
    for v in &s.servers {
        println!(
            "{:<16} {:<16} {:<18} {:<19} {:<16} {:<5} {}",
            v.name,
            v.tenant,
            v.mac,
            v.ip,
            v.netns,
            v.state.as_str(),
            rates(&v.rates)
        );
    }
}

fn print_stats(stats: &netd::control::report::StatsReport) {
    let d = stats.datapath;
    println!(
        "data path: priority {}, stepped down {} times",
        Priority::from_realtime_level(d.realtime_priority),
        d.step_downs
    );
    let drops = |d: &std::collections::BTreeMap<String, u64>| {
        let listed: Vec<String> = d
            .iter()
            .filter(|&(_, &n)| n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        if listed.is_empty() {
            "-".to_string()
        } else {
            listed.join(" ")
        }
    };
    println!("tenants:");
    for t in &stats.tenants {
        let (c, s) = (&t.counters, &t.shaper);
        println!(
            "  {:<16} rx {} frames / {} B, tx {} frames / {} B; shaper own {} B, borrowed {} B, queued {} frames / {} B, dropped {} frames; drops: {}",
            t.tenant,
            c.rx_frames,
            c.rx_bytes,
            c.tx_frames,
            c.tx_bytes,
            s.own_bytes,
            s.borrowed_bytes,
            s.queued_frames,
            s.queued_bytes,
            s.dropped_frames,
            drops(&c.drops)
        );
    }
    println!("ports:");
    for p in &stats.ports {
        let c = &p.counters;
        println!(
            "  {:<16} ({}) rx {} frames / {} B, tx {} frames / {} B; read errors {}; quarantines {}; drops: {}",
            p.server,
            p.tenant,
            c.rx_frames,
            c.rx_bytes,
            c.tx_frames,
            c.tx_bytes,
            c.read_errors,
            c.quarantines,
            drops(&c.drops)
        );
    }
}

/// `netd down FILE`: remove what a killed netd left of the topology in `file`.
fn down(file: &std::path::Path, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let topology = topology::load(file)?;
    netd::kernel::check_privileges()?;
    let socket = socket.unwrap_or_else(|| socket::socket_path(&topology.name));
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "netd is running {} (its socket {} answers): stop it with Ctrl-C or SIGTERM, which removes everything",
            topology.name,
            socket.display()
        );
    }
    let removed = netd::kernel::remove_leftovers(&topology)?;
    let token = netd::control::auth::token_path(&socket, &topology.name);
    for path in [&socket, &token] {
        let _ = std::fs::remove_file(path);
    }
    println!(
        "removed {} namespace(s) left by netd for {}{}",
        removed.len(),
        topology.name,
        if removed.is_empty() {
            String::new()
        } else {
            format!(": {}", removed.join(", "))
        }
    );
    Ok(())
}

/// Run `topology`, or with `None` this host's part of the cluster in `options.cluster`.
fn run_up(topology: Option<Topology>, options: UpOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let topology = match (topology, &options.cluster) {
            (Some(topology), _) => topology,
            (None, Some(cluster)) => {
                netd::store::follow::first_part(&cluster.store, &cluster.host).await?
            }
            (None, None) => anyhow::bail!("no topology: give a file, or --etcd and --host"),
        };
        // Install the handlers before creating anything, so a signal during start-up is
        // remembered and leads to a clean tear-down instead of killing us half-way.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
        };
        daemon::up(topology, options, shutdown).await?;
        Ok(())
    })
}

/// `netd push`: validate a cluster topology and store it.
fn push(file: &Path, store: &StoreArgs, expect: Option<i64>) -> anyhow::Result<()> {
    let config = store
        .config()?
        .ok_or_else(|| anyhow::anyhow!("--etcd URL is required"))?;
    let cluster = match topology::load_any(file)? {
        topology::AnyTopology::Cluster(cluster) => cluster,
        topology::AnyTopology::Single(_) => anyhow::bail!(
            "{}: not a cluster topology (no [hosts]): run it with `netd up FILE`",
            file.display()
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let revision = runtime.block_on(async {
        let mut store = netd::store::Store::connect(&config).await?;
        store.push(&cluster, expect).await
    })?;
    let servers: usize = cluster.servers_per_host().values().sum();
    println!(
        "pushed {} at etcd revision {revision}: {} hosts, {servers} servers",
        file.display(),
        cluster.hosts.len()
    );
    Ok(())
}

/// `netd status --cluster`: every host and tenant of the cluster, from etcd.
fn cluster_status(store: &StoreArgs, json: bool) -> anyhow::Result<()> {
    let config = store
        .config()?
        .ok_or_else(|| anyhow::anyhow!("--etcd URL is required"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let mut store = netd::store::Store::connect(&config).await?;
        store.report().await
    })?;
    let status = netd::store::report::cluster_status(&report).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", netd::store::report::render(&status));
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_cluster_summary(cluster: &topology::Cluster) {
    let servers = cluster.servers_per_host();
    println!(
        "cluster {}: {} hosts, {} servers",
        cluster.name,
        cluster.hosts.len(),
        servers.values().sum::<usize>()
    );
    for host in &cluster.hosts {
        println!(
            "  host {}: underlay {}, capacity {}, mtu {}, {} servers",
            host.name,
            host.underlay,
            host.capacity,
            host.mtu,
            servers.get(host.name.as_str()).copied().unwrap_or(0)
        );
    }
    for (name, guaranteed, ceiling) in cluster.tenants() {
        let ceiling = ceiling.unwrap_or("each host's capacity");
        println!(
            "  tenant {name}: guaranteed {} on each of its hosts, ceiling {ceiling}",
            guaranteed.unwrap_or("?")
        );
    }
}

fn print_summary(topology: &Topology) {
    println!(
        "{}: valid; capacity {}, {} tenant(s), {} server(s)",
        topology.source.display(),
        topology.capacity,
        topology.tenants.len(),
        topology.servers.len()
    );
    println!("tenants:");
    for t in &topology.tenants {
        println!(
            "  {:<15} guaranteed {:>10}  ceiling {:>10}  weight {}",
            t.name,
            t.guaranteed.to_string(),
            t.ceiling.to_string(),
            t.weight
        );
    }
    println!("servers:");
    for s in &topology.servers {
        println!(
            "  {:<15} tenant {:<15} mac {}  ip {:<18} netns {}",
            s.name,
            topology.tenant(s.tenant).name,
            s.mac,
            s.ip.to_string(),
            s.netns
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Issue 11, item 8: `add-server --help` had flags without a word of description.
    #[test]
    fn every_argument_of_every_command_says_what_it_does() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && arg.get_id() != "help" && arg.get_id() != "version" {
                    missing.push(format!("{} {}", command.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "undescribed: {missing:?}");
    }

    #[test]
    fn http_takes_an_address_or_a_host_name() {
        assert_eq!(
            parse_http_addr("127.0.0.1:9180"),
            Ok("127.0.0.1:9180".parse().unwrap())
        );
        assert!(parse_http_addr("localhost:9180").is_ok_and(|a| a.ip().is_loopback()));
        assert!(parse_http_addr("[::1]:9180").is_ok());
        assert!(parse_http_addr("no-port").is_err());
    }
}
