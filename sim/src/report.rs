//! What the world holds, read without going through the API (the facts the
//! invariants and the report are computed from), and the report of a run in
//! the harness's shape.
//!
//! Facts are read straight from the API server's store and the nodes'
//! in-memory back ends, so observing never changes the run. The report is
//! built from the same sources the harness reads on real nodes: each Pod's
//! network-status annotation cross-checked against the interfaces in its
//! namespace, VLANs from the OVS access ports (a VF's from what its PF sets
//! for it, as `ip link show PF` reports it), pools from the IPPools, and
//! reachability and multicast from the data-plane model instead of pings.
//!
//! What does not live here: running the cluster ([`crate::world`]) and the
//! invariants' rules ([`crate::invariants`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::Value;
use spur_core::ipamblock::IPAMBlock;
use spur_core::ippool::{IPPool, PoolLayout};
use spur_core::nad::{classify, NetworkKind};
use spur_core::status::{NetworkStatus, NETWORK_STATUS_ANNOTATION};
use spur_core::Subject;
use spur_hil::probe::{AccessPort, IfaceFacts};
use spur_node::fake::{LinkKind, LinksSnapshot};
use spur_node::ovsdb::PortInfo;
use spur_testbed::{
    check, InterfaceRef, MulticastReport, PodRef, PodReport, PoolReport, Rejection, Report, Runner,
};

use crate::dataplane::{self, Dataplane, Topology};
use crate::invariants::{
    self, Acked, Attachments, Held, LivePod, LiveSet, ReadyInterface, SandboxOwner, VfPlace,
    VfState,
};
use crate::kubelet::PodView;
use crate::world::{live_set, pod_ref, World};

/// How many datagrams the multicast probe sends (the harness's count).
pub const MULTICAST_COUNT: u32 = 10;

/// One Pod in the store, with what its kubelet knows.
#[derive(Debug, Clone)]
pub struct PodFact {
    /// The Pod.
    pub pod: PodRef,
    /// Its node.
    pub node: Option<String>,
    /// Terminating (has a deletionTimestamp).
    pub terminating: bool,
    /// The stored object.
    pub object: Value,
    /// Its kubelet's view.
    pub view: Option<PodView>,
}

/// One secondary interface as it really is on its node.
#[derive(Debug, Clone)]
pub struct IfaceFact {
    /// `NS/POD@IFNAME`.
    pub id: InterfaceRef,
    /// The node.
    pub node: String,
    /// Its network-status entry.
    pub entry: NetworkStatus,
    /// The link in the Pod's namespace, when there.
    pub facts: Option<IfaceFacts>,
    /// Up.
    pub up: bool,
    /// A macvlan's parent NIC.
    pub macvlan_parent: Option<String>,
    /// The access port serving it (its container's).
    pub port: Option<AccessPort>,
    /// The VF it is, when it is one.
    pub vf: Option<VfFact>,
}

/// Which VF a Pod interface is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfFact {
    /// Its PF (on a VM node, the hypervisor's).
    pub pf: String,
    /// Its index on the PF.
    pub index: u16,
    /// The VLAN the PF sets for it (0: untagged; always 0 on a VM node).
    pub vlan: u16,
}

impl VfFact {
    /// The VF as the report's VLAN source sees it: an access port named
    /// after the VF's representor (`{pf}r{index}`, as the harness names
    /// it) whose tag is the VF's VLAN.
    pub fn as_port(&self) -> AccessPort {
        AccessPort {
            name: format!("{}r{}", self.pf, self.index),
            tag: self.vlan,
            external_ids: BTreeMap::new(),
        }
    }
}

/// Everything the invariants and the report look at, at one instant.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// IPPools.
    pub pools: Vec<IPPool>,
    /// IPAMBlocks.
    pub blocks: Vec<IPAMBlock>,
    /// Every allocation.
    pub held: Vec<Held>,
    /// Blocks that cannot be read.
    pub bad_blocks: Vec<invariants::Violation>,
    /// Pods in the store.
    pub pods: Vec<PodFact>,
    /// Addresses successful ADDs answered with, for live sandboxes.
    pub acked: Vec<Acked>,
    /// Pods as the GC invariant sees them.
    pub live_pods: Vec<LivePod>,
    /// StatefulSets as the GC invariant sees them.
    pub live_sets: Vec<LiveSet>,
    /// Secondary interfaces of ready Pods.
    pub interfaces: Vec<IfaceFact>,
    /// The same, as the invariants want them.
    pub ready_interfaces: Vec<ReadyInterface>,
    /// Per node: what exists per (container, interface).
    pub attachments: BTreeMap<String, Attachments>,
    /// The data plane of the ready interfaces (when it could be built).
    pub dataplane: Option<Dataplane>,
    /// Why the data plane could not be built.
    pub dataplane_error: Option<String>,
    /// Every SR-IOV VF of every node, where it is.
    pub vfs: Vec<VfState>,
    /// Live sandboxes by (node, netns path).
    pub sandboxes: BTreeMap<(String, String), SandboxOwner>,
    /// The devices each admitted Pod got, by (node, UID).
    pub granted: BTreeMap<(String, String), BTreeSet<String>>,
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The network-status entries of a stored Pod (none when absent or
/// malformed).
fn network_status(obj: &Value, pod: &PodRef) -> Vec<NetworkStatus> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|t| {
            spur_core::status::parse(t, &Subject::new("Pod", Some(&pod.namespace), &pod.name)).ok()
        })
        .unwrap_or_default()
}

/// What a NAD asks of its interface: (VLAN when on OVS, MTU when set,
/// pools).
fn nad_wants(
    nads: &BTreeMap<(String, String), Value>,
    pools: &BTreeMap<String, IPPool>,
    network: &str,
    annotated: &[String],
) -> (Option<u16>, Option<u32>, Vec<String>) {
    let Some((ns, name)) = network.split_once('/') else {
        return (None, None, Vec::new());
    };
    let Some(config) = nads
        .get(&(ns.to_string(), name.to_string()))
        .and_then(|n| n.pointer("/spec/config"))
        .and_then(Value::as_str)
    else {
        return (None, None, Vec::new());
    };
    match classify(
        config,
        &Subject::new("NetworkAttachmentDefinition", Some(ns), name),
    ) {
        Ok(NetworkKind::Spur(c)) => {
            let mut wanted: Vec<String> = c
                .ipam
                .as_ref()
                .map(|i| i.ippools.clone())
                .unwrap_or_default();
            if wanted.is_empty() && c.ipam.is_some() {
                wanted = annotated.to_vec();
            }
            let pool_vlan = wanted
                .iter()
                .filter_map(|p| pools.get(p).and_then(|p| p.spec.subnet_info.vlan))
                .next();
            let vlan = c.vlan_override().or(pool_vlan).unwrap_or(0);
            (Some(vlan), Some(u32::from(c.mtu)), wanted)
        }
        Ok(NetworkKind::SpurIpam(c)) => {
            let wanted = if c.ipam.ippools.is_empty() {
                annotated.to_vec()
            } else {
                c.ipam.ippools.clone()
            };
            (None, None, wanted)
        }
        _ => (None, None, Vec::new()),
    }
}

impl Facts {
    /// Reads the world now.
    pub(crate) fn collect(world: &World) -> Facts {
        let store = world.server().store();
        fn de<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
            serde_json::from_value(v.clone()).ok()
        }
        let pools: Vec<IPPool> = store
            .objects_of("spur.dev", "ippools")
            .into_iter()
            .filter_map(de)
            .collect();
        let blocks: Vec<IPAMBlock> = store
            .objects_of("spur.dev", "ipamblocks")
            .into_iter()
            .filter_map(de)
            .collect();
        let pod_objs: Vec<Value> = store.objects_of("", "pods").into_iter().cloned().collect();
        let sets: Vec<Value> = store
            .objects_of("apps", "statefulsets")
            .into_iter()
            .cloned()
            .collect();
        let nads: BTreeMap<(String, String), Value> = store
            .objects_of("k8s.cni.cncf.io", "network-attachment-definitions")
            .into_iter()
            .map(|n| {
                let r = pod_ref(n);
                ((r.namespace, r.name), n.clone())
            })
            .collect();
        let ns_pools: BTreeMap<String, Vec<String>> = store
            .objects_of("", "namespaces")
            .into_iter()
            .map(|n| {
                (
                    n.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    annotated_pools(n),
                )
            })
            .collect();
        drop(store);
        let (held, bad_blocks) = invariants::held(&blocks);
        let layouts: BTreeMap<String, PoolLayout> = pools
            .iter()
            .filter_map(|p| PoolLayout::from_pool(p).ok().map(|l| (l.name.clone(), l)))
            .collect();
        let pools_by_name: BTreeMap<String, IPPool> = pools
            .iter()
            .filter_map(|p| p.metadata.name.clone().map(|n| (n, p.clone())))
            .collect();

        let mut views: BTreeMap<PodRef, PodView> = BTreeMap::new();
        let mut node_state: BTreeMap<String, (Vec<PortInfo>, LinksSnapshot)> = BTreeMap::new();
        let mut sandboxes = BTreeMap::new();
        for (node, kubelet, switch, links) in world.node_views() {
            for v in kubelet.pods() {
                if let Some(sb) = &v.sandbox {
                    sandboxes.insert(
                        (node.to_string(), sb.netns_path.clone()),
                        SandboxOwner {
                            pod: v.pod.to_string(),
                            uid: sb.pod_uid.clone(),
                        },
                    );
                }
                views.insert(v.pod.clone(), v);
            }
            let ports = switch.access_ports().into_iter().map(|(_, p)| p).collect();
            node_state.insert(node.to_string(), (ports, links.snapshot()));
        }

        // Per node: VF PCI address -> (PF, index, on a VM node).
        let mut vf_at: BTreeMap<String, BTreeMap<String, (String, u16, bool)>> = BTreeMap::new();
        let mut vfs = Vec::new();
        for (node, sriov) in world.sriov_views() {
            let Some(sriov) = sriov else { continue };
            let Some((_, links)) = node_state.get(node) else {
                continue;
            };
            let at = vf_at.entry(node.to_string()).or_default();
            for nic in &sriov.nics {
                for vf in &nic.vfs {
                    let pci = vf.pci.to_string();
                    at.insert(pci.clone(), (nic.pf.clone(), vf.index, nic.vm));
                    let mut places: Vec<VfPlace> = links
                        .vfs
                        .iter()
                        .filter(|(_, h)| h.pci == pci)
                        .map(|(name, h)| VfPlace::Host {
                            name: name.clone(),
                            alias: h.alias.clone(),
                        })
                        .collect();
                    for (netns, in_ns) in &links.netns {
                        for (ifname, l) in in_ns {
                            if matches!(&l.kind, LinkKind::Vf { pci: p, .. } if *p == pci) {
                                places.push(VfPlace::Pod {
                                    netns: netns.display().to_string(),
                                    ifname: ifname.clone(),
                                });
                            }
                        }
                    }
                    let key = (nic.pf.clone(), vf.index);
                    vfs.push(VfState {
                        node: node.to_string(),
                        pci,
                        netdev: vf.netdev.clone(),
                        places,
                        pf_settings: (!nic.vm).then(|| links.pf_vfs.get(&key).copied()).flatten(),
                        initial: (!nic.vm)
                            .then(|| sriov.initial.get(&key).copied())
                            .flatten(),
                    });
                }
            }
        }
        let granted = world
            .devices()
            .admitted()
            .into_iter()
            .map(|a| {
                let pcis = a
                    .allocation
                    .values()
                    .flatten()
                    .map(ToString::to_string)
                    .collect();
                ((a.node, a.uid), pcis)
            })
            .collect();

        let mut out = Facts {
            live_sets: sets.iter().filter_map(live_set).collect(),
            vfs,
            sandboxes,
            granted,
            ..Facts::default()
        };
        for owned in pod_objs {
            let obj = &owned;
            let pod = pod_ref(obj);
            let node = obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .map(str::to_string);
            let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let view = views.get(&pod).filter(|v| v.uid == uid).cloned();
            let sandbox = view.as_ref().and_then(|v| v.sandbox.clone());
            out.live_pods.push(LivePod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                container_id: sandbox.as_ref().map(|s| s.container_id.clone()),
            });
            if let (Some(sb), Some(v)) = (&sandbox, &view) {
                if v.ready && !terminating {
                    for a in &sb.attachments {
                        for (ifname, addr) in result_addresses(a.result.as_ref()) {
                            if layouts.values().any(|l| l.contains(addr)) {
                                out.acked.push(Acked {
                                    namespace: pod.namespace.clone(),
                                    pod: pod.name.clone(),
                                    container_id: sb.container_id.clone(),
                                    interface: ifname,
                                    address: addr,
                                });
                            }
                        }
                    }
                }
            }
            // Secondary interfaces of ready Pods, as they are.
            if let (Some(sb), Some(v), Some(n)) = (&sandbox, &view, &node) {
                if v.ready && !terminating {
                    let (ports, links) = &node_state[n];
                    let netns = PathBuf::from(&sb.netns_path);
                    for entry in network_status(obj, &pod).into_iter().filter(|e| !e.default) {
                        let Some(ifname) = entry.interface.clone() else {
                            continue;
                        };
                        let link = links.netns.get(&netns).and_then(|l| l.get(&ifname));
                        let facts = link.map(|l| IfaceFacts {
                            name: ifname.clone(),
                            mac: mac_text(l.mac),
                            mtu: l.mtu,
                            ips: l.addresses.clone(),
                        });
                        let port = ports
                            .iter()
                            .find(|p| {
                                p.external_ids.get("spur.dev/container-id")
                                    == Some(&sb.container_id)
                                    && p.external_ids.get("spur.dev/interface") == Some(&ifname)
                            })
                            .map(|p| AccessPort {
                                name: p.name.clone(),
                                tag: p.tag,
                                external_ids: p.external_ids.clone(),
                            });
                        let vf = link.and_then(|l| match &l.kind {
                            LinkKind::Vf { pci, .. } => {
                                let (pf, index, vm) = vf_at.get(n)?.get(pci)?.clone();
                                let vlan = if vm {
                                    0
                                } else {
                                    links.pf_vfs.get(&(pf.clone(), index)).map_or(0, |s| s.vlan)
                                };
                                Some(VfFact { pf, index, vlan })
                            }
                            _ => None,
                        });
                        let mut annotated = annotated_pools(obj);
                        if annotated.is_empty() {
                            annotated = ns_pools.get(&pod.namespace).cloned().unwrap_or_default();
                        }
                        let (want_vlan, want_mtu, wanted_pools) =
                            nad_wants(&nads, &pools_by_name, &entry.name, &annotated);
                        if let Some(f) = &facts {
                            out.ready_interfaces.push(ReadyInterface {
                                id: pod.interface(&ifname).to_string(),
                                network: entry.name.clone(),
                                want_vlan,
                                vlan: port.as_ref().map(|p| p.tag).or(vf.as_ref().map(|v| v.vlan)),
                                want_mtu,
                                mtu: f.mtu,
                                pools: wanted_pools,
                                addresses: f.ips.clone(),
                            });
                        }
                        out.interfaces.push(IfaceFact {
                            id: pod.interface(&ifname),
                            node: n.clone(),
                            entry,
                            up: link.is_some_and(|l| l.up),
                            macvlan_parent: link.and_then(|l| match &l.kind {
                                LinkKind::Macvlan { parent } => Some(parent.clone()),
                                _ => None,
                            }),
                            facts,
                            port,
                            vf,
                        });
                    }
                }
            }
            out.pods.push(PodFact {
                pod,
                node,
                terminating,
                object: owned,
                view,
            });
        }
        for (node, (ports, links)) in &node_state {
            let mut att = Attachments::default();
            for p in ports {
                if let (Some(c), Some(i)) = (
                    p.external_ids.get("spur.dev/container-id"),
                    p.external_ids.get("spur.dev/interface"),
                ) {
                    att.ports
                        .entry((c.clone(), i.clone()))
                        .or_default()
                        .push(p.name.clone());
                }
            }
            for (name, h) in &links.hosts {
                att.host_links
                    .entry((h.netns.display().to_string(), h.ifname.clone()))
                    .or_default()
                    .push(name.clone());
            }
            out.attachments.insert(node.clone(), att);
        }
        match build_dataplane(world, &out.interfaces) {
            Ok(dp) => out.dataplane = Some(dp),
            Err(e) => out.dataplane_error = Some(e.to_string()),
        }
        out.pools = pools;
        out.blocks = blocks;
        out.held = held;
        out.bad_blocks = bad_blocks;
        out
    }
}

/// The pools an object's `ipam.spur.dev/ippools` annotation names.
fn annotated_pools(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(spur_core::ipamreq::POD_IPPOOLS_ANNOTATION))
        .and_then(Value::as_str)
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// (interface name, address) of every address a CNI result gives an
/// interface it names.
fn result_addresses(result: Option<&Value>) -> Vec<(String, IpAddr)> {
    let Some(r) = result else {
        return Vec::new();
    };
    let names: Vec<String> = r
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| {
                    i.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    r.get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| {
                    let net: IpNet = ip.get("address")?.as_str()?.parse().ok()?;
                    let idx = usize::try_from(ip.get("interface")?.as_u64()?).ok()?;
                    Some((names.get(idx)?.clone(), net.addr()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The data-plane model of the ready interfaces.
fn build_dataplane(
    world: &World,
    ifaces: &[IfaceFact],
) -> Result<Dataplane, dataplane::DataplaneError> {
    let testbed = world.testbed();
    // The interfaces with a link, per node.
    let mut on_node: BTreeMap<&str, Vec<&IfaceFact>> = BTreeMap::new();
    for i in ifaces.iter().filter(|i| i.facts.is_some()) {
        on_node.entry(i.node.as_str()).or_default().push(i);
    }
    let mut nodes = Vec::new();
    for (name, _, switch, _) in world.node_views() {
        let here = on_node.get(name).map(Vec::as_slice).unwrap_or_default();
        let spec_node = testbed.spec.nodes.iter().find(|n| n.name == name);
        let nics = spec_node.map(|n| n.nics.clone()).unwrap_or_default();
        // Every PF's embedded switch, with the VFs Pods have.
        let eswitches = spec_node
            .map(|n| n.sriov.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|pf| dataplane::Eswitch {
                pf: pf.pf.clone(),
                vfs: here
                    .iter()
                    .filter_map(|i| {
                        let vf = i.vf.as_ref().filter(|v| v.pf == pf.pf)?;
                        Some(dataplane::VfPort {
                            index: vf.index,
                            vlan: vf.vlan,
                            interface: i.id.to_string(),
                        })
                    })
                    .collect(),
            })
            .collect();
        let snap = switch.snapshot();
        let bridges = snap
            .bridges
            .values()
            .map(|b| dataplane::OvsBridge {
                name: b.spec.name.clone(),
                uplinks: b.spec.uplinks.clone(),
                mcast_snooping: b.spec.mcast_snooping,
                access_ports: here
                    .iter()
                    .filter_map(|i| {
                        let p = i.port.as_ref()?;
                        b.ports
                            .contains_key(&p.name)
                            .then(|| dataplane::AccessPort {
                                name: p.name.clone(),
                                vlan: (p.tag != 0).then_some(p.tag),
                                interface: i.id.to_string(),
                            })
                    })
                    .collect(),
            })
            .collect();
        let macvlans = here
            .iter()
            .filter_map(|i| {
                Some(dataplane::Macvlan {
                    parent: i.macvlan_parent.clone()?,
                    interface: i.id.to_string(),
                })
            })
            .collect();
        nodes.push(dataplane::Node {
            name: name.to_string(),
            nics,
            bridges,
            macvlans,
            eswitches,
        });
    }
    let segments = testbed
        .spec
        .fabric
        .iter()
        .map(|s| dataplane::Segment {
            name: s.name.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| dataplane::NicRef::new(p.node.clone(), p.nic.clone()))
                .collect(),
            allowed_vlans: s.allowed_vlans.clone(),
            mcast_snooping: false,
        })
        .collect();
    let interfaces = ifaces
        .iter()
        .filter_map(|i| {
            let f = i.facts.as_ref()?;
            let mut itf = dataplane::Interface::new(i.id.to_string(), f.ips.clone());
            itf.mtu = f.mtu;
            itf.up = i.up;
            Some(itf)
        })
        .collect();
    Dataplane::build(&Topology {
        nodes,
        segments,
        interfaces,
    })
}

/// The report of the run, in the harness's shape: Pods in the order the
/// manifests created them, reachability and multicast from the data-plane
/// model, pool usage from the IPPools, refusals, and every expectation
/// that failed plus every disagreement seen.
pub(crate) fn build(
    world: &World,
    facts: Facts,
    rejected: &[Rejection],
    order: &[(PodRef, Option<String>)],
) -> Report {
    let testbed = world.testbed();
    let mut report = Report::new(testbed.name.clone(), Runner::Sim);
    let mut problems = Vec::new();
    report.rejected = rejected.to_vec();
    report.pools = facts
        .pools
        .iter()
        .filter_map(|p| {
            let u = spur_controller::usage::stored_usage(p)?;
            Some(PoolReport {
                name: p.metadata.name.clone()?,
                total: u64::try_from(u.total).unwrap_or(u64::MAX),
                used: u64::try_from(u.used).unwrap_or(u64::MAX),
            })
        })
        .collect();
    let layouts: BTreeMap<String, PoolLayout> = facts
        .pools
        .iter()
        .filter_map(|p| PoolLayout::from_pool(p).ok().map(|l| (l.name.clone(), l)))
        .collect();
    let by_pod: BTreeMap<&PodRef, &PodFact> = facts.pods.iter().map(|p| (&p.pod, p)).collect();
    let by_interface: BTreeMap<&InterfaceRef, &IfaceFact> =
        facts.interfaces.iter().map(|i| (&i.id, i)).collect();
    let links_of: BTreeMap<&str, LinksSnapshot> = world
        .node_views()
        .map(|(n, _, _, l)| (n, l.snapshot()))
        .collect();
    let mut endpoints: BTreeSet<InterfaceRef> = BTreeSet::new();
    for (pod, placed) in order {
        let Some(p) = by_pod.get(pod) else {
            report.pods.push(PodReport {
                pod: pod.clone(),
                node: placed.clone(),
                ready: false,
                reason: Some("the Pod no longer exists".into()),
                interfaces: Vec::new(),
            });
            continue;
        };
        let view = p.view.as_ref();
        let ready = view.is_some_and(|v| v.ready);
        let mut pr = PodReport {
            pod: pod.clone(),
            node: p.node.clone(),
            ready,
            reason: if ready {
                None
            } else {
                view.and_then(|v| v.last_error.clone())
                    .or_else(|| Some("not handled by its kubelet".into()))
            },
            interfaces: Vec::new(),
        };
        if let (true, Some(sb), Some(node)) = (
            ready,
            view.and_then(|v| v.sandbox.as_ref()),
            p.node.as_ref(),
        ) {
            let entries = network_status(&p.object, pod);
            if entries.is_empty() {
                problems.push(format!(
                    "Pod {pod}: ready, but it has no {NETWORK_STATUS_ANNOTATION} annotation"
                ));
            }
            let links = links_of.get(node.as_str());
            for entry in &entries {
                let Some(ifname) = entry.interface.as_deref() else {
                    continue;
                };
                let link = links
                    .and_then(|l| l.netns.get(&PathBuf::from(&sb.netns_path)))
                    .and_then(|l| l.get(ifname));
                let f = link.map(|l| IfaceFacts {
                    name: ifname.to_string(),
                    mac: mac_text(l.mac),
                    mtu: l.mtu,
                    ips: l.addresses.clone(),
                });
                let port = by_interface.get(&pod.interface(ifname)).and_then(|i| {
                    i.port
                        .clone()
                        .or_else(|| i.vf.as_ref().map(VfFact::as_port))
                });
                let (itf, p) = spur_hil::run::interface_report(
                    pod,
                    entry,
                    f.as_ref(),
                    port.as_ref(),
                    &layouts,
                );
                problems.extend(p);
                if let Some(itf) = itf {
                    endpoints.insert(pod.interface(ifname));
                    pr.interfaces.push(itf);
                }
            }
        }
        report.pods.push(pr);
    }

    let reachable = |a: &InterfaceRef, b: &InterfaceRef| -> bool {
        match &facts.dataplane {
            Some(dp) if endpoints.contains(a) && endpoints.contains(b) => dp
                .reachable(&a.to_string(), &b.to_string())
                .unwrap_or(false),
            _ => false,
        }
    };
    for (a, b) in spur_hil::run::reachability_pairs(&testbed.expect) {
        let r = reachable(&a, &b);
        report.reachability.entry(a).or_default().insert(b, r);
    }
    if let (Some(e), false) = (&facts.dataplane_error, report.reachability.is_empty()) {
        problems.push(format!("the data-plane model: {e}"));
    }
    for m in &testbed.expect.multicast {
        let present = |ids: &[InterfaceRef]| -> Vec<String> {
            ids.iter()
                .filter(|i| endpoints.contains(*i))
                .map(ToString::to_string)
                .collect()
        };
        let Some(dp) = &facts.dataplane else {
            problems.push(format!(
                "multicast {} from {}: could not be measured: {}",
                m.group,
                m.sender,
                facts.dataplane_error.clone().unwrap_or_default()
            ));
            continue;
        };
        let mut received: BTreeMap<InterfaceRef, u64> = m
            .members
            .iter()
            .chain(&m.non_members)
            .map(|i| (i.clone(), 0))
            .collect();
        if endpoints.contains(&m.sender) {
            match dp.multicast(
                m.group,
                &m.sender.to_string(),
                &present(&m.members),
                &present(&m.non_members),
                MULTICAST_COUNT,
            ) {
                Ok(got) => {
                    for (id, n) in got {
                        if let Some(r) = received.iter_mut().find(|(k, _)| k.to_string() == id) {
                            *r.1 = u64::from(n);
                        }
                    }
                }
                Err(e) => problems.push(format!(
                    "multicast {} from {}: could not be measured: {e}",
                    m.group, m.sender
                )),
            }
        }
        report.multicast.push(MulticastReport {
            group: m.group,
            sender: m.sender.clone(),
            received,
        });
    }
    report.failures = check(&report, &testbed.expect)
        .iter()
        .map(ToString::to_string)
        .collect();
    report.failures.extend(problems);
    report
}
