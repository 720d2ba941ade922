//! What the agent reads from and writes to the Kubernetes API besides IPAM:
//! its node's Pods, NetworkAttachmentDefinitions, Namespaces, and the
//! Pods' network-status annotation.
//!
//! [`Cluster`] is the boundary (the simulator supplies its own);
//! [`KubeCluster`] implements it with reflectors (watch-fed caches), so the
//! ADD path reads no object from the API: the Pod, its Namespace and the
//! NADs it selects are in memory. A Pod the reflector has not seen yet
//! (the kubelet may call ADD within milliseconds of the Pod's binding) is
//! read once with a GET.
//!
//! The reflectors restart their watches with a [`WatchBackoff`] seeded
//! from the seed given to [`KubeCluster::start_with`] (the simulator's
//! per-agent seed), never with kube-runtime's thread-RNG jitter. The
//! reflector stores are hash maps with a random order per instance:
//! nothing here iterates them (lookups by key only); code that ever lists
//! them must sort before acting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use spur_core::attach::Nad;

use crate::watch_backoff::WatchBackoff;

/// The Pod facts the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// Set once the Pod is being deleted.
    pub deleting: bool,
}

impl PodInfo {
    fn from_pod(p: &Pod) -> PodInfo {
        PodInfo {
            uid: p.metadata.uid.clone(),
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            annotations: p.metadata.annotations.clone().unwrap_or_default(),
            deleting: p.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// Why the API could not answer.
#[derive(Debug, thiserror::Error)]
#[error("Kubernetes API: {what}: {source}")]
pub struct ClusterError {
    /// What the agent was doing.
    pub what: String,
    /// The client's error.
    #[source]
    pub source: kube::Error,
}

/// The agent's view of the cluster.
pub trait Cluster: Send + Sync {
    /// The Pod, from the cache or (when the cache has not seen it) the API.
    /// `Ok(None)`: it does not exist.
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ClusterError>>;

    /// The Pod as the cache has it (no API request): `None` when the cache
    /// has not seen it, which a caller about to free something must
    /// confirm with [`Cluster::pod_fresh`].
    fn cached_pod(&self, namespace: &str, name: &str) -> Option<PodInfo>;

    /// The Pod as the API has it now (no cache): for decisions that free
    /// resources, which must not trust a cache that may lag.
    fn pod_fresh<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ClusterError>>;

    /// A NAD's `spec.config` and resource-name annotation (None: no such
    /// NAD).
    fn nad(&self, namespace: &str, name: &str) -> Option<Nad>;

    /// A Namespace's annotations (None: not known).
    fn namespace_annotations(&self, name: &str) -> Option<BTreeMap<String, String>>;

    /// Writes the Pod's `k8s.v1.cni.cncf.io/network-status` annotation.
    fn set_network_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        value: String,
    ) -> BoxFuture<'a, Result<(), ClusterError>>;

    /// True once every cache has listed once.
    fn is_ready(&self) -> bool;
}

/// The NetworkAttachmentDefinition resource.
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// The annotation holding a Pod's attachment results.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// [`Cluster`] over the Kubernetes API with reflectors.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    pods: Store<Pod>,
    nads: Store<DynamicObject>,
    namespaces: Store<Namespace>,
    ready: Arc<tokio::sync::watch::Sender<u8>>,
    tasks: Arc<Vec<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self.tasks.iter() {
                t.abort();
            }
        }
    }
}

const PODS: u8 = 1;
const NADS: u8 = 2;
const NAMESPACES: u8 = 4;
const ALL: u8 = PODS | NADS | NAMESPACES;

impl KubeCluster {
    /// Starts the reflectors (Pods of `node`, every NAD, every Namespace)
    /// on the current tokio runtime, their restart jitter random per
    /// process ([`KubeCluster::start_with`] without a seed).
    pub fn start(client: Client, node: &str) -> KubeCluster {
        KubeCluster::start_with(client, node, None)
    }

    /// Starts the reflectors (Pods of `node`, every NAD, every Namespace)
    /// on the current tokio runtime; their watches restart with a
    /// [`WatchBackoff`] whose jitter is drawn from `seed` (one sequence per
    /// reflector, derived from `seed` and the resource's name). `None`:
    /// random per process.
    pub fn start_with(client: Client, node: &str, seed: Option<u64>) -> KubeCluster {
        let ready = Arc::new(tokio::sync::watch::channel(0u8).0);
        let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (pods, w) = reflector::store::<Pod>();
        let t1 = spawn_reflector(
            "pods",
            watcher(Api::<Pod>::all(client.clone()), pod_cfg).reflect(w),
            ready.clone(),
            PODS,
            seed,
        );
        let ar = nad_resource();
        let w = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let nads = w.as_reader();
        let t2 = spawn_reflector(
            "network-attachment-definitions",
            watcher(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                watcher::Config::default(),
            )
            .reflect(w),
            ready.clone(),
            NADS,
            seed,
        );
        let (namespaces, w) = reflector::store::<Namespace>();
        let t3 = spawn_reflector(
            "namespaces",
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            )
            .reflect(w),
            ready.clone(),
            NAMESPACES,
            seed,
        );
        KubeCluster {
            client,
            pods,
            nads,
            namespaces,
            ready,
            tasks: Arc::new(vec![t1, t2, t3]),
        }
    }

    /// Waits until every reflector has listed once.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r & ALL == ALL).await;
    }
}

fn spawn_reflector<K, S>(
    what: &'static str,
    stream: S,
    ready: Arc<tokio::sync::watch::Sender<u8>>,
    bit: u8,
    seed: Option<u64>,
) -> tokio::task::AbortHandle
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    let backoff = WatchBackoff::for_watch(seed, what);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.backoff(backoff));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    ready.send_modify(|r| *r |= bit);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(resource = what, error = %e, "watch failed; retrying"),
            }
        }
    })
    .abort_handle()
}

impl Cluster for KubeCluster {
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ClusterError>> {
        Box::pin(async move {
            if let Some(p) = self.cached_pod(namespace, name) {
                return Ok(Some(p));
            }
            self.pod_fresh(namespace, name).await
        })
    }

    fn cached_pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.pods
            .get(&ObjectRef::new(name).within(namespace))
            .map(|p| PodInfo::from_pod(&p))
    }

    fn pod_fresh<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodInfo>, ClusterError>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            match tokio::time::timeout(Duration::from_secs(10), api.get_opt(name)).await {
                Ok(Ok(p)) => Ok(p.as_ref().map(PodInfo::from_pod)),
                Ok(Err(e)) => Err(ClusterError {
                    what: format!("reading Pod {namespace}/{name}"),
                    source: e,
                }),
                Err(_) => Err(ClusterError {
                    what: format!("reading Pod {namespace}/{name}"),
                    source: kube::Error::Service("no answer within 10s".into()),
                }),
            }
        })
    }

    fn nad(&self, namespace: &str, name: &str) -> Option<Nad> {
        let r = ObjectRef::new_with(name, nad_resource()).within(namespace);
        let obj = self.nads.get(&r)?;
        Some(Nad {
            config: obj
                .data
                .get("spec")
                .and_then(|s| s.get("config"))
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            resource_name: obj
                .annotations()
                .get(spur_core::nad::RESOURCE_NAME_ANNOTATION)
                .cloned(),
        })
    }

    fn namespace_annotations(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.namespaces.get(&ObjectRef::new(name))?;
        Some(ns.metadata.annotations.clone().unwrap_or_default())
    }

    fn set_network_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        value: String,
    ) -> BoxFuture<'a, Result<(), ClusterError>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let patch = json!({"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: value}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(|e| ClusterError {
                    what: format!("writing the network-status of Pod {namespace}/{name}"),
                    source: e,
                })
        })
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow() & ALL == ALL
    }
}
