//! What the node agent promises after a restart, on real Open vSwitch and
//! real network namespaces (root only): it rebuilds its state from OVSDB
//! and the API, removes the ports and releases the addresses of Pods that
//! no longer exist (or whose sandbox is gone), never releases an address a
//! live Pod uses, and serves ADD again; CNI DEL is idempotent and succeeds
//! when the netns is gone.
//!
//! One node (native mode, one bridge, the dual-stack VLAN network of
//! `tests/testbeds/restart`). Four Pods are attached; the agent is killed
//! (SIGKILL, a crash); while it is down Pod A is deleted with its sandbox,
//! only Pod B's sandbox is deleted, Pod E is force-deleted from the API
//! while its sandbox stays, and Pod C is left alone; the agent is started
//! again. Then only C's port, link, interface and addresses remain, C
//! reaches a Pod D added after the restart, and DELs (of B, A, E, C twice,
//! D) succeed and release the rest. The lab's teardown leaves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use spur_core::attach::host_port_name;
use spur_core::ipamblock::{IPAMBlock, OwnerKind};
use spur_core::status::{self, NETWORK_STATUS_ANNOTATION};
use spur_core::Subject;
use spur_hil::api::{self, Cluster, NodeInfo};
use spur_hil::cleanup::Cleanup;
use spur_hil::cmd::Cmd;
use spur_hil::kubelet::{Kubelet, NodeCtx, Sandbox};
use spur_hil::lab::{agent_what, log_tail, Lab, LabOptions, NodeLab};
use spur_hil::probe::{self, AccessPort, Endpoint, IfaceFacts};
use spur_hil::progress::Progress;
use spur_testbed::{CniMode, PodRef, Testbed};

/// The secondary bridge of the testbed's `spur-agent.conf`.
const BRIDGE: &str = "br-secondary";
/// Its uplink.
const UPLINK: &str = "eth1";
/// The Pods' secondary interface (the first free `ethN`).
const IFNAME: &str = "eth1";
/// The network the Pods select.
const NETWORK: &str = "default/vlan100";
/// Its VLAN.
const VLAN: u16 = 100;
/// How long the agent may take to bring the node to what should be.
const SETTLE: Duration = Duration::from_secs(30);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);

fn testbed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbeds/restart")
}

/// One address a Pod interface holds in an IPAMBlock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    pod: String,
    container: String,
    interface: String,
    ip: IpAddr,
}

/// The address at `offset` of the window `cidr`.
fn address_of(cidr: &str, offset: u8) -> IpAddr {
    let net: IpNet = cidr.parse().unwrap();
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + u32::from(offset))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + u128::from(offset))),
    }
}

/// Every Pod-owned allocation of every IPAMBlock.
fn held(rt: &tokio::runtime::Runtime, client: &Client) -> BTreeSet<Held> {
    let blocks = rt
        .block_on(Api::<IPAMBlock>::all(client.clone()).list(&ListParams::default()))
        .unwrap()
        .items;
    let mut out = BTreeSet::new();
    for b in &blocks {
        for a in &b.spec.allocations {
            assert_eq!(a.owner.kind, OwnerKind::Pod, "{a:?}");
            assert_eq!(a.owner.namespace, "default", "{a:?}");
            out.insert(Held {
                pod: a.owner.name.clone(),
                container: a.owner.container_id.clone(),
                interface: a.owner.interface.clone(),
                ip: address_of(&b.spec.cidr, a.offset),
            });
        }
    }
    out
}

/// What `held` says Pod `pod` holds.
fn held_by(all: &BTreeSet<Held>, pod: &str) -> BTreeSet<Held> {
    all.iter().filter(|h| h.pod == pod).cloned().collect()
}

/// The Pods that hold addresses.
fn holders(all: &BTreeSet<Held>) -> BTreeSet<String> {
    all.iter().map(|h| h.pod.clone()).collect()
}

/// The ports of the node's secondary bridge.
fn bridge_ports(node: &NodeLab) -> BTreeSet<String> {
    node.ovs
        .vsctl("listing the ports of the secondary bridge")
        .args(["list-ports", BRIDGE])
        .run()
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The Spur access ports of the node, by the Pod they serve.
fn access_ports(node: &NodeLab) -> BTreeMap<String, AccessPort> {
    let mut out = BTreeMap::new();
    for p in probe::access_ports(&node.netns, &node.ovs.db_socket()).unwrap() {
        let pod = p.pod().expect("an access port names its Pod");
        assert_eq!(pod.namespace, "default", "{p:?}");
        assert!(
            out.insert(pod.name.clone(), p).is_none(),
            "two ports of {pod}"
        );
    }
    out
}

/// True when the node's namespace has a link named `name`.
fn host_link_exists(node: &NodeLab, name: &str) -> bool {
    Cmd::new("ip", "looking for a host link")
        .args(["-n", &node.netns, "link", "show", "dev", name])
        .run()
        .is_ok()
}

/// The host end of a sandbox's secondary interface (also its port's name).
fn host_end(sb: &Sandbox) -> String {
    host_port_name(&sb.container_id, IFNAME)
}

/// A process's state letter and parent pid from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = text.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_string();
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != "Z" && s != "X")
}

/// The pid of the live `spur-agent` this test process started for `node`
/// (the lab runs it with `ip netns exec`, which execs it).
fn agent_pid(node: &NodeLab) -> i32 {
    let me = std::process::id();
    let socket = node.cni_socket.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !alive(pid) || stat(pid).map(|(_, ppid)| ppid) != Some(me) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_agent = args
            .first()
            .is_some_and(|a| a.ends_with(spur_hil::lab::AGENT_BIN));
        if is_agent && args.contains(&socket) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "agents of {} found: {found:?}", node.name);
    found[0]
}

/// Polls `check` until it succeeds; panics with its last answer after
/// `timeout`. Returns how long it took.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return start.elapsed(),
            Err(last) if start.elapsed() >= timeout => {
                panic!("{what}: not so after {timeout:?}: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Deletes a network namespace, as the runtime does with a dead sandbox.
fn delete_netns(netns: &str) {
    Cmd::new("ip", "deleting a Pod sandbox behind the agent's back")
        .args(["netns", "del", netns])
        .run()
        .unwrap();
    assert!(!spur_hil::cleanup::netns_exists(netns));
}

/// Deletes Pod `name` (`grace`: seconds; 0 is a force delete) and waits
/// until the API no longer has it.
fn delete_pod(rt: &tokio::runtime::Runtime, client: &Client, name: &str, grace: u32) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    rt.block_on(pods.delete(name, &DeleteParams::default().grace_period(grace)))
        .unwrap();
    wait_until(&format!("Pod {name} deleted"), SETTLE, || {
        match rt.block_on(pods.get_opt(name)).unwrap() {
            None => Ok(()),
            Some(p) => Err(format!("still there: {:?}", p.metadata.deletion_timestamp)),
        }
    });
}

fn get_pod(rt: &tokio::runtime::Runtime, client: &Client, name: &str) -> Pod {
    rt.block_on(api::get_pod(client, &PodRef::new("default", name)))
        .unwrap()
}

/// The secondary entries of a Pod's network-status annotation.
fn secondary_status(pod: &Pod) -> Vec<status::NetworkStatus> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let text = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .unwrap_or_else(|| panic!("Pod {name} has no {NETWORK_STATUS_ANNOTATION}"));
    status::parse(text, &Subject::new("Pod", Some("default"), &name))
        .unwrap()
        .into_iter()
        .filter(|e| !e.default)
        .collect()
}

/// The secondary interface of a sandbox as it really is.
fn facts(sb: &Sandbox) -> IfaceFacts {
    probe::inspect(&sb.netns, IFNAME)
        .unwrap()
        .unwrap_or_else(|| panic!("Pod {} has no {IFNAME} in {}", sb.pod, sb.netns))
}

fn endpoint(sb: &Sandbox) -> Endpoint {
    Endpoint {
        id: sb.pod.interface(IFNAME),
        netns: sb.netns.clone(),
        ifname: IFNAME.into(),
        ips: facts(sb).ips,
    }
}

/// The addresses of a set of allocations.
fn ips(h: &BTreeSet<Held>) -> BTreeSet<IpAddr> {
    h.iter().map(|h| h.ip).collect()
}

/// The agent's logs so far: the first run's (saved at the kill) and the
/// current one's.
fn agent_logs(node: &NodeLab, before: &Path) -> String {
    format!(
        "--- agent log before the restart ({}):\n{}\n--- agent log after the restart ({}):\n{}",
        before.display(),
        log_tail(before, 40),
        node.agent_log.display(),
        log_tail(&node.agent_log, 60)
    )
}

#[test]
fn a_restarted_agent_removes_what_is_gone_and_keeps_what_lives() {
    if !common::root_or_skip("a_restarted_agent_removes_what_is_gone_and_keeps_what_lives") {
        return;
    }
    let _one = common::lab_lock();
    let bins = common::workspace_bins();
    let testbed = Testbed::load(testbed_dir()).unwrap();
    assert_eq!(testbed.spec.cni_mode, CniMode::Native);
    let root = tempfile::Builder::new()
        .prefix("hil")
        .tempdir_in("/tmp")
        .unwrap();

    // Dropped in reverse order: the kubelet, the cluster, the lab (its
    // teardown), the runtime last.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = LabOptions {
        root: root.path().to_path_buf(),
        bin_dir: bins,
        real_nics: Vec::new(),
        real_pfs: Vec::new(),
    };
    let lab = Lab::up(&testbed.spec, &opts, Cleanup::new(), &Progress::new(false)).unwrap();
    let lab_id = lab.plan.id.to_string();
    let lab_dir = lab.plan.dir.clone();
    let node = lab.node("node-a").unwrap().clone();
    let cluster = rt
        .block_on(Cluster::start(
            IpAddr::V4(lab.plan.mgmt.host()),
            &lab.plan.kubeconfig,
        ))
        .unwrap();
    let client = cluster.client.clone();
    rt.block_on(api::create_nodes(
        &client,
        &[NodeInfo {
            name: node.name.clone(),
            pod_cidr: node.pod_cidr,
            address: IpAddr::V4(node.mgmt_ip),
        }],
    ))
    .unwrap();
    let applied = rt
        .block_on(api::apply_manifests(
            &client,
            &testbed.manifests,
            std::slice::from_ref(&node.name),
        ))
        .unwrap();
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    let config = spur_hil::run::agent_config_text(&testbed.manifests, &applied.rejected);
    lab.start_agent(&node, &config, &cluster.kubeconfig, "info")
        .unwrap();
    lab.wait_agent_ready(&node).unwrap();
    let kubelet = Kubelet::new(
        NodeCtx {
            node: node.name.clone(),
            netns: node.netns.clone(),
            cni_bin_dir: lab.plan.cni_bin_dir.clone(),
            cni_socket: node.cni_socket.clone(),
            pod_cidr: node.pod_cidr,
            work_dir: node.dir.join("kubelet"),
        },
        CniMode::Native,
        client.clone(),
        rt.handle().clone(),
    );
    let saved_log = node.dir.join("spur-agent.before-restart.log");
    let logs = || agent_logs(&node, &saved_log);

    // 1. Four Pods attached: an access port each on the bridge (VLAN 100,
    // naming its sandbox), a host veth end each, one address per family
    // each, and the interfaces in the Pods hold exactly those.
    let mut sandboxes: BTreeMap<String, Sandbox> = BTreeMap::new();
    for name in ["pod-a", "pod-b", "pod-c", "pod-e"] {
        let sb = kubelet.add_pod(&get_pod(&rt, &client, name));
        assert!(sb.ready, "{name}: {:?}\n{}", sb.reason, logs());
        sandboxes.insert(name.to_string(), sb);
    }
    let all: Vec<&str> = sandboxes.keys().map(String::as_str).collect();
    let ports = access_ports(&node);
    assert_eq!(ports.keys().map(String::as_str).collect::<Vec<_>>(), all);
    let mut want_bridge: BTreeSet<String> = [UPLINK.to_string()].into();
    let before = held(&rt, &client);
    for (name, sb) in &sandboxes {
        let p = &ports[name];
        assert_eq!(p.name, host_end(sb), "{p:?}");
        assert_eq!(p.tag, VLAN, "{p:?}");
        assert_eq!(p.interface(), Some(IFNAME), "{p:?}");
        let id = |k: &str| p.external_ids.get(k).map(String::as_str);
        assert_eq!(id("spur.dev/container-id"), Some(sb.container_id.as_str()));
        assert_eq!(id("spur.dev/network"), Some(NETWORK));
        assert_eq!(
            id("spur.dev/netns").map(PathBuf::from),
            Some(sb.netns_path.clone())
        );
        want_bridge.insert(p.name.clone());
        assert!(host_link_exists(&node, &host_end(sb)), "{name}");
        let mine = held_by(&before, name);
        assert_eq!(mine.len(), 2, "{name}: one address per family: {mine:?}");
        for h in &mine {
            assert_eq!(
                (h.container.as_str(), h.interface.as_str()),
                (sb.container_id.as_str(), IFNAME)
            );
        }
        let real: BTreeSet<IpAddr> = facts(sb).ips.iter().map(IpNet::addr).collect();
        assert_eq!(
            real,
            ips(&mine),
            "{name}: the interface holds its allocations"
        );
        let st = secondary_status(&get_pod(&rt, &client, name));
        assert_eq!(st.len(), 1, "{st:?}");
        assert_eq!(st[0].interface.as_deref(), Some(IFNAME));
        assert_eq!(st[0].ips.iter().copied().collect::<BTreeSet<_>>(), real);
    }
    assert_eq!(holders(&before).len(), 4, "{before:?}");
    assert_eq!(bridge_ports(&node), want_bridge);
    let (a, b, c, e) = (
        &sandboxes["pod-a"],
        &sandboxes["pod-b"],
        &sandboxes["pod-c"],
        &sandboxes["pod-e"],
    );
    let c_facts = facts(c);
    let c_port = ports["pod-c"].clone();
    let c_held = held_by(&before, "pod-c");

    // 2. The agent crashes (SIGKILL: no chance to clean anything up).
    let pid = agent_pid(&node);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_until("the killed agent is gone", SETTLE, || {
        if alive(pid) {
            Err(format!("pid {pid} is alive"))
        } else {
            Ok(())
        }
    });
    std::fs::copy(&node.agent_log, &saved_log).unwrap();
    eprintln!("agent (pid {pid}) killed");

    // 3. While it is down: A is deleted with its sandbox (no CNI DEL
    // reaches Spur); only B's sandbox goes (the Pod stays: a sandbox being
    // recreated); E is force-deleted from the API while its sandbox stays;
    // C is untouched.
    // (Graceful: the bound Pod stays, terminating, until the kubelet's
    // final delete once its sandbox is gone.)
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    rt.block_on(pods.delete("pod-a", &DeleteParams::default().grace_period(30)))
        .unwrap();
    delete_netns(&a.netns);
    delete_pod(&rt, &client, "pod-a", 0);
    delete_netns(&b.netns);
    delete_pod(&rt, &client, "pod-e", 0);
    assert!(spur_hil::cleanup::netns_exists(&e.netns));
    // Nobody touched OVSDB or the IPAMBlocks meanwhile.
    assert_eq!(
        access_ports(&node)
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        all
    );
    assert_eq!(held(&rt, &client), before);

    // 4. The agent starts again and becomes ready.
    lab.start_agent(&node, &config, &cluster.kubeconfig, "info")
        .unwrap();
    let took = lab
        .wait_agent_ready(&node)
        .unwrap_or_else(|e| panic!("the restarted agent: {e}\n{}", logs()));
    eprintln!("agent restarted, ready in {took:?}");

    // 5. Only C remains: its port (unchanged), its link, its interface and
    // its addresses. A's, B's and E's ports, links and addresses are gone.
    let at_ready = (access_ports(&node), held(&rt, &client));
    let settled = wait_until("only pod-c keeps a port and addresses", SETTLE, || {
        let ports = access_ports(&node);
        let now = held(&rt, &client);
        let port_pods: Vec<&String> = ports.keys().collect();
        if port_pods != ["pod-c"] {
            return Err(format!("access ports of {port_pods:?}\n{}", logs()));
        }
        if now != c_held {
            return Err(format!(
                "IPAMBlocks hold {now:?}, want {c_held:?}\n{}",
                logs()
            ));
        }
        Ok(())
    });
    eprintln!(
        "stale state removed {settled:?} after readiness (at readiness: ports of {:?}, \
         addresses of {:?})",
        at_ready.0.keys().collect::<Vec<_>>(),
        holders(&at_ready.1)
    );
    assert_eq!(access_ports(&node)["pod-c"], c_port, "{}", logs());
    assert_eq!(
        bridge_ports(&node),
        [UPLINK.to_string(), host_end(c)].into(),
        "{}",
        logs()
    );
    for (name, sb) in [("pod-a", a), ("pod-b", b), ("pod-e", e)] {
        let link = host_end(sb);
        wait_until(
            &format!("{name}'s host link {link} is gone"),
            SETTLE,
            || {
                if host_link_exists(&node, &link) {
                    Err(format!("still there\n{}", logs()))
                } else {
                    Ok(())
                }
            },
        );
    }
    assert!(host_link_exists(&node, &host_end(c)), "{}", logs());
    // E's sandbox lives on without the interface the agent removed.
    assert_eq!(
        probe::inspect(&e.netns, IFNAME).unwrap(),
        None,
        "{}",
        logs()
    );
    assert_eq!(facts(c), c_facts, "pod-c's interface changed\n{}", logs());

    // The agent serves ADD again, and C's datapath works: C and a new Pod
    // D reach each other over every family.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod_d: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pod-d", "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "vlan100"}},
        "spec": {"nodeName": node.name, "containers": [{"name": "toolbox", "image": "antrea/toolbox:latest"}]}
    }))
    .unwrap();
    let pod_d = rt
        .block_on(pods.create(&PostParams::default(), &pod_d))
        .unwrap();
    let d = kubelet.add_pod(&pod_d);
    assert!(d.ready, "pod-d: {:?}\n{}", d.reason, logs());
    let now = held(&rt, &client);
    assert_eq!(held_by(&now, "pod-c"), c_held, "{}", logs());
    let d_held = held_by(&now, "pod-d");
    assert_eq!(d_held.len(), 2, "{now:?}");
    assert!(ips(&d_held).is_disjoint(&ips(&c_held)), "{now:?}");
    assert_eq!(
        holders(&now),
        ["pod-c".to_string(), "pod-d".to_string()].into()
    );
    let (ce, de) = (endpoint(c), endpoint(&d));
    assert_eq!(ce.ips.len(), 2);
    assert_eq!(
        probe::reachability(&[(ce.clone(), de.clone()), (de, ce)]),
        [true, true],
        "pod-c and pod-d do not reach each other\n{}",
        logs()
    );
    let (pools, lagging) = rt
        .block_on(api::settled_pool_usage(&client, SETTLE))
        .unwrap();
    assert!(lagging.is_empty(), "{lagging:?}");
    for p in &pools {
        assert_eq!(p.used, 2, "{pools:?}");
    }

    // 6. DEL of B (its netns is gone): succeeds, nothing to do. So do the
    // DELs of A (Pod and netns gone) and E (Pod gone; its sandbox goes now).
    for (name, sb) in [("pod-b", b), ("pod-a", a), ("pod-e", e)] {
        kubelet
            .del_pod(sb)
            .unwrap_or_else(|err| panic!("DEL of {name}: {err}\n{}", logs()));
        assert_eq!(held(&rt, &client), now, "DEL of {name}\n{}", logs());
        assert_eq!(
            access_ports(&node).keys().collect::<Vec<_>>(),
            ["pod-c", "pod-d"],
            "DEL of {name}"
        );
    }
    assert!(!spur_hil::cleanup::netns_exists(&e.netns));
    // DEL of C, twice: its port, link and addresses go; D keeps its own.
    for round in 1..=2 {
        kubelet
            .del_pod(c)
            .unwrap_or_else(|err| panic!("DEL #{round} of pod-c: {err}\n{}", logs()));
        assert_eq!(
            held(&rt, &client),
            d_held,
            "DEL #{round} of pod-c\n{}",
            logs()
        );
        assert_eq!(
            access_ports(&node).keys().collect::<Vec<_>>(),
            ["pod-d"],
            "DEL #{round} of pod-c"
        );
        assert!(!host_link_exists(&node, &host_end(c)));
        assert!(!spur_hil::cleanup::netns_exists(&c.netns));
    }
    kubelet.del_pod(&d).unwrap();
    assert_eq!(held(&rt, &client), BTreeSet::new(), "{}", logs());
    assert!(access_ports(&node).is_empty(), "{}", logs());
    assert_eq!(bridge_ports(&node), [UPLINK.to_string()].into());
    lab.check_alive(&agent_what(&node.name)).unwrap();

    // 7. The lab's teardown leaves nothing behind.
    drop(kubelet);
    drop(cluster);
    let problems = lab.teardown();
    assert!(problems.is_empty(), "{problems:?}");
    let prefix = format!("{lab_id}-");
    assert_eq!(common::netns_with_prefix(&prefix), Vec::<String>::new());
    assert_eq!(common::links_with_prefix(&prefix), Vec::<String>::new());
    assert_eq!(
        common::processes_mentioning(&lab_dir.display().to_string()),
        Vec::<String>::new()
    );
    assert!(!lab_dir.exists(), "{}", lab_dir.display());
}
