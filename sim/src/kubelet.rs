//! The simulated kubelet of one node, with the container runtime's CNI
//! side (libcni's semantics): it watches its node's Pods and gives each a
//! sandbox — a network namespace, `eth0` from the primary CNI, then Spur —
//! exactly as the harness's kubelet stand-in does (`spur_hil::kubelet`):
//!
//! - native mode: one conflist `k8s-pod-network` (CNI 1.0.0), `ptp` +
//!   `host-local` for `eth0` and `spur` chained with the `ptp` result as
//!   `prevResult`; the agent writes the network-status annotation;
//! - multus mode: `eth0` from the same list without `spur`, then each
//!   element of the Pod's network selection delegated, in order, to the
//!   plugin its NetworkAttachmentDefinition names, a failure rolled back
//!   in reverse; on success the network-status annotation is written.
//!
//! Like kubelet, a failed ADD is followed by DEL of everything and the
//! namespace's removal, then a new sandbox (new container ID) after a
//! backoff with seeded jitter: quick for retryable errors (CNI code 11, the
//! agent down), growing up to [`RetryConfig::max`] for the others, with the
//! Pod reported not ready with the error meanwhile. A Pod with a
//! `deletionTimestamp` gets CNI DEL (libcni runs a conflist's DEL in
//! reverse: `spur`, then `ptp`), its namespace removed, then a DELETE with
//! grace period 0. A node reboot ([`Kubelet::node_rebooted`]) loses every
//! sandbox: new ones are made (new container IDs) once the agent answers.
//!
//! Extended resources (SR-IOV VFs) go through the kubelet's device
//! manager ([`Devices`], shared by every node's kubelet and the world):
//! before a Pod's first sandbox the kubelet admits it with the devices its
//! containers' limits ask for; a refusal leaves the Pod not ready with the
//! kubelet's message, without a sandbox and without retries (as kubelet's
//! admission failures are final). An admitted Pod's devices are listed in
//! the node's PodResources (`StaticPodResources`, in an order other than
//! PCI order, as a kubelet may list them) and, under Multus, passed as each
//! delegate's `deviceID` (`spur_hil::kubelet::multus::device_ids`); they
//! are released once the Pod is gone, after its sandbox's DEL.
//!
//! The kubelet's view ([`Kubelet::pods`]) and the log of every CNI call
//! ([`Kubelet::calls`]) are what the world reports and checks invariants
//! on. Everything is async on the caller's runtime: no threads, no
//! blocking; randomness from seeds only.
//!
//! What does not live here: the plugins ([`crate::plugins`]), scheduling
//! and workload controllers ([`crate::workloads`]), the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::GroupVersionKind;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde_json::{json, Value};
use spur_core::backoff::{jitter_rng, Backoff, RetryPolicy};
use spur_core::cniproto::{CniError, Command};
use spur_core::selection::{self, Naming, NETWORKS_ANNOTATION};
use spur_core::status::{self, NETWORK_STATUS_ANNOTATION};
use spur_core::Subject;
use spur_hil::kubelet::cni::plugin_config;
use spur_hil::kubelet::{multus, pod_netns_name, primary_conflist, Delegate};
use spur_node::podresources::StaticPodResources;
use spur_node::watch_backoff::{derive_seed, WatchBackoff};
use spur_testbed::sriov::{pod_requests, Allocation, DeviceManager};
use spur_testbed::{CniMode, PodRef};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::plugins::{
    sandbox_interfaces, CniTarget, PluginCall, Plugins, PrimaryIpam, SandboxHost,
};

/// Where `host-local` keeps its state (named in the primary conflist only).
const HOST_LOCAL_DIR: &str = "/var/lib/cni/networks";

/// How failed sandboxes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// First delay's bound after a retryable failure (code 11, agent down,
    /// API unreachable).
    pub quick_base: Duration,
    /// Largest delay after retryable failures.
    pub quick_max: Duration,
    /// First delay's bound after another failure.
    pub base: Duration,
    /// Largest delay after other failures.
    pub max: Duration,
    /// Failed sandboxes per Pod after which the kubelet stops trying (the
    /// Pod stays not ready with its last error); `None`: never stops.
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    /// Retryable: 1 s doubling to 5 s; others: 10 s doubling to 5 min (as
    /// kubelet's pod-sync backoff); never stops.
    fn default() -> Self {
        RetryConfig {
            quick_base: Duration::from_secs(1),
            quick_max: Duration::from_secs(5),
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            max_attempts: None,
        }
    }
}

/// What a kubelet needs to know about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    /// The node's name.
    pub node: String,
    /// How Spur is called.
    pub mode: CniMode,
    /// The node's pod CIDR (`eth0` addresses).
    pub pod_cidr: IpNet,
    /// The node's address (the Pods' `hostIP`).
    pub host_ip: IpAddr,
    /// This kubelet's seed (container IDs, MACs, jitter, watch backoff).
    pub seed: u64,
    /// Retries of failed sandboxes.
    pub retry: RetryConfig,
}

/// One CNI call the kubelet made, as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct CniCallRecord {
    /// When (simulated time).
    pub at: Instant,
    /// The Pod.
    pub pod: PodRef,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The verb.
    pub command: Command,
    /// The plugin's `type`.
    pub plugin: String,
    /// The network (`k8s-pod-network` or NAD `ns/name`).
    pub network: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// What the plugin answered.
    pub result: Result<Value, CniError>,
}

/// One network attached to a sandbox, with its ADD result.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachmentView {
    /// NAD `ns/name` or `k8s-pod-network`.
    pub network: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The ADD result (`None` until ADD succeeded).
    pub result: Option<Value>,
}

/// A Pod's current sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxView {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The namespace's name.
    pub netns: String,
    /// Its path (`CNI_NETNS`).
    pub netns_path: String,
    /// The Pod UID it was made for.
    pub pod_uid: String,
    /// Every network attached.
    pub ready: bool,
    /// The networks, primary first.
    pub attachments: Vec<AttachmentView>,
}

impl SandboxView {
    /// The interfaces inside the sandbox its CNI results name.
    pub fn interfaces(&self) -> BTreeSet<String> {
        self.attachments
            .iter()
            .filter_map(|a| a.result.as_ref())
            .flat_map(sandbox_interfaces)
            .collect()
    }

    /// The addresses of `eth0` (from the primary result).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.attachments
            .first()
            .and_then(|a| a.result.as_ref())
            .map(|r| {
                multus::result_ips(r)
                    .into_iter()
                    .map(|n| n.addr())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The kubelet's view of one Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// The Pod.
    pub pod: PodRef,
    /// Its UID.
    pub uid: String,
    /// It has a deletionTimestamp.
    pub terminating: bool,
    /// The current sandbox (`None`: none, e.g. between retries).
    pub sandbox: Option<SandboxView>,
    /// Ready as last reported.
    pub ready: bool,
    /// The last failure's message (cleared when a sandbox is ready).
    pub last_error: Option<String>,
    /// Failed sandboxes since the last ready one.
    pub failed_attempts: u32,
    /// Sandboxes created for this Pod so far.
    pub sandboxes: u32,
}

/// One Pod admitted with devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Its node.
    pub node: String,
    /// Its UID.
    pub uid: String,
    /// The Pod.
    pub pod: PodRef,
    /// Its devices by resource, in PCI order.
    pub allocation: Allocation,
}

#[derive(Debug)]
struct DevicesState {
    manager: DeviceManager,
    /// (node, UID) -> the Pod admitted.
    admitted: BTreeMap<(String, String), PodRef>,
    /// (node, UID) -> why its admission was refused (final).
    refused: BTreeMap<(String, String), String>,
}

/// The kubelets' device managers of a whole testbed
/// (`spur_testbed::sriov::DeviceManager`), with which Pod each admission
/// was for and which admissions were refused. Clones share it.
#[derive(Debug, Clone)]
pub struct Devices {
    state: Arc<Mutex<DevicesState>>,
}

impl Devices {
    /// Over `manager`, nothing admitted.
    pub fn new(manager: DeviceManager) -> Devices {
        Devices {
            state: Arc::new(Mutex::new(DevicesState {
                manager,
                admitted: BTreeMap::new(),
                refused: BTreeMap::new(),
            })),
        }
    }

    /// Admits Pod `pod` (UID `uid`) on `node` with `requests`: the same
    /// devices again for a Pod admitted before, the kubelet's message
    /// again for one refused before (admission failures are final).
    pub fn admit(
        &self,
        node: &str,
        uid: &str,
        pod: &PodRef,
        requests: &BTreeMap<String, u64>,
    ) -> Result<Allocation, String> {
        let mut s = lock(&self.state);
        let key = (node.to_string(), uid.to_string());
        if let Some(why) = s.refused.get(&key) {
            return Err(why.clone());
        }
        match s.manager.admit(node, uid, requests) {
            Ok(a) => {
                s.admitted.insert(key, pod.clone());
                Ok(a)
            }
            Err(why) => {
                s.refused.insert(key, why.clone());
                Err(why)
            }
        }
    }

    /// The devices of the Pod of UID `uid` on `node`, if it was admitted.
    pub fn allocation(&self, node: &str, uid: &str) -> Option<Allocation> {
        lock(&self.state).manager.allocation(node, uid).cloned()
    }

    /// The Pod of UID `uid` is gone from `node`: its devices are free and
    /// its refusal forgotten. Returns what it held.
    pub fn release(&self, node: &str, uid: &str) -> Option<Allocation> {
        let mut s = lock(&self.state);
        let key = (node.to_string(), uid.to_string());
        s.admitted.remove(&key);
        s.refused.remove(&key);
        s.manager.release(node, uid)
    }

    /// Every admitted Pod with its devices, by node and UID.
    pub fn admitted(&self) -> Vec<Admitted> {
        let s = lock(&self.state);
        s.admitted
            .iter()
            .map(|((node, uid), pod)| Admitted {
                node: node.clone(),
                uid: uid.clone(),
                pod: pod.clone(),
                allocation: s.manager.allocation(node, uid).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// The UIDs admitted or refused on `node`.
    pub fn known_uids(&self, node: &str) -> BTreeSet<String> {
        let s = lock(&self.state);
        s.admitted
            .keys()
            .chain(s.refused.keys())
            .filter(|(n, _)| n == node)
            .map(|(_, u)| u.clone())
            .collect()
    }

    /// How many devices of `resource` on `node` no Pod holds.
    pub fn free(&self, node: &str, resource: &str) -> usize {
        lock(&self.state).manager.free(node, resource)
    }
}

/// What a kubelet's device manager works with: the testbed's [`Devices`]
/// and the node's PodResources (None: the node has no SR-IOV NIC, so the
/// agent reads none).
#[derive(Debug, Clone)]
pub struct KubeletDevices {
    /// The device managers.
    pub devices: Devices,
    /// The node's PodResources API.
    pub resources: Option<Arc<StaticPodResources>>,
}

impl KubeletDevices {
    /// The Pod of UID `uid` (`pod`) is gone from `node`: its devices are
    /// released, and the node's PodResources lists `pod` with the devices
    /// of another admitted Pod of that name (a StatefulSet's next Pod), or
    /// not at all.
    pub fn forget(&self, node: &str, uid: &str, pod: &PodRef) {
        self.devices.release(node, uid);
        let Some(r) = &self.resources else {
            return;
        };
        let next = self
            .devices
            .admitted()
            .into_iter()
            .find(|a| a.node == node && &a.pod == pod);
        match next {
            Some(a) => r.set(&pod.namespace, &pod.name, listed_devices(&a.allocation)),
            None => {
                r.remove(&pod.namespace, &pod.name);
            }
        }
    }
}

/// The device IDs of `allocation` as PodResources lists them: resource to
/// PCI address strings, each resource's in reverse PCI order (a kubelet
/// lists them in its own order; the agent must not depend on it).
pub fn listed_devices(allocation: &Allocation) -> BTreeMap<String, Vec<String>> {
    allocation
        .iter()
        .map(|(r, ids)| {
            (
                r.clone(),
                ids.iter().rev().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

/// The simulated kubelet of one node. Clones share it.
#[derive(Clone)]
pub struct Kubelet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

struct Inner {
    cfg: KubeletConfig,
    client: Client,
    agent: Arc<dyn CniTarget>,
    host: Arc<dyn SandboxHost>,
    clock: Arc<dyn spur_kubeapi::Clock>,
    primary: Mutex<PrimaryIpam>,
    ids: Mutex<ChaCha8Rng>,
    macs: Mutex<ChaCha8Rng>,
    jitter: Mutex<ChaCha8Rng>,
    view: Mutex<BTreeMap<PodRef, PodView>>,
    log: Mutex<Vec<CniCallRecord>>,
    boot: watch::Sender<u64>,
    devices: Option<KubeletDevices>,
    /// One sandbox set up at a time, in the order the Pods' workers ask
    /// (the order the Pods were created): the node's Pods are attached in
    /// manifest order, as the harness's kubelet stand-in attaches them, so a
    /// testbed gets the same answers in both (e.g. which Pod gets a pool's
    /// last address).
    setup: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why an ADD failed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    msg: String,
    retryable: bool,
}

impl Failure {
    fn cni(e: &CniError, prefix: Option<&str>) -> Failure {
        Failure {
            msg: match prefix {
                Some(p) => format!("network {p}: {}", e.msg),
                None => e.msg.clone(),
            },
            retryable: e.code == 11,
        }
    }
    fn other(msg: impl Into<String>, retryable: bool) -> Failure {
        Failure {
            msg: msg.into(),
            retryable,
        }
    }
}

/// A sandbox as the worker holds it.
#[derive(Debug, Clone)]
struct Sandbox {
    pod: PodRef,
    container_id: String,
    netns: String,
    netns_path: String,
    pod_uid: String,
    ready: bool,
    attachments: Vec<(Delegate, Option<Value>)>,
}

impl Sandbox {
    fn view(&self) -> SandboxView {
        SandboxView {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            netns_path: self.netns_path.clone(),
            pod_uid: self.pod_uid.clone(),
            ready: self.ready,
            attachments: self
                .attachments
                .iter()
                .map(|(d, r)| AttachmentView {
                    network: d.network.clone(),
                    ifname: d.ifname.clone(),
                    result: r.clone(),
                })
                .collect(),
        }
    }
}

fn pod_ref(pod: &Pod) -> PodRef {
    PodRef::new(
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// RFC 3339 of unix seconds `t` (second precision, UTC).
fn rfc3339(t: i64) -> String {
    let secs = u64::try_from(t).unwrap_or(0);
    spur_hil::api::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

impl Kubelet {
    /// The kubelet of `cfg.node`: Pods through `client`, Spur through
    /// `agent`, namespaces and links through `host`, wall-clock times from
    /// `clock`. Nothing runs until [`Kubelet::run`] is polled.
    pub fn new(
        cfg: KubeletConfig,
        client: Client,
        agent: Arc<dyn CniTarget>,
        host: Arc<dyn SandboxHost>,
        clock: Arc<dyn spur_kubeapi::Clock>,
    ) -> Kubelet {
        Kubelet::with_devices(cfg, client, agent, host, clock, None)
    }

    /// [`Kubelet::new`] with a device manager: Pods are admitted with the
    /// devices they ask for before their first sandbox.
    pub fn with_devices(
        cfg: KubeletConfig,
        client: Client,
        agent: Arc<dyn CniTarget>,
        host: Arc<dyn SandboxHost>,
        clock: Arc<dyn spur_kubeapi::Clock>,
        devices: Option<KubeletDevices>,
    ) -> Kubelet {
        let seed = cfg.seed;
        Kubelet {
            inner: Arc::new(Inner {
                primary: Mutex::new(PrimaryIpam::new(cfg.pod_cidr)),
                ids: Mutex::new(jitter_rng(Some(derive_seed(seed, "container-ids")))),
                macs: Mutex::new(jitter_rng(Some(derive_seed(seed, "macs")))),
                jitter: Mutex::new(jitter_rng(Some(derive_seed(seed, "retry")))),
                view: Mutex::new(BTreeMap::new()),
                log: Mutex::new(Vec::new()),
                boot: watch::Sender::new(0),
                devices,
                setup: tokio::sync::Mutex::new(()),
                cfg,
                client,
                agent,
                host,
                clock,
            }),
        }
    }

    /// The node this kubelet serves.
    pub fn node(&self) -> &str {
        &self.inner.cfg.node
    }

    /// The kubelet's view of its Pods, by Pod.
    pub fn pods(&self) -> Vec<PodView> {
        lock(&self.inner.view).values().cloned().collect()
    }

    /// The view of one Pod.
    pub fn pod(&self, pod: &PodRef) -> Option<PodView> {
        lock(&self.inner.view).get(pod).cloned()
    }

    /// Every CNI call so far, in order.
    pub fn calls(&self) -> Vec<CniCallRecord> {
        lock(&self.inner.log).clone()
    }

    /// How many CNI calls were made so far.
    pub fn call_count(&self) -> usize {
        lock(&self.inner.log).len()
    }

    /// The primary CNI's addresses in use: address -> (container, ifname).
    pub fn primary_addresses(&self) -> BTreeMap<IpAddr, (String, String)> {
        lock(&self.inner.primary).used().clone()
    }

    /// The node rebooted: every sandbox is gone (the world has wiped the
    /// node's namespaces and links), and so is `host-local`'s state. No Pod
    /// is ready until its new sandbox is (a Pod that was ready is being
    /// set up again). The running [`Kubelet::run`] restarts its Pod
    /// workers, which make new sandboxes (new container IDs), retrying
    /// while the agent is down.
    pub fn node_rebooted(&self) {
        {
            let mut view = lock(&self.inner.view);
            for v in view.values_mut() {
                v.sandbox = None;
                v.ready = false;
            }
        }
        lock(&self.inner.primary).clear();
        self.inner.boot.send_modify(|b| *b += 1);
    }

    /// Runs the kubelet until dropped: watches its node's Pods (field
    /// selector `spec.nodeName`, seeded watch backoff) and runs one worker
    /// task per Pod. A reboot ([`Kubelet::node_rebooted`]) restarts it all.
    pub async fn run(&self) {
        let mut boot = self.inner.boot.subscribe();
        loop {
            let generation = *boot.borrow_and_update();
            tokio::select! {
                biased;
                changed = boot.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.run_generation(generation) => return,
            }
        }
    }

    async fn run_generation(&self, generation: u64) {
        let node = self.inner.cfg.node.clone();
        let api: Api<Pod> = Api::all(self.inner.client.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let backoff = WatchBackoff::for_watch(
            Some(derive_seed(
                self.inner.cfg.seed,
                &format!("boot-{generation}"),
            )),
            "kubelet/pods",
        );
        let mut stream = std::pin::pin!(watcher(api, cfg).backoff(backoff));
        let mut senders: BTreeMap<PodRef, watch::Sender<Option<Arc<Pod>>>> = BTreeMap::new();
        let mut workers: JoinSet<PodRef> = JoinSet::new();
        let mut relist: Option<BTreeSet<PodRef>> = None;
        loop {
            tokio::select! {
                biased;
                Some(done) = workers.join_next(), if !workers.is_empty() => {
                    let Ok(key) = done else { continue };
                    // A Pod that came back while its worker was finishing
                    // gets a new worker.
                    let again = senders.get(&key).is_some_and(|s| s.borrow().is_some());
                    if again {
                        if let Some(tx) = senders.get(&key) {
                            self.spawn_worker(&mut workers, key, tx.subscribe(), generation);
                        }
                    } else {
                        senders.remove(&key);
                    }
                }
                ev = stream.next() => {
                    let Some(ev) = ev else { return };
                    let Ok(ev) = ev else { continue };
                    let apply = |pod: Pod, senders: &mut BTreeMap<PodRef, watch::Sender<Option<Arc<Pod>>>>, workers: &mut JoinSet<PodRef>| {
                        let key = pod_ref(&pod);
                        match senders.get(&key) {
                            Some(tx) => {
                                tx.send_replace(Some(Arc::new(pod)));
                            }
                            None => {
                                let (tx, rx) = watch::channel(Some(Arc::new(pod)));
                                senders.insert(key.clone(), tx);
                                self.spawn_worker(workers, key, rx, generation);
                            }
                        }
                    };
                    match ev {
                        watcher::Event::Apply(pod) => apply(pod, &mut senders, &mut workers),
                        watcher::Event::Delete(pod) => {
                            if let Some(tx) = senders.get(&pod_ref(&pod)) {
                                tx.send_replace(None);
                            }
                        }
                        watcher::Event::Init => relist = Some(BTreeSet::new()),
                        watcher::Event::InitApply(pod) => {
                            if let Some(seen) = relist.as_mut() {
                                seen.insert(pod_ref(&pod));
                            }
                            apply(pod, &mut senders, &mut workers);
                        }
                        watcher::Event::InitDone => {
                            if let Some(seen) = relist.take() {
                                for (key, tx) in &senders {
                                    if !seen.contains(key) {
                                        tx.send_replace(None);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn spawn_worker(
        &self,
        workers: &mut JoinSet<PodRef>,
        key: PodRef,
        rx: watch::Receiver<Option<Arc<Pod>>>,
        generation: u64,
    ) {
        let worker = Worker {
            k: self.clone(),
            key: key.clone(),
            generation,
        };
        workers.spawn(async move {
            worker.run(rx).await;
            key
        });
    }
}

/// The worker of one Pod in one boot of the node.
struct Worker {
    k: Kubelet,
    key: PodRef,
    generation: u64,
}

/// A change a worker waiting on a backoff must act on at once.
fn relevant(current: Option<&Pod>, uid_before: &str, terminating_before: bool) -> bool {
    match current {
        None => true,
        Some(p) => {
            uid(p) != uid_before || (p.metadata.deletion_timestamp.is_some() && !terminating_before)
        }
    }
}

impl Worker {
    fn inner(&self) -> &Inner {
        &self.k.inner
    }

    /// False once the node rebooted after this worker started: it must not
    /// touch the view any more.
    fn current(&self) -> bool {
        *self.inner().boot.borrow() == self.generation
    }

    fn update_view(&self, f: impl FnOnce(&mut PodView)) {
        if !self.current() {
            return;
        }
        let mut view = lock(&self.inner().view);
        let v = view.entry(self.key.clone()).or_insert_with(|| PodView {
            pod: self.key.clone(),
            uid: String::new(),
            terminating: false,
            sandbox: None,
            ready: false,
            last_error: None,
            failed_attempts: 0,
            sandboxes: 0,
        });
        f(v);
    }

    fn jittered(&self, b: &mut Backoff) -> Duration {
        b.next_delay(&mut *lock(&self.inner().jitter))
    }

    async fn run(self, mut rx: watch::Receiver<Option<Arc<Pod>>>) {
        let r = self.inner().cfg.retry;
        let quick = RetryPolicy {
            base: r.quick_base,
            max: r.quick_max,
            max_attempts: u32::MAX,
        };
        let slow = RetryPolicy {
            base: r.base,
            max: r.max,
            max_attempts: u32::MAX,
        };
        let mut quick_backoff = Backoff::new(quick);
        let mut slow_backoff = Backoff::new(slow);
        let mut sandbox: Option<Sandbox> = None;
        let mut failed: u32 = 0;
        // (uid, ready, reason) last written to the Pod's status.
        let mut written: Option<(String, bool, Option<String>)> = None;
        let mut pending_status: Option<(bool, Option<String>, Vec<IpAddr>)> = None;
        // The UID the device manager admitted (or refused) last.
        let mut admitted: Option<String> = None;
        loop {
            let pod = rx.borrow_and_update().clone();
            let Some(pod) = pod else {
                // Gone from the API: tear down what is left.
                if let Some(sb) = sandbox.take() {
                    if let Err(e) = self.teardown(&sb).await {
                        sandbox = Some(sb);
                        self.update_view(|v| v.last_error = Some(e.clone()));
                        let d = self.jittered(&mut quick_backoff);
                        self.wait(&mut rx, d, "", true).await;
                        continue;
                    }
                }
                // After its sandbox's DEL: the devices go back.
                if let Some(u) = admitted.take() {
                    self.release_devices(&u);
                }
                if self.current() {
                    lock(&self.inner().view).remove(&self.key);
                }
                return;
            };
            let pod_uid = uid(&pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            self.update_view(|v| {
                v.uid = pod_uid.clone();
                v.terminating = terminating;
            });
            // A sandbox of a previous Pod of this name goes first.
            if sandbox.as_ref().is_some_and(|s| s.pod_uid != pod_uid) {
                if let Some(sb) = sandbox.take() {
                    if let Err(e) = self.teardown(&sb).await {
                        sandbox = Some(sb);
                        self.update_view(|v| v.last_error = Some(e));
                        let d = self.jittered(&mut quick_backoff);
                        self.wait(&mut rx, d, &pod_uid, terminating).await;
                        continue;
                    }
                }
                self.update_view(|v| v.sandbox = None);
                failed = 0;
                written = None;
                pending_status = None;
                quick_backoff = Backoff::new(quick);
                slow_backoff = Backoff::new(slow);
            }
            // A previous Pod of this name is gone with its sandbox: its
            // devices go back.
            if admitted.as_ref().is_some_and(|u| *u != pod_uid) {
                if let Some(u) = admitted.take() {
                    self.release_devices(&u);
                }
                failed = 0;
                written = None;
                pending_status = None;
            }
            if terminating {
                if let Some(sb) = sandbox.take() {
                    if let Err(e) = self.teardown(&sb).await {
                        sandbox = Some(sb);
                        self.update_view(|v| v.last_error = Some(e));
                        let d = self.jittered(&mut quick_backoff);
                        self.wait(&mut rx, d, &pod_uid, true).await;
                        continue;
                    }
                    self.update_view(|v| {
                        v.sandbox = None;
                        v.ready = false;
                    });
                }
                let pods: Api<Pod> =
                    Api::namespaced(self.inner().client.clone(), &self.key.namespace);
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(pod_uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match pods.delete(&self.key.name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(_) => {
                        let d = self.jittered(&mut quick_backoff);
                        self.wait(&mut rx, d, &pod_uid, true).await;
                        continue;
                    }
                }
                // The DELETED event (or a new Pod of this name) follows.
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if sandbox.is_none() && r.max_attempts.is_none_or(|m| failed < m) {
                if let Err(why) = self.admit(&pod, &mut admitted).await {
                    // Final: no sandbox, no retry, until the Pod changes.
                    failed = failed.max(1);
                    pending_status = Some((false, Some(why.clone()), Vec::new()));
                    self.update_view(|v| {
                        v.sandbox = None;
                        v.ready = false;
                        v.last_error = Some(why.clone());
                        v.failed_attempts = failed;
                    });
                    self.write_status(&pod, &mut written, &mut pending_status)
                        .await;
                    if pending_status.is_some() {
                        let d = self.jittered(&mut quick_backoff);
                        self.wait(&mut rx, d, &pod_uid, false).await;
                    } else if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                match self.add(&pod).await {
                    Ok(sb) => {
                        failed = 0;
                        quick_backoff = Backoff::new(quick);
                        slow_backoff = Backoff::new(slow);
                        let view = sb.view();
                        pending_status = Some((true, None, view.pod_ips()));
                        self.update_view(|v| {
                            v.sandbox = Some(view);
                            v.ready = true;
                            v.last_error = None;
                            v.failed_attempts = 0;
                        });
                        sandbox = Some(sb);
                    }
                    Err(f) => {
                        failed += 1;
                        pending_status = Some((false, Some(f.msg.clone()), Vec::new()));
                        self.update_view(|v| {
                            v.sandbox = None;
                            v.ready = false;
                            v.last_error = Some(f.msg.clone());
                            v.failed_attempts = failed;
                        });
                        self.write_status(&pod, &mut written, &mut pending_status)
                            .await;
                        let d = if f.retryable {
                            self.jittered(&mut quick_backoff)
                        } else {
                            self.jittered(&mut slow_backoff)
                        };
                        self.wait(&mut rx, d, &pod_uid, false).await;
                        continue;
                    }
                }
            }
            self.write_status(&pod, &mut written, &mut pending_status)
                .await;
            if pending_status.is_some() {
                // The status did not reach the API: try again soon.
                let d = self.jittered(&mut quick_backoff);
                self.wait(&mut rx, d, &pod_uid, false).await;
                continue;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The device manager's admission of `pod` (in the order the Pods ask,
    /// as sandboxes are set up): its containers' extended resources, the
    /// devices listed in the node's PodResources. `admitted` is set to the
    /// Pod's UID whatever the answer (a refusal is forgotten with the Pod).
    async fn admit(&self, pod: &Pod, admitted: &mut Option<String>) -> Result<(), String> {
        let Some(d) = &self.inner().devices else {
            return Ok(());
        };
        let _turn = self.inner().setup.lock().await;
        let pod_uid = uid(pod);
        let requests = serde_json::to_value(pod)
            .map(|v| pod_requests(&v))
            .unwrap_or_default();
        *admitted = Some(pod_uid.clone());
        let node = &self.inner().cfg.node;
        let allocation = d.devices.admit(node, &pod_uid, &self.key, &requests)?;
        if let Some(r) = &d.resources {
            r.set(
                &self.key.namespace,
                &self.key.name,
                listed_devices(&allocation),
            );
        }
        Ok(())
    }

    /// The Pod of UID `uid` is gone: its devices are released.
    fn release_devices(&self, uid: &str) {
        if let Some(d) = &self.inner().devices {
            d.forget(&self.inner().cfg.node, uid, &self.key);
        }
    }

    /// Waits `delay`, or less when the Pod goes, is replaced or starts
    /// terminating.
    async fn wait(
        &self,
        rx: &mut watch::Receiver<Option<Arc<Pod>>>,
        delay: Duration,
        uid_before: &str,
        terminating_before: bool,
    ) {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                changed = rx.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(deadline).await;
                        return;
                    }
                    let now = rx.borrow().clone();
                    if relevant(now.as_deref(), uid_before, terminating_before) {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Writes the pending status (Ready condition, podIPs from `eth0`), as
    /// hil's `pod_status`; kept pending when the API refuses.
    async fn write_status(
        &self,
        pod: &Pod,
        written: &mut Option<(String, bool, Option<String>)>,
        pending: &mut Option<(bool, Option<String>, Vec<IpAddr>)>,
    ) {
        let Some((ready, reason, ips)) = pending.clone() else {
            return;
        };
        let key = (uid(pod), ready, reason.clone());
        if written.as_ref() == Some(&key) {
            *pending = None;
            return;
        }
        let now = rfc3339(self.inner().clock.now_unix());
        let body = spur_hil::api::pod_status(
            pod,
            ready,
            reason.as_deref(),
            &ips,
            self.inner().cfg.host_ip,
            &now,
        );
        let pods: Api<Pod> = Api::namespaced(self.inner().client.clone(), &self.key.namespace);
        match pods
            .patch_status(&self.key.name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => {
                *written = Some(key);
                *pending = None;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => *pending = None,
            Err(e) => tracing::debug!(pod = %self.key, error = %e, "Pod status not written"),
        }
    }

    fn plugins(&self) -> Plugins<'_> {
        Plugins {
            agent: self.inner().agent.as_ref(),
            host: self.inner().host.as_ref(),
            primary: &self.inner().primary,
            rng: &self.inner().macs,
        }
    }

    fn primary_delegate(&self) -> Delegate {
        Delegate::primary(primary_conflist(
            self.inner().cfg.pod_cidr,
            Path::new(HOST_LOCAL_DIR),
            self.inner().cfg.mode,
        ))
    }

    /// A new sandbox with every network attached, or the failure after
    /// everything was deleted and the namespace removed.
    async fn add(&self, pod: &Pod) -> Result<Sandbox, Failure> {
        let _turn = self.inner().setup.lock().await;
        // No sandbox while the network is not ready (kubelet's
        // NetworkPluginNotReady), so the first attempts keep their order.
        self.inner().agent.wait_ready().await;
        let container_id = {
            let mut rng = lock(&self.inner().ids);
            (0..4)
                .map(|_| format!("{:016x}", rng.next_u64()))
                .collect::<String>()
        };
        let netns = pod_netns_name(&self.inner().cfg.node, &self.key, &container_id);
        let netns_path = self.inner().host.create_netns(&netns).map_err(|e| {
            Failure::other(
                format!("creating the Pod's network namespace {netns}: {e}"),
                false,
            )
        })?;
        let mut sb = Sandbox {
            pod: self.key.clone(),
            container_id,
            netns,
            netns_path,
            pod_uid: uid(pod),
            ready: false,
            attachments: vec![(self.primary_delegate(), None)],
        };
        self.update_view(|v| {
            v.sandboxes += 1;
            v.sandbox = Some(sb.view());
        });
        let outcome = match self.inner().cfg.mode {
            CniMode::Native => self.add_native(&mut sb).await,
            CniMode::Multus => self.add_multus(pod, &mut sb).await,
        };
        match outcome {
            Ok(()) => {
                sb.ready = true;
                Ok(sb)
            }
            Err(f) => {
                // As kubelet after a failed sandbox setup: DEL of
                // everything, then the namespace goes.
                let _ = self.del_all(&mut sb).await;
                if let Err(e) = self.inner().host.remove_netns(&sb.netns_path) {
                    tracing::debug!(pod = %self.key, error = %e, "netns not removed");
                }
                Err(f)
            }
        }
    }

    async fn add_native(&self, sb: &mut Sandbox) -> Result<(), Failure> {
        let d = sb.attachments[0].0.clone();
        let result = self
            .add_list(sb, &d)
            .await
            .map_err(|e| Failure::cni(&e, None))?;
        sb.attachments[0].1 = Some(result);
        Ok(())
    }

    async fn add_multus(&self, pod: &Pod, sb: &mut Sandbox) -> Result<(), Failure> {
        let annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETWORKS_ANNOTATION))
            .map(String::as_str)
            .unwrap_or_default();
        let elements =
            selection::parse(annotation, &sb.pod.namespace, &sb.pod.name, Naming::Multus)
                .map_err(|e| Failure::other(e.to_string(), false))?;
        let mut delegates = vec![sb.attachments[0].0.clone()];
        let mut resources: Vec<(String, Option<String>)> = Vec::new();
        for el in &elements {
            let network = el.network();
            let (config, resource) = self
                .nad_config(&el.namespace, &el.name)
                .await
                .map_err(|(e, retry)| Failure::other(format!("network {network}: {e}"), retry))?;
            let d = multus::delegate(el, &config).map_err(|e| {
                Failure::other(
                    format!("network {network}: NetworkAttachmentDefinition {network}: {e}"),
                    false,
                )
            })?;
            delegates.push(d);
            resources.push((network, resource));
        }
        if resources.iter().any(|(_, r)| r.is_some()) {
            // Multus's deviceID: the Pod's devices, matched to the elements.
            let allocation = self
                .inner()
                .devices
                .as_ref()
                .and_then(|d| d.devices.allocation(&self.inner().cfg.node, &sb.pod_uid))
                .map(|a| listed_devices(&a))
                .unwrap_or_default();
            let asked: Vec<(&str, Option<&str>)> = resources
                .iter()
                .map(|(n, r)| (n.as_str(), r.as_deref()))
                .collect();
            let ids =
                multus::device_ids(&asked, &allocation).map_err(|e| Failure::other(e, false))?;
            for (d, id) in delegates[1..].iter_mut().zip(ids) {
                if let Some(id) = id {
                    multus::set_device_id(d, &id);
                }
            }
        }
        multus::check_gateways(&mut delegates).map_err(|e| Failure::other(e, false))?;
        sb.attachments = delegates.into_iter().map(|d| (d, None)).collect();
        self.update_view(|v| v.sandbox = Some(sb.view()));
        for idx in 0..sb.attachments.len() {
            let d = sb.attachments[idx].0.clone();
            match self.add_list(sb, &d).await {
                Ok(result) => sb.attachments[idx].1 = Some(result),
                Err(e) => {
                    self.rollback(sb, idx).await;
                    return Err(Failure::cni(&e, Some(&d.network)));
                }
            }
            // (Multus's default-route changes are not modelled: the sim's
            // namespaces hold no routes.)
        }
        let entries: Vec<_> = sb
            .attachments
            .iter()
            .map(|(d, r)| multus::network_status(d, r.as_ref().unwrap_or(&Value::Null)))
            .collect();
        let subject = Subject::new("Pod", Some(&sb.pod.namespace), &sb.pod.name);
        let text =
            status::render(&entries, &subject).map_err(|e| Failure::other(e.to_string(), false))?;
        self.patch_network_status(Some(&text)).await.map_err(|e| {
            Failure::other(format!("writing the network-status annotation: {e}"), true)
        })?;
        Ok(())
    }

    /// The `spec.config` of NAD `ns/name` and the device-plugin resource
    /// its annotation names; the error says whether it is worth a quick
    /// retry (the API did not answer).
    async fn nad_config(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<(String, Option<String>), (String, bool)> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.inner().client.clone(), ns, &nad_resource());
        let obj = api
            .get_opt(name)
            .await
            .map_err(|e| {
                (
                    format!("cannot read NetworkAttachmentDefinition {ns}/{name}: {e}"),
                    true,
                )
            })?
            .ok_or_else(|| {
                (
                    format!("NetworkAttachmentDefinition {ns}/{name} not found"),
                    false,
                )
            })?;
        multus::nad_parts(&obj, ns, name).map_err(|e| (e, false))
    }

    async fn patch_network_status(&self, text: Option<&str>) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.inner().client.clone(), &self.key.namespace);
        let patch = json!({"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: text}}});
        pods.patch(
            &self.key.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(drop)
        .map_err(|e| format!("cannot patch Pod {}: {e}", self.key))
    }

    fn call(&self, sb: &Sandbox, d: &Delegate, command: Command, config: Value) -> PluginCall {
        let args =
            spur_hil::kubelet::cni_args(&sb.pod, &sb.container_id, &sb.pod_uid, &d.extra_args);
        PluginCall {
            command,
            container_id: sb.container_id.clone(),
            netns: sb.netns_path.clone(),
            ifname: d.ifname.clone(),
            args,
            config,
        }
    }

    async fn invoke(
        &self,
        sb: &Sandbox,
        d: &Delegate,
        call: PluginCall,
    ) -> Result<Value, CniError> {
        let result = self.plugins().invoke(&call, &d.network).await;
        lock(&self.inner().log).push(CniCallRecord {
            at: Instant::now(),
            pod: sb.pod.clone(),
            container_id: sb.container_id.clone(),
            command: call.command,
            plugin: call.plugin_type().to_string(),
            network: d.network.clone(),
            ifname: call.ifname.clone(),
            result: result.clone(),
        });
        result
    }

    /// libcni's AddNetworkList: each plugin gets the previous result.
    async fn add_list(&self, sb: &Sandbox, d: &Delegate) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &d.list.plugins {
            let config = plugin_config(&d.list, plugin, prev.as_ref(), &d.capability_args);
            let call = self.call(sb, d, Command::Add, config);
            prev = Some(self.invoke(sb, d, call).await?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// libcni's DelNetworkList: reverse order, the cached result as
    /// `prevResult` (CNI 0.4.0 and later); stops at the first failure.
    async fn del_list(
        &self,
        sb: &Sandbox,
        d: &Delegate,
        cached: Option<&Value>,
    ) -> Result<(), CniError> {
        let prev = cached.filter(|_| d.list.del_gets_prev_result());
        for plugin in d.list.plugins.iter().rev() {
            let config = plugin_config(&d.list, plugin, prev, &d.capability_args);
            let call = self.call(sb, d, Command::Del, config);
            self.invoke(sb, d, call).await?;
        }
        Ok(())
    }

    /// Multus's rollback after delegate `failed` failed: DEL of it and
    /// every earlier one, in reverse, errors ignored.
    async fn rollback(&self, sb: &mut Sandbox, failed: usize) {
        for k in (0..=failed).rev() {
            let (d, r) = sb.attachments[k].clone();
            if self.del_list(sb, &d, r.as_ref()).await.is_ok() {
                sb.attachments[k].1 = None;
            }
        }
    }

    /// DEL of every attachment in reverse (going on after failures); one
    /// message per failure.
    async fn del_all(&self, sb: &mut Sandbox) -> Vec<String> {
        let mut errors = Vec::new();
        for k in (0..sb.attachments.len()).rev() {
            let (d, r) = sb.attachments[k].clone();
            match self.del_list(sb, &d, r.as_ref()).await {
                Ok(()) => sb.attachments[k].1 = None,
                Err(e) => errors.push(format!("network {}: {}", d.network, e.msg)),
            }
        }
        errors
    }

    /// CNI DEL of a sandbox, then its namespace's removal; the sandbox is
    /// kept (for a retry) when a DEL fails.
    async fn teardown(&self, sb: &Sandbox) -> Result<(), String> {
        if self.inner().cfg.mode == CniMode::Multus && sb.ready {
            // As Multus: the annotation first, going on when the Pod is gone.
            let _ = self.patch_network_status(None).await;
        }
        let mut s = sb.clone();
        let errors = self.del_all(&mut s).await;
        if !errors.is_empty() {
            return Err(format!("CNI DEL failed: {}", errors.join("; ")));
        }
        self.inner()
            .host
            .remove_netns(&sb.netns_path)
            .map_err(|e| format!("removing the Pod's network namespace {}: {e}", sb.netns))?;
        self.update_view(|v| v.sandbox = None);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
