//! The agent's SR-IOV path over in-memory back ends: an emulated sysfs
//! tree, the kubelet's PodResources as a static record, and FakeLinks's
//! VFs. A native ADD pairs the Pod's SR-IOV interfaces with the devices
//! the kubelet assigned, sets each VF through its PF, moves it into the
//! Pod with its addresses and reports its PCI address in the
//! network-status; DEL gives every VF back as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, PostParams};
use kube::Api;
use serde_json::{json, Value};
use spur_core::cni::CniVersion;
use spur_core::cniproto::{AgentRequest, Command, PROTO_VERSION};
use spur_core::status::NETWORK_STATUS_ANNOTATION;
use spur_kubeapi::ApiServer;
use spur_node::agent::cluster::{nad_resource, Cluster, KubeCluster};
use spur_node::agent::{Agent, AgentSettings, SriovBackends};
use spur_node::fake::{FakeLinks, FakeSwitch};
use spur_node::ipam::Ipam;
use spur_node::podresources::StaticPodResources;
use spur_node::sriov::sysfs::SysfsTree;

use common::{client, config, pool_with_vlan, server, stored, wait_until};

const NODE: &str = "node-a";
const NETNS: &str = "/var/run/netns/test-web";

struct Env {
    server: ApiServer,
    agent: Arc<Agent>,
    links: Arc<FakeLinks>,
    resources: Arc<StaticPodResources>,
    _sysfs: tempfile::TempDir,
}

async fn env() -> Env {
    let server = server().await;
    pool_with_vlan(
        &server,
        "sriov-4",
        &["10.30.0.0/29"],
        "10.30.0.1",
        24,
        Some(300),
    )
    .await;
    let nads: Api<DynamicObject> =
        Api::namespaced_with(client(&server), "default", &nad_resource());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "vf-a", "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/resourceName": "intel.com/sriov_a"}},
        "spec": {"config": json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "sriov",
                                  "mtu": 9000, "spoofchk": "off",
                                  "ipam": {"type": "spur", "ippools": ["sriov-4"]}}).to_string()}}))
    .unwrap();
    nads.create(&PostParams::default(), &obj).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::create(dir.path()).unwrap();
    tree.add_pf(
        "ens1f0",
        "0000:3b:00.0",
        &[
            ("0000:3b:02.0", Some("ens1f0v0")),
            ("0000:3b:02.1", Some("ens1f0v1")),
        ],
    )
    .unwrap();
    let links = Arc::new(FakeLinks::new());
    links.add_vf(
        "ens1f0v0",
        "0000:3b:02.0",
        [0x3a, 0, 0, 0, 0, 1],
        Some(("ens1f0", 0)),
    );
    links.add_vf(
        "ens1f0v1",
        "0000:3b:02.1",
        [0x3a, 0, 0, 0, 0, 2],
        Some(("ens1f0", 1)),
    );
    links.add_netns(Path::new(NETNS));
    let resources = Arc::new(StaticPodResources::new());

    let c = client(&server);
    let ipam = Ipam::start(c.clone(), config(5));
    let cluster = KubeCluster::start(c, NODE);
    let agent = Arc::new(
        Agent::new(
            AgentSettings {
                node: NODE.into(),
                datapath: "netdev".into(),
            },
            spur_core::config::AgentConfig::from_yaml("{}").unwrap(),
            ipam,
            Arc::new(cluster.clone()),
            Arc::new(FakeSwitch::new()),
            links.clone(),
        )
        .with_sriov(SriovBackends {
            sysfs: tree.sysfs(),
            pod_resources: resources.clone(),
            vfs: links.clone(),
        }),
    );
    tokio::time::timeout(Duration::from_secs(10), cluster.wait_ready())
        .await
        .unwrap();
    agent.ipam().cache().wait_ready().await;
    wait_until(|| agent.ipam().cache().layout("sriov-4").is_some()).await;
    agent.ensure_bridges().await.unwrap();
    wait_until(|| agent.not_ready_reason().is_none()).await;
    let pods: Api<Pod> = Api::namespaced(client(&server), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "vf-a, vf-a@data"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    wait_until(|| cluster.cached_pod("default", "web").is_some()).await;
    Env {
        server,
        agent,
        links,
        resources,
        _sysfs: dir,
    }
}

fn request(command: Command) -> AgentRequest {
    let mut args = BTreeMap::new();
    args.insert("K8S_POD_NAMESPACE".to_string(), "default".to_string());
    args.insert("K8S_POD_NAME".to_string(), "web".to_string());
    AgentRequest {
        proto: PROTO_VERSION,
        command,
        container_id: Some("cid-web".into()),
        netns: Some(NETNS.into()),
        ifname: Some("eth0".into()),
        args,
        config: json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "spur",
            "prevResult": {"cniVersion": "1.0.0",
              "interfaces": [{"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": NETNS}],
              "ips": [{"address": "10.244.0.5/24", "interface": 0}], "dns": {}}}),
        cni_version: CniVersion::V1_0_0,
    }
}

#[tokio::test]
async fn a_pod_gets_its_vfs_and_gives_them_back() {
    let env = env().await;
    // The kubelet lists the devices in another order: the interfaces still
    // get them in PCI order.
    env.resources.set(
        "default",
        "web",
        BTreeMap::from([(
            "intel.com/sriov_a".to_string(),
            vec!["0000:3b:02.1".to_string(), "0000:3b:02.0".to_string()],
        )]),
    );
    env.agent.handle(&request(Command::Add)).await.unwrap();
    let snap = env.links.snapshot();
    let pod = &snap.netns[Path::new(NETNS)];
    let eth1 = &pod["eth1"];
    let data = &pod["data"];
    assert!(
        matches!(&eth1.kind, spur_node::fake::LinkKind::Vf { pci, .. } if pci == "0000:3b:02.0"),
        "{eth1:?}"
    );
    assert!(
        matches!(&data.kind, spur_node::fake::LinkKind::Vf { pci, .. } if pci == "0000:3b:02.1"),
        "{data:?}"
    );
    assert_eq!((eth1.mtu, eth1.up), (9000, true));
    assert_eq!(eth1.addresses.len(), 1);
    assert!(snap.vfs.is_empty(), "both VFs left the host");
    // Through the PF: the pool's VLAN, spoof check off, the interface's MAC.
    let set = snap.pf_vfs[&("ens1f0".to_string(), 0)];
    assert_eq!((set.vlan, set.spoofchk), (300, Some(false)));
    assert_eq!(set.mac.map(|m| m.0), Some(eth1.mac));
    // network-status names the VF of each interface.
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    let status: Value = serde_json::from_str(
        &pods.get("web").await.unwrap().metadata.annotations.unwrap()[NETWORK_STATUS_ANNOTATION],
    )
    .unwrap();
    let pci_of = |ifname: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["interface"] == ifname)
            .map(|e| e["device-info"]["pci"]["pci-address"].clone())
    };
    assert_eq!(pci_of("eth1"), Some(json!("0000:3b:02.0")));
    assert_eq!(pci_of("data"), Some(json!("0000:3b:02.1")));
    assert_eq!(stored(&env.server).len(), 2);

    // DEL: both back under their own names, the PF as before, addresses
    // released; a second DEL changes nothing.
    env.agent.handle(&request(Command::Del)).await.unwrap();
    let snap = env.links.snapshot();
    assert!(snap.netns[Path::new(NETNS)].is_empty());
    assert_eq!(
        snap.vfs.keys().collect::<Vec<_>>(),
        ["ens1f0v0", "ens1f0v1"]
    );
    assert_eq!(snap.pf_vfs[&("ens1f0".to_string(), 0)].vlan, 0);
    assert_eq!(snap.pf_vfs[&("ens1f0".to_string(), 0)].spoofchk, Some(true));
    assert!(stored(&env.server).is_empty());
    env.agent.handle(&request(Command::Del)).await.unwrap();
    assert_eq!(env.links.snapshot(), snap);
}

#[tokio::test]
async fn too_few_devices_fail_the_add_naming_the_resource_and_leave_nothing() {
    let env = env().await;
    env.resources.set(
        "default",
        "web",
        BTreeMap::from([(
            "intel.com/sriov_a".to_string(),
            vec!["0000:3b:02.0".to_string()],
        )]),
    );
    let e = env.agent.handle(&request(Command::Add)).await.unwrap_err();
    assert!(
        e.msg
            .contains("take VFs of resource intel.com/sriov_a, but the kubelet assigned the Pod 1"),
        "{}",
        e.msg
    );
    let snap = env.links.snapshot();
    assert_eq!(snap.vfs.len(), 2);
    assert!(stored(&env.server).is_empty());
}
