//! A network of membership cores in memory, on a virtual clock: what the driver does for a
//! core (connections, datagrams, streams, saved state, routes, the view), done by passing
//! values between cores. No sockets, no tasks, no root. Deterministic: every core's seed
//! is fixed and time moves only in [`STEP`]s.
//!
//! Each host has a control address on 198.18.0.0/15; a connection is a pair of links, one
//! registered with each core. Datagrams, pushes and syncs are delivered at the instant they
//! are sent, in order. A host can be partitioned (nothing reaches it or leaves it), made
//! deaf to gossip (its datagrams are lost, streams still work), stalled (what is sent to it
//! waits, as in its socket buffers, and its timers do not run until it resumes), crashed,
//! and restarted from what it saved.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use keys::{CaKey, Name, NodeCertificate, PrivateKey, SigningKey};
use protocol::records::{Directory, MemberRecord, MemberState, SignedMemberRecord};

use super::super::super::inbound::prefilter;
use super::super::{
    Action, Answer, CloseReason, Core, LinkId, Now, Origin, PolicyInForce, Settings, Start,
    Throttle,
};
use crate::control::View;
use crate::control::admin::Issuer;
use crate::control::msg::{Bundle, Request, Response};
use crate::control::state::{AdminState, NetworkState};
use crate::router::PeerSpec;

/// The wall-clock time every simulation starts at (unix seconds).
pub(super) const START_UNIX: u64 = 1_800_000_000;
/// How far the clock moves between two rounds of timers.
pub(super) const STEP: Duration = Duration::from_millis(10);
/// The control port of every host.
const CONTROL_PORT: u16 = 51821;

/// The network: its CA and name.
pub(super) struct Network {
    pub(super) ca: CaKey,
    pub(super) name: Name,
    /// How long its certificates are valid.
    pub(super) lifetime_s: u64,
}

impl Network {
    pub(super) fn issuer(&self) -> Issuer<'_> {
        Issuer {
            ca: &self.ca,
            network: &self.name,
            cidr: "10.42.0.0/16".parse().expect("a CIDR"),
            ranges: &[],
            subnet_prefix: 24,
            certificate_lifetime_s: self.lifetime_s,
        }
    }
}

/// A host's keys and address.
pub(super) struct Keys {
    pub(super) control: SigningKey,
    pub(super) wireguard: PrivateKey,
    pub(super) addr: SocketAddr,
}

impl Keys {
    /// New keys for host number `index` (its address).
    pub(super) fn new(index: usize) -> Keys {
        Keys {
            control: SigningKey::generate(),
            wireguard: PrivateKey::generate(),
            addr: control_addr(index),
        }
    }
}

/// The control address of host number `index`.
pub(super) fn control_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 11 + index as u8], CONTROL_PORT))
}

/// One host: its core (`None` while crashed or once it left) and what its driver keeps.
pub(super) struct Host {
    pub(super) keys: Keys,
    pub(super) core: Option<Core>,
    /// The membership and directory it saved last.
    pub(super) saved: (NetworkState, Option<Directory>),
    /// The members it routes (its last [`Action::Peers`]).
    pub(super) peers: Vec<PeerSpec>,
    pub(super) view: View,
    /// Its connections: its link → the other host and that host's link.
    pub(super) links: HashMap<LinkId, (usize, LinkId)>,
    /// The connections it closed, and why.
    pub(super) closed: Vec<(LinkId, CloseReason)>,
    /// Full syncs it asked for.
    pub(super) syncs: usize,
    /// Admin only: the state it saved last.
    pub(super) admin: Option<AdminState>,
    /// The policy it enforces (its last [`Action::Policy`]).
    pub(super) policy: Option<PolicyInForce>,
    /// How its key rotations ended ([`Action::RotationDone`]), and the keys it switched to
    /// ([`Action::WireguardKey`]), in order.
    pub(super) rotations: Vec<Result<protocol::api::RotateKeyResponse, String>>,
    pub(super) switched_to: Vec<keys::PublicKey>,
    /// How often its core asked for an automatic rotation ([`Action::RotateKey`]).
    pub(super) rotate_asked: usize,
}

impl Host {
    pub(super) fn core(&mut self) -> &mut Core {
        self.core.as_mut().expect("the host is running")
    }

    /// The name of every member it routes.
    pub(super) fn routed(&self) -> Vec<String> {
        let mut names: Vec<String> = self.peers.iter().filter_map(|p| p.name.clone()).collect();
        names.sort();
        names
    }

    /// What its view says of member `name`.
    pub(super) fn state_of(&self, name: &str) -> Option<protocol::api::MemberState> {
        self.view
            .members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.state)
    }
}

/// Something in flight between two hosts.
enum Delivery {
    Datagram(usize, LinkId, Bytes),
    Push(usize, LinkId, Bundle),
    /// From, to, the link at `to`, the bundle.
    Sync(usize, usize, LinkId, Bundle),
    /// From, its link, to, the link at `to`, the request (`Renew`, `Reissued`), and the
    /// member number a `Reissued` is for.
    Ask(usize, LinkId, usize, LinkId, Box<Request>, u32),
}

/// The simulated network.
pub(super) struct Sim {
    pub(super) network: Network,
    pub(super) hosts: Vec<Host>,
    start: Instant,
    elapsed: Duration,
    queue: VecDeque<Delivery>,
    /// Hosts nothing reaches and nothing leaves.
    pub(super) partitioned: HashSet<usize>,
    /// Hosts whose incoming gossip datagrams are lost.
    pub(super) deaf: HashSet<usize>,
    /// Hosts that do nothing; what is sent to them waits in `held`.
    stalled: HashSet<usize>,
    held: VecDeque<Delivery>,
    /// The last gossip datagram sent from one host to another.
    pub(super) last_datagram: HashMap<(usize, usize), Bytes>,
    /// Every core's `sync_interval` (the config's default unless a test set another
    /// before its hosts started: [`Sim::with_sync_interval`]).
    pub(super) sync_interval: Duration,
    /// The lifetime of the certificates the admin issues (the config's default unless a
    /// test set another: [`Sim::with_lifetime`]).
    pub(super) lifetime_s: u64,
    /// Every core has one UDP port (its control port is its tunnels' too): set before the
    /// hosts start (or restart them).
    pub(super) one_port: bool,
    /// Hosts behind a NAT: seen from outside at [`nat_addr`], and no connection to them
    /// opens unless they punched towards the dialer within the last second (a
    /// simultaneous open).
    pub(super) natted: HashSet<usize>,
    /// Punches fired ([`Action::Punch`]): from, to, when.
    pub(super) punches: Vec<(usize, usize, Instant)>,
}

/// Where host `index` is seen from outside when it is behind a NAT.
pub(super) fn nat_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 11 + index as u8], CONTROL_PORT))
}

/// The settings of every core: the config's defaults, the address fixed.
pub(super) fn settings() -> Settings {
    let control = crate::config::Control::default();
    Settings {
        control_port: CONTROL_PORT,
        listen_port: 51820,
        certificate_lifetime_s: control.certificate_lifetime(),
        follow_address: false,
        sync_interval: Duration::from_millis(control.sync_interval_ms),
        rejoin_interval: Duration::from_millis(control.rejoin_interval_ms),
        membership: control.membership(),
        relay: None,
        max_names: protocol::records::names::DEFAULT_MAX_NAMES,
        key_rotation_s: None,
    }
}

impl Sim {
    /// `hosts` members, host 0 the admin (it made the network); every other one knows only
    /// the admin's address, as a host that just joined does. Not yet run.
    pub(super) fn new(hosts: usize) -> Sim {
        Sim::with_sync_interval(hosts, settings().sync_interval)
    }

    /// Like [`Sim::new`], every core with full syncs `sync_interval` apart.
    pub(super) fn with_sync_interval(hosts: usize, sync_interval: Duration) -> Sim {
        Sim::build(hosts, sync_interval, settings().certificate_lifetime_s)
    }

    /// Like [`Sim::new`], with certificates valid for `lifetime_s` (from [`START_UNIX`]).
    pub(super) fn with_lifetime(hosts: usize, lifetime_s: u64) -> Sim {
        Sim::build(hosts, settings().sync_interval, lifetime_s)
    }

    fn build(hosts: usize, sync_interval: Duration, lifetime_s: u64) -> Sim {
        let network = Network {
            ca: CaKey::generate(),
            name: Name::new("simnet").expect("a name"),
            lifetime_s,
        };
        let mut sim = Sim {
            network,
            hosts: Vec::new(),
            start: Instant::now(),
            elapsed: Duration::ZERO,
            queue: VecDeque::new(),
            partitioned: HashSet::new(),
            deaf: HashSet::new(),
            stalled: HashSet::new(),
            held: VecDeque::new(),
            last_datagram: HashMap::new(),
            sync_interval,
            lifetime_s,
            one_port: false,
            natted: HashSet::new(),
            punches: Vec::new(),
        };
        let mut admin = AdminState::default();
        let mut certificates = Vec::new();
        for i in 0..hosts {
            let keys = Keys::new(i);
            let name = Name::new(format!("h{i}")).expect("a name");
            let subnet: IpNet = format!("10.42.{}.0/24", i + 1).parse().expect("a subnet");
            let serial = i as u64 + 1;
            let issuer = sim.network.issuer();
            let certificate = issuer
                .issue(
                    &name,
                    keys.wireguard.public_key(),
                    keys.control.verifying_key(),
                    vec![subnet],
                    Vec::new(),
                    serial,
                    START_UNIX,
                )
                .expect("a certificate");
            issuer.remember(
                &mut admin,
                &name,
                keys.wireguard.public_key(),
                subnet,
                serial,
                START_UNIX,
            );
            certificates.push((keys, certificate));
        }
        for (i, (keys, certificate)) in certificates.into_iter().enumerate() {
            let net = NetworkState {
                network: sim.network.name.clone(),
                cidr: "10.42.0.0/16".parse().expect("a CIDR"),
                ranges: Vec::new(),
                subnet_prefix: 24,
                ca: sim.network.ca.verifying_key(),
                certificate,
                generation: 0,
                record_version: 0,
                left: false,
                renewed_unix: None,
                bootstrap: if i == 0 {
                    Vec::new()
                } else {
                    vec![control_addr(0)]
                },
                ca_transition: None,
                wireguard_key_since: None,
            };
            let admin = (i == 0).then(|| admin.clone());
            sim.add(keys, net, None, admin);
        }
        sim
    }

    /// Starts a host from `net` and `directory` (none: an empty one); an admin if `admin`.
    pub(super) fn add(
        &mut self,
        keys: Keys,
        net: NetworkState,
        directory: Option<Directory>,
        admin: Option<AdminState>,
    ) -> usize {
        let index = self.hosts.len();
        self.hosts.push(Host {
            keys,
            core: None,
            saved: (net, directory),
            peers: Vec::new(),
            view: View::default(),
            links: HashMap::new(),
            closed: Vec::new(),
            syncs: 0,
            admin,
            policy: None,
            rotations: Vec::new(),
            switched_to: Vec::new(),
            rotate_asked: 0,
        });
        self.restart(index);
        index
    }

    /// (Re)starts host `index` from what it saved, as the daemon does.
    pub(super) fn restart(&mut self, index: usize) -> &Core {
        let now = self.now();
        let host = &mut self.hosts[index];
        let (net, directory) = host.saved.clone();
        let me = net
            .certificate
            .verify(&net.ca, now.unix)
            .expect("a current certificate");
        let directory = directory.unwrap_or_else(|| Directory::new(net.ca, net.network.clone()));
        let admin = host
            .admin
            .clone()
            .map(|state| (self.network.ca.clone(), state));
        let core = Core::new(
            Start {
                net,
                me,
                directory,
                control_key: host.keys.control.clone(),
                wireguard_key: host.keys.wireguard.clone(),
                admin,
                advertise: host.keys.addr.ip(),
                settings: Settings {
                    sync_interval: self.sync_interval,
                    certificate_lifetime_s: self.lifetime_s,
                    listen_port: if self.one_port {
                        CONTROL_PORT
                    } else {
                        settings().listen_port
                    },
                    ..settings()
                },
                seed: index as u64 + 1,
            },
            now,
        )
        .expect("a core starts");
        host.saved.0 = core.network().clone();
        host.core = Some(core);
        host.core.as_ref().expect("just set")
    }

    /// Host `index` stops answering at once; its peers' connections to it close (as QUIC's
    /// idle timeout would close them).
    pub(super) fn crash(&mut self, index: usize) {
        self.hosts[index].core = None;
        let links: Vec<(LinkId, (usize, LinkId))> = self.hosts[index].links.drain().collect();
        for (_, (other, theirs)) in links {
            self.close_remote(other, theirs, control_addr(index));
        }
    }

    /// Host `index` stops running (as a process stopped with SIGSTOP).
    pub(super) fn stall(&mut self, index: usize) {
        self.stalled.insert(index);
    }

    /// Host `index` runs again, and reads what waited for it.
    pub(super) fn resume(&mut self, index: usize) {
        self.stalled.remove(&index);
        self.queue.append(&mut self.held);
        self.settle();
    }

    pub(super) fn now(&self) -> Now {
        Now {
            instant: self.start + self.elapsed,
            unix: START_UNIX + self.elapsed.as_secs(),
        }
    }

    /// Runs every host for `duration`, calling `watch` after each step.
    pub(super) fn run_watching(&mut self, duration: Duration, mut watch: impl FnMut(&Sim)) {
        let end = self.elapsed + duration;
        while self.elapsed < end {
            self.elapsed += STEP;
            let now = self.now();
            for (index, host) in self.hosts.iter_mut().enumerate() {
                if let Some(core) = host.core.as_mut()
                    && !self.stalled.contains(&index)
                    && core.poll_timeout() <= now.instant
                {
                    core.handle_timeout(now);
                }
            }
            self.settle();
            watch(self);
        }
    }

    pub(super) fn run(&mut self, duration: Duration) {
        self.run_watching(duration, |_| {});
    }

    /// Carries out every host's actions and delivers what is in flight, until nothing is.
    pub(super) fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut busy = false;
            for index in 0..self.hosts.len() {
                while let Some(action) = self.hosts[index].core.as_mut().and_then(Core::poll_action)
                {
                    self.act(index, action);
                    busy = true;
                }
            }
            while let Some(delivery) = self.queue.pop_front() {
                self.deliver(delivery);
                busy = true;
            }
            if !busy {
                return;
            }
        }
        panic!("the simulated network never settles");
    }

    /// Carries out `actions`, taken from host `index`'s core, then settles.
    pub(super) fn apply(&mut self, index: usize, actions: Vec<Action>) {
        for action in actions {
            self.act(index, action);
        }
        self.settle();
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.partitioned.contains(&a) && !self.partitioned.contains(&b)
    }

    fn act(&mut self, from: usize, action: Action) {
        let now = self.now();
        match action {
            Action::Connect(addr) => self.connect(from, addr),
            Action::Transmit { link, bytes } => {
                if let Some(&(to, theirs)) = self.hosts[from].links.get(&link) {
                    self.last_datagram.insert((from, to), bytes.clone());
                    if self.reachable(from, to) && !self.deaf.contains(&to) {
                        self.queue.push_back(Delivery::Datagram(to, theirs, bytes));
                    }
                }
            }
            Action::Push {
                links,
                bundle,
                wait,
            } => {
                for link in links {
                    if let Some(&(to, theirs)) = self.hosts[from].links.get(&link)
                        && self.reachable(from, to)
                    {
                        let push = Delivery::Push(to, theirs, bundle.clone());
                        // Acknowledged before the next action, as the driver waits.
                        if wait {
                            self.deliver(push);
                        } else {
                            self.queue.push_back(push);
                        }
                    }
                }
            }
            Action::Sync { link, bundle } => {
                self.hosts[from].syncs += 1;
                if let Some(&(to, theirs)) = self.hosts[from].links.get(&link)
                    && self.reachable(from, to)
                {
                    self.queue
                        .push_back(Delivery::Sync(from, to, theirs, bundle));
                }
            }
            Action::Close { link, reason } => {
                let host = &mut self.hosts[from];
                host.closed.push((link, reason));
                if let Some((to, theirs)) = host.links.remove(&link) {
                    self.close_remote(to, theirs, control_addr(from));
                }
            }
            Action::Peers(peers) => self.hosts[from].peers = peers,
            Action::Policy(policy) => self.hosts[from].policy = policy,
            Action::SaveNetwork(net) => self.hosts[from].saved.0 = net,
            Action::SaveDirectory(dir) => self.hosts[from].saved.1 = Some(dir),
            Action::View(view) => self.hosts[from].view = view,
            Action::DetectAddress { .. } => {
                let ip = self.hosts[from].keys.addr.ip();
                self.hosts[from].core().handle_address(ip, now);
            }
            Action::Renew { link } => self.ask(from, link, Request::Renew, 0),
            Action::Deliver {
                link,
                number,
                certificate,
            } => self.ask(from, link, Request::Reissued(certificate), number),
            // Connections read the certificate from the core when they open.
            Action::Identity(_) | Action::Trust { .. } => {}
            Action::SaveAdmin(admin) => self.hosts[from].admin = Some(admin),
            Action::Ask { link, request } => self.ask(from, link, request, 0),
            // The driver's files (`node::admins`).
            Action::SaveAdmins(_) | Action::DropAdmin => {}
            Action::Rekey { link, request } => self.ask(from, link, request, 0),
            Action::WireguardKey(key) => self.hosts[from].switched_to.push(key.public_key()),
            Action::RotationDone(result) => self.hosts[from].rotations.push(result),
            // The driver makes a key and calls `rotate_key`; tests do it themselves.
            Action::RotateKey => self.hosts[from].rotate_asked += 1,
            Action::Punch { addr, .. } => {
                if let Some(to) = self.host_at(addr) {
                    self.punches.push((from, to, now.instant));
                }
                self.connect(from, addr);
            }
        }
    }

    /// Host `from` sends `request` on its `link` (answered later, as a stream is); lost if
    /// the other end is unreachable (the core's timeout or next round retries).
    fn ask(&mut self, from: usize, link: LinkId, request: Request, number: u32) {
        if let Some(&(to, theirs)) = self.hosts[from].links.get(&link)
            && self.reachable(from, to)
        {
            self.queue.push_back(Delivery::Ask(
                from,
                link,
                to,
                theirs,
                Box::new(request),
                number,
            ));
        }
    }

    /// Host `from` opens a connection to `addr`: both ends register it, or it fails.
    fn connect(&mut self, from: usize, addr: SocketAddr) {
        let now = self.now();
        let to = self.host_at(addr);
        let up = |to: usize| self.hosts[to].core.is_some() && !self.stalled.contains(&to);
        // Behind a NAT: only through a mapping its host opened towards the dialer.
        let opened = |to: usize| {
            !self.natted.contains(&to)
                || self.punches.iter().any(|&(f, t, at)| {
                    f == to && t == from && now.instant.duration_since(at) <= Duration::from_secs(1)
                })
        };
        let Some(to) = to.filter(|&to| up(to) && self.reachable(from, to) && opened(to)) else {
            self.hosts[from].core().handle_connect_failed(addr);
            return;
        };
        let cert_of = |host: &Host| -> Option<NodeCertificate> {
            let core = host.core.as_ref()?;
            Some(core.certificate().clone())
        };
        let (ours, theirs) = (cert_of(&self.hosts[from]), cert_of(&self.hosts[to]));
        let from_addr = if self.natted.contains(&from) {
            nat_addr(from)
        } else {
            self.hosts[from].keys.addr
        };
        let Ok((mine, _)) = self.hosts[from]
            .core()
            .handle_connected(addr, theirs, false, now)
        else {
            return;
        };
        match self.hosts[to]
            .core()
            .handle_connected(from_addr, ours, true, now)
        {
            Ok((link, _)) => {
                self.hosts[from].links.insert(mine, (to, link));
                self.hosts[to].links.insert(link, (from, mine));
            }
            // Refused by the other end: closed at this one.
            Err(_) => self.hosts[from].core().handle_closed(addr, mine),
        }
    }

    /// The host at control address `addr`: its own, or its NAT's.
    fn host_at(&self, addr: SocketAddr) -> Option<usize> {
        (0..self.hosts.len()).find(|&i| {
            self.hosts[i].keys.addr == addr || (self.natted.contains(&i) && nat_addr(i) == addr)
        })
    }

    /// The connection `link` of host `index` (with `addr`) was closed by the other end.
    fn close_remote(&mut self, index: usize, link: LinkId, addr: SocketAddr) {
        let host = &mut self.hosts[index];
        host.links.remove(&link);
        if let Some(core) = host.core.as_mut() {
            core.handle_closed(addr, link);
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        let now = self.now();
        let to = match &delivery {
            Delivery::Datagram(to, ..) | Delivery::Push(to, ..) | Delivery::Sync(_, to, ..) => *to,
            Delivery::Ask(_, _, to, ..) => *to,
        };
        if self.stalled.contains(&to) {
            self.held.push_back(delivery);
            return;
        }
        match delivery {
            Delivery::Datagram(to, link, bytes) => {
                if let Some(core) = self.hosts[to].core.as_mut() {
                    core.handle_datagram(link, &bytes, now);
                }
            }
            Delivery::Push(to, link, bundle) => {
                if let Some(core) = self.hosts[to].core.as_mut() {
                    let bundle = checked(core, bundle, now);
                    let answer =
                        core.handle_request(Origin::Member(link), Request::Push(bundle), now);
                    match answer {
                        Answer::Reply(Response::Ack) | Answer::Drop => {}
                        // What the receiver saw of the pusher goes back to it.
                        Answer::Reply(Response::Seen(addr)) => {
                            if let Some(&(from, theirs)) = self.hosts[to].links.get(&link)
                                && let Some(core) = self.hosts[from].core.as_mut()
                            {
                                core.handle_seen(theirs, addr, now);
                            }
                        }
                        other => panic!("a push answered with {other:?}"),
                    }
                }
            }
            Delivery::Ask(from, mine, to, theirs, request, number) => {
                let renew = *request == Request::Renew;
                let kind = (*request).clone();
                let Some(core) = self.hosts[to].core.as_mut() else {
                    return;
                };
                let response = match core.handle_request(Origin::Member(theirs), *request, now) {
                    Answer::Reply(response) => response,
                    Answer::Drop => return,
                    // Saved, then answered, as the driver does.
                    Answer::AfterSave(change) => {
                        let admin = change.admin().clone();
                        let response = core.commit(change).response;
                        self.hosts[to].admin = Some(admin);
                        response
                    }
                };
                if let Some(core) = self.hosts[from].core.as_mut() {
                    if renew {
                        core.handle_renewed(mine, Ok(response), now);
                    } else if matches!(kind, Request::Rekey { .. }) {
                        core.handle_rekeyed(mine, Ok(response), now);
                    } else if matches!(kind, Request::Rendezvous { .. } | Request::Punch { .. }) {
                        // Only logged by the driver.
                    } else {
                        core.handle_delivered(number, Ok(response), now);
                    }
                }
            }
            Delivery::Sync(from, to, link, bundle) => {
                let Some(core) = self.hosts[to].core.as_mut() else {
                    return;
                };
                let bundle = checked(core, bundle, now);
                let answer = core.handle_request(Origin::Member(link), Request::Sync(bundle), now);
                if let Answer::Reply(Response::Sync(theirs)) = answer
                    && let Some(core) = self.hosts[from].core.as_mut()
                {
                    let theirs = checked(core, theirs, now);
                    core.handle_bundle(&theirs, now);
                }
            }
        }
    }

    /// A signed record of a host that is not simulated (`serial`, `subnet`, `version`).
    pub(super) fn outsider(&self, name: &str, serial: u64, subnet: &str) -> SignedMemberRecord {
        let keys = Keys::new(200);
        let certificate = self
            .network
            .issuer()
            .issue(
                &Name::new(name).expect("a name"),
                keys.wireguard.public_key(),
                keys.control.verifying_key(),
                vec![subnet.parse().expect("a subnet")],
                Vec::new(),
                serial,
                START_UNIX,
            )
            .expect("a certificate");
        MemberRecord {
            certificate,
            version: 1,
            state: MemberState::Alive,
            control_port: CONTROL_PORT,
            endpoints: vec![keys.addr],
            relay: None,
        }
        .sign(&keys.control)
        .expect("a record")
    }

    /// Host `index`'s link to host `other`, if connected.
    pub(super) fn link(&self, index: usize, other: usize) -> Option<LinkId> {
        self.hosts[index]
            .links
            .iter()
            .find(|(_, (to, _))| *to == other)
            .map(|(link, _)| *link)
    }
}

/// What the driver does to a bundle before the core sees it (`inbound::prefilter`).
fn checked(core: &Core, bundle: Bundle, now: Now) -> Bundle {
    prefilter(
        bundle,
        &core.directory(),
        &Mutex::new(Throttle::default()),
        now,
    )
}
