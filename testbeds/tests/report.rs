//! The report: its JSON shape and its human-readable rendering.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{expect, report, EXPECT};
use spur_testbed::{check, Report, Runner};

#[test]
fn json_has_the_shape_of_the_format() {
    let mut r = report();
    r.pods.truncate(1);
    r.pods[0].interfaces.truncate(2);
    r.reachability.retain(|k, _| k.pod.name == "sample-a");
    insta::assert_snapshot!("report_json", r.to_json());
}

#[test]
fn json_round_trips() {
    let r = report();
    assert_eq!(Report::from_json(&r.to_json()).unwrap(), r);
}

#[test]
fn the_example_of_the_format_parses() {
    let text = r#"{"testbed": "...", "runner": "sim", "seed": 7,
 "pods": [{"pod": "ns/name", "node": "node-a", "ready": true, "reason": null,
           "interfaces": [{"name": "eth1", "network": "ns/nad", "vlan": 100, "mtu": 1500,
                           "mac": "...", "ips": ["10.10.1.5/24"], "pools": ["vlan100-ipv4"]}]}],
 "reachability": {"ns/a@eth1": {"ns/b@eth1": true}},
 "multicast": [{"group": "239.1.1.1", "sender": "ns/a@eth1", "received": {"ns/b@eth1": 10}}],
 "pools": [{"name": "vlan100-ipv4", "total": 62, "used": 2}],
 "rejected": [{"object": "IPPool/overlapping-pool", "reason": "..."}],
 "failures": ["..."]}"#;
    let r = Report::from_json(text).unwrap();
    assert_eq!(r.runner, Runner::Sim);
    assert_eq!(r.seed, Some(7));
    assert_eq!(r.pods[0].interfaces[0].vlan, 100);
    assert_eq!(
        r.reached(&common::itf("ns/a@eth1"), &common::itf("ns/b@eth1")),
        Some(true)
    );
    assert!(!r.passed());
    // The harness has no seed.
    let hil = Report::new("t", Runner::Hil);
    assert!(!hil.to_json().contains("seed"));
}

#[test]
fn rendering_of_a_passing_run() {
    let mut r = report();
    r.failures = check(&r, &expect(EXPECT))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(r.passed());
    insta::assert_snapshot!("report_text_pass", r.to_string());
}

#[test]
fn rendering_of_a_failing_run() {
    let mut r = report();
    r.runner = Runner::Hil;
    r.seed = None;
    r.pods[1].ready = false;
    r.pods[1].reason = Some("IPPool vlan100-ipv4 has no free address".into());
    r.pods[1].interfaces.truncate(1);
    r.reachability.clear();
    r.reachability
        .entry(common::itf("default/sample-a@eth1"))
        .or_default()
        .insert(common::itf("default/sample-b@eth1"), false);
    r.multicast[0]
        .received
        .insert(common::itf("default/sample-c@eth200"), 1);
    r.failures = check(&r, &expect(EXPECT))
        .iter()
        .map(ToString::to_string)
        .collect();
    insta::assert_snapshot!("report_text_fail", r.to_string());
}

#[test]
fn rendering_of_an_empty_run() {
    insta::assert_snapshot!(
        "report_text_empty",
        Report::new("empty", Runner::Sim).to_string()
    );
}
