//! What one CNI ADD of a Pod must create: the plan of each secondary
//! interface, decided from the Pod, its Namespace, the
//! NetworkAttachmentDefinitions, the IPPools and the node's bridges, and
//! then — once addresses are allocated — the exact interface config
//! (addresses, routes, MAC) handed to the datapath.
//!
//! What lives here, all pure:
//!
//! - [`plan_native`]: chained after the primary CNI, the Pod's
//!   `k8s.v1.cni.cncf.io/networks` annotation names the networks; every
//!   selected Spur network becomes a [`NetworkPlan`] (interface names by
//!   [`Naming::Native`]);
//! - [`plan_single`]: one Spur network given by its config (Multus delegates
//!   one network per call, `CNI_IFNAME` given);
//! - [`plan_ipam`]: Spur as the IPAM plugin of another plugin;
//! - [`interface_config`]: the addresses, routes and MAC of a planned
//!   interface once its pool addresses are known;
//! - [`host_port_name`] and [`stable_mac`]: names and MACs that stay the
//!   same for the same Pod interface.
//!
//! What does not: allocating the addresses (the agent's IPAM, over
//! `spur_core::allocator`), creating links or switch ports, and reading
//! anything from the API (callers pass lookups in).
//!
//! Every error is an [`AttachError`]: the network it concerns (when there is
//! one) and the [`Invalid`] cause, displayed as
//! `network default/vlan100: IPPool ...` so that the CNI error a user sees
//! in `kubectl describe pod` names the network first.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Invalid, Kind, Subject};
use crate::ipamreq::{
    check_pod_ips, choose_pools, ipam_result, network_vlan, requested_ips, IpConfig, NetworkPools,
    PodIpamAnnotations, PoolAddress,
};
use crate::ippool::PoolLayout;
use crate::nad::{
    check_resource_name, classify, NetworkKind, NetworkType, Route, SpurIpamConfig,
    SpurNetworkConfig, VfSettings,
};
use crate::names::Mac;
use crate::selection::{self, Naming, RequestedIp, SelectionElement};
use crate::sriov::PciAddress;

/// The annotation listing a Pod's networks.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// The Pod as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// The Pod's annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// The annotations of the Pod's Namespace, when known.
    pub namespace_annotations: Option<&'a BTreeMap<String, String>>,
}

impl PodView<'_> {
    fn subject(&self) -> Subject {
        Subject::new("Pod", Some(self.namespace), self.name)
    }
}

/// Why an ADD cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachError {
    /// The network (`namespace/name`) the error concerns, if any.
    pub network: Option<String>,
    /// What is wrong.
    pub cause: Box<Invalid>,
}

impl AttachError {
    fn of(network: &str, cause: Invalid) -> AttachError {
        AttachError {
            network: Some(network.to_string()),
            cause: Box::new(cause),
        }
    }

    fn pod(cause: Invalid) -> AttachError {
        AttachError {
            network: None,
            cause: Box::new(cause),
        }
    }
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.network {
            Some(n) => write!(f, "network {n}: {}", self.cause),
            None => write!(f, "{}", self.cause),
        }
    }
}

impl std::error::Error for AttachError {}

/// How a planned interface reaches its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datapath {
    /// A veth whose host end is an access port of `bridge` on `vlan`
    /// (0: untagged).
    Vlan {
        /// The secondary OVS bridge.
        bridge: String,
        /// The access VLAN.
        vlan: u16,
    },
    /// An SR-IOV virtual function moved into the Pod, tagged with `vlan`
    /// (0: untagged) by its PF.
    Sriov {
        /// Where the VF comes from.
        device: VfSource,
        /// The VF's VLAN.
        vlan: u16,
        /// Priority, spoof check, trust.
        vf: VfSettings,
    },
}

/// How the agent learns which VF an SR-IOV interface gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfSource {
    /// Native mode: one of the devices of this device-plugin resource that
    /// the kubelet assigned the Pod (see [`crate::sriov::assign_devices`]).
    Resource(String),
    /// Multus mode: the VF Multus passed as `deviceID`.
    Device(PciAddress),
}

/// A NetworkAttachmentDefinition as the planner needs it: its
/// `spec.config` and its resource-name annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nad {
    /// `spec.config`.
    pub config: String,
    /// The `k8s.v1.cni.cncf.io/resourceName` annotation, when present.
    pub resource_name: Option<String>,
}

impl Nad {
    /// A NAD with only a config (no resource-name annotation).
    pub fn config(config: impl Into<String>) -> Nad {
        Nad {
            config: config.into(),
            resource_name: None,
        }
    }
}

/// One interface an ADD creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The NetworkAttachmentDefinition, `namespace/name`.
    pub network: String,
    /// The interface name inside the Pod.
    pub ifname: String,
    /// Bridge and VLAN.
    pub datapath: Datapath,
    /// MTU of both ends.
    pub mtu: u16,
    /// The MAC asked for by the selection element.
    pub mac: Option<Mac>,
    /// The pools to allocate from, in order (empty: no pool addresses).
    pub pools: Vec<String>,
    /// Addresses asked for (selection `ips`, else `ipam.spur.dev/pod-ips`).
    pub requested_ips: Vec<IpAddr>,
    /// Prefix lengths written with requested `ips`, for addresses that lie
    /// in no pool (a selection element may ask for `10.10.0.5/24`).
    pub requested_nets: Vec<IpNet>,
    /// The network's IPAM config (static addresses, routes, DNS).
    pub ipam: Option<SpurIpamConfig>,
    /// Gateways of a default route through this interface.
    pub default_route: Vec<IpAddr>,
}

impl NetworkPlan {
    /// The VLAN: the access port's, or the VF's.
    pub fn vlan(&self) -> u16 {
        match &self.datapath {
            Datapath::Vlan { vlan, .. } | Datapath::Sriov { vlan, .. } => *vlan,
        }
    }

    /// The bridge of a `vlan` network (None for SR-IOV).
    pub fn bridge(&self) -> Option<&str> {
        match &self.datapath {
            Datapath::Vlan { bridge, .. } => Some(bridge),
            Datapath::Sriov { .. } => None,
        }
    }
}

/// Plans the interfaces of a Pod in native (chained) mode.
///
/// `nad(namespace, name)` returns a NAD's `spec.config` (None: no such
/// NAD); `pool(name)` a pool's layout (None: no such pool, or an invalid
/// one); `bridges` are the node's secondary bridges. Selection elements
/// naming NADs of other plugins are refused: without Multus, Spur attaches
/// only its own networks.
pub fn plan_native(
    pod: &PodView<'_>,
    nad: &dyn Fn(&str, &str) -> Option<Nad>,
    pool: &dyn Fn(&str) -> Option<PoolLayout>,
    bridges: &[String],
) -> Result<Vec<NetworkPlan>, AttachError> {
    let Some(text) = pod.annotations.get(NETWORKS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let elements = selection::parse(text, pod.namespace, pod.name, Naming::Native)
        .map_err(AttachError::pod)?;
    let ipam_ann = PodIpamAnnotations::from_annotations(
        pod.namespace,
        pod.name,
        pod.annotations,
        pod.namespace_annotations,
    )
    .map_err(AttachError::pod)?;
    let mut networks = Vec::with_capacity(elements.len());
    for el in &elements {
        let network = el.network();
        let subject = Subject::new("NetworkAttachmentDefinition", Some(&el.namespace), &el.name);
        let Some(found) = nad(&el.namespace, &el.name) else {
            return Err(AttachError::of(
                &network,
                pod.subject().error(
                    Kind::Missing,
                    format!(
                        "metadata.annotations[\"{NETWORKS_ANNOTATION}\"][{}].name",
                        el.index
                    ),
                    Some(format!("{:?}", el.name)),
                    format!("NetworkAttachmentDefinition {network} not found"),
                ),
            ));
        };
        let cfg =
            match classify(&found.config, &subject).map_err(|e| AttachError::of(&network, e))? {
                NetworkKind::Spur(c) => *c,
                NetworkKind::SpurIpam(p) => {
                    return Err(AttachError::of(
                        &network,
                        not_spur(&subject, &p.plugin_type),
                    ))
                }
                NetworkKind::Other => {
                    return Err(AttachError::of(
                        &network,
                        not_spur(&subject, "another plugin"),
                    ))
                }
            };
        networks.push((el, network, subject, cfg, found.resource_name));
    }
    let mut plans = Vec::with_capacity(networks.len());
    let mut layouts: Vec<Vec<PoolLayout>> = Vec::with_capacity(networks.len());
    for (el, network, subject, cfg, resource_name) in &networks {
        let (plan, pools) = plan_network(
            network,
            subject,
            cfg,
            VfFrom::Resource(resource_name.as_deref()),
            &Element::from(*el),
            &ipam_ann,
            pool,
            bridges,
        )?;
        plans.push(plan);
        layouts.push(pools);
    }
    let views: Vec<NetworkPools<'_>> = plans
        .iter()
        .zip(&layouts)
        .zip(&networks)
        .map(|((p, l), (el, ..))| NetworkPools {
            network: p.network.clone(),
            pools: l.iter().collect(),
            element_ips: !el.ips.is_empty(),
        })
        .collect();
    check_pod_ips(&pod.subject(), &ipam_ann.pod_ips, &views).map_err(AttachError::pod)?;
    Ok(plans)
}

/// What a selection element (or a Multus delegation) asks of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Interface name in the Pod.
    pub ifname: String,
    /// MAC asked for.
    pub mac: Option<Mac>,
    /// Addresses asked for.
    pub ips: Vec<RequestedIp>,
    /// Gateways of a default route through the interface.
    pub default_route: Vec<IpAddr>,
}

impl From<&SelectionElement> for Element {
    fn from(el: &SelectionElement) -> Element {
        Element {
            ifname: el.interface.clone(),
            mac: el.mac,
            ips: el.ips.clone(),
            default_route: el.default_route.clone(),
        }
    }
}

/// Plans one Spur network given by its config: the Multus role, where the
/// runtime passes the NAD's config and `CNI_IFNAME`. `network` names it in
/// messages and in the network-status (`namespace/name`).
pub fn plan_single(
    pod: &PodView<'_>,
    network: &str,
    config: &SpurNetworkConfig,
    element: &Element,
    pool: &dyn Fn(&str) -> Option<PoolLayout>,
    bridges: &[String],
) -> Result<NetworkPlan, AttachError> {
    let ipam_ann = PodIpamAnnotations::from_annotations(
        pod.namespace,
        pod.name,
        pod.annotations,
        pod.namespace_annotations,
    )
    .map_err(AttachError::pod)?;
    let subject = Subject::named(format!("NetworkAttachmentDefinition {network}"));
    let (plan, _) = plan_network(
        network,
        &subject,
        config,
        VfFrom::DeviceId,
        element,
        &ipam_ann,
        pool,
        bridges,
    )?;
    Ok(plan)
}

/// What Spur as an IPAM plugin must hand out for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamPlan {
    /// The network (`namespace/name` or the config's name).
    pub network: String,
    /// The interface the other plugin creates.
    pub ifname: String,
    /// Pools, in order.
    pub pools: Vec<String>,
    /// Addresses asked for.
    pub requested_ips: Vec<IpAddr>,
    /// The IPAM config.
    pub ipam: SpurIpamConfig,
}

/// Plans Spur's part as the IPAM plugin of another plugin (macvlan,
/// ipvlan, bridge, host-device): pools narrowed by the Pod's annotations,
/// addresses from `ips` (runtime config) or `pod-ips`.
pub fn plan_ipam(
    pod: &PodView<'_>,
    network: &str,
    ipam: &SpurIpamConfig,
    ifname: &str,
    ips: &[RequestedIp],
    pool: &dyn Fn(&str) -> Option<PoolLayout>,
) -> Result<IpamPlan, AttachError> {
    let ipam_ann = PodIpamAnnotations::from_annotations(
        pod.namespace,
        pod.name,
        pod.annotations,
        pod.namespace_annotations,
    )
    .map_err(AttachError::pod)?;
    let subject = Subject::named(format!("network {network}"));
    let pools = choose_pools(&ipam.ippools, ipam_ann.pools());
    let layouts = known_pools(network, &subject, &pools, pool)?;
    let refs: Vec<&PoolLayout> = layouts.iter().collect();
    Ok(IpamPlan {
        network: network.to_string(),
        ifname: ifname.to_string(),
        requested_ips: requested_ips(ips, &ipam_ann.pod_ips, &refs),
        pools,
        ipam: ipam.clone(),
    })
}

/// Where an SR-IOV network's VF is named.
#[derive(Debug, Clone, Copy)]
enum VfFrom<'a> {
    /// Native mode: the NAD's resource-name annotation (None: absent).
    Resource(Option<&'a str>),
    /// Multus mode: `deviceID` in the config.
    DeviceId,
}

#[allow(clippy::too_many_arguments)] // one call per mode; a struct would only rename them
fn plan_network(
    network: &str,
    subject: &Subject,
    cfg: &SpurNetworkConfig,
    vf_from: VfFrom<'_>,
    el: &Element,
    ipam_ann: &PodIpamAnnotations,
    pool: &dyn Fn(&str) -> Option<PoolLayout>,
    bridges: &[String],
) -> Result<(NetworkPlan, Vec<PoolLayout>), AttachError> {
    let fail = |e: Invalid| AttachError::of(network, e);
    let pools = match &cfg.ipam {
        Some(ipam) => choose_pools(&ipam.ippools, ipam_ann.pools()),
        None => Vec::new(),
    };
    let layouts = known_pools(network, subject, &pools, pool)?;
    let refs: Vec<&PoolLayout> = layouts.iter().collect();
    let vlan = network_vlan(subject, cfg.vlan_override(), &refs).map_err(fail)?;
    let datapath = match cfg.network_type {
        NetworkType::Vlan => Datapath::Vlan {
            bridge: choose_bridge(subject, cfg.bridge.as_deref(), bridges).map_err(fail)?,
            vlan,
        },
        NetworkType::Sriov => {
            if let Some(q) = cfg.vf.qos.filter(|q| *q != 0 && vlan == 0) {
                return Err(fail(subject.invalid(
                    "spec.config.vlanQoS",
                    q,
                    "a priority needs a VLAN tag to carry it, and the network is untagged: set \
                     spec.config.vlan or its pools' subnetInfo.vlan",
                )));
            }
            Datapath::Sriov {
                device: vf_source(subject, cfg, vf_from).map_err(fail)?,
                vlan,
                vf: cfg.vf,
            }
        }
    };
    let requested = requested_ips(&el.ips, &ipam_ann.pod_ips, &refs);
    let requested_nets = el.ips.iter().filter_map(RequestedIp::net).collect();
    Ok((
        NetworkPlan {
            network: network.to_string(),
            ifname: el.ifname.clone(),
            datapath,
            mtu: cfg.mtu,
            mac: el.mac,
            pools,
            requested_ips: requested,
            requested_nets,
            ipam: cfg.ipam.clone(),
            default_route: el.default_route.clone(),
        },
        layouts,
    ))
}

/// The VF source of an `sriov` network: the resource named by the NAD's
/// annotation (native), or the `deviceID` Multus passed.
fn vf_source(
    subject: &Subject,
    cfg: &SpurNetworkConfig,
    from: VfFrom<'_>,
) -> Result<VfSource, Invalid> {
    match from {
        VfFrom::Resource(name) => {
            check_resource_name(cfg, name, subject)?;
            Ok(VfSource::Resource(name.unwrap_or_default().to_string()))
        }
        VfFrom::DeviceId => {
            let Some(id) = cfg.runtime.device_id.as_deref() else {
                return Err(subject.error(
                    Kind::Missing,
                    "spec.config.deviceID",
                    None,
                    "is required for networkType \"sriov\" under Multus: Multus passes the \
                     VF the device plugin assigned the Pod (check the NAD's resourceName \
                     annotation and the Pod's resource request)",
                ));
            };
            id.parse::<PciAddress>().map(VfSource::Device).map_err(|e| {
                subject.invalid(
                    "spec.config.deviceID",
                    format!("{id:?}"),
                    format!("must be a VF's PCI address: {}", e.problem),
                )
            })
        }
    }
}

fn known_pools(
    network: &str,
    subject: &Subject,
    pools: &[String],
    pool: &dyn Fn(&str) -> Option<PoolLayout>,
) -> Result<Vec<PoolLayout>, AttachError> {
    pools
        .iter()
        .map(|name| {
            pool(name).ok_or_else(|| {
                AttachError::of(
                    network,
                    subject.error(
                        Kind::Missing,
                        "spec.config.ipam.ippools",
                        Some(format!("{name:?}")),
                        format!("IPPool {name} does not exist or is invalid"),
                    ),
                )
            })
        })
        .collect()
}

fn choose_bridge(
    subject: &Subject,
    wanted: Option<&str>,
    bridges: &[String],
) -> Result<String, Invalid> {
    match (wanted, bridges) {
        (Some(b), _) if bridges.iter().any(|x| x == b) => Ok(b.to_string()),
        (Some(b), _) => Err(subject.error(
            Kind::Missing,
            "spec.config.bridge",
            Some(format!("{b:?}")),
            format!(
                "this node has no secondary bridge {b} (spur-agent.conf \
                 secondaryNetwork.ovsBridges has {})",
                list_or_none(bridges)
            ),
        )),
        (None, [only]) => Ok(only.clone()),
        (None, []) => Err(subject.error(
            Kind::Missing,
            "spec.config.bridge",
            None,
            "this node has no secondary bridge: configure \
             secondaryNetwork.ovsBridges in spur-agent.conf",
        )),
        (None, many) => Err(subject.error(
            Kind::Missing,
            "spec.config.bridge",
            None,
            format!(
                "this node has several secondary bridges ({}): the network must name one",
                many.join(", ")
            ),
        )),
    }
}

fn list_or_none(bridges: &[String]) -> String {
    if bridges.is_empty() {
        "none".to_string()
    } else {
        bridges.join(", ")
    }
}

fn not_spur(subject: &Subject, plugin: &str) -> Invalid {
    subject.error(
        Kind::Unsupported,
        "spec.config.type",
        Some(format!("{plugin:?}")),
        "not a Spur network: without Multus, Spur attaches only networks of type spur \
         (use Multus to attach networks of other plugins)",
    )
}

// ---------------------------------------------------------------------------
// Interface config
// ---------------------------------------------------------------------------

/// A route inside the Pod, through the planned interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRoute {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; `None` for an on-link route.
    pub gw: Option<IpAddr>,
}

/// Everything the datapath needs to create one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Addresses with their prefix lengths and gateways.
    pub ips: Vec<IpConfig>,
    /// Routes, the default route included when asked for.
    pub routes: Vec<PodRoute>,
    /// DNS settings for the result.
    pub dns: crate::nad::Dns,
    /// The MAC of the Pod end.
    pub mac: Mac,
}

/// The config of a planned interface once `allocated` (its pool addresses)
/// are known: pool addresses, then requested addresses outside every pool
/// (with the prefix they were written with), then the NAD's static
/// addresses; the NAD's routes (a route without `gw` goes through the
/// interface's gateway of that family, as the CNI `static` plugin does,
/// or on-link when there is none); a default route per family when the
/// selection element asks for one; the MAC asked for, else
/// [`stable_mac`].
pub fn interface_config(
    plan: &NetworkPlan,
    allocated: &[PoolAddress],
    container_id: &str,
) -> Result<InterfaceConfig, AttachError> {
    let subject = Subject::named(format!("NetworkAttachmentDefinition {}", plan.network));
    let empty = SpurIpamConfig::default();
    let ipam = plan.ipam.as_ref().unwrap_or(&empty);
    let mut result =
        ipam_result(&subject, allocated, ipam).map_err(|e| AttachError::of(&plan.network, e))?;
    for net in &plan.requested_nets {
        if !result.ips.iter().any(|c| c.address.addr() == net.addr()) {
            result.ips.push(IpConfig {
                address: *net,
                gateway: None,
            });
        }
    }
    let gw_of = |v4: bool| {
        result
            .ips
            .iter()
            .filter(|c| c.address.addr().is_ipv4() == v4)
            .find_map(|c| c.gateway)
    };
    let mut routes: Vec<PodRoute> = result
        .routes
        .iter()
        .map(|r: &Route| PodRoute {
            dst: r.dst,
            gw: r.gw.or_else(|| gw_of(r.dst.addr().is_ipv4())),
        })
        .collect();
    for gw in &plan.default_route {
        let dst = if gw.is_ipv4() {
            IpNet::V4(ipnet::Ipv4Net::default())
        } else {
            IpNet::V6(ipnet::Ipv6Net::default())
        };
        routes.retain(|r| r.dst != dst);
        routes.push(PodRoute { dst, gw: Some(*gw) });
    }
    let mac = plan.mac.unwrap_or_else(|| {
        let v4 = result.ips.iter().find_map(|c| match c.address.addr() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
        stable_mac(v4, container_id, &plan.ifname)
    });
    Ok(InterfaceConfig {
        ips: result.ips,
        routes,
        dns: result.dns,
        mac,
    })
}

/// A MAC that stays the same for the same address: `0a:58` followed by the
/// IPv4 address (the convention of the Kubernetes CNI plugins), so that
/// neighbours' caches stay right when a Pod comes back with its address;
/// without an IPv4 address, a locally administered unicast MAC hashed from
/// the container ID and the interface name.
pub fn stable_mac(ipv4: Option<std::net::Ipv4Addr>, container_id: &str, ifname: &str) -> Mac {
    match ipv4 {
        Some(a) => {
            let o = a.octets();
            Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]])
        }
        None => {
            let h = fnv1a(&[container_id.as_bytes(), b"/", ifname.as_bytes()]).to_be_bytes();
            // Locally administered (bit 1), unicast (bit 0 clear).
            Mac([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
        }
    }
}

/// The name of the host end of a Pod interface: `sp` followed by 13 hex
/// digits of a hash of the container ID and the interface name (15
/// characters, the kernel's limit), the same for the same attachment so
/// that DEL and restarts find it without any state.
pub fn host_port_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(&[container_id.as_bytes(), b"/", ifname.as_bytes()]);
    format!("sp{:013x}", h >> 12)
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ippool::IPPool;

    fn pool(name: &str, cidr: &str, gw: &str, prefix: u8, vlan: u16) -> PoolLayout {
        let yaml = format!(
            "apiVersion: spur.dev/v1beta1\nkind: IPPool\nmetadata: {{name: {name}}}\n\
             spec:\n  ipRanges: [{{cidr: {cidr}}}]\n  subnetInfo: {{gateway: {gw}, prefixLength: {prefix}, vlan: {vlan}}}\n"
        );
        let p: IPPool = serde_yaml::from_str(&yaml).unwrap();
        PoolLayout::from_pool(&p).unwrap()
    }

    fn pools() -> Vec<PoolLayout> {
        vec![
            pool("v100-4", "10.10.1.0/26", "10.10.1.1", 24, 100),
            pool("v100-6", "fd00:10::/120", "fd00:10::1", 64, 100),
            pool("v300", "10.30.0.0/26", "10.30.0.1", 24, 300),
            pool("v301", "10.31.0.0/26", "10.31.0.1", 24, 301),
        ]
    }

    fn nads() -> BTreeMap<(String, String), String> {
        let mut m = BTreeMap::new();
        let mut put = |ns: &str, n: &str, c: &str| {
            m.insert((ns.to_string(), n.to_string()), c.to_string());
        };
        put(
            "default",
            "vlan100",
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"vlan","vlan":100,"ipam":{"type":"spur","ippools":["v100-4","v100-6"]}}"#,
        );
        put(
            "default",
            "poolvlan",
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"vlan","mtu":9000,"ipam":{"type":"spur","ippools":["v300"]}}"#,
        );
        put(
            "default",
            "override",
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"vlan","vlan":400,"ipam":{"type":"spur","ippools":["v300"]}}"#,
        );
        put(
            "default",
            "mixed",
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"vlan","ipam":{"type":"spur","ippools":["v300","v301"]}}"#,
        );
        put(
            "default",
            "ghost",
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"vlan","ipam":{"type":"spur","ippools":["nope"]}}"#,
        );
        put(
            "default",
            "mv",
            r#"{"cniVersion":"1.0.0","type":"macvlan","master":"eth1","ipam":{"type":"spur","ippools":["v300"]}}"#,
        );
        put(
            "default",
            "sriov",
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"sriov","vlan":5}"#,
        );
        put(
            "default",
            "vf-a",
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"sriov","vlanQoS":2,"spoofchk":"off","ipam":{"type":"spur","ippools":["v100-4"]}}"#,
        );
        m
    }

    /// The NADs with their resource-name annotations.
    fn resource_names() -> BTreeMap<(String, String), String> {
        BTreeMap::from([(
            ("default".to_string(), "vf-a".to_string()),
            "intel.com/sriov_a".to_string(),
        )])
    }

    fn plan(annotation: &str, bridges: &[&str]) -> Result<Vec<NetworkPlan>, AttachError> {
        let mut ann = BTreeMap::new();
        ann.insert(NETWORKS_ANNOTATION.to_string(), annotation.to_string());
        plan_with(&ann, bridges)
    }

    fn plan_with(
        ann: &BTreeMap<String, String>,
        bridges: &[&str],
    ) -> Result<Vec<NetworkPlan>, AttachError> {
        let pod = PodView {
            namespace: "default",
            name: "web",
            annotations: ann,
            namespace_annotations: None,
        };
        let nads = nads();
        let resources = resource_names();
        let pools = pools();
        let bridges: Vec<String> = bridges.iter().map(|s| s.to_string()).collect();
        plan_native(
            &pod,
            &|ns, n| {
                let key = (ns.to_string(), n.to_string());
                nads.get(&key).map(|c| Nad {
                    config: c.clone(),
                    resource_name: resources.get(&key).cloned(),
                })
            },
            &|n| pools.iter().find(|p| p.name == n).cloned(),
            &bridges,
        )
    }

    #[test]
    fn no_annotation_no_networks() {
        let ann = BTreeMap::new();
        assert_eq!(plan_with(&ann, &["br"]).unwrap(), vec![]);
    }

    #[test]
    fn plans_interfaces_with_vlans_and_names() {
        let p = plan("vlan100, poolvlan@data, override", &["br-sec"]).unwrap();
        let got: Vec<(&str, &str, u16, u16, &str)> = p
            .iter()
            .map(|p| {
                (
                    p.network.as_str(),
                    p.ifname.as_str(),
                    p.vlan(),
                    p.mtu,
                    p.bridge().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("default/vlan100", "eth1", 100, 1500, "br-sec"),
                ("default/poolvlan", "data", 300, 9000, "br-sec"),
                ("default/override", "eth2", 400, 1500, "br-sec"),
            ]
        );
        assert_eq!(p[0].pools, vec!["v100-4", "v100-6"]);
    }

    #[test]
    fn errors_name_the_network_and_cause() {
        let cases = [
            ("missing", "network default/missing: ", "not found"),
            ("mixed", "network default/mixed: ", "v301"),
            (
                "ghost",
                "network default/ghost: ",
                "IPPool nope does not exist",
            ),
            ("mv", "network default/mv: ", "not a Spur network"),
            (
                "sriov",
                "network default/sriov: ",
                "is required for networkType \"sriov\"",
            ),
        ];
        let mut all = Vec::new();
        for (nad, prefix, needle) in cases {
            let e = plan(nad, &["br"]).unwrap_err().to_string();
            assert!(e.starts_with(prefix), "{e}");
            assert!(e.contains(needle), "{nad}: {e}");
            all.push(e);
        }
        all.push(plan("vlan100", &[]).unwrap_err().to_string());
        all.push(plan("vlan100", &["a", "b"]).unwrap_err().to_string());
        insta::assert_snapshot!("attach_errors", all.join("\n"));
    }

    #[test]
    fn sriov_networks_plan_a_vf_of_their_resource() {
        let p = plan("vlan100, vf-a@data, vf-a", &["br-sec"]).unwrap();
        let got: Vec<(&str, &Datapath, Option<&str>)> = p
            .iter()
            .map(|p| (p.ifname.as_str(), &p.datapath, p.bridge()))
            .collect();
        let vf = Datapath::Sriov {
            device: VfSource::Resource("intel.com/sriov_a".into()),
            // The pool's subnetInfo.vlan applies as to a vlan network.
            vlan: 100,
            vf: VfSettings {
                qos: Some(2),
                spoofchk: Some(false),
                trust: None,
            },
        };
        assert_eq!(
            got,
            vec![
                (
                    "eth1",
                    &Datapath::Vlan {
                        bridge: "br-sec".into(),
                        vlan: 100
                    },
                    Some("br-sec")
                ),
                ("data", &vf, None),
                ("eth2", &vf, None),
            ]
        );
        assert_eq!(p[1].pools, ["v100-4"]);
        // A node without bridges still takes SR-IOV networks.
        assert_eq!(plan("vf-a", &[]).unwrap().len(), 1);
    }

    #[test]
    fn multus_passes_the_vf_as_device_id() {
        let ann = BTreeMap::new();
        let pod = PodView {
            namespace: "default",
            name: "web",
            annotations: &ann,
            namespace_annotations: None,
        };
        let pools = pools();
        let single = |extra: &str| {
            let text = format!(
                r#"{{"cniVersion":"1.0.0","type":"spur","networkType":"sriov","vlan":7{extra}}}"#
            );
            let cfg = crate::nad::parse_spur_network(
                &text,
                &Subject::named("NetworkAttachmentDefinition default/vf"),
            )
            .unwrap();
            plan_single(
                &pod,
                "default/vf",
                &cfg,
                &Element {
                    ifname: "net1".into(),
                    ..Element::default()
                },
                &|n| pools.iter().find(|p| p.name == n).cloned(),
                &[],
            )
        };
        let e = plan_single(
            &pod,
            "default/vf",
            &crate::nad::parse_spur_network(
                r#"{"cniVersion":"1.0.0","type":"spur","networkType":"sriov","vlanQoS":3,"deviceID":"0000:3b:02.1"}"#,
                &Subject::named("NetworkAttachmentDefinition default/vf"),
            )
            .unwrap(),
            &Element::default(),
            &|n| pools.iter().find(|p| p.name == n).cloned(),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "network default/vf: NetworkAttachmentDefinition default/vf: spec.config.vlanQoS = 3: \
             a priority needs a VLAN tag to carry it, and the network is untagged: set \
             spec.config.vlan or its pools' subnetInfo.vlan"
        );
        let p = single(r#","deviceID":"0000:3b:02.1""#).unwrap();
        assert_eq!(
            p.datapath,
            Datapath::Sriov {
                device: VfSource::Device("0000:3b:02.1".parse().unwrap()),
                vlan: 7,
                vf: VfSettings::default(),
            }
        );
        assert_eq!(
            single("").unwrap_err().to_string(),
            "network default/vf: NetworkAttachmentDefinition default/vf: spec.config.deviceID: \
             is required for networkType \"sriov\" under Multus: Multus passes the VF the \
             device plugin assigned the Pod (check the NAD's resourceName annotation and the \
             Pod's resource request)"
        );
        assert_eq!(
            single(r#","deviceID":"vf7""#).unwrap_err().to_string(),
            "network default/vf: NetworkAttachmentDefinition default/vf: spec.config.deviceID = \
             \"vf7\": must be a VF's PCI address: no ':'"
        );
    }

    #[test]
    fn bridge_choice() {
        let e = plan("vlan100", &[]).unwrap_err().to_string();
        assert!(e.contains("no secondary bridge"), "{e}");
        let e = plan("vlan100", &["a", "b"]).unwrap_err().to_string();
        assert!(e.contains("several secondary bridges (a, b)"), "{e}");
    }

    #[test]
    fn malformed_annotation_names_it() {
        let e = plan("[{\"name\": }", &["br"]).unwrap_err();
        assert!(e.network.is_none());
        assert!(e.to_string().contains(NETWORKS_ANNOTATION), "{e}");
    }

    #[test]
    fn interface_config_routes_and_mac() {
        let mut p = plan(
            r#"[{"name":"vlan100","default-route":["10.10.1.1"]}]"#,
            &["br"],
        )
        .unwrap()
        .remove(0);
        p.ipam = Some(SpurIpamConfig {
            routes: vec![Route {
                dst: "192.168.0.0/16".parse().unwrap(),
                gw: None,
            }],
            ..p.ipam.clone().unwrap()
        });
        let pools = pools();
        let a4 = PoolAddress::new(&pools[0], "10.10.1.5".parse().unwrap()).unwrap();
        let a6 = PoolAddress::new(&pools[1], "fd00:10::5".parse().unwrap()).unwrap();
        let c = interface_config(&p, &[a4, a6], "cid").unwrap();
        assert_eq!(c.mac.to_string(), "0a:58:0a:0a:01:05");
        assert_eq!(
            c.ips
                .iter()
                .map(|i| i.address.to_string())
                .collect::<Vec<_>>(),
            vec!["10.10.1.5/24", "fd00:10::5/64"]
        );
        assert_eq!(
            c.routes,
            vec![
                PodRoute {
                    dst: "192.168.0.0/16".parse().unwrap(),
                    gw: Some("10.10.1.1".parse().unwrap())
                },
                PodRoute {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.10.1.1".parse().unwrap())
                },
            ]
        );
    }

    #[test]
    fn names_are_stable_and_short() {
        let a = host_port_name("abc", "eth1");
        assert_eq!(a, host_port_name("abc", "eth1"));
        assert_ne!(a, host_port_name("abc", "eth2"));
        assert_eq!(a.len(), 15);
        let m = stable_mac(None, "abc", "eth1");
        assert!(m.is_local() && !m.is_multicast());
        assert_eq!(m, stable_mac(None, "abc", "eth1"));
    }
}
