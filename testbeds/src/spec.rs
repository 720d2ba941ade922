//! `testbed.yaml`: the nodes, their NICs and SR-IOV functions, and the L2
//! fabric that joins them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use spur_core::names::{dns1123_subdomain_problem, ifname_problem};

use crate::error::{yaml_error, LoadError};

/// How Pods get their secondary networks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniMode {
    /// Spur is chained after the primary CNI and reads the Pod's network
    /// selection annotation itself.
    #[default]
    Native,
    /// A Multus-like runner delegates each selection element to the plugin
    /// its NetworkAttachmentDefinition names.
    Multus,
}

/// The contents of `testbed.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestbedSpec {
    /// `cniMode`, `native` when left out.
    #[serde(default)]
    pub cni_mode: CniMode,
    /// The nodes, each with a unique name.
    pub nodes: Vec<Node>,
    /// The L2 segments of the underlay (none when left out).
    #[serde(default)]
    pub fabric: Vec<Segment>,
}

/// One node of the testbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// The node name (also the name of its Kubernetes Node object).
    pub name: String,
    /// The physical NICs of the node (veth-backed on the harness).
    #[serde(default)]
    pub nics: Vec<String>,
    /// SR-IOV physical functions of the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sriov: Vec<SriovPf>,
}

impl Node {
    /// True when `ifname` is one of the node's NICs or SR-IOV PFs.
    pub fn has_port(&self, ifname: &str) -> bool {
        self.nics.iter().any(|n| n == ifname) || self.sriov.iter().any(|pf| pf.pf == ifname)
    }
}

/// An SR-IOV physical function and the VFs the device plugin advertises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SriovPf {
    /// The PF's interface name, e.g. `ens1f0`.
    pub pf: String,
    /// How many VFs it has (at least 1).
    pub vfs: u32,
    /// The device-plugin resource, e.g. `intel.com/sriov_net_A`.
    pub resource_name: String,
    /// True when the node is a VM that sees the VFs without their PF.
    #[serde(default)]
    pub vm: bool,
}

/// One L2 segment (a switch); frames keep their 802.1Q tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Segment {
    /// The segment's name, unique in the fabric.
    pub name: String,
    /// The ports, each `NODE/NIC`.
    pub ports: Vec<Port>,
    /// The VLANs the switch forwards; all when left out.
    #[serde(
        default,
        rename = "allowedVLANs",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_vlans: Option<Vec<VlanRange>>,
}

impl Segment {
    /// True when frames of VLAN `vlan` (0: untagged) cross this segment.
    /// Untagged frames always do; tagged ones when no `allowedVLANs` is
    /// given or one of its ranges holds the tag.
    pub fn allows(&self, vlan: u16) -> bool {
        vlan == 0
            || self
                .allowed_vlans
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r.contains(vlan)))
    }
}

/// A fabric port: `NODE/NIC`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    /// The node name.
    pub node: String,
    /// The NIC (or SR-IOV PF) of that node.
    pub nic: String,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.nic)
    }
}

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((node, nic)) if !node.is_empty() && !nic.is_empty() && !nic.contains('/') => {
                Ok(Port {
                    node: node.to_string(),
                    nic: nic.to_string(),
                })
            }
            _ => Err(format!(
                "`{s}` is not a port: write NODE/NIC, like node-a/eth1"
            )),
        }
    }
}

/// An inclusive range of VLAN IDs, written `"100"` or `"200-300"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanRange {
    /// The first VLAN ID (1-4094).
    pub start: u16,
    /// The last VLAN ID (`start`-4094).
    pub end: u16,
}

impl VlanRange {
    /// True when `vlan` lies in the range.
    pub fn contains(&self, vlan: u16) -> bool {
        self.start <= vlan && vlan <= self.end
    }
}

impl fmt::Display for VlanRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for VlanRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(v) if (1..=4094).contains(&v) => Ok(v),
                _ => Err(format!(
                    "`{s}` is not a VLAN range: VLAN IDs are 1-4094, written \"100\" or \"200-300\""
                )),
            }
        };
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (id(a)?, id(b)?),
            None => {
                let v = id(s)?;
                (v, v)
            }
        };
        if start > end {
            return Err(format!(
                "`{s}` is not a VLAN range: the first ID is greater than the last"
            ));
        }
        Ok(VlanRange { start, end })
    }
}

macro_rules! string_serde {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$t, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$t, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

string_serde!(Port, "a port as NODE/NIC");
string_serde!(VlanRange, "a VLAN range as \"100\" or \"200-300\"");

impl TestbedSpec {
    /// Parses and checks the text of `testbed.yaml`; `file` is the path
    /// named in errors.
    ///
    /// Checks, besides the shape and unknown keys: at least one node;
    /// unique node names (DNS-1123 subdomains); NIC and PF names valid and
    /// unique on their node; at least one VF and a `vendor/name`
    /// resourceName per PF; unique segment names; every port naming a
    /// node of `nodes` and one of its NICs or SR-IOV PFs (a PF's wire
    /// carries its VFs' traffic); no port on two segments or twice on one.
    pub fn parse(file: &Path, text: &str) -> Result<TestbedSpec, Vec<LoadError>> {
        let spec: TestbedSpec =
            serde_yaml::from_str(text).map_err(|e| vec![yaml_error(file, None, &e)])?;
        let errors = spec.problems(file);
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }

    fn problems(&self, file: &Path) -> Vec<LoadError> {
        let mut out = Vec::new();
        let inv = |key: String, value: &dyn fmt::Display, reason: String| {
            LoadError::invalid(file, None, key, value, reason)
        };
        let conf = |key: String, value: &dyn fmt::Display, reason: String| {
            LoadError::conflict(file, None, key, value, reason)
        };
        if self.nodes.is_empty() {
            out.push(LoadError::missing_value(
                file,
                "nodes",
                "a testbed needs at least one node",
            ));
            return out;
        }
        let mut seen_nodes = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let key = format!("nodes[{i}].name");
            if let Some(p) = dns1123_subdomain_problem(&node.name) {
                out.push(inv(key.clone(), &node.name, format!("a node name {p}")));
            }
            if let Some(first) = seen_nodes.insert(node.name.as_str(), i) {
                out.push(conf(
                    key,
                    &node.name,
                    format!("node names must be unique, and nodes[{first}] has this name too"),
                ));
            }
            let mut names = BTreeSet::new();
            for (j, nic) in node.nics.iter().enumerate() {
                let key = format!("nodes[{i}].nics[{j}]");
                if let Some(p) = ifname_problem(nic) {
                    out.push(inv(key.clone(), nic, p.to_string()));
                }
                if !names.insert(nic.as_str()) {
                    out.push(conf(key, nic, "is listed twice on this node".into()));
                }
            }
            let mut pfs = BTreeSet::new();
            for (j, pf) in node.sriov.iter().enumerate() {
                let key = format!("nodes[{i}].sriov[{j}]");
                if let Some(p) = ifname_problem(&pf.pf) {
                    out.push(inv(format!("{key}.pf"), &pf.pf, p.to_string()));
                }
                if !pfs.insert(pf.pf.as_str()) {
                    out.push(conf(
                        format!("{key}.pf"),
                        &pf.pf,
                        "is listed twice on this node".into(),
                    ));
                }
                if pf.vfs == 0 {
                    out.push(inv(
                        format!("{key}.vfs"),
                        &pf.vfs,
                        "a physical function needs at least one VF".into(),
                    ));
                }
                let rn = &pf.resource_name;
                let well_formed = rn
                    .split_once('/')
                    .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'));
                if !well_formed {
                    out.push(inv(
                        format!("{key}.resourceName"),
                        rn,
                        "must be VENDOR/NAME, like intel.com/sriov_net_A".into(),
                    ));
                }
            }
        }
        let nodes: BTreeMap<&str, &Node> =
            self.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut segment_names = BTreeMap::new();
        let mut port_owner: BTreeMap<&Port, (usize, usize)> = BTreeMap::new();
        for (i, seg) in self.fabric.iter().enumerate() {
            if seg.name.is_empty() {
                out.push(inv(
                    format!("fabric[{i}].name"),
                    &"\"\"",
                    "must not be empty".into(),
                ));
            } else if let Some(first) = segment_names.insert(seg.name.as_str(), i) {
                out.push(conf(
                    format!("fabric[{i}].name"),
                    &seg.name,
                    format!("segment names must be unique, and fabric[{first}] has this name too"),
                ));
            }
            if seg.ports.is_empty() {
                out.push(LoadError::missing_value(
                    file,
                    &format!("fabric[{i}].ports"),
                    "a segment needs at least one port",
                ));
            }
            for (j, port) in seg.ports.iter().enumerate() {
                let key = format!("fabric[{i}].ports[{j}]");
                match nodes.get(port.node.as_str()) {
                    None => out.push(inv(
                        key.clone(),
                        port,
                        format!("names node `{}`, which is not in `nodes`", port.node),
                    )),
                    Some(node) if !node.has_port(&port.nic) => out.push(inv(
                        key.clone(),
                        port,
                        format!(
                            "node `{}` has no NIC or SR-IOV PF `{}` (its NICs: {})",
                            port.node,
                            port.nic,
                            list_or_none(&node.nics)
                        ),
                    )),
                    Some(_) => {}
                }
                if let Some(&(si, sj)) = port_owner.get(port) {
                    let reason = if si == i {
                        format!("is listed twice on this segment (also at ports[{sj}])")
                    } else {
                        format!(
                            "a NIC can be on one segment only, and it is already on `{}` (fabric[{si}].ports[{sj}])",
                            self.fabric[si].name
                        )
                    };
                    out.push(conf(key, port, reason));
                } else {
                    port_owner.insert(port, (i, j));
                }
            }
        }
        out
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The segment a node's NIC is plugged into, if any.
    pub fn segment_of(&self, node: &str, nic: &str) -> Option<&Segment> {
        self.fabric
            .iter()
            .find(|s| s.ports.iter().any(|p| p.node == node && p.nic == nic))
    }
}

/// `a, b, c`, or `none` for an empty list.
pub(crate) fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_ranges() {
        assert_eq!(
            "100".parse::<VlanRange>(),
            Ok(VlanRange {
                start: 100,
                end: 100
            })
        );
        assert_eq!(
            "200-300".parse::<VlanRange>(),
            Ok(VlanRange {
                start: 200,
                end: 300
            })
        );
        for bad in ["0", "4095", "300-200", "a", "1-", "-5", "1-2-3", ""] {
            assert!(bad.parse::<VlanRange>().is_err(), "{bad}");
        }
        assert_eq!(VlanRange { start: 5, end: 9 }.to_string(), "5-9");
    }

    #[test]
    fn segment_allows() {
        let seg = Segment {
            name: "s".into(),
            ports: vec![],
            allowed_vlans: Some(vec!["100".parse().unwrap(), "200-300".parse().unwrap()]),
        };
        assert!(seg.allows(0));
        assert!(seg.allows(100));
        assert!(seg.allows(250));
        assert!(!seg.allows(101));
        let open = Segment {
            allowed_vlans: None,
            ..seg
        };
        assert!(open.allows(4094));
    }
}
