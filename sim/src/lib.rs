//! Spur's deterministic cluster simulator (`spur-sim`).
//!
//! A testbed (`../shared/testbed-format.md`) runs here against Spur's real
//! control plane — the embedded API server with Spur's admission rules, two
//! `spur-controller` replicas (`spur_controller::replica`), one real agent
//! per node (`spur_node::agent` over the in-memory back ends of
//! `spur_node::fake`) — with a simulated world around it: kubelets and the
//! CNI runtime, the primary CNI and macvlan, the scheduler and the
//! workload controllers, fabric switches and the data plane.
//!
//! Execution: one thread, a tokio current-thread runtime with its clock
//! paused. Ready tasks run in order; when every task waits, time jumps to
//! the next timer, so a run costs what happens in it, not how long it
//! lasts in simulated time (turmoil's fixed tick walks every host every
//! step, which made 100 hosts slower than real time). One seed derives one
//! random stream per component ([`rng`]); code the simulator runs reads
//! time only from tokio's clock or the injected wall clock ([`clock`]),
//! iterates in a fixed order and selects biased, so a seed and a commit
//! reproduce a run bit for bit ([`trace`] fingerprints it).
//!
//! Modules:
//! - [`world`]: the cluster and the order of a run (apply, converge, faults,
//!   converge, judge, tear down);
//! - [`faults`]: the fault profiles, planned from the seed;
//! - [`apiclient`]: each component's link to the API (partitions, latency,
//!   tracing);
//! - [`kubelet`], [`plugins`], [`workloads`]: the kubelet and CNI runtime
//!   (with the device manager handing out SR-IOV VFs), the non-Spur
//!   plugins, the scheduler and workload controllers;
//! - [`dataplane`]: the L2/L3 model answering reachability and multicast
//!   (OVS bridges, macvlans, SR-IOV embedded switches, fabric segments);
//! - [`invariants`]: what must hold after every step and at quiescence;
//! - [`report`]: facts read without disturbing the run, and the report in
//!   the harness's shape;
//! - [`scale`]: the synthetic cluster of the bench;
//! - [`clock`], [`rng`], [`trace`]: simulated time, randomness, the trace.
//!
//! What does not live here: Spur's own logic — the agent, the controller
//! and the domain rules are the production crates, run unchanged.

pub mod apiclient;
pub mod clock;
pub mod dataplane;
pub mod faults;
pub mod invariants;
pub mod kubelet;
pub mod plugins;
pub mod report;
pub mod rng;
pub mod scale;
pub mod trace;
pub mod workloads;
pub mod world;
