//! The membership core's side of more than one admin (`control::admins` has the rules):
//! the admin records this host knows, exchanged with members (`Request::Admins`), and
//! the three changes: `overlayctl admin add` (a grant), a member taking the CA key it was
//! granted (`Request::AdminKey`), and `overlayctl admin remove` (a retirement).
//!
//! What changes an admin's state is saved before anyone hears of it: a grant or a
//! retirement comes back as an [`AdminsChange`], which the driver saves and hands to
//! [`Core::commit_admins`]; the key a member takes is saved (0600, atomically) before
//! [`Core::become_admin`].

use keys::{CaKey, Name, SigningKey};
use protocol::api::{AdminShown, AdminsResponse};

use super::{Action, Core, LinkId, Now};
use crate::control::ApiFailure;
use crate::control::admin::Refused;
use crate::control::admins::{AdminList, AdminRecord, all_blocks, block_of};
use crate::control::msg::Request;
use crate::control::state::AdminState;

/// A grant or retirement made and not yet saved: save [`AdminsChange::admin`] (if any) and
/// [`AdminsChange::records`], then hand it to [`Core::commit_admins`].
#[derive(Debug)]
#[must_use = "save it, then commit it"]
pub struct AdminsChange {
    admin: Option<AdminState>,
    list: AdminList,
    /// The member granted, and its link: the CA key goes to it once this is saved.
    pub granted: Option<(Name, LinkId)>,
}

impl AdminsChange {
    /// This admin's state to save (its slot and blocks), if it changed.
    pub fn admin(&self) -> Option<&AdminState> {
        self.admin.as_ref()
    }

    /// The admin records to save (`admins.json`).
    pub fn records(&self) -> Vec<Vec<u8>> {
        self.list.to_bytes()
    }
}

/// What [`Core::check_admin_key`] found of a CA key sent to this host.
#[derive(Debug)]
pub enum AdminKey {
    /// This host holds it already.
    Held,
    /// This host is a new admin: save the key and the state, then [`Core::become_admin`].
    Granted(CaKey, AdminState),
    /// This admin holds the retiring CA key and takes the new one (its state kept): save it
    /// (`StateDir::save_next_ca_key`), then `Core::install_ca_key`, then
    /// `StateDir::finish_ca_rotation`.
    Rotated(CaKey),
}

impl Core {
    /// The admin records this host holds, as signed bytes.
    pub fn admin_records(&self) -> Vec<Vec<u8>> {
        self.admins.to_bytes()
    }

    /// Takes the admin records saved in `admins.json`, at start (each checked as if it came
    /// from the network); a removed admin drops its key here if it had not yet.
    pub fn load_admin_records(&mut self, records: &[Vec<u8>], now: Now) {
        self.enter(now);
        let (cas, network) = (self.trusted_cas(), self.net.network.clone());
        for e in self.admins.apply_all_trusting(records, &cas, &network).1 {
            tracing::warn!(error = %e, "dropped a saved admin record");
        }
        self.follow_own_admin_record();
        self.finish(now);
    }

    /// Admin records from a member (`Request::Admins`, its answer, or with a CA key):
    /// each one new is kept, saved, and passed on to every connected member.
    pub fn handle_admin_records(&mut self, records: &[Vec<u8>], now: Now) {
        self.enter(now);
        self.apply_admin_records(records, now);
        self.finish(now);
    }

    pub(super) fn apply_admin_records(&mut self, records: &[Vec<u8>], now: Now) {
        let records = self.take_token_records(records, now);
        let (cas, network) = (self.trusted_cas(), self.net.network.clone());
        let (changed, refused) = self.admins.apply_all_trusting(&records, &cas, &network);
        for e in refused {
            self.throttle
                .warn(now.instant, "refused an admin record", &e);
        }
        if changed {
            self.queue(Action::SaveAdmins(self.admins.to_bytes()));
            self.follow_own_admin_record();
            self.send_admin_records();
            self.dirty = true;
        }
    }

    /// The CAs whose admin and token records are taken: the network's, and during a CA
    /// transition the retiring one (never after its end).
    pub(super) fn trusted_cas(&self) -> Vec<keys::VerifyingKey> {
        let mut cas = vec![self.net.ca];
        cas.extend(self.dir().trust().previous.map(|(old, _)| old));
        cas
    }

    /// Sends this host's admin records to every connected member.
    pub(super) fn send_admin_records(&mut self) {
        let records = self.admins.to_bytes();
        let links: Vec<LinkId> = self.conns.values().copied().collect();
        for link in links {
            self.queue(Action::Ask {
                link,
                request: Request::Admins(records.clone()),
            });
        }
    }

    /// A removed admin (its record retired) forgets the CA key and asks the driver to
    /// destroy its copy.
    fn follow_own_admin_record(&mut self) {
        let retired = self
            .admins
            .get(&self.me.node)
            .is_some_and(|r| r.retired && r.number == self.me.number);
        if retired && self.ca_key.is_some() {
            tracing::warn!(
                name = %self.me.node,
                "this host was removed as an admin: its copy of the CA key is destroyed"
            );
            self.ca_key = None;
            self.admin = None;
            self.queue(Action::DropAdmin);
            self.dirty = true;
        }
    }

    /// `overlayctl admin add NAME`: makes member `name` an admin. Signs this admin's own
    /// record (slot 0 and every block, the first time) without the blocks it gives away,
    /// and the new admin's record: the next free slot, half of this admin's blocks that
    /// hold no member, a serial floor above every serial this host knows. The member must
    /// be connected (the key goes over that connection). Granting an admin again (its key
    /// did not arrive) sends the key again with the records it has.
    pub fn grant_admin(&self, name: &str, now: Now) -> Result<AdminsChange, ApiFailure> {
        let name = Name::new(name).map_err(|e| ApiFailure::bad(format!("{e}")))?;
        let (ca, admin) = match (&self.ca_key, &self.admin) {
            (Some(ca), Some(admin)) => (ca, admin),
            _ => {
                return Err(ApiFailure::NotAdmin {
                    action: "add admins",
                });
            }
        };
        if name == self.me.node {
            return Err(ApiFailure::bad("this host is an admin already"));
        }
        let (number, link) = self.admin_candidate(&name, now)?;
        if let Some(r) = self.admins.get(&name)
            && !r.retired
            && r.number == number
        {
            // Granted before; the key may not have arrived: send it again.
            return Ok(AdminsChange {
                admin: None,
                list: self.admins.clone(),
                granted: Some((name, link)),
            });
        }
        let mut list = self.admins.clone();
        let (cidr, prefix) = (self.net.cidr, self.net.subnet_prefix);
        let mine = match list.get(&self.me.node) {
            Some(r) if !r.retired => r.clone(),
            _ => AdminRecord {
                network: self.net.network.clone(),
                node: self.me.node.clone(),
                number: self.me.number,
                slot: list.free_slot().ok_or_else(no_slot)?,
                serial_floor: 0,
                blocks: admin.blocks.unwrap_or_else(|| all_blocks(cidr, prefix)),
                version: 0,
                retired: false,
            },
        };
        let mut mine = AdminRecord {
            version: mine.version + 1,
            ..mine
        };
        // Blocks that hold none of this admin's allocations and no member's subnet.
        let used: u64 = {
            let dir = self.dir();
            admin
                .allocations
                .values()
                .copied()
                .chain(dir.live_members().flat_map(|m| m.subnets.to_vec()))
                .filter_map(|net| block_of(cidr, prefix, net))
                .fold(0, |acc, b| acc | (1u64 << b))
        };
        let free: Vec<u32> = (0..64)
            .filter(|b| mine.blocks & (1u64 << b) != 0 && used & (1u64 << b) == 0)
            .collect();
        if free.is_empty() {
            return Err(ApiFailure::conflict(
                "this admin holds no block of the range without members to give; add the admin from another admin",
            ));
        }
        // The upper half of the free blocks (at least one) goes.
        let given: u64 = free[free.len() / 2..]
            .iter()
            .fold(0, |acc, b| acc | (1u64 << b));
        mine.blocks &= !given;
        let mut slot_list = list.clone();
        slot_list.insert_own(mine.clone(), Vec::new());
        let slot = slot_list.free_slot().ok_or_else(no_slot)?;
        let floor = {
            let dir = self.dir();
            dir.all_members()
                .map(|(m, _)| m.serial)
                .chain(admin.issued.values().map(|i| i.serial))
                .max()
                .unwrap_or(0)
                .max(admin.next_serial)
                + 1
        };
        let theirs = AdminRecord {
            network: self.net.network.clone(),
            node: name.clone(),
            number,
            slot,
            serial_floor: floor,
            blocks: given,
            version: list.get(&name).map_or(1, |r| r.version + 1),
            retired: false,
        };
        let mine_bytes = mine.sign(ca);
        let theirs_bytes = theirs.sign(ca);
        list.insert_own(mine.clone(), mine_bytes);
        list.insert_own(theirs, theirs_bytes);
        let mut admin = admin.clone();
        admin.slot = Some(mine.slot);
        admin.blocks = Some(mine.blocks);
        Ok(AdminsChange {
            admin: Some(admin),
            list,
            granted: Some((name, link)),
        })
    }

    /// `overlayctl admin remove NAME`: signs admin `name`'s record retired. Its blocks and
    /// slot are never given out again; it destroys its key when the record reaches it.
    pub fn retire_admin(&self, name: &str) -> Result<AdminsChange, ApiFailure> {
        let name = Name::new(name).map_err(|e| ApiFailure::bad(format!("{e}")))?;
        let Some(ca) = &self.ca_key else {
            return Err(ApiFailure::NotAdmin {
                action: "remove admins",
            });
        };
        if name == self.me.node {
            return Err(ApiFailure::bad(
                "an admin cannot remove itself; remove it from another admin",
            ));
        }
        let record = match self.admins.get(&name) {
            Some(r) if !r.retired => r.clone(),
            Some(_) => return Err(ApiFailure::conflict(format!("{name} was removed already"))),
            None => {
                return Err(ApiFailure::not_found(format!(
                    "{name} is not an admin; `overlayctl admin list` shows the admins"
                )));
            }
        };
        let retired = AdminRecord {
            version: record.version + 1,
            retired: true,
            ..record
        };
        let mut list = self.admins.clone();
        let bytes = retired.sign(ca);
        list.insert_own(retired, bytes);
        Ok(AdminsChange {
            admin: None,
            list,
            granted: None,
        })
    }

    /// Takes a grant or retirement that has been saved: the records go to every member,
    /// and this admin's state (slot, blocks) is in force. Returns the CA key (base64) to
    /// send to the member granted, with the records, if any.
    pub fn commit_admins(
        &mut self,
        change: AdminsChange,
        now: Now,
    ) -> Option<(LinkId, String, Vec<Vec<u8>>)> {
        self.enter(now);
        if let Some(admin) = change.admin {
            self.admin = Some(admin);
        }
        self.admins = change.list;
        self.send_admin_records();
        self.dirty = true;
        self.finish(now);
        let (_, link) = change.granted?;
        let ca = self.ca_key.as_ref()?;
        Some((
            link,
            ca.signing_key().to_base64().to_string(),
            self.admins.to_bytes(),
        ))
    }

    /// A CA key that the member on `link` sent (`Request::AdminKey`): taken only if it is
    /// the network's CA key (the new one during a CA transition) and a record among
    /// `records` (signed by a trusted CA) makes this host an admin. An admin that holds the
    /// retiring CA key of the transition held takes the new one and keeps its state
    /// ([`AdminKey::Rotated`]); any other key, or a key to a host no active record names,
    /// is refused.
    pub fn check_admin_key(
        &mut self,
        link: LinkId,
        key: &str,
        records: &[Vec<u8>],
        now: Now,
    ) -> Result<AdminKey, Refused> {
        if !self.is_current(link, now) {
            return Err(Refused("the sender's certificate has lapsed".into()));
        }
        let key = SigningKey::from_base64(key)
            .map_err(|_| Refused("admin key refused: not a key".into()))?;
        if key.verifying_key() != self.net.ca {
            return Err(Refused(
                "admin key refused: it is not this network's CA key (a new CA's key is taken only once its transition is held)".into(),
            ));
        }
        self.handle_admin_records(records, now);
        if self
            .ca_key
            .as_ref()
            .is_some_and(|held| held.verifying_key() == self.net.ca)
        {
            return Ok(AdminKey::Held);
        }
        let Some(record) = self
            .admins
            .get(&self.me.node)
            .filter(|r| !r.retired && r.number == self.me.number)
            .cloned()
        else {
            return Err(Refused(
                "admin key refused: no admin record names this host (`overlayctl admin add` signs one)"
                    .into(),
            ));
        };
        if let Some(held) = &self.ca_key {
            let retiring = self.dir().trust().previous.map(|(old, _)| old);
            if retiring != Some(held.verifying_key()) {
                return Err(Refused(
                    "admin key refused: this admin's CA key is not the retiring CA of the transition held".into(),
                ));
            }
            return Ok(AdminKey::Rotated(CaKey::from_signing_key(key)));
        }
        let admin = AdminState {
            next_serial: record.serial_floor,
            slot: Some(record.slot),
            blocks: Some(record.blocks),
            ..AdminState::default()
        };
        Ok(AdminKey::Granted(CaKey::from_signing_key(key), admin))
    }

    /// This host holds the CA key from now on (saved by the driver, with `admin`).
    pub fn become_admin(&mut self, ca: CaKey, admin: AdminState, now: Now) {
        self.enter(now);
        tracing::info!(name = %self.me.node, slot = ?admin.slot, "this host is an admin of the network now");
        self.ca_key = Some(ca);
        self.admin = Some(admin);
        self.dirty = true;
        self.finish(now);
    }

    /// The admins, as the API shows them.
    pub fn admins_shown(&self) -> AdminsResponse {
        let (cidr, prefix) = (self.net.cidr, self.net.subnet_prefix);
        let all = all_blocks(cidr, prefix);
        AdminsResponse {
            admins: self
                .admins
                .records()
                .map(|r| AdminShown {
                    name: r.node.to_string(),
                    slot: r.slot,
                    blocks: (r.blocks & all).count_ones(),
                    serial_floor: r.serial_floor,
                    removed: r.retired,
                })
                .collect(),
            this_host_admin: self.ca_key.is_some(),
        }
    }

    /// Member `name`'s number and a current link to it, for a grant.
    fn admin_candidate(&self, name: &Name, now: Now) -> Result<(u32, LinkId), ApiFailure> {
        let number = {
            let dir = self.dir();
            dir.live_members()
                .find(|m| m.name == name)
                .map(|m| m.number)
                .ok_or_else(|| {
                    ApiFailure::not_found(format!(
                        "no live member named {name}; `overlayctl peers` lists the members"
                    ))
                })?
        };
        let link = self
            .links
            .iter()
            .filter(|(id, l)| l.peer.node == *name && l.peer.number == number && self.is_current(**id, now))
            .map(|(id, _)| *id)
            .max()
            .ok_or_else(|| {
                ApiFailure::conflict(format!(
                    "{name} is not connected to this host now; try again when `overlayctl peers` shows it alive"
                ))
            })?;
        Ok((number, link))
    }
}

fn no_slot() -> ApiFailure {
    ApiFailure::conflict(format!(
        "every one of the {} admin slots has been used; a network has at most that many admins over its life",
        crate::control::admins::SLOTS
    ))
}
