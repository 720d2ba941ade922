//! Loading testbed directories: the seed example, and one broken testbed
//! per kind of mistake, whose error must name the file and the key.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use spur_core::Kind;
use spur_testbed::{CniMode, LoadError, PodRef, Testbed};

fn seed_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seed-example")
}

#[test]
fn seed_example_loads() {
    let tb = Testbed::load(seed_example()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tb.name, "seed-example");
    assert_eq!(tb.spec.cni_mode, CniMode::Native);
    assert_eq!(tb.spec.nodes.len(), 2);
    assert_eq!(
        tb.spec
            .segment_of("node-b", "eth1")
            .map(|s| s.name.as_str()),
        Some("tor-1")
    );

    let files: BTreeSet<String> = tb
        .manifests
        .iter()
        .map(|m| m.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 6);
    let order: Vec<String> = tb
        .manifests
        .iter()
        .map(|m| format!("{} {}", m.document, m.describe()))
        .collect();
    insta::assert_snapshot!("seed_example_apply_order", order.join("\n"));

    let pods: Vec<String> = tb.pods().iter().map(ToString::to_string).collect();
    assert_eq!(
        pods,
        [
            "default/sample-pod-secondary-network-vlan",
            "default/sample-pod-vlan100",
            "default/sample-pod-vlan200"
        ]
    );
    let nad = tb
        .manifests_of("NetworkAttachmentDefinition")
        .find(|m| m.name() == "vlan200")
        .unwrap();
    assert_eq!(nad.namespace(), Some("networks"));
    assert_eq!(nad.api_version(), "k8s.cni.cncf.io/v1");
    let pod = tb.manifests_of("Pod").next().unwrap();
    assert!(pod
        .annotation("k8s.v1.cni.cncf.io/networks")
        .unwrap()
        .contains("eth200"));

    let agent = tb.config.agent.as_ref().expect("agent config");
    let bridge = &agent.secondary_network.ovs_bridges[0];
    assert_eq!(bridge.bridge_name, "br-secondary");
    assert_eq!(bridge.physical_interfaces, ["eth1"]);
    assert!(tb.config.controller.is_some());

    assert_eq!(tb.expect.pods.len(), 3);
    assert_eq!(tb.expect.reachability.as_ref().unwrap().groups.len(), 2);
    assert_eq!(tb.expect.pools.len(), 3);
    assert_eq!(
        tb.expect.rejected[0].object.to_string(),
        "IPPool/overlapping-pool"
    );
}

/// The pool sizes `expect.yaml` states follow from the allocation rules,
/// and the pool it expects to be refused does overlap vlan100-ipv4.
#[test]
fn seed_example_pools_agree_with_the_pool_rules() {
    use spur_core::ippool::{IPPoolSpec, PoolLayout};
    let tb = Testbed::load(seed_example()).unwrap_or_else(|e| panic!("{e}"));
    let layouts: Vec<PoolLayout> = tb
        .manifests
        .iter()
        .filter(|m| m.is_ippool())
        .map(|m| {
            let spec: IPPoolSpec = serde_json::from_value(m.object["spec"].clone()).unwrap();
            PoolLayout::from_spec(m.name(), &spec).unwrap()
        })
        .collect();
    for want in &tb.expect.pools {
        let layout = layouts.iter().find(|l| l.name == want.name).unwrap();
        if let Some(total) = want.total {
            assert_eq!(layout.size(), u128::from(total), "{}", want.name);
        }
    }
    let overlapping = layouts
        .iter()
        .find(|l| l.name == "overlapping-pool")
        .unwrap();
    let accepted: Vec<&PoolLayout> = layouts
        .iter()
        .filter(|l| l.name != "overlapping-pool")
        .collect();
    let refusal = overlapping
        .check_no_overlap(accepted.iter().copied())
        .unwrap_err();
    let reason_contains = tb.expect.rejected[0].reason_contains.as_deref().unwrap();
    assert!(
        refusal.to_string().to_lowercase().contains(reason_contains),
        "{refusal}"
    );
}

// ---------------------------------------------------------------------------
// Broken testbeds
// ---------------------------------------------------------------------------

const TESTBED: &str = "\
nodes:
  - name: node-a
    nics: [eth1, eth2]
  - name: node-b
    nics: [eth1]
fabric:
  - name: tor-1
    ports: [node-a/eth1, node-b/eth1]
";

const CONFIG: &str = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: spur-config, namespace: kube-system}
data:
  spur-agent.conf: |
    secondaryNetwork:
      ovsBridges: [{bridgeName: br-secondary, physicalInterfaces: [eth1]}]
";

const POOLS: &str = "\
apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: pool-a}
spec:
  ipRanges: [{cidr: 10.0.0.0/26}]
  subnetInfo: {gateway: 10.0.0.1, prefixLength: 24}
";

const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {nodeName: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default}
spec: {nodeName: node-b}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: apps}
spec: {replicas: 2}
";

const EXPECT: &str = "\
pods:
  - pod: default/a
    ready: true
";

/// The base testbed with `changes` applied: `(path, Some(text))` writes a
/// file, `(path, None)` removes it.
fn testbed_with(changes: &[(&str, Option<&str>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        ("testbed.yaml", TESTBED),
        ("manifests/00-config.yaml", CONFIG),
        ("manifests/10-pools.yaml", POOLS),
        ("manifests/20-pods.yaml", PODS),
        ("expect.yaml", EXPECT),
    ];
    fs::create_dir(dir.path().join("manifests")).unwrap();
    for (path, text) in base {
        fs::write(dir.path().join(path), text).unwrap();
    }
    for (path, text) in changes {
        let p = dir.path().join(path);
        match text {
            Some(t) => fs::write(p, t).unwrap(),
            None if p.is_dir() => fs::remove_dir_all(p).unwrap(),
            None => fs::remove_file(p).unwrap(),
        }
    }
    dir
}

/// Loads the changed testbed, which must fail; returns the message with
/// the temporary directory written as `DIR`, and the problems.
fn broken(changes: &[(&str, Option<&str>)]) -> (String, Vec<(PathBuf, String, Kind)>) {
    let dir = testbed_with(changes);
    let errors = match Testbed::load(dir.path()) {
        Ok(_) => panic!("the testbed loaded despite {changes:?}"),
        Err(e) => e,
    };
    let text = errors
        .to_string()
        .replace(&dir.path().display().to_string(), "DIR");
    let problems = errors
        .problems()
        .iter()
        .map(|e: &LoadError| {
            let rel = e.file().strip_prefix(dir.path()).unwrap().to_path_buf();
            (rel, e.key().to_string(), e.kind())
        })
        .collect();
    (text, problems)
}

/// Asserts the single problem is in `file` at `key`, and snapshots the
/// message.
macro_rules! assert_broken {
    ($name:literal, $changes:expr, $file:literal, $key:literal) => {{
        let (text, problems) = broken($changes);
        assert_eq!(problems.len(), 1, "{text}");
        assert_eq!(problems[0].0, Path::new($file), "{text}");
        assert_eq!(problems[0].1, $key, "{text}");
        assert!(text.contains($key), "{text}");
        insta::assert_snapshot!($name, text);
        problems[0].2
    }};
}

#[test]
fn the_base_testbed_loads() {
    let dir = testbed_with(&[]);
    let tb = Testbed::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let pods: Vec<String> = tb.pods().iter().map(ToString::to_string).collect();
    assert_eq!(pods, ["apps/web-0", "apps/web-1", "default/a", "default/b"]);
    assert!(tb.pods().contains(&PodRef::new("default", "a")));
}

#[test]
fn expect_yaml_is_optional() {
    let dir = testbed_with(&[("expect.yaml", None)]);
    let tb = Testbed::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tb.expect, Default::default());
}

#[test]
fn testbed_yaml_unknown_top_level_key() {
    let kind = assert_broken!(
        "testbed_unknown_top_level_key",
        &[("testbed.yaml", Some(&format!("{TESTBED}switches: []\n")))],
        "testbed.yaml",
        "switches"
    );
    assert_eq!(kind, Kind::Unsupported);
}

#[test]
fn testbed_yaml_unknown_nested_key() {
    let text = TESTBED.replace("nics: [eth1]\n", "nics: [eth1]\n    cpus: 4\n");
    let kind = assert_broken!(
        "testbed_unknown_nested_key",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "nodes[1].cpus"
    );
    assert_eq!(kind, Kind::Unsupported);
}

#[test]
fn testbed_yaml_misspelt_key() {
    let text = TESTBED.replace("nics: [eth1]\n", "nicz: [eth1]\n");
    assert_broken!(
        "testbed_misspelt_key",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "nodes[1].nicz"
    );
}

#[test]
fn testbed_yaml_wrong_type() {
    let text = TESTBED.replace(
        "nics: [eth1]\n",
        "nics: [eth1]\n    sriov: [{pf: ens1f0, vfs: many, resourceName: intel.com/a}]\n",
    );
    assert_broken!(
        "testbed_wrong_type",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "nodes[1].sriov[0].vfs"
    );
}

#[test]
fn testbed_yaml_unknown_sriov_key() {
    let text = TESTBED.replace(
        "nics: [eth1]\n",
        "nics: [eth1]\n    sriov:\n      - {pf: ens1f0, vfs: 4, resourceName: intel.com/a, trust: true}\n",
    );
    assert_broken!(
        "testbed_unknown_sriov_key",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "nodes[1].sriov[0].trust"
    );
}

#[test]
fn testbed_yaml_bad_cni_mode() {
    let text = format!("cniMode: calico\n{TESTBED}");
    assert_broken!(
        "testbed_bad_cni_mode",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "cniMode"
    );
}

#[test]
fn testbed_yaml_missing_nodes() {
    let kind = assert_broken!(
        "testbed_missing_nodes",
        &[("testbed.yaml", Some("fabric: []\n"))],
        "testbed.yaml",
        "nodes"
    );
    assert_eq!(kind, Kind::Missing);
}

#[test]
fn fabric_port_names_an_unknown_node() {
    let text = TESTBED.replace("node-b/eth1]", "node-c/eth1]");
    assert_broken!(
        "fabric_port_unknown_node",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "fabric[0].ports[1]"
    );
}

#[test]
fn fabric_port_names_a_nic_the_node_lacks() {
    let text = TESTBED.replace("node-b/eth1]", "node-b/eth2]");
    assert_broken!(
        "fabric_port_unknown_nic",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "fabric[0].ports[1]"
    );
}

#[test]
fn fabric_port_is_malformed() {
    let text = TESTBED.replace("node-b/eth1]", "node-b-eth1]");
    let kind = assert_broken!(
        "fabric_port_malformed",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "fabric[0].ports[1]"
    );
    assert_eq!(kind, Kind::Decode);
}

#[test]
fn nic_on_two_segments() {
    let text = format!("{TESTBED}  - name: tor-2\n    ports: [node-a/eth2, node-b/eth1]\n");
    let kind = assert_broken!(
        "nic_on_two_segments",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "fabric[1].ports[1]"
    );
    assert_eq!(kind, Kind::Conflict);
}

#[test]
fn duplicate_node_names() {
    let text = TESTBED.replace("name: node-b", "name: node-a");
    let (msg, problems) = broken(&[("testbed.yaml", Some(&text))]);
    // The second node-a is refused, and the port node-b/eth1 then names an
    // unknown node.
    assert_eq!(problems[0].1, "nodes[1].name", "{msg}");
    assert!(problems.iter().all(|p| p.0 == Path::new("testbed.yaml")));
    insta::assert_snapshot!("duplicate_node_names", msg);
}

#[test]
fn allowed_vlans_out_of_range() {
    let text = format!("{TESTBED}    allowedVLANs: [\"100\", \"4000-4095\"]\n");
    assert_broken!(
        "allowed_vlans_out_of_range",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "fabric[0].allowedVLANs[1]"
    );
}

#[test]
fn allowed_vlans_reversed() {
    let text = format!("{TESTBED}    allowedVLANs: [\"300-200\"]\n");
    assert_broken!(
        "allowed_vlans_reversed",
        &[("testbed.yaml", Some(&text))],
        "testbed.yaml",
        "fabric[0].allowedVLANs[0]"
    );
}

#[test]
fn allowed_vlans_accept_numbers_and_ranges() {
    let text = format!("{TESTBED}    allowedVLANs: [\"100\", 150, \"200-300\"]\n");
    let dir = testbed_with(&[("testbed.yaml", Some(&text))]);
    let tb = Testbed::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let seg = &tb.spec.fabric[0];
    assert!(seg.allows(150) && seg.allows(250) && !seg.allows(101));
}

#[test]
fn missing_testbed_yaml() {
    let (msg, problems) = broken(&[("testbed.yaml", None)]);
    assert_eq!(problems[0].0, Path::new("testbed.yaml"));
    assert!(msg.starts_with("DIR/testbed.yaml: cannot be read"), "{msg}");
}

#[test]
fn manifest_without_kind() {
    let pods = format!("{PODS}---\napiVersion: v1\nmetadata: {{name: c}}\n");
    let kind = assert_broken!(
        "manifest_without_kind",
        &[("manifests/20-pods.yaml", Some(&pods))],
        "manifests/20-pods.yaml",
        "kind"
    );
    assert_eq!(kind, Kind::Missing);
}

#[test]
fn manifest_without_name() {
    let pods = PODS.replace(
        "metadata: {name: b, namespace: default}",
        "metadata: {namespace: default}",
    );
    assert_broken!(
        "manifest_without_name",
        &[("manifests/20-pods.yaml", Some(&pods))],
        "manifests/20-pods.yaml",
        "metadata.name"
    );
}

#[test]
fn manifest_that_is_not_yaml() {
    let (msg, problems) = broken(&[("manifests/20-pods.yaml", Some("kind: [Pod\n"))]);
    assert_eq!(problems.len(), 1, "{msg}");
    assert_eq!(problems[0].0, Path::new("manifests/20-pods.yaml"));
    insta::assert_snapshot!("manifest_syntax_error", msg);
}

#[test]
fn manifest_with_another_extension() {
    let (msg, problems) = broken(&[("manifests/30-more.yml", Some(PODS))]);
    assert_eq!(problems[0].0, Path::new("manifests/30-more.yml"));
    insta::assert_snapshot!("manifest_wrong_extension", msg);
}

#[test]
fn pod_on_an_unknown_node() {
    let pods = PODS.replace("nodeName: node-b", "nodeName: node-z");
    assert_broken!(
        "pod_on_unknown_node",
        &[("manifests/20-pods.yaml", Some(&pods))],
        "manifests/20-pods.yaml",
        "spec.nodeName"
    );
}

#[test]
fn node_manifest_for_an_unknown_node() {
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-c\n  labels: {rack: r1}\n";
    assert_broken!(
        "node_manifest_unknown_node",
        &[("manifests/05-nodes.yaml", Some(node))],
        "manifests/05-nodes.yaml",
        "metadata.name"
    );
}

#[test]
fn spur_config_with_an_unknown_key() {
    let config = format!("{CONFIG}  spur-cni.conf: |\n    x: 1\n");
    let kind = assert_broken!(
        "spur_config_unknown_key",
        &[("manifests/00-config.yaml", Some(&config))],
        "manifests/00-config.yaml",
        "data.spur-cni.conf"
    );
    assert_eq!(kind, Kind::Unsupported);
}

#[test]
fn agent_config_with_an_unknown_key() {
    let config = CONFIG.replace("physicalInterfaces:", "uplinks:");
    let kind = assert_broken!(
        "agent_config_unknown_key",
        &[("manifests/00-config.yaml", Some(&config))],
        "manifests/00-config.yaml",
        "secondaryNetwork.ovsBridges[0].uplinks"
    );
    assert_eq!(kind, Kind::Unsupported);
}

#[test]
fn controller_config_with_a_bad_value() {
    let config = format!(
        "{CONFIG}  spur-controller.conf: |\n    nodeIPAM:\n      nodeCIDRMaskSizeIPv4: 40\n"
    );
    assert_broken!(
        "controller_config_bad_value",
        &[("manifests/00-config.yaml", Some(&config))],
        "manifests/00-config.yaml",
        "nodeIPAM.nodeCIDRMaskSizeIPv4"
    );
}

#[test]
fn agent_uplink_no_node_has() {
    let config = CONFIG.replace(
        "physicalInterfaces: [eth1]",
        "physicalInterfaces: [eth1, ens3]",
    );
    assert_broken!(
        "agent_uplink_unknown",
        &[("manifests/00-config.yaml", Some(&config))],
        "manifests/00-config.yaml",
        "secondaryNetwork.ovsBridges[0].physicalInterfaces[1]"
    );
}

#[test]
fn agent_uplink_on_some_nodes_only_is_allowed() {
    // eth2 exists on node-a only.
    let config = CONFIG.replace(
        "physicalInterfaces: [eth1]",
        "physicalInterfaces: [eth1, eth2]",
    );
    let dir = testbed_with(&[("manifests/00-config.yaml", Some(&config))]);
    Testbed::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn expect_yaml_unknown_top_level_key() {
    let expect = format!("{EXPECT}latency: 5ms\n");
    assert_broken!(
        "expect_unknown_top_level_key",
        &[("expect.yaml", Some(&expect))],
        "expect.yaml",
        "latency"
    );
}

#[test]
fn expect_yaml_unknown_interface_key() {
    let expect = format!("{EXPECT}    interfaces:\n      - name: eth1\n        vlanId: 100\n");
    assert_broken!(
        "expect_unknown_interface_key",
        &[("expect.yaml", Some(&expect))],
        "expect.yaml",
        "pods[0].interfaces[0].vlanId"
    );
}

#[test]
fn expect_pod_no_manifest_defines() {
    let expect = EXPECT.replace("default/a", "apps/a");
    assert_broken!(
        "expect_unknown_pod",
        &[("expect.yaml", Some(&expect))],
        "expect.yaml",
        "pods[0].pod"
    );
}

#[test]
fn expect_statefulset_replica_beyond_replicas() {
    let expect = "pods:\n  - pod: apps/web-1\n  - pod: apps/web-2\n";
    assert_broken!(
        "expect_replica_beyond_replicas",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "pods[1].pod"
    );
}

#[test]
fn expect_pod_without_namespace() {
    let expect = EXPECT.replace("default/a", "a");
    let kind = assert_broken!(
        "expect_pod_without_namespace",
        &[("expect.yaml", Some(&expect))],
        "expect.yaml",
        "pods[0].pod"
    );
    assert_eq!(kind, Kind::Decode);
}

#[test]
fn expect_malformed_interface() {
    let expect = "reachability:\n  groups:\n    - [default/a@eth1, default/b]\n";
    assert_broken!(
        "expect_malformed_interface",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "reachability.groups[0][1]"
    );
}

#[test]
fn expect_interface_of_an_unknown_pod() {
    let expect = "reachability:\n  groups:\n    - [default/a@eth1, default/c@eth1]\n";
    assert_broken!(
        "expect_interface_unknown_pod",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "reachability.groups[0][1]"
    );
}

#[test]
fn expect_duplicate_interface_in_groups() {
    let expect =
        "reachability:\n  groups:\n    - [default/a@eth1, default/b@eth1]\n    - [default/a@eth1]\n";
    let kind = assert_broken!(
        "expect_duplicate_interface",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "reachability.groups[1][0]"
    );
    assert_eq!(kind, Kind::Conflict);
}

#[test]
fn expect_multicast_without_receivers() {
    let expect = "multicast:\n  - group: 239.1.1.1\n    sender: default/a@eth1\n";
    assert_broken!(
        "expect_multicast_without_receivers",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "multicast[0].members"
    );
}

#[test]
fn expect_multicast_group_not_multicast() {
    let expect =
        "multicast:\n  - group: 10.1.1.1\n    sender: default/a@eth1\n    members: [default/b@eth1]\n";
    assert_broken!(
        "expect_multicast_unicast_group",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "multicast[0].group"
    );
}

#[test]
fn expect_multicast_without_sender() {
    let expect = "multicast:\n  - group: 239.1.1.1\n    members: [default/b@eth1]\n";
    let kind = assert_broken!(
        "expect_multicast_without_sender",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "multicast[0].sender"
    );
    assert_eq!(kind, Kind::Missing);
}

#[test]
fn expect_pool_no_ippool_defines() {
    let expect = "pools:\n  - name: pool-b\n    used: 1\n";
    assert_broken!(
        "expect_unknown_pool",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "pools[0].name"
    );
}

#[test]
fn expect_interface_pool_no_ippool_defines() {
    let expect =
        format!("{EXPECT}    interfaces:\n      - name: eth1\n        pools: [pool-a, pool-b]\n");
    assert_broken!(
        "expect_unknown_interface_pool",
        &[("expect.yaml", Some(&expect))],
        "expect.yaml",
        "pods[0].interfaces[0].pools[1]"
    );
}

#[test]
fn expect_rejected_object_not_in_manifests() {
    let expect = "rejected:\n  - object: IPPool/pool-b\n";
    assert_broken!(
        "expect_unknown_rejected_object",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "rejected[0].object"
    );
}

#[test]
fn expect_rejected_objects_in_both_forms() {
    let expect = "rejected:\n  - object: IPPool/pool-a\n  - object: Pod/b\n  - object: StatefulSet/apps/web\n";
    let dir = testbed_with(&[("expect.yaml", Some(expect))]);
    Testbed::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn expect_malformed_rejected_object() {
    let expect = "rejected:\n  - object: pool-a\n";
    assert_broken!(
        "expect_malformed_rejected_object",
        &[("expect.yaml", Some(expect))],
        "expect.yaml",
        "rejected[0].object"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let pods = PODS.replace("nodeName: node-b", "nodeName: node-z");
    let expect = "pods:\n  - pod: default/zz\nrejected:\n  - object: IPPool/nope\n";
    let (msg, problems) = broken(&[
        ("manifests/20-pods.yaml", Some(&pods)),
        ("expect.yaml", Some(expect)),
    ]);
    assert_eq!(problems.len(), 3, "{msg}");
    insta::assert_snapshot!("several_problems", msg);
}
