//! `spur-kubeapi`: an embedded, in-memory Kubernetes API server.
//!
//! No real kube-apiserver runs on Spur's development machines, yet the agent
//! and controller must be exercised through kube-rs's real client code
//! paths, the simulator needs a cluster it controls, and a person trying
//! Spur on one machine needs a cluster stand-in. This crate is that stand-in,
//! usable three ways:
//!
//! - in process, as a `tower::Service` for `kube::Client::new`
//!   ([`ApiServer::service`]);
//! - on a loopback TCP address or a unix socket for kubectl
//!   (the `spur-kubeapi` binary, [`ApiServer::serve_tcp`]);
//! - under simulated time: it reads no clock of its own ([`store::Clock`] is
//!   injected), starts no threads or timers, and draws names, UIDs and
//!   faults from seeded RNGs, so the same requests in the same order get the
//!   same answers.
//!
//! What lives here: the REST protocol (discovery, CRUD, patch, watch,
//! tables), the object store with resourceVersions, finalizers, cascading
//! deletion and a bounded event log, CRD-driven custom resources, in-process
//! admission, validating admission webhooks called over HTTPS
//! ([`webhook`]), fault injection and the state file. What does not: any Spur
//! logic (admission functions are registered by the controller), scheduling
//! or kubelet behaviour (the simulator and harness play those).

pub mod admission;
pub mod error;
pub mod faults;
pub mod http;
pub mod patch;
pub mod persist;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod webhook;

pub use admission::{Admission, AdmissionRequest, Denial, Operation};
pub use error::ApiError;
pub use server::{ApiServer, ApiService, ResourceStats};
pub use store::{Clock, ManualClock, Store, SystemClock};
pub use webhook::ServiceRef;
