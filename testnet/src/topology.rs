//! Building the namespaces, veths and bridges of a run (see the crate doc's picture). Every
//! step is one `ip` call from the root namespace; veths are created with both ends already
//! in their namespaces, so no interface of a run lives in the root namespace.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::MTU;
use crate::cmd::{self, ip};
use crate::names;
use crate::nat::NatState;

/// Prefix length of the underlay network 198.18.0.0/15.
pub(crate) const UNDERLAY_PREFIX_LEN: u8 = 15;

/// `P-ul` with bridge `br0` (up, no address).
pub(crate) fn build_underlay(prefix: &str) -> Result<()> {
    let ns = names::underlay_ns(prefix);
    add_netns(&ns)?;
    ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &ns, "link", "set", "br0", "up"])?;
    Ok(())
}

/// Host `host`: namespace `P-hI`, `ul0` with `underlay`, forwarding on, container bridge
/// `br0` with `10.42.I.1/24`. Without `nat`, `ul0` is on the underlay switch
/// (`underlay/15`); with it, `ul0` is linked to `lan0` of the NAT router `P-nI` (built
/// first, see `nat`), `underlay` is `198.19.I.2/24` and the default route goes through
/// the router.
pub(crate) fn build_host(
    prefix: &str,
    host: usize,
    underlay: Ipv4Addr,
    nat: Option<NatState>,
) -> Result<()> {
    let ns = names::host_ns(prefix, host);
    add_netns(&ns)?;
    let underlay = match nat {
        None => {
            let switch = names::underlay_ns(prefix);
            let port = format!("h{host}");
            ip(&[
                "link", "add", "ul0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
                &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            format!("{underlay}/{UNDERLAY_PREFIX_LEN}")
        }
        Some(nat) => {
            let router = names::nat_ns(prefix, host);
            crate::nat::build_router(prefix, host, nat.kind, nat.public)?;
            ip(&[
                "link", "add", "ul0", "netns", &ns, "type", "veth", "peer", "name", "lan0",
                "netns", &router,
            ])?;
            let gateway = format!("{}/24", names::nat_gateway_addr(host));
            ip(&["-n", &router, "addr", "add", &gateway, "dev", "lan0"])?;
            ip(&["-n", &router, "link", "set", "lan0", "up"])?;
            format!("{underlay}/24")
        }
    };
    ip(&["-n", &ns, "addr", "add", &underlay, "dev", "ul0"])?;
    ip(&["-n", &ns, "link", "set", "ul0", "up"])?;
    if nat.is_some() {
        let gateway = names::nat_gateway_addr(host).to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &gateway])?;
    }
    cmd::run(&mut cmd::in_netns(
        &ns,
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ))?;
    let mtu = MTU.to_string();
    let bridge_addr = format!("{}/24", names::host_overlay_addr(host));
    ip(&[
        "-n", &ns, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
    ])?;
    ip(&["-n", &ns, "addr", "add", &bridge_addr, "dev", "br0"])?;
    ip(&["-n", &ns, "link", "set", "br0", "up"])?;
    Ok(())
}

/// Container `container` of host `host`: namespace `P-hI-cJ`, `eth0` with `10.42.I.(1+J)/24`
/// and a default route via the host's bridge; the host end `cJ` joins the host's `br0`.
pub(crate) fn build_container(prefix: &str, host: usize, container: usize) -> Result<()> {
    let ns = names::container_ns(prefix, host, container);
    let host_ns = names::host_ns(prefix, host);
    let port = format!("c{container}");
    let mtu = MTU.to_string();
    add_netns(&ns)?;
    ip(&[
        "link", "add", "eth0", "netns", &ns, "mtu", &mtu, "type", "veth", "peer", "name", &port,
        "netns", &host_ns, "mtu", &mtu,
    ])?;
    ip(&["-n", &host_ns, "link", "set", &port, "master", "br0", "up"])?;
    let addr = format!("{}/24", names::container_addr(host, container));
    let gateway = names::host_overlay_addr(host).to_string();
    ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "route", "add", "default", "via", &gateway])?;
    Ok(())
}

/// A new namespace with `lo` up.
pub(crate) fn add_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns]).with_context(|| format!("cannot create namespace {ns}"))?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}
