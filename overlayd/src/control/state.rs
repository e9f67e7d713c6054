//! The control plane's state directory (`state_dir`, default `/var/lib/overlayd`): what a
//! member needs to come back after a restart without the bootstrap host.
//!
//! ```text
//! state_dir/            0700
//!   control.key         0600  this host's Ed25519 key (control-plane TLS, record signatures)
//!   network.json        0600  network, CIDR, CA public key, this host's certificate, counters
//!   directory.json      0600  the verified member records and revocations (re-verified on load)
//!   ca.key              0600  admins only: the network CA's private key
//!   admin.json          0600  admins only: issued subnets and serials, join tokens (hashes)
//!   admins.json         0600  the CA-signed admin records (`control::admins`), when the
//!                             network has more than one admin
//!   peers.json          0600  static peers added with `overlayctl peer add` (config::peers_file)
//! ```
//!
//! Every file is written to a temporary name and renamed, so a crash never leaves half a
//! file; the WireGuard key stays where the config's `private_key_file` says.
//!
//! The folder must belong to the user the daemon runs as (root): one that another user owns
//! is refused, as that user could replace the keys in it whatever its mode. `leave` removes
//! every file above ([`StateDir::forget_network`]), the control key too: the old network's
//! certificates name it, so it would let whoever reads the folder later speak as the member
//! that left until its certificate expires. `init` and `join` make a new one.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ipnet::IpNet;
use keys::{CaKey, Name, PublicKey, SecretHash, SignedCertificate, SigningKey, VerifyingKey};
use protocol::records::Directory;
use serde::{Deserialize, Serialize};

use crate::UsageError;
use crate::util::{now_unix, tmp_path, write_atomic};

/// This host's membership, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkState {
    /// The network's name.
    pub network: Name,
    /// The network's address range.
    pub cidr: IpNet,
    /// Its extra ranges (`init --range`), parallel to `cidr`; absent in files written
    /// before they existed.
    #[serde(default)]
    pub ranges: Vec<IpNet>,
    /// Prefix length of member subnets.
    pub subnet_prefix: u8,
    /// The CA's public key.
    pub ca: VerifyingKey,
    /// This host's certificate.
    #[serde(with = "text")]
    pub certificate: SignedCertificate,
    /// SWIM generation: the record version it was taken at (on every start, and on rejoining
    /// after being declared down), so a restarted member is new to the others.
    pub generation: u64,
    /// Version of this host's latest member record: bumped on every change.
    pub record_version: u64,
    /// Set by `leave`: the daemon does not rejoin on restart.
    pub left: bool,
    /// When this host last installed a renewed (or re-issued) certificate, unix seconds;
    /// absent until the first, and in files written before renewal existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_unix: Option<u64>,
    /// Control endpoints of the admin this host joined through (a last resort to find the
    /// network when every member in the directory is unreachable).
    pub bootstrap: Vec<SocketAddr>,
    /// The CA transition in progress (`SignedCaTransition::to_bytes`, hex; `ca` is its
    /// new CA): the CA it retires is trusted until its end. Absent when none is, and in
    /// files written before CA rotation.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_bytes")]
    pub ca_transition: Option<Vec<u8>>,
    /// When this host's WireGuard key was made (unix seconds), for `[control]
    /// key_rotation_days`; absent in older files (counted from the first start that reads
    /// them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_key_since: Option<u64>,
}

/// What an admin remembers about what it issued.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminState {
    /// The next certificate serial (at a join, also the member's number).
    pub next_serial: u64,
    /// Subnets issued, by member name; never given to another name.
    pub allocations: BTreeMap<Name, IpNet>,
    /// Join tokens issued.
    pub tokens: Vec<TokenEntry>,
    /// The latest certificate issued to each name: it makes the name and its WireGuard key
    /// a current member's from the moment it is issued, before the member's first record
    /// arrives (or if it never starts). Absent in files written before it existed.
    #[serde(default)]
    pub issued: BTreeMap<Name, Issued>,
    /// This admin's serial slot (`control::admins`): it issues only serials of that
    /// residue. Absent while the network has one admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u8>,
    /// The blocks of the main range it allocates subnets in (`control::admins`). Absent
    /// while the network has one admin: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    /// WireGuard keys members rotated away from (`overlayctl rotate-key`), with the member
    /// that held each: no certificate ever names one again. Absent in older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_keys: Vec<(Name, PublicKey)>,
}

/// A certificate an admin issued, as far as admitting others needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    /// Its WireGuard key.
    pub wireguard_key: PublicKey,
    /// Its serial.
    pub serial: u64,
    /// Its last valid second.
    pub not_after: u64,
    /// The member's number (kept by every certificate re-issued to it); absent in files
    /// written before certificates carried one, where it is the serial's low 32 bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// The groups an admin set with `overlayctl node groups` (renewals keep them); absent:
    /// those of the member's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Name>>,
}

impl Issued {
    /// The member's number: see [`Issued::number`].
    pub fn number(&self) -> u32 {
        self.number.unwrap_or(self.serial as u32)
    }
}

/// `admins.json`: the admin records, hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminsFile {
    #[serde(with = "hex_list")]
    records: Vec<Vec<u8>>,
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            value
                .iter()
                .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| {
                if t.len() % 2 != 0 || !t.is_ascii() {
                    return Err(serde::de::Error::custom("not hex"));
                }
                (0..t.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&t[i..i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// One join token, by the hash of its secret (the secret itself is not kept).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// SHA-256 of the secret.
    #[serde(with = "text")]
    pub secret_hash: SecretHash,
    /// Unusable from this second on.
    pub expires_unix: u64,
    /// Groups the joining host gets.
    pub groups: Vec<Name>,
    /// The member that used it; a token is single-use.
    pub used_by: Option<Name>,
    /// The admin that made it, when another admin did (its token record came from there:
    /// `admins::tokens`); absent for this admin's own, and in files from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Name>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

const CONTROL_KEY: &str = "control.key";
const NETWORK: &str = "network.json";
const DIRECTORY: &str = "directory.json";
const CA_KEY: &str = "ca.key";
/// A new CA key written by `overlayctl ca rotate` before `network.json` names it; renamed
/// to `ca.key` once it does ([`StateDir::finish_ca_rotation`]).
const CA_KEY_NEXT: &str = "ca-next.key";
const ADMIN: &str = "admin.json";
const ADMINS: &str = "admins.json";

impl StateDir {
    /// Opens `root`, creating it 0700 if missing and narrowing it to 0700 if wider. Refuses
    /// (a [`UsageError`]) a folder that another user than this process's effective one owns.
    pub fn open(root: &Path) -> anyhow::Result<StateDir> {
        if !root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .with_context(|| format!("cannot create state_dir {}", root.display()))?;
        }
        let meta = fs::metadata(root)
            .with_context(|| format!("cannot read state_dir {}", root.display()))?;
        if !meta.is_dir() {
            bail!(
                "state_dir {} is not a folder; point state_dir at a folder",
                root.display()
            );
        }
        // SAFETY: geteuid(2) has no preconditions.
        let user = unsafe { libc::geteuid() };
        if let Some(problem) = foreign_owner(root, meta.uid(), user) {
            return Err(UsageError(problem).into());
        }
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict state_dir {} to root", root.display()))?;
        }
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// This host's control key, made on first use.
    pub fn control_key(&self) -> anyhow::Result<SigningKey> {
        let path = self.path(CONTROL_KEY);
        if path.exists() {
            return keys::read_signing_key_file(&path)
                .with_context(|| format!("cannot use the control key {}", path.display()));
        }
        let key = SigningKey::generate();
        keys::write_signing_key_file(&path, &key)
            .with_context(|| format!("cannot write the control key {}", path.display()))?;
        Ok(key)
    }

    /// The membership, if this host has initialised or joined a network.
    pub fn network(&self) -> anyhow::Result<Option<NetworkState>> {
        self.read_json(NETWORK)
    }

    /// Saves the membership.
    pub fn save_network(&self, state: &NetworkState) -> anyhow::Result<()> {
        self.write_json(NETWORK, state)
    }

    /// The directory saved last (every record re-verified), or an empty one.
    pub fn directory(&self, ca: &VerifyingKey, network: &Name) -> anyhow::Result<Directory> {
        match self.read_json::<Directory>(DIRECTORY) {
            Ok(Some(dir)) if dir.ca() == ca && dir.network() == network => Ok(dir),
            Ok(Some(_)) => {
                tracing::warn!(
                    "the saved directory is for another network or CA; starting from an empty one"
                );
                Ok(Directory::new(*ca, network.clone()))
            }
            Ok(None) => Ok(Directory::new(*ca, network.clone())),
            Err(e) => Err(e),
        }
    }

    /// Saves the directory.
    pub fn save_directory(&self, dir: &Directory) -> anyhow::Result<()> {
        self.write_json(DIRECTORY, dir)
    }

    /// The CA key, on admins.
    pub fn ca_key(&self) -> anyhow::Result<Option<CaKey>> {
        let path = self.path(CA_KEY);
        if !path.exists() {
            return Ok(None);
        }
        let key = keys::read_signing_key_file(&path)
            .with_context(|| format!("cannot use the CA key {}", path.display()))?;
        Ok(Some(CaKey::from_signing_key(key)))
    }

    /// Saves the CA key (0600).
    pub fn save_ca_key(&self, ca: &CaKey) -> anyhow::Result<()> {
        let path = self.path(CA_KEY);
        keys::write_signing_key_file(&path, ca.signing_key())
            .with_context(|| format!("cannot write the CA key {}", path.display()))
    }

    /// Writes the CA key a rotation makes (0600) beside the one in force; it replaces it in
    /// [`StateDir::finish_ca_rotation`], once `network.json` names it.
    pub fn save_next_ca_key(&self, ca: &CaKey) -> anyhow::Result<()> {
        let path = self.path(CA_KEY_NEXT);
        keys::write_signing_key_file(&path, ca.signing_key())
            .with_context(|| format!("cannot write the new CA key {}", path.display()))
    }

    /// Ends a CA rotation on disk, also one cut short by a crash: a new CA key that
    /// `network.json` names (`ca`) replaces the old one, which is destroyed; one it does
    /// not name (the rotation never took) is removed.
    pub fn finish_ca_rotation(&self, ca: &VerifyingKey) -> anyhow::Result<()> {
        let next = self.path(CA_KEY_NEXT);
        if !next.exists() {
            return Ok(());
        }
        let key = keys::read_signing_key_file(&next)
            .with_context(|| format!("cannot use the new CA key {}", next.display()))?;
        if key.verifying_key() == *ca {
            let path = self.path(CA_KEY);
            fs::rename(&next, &path)
                .with_context(|| format!("cannot move {} to {}", next.display(), path.display()))?;
        } else {
            fs::remove_file(&next).with_context(|| format!("cannot remove {}", next.display()))?;
        }
        Ok(())
    }

    /// The admin records (`control::admins`), as signed bytes; none in a network with one
    /// admin (and in state directories from before there could be more).
    pub fn admins(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(self
            .read_json::<AdminsFile>(ADMINS)?
            .map_or_else(Vec::new, |f| f.records))
    }

    /// Saves the admin records.
    pub fn save_admins(&self, records: Vec<Vec<u8>>) -> anyhow::Result<()> {
        self.write_json(ADMINS, &AdminsFile { records })
    }

    /// Installs a CA key received from another admin: written 0600 to a temporary name and
    /// renamed, so a crash leaves either no key or the whole key.
    pub fn install_ca_key(&self, ca: &CaKey) -> anyhow::Result<()> {
        let path = self.path(CA_KEY);
        let tmp = tmp_path(&path);
        keys::write_signing_key_file(&tmp, ca.signing_key())
            .with_context(|| format!("cannot write the CA key {}", tmp.display()))?;
        fs::rename(&tmp, &path)
            .with_context(|| format!("cannot move the CA key to {}", path.display()))
    }

    /// Destroys this host's copy of the CA key and its `admin.json` (it was removed as an
    /// admin): the key is overwritten, then removed.
    pub fn drop_ca_key(&self) -> anyhow::Result<()> {
        let path = self.path(CA_KEY);
        if path.exists() {
            let _ = fs::write(&path, [0u8; 64]);
            fs::remove_file(&path)
                .with_context(|| format!("cannot remove the CA key {}", path.display()))?;
        }
        match fs::remove_file(self.path(ADMIN)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).context("cannot remove admin.json")
            }
            _ => Ok(()),
        }
    }

    /// What this admin issued.
    pub fn admin(&self) -> anyhow::Result<AdminState> {
        Ok(self.read_json(ADMIN)?.unwrap_or_default())
    }

    /// Saves what this admin issued.
    pub fn save_admin(&self, state: &AdminState) -> anyhow::Result<()> {
        self.write_json(ADMIN, state)
    }

    /// Forgets the membership (after `leave`): removes every file of the list in the module
    /// docs and their temporary copies, `network.json` last, so that a crash half way
    /// leaves a `network.json` that says `left` and the next start finishes the job. An
    /// admin's CA key and `admin.json` are not destroyed but moved out of the way, into
    /// `former/` (0700): the host is no admin any more, yet a network whose only admin left
    /// by mistake can be recovered by hand. Returns where they went, if anywhere.
    pub fn forget_network(&self) -> anyhow::Result<Option<PathBuf>> {
        let archived = self.archive_admin()?;
        for name in [
            DIRECTORY,
            CA_KEY,
            CA_KEY_NEXT,
            ADMIN,
            ADMINS,
            CONTROL_KEY,
            NETWORK,
        ] {
            let path = self.path(name);
            let tmp = tmp_path(&path);
            for path in [path, tmp] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                    }
                }
            }
        }
        Ok(archived)
    }

    /// Moves `ca.key` and `admin.json`, if there is a CA key, to `former/ca-UNIX.key` and
    /// `former/admin-UNIX.json`.
    fn archive_admin(&self) -> anyhow::Result<Option<PathBuf>> {
        let ca = self.path(CA_KEY);
        if !ca.exists() {
            return Ok(None);
        }
        let former = self.path("former");
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&former)
            .with_context(|| format!("cannot make {}", former.display()))?;
        let stamp = now_unix();
        let key = former.join(format!("ca-{stamp}.key"));
        fs::rename(&ca, &key)
            .with_context(|| format!("cannot move {} to {}", ca.display(), key.display()))?;
        let admin = self.path(ADMIN);
        if admin.exists() {
            let to = former.join(format!("admin-{stamp}.json"));
            fs::rename(&admin, &to)
                .with_context(|| format!("cannot move {} to {}", admin.display(), to.display()))?;
        }
        Ok(Some(key))
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<Option<T>> {
        let path = self.path(name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is damaged or was edited by hand; restore it from a backup or remove the state_dir and join again",
                path.display()
            )
        })
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> anyhow::Result<()> {
        let path = self.path(name);
        let mut text = serde_json::to_string_pretty(value).context("cannot encode state")?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Why a state directory owned by `owner` may not be used by a process running as `user`;
/// `None` if it may.
fn foreign_owner(root: &Path, owner: u32, user: u32) -> Option<String> {
    if owner == user {
        return None;
    }
    let (who, chown) = if user == 0 {
        ("root (uid 0)".to_owned(), "root:root".to_owned())
    } else {
        (format!("uid {user}"), user.to_string())
    };
    let dir = root.display();
    Some(format!(
        "state_dir {dir} is owned by uid {owner}, not by {who}, which overlayd runs as: another user could change its keys; run `chown {chown} {dir}` (or point state_dir at a folder of {})",
        if user == 0 {
            "root's".to_owned()
        } else {
            format!("uid {user}")
        }
    ))
}

/// Serde through `Display` and `FromStr`, for types whose text form is their canonical one.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Bytes as a hex string in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.collect_str(&format_args!(
                "{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 || !text.is_ascii() {
            return Err(serde::de::Error::custom("not a hex string"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("not a hex string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let dir = StateDir::open(&root).unwrap();
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let key = dir.control_key().unwrap();
        assert_eq!(
            dir.control_key().unwrap().verifying_key(),
            key.verifying_key(),
            "the control key is made once"
        );
        let mut admin = AdminState {
            next_serial: 7,
            ..AdminState::default()
        };
        admin
            .allocations
            .insert(Name::new("h1").unwrap(), "10.42.1.0/24".parse().unwrap());
        dir.save_admin(&admin).unwrap();
        assert_eq!(dir.admin().unwrap().next_serial, 7);
        for name in [CONTROL_KEY, ADMIN] {
            let mode = fs::metadata(root.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert!(dir.network().unwrap().is_none());
    }

    #[test]
    fn forgetting_the_network_leaves_nothing_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        dir.control_key().unwrap();
        dir.save_ca_key(&CaKey::generate()).unwrap();
        dir.save_admin(&AdminState::default()).unwrap();
        for name in [NETWORK, DIRECTORY, "network.json.tmp"] {
            fs::write(tmp.path().join(name), "{}").unwrap();
        }
        let archived = dir
            .forget_network()
            .unwrap()
            .expect("the CA key is kept aside");
        let left: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["former"], "the state dir still holds {left:?}");
        assert!(archived.starts_with(tmp.path().join("former")));
        assert_eq!(
            fs::metadata(tmp.path().join("former")).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(fs::metadata(&archived).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(tmp.path().join("former")).unwrap().count(), 2);
        assert_eq!(dir.forget_network().unwrap(), None);
        assert!(dir.network().unwrap().is_none());
        assert!(dir.ca_key().unwrap().is_none());
    }

    #[test]
    fn the_owner_must_be_the_user_overlayd_runs_as() {
        let root = Path::new("/var/lib/overlayd");
        assert_eq!(foreign_owner(root, 0, 0), None);
        assert_eq!(foreign_owner(root, 1000, 1000), None);
        assert_eq!(
            foreign_owner(root, 0, 1000).unwrap(),
            "state_dir /var/lib/overlayd is owned by uid 0, not by uid 1000, which overlayd runs as: another user could change its keys; run `chown 1000 /var/lib/overlayd` (or point state_dir at a folder of uid 1000)"
        );
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown to another user needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        fs::DirBuilder::new().mode(0o700).create(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(4242), Some(4242)).unwrap();
        let e = StateDir::open(&root).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            e.downcast_ref::<crate::UsageError>().is_some(),
            "not a usage error (exit 2): {text}"
        );
        assert_eq!(
            text,
            format!(
                "state_dir {} is owned by uid 4242, not by root (uid 0), which overlayd runs as: another user could change its keys; run `chown root:root {}` (or point state_dir at a folder of root's)",
                root.display(),
                root.display()
            )
        );
        assert_eq!(text.lines().count(), 1);
        std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();
        StateDir::open(&root).expect("root's own folder");
    }

    #[test]
    fn a_damaged_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join(NETWORK), "{not json").unwrap();
        let e = format!("{:#}", dir.network().unwrap_err());
        assert!(e.contains("network.json is damaged"), "{e}");
    }
}
