//! The policy file (TOML) into a [`Policy`]; every error names the line it is about.
//!
//! ```toml
//! [[allow]]
//! from  = ["group:web"]                  # group:NAME, node:NAME, a CIDR, "any"
//! to    = ["group:db", "10.42.3.0/28"]   # the same; a CIDR narrows to some containers
//! ports = ["tcp/5432", "udp/53", "icmp", "tcp/8000-8999", "proto/47", "any"]
//!
//! [[test]]                               # must hold, or the policy is refused
//! from   = "node:h2"                     # node:NAME, group:NAME or one address
//! to     = "10.42.3.2"
//! port   = "tcp/5432"                    # one port: tcp/N, udp/N, icmp, proto/N
//! expect = "allow"                       # or "deny"
//! ```

use std::net::IpAddr;

use ipnet::IpNet;
use keys::Name;
use serde::Deserialize;
use toml::Spanned;

use super::{Expect, Policy, PolicyTest, Ports, Rule, Selector, Service, TestFailure, proto};

/// The longest policy file accepted (bytes): a policy travels in one control message.
pub const MAX_POLICY_LEN: usize = 256 * 1024;
/// The most `[[allow]]` rules one policy may hold.
pub const MAX_RULES: usize = 4096;
/// The most `[[test]]`s.
pub const MAX_TESTS: usize = 4096;

/// Why a policy was refused: one sentence naming the line and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The file is not TOML of the policy's shape.
    #[error("policy line {line}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A value is not one the policy knows.
    #[error("policy line {line}: {message}")]
    Invalid {
        /// 1-based line.
        line: usize,
        /// What is wrong and what to write.
        message: String,
    },
    /// Too large to carry.
    #[error("policy refused: {what} (the most is {max})")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Tests in the file do not hold.
    #[error("policy refused: {} of its tests failed: {}", .0.len(), join(.0))]
    TestsFailed(Vec<TestFailure>),
}

fn join(failures: &[TestFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    test: Vec<Spanned<RawTest>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Vec<Spanned<String>>,
    to: Vec<Spanned<String>>,
    ports: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    from: Spanned<String>,
    to: Spanned<String>,
    port: Spanned<String>,
    expect: Spanned<String>,
}

/// Line numbers of byte offsets in the text.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of<T>(&self, spanned: &Spanned<T>) -> usize {
        self.at(spanned.span().start)
    }
    fn at(&self, offset: usize) -> usize {
        let end = offset.min(self.0.len());
        self.0.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

impl Policy {
    /// Parses a policy file. Does not run its tests ([`Policy::check_tests`] does).
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge {
                what: "the file is too long",
                max: MAX_POLICY_LEN,
            });
        }
        let lines = Lines(text);
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            line: e.span().map_or(1, |s| lines.at(s.start)),
            message: e.message().trim().to_string(),
        })?;
        if raw.allow.len() > MAX_RULES {
            return Err(PolicyError::TooLarge {
                what: "too many [[allow]] rules",
                max: MAX_RULES,
            });
        }
        if raw.test.len() > MAX_TESTS {
            return Err(PolicyError::TooLarge {
                what: "too many [[test]]s",
                max: MAX_TESTS,
            });
        }
        let rules = raw
            .allow
            .iter()
            .map(|r| rule(&lines, r))
            .collect::<Result<Vec<_>, _>>()?;
        let tests = raw
            .test
            .iter()
            .map(|t| test(&lines, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { rules, tests })
    }
}

fn invalid(line: usize, message: String) -> PolicyError {
    PolicyError::Invalid { line, message }
}

fn rule(lines: &Lines<'_>, raw: &Spanned<RawRule>) -> Result<Rule, PolicyError> {
    let line = lines.of(raw);
    let r = raw.get_ref();
    for (key, list) in [("from", &r.from), ("to", &r.to), ("ports", &r.ports)] {
        if list.is_empty() {
            return Err(invalid(
                line,
                format!(
                    "`{key}` is empty, so the rule allows nothing; name at least one, or \"any\""
                ),
            ));
        }
    }
    let selectors = |list: &[Spanned<String>]| {
        list.iter()
            .map(|s| selector(s.get_ref()).map_err(|m| invalid(lines.of(s), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Rule {
        from: selectors(&r.from)?,
        to: selectors(&r.to)?,
        ports: r
            .ports
            .iter()
            .map(|p| ports(p.get_ref()).map_err(|m| invalid(lines.of(p), m)))
            .collect::<Result<_, _>>()?,
        line,
    })
}

fn test(lines: &Lines<'_>, raw: &Spanned<RawTest>) -> Result<PolicyTest, PolicyError> {
    let t = raw.get_ref();
    let side = |s: &Spanned<String>| {
        let sel = selector(s.get_ref()).map_err(|m| invalid(lines.of(s), m))?;
        match sel {
            Selector::Any => Err(invalid(
                lines.of(s),
                "a test names one side: node:NAME, group:NAME or one address, not \"any\"".into(),
            )),
            Selector::Cidr(net) if net.prefix_len() != net.max_prefix_len() => Err(invalid(
                lines.of(s),
                format!(
                    "a test names one address, not the network {net}; write e.g. {}",
                    net.addr()
                ),
            )),
            other => Ok(other),
        }
    };
    let port = ports(t.port.get_ref()).map_err(|m| invalid(lines.of(&t.port), m))?;
    let service = match port {
        Ports::Tcp { first, last } if first == last => Service {
            proto: proto::TCP,
            port: Some(first),
        },
        Ports::Udp { first, last } if first == last => Service {
            proto: proto::UDP,
            port: Some(first),
        },
        Ports::Icmp => Service {
            proto: proto::ICMP,
            port: None,
        },
        Ports::Proto(p) => Service {
            proto: p,
            port: None,
        },
        _ => {
            return Err(invalid(
                lines.of(&t.port),
                format!(
                    "a test names one port (tcp/N, udp/N, icmp or proto/N), not {:?}",
                    t.port.get_ref()
                ),
            ));
        }
    };
    let expect = match t.expect.get_ref().as_str() {
        "allow" => Expect::Allow,
        "deny" => Expect::Deny,
        other => {
            return Err(invalid(
                lines.of(&t.expect),
                format!("expect is \"allow\" or \"deny\", not {other:?}"),
            ));
        }
    };
    Ok(PolicyTest {
        from: side(&t.from)?,
        to: side(&t.to)?,
        service,
        expect,
        line: lines.of(raw),
    })
}

/// `group:NAME`, `node:NAME`, `any`, an address or a CIDR.
pub(super) fn selector(text: &str) -> Result<Selector, String> {
    let name = |n: &str, what: &str| {
        Name::new(n).map_err(|e| format!("{text:?}: {e}; a {what} name is what `overlayctl` shows"))
    };
    if text == "any" {
        Ok(Selector::Any)
    } else if let Some(g) = text.strip_prefix("group:") {
        Ok(Selector::Group(name(g, "group")?))
    } else if let Some(n) = text.strip_prefix("node:") {
        Ok(Selector::Node(name(n, "node")?))
    } else if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!("{text:?} has host bits set; write {}", net.trunc()));
        }
        Ok(Selector::Cidr(net))
    } else if let Ok(addr) = text.parse::<IpAddr>() {
        Ok(Selector::Cidr(IpNet::from(addr)))
    } else {
        Err(format!(
            "{text:?} names nobody; write group:NAME, node:NAME, an address or CIDR (10.42.3.0/28), or \"any\""
        ))
    }
}

/// `tcp/5432`, `udp/53`, `tcp/8000-8999`, `tcp` (every port), `icmp`, `proto/47`, `any`.
pub(super) fn ports(text: &str) -> Result<Ports, String> {
    let bad = || {
        format!(
            "{text:?} is not a port; write tcp/N, udp/N, tcp/N-M, tcp (every port), icmp, proto/N (an IP protocol number) or \"any\""
        )
    };
    let range = |r: &str| -> Result<(u16, u16), String> {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let first: u16 = a.parse().map_err(|_| bad())?;
        let last: u16 = b.parse().map_err(|_| bad())?;
        if first > last {
            return Err(format!(
                "{text:?}: the range runs backwards; write {last}-{first}"
            ));
        }
        Ok((first, last))
    };
    match text.split_once('/') {
        None => match text {
            "any" => Ok(Ports::Any),
            "icmp" => Ok(Ports::Icmp),
            "tcp" => Ok(Ports::Tcp {
                first: 0,
                last: u16::MAX,
            }),
            "udp" => Ok(Ports::Udp {
                first: 0,
                last: u16::MAX,
            }),
            _ => Err(bad()),
        },
        Some(("tcp", r)) => range(r).map(|(first, last)| Ports::Tcp { first, last }),
        Some(("udp", r)) => range(r).map(|(first, last)| Ports::Udp { first, last }),
        Some(("proto", n)) => match n.parse::<u8>() {
            Ok(proto::TCP) => Ok(Ports::Tcp {
                first: 0,
                last: u16::MAX,
            }),
            Ok(proto::UDP) => Ok(Ports::Udp {
                first: 0,
                last: u16::MAX,
            }),
            Ok(proto::ICMP | proto::ICMPV6) => Ok(Ports::Icmp),
            Ok(p) => Ok(Ports::Proto(p)),
            Err(_) => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}
