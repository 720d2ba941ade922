//! The checker, rule by rule: a case that holds and cases that break it.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{expect, itf, report, EXPECT};
use spur_testbed::{check, compare_reports, Expect, PodRef, Rejection, Report, Runner};

/// The failures of `report` against `yaml`, as sentences.
fn failures(report: &Report, yaml: &str) -> Vec<String> {
    check(report, &expect(yaml))
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn pod_mut<'a>(r: &'a mut Report, name: &str) -> &'a mut spur_testbed::PodReport {
    let p: PodRef = name.parse().unwrap();
    r.pods.iter_mut().find(|x| x.pod == p).unwrap()
}

fn eth1_of_a(r: &mut Report) -> &mut spur_testbed::InterfaceReport {
    pod_mut(r, "default/sample-a")
        .interfaces
        .iter_mut()
        .find(|i| i.name == "eth1")
        .unwrap()
}

#[test]
fn everything_written_holds() {
    assert_eq!(failures(&report(), EXPECT), Vec::<String>::new());
}

#[test]
fn only_what_is_written_is_checked() {
    // No expectation about anything but the rejection, which must always
    // be listed.
    let f = failures(
        &report(),
        "rejected:\n  - object: IPPool/overlapping-pool\n",
    );
    assert!(f.is_empty(), "{f:?}");
    let mut r = report();
    r.rejected.clear();
    assert!(check(&r, &Expect::default()).is_empty());
}

// --- pods -------------------------------------------------------------------

#[test]
fn ready() {
    let yaml = "pods:\n  - pod: default/sample-a\n    ready: true\n  - pod: default/bad\n    ready: false\n";
    let mut r = report();
    r.rejected.clear();
    assert!(failures(&r, yaml).is_empty());
    pod_mut(&mut r, "default/sample-a").ready = false;
    pod_mut(&mut r, "default/sample-a").reason = Some("pool vlan100-ipv4 is exhausted".into());
    pod_mut(&mut r, "default/bad").ready = true;
    assert_eq!(
        failures(&r, yaml),
        [
            "Pod default/sample-a: expected ready, found not ready: pool vlan100-ipv4 is exhausted",
            "Pod default/bad: expected not ready, found ready",
        ]
    );
}

#[test]
fn reason_contains_ignores_case() {
    let mut r = report();
    r.rejected.clear();
    let yaml = "pods:\n  - pod: default/bad\n    reasonContains: \"vlan id MUST\"\n";
    assert!(failures(&r, yaml).is_empty());
    let yaml = "pods:\n  - pod: default/bad\n    reasonContains: \"exhausted\"\n";
    assert_eq!(
        failures(&r, yaml),
        ["Pod default/bad: expected a reason containing \"exhausted\", found \
          \"NetworkAttachmentDefinition default/vlan5000: vlan = 5000: VLAN ID must be 0 (untagged) or 1-4094\""]
    );
    pod_mut(&mut r, "default/bad").reason = None;
    assert_eq!(
        failures(&r, yaml),
        ["Pod default/bad: expected a reason containing \"exhausted\", found no reason"]
    );
}

#[test]
fn a_pod_must_be_reported() {
    let mut r = report();
    r.rejected.clear();
    r.pods.retain(|p| p.pod.name != "sample-b");
    assert_eq!(
        failures(&r, "pods:\n  - pod: default/sample-b\n"),
        ["Pod default/sample-b: expected a report of this Pod, found none"]
    );
}

const ETH1: &str = "pods:\n  - pod: default/sample-a\n    interfaces:\n      - name: eth1\n";

#[test]
fn an_interface_must_exist() {
    let mut r = report();
    r.rejected.clear();
    assert!(failures(&r, ETH1).is_empty());
    pod_mut(&mut r, "default/sample-a")
        .interfaces
        .retain(|i| i.name != "eth1");
    assert_eq!(
        failures(&r, ETH1),
        ["Interface default/sample-a@eth1: expected the interface to exist, found only eth0, eth200"]
    );
}

#[test]
fn network_vlan_and_mtu() {
    let yaml =
        format!("{ETH1}        network: default/vlan100\n        vlan: 100\n        mtu: 1500\n");
    let mut r = report();
    r.rejected.clear();
    assert!(failures(&r, &yaml).is_empty());
    let i = eth1_of_a(&mut r);
    i.network = "default/vlan101".into();
    i.vlan = 101;
    i.mtu = 9000;
    assert_eq!(
        failures(&r, &yaml),
        [
            "Interface default/sample-a@eth1: expected network default/vlan100, found network default/vlan101",
            "Interface default/sample-a@eth1: expected VLAN 100, found VLAN 101",
            "Interface default/sample-a@eth1: expected MTU 1500, found MTU 9000",
        ]
    );
}

#[test]
fn vlan_zero_is_untagged() {
    let yaml =
        "pods:\n  - pod: default/sample-a\n    interfaces:\n      - name: eth0\n        vlan: 0\n";
    let mut r = report();
    r.rejected.clear();
    assert!(failures(&r, yaml).is_empty());
}

#[test]
fn pools_are_a_set_that_accounts_for_every_address() {
    let yaml = format!("{ETH1}        pools: [vlan100-ipv6, vlan100-ipv4]\n");
    let mut r = report();
    r.rejected.clear();
    assert!(failures(&r, &yaml).is_empty(), "order does not matter");

    let mut foreign = r.clone();
    eth1_of_a(&mut foreign).pools[1] = "other-ipv6".into();
    assert_eq!(
        failures(&foreign, &yaml),
        [
            "Interface default/sample-a@eth1: expected every address from one of the pools \
          [vlan100-ipv6, vlan100-ipv4] and each of them supplying one, found addresses from \
          [vlan100-ipv4, other-ipv6], of which other-ipv6 is not listed"
        ]
    );

    let mut idle = r.clone();
    let i = eth1_of_a(&mut idle);
    i.pools.pop();
    i.ips.pop();
    assert_eq!(
        failures(&idle, &yaml),
        [
            "Interface default/sample-a@eth1: expected every address from one of the pools \
          [vlan100-ipv6, vlan100-ipv4] and each of them supplying one, found addresses from \
          [vlan100-ipv4]; vlan100-ipv6 supplied none"
        ]
    );

    let mut static_too = r.clone();
    eth1_of_a(&mut static_too)
        .ips
        .push("10.10.9.9/24".parse().unwrap());
    assert_eq!(
        failures(&static_too, &yaml),
        [
            "Interface default/sample-a@eth1: expected every address from one of the pools \
          [vlan100-ipv6, vlan100-ipv4] and each of them supplying one, found addresses from \
          [vlan100-ipv4, vlan100-ipv6], and 1 of its 3 addresses came from no pool"
        ]
    );

    let none = format!("{ETH1}        pools: []\n");
    assert_eq!(failures(&r, &none).len(), 1);
    let mut bare = r.clone();
    let i = eth1_of_a(&mut bare);
    i.pools.clear();
    i.ips.clear();
    assert!(failures(&bare, &none).is_empty(), "no addresses, no pools");
}

#[test]
fn ips_are_an_exact_set() {
    let yaml = format!("{ETH1}        ips: [\"fd00:10:10:1:0::5/64\", 10.10.1.5/24]\n");
    let mut r = report();
    r.rejected.clear();
    assert!(
        failures(&r, &yaml).is_empty(),
        "order and spelling do not matter"
    );
    eth1_of_a(&mut r).ips[0] = "10.10.1.5/26".parse().unwrap();
    assert_eq!(
        failures(&r, &yaml),
        ["Interface default/sample-a@eth1: expected addresses [fd00:10:10:1::5/64, 10.10.1.5/24], \
          found addresses [10.10.1.5/26, fd00:10:10:1::5/64]"]
    );
    eth1_of_a(&mut r).ips.truncate(0);
    assert_eq!(failures(&r, &yaml).len(), 1);
}

#[test]
fn mac_ignores_case_and_separators() {
    let mut r = report();
    r.rejected.clear();
    for written in ["0A:58:0A:0A:01:05", "0a-58-0a-0a-01-05"] {
        let yaml = format!("{ETH1}        mac: \"{written}\"\n");
        assert!(failures(&r, &yaml).is_empty(), "{written}");
    }
    let yaml = format!("{ETH1}        mac: \"0a:58:0a:0a:01:99\"\n");
    assert_eq!(
        failures(&r, &yaml),
        ["Interface default/sample-a@eth1: expected MAC 0a:58:0a:0a:01:99, found MAC 0a:58:0a:0a:01:05"]
    );
    eth1_of_a(&mut r).mac = None;
    assert_eq!(
        failures(&r, &yaml),
        ["Interface default/sample-a@eth1: expected MAC 0a:58:0a:0a:01:99, found no MAC"]
    );
}

// --- reachability ---------------------------------------------------------

const GROUPS: &str = "reachability:\n  groups:\n    - [default/sample-a@eth1, default/sample-b@eth1]\n    - [default/sample-a@eth200, default/sample-c@eth200]\n";

fn no_rejections() -> Report {
    let mut r = report();
    r.rejected.clear();
    r
}

#[test]
fn reachability_holds() {
    assert!(failures(&no_rejections(), GROUPS).is_empty());
}

#[test]
fn reachability_within_a_group() {
    let mut r = no_rejections();
    *r.reachability
        .get_mut(&itf("default/sample-b@eth1"))
        .unwrap()
        .get_mut(&itf("default/sample-a@eth1"))
        .unwrap() = false;
    assert_eq!(
        failures(&r, GROUPS),
        ["Reachability default/sample-b@eth1 -> default/sample-a@eth1: expected reached (same group), found not reached"]
    );
}

#[test]
fn reachability_across_groups() {
    let mut r = no_rejections();
    *r.reachability
        .get_mut(&itf("default/sample-b@eth1"))
        .unwrap()
        .get_mut(&itf("default/sample-c@eth200"))
        .unwrap() = true;
    assert_eq!(
        failures(&r, GROUPS),
        ["Reachability default/sample-b@eth1 -> default/sample-c@eth200: expected not reached (different groups), found reached"]
    );
}

#[test]
fn reachability_needs_a_measurement() {
    let mut r = no_rejections();
    r.reachability
        .get_mut(&itf("default/sample-c@eth200"))
        .unwrap()
        .remove(&itf("default/sample-a@eth200"));
    assert_eq!(
        failures(&r, GROUPS),
        ["Reachability default/sample-c@eth200 -> default/sample-a@eth200: expected reached (same group), found no measurement"]
    );
}

#[test]
fn interfaces_of_one_pod_are_never_paired() {
    // sample-a's two interfaces are in different groups, and nothing says
    // whether they reach each other: no failure.
    let mut r = no_rejections();
    r.reachability
        .get_mut(&itf("default/sample-a@eth1"))
        .unwrap()
        .insert(itf("default/sample-a@eth200"), true);
    assert!(failures(&r, GROUPS).is_empty());
    let one_pod =
        "reachability:\n  groups:\n    - [default/sample-a@eth1, default/sample-a@eth200]\n";
    assert!(failures(&Report::new("x", Runner::Sim), one_pod).is_empty());
}

// --- multicast ------------------------------------------------------------

const MULTICAST: &str = "multicast:\n  - group: 239.1.1.1\n    sender: default/sample-b@eth1\n    members: [default/sample-a@eth1]\n    nonMembers: [default/sample-c@eth200]\n";

#[test]
fn multicast_holds() {
    assert!(failures(&no_rejections(), MULTICAST).is_empty());
}

#[test]
fn multicast_member_must_receive() {
    let mut r = no_rejections();
    r.multicast[0]
        .received
        .insert(itf("default/sample-a@eth1"), 0);
    assert_eq!(
        failures(&r, MULTICAST),
        ["Multicast 239.1.1.1 from default/sample-b@eth1 at default/sample-a@eth1: expected packets (a member), found 0 received"]
    );
    r.multicast[0]
        .received
        .remove(&itf("default/sample-a@eth1"));
    assert_eq!(
        failures(&r, MULTICAST),
        ["Multicast 239.1.1.1 from default/sample-b@eth1 at default/sample-a@eth1: expected packets (a member), found no measurement"]
    );
}

#[test]
fn multicast_non_member_must_receive_nothing() {
    let mut r = no_rejections();
    r.multicast[0]
        .received
        .insert(itf("default/sample-c@eth200"), 3);
    assert_eq!(
        failures(&r, MULTICAST),
        ["Multicast 239.1.1.1 from default/sample-b@eth1 at default/sample-c@eth200: expected no packets (not a member), found 3 received"]
    );
    r.multicast[0]
        .received
        .remove(&itf("default/sample-c@eth200"));
    assert_eq!(failures(&r, MULTICAST).len(), 1);
}

#[test]
fn multicast_entry_must_be_measured() {
    let mut r = no_rejections();
    r.multicast[0].group = "239.1.1.2".parse().unwrap();
    assert_eq!(
        failures(&r, MULTICAST),
        ["Multicast 239.1.1.1 from default/sample-b@eth1: expected a measurement, found none"]
    );
}

// --- pools ----------------------------------------------------------------

#[test]
fn pools_used_and_total() {
    let yaml =
        "pools:\n  - name: vlan100-ipv4\n    used: 2\n    total: 62\n  - name: vlan200-ipv4\n";
    let mut r = no_rejections();
    assert!(failures(&r, yaml).is_empty());
    r.pools[0].used = 3;
    r.pools[0].total = 61;
    r.pools.retain(|p| p.name != "vlan200-ipv4");
    assert_eq!(
        failures(&r, yaml),
        [
            "Pool vlan100-ipv4: expected 2 addresses used, found 3",
            "Pool vlan100-ipv4: expected 62 addresses in total, found 61",
            "Pool vlan200-ipv4: expected a report of its usage, found none",
        ]
    );
}

// --- rejected -------------------------------------------------------------

#[test]
fn rejected_objects_must_be_rejected_with_the_reason() {
    let yaml = "rejected:\n  - object: ippool/overlapping-pool\n    reasonContains: \"OVERLAPS\"\n";
    let mut r = report();
    assert!(failures(&r, yaml).is_empty(), "kind and reason ignore case");
    let yaml =
        "rejected:\n  - object: IPPool/overlapping-pool\n    reasonContains: \"exhausted\"\n";
    assert_eq!(
        failures(&r, yaml),
        ["Object IPPool/overlapping-pool: expected a rejection reason containing \"exhausted\", found \
          \"IPPool overlapping-pool: spec.ipRanges[0].cidr = \\\"10.10.1.32/27\\\": overlaps 10.10.1.0/26 \
          (spec.ipRanges[0].cidr) of IPPool vlan100-ipv4\""]
    );
    r.rejected.clear();
    assert_eq!(
        failures(&r, yaml),
        ["Object IPPool/overlapping-pool: expected to be rejected, found it was accepted"]
    );
}

#[test]
fn unlisted_rejections_fail_even_without_a_rejected_key() {
    let mut r = report();
    r.rejected.push(Rejection {
        object: "Pod/default/sample-d".parse().unwrap(),
        reason: "namespace \"nope\" not found".into(),
    });
    let f = failures(&r, "rejected:\n  - object: IPPool/overlapping-pool\n");
    assert_eq!(
        f,
        ["Object Pod/default/sample-d: expected to be accepted (it is not listed under `rejected`), \
          found it was rejected: namespace \"nope\" not found"]
    );
    assert_eq!(check(&r, &Expect::default()).len(), 2);
    // `Pod/NAME` names the Pod in `default`.
    let listed = "rejected:\n  - object: IPPool/overlapping-pool\n  - object: Pod/sample-d\n";
    assert!(failures(&r, listed).is_empty());
}

// --- compare_reports -------------------------------------------------------

fn hil(r: &Report) -> Report {
    let mut h = r.clone();
    h.runner = Runner::Hil;
    h.seed = None;
    h
}

#[test]
fn identical_runs_agree() {
    let r = report();
    assert!(compare_reports(&r, &hil(&r), &expect(EXPECT)).is_empty());
}

#[test]
fn pool_addresses_unrequested_macs_and_packet_counts_may_differ() {
    let r = report();
    let mut h = hil(&r);
    // sample-b's eth1 pins neither ips nor mac.
    let b = pod_mut(&mut h, "default/sample-b");
    b.interfaces[1].ips = vec![
        "fd00:10:10:1::40/64".parse().unwrap(),
        "10.10.1.40/24".parse().unwrap(),
    ];
    b.interfaces[1].mac = Some("02:00:00:00:00:01".into());
    b.interfaces[1].pools.reverse();
    h.multicast[0]
        .received
        .insert(itf("default/sample-a@eth1"), 9);
    h.failures.clear();
    let diffs = compare_reports(&r, &h, &expect(EXPECT));
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[test]
fn differences_are_named() {
    let r = report();
    let mut h = hil(&r);
    eth1_of_a(&mut h).mac = Some("02:00:00:00:00:01".into());
    eth1_of_a(&mut h).ips[0] = "10.10.1.44/24".parse().unwrap();
    let b = pod_mut(&mut h, "default/sample-b");
    b.interfaces[1].ips[0] = "10.10.1.40/26".parse().unwrap();
    b.interfaces[0].ips[0] = "10.244.1.99/24".parse().unwrap();
    let bad = pod_mut(&mut h, "default/bad");
    bad.ready = true;
    bad.reason = None;
    h.pods.retain(|p| p.pod.name != "sample-c");
    *h.reachability
        .get_mut(&itf("default/sample-a@eth1"))
        .unwrap()
        .get_mut(&itf("default/sample-b@eth1"))
        .unwrap() = false;
    h.multicast[0]
        .received
        .insert(itf("default/sample-c@eth200"), 2);
    h.pools[2].used = 1;
    h.rejected.clear();
    h.failures = vec!["something".into()];
    let diffs = compare_reports(&r, &h, &expect(EXPECT));
    insta::assert_snapshot!("compare_differences", diffs.join("\n"));
}

#[test]
fn compare_names_same_runner_reports_by_position() {
    let r = report();
    let mut s = r.clone();
    s.testbed = "other".into();
    assert_eq!(
        compare_reports(&r, &s, &Expect::default()),
        ["testbed: the first (sim) says example, the second (sim) says other"]
    );
}

#[test]
fn static_addresses_must_agree() {
    let mut r = report();
    let i = eth1_of_a(&mut r);
    i.pools.clear();
    let mut h = hil(&r);
    eth1_of_a(&mut h).ips[0] = "10.10.1.77/24".parse().unwrap();
    // The primary interface's addresses may differ.
    pod_mut(&mut h, "default/sample-c").interfaces[0].ips[0] = "10.244.1.99/24".parse().unwrap();
    assert_eq!(
        compare_reports(&r, &h, &Expect::default()),
        ["Interface default/sample-a@eth1 addresses: sim says [10.10.1.5/24, fd00:10:10:1::5/64], \
          hil says [10.10.1.77/24, fd00:10:10:1::5/64]"]
    );
}
