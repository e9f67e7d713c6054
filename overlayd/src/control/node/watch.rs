//! What the member task tells the security events ring (`crate::events`) of the control
//! plane: members declared down and back up, joins refused and why, members knocking with
//! a revoked or expired certificate, and this host's certificate nearing its expiry (30
//! and 7 days, once each per certificate).
//!
//! The core stays as it is: the driver compares each view the core hands it with the last
//! one (the view already carries every member's state, and is handed over at once when a
//! member goes down or comes back, and every second), and looks at the answers to joiners.
//! The comparisons here are pure; only [`Watch`] emits.

use std::sync::{Arc, Mutex};

use keys::NodeCertificate;
use protocol::api::{EventKind, MemberState};
use protocol::records::Directory;

use crate::control::tls;
use crate::control::{MemberView, View};
use crate::events::{Events, now_unix_ms};
use crate::util::lock;

/// Days before its certificate expires at which a host warns, once each (widest first).
pub const EXPIRY_WARNING_DAYS: [u64; 2] = [30, 7];
const DAY_S: u64 = 24 * 60 * 60;

/// The events the member task emits, and what it remembers to emit each once.
pub(super) struct Watch {
    events: Arc<Events>,
    /// Whether a view was compared yet: the first one of a member task is where it starts,
    /// not a change (every member would look new).
    started: bool,
    expiry: ExpiryWarnings,
}

impl Watch {
    pub(super) fn new(events: Arc<Events>) -> Watch {
        Watch {
            events,
            started: false,
            expiry: ExpiryWarnings::default(),
        }
    }

    /// The core hands over `new`, replacing `old`, at unix time `now`.
    pub(super) fn view(&mut self, old: &View, new: &View, now: u64) {
        if std::mem::replace(&mut self.started, true) {
            for change in member_changes(&old.members, &new.members) {
                self.events.emit(
                    change.kind,
                    Some(&change.name),
                    change.endpoint,
                    || change.detail.clone(),
                    now_unix_ms(),
                );
            }
        }
        if let Some(me) = new.membership.as_ref().filter(|m| !m.left)
            && let Some(days) = self.expiry.due(me.certificate_expires_unix, now)
        {
            let left = me.certificate_expires_unix.saturating_sub(now);
            self.events.emit(
                EventKind::CertificateExpiring,
                Some(&me.name),
                None,
                || {
                    format!(
                        "this host's certificate expires in {} days {} h (less than {days} days), at unix time {}; it is renewed by an admin automatically (docs/pki.md): if it is not renewed soon, check that an admin is up and reachable",
                        left / DAY_S,
                        left % DAY_S / 3600,
                        me.certificate_expires_unix
                    )
                },
                now_unix_ms(),
            );
        }
    }

    /// A joiner asking for `name` was refused with `reason` (the answer it got).
    pub(super) fn join_refused(&self, name: Option<&str>, reason: &str) {
        let reason = reason.strip_prefix("join refused: ").unwrap_or(reason);
        self.events.emit(
            EventKind::JoinRefused,
            name,
            None,
            || match name {
                Some(name) => format!("refused a join as {name}: {reason}"),
                None => format!("refused a join: {reason}"),
            },
            now_unix_ms(),
        );
    }
}

/// The daemon's check of members' TLS certificates: refuses the revoked ones (as the
/// directory `dir` holds revocations), and reports every member knocking with a revoked
/// or an expired certificate to `events`.
pub(super) fn peer_check(dir: Arc<Mutex<Directory>>, events: Arc<Events>) -> tls::PeerCheck {
    let expired_events = events.clone();
    tls::PeerCheck::new(move |cert: &NodeCertificate| {
        if !lock(&dir).is_certificate_revoked(cert) {
            return Ok(());
        }
        let reason = super::core::revoked_reason(cert);
        events.emit(
            EventKind::RevokedKnocking,
            Some(cert.node.as_str()),
            None,
            || format!("refused a control connection: {reason}"),
            now_unix_ms(),
        );
        Err(reason)
    })
    .on_expired(move |cert: &NodeCertificate| {
        expired_events.emit(
            EventKind::ExpiredKnocking,
            Some(cert.node.as_str()),
            None,
            || {
                format!(
                    "refused a control connection: the certificate of {} (serial {}) expired at unix time {}",
                    cert.node, cert.serial, cert.not_after
                )
            },
            now_unix_ms(),
        );
    })
}

/// One member's change of state worth an event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    kind: EventKind,
    name: String,
    endpoint: Option<std::net::SocketAddr>,
    detail: String,
}

/// Members declared down (they were alive or suspect) and members back up (they were
/// down), from one view to the next. Joins, leaves and revocations are not such changes.
fn member_changes(old: &[MemberView], new: &[MemberView]) -> Vec<Change> {
    let live = |s: MemberState| matches!(s, MemberState::Alive | MemberState::Suspect);
    new.iter()
        .filter_map(|m| {
            let before = old.iter().find(|o| o.public_key == m.public_key)?.state;
            let (kind, detail) = match (before, m.state) {
                (b, MemberState::Down) if live(b) => (
                    EventKind::MemberDown,
                    format!(
                        "member {} is declared down (it stopped answering probes); its routes are withdrawn",
                        m.name
                    ),
                ),
                (MemberState::Down, s) if live(s) => (
                    EventKind::MemberUp,
                    format!("member {} is back up; its routes are restored", m.name),
                ),
                _ => return None,
            };
            Some(Change {
                kind,
                name: m.name.clone(),
                endpoint: m.endpoint,
                detail,
            })
        })
        .collect()
}

/// Which expiry warnings went out, for which certificate (by its expiry time: a renewed
/// certificate starts again).
#[derive(Debug, Default)]
struct ExpiryWarnings {
    /// The certificate's `not_after`, and the narrowest threshold (days) warned of.
    warned: Option<(u64, u64)>,
}

impl ExpiryWarnings {
    /// The threshold (days) to warn of now for a certificate expiring at `not_after`, if
    /// one is newly crossed: at most one per threshold and certificate, and only the
    /// narrowest crossed (a host started 5 days before its expiry warns once, of 7 days).
    fn due(&mut self, not_after: u64, now: u64) -> Option<u64> {
        let left = not_after.checked_sub(now)?;
        let days = EXPIRY_WARNING_DAYS
            .iter()
            .copied()
            .filter(|d| left <= d * DAY_S)
            .min()?;
        match self.warned {
            Some((cert, warned)) if cert == not_after && warned <= days => None,
            _ => {
                self.warned = Some((not_after, days));
                Some(days)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keys::PublicKey;

    fn member(name: &str, key: u8, state: MemberState) -> MemberView {
        MemberView {
            name: name.into(),
            public_key: PublicKey::from_bytes([key; 32]),
            subnets: Vec::new(),
            endpoint: None,
            state,
            nat: false,
        }
    }

    #[test]
    fn down_and_back_up_are_changes_joins_and_leaves_are_not() {
        let old = [
            member("h2", 2, MemberState::Alive),
            member("h3", 3, MemberState::Suspect),
            member("h4", 4, MemberState::Down),
            member("h5", 5, MemberState::Alive),
        ];
        let new = [
            member("h2", 2, MemberState::Down),
            member("h3", 3, MemberState::Down),
            member("h4", 4, MemberState::Alive),
            member("h5", 5, MemberState::Left),
            member("h6", 6, MemberState::Alive),
        ];
        let changes: Vec<(EventKind, String)> = member_changes(&old, &new)
            .into_iter()
            .map(|c| (c.kind, c.name))
            .collect();
        assert_eq!(
            changes,
            vec![
                (EventKind::MemberDown, "h2".into()),
                (EventKind::MemberDown, "h3".into()),
                (EventKind::MemberUp, "h4".into()),
            ]
        );
        assert!(member_changes(&new, &new).is_empty());
    }

    #[test]
    fn expiry_warns_once_per_threshold_and_certificate() {
        let mut w = ExpiryWarnings::default();
        let not_after = 100 * DAY_S;
        assert_eq!(w.due(not_after, 0), None);
        assert_eq!(w.due(not_after, 70 * DAY_S), Some(30));
        assert_eq!(w.due(not_after, 71 * DAY_S), None);
        assert_eq!(w.due(not_after, 93 * DAY_S), Some(7));
        assert_eq!(w.due(not_after, 99 * DAY_S), None);
        // Expired: nothing here (the member cannot run on it).
        assert_eq!(w.due(not_after, 101 * DAY_S), None);
        // A renewed certificate starts again; one started inside 7 days warns once.
        assert_eq!(w.due(200 * DAY_S, 195 * DAY_S), Some(7));
        assert_eq!(w.due(200 * DAY_S, 196 * DAY_S), None);
    }
}
