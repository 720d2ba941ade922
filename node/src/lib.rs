//! `spur-node`: Spur's node agent (`spur-agent`, a DaemonSet).
//!
//! What lives here: the agent's side of IP address management
//! ([`ipam`]): an in-memory cache of IPPools and IPAMBlocks fed by
//! watches, and the allocator that claims, fills and releases the node's
//! blocks with optimistic concurrency against the Kubernetes API; and the
//! `spur-agent` binary (today: `spur-agent ipam show POOL`).
//!
//! What does not: the allocation decisions themselves (which address, which
//! block, in which order) and every format users depend on — those are
//! pure and live in `spur-core` (`spur_core::allocator`,
//! `spur_core::ipamblock`, `spur_core::ippool`). Interfaces, OVS, netlink,
//! SR-IOV, the CNI plugin binary and the controller's garbage collection
//! live elsewhere too (later issues).

pub mod agent;
pub mod client;
pub mod fake;
pub mod ipam;
pub mod netdev;
pub mod ovsdb;
