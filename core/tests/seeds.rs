//! The examples of the documents Spur follows (Antrea's secondary network,
//! Antrea IPAM and Antrea + Multus guides), translated to Spur's names
//! (`type: spur`, `spur.dev`, `spur-agent.conf`), parse as users expect.
//! The NAD and Pod annotation examples are also exercised beside their
//! parsers (nad.rs, selection.rs); this file gathers one of each kind.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure

use spur_core::config::{AgentConfig, ControllerConfig};
use spur_core::error::Subject;
use spur_core::ippool::{IPPool, PoolLayout};
use spur_core::nad::{classify, parse_spur_network, NetworkKind, NetworkType};
use spur_core::selection::{parse, Naming};

fn pool(yaml: &str) -> PoolLayout {
    let p: IPPool = serde_yaml::from_str(yaml).unwrap();
    PoolLayout::from_pool(&p).unwrap()
}

#[test]
fn antrea_ipam_pools_translated() {
    // Antrea: ipVersion 4, cidr 10.10.1.0/26, gateway 10.10.1.1, prefixLength 24.
    let v4 = pool(
        "apiVersion: spur.dev/v1beta1\nkind: IPPool\nmetadata: {name: ipv4-pool-1}\n\
         spec:\n  ipRanges: [{cidr: 10.10.1.0/26}]\n  subnetInfo: {gateway: 10.10.1.1, prefixLength: 24}\n",
    );
    assert_eq!(
        v4.size(),
        64 - 2,
        "the cidr's first address and the gateway are not handed out"
    );
    // Antrea: ipVersion 6, 3ffe:ffff:1:01ff::0100 - ::0200, gateway ::1, /64.
    let v6 = pool(
        "apiVersion: spur.dev/v1beta1\nkind: IPPool\nmetadata: {name: ipv6-pool-1}\n\
         spec:\n  ipRanges: [{start: \"3ffe:ffff:1:01ff::0100\", end: \"3ffe:ffff:1:01ff::0200\"}]\n\
         \x20 subnetInfo: {gateway: \"3ffe:ffff:1:01ff::1\", prefixLength: 64}\n",
    );
    assert_eq!(v6.size(), 0x101);
    // Antrea: pool1, 10.2.0.12-10.2.0.20, gateway 10.2.0.1/24, vlan 2.
    let vlan = pool(
        "apiVersion: spur.dev/v1beta1\nkind: IPPool\nmetadata: {name: pool1}\n\
         spec:\n  ipRanges: [{start: 10.2.0.12, end: 10.2.0.20}]\n  subnetInfo: {gateway: 10.2.0.1, prefixLength: 24, vlan: 2}\n",
    );
    assert_eq!((vlan.size(), vlan.vlan), (9, 2));
}

#[test]
fn antrea_agent_config_translated() {
    // antrea-agent.conf: secondaryNetwork.ovsBridges with one uplink, and
    // the feature gates of the secondary-network guide under Spur's names.
    let conf = AgentConfig::from_yaml(
        "featureGates:\n  SpurIPAM: true\n  SecondaryNetwork: true\n\
         secondaryNetwork:\n  ovsBridges: [{\"bridgeName\": \"br-secondary\", \"physicalInterfaces\": [\"eth1\"]}]\n",
    )
    .unwrap();
    let b = &conf.secondary_network.ovs_bridges[0];
    assert_eq!(
        (b.bridge_name.as_str(), b.physical_interfaces.as_slice()),
        ("br-secondary", &["eth1".to_string()][..])
    );
    assert!(!b.enable_multicast_snooping);
    assert!(conf.is_enabled("SecondaryNetwork"));
}

#[test]
fn antrea_node_ipam_config_translated() {
    let conf = ControllerConfig::from_yaml(
        "nodeIPAM:\n  enableNodeIPAM: true\n  clusterCIDRs: [172.100.0.0/20, \"fd00:172:100::/60\"]\n",
    )
    .unwrap();
    assert_eq!(conf.node_ipam.cluster_cidrs.len(), 2);
    assert_eq!(
        (
            conf.node_ipam.node_cidr_mask_size_ipv4,
            conf.node_ipam.node_cidr_mask_size_ipv6
        ),
        (24, 64)
    );
}

#[test]
fn antrea_networks_and_pods_translated() {
    let nad = Subject::new("NetworkAttachmentDefinition", Some("default"), "vlan100");
    let vlan100 = parse_spur_network(
        r#"{"cniVersion": "0.3.0", "type": "spur", "networkType": "vlan", "mtu": 1500, "vlan": 100,
            "ipam": {"type": "spur", "ippools": ["vlan100-ipv4", "vlan100-ipv6"]}}"#,
        &nad,
    )
    .unwrap();
    assert_eq!(
        (vlan100.network_type, vlan100.vlan_id(), vlan100.mtu),
        (NetworkType::Vlan, 100, 1500)
    );
    let macvlan = classify(
        r#"{"cniVersion": "0.3.0", "name": "ipv4-net-1", "type": "macvlan", "master": "eth0", "mode": "bridge",
            "ipam": {"type": "spur", "ippools": ["ipv4-pool-1"]}}"#,
        &nad,
    )
    .unwrap();
    assert!(matches!(macvlan, NetworkKind::SpurIpam(ref m) if m.plugin_type == "macvlan"));

    let els = parse(
        r#"[{"name": "vlan100"}, {"name": "vlan200", "namespace": "networks", "interface": "eth200"}]"#,
        "default",
        "sample-pod-secondary-network-vlan",
        Naming::Native,
    )
    .unwrap();
    let got: Vec<(String, &str)> = els
        .iter()
        .map(|e| (e.network(), e.interface.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("default/vlan100".to_string(), "eth1"),
            ("networks/vlan200".to_string(), "eth200")
        ]
    );
    let text = parse("networks/vlan200@eth200", "default", "p", Naming::Native).unwrap();
    assert_eq!(
        (text[0].network(), text[0].interface.as_str()),
        ("networks/vlan200".to_string(), "eth200")
    );
    let multus = parse("macvlan-conf", "default", "p", Naming::Multus).unwrap();
    assert_eq!(multus[0].interface, "net1");
}
