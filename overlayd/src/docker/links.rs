//! The plugin's kernel side, through netlink (rtnetlink), never by running `ip`: one bridge
//! per Docker network holding the gateway address, one veth pair per container endpoint
//! at the network's MTU. Every call is idempotent, as dockerd retries and ignores the
//! errors of deletions: a link that already exists is reused, one that is gone is fine.

use std::net::Ipv4Addr;

use anyhow::Context;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

/// A netlink connection for the plugin's links.
#[derive(Clone)]
pub struct Links {
    handle: Handle,
}

/// The errno inside a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Links {
    /// Opens a netlink connection (its task runs on the current tokio runtime).
    pub fn connect() -> anyhow::Result<Links> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        Ok(Links { handle })
    }

    /// The index of link `name`, `None` if there is none.
    pub async fn index(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let mut found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match found.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot look up link {name} (netlink)")),
        }
    }

    /// The names of all links whose name starts with `prefix` (to count leftovers).
    pub async fn names_with_prefix(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .context("cannot list links (netlink)")?
        {
            for a in &link.attributes {
                if let LinkAttribute::IfName(n) = a
                    && n.starts_with(prefix)
                {
                    names.push(n.clone());
                }
            }
        }
        Ok(names)
    }

    /// Makes bridge `name` (if missing) with `gateway` (mask of `slice`) and `mtu`, up.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        slice: Ipv4Net,
        mtu: u16,
    ) -> anyhow::Result<u32> {
        let (index, made) = match self.index(name).await? {
            Some(i) => (i, false),
            None => {
                let add = self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).mtu(u32::from(mtu)).build())
                    .execute()
                    .await;
                match add {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot create bridge {name} (netlink)"));
                    }
                }
                let index = self
                    .index(name)
                    .await?
                    .with_context(|| format!("bridge {name} vanished right after its creation"))?;
                (index, true)
            }
        };
        self.handle
            .address()
            .add(index, gateway.into(), slice.prefix_len())
            .replace()
            .execute()
            .await
            .with_context(|| {
                format!(
                    "cannot put {gateway}/{} on bridge {name} (netlink)",
                    slice.prefix_len()
                )
            })?;
        // A new bridge gets a fixed MAC (02:42 and the gateway's address, locally
        // administered; Docker sets its bridges' too): a bridge whose MAC was never set takes
        // the lowest of its ports', so removing a container could change the gateway's MAC
        // under the other containers, cut off until their ARP entries expire (seen:
        // seconds). A bridge that exists is left as it is, so a restart of overlayd never
        // changes the MAC under running containers.
        let mut link = LinkUnspec::new_with_index(index).mtu(u32::from(mtu));
        if made {
            let o = gateway.octets();
            link = link.address(vec![0x02, 0x42, o[0], o[1], o[2], o[3]]);
        }
        self.handle
            .link()
            .set(link.up().build())
            .execute()
            .await
            .with_context(|| format!("cannot bring bridge {name} up (netlink)"))?;
        Ok(index)
    }

    /// Makes the veth pair `host`/`container` at `mtu`, the host end on `bridge` and up.
    /// A pair left by an earlier attempt is replaced.
    pub async fn create_veth(
        &self,
        host: &str,
        container: &str,
        mtu: u16,
        bridge: u32,
    ) -> anyhow::Result<()> {
        self.delete(host).await?;
        self.delete(container).await?;
        let peer = LinkUnspec::new_with_name(container)
            .mtu(u32::from(mtu))
            .build();
        let veth = LinkVeth::new(host, container)
            .mtu(u32::from(mtu))
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .with_context(|| format!("cannot create veth pair {host}/{container} (netlink)"))
    }

    /// Puts the existing link `name` on `bridge` and brings it up (after a restart).
    pub async fn attach(&self, name: &str, bridge: u32) -> anyhow::Result<bool> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("cannot put {name} on its bridge (netlink)"))?;
        Ok(true)
    }

    /// Deletes link `name`; a missing link is fine.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete link {name} (netlink)")),
        }
    }
}

/// Turns IPv4 forwarding on (the bridge and the TUN route between each other); says
/// whether it was off.
pub fn enable_forwarding() -> std::io::Result<bool> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let was = std::fs::read_to_string(PATH)?;
    if was.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(PATH, "1")?;
    Ok(true)
}
