//! Cryptokey routing: longest-prefix match from an IP address to the value (a peer) that
//! owns the most specific subnet containing it, as WireGuard's allowed-IPs table does.
//!
//! Lookups cost one hash probe per distinct prefix length present (a handful in an
//! overlay), with no allocation. The table is built once and replaced whole when the
//! peer set changes; it is never edited under readers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Errors building a routing table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// The same subnet was given twice with different owners.
    #[error("subnet {subnet} is claimed twice")]
    Duplicate {
        /// The subnet.
        subnet: IpNet,
    },
}

/// One address family's table: for each prefix length present, longest first, a map
/// from the masked network address to the owner.
#[derive(Debug, Clone)]
struct FamilyTable<A, T> {
    by_len: Vec<(u8, HashMap<A, T>)>,
}

impl<A: std::hash::Hash + Eq + Copy, T: Copy> FamilyTable<A, T> {
    fn new() -> Self {
        FamilyTable { by_len: Vec::new() }
    }

    fn insert(&mut self, len: u8, network: A, value: T) -> bool {
        let pos = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.by_len.insert(pos, (len, HashMap::new()));
                pos
            }
        };
        self.by_len[pos].1.insert(network, value).is_none()
    }

    fn lookup(&self, mask: impl Fn(u8) -> A) -> Option<(u8, T)> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&mask(*len)).map(|v| (*len, *v)))
    }
}

/// A longest-prefix-match table from subnets to owners of type `T` (e.g. a peer index).
#[derive(Debug, Clone)]
pub struct RoutingTable<T> {
    v4: FamilyTable<u32, T>,
    v6: FamilyTable<u128, T>,
    len: usize,
}

impl<T: Copy> Default for RoutingTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len))
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len))
    }
}

impl<T: Copy> RoutingTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        RoutingTable {
            v4: FamilyTable::new(),
            v6: FamilyTable::new(),
            len: 0,
        }
    }

    /// Builds a table from `(subnet, owner)` pairs; a subnet given twice is an error.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (IpNet, T)>,
    ) -> Result<Self, RoutingError> {
        let mut table = Self::new();
        for (subnet, value) in entries {
            if !table.insert(subnet, value) {
                return Err(RoutingError::Duplicate { subnet });
            }
        }
        Ok(table)
    }

    /// Adds `subnet` (host bits are ignored). Returns false, replacing the owner, if the
    /// subnet was already present.
    pub fn insert(&mut self, subnet: IpNet, value: T) -> bool {
        let fresh = match subnet.trunc() {
            IpNet::V4(net) => self
                .v4
                .insert(net.prefix_len(), u32::from(net.network()), value),
            IpNet::V6(net) => self
                .v6
                .insert(net.prefix_len(), u128::from(net.network()), value),
        };
        if fresh {
            self.len += 1;
        }
        fresh
    }

    /// The owner of the most specific subnet containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        self.lookup_with_len(addr).map(|(_, v)| v)
    }

    /// Like [`RoutingTable::lookup`], with the prefix length of the matching subnet.
    pub fn lookup_with_len(&self, addr: IpAddr) -> Option<(u8, T)> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// IPv4 lookup.
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<(u8, T)> {
        let bits = u32::from(addr);
        self.v4.lookup(|len| mask_v4(bits, len))
    }

    /// IPv6 lookup.
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<(u8, T)> {
        let bits = u128::from(addr);
        self.v6.lookup(|len| mask_v6(bits, len))
    }

    /// Number of subnets in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table holds no subnet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reports the first pair of overlapping subnets owned by different owners, if any.
/// Overlap between peers makes routing depend on prefix length in ways an operator
/// rarely means, so the daemon refuses such configs (as Nebula refuses overlapping
/// certificates' subnets).
pub fn first_overlap<T: PartialEq + Copy>(entries: &[(IpNet, T)]) -> Option<(IpNet, IpNet)> {
    for (i, (a, owner_a)) in entries.iter().enumerate() {
        for (b, owner_b) in &entries[i + 1..] {
            if owner_a != owner_b && (a.contains(&b.network()) || b.contains(&a.network())) {
                return Some((*a, *b));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let table = RoutingTable::from_entries([
            (net("10.42.0.0/16"), 1),
            (net("10.42.2.0/24"), 2),
            (net("10.42.2.128/25"), 3),
            (net("0.0.0.0/0"), 9),
            (net("fd00::/8"), 4),
            (net("fd00:1::/64"), 5),
        ])
        .unwrap();
        assert_eq!(table.lookup("10.42.1.7".parse().unwrap()), Some(1));
        assert_eq!(table.lookup("10.42.2.7".parse().unwrap()), Some(2));
        assert_eq!(table.lookup("10.42.2.200".parse().unwrap()), Some(3));
        assert_eq!(table.lookup("192.0.2.1".parse().unwrap()), Some(9));
        assert_eq!(table.lookup("fd00:1::9".parse().unwrap()), Some(5));
        assert_eq!(table.lookup("fd00:2::9".parse().unwrap()), Some(4));
        assert_eq!(table.lookup("2001:db8::1".parse().unwrap()), None);
        assert_eq!(table.len(), 6);
    }

    #[test]
    fn host_bits_are_ignored_and_duplicates_refused() {
        let mut table = RoutingTable::new();
        assert!(table.insert(net("10.42.1.9/24"), 1));
        assert_eq!(table.lookup("10.42.1.1".parse().unwrap()), Some(1));
        let err = RoutingTable::from_entries([(net("10.1.0.0/16"), 1), (net("10.1.0.0/16"), 2)])
            .unwrap_err();
        assert_eq!(
            err,
            RoutingError::Duplicate {
                subnet: net("10.1.0.0/16")
            }
        );
    }

    #[test]
    fn overlap_detection() {
        let entries = [(net("10.42.1.0/24"), 1), (net("10.42.2.0/24"), 2)];
        assert_eq!(first_overlap(&entries), None);
        let entries = [(net("10.42.0.0/16"), 1), (net("10.42.2.0/24"), 2)];
        assert!(first_overlap(&entries).is_some());
        // one owner's own subnets may nest
        let entries = [(net("10.42.0.0/16"), 1), (net("10.42.2.0/24"), 1)];
        assert_eq!(first_overlap(&entries), None);
    }

    /// The naive model: scan every entry, keep the longest match.
    fn naive(entries: &[(IpNet, u16)], addr: IpAddr) -> Option<u16> {
        entries
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, v)| *v)
    }

    fn arb_v4_net() -> impl Strategy<Value = IpNet> {
        // few distinct high bits so that prefixes actually nest and collide
        (0u32..16, 0u8..=32).prop_map(|(hi, len)| {
            let addr = Ipv4Addr::from(0x0a00_0000 | (hi << 16) | (hi * 0x0101));
            IpNet::new(IpAddr::V4(addr), len).unwrap().trunc()
        })
    }

    fn arb_v6_net() -> impl Strategy<Value = IpNet> {
        (0u128..16, 0u8..=128).prop_map(|(hi, len)| {
            let addr = Ipv6Addr::from((0xfd00u128 << 112) | (hi << 64) | hi);
            IpNet::new(IpAddr::V6(addr), len).unwrap().trunc()
        })
    }

    proptest! {
        #[test]
        fn matches_naive_model(
            nets in proptest::collection::vec(prop_oneof![arb_v4_net(), arb_v6_net()], 0..40),
            probes in proptest::collection::vec((0u32..16, any::<u16>(), any::<bool>()), 1..60),
        ) {
            let mut entries: Vec<(IpNet, u16)> = Vec::new();
            for (i, n) in nets.into_iter().enumerate() {
                if !entries.iter().any(|(e, _)| *e == n) {
                    entries.push((n, i as u16));
                }
            }
            let table = RoutingTable::from_entries(entries.iter().copied()).unwrap();
            for (hi, lo, v6) in probes {
                let addr = if v6 {
                    IpAddr::V6(Ipv6Addr::from((0xfd00u128 << 112) | ((hi as u128) << 64) | lo as u128))
                } else {
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (hi << 16) | lo as u32))
                };
                prop_assert_eq!(table.lookup(addr), naive(&entries, addr));
            }
        }
    }
}
