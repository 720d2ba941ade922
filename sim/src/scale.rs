//! The cluster mode: a synthetic testbed of many nodes and Pods, for
//! measuring the control plane at scale (`spur-sim bench`, `make
//! bench-sim`).
//!
//! Every node has one NIC (`eth1`) on one fabric segment and one secondary
//! bridge with it as the uplink; one VLAN network (a NAD on VLAN 100)
//! takes its addresses from one IPv4 pool large enough for every Pod; every
//! Pod is bound to its node and asks for that network. The run has no
//! injected faults: it measures how fast the real agents, controller and
//! API server attach every Pod and how many API requests each address
//! costs.
//!
//! What does not live here: running it ([`crate::world`]) and timing it
//! (the binary).

use std::path::PathBuf;

use serde_json::{json, Value};
use spur_testbed::{
    CniMode, Expect, Manifest, Node, Port, Segment, SpurConfig, Testbed, TestbedSpec,
};

/// The pool every Pod's address comes from: 10.64.0.0/12, room for 16,384
/// nodes' blocks of 64.
pub const POOL_CIDR: &str = "10.64.0.0/12";

/// The name of the `i`-th node.
pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn manifest(n: usize, object: Value) -> Manifest {
    Manifest {
        file: PathBuf::from("scale.yaml"),
        document: n,
        object,
    }
}

/// The synthetic testbed of `nodes` nodes with `pods_per_node` Pods each.
pub fn testbed(nodes: usize, pods_per_node: usize) -> Testbed {
    let names: Vec<String> = (0..nodes).map(node_name).collect();
    let spec = TestbedSpec {
        cni_mode: CniMode::Native,
        nodes: names
            .iter()
            .map(|n| Node {
                name: n.clone(),
                nics: vec!["eth1".into()],
                sriov: Vec::new(),
            })
            .collect(),
        fabric: vec![Segment {
            name: "tor".into(),
            ports: names
                .iter()
                .map(|n| Port {
                    node: n.clone(),
                    nic: "eth1".into(),
                })
                .collect(),
            allowed_vlans: None,
        }],
    };
    let agent_conf =
        "secondaryNetwork:\n  ovsBridges:\n  - bridgeName: br-sec\n    physicalInterfaces: [eth1]\n";
    let config = json!({
        "cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "bridge": "br-sec",
        "vlan": 100, "ipam": {"type": "spur", "ippools": ["scale-v4"]}
    });
    let mut manifests = vec![
        manifest(
            1,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "spur-config", "namespace": "kube-system"},
                   "data": {"spur-agent.conf": agent_conf}}),
        ),
        manifest(
            2,
            json!({"apiVersion": "spur.dev/v1beta1", "kind": "IPPool",
                   "metadata": {"name": "scale-v4"},
                   "spec": {"ipRanges": [{"cidr": POOL_CIDR}],
                            "subnetInfo": {"gateway": "10.64.0.1", "prefixLength": 12, "vlan": 100}}}),
        ),
        manifest(
            3,
            json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                   "metadata": {"name": "scale", "namespace": "default"},
                   "spec": {"config": config.to_string()}}),
        ),
    ];
    let mut doc = 4;
    for p in 0..pods_per_node {
        for n in &names {
            manifests.push(manifest(
                doc,
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": format!("p-{n}-{p:03}"), "namespace": "default",
                                    "annotations": {"k8s.v1.cni.cncf.io/networks": "scale"}},
                       "spec": {"nodeName": n, "containers": [{"name": "c", "image": "pause"}]}}),
            ));
            doc += 1;
        }
    }
    Testbed {
        dir: PathBuf::from("(cluster mode)"),
        name: format!("cluster-{nodes}x{pods_per_node}"),
        spec,
        manifests,
        expect: Expect::default(),
        config: SpurConfig {
            agent: spur_core::config::AgentConfig::from_yaml(agent_conf).ok(),
            controller: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_has_every_node_and_pod() {
        let t = testbed(3, 2);
        assert_eq!(t.spec.nodes.len(), 3);
        assert_eq!(t.spec.fabric[0].ports.len(), 3);
        let pods: Vec<&Manifest> = t.manifests.iter().filter(|m| m.is_builtin("Pod")).collect();
        assert_eq!(pods.len(), 6);
        assert!(t.config.agent.is_some());
        // Round-robin over nodes, so every node gets its first Pod early.
        assert_eq!(pods[0].object["spec"]["nodeName"], "node-00000");
        assert_eq!(pods[1].object["spec"]["nodeName"], "node-00001");
    }
}
