//! `overlayctl policy set|show|check`: the network policy (who may talk to whom, on which
//! ports). `set` parses the file here first, so that a mistake is named with its line
//! before any daemon is asked; the admin's daemon then runs the file's tests against the
//! members it knows, signs the policy with the CA and spreads it.
//!
//! The renderings are pure; the handlers do the I/O.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use protocol::api::{
    POLICY_CHECK_PATH, POLICY_PATH, PolicyCheckRequest, PolicySetRequest, PolicyShown,
    PolicyVerdict,
};
use protocol::policy::Policy;

use crate::client::{self, LOCAL_TIMEOUT};
use crate::control::print_json;
use crate::parse::UsageError;
use crate::when;

/// `overlayctl policy ...`.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check, sign and spread a new network policy (admin hosts). Once a policy is set,
    /// anything it does not allow is denied; every member applies it within seconds.
    Set {
        /// The policy file (TOML: `[[allow]]` rules and `[[test]]`s; see
        /// examples/policy.toml).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The policy in force on this host, with its version.
    Show {
        /// Print JSON instead of the file.
        #[arg(long)]
        json: bool,
    },
    /// Whether the policy in force allows one flow, and by which rule.
    Check {
        /// The side that opens the flow: node:NAME, group:NAME or an address.
        from: String,
        /// The other side: node:NAME, group:NAME or an address.
        to: String,
        /// tcp/N, udp/N, icmp or proto/N.
        port: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `policy` command against the daemon at `socket`.
pub fn run(socket: &Path, command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Set { file, json } => {
            let text = read_policy(&file)?;
            let shown: PolicyShown = client::post(
                socket,
                POLICY_PATH,
                &PolicySetRequest { text },
                LOCAL_TIMEOUT,
            )?;
            if json {
                return print_json(&shown);
            }
            println!("{}", set_summary(&shown));
            Ok(())
        }
        PolicyCommand::Show { json } => {
            let shown: PolicyShown = client::get(socket, POLICY_PATH)?;
            if json {
                return print_json(&shown);
            }
            print!("{}", show(&shown, when::now_unix()));
            Ok(())
        }
        PolicyCommand::Check {
            from,
            to,
            port,
            json,
        } => {
            let request = PolicyCheckRequest { from, to, port };
            let verdict: PolicyVerdict =
                client::post(socket, POLICY_CHECK_PATH, &request, LOCAL_TIMEOUT)?;
            if json {
                return print_json(&verdict);
            }
            println!("{}", verdict_line(&request, &verdict));
            Ok(())
        }
    }
}

/// Reads and parses the file, so that a mistake is a usage error naming file and line.
fn read_policy(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the policy file {}", file.display()))?;
    if let Err(e) = Policy::parse(&text) {
        return Err(UsageError(format!("{}: {e}", file.display())).into());
    }
    Ok(text)
}

fn set_summary(shown: &PolicyShown) -> String {
    format!(
        "policy version {} is in force: {} rules, {} tests passed; every member applies it within seconds",
        shown
            .version
            .map_or_else(|| "?".to_string(), |v| v.to_string()),
        shown.rules,
        shown.tests
    )
}

fn show(shown: &PolicyShown, now_unix: u64) -> String {
    match shown.version {
        None => "no policy: every member may reach every other (set one with `overlayctl policy set FILE`)\n".to_string(),
        Some(v) => {
            let signed = shown
                .issued_at
                .map(|t| format!(", signed {} ({} ago)", when::utc(t), when::span(now_unix.saturating_sub(t))))
                .unwrap_or_default();
            let mut out = format!("# policy version {v}{signed}: {} rules, {} tests\n", shown.rules, shown.tests);
            out += &counters(shown);
            out += &shown.text;
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out
        }
    }
}

/// The counters as TOML comments above the file (so that the output stays a policy file):
/// a column of new flows allowed per rule, by the rule's line, and the packets denied.
fn counters(shown: &PolicyShown) -> String {
    let mut out = String::new();
    if !shown.allowed.is_empty() {
        out += "# rule at line   flows allowed\n";
        for rule in &shown.allowed {
            out += &format!("# {:>12}   {:>13}\n", rule.line, rule.flows);
        }
    }
    out += &format!(
        "# denied on this host: {} packets (since this version came into force)\n",
        shown.denied
    );
    out
}

fn verdict_line(request: &PolicyCheckRequest, verdict: &PolicyVerdict) -> String {
    let flow = format!("{} -> {} {}", request.from, request.to, request.port);
    match (verdict.allow, verdict.version, verdict.rule_line) {
        (true, None, _) => format!("allow: {flow} (no policy is set: everything is allowed)"),
        (true, Some(v), Some(line)) => {
            format!("allow: {flow} by the rule at line {line} of policy version {v}")
        }
        (true, Some(v), None) => format!("allow: {flow} by policy version {v}"),
        (false, Some(v), _) => format!("deny: {flow} (no rule of policy version {v} allows it)"),
        (false, None, _) => format!("deny: {flow}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::RuleCount;

    fn shown(version: Option<u64>) -> PolicyShown {
        PolicyShown {
            version,
            issued_at: version.map(|_| 1_000),
            rules: 2,
            tests: 1,
            tracked_flows: 0,
            allowed: vec![RuleCount { line: 1, flows: 17 }],
            denied: 3,
            text: "[[allow]]\nfrom = [\"any\"]\nto = [\"any\"]\nports = [\"icmp\"]".to_string(),
        }
    }

    #[test]
    fn show_prints_the_file_under_its_version() {
        let text = show(&shown(Some(4)), 1_060);
        assert!(text.starts_with("# policy version 4, signed "), "{text}");
        assert!(
            text.contains(
                "2 rules, 1 tests\n\
                 # rule at line   flows allowed\n\
                 #            1              17\n\
                 # denied on this host: 3 packets (since this version came into force)\n\
                 [[allow]]\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("\"icmp\"]\n"));
        assert!(show(&shown(None), 0).starts_with("no policy: every member may reach every other"));
    }

    #[test]
    fn verdicts_name_the_rule() {
        let request = PolicyCheckRequest {
            from: "node:h1".into(),
            to: "10.42.3.2".into(),
            port: "tcp/5432".into(),
        };
        let allow = PolicyVerdict {
            allow: true,
            rule_line: Some(2),
            version: Some(3),
        };
        assert_eq!(
            verdict_line(&request, &allow),
            "allow: node:h1 -> 10.42.3.2 tcp/5432 by the rule at line 2 of policy version 3"
        );
        let deny = PolicyVerdict {
            allow: false,
            rule_line: None,
            version: Some(3),
        };
        assert_eq!(
            verdict_line(&request, &deny),
            "deny: node:h1 -> 10.42.3.2 tcp/5432 (no rule of policy version 3 allows it)"
        );
    }

    #[test]
    fn a_bad_file_is_a_usage_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "[[allow]]\nfrom = [\"grp:web\"]\nto = [\"any\"]\nports = [\"any\"]\n",
        )
        .unwrap();
        let e = read_policy(&file).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        let msg = e.to_string();
        assert!(msg.ends_with("p.toml: policy line 2: \"grp:web\" names nobody; write group:NAME, node:NAME, an address or CIDR (10.42.3.0/28), or \"any\""), "{msg}");
        let e = read_policy(&dir.path().join("missing.toml")).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("cannot read the policy file "),
            "{e:#}"
        );
    }
}
