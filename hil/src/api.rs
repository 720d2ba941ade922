//! The cluster side of a run: the embedded Kubernetes API server with
//! Spur's admission hooks and CRDs (the NetworkAttachmentDefinition CRD
//! comes with the server), served over TCP for the agents and
//! kubectl; Node objects; applying manifests as `kubectl apply` would
//! (with the harness playing the scheduler and the workload controllers);
//! Pod status; pool usage; and the IPAM leak check.
//!
//! Pure decisions (placement, Pods of workloads, kubeconfig text, status
//! bodies, timestamps) are plain functions with unit tests; the rest is
//! thin async I/O against a `kube::Client`.
//!
//! What does not live here: the lab, CNI calls, probes, and the order of a
//! run ([`crate::run`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::discovery::Scope;
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::{json, Value};
use spur_core::ipamblock::{IPAMBlock, OwnerKind};
use spur_core::ippool::IPPool;
use spur_kubeapi::{ApiServer, ServiceRef};
use spur_testbed::{Manifest, ObjectRef, PodRef, PoolReport, Rejection};

/// HTTP codes by which the API refuses an object (a result of the run,
/// recorded in the report, not an error).
pub const REFUSAL_CODES: &[u16] = &[400, 403, 422];

/// A failure talking to the API server or applying a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server cannot listen.
    #[error("the API server cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A request failed.
    #[error("{doing}: {source}")]
    Request {
        /// What the run was doing.
        doing: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A manifest cannot be applied for a reason other than a refusal.
    #[error("{location}: {reason}")]
    Manifest {
        /// `FILE, document N (KIND NS/NAME)`.
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// A built-in object (CRD, Node) is refused or malformed.
    #[error("{0}")]
    Setup(String),
}

fn req(doing: impl Into<String>) -> impl FnOnce(kube::Error) -> ApiError {
    let doing = doing.into();
    move |source| ApiError::Request { doing, source }
}

/// A kubeconfig pointing kubectl (and the agents) at `server`.
pub fn kubeconfig_text(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: spur-hil\n  cluster:\n    server: {server}\n\
         contexts:\n- name: spur-hil\n  context:\n    cluster: spur-hil\n    user: spur-hil\n    namespace: default\n\
         current-context: spur-hil\nusers:\n- name: spur-hil\n  user: {{}}\n"
    )
}

/// The embedded API server of a run.
pub struct Cluster {
    /// The server (shared state; clones share it).
    pub server: ApiServer,
    /// An in-process client of it.
    pub client: Client,
    /// Its URL on the management network.
    pub url: String,
    /// The kubeconfig file pointing at it.
    pub kubeconfig: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    /// Starts the server on `listen` (port 0 picks one), with Spur's
    /// admission hooks and the pool usage reconciler
    /// (`spur_controller::usage`) running in this process, and writes
    /// `kubeconfig`: the cluster of tests and benchmarks that run no
    /// controller. See [`Cluster::start_for_controller`].
    pub async fn start(listen: IpAddr, kubeconfig: &Path) -> Result<Cluster, ApiError> {
        let mut cluster = Cluster::start_bare(listen, kubeconfig, true).await?;
        // The controller's pool-usage reconciler, so IPPool status.usage is
        // filled as in a cluster with Spur.
        let usage_client = cluster.client.clone();
        cluster.tasks.push(tokio::spawn(async move {
            let never = std::future::pending::<()>();
            if let Err(e) = spur_controller::usage::run_usage(usage_client, never).await {
                tracing::error!(error = %e, "the pool usage reconciler stopped");
            }
        }));
        Ok(cluster)
    }

    /// Starts the server for a run with the real `spur-controller`: Spur's
    /// CRDs, no admission or reconciler of its own (the controller's
    /// webhook and loops provide them once [`Cluster::route_webhook`] and
    /// [`install_webhook_objects`] are done).
    pub async fn start_for_controller(
        listen: IpAddr,
        kubeconfig: &Path,
    ) -> Result<Cluster, ApiError> {
        Cluster::start_bare(listen, kubeconfig, false).await
    }

    /// The server on `listen` with BOOKMARK events every 10 s, Spur's
    /// CRDs, and (`in_process_admission`) Spur's admission hooks.
    async fn start_bare(
        listen: IpAddr,
        kubeconfig: &Path,
        in_process_admission: bool,
    ) -> Result<Cluster, ApiError> {
        let server = ApiServer::in_memory();
        if in_process_admission {
            spur_controller::admission::install_embedded(server.store().admission_mut());
        }
        let addr = SocketAddr::new(listen, 0);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ApiError::Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ApiError::Listen { addr, source })?;
        let url = format!("http://{local}");
        let serving = server.clone();
        let serve = tokio::spawn(async move {
            if let Err(e) = serving.serve_tcp(listener).await {
                tracing::error!(error = %e, "the API server stopped serving");
            }
        });
        let ticking = server.clone();
        let bookmarks = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                ticking.send_bookmarks();
            }
        });
        std::fs::write(kubeconfig, kubeconfig_text(&url)).map_err(|source| ApiError::Write {
            path: kubeconfig.to_path_buf(),
            source,
        })?;
        let client = Client::new(server.service(), "default");
        let cluster = Cluster {
            server,
            client,
            url,
            kubeconfig: kubeconfig.to_path_buf(),
            tasks: vec![serve, bookmarks],
        };
        cluster.install_crds().await?;
        Ok(cluster)
    }

    /// Sends the calls of the webhook Service of deploy/controller.yaml
    /// (kube-system/spur-webhook, port 443) to `addr`, where the lab's
    /// controller serves: the lab has no Service network, so this plays
    /// kube-proxy for that one Service.
    pub fn route_webhook(&self, addr: SocketAddr) {
        self.server.set_service_resolver(move |svc: &ServiceRef| {
            (svc.namespace == WEBHOOK_SERVICE_NAMESPACE
                && svc.name == WEBHOOK_SERVICE_NAME
                && svc.port == WEBHOOK_SERVICE_PORT)
                .then_some(addr)
        });
    }

    /// Installs Spur's CRDs (IPPool, IPAMBlock); the server has the
    /// NetworkAttachmentDefinition CRD from the start. One already served
    /// is fine.
    async fn install_crds(&self) -> Result<(), ApiError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in [IPPool::crd(), IPAMBlock::crd()] {
            let name = crd.name_any();
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(req(format!("installing the CRD {name}"))(e)),
            }
        }
        Ok(())
    }
}

/// The controller's manifests, whose webhook Service and
/// ValidatingWebhookConfiguration a run installs as a cluster would.
const CONTROLLER_MANIFEST: &str = include_str!("../../deploy/controller.yaml");
/// Namespace of the webhook Service in [`CONTROLLER_MANIFEST`].
const WEBHOOK_SERVICE_NAMESPACE: &str = "kube-system";
/// Name of the webhook Service in [`CONTROLLER_MANIFEST`].
const WEBHOOK_SERVICE_NAME: &str = "spur-webhook";
/// Port of the webhook Service in [`CONTROLLER_MANIFEST`].
const WEBHOOK_SERVICE_PORT: u16 = 443;
/// The webhook that validates IPPools, in [`CONTROLLER_MANIFEST`].
const IPPOOL_WEBHOOK: &str = "ippools.spur.dev";

/// The objects of deploy/controller.yaml a run needs: the webhook Service
/// and the ValidatingWebhookConfiguration (caBundle empty: the controller
/// fills it). The Deployment is played by the lab's controller process.
pub fn webhook_objects() -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(CONTROLLER_MANIFEST) {
        let v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| ApiError::Setup(format!("deploy/controller.yaml: {e}")))?;
        let kind = v["kind"].as_str().unwrap_or_default();
        if kind == "Service" || kind == "ValidatingWebhookConfiguration" {
            out.push(v);
        }
    }
    if out.len() != 2 {
        return Err(ApiError::Setup(format!(
            "deploy/controller.yaml: expected the webhook Service and ValidatingWebhookConfiguration, found {} of them",
            out.len()
        )));
    }
    Ok(out)
}

/// Creates [`webhook_objects`] in the API.
pub async fn install_webhook_objects(client: &Client) -> Result<(), ApiError> {
    let mut applier = Applier {
        client: client.clone(),
        kinds: HashMap::new(),
    };
    for obj in webhook_objects()? {
        let what = format!(
            "{} {}",
            obj["kind"].as_str().unwrap_or_default(),
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        match applier.apply(&obj).await {
            Ok(Applied::Stored(_)) => {}
            Ok(Applied::Refused(reason)) | Err(reason) => {
                return Err(ApiError::Setup(format!(
                    "deploy/controller.yaml: {what}: {reason}"
                )))
            }
        }
    }
    Ok(())
}

/// An IPPool Spur's admission refuses (its range ends before it starts);
/// sent as a dry run, it shows whether the controller's webhook answers.
fn probe_pool() -> Value {
    json!({
        "apiVersion": "spur.dev/v1beta1",
        "kind": "IPPool",
        "metadata": {"name": "spur-hil-webhook-probe"},
        "spec": {
            "ipRanges": [{"start": "192.0.2.20", "end": "192.0.2.10"}],
            "subnetInfo": {"gateway": "192.0.2.1", "prefixLength": 24},
        },
    })
}

/// Whether the controller's admission webhook decides IPPool writes: a
/// dry-run create of an invalid pool is refused by it. `Err` carries what
/// the API said meanwhile (e.g. that it could not call the webhook).
pub async fn webhook_answers(client: &Client) -> Result<bool, String> {
    let ar = ApiResource::erase::<IPPool>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let pool: DynamicObject =
        serde_json::from_value(probe_pool()).map_err(|e| format!("the probe pool: {e}"))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&params, &pool).await {
        Err(kube::Error::Api(s))
            if s.code < 500
                && s.message
                    .contains(&format!("admission webhook \"{IPPOOL_WEBHOOK}\" denied")) =>
        {
            Ok(true)
        }
        Err(e) => Err(e.to_string()),
        Ok(_) => Err("an invalid IPPool was accepted: the webhook is not consulted".into()),
    }
}

/// A Node object for a testbed node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its Pod CIDR.
    pub pod_cidr: ipnet::IpNet,
    /// Its management address (`InternalIP`).
    pub address: IpAddr,
}

/// The Node object of `node` (ready, with its Pod CIDR and address).
pub fn node_object(node: &NodeInfo) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
            },
        },
        "spec": {"podCIDR": node.pod_cidr.to_string(), "podCIDRs": [node.pod_cidr.to_string()]},
    })
}

/// The status of a ready Node.
pub fn node_status(node: &NodeInfo, now: &str) -> Value {
    json!({"status": {
        "addresses": [
            {"type": "InternalIP", "address": node.address.to_string()},
            {"type": "Hostname", "address": node.name},
        ],
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "spur-hil node", "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "nodeInfo": {"kubeletVersion": "spur-hil", "operatingSystem": "linux",
                     "architecture": std::env::consts::ARCH},
    }})
}

/// Creates the Node objects of the testbed.
pub async fn create_nodes(client: &Client, nodes: &[NodeInfo]) -> Result<(), ApiError> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let now = rfc3339(SystemTime::now());
    for n in nodes {
        let obj = serde_json::from_value(node_object(n))
            .map_err(|e| ApiError::Setup(format!("Node {}: {e}", n.name)))?;
        let doing = format!("creating Node {}", n.name);
        api.create(&PostParams::default(), &obj)
            .await
            .map_err(req(&doing))?;
        api.patch_status(
            &n.name,
            &PatchParams::default(),
            &Patch::Merge(node_status(n, &now)),
        )
        .await
        .map_err(req(doing))?;
    }
    Ok(())
}

pub use spur_testbed::workloads::{workload_pods, Placement};

/// What applying the manifests did.
#[derive(Debug, Clone, Default)]
pub struct ApplyOutcome {
    /// Objects created or updated (workload Pods included).
    pub applied: usize,
    /// Objects the API refused.
    pub rejected: Vec<Rejection>,
    /// Every Pod created, in creation order, with its node (`None`:
    /// placed nowhere).
    pub pods: Vec<(PodRef, Option<String>)>,
}

/// How one object fared.
enum Applied {
    /// Stored; the stored object.
    Stored(Value),
    /// Refused with this message.
    Refused(String),
}

/// Applies objects as `kubectl apply` would: create, or merge-patch when
/// the object exists.
struct Applier {
    client: Client,
    kinds: HashMap<(String, String), (ApiResource, Scope)>,
}

impl Applier {
    async fn resource(
        &mut self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, Scope), String> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.kinds.get(&key) {
            return Ok(r.clone());
        }
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| {
                format!(
                    "the API server does not serve kind {kind} of apiVersion {api_version}: {e}"
                )
            })?;
        self.kinds.insert(key, (ar.clone(), caps.scope.clone()));
        Ok((ar, caps.scope))
    }

    async fn apply(&mut self, obj: &Value) -> Result<Applied, String> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let (ar, scope) = self.resource(api_version, kind).await?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let api: Api<DynamicObject> = match scope {
            Scope::Namespaced => {
                let ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                Api::namespaced_with(self.client.clone(), ns, &ar)
            }
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
        };
        let dynamic: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(|e| format!("not an object: {e}"))?;
        let created = api.create(&PostParams::default(), &dynamic).await;
        let result = match created {
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Exists: update it with what the manifest says, as apply does.
                api.patch(&name, &PatchParams::default(), &Patch::Merge(obj))
                    .await
            }
            other => other,
        };
        match result {
            Ok(stored) => serde_json::to_value(stored)
                .map(Applied::Stored)
                .map_err(|e| e.to_string()),
            Err(kube::Error::Api(s)) if REFUSAL_CODES.contains(&s.code) => {
                Ok(Applied::Refused(s.message.clone()))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `manifests/FILE, document N (KIND NS/NAME)`.
fn location(m: &Manifest) -> String {
    format!(
        "{}, document {} ({})",
        m.file.display(),
        m.document,
        m.describe()
    )
}

fn pod_ref(obj: &Value) -> PodRef {
    PodRef::new(
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

/// Applies `manifests` in order. Pods without a node are placed
/// round-robin over `nodes`; workloads get their Pods right after they
/// are stored. A refusal (HTTP 400/403/422) is recorded; any other failure
/// is an error naming the manifest.
pub async fn apply_manifests(
    client: &Client,
    manifests: &[Manifest],
    nodes: &[String],
) -> Result<ApplyOutcome, ApiError> {
    let mut applier = Applier {
        client: client.clone(),
        kinds: HashMap::new(),
    };
    let mut placement = Placement::new(nodes.to_vec());
    let mut out = ApplyOutcome::default();
    for m in manifests {
        let mut obj = m.object.clone();
        let is_pod = m.is_builtin("Pod");
        let node = if is_pod {
            placement.place(&mut obj)
        } else {
            None
        };
        let fail = |reason: String| ApiError::Manifest {
            location: location(m),
            reason,
        };
        match applier.apply(&obj).await.map_err(fail)? {
            Applied::Refused(reason) => out.rejected.push(Rejection {
                object: m.object_ref(),
                reason,
            }),
            Applied::Stored(stored) => {
                out.applied += 1;
                if is_pod {
                    out.pods.push((pod_ref(&obj), node));
                }
                let uid = stored
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                for mut pod in workload_pods(&obj, uid, nodes) {
                    let node = placement.place(&mut pod);
                    let pref = pod_ref(&pod);
                    match applier
                        .apply(&pod)
                        .await
                        .map_err(|reason| ApiError::Manifest {
                            location: format!("{} (its Pod {pref})", location(m)),
                            reason,
                        })? {
                        Applied::Stored(_) => {
                            out.applied += 1;
                            out.pods.push((pref, node));
                        }
                        Applied::Refused(reason) => out.rejected.push(Rejection {
                            object: ObjectRef::new("Pod", Some(&pref.namespace), &pref.name),
                            reason,
                        }),
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Reads a Pod.
pub async fn get_pod(client: &Client, pod: &PodRef) -> Result<Pod, ApiError> {
    Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .get(&pod.name)
        .await
        .map_err(req(format!("reading Pod {pod}")))
}

/// The status patch of a Pod whose sandbox is ready (`ready`) or failed
/// with `reason`; `pod_ips` from its primary interface.
pub fn pod_status(
    pod: &Pod,
    ready: bool,
    reason: Option<&str>,
    pod_ips: &[IpAddr],
    host_ip: IpAddr,
    now: &str,
) -> Value {
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let state = if ready {
                json!({"running": {"startedAt": now}})
            } else {
                json!({"waiting": {"reason": "ContainerCreating",
                                   "message": reason.unwrap_or("the Pod's network could not be set up")}})
            };
            json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                   "ready": ready, "started": ready, "restartCount": 0, "state": state})
        })
        .collect();
    let cond = |t: &str, ok: bool| {
        let mut c = json!({"type": t, "status": if ok { "True" } else { "False" },
                           "lastTransitionTime": now});
        if !ok {
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(reason.unwrap_or("the Pod's network could not be set up"));
        }
        c
    };
    let mut status = json!({
        "phase": if ready { "Running" } else { "Pending" },
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "startTime": now,
        "conditions": [cond("PodScheduled", true), cond("Initialized", true),
                       cond("ContainersReady", ready), cond("Ready", ready)],
        "containerStatuses": containers,
    });
    if let Some(first) = pod_ips.first() {
        status["podIP"] = json!(first.to_string());
        status["podIPs"] = json!(pod_ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect::<Vec<_>>());
    }
    json!({ "status": status })
}

/// Writes a Pod's status (and, when it failed, a `FailedCreatePodSandBox`
/// event), so `kubectl get pods` shows the outcome.
pub async fn set_pod_status(
    client: &Client,
    pod: &PodRef,
    ready: bool,
    reason: Option<&str>,
    pod_ips: &[IpAddr],
    host_ip: IpAddr,
) -> Result<(), ApiError> {
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
    let current = get_pod(client, pod).await?;
    let now = rfc3339(SystemTime::now());
    let body = pod_status(&current, ready, reason, pod_ips, host_ip, &now);
    api.patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .map_err(req(format!("writing the status of Pod {pod}")))?;
    if !ready {
        let events: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &pod.namespace,
            &ApiResource::erase::<k8s_openapi::api::core::v1::Event>(&()),
        );
        let event: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{}.", pod.name), "namespace": pod.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name,
                               "namespace": pod.namespace, "uid": current.uid()},
            "reason": "FailedCreatePodSandBox", "type": "Warning",
            "message": reason.unwrap_or("the Pod's network could not be set up"),
            "source": {"component": "spur-hil"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }))
        .map_err(|e| ApiError::Setup(format!("an Event of Pod {pod}: {e}")))?;
        events
            .create(&PostParams::default(), &event)
            .await
            .map_err(req(format!("recording the failure of Pod {pod}")))?;
    }
    Ok(())
}

/// Every IPPool and IPAMBlock.
async fn pools_and_blocks(client: &Client) -> Result<(Vec<IPPool>, Vec<IPAMBlock>), ApiError> {
    let pools = Api::<IPPool>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(req("listing IPPools"))?
        .items;
    let blocks = Api::<IPAMBlock>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(req("listing IPAMBlocks"))?
        .items;
    Ok((pools, blocks))
}

/// Every IPPool.
pub async fn list_pools(client: &Client) -> Result<Vec<IPPool>, ApiError> {
    Ok(pools_and_blocks(client).await?.0)
}

/// Pool usage as the API shows it, once the usage reconciler has caught
/// up with the blocks (every pool's `status.usage` equals what the blocks
/// say), polling until `timeout`. Returns the reports and, when it did not
/// catch up, one problem per pool that lags.
pub async fn settled_pool_usage(
    client: &Client,
    timeout: Duration,
) -> Result<(Vec<PoolReport>, Vec<String>), ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (pools, blocks) = pools_and_blocks(client).await?;
        let want = spur_controller::usage::compute_usage(&pools, &blocks);
        let mut lagging = Vec::new();
        let mut reports = Vec::new();
        for p in &pools {
            let name = p.name_any();
            let stored = spur_controller::usage::stored_usage(p);
            let expected = want.get(&name).copied();
            if stored != expected {
                lagging.push(format!(
                    "IPPool {name}: status.usage is {} but its IPAMBlocks say {}",
                    stored.map_or("unset".to_string(), |u| format!(
                        "{}/{} used",
                        u.used, u.total
                    )),
                    expected.map_or("nothing".to_string(), |u| format!(
                        "{}/{} used",
                        u.used, u.total
                    )),
                ));
            }
            let shown = stored.or(expected).unwrap_or_default();
            reports.push(PoolReport {
                name,
                total: u64::try_from(shown.total).unwrap_or(0),
                used: u64::try_from(shown.used).unwrap_or(0),
            });
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        if lagging.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok((reports, lagging));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Allocations of IPAMBlocks still held by Pod owners in `pods` (after
/// every Pod was deleted, each is a leak), one sentence each.
/// StatefulSet owners are left out: their addresses outlive their Pods by
/// design.
pub async fn leaked_allocations(
    client: &Client,
    pods: &BTreeSet<PodRef>,
) -> Result<Vec<String>, ApiError> {
    let (_, blocks) = pools_and_blocks(client).await?;
    Ok(leaks_in(&blocks, pods))
}

/// The pure part of [`leaked_allocations`].
pub fn leaks_in(blocks: &[IPAMBlock], pods: &BTreeSet<PodRef>) -> Vec<String> {
    let mut out = Vec::new();
    for b in blocks {
        for a in &b.spec.allocations {
            let o = &a.owner;
            if o.kind != OwnerKind::Pod {
                continue;
            }
            let pod = PodRef::new(&o.namespace, &o.name);
            if pods.contains(&pod) {
                out.push(format!(
                    "leak: IPAMBlock {} (pool {}, {}) still holds offset {} for Pod {pod} \
                     interface {} (container {}) after its CNI DEL",
                    b.name_any(),
                    b.spec.pool,
                    b.spec.cidr,
                    a.offset,
                    o.interface,
                    o.container_id
                ));
            }
        }
    }
    out
}

/// Which pool's ranges hold `ip`, by pool name.
pub fn pool_of(
    layouts: &BTreeMap<String, spur_core::ippool::PoolLayout>,
    ip: IpAddr,
) -> Option<String> {
    layouts
        .iter()
        .find(|(_, l)| spur_core::ipamreq::in_pool_ranges(l, ip))
        .map(|(n, _)| n.clone())
}

/// `t` as RFC 3339 in UTC with second precision (`2026-11-24T03:01:46Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use spur_core::ipamblock::{BlockAllocation, IPAMBlockSpec, Owner};

    #[test]
    fn the_webhook_objects_are_those_of_deploy() {
        let objs = webhook_objects().unwrap();
        let svc = objs.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(svc["metadata"]["namespace"], WEBHOOK_SERVICE_NAMESPACE);
        assert_eq!(svc["metadata"]["name"], WEBHOOK_SERVICE_NAME);
        assert_eq!(svc["spec"]["ports"][0]["port"], WEBHOOK_SERVICE_PORT);
        let vwc = objs
            .iter()
            .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
            .unwrap();
        let hooks = vwc["webhooks"].as_array().unwrap();
        assert!(hooks.iter().any(|h| h["name"] == IPPOOL_WEBHOOK));
        for h in hooks {
            let to = &h["clientConfig"]["service"];
            assert_eq!(to["namespace"], WEBHOOK_SERVICE_NAMESPACE);
            assert_eq!(to["name"], WEBHOOK_SERVICE_NAME);
        }
    }

    #[test]
    fn the_probe_pool_is_refused_by_spurs_rules() {
        use spur_controller::admission::{hooks, Operation, Request};
        let pool = probe_pool();
        let hook = hooks().into_iter().find(|h| h.plural == "ippools").unwrap();
        let request = Request {
            operation: Operation::Create,
            subresource: None,
            namespace: "",
            name: "spur-hil-webhook-probe",
            object: Some(&pool),
            old_object: None,
        };
        let err = (hook.check)(&request, &|_: &str, _: &str| Vec::new()).unwrap_err();
        assert!(err.to_string().contains("spur-hil-webhook-probe"), "{err}");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_489_306);
        assert_eq!(rfc3339(t), "2026-11-24T03:01:46Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn failed_pods_show_why() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap();
        let ip: IpAddr = "100.64.0.10".parse().unwrap();
        let s = pod_status(&pod, false, Some("vlan 5000 is out of range"), &[], ip, "T");
        assert_eq!(s["status"]["phase"], "Pending");
        assert_eq!(
            s["status"]["containerStatuses"][0]["state"]["waiting"]["message"],
            "vlan 5000 is out of range"
        );
        assert_eq!(s["status"]["conditions"][3]["status"], "False");
        assert!(s["status"].get("podIP").is_none());
        let pod_ip: IpAddr = "10.244.0.5".parse().unwrap();
        let s = pod_status(&pod, true, None, &[pod_ip], ip, "T");
        assert_eq!(s["status"]["phase"], "Running");
        assert_eq!(s["status"]["podIP"], "10.244.0.5");
        assert_eq!(s["status"]["containerStatuses"][0]["ready"], true);
    }

    #[test]
    fn leaks_are_pod_owned_allocations_of_our_pods() {
        let block = |allocs: Vec<BlockAllocation>| {
            IPAMBlock::new(
                "b1",
                IPAMBlockSpec {
                    pool: "p".into(),
                    cidr: "10.0.0.0/26".into(),
                    node: "a".into(),
                    allocations: allocs,
                },
            )
        };
        let ours: BTreeSet<PodRef> = [PodRef::new("default", "web")].into();
        let blocks = [block(vec![
            BlockAllocation {
                offset: 2,
                owner: Owner::pod("default", "web", "c1", "eth1"),
            },
            BlockAllocation {
                offset: 3,
                owner: Owner::pod("default", "other", "c2", "eth1"),
            },
            BlockAllocation {
                offset: 4,
                owner: Owner::stateful_set("default", "web", 0, "eth1", "web", "c3"),
            },
        ])];
        let leaks = leaks_in(&blocks, &ours);
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        assert!(
            leaks[0].contains("Pod default/web interface eth1"),
            "{}",
            leaks[0]
        );
        assert!(leaks[0].contains("offset 2"), "{}", leaks[0]);
    }

    #[test]
    fn kubeconfigs_point_at_the_server() {
        let k = kubeconfig_text("http://100.64.0.1:41234");
        assert!(k.contains("server: http://100.64.0.1:41234"));
        assert!(k.contains("current-context: spur-hil"));
    }
}
