//! `spur-node`: Spur's node agent (`spur-agent`, a DaemonSet).
//!
//! What lives here: the agent ([`agent`]: the CNI verbs, the unix socket
//! the `spur` plugin dials, the stale-port sweep and the start-up and
//! resync sequence in [`agent::run`]); its side of IP address management
//! ([`ipam`]): an in-memory cache of IPPools and IPAMBlocks fed by
//! watches, and the allocator that claims, fills and releases the node's
//! blocks with optimistic concurrency against the Kubernetes API; its
//! system boundaries ([`ovsdb`]: Open vSwitch, [`netdev`]: netlink and
//! namespaces, [`podresources`]: the kubelet's record of a Pod's devices,
//! [`sriov`]: SR-IOV PFs and VFs found in sysfs) with in-memory stand-ins
//! ([`fake`]); and the `spur-agent` binary (`run`, `ipam show`,
//! `install-cni`).
//!
//! What does not: the allocation and attachment decisions themselves
//! (which address, which block, which VLAN, in which order) and every
//! format users depend on — those are pure and live in `spur-core`
//! (`spur_core::allocator`, `spur_core::attach`, `spur_core::ipamblock`,
//! `spur_core::ippool`). The CNI plugin binary and the controller's
//! garbage collection live elsewhere too.
//!
//! The deterministic simulator (`spur-sim`) runs the agent's code as is:
//! what it runs keeps time with `tokio::time`, orders what it iterates,
//! uses `biased` selects and seeded jitter ([`watch_backoff`] for the
//! watches, the [`ipam::IpamConfig`] seed for retried writes).

pub mod agent;
pub mod client;
pub mod fake;
pub mod ipam;
pub mod netdev;
pub mod ovsdb;
pub mod podresources;
pub mod sriov;
pub mod watch_backoff;
