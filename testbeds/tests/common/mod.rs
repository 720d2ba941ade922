//! A report and the expectations it satisfies, shared by the tests of the
//! checker and of the report.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use spur_testbed::{
    Expect, InterfaceRef, InterfaceReport, MulticastReport, PodReport, PoolReport, Rejection,
    Report, Runner,
};

pub fn itf(s: &str) -> InterfaceRef {
    s.parse().unwrap()
}

pub fn expect(yaml: &str) -> Expect {
    Expect::parse(Path::new("expect.yaml"), yaml).unwrap_or_else(|e| panic!("{e:?}"))
}

fn eth0(ip: &str) -> InterfaceReport {
    InterfaceReport {
        name: "eth0".into(),
        network: "kube-system/primary".into(),
        vlan: 0,
        mtu: 1450,
        mac: Some("0a:58:0a:f4:00:05".into()),
        ips: vec![ip.parse().unwrap()],
        pools: vec![],
    }
}

fn vlan100(mac: &str, v4: &str, v6: &str) -> InterfaceReport {
    InterfaceReport {
        name: "eth1".into(),
        network: "default/vlan100".into(),
        vlan: 100,
        mtu: 1500,
        mac: Some(mac.into()),
        ips: vec![v4.parse().unwrap(), v6.parse().unwrap()],
        pools: vec!["vlan100-ipv4".into(), "vlan100-ipv6".into()],
    }
}

fn vlan200(v4: &str) -> InterfaceReport {
    InterfaceReport {
        name: "eth200".into(),
        network: "networks/vlan200".into(),
        vlan: 200,
        mtu: 1500,
        mac: Some("0a:58:0a:0a:02:64".into()),
        ips: vec![v4.parse().unwrap()],
        pools: vec!["vlan200-ipv4".into()],
    }
}

/// Three ready Pods on two VLANs, one Pod that failed, multicast on VLAN
/// 100, three pools and one rejected pool.
pub fn report() -> Report {
    let mut r = Report::new("example", Runner::Sim);
    r.seed = Some(7);
    r.pods = vec![
        PodReport {
            pod: "default/sample-a".parse().unwrap(),
            node: Some("node-a".into()),
            ready: true,
            reason: None,
            interfaces: vec![
                eth0("10.244.0.5/24"),
                vlan100("0a:58:0a:0a:01:05", "10.10.1.5/24", "fd00:10:10:1::5/64"),
                vlan200("10.10.2.100/24"),
            ],
        },
        PodReport {
            pod: "default/sample-b".parse().unwrap(),
            node: Some("node-b".into()),
            ready: true,
            reason: None,
            interfaces: vec![
                eth0("10.244.1.7/24"),
                vlan100("0a:58:0a:0a:01:06", "10.10.1.6/24", "fd00:10:10:1::6/64"),
            ],
        },
        PodReport {
            pod: "default/sample-c".parse().unwrap(),
            node: Some("node-b".into()),
            ready: true,
            reason: None,
            interfaces: vec![eth0("10.244.1.8/24"), vlan200("10.10.2.101/24")],
        },
        PodReport {
            pod: "default/bad".parse().unwrap(),
            node: Some("node-a".into()),
            ready: false,
            reason: Some(
                "NetworkAttachmentDefinition default/vlan5000: vlan = 5000: VLAN ID must be 0 \
                 (untagged) or 1-4094"
                    .into(),
            ),
            interfaces: vec![eth0("10.244.0.9/24")],
        },
    ];
    let v100 = ["default/sample-a@eth1", "default/sample-b@eth1"];
    let v200 = ["default/sample-a@eth200", "default/sample-c@eth200"];
    let all: Vec<&str> = v100.iter().chain(&v200).copied().collect();
    for from in &all {
        for to in &all {
            let (f, t) = (itf(from), itf(to));
            if f.pod == t.pod {
                continue;
            }
            let same = v100.contains(from) == v100.contains(to);
            r.reachability.entry(f).or_default().insert(t, same);
        }
    }
    r.multicast = vec![MulticastReport {
        group: "239.1.1.1".parse().unwrap(),
        sender: itf("default/sample-b@eth1"),
        received: BTreeMap::from([
            (itf("default/sample-a@eth1"), 10),
            (itf("default/sample-c@eth200"), 0),
        ]),
    }];
    r.pools = vec![
        PoolReport {
            name: "vlan100-ipv4".into(),
            total: 62,
            used: 2,
        },
        PoolReport {
            name: "vlan100-ipv6".into(),
            total: 254,
            used: 2,
        },
        PoolReport {
            name: "vlan200-ipv4".into(),
            total: 21,
            used: 2,
        },
    ];
    r.rejected = vec![Rejection {
        object: "IPPool/overlapping-pool".parse().unwrap(),
        reason: "IPPool overlapping-pool: spec.ipRanges[0].cidr = \"10.10.1.32/27\": overlaps \
                 10.10.1.0/26 (spec.ipRanges[0].cidr) of IPPool vlan100-ipv4"
            .into(),
    }];
    r
}

/// Everything [`report`] satisfies.
pub const EXPECT: &str = r#"
pods:
  - pod: default/sample-a
    ready: true
    interfaces:
      - name: eth1
        network: default/vlan100
        vlan: 100
        mtu: 1500
        pools: [vlan100-ipv6, vlan100-ipv4]
        ips: ["fd00:10:10:1::5/64", "10.10.1.5/24"]
        mac: "0A:58:0A:0A:01:05"
      - name: eth200
        network: networks/vlan200
        vlan: 200
        pools: [vlan200-ipv4]
  - pod: default/sample-b
    ready: true
  - pod: default/bad
    ready: false
    reasonContains: "VLAN ID"
reachability:
  groups:
    - [default/sample-a@eth1, default/sample-b@eth1]
    - [default/sample-a@eth200, default/sample-c@eth200]
multicast:
  - group: 239.1.1.1
    sender: default/sample-b@eth1
    members: [default/sample-a@eth1]
    nonMembers: [default/sample-c@eth200]
pools:
  - name: vlan100-ipv4
    used: 2
    total: 62
  - name: vlan200-ipv4
    used: 2
rejected:
  - object: IPPool/overlapping-pool
    reasonContains: "overlaps 10.10.1.0/26"
"#;
