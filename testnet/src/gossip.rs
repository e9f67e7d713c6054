//! Gossip mode: forming the network with `overlayctl` as an operator would (`init` on h1, a
//! token from h1 and `join` on each other host), and reading what each daemon sees
//! (`peers --json`, `status --json`, the host's routes), with waits that poll with a
//! deadline. Host `I` is always member `hI` with subnet `10.42.I.0/24`.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use protocol::api::{MemberState, PeerStatus, Status};

use crate::names;
use crate::proc::{parallel, poll_every};
use crate::{NETWORK, NETWORK_CIDR, Testnet};

/// How long [`Testnet::up`] waits for the members to see each other alive and ping: 30 s,
/// and 0.5 s more per member (a large network on two cores takes longer to settle).
pub(crate) fn converge_timeout(members: usize) -> Duration {
    Duration::from_secs(30)
        + Duration::from_millis(500) * u32::try_from(members).unwrap_or(u32::MAX)
}
/// Joins run at once while forming a network (see [`Testnet::form_network`]).
pub const JOIN_BATCH: usize = 16;
/// `token create` calls at once (each waits on `ip netns exec` more than on the admin).
const TOKEN_THREADS: usize = 4;
/// Threads that ask the daemons at once.
const CHECK_THREADS: usize = 8;
/// Hosts that ping at once (each pings every other at once).
const PING_THREADS: usize = 4;
/// Validity of the tokens [`Testnet::join_host`] makes (overlayctl's duration syntax).
pub const JOIN_TOKEN_TTL: &str = "10m";
/// How often the waits below ask the daemons.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

impl Testnet {
    /// Host `i`'s node name in the network: `hI`.
    pub fn member_name(i: usize) -> String {
        format!("h{i}")
    }

    /// Runs `overlayctl args` on host `i` and fails unless it exits 0, with its stderr.
    pub fn overlayctl_ok(&self, i: usize, args: &[&str]) -> Result<Output> {
        let out = self.overlayctl(i, args)?;
        if !out.status.success() {
            bail!(
                "h{i}: `overlayctl {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// `overlayctl init --network testnet --cidr 10.42.0.0/16 --name h1 --subnet
    /// 10.42.1.0/24` on h1, with a `--range R` for each of
    /// [`Options::ranges`](crate::Options::ranges): h1 becomes the network's first member
    /// and its admin.
    pub fn init_network(&self) -> Result<()> {
        let subnet = names::host_subnet(1);
        let name = Testnet::member_name(1);
        let mut args = vec![
            "init",
            "--network",
            NETWORK,
            "--cidr",
            NETWORK_CIDR,
            "--name",
            &name,
            "--subnet",
            &subnet,
        ];
        for range in &self.state.ranges {
            args.extend(["--range", range.as_str()]);
        }
        self.overlayctl_ok(1, &args)?;
        Ok(())
    }

    /// `overlayctl token create --ttl TTL` on h1 (the admin); returns the token.
    pub fn create_token(&self, ttl: &str) -> Result<String> {
        let out = self.overlayctl_ok(1, &["token", "create", "--ttl", ttl])?;
        let text = String::from_utf8(out.stdout).context("h1: the token is not UTF-8")?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            bail!("h1: `overlayctl token create` printed {text:?}, not one token");
        }
        Ok(token.to_owned())
    }

    /// `overlayctl join TOKEN --name hI --subnet 10.42.I.0/24` on host `i`; a refusal is not
    /// an error (check `status`), so tests can check refusals.
    pub fn join_with(&self, i: usize, token: &str) -> Result<Output> {
        let (name, subnet) = (Testnet::member_name(i), names::host_subnet(i));
        self.overlayctl(i, &["join", token, "--name", &name, "--subnet", &subnet])
    }

    /// Adds host `i` to the network as an operator would: a token from h1, then `join` on
    /// host `i`. Returns the instant `join` returned (the host is then a member).
    pub fn join_host(&self, i: usize) -> Result<Instant> {
        if i == 1 {
            bail!("h1 does not join: it made the network (`overlayctl init`)");
        }
        let token = self.create_token(JOIN_TOKEN_TTL)?;
        let out = self.join_with(i, &token)?;
        let joined = Instant::now();
        if !out.status.success() {
            bail!(
                "h{i}: `overlayctl join` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(joined)
    }

    /// Host `i`'s `overlayctl peers --json`.
    pub fn peers_json(&self, i: usize) -> Result<Vec<PeerStatus>> {
        let out = self.overlayctl_ok(i, &["peers", "--json"])?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "h{i}: `overlayctl peers --json` printed no peer list: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        })
    }

    /// Host `i`'s `overlayctl status --json`.
    pub fn status_json(&self, i: usize) -> Result<Status> {
        let out = self.overlayctl_ok(i, &["status", "--json"])?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "h{i}: `overlayctl status --json` printed no status: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        })
    }

    /// The state in which host `observer` sees member `hM`; `None` if it does not list it.
    pub fn member_state(&self, observer: usize, member: usize) -> Result<Option<MemberState>> {
        let name = Testnet::member_name(member);
        Ok(self
            .peers_json(observer)?
            .into_iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.state))
    }

    /// Polls until host `observer` sees member `hM` in `state`, for up to `timeout`. Returns
    /// how long it took; the error says what the observer saw last.
    pub fn wait_member_state(
        &self,
        observer: usize,
        member: usize,
        state: MemberState,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = Ok(None);
        let reached = poll_every(POLL_INTERVAL, timeout, || {
            last = self.member_state(observer, member);
            matches!(last, Ok(Some(s)) if s == state)
        });
        if reached {
            return Ok(start.elapsed());
        }
        let seen = match last {
            Ok(Some(s)) => format!("it sees it {}", s.as_str()),
            Ok(None) => "it does not list it".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        bail!(
            "h{observer} does not see h{member} {} after {:.1} s: {seen}",
            state.as_str(),
            start.elapsed().as_secs_f64()
        )
    }

    /// Host `i`'s IPv4 routes (`ip -4 route show` in its namespace), one per line.
    pub fn routes(&self, i: usize) -> Result<String> {
        let out = self.exec(&Testnet::member_name(i), &["ip", "-4", "route", "show"])?;
        if !out.status.success() {
            bail!(
                "h{i}: `ip -4 route show` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether host `observer` has a route for member `hM`'s subnet `10.42.M.0/24` (its own
    /// bridge's route counts for itself).
    pub fn has_route_to(&self, observer: usize, member: usize) -> Result<bool> {
        let subnet = names::host_subnet(member);
        Ok(self
            .routes(observer)?
            .lines()
            .any(|l| l.split_whitespace().next() == Some(subnet.as_str())))
    }

    /// Polls until every host in `hosts` lists every other as alive, then until from each
    /// of them every other answers a ping (container `c1` to container `c1`, or host to host
    /// overlay address when there are no containers); all within `timeout`. Returns how
    /// long it took; the error names the host that is not ready and what it sees.
    ///
    /// The hosts are asked in parallel, through their API sockets, and each host pings all
    /// the others at once, so that 100 hosts (9,900 pairs) take seconds, not minutes.
    pub fn wait_converged(&self, hosts: &[usize], timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.wait_alive(hosts, start + timeout)?;
        self.wait_pings(hosts, start, start + timeout)?;
        Ok(start.elapsed())
    }

    /// The first half of [`Testnet::wait_converged`]: polls until every host in `hosts`
    /// lists every other as alive, or `deadline`. Returns how long it took.
    pub fn wait_alive(&self, hosts: &[usize], deadline: Instant) -> Result<Duration> {
        let start = Instant::now();
        let views = parallel(hosts, CHECK_THREADS, |&observer| {
            let others: Vec<usize> = hosts.iter().copied().filter(|&m| m != observer).collect();
            let seen = poll_every(
                POLL_INTERVAL,
                deadline.saturating_duration_since(Instant::now()),
                || self.sees_alive(observer, &others).unwrap_or(false),
            );
            (observer, seen)
        });
        if let Some((observer, _)) = views.iter().find(|(_, seen)| !seen) {
            bail!(
                "h{observer} does not see every other host alive after {:.1} s; {}",
                start.elapsed().as_secs_f64(),
                self.describe_view(*observer)
            );
        }
        Ok(start.elapsed())
    }

    /// The second half of [`Testnet::wait_converged`]: from each host in `hosts` every
    /// other answers a ping, or `deadline`; errors are timed from `start`.
    pub fn wait_pings(&self, hosts: &[usize], start: Instant, deadline: Instant) -> Result<()> {
        let pings = parallel(hosts, PING_THREADS, |&from| {
            let targets: Vec<usize> = hosts.iter().copied().filter(|&t| t != from).collect();
            (from, self.ping_all(from, &targets, deadline))
        });
        for (from, result) in pings {
            let silent = result?;
            if let Some(&to) = silent.first() {
                bail!(
                    "{} cannot ping h{to} ({}) {:.1} s after the network formed ({} hosts silent); {}",
                    self.probe_name(from),
                    self.probe_target(to)?,
                    start.elapsed().as_secs_f64(),
                    silent.len(),
                    self.describe_view(from)
                );
            }
        }
        Ok(())
    }

    /// Whether host `observer` lists every member in `members` as alive (one API call).
    pub fn sees_alive(&self, observer: usize, members: &[usize]) -> Result<bool> {
        // A network of one sees everyone it must (and a test's stand-in daemon may serve
        // no API to ask).
        if members.is_empty() {
            return Ok(true);
        }
        let peers = self.peers_api(observer)?;
        Ok(members.iter().all(|&m| {
            let name = Testnet::member_name(m);
            peers.iter().any(|p| {
                p.name.as_deref() == Some(name.as_str()) && p.state == Some(MemberState::Alive)
            })
        }))
    }

    /// Pings every host in `targets` from host `from` (see [`Testnet::wait_converged`] for
    /// what pings what), all at once, again and again for those that did not answer, until
    /// every one has or `deadline` passes. Returns the hosts that never answered.
    pub fn ping_all(
        &self,
        from: usize,
        targets: &[usize],
        deadline: Instant,
    ) -> Result<Vec<usize>> {
        // Each target in its own background ping; the script prints the silent ones.
        const SCRIPT: &str =
            r#"for t in "$@"; do (ping -c1 -W1 -q "$t" >/dev/null 2>&1 || echo "$t") & done; wait"#;
        let source = self.probe_name(from);
        let mut silent: Vec<(usize, String)> = targets
            .iter()
            .map(|&t| Ok((t, self.probe_target(t)?)))
            .collect::<Result<_>>()?;
        loop {
            let mut args = vec!["sh", "-c", SCRIPT, "sh"];
            args.extend(silent.iter().map(|(_, addr)| addr.as_str()));
            let out = self.exec(&source, &args)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let still: Vec<&str> = text.split_whitespace().collect();
            silent.retain(|(_, addr)| still.contains(&addr.as_str()));
            if silent.is_empty() || Instant::now() >= deadline {
                return Ok(silent.into_iter().map(|(t, _)| t).collect());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Makes hosts 1 to `members` the network: init on h1, a token per other host made up
    /// front on h1, then `join` on the others, [`JOIN_BATCH`] at a time, then waits until
    /// they see each other alive and ping.
    ///
    /// Joins in batches because one after another 100 hosts take minutes; the batch stays
    /// within the admin's limit of 16 joins in flight (handshakes from unvalidated
    /// addresses), beyond which joiners would get QUIC Retries.
    pub(crate) fn form_network(&mut self, members: usize) -> Result<()> {
        if members == 0 {
            return Ok(());
        }
        let started = Instant::now();
        self.init_network()?;
        let joiners: Vec<usize> = (2..=members).collect();
        let tokens = parallel(&joiners, TOKEN_THREADS, |_| {
            self.create_token(JOIN_TOKEN_TTL)
        })
        .into_iter()
        .collect::<Result<Vec<String>>>()?;
        let work: Vec<(usize, &String)> = joiners.iter().copied().zip(&tokens).collect();
        for batch in work.chunks(JOIN_BATCH) {
            let answers = parallel(batch, JOIN_BATCH, |&(i, token)| {
                let out = self.join_with(i, token)?;
                if !out.status.success() {
                    bail!(
                        "h{i}: `overlayctl join` failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Ok(())
            });
            answers.into_iter().collect::<Result<()>>()?;
        }
        self.timings.join = started.elapsed();
        let hosts: Vec<usize> = (1..=members).collect();
        let start = Instant::now();
        let deadline = start + converge_timeout(members);
        self.timings.alive = self
            .wait_alive(&hosts, deadline)
            .context("the network did not come together")?;
        self.wait_pings(&hosts, start, deadline)
            .context("the network did not come together")?;
        self.timings.converge = start.elapsed();
        Ok(())
    }

    /// One line saying how host `i` sees the others, for error messages.
    fn describe_view(&self, i: usize) -> String {
        match self.peers_json(i) {
            Ok(peers) => {
                let seen: Vec<String> = peers
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {}",
                            p.name.as_deref().unwrap_or("(static)"),
                            p.state.map_or("-", MemberState::as_str)
                        )
                    })
                    .collect();
                format!("h{i} lists [{}]", seen.join(", "))
            }
            Err(e) => format!("{e:#}"),
        }
    }

    /// Where to ping from on host `i`: its first container, else the host.
    fn probe_name(&self, i: usize) -> String {
        if self.containers() > 0 {
            format!("h{i}-c1")
        } else {
            Testnet::member_name(i)
        }
    }

    /// What to ping on host `i`: its first container's address, else its overlay address.
    fn probe_target(&self, i: usize) -> Result<String> {
        Ok(match self.containers() {
            0 => self.host(i)?.overlay.to_string(),
            _ => self.addr(&format!("h{i}-c1"))?.to_string(),
        })
    }
}
