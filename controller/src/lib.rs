//! `spur-controller`: the cluster-wide bookkeeping of Spur, as a library.
//!
//! What lives here: the loops the (leader-elected) controller runs against
//! the Kubernetes API. Today that is [`usage`]: every IPPool's
//! `status.usage`, computed from the IPAMBlocks and written by this one
//! writer, only when it changes. And [`admission`]: which IPPools and
//! NetworkAttachmentDefinitions the API must refuse, as pure functions and
//! as validating hooks an API server (the webhook later, the embedded test
//! server today) calls. And [`gc`]: the address garbage collector, which
//! releases allocations whose Pod or StatefulSet ordinal is gone.
//! And [`poolstatus`]: the IPPool conditions (`Exhausted`, `Valid`) and
//! the Events the usage loop writes and publishes with them.
//! And [`nodeipam`]: Nodes' `spec.podCIDRs` when NodeIPAM is enabled.
//! And [`webhook`]: the HTTPS validating admission webhook (AdmissionReview
//! v1 over rustls/hyper) and the certificate it bootstraps.
//! And [`leader`]: leader election on a Lease, and [`metrics`]: the
//! Prometheus metrics and the health endpoints of the `spur-controller`
//! binary (`src/bin/spur-controller.rs`).
//!
//! What does not: the rules themselves (pool layouts, block math, what an
//! IPAM request means) live in `spur-core`, which this crate calls for
//! every decision; per-node allocation I/O lives in the agent (`spur-node`);
//! the binary's wiring (flags, config file, which loops run while leading)
//! lives in `src/bin/spur-controller.rs`.

pub mod admission;
pub mod gc;
pub mod leader;
pub mod metrics;
pub mod nodeipam;
pub mod poolstatus;
pub mod usage;
pub mod webhook;
