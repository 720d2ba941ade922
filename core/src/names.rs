//! Names and identifiers users write: DNS-1123 labels (object names,
//! namespaces), Linux interface names and MAC addresses.

use std::fmt;
use std::str::FromStr;

/// Longest DNS-1123 label.
pub const DNS1123_LABEL_MAX: usize = 63;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Why `s` is not a DNS-1123 label, or `None` when it is one.
///
/// A label is 1-63 characters of lower-case letters, digits and `-`,
/// starting and ending with a letter or digit.
pub fn dns1123_label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("must not be empty");
    }
    if s.len() > DNS1123_LABEL_MAX {
        return Some("must be at most 63 characters (DNS-1123 label)");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("must consist of lower-case letters, digits and '-' (DNS-1123 label)");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Some("must start and end with a letter or digit (DNS-1123 label)");
    }
    None
}

/// Why `s` is not a DNS-1123 subdomain (the rule for most object names),
/// or `None` when it is one: at most 253 characters, dot-separated labels.
pub fn dns1123_subdomain_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("must not be empty");
    }
    if s.len() > 253 {
        return Some("must be at most 253 characters (DNS-1123 subdomain)");
    }
    for label in s.split('.') {
        if dns1123_label_problem(label).is_some() {
            return Some(
                "must be lower-case letters, digits, '-' and '.', starting and ending \
                 with a letter or digit (DNS-1123 subdomain)",
            );
        }
    }
    None
}

/// Why `s` cannot be a Linux interface name, or `None` when it can.
///
/// 1-15 bytes, no `/`, `:` or white space, and not `.` or `..`.
pub fn ifname_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("interface name must not be empty");
    }
    if s.len() > IFNAME_MAX {
        return Some("interface name must be at most 15 characters");
    }
    if s == "." || s == ".." {
        return Some("interface name must not be '.' or '..'");
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Some("interface name must not contain '/', ':' or white space");
    }
    None
}

/// An EUI-48 MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// Why a text is not a usable MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six hex octets separated by `:` or `-`.
    #[error("not a MAC address (expected six hex octets like 0a:58:0a:0a:01:05)")]
    Syntax,
    /// The group bit is set: such an address cannot be an interface's own.
    #[error("is a multicast MAC address (the least significant bit of the first octet is set)")]
    Multicast,
    /// All zeros.
    #[error("is the all-zero MAC address")]
    Zero,
}

impl Mac {
    /// True for a locally administered address.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// True when the group (multicast) bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Parses and checks that the address can be assigned to an interface
    /// (unicast, not all zeros).
    pub fn parse_unicast(s: &str) -> Result<Mac, MacError> {
        let mac: Mac = s.parse()?;
        if mac.is_multicast() {
            return Err(MacError::Multicast);
        }
        if mac.0 == [0; 6] {
            return Err(MacError::Zero);
        }
        Ok(mac)
    }
}

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(MacError::Syntax);
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| MacError::Syntax)?;
            n += 1;
        }
        if n != 6 {
            return Err(MacError::Syntax);
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels() {
        for ok in ["a", "vlan100", "a-b", "0", &"a".repeat(63)] {
            assert_eq!(dns1123_label_problem(ok), None, "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(dns1123_subdomain_problem("a.b-c.d"), None);
        assert!(dns1123_subdomain_problem("a..b").is_some());
    }

    #[test]
    fn interface_names() {
        for ok in [
            "eth1",
            "net1",
            "eth200",
            "a",
            "x".repeat(15).as_str(),
            "br-secondary",
        ] {
            assert_eq!(ifname_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "x".repeat(16).as_str(),
            "a/b",
            "a:b",
            "a b",
            ".",
            "..",
            "a\tb",
        ] {
            assert!(ifname_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn macs() {
        let m: Mac = "0A:58:0a:0a:01:05".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:0a:01:05");
        assert!(m.is_local());
        assert_eq!("0a-58-0a-0a-01-05".parse::<Mac>().unwrap(), m);
        assert_eq!("0a:58:0a:0a:01".parse::<Mac>(), Err(MacError::Syntax));
        assert_eq!("0a:58:0a:0a:01:05:07".parse::<Mac>(), Err(MacError::Syntax));
        assert_eq!("0a:58:0a:0a:1:05".parse::<Mac>(), Err(MacError::Syntax));
        assert_eq!(
            Mac::parse_unicast("01:00:5e:00:00:01"),
            Err(MacError::Multicast)
        );
        assert_eq!(Mac::parse_unicast("00:00:00:00:00:00"), Err(MacError::Zero));
    }

    proptest! {
        #[test]
        fn mac_parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Mac>();
        }

        #[test]
        fn mac_render_then_parse(b in any::<[u8; 6]>()) {
            let m = Mac(b);
            prop_assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
        }

        #[test]
        fn name_checks_never_panic(s in "\\PC{0,80}") {
            let _ = dns1123_label_problem(&s);
            let _ = dns1123_subdomain_problem(&s);
            let _ = ifname_problem(&s);
        }
    }
}
