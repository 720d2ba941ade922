//! The one validation error of the domain model.
//!
//! Every parser and validator in `spur-core` reports bad input as an
//! [`Invalid`]: it names the object (for example
//! `NetworkAttachmentDefinition default/vlan100`), the key inside it (a path
//! such as `spec.ipRanges[1].cidr`), the offending value when there is one,
//! and why the value is refused. [`Kind`] lets callers map the error to a
//! protocol code (CNI error codes, Kubernetes status reasons) without parsing
//! the message.

use std::fmt;

/// What class of problem an [`Invalid`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The text is not JSON/YAML of the expected shape at all (CNI code 6).
    Decode,
    /// A value is present but not acceptable (CNI code 7).
    Invalid,
    /// A required key is absent (CNI code 7).
    Missing,
    /// A key that is not part of the format (CNI code 2).
    Unsupported,
    /// A CNI version this implementation does not speak (CNI code 1).
    IncompatibleVersion,
    /// The value is fine alone but collides with another object (an
    /// overlapping pool, an interface name used twice).
    Conflict,
    /// The change is refused because the object is in use.
    InUse,
}

/// A refused value: which object, which key, which value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The class of problem.
    pub kind: Kind,
    /// The object holding the value, e.g. `IPPool vlan100-ipv4`.
    pub object: String,
    /// The key inside the object, e.g. `spec.subnetInfo.gateway`.
    pub key: String,
    /// The offending value as the user wrote it (absent for missing keys).
    pub value: Option<String>,
    /// Why the value is refused, in words a user can act on.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object)?;
        if !self.key.is_empty() {
            write!(f, "{}", self.key)?;
            match &self.value {
                Some(v) => write!(f, " = {v}: ")?,
                None => write!(f, ": ")?,
            }
        } else if let Some(v) = &self.value {
            write!(f, "{v}: ")?;
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for Invalid {}

/// Names the object that values belong to, and builds [`Invalid`]s for it.
///
/// ```
/// use spur_core::error::{Kind, Subject};
/// let pool = Subject::new("IPPool", None, "vlan100-ipv4");
/// let e = pool.invalid("spec.subnetInfo.vlan", 5000, "VLAN ID must be 0 (untagged) or 1-4094");
/// assert_eq!(e.kind, Kind::Invalid);
/// assert_eq!(
///     e.to_string(),
///     "IPPool vlan100-ipv4: spec.subnetInfo.vlan = 5000: VLAN ID must be 0 (untagged) or 1-4094"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// A Kubernetes object: `KIND [NAMESPACE/]NAME`.
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        match namespace {
            Some(ns) if !ns.is_empty() => Subject(format!("{kind} {ns}/{name}")),
            _ => Subject(format!("{kind} {name}")),
        }
    }

    /// Anything else, named as given (a file, `spur-agent.conf`, ...).
    pub fn named(name: impl Into<String>) -> Self {
        Subject(name.into())
    }

    /// The name as it appears in messages.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A value that is present but refused.
    pub fn invalid(
        &self,
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Invalid {
        self.error(Kind::Invalid, key, Some(value.to_string()), reason)
    }

    /// A required key that is absent.
    pub fn missing(&self, key: impl Into<String>) -> Invalid {
        self.error(Kind::Missing, key, None, "is required")
    }

    /// A value that collides with another one (the reason names the other).
    pub fn conflict(
        &self,
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Invalid {
        self.error(Kind::Conflict, key, Some(value.to_string()), reason)
    }

    /// Any kind of error.
    pub fn error(
        &self,
        kind: Kind,
        key: impl Into<String>,
        value: Option<String>,
        reason: impl Into<String>,
    ) -> Invalid {
        Invalid {
            kind,
            object: self.0.clone(),
            key: key.into(),
            value,
            reason: reason.into(),
        }
    }

    /// Turns a serde error (JSON or YAML) into an [`Invalid`] of this
    /// object. Unknown keys become [`Kind::Unsupported`] naming the key;
    /// everything else is [`Kind::Decode`].
    pub fn decode(&self, what: &str, err: &dyn fmt::Display) -> Invalid {
        let msg = err.to_string();
        if let Some(key) = unknown_field(&msg) {
            let key = [what, key.as_str()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(".");
            return self.error(Kind::Unsupported, key, None, format!("unknown key ({msg})"));
        }
        self.error(
            Kind::Decode,
            what,
            None,
            format!("cannot be decoded: {msg}"),
        )
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Extracts the key from serde's "unknown field `x`, expected ..." message,
/// with the path serde_yaml puts in front of it ("a.b[0]: unknown field").
fn unknown_field(msg: &str) -> Option<String> {
    let (before, rest) = msg.split_once("unknown field `")?;
    let key = rest.split('`').next()?;
    let path = before.trim_end().trim_end_matches(':');
    if path.is_empty() || path.contains(char::is_whitespace) {
        Some(key.to_string())
    } else {
        Some(format!("{path}.{key}"))
    }
}

/// Levenshtein distance between two keys, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// serde's message with Rust type names ("expected struct RawAgent",
/// "expected u32") replaced by the shapes users write.
pub fn plain_serde_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("expected struct ") {
        out.push_str(&rest[..i]);
        out.push_str("expected a mapping");
        rest = &rest[i + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    for (rust, shape) in [
        ("expected i64", "expected an integer"),
        ("expected u8", "expected an integer"),
        ("expected u16", "expected an integer"),
        ("expected u32", "expected an integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected a boolean", "expected true or false"),
        ("expected a borrowed string", "expected a string"),
    ] {
        out = out.replace(rust, shape);
    }
    out
}

/// Shorthand for results of the domain model.
pub type Result<T, E = Invalid> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_object_key_value_and_reason() {
        let s = Subject::new("NetworkAttachmentDefinition", Some("default"), "vlan100");
        let e = s.invalid("spec.config.mtu", 70000, "MTU must be 68-65535");
        assert_eq!(
            e.to_string(),
            "NetworkAttachmentDefinition default/vlan100: spec.config.mtu = 70000: MTU must be 68-65535"
        );
        let m = s.missing("spec.config.networkType");
        assert_eq!(
            m.to_string(),
            "NetworkAttachmentDefinition default/vlan100: spec.config.networkType: is required"
        );
    }

    #[test]
    fn hints() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ipools", "ippools"), 1);
        assert_eq!(
            plain_serde_message("invalid type: string, expected struct RawAgent at line 1"),
            "invalid type: string, expected a mapping at line 1"
        );
        assert_eq!(plain_serde_message("expected u32"), "expected an integer");
    }

    #[test]
    fn serde_unknown_field_becomes_unsupported_key() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u8,
        }
        let err = serde_json::from_str::<T>(r#"{"a":1,"bee":2}"#).unwrap_err();
        let e = Subject::named("spur-agent.conf").decode("secondaryNetwork", &err);
        assert_eq!(e.kind, Kind::Unsupported);
        assert_eq!(e.key, "secondaryNetwork.bee");
    }

    #[test]
    fn yaml_unknown_field_keeps_its_path() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            a: u8,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            items: Vec<Inner>,
        }
        let err = serde_yaml::from_str::<Outer>("items:\n- a: 1\n  bee: 2\n").unwrap_err();
        let e = Subject::named("spur-agent.conf").decode("", &err);
        assert_eq!(e.kind, Kind::Unsupported);
        assert_eq!(e.key, "items[0].bee");
    }
}
