//! Types of `overlayd`'s local API (HTTP/1.1 with JSON bodies on a root-only unix
//! socket), shared by the daemon and `overlayctl`.
//!
//! Routes: `GET /v1/status` → [`Status`], `GET /v1/peers` → `Vec<`[`PeerStatus`]`>`, and
//! the control plane's actions, each a `POST` with a JSON body:
//!
//! | path | body | answer |
//! |---|---|---|
//! | [`INIT_PATH`] | [`InitRequest`] | [`Status`] |
//! | [`TOKENS_PATH`] | [`TokenRequest`] | [`TokenResponse`] |
//! | [`JOIN_PATH`] | [`JoinRequest`] | [`Status`] |
//! | [`REVOKE_PATH`] | [`RevokeRequest`] | [`RevokeResponse`] |
//! | [`NODE_GROUPS_PATH`] | [`NodeGroupsRequest`] | [`NodeGroupsResponse`] |
//! | [`CA_ROTATE_PATH`] | [`CaRotateRequest`] | [`CaRotateResponse`] |
//! | [`ROTATE_KEY_PATH`] | `{}` | [`RotateKeyResponse`] |
//! | [`LEAVE_PATH`] | `{}` | [`Status`] |
//! | [`RELOAD_PATH`] | `{}` | [`ReloadReport`] |
//! | [`STATIC_PEER_ADD_PATH`] | [`StaticPeerRequest`] | [`StaticPeerChange`] |
//! | [`STATIC_PEER_SET_PATH`] | [`StaticPeerSetRequest`] | [`StaticPeerChange`] |
//! | [`STATIC_PEER_REMOVE_PATH`] | [`StaticPeerRemoveRequest`] | [`StaticPeerChange`] |
//!
//! Errors come back as a non-2xx status with an [`ApiError`] body: 400 for a request the
//! operator must change, 409 for one that does not fit this host's state (e.g. `init` on a
//! member), 502 when another host refused or did not answer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use keys::PublicKey;
use serde::{Deserialize, Serialize};
use zeroize::ZeroizeOnDrop;

use crate::drops::DropReason;

/// Path of the status route.
pub const STATUS_PATH: &str = "/v1/status";
/// Path of the peers route.
pub const PEERS_PATH: &str = "/v1/peers";
/// Path of `names`: the container names this host serves by DNS.
pub const NAMES_PATH: &str = "/v1/names";
/// Path of `init`: create a network with this host as its first member and admin.
pub const INIT_PATH: &str = "/v1/init";
/// Path of `token create` (admins only).
pub const TOKENS_PATH: &str = "/v1/tokens";
/// Path of `join`.
pub const JOIN_PATH: &str = "/v1/join";
/// Path of `revoke` (admins only).
pub const REVOKE_PATH: &str = "/v1/revoke";
/// Path of `node groups` (admins only): re-issue a member's certificate with new groups.
pub const NODE_GROUPS_PATH: &str = "/v1/node/groups";
/// Path of `ca rotate`.
pub const CA_ROTATE_PATH: &str = "/v1/ca/rotate";
/// Path of `rotate-key`: a new WireGuard key for this host.
pub const ROTATE_KEY_PATH: &str = "/v1/rotate-key";
/// Path of `leave`.
pub const LEAVE_PATH: &str = "/v1/leave";
/// Path of the policy: `GET` the policy in force, `POST` a new one (admins only).
pub const POLICY_PATH: &str = "/v1/policy";
/// Path of `policy check`: the verdict of the policy in force for one flow.
pub const POLICY_CHECK_PATH: &str = "/v1/policy/check";
/// Path of the security events: `GET /v1/events?after=SEQ` answers those after `SEQ`.
pub const EVENTS_PATH: &str = "/v1/events";
/// Path of the flow log: `GET /v1/flows?after=SEQ` answers the records after `SEQ`.
pub const FLOWS_PATH: &str = "/v1/flows";
/// Path of the mirror of decrypted traffic: `GET` its state ([`MirrorStatus`]), `POST` a
/// [`MirrorStartRequest`] to start it (or restart it with a new filter).
pub const MIRROR_PATH: &str = "/v1/mirror";
/// Path of `mirror stop`: `POST {}` stops the mirror; answers its last [`MirrorStatus`].
pub const MIRROR_STOP_PATH: &str = "/v1/mirror/stop";
/// Path of `reload`: `POST {}` re-reads the config file and applies what changed
/// ([`ReloadReport`]); a file that does not validate is a 400 with the same sentence as at
/// start, and nothing changes.
pub const RELOAD_PATH: &str = "/v1/reload";
/// Path of `peer add`: `POST` a [`StaticPeerRequest`]; answers a [`StaticPeerChange`].
pub const STATIC_PEER_ADD_PATH: &str = "/v1/peers/add";
/// Path of `peer set`: `POST` a [`StaticPeerSetRequest`]; answers a [`StaticPeerChange`].
pub const STATIC_PEER_SET_PATH: &str = "/v1/peers/set";
/// Path of `peer remove`: `POST` a [`StaticPeerRemoveRequest`]; answers a
/// [`StaticPeerChange`].
pub const STATIC_PEER_REMOVE_PATH: &str = "/v1/peers/remove";
/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/overlayd/overlayd.sock";

/// This host's daemon: identity, interface and totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// This host's WireGuard public key.
    pub public_key: PublicKey,
    /// UDP port the tunnels listen on.
    pub listen_port: u16,
    /// Name of the TUN device.
    pub tun_name: String,
    /// MTU of the TUN device.
    pub mtu: u16,
    /// This host's overlay address, if it has one.
    pub address: Option<IpAddr>,
    /// This host's container subnets.
    pub subnets: Vec<IpNet>,
    /// Whether TUN offload (virtio-net header, TSO/GRO) is in use.
    pub tun_offload: bool,
    /// Whether UDP GSO is in use for sends.
    pub udp_gso: bool,
    /// Number of configured peers.
    pub peer_count: usize,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Packets dropped, by reason, over all peers and those with no peer.
    pub drops: BTreeMap<DropReason, u64>,
    /// This host's place in a gossiped network; `None` in static mode (not initialised
    /// nor joined).
    #[serde(default)]
    pub member: Option<Membership>,
    /// The config in force: its file, when it was read, and the last reload's result.
    /// `None` from daemons before reloads existed.
    #[serde(default)]
    pub config: Option<ConfigInForce>,
}

/// The config a daemon runs with ([`Status::config`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInForce {
    /// The config file.
    pub path: String,
    /// SHA-256 of the file's text as last applied (at start or by a reload), in hex.
    pub sha256: String,
    /// When that text was read (unix seconds).
    pub loaded_unix: u64,
    /// Settings that changed in the file but wait for a restart (one line each, naming
    /// the setting and why), as of the last reload; empty when none.
    #[serde(default)]
    pub restart_required: Vec<String>,
    /// The last reload (SIGHUP or `overlayctl reload`), if any since the start.
    #[serde(default)]
    pub last_reload: Option<LastReload>,
}

/// What the last reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    /// When it ran (unix seconds).
    pub at_unix: u64,
    /// Whether it was applied; `false`: refused, nothing changed (see `error`).
    pub applied: bool,
    /// What it changed, one line each.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Why it was refused: the same sentence `overlayd --check-config` prints.
    #[serde(default)]
    pub error: Option<String>,
}

/// The answer to `POST /v1/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// What changed without a restart, one line each (empty: nothing changed).
    pub changed: Vec<String>,
    /// Settings that changed in the file but need a restart: one line each, naming the
    /// setting and why; they keep their running values.
    pub restart_required: Vec<String>,
    /// The config in force now.
    pub config: ConfigInForce,
}

/// `POST /v1/peers/add`: a static peer (a stock WireGuard host, or any peer outside the
/// network) added to the running daemon and kept in its state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPeerRequest {
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its name (what the policy's `node:` selectors and `overlayctl peers` show).
    #[serde(default)]
    pub name: Option<String>,
    /// Where to reach it; learnt from its packets when absent.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// Its subnets: routed to it, and the only inner sources accepted from it.
    pub subnets: Vec<IpNet>,
    /// Persistent keepalive interval in seconds.
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
}

/// `POST /v1/peers/set`: changes a static peer added with `peer add`; what is left out
/// stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPeerSetRequest {
    /// The peer's key.
    pub public_key: PublicKey,
    /// A new name.
    #[serde(default)]
    pub name: Option<String>,
    /// A new endpoint.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// New subnets (replacing all of them).
    #[serde(default)]
    pub subnets: Option<Vec<IpNet>>,
    /// A new keepalive interval in seconds; 0 turns keepalives off.
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
}

/// `POST /v1/peers/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPeerRemoveRequest {
    /// The peer's key.
    pub public_key: PublicKey,
}

/// The answer to a static peer change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticPeerChange {
    /// The peer's key.
    pub public_key: PublicKey,
    /// `added`, `updated`, `unchanged` or `removed`.
    pub action: String,
    /// The file the static peers added with `overlayctl` are kept in.
    pub file: String,
}

/// Where a static peer comes from ([`PeerStatus::origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerOrigin {
    /// A `[[peer]]` of the config file (changed by editing it and reloading).
    Config,
    /// Added with `overlayctl peer add` (kept in the state directory).
    Cli,
}

/// This host as a member of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The network's name.
    pub network: String,
    /// The network's address range.
    pub cidr: IpNet,
    /// Its extra ranges, parallel to `cidr` (each member has a subnet at the same offset
    /// in every one); empty when the network has only `cidr`.
    #[serde(default)]
    pub ranges: Vec<IpNet>,
    /// The network CA's fingerprint (`sha256:...`).
    pub ca_fingerprint: String,
    /// This host's node name.
    pub name: String,
    /// The container subnets its certificate gives it.
    pub subnets: Vec<IpNet>,
    /// Its groups.
    pub groups: Vec<String>,
    /// When its certificate expires (unix seconds).
    pub certificate_expires_unix: u64,
    /// Its certificate's serial (new with every renewal). Absent in answers of daemons
    /// before renewal: 0.
    #[serde(default)]
    pub certificate_serial: u64,
    /// When this host last took a renewed or re-issued certificate (unix seconds); `None`
    /// until the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_renewed_unix: Option<u64>,
    /// When it asks for the next renewal (unix seconds): two thirds into its lifetime.
    /// Absent in answers of daemons before renewal: 0.
    #[serde(default)]
    pub certificate_renew_at_unix: u64,
    /// Whether this host holds the CA key (can issue tokens and revoke).
    pub admin: bool,
    /// UDP port of the control plane (QUIC).
    pub control_port: u16,
    /// Members in the directory, this host included, that are alive (not left, revoked
    /// or down).
    pub member_count: usize,
    /// `true` once this host has left the network (`overlayctl leave`).
    pub left: bool,
    /// This host's certificate's CA and the CA transition in progress; absent in answers
    /// of daemons before CA rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaStatus>,
}

/// Which CA signed this host's certificate, and the CA transition in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// The fingerprint of the CA that signed this host's certificate: the network's
    /// (`Membership::ca_fingerprint`) once it renewed after a rotation.
    pub certificate_ca: String,
    /// During a transition: the CA being retired (still trusted until `retires_unix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_ca: Option<String>,
    /// When it is retired (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_unix: Option<u64>,
}

/// `POST /v1/ca/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRotateRequest {
    /// How long the old CA stays trusted, in seconds; `None`: `[control] ca_transition_s`.
    #[serde(default)]
    pub transition_s: Option<u64>,
}

/// The answer to `POST /v1/ca/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotateResponse {
    /// The CA retired at the end (fingerprint).
    pub old_ca: String,
    /// The CA in force from now on (fingerprint).
    pub new_ca: String,
    /// When the old CA is retired (unix seconds).
    pub retires_unix: u64,
}

/// A member's state as this host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answers probes: routed.
    Alive,
    /// Missed probes; routed until declared down.
    Suspect,
    /// Declared down by the failure detector: routes withdrawn until it is back.
    Down,
    /// Left on purpose: routes withdrawn.
    Left,
    /// Revoked by the CA: refused for good.
    Revoked,
}

impl MemberState {
    /// The lowercase word used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
            MemberState::Revoked => "revoked",
        }
    }
}

/// `POST /v1/init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// The network's name (lowercase letters, digits, `-`).
    pub network: String,
    /// The network's address range; every member's subnet is carved from it.
    pub cidr: IpNet,
    /// Extra ranges of `cidr`'s size: a member that gets the subnet at offset k of `cidr`
    /// also gets the one at offset k of each of these (at most 7; e.g. one per Docker
    /// network to keep apart). Left out of the JSON when empty, so an older daemon (which
    /// refuses unknown fields) still takes a request without ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<IpNet>,
    /// This host's node name.
    pub name: String,
    /// This host's subnet (in `cidr` or one of `ranges`); default: the first offset free
    /// in every range, of `subnet_prefix` bits.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Prefix length of the subnets given to members; default 24 (IPv4) or 64 (IPv6).
    #[serde(default)]
    pub subnet_prefix: Option<u8>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token may be used, in seconds.
    pub ttl_s: u64,
    /// Groups the joining host's certificate gets.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The answer to `POST /v1/tokens`. The token is zeroized on drop and `Debug` shows only
/// its format prefix.
#[derive(Clone, PartialEq, Serialize, Deserialize, ZeroizeOnDrop)]
pub struct TokenResponse {
    /// The token text (`ovljoin1.`...): a secret, pass it on privately.
    pub token: String,
    /// When it expires (unix seconds).
    #[zeroize(skip)]
    pub expires_unix: u64,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &Redacted(&self.token))
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

/// `POST /v1/join`. The token is zeroized on drop and `Debug` shows only its format prefix.
#[derive(Clone, PartialEq, Serialize, Deserialize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The token from `overlayctl token create`.
    pub token: String,
    /// This host's node name, unique in the network.
    #[zeroize(skip)]
    pub name: String,
    /// The subnet this host asks for; default: the admin picks a free one.
    #[serde(default)]
    #[zeroize(skip)]
    pub subnet: Option<IpNet>,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &Redacted(&self.token))
            .field("name", &self.name)
            .field("subnet", &self.subnet)
            .finish()
    }
}

/// A token in `Debug` output: its format prefix (`ovljoin1`) and `…`, never the rest.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.0.split_once('.') {
            Some((prefix, _))
                if prefix.len() <= 16 && prefix.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                prefix
            }
            _ => "",
        };
        write!(f, "\"{prefix}…\"")
    }
}

/// `POST /v1/revoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The member to revoke.
    pub name: String,
}

/// The body of `POST /v1/admin/add` and `/v1/admin/remove` (admins only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminRequest {
    /// The member to make an admin, or to remove as one.
    pub name: String,
}

/// Path of `admin add`: make a member an admin (send it the CA key).
pub const ADMIN_ADD_PATH: &str = "/v1/admin/add";
/// Path of `admin remove`: retire an admin (it destroys its CA key copy).
pub const ADMIN_REMOVE_PATH: &str = "/v1/admin/remove";
/// Path of `admin list` (`GET`).
pub const ADMINS_PATH: &str = "/v1/admins";

/// One admin, as its CA-signed record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminShown {
    /// Its node name.
    pub name: String,
    /// Its serial slot (it issues serials of that residue modulo 64).
    pub slot: u8,
    /// How many blocks of the range it gives subnets from.
    pub blocks: u32,
    /// The least serial it issues.
    pub serial_floor: u64,
    /// Removed (`admin remove`).
    pub removed: bool,
}

/// The answer to the admin paths: every admin record (none while the network has only
/// the admin that made it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminsResponse {
    /// The admins.
    pub admins: Vec<AdminShown>,
    /// Whether this host holds the CA key.
    pub this_host_admin: bool,
}

/// The answer to `POST /v1/revoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// The revoked member.
    pub name: String,
    /// The serial of its revoked certificate.
    pub serial: u64,
    /// Its revoked WireGuard key.
    pub public_key: PublicKey,
}

/// The answer to `POST /v1/rotate-key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotateKeyResponse {
    /// This host's new WireGuard key.
    pub public_key: PublicKey,
    /// The key it replaced: answered until every peer has a session with the new one, or
    /// the grace (`[control] key_rotation_grace_s`) ends, then refused.
    pub old_public_key: PublicKey,
    /// The serial of the certificate that names the new key.
    pub serial: u64,
}

/// `POST /v1/node/groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroupsRequest {
    /// The member.
    pub name: String,
    /// Its groups from now on (may be empty).
    pub groups: Vec<String>,
}

/// The answer to `POST /v1/node/groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeGroupsResponse {
    /// The member.
    pub name: String,
    /// The serial of its re-issued certificate.
    pub serial: u64,
    /// Its groups.
    pub groups: Vec<String>,
    /// Whether the certificate is this host's own (taken at once); otherwise it is pushed
    /// to the member, which takes it when it is reachable.
    pub own: bool,
}

/// One container name this host serves by DNS (`overlayctl names`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameInfo {
    /// The container's name.
    pub name: String,
    /// Its network aliases.
    pub aliases: Vec<String>,
    /// Its overlay address.
    pub address: std::net::IpAddr,
    /// Its Docker network's name on its host.
    pub network: String,
    /// That network's overlay range (only containers in it see the name).
    pub range: IpNet,
    /// The member whose container it is.
    pub owner: String,
    /// Whether that is this host.
    pub local: bool,
    /// Seconds since this host accepted the name set it came in.
    pub age_s: u64,
}

/// One peer as this host sees it: a static peer from the config, or a member of the
/// network (then `name` and `state` are set; members that are down, left or revoked are
/// listed too, with no tunnel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The member's node name; `None` for a static peer.
    #[serde(default)]
    pub name: Option<String>,
    /// The member's state; `None` for a static peer.
    #[serde(default)]
    pub state: Option<MemberState>,
    /// Its overlay address by the network's convention: the first address of its first
    /// subnet (`10.42.2.1` for `10.42.2.0/24`), which a member puts on its TUN by default;
    /// the same rule for a static peer. A host's `address` in its own config overrides
    /// that on the host only (it is in no record), so it is not shown here. `None` when it
    /// has no subnet (e.g. revoked). Absent in answers of daemons before it: `None`.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// The peer's WireGuard public key.
    pub public_key: PublicKey,
    /// Where its packets go now: configured, or learnt from its latest authenticated packet.
    pub endpoint: Option<SocketAddr>,
    /// Subnets routed to it, and accepted as inner source addresses from it.
    pub subnets: Vec<IpNet>,
    /// Seconds since the last completed handshake, if any.
    pub last_handshake_s: Option<f64>,
    /// Payload bytes received from it (decrypted).
    pub rx_bytes: u64,
    /// Payload bytes sent to it (before encryption).
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds, if set.
    pub persistent_keepalive: Option<u16>,
    /// Packets from or to this peer dropped, by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// For a static peer, where it comes from; `None` for a member (and from daemons
    /// before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<PeerOrigin>,
    /// How its datagrams go now; `None` without a tunnel or an endpoint (and from daemons
    /// before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PeerPath>,
    /// With `path` `relayed`: the member they go through (its name, or its address when
    /// it is no member this host knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

/// How a peer's datagrams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerPath {
    /// Straight to its endpoint; neither host is behind a NAT.
    Direct,
    /// Straight to its endpoint, through a NAT on one side or both (its mapping opened by
    /// both sides sending at once).
    Punched,
    /// Through a third member (`relay`), which cannot decrypt them.
    Relayed,
}

impl PeerPath {
    /// Its name in the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerPath::Direct => "direct",
            PeerPath::Punched => "punched",
            PeerPath::Relayed => "relayed",
        }
    }
}

/// `POST /v1/policy`: a new network policy (the TOML file's text), for an admin to check,
/// sign and spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySetRequest {
    /// The policy file as written.
    pub text: String,
}

/// The policy in force on a host (`GET /v1/policy`, and the answer to a `POST`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyShown {
    /// Its version; `None` when the network has no policy (every member may reach every
    /// other: the behaviour before a policy is set).
    pub version: Option<u64>,
    /// When the admin signed it (unix seconds).
    pub issued_at: Option<u64>,
    /// How many `[[allow]]` rules it has.
    pub rules: usize,
    /// How many `[[test]]`s it passed.
    pub tests: usize,
    /// Flows this host tracks now (over all peers).
    #[serde(default)]
    pub tracked_flows: u64,
    /// Per `[[allow]]` rule, in the file's order: the new flows it let through on this host
    /// since this version came into force here (flows this host opened and flows peers
    /// opened to it). Empty without a policy, and from daemons before the counters.
    #[serde(default)]
    pub allowed: Vec<RuleCount>,
    /// Packets the policy dropped on this host since this version came into force, both
    /// ways (a denied flow is never tracked, so each of its packets counts).
    #[serde(default)]
    pub denied: u64,
    /// The file as written.
    pub text: String,
}

/// What one `[[allow]]` rule let through ([`PolicyShown::allowed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCount {
    /// The rule's line in the policy file (its `[[allow]]`).
    pub line: u32,
    /// New flows it allowed.
    pub flows: u64,
}

/// `POST /v1/policy/check`: one flow to judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheckRequest {
    /// The side that opens the flow: `node:NAME`, `group:NAME` or an address.
    pub from: String,
    /// The other side, the same way.
    pub to: String,
    /// `tcp/N`, `udp/N`, `icmp` or `proto/N`.
    pub port: String,
}

/// The verdict for a [`PolicyCheckRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyVerdict {
    /// Whether the flow is allowed.
    pub allow: bool,
    /// The line of the `[[allow]]` rule that allows it; `None` when denied, or when no
    /// policy is in force (everything is allowed).
    pub rule_line: Option<u32>,
    /// The policy version judged by; `None` without a policy.
    pub version: Option<u64>,
}

/// `POST /v1/mirror`: start copying decrypted traffic to a local interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorStartRequest {
    /// The interface to make; default: the config's `[mirror] interface`, or `ovlmirror0`.
    #[serde(default)]
    pub interface: Option<String>,
    /// Copy only packets from or to these networks (all when empty).
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    /// Copy only TCP and UDP packets from or to these ports (all when empty).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// The mirror of decrypted traffic on a host (`overlayctl mirror status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    /// Whether copies are being made now.
    pub active: bool,
    /// The interface copies go to (for a stopped mirror: the one it used, if any).
    pub interface: Option<String>,
    /// Its filter's networks (all when empty).
    pub cidrs: Vec<IpNet>,
    /// Its filter's ports (all when empty).
    pub ports: Vec<u16>,
    /// Packets written to the interface since the mirror started.
    pub copied: u64,
    /// Copies dropped because the mirror's queue was full (its writer, which runs only on
    /// CPU time the tunnel leaves, could not keep up), or because nobody read the
    /// interface (no copy is made then). The tunnel never waits for it.
    pub dropped: u64,
    /// Copies the interface refused (e.g. set down).
    pub write_errors: u64,
    /// Whether a packet socket (tcpdump, an IDS) reads the interface, as last seen (every
    /// 250 ms); copies are made only while one does.
    #[serde(default)]
    pub read: bool,
}

/// What a security event is about: a stable name per kind (the `kind` field of the JSON
/// and of the log line), for alerting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A peer sent a packet whose inner source is not one of its addresses.
    SpoofedSource,
    /// A handshake from a key that is no peer of this host.
    UnknownKey,
    /// Handshakes came faster than the limiter allows: cookie replies from now on.
    HandshakeFloodStarted,
    /// The handshake flood is over.
    HandshakeFloodEnded,
    /// A revoked member tried to reach this host (tunnel or control plane).
    RevokedKnocking,
    /// A member with an expired certificate tried to reach this host.
    ExpiredKnocking,
    /// A join was refused (bad, used or expired token; a name or key in use).
    JoinRefused,
    /// The policy denied flows (aggregated per peer and second).
    PolicyDenied,
    /// A member was declared down.
    MemberDown,
    /// A member that was declared down is alive again.
    MemberUp,
    /// This host's certificate expires within 30 days (once), then within 7 (once more).
    CertificateExpiring,
    /// A handshake to a WireGuard key this host rotated away from, after its grace.
    RetiredKeyKnocking,
}

impl EventKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SpoofedSource => "spoofed_source",
            EventKind::UnknownKey => "unknown_key",
            EventKind::HandshakeFloodStarted => "handshake_flood_started",
            EventKind::HandshakeFloodEnded => "handshake_flood_ended",
            EventKind::RevokedKnocking => "revoked_knocking",
            EventKind::ExpiredKnocking => "expired_knocking",
            EventKind::JoinRefused => "join_refused",
            EventKind::PolicyDenied => "policy_denied",
            EventKind::MemberDown => "member_down",
            EventKind::MemberUp => "member_up",
            EventKind::CertificateExpiring => "certificate_expiring",
            EventKind::RetiredKeyKnocking => "retired_key_knocking",
        }
    }
}

/// One security event (`overlayctl events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityEvent {
    /// Its number on this host, from 1, in order.
    pub seq: u64,
    /// When it happened (unix milliseconds); for an aggregated event, the first time.
    pub time_unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The member or peer it is about, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The underlay address it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// One sentence with the details.
    pub detail: String,
    /// How many times it happened in its second (events of one kind and peer are summed).
    pub count: u64,
}

/// One line of the flow log: a flow's packets and bytes one way over one window (5 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowLogEntry {
    /// Its number on this host, from 1, in order.
    pub seq: u64,
    /// First packet in the window (unix milliseconds).
    pub start_unix_ms: u64,
    /// Last packet in the window.
    pub end_unix_ms: u64,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6); `None` for the overflow
    /// line that sums the flows past the window's bound.
    pub proto: Option<u8>,
    /// Source address and port (echo identifier for ICMP) as the packets carried them.
    pub src: Option<SocketAddr>,
    /// Destination address and port.
    pub dst: Option<SocketAddr>,
    /// The peer at the other end of the tunnel: its member name, or its public key for a
    /// static peer.
    pub peer: String,
    /// The peer's groups (from its certificate).
    pub peer_groups: Vec<String>,
    /// `in` (from the peer, decrypted) or `out` (to the peer, before encryption).
    pub direction: String,
    /// Packets in the window.
    pub packets: u64,
    /// Bytes of the inner IP packets.
    pub bytes: u64,
    /// `allow` or `deny`.
    pub verdict: String,
    /// The line of the policy rule that allowed the flow, when a policy is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
}

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// One sentence saying what went wrong and what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer as a daemon from before `address` answers it.
    const OLD_PEER: &str = r#"{"name":"h2","state":"alive","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","endpoint":null,"subnets":["10.42.2.0/24"],"last_handshake_s":null,"rx_bytes":0,"tx_bytes":0,"persistent_keepalive":null,"drops":{}}"#;

    #[test]
    fn tokens_are_zeroized_on_drop_and_never_printed() {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroized_on_drop::<JoinRequest>();
        zeroized_on_drop::<TokenResponse>();
        let join = JoinRequest {
            token: "ovljoin1.c2VjcmV0".to_owned(),
            name: "h2".to_owned(),
            subnet: None,
        };
        let shown = format!("{join:?}");
        assert_eq!(
            shown,
            r#"JoinRequest { token: "ovljoin1…", name: "h2", subnet: None }"#
        );
        let answer = TokenResponse {
            token: "ovljoin1.c2VjcmV0".to_owned(),
            expires_unix: 7,
        };
        let shown = format!("{answer:?}");
        assert_eq!(
            shown,
            r#"TokenResponse { token: "ovljoin1…", expires_unix: 7 }"#
        );
        // The wire form is unchanged.
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(json, r#"{"token":"ovljoin1.c2VjcmV0","expires_unix":7}"#);
        assert_eq!(
            serde_json::from_str::<TokenResponse>(&json).unwrap(),
            answer
        );
    }

    #[test]
    fn a_peer_without_address_still_parses() {
        let peer: PeerStatus = serde_json::from_str(OLD_PEER).unwrap();
        assert_eq!(peer.name.as_deref(), Some("h2"));
        assert_eq!(peer.address, None);
    }

    #[test]
    fn a_peer_address_round_trips() {
        let mut peer: PeerStatus = serde_json::from_str(OLD_PEER).unwrap();
        peer.address = Some("10.42.2.1".parse().unwrap());
        let json = serde_json::to_string(&peer).unwrap();
        assert!(json.contains(r#""address":"10.42.2.1""#), "{json}");
        assert_eq!(serde_json::from_str::<PeerStatus>(&json).unwrap(), peer);
    }

    #[test]
    fn a_peer_origin_is_optional_and_lowercase() {
        let mut peer: PeerStatus = serde_json::from_str(OLD_PEER).unwrap();
        assert_eq!(peer.origin, None, "daemons before it: none");
        assert!(!serde_json::to_string(&peer).unwrap().contains("origin"));
        peer.origin = Some(PeerOrigin::Cli);
        let json = serde_json::to_string(&peer).unwrap();
        assert!(json.contains(r#""origin":"cli""#), "{json}");
        assert_eq!(serde_json::from_str::<PeerStatus>(&json).unwrap(), peer);
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let add = format!(r#"{{"public_key":"{key}","subnets":["10.42.3.0/24"]}}"#);
        let req: StaticPeerRequest = serde_json::from_str(&add).unwrap();
        assert_eq!(req.persistent_keepalive, None);
        let extra = format!(r#"{{"public_key":"{key}","subnets":[],"allowed_ips":[]}}"#);
        assert!(serde_json::from_str::<StaticPeerRequest>(&extra).is_err());
        let set = format!(r#"{{"public_key":"{key}","persistent_keepalive":0}}"#);
        let req: StaticPeerSetRequest = serde_json::from_str(&set).unwrap();
        assert_eq!((req.subnets, req.persistent_keepalive), (None, Some(0)));
    }
}
