//! The lab on this machine (root): its topology, VLANs across the fabric
//! (trunks and `allowedVLANs`), Pods whose ADD stops after the primary
//! network and a Multus-like macvlan network across the fabric, and
//! cleanup — from Drop, from SIGTERM, and of a crashed run's leftovers.
//!
//! These tests need no Spur agent: they check the harness's own plumbing
//! with Open vSwitch, Debian's CNI plugins and the embedded API server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use spur_hil::api::{self, Cluster, NodeInfo};
use spur_hil::cleanup::{Cleanup, Undo};
use spur_hil::cmd::Cmd;
use spur_hil::kubelet::{Kubelet, NodeCtx};
use spur_hil::lab::{Lab, LabOptions, NodeLab};
use spur_hil::probe::{self, Endpoint};
use spur_hil::progress::Progress;
use spur_testbed::{CniMode, InterfaceRef, Manifest, PodRef, TestbedSpec};

const SPEC: &str = "
nodes:
  - name: node-a
    nics: [eth1, eth2]
  - name: node-b
    nics: [eth1, eth2]
fabric:
  - name: tor-1
    ports: [node-a/eth1, node-b/eth1]
  - name: tor-2
    ports: [node-a/eth2, node-b/eth2]
    allowedVLANs: [\"100\"]
";

fn spec(text: &str) -> TestbedSpec {
    TestbedSpec::parse(Path::new("testbed.yaml"), text).unwrap()
}

/// A private root for lab directories (short, for socket paths).
fn state_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hil")
        .tempdir_in("/tmp")
        .unwrap()
}

fn up(spec: &TestbedSpec, root: &Path) -> Lab {
    let opts = LabOptions {
        root: root.to_path_buf(),
        bin_dir: common::workspace_bins(),
        real_nics: Vec::new(),
        real_pfs: Vec::new(),
    };
    Lab::up(spec, &opts, Cleanup::new(), &Progress::new(false)).unwrap()
}

/// What the lab left on the host (empty when it cleaned up).
fn leftovers(lab_id: &str, lab_dir: &Path) -> Vec<String> {
    let prefix = format!("{lab_id}-");
    let mut v: Vec<String> = common::netns_with_prefix(&prefix)
        .into_iter()
        .map(|n| format!("namespace {n}"))
        .collect();
    v.extend(
        common::links_with_prefix(&prefix)
            .into_iter()
            .map(|l| format!("link {l}")),
    );
    v.extend(
        common::processes_mentioning(&lab_dir.display().to_string())
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    if lab_dir.exists() {
        v.push(format!("directory {}", lab_dir.display()));
    }
    v
}

/// A Pod stand-in attached like an agent would: a namespace of its own
/// (named after the node's, so the lab sweeps it), a veth whose host end
/// is an OVS port of `bridge` with access VLAN `vlan` (0: untagged), TX
/// checksum offload off on the Pod side, `addr` on its `eth1`.
fn attach(lab: &Lab, node: &NodeLab, bridge: &str, vlan: u16, addr: &str, n: usize) -> Endpoint {
    let netns = format!("{}-t{n}", node.netns);
    let host = format!("t{n}h");
    let doing = format!("test Pod {netns}");
    let ip = |args: &[&str]| {
        Cmd::new("ip", &doing).args(args).run().unwrap();
    };
    ip(&["netns", "add", &netns]);
    lab.cleanup().push(Undo::Netns(netns.clone()));
    ip(&[
        "-n",
        &node.netns,
        "link",
        "add",
        &host,
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        &netns,
    ]);
    Cmd::new("ethtool", &doing)
        .args(["-K", "eth1", "tx", "off"])
        .netns(&netns)
        .run()
        .unwrap();
    ip(&["-n", &netns, "addr", "add", addr, "dev", "eth1"]);
    ip(&["-n", &netns, "link", "set", "eth1", "up"]);
    ip(&["-n", &netns, "link", "set", "lo", "up"]);
    ip(&["-n", &node.netns, "link", "set", &host, "up"]);
    let mut add = vec!["add-port".to_string(), bridge.into(), host.clone()];
    if vlan != 0 {
        add.push(format!("tag={vlan}"));
    }
    node.ovs.vsctl(&doing).args(add).run().unwrap();
    Endpoint {
        id: format!("test/{}@eth1", netns.rsplit('-').next().unwrap())
            .parse()
            .unwrap(),
        netns,
        ifname: "eth1".into(),
        ips: vec![addr.parse().unwrap()],
    }
}

#[test]
fn the_fabric_carries_vlans_as_the_testbed_says_and_everything_goes_away() {
    if !common::root_or_skip("the_fabric_carries_vlans...") {
        return;
    }
    let _one = common::lab_lock();
    let root = state_root();
    let started = Instant::now();
    let lab = up(&spec(SPEC), root.path());
    eprintln!("lab up in {:?}", started.elapsed());
    let id = lab.plan.id.to_string();
    let dir = lab.plan.dir.clone();

    // The topology.
    for n in &lab.plan.nodes {
        assert!(Path::new("/run/netns").join(&n.netns).exists());
        for nic in ["eth1", "eth2", "mgmt0"] {
            Cmd::new("ip", "test")
                .args(["-n", &n.netns, "link", "show", nic, "up"])
                .run()
                .unwrap();
        }
        // The management network reaches the host's API address.
        Cmd::new("ping", "pinging the host over the management network")
            .args(["-c", "1", "-W", "2", &lab.plan.mgmt.host().to_string()])
            .netns(&n.netns)
            .run()
            .unwrap();
    }
    let bridges = lab
        .plan
        .fabric
        .vsctl("test")
        .args(["list-br"])
        .run()
        .unwrap();
    assert_eq!(
        bridges.split_whitespace().collect::<Vec<_>>(),
        ["fab0", "fab1"]
    );
    let trunks = lab
        .plan
        .fabric
        .vsctl("test")
        .args(["get", "port", "n0p1", "trunks"])
        .run()
        .unwrap();
    assert_eq!(trunks.trim(), "[0, 100]");
    let trunks = lab
        .plan
        .fabric
        .vsctl("test")
        .args(["get", "port", "n0p0", "trunks"])
        .run()
        .unwrap();
    assert_eq!(trunks.trim(), "[]");

    // An agent-like bridge per node and uplink: br-x on eth1 (tor-1, all
    // VLANs), br-y on eth2 (tor-2, VLAN 100 only).
    let dp = format!("datapath_type={}", lab.plan.datapath.as_str());
    for n in &lab.plan.nodes {
        for (br, uplink) in [("br-x", "eth1"), ("br-y", "eth2")] {
            n.ovs
                .vsctl("test bridge")
                .args([
                    "add-br", br, "--", "set", "bridge", br, &dp, "--", "add-port", br, uplink,
                ])
                .run()
                .unwrap();
        }
    }
    let (a, b) = (&lab.plan.nodes[0], &lab.plan.nodes[1]);
    // One subnet for every VLAN of a switch: only the VLANs separate them.
    let a100 = attach(&lab, a, "br-x", 100, "10.1.0.1/24", 1);
    let b100 = attach(&lab, b, "br-x", 100, "10.1.0.2/24", 2);
    let a200 = attach(&lab, a, "br-x", 200, "10.1.0.3/24", 3);
    let b200 = attach(&lab, b, "br-x", 200, "10.1.0.4/24", 4);
    let c100 = attach(&lab, a, "br-y", 100, "10.2.0.1/24", 5);
    let d100 = attach(&lab, b, "br-y", 100, "10.2.0.2/24", 6);
    let c200 = attach(&lab, a, "br-y", 200, "10.2.0.3/24", 7);
    let d200 = attach(&lab, b, "br-y", 200, "10.2.0.4/24", 8);
    let c0 = attach(&lab, a, "br-y", 0, "10.2.0.5/24", 9);
    let d0 = attach(&lab, b, "br-y", 0, "10.2.0.6/24", 10);
    let cases = [
        (&a100, &b100, true, "VLAN 100 over the trunk"),
        (&b100, &a100, true, "VLAN 100 back over the trunk"),
        (&a200, &b200, true, "VLAN 200 over the trunk"),
        (&a100, &b200, false, "VLAN 100 to VLAN 200"),
        (&a200, &b100, false, "VLAN 200 to VLAN 100"),
        (&c100, &d100, true, "VLAN 100 over the allowedVLANs segment"),
        (
            &c200,
            &d200,
            false,
            "VLAN 200 over a segment allowing only 100",
        ),
        (&c0, &d0, true, "untagged over the allowedVLANs segment"),
    ];
    let pairs: Vec<(Endpoint, Endpoint)> = cases
        .iter()
        .map(|(x, y, _, _)| ((*x).clone(), (*y).clone()))
        .collect();
    let got = probe::reachability(&pairs);
    for ((_, _, want, what), got) in cases.iter().zip(got) {
        assert_eq!(got, *want, "{what}");
    }

    let down = Instant::now();
    drop(lab);
    eprintln!("lab down in {:?}", down.elapsed());
    let left = leftovers(&id, &dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Pods through the kubelet stand-in in Multus mode without a Spur
/// network: `eth0` from Debian's ptp + host-local, `net1` from Debian's
/// macvlan (master eth1) with static addresses; the two Pods, on two
/// nodes, reach each other over the fabric. kubectl sees their status.
#[test]
fn pods_get_their_primary_and_macvlan_networks_across_the_fabric() {
    if !common::root_or_skip("pods_get_their_primary_and_macvlan_networks...") {
        return;
    }
    let _one = common::lab_lock();
    let root = state_root();
    let lab = up(
        &spec("nodes:\n  - name: node-a\n    nics: [eth1]\n  - name: node-b\n    nics: [eth1]\nfabric:\n  - name: tor-1\n    ports: [node-a/eth1, node-b/eth1]\n"),
        root.path(),
    );
    let id = lab.plan.id.to_string();
    let dir = lab.plan.dir.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt
        .block_on(Cluster::start(
            std::net::IpAddr::V4(lab.plan.mgmt.host()),
            &lab.plan.kubeconfig,
        ))
        .unwrap();
    let nodes: Vec<NodeInfo> = lab
        .plan
        .nodes
        .iter()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            pod_cidr: n.pod_cidr,
            address: std::net::IpAddr::V4(n.mgmt_ip),
        })
        .collect();
    rt.block_on(api::create_nodes(&cluster.client, &nodes))
        .unwrap();
    let nad = |name: &str, addr: &str| {
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"config": json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1",
                        "mode": "bridge", "ipam": {"type": "static", "addresses": [{"address": addr}]}})
                        .to_string()}})
    };
    let pod = |name: &str, network: &str, node: Option<&str>| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default",
                            "annotations": {"k8s.v1.cni.cncf.io/networks": network}},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    };
    let objects = [
        nad("mac-a", "10.5.0.1/24"),
        nad("mac-b", "10.5.0.2/24"),
        pod("pod-a", "mac-a", Some("node-a")),
        pod("pod-b", "mac-b", Some("node-b")),
    ];
    let manifests: Vec<Manifest> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| Manifest {
            file: PathBuf::from("test.yaml"),
            document: i + 1,
            object: o.clone(),
        })
        .collect();
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let applied = rt
        .block_on(api::apply_manifests(&cluster.client, &manifests, &names))
        .unwrap();
    assert_eq!(applied.applied, 4);
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);

    let mut sandboxes = Vec::new();
    let mut endpoints = Vec::new();
    for (n, pod_name) in lab.plan.nodes.iter().zip(["pod-a", "pod-b"]) {
        let kubelet = Kubelet::new(
            NodeCtx {
                node: n.name.clone(),
                netns: n.netns.clone(),
                cni_bin_dir: lab.plan.cni_bin_dir.clone(),
                cni_socket: n.cni_socket.clone(),
                pod_cidr: n.pod_cidr,
                work_dir: n.dir.join("kubelet"),
            },
            CniMode::Multus,
            cluster.client.clone(),
            rt.handle().clone(),
        );
        let pref = PodRef::new("default", pod_name);
        let object = rt.block_on(api::get_pod(&cluster.client, &pref)).unwrap();
        let sb = kubelet.add_pod(&object);
        lab.cleanup().push(Undo::Netns(sb.netns.clone()));
        assert!(sb.ready, "{pod_name}: {:?}", sb.reason);
        let eth0 = probe::inspect(&sb.netns, "eth0").unwrap().unwrap();
        assert!(
            eth0.ips.iter().any(|ip| n.pod_cidr.contains(&ip.addr())),
            "{eth0:?} in {}",
            n.pod_cidr
        );
        let net1 = probe::inspect(&sb.netns, "net1").unwrap().unwrap();
        rt.block_on(api::set_pod_status(
            &cluster.client,
            &pref,
            true,
            None,
            &[eth0.ips[0].addr()],
            std::net::IpAddr::V4(n.mgmt_ip),
        ))
        .unwrap();
        endpoints.push(Endpoint {
            id: format!("default/{pod_name}@net1")
                .parse::<InterfaceRef>()
                .unwrap(),
            netns: sb.netns.clone(),
            ifname: "net1".into(),
            ips: net1.ips.clone(),
        });
        sandboxes.push((kubelet, sb));
    }
    let reached = probe::reachability(&[
        (endpoints[0].clone(), endpoints[1].clone()),
        (endpoints[1].clone(), endpoints[0].clone()),
    ]);
    assert_eq!(reached, [true, true]);

    // kubectl, through the kubeconfig and the management address.
    if common_kubectl() {
        let out = Command::new("kubectl")
            .args(["get", "pods", "-o", "wide", "--no-headers"])
            .env("KUBECONFIG", &lab.plan.kubeconfig)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for p in ["pod-a", "pod-b"] {
            let line = text.lines().find(|l| l.starts_with(p)).unwrap();
            assert!(line.contains("Running") && line.contains("1/1"), "{line}");
        }
    }

    for (kubelet, sb) in &sandboxes {
        kubelet.del_pod(sb).unwrap();
        assert!(!Path::new("/run/netns").join(&sb.netns).exists());
        // DEL again: nothing left to do, still fine.
        kubelet.del_pod(sb).unwrap();
    }
    drop(sandboxes);
    drop(cluster);
    drop(lab);
    let left = leftovers(&id, &dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn common_kubectl() -> bool {
    spur_hil::cmd::find_tool("kubectl").is_some()
}

/// Starts `spur-hil run` on the seed example with a private state
/// directory and freezes it (SIGSTOP) once its lab is up. Its stderr is
/// echoed until it ends.
fn frozen_run(root: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(common::spur_hil())
        .args(["run", "--state-dir"])
        .arg(root)
        .arg("--bin-dir")
        .arg(common::workspace_bins())
        .arg(common::workspace().join("testbeds/seed-example"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("spur-hil: {line}");
            if sent {
                continue;
            }
            if let Some(rest) = line.split("] lab ").nth(1) {
                if rest.contains(" up in ") {
                    // Frozen before anything else happens.
                    kill(pid, Signal::SIGSTOP).unwrap();
                    let lab = rest.split(' ').next().unwrap_or_default().to_string();
                    tx.send(lab).unwrap();
                    sent = true;
                }
            }
        }
    });
    let lab = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the run ended before its lab was up");
    (child, lab)
}

/// A run killed with SIGKILL leaves its lab; `spur-hil cleanup` removes it.
#[test]
fn cleanup_removes_what_a_killed_run_left() {
    if !common::root_or_skip("cleanup_removes_what_a_killed_run_left") {
        return;
    }
    let _one = common::lab_lock();
    let root = state_root();
    let (mut child, lab) = frozen_run(root.path());
    let dir = root.path().join(&lab);
    assert!(!leftovers(&lab, &dir).is_empty(), "a frozen run has a lab");
    child.kill().unwrap();
    child.wait().unwrap();
    let left = leftovers(&lab, &dir);
    assert!(
        left.iter().any(|l| l.starts_with("namespace"))
            && left.iter().any(|l| l.starts_with("process")),
        "a killed run leaves namespaces and daemons: {left:?}"
    );
    let out = Command::new(common::spur_hil())
        .args(["cleanup", "--state-dir"])
        .arg(root.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("removed lab {lab}")), "{text}");
    let left = leftovers(&lab, &dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// SIGTERM in the middle of a run tears its lab down and exits 130.
#[test]
fn sigterm_tears_the_lab_down() {
    if !common::root_or_skip("sigterm_tears_the_lab_down") {
        return;
    }
    let _one = common::lab_lock();
    let root = state_root();
    let (mut child, lab) = frozen_run(root.path());
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "spur-hil did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status}");
    let left = leftovers(&lab, &root.path().join(&lab));
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `--real-nic`: a host interface (here one end of a host veth) is moved
/// into the node under the testbed's name, carries the node's traffic, and
/// comes back under its own name; one with addresses is refused.
#[test]
fn real_nics_move_in_and_come_back() {
    if !common::root_or_skip("real_nics_move_in_and_come_back") {
        return;
    }
    let _one = common::lab_lock();
    let (nic, peer) = ("hilrnic0", "hilrnic1");
    let ip = |args: &[&str]| Cmd::new("ip", "test real NIC").args(args).run().unwrap();
    let _ = Cmd::new("ip", "test").args(["link", "del", nic]).run();
    ip(&["link", "add", nic, "type", "veth", "peer", "name", peer]);
    ip(&["link", "set", nic, "up"]);
    ip(&["link", "set", peer, "up"]);
    ip(&["addr", "add", "10.77.0.1/24", "dev", peer]);
    let testbed = spec(
        "nodes:\n  - name: node-a\n    nics: [eth1, eth2]\nfabric:\n  - name: tor-1\n    ports: [node-a/eth1]\n",
    );
    let root = state_root();
    let opts = |maps: &str| LabOptions {
        root: root.path().to_path_buf(),
        bin_dir: common::workspace_bins(),
        real_nics: vec![maps.parse().unwrap()],
        real_pfs: Vec::new(),
    };

    // A NIC with addresses is not a dedicated lab NIC.
    ip(&["addr", "add", "10.78.0.1/24", "dev", nic]);
    let e = Lab::up(
        &testbed,
        &opts("node-a/eth2=hilrnic0"),
        Cleanup::new(),
        &Progress::new(true),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("has addresses") && e.contains("10.78.0.1/24"),
        "{e}"
    );
    assert!(Path::new("/sys/class/net").join(nic).exists());
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "the failed lab left its directory"
    );
    ip(&["addr", "flush", "dev", nic]);

    let lab = Lab::up(
        &testbed,
        &opts("node-a/eth2=hilrnic0"),
        Cleanup::new(),
        &Progress::new(true),
    )
    .unwrap();
    let node = &lab.plan.nodes[0];
    assert!(
        !Path::new("/sys/class/net").join(nic).exists(),
        "moved off the host"
    );
    ip(&[
        "-n",
        &node.netns,
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        "eth2",
    ]);
    // The node reaches the other end of the real wire.
    Cmd::new("ping", "pinging over the real NIC")
        .args(["-c", "1", "-W", "3", "-I", "eth2", "10.77.0.1"])
        .netns(&node.netns)
        .run()
        .unwrap();
    drop(lab);
    let back = ip(&["-j", "link", "show", nic]);
    assert!(back.contains("\"UP\""), "back on the host and up: {back}");
    ip(&["link", "del", nic]);
}
