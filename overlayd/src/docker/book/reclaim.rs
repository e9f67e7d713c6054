//! What leaked while the plugin was down: dockerd removed containers then, and only warned
//! when their `DeleteEndpoint` and `ReleaseAddress` failed. [`Book::reclaim`] frees it, from
//! what dockerd says it still holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{Book, Endpoint};

impl Book {
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
