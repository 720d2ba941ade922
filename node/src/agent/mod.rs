//! The node agent's long-running part (`spur-agent run`): it serves the
//! `spur` CNI plugin over a unix socket and creates, checks and removes
//! Pods' secondary interfaces.
//!
//! - [`cluster`]: what the agent reads from the API (its node's Pods,
//!   NADs, Namespaces, through reflectors) and the network-status it
//!   writes, behind the [`cluster::Cluster`] trait;
//! - [`cni`]: the verbs (ADD, DEL, CHECK, STATUS, GC) in their three roles
//!   (native chained, Multus delegate, IPAM of another plugin); every ADD
//!   is all or nothing;
//! - [`server`]: the unix socket (0600 in a 0700 directory, versioned and
//!   length-prefixed messages, bounded time);
//! - [`metrics`]: Prometheus metrics (CNI latency and errors, OVSDB
//!   reconnects, readiness, stale ports) and the `/metrics`, `/healthz`
//!   and `/readyz` endpoints;
//! - [`sweep`]: level-driven clean-up of ports whose Pod or sandbox is
//!   gone (at start, after a restart, and periodically), and of the
//!   bridges' spec (config changes included);
//! - [`run`]: the agent's start-up sequence and periodic resync, shared by
//!   the binary and the simulator, with the config's origin a
//!   [`run::ConfigSource`] (a file, a channel, or fixed).
//!
//! Determinism (the simulator runs this code on a paused tokio clock):
//! time is `tokio::time::Instant`, every `select!` is `biased`, watches
//! restart with a seeded [`crate::watch_backoff::WatchBackoff`], and
//! everything that acts on a set (ports, owners, pools) acts in a sorted
//! order.
//!
//! The decisions (what to create, which VLAN, which name, which MAC) are
//! pure and live in `spur_core::attach`; the switch, the links and the API
//! are traits ([`crate::ovsdb::Switch`], [`crate::netdev::PodLinks`],
//! [`cluster::Cluster`]) so the simulator substitutes them.

pub mod cluster;
pub mod cni;
pub mod metrics;
pub mod run;
pub mod server;
pub mod sweep;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use spur_core::config::AgentConfig;

use crate::ipam::Ipam;
use crate::netdev::PodLinks;
use crate::ovsdb::{BridgeSpec, Switch};
use cluster::Cluster;

/// `external_ids` keys of a Pod's access port.
pub mod port_keys {
    /// The Pod's namespace.
    pub const POD_NAMESPACE: &str = "spur.dev/pod-namespace";
    /// The Pod's name.
    pub const POD_NAME: &str = "spur.dev/pod-name";
    /// The sandbox (infra container) ID.
    pub const CONTAINER_ID: &str = "spur.dev/container-id";
    /// The interface name inside the Pod.
    pub const INTERFACE: &str = "spur.dev/interface";
    /// The network (`namespace/name` of the NAD, or the config's name).
    pub const NETWORK: &str = "spur.dev/network";
    /// The Pod's network namespace path.
    pub const NETNS: &str = "spur.dev/netns";
}

/// The userspace datapath of Open vSwitch (no kernel module).
pub const DATAPATH_NETDEV: &str = "netdev";
/// The kernel datapath.
pub const DATAPATH_SYSTEM: &str = "system";

/// The datapath the host can run: the kernel's when the `openvswitch`
/// module is loaded, else the userspace one.
pub fn detect_datapath() -> &'static str {
    if std::path::Path::new("/sys/module/openvswitch").exists() {
        DATAPATH_SYSTEM
    } else {
        DATAPATH_NETDEV
    }
}

/// The agent's settings that are not in `spur-agent.conf`.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// This node's name.
    pub node: String,
    /// `netdev` or `system`.
    pub datapath: String,
}

/// The agent: the state shared by every request.
pub struct Agent {
    settings: AgentSettings,
    config: RwLock<AgentConfig>,
    ipam: Ipam,
    cluster: Arc<dyn Cluster>,
    switch: Arc<dyn Switch>,
    links: Arc<dyn PodLinks>,
    bridges_ready: AtomicBool,
    bridge_error: RwLock<Option<String>>,
    metrics: Arc<metrics::AgentMetrics>,
    sriov: Option<SriovBackends>,
    /// VFs an ADD or the recovery is working on right now (see
    /// [`VfClaim`]).
    vf_claims: std::sync::Mutex<std::collections::BTreeSet<spur_core::sriov::PciAddress>>,
}

/// A VF one task of the agent is working on: an ADD from the moment it
/// picks the VF until the VF is in the Pod, or the recovery while it gives
/// a VF back. A VF is claimed by one task at a time, so the recovery never
/// mistakes a VF an ADD has labelled but not yet moved for one a dead
/// sandbox returned. Dropping the claim releases it.
pub(crate) struct VfClaim<'a> {
    agent: &'a Agent,
    pci: spur_core::sriov::PciAddress,
}

impl Drop for VfClaim<'_> {
    fn drop(&mut self) {
        self.agent
            .vf_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pci);
    }
}

/// What the agent needs for SR-IOV networks: the node's sysfs, the
/// kubelet's record of Pods' devices, and the VF operations.
#[derive(Clone)]
pub struct SriovBackends {
    /// Where VFs are found.
    pub sysfs: crate::sriov::sysfs::Sysfs,
    /// Which devices each Pod got (native mode).
    pub pod_resources: Arc<dyn crate::podresources::PodResources>,
    /// Moving and configuring VFs.
    pub vfs: Arc<dyn crate::sriov::vf::VfLinks>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.settings.node)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent over its boundaries.
    pub fn new(
        settings: AgentSettings,
        config: AgentConfig,
        ipam: Ipam,
        cluster: Arc<dyn Cluster>,
        switch: Arc<dyn Switch>,
        links: Arc<dyn PodLinks>,
    ) -> Agent {
        Agent {
            settings,
            config: RwLock::new(config),
            ipam,
            cluster,
            switch,
            links,
            bridges_ready: AtomicBool::new(false),
            bridge_error: RwLock::new(None),
            metrics: Arc::new(metrics::AgentMetrics::new()),
            sriov: None,
            vf_claims: std::sync::Mutex::default(),
        }
    }

    /// The agent serving SR-IOV networks over `backends` (without them it
    /// refuses SR-IOV networks, naming the node).
    pub fn with_sriov(mut self, backends: SriovBackends) -> Agent {
        self.sriov = Some(backends);
        self
    }

    /// The agent with `metrics` in place of its own (e.g. a registry
    /// shared with other parts of the process).
    pub fn with_metrics(mut self, metrics: Arc<metrics::AgentMetrics>) -> Agent {
        self.metrics = metrics;
        self
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &Arc<metrics::AgentMetrics> {
        &self.metrics
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// The IPAM of the agent.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The configured bridges' names.
    pub fn bridge_names(&self) -> Vec<String> {
        self.config()
            .secondary_network
            .ovs_bridges
            .iter()
            .map(|b| b.bridge_name.clone())
            .collect()
    }

    fn config(&self) -> AgentConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True when the node's datapath needs TX checksum offload off on Pod
    /// interfaces (the userspace datapath does not finish partial
    /// checksums).
    fn tx_checksum_off(&self) -> bool {
        self.settings.datapath == DATAPATH_NETDEV
    }

    /// The bridges `spur-agent.conf` asks for.
    pub fn bridge_specs(&self) -> Vec<BridgeSpec> {
        self.config()
            .secondary_network
            .ovs_bridges
            .iter()
            .map(|b| BridgeSpec {
                name: b.bridge_name.clone(),
                datapath_type: self.settings.datapath.clone(),
                uplinks: b.physical_interfaces.clone(),
                mcast_snooping: b.enable_multicast_snooping,
            })
            .collect()
    }

    /// Replaces the config (a changed `spur-agent.conf`); the next
    /// [`Agent::ensure_bridges`] brings the bridges to it.
    pub fn set_config(&self, config: AgentConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// The bridges that may carry Pod ports: the configured ones and every
    /// other bridge of the switch (a bridge dropped from the config keeps
    /// the ports of its Pods until they go). Only ports Spur marked as
    /// access ports are ever touched on them.
    pub async fn port_bridges(&self) -> Result<Vec<String>, String> {
        let mut names = self.bridge_names();
        match self.switch.list_bridges().await {
            Ok(all) => names.extend(all),
            Err(e) => return Err(format!("listing the switch's bridges: {e}")),
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Brings every configured bridge to its spec (idempotent). Bridges
    /// no longer configured are left alone: they may carry Pods.
    pub async fn ensure_bridges(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        for spec in self.bridge_specs() {
            if let Err(e) = self.check_uplinks(&spec).await {
                errors.push(format!("bridge {}: {e}", spec.name));
                continue;
            }
            if let Err(e) = self.switch.ensure_bridge(&spec).await {
                errors.push(format!("bridge {}: {e}", spec.name));
            }
        }
        let result = if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        };
        *self.bridge_error.write().unwrap_or_else(|p| p.into_inner()) = result.clone().err();
        self.bridges_ready.store(result.is_ok(), Ordering::SeqCst);
        result
    }

    /// Refuses uplinks that carry the node's own addresses: moving the
    /// node's management interface into a bridge would take its addresses,
    /// routes and DNS away (a known failure of other secondary-network
    /// plugins). An uplink that does not exist yet is left to the switch,
    /// which attaches it when it appears.
    async fn check_uplinks(&self, spec: &BridgeSpec) -> Result<(), String> {
        for uplink in &spec.uplinks {
            let addrs = self
                .links
                .host_addresses(uplink)
                .await
                .map_err(|e| format!("uplink {uplink}: {e}"))?
                .unwrap_or_default();
            let own: Vec<String> = addrs
                .iter()
                .filter(|a| !matches!(a, ipnet::IpNet::V6(v6) if v6.addr().is_unicast_link_local()))
                .map(ToString::to_string)
                .collect();
            if !own.is_empty() {
                return Err(format!(
                    "uplink {uplink} carries addresses of the node ({}): Spur never moves an \
                     interface with the node's addresses into a bridge (it would cut the \
                     node's routes and DNS); give the bridge a NIC without addresses in \
                     spur-agent.conf secondaryNetwork.ovsBridges[].physicalInterfaces",
                    own.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Claims the VF `pci` for the calling task; `None` when another task
    /// holds it.
    pub(crate) fn claim_vf(&self, pci: spur_core::sriov::PciAddress) -> Option<VfClaim<'_>> {
        let fresh = self
            .vf_claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pci);
        // Lazily: a refused claim must not build a `VfClaim`, whose drop
        // would release the holder's claim (`then_some` builds it anyway).
        fresh.then(|| VfClaim { agent: self, pci })
    }

    /// Why the agent cannot serve ADD now, if it cannot.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.ipam.cache().is_ready() {
            return Some("IPPools and IPAMBlocks are not listed yet".into());
        }
        if !self.cluster.is_ready() {
            return Some(
                "Pods, NetworkAttachmentDefinitions and Namespaces are not listed yet".into(),
            );
        }
        if !self.bridges_ready.load(Ordering::SeqCst) {
            let why = self
                .bridge_error
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "not set up yet".into());
            return Some(format!("secondary bridges: {why}"));
        }
        None
    }
}

/// Access-port `external_ids` of one Pod interface.
pub(crate) fn port_external_ids(
    pod_namespace: &str,
    pod_name: &str,
    container_id: &str,
    ifname: &str,
    network: &str,
    netns: &str,
) -> BTreeMap<String, String> {
    [
        (port_keys::POD_NAMESPACE, pod_namespace),
        (port_keys::POD_NAME, pod_name),
        (port_keys::CONTAINER_ID, container_id),
        (port_keys::INTERFACE, ifname),
        (port_keys::NETWORK, network),
        (port_keys::NETNS, netns),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
