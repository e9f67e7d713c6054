//! The names of this host's containers on the plugin's networks, learnt from dockerd's API
//! (a container's name, and its aliases on the network: `--network-alias`, or the service
//! name Compose gives) and handed to the control plane, which publishes them signed
//! (`control::node::core`'s `names`). Asked once a second while the plugin has networks,
//! beside the plugin server and never inside a plugin call; a container's aliases are asked
//! once per endpoint.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use protocol::records::names::{MAX_ALIASES, NameEntry, valid_text};

use super::{Plugin, dockerd};

/// The names of this host's containers, as last learnt.
pub type LocalNames = Arc<Vec<NameEntry>>;

/// How often dockerd is asked.
const POLL: Duration = Duration::from_secs(1);

impl Plugin {
    /// Keeps the names sent to the control plane in step with dockerd's containers, until
    /// the plugin stops. Does nothing without a receiver ([`Plugin::publish_names`]).
    pub async fn watch_names(&self) {
        let Some(tx) = self.names.clone() else {
            return;
        };
        // (container, endpoint) → its aliases on that endpoint's network.
        let mut aliases: HashMap<(String, String), Vec<String>> = HashMap::new();
        let mut said = false;
        loop {
            let networks: Vec<(String, Ipv4Net)> = {
                let book = self.book.lock().await;
                book.networks
                    .iter()
                    .map(|(id, n)| {
                        let range = n
                            .range
                            .or_else(|| book.pools.get(&n.pool_id).map(|p| p.pool))
                            .unwrap_or(n.slice);
                        (id.clone(), range)
                    })
                    .collect()
            };
            match self.names_once(&networks, &mut aliases).await {
                Ok(entries) => {
                    said = false;
                    tx.send_if_modified(|held| {
                        if held.as_slice() == entries.as_slice() {
                            return false;
                        }
                        *held = Arc::new(entries);
                        true
                    });
                }
                Err(e) if !said => {
                    said = true;
                    tracing::info!(error = %e, "cannot ask dockerd for container names; they are published once it answers");
                }
                Err(e) => tracing::debug!(error = %e, "dockerd still does not answer"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Hands the names learnt to `tx` (the control plane).
    pub fn publish_names(mut self, tx: tokio::sync::watch::Sender<LocalNames>) -> Plugin {
        self.names = Some(tx);
        self
    }

    async fn names_once(
        &self,
        networks: &[(String, Ipv4Net)],
        aliases: &mut HashMap<(String, String), Vec<String>>,
    ) -> Result<Vec<NameEntry>, dockerd::AskError> {
        let mut entries = BTreeMap::new();
        let mut seen = Vec::new();
        for (id, range) in networks {
            let Some((network, members)) = dockerd::members(&self.dockerd_socket, id).await? else {
                continue;
            };
            let network = network.to_ascii_lowercase();
            if !valid_text(&network) {
                tracing::debug!(network = %network, "a Docker network name that DNS cannot carry");
                continue;
            }
            for m in members {
                let key = (m.id.clone(), m.endpoint_id.clone());
                let known = match aliases.get(&key) {
                    Some(a) => a.clone(),
                    None => {
                        let a = dockerd::aliases(&self.dockerd_socket, &m.id, &network).await?;
                        aliases.insert(key.clone(), a.clone());
                        a
                    }
                };
                seen.push(key);
                if let Some(entry) = entry(&m, known, &network, *range) {
                    entries.insert((entry.name.clone(), entry.address), entry);
                }
            }
        }
        aliases.retain(|k, _| seen.contains(k));
        Ok(entries.into_values().collect())
    }
}

/// The entry of container `m`: its name and aliases lowered, without its ID's prefixes
/// (Docker adds the short ID as an alias) or its own name twice; `None` when its name
/// cannot be a DNS name.
fn entry(
    m: &dockerd::Member,
    aliases: Vec<String>,
    network: &str,
    range: Ipv4Net,
) -> Option<NameEntry> {
    let name = m.name.to_ascii_lowercase();
    if !valid_text(&name) || !range.contains(&m.address) {
        return None;
    }
    let mut list: Vec<String> = Vec::new();
    for a in aliases {
        let a = a.to_ascii_lowercase();
        let id_prefix = a.len() >= 12 && m.id.starts_with(&a);
        if a != name && !id_prefix && valid_text(&a) && !list.contains(&a) {
            list.push(a);
        }
    }
    list.truncate(MAX_ALIASES);
    Some(NameEntry {
        name,
        aliases: list,
        address: IpAddr::V4(m.address),
        network: network.to_owned(),
        range: IpNet::V4(range),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_has_lowered_names_without_the_id() {
        let m = dockerd::Member {
            id: "c0ffee123456789".into(),
            name: "App_Web-1".into(),
            endpoint_id: "e1".into(),
            address: "10.42.1.2".parse().unwrap(),
        };
        let range: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let e = entry(
            &m,
            vec![
                "app_web-1".into(),
                "Web".into(),
                "c0ffee123456".into(),
                "web".into(),
                "bad name".into(),
            ],
            "ovl",
            range,
        )
        .unwrap();
        assert_eq!(e.name, "app_web-1");
        assert_eq!(e.aliases, vec!["web"]);
        assert_eq!(e.range, IpNet::V4(range));
        // An address outside the range, or a name DNS cannot carry: no entry.
        let outside = dockerd::Member {
            address: "10.43.1.2".parse().unwrap(),
            ..m.clone()
        };
        assert!(entry(&outside, vec![], "ovl", range).is_none());
        let long = dockerd::Member {
            name: "x".repeat(64),
            ..m
        };
        assert!(entry(&long, vec![], "ovl", range).is_none());
    }
}
