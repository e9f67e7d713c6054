//! This host's overlay address, decided without I/O: the config's `address` when it sets
//! one, else the first host address of the host's first subnet (its certificate's, once it
//! is a member). The daemon puts the result on the TUN and uses it as the preferred source
//! of its routes (`control::Ctx::apply_address`); the peers view shows every member's
//! address by the same convention ([`first_host`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The first address of `net` a host can hold: the one after the network address
/// (`10.42.1.1` for `10.42.1.0/24`, `fd00::1` for `fd00::/64`), or the address itself for a
/// subnet of one address (/32, /128). The Docker plugin gives its bridges the same address
/// (the gateway of the host's slice), which is fine: Linux lets one address sit on both.
pub fn first_host(net: IpNet) -> IpAddr {
    match net.trunc() {
        IpNet::V4(n) => {
            let base = u32::from(n.network());
            let first = if n.prefix_len() < 32 { base + 1 } else { base };
            IpAddr::V4(Ipv4Addr::from(first))
        }
        IpNet::V6(n) => {
            let base = u128::from(n.network());
            let first = if n.prefix_len() < 128 { base + 1 } else { base };
            IpAddr::V6(Ipv6Addr::from(first))
        }
    }
}

/// This host's overlay address: `configured` (the config's `address`, an override) when
/// set, else [`first_host`] of the first of `subnets` (a member's certificate subnets; empty
/// when it is in no network), else none.
pub fn effective(configured: Option<IpAddr>, subnets: &[IpNet]) -> Option<IpAddr> {
    configured.or_else(|| subnets.first().map(|n| first_host(*n)))
}

/// This host's own networks: the only destinations a decrypted packet may have (the
/// router drops the rest as `destination_not_allowed`). Its overlay `address` (a /32 or
/// /128: an override may lie outside every subnet), the config's static `subnets` and a
/// member's certificate subnets.
pub fn local_networks(
    address: Option<IpAddr>,
    configured: &[IpNet],
    certified: &[IpNet],
) -> Vec<IpNet> {
    let own = address.map(IpNet::from);
    own.into_iter()
        .chain(configured.iter().copied())
        .chain(certified.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn first_host_is_the_address_after_the_network_address() {
        for (subnet, first) in [
            ("10.42.1.0/24", "10.42.1.1"),
            ("10.42.1.77/24", "10.42.1.1"), // not truncated in the input
            ("10.43.0.0/16", "10.43.0.1"),
            ("10.42.1.8/30", "10.42.1.9"),
            ("10.42.1.8/31", "10.42.1.9"),
            ("10.42.1.8/32", "10.42.1.8"),
            ("0.0.0.0/0", "0.0.0.1"),
            ("fd00:42:1::/64", "fd00:42:1::1"),
            ("fd00::5/128", "fd00::5"),
        ] {
            assert_eq!(first_host(net(subnet)), ip(first), "{subnet}");
        }
    }

    #[test]
    fn the_configured_address_overrides_the_subnet() {
        let subnets = [net("10.42.1.0/24"), net("10.43.1.0/24")];
        assert_eq!(
            effective(Some(ip("10.42.1.200")), &subnets),
            Some(ip("10.42.1.200"))
        );
        assert_eq!(
            effective(Some(ip("10.42.1.200")), &[]),
            Some(ip("10.42.1.200"))
        );
    }

    #[test]
    fn without_override_the_first_subnet_decides() {
        // The first subnet is the one in the network's cidr; extra ranges come after it.
        let subnets = [net("10.42.1.0/24"), net("10.43.1.0/24")];
        assert_eq!(effective(None, &subnets), Some(ip("10.42.1.1")));
        assert_eq!(
            effective(None, &[net("fd00:42:7::/64")]),
            Some(ip("fd00:42:7::1"))
        );
    }

    #[test]
    fn no_override_and_no_subnet_is_no_address() {
        assert_eq!(effective(None, &[]), None);
    }

    #[test]
    fn local_networks_are_the_address_and_every_subnet() {
        assert_eq!(
            local_networks(
                Some(ip("10.99.0.1")),
                &[net("10.42.1.0/24")],
                &[net("10.43.1.0/24")]
            ),
            vec![
                net("10.99.0.1/32"),
                net("10.42.1.0/24"),
                net("10.43.1.0/24")
            ]
        );
        assert_eq!(local_networks(None, &[], &[]), Vec::<IpNet>::new());
        assert_eq!(
            local_networks(Some(ip("fd00::1")), &[], &[]),
            vec![net("fd00::1/128")]
        );
    }
}
