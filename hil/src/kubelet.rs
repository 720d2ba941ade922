//! The harness's kubelet stand-in: for each Pod placed on a node it
//! creates the Pod's network namespace and runs CNI ADD the way kubelet
//! and a container runtime (libcni) would, and CNI DEL when the Pod goes.
//!
//! Two modes ([`CniMode`]):
//!
//! - native: one conflist, `k8s-pod-network` (CNI 1.0.0): Debian's `ptp`
//!   with `host-local` (the node's pod CIDR, a default route) for `eth0`,
//!   then the real `spur` plugin chained after it; the agent attaches the
//!   Pod's secondary networks and writes its network-status annotation;
//! - multus: a Multus-like runner. `eth0` from the same `ptp` list, then
//!   each element of the Pod's `k8s.v1.cni.cncf.io/networks` annotation
//!   delegated, in order, to the plugin its NetworkAttachmentDefinition
//!   names (see [`multus`] for what of Multus is copied); a failure deletes
//!   what was added in reverse order; on success the network-status
//!   annotation is written to the Pod through the API.
//!
//! Extended resources (SR-IOV VFs), with [`Kubelet::with_devices`]: before
//! anything else the Pod is admitted by the kubelet's device manager
//! (`spur_testbed::sriov::DeviceManager`, shared by every node) with what
//! its containers' limits ask for; a refusal leaves the Pod not ready with
//! the kubelet's message and no sandbox (admission failures are final).
//! An admitted Pod's devices go into the node's PodResources record
//! (`StaticPodResources`, which the run serves to the node's agent over
//! the PodResources gRPC API) and, in multus mode, into each delegate's
//! `deviceID` ([`multus::device_ids`]); they are released once the Pod's
//! sandbox is deleted ([`Kubelet::teardown`]).
//!
//! A failed ADD is followed by DEL of everything (as kubelet does after a
//! failed sandbox setup) and the namespace is removed: the Pod is a
//! result ([`Sandbox::ready`] false with the CNI error's message), never
//! an error of the run. Every plugin call is timed ([`CallRecord`]).
//!
//! What does not live here: placing Pods, starting agents, switches or
//! the API server (the lab and the run do that), and reading what the
//! plugins built (the probes).
//!
//! The methods block: call them from plain threads (or
//! `spawn_blocking`), not from async tasks of a current-thread runtime.

pub mod cni;
pub mod multus;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{json, Value};
use spur_core::selection::{self, Naming, NETWORKS_ANNOTATION};
use spur_core::status::{self, NETWORK_STATUS_ANNOTATION};
use spur_core::Subject;
use spur_testbed::{CniMode, PodRef};

pub use cni::{
    invoke, CallRecord, CniCallError, CniCommand, CniEnv, NetConfList, PluginFailure, RuntimeConf,
};
pub use multus::{Delegate, PRIMARY_NETWORK};

use crate::probe::sys;
use crate::sriov::NodeSriov;
use spur_node::podresources::StaticPodResources;
use spur_testbed::sriov::DeviceManager;

/// The environment variable that tells the `spur` plugin where its
/// node's agent listens.
pub const SPUR_CNI_SOCKET_ENV: &str = "SPUR_CNI_SOCKET";

/// What the stand-in needs to know about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCtx {
    /// The node's name.
    pub node: String,
    /// The node's network namespace (plugins run inside it).
    pub netns: String,
    /// The CNI bin dir (`CNI_PATH`): the reference plugins and `spur`.
    pub cni_bin_dir: PathBuf,
    /// The node agent's CNI socket (`SPUR_CNI_SOCKET`).
    pub cni_socket: PathBuf,
    /// The node's pod CIDR (`host-local`'s subnet for `eth0`).
    pub pod_cidr: IpNet,
    /// Lab-private state of this node (`host-local`'s `dataDir`).
    pub work_dir: PathBuf,
}

/// A failure of the stand-in itself (plugin failures during ADD are
/// results, see [`Sandbox`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletError {
    /// DEL failed for some networks (the namespace is kept so DEL can be
    /// retried).
    #[error("Pod {pod}: CNI DEL failed: {}", .errors.join("; "))]
    Del {
        /// The Pod.
        pod: PodRef,
        /// One message per failed network.
        errors: Vec<String>,
    },
    /// The Pod's network namespace could not be removed.
    #[error("Pod {pod}: {reason}")]
    Netns {
        /// The Pod.
        pod: PodRef,
        /// What failed.
        reason: String,
    },
}

/// One network attached (or to be attached) to a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// What was asked for.
    pub delegate: Delegate,
    /// Its ADD result, kept for DEL's `prevResult` (`None` until ADD
    /// succeeded, and again once DEL succeeded).
    pub result: Option<Value>,
}

/// The `CNI_ARGS` a kubelet (containerd's CRI plugin) passes for a Pod's
/// sandbox, then `extra` (a delegation's own, e.g. Multus's `MAC`/`IP`).
/// The simulator's kubelet passes the same.
pub fn cni_args(
    pod: &PodRef,
    container_id: &str,
    pod_uid: &str,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let mut args = vec![
        ("IgnoreUnknown".to_string(), "1".to_string()),
        ("K8S_POD_NAMESPACE".to_string(), pod.namespace.clone()),
        ("K8S_POD_NAME".to_string(), pod.name.clone()),
        (
            "K8S_POD_INFRA_CONTAINER_ID".to_string(),
            container_id.to_string(),
        ),
        ("K8S_POD_UID".to_string(), pod_uid.to_string()),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// A Pod's sandbox: its network namespace and what CNI did in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// The Pod.
    pub pod: PodRef,
    /// The node.
    pub node: String,
    /// The Pod's network namespace (name under /var/run/netns).
    pub netns: String,
    /// `CNI_CONTAINERID` (a fresh sandbox id).
    pub container_id: String,
    /// True when every network was attached.
    pub ready: bool,
    /// Why it is not ready: the CNI error's message (in multus mode
    /// prefixed with `network NS/NAD: `).
    pub reason: Option<String>,
    /// The Pod's UID (`K8S_POD_UID`).
    pub pod_uid: String,
    /// The namespace's path (`CNI_NETNS`).
    pub netns_path: PathBuf,
    /// The networks, primary first, in ADD order.
    pub attachments: Vec<Attachment>,
    /// Every plugin call of ADD (and of the DEL after a failed ADD).
    pub calls: Vec<CallRecord>,
    /// DEL failures after a failed ADD (logged; the sandbox is gone).
    pub teardown_errors: Vec<String>,
    /// How long ADD took, namespace creation included.
    pub add_elapsed: Duration,
    /// The devices the kubelet admitted the Pod with, by resource, as the
    /// node's PodResources lists them (empty without extended resources).
    pub devices: BTreeMap<String, Vec<String>>,
    /// False when the device manager refused the Pod: no sandbox was
    /// made (`netns` names the one that would have been).
    pub admitted: bool,
}

/// What a DEL of a sandbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Every plugin call, timed.
    pub calls: Vec<CallRecord>,
    /// One message per network whose DEL failed, and namespace problems.
    pub errors: Vec<String>,
}

/// The device-manager side of a node's kubelet stand-in (SR-IOV VFs).
#[derive(Clone, Debug)]
pub struct KubeletDevices {
    /// The testbed's device manager (every node's devices).
    pub manager: Arc<Mutex<DeviceManager>>,
    /// This node's PodResources record, served to its agent.
    pub pod_resources: Arc<StaticPodResources>,
    /// How this node lists its devices (testbed PCI address to device ID).
    pub node: NodeSriov,
}

impl KubeletDevices {
    fn manager(&self) -> std::sync::MutexGuard<'_, DeviceManager> {
        self.manager.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The kubelet stand-in of one node.
#[derive(Clone)]
pub struct Kubelet {
    ctx: NodeCtx,
    mode: CniMode,
    client: kube::Client,
    rt: tokio::runtime::Handle,
    call_timeout: Duration,
    devices: Option<KubeletDevices>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("ctx", &self.ctx)
            .field("mode", &self.mode)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

/// The conflist of the primary network (`k8s-pod-network`, CNI 1.0.0):
/// `ptp` with `host-local` on `pod_cidr` (state in `data_dir`, a default
/// route of the CIDR's family), followed in native mode by `{"type":
/// "spur"}`.
pub fn primary_conflist(pod_cidr: IpNet, data_dir: &Path, mode: CniMode) -> NetConfList {
    let default_dst = if pod_cidr.addr().is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let mut plugins = vec![json!({
        "type": "ptp",
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": pod_cidr.trunc().to_string()}]],
            "routes": [{"dst": default_dst}],
            "dataDir": data_dir,
        },
    })];
    if mode == CniMode::Native {
        plugins.push(json!({"type": "spur"}));
    }
    NetConfList {
        name: PRIMARY_NETWORK.to_string(),
        cni_version: "1.0.0".to_string(),
        plugins,
    }
}

/// The name of a Pod's network namespace: the node's namespace name (so a
/// lab's leftovers share its prefix), the Pod and 8 characters of the
/// sandbox id; at most 200 characters.
pub fn pod_netns_name(node_netns: &str, pod: &PodRef, container_id: &str) -> String {
    let id: String = container_id.chars().take(8).collect();
    let mut who = format!("{}-{}", pod.namespace, pod.name);
    // Counted in characters: names from elsewhere than the API need not be
    // ASCII.
    let room = 200usize
        .saturating_sub(node_netns.len() + id.len() + 2)
        .max(1);
    if who.chars().count() > room {
        who = who.chars().take(room).collect();
    }
    format!("{node_netns}-{who}-{id}")
}

/// `n` random lower-case hex digits.
pub(crate) fn random_hex(n: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(n + 16);
    let mut i = 0u64;
    while out.len() < n {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
        i += 1;
    }
    out.truncate(n);
    out
}

fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

impl Kubelet {
    /// The stand-in of node `ctx.node` in `mode`, talking to the API with
    /// `client` on runtime `rt`. Plugin calls time out after 60 s.
    pub fn new(
        ctx: NodeCtx,
        mode: CniMode,
        client: kube::Client,
        rt: tokio::runtime::Handle,
    ) -> Kubelet {
        Kubelet {
            ctx,
            mode,
            client,
            rt,
            call_timeout: Duration::from_secs(60),
            devices: None,
        }
    }

    /// The same with a device manager: Pods are admitted with the
    /// extended resources they ask for (see the module doc).
    pub fn with_devices(mut self, devices: KubeletDevices) -> Kubelet {
        self.devices = Some(devices);
        self
    }

    /// The same with another time limit per plugin call.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Kubelet {
        self.call_timeout = timeout;
        self
    }

    /// The node this stand-in serves.
    pub fn ctx(&self) -> &NodeCtx {
        &self.ctx
    }

    /// The primary network's conflist on this node.
    pub fn primary_conflist(&self) -> NetConfList {
        primary_conflist(
            self.ctx.pod_cidr,
            &self.ctx.work_dir.join("host-local"),
            self.mode,
        )
    }

    /// Creates the Pod's netns and runs CNI ADD (see the module doc).
    /// Never panics on plugin failures: they give a sandbox that is not
    /// ready, with the CNI error's message as its reason, everything
    /// deleted and the namespace removed.
    pub fn add_pod(&self, pod: &Pod) -> Sandbox {
        let start = Instant::now();
        let pod_ref = PodRef::new(
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default(),
        );
        let container_id = random_hex(64);
        let netns = pod_netns_name(&self.ctx.netns, &pod_ref, &container_id);
        let mut sb = Sandbox {
            pod: pod_ref,
            node: self.ctx.node.clone(),
            netns_path: sys::netns_path(&netns),
            netns,
            container_id,
            ready: false,
            reason: None,
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            attachments: Vec::new(),
            calls: Vec::new(),
            teardown_errors: Vec::new(),
            add_elapsed: Duration::ZERO,
            devices: BTreeMap::new(),
            admitted: true,
        };
        let _span = tracing::info_span!("add_pod", pod = %sb.pod, node = %sb.node).entered();
        if let Err(reason) = self.admit(pod, &mut sb) {
            tracing::info!(%reason, "the device manager refused the Pod");
            sb.admitted = false;
            sb.reason = Some(reason);
            sb.add_elapsed = start.elapsed();
            return sb;
        }
        if let Err(reason) = create_netns(&sb.netns) {
            sb.reason = Some(reason);
            sb.add_elapsed = start.elapsed();
            return sb;
        }
        let outcome = match self.mode {
            CniMode::Native => self.add_native(&mut sb),
            CniMode::Multus => self.add_multus(pod, &mut sb),
        };
        match outcome {
            Ok(()) => {
                sb.ready = true;
                tracing::debug!(netns = %sb.netns, elapsed = ?start.elapsed(), "Pod networks attached");
            }
            Err(reason) => {
                tracing::info!(%reason, "CNI ADD failed; deleting everything");
                sb.reason = Some(reason);
                let mut calls = std::mem::take(&mut sb.calls);
                let errors = self.del_all(&mut sb, &mut calls);
                sb.calls = calls;
                sb.teardown_errors = errors;
                if let Err(e) = delete_netns(&sb.netns) {
                    sb.teardown_errors.push(e);
                }
                for e in &sb.teardown_errors {
                    tracing::info!(error = %e, "DEL after the failed ADD");
                }
            }
        }
        sb.add_elapsed = start.elapsed();
        sb
    }

    /// CNI DEL of the whole chain, then deletes the netns. Idempotent:
    /// DEL runs again on every call (plugins must accept that). A sandbox
    /// whose ADD failed was already deleted: nothing to do.
    pub fn del_pod(&self, sandbox: &Sandbox) -> Result<(), KubeletError> {
        let t = self.teardown(sandbox);
        if t.errors.is_empty() {
            Ok(())
        } else {
            Err(KubeletError::Del {
                pod: sandbox.pod.clone(),
                errors: t.errors,
            })
        }
    }

    /// [`Kubelet::del_pod`] with its timed calls: in multus mode the
    /// network-status annotation is removed first (as Multus does), then
    /// each network is deleted in reverse order with its ADD result as
    /// `prevResult`; the namespace is removed when every DEL succeeded.
    pub fn teardown(&self, sandbox: &Sandbox) -> Teardown {
        let mut t = Teardown::default();
        let _span =
            tracing::info_span!("del_pod", pod = %sandbox.pod, node = %sandbox.node).entered();
        if sandbox.ready {
            if self.mode == CniMode::Multus && sandbox.netns_path.exists() {
                if let Err(e) = self.patch_network_status(&sandbox.pod, None) {
                    // Multus goes on deleting when the Pod is gone.
                    tracing::debug!(error = %e, "cannot remove the network-status annotation");
                }
            }
            let mut sb = sandbox.clone();
            t.errors = self.del_all(&mut sb, &mut t.calls);
        }
        if t.errors.is_empty() {
            if let Err(e) = delete_netns(&sandbox.netns) {
                t.errors.push(e);
            }
        }
        if t.errors.is_empty() {
            self.release(sandbox);
        }
        t
    }

    /// Device-manager admission: the Pod's extended resources allocated
    /// and recorded in the node's PodResources (every admitted Pod is
    /// listed there, with or without devices); `Err` with the kubelet's
    /// message when the node cannot serve them.
    fn admit(&self, pod: &Pod, sb: &mut Sandbox) -> Result<(), String> {
        let Some(dev) = &self.devices else {
            return Ok(());
        };
        let requests = serde_json::to_value(pod)
            .map(|v| spur_testbed::sriov::pod_requests(&v))
            .unwrap_or_default();
        let allocation = dev.manager().admit(&sb.node, &sb.pod_uid, &requests)?;
        sb.devices = dev.node.listed(&allocation);
        dev.pod_resources
            .set(&sb.pod.namespace, &sb.pod.name, sb.devices.clone());
        Ok(())
    }

    /// The Pod is gone: its devices are free and its PodResources entry
    /// removed.
    fn release(&self, sb: &Sandbox) {
        if let Some(dev) = &self.devices {
            dev.manager().release(&sb.node, &sb.pod_uid);
            dev.pod_resources.remove(&sb.pod.namespace, &sb.pod.name);
        }
    }

    fn runtime(&self, sb: &Sandbox, d: &Delegate) -> RuntimeConf {
        let args = cni_args(&sb.pod, &sb.container_id, &sb.pod_uid, &d.extra_args);
        RuntimeConf {
            container_id: sb.container_id.clone(),
            netns_path: sb.netns_path.display().to_string(),
            ifname: d.ifname.clone(),
            args,
            capability_args: d.capability_args.clone(),
            bin_dir: self.ctx.cni_bin_dir.clone(),
            extra_env: vec![(
                SPUR_CNI_SOCKET_ENV.to_string(),
                self.ctx.cni_socket.display().to_string(),
            )],
            run_in: Some(self.ctx.netns.clone()),
            timeout: self.call_timeout,
        }
    }

    fn add_native(&self, sb: &mut Sandbox) -> Result<(), String> {
        let d = Delegate::primary(self.primary_conflist());
        sb.attachments = vec![Attachment {
            delegate: d.clone(),
            result: None,
        }];
        let rt = self.runtime(sb, &d);
        let result = cni::add_list(&d.list, &rt, &d.network, &mut sb.calls).map_err(|e| e.msg())?;
        sb.attachments[0].result = Some(result);
        Ok(())
    }

    fn add_multus(&self, pod: &Pod, sb: &mut Sandbox) -> Result<(), String> {
        // Until the Pod's delegates are loaded, DEL knows only the
        // cluster network (as Multus without its cache).
        let primary = Delegate::primary(self.primary_conflist());
        sb.attachments = vec![Attachment {
            delegate: primary.clone(),
            result: None,
        }];
        let annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETWORKS_ANNOTATION))
            .map(String::as_str)
            .unwrap_or_default();
        let elements =
            selection::parse(annotation, &sb.pod.namespace, &sb.pod.name, Naming::Multus)
                .map_err(|e| e.to_string())?;
        let mut delegates = vec![primary];
        let mut resources: Vec<(String, Option<String>)> = Vec::new();
        for el in &elements {
            let network = el.network();
            let (config, resource) = self
                .nad_config(&el.namespace, &el.name)
                .map_err(|e| format!("network {network}: {e}"))?;
            let d = multus::delegate(el, &config).map_err(|e| {
                format!("network {network}: NetworkAttachmentDefinition {network}: {e}")
            })?;
            delegates.push(d);
            resources.push((network, resource));
        }
        if resources.iter().any(|(_, r)| r.is_some()) {
            // Multus's deviceID: the Pod's devices, matched to the elements.
            let asked: Vec<(&str, Option<&str>)> = resources
                .iter()
                .map(|(n, r)| (n.as_str(), r.as_deref()))
                .collect();
            let ids = multus::device_ids(&asked, &sb.devices)?;
            for (d, id) in delegates[1..].iter_mut().zip(ids) {
                if let Some(id) = id {
                    multus::set_device_id(d, &id);
                }
            }
        }
        multus::check_gateways(&mut delegates)?;
        sb.attachments = delegates
            .into_iter()
            .map(|delegate| Attachment {
                delegate,
                result: None,
            })
            .collect();
        for idx in 0..sb.attachments.len() {
            let d = sb.attachments[idx].delegate.clone();
            let rt = self.runtime(sb, &d);
            match cni::add_list(&d.list, &rt, &d.network, &mut sb.calls) {
                Ok(result) => sb.attachments[idx].result = Some(result),
                Err(e) => {
                    self.rollback(sb, idx);
                    return Err(format!("network {}: {}", d.network, e.msg()));
                }
            }
            self.default_routes(sb, &d)
                .map_err(|e| format!("network {}: {e}", d.network))?;
        }
        let entries: Vec<_> = sb
            .attachments
            .iter()
            .map(|a| multus::network_status(&a.delegate, a.result.as_ref().unwrap_or(&Value::Null)))
            .collect();
        let subject = Subject::new("Pod", Some(&sb.pod.namespace), &sb.pod.name);
        let text = status::render(&entries, &subject).map_err(|e| e.to_string())?;
        self.patch_network_status(&sb.pod, Some(&text))
            .map_err(|e| format!("writing the network-status annotation: {e}"))?;
        Ok(())
    }

    /// Multus's rollback after delegate `failed` failed: DEL of it and of
    /// every earlier one, in reverse order, errors ignored.
    fn rollback(&self, sb: &mut Sandbox, failed: usize) {
        for k in (0..=failed).rev() {
            let a = sb.attachments[k].clone();
            let rt = self.runtime(sb, &a.delegate);
            match cni::del_list(
                &a.delegate.list,
                &rt,
                a.result.as_ref(),
                &a.delegate.network,
                &mut sb.calls,
            ) {
                // libcni drops the cached result after a successful DEL.
                Ok(()) => sb.attachments[k].result = None,
                Err(e) => {
                    tracing::debug!(network = %a.delegate.network, error = %e, "rollback DEL")
                }
            }
        }
    }

    /// DEL of every attachment in reverse order (going on after failures,
    /// as Multus does); one message per failure.
    fn del_all(&self, sb: &mut Sandbox, calls: &mut Vec<CallRecord>) -> Vec<String> {
        let mut errors = Vec::new();
        for k in (0..sb.attachments.len()).rev() {
            let a = sb.attachments[k].clone();
            let rt = self.runtime(sb, &a.delegate);
            match cni::del_list(
                &a.delegate.list,
                &rt,
                a.result.as_ref(),
                &a.delegate.network,
                calls,
            ) {
                Ok(()) => sb.attachments[k].result = None,
                Err(e) => errors.push(format!("network {}: {e}", a.delegate.network)),
            }
        }
        errors
    }

    /// Multus's `default-route` handling after `d` was added.
    fn default_routes(&self, sb: &Sandbox, d: &Delegate) -> Result<(), String> {
        let (v4, v6) = d.default_routes_to_delete();
        let what = format!("setting the default routes of {}", d.ifname);
        for (on, family, any) in [(v4, "-4", "0.0.0.0/0"), (v6, "-6", "::/0")] {
            if on {
                let args = [
                    "-n", &sb.netns, family, "route", "flush", "exact", any, "dev", &d.ifname,
                ];
                sys::run("ip", &args, None, &what).map_err(|e| e.to_string())?;
            }
        }
        for gw in &d.gateways {
            let gw = gw.to_string();
            let args = [
                "-n", &sb.netns, "route", "replace", "default", "via", &gw, "dev", &d.ifname,
            ];
            sys::run("ip", &args, None, &what).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The `spec.config` of NetworkAttachmentDefinition `ns/name` and the
    /// device-plugin resource its annotation names, if any.
    fn nad_config(&self, ns: &str, name: &str) -> Result<(String, Option<String>), String> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &nad_resource());
        let obj = self
            .block_on(api.get_opt(name))
            .map_err(|e| format!("cannot read NetworkAttachmentDefinition {ns}/{name}: {e}"))?
            .ok_or_else(|| format!("NetworkAttachmentDefinition {ns}/{name} not found"))?;
        multus::nad_parts(&obj, ns, name)
    }

    /// Sets (or, with `None`, removes) the Pod's network-status
    /// annotation.
    fn patch_network_status(&self, pod: &PodRef, text: Option<&str>) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = json!({"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: text}}});
        self.block_on(pods.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch)))
            .map(drop)
            .map_err(|e| format!("cannot patch Pod {pod}: {e}"))
    }

    /// Runs `f` on the stand-in's runtime from a blocking context (from
    /// inside a runtime, on a scoped helper thread).
    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| match s.spawn(|| self.rt.block_on(f)).join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            self.rt.block_on(f)
        }
    }
}

/// `ip netns add NAME` and loopback up.
pub(crate) fn create_netns(name: &str) -> Result<(), String> {
    let what = format!("creating the Pod's network namespace {name}");
    sys::run("ip", &["netns", "add", name], None, &what).map_err(|e| e.to_string())?;
    if let Err(e) = sys::run("ip", &["-n", name, "link", "set", "lo", "up"], None, &what) {
        let _ = delete_netns(name);
        return Err(e.to_string());
    }
    Ok(())
}

/// `ip netns del NAME` when it exists.
fn delete_netns(name: &str) -> Result<(), String> {
    if !sys::netns_path(name).exists() {
        return Ok(());
    }
    let what = format!("deleting the Pod's network namespace {name}");
    sys::run("ip", &["netns", "del", name], None, &what)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn primary_lists() {
        let native = primary_conflist(
            "10.244.1.7/24".parse().unwrap(),
            Path::new("/run/lab/n/host-local"),
            CniMode::Native,
        );
        assert_eq!(native.name, "k8s-pod-network");
        assert_eq!(native.cni_version, "1.0.0");
        assert_eq!(native.plugins.len(), 2);
        assert_eq!(native.plugins[1], json!({"type": "spur"}));
        let ipam = &native.plugins[0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(ipam["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(ipam["dataDir"], "/run/lab/n/host-local");
        let v6 = primary_conflist(
            "fd00:10::/64".parse().unwrap(),
            Path::new("/d"),
            CniMode::Multus,
        );
        assert_eq!(v6.plugins.len(), 1);
        assert_eq!(v6.plugins[0]["ipam"]["routes"][0]["dst"], "::/0");
    }

    #[test]
    fn netns_names() {
        let pod = PodRef::new("default", "web-0");
        let id = random_hex(64);
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, random_hex(64));
        let n = pod_netns_name("spurhil-ab12-node-a", &pod, &id);
        assert_eq!(n, format!("spurhil-ab12-node-a-default-web-0-{}", &id[..8]));
        let long = PodRef::new("default", "x".repeat(253));
        let n = pod_netns_name("spurhil-ab12-node-a", &long, &id);
        assert!(n.len() <= 200, "{}", n.len());
        assert!(n.starts_with("spurhil-ab12-node-a-default-xxx"));
        assert!(n.ends_with(&id[..8]));
    }
}
