//! `spur-core`: Spur's pure domain model.
//!
//! What lives here: the formats users and peers depend on (the
//! NetworkAttachmentDefinition config of Spur networks, the Pod network
//! selection and network-status annotations, the IPPool custom resource,
//! `spur-agent.conf` and `spur-controller.conf`), their validation with
//! errors that name the object, key and value, and the math behind
//! addresses (allocatable sets of pools, NodeIPAM CIDR carving), the SR-IOV
//! decisions (which VF a Pod interface gets, what is set on it), and the
//! retry backoff every component draws its jitter from a seeded RNG with.
//!
//! What does not: any I/O, async runtime, Kubernetes client, netlink or
//! OVSDB access. Those live in the agent (`spur-node`), the controller and
//! the CNI plugin, which call into this crate for every decision.

pub mod allocator;
pub mod attach;
pub mod backoff;
pub mod cni;
pub mod cniconf;
pub mod cniproto;
pub mod config;
pub mod error;
pub mod ipam;
pub mod ipamblock;
pub mod ipamreq;
pub mod ippool;
pub mod nad;
pub mod names;
pub mod nodeipam;
pub mod pool;
pub mod selection;
pub mod sriov;
pub mod status;

pub use error::{Invalid, Kind, Subject};
