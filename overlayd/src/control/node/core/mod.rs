//! The membership core: everything a member decides and nothing it does, as `quinn-proto`
//! is to `quinn`. It owns foca (SWIM), the directory of signed records, what the failure
//! detector says of each member, this host's own record, an admin's state, and the
//! registry of member connections with the certificate each peer proved. It takes events
//! with the time they happen at and queues [`Action`]s for the driver (the member task in
//! `node`) to carry out.
//!
//! It must not do I/O: no sockets, no tasks, no channels, no files, and no clock or global
//! random number generator. Time comes in as [`Now`] with every event; random choices come
//! from the seed in [`Start`]. (One exception, `admin`'s: a join token's secret comes from
//! the OS.)
//!
//! Events in, each to be called when it happens:
//!
//! - [`Core::handle_datagram`]: a gossip datagram on a member connection.
//! - [`Core::handle_request`]: a request on a stream (sync, push, join); the answer is
//!   returned, see [`Answer`].
//! - [`Core::handle_bundle`]: the answer to a full sync this host asked for.
//! - [`Core::handle_connected`], [`Core::handle_connect_failed`], [`Core::handle_closed`]:
//!   member connections up, not opened, or gone.
//! - [`Core::handle_timeout`]: when [`Core::poll_timeout`] says (foca's timers, the full
//!   sync, rejoins, housekeeping).
//! - [`Core::handle_address`]: this host's underlay address, asked for with
//!   [`Action::DetectAddress`].
//! - Rendezvous asks and punch proposals come as requests ([`Core::handle_request`]);
//!   punches are fired from [`Core::handle_timeout`] ([`Action::Punch`]).
//! - API commands: [`Core::create_token`], [`Core::revoke`], [`Core::leave`].
//!
//! Actions out: after every event, [`Core::poll_action`] until it returns `None`, carrying
//! each out in order.
//!
//! The directory is shared ([`Core::directory`]): the TLS verifier and the check of
//! bundles off the member task read it; only the core writes it.
//!
//! A member is routed ([`Action::Peers`]) when its record in the directory is alive, it is
//! not this host, and the failure detector has not declared its current identity down. A
//! member that the detector never heard of is routed too: after a restart, tunnels come
//! back from the saved directory before anyone answers.
//!
//! The rest is split by concern: `swim` (running foca, timers and periodic work, this
//! host's own record), `gossip` (records on SWIM, foca's timers, the throttle), `links`
//! (member connections and addresses), `requests` (requests from other hosts and API
//! commands), `view` (what the API shows and what is routed), `rendezvous` (hole punching
//! at a time agreed through a third member).

mod admins;
mod ca;
mod discovery;
mod gossip;
mod limits;
mod links;
mod names;
mod policy;
mod rendezvous;
mod renew;
mod requests;
mod rotate;
mod swim;
mod tokens;
mod view;

#[cfg(test)]
mod tests;

pub(super) use crate::util::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, PostcardCodec};
use keys::{CaKey, NodeCertificate, PrivateKey, SigningKey};
use protocol::membership::{self, NodeId};
use protocol::records::names::NameTable;
use protocol::records::{Directory, MemberRecord, MemberState, RecordError, SignedMemberRecord};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

use crate::control::View;
use crate::control::msg::Bundle;
use crate::control::state::{AdminState, NetworkState};
use crate::router::PeerSpec;
pub use admins::{AdminKey, AdminsChange};
pub use ca::{CaRotation, own_certificate_ca};
use gossip::{RecordHandler, Shared, TAG_MEMBER, Timers, tagged};
pub use gossip::{RecordKey, Throttle};
use limits::RecordUpdates;
pub(super) use limits::TokenBucket;
use links::Link;
pub use links::{CloseReason, LinkId, first_member_endpoint, lapsed, revoked_reason};
pub use policy::PolicyInForce;
pub use renew::{GroupsChange, expired_sentence, renew_at};
pub use requests::{AdminChange, Admission, Answer, Origin};
use swim::Periodic;

type Agent = Foca<NodeId, PostcardCodec, Pcg64Mcg, RecordHandler>;

/// When an event happens, on the two clocks the core needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: foca's timers and the periodic work.
    pub instant: Instant,
    /// Wall-clock time, in unix seconds: whether certificates and records are current.
    pub unix: u64,
}

/// What the core takes from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// UDP port of this host's control plane (QUIC), in its record and its tokens.
    pub control_port: u16,
    /// UDP port of its tunnels, in its record.
    pub listen_port: u16,
    /// Validity of the certificates this host issues (admins only), in seconds.
    pub certificate_lifetime_s: u64,
    /// Whether to follow this host's underlay address (the config sets none): asked for
    /// once a second with [`Action::DetectAddress`].
    pub follow_address: bool,
    /// How often to swap directories with one member (anti-entropy).
    pub sync_interval: Duration,
    /// How often to reach for one member that is down or that SWIM does not know.
    pub rejoin_interval: Duration,
    /// The SWIM timings.
    pub membership: membership::Config,
    /// `[control] relay`, in this host's record.
    pub relay: Option<bool>,
    /// The most container names one member may publish (`[dns] max_names`).
    pub max_names: usize,
    /// Rotate this host's WireGuard key when it is this old, in seconds (`[control]
    /// key_rotation_days`); `None`: only when asked.
    pub key_rotation_s: Option<u64>,
}

/// What a member starts from.
pub struct Start {
    /// This host's membership, as saved (or as `init` or a join just made it).
    pub net: NetworkState,
    /// `net.certificate`, verified by the caller against `net.ca`.
    pub me: NodeCertificate,
    /// The members and revocations known, as saved (or as the admin answered a join).
    pub directory: Directory,
    /// This host's control key (its certificate's), which signs its records.
    pub control_key: SigningKey,
    /// This host's WireGuard key (its certificate's): an admin checks joiners' proofs
    /// with it.
    pub wireguard_key: PrivateKey,
    /// An admin's CA key and what it issued.
    pub admin: Option<(CaKey, AdminState)>,
    /// The underlay address this host is reached at.
    pub advertise: IpAddr,
    /// Settings from the config.
    pub settings: Settings,
    /// Seeds foca's and the core's random choices.
    pub seed: u64,
}

/// Why a member cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The SWIM timings are unusable.
    #[error("[control] timings: {0}")]
    Timings(#[from] membership::ConfigError),
    /// This host's record cannot be signed.
    #[error("cannot sign this host's record: {0}")]
    Record(#[from] RecordError),
}

/// What the core asks the driver to do, in the order queued.
#[derive(Debug)]
pub enum Action {
    /// Open a member connection to the control address (none is open or opening); report
    /// with [`Core::handle_connected`] or [`Core::handle_connect_failed`].
    Connect(SocketAddr),
    /// Send a gossip datagram on member connection `link`.
    Transmit {
        /// The connection.
        link: LinkId,
        /// foca's datagram.
        bytes: Bytes,
    },
    /// Push records (a `Request::Push`) to the member on each of `links`.
    Push {
        /// The connections.
        links: Vec<LinkId>,
        /// The records.
        bundle: Bundle,
        /// Wait for their acks (a bounded time) before the next action: the records must
        /// be out before what follows (a leave, the answer to a revoke).
        wait: bool,
    },
    /// Swap directories with the member on `link`: a `Request::Sync` with `bundle`; hand
    /// its answer to [`Core::handle_bundle`].
    Sync {
        /// The connection.
        link: LinkId,
        /// This host's directory.
        bundle: Bundle,
    },
    /// Close member connection `link`; the core has forgotten it.
    Close {
        /// The connection.
        link: LinkId,
        /// Why.
        reason: CloseReason,
    },
    /// Have tunnels and routes to exactly these members: add or update each, and withdraw
    /// every other member tunnel and route added before.
    Peers(Vec<PeerSpec>),
    /// Save this host's membership.
    SaveNetwork(NetworkState),
    /// Save the directory.
    SaveDirectory(Directory),
    /// Show this to the local API.
    View(View),
    /// Enforce this policy (`None`: no policy, all may talk); comes before any
    /// [`Action::Peers`] it applies to.
    Policy(Option<PolicyInForce>),
    /// Find this host's underlay address, the source address towards `towards`, and report
    /// it with [`Core::handle_address`].
    DetectAddress {
        /// A member's endpoint.
        towards: SocketAddr,
    },
    /// Ask the member on `link` (an admin, it is hoped) for a renewed certificate: a
    /// `Request::Renew`; hand the answer to [`Core::handle_renewed`].
    Renew {
        /// The connection.
        link: LinkId,
    },
    /// This host's certificate changed (renewed, or re-issued with new groups): present it
    /// in the control plane's TLS handshakes from now on.
    Identity(keys::SignedCertificate),
    /// Save the admin's state (it issued a certificate this host uses) before the actions
    /// that follow.
    SaveAdmin(AdminState),
    /// The CAs trusted changed (a CA transition began or ended, see `ca`): check peers'
    /// certificates against `ca` and, until its end, `previous` in TLS handshakes from now on.
    Trust {
        /// The CA in force.
        ca: keys::VerifyingKey,
        /// The CA being retired, and when.
        previous: Option<(keys::VerifyingKey, u64)>,
    },
    /// Hand the member on `link` a certificate re-issued for it (`Request::Reissued`);
    /// report the answer with [`Core::handle_delivered`].
    Deliver {
        /// The connection.
        link: LinkId,
        /// The member's number.
        number: u32,
        /// `SignedCertificate::to_bytes`.
        certificate: Vec<u8>,
    },
    /// Send `request` on member link `link` (a rendezvous ask or a punch proposal, see
    /// `rendezvous`); the answer is only logged.
    Ask {
        /// The connection.
        link: LinkId,
        /// The request.
        request: crate::control::msg::Request,
    },
    /// Ask the member on `link` (an admin, it is hoped) for this host's certificate with a
    /// new WireGuard key (`request`, a `Request::Rekey`); hand the answer to
    /// [`Core::handle_rekeyed`].
    Rekey {
        /// The connection.
        link: LinkId,
        /// The request.
        request: crate::control::msg::Request,
    },
    /// This host's WireGuard key is now this one (its certificate, saved before, names
    /// it): make it the key file's, and switch the tunnels to it (the old key is answered
    /// for the grace, `router::rotation`).
    WireguardKey(PrivateKey),
    /// A rotation asked for with [`Core::rotate_key`] ended (answer the operator; on
    /// failure, forget the new key).
    RotationDone(Result<protocol::api::RotateKeyResponse, String>),
    /// Make a new WireGuard key and hand it to [`Core::rotate_key`] (`[control]
    /// key_rotation_days`).
    RotateKey,
    /// Punch now to a member (a rendezvous's agreed time): open a member connection to
    /// `addr` even if one is being opened (a fresh QUIC dial), and send the tunnel's
    /// handshake to the peer with `key` (`router::Initiate::Punch`).
    Punch {
        /// The member's control address, from its record.
        addr: SocketAddr,
        /// Its WireGuard key.
        key: keys::PublicKey,
    },
    /// Save the admin records (`admins.json`, see `control::admins`).
    SaveAdmins(Vec<Vec<u8>>),
    /// This host was removed as an admin: destroy its copy of the CA key and `admin.json`.
    DropAdmin,
}

/// A member's membership, without I/O (see the module docs).
pub struct Core {
    net: NetworkState,
    me: NodeCertificate,
    control_key: SigningKey,
    wireguard_key: PrivateKey,
    ca_key: Option<CaKey>,
    admin: Option<AdminState>,
    advertise: IpAddr,
    settings: Settings,
    dir: Arc<Mutex<Directory>>,
    shared: Arc<Mutex<Shared>>,
    foca: Agent,
    rt: AccumulatingRuntime<NodeId>,
    timers: Timers,
    periodic: Periodic,
    /// Every member connection being served, with the certificate its peer proved.
    links: HashMap<LinkId, Link>,
    next_link: u64,
    /// The connection that carries datagrams and pushes to each control address.
    conns: HashMap<SocketAddr, LinkId>,
    connecting: HashSet<SocketAddr>,
    /// foca's latest identity per node number, and whether it is up.
    liveness: HashMap<u32, (NodeId, bool)>,
    rng: Pcg64Mcg,
    throttle: Throttle,
    /// SWIM updates taken out of datagrams for naming a generation its member never signed.
    refused_updates: u64,
    /// The policy version last handed to the driver (`Some(None)`: no policy).
    policy_handed: Option<Option<u64>>,
    /// Whether this host has swapped directories with a member since it started.
    caught_up: bool,
    /// Where members saw this host's datagrams come from, by member (see `discovery`).
    seen: HashMap<u32, SocketAddr>,
    /// The address this host publishes as seen by the others, when not its own.
    reflexive: Option<SocketAddr>,
    /// This host's certificate renewal (see `renew`).
    renewal: renew::Renewal,
    /// Certificates an admin re-issued for members (new groups) that they have not taken
    /// yet, by member number: the bytes, their serial, and whether a delivery is out.
    deliveries: HashMap<u32, (Vec<u8>, u64, bool)>,
    /// Every member's container names, this host's included (`names`).
    names: NameTable,
    /// While this host presents its old-CA certificate in TLS during a CA transition
    /// (`renew`): that certificate's expiry.
    identity_deferred: Option<u64>,
    /// Where the next full sync starts taking name sets (`names::fit_names`).
    names_cursor: std::sync::atomic::AtomicUsize,
    /// The version of this host's last name set.
    names_version: u64,
    /// Hole punching at an agreed time (see `rendezvous`).
    rendezvous: rendezvous::Rendezvous,
    /// The admin records (see `admins`).
    admins: crate::control::admins::AdminList,
    /// This host's WireGuard key rotation (see `rotate`).
    rotation: rotate::Rotation,
    dirty: bool,
    actions: VecDeque<Action>,
}

impl Core {
    /// Starts a member at `now`: takes a new SWIM generation (which this host's new record,
    /// signed here, allows: others ignore updates for generations nobody signed), routes
    /// the members of the directory and reaches for each, and for the bootstrap hosts.
    /// The caller saves [`Core::network`] before anything else.
    pub fn new(start: Start, now: Now) -> Result<Core, StartError> {
        let Start {
            mut net,
            me,
            mut directory,
            control_key,
            wireguard_key,
            admin,
            advertise,
            settings,
            seed,
        } = start;
        net.record_version = net.record_version.max(net.generation) + 1;
        net.generation = net.record_version;
        let own = own_record(&net, &settings, advertise, MemberState::Alive, &control_key)?;
        if let Err(e) = directory.apply_member(&own, now.unix) {
            tracing::warn!(error = %e, "this host's own record was refused by its directory");
        }
        let dir = Arc::new(Mutex::new(directory));
        let shared = Arc::new(Mutex::new(Shared {
            now,
            changed: false,
            updates: RecordUpdates::default(),
        }));
        let foca = Foca::with_custom_broadcast(
            NodeId {
                node: me.number,
                generation: net.generation,
            },
            settings.membership.to_foca()?,
            Pcg64Mcg::seed_from_u64(seed),
            PostcardCodec,
            RecordHandler::new(dir.clone(), shared.clone()),
        );
        let (ca_key, admin) = admin.map_or((None, None), |(ca, admin)| (Some(ca), Some(admin)));
        let mut core = Core {
            periodic: Periodic::new(now, &settings),
            net,
            me,
            control_key,
            wireguard_key,
            ca_key,
            admin,
            advertise,
            settings,
            dir,
            shared,
            foca,
            rt: AccumulatingRuntime::new(),
            timers: Timers::default(),
            links: HashMap::new(),
            next_link: 0,
            conns: HashMap::new(),
            connecting: HashSet::new(),
            liveness: HashMap::new(),
            rng: Pcg64Mcg::seed_from_u64(seed.rotate_left(32) ^ 0x5eed),
            throttle: Throttle::default(),
            refused_updates: 0,
            policy_handed: None,
            caught_up: false,
            seen: HashMap::new(),
            reflexive: None,
            renewal: renew::Renewal::default(),
            deliveries: HashMap::new(),
            names: NameTable::default(),
            names_cursor: std::sync::atomic::AtomicUsize::new(0),
            identity_deferred: None,
            names_version: 0,
            rendezvous: rendezvous::Rendezvous::default(),
            admins: Default::default(),
            rotation: rotate::Rotation::default(),
            dirty: false,
            actions: VecDeque::new(),
        };
        if let Err(e) = core
            .foca
            .add_broadcast(&tagged(TAG_MEMBER, &own.to_bytes()))
        {
            tracing::warn!(error = %e, "cannot gossip this host's record");
        }
        // Members that start together must not sync together: spread the first sync.
        core.periodic.sync = core.next_sync(now.instant);
        core.refresh(now);
        // Reach every known member: each connection pushes our record and announces us.
        for addr in core.control_addrs() {
            core.connect(addr);
        }
        for addr in core.net.bootstrap.clone() {
            core.connect(addr);
        }
        Ok(core)
    }

    /// This host's membership (its counters change with every record it signs).
    pub fn network(&self) -> &NetworkState {
        &self.net
    }

    /// This host's certificate.
    pub fn certificate(&self) -> &NodeCertificate {
        &self.me
    }

    /// Whether this host holds the network's CA key.
    pub fn is_admin(&self) -> bool {
        self.ca_key.is_some()
    }

    /// The underlay address this host's record names.
    pub fn advertise(&self) -> IpAddr {
        self.advertise
    }

    /// The directory, shared with readers off the member task (the TLS verifier, the check
    /// of bundles); only the core changes it.
    pub fn directory(&self) -> Arc<Mutex<Directory>> {
        self.dir.clone()
    }

    /// The next action to carry out, in order; call after every event until `None`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn dir(&self) -> MutexGuard<'_, Directory> {
        lock(&self.dir)
    }

    fn queue(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Starts handling an event at `now`: the broadcast handler applies records at it.
    fn enter(&mut self, now: Now) {
        lock(&self.shared).now = now;
    }

    /// Ends handling an event: sends what foca queued and acts on what changed.
    fn finish(&mut self, now: Now) {
        self.drain(now);
        if std::mem::take(&mut lock(&self.shared).changed) {
            self.dirty = true;
        }
        if std::mem::take(&mut self.dirty) {
            self.refresh(now);
        }
    }

    /// Brings everything that follows the directory and liveness in line: connections of
    /// revoked members closed, tunnels and routes, the saved directory, the API's view.
    fn refresh(&mut self, now: Now) {
        // A member may have renewed: its connections carry the new certificate.
        self.follow_renewals();
        // A revocation may have come in: its member's connections go at once.
        self.close_lapsed(now);
        self.hand_policy();
        let dir = self.dir.clone();
        if self.names.retain_live(&lock(&dir)) {
            tracing::debug!("dropped the names of members gone");
        }
        let peers = self.peers();
        self.queue(Action::Peers(peers));
        let dir = self.dir().clone();
        self.queue(Action::SaveDirectory(dir));
        let view = self.view();
        self.queue(Action::View(view));
    }

    /// This host's record at the current version.
    fn own_record(&self, state: MemberState) -> Result<SignedMemberRecord, StartError> {
        let mut record = own_record(
            &self.net,
            &self.settings,
            self.advertise,
            state,
            &self.control_key,
        )?;
        if let Some(reflexive) = self.reflexive
            && !record.record().endpoints.contains(&reflexive)
        {
            // Seen from outside first: where the others reach this host behind a NAT.
            let mut unsigned = record.record().clone();
            unsigned.endpoints.insert(0, reflexive);
            unsigned
                .endpoints
                .truncate(protocol::records::MAX_ENDPOINTS);
            record = unsigned.sign(&self.control_key)?;
        }
        Ok(record)
    }

    /// This host's latest record as held in the directory, alone in a bundle.
    fn own_bundle(&self) -> Bundle {
        let own = self
            .dir()
            .member_records()
            .find(|r| {
                r.record()
                    .certificate
                    .unverified_body()
                    .map(|c| c.node == self.me.node)
                    .unwrap_or(false)
            })
            .map(|r| r.to_bytes())
            .unwrap_or_default();
        Bundle {
            members: vec![own],
            revocations: Vec::new(),
            policy: None,
            names: self.own_names(),
            ca_transition: self.transition_bytes(),
        }
    }
}

/// This host's member record at the current version.
fn own_record(
    net: &NetworkState,
    settings: &Settings,
    advertise: IpAddr,
    state: MemberState,
    key: &SigningKey,
) -> Result<SignedMemberRecord, StartError> {
    Ok(MemberRecord {
        certificate: net.certificate.clone(),
        version: net.record_version,
        state,
        control_port: settings.control_port,
        endpoints: vec![SocketAddr::new(advertise, settings.listen_port)],
        relay: settings.relay,
    }
    .sign(key)?)
}
