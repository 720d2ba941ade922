//! `spur-controller`: the cluster-wide bookkeeping of Spur, as a library.
//!
//! What lives here: the loops the (leader-elected) controller runs against
//! the Kubernetes API. [`usage`]: every IPPool's `status.usage`, computed
//! from the IPAMBlocks and written by this one writer, only when it
//! changes. [`admission`]: which IPPools and NetworkAttachmentDefinitions
//! the API must refuse, as pure functions and as validating hooks an API
//! server (the webhook, the embedded test server, the simulator) calls.
//! [`gc`]: the address garbage collector, which releases allocations whose
//! Pod or StatefulSet ordinal is gone. [`poolstatus`]: the IPPool
//! conditions (`Exhausted`, `Valid`) and the Events the usage loop writes
//! and publishes with them. [`nodeipam`]: Nodes' `spec.podCIDRs` when
//! NodeIPAM is enabled. [`webhook`]: the HTTPS validating admission webhook
//! (AdmissionReview v1 over rustls/hyper) and the certificate it
//! bootstraps. [`leader`]: leader election on a Lease. [`metrics`]: the
//! Prometheus metrics and the health endpoints.
//!
//! [`replica`]: one controller replica minus its process edges — the
//! election, the pool gauges and the leader-only loops started and stopped
//! with leadership, and the Lease released on stop ([`replica::run_replica`];
//! this moved here from the binary so the simulator runs the same code).
//! [`clock`]: the wall-clock boundary ([`clock::WallClock`]) every
//! timestamp the controller writes goes through. [`watchbackoff`]: the
//! watches' seeded backoff (kube-runtime's schedule, reproducible jitter).
//!
//! What does not: the rules themselves (pool layouts, block math, what an
//! IPAM request means) live in `spur-core`, which this crate calls for
//! every decision; per-node allocation I/O lives in the agent (`spur-node`);
//! the process edges (flags, config file, kubeconfig, the metrics HTTP
//! server, the webhook, signals) live in `src/bin/spur-controller.rs`.

pub mod admission;
pub mod clock;
pub mod gc;
pub mod leader;
pub mod metrics;
pub mod nodeipam;
pub mod poolstatus;
pub mod replica;
pub mod usage;
pub mod watchbackoff;
pub mod webhook;
