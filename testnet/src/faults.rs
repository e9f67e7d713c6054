//! Faults on the underlay: partitions and random loss as `nft` rules in the host namespaces
//! (table `inet testnet`; this kernel has no `netem`), and roaming by moving a host's
//! underlay address. Crashes are [`Testnet::kill_daemon`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Result, bail};

use crate::Testnet;
use crate::cmd;
use crate::names;
use crate::topology::UNDERLAY_PREFIX_LEN;

/// The nft table every fault rule lives in.
pub const NFT_TABLE: &str = "testnet";

/// Chains per fault kind, (input, output).
const PARTITION_CHAINS: (&str, &str) = ("partition_in", "partition_out");
const LOSS_CHAINS: (&str, &str) = ("loss_in", "loss_out");

impl Testnet {
    /// Cuts the underlay between every host in `a` and every host in `b` (both directions):
    /// each host drops packets to and from the other side's current public addresses (a
    /// host behind a NAT is seen at its NAT's).
    /// Partitions add up until [`Testnet::heal`]. A host that roams afterwards escapes
    /// the partition (the rules name addresses).
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<()> {
        for &i in a.iter().chain(b) {
            self.host(i)?;
        }
        if let Some(i) = a.iter().find(|i| b.contains(i)) {
            bail!("host {i} is on both sides of the partition");
        }
        for (side, other) in [(a, b), (b, a)] {
            let blocked: BTreeSet<Ipv4Addr> = other
                .iter()
                .map(|&k| self.public_addr(k))
                .collect::<Result<_>>()?;
            if blocked.is_empty() {
                continue;
            }
            let set = blocked
                .iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let (chain_in, chain_out) = PARTITION_CHAINS;
            for &i in side {
                let script = format!(
                    "{}add rule inet {NFT_TABLE} {chain_out} ip daddr {{ {set} }} drop\n\
                     add rule inet {NFT_TABLE} {chain_in} ip saddr {{ {set} }} drop\n",
                    ensure_chains(PARTITION_CHAINS)
                );
                self.nft(i, &script)?;
            }
        }
        Ok(())
    }

    /// Removes every partition (random loss stays).
    pub fn heal(&self) -> Result<()> {
        for i in 1..=self.state.hosts {
            self.nft(i, &delete_chains(PARTITION_CHAINS))?;
        }
        Ok(())
    }

    /// Drops `percent` % of host `i`'s underlay packets at random, in each direction on
    /// `ul0` (so a round trip through it loses about twice that). Replaces the host's
    /// previous setting; 0 removes it.
    pub fn set_loss(&self, i: usize, percent: u32) -> Result<()> {
        self.host(i)?;
        if percent > 100 {
            bail!("loss must be 0 to 100 percent, not {percent}");
        }
        if percent == 0 {
            return self.nft(i, &delete_chains(LOSS_CHAINS));
        }
        let (chain_in, chain_out) = LOSS_CHAINS;
        // numgen's range is 0..=99, so `< 100` does not parse: 100 % is an unconditional drop.
        let random = if percent == 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        let script = format!(
            "{}flush chain inet {NFT_TABLE} {chain_in}\n\
             flush chain inet {NFT_TABLE} {chain_out}\n\
             add rule inet {NFT_TABLE} {chain_in} iifname \"ul0\" {random}drop\n\
             add rule inet {NFT_TABLE} {chain_out} oifname \"ul0\" {random}drop\n",
            ensure_chains(LOSS_CHAINS)
        );
        self.nft(i, &script)
    }

    /// Host `i`'s current underlay address (behind its NAT, if it has one: see
    /// [`Testnet::public_addr`]).
    pub fn underlay_addr(&self, i: usize) -> Result<Ipv4Addr> {
        Ok(self.host(i)?.underlay)
    }

    /// Roams host `i`: replaces its underlay address on `ul0` with `new` (inside
    /// 198.18.0.0/15, not another host's or NAT's). For a host behind a NAT, the NAT's
    /// public address moves instead (as when a home router gets a new address): the host
    /// keeps its own, its mappings are gone (the kernel drops them with the address), and
    /// peers see it at `new` from its next packets. Peers learn it from the host's next
    /// packets.
    pub fn set_underlay_addr(&mut self, i: usize, new: Ipv4Addr) -> Result<()> {
        let host = self.host(i)?;
        let old = host.nat.map_or(host.underlay, |n| n.public);
        if !names::in_underlay_range(new) {
            bail!("{new} is outside the underlay 198.18.0.0/15");
        }
        if new == old {
            return Ok(());
        }
        for (k, other) in self.state.host.iter().enumerate() {
            if other.underlay == new || other.nat.is_some_and(|n| n.public == new) {
                bail!("{new} is already {}'s underlay address", other.name);
            }
            if other.nat.is_some() && new.octets()[..3] == [198, 19, (k + 1) as u8] {
                bail!("{new} is inside the network behind {}'s NAT", other.name);
            }
        }
        let (ns, link) = match host.nat {
            Some(_) => (self.nat_ns(i), "wan0"),
            None => (self.host_ns(i), "ul0"),
        };
        // Delete first: removing the primary address of a subnet would also remove a new
        // secondary one in the same subnet.
        cmd::ip(&[
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{old}/{UNDERLAY_PREFIX_LEN}"),
            "dev",
            link,
        ])?;
        cmd::ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{new}/{UNDERLAY_PREFIX_LEN}"),
            "dev",
            link,
        ])?;
        let host = &mut self.state.host[i - 1];
        match &mut host.nat {
            Some(nat) => nat.public = new,
            None => host.underlay = new,
        }
        self.state.save()
    }

    /// Applies an nft script in host `i`'s namespace, atomically.
    fn nft(&self, i: usize, script: &str) -> Result<()> {
        let mut cmd = cmd::in_netns(
            &self.host_ns(i),
            &[cmd::tool("nft").as_os_str(), "-f".as_ref(), "-".as_ref()],
        );
        cmd::run_with_input(&mut cmd, script)?;
        Ok(())
    }
}

/// nft commands that create the table and an input/output chain pair if missing.
fn ensure_chains((chain_in, chain_out): (&str, &str)) -> String {
    format!(
        "add table inet {NFT_TABLE}\n\
         add chain inet {NFT_TABLE} {chain_in} {{ type filter hook input priority 0; policy accept; }}\n\
         add chain inet {NFT_TABLE} {chain_out} {{ type filter hook output priority 0; policy accept; }}\n"
    )
}

/// nft commands that delete a chain pair whether or not it exists.
fn delete_chains(chains: (&str, &str)) -> String {
    let (chain_in, chain_out) = chains;
    format!(
        "{}delete chain inet {NFT_TABLE} {chain_in}\n\
         delete chain inet {NFT_TABLE} {chain_out}\n",
        ensure_chains(chains)
    )
}
