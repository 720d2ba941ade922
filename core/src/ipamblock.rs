//! The IPAMBlock custom resource (`spur.dev/v1beta1`, cluster-scoped, short
//! name `ipb`): one aligned window of a pool, claimed by one node, holding
//! at most [`crate::ipam::BLOCK_SIZE`] allocations, and the owners those
//! allocations belong to.

use std::collections::BTreeMap;
use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An allocation block: a window of a pool and who holds which address of
/// it. Agents create a block when their node needs one (create-if-absent)
/// and add or remove allocations with optimistic concurrency.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "spur.dev",
    version = "v1beta1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    singular = "ipamblock",
    shortname = "ipb",
    category = "spur",
    derive = "PartialEq",
    doc = "An IPAMBlock: one window of an IPPool, claimed by a node, and the owners of its allocated addresses.",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The IPPool the block belongs to.
    pub pool: String,
    /// The window, as a CIDR of 64 addresses (`/26` for IPv4, `/122` for
    /// IPv6). Addresses of the window the pool does not hand out are never
    /// allocated.
    pub cidr: String,
    /// The node the block is affine to (it allocates from it first).
    pub node: String,
    /// The allocations, by offset in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allocations: Vec<BlockAllocation>,
}

/// One allocated address of a block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockAllocation {
    /// Offset of the address in the window (0-63).
    #[schemars(range(max = 63))]
    pub offset: u8,
    /// Who holds it.
    pub owner: Owner,
}

/// What kind of owner holds an address.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum OwnerKind {
    /// A Pod's interface: released when the Pod's container goes.
    Pod,
    /// A StatefulSet ordinal's interface: kept across Pod re-creation until
    /// the StatefulSet shrinks below the ordinal or is deleted.
    StatefulSet,
}

/// Who holds an address.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// Pod or StatefulSet.
    pub kind: OwnerKind,
    /// Namespace of the Pod or StatefulSet.
    pub namespace: String,
    /// Pod name, or StatefulSet name.
    pub name: String,
    /// StatefulSet ordinal (StatefulSet owners only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u32>,
    /// Interface name in the Pod.
    pub interface: String,
    /// The container (sandbox) ID of the Pod that uses the address. Part of
    /// a Pod owner's identity; for a StatefulSet owner, the latest Pod's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    /// The Pod's name (StatefulSet owners: the Pod currently using it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// The UID of the Pod that uses the address (StatefulSet owners: the
    /// Pod currently using it); empty in records written before agents
    /// recorded it. Not part of the owner's identity, but it lets a new
    /// sandbox of the same Pod take the allocation over: an allocation
    /// request of a Pod owner with the same namespace, name, interface and
    /// (non-empty) UID but another container ID re-points this record to
    /// the new container and keeps the address, instead of allocating
    /// another one (the kubelet runs one sandbox per Pod, so the older one
    /// is gone or being torn down). Records without a UID are never taken
    /// over. The garbage collector also uses it: an allocation whose Pod
    /// exists with another UID is stale.
    #[serde(default, rename = "podUID", skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
}

/// The identity of an owner: what makes two allocations the same holder's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKey {
    /// (namespace, Pod, container ID, interface).
    Pod(String, String, String, String),
    /// (namespace, StatefulSet, ordinal, interface).
    StatefulSet(String, String, u32, String),
}

impl Owner {
    /// A Pod's interface.
    pub fn pod(namespace: &str, name: &str, container_id: &str, interface: &str) -> Owner {
        Owner {
            kind: OwnerKind::Pod,
            namespace: namespace.into(),
            name: name.into(),
            ordinal: None,
            interface: interface.into(),
            container_id: container_id.into(),
            pod: name.into(),
            pod_uid: String::new(),
        }
    }

    /// A StatefulSet ordinal's interface, used by Pod `pod`.
    pub fn stateful_set(
        namespace: &str,
        statefulset: &str,
        ordinal: u32,
        interface: &str,
        pod: &str,
        container_id: &str,
    ) -> Owner {
        Owner {
            kind: OwnerKind::StatefulSet,
            namespace: namespace.into(),
            name: statefulset.into(),
            ordinal: Some(ordinal),
            interface: interface.into(),
            container_id: container_id.into(),
            pod: pod.into(),
            pod_uid: String::new(),
        }
    }

    /// The same owner, recording the UID of the Pod that uses the address.
    pub fn with_pod_uid(mut self, uid: impl Into<String>) -> Owner {
        self.pod_uid = uid.into();
        self
    }

    /// Whether this owner (a new sandbox of a Pod) may take over the
    /// allocation `holder` has: both are Pod owners of the same namespace,
    /// Pod name and interface, with the same non-empty Pod UID, under
    /// different container IDs. See [`Owner::pod_uid`].
    pub fn may_take_over(&self, holder: &Owner) -> bool {
        self.kind == OwnerKind::Pod
            && holder.kind == OwnerKind::Pod
            && !self.pod_uid.is_empty()
            && self.pod_uid == holder.pod_uid
            && self.namespace == holder.namespace
            && self.name == holder.name
            && self.interface == holder.interface
            && self.container_id != holder.container_id
    }

    /// The owner's identity.
    pub fn key(&self) -> OwnerKey {
        match self.kind {
            OwnerKind::Pod => OwnerKey::Pod(
                self.namespace.clone(),
                self.name.clone(),
                self.container_id.clone(),
                self.interface.clone(),
            ),
            OwnerKind::StatefulSet => OwnerKey::StatefulSet(
                self.namespace.clone(),
                self.name.clone(),
                self.ordinal.unwrap_or(0),
                self.interface.clone(),
            ),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, self.ordinal) {
            (OwnerKind::StatefulSet, Some(o)) => write!(
                f,
                "StatefulSet {}/{} ordinal {} interface {}",
                self.namespace, self.name, o, self.interface
            ),
            _ => {
                write!(
                    f,
                    "Pod {}/{} interface {}",
                    self.namespace, self.name, self.interface
                )?;
                if !self.container_id.is_empty() {
                    let short: String = self.container_id.chars().take(12).collect();
                    write!(f, " (container {short})")?;
                }
                Ok(())
            }
        }
    }
}

/// The label naming the node a block is affine to (its value is
/// [`label_value`] of `spec.node`). Agents watch only their own blocks with
/// the selector `spur.dev/node=<label_value(node)>`.
pub const NODE_LABEL: &str = "spur.dev/node";

/// The label naming the pool a block belongs to (its value is
/// [`label_value`] of `spec.pool`). Agents list one pool's blocks with the
/// selector `spur.dev/pool=<label_value(pool)>`.
pub const POOL_LABEL: &str = "spur.dev/pool";

/// The longest label value Kubernetes accepts.
pub const LABEL_VALUE_MAX: usize = 63;

/// True when `s` is a valid, non-empty Kubernetes label value: at most 63
/// characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    !b.is_empty()
        && b.len() <= LABEL_VALUE_MAX
        && b.iter().all(ok)
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The label value standing for a node or pool name: the name itself when
/// it is a valid label value; otherwise (too long, other characters, empty)
/// a stable short hash form, `<prefix>-<16 hex digits>`, where the prefix is
/// the name's first (at most 46) label characters, trimmed to alphanumeric
/// ends (`h` when none is left), and the digits the 64-bit FNV-1a hash of
/// the whole name. Node and pool names are DNS names of at most 253
/// characters, so only names longer than 63 take the hash form; two names
/// share a value only by a hash collision.
pub fn label_value(name: &str) -> String {
    if is_label_value(name) {
        return name.to_string();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let kept: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(46)
        .collect();
    let prefix = kept.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let prefix = if prefix.is_empty() { "h" } else { prefix };
    format!("{prefix}-{h:016x}")
}

/// The labels a block of `pool` affine to `node` carries.
pub fn block_labels(node: &str, pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NODE_LABEL.to_string(), label_value(node)),
        (POOL_LABEL.to_string(), label_value(pool)),
    ])
}

/// The labels `block` should carry (from its `spec.node` and `spec.pool`)
/// that it does not carry with the right value; empty when it is labelled.
pub fn missing_block_labels(block: &IPAMBlock) -> BTreeMap<String, String> {
    let held = block.metadata.labels.as_ref();
    block_labels(&block.spec.node, &block.spec.pool)
        .into_iter()
        .filter(|(k, v)| held.and_then(|l| l.get(k)) != Some(v))
        .collect()
}

/// True when `block` carries the node label of `node`.
pub fn labelled_for_node(block: &IPAMBlock, node_label: &str) -> bool {
    block
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NODE_LABEL))
        .is_some_and(|v| v == node_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_identity() {
        let a = Owner::pod("default", "web", "c1", "eth1");
        let b = Owner::pod("default", "web", "c2", "eth1");
        assert_ne!(a.key(), b.key(), "a new container is a new owner");
        let s1 = Owner::stateful_set("default", "db", 0, "eth1", "db-0", "c1");
        let s2 = Owner::stateful_set("default", "db", 0, "eth1", "db-0", "c9");
        assert_eq!(
            s1.key(),
            s2.key(),
            "a StatefulSet ordinal keeps its address across Pods"
        );
        assert_eq!(
            a.to_string(),
            "Pod default/web interface eth1 (container c1)"
        );
        assert_eq!(
            s1.to_string(),
            "StatefulSet default/db ordinal 0 interface eth1"
        );
        assert_eq!(
            a.clone().with_pod_uid("u1").key(),
            a.key(),
            "the Pod UID is not part of the identity"
        );
    }

    #[test]
    fn takeover_needs_the_same_pod_uid_and_another_container() {
        let old = Owner::pod("default", "web", "c1", "eth1").with_pod_uid("u1");
        let new = Owner::pod("default", "web", "c2", "eth1").with_pod_uid("u1");
        assert!(new.may_take_over(&old));
        assert!(!new.may_take_over(&new), "not its own record");
        let other_uid = Owner::pod("default", "web", "c2", "eth1").with_pod_uid("u2");
        assert!(!other_uid.may_take_over(&old));
        let legacy = Owner::pod("default", "web", "c1", "eth1");
        assert!(!new.may_take_over(&legacy), "a record without UID is kept");
        let no_uid = Owner::pod("default", "web", "c2", "eth1");
        assert!(!no_uid.may_take_over(&legacy));
        let other_if = Owner::pod("default", "web", "c2", "eth2").with_pod_uid("u1");
        assert!(!other_if.may_take_over(&old));
        let set = Owner::stateful_set("default", "web", 0, "eth1", "web", "c2").with_pod_uid("u1");
        assert!(!set.may_take_over(&old));
    }

    #[test]
    fn block_round_trips_through_json() {
        let b = IPAMBlock::new(
            "vlan100-ipv4-10-10-1-0",
            IPAMBlockSpec {
                pool: "vlan100-ipv4".into(),
                cidr: "10.10.1.0/26".into(),
                node: "node-a".into(),
                allocations: vec![BlockAllocation {
                    offset: 2,
                    owner: Owner::pod("default", "web", "abc", "eth1"),
                }],
            },
        );
        let j = serde_json::to_value(&b).unwrap();
        assert_eq!(j["spec"]["allocations"][0]["owner"]["containerId"], "abc");
        assert!(
            j["spec"]["allocations"][0]["owner"].get("podUID").is_none(),
            "an empty UID is not written"
        );
        assert_eq!(serde_json::from_value::<IPAMBlock>(j).unwrap(), b);
        let mut b2 = b.clone();
        b2.spec.allocations[0].owner.pod_uid = "u-1".into();
        let j = serde_json::to_value(&b2).unwrap();
        assert_eq!(j["spec"]["allocations"][0]["owner"]["podUID"], "u-1");
        assert_eq!(serde_json::from_value::<IPAMBlock>(j).unwrap(), b2);
    }
    #[test]
    fn label_values() {
        assert_eq!(label_value("node-a"), "node-a");
        assert_eq!(label_value("vlan100-ipv4"), "vlan100-ipv4");
        let long = "n".repeat(64);
        let v = label_value(&long);
        assert!(is_label_value(&v), "{v}");
        assert_ne!(v, long);
        assert_eq!(v, label_value(&long), "stable");
        assert_ne!(v, label_value(&"n".repeat(65)));
        assert!(is_label_value(&label_value("")));
        assert!(is_label_value(&label_value("-.-")));
        assert!(is_label_value(&label_value("ä/ö")));
        let mut b = IPAMBlock::new(
            "x",
            IPAMBlockSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: "n".into(),
                allocations: vec![],
            },
        );
        assert_eq!(missing_block_labels(&b), block_labels("n", "p"));
        assert!(!labelled_for_node(&b, "n"));
        b.metadata.labels = Some(block_labels("n", "p"));
        assert!(missing_block_labels(&b).is_empty());
        assert!(labelled_for_node(&b, "n"));
        b.metadata
            .labels
            .as_mut()
            .map(|l| l.insert(POOL_LABEL.into(), "q".into()));
        assert_eq!(missing_block_labels(&b).len(), 1);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_name_gives_a_valid_stable_value(name in ".{0,300}") {
                let v = label_value(&name);
                prop_assert!(is_label_value(&v), "{:?} -> {:?}", name, v);
                prop_assert_eq!(&v, &label_value(&name));
            }

            #[test]
            fn valid_names_are_kept(name in "[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?") {
                prop_assert_eq!(label_value(&name), name);
            }

            #[test]
            fn long_dns_names_are_told_apart(a in "[a-z0-9]{64,253}", b in "[a-z0-9]{64,253}") {
                prop_assume!(a != b);
                prop_assert_ne!(label_value(&a), label_value(&b));
            }
        }
    }
}
