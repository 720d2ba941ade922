//! The checker: which expectations of `expect.yaml` a [`Report`] breaks,
//! and how two reports of one testbed (simulator and harness) differ.
//!
//! Both are pure functions of their arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;
use spur_core::names::Mac;

use crate::expect::{Expect, InterfaceExpect, MulticastExpect, PodExpect};
use crate::refs::InterfaceRef;
use crate::report::{InterfaceReport, PodReport, Report};

/// One broken expectation: what was expected of which thing, and what the
/// report shows instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Failure {
    /// What it is about, e.g. `Pod default/sample-a`, `Interface
    /// default/sample-a@eth1`, `Pool vlan100-ipv4`, `Object IPPool/x`.
    pub subject: String,
    /// What `expect.yaml` asks for.
    pub expected: String,
    /// What the report shows.
    pub found: String,
}

impl Failure {
    fn new(
        subject: impl fmt::Display,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Failure {
            subject: subject.to_string(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.subject, self.expected, self.found
        )
    }
}

/// Every expectation of `expect` that `report` breaks; empty when all hold.
/// Only what `expect` writes is checked, except that every object in
/// `report.rejected` must be listed in `expect.rejected`.
///
/// The rules:
///
/// - `pods`: the Pod must be reported; `ready` must match;
///   `reasonContains` must be a case-insensitive substring of the reason;
///   each listed interface must exist with the given `network`, `vlan`,
///   `mtu`, `mac` (ignoring case and `-`/`:`), exact `ips` set, and
///   `pools`: every address came from one of the listed pools and each
///   listed pool supplied one (the report's pools equal the listed set
///   and number one per address).
/// - `reachability`: for interfaces of different Pods, a pair in one group
///   must be reached both ways and a pair across groups must not be,
///   either way; two interfaces of one Pod are never paired; a pair that
///   was not measured fails.
/// - `multicast`: the report must hold the group and sender; each member
///   must have received at least one packet and each non-member exactly
///   none; a receiver without a count fails.
/// - `pools`: the pool must be reported with the given `used` / `total`.
/// - `rejected`: each listed object was rejected, with `reasonContains` a
///   case-insensitive substring of the reason; a rejected object not
///   listed fails.
pub fn check(report: &Report, expect: &Expect) -> Vec<Failure> {
    let mut out = Vec::new();
    for p in &expect.pods {
        check_pod(report, p, &mut out);
    }
    if let Some(r) = &expect.reachability {
        check_reachability(report, &r.groups, &mut out);
    }
    for m in &expect.multicast {
        check_multicast(report, m, &mut out);
    }
    for p in &expect.pools {
        let subject = format!("Pool {}", p.name);
        let Some(got) = report.pools.iter().find(|r| r.name == p.name) else {
            out.push(Failure::new(&subject, "a report of its usage", "none"));
            continue;
        };
        if let Some(used) = p.used.filter(|u| *u != got.used) {
            out.push(Failure::new(
                &subject,
                format!("{used} addresses used"),
                got.used.to_string(),
            ));
        }
        if let Some(total) = p.total.filter(|t| *t != got.total) {
            out.push(Failure::new(
                &subject,
                format!("{total} addresses in total"),
                got.total.to_string(),
            ));
        }
    }
    for r in &expect.rejected {
        let subject = format!("Object {}", r.object);
        let Some(got) = report
            .rejected
            .iter()
            .find(|x| x.object.same_object(&r.object))
        else {
            out.push(Failure::new(&subject, "to be rejected", "it was accepted"));
            continue;
        };
        if let Some(sub) = &r.reason_contains {
            if !contains_ignore_case(&got.reason, sub) {
                out.push(Failure::new(
                    &subject,
                    format!("a rejection reason containing {sub:?}"),
                    format!("{:?}", got.reason),
                ));
            }
        }
    }
    for got in &report.rejected {
        if !expect
            .rejected
            .iter()
            .any(|r| r.object.same_object(&got.object))
        {
            out.push(Failure::new(
                format!("Object {}", got.object),
                "to be accepted (it is not listed under `rejected`)",
                format!("it was rejected: {}", got.reason),
            ));
        }
    }
    out
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

fn check_pod(report: &Report, p: &PodExpect, out: &mut Vec<Failure>) {
    let subject = format!("Pod {}", p.pod);
    let Some(got) = report.pod(&p.pod) else {
        out.push(Failure::new(&subject, "a report of this Pod", "none"));
        return;
    };
    if let Some(ready) = p.ready {
        if ready != got.ready {
            let found = match (&got.reason, got.ready) {
                (_, true) => "ready".to_string(),
                (Some(r), false) => format!("not ready: {r}"),
                (None, false) => "not ready".to_string(),
            };
            out.push(Failure::new(
                &subject,
                if ready { "ready" } else { "not ready" },
                found,
            ));
        }
    }
    if let Some(sub) = &p.reason_contains {
        let expected = format!("a reason containing {sub:?}");
        match &got.reason {
            Some(r) if contains_ignore_case(r, sub) => {}
            Some(r) => out.push(Failure::new(&subject, expected, format!("{r:?}"))),
            None => out.push(Failure::new(&subject, expected, "no reason")),
        }
    }
    for itf in &p.interfaces {
        check_interface(got, itf, out);
    }
}

fn check_interface(pod: &PodReport, want: &InterfaceExpect, out: &mut Vec<Failure>) {
    let subject = format!("Interface {}", pod.pod.interface(&want.name));
    let Some(got) = pod.interface(&want.name) else {
        let names: Vec<&str> = pod.interfaces.iter().map(|i| i.name.as_str()).collect();
        let found = if names.is_empty() {
            "no interfaces".to_string()
        } else {
            format!("only {}", names.join(", "))
        };
        out.push(Failure::new(&subject, "the interface to exist", found));
        return;
    };
    if let Some(n) = want.network.as_ref().filter(|n| **n != got.network) {
        out.push(Failure::new(
            &subject,
            format!("network {n}"),
            format!("network {}", got.network),
        ));
    }
    if let Some(v) = want.vlan.filter(|v| *v != got.vlan) {
        out.push(Failure::new(
            &subject,
            format!("VLAN {v}"),
            format!("VLAN {}", got.vlan),
        ));
    }
    if let Some(m) = want.mtu.filter(|m| *m != got.mtu) {
        out.push(Failure::new(
            &subject,
            format!("MTU {m}"),
            format!("MTU {}", got.mtu),
        ));
    }
    if let Some(mac) = &want.mac {
        if !same_mac(mac, got.mac.as_deref()) {
            out.push(Failure::new(
                &subject,
                format!("MAC {mac}"),
                match &got.mac {
                    Some(m) => format!("MAC {m}"),
                    None => "no MAC".to_string(),
                },
            ));
        }
    }
    if let Some(ips) = &want.ips {
        let want_set: BTreeSet<&IpNet> = ips.iter().collect();
        let got_set: BTreeSet<&IpNet> = got.ips.iter().collect();
        if want_set != got_set || got.ips.len() != got_set.len() {
            out.push(Failure::new(
                &subject,
                format!("addresses {}", list(ips)),
                format!("addresses {}", list(&got.ips)),
            ));
        }
    }
    if let Some(pools) = &want.pools {
        if let Some(why) = pools_problem(pools, got) {
            out.push(Failure::new(
                &subject,
                format!(
                    "every address from one of the pools {} and each of them supplying one",
                    list(pools)
                ),
                why,
            ));
        }
    }
}

/// Why `got` does not satisfy "every address came from one of `pools`
/// and each of them supplied one", or `None` when it does.
fn pools_problem(pools: &[String], got: &InterfaceReport) -> Option<String> {
    let want: BTreeSet<&str> = pools.iter().map(String::as_str).collect();
    let from: BTreeSet<&str> = got.pools.iter().map(String::as_str).collect();
    let supplied = if got.pools.is_empty() {
        "no pool supplied an address".to_string()
    } else {
        format!("addresses from {}", list(&got.pools))
    };
    let foreign: Vec<&str> = from.difference(&want).copied().collect();
    if !foreign.is_empty() {
        return Some(format!(
            "{supplied}, of which {} is not listed",
            foreign.join(", ")
        ));
    }
    let idle: Vec<&str> = want.difference(&from).copied().collect();
    if !idle.is_empty() {
        return Some(format!("{supplied}; {} supplied none", idle.join(", ")));
    }
    if got.ips.len() > got.pools.len() {
        let n = got.ips.len() - got.pools.len();
        return Some(format!(
            "{supplied}, and {n} of its {} addresses came from no pool",
            got.ips.len()
        ));
    }
    if got.ips.len() < got.pools.len() {
        return Some(format!(
            "{supplied}, more pool entries than its {} addresses",
            got.ips.len()
        ));
    }
    None
}

fn same_mac(want: &Mac, got: Option<&str>) -> bool {
    match got {
        None => false,
        Some(g) => match g.parse::<Mac>() {
            Ok(m) => m == *want,
            Err(_) => g.eq_ignore_ascii_case(&want.to_string()),
        },
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "[]".to_string()
    } else {
        format!(
            "[{}]",
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn check_reachability(report: &Report, groups: &[Vec<InterfaceRef>], out: &mut Vec<Failure>) {
    let members: Vec<(usize, &InterfaceRef)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| group.iter().map(move |i| (g, i)))
        .collect();
    for &(ga, a) in &members {
        for &(gb, b) in &members {
            if a.pod == b.pod {
                continue;
            }
            let want = ga == gb;
            let subject = format!("Reachability {a} -> {b}");
            let expected = if want {
                "reached (same group)"
            } else {
                "not reached (different groups)"
            };
            match report.reached(a, b) {
                Some(got) if got == want => {}
                Some(got) => out.push(Failure::new(
                    subject,
                    expected,
                    if got { "reached" } else { "not reached" },
                )),
                None => out.push(Failure::new(subject, expected, "no measurement")),
            }
        }
    }
}

fn check_multicast(report: &Report, m: &MulticastExpect, out: &mut Vec<Failure>) {
    let subject = format!("Multicast {} from {}", m.group, m.sender);
    let Some(got) = report
        .multicast
        .iter()
        .find(|r| r.group == m.group && r.sender == m.sender)
    else {
        out.push(Failure::new(subject, "a measurement", "none"));
        return;
    };
    for member in &m.members {
        match got.received.get(member) {
            Some(n) if *n > 0 => {}
            Some(n) => out.push(Failure::new(
                format!("{subject} at {member}"),
                "packets (a member)",
                format!("{n} received"),
            )),
            None => out.push(Failure::new(
                format!("{subject} at {member}"),
                "packets (a member)",
                "no measurement",
            )),
        }
    }
    for non in &m.non_members {
        match got.received.get(non) {
            Some(0) => {}
            Some(n) => out.push(Failure::new(
                format!("{subject} at {non}"),
                "no packets (not a member)",
                format!("{n} received"),
            )),
            None => out.push(Failure::new(
                format!("{subject} at {non}"),
                "no packets (not a member)",
                "no measurement",
            )),
        }
    }
}

/// How two reports of one testbed (typically the simulator's and the
/// harness's) disagree, one sentence per difference; empty when they
/// agree.
///
/// Compared: the testbed name; the set of Pods and each Pod's node,
/// readiness and reason; each Pod's set of interfaces with their network,
/// VLAN, MTU and pools; reachability (the same pairs measured, with the
/// same results); multicast (the same group/sender entries and receivers,
/// each receiving or not: packet counts are timing); pools; rejected
/// objects and their reasons; whether the run passed.
///
/// Not compared: runner, seed, timings, the failure sentences themselves
/// (they quote addresses and MACs), MACs that `expect` does not pin, and
/// the exact addresses chosen from a pool. Addresses are compared exactly
/// when `expect` pins them (`ips`) or when a secondary interface got none
/// from a pool (they were asked for); otherwise, and always for the
/// primary `eth0` (whose addresses the runner's primary CNI picks), only
/// their number, families and prefix lengths.
pub fn compare_reports(a: &Report, b: &Report, expect: &Expect) -> Vec<String> {
    let mut out = Vec::new();
    let (na, nb) = (label(a, b, true), label(a, b, false));
    let mut differ = |what: String, va: &dyn fmt::Display, vb: &dyn fmt::Display| {
        out.push(format!("{what}: {na} says {va}, {nb} says {vb}"));
    };
    if a.testbed != b.testbed {
        differ("testbed".into(), &a.testbed, &b.testbed);
    }
    let pinned: BTreeMap<(String, String), &InterfaceExpect> = expect
        .pods
        .iter()
        .flat_map(|p| {
            p.interfaces
                .iter()
                .map(move |i| ((p.pod.to_string(), i.name.clone()), i))
        })
        .collect();
    let pods_a: BTreeMap<String, &PodReport> =
        a.pods.iter().map(|p| (p.pod.to_string(), p)).collect();
    let pods_b: BTreeMap<String, &PodReport> =
        b.pods.iter().map(|p| (p.pod.to_string(), p)).collect();
    for name in pods_a.keys().chain(pods_b.keys()).collect::<BTreeSet<_>>() {
        let (pa, pb) = match (pods_a.get(name), pods_b.get(name)) {
            (Some(pa), Some(pb)) => (*pa, *pb),
            (pa, _) => {
                differ(
                    format!("Pod {name}"),
                    &presence(pa.is_some()),
                    &presence(pa.is_none()),
                );
                continue;
            }
        };
        let subject = format!("Pod {name}");
        if pa.node != pb.node {
            differ(format!("{subject} node"), &opt(&pa.node), &opt(&pb.node));
        }
        if pa.ready != pb.ready {
            differ(format!("{subject} ready"), &pa.ready, &pb.ready);
        }
        if pa.reason != pb.reason {
            differ(
                format!("{subject} reason"),
                &quoted(&pa.reason),
                &quoted(&pb.reason),
            );
        }
        let ia: BTreeMap<&str, &InterfaceReport> =
            pa.interfaces.iter().map(|i| (i.name.as_str(), i)).collect();
        let ib: BTreeMap<&str, &InterfaceReport> =
            pb.interfaces.iter().map(|i| (i.name.as_str(), i)).collect();
        for ifname in ia.keys().chain(ib.keys()).collect::<BTreeSet<_>>() {
            let subject = format!("Interface {name}@{ifname}");
            let (x, y) = match (ia.get(ifname), ib.get(ifname)) {
                (Some(x), Some(y)) => (*x, *y),
                (x, _) => {
                    differ(subject, &presence(x.is_some()), &presence(x.is_none()));
                    continue;
                }
            };
            if x.network != y.network {
                differ(format!("{subject} network"), &x.network, &y.network);
            }
            if x.vlan != y.vlan {
                differ(format!("{subject} VLAN"), &x.vlan, &y.vlan);
            }
            if x.mtu != y.mtu {
                differ(format!("{subject} MTU"), &x.mtu, &y.mtu);
            }
            if sorted(&x.pools) != sorted(&y.pools) {
                differ(
                    format!("{subject} pools"),
                    &list(&sorted(&x.pools)),
                    &list(&sorted(&y.pools)),
                );
            }
            let want = pinned.get(&(name.clone(), ifname.to_string()));
            let mac_pinned = want.is_some_and(|w| w.mac.is_some());
            if mac_pinned && !same_mac_text(x.mac.as_deref(), y.mac.as_deref()) {
                differ(format!("{subject} MAC"), &opt(&x.mac), &opt(&y.mac));
            }
            let ips_pinned = want.is_some_and(|w| w.ips.is_some());
            // Addresses that came from no pool were asked for (static
            // addresses, `ips` of the selection) and must agree, except on
            // the primary interface, whose addresses the runner's primary
            // CNI picks from a range of its own.
            let exact = ips_pinned
                || (*ifname != PRIMARY_INTERFACE && x.pools.is_empty() && y.pools.is_empty());
            if exact {
                if sorted(&x.ips) != sorted(&y.ips) {
                    differ(
                        format!("{subject} addresses"),
                        &list(&sorted(&x.ips)),
                        &list(&sorted(&y.ips)),
                    );
                }
            } else if shapes(&x.ips) != shapes(&y.ips) {
                differ(
                    format!("{subject} address families and prefix lengths"),
                    &shapes(&x.ips).join(", "),
                    &shapes(&y.ips).join(", "),
                );
            }
        }
    }
    let pairs = |r: &Report| -> BTreeMap<(String, String), bool> {
        r.reachability
            .iter()
            .flat_map(|(from, tos)| {
                tos.iter()
                    .map(move |(to, ok)| ((from.to_string(), to.to_string()), *ok))
            })
            .collect()
    };
    let (ra, rb) = (pairs(a), pairs(b));
    for key in ra.keys().chain(rb.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (ra.get(key), rb.get(key));
        if x != y {
            differ(
                format!("Reachability {} -> {}", key.0, key.1),
                &reach(x),
                &reach(y),
            );
        }
    }
    let mc = |r: &Report| -> BTreeMap<(String, String), BTreeMap<String, bool>> {
        r.multicast
            .iter()
            .map(|m| {
                (
                    (m.group.to_string(), m.sender.to_string()),
                    m.received
                        .iter()
                        .map(|(i, n)| (i.to_string(), *n > 0))
                        .collect(),
                )
            })
            .collect()
    };
    let (ma, mb) = (mc(a), mc(b));
    for key in ma.keys().chain(mb.keys()).collect::<BTreeSet<_>>() {
        let subject = format!("Multicast {} from {}", key.0, key.1);
        let (Some(x), Some(y)) = (ma.get(key), mb.get(key)) else {
            differ(
                subject,
                &presence(ma.contains_key(key)),
                &presence(mb.contains_key(key)),
            );
            continue;
        };
        for recv in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
            let (p, q) = (x.get(recv), y.get(recv));
            if p != q {
                differ(format!("{subject} at {recv}"), &delivery(p), &delivery(q));
            }
        }
    }
    let pools = |r: &Report| -> BTreeMap<String, (u64, u64)> {
        r.pools
            .iter()
            .map(|p| (p.name.clone(), (p.used, p.total)))
            .collect()
    };
    let (pa, pb) = (pools(a), pools(b));
    for name in pa.keys().chain(pb.keys()).collect::<BTreeSet<_>>() {
        let show = |v: Option<&(u64, u64)>| match v {
            Some((used, total)) => format!("{used} of {total} used"),
            None => "nothing (not reported)".to_string(),
        };
        if pa.get(name) != pb.get(name) {
            differ(
                format!("Pool {name}"),
                &show(pa.get(name)),
                &show(pb.get(name)),
            );
        }
    }
    let rej = |r: &Report| -> BTreeMap<String, String> {
        r.rejected
            .iter()
            .map(|x| (x.object.to_string(), x.reason.clone()))
            .collect()
    };
    let (xa, xb) = (rej(a), rej(b));
    for obj in xa.keys().chain(xb.keys()).collect::<BTreeSet<_>>() {
        let show = |v: Option<&String>| match v {
            Some(reason) => format!("rejected ({reason:?})"),
            None => "accepted".to_string(),
        };
        if xa.get(obj) != xb.get(obj) {
            differ(
                format!("Object {obj}"),
                &show(xa.get(obj)),
                &show(xb.get(obj)),
            );
        }
    }
    if a.passed() != b.passed() {
        let verdict = |r: &Report| {
            if r.passed() {
                "PASS".to_string()
            } else {
                format!("FAIL ({} failed)", r.failures.len())
            }
        };
        differ("verdict".into(), &verdict(a), &verdict(b));
    }
    out
}

/// The interface the primary CNI gives every Pod.
const PRIMARY_INTERFACE: &str = "eth0";

/// `sim`/`hil`, or `first`/`second` when both reports come from the same
/// runner.
fn label(a: &Report, b: &Report, first: bool) -> String {
    if a.runner != b.runner {
        if first {
            a.runner.to_string()
        } else {
            b.runner.to_string()
        }
    } else {
        let r = if first { a.runner } else { b.runner };
        format!("{} ({r})", if first { "the first" } else { "the second" })
    }
}

fn presence(present: bool) -> &'static str {
    if present {
        "it exists"
    } else {
        "it does not exist"
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "nothing".to_string())
}

fn quoted(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "nothing".to_string(),
    }
}

fn reach(v: Option<&bool>) -> &'static str {
    match v {
        Some(true) => "reached",
        Some(false) => "not reached",
        None => "not measured",
    }
}

fn delivery(v: Option<&bool>) -> &'static str {
    match v {
        Some(true) => "received packets",
        Some(false) => "received none",
        None => "not measured",
    }
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// The families and prefix lengths of `ips`, sorted: `IPv4/24`.
fn shapes(ips: &[IpNet]) -> Vec<String> {
    let mut v: Vec<String> = ips
        .iter()
        .map(|n| match n {
            IpNet::V4(_) => format!("IPv4/{}", n.prefix_len()),
            IpNet::V6(_) => format!("IPv6/{}", n.prefix_len()),
        })
        .collect();
    v.sort();
    v
}

fn same_mac_text(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => match (x.parse::<Mac>(), y.parse::<Mac>()) {
            (Ok(p), Ok(q)) => p == q,
            _ => x.eq_ignore_ascii_case(y),
        },
        (None, None) => true,
        _ => false,
    }
}
