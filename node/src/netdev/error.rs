//! What can go wrong creating, inspecting or deleting a Pod's interface:
//! a spec that cannot be applied, a namespace that is missing or is not a
//! network namespace, a name already taken, or the kernel refusing one
//! step (reported with the namespace, the interface, the operation and
//! the errno, plus the kernel's own explanation when it gives one).
//!
//! Nothing here talks to the kernel; the I/O lives in the sibling modules.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// The network namespace an operation ran in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Netns {
    /// The agent's own network namespace (where the host ends live).
    Agent,
    /// A Pod's network namespace, by the path it was given as.
    Pod(PathBuf),
}

impl Netns {
    /// A Pod netns by path.
    pub fn pod(path: &Path) -> Netns {
        Netns::Pod(path.to_owned())
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Agent => f.write_str("the agent's netns"),
            Netns::Pod(p) => write!(f, "netns {}", p.display()),
        }
    }
}

/// Why an operation of [`super::PodLinks`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// A field of the request cannot be used as given.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidSpec {
        /// Which field, e.g. `ifname` or `routes[1].gw`.
        field: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The netns path does not exist (the Pod or its sandbox is gone).
    #[error("netns {} does not exist", netns.display())]
    NetnsNotFound {
        /// The path given.
        netns: PathBuf,
    },
    /// The path exists but is not a network namespace (e.g. the file left
    /// behind once a bind-mounted namespace was unmounted).
    #[error("{} is not a network namespace", netns.display())]
    NotANetns {
        /// The path given.
        netns: PathBuf,
    },
    /// The netns file could not be opened or entered.
    #[error("cannot {op} netns {}: {errno}", netns.display())]
    Netns {
        /// `open` or `enter`.
        op: &'static str,
        /// The path given.
        netns: PathBuf,
        /// The OS error.
        errno: Errno,
    },
    /// An interface of the Pod's name already exists in the Pod netns
    /// (CNI: ADD fails if the interface exists). Nothing was created.
    #[error("interface {ifname:?} already exists in netns {}", netns.display())]
    PodLinkExists {
        /// The Pod netns.
        netns: PathBuf,
        /// The interface name inside it.
        ifname: String,
    },
    /// The host end's name is taken in the agent's netns. Nothing was
    /// created (the existing interface is left alone).
    #[error("interface {host_name:?} already exists in the agent's netns")]
    HostLinkExists {
        /// The host end's name.
        host_name: String,
    },
    /// The kernel refused one step.
    #[error("{op} on interface {ifname:?} in {netns}: {errno}{}", kernel_msg(.message))]
    Kernel {
        /// The step, with its value, e.g. `add address 10.0.0.5/24`.
        op: String,
        /// Where it ran.
        netns: Netns,
        /// The interface it concerned.
        ifname: String,
        /// The errno the kernel answered.
        errno: Errno,
        /// The kernel's extended-ack message, when it sent one.
        message: Option<String>,
    },
    /// A sysctl of the interface could not be written.
    #[error("cannot set {} to {value} in {netns}: {errno}", path.display())]
    Sysctl {
        /// Where it ran.
        netns: Netns,
        /// The `/proc/sys/...` file.
        path: PathBuf,
        /// The value written.
        value: &'static str,
        /// The OS error.
        errno: Errno,
    },
    /// A netlink socket could not be opened or used.
    #[error("netlink socket for {op} in {netns}: {errno}")]
    Socket {
        /// What it was for.
        op: String,
        /// Where.
        netns: Netns,
        /// The OS error.
        errno: Errno,
    },
    /// The kernel's answer could not be understood.
    #[error("unexpected netlink answer to {op} in {netns}: {detail}")]
    Protocol {
        /// The request.
        op: String,
        /// Where.
        netns: Netns,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The thread that works inside the Pod netns could not be started or
    /// died before answering.
    #[error("worker thread for {op} in netns {}: {detail}", netns.display())]
    Worker {
        /// The operation.
        op: &'static str,
        /// The Pod netns.
        netns: PathBuf,
        /// What happened.
        detail: String,
    },
    /// The agent's rtnetlink connection is closed.
    #[error("the agent's rtnetlink connection is closed (during {op})")]
    ConnectionClosed {
        /// The operation.
        op: String,
    },
    /// Called outside a tokio runtime (the agent's connection and
    /// `create_veth`'s task live on one).
    #[error("{op} needs a tokio runtime")]
    NoRuntime {
        /// The operation.
        op: &'static str,
    },
    /// Another implementation's failure (e.g. one a simulator injects).
    #[error("{0}")]
    Backend(String),
}

fn kernel_msg(m: &Option<String>) -> String {
    match m {
        Some(m) => format!(" ({m})"),
        None => String::new(),
    }
}

impl NetdevError {
    /// The errno behind the error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetdevError::Kernel { errno, .. }
            | NetdevError::Netns { errno, .. }
            | NetdevError::Sysctl { errno, .. }
            | NetdevError::Socket { errno, .. } => Some(*errno),
            NetdevError::PodLinkExists { .. } | NetdevError::HostLinkExists { .. } => {
                Some(Errno::EEXIST)
            }
            NetdevError::NetnsNotFound { .. } => Some(Errno::ENOENT),
            _ => None,
        }
    }

    /// True when the error says an interface name is already taken.
    pub fn is_exists(&self) -> bool {
        matches!(
            self,
            NetdevError::PodLinkExists { .. } | NetdevError::HostLinkExists { .. }
        )
    }
}

/// Errno of an I/O error (EIO when it carries none).
pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_names_everything() {
        let e = NetdevError::Kernel {
            op: "add address 10.0.0.5/24".into(),
            netns: Netns::Pod("/var/run/netns/p1".into()),
            ifname: "eth1".into(),
            errno: Errno::EEXIST,
            message: Some("address already assigned".into()),
        };
        let s = e.to_string();
        assert!(s.contains("add address 10.0.0.5/24"), "{s}");
        assert!(s.contains("\"eth1\""), "{s}");
        assert!(s.contains("/var/run/netns/p1"), "{s}");
        assert!(s.contains("EEXIST"), "{s}");
        assert!(s.contains("(address already assigned)"), "{s}");
        assert_eq!(e.errno(), Some(Errno::EEXIST));
    }

    #[test]
    fn exists_errors_are_distinct() {
        let e = NetdevError::PodLinkExists {
            netns: "/run/netns/x".into(),
            ifname: "eth1".into(),
        };
        assert!(e.is_exists());
        assert_eq!(
            e.to_string(),
            "interface \"eth1\" already exists in netns /run/netns/x"
        );
        let e = NetdevError::NetnsNotFound {
            netns: "/run/netns/x".into(),
        };
        assert!(!e.is_exists());
        assert_eq!(e.errno(), Some(Errno::ENOENT));
    }

    #[test]
    fn agent_netns_display() {
        let e = NetdevError::Kernel {
            op: "delete link".into(),
            netns: Netns::Agent,
            ifname: "veth1".into(),
            errno: Errno::EPERM,
            message: None,
        };
        assert_eq!(
            e.to_string(),
            "delete link on interface \"veth1\" in the agent's netns: EPERM: Operation not permitted"
        );
    }
}
