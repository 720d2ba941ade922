//! The real `spur-controller` binary against the embedded API server over
//! TCP: it becomes leader, assigns a Node its Pod CIDRs (NodeIPAM
//! enabled in its config), serves /metrics (leadership, the usage of a
//! pool created in the API), /healthz and /readyz; a second replica
//! follows; SIGTERM releases the Lease, the first exits 0 and the second
//! leads well before the Lease would have expired.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, get, kubeconfig_text, logs, start, wait_metrics};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use spur_core::ipamblock::{BlockAllocation, IPAMBlock, IPAMBlockSpec, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_kubeapi::ApiServer;

async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get_opt("spur-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_leads_reports_and_hands_over_on_sigterm() {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool = IPPool::new(
        "blue",
        IPPoolSpec {
            ip_ranges: vec![IpRange::cidr("10.20.0.0/24")],
            subnet_info: SubnetInfo {
                gateway: "10.20.0.1".into(),
                prefix_length: 24,
                vlan: None,
            },
            exclude: vec![],
        },
    );
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    let block = IPAMBlock::new(
        "blue-10.20.0.0-26",
        IPAMBlockSpec {
            pool: "blue".into(),
            cidr: "10.20.0.0/26".into(),
            node: "node-a".into(),
            allocations: (2..5)
                .map(|o| BlockAllocation {
                    offset: o,
                    owner: Owner::pod("default", &format!("web-{o}"), "c1", "eth1"),
                })
                .collect(),
        },
    );
    blocks.create(&PostParams::default(), &block).await.unwrap();

    let nodes: Api<Node> = Api::all(client.clone());
    let mut node = Node::default();
    node.metadata.name = Some("node-a".into());
    nodes.create(&PostParams::default(), &node).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_tcp(listener).await });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig_text(&url)).unwrap();
    // GC far away: the test's allocations have no Pods.
    std::fs::write(
        dir.path().join("spur-controller.conf"),
        "gcIntervalSeconds: 3600\nnodeIPAM:\n  enableNodeIPAM: true\n  \
         clusterCIDRs: [172.100.0.0/20, \"fd00:172:100::/60\"]\n",
    )
    .unwrap();

    let (p1, p2) = (free_port(), free_port());
    let mut one = start(dir.path(), "one", p1);
    let body = wait_metrics(
        p1,
        &[
            "spur_controller_is_leader 1",
            "spur_ippool_addresses_total{pool=\"blue\"} 253",
            "spur_ippool_addresses_used{pool=\"blue\"} 3",
        ],
        Duration::from_secs(30),
        dir.path(),
    )
    .await;
    assert!(body.contains("spur_gc_rounds_total"), "{body}");
    assert_eq!(get(p1, "/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(get(p1, "/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(holder(&client).await.as_deref(), Some("one"));
    // NodeIPAM is enabled: the leader gives the Node dual-stack Pod CIDRs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = nodes.get("node-a").await.unwrap();
        let cidrs = n.spec.and_then(|s| s.pod_cidrs).unwrap_or_default();
        if !cidrs.is_empty() {
            assert_eq!(cidrs, ["172.100.0.0/24", "fd00:172:100::/64"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no podCIDRs:\n{}",
            logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _two = start(dir.path(), "two", p2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(p2, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "two never ready:\n{}",
            logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_metrics(
        p2,
        &["spur_controller_is_leader 0"],
        Duration::from_secs(5),
        dir.path(),
    )
    .await;

    // SIGTERM: one releases the Lease and exits 0; two leads long before
    // the 20 s Lease would have expired.
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &one.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = one.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "one did not exit:\n{}",
            logs(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        code.success(),
        "one exited with {code}:\n{}",
        logs(dir.path())
    );
    wait_metrics(
        p2,
        &["spur_controller_is_leader 1"],
        Duration::from_secs(5),
        dir.path(),
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "hand-over took {:?}",
        killed.elapsed()
    );
    assert_eq!(holder(&client).await.as_deref(), Some("two"));
}
