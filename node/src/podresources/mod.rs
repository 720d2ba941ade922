//! Which devices the kubelet gave a Pod: a client of the kubelet's
//! PodResources gRPC API (v1, `unix:///var/lib/kubelet/pod-resources/kubelet.sock`).
//!
//! The SR-IOV path needs it: a Pod asks for a VF through an extended
//! resource (`intel.com/sriov_netdevice: 1`), the device plugin picks the VF,
//! and only the kubelet knows which one (the device ID is the VF's PCI
//! address). [`PodResources::devices`] answers that as [`PodDevices`]:
//! resource name to device IDs, over all of the Pod's containers.
//!
//! [`KubeletPodResources`] is the real client. It asks `Get` for the one Pod
//! and falls back to `List` when the kubelet does not serve `Get` (kubelets
//! before 1.27 do not have it; later ones gate it behind the
//! `KubeletPodResourcesGet` feature), remembering that so later calls go
//! straight to `List`. [`StaticPodResources`] is the in-memory stand-in for
//! tests and the simulator. [`server::PodResourcesServer`] serves the same
//! gRPC API on a unix socket (the hardware harness's kubelet stand-in, the
//! client's tests).
//!
//! No `protoc` and no build script: the messages in [`proto`] are written by
//! hand from the upstream `api.proto` (same field numbers and types) with
//! `prost`'s derive, and the two calls are issued through
//! `tonic::client::Grpc` the way generated code would.

mod client;
pub mod proto;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

pub use client::KubeletPodResources;

/// Where the kubelet serves the PodResources API.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// How long one [`KubeletPodResources::devices`] call may take by default
/// (connecting included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Pod's devices: resource name to device IDs, in the order the kubelet
/// lists them (containers in order, then devices in order), each ID once.
pub type PodDevices = BTreeMap<String, Vec<String>>;

/// Why the Pod's devices could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// Nothing at the socket path.
    #[error(
        "kubelet PodResources socket {} does not exist (is the kubelet running and \
         /var/lib/kubelet/pod-resources mounted into the agent?)",
        path.display()
    )]
    SocketMissing {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket exists but the connection failed.
    #[error("cannot connect to the kubelet PodResources socket {}: {reason}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The transport error and its causes.
        reason: String,
    },
    /// The kubelet answered the call with an error status.
    #[error(
        "kubelet PodResources {method} on {} failed: {code:?}: {message}",
        path.display()
    )]
    Rpc {
        /// The method (`Get`, `List`).
        method: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The call did not finish in time.
    #[error(
        "kubelet PodResources {method} on {} did not answer within {after:?}",
        path.display()
    )]
    Timeout {
        /// The method being called.
        method: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The configured timeout.
        after: Duration,
    },
    /// The kubelet does not list the Pod.
    #[error("Pod {namespace}/{pod} is not known to the kubelet's PodResources API")]
    PodNotFound {
        /// The Pod's namespace.
        namespace: String,
        /// The Pod's name.
        pod: String,
    },
}

/// The kubelet's record of the devices it assigned to Pods.
pub trait PodResources: Send + Sync {
    /// The devices of Pod `namespace/pod`, by resource name.
    /// [`PodResourcesError::PodNotFound`] when the kubelet does not know the
    /// Pod; an empty map when it knows the Pod but gave it no devices.
    fn devices<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
    ) -> BoxFuture<'a, Result<PodDevices, PodResourcesError>>;
}

/// The devices of one Pod as a [`PodDevices`] map: every container's device
/// IDs by resource name, in the kubelet's order, duplicates dropped.
/// Resources without device IDs are left out.
pub fn pod_devices(pod: &proto::PodResources) -> PodDevices {
    let mut out = PodDevices::new();
    for container in &pod.containers {
        for devices in &container.devices {
            if devices.device_ids.is_empty() {
                continue;
            }
            let ids = out.entry(devices.resource_name.clone()).or_default();
            for id in &devices.device_ids {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
    }
    out
}

/// In-memory [`PodResources`]: devices set by the caller (tests, the
/// simulator).
#[derive(Debug, Default)]
pub struct StaticPodResources {
    pods: Mutex<BTreeMap<(String, String), PodDevices>>,
}

impl StaticPodResources {
    /// An empty record: every Pod is unknown.
    pub fn new() -> StaticPodResources {
        StaticPodResources::default()
    }

    /// Records the devices of `namespace/pod`, replacing earlier ones.
    pub fn set(&self, namespace: &str, pod: &str, devices: PodDevices) {
        self.lock()
            .insert((namespace.to_string(), pod.to_string()), devices);
    }

    /// Forgets `namespace/pod`; returns its devices if it was recorded.
    pub fn remove(&self, namespace: &str, pod: &str) -> Option<PodDevices> {
        self.lock()
            .remove(&(namespace.to_string(), pod.to_string()))
    }

    /// Every recorded Pod, by (namespace, name), with its devices.
    pub fn snapshot(&self) -> BTreeMap<(String, String), PodDevices> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), PodDevices>> {
        // A panic while holding the lock cannot leave the map half-written
        // (each operation is one insert or remove): keep using it.
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PodResources for StaticPodResources {
    fn devices<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
    ) -> BoxFuture<'a, Result<PodDevices, PodResourcesError>> {
        let found = self
            .lock()
            .get(&(namespace.to_string(), pod.to_string()))
            .cloned();
        Box::pin(async move {
            found.ok_or_else(|| PodResourcesError::PodNotFound {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
            })
        })
    }
}
