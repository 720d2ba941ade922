//! The SR-IOV devices of a testbed's nodes, as both runners emulate them,
//! and the kubelet's device manager that hands them to Pods.
//!
//! - [`node_nics`]: the PFs and VFs a node's `sriov:` entries describe,
//!   with the PCI addresses and VF netdev names both runners give them (so
//!   that the simulator's and the harness's reports agree): PF `j` of a
//!   node sits on bus `0x3b + j`, its VF `k` at device `1 + k / 8`,
//!   function `k % 8`; VF `k` of PF `ens1f0` is the netdev `ens1f0v{k}`.
//! - [`DeviceManager`]: what the kubelet's device manager and an SR-IOV
//!   device plugin do for the runners: a Pod's containers' limits of a
//!   node's resource (`intel.com/sriov_net_A: 2`) get that many free VFs
//!   of the resource when the Pod is admitted, kept until the Pod is gone;
//!   a request the node cannot serve fails the Pod's admission with the
//!   kubelet's own words.
//!
//! What does not live here: writing the emulated sysfs tree, serving the
//! PodResources API, the emulated embedded switch (the runners do that).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use spur_core::sriov::PciAddress;

use crate::spec::{Node, TestbedSpec};

/// The largest number of VFs an emulated PF has (31 devices of 8
/// functions on its bus).
pub const MAX_EMULATED_VFS: u32 = 31 * 8;

/// An SR-IOV physical function of a node and its VFs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The PF's netdev (the `pf` key); on a VM node the hypervisor's.
    pub pf: String,
    /// The PF's PCI address.
    pub pci: PciAddress,
    /// The device-plugin resource its VFs are advertised as.
    pub resource_name: String,
    /// True when the node is a VM: it sees the VFs but not the PF.
    pub vm: bool,
    /// The VFs in index order.
    pub vfs: Vec<Vf>,
}

/// A virtual function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vf {
    /// Its index on the PF.
    pub index: u16,
    /// Its PCI address.
    pub pci: PciAddress,
    /// Its netdev while no Pod has it.
    pub netdev: String,
}

/// The PFs and VFs of `node`, in the order of its `sriov:` entries.
/// Fails, naming the key, when a VF's netdev name would not fit the
/// kernel's 15 characters or a PF has more VFs than one bus holds.
pub fn node_nics(node: &Node) -> Result<Vec<Nic>, String> {
    let mut out = Vec::with_capacity(node.sriov.len());
    for (j, pf) in node.sriov.iter().enumerate() {
        let key = format!("node {}: sriov[{j}] (pf {})", node.name, pf.pf);
        if pf.vfs > MAX_EMULATED_VFS {
            return Err(format!(
                "{key}: vfs = {}: an emulated PF has at most {MAX_EMULATED_VFS} VFs",
                pf.vfs
            ));
        }
        let bus = u8::try_from(0x3b + j)
            .map_err(|_| format!("{key}: too many PFs on one node for emulated PCI buses"))?;
        let pci = PciAddress::new(0, bus, 0, 0)
            .ok_or_else(|| format!("{key}: no PCI address for the PF"))?;
        let mut vfs = Vec::new();
        for k in 0..pf.vfs {
            let netdev = format!("{}v{k}", pf.pf);
            if netdev.len() > 15 {
                return Err(format!(
                    "{key}: VF {k} would be the netdev {netdev:?}, longer than 15 \
                     characters: use a shorter PF name"
                ));
            }
            let (device, function) = (1 + k / 8, k % 8);
            let vf_pci = u8::try_from(device)
                .ok()
                .zip(u8::try_from(function).ok())
                .and_then(|(d, f)| PciAddress::new(0, bus, d, f))
                .ok_or_else(|| format!("{key}: no PCI address for VF {k}"))?;
            let index = u16::try_from(k).map_err(|_| format!("{key}: VF index {k}"))?;
            vfs.push(Vf {
                index,
                pci: vf_pci,
                netdev,
            });
        }
        out.push(Nic {
            pf: pf.pf.clone(),
            pci,
            resource_name: pf.resource_name.clone(),
            vm: pf.vm,
            vfs,
        });
    }
    Ok(out)
}

/// The extended resources a Pod's containers ask for: the sum over its
/// containers of each `resources.limits` entry whose name has a `/` and
/// is not in a `kubernetes.io` domain (`requests` when a container gives
/// no limit, as the API server defaults one from the other). Quantities
/// that are not whole numbers count as 0: extended resources are
/// integers.
pub fn pod_requests(pod: &Value) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for c in containers {
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let mut names: BTreeSet<&String> = BTreeSet::new();
        names.extend(limits.into_iter().flat_map(|m| m.keys()));
        names.extend(requests.into_iter().flat_map(|m| m.keys()));
        for name in names {
            if !is_extended(name) {
                continue;
            }
            let q = limits
                .and_then(|m| m.get(name))
                .or_else(|| requests.and_then(|m| m.get(name)));
            let n = match q {
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
                _ => 0,
            };
            *out.entry(name.clone()).or_default() += n;
        }
    }
    out.retain(|_, n| *n > 0);
    out
}

/// Extended resources: `DOMAIN/NAME`, the domain not Kubernetes's own.
fn is_extended(name: &str) -> bool {
    match name.split_once('/') {
        Some((domain, rest)) => {
            !rest.is_empty() && domain != "kubernetes.io" && !domain.ends_with(".kubernetes.io")
        }
        None => false,
    }
}

/// The devices a Pod was admitted with: resource name to device IDs (PCI
/// addresses), in PCI order.
pub type Allocation = BTreeMap<String, Vec<PciAddress>>;

/// The kubelets' device managers of a whole testbed, with one SR-IOV
/// device plugin per resource: which VFs each node has and which Pod holds
/// which.
#[derive(Debug, Clone, Default)]
pub struct DeviceManager {
    /// Node to resource to every device of it.
    devices: BTreeMap<String, BTreeMap<String, BTreeSet<PciAddress>>>,
    /// (node, Pod key) to what the Pod holds.
    held: BTreeMap<(String, String), Allocation>,
}

impl DeviceManager {
    /// Every node's VFs as [`node_nics`] lays them out.
    pub fn new(spec: &TestbedSpec) -> Result<DeviceManager, String> {
        let mut devices: BTreeMap<String, BTreeMap<String, BTreeSet<PciAddress>>> = BTreeMap::new();
        for node in &spec.nodes {
            let per_node = devices.entry(node.name.clone()).or_default();
            for nic in node_nics(node)? {
                per_node
                    .entry(nic.resource_name.clone())
                    .or_default()
                    .extend(nic.vfs.iter().map(|vf| vf.pci));
            }
        }
        Ok(DeviceManager {
            devices,
            held: BTreeMap::new(),
        })
    }

    /// Admits the Pod `key` (its UID) on `node` with `requests` (see
    /// [`pod_requests`]): the lowest free devices of each resource. The
    /// same Pod gets the same devices again. A resource the node does not
    /// have, or has too few free devices of, fails the admission and
    /// holds nothing.
    pub fn admit(
        &mut self,
        node: &str,
        key: &str,
        requests: &BTreeMap<String, u64>,
    ) -> Result<Allocation, String> {
        let slot = (node.to_string(), key.to_string());
        if let Some(a) = self.held.get(&slot) {
            return Ok(a.clone());
        }
        let empty = BTreeMap::new();
        let node_devices = self.devices.get(node).unwrap_or(&empty);
        let mut allocation = Allocation::new();
        for (resource, &wanted) in requests {
            let Some(all) = node_devices.get(resource) else {
                return Err(format!(
                    "Node didn't have enough resource: {resource}, requested: {wanted}, \
                     used: 0, capacity: 0"
                ));
            };
            let used: BTreeSet<PciAddress> = self
                .held
                .iter()
                .filter(|((n, _), _)| n == node)
                .filter_map(|(_, a)| a.get(resource))
                .flatten()
                .copied()
                .collect();
            let free: Vec<PciAddress> = all.difference(&used).copied().collect();
            let n = usize::try_from(wanted).unwrap_or(usize::MAX);
            if free.len() < n {
                return Err(format!(
                    "Allocate failed due to requested number of devices unavailable for \
                     {resource}. Requested: {wanted}, Available: {}, which is unexpected",
                    free.len()
                ));
            }
            allocation.insert(resource.clone(), free[..n].to_vec());
        }
        self.held.insert(slot, allocation.clone());
        Ok(allocation)
    }

    /// What the Pod `key` holds on `node`, if it was admitted.
    pub fn allocation(&self, node: &str, key: &str) -> Option<&Allocation> {
        self.held.get(&(node.to_string(), key.to_string()))
    }

    /// The Pod is gone: its devices are free again. Returns what it held.
    pub fn release(&mut self, node: &str, key: &str) -> Option<Allocation> {
        self.held.remove(&(node.to_string(), key.to_string()))
    }

    /// How many devices of `resource` on `node` no Pod holds.
    pub fn free(&self, node: &str, resource: &str) -> usize {
        let all = self
            .devices
            .get(node)
            .and_then(|r| r.get(resource))
            .map_or(0, BTreeSet::len);
        let used: usize = self
            .held
            .iter()
            .filter(|((n, _), _)| n == node)
            .filter_map(|(_, a)| a.get(resource))
            .map(Vec::len)
            .sum();
        all.saturating_sub(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SriovPf;
    use serde_json::json;

    fn node(pfs: &[(&str, u32, &str)]) -> Node {
        Node {
            name: "n".into(),
            nics: vec![],
            sriov: pfs
                .iter()
                .map(|(pf, vfs, r)| SriovPf {
                    pf: (*pf).into(),
                    vfs: *vfs,
                    resource_name: (*r).into(),
                    vm: false,
                })
                .collect(),
        }
    }

    #[test]
    fn layout_is_fixed_by_the_order_of_the_entries() {
        let nics = node_nics(&node(&[("ens1f0", 10, "a/x"), ("ens1f1", 1, "a/y")])).unwrap();
        assert_eq!(nics[0].pci.to_string(), "0000:3b:00.0");
        assert_eq!(nics[0].vfs[0].pci.to_string(), "0000:3b:01.0");
        assert_eq!(nics[0].vfs[9].pci.to_string(), "0000:3b:02.1");
        assert_eq!(nics[0].vfs[9].netdev, "ens1f0v9");
        assert_eq!(nics[1].vfs[0].pci.to_string(), "0000:3c:01.0");
    }

    #[test]
    fn names_that_do_not_fit_are_refused_naming_the_pf() {
        let e = node_nics(&node(&[("enp175s0f0np0", 12, "a/x")])).unwrap_err();
        assert!(e.contains("enp175s0f0np0v10"), "{e}");
        let e = node_nics(&node(&[("p", MAX_EMULATED_VFS + 1, "a/x")])).unwrap_err();
        assert!(e.contains("vfs = 249"), "{e}");
    }

    #[test]
    fn requests_are_summed_over_containers_and_skip_core_resources() {
        let pod = json!({"spec": {"containers": [
            {"resources": {"limits": {"intel.com/x": "2", "cpu": "1", "memory": "1Gi"}}},
            {"resources": {"requests": {"intel.com/x": 1, "hugepages.kubernetes.io/2Mi": "1"}}},
            {"name": "none"}
        ]}});
        assert_eq!(
            pod_requests(&pod),
            BTreeMap::from([("intel.com/x".into(), 3)])
        );
    }

    #[test]
    fn admission_hands_out_free_devices_and_refuses_when_exhausted() {
        let spec = TestbedSpec {
            cni_mode: Default::default(),
            nodes: vec![node(&[("ens1f0", 2, "intel.com/x")])],
            fabric: vec![],
        };
        let mut dm = DeviceManager::new(&spec).unwrap();
        let one = BTreeMap::from([("intel.com/x".to_string(), 1)]);
        let a = dm.admit("n", "uid-a", &one).unwrap();
        assert_eq!(a["intel.com/x"][0].to_string(), "0000:3b:01.0");
        assert_eq!(
            dm.admit("n", "uid-a", &one).unwrap(),
            a,
            "same Pod, same devices"
        );
        let b = dm.admit("n", "uid-b", &one).unwrap();
        assert_eq!(b["intel.com/x"][0].to_string(), "0000:3b:01.1");
        let e = dm.admit("n", "uid-c", &one).unwrap_err();
        assert!(e.contains("Requested: 1, Available: 0"), "{e}");
        assert!(
            dm.allocation("n", "uid-c").is_none(),
            "a refused Pod holds nothing"
        );
        assert_eq!(dm.free("n", "intel.com/x"), 0);
        dm.release("n", "uid-a");
        assert_eq!(dm.free("n", "intel.com/x"), 1);
        let c = dm.admit("n", "uid-c", &one).unwrap();
        assert_eq!(c["intel.com/x"][0].to_string(), "0000:3b:01.0");
        let e = dm
            .admit("n", "uid-d", &BTreeMap::from([("intel.com/y".into(), 1)]))
            .unwrap_err();
        assert!(
            e.contains("intel.com/y") && e.contains("capacity: 0"),
            "{e}"
        );
    }
}
