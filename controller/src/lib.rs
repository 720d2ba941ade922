//! `spur-controller`: the cluster-wide bookkeeping of Spur, as a library.
//!
//! What lives here: the loops the (leader-elected) controller runs against
//! the Kubernetes API. Today that is [`usage`]: every IPPool's
//! `status.usage`, computed from the IPAMBlocks and written by this one
//! writer, only when it changes.
//!
//! What does not: the rules themselves (pool layouts, block math, what an
//! IPAM request means) live in `spur-core`, which this crate calls for
//! every decision; per-node allocation I/O lives in the agent (`spur-node`);
//! the `spur-controller` binary, its config file, leader election and
//! admission webhooks come later.

pub mod usage;
