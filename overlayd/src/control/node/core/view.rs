//! What follows the directory and the failure detector: the members to have tunnels and
//! routes to ([`Core::peers`]), and what the local API shows of this member
//! ([`Core::view`]): its membership, and every other member with the state the directory
//! and the failure detector give it.

use std::collections::HashMap;

use protocol::api::MemberState as ViewState;
use protocol::records::MemberState;

use super::Core;
use crate::control::{MemberView, View};
use crate::router::PeerSpec;

impl Core {
    /// The members to route: alive in the directory, not this host, and not declared down
    /// by the failure detector (one it never heard of is routed). None once this host left.
    pub fn peers(&self) -> Vec<PeerSpec> {
        if self.net.left {
            return Vec::new();
        }
        let dir = self.dir();
        dir.live_members()
            .filter(|m| *m.name != self.me.node)
            .filter(|m| self.liveness.get(&(m.number)).is_none_or(|(_, up)| *up))
            .map(|m| PeerSpec {
                public_key: *m.wireguard_key,
                name: Some(m.name.to_string()),
                endpoint: m.endpoints.first().copied(),
                subnets: m.subnets.to_vec(),
                groups: m.groups.to_vec(),
                persistent_keepalive: None,
                advertised: true,
            })
            .collect()
    }

    /// What the API shows now.
    pub fn view(&self) -> View {
        let names = self.names_view(&self.peers());
        let ca = self.ca_status();
        let dir = self.dir();
        let foca_states: HashMap<u32, foca::State> = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().node, m.state()))
            .collect();
        let mut members = Vec::new();
        let mut alive = 0;
        for (m, state) in dir.all_members() {
            if *m.name == self.me.node {
                continue;
            }
            let node = m.number;
            let view_state = match state {
                MemberState::Left => ViewState::Left,
                MemberState::Alive => match (foca_states.get(&node), self.liveness.get(&node)) {
                    (_, Some((_, false))) => ViewState::Down,
                    (Some(foca::State::Suspect), _) => ViewState::Suspect,
                    _ => ViewState::Alive,
                },
            };
            if matches!(view_state, ViewState::Alive | ViewState::Suspect) {
                alive += 1;
            }
            members.push(MemberView {
                name: m.name.to_string(),
                public_key: *m.wireguard_key,
                subnets: m.subnets.to_vec(),
                endpoint: m.endpoints.first().copied(),
                state: view_state,
                nat: m.endpoints.len() > 1,
            });
        }
        for r in dir.revocations() {
            let r = r.revocation();
            if !members.iter().any(|m| m.public_key == r.wireguard_key) {
                members.push(MemberView {
                    name: r.node.to_string(),
                    public_key: r.wireguard_key,
                    subnets: Vec::new(),
                    endpoint: None,
                    state: ViewState::Revoked,
                    nat: false,
                });
            }
        }
        let mut view = View {
            membership: Some(protocol::api::Membership {
                network: self.net.network.to_string(),
                cidr: self.net.cidr,
                ranges: self.net.ranges.clone(),
                ca_fingerprint: self.net.ca.fingerprint().to_string(),
                name: self.me.node.to_string(),
                subnets: self.me.subnets.clone(),
                groups: self.me.groups.iter().map(|g| g.to_string()).collect(),
                certificate_expires_unix: self.me.not_after,
                certificate_serial: self.me.serial,
                certificate_renewed_unix: self.net.renewed_unix,
                certificate_renew_at_unix: super::renew_at(&self.me),
                admin: self.ca_key.is_some(),
                control_port: self.settings.control_port,
                member_count: alive + 1,
                left: false,
                ca: Some(ca),
            }),
            members,
            nat: self.reflexive.is_some(),
            ..View::default()
        };
        view.set_names(names);
        view
    }
}
