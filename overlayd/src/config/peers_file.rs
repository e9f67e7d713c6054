//! The static peers added with `overlayctl peer add` (and changed with `peer set`, `peer
//! remove`): kept in `state_dir/peers.json` (0600, written to a temporary name and renamed
//! like the control plane's files), so that a restart keeps them.
//!
//! How they combine with the config file's `[[peer]]`s, as `wg syncconf` does with a
//! file: the file's peers are the file's (a reload makes the daemon's config peers exactly
//! those of the file); the peers added with `overlayctl` are kept here and survive reloads
//! and restarts; a key in both is an error named in one line, at start and on reload
//! ([`super::Config::check_cli_peers`]). `overlayctl` changes only its own peers: a
//! `[[peer]]` of the file is changed by editing the file and reloading.
//!
//! Reading never creates anything (`overlayd --check-config` reads it too).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::IpNet;
use keys::PublicKey;
use serde::{Deserialize, Serialize};

use super::PeerConfig;

/// Its name in the state directory.
pub const FILE_NAME: &str = "peers.json";

/// The file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    peers: Vec<FilePeer>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    public_key: PublicKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<SocketAddr>,
    subnets: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    persistent_keepalive: Option<u16>,
}

/// The peers kept in `path`; none when it does not exist. `Err` is one sentence (without
/// the file's name, which the caller adds).
pub fn read(path: &Path) -> Result<Vec<PeerConfig>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let file: File = serde_json::from_str(&text).map_err(|e| {
        format!("damaged or edited by hand ({e}); fix it, or remove it and add the peers again with `overlayctl peer add`")
    })?;
    file.peers
        .into_iter()
        .map(|p| {
            let name = p
                .name
                .map(|n| {
                    keys::Name::new(&n)
                        .map_err(|e| format!("peer {}: name {n:?}: {e}", p.public_key.short()))
                })
                .transpose()?;
            Ok(PeerConfig {
                public_key: p.public_key,
                name,
                endpoint: p.endpoint,
                subnets: p.subnets,
                persistent_keepalive: p.persistent_keepalive,
            })
        })
        .collect()
}

/// Replaces the file with `peers` (0600, atomically).
pub fn write(path: &Path, peers: &[PeerConfig]) -> anyhow::Result<()> {
    let file = File {
        peers: peers
            .iter()
            .map(|p| FilePeer {
                public_key: p.public_key,
                name: p.name.as_ref().map(ToString::to_string),
                endpoint: p.endpoint,
                subnets: p.subnets.clone(),
                persistent_keepalive: p.persistent_keepalive,
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&file).context("cannot encode the peers")?;
    text.push('\n');
    crate::util::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn peer(subnet: &str, keepalive: Option<u16>) -> PeerConfig {
        PeerConfig {
            public_key: keys::PrivateKey::generate().public_key(),
            name: Some(keys::Name::new("wg-a").unwrap()),
            endpoint: Some("198.18.0.13:51820".parse().unwrap()),
            subnets: vec![subnet.parse().unwrap()],
            persistent_keepalive: keepalive,
        }
    }

    #[test]
    fn peers_round_trip_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        assert_eq!(read(&file).unwrap(), Vec::new(), "no file: no peers");
        assert!(!file.exists(), "reading makes nothing");
        let peers = vec![peer("10.42.3.0/24", Some(25)), peer("10.42.5.0/24", None)];
        write(&file, &peers).unwrap();
        assert_eq!(read(&file).unwrap(), peers);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write(&file, &peers[1..]).unwrap();
        assert_eq!(read(&file).unwrap(), peers[1..]);
        assert!(!crate::util::tmp_path(&file).exists(), "no temporary left");
    }

    #[test]
    fn a_damaged_file_is_one_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        std::fs::write(&file, "{\"peers\": [{\"public_key\": \"nope\"}]}").unwrap();
        let e = read(&file).unwrap_err();
        assert!(e.starts_with("damaged or edited by hand"), "{e}");
        assert_eq!(e.lines().count(), 1);
        std::fs::write(&file, "{\"peers\": [], \"extra\": 1}").unwrap();
        assert!(read(&file).is_err(), "unknown fields are refused");
    }
}
