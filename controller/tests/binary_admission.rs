//! The real `spur-controller` binary as the cluster's admission webhook:
//! the embedded API server holds the webhook Service and the
//! ValidatingWebhookConfiguration of deploy/controller.yaml (caBundle
//! empty), the binary fills the caBundle, and every IPPool and NAD write
//! goes through it over HTTPS, as in a cluster.
//!
//! - Before the webhook serves, IPPool writes fail closed (failurePolicy
//!   Fail) and nothing is stored.
//! - An overlapping pool is refused naming the other pool and its range;
//!   a pool whose range leaves its subnet names the field; a NAD with VLAN
//!   5000 names the key and value.
//! - A pool in use (an IPAMBlock holds one of its addresses) cannot be
//!   deleted nor have its range changed; once released, it can.
//! - `spur_admission_decisions_total` counts what was allowed and denied.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{cluster, free_port, logs, serve_tcp, start_with_webhook, wait_metrics, write_config};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::Client;
use serde_json::{json, Value};
use spur_core::ipamblock::{BlockAllocation, IPAMBlock, IPAMBlockSpec, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_kubeapi::ServiceRef;

const CONTROLLER_MANIFEST: &str = include_str!("../../deploy/controller.yaml");

/// Creates the Service and ValidatingWebhookConfiguration of
/// deploy/controller.yaml.
async fn install_webhook_objects(client: &Client) {
    for doc in serde_yaml::Deserializer::from_str(CONTROLLER_MANIFEST) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        let (gvk, plural, namespaced) = match v["kind"].as_str().unwrap() {
            "Service" => (GroupVersionKind::gvk("", "v1", "Service"), "services", true),
            "ValidatingWebhookConfiguration" => (
                GroupVersionKind::gvk(
                    "admissionregistration.k8s.io",
                    "v1",
                    "ValidatingWebhookConfiguration",
                ),
                "validatingwebhookconfigurations",
                false,
            ),
            _ => continue,
        };
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), "kube-system", &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let obj: DynamicObject = serde_json::from_value(v).unwrap();
        api.create(&PostParams::default(), &obj).await.unwrap();
    }
}

fn pool(name: &str, range: IpRange, gateway: &str) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            ip_ranges: vec![range],
            subnet_info: SubnetInfo {
                gateway: gateway.into(),
                prefix_length: 24,
                vlan: Some(100),
            },
            exclude: vec![],
        },
    )
}

/// The refusal of a write: (code, message); panics when it was stored.
fn refusal<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binarys_webhook_decides_ippool_and_nad_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = cluster().await;
    let url = serve_tcp(&server).await;
    write_config(dir.path(), &url, "gcIntervalSeconds: 3600\n");
    install_webhook_objects(&client).await;
    let webhook_port = free_port();
    let webhook = SocketAddr::from((Ipv4Addr::LOCALHOST, webhook_port));
    server.set_service_resolver(move |s: &ServiceRef| {
        (s.namespace == "kube-system" && s.name == "spur-webhook" && s.port == 443)
            .then_some(webhook)
    });
    let pools: Api<IPPool> = Api::all(client.clone());

    // No webhook yet: IPPool writes fail closed and nothing is stored.
    let (code, message) = refusal(
        pools
            .create(
                &PostParams::default(),
                &pool("early", IpRange::cidr("10.9.0.0/26"), "10.9.0.1"),
            )
            .await,
    );
    assert_eq!(code, 500, "{message}");
    assert!(
        message.contains("failed calling webhook \"ippools.spur.dev\""),
        "{message}"
    );
    assert!(pools.get_opt("early").await.unwrap().is_none());

    let metrics_port = free_port();
    let _controller = start_with_webhook(dir.path(), "c1", metrics_port, webhook_port);

    // Once the binary has its certificate in the caBundle and serves, a
    // valid pool is stored.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = pool("vlan100-ipv4", IpRange::cidr("10.10.1.0/26"), "10.10.1.1");
    loop {
        match pools.create(&PostParams::default(), &first).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 500 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}\n{}", logs(dir.path())),
        }
    }

    // Overlap: names the other pool and its range.
    let (code, message) = refusal(
        pools
            .create(
                &PostParams::default(),
                &pool("overlapping", IpRange::cidr("10.10.1.32/27"), "10.10.1.1"),
            )
            .await,
    );
    assert!((400..500).contains(&code), "{code} {message}");
    for part in [
        "admission webhook \"ippools.spur.dev\" denied the request",
        "IPPool overlapping",
        "10.10.1.32/27",
        "vlan100-ipv4",
        "10.10.1.0/26",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    // A range outside its subnet names the field.
    let (_, message) = refusal(
        pools
            .create(
                &PostParams::default(),
                &pool(
                    "outside",
                    IpRange::start_end("10.20.2.5", "10.20.2.9"),
                    "10.20.1.1",
                ),
            )
            .await,
    );
    assert!(message.contains("spec.ipRanges[0]"), "{message}");
    assert!(pools.get_opt("overlapping").await.unwrap().is_none());
    assert!(pools.get_opt("outside").await.unwrap().is_none());

    // A NAD asking for VLAN 5000.
    let nad_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    );
    let nads: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &nad_ar);
    let config = json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan",
                        "vlan": 5000, "ipam": {"type": "spur", "ippools": ["vlan100-ipv4"]}});
    let nad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "vlan5000", "namespace": "default"},
        "spec": {"config": config.to_string()},
    }))
    .unwrap();
    let (_, message) = refusal(nads.create(&PostParams::default(), &nad).await);
    assert!(
        message.contains("network-attachment-definitions.spur.dev"),
        "{message}"
    );
    assert!(message.contains("5000"), "{message}");

    // In use: an IPAMBlock holds 10.10.1.5 of the pool.
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    let block = IPAMBlock::new(
        "vlan100-ipv4-10-10-1-0",
        IPAMBlockSpec {
            pool: "vlan100-ipv4".into(),
            cidr: "10.10.1.0/26".into(),
            node: "node-a".into(),
            allocations: vec![BlockAllocation {
                offset: 5,
                owner: Owner::pod("default", "web", "c1", "eth1"),
            }],
        },
    );
    blocks.create(&PostParams::default(), &block).await.unwrap();
    let (_, message) = refusal(pools.delete("vlan100-ipv4", &DeleteParams::default()).await);
    assert!(message.contains("vlan100-ipv4"), "{message}");
    assert!(message.contains("allocated"), "{message}");
    let mut moved = pools.get("vlan100-ipv4").await.unwrap();
    moved.spec.ip_ranges = vec![IpRange::cidr("10.10.1.64/26")];
    let (_, message) = refusal(
        pools
            .replace("vlan100-ipv4", &PostParams::default(), &moved)
            .await,
    );
    assert!(message.contains("spec.ipRanges"), "{message}");
    assert_eq!(
        pools.get("vlan100-ipv4").await.unwrap().spec.ip_ranges,
        vec![IpRange::cidr("10.10.1.0/26")]
    );

    // Released: the pool can go.
    blocks
        .delete("vlan100-ipv4-10-10-1-0", &DeleteParams::default())
        .await
        .unwrap();
    pools
        .delete("vlan100-ipv4", &DeleteParams::default())
        .await
        .unwrap();

    // The decisions, counted by resource and outcome.
    let body = wait_metrics(
        metrics_port,
        &[
            "spur_admission_decisions_total{resource=\"ippools\",decision=\"denied\"} 4",
            "spur_admission_decisions_total{resource=\"network-attachment-definitions\",decision=\"denied\"} 1",
        ],
        Duration::from_secs(10),
        dir.path(),
    )
    .await;
    assert!(
        body.contains("spur_admission_decisions_total{resource=\"ippools\",decision=\"allowed\"}"),
        "{body}"
    );
}
