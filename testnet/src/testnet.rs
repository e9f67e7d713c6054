//! [`Testnet`]: one run's namespaces, keys, configs and daemons, torn down on drop.

use std::env;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::config::HostConfig;
use crate::daemon::Daemon;
use crate::names::{self, NsKind};
use crate::nat::NatSpec;
use crate::state::{HostState, State};
use crate::{MAX_CONTAINERS, MAX_HOSTS, cleanup, neigh, topology};

mod daemons;

/// How many fresh prefixes [`Testnet::up`] tries before giving up.
const PREFIX_ATTEMPTS: usize = 16;

/// A hook that changes a host's config before it is written: `(host, &mut config)`.
pub type ConfigHook = Box<dyn Fn(usize, &mut HostConfig)>;

/// How the hosts of a run come to know each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// As an operator would: `overlayctl init` on h1, a token and `overlayctl join` for each
    /// other host; members, subnets and tunnels come from the control plane.
    #[default]
    Gossip,
    /// Every config lists every other host as a `[[peer]]` (the data plane alone).
    Static,
}

impl Mode {
    /// `gossip` or `static`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Gossip => "gossip",
            Mode::Static => "static",
        }
    }
}

/// What [`Testnet::up`] builds.
pub struct Options {
    /// Number of hosts, 1 to [`MAX_HOSTS`].
    pub hosts: usize,
    /// Containers per host, 0 to [`MAX_CONTAINERS`].
    pub containers: usize,
    /// Namespace prefix; `None` makes a unique one (`t` and 5 hex digits).
    pub prefix: Option<String>,
    /// How the hosts know each other; gossip by default.
    pub mode: Mode,
    /// Start `overlayd` on every host and wait until each is ready (in gossip mode, also
    /// form the network: see `members`).
    pub start_daemons: bool,
    /// Gossip mode: how many hosts (h1 .. hK) `up` makes members (init on h1, token and
    /// join on the others) before it waits for them to see each other alive and ping.
    /// `None`: all; `Some(0)`: the daemons run but no network exists. The others can join
    /// later with [`Testnet::join_host`].
    pub members: Option<usize>,
    /// `persistent_keepalive` for every peer.
    pub persistent_keepalive: Option<u16>,
    /// `offload` for every host (`Some(false)` turns offloads off).
    pub offload: Option<bool>,
    /// Gossip mode: extra ranges of the network, each passed to `overlayctl init` as
    /// `--range` (e.g. `10.43.0.0/16`: host `I` then also gets `10.43.I.0/24`).
    pub ranges: Vec<String>,
    /// Start daemons in their own sessions so they outlive this process (the CLI's runs).
    pub detach_daemons: bool,
    /// The `overlayd` binary; `None` looks it up (env `OVERLAYD_BIN`, next to this
    /// executable, `PATH`).
    pub overlayd: Option<PathBuf>,
    /// The `overlayctl` binary; `None` looks it up (env `OVERLAYCTL_BIN`, ...).
    pub overlayctl: Option<PathBuf>,
    /// Changes each host's config before it is written (after the fields above).
    pub configure: Option<ConfigHook>,
    /// Hosts behind a NAT router of their own (see `nat.rs`); the others keep public
    /// underlay addresses.
    pub nat: Vec<NatSpec>,
    /// Gossip mode: the control plane shares the tunnels' UDP port ([`LISTEN_PORT`](crate::LISTEN_PORT))
    /// on every host, as `overlayd` does by default; otherwise it has its own,
    /// [`CONTROL_PORT`](crate::CONTROL_PORT) (the two-port layout). Defaults to whether env
    /// `TESTNET_ONE_PORT` is `1`, so that any test can be run both ways.
    pub one_port: bool,
}

impl Options {
    /// `hosts` hosts with `containers` containers each, gossip mode, daemons started and
    /// every host a member, everything else default.
    pub fn new(hosts: usize, containers: usize) -> Options {
        Options {
            hosts,
            containers,
            prefix: None,
            mode: Mode::Gossip,
            start_daemons: true,
            members: None,
            persistent_keepalive: None,
            offload: None,
            ranges: Vec::new(),
            detach_daemons: false,
            overlayd: None,
            overlayctl: None,
            configure: None,
            nat: Vec::new(),
            one_port: std::env::var_os("TESTNET_ONE_PORT").is_some_and(|v| v == "1"),
        }
    }

    /// Like [`Options::new`] in static mode: every config lists the other hosts as peers.
    pub fn static_mode(hosts: usize, containers: usize) -> Options {
        Options {
            mode: Mode::Static,
            ..Options::new(hosts, containers)
        }
    }
}

impl Default for Options {
    /// Two hosts with two containers each.
    fn default() -> Options {
        Options::new(2, 2)
    }
}

/// A run: hosts and containers in namespaces, with their daemons.
///
/// Dropping it tears everything down (daemons, processes left in its namespaces, the
/// namespaces, the run directory) unless [`Testnet::persist`] was called or it came from
/// [`Testnet::attach`]. Hosts are numbered from 1; containers of each host from 1.
pub struct Testnet {
    pub(crate) state: State,
    /// Index 0 is host 1.
    daemons: Vec<Option<Daemon>>,
    overlayd: Option<PathBuf>,
    overlayctl: Option<PathBuf>,
    /// Whether drop tears the run down.
    owns_run: bool,
    /// How long the steps of [`Testnet::up`] took.
    pub(crate) timings: UpTimings,
}

/// How long the steps of [`Testnet::up`] took (zero for a step it did not do).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpTimings {
    /// Namespaces, links, addresses, keys and configs.
    pub build: Duration,
    /// Starting every daemon until each answers on its API socket.
    pub daemons: Duration,
    /// `init` on h1, the tokens and every `join` (gossip mode).
    pub join: Duration,
    /// From the last join until every member sees every other alive and pings it.
    pub converge: Duration,
    /// The part of `converge` until every member saw every other alive (the rest is the
    /// all-pairs pings, each a first WireGuard handshake).
    pub alive: Duration,
}

impl Testnet {
    /// Builds the topology, writes keys and configs, and starts the daemons if asked. On
    /// error everything built so far is removed again.
    pub fn up(opts: Options) -> Result<Testnet> {
        if !(1..=MAX_HOSTS).contains(&opts.hosts) {
            bail!("hosts must be 1 to {MAX_HOSTS}, not {}", opts.hosts);
        }
        if opts.containers > MAX_CONTAINERS {
            bail!(
                "containers must be 0 to {MAX_CONTAINERS}, not {}",
                opts.containers
            );
        }
        if let Some(members) = opts.members
            && members > opts.hosts
        {
            bail!(
                "members must be 0 to {} (the hosts), not {members}",
                opts.hosts
            );
        }
        for (k, spec) in opts.nat.iter().enumerate() {
            if !(1..=opts.hosts).contains(&spec.host) {
                bail!(
                    "cannot put h{} behind a NAT: this run has hosts 1 to {}",
                    spec.host,
                    opts.hosts
                );
            }
            if opts.nat[..k].iter().any(|n| n.host == spec.host) {
                bail!("h{} is named twice in the NAT list", spec.host);
            }
        }
        let mut state = claim_prefix(&opts)?;
        state.ranges = opts.ranges.clone();
        state.one_port = opts.one_port;
        let mut net = Testnet {
            daemons: (0..opts.hosts).map(|_| None).collect(),
            state,
            overlayd: opts.overlayd.clone(),
            overlayctl: opts.overlayctl.clone(),
            owns_run: true,
            timings: UpTimings::default(),
        };
        let started = Instant::now();
        // From here on, an early return drops `net`, which removes what was built.
        let prefix = net.state.prefix.clone();
        if let Some(line) = neigh::raise(&mut net.state)? {
            eprintln!("{line}");
        }
        topology::build_underlay(&prefix)?;
        for i in 1..=opts.hosts {
            let host = &net.state.host[i - 1];
            topology::build_host(&prefix, i, host.underlay, host.nat)?;
            for j in 1..=opts.containers {
                topology::build_container(&prefix, i, j)?;
            }
        }
        net.write_keys()?;
        for i in 1..=opts.hosts {
            if opts.mode == Mode::Gossip {
                net.create_state_dir(i)?;
            }
            let mut config = net.default_config(i)?;
            config.offload = opts.offload;
            for peer in &mut config.peers {
                peer.persistent_keepalive = opts.persistent_keepalive;
            }
            if let Some(hook) = &opts.configure {
                hook(i, &mut config);
            }
            net.write_config(i, &config)?;
        }
        net.state.save()?;
        net.timings.build = started.elapsed();
        if opts.start_daemons {
            let started = Instant::now();
            net.start_all()?;
            net.timings.daemons = started.elapsed();
            if opts.mode == Mode::Gossip {
                net.form_network(opts.members.unwrap_or(opts.hosts))?;
            }
        }
        Ok(net)
    }

    /// The run `prefix` as recorded in its `state.json` (for the CLI). Dropping the result
    /// leaves the run as it is; [`Testnet::down`] removes it.
    pub fn attach(prefix: &str) -> Result<Testnet> {
        names::validate_prefix(prefix)?;
        let Some(state) = State::load(prefix)? else {
            if cleanup::run_namespaces(prefix).is_ok_and(|n| !n.is_empty()) {
                bail!(
                    "run {prefix} has namespaces but no state (a crash?); remove it with `testnet down --prefix {prefix}`"
                );
            }
            bail!("no testnet run with prefix {prefix} is up; start one with `testnet up`");
        };
        let daemons = state
            .host
            .iter()
            .map(|h| h.daemon.map(Daemon::recorded))
            .collect();
        Ok(Testnet {
            state,
            daemons,
            overlayd: None,
            overlayctl: None,
            owns_run: false,
            timings: UpTimings::default(),
        })
    }

    /// How long the steps of [`Testnet::up`] took (all zero for an attached run).
    pub fn timings(&self) -> UpTimings {
        self.timings
    }

    /// Tears the run down: daemons (SIGTERM, then SIGKILL after 5 s), every process left in
    /// its namespaces, the namespaces, the run directory.
    pub fn down(mut self) -> Result<()> {
        self.owns_run = false;
        self.teardown()
    }

    /// Removes run `prefix`, alive or not, also when its state is missing or unreadable
    /// (after a crash). Returns the namespaces deleted (empty if nothing was up).
    pub fn down_prefix(prefix: &str) -> Result<Vec<String>> {
        names::validate_prefix(prefix)?;
        let state = State::load(prefix).ok().flatten();
        cleanup::remove_run(prefix, state.as_ref())
    }

    /// Removes dead runs: for each run directory in `/run/testnet` (or only `prefix_filter`)
    /// whose run is not alive, kills what still runs in its namespaces, deletes them and
    /// the directory. A run is alive while the process that owns it runs, or, once
    /// persisted, while one of its daemons runs (or it never started any). Namespaces of
    /// other prefixes are never touched. Returns the namespaces deleted.
    pub fn cleanup_leftovers(prefix_filter: Option<&str>) -> Result<Vec<String>> {
        cleanup::cleanup_leftovers(prefix_filter)
    }

    /// Lets the run outlive this value (and this process): drop no longer tears it down.
    pub fn persist(&mut self) -> Result<()> {
        self.owns_run = false;
        self.state.persisted = true;
        self.state.owner = None;
        self.state.save()
    }

    /// Whether another process may still be using run `prefix` (see
    /// [`Testnet::cleanup_leftovers`] for the rule).
    pub fn is_alive(prefix: &str) -> Result<bool> {
        names::validate_prefix(prefix)?;
        Ok(State::load(prefix)?.is_some_and(|s| s.alive()))
    }

    /// The namespaces of this run that exist now, containers first, the switch last.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        cleanup::run_namespaces(&self.state.prefix)
    }

    /// The namespace prefix of this run.
    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.state.hosts
    }

    /// Containers per host.
    pub fn containers(&self) -> usize {
        self.state.containers
    }

    /// How the hosts know each other.
    pub fn mode(&self) -> Mode {
        self.state.mode
    }

    /// UDP port of every host's control plane (gossip mode): [`CONTROL_PORT`](crate::CONTROL_PORT),
    /// or [`LISTEN_PORT`](crate::LISTEN_PORT) when the run shares one port
    /// ([`Options::one_port`]).
    pub fn control_port(&self) -> u16 {
        if self.state.one_port {
            crate::LISTEN_PORT
        } else {
            crate::CONTROL_PORT
        }
    }

    /// `/run/testnet/P`.
    pub fn run_dir(&self) -> PathBuf {
        self.state.run_dir.clone()
    }

    /// Namespace of the underlay switch, `P-ul`.
    pub fn underlay_ns(&self) -> String {
        names::underlay_ns(&self.state.prefix)
    }

    /// Namespace of host `i`, `P-hI`.
    pub fn host_ns(&self, i: usize) -> String {
        names::host_ns(&self.state.prefix, i)
    }

    /// Namespace of container `j` of host `i`, `P-hI-cJ`.
    pub fn container_ns(&self, i: usize, j: usize) -> String {
        names::container_ns(&self.state.prefix, i, j)
    }

    /// The namespace for `name`: `h1`, `h1-c2`, `ul`, or a full namespace name of this run.
    pub fn resolve(&self, name: &str) -> Result<String> {
        self.kind(name)?;
        let local = name
            .strip_prefix(&format!("{}-", self.state.prefix))
            .unwrap_or(name);
        Ok(format!("{}-{local}", self.state.prefix))
    }

    /// The address of `name`: a container's overlay address, a host's current underlay
    /// address (behind its NAT, if it has one), or a NAT router's (`nI`) public address.
    pub fn addr(&self, name: &str) -> Result<IpAddr> {
        match self.kind(name)? {
            NsKind::Host(i) => Ok(self.state.host[i - 1].underlay.into()),
            NsKind::Container(i, j) => Ok(self.state.host[i - 1].containers[j - 1].address.into()),
            NsKind::Nat(i) => Ok(self.public_addr(i)?.into()),
            NsKind::Underlay => bail!("the underlay switch `ul` has no address"),
        }
    }

    /// A command that runs `args` in `name`'s namespace, as `testnet exec` does: for a host,
    /// env `OVERLAYD_SOCKET` is its API socket; `PATH` starts with the directories of
    /// `overlayd` and `overlayctl`.
    pub fn command(&self, name: &str, args: &[&str]) -> Result<Command> {
        let kind = self.kind(name)?;
        if args.is_empty() {
            bail!("no command given to run in {name}");
        }
        let mut cmd = cmd::in_netns(&self.resolve(name)?, args);
        if let NsKind::Host(i) = kind {
            cmd.env("OVERLAYD_SOCKET", self.socket_path(i));
        }
        if let Some(path) = self.search_path() {
            cmd.env("PATH", path);
        }
        Ok(cmd)
    }

    /// Runs `args` in `name`'s namespace and waits; a non-zero exit is not an error (check
    /// `status`).
    pub fn exec(&self, name: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(name, args)?;
        cmd.stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", cmd::show(&cmd)))
    }

    /// Starts `args` in `name`'s namespace in the background, stdout and stderr piped. The
    /// caller owns the child; teardown kills it if it still runs in the run's namespaces.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Result<Child> {
        let mut cmd = self.command(name, args)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::show(&cmd)))
    }

    /// `/run/testnet/P/hI`.
    pub fn host_dir(&self, i: usize) -> PathBuf {
        self.state.run_dir.join(format!("h{i}"))
    }

    /// The host's `overlayd.toml`.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.host_dir(i).join("overlayd.toml")
    }

    /// The host's `overlayd.log` (daemon stdout and stderr, appended across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.host_dir(i).join("overlayd.log")
    }

    /// The host's API socket.
    pub fn socket_path(&self, i: usize) -> PathBuf {
        self.host_dir(i).join("overlayd.sock")
    }

    /// The host's state directory (gossip mode), `/run/testnet/P/hI/state`: the daemon keeps
    /// its certificate, the network's members and revocations there across restarts.
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.host_dir(i).join("state")
    }

    /// The host's private key file (0600).
    pub fn key_path(&self, i: usize) -> PathBuf {
        self.host_dir(i).join("private.key")
    }

    /// The host's public key.
    pub fn public_key(&self, i: usize) -> Result<keys::PublicKey> {
        let text = &self.host(i)?.public_key;
        text.parse()
            .with_context(|| format!("h{i} has no valid public key recorded"))
    }

    /// Runs `overlayctl --socket <host i's API socket> args` in host `i`'s namespace and
    /// waits; a non-zero exit is not an error (check `status`).
    pub fn overlayctl(&self, i: usize, args: &[&str]) -> Result<Output> {
        self.host(i)?;
        let binary = match &self.overlayctl {
            Some(path) => path.clone(),
            None => cmd::require_project_binary("overlayctl", "OVERLAYCTL_BIN")?,
        };
        let mut cmd = cmd::in_netns(&self.host_ns(i), &[binary.as_os_str()]);
        cmd.arg("--socket").arg(self.socket_path(i)).args(args);
        cmd.stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", cmd::show(&cmd)))
    }

    /// Host `i` as recorded, or an error naming the hosts there are.
    pub(crate) fn host(&self, i: usize) -> Result<&HostState> {
        i.checked_sub(1)
            .and_then(|index| self.state.host.get(index))
            .with_context(|| format!("no host {i}: this run has hosts 1 to {}", self.state.hosts))
    }

    /// What `name` denotes, checked against this run's sizes.
    fn kind(&self, name: &str) -> Result<NsKind> {
        let local = name
            .strip_prefix(&format!("{}-", self.state.prefix))
            .unwrap_or(name);
        let kind = names::parse_local(local).filter(|kind| match *kind {
            NsKind::Underlay => true,
            NsKind::Host(i) => i <= self.state.hosts,
            NsKind::Nat(i) => self.state.host.get(i - 1).is_some_and(|h| h.nat.is_some()),
            NsKind::Container(i, j) => i <= self.state.hosts && j <= self.state.containers,
        });
        kind.with_context(|| {
            let containers = match self.state.containers {
                0 => String::new(),
                m => format!(", h1-c1 .. h{}-c{m}", self.state.hosts),
            };
            let nats: Vec<String> = (self.state.host.iter())
                .enumerate()
                .filter(|(_, h)| h.nat.is_some())
                .map(|(i, _)| format!(", n{}", i + 1))
                .collect();
            format!(
                "unknown name {name:?}: this run has h1 .. h{}{containers}{} and ul",
                self.state.hosts,
                nats.concat()
            )
        })
    }

    /// `PATH` with the directories of `overlayd` and `overlayctl` first.
    fn search_path(&self) -> Option<OsString> {
        let binaries = [
            self.overlayd
                .clone()
                .or_else(|| cmd::project_binary("overlayd", "OVERLAYD_BIN")),
            self.overlayctl
                .clone()
                .or_else(|| cmd::project_binary("overlayctl", "OVERLAYCTL_BIN")),
        ];
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in binaries.iter().flatten().filter_map(|b| b.parent()) {
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        if dirs.is_empty() {
            return None;
        }
        dirs.extend(env::var_os("PATH").iter().flat_map(env::split_paths));
        env::join_paths(dirs).ok()
    }

    fn teardown(&mut self) -> Result<()> {
        let prefix = self.state.prefix.clone();
        let mut daemons: Vec<&mut Daemon> = self.daemons.iter_mut().flatten().collect();
        let result = cleanup::teardown_run(&prefix, &mut daemons);
        for slot in &mut self.daemons {
            *slot = None;
        }
        result
            .map(|_| ())
            .with_context(|| format!("cannot tear down testnet run {prefix}"))
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if self.owns_run
            && let Err(e) = self.teardown()
        {
            eprintln!("testnet: {e:#}");
        }
    }
}

/// Picks the prefix and creates the run directory with the initial state.
fn claim_prefix(opts: &Options) -> Result<State> {
    if let Some(prefix) = &opts.prefix {
        names::validate_prefix(prefix)?;
        let state = State::plan(
            prefix,
            opts.hosts,
            opts.containers,
            opts.mode,
            opts.detach_daemons,
            &opts.nat,
        );
        if !state.create_run_dir()? {
            bail!(
                "a testnet run with prefix {prefix} exists ({}); remove it with `testnet down --prefix {prefix}`",
                state.run_dir.display()
            );
        }
        return Ok(state);
    }
    for _ in 0..PREFIX_ATTEMPTS {
        let prefix = names::random_prefix()?;
        let state = State::plan(
            &prefix,
            opts.hosts,
            opts.containers,
            opts.mode,
            opts.detach_daemons,
            &opts.nat,
        );
        if state.create_run_dir()? {
            return Ok(state);
        }
    }
    bail!(
        "no free prefix found in {PREFIX_ATTEMPTS} attempts; clean /run/testnet with `testnet down`"
    )
}
