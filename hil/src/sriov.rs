//! SR-IOV in the lab: the emulated NICs every `sriov:` entry of a testbed
//! gets, and real SR-IOV NICs for labs that have them (`--sriov-pf`).
//!
//! Emulated (CI, any machine): for PF `P` of a node, with the names and
//! PCI addresses of [`spur_testbed::sriov::node_nics`] (the simulator's):
//!
//! - an emulated sysfs tree under the node's directory
//!   ([`spur_node::sriov::sysfs::SysfsTree`]): the PF at its PCI address
//!   with its VFs (`virtfn<N>`, `physfn`), each VF's netdev `{P}v{k}`; on a
//!   VM node (`vm: true`) the VFs alone, without their PF;
//! - the NIC's embedded switch: an OVS bridge `P` in the node's own Open
//!   vSwitch (its local internal port is the PF netdev `P`), VF `k` a veth
//!   pair, `{P}v{k}` in the node's namespace (TX checksum offload off: it
//!   ends in a Pod) and its representor `{P}r{k}` on bridge `P` as an
//!   access port (`vlan_mode=access`, no tag: untagged frames only), and
//!   an uplink veth `{P}u` (a trunk port of bridge `P`) whose other end is
//!   the PF's port in the fabric segment listing `NODE/P`;
//! - the agent runs with `--sysfs-root` (the tree), `--pod-resources-socket`
//!   (the node's socket, served by the harness's kubelet stand-in) and
//!   `--sriov-emulated-nics`: VF VLANs and the other PF settings are kept
//!   on the representor ports (`spur_node::sriov::emulated`), everything
//!   else (sysfs discovery, PodResources, moving the netdev into the Pod)
//!   is the agent's real code.
//!
//! Real (`--sriov-pf NODE/PF=HOSTIF`, labs with an SR-IOV NIC whose VFs
//! the operator created through `sriov_numvfs`): the host PF moves into
//! the node's namespace as `PF`, and so do the netdevs of its first `vfs`
//! VFs (under their own names); nothing else of the host is touched. The
//! agent reads the sysfs `ip netns exec` mounts for the node's namespace
//! and sets VFs through the PF with netlink. The testbed's PCI addresses
//! map to the real VFs in index order ([`real_vfs`]). A real PF's wire is
//! the lab's own cabling: it is left out of the testbed's fabric.
//!
//! What does not live here: which Pod gets which VF (the kubelet stand-in
//! with `spur_testbed::sriov::DeviceManager`), the report.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use spur_core::sriov::PciAddress;
use spur_node::sriov::sysfs::{Sysfs, VirtualFunction};
use spur_testbed::sriov::Nic;

use crate::lab::NodeLab;
use crate::names;
use crate::probe::{self, sys, AccessPort};

/// `--sriov-pf NODE/PF=HOSTIF`: the testbed PF `PF` of node `NODE` is the
/// host's SR-IOV PF `HOSTIF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealPfMap {
    /// The testbed node.
    pub node: String,
    /// The testbed PF of that node.
    pub pf: String,
    /// The host's PF.
    pub host: String,
}

impl FromStr for RealPfMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("`{s}` is not NODE/PF=HOSTIF (e.g. node-a/ens1f0=enp59s0f0): {why}")
        };
        let (port, host) = s.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (node, pf) = port.split_once('/').ok_or_else(|| bad("no `/`"))?;
        if node.is_empty() || pf.is_empty() || host.is_empty() {
            return Err(bad("a part is empty"));
        }
        names::check_ifname(pf).map_err(|e| bad(&e))?;
        names::check_ifname(host).map_err(|e| bad(&e))?;
        Ok(RealPfMap {
            node: node.into(),
            pf: pf.into(),
            host: host.into(),
        })
    }
}

impl fmt::Display for RealPfMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}={}", self.node, self.pf, self.host)
    }
}

/// One SR-IOV PF of a node in the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfPlan {
    /// The PF and its VFs as the testbed lays them out (names, PCI
    /// addresses, resource, VM or not).
    pub nic: Nic,
    /// The node end of the emulated NIC's uplink veth (`{PF}u`).
    pub uplink: String,
    /// The uplink's end in the fabric namespace.
    pub fabric_port: String,
    /// The host PF backing it (`--sriov-pf`), instead of an emulated NIC.
    pub real: Option<String>,
}

impl PfPlan {
    /// The representor port of VF `index` on the emulated NIC's bridge.
    pub fn representor(&self, index: u16) -> String {
        spur_node::sriov::emulated::representor(&self.nic.pf, index)
    }
}

/// The PFs of node number `index` (pure): the testbed's layout, the
/// uplink names, fabric ports numbered after the node's `nics` NICs, and
/// the real PFs of `real_pfs`.
pub fn node_pfs(
    index: usize,
    node: &spur_testbed::Node,
    real_pfs: &[RealPfMap],
) -> Result<Vec<PfPlan>, String> {
    let nics = spur_testbed::sriov::node_nics(node)?;
    Ok(nics
        .into_iter()
        .enumerate()
        .map(|(j, nic)| PfPlan {
            uplink: format!("{}u", nic.pf),
            fabric_port: names::fabric_port(index, node.nics.len() + j),
            real: real_pfs
                .iter()
                .find(|m| m.node == node.name && m.pf == nic.pf)
                .map(|m| m.host.clone()),
            nic,
        })
        .collect())
}

/// Checks the SR-IOV part of node number `index` (pure): layouts the
/// emulation can build, every name the node's namespace will hold used
/// once (NICs, `mgmt0`, PFs, VF netdevs, representors, uplinks), and real
/// PFs that are all or none of the node's (one agent drives either
/// emulated or real NICs) and not VM PFs.
pub fn check_node(
    index: usize,
    node: &spur_testbed::Node,
    real_pfs: &[RealPfMap],
) -> Result<(), String> {
    let at = format!("testbed.yaml: nodes[{index}] ({})", node.name);
    let pfs = node_pfs(index, node, real_pfs).map_err(|e| format!("testbed.yaml: {e}"))?;
    let mut names_used: BTreeMap<String, String> = BTreeMap::new();
    names_used.insert(names::MGMT_IFNAME.to_string(), "the management link".into());
    for nic in &node.nics {
        names_used.insert(nic.clone(), format!("NIC {nic}"));
    }
    for p in &pfs {
        let pf = &p.nic.pf;
        let mut mine = vec![(pf.clone(), format!("PF {pf}"))];
        if p.real.is_none() {
            mine.push((p.uplink.clone(), format!("the uplink of PF {pf}")));
            for vf in &p.nic.vfs {
                mine.push((vf.netdev.clone(), format!("VF {} of PF {pf}", vf.index)));
                mine.push((
                    p.representor(vf.index),
                    format!("the representor of VF {} of PF {pf}", vf.index),
                ));
            }
        }
        for (name, what) in mine {
            names::check_ifname(&name).map_err(|e| format!("{at}: sriov: PF {pf}: {e}"))?;
            if let Some(prev) = names_used.insert(name.clone(), what.clone()) {
                return Err(format!(
                    "{at}: sriov: PF {pf}: {what} would be the interface {name}, already {prev}"
                ));
            }
        }
        if p.real.is_some() && p.nic.vm {
            return Err(format!(
                "{at}: sriov: PF {pf} has vm: true: a real PF (--sriov-pf) is bare metal; \
                 VM nodes are emulated only"
            ));
        }
    }
    let real = pfs.iter().filter(|p| p.real.is_some()).count();
    if real != 0 && real != pfs.len() {
        return Err(format!(
            "{at}: sriov: {real} of its {} PFs are real (--sriov-pf): a node's PFs are either \
             all real or all emulated",
            pfs.len()
        ));
    }
    Ok(())
}

/// The VFs of the host PF `host` that back the testbed's `wanted` VFs
/// (read through `sysfs`, the host's in production): VF `k` is the host's
/// `virtfn<k>`, which must exist and have a netdev. Fails naming the PF,
/// what it has and what to do.
pub fn real_vfs(sysfs: &Sysfs, host: &str, wanted: usize) -> Result<Vec<VirtualFunction>, String> {
    let pf = sysfs.pf(host).map_err(|e| format!("host PF {host}: {e}"))?;
    let mut out = Vec::with_capacity(wanted);
    let have = pf
        .vfs
        .iter()
        .filter(|v| (v.index as usize) < wanted)
        .count();
    for k in 0..wanted {
        let found = pf.vfs.iter().find(|v| v.index as usize == k);
        let Some(vf) = found.filter(|_| have == wanted) else {
            return Err(format!(
                "host PF {host} has {} VFs (sriov_numvfs = {}, sriov_totalvfs = {}) but the \
                 testbed's PF needs {wanted}: create them first, e.g. \
                 `echo {wanted} > /sys/class/net/{host}/device/sriov_numvfs`",
                pf.vfs.len(),
                pf.num_vfs,
                pf.total_vfs
            ));
        };
        if vf.netdev.is_none() {
            return Err(format!(
                "host PF {host}: VF {k} ({}) has no network interface (bound to vfio-pci or \
                 another userspace driver?): bind it to the NIC's VF driver",
                vf.pci
            ));
        }
        out.push(vf.clone());
    }
    Ok(out)
}

/// What the lab made of one node's SR-IOV PFs, for the kubelet stand-in,
/// the report and the leak checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSriov {
    /// The PFs.
    pub pfs: Vec<PfPlan>,
    /// The device ID the kubelet hands out for each testbed VF: the
    /// testbed's PCI address (emulated), or the real VF's.
    pub device_ids: BTreeMap<PciAddress, String>,
    /// Device ID to (PF index in `pfs`, VF index, the VF's netdev name at
    /// home).
    pub vfs: BTreeMap<String, (usize, u16, String)>,
}

impl NodeSriov {
    /// The emulated layout (device IDs are the testbed's PCI addresses).
    pub fn emulated(pfs: Vec<PfPlan>) -> NodeSriov {
        let mut s = NodeSriov::default();
        for (j, p) in pfs.iter().enumerate() {
            for vf in &p.nic.vfs {
                let id = vf.pci.to_string();
                s.device_ids.insert(vf.pci, id.clone());
                s.vfs.insert(id, (j, vf.index, vf.netdev.clone()));
            }
        }
        s.pfs = pfs;
        s
    }

    /// True when the node's PFs are real NICs.
    pub fn is_real(&self) -> bool {
        self.pfs.iter().any(|p| p.real.is_some())
    }

    /// The kubelet's device IDs of an allocation (testbed PCI addresses
    /// to what the node's PodResources lists), resource by resource.
    pub fn listed(
        &self,
        allocation: &spur_testbed::sriov::Allocation,
    ) -> BTreeMap<String, Vec<String>> {
        allocation
            .iter()
            .map(|(r, ids)| {
                (
                    r.clone(),
                    ids.iter()
                        .map(|p| {
                            self.device_ids
                                .get(p)
                                .cloned()
                                .unwrap_or_else(|| p.to_string())
                        })
                        .collect(),
                )
            })
            .collect()
    }
}

/// A VF of `ip -j -d link show` output (pure): whether the link is there
/// and its alias. `None` when the output lists no link.
pub fn link_alias(json: &str) -> Result<Option<Option<String>>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let Some(link) = v.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    Ok(Some(
        link.get("ifalias")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .map(str::to_string),
    ))
}

/// The VLAN a PF sets on its VF `index`, from `ip -j link show dev PF`
/// (pure): `vfinfo_list[k].vlan_list[0].vlan` (or `.vlan` of older
/// iproute2); 0 when none.
pub fn pf_vf_vlan(json: &str, index: u16) -> Result<u16, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let vfs = v
        .as_array()
        .and_then(|a| a.first())
        .and_then(|l| l.get("vfinfo_list"))
        .and_then(Value::as_array)
        .ok_or("no vfinfo_list: the link reports no VFs")?;
    let vf = vfs
        .iter()
        .find(|vf| vf.get("vf").and_then(Value::as_u64) == Some(u64::from(index)))
        .ok_or_else(|| format!("no VF {index} in vfinfo_list"))?;
    let vlan = vf
        .get("vlan_list")
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .and_then(|x| x.get("vlan"))
        .or_else(|| vf.get("vlan"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    u16::try_from(vlan).map_err(|_| format!("VF {index}: VLAN {vlan} out of range"))
}

/// Each VF's VLAN as its PF sets it, by device ID, as the port serving
/// it: the representor with its tag (emulated), or `PF vf K` with the
/// VLAN the PF reports (real).
pub fn vf_ports(node: &NodeLab, s: &NodeSriov) -> Result<BTreeMap<String, AccessPort>, String> {
    let mut out = BTreeMap::new();
    if s.vfs.is_empty() {
        return Ok(out);
    }
    if s.is_real() {
        let mut shown: BTreeMap<usize, String> = BTreeMap::new();
        for (id, (j, index, _)) in &s.vfs {
            let Some(p) = s.pfs.get(*j) else { continue };
            if !shown.contains_key(j) {
                let what = format!("reading PF {} of node {}", p.nic.pf, node.name);
                let text = sys::run(
                    "ip",
                    &["-n", &node.netns, "-j", "link", "show", "dev", &p.nic.pf],
                    None,
                    &what,
                )
                .map_err(|e| e.to_string())?;
                shown.insert(*j, text);
            }
            let text = shown.get(j).map(String::as_str).unwrap_or("[]");
            let vlan = pf_vf_vlan(text, *index)
                .map_err(|e| format!("node {}: PF {}: {e}", node.name, p.nic.pf))?;
            out.insert(
                id.clone(),
                AccessPort {
                    name: format!("{} vf {index}", p.nic.pf),
                    tag: vlan,
                    external_ids: BTreeMap::new(),
                },
            );
        }
        return Ok(out);
    }
    let tags = probe::port_tags(&node.netns, &node.ovs.db_socket()).map_err(|e| e.to_string())?;
    for (id, (j, index, _)) in &s.vfs {
        let Some(p) = s.pfs.get(*j) else { continue };
        let name = p.representor(*index);
        let tag = tags.get(&name).copied().ok_or_else(|| {
            format!(
                "node {}: the representor {name} of VF {index} of PF {} is gone from its OVS",
                node.name, p.nic.pf
            )
        })?;
        out.insert(
            id.clone(),
            AccessPort {
                name,
                tag,
                external_ids: BTreeMap::new(),
            },
        );
    }
    Ok(out)
}

/// After every Pod's CNI DEL: each VF back in the node's namespace under
/// its own name without an alias, and untagged (its representor's tag, or
/// the VLAN its real PF sets). One message per problem.
pub fn vf_leaks(node: &NodeLab, s: &NodeSriov) -> Vec<String> {
    let mut out = Vec::new();
    let vlans = match vf_ports(node, s) {
        Ok(v) => v,
        Err(e) => {
            out.push(format!(
                "the SR-IOV leak check of node {} failed: {e}",
                node.name
            ));
            BTreeMap::new()
        }
    };
    for (id, (j, index, netdev)) in &s.vfs {
        let pf = s.pfs.get(*j).map_or("?", |p| p.nic.pf.as_str());
        let vf = format!("node {}: VF {index} of PF {pf} ({id})", node.name);
        let what = format!("looking for {netdev} in node {}", node.name);
        match sys::run(
            "ip",
            &["-n", &node.netns, "-j", "-d", "link", "show", "dev", netdev],
            None,
            &what,
        ) {
            Ok(text) => match link_alias(&text) {
                Ok(Some(None)) => {}
                Ok(Some(Some(alias))) => out.push(format!(
                    "leak: {vf}: its netdev {netdev} still carries the alias {alias:?} after \
                     every Pod's CNI DEL"
                )),
                Ok(None) => out.push(format!(
                    "leak: {vf}: its netdev {netdev} is not back in the node's namespace after \
                     every Pod's CNI DEL"
                )),
                Err(e) => out.push(format!("{vf}: cannot read `ip -j link` of {netdev}: {e}")),
            },
            Err(_) => out.push(format!(
                "leak: {vf}: its netdev {netdev} is not back in the node's namespace under its \
                 own name after every Pod's CNI DEL"
            )),
        }
        if let Some(port) = vlans.get(id).filter(|p| p.tag != 0) {
            out.push(format!(
                "leak: {vf}: still on VLAN {} ({}) after every Pod's CNI DEL",
                port.tag, port.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use spur_node::sriov::sysfs::SysfsTree;

    fn node(yaml: &str) -> spur_testbed::Node {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn real_pf_mappings_parse_and_print() {
        let m: RealPfMap = "node-a/ens1f0=enp59s0f0".parse().unwrap();
        assert_eq!(
            (m.node.as_str(), m.pf.as_str(), m.host.as_str()),
            ("node-a", "ens1f0", "enp59s0f0")
        );
        assert_eq!(m.to_string(), "node-a/ens1f0=enp59s0f0");
        for bad in [
            "ens1f0",
            "node-a/ens1f0",
            "node-a=x",
            "/p=x",
            "n/p=",
            "n/averyveryverylongname=x",
        ] {
            assert!(bad.parse::<RealPfMap>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pfs_follow_the_testbed_layout_after_the_nics() {
        let n = node(
            "name: a\nnics: [eth1]\nsriov:\n  - {pf: ens1f0, vfs: 2, resourceName: x.io/a}\n  - {pf: ens1f1, vfs: 1, resourceName: x.io/b}\n",
        );
        let real = vec!["a/ens1f1=enp1".parse::<RealPfMap>().unwrap()];
        let pfs = node_pfs(3, &n, &real).unwrap();
        assert_eq!(pfs[0].uplink, "ens1f0u");
        assert_eq!(pfs[0].fabric_port, names::fabric_port(3, 1));
        assert_eq!(pfs[1].fabric_port, names::fabric_port(3, 2));
        assert_eq!(pfs[0].real, None);
        assert_eq!(pfs[1].real.as_deref(), Some("enp1"));
        assert_eq!(pfs[0].representor(1), "ens1f0r1");
        let s = NodeSriov::emulated(pfs[..1].to_vec());
        assert_eq!(
            s.vfs.get("0000:3b:01.1"),
            Some(&(0, 1, "ens1f0v1".to_string()))
        );
    }

    #[test]
    fn names_clashing_in_the_node_are_refused_naming_both() {
        let n = node(
            "name: a\nnics: [ens1f0v1]\nsriov:\n  - {pf: ens1f0, vfs: 2, resourceName: x.io/a}\n",
        );
        let e = check_node(0, &n, &[]).unwrap_err();
        assert!(
            e.contains("VF 1 of PF ens1f0") && e.contains("NIC ens1f0v1"),
            "{e}"
        );
        let n = node("name: a\nsriov:\n  - {pf: mgmt0, vfs: 1, resourceName: x.io/a}\n");
        assert!(check_node(0, &n, &[]).unwrap_err().contains("management"));
        let n = node("name: a\nsriov:\n  - {pf: ens1f0, vfs: 2, resourceName: x.io/a}\n");
        check_node(0, &n, &[]).unwrap();
    }

    #[test]
    fn real_pfs_are_all_or_none_of_a_node_and_never_vm() {
        let n = node(
            "name: a\nsriov:\n  - {pf: p0, vfs: 1, resourceName: x.io/a}\n  - {pf: p1, vfs: 1, resourceName: x.io/a}\n",
        );
        let one = vec!["a/p0=enp1".parse::<RealPfMap>().unwrap()];
        let e = check_node(0, &n, &one).unwrap_err();
        assert!(e.contains("1 of its 2 PFs"), "{e}");
        let vm = node("name: a\nsriov:\n  - {pf: p0, vfs: 1, resourceName: x.io/a, vm: true}\n");
        let e = check_node(0, &vm, &one).unwrap_err();
        assert!(e.contains("vm: true"), "{e}");
    }

    #[test]
    fn real_vfs_are_the_first_ones_and_need_a_netdev() {
        let dir = tempfile::tempdir().unwrap();
        let tree = SysfsTree::create(dir.path()).unwrap();
        tree.add_pf(
            "enp59s0f0",
            "0000:5e:00.0",
            &[
                ("0000:5e:02.0", Some("enp59s0f0v0")),
                ("0000:5e:02.1", Some("enp59s0f0v1")),
                ("0000:5e:02.2", None),
            ],
        )
        .unwrap();
        let vfs = real_vfs(&tree.sysfs(), "enp59s0f0", 2).unwrap();
        assert_eq!(vfs.len(), 2);
        assert_eq!(vfs[1].pci.to_string(), "0000:5e:02.1");
        assert_eq!(vfs[1].netdev.as_deref(), Some("enp59s0f0v1"));
        let e = real_vfs(&tree.sysfs(), "enp59s0f0", 3).unwrap_err();
        assert!(e.contains("VF 2") && e.contains("vfio"), "{e}");
        let e = real_vfs(&tree.sysfs(), "enp59s0f0", 4).unwrap_err();
        assert!(e.contains("needs 4") && e.contains("sriov_numvfs"), "{e}");
        assert!(real_vfs(&tree.sysfs(), "nope", 1)
            .unwrap_err()
            .contains("nope"));
    }

    #[test]
    fn ip_json_is_read_for_aliases_and_vf_vlans() {
        assert_eq!(link_alias("[]").unwrap(), None);
        assert_eq!(link_alias(r#"[{"ifname":"p0v0"}]"#).unwrap(), Some(None));
        assert_eq!(
            link_alias(r#"[{"ifname":"p0v0","ifalias":"spur-vf name=p0v0"}]"#).unwrap(),
            Some(Some("spur-vf name=p0v0".to_string()))
        );
        let pf = r#"[{"ifname":"p0","vfinfo_list":[{"vf":0,"vlan_list":[{"vlan":100,"qos":3}]},{"vf":1}]}]"#;
        assert_eq!(pf_vf_vlan(pf, 0).unwrap(), 100);
        assert_eq!(pf_vf_vlan(pf, 1).unwrap(), 0);
        assert!(pf_vf_vlan(pf, 2).unwrap_err().contains("VF 2"));
        assert_eq!(
            pf_vf_vlan(r#"[{"vfinfo_list":[{"vf":0,"vlan":7}]}]"#, 0).unwrap(),
            7
        );
    }
}
