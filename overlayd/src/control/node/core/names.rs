//! Container names in the core: this host's own name set (signed here whenever the Docker
//! plugin reports another set of names, pushed to every connected member), the sets of the
//! others (applied from pushes and full syncs through `protocol`'s [`NameTable`], which
//! refuses forged ones, those above the cap, and names for addresses outside their member's
//! subnets), and what the view shows: the names of this host and of the members routed
//! now (a member declared down, left or revoked serves no names).

use protocol::records::names::{NameEntry, NameError, NameSet, NamesApplied};

use super::{Core, Now};
use crate::control::NameView;
use crate::control::msg::Bundle;

impl Core {
    /// The Docker plugin's names of this host's containers now: signed into a new set
    /// (above the cap, the first `max_names` and a warning), held, pushed to every
    /// connected member. The same names again change nothing.
    pub fn set_names(&mut self, mut entries: Vec<NameEntry>, now: Now) {
        self.enter(now);
        entries.sort();
        entries.dedup();
        let cap = self.settings.max_names;
        if entries.len() > cap {
            tracing::warn!(
                names = entries.len(),
                cap,
                "this host has more container names than [dns] max_names; only the first are published"
            );
            entries.truncate(cap);
        }
        let held = self
            .names
            .get(&self.me.node)
            .filter(|h| h.signed.set().number == self.me.number);
        if held.is_some_and(|h| h.signed.set().entries == entries) {
            self.finish(now);
            return;
        }
        // Versions survive restarts without being saved: they start at the wall clock.
        self.names_version = (self.names_version + 1).max(now.unix << 16);
        let set = NameSet {
            network: self.net.network.clone(),
            member: self.me.node.clone(),
            number: self.me.number,
            version: self.names_version,
            entries,
        };
        match set.sign(&self.control_key) {
            Ok(signed) => {
                let dir = self.dir.clone();
                let applied = self.names.apply(&super::lock(&dir), &signed, cap, now.unix);
                match applied {
                    Ok(_) => {
                        self.push_connected(
                            Bundle {
                                names: vec![signed.to_bytes()],
                                ..Bundle::default()
                            },
                            false,
                        );
                        self.dirty = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "this host's own names were refused"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign this host's container names"),
        }
        self.finish(now);
    }

    /// Applies name sets from a push or a sync (after the member records of the same
    /// bundle). `sync`: stale copies are expected there and not worth a warning.
    pub(super) fn apply_names(&mut self, names: &[Vec<u8>], sync: bool, now: Now) {
        if names.is_empty() {
            return;
        }
        let dir = self.dir.clone();
        let dir = super::lock(&dir);
        for bytes in names {
            match self
                .names
                .apply_bytes(&dir, bytes, self.settings.max_names, now.unix)
            {
                Ok(NamesApplied::Changed) => self.dirty = true,
                Ok(NamesApplied::Unchanged) => {}
                Err(e @ (NameError::Replay { .. } | NameError::StaleCertificate { .. }))
                    if sync =>
                {
                    tracing::debug!(error = %e, "ignored a stale name set in a sync")
                }
                Err(e) => self.throttle.warn(now.instant, "refused a name set", &e),
            }
        }
    }

    /// This host's own name set, if it has one.
    pub(super) fn own_names(&self) -> Vec<Vec<u8>> {
        self.names
            .get(&self.me.node)
            .map(|h| vec![h.signed.to_bytes()])
            .unwrap_or_default()
    }

    /// Every name set held.
    pub(super) fn all_names(&self) -> Vec<Vec<u8>> {
        self.names
            .sets()
            .map(|(_, h)| h.signed.to_bytes())
            .collect()
    }

    /// The names served now: this host's and those of the members routed.
    pub(super) fn names_view(&self, routed: &[crate::router::PeerSpec]) -> Vec<NameView> {
        let mut out = Vec::new();
        for (member, held) in self.names.sets() {
            let local = *member == self.me.node;
            if !local
                && !routed
                    .iter()
                    .any(|p| p.name.as_deref() == Some(member.as_str()))
            {
                continue;
            }
            for entry in &held.signed.set().entries {
                out.push(NameView {
                    owner: member.to_string(),
                    local,
                    since_unix: held.since,
                    entry: entry.clone(),
                });
            }
        }
        out
    }
}

/// Bytes a full sync (or a join's answer) gives its records and name sets at most: the
/// frame less a margin for the encoding. Name sets are up to 512 KiB each, so 16 members'
/// would fill a frame: past that, every full sync failed to send, for every member.
pub(super) const NAMES_BUDGET: usize = crate::control::msg::MAX_FRAME - (256 << 10);
/// What the encoding adds to each record or name set at most (its length).
pub(super) const FRAMING: usize = 8;

/// The name sets of `sets` that fit in `budget` bytes, taken in turn from the `start`th
/// (modulo their number): a set left out of one full sync is in one of the next (each
/// starts one further), and meanwhile its member's own pushes carry it.
pub(super) fn fit_names(sets: Vec<Vec<u8>>, mut budget: usize, start: usize) -> Vec<Vec<u8>> {
    let n = sets.len();
    if n == 0 {
        return sets;
    }
    let total: usize = sets.iter().map(|s| s.len() + FRAMING).sum();
    if total <= budget {
        return sets;
    }
    let mut out = Vec::new();
    let mut sets: Vec<Option<Vec<u8>>> = sets.into_iter().map(Some).collect();
    for i in 0..n {
        let slot = &mut sets[(start + i) % n];
        let len = slot.as_ref().map_or(0, |s| s.len() + FRAMING);
        if len <= budget {
            budget -= len;
            out.extend(slot.take());
        }
    }
    out
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    /// Twenty members at the largest name set (512 KiB) would need 10 MiB: each sync
    /// takes what fits in the budget, and in turn every set is in one.
    #[test]
    fn name_sets_past_the_budget_go_in_turn() {
        let max = protocol::records::names::MAX_BODY_LEN;
        let sets: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; max]).collect();
        let mut seen = std::collections::HashSet::new();
        for start in 0..20 {
            let fit = fit_names(sets.clone(), NAMES_BUDGET, start);
            let bytes: usize = fit.iter().map(|s| s.len() + FRAMING).sum();
            assert!(bytes <= NAMES_BUDGET, "{bytes}");
            assert!(fit.len() >= 15, "{}", fit.len());
            seen.extend(fit.iter().map(|s| s[0]));
        }
        assert_eq!(seen.len(), 20);
        // Under the budget: all of them, as they were.
        assert_eq!(fit_names(sets[..3].to_vec(), NAMES_BUDGET, 7), sets[..3]);
    }
}
