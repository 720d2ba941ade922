//! `expect.yaml`: what must hold once every Pod has been handled.
//!
//! Every key may be left out and only what is written is checked, with one
//! exception: an object the API rejects fails the run unless `rejected`
//! lists it, whether or not the file exists.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use spur_core::names::Mac;

use crate::error::{yaml_error, LoadError};
use crate::refs::{InterfaceRef, ObjectRef, PodRef};

/// The contents of `expect.yaml` (all empty when the file is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// Per-Pod outcomes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodExpect>,
    /// Which interfaces reach which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability: Option<Reachability>,
    /// Multicast delivery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multicast: Vec<MulticastExpect>,
    /// IPPool bookkeeping after the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolExpect>,
    /// Objects the API must refuse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedExpect>,
}

/// One entry of `pods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodExpect {
    /// The Pod, `NAMESPACE/NAME`.
    pub pod: PodRef,
    /// Whether all requested networks must be attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// A case-insensitive substring of the reported reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_contains: Option<String>,
    /// Interfaces that must exist, with what they must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceExpect>,
}

/// One interface a Pod must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InterfaceExpect {
    /// The interface name inside the Pod, e.g. `eth1`.
    pub name: String,
    /// The NetworkAttachmentDefinition, `NAMESPACE/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The VLAN ID (0: untagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Every address of the interface comes from one of these pools, and
    /// each of them supplied one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
    /// The exact set of addresses, with prefix lengths.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_cidrs"
    )]
    pub ips: Option<Vec<IpNet>>,
    /// The exact MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
}

/// `reachability`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reachability {
    /// Every interface of a group reaches every other interface of its
    /// group (of another Pod) and none of the other groups.
    pub groups: Vec<Vec<InterfaceRef>>,
}

/// One entry of `multicast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MulticastExpect {
    /// The multicast group address.
    pub group: IpAddr,
    /// The interface that sends to the group.
    pub sender: InterfaceRef,
    /// Interfaces that joined the group: each must receive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<InterfaceRef>,
    /// Interfaces that did not join: each must receive nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_members: Vec<InterfaceRef>,
}

/// One entry of `pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoolExpect {
    /// The IPPool's name.
    pub name: String,
    /// Addresses in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// Addresses the pool can hand out (an extension of the format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// One entry of `rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RejectedExpect {
    /// The object, `KIND/NAME` or `KIND/NAMESPACE/NAME`.
    pub object: ObjectRef,
    /// A case-insensitive substring of the refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_contains: Option<String>,
}

fn de_cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    struct Cidr(IpNet);
    impl<'de> Deserialize<'de> for Cidr {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Cidr;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an address with its prefix length, like 10.10.1.5/24")
                }
                fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Cidr, E> {
                    s.parse().map(Cidr).map_err(|_| {
                        E::custom(format!(
                            "`{s}` is not an address with its prefix length, like 10.10.1.5/24"
                        ))
                    })
                }
            }
            // Parsing inside the visitor lets serde_yaml name the element.
            d.deserialize_str(V)
        }
    }
    let v: Vec<Cidr> = Vec::deserialize(d)?;
    Ok(Some(v.into_iter().map(|c| c.0).collect()))
}

impl Expect {
    /// Parses `expect.yaml`: the shape and unknown keys, plus the checks
    /// that need no other file (VLAN IDs, network names, multicast
    /// groups, interfaces listed twice, multicast entries with nobody to
    /// check). References to Pods, pools and objects are checked by
    /// [`crate::Testbed::load`], which knows the manifests.
    pub fn parse(file: &Path, text: &str) -> Result<Expect, Vec<LoadError>> {
        if text.trim().is_empty() || is_only_comments(text) {
            return Ok(Expect::default());
        }
        let expect: Expect =
            serde_yaml::from_str(text).map_err(|e| vec![yaml_error(file, None, &e)])?;
        let errors = expect.problems(file);
        if errors.is_empty() {
            Ok(expect)
        } else {
            Err(errors)
        }
    }

    fn problems(&self, file: &Path) -> Vec<LoadError> {
        let mut out = Vec::new();
        let mut seen_pods = std::collections::BTreeMap::new();
        for (i, p) in self.pods.iter().enumerate() {
            if let Some(first) = seen_pods.insert(&p.pod, i) {
                out.push(LoadError::conflict(
                    file,
                    None,
                    format!("pods[{i}].pod"),
                    &p.pod,
                    format!("the Pod is already listed at pods[{first}]; merge the two entries"),
                ));
            }
            let mut names = std::collections::BTreeMap::new();
            for (j, itf) in p.interfaces.iter().enumerate() {
                let at = format!("pods[{i}].interfaces[{j}]");
                if let Some(why) = spur_core::names::ifname_problem(&itf.name) {
                    out.push(LoadError::invalid(
                        file,
                        None,
                        format!("{at}.name"),
                        &itf.name,
                        why,
                    ));
                }
                if let Some(first) = names.insert(itf.name.as_str(), j) {
                    out.push(LoadError::conflict(
                        file,
                        None,
                        format!("{at}.name"),
                        &itf.name,
                        format!("the interface is already listed at interfaces[{first}]"),
                    ));
                }
                if let Some(v) = itf.vlan.filter(|v| *v > 4094) {
                    out.push(LoadError::invalid(
                        file,
                        None,
                        format!("{at}.vlan"),
                        &v,
                        "VLAN ID must be 0 (untagged) or 1-4094",
                    ));
                }
                if let Some(n) = &itf.network {
                    let ok = n.split_once('/').is_some_and(|(ns, name)| {
                        !ns.is_empty() && !name.is_empty() && !name.contains('/')
                    });
                    if !ok {
                        out.push(LoadError::invalid(
                            file,
                            None,
                            format!("{at}.network"),
                            n,
                            "must be the NetworkAttachmentDefinition as NAMESPACE/NAME",
                        ));
                    }
                }
            }
        }
        if let Some(r) = &self.reachability {
            let mut seen = std::collections::BTreeMap::new();
            for (g, group) in r.groups.iter().enumerate() {
                if group.is_empty() {
                    out.push(LoadError::missing_value(
                        file,
                        &format!("reachability.groups[{g}]"),
                        "a group must list at least one interface",
                    ));
                }
                for (k, itf) in group.iter().enumerate() {
                    if let Some((fg, fk)) = seen.insert(itf, (g, k)) {
                        out.push(LoadError::conflict(
                            file,
                            None,
                            format!("reachability.groups[{g}][{k}]"),
                            itf,
                            format!(
                                "the interface is already listed at reachability.groups[{fg}][{fk}]; \
                                 an interface belongs to one group"
                            ),
                        ));
                    }
                }
            }
        }
        for (i, m) in self.multicast.iter().enumerate() {
            if !m.group.is_multicast() {
                out.push(LoadError::invalid(
                    file,
                    None,
                    format!("multicast[{i}].group"),
                    &m.group,
                    "is not a multicast address (224.0.0.0/4 or ff00::/8)",
                ));
            }
            if m.members.is_empty() && m.non_members.is_empty() {
                out.push(LoadError::missing_value(
                    file,
                    &format!("multicast[{i}].members"),
                    "a multicast entry needs at least one member or nonMember to check",
                ));
            }
            let mut seen = std::collections::BTreeMap::new();
            seen.insert(&m.sender, "sender".to_string());
            let all = m
                .members
                .iter()
                .enumerate()
                .map(|(k, x)| (format!("members[{k}]"), x))
                .chain(
                    m.non_members
                        .iter()
                        .enumerate()
                        .map(|(k, x)| (format!("nonMembers[{k}]"), x)),
                );
            for (key, itf) in all {
                if let Some(first) = seen.insert(itf, key.clone()) {
                    out.push(LoadError::conflict(
                        file,
                        None,
                        format!("multicast[{i}].{key}"),
                        itf,
                        format!("the interface is already listed as multicast[{i}].{first}"),
                    ));
                }
            }
        }
        let mut pools = std::collections::BTreeMap::new();
        for (i, p) in self.pools.iter().enumerate() {
            if let Some(first) = pools.insert(p.name.as_str(), i) {
                out.push(LoadError::conflict(
                    file,
                    None,
                    format!("pools[{i}].name"),
                    &p.name,
                    format!("the pool is already listed at pools[{first}]"),
                ));
            }
        }
        for (i, r) in self.rejected.iter().enumerate() {
            if let Some(first) = self.rejected[..i]
                .iter()
                .position(|o| o.object.same_object(&r.object))
            {
                out.push(LoadError::conflict(
                    file,
                    None,
                    format!("rejected[{i}].object"),
                    &r.object,
                    format!("the object is already listed at rejected[{first}]"),
                ));
            }
        }
        out
    }

    /// Every interface the file names, with the key path naming it.
    pub fn interface_refs(&self) -> Vec<(String, &InterfaceRef)> {
        let mut out = Vec::new();
        if let Some(r) = &self.reachability {
            for (g, group) in r.groups.iter().enumerate() {
                for (k, itf) in group.iter().enumerate() {
                    out.push((format!("reachability.groups[{g}][{k}]"), itf));
                }
            }
        }
        for (i, m) in self.multicast.iter().enumerate() {
            out.push((format!("multicast[{i}].sender"), &m.sender));
            for (k, itf) in m.members.iter().enumerate() {
                out.push((format!("multicast[{i}].members[{k}]"), itf));
            }
            for (k, itf) in m.non_members.iter().enumerate() {
                out.push((format!("multicast[{i}].nonMembers[{k}]"), itf));
            }
        }
        out
    }
}

fn is_only_comments(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Expect, Vec<String>> {
        Expect::parse(Path::new("expect.yaml"), text)
            .map_err(|es| es.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn empty_file_expects_nothing() {
        assert_eq!(parse("").unwrap(), Expect::default());
        assert_eq!(parse("# nothing yet\n").unwrap(), Expect::default());
    }

    #[test]
    fn full_example() {
        let e = parse(
            r#"
pods:
  - pod: default/sample-a
    ready: true
    interfaces:
      - name: eth1
        network: default/vlan100
        vlan: 100
        mtu: 1500
        pools: [vlan100-ipv4]
        ips: ["10.10.1.5/24"]
        mac: "0a:58:0a:0a:01:05"
  - pod: default/bad
    ready: false
    reasonContains: "vlan"
reachability:
  groups:
    - [default/sample-a@eth1, default/sample-b@eth1]
    - [default/sample-c@eth1]
multicast:
  - group: 239.1.1.1
    sender: default/sample-a@eth1
    members: [default/sample-b@eth1]
    nonMembers: [default/sample-d@eth1]
pools:
  - name: vlan100-ipv4
    used: 2
    total: 62
rejected:
  - object: IPPool/overlapping-pool
    reasonContains: "vlan100-ipv4"
"#,
        )
        .unwrap();
        assert_eq!(e.pods.len(), 2);
        assert_eq!(e.interface_refs().len(), 6);
        assert_eq!(e.pools[0].total, Some(62));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = parse("pods:\n- pod: default/a\n  interfaces:\n  - name: eth1\n    vlna: 1\n")
            .unwrap_err();
        assert!(
            e[0].starts_with(
                "expect.yaml: pods[0].interfaces[0].vlna: is not a known key (did you mean `vlan`?)"
            ),
            "{e:?}"
        );
        let e =
            parse("pods:\n- pod: default/a\n  interfaces:\n  - name: eth1\n    ips: [10.0.0.1]\n")
                .unwrap_err();
        assert!(e[0].contains("pods[0].interfaces[0].ips[0]"), "{e:?}");
        let e = parse("multicast:\n- group: 10.0.0.1\n  sender: a/b@c\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
    }
}
