//! The network policy in the membership core (issue 16): an admin checks, signs and spreads
//! a new version; every member verifies what it receives (a push or a full sync) through
//! its directory, which keeps the newest and persists it, and hands the policy in force to
//! the driver ([`Action::Policy`]) before any change of peers, so a restarted member
//! enforces the policy it saved before it routes anything.
//!
//! A policy does not fit a gossip datagram: it travels in pushes (the admin pushes to every
//! member it can reach, and waits for their acks) and in every full sync, which repairs
//! what a push missed.

use keys::Name;
use protocol::api::{PolicyCheckRequest, PolicyShown, PolicyVerdict};
use protocol::policy::{Policy, PolicyError, SignedPolicy};
use protocol::records::PolicyApplied;

use super::{Action, Core, Now};
use crate::control::ApiFailure;
use crate::control::msg::Bundle;

/// The policy a member hands the driver to enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInForce {
    /// What it says.
    pub policy: Policy,
    /// Its version.
    pub version: u64,
    /// This host's name and groups, as its certificate says.
    pub local_name: Name,
    /// Its groups.
    pub local_groups: Vec<Name>,
}

impl Core {
    /// `overlayctl policy set`: checks the file and runs its tests against the members this
    /// admin knows, signs it with the CA as the next version, applies it and pushes it to
    /// every member (waiting for their acks).
    pub fn set_policy(&mut self, text: &str, now: Now) -> Result<PolicyShown, ApiFailure> {
        self.enter(now);
        let result = self.sign_policy(text, now);
        self.finish(now);
        result
    }

    fn sign_policy(&mut self, text: &str, now: Now) -> Result<PolicyShown, ApiFailure> {
        let Some(ca) = self.ca_key.as_ref() else {
            return Err(ApiFailure::NotAdmin {
                action: "set the policy",
            });
        };
        let policy = Policy::parse(text).map_err(|e| ApiFailure::bad(e.to_string()))?;
        let signed = {
            let dir = self.dir();
            if let Err(failures) = policy.check_tests(&*dir) {
                return Err(ApiFailure::bad(
                    PolicyError::TestsFailed(failures).to_string(),
                ));
            }
            let version = dir.policy().map_or(1, |(_, s)| s.version() + 1);
            SignedPolicy::sign(ca, &self.net.network, version, now.unix, text)
                .map_err(|e| ApiFailure::bad(e.to_string()))?
        };
        self.dir()
            .apply_policy(&signed)
            .map_err(|e| ApiFailure::internal(e.to_string()))?;
        tracing::info!(
            version = signed.version(),
            rules = policy.rules.len(),
            tests = policy.tests.len(),
            "signed a new network policy"
        );
        self.push_all(
            Bundle {
                policy: Some(signed.to_bytes()),
                names: Vec::new(),
                ..Bundle::default()
            },
            now,
        );
        self.dirty = true;
        Ok(self.policy_shown())
    }

    /// `overlayctl policy show`: the policy in force.
    pub fn policy_shown(&self) -> PolicyShown {
        let dir = self.dir();
        match dir.policy() {
            Some((policy, signed)) => PolicyShown {
                version: Some(signed.version()),
                issued_at: Some(signed.issued_at()),
                rules: policy.rules.len(),
                tests: policy.tests.len(),
                tracked_flows: 0,
                allowed: Vec::new(),
                denied: 0,
                text: signed.text().to_string(),
            },
            None => PolicyShown {
                version: None,
                issued_at: None,
                rules: 0,
                tests: 0,
                tracked_flows: 0,
                allowed: Vec::new(),
                denied: 0,
                text: String::new(),
            },
        }
    }

    /// `overlayctl policy check FROM TO PORT`: the verdict of the policy in force, with the
    /// sides looked up among the members this host knows (as a policy's tests are).
    pub fn policy_check(&self, req: &PolicyCheckRequest) -> Result<PolicyVerdict, ApiFailure> {
        let text = format!(
            "[[test]]\nfrom = {:?}\nto = {:?}\nport = {:?}\nexpect = \"allow\"\n",
            req.from, req.to, req.port
        );
        let probe = Policy::parse(&text).map_err(|e| {
            ApiFailure::bad(
                e.to_string()
                    .replace("policy line 2: ", "from: ")
                    .replace("policy line 3: ", "to: ")
                    .replace("policy line 4: ", "port: "),
            )
        })?;
        let test = &probe.tests[0];
        let dir = self.dir();
        let Some((policy, signed)) = dir.policy() else {
            return Ok(PolicyVerdict {
                allow: true,
                rule_line: None,
                version: None,
            });
        };
        let rule = policy.verdict_between(&*dir, &test.from, &test.to, test.service);
        Ok(PolicyVerdict {
            allow: rule.is_some(),
            rule_line: rule.map(|r| r.line),
            version: Some(signed.version()),
        })
    }

    /// Applies a policy from a push or a sync; a newer one is put in force and saved.
    pub(super) fn apply_policy_bytes(&mut self, bytes: &[u8], sync: bool, now: Now) {
        let applied = self.dir().apply_policy_bytes(bytes);
        match applied {
            Ok(PolicyApplied::New { version }) => {
                tracing::info!(version, "took a new network policy");
                self.dirty = true;
            }
            Ok(PolicyApplied::Unchanged) => {}
            Err(e @ protocol::policy::PolicyRecordError::NotNewer { .. }) if sync => {
                tracing::debug!(error = %e, "ignored an older policy in a sync");
            }
            Err(e) => self.throttle.warn(now.instant, "refused a policy", &e),
        }
    }

    /// Queues [`Action::Policy`] when the policy in force is not the one the driver last got.
    pub(super) fn hand_policy(&mut self) {
        let current = {
            let dir = self.dir();
            dir.policy()
                .map(|(policy, signed)| (policy.clone(), signed.version()))
        };
        let version = current.as_ref().map(|(_, v)| *v);
        if self.policy_handed == Some(version) {
            return;
        }
        self.policy_handed = Some(version);
        self.queue(Action::Policy(current.map(|(policy, version)| {
            PolicyInForce {
                policy,
                version,
                local_name: self.me.node.clone(),
                local_groups: self.me.groups.clone(),
            }
        })));
    }
}
