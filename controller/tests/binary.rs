//! The real `spur-controller` binary against the embedded API server over
//! TCP: it becomes leader, assigns a Node its Pod CIDRs (NodeIPAM
//! enabled in its config), serves /metrics (leadership, the usage of a
//! pool created in the API), /healthz and /readyz; a second replica
//! follows; SIGTERM releases the Lease, the first exits 0 and the second
//! leads well before the Lease would have expired.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use spur_core::ipamblock::{BlockAllocation, IPAMBlock, IPAMBlockSpec, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_kubeapi::ApiServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills the child when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubeconfig_text(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\n\
         contexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n    namespace: default\n\
         current-context: t\nusers:\n- name: t\n  user: {{}}\n"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, id: &str, port: u16) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_spur-controller"))
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--config")
        .arg(dir.join("spur-controller.conf"))
        .args(["--leader-election-namespace", "kube-system"])
        .args(["--leader-election-lease", "spur-controller"])
        .args(["--leader-election-lease-duration", "20"])
        .args(["--leader-election-renew-deadline-ms", "12000"])
        .args(["--leader-election-retry-period-ms", "200"])
        .args(["--metrics-address", "127.0.0.1"])
        .args(["--metrics-port", &port.to_string()])
        .args([
            "--webhook-port",
            "9443",
            "--webhook-secret",
            "spur-webhook-tls",
        ])
        .args(["--webhook-service", "spur-webhook"])
        .args(["--webhook-configuration", "spur-webhook"])
        .env("POD_NAME", id)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

/// GET `path` on 127.0.0.1:`port`: the status code and body, or None if
/// nothing answers yet.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Polls `/metrics` until every line of `want` is in it.
async fn wait_metrics(port: u16, want: &[&str], timeout: Duration, dir: &Path) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((200, body)) = get(port, "/metrics").await {
            if want.iter().all(|w| body.lines().any(|l| l == *w)) {
                return body;
            }
            if Instant::now() >= deadline {
                panic!(
                    "metrics on {port} lack {want:?}:\n{body}\nlogs:\n{}",
                    logs(dir)
                );
            }
        } else if Instant::now() >= deadline {
            panic!("nothing on {port}; logs:\n{}", logs(dir));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn logs(dir: &Path) -> String {
    ["one", "two"]
        .iter()
        .map(|id| {
            format!(
                "--- {id}\n{}",
                std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default()
            )
        })
        .collect()
}

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
