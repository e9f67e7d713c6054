//! Hosts behind NAT: a router namespace `P-nI` in front of host `I` that masquerades it.
//!
//! ```text
//!   P-ul: br0 ----nI---- wan0 198.18.0.(10+I)/15   namespace P-nI (the NAT router)
//!                        lan0 198.19.I.1/24        nft table `ip testnet_nat`
//!                          |
//!                        ul0 198.19.I.2/24         namespace P-hI, default via 198.19.I.1
//! ```
//!
//! The router takes the public address the host would have had (`198.18.0.(10+I)`), so the
//! other hosts see host `I` at its NAT's address; the host itself only knows `198.19.I.2`.
//! Both kinds filter as home routers and Linux do: a datagram from outside passes only as
//! the answer to one the host sent to that same address and port (address- and
//! port-dependent filtering); anything unsolicited is dropped at the router, which sends
//! back nothing. They differ in how they map:
//!
//! - [`NatKind::Cone`]: endpoint-independent mapping, port preserved where free: one
//!   socket of the host keeps one public address and port whoever it sends to (plain
//!   `masquerade`, which keeps the source port unless another mapping holds it);
//! - [`NatKind::Symmetric`]: a new random public port for each destination
//!   (`masquerade fully-random`).
//!
//! Mappings are conntrack entries in the router's namespace: [`Testnet::nat_mappings`]
//! lists them and [`Testnet::flush_nat`] drops them all (a mapping that expired), with the
//! `conntrack` tool.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::Testnet;
use crate::cmd::{self, ip};
use crate::names;

/// The nft table of a NAT router.
pub const NAT_TABLE: &str = "testnet_nat";

/// How a NAT router maps its host's sockets to public ports (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// Endpoint-independent mapping, the source port kept where free.
    #[default]
    Cone,
    /// A new random public port for every destination.
    Symmetric,
}

impl NatKind {
    /// `cone` or `symmetric`.
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::Cone => "cone",
            NatKind::Symmetric => "symmetric",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NatKind {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<NatKind> {
        match text {
            "cone" => Ok(NatKind::Cone),
            "symmetric" => Ok(NatKind::Symmetric),
            _ => bail!("unknown NAT kind {text:?}: use cone or symmetric"),
        }
    }
}

/// One host behind a NAT: `hI[:KIND]` on the command line (KIND defaults to cone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatSpec {
    /// The host (1-based).
    pub host: usize,
    /// Its NAT's kind.
    pub kind: NatKind,
}

impl FromStr for NatSpec {
    type Err = anyhow::Error;

    /// `h2`, `2`, `h2:cone` or `h3:symmetric`.
    fn from_str(text: &str) -> Result<NatSpec> {
        let (host, kind) = match text.split_once(':') {
            Some((host, kind)) => (host, kind.parse()?),
            None => (text, NatKind::Cone),
        };
        let index = host.strip_prefix('h').unwrap_or(host);
        let host = index
            .parse::<usize>()
            .ok()
            .filter(|&i| i >= 1 && i.to_string() == index)
            .with_context(|| {
                format!("bad NAT host {text:?}: use hI[:cone|:symmetric], e.g. h2:symmetric")
            })?;
        Ok(NatSpec { host, kind })
    }
}

/// A NAT router as recorded in the run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NatState {
    pub kind: NatKind,
    /// Its public (outside) address on the underlay: what the other hosts see.
    pub public: Ipv4Addr,
}

/// The nft ruleset of a NAT router in front of host `host`.
pub(crate) fn ruleset(host: usize, kind: NatKind) -> String {
    let lan = format!("198.19.{host}.0/24");
    let flags = match kind {
        NatKind::Cone => "",
        NatKind::Symmetric => " fully-random",
    };
    // Unsolicited datagrams from outside are dropped in the filter hooks, so their
    // conntrack entries are never confirmed: a probe that arrives before the host's own
    // first datagram leaves no entry behind that would make the NAT pick another port for
    // the host's mapping (the trap of simultaneous open on Linux).
    format!(
        "add table ip {NAT_TABLE}\n\
         add chain ip {NAT_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add rule ip {NAT_TABLE} postrouting oifname \"wan0\" ip saddr {lan} masquerade{flags}\n\
         add chain ip {NAT_TABLE} input {{ type filter hook input priority filter; policy accept; }}\n\
         add rule ip {NAT_TABLE} input iifname \"wan0\" icmp type echo-request accept\n\
         add rule ip {NAT_TABLE} input iifname \"wan0\" ct state new drop\n\
         add chain ip {NAT_TABLE} forward {{ type filter hook forward priority filter; policy accept; }}\n\
         add rule ip {NAT_TABLE} forward iifname \"wan0\" ct state new drop\n"
    )
}

/// Builds host `host`'s NAT router `P-nI`: `wan0` on the underlay switch with `public`,
/// `lan0` towards the host (the host's side is made by `topology::build_host`), forwarding
/// on, the ruleset of `kind`.
pub(crate) fn build_router(
    prefix: &str,
    host: usize,
    kind: NatKind,
    public: Ipv4Addr,
) -> Result<()> {
    let ns = names::nat_ns(prefix, host);
    let switch = names::underlay_ns(prefix);
    let port = format!("n{host}");
    crate::topology::add_netns(&ns)?;
    ip(&[
        "link", "add", "wan0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
        &switch,
    ])?;
    ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
    let public = format!("{public}/{}", crate::topology::UNDERLAY_PREFIX_LEN);
    ip(&["-n", &ns, "addr", "add", &public, "dev", "wan0"])?;
    ip(&["-n", &ns, "link", "set", "wan0", "up"])?;
    cmd::run(&mut cmd::in_netns(
        &ns,
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ))?;
    let mut nft = cmd::in_netns(
        &ns,
        &[cmd::tool("nft").as_os_str(), "-f".as_ref(), "-".as_ref()],
    );
    cmd::run_with_input(&mut nft, &ruleset(host, kind))
        .with_context(|| format!("cannot set up the NAT of h{host}"))?;
    Ok(())
}

impl Testnet {
    /// Whether host `i` sits behind a NAT, and of which kind.
    pub fn nat_kind(&self, i: usize) -> Result<Option<NatKind>> {
        Ok(self.host(i)?.nat.map(|n| n.kind))
    }

    /// Namespace of host `i`'s NAT router, `P-nI`.
    pub fn nat_ns(&self, i: usize) -> String {
        names::nat_ns(&self.state.prefix, i)
    }

    /// The address the other hosts see host `i` at: its NAT's public address, or its own
    /// underlay address when it has no NAT.
    pub fn public_addr(&self, i: usize) -> Result<Ipv4Addr> {
        let host = self.host(i)?;
        Ok(host.nat.map_or(host.underlay, |n| n.public))
    }

    /// The UDP mappings host `i`'s NAT holds now, as `conntrack -L -p udp` prints them
    /// (one line per mapping: the host's side first, then the answer's, whose `dport` is
    /// the public port).
    pub fn nat_mappings(&self, i: usize) -> Result<String> {
        self.require_nat(i)?;
        let out = cmd::run(&mut cmd::in_netns(
            &self.nat_ns(i),
            &[cmd::tool("conntrack").as_os_str(), "-L".as_ref(), "-p".as_ref(), "udp".as_ref()],
        ))
        .context("cannot list the NAT's mappings (is the `conntrack` tool installed? scripts/setup installs it)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Drops every mapping of host `i`'s NAT at once, as if they had all expired: the next
    /// datagram from outside is dropped until the host sends again.
    pub fn flush_nat(&self, i: usize) -> Result<()> {
        self.require_nat(i)?;
        cmd::run(&mut cmd::in_netns(
            &self.nat_ns(i),
            &[cmd::tool("conntrack").as_os_str(), "-F".as_ref()],
        ))
        .context("cannot flush the NAT's mappings (is the `conntrack` tool installed? scripts/setup installs it)")?;
        Ok(())
    }

    fn require_nat(&self, i: usize) -> Result<()> {
        if self.host(i)?.nat.is_none() {
            bail!("h{i} is not behind a NAT (start the run with --nat h{i})");
        }
        Ok(())
    }
}

/// The public UDP port `mappings` (as [`Testnet::nat_mappings`] returns them) give the
/// host's socket `from_port` towards `to`: `None` when there is no such mapping.
pub fn mapped_port(mappings: &str, from_port: u16, to: SocketAddrV4) -> Option<u16> {
    mappings.lines().find_map(|line| {
        let field = |key: &str, nth: usize| {
            line.split_whitespace()
                .filter_map(|w| w.strip_prefix(key))
                .nth(nth)
        };
        let sport = field("sport=", 0)?.parse::<u16>().ok()?;
        let dst = field("dst=", 0)?.parse::<Ipv4Addr>().ok()?;
        let dport = field("dport=", 0)?.parse::<u16>().ok()?;
        (sport == from_port && SocketAddrV4::new(dst, dport) == to)
            .then(|| field("dport=", 1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let spec = |t: &str| t.parse::<NatSpec>();
        assert_eq!(
            spec("h2").unwrap(),
            NatSpec {
                host: 2,
                kind: NatKind::Cone
            }
        );
        assert_eq!(
            spec("3:symmetric").unwrap(),
            NatSpec {
                host: 3,
                kind: NatKind::Symmetric
            }
        );
        assert_eq!(spec("h12:cone").unwrap().host, 12);
        for bad in ["", "h0", "h02", "x2", "h2:full", "h2:", "h-1", "h2:cone:x"] {
            assert!(spec(bad).is_err(), "{bad}");
        }
        let e = spec("h2:full").unwrap_err().to_string();
        assert!(e.contains("cone or symmetric"), "{e}");
    }

    #[test]
    fn rulesets_masquerade_and_drop_what_nobody_asked_for() {
        let cone = ruleset(2, NatKind::Cone);
        assert!(
            cone.contains("oifname \"wan0\" ip saddr 198.19.2.0/24 masquerade\n"),
            "{cone}"
        );
        assert!(cone.contains("input iifname \"wan0\" ct state new drop"));
        assert!(cone.contains("forward iifname \"wan0\" ct state new drop"));
        let symmetric = ruleset(3, NatKind::Symmetric);
        assert!(symmetric.contains("198.19.3.0/24 masquerade fully-random\n"));
    }

    #[test]
    fn mapped_ports_are_read_from_conntrack_lines() {
        let text = "udp      17 29 src=198.19.2.2 dst=198.18.0.11 sport=40000 dport=5000 \
                    [UNREPLIED] src=198.18.0.11 dst=198.18.0.12 sport=5000 dport=40000 mark=0 use=1\n\
                    udp      17 29 src=198.19.2.2 dst=198.18.0.13 sport=40000 dport=5000 \
                    [UNREPLIED] src=198.18.0.13 dst=198.18.0.12 sport=5000 dport=61234 mark=0 use=1\n";
        let h1 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 5000);
        let h3 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 13), 5000);
        assert_eq!(mapped_port(text, 40000, h1), Some(40000));
        assert_eq!(mapped_port(text, 40000, h3), Some(61234));
        assert_eq!(mapped_port(text, 40001, h1), None);
        let other_port = SocketAddrV4::new(*h1.ip(), 5001);
        assert_eq!(mapped_port(text, 40000, other_port), None);
        assert_eq!(mapped_port("", 40000, h1), None);
    }
}
