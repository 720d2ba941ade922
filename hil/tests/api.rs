//! The run's cluster side against the embedded API server on loopback (no
//! root needed): manifests applied as `kubectl apply` would, refusals
//! recorded with Spur's admission messages, Nodes labelled by manifests,
//! workloads and placement, Pod status, pool usage.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use spur_hil::api::{self, ApiError, Cluster, NodeInfo};
use spur_testbed::{parse_manifests, Manifest, PodRef};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-b
  labels: {rack: r2}
---
apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: pool-a}
spec:
  ipRanges: [{cidr: 10.10.1.0/26}]
  subnetInfo: {gateway: 10.10.1.1, prefixLength: 24}
---
apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: overlapping}
spec:
  ipRanges: [{cidr: 10.10.1.32/27}]
  subnetInfo: {gateway: 10.10.1.1, prefixLength: 24}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: bad-vlan}
spec:
  config: '{"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 5000}'
---
apiVersion: v1
kind: Pod
metadata: {name: placed-1}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      nodeName: node-a
      containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: placed-2}
spec: {containers: [{name: c, image: busybox}]}
"#;

fn nodes() -> Vec<NodeInfo> {
    ["node-a", "node-b"]
        .iter()
        .enumerate()
        .map(|(i, n)| NodeInfo {
            name: n.to_string(),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        })
        .collect()
}

async fn cluster(dir: &Path) -> Cluster {
    let c = Cluster::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &dir.join("kubeconfig"))
        .await
        .unwrap();
    api::create_nodes(&c.client, &nodes()).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_applied_as_kubectl_would() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let manifests = parse_manifests(Path::new("m.yaml"), MANIFESTS).unwrap();
    let names: Vec<String> = nodes().into_iter().map(|n| n.name).collect();
    let out = api::apply_manifests(&c.client, &manifests, &names)
        .await
        .unwrap();

    // Refusals: Spur's admission messages, per object.
    let refused: Vec<String> = out.rejected.iter().map(|r| r.object.to_string()).collect();
    assert_eq!(
        refused,
        [
            "IPPool/overlapping",
            "NetworkAttachmentDefinition/default/bad-vlan"
        ]
    );
    assert!(
        out.rejected[0].reason.contains("pool-a"),
        "{}",
        out.rejected[0].reason
    );
    assert!(
        out.rejected[1].reason.to_lowercase().contains("vlan"),
        "{}",
        out.rejected[1].reason
    );
    // Node + pool + 2 Pods + StatefulSet + its 2 Pods.
    assert_eq!(out.applied, 7);

    // The Node manifest labelled the testbed's Node, which keeps its Pod CIDR.
    let node = Api::<Node>::all(c.client.clone())
        .get("node-b")
        .await
        .unwrap();
    let labels = node.metadata.labels.unwrap();
    assert_eq!(labels["rack"], "r2");
    assert_eq!(labels["kubernetes.io/hostname"], "node-b");
    assert_eq!(
        node.spec.unwrap().pod_cidr.as_deref(),
        Some("10.244.1.0/24")
    );

    // Pods in creation order, placed round-robin unless they name a node.
    let pods: Vec<(String, Option<String>)> = out
        .pods
        .iter()
        .map(|(p, n)| (p.to_string(), n.clone()))
        .collect();
    assert_eq!(
        pods,
        [
            ("default/placed-1".to_string(), Some("node-a".to_string())),
            ("default/db-0".to_string(), Some("node-a".to_string())),
            ("default/db-1".to_string(), Some("node-a".to_string())),
            ("default/placed-2".to_string(), Some("node-b".to_string())),
        ]
    );
    let stored = api::get_pod(&c.client, &PodRef::new("default", "db-1"))
        .await
        .unwrap();
    assert_eq!(stored.spec.unwrap().node_name.as_deref(), Some("node-a"));
    assert_eq!(
        stored.metadata.owner_references.unwrap()[0].kind,
        "StatefulSet"
    );

    // Applying again updates in place.
    let again = api::apply_manifests(&c.client, &manifests[..2], &names)
        .await
        .unwrap();
    assert_eq!(again.applied, 2);

    // Status, as kubectl shows it.
    let pod = PodRef::new("default", "placed-1");
    api::set_pod_status(
        &c.client,
        &pod,
        false,
        Some("network default/x: no free address"),
        &[],
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )
    .await
    .unwrap();
    let got = api::get_pod(&c.client, &pod).await.unwrap();
    let status = got.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(events
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox")
            && e.message.as_deref() == Some("network default/x: no free address")));

    // Usage settles (nothing allocated).
    let (pools, lagging) = api::settled_pool_usage(&c.client, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(lagging.is_empty(), "{lagging:?}");
    assert_eq!(pools.len(), 1);
    assert_eq!((pools[0].total, pools[0].used), (62, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kinds_fail_the_run_naming_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let m = Manifest {
        file: PathBuf::from("manifests/10-x.yaml"),
        document: 3,
        object: serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget",
                                   "metadata": {"name": "w"}}),
    };
    let e = api::apply_manifests(&c.client, &[m], &["node-a".to_string()])
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Manifest { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with("manifests/10-x.yaml, document 3 (Widget default/w): ")
            && text.contains("Widget"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_the_server_through_the_kubeconfig() {
    if spur_hil::cmd::find_tool("kubectl").is_none() {
        eprintln!("SKIPPED: kubectl is not installed (`make test` installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let kubeconfig = c.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .args(["get", "nodes", "--no-headers"])
            .env("KUBECONFIG", kubeconfig)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("node-a") && text.contains("Ready"), "{text}");
    let pods: Vec<Pod> = Api::<Pod>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(pods.is_empty());
}
