//! One simulated run of a testbed: the world around Spur's real control
//! plane, and the order of a run.
//!
//! The world holds the embedded API server (deterministic mode, Spur's
//! admission rules registered in process), two controller replicas
//! (`spur_controller::replica::run_replica`, leader-elected), and per node
//! an agent process (the real `spur_node::agent::Agent` over in-memory
//! OVSDB and netlink back ends, `spur_node::fake`, started with
//! `spur_node::agent::run::start_up` as the binary starts it), the node's
//! simulated kubelet and the scheduler and workload controllers
//! ([`crate::kubelet`], [`crate::workloads`]). Every component talks to the
//! API over its own [`Link`].
//!
//! A run, on one thread with the clock paused: apply the manifests as the
//! harness does (same placement and Pod names), start the agents and
//! kubelets, carry out the fault plan ([`crate::faults`]) while checking
//! the invariants every [`CHECK_EVERY`] of simulated time, wait until the
//! cluster has converged (every Pod settled, garbage collected, pool usage
//! current), build the report ([`crate::report`]), then delete everything
//! and check that nothing leaked.
//!
//! A node with SR-IOV PFs (`sriov:` in testbed.yaml) gets the emulated
//! devices both runners share (`spur_testbed::sriov::node_nics`): an
//! emulated sysfs tree in a temporary directory the world owns (one per
//! node, removed with the world; it shows each VF's netdev as the node's
//! kernel, `FakeLinks`, has it, kept current before every back-end call),
//! the VFs in the node's `FakeLinks` (MACs derived from the node's index,
//! the PF's index and the VF's; on a VM node without their PF), the PFs as
//! NICs of the node (bare metal only), a `StaticPodResources` the kubelet
//! fills when it admits Pods ([`crate::kubelet::Devices`], one device
//! manager for the testbed), and the agent started with those back ends.
//!
//! What does not live here: Spur's logic (the production crates), the
//! data-plane answers, the report's shape, the invariants' definitions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde_json::{json, Value};
use spur_controller::leader::ElectionConfig;
use spur_controller::metrics::{Health, Metrics};
use spur_controller::replica::{run_replica, ReplicaConfig};
use spur_core::cniproto::{AgentRequest, CniError};
use spur_core::config::{AgentConfig, ControllerConfig};
use spur_core::ipamblock::IPAMBlock;
use spur_core::ippool::IPPool;
use spur_kubeapi::faults::{Fault as ApiFault, Matcher, Rule};
use spur_kubeapi::{ApiServer, Store};
use spur_node::agent::cluster::KubeCluster;
use spur_node::agent::run::{start_up, ConfigSource};
use spur_node::agent::sweep::run_periodic;
use spur_node::agent::{Agent, AgentSettings, SriovBackends};
use spur_node::fake::{FakeLinks, FakeSwitch, FaultHook, FaultPoint, LinkKind};
use spur_node::ipam::{Ipam, IpamConfig};
use spur_node::podresources::StaticPodResources;
use spur_node::sriov::sysfs::SysfsTree;
use spur_node::sriov::vf::PfVfSettings;
use spur_testbed::sriov::{node_nics, DeviceManager, Nic};
use spur_testbed::{PodRef, Testbed};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::apiclient::{self, Link};
use crate::clock::SimClock;
use crate::faults::{self, Fault, Planned, Profile, Targets};
use crate::invariants::{self, Violation};
use crate::kubelet::{Devices, Kubelet, KubeletConfig, KubeletDevices, RetryConfig};
use crate::plugins::{agent_unreachable, CniTarget, ForeignKind, ForeignLink, SandboxHost};
use crate::rng::{rng_for, seed_for};
use crate::trace::Trace;
use crate::workloads::Workloads;

/// How often the invariants are checked while the run goes.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// The agents' resync period (the binary's default).
pub const RESYNC: Duration = Duration::from_secs(30);
/// How many controller replicas run (the manifests run two).
pub const REPLICAS: usize = 2;
/// The namespace churn Pods live in.
pub const CHURN_NAMESPACE: &str = "spur-sim-churn";
/// Where the simulated `spur` plugin would find the agent.
const CNI_SOCKET: &str = "/var/run/spur/cni.sock";

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed.
    pub seed: u64,
    /// The fault profile.
    pub faults: Profile,
    /// Keep every trace event (for `--check-determinism`).
    pub keep_trace: bool,
    /// How long the cluster may take to converge after the faults, in
    /// simulated time, before the run fails.
    pub converge_within: Duration,
    /// Latency of the simulated back ends and API links: each call takes
    /// between zero and this long.
    pub latency: Duration,
    /// How often the invariants are checked while the run goes.
    pub check_every: Duration,
    /// Delete everything at the end and check that nothing leaked.
    pub teardown: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 1,
            faults: Profile::Default,
            keep_trace: false,
            converge_within: Duration::from_secs(30 * 60),
            latency: Duration::from_millis(3),
            check_every: CHECK_EVERY,
            teardown: true,
        }
    }
}

/// Why a run could not be carried out (a finding is not an error: it is in
/// the outcome).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The runtime could not be built.
    #[error("the simulator's runtime: {0}")]
    Runtime(std::io::Error),
    /// The testbed asks for something the simulator cannot model yet.
    #[error("{0}")]
    Unsupported(String),
    /// Setting the cluster up failed.
    #[error("setting up the simulated cluster: {0}")]
    Setup(String),
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The report (failures included: expectations, invariants, leaks).
    pub report: spur_testbed::Report,
    /// The invariant violations, in the order found (the first one of each
    /// kind).
    pub violations: Vec<(Duration, Violation)>,
    /// The trace's last events when the first violation was found (empty
    /// without one).
    pub trace_at_violation: Vec<crate::trace::Event>,
    /// The whole trace when kept.
    pub trace: Option<Vec<crate::trace::Event>>,
    /// The trace's fingerprint.
    pub fingerprint: u64,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// The fault plan carried out.
    pub plan: Vec<Planned>,
    /// Simulated time from the first manifest applied until the cluster
    /// had converged.
    pub converged_after: Duration,
    /// Addresses held when the cluster had converged.
    pub allocations: usize,
    /// API requests per resource over the run.
    pub api: BTreeMap<String, spur_kubeapi::ResourceStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pod CIDR of the `index`-th node: `10.244.<index>.0/24` as the
/// harness assigns them, continuing into 10.245-10.255 past 256 nodes.
pub fn pod_cidr(index: usize) -> Option<IpNet> {
    let n = u32::try_from(index).ok()?;
    let base = u32::from(Ipv4Addr::new(10, 244, 0, 0)).checked_add(n.checked_mul(256)?)?;
    if base > u32::from(Ipv4Addr::new(10, 255, 255, 0)) {
        return None;
    }
    Ipv4Net::new(Ipv4Addr::from(base), 24).ok().map(IpNet::V4)
}

/// The management address of the `index`-th node.
fn host_ip(index: usize) -> IpAddr {
    let n = u32::try_from(index).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 10)) + n))
}

// ---- Back ends ------------------------------------------------------------

/// The back ends' latency and injected failures.
struct BackendHook {
    clock: SimClock,
    trace: Trace,
    node: String,
    rng: Mutex<ChaCha8Rng>,
    latency: Duration,
    /// Failures per mille.
    fail: watch::Sender<u32>,
    /// The node's SR-IOV devices, whose sysfs is brought up to date before
    /// every call (the hook belongs to the node's `FakeLinks`: a weak
    /// link back).
    sriov: Option<(Arc<NodeSriov>, std::sync::Weak<FakeLinks>)>,
}

impl FaultHook for BackendHook {
    fn at<'a>(&'a self, point: &'a FaultPoint) -> BoxFuture<'a, Result<(), String>> {
        if let Some((sriov, links)) = &self.sriov {
            if let Some(links) = links.upgrade() {
                if let Err(e) = sriov.sync(&links) {
                    self.trace.record(
                        self.clock.elapsed(),
                        format!("node/{}", self.node),
                        format!("emulated sysfs not updated: {e}"),
                    );
                }
            }
        }
        let (delay, fails) = {
            let mut rng = lock(&self.rng);
            let nanos = self.latency.as_nanos() as u64;
            let delay = if nanos == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(rng.next_u64() % nanos)
            };
            let p = *self.fail.borrow();
            (delay, p > 0 && (rng.next_u64() % 1000) < u64::from(p))
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fails {
                self.trace.record(
                    self.clock.elapsed(),
                    format!("node/{}", self.node),
                    format!("injected back-end failure at {point}"),
                );
                return Err("injected back-end failure".into());
            }
            Ok(())
        })
    }
}

/// The kubelet's sandboxes on the node's in-memory kernel.
struct LinksHost {
    links: Arc<FakeLinks>,
    nics: BTreeSet<String>,
    /// The node's SR-IOV devices: a namespace that goes returns its VFs
    /// to the host, which sysfs shows at once.
    sriov: Option<Arc<NodeSriov>>,
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (i, part) in s.split(':').take(6).enumerate() {
        out[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    out
}

impl SandboxHost for LinksHost {
    fn create_netns(&self, name: &str) -> Result<String, String> {
        let path = format!("/var/run/netns/{name}");
        self.links.add_netns(Path::new(&path));
        Ok(path)
    }

    fn remove_netns(&self, path: &str) -> Result<(), String> {
        self.links.remove_netns(Path::new(path));
        if let Some(s) = &self.sriov {
            if let Err(e) = s.sync(&self.links) {
                tracing::warn!(error = %e, "emulated sysfs not updated");
            }
        }
        Ok(())
    }

    fn netns_exists(&self, path: &str) -> bool {
        self.links.netns_exists(Path::new(path))
    }

    fn has_nic(&self, name: &str) -> bool {
        self.nics.contains(name)
    }

    fn add_link(&self, netns: &str, link: ForeignLink) -> Result<(), String> {
        let kind = match &link.kind {
            ForeignKind::Veth { .. } => LinkKind::Primary,
            ForeignKind::Macvlan { master, .. } => LinkKind::Macvlan {
                parent: master.clone(),
            },
        };
        self.links
            .add_foreign_link(
                Path::new(netns),
                &link.ifname,
                spur_node::fake::ForeignLink {
                    kind,
                    mtu: link.mtu,
                    mac: parse_mac(&link.mac),
                    addresses: link.addresses.clone(),
                },
            )
            .map_err(|e| e.to_string())
    }

    fn remove_link(&self, netns: &str, ifname: &str) -> Result<(), String> {
        self.links.remove_foreign_link(Path::new(netns), ifname);
        Ok(())
    }
}

/// A CNI call waiting for the agent process.
type CniJob = (AgentRequest, oneshot::Sender<Result<Value, CniError>>);

/// The node's `spur` plugin: the agent's socket, present only while the
/// agent process serves.
struct NodeCni {
    socket: Mutex<Option<mpsc::UnboundedSender<CniJob>>>,
    /// True while the agent serves (its STATUS succeeds).
    serving: watch::Sender<bool>,
}

impl Default for NodeCni {
    fn default() -> Self {
        NodeCni {
            socket: Mutex::new(None),
            serving: watch::Sender::new(false),
        }
    }
}

impl NodeCni {
    fn set(&self, socket: Option<mpsc::UnboundedSender<CniJob>>) {
        let up = socket.is_some();
        *lock(&self.socket) = socket;
        self.serving.send_replace(up);
    }
}

impl CniTarget for NodeCni {
    fn call(&self, req: AgentRequest) -> BoxFuture<'_, Result<Value, CniError>> {
        let socket = lock(&self.socket).clone();
        Box::pin(async move {
            let command = req.command;
            let unreachable = || agent_unreachable(command, Path::new(CNI_SOCKET));
            let Some(tx) = socket else {
                return Err(unreachable());
            };
            let (reply, answer) = oneshot::channel();
            if tx.send((req, reply)).is_err() {
                return Err(unreachable());
            }
            // The agent crashing mid-call drops the reply: the plugin sees
            // its connection reset.
            answer.await.unwrap_or_else(|_| Err(unreachable()))
        })
    }

    fn wait_ready(&self) -> BoxFuture<'_, ()> {
        let mut rx = self.serving.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|up| *up).await;
        })
    }
}

// ---- SR-IOV -----------------------------------------------------------------

/// A node's SR-IOV NICs as the simulator emulates them.
pub(crate) struct NodeSriov {
    /// The PFs and VFs (`node_nics`).
    pub(crate) nics: Vec<Nic>,
    /// The emulated sysfs tree.
    tree: SysfsTree,
    /// The kubelet's PodResources API of the node.
    resources: Arc<StaticPodResources>,
    /// What sysfs shows as each VF's netdev (by PCI address), as last
    /// written.
    shown: Mutex<BTreeMap<String, Option<String>>>,
    /// What each PF set for each of its VFs at the start.
    pub(crate) initial: BTreeMap<(String, u16), PfVfSettings>,
}

/// The MAC of VF `vf` of the node's PF `pf` on the node of index `node`:
/// locally administered, unique in the testbed, the same in every run.
fn vf_mac(node: usize, pf: usize, vf: u16) -> [u8; 6] {
    let [n1, n0] = u16::try_from(node).unwrap_or(u16::MAX).to_be_bytes();
    let [v1, v0] = vf.to_be_bytes();
    [0x02, n1, n0, u8::try_from(pf).unwrap_or(u8::MAX), v1, v0]
}

impl NodeSriov {
    /// Writes the emulated devices of `node` (index `index`): the sysfs
    /// tree under `root`, the VFs in `links` (and the PFs as NICs on bare
    /// metal).
    fn create(
        node: &spur_testbed::spec::Node,
        index: usize,
        root: &Path,
        links: &FakeLinks,
    ) -> Result<NodeSriov, SimError> {
        let nics =
            node_nics(node).map_err(|e| SimError::Unsupported(format!("testbed.yaml: {e}")))?;
        let setup = |what: String| {
            move |e: std::io::Error| {
                SimError::Setup(format!("node {}: emulated sysfs: {what}: {e}", node.name))
            }
        };
        let tree = SysfsTree::create(root.join(&node.name))
            .map_err(setup(format!("creating {}", root.display())))?;
        let mut shown = BTreeMap::new();
        for (j, nic) in nics.iter().enumerate() {
            let vfs: Vec<(String, String)> = nic
                .vfs
                .iter()
                .map(|v| (v.pci.to_string(), v.netdev.clone()))
                .collect();
            if nic.vm {
                for (pci, netdev) in &vfs {
                    tree.add_vm_vf(pci, Some(netdev))
                        .map_err(setup(format!("VF {pci}")))?;
                }
            } else {
                let listed: Vec<(&str, Option<&str>)> = vfs
                    .iter()
                    .map(|(p, n)| (p.as_str(), Some(n.as_str())))
                    .collect();
                tree.add_pf(&nic.pf, &nic.pci.to_string(), &listed)
                    .map_err(setup(format!("PF {}", nic.pf)))?;
                links.add_nic(&nic.pf, &[]);
            }
            for vf in &nic.vfs {
                let parent = (!nic.vm).then_some((nic.pf.as_str(), vf.index));
                links.add_vf(
                    &vf.netdev,
                    &vf.pci.to_string(),
                    vf_mac(index, j, vf.index),
                    parent,
                );
                shown.insert(vf.pci.to_string(), Some(vf.netdev.clone()));
            }
        }
        Ok(NodeSriov {
            nics,
            tree,
            resources: Arc::new(StaticPodResources::new()),
            shown: Mutex::new(shown),
            initial: links.snapshot().pf_vfs,
        })
    }

    /// Makes sysfs show each VF's netdev as `links` has it now: its name in
    /// the agent's namespace, none while it is in a Pod's (a namespace's
    /// sysfs lists only its own netdevs). Writes only what changed.
    fn sync(&self, links: &FakeLinks) -> Result<(), String> {
        let snap = links.snapshot();
        let now: BTreeMap<&str, &str> = snap
            .vfs
            .iter()
            .map(|(name, vf)| (vf.pci.as_str(), name.as_str()))
            .collect();
        let mut shown = lock(&self.shown);
        let changed: Vec<(String, Option<String>)> = shown
            .iter()
            .filter_map(|(pci, was)| {
                let is = now.get(pci.as_str()).map(|n| (*n).to_string());
                (is != *was).then(|| (pci.clone(), is))
            })
            .collect();
        // Old names first, so that a name passed from one VF to another is
        // free when it is written.
        for (pci, _) in &changed {
            self.tree
                .set_netdev(pci, None)
                .map_err(|e| format!("VF {pci}: {e}"))?;
            shown.insert(pci.clone(), None);
        }
        for (pci, is) in changed {
            if let Some(name) = &is {
                self.tree
                    .set_netdev(&pci, Some(name))
                    .map_err(|e| format!("VF {pci} as {name}: {e}"))?;
            }
            shown.insert(pci, is);
        }
        Ok(())
    }
}

// ---- Processes ------------------------------------------------------------

/// A simulated node.
struct NodeSim {
    name: String,
    switch: Arc<FakeSwitch>,
    links: Arc<FakeLinks>,
    link: Link,
    cni: Arc<NodeCni>,
    hook_fail: watch::Sender<u32>,
    config: watch::Sender<AgentConfig>,
    agent: Mutex<Option<JoinHandle<()>>>,
    incarnation: Mutex<u32>,
    kubelet: Kubelet,
    /// Its SR-IOV devices (None: the node has none).
    sriov: Option<Arc<NodeSriov>>,
}

/// A controller replica.
struct ReplicaSim {
    index: usize,
    link: Link,
    task: Mutex<Option<(JoinHandle<()>, watch::Sender<bool>)>>,
    incarnation: Mutex<u32>,
}

/// The whole simulated cluster.
pub struct World {
    seed: u64,
    opts: RunOptions,
    testbed: Testbed,
    clock: SimClock,
    trace: Trace,
    server: ApiServer,
    client: Client,
    nodes: Vec<Arc<NodeSim>>,
    replicas: Vec<Arc<ReplicaSim>>,
    workloads: Workloads,
    controller_config: ControllerConfig,
    tasks: Vec<JoinHandle<()>>,
    /// When the last fault was over (None while faults are planned or
    /// active): a Pod that failed before then is retried before the run is
    /// judged.
    faults_over: Mutex<Option<tokio::time::Instant>>,
    /// The kubelets' device managers.
    devices: Devices,
    /// Where the emulated sysfs trees live (removed with the world).
    _sysfs_root: Option<tempfile::TempDir>,
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for n in &self.nodes {
            if let Some(t) = lock(&n.agent).take() {
                t.abort();
            }
        }
        for r in &self.replicas {
            if let Some((t, _)) = lock(&r.task).take() {
                t.abort();
            }
        }
    }
}

/// Runs `testbed` once with `opts` on a fresh single-threaded runtime with a
/// paused clock.
pub fn run(testbed: &Testbed, opts: &RunOptions) -> Result<RunOutcome, SimError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(SimError::Runtime)?;
    rt.block_on(async {
        let world = World::build(testbed, opts).await?;
        world.go().await
    })
}

impl World {
    /// Sets the cluster up: API server, CRDs, admission, Nodes, controller
    /// replicas, the nodes' back ends and kubelets (not yet started).
    async fn build(testbed: &Testbed, opts: &RunOptions) -> Result<World, SimError> {
        let devices = Devices::new(
            DeviceManager::new(&testbed.spec)
                .map_err(|e| SimError::Unsupported(format!("testbed.yaml: {e}")))?,
        );
        let sysfs_root = if testbed.spec.nodes.iter().any(|n| !n.sriov.is_empty()) {
            Some(
                tempfile::Builder::new()
                    .prefix("spur-sim-sysfs-")
                    .tempdir()
                    .map_err(|e| {
                        SimError::Setup(format!("a temporary directory for emulated sysfs: {e}"))
                    })?,
            )
        } else {
            None
        };
        let seed = opts.seed;
        let clock = SimClock::start();
        let trace = Trace::new(2000, opts.keep_trace);
        let shared_clock: Arc<dyn spur_kubeapi::Clock> = Arc::new(clock);
        let server = ApiServer::new(
            Store::new(shared_clock.clone(), seed_for(seed, "api/store")),
            shared_clock.clone(),
            seed_for(seed, "api/faults"),
        );
        spur_controller::admission::install_embedded(server.store().admission_mut());
        let client = apiclient::client(&server, "world", Link::new(), trace.clone(), clock);
        let setup = |what: &str| {
            let what = what.to_string();
            move |e: kube::Error| SimError::Setup(format!("{what}: {e}"))
        };
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(client.clone());
        for crd in [IPPool::crd(), IPAMBlock::crd()] {
            crds.create(&PostParams::default(), &crd)
                .await
                .map_err(setup("installing Spur's CRDs"))?;
        }
        let node_infos: Vec<spur_hil::api::NodeInfo> = testbed
            .spec
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Ok(spur_hil::api::NodeInfo {
                    name: n.name.clone(),
                    pod_cidr: pod_cidr(i).ok_or_else(|| {
                        SimError::Unsupported(format!("{} nodes: too many for pod CIDRs", i + 1))
                    })?,
                    address: host_ip(i),
                })
            })
            .collect::<Result<_, SimError>>()?;
        spur_hil::api::create_nodes(&client, &node_infos)
            .await
            .map_err(|e| SimError::Setup(e.to_string()))?;

        let agent_config = testbed.config.agent.clone().unwrap_or_default();
        let controller_config = testbed.config.controller.clone().unwrap_or_default();
        let mut nodes = Vec::new();
        for (i, n) in testbed.spec.nodes.iter().enumerate() {
            let switch = Arc::new(FakeSwitch::new());
            let links = Arc::new(FakeLinks::new());
            for nic in &n.nics {
                links.add_nic(nic, &[]);
            }
            let sriov = match (&sysfs_root, n.sriov.is_empty()) {
                (Some(root), false) => {
                    Some(Arc::new(NodeSriov::create(n, i, root.path(), &links)?))
                }
                _ => None,
            };
            let (hook_fail, _) = watch::channel(0u32);
            let hook = Arc::new(BackendHook {
                clock,
                trace: trace.clone(),
                node: n.name.clone(),
                rng: Mutex::new(rng_for(seed, &format!("backend/{}", n.name))),
                latency: opts.latency,
                fail: hook_fail.clone(),
                sriov: sriov.clone().map(|s| (s, Arc::downgrade(&links))),
            });
            switch.set_fault_hook(Some(hook.clone()));
            links.set_fault_hook(Some(hook));
            let link = Link::new();
            let cni = Arc::new(NodeCni::default());
            let kubelet = Kubelet::with_devices(
                KubeletConfig {
                    node: n.name.clone(),
                    mode: testbed.spec.cni_mode,
                    pod_cidr: node_infos[i].pod_cidr,
                    host_ip: node_infos[i].address,
                    seed: seed_for(seed, &format!("kubelet/{}", n.name)),
                    retry: RetryConfig::default(),
                },
                apiclient::client(
                    &server,
                    &format!("kubelet/{}", n.name),
                    link.clone(),
                    trace.clone(),
                    clock,
                ),
                cni.clone(),
                Arc::new(LinksHost {
                    links: links.clone(),
                    nics: n.nics.iter().cloned().collect(),
                    sriov: sriov.clone(),
                }),
                shared_clock.clone(),
                Some(KubeletDevices {
                    devices: devices.clone(),
                    resources: sriov.as_ref().map(|s| s.resources.clone()),
                }),
            );
            nodes.push(Arc::new(NodeSim {
                name: n.name.clone(),
                switch,
                links,
                link,
                cni,
                hook_fail,
                config: watch::Sender::new(agent_config.clone()),
                agent: Mutex::new(None),
                incarnation: Mutex::new(0),
                kubelet,
                sriov,
            }));
        }
        let replicas = (0..REPLICAS)
            .map(|i| {
                Arc::new(ReplicaSim {
                    index: i,
                    link: Link::new(),
                    task: Mutex::new(None),
                    incarnation: Mutex::new(0),
                })
            })
            .collect();
        let workloads = Workloads::new(
            apiclient::client(&server, "workloads", Link::new(), trace.clone(), clock),
            testbed.spec.nodes.iter().map(|n| n.name.clone()).collect(),
            seed_for(seed, "workloads"),
        );
        Ok(World {
            seed,
            opts: opts.clone(),
            testbed: testbed.clone(),
            clock,
            trace,
            server,
            client,
            nodes,
            replicas,
            workloads,
            controller_config,
            tasks: Vec::new(),
            faults_over: Mutex::new(None),
            devices,
            _sysfs_root: sysfs_root,
        })
    }

    fn record(&self, actor: &str, what: impl Into<String>) {
        self.trace.record(self.clock.elapsed(), actor, what);
    }

    /// Starts (or restarts) controller replica `r`.
    fn start_replica(&self, r: &ReplicaSim) {
        let incarnation = {
            let mut n = lock(&r.incarnation);
            *n += 1;
            *n
        };
        let actor = format!("controller/{}", r.index);
        let client = apiclient::client(
            &self.server,
            &actor,
            r.link.clone(),
            self.trace.clone(),
            self.clock,
        );
        let mut election = ElectionConfig::new("kube-system", "spur-controller", &actor);
        election.clock = Arc::new(self.clock);
        let mut cfg = ReplicaConfig::new(election, self.controller_config.clone());
        cfg.seed = Some(seed_for(self.seed, &format!("{actor}/{incarnation}")));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_replica(
            client,
            cfg,
            Arc::new(Metrics::new()),
            Arc::new(Health::default()),
            stop_rx,
        ));
        self.record(&actor, format!("started (incarnation {incarnation})"));
        *lock(&r.task) = Some((task, stop_tx));
    }

    /// Crashes replica `r` (no Lease release: it expires).
    fn crash_replica(&self, r: &ReplicaSim) {
        if let Some((task, _)) = lock(&r.task).take() {
            task.abort();
            self.record(&format!("controller/{}", r.index), "crashed");
        }
    }

    /// Starts (or restarts) the agent of `node`: a new process over the
    /// node's back ends, which serves CNI once its start-up is done.
    fn start_agent(&self, node: &Arc<NodeSim>) {
        let incarnation = {
            let mut n = lock(&node.incarnation);
            *n += 1;
            *n
        };
        let actor = format!("agent/{}", node.name);
        let client = apiclient::client(
            &self.server,
            &actor,
            node.link.clone(),
            self.trace.clone(),
            self.clock,
        );
        let seed = seed_for(self.seed, &format!("{actor}/{incarnation}"));
        let ipam = Ipam::start(
            client.clone(),
            IpamConfig {
                seed: Some(seed),
                node: Some(node.name.clone()),
                ..IpamConfig::default()
            },
        );
        let cluster = KubeCluster::start_with(client, &node.name, Some(seed));
        let config = node.config.borrow().clone();
        let mut agent = Agent::new(
            AgentSettings {
                node: node.name.clone(),
                datapath: spur_node::agent::DATAPATH_NETDEV.to_string(),
            },
            config,
            ipam,
            Arc::new(cluster.clone()),
            node.switch.clone(),
            node.links.clone(),
        );
        if let Some(s) = &node.sriov {
            agent = agent.with_sriov(SriovBackends {
                sysfs: s.tree.sysfs(),
                pod_resources: s.resources.clone(),
                vfs: node.links.clone(),
            });
        }
        let agent = Arc::new(agent);
        let source = ConfigSource::Watch(node.config.subscribe());
        let cni = node.cni.clone();
        let trace = self.trace.clone();
        let clock = self.clock;
        let task = tokio::spawn(async move {
            start_up(&agent, cluster.wait_ready()).await;
            let (tx, mut rx) = mpsc::unbounded_channel::<CniJob>();
            cni.set(Some(tx));
            trace.record(clock.elapsed(), &actor, "serving CNI");
            let mut calls = tokio::task::JoinSet::new();
            let periodic = run_periodic(agent.clone(), source, RESYNC);
            tokio::pin!(periodic);
            loop {
                tokio::select! {
                    biased;
                    job = rx.recv() => {
                        let Some((req, reply)) = job else { break };
                        let agent = agent.clone();
                        let (trace, actor) = (trace.clone(), actor.clone());
                        calls.spawn(async move {
                            let what = format!(
                                "{:?} {} {}",
                                req.command,
                                req.container_id.as_deref().unwrap_or("-"),
                                req.ifname.as_deref().unwrap_or("-")
                            );
                            let r = agent.handle(&req).await;
                            trace.record(
                                clock.elapsed(),
                                &actor,
                                format!(
                                    "{what} -> {}",
                                    match &r {
                                        Ok(_) => "ok".to_string(),
                                        Err(e) => format!("error {}", e.code),
                                    }
                                ),
                            );
                            let _ = reply.send(r);
                        });
                    }
                    Some(_) = calls.join_next() => {}
                    never = &mut periodic => match never {},
                }
            }
        });
        self.record(
            &format!("agent/{}", node.name),
            format!("started (incarnation {incarnation})"),
        );
        *lock(&node.agent) = Some(task);
    }

    /// Crashes the agent of `node` wherever it is (mid-ADD included): its
    /// socket goes, its tasks stop, its memory is lost.
    fn crash_agent(&self, node: &NodeSim) {
        node.cni.set(None);
        if let Some(t) = lock(&node.agent).take() {
            t.abort();
            self.record(&format!("agent/{}", node.name), "crashed");
        }
    }

    /// The whole run.
    async fn go(mut self) -> Result<RunOutcome, SimError> {
        for r in self.replicas.clone() {
            self.start_replica(&r);
        }
        // Manifests, as the harness applies them (same placement, same
        // workload Pod names); the live workload controllers take over.
        // The kubelets watch before anything is applied, so they see the
        // Pods in the order the manifests create them.
        for n in self.nodes.clone() {
            let k = n.kubelet.clone();
            self.tasks.push(tokio::spawn(async move { k.run().await }));
        }
        let node_names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let applied =
            spur_hil::api::apply_manifests(&self.client, &self.testbed.manifests, &node_names)
                .await
                .map_err(|e| SimError::Setup(e.to_string()))?;
        self.record(
            "world",
            format!(
                "applied {} objects ({} refused)",
                applied.applied,
                applied.rejected.len()
            ),
        );
        let workloads = self.workloads.clone();
        self.tasks
            .push(tokio::spawn(async move { workloads.run().await }));
        for n in self.nodes.clone() {
            self.start_agent(&n);
        }

        let targets = self.targets();
        let plan = faults::plan(self.opts.faults, self.seed, &targets);
        let mut violations: Vec<(Duration, Violation)> = Vec::new();
        let mut seen: BTreeSet<(&'static str, String)> = BTreeSet::new();
        let mut trace_at_violation = Vec::new();
        let applied_at = self.clock.elapsed();
        // The testbed first comes up undisturbed (so its expectations are
        // those of its manifests, as on the harness); the faults then hit
        // the running cluster — crashes land mid-ADD and mid-DEL of the
        // churn, the re-created sandboxes after reboots, the scaled
        // workloads — and it must come back to the same state.
        loop {
            tokio::time::sleep(self.opts.check_every).await;
            self.sync_sysfs();
            self.collect_devices();
            // One reading of the world serves the invariants and the
            // convergence test (nothing runs in between).
            let facts = crate::report::Facts::collect(&self);
            for v in self.check(&facts, false) {
                if seen.insert((v.invariant, v.detail.clone())) {
                    if violations.is_empty() {
                        trace_at_violation = self.trace.recent();
                    }
                    self.record("invariants", v.to_string());
                    violations.push((self.clock.elapsed() - applied_at, v));
                }
            }
            if self.unsettled(&facts).is_empty()
                || self.clock.elapsed() - applied_at > self.opts.converge_within
            {
                break;
            }
        }
        let start = self.clock.elapsed();
        self.record(
            "faults",
            format!("the testbed is up; {} faults from now", plan.len()),
        );
        let mut pending: Vec<Planned> = plan.clone();
        pending.reverse();
        let mut undo: Vec<(Duration, Fault)> = Vec::new();
        let mut churn: u32 = 0;
        loop {
            tokio::time::sleep(self.opts.check_every).await;
            let now = self.clock.elapsed() - start;
            while pending.last().is_some_and(|p| p.at <= now) {
                if let Some(p) = pending.pop() {
                    self.inject(&p, &mut churn).await;
                    undo.push((now + p.lasts, p.fault.clone()));
                }
            }
            let (due, later): (Vec<_>, Vec<_>) = undo.into_iter().partition(|(t, _)| *t <= now);
            undo = later;
            for (_, f) in due {
                self.restore(&f).await;
            }
            let quiet = pending.is_empty() && undo.is_empty();
            if quiet && !plan.is_empty() {
                lock(&self.faults_over).get_or_insert_with(tokio::time::Instant::now);
            }
            self.sync_sysfs();
            self.collect_devices();
            let facts = crate::report::Facts::collect(&self);
            for v in self.check(&facts, false) {
                if seen.insert((v.invariant, v.detail.clone())) {
                    if violations.is_empty() {
                        trace_at_violation = self.trace.recent();
                    }
                    self.record("invariants", v.to_string());
                    violations.push((now, v));
                }
            }
            if quiet && self.unsettled(&facts).is_empty() {
                break;
            }
            if now > faults::ACTIVE_WINDOW + self.opts.converge_within {
                violations.push((
                    now,
                    Violation {
                        invariant: "converges",
                        detail: format!(
                            "the cluster did not converge within {} s of simulated time after the faults: {}",
                            self.opts.converge_within.as_secs(),
                            self.unsettled(&facts).join("; ")
                        ),
                    },
                ));
                break;
            }
        }
        let converged_after = self.clock.elapsed() - applied_at;
        let facts = crate::report::Facts::collect(&self);
        let allocations = facts.held.len();
        let api = self.server.stats();
        // At quiescence: everything, garbage collection included.
        for v in self.check(&facts, true) {
            if seen.insert((v.invariant, v.detail.clone())) {
                if violations.is_empty() {
                    trace_at_violation = self.trace.recent();
                }
                violations.push((self.clock.elapsed() - start, v));
            }
        }
        let mut report = crate::report::build(&self, facts, &applied.rejected, &applied.pods);
        report.seed = Some(self.seed);
        if self.opts.teardown {
            let leaks = self.teardown().await;
            report.failures.extend(leaks);
        }
        report.failures.extend(
            violations
                .iter()
                .map(|(at, v)| format!("{v} (at {:.3} s)", at.as_secs_f64())),
        );
        Ok(RunOutcome {
            report,
            violations,
            trace_at_violation,
            trace: self.trace.all(),
            fingerprint: self.trace.fingerprint(),
            sim_time: self.clock.elapsed(),
            plan,
            converged_after,
            allocations,
            api,
        })
    }

    fn targets(&self) -> Targets {
        let kinds = |k: &str| {
            self.testbed
                .manifests
                .iter()
                .filter(|m| m.is_builtin(k))
                .count()
        };
        Targets {
            nodes: self.nodes.len(),
            replicas: self.replicas.len(),
            workloads: kinds("Deployment") + kinds("StatefulSet"),
            nads: self.churn_networks().len(),
            pools: self
                .testbed
                .manifests
                .iter()
                .filter(|m| m.kind() == "IPPool")
                .count(),
        }
    }

    /// NADs churn Pods may use: the testbed's, `NS/NAME`.
    fn churn_networks(&self) -> Vec<(String, String)> {
        self.testbed
            .manifests
            .iter()
            .filter(|m| m.kind() == "NetworkAttachmentDefinition")
            .map(|m| {
                (
                    m.namespace().unwrap_or("default").to_string(),
                    m.name().to_string(),
                )
            })
            .collect()
    }

    /// The device-plugin resource the testbed's NAD `ns/name` names in its
    /// `k8s.v1.cni.cncf.io/resourceName` annotation.
    fn nad_resource(&self, ns: &str, name: &str) -> Option<String> {
        self.testbed
            .manifests
            .iter()
            .find(|m| {
                m.kind() == "NetworkAttachmentDefinition"
                    && m.name() == name
                    && m.namespace().unwrap_or("default") == ns
            })?
            .object
            .pointer("/metadata/annotations")?
            .get(spur_hil::kubelet::multus::RESOURCE_NAME_ANNOTATION)?
            .as_str()
            .map(str::to_string)
    }

    fn workload_refs(&self) -> Vec<(String, String, String)> {
        self.testbed
            .manifests
            .iter()
            .filter(|m| m.is_builtin("Deployment") || m.is_builtin("StatefulSet"))
            .map(|m| {
                (
                    m.kind().to_string(),
                    m.namespace().unwrap_or("default").to_string(),
                    m.name().to_string(),
                )
            })
            .collect()
    }

    async fn inject(&self, p: &Planned, churn: &mut u32) {
        self.record(
            "faults",
            format!("{:?} for {:.3} s", p.fault, p.lasts.as_secs_f64()),
        );
        match &p.fault {
            Fault::ApiLatency(d) => self.server.faults().add(Rule {
                matcher: Matcher::any(),
                fault: ApiFault::Latency(*d),
                probability: 1.0,
                remaining: None,
            }),
            Fault::ConflictStorm(pm) => {
                for m in ["POST", "PUT", "PATCH"] {
                    self.server.faults().add(Rule {
                        matcher: Matcher {
                            methods: vec![m.into()],
                            resource: None,
                            path_contains: None,
                        },
                        fault: ApiFault::Conflict,
                        probability: f64::from(*pm) / 1000.0,
                        remaining: None,
                    })
                }
            }
            Fault::ServerErrors(code, pm) => self.server.faults().add(Rule {
                matcher: Matcher::any(),
                fault: ApiFault::Status(*code),
                probability: f64::from(*pm) / 1000.0,
                remaining: None,
            }),
            Fault::DropWatches => self.server.drop_watches(),
            Fault::ExpireWatches => self.server.expire_watches(),
            Fault::Partition(n) => self.nodes[*n].link.cut(),
            Fault::AgentCrash(n) => self.crash_agent(&self.nodes[*n]),
            Fault::ControllerCrash(r) => self.crash_replica(&self.replicas[*r]),
            Fault::NodeReboot(n) => {
                let node = &self.nodes[*n];
                self.crash_agent(node);
                node.switch.wipe();
                node.links.reboot();
                self.sync_sysfs();
                node.kubelet.node_rebooted();
                self.record(
                    &format!("node/{}", node.name),
                    "rebooted: OVSDB and Pod namespaces lost",
                );
            }
            Fault::BackendErrors(pm) => {
                for n in &self.nodes {
                    n.hook_fail.send_replace(*pm);
                }
            }
            Fault::ChurnPods(count) => {
                let nets = self.churn_networks();
                let mut rng = rng_for(self.seed, &format!("churn/{churn}"));
                let ns: Api<Namespace> = Api::all(self.client.clone());
                let obj: Namespace = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHURN_NAMESPACE}
                }))
                .unwrap_or_default();
                let _ = ns.create(&PostParams::default(), &obj).await;
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), CHURN_NAMESPACE);
                for _ in 0..*count {
                    *churn += 1;
                    let (nns, nad) = &nets[(rng.next_u64() % nets.len() as u64) as usize];
                    // A network of VFs: the Pod asks for one, as its
                    // users would.
                    let container = match self.nad_resource(nns, nad) {
                        Some(r) => json!({"name": "c", "image": "busybox",
                            "resources": {"limits": {r: "1"}}}),
                        None => json!({"name": "c", "image": "busybox"}),
                    };
                    let mut pod = json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": format!("churn-{churn}"), "namespace": CHURN_NAMESPACE,
                            "annotations": {"k8s.v1.cni.cncf.io/networks": format!("{nns}/{nad}")}},
                        "spec": {"containers": [container]}
                    });
                    self.workloads.place(&mut pod);
                    if let Ok(pod) = serde_json::from_value::<Pod>(pod) {
                        let _ = pods.create(&PostParams::default(), &pod).await;
                    }
                }
            }
            Fault::Scale(w, by) => {
                if let Some((kind, ns, name)) = self.workload_refs().get(*w) {
                    self.scale(kind, ns, name, i64::from(*by), false).await;
                }
            }
            Fault::EditNad(n) => {
                if let Some((ns, name)) = self.churn_networks().get(*n) {
                    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
                        self.client.clone(),
                        ns,
                        &spur_node::agent::cluster::nad_resource(),
                    );
                    let _ = api
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(
                                json!({"metadata": {"labels": {"spur-sim/edited": "true"}}}),
                            ),
                        )
                        .await;
                }
            }
            Fault::EditPool(n) => {
                let names: Vec<String> = self
                    .testbed
                    .manifests
                    .iter()
                    .filter(|m| m.kind() == "IPPool")
                    .map(|m| m.name().to_string())
                    .collect();
                if let Some(name) = names.get(*n) {
                    let api: Api<IPPool> = Api::all(self.client.clone());
                    let _ = api
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(
                                json!({"metadata": {"labels": {"spur-sim/edited": "true"}}}),
                            ),
                        )
                        .await;
                    // Moving the ranges of a pool in use must be refused;
                    // of an unused pool it is allowed, so move them back.
                    if let Ok(pool) = api.get(name).await {
                        let old = pool.spec.ip_ranges.clone();
                        let moved = json!({"spec": {"ipRanges": [{"cidr": "192.0.2.0/24"}], "subnetInfo": {"gateway": "192.0.2.1", "prefixLength": 24}}});
                        let r = api
                            .patch(name, &PatchParams::default(), &Patch::Merge(moved))
                            .await;
                        self.record(
                            "faults",
                            format!(
                                "moving IPPool {name}'s ranges: {}",
                                if r.is_ok() {
                                    "allowed (unused)"
                                } else {
                                    "refused"
                                }
                            ),
                        );
                        if r.is_ok() {
                            let back = Patch::Merge(json!({"spec": {
                                "ipRanges": old, "subnetInfo": pool.spec.subnet_info}}));
                            let pp = PatchParams::default();
                            self.until_ok("moving the pool's ranges back", || {
                                api.patch(name, &pp, &back)
                            })
                            .await;
                        }
                    }
                }
            }
        }
    }

    async fn restore(&self, f: &Fault) {
        match f {
            Fault::ApiLatency(_) | Fault::ConflictStorm(_) | Fault::ServerErrors(..) => {
                self.server.faults().clear();
            }
            Fault::DropWatches | Fault::ExpireWatches | Fault::EditPool(_) => return,
            Fault::Partition(n) => self.nodes[*n].link.heal(),
            Fault::AgentCrash(n) | Fault::NodeReboot(n) => {
                let node = self.nodes[*n].clone();
                if lock(&node.agent).is_none() {
                    self.start_agent(&node);
                }
            }
            Fault::ControllerCrash(r) => {
                let r = self.replicas[*r].clone();
                if lock(&r.task).is_none() {
                    self.start_replica(&r);
                }
            }
            Fault::BackendErrors(_) => {
                for n in &self.nodes {
                    n.hook_fail.send_replace(0);
                }
            }
            Fault::ChurnPods(_) => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), CHURN_NAMESPACE);
                let (dp, lp) = (DeleteParams::default(), ListParams::default());
                self.until_ok("deleting the churn Pods", || {
                    pods.delete_collection(&dp, &lp)
                })
                .await;
            }
            Fault::Scale(w, by) => {
                if let Some((kind, ns, name)) = self.workload_refs().get(*w) {
                    let _ = by;
                    self.scale(kind, ns, name, 0, true).await;
                }
            }
            Fault::EditNad(n) => {
                if let Some((ns, name)) = self.churn_networks().get(*n) {
                    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
                        self.client.clone(),
                        ns,
                        &spur_node::agent::cluster::nad_resource(),
                    );
                    let patch =
                        Patch::Merge(json!({"metadata": {"labels": {"spur-sim/edited": null}}}));
                    let pp = PatchParams::default();
                    self.until_ok("removing the NAD's label", || api.patch(name, &pp, &patch))
                        .await;
                }
            }
        }
        self.record("faults", format!("{f:?} over"));
    }

    /// Sets the replicas of workload `kind ns/name` to its manifest's count
    /// plus `by`; with `persist`, retries until the API takes it (the world
    /// undoing a fault must not give up because of another fault).
    async fn scale(&self, kind: &str, ns: &str, name: &str, by: i64, persist: bool) {
        let plural = if kind == "StatefulSet" {
            "statefulsets"
        } else {
            "deployments"
        };
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("apps", "v1", kind),
            plural,
        );
        let original = self
            .testbed
            .manifests
            .iter()
            .find(|m| {
                m.is_builtin(kind) && m.name() == name && m.namespace().unwrap_or("default") == ns
            })
            .and_then(|m| m.object.pointer("/spec/replicas").and_then(Value::as_i64))
            .unwrap_or(1);
        let want = (original + by).max(0);
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        let patch = Patch::Merge(json!({"spec": {"replicas": want}}));
        let what = format!("{kind} {ns}/{name}: replicas -> {want}");
        let pp = PatchParams::default();
        if persist {
            self.until_ok(&what, || api.patch(name, &pp, &patch)).await;
        } else if let Err(e) = api.patch(name, &pp, &patch).await {
            self.record("faults", format!("{what}: {e}"));
            return;
        }
        self.record("faults", what);
    }

    /// Retries `f` every second of simulated time until it succeeds (at most
    /// ten minutes): how the world undoes a fault while others are active.
    async fn until_ok<T, E: std::fmt::Display, Fut: std::future::Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        mut f: impl FnMut() -> Fut,
    ) -> Option<T> {
        let deadline = self.clock.elapsed() + Duration::from_secs(600);
        loop {
            match f().await {
                Ok(v) => return Some(v),
                Err(e) if self.clock.elapsed() > deadline => {
                    self.record("world", format!("{what}: gave up: {e}"));
                    return None;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// The invariants over `facts` (what the world holds now); with
    /// `quiescent`, also those that hold only once the cluster converged.
    fn check(&self, facts: &crate::report::Facts, quiescent: bool) -> Vec<Violation> {
        let mut out = Vec::new();
        out.extend(facts.bad_blocks.clone());
        out.extend(invariants::no_double_owner(&facts.held, &facts.pools));
        out.extend(invariants::ipam_objects_bounded(&facts.blocks));
        out.extend(invariants::acknowledged_present(&facts.held, &facts.acked));
        for (node, att) in &facts.attachments {
            out.extend(invariants::retries_idempotent(node, att, &[]));
        }
        out.extend(invariants::retries_idempotent(
            "cluster",
            &Default::default(),
            &facts.held,
        ));
        out.extend(invariants::ready_pods_match(
            &facts.ready_interfaces,
            &facts.pools,
        ));
        if let Some(dp) = &facts.dataplane {
            out.extend(invariants::vlan_isolation(&facts.ready_interfaces, |id| {
                dp.l2_domain(id).ok().flatten()
            }));
        }
        out.extend(invariants::vfs_accounted(
            &facts.vfs,
            &facts.sandboxes,
            &facts.granted,
            quiescent,
        ));
        if quiescent {
            out.extend(invariants::allocations_have_live_owners(
                &facts.held,
                &facts.live_pods,
                &facts.live_sets,
            ));
        }
        out
    }

    /// What keeps the cluster, as `facts` show it, from having converged
    /// (nothing: it has): every agent serves, every Pod is settled (ready,
    /// or failed with an error that is not a "try again"), none
    /// terminating, every allocation has a live owner, every pool's usage
    /// is current.
    fn unsettled(&self, facts: &crate::report::Facts) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if lock(&n.cni.socket).is_none() {
                out.push(format!("the agent of {} does not serve", n.name));
            }
        }
        for p in &facts.pods {
            if p.terminating {
                out.push(format!("Pod {} is terminating", p.pod));
                continue;
            }
            match &p.view {
                None => out.push(format!("Pod {} has not been seen by its kubelet", p.pod)),
                Some(v) if !v.ready && (v.last_error.is_none() || v.failed_attempts == 0) => {
                    out.push(format!("Pod {} is being set up", p.pod))
                }
                Some(v) if !v.ready && failed_during_faults(self, &p.pod) => out.push(format!(
                    "Pod {} last failed while faults were active; waiting for its next attempt",
                    p.pod
                )),
                Some(v)
                    if !v.ready
                        && v.last_error.as_deref().is_some_and(|e| {
                            e.contains("try again")
                                || e.contains("not ready")
                                || e.contains("cannot reach")
                        }) =>
                {
                    out.push(format!(
                        "Pod {} failed with a transient error: {}",
                        p.pod,
                        v.last_error.clone().unwrap_or_default()
                    ))
                }
                Some(_) => {}
            }
        }
        let gc = invariants::allocations_have_live_owners(
            &facts.held,
            &facts.live_pods,
            &facts.live_sets,
        );
        out.extend(gc.into_iter().map(|v| v.detail));
        // Every VF no sandbox holds is back in the host under its own
        // name, without its record (the agent's recovery of VFs from dead
        // sandboxes may still be on its way; what the PF sets for it is
        // final by then, and judged by the invariants).
        for vf in &facts.vfs {
            let held = vf.places.iter().any(|p| match p {
                invariants::VfPlace::Pod { netns, .. } => facts
                    .sandboxes
                    .contains_key(&(vf.node.clone(), netns.clone())),
                invariants::VfPlace::Host { .. } => false,
            });
            let home = matches!(vf.places.as_slice(),
                [invariants::VfPlace::Host { name, alias }] if *name == vf.netdev && alias.is_empty());
            if !held && !home {
                let why = invariants::vf_not_home(vf).unwrap_or_default();
                out.push(format!("node {}: VF {}: {why}", vf.node, vf.pci));
            }
        }
        let usage = spur_controller::usage::compute_usage(facts.pools.iter(), facts.blocks.iter());
        for p in &facts.pools {
            let name = p.name_any();
            if let Some(want) = usage.get(&name) {
                if spur_controller::usage::stored_usage(p).as_ref() != Some(want) {
                    out.push(format!("IPPool {name}: status.usage is not current"));
                }
            }
        }
        out
    }

    /// Deletes every Pod and workload, lets the cluster settle, and returns
    /// what leaked: allocations, access ports, host links, namespaces.
    async fn teardown(&self) -> Vec<String> {
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        let namespaces: Vec<String> = ns_api
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|n| n.name_any()).collect())
            .unwrap_or_default();
        for ns in &namespaces {
            for (kind, plural) in [
                ("Deployment", "deployments"),
                ("StatefulSet", "statefulsets"),
            ] {
                let ar = kube::api::ApiResource::from_gvk_with_plural(
                    &kube::api::GroupVersionKind::gvk("apps", "v1", kind),
                    plural,
                );
                let api: Api<kube::api::DynamicObject> =
                    Api::namespaced_with(self.client.clone(), ns, &ar);
                let _ = api
                    .delete_collection(&DeleteParams::default(), &ListParams::default())
                    .await;
            }
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let _ = pods
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await;
        }
        let deadline = self.clock.elapsed() + Duration::from_secs(20 * 60);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let leaks = self.leaks();
            if leaks.is_empty() {
                return Vec::new();
            }
            if self.clock.elapsed() > deadline {
                return leaks
                    .into_iter()
                    .map(|l| format!("leak after every Pod was deleted: {l}"))
                    .collect();
            }
        }
    }

    /// What is left once every Pod is gone.
    fn leaks(&self) -> Vec<String> {
        self.sync_sysfs();
        self.collect_devices();
        let facts = crate::report::Facts::collect(self);
        let mut out: Vec<String> =
            invariants::vfs_accounted(&facts.vfs, &facts.sandboxes, &facts.granted, true)
                .into_iter()
                .map(|v| v.to_string())
                .collect();
        for a in self.devices.admitted() {
            out.push(format!(
                "node {}: the device manager still holds {:?} for Pod {} (UID {})",
                a.node, a.allocation, a.pod, a.uid
            ));
        }
        let store = self.server.store();
        let pods = store.objects_of("", "pods").len();
        if pods > 0 {
            out.push(format!("{pods} Pods still exist"));
        }
        for b in store.objects_of("spur.dev", "ipamblocks") {
            if let Ok(b) = serde_json::from_value::<IPAMBlock>(b.clone()) {
                for a in &b.spec.allocations {
                    out.push(format!(
                        "IPAMBlock {} holds an address for {}",
                        b.name_any(),
                        a.owner
                    ));
                }
            }
        }
        drop(store);
        for n in &self.nodes {
            for (bridge, p) in n.switch.access_ports() {
                out.push(format!(
                    "node {}: access port {} on {bridge}",
                    n.name, p.name
                ));
            }
            let links = n.links.snapshot();
            for h in links.hosts.keys() {
                out.push(format!("node {}: host link {h}", n.name));
            }
            for ns in links.netns.keys() {
                out.push(format!(
                    "node {}: network namespace {}",
                    n.name,
                    ns.display()
                ));
            }
        }
        out
    }

    // ---- Read access for the report --------------------------------------

    pub(crate) fn testbed(&self) -> &Testbed {
        &self.testbed
    }

    pub(crate) fn server(&self) -> &ApiServer {
        &self.server
    }

    pub(crate) fn node_views(
        &self,
    ) -> impl Iterator<Item = (&str, &Kubelet, &FakeSwitch, &FakeLinks)> {
        self.nodes
            .iter()
            .map(|n| (n.name.as_str(), &n.kubelet, &*n.switch, &*n.links))
    }

    /// Each node with its SR-IOV devices (None: it has none).
    pub(crate) fn sriov_views(&self) -> impl Iterator<Item = (&str, Option<&NodeSriov>)> {
        self.nodes
            .iter()
            .map(|n| (n.name.as_str(), n.sriov.as_deref()))
    }

    /// The kubelets' device managers.
    pub(crate) fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Brings every node's emulated sysfs up to date with its kernel.
    fn sync_sysfs(&self) {
        for n in &self.nodes {
            if let Some(s) = &n.sriov {
                if let Err(e) = s.sync(&n.links) {
                    self.record(
                        &format!("node/{}", n.name),
                        format!("emulated sysfs not updated: {e}"),
                    );
                }
            }
        }
    }

    /// The device manager's side of Pods that went while their kubelet
    /// could not see them (deleted while the node was rebooting): the
    /// devices of a Pod UID that is neither in the API nor in a sandbox
    /// of its kubelet are released, as kubelet's device manager does for
    /// Pods that are no longer active.
    fn collect_devices(&self) {
        let live: BTreeSet<String> = self
            .server
            .store()
            .objects_of("", "pods")
            .into_iter()
            .filter_map(|p| p.pointer("/metadata/uid").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let admitted = self.devices.admitted();
        for n in &self.nodes {
            let busy: BTreeSet<String> = n
                .kubelet
                .pods()
                .into_iter()
                .filter_map(|v| v.sandbox.map(|s| s.pod_uid))
                .collect();
            let kd = KubeletDevices {
                devices: self.devices.clone(),
                resources: n.sriov.as_ref().map(|s| s.resources.clone()),
            };
            for uid in self.devices.known_uids(&n.name) {
                if live.contains(&uid) || busy.contains(&uid) {
                    continue;
                }
                match admitted.iter().find(|a| a.node == n.name && a.uid == uid) {
                    Some(a) => kd.forget(&n.name, &uid, &a.pod),
                    None => {
                        self.devices.release(&n.name, &uid);
                    }
                }
                self.record(
                    &format!("kubelet/{}", n.name),
                    format!("devices of the gone Pod UID {uid} released"),
                );
            }
        }
    }
}

/// True when the last CNI call for `pod` came before the faults were over.
fn failed_during_faults(world: &World, pod: &PodRef) -> bool {
    let Some(over) = *lock(&world.faults_over) else {
        return false;
    };
    world
        .nodes
        .iter()
        .flat_map(|n| n.kubelet.calls())
        .filter(|c| &c.pod == pod)
        .map(|c| c.at)
        .max()
        .is_some_and(|last| last < over)
}

/// The Pods of a StatefulSet object as the invariants see it.
pub(crate) fn live_set(obj: &Value) -> Option<invariants::LiveSet> {
    let s: StatefulSet = serde_json::from_value(obj.clone()).ok()?;
    Some(invariants::LiveSet {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
        replicas: u32::try_from(s.spec.and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0),
    })
}

/// The Pod reference of a stored Pod object.
pub(crate) fn pod_ref(obj: &Value) -> PodRef {
    PodRef::new(
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use spur_node::sriov::vf::{VfAttachSpec, VfLinks, VfRecord};
    use spur_testbed::spec::SriovPf;

    fn node(vm: bool) -> spur_testbed::spec::Node {
        spur_testbed::spec::Node {
            name: "n".into(),
            nics: vec![],
            sriov: vec![SriovPf {
                pf: "ens1f0".into(),
                vfs: 2,
                resource_name: "intel.com/x".into(),
                vm,
            }],
        }
    }

    #[test]
    fn sysfs_shows_each_vf_where_the_kernel_has_it() {
        let root = tempfile::tempdir().unwrap();
        let links = FakeLinks::new();
        let s = NodeSriov::create(&node(false), 3, root.path(), &links).unwrap();
        let sysfs = s.tree.sysfs();
        let pf = sysfs.pf("ens1f0").unwrap();
        assert_eq!(pf.vfs.len(), 2);
        assert_eq!(pf.vfs[1].pci.to_string(), "0000:3b:01.1");
        assert_eq!(pf.vfs[1].netdev.as_deref(), Some("ens1f0v1"));
        let snap = links.snapshot();
        assert_eq!(snap.vfs["ens1f0v1"].mac, [0x02, 0, 3, 0, 0, 1]);
        assert!(snap.nics.contains_key("ens1f0"), "the PF is a NIC");
        assert_eq!(s.initial.len(), 2);

        // A Pod's namespace takes VF 1: sysfs no longer shows its netdev.
        let netns = Path::new("/var/run/netns/p");
        links.add_netns(netns);
        let spec = VfAttachSpec {
            netdev: "ens1f0v1".into(),
            record: VfRecord {
                name: "ens1f0v1".into(),
                pci: "0000:3b:01.1".parse().unwrap(),
                parent: Some(("ens1f0".into(), 1)),
                pf: PfVfSettings::default(),
            },
            netns: netns.to_path_buf(),
            ifname: "eth1".into(),
            mtu: 1500,
            mac: None,
            addresses: vec![],
            routes: vec![],
            announce: false,
        };
        futures::executor::block_on(VfLinks::attach_vf(&links, &spec)).unwrap();
        s.sync(&links).unwrap();
        assert_eq!(sysfs.vf("0000:3b:01.1").unwrap().netdev, None);
        // The namespace goes without a DEL: the VF is home under the name
        // it had in the Pod, and sysfs says so.
        links.remove_netns(netns);
        s.sync(&links).unwrap();
        let vf = sysfs.vf("0000:3b:01.1").unwrap();
        assert_eq!(vf.netdev.as_deref(), Some("eth1"));
        assert_eq!(vf.pf.map(|p| p.index), Some(1));
        // Back under its own name.
        futures::executor::block_on(VfLinks::restore_host_vf(&links, "eth1")).unwrap();
        s.sync(&links).unwrap();
        assert_eq!(
            sysfs.vf("0000:3b:01.1").unwrap().netdev.as_deref(),
            Some("ens1f0v1")
        );
        assert!(sysfs.pf("eth1").is_err(), "the old name is gone from sysfs");
    }

    #[test]
    fn a_vm_node_sees_its_vfs_without_their_pf() {
        let root = tempfile::tempdir().unwrap();
        let links = FakeLinks::new();
        let s = NodeSriov::create(&node(true), 0, root.path(), &links).unwrap();
        let vf = s.tree.sysfs().vf("0000:3b:01.0").unwrap();
        assert_eq!(vf.netdev.as_deref(), Some("ens1f0v0"));
        assert_eq!(vf.pf, None);
        assert!(s.tree.sysfs().pf("ens1f0").is_err());
        let snap = links.snapshot();
        assert!(snap.pf_vfs.is_empty() && !snap.nics.contains_key("ens1f0"));
        assert!(s.initial.is_empty());
    }
}
