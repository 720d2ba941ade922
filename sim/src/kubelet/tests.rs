//! The kubelet against the embedded API server, with a fake agent and a
//! fake node written here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};
use spur_core::cniproto::{AgentRequest, CniError, Command};
use spur_kubeapi::{ApiServer, Store};
use spur_testbed::{CniMode, PodRef};

use super::*;
use crate::clock::SimClock;
use crate::plugins::{agent_unreachable, CniTarget, ForeignLink, SandboxHost};

/// An agent that answers ADD with its prevResult plus `net1`, and fails
/// the first `fail_adds` ADDs with `error`.
#[derive(Default)]
struct FakeAgent {
    requests: Mutex<Vec<AgentRequest>>,
    fail_adds: Mutex<u32>,
    error: Mutex<Option<CniError>>,
    down: Mutex<bool>,
}

impl CniTarget for FakeAgent {
    fn call(&self, req: AgentRequest) -> BoxFuture<'_, Result<Value, CniError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if *self.down.lock().unwrap() {
                return Err(agent_unreachable(
                    req.command,
                    std::path::Path::new("/var/run/spur/cni.sock"),
                ));
            }
            self.requests.lock().unwrap().push(req.clone());
            if req.command != Command::Add {
                return Ok(Value::Null);
            }
            {
                let mut n = self.fail_adds.lock().unwrap();
                if *n > 0 {
                    *n -= 1;
                    return Err(self.error.lock().unwrap().clone().unwrap());
                }
            }
            if req.config["type"] != "spur" {
                // The IPAM role: addresses only.
                return Ok(json!({"cniVersion": "1.0.0",
                    "ips": [{"address": "10.10.1.5/24", "gateway": "10.10.1.1"}],
                    "routes": [{"dst": "10.10.0.0/16", "gw": "10.10.1.1"}]}));
            }
            let mut r = req.config["prevResult"].clone();
            if r.is_null() {
                r = json!({"cniVersion": "1.0.0", "interfaces": [], "ips": []});
            }
            r["interfaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "net1", "mac": "0a:00:00:00:00:01", "sandbox": req.netns}));
            Ok(r)
        })
    }
}

/// Namespaces and their links.
#[derive(Default)]
struct FakeNode {
    netns: Mutex<BTreeMap<String, Vec<ForeignLink>>>,
}

impl SandboxHost for FakeNode {
    fn create_netns(&self, name: &str) -> Result<String, String> {
        let path = format!("/var/run/netns/{name}");
        let mut n = self.netns.lock().unwrap();
        if n.contains_key(&path) {
            return Err(format!("{path} exists"));
        }
        n.insert(path.clone(), Vec::new());
        Ok(path)
    }
    fn remove_netns(&self, path: &str) -> Result<(), String> {
        self.netns.lock().unwrap().remove(path);
        Ok(())
    }
    fn netns_exists(&self, path: &str) -> bool {
        self.netns.lock().unwrap().contains_key(path)
    }
    fn has_nic(&self, name: &str) -> bool {
        name == "eth1"
    }
    fn add_link(&self, netns: &str, link: ForeignLink) -> Result<(), String> {
        let mut n = self.netns.lock().unwrap();
        let links = n.get_mut(netns).ok_or("no such netns")?;
        if links.iter().any(|l| l.ifname == link.ifname) {
            return Err(format!("{} exists", link.ifname));
        }
        links.push(link);
        Ok(())
    }
    fn remove_link(&self, netns: &str, ifname: &str) -> Result<(), String> {
        if let Some(links) = self.netns.lock().unwrap().get_mut(netns) {
            links.retain(|l| l.ifname != ifname);
        }
        Ok(())
    }
}

struct Env {
    client: Client,
    agent: Arc<FakeAgent>,
    node: Arc<FakeNode>,
    kubelet: Kubelet,
    task: tokio::task::JoinHandle<()>,
    _server: ApiServer,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(seed: u64) -> Env {
    start_in(seed, CniMode::Native)
}

fn start_in(seed: u64, mode: CniMode) -> Env {
    let clock = Arc::new(SimClock::start());
    let server = ApiServer::new(Store::new(clock.clone(), seed), clock.clone(), seed);
    let client = Client::new(server.service(), "default");
    let agent = Arc::new(FakeAgent::default());
    let node = Arc::new(FakeNode::default());
    let kubelet = Kubelet::new(
        KubeletConfig {
            node: "node-a".into(),
            mode,
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            host_ip: "100.64.0.1".parse().unwrap(),
            seed,
            retry: RetryConfig::default(),
        },
        client.clone(),
        agent.clone(),
        node.clone(),
        clock,
    );
    let k = kubelet.clone();
    let task = tokio::spawn(async move { k.run().await });
    Env {
        client,
        agent,
        node,
        kubelet,
        task,
        _server: server,
    }
}

async fn create_pod(c: &Client, name: &str) -> Pod {
    create_pod_on(c, name, "vlan100").await
}

async fn create_pod_on(c: &Client, name: &str, networks: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap()
}

/// Waits (simulated time) until `f` holds, at most `limit`.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ready(k: &Kubelet, name: &str) -> bool {
    k.pod(&PodRef::new("default", name))
        .is_some_and(|v| v.ready)
}

fn summary(calls: &[CniCallRecord]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            format!(
                "{} {} {}{}",
                c.command,
                c.plugin,
                c.ifname,
                if c.result.is_ok() { "" } else { " failed" }
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_pod_gets_eth0_then_spur_with_the_primary_result() {
    let env = start(1);
    create_pod(&env.client, "a").await;
    until(Duration::from_secs(30), || ready(&env.kubelet, "a")).await;
    let reqs = env.agent.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.command, Command::Add);
    assert_eq!(req.ifname.as_deref(), Some("eth0"));
    assert_eq!(req.config["type"], "spur");
    assert_eq!(req.config["name"], "k8s-pod-network");
    assert_eq!(req.config["cniVersion"], "1.0.0");
    assert_eq!(req.args["K8S_POD_NAME"], "a");
    let prev = &req.config["prevResult"];
    assert_eq!(prev["ips"][0]["address"], "10.244.0.2/24");
    assert_eq!(prev["ips"][0]["gateway"], "10.244.0.1");
    assert_eq!(prev["interfaces"][1]["name"], "eth0");
    assert_eq!(prev["interfaces"][1]["sandbox"], json!(req.netns));
    assert_eq!(prev["routes"][0]["dst"], "0.0.0.0/0");

    let view = env.kubelet.pod(&PodRef::new("default", "a")).unwrap();
    let sb = view.sandbox.unwrap();
    assert_eq!(Some(&sb.container_id), req.container_id.as_ref());
    assert_eq!(sb.container_id.len(), 64);
    assert!(sb.netns.starts_with("node-a-default-a-"), "{}", sb.netns);
    let names: Vec<String> = sb.interfaces().into_iter().collect();
    assert_eq!(names, ["eth0", "net1"]);
    assert_eq!(sb.pod_ips(), vec!["10.244.0.2".parse::<IpAddr>().unwrap()]);
    let links = env.node.netns.lock().unwrap()[&sb.netns_path].clone();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].ifname, "eth0");
    assert_eq!(
        summary(&env.kubelet.calls()),
        ["ADD ptp eth0", "ADD spur eth0"]
    );

    // The Pod's status, as hil's pod_status writes it.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    until(Duration::from_secs(10), || true).await;
    let p = pods.get("a").await.unwrap();
    let status = p.status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.2"));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
}

#[tokio::test(start_paused = true)]
async fn a_failed_add_is_undone_and_retried_with_backoff() {
    let env = start(2);
    *env.agent.fail_adds.lock().unwrap() = 2;
    *env.agent.error.lock().unwrap() = Some(CniError::invalid_config("vlan 5000 is out of range"));
    let t0 = tokio::time::Instant::now();
    create_pod(&env.client, "b").await;
    until(Duration::from_secs(20), || {
        env.kubelet
            .pod(&PodRef::new("default", "b"))
            .is_some_and(|v| v.failed_attempts == 1)
    })
    .await;
    let v = env.kubelet.pod(&PodRef::new("default", "b")).unwrap();
    assert!(!v.ready);
    assert_eq!(v.last_error.as_deref(), Some("vlan 5000 is out of range"));
    assert!(v.sandbox.is_none());
    assert!(env.node.netns.lock().unwrap().is_empty(), "netns removed");
    assert!(
        env.kubelet.primary_addresses().is_empty(),
        "eth0 address released"
    );
    // The Pod shows why.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    until(Duration::from_millis(200), || true).await;
    let p = pods.get("b").await.unwrap();
    let cond = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(cond.status, "False");
    assert_eq!(cond.message.as_deref(), Some("vlan 5000 is out of range"));

    until(Duration::from_secs(120), || ready(&env.kubelet, "b")).await;
    let calls = env.kubelet.calls();
    assert_eq!(
        summary(&calls),
        [
            "ADD ptp eth0",
            "ADD spur eth0 failed",
            "DEL spur eth0",
            "DEL ptp eth0",
            "ADD ptp eth0",
            "ADD spur eth0 failed",
            "DEL spur eth0",
            "DEL ptp eth0",
            "ADD ptp eth0",
            "ADD spur eth0",
        ]
    );
    // Three sandboxes, three container IDs; the retries waited (10 s
    // doubling, equal jitter: at least 5 s, then 10 s).
    let ids: BTreeSet<&str> = calls.iter().map(|c| c.container_id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(calls[4].at - calls[3].at >= Duration::from_secs(5));
    assert!(calls[8].at - calls[7].at >= Duration::from_secs(10));
    assert!(calls[8].at - t0 < Duration::from_secs(60));
    let v = env.kubelet.pod(&PodRef::new("default", "b")).unwrap();
    assert_eq!(v.sandboxes, 3);
    assert_eq!(v.last_error, None);
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_is_down_is_retried_quickly() {
    let env = start(3);
    *env.agent.down.lock().unwrap() = true;
    create_pod(&env.client, "c").await;
    until(Duration::from_secs(20), || {
        env.kubelet
            .pod(&PodRef::new("default", "c"))
            .is_some_and(|v| v.failed_attempts >= 3)
    })
    .await;
    let v = env.kubelet.pod(&PodRef::new("default", "c")).unwrap();
    assert!(v.last_error.unwrap().contains("spur-agent is not running"));
    *env.agent.down.lock().unwrap() = false;
    until(Duration::from_secs(10), || ready(&env.kubelet, "c")).await;
}

#[tokio::test(start_paused = true)]
async fn graceful_deletion_runs_del_then_removes_the_pod() {
    let env = start(4);
    create_pod(&env.client, "d").await;
    until(Duration::from_secs(30), || ready(&env.kubelet, "d")).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    pods.delete("d", &DeleteParams::default()).await.unwrap();
    until(Duration::from_secs(30), || {
        env.kubelet.pod(&PodRef::new("default", "d")).is_none()
    })
    .await;
    assert_eq!(
        summary(&env.kubelet.calls()),
        [
            "ADD ptp eth0",
            "ADD spur eth0",
            "DEL spur eth0",
            "DEL ptp eth0"
        ]
    );
    let reqs = env.agent.requests.lock().unwrap().clone();
    assert_eq!(reqs[1].command, Command::Del);
    assert_eq!(
        reqs[1].config["prevResult"]["interfaces"][2]["name"],
        "net1"
    );
    assert!(env.node.netns.lock().unwrap().is_empty());
    assert!(env.kubelet.primary_addresses().is_empty());
    match pods.get("d").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_reboot_makes_new_sandboxes() {
    let env = start(5);
    create_pod(&env.client, "e").await;
    until(Duration::from_secs(30), || ready(&env.kubelet, "e")).await;
    let first = env
        .kubelet
        .pod(&PodRef::new("default", "e"))
        .unwrap()
        .sandbox
        .unwrap();
    env.node.netns.lock().unwrap().clear();
    *env.agent.down.lock().unwrap() = true;
    env.kubelet.node_rebooted();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!env.kubelet.pod(&PodRef::new("default", "e")).unwrap().ready);
    *env.agent.down.lock().unwrap() = false;
    until(Duration::from_secs(30), || ready(&env.kubelet, "e")).await;
    let second = env
        .kubelet
        .pod(&PodRef::new("default", "e"))
        .unwrap()
        .sandbox
        .unwrap();
    assert_ne!(first.container_id, second.container_id);
    assert_eq!(env.node.netns.lock().unwrap().len(), 1);
}

async fn scenario(seed: u64) -> (Vec<String>, Vec<(String, Command, String, bool, Duration)>) {
    let env = start(seed);
    let t0 = tokio::time::Instant::now();
    *env.agent.fail_adds.lock().unwrap() = 1;
    *env.agent.error.lock().unwrap() = Some(CniError::try_again_later("busy"));
    for n in ["p0", "p1", "p2"] {
        create_pod(&env.client, n).await;
    }
    until(Duration::from_secs(60), || {
        ["p0", "p1", "p2"].iter().all(|n| ready(&env.kubelet, n))
    })
    .await;
    let ids = env
        .kubelet
        .pods()
        .into_iter()
        .map(|p| p.sandbox.unwrap().container_id)
        .collect();
    let log = env
        .kubelet
        .calls()
        .into_iter()
        .map(|c| {
            (
                c.container_id,
                c.command,
                c.plugin,
                c.result.is_ok(),
                c.at - t0,
            )
        })
        .collect();
    (ids, log)
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_ids_and_calls() {
    let a = scenario(9).await;
    let b = scenario(9).await;
    assert_eq!(a, b);
    let c = scenario(10).await;
    assert_ne!(a.0, c.0);
}

async fn create_nad(c: &Client, name: &str, config: Value) {
    use kube::api::{ApiResource, DynamicObject};
    use kube::core::GroupVersionKind;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let nad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"config": config.to_string()}}))
    .unwrap();
    api.create(&PostParams::default(), &nad).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn multus_mode_delegates_macvlan_with_spur_ipam_and_refuses_unsimulated_types() {
    let env = start_in(6, CniMode::Multus);
    create_nad(
        &env.client,
        "mv",
        json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1", "mode": "bridge",
               "ipam": {"type": "spur", "ippools": ["pool-a"]}}),
    )
    .await;
    create_nad(
        &env.client,
        "br",
        json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "br0"}),
    )
    .await;
    create_pod_on(&env.client, "m", "mv").await;
    until(Duration::from_secs(30), || ready(&env.kubelet, "m")).await;
    assert_eq!(
        summary(&env.kubelet.calls()),
        ["ADD ptp eth0", "ADD macvlan net1"]
    );
    let reqs = env.agent.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].config["type"], "macvlan");
    assert_eq!(reqs[0].config["name"], "mv");
    assert_eq!(reqs[0].ifname.as_deref(), Some("net1"));
    let sb = env
        .kubelet
        .pod(&PodRef::new("default", "m"))
        .unwrap()
        .sandbox
        .unwrap();
    let net1 = sb.attachments[1].result.clone().unwrap();
    assert_eq!(net1["ips"][0]["address"], "10.10.1.5/24");
    assert_eq!(net1["ips"][0]["interface"], 0);
    assert_eq!(net1["interfaces"][0]["name"], "net1");
    let links = env.node.netns.lock().unwrap()[&sb.netns_path].clone();
    let mv = links.iter().find(|l| l.ifname == "net1").unwrap();
    assert_eq!(
        mv.addresses,
        vec!["10.10.1.5/24".parse::<ipnet::IpNet>().unwrap()]
    );
    assert!(
        matches!(&mv.kind, crate::plugins::ForeignKind::Macvlan { master, .. } if master == "eth1")
    );
    // Multus wrote the network-status annotation.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let p = pods.get("m").await.unwrap();
    let text =
        p.metadata.annotations.unwrap()[spur_core::status::NETWORK_STATUS_ANNOTATION].clone();
    assert!(
        text.contains("\"default/mv\"") && text.contains("10.10.1.5"),
        "{text}"
    );

    create_pod_on(&env.client, "x", "br").await;
    until(Duration::from_secs(30), || {
        env.kubelet
            .pod(&PodRef::new("default", "x"))
            .is_some_and(|v| v.failed_attempts == 1)
    })
    .await;
    let err = env
        .kubelet
        .pod(&PodRef::new("default", "x"))
        .unwrap()
        .last_error
        .unwrap();
    assert!(err.starts_with("network default/br: "), "{err}");
    assert!(
        err.contains("\"bridge\"") && err.contains("not simulated"),
        "{err}"
    );

    // Deleting the macvlan Pod releases through the agent (IPAM DEL) and
    // removes the link.
    pods.delete("m", &DeleteParams::default()).await.unwrap();
    until(Duration::from_secs(30), || {
        env.kubelet.pod(&PodRef::new("default", "m")).is_none()
    })
    .await;
    let reqs = env.agent.requests.lock().unwrap().clone();
    assert_eq!(reqs.last().unwrap().command, Command::Del);
    assert_eq!(reqs.last().unwrap().config["type"], "macvlan");
    assert!(!env.node.netns.lock().unwrap().contains_key(&sb.netns_path));
}

fn sriov_spec(vfs: u32) -> spur_testbed::spec::TestbedSpec {
    spur_testbed::spec::TestbedSpec {
        cni_mode: CniMode::Native,
        nodes: vec![spur_testbed::spec::Node {
            name: "n".into(),
            nics: vec![],
            sriov: vec![spur_testbed::spec::SriovPf {
                pf: "ens1f0".into(),
                vfs,
                resource_name: "intel.com/x".into(),
                vm: false,
            }],
        }],
        fabric: vec![],
    }
}

#[test]
fn a_refused_admission_is_final_until_the_pod_is_forgotten() {
    let devices = Devices::new(DeviceManager::new(&sriov_spec(1)).unwrap());
    let one = BTreeMap::from([("intel.com/x".to_string(), 1)]);
    let (a, b) = (PodRef::new("default", "a"), PodRef::new("default", "b"));
    assert!(devices.admit("n", "uid-a", &a, &one).is_ok());
    let e = devices.admit("n", "uid-b", &b, &one).unwrap_err();
    assert!(e.contains("devices unavailable"), "{e}");
    devices.release("n", "uid-a");
    // The device is free now, but kubelet does not admit b again.
    assert_eq!(devices.free("n", "intel.com/x"), 1);
    assert_eq!(devices.admit("n", "uid-b", &b, &one).unwrap_err(), e);
    devices.release("n", "uid-b");
    assert!(devices.admit("n", "uid-b", &b, &one).is_ok());
    assert_eq!(
        devices.known_uids("n"),
        BTreeSet::from(["uid-b".to_string()])
    );
}

#[test]
fn pod_resources_list_devices_out_of_pci_order_and_follow_the_next_pod_of_a_name() {
    let devices = Devices::new(DeviceManager::new(&sriov_spec(3)).unwrap());
    let resources = Arc::new(StaticPodResources::new());
    let kd = KubeletDevices {
        devices: devices.clone(),
        resources: Some(resources.clone()),
    };
    let web = PodRef::new("default", "web-0");
    let two = BTreeMap::from([("intel.com/x".to_string(), 2)]);
    let old = devices.admit("n", "uid-1", &web, &two).unwrap();
    let listed = listed_devices(&old);
    assert_eq!(
        listed["intel.com/x"],
        ["0000:3b:01.1".to_string(), "0000:3b:01.0".to_string()],
        "reverse PCI order"
    );
    resources.set("default", "web-0", listed);
    // The StatefulSet's next web-0 was admitted before the old one is
    // collected: the node keeps listing the new one's devices.
    let one = BTreeMap::from([("intel.com/x".to_string(), 1)]);
    let new = devices.admit("n", "uid-2", &web, &one).unwrap();
    kd.forget("n", "uid-1", &web);
    let got = futures::executor::block_on(spur_node::podresources::PodResources::devices(
        resources.as_ref(),
        "default",
        "web-0",
    ))
    .unwrap();
    assert_eq!(got, listed_devices(&new));
    kd.forget("n", "uid-2", &web);
    assert!(
        futures::executor::block_on(spur_node::podresources::PodResources::devices(
            resources.as_ref(),
            "default",
            "web-0",
        ))
        .is_err()
    );
    assert_eq!(devices.free("n", "intel.com/x"), 3);
}
