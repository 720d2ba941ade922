//! Properties of the checker: it never panics, a report built to satisfy
//! an expectation passes it, and changing any one fact the expectation
//! checks makes it fail.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use spur_core::names::Mac;
use spur_testbed::{
    check, compare_reports, Expect, InterfaceExpect, InterfaceRef, InterfaceReport,
    MulticastExpect, MulticastReport, ObjectRef, PodExpect, PodRef, PodReport, PoolExpect,
    PoolReport, Reachability, RejectedExpect, Rejection, Report, Runner,
};

const NAMESPACES: &[&str] = &["default", "ns"];
const PODS: &[&str] = &["a", "b", "c", "d"];
const IFNAMES: &[&str] = &["eth0", "eth1", "eth2", "net1"];
const NETWORKS: &[&str] = &["default/vlan100", "ns/vlan200", "default/plain"];
const POOLS: &[&str] = &["p1", "p2", "p3", "p4"];
const GROUPS: &[&str] = &["239.1.1.1", "239.1.1.2", "ff05::1"];
const KINDS: &[&str] = &["IPPool", "Pod", "NetworkAttachmentDefinition"];

fn pod_ref() -> impl Strategy<Value = PodRef> {
    (select(NAMESPACES), select(PODS)).prop_map(|(ns, p)| PodRef::new(ns, p))
}

fn iface_ref() -> impl Strategy<Value = InterfaceRef> {
    (pod_ref(), select(IFNAMES)).prop_map(|(p, i)| p.interface(i))
}

fn ipnet() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("10.0.{a}.{b}/24").parse().unwrap()),
        any::<u16>().prop_map(|x| format!("fd00::{x:x}/64").parse().unwrap()),
    ]
}

type IfaceParts = (
    Option<&'static str>,
    Option<u16>,
    Option<u32>,
    Option<BTreeSet<&'static str>>,
    Option<BTreeSet<IpNet>>,
    Option<[u8; 6]>,
);

fn iface_parts() -> impl Strategy<Value = IfaceParts> {
    (
        option::of(select(NETWORKS)),
        option::of(0u16..=4094),
        option::of(68u32..=9000),
        option::of(btree_set(select(POOLS), 0..3)),
        option::of(btree_set(ipnet(), 0..4)),
        option::of(any::<[u8; 6]>()),
    )
}

/// Pools and exact addresses that some interface can satisfy: with pools,
/// at least one address per pool; with no pools, no addresses.
fn satisfiable(parts: &IfaceParts) -> bool {
    match (&parts.3, &parts.4) {
        (Some(p), Some(i)) if p.is_empty() => i.is_empty(),
        (Some(p), Some(i)) => i.len() >= p.len(),
        _ => true,
    }
}

fn iface_expect(name: &str, parts: IfaceParts) -> InterfaceExpect {
    let (network, vlan, mtu, pools, ips, mac) = parts;
    InterfaceExpect {
        name: name.to_string(),
        network: network.map(str::to_string),
        vlan,
        mtu,
        pools: pools.map(|p| p.into_iter().map(str::to_string).collect()),
        ips: ips.map(|i| i.into_iter().collect()),
        mac: mac.map(Mac),
    }
}

fn object_ref() -> impl Strategy<Value = ObjectRef> {
    (
        select(KINDS),
        option::of(select(NAMESPACES)),
        select(&["x", "y"][..]),
    )
        .prop_map(|(k, ns, n)| ObjectRef::new(k, ns, n))
}

/// Expectations as `expect.yaml` allows them: one entry per Pod,
/// interface, pool, object and (group, sender); reasons to look for made of
/// the letters a-m.
fn consistent_expect() -> impl Strategy<Value = Expect> {
    let pod = (
        option::of(any::<bool>()),
        option::of("[a-m]{1,4}"),
        btree_map(
            select(IFNAMES),
            iface_parts().prop_filter("satisfiable", satisfiable),
            0..3,
        ),
    );
    let pods = btree_map(pod_ref(), pod, 0..4);
    let reach = option::of(btree_map(iface_ref(), 0usize..3, 0..6));
    let multicast = btree_map(
        (select(GROUPS), iface_ref()),
        btree_map(iface_ref(), any::<bool>(), 1..4),
        0..3,
    );
    let pools = btree_map(
        select(POOLS),
        (option::of(0u64..100), option::of(0u64..300)),
        0..3,
    );
    let rejected = vec((object_ref(), option::of("[a-m]{1,4}")), 0..3);
    (pods, reach, multicast, pools, rejected).prop_map(|(pods, reach, mc, pools, rejected)| {
        let pods = pods
            .into_iter()
            .map(|(pod, (ready, reason, ifaces))| PodExpect {
                pod,
                ready,
                reason_contains: reason,
                interfaces: ifaces
                    .into_iter()
                    .map(|(name, parts)| iface_expect(name, parts))
                    .collect(),
            })
            .collect();
        let reachability = reach.map(|m| {
            let mut groups: Vec<Vec<InterfaceRef>> = vec![Vec::new(); 3];
            for (itf, g) in m {
                groups[g].push(itf);
            }
            groups.retain(|g| !g.is_empty());
            Reachability { groups }
        });
        let multicast = mc
            .into_iter()
            .map(|((group, sender), receivers)| {
                let (members, non): (Vec<_>, Vec<_>) = receivers
                    .into_iter()
                    .filter(|(i, _)| *i != sender)
                    .partition(|(_, member)| *member);
                MulticastExpect {
                    group: group.parse().unwrap(),
                    sender,
                    members: members.into_iter().map(|(i, _)| i).collect(),
                    non_members: non.into_iter().map(|(i, _)| i).collect(),
                }
            })
            .collect();
        let pools = pools
            .into_iter()
            .map(|(name, (used, total))| PoolExpect {
                name: name.to_string(),
                used,
                total,
            })
            .collect();
        let mut objects: Vec<RejectedExpect> = Vec::new();
        for (object, reason) in rejected {
            if !objects.iter().any(|o| o.object.same_object(&object)) {
                objects.push(RejectedExpect {
                    object,
                    reason_contains: reason,
                });
            }
        }
        Expect {
            pods,
            reachability,
            multicast,
            pools,
            rejected: objects,
        }
    })
}

/// The interface report that satisfies `want`.
fn satisfying_interface(want: &InterfaceExpect) -> InterfaceReport {
    let (ips, pools) = match (&want.pools, &want.ips) {
        (Some(p), ips) => {
            let n = ips.as_ref().map_or(p.len(), Vec::len);
            let ips = ips.clone().unwrap_or_else(|| {
                (0..n)
                    .map(|k| format!("10.1.0.{k}/24").parse().unwrap())
                    .collect()
            });
            let pools = (0..n).map(|k| p[k % p.len().max(1)].clone()).collect();
            (ips, if p.is_empty() { Vec::new() } else { pools })
        }
        (None, ips) => (ips.clone().unwrap_or_default(), Vec::new()),
    };
    InterfaceReport {
        name: want.name.clone(),
        network: want.network.clone().unwrap_or_else(|| "default/any".into()),
        vlan: want.vlan.unwrap_or(0),
        mtu: want.mtu.unwrap_or(1500),
        mac: want.mac.map(|m| m.to_string().to_uppercase()),
        ips,
        pools,
    }
}

/// A report that satisfies `expect`.
fn satisfying_report(expect: &Expect) -> Report {
    let mut r = Report::new("prop", Runner::Sim);
    for p in &expect.pods {
        let ready = p.ready.unwrap_or(p.reason_contains.is_none());
        r.pods.push(PodReport {
            pod: p.pod.clone(),
            node: Some("node-a".into()),
            ready,
            reason: p
                .reason_contains
                .as_ref()
                .map(|s| format!("because {} failed", s.to_uppercase())),
            interfaces: p.interfaces.iter().map(satisfying_interface).collect(),
        });
    }
    if let Some(reach) = &expect.reachability {
        for (ga, group_a) in reach.groups.iter().enumerate() {
            for a in group_a {
                for (gb, group_b) in reach.groups.iter().enumerate() {
                    for b in group_b {
                        if a.pod != b.pod {
                            r.reachability
                                .entry(a.clone())
                                .or_default()
                                .insert(b.clone(), ga == gb);
                        }
                    }
                }
            }
        }
    }
    for m in &expect.multicast {
        let mut received = BTreeMap::new();
        for member in &m.members {
            received.insert(member.clone(), 7);
        }
        for non in &m.non_members {
            received.insert(non.clone(), 0);
        }
        r.multicast.push(MulticastReport {
            group: m.group,
            sender: m.sender.clone(),
            received,
        });
    }
    for p in &expect.pools {
        r.pools.push(PoolReport {
            name: p.name.clone(),
            total: p.total.unwrap_or(500),
            used: p.used.unwrap_or(0),
        });
    }
    for o in &expect.rejected {
        r.rejected.push(Rejection {
            object: o.object.clone(),
            reason: format!(
                "refused: {} clashes",
                o.reason_contains.clone().unwrap_or_default()
            ),
        });
    }
    r
}

/// Every single change of a fact that `expect` checks, applied to a copy
/// of `report`.
fn mutations(expect: &Expect, report: &Report) -> Vec<(String, Report)> {
    let mut out = Vec::new();
    let mut change = |what: String, f: &dyn Fn(&mut Report)| {
        let mut r = report.clone();
        f(&mut r);
        out.push((what, r));
    };
    for (pi, p) in expect.pods.iter().enumerate() {
        change(format!("drop {}", p.pod), &|r| {
            r.pods.remove(pi);
        });
        if p.ready.is_some() {
            change(format!("flip ready of {}", p.pod), &|r| {
                r.pods[pi].ready = !r.pods[pi].ready
            });
        }
        if p.reason_contains.is_some() {
            change(format!("reason of {}", p.pod), &|r| {
                r.pods[pi].reason = Some("nopq rstu".into())
            });
            change(format!("no reason of {}", p.pod), &|r| {
                r.pods[pi].reason = None
            });
        }
        for (ii, want) in p.interfaces.iter().enumerate() {
            let at = format!("{}@{}", p.pod, want.name);
            change(format!("drop {at}"), &|r| {
                r.pods[pi].interfaces.remove(ii);
            });
            if want.network.is_some() {
                change(format!("network of {at}"), &|r| {
                    r.pods[pi].interfaces[ii].network.push('x')
                });
            }
            if want.vlan.is_some() {
                change(format!("vlan of {at}"), &|r| {
                    let v = &mut r.pods[pi].interfaces[ii].vlan;
                    *v = (*v + 1) % 4095;
                });
            }
            if want.mtu.is_some() {
                change(format!("mtu of {at}"), &|r| {
                    r.pods[pi].interfaces[ii].mtu += 1
                });
            }
            if let Some(mac) = want.mac {
                change(format!("mac of {at}"), &|r| {
                    let mut b = mac.0;
                    b[5] ^= 1;
                    r.pods[pi].interfaces[ii].mac = Some(Mac(b).to_string());
                });
            }
            if let Some(ips) = &want.ips {
                change(format!("ips of {at}"), &|r| {
                    let got = &mut r.pods[pi].interfaces[ii].ips;
                    if ips.is_empty() {
                        got.push("192.0.2.1/24".parse().unwrap());
                    } else {
                        got.pop();
                    }
                });
            }
            if let Some(pools) = &want.pools {
                change(format!("pools of {at}"), &|r| {
                    let itf = &mut r.pods[pi].interfaces[ii];
                    if pools.is_empty() {
                        itf.pools.push("foreign".into());
                        itf.ips.push("192.0.2.2/24".parse().unwrap());
                    } else {
                        itf.pools[0] = "foreign".into();
                    }
                });
                if !pools.is_empty() {
                    change(format!("static address on {at}"), &|r| {
                        r.pods[pi].interfaces[ii]
                            .ips
                            .push("192.0.2.3/24".parse().unwrap())
                    });
                }
            }
        }
    }
    if let Some(reach) = &expect.reachability {
        let all: Vec<&InterfaceRef> = reach.groups.iter().flatten().collect();
        for a in &all {
            for b in &all {
                if a.pod == b.pod {
                    continue;
                }
                let (a, b) = ((*a).clone(), (*b).clone());
                change(format!("flip {a} -> {b}"), &|r| {
                    let v = r.reachability.get_mut(&a).unwrap().get_mut(&b).unwrap();
                    *v = !*v;
                });
                change(format!("unmeasure {a} -> {b}"), &|r| {
                    r.reachability.get_mut(&a).unwrap().remove(&b);
                });
            }
        }
    }
    for (mi, m) in expect.multicast.iter().enumerate() {
        change(format!("drop multicast {mi}"), &|r| {
            r.multicast.remove(mi);
        });
        for member in &m.members {
            change(format!("member {member} gets nothing"), &|r| {
                r.multicast[mi].received.insert(member.clone(), 0);
            });
            change(format!("member {member} unmeasured"), &|r| {
                r.multicast[mi].received.remove(member);
            });
        }
        for non in &m.non_members {
            change(format!("non-member {non} gets packets"), &|r| {
                r.multicast[mi].received.insert(non.clone(), 1);
            });
            change(format!("non-member {non} unmeasured"), &|r| {
                r.multicast[mi].received.remove(non);
            });
        }
    }
    for (pi, p) in expect.pools.iter().enumerate() {
        change(format!("drop pool {}", p.name), &|r| {
            r.pools.remove(pi);
        });
        if p.used.is_some() {
            change(format!("used of {}", p.name), &|r| r.pools[pi].used += 1);
        }
        if p.total.is_some() {
            change(format!("total of {}", p.name), &|r| r.pools[pi].total += 1);
        }
    }
    for (oi, o) in expect.rejected.iter().enumerate() {
        change(format!("accept {}", o.object), &|r| {
            r.rejected.remove(oi);
        });
        if o.reason_contains.is_some() {
            change(format!("reason of {}", o.object), &|r| {
                r.rejected[oi].reason = "nopq".into()
            });
        }
    }
    change("an unlisted rejection".into(), &|r| {
        r.rejected.push(Rejection {
            object: ObjectRef::new("ConfigMap", Some("default"), "unlisted"),
            reason: "refused".into(),
        })
    });
    out
}

fn any_report() -> impl Strategy<Value = Report> {
    let iface = (
        select(IFNAMES),
        select(NETWORKS),
        any::<u16>(),
        any::<u32>(),
        option::of(".{0,20}"),
        vec(ipnet(), 0..3),
        vec(select(POOLS).prop_map(str::to_string), 0..3),
    )
        .prop_map(
            |(name, network, vlan, mtu, mac, ips, pools)| InterfaceReport {
                name: name.into(),
                network: network.into(),
                vlan,
                mtu,
                mac,
                ips,
                pools,
            },
        );
    let pod = (
        pod_ref(),
        option::of("node-[ab]"),
        any::<bool>(),
        option::of(".{0,20}"),
        vec(iface, 0..3),
    )
        .prop_map(|(pod, node, ready, reason, interfaces)| PodReport {
            pod,
            node,
            ready,
            reason,
            interfaces,
        });
    let multicast = (
        select(GROUPS),
        iface_ref(),
        btree_map(iface_ref(), 0u64..3, 0..3),
    )
        .prop_map(|(g, sender, received)| MulticastReport {
            group: g.parse().unwrap(),
            sender,
            received,
        });
    let pool =
        (select(POOLS), any::<u64>(), any::<u64>()).prop_map(|(n, total, used)| PoolReport {
            name: n.into(),
            total,
            used,
        });
    let rejection =
        (object_ref(), ".{0,20}").prop_map(|(object, reason)| Rejection { object, reason });
    (
        select(&[Runner::Sim, Runner::Hil][..]),
        vec(pod, 0..4),
        btree_map(
            iface_ref(),
            btree_map(iface_ref(), any::<bool>(), 0..4),
            0..4,
        ),
        vec(multicast, 0..2),
        vec(pool, 0..3),
        vec(rejection, 0..2),
        vec(".{0,10}", 0..2),
    )
        .prop_map(
            |(runner, pods, reachability, multicast, pools, rejected, failures)| Report {
                testbed: "any".into(),
                runner,
                seed: None,
                pods,
                reachability,
                multicast,
                pools,
                rejected,
                failures,
            },
        )
}

/// Expectations with duplicates and contradictions, which the loader
/// refuses but the checker must survive.
fn any_expect() -> impl Strategy<Value = Expect> {
    let iface = (select(IFNAMES), iface_parts()).prop_map(|(n, p)| iface_expect(n, p));
    let pod = (
        pod_ref(),
        option::of(any::<bool>()),
        option::of(".{0,5}"),
        vec(iface, 0..3),
    )
        .prop_map(|(pod, ready, reason_contains, interfaces)| PodExpect {
            pod,
            ready,
            reason_contains,
            interfaces,
        });
    let mc = (
        select(GROUPS),
        iface_ref(),
        vec(iface_ref(), 0..3),
        vec(iface_ref(), 0..3),
    )
        .prop_map(|(g, sender, members, non_members)| MulticastExpect {
            group: g.parse().unwrap(),
            sender,
            members,
            non_members,
        });
    let pool = (
        select(POOLS),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
    )
        .prop_map(|(n, used, total)| PoolExpect {
            name: n.into(),
            used,
            total,
        });
    let rej =
        (object_ref(), option::of(".{0,5}")).prop_map(|(object, reason_contains)| RejectedExpect {
            object,
            reason_contains,
        });
    (
        vec(pod, 0..4),
        option::of(vec(vec(iface_ref(), 0..4), 0..3)),
        vec(mc, 0..2),
        vec(pool, 0..3),
        vec(rej, 0..3),
    )
        .prop_map(|(pods, groups, multicast, pools, rejected)| Expect {
            pods,
            reachability: groups.map(|groups| Reachability { groups }),
            multicast,
            pools,
            rejected,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn checker_never_panics(report in any_report(), expect in any_expect()) {
        let failures = check(&report, &expect);
        for f in failures {
            prop_assert!(!f.to_string().is_empty());
        }
        let _ = report.to_string();
    }

    #[test]
    fn compare_never_panics(a in any_report(), b in any_report(), expect in any_expect()) {
        let _ = compare_reports(&a, &b, &expect);
        prop_assert!(compare_reports(&a, &a, &expect).is_empty());
    }

    #[test]
    fn a_satisfying_report_passes(expect in consistent_expect()) {
        let report = satisfying_report(&expect);
        let failures: Vec<String> = check(&report, &expect).iter().map(ToString::to_string).collect();
        prop_assert!(failures.is_empty(), "{:#?}", failures);
        let json = Report::from_json(&report.to_json()).unwrap();
        prop_assert_eq!(json, report);
    }

    #[test]
    fn changing_any_checked_fact_fails(expect in consistent_expect(), pick in any::<Index>()) {
        let report = satisfying_report(&expect);
        let all = mutations(&expect, &report);
        let (what, changed) = &all[pick.index(all.len())];
        prop_assert!(!check(changed, &expect).is_empty(), "no failure after: {}", what);
    }
}

#[test]
fn every_mutation_of_a_rich_expectation_fails() {
    // The same property, exhaustively over every mutation of a few seeds.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for _ in 0..64 {
        let expect = consistent_expect().new_tree(&mut runner).unwrap().current();
        let report = satisfying_report(&expect);
        assert!(check(&report, &expect).is_empty());
        for (what, changed) in mutations(&expect, &report) {
            assert!(
                !check(&changed, &expect).is_empty(),
                "no failure after: {what}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The parsers of the testbed files: no panic on any input, and what is
// rendered parses back to the same value.

/// Valid testbed.yaml contents: 1-4 nodes with 1-3 NICs each, segments
/// joining some of those NICs, optional allowed VLANs.
fn testbed_spec() -> impl Strategy<Value = spur_testbed::TestbedSpec> {
    use spur_testbed::{CniMode, Node, Port, Segment, TestbedSpec, VlanRange};
    (
        1usize..5,
        1usize..4,
        any::<bool>(),
        vec(option::of((1u16..4000, 0u16..90)), 0..3),
    )
        .prop_map(|(n_nodes, n_nics, multus, vlans)| {
            let nodes: Vec<Node> = (0..n_nodes)
                .map(|i| Node {
                    name: format!("node-{i}"),
                    nics: (1..=n_nics).map(|k| format!("eth{k}")).collect(),
                    sriov: Vec::new(),
                })
                .collect();
            let fabric = (1..=n_nics)
                .map(|k| Segment {
                    name: format!("tor-{k}"),
                    ports: (0..n_nodes)
                        .map(|i| Port {
                            node: format!("node-{i}"),
                            nic: format!("eth{k}"),
                        })
                        .collect(),
                    allowed_vlans: vlans.get(k - 1).and_then(|v| {
                        v.map(|(start, width)| {
                            vec![VlanRange {
                                start,
                                end: (start + width).min(4094),
                            }]
                        })
                    }),
                })
                .collect();
            TestbedSpec {
                cni_mode: if multus {
                    CniMode::Multus
                } else {
                    CniMode::Native
                },
                nodes,
                fabric,
            }
        })
}

proptest! {
    #[test]
    fn testbed_files_never_panic_the_parsers(text in "(\\PC|\n){0,300}") {
        let file = std::path::Path::new("x.yaml");
        let _ = spur_testbed::TestbedSpec::parse(file, &text);
        let _ = Expect::parse(file, &text);
        let _ = spur_testbed::parse_manifests(file, &text);
    }

    #[test]
    fn yaml_shaped_text_never_panics_the_parsers(
        lines in vec(("[ ]{0,4}", select(&["nodes", "name", "nics", "fabric", "ports", "pods", "pod", "interfaces",
            "vlan", "- ", "allowedVLANs", "kind", "metadata", "apiVersion", "reachability", "groups", "---"][..]),
            "(: )?", "[a-z0-9/@\\[\\], -]{0,12}"), 0..20)
    ) {
        let text: String = lines.into_iter().map(|(i, k, c, v)| format!("{i}{k}{c}{v}\n")).collect();
        let file = std::path::Path::new("x.yaml");
        let _ = spur_testbed::TestbedSpec::parse(file, &text);
        let _ = Expect::parse(file, &text);
        let _ = spur_testbed::parse_manifests(file, &text);
    }

    #[test]
    fn testbed_yaml_renders_and_parses_back(spec in testbed_spec()) {
        let text = serde_yaml::to_string(&spec).unwrap();
        let back = spur_testbed::TestbedSpec::parse(std::path::Path::new("testbed.yaml"), &text);
        prop_assert_eq!(back.map_err(|e| format!("{e:?}")), Ok(spec));
    }

    #[test]
    fn expect_yaml_renders_and_parses_back(expect in consistent_expect()) {
        let text = serde_yaml::to_string(&expect).unwrap();
        // The generator also makes expectations the loader refuses (say, a
        // multicast entry with no member): those must still decode to the
        // same value; the others must load to it.
        let decoded: Expect = serde_yaml::from_str(&text).unwrap();
        prop_assert_eq!(&decoded, &expect);
        if let Ok(back) = Expect::parse(std::path::Path::new("expect.yaml"), &text) {
            prop_assert_eq!(back, expect);
        }
    }

    #[test]
    fn references_render_and_parse_back(p in pod_ref(), i in iface_ref(), o in object_ref()) {
        prop_assert_eq!(p.to_string().parse::<PodRef>().ok(), Some(p));
        prop_assert_eq!(i.to_string().parse::<InterfaceRef>().ok(), Some(i));
        prop_assert_eq!(o.to_string().parse::<ObjectRef>().ok(), Some(o));
    }
}
