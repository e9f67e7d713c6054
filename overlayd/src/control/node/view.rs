//! What the local API shows of this member: its membership and every other member with
//! the state the directory and the failure detector give it. Written by
//! [`Member::update_view`] after each change, read by the API.

use std::collections::HashMap;

use protocol::api::MemberState as ViewState;
use protocol::records::MemberState;

use super::{Member, lock};
use crate::control::MemberView;

impl Member {
    pub(super) fn update_view(&mut self) {
        let dir = self.now_dir().clone();
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
            let node = m.serial as u32;
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
                });
            }
        }
        let mut view = lock(&self.view);
        view.membership = Some(protocol::api::Membership {
            network: self.net.network.to_string(),
            cidr: self.net.cidr,
            ranges: self.net.ranges.clone(),
            ca_fingerprint: self.net.ca.fingerprint().to_string(),
            name: self.me.node.to_string(),
            subnets: self.me.subnets.clone(),
            groups: self.me.groups.iter().map(|g| g.to_string()).collect(),
            certificate_expires_unix: self.me.not_after,
            admin: self.ca_key.is_some(),
            control_port: self.ctx.config.control.listen_port,
            member_count: alive + 1,
            left: false,
        });
        view.members = members;
    }
}
