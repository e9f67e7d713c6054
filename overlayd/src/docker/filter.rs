//! Isolation between overlayd Docker networks, and their egress, in nftables: a table of
//! our own ([`TABLE`]) with a `forward` chain and an `egress` chain, rewritten as a whole
//! (one atomic `nft -f -` transaction) whenever the set of networks changes, and removed
//! with the last network.
//!
//! For each network (its bridge `B`, its range `R` of the overlay, e.g. `10.43.0.0/16`):
//!
//! - (a) packets from `B` to any other overlayd bridge are dropped: two networks on one host;
//! - (b) packets from `B` into the TUN whose destination is outside `R` are dropped: a
//!   container cannot reach another network's containers on other hosts;
//! - (c) packets from the TUN into `B` whose source is outside `R` are dropped: nor can
//!   another network's containers elsewhere reach it, whatever their host allows.
//!
//! IPv6 between a bridge and the TUN is dropped both ways (the networks are IPv4 only).
//!
//! A second chain, `egress` (NAT, postrouting), masquerades what a network's containers
//! send out of any interface but the TUN and the plugin's bridges (the host's uplink: the
//! internet, the LAN), as Docker's own bridge networks do; traffic through the overlay keeps
//! its container source, which the peers check.
//!
//! Two more NAT chains, `publish` (prerouting) and `publish_local` (output, for the host's
//! own connections), forward the host ports containers publish (`-p`) to them: only packets
//! to one of the host's own addresses, so traffic passing through is never redirected.
//!
//! [`ruleset`] is pure; [`apply`] is the one place that runs `nft`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};

use super::book::{Forward, Isolated};

/// The nftables table (family `inet`) that holds the rules; nothing else touches it.
pub const TABLE: &str = "overlayd_docker";
/// Prefix of every plugin bridge (see [`super::book::Network::bridge`]).
pub const BRIDGE_PREFIX: &str = "ovdb";
/// Longest an `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `nft -f` script that makes the table hold exactly the rules for `networks` (`tun`:
/// the TUN's name), or removes the table when there are none. Creating the table before
/// deleting it makes the script work whether or not the table exists, in one transaction.
pub fn ruleset(tun: &str, networks: &[Isolated], forwards: &[Forward]) -> String {
    let mut s = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    if networks.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table inet {TABLE} {{");
    open_chain(&mut s, "forward", "filter hook forward priority filter");
    for n in networks {
        let (b, r) = (&n.bridge, n.range);
        let _ = writeln!(s, "\t\t# bridge {b}, range {r}");
        let _ = writeln!(
            s,
            "\t\tiifname \"{b}\" oifname \"{BRIDGE_PREFIX}*\" oifname != \"{b}\" counter drop"
        );
        let _ = writeln!(
            s,
            "\t\tiifname \"{b}\" oifname \"{tun}\" ip daddr != {r} counter drop"
        );
        let _ = writeln!(
            s,
            "\t\tiifname \"{tun}\" oifname \"{b}\" ip saddr != {r} counter drop"
        );
        let _ = writeln!(
            s,
            "\t\tiifname \"{b}\" oifname \"{tun}\" meta nfproto ipv6 counter drop"
        );
        let _ = writeln!(
            s,
            "\t\tiifname \"{tun}\" oifname \"{b}\" meta nfproto ipv6 counter drop"
        );
    }
    let _ = writeln!(s, "\t}}");
    open_chain(&mut s, "egress", "nat hook postrouting priority srcnat");
    for n in networks {
        let (b, slice) = (&n.bridge, n.slice);
        let _ = writeln!(
            s,
            "\t\tip saddr {slice} ip daddr != {slice} oifname != \"{tun}\" oifname != \"{BRIDGE_PREFIX}*\" counter masquerade comment \"{b}\""
        );
    }
    let _ = writeln!(s, "\t}}");
    for (chain, hook) in [
        ("publish", "nat hook prerouting priority dstnat"),
        ("publish_local", "nat hook output priority -100"),
    ] {
        open_chain(&mut s, chain, hook);
        for f in forwards {
            let p = f.published;
            let host = p
                .host_ip
                .map_or_else(String::new, |ip| format!("ip daddr {ip} "));
            let _ = writeln!(
                s,
                "\t\tfib daddr type local {host}{} dport {} counter dnat ip to {}:{}",
                p.proto.name(),
                p.host_port,
                f.to,
                p.port
            );
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// Opens chain `name` of type and hook `hook` (`nat hook output priority -100`), policy
/// accept.
fn open_chain(s: &mut String, name: &str, hook: &str) {
    let _ = writeln!(s, "\tchain {name} {{");
    let _ = writeln!(s, "\t\ttype {hook}; policy accept;");
}

/// Runs `nft -f -` with `script` on standard input (bounded by a few seconds).
pub async fn apply(script: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    if script.contains(['\\', '\0']) {
        bail!("refusing an nft script with a backslash or NUL (an odd interface name?)");
    }
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run nft (install the nftables package)")?;
    let mut stdin = child.stdin.take().context("nft has no standard input")?;
    let run = async {
        stdin.write_all(script.as_bytes()).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(NFT_TIMEOUT, run)
        .await
        .with_context(|| format!("nft did not finish within {} s", NFT_TIMEOUT.as_secs()))?
        .context("cannot run nft")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("nft failed ({}): {}", out.status, first.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::book::{Proto, Published};

    #[test]
    fn ruleset_keeps_each_network_to_its_range_and_its_bridge() {
        let nets = [
            Isolated {
                bridge: "ovdbaaaa".into(),
                range: "10.42.0.0/16".parse().unwrap(),
                slice: "10.42.7.0/24".parse().unwrap(),
            },
            Isolated {
                bridge: "ovdbbbbb".into(),
                range: "10.43.0.0/16".parse().unwrap(),
                slice: "10.43.7.0/24".parse().unwrap(),
            },
        ];
        let forwards = [Forward {
            published: Published {
                proto: Proto::Tcp,
                host_ip: Some("198.18.0.11".parse().unwrap()),
                host_port: 8080,
                port: 5000,
            },
            to: "10.42.7.2".parse().unwrap(),
        }];
        let s = ruleset("ovl0", &nets, &forwards);
        assert!(
            s.starts_with(
                "table inet overlayd_docker {}\ndelete table inet overlayd_docker\ntable inet overlayd_docker {\n"
            ),
            "{s}"
        );
        assert!(s.contains("type filter hook forward priority filter; policy accept;"));
        for line in [
            r#"iifname "ovdbaaaa" oifname "ovdb*" oifname != "ovdbaaaa" counter drop"#,
            r#"iifname "ovdbaaaa" oifname "ovl0" ip daddr != 10.42.0.0/16 counter drop"#,
            r#"iifname "ovl0" oifname "ovdbaaaa" ip saddr != 10.42.0.0/16 counter drop"#,
            r#"iifname "ovdbbbbb" oifname "ovdb*" oifname != "ovdbbbbb" counter drop"#,
            r#"iifname "ovdbbbbb" oifname "ovl0" ip daddr != 10.43.0.0/16 counter drop"#,
            r#"iifname "ovl0" oifname "ovdbbbbb" ip saddr != 10.43.0.0/16 counter drop"#,
            r#"iifname "ovdbbbbb" oifname "ovl0" meta nfproto ipv6 counter drop"#,
            "type nat hook postrouting priority srcnat; policy accept;",
            r#"ip saddr 10.42.7.0/24 ip daddr != 10.42.7.0/24 oifname != "ovl0" oifname != "ovdb*" counter masquerade comment "ovdbaaaa""#,
            r#"ip saddr 10.43.7.0/24 ip daddr != 10.43.7.0/24 oifname != "ovl0" oifname != "ovdb*" counter masquerade comment "ovdbbbbb""#,
            "type nat hook prerouting priority dstnat; policy accept;",
            "type nat hook output priority -100; policy accept;",
        ] {
            assert!(
                s.lines().any(|l| l.trim() == line),
                "{line} missing in\n{s}"
            );
        }
        let dnat = "fib daddr type local ip daddr 198.18.0.11 tcp dport 8080 counter dnat ip to 10.42.7.2:5000";
        assert_eq!(s.lines().filter(|l| l.trim() == dnat).count(), 2, "{s}");
        assert_eq!(
            ruleset("ovl0", &[], &[]),
            "table inet overlayd_docker {}\ndelete table inet overlayd_docker\n",
            "no network: the table goes"
        );
    }
}
