//! Routes and the TUN's address through netlink (rtnetlink), never by running `ip`. The
//! daemon adds one route per peer subnet through its TUN, remembers what it added, and
//! removes exactly that on shutdown.

use std::net::IpAddr;

use anyhow::Context;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{Handle, RouteMessageBuilder};

/// Routes this daemon installed, for removal on shutdown.
pub struct Routes {
    handle: Handle,
    installed: Vec<Installed>,
}

/// One route this daemon installed: what it routes, through which interface, and the
/// message that made it (the one that deletes it: the kernel matches the preferred source).
struct Installed {
    net: IpNet,
    if_index: u32,
    message: RouteMessage,
}

fn message(net: IpNet, if_index: u32, source: Option<IpAddr>) -> RouteMessage {
    match net {
        IpNet::V4(n) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .output_interface(if_index);
            if let Some(IpAddr::V4(src)) = source {
                b = b.pref_source(src);
            }
            b.build()
        }
        IpNet::V6(n) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .output_interface(if_index);
            if let Some(IpAddr::V6(src)) = source {
                b = b.pref_source(src);
            }
            b.build()
        }
    }
}

impl Routes {
    /// Opens a netlink connection (its task runs on the current tokio runtime).
    pub fn connect() -> anyhow::Result<Routes> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        Ok(Routes {
            handle,
            installed: Vec::new(),
        })
    }

    /// Sets the TUN's MTU, puts this host's overlay `address` on it (as a /32 or /128),
    /// and brings it up.
    pub async fn configure_link(
        &self,
        if_index: u32,
        mtu: u16,
        address: Option<IpAddr>,
    ) -> anyhow::Result<()> {
        let link = rtnetlink::LinkUnspec::new_with_index(if_index)
            .mtu(u32::from(mtu))
            .up()
            .build();
        self.handle
            .link()
            .set(link)
            .execute()
            .await
            .with_context(|| format!("cannot set MTU {mtu} and bring the TUN up (netlink)"))?;
        if let Some(addr) = address {
            self.add_address(if_index, addr).await?;
        }
        Ok(())
    }

    /// Puts `addr` on interface `if_index` as a /32 (or /128); one already there is kept.
    pub async fn add_address(&self, if_index: u32, addr: IpAddr) -> anyhow::Result<()> {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        self.handle
            .address()
            .add(if_index, addr, len)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot put address {addr} on the TUN (netlink)"))
    }

    /// Removes `addr` from interface `if_index`, if it is there. The kernel also removes the
    /// routes that prefer it as source, unless another interface holds it too: move them
    /// first ([`Routes::set_source`]).
    pub async fn remove_address(&self, if_index: u32, addr: IpAddr) -> anyhow::Result<()> {
        let found: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(if_index)
            .set_address_filter(addr)
            .execute()
            .try_collect()
            .await
            .context("cannot list the addresses of the TUN (netlink)")?;
        for message in found {
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .with_context(|| format!("cannot remove address {addr} from the TUN (netlink)"))?;
        }
        Ok(())
    }

    /// Routes `net` through interface `if_index`, preferring `source` as the source
    /// address of locally made packets. A route left by an earlier run is replaced.
    pub async fn add(
        &mut self,
        net: IpNet,
        if_index: u32,
        source: Option<IpAddr>,
    ) -> anyhow::Result<()> {
        let msg = message(net.trunc(), if_index, source);
        self.handle
            .route()
            .add(msg.clone())
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot add route {net} via the TUN (netlink)"))?;
        self.installed.retain(|r| r.net != net.trunc());
        self.installed.push(Installed {
            net: net.trunc(),
            if_index,
            message: msg,
        });
        Ok(())
    }

    /// Makes `source` the preferred source of every route this daemon installed (replacing
    /// each), e.g. once this host has an overlay address, for the routes added before it.
    /// Returns whether all were changed; a failure is logged and leaves that route as it was.
    pub async fn set_source(&mut self, source: Option<IpAddr>) -> bool {
        let mut all = true;
        for route in &mut self.installed {
            let msg = message(route.net, route.if_index, source);
            let replaced = self
                .handle
                .route()
                .add(msg.clone())
                .replace()
                .execute()
                .await;
            match replaced {
                Ok(()) => route.message = msg,
                Err(e) => {
                    all = false;
                    tracing::warn!(error = %e, route = %route.net, "cannot change the source address of a route");
                }
            }
        }
        all
    }

    /// Removes the route to `net` this daemon added, if any; errors are logged.
    pub async fn remove(&mut self, net: IpNet) {
        let net = net.trunc();
        let Some(i) = self.installed.iter().position(|r| r.net == net) else {
            return;
        };
        let route = self.installed.remove(i);
        if let Err(e) = self.handle.route().del(route.message).execute().await {
            tracing::warn!(error = %e, route = %net, "could not remove a route");
        }
    }

    /// Removes every route this daemon added; errors are logged, not returned, so that
    /// shutdown always finishes.
    pub async fn remove_all(&mut self) {
        for route in self.installed.drain(..) {
            if let Err(e) = self.handle.route().del(route.message).execute().await {
                tracing::warn!(error = %e, "could not remove a route on shutdown");
            }
        }
    }

    /// Number of IPv4 routes through `if_index` (for tests and status).
    pub async fn count_through(&self, if_index: u32) -> anyhow::Result<usize> {
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute();
        let mut n = 0;
        while let Some(route) = stream.try_next().await? {
            let out = route.attributes.iter().any(|a| {
                matches!(a, rtnetlink::packet_route::route::RouteAttribute::Oif(i) if *i == if_index)
            });
            if out {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Calls `on_change` whenever an address is added on this host (e.g. the underlay
/// address moved). The daemon then starts handshakes with every peer, so that they learn
/// its new endpoint at once instead of at its next keepalive. Only a new address counts
/// ([`NewAddresses`]): not the kernel's updates of one it has (IPv6 duplicate address
/// detection ending, lifetimes), nor IPv6 link-local ones (no peer reaches those), each of
/// which would start a handshake with every peer for nothing.
pub fn watch_addresses(on_change: impl Fn() + Send + 'static) -> anyhow::Result<()> {
    use futures::StreamExt;
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::sys::{AsyncSocket, SocketAddr};

    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().context("cannot open a netlink socket for address events")?;
    let groups =
        rtnetlink::constants::RTMGRP_IPV4_IFADDR | rtnetlink::constants::RTMGRP_IPV6_IFADDR;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .context("cannot subscribe to address events (netlink)")?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        let mut addresses = NewAddresses::default();
        while let Some((msg, _)) = messages.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a))
                    if addresses.added(a.header.index, address_of(&a)) =>
                {
                    tracing::info!(
                        "a local address was added; refreshing handshakes so peers learn our endpoint"
                    );
                    on_change();
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(a)) => {
                    addresses.removed(a.header.index, address_of(&a));
                }
                _ => {}
            }
        }
    });
    Ok(())
}

/// The address an address message is about (`Local` is this end's on a point-to-point
/// link, where `Address` is the other end's).
fn address_of(msg: &rtnetlink::packet_route::address::AddressMessage) -> Option<IpAddr> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// The addresses seen on this host's interfaces, to tell a new one from the kernel's
/// updates of one it has.
#[derive(Debug, Default)]
pub struct NewAddresses {
    seen: std::collections::HashSet<(u32, IpAddr)>,
}

impl NewAddresses {
    /// A `RTM_NEWADDR` for `address` on interface `index`: whether it is a new address
    /// peers could reach (not IPv6 link-local, not seen already).
    pub fn added(&mut self, index: u32, address: Option<IpAddr>) -> bool {
        let Some(ip) = address else { return false };
        if let IpAddr::V6(v6) = ip
            && v6.is_unicast_link_local()
        {
            return false;
        }
        self.seen.insert((index, ip))
    }

    /// A `RTM_DELADDR`: a later add of it is new again.
    pub fn removed(&mut self, index: u32, address: Option<IpAddr>) {
        if let Some(ip) = address {
            self.seen.remove(&(index, ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_reachable_addresses_count() {
        let mut a = NewAddresses::default();
        let underlay: IpAddr = "198.18.0.11".parse().unwrap();
        assert!(a.added(2, Some(underlay)), "a new address");
        assert!(
            !a.added(2, Some(underlay)),
            "an update of it (DAD, lifetimes)"
        );
        assert!(a.added(3, Some(underlay)), "the same on another interface");
        assert!(
            !a.added(2, Some("fe80::1".parse().unwrap())),
            "IPv6 link-local"
        );
        assert!(a.added(2, Some("2001:db8::1".parse().unwrap())));
        assert!(!a.added(2, None));
        a.removed(2, Some(underlay));
        assert!(
            a.added(2, Some(underlay)),
            "back after a removal: moved again"
        );
    }
}
