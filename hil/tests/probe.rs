//! The probes against real namespaces, veths and Linux bridges (root
//! only). Every namespace a test makes is removed by a guard, also when
//! the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use spur_hil::probe::{
    self, Endpoint, MulticastProbe, PingOptions, ProbeError, SnoopingSwitch, SwitchKind,
};
use spur_testbed::InterfaceRef;

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces removed on drop.
struct Netns(Vec<String>);

impl Netns {
    fn new(test: &str, names: &[&str]) -> Netns {
        let all: Vec<String> = names
            .iter()
            .map(|n| format!("h5p-{}-{test}-{n}", std::process::id()))
            .collect();
        for n in &all {
            ip(&format!("netns add {n}"));
            ip(&format!("-n {n} link set lo up"));
        }
        Netns(all)
    }

    fn get(&self, short: &str) -> &str {
        self.0
            .iter()
            .find(|n| n.ends_with(&format!("-{short}")))
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A Linux bridge `br0` in namespace `sw` with snooping as given. A
/// snooping bridge is its own IGMP querier: without a querier it floods
/// every group, and it starts acting as one a query response interval
/// after the querier is turned on (set to 100 ms first: with the default,
/// 10 s).
fn bridge(sw: &str, snooping: bool) {
    let s = u8::from(snooping);
    ip(&format!(
        "-n {sw} link add br0 type bridge mcast_snooping {s} mcast_query_response_interval 10"
    ));
    ip(&format!(
        "-n {sw} link set br0 type bridge mcast_querier {s}"
    ));
    ip(&format!("-n {sw} link set br0 up"));
}

/// A Pod-like namespace `pod` with `eth1` plugged into `br0` of `sw`
/// (port `port`), carrying `addrs` (IPv6 without DAD).
fn plug(sw: &str, port: &str, pod: &str, addrs: &[&str]) {
    ip(&format!(
        "-n {sw} link add {port} type veth peer name eth1 netns {pod}"
    ));
    ip(&format!("-n {sw} link set {port} master br0 up"));
    ip(&format!("-n {pod} link set eth1 up"));
    for a in addrs {
        if a.contains(':') {
            ip(&format!("-n {pod} -6 addr add {a} dev eth1 nodad"));
        } else {
            ip(&format!("-n {pod} addr add {a} dev eth1"));
        }
    }
}

fn endpoint(pod: &str, netns: &str, addrs: &[&str]) -> Endpoint {
    Endpoint {
        id: format!("default/{pod}@eth1")
            .parse::<InterfaceRef>()
            .unwrap(),
        netns: netns.to_string(),
        ifname: "eth1".to_string(),
        ips: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

#[test]
fn inspect_reads_the_real_interface() {
    let ns = Netns::new("inspect", &["sw", "a"]);
    bridge(ns.get("sw"), false);
    plug(
        ns.get("sw"),
        "pa",
        ns.get("a"),
        &["10.61.0.1/24", "fd00:61::1/64"],
    );
    ip(&format!("-n {} link set eth1 mtu 1400", ns.get("a")));
    let facts = probe::inspect(ns.get("a"), "eth1").unwrap().unwrap();
    assert_eq!(facts.name, "eth1");
    assert_eq!(facts.mtu, 1400);
    assert_eq!(facts.mac.len(), 17, "{}", facts.mac);
    // Global addresses only: the fe80:: one is left out.
    assert_eq!(
        facts.ips,
        vec![
            "10.61.0.1/24".parse().unwrap(),
            "fd00:61::1/64".parse().unwrap()
        ]
    );
    assert_eq!(probe::inspect(ns.get("a"), "eth7").unwrap(), None);
    let e = probe::inspect("h5p-no-such-netns", "eth1").unwrap_err();
    assert!(matches!(e, ProbeError::Command { .. }), "{e:?}");
    assert!(e.to_string().contains("h5p-no-such-netns"), "{e}");
}

#[test]
fn reachability_positive_and_negative() {
    let ns = Netns::new("reach", &["sw", "a", "b"]);
    bridge(ns.get("sw"), false);
    let a_ips = ["10.62.0.1/24", "fd00:62::1/64"];
    let b_ips = ["10.62.0.2/24", "fd00:62::2/64"];
    plug(ns.get("sw"), "pa", ns.get("a"), &a_ips);
    plug(ns.get("sw"), "pb", ns.get("b"), &b_ips);
    let a = endpoint("a", ns.get("a"), &a_ips);
    let b = endpoint("b", ns.get("b"), &b_ips);
    // Nobody has these addresses: ARP and ND go unanswered.
    let ghost = endpoint("ghost", ns.get("b"), &["10.62.0.99/24", "fd00:62::99/64"]);
    let b_v4_only = endpoint("b", ns.get("b"), &["10.62.0.2/24"]);
    let v6_only = endpoint("a", ns.get("a"), &["fd00:62::1/64"]);
    let opts = PingOptions {
        deadline: Duration::from_secs(2),
        ..PingOptions::default()
    };
    let start = Instant::now();
    let got = probe::reachability_with(
        &[
            (a.clone(), b.clone()),
            (b.clone(), a.clone()),
            (a.clone(), ghost),
            (a.clone(), b_v4_only),
            // No family in common: nothing is reached.
            (v6_only, endpoint("b", ns.get("b"), &["10.62.0.2/24"])),
        ],
        &opts,
    );
    assert_eq!(got, vec![true, true, false, true, false]);
    // Negatives are bounded by the deadline, in parallel.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    // The default options agree on a positive.
    assert_eq!(probe::reachability(&[(a, b)]), vec![true]);
}

#[test]
fn multicast_members_and_non_members() {
    let ns = Netns::new("mcast", &["swf", "sws", "fs", "fm", "fn", "ss", "sm", "sn"]);
    // A bridge that floods (snooping off) and one that snoops IGMP (with
    // its own querier, so unregistered groups stop flooding once learned).
    bridge(ns.get("swf"), false);
    bridge(ns.get("sws"), true);
    let f = |n: &str| ns.get(n).to_string();
    let fs_ips = ["10.63.0.1/24", "fd00:63::1/64"];
    let fm_ips = ["10.63.0.2/24", "fd00:63::2/64"];
    let fn_ips = ["10.63.0.3/24", "fd00:63::3/64"];
    plug(&f("swf"), "ps", &f("fs"), &fs_ips);
    plug(&f("swf"), "pm", &f("fm"), &fm_ips);
    plug(&f("swf"), "pn", &f("fn"), &fn_ips);
    let ss_ips = ["10.64.0.1/24"];
    let sm_ips = ["10.64.0.2/24"];
    let sn_ips = ["10.64.0.3/24"];
    plug(&f("sws"), "ps", &f("ss"), &ss_ips);
    plug(&f("sws"), "pm", &f("sm"), &sm_ips);
    plug(&f("sws"), "pn", &f("sn"), &sn_ips);
    let probe_cfg = MulticastProbe {
        switches: vec![
            SnoopingSwitch {
                netns: f("sws"),
                bridge: "br0".into(),
                kind: SwitchKind::Linux,
                uplinks: vec![],
            },
            // Snooping off: skipped by the learn-wait.
            SnoopingSwitch {
                netns: f("swf"),
                bridge: "br0".into(),
                kind: SwitchKind::Linux,
                uplinks: vec![],
            },
        ],
        ..MulticastProbe::default()
    };

    // Flooding bridge: the non-member sees every frame at L2, for IPv4
    // and IPv6 groups alike.
    let (fs, fm, fnm) = (
        endpoint("fs", &f("fs"), &fs_ips),
        endpoint("fm", &f("fm"), &fm_ips),
        endpoint("fn", &f("fn"), &fn_ips),
    );
    for group in ["239.2.2.2", "ff0e::1:2"] {
        let group: IpAddr = group.parse().unwrap();
        let r = probe::multicast(
            group,
            &fs,
            std::slice::from_ref(&fm),
            std::slice::from_ref(&fnm),
            &probe_cfg,
        )
        .unwrap();
        assert_eq!(r.received.get(&fm.id), Some(&10), "{group}: {r:?}");
        assert_eq!(r.received.get(&fnm.id), Some(&10), "{group}: {r:?}");
    }

    // Snooping bridge (its querier was turned on more than a second ago,
    // during the flooding cases, so it is active): once the learn-wait saw the member's port in the bridge's
    // mdb, the member gets all 10 and the non-member nothing.
    let group: IpAddr = "239.1.1.1".parse().unwrap();
    let (ss, sm, sn) = (
        endpoint("ss", &f("ss"), &ss_ips),
        endpoint("sm", &f("sm"), &sm_ips),
        endpoint("sn", &f("sn"), &sn_ips),
    );
    let r = probe::multicast(
        group,
        &ss,
        std::slice::from_ref(&sm),
        std::slice::from_ref(&sn),
        &probe_cfg,
    )
    .unwrap();
    assert_eq!(r.group, group);
    assert_eq!(r.sender, ss.id);
    assert_eq!(r.received.get(&sm.id), Some(&10), "{r:?}");
    assert_eq!(r.received.get(&sn.id), Some(&0), "{r:?}");

    // A member without an address of the group's family cannot join.
    let e = probe::multicast(
        "239.3.3.3".parse().unwrap(),
        &fs,
        &[endpoint("fm", &f("fm"), &["fd00:63::2/64"])],
        &[],
        &probe_cfg,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no IPv4 address"), "{e}");
    // Not a group address.
    let e = probe::multicast("10.0.0.1".parse().unwrap(), &fs, &[], &[], &probe_cfg).unwrap_err();
    assert!(e.to_string().contains("not a multicast group"), "{e}");
}

/// A userspace Open vSwitch (ovsdb-server and ovs-vswitchd, netdev
/// datapath) inside a namespace; both daemons are stopped (by the pids
/// they wrote) on drop.
struct Ovs {
    dir: tempfile::TempDir,
}

impl Ovs {
    fn start(netns: &str) -> Ovs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let run = |args: &[&str], in_ns: bool| {
            let mut c = if in_ns {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).args(args);
                c
            } else {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            };
            let out = c
                .env("OVS_RUNDIR", &d)
                .env("OVS_LOGDIR", &d)
                .env("OVS_DBDIR", &d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ovs = Ovs { dir };
        run(
            &[
                "ovsdb-tool",
                "create",
                &format!("{d}/conf.db"),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
            false,
        );
        run(
            &[
                "ovsdb-server",
                &format!("{d}/conf.db"),
                &format!("--remote=punix:{d}/db.sock"),
                &format!("--pidfile={d}/ovsdb-server.pid"),
                &format!("--log-file={d}/ovsdb-server.log"),
                "--detach",
            ],
            true,
        );
        run(&["ovs-vsctl", &ovs.db(), "--no-wait", "init"], false);
        run(
            &[
                "ovs-vswitchd",
                &format!("unix:{d}/db.sock"),
                &format!("--pidfile={d}/ovs-vswitchd.pid"),
                &format!("--log-file={d}/ovs-vswitchd.log"),
                "--detach",
            ],
            true,
        );
        ovs
    }

    fn db(&self) -> String {
        format!("--db=unix:{}", self.db_sock().display())
    }

    fn db_sock(&self) -> std::path::PathBuf {
        self.dir.path().join("db.sock")
    }

    fn pid(&self, daemon: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{daemon}.pid")))
            .ok()
            .map(|p| p.trim().to_string())
    }

    fn vswitchd_ctl(&self) -> std::path::PathBuf {
        let pid = self.pid("ovs-vswitchd").unwrap();
        self.dir.path().join(format!("ovs-vswitchd.{pid}.ctl"))
    }

    fn vsctl(&self, args: &str) {
        let out = Command::new("ovs-vsctl")
            .arg(self.db())
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ovs-vsctl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for daemon in ["ovs-vswitchd", "ovsdb-server"] {
            if let Some(pid) = self.pid(daemon) {
                let _ = Command::new("kill").arg(&pid).status();
            }
        }
    }
}

#[test]
fn multicast_and_access_ports_on_userspace_ovs() {
    let ns = Netns::new("ovs", &["sw", "s", "m", "n"]);
    let sw = ns.get("sw").to_string();
    let ovs = Ovs::start(&sw);
    ovs.vsctl("add-br br0 -- set bridge br0 datapath_type=netdev mcast_snooping_enable=true");
    let mut eps = Vec::new();
    for (pod, addr) in [
        ("s", "10.65.0.1/24"),
        ("m", "10.65.0.2/24"),
        ("n", "10.65.0.3/24"),
    ] {
        let pod_ns = ns.get(pod).to_string();
        let port = format!("p{pod}");
        ip(&format!(
            "-n {sw} link add {port} type veth peer name eth1 netns {pod_ns}"
        ));
        ip(&format!("-n {sw} link set {port} up"));
        ip(&format!("-n {pod_ns} link set eth1 up"));
        ip(&format!("-n {pod_ns} addr add {addr} dev eth1"));
        // The userspace datapath does not finish partial UDP checksums.
        let out = Command::new("ip")
            .args([
                "netns", "exec", &pod_ns, "ethtool", "-K", "eth1", "tx", "off",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ovs.vsctl(&format!(
            "add-port br0 {port} tag=100 -- set port {port} external_ids:spur.dev/role=access \
             external_ids:spur.dev/pod-namespace=default external_ids:spur.dev/pod-name={pod} \
             external_ids:spur.dev/interface=eth1"
        ));
        eps.push(endpoint(pod, &pod_ns, &[addr]));
    }
    // A port without Spur's role is not an access port.
    ip(&format!("-n {sw} link add up0 type veth peer name up0p"));
    ovs.vsctl("add-port br0 up0");

    let mut ports = probe::access_ports(&sw, &ovs.db_sock()).unwrap();
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["pm", "pn", "ps"]);
    assert!(ports.iter().all(|p| p.tag == 100));
    assert!(ports[0].serves(&eps[1].id));
    assert_eq!(ports[0].interface(), Some("eth1"));

    let cfg = MulticastProbe {
        switches: vec![SnoopingSwitch {
            netns: sw.clone(),
            bridge: "br0".into(),
            kind: SwitchKind::Ovs {
                vswitchd_ctl: ovs.vswitchd_ctl(),
                ovsdb_socket: ovs.db_sock(),
            },
            uplinks: vec!["up0".into()],
        }],
        ..MulticastProbe::default()
    };
    let (s, m, n) = (&eps[0], &eps[1], &eps[2]);
    // Snooping on: the learn-wait sees the member's port in mdb/show, then
    // only the member receives.
    let r = probe::multicast(
        "239.4.4.4".parse().unwrap(),
        s,
        std::slice::from_ref(m),
        std::slice::from_ref(n),
        &cfg,
    )
    .unwrap();
    assert_eq!(r.received.get(&m.id), Some(&10), "{r:?}");
    assert_eq!(r.received.get(&n.id), Some(&0), "{r:?}");
    // Snooping off: mdb/show refuses, the wait is skipped, the bridge
    // floods.
    ovs.vsctl("set bridge br0 mcast_snooping_enable=false");
    let r = probe::multicast(
        "239.4.4.5".parse().unwrap(),
        s,
        std::slice::from_ref(m),
        std::slice::from_ref(n),
        &cfg,
    )
    .unwrap();
    assert_eq!(r.received.get(&m.id), Some(&10), "{r:?}");
    assert_eq!(r.received.get(&n.id), Some(&10), "{r:?}");
}
