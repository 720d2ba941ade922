//! The agent's `/metrics`, `/healthz` and `/readyz` over a real TCP
//! listener, for an agent over the embedded API server and in-memory
//! switch and links: readiness follows the bridges, CNI requests show in
//! the latency histogram by verb and failures in the error counter by
//! code, removed stale ports are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use spur_core::cni::CniVersion;
use spur_core::cniproto::{AgentRequest, Command, PROTO_VERSION};
use spur_kubeapi::ApiServer;
use spur_node::agent::{metrics, Agent};
use spur_node::fake::FakeLinks;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{client, fake_agent, nad, pool_with_vlan, server, wait_until, FakeAgent};

const NODE: &str = "node-a";
const ONE_BRIDGE: &str =
    "secondaryNetwork:\n  ovsBridges: [{bridgeName: br-sec, physicalInterfaces: [eth1]}]\n";

struct Env {
    server: ApiServer,
    agent: Arc<Agent>,
    links: Arc<FakeLinks>,
    sandboxes: tempfile::TempDir,
    addr: std::net::SocketAddr,
}

async fn env() -> Env {
    let server = server().await;
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
            "tiny",
            json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 300, "ipam": {"type": "spur", "ippools": ["tiny"]}}),
        ),
        (
            "vlan200",
            json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 200}),
        ),
    ] {
        nad(&server, "default", name, config).await;
    }
    let FakeAgent { agent, links, .. } = fake_agent(&server, NODE, ONE_BRIDGE, 11, "tiny").await;
    let listener = metrics::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(metrics::serve(listener, agent.clone()));
    Env {
        server,
        agent,
        links,
        sandboxes: tempfile::tempdir().unwrap(),
        addr,
    }
}

/// One GET over a fresh connection: (status, body).
async fn get(env: &Env, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: spur\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u16>()
        .unwrap();
    (status, body.to_string())
}

fn netns(env: &Env, pod: &str) -> String {
    env.sandboxes.path().join(pod).display().to_string()
}

async fn pod(env: &Env, name: &str, networks: &str) {
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    std::fs::write(netns(env, name), b"").unwrap();
    env.links.add_netns(Path::new(&netns(env, name)));
}

fn request(env: &Env, command: Command, pod: &str) -> AgentRequest {
    let mut args = BTreeMap::new();
    args.insert("K8S_POD_NAMESPACE".to_string(), "default".to_string());
    args.insert("K8S_POD_NAME".to_string(), pod.to_string());
    let config: Value = json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "spur",
           "prevResult": {"cniVersion": "1.0.0",
             "interfaces": [{"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": "/var/run/netns/x"}],
             "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0}],
             "dns": {}}});
    AgentRequest {
        proto: PROTO_VERSION,
        command,
        container_id: Some(format!("cid-{pod}")),
        netns: Some(netns(env, pod)),
        ifname: Some("eth0".into()),
        args,
        config,
        cni_version: CniVersion::V1_0_0,
    }
}

/// The value of the sample line `name{labels} value` (or `name value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test]
async fn health_readiness_and_request_metrics_over_http() {
    let env = env().await;

    // Serving, but the bridges are not set up yet.
    assert_eq!(get(&env, "/healthz").await.0, 200);
    let (status, body) = get(&env, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("secondary bridges"), "{body}");
    let (_, text) = get(&env, "/metrics").await;
    assert_eq!(sample(&text, "spur_agent_ready"), Some(0.0), "{text}");

    env.agent.ensure_bridges().await.unwrap();
    wait_until(|| env.agent.not_ready_reason().is_none()).await;
    let (status, body) = get(&env, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // An ADD that works, an ADD that fails (the pool's one address is
    // taken: code 100), a DEL.
    pod(&env, "first", "tiny").await;
    pod(&env, "second", "tiny").await;
    let pods: Api<Pod> = Api::namespaced(client(&env.server), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.get_opt("second").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.agent
        .handle(&request(&env, Command::Add, "first"))
        .await
        .unwrap();
    let e = env
        .agent
        .handle(&request(&env, Command::Add, "second"))
        .await
        .unwrap_err();
    assert_eq!(e.code, 100, "{}", e.msg);
    env.agent
        .handle(&request(&env, Command::Del, "first"))
        .await
        .unwrap();

    // A port whose sandbox then goes: the sweep removes it and counts it.
    pod(&env, "gone", "vlan200").await;
    env.agent
        .handle(&request(&env, Command::Add, "gone"))
        .await
        .unwrap();
    std::fs::remove_file(netns(&env, "gone")).unwrap();
    env.links.remove_netns(Path::new(&netns(&env, "gone")));
    assert_eq!(env.agent.sweep_stale().await.unwrap(), 1);

    let reconnects = Arc::new(AtomicU64::new(2));
    let r = reconnects.clone();
    env.agent
        .metrics()
        .set_ovsdb_reconnects(move || r.load(Ordering::SeqCst));

    let (status, text) = get(&env, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let count = |cmd: &str| {
        sample(
            &text,
            &format!("spur_agent_cni_request_duration_seconds_count{{command=\"{cmd}\"}}"),
        )
    };
    assert_eq!(count("ADD"), Some(3.0), "{text}");
    assert_eq!(count("DEL"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "spur_agent_cni_request_duration_seconds_bucket{le=\"+Inf\",command=\"ADD\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "spur_agent_cni_errors_total{command=\"ADD\",code=\"100\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("spur_agent_cni_errors_total{command=\"DEL\""),
        "{text}"
    );
    assert_eq!(sample(&text, "spur_agent_ready"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "spur_agent_stale_ports_removed_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "spur_agent_ovsdb_reconnects_total"),
        Some(2.0),
        "{text}"
    );

    let (status, body) = get(&env, "/nowhere").await;
    assert_eq!(status, 404, "{body}");
}
