//! The plugin's bookkeeping, pure: which pools, addresses, networks and endpoints exist on
//! this host, and every rule about them (IPAM and the network driver's checks). No I/O:
//! the server persists a [`Book`] after each change and does the netlink work it implies.
//!
//! Design (moby's plugins_network.md and plugins_ipam.md): every host runs the same `docker network create -d
//! overlayd --ipam-driver overlayd --subnet 10.42.0.0/16 NAME`; the pool is accepted only if
//! it contains exactly one of this host's certificate subnets (its *slice*, e.g.
//! `10.42.7.0/24`), and addresses come only from that slice: the gateway is its first
//! address, containers get the next free ones from `.2`. Addresses carry the slice's mask,
//! so containers of other hosts are off-link and reached through the gateway, the bridge,
//! and the TUN. One slice serves one Docker network, so a second network that would reuse
//! it is refused.
//!
//! A network made with extra ranges (`overlayctl init --range 10.43.0.0/16`) gives every
//! host one slice per range at the same offset (`10.42.7.0/24`, `10.43.7.0/24`), so one
//! Docker network per range fits on every host (`--subnet 10.42.0.0/16`, `--subnet
//! 10.43.0.0/16`). Each Docker network remembers its *range* (the overlay range that holds
//! its slice): the isolation rules (`docker::filter`, which reads [`Book::isolated`] and
//! [`Book::forwards`]; the book knows nothing of nft) keep its traffic inside it.
//!
//! - [`ipam`]: pools and addresses (`IpamDriver.*`).
//! - [`publish`]: ports published with `-p` and what the nft rules forward.
//! - [`reclaim`]: what leaked while the plugin was down.
//! - here: the types, networks and endpoints (the network driver's checks).

mod ipam;
mod publish;
mod reclaim;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use publish::{Forward, PortBinding, Proto, Published};
pub use reclaim::{Attached, Reclaimed};

/// Prefix of every PoolID (dockerd stores PoolIDs: keep this format stable).
pub const POOL_ID_PREFIX: &str = "overlayd:";
/// `Options` key that marks a gateway `RequestAddress`.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Its value for the gateway.
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";
/// The one `-o` option the driver knows: the MTU of the network's bridge and veths.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Smallest MTU accepted through [`MTU_OPTION`].
pub const MIN_MTU: u16 = 576;

/// Why a request was refused: one sentence that says what to do; dockerd shows it in the
/// docker CLI's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// This host has no certificate subnet: it is in no network.
    #[error("this host is not in an overlay network; run overlayctl join first")]
    NotMember,
    /// `docker network create` without `--subnet`.
    #[error(
        "overlayd needs --subnet: give the overlay network's range, the same on every host (e.g. --subnet 10.42.0.0/16)"
    )]
    NoSubnet,
    /// `--ipv6`.
    #[error("overlayd does not support IPv6 yet; create the network without --ipv6")]
    Ipv6,
    /// Something that does not parse.
    #[error("{what} {value:?} is not a valid {kind}")]
    Malformed {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        kind: &'static str,
    },
    /// An option of a kind overlayd does not take.
    #[error("{0}")]
    Unsupported(String),
    /// The pool contains none of this host's slices.
    #[error(
        "subnet {pool} does not contain this host's subnet {}; use a range of the overlay network (e.g. --subnet {}), the same on every host",
        list(.slices), .ranges.first().map_or_else(|| "10.42.0.0/16".to_owned(), |r| r.to_string())
    )]
    NotOurPool {
        /// What was asked.
        pool: Ipv4Net,
        /// This host's slices.
        slices: Vec<Ipv4Net>,
        /// The overlay's ranges.
        ranges: Vec<Ipv4Net>,
    },
    /// The pool contains more than one of this host's slices (it spans several ranges).
    #[error(
        "subnet {pool} contains several of this host's subnets ({}): an overlayd Docker network takes exactly one range of the overlay; use one of {}",
        list(.slices), list(.ranges)
    )]
    SeveralSlices {
        /// What was asked.
        pool: Ipv4Net,
        /// This host's slices inside it.
        slices: Vec<Ipv4Net>,
        /// The overlay's ranges.
        ranges: Vec<Ipv4Net>,
    },
    /// Another network already uses this host's slice.
    #[error(
        "subnet {pool} overlaps the overlayd network with subnet {other} that already uses this host's subnet {slice}; use that network (one overlayd network per host subnet), remove it first, or give the new network another range of the overlay (overlayctl init --range)"
    )]
    SliceInUse {
        /// What was asked.
        pool: Ipv4Net,
        /// The pool of the network that holds the slice.
        other: Ipv4Net,
        /// This host's slice.
        slice: Ipv4Net,
    },
    /// A pool, network or endpoint this plugin never made (or already removed).
    #[error(
        "overlayd does not know {what} {id}; it was removed or made before overlayd's state was lost: remove it and create it again"
    )]
    Unknown {
        /// `pool`, `network` or `endpoint`.
        what: &'static str,
        /// Its ID.
        id: String,
    },
    /// `--ip` or `--gateway` outside what this host may hand out.
    #[error("{0}")]
    Address(String),
    /// No free address left.
    #[error("no free address left in this host's subnet {0}; remove containers you no longer need")]
    Exhausted(Ipv4Net),
}

impl BookError {
    /// [`BookError::Unknown`]: `what` (`pool`, `network` or `endpoint`) `id` is not in the
    /// book.
    fn unknown(what: &'static str, id: &str) -> BookError {
        BookError::Unknown {
            what,
            id: id.to_owned(),
        }
    }
}

/// One IPAM pool: the network's range and the slice of it this host hands out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// What `--subnet` gave (e.g. `10.42.0.0/16`).
    pub pool: Ipv4Net,
    /// This host's slice of it (e.g. `10.42.7.0/24`).
    pub slice: Ipv4Net,
    /// The overlay range that holds the slice (e.g. `10.42.0.0/16`); `None` in books
    /// written before ranges existed (the pool stands in for it).
    #[serde(default)]
    pub range: Option<Ipv4Net>,
    /// Container addresses handed out (the gateway is never in here).
    pub addresses: BTreeSet<Ipv4Addr>,
}

/// One Docker network on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Its PoolID.
    pub pool_id: String,
    /// The slice its bridge holds.
    pub slice: Ipv4Net,
    /// What its containers may reach through the TUN, and be reached from: the overlay
    /// range of its slice. `None` in books written before ranges existed: then its pool.
    #[serde(default)]
    pub range: Option<Ipv4Net>,
    /// The bridge's address and the containers' gateway.
    pub gateway: Ipv4Addr,
    /// The bridge's name.
    pub bridge: String,
    /// MTU of the bridge and every veth.
    pub mtu: u16,
}

/// One container endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its NetworkID.
    pub network: String,
    /// Its address, with the slice's mask.
    pub address: Ipv4Net,
    /// The veth end on the bridge.
    pub host_veth: String,
    /// The veth end dockerd moves into the container.
    pub container_veth: String,
    /// Its ports published on this host (`-p`), while its container is connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<Published>,
}

/// One network as the isolation rules see it ([`Book::isolated`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolated {
    /// The network's bridge.
    pub bridge: String,
    /// Its range of the overlay: what its containers may talk to through the TUN.
    pub range: Ipv4Net,
    /// Its slice: its containers' addresses, masqueraded on the way out of the host.
    pub slice: Ipv4Net,
}

/// Everything the plugin must remember across restarts (dockerd replays nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    /// PoolID → pool.
    pub pools: BTreeMap<String, Pool>,
    /// NetworkID → network.
    pub networks: BTreeMap<String, Network>,
    /// EndpointID → endpoint.
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// A pool as `RequestPool` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// Its PoolID.
    pub pool_id: String,
    /// The pool.
    pub pool: Ipv4Net,
    /// The gateway, with the slice's mask (`10.42.7.1/24`).
    pub gateway: Ipv4Net,
}

/// Interface names are at most 15 bytes: a 4-letter prefix and 11 hex digits of the ID.
fn link_name(prefix: &str, id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(11)
        .collect();
    format!("{prefix}{hex}")
}

/// The gateway of a slice: its first address.
pub fn gateway_of(slice: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(slice.network()).saturating_add(1))
}

fn with_mask(addr: Ipv4Addr, slice: Ipv4Net) -> Ipv4Net {
    // The prefix length comes from a valid Ipv4Net, so it is at most 32.
    Ipv4Net::new(addr, slice.prefix_len()).unwrap_or(slice)
}

/// `a, b, c`.
fn list(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_net(what: &'static str, value: &str) -> Result<Ipv4Net, BookError> {
    value.parse().map_err(|_| BookError::Malformed {
        what,
        value: value.to_owned(),
        kind: "IPv4 subnet (a.b.c.d/len)",
    })
}

impl Book {
    /// Checks a `NetworkDriver.CreateNetwork` and returns the network it makes (the caller
    /// creates the bridge, then [`Book::add_network`]s it). `pools` are the `IPv4Data`
    /// entries as (pool, gateway); `options` the `-o` pairs; `max_mtu` the config's.
    pub fn check_network(
        &self,
        network_id: &str,
        pools: &[(String, String)],
        ipv6: bool,
        options: &[(String, String)],
        max_mtu: u16,
    ) -> Result<Network, BookError> {
        if ipv6 {
            return Err(BookError::Ipv6);
        }
        let mut mtu = max_mtu;
        for (key, value) in options {
            if key == MTU_OPTION {
                mtu = value
                    .parse()
                    .ok()
                    .filter(|m| (MIN_MTU..=max_mtu).contains(m))
                    .ok_or_else(|| {
                        BookError::Unsupported(format!(
                            "-o {MTU_OPTION}={value} is out of range: use {MIN_MTU} to {max_mtu} (the overlay's MTU)"
                        ))
                    })?;
            } else {
                return Err(BookError::Unsupported(format!(
                    "unknown option -o {key}: overlayd knows only -o {MTU_OPTION}=N"
                )));
            }
        }
        let [(pool, _gateway)] = pools else {
            return Err(BookError::Unsupported(format!(
                "an overlayd network has exactly one IPv4 subnet, not {}; give one --subnet",
                pools.len()
            )));
        };
        let pool = parse_net("pool", pool)?;
        let (pool_id, entry) = self
            .pools
            .iter()
            .find(|(_, p)| p.pool == pool)
            .ok_or_else(|| BookError::unknown("pool", &pool.to_string()))?;
        if let Some(other) = self
            .networks
            .iter()
            .find(|(id, n)| n.slice == entry.slice && id.as_str() != network_id)
        {
            return Err(BookError::SliceInUse {
                pool,
                other: self
                    .pools
                    .get(&other.1.pool_id)
                    .map(|p| p.pool)
                    .unwrap_or(entry.slice),
                slice: entry.slice,
            });
        }
        Ok(Network {
            pool_id: pool_id.clone(),
            slice: entry.slice,
            range: Some(entry.range.unwrap_or(entry.pool)),
            gateway: gateway_of(entry.slice),
            bridge: link_name("ovdb", network_id),
            mtu,
        })
    }

    /// Every network's bridge and range, for the isolation rules (ordered by NetworkID).
    pub fn isolated(&self) -> Vec<Isolated> {
        self.networks
            .values()
            .map(|n| Isolated {
                bridge: n.bridge.clone(),
                range: n
                    .range
                    .or_else(|| self.pools.get(&n.pool_id).map(|p| p.pool))
                    .unwrap_or(n.slice),
                slice: n.slice,
            })
            .collect()
    }

    /// Records a network made after [`Book::check_network`].
    pub fn add_network(&mut self, network_id: &str, network: Network) {
        self.networks.insert(network_id.to_owned(), network);
    }

    /// Forgets a network and its endpoints; returns it (for the bridge's removal).
    pub fn remove_network(&mut self, network_id: &str) -> Option<Network> {
        self.endpoints.retain(|_, e| e.network != network_id);
        self.networks.remove(network_id)
    }

    /// The network `network_id`, or [`BookError::Unknown`].
    pub fn network(&self, network_id: &str) -> Result<&Network, BookError> {
        self.networks
            .get(network_id)
            .ok_or_else(|| BookError::unknown("network", network_id))
    }

    /// The endpoint `endpoint_id` of `network_id`, or [`BookError::Unknown`].
    pub fn endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<&Endpoint, BookError> {
        self.network(network_id)?;
        self.endpoints
            .get(endpoint_id)
            .filter(|e| e.network == network_id)
            .ok_or_else(|| BookError::unknown("endpoint", endpoint_id))
    }

    /// Checks a `NetworkDriver.CreateEndpoint` and returns the endpoint it makes (the
    /// caller creates the veth, then [`Book::add_endpoint`]s it).
    pub fn check_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
        address: &str,
    ) -> Result<Endpoint, BookError> {
        let network = self.network(network_id)?;
        let address = parse_net("address", address)?;
        if !network.slice.contains(&address.addr()) {
            return Err(BookError::Address(format!(
                "address {address} is outside this host's subnet {}",
                network.slice
            )));
        }
        Ok(Endpoint {
            network: network_id.to_owned(),
            address,
            host_veth: link_name("ovdh", endpoint_id),
            container_veth: link_name("ovdc", endpoint_id),
            published: Vec::new(),
        })
    }

    /// Records an endpoint made after [`Book::check_endpoint`].
    pub fn add_endpoint(&mut self, endpoint_id: &str, endpoint: Endpoint) {
        self.endpoints.insert(endpoint_id.to_owned(), endpoint);
    }

    /// Forgets an endpoint; returns it (for the veth's removal). Idempotent.
    pub fn remove_endpoint(&mut self, endpoint_id: &str) -> Option<Endpoint> {
        self.endpoints.remove(endpoint_id)
    }
}
