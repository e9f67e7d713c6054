//! Names and addresses: run prefixes, namespace names and how to parse them back, and the
//! address plan. Pure; no I/O except reading random bytes for a fresh prefix.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Where runs keep their state: `/run/testnet/<prefix>/`.
pub const RUN_ROOT: &str = "/run/testnet";

/// Longest accepted prefix.
const MAX_PREFIX_LEN: usize = 16;

/// Checks a run prefix: 1 to 16 characters of `a-z` and `0-9`, starting with a letter (so a
/// namespace name splits back unambiguously at its first `-`), and not `current` (the CLI's
/// pointer file in [`RUN_ROOT`]).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && prefix != "current";
    if !ok {
        bail!(
            "bad prefix {prefix:?}: use 1 to {MAX_PREFIX_LEN} characters of a-z and 0-9, \
             starting with a letter (not `current`)"
        );
    }
    Ok(())
}

/// A fresh prefix: `t` and 5 random hex digits.
pub(crate) fn random_prefix() -> Result<String> {
    let mut bytes = [0u8; 3];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("t{}", &hex[..5]))
}

/// The run directory of a prefix.
pub(crate) fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(prefix)
}

/// What a namespace of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum NsKind {
    /// The containers come first so that deleting in sorted order goes leaves first.
    Container(usize, usize),
    Host(usize),
    /// The NAT router in front of host `I` (`P-nI`).
    Nat(usize),
    Underlay,
}

pub(crate) fn underlay_ns(prefix: &str) -> String {
    format!("{prefix}-ul")
}

pub(crate) fn host_ns(prefix: &str, host: usize) -> String {
    format!("{prefix}-h{host}")
}

/// The NAT router in front of host `host`.
pub(crate) fn nat_ns(prefix: &str, host: usize) -> String {
    format!("{prefix}-n{host}")
}

pub(crate) fn container_ns(prefix: &str, host: usize, container: usize) -> String {
    format!("{prefix}-h{host}-c{container}")
}

/// Splits a namespace name made by this crate into its prefix and kind; `None` for any other
/// name (those are never touched).
pub(crate) fn parse_netns(name: &str) -> Option<(&str, NsKind)> {
    let (prefix, rest) = name.split_once('-')?;
    validate_prefix(prefix).ok()?;
    Some((prefix, parse_local(rest)?))
}

/// Parses the part after the prefix: `ul`, `hI`, `hI-cJ` or `nI`.
pub(crate) fn parse_local(rest: &str) -> Option<NsKind> {
    if rest == "ul" {
        return Some(NsKind::Underlay);
    }
    if let Some(nat) = rest.strip_prefix('n') {
        return Some(NsKind::Nat(parse_index(nat)?));
    }
    let rest = rest.strip_prefix('h')?;
    match rest.split_once("-c") {
        None => Some(NsKind::Host(parse_index(rest)?)),
        Some((host, container)) => Some(NsKind::Container(
            parse_index(host)?,
            parse_index(container)?,
        )),
    }
}

/// A 1-based index written without sign or leading zeros.
fn parse_index(text: &str) -> Option<usize> {
    let n: usize = text.parse().ok()?;
    (n >= 1 && n.to_string() == text).then_some(n)
}

/// Host `host`'s first underlay address.
pub(crate) fn underlay_addr(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, (10 + host) as u8)
}

/// The address of host `host` on the network behind its NAT, `198.19.I.2` (in
/// `198.19.I.0/24`, whose `.1` is the NAT's inside address).
pub(crate) fn nat_lan_addr(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, host as u8, 2)
}

/// The inside address of host `host`'s NAT router, `198.19.I.1`: its default gateway.
pub(crate) fn nat_gateway_addr(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, host as u8, 1)
}

/// Whether an address is in the underlay range 198.18.0.0/15.
pub(crate) fn in_underlay_range(addr: Ipv4Addr) -> bool {
    let [a, b, ..] = addr.octets();
    a == 198 && (b & 0xfe) == 18
}

/// Host `host`'s address on its container bridge (and overlay address).
pub(crate) fn host_overlay_addr(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, host as u8, 1)
}

/// Container `container`'s address on host `host`.
pub(crate) fn container_addr(host: usize, container: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, host as u8, (1 + container) as u8)
}

/// Host `host`'s container subnet.
pub(crate) fn host_subnet(host: usize) -> String {
    format!("10.42.{host}.0/24")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(validate_prefix("tn").is_ok());
        assert!(validate_prefix("t0a1b2").is_ok());
        for bad in ["", "1a", "a-b", "A", "current", "abcdefghijklmnopq", "blA"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
        let p = random_prefix().unwrap();
        assert!(validate_prefix(&p).is_ok() && p.len() == 6, "{p}");
    }

    #[test]
    fn parses_only_our_names() {
        assert_eq!(parse_netns("tn-ul"), Some(("tn", NsKind::Underlay)));
        assert_eq!(parse_netns("tn-h12"), Some(("tn", NsKind::Host(12))));
        assert_eq!(parse_netns("tn-n3"), Some(("tn", NsKind::Nat(3))));
        assert!(NsKind::Host(9) < NsKind::Nat(1) && NsKind::Nat(9) < NsKind::Underlay);
        assert_eq!(
            parse_netns("t1a2b3-h1-c2"),
            Some(("t1a2b3", NsKind::Container(1, 2)))
        );
        for other in [
            "blA",
            "blB",
            "tn",
            "tn-",
            "tn-h",
            "tn-h0",
            "tn-h01",
            "tn-h1-c",
            "tn-h1-c1-x",
            "tn-x1",
            "Tn-h1",
            "tn-h1c1",
            "tn-ul1",
            "tn-n0",
            "tn-n",
            "tn-n1-c1",
            "docker-h1",
        ] {
            // `docker-h1` parses as a name we could have made; the caller only touches it
            // when `/run/testnet/docker` exists or the prefix is named explicitly.
            if other != "docker-h1" {
                assert_eq!(parse_netns(other), None, "{other}");
            }
        }
    }

    #[test]
    fn address_plan() {
        assert_eq!(underlay_addr(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(container_addr(2, 2), Ipv4Addr::new(10, 42, 2, 3));
        assert!(in_underlay_range(Ipv4Addr::new(198, 19, 3, 4)));
        assert!(!in_underlay_range(Ipv4Addr::new(198, 20, 0, 1)));
        assert_eq!(host_subnet(3), "10.42.3.0/24");
        assert_eq!(nat_lan_addr(3), Ipv4Addr::new(198, 19, 3, 2));
        assert_eq!(nat_gateway_addr(3), Ipv4Addr::new(198, 19, 3, 1));
    }
}
