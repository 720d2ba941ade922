//! The scheduler's and the workload controllers' pure decisions, as both
//! runners play them: where a Pod without a node goes ([`Placement`]), and
//! which Pods a workload object (StatefulSet, Deployment, ReplicaSet,
//! DaemonSet) stands for ([`workload_pods`], one at a time with
//! [`stateful_set_pod`] and [`replica_pod`]).
//!
//! What does not live here: creating the Pods (the harness applies them
//! once; the simulator reconciles them live from watches).

use serde_json::{json, Value};

/// Places Pods that name no node: round-robin over the testbed's nodes in
/// order, as a scheduler spreading them would.
#[derive(Debug, Clone)]
pub struct Placement {
    nodes: Vec<String>,
    next: usize,
}

impl Placement {
    /// Placement over `nodes`.
    pub fn new(nodes: Vec<String>) -> Placement {
        Placement { nodes, next: 0 }
    }

    /// The nodes Pods are spread over, in order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Sets `spec.nodeName` of a Pod object that has none; returns the
    /// Pod's node.
    pub fn place(&mut self, pod: &mut Value) -> Option<String> {
        if let Some(n) = pod.pointer("/spec/nodeName").and_then(Value::as_str) {
            return Some(n.to_string());
        }
        let node = self.next_node()?;
        if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("nodeName".into(), json!(node));
        } else if let Some(obj) = pod.as_object_mut() {
            obj.insert("spec".into(), json!({ "nodeName": node }));
        }
        Some(node)
    }

    /// The node the next Pod without one gets (and advances); `None`
    /// without nodes.
    pub fn next_node(&mut self) -> Option<String> {
        if self.nodes.is_empty() {
            return None;
        }
        let node = self.nodes[self.next % self.nodes.len()].clone();
        self.next += 1;
        Some(node)
    }
}

/// A short deterministic string of `len` characters from `text` (the
/// alphabet Kubernetes uses for generated names).
pub fn short_hash(text: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // FNV-1a, then digits in the alphabet.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize];
            h = (h / ALPHABET.len() as u64) ^ h.rotate_left(17);
            char::from(c)
        })
        .collect()
}

/// The kind of a workload object this module expands (`apps/v1`
/// StatefulSet, Deployment, ReplicaSet, DaemonSet), else `None`.
pub fn workload_kind(obj: &Value) -> Option<&str> {
    let kind = obj["kind"].as_str()?;
    (obj["apiVersion"].as_str() == Some("apps/v1")
        && matches!(
            kind,
            "StatefulSet" | "Deployment" | "ReplicaSet" | "DaemonSet"
        ))
    .then_some(kind)
}

/// `spec.replicas` of a workload (1 when absent, as the API defaults it).
pub fn replicas(obj: &Value) -> u64 {
    obj["spec"]["replicas"].as_u64().unwrap_or(1)
}

/// The first ordinal of a StatefulSet (`spec.ordinals.start`, else 0).
pub fn ordinal_start(obj: &Value) -> u64 {
    obj["spec"]["ordinals"]["start"].as_u64().unwrap_or(0)
}

/// The `pod-template-hash` of a Deployment: 10 characters from its
/// template.
pub fn template_hash(obj: &Value) -> String {
    short_hash(&obj["spec"]["template"].to_string(), 10)
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
}

/// A Pod of workload `obj` (uid `uid`) named `pod_name`: the template's
/// metadata (plus `extra_labels`) and spec, an owner reference, and
/// `spec.nodeName` when `node` is given.
fn pod_from_template(
    obj: &Value,
    uid: &str,
    pod_name: String,
    extra_labels: Value,
    node: Option<&str>,
) -> Value {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = meta_str(obj, "name").unwrap_or_default();
    let ns = meta_str(obj, "namespace").unwrap_or("default");
    let template = &obj["spec"]["template"];
    let mut meta = template["metadata"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut labels = meta
        .get("labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(extra) = extra_labels.as_object() {
        labels.extend(extra.clone());
    }
    meta.insert("labels".into(), Value::Object(labels));
    meta.insert("name".into(), json!(pod_name));
    meta.insert("namespace".into(), json!(ns));
    meta.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true}]),
    );
    let mut spec = template["spec"].clone();
    if let (Some(node), Some(s)) = (node, spec.as_object_mut()) {
        s.insert("nodeName".into(), json!(node));
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// The Pod of StatefulSet `obj` (uid `uid`) with ordinal `ordinal`:
/// `<name>-<ordinal>`, labelled with its pod name and index.
pub fn stateful_set_pod(obj: &Value, uid: &str, ordinal: u64) -> Value {
    let name = meta_str(obj, "name").unwrap_or_default();
    let pod_name = format!("{name}-{ordinal}");
    pod_from_template(
        obj,
        uid,
        pod_name.clone(),
        json!({"statefulset.kubernetes.io/pod-name": pod_name,
               "apps.kubernetes.io/pod-index": ordinal.to_string()}),
        None,
    )
}

/// Replica `index` of Deployment or ReplicaSet `obj` (uid `uid`):
/// `<deploy>-<template hash>-<5 chars>` or `<rs>-<5 chars>`, the suffix a
/// hash of the base name and `index`, labelled with the template hash.
pub fn replica_pod(obj: &Value, uid: &str, index: u64) -> Value {
    let name = meta_str(obj, "name").unwrap_or_default();
    let hash = template_hash(obj);
    let base = if obj["kind"] == "Deployment" {
        format!("{name}-{hash}")
    } else {
        name.to_string()
    };
    let suffix = short_hash(&format!("{base}/{index}"), 5);
    pod_from_template(
        obj,
        uid,
        format!("{base}-{suffix}"),
        json!({"pod-template-hash": hash}),
        None,
    )
}

/// The Pods a workload object (StatefulSet, Deployment, ReplicaSet,
/// DaemonSet) of the manifests stands for, as the workload controllers
/// would create them: named `<sts>-<ordinal>`, `<deploy>-<hash>-<suffix>`,
/// `<rs>-<suffix>` or `<ds>-<suffix>` (one per node, placed there), with the
/// template's metadata and spec and an owner reference to `uid`. Other
/// kinds stand for no Pods.
pub fn workload_pods(obj: &Value, uid: &str, nodes: &[String]) -> Vec<Value> {
    let Some(kind) = workload_kind(obj) else {
        return Vec::new();
    };
    let n = replicas(obj);
    match kind {
        "StatefulSet" => {
            let start = ordinal_start(obj);
            (start..start.saturating_add(n))
                .map(|i| stateful_set_pod(obj, uid, i))
                .collect()
        }
        "Deployment" | "ReplicaSet" => (0..n).map(|i| replica_pod(obj, uid, i)).collect(),
        _ => {
            let name = meta_str(obj, "name").unwrap_or_default();
            nodes
                .iter()
                .map(|node| {
                    let suffix = short_hash(&format!("{name}/{node}"), 5);
                    pod_from_template(obj, uid, format!("{name}-{suffix}"), json!({}), Some(node))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn pods_without_a_node_are_spread_in_order() {
        let mut p = Placement::new(vec!["a".into(), "b".into()]);
        let mut fixed = json!({"spec": {"nodeName": "b"}});
        assert_eq!(p.place(&mut fixed).as_deref(), Some("b"));
        let mut pods: Vec<Value> = (0..3).map(|_| json!({"spec": {}})).collect();
        let got: Vec<String> = pods.iter_mut().filter_map(|x| p.place(x)).collect();
        assert_eq!(got, ["a", "b", "a"]);
        assert_eq!(pods[1]["spec"]["nodeName"], "b");
        let mut bare = json!({"metadata": {"name": "x"}});
        assert_eq!(p.place(&mut bare).as_deref(), Some("b"));
        assert_eq!(bare["spec"]["nodeName"], "b");
        assert_eq!(Placement::new(vec![]).place(&mut json!({})), None);
    }

    #[test]
    fn workloads_stand_for_their_pods() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"replicas": 2, "ordinals": {"start": 3},
                     "template": {"metadata": {"labels": {"app": "db"},
                                               "annotations": {"k8s.v1.cni.cncf.io/networks": "vlan100"}},
                                  "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        let pods = workload_pods(&sts, "uid-1", &[]);
        let names: Vec<&str> = pods
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["db-3", "db-4"]);
        assert_eq!(pods[0]["metadata"]["namespace"], "ns");
        assert_eq!(pods[0]["metadata"]["labels"]["app"], "db");
        assert_eq!(
            pods[0]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"],
            "vlan100"
        );
        assert_eq!(pods[0]["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(pods[0]["spec"]["containers"][0]["name"], "c");
        assert_eq!(pods[1], stateful_set_pod(&sts, "uid-1", 4));

        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "template": {"spec": {"containers": []}}}});
        let pods = workload_pods(&deploy, "u", &[]);
        assert_eq!(pods.len(), 3);
        let names: BTreeSet<String> = pods
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for n in &names {
            assert!(
                n.starts_with("web-") && n.len() == "web-".len() + 10 + 1 + 5,
                "{n}"
            );
        }
        // Deterministic.
        assert_eq!(workload_pods(&deploy, "u", &[]), pods);
        assert_eq!(pods[2], replica_pod(&deploy, "u", 2));

        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"template": {"spec": {}}}});
        let pods = workload_pods(&ds, "u", &["a".into(), "b".into()]);
        let nodes: Vec<&str> = pods
            .iter()
            .map(|p| p["spec"]["nodeName"].as_str().unwrap())
            .collect();
        assert_eq!(nodes, ["a", "b"]);
        assert!(workload_pods(&json!({"apiVersion": "v1", "kind": "Pod"}), "u", &[]).is_empty());
    }
}
