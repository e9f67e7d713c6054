//! The membership core's side of tokens any admin redeems (`control::admins::tokens` has
//! the records): which token records go to which member (only to admins), taking those
//! that come, and the records an admin sends to the others before it prints a token or
//! answers a joiner.

use keys::SecretHash;

use super::requests::{AdminChange, Admission, Answer};
use super::{Action, Core, LinkId, Now};
use crate::control::admins::tokens::{
    apply_token_records, is_token_record as is_token, record_of, token_records,
};
use crate::control::msg::Response;
use crate::control::state::AdminState;

impl Core {
    /// Whether the peer of `link` is an admin (an active admin record names it).
    pub(super) fn peer_is_admin(&self, link: LinkId) -> bool {
        self.links.get(&link).is_some_and(|l| {
            self.admins
                .get(&l.peer.node)
                .is_some_and(|r| !r.retired && r.number == l.peer.number)
        })
    }

    /// What this host sends the member on `link` in an admin-record exchange: its admin
    /// records, and, when both are admins, the records of every token it holds.
    pub fn admin_records_for(&self, link: LinkId, now: Now) -> Vec<Vec<u8>> {
        let mut records = self.admins.to_bytes();
        if let (Some(ca), Some(admin)) = (&self.ca_key, &self.admin)
            && self.peer_is_admin(link)
        {
            records.extend(token_records(
                admin,
                ca,
                &self.net.network,
                &self.me.node,
                now.unix,
            ));
        }
        records
    }

    /// The newest current link to every other admin.
    pub fn admin_links(&self, now: Now) -> Vec<LinkId> {
        let mut best: std::collections::BTreeMap<u32, LinkId> = Default::default();
        for (id, l) in &self.links {
            if l.peer.node != self.me.node && self.peer_is_admin(*id) && self.is_current(*id, now) {
                let e = best.entry(l.peer.number).or_insert(*id);
                *e = (*e).max(*id);
            }
        }
        best.into_values().collect()
    }

    /// The signed record of the token whose secret hashes to `hash`, if held.
    pub fn token_record(&self, hash: &SecretHash) -> Option<Vec<u8>> {
        let (ca, admin) = (self.ca_key.as_ref()?, self.admin.as_ref()?);
        let entry = admin.tokens.iter().find(|t| t.secret_hash == *hash)?;
        Some(record_of(entry, &self.net.network, &self.me.node).sign(ca))
    }

    /// The signed records of the tokens member `name` used (after its admission).
    pub fn used_token_records(&self, name: &keys::Name) -> Vec<Vec<u8>> {
        let (Some(ca), Some(admin)) = (&self.ca_key, &self.admin) else {
            return Vec::new();
        };
        admin
            .tokens
            .iter()
            .filter(|t| t.used_by.as_ref() == Some(name))
            .map(|t| record_of(t, &self.net.network, &self.me.node).sign(ca))
            .collect()
    }

    /// Splits records into token records (taken into this admin's state, saved by a
    /// queued [`Action::SaveAdmin`]) and admin records (returned).
    pub(super) fn take_token_records(&mut self, records: &[Vec<u8>], now: Now) -> Vec<Vec<u8>> {
        let (tokens, admins): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            records.iter().cloned().partition(|r| is_token(r));
        if tokens.is_empty() {
            return admins;
        }
        let cas = self.trusted_cas();
        if let Some(admin) = &mut self.admin {
            let (changed, refused) =
                apply_token_records(admin, &tokens, &cas, &self.net.network, now.unix);
            for e in refused {
                self.throttle
                    .warn(now.instant, "refused a token record", &e);
            }
            if changed {
                tracing::info!("took token records of another admin");
                let admin = admin.clone();
                self.queue(Action::SaveAdmin(admin));
            }
        }
        admins
    }

    /// `Request::Admins` from the member on `link`: its admin records are taken; its
    /// token records, when they change this admin's state, only once that is saved (the
    /// answer comes as an [`AdminChange`]: the sender waits for it before it answers a
    /// joiner).
    pub(super) fn admins_request(&mut self, link: LinkId, records: &[Vec<u8>], now: Now) -> Answer {
        let (tokens, admins): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            records.iter().cloned().partition(|r| is_token(r));
        self.apply_admin_records(&admins, now);
        let cas = self.trusted_cas();
        let changed = match self.admin.clone() {
            Some(mut admin) if !tokens.is_empty() => {
                let (changed, refused) =
                    apply_token_records(&mut admin, &tokens, &cas, &self.net.network, now.unix);
                for e in refused {
                    self.throttle
                        .warn(now.instant, "refused a token record", &e);
                }
                changed.then_some(admin)
            }
            _ => None,
        };
        let Some(admin) = changed else {
            return Answer::Reply(Response::Admins(self.admin_records_for(link, now)));
        };
        let name = self
            .links
            .get(&link)
            .map_or_else(|| self.me.node.clone(), |l| l.peer.node.clone());
        // The answer holds what this admin holds once the change is saved.
        let held: Option<AdminState> = self.admin.replace(admin.clone());
        let response = Response::Admins(self.admin_records_for(link, now));
        self.admin = held;
        Answer::AfterSave(AdminChange {
            admin,
            answer: Admission { name, response },
        })
    }
}
