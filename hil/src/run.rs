//! One run of a testbed on this machine (`spur-hil run DIR`).
//!
//! In order: load the testbed; bring the lab up ([`crate::lab`]); start the
//! embedded API server with Spur's CRDs and the Node objects
//! ([`crate::api`]); start the real `spur-controller` next to it with the
//! webhook Service and ValidatingWebhookConfiguration of
//! deploy/controller.yaml, and wait until its webhook decides IPPool
//! writes (it also keeps pool usage, collects garbage and leads); apply the
//! manifests (refusals, the webhook's included, are results); write each
//! node's `spur-agent.conf`,
//! start the agents and wait until they are ready; let each node's kubelet
//! stand-in add its Pods (nodes in parallel, a node's Pods in manifest
//! order) and write their status; wait for the pool usage to settle; build
//! the report from what is really there (network-status annotations
//! cross-checked against the interfaces in the Pods' namespaces, VLANs
//! from the OVS access ports, pools from the IPPools' ranges, reachability
//! and multicast measured for the expectations); judge it with
//! `spur_testbed::check`; tear down: CNI DEL of every Pod, leak checks
//! (IPAM allocations, access ports, Pod namespaces), then the lab.
//!
//! Pure decisions (which pairs to probe, which interfaces a report holds,
//! which ConfigMap configures the agents) are functions with unit tests.
//!
//! What does not live here: the lab's plumbing, the API calls, CNI calls
//! and probes (their modules), and printing (the caller prints the report
//! this returns, except with `--keep`, where the report is printed before
//! waiting for Ctrl-C).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use serde_json::Value;
use spur_core::config::{
    AgentConfig, ControllerConfig, AGENT_CONF_KEY, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE,
    CONTROLLER_CONF_KEY,
};
use spur_core::ippool::PoolLayout;
use spur_core::status::{NetworkStatus, NETWORK_STATUS_ANNOTATION};
use spur_core::Subject;
use spur_testbed::{
    check, Expect, InterfaceRef, InterfaceReport, LoadErrors, Manifest, MulticastReport, PodRef,
    PodReport, Rejection, Report, Runner, Testbed,
};

use crate::api::{self, ApiError, Cluster, NodeInfo};
use crate::cleanup::{self, Cleanup, Interrupts, Undo};
use crate::kubelet::{Kubelet, KubeletDevices, NodeCtx, Sandbox};
use crate::lab::{Lab, LabError, LabOptions, NodeLab, RealNicMap};
use crate::probe::{self, AccessPort, Endpoint, MulticastProbe, SnoopingSwitch, SwitchKind};
use crate::progress::{secs, Progress};
use spur_node::podresources::server::{PodResourcesServer, ServerError};
use spur_node::podresources::StaticPodResources;

/// How long the pool-usage reconciler may take to catch up.
pub const USAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What `spur-hil run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The testbed directory.
    pub dir: PathBuf,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// Leave the lab up until Ctrl-C.
    pub keep: bool,
    /// Where `spur-agent` and `spur` are.
    pub bin_dir: PathBuf,
    /// Testbed NICs backed by real host interfaces.
    pub real_nics: Vec<RealNicMap>,
    /// Testbed SR-IOV PFs backed by real host PFs.
    pub real_pfs: Vec<crate::sriov::RealPfMap>,
    /// Where lab directories live.
    pub root: PathBuf,
    /// `RUST_LOG` of the agents.
    pub agent_log_filter: String,
}

/// Why a run could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The testbed directory is broken.
    #[error("{0}")]
    Load(#[from] LoadErrors),
    /// The lab cannot be built or used.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The API server failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The async runtime or the signal handlers cannot be set up.
    #[error("cannot start the harness's runtime: {0}")]
    Runtime(std::io::Error),
    /// The JSON report cannot be written.
    #[error("cannot write the JSON report {}: {source}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The run was interrupted (SIGINT/SIGTERM/SIGHUP) before it finished;
    /// the lab was torn down.
    #[error("interrupted; the lab was torn down")]
    Interrupted,
}

/// The directory of this executable: where cargo puts `spur-agent` and
/// `spur` next to `spur-hil`.
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The controller configuration of the testbed: the `spur-controller.conf`
/// key of the last ConfigMap `kube-system/spur-config` of the manifests, or,
/// without one, the defaults. Read from the manifests, not the API: the
/// controller must run before the manifests are applied, since its webhook
/// decides them (and a ConfigMap is not something it refuses).
pub fn controller_config_text(manifests: &[Manifest]) -> String {
    manifests
        .iter()
        .filter(|m| {
            m.is_builtin("ConfigMap")
                && m.name() == CONFIGMAP_NAME
                && m.namespace() == Some(CONFIGMAP_NAMESPACE)
        })
        .filter_map(|m| {
            m.object
                .get("data")
                .and_then(|d| d.get(CONTROLLER_CONF_KEY))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .next_back()
        .unwrap_or_else(|| ControllerConfig::default().to_yaml())
}

/// The agent configuration of the testbed: the `spur-agent.conf` key of
/// the last ConfigMap `kube-system/spur-config` of the manifests that the
/// API accepted, or, without one, a configuration with no bridges.
pub fn agent_config_text(manifests: &[Manifest], rejected: &[Rejection]) -> String {
    manifests
        .iter()
        .filter(|m| {
            m.is_builtin("ConfigMap")
                && m.name() == CONFIGMAP_NAME
                && m.namespace() == Some(CONFIGMAP_NAMESPACE)
                && !rejected
                    .iter()
                    .any(|r| r.object.same_object(&m.object_ref()))
        })
        .filter_map(|m| {
            m.object
                .get("data")
                .and_then(|d| d.get(AGENT_CONF_KEY))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .next_back()
        .unwrap_or_else(|| AgentConfig::default().to_yaml())
}

/// Every ordered pair of interfaces of different Pods that the
/// reachability expectations are about (each once, in group order).
pub fn reachability_pairs(expect: &Expect) -> Vec<(InterfaceRef, InterfaceRef)> {
    let Some(r) = &expect.reachability else {
        return Vec::new();
    };
    let mut members: Vec<&InterfaceRef> = Vec::new();
    for i in r.groups.iter().flatten() {
        if !members.contains(&i) {
            members.push(i);
        }
    }
    let mut pairs = Vec::new();
    for a in &members {
        for b in &members {
            if a.pod != b.pod {
                pairs.push(((*a).clone(), (*b).clone()));
            }
        }
    }
    pairs
}

/// Each node's Pods in the order the manifests created them, and the Pods
/// that cannot be run (no node, or a node `is_node` does not know) with
/// why.
#[allow(clippy::type_complexity)]
pub fn pods_by_node(
    placed: &[(PodRef, Option<String>)],
    is_node: impl Fn(&str) -> bool,
) -> (
    BTreeMap<String, Vec<PodRef>>,
    Vec<(PodRef, Option<String>, String)>,
) {
    let mut per_node: BTreeMap<String, Vec<PodRef>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for (pod, node) in placed {
        match node {
            Some(n) if is_node(n) => per_node.entry(n.clone()).or_default().push(pod.clone()),
            Some(n) => unplaced.push((
                pod.clone(),
                Some(n.clone()),
                format!("its node {n} is not a node of the testbed"),
            )),
            None => unplaced.push((pod.clone(), None, "no node to place it on".to_string())),
        }
    }
    (per_node, unplaced)
}

/// The secondary interface names of a network-status list (for progress
/// lines): every entry but the default one.
pub fn secondary_names(entries: &[NetworkStatus]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| !e.default)
        .filter_map(|e| e.interface.clone())
        .collect()
}

/// What the report says about one interface, from the network-status
/// entry, the interface as it really is, the OVS access port serving it
/// (its VLAN) and the pools; plus every disagreement between the
/// annotation and the interface. `None` when the interface is not there.
pub fn interface_report(
    pod: &PodRef,
    entry: &NetworkStatus,
    facts: Option<&probe::IfaceFacts>,
    port: Option<&AccessPort>,
    layouts: &BTreeMap<String, PoolLayout>,
) -> (Option<InterfaceReport>, Vec<String>) {
    let ifname = entry.interface.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let Some(facts) = facts else {
        problems.push(format!(
            "Pod {pod}: its network-status annotation lists interface {ifname} (network {}) \
             but its network namespace has no such interface",
            entry.name
        ));
        return (None, problems);
    };
    let real: BTreeSet<IpAddr> = facts.ips.iter().map(IpNet::addr).collect();
    let said: BTreeSet<IpAddr> = entry.ips.iter().copied().collect();
    if real != said {
        let show = |s: &BTreeSet<IpAddr>| {
            if s.is_empty() {
                "no addresses".to_string()
            } else {
                s.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        problems.push(format!(
            "Pod {pod}: interface {ifname}: the network-status annotation says {} but the \
             interface has {}",
            show(&said),
            show(&real)
        ));
    }
    if let Some(mac) = entry.mac.as_deref().filter(|m| !m.is_empty()) {
        if !mac.eq_ignore_ascii_case(&facts.mac) {
            problems.push(format!(
                "Pod {pod}: interface {ifname}: the network-status annotation says MAC {mac} \
                 but the interface has {}",
                facts.mac
            ));
        }
    }
    let pools = facts
        .ips
        .iter()
        .filter_map(|ip| api::pool_of(layouts, ip.addr()))
        .collect();
    let report = InterfaceReport {
        name: ifname,
        network: entry.name.clone(),
        vlan: port.map_or(0, |p| p.tag),
        mtu: facts.mtu,
        mac: (!facts.mac.is_empty()).then(|| facts.mac.clone()),
        ips: facts.ips.clone(),
        pools,
    };
    (Some(report), problems)
}

/// The access port serving `id`, preferring the one of `container_id`.
fn port_for<'a>(
    ports: &'a [AccessPort],
    id: &InterfaceRef,
    container_id: &str,
) -> Option<&'a AccessPort> {
    let serving: Vec<&AccessPort> = ports.iter().filter(|p| p.serves(id)).collect();
    serving
        .iter()
        .find(|p| {
            p.external_ids
                .get("spur.dev/container-id")
                .map(String::as_str)
                == Some(container_id)
        })
        .or_else(|| serving.first())
        .copied()
}

/// The device ID (PCI address) of the VF behind a network-status entry:
/// its `device-info` (native mode), or the `deviceID` the Multus-like
/// runner gave the delegate of that interface.
fn vf_device(entry: &NetworkStatus, sb: &Sandbox) -> Option<String> {
    if let Some(pci) = entry
        .device_info
        .as_ref()
        .and_then(|d| d.pci.as_ref())
        .and_then(|p| p.pci_address.clone())
    {
        return Some(pci);
    }
    let ifname = entry.interface.as_deref()?;
    sb.attachments
        .iter()
        .filter(|a| a.delegate.ifname == ifname)
        .find_map(|a| {
            a.delegate
                .list
                .plugins
                .first()
                .and_then(|p| p.get("deviceID"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
}

/// One Pod the run handled.
struct PodRun {
    pod: PodRef,
    node: Option<String>,
    sandbox: Option<Sandbox>,
    /// Why it was not handled (no node, API failure).
    skipped: Option<String>,
}

/// Everything a run holds while it lasts. Field order is drop order: the
/// kubelets and the cluster go before the lab, the runtime last.
struct Session {
    kubelets: BTreeMap<String, Kubelet>,
    /// Each node's PodResources record (served on its socket) and the
    /// testbed's device manager.
    devices: BTreeMap<String, KubeletDevices>,
    /// The PodResources servers' tasks.
    pod_resources_servers: Vec<tokio::task::JoinHandle<Result<(), ServerError>>>,
    cluster: Cluster,
    lab: Lab,
    interrupts: Interrupts,
    rt: tokio::runtime::Runtime,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The report, every failure included (leaks and cleanup problems).
    pub report: Report,
    /// With `--keep`: how many failures the report had when it was printed
    /// (before the teardown); `None` when it has not been printed.
    pub printed_failures: Option<usize>,
}

/// Runs the testbed of `opts` and returns its report (with every failure,
/// leaks included). Progress goes to stderr through `progress`; with
/// `--keep` the report is printed (and the JSON written) before waiting
/// for Ctrl-C and the teardown.
pub fn run(opts: &RunOptions, progress: &Progress) -> Result<RunOutcome, RunError> {
    let testbed = Testbed::load(&opts.dir)?;
    progress.say(format!(
        "testbed {}: {} nodes, {} manifests, cniMode {}",
        testbed.name,
        testbed.spec.nodes.len(),
        testbed.manifests.len(),
        match testbed.spec.cni_mode {
            spur_testbed::CniMode::Native => "native",
            spur_testbed::CniMode::Multus => "multus",
        }
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let cleanup = Cleanup::new();
    let interrupts =
        Interrupts::install(rt.handle(), cleanup.clone()).map_err(RunError::Runtime)?;
    let lab_opts = LabOptions {
        root: opts.root.clone(),
        bin_dir: opts.bin_dir.clone(),
        real_nics: opts.real_nics.clone(),
        real_pfs: opts.real_pfs.clone(),
    };
    let up = Instant::now();
    let lab = Lab::up(&testbed.spec, &lab_opts, cleanup.clone(), progress)?;
    let cluster = rt.block_on(Cluster::start_for_controller(
        IpAddr::V4(lab.plan.mgmt.host()),
        &lab.plan.kubeconfig,
    ))?;
    progress.say(format!(
        "API server at {} (KUBECONFIG={})",
        cluster.url,
        cluster.kubeconfig.display()
    ));
    let mut session = Session {
        kubelets: BTreeMap::new(),
        devices: BTreeMap::new(),
        pod_resources_servers: Vec::new(),
        cluster,
        lab,
        interrupts,
        rt,
    };
    let result = session.go(&testbed, opts, progress, up);
    let interrupted = session.interrupts.interrupted();
    let outcome = session.shut_down(progress, result);
    if interrupted {
        return Err(RunError::Interrupted);
    }
    outcome
}

impl Session {
    fn client(&self) -> Client {
        self.cluster.client.clone()
    }

    fn check_interrupted(&self) -> Result<(), RunError> {
        if self.interrupts.interrupted() {
            Err(RunError::Interrupted)
        } else {
            Ok(())
        }
    }

    fn go(
        &mut self,
        testbed: &Testbed,
        opts: &RunOptions,
        progress: &Progress,
        up: Instant,
    ) -> Result<RunOutcome, RunError> {
        let nodes: Vec<NodeInfo> = self
            .lab
            .plan
            .nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                pod_cidr: n.pod_cidr,
                address: IpAddr::V4(n.mgmt_ip),
            })
            .collect();
        self.rt
            .block_on(api::create_nodes(&self.cluster.client, &nodes))?;
        self.start_controller(testbed, opts, progress)?;
        self.check_interrupted()?;
        let node_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let applied = self.rt.block_on(api::apply_manifests(
            &self.cluster.client,
            &testbed.manifests,
            &node_names,
        ))?;
        progress.say(format!(
            "applied {} objects ({} refused)",
            applied.applied,
            applied.rejected.len()
        ));
        for r in &applied.rejected {
            progress.say(format!("refused: {}: {}", r.object, r.reason));
        }
        self.check_interrupted()?;

        self.start_pod_resources(testbed, progress)?;
        self.start_agents(testbed, &applied.rejected, opts, progress)?;
        progress.say(format!("cluster up in {}", secs(up.elapsed())));
        self.check_interrupted()?;

        let mut pods = self.add_pods(testbed, &applied.pods, progress)?;
        self.check_interrupted()?;

        let mut report = self.build_report(testbed, &mut pods, applied.rejected, progress)?;
        let mut printed_failures = None;
        if opts.keep {
            self.keep(&report, opts, &pods, progress)?;
            printed_failures = Some(report.failures.len());
        }
        let down = Instant::now();
        let leaks = self.teardown_pods(&pods, progress);
        progress.say(format!(
            "Pods deleted and leaks checked in {}",
            secs(down.elapsed())
        ));
        report.failures.extend(leaks);
        if let Err(e) = self.lab.check_alive(crate::lab::CONTROLLER_WHAT) {
            report.failures.push(format!("spur-controller: {e}"));
        }
        Ok(RunOutcome {
            report,
            printed_failures,
        })
    }

    /// Starts the real controller and waits until its webhook decides
    /// IPPool writes (certificate made, caBundle set, the API calling it).
    fn start_controller(
        &self,
        testbed: &Testbed,
        opts: &RunOptions,
        progress: &Progress,
    ) -> Result<(), RunError> {
        let ports = self.lab.start_controller(
            &controller_config_text(&testbed.manifests),
            &self.cluster.kubeconfig,
            &opts.agent_log_filter,
        )?;
        self.cluster.route_webhook(ports.webhook);
        self.rt
            .block_on(api::install_webhook_objects(&self.cluster.client))?;
        let client = self.client();
        let took = self
            .lab
            .wait_controller_ready(|| self.rt.block_on(api::webhook_answers(&client)))?;
        progress.say(format!(
            "spur-controller serving its webhook at {} ({})",
            ports.webhook,
            secs(took)
        ));
        Ok(())
    }

    /// The kubelet's device manager for the testbed and, per node, its
    /// PodResources record served on the node's socket (the agent's
    /// `--pod-resources-socket`).
    fn start_pod_resources(
        &mut self,
        testbed: &Testbed,
        progress: &Progress,
    ) -> Result<(), RunError> {
        let manager = spur_testbed::sriov::DeviceManager::new(&testbed.spec)
            .map_err(|e| LabError::Unsupported(format!("testbed.yaml: {e}")))?;
        let manager = Arc::new(std::sync::Mutex::new(manager));
        let _guard = self.rt.enter();
        for n in &self.lab.plan.nodes {
            let record = Arc::new(StaticPodResources::new());
            let task = PodResourcesServer::new(record.clone())
                .spawn(&n.pod_resources_socket)
                .map_err(|e| LabError::Unsupported(format!("node {}: {e}", n.name)))?;
            self.pod_resources_servers.push(task);
            if !n.sriov.is_empty() {
                progress.say(format!(
                    "{}: kubelet PodResources at {}",
                    n.name,
                    n.pod_resources_socket.display()
                ));
            }
            self.devices.insert(
                n.name.clone(),
                KubeletDevices {
                    manager: manager.clone(),
                    pod_resources: record,
                    node: self.lab.node_sriov(&n.name),
                },
            );
        }
        Ok(())
    }

    fn start_agents(
        &self,
        testbed: &Testbed,
        rejected: &[Rejection],
        opts: &RunOptions,
        progress: &Progress,
    ) -> Result<(), RunError> {
        let config = agent_config_text(&testbed.manifests, rejected);
        for n in &self.lab.plan.nodes {
            self.lab
                .start_agent(n, &config, &self.cluster.kubeconfig, &opts.agent_log_filter)?;
        }
        let lab = &self.lab;
        std::thread::scope(|s| {
            let waits: Vec<_> = lab
                .plan
                .nodes
                .iter()
                .map(|n| {
                    s.spawn(move || {
                        let took = lab.wait_agent_ready(n)?;
                        progress.say(format!("{}: spur-agent ready ({})", n.name, secs(took)));
                        Ok::<(), LabError>(())
                    })
                })
                .collect();
            let mut first = None;
            for w in waits {
                let r = w.join().unwrap_or_else(|_| {
                    Err(LabError::Unsupported(
                        "a thread waiting for an agent panicked".into(),
                    ))
                });
                if let Err(e) = r {
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), |e| Err(RunError::Lab(e)))
        })
    }

    /// Adds every Pod through its node's kubelet stand-in: nodes in
    /// parallel, a node's Pods in manifest order.
    fn add_pods(
        &mut self,
        testbed: &Testbed,
        placed: &[(PodRef, Option<String>)],
        progress: &Progress,
    ) -> Result<Vec<PodRun>, RunError> {
        let client = self.client();
        let handle = self.rt.handle().clone();
        for n in &self.lab.plan.nodes {
            let ctx = NodeCtx {
                node: n.name.clone(),
                netns: n.netns.clone(),
                cni_bin_dir: self.lab.plan.cni_bin_dir.clone(),
                cni_socket: n.cni_socket.clone(),
                pod_cidr: n.pod_cidr,
                work_dir: n.dir.join("kubelet"),
            };
            let mut kubelet =
                Kubelet::new(ctx, testbed.spec.cni_mode, client.clone(), handle.clone());
            if let Some(d) = self.devices.get(&n.name) {
                kubelet = kubelet.with_devices(d.clone());
            }
            self.kubelets.insert(n.name.clone(), kubelet);
        }
        let (per_node, unplaced) = pods_by_node(placed, |n| self.kubelets.contains_key(n));
        let mut runs: Vec<PodRun> = unplaced
            .into_iter()
            .map(|(pod, node, why)| PodRun {
                pod,
                node,
                sandbox: None,
                skipped: Some(why),
            })
            .collect();
        let interrupts = &self.interrupts;
        let cleanup = self.lab.cleanup();
        let lab = &self.lab;
        let kubelets = &self.kubelets;
        let done: Vec<PodRun> = std::thread::scope(|s| {
            let threads: Vec<_> = per_node
                .iter()
                .filter_map(|(node, pods)| {
                    let kubelet = kubelets.get(node)?;
                    let node_lab = lab.node(node)?;
                    let (client, handle, cleanup) =
                        (client.clone(), handle.clone(), cleanup.clone());
                    Some(s.spawn(move || {
                        let mut out = Vec::new();
                        for pod in pods {
                            if interrupts.interrupted() {
                                break;
                            }
                            out.push(add_one(
                                kubelet, node_lab, pod, &client, &handle, &cleanup, progress,
                            ));
                        }
                        out
                    }))
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap_or_default())
                .collect()
        });
        runs.extend(done);
        // Report order: the order the manifests created them.
        let order: BTreeMap<&PodRef, usize> = placed
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (p, i))
            .collect();
        runs.sort_by_key(|r| order.get(&r.pod).copied().unwrap_or(usize::MAX));
        Ok(runs)
    }

    fn build_report(
        &self,
        testbed: &Testbed,
        pods: &mut [PodRun],
        rejected: Vec<Rejection>,
        progress: &Progress,
    ) -> Result<Report, RunError> {
        let client = self.client();
        let (pools, lagging) = self
            .rt
            .block_on(api::settled_pool_usage(&client, USAGE_TIMEOUT))?;
        let layouts: BTreeMap<String, PoolLayout> = self
            .rt
            .block_on(api::list_pools(&client))?
            .iter()
            .filter_map(|p| PoolLayout::from_pool(p).ok().map(|l| (l.name.clone(), l)))
            .collect();
        let mut ports: BTreeMap<String, Vec<AccessPort>> = BTreeMap::new();
        let mut vf_ports: BTreeMap<String, BTreeMap<String, AccessPort>> = BTreeMap::new();
        let mut problems: Vec<String> = lagging;
        for n in &self.lab.plan.nodes {
            match probe::access_ports(&n.netns, &n.ovs.db_socket()) {
                Ok(p) => {
                    ports.insert(n.name.clone(), p);
                }
                Err(e) => problems.push(format!("node {}: {e}", n.name)),
            }
            let sriov = self.lab.node_sriov(&n.name);
            match crate::sriov::vf_ports(n, &sriov) {
                Ok(p) => {
                    vf_ports.insert(n.name.clone(), p);
                }
                Err(e) => problems.push(format!("node {}: SR-IOV VF VLANs: {e}", n.name)),
            }
        }
        let mut report = Report::new(testbed.name.clone(), Runner::Hil);
        report.pools = pools;
        report.rejected = rejected;
        let mut endpoints: BTreeMap<InterfaceRef, Endpoint> = BTreeMap::new();
        for run in pods.iter() {
            let (pod_report, eps, p) = self.pod_report(run, &ports, &vf_ports, &layouts);
            problems.extend(p);
            endpoints.extend(eps.into_iter().map(|e| (e.id.clone(), e)));
            report.pods.push(pod_report);
        }

        let pairs = reachability_pairs(&testbed.expect);
        if !pairs.is_empty() || !testbed.expect.multicast.is_empty() {
            for run in pods.iter() {
                // Spur's own interfaces answer ARP per interface (the agent
                // sets it); other plugins' (Multus delegates) do not.
                let delegated = testbed.spec.cni_mode == spur_testbed::CniMode::Multus;
                if let Some(sb) = run.sandbox.as_ref().filter(|sb| sb.ready && delegated) {
                    if let Err(e) = strong_host(&sb.netns) {
                        problems.push(format!("Pod {}: {e}", run.pod));
                    }
                }
            }
        }
        if !pairs.is_empty() {
            let start = Instant::now();
            let measurable: Vec<(Endpoint, Endpoint)> = pairs
                .iter()
                .filter_map(|(a, b)| Some((endpoints.get(a)?.clone(), endpoints.get(b)?.clone())))
                .collect();
            let results = probe::reachability(&measurable);
            let mut measured: BTreeMap<(InterfaceRef, InterfaceRef), bool> = measurable
                .iter()
                .zip(results)
                .map(|((a, b), r)| ((a.id.clone(), b.id.clone()), r))
                .collect();
            for (a, b) in &pairs {
                // An interface that is not there reaches nothing.
                let r = measured.remove(&(a.clone(), b.clone())).unwrap_or(false);
                report
                    .reachability
                    .entry(a.clone())
                    .or_default()
                    .insert(b.clone(), r);
            }
            progress.say(format!(
                "reachability: {} pairs measured in {}",
                pairs.len(),
                secs(start.elapsed())
            ));
        }

        for m in &testbed.expect.multicast {
            let start = Instant::now();
            match self.multicast(m, &endpoints) {
                Ok(r) => report.multicast.push(r),
                Err(e) => problems.push(format!(
                    "multicast {} from {}: could not be measured: {e}",
                    m.group, m.sender
                )),
            }
            progress.say(format!(
                "multicast {} from {}: measured in {}",
                m.group,
                m.sender,
                secs(start.elapsed())
            ));
        }
        for n in &self.lab.plan.nodes {
            if let Err(e) = self.lab.check_alive(&crate::lab::agent_what(&n.name)) {
                problems.push(e.to_string());
            }
        }
        report.failures = check(&report, &testbed.expect)
            .iter()
            .map(ToString::to_string)
            .collect();
        report.failures.extend(problems);
        Ok(report)
    }

    /// The report of one Pod, its probe endpoints, and the problems seen.
    fn pod_report(
        &self,
        run: &PodRun,
        ports: &BTreeMap<String, Vec<AccessPort>>,
        vf_ports: &BTreeMap<String, BTreeMap<String, AccessPort>>,
        layouts: &BTreeMap<String, PoolLayout>,
    ) -> (PodReport, Vec<Endpoint>, Vec<String>) {
        let mut report = PodReport {
            pod: run.pod.clone(),
            node: run.node.clone(),
            ready: false,
            reason: run.skipped.clone(),
            interfaces: Vec::new(),
        };
        let mut problems = Vec::new();
        let mut endpoints = Vec::new();
        let Some(sb) = &run.sandbox else {
            return (report, endpoints, problems);
        };
        report.ready = sb.ready;
        report.reason = sb.reason.clone();
        let pod = match self
            .rt
            .block_on(api::get_pod(&self.cluster.client, &run.pod))
        {
            Ok(p) => p,
            Err(e) => {
                problems.push(e.to_string());
                return (report, endpoints, problems);
            }
        };
        let entries = match network_status(&pod, &run.pod) {
            Ok(Some(e)) => e,
            Ok(None) => {
                if sb.ready {
                    problems.push(format!(
                        "Pod {}: ready, but it has no {NETWORK_STATUS_ANNOTATION} annotation",
                        run.pod
                    ));
                }
                Vec::new()
            }
            Err(e) => {
                problems.push(e);
                Vec::new()
            }
        };
        let node_ports = run
            .node
            .as_ref()
            .and_then(|n| ports.get(n))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for entry in &entries {
            let Some(ifname) = entry.interface.as_deref() else {
                problems.push(format!(
                    "Pod {}: its network-status entry of network {} names no interface",
                    run.pod, entry.name
                ));
                continue;
            };
            let id = run.pod.interface(ifname);
            let facts = match probe::inspect(&sb.netns, ifname) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            // A VF's VLAN is the one its PF sets (its representor's tag);
            // other interfaces are served by an OVS access port.
            let vf_port = vf_device(entry, sb).and_then(|pci| {
                run.node
                    .as_ref()
                    .and_then(|n| vf_ports.get(n))
                    .and_then(|p| p.get(&pci))
            });
            let port = vf_port.or_else(|| port_for(node_ports, &id, &sb.container_id));
            let (itf, p) = interface_report(&run.pod, entry, facts.as_ref(), port, layouts);
            problems.extend(p);
            if let Some(itf) = itf {
                endpoints.push(Endpoint {
                    id,
                    netns: sb.netns.clone(),
                    ifname: itf.name.clone(),
                    ips: itf.ips.clone(),
                });
                report.interfaces.push(itf);
            }
        }
        (report, endpoints, problems)
    }

    fn multicast(
        &self,
        m: &spur_testbed::MulticastExpect,
        endpoints: &BTreeMap<InterfaceRef, Endpoint>,
    ) -> Result<MulticastReport, probe::ProbeError> {
        let missing = |ids: &[InterfaceRef]| -> Vec<InterfaceRef> {
            ids.iter()
                .filter(|i| !endpoints.contains_key(*i))
                .cloned()
                .collect()
        };
        let pick = |ids: &[InterfaceRef]| -> Vec<Endpoint> {
            ids.iter()
                .filter_map(|i| endpoints.get(i).cloned())
                .collect()
        };
        let absent: Vec<InterfaceRef> = missing(&m.members)
            .into_iter()
            .chain(missing(&m.non_members))
            .collect();
        let Some(sender) = endpoints.get(&m.sender) else {
            // Nobody sends: every listener received nothing.
            return Ok(MulticastReport {
                group: m.group,
                sender: m.sender.clone(),
                received: m
                    .members
                    .iter()
                    .chain(&m.non_members)
                    .map(|i| (i.clone(), 0))
                    .collect(),
            });
        };
        let probe_cfg = MulticastProbe {
            switches: self.snooping_switches(),
            ..MulticastProbe::default()
        };
        let mut r = probe::multicast(
            m.group,
            sender,
            &pick(&m.members),
            &pick(&m.non_members),
            &probe_cfg,
        )?;
        for i in absent {
            r.received.insert(i, 0);
        }
        Ok(r)
    }

    /// Every node's secondary bridges with their uplinks on that node.
    fn snooping_switches(&self) -> Vec<SnoopingSwitch> {
        let text = std::fs::read_to_string(
            self.lab
                .plan
                .nodes
                .first()
                .map(|n| n.agent_conf.clone())
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        let Ok(config) = AgentConfig::from_yaml(&text) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for n in &self.lab.plan.nodes {
            for b in &config.secondary_network.ovs_bridges {
                if !b.enable_multicast_snooping {
                    continue;
                }
                out.push(SnoopingSwitch {
                    netns: n.netns.clone(),
                    bridge: b.bridge_name.clone(),
                    kind: SwitchKind::Ovs {
                        vswitchd_ctl: n.ovs.vswitchd_ctl(),
                        ovsdb_socket: n.ovs.db_socket(),
                    },
                    uplinks: b
                        .physical_interfaces
                        .iter()
                        .filter(|u| n.nics.iter().any(|c| &&c.name == u))
                        .cloned()
                        .collect(),
                });
            }
        }
        out
    }

    /// `--keep`: prints the report and how to look around, waits for
    /// Ctrl-C.
    fn keep(
        &self,
        report: &Report,
        opts: &RunOptions,
        pods: &[PodRun],
        progress: &Progress,
    ) -> Result<(), RunError> {
        print!("{report}");
        if let Some(path) = &opts.json {
            write_json(path, report)?;
        }
        let p = &self.lab.plan;
        eprintln!();
        eprintln!("The lab stays up (--keep). Press Ctrl-C to tear it down.");
        eprintln!(
            "  API:    KUBECONFIG={} kubectl get pods -A -o wide",
            p.kubeconfig.display()
        );
        for run in pods {
            if let Some(sb) = &run.sandbox {
                eprintln!("  Pod {}: ip netns exec {} ip addr", run.pod, sb.netns);
            }
        }
        for n in &p.nodes {
            eprintln!(
                "  Node {}: ip netns exec {} bash   (OVS: ovs-vsctl --db=unix:{} show; agent log: {})",
                n.name,
                n.netns,
                n.ovs.db_socket().display(),
                n.agent_log.display()
            );
        }
        eprintln!(
            "  Fabric: ovs-vsctl --db=unix:{} show",
            p.fabric.db_socket().display()
        );
        self.interrupts.wait();
        progress.say("tearing the lab down");
        Ok(())
    }

    /// CNI DEL of every Pod (a node's Pods in reverse order, nodes in
    /// parallel), then the leak checks: IPAM allocations still held by the
    /// Pods, Spur access ports left on a node's OVS, Pod namespaces left.
    fn teardown_pods(&self, pods: &[PodRun], progress: &Progress) -> Vec<String> {
        let mut failures = Vec::new();
        let kubelets = &self.kubelets;
        let dels: Vec<String> = std::thread::scope(|s| {
            let threads: Vec<_> = kubelets
                .iter()
                .map(|(node, kubelet)| {
                    let mine: Vec<&Sandbox> = pods
                        .iter()
                        .filter(|r| r.node.as_deref() == Some(node.as_str()))
                        .filter_map(|r| r.sandbox.as_ref())
                        .collect();
                    s.spawn(move || {
                        let mut errs = Vec::new();
                        for sb in mine.into_iter().rev() {
                            if let Err(e) = kubelet.del_pod(sb) {
                                errs.push(format!("CNI DEL of Pod {} failed: {e}", sb.pod));
                            }
                        }
                        errs
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap_or_default())
                .collect()
        });
        failures.extend(dels);
        let ours: BTreeSet<PodRef> = pods
            .iter()
            .filter(|r| r.sandbox.is_some())
            .map(|r| r.pod.clone())
            .collect();
        match self
            .rt
            .block_on(api::leaked_allocations(&self.cluster.client, &ours))
        {
            Ok(l) => failures.extend(l),
            Err(e) => failures.push(format!("the IPAM leak check failed: {e}")),
        }
        for n in &self.lab.plan.nodes {
            match probe::access_ports(&n.netns, &n.ovs.db_socket()) {
                Ok(ports) => failures.extend(ports.iter().map(|p| {
                    format!(
                        "leak: node {}'s OVS still has access port {} ({}) after every Pod's \
                         CNI DEL",
                        n.name,
                        p.name,
                        p.pod()
                            .map(|pod| format!(
                                "Pod {pod} interface {}",
                                p.interface().unwrap_or("?")
                            ))
                            .unwrap_or_else(|| "no Pod named".to_string())
                    )
                })),
                Err(e) => failures.push(format!(
                    "the access-port leak check of node {} failed: {e}",
                    n.name
                )),
            }
            if let Err(e) = self.lab.check_alive(&crate::lab::agent_what(&n.name)) {
                failures.push(e.to_string());
            }
            failures.extend(crate::sriov::vf_leaks(n, &self.lab.node_sriov(&n.name)));
        }
        for r in pods {
            if let Some(sb) = &r.sandbox {
                if cleanup::netns_exists(&sb.netns) {
                    failures.push(format!(
                        "leak: Pod {}'s network namespace {} is still there after its CNI DEL",
                        r.pod, sb.netns
                    ));
                }
            }
        }
        if failures.is_empty() {
            progress.say("teardown: every Pod deleted, nothing leaked");
        } else {
            progress.say(format!("teardown: {} problems", failures.len()));
        }
        failures
    }

    /// Stops everything; the lab's problems join the report's failures.
    fn shut_down(
        mut self,
        progress: &Progress,
        result: Result<RunOutcome, RunError>,
    ) -> Result<RunOutcome, RunError> {
        let down = Instant::now();
        self.kubelets.clear();
        for task in self.pod_resources_servers.drain(..) {
            task.abort();
        }
        let problems = self.lab.teardown();
        for p in &problems {
            progress.say(format!("cleanup: {p}"));
        }
        progress.say(format!("lab down in {}", secs(down.elapsed())));
        let mut outcome = result?;
        outcome
            .report
            .failures
            .extend(problems.into_iter().map(|p| format!("cleanup: {p}")));
        Ok(outcome)
    }
}

/// Makes a Pod answer ARP only on the interface that has the asked-for
/// address (`arp_ignore=1`), so probes measure interfaces, not Pods (in
/// Multus mode, where other plugins made some interfaces; Spur's own
/// interfaces are set so by the agent): with
/// Linux's default (any address on any interface), a Pod with interfaces
/// in two VLANs answers a ping to its VLAN-200 address arriving over VLAN
/// 100 (`ping -I` to an off-link address is sent on-link), and isolation
/// between the VLANs could not be seen. IPv6 neighbour discovery already
/// answers only for the receiving interface's addresses.
fn strong_host(netns: &str) -> Result<(), crate::cmd::CmdError> {
    crate::cmd::Cmd::new(
        "sysctl",
        format!("making network namespace {netns} answer ARP per interface"),
    )
    .args(["-q", "-w", "net.ipv4.conf.all.arp_ignore=1"])
    .netns(netns)
    .run()
    .map(|_| ())
}

/// Reads the Pod's network-status annotation: `Ok(None)` without one.
fn network_status(pod: &Pod, id: &PodRef) -> Result<Option<Vec<NetworkStatus>>, String> {
    let Some(text) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
    else {
        return Ok(None);
    };
    spur_core::status::parse(text, &Subject::new("Pod", Some(&id.namespace), &id.name))
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Adds one Pod through `kubelet`, registers its namespace for cleanup,
/// writes its status, and says how it went.
fn add_one(
    kubelet: &Kubelet,
    node: &NodeLab,
    pod: &PodRef,
    client: &Client,
    handle: &tokio::runtime::Handle,
    cleanup: &Arc<Cleanup>,
    progress: &Progress,
) -> PodRun {
    let mut run = PodRun {
        pod: pod.clone(),
        node: Some(node.name.clone()),
        sandbox: None,
        skipped: None,
    };
    let object = match handle.block_on(api::get_pod(client, pod)) {
        Ok(p) => p,
        Err(e) => {
            run.skipped = Some(e.to_string());
            progress.say(format!("{pod}: NOT ADDED: {e}"));
            return run;
        }
    };
    let start = Instant::now();
    let sb = kubelet.add_pod(&object);
    cleanup.push(Undo::Netns(sb.netns.clone()));
    let took = start.elapsed();
    // What the Pod got, from its (fresh) network-status.
    let fresh = handle.block_on(api::get_pod(client, pod)).ok();
    let entries = fresh
        .as_ref()
        .and_then(|p| network_status(p, pod).ok().flatten())
        .unwrap_or_default();
    let pod_ips: Vec<IpAddr> = entries
        .iter()
        .find(|e| e.default)
        .map(|e| e.ips.clone())
        .unwrap_or_default();
    if let Err(e) = handle.block_on(api::set_pod_status(
        client,
        pod,
        sb.ready,
        sb.reason.as_deref(),
        &pod_ips,
        IpAddr::V4(node.mgmt_ip),
    )) {
        tracing::warn!(%pod, error = %e, "cannot write the Pod's status");
    }
    if sb.ready {
        progress.say(format!(
            "{pod}: ready ({}) in {}",
            secondary_names(&entries).join(", "),
            secs(took)
        ));
    } else {
        progress.say(format!(
            "{pod}: NOT READY: {}",
            sb.reason.as_deref().unwrap_or("no reason given")
        ));
    }
    run.sandbox = Some(sb);
    run
}

/// Writes the JSON report.
pub fn write_json(path: &Path, report: &Report) -> Result<(), RunError> {
    std::fs::write(path, report.to_json() + "\n").map_err(|source| RunError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spur_testbed::parse_manifests;

    fn manifests(text: &str) -> Vec<Manifest> {
        parse_manifests(Path::new("m.yaml"), text).unwrap()
    }

    #[test]
    fn the_last_accepted_spur_config_configures_the_agents() {
        let ms = manifests(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: spur-config, namespace: kube-system}\n\
             data:\n  spur-agent.conf: 'first'\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other, namespace: kube-system}\n\
             data:\n  spur-agent.conf: 'other'\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: spur-config, namespace: kube-system}\n\
             data:\n  spur-agent.conf: 'second'\n",
        );
        assert_eq!(agent_config_text(&ms, &[]), "second");
        let refused = Rejection {
            object: "ConfigMap/kube-system/spur-config".parse().unwrap(),
            reason: "no".into(),
        };
        // Both are the same object: refused means neither counts.
        let none = agent_config_text(&ms, &[refused]);
        let config = AgentConfig::from_yaml(&none).unwrap();
        assert!(config.secondary_network.ovs_bridges.is_empty());
        let config = AgentConfig::from_yaml(&agent_config_text(&[], &[])).unwrap();
        assert!(config.secondary_network.ovs_bridges.is_empty());
    }

    #[test]
    fn the_controller_reads_the_last_spur_config_or_the_defaults() {
        let ms = manifests(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: spur-config, namespace: kube-system}\n\
             data:\n  spur-controller.conf: 'gcIntervalSeconds: 5'\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: spur-config, namespace: default}\n\
             data:\n  spur-controller.conf: 'gcIntervalSeconds: 7'\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: spur-config, namespace: kube-system}\n\
             data:\n  spur-agent.conf: 'agent only'\n",
        );
        let text = controller_config_text(&ms);
        assert_eq!(text, "gcIntervalSeconds: 5");
        let none = ControllerConfig::from_yaml(&controller_config_text(&[])).unwrap();
        assert_eq!(none, ControllerConfig::default());
    }

    #[test]
    fn reachability_pairs_are_ordered_pairs_of_different_pods() {
        let expect = Expect::parse(
            Path::new("expect.yaml"),
            "reachability:\n  groups:\n    - [ns/a@eth1, ns/b@eth1, ns/a@eth2]\n    - [ns/c@eth1]\n",
        )
        .unwrap();
        let pairs = reachability_pairs(&expect);
        let text: Vec<String> = pairs.iter().map(|(a, b)| format!("{a}>{b}")).collect();
        assert_eq!(
            text,
            [
                "ns/a@eth1>ns/b@eth1",
                "ns/a@eth1>ns/c@eth1",
                "ns/b@eth1>ns/a@eth1",
                "ns/b@eth1>ns/a@eth2",
                "ns/b@eth1>ns/c@eth1",
                "ns/a@eth2>ns/b@eth1",
                "ns/a@eth2>ns/c@eth1",
                "ns/c@eth1>ns/a@eth1",
                "ns/c@eth1>ns/b@eth1",
                "ns/c@eth1>ns/a@eth2",
            ]
        );
        assert!(reachability_pairs(&Expect::default()).is_empty());
    }

    fn facts(ips: &[&str], mac: &str) -> probe::IfaceFacts {
        probe::IfaceFacts {
            name: "eth1".into(),
            mac: mac.into(),
            mtu: 1500,
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        }
    }

    fn layouts() -> BTreeMap<String, PoolLayout> {
        let pool: spur_core::ippool::IPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "spur.dev/v1beta1", "kind": "IPPool", "metadata": {"name": "v100"},
            "spec": {"ipRanges": [{"cidr": "10.10.1.0/26"}],
                     "subnetInfo": {"gateway": "10.10.1.1", "prefixLength": 24, "vlan": 100}}}))
        .unwrap();
        let l = PoolLayout::from_pool(&pool).unwrap();
        [(l.name.clone(), l)].into()
    }

    #[test]
    fn interfaces_are_reported_as_they_really_are() {
        let pod = PodRef::new("default", "a");
        let entry = NetworkStatus {
            interface: Some("eth1".into()),
            ips: vec!["10.10.1.5".parse().unwrap()],
            mac: Some("0A:58:0A:0A:01:05".into()),
            ..NetworkStatus::new("default/vlan100")
        };
        let port = AccessPort {
            name: "a-eth1".into(),
            tag: 100,
            external_ids: BTreeMap::new(),
        };
        let f = facts(&["10.10.1.5/24"], "0a:58:0a:0a:01:05");
        let (r, problems) = interface_report(&pod, &entry, Some(&f), Some(&port), &layouts());
        assert!(problems.is_empty(), "{problems:?}");
        let r = r.unwrap();
        assert_eq!(r.vlan, 100);
        assert_eq!(r.network, "default/vlan100");
        assert_eq!(r.pools, ["v100"]);
        assert_eq!(r.mac.as_deref(), Some("0a:58:0a:0a:01:05"));

        // Disagreements are problems; the report keeps what is real.
        let f = facts(&["10.10.1.6/24", "10.9.0.1/16"], "0a:58:0a:0a:01:06");
        let (r, problems) = interface_report(&pod, &entry, Some(&f), None, &layouts());
        let r = r.unwrap();
        assert_eq!(r.vlan, 0);
        assert_eq!(r.pools, ["v100"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("says 10.10.1.5 but the interface has 10.9.0.1, 10.10.1.6"));
        assert!(problems[1].contains("MAC"));

        // Missing: no report, a problem.
        let (r, problems) = interface_report(&pod, &entry, None, None, &layouts());
        assert!(r.is_none());
        assert!(problems[0].contains("no such interface"), "{problems:?}");
    }

    #[test]
    fn each_node_adds_its_pods_in_manifest_order() {
        let p = |n: &str| PodRef::new("default", n);
        let placed = vec![
            (p("b1"), Some("node-b".to_string())),
            (p("a1"), Some("node-a".to_string())),
            (p("x"), Some("node-x".to_string())),
            (p("b2"), Some("node-b".to_string())),
            (p("none"), None),
            (p("a2"), Some("node-a".to_string())),
        ];
        let (per_node, unplaced) = pods_by_node(&placed, |n| n != "node-x");
        assert_eq!(per_node["node-a"], [p("a1"), p("a2")]);
        assert_eq!(per_node["node-b"], [p("b1"), p("b2")]);
        assert_eq!(unplaced.len(), 2);
        assert!(unplaced[0].2.contains("node-x"));
        assert_eq!(unplaced[1].1, None);
    }

    #[test]
    fn manifests_apply_in_file_then_document_order() {
        // The loader orders; the run applies in that order, so the last
        // spur-config in file-name order configures the agents.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("testbed.yaml"),
            "nodes:\n  - name: node-a\n    nics: [eth1]\n",
        )
        .unwrap();
        let m = dir.path().join("manifests");
        std::fs::create_dir(&m).unwrap();
        let cm = |bridge: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: spur-config, namespace: kube-system}}\n\
                 data:\n  spur-agent.conf: |\n    secondaryNetwork:\n      ovsBridges: [{{bridgeName: {bridge}}}]\n"
            )
        };
        std::fs::write(m.join("20-b.yaml"), cm("br-late")).unwrap();
        std::fs::write(
            m.join("10-a.yaml"),
            format!("{}---\n{}", cm("br-first"), cm("br-second")),
        )
        .unwrap();
        let testbed = Testbed::load(dir.path()).unwrap();
        let order: Vec<String> = testbed
            .manifests
            .iter()
            .map(|m| {
                format!(
                    "{}#{}",
                    m.file.file_name().unwrap().to_string_lossy(),
                    m.document
                )
            })
            .collect();
        assert_eq!(order, ["10-a.yaml#1", "10-a.yaml#2", "20-b.yaml#1"]);
        let text = agent_config_text(&testbed.manifests, &[]);
        let config = AgentConfig::from_yaml(&text).unwrap();
        assert_eq!(
            config.secondary_network.ovs_bridges[0].bridge_name,
            "br-late"
        );
    }

    #[test]
    fn progress_names_secondary_interfaces() {
        let entries = vec![
            NetworkStatus {
                default: true,
                interface: Some("eth0".into()),
                ..NetworkStatus::new("k8s-pod-network")
            },
            NetworkStatus {
                interface: Some("eth1".into()),
                ..NetworkStatus::new("default/vlan100")
            },
            NetworkStatus {
                interface: Some("eth200".into()),
                ..NetworkStatus::new("networks/vlan200")
            },
        ];
        assert_eq!(secondary_names(&entries), ["eth1", "eth200"]);
    }
}
