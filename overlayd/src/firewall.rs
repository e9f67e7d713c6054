//! What may leave the TUN for the rest of the host, in nftables (defence in depth behind the
//! router's own check): packets that come out of the TUN are forwarded only to this host's
//! own networks (its subnets and overlay address, [`crate::address::local_networks`]), so a
//! member cannot use the host as a gateway to its LAN, other interfaces or the internet,
//! even if the router's check were bypassed. A table of overlayd's own, `inet overlayd`,
//! replaced whole (one `nft -f -` transaction) whenever the local networks change, and
//! removed at shutdown. [`ruleset`] is pure; running nft is `docker::filter::apply`'s job.
//!
//! A host that should forward for its peers (a gateway to a LAN) is not supported: the
//! router drops such packets first (`destination_not_allowed`).

use std::fmt::Write as _;

use ipnet::IpNet;

/// The nftables table (family `inet`) that holds the rule; nothing else touches it.
pub const TABLE: &str = "overlayd";

/// The `nft -f` script that makes table [`TABLE`] hold exactly the forward rule for `tun`
/// and `local`: from `tun`, forward only to `local`; with `local` empty, nothing.
pub fn ruleset(tun: &str, local: &[IpNet]) -> String {
    let mut s = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    let _ = writeln!(s, "table inet {TABLE} {{");
    let _ = writeln!(s, "\tchain forward {{");
    // before the usual filter chains: a drop here is final whatever they accept
    let _ = writeln!(
        s,
        "\t\ttype filter hook forward priority filter - 10; policy accept;"
    );
    let set = |v4: bool| -> Vec<String> {
        local
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)) == v4)
            .map(|n| n.trunc().to_string())
            .collect()
    };
    for (family, nets) in [("ip", set(true)), ("ip6", set(false))] {
        if nets.is_empty() {
            let _ = writeln!(
                s,
                "\t\tiifname \"{tun}\" meta nfproto {} counter drop",
                if family == "ip" { "ipv4" } else { "ipv6" }
            );
        } else {
            let _ = writeln!(
                s,
                "\t\tiifname \"{tun}\" {family} daddr != {{ {} }} counter drop",
                nets.join(", ")
            );
        }
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    s
}

/// The script that removes the table (at shutdown).
pub fn removal() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// Makes the table allow forwarding from `tun` to `local` only. An error (no nft, an old
/// kernel) is logged, not returned: the router's own check still holds.
pub async fn apply(tun: &str, local: &[IpNet]) {
    if let Err(e) = crate::docker::filter::apply(&ruleset(tun, local)).await {
        tracing::warn!(
            error = %format!("{e:#}"),
            "cannot install the nftables rule that keeps TUN traffic to this host's own networks; the router's check still drops the rest (install nftables)"
        );
    }
}

/// Removes the table; errors are logged.
pub async fn remove() {
    if let Err(e) = crate::docker::filter::apply(&removal()).await {
        tracing::warn!(error = %format!("{e:#}"), "cannot remove nftables table inet {TABLE}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_the_tun_only_local_networks_are_forwarded() {
        let local: Vec<IpNet> = [
            "10.42.1.1/32",
            "10.42.1.0/24",
            "10.43.1.7/24",
            "fd00:1::/64",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        let s = ruleset("ovl0", &local);
        assert!(s.starts_with("table inet overlayd {}\ndelete table inet overlayd\n"));
        assert!(s.contains(
            "iifname \"ovl0\" ip daddr != { 10.42.1.1/32, 10.42.1.0/24, 10.43.1.0/24 } counter drop"
        ));
        assert!(s.contains("iifname \"ovl0\" ip6 daddr != { fd00:1::/64 } counter drop"));
        assert!(s.contains("hook forward priority filter - 10; policy accept;"));
    }

    #[test]
    fn without_local_networks_nothing_is_forwarded() {
        let s = ruleset("ovl0", &[]);
        assert!(s.contains("iifname \"ovl0\" meta nfproto ipv4 counter drop"));
        assert!(s.contains("iifname \"ovl0\" meta nfproto ipv6 counter drop"));
    }

    #[test]
    fn removal_works_whether_or_not_the_table_exists() {
        assert_eq!(
            removal(),
            "table inet overlayd {}\ndelete table inet overlayd\n"
        );
    }
}
