//! Managing the running daemon without a restart: `overlayctl reload` (the config file
//! read again, as SIGHUP does) and `overlayctl peer add|set|remove` (static peers, kept in
//! the daemon's state directory).
//!
//! The renderings are pure; the handlers do the I/O.

use std::net::SocketAddr;
use std::path::Path;

use clap::Subcommand;
use ipnet::IpNet;
use keys::PublicKey;
use protocol::api::{
    RELOAD_PATH, ReloadReport, STATIC_PEER_ADD_PATH, STATIC_PEER_REMOVE_PATH, STATIC_PEER_SET_PATH,
    StaticPeerChange, StaticPeerRemoveRequest, StaticPeerRequest, StaticPeerSetRequest,
};

use crate::client::{self, LOCAL_TIMEOUT};
use crate::control::print_json;
use crate::parse;

/// `overlayctl peer ...`.
#[derive(Subcommand, Debug)]
pub enum PeerCommand {
    /// Add a static peer (a stock WireGuard host, or any host outside the network) to the
    /// running daemon; kept across restarts and reloads.
    Add {
        /// Its WireGuard public key (base64, as `wg pubkey` prints it).
        #[arg(value_name = "KEY", value_parser = public_key)]
        key: PublicKey,
        /// Where to reach it (IP:PORT); learnt from its packets when left out.
        #[arg(long, value_name = "ADDR")]
        endpoint: Option<SocketAddr>,
        /// Its subnets, separated by commas: routed to it, and the only source addresses
        /// accepted from it.
        #[arg(long, value_name = "CIDR,...", value_delimiter = ',', required = true, value_parser = parse::cidr)]
        subnets: Vec<IpNet>,
        /// Send a keepalive every S seconds (through NAT or a stateful firewall).
        #[arg(long, value_name = "S", value_parser = clap::value_parser!(u16).range(1..))]
        keepalive: Option<u16>,
        /// Its name (what `overlayctl peers` and the policy's `node:` selectors see).
        #[arg(long, value_name = "NAME", value_parser = parse::name)]
        name: Option<String>,
        /// Print overlayd's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a static peer added with `peer add`; what is left out stays as it is.
    Set {
        /// Its WireGuard public key.
        #[arg(value_name = "KEY", value_parser = public_key)]
        key: PublicKey,
        /// A new endpoint (IP:PORT).
        #[arg(long, value_name = "ADDR")]
        endpoint: Option<SocketAddr>,
        /// New subnets, separated by commas (they replace the old ones).
        #[arg(long, value_name = "CIDR,...", value_delimiter = ',', value_parser = parse::cidr)]
        subnets: Option<Vec<IpNet>>,
        /// A new keepalive interval in seconds; 0 turns keepalives off.
        #[arg(long, value_name = "S")]
        keepalive: Option<u16>,
        /// A new name.
        #[arg(long, value_name = "NAME", value_parser = parse::name)]
        name: Option<String>,
        /// Print overlayd's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a static peer added with `peer add`: its tunnel and routes go at once.
    Remove {
        /// Its WireGuard public key.
        #[arg(value_name = "KEY", value_parser = public_key)]
        key: PublicKey,
        /// Print overlayd's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// clap's value parser for a WireGuard public key.
fn public_key(text: &str) -> Result<PublicKey, String> {
    text.parse::<PublicKey>().map_err(|e| {
        format!("'{text}' is not a WireGuard public key ({e}): give the 44-character base64 key `wg pubkey` prints")
    })
}

/// Runs a `peer` command against the daemon at `socket`.
pub fn peer(socket: &Path, command: PeerCommand) -> anyhow::Result<()> {
    let (change, json): (StaticPeerChange, bool) = match command {
        PeerCommand::Add {
            key,
            endpoint,
            subnets,
            keepalive,
            name,
            json,
        } => {
            let request = StaticPeerRequest {
                public_key: key,
                name,
                endpoint,
                subnets,
                persistent_keepalive: keepalive,
            };
            let change = client::post(socket, STATIC_PEER_ADD_PATH, &request, LOCAL_TIMEOUT)?;
            (change, json)
        }
        PeerCommand::Set {
            key,
            endpoint,
            subnets,
            keepalive,
            name,
            json,
        } => {
            if endpoint.is_none() && subnets.is_none() && keepalive.is_none() && name.is_none() {
                return Err(parse::UsageError(
                    "nothing to change: give --endpoint, --subnets, --keepalive or --name".into(),
                )
                .into());
            }
            let request = StaticPeerSetRequest {
                public_key: key,
                name,
                endpoint,
                subnets,
                persistent_keepalive: keepalive,
            };
            let change = client::post(socket, STATIC_PEER_SET_PATH, &request, LOCAL_TIMEOUT)?;
            (change, json)
        }
        PeerCommand::Remove { key, json } => {
            let request = StaticPeerRemoveRequest { public_key: key };
            let change = client::post(socket, STATIC_PEER_REMOVE_PATH, &request, LOCAL_TIMEOUT)?;
            (change, json)
        }
    };
    if json {
        return print_json(&change);
    }
    println!("{}", peer_changed(&change));
    Ok(())
}

/// The line `peer add|set|remove` prints.
pub fn peer_changed(c: &StaticPeerChange) -> String {
    match c.action.as_str() {
        "unchanged" => format!("peer {}: nothing changed", c.public_key),
        action => format!("peer {} {action} (kept in {})", c.public_key, c.file),
    }
}

/// `overlayctl reload`.
pub fn reload(socket: &Path, json: bool) -> anyhow::Result<()> {
    let report: ReloadReport =
        client::post(socket, RELOAD_PATH, &serde_json::json!({}), LOCAL_TIMEOUT)?;
    if json {
        return print_json(&report);
    }
    print!("{}", reloaded(&report));
    Ok(())
}

/// What `overlayctl reload` prints.
pub fn reloaded(r: &ReloadReport) -> String {
    let mut out = format!(
        "reloaded {} (sha256 {})\n",
        r.config.path,
        short(&r.config.sha256)
    );
    if r.changed.is_empty() && r.restart_required.is_empty() {
        out.push_str("nothing changed\n");
    }
    for line in &r.changed {
        out.push_str(&format!("changed: {line}\n"));
    }
    for line in &r.restart_required {
        out.push_str(&format!("not changed: {line}\n"));
    }
    out
}

/// The first 12 hex digits of a hash, as status lines show it.
pub fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::ConfigInForce;

    fn in_force() -> ConfigInForce {
        ConfigInForce {
            path: "/etc/overlayd/overlayd.toml".into(),
            sha256: "0123456789abcdef0123".into(),
            loaded_unix: 1_700_000_000,
            restart_required: Vec::new(),
            last_reload: None,
        }
    }

    #[test]
    fn a_reload_says_what_changed_and_what_waits() {
        let report = ReloadReport {
            changed: vec!["[control] suspect_timeout_ms 4000 -> 6000".into()],
            restart_required: vec![
                "listen_port 51820 -> 51830 needs a restart: the tunnels' UDP socket is bound at start".into(),
            ],
            config: in_force(),
        };
        assert_eq!(
            reloaded(&report),
            "reloaded /etc/overlayd/overlayd.toml (sha256 0123456789ab)\n\
             changed: [control] suspect_timeout_ms 4000 -> 6000\n\
             not changed: listen_port 51820 -> 51830 needs a restart: the tunnels' UDP socket is bound at start\n"
        );
        let nothing = ReloadReport {
            changed: Vec::new(),
            restart_required: Vec::new(),
            config: in_force(),
        };
        assert!(reloaded(&nothing).ends_with("nothing changed\n"));
    }

    #[test]
    fn keys_are_checked_before_the_daemon_is_asked() {
        let e = public_key("not-a-key").unwrap_err();
        assert!(
            e.starts_with("'not-a-key' is not a WireGuard public key"),
            "{e}"
        );
        let key = keys::PrivateKey::generate().public_key();
        assert_eq!(public_key(&key.to_string()).unwrap(), key);
    }
}
