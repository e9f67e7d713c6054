//! Parsing and checking of command-line values (durations, node names), and the usage
//! error type that makes `overlayctl` exit with status 2.
//!
//! Pure: the host name comes in as an argument; only [`hostname`] reads the system.

use std::fmt;

use ipnet::IpNet;

/// A command line the operator must change: `overlayctl` prints it and exits with 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Longest node or network name: one DNS label.
pub const NAME_MAX_LEN: usize = 63;

const DURATION_FORMS: &str =
    "use a whole number with s, m, h or d (90s, 10m, 1h, 2d) or plain seconds, above 0";

/// Parses `90s`, `10m`, `1h`, `2d` or plain seconds into seconds; refuses 0, overflow and
/// anything else. Used as clap's value parser for `--ttl`.
pub fn duration_s(text: &str) -> Result<u64, String> {
    let bad = || format!("'{text}' is not a duration: {DURATION_FORMS}");
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    // `u64::from_str` takes a leading '+'; a duration is digits only.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("'{text}' is too long a duration: {DURATION_FORMS}"))?;
    if seconds == 0 {
        return Err(bad());
    }
    Ok(seconds)
}

/// Parses an address range such as `10.42.0.0/16` or `fd42::/48`. Used as clap's value
/// parser for `--cidr` and `--subnet`.
pub fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse().map_err(|_| {
        format!("'{text}' is not an address range: write it like 10.42.0.0/16 or fd42::/48")
    })
}

/// Checks a node or network name: 1 to 63 of `a-z`, `0-9`, `-`, not starting or ending
/// with `-`. Used as clap's value parser for `--name` and `--network`.
pub fn name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= NAME_MAX_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "'{text}' is not a valid name: use 1 to {NAME_MAX_LEN} lowercase letters, digits \
             and '-', not starting or ending with '-'"
        ))
    }
}

/// Checks one group name (from `--groups a,b`): not empty, no spaces or commas.
pub fn group(text: &str) -> Result<String, String> {
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "'{text}' is not a valid group: give names separated by commas, with no spaces"
        ))
    } else {
        Ok(text.to_owned())
    }
}

/// Makes a host name into a node name: lowercase, characters other than `a-z0-9-` become
/// `-`, at most 63 characters, no `-` at either end. `None` if nothing is left.
pub fn node_name_from_hostname(hostname: &str) -> Option<String> {
    let mapped: String = hostname
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(NAME_MAX_LEN)
        .collect();
    let trimmed = mapped.trim_matches('-');
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// This machine's node name for `init` and `join` without `--name`: its host name (of this
/// UTS namespace) made valid, or a usage error asking for `--name`.
pub fn default_node_name() -> Result<String, UsageError> {
    let hostname = hostname().unwrap_or_default();
    node_name_from_hostname(&hostname).ok_or_else(|| {
        UsageError(format!(
            "cannot make a node name from this host's name '{}': pass --name NODE",
            hostname.trim()
        ))
    })
}

/// The kernel's host name; `/proc` answers for the caller's UTS namespace, which is what a
/// host inside a test namespace should use.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_accepted_form() {
        assert_eq!(duration_s("90s"), Ok(90));
        assert_eq!(duration_s("10m"), Ok(600));
        assert_eq!(duration_s("1h"), Ok(3600));
        assert_eq!(duration_s("2d"), Ok(172_800));
        assert_eq!(duration_s("45"), Ok(45));
        assert_eq!(duration_s("007m"), Ok(420));
    }

    #[test]
    fn bad_durations_name_the_accepted_forms() {
        for bad in [
            "", "0", "0s", "0d", "s", "h", "1w", "1H", "-5", "+5", "1.5h", "1h30m", " 1h", "1h ",
            "1 h", "ten", "1e3", "é", "1é",
        ] {
            let err = duration_s(bad).expect_err(bad);
            assert!(err.contains("90s, 10m, 1h, 2d"), "{bad}: {err}");
        }
        // Overflow, in the number and in the multiplication.
        assert!(duration_s("18446744073709551616").is_err());
        assert!(
            duration_s("213503982334602d")
                .unwrap_err()
                .contains("too long")
        );
        assert_eq!(duration_s("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn cidrs() {
        assert_eq!(cidr("10.42.0.0/16"), Ok("10.42.0.0/16".parse().unwrap()));
        assert_eq!(cidr("fd42::/48"), Ok("fd42::/48".parse().unwrap()));
        for bad in ["", "10.42.0.0", "10.42.0.0/33", "nope", "fd42::/129"] {
            assert!(
                cidr(bad).unwrap_err().contains("not an address range"),
                "{bad}"
            );
        }
    }

    #[test]
    fn names() {
        for good in ["a", "node-1", "0", &"x".repeat(63)] {
            assert_eq!(name(good).as_deref(), Ok(good));
        }
        for bad in ["", "-a", "a-", "Node", "a_b", "a.b", "ä", &"x".repeat(64)] {
            assert!(name(bad).unwrap_err().contains("not a valid name"), "{bad}");
        }
    }

    #[test]
    fn groups() {
        assert_eq!(group("web").as_deref(), Ok("web"));
        assert!(group("").is_err());
        assert!(group("a b").is_err());
    }

    #[test]
    fn hostnames_become_node_names() {
        let cases = [
            ("node-a\n", Some("node-a")),
            ("Web01", Some("web01")),
            ("db1.example.com", Some("db1-example-com")),
            ("my_host", Some("my-host")),
            ("--edge--", Some("edge")),
            ("Zürich", Some("z-rich")),
            ("...", None),
            ("", None),
            ("\n", None),
        ];
        for (hostname, want) in cases {
            assert_eq!(
                node_name_from_hostname(hostname).as_deref(),
                want,
                "{hostname:?}"
            );
        }
        // Trimmed to 63, then the '-' left at the cut is removed.
        let long = format!("{}.{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(node_name_from_hostname(&long), Some("a".repeat(62)));
        assert_eq!(
            node_name_from_hostname(&"c".repeat(100)),
            Some("c".repeat(63))
        );
        // Every result is a valid name.
        for (hostname, _) in cases {
            if let Some(n) = node_name_from_hostname(hostname) {
                assert!(name(&n).is_ok(), "{n}");
            }
        }
    }
}
