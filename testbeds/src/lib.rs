//! `spur-testbed`: Spur's testbeds as data.
//!
//! What lives here:
//!
//! - the testbed directory format (`testbed.yaml`, `manifests/*.yaml`,
//!   `expect.yaml`; the contract is `testbed-format.md`): loading a
//!   directory into a [`Testbed`], strictly: unknown keys and broken
//!   references between the files are errors ([`LoadError`]) naming the
//!   file and the key;
//! - the [`Report`] both runners produce, as JSON and as a human-readable
//!   summary;
//! - the checker: [`check()`](fn@check) says which expectations a report breaks, and
//!   [`compare_reports`] how the simulator's and the harness's reports of
//!   one testbed differ.
//!
//! What does not: running a testbed. Nothing here starts Pods, sends a
//! packet or talks to an API server; the simulator (`spur-sim`) and the
//! hardware harness (`spur-hil`) crates do that, and both use this crate
//! to read the directory and to judge their results.
//!
//! ```no_run
//! use spur_testbed::{check, Report, Runner, Testbed};
//! let testbed = Testbed::load("testbeds/seed-example").map_err(|e| e.to_string())?;
//! // A runner fills the report in; an empty one fails every expectation.
//! let mut report = Report::new(testbed.name.clone(), Runner::Sim);
//! report.failures = check(&report, &testbed.expect)
//!     .iter()
//!     .map(ToString::to_string)
//!     .collect();
//! print!("{report}");
//! # Ok::<(), String>(())
//! ```

pub mod check;
pub mod error;
pub mod expect;
pub mod load;
pub mod manifest;
pub mod refs;
pub mod report;
pub mod spec;
pub mod sriov;
pub mod workloads;

pub use check::{check, compare_reports, Failure};
pub use error::{LoadError, LoadErrors};
pub use expect::{
    Expect, InterfaceExpect, MulticastExpect, PodExpect, PoolExpect, Reachability, RejectedExpect,
};
pub use load::{SpurConfig, Testbed};
pub use manifest::{parse_manifests, Manifest};
pub use refs::{InterfaceRef, ObjectRef, PodRef};
pub use report::{
    InterfaceReport, MulticastReport, PodReport, PoolReport, Rejection, Report, Runner,
};
pub use spec::{CniMode, Node, Port, Segment, SriovPf, TestbedSpec, VlanRange};
pub use workloads::{workload_pods, Placement};
