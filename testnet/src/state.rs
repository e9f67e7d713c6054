//! `state.json`: what a run is made of and which processes belong to it, so that the CLI can
//! attach to a run and a later cleanup can tell a live run from a dead one.

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::Mode;
use crate::names::{self, RUN_ROOT};
use crate::nat::{NatSpec, NatState};
use crate::proc::ProcId;

/// File name of the state inside the run directory.
const STATE_FILE: &str = "state.json";

/// A run as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub prefix: String,
    pub run_dir: PathBuf,
    /// Number of hosts (N).
    pub hosts: usize,
    /// Containers per host (M).
    pub containers: usize,
    /// How the hosts know each other; runs recorded before modes existed were static.
    #[serde(default = "static_mode")]
    pub mode: Mode,
    /// The run outlives its owner (the CLI's runs); it is then alive while its daemons are.
    pub persisted: bool,
    /// The process whose `Testnet` owns the run; a run that is not persisted dies with it.
    pub owner: Option<ProcId>,
    /// Whether the daemons run in their own sessions (they outlive the process that started
    /// them).
    pub detach_daemons: bool,
    /// Gossip mode: extra ranges `overlayctl init` gets (`--range`), beside
    /// [`NETWORK_CIDR`](crate::NETWORK_CIDR).
    #[serde(default)]
    pub ranges: Vec<String>,
    /// The run relies on the kernel's neighbour table limits that testnet raised (see
    /// [`crate::neigh`]): while it is up, they are not put back.
    #[serde(default)]
    pub neigh_limits: bool,
    /// Gossip mode: the control plane shares the tunnels' port on every host.
    #[serde(default)]
    pub one_port: bool,
    /// Per host, index 0 is host 1.
    pub host: Vec<HostState>,
}

/// One host as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HostState {
    /// `hI`.
    pub name: String,
    pub netns: String,
    /// Current address on `ul0` (changes when the host roams).
    pub underlay: Ipv4Addr,
    /// `10.42.I.1`, on the container bridge and in the daemon's config.
    pub overlay: Ipv4Addr,
    /// `10.42.I.0/24`.
    pub subnet: String,
    /// Base64, empty until the key is made.
    pub public_key: String,
    /// The running daemon, if any.
    pub daemon: Option<ProcId>,
    /// The NAT router in front of it, if any (`underlay` is then its address behind it).
    #[serde(default)]
    pub nat: Option<NatState>,
    pub containers: Vec<ContainerState>,
}

/// One container as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContainerState {
    /// `hI-cJ`.
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
}

impl State {
    /// The plan for a new run (no keys, no daemons yet). A host behind a NAT in `nat` gets
    /// `198.19.I.2` and its NAT the public address it would have had.
    pub fn plan(
        prefix: &str,
        hosts: usize,
        containers: usize,
        mode: Mode,
        detach_daemons: bool,
        nat: &[NatSpec],
    ) -> State {
        let host = (1..=hosts)
            .map(|i| (i, nat.iter().find(|n| n.host == i)))
            .map(|(i, nat)| HostState {
                name: format!("h{i}"),
                netns: names::host_ns(prefix, i),
                underlay: match nat {
                    Some(_) => names::nat_lan_addr(i),
                    None => names::underlay_addr(i),
                },
                nat: nat.map(|n| NatState {
                    kind: n.kind,
                    public: names::underlay_addr(i),
                }),
                overlay: names::host_overlay_addr(i),
                subnet: names::host_subnet(i),
                public_key: String::new(),
                daemon: None,
                containers: (1..=containers)
                    .map(|j| ContainerState {
                        name: format!("h{i}-c{j}"),
                        netns: names::container_ns(prefix, i, j),
                        address: names::container_addr(i, j),
                    })
                    .collect(),
            })
            .collect();
        State {
            prefix: prefix.to_owned(),
            run_dir: names::run_dir(prefix),
            hosts,
            containers,
            mode,
            persisted: false,
            owner: ProcId::current(),
            detach_daemons,
            ranges: Vec::new(),
            neigh_limits: false,
            one_port: false,
            host,
        }
    }

    /// Reads the state of run `prefix`; `Ok(None)` when there is none.
    pub fn load(prefix: &str) -> Result<Option<State>> {
        let path = names::run_dir(prefix).join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a testnet state file", path.display()))?;
        Ok(Some(state))
    }

    /// Writes the state (atomically: a reader sees the old or the new file).
    pub fn save(&self) -> Result<()> {
        write_state(&self.run_dir, self)
    }

    /// Creates the run directory holding this state in one step, so that no run directory
    /// is ever seen without its state. Returns `false` if the run directory already exists.
    pub fn create_run_dir(&self) -> Result<bool> {
        fs::create_dir_all(RUN_ROOT).with_context(|| format!("cannot create {RUN_ROOT}"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = Path::new(RUN_ROOT).join(format!(
            ".new-{}-{}-{nanos}",
            self.prefix,
            std::process::id()
        ));
        fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let result = write_state(&tmp, self).and_then(|()| {
            match fs::rename(&tmp, &self.run_dir) {
                Ok(()) => Ok(true),
                // rename(2) replaces an empty directory, not one with a state in it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    Ok(false)
                }
                Err(e) => Err(e).with_context(|| {
                    format!("cannot create run directory {}", self.run_dir.display())
                }),
            }
        });
        if !matches!(result, Ok(true)) {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Whether the run is alive: its owner runs, or (for a persisted run) a daemon runs or
    /// none was recorded.
    pub fn alive(&self) -> bool {
        if !self.persisted {
            return self.owner.is_some_and(|o| o.alive());
        }
        let mut daemons = self.host.iter().filter_map(|h| h.daemon).peekable();
        daemons.peek().is_none() || daemons.any(|d| d.alive())
    }
}

fn static_mode() -> Mode {
    Mode::Static
}

fn write_state(dir: &Path, state: &State) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_string_pretty(state)?;
    fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Prefixes that have a run directory under [`RUN_ROOT`].
pub(crate) fn run_prefixes() -> Result<Vec<String>> {
    let entries = match fs::read_dir(RUN_ROOT) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {RUN_ROOT}")),
    };
    let mut prefixes = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {RUN_ROOT}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && names::validate_prefix(&name).is_ok() {
            prefixes.push(name);
        }
    }
    prefixes.sort();
    Ok(prefixes)
}
