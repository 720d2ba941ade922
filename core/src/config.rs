//! `spur-agent.conf` and `spur-controller.conf`: the two configuration files
//! of Spur, kept in the ConfigMap [`CONFIGMAP_NAMESPACE`]/[`CONFIGMAP_NAME`]
//! under the keys [`AGENT_CONF_KEY`] and [`CONTROLLER_CONF_KEY`].
//!
//! Both are YAML. Empty text means "all defaults". Every key not described
//! here is refused with an error naming its path, and every refused value is
//! reported as an [`Invalid`] naming the file, the key path (for example
//! `secondaryNetwork.ovsBridges[1].physicalInterfaces[0]`) and the value.
//!
//! `spur-agent.conf`:
//!
//! ```yaml
//! featureGates:                     # gate name -> enabled; see KNOWN_FEATURE_GATES
//!   SecondaryNetwork: true
//! cniSocket: /var/run/spur/cni.sock # where the agent serves the CNI plugin
//! ovsRunDir: /var/run/openvswitch   # where ovsdb-server's socket lives
//! apiTimeoutSeconds: 10             # Kubernetes API request timeout, 1-300
//! secondaryNetwork:
//!   ovsBridges:
//!   - bridgeName: br-secondary          # required, unique on the node
//!     physicalInterfaces: [eth1, eth2]  # 0-8 uplinks; an interface serves one bridge only
//!     enableMulticastSnooping: false    # default false
//! ```
//!
//! `spur-controller.conf`:
//!
//! ```yaml
//! featureGates:
//!   SpurIPAM: true
//! gcIntervalSeconds: 60                # address garbage collector period, 1-86400
//! nodeIPAM:
//!   enableNodeIPAM: false
//!   clusterCIDRs: [172.100.0.0/20, "fd00:172:100::/60"]   # at most one per family
//!   serviceCIDR: 10.96.0.0/16          # optional, IPv4, excluded from node CIDRs
//!   serviceCIDRv6: fd00:10:96::/112    # optional, IPv6, excluded from node CIDRs
//!   nodeCIDRMaskSizeIPv4: 24           # 16-30
//!   nodeCIDRMaskSizeIPv6: 64           # 64-126
//! ```

use std::collections::BTreeMap;
use std::fmt;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::{edit_distance, plain_serde_message, Invalid, Kind, Subject};
use crate::names::ifname_problem;

/// Namespace of the ConfigMap holding Spur's configuration.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap holding Spur's configuration.
pub const CONFIGMAP_NAME: &str = "spur-config";
/// ConfigMap key of the agent configuration.
pub const AGENT_CONF_KEY: &str = "spur-agent.conf";
/// ConfigMap key of the controller configuration.
pub const CONTROLLER_CONF_KEY: &str = "spur-controller.conf";

/// Default of `cniSocket`: the socket the agent serves CNI requests on.
pub const DEFAULT_CNI_SOCKET: &str = "/var/run/spur/cni.sock";
/// Default of `ovsRunDir`: the directory of Open vSwitch's sockets.
pub const DEFAULT_OVS_RUN_DIR: &str = "/var/run/openvswitch";
/// Default of `apiTimeoutSeconds`.
pub const DEFAULT_API_TIMEOUT_SECONDS: u32 = 10;
/// Largest accepted `apiTimeoutSeconds`.
pub const MAX_API_TIMEOUT_SECONDS: u32 = 300;
/// Most uplinks (`physicalInterfaces`) one bridge may have.
pub const MAX_UPLINKS_PER_BRIDGE: usize = 8;
/// Default of `gcIntervalSeconds`.
pub const DEFAULT_GC_INTERVAL_SECONDS: u32 = 60;
/// Largest accepted `gcIntervalSeconds` (one day).
pub const MAX_GC_INTERVAL_SECONDS: u32 = 86_400;
/// Default of `nodeCIDRMaskSizeIPv4`.
pub const DEFAULT_NODE_CIDR_MASK_SIZE_IPV4: u8 = 24;
/// Accepted range of `nodeCIDRMaskSizeIPv4`.
pub const NODE_CIDR_MASK_SIZE_IPV4_RANGE: (u8, u8) = (16, 30);
/// Default of `nodeCIDRMaskSizeIPv6`.
pub const DEFAULT_NODE_CIDR_MASK_SIZE_IPV6: u8 = 64;
/// Accepted range of `nodeCIDRMaskSizeIPv6`.
pub const NODE_CIDR_MASK_SIZE_IPV6_RANGE: (u8, u8) = (64, 126);

// ---------------------------------------------------------------------------
// Feature gates
// ---------------------------------------------------------------------------

/// Name of the gate turning on secondary networks (OVS bridges, secondary
/// interfaces of Pods). Only the agent acts on it.
pub const SECONDARY_NETWORK: &str = "SecondaryNetwork";
/// Name of the gate turning on Spur's IPPool address management. Both the
/// agent and the controller act on it; set it the same way in both files.
pub const SPUR_IPAM: &str = "SpurIPAM";

/// One known feature gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureGate {
    /// The name users write under `featureGates`.
    pub name: &'static str,
    /// Whether the feature is on when the file does not mention it.
    pub default: bool,
    /// What the gate turns on.
    pub description: &'static str,
}

/// Every gate Spur knows. Both files accept every gate here (a gate that a
/// component does not act on is accepted and ignored, so one `featureGates`
/// block can be copied into both files); any other name is an error.
pub const KNOWN_FEATURE_GATES: &[FeatureGate] = &[
    FeatureGate {
        name: SECONDARY_NETWORK,
        default: true,
        description: "secondary networks on OVS bridges (agent)",
    },
    FeatureGate {
        name: SPUR_IPAM,
        default: true,
        description: "IPPool address management (agent and controller)",
    },
];

/// The `featureGates` map of a configuration file: the gates the file sets
/// explicitly; every other known gate keeps its default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct FeatureGates(BTreeMap<String, bool>);

impl FeatureGates {
    /// All gates at their defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The known gate called `name`, if any.
    pub fn lookup(name: &str) -> Option<&'static FeatureGate> {
        KNOWN_FEATURE_GATES.iter().find(|g| g.name == name)
    }

    /// Whether the gate `name` is on: its explicit setting, else its
    /// default. An unknown name is never enabled.
    pub fn is_enabled(&self, name: &str) -> bool {
        match Self::lookup(name) {
            Some(gate) => self.0.get(name).copied().unwrap_or(gate.default),
            None => false,
        }
    }

    /// Sets a known gate explicitly. Returns false (and changes nothing)
    /// when `name` is not a known gate.
    pub fn set(&mut self, name: &str, enabled: bool) -> bool {
        match Self::lookup(name) {
            Some(gate) => {
                self.0.insert(gate.name.to_string(), enabled);
                true
            }
            None => false,
        }
    }

    /// The gates set explicitly, by name.
    pub fn explicit(&self) -> &BTreeMap<String, bool> {
        &self.0
    }

    fn from_raw(file: &Subject, raw: Option<BTreeMap<String, bool>>) -> Result<Self, Invalid> {
        let gates = FeatureGates(raw.unwrap_or_default());
        gates.validate(file)?;
        Ok(gates)
    }

    /// Checks that every gate set is a known one, naming `file` in the
    /// error.
    pub fn validate(&self, file: &Subject) -> Result<(), Invalid> {
        for (name, enabled) in &self.0 {
            if Self::lookup(name).is_none() {
                let known: Vec<&str> = KNOWN_FEATURE_GATES.iter().map(|g| g.name).collect();
                let hint = known
                    .iter()
                    .find(|k| edit_distance(&k.to_lowercase(), &name.to_lowercase()) <= 2)
                    .map(|k| format!(" (did you mean \"{k}\"?)"))
                    .unwrap_or_default();
                return Err(file.error(
                    Kind::Unsupported,
                    format!("featureGates.{name}"),
                    Some(enabled.to_string()),
                    format!(
                        "unknown feature gate \"{name}\"{hint}; known gates are {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Agent
// ---------------------------------------------------------------------------

/// The validated contents of `spur-agent.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// `featureGates`.
    pub feature_gates: FeatureGates,
    /// `cniSocket`: absolute path of the Unix socket the agent serves the
    /// CNI plugin on (default [`DEFAULT_CNI_SOCKET`]).
    pub cni_socket: String,
    /// `ovsRunDir`: absolute path of the directory holding Open vSwitch's
    /// sockets (`db.sock`) (default [`DEFAULT_OVS_RUN_DIR`]).
    pub ovs_run_dir: String,
    /// `apiTimeoutSeconds`: timeout of one Kubernetes API request, 1-300
    /// (default [`DEFAULT_API_TIMEOUT_SECONDS`]).
    pub api_timeout_seconds: u32,
    /// `secondaryNetwork`.
    pub secondary_network: SecondaryNetworkConfig,
}

/// `secondaryNetwork` of `spur-agent.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryNetworkConfig {
    /// `ovsBridges`: the OVS bridges the agent creates on the node.
    pub ovs_bridges: Vec<OvsBridgeConfig>,
}

/// One entry of `secondaryNetwork.ovsBridges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OvsBridgeConfig {
    /// `bridgeName`: a Linux interface name, unique on the node.
    pub bridge_name: String,
    /// `physicalInterfaces`: 0-8 uplinks of the bridge. An interface serves
    /// one bridge only.
    pub physical_interfaces: Vec<String>,
    /// `enableMulticastSnooping` (default false).
    pub enable_multicast_snooping: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            feature_gates: FeatureGates::default(),
            cni_socket: DEFAULT_CNI_SOCKET.to_string(),
            ovs_run_dir: DEFAULT_OVS_RUN_DIR.to_string(),
            api_timeout_seconds: DEFAULT_API_TIMEOUT_SECONDS,
            secondary_network: SecondaryNetworkConfig::default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAgent {
    feature_gates: Option<BTreeMap<String, bool>>,
    cni_socket: Option<String>,
    ovs_run_dir: Option<String>,
    api_timeout_seconds: Option<i64>,
    secondary_network: Option<RawSecondaryNetwork>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSecondaryNetwork {
    ovs_bridges: Option<Vec<RawOvsBridge>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOvsBridge {
    bridge_name: Option<String>,
    physical_interfaces: Option<Vec<String>>,
    enable_multicast_snooping: Option<bool>,
}

impl AgentConfig {
    /// Parses and validates `spur-agent.conf`. Empty text gives the
    /// defaults.
    pub fn from_yaml(text: &str) -> Result<AgentConfig, Invalid> {
        let file = Subject::named(AGENT_CONF_KEY);
        let raw: RawAgent = decode(&file, text)?;
        let feature_gates = FeatureGates::from_raw(&file, raw.feature_gates)?;
        let cni_socket = absolute_path(&file, "cniSocket", raw.cni_socket, DEFAULT_CNI_SOCKET)?;
        let ovs_run_dir = absolute_path(&file, "ovsRunDir", raw.ovs_run_dir, DEFAULT_OVS_RUN_DIR)?;
        let api_timeout_seconds = in_range(
            &file,
            "apiTimeoutSeconds",
            raw.api_timeout_seconds,
            DEFAULT_API_TIMEOUT_SECONDS,
            1,
            MAX_API_TIMEOUT_SECONDS,
        )?;
        let raw_bridges = raw
            .secondary_network
            .unwrap_or_default()
            .ovs_bridges
            .unwrap_or_default();
        let mut ovs_bridges: Vec<OvsBridgeConfig> = Vec::with_capacity(raw_bridges.len());
        for (i, b) in raw_bridges.into_iter().enumerate() {
            let at = format!("secondaryNetwork.ovsBridges[{i}]");
            let bridge_name = b
                .bridge_name
                .ok_or_else(|| file.missing(format!("{at}.bridgeName")))?;
            ovs_bridges.push(OvsBridgeConfig {
                bridge_name,
                physical_interfaces: b.physical_interfaces.unwrap_or_default(),
                enable_multicast_snooping: b.enable_multicast_snooping.unwrap_or(false),
            });
        }
        let config = AgentConfig {
            feature_gates,
            cni_socket,
            ovs_run_dir,
            api_timeout_seconds,
            secondary_network: SecondaryNetworkConfig { ovs_bridges },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that span values: bridge names valid and unique,
    /// at most [`MAX_UPLINKS_PER_BRIDGE`] valid uplinks per bridge, no
    /// uplink listed twice or serving two bridges, plus the ranges of the
    /// scalar settings. [`AgentConfig::from_yaml`] calls it; call it on a
    /// configuration built in code.
    pub fn validate(&self) -> Result<(), Invalid> {
        let file = Subject::named(AGENT_CONF_KEY);
        self.feature_gates.validate(&file)?;
        absolute_path(&file, "cniSocket", Some(self.cni_socket.clone()), "")?;
        absolute_path(&file, "ovsRunDir", Some(self.ovs_run_dir.clone()), "")?;
        in_range(
            &file,
            "apiTimeoutSeconds",
            Some(i64::from(self.api_timeout_seconds)),
            0u32,
            1,
            MAX_API_TIMEOUT_SECONDS,
        )?;

        let bridges = &self.secondary_network.ovs_bridges;
        // bridge name -> index of the first bridge with it
        let mut bridge_at: BTreeMap<&str, usize> = BTreeMap::new();
        // uplink -> (bridge index, position in its list)
        let mut uplink_at: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (i, b) in bridges.iter().enumerate() {
            let at = format!("secondaryNetwork.ovsBridges[{i}]");
            let name = b.bridge_name.as_str();
            if let Some(problem) = ifname_problem(name) {
                return Err(file.invalid(
                    format!("{at}.bridgeName"),
                    quoted(name),
                    format!("is not a valid bridge name: {problem}"),
                ));
            }
            if let Some(&first) = bridge_at.get(name) {
                return Err(file.conflict(
                    format!("{at}.bridgeName"),
                    quoted(name),
                    format!(
                        "bridge name is already used by secondaryNetwork.ovsBridges[{first}]; \
                         bridge names must be unique on the node"
                    ),
                ));
            }
            bridge_at.insert(name, i);
            if b.physical_interfaces.len() > MAX_UPLINKS_PER_BRIDGE {
                return Err(file.invalid(
                    format!("{at}.physicalInterfaces"),
                    format!("[{}]", b.physical_interfaces.join(", ")),
                    format!(
                        "bridge {name} has {} physical interfaces; a bridge can have at most \
                         {MAX_UPLINKS_PER_BRIDGE}",
                        b.physical_interfaces.len()
                    ),
                ));
            }
            for (j, uplink) in b.physical_interfaces.iter().enumerate() {
                let key = format!("{at}.physicalInterfaces[{j}]");
                if let Some(problem) = ifname_problem(uplink) {
                    return Err(file.invalid(
                        key,
                        quoted(uplink),
                        format!("is not a valid physical interface name: {problem}"),
                    ));
                }
                if let Some(&(bi, bj)) = uplink_at.get(uplink.as_str()) {
                    let reason = if bi == i {
                        format!("interface {uplink} is listed twice in bridge {name} (also at physicalInterfaces[{bj}])")
                    } else {
                        format!(
                            "interface {uplink} already serves bridge {} \
                             (secondaryNetwork.ovsBridges[{bi}].physicalInterfaces[{bj}]) and cannot \
                             also serve bridge {name}; an interface serves one bridge only",
                            bridges[bi].bridge_name
                        )
                    };
                    return Err(file.conflict(key, quoted(uplink), reason));
                }
                uplink_at.insert(uplink, (i, j));
            }
        }
        // An uplink cannot be one of the bridges the agent creates.
        for (i, b) in bridges.iter().enumerate() {
            for (j, uplink) in b.physical_interfaces.iter().enumerate() {
                if let Some(&k) = bridge_at.get(uplink.as_str()) {
                    return Err(file.conflict(
                        format!("secondaryNetwork.ovsBridges[{i}].physicalInterfaces[{j}]"),
                        quoted(uplink),
                        format!(
                            "{uplink} is the name of bridge secondaryNetwork.ovsBridges[{k}]; \
                             a bridge cannot be an uplink of a bridge"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the feature gate `name` is on in this file.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.feature_gates.is_enabled(name)
    }

    /// Renders the configuration as `spur-agent.conf` YAML, every setting
    /// written out; [`AgentConfig::from_yaml`] reads it back unchanged.
    pub fn to_yaml(&self) -> String {
        render(self)
    }
}

// ---------------------------------------------------------------------------
// Controller
// ---------------------------------------------------------------------------

/// The validated contents of `spur-controller.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerConfig {
    /// `featureGates`.
    pub feature_gates: FeatureGates,
    /// `gcIntervalSeconds`: period of the address garbage collector,
    /// 1-86400 (default [`DEFAULT_GC_INTERVAL_SECONDS`]).
    pub gc_interval_seconds: u32,
    /// `nodeIPAM`.
    #[serde(rename = "nodeIPAM")]
    pub node_ipam: NodeIpamConfig,
}

/// `nodeIPAM` of `spur-controller.conf`: carving per-Node Pod CIDRs out of
/// the cluster CIDRs (see [`crate::nodeipam`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeIpamConfig {
    /// `enableNodeIPAM` (default false).
    #[serde(rename = "enableNodeIPAM")]
    pub enable_node_ipam: bool,
    /// `clusterCIDRs`: at most one CIDR per IP family, in the order written
    /// (the order of a Node's `podCIDRs`).
    #[serde(rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<IpNet>,
    /// `serviceCIDR`: IPv4 Service range, excluded from node CIDRs.
    #[serde(rename = "serviceCIDR", skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<Ipv4Net>,
    /// `serviceCIDRv6`: IPv6 Service range, excluded from node CIDRs.
    #[serde(rename = "serviceCIDRv6", skip_serializing_if = "Option::is_none")]
    pub service_cidr_v6: Option<Ipv6Net>,
    /// `nodeCIDRMaskSizeIPv4`: prefix length of IPv4 node CIDRs, 16-30.
    #[serde(rename = "nodeCIDRMaskSizeIPv4")]
    pub node_cidr_mask_size_ipv4: u8,
    /// `nodeCIDRMaskSizeIPv6`: prefix length of IPv6 node CIDRs, 64-126.
    #[serde(rename = "nodeCIDRMaskSizeIPv6")]
    pub node_cidr_mask_size_ipv6: u8,
}

impl Default for NodeIpamConfig {
    fn default() -> Self {
        NodeIpamConfig {
            enable_node_ipam: false,
            cluster_cidrs: Vec::new(),
            service_cidr: None,
            service_cidr_v6: None,
            node_cidr_mask_size_ipv4: DEFAULT_NODE_CIDR_MASK_SIZE_IPV4,
            node_cidr_mask_size_ipv6: DEFAULT_NODE_CIDR_MASK_SIZE_IPV6,
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            feature_gates: FeatureGates::default(),
            gc_interval_seconds: DEFAULT_GC_INTERVAL_SECONDS,
            node_ipam: NodeIpamConfig::default(),
        }
    }
}

impl NodeIpamConfig {
    /// The IPv4 cluster CIDR, if one is configured.
    pub fn cluster_cidr_v4(&self) -> Option<Ipv4Net> {
        self.cluster_cidrs.iter().find_map(|c| match c {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
    }

    /// The IPv6 cluster CIDR, if one is configured.
    pub fn cluster_cidr_v6(&self) -> Option<Ipv6Net> {
        self.cluster_cidrs.iter().find_map(|c| match c {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        })
    }

    /// Checks the NodeIPAM rules, naming keys under `nodeIPAM.` of `file`.
    ///
    /// All values are checked whether or not NodeIPAM is enabled; only the
    /// requirement of a cluster CIDR depends on `enableNodeIPAM`.
    pub fn validate(&self, file: &Subject) -> Result<(), Invalid> {
        let (v4_min, v4_max) = NODE_CIDR_MASK_SIZE_IPV4_RANGE;
        let (v6_min, v6_max) = NODE_CIDR_MASK_SIZE_IPV6_RANGE;
        in_range(
            file,
            "nodeIPAM.nodeCIDRMaskSizeIPv4",
            Some(i64::from(self.node_cidr_mask_size_ipv4)),
            0u8,
            u32::from(v4_min),
            u32::from(v4_max),
        )?;
        in_range(
            file,
            "nodeIPAM.nodeCIDRMaskSizeIPv6",
            Some(i64::from(self.node_cidr_mask_size_ipv6)),
            0u8,
            u32::from(v6_min),
            u32::from(v6_max),
        )?;
        let mut first_of_family: [Option<usize>; 2] = [None, None];
        for (i, cidr) in self.cluster_cidrs.iter().enumerate() {
            let key = format!("nodeIPAM.clusterCIDRs[{i}]");
            if cidr.addr() != cidr.network() {
                return Err(file.invalid(
                    key,
                    cidr,
                    format!("has host bits set; the network is {}", cidr.trunc()),
                ));
            }
            let (fam, family, mask, mask_key) = match cidr {
                IpNet::V4(_) => (
                    0,
                    "IPv4",
                    self.node_cidr_mask_size_ipv4,
                    "nodeIPAM.nodeCIDRMaskSizeIPv4",
                ),
                IpNet::V6(_) => (
                    1,
                    "IPv6",
                    self.node_cidr_mask_size_ipv6,
                    "nodeIPAM.nodeCIDRMaskSizeIPv6",
                ),
            };
            if let Some(first) = first_of_family[fam] {
                return Err(file.conflict(
                    key,
                    cidr,
                    format!(
                        "is a second {family} cluster CIDR (nodeIPAM.clusterCIDRs[{first}] is {}); \
                         at most one CIDR per IP family is allowed",
                        self.cluster_cidrs[first]
                    ),
                ));
            }
            first_of_family[fam] = Some(i);
            if mask < cidr.prefix_len() {
                return Err(file.invalid(
                    mask_key,
                    mask,
                    format!(
                        "is shorter than the prefix length of cluster CIDR {cidr} ({key}); node \
                         CIDRs must fit inside it, so the mask size must be at least {}",
                        cidr.prefix_len()
                    ),
                ));
            }
        }
        if let Some(svc) = self.service_cidr {
            check_service(
                file,
                "nodeIPAM.serviceCIDR",
                IpNet::V4(svc),
                &self.cluster_cidrs,
            )?;
        }
        if let Some(svc) = self.service_cidr_v6 {
            check_service(
                file,
                "nodeIPAM.serviceCIDRv6",
                IpNet::V6(svc),
                &self.cluster_cidrs,
            )?;
        }
        if self.enable_node_ipam && self.cluster_cidrs.is_empty() {
            return Err(file.error(
                Kind::Missing,
                "nodeIPAM.clusterCIDRs",
                None,
                "is required when nodeIPAM.enableNodeIPAM is true: NodeIPAM needs a cluster \
                 CIDR to carve node CIDRs from",
            ));
        }
        Ok(())
    }
}

fn check_service(file: &Subject, key: &str, svc: IpNet, clusters: &[IpNet]) -> Result<(), Invalid> {
    if svc.addr() != svc.network() {
        return Err(file.invalid(
            key,
            svc,
            format!("has host bits set; the network is {}", svc.trunc()),
        ));
    }
    for (i, cluster) in clusters.iter().enumerate() {
        if svc.contains(cluster) {
            return Err(file.conflict(
                key,
                svc,
                format!(
                    "covers all of cluster CIDR {cluster} (nodeIPAM.clusterCIDRs[{i}]), which \
                     would leave no node CIDR to allocate"
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawController {
    feature_gates: Option<BTreeMap<String, bool>>,
    gc_interval_seconds: Option<i64>,
    #[serde(rename = "nodeIPAM")]
    node_ipam: Option<RawNodeIpam>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNodeIpam {
    #[serde(rename = "enableNodeIPAM")]
    enable_node_ipam: Option<bool>,
    #[serde(rename = "clusterCIDRs")]
    cluster_cidrs: Option<Vec<String>>,
    #[serde(rename = "serviceCIDR")]
    service_cidr: Option<String>,
    #[serde(rename = "serviceCIDRv6")]
    service_cidr_v6: Option<String>,
    #[serde(rename = "nodeCIDRMaskSizeIPv4")]
    node_cidr_mask_size_ipv4: Option<i64>,
    #[serde(rename = "nodeCIDRMaskSizeIPv6")]
    node_cidr_mask_size_ipv6: Option<i64>,
}

impl ControllerConfig {
    /// Parses and validates `spur-controller.conf`. Empty text gives the
    /// defaults.
    pub fn from_yaml(text: &str) -> Result<ControllerConfig, Invalid> {
        let file = Subject::named(CONTROLLER_CONF_KEY);
        let raw: RawController = decode(&file, text)?;
        let feature_gates = FeatureGates::from_raw(&file, raw.feature_gates)?;
        let gc_interval_seconds = in_range(
            &file,
            "gcIntervalSeconds",
            raw.gc_interval_seconds,
            DEFAULT_GC_INTERVAL_SECONDS,
            1,
            MAX_GC_INTERVAL_SECONDS,
        )?;
        let n = raw.node_ipam.unwrap_or_default();
        let mut cluster_cidrs = Vec::new();
        for (i, text) in n.cluster_cidrs.unwrap_or_default().iter().enumerate() {
            cluster_cidrs.push(parse_cidr(
                &file,
                &format!("nodeIPAM.clusterCIDRs[{i}]"),
                text,
            )?);
        }
        let service_cidr = match n.service_cidr {
            None => None,
            Some(text) => match parse_cidr(&file, "nodeIPAM.serviceCIDR", &text)? {
                IpNet::V4(net) => Some(net),
                IpNet::V6(_) => {
                    return Err(file.invalid(
                        "nodeIPAM.serviceCIDR",
                        text,
                        "is an IPv6 CIDR, but serviceCIDR is the IPv4 Service range; put the \
                         IPv6 Service range in nodeIPAM.serviceCIDRv6",
                    ))
                }
            },
        };
        let service_cidr_v6 =
            match n.service_cidr_v6 {
                None => None,
                Some(text) => match parse_cidr(&file, "nodeIPAM.serviceCIDRv6", &text)? {
                    IpNet::V6(net) => Some(net),
                    IpNet::V4(_) => return Err(file.invalid(
                        "nodeIPAM.serviceCIDRv6",
                        text,
                        "is an IPv4 CIDR, but serviceCIDRv6 is the IPv6 Service range; put the \
                         IPv4 Service range in nodeIPAM.serviceCIDR",
                    )),
                },
            };
        let (v4_min, v4_max) = NODE_CIDR_MASK_SIZE_IPV4_RANGE;
        let (v6_min, v6_max) = NODE_CIDR_MASK_SIZE_IPV6_RANGE;
        let node_cidr_mask_size_ipv4 = in_range(
            &file,
            "nodeIPAM.nodeCIDRMaskSizeIPv4",
            n.node_cidr_mask_size_ipv4,
            DEFAULT_NODE_CIDR_MASK_SIZE_IPV4,
            u32::from(v4_min),
            u32::from(v4_max),
        )?;
        let node_cidr_mask_size_ipv6 = in_range(
            &file,
            "nodeIPAM.nodeCIDRMaskSizeIPv6",
            n.node_cidr_mask_size_ipv6,
            DEFAULT_NODE_CIDR_MASK_SIZE_IPV6,
            u32::from(v6_min),
            u32::from(v6_max),
        )?;
        let node_ipam = NodeIpamConfig {
            enable_node_ipam: n.enable_node_ipam.unwrap_or(false),
            cluster_cidrs,
            service_cidr,
            service_cidr_v6,
            node_cidr_mask_size_ipv4,
            node_cidr_mask_size_ipv6,
        };
        let config = ControllerConfig {
            feature_gates,
            gc_interval_seconds,
            node_ipam,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule of the file (see [`NodeIpamConfig::validate`]).
    /// [`ControllerConfig::from_yaml`] calls it; call it on a configuration
    /// built in code.
    pub fn validate(&self) -> Result<(), Invalid> {
        let file = Subject::named(CONTROLLER_CONF_KEY);
        self.feature_gates.validate(&file)?;
        in_range(
            &file,
            "gcIntervalSeconds",
            Some(i64::from(self.gc_interval_seconds)),
            0u32,
            1,
            MAX_GC_INTERVAL_SECONDS,
        )?;
        self.node_ipam.validate(&file)
    }

    /// Whether the feature gate `name` is on in this file.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.feature_gates.is_enabled(name)
    }

    /// Renders the configuration as `spur-controller.conf` YAML, every
    /// setting written out; [`ControllerConfig::from_yaml`] reads it back
    /// unchanged.
    pub fn to_yaml(&self) -> String {
        render(self)
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Decodes YAML into a raw struct; empty text (or only comments, or `null`)
/// gives the raw defaults.
fn decode<T: for<'de> Deserialize<'de> + Default>(
    file: &Subject,
    text: &str,
) -> Result<T, Invalid> {
    match serde_yaml::from_str::<Option<T>>(text) {
        Ok(v) => Ok(v.unwrap_or_default()),
        Err(err) => {
            // serde_yaml reports the empty document as an error for some
            // targets; treat it as "all defaults".
            if is_blank_yaml(text) {
                return Ok(T::default());
            }
            Err(decode_error(file, &err))
        }
    }
}

fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// Turns a serde_yaml error into an [`Invalid`], moving the key path that
/// serde_yaml puts in front of its message into [`Invalid::key`].
fn decode_error(file: &Subject, err: &serde_yaml::Error) -> Invalid {
    let e = file.decode("", err);
    let msg = err.to_string();
    if e.kind == Kind::Unsupported {
        return unknown_key(file, e, &msg);
    }
    if e.kind != Kind::Decode {
        return e;
    }
    if let Some((path, rest)) = msg.split_once(": ") {
        let is_path = !path.is_empty()
            && !path.contains(char::is_whitespace)
            && !path.contains('`')
            && !path.contains('"');
        if is_path {
            return file.error(
                Kind::Decode,
                path,
                None,
                format!("cannot be decoded: {}", plain_serde_message(rest)),
            );
        }
    }
    file.error(
        Kind::Decode,
        "",
        None,
        format!("cannot be decoded: {}", plain_serde_message(&msg)),
    )
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b` at line
/// L column C" into a reason naming the keys allowed there, with a
/// suggestion when the key looks like a misspelling of one of them.
fn unknown_key(file: &Subject, e: Invalid, msg: &str) -> Invalid {
    let Some((_, rest)) = msg.split_once("unknown field `") else {
        return e;
    };
    let Some((key, rest)) = rest.split_once('`') else {
        return e;
    };
    let rest = rest.trim_start_matches(',').trim();
    let (expected, position) = match rest.rfind(" at line ") {
        Some(i) => (&rest[..i], Some(rest[i + 1..].trim())),
        None => (rest, None),
    };
    let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let mut reason = String::from("is not a known key");
    if let Some(best) = allowed
        .iter()
        .map(|a| (edit_distance(&a.to_lowercase(), &key.to_lowercase()), *a))
        .filter(|(d, _)| *d <= 2)
        .min()
    {
        reason.push_str(&format!(" (did you mean `{}`?)", best.1));
    }
    if !allowed.is_empty() {
        let list: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
        reason.push_str(&format!("; the keys allowed here are {}", list.join(", ")));
    }
    if let Some(position) = position {
        reason.push_str(&format!(" ({position})"));
    }
    file.error(Kind::Unsupported, e.key, None, reason)
}

/// `"value"` for messages, so empty names and spaces are visible.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn parse_cidr(file: &Subject, key: &str, text: &str) -> Result<IpNet, Invalid> {
    text.trim().parse::<IpNet>().map_err(|_| {
        file.invalid(
            key,
            quoted(text),
            "is not a CIDR; expected an address and prefix length such as 172.100.0.0/16 or \
             fd00:172:100::/60",
        )
    })
}

fn absolute_path(
    file: &Subject,
    key: &str,
    value: Option<String>,
    default: &str,
) -> Result<String, Invalid> {
    let Some(path) = value else {
        return Ok(default.to_string());
    };
    if !path.starts_with('/') {
        return Err(file.invalid(
            key,
            quoted(&path),
            "must be an absolute path (starting with '/')",
        ));
    }
    if path.contains('\0') {
        return Err(file.invalid(key, quoted(&path), "must not contain a NUL character"));
    }
    Ok(path)
}

fn in_range<T>(
    file: &Subject,
    key: &str,
    value: Option<i64>,
    default: T,
    min: u32,
    max: u32,
) -> Result<T, Invalid>
where
    T: TryFrom<i64> + fmt::Display,
{
    let Some(v) = value else {
        return Ok(default);
    };
    if v < i64::from(min) || v > i64::from(max) {
        return Err(file.invalid(key, v, format!("must be between {min} and {max}")));
    }
    T::try_from(v).map_err(|_| file.invalid(key, v, format!("must be between {min} and {max}")))
}

fn render<T: Serialize>(value: &T) -> String {
    match serde_yaml::to_string(value) {
        Ok(text) => text,
        // Cannot happen for these plain types; render something that
        // from_yaml refuses rather than text that reads as the defaults.
        Err(err) => format!("renderError: {:?}\n", err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agent_err(text: &str) -> Invalid {
        match AgentConfig::from_yaml(text) {
            Ok(c) => panic!("accepted {text:?} as {c:?}"),
            Err(e) => e,
        }
    }

    fn controller_err(text: &str) -> Invalid {
        match ControllerConfig::from_yaml(text) {
            Ok(c) => panic!("accepted {text:?} as {c:?}"),
            Err(e) => e,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    // ----- agent ---------------------------------------------------------

    #[test]
    fn empty_agent_conf_is_all_defaults() {
        for text in ["", "\n", "# nothing\n", "---\n", "null", "~"] {
            let c = AgentConfig::from_yaml(text).unwrap();
            assert_eq!(c, AgentConfig::default(), "{text:?}");
        }
        let c = AgentConfig::default();
        assert_eq!(c.cni_socket, "/var/run/spur/cni.sock");
        assert_eq!(c.ovs_run_dir, "/var/run/openvswitch");
        assert_eq!(c.api_timeout_seconds, 10);
        assert!(c.secondary_network.ovs_bridges.is_empty());
        assert!(c.is_enabled(SECONDARY_NETWORK));
        assert!(c.is_enabled(SPUR_IPAM));
        assert!(!c.is_enabled("NoSuchGate"));
    }

    #[test]
    fn reference_agent_example_parses() {
        let c = AgentConfig::from_yaml(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-secondary          # required\n    physicalInterfaces: [eth1, eth2]\n    enableMulticastSnooping: false\n",
        )
        .unwrap();
        assert_eq!(
            c.secondary_network.ovs_bridges,
            vec![OvsBridgeConfig {
                bridge_name: "br-secondary".into(),
                physical_interfaces: vec!["eth1".into(), "eth2".into()],
                enable_multicast_snooping: false,
            }]
        );
    }

    #[test]
    fn agent_settings_and_several_bridges() {
        let c = AgentConfig::from_yaml(
            "featureGates:\n  SpurIPAM: false\ncniSocket: /run/spur/cni.sock\novsRunDir: /run/openvswitch\napiTimeoutSeconds: 300\nsecondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n    physicalInterfaces: [eth1, eth2, eth3, eth4, eth5, eth6, eth7, eth8]\n    enableMulticastSnooping: true\n  - bridgeName: br-b\n  - bridgeName: br-c\n    physicalInterfaces: []\n",
        )
        .unwrap();
        assert!(!c.is_enabled(SPUR_IPAM));
        assert!(c.is_enabled(SECONDARY_NETWORK));
        assert_eq!(c.cni_socket, "/run/spur/cni.sock");
        assert_eq!(c.ovs_run_dir, "/run/openvswitch");
        assert_eq!(c.api_timeout_seconds, 300);
        let b = &c.secondary_network.ovs_bridges;
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].physical_interfaces.len(), 8);
        assert!(b[0].enable_multicast_snooping);
        assert!(b[1].physical_interfaces.is_empty());
        assert!(!b[1].enable_multicast_snooping);
    }

    #[test]
    fn bridge_name_is_required_and_valid() {
        let e = agent_err("secondaryNetwork:\n  ovsBridges:\n  - physicalInterfaces: [eth1]\n");
        assert_eq!(e.kind, Kind::Missing);
        assert_eq!(e.key, "secondaryNetwork.ovsBridges[0].bridgeName");
        assert_eq!(e.object, "spur-agent.conf");

        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-this-is-far-too-long\n",
        );
        assert_eq!(e.kind, Kind::Invalid);
        assert_eq!(e.key, "secondaryNetwork.ovsBridges[0].bridgeName");
        assert_eq!(e.value.as_deref(), Some("\"br-this-is-far-too-long\""));

        let e = agent_err("secondaryNetwork:\n  ovsBridges:\n  - bridgeName: \"\"\n");
        assert_eq!(e.kind, Kind::Invalid);
    }

    #[test]
    fn duplicate_bridge_is_a_conflict() {
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n  - bridgeName: br-b\n  - bridgeName: br-a\n",
        );
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(e.key, "secondaryNetwork.ovsBridges[2].bridgeName");
        assert!(e.reason.contains("ovsBridges[0]"), "{e}");
        insta::assert_snapshot!("duplicate_bridge", e.to_string());
    }

    #[test]
    fn at_most_eight_uplinks() {
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n    physicalInterfaces: [eth1, eth2, eth3, eth4, eth5, eth6, eth7, eth8, eth9]\n",
        );
        assert_eq!(e.kind, Kind::Invalid);
        assert_eq!(e.key, "secondaryNetwork.ovsBridges[0].physicalInterfaces");
        insta::assert_snapshot!("nine_uplinks", e.to_string());
    }

    #[test]
    fn uplink_names_are_checked() {
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n  - bridgeName: br-b\n    physicalInterfaces: [eth1, \"eth:2\"]\n",
        );
        assert_eq!(e.kind, Kind::Invalid);
        assert_eq!(
            e.key,
            "secondaryNetwork.ovsBridges[1].physicalInterfaces[1]"
        );
        assert_eq!(e.value.as_deref(), Some("\"eth:2\""));
    }

    #[test]
    fn uplink_listed_twice_in_a_bridge() {
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n    physicalInterfaces: [eth1, eth2, eth1]\n",
        );
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(
            e.key,
            "secondaryNetwork.ovsBridges[0].physicalInterfaces[2]"
        );
        assert!(e.reason.contains("twice"), "{e}");
    }

    #[test]
    fn uplink_serves_one_bridge_only() {
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n    physicalInterfaces: [eth1, eth2]\n  - bridgeName: br-b\n    physicalInterfaces: [eth3, eth2]\n",
        );
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(
            e.key,
            "secondaryNetwork.ovsBridges[1].physicalInterfaces[1]"
        );
        assert!(
            e.reason.contains("br-a") && e.reason.contains("br-b"),
            "{e}"
        );
        insta::assert_snapshot!("uplink_in_two_bridges", e.to_string());
    }

    #[test]
    fn a_bridge_is_not_an_uplink() {
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n    physicalInterfaces: [br-b]\n  - bridgeName: br-b\n",
        );
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(
            e.key,
            "secondaryNetwork.ovsBridges[0].physicalInterfaces[0]"
        );
    }

    #[test]
    fn agent_scalar_settings_are_checked() {
        let e = agent_err("cniSocket: run/spur.sock\n");
        assert_eq!((e.kind, e.key.as_str()), (Kind::Invalid, "cniSocket"));
        let e = agent_err("ovsRunDir: \"\"\n");
        assert_eq!((e.kind, e.key.as_str()), (Kind::Invalid, "ovsRunDir"));
        for bad in ["0", "301", "-1", "99999999999"] {
            let e = agent_err(&format!("apiTimeoutSeconds: {bad}\n"));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Invalid, "apiTimeoutSeconds")
            );
            assert_eq!(e.value.as_deref(), Some(bad));
        }
        assert_eq!(
            AgentConfig::from_yaml("apiTimeoutSeconds: 1")
                .unwrap()
                .api_timeout_seconds,
            1
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let e = agent_err("enableBridgingMode: true\n");
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Unsupported, "enableBridgingMode")
        );
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n  - bridgeName: br-b\n    physicalInterface: [eth1]\n",
        );
        assert_eq!(e.kind, Kind::Unsupported);
        assert_eq!(e.key, "secondaryNetwork.ovsBridges[1].physicalInterface");
        assert_eq!(e.object, "spur-agent.conf");
        insta::assert_snapshot!("agent_unknown_key", e.to_string());

        let e = controller_err("nodeIPAM:\n  clusterCIDR: 10.0.0.0/16\n");
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Unsupported, "nodeIPAM.clusterCIDR")
        );
        assert_eq!(e.object, "spur-controller.conf");
        insta::assert_snapshot!("controller_unknown_key", e.to_string());
    }

    #[test]
    fn wrong_shapes_are_decode_errors_with_a_path() {
        let e = agent_err(
            "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-a\n    physicalInterfaces: eth1\n",
        );
        assert_eq!(e.kind, Kind::Decode);
        assert_eq!(e.key, "secondaryNetwork.ovsBridges[0].physicalInterfaces");
        let e = agent_err("featureGates:\n  SpurIPAM: maybe\n");
        assert_eq!(e.kind, Kind::Decode);
        assert_eq!(e.key, "featureGates.SpurIPAM");
        let e = agent_err("- a\n- b\n");
        assert_eq!(e.kind, Kind::Decode);
        assert!(!e.reason.contains("Raw"), "{e}");
        let e = agent_err("secondaryNetwork: [\n");
        assert_eq!(e.kind, Kind::Decode);
        let e = controller_err("nodeIPAM:\n  nodeCIDRMaskSizeIPv4: \"24\"\n");
        assert_eq!(e.kind, Kind::Decode);
        assert_eq!(e.key, "nodeIPAM.nodeCIDRMaskSizeIPv4");
    }

    #[test]
    fn feature_gates() {
        let e = agent_err("featureGates:\n  AntreaIPAM: true\n");
        assert_eq!(e.kind, Kind::Unsupported);
        assert_eq!(e.key, "featureGates.AntreaIPAM");
        insta::assert_snapshot!("unknown_feature_gate", e.to_string());
        let e = controller_err("featureGates:\n  Multicast: false\n");
        assert_eq!(e.key, "featureGates.Multicast");
        let e = controller_err("featureGates:\n  SpurIpam: false\n");
        assert!(e.reason.contains("did you mean \"SpurIPAM\""), "{e}");

        let c = ControllerConfig::from_yaml("featureGates:\n  SecondaryNetwork: false\n").unwrap();
        assert!(!c.is_enabled(SECONDARY_NETWORK));
        assert!(c.is_enabled(SPUR_IPAM));

        let mut g = FeatureGates::new();
        assert!(g.set(SPUR_IPAM, false));
        assert!(!g.set("Bogus", true));
        assert!(!g.is_enabled(SPUR_IPAM));
        assert_eq!(g.explicit().len(), 1);
        for gate in KNOWN_FEATURE_GATES {
            assert_eq!(FeatureGates::new().is_enabled(gate.name), gate.default);
        }
    }

    // ----- controller ----------------------------------------------------

    #[test]
    fn empty_controller_conf_is_all_defaults() {
        for text in ["", "# c\n", "null"] {
            assert_eq!(
                ControllerConfig::from_yaml(text).unwrap(),
                ControllerConfig::default()
            );
        }
        let c = ControllerConfig::default();
        assert_eq!(c.gc_interval_seconds, 60);
        assert!(!c.node_ipam.enable_node_ipam);
        assert_eq!(c.node_ipam.node_cidr_mask_size_ipv4, 24);
        assert_eq!(c.node_ipam.node_cidr_mask_size_ipv6, 64);
        assert!(c.is_enabled(SPUR_IPAM));
    }

    #[test]
    fn reference_controller_example_parses() {
        let c = ControllerConfig::from_yaml(
            "nodeIPAM:\n  enableNodeIPAM: true\n  clusterCIDRs: [172.100.0.0/20, \"fd00:172:100::/60\"]   # at most one per family\n  serviceCIDR: 10.96.0.0/16\n  serviceCIDRv6: fd00:10:96::/112\n  nodeCIDRMaskSizeIPv4: 24\n  nodeCIDRMaskSizeIPv6: 64\n",
        )
        .unwrap();
        let n = &c.node_ipam;
        assert!(n.enable_node_ipam);
        assert_eq!(
            n.cluster_cidrs,
            vec![net("172.100.0.0/20"), net("fd00:172:100::/60")]
        );
        assert_eq!(n.cluster_cidr_v4(), Some("172.100.0.0/20".parse().unwrap()));
        assert_eq!(
            n.cluster_cidr_v6(),
            Some("fd00:172:100::/60".parse().unwrap())
        );
        assert_eq!(n.service_cidr, Some("10.96.0.0/16".parse().unwrap()));
        assert_eq!(n.service_cidr_v6, Some("fd00:10:96::/112".parse().unwrap()));

        let c = ControllerConfig::from_yaml(
            "gcIntervalSeconds: 300\nnodeIPAM:\n  enableNodeIPAM: true\n  clusterCIDRs: [172.100.0.0/16]\n",
        )
        .unwrap();
        assert_eq!(c.gc_interval_seconds, 300);
        assert_eq!(c.node_ipam.cluster_cidr_v6(), None);
    }

    #[test]
    fn enabling_node_ipam_needs_a_cluster_cidr() {
        let e = controller_err("nodeIPAM:\n  enableNodeIPAM: true\n");
        assert_eq!(e.kind, Kind::Missing);
        assert_eq!(e.key, "nodeIPAM.clusterCIDRs");
        let e = controller_err("nodeIPAM:\n  enableNodeIPAM: true\n  clusterCIDRs: []\n");
        assert_eq!(e.kind, Kind::Missing);
        // Disabled NodeIPAM needs none.
        assert!(ControllerConfig::from_yaml("nodeIPAM:\n  enableNodeIPAM: false\n").is_ok());
    }

    #[test]
    fn at_most_one_cluster_cidr_per_family() {
        let e = controller_err("nodeIPAM:\n  clusterCIDRs: [172.100.0.0/20, 10.0.0.0/16]\n");
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(e.key, "nodeIPAM.clusterCIDRs[1]");
        assert!(e.reason.contains("172.100.0.0/20"), "{e}");
        insta::assert_snapshot!("two_cidrs_of_one_family", e.to_string());
        let e = controller_err(
            "nodeIPAM:\n  clusterCIDRs: [\"fd00::/48\", 10.0.0.0/16, \"fd01::/48\"]\n",
        );
        assert_eq!(e.key, "nodeIPAM.clusterCIDRs[2]");
    }

    #[test]
    fn cluster_cidrs_must_be_networks() {
        let e = controller_err("nodeIPAM:\n  clusterCIDRs: [172.100.0.0]\n");
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "nodeIPAM.clusterCIDRs[0]")
        );
        let e = controller_err("nodeIPAM:\n  clusterCIDRs: [172.100.1.0/16]\n");
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "nodeIPAM.clusterCIDRs[0]")
        );
        assert!(e.reason.contains("172.100.0.0/16"), "{e}");
    }

    #[test]
    fn mask_sizes() {
        for (key, bad) in [
            ("nodeCIDRMaskSizeIPv4", 15),
            ("nodeCIDRMaskSizeIPv4", 31),
            ("nodeCIDRMaskSizeIPv6", 63),
            ("nodeCIDRMaskSizeIPv6", 127),
        ] {
            let e = controller_err(&format!("nodeIPAM:\n  {key}: {bad}\n"));
            assert_eq!(e.kind, Kind::Invalid);
            assert_eq!(e.key, format!("nodeIPAM.{key}"));
            assert_eq!(e.value, Some(bad.to_string()));
        }
        let e = controller_err("nodeIPAM:\n  nodeCIDRMaskSizeIPv4: 8\n");
        insta::assert_snapshot!("bad_mask", e.to_string());
        for (key, ok) in [
            ("nodeCIDRMaskSizeIPv4", 16),
            ("nodeCIDRMaskSizeIPv4", 30),
            ("nodeCIDRMaskSizeIPv6", 64),
            ("nodeCIDRMaskSizeIPv6", 126),
        ] {
            assert!(ControllerConfig::from_yaml(&format!("nodeIPAM:\n  {key}: {ok}\n")).is_ok());
        }
    }

    #[test]
    fn mask_must_fit_in_the_cluster_cidr() {
        let e = controller_err(
            "nodeIPAM:\n  clusterCIDRs: [172.100.0.0/25]\n  nodeCIDRMaskSizeIPv4: 24\n",
        );
        assert_eq!(e.kind, Kind::Invalid);
        assert_eq!(e.key, "nodeIPAM.nodeCIDRMaskSizeIPv4");
        assert_eq!(e.value.as_deref(), Some("24"));
        insta::assert_snapshot!("mask_shorter_than_cluster_prefix", e.to_string());
        let e = controller_err("nodeIPAM:\n  clusterCIDRs: [\"fd00::/80\"]\n");
        assert_eq!(e.key, "nodeIPAM.nodeCIDRMaskSizeIPv6");
        // Equal is fine: one node.
        assert!(ControllerConfig::from_yaml(
            "nodeIPAM:\n  clusterCIDRs: [172.100.0.0/24]\n  nodeCIDRMaskSizeIPv4: 24\n"
        )
        .is_ok());
    }

    #[test]
    fn service_cidrs_have_a_family() {
        let e = controller_err("nodeIPAM:\n  serviceCIDR: fd00:10:96::/112\n");
        assert_eq!(e.kind, Kind::Invalid);
        assert_eq!(e.key, "nodeIPAM.serviceCIDR");
        assert_eq!(e.value.as_deref(), Some("fd00:10:96::/112"));
        insta::assert_snapshot!("wrong_family_service_cidr", e.to_string());
        let e = controller_err("nodeIPAM:\n  serviceCIDRv6: 10.96.0.0/16\n");
        assert_eq!(e.key, "nodeIPAM.serviceCIDRv6");
        let e = controller_err("nodeIPAM:\n  serviceCIDR: 10.96.0.1/16\n");
        assert_eq!(e.key, "nodeIPAM.serviceCIDR");
        let e = controller_err("nodeIPAM:\n  serviceCIDR: banana\n");
        assert_eq!(e.key, "nodeIPAM.serviceCIDR");
    }

    #[test]
    fn service_cidr_must_leave_node_cidrs() {
        let e = controller_err(
            "nodeIPAM:\n  clusterCIDRs: [10.96.0.0/20]\n  serviceCIDR: 10.96.0.0/16\n",
        );
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(e.key, "nodeIPAM.serviceCIDR");
        // Partial overlap is fine: those node CIDRs are skipped.
        assert!(ControllerConfig::from_yaml(
            "nodeIPAM:\n  clusterCIDRs: [10.96.0.0/16]\n  serviceCIDR: 10.96.0.0/20\n"
        )
        .is_ok());
    }

    #[test]
    fn gc_interval_is_checked() {
        let e = controller_err("gcIntervalSeconds: 0\n");
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "gcIntervalSeconds")
        );
        let e = controller_err("gcIntervalSeconds: 86401\n");
        assert_eq!(e.key, "gcIntervalSeconds");
    }

    #[test]
    fn validate_checks_configs_built_in_code() {
        let mut c = ControllerConfig::default();
        c.node_ipam.enable_node_ipam = true;
        assert_eq!(c.validate().unwrap_err().kind, Kind::Missing);
        c.node_ipam.cluster_cidrs = vec![net("10.0.0.0/16")];
        assert!(c.validate().is_ok());
        c.node_ipam.node_cidr_mask_size_ipv4 = 40;
        assert_eq!(
            c.validate().unwrap_err().key,
            "nodeIPAM.nodeCIDRMaskSizeIPv4"
        );

        let mut a = AgentConfig::default();
        a.secondary_network.ovs_bridges = vec![
            OvsBridgeConfig {
                bridge_name: "br-a".into(),
                physical_interfaces: vec!["eth1".into()],
                enable_multicast_snooping: false,
            };
            2
        ];
        assert_eq!(a.validate().unwrap_err().kind, Kind::Conflict);
    }

    #[test]
    fn render_then_parse_examples() {
        let a = AgentConfig::from_yaml(
            "featureGates: {SpurIPAM: false}\nsecondaryNetwork:\n  ovsBridges:\n  - bridgeName: \"#br\"\n    physicalInterfaces: [\"true\", \"~\", \"-1\"]\n",
        )
        .unwrap();
        assert_eq!(AgentConfig::from_yaml(&a.to_yaml()).unwrap(), a);
        let c = ControllerConfig::from_yaml(
            "nodeIPAM:\n  clusterCIDRs: [\"fd00:172:100::/60\", 172.100.0.0/20]\n  serviceCIDRv6: fd00:172:100::/64\n",
        )
        .unwrap();
        let text = c.to_yaml();
        assert!(
            text.contains("nodeIPAM:") && text.contains("clusterCIDRs:"),
            "{text}"
        );
        assert_eq!(ControllerConfig::from_yaml(&text).unwrap(), c);
    }

    // ----- properties ----------------------------------------------------

    fn ifname() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.@#~+-]{1,15}".prop_filter("not . or ..", |s| s != "." && s != "..")
    }

    fn agent_config() -> impl Strategy<Value = AgentConfig> {
        (
            proptest::collection::btree_map(
                prop_oneof![Just(SECONDARY_NETWORK), Just(SPUR_IPAM)],
                any::<bool>(),
                0..=2,
            ),
            "/[a-zA-Z0-9/._ :#-]{0,30}",
            "/[a-zA-Z0-9/._ :#-]{0,30}",
            1..=MAX_API_TIMEOUT_SECONDS,
            proptest::collection::btree_set(ifname(), 0..40),
            proptest::collection::vec((0..=MAX_UPLINKS_PER_BRIDGE, any::<bool>()), 0..6),
        )
            .prop_map(|(gates, cni, ovs, timeout, names, shapes)| {
                // Names are distinct: the first ones name bridges, the
                // rest are handed out as uplinks.
                let mut names = names.into_iter();
                let mut bridges: Vec<OvsBridgeConfig> = Vec::new();
                let mut counts = Vec::new();
                for (uplinks, snoop) in shapes {
                    let Some(bridge_name) = names.next() else {
                        break;
                    };
                    bridges.push(OvsBridgeConfig {
                        bridge_name,
                        physical_interfaces: Vec::new(),
                        enable_multicast_snooping: snoop,
                    });
                    counts.push(uplinks);
                }
                for (b, count) in bridges.iter_mut().zip(counts) {
                    b.physical_interfaces.extend(names.by_ref().take(count));
                }
                let mut feature_gates = FeatureGates::new();
                for (g, on) in gates {
                    feature_gates.set(g, on);
                }
                AgentConfig {
                    feature_gates,
                    cni_socket: cni,
                    ovs_run_dir: ovs,
                    api_timeout_seconds: timeout,
                    secondary_network: SecondaryNetworkConfig {
                        ovs_bridges: bridges,
                    },
                }
            })
    }

    fn v4_net() -> impl Strategy<Value = IpNet> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| {
            IpNet::V4(
                Ipv4Net::new(std::net::Ipv4Addr::from(a), p)
                    .unwrap()
                    .trunc(),
            )
        })
    }

    fn v6_net() -> impl Strategy<Value = IpNet> {
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| {
            IpNet::V6(
                Ipv6Net::new(std::net::Ipv6Addr::from(a), p)
                    .unwrap()
                    .trunc(),
            )
        })
    }

    fn controller_config() -> impl Strategy<Value = ControllerConfig> {
        (
            proptest::collection::btree_map(
                prop_oneof![Just(SECONDARY_NETWORK), Just(SPUR_IPAM)],
                any::<bool>(),
                0..=2,
            ),
            1..=MAX_GC_INTERVAL_SECONDS,
            any::<bool>(),
            proptest::option::of(v4_net()),
            proptest::option::of(v6_net()),
            any::<bool>(),
            proptest::option::of(v4_net()),
            proptest::option::of(v6_net()),
            16u8..=30,
            64u8..=126,
        )
            .prop_map(|(gates, gc, enable, c4, c6, v6_first, s4, s6, m4, m6)| {
                let mut cluster_cidrs: Vec<IpNet> = c4.into_iter().chain(c6).collect();
                if v6_first {
                    cluster_cidrs.reverse();
                }
                let mut feature_gates = FeatureGates::new();
                for (g, on) in gates {
                    feature_gates.set(g, on);
                }
                // Keep the masks valid for the cluster CIDRs most of the time.
                let m4 = c4.map_or(m4, |c| m4.max(c.prefix_len()));
                let m6 = c6.map_or(m6, |c| m6.max(c.prefix_len()));
                ControllerConfig {
                    feature_gates,
                    gc_interval_seconds: gc,
                    node_ipam: NodeIpamConfig {
                        enable_node_ipam: enable && !cluster_cidrs.is_empty(),
                        cluster_cidrs,
                        service_cidr: s4.and_then(|n| match n {
                            IpNet::V4(n) => Some(n),
                            IpNet::V6(_) => None,
                        }),
                        service_cidr_v6: s6.and_then(|n| match n {
                            IpNet::V6(n) => Some(n),
                            IpNet::V4(_) => None,
                        }),
                        node_cidr_mask_size_ipv4: m4,
                        node_cidr_mask_size_ipv6: m6,
                    },
                }
            })
    }

    /// Lines that look like the two files, to be shuffled into near-misses.
    fn yamlish() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("featureGates:".to_string()),
            Just("  SpurIPAM: true".to_string()),
            Just("  SecondaryNetwork: no".to_string()),
            Just("secondaryNetwork:".to_string()),
            Just("  ovsBridges:".to_string()),
            Just("  - bridgeName: br-a".to_string()),
            Just("  - bridgeName:".to_string()),
            Just("    physicalInterfaces: [eth1, eth2]".to_string()),
            Just("    physicalInterfaces:".to_string()),
            Just("    - eth1".to_string()),
            Just("    enableMulticastSnooping: true".to_string()),
            Just("apiTimeoutSeconds: 10".to_string()),
            Just("cniSocket: /x".to_string()),
            Just("nodeIPAM:".to_string()),
            Just("  enableNodeIPAM: true".to_string()),
            Just("  clusterCIDRs: [172.100.0.0/20, \"fd00:172:100::/60\"]".to_string()),
            Just("  clusterCIDRs:".to_string()),
            Just("  - 10.0.0.0/8".to_string()),
            Just("  serviceCIDR: 10.96.0.0/12".to_string()),
            Just("  serviceCIDRv6: fd00::/112".to_string()),
            Just("  nodeCIDRMaskSizeIPv4: 24".to_string()),
            Just("  nodeCIDRMaskSizeIPv6: 200".to_string()),
            Just("gcIntervalSeconds: -5".to_string()),
            Just("&a [*a]".to_string()),
            Just("{".to_string()),
            Just("---".to_string()),
            "[ -~]{0,20}",
        ];
        proptest::collection::vec(fragment, 0..12).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_any_text(text in "\\PC{0,200}") {
            let _ = AgentConfig::from_yaml(&text);
            let _ = ControllerConfig::from_yaml(&text);
        }

        #[test]
        fn parsers_never_panic_on_yamlish_text(text in yamlish()) {
            for r in [
                AgentConfig::from_yaml(&text).err(),
                ControllerConfig::from_yaml(&text).err(),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(r.object == AGENT_CONF_KEY || r.object == CONTROLLER_CONF_KEY);
                prop_assert!(!r.reason.is_empty());
            }
        }

        #[test]
        fn agent_render_then_parse(c in agent_config()) {
            prop_assert_eq!(c.validate(), Ok(()));
            let text = c.to_yaml();
            prop_assert_eq!(AgentConfig::from_yaml(&text), Ok(c), "{}", text);
        }

        #[test]
        fn controller_render_then_parse(c in controller_config()) {
            prop_assume!(c.validate().is_ok());
            let text = c.to_yaml();
            prop_assert_eq!(ControllerConfig::from_yaml(&text), Ok(c), "{}", text);
        }
    }
}
