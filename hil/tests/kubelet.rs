//! The kubelet stand-in against real namespaces, Debian's CNI reference
//! plugins (`ptp`, `host-local`, `macvlan`) and the embedded API server
//! (root only). Spur's agent is not needed: native mode runs a stand-in
//! `spur` script chained after `ptp`; multus mode delegates to Debian's
//! `macvlan` with `host-local` over a master link inside a test "node"
//! namespace. Every namespace is removed by a guard, also when a test
//! fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{json, Value};
use spur_core::status::{self, NETWORK_STATUS_ANNOTATION};
use spur_core::Subject;
use spur_hil::kubelet::{CniCommand, Kubelet, NodeCtx, Sandbox, PRIMARY_NETWORK};
use spur_hil::probe;
use spur_kubeapi::ApiServer;
use spur_testbed::CniMode;

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

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// A test node: its namespace (with a master link `m0` for macvlan), a
/// CNI bin dir, a work dir, an API server and a kubelet stand-in. Drop
/// removes the node's namespace and every namespace named after it.
struct Node {
    netns: String,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    kubelet: Kubelet,
}

/// The stand-in `spur`: records what it got, answers ADD with its
/// `prevResult` (or an error when `fail` exists next to it), DEL with
/// nothing.
const FAKE_SPUR: &str = r#"#!/usr/bin/env python3
import json, os, sys
d = os.path.dirname(os.path.realpath(__file__))
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
rec = {"conf": conf, "args": os.environ.get("CNI_ARGS"),
       "socket": os.environ.get("SPUR_CNI_SOCKET"), "ifname": os.environ.get("CNI_IFNAME")}
with open(os.path.join(d, "spur-%s-%s.json" % (cmd, os.environ["CNI_CONTAINERID"][:8])), "w") as f:
    json.dump(rec, f)
if cmd == "ADD":
    if os.path.exists(os.path.join(d, "fail")):
        print(json.dumps({"cniVersion": conf.get("cniVersion"), "code": 11,
                          "msg": "spur-agent is not ready"}))
        sys.exit(1)
    print(json.dumps(conf["prevResult"]))
"#;

impl Node {
    fn new(test: &str, mode: CniMode) -> Node {
        let netns = format!("h5k-{}-{test}", std::process::id());
        // A leftover of a crashed earlier run.
        if netns_exists(&netns) {
            ip(&format!("netns del {netns}"));
        }
        ip(&format!("netns add {netns}"));
        ip(&format!("-n {netns} link set lo up"));
        ip(&format!("-n {netns} link add m0 type veth peer name m0p"));
        ip(&format!("-n {netns} link set m0 up"));
        ip(&format!("-n {netns} link set m0p up"));
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for p in ["ptp", "host-local", "macvlan", "static"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin.join(p)).unwrap();
        }
        std::fs::write(bin.join("spur"), FAKE_SPUR).unwrap();
        std::fs::set_permissions(bin.join("spur"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = ApiServer::in_memory();
        let client = rt.block_on(async { kube::Client::new(server.service(), "default") });
        let ctx = NodeCtx {
            node: "node-a".into(),
            netns: netns.clone(),
            cni_bin_dir: bin,
            cni_socket: dir.path().join("agent.sock"),
            pod_cidr: "10.244.9.0/24".parse().unwrap(),
            work_dir: dir.path().join("work"),
        };
        let kubelet = Kubelet::new(ctx, mode, client.clone(), rt.handle().clone());
        Node {
            netns,
            dir,
            rt,
            client,
            kubelet,
        }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Creates Pod `name` (with the selection annotation when given) and
    /// returns it as the API has it.
    fn pod(&self, name: &str, networks: Option<&str>) -> Pod {
        let mut meta = json!({"name": name, "namespace": "default"});
        if let Some(n) = networks {
            meta["annotations"] = json!({"k8s.v1.cni.cncf.io/networks": n});
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "pause"}]}
        }))
        .unwrap();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        self.rt
            .block_on(api.create(&PostParams::default(), &pod))
            .unwrap()
    }

    fn get_pod(&self, name: &str) -> Pod {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        self.rt.block_on(api.get(name)).unwrap()
    }

    fn nad(&self, name: &str, config: Value) {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
            "network-attachment-definitions",
        );
        let mut obj = DynamicObject::new(name, &ar).within("default");
        obj.data = json!({"spec": {"config": config.to_string()}});
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), "default", &ar);
        self.rt
            .block_on(api.create(&PostParams::default(), &obj))
            .unwrap();
    }

    /// A macvlan NAD over `master` with host-local on 10.20.0.0/24.
    fn macvlan_nad(&self, name: &str, master: &str) {
        self.nad(
            name,
            json!({
                "cniVersion": "1.0.0", "type": "macvlan", "master": master, "mode": "bridge",
                "capabilities": {"mac": true, "ips": true},
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.20.0.0/24"}]],
                         "dataDir": self.dir.path().join("hl")}
            }),
        );
    }

    /// Addresses host-local holds, over every network.
    fn allocations(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for root in [
            self.dir.path().join("hl"),
            self.dir.path().join("work/host-local"),
        ] {
            for net in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(a) = f.file_name().to_string_lossy().parse() {
                        out.push(a);
                    }
                }
            }
        }
        out
    }

    fn network_status(&self, pod: &str) -> Option<Vec<status::NetworkStatus>> {
        let p = self.get_pod(pod);
        let text = p
            .metadata
            .annotations?
            .get(NETWORK_STATUS_ANNOTATION)?
            .clone();
        Some(status::parse(&text, &Subject::new("Pod", Some("default"), pod)).unwrap())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let list = Command::new("ip").args(["netns", "list"]).output();
        if let Ok(out) = list {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(&self.netns) {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
    }
}

fn recorded(node: &Node, cmd: &str, sb: &Sandbox) -> Value {
    let path = node
        .bin()
        .join(format!("spur-{cmd}-{}.json", &sb.container_id[..8]));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn native_chains_spur_after_ptp_and_cleans_up_failures() {
    let node = Node::new("native", CniMode::Native);
    let pod = node.pod("web-0", None);
    let sb = node.kubelet.add_pod(&pod);
    assert!(sb.ready, "{:?}", sb.reason);
    assert_eq!(sb.reason, None);
    assert!(sb.netns.starts_with(&node.netns), "{}", sb.netns);
    assert_eq!(sb.container_id.len(), 64);
    assert_eq!(sb.pod_uid, pod.metadata.uid.clone().unwrap());
    let calls: Vec<(CniCommand, &str)> = sb
        .calls
        .iter()
        .map(|c| (c.command, c.plugin.as_str()))
        .collect();
    assert_eq!(calls, [(CniCommand::Add, "ptp"), (CniCommand::Add, "spur")]);
    assert!(sb
        .calls
        .iter()
        .all(|c| c.error.is_none() && c.network == PRIMARY_NETWORK));

    // eth0 is real, from the node's pod CIDR.
    let eth0 = probe::inspect(&sb.netns, "eth0").unwrap().unwrap();
    assert_eq!(eth0.ips.len(), 1);
    let cidr: ipnet::IpNet = "10.244.9.0/24".parse().unwrap();
    assert!(cidr.contains(&eth0.ips[0].addr()), "{:?}", eth0.ips);
    // spur was chained as libcni chains: the list's name and version,
    // ptp's result as prevResult, the Pod in CNI_ARGS, the agent socket.
    let add = recorded(&node, "ADD", &sb);
    assert_eq!(add["conf"]["name"], "k8s-pod-network");
    assert_eq!(add["conf"]["cniVersion"], "1.0.0");
    assert_eq!(add["conf"]["type"], "spur");
    assert_eq!(
        add["conf"]["prevResult"]["ips"][0]["address"],
        eth0.ips[0].to_string()
    );
    let args = add["args"].as_str().unwrap();
    assert!(
        args.starts_with("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"),
        "{args}"
    );
    assert!(
        args.contains(&format!("K8S_POD_INFRA_CONTAINER_ID={}", sb.container_id)),
        "{args}"
    );
    assert_eq!(add["socket"], json!(node.dir.path().join("agent.sock")));
    assert_eq!(add["ifname"], "eth0");
    assert_eq!(node.allocations(), vec![eth0.ips[0].addr()]);

    // DEL: reverse order, the cached result as prevResult; idempotent.
    node.kubelet.del_pod(&sb).unwrap();
    let del = recorded(&node, "DEL", &sb);
    assert_eq!(del["conf"]["prevResult"], add["conf"]["prevResult"]);
    assert!(!netns_exists(&sb.netns));
    assert!(node.allocations().is_empty());
    let again = node.kubelet.teardown(&sb);
    assert!(again.errors.is_empty(), "{:?}", again.errors);
    let order: Vec<&str> = again.calls.iter().map(|c| c.plugin.as_str()).collect();
    assert_eq!(order, ["spur", "ptp"]);

    // A failing chained plugin: not ready, its message as the reason,
    // everything deleted, the namespace gone.
    std::fs::write(node.bin().join("fail"), "").unwrap();
    let bad = node.kubelet.add_pod(&node.pod("web-1", None));
    assert!(!bad.ready);
    assert_eq!(bad.reason.as_deref(), Some("spur-agent is not ready"));
    let calls: Vec<(CniCommand, &str, bool)> = bad
        .calls
        .iter()
        .map(|c| (c.command, c.plugin.as_str(), c.error.is_none()))
        .collect();
    assert_eq!(
        calls,
        [
            (CniCommand::Add, "ptp", true),
            (CniCommand::Add, "spur", false),
            (CniCommand::Del, "spur", true),
            (CniCommand::Del, "ptp", true),
        ]
    );
    // No cached result after a failed ADD: DEL has no prevResult.
    assert_eq!(recorded(&node, "DEL", &bad)["conf"].get("prevResult"), None);
    assert!(!netns_exists(&bad.netns));
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(bad.teardown_errors.is_empty(), "{:?}", bad.teardown_errors);
    node.kubelet.del_pod(&bad).unwrap();
}

#[test]
fn multus_delegates_to_macvlan_with_host_local() {
    let node = Node::new("multus", CniMode::Multus);
    node.macvlan_nad("macvlan-a", "m0");
    let pod = node.pod(
        "db-0",
        Some(
            r#"[{"name": "macvlan-a", "mac": "0a:58:0a:14:00:09"},
                {"name": "macvlan-a", "interface": "sec1", "ips": ["10.20.0.50/24"]}]"#,
        ),
    );
    let sb = node.kubelet.add_pod(&pod);
    assert!(sb.ready, "{:?} {:?}", sb.reason, sb.calls);
    let order: Vec<(&str, &str, &str)> = sb
        .calls
        .iter()
        .map(|c| (c.plugin.as_str(), c.network.as_str(), c.ifname.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("ptp", PRIMARY_NETWORK, "eth0"),
            ("macvlan", "default/macvlan-a", "net1"),
            ("macvlan", "default/macvlan-a", "sec1"),
        ]
    );
    // What is really in the Pod: the MAC asked for (runtimeConfig), the
    // address asked for (runtimeConfig / CNI_ARGS IP).
    let net1 = probe::inspect(&sb.netns, "net1").unwrap().unwrap();
    assert_eq!(net1.mac, "0a:58:0a:14:00:09");
    let sec1 = probe::inspect(&sb.netns, "sec1").unwrap().unwrap();
    assert_eq!(sec1.ips, vec!["10.20.0.50/24".parse().unwrap()]);
    // The network-status annotation, written as Multus does.
    let st = node.network_status("db-0").unwrap();
    assert_eq!(st.len(), 3);
    assert_eq!(st[0].name, PRIMARY_NETWORK);
    assert!(st[0].default);
    assert_eq!(st[0].interface.as_deref(), Some("eth0"));
    let eth0 = probe::inspect(&sb.netns, "eth0").unwrap().unwrap();
    assert_eq!(st[0].ips, vec![eth0.ips[0].addr()]);
    assert_eq!(st[0].mac.as_deref(), Some(eth0.mac.as_str()));
    assert_eq!(st[1].name, "default/macvlan-a");
    assert_eq!(st[1].interface.as_deref(), Some("net1"));
    assert_eq!(st[1].mac.as_deref(), Some("0a:58:0a:14:00:09"));
    assert!(!st[1].default);
    assert_eq!(st[2].interface.as_deref(), Some("sec1"));
    assert_eq!(st[2].ips, vec!["10.20.0.50".parse::<IpAddr>().unwrap()]);
    assert_eq!(node.allocations().len(), 3);

    // default-route: the element's gateway replaces eth0's default route.
    let gw = node.pod(
        "gw-0",
        Some(r#"[{"name": "macvlan-a", "default-route": ["10.20.0.1"]}]"#),
    );
    let gsb = node.kubelet.add_pod(&gw);
    assert!(gsb.ready, "{:?}", gsb.reason);
    let routes = Command::new("ip")
        .args(["-n", &gsb.netns, "route", "show", "default"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert_eq!(routes.trim(), "default via 10.20.0.1 dev net1", "{routes}");

    // DEL of both: everything released, annotations removed, idempotent.
    for s in [&sb, &gsb] {
        node.kubelet.del_pod(s).unwrap();
        assert!(!netns_exists(&s.netns));
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert_eq!(node.network_status("db-0"), None);
    node.kubelet.del_pod(&sb).unwrap();
}

#[test]
fn multus_failures_are_results_and_leave_nothing() {
    let node = Node::new("multusfail", CniMode::Multus);
    node.macvlan_nad("macvlan-a", "m0");
    node.macvlan_nad("macvlan-bad", "nosuch0");
    // The second network fails: Multus deletes the first one and eth0.
    let pod = node.pod("app-0", Some("macvlan-a, macvlan-bad"));
    let sb = node.kubelet.add_pod(&pod);
    assert!(!sb.ready);
    let reason = sb.reason.clone().unwrap();
    assert!(
        reason.starts_with("network default/macvlan-bad: ") && reason.contains("Link not found"),
        "{reason}"
    );
    let calls: Vec<(CniCommand, &str, &str)> = sb
        .calls
        .iter()
        .map(|c| (c.command, c.plugin.as_str(), c.ifname.as_str()))
        .collect();
    assert_eq!(
        &calls[..6],
        [
            (CniCommand::Add, "ptp", "eth0"),
            (CniCommand::Add, "macvlan", "net1"),
            (CniCommand::Add, "macvlan", "net2"),
            // Multus's rollback, in reverse order.
            (CniCommand::Del, "macvlan", "net2"),
            (CniCommand::Del, "macvlan", "net1"),
            (CniCommand::Del, "ptp", "eth0"),
        ]
    );
    // Then kubelet's DEL of the whole Pod.
    assert_eq!(calls.len(), 9);
    assert!(!netns_exists(&sb.netns));
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert_eq!(node.network_status("app-0"), None);
    // The sandbox is gone: DEL has nothing left to do.
    node.kubelet.del_pod(&sb).unwrap();

    // A network that does not exist: nothing is added at all.
    let sb = node.kubelet.add_pod(&node.pod("app-1", Some("nonesuch")));
    assert!(!sb.ready);
    assert_eq!(
        sb.reason.as_deref(),
        Some("network default/nonesuch: NetworkAttachmentDefinition default/nonesuch not found")
    );
    assert!(sb.calls.iter().all(|c| c.command == CniCommand::Del));
    assert!(!netns_exists(&sb.netns));

    // A selection annotation that does not parse.
    let sb = node
        .kubelet
        .add_pod(&node.pod("app-2", Some(r#"[{"name": "Bad_Name"}]"#)));
    assert!(!sb.ready);
    assert!(
        sb.reason.as_deref().unwrap().contains("Bad_Name"),
        "{:?}",
        sb.reason
    );
    assert!(!netns_exists(&sb.netns));
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}
