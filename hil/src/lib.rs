//! `spur-hil`: Spur's hardware harness. `spur-hil run DIR` runs a testbed
//! directory (the format of `spur-testbed`) on this machine with real Open
//! vSwitch, real network namespaces, the real `spur-agent` and `spur`
//! binaries and Debian's CNI reference plugins, prints the report and
//! exits 0 exactly when every expectation holds.
//!
//! What lives here:
//!
//! - [`lab`]: the topology (namespaces, OVS daemons, NIC veths, fabric
//!   switches, the management network, the CNI bin dir) and the agents,
//!   with [`names`] deciding every name and [`cleanup`] undoing it all;
//! - [`sriov`]: the emulated SR-IOV NICs (sysfs tree, embedded switch,
//!   VF veths) and real ones (`--sriov-pf`);
//! - [`run`]: one run of a testbed: manifests, Pods through the kubelet
//!   stand-in, the report and the teardown with leak checks, with [`api`]
//!   for the embedded API server and everything said to it;
//! - [`kubelet`]: the kubelet stand-in (Pod sandboxes and CNI calls);
//! - [`probe`]: what is really there (interfaces, OVS ports) and
//!   reachability and multicast measurements;
//! - [`cmd`] and [`progress`]: running host tools and reporting progress;
//! - [`bench`](mod@bench): `spur-hil bench-cni`, CNI ADD/DEL latency of `spur`
//!   against Debian's plugins on a one-node lab.
//!
//! What does not: Spur's own logic (agent, plugin, controller) — the
//! harness runs the project's binaries and libraries as a cluster would —
//! and judging the results, which is `spur_testbed::check`.

pub mod api;
pub mod bench;
pub mod cleanup;
pub mod cmd;
pub mod kubelet;
pub mod lab;
pub mod names;
pub mod probe;
pub mod progress;
pub mod run;
pub mod sriov;
