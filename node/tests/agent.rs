//! The agent's CNI verbs over its real logic, the embedded API server and
//! in-memory switch and links: what a user of the plugin would notice
//! (interfaces, VLANs, addresses, network-status, errors naming the
//! network, nothing left behind by a failed ADD or a DEL).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use spur_core::cni::CniVersion;
use spur_core::cniproto::{AgentRequest, CniResult, Command, PROTO_VERSION};
use spur_core::config::AgentConfig;
use spur_kubeapi::faults::{Fault, Matcher};
use spur_kubeapi::ApiServer;
use spur_node::agent::cluster::{Cluster, KubeCluster, NETWORK_STATUS_ANNOTATION};
use spur_node::agent::Agent;
use spur_node::fake::{
    FakeLinks, FakeSwitch, FaultHook, FaultPoint, ForeignLink, LinkKind, Op, Step,
};
use spur_node::ovsdb::Switch;

use common::{client, fake_agent, nad, pool_with_vlan, server, stored, wait_until, FakeAgent};

const NODE: &str = "node-a";

struct Env {
    server: ApiServer,
    cluster: KubeCluster,
    agent: Arc<Agent>,
    switch: Arc<FakeSwitch>,
    links: Arc<FakeLinks>,
}

async fn env(bridges: &str) -> Env {
    let server = server().await;
    pool_with_vlan(
        &server,
        "v100-4",
        &["10.10.1.0/29"],
        "10.10.1.1",
        24,
        Some(100),
    )
    .await;
    pool_with_vlan(
        &server,
        "v100-6",
        &["fd00:10::/125"],
        "fd00:10::1",
        64,
        Some(100),
    )
    .await;
    pool_with_vlan(
        &server,
        "tiny",
        &["10.20.0.10-10.20.0.10"],
        "10.20.0.1",
        24,
        None,
    )
    .await;
    for (name, config) in [
        (
            "vlan100",
            json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 100, "ipam": {"type": "spur", "ippools": ["v100-4", "v100-6"]}}),
        ),
        (
            "vlan200",
            json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 200, "mtu": 9000}),
        ),
        (
            "tiny",
            json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 300, "ipam": {"type": "spur", "ippools": ["tiny"]}}),
        ),
    ] {
        nad(&server, "default", name, config).await;
    }
    let FakeAgent {
        agent,
        cluster,
        switch,
        links,
    } = fake_agent(&server, NODE, bridges, 7, "tiny").await;
    Env {
        server,
        cluster,
        agent,
        switch,
        links,
    }
}

const ONE_BRIDGE: &str =
    "secondaryNetwork:\n  ovsBridges: [{bridgeName: br-sec, physicalInterfaces: [eth1]}]\n";

async fn pod(env: &Env, name: &str, networks: &str) {
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
}

/// A Pod's sandbox path: a file in a directory of this process, so the
/// sweep (which checks that the path exists) sees live sandboxes.
/// The path of `pod`'s sandbox namespace (it exists only in the fake).
fn netns(pod: &str) -> String {
    format!("/var/run/netns/test-{pod}")
}

fn sandbox(env: &Env, pod: &str) {
    env.links.add_netns(Path::new(&netns(pod)));
}

fn kill_sandbox(env: &Env, pod: &str) {
    env.links.remove_netns(Path::new(&netns(pod)));
}

fn request(command: Command, pod: &str, config: Value, ifname: &str) -> AgentRequest {
    let mut args = BTreeMap::new();
    args.insert("K8S_POD_NAMESPACE".to_string(), "default".to_string());
    args.insert("K8S_POD_NAME".to_string(), pod.to_string());
    AgentRequest {
        proto: PROTO_VERSION,
        command,
        container_id: Some(format!("cid-{pod}")),
        netns: Some(netns(pod)),
        ifname: Some(ifname.into()),
        args,
        config,
        cni_version: CniVersion::V1_0_0,
    }
}

fn chained() -> Value {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "spur",
           "prevResult": {"cniVersion": "1.0.0",
             "interfaces": [{"name": "veth1", "mac": "aa:00:00:00:00:01"},
                            {"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": "/var/run/netns/x"}],
             "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 1}],
             "dns": {}}})
}

async fn ready(env: &Env) {
    env.agent.ensure_bridges().await.unwrap();
    wait_until(|| env.agent.not_ready_reason().is_none()).await;
}

async fn wait_pod(env: &Env, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.get_opt(name).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn annotation(env: &Env, name: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    pods.get(name)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
        .get(NETWORK_STATUS_ANNOTATION)
        .cloned()
}

#[tokio::test]
async fn native_add_attaches_every_network_in_one_call() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(
        &env,
        "web",
        r#"[{"name": "vlan100"}, {"name": "vlan200", "interface": "eth200"}]"#,
    )
    .await;
    wait_pod(&env, "web").await;
    sandbox(&env, "web");
    let out = env
        .agent
        .handle(&request(Command::Add, "web", chained(), "eth0"))
        .await
        .unwrap();
    let r = CniResult::parse(&out).unwrap();
    let names: Vec<&str> = r.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["veth1", "eth0", "eth1", "eth200"]);
    // eth1 has one address of each family, from the pools, on VLAN 100.
    let eth1 = r.interfaces.iter().position(|i| i.name == "eth1").unwrap();
    let ips: Vec<String> = r
        .ips
        .iter()
        .filter(|i| i.interface == Some(eth1))
        .map(|i| i.address.to_string())
        .collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(
        ips[0].starts_with("10.10.1.") && ips[0].ends_with("/24"),
        "{ips:?}"
    );
    assert!(
        ips[1].starts_with("fd00:10::") && ips[1].ends_with("/64"),
        "{ips:?}"
    );
    let ports = env.switch.access_ports();
    let mut tags: Vec<(String, u16)> = ports
        .iter()
        .map(|(_, p)| (p.external_ids["spur.dev/interface"].clone(), p.tag))
        .collect();
    tags.sort();
    assert_eq!(tags, vec![("eth1".into(), 100), ("eth200".into(), 200)]);
    let (_, p) = &ports[0];
    assert_eq!(p.external_ids["spur.dev/pod-name"], "web");
    assert_eq!(p.external_ids["spur.dev/container-id"], "cid-web");
    assert_eq!(p.external_ids["spur.dev/netns"], netns("web"));
    let l = env
        .links
        .pod_link(Path::new(&netns("web")), "eth200")
        .unwrap();
    assert_eq!(l.mtu, 9000);
    // network-status: the primary entry (default) and both networks.
    let status: Value = serde_json::from_str(&annotation(&env, "web").await.unwrap()).unwrap();
    let st = status.as_array().unwrap();
    assert_eq!(st.len(), 3);
    assert_eq!(st[0]["name"], "k8s-pod-network");
    assert_eq!(st[0]["default"], true);
    assert_eq!(st[0]["interface"], "eth0");
    assert_eq!(st[1]["name"], "default/vlan100");
    assert_eq!(st[2]["interface"], "eth200");
    assert_eq!(stored(&env.server).len(), 2);

    // DEL removes everything, twice without complaint, and releases.
    for _ in 0..2 {
        env.agent
            .handle(&request(Command::Del, "web", chained(), "eth0"))
            .await
            .unwrap();
    }
    assert!(env.switch.access_ports().is_empty());
    assert!(env.links.host_links().is_empty());
    assert!(stored(&env.server).is_empty());
}

#[tokio::test]
async fn failed_network_undoes_the_whole_add() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "first", "tiny").await;
    pod(&env, "second", "vlan100, tiny").await;
    wait_pod(&env, "second").await;
    for p in ["first", "second"] {
        sandbox(&env, p);
    }
    env.agent
        .handle(&request(Command::Add, "first", chained(), "eth0"))
        .await
        .unwrap();
    // The tiny pool has one address: the second Pod's second network fails.
    let e = env
        .agent
        .handle(&request(Command::Add, "second", chained(), "eth0"))
        .await
        .unwrap_err();
    assert!(
        e.msg
            .starts_with("network default/tiny: IPAM: no free address"),
        "{}",
        e.msg
    );
    assert_eq!(e.code, 100);
    // Nothing of the second Pod is left: ports, links, addresses.
    let ports = env.switch.access_ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].1.external_ids["spur.dev/pod-name"], "first");
    assert_eq!(env.links.host_links().len(), 1);
    let held = stored(&env.server);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(annotation(&env, "second").await.is_none());
}

#[tokio::test]
async fn link_failure_releases_addresses_and_names_the_network() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "web", "vlan100").await;
    wait_pod(&env, "web").await;
    // No netns: the runtime's sandbox is gone.
    let e = env
        .agent
        .handle(&request(Command::Add, "web", chained(), "eth0"))
        .await
        .unwrap_err();
    assert!(e.msg.starts_with("network default/vlan100: "), "{}", e.msg);
    assert!(stored(&env.server).is_empty());
    assert!(env.switch.access_ports().is_empty());
}

#[tokio::test]
async fn bad_selections_name_the_problem() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    for (name, ann, needle) in [
        ("missing", "nope", "network default/nope: "),
        ("badjson", "[{\"name\": }", "k8s.v1.cni.cncf.io/networks"),
    ] {
        pod(&env, name, ann).await;
        wait_pod(&env, name).await;
        sandbox(&env, name);
        let e = env
            .agent
            .handle(&request(Command::Add, name, chained(), "eth0"))
            .await
            .unwrap_err();
        assert!(e.msg.contains(needle), "{name}: {}", e.msg);
    }
    assert!(env.switch.access_ports().is_empty());
}

#[tokio::test]
async fn status_reports_unready_until_bridges_exist() {
    let env = env(ONE_BRIDGE).await;
    wait_until(|| env.agent.ipam().cache().is_ready()).await;
    let st = json!({"cniVersion": "1.1.0", "name": "spur", "type": "spur"});
    let e = env
        .agent
        .handle(&request(Command::Status, "x", st.clone(), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code, 50);
    assert!(e.msg.contains("bridges"), "{}", e.msg);
    ready(&env).await;
    env.agent
        .handle(&request(Command::Status, "x", st, ""))
        .await
        .unwrap();
    assert_eq!(env.switch.bridges()["br-sec"].uplinks, vec!["eth1"]);
}

#[tokio::test]
async fn multus_delegate_and_ipam_roles() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "m", "").await;
    wait_pod(&env, "m").await;
    sandbox(&env, "m");
    let single = json!({"cniVersion": "1.0.0", "name": "vlan100", "type": "spur",
        "networkType": "vlan", "vlan": 100, "ipam": {"type": "spur", "ippools": ["v100-4"]}});
    let out = env
        .agent
        .handle(&request(Command::Add, "m", single.clone(), "net1"))
        .await
        .unwrap();
    let r = CniResult::parse(&out).unwrap();
    assert_eq!(r.interfaces.len(), 1);
    assert_eq!(r.interfaces[0].name, "net1");
    // The MAC follows the IPv4 address (0a:58 + address).
    let ip = r.ips[0].address.addr().to_string();
    let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    assert_eq!(
        r.interfaces[0].mac.as_deref().unwrap(),
        format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    );
    let ipam = json!({"cniVersion": "1.0.0", "name": "mv", "type": "macvlan", "master": "eth2",
        "ipam": {"type": "spur", "ippools": ["tiny"]}});
    let out = env
        .agent
        .handle(&request(Command::Add, "m", ipam.clone(), "net2"))
        .await
        .unwrap();
    let r = CniResult::parse(&out).unwrap();
    assert!(r.interfaces.is_empty());
    assert_eq!(r.ips[0].address.to_string(), "10.20.0.10/24");
    assert_eq!(stored(&env.server).len(), 2);
    env.agent
        .handle(&request(Command::Del, "m", ipam, "net2"))
        .await
        .unwrap();
    assert_eq!(stored(&env.server).len(), 1);
    env.agent
        .handle(&request(Command::Del, "m", single, "net1"))
        .await
        .unwrap();
    assert!(stored(&env.server).is_empty());
    assert!(env.switch.access_ports().is_empty());
}

#[tokio::test]
async fn sweep_removes_ports_of_dead_sandboxes_and_deleted_pods_only() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    for p in ["alive", "dead", "deleted"] {
        pod(&env, p, "vlan100").await;
        wait_pod(&env, p).await;
        sandbox(&env, p);
        env.agent
            .handle(&request(Command::Add, p, chained(), "eth0"))
            .await
            .unwrap();
    }
    assert_eq!(stored(&env.server).len(), 6);
    // "dead": its sandbox is gone; "deleted": its Pod is gone from the API
    // (the agent was down while it happened); "alive" keeps both.
    kill_sandbox(&env, "dead");
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    // (Grace period 0: a bound Pod deleted gracefully stays until its
    // kubelet deletes it; this test plays that final delete.)
    pods.delete(
        "deleted",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    // The sweep trusts the node's cache for Pods it holds (no API read per
    // port): it acts once the deletion has reached the cache.
    wait_until(|| env.cluster.cached_pod("default", "deleted").is_none()).await;
    let removed = env.agent.sweep_stale().await.unwrap();
    assert_eq!(removed, 2);
    let held = stored(&env.server);
    assert_eq!(held.len(), 2);
    assert!(held.values().all(|(_, _, o)| o.pod == "alive"), "{held:?}");
    let ports = env.switch.access_ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].1.external_ids["spur.dev/pod-name"], "alive");
    assert_eq!(env.links.host_links().len(), 1);
    // A second pass finds nothing more: live addresses are never released.
    assert_eq!(env.agent.sweep_stale().await.unwrap(), 0);
    assert_eq!(stored(&env.server).len(), 2);
}

#[tokio::test]
async fn repeated_add_is_refused_and_leaves_the_first_intact() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "web", "vlan100").await;
    wait_pod(&env, "web").await;
    sandbox(&env, "web");
    env.agent
        .handle(&request(Command::Add, "web", chained(), "eth0"))
        .await
        .unwrap();
    let before = stored(&env.server);
    let e = env
        .agent
        .handle(&request(Command::Add, "web", chained(), "eth0"))
        .await
        .unwrap_err();
    assert!(e.msg.contains("already attached"), "{}", e.msg);
    assert_eq!(stored(&env.server), before);
    assert_eq!(env.switch.access_ports().len(), 1);
    assert_eq!(env.links.host_links().len(), 1);
}

#[tokio::test]
async fn ports_of_a_bridge_dropped_from_the_config_are_still_swept() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "web", "vlan100").await;
    wait_pod(&env, "web").await;
    sandbox(&env, "web");
    env.agent
        .handle(&request(Command::Add, "web", chained(), "eth0"))
        .await
        .unwrap();
    // The operator moves the node to another bridge; then the Pod dies.
    env.agent.set_config(
        AgentConfig::from_yaml(
            "secondaryNetwork:\n  ovsBridges: [{bridgeName: br-new, physicalInterfaces: [eth2]}]\n",
        )
        .unwrap(),
    );
    env.agent.ensure_bridges().await.unwrap();
    kill_sandbox(&env, "web");
    assert_eq!(env.agent.sweep_stale().await.unwrap(), 1);
    assert!(env.switch.access_ports().is_empty());
    assert!(stored(&env.server).is_empty());
}

#[tokio::test]
async fn an_uplink_with_the_nodes_addresses_is_never_bridged() {
    let env = env(ONE_BRIDGE).await;
    env.links.add_nic(
        "eth1",
        &[
            "192.168.1.10/24".parse().unwrap(),
            "fe80::1/64".parse().unwrap(),
        ],
    );
    let e = env.agent.ensure_bridges().await.unwrap_err();
    assert!(
        e.contains("uplink eth1 carries addresses of the node (192.168.1.10/24)"),
        "{e}"
    );
    assert!(env.switch.bridges().is_empty(), "nothing was bridged");
    wait_until(|| env.agent.ipam().cache().is_ready()).await;
    let st = json!({"cniVersion": "1.1.0", "name": "spur", "type": "spur"});
    let err = env
        .agent
        .handle(&request(Command::Status, "x", st, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code, 50);
    assert!(err.msg.contains("192.168.1.10/24"), "{}", err.msg);
    // A NIC with only a link-local address is fine.
    env.links.add_nic("eth1", &["fe80::1/64".parse().unwrap()]);
    env.agent.ensure_bridges().await.unwrap();
    assert_eq!(env.switch.bridges()["br-sec"].uplinks, vec!["eth1"]);
}

#[tokio::test]
async fn check_verifies_interface_addresses_and_vlan() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "web", "vlan100").await;
    wait_pod(&env, "web").await;
    sandbox(&env, "web");
    let out = env
        .agent
        .handle(&request(Command::Add, "web", chained(), "eth0"))
        .await
        .unwrap();
    let mut conf = chained();
    conf["prevResult"] = out;
    env.agent
        .handle(&request(Command::Check, "web", conf.clone(), "eth0"))
        .await
        .unwrap();
    // Someone retags the port: CHECK says so.
    let (_, port) = env.switch.access_ports().remove(0);
    env.switch
        .add_access_port("br-sec", &port.name, 101, port.external_ids.clone())
        .await
        .unwrap();
    let e = env
        .agent
        .handle(&request(Command::Check, "web", conf, "eth0"))
        .await
        .unwrap_err();
    assert!(e.msg.contains("is on VLAN 101 instead of 100"), "{}", e.msg);
}

/// Records the fault points the fakes pass; fails the `fail_at`-th one
/// (counting from 0) when set.
struct Injector {
    seen: std::sync::Mutex<Vec<FaultPoint>>,
    fail_at: Option<usize>,
}

impl FaultHook for Injector {
    fn at<'a>(&'a self, point: &'a FaultPoint) -> BoxFuture<'a, Result<(), String>> {
        let mut seen = self.seen.lock().unwrap();
        let n = seen.len();
        seen.push(point.clone());
        let r = if self.fail_at == Some(n) {
            Err("injected".to_string())
        } else {
            Ok(())
        };
        Box::pin(async move { r })
    }
}

fn inject(env: &Env, fail_at: Option<usize>) -> Arc<Injector> {
    let hook = Arc::new(Injector {
        seen: std::sync::Mutex::new(Vec::new()),
        fail_at,
    });
    env.switch.set_fault_hook(Some(hook.clone()));
    env.links.set_fault_hook(Some(hook.clone()));
    hook
}

/// Nothing of `pod` is on the node or in the API: ports, links (its netns
/// holds only what the primary CNI made), addresses.
fn nothing_of(env: &Env, pod: &str) -> Result<(), String> {
    let ports: Vec<String> = env
        .switch
        .access_ports()
        .into_iter()
        .filter(|(_, p)| p.external_ids["spur.dev/pod-name"] == pod)
        .map(|(_, p)| p.name)
        .collect();
    let hosts = env.links.snapshot().hosts;
    let links: Vec<String> = env
        .links
        .snapshot()
        .netns
        .get(Path::new(&netns(pod)))
        .map(|l| l.keys().filter(|n| *n != "eth0").cloned().collect())
        .unwrap_or_default();
    let held: Vec<_> = stored(&env.server)
        .into_iter()
        .filter(|(_, (_, _, o))| o.pod == pod)
        .collect();
    if ports.is_empty() && hosts.is_empty() && links.is_empty() && held.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "ports {ports:?}, host ends {hosts:?}, links {links:?}, addresses {held:?}"
        ))
    }
}

#[tokio::test]
async fn a_fault_at_any_point_of_an_add_leaves_nothing_behind() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    let primary = ForeignLink {
        kind: LinkKind::Primary,
        mtu: 1500,
        mac: [0xaa, 0, 0, 0, 0, 2],
        addresses: vec!["10.244.0.5/24".parse().unwrap()],
    };
    let add = |pod: &str| request(Command::Add, pod, chained(), "eth0");
    // The points one successful ADD passes, in order.
    pod(&env, "ok", "vlan100").await;
    wait_pod(&env, "ok").await;
    sandbox(&env, "ok");
    env.links
        .add_foreign_link(Path::new(&netns("ok")), "eth0", primary.clone())
        .unwrap();
    let hook = inject(&env, None);
    env.agent.handle(&add("ok")).await.unwrap();
    let points: Vec<FaultPoint> = hook.seen.lock().unwrap().clone();
    let steps: Vec<(Op, Step)> = points.iter().map(|p| (p.op, p.step)).collect();
    for want in [
        (Op::AddAccessPort, Step::Start),
        (Op::AddAccessPort, Step::Reply),
        (Op::CreateVeth, Step::Start),
        (Op::CreateVeth, Step::Configure),
        (Op::CreateVeth, Step::BringUp),
    ] {
        assert!(steps.contains(&want), "{want:?} not in {steps:?}");
    }
    env.switch.set_fault_hook(None);
    env.links.set_fault_hook(None);
    env.agent
        .handle(&request(Command::Del, "ok", chained(), "eth0"))
        .await
        .unwrap();
    nothing_of(&env, "ok").unwrap();

    // A failure at each of them: the ADD fails naming the fault, and once
    // it has returned nothing of the Pod is left.
    let mut leftovers = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let name = format!("p{i}");
        pod(&env, &name, "vlan100").await;
        wait_pod(&env, &name).await;
        sandbox(&env, &name);
        env.links
            .add_foreign_link(Path::new(&netns(&name)), "eth0", primary.clone())
            .unwrap();
        let hook = inject(&env, Some(i));
        let e = env.agent.handle(&add(&name)).await.unwrap_err();
        env.switch.set_fault_hook(None);
        env.links.set_fault_hook(None);
        let failed = hook.seen.lock().unwrap()[i].clone();
        assert_eq!((failed.op, failed.step), (point.op, point.step));
        assert!(
            e.msg.contains(&format!(
                "injected fault at {}/{}/{}",
                match point.backend {
                    spur_node::fake::Backend::Switch => "switch",
                    spur_node::fake::Backend::Links => "links",
                },
                point.op.name(),
                point.step.name()
            )),
            "{}: {}",
            point,
            e.msg
        );
        // Including when OVSDB committed the port but its answer was lost
        // (add_access_port / Reply): the undo knew of the port.
        if let Err(left) = nothing_of(&env, &name) {
            leftovers.push(format!("{point}: {left}"));
        }
        // The primary CNI's link is never touched.
        assert!(env
            .links
            .pod_link(Path::new(&netns(&name)), "eth0")
            .is_some());
        // A DEL (the runtime's clean-up) always clears it.
        env.agent
            .handle(&request(Command::Del, &name, chained(), "eth0"))
            .await
            .unwrap();
        nothing_of(&env, &name).unwrap();
    }
    assert!(leftovers.is_empty(), "left behind: {leftovers:#?}");
}

/// The network namespace of Pod web's sandbox `cid`.
fn web_netns(cid: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/var/run/netns/test-web-{cid}"))
}

/// A chained request for Pod web's sandbox `cid` (in [`web_netns`]).
fn web_sandbox(command: Command, cid: &str) -> AgentRequest {
    let mut r = request(command, "web", chained(), "eth0");
    r.container_id = Some(cid.to_string());
    r.netns = Some(web_netns(cid).display().to_string());
    r
}

#[tokio::test]
async fn a_new_sandbox_after_one_died_without_del_keeps_the_pods_addresses() {
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "web", "vlan100").await;
    pod(&env, "other", "vlan100").await;
    wait_pod(&env, "web").await;
    wait_pod(&env, "other").await;
    // Sandbox `cid` of Pod web, in its own network namespace.
    let addresses = |out: &Value| -> Vec<String> {
        let r = CniResult::parse(out).unwrap();
        let eth1 = r.interfaces.iter().position(|i| i.name == "eth1").unwrap();
        r.ips
            .iter()
            .filter(|i| i.interface == Some(eth1))
            .map(|i| i.address.to_string())
            .collect()
    };
    env.links.add_netns(&web_netns("c1"));
    let first = env
        .agent
        .handle(&web_sandbox(Command::Add, "c1"))
        .await
        .unwrap();
    let first = addresses(&first);
    assert_eq!(first.len(), 2);
    let uid = {
        let held = stored(&env.server);
        let (_, _, o) = held.values().next().unwrap();
        assert!(!o.pod_uid.is_empty(), "the agent records the Pod's UID");
        o.pod_uid.clone()
    };
    // Another Pod takes the next addresses, so fresh ones would differ.
    sandbox(&env, "other");
    env.agent
        .handle(&request(Command::Add, "other", chained(), "eth0"))
        .await
        .unwrap();
    // The node reboots: sandbox c1 is gone and no DEL ever comes; the
    // kubelet starts sandbox c2 for the same Pod.
    env.links.remove_netns(&web_netns("c1"));
    env.links.add_netns(&web_netns("c2"));
    let second = env
        .agent
        .handle(&web_sandbox(Command::Add, "c2"))
        .await
        .unwrap();
    assert_eq!(addresses(&second), first, "the same addresses");
    let web = |held: &BTreeMap<std::net::IpAddr, (String, String, spur_core::ipamblock::Owner)>| {
        let mut v: Vec<(String, String)> = held
            .values()
            .filter(|(_, _, o)| o.pod == "web")
            .map(|(_, _, o)| (o.container_id.clone(), o.pod_uid.clone()))
            .collect();
        v.sort();
        v
    };
    let held = stored(&env.server);
    assert_eq!(held.len(), 4, "nothing is held twice: {held:?}");
    assert_eq!(web(&held), vec![("c2".into(), uid.clone()); 2]);
    // A late DEL of c1 changes nothing of the addresses.
    env.agent
        .handle(&web_sandbox(Command::Del, "c1"))
        .await
        .unwrap();
    assert_eq!(stored(&env.server), held);
    // The DEL of c2 frees them.
    env.agent
        .handle(&web_sandbox(Command::Del, "c2"))
        .await
        .unwrap();
    let left = stored(&env.server);
    assert_eq!(left.len(), 2);
    assert!(left.values().all(|(_, _, o)| o.pod == "other"), "{left:?}");
}

#[tokio::test]
async fn a_failed_add_that_took_over_gives_the_addresses_back_to_the_dead_sandbox() {
    // Found by the simulator: the new sandbox took the Pod's addresses over
    // from the dead one, then failed at a later step; its undo released
    // them, and another Pod waiting for a free address got them.
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "web", "vlan100").await;
    wait_pod(&env, "web").await;
    env.links.add_netns(&web_netns("c1"));
    env.agent
        .handle(&web_sandbox(Command::Add, "c1"))
        .await
        .unwrap();
    let before = stored(&env.server);
    assert_eq!(before.len(), 2);
    // Sandbox c1 dies without DEL; c2's ADD takes over, then fails making
    // its link.
    env.links.remove_netns(&web_netns("c1"));
    env.links.add_netns(&web_netns("c2"));
    env.links.fail_create("eth1");
    let e = env
        .agent
        .handle(&web_sandbox(Command::Add, "c2"))
        .await
        .unwrap_err();
    assert!(e.msg.contains("injected"), "{}", e.msg);
    // The records name c1 again, addresses unchanged: the failed ADD left
    // the IPAM as it found it.
    assert_eq!(stored(&env.server), before);
    // The kubelet's DEL of c2 changes nothing; c3 takes them over.
    env.agent
        .handle(&web_sandbox(Command::Del, "c2"))
        .await
        .unwrap();
    assert_eq!(stored(&env.server), before);
    env.links.unfail_create("eth1");
    env.links.add_netns(&web_netns("c3"));
    env.agent
        .handle(&web_sandbox(Command::Add, "c3"))
        .await
        .unwrap();
    let after = stored(&env.server);
    let addrs = |m: &BTreeMap<std::net::IpAddr, (String, String, spur_core::ipamblock::Owner)>| {
        m.keys().copied().collect::<Vec<_>>()
    };
    assert_eq!(addrs(&after), addrs(&before));
    assert!(
        after.values().all(|(_, _, o)| o.container_id == "c3"),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_failed_network_status_write_after_a_takeover_gives_the_addresses_back() {
    // Found by the simulator (bad-inputs, seeds 27 and 170): after a node
    // reboot the new sandbox took the Pod's addresses over, then could not
    // write the Pod's network-status (5xx / 409 storm); the failed ADD
    // released the addresses instead of handing them back, and another Pod
    // waiting on the exhausted pool got them.
    let env = env(ONE_BRIDGE).await;
    ready(&env).await;
    pod(&env, "web", "tiny").await;
    wait_pod(&env, "web").await;
    env.links.add_netns(&web_netns("c1"));
    env.agent
        .handle(&web_sandbox(Command::Add, "c1"))
        .await
        .unwrap();
    let before = stored(&env.server);
    assert_eq!(before.len(), 1, "{before:?}");
    env.links.remove_netns(&web_netns("c1"));
    env.links.add_netns(&web_netns("c2"));
    let pod_writes = Matcher {
        methods: vec!["PATCH".into()],
        resource: Some("pods".into()),
        path_contains: Some("/pods/web".into()),
    };
    env.server
        .faults()
        .next(pod_writes, Fault::Status(503), 1000);
    let e = env
        .agent
        .handle(&web_sandbox(Command::Add, "c2"))
        .await
        .unwrap_err();
    assert!(e.msg.contains("network-status"), "{}", e.msg);
    env.server.faults().clear();
    // The record names c1 again: the address stays the Pod's.
    assert_eq!(stored(&env.server), before);
    let c2_ports: Vec<String> = env
        .switch
        .access_ports()
        .into_iter()
        .filter(|(_, p)| p.external_ids["spur.dev/container-id"] == "c2")
        .map(|(_, p)| p.name)
        .collect();
    assert!(c2_ports.is_empty(), "c2's ports are removed: {c2_ports:?}");
    // The kubelet's DEL of c2 changes nothing; c3 gets the same address.
    env.agent
        .handle(&web_sandbox(Command::Del, "c2"))
        .await
        .unwrap();
    assert_eq!(stored(&env.server), before);
    env.links.add_netns(&web_netns("c3"));
    env.agent
        .handle(&web_sandbox(Command::Add, "c3"))
        .await
        .unwrap();
    let after = stored(&env.server);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(
        after.values().all(|(_, _, o)| o.container_id == "c3"),
        "{after:?}"
    );
}
