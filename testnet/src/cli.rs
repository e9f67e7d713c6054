//! The `testnet` command line: a thin layer over [`Testnet`]. Its runs persist (daemons in
//! their own sessions) and the current run's prefix is kept in `/run/testnet/current`.
//! Exit codes: 0 success, 1 runtime failure, 2 usage error (the exit code of the command
//! for `exec`).

use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand, ValueEnum};

use crate::names::{self, NsKind, RUN_ROOT};
use crate::scale::{self, ScaleOptions};
use crate::{Mode, NETWORK, NETWORK_CIDR, NatSpec, Options, Testnet};

/// Prefix of the CLI's runs unless `--prefix` says otherwise.
const DEFAULT_PREFIX: &str = "tn";
/// Prefix of `testnet scale`'s run unless `--prefix` says otherwise.
const SCALE_PREFIX: &str = "scale";

/// Overlay hosts on one machine from network namespaces, each running overlayd.
///
/// Host I is namespace P-hI (underlay 198.18.0.(10+I) on ul0, containers' bridge
/// 10.42.I.1/24); container J of host I is namespace P-hI-cJ (10.42.I.(1+J)). Needs root.
#[derive(Debug, Parser)]
#[command(name = "testnet", version)]
struct Cli {
    /// Namespace prefix of the run [default: the current run, else `tn`].
    #[arg(long, global = true, env = "TESTNET_PREFIX")]
    prefix: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build hosts and containers, start overlayd on each host and form the network as an
    /// operator would (`overlayctl init` on h1, `token create` on h1 and `join` on each other
    /// host), then wait until every host sees every other alive and containers ping across.
    /// With --static, every config lists the other hosts as peers instead. The run stays up
    /// until `testnet down`.
    Up {
        /// Number of hosts.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=crate::MAX_HOSTS as i64))]
        hosts: u16,
        /// Containers per host (0 for none).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=crate::MAX_CONTAINERS as i64))]
        containers: u16,
        /// Static mode: a [[peer]] table per other host in every config, no control plane.
        #[arg(long = "static")]
        static_mode: bool,
        /// Gossip mode: start the daemons but form no network (run `overlayctl init`,
        /// `token create` and `join` yourself through `testnet exec hI -- overlayctl ...`).
        #[arg(long, conflicts_with = "static_mode")]
        no_join: bool,
        /// Build the network only; start no daemons.
        #[arg(long)]
        no_daemons: bool,
        /// Set `persistent_keepalive` (seconds) on every peer.
        #[arg(long, value_name = "SECONDS")]
        keepalive: Option<u16>,
        /// Write `offload = false` into every config.
        #[arg(long)]
        no_offload: bool,
        /// Put host I behind a NAT router of its own: `hI` or `hI:cone` (endpoint-independent
        /// mapping, port kept) or `hI:symmetric` (a new random port per destination); both
        /// drop what nobody inside asked for. Repeat for more hosts.
        #[arg(long, value_name = "hI[:KIND]")]
        nat: Vec<NatSpec>,
        /// Gossip mode: the control plane shares the tunnels' UDP port (51820), as overlayd
        /// does by default, instead of its own (51821). Also env TESTNET_ONE_PORT=1.
        #[arg(long)]
        one_port: bool,
    },
    /// Run a command in a host (`h1`) or container (`h1-c2`) namespace, e.g.
    /// `testnet exec h1-c1 -- ping 10.42.2.2`. In a host, OVERLAYD_SOCKET is its API socket;
    /// PATH starts with the directory of overlayd and overlayctl.
    Exec {
        /// `hI`, `hI-cJ` or `ul`.
        name: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print a container's overlay address or a host's underlay address.
    Addr {
        /// `hI` or `hI-cJ`.
        name: String,
    },
    /// Show the run: per host its daemon and namespaces.
    Status,
    /// Remove the run (daemons, namespaces, state), also after a crash, and clean the
    /// leftovers of dead runs. Succeeds when nothing was up.
    Down,
    /// Start, stop (SIGTERM), kill (SIGKILL, a crash) or restart a host's daemon.
    Daemon {
        /// What to do.
        action: DaemonAction,
        /// `hI` or `I`.
        host: String,
    },
    /// Cut the underlay between two groups of hosts, e.g. `testnet partition 1,2 3`.
    Partition {
        /// Hosts on one side, comma-separated (`1,2` or `h1,h2`).
        a: String,
        /// Hosts on the other side.
        b: String,
    },
    /// Remove all partitions.
    Heal,
    /// Drop a percentage of a host's underlay packets at random, each direction (0 to stop).
    Loss {
        /// `hI` or `I`.
        host: String,
        /// Percent, 0 to 100.
        percent: u32,
    },
    /// Move a host to another underlay address in 198.18.0.0/15 (roaming).
    Roam {
        /// `hI` or `I`.
        host: String,
        /// The new address.
        addr: Ipv4Addr,
    },
    /// Show a NAT's UDP mappings (`show`, as conntrack lists them) or drop them all at once
    /// (`flush`: a mapping expiry).
    Nat {
        /// What to do.
        action: NatAction,
        /// `hI` or `I`, a host behind a NAT.
        host: String,
    },
    /// Remove the namespaces and state of dead runs (of any prefix that has a run directory).
    Cleanup,
    /// Measure a network of N hosts, then remove it: time to form, a join, RSS per daemon,
    /// gossip bytes per member per second, a ping across, a kill -9 seen down everywhere,
    /// the restart seen alive everywhere, a revocation seen everywhere. Exits 1 if a bound
    /// of the 3-host tests (join 3 s, down 10 s, back 5 s, revoked 5 s) is not met.
    Scale {
        /// Number of hosts (at least 4).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(4..=crate::MAX_HOSTS as i64))]
        hosts: u16,
        /// Containers per host.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=crate::MAX_CONTAINERS as i64))]
        containers: u16,
        /// Seconds to watch the gossip traffic (a full sync runs every 30 s).
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        window: u64,
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NatAction {
    Show,
    Flush,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DaemonAction {
    Start,
    Stop,
    Kill,
    Restart,
}

/// A mistake in the command line: exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl fmt::Display) -> anyhow::Error {
    anyhow!(UsageError(message.to_string()))
}

/// Parses the arguments and runs the command; the binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testnet: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if !matches!(cli.command, Command::Addr { .. }) {
        require_root()?;
    }
    if let Some(prefix) = &cli.prefix {
        names::validate_prefix(prefix).map_err(usage)?;
    }
    match cli.command {
        Command::Up {
            hosts,
            containers,
            static_mode,
            no_join,
            no_daemons,
            keepalive,
            no_offload,
            nat,
            one_port,
        } => {
            let prefix = cli.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
            let mut opts = Options::new(usize::from(hosts), usize::from(containers));
            if static_mode {
                opts.mode = Mode::Static;
            }
            if no_join {
                opts.members = Some(0);
            }
            opts.prefix = Some(prefix);
            opts.start_daemons = !no_daemons;
            opts.persistent_keepalive = keepalive;
            opts.offload = no_offload.then_some(false);
            opts.nat = nat;
            opts.one_port |= one_port;
            opts.detach_daemons = true;
            up(opts)?;
        }
        Command::Exec { name, command } => {
            let net = Testnet::attach(&current_prefix(cli.prefix)?)?;
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let mut cmd = net.command(&name, &args).map_err(usage)?;
            // Replaces this process: stdio, signals and the exit code are the command's.
            let e = cmd.exec();
            return Err(anyhow!("cannot run {:?} in {name}: {e}", command[0]));
        }
        Command::Addr { name } => {
            let net = Testnet::attach(&current_prefix(cli.prefix)?)?;
            println!("{}", net.addr(&name).map_err(usage)?);
        }
        Command::Status => status(&mut Testnet::attach(&current_prefix(cli.prefix)?)?)?,
        Command::Down => down(cli.prefix)?,
        Command::Daemon { action, host } => {
            let mut net = Testnet::attach(&current_prefix(cli.prefix)?)?;
            let i = host_index(&net, &host)?;
            match action {
                DaemonAction::Start => net.start_daemon(i)?,
                DaemonAction::Stop => net.stop_daemon(i)?,
                DaemonAction::Kill => net.kill_daemon(i)?,
                DaemonAction::Restart => net.restart_daemon(i)?,
            }
            if let Some(pid) = net.daemon_pid(i) {
                println!("h{i}: overlayd pid {pid}");
            }
        }
        Command::Partition { a, b } => {
            let net = Testnet::attach(&current_prefix(cli.prefix)?)?;
            let a = host_indexes(&net, &a)?;
            let b = host_indexes(&net, &b)?;
            net.partition(&a, &b)?;
        }
        Command::Heal => Testnet::attach(&current_prefix(cli.prefix)?)?.heal()?,
        Command::Loss { host, percent } => {
            let net = Testnet::attach(&current_prefix(cli.prefix)?)?;
            if percent > 100 {
                return Err(usage("loss must be 0 to 100 percent"));
            }
            net.set_loss(host_index(&net, &host)?, percent)?;
        }
        Command::Roam { host, addr } => {
            let mut net = Testnet::attach(&current_prefix(cli.prefix)?)?;
            let i = host_index(&net, &host)?;
            if !names::in_underlay_range(addr) {
                return Err(usage(format!(
                    "{addr} is outside the underlay: use an address in 198.18.0.0/15"
                )));
            }
            net.set_underlay_addr(i, addr)?;
        }
        Command::Nat { action, host } => {
            let net = Testnet::attach(&current_prefix(cli.prefix)?)?;
            let i = host_index(&net, &host)?;
            if net.nat_kind(i)?.is_none() {
                return Err(usage(format!("h{i} is not behind a NAT in this run")));
            }
            match action {
                NatAction::Show => print!("{}", net.nat_mappings(i)?),
                NatAction::Flush => net.flush_nat(i)?,
            }
        }
        Command::Cleanup => {
            for ns in Testnet::cleanup_leftovers(None)? {
                println!("removed namespace {ns}");
            }
        }
        Command::Scale {
            hosts,
            containers,
            window,
            json,
        } => {
            let prefix = cli.prefix.unwrap_or_else(|| SCALE_PREFIX.to_owned());
            Testnet::cleanup_leftovers(Some(&prefix))?;
            if Testnet::is_alive(&prefix)? {
                return Err(anyhow!(
                    "a testnet run with prefix {prefix} is already up; run `testnet down --prefix {prefix}` first"
                ));
            }
            let mut opts = ScaleOptions::new(usize::from(hosts));
            opts.containers = usize::from(containers);
            opts.window = std::time::Duration::from_secs(window);
            opts.prefix = Some(prefix);
            let report = scale::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.table());
            }
            if !report.failures.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn up(opts: Options) -> Result<()> {
    let prefix = opts.prefix.clone().unwrap_or_default();
    Testnet::cleanup_leftovers(Some(&prefix))?;
    if Testnet::is_alive(&prefix)? {
        return Err(anyhow!(
            "a testnet run with prefix {prefix} is already up; run `testnet down --prefix {prefix}` first"
        ));
    }
    let mut net = Testnet::up(opts)?;
    net.persist()?;
    std::fs::write(current_file(), format!("{prefix}\n"))
        .with_context(|| format!("cannot write {}", current_file().display()))?;
    println!(
        "{:<5} {:<14} {:<15} {:<9} containers",
        "host", "underlay", "subnet", "daemon"
    );
    for i in 1..=net.hosts() {
        let containers: Vec<String> = (1..=net.containers())
            .map(|j| {
                let name = format!("h{i}-c{j}");
                let addr = net.addr(&name).map(|a| a.to_string()).unwrap_or_default();
                format!("{name} {addr}")
            })
            .collect();
        println!(
            "{:<5} {:<14} {:<15} {:<9} {}",
            format!("h{i}"),
            net.underlay_addr(i)?.to_string(),
            format!("10.42.{i}.0/24"),
            net.daemon_pid(i).map_or("-".to_owned(), |p| p.to_string()),
            containers.join(", ")
        );
    }
    println!("{}", mode_line(&net));
    let t = net.timings();
    println!(
        "up in {:.1} s: namespaces and configs {:.1} s, daemons {:.1} s, joins {:.1} s, until all see each other and ping {:.1} s",
        (t.build + t.daemons + t.join + t.converge).as_secs_f64(),
        t.build.as_secs_f64(),
        t.daemons.as_secs_f64(),
        t.join.as_secs_f64(),
        t.converge.as_secs_f64()
    );
    let from = if net.containers() > 0 { "h1-c1" } else { "h1" };
    let to = match (net.hosts() > 1, net.containers() > 0) {
        (true, true) => "10.42.2.2",
        (true, false) => "198.18.0.12",
        (false, _) => "10.42.1.1",
    };
    println!(
        "run {prefix} is up (state in {}); try `testnet exec {from} -- ping -c1 {to}`; remove it with `testnet down`",
        net.run_dir().display(),
    );
    Ok(())
}

fn status(net: &mut Testnet) -> Result<()> {
    let present = net.namespaces()?;
    let mark = |ns: &str| {
        if present.iter().any(|p| p == ns) {
            ""
        } else {
            " (missing)"
        }
    };
    println!("run {} in {}", net.prefix(), net.run_dir().display());
    println!("{}", mode_line(net));
    println!("switch: {}{}", net.underlay_ns(), mark(&net.underlay_ns()));
    for i in 1..=net.hosts() {
        let daemon = match net.daemon_pid(i) {
            None => "not started".to_owned(),
            Some(pid) if net.daemon_alive(i) => format!("pid {pid} alive"),
            Some(pid) => format!("pid {pid} dead"),
        };
        let host_ns = net.host_ns(i);
        let nat = match net.nat_kind(i)? {
            Some(kind) => {
                let ns = net.nat_ns(i);
                format!(
                    "  behind {kind} NAT {ns}{} at {}",
                    mark(&ns),
                    net.public_addr(i)?
                )
            }
            None => String::new(),
        };
        println!(
            "h{i}: ns {host_ns}{}  underlay {}{nat}  overlayd {daemon}",
            mark(&host_ns),
            net.underlay_addr(i)?
        );
        for j in 1..=net.containers() {
            let ns = net.container_ns(i, j);
            println!(
                "  h{i}-c{j}: ns {ns}{}  {}",
                mark(&ns),
                net.addr(&format!("h{i}-c{j}"))?
            );
        }
    }
    Ok(())
}

/// One line on how the run's hosts know each other.
fn mode_line(net: &Testnet) -> String {
    match net.mode() {
        Mode::Static => "mode: static (every config lists the other hosts as peers)".to_owned(),
        Mode::Gossip => format!(
            "mode: gossip (network {NETWORK} {NETWORK_CIDR} with h1 as admin, control port {}; \
             `testnet exec hI -- overlayctl peers` shows the members)",
            net.control_port()
        ),
    }
}

fn down(prefix: Option<String>) -> Result<()> {
    let current = read_current();
    let prefix = prefix
        .or_else(|| current.clone())
        .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    let removed = Testnet::down_prefix(&prefix)?;
    if current.as_deref() == Some(prefix.as_str()) {
        let _ = std::fs::remove_file(current_file());
    }
    let others = Testnet::cleanup_leftovers(None)?;
    if removed.is_empty() {
        println!("no run {prefix} was up");
    } else {
        println!("removed run {prefix} ({} namespaces)", removed.len());
    }
    if !others.is_empty() {
        println!("removed leftovers of dead runs: {}", others.join(" "));
    }
    Ok(())
}

fn current_file() -> std::path::PathBuf {
    Path::new(RUN_ROOT).join("current")
}

fn read_current() -> Option<String> {
    let text = std::fs::read_to_string(current_file()).ok()?;
    let prefix = text.trim().to_owned();
    names::validate_prefix(&prefix).is_ok().then_some(prefix)
}

/// `--prefix`, else the current run, else `tn`.
fn current_prefix(prefix: Option<String>) -> Result<String> {
    Ok(prefix
        .or_else(read_current)
        .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()))
}

/// `h2` or `2` as a host of the run.
fn host_index(net: &Testnet, text: &str) -> Result<usize> {
    let local = text
        .strip_prefix(&format!("{}-", net.prefix()))
        .unwrap_or(text);
    let kind = names::parse_local(local)
        .or_else(|| local.parse().ok().filter(|&i| i >= 1).map(NsKind::Host));
    match kind {
        Some(NsKind::Host(i)) if i <= net.hosts() => Ok(i),
        _ => Err(usage(format!(
            "unknown host {text:?}: use h1 .. h{} (or 1 .. {})",
            net.hosts(),
            net.hosts()
        ))),
    }
}

/// `1,2` or `h1,h2` as hosts of the run.
fn host_indexes(net: &Testnet, list: &str) -> Result<Vec<usize>> {
    list.split(',').map(|t| host_index(net, t.trim())).collect()
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(anyhow!(
            "testnet needs root (network namespaces): run it with sudo"
        ));
    }
    Ok(())
}
