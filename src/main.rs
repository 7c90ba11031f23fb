//! The `netd` command line: thin wrapper over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing::error;

use netd::daemon::{self, UpOptions};
use netd::topology::{self, Topology};

/// Multi-tenant virtual networking: one TAP per virtual server, an isolated L2 switch, a shaper.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
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
    /// Create the topology's namespaces and TAPs and run the switch until SIGINT/SIGTERM.
    Up {
        /// Topology file (TOML).
        file: PathBuf,
        /// Log all counters every this many seconds.
        #[arg(long, value_name = "SECONDS")]
        stats_interval: Option<f64>,
        /// Plain TAPs without checksum/segmentation offload (MTU-sized frames; for comparison).
        #[arg(long)]
        no_offload: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { file } => match topology::load(&file) {
            Ok(topology) => {
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
            stats_interval,
            no_offload,
        } => {
            let topology = match topology::load(&file) {
                Ok(topology) => topology,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::FAILURE;
                }
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
            let options = UpOptions {
                stats_interval,
                offload: !no_offload,
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
    }
}

fn run_up(topology: Topology, options: UpOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
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
