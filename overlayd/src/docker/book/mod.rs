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
//! its slice): the isolation rules ([`super::filter`]) keep its traffic inside it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::filter::Isolated;

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

/// One `-p HOST_PORT:PORT[/PROTO]` of a container: the host's `host_port` (on `host_ip`, or
/// every address of the host) forwarded to the container's `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// One host address, or `None` for all.
    pub host_ip: Option<Ipv4Addr>,
    /// The host's port.
    pub host_port: u16,
    /// The container's port.
    pub port: u16,
}

/// A published port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (Docker's `Proto` 6).
    Tcp,
    /// UDP (Docker's `Proto` 17).
    Udp,
}

impl Proto {
    /// As nft and `docker run -p` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `com.docker.network.portmap` entry as dockerd sends it (`types.PortBinding`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// 6 TCP, 17 UDP.
    pub proto: u8,
    /// The container's port.
    pub port: u16,
    /// The host address, empty for all.
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    /// The host port; 0 when Docker is to pick one.
    pub host_port: u16,
    /// The end of a host port range; 0 or `host_port` for one port.
    pub host_port_end: u16,
}

/// A port forwarded to a container, as the nft rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The published port.
    pub published: Published,
    /// The container's address.
    pub to: Ipv4Addr,
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
    /// `IpamDriver.RequestPool`. `slices` are this host's certificate subnets (`None`: not a
    /// member), `ranges` the overlay's ranges (main, then extra); `options` are the
    /// `--ipam-opt` keys.
    pub fn request_pool(
        &mut self,
        slices: Option<&[Ipv4Net]>,
        ranges: &[Ipv4Net],
        pool: &str,
        sub_pool: &str,
        v6: bool,
        options: &[String],
    ) -> Result<Granted, BookError> {
        if v6 {
            return Err(BookError::Ipv6);
        }
        let slices = slices
            .filter(|s| !s.is_empty())
            .ok_or(BookError::NotMember)?;
        if pool.is_empty() {
            return Err(BookError::NoSubnet);
        }
        if !sub_pool.is_empty() {
            return Err(BookError::Unsupported(format!(
                "--ip-range {sub_pool} is not supported: overlayd hands out addresses from this host's own subnet ({}) only",
                slices[0]
            )));
        }
        if let Some(key) = options.first() {
            return Err(BookError::Unsupported(format!(
                "unknown --ipam-opt {key}: overlayd's IPAM takes no options"
            )));
        }
        let asked = parse_net("--subnet", pool)?;
        if asked.trunc() != asked {
            return Err(BookError::Malformed {
                what: "--subnet",
                value: pool.to_owned(),
                kind: "subnet (host bits must be zero)",
            });
        }
        let inside: Vec<Ipv4Net> = slices
            .iter()
            .filter(|s| asked.contains(*s))
            .copied()
            .collect();
        let slice = match inside[..] {
            [one] => one,
            [] => {
                return Err(BookError::NotOurPool {
                    pool: asked,
                    slices: slices.to_vec(),
                    ranges: ranges.to_vec(),
                });
            }
            _ => {
                return Err(BookError::SeveralSlices {
                    pool: asked,
                    slices: inside,
                    ranges: ranges.to_vec(),
                });
            }
        };
        if let Some(other) = self
            .pools
            .values()
            .find(|p| p.slice == slice || p.pool.contains(&asked) || asked.contains(&p.pool))
        {
            return Err(BookError::SliceInUse {
                pool: asked,
                other: other.pool,
                slice: other.slice,
            });
        }
        let range = ranges.iter().find(|r| r.contains(&slice)).copied();
        let pool_id = format!("{POOL_ID_PREFIX}{asked}");
        self.pools.insert(
            pool_id.clone(),
            Pool {
                pool: asked,
                slice,
                range,
                addresses: BTreeSet::new(),
            },
        );
        Ok(Granted {
            pool_id,
            pool: asked,
            gateway: with_mask(gateway_of(slice), slice),
        })
    }

    /// `IpamDriver.ReleasePool`: idempotent.
    pub fn release_pool(&mut self, pool_id: &str) {
        self.pools.remove(pool_id);
    }

    /// `IpamDriver.RequestAddress`: the gateway (when `gateway` is set), `address` (from
    /// `--ip`) or the next free one; with the slice's mask.
    pub fn request_address(
        &mut self,
        pool_id: &str,
        address: &str,
        gateway: bool,
    ) -> Result<Ipv4Net, BookError> {
        let pool = self
            .pools
            .get_mut(pool_id)
            .ok_or_else(|| BookError::Unknown {
                what: "pool",
                id: pool_id.to_owned(),
            })?;
        let slice = pool.slice;
        let gw = gateway_of(slice);
        let wanted = if address.is_empty() {
            None
        } else {
            // dockerd sends a plain address; tolerate a mask.
            let plain = address.split('/').next().unwrap_or(address);
            Some(
                plain
                    .parse::<Ipv4Addr>()
                    .map_err(|_| BookError::Malformed {
                        what: "address",
                        value: address.to_owned(),
                        kind: "IPv4 address",
                    })?,
            )
        };
        if gateway {
            return match wanted {
                None => Ok(with_mask(gw, slice)),
                Some(a) if a == gw => Ok(with_mask(gw, slice)),
                Some(a) => Err(BookError::Address(format!(
                    "--gateway {a} is not possible: on this host the gateway of an overlayd network is {gw}, the first address of its subnet {slice}; leave --gateway out"
                ))),
            };
        }
        let first = u32::from(gw) + 1;
        let last = u32::from(slice.broadcast()).saturating_sub(1);
        let chosen = match wanted {
            Some(a) => {
                if !slice.contains(&a) {
                    return Err(BookError::Address(format!(
                        "--ip {a} is outside this host's subnet {slice}: each host hands out addresses only from its own subnet, so containers on different hosts never collide; pick an address in {slice} or leave --ip out"
                    )));
                }
                if !(first..=last).contains(&u32::from(a)) {
                    return Err(BookError::Address(format!(
                        "--ip {a} is reserved (network, gateway or broadcast address of {slice}); pick one from {} to {}",
                        Ipv4Addr::from(first),
                        Ipv4Addr::from(last)
                    )));
                }
                if pool.addresses.contains(&a) {
                    return Err(BookError::Address(format!(
                        "--ip {a} is already in use by another container on this host; pick another or leave --ip out"
                    )));
                }
                a
            }
            None => (first..=last)
                .map(Ipv4Addr::from)
                .find(|a| !pool.addresses.contains(a))
                .ok_or(BookError::Exhausted(slice))?,
        };
        pool.addresses.insert(chosen);
        Ok(with_mask(chosen, slice))
    }

    /// `IpamDriver.ReleaseAddress`: idempotent (dockerd also releases the gateway, which
    /// was never handed out).
    pub fn release_address(&mut self, pool_id: &str, address: &str) {
        let plain = address.split('/').next().unwrap_or(address);
        if let (Some(pool), Ok(a)) = (self.pools.get_mut(pool_id), plain.parse::<Ipv4Addr>()) {
            pool.addresses.remove(&a);
        }
    }

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
        let (pool_id, entry) =
            self.pools
                .iter()
                .find(|(_, p)| p.pool == pool)
                .ok_or_else(|| BookError::Unknown {
                    what: "pool",
                    id: pool.to_string(),
                })?;
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
            .ok_or_else(|| BookError::Unknown {
                what: "network",
                id: network_id.to_owned(),
            })
    }

    /// The endpoint `endpoint_id` of `network_id`, or [`BookError::Unknown`].
    pub fn endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<&Endpoint, BookError> {
        self.network(network_id)?;
        self.endpoints
            .get(endpoint_id)
            .filter(|e| e.network == network_id)
            .ok_or_else(|| BookError::Unknown {
                what: "endpoint",
                id: endpoint_id.to_owned(),
            })
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

    /// `ProgramExternalConnectivity`: publishes `bindings` (`-p`) for the endpoint, replacing
    /// what it published before. Refuses what overlayd cannot do with a sentence that says
    /// what to do instead: no host port (Docker does not learn a port a remote driver
    /// picks), a range, a protocol other than TCP and UDP, a port another container of this
    /// host already publishes. Bindings on an IPv6 host address are skipped (the networks are
    /// IPv4).
    pub fn publish(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        bindings: &[PortBinding],
    ) -> Result<(), BookError> {
        self.endpoint(network_id, endpoint_id)?;
        let mut wanted: Vec<Published> = Vec::new();
        for b in bindings {
            let proto = match b.proto {
                6 => Proto::Tcp,
                17 => Proto::Udp,
                n => {
                    return Err(BookError::Unsupported(format!(
                        "-p with IP protocol {n}: overlayd publishes tcp and udp ports only"
                    )));
                }
            };
            let host_ip = match b.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                ip => match ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(v4)) => Some(v4),
                    Ok(std::net::IpAddr::V6(_)) => continue,
                    Err(_) => {
                        return Err(BookError::Malformed {
                            what: "-p host address",
                            value: ip.to_owned(),
                            kind: "IP address",
                        });
                    }
                },
            };
            if b.host_port == 0 {
                return Err(BookError::Unsupported(format!(
                    "-p {port} without a host port: overlayd cannot tell Docker a port it picks; give one, e.g. -p 8080:{port}",
                    port = b.port
                )));
            }
            if b.host_port_end != 0 && b.host_port_end != b.host_port {
                return Err(BookError::Unsupported(format!(
                    "-p {}-{}: overlayd publishes single host ports, not ranges; give one -p per port",
                    b.host_port, b.host_port_end
                )));
            }
            let p = Published {
                proto,
                host_ip,
                host_port: b.host_port,
                port: b.port,
            };
            let clash = |q: &Published| {
                q.proto == p.proto
                    && q.host_port == p.host_port
                    && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
            };
            let taken = self
                .endpoints
                .iter()
                .filter(|(id, _)| id.as_str() != endpoint_id)
                .any(|(_, e)| e.published.iter().any(clash))
                || wanted.iter().any(clash);
            if taken {
                return Err(BookError::Unsupported(format!(
                    "host port {}/{} is already published on this host; pick another host port",
                    p.host_port,
                    p.proto.name()
                )));
            }
            wanted.push(p);
        }
        if let Some(e) = self.endpoints.get_mut(endpoint_id) {
            e.published = wanted;
        }
        Ok(())
    }

    /// `RevokeExternalConnectivity`: the endpoint publishes nothing any more. Idempotent.
    pub fn unpublish(&mut self, endpoint_id: &str) {
        if let Some(e) = self.endpoints.get_mut(endpoint_id) {
            e.published.clear();
        }
    }

    /// Every published port of this host, for the nft rules.
    pub fn forwards(&self) -> Vec<Forward> {
        self.endpoints
            .values()
            .flat_map(|e| {
                e.published.iter().map(|p| Forward {
                    published: *p,
                    to: e.address.addr(),
                })
            })
            .collect()
    }

    /// Forgets an endpoint; returns it (for the veth's removal). Idempotent.
    pub fn remove_endpoint(&mut self, endpoint_id: &str) -> Option<Endpoint> {
        self.endpoints.remove(endpoint_id)
    }

    /// Keeps only what `current` still holds: endpoints it has and addresses still handed
    /// out in the same pool. Applied to the book the plugin started with after every change,
    /// it leaves what has been held ever since the start (see [`Book::reclaim`]).
    pub fn retain_in(&mut self, current: &Book) {
        self.endpoints
            .retain(|id, e| current.endpoints.get(id) == Some(e));
        for (id, pool) in &mut self.pools {
            match current.pools.get(id) {
                Some(now) => pool.addresses.retain(|a| now.addresses.contains(a)),
                None => pool.addresses.clear(),
            }
        }
    }

    /// Frees what leaked while the plugin was down: dockerd removed a container then, its
    /// `DeleteEndpoint` and `ReleaseAddress` failed, and it only warned. `before` is what has
    /// been held ever since the plugin started (the book it started with, kept to
    /// [`Book::retain_in`] the book after every change), `docker` what dockerd says each of
    /// those networks holds now (`GET /networks/<id>`; a network dockerd did not answer for
    /// is left alone). Only that can have leaked: anything handed out since may belong to a
    /// container that is starting, which dockerd does not list yet. An endpoint of `before`
    /// that dockerd does not list is forgotten with its address, and an address of `before`
    /// that no endpoint and no container holds is freed. Returns what was freed.
    pub fn reclaim(&mut self, before: &Book, docker: &BTreeMap<String, Attached>) -> Reclaimed {
        let mut freed = Reclaimed::default();
        for (network_id, attached) in docker {
            let Some(pool_id) = before.networks.get(network_id).map(|n| n.pool_id.clone()) else {
                continue;
            };
            for (endpoint_id, e) in &before.endpoints {
                if &e.network != network_id || attached.endpoints.contains(endpoint_id) {
                    continue;
                }
                if let Some(gone) = self.endpoints.remove(endpoint_id) {
                    freed.endpoints.push((endpoint_id.clone(), gone));
                }
            }
            let held: BTreeSet<Ipv4Addr> = self
                .endpoints
                .values()
                .filter(|e| &e.network == network_id)
                .map(|e| e.address.addr())
                .chain(attached.addresses.iter().copied())
                .collect();
            let (Some(was), Some(pool)) =
                (before.pools.get(&pool_id), self.pools.get_mut(&pool_id))
            else {
                continue;
            };
            for a in &was.addresses {
                if !held.contains(a) && pool.addresses.remove(a) {
                    freed.addresses.push(*a);
                }
            }
        }
        freed
    }
}

/// What dockerd says a network holds now: its endpoints and their addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// EndpointIDs.
    pub endpoints: BTreeSet<String>,
    /// Their IPv4 addresses.
    pub addresses: BTreeSet<Ipv4Addr>,
}

/// What [`Book::reclaim`] freed: endpoints (for their veths' removal) and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Endpoints forgotten, with what they were.
    pub endpoints: Vec<(String, Endpoint)>,
    /// Addresses freed.
    pub addresses: Vec<Ipv4Addr>,
}

impl Reclaimed {
    /// Nothing was freed.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.addresses.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NID: &str = "94a1d558aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn slices() -> Vec<Ipv4Net> {
        vec!["10.42.7.0/24".parse().unwrap()]
    }

    fn ranges() -> Vec<Ipv4Net> {
        vec!["10.42.0.0/16".parse().unwrap()]
    }

    fn pool(book: &mut Book) -> Granted {
        book.request_pool(Some(&slices()), &ranges(), "10.42.0.0/16", "", false, &[])
            .unwrap()
    }

    #[test]
    fn pool_gives_this_hosts_gateway_and_addresses_from_its_slice() {
        let mut book = Book::default();
        let g = pool(&mut book);
        assert_eq!(g.pool_id, "overlayd:10.42.0.0/16");
        assert_eq!(g.gateway.to_string(), "10.42.7.1/24");
        let gw = book.request_address(&g.pool_id, "", true).unwrap();
        assert_eq!(gw.to_string(), "10.42.7.1/24");
        let a = book.request_address(&g.pool_id, "", false).unwrap();
        let b = book.request_address(&g.pool_id, "", false).unwrap();
        assert_eq!(
            (a.to_string().as_str(), b.to_string().as_str()),
            ("10.42.7.2/24", "10.42.7.3/24")
        );
        book.release_address(&g.pool_id, "10.42.7.2");
        book.release_address(&g.pool_id, "10.42.7.1"); // the gateway: ignored
        book.release_address(&g.pool_id, "10.42.7.200"); // never handed out: ignored
        assert_eq!(
            book.request_address(&g.pool_id, "", false)
                .unwrap()
                .to_string(),
            "10.42.7.2/24"
        );
        let c = book
            .request_address(&g.pool_id, "10.42.7.50", false)
            .unwrap();
        assert_eq!(c.to_string(), "10.42.7.50/24");
    }

    #[test]
    fn bad_pools_are_refused_with_what_to_do() {
        let mut book = Book::default();
        let s = slices();
        let err = |r: Result<Granted, BookError>| r.unwrap_err().to_string();
        assert!(
            err(book.request_pool(None, &[], "10.42.0.0/16", "", false, &[]))
                .contains("overlayctl join")
        );
        assert!(
            err(book.request_pool(Some(&[]), &[], "10.42.0.0/16", "", false, &[]))
                .contains("overlayctl join")
        );
        assert!(
            err(book.request_pool(Some(&s), &ranges(), "", "", false, &[])).contains("--subnet")
        );
        assert!(
            err(book.request_pool(Some(&s), &ranges(), "10.43.0.0/16", "", false, &[]))
                .contains("does not contain")
        );
        assert!(
            err(book.request_pool(
                Some(&s),
                &ranges(),
                "10.42.0.0/16",
                "10.42.7.0/25",
                false,
                &[]
            ))
            .contains("--ip-range")
        );
        assert!(
            err(book.request_pool(Some(&s), &ranges(), "10.42.0.0/16", "", true, &[]))
                .contains("IPv6")
        );
        assert!(
            err(book.request_pool(Some(&s), &ranges(), "10.42.0.1/16", "", false, &[]))
                .contains("host bits")
        );
        assert!(
            err(book.request_pool(Some(&s), &ranges(), "nope", "", false, &[]))
                .contains("not a valid")
        );
        assert!(
            err(book.request_pool(
                Some(&s),
                &ranges(),
                "10.42.0.0/16",
                "",
                false,
                &["x".into()]
            ))
            .contains("--ipam-opt x")
        );
        assert!(book.pools.is_empty(), "refusals change nothing");
        pool(&mut book);
        let again = err(book.request_pool(Some(&s), &ranges(), "10.42.0.0/16", "", false, &[]));
        assert!(
            again.contains("overlaps") && again.contains("10.42.7.0/24"),
            "{again}"
        );
        let wider = err(book.request_pool(Some(&s), &ranges(), "10.0.0.0/8", "", false, &[]));
        assert!(wider.contains("overlaps"), "{wider}");
        assert_eq!(book.pools.len(), 1);
    }

    #[test]
    fn addresses_outside_the_slice_or_taken_are_refused() {
        let mut book = Book::default();
        let g = pool(&mut book);
        let before = book.clone();
        for (addr, needle) in [
            ("10.42.9.5", "outside this host's subnet"),
            ("10.42.7.1", "reserved"),
            ("10.42.7.255", "reserved"),
            ("10.42.7.0", "reserved"),
            ("x", "not a valid"),
        ] {
            let e = book
                .request_address(&g.pool_id, addr, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{addr}: {e}");
        }
        assert!(
            book.request_address(&g.pool_id, "10.42.7.9", true)
                .unwrap_err()
                .to_string()
                .contains("--gateway")
        );
        assert!(
            book.request_address("overlayd:10.9.0.0/16", "", false)
                .unwrap_err()
                .to_string()
                .contains("does not know pool")
        );
        assert_eq!(book, before);
        book.request_address(&g.pool_id, "10.42.7.9", false)
            .unwrap();
        assert!(
            book.request_address(&g.pool_id, "10.42.7.9", false)
                .unwrap_err()
                .to_string()
                .contains("in use")
        );
    }

    #[test]
    fn a_full_slice_is_exhausted_and_auto_skips_claims() {
        let mut book = Book::default();
        let s: Vec<Ipv4Net> = vec!["10.42.7.0/29".parse().unwrap()];
        let g = book
            .request_pool(Some(&s), &ranges(), "10.42.0.0/16", "", false, &[])
            .unwrap();
        book.request_address(&g.pool_id, "10.42.7.3", false)
            .unwrap();
        let got: Vec<String> = (0..4)
            .map(|_| {
                book.request_address(&g.pool_id, "", false)
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            got,
            [
                "10.42.7.2/29",
                "10.42.7.4/29",
                "10.42.7.5/29",
                "10.42.7.6/29"
            ]
        );
        assert!(matches!(
            book.request_address(&g.pool_id, "", false),
            Err(BookError::Exhausted(_))
        ));
    }

    #[test]
    fn networks_and_endpoints() {
        let mut book = Book::default();
        let g = pool(&mut book);
        let pools = vec![("10.42.0.0/16".to_owned(), "10.42.7.1/24".to_owned())];
        let e = book
            .check_network(NID, &pools, false, &[("foo".into(), "bar".into())], 1420)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option -o foo"), "{e}");
        let mtu = |v: &str| vec![(MTU_OPTION.to_owned(), v.to_owned())];
        assert!(
            book.check_network(NID, &pools, false, &mtu("1500"), 1420)
                .is_err()
        );
        assert!(book.check_network(NID, &pools, true, &[], 1420).is_err());
        assert!(book.check_network(NID, &[], false, &[], 1420).is_err());
        let n = book
            .check_network(NID, &pools, false, &mtu("1400"), 1420)
            .unwrap();
        assert_eq!(n.bridge, "ovdb94a1d558aaa");
        assert_eq!(n.bridge.len(), 15);
        assert_eq!(
            (n.mtu, n.gateway.to_string().as_str(), n.pool_id.as_str()),
            (1400, "10.42.7.1", g.pool_id.as_str())
        );
        book.add_network(NID, n);
        let other = "b".repeat(64);
        assert!(
            book.check_network(&other, &pools, false, &[], 1420)
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
        assert!(
            book.endpoint(NID, "e1")
                .unwrap_err()
                .to_string()
                .contains("does not know endpoint")
        );
        assert!(
            book.endpoint(&other, "e1")
                .unwrap_err()
                .to_string()
                .contains("does not know network")
        );
        let eid = "7f363b22".repeat(8);
        assert!(book.check_endpoint(NID, &eid, "10.42.8.2/24").is_err());
        assert!(book.check_endpoint(&other, &eid, "10.42.7.2/24").is_err());
        let ep = book.check_endpoint(NID, &eid, "10.42.7.2/24").unwrap();
        assert_eq!(
            (ep.host_veth.as_str(), ep.container_veth.as_str()),
            ("ovdh7f363b227f3", "ovdc7f363b227f3")
        );
        book.add_endpoint(&eid, ep);
        assert!(book.endpoint(NID, &eid).is_ok());
        let text = serde_json::to_string(&book).unwrap();
        assert_eq!(serde_json::from_str::<Book>(&text).unwrap(), book);
        assert!(book.remove_network(NID).is_some());
        assert!(book.endpoints.is_empty());
        assert!(book.remove_endpoint(&eid).is_none());
    }

    #[test]
    fn publishing_takes_one_host_port_per_container_and_refuses_what_it_cannot_do() {
        let mut book = Book::default();
        pool(&mut book);
        let pools = vec![("10.42.0.0/16".to_owned(), "10.42.7.1/24".to_owned())];
        let n = book.check_network(NID, &pools, false, &[], 1420).unwrap();
        book.add_network(NID, n);
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        for (id, addr) in [(&a, "10.42.7.2/24"), (&b, "10.42.7.3/24")] {
            let e = book.check_endpoint(NID, id, addr).unwrap();
            book.add_endpoint(id, e);
        }
        let bind = |proto, port, host_ip: &str, host_port, end| PortBinding {
            proto,
            port,
            host_ip: host_ip.into(),
            host_port,
            host_port_end: end,
        };
        book.publish(
            NID,
            &a,
            &[bind(6, 5000, "", 8080, 8080), bind(17, 53, "::", 5353, 0)],
        )
        .unwrap();
        let f = book.forwards();
        assert_eq!(f.len(), 1, "the IPv6 binding is skipped: {f:?}");
        assert_eq!(f[0].to.to_string(), "10.42.7.2");
        assert_eq!(
            f[0].published,
            Published {
                proto: Proto::Tcp,
                host_ip: None,
                host_port: 8080,
                port: 5000
            }
        );
        let err = |r: Result<(), BookError>| r.unwrap_err().to_string();
        let e = err(book.publish(NID, &b, &[bind(6, 80, "198.18.0.11", 8080, 0)]));
        assert!(e.contains("host port 8080/tcp is already published"), "{e}");
        book.publish(NID, &b, &[bind(17, 80, "198.18.0.11", 8080, 0)])
            .unwrap();
        let e = err(book.publish(NID, &b, &[bind(6, 80, "", 0, 0)]));
        assert!(e.contains("-p 80 without a host port"), "{e}");
        let e = err(book.publish(NID, &b, &[bind(6, 80, "", 9000, 9005)]));
        assert!(e.contains("not ranges"), "{e}");
        let e = err(book.publish(NID, &b, &[bind(132, 80, "", 9000, 0)]));
        assert!(e.contains("tcp and udp ports only"), "{e}");
        let e = err(book.publish(NID, &b, &[bind(6, 80, "not-an-ip", 9000, 0)]));
        assert!(e.contains("not a valid IP address"), "{e}");
        let e = err(book.publish(NID, "c", &[bind(6, 80, "", 9000, 0)]));
        assert!(e.contains("does not know endpoint"), "{e}");
        // A refusal changed nothing; the same container may publish again (a restart).
        assert_eq!(book.forwards().len(), 2);
        book.publish(NID, &a, &[bind(6, 5000, "", 8080, 0)])
            .unwrap();
        assert_eq!(book.forwards().len(), 2);
        let text = serde_json::to_string(&book).unwrap();
        assert_eq!(serde_json::from_str::<Book>(&text).unwrap(), book);
        book.unpublish(&a);
        assert_eq!(book.forwards().len(), 1);
        book.remove_endpoint(&b);
        assert!(book.forwards().is_empty());
    }

    #[test]
    fn reclaim_frees_only_what_leaked_before_the_start_and_dockerd_does_not_list() {
        let mut book = Book::default();
        let g = pool(&mut book);
        let pools = vec![("10.42.0.0/16".to_owned(), "10.42.7.1/24".to_owned())];
        let n = book.check_network(NID, &pools, false, &[], 1420).unwrap();
        book.add_network(NID, n);
        // Three containers: e2 still runs, e3 and e4 were removed while the plugin was
        // down; .5 was handed out but its endpoint never made (the plugin went down between).
        let mut ids = Vec::new();
        for i in 2..=5u8 {
            let a = book.request_address(&g.pool_id, "", false).unwrap();
            assert_eq!(a.to_string(), format!("10.42.7.{i}/24"));
            if i < 5 {
                let id = format!("{i}").repeat(64);
                let e = book.check_endpoint(NID, &id, &a.to_string()).unwrap();
                book.add_endpoint(&id, e);
                ids.push(id);
            }
        }
        let before = book.clone();
        // Since the start: .6 handed out to a container that is starting (not listed yet).
        assert_eq!(
            book.request_address(&g.pool_id, "", false)
                .unwrap()
                .to_string(),
            "10.42.7.6/24"
        );
        let addr = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut docker = BTreeMap::new();
        docker.insert(
            NID.to_owned(),
            Attached {
                endpoints: [ids[0].clone()].into(),
                addresses: [addr("10.42.7.2")].into(),
            },
        );
        // A network dockerd did not answer for is left alone.
        docker.insert("c".repeat(64), Attached::default());
        let freed = book.reclaim(&before, &docker);
        let gone: Vec<&str> = freed.endpoints.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(gone, vec![ids[1].as_str(), ids[2].as_str()]);
        assert_eq!(freed.endpoints[0].1.host_veth, "ovdh33333333333");
        assert_eq!(
            freed.addresses,
            vec![addr("10.42.7.3"), addr("10.42.7.4"), addr("10.42.7.5")]
        );
        let left: Vec<String> = book.pools[&g.pool_id]
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(left, vec!["10.42.7.2", "10.42.7.6"]);
        assert_eq!(book.endpoints.len(), 1);
        // The freed addresses are handed out again, lowest first. What was freed is no longer
        // held since the start, so a second pass (with `before` kept to the book, as the
        // plugin does after every change) frees nothing, not even .3 handed out again.
        let mut since = before.clone();
        since.retain_in(&book);
        assert_eq!(
            book.request_address(&g.pool_id, "", false)
                .unwrap()
                .to_string(),
            "10.42.7.3/24"
        );
        since.retain_in(&book);
        assert_eq!(since.endpoints.len(), 1);
        assert_eq!(since.pools[&g.pool_id].addresses.len(), 1);
        assert!(book.reclaim(&since, &docker).is_empty());
        assert!(
            book.pools[&g.pool_id]
                .addresses
                .contains(&addr("10.42.7.3"))
        );
        // An address dockerd lists for a container whose endpoint the book lacks stays held.
        let mut book2 = before.clone();
        docker.insert(
            NID.to_owned(),
            Attached {
                endpoints: BTreeSet::new(),
                addresses: [addr("10.42.7.4")].into(),
            },
        );
        let freed = book2.reclaim(&before, &docker);
        assert_eq!(freed.endpoints.len(), 3);
        assert!(!freed.addresses.contains(&addr("10.42.7.4")));
        assert!(
            book2.pools[&g.pool_id]
                .addresses
                .contains(&addr("10.42.7.4"))
        );
    }

    #[test]
    fn each_range_of_the_overlay_serves_its_own_network() {
        let slices: Vec<Ipv4Net> = ["10.42.7.0/24", "10.43.7.0/24"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ranges: Vec<Ipv4Net> = ["10.42.0.0/16", "10.43.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut book = Book::default();
        let ask = |book: &mut Book, pool: &str| {
            book.request_pool(Some(&slices), &ranges, pool, "", false, &[])
        };
        let a = ask(&mut book, "10.42.0.0/16").unwrap();
        let b = ask(&mut book, "10.43.0.0/16").unwrap();
        assert_eq!(
            (a.gateway.to_string(), b.gateway.to_string()),
            ("10.42.7.1/24".to_owned(), "10.43.7.1/24".to_owned())
        );
        assert_eq!(
            book.request_address(&b.pool_id, "", false)
                .unwrap()
                .to_string(),
            "10.43.7.2/24"
        );
        let before = book.clone();
        let e = ask(&mut book, "10.42.0.0/15").unwrap_err().to_string();
        assert!(
            e.contains("contains several of this host's subnets (10.42.7.0/24, 10.43.7.0/24)")
                && e.contains("use one of 10.42.0.0/16, 10.43.0.0/16"),
            "{e}"
        );
        let e = ask(&mut book, "10.44.0.0/16").unwrap_err().to_string();
        assert!(
            e.contains("does not contain this host's subnet 10.42.7.0/24, 10.43.7.0/24"),
            "{e}"
        );
        let e = ask(&mut book, "10.43.0.0/16").unwrap_err().to_string();
        assert!(e.contains("overlaps") && e.contains("10.43.7.0/24"), "{e}");
        let e = ask(&mut book, "10.43.0.0/20").unwrap_err().to_string();
        assert!(e.contains("overlaps"), "{e}");
        assert_eq!(book, before, "refusals change nothing");

        for (id, g) in [("a".repeat(64), &a), ("b".repeat(64), &b)] {
            let pools = vec![(g.pool.to_string(), g.gateway.to_string())];
            let n = book.check_network(&id, &pools, false, &[], 1420).unwrap();
            book.add_network(&id, n);
        }
        let iso = book.isolated();
        assert_eq!(
            iso.iter()
                .map(|i| (i.bridge.as_str(), i.range.to_string()))
                .collect::<Vec<_>>(),
            [
                ("ovdbaaaaaaaaaaa", "10.42.0.0/16".to_owned()),
                ("ovdbbbbbbbbbbbb", "10.43.0.0/16".to_owned())
            ]
        );
        // A book from before ranges: the pool stands in for the range.
        let mut old = book.clone();
        for n in old.networks.values_mut() {
            n.range = None;
        }
        assert_eq!(old.isolated(), iso);
    }
}
