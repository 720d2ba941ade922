//! The invariants a run checks after every step and at quiescence, as pure
//! functions of what the world holds: the IPPools and IPAMBlocks in the
//! API, the Pods with what their kubelet acknowledged, and what the
//! switches and kernels of the nodes hold.
//!
//! Each check returns the violations it found, each naming the invariant
//! and the objects involved, so the run can print the seed, the invariant
//! and the trace that led there.
//!
//! SR-IOV VFs are physical devices: they move between namespaces but are
//! never created or deleted, so none may be lost, be in two places, sit in
//! a namespace no live sandbox has, or be in a Pod the kubelet's device
//! manager did not give it to; and once the cluster has settled every VF
//! outside a live sandbox is back in the host as it was at the start
//! ([`vfs_accounted`]).
//!
//! What does not live here: collecting the facts (the world), the data-
//! plane answers (`crate::dataplane`), and deciding when a check applies
//! (some hold only once garbage collection has converged).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use spur_core::allocator::window_cidr;
use spur_core::ipam::address;
use spur_core::ipamblock::{IPAMBlock, Owner, OwnerKind};
use spur_core::ippool::{IPPool, PoolLayout};
use spur_core::pool::Family;
use spur_core::sriov::PfVfSettings;

/// The largest number of allocations a block holds (the window's size).
pub const MAX_BLOCK_ALLOCATIONS: usize = 64;
/// The largest IPAMBlock object, in bytes of JSON, the run accepts (well
/// under etcd's 1.5 MiB request limit; 64 owners of long names fit).
pub const MAX_BLOCK_BYTES: usize = 64 * 1024;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Which invariant (a stable name: `no-double-owner`, ...).
    pub invariant: &'static str,
    /// What was found, naming the objects.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {}: {}", self.invariant, self.detail)
    }
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// One allocation as the blocks hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The address.
    pub address: IpAddr,
    /// The pool.
    pub pool: String,
    /// The block.
    pub block: String,
    /// Who holds it.
    pub owner: Owner,
}

/// Every allocation of `blocks`, with its address; blocks whose CIDR cannot
/// be read are reported as violations of `ipam-objects`.
pub fn held(blocks: &[IPAMBlock]) -> (Vec<Held>, Vec<Violation>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for b in blocks {
        let name = b.metadata.name.clone().unwrap_or_default();
        let Ok(cidr) = b.spec.cidr.parse::<IpNet>() else {
            bad.push(violation(
                "ipam-objects",
                format!(
                    "IPAMBlock {name}: spec.cidr = {:?} is not a CIDR",
                    b.spec.cidr
                ),
            ));
            continue;
        };
        let family = match cidr {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        };
        let base = match cidr.network() {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        debug_assert_eq!(window_cidr(family, base), cidr.trunc());
        for a in &b.spec.allocations {
            out.push(Held {
                address: address(family, base, u32::from(a.offset)),
                pool: b.spec.pool.clone(),
                block: name.clone(),
                owner: a.owner.clone(),
            });
        }
    }
    (out, bad)
}

/// No address is held by two owners, and every held address is one its
/// pool hands out (inside a range, not the gateway, not excluded).
pub fn no_double_owner(held: &[Held], pools: &[IPPool]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut by_addr: BTreeMap<IpAddr, &Held> = BTreeMap::new();
    for h in held {
        if let Some(first) = by_addr.get(&h.address) {
            out.push(violation(
                "no-double-owner",
                format!(
                    "{} is held by {} (IPAMBlock {}) and by {} (IPAMBlock {})",
                    h.address, first.owner, first.block, h.owner, h.block
                ),
            ));
        } else {
            by_addr.insert(h.address, h);
        }
    }
    let layouts: BTreeMap<String, PoolLayout> = pools
        .iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            PoolLayout::from_pool(p).ok().map(|l| (name, l))
        })
        .collect();
    for h in held {
        if let Some(l) = layouts.get(&h.pool) {
            if !l.contains(h.address) {
                out.push(violation(
                    "no-double-owner",
                    format!(
                        "{} held by {} (IPAMBlock {}) is not an address IPPool {} hands out",
                        h.address, h.owner, h.block, h.pool
                    ),
                ));
            }
        }
    }
    out
}

/// An address a successful CNI ADD answered with, for an interface whose
/// sandbox has not been deleted since.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acked {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container (sandbox) ID.
    pub container_id: String,
    /// Interface in the Pod.
    pub interface: String,
    /// The address (without prefix).
    pub address: IpAddr,
}

fn owner_is(o: &Owner, a: &Acked) -> bool {
    o.namespace == a.namespace
        && o.interface == a.interface
        && o.container_id == a.container_id
        && (o.pod == a.pod || (o.kind == OwnerKind::Pod && o.name == a.pod))
}

/// Every acknowledged allocation is present: held, by that sandbox's
/// interface.
pub fn acknowledged_present(held: &[Held], acked: &[Acked]) -> Vec<Violation> {
    let by_addr: BTreeMap<IpAddr, &Held> = held.iter().map(|h| (h.address, h)).collect();
    acked
        .iter()
        .filter_map(|a| match by_addr.get(&a.address) {
            Some(h) if owner_is(&h.owner, a) => None,
            Some(h) => Some(violation(
                "acknowledged-present",
                format!(
                    "{} was given to {}/{}@{} (container {}) but IPAMBlock {} says {} holds it",
                    a.address, a.namespace, a.pod, a.interface, a.container_id, h.block, h.owner
                ),
            )),
            None => Some(violation(
                "acknowledged-present",
                format!(
                    "{} was given to {}/{}@{} (container {}) but no IPAMBlock holds it",
                    a.address, a.namespace, a.pod, a.interface, a.container_id
                ),
            )),
        })
        .collect()
}

/// A Pod as the garbage-collection invariant sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its current sandbox's container ID, if it has one.
    pub container_id: Option<String>,
}

/// A StatefulSet as the garbage-collection invariant sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSet {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// spec.replicas.
    pub replicas: u32,
}

/// Once garbage collection has converged: every allocation belongs to a
/// live holder — a Pod's current sandbox, or an ordinal of a StatefulSet
/// within its replicas.
pub fn allocations_have_live_owners(
    held: &[Held],
    pods: &[LivePod],
    sets: &[LiveSet],
) -> Vec<Violation> {
    let pods: BTreeMap<(&str, &str), &LivePod> = pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
        .collect();
    let sets: BTreeMap<(&str, &str), u32> = sets
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s.replicas))
        .collect();
    held.iter()
        .filter_map(|h| {
            let o = &h.owner;
            let why = match o.kind {
                OwnerKind::Pod => match pods.get(&(o.namespace.as_str(), o.name.as_str())) {
                    None => Some("its Pod is gone".to_string()),
                    Some(p) if p.container_id.as_deref() != Some(o.container_id.as_str()) => {
                        Some(format!(
                            "its Pod's sandbox is now {}",
                            p.container_id.as_deref().unwrap_or("none")
                        ))
                    }
                    Some(_) => None,
                },
                OwnerKind::StatefulSet => {
                    match sets.get(&(o.namespace.as_str(), o.name.as_str())) {
                        None => Some("its StatefulSet is gone".to_string()),
                        Some(&r) if o.ordinal.unwrap_or(0) >= r => {
                            Some(format!("its StatefulSet has {r} replicas"))
                        }
                        Some(_) => None,
                    }
                }
            };
            why.map(|why| {
                violation(
                    "gc-converged",
                    format!("{} held by {} (IPAMBlock {}): {why}", h.address, o, h.block),
                )
            })
        })
        .collect()
}

/// One secondary interface of a ready Pod: what its NAD and pools ask for
/// and what the node really has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyInterface {
    /// `NS/POD@IFNAME`.
    pub id: String,
    /// The NAD (`NS/NAME`).
    pub network: String,
    /// The VLAN the NAD and pools ask for (0: untagged), when the network
    /// is on an OVS bridge.
    pub want_vlan: Option<u16>,
    /// The VLAN tag of its access port (0: none).
    pub vlan: Option<u16>,
    /// The MTU asked for.
    pub want_mtu: Option<u32>,
    /// The MTU it has.
    pub mtu: u32,
    /// The pools the NAD names.
    pub pools: Vec<String>,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
}

/// Every ready Pod's interfaces match their NADs and pools: VLAN, MTU, and
/// each address from one of the NAD's pools (allocatable there, with the
/// pool's prefix length).
pub fn ready_pods_match(ifaces: &[ReadyInterface], pools: &[IPPool]) -> Vec<Violation> {
    let by_name: BTreeMap<&str, &IPPool> = pools
        .iter()
        .filter_map(|p| p.metadata.name.as_deref().map(|n| (n, p)))
        .collect();
    let mut out = Vec::new();
    for i in ifaces {
        if i.want_vlan != i.vlan && i.want_vlan.is_some() {
            out.push(violation(
                "ready-pods-match",
                format!(
                    "{} (network {}): VLAN {:?}, its network asks for {:?}",
                    i.id, i.network, i.vlan, i.want_vlan
                ),
            ));
        }
        if let Some(m) = i.want_mtu {
            if m != i.mtu {
                out.push(violation(
                    "ready-pods-match",
                    format!("{} (network {}): MTU {}, asked {m}", i.id, i.network, i.mtu),
                ));
            }
        }
        for a in &i.addresses {
            let from = i.pools.iter().find(|p| {
                by_name.get(p.as_str()).is_some_and(|pool| {
                    PoolLayout::from_pool(pool).is_ok_and(|l| l.contains(a.addr()))
                        && pool.spec.subnet_info.prefix_length == a.prefix_len()
                })
            });
            if from.is_none() {
                out.push(violation(
                    "ready-pods-match",
                    format!(
                        "{} (network {}): address {a} comes from none of its pools {:?}",
                        i.id, i.network, i.pools
                    ),
                ));
            }
        }
    }
    out
}

/// VLAN isolation: interfaces the data plane puts in one L2 domain are on
/// the same VLAN. `domain` gives an interface's L2 domain (None: detached).
/// One violation per domain and extra VLAN, naming the first interface of
/// the domain's lowest VLAN and the first of the other; linear in the
/// number of interfaces (the cluster mode has tens of thousands).
pub fn vlan_isolation(
    ifaces: &[ReadyInterface],
    domain: impl Fn(&str) -> Option<usize>,
) -> Vec<Violation> {
    let mut domains: BTreeMap<usize, BTreeMap<u16, &str>> = BTreeMap::new();
    for i in ifaces {
        let (Some(vlan), Some(d)) = (i.vlan, domain(&i.id)) else {
            continue;
        };
        domains
            .entry(d)
            .or_default()
            .entry(vlan)
            .or_insert(i.id.as_str());
    }
    let mut out = Vec::new();
    for vlans in domains.values() {
        let mut it = vlans.iter();
        let Some((first_vlan, first)) = it.next() else {
            continue;
        };
        for (vlan, id) in it {
            out.push(violation(
                "vlan-isolation",
                format!("{first} (VLAN {first_vlan}) and {id} (VLAN {vlan}) share an L2 domain"),
            ));
        }
    }
    out
}

/// What exists for one (container, interface) on a node: the retries of
/// CNI calls must never leave more than one of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Access ports per (container ID, interface).
    pub ports: BTreeMap<(String, String), Vec<String>>,
    /// Host ends of veths per (container ID, interface).
    pub host_links: BTreeMap<(String, String), Vec<String>>,
}

/// CNI retries are idempotent: at most one access port and one host link
/// per (container, interface), and at most one allocation per owner and
/// pool.
pub fn retries_idempotent(node: &str, att: &Attachments, held: &[Held]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (what, map) in [
        ("access ports", &att.ports),
        ("host links", &att.host_links),
    ] {
        for ((c, i), names) in map {
            if names.len() > 1 {
                out.push(violation(
                    "retries-idempotent",
                    format!(
                        "node {node}: container {c} interface {i} has {} {what}: {names:?}",
                        names.len()
                    ),
                ));
            }
        }
    }
    let mut per_owner: BTreeMap<(spur_core::ipamblock::OwnerKey, &str, bool), Vec<IpAddr>> =
        BTreeMap::new();
    for h in held {
        per_owner
            .entry((h.owner.key(), h.pool.as_str(), h.address.is_ipv4()))
            .or_default()
            .push(h.address);
    }
    for ((key, pool, _), addrs) in per_owner {
        if addrs.len() > 1 {
            out.push(violation(
                "retries-idempotent",
                format!(
                    "{key:?} holds {} addresses of IPPool {pool}: {addrs:?}",
                    addrs.len()
                ),
            ));
        }
    }
    out
}

/// Where a node's kernel shows a VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfPlace {
    /// In the agent's (host) namespace.
    Host {
        /// Its netdev name there.
        name: String,
        /// Its alias (empty: none).
        alias: String,
    },
    /// In a Pod's namespace.
    Pod {
        /// The namespace's path.
        netns: String,
        /// Its name there.
        ifname: String,
    },
}

impl fmt::Display for VfPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfPlace::Host { name, alias } if alias.is_empty() => write!(f, "the host as {name}"),
            VfPlace::Host { name, alias } => {
                write!(f, "the host as {name} (alias {alias:?})")
            }
            VfPlace::Pod { netns, ifname } => write!(f, "namespace {netns} as {ifname}"),
        }
    }
}

/// One VF of a node as the node's kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfState {
    /// The node.
    pub node: String,
    /// Its PCI address.
    pub pci: String,
    /// Its own netdev name (as the node came up).
    pub netdev: String,
    /// Every place it is seen (exactly one, unless something is wrong).
    pub places: Vec<VfPlace>,
    /// What its PF sets for it now (None: a VM node, no PF).
    pub pf_settings: Option<PfVfSettings>,
    /// What its PF set for it at the start.
    pub initial: Option<PfVfSettings>,
}

/// The Pod a live sandbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOwner {
    /// `NAMESPACE/NAME`.
    pub pod: String,
    /// The Pod's UID the sandbox was made for.
    pub uid: String,
}

/// Nothing leaks a VF. Always: every VF is in exactly one place; a VF in a
/// Pod's namespace is in a live sandbox's (`sandboxes`: (node, netns path)
/// to its Pod) whose Pod the device manager gave it to (`granted`: (node,
/// Pod UID) to PCI addresses). Once `settled` (the cluster converged, or
/// every Pod is gone): every VF outside a live sandbox is in the host under
/// its own name, without alias, with the PF settings it had at the start.
pub fn vfs_accounted(
    vfs: &[VfState],
    sandboxes: &BTreeMap<(String, String), SandboxOwner>,
    granted: &BTreeMap<(String, String), BTreeSet<String>>,
    settled: bool,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for vf in vfs {
        let who = format!("node {}: VF {} ({})", vf.node, vf.pci, vf.netdev);
        match vf.places.as_slice() {
            [] => out.push(violation(
                "vf-ownership",
                format!("{who} is nowhere: neither in the host nor in a Pod"),
            )),
            [_] => {}
            many => out.push(violation(
                "vf-ownership",
                format!(
                    "{who} is in {} places at once: {}",
                    many.len(),
                    many.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
        let mut in_live_sandbox = false;
        for place in &vf.places {
            let VfPlace::Pod { netns, .. } = place else {
                continue;
            };
            match sandboxes.get(&(vf.node.clone(), netns.clone())) {
                None => out.push(violation(
                    "vf-ownership",
                    format!("{who} is in {place}, which no live sandbox has"),
                )),
                Some(owner) => {
                    in_live_sandbox = true;
                    let given = granted
                        .get(&(vf.node.clone(), owner.uid.clone()))
                        .is_some_and(|g| g.contains(&vf.pci));
                    if !given {
                        out.push(violation(
                            "vf-ownership",
                            format!(
                                "{who} is in {place} of Pod {} (UID {}), which the device \
                                 manager did not give it",
                                owner.pod, owner.uid
                            ),
                        ));
                    }
                }
            }
        }
        if !settled || in_live_sandbox {
            continue;
        }
        if let Some(p) = vf_not_home(vf) {
            out.push(violation("vf-returned", format!("{who}: {p}")));
        }
    }
    out
}

/// Why a VF no Pod holds is not back as it was at the start (None: it
/// is).
pub fn vf_not_home(vf: &VfState) -> Option<String> {
    match vf.places.as_slice() {
        [VfPlace::Host { name, alias }] => {
            if *name != vf.netdev {
                return Some(format!(
                    "is back in the host as {name}, not under its own name"
                ));
            }
            if !alias.is_empty() {
                return Some(format!("is back in the host with alias {alias:?}"));
            }
        }
        places => {
            return Some(format!(
                "no Pod holds it, but it is in {}",
                places
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
    if vf.pf_settings != vf.initial {
        return Some(format!(
            "its PF sets {} for it, not {} as at the start",
            settings_text(vf.pf_settings.as_ref()),
            settings_text(vf.initial.as_ref())
        ));
    }
    None
}

/// What a PF sets for a VF, as `ip link show` words it (`-`: not known).
fn settings_text(s: Option<&PfVfSettings>) -> String {
    let Some(s) = s else {
        return "nothing (no PF)".to_string();
    };
    let flag = |b: Option<bool>| match b {
        Some(true) => "on",
        Some(false) => "off",
        None => "-",
    };
    format!(
        "mac {}, vlan {}, qos {}, spoofchk {}, trust {}",
        s.mac
            .map_or_else(|| "00:00:00:00:00:00".to_string(), |m| m.to_string()),
        s.vlan,
        s.qos,
        flag(s.spoofchk),
        flag(s.trust)
    )
}

/// IPAM objects stay within their size bounds.
pub fn ipam_objects_bounded(blocks: &[IPAMBlock]) -> Vec<Violation> {
    blocks
        .iter()
        .filter_map(|b| {
            let name = b.metadata.name.clone().unwrap_or_default();
            let n = b.spec.allocations.len();
            let bytes = serde_json::to_vec(b).map(|v| v.len()).unwrap_or(0);
            let offsets: BTreeSet<u8> = b.spec.allocations.iter().map(|a| a.offset).collect();
            if n > MAX_BLOCK_ALLOCATIONS {
                Some(format!(
                    "IPAMBlock {name}: {n} allocations (at most {MAX_BLOCK_ALLOCATIONS})"
                ))
            } else if bytes > MAX_BLOCK_BYTES {
                Some(format!(
                    "IPAMBlock {name}: {bytes} bytes (at most {MAX_BLOCK_BYTES})"
                ))
            } else if offsets.len() != n {
                Some(format!("IPAMBlock {name}: an offset is allocated twice"))
            } else {
                None
            }
        })
        .map(|d| violation("ipam-objects", d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spur_core::ipamblock::{BlockAllocation, IPAMBlockSpec};
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};

    fn pool(name: &str, cidr: &str, gw: &str) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                ip_ranges: vec![IpRange::cidr(cidr)],
                subnet_info: SubnetInfo {
                    gateway: gw.into(),
                    prefix_length: 24,
                    vlan: Some(100),
                },
                exclude: vec!["10.0.0.9".into()],
            },
        )
    }

    fn block(name: &str, cidr: &str, allocs: &[(u8, Owner)]) -> IPAMBlock {
        IPAMBlock::new(
            name,
            IPAMBlockSpec {
                pool: "p".into(),
                cidr: cidr.into(),
                node: "n".into(),
                allocations: allocs
                    .iter()
                    .map(|(o, w)| BlockAllocation {
                        offset: *o,
                        owner: w.clone(),
                    })
                    .collect(),
            },
        )
    }

    fn own(pod: &str, c: &str) -> Owner {
        Owner::pod("default", pod, c, "eth1")
    }

    #[test]
    fn two_owners_of_one_address_and_unallocatable_addresses_are_violations() {
        let pools = [pool("p", "10.0.0.0/24", "10.0.0.1")];
        let blocks = [
            block(
                "b1",
                "10.0.0.0/26",
                &[(5, own("a", "c1")), (9, own("x", "c9"))],
            ),
            block("b2", "10.0.0.0/26", &[(5, own("b", "c2"))]),
        ];
        let (h, bad) = held(&blocks);
        assert!(bad.is_empty());
        let v = no_double_owner(&h, &pools);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].detail.contains("10.0.0.5"));
        assert!(v[1].detail.contains("10.0.0.9"), "excluded: {v:?}");
    }

    #[test]
    fn acknowledged_addresses_must_be_held_by_their_sandbox() {
        let blocks = [block("b1", "10.0.0.0/26", &[(5, own("a", "c1"))])];
        let (h, _) = held(&blocks);
        let ack = |pod: &str, c: &str, last: u8| Acked {
            namespace: "default".into(),
            pod: pod.into(),
            container_id: c.into(),
            interface: "eth1".into(),
            address: IpAddr::from([10, 0, 0, last]),
        };
        assert!(acknowledged_present(&h, &[ack("a", "c1", 5)]).is_empty());
        assert_eq!(acknowledged_present(&h, &[ack("a", "c2", 5)]).len(), 1);
        assert_eq!(acknowledged_present(&h, &[ack("a", "c1", 6)]).len(), 1);
    }

    #[test]
    fn allocations_of_gone_pods_replaced_sandboxes_and_shrunk_sets_are_found() {
        let set_owner = Owner::stateful_set("default", "db", 2, "eth1", "db-2", "c7");
        let blocks = [block(
            "b1",
            "10.0.0.0/26",
            &[
                (5, own("a", "c1")),
                (6, own("b", "old")),
                (7, own("gone", "c3")),
                (8, set_owner),
            ],
        )];
        let (h, _) = held(&blocks);
        let pods = [
            LivePod {
                namespace: "default".into(),
                name: "a".into(),
                container_id: Some("c1".into()),
            },
            LivePod {
                namespace: "default".into(),
                name: "b".into(),
                container_id: Some("new".into()),
            },
        ];
        let sets = [LiveSet {
            namespace: "default".into(),
            name: "db".into(),
            replicas: 2,
        }];
        let v = allocations_have_live_owners(&h, &pods, &sets);
        let found: Vec<String> = v.iter().map(|v| v.detail.clone()).collect();
        assert_eq!(v.len(), 3, "{found:?}");
        assert!(found[0].contains("sandbox is now new"));
        assert!(found[1].contains("Pod is gone"));
        assert!(found[2].contains("2 replicas"));
    }

    #[test]
    fn ready_interfaces_are_checked_against_their_network() {
        let pools = [pool("p", "10.0.0.0/24", "10.0.0.1")];
        let good = ReadyInterface {
            id: "default/a@eth1".into(),
            network: "default/n".into(),
            want_vlan: Some(100),
            vlan: Some(100),
            want_mtu: Some(1500),
            mtu: 1500,
            pools: vec!["p".into()],
            addresses: vec!["10.0.0.5/24".parse().unwrap_or_else(|_| unreachable!())],
        };
        assert!(ready_pods_match(std::slice::from_ref(&good), &pools).is_empty());
        let mut bad = good.clone();
        bad.vlan = Some(200);
        bad.mtu = 9000;
        bad.addresses = vec![
            "10.0.0.1/24".parse().unwrap_or_else(|_| unreachable!()),
            "10.0.0.6/16".parse().unwrap_or_else(|_| unreachable!()),
        ];
        assert_eq!(ready_pods_match(&[bad], &pools).len(), 4);
    }

    #[test]
    fn vlans_sharing_a_domain_break_isolation() {
        let i = |id: &str, vlan: u16| ReadyInterface {
            id: id.into(),
            network: "n".into(),
            want_vlan: Some(vlan),
            vlan: Some(vlan),
            want_mtu: None,
            mtu: 1500,
            pools: vec![],
            addresses: vec![],
        };
        let ifaces = [i("a", 100), i("b", 200), i("c", 100), i("d", 300)];
        let apart = |id: &str| Some(usize::from(id == "b" || id == "d") + usize::from(id == "d"));
        assert!(vlan_isolation(&ifaces, apart).is_empty());
        let detached = |id: &str| (id != "b" && id != "d").then_some(0);
        assert!(vlan_isolation(&ifaces, detached).is_empty());
        let one = vlan_isolation(&ifaces, |_| Some(0));
        let details: Vec<&str> = one.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "a (VLAN 100) and b (VLAN 200) share an L2 domain",
                "a (VLAN 100) and d (VLAN 300) share an L2 domain"
            ]
        );
    }

    #[test]
    fn duplicates_left_by_retries_are_found() {
        let mut att = Attachments::default();
        att.ports.insert(
            ("c1".into(), "eth1".into()),
            vec!["spa".into(), "spb".into()],
        );
        let blocks = [block(
            "b1",
            "10.0.0.0/26",
            &[(5, own("a", "c1")), (6, own("a", "c1"))],
        )];
        let (h, _) = held(&blocks);
        let v = retries_idempotent("node-a", &att, &h);
        assert_eq!(v.len(), 2, "{v:?}");
    }

    fn vf(places: Vec<VfPlace>, vlan: u16) -> VfState {
        let defaults = PfVfSettings {
            spoofchk: Some(true),
            trust: Some(false),
            ..PfVfSettings::default()
        };
        VfState {
            node: "n".into(),
            pci: "0000:3b:01.0".into(),
            netdev: "ens1f0v0".into(),
            places,
            pf_settings: Some(PfVfSettings { vlan, ..defaults }),
            initial: Some(defaults),
        }
    }

    fn home(name: &str, alias: &str) -> VfPlace {
        VfPlace::Host {
            name: name.into(),
            alias: alias.into(),
        }
    }

    fn in_pod(netns: &str) -> VfPlace {
        VfPlace::Pod {
            netns: netns.into(),
            ifname: "eth1".into(),
        }
    }

    #[test]
    fn a_vf_is_in_one_live_sandbox_of_a_pod_it_was_given_to() {
        let sandboxes = BTreeMap::from([(
            ("n".to_string(), "/ns/a".to_string()),
            SandboxOwner {
                pod: "default/a".into(),
                uid: "u-a".into(),
            },
        )]);
        let granted = BTreeMap::from([(
            ("n".to_string(), "u-a".to_string()),
            BTreeSet::from(["0000:3b:01.0".to_string()]),
        )]);
        let none = BTreeMap::new();
        let ok = vf(vec![in_pod("/ns/a")], 100);
        assert!(vfs_accounted(std::slice::from_ref(&ok), &sandboxes, &granted, true).is_empty());
        let v = vfs_accounted(std::slice::from_ref(&ok), &sandboxes, &none, false);
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("did not give it"), "{v:?}");
        let v = vfs_accounted(
            &[vf(vec![in_pod("/ns/gone")], 0)],
            &sandboxes,
            &granted,
            false,
        );
        assert!(v[0].detail.contains("no live sandbox"), "{v:?}");
        let v = vfs_accounted(
            &[vf(vec![in_pod("/ns/a"), home("ens1f0v0", "")], 0)],
            &sandboxes,
            &granted,
            false,
        );
        assert!(v[0].detail.contains("2 places"), "{v:?}");
        let v = vfs_accounted(&[vf(vec![], 0)], &sandboxes, &granted, false);
        assert!(v[0].detail.contains("nowhere"), "{v:?}");
    }

    #[test]
    fn once_settled_a_free_vf_is_home_under_its_name_as_it_was() {
        let none: BTreeMap<(String, String), SandboxOwner> = BTreeMap::new();
        let nothing: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let clean = vf(vec![home("ens1f0v0", "")], 0);
        assert!(vfs_accounted(std::slice::from_ref(&clean), &none, &nothing, true).is_empty());
        for (bad, want) in [
            (vf(vec![home("eth1", "")], 0), "not under its own name"),
            (
                vf(vec![home("ens1f0v0", "spur-vf name=ens1f0v0")], 0),
                "alias",
            ),
            (
                vf(vec![home("ens1f0v0", "")], 100),
                "sets mac 00:00:00:00:00:00, vlan 100, qos 0, spoofchk on, trust off for it, \
                 not mac 00:00:00:00:00:00, vlan 0",
            ),
        ] {
            assert!(
                vfs_accounted(std::slice::from_ref(&bad), &none, &nothing, false).is_empty(),
                "only once settled"
            );
            let v = vfs_accounted(&[bad], &none, &nothing, true);
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].invariant, "vf-returned");
            assert!(v[0].detail.contains(want), "{v:?}");
        }
    }

    #[test]
    fn oversized_blocks_are_found() {
        let many: Vec<(u8, Owner)> = (0..64).map(|o| (o, own("a", &format!("c{o}")))).collect();
        assert!(ipam_objects_bounded(&[block("b", "10.0.0.0/26", &many)]).is_empty());
        let twice = [(1, own("a", "c1")), (1, own("b", "c2"))];
        assert_eq!(
            ipam_objects_bounded(&[block("b", "10.0.0.0/26", &twice)]).len(),
            1
        );
    }
}
