//! Why an allocation or release failed, and the CNI error code each answer
//! maps to.

use std::net::IpAddr;

use spur_core::cni::ErrorCode;
use spur_core::ipamblock::Owner;

/// An IPAM failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The Kubernetes API did not answer (paused, down, 5xx, timed out)
    /// within the operation's bound. Nothing half-done is left behind; see
    /// [`crate::ipam::Ipam`] for how that holds.
    #[error("IPAM: the Kubernetes API is unavailable ({what}); try again later")]
    Unavailable {
        /// What was waited for, and the last answer seen.
        what: String,
    },
    /// Too many conflicting writes in a row (other nodes writing the same
    /// blocks).
    #[error(
        "IPAM: gave up after {attempts} conflicting writes to the IPAMBlocks of IPPool {pool}; try again later"
    )]
    Conflicts {
        /// The pool.
        pool: String,
        /// Writes tried.
        attempts: u32,
    },
    /// The API refused a write for a reason other than a conflict (RBAC,
    /// admission, a missing CRD).
    #[error("IPAM: the Kubernetes API refused {what}: {code} {message}")]
    Api {
        /// The request.
        what: String,
        /// HTTP status.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// The cache has not listed IPPools and IPAMBlocks yet.
    #[error("IPAM: IPPools and IPAMBlocks are not listed yet ({what}); try again later")]
    NotReady {
        /// How long was waited.
        what: String,
    },
    /// A pool of the request does not exist or is invalid.
    #[error("IPAM: IPPool {pool} does not exist or is invalid")]
    UnknownPool {
        /// The pool.
        pool: String,
    },
    /// Every listed pool of a family is exhausted.
    #[error("IPAM: no free address in IPPool {}", .pools.join(", IPPool "))]
    Exhausted {
        /// The exhausted pools, in request order.
        pools: Vec<String>,
    },
    /// A requested address is held by another owner.
    #[error("IPAM: requested address {ip} of IPPool {pool} is held by {holder}")]
    AddressInUse {
        /// The address.
        ip: IpAddr,
        /// The pool.
        pool: String,
        /// Who holds it.
        holder: Box<Owner>,
    },
    /// A requested address is not one any listed pool hands out.
    #[error("IPAM: requested address {ip} is not handed out by {}", describe_pools(.pools))]
    RequestedNotInPools {
        /// The address.
        ip: IpAddr,
        /// The listed pools of its family (empty: none).
        pools: Vec<String>,
    },
    /// The request itself is wrong (two requested addresses of one family).
    #[error("IPAM: {reason}")]
    InvalidRequest {
        /// Why.
        reason: String,
    },
    /// A stored block is malformed and the operation needs it.
    #[error("IPAM: IPAMBlock {block} cannot be used: {reason}")]
    BadBlock {
        /// Block name.
        block: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn describe_pools(pools: &[String]) -> String {
    if pools.is_empty() {
        "any listed IPPool of its family (none is listed)".into()
    } else {
        format!("IPPool {}", pools.join(", IPPool "))
    }
}

impl IpamError {
    /// The CNI error code of the failure: 11 (try again later) for
    /// everything the API's state or availability may cure, 7 for bad
    /// configuration, 100/101 for exhaustion and addresses in use.
    pub fn code(&self) -> ErrorCode {
        match self {
            IpamError::Unavailable { .. }
            | IpamError::Conflicts { .. }
            | IpamError::Api { .. }
            | IpamError::NotReady { .. }
            | IpamError::BadBlock { .. } => ErrorCode::TryAgainLater,
            IpamError::UnknownPool { .. }
            | IpamError::RequestedNotInPools { .. }
            | IpamError::InvalidRequest { .. } => ErrorCode::InvalidConfig,
            IpamError::Exhausted { .. } => ErrorCode::Exhausted,
            IpamError::AddressInUse { .. } => ErrorCode::AddressInUse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_matters_and_codes_map() {
        let e = IpamError::Exhausted {
            pools: vec!["a".into(), "b".into()],
        };
        assert_eq!(e.to_string(), "IPAM: no free address in IPPool a, IPPool b");
        assert_eq!(e.code().code(), 100);
        let e = IpamError::AddressInUse {
            ip: "10.0.0.5".parse().unwrap(),
            pool: "p".into(),
            holder: Box::new(Owner::pod("ns", "web", "c1", "eth1")),
        };
        assert_eq!(
            e.to_string(),
            "IPAM: requested address 10.0.0.5 of IPPool p is held by Pod ns/web interface eth1 (container c1)"
        );
        assert_eq!(e.code().code(), 101);
        let e = IpamError::Unavailable {
            what: "no answer within 2s".into(),
        };
        assert_eq!(e.code().code(), 11);
        let e = IpamError::RequestedNotInPools {
            ip: "fd00::5".parse().unwrap(),
            pools: vec![],
        };
        assert!(e.to_string().contains("none is listed"), "{e}");
        assert_eq!(e.code().code(), 7);
    }
}
