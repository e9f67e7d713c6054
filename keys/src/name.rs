//! [`Name`]: the one validated form of network, node and group names.
//!
//! A name is 1 to 63 characters from `a-z`, `0-9` and `-`, neither starting nor ending
//! with `-` (a DNS label in lower case), so it is safe in file names, log fields, DNS and
//! the certificate encoding (whose length prefix is one byte). This module owns the rule
//! and nothing else: it does not know what a name is used for.

use std::fmt;
use std::str::FromStr;

/// The longest name, in bytes (and characters: names are ASCII).
pub(crate) const MAX_NAME_LEN: usize = 63;

/// A network, node or group name: 1 to 63 characters `[a-z0-9-]`, not starting or ending
/// with `-`. Holding one proves the rule was checked.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

/// A name that breaks the rule; the message says the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid name {name:?}: use 1 to 63 characters from a-z, 0-9 and '-', not starting or ending with '-'"
)]
pub struct InvalidName {
    /// The refused text.
    pub name: String,
}

impl Name {
    /// Checks `name` against the rule.
    pub fn new(name: impl Into<String>) -> Result<Name, InvalidName> {
        let name = name.into();
        if is_valid(name.as_bytes()) {
            Ok(Name(name))
        } else {
            Err(InvalidName { name })
        }
    }

    /// Checks raw bytes (from a decoder) against the rule.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Name> {
        // Valid names are ASCII, so the conversion cannot fail once the check passed.
        is_valid(bytes).then(|| Name(bytes.iter().map(|&b| char::from(b)).collect()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid(bytes: &[u8]) -> bool {
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    (1..=MAX_NAME_LEN).contains(&bytes.len())
        && bytes.iter().all(allowed)
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.0)
    }
}

impl FromStr for Name {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Name, InvalidName> {
        Name::new(s)
    }
}

impl TryFrom<String> for Name {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Name, InvalidName> {
        Name::new(s)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_accepted() {
        for good in ["a", "0", "web-1", "h1", "a-b-c", &"x".repeat(63), "9lives"] {
            let name: Name = good.parse().unwrap();
            assert_eq!(name.as_str(), good);
            assert_eq!(Name::from_bytes(good.as_bytes()), Some(name));
        }
    }

    #[test]
    fn invalid_names_are_refused_with_the_rule() {
        for bad in [
            "",
            "-a",
            "a-",
            "-",
            "A",
            "web_1",
            "web.1",
            "wéb",
            "a b",
            &"x".repeat(64),
        ] {
            let err = bad.parse::<Name>().unwrap_err();
            assert_eq!(err.name, bad);
            assert!(err.to_string().contains("1 to 63 characters"), "{err}");
            assert_eq!(Name::from_bytes(bad.as_bytes()), None);
        }
        assert_eq!(Name::from_bytes(&[0xff, b'a']), None);
    }

    #[test]
    fn serde_is_a_checked_string() {
        let name: Name = "web-1".parse().unwrap();
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"web-1\"");
        assert_eq!(serde_json::from_str::<Name>(&json).unwrap(), name);
        assert!(serde_json::from_str::<Name>("\"Web\"").is_err());
    }
}
