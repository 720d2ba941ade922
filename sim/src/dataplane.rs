//! The simulator's data-plane model: which Pod interfaces reach each other
//! (ping) and which receive a multicast group, answered the way the
//! hardware harness `spur-hil` measures them on Open vSwitch bridges in
//! network namespaces — as pure computation, without I/O.
//!
//! What lives here: the plain-data description of a testbed's L2 world
//! ([`Topology`]: nodes with NICs, per-node OVS bridges with trunk uplinks
//! and access ports, bridge-mode macvlans on a NIC, the embedded switches
//! of SR-IOV NICs with their VFs, fabric segments, and Pod interfaces with
//! addresses), the checks that reject an inconsistent
//! one ([`DataplaneError`]), and the answers ([`Dataplane::reachable`],
//! [`Dataplane::reachability`], [`Dataplane::multicast`]).
//!
//! What does not live here: deciding which interfaces exist and which
//! VLAN, bridge or addresses they got (that is Spur's real agent and IPAM
//! running in the simulator), parsing testbeds, judging expectations, and
//! time. Routes other than the connected subnets of the interfaces, MTU
//! effects beyond IPv6 being disabled below 1280 bytes, IGMP/MLD queriers
//! and multicast routers are not modelled.
//!
//! # The model
//!
//! Switches are OVS bridges of a node, fabric segments, one "macvlan
//! hub" per NIC that has macvlans, and one embedded switch per SR-IOV PF.
//! Links join a bridge's uplink NIC, a hub's parent NIC or a PF to the
//! segment the NIC or PF is a port of. L2 domains are
//! connected components of `(switch, VLAN)` pairs, computed once with a
//! union-find over the VLANs some interface uses (O((switches + links) ×
//! VLANs in use) to build, near O(1) per reachability query).
//!
//! - OVS bridge: an access port with tag T sends and receives VLAN T. A port
//!   with no tag (or tag 0) is what Spur creates for an untagged network:
//!   OVS treats a port without `tag` as a trunk of every VLAN, so its own
//!   traffic is VLAN 0 (native) but frames of other VLANs flooded on the
//!   bridge reach it tagged (the Pod's IP stack drops them; an L2 capture of
//!   a multicast non-member counts them). Uplinks are trunks of every VLAN.
//! - Fabric segment: a learning switch; frames keep their 802.1Q tags. With
//!   `allowedVLANs` its ports trunk untagged frames and the listed VLANs only
//!   (the harness sets `trunks=0,…` on the fabric ports), other tags are
//!   dropped. The harness never enables snooping on the fabric (OVS default:
//!   off); a segment with snooping on is modelled as an OVS bridge with
//!   snooping and no `flood-reports` ports.
//! - macvlan (bridge mode): untagged frames out of the parent NIC; macvlans
//!   of one parent reach each other. A NIC cannot be both an OVS uplink and a
//!   macvlan parent (the kernel allows one receive handler per device), so
//!   that input is an error. Multicast reaches a macvlan only when it joined
//!   the group (the macvlan's multicast address filter), except all-hosts
//!   groups.
//! - SR-IOV embedded switch (one per PF, as the harness emulates it: an OVS
//!   bridge named after the PF with one `vlan_mode=access` port per VF): a
//!   VF sends and receives only its own VLAN, the one its PF sets for it
//!   (a VF of a VM node, whose PF the node cannot see, is untagged). Unlike
//!   an OVS port without a tag, a VF with VLAN 0 is untagged only: frames
//!   of other VLANs never reach it. The PF is a trunk of every VLAN to the
//!   segment it is a port of (within the segment's `allowedVLANs`); VFs of
//!   one PF in one VLAN reach each other through it. It does no snooping:
//!   multicast floods the VLAN.
//! - A loop (two paths between two switches in a VLAN some interface uses)
//!   is an error: the harness's switches run no spanning tree.
//!
//! Reachability (one ping per IP family both ends have, from the source
//! interface itself to the destination's first address of that family, as
//! `ping -I`), for each family: both interfaces up, the same L2 domain, and
//! - IPv6 only: the destination lies in a subnet of the source interface
//!   (a socket bound to a device finds no route otherwise);
//! - IPv4: no such condition — with `ping -I` Linux sends to an address no
//!   route of the interface covers as if it were on-link (no router exists
//!   in a testbed, and interfaces carry no routes but their subnets here);
//! - the echo reply finds its way back: the source address (the source
//!   interface's address in the destination's subnet, else its first of the
//!   family) has its longest-prefix match, among the subnets of every up
//!   interface of the destination's Pod, on the destination interface
//!   itself. A tie between two interfaces of that Pod is an error
//!   ([`DataplaneError::AmbiguousReplyRoute`]).
//!
//! ARP and neighbour discovery are answered only on the interface that owns
//! the address (`arp_ignore=1`), which the L2-domain condition expresses.
//!
//! Multicast (steady state, after the snooping switches learned the members,
//! as the harness waits for): every member sends a report in its own VLAN;
//! a snooping switch learns the port a report arrived on and forwards it to
//! its `flood-reports` ports (a snooping node bridge's uplinks, as the agent
//! configures them), a switch without snooping floods it. Data from the
//! sender floods its VLAN; a snooping switch that learned the group in that
//! VLAN sends it only to learned ports, one that did not (unregistered
//! group) floods it, as does every switch for link-local groups
//! (224.0.0.0/24, ff02::1). A member counts every datagram when a frame
//! reaches its interface in the member's own VLAN; a non-member counts every
//! datagram when any frame of the group reaches its interface.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;
use spur_testbed::{InterfaceRef, VlanRange};

/// The highest VLAN ID an access port may carry.
pub const MAX_VLAN: u16 = 4094;

/// The smallest MTU on which Linux keeps IPv6 enabled on a device.
pub const IPV6_MIN_MTU: u32 = 1280;

/// The whole input of the model: plain data, in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// The nodes with their NICs, bridges and macvlans.
    pub nodes: Vec<Node>,
    /// The fabric's L2 segments.
    pub segments: Vec<Segment>,
    /// Every Pod interface the queries may name.
    pub interfaces: Vec<Interface>,
}

/// A node of the testbed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Its physical NICs.
    pub nics: Vec<String>,
    /// Its OVS bridges.
    pub bridges: Vec<OvsBridge>,
    /// Its bridge-mode macvlan interfaces.
    pub macvlans: Vec<Macvlan>,
    /// Its SR-IOV NICs: one embedded switch per PF (a fabric port like a
    /// NIC, named by the PF; not also listed in `nics`).
    pub eswitches: Vec<Eswitch>,
}

/// The embedded switch of an SR-IOV physical function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eswitch {
    /// The PF (on a VM node, the hypervisor's PF the VFs belong to).
    pub pf: String,
    /// The VFs that are Pod interfaces.
    pub vfs: Vec<VfPort>,
}

/// A VF of an [`Eswitch`] that a Pod has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfPort {
    /// The VF's index on its PF.
    pub index: u16,
    /// The VLAN its PF sets for it (0: untagged only).
    pub vlan: u16,
    /// The Pod interface it is (`NAMESPACE/POD@IFNAME`).
    pub interface: String,
}

/// An OVS bridge of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvsBridge {
    /// The bridge's name (unique on the node).
    pub name: String,
    /// The NICs attached as trunk ports (every VLAN, tagged).
    pub uplinks: Vec<String>,
    /// IGMP/MLD snooping; when on, the uplinks flood reports (as the agent
    /// configures them).
    pub mcast_snooping: bool,
    /// The Pods' access ports.
    pub access_ports: Vec<AccessPort>,
}

/// An access port of an OVS bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPort {
    /// The port's name (unique on the node, across its bridges).
    pub name: String,
    /// The VLAN tag; `None` or `Some(0)`: untagged (a port without a tag,
    /// which OVS treats as a trunk of every VLAN).
    pub vlan: Option<u16>,
    /// The Pod interface at the other end (`NAMESPACE/POD@IFNAME`).
    pub interface: String,
}

/// A bridge-mode macvlan interface of a Pod on a node's NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Macvlan {
    /// The parent NIC (the CNI plugin's `master`).
    pub parent: String,
    /// The Pod interface (`NAMESPACE/POD@IFNAME`).
    pub interface: String,
}

/// A NIC of a node, as a fabric segment's port names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct NicRef {
    /// The node.
    pub node: String,
    /// The NIC.
    pub nic: String,
}

impl NicRef {
    /// `node/nic`.
    pub fn new(node: impl Into<String>, nic: impl Into<String>) -> Self {
        NicRef {
            node: node.into(),
            nic: nic.into(),
        }
    }
}

impl std::fmt::Display for NicRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.nic)
    }
}

/// A fabric segment: a learning switch joining node NICs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    /// The segment's name.
    pub name: String,
    /// Its ports.
    pub ports: Vec<NicRef>,
    /// The tagged VLANs its ports carry besides untagged frames; `None`: all.
    pub allowed_vlans: Option<Vec<VlanRange>>,
    /// IGMP/MLD snooping (the harness leaves it off).
    pub mcast_snooping: bool,
}

/// A Pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `NAMESPACE/POD@IFNAME`; the Pod (network namespace) is the part
    /// before `@`.
    pub id: String,
    /// Its addresses with prefix lengths, in the order the interface lists
    /// them (the first of a family is the one pinged).
    pub addresses: Vec<IpNet>,
    /// Its MTU (below [`IPV6_MIN_MTU`] the interface has no IPv6).
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

impl Interface {
    /// An up interface with MTU 1500.
    pub fn new(id: impl Into<String>, addresses: Vec<IpNet>) -> Self {
        Interface {
            id: id.into(),
            addresses,
            mtu: 1500,
            up: true,
        }
    }
}

/// Why a topology or a query cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// An interface name that is not `NAMESPACE/POD@IFNAME`.
    #[error("interface `{id}`: {reason}")]
    InvalidInterface {
        /// The name as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A query or port names an interface the topology does not have.
    #[error("unknown interface `{0}`")]
    UnknownInterface(String),
    /// Two interfaces, nodes, bridges, ports or segments share a name.
    #[error("duplicate {what} `{name}`")]
    Duplicate {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A NIC named by a bridge, macvlan or segment that its node lacks.
    #[error("{user}: node {node} has no NIC `{nic}`")]
    UnknownNic {
        /// Who names it.
        user: String,
        /// The node.
        node: String,
        /// The NIC.
        nic: String,
    },
    /// A segment port on a node the topology lacks.
    #[error("segment {segment}: unknown node `{node}`")]
    UnknownNode {
        /// The segment.
        segment: String,
        /// The node.
        node: String,
    },
    /// One interface attached twice (two ports, or a port and a macvlan).
    #[error("interface `{interface}` is attached twice: {first} and {second}")]
    AttachedTwice {
        /// The interface.
        interface: String,
        /// The first attachment.
        first: String,
        /// The second one.
        second: String,
    },
    /// One port name on two bridges of a node (OVS names ports per node).
    #[error("port {port} is attached to two bridges: {first} and {second}")]
    PortOnTwoBridges {
        /// The port.
        port: String,
        /// The first bridge (`node/bridge`).
        first: String,
        /// The second one.
        second: String,
    },
    /// One NIC used twice (uplink of two bridges, port of two segments, or
    /// an uplink that is also a macvlan parent).
    #[error("NIC {nic} is used twice: {first} and {second}")]
    NicUsedTwice {
        /// The NIC.
        nic: String,
        /// The first use.
        first: String,
        /// The second one.
        second: String,
    },
    /// A VF's VLAN outside 0..=4094.
    #[error("VF {index} of {pf}: VLAN {vlan} is out of range (0 for untagged, 1-4094)")]
    InvalidVfVlan {
        /// The PF (`node/pf`).
        pf: String,
        /// The VF's index.
        index: u16,
        /// The VLAN.
        vlan: u16,
    },
    /// One VF index twice on a PF.
    #[error("VF {index} of {pf} is listed twice")]
    VfTwice {
        /// The PF (`node/pf`).
        pf: String,
        /// The VF's index.
        index: u16,
    },
    /// An access port's VLAN outside 0..=4094.
    #[error(
        "port {port} on {bridge}: VLAN {vlan} is out of range (0 or none for untagged, 1-4094)"
    )]
    InvalidVlan {
        /// The bridge (`node/bridge`).
        bridge: String,
        /// The port.
        port: String,
        /// The VLAN.
        vlan: u16,
    },
    /// Two paths between two switches in one VLAN (no spanning tree runs).
    #[error(
        "L2 loop in VLAN {vlan} through {through}: the testbed's switches run no spanning tree"
    )]
    Loop {
        /// The VLAN (0: untagged).
        vlan: u16,
        /// The link that closes the loop.
        through: String,
    },
    /// Two interfaces of one Pod: the harness never pairs them.
    #[error("`{from}` and `{to}` belong to the same Pod; the harness never pairs them")]
    SamePod {
        /// The source.
        from: String,
        /// The destination.
        to: String,
    },
    /// The destination Pod has two interfaces whose subnets match the reply
    /// equally well: the kernel's choice depends on the order the routes
    /// were added, which the model does not know.
    #[error("Pod {pod}: the reply to {addr} may leave through {} (equal routes)", .interfaces.join(" or "))]
    AmbiguousReplyRoute {
        /// The Pod.
        pod: String,
        /// The address replied to.
        addr: IpAddr,
        /// The interfaces with equally long matching subnets.
        interfaces: Vec<String>,
    },
    /// A multicast query whose group is not a multicast address.
    #[error("{0} is not a multicast group")]
    NotMulticast(IpAddr),
    /// An interface cannot take part in the multicast probe as the harness
    /// runs it (the harness's probe fails the same way).
    #[error("{interface}: {reason}")]
    CannotProbe {
        /// The interface.
        interface: String,
        /// Why.
        reason: String,
    },
}

/// How an interface is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// OVS access port with a tag (1..=4094).
    Tagged(u16),
    /// OVS port without a tag: native VLAN 0, a trunk of every VLAN.
    Untagged,
    /// A macvlan on its parent NIC's hub.
    Macvlan,
    /// An SR-IOV VF on its PF's embedded switch, in this VLAN only (0:
    /// untagged only).
    Vf(u16),
}

impl Mode {
    /// The VLAN the interface's own traffic belongs to.
    fn native(self) -> u16 {
        match self {
            Mode::Tagged(t) | Mode::Vf(t) => t,
            Mode::Untagged | Mode::Macvlan => 0,
        }
    }

    /// Whether frames of `vlan` reach the interface at all.
    fn carries(self, vlan: u16) -> bool {
        match self {
            Mode::Tagged(t) | Mode::Vf(t) => t == vlan,
            Mode::Untagged => true,
            Mode::Macvlan => vlan == 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Attach {
    switch: usize,
    mode: Mode,
    what: String,
}

#[derive(Debug, Clone)]
struct Iface {
    spec: Interface,
    pod: String,
    at: Option<Attach>,
    /// Its L2 domain (union-find root), `None` when detached.
    domain: Option<usize>,
}

impl Iface {
    /// The addresses the kernel has (IPv6 is off below 1280 bytes).
    fn usable(&self) -> impl Iterator<Item = &IpNet> {
        let v6 = self.spec.mtu >= IPV6_MIN_MTU;
        self.spec
            .addresses
            .iter()
            .filter(move |a| v6 || matches!(a, IpNet::V4(_)))
    }

    fn first_of(&self, v4: bool) -> Option<IpAddr> {
        self.usable().map(IpNet::addr).find(|a| a.is_ipv4() == v4)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ovs,
    Segment,
    Hub,
    Eswitch,
}

#[derive(Debug, Clone)]
struct Switch {
    kind: Kind,
    snooping: bool,
    endpoints: Vec<usize>,
    links: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Link {
    /// (switch, floods reports out of this link) at each end.
    ends: [(usize, bool); 2],
    /// The VLANs it carries (`None`: all).
    vlans: Option<BTreeSet<u16>>,
    name: String,
}

impl Link {
    fn passes(&self, vlan: u16) -> bool {
        self.vlans.as_ref().is_none_or(|v| v.contains(&vlan))
    }

    /// The far end seen from `sw`, and whether `sw` floods reports into it.
    fn from(&self, sw: usize) -> (usize, bool) {
        if self.ends[0].0 == sw {
            (self.ends[1].0, self.ends[0].1)
        } else {
            (self.ends[0].0, self.ends[1].1)
        }
    }
}

/// A port of a switch: an interface or a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Port {
    Endpoint(usize),
    Link(usize),
}

/// A built model; queries take `&self`.
#[derive(Debug, Clone)]
pub struct Dataplane {
    ifaces: Vec<Iface>,
    by_id: BTreeMap<String, usize>,
    by_pod: BTreeMap<String, Vec<usize>>,
    switches: Vec<Switch>,
    links: Vec<Link>,
}

fn dup(what: &'static str, name: impl Into<String>) -> DataplaneError {
    DataplaneError::Duplicate {
        what,
        name: name.into(),
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            let up = self.0[self.0[x]];
            self.0[x] = up;
            x = up;
        }
        x
    }

    /// False when `a` and `b` were already joined.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.0[hi] = lo;
        true
    }
}

impl Dataplane {
    /// Checks `topology` and precomputes its L2 domains. Fails naming the
    /// interface, port, NIC or node when the input is inconsistent, or the
    /// VLAN and link of an L2 loop. The result does not depend on the
    /// order of any list in the input except each interface's addresses.
    pub fn build(topology: &Topology) -> Result<Dataplane, DataplaneError> {
        let mut ifaces = Vec::with_capacity(topology.interfaces.len());
        let mut by_id = BTreeMap::new();
        let mut sorted: Vec<&Interface> = topology.interfaces.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        for spec in sorted {
            let r: InterfaceRef = spec.id.parse().map_err(|e: spur_testbed::refs::RefError| {
                DataplaneError::InvalidInterface {
                    id: spec.id.clone(),
                    reason: e.to_string(),
                }
            })?;
            if by_id.insert(spec.id.clone(), ifaces.len()).is_some() {
                return Err(dup("interface", &spec.id));
            }
            ifaces.push(Iface {
                spec: spec.clone(),
                pod: r.pod.to_string(),
                at: None,
                domain: None,
            });
        }
        let mut by_pod: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, f) in ifaces.iter().enumerate() {
            by_pod.entry(f.pod.clone()).or_default().push(i);
        }

        // Switches in a canonical order: nodes by name, their bridges by
        // name, hubs by NIC, then segments by name.
        let mut nodes: Vec<&Node> = topology.nodes.iter().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut switches: Vec<Switch> = Vec::new();
        // (node, nic) -> (switch owning the NIC's node side, what, kind).
        let mut nic_owner: BTreeMap<NicRef, (usize, String)> = BTreeMap::new();
        let mut node_nics: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let attach = |ifaces: &mut Vec<Iface>,
                      by_id: &BTreeMap<String, usize>,
                      id: &str,
                      a: Attach|
         -> Result<(), DataplaneError> {
            let i = *by_id
                .get(id)
                .ok_or_else(|| DataplaneError::UnknownInterface(id.to_string()))?;
            if let Some(prev) = &ifaces[i].at {
                let (first, second) = if prev.what <= a.what {
                    (prev.what.clone(), a.what)
                } else {
                    (a.what, prev.what.clone())
                };
                return Err(DataplaneError::AttachedTwice {
                    interface: id.to_string(),
                    first,
                    second,
                });
            }
            ifaces[i].at = Some(a);
            Ok(())
        };
        for node in &nodes {
            // The node's ports to the fabric: its NICs and its PFs.
            let all_nics: Vec<&str> = node
                .nics
                .iter()
                .map(String::as_str)
                .chain(node.eswitches.iter().map(|e| e.pf.as_str()))
                .collect();
            let nics: BTreeSet<&str> = all_nics.iter().copied().collect();
            if nics.len() != all_nics.len() {
                let mut seen = BTreeSet::new();
                let again = all_nics.iter().find(|n| !seen.insert(**n));
                let nic = again.copied().unwrap_or_default();
                return Err(dup("NIC", format!("{}/{nic}", node.name)));
            }
            if node_nics.insert(&node.name, nics.clone()).is_some() {
                return Err(dup("node", &node.name));
            }
            let mut bridges: Vec<&OvsBridge> = node.bridges.iter().collect();
            bridges.sort_by(|a, b| a.name.cmp(&b.name));
            let mut port_names: BTreeMap<&str, String> = BTreeMap::new();
            for (k, br) in bridges.iter().enumerate() {
                if k > 0 && bridges[k - 1].name == br.name {
                    return Err(dup("bridge", format!("{}/{}", node.name, br.name)));
                }
                let sw = switches.len();
                let bname = format!("{}/{}", node.name, br.name);
                let mut uplinks: Vec<&String> = br.uplinks.iter().collect();
                uplinks.sort();
                for up in uplinks {
                    let what = format!("uplink of bridge {bname}");
                    if !nics.contains(up.as_str()) {
                        return Err(DataplaneError::UnknownNic {
                            user: format!("bridge {bname}"),
                            node: node.name.clone(),
                            nic: up.clone(),
                        });
                    }
                    let key = NicRef::new(&node.name, up);
                    if let Some((_, prev)) = nic_owner.get(&key) {
                        return Err(DataplaneError::NicUsedTwice {
                            nic: key.to_string(),
                            first: prev.clone(),
                            second: what,
                        });
                    }
                    nic_owner.insert(key, (sw, what));
                }
                let mut ports: Vec<&AccessPort> = br.access_ports.iter().collect();
                ports.sort_by(|a, b| a.name.cmp(&b.name));
                for p in ports {
                    if let Some(prev) = port_names.insert(&p.name, bname.clone()) {
                        let (first, second) = if prev <= bname {
                            (prev, bname.clone())
                        } else {
                            (bname.clone(), prev)
                        };
                        return Err(DataplaneError::PortOnTwoBridges {
                            port: p.name.clone(),
                            first,
                            second,
                        });
                    }
                    let mode = match p.vlan {
                        None | Some(0) => Mode::Untagged,
                        Some(v) if v <= MAX_VLAN => Mode::Tagged(v),
                        Some(v) => {
                            return Err(DataplaneError::InvalidVlan {
                                bridge: bname.clone(),
                                port: p.name.clone(),
                                vlan: v,
                            })
                        }
                    };
                    let what = format!("port {} of bridge {bname}", p.name);
                    attach(
                        &mut ifaces,
                        &by_id,
                        &p.interface,
                        Attach {
                            switch: sw,
                            mode,
                            what,
                        },
                    )?;
                }
                switches.push(Switch {
                    kind: Kind::Ovs,
                    snooping: br.mcast_snooping,
                    endpoints: Vec::new(),
                    links: Vec::new(),
                });
            }
            let mut macvlans: Vec<&Macvlan> = node.macvlans.iter().collect();
            macvlans.sort_by(|a, b| (&a.parent, &a.interface).cmp(&(&b.parent, &b.interface)));
            let mut hubs: BTreeMap<&str, usize> = BTreeMap::new();
            for m in macvlans {
                let key = NicRef::new(&node.name, &m.parent);
                if !nics.contains(m.parent.as_str()) {
                    return Err(DataplaneError::UnknownNic {
                        user: format!("macvlan {}", m.interface),
                        node: node.name.clone(),
                        nic: m.parent.clone(),
                    });
                }
                let sw = match hubs.get(m.parent.as_str()) {
                    Some(&sw) => sw,
                    None => {
                        let what = format!("macvlan parent of {}", m.interface);
                        if let Some((_, prev)) = nic_owner.get(&key) {
                            return Err(DataplaneError::NicUsedTwice {
                                nic: key.to_string(),
                                first: prev.clone(),
                                second: what,
                            });
                        }
                        let sw = switches.len();
                        switches.push(Switch {
                            kind: Kind::Hub,
                            snooping: false,
                            endpoints: Vec::new(),
                            links: Vec::new(),
                        });
                        nic_owner.insert(key.clone(), (sw, what));
                        hubs.insert(&m.parent, sw);
                        sw
                    }
                };
                attach(
                    &mut ifaces,
                    &by_id,
                    &m.interface,
                    Attach {
                        switch: sw,
                        mode: Mode::Macvlan,
                        what: format!("macvlan on {key}"),
                    },
                )?;
            }
            let mut eswitches: Vec<&Eswitch> = node.eswitches.iter().collect();
            eswitches.sort_by(|a, b| a.pf.cmp(&b.pf));
            for e in eswitches {
                let key = NicRef::new(&node.name, &e.pf);
                let what = format!("embedded switch of PF {key}");
                if let Some((_, prev)) = nic_owner.get(&key) {
                    return Err(DataplaneError::NicUsedTwice {
                        nic: key.to_string(),
                        first: prev.clone(),
                        second: what,
                    });
                }
                let sw = switches.len();
                switches.push(Switch {
                    kind: Kind::Eswitch,
                    snooping: false,
                    endpoints: Vec::new(),
                    links: Vec::new(),
                });
                nic_owner.insert(key.clone(), (sw, what));
                let mut vfs: Vec<&VfPort> = e.vfs.iter().collect();
                vfs.sort_by_key(|v| (v.index, v.interface.clone()));
                for (k, vf) in vfs.iter().enumerate() {
                    if k > 0 && vfs[k - 1].index == vf.index {
                        return Err(DataplaneError::VfTwice {
                            pf: key.to_string(),
                            index: vf.index,
                        });
                    }
                    if vf.vlan > MAX_VLAN {
                        return Err(DataplaneError::InvalidVfVlan {
                            pf: key.to_string(),
                            index: vf.index,
                            vlan: vf.vlan,
                        });
                    }
                    attach(
                        &mut ifaces,
                        &by_id,
                        &vf.interface,
                        Attach {
                            switch: sw,
                            mode: Mode::Vf(vf.vlan),
                            what: format!("VF {} of {key}", vf.index),
                        },
                    )?;
                }
            }
        }

        let mut segments: Vec<&Segment> = topology.segments.iter().collect();
        segments.sort_by(|a, b| a.name.cmp(&b.name));
        let mut links: Vec<Link> = Vec::new();
        let mut on_segment: BTreeMap<NicRef, String> = BTreeMap::new();
        for (k, seg) in segments.iter().enumerate() {
            if k > 0 && segments[k - 1].name == seg.name {
                return Err(dup("segment", &seg.name));
            }
            let sw = switches.len();
            switches.push(Switch {
                kind: Kind::Segment,
                snooping: seg.mcast_snooping,
                endpoints: Vec::new(),
                links: Vec::new(),
            });
            let allowed: Option<BTreeSet<u16>> = seg.allowed_vlans.as_ref().map(|r| {
                std::iter::once(0)
                    .chain(r.iter().flat_map(|r| r.start..=r.end))
                    .collect()
            });
            let mut ports = seg.ports.clone();
            ports.sort();
            for p in ports {
                let Some(nics) = node_nics.get(p.node.as_str()) else {
                    return Err(DataplaneError::UnknownNode {
                        segment: seg.name.clone(),
                        node: p.node.clone(),
                    });
                };
                if !nics.contains(p.nic.as_str()) {
                    return Err(DataplaneError::UnknownNic {
                        user: format!("segment {}", seg.name),
                        node: p.node.clone(),
                        nic: p.nic.clone(),
                    });
                }
                let what = format!("port of segment {}", seg.name);
                if let Some(prev) = on_segment.insert(p.clone(), what.clone()) {
                    return Err(DataplaneError::NicUsedTwice {
                        nic: p.to_string(),
                        first: prev,
                        second: what,
                    });
                }
                let Some((owner, _)) = nic_owner.get(&p) else {
                    continue; // Nothing on the node side: frames end there.
                };
                let (vlans, flood) = match switches[*owner].kind {
                    Kind::Hub => (Some(BTreeSet::from([0])), false),
                    _ => (allowed.clone(), switches[*owner].snooping),
                };
                links.push(Link {
                    ends: [(*owner, flood), (sw, false)],
                    vlans,
                    name: format!("{p} on segment {}", seg.name),
                });
            }
        }
        for (l, link) in links.iter().enumerate() {
            for (sw, _) in link.ends {
                switches[sw].links.push(l);
            }
        }
        for (i, f) in ifaces.iter().enumerate() {
            if let Some(a) = &f.at {
                switches[a.switch].endpoints.push(i);
            }
        }

        // L2 domains: union-find over (switch, VLAN in use).
        let used: BTreeSet<u16> = ifaces
            .iter()
            .filter_map(|f| f.at.as_ref().map(|a| a.mode.native()))
            .collect();
        let slots: BTreeMap<u16, usize> = used.iter().enumerate().map(|(i, v)| (*v, i)).collect();
        let n = slots.len();
        let mut uf = UnionFind((0..switches.len() * n).collect());
        for link in &links {
            for (&vlan, &slot) in &slots {
                if !link.passes(vlan) {
                    continue;
                }
                let (a, b) = (link.ends[0].0 * n + slot, link.ends[1].0 * n + slot);
                if !uf.union(a, b) {
                    return Err(DataplaneError::Loop {
                        vlan,
                        through: link.name.clone(),
                    });
                }
            }
        }
        for f in &mut ifaces {
            if let Some(a) = &f.at {
                if let Some(&slot) = slots.get(&a.mode.native()) {
                    f.domain = Some(uf.find(a.switch * n + slot));
                }
            }
        }
        Ok(Dataplane {
            ifaces,
            by_id,
            by_pod,
            switches,
            links,
        })
    }

    fn get(&self, id: &str) -> Result<usize, DataplaneError> {
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| DataplaneError::UnknownInterface(id.to_string()))
    }

    /// The L2 broadcast domain of an interface (None: detached). Two
    /// interfaces share one exactly when [`Dataplane::same_l2`] says so.
    pub fn l2_domain(&self, id: &str) -> Result<Option<usize>, DataplaneError> {
        Ok(self.ifaces[self.get(id)?].domain)
    }

    /// True when the two interfaces share an L2 broadcast domain (the same
    /// VLAN, connected through bridges and segments). Detached interfaces
    /// share none.
    pub fn same_l2(&self, a: &str, b: &str) -> Result<bool, DataplaneError> {
        let (a, b) = (self.get(a)?, self.get(b)?);
        Ok(matches!(
            (self.ifaces[a].domain, self.ifaces[b].domain),
            (Some(x), Some(y)) if x == y
        ))
    }

    /// The interface of `pod` whose subnet is the longest match for `addr`
    /// (the reply's route); `None` when no up interface's subnet covers it.
    fn reply_route(&self, pod: &str, addr: IpAddr) -> Result<Option<usize>, DataplaneError> {
        let mut best: Option<(u8, BTreeSet<usize>)> = None;
        for &i in self.by_pod.get(pod).map(Vec::as_slice).unwrap_or_default() {
            let f = &self.ifaces[i];
            if !f.spec.up {
                continue;
            }
            for net in f.usable().filter(|n| n.contains(&addr)) {
                let len = net.prefix_len();
                match &mut best {
                    Some((l, set)) if *l == len => {
                        set.insert(i);
                    }
                    Some((l, _)) if *l > len => {}
                    _ => best = Some((len, BTreeSet::from([i]))),
                }
            }
        }
        match best {
            None => Ok(None),
            Some((_, set)) if set.len() == 1 => Ok(set.into_iter().next()),
            Some((_, set)) => Err(DataplaneError::AmbiguousReplyRoute {
                pod: pod.to_string(),
                addr,
                interfaces: set
                    .into_iter()
                    .map(|i| self.ifaces[i].spec.id.clone())
                    .collect(),
            }),
        }
    }

    fn reach_family(&self, a: usize, b: usize, v4: bool) -> Result<bool, DataplaneError> {
        let (from, to) = (&self.ifaces[a], &self.ifaces[b]);
        let Some(dst) = to.first_of(v4) else {
            return Ok(false);
        };
        if !from.spec.up || !to.spec.up {
            return Ok(false);
        }
        if !matches!((from.domain, to.domain), (Some(x), Some(y)) if x == y) {
            return Ok(false);
        }
        let on_link = from
            .usable()
            .find(|n| n.addr().is_ipv4() == v4 && n.contains(&dst))
            .map(IpNet::addr);
        if !v4 && on_link.is_none() {
            return Ok(false);
        }
        let Some(src) = on_link.or_else(|| from.first_of(v4)) else {
            return Ok(false);
        };
        Ok(self.reply_route(&to.pod, src)? == Some(b))
    }

    /// Whether `from` reaches `to` as the harness pings: with every IP
    /// family both have (one ping per family to `to`'s first address of
    /// it), all of which must answer; no family in common: false. See the
    /// module doc for the per-family rule. Fails for unknown interfaces,
    /// two interfaces of one Pod, or an ambiguous reply route.
    pub fn reachable(&self, from: &str, to: &str) -> Result<bool, DataplaneError> {
        let (a, b) = (self.get(from)?, self.get(to)?);
        if self.ifaces[a].pod == self.ifaces[b].pod {
            return Err(DataplaneError::SamePod {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        let mut any = false;
        for v4 in [true, false] {
            if self.ifaces[a].first_of(v4).is_none() || self.ifaces[b].first_of(v4).is_none() {
                continue;
            }
            any = true;
            if !self.reach_family(a, b, v4)? {
                return Ok(false);
            }
        }
        Ok(any)
    }

    /// [`Dataplane::reachable`] for each pair, in order.
    pub fn reachable_pairs<S: AsRef<str>>(
        &self,
        pairs: &[(S, S)],
    ) -> Result<Vec<bool>, DataplaneError> {
        pairs
            .iter()
            .map(|(a, b)| self.reachable(a.as_ref(), b.as_ref()))
            .collect()
    }

    /// The reachability matrix over `ids`: for every ordered pair of
    /// interfaces of different Pods, [`Dataplane::reachable`] (the report's
    /// `reachability` shape: `from -> to -> bool`).
    pub fn reachability<S: AsRef<str>>(
        &self,
        ids: &[S],
    ) -> Result<BTreeMap<String, BTreeMap<String, bool>>, DataplaneError> {
        let idx: BTreeSet<usize> = ids
            .iter()
            .map(|s| self.get(s.as_ref()))
            .collect::<Result<_, _>>()?;
        let mut out = BTreeMap::new();
        for &a in &idx {
            let mut row = BTreeMap::new();
            for &b in &idx {
                if self.ifaces[a].pod == self.ifaces[b].pod {
                    continue;
                }
                let (fa, fb) = (&self.ifaces[a].spec.id, &self.ifaces[b].spec.id);
                row.insert(fb.clone(), self.reachable(fa, fb)?);
            }
            out.insert(self.ifaces[a].spec.id.clone(), row);
        }
        Ok(out)
    }

    /// How many of `count` datagrams to `group` sent by `sender` each of
    /// `members` (which joined the group on that interface) and
    /// `non_members` (which count frames of the group at L2) receive:
    /// `count` or 0, see the module doc. Fails, as the harness's probe
    /// does, when the sender is down or lacks an address of an IPv4
    /// group's family, or a member lacks one to join with; and for unknown
    /// interfaces or a group that is not multicast. (The harness reports a
    /// listed interface that no Pod has as receiving 0, and every listener
    /// as 0 when the sender is missing: a caller mirrors that by leaving
    /// such interfaces out.) A detached sender reaches no one.
    pub fn multicast<M: AsRef<str>, N: AsRef<str>>(
        &self,
        group: IpAddr,
        sender: &str,
        members: &[M],
        non_members: &[N],
        count: u32,
    ) -> Result<BTreeMap<String, u32>, DataplaneError> {
        if !group.is_multicast() {
            return Err(DataplaneError::NotMulticast(group));
        }
        let v4 = group.is_ipv4();
        let s = self.get(sender)?;
        let members: BTreeSet<usize> = members
            .iter()
            .map(|m| self.get(m.as_ref()))
            .collect::<Result<_, _>>()?;
        let non_members: BTreeSet<usize> = non_members
            .iter()
            .map(|m| self.get(m.as_ref()))
            .collect::<Result<_, _>>()?;
        let fam = if v4 { "IPv4" } else { "IPv6" };
        let cannot = |i: usize, reason: String| DataplaneError::CannotProbe {
            interface: self.ifaces[i].spec.id.clone(),
            reason,
        };
        let ipv6_off = |i: usize| !v4 && self.ifaces[i].spec.mtu < IPV6_MIN_MTU;
        let sf = &self.ifaces[s];
        if v4 && sf.first_of(true).is_none() {
            return Err(cannot(
                s,
                format!("has no IPv4 address to send to {group} from"),
            ));
        }
        if ipv6_off(s) {
            return Err(cannot(s, "has no IPv6 (MTU below 1280)".into()));
        }
        if !sf.spec.up {
            return Err(cannot(s, format!("is down: cannot send to {group}")));
        }
        for &m in &members {
            if v4 && self.ifaces[m].first_of(true).is_none() {
                return Err(cannot(
                    m,
                    format!("has no {fam} address to join {group} with"),
                ));
            }
            if ipv6_off(m) {
                return Err(cannot(m, "has no IPv6 (MTU below 1280)".into()));
            }
        }
        let mut out: BTreeMap<String, u32> = members
            .iter()
            .chain(&non_members)
            .map(|&i| (self.ifaces[i].spec.id.clone(), 0))
            .collect();
        let Some(at) = &sf.at else {
            return Ok(out);
        };
        let vlan = at.mode.native();
        let flood_always = match group {
            IpAddr::V4(g) => g.octets()[..3] == [224, 0, 0],
            IpAddr::V6(g) => g == std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        };

        // Reports: every up member in the data's VLAN.
        let mut learned: BTreeMap<usize, BTreeSet<Port>> = BTreeMap::new();
        for &m in &members {
            let f = &self.ifaces[m];
            let Some(ma) = &f.at else { continue };
            if !f.spec.up || ma.mode.native() != vlan {
                continue;
            }
            self.walk(ma.switch, Port::Endpoint(m), vlan, |sw, ingress| {
                let s = &self.switches[sw];
                if s.snooping {
                    learned.entry(sw).or_default().insert(ingress);
                }
                // Reports go to flood-reports ports of a snooping switch,
                // everywhere on one without snooping.
                Forward::Links(if s.snooping {
                    LinkRule::FloodReports
                } else {
                    LinkRule::All
                })
            });
        }

        // Data.
        let mut reached: BTreeSet<usize> = BTreeSet::new();
        self.walk(at.switch, Port::Endpoint(s), vlan, |sw, ingress| {
            let s = &self.switches[sw];
            let learned_here = learned.get(&sw).filter(|l| !l.is_empty());
            let only = match learned_here {
                Some(l) if s.snooping && !flood_always => Some(l),
                _ => None,
            };
            for &e in &s.endpoints {
                if Port::Endpoint(e) == ingress {
                    continue;
                }
                let Some(ea) = &self.ifaces[e].at else {
                    continue;
                };
                if !ea.mode.carries(vlan) {
                    continue;
                }
                let deliver = match s.kind {
                    // The macvlan's multicast filter: joined groups only.
                    Kind::Hub => flood_always || members.contains(&e),
                    _ => only.is_none_or(|l| l.contains(&Port::Endpoint(e))),
                };
                if deliver {
                    reached.insert(e);
                }
            }
            match only {
                Some(l) => Forward::Only(l.clone()),
                None => Forward::Links(LinkRule::All),
            }
        });

        for &i in &members {
            let f = &self.ifaces[i];
            let own_vlan = f.at.as_ref().is_some_and(|a| a.mode.native() == vlan);
            if f.spec.up && own_vlan && reached.contains(&i) {
                out.insert(f.spec.id.clone(), count);
            }
        }
        for &i in &non_members {
            let f = &self.ifaces[i];
            if f.spec.up && reached.contains(&i) && !members.contains(&i) {
                out.insert(f.spec.id.clone(), count);
            }
        }
        Ok(out)
    }

    /// Visits the switches a frame of `vlan` entering `start` through
    /// `ingress` reaches; `visit` says where each switch forwards it.
    fn walk(
        &self,
        start: usize,
        ingress: Port,
        vlan: u16,
        mut visit: impl FnMut(usize, Port) -> Forward,
    ) {
        let mut seen = BTreeSet::from([start]);
        let mut queue = VecDeque::from([(start, ingress)]);
        while let Some((sw, ingress)) = queue.pop_front() {
            let fwd = visit(sw, ingress);
            for &l in &self.switches[sw].links {
                let link = &self.links[l];
                if Port::Link(l) == ingress || !link.passes(vlan) {
                    continue;
                }
                let (next, flood_reports) = link.from(sw);
                let out = match &fwd {
                    Forward::Links(LinkRule::All) => true,
                    Forward::Links(LinkRule::FloodReports) => flood_reports,
                    Forward::Only(set) => set.contains(&Port::Link(l)),
                };
                if out && seen.insert(next) {
                    queue.push_back((next, Port::Link(l)));
                }
            }
        }
    }
}

/// Which links a switch forwards a frame to.
enum LinkRule {
    All,
    FloodReports,
}

/// A switch's forwarding decision for one frame.
enum Forward {
    Links(LinkRule),
    Only(BTreeSet<Port>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn itf(id: &str, addrs: &[&str]) -> Interface {
        Interface::new(id, addrs.iter().map(|a| net(a)).collect())
    }

    fn port(name: &str, vlan: Option<u16>, interface: &str) -> AccessPort {
        AccessPort {
            name: name.into(),
            vlan,
            interface: interface.into(),
        }
    }

    fn bridge(name: &str, uplinks: &[&str], snoop: bool, ports: Vec<AccessPort>) -> OvsBridge {
        OvsBridge {
            name: name.into(),
            uplinks: uplinks.iter().map(|s| s.to_string()).collect(),
            mcast_snooping: snoop,
            access_ports: ports,
        }
    }

    fn node(name: &str, nics: &[&str], bridges: Vec<OvsBridge>, macvlans: Vec<Macvlan>) -> Node {
        Node {
            name: name.into(),
            nics: nics.iter().map(|s| s.to_string()).collect(),
            bridges,
            macvlans,
            eswitches: Vec::new(),
        }
    }

    fn macvlan(parent: &str, interface: &str) -> Macvlan {
        Macvlan {
            parent: parent.into(),
            interface: interface.into(),
        }
    }

    fn segment(name: &str, ports: &[&str], allowed: Option<&[&str]>) -> Segment {
        Segment {
            name: name.into(),
            ports: ports
                .iter()
                .map(|p| {
                    let (n, c) = p.split_once('/').unwrap();
                    NicRef::new(n, c)
                })
                .collect(),
            allowed_vlans: allowed.map(|a| a.iter().map(|r| r.parse().unwrap()).collect()),
            mcast_snooping: false,
        }
    }

    /// Two nodes, eth1 of each an uplink of `br` (snooping as given) on
    /// segment tor-1; `ports[n]` are node n's access ports.
    fn two_nodes(
        snoop: bool,
        a: Vec<AccessPort>,
        b: Vec<AccessPort>,
        interfaces: Vec<Interface>,
    ) -> Dataplane {
        Dataplane::build(&Topology {
            nodes: vec![
                node(
                    "node-a",
                    &["eth1"],
                    vec![bridge("br", &["eth1"], snoop, a)],
                    vec![],
                ),
                node(
                    "node-b",
                    &["eth1"],
                    vec![bridge("br", &["eth1"], snoop, b)],
                    vec![],
                ),
            ],
            segments: vec![segment("tor-1", &["node-a/eth1", "node-b/eth1"], None)],
            interfaces,
        })
        .unwrap()
    }

    #[test]
    fn same_vlan_across_two_nodes_via_a_segment_reaches_and_other_vlans_do_not() {
        let dp = two_nodes(
            false,
            vec![
                port("p1", Some(100), "d/a@eth1"),
                port("p2", Some(200), "d/c@eth1"),
            ],
            vec![port("p1", Some(100), "d/b@eth1")],
            vec![
                itf("d/a@eth1", &["10.0.0.1/24"]),
                itf("d/b@eth1", &["10.0.0.2/24"]),
                itf("d/c@eth1", &["10.0.0.3/24"]),
            ],
        );
        assert!(dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        assert!(dp.reachable("d/b@eth1", "d/a@eth1").unwrap());
        assert!(!dp.reachable("d/a@eth1", "d/c@eth1").unwrap());
        assert!(!dp.reachable("d/c@eth1", "d/b@eth1").unwrap());
        assert!(dp.same_l2("d/a@eth1", "d/b@eth1").unwrap());
        assert!(!dp.same_l2("d/a@eth1", "d/c@eth1").unwrap());
    }

    /// The vlan-isolation testbed: one subnet on two VLANs, and a segment
    /// that carries VLAN 100 only.
    fn vlan_isolation() -> Dataplane {
        let pod = |n: &str, i: &str, a: &str| itf(&format!("default/{n}@{i}"), &[a]);
        let nodes = vec![
            node(
                "node-a",
                &["eth1", "eth2"],
                vec![
                    bridge(
                        "br-secondary",
                        &["eth1"],
                        false,
                        vec![
                            port("a1", Some(100), "default/tenant-a-1@eth1"),
                            port("b1", Some(200), "default/tenant-b-1@eth1"),
                        ],
                    ),
                    bridge(
                        "br-b",
                        &["eth2"],
                        false,
                        vec![
                            port("t1a", Some(100), "default/trunk-1@eth1"),
                            port("t1b", Some(300), "default/trunk-1@eth2"),
                            port("t3", Some(300), "default/trunk300-local@eth1"),
                        ],
                    ),
                ],
                vec![],
            ),
            node(
                "node-b",
                &["eth1", "eth2"],
                vec![
                    bridge(
                        "br-secondary",
                        &["eth1"],
                        false,
                        vec![
                            port("a2", Some(100), "default/tenant-a-2@eth1"),
                            port("b2", Some(200), "default/tenant-b-2@eth1"),
                        ],
                    ),
                    bridge(
                        "br-b",
                        &["eth2"],
                        false,
                        vec![
                            port("t2a", Some(100), "default/trunk-2@eth1"),
                            port("t2b", Some(300), "default/trunk-2@eth2"),
                        ],
                    ),
                ],
                vec![],
            ),
        ];
        Dataplane::build(&Topology {
            nodes,
            segments: vec![
                segment("tor-1", &["node-a/eth1", "node-b/eth1"], None),
                segment("tor-2", &["node-a/eth2", "node-b/eth2"], Some(&["100"])),
            ],
            interfaces: vec![
                pod("tenant-a-1", "eth1", "10.10.0.10/24"),
                pod("tenant-a-2", "eth1", "10.10.0.11/24"),
                pod("tenant-b-1", "eth1", "10.10.0.50/24"),
                pod("tenant-b-2", "eth1", "10.10.0.51/24"),
                pod("trunk-1", "eth1", "10.20.0.10/24"),
                pod("trunk-1", "eth2", "10.30.0.10/24"),
                pod("trunk-2", "eth1", "10.20.0.11/24"),
                pod("trunk-2", "eth2", "10.30.0.11/24"),
                pod("trunk300-local", "eth1", "10.30.0.12/24"),
            ],
        })
        .unwrap()
    }

    /// Checks a reachability matrix against groups as expect.yaml states
    /// them.
    fn assert_groups(dp: &Dataplane, groups: &[&[&str]]) {
        let ids: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        let m = dp.reachability(&ids).unwrap();
        let group_of = |id: &str| groups.iter().position(|g| g.contains(&id)).unwrap();
        for (from, row) in &m {
            for (to, ok) in row {
                assert_eq!(*ok, group_of(from) == group_of(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn same_subnet_on_two_vlans_is_isolated_and_allowed_vlans_drop_a_vlan() {
        let dp = vlan_isolation();
        assert_groups(
            &dp,
            &[
                &["default/tenant-a-1@eth1", "default/tenant-a-2@eth1"],
                &["default/tenant-b-1@eth1", "default/tenant-b-2@eth1"],
                &["default/trunk-1@eth1", "default/trunk-2@eth1"],
                &["default/trunk-1@eth2", "default/trunk300-local@eth1"],
                &["default/trunk-2@eth2"],
            ],
        );
    }

    #[test]
    fn allowed_vlans_keep_untagged_frames() {
        let dp = Dataplane::build(&Topology {
            nodes: vec![
                node(
                    "a",
                    &["eth1"],
                    vec![bridge(
                        "br",
                        &["eth1"],
                        false,
                        vec![port("p", None, "d/a@eth1")],
                    )],
                    vec![],
                ),
                node(
                    "b",
                    &["eth1"],
                    vec![bridge(
                        "br",
                        &["eth1"],
                        false,
                        vec![port("p", Some(0), "d/b@eth1")],
                    )],
                    vec![],
                ),
            ],
            segments: vec![segment("t", &["a/eth1", "b/eth1"], Some(&["100"]))],
            interfaces: vec![
                itf("d/a@eth1", &["10.0.0.1/24"]),
                itf("d/b@eth1", &["10.0.0.2/24"]),
            ],
        })
        .unwrap();
        assert!(dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
    }

    #[test]
    fn untagged_access_ports_reach_each_other_and_not_tagged_ones() {
        let dp = two_nodes(
            false,
            vec![
                port("p1", None, "d/a@eth1"),
                port("p2", Some(5), "d/c@eth1"),
            ],
            vec![port("p1", Some(0), "d/b@eth1")],
            vec![
                itf("d/a@eth1", &["10.0.0.1/24"]),
                itf("d/b@eth1", &["10.0.0.2/24"]),
                itf("d/c@eth1", &["10.0.0.3/24"]),
            ],
        );
        assert!(dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        assert!(!dp.reachable("d/a@eth1", "d/c@eth1").unwrap());
        assert!(!dp.reachable("d/c@eth1", "d/b@eth1").unwrap());
    }

    /// seed-antrea-multus: eth1 uplinks of an OVS bridge on tor-1, eth2 the
    /// macvlan parent on tor-2.
    fn antrea_multus() -> Dataplane {
        Dataplane::build(&Topology {
            nodes: vec![
                node(
                    "node-a",
                    &["eth1", "eth2"],
                    vec![bridge(
                        "br-secondary",
                        &["eth1"],
                        false,
                        vec![port("pa", Some(100), "default/samplepod-a@net1")],
                    )],
                    vec![
                        macvlan("eth2", "default/samplepod-a@net2"),
                        macvlan("eth2", "default/samplepod-c@net1"),
                    ],
                ),
                node(
                    "node-b",
                    &["eth1", "eth2"],
                    vec![bridge(
                        "br-secondary",
                        &["eth1"],
                        false,
                        vec![port("pb", Some(100), "default/samplepod-b@net1")],
                    )],
                    vec![macvlan("eth2", "default/samplepod-b@net2")],
                ),
            ],
            segments: vec![
                segment("tor-1", &["node-a/eth1", "node-b/eth1"], None),
                segment("tor-2", &["node-a/eth2", "node-b/eth2"], None),
            ],
            interfaces: vec![
                itf("default/samplepod-a@net1", &["10.10.1.2/24"]),
                itf("default/samplepod-b@net1", &["10.10.1.3/24"]),
                itf("default/samplepod-a@net2", &["192.168.1.2/24"]),
                itf("default/samplepod-b@net2", &["192.168.1.3/24"]),
                itf("default/samplepod-c@net1", &["192.168.1.4/24"]),
            ],
        })
        .unwrap()
    }

    #[test]
    fn macvlan_reaches_macvlan_on_one_nic_and_across_the_fabric() {
        let dp = antrea_multus();
        assert_groups(
            &dp,
            &[
                &["default/samplepod-a@net1", "default/samplepod-b@net1"],
                &[
                    "default/samplepod-a@net2",
                    "default/samplepod-b@net2",
                    "default/samplepod-c@net1",
                ],
            ],
        );
    }

    #[test]
    fn macvlan_reaches_an_untagged_ovs_port_across_the_fabric_only() {
        let dp = Dataplane::build(&Topology {
            nodes: vec![
                node("a", &["eth1"], vec![], vec![macvlan("eth1", "d/m@net1")]),
                node(
                    "b",
                    &["eth1"],
                    vec![bridge(
                        "br",
                        &["eth1"],
                        false,
                        vec![port("u", None, "d/u@eth1"), port("t", Some(7), "d/t@eth1")],
                    )],
                    vec![],
                ),
            ],
            segments: vec![segment("s", &["a/eth1", "b/eth1"], None)],
            interfaces: vec![
                itf("d/m@net1", &["10.0.0.1/24"]),
                itf("d/u@eth1", &["10.0.0.2/24"]),
                itf("d/t@eth1", &["10.0.0.3/24"]),
            ],
        })
        .unwrap();
        assert!(dp.reachable("d/m@net1", "d/u@eth1").unwrap());
        assert!(!dp.reachable("d/m@net1", "d/t@eth1").unwrap());
    }

    #[test]
    fn a_macvlan_parent_that_is_an_uplink_is_refused() {
        let e = Dataplane::build(&Topology {
            nodes: vec![node(
                "a",
                &["eth1"],
                vec![bridge("br", &["eth1"], false, vec![])],
                vec![macvlan("eth1", "d/m@net1")],
            )],
            segments: vec![],
            interfaces: vec![itf("d/m@net1", &[])],
        })
        .unwrap_err();
        assert!(matches!(e, DataplaneError::NicUsedTwice { .. }), "{e}");
        assert!(e.to_string().contains("a/eth1"), "{e}");
    }

    fn pair(a: &[&str], b: &[&str]) -> Dataplane {
        two_nodes(
            false,
            vec![port("p", Some(10), "d/a@eth1")],
            vec![port("p", Some(10), "d/b@eth1")],
            vec![itf("d/a@eth1", a), itf("d/b@eth1", b)],
        )
    }

    #[test]
    fn every_common_family_must_answer_and_no_common_family_is_false() {
        // Dual stack both ways.
        let dp = pair(
            &["10.0.0.1/24", "fd00::1/64"],
            &["10.0.0.2/24", "fd00::2/64"],
        );
        assert!(dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        // IPv4 in common only: IPv6 of one side is not probed.
        let dp = pair(&["10.0.0.1/24", "fd00::1/64"], &["10.0.0.2/24"]);
        assert!(dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        // IPv6 fails (different prefixes): the pair fails.
        let dp = pair(
            &["10.0.0.1/24", "fd00::1/64"],
            &["10.0.0.2/24", "fd01::2/64"],
        );
        assert!(!dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        // No family in common.
        let dp = pair(&["10.0.0.1/24"], &["fd00::2/64"]);
        assert!(!dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        let dp = pair(&[], &[]);
        assert!(!dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
    }

    #[test]
    fn ipv4_is_sent_on_link_but_the_reply_needs_a_subnet_back() {
        // b outside a's /24 but a inside b's /16: the request goes on-link
        // (ping -I), the reply has a route back.
        let dp = pair(&["10.0.1.1/24"], &["10.0.2.2/16"]);
        assert!(dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        // The other way: a's reply to 10.0.2.2 has no route on a.
        assert!(!dp.reachable("d/b@eth1", "d/a@eth1").unwrap());
        // Different subnets altogether.
        let dp = pair(&["10.0.1.1/24"], &["10.0.2.2/24"]);
        assert!(!dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
    }

    #[test]
    fn ipv6_needs_the_destination_on_link() {
        let dp = pair(&["fd00:0:0:1::1/64"], &["fd00:0:0:2::2/48"]);
        // a -> b: b is off-link for a: no route through a's interface.
        assert!(!dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        // b -> a: a is on-link for b, but b is not for a's reply.
        assert!(!dp.reachable("d/b@eth1", "d/a@eth1").unwrap());
        let dp = pair(&["fd00:0:0:1::1/48"], &["fd00:0:0:2::2/48"]);
        assert!(dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
    }

    #[test]
    fn ipv6_is_off_below_1280_bytes() {
        let mut dp_in = vec![
            itf("d/a@eth1", &["fd00::1/64"]),
            itf("d/b@eth1", &["fd00::2/64"]),
        ];
        dp_in[1].mtu = 1200;
        let dp = two_nodes(
            false,
            vec![port("p", Some(10), "d/a@eth1")],
            vec![port("p", Some(10), "d/b@eth1")],
            dp_in,
        );
        assert!(!dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
    }

    #[test]
    fn a_down_interface_reaches_nothing_and_is_reached_by_nothing() {
        let mut ifs = vec![
            itf("d/a@eth1", &["10.0.0.1/24"]),
            itf("d/b@eth1", &["10.0.0.2/24"]),
        ];
        ifs[0].up = false;
        let dp = two_nodes(
            false,
            vec![port("p", Some(10), "d/a@eth1")],
            vec![port("p", Some(10), "d/b@eth1")],
            ifs,
        );
        assert!(!dp.reachable("d/a@eth1", "d/b@eth1").unwrap());
        assert!(!dp.reachable("d/b@eth1", "d/a@eth1").unwrap());
    }

    #[test]
    fn a_pod_on_two_vlans_answers_only_on_the_interface_that_owns_the_address() {
        // p has eth1 on VLAN 10 and eth2 on VLAN 20, one subnet each; x is on
        // VLAN 10 with eth2's subnet too.
        let dp = two_nodes(
            false,
            vec![port("x", Some(10), "d/x@eth1")],
            vec![
                port("p1", Some(10), "d/p@eth1"),
                port("p2", Some(20), "d/p@eth2"),
            ],
            vec![
                itf("d/x@eth1", &["10.0.0.5/24"]),
                itf("d/p@eth1", &["10.1.0.2/24"]),
                itf("d/p@eth2", &["10.0.0.2/24"]),
            ],
        );
        // x's ARP for 10.0.0.2 arrives on p@eth1, which does not own it.
        assert!(!dp.reachable("d/x@eth1", "d/p@eth2").unwrap());
        // x reaches p@eth1's address on-link, but p replies to 10.0.0.5
        // through eth2 (its subnet), into VLAN 20.
        assert!(!dp.reachable("d/x@eth1", "d/p@eth1").unwrap());
    }

    #[test]
    fn equal_reply_routes_in_the_destination_pod_are_an_error() {
        let dp = two_nodes(
            false,
            vec![port("x", Some(10), "d/x@eth1")],
            vec![
                port("p1", Some(10), "d/p@eth1"),
                port("p2", Some(20), "d/p@eth2"),
            ],
            vec![
                itf("d/x@eth1", &["10.0.0.5/24"]),
                itf("d/p@eth1", &["10.0.0.2/24"]),
                itf("d/p@eth2", &["10.0.0.3/24"]),
            ],
        );
        let e = dp.reachable("d/x@eth1", "d/p@eth1").unwrap_err();
        assert!(
            matches!(e, DataplaneError::AmbiguousReplyRoute { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("d/p@eth2"), "{e}");
    }

    #[test]
    fn the_matrix_skips_pairs_of_one_pod_and_single_queries_refuse_them() {
        let dp = vlan_isolation();
        let m = dp
            .reachability(&[
                "default/trunk-1@eth1",
                "default/trunk-1@eth2",
                "default/trunk-2@eth1",
            ])
            .unwrap();
        assert_eq!(m["default/trunk-1@eth1"].len(), 1);
        assert_eq!(m["default/trunk-2@eth1"].len(), 2);
        let e = dp
            .reachable("default/trunk-1@eth1", "default/trunk-1@eth2")
            .unwrap_err();
        assert!(matches!(e, DataplaneError::SamePod { .. }), "{e}");
        assert_eq!(
            dp.reachable_pairs(&[("default/trunk-1@eth1", "default/trunk-2@eth1")])
                .unwrap(),
            [true]
        );
    }

    #[test]
    fn inconsistent_inputs_are_errors_naming_the_culprit() {
        let base = || Topology {
            nodes: vec![node(
                "a",
                &["eth1", "eth2"],
                vec![bridge(
                    "br",
                    &["eth1"],
                    false,
                    vec![port("p", Some(1), "d/x@eth1")],
                )],
                vec![],
            )],
            segments: vec![segment("s", &["a/eth1"], None)],
            interfaces: vec![itf("d/x@eth1", &[]), itf("d/y@eth1", &[])],
        };
        let err = |t: Topology| Dataplane::build(&t).unwrap_err().to_string();
        assert!(Dataplane::build(&base()).is_ok());

        let mut t = base();
        t.nodes[0].bridges[0]
            .access_ports
            .push(port("q", None, "d/nope@eth1"));
        assert!(err(t).contains("d/nope@eth1"));

        let mut t = base();
        t.nodes[0]
            .bridges
            .push(bridge("br2", &[], false, vec![port("p", None, "d/y@eth1")]));
        let e = err(t);
        assert!(e.contains("port p") && e.contains("a/br2"), "{e}");

        let mut t = base();
        t.nodes[0].bridges[0]
            .access_ports
            .push(port("q", None, "d/x@eth1"));
        let e = err(t);
        assert!(
            e.contains("d/x@eth1") && e.contains("attached twice"),
            "{e}"
        );

        let mut t = base();
        t.nodes[0]
            .bridges
            .push(bridge("br2", &["eth1"], false, vec![]));
        let e = err(t);
        assert!(e.contains("a/eth1") && e.contains("br2"), "{e}");

        let mut t = base();
        t.nodes[0].bridges[0].uplinks.push("eth9".into());
        assert!(err(t).contains("eth9"));

        let mut t = base();
        t.segments.push(segment("s2", &["a/eth1"], None));
        let e = err(t);
        assert!(e.contains("a/eth1") && e.contains("s2"), "{e}");

        let mut t = base();
        t.segments.push(segment("s2", &["zz/eth1"], None));
        assert!(err(t).contains("zz"));

        let mut t = base();
        t.interfaces.push(itf("no-pod-here", &[]));
        assert!(err(t).contains("no-pod-here"));

        let mut t = base();
        t.interfaces.push(itf("d/x@eth1", &[]));
        assert!(err(t).contains("duplicate interface"));

        let mut t = base();
        t.nodes[0].bridges[0].access_ports[0].vlan = Some(4095);
        assert!(err(t).contains("4095"));

        // A loop: both NICs uplinks of one bridge, both on one segment
        // (VLAN 1 is in use).
        let mut t = base();
        t.nodes[0].bridges[0].uplinks.push("eth2".into());
        t.segments[0].ports.push(NicRef::new("a", "eth2"));
        let e = err(t);
        assert!(e.contains("loop") && e.contains("VLAN 1"), "{e}");

        let dp = Dataplane::build(&base()).unwrap();
        assert_eq!(
            dp.reachable("d/x@eth1", "d/z@eth1").unwrap_err(),
            DataplaneError::UnknownInterface("d/z@eth1".into())
        );
    }

    /// The multicast testbed: sender, member-a, nonmember-a and other-vlan on
    /// node-a; member-b and nonmember-b on node-b.
    fn vf(index: u16, vlan: u16, interface: &str) -> VfPort {
        VfPort {
            index,
            vlan,
            interface: interface.into(),
        }
    }

    fn sriov_node(name: &str, nics: &[&str], pf: &str, vfs: Vec<VfPort>) -> Node {
        Node {
            eswitches: vec![Eswitch { pf: pf.into(), vfs }],
            ..node(name, nics, vec![], vec![])
        }
    }

    /// metal-a and metal-b with PF ens1f0 (VFs on VLANs 100 and 200, one
    /// subnet), vm-c with untagged VFs, all on tor-1; an untagged VF of
    /// metal-a too.
    fn sriov_fabric() -> Dataplane {
        Dataplane::build(&Topology {
            nodes: vec![
                sriov_node(
                    "metal-a",
                    &[],
                    "ens1f0",
                    vec![
                        vf(0, 100, "d/red-a@eth1"),
                        vf(1, 200, "d/blue-a@eth1"),
                        vf(2, 0, "d/flat-a@eth1"),
                        vf(3, 100, "d/red-a2@eth1"),
                    ],
                ),
                sriov_node(
                    "metal-b",
                    &[],
                    "ens1f0",
                    vec![vf(0, 100, "d/red-b@eth1"), vf(1, 200, "d/blue-b@eth1")],
                ),
                sriov_node("vm-c", &[], "ens1f0", vec![vf(0, 0, "d/flat-vm@eth1")]),
            ],
            segments: vec![segment(
                "tor-1",
                &["metal-a/ens1f0", "metal-b/ens1f0", "vm-c/ens1f0"],
                None,
            )],
            interfaces: vec![
                itf("d/red-a@eth1", &["10.40.0.10/24"]),
                itf("d/red-a2@eth1", &["10.40.0.14/24"]),
                itf("d/blue-a@eth1", &["10.40.0.11/24"]),
                itf("d/red-b@eth1", &["10.40.0.12/24"]),
                itf("d/blue-b@eth1", &["10.40.0.13/24"]),
                itf("d/flat-a@eth1", &["10.41.0.10/24"]),
                itf("d/flat-vm@eth1", &["10.41.0.11/24"]),
            ],
        })
        .unwrap()
    }

    #[test]
    fn vfs_of_one_vlan_reach_each_other_across_pfs_and_through_one_pf() {
        let dp = sriov_fabric();
        assert_groups(
            &dp,
            &[
                &["d/red-a@eth1", "d/red-b@eth1", "d/red-a2@eth1"],
                &["d/blue-a@eth1", "d/blue-b@eth1"],
                &["d/flat-a@eth1", "d/flat-vm@eth1"],
            ],
        );
        // One subnet, two VLANs: the VF's VLAN alone keeps them apart, on
        // one PF and across the fabric.
        assert!(!dp.reachable("d/red-a@eth1", "d/blue-a@eth1").unwrap());
        assert!(!dp.reachable("d/red-a@eth1", "d/blue-b@eth1").unwrap());
        assert!(dp.same_l2("d/red-a@eth1", "d/red-a2@eth1").unwrap());
    }

    #[test]
    fn an_untagged_vf_receives_no_tagged_frames_unlike_an_untagged_ovs_port() {
        let dp = sriov_fabric();
        let nm = ["d/flat-a@eth1", "d/flat-vm@eth1", "d/blue-a@eth1"];
        let r = dp
            .multicast(G, "d/red-a@eth1", &["d/red-b@eth1"], &nm, 10)
            .unwrap();
        assert_eq!(r["d/red-b@eth1"], 10);
        for n in nm {
            assert_eq!(r[n], 0, "{n} is not in VLAN 100");
        }
        // The eswitch does no snooping: a non-member of the VLAN gets the
        // flood, on the same PF and across the fabric.
        let r = dp
            .multicast(
                G,
                "d/red-a@eth1",
                &NONE,
                &["d/red-a2@eth1", "d/red-b@eth1"],
                10,
            )
            .unwrap();
        assert_eq!(r["d/red-a2@eth1"], 10);
        assert_eq!(r["d/red-b@eth1"], 10);
        // An OVS port without a tag on the same segment sees VLAN 100 at
        // L2 (a trunk); the untagged VF next to it does not.
        let mut a = sriov_node(
            "metal-a",
            &["eth1"],
            "ens1f0",
            vec![vf(0, 100, "d/red-a@eth1"), vf(2, 0, "d/flat-a@eth1")],
        );
        a.bridges = vec![bridge(
            "br",
            &["eth1"],
            false,
            vec![port("p", None, "d/ovs@eth1")],
        )];
        let dp = Dataplane::build(&Topology {
            nodes: vec![a],
            segments: vec![segment("tor-1", &["metal-a/eth1", "metal-a/ens1f0"], None)],
            interfaces: vec![
                itf("d/red-a@eth1", &["10.40.0.10/24"]),
                itf("d/flat-a@eth1", &["10.41.0.10/24"]),
                itf("d/ovs@eth1", &["10.41.0.12/24"]),
            ],
        })
        .unwrap();
        let r = dp
            .multicast(
                G,
                "d/red-a@eth1",
                &NONE,
                &["d/ovs@eth1", "d/flat-a@eth1"],
                10,
            )
            .unwrap();
        assert_eq!(r["d/ovs@eth1"], 10);
        assert_eq!(r["d/flat-a@eth1"], 0);
        // Untagged, both: the VF and the OVS port share VLAN 0.
        assert!(dp.reachable("d/flat-a@eth1", "d/ovs@eth1").unwrap());
    }

    #[test]
    fn a_vm_nodes_untagged_vf_reaches_only_untagged_interfaces() {
        let dp = sriov_fabric();
        for other in ["d/red-a@eth1", "d/blue-b@eth1"] {
            assert!(!dp.same_l2("d/flat-vm@eth1", other).unwrap(), "{other}");
        }
        assert!(dp.reachable("d/flat-vm@eth1", "d/flat-a@eth1").unwrap());
    }

    #[test]
    fn a_pf_off_the_fabric_or_a_vlan_the_segment_drops_isolates_its_vfs() {
        let build = |allowed: Option<&[&str]>, on_fabric: bool| {
            let ports: &[&str] = if on_fabric {
                &["metal-a/ens1f0", "metal-b/ens1f0"]
            } else {
                &["metal-a/ens1f0"]
            };
            Dataplane::build(&Topology {
                nodes: vec![
                    sriov_node("metal-a", &[], "ens1f0", vec![vf(0, 100, "d/a@eth1")]),
                    sriov_node("metal-b", &[], "ens1f0", vec![vf(0, 100, "d/b@eth1")]),
                ],
                segments: vec![segment("tor-1", ports, allowed)],
                interfaces: vec![
                    itf("d/a@eth1", &["10.40.0.10/24"]),
                    itf("d/b@eth1", &["10.40.0.11/24"]),
                ],
            })
            .unwrap()
        };
        assert!(build(None, true).reachable("d/a@eth1", "d/b@eth1").unwrap());
        assert!(!build(None, false)
            .reachable("d/a@eth1", "d/b@eth1")
            .unwrap());
        assert!(!build(Some(&["200"]), true)
            .reachable("d/a@eth1", "d/b@eth1")
            .unwrap());
        assert!(build(Some(&["100"]), true)
            .reachable("d/a@eth1", "d/b@eth1")
            .unwrap());
    }

    #[test]
    fn inconsistent_sriov_inputs_are_errors_naming_the_culprit() {
        let one = |n: Node| {
            Dataplane::build(&Topology {
                nodes: vec![n],
                segments: vec![],
                interfaces: vec![
                    itf("d/a@eth1", &["10.40.0.10/24"]),
                    itf("d/b@eth1", &["10.40.0.11/24"]),
                ],
            })
        };
        let e = one(sriov_node(
            "n",
            &[],
            "ens1f0",
            vec![vf(0, 100, "d/a@eth1"), vf(0, 100, "d/b@eth1")],
        ))
        .unwrap_err();
        assert_eq!(e.to_string(), "VF 0 of n/ens1f0 is listed twice");
        let e = one(sriov_node(
            "n",
            &[],
            "ens1f0",
            vec![vf(3, 4095, "d/a@eth1")],
        ))
        .unwrap_err();
        assert!(e.to_string().contains("VF 3 of n/ens1f0: VLAN 4095"), "{e}");
        let e = one(sriov_node("n", &["ens1f0"], "ens1f0", vec![])).unwrap_err();
        assert_eq!(e, dup("NIC", "n/ens1f0"));
        let e = one(sriov_node(
            "n",
            &[],
            "ens1f0",
            vec![vf(0, 100, "d/a@eth1"), vf(1, 100, "d/a@eth1")],
        ))
        .unwrap_err();
        assert!(matches!(e, DataplaneError::AttachedTwice { .. }), "{e}");
        let mut n = sriov_node("n", &[], "ens1f0", vec![]);
        n.bridges = vec![bridge("br", &["ens1f0"], false, vec![])];
        let e = one(n).unwrap_err();
        assert!(matches!(e, DataplaneError::NicUsedTwice { .. }), "{e}");
    }

    fn mcast(snoop: bool) -> Dataplane {
        two_nodes(
            snoop,
            vec![
                port("s", Some(100), "default/sender@eth1"),
                port("ma", Some(100), "default/member-a@eth1"),
                port("na", Some(100), "default/nonmember-a@eth1"),
                port("o", Some(200), "default/other-vlan@eth1"),
            ],
            vec![
                port("mb", Some(100), "default/member-b@eth1"),
                port("nb", Some(100), "default/nonmember-b@eth1"),
            ],
            vec![
                itf("default/sender@eth1", &["10.10.1.2/24"]),
                itf("default/member-a@eth1", &["10.10.1.3/24"]),
                itf("default/member-b@eth1", &["10.10.1.4/24"]),
                itf("default/nonmember-a@eth1", &["10.10.1.5/24"]),
                itf("default/nonmember-b@eth1", &["10.10.1.6/24"]),
                itf("default/other-vlan@eth1", &["10.10.1.7/24"]),
            ],
        )
    }

    const NONE: [&str; 0] = [];
    const G: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(239, 1, 1, 1));
    const MEMBERS: [&str; 2] = ["default/member-a@eth1", "default/member-b@eth1"];
    const NON_MEMBERS: [&str; 3] = [
        "default/nonmember-a@eth1",
        "default/nonmember-b@eth1",
        "default/other-vlan@eth1",
    ];

    #[test]
    fn multicast_with_snooping_reaches_members_only_including_a_remote_one() {
        let r = mcast(true)
            .multicast(G, "default/sender@eth1", &MEMBERS, &NON_MEMBERS, 10)
            .unwrap();
        assert_eq!(r["default/member-a@eth1"], 10);
        assert_eq!(r["default/member-b@eth1"], 10);
        for n in NON_MEMBERS {
            assert_eq!(r[n], 0, "{n}");
        }
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn multicast_without_snooping_floods_the_vlan_but_not_another_vlan() {
        let r = mcast(false)
            .multicast(G, "default/sender@eth1", &MEMBERS, &NON_MEMBERS, 10)
            .unwrap();
        assert_eq!(r["default/member-a@eth1"], 10);
        assert_eq!(r["default/member-b@eth1"], 10);
        assert_eq!(r["default/nonmember-a@eth1"], 10);
        assert_eq!(r["default/nonmember-b@eth1"], 10);
        assert_eq!(r["default/other-vlan@eth1"], 0);
    }

    #[test]
    fn snooping_floods_an_unregistered_group_and_link_local_groups() {
        let dp = mcast(true);
        let r = dp
            .multicast(G, "default/sender@eth1", &NONE, &NON_MEMBERS, 3)
            .unwrap();
        assert_eq!(r["default/nonmember-a@eth1"], 3);
        assert_eq!(r["default/nonmember-b@eth1"], 3);
        assert_eq!(r["default/other-vlan@eth1"], 0);
        let link_local: IpAddr = "224.0.0.251".parse().unwrap();
        let r = dp
            .multicast(link_local, "default/sender@eth1", &MEMBERS, &NON_MEMBERS, 3)
            .unwrap();
        assert_eq!(r["default/nonmember-b@eth1"], 3);
    }

    #[test]
    fn snooping_on_the_sender_bridge_only_still_floods_the_remote_bridge() {
        let dp = Dataplane::build(&Topology {
            nodes: vec![
                node(
                    "a",
                    &["eth1"],
                    vec![bridge(
                        "br",
                        &["eth1"],
                        true,
                        vec![port("s", Some(1), "d/s@e")],
                    )],
                    vec![],
                ),
                node(
                    "b",
                    &["eth1"],
                    vec![bridge(
                        "br",
                        &["eth1"],
                        false,
                        vec![port("m", Some(1), "d/m@e"), port("n", Some(1), "d/n@e")],
                    )],
                    vec![],
                ),
            ],
            segments: vec![segment("t", &["a/eth1", "b/eth1"], None)],
            interfaces: vec![
                itf("d/s@e", &["10.0.0.1/24"]),
                itf("d/m@e", &["10.0.0.2/24"]),
                itf("d/n@e", &["10.0.0.3/24"]),
            ],
        })
        .unwrap();
        let r = dp.multicast(G, "d/s@e", &["d/m@e"], &["d/n@e"], 4).unwrap();
        assert_eq!(r["d/m@e"], 4);
        assert_eq!(r["d/n@e"], 4);
    }

    #[test]
    fn an_untagged_port_sees_other_vlans_flooded_at_l2() {
        let dp = two_nodes(
            false,
            vec![
                port("s", Some(100), "d/s@eth1"),
                port("u", None, "d/u@eth1"),
            ],
            vec![port("m", None, "d/m@eth1")],
            vec![
                itf("d/s@eth1", &["10.0.0.1/24"]),
                itf("d/u@eth1", &["10.0.0.2/24"]),
                itf("d/m@eth1", &["10.0.0.3/24"]),
            ],
        );
        let r = dp
            .multicast(G, "d/s@eth1", &["d/m@eth1"], &["d/u@eth1"], 2)
            .unwrap();
        // The untagged (trunk) port gets VLAN 100 frames tagged; the member's
        // IP stack drops them.
        assert_eq!(r["d/u@eth1"], 2);
        assert_eq!(r["d/m@eth1"], 0);
    }

    #[test]
    fn macvlans_receive_joined_groups_only() {
        let dp = antrea_multus();
        let r = dp
            .multicast(
                G,
                "default/samplepod-a@net2",
                &["default/samplepod-b@net2"],
                &["default/samplepod-c@net1", "default/samplepod-a@net1"],
                5,
            )
            .unwrap();
        assert_eq!(r["default/samplepod-b@net2"], 5);
        assert_eq!(r["default/samplepod-c@net1"], 0);
        assert_eq!(r["default/samplepod-a@net1"], 0);
        let r = dp
            .multicast(
                G,
                "default/samplepod-b@net2",
                &["default/samplepod-c@net1"],
                &NONE,
                5,
            )
            .unwrap();
        assert_eq!(r["default/samplepod-c@net1"], 5);
    }

    #[test]
    fn a_down_member_receives_nothing_and_probe_failures_are_errors() {
        let mut ifs = vec![
            itf("d/s@e", &["10.0.0.1/24"]),
            itf("d/m@e", &["10.0.0.2/24"]),
            itf("d/x@e", &["fd00::3/64"]),
        ];
        ifs[1].up = false;
        let dp = two_nodes(
            true,
            vec![port("s", Some(1), "d/s@e")],
            vec![port("m", Some(1), "d/m@e"), port("x", Some(1), "d/x@e")],
            ifs,
        );
        let r = dp.multicast(G, "d/s@e", &["d/m@e"], &NONE, 1).unwrap();
        assert_eq!(r["d/m@e"], 0);
        let e = dp.multicast(G, "d/s@e", &["d/x@e"], &NONE, 1).unwrap_err();
        assert!(e.to_string().contains("d/x@e"), "{e}");
        let e = dp.multicast(G, "d/x@e", &["d/s@e"], &NONE, 1).unwrap_err();
        assert!(e.to_string().contains("no IPv4 address"), "{e}");
        let unicast: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(dp
            .multicast(unicast, "d/s@e", &["d/m@e"], &NONE, 1)
            .is_err());
        assert!(dp.multicast(G, "d/s@e", &["d/q@e"], &NONE, 1).is_err());
        // IPv6 groups: the v6-only interface is joined through its index.
        let g6: IpAddr = "ff05::1:3".parse().unwrap();
        let r = dp.multicast(g6, "d/s@e", &["d/x@e"], &NONE, 2).unwrap();
        assert_eq!(r["d/x@e"], 2);
    }

    #[test]
    fn a_snooping_segment_without_flood_reports_hides_remote_members() {
        // Sender and a local member on a; a remote member on b; the segment
        // snoops but forwards no report, so a's bridge learns only its local
        // member and never sends out of its uplink.
        let mut seg = segment("t", &["a/eth1", "b/eth1"], None);
        seg.mcast_snooping = true;
        let dp = Dataplane::build(&Topology {
            nodes: vec![
                node(
                    "a",
                    &["eth1"],
                    vec![bridge(
                        "br",
                        &["eth1"],
                        true,
                        vec![port("s", Some(1), "d/s@e"), port("l", Some(1), "d/l@e")],
                    )],
                    vec![],
                ),
                node(
                    "b",
                    &["eth1"],
                    vec![bridge(
                        "br",
                        &["eth1"],
                        true,
                        vec![port("r", Some(1), "d/r@e")],
                    )],
                    vec![],
                ),
            ],
            segments: vec![seg],
            interfaces: vec![
                itf("d/s@e", &["10.0.0.1/24"]),
                itf("d/l@e", &["10.0.0.2/24"]),
                itf("d/r@e", &["10.0.0.3/24"]),
            ],
        })
        .unwrap();
        let r = dp
            .multicast(G, "d/s@e", &["d/l@e", "d/r@e"], &NONE, 1)
            .unwrap();
        assert_eq!(r["d/l@e"], 1);
        assert_eq!(r["d/r@e"], 0);
    }

    #[test]
    fn a_thousand_node_cluster_builds_and_answers() {
        let nodes = 1000;
        let mut t = Topology::default();
        let mut ports = Vec::new();
        for n in 0..nodes {
            let access = (0..4)
                .map(|k| {
                    let i = n * 4 + k;
                    let vlan = u16::try_from(100 + i % 10).unwrap();
                    let host = format!("10.{}.{}.{}/16", i % 10, (i / 200) % 250, i % 200 + 1);
                    t.interfaces.push(itf(&id(i), &[&host]));
                    port(&format!("p{i}"), Some(vlan), &id(i))
                })
                .collect();
            t.nodes.push(node(
                &format!("n{n}"),
                &["eth1"],
                vec![bridge("br", &["eth1"], true, access)],
                vec![],
            ));
            ports.push(format!("n{n}/eth1"));
        }
        let refs: Vec<&str> = ports.iter().map(String::as_str).collect();
        t.segments.push(segment("tor", &refs, None));
        let started = std::time::Instant::now();
        let dp = Dataplane::build(&t).unwrap();
        let ids: Vec<String> = (0..400).map(id).collect();
        let m = dp.reachability(&ids).unwrap();
        // Same VLAN (i % 10) and subnet: reachable; everything else not.
        for (a, row) in &m {
            for (b, ok) in row {
                let n = |s: &str| s[7..s.len() - 5].parse::<usize>().unwrap();
                assert_eq!(*ok, n(a) % 10 == n(b) % 10, "{a} {b}");
            }
        }
        let members: Vec<String> = (0..100).map(|k| id(k * 40)).collect();
        let r = dp.multicast(G, &id(10), &members, &[id(11)], 3).unwrap();
        assert!(members.iter().all(|m| r[m] == 3));
        assert_eq!(r[&id(11)], 0);
        // Generous: debug builds on a small machine.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    // ---- property tests ----

    /// (node, where: 0 br0 / 1 eth2, VLAN, IPv4 host and prefix, IPv6 host
    /// and prefix, up).
    type PodGen = (
        usize,
        u8,
        Option<u16>,
        Option<(u8, u8)>,
        Option<(u8, u8)>,
        bool,
    );

    /// A random testbed: nodes with eth1 (uplink of br0, all on segment s0)
    /// and eth2 (uplink of br1 on segment s1 with allowed VLANs, or a
    /// macvlan parent), one interface per Pod.
    #[derive(Debug, Clone)]
    struct Gen {
        nodes: usize,
        eth2_macvlan: Vec<bool>,
        snoop: Vec<bool>,
        allowed: Option<Vec<u16>>,
        /// (node, where: 0 br0 / 1 eth2, vlan, v4 host+prefix, v6 host+prefix, up)
        pods: Vec<PodGen>,
    }

    fn gen() -> impl Strategy<Value = Gen> {
        (1usize..4).prop_flat_map(|n| {
            (
                Just(n),
                prop::collection::vec(any::<bool>(), n),
                prop::collection::vec(any::<bool>(), n),
                prop::option::of(prop::collection::vec(
                    prop::sample::select(vec![100u16, 200, 300]),
                    0..3,
                )),
                prop::collection::vec(
                    (
                        0..n,
                        0u8..2,
                        prop::option::of(prop::sample::select(vec![100u16, 200, 300])),
                        prop::option::of((1u8..200, prop::sample::select(vec![16u8, 24, 28]))),
                        prop::option::of((1u8..200, prop::sample::select(vec![48u8, 64, 120]))),
                        prop::bool::weighted(0.9),
                    ),
                    1..10,
                ),
            )
                .prop_map(|(nodes, eth2_macvlan, snoop, allowed, pods)| Gen {
                    nodes,
                    eth2_macvlan,
                    snoop,
                    allowed,
                    pods,
                })
        })
    }

    fn id(i: usize) -> String {
        format!("ns/pod-{i}@eth1")
    }

    fn topology(g: &Gen) -> Topology {
        let mut nodes: Vec<Node> = (0..g.nodes)
            .map(|n| {
                let mut bridges = vec![bridge("br0", &["eth1"], g.snoop[n], vec![])];
                if !g.eth2_macvlan[n] {
                    bridges.push(bridge("br1", &["eth2"], g.snoop[n], vec![]));
                }
                node(&format!("n{n}"), &["eth1", "eth2"], bridges, vec![])
            })
            .collect();
        let mut interfaces = Vec::new();
        for (i, (n, at, vlan, v4, v6, up)) in g.pods.iter().enumerate() {
            let mut addrs = Vec::new();
            if let Some((h, p)) = v4 {
                addrs.push(net(&format!("10.0.0.{h}/{p}")));
            }
            if let Some((h, p)) = v6 {
                addrs.push(net(&format!("fd00::{h:x}/{p}")));
            }
            let mut f = Interface::new(id(i), addrs);
            f.up = *up;
            interfaces.push(f);
            let node = &mut nodes[*n];
            if *at == 1 && g.eth2_macvlan[*n] {
                node.macvlans.push(macvlan("eth2", &id(i)));
            } else {
                let b = usize::from(*at == 1);
                node.bridges[b]
                    .access_ports
                    .push(port(&format!("p{i}"), *vlan, &id(i)));
            }
        }
        let all =
            |nic: &str| -> Vec<String> { (0..g.nodes).map(|n| format!("n{n}/{nic}")).collect() };
        let s0: Vec<String> = all("eth1");
        let s1: Vec<String> = all("eth2");
        let allowed: Option<Vec<String>> = g
            .allowed
            .as_ref()
            .map(|a| a.iter().map(u16::to_string).collect());
        let allowed_refs: Option<Vec<&str>> = allowed
            .as_ref()
            .map(|a| a.iter().map(String::as_str).collect());
        Topology {
            nodes,
            segments: vec![
                segment(
                    "s0",
                    &s0.iter().map(String::as_str).collect::<Vec<_>>(),
                    None,
                ),
                segment(
                    "s1",
                    &s1.iter().map(String::as_str).collect::<Vec<_>>(),
                    allowed_refs.as_deref(),
                ),
            ],
            interfaces,
        }
    }

    /// A deterministic permutation of `v` from `seed`.
    fn shuffle<T>(v: &mut [T], seed: &mut u64) {
        for i in (1..v.len()).rev() {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let j = usize::try_from((*seed >> 33) % (i as u64 + 1)).unwrap();
            v.swap(i, j);
        }
    }

    fn on_link(dp: &Dataplane, a: &str, b: &str, v4: bool) -> bool {
        let (fa, fb) = (
            &dp.ifaces[dp.get(a).unwrap()],
            &dp.ifaces[dp.get(b).unwrap()],
        );
        let dst = fb.first_of(v4).unwrap();
        fa.usable()
            .any(|n| n.addr().is_ipv4() == v4 && n.contains(&dst))
    }

    proptest! {
        #[test]
        fn reachability_is_symmetric_for_pairs_on_link_both_ways(g in gen()) {
            let dp = Dataplane::build(&topology(&g)).unwrap();
            let ids: Vec<String> = (0..g.pods.len()).map(id).collect();
            for a in &ids {
                for b in &ids {
                    if a == b {
                        continue;
                    }
                    let (fa, fb) = (&dp.ifaces[dp.get(a).unwrap()], &dp.ifaces[dp.get(b).unwrap()]);
                    let fams: Vec<bool> = [true, false]
                        .into_iter()
                        .filter(|v4| fa.first_of(*v4).is_some() && fb.first_of(*v4).is_some())
                        .collect();
                    if fams.is_empty() || !fams.iter().all(|v4| on_link(&dp, a, b, *v4) && on_link(&dp, b, a, *v4)) {
                        continue;
                    }
                    prop_assert_eq!(dp.reachable(a, b).unwrap(), dp.reachable(b, a).unwrap(), "{} {}", a, b);
                }
            }
        }

        #[test]
        fn an_interface_alone_in_its_l2_domain_reaches_nothing(g in gen()) {
            let dp = Dataplane::build(&topology(&g)).unwrap();
            let ids: Vec<String> = (0..g.pods.len()).map(id).collect();
            for a in &ids {
                let alone = ids.iter().all(|b| b == a || !dp.same_l2(a, b).unwrap());
                if !alone {
                    continue;
                }
                for b in ids.iter().filter(|b| *b != a) {
                    prop_assert!(!dp.reachable(a, b).unwrap());
                    prop_assert!(!dp.reachable(b, a).unwrap());
                }
            }
        }

        #[test]
        fn building_does_not_depend_on_input_order(g in gen(), seed in any::<u64>()) {
            let t = topology(&g);
            let mut s = t.clone();
            let mut seed = seed;
            shuffle(&mut s.nodes, &mut seed);
            shuffle(&mut s.segments, &mut seed);
            shuffle(&mut s.interfaces, &mut seed);
            for n in &mut s.nodes {
                shuffle(&mut n.nics, &mut seed);
                shuffle(&mut n.bridges, &mut seed);
                shuffle(&mut n.macvlans, &mut seed);
                for b in &mut n.bridges {
                    shuffle(&mut b.access_ports, &mut seed);
                }
            }
            for seg in &mut s.segments {
                shuffle(&mut seg.ports, &mut seed);
            }
            let (d1, d2) = (Dataplane::build(&t).unwrap(), Dataplane::build(&s).unwrap());
            let ids: Vec<String> = (0..g.pods.len()).map(id).collect();
            prop_assert_eq!(d1.reachability(&ids).unwrap(), d2.reachability(&ids).unwrap());
            let (members, non_members) = ids[1..].split_at((ids.len() - 1) / 2);
            let members: Vec<&String> = members.iter().filter(|m| d1.ifaces[d1.get(m).unwrap()].first_of(true).is_some()).collect();
            let r1 = d1.multicast(G, &ids[0], &members, non_members, 7);
            let r2 = d2.multicast(G, &ids[0], &members, non_members, 7);
            prop_assert_eq!(r1, r2);
        }
    }
}
