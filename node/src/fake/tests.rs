//! The fakes' own tests: fault points and the partial state each leaves,
//! simulated latency, reboot semantics, foreign links, snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ipnet::IpNet;

use super::*;
use crate::netdev::{PodLinks, RouteSpec, VethSpec};
use crate::ovsdb::{BridgeSpec, Switch, SwitchError};

/// Records every point; fails the ones `fail` selects; never answers at
/// the ones `hang` selects; sleeps `delay` at each.
#[derive(Default)]
struct Hook {
    seen: Mutex<Vec<FaultPoint>>,
    fail: Mutex<Vec<(Op, Step)>>,
    hang: Mutex<Option<(Op, Step)>>,
    delay: Duration,
}

impl Hook {
    fn failing(points: &[(Op, Step)]) -> Arc<Hook> {
        let h = Hook::default();
        *h.fail.lock().unwrap() = points.to_vec();
        Arc::new(h)
    }

    fn seen(&self) -> Vec<(Op, Step)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.op, p.step))
            .collect()
    }
}

impl FaultHook for Hook {
    fn at<'a>(&'a self, point: &'a FaultPoint) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(point.clone());
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let key = (point.op, point.step);
            if *self.hang.lock().unwrap() == Some(key) {
                std::future::pending::<()>().await;
            }
            if self.fail.lock().unwrap().contains(&key) {
                return Err("boom".into());
            }
            Ok(())
        })
    }
}

const NS: &str = "/run/netns/p1";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn spec() -> VethSpec {
    VethSpec {
        host_name: "veth1".into(),
        netns: PathBuf::from(NS),
        ifname: "eth1".into(),
        mtu: 1400,
        mac: [0x0a, 0x58, 10, 10, 1, 5],
        addresses: vec![net("10.10.1.5/24")],
        routes: vec![RouteSpec {
            dst: net("0.0.0.0/0"),
            gw: Some("10.10.1.1".parse().unwrap()),
        }],
        tx_checksum_off: true,
        announce: true,
    }
}

fn links() -> FakeLinks {
    let l = FakeLinks::new();
    l.add_netns(Path::new(NS));
    l
}

fn bridge(uplinks: &[&str]) -> BridgeSpec {
    BridgeSpec {
        name: "br-sec".into(),
        datapath_type: "netdev".into(),
        uplinks: uplinks.iter().map(|s| s.to_string()).collect(),
        mcast_snooping: true,
    }
}

fn ids(pod: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("spur.dev/pod-name".to_string(), pod.to_string())])
}

#[tokio::test(start_paused = true)]
async fn create_veth_passes_its_points_in_order() {
    let l = links();
    let hook = Arc::new(Hook::default());
    l.set_fault_hook(Some(hook.clone()));
    let created = l.create_veth(&spec()).await.unwrap();
    assert_eq!(
        hook.seen(),
        [
            (Op::CreateVeth, Step::Start),
            (Op::CreateVeth, Step::Configure),
            (Op::CreateVeth, Step::BringUp),
        ]
    );
    let p = hook.seen.lock().unwrap()[1].clone();
    assert_eq!(p.backend, Backend::Links);
    assert_eq!(
        p.to_string(),
        "links/create_veth/configure netns=/run/netns/p1 ifname=eth1 host=veth1"
    );
    let pod = l.pod_link(Path::new(NS), "eth1").unwrap();
    assert!(pod.up);
    assert_eq!(pod.addresses, spec().addresses);
    assert_eq!(pod.routes, spec().routes);
    assert_eq!(
        pod.kind,
        LinkKind::Veth {
            host: "veth1".into()
        }
    );
    assert_eq!(l.host_end("veth1").unwrap().index, created.host_index);
    let st = l
        .inspect_pod_link(Path::new(NS), "eth1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.peer_index, Some(created.host_index));
    assert!(st.is_veth && st.up);
}

#[tokio::test(start_paused = true)]
async fn create_veth_failure_at_each_point_rolls_back() {
    for step in [Step::Start, Step::Configure, Step::BringUp] {
        let l = links();
        let hook = Hook::failing(&[(Op::CreateVeth, step)]);
        l.set_fault_hook(Some(hook.clone()));
        let e = l.create_veth(&spec()).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "injected fault at links/create_veth/{}",
                step.name()
            )),
            "{text}"
        );
        assert!(text.ends_with(": boom"), "{text}");
        // Nothing is left: the real implementation deletes the pair.
        assert!(l.host_links().is_empty(), "{step:?}");
        assert!(l.pod_link(Path::new(NS), "eth1").is_none(), "{step:?}");
        let rolled_back = hook.seen().contains(&(Op::CreateVeth, Step::Rollback));
        assert_eq!(rolled_back, step != Step::Start, "{step:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_rollback_leaves_the_half_made_pair() {
    for (step, addresses) in [(Step::Configure, false), (Step::BringUp, true)] {
        let l = links();
        l.set_fault_hook(Some(Hook::failing(&[
            (Op::CreateVeth, step),
            (Op::CreateVeth, Step::Rollback),
        ])));
        let e = l.create_veth(&spec()).await.unwrap_err();
        // The step's error, not the rollback's.
        assert!(e.to_string().contains(step.name()), "{e}");
        let pod = l.pod_link(Path::new(NS), "eth1").unwrap();
        assert!(!pod.up, "{step:?}");
        assert_eq!(pod.addresses.is_empty(), !addresses, "{step:?}");
        assert!(pod.routes.is_empty());
        assert_eq!(pod.mtu, 1400);
        let host = l.host_end("veth1").unwrap();
        assert!(host.up);
        assert_eq!(l.host_links(), ["veth1"]);
        // What the agent's rollback or sweep does removes it.
        l.set_fault_hook(None);
        assert!(l.delete_host_link("veth1").await.unwrap());
        assert_eq!(l.snapshot().netns[Path::new(NS)].len(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_create_leaves_the_state_of_that_moment() {
    for (step, pair, addresses) in [
        (Step::Start, false, false),
        (Step::Configure, true, false),
        (Step::BringUp, true, true),
    ] {
        let l = links();
        let hook = Arc::new(Hook::default());
        *hook.hang.lock().unwrap() = Some((Op::CreateVeth, step));
        l.set_fault_hook(Some(hook));
        let s = spec();
        let r = tokio::time::timeout(Duration::from_secs(5), l.create_veth(&s)).await;
        assert!(r.is_err(), "the hook never answers");
        let pod = l.pod_link(Path::new(NS), "eth1");
        assert_eq!(pod.is_some(), pair, "{step:?}");
        assert_eq!(l.host_links().len(), usize::from(pair));
        if let Some(pod) = pod {
            assert!(!pod.up);
            assert_eq!(pod.addresses.is_empty(), !addresses);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_netns_gone_mid_create_fails_the_create() {
    let l = Arc::new(links());
    let hook = Arc::new(Hook {
        delay: Duration::from_millis(10),
        ..Hook::default()
    });
    l.set_fault_hook(Some(hook));
    let task = {
        let l = l.clone();
        tokio::spawn(async move { l.create_veth(&spec()).await })
    };
    // After Start (10 ms) the pair exists; the sandbox dies during
    // Configure's delay.
    tokio::time::sleep(Duration::from_millis(15)).await;
    assert_eq!(l.host_links(), ["veth1"]);
    l.remove_netns(Path::new(NS));
    assert!(l.host_links().is_empty(), "the host end goes with its peer");
    let e = task.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("ENODEV"), "{e}");
    assert!(l.snapshot().hosts.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_sleeping_hook_delays_by_exactly_its_time() {
    let l = links();
    let sw = FakeSwitch::new();
    let hook = Arc::new(Hook {
        delay: Duration::from_millis(250),
        ..Hook::default()
    });
    l.set_fault_hook(Some(hook.clone()));
    sw.set_fault_hook(Some(hook.clone()));
    let t0 = tokio::time::Instant::now();
    l.create_veth(&spec()).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(750)); // 3 points
    let t0 = tokio::time::Instant::now();
    sw.ensure_bridge(&bridge(&[])).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(500)); // Start, Reply
    let t0 = tokio::time::Instant::now();
    sw.list_bridges().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
    // Without a hook, no time passes.
    sw.set_fault_hook(None);
    let t0 = tokio::time::Instant::now();
    sw.list_ports("br-sec").await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn every_links_operation_consults_the_hook_at_start() {
    let l = links();
    l.create_veth(&spec()).await.unwrap();
    let hook = Arc::new(Hook::default());
    *hook.fail.lock().unwrap() = vec![
        (Op::DeleteHostLink, Step::Start),
        (Op::DeletePodLink, Step::Start),
        (Op::InspectPodLink, Step::Start),
        (Op::HostLink, Step::Start),
        (Op::HostAddresses, Step::Start),
    ];
    l.set_fault_hook(Some(hook.clone()));
    let ns = Path::new(NS);
    assert!(l.delete_host_link("veth1").await.is_err());
    assert!(l.delete_pod_link(ns, "eth1").await.is_err());
    assert!(l.inspect_pod_link(ns, "eth1").await.is_err());
    assert!(l.host_link("veth1").await.is_err());
    assert!(l.host_addresses("veth1").await.is_err());
    assert_eq!(hook.seen().len(), 5);
    assert_eq!(l.host_links(), ["veth1"], "a failed delete deletes nothing");
    let subjects: Vec<Subject> = hook
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.subject.clone())
        .collect();
    assert_eq!(subjects[0].ifname.as_deref(), Some("veth1"));
    assert_eq!(subjects[1].netns.as_deref(), Some(ns));
}

#[tokio::test(start_paused = true)]
async fn switch_points_and_partial_state() {
    let sw = FakeSwitch::new();
    sw.ensure_bridge(&bridge(&["eth1"])).await.unwrap();
    // Start: nothing changes.
    sw.set_fault_hook(Some(Hook::failing(&[(Op::AddAccessPort, Step::Start)])));
    let e = sw
        .add_access_port("br-sec", "veth1", 100, ids("a"))
        .await
        .unwrap_err();
    assert!(matches!(e, SwitchError::Backend(_)));
    assert!(
        e.to_string()
            .starts_with("injected fault at switch/add_access_port/start bridge=br-sec port=veth1"),
        "{e}"
    );
    assert!(sw.port("veth1").is_none());
    // Reply: the transaction committed, its answer was lost.
    sw.set_fault_hook(Some(Hook::failing(&[
        (Op::AddAccessPort, Step::Reply),
        (Op::RemovePort, Step::Reply),
        (Op::EnsureBridge, Step::Reply),
    ])));
    sw.add_access_port("br-sec", "veth1", 100, ids("a"))
        .await
        .unwrap_err();
    assert_eq!(sw.port("veth1").unwrap().1.tag, 100);
    sw.remove_port("br-sec", "veth1").await.unwrap_err();
    assert!(sw.port("veth1").is_none());
    sw.ensure_bridge(&bridge(&["eth2"])).await.unwrap_err();
    assert_eq!(sw.bridges()["br-sec"].uplinks, ["eth2"]);
    // Reads fail at Start.
    sw.set_fault_hook(Some(Hook::failing(&[
        (Op::ListPorts, Step::Start),
        (Op::ListBridges, Step::Start),
        (Op::EnsureBridge, Step::Start),
        (Op::RemovePort, Step::Start),
    ])));
    assert!(sw.list_ports("br-sec").await.is_err());
    assert!(sw.list_bridges().await.is_err());
    sw.ensure_bridge(&bridge(&[])).await.unwrap_err();
    assert_eq!(sw.bridges()["br-sec"].uplinks, ["eth2"], "unchanged");
}

#[tokio::test(start_paused = true)]
async fn bridges_have_local_and_uplink_ports() {
    let sw = FakeSwitch::new();
    sw.ensure_bridge(&bridge(&["eth1", "eth2", "eth1"]))
        .await
        .unwrap();
    sw.add_access_port("br-sec", "veth1", 100, ids("a"))
        .await
        .unwrap();
    let ports = sw.list_ports("br-sec").await.unwrap();
    let roles: Vec<(&str, &str)> = ports
        .iter()
        .map(|p| (p.name.as_str(), p.external_ids["spur.dev/role"].as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("br-sec", "local"),
            ("eth1", "uplink"),
            ("eth2", "uplink"),
            ("veth1", "access")
        ]
    );
    // Uplinks no longer wanted go; others stay.
    sw.ensure_bridge(&bridge(&["eth2"])).await.unwrap();
    let names: Vec<String> = sw
        .list_ports("br-sec")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["br-sec", "eth2", "veth1"]);
    // An access port updated in place keeps its OpenFlow port.
    let before = sw.port("veth1").unwrap().1.ofport;
    sw.add_access_port("br-sec", "veth1", 101, ids("b"))
        .await
        .unwrap();
    let (_, p) = sw.port("veth1").unwrap();
    assert_eq!((p.tag, p.ofport), (101, before));
    assert_eq!(p.external_ids["spur.dev/pod-name"], "b");
    // Names Spur does not own are refused.
    let e = sw
        .add_access_port("br-sec", "eth2", 5, ids("c"))
        .await
        .unwrap_err();
    assert!(matches!(e, SwitchError::PortConflict { .. }), "{e}");
    let other = BridgeSpec {
        name: "br-other".into(),
        ..bridge(&["veth1"])
    };
    let e = sw.ensure_bridge(&other).await.unwrap_err();
    assert!(matches!(e, SwitchError::PortConflict { .. }), "{e}");
    assert!(!sw.bridges().contains_key("br-other"), "all or nothing");
    let e = sw
        .add_access_port("br-nope", "veth9", 5, ids("c"))
        .await
        .unwrap_err();
    assert!(matches!(e, SwitchError::NoSuchBridge(_)), "{e}");
    // A port is removed only from its own bridge.
    sw.ensure_bridge(&BridgeSpec {
        name: "br-other".into(),
        ..bridge(&[])
    })
    .await
    .unwrap();
    assert!(!sw.remove_port("br-other", "veth1").await.unwrap());
    assert!(sw.remove_port("br-sec", "veth1").await.unwrap());
    assert!(!sw.remove_port("br-sec", "veth1").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn fail_port_and_fail_create_still_work() {
    let sw = FakeSwitch::new();
    sw.ensure_bridge(&bridge(&[])).await.unwrap();
    sw.fail_port("veth1");
    sw.add_access_port("br-sec", "veth1", 1, ids("a"))
        .await
        .unwrap_err();
    assert_eq!(sw.port_count(), 1, "only the local port");
    sw.unfail_port("veth1");
    sw.add_access_port("br-sec", "veth1", 1, ids("a"))
        .await
        .unwrap();
    let l = links();
    l.fail_create("eth1");
    l.create_veth(&spec()).await.unwrap_err();
    assert!(l.host_links().is_empty());
    l.unfail_create("eth1");
    l.create_veth(&spec()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn wipe_and_reboot() {
    let sw = FakeSwitch::new();
    sw.ensure_bridge(&bridge(&["eth1"])).await.unwrap();
    sw.add_access_port("br-sec", "veth1", 100, ids("a"))
        .await
        .unwrap();
    sw.wipe();
    assert_eq!(sw.snapshot(), SwitchSnapshot::default());
    assert!(sw.list_bridges().await.unwrap().is_empty());
    assert!(matches!(
        sw.list_ports("br-sec").await,
        Err(SwitchError::NoSuchBridge(_))
    ));
    // The same names can be used again.
    sw.ensure_bridge(&bridge(&["eth1"])).await.unwrap();
    sw.add_access_port("br-sec", "veth1", 100, ids("a"))
        .await
        .unwrap();

    let l = links();
    l.add_nic("eth1", &[net("192.168.1.10/24")]);
    l.create_veth(&spec()).await.unwrap();
    l.add_foreign_link(
        Path::new(NS),
        "eth0",
        ForeignLink {
            kind: LinkKind::Primary,
            mtu: 1500,
            mac: [2, 0, 0, 0, 0, 1],
            addresses: vec![net("10.244.0.5/24")],
        },
    )
    .unwrap();
    let nics = l.snapshot().nics;
    l.reboot();
    let snap = l.snapshot();
    assert!(snap.netns.is_empty() && snap.hosts.is_empty());
    assert_eq!(snap.nics, nics, "NICs stay with their addresses");
    assert_eq!(
        l.host_addresses("eth1").await.unwrap(),
        Some(vec![net("192.168.1.10/24")])
    );
    assert!(matches!(
        l.inspect_pod_link(Path::new(NS), "eth1").await,
        Err(crate::netdev::NetdevError::NetnsNotFound { .. })
    ));
    assert!(!l.delete_pod_link(Path::new(NS), "eth1").await.unwrap());
    assert!(!l.delete_host_link("veth1").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn foreign_links_show_and_go_with_their_netns() {
    let l = links();
    let ns = Path::new(NS);
    let primary = ForeignLink {
        kind: LinkKind::Primary,
        mtu: 1450,
        mac: [2, 0, 0, 0, 0, 1],
        addresses: vec![net("10.244.0.5/24")],
    };
    l.add_foreign_link(ns, "eth0", primary.clone()).unwrap();
    let macvlan = ForeignLink {
        kind: LinkKind::Macvlan {
            parent: "eth2".into(),
        },
        mtu: 1500,
        mac: [2, 0, 0, 0, 0, 2],
        addresses: vec![net("192.168.5.7/24")],
    };
    // The parent must exist.
    assert!(l.add_foreign_link(ns, "net1", macvlan.clone()).is_err());
    l.add_nic("eth2", &[]);
    l.add_foreign_link(ns, "net1", macvlan).unwrap();
    // Names are per netns; Spur's veth kind is refused; a missing netns too.
    assert!(l
        .add_foreign_link(ns, "eth0", primary.clone())
        .unwrap_err()
        .is_exists());
    let veth = ForeignLink {
        kind: LinkKind::Veth { host: "x".into() },
        ..primary.clone()
    };
    assert!(l.add_foreign_link(ns, "eth5", veth).is_err());
    assert!(l
        .add_foreign_link(Path::new("/run/netns/none"), "eth0", primary)
        .is_err());
    // Spur's create_veth sees the name taken.
    let mut s = spec();
    s.ifname = "eth0".into();
    assert!(l.create_veth(&s).await.unwrap_err().is_exists());
    let st = l.inspect_pod_link(ns, "eth0").await.unwrap().unwrap();
    assert_eq!(
        (st.mtu, st.up, st.addresses.clone()),
        (1450, true, vec![net("10.244.0.5/24")])
    );
    assert_eq!(st.peer_index, None);
    let st = l.inspect_pod_link(ns, "net1").await.unwrap().unwrap();
    assert!(!st.is_veth);
    assert_eq!(
        l.pod_link(ns, "net1").unwrap().kind,
        LinkKind::Macvlan {
            parent: "eth2".into()
        }
    );
    l.create_veth(&spec()).await.unwrap();
    // remove_foreign_link leaves Spur's veth alone.
    assert!(!l.remove_foreign_link(ns, "eth1"));
    assert!(l.remove_foreign_link(ns, "net1"));
    assert!(!l.remove_foreign_link(ns, "net1"));
    assert_eq!(l.snapshot().netns[ns].len(), 2);
    l.remove_netns(ns);
    let snap = l.snapshot();
    assert!(snap.netns.is_empty() && snap.hosts.is_empty());
}

#[tokio::test(start_paused = true)]
async fn snapshots_hold_everything() {
    let sw = FakeSwitch::new();
    sw.ensure_bridge(&bridge(&["eth1"])).await.unwrap();
    sw.add_access_port("br-sec", "veth1", 100, ids("a"))
        .await
        .unwrap();
    let snap = sw.snapshot();
    assert_eq!(snap, sw.snapshot());
    let b = &snap.bridges["br-sec"];
    assert_eq!(b.spec, bridge(&["eth1"]));
    let names: Vec<&str> = b.ports.keys().map(String::as_str).collect();
    assert_eq!(names, ["br-sec", "eth1", "veth1"]);
    let p = &b.ports["veth1"];
    assert_eq!(p.tag, 100);
    assert_eq!(p.external_ids["spur.dev/role"], "access");
    assert_eq!(p.external_ids["spur.dev/pod-name"], "a");
    assert!(p.ofport.is_some());

    let l = links();
    l.add_nic("eth1", &[net("192.168.1.10/24")]);
    let created = l.create_veth(&spec()).await.unwrap();
    let snap = l.snapshot();
    assert_eq!(snap, l.snapshot());
    let pod = &snap.netns[Path::new(NS)]["eth1"];
    assert_eq!(
        pod,
        &PodLink {
            index: pod.index,
            kind: LinkKind::Veth {
                host: "veth1".into()
            },
            mtu: 1400,
            mac: spec().mac,
            addresses: spec().addresses,
            routes: spec().routes,
            up: true,
        }
    );
    assert_eq!(
        snap.hosts["veth1"],
        HostEnd {
            netns: PathBuf::from(NS),
            ifname: "eth1".into(),
            index: created.host_index,
            mtu: 1400,
            up: true,
        }
    );
    assert_eq!(snap.nics["eth1"].addresses, [net("192.168.1.10/24")]);
}

#[tokio::test(start_paused = true)]
async fn names_and_nics_in_the_agent_netns() {
    let l = links();
    l.add_nic("eth1", &[]);
    // A host end cannot take a NIC's name; a NIC cannot be deleted.
    let mut s = spec();
    s.host_name = "eth1".into();
    assert!(l.create_veth(&s).await.unwrap_err().is_exists());
    assert!(l.delete_host_link("eth1").await.is_err());
    assert_eq!(l.host_link("eth1").await.unwrap().unwrap().mtu, 1500);
    assert_eq!(l.host_link("veth1").await.unwrap(), None);
    assert_eq!(l.host_addresses("veth1").await.unwrap(), None);
    l.create_veth(&spec()).await.unwrap();
    assert_eq!(l.host_addresses("veth1").await.unwrap(), Some(vec![]));
    // Deleting the Pod end deletes the pair.
    assert!(l.delete_pod_link(Path::new(NS), "eth1").await.unwrap());
    assert!(l.host_links().is_empty());
}

#[tokio::test(start_paused = true)]
async fn hook_fn_builds_a_hook() {
    let sw = FakeSwitch::new();
    sw.set_fault_hook(Some(hook_fn(|p| {
        if p.op == Op::ListBridges {
            Err("no".into())
        } else {
            Ok(())
        }
    })));
    sw.ensure_bridge(&bridge(&[])).await.unwrap();
    let e = sw.list_bridges().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "injected fault at switch/list_bridges/start: no"
    );
}

mod vfs {
    use super::*;
    use crate::sriov::vf::{PfVfSettings, VfAttachSpec, VfLinks, VfRecord};
    use spur_core::names::Mac;

    const PCI: &str = "0000:3b:02.1";

    fn links_with_vf() -> FakeLinks {
        let l = FakeLinks::new();
        l.add_vf("ens1f0v1", PCI, [0x3a, 0, 0, 0, 0, 1], Some(("ens1f0", 1)));
        l.add_netns(Path::new("/run/netns/p"));
        l
    }

    fn record() -> VfRecord {
        VfRecord {
            name: "ens1f0v1".into(),
            pci: PCI.parse().unwrap(),
            parent: Some(("ens1f0".into(), 1)),
            pf: PfVfSettings::default(),
        }
    }

    fn spec() -> VfAttachSpec {
        VfAttachSpec {
            netdev: "ens1f0v1".into(),
            record: record(),
            netns: "/run/netns/p".into(),
            ifname: "net1".into(),
            mtu: 9000,
            mac: Some(Mac([0x0a, 0x58, 0, 0, 0, 5])),
            addresses: vec!["10.1.0.5/24".parse().unwrap()],
            routes: vec![],
            announce: true,
        }
    }

    #[tokio::test]
    async fn a_vf_moves_into_the_pod_and_back_under_its_name() {
        let l = links_with_vf();
        l.attach_vf(&spec()).await.unwrap();
        let snap = l.snapshot();
        assert!(snap.vfs.is_empty(), "the netdev left the agent's netns");
        let pod = &snap.netns[Path::new("/run/netns/p")]["net1"];
        assert_eq!(
            (pod.mtu, pod.mac, pod.up),
            (9000, [0x0a, 0x58, 0, 0, 0, 5], true)
        );
        let seen = l
            .inspect_vf(Path::new("/run/netns/p"), "net1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.record, Some(record()));
        // Attaching again into a taken name fails and moves nothing.
        l.add_vf(
            "ens1f0v2",
            "0000:3b:02.2",
            [0x3a, 0, 0, 0, 0, 2],
            Some(("ens1f0", 2)),
        );
        let mut second = spec();
        second.netdev = "ens1f0v2".into();
        let e = l.attach_vf(&second).await.unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert!(l.snapshot().vfs.contains_key("ens1f0v2"));
        // Back home under the recorded name, alias cleared, down.
        let back = l
            .detach_vf(Path::new("/run/netns/p"), "net1")
            .await
            .unwrap();
        assert_eq!(back, Some(record()));
        let home = &l.snapshot().vfs["ens1f0v1"];
        assert_eq!((home.alias.as_str(), home.up), ("", false));
        assert!(home.addresses.is_empty());
        // DEL again: nothing there.
        assert_eq!(
            l.detach_vf(Path::new("/run/netns/p"), "net1")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            l.detach_vf(Path::new("/run/netns/gone"), "net1")
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_dead_sandbox_gives_the_vf_back_under_the_pods_name() {
        let l = links_with_vf();
        l.attach_vf(&spec()).await.unwrap();
        l.remove_netns(Path::new("/run/netns/p"));
        let vfs = l.snapshot().vfs;
        // As the kernel does: the physical device returns with the name it
        // had in the Pod and keeps its alias (the restore record).
        let vf = &vfs["net1"];
        assert_eq!(vf.pci, PCI);
        assert_eq!(VfRecord::parse(&vf.alias), Some(record()));
    }

    #[tokio::test]
    async fn foreign_interfaces_are_not_detached() {
        let l = links_with_vf();
        l.add_foreign_link(
            Path::new("/run/netns/p"),
            "eth0",
            ForeignLink {
                kind: LinkKind::Primary,
                mtu: 1500,
                mac: [2, 0, 0, 0, 0, 1],
                addresses: vec![],
            },
        )
        .unwrap();
        assert!(l
            .detach_vf(Path::new("/run/netns/p"), "eth0")
            .await
            .is_err());
        assert!(l.snapshot().netns[Path::new("/run/netns/p")].contains_key("eth0"));
    }

    #[tokio::test]
    async fn the_pf_keeps_what_was_set_until_a_reboot() {
        let l = links_with_vf();
        let set = PfVfSettings {
            mac: Some(Mac([0x0a, 0x58, 0, 0, 0, 5])),
            vlan: 100,
            qos: 2,
            spoofchk: Some(false),
            trust: None,
        };
        l.set_pf_settings("ens1f0", 1, &set).await.unwrap();
        // Trust was not asked for: the driver's default stays.
        assert_eq!(
            l.pf_settings("ens1f0", 1).await.unwrap(),
            PfVfSettings {
                trust: Some(false),
                ..set
            }
        );
        // Leaving MAC and flags out leaves them.
        let vlan_only = PfVfSettings {
            vlan: 0,
            ..PfVfSettings::default()
        };
        l.set_pf_settings("ens1f0", 1, &vlan_only).await.unwrap();
        let now = l.pf_settings("ens1f0", 1).await.unwrap();
        assert_eq!((now.vlan, now.mac, now.spoofchk), (0, set.mac, Some(false)));
        assert!(l.pf_settings("ens1f0", 9).await.is_err());
        l.reboot();
        let fresh = l.pf_settings("ens1f0", 1).await.unwrap();
        assert_eq!(
            (fresh.mac, fresh.vlan, fresh.spoofchk, fresh.trust),
            (None, 0, Some(true), Some(false))
        );
    }
}
