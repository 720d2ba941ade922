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
    cluster: KubeCluster,
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
        cluster,
        _sysfs: dir,
    }
}

fn request(command: Command) -> AgentRequest {
    request_for("web", NETNS, command)
}

/// A native request for the Pod `default/<pod>` in `netns`.
fn request_for(pod: &str, netns: &str, command: Command) -> AgentRequest {
    let mut args = BTreeMap::new();
    args.insert("K8S_POD_NAMESPACE".to_string(), "default".to_string());
    args.insert("K8S_POD_NAME".to_string(), pod.to_string());
    AgentRequest {
        proto: PROTO_VERSION,
        command,
        container_id: Some(format!("cid-{pod}")),
        netns: Some(netns.into()),
        ifname: Some("eth0".into()),
        args,
        config: json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "spur",
            "prevResult": {"cniVersion": "1.0.0",
              "interfaces": [{"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": netns}],
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
    assert_eq!(
        snap.pf_vfs[&("ens1f0".to_string(), 0)].mac,
        None,
        "the MAC the PF set is cleared"
    );
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

/// CHECK as the runtime sends it: the ADD's result as `prevResult`.
fn check_after(add_result: Value) -> AgentRequest {
    let mut r = request(Command::Check);
    r.config["prevResult"] = add_result;
    r
}

fn both_devices(env: &Env) {
    env.resources.set(
        "default",
        "web",
        BTreeMap::from([(
            "intel.com/sriov_a".to_string(),
            vec!["0000:3b:02.0".to_string(), "0000:3b:02.1".to_string()],
        )]),
    );
}

/// The host's VFs as a user would check them: name, alias, up, and what
/// the PF sets for each.
fn host_vfs(env: &Env) -> Vec<(String, String, bool, u16)> {
    let snap = env.links.snapshot();
    let mut out: Vec<_> = snap
        .vfs
        .iter()
        .map(|(name, vf)| {
            let index = u16::from(vf.pci.ends_with(".1"));
            let vlan = snap.pf_vfs[&("ens1f0".to_string(), index)].vlan;
            (name.clone(), vf.alias.clone(), vf.up, vlan)
        })
        .collect();
    out.sort();
    out
}

fn pristine() -> Vec<(String, String, bool, u16)> {
    vec![
        ("ens1f0v0".into(), String::new(), false, 0),
        ("ens1f0v1".into(), String::new(), false, 0),
    ]
}

#[tokio::test]
async fn a_del_after_the_sandbox_died_gives_the_vfs_back_from_the_host() {
    let env = env().await;
    both_devices(&env);
    env.agent.handle(&request(Command::Add)).await.unwrap();
    // The sandbox dies before its DEL: the kernel brings the VFs home
    // under the Pod's interface names, still labelled, still tagged.
    env.links.remove_netns(Path::new(NETNS));
    let left = host_vfs(&env);
    assert_eq!(
        left.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(),
        ["data", "eth1"]
    );
    assert!(left
        .iter()
        .all(|v| v.1.starts_with("spur-vf ") && v.3 == 300));
    env.agent.handle(&request(Command::Del)).await.unwrap();
    assert_eq!(host_vfs(&env), pristine());
    assert!(stored(&env.server).is_empty(), "the addresses are released");
    env.agent.handle(&request(Command::Del)).await.unwrap();
    assert_eq!(host_vfs(&env), pristine());
}

#[tokio::test]
async fn the_sweep_gives_back_vfs_that_no_del_will_come_for() {
    let env = env().await;
    both_devices(&env);
    env.agent.handle(&request(Command::Add)).await.unwrap();
    // Nothing to give back while the Pod holds its VFs.
    assert_eq!(env.agent.recover_vfs().await.unwrap(), 0);
    assert!(env.links.snapshot().vfs.is_empty());
    env.links.remove_netns(Path::new(NETNS));
    // A restarted agent's first sweep (or the periodic one) restores them.
    assert_eq!(env.agent.recover_vfs().await.unwrap(), 2);
    assert_eq!(host_vfs(&env), pristine());
    assert_eq!(env.agent.metrics().vfs_recovered(), 2);
    assert_eq!(env.agent.recover_vfs().await.unwrap(), 0, "idempotent");
}

#[tokio::test]
async fn check_finds_a_vf_whose_vlan_was_changed_under_it() {
    let env = env().await;
    both_devices(&env);
    let result = env.agent.handle(&request(Command::Add)).await.unwrap();
    let check = check_after(result);
    env.agent.handle(&check).await.unwrap();
    // Someone retags VF 1 (the Pod's `data`) through the PF.
    use spur_node::sriov::vf::VfLinks;
    let mut set = env.links.pf_settings("ens1f0", 1).await.unwrap();
    set.vlan = 42;
    env.links.set_pf_settings("ens1f0", 1, &set).await.unwrap();
    let e = env.agent.handle(&check).await.unwrap_err();
    assert!(
        e.msg
            .contains("VF 1 of ens1f0 (data) is on VLAN 42, not 300"),
        "{}",
        e.msg
    );
}

#[tokio::test]
async fn check_finds_a_pod_holding_another_vf_than_the_kubelet_assigned() {
    let env = env().await;
    both_devices(&env);
    let result = env.agent.handle(&request(Command::Add)).await.unwrap();
    env.agent
        .handle(&check_after(result.clone()))
        .await
        .unwrap();
    // The kubelet's record now says otherwise (e.g. a device plugin that
    // lost its checkpoint): CHECK says which VF the interface is.
    env.resources.set(
        "default",
        "web",
        BTreeMap::from([(
            "intel.com/sriov_a".to_string(),
            vec!["0000:3b:02.1".to_string(), "0000:3b:03.0".to_string()],
        )]),
    );
    let e = env.agent.handle(&check_after(result)).await.unwrap_err();
    assert!(
        e.msg
            .contains("interface eth1 is VF 0000:3b:02.0, but the Pod's device is 0000:3b:02.1"),
        "{}",
        e.msg
    );
}

#[tokio::test]
async fn an_add_cut_short_after_setting_the_pf_is_undone_by_the_recovery() {
    use spur_node::sriov::vf::{VfLinks, VfRecord};
    let env = env().await;
    // What an ADD leaves if the agent dies after setting the PF and before
    // the VF is in the Pod: the VF labelled with its record, then tagged.
    let before = env.links.pf_settings("ens1f0", 0).await.unwrap();
    let record = VfRecord {
        name: "ens1f0v0".into(),
        pci: "0000:3b:02.0".parse().unwrap(),
        parent: Some(("ens1f0".into(), 0)),
        pf: before,
    };
    env.links.label_host_vf("ens1f0v0", &record).await.unwrap();
    let mut tagged = before;
    tagged.vlan = 300;
    env.links
        .set_pf_settings("ens1f0", 0, &tagged)
        .await
        .unwrap();
    assert_eq!(env.agent.recover_vfs().await.unwrap(), 1);
    assert_eq!(host_vfs(&env), pristine());
}

/// Fails every VF move into a Pod (with `attach`), and every PF write
/// from the `from`-th on, while armed.
struct FailVfs {
    armed: std::sync::atomic::AtomicBool,
    pf_writes: std::sync::atomic::AtomicUsize,
    from: usize,
    attach: bool,
}

impl FailVfs {
    fn new(from: usize, attach: bool) -> Arc<FailVfs> {
        Arc::new(FailVfs {
            armed: std::sync::atomic::AtomicBool::new(true),
            pf_writes: std::sync::atomic::AtomicUsize::new(0),
            from,
            attach,
        })
    }
}

impl spur_node::fake::FaultHook for FailVfs {
    fn at<'a>(
        &'a self,
        point: &'a spur_node::fake::FaultPoint,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        use spur_node::fake::Op;
        use std::sync::atomic::Ordering;
        let armed = self.armed.load(Ordering::SeqCst);
        let fail = armed
            && match point.op {
                Op::AttachVf => self.attach,
                Op::SetPfSettings => self.pf_writes.fetch_add(1, Ordering::SeqCst) + 1 >= self.from,
                _ => false,
            };
        Box::pin(async move {
            if fail {
                Err("injected".to_string())
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn a_pf_that_cannot_be_restored_after_a_failed_add_keeps_the_vfs_label() {
    // Found by the simulator (sriov-fabric, seed 99): the VF's move failed,
    // then so did putting its PF back; the undo still cleared the VF's
    // label, and the MAC the PF had set stayed with nobody to restore it.
    let env = env().await;
    env.resources.set(
        "default",
        "web",
        BTreeMap::from([(
            "intel.com/sriov_a".to_string(),
            vec!["0000:3b:02.0".to_string(), "0000:3b:02.1".to_string()],
        )]),
    );
    // PF writes of the first VF: its label (1), its settings (2), then the
    // undo's restore (3) fails.
    let hook = FailVfs::new(3, true);
    env.links.set_fault_hook(Some(hook.clone()));
    let e = env.agent.handle(&request(Command::Add)).await.unwrap_err();
    assert!(e.msg.contains("injected"), "{}", e.msg);
    assert!(stored(&env.server).is_empty(), "the addresses are released");
    let left = host_vfs(&env);
    assert!(
        left[0].1.starts_with("spur-vf ") && left[0].3 == 300,
        "VF 0 keeps its record while its PF is tagged: {left:?}"
    );
    hook.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(env.agent.recover_vfs().await.unwrap(), 1);
    assert_eq!(host_vfs(&env), pristine());
    assert_eq!(
        env.links.snapshot().pf_vfs[&("ens1f0".to_string(), 0)].mac,
        None
    );
}

#[tokio::test]
async fn an_add_that_finds_a_vf_left_labelled_records_its_true_original() {
    // Found by the simulator (sriov-ovs-mixed, chaos seed 30): the next ADD
    // took the settings a failed ADD had left on the PF for the VF's
    // original, and its DEL "restored" them.
    let env = env().await;
    both_devices(&env);
    let hook = FailVfs::new(3, true);
    env.links.set_fault_hook(Some(hook.clone()));
    env.agent.handle(&request(Command::Add)).await.unwrap_err();
    hook.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    // No sweep ran: the retried ADD meets the labelled, tagged VF.
    env.agent.handle(&request(Command::Add)).await.unwrap();
    env.agent.handle(&request(Command::Del)).await.unwrap();
    assert_eq!(host_vfs(&env), pristine());
    assert_eq!(
        env.links.snapshot().pf_vfs[&("ens1f0".to_string(), 0)].mac,
        None
    );
}

#[tokio::test]
async fn a_failed_add_whose_pf_cannot_be_restored_leaves_the_vfs_to_its_del() {
    // Found by the simulator (sriov-fabric, chaos seed 154): the Pod's
    // network-status write failed after both VFs were in the Pod; the undo
    // moved each VF home (clearing its record), then could not restore its
    // PF, and the settings stayed with nobody to restore them.
    use spur_kubeapi::faults::{Fault, Matcher};
    let env = env().await;
    both_devices(&env);
    // PF writes: label and settings of each VF (1-4), then the undo's
    // restores fail.
    let hook = FailVfs::new(5, false);
    env.links.set_fault_hook(Some(hook.clone()));
    let pod_writes = Matcher {
        methods: vec!["PATCH".into()],
        resource: Some("pods".into()),
        path_contains: Some("/pods/web".into()),
    };
    env.server
        .faults()
        .next(pod_writes, Fault::Status(503), 1000);
    let e = env.agent.handle(&request(Command::Add)).await.unwrap_err();
    assert!(e.msg.contains("network-status"), "{}", e.msg);
    env.server.faults().clear();
    hook.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    // The VFs stay in the Pod with their records: the DEL that follows a
    // failed ADD restores everything.
    let snap = env.links.snapshot();
    assert_eq!(snap.netns[Path::new(NETNS)].len(), 2, "{snap:?}");
    env.agent.handle(&request(Command::Del)).await.unwrap();
    assert_eq!(host_vfs(&env), pristine());
    assert_eq!(
        env.links.snapshot().pf_vfs[&("ens1f0".to_string(), 0)].mac,
        None
    );
    assert!(stored(&env.server).is_empty());
}

/// Holds the `nth` PF write (labels included, counted from 1) until
/// `release` is notified (`reached` says it got there): whoever makes it
/// stops there, holding the claim of the VF it writes for.
struct HoldPfWrite {
    nth: usize,
    writes: std::sync::atomic::AtomicUsize,
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl HoldPfWrite {
    fn new(nth: usize) -> Arc<HoldPfWrite> {
        Arc::new(HoldPfWrite {
            nth,
            writes: std::sync::atomic::AtomicUsize::new(0),
            reached: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        })
    }
}

impl spur_node::fake::FaultHook for HoldPfWrite {
    fn at<'a>(
        &'a self,
        point: &'a spur_node::fake::FaultPoint,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        let hold = point.op == spur_node::fake::Op::SetPfSettings
            && self
                .writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1
                == self.nth;
        Box::pin(async move {
            if hold {
                self.reached.notify_one();
                self.release.notified().await;
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_recovery_leaves_alone_a_vf_an_add_took_after_its_listing() {
    // A recovery lists the labelled VFs of the host, then claims and
    // gives back each in turn. While it gave back the first, an ADD gave
    // back the second and set it up for its Pod (VLAN 300); the recovery
    // then claimed that VF and "restored" its PF from the record it had
    // listed: the Pod's VF went untagged.
    use spur_node::sriov::vf::{VfLinks, VfRecord};
    const ONE_NETNS: &str = "/var/run/netns/test-one";
    let env = env().await;
    // Both VFs left labelled and tagged by ADDs that died.
    for (index, name, pci) in [
        (0, "ens1f0v0", "0000:3b:02.0"),
        (1, "ens1f0v1", "0000:3b:02.1"),
    ] {
        let before = env.links.pf_settings("ens1f0", index).await.unwrap();
        let record = VfRecord {
            name: name.into(),
            pci: pci.parse().unwrap(),
            parent: Some(("ens1f0".into(), index)),
            pf: before,
        };
        env.links.label_host_vf(name, &record).await.unwrap();
        let mut tagged = before;
        tagged.vlan = 300;
        env.links
            .set_pf_settings("ens1f0", index, &tagged)
            .await
            .unwrap();
    }
    // Pod `one` takes one VF of the network: VF 1.
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "one", "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "vf-a"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    wait_until(|| env.cluster.cached_pod("default", "one").is_some()).await;
    env.links.add_netns(Path::new(ONE_NETNS));
    env.resources.set(
        "default",
        "one",
        BTreeMap::from([(
            "intel.com/sriov_a".to_string(),
            vec!["0000:3b:02.1".to_string()],
        )]),
    );

    // A recovery lists both VFs and stops in VF 0's PF write.
    let hook = HoldPfWrite::new(1);
    env.links.set_fault_hook(Some(hook.clone()));
    let agent = env.agent.clone();
    let recovery = tokio::spawn(async move { agent.recover_vfs().await });
    hook.reached.notified().await;
    // Meanwhile the ADD of `one` gives VF 1 back and sets it up.
    env.agent
        .handle(&request_for("one", ONE_NETNS, Command::Add))
        .await
        .unwrap();
    assert_eq!(
        env.links.snapshot().pf_vfs[&("ens1f0".to_string(), 1)].vlan,
        300
    );
    hook.release.notify_one();
    assert_eq!(recovery.await.unwrap().unwrap(), 1, "VF 0 only");

    let snap = env.links.snapshot();
    assert_eq!(snap.netns[Path::new(ONE_NETNS)].len(), 1, "{snap:?}");
    assert_eq!(
        snap.pf_vfs[&("ens1f0".to_string(), 1)].vlan,
        300,
        "the Pod's VF keeps its VLAN"
    );
    assert_eq!(snap.pf_vfs[&("ens1f0".to_string(), 0)].vlan, 0);
    env.agent
        .handle(&request_for("one", ONE_NETNS, Command::Del))
        .await
        .unwrap();
    assert_eq!(host_vfs(&env), pristine());
    assert!(stored(&env.server).is_empty());
}

#[tokio::test]
async fn a_refused_claim_leaves_the_holders_claim_alone() {
    // Found by the simulator (sriov-ovs-mixed, chaos seed 35): three DELs
    // ran the VF recovery while an ADD had labelled its VF and was setting
    // it up. The first recovery's claim of that VF was refused, but the
    // refusal released the ADD's claim (`bool::then_some` built the claim
    // guard anyway and dropped it); the second recovery then claimed the
    // VF and restored its PF from the ADD's record: the Pod's VF went
    // untagged.
    let env = env().await;
    both_devices(&env);
    // The ADD's PF writes: VF 0's label (1), then its settings (2), where
    // it stops, VF 0 labelled in the host and claimed.
    let hook = HoldPfWrite::new(2);
    env.links.set_fault_hook(Some(hook.clone()));
    let agent = env.agent.clone();
    let add = tokio::spawn(async move { agent.handle(&request(Command::Add)).await });
    hook.reached.notified().await;
    assert!(
        host_vfs(&env)[0].1.starts_with("spur-vf "),
        "{:?}",
        host_vfs(&env)
    );
    // Two recoveries (of two DELs) meet the labelled VF: neither may take
    // it from the ADD.
    assert_eq!(env.agent.recover_vfs().await.unwrap(), 0);
    assert_eq!(env.agent.recover_vfs().await.unwrap(), 0);
    hook.release.notify_one();
    add.await.unwrap().unwrap();

    let snap = env.links.snapshot();
    assert_eq!(snap.netns[Path::new(NETNS)].len(), 2, "{snap:?}");
    assert_eq!(snap.pf_vfs[&("ens1f0".to_string(), 0)].vlan, 300);
    assert_eq!(snap.pf_vfs[&("ens1f0".to_string(), 1)].vlan, 300);
    env.agent.handle(&request(Command::Del)).await.unwrap();
    assert_eq!(host_vfs(&env), pristine());
    assert!(stored(&env.server).is_empty());
}
