//! The IPAM half of the plugin (`IpamDriver.*`): pools, each the overlay range dockerd
//! asks for and this host's slice of it, and the addresses handed out from the slice.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Book, BookError, Granted, POOL_ID_PREFIX, Pool, gateway_of, parse_net, with_mask};

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
        let Some(pool) = self.pools.get_mut(pool_id) else {
            return Err(BookError::unknown("pool", pool_id));
        };
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
}
