//! CNI protocol facts shared by every Spur component: the spec versions
//! Spur speaks and the error codes it answers with.

use std::fmt;
use std::str::FromStr;

/// A CNI specification version Spur accepts (0.3.0 to 1.1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0 (adds CHECK and prevResult on DEL)
    V0_4_0,
    /// 1.0.0 (drops `version` in IP entries, adds `interface` indices)
    V1_0_0,
    /// 1.1.0 (adds STATUS and GC)
    V1_1_0,
}

impl CniVersion {
    /// Every accepted version, oldest first.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest version Spur speaks.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version as written in configs and results.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// True when CHECK exists in this version (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// True when STATUS and GC exist in this version (1.1.0).
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

/// A version string Spur does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?} (Spur speaks 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0)")]
pub struct UnsupportedVersion(pub String);

impl FromStr for CniVersion {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_string()))
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for CniVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CniVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// CNI error codes (spec 1.1.0, "Error" section), and Spur's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    UnknownContainer = 3,
    /// Invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// I/O failure.
    Io = 5,
    /// Failed to decode content.
    Decode = 6,
    /// Invalid network config.
    InvalidConfig = 7,
    /// Try again later.
    TryAgainLater = 11,
    /// The plugin is not available (STATUS).
    PluginNotAvailable = 50,
    /// The plugin is not available: limited connectivity (STATUS).
    LimitedConnectivity = 51,
    /// A pool or device is exhausted (Spur's own).
    Exhausted = 100,
    /// A requested address is held by another owner (Spur's own).
    AddressInUse = 101,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u32 {
        self as u32
    }
}

impl From<crate::error::Kind> for ErrorCode {
    fn from(k: crate::error::Kind) -> Self {
        use crate::error::Kind;
        match k {
            Kind::Decode => ErrorCode::Decode,
            Kind::Unsupported => ErrorCode::UnsupportedField,
            Kind::IncompatibleVersion => ErrorCode::IncompatibleVersion,
            Kind::Invalid | Kind::Missing | Kind::Conflict | Kind::InUse => {
                ErrorCode::InvalidConfig
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>(), Ok(v));
            let j = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<CniVersion>(&j).unwrap(), v);
        }
        assert!("0.2.0".parse::<CniVersion>().is_err());
        assert!("1.2.0".parse::<CniVersion>().is_err());
        assert!(!CniVersion::V0_3_1.has_check() && CniVersion::V0_4_0.has_check());
        assert!(CniVersion::V1_1_0.has_status_and_gc() && !CniVersion::V1_0_0.has_status_and_gc());
    }
}
